//! `rps convert cifar10`: the CIFAR-10 binary version → rps's HDF5 layout.
//!
//! Input: `data_batch_1.bin` … `data_batch_5.bin` (training) and `test_batch.bin`, as in
//! `cifar-10-binary.tar.gz` (extracted to `cifar-10-batches-bin/`). Each file is a sequence
//! of 3,073-byte records: one label byte (0–9), then 3,072 pixel bytes — the 32×32 red
//! plane, then green, then blue — which is already N×3×32×32 order. The output also holds
//! root attributes `mean` and `std` (per channel, pixels scaled to [0, 1], over the
//! training samples written), which workers use to normalise their batches.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use ndarray::{ArrayView1, ArrayView4};

use super::convert::{write_dataset_with, ConvertOptions, ConvertSummary, Split};

/// Class names in label order, from the dataset's `batches.meta.txt`.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Side of an image.
pub const SIDE: usize = 32;
/// Pixel bytes of one record (3 planes of 32×32).
pub const PIXELS: usize = 3 * SIDE * SIDE;
/// Bytes of one record: the label, then the pixels.
pub const RECORD: usize = 1 + PIXELS;
/// Training files, in order.
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// Test file.
pub const TEST_FILE: &str = "test_batch.bin";

/// Appends the records of one batch file to `images` and `labels`, checking its size and
/// every label.
fn read_batch(path: &Path, images: &mut Vec<u8>, labels: &mut Vec<u8>) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    ensure!(
        !bytes.is_empty() && bytes.len() % RECORD == 0,
        "{}: {} bytes is not a whole, positive number of {RECORD}-byte records (1 label byte + {PIXELS} pixel bytes): not a CIFAR-10 binary batch file, or truncated",
        path.display(),
        bytes.len()
    );
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        if rec[0] as usize >= CIFAR10_CLASSES.len() {
            bail!(
                "{}: record {i} has label {}, outside the 10 CIFAR-10 classes [0, 10): not the CIFAR-10 binary version (CIFAR-100's records have 2 label bytes)",
                path.display(),
                rec[0]
            );
        }
        labels.push(rec[0]);
        images.extend_from_slice(&rec[1..]);
    }
    Ok(())
}

/// Per-channel mean and standard deviation of `images` (N×3×32×32 bytes) in [0, 1] units.
pub fn channel_stats(images: &[u8]) -> (Vec<f64>, Vec<f64>) {
    let plane = SIDE * SIDE;
    let n = (images.len() / 3).max(1) as f64;
    let channel = |c: usize| {
        images
            .chunks_exact(PIXELS)
            .flat_map(move |rec| rec[c * plane..(c + 1) * plane].iter())
            .map(|&b| b as f64 / 255.0)
    };
    // Two passes: the variance of values near their mean without cancellation.
    let mean: Vec<f64> = (0..3).map(|c| channel(c).sum::<f64>() / n).collect();
    let std = (0..3)
        .map(|c| (channel(c).map(|v| (v - mean[c]).powi(2)).sum::<f64>() / n).sqrt())
        .collect();
    (mean, std)
}

/// Converts the CIFAR-10 binary batches in `opts.input` into one HDF5 file.
///
/// # Errors
/// A missing batch file, a file whose size is not a whole number of records, a label
/// outside 0–9, an existing output without `force`, or a failure to write; no output
/// file is left behind in any of these cases.
pub fn cifar10(opts: &ConvertOptions) -> Result<ConvertSummary> {
    ensure!(
        opts.input.is_dir(),
        "--input {}: not a directory (expected cifar-10-batches-bin/ from cifar-10-binary.tar.gz)",
        opts.input.display()
    );
    let inputs: Vec<_> = TRAIN_FILES
        .iter()
        .chain([&TEST_FILE])
        .map(|name| opts.input.join(name))
        .collect();
    super::convert::check_output(&opts.output, &inputs)?;
    for name in TRAIN_FILES.iter().chain([&TEST_FILE]) {
        let p = opts.input.join(name);
        ensure!(
            p.is_file(),
            "{} has no {name} (expected the CIFAR-10 binary version: data_batch_1.bin … data_batch_5.bin and test_batch.bin, as extracted from cifar-10-binary.tar.gz into cifar-10-batches-bin/)",
            opts.input.display()
        );
    }
    let mut train = (Vec::new(), Vec::new());
    for name in TRAIN_FILES {
        read_batch(&opts.input.join(name), &mut train.0, &mut train.1)?;
    }
    let mut test = (Vec::new(), Vec::new());
    read_batch(&opts.input.join(TEST_FILE), &mut test.0, &mut test.1)?;
    for ((images, labels), limit, name) in [
        (&mut train, opts.limit_train, "train"),
        (&mut test, opts.limit_test, "test"),
    ] {
        let keep = limit.map_or(labels.len(), |l| l.min(labels.len()));
        ensure!(keep > 0, "{name}: no samples to convert (limit {limit:?})");
        labels.truncate(keep);
        images.truncate(keep * PIXELS);
    }
    let (mean, std) = channel_stats(&train.0);
    let tri = ArrayView4::from_shape((train.1.len(), 3, SIDE, SIDE), train.0.as_slice())?;
    let tei = ArrayView4::from_shape((test.1.len(), 3, SIDE, SIDE), test.0.as_slice())?;
    let (trl, tel) = (
        ArrayView1::from(&train.1[..]),
        ArrayView1::from(&test.1[..]),
    );
    write_dataset_with(
        &opts.output,
        opts.force,
        "CIFAR-10 (Krizhevsky, Nair and Hinton), binary version",
        &CIFAR10_CLASSES,
        &[
            Split {
                name: "train",
                images: tri,
                labels: trl,
            },
            Split {
                name: "test",
                images: tei,
                labels: tel,
            },
        ],
        &[("mean", mean), ("std", std)],
    )?;
    Ok(ConvertSummary {
        train: train.1.len(),
        test: test.1.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_stats_by_hand() {
        // Two images: red all 0 / all 255, green all 51, blue 0 in one and 102 in the other.
        let mut px = vec![0u8; 2 * PIXELS];
        let plane = SIDE * SIDE;
        px[PIXELS..PIXELS + plane].fill(255);
        px[plane..2 * plane].fill(51);
        px[PIXELS + plane..PIXELS + 2 * plane].fill(51);
        px[PIXELS + 2 * plane..].fill(102);
        let (m, s) = channel_stats(&px);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(m[0], 0.5) && close(s[0], 0.5), "{m:?} {s:?}");
        assert!(close(m[1], 0.2) && close(s[1], 0.0), "{m:?} {s:?}");
        assert!(close(m[2], 0.2) && close(s[2], 0.2), "{m:?} {s:?}");
    }
}
