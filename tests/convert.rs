//! `rps convert fashion-mnist` on files in the exact IDX format, gzipped and not, and
//! `rps convert cifar10` on files in the exact CIFAR-10 binary format.

mod common;
use common::*;

use std::io::Write;
use std::path::Path;

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn write(dir: &Path, name: &str, bytes: &[u8], gzip: bool) {
    if gzip {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(bytes).unwrap();
        std::fs::write(dir.join(format!("{name}.gz")), gz.finish().unwrap()).unwrap();
    } else {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// Writes a tiny Fashion-MNIST-shaped set: n train and m test 4×4 images, pixel = index.
fn fake(dir: &Path, n: usize, m: usize, gzip: bool) {
    for (prefix, count) in [("train", n), ("t10k", m)] {
        let pixels: Vec<u8> = (0..count * 16).map(|i| (i % 251) as u8).collect();
        let labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
        write(
            dir,
            &format!("{prefix}-images-idx3-ubyte"),
            &idx(&[count as u32, 4, 4], &pixels),
            gzip,
        );
        write(
            dir,
            &format!("{prefix}-labels-idx1-ubyte"),
            &idx(&[count as u32], &labels),
            gzip,
        );
    }
}

fn convert(input: &Path, output: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "convert",
        "fashion-mnist",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    rps(&args)
}

#[test]
fn converts_idx_files_exactly() {
    for gzip in [true, false] {
        let dir = out_dir();
        fake(dir.path(), 12, 5, gzip);
        let out = dir.path().join("sub/fm.h5");
        let run = convert(dir.path(), &out, &[]);
        run.assert_ok();
        assert!(
            run.stdout.contains("12 training and 5 test samples"),
            "{}",
            run.stdout
        );
        let f = hdf5::File::open(&out).unwrap();
        let images = f.dataset("train/images").unwrap();
        assert_eq!(images.shape(), vec![12, 1, 4, 4]);
        let px = images.read_raw::<u8>().unwrap();
        assert_eq!(
            px,
            (0..12 * 16).map(|i| (i % 251) as u8).collect::<Vec<_>>()
        );
        assert_eq!(
            f.dataset("test/labels").unwrap().read_raw::<u8>().unwrap(),
            vec![0, 1, 2, 3, 4]
        );
        let classes = f
            .attr("classes")
            .unwrap()
            .read_raw::<hdf5::types::VarLenUnicode>()
            .unwrap();
        assert_eq!(classes.len(), 10);
        assert_eq!(classes[9].as_str(), "Ankle boot");
        assert!(attr_str(&out, "source").contains("Fashion-MNIST"));
        // Nothing but the output is left in the directory.
        let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
    }
}

#[test]
fn limits_keep_the_first_samples() {
    let dir = out_dir();
    fake(dir.path(), 12, 5, true);
    let out = dir.path().join("fm.h5");
    convert(
        dir.path(),
        &out,
        &["--limit-train", "3", "--limit-test", "2"],
    )
    .assert_ok();
    assert_eq!(read_shape(&out, "train/images"), vec![3, 1, 4, 4]);
    assert_eq!(read_shape(&out, "test/labels"), vec![2]);
}

fn read_shape(path: &Path, name: &str) -> Vec<usize> {
    hdf5::File::open(path)
        .unwrap()
        .dataset(name)
        .unwrap()
        .shape()
}

#[test]
fn bad_inputs_are_named_and_leave_nothing() {
    let dir = out_dir();
    let out = dir.path().join("fm.h5");
    let run = convert(&dir.path().join("absent"), &out, &[]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("absent: not a directory"),
        "{}",
        run.stderr
    );

    let empty = out_dir();
    let run = convert(empty.path(), &out, &[]);
    assert!(
        run.stderr.contains("has no train-images-idx3-ubyte.gz"),
        "{}",
        run.stderr
    );

    fake(dir.path(), 12, 5, false);
    // Truncate the training labels: the header promises 12 bytes.
    std::fs::write(
        dir.path().join("train-labels-idx1-ubyte"),
        idx(&[12], &[1, 2, 3]),
    )
    .unwrap();
    let run = convert(dir.path(), &out, &[]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr
            .contains("train-labels-idx1-ubyte is not an unsigned-byte IDX file"),
        "{}",
        run.stderr
    );
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains("partial")
            })
            .count(),
        0
    );

    fake(dir.path(), 12, 5, false);
    std::fs::write(&out, "keep me").unwrap();
    let run = convert(dir.path(), &out, &[]);
    assert!(
        run.stderr.contains("already exists (use --force"),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep me");
    convert(dir.path(), &out, &["--force"]).assert_ok();
}

#[test]
fn converts_the_debian_package() {
    // The real files: 60,000 + 10,000 images in the published order.
    let path = small_dataset();
    assert_eq!(read_shape(&path, "train/images"), vec![512, 1, 28, 28]);
    let labels = hdf5::File::open(&path)
        .unwrap()
        .dataset("train/labels")
        .unwrap()
        .read_raw::<u8>()
        .unwrap();
    // The first training labels of Fashion-MNIST are 9 (ankle boot), 0, 0, 3.
    assert_eq!(&labels[..4], &[9, 0, 0, 3]);
}

fn convert_cifar(input: &Path, output: &Path) -> Run {
    rps(&[
        "convert",
        "cifar10",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ])
}

#[test]
fn cifar10_pixels_labels_classes_and_statistics_round_trip() {
    let dir = out_dir();
    write_cifar(dir.path(), 3);
    let out = dir.path().join("cifar.h5");
    let run = convert_cifar(dir.path(), &out);
    run.assert_ok();
    assert!(
        run.stdout.contains("15 training and 3 test samples"),
        "{}",
        run.stdout
    );
    let f = hdf5::File::open(&out).unwrap();
    let images = f.dataset("train/images").unwrap();
    assert_eq!(images.shape(), [15, 3, 32, 32]);
    let px = images.read_raw::<u8>().unwrap();
    let labels = f.dataset("train/labels").unwrap().read_raw::<u8>().unwrap();
    // Training files in order 1..5, records in file order; the record bytes after the
    // label are the image in C×H×W order.
    let mut want_px = Vec::new();
    let mut want_labels = Vec::new();
    for file in 0..5 {
        for rec in cifar_records(file, 3).chunks(3073) {
            want_labels.push(rec[0]);
            want_px.extend_from_slice(&rec[1..]);
        }
    }
    assert_eq!(labels, want_labels);
    assert_eq!(px, want_px);
    // Record 1 of data_batch_2.bin (f = 1) is training image 3 + 1; its red plane starts
    // with byte 7·1 + 3·1 = 10, its green plane 1,024 bytes later.
    assert_eq!(px[(3 + 1) * 3072], 10);
    assert_eq!(px[(3 + 1) * 3072 + 1024], ((10 + 1024) % 256) as u8);
    let test_px = f.dataset("test/images").unwrap().read_raw::<u8>().unwrap();
    let test_rec = cifar_records(5, 3);
    assert_eq!(&test_px[..3072], &test_rec[1..3073]);
    let classes: Vec<String> = f
        .attr("classes")
        .unwrap()
        .read_raw::<hdf5::types::VarLenUnicode>()
        .unwrap()
        .iter()
        .map(|c| c.as_str().to_string())
        .collect();
    assert_eq!(classes[0], "airplane");
    assert_eq!(classes[9], "truck");
    // Per-channel statistics of the training pixels, in [0, 1] units.
    let mean = f.attr("mean").unwrap().read_raw::<f64>().unwrap();
    let std = f.attr("std").unwrap().read_raw::<f64>().unwrap();
    for c in 0..3 {
        let vals: Vec<f64> = want_px
            .chunks(3072)
            .flat_map(|img| {
                img[c * 1024..(c + 1) * 1024]
                    .iter()
                    .map(|&b| b as f64 / 255.0)
            })
            .collect();
        let m = vals.iter().sum::<f64>() / vals.len() as f64;
        let s = (vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / vals.len() as f64).sqrt();
        assert!(
            (mean[c] - m).abs() < 1e-9 && (std[c] - s).abs() < 1e-9,
            "channel {c}"
        );
    }
    assert!(attr_str(&out, "source").contains("CIFAR-10"));
}

/// (what, how to spoil a good set of files, expected message).
type Spoil = (&'static str, fn(&Path), &'static str);

#[test]
fn cifar10_malformed_inputs_fail_clearly_and_leave_no_output() {
    let cases: [Spoil; 3] = [
        (
            "missing batch file",
            |d| std::fs::remove_file(d.join("data_batch_3.bin")).unwrap(),
            "has no data_batch_3.bin",
        ),
        (
            "wrong size",
            |d| {
                let mut b = cifar_records(0, 2);
                b.pop();
                std::fs::write(d.join("data_batch_1.bin"), b).unwrap();
            },
            "6145 bytes is not a whole, positive number of 3073-byte records",
        ),
        (
            "label above 9",
            |d| {
                let mut b = cifar_records(5, 2);
                b[3073] = 10;
                std::fs::write(d.join("test_batch.bin"), b).unwrap();
            },
            "record 1 has label 10, outside the 10 CIFAR-10 classes",
        ),
    ];
    for (what, spoil, message) in cases {
        let dir = out_dir();
        write_cifar(dir.path(), 2);
        spoil(dir.path());
        let out = dir.path().join("out").join("cifar.h5");
        let run = convert_cifar(dir.path(), &out);
        assert_eq!(run.code, Some(1), "{what}: {}", run.stderr);
        assert!(run.stderr.contains(message), "{what}: {}", run.stderr);
        assert!(!out.exists(), "{what}: output left behind");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("partial"))
            .collect();
        assert!(leftovers.is_empty(), "{what}: temporary file left behind");
    }
}

/// An --output that is one of the converter's own input files is refused, even with
/// --force, and the input is left as it was (it used to be replaced by the HDF5 file).
#[test]
fn an_output_that_is_an_input_is_refused() {
    let fm = out_dir();
    fake(fm.path(), 12, 5, true);
    let cifar = out_dir();
    write_cifar(cifar.path(), 2);
    for (format, dir, victim) in [
        ("fashion-mnist", fm.path(), "train-images-idx3-ubyte.gz"),
        ("fashion-mnist", fm.path(), "t10k-labels-idx1-ubyte.gz"),
        ("cifar10", cifar.path(), "test_batch.bin"),
        ("cifar10", cifar.path(), "data_batch_3.bin"),
    ] {
        let input = dir.to_str().unwrap();
        let target = dir.join(victim);
        let before = std::fs::read(&target).unwrap();
        // Spelled another way than the input directory joins it.
        let output = format!(
            "{input}/../{}/{victim}",
            dir.file_name().unwrap().to_str().unwrap()
        );
        let run = rps(&[
            "convert", format, "--input", input, "--output", &output, "--force",
        ]);
        assert_eq!(run.code, Some(2), "{victim}: {}", run.stderr);
        assert!(
            run.stderr.contains(&format!(
                "--output {output} is the input file {}",
                target.display()
            )),
            "{victim}: {}",
            run.stderr
        );
        assert_eq!(
            std::fs::read(&target).unwrap(),
            before,
            "{victim} was touched"
        );
    }
}
