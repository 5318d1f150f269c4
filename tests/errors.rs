//! Bad input: one clear error, a non-zero exit on every rank, no panic, no hang, and no
//! output file left behind. One case of each kind runs under real mpirun; the others run
//! the same driver on in-process ranks (`--local-ranks`), which is much cheaper.

mod common;
use common::*;

use std::path::Path;

use hdf5::types::VarLenUnicode;
use ndarray::{Array1, Array3, Array4};

/// How a case is launched.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Launch {
    Mpirun,
    Local,
}

/// The first case of a list runs under mpirun, the rest in process.
fn launch(i: usize) -> Launch {
    if i == 0 {
        Launch::Mpirun
    } else {
        Launch::Local
    }
}

/// A failed job: non-zero, no hang, the expected words, exactly one error line, no panic.
fn check_failed(run: &Run, needle: &str) {
    assert!(!run.ok(), "job succeeded:\n{}", run.stdout);
    assert!(
        run.code != Some(110) && run.code != Some(124),
        "job hung until the timeout :\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(needle),
        "expected {needle:?} in stderr:\n{}",
        run.stderr
    );
    let errors = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error"))
        .count();
    assert_eq!(
        errors, 1,
        "expected exactly one error line:\n{}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "panic:\n{}", run.stderr);
}

/// Runs a job expected to fail and checks how it failed.
fn expect_failure(how: Launch, n: usize, args: &[&str], needle: &str) -> Run {
    let run = match how {
        Launch::Mpirun => mpirun(n, args),
        Launch::Local => local_ranks(n, args),
    };
    check_failed(&run, needle);
    run
}

/// A short run: two steps of batch 4.
fn short<'a>(data: &'a str, metrics: &'a str) -> Vec<&'a str> {
    train_args(data, metrics, &["--steps", "2", "--batch-size", "4"])
}

fn classes(file: &hdf5::File, n: usize) {
    let names: Array1<VarLenUnicode> = (0..n).map(|i| format!("c{i}").parse().unwrap()).collect();
    file.new_attr::<VarLenUnicode>()
        .shape(n)
        .create("classes")
        .unwrap()
        .write(&names)
        .unwrap();
}

fn split(file: &hdf5::File, name: &str, n: usize, label: u8) {
    split_of(
        file,
        name,
        Array4::zeros((n, 1, 8, 8)),
        Array1::from_elem(n, label),
    );
}

/// A split group holding `images` and `labels` (of any integer type).
fn split_of<L: hdf5::H5Type>(file: &hdf5::File, name: &str, images: Array4<u8>, labels: Array1<L>) {
    let g = file.create_group(name).unwrap();
    g.new_dataset_builder()
        .with_data(&images)
        .create("images")
        .unwrap();
    g.new_dataset_builder()
        .with_data(&labels)
        .create("labels")
        .unwrap();
}

/// A split whose images (`n` of `c`×`h`×`w`) and labels are declared but never written:
/// HDF5 reads the fill value, 0, and the file stays a few kilobytes.
fn declared(file: &hdf5::File, name: &str, n: usize, [c, h, w]: [usize; 3]) {
    let g = file.create_group(name).unwrap();
    g.new_dataset::<u8>()
        .chunk((1, c, h.min(256), w.min(256)))
        .shape((n, c, h, w))
        .create("images")
        .unwrap();
    g.new_dataset::<u8>()
        .chunk(n.min(4096))
        .shape(n)
        .create("labels")
        .unwrap();
}

/// Writes an HDF5 file whose content `build` decides.
fn h5(path: &Path, build: impl FnOnce(&hdf5::File)) -> String {
    let f = hdf5::File::create(path).unwrap();
    build(&f);
    f.close().unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn dataset_problems() {
    let dir = out_dir();
    let metrics = dir.path().join("m.h5");
    let m = metrics.to_str().unwrap();
    let text = dir.path().join("notes.h5");
    std::fs::write(&text, "not an HDF5 file\n").unwrap();
    let cases: Vec<(String, &str)> = vec![
        (
            dir.path().join("absent.h5").to_str().unwrap().into(),
            "file not found",
        ),
        (text.to_str().unwrap().into(), "not a readable HDF5 file"),
        (
            h5(&dir.path().join("nogroups.h5"), |f| classes(f, 10)),
            "missing group /train",
        ),
        (
            h5(&dir.path().join("noclasses.h5"), |f| {
                split(f, "train", 8, 0)
            }),
            "missing root attribute classes",
        ),
        (
            h5(&dir.path().join("nolabels.h5"), |f| {
                classes(f, 10);
                split(f, "train", 8, 0);
                let g = f.create_group("test").unwrap();
                g.new_dataset_builder()
                    .with_data(&Array4::<u8>::zeros((4, 1, 8, 8)))
                    .create("images")
                    .unwrap();
            }),
            "missing dataset /test/labels",
        ),
        (
            h5(&dir.path().join("shape.h5"), |f| {
                classes(f, 10);
                let g = f.create_group("train").unwrap();
                g.new_dataset_builder()
                    .with_data(&Array3::<u8>::zeros((8, 8, 8)))
                    .create("images")
                    .unwrap();
                g.new_dataset_builder()
                    .with_data(&Array1::<u8>::zeros(8))
                    .create("labels")
                    .unwrap();
                split(f, "test", 4, 0);
            }),
            "train/images has shape [8, 8, 8]",
        ),
        (
            h5(&dir.path().join("dtype.h5"), |f| {
                classes(f, 10);
                let g = f.create_group("train").unwrap();
                g.new_dataset_builder()
                    .with_data(&Array4::<f32>::zeros((8, 1, 8, 8)))
                    .create("images")
                    .unwrap();
                g.new_dataset_builder()
                    .with_data(&Array1::<u8>::zeros(8))
                    .create("labels")
                    .unwrap();
                split(f, "test", 4, 0);
            }),
            "train/images has type float32, expected u8",
        ),
        (
            h5(&dir.path().join("labels.h5"), |f| {
                classes(f, 10);
                split(f, "train", 8, 0);
                split(f, "test", 4, 12);
            }),
            "test/labels[0] = 12 is outside the 10 classes",
        ),
        (
            h5(&dir.path().join("count.h5"), |f| {
                classes(f, 10);
                split(f, "train", 8, 0);
                split_of(
                    f,
                    "test",
                    Array4::zeros((4, 1, 8, 8)),
                    Array1::<u8>::zeros(3),
                );
            }),
            "test/labels has shape [3], expected [4]",
        ),
        (
            h5(&dir.path().join("empty.h5"), |f| {
                classes(f, 10);
                split(f, "train", 0, 0);
                split(f, "test", 4, 0);
            }),
            "split train is empty",
        ),
        (
            h5(&dir.path().join("u64labels.h5"), |f| {
                classes(f, 10);
                split(f, "train", 8, 0);
                split_of(
                    f,
                    "test",
                    Array4::zeros((4, 1, 8, 8)),
                    Array1::from_elem(4, u64::MAX),
                );
            }),
            "test/labels[0] = 18446744073709551615 is outside the 10 classes",
        ),
        (
            h5(&dir.path().join("huge.h5"), |f| {
                classes(f, 10);
                let blank = |n| Array4::zeros((n, 1, 2048, 2048));
                split_of(f, "train", blank(2), Array1::<u8>::zeros(2));
                split_of(f, "test", blank(1), Array1::<u8>::zeros(1));
            }),
            "each rank needs about",
        ),
        // Shapes declared far beyond memory (chunked datasets never written: the files
        // are tiny) are refused before anything that size is read.
        (
            h5(&dir.path().join("wide.h5"), |f| {
                classes(f, 10);
                declared(f, "train", 64, [1, 65536, 65536]);
                declared(f, "test", 1, [1, 65536, 65536]);
            }),
            "wide.h5: train/images",
        ),
        (
            h5(&dir.path().join("many.h5"), |f| {
                classes(f, 10);
                declared(f, "train", 1 << 40, [1, 4, 4]);
                declared(f, "test", 4, [1, 4, 4]);
            }),
            "many.h5: train/",
        ),
        (
            h5(&dir.path().join("geometry.h5"), |f| {
                classes(f, 10);
                let g = f.create_group("train").unwrap();
                g.new_dataset_builder()
                    .with_data(&Array4::<u8>::zeros((8, 1, 6, 6)))
                    .create("images")
                    .unwrap();
                g.new_dataset_builder()
                    .with_data(&Array1::<u8>::zeros(8))
                    .create("labels")
                    .unwrap();
                let g = f.create_group("test").unwrap();
                g.new_dataset_builder()
                    .with_data(&Array4::<u8>::zeros((4, 1, 6, 6)))
                    .create("images")
                    .unwrap();
                g.new_dataset_builder()
                    .with_data(&Array1::<u8>::zeros(4))
                    .create("labels")
                    .unwrap();
            }),
            "do not fit the CNN",
        ),
    ];
    for (i, (data, needle)) in cases.into_iter().enumerate() {
        expect_failure(launch(i), 3, &short(&data, m), needle);
        assert!(
            !metrics.exists(),
            "{needle}: a metrics file was left behind"
        );
    }
}

#[test]
fn truncated_dataset_fails_cleanly() {
    let data = small_dataset();
    let dir = out_dir();
    let cut = dir.path().join("cut.h5");
    let bytes = std::fs::read(&data).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let m = dir.path().join("m.h5");
    let run = mpirun(3, &short(cut.to_str().unwrap(), m.to_str().unwrap()));
    assert!(
        !run.ok() && run.code != Some(110),
        "{:?}\n{}",
        run.code,
        run.stderr
    );
    assert!(run.stderr.contains("cut.h5"), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert!(!m.exists());
}

#[test]
fn flag_problems() {
    let data = small_dataset();
    let data = data.to_str().unwrap();
    let dir = out_dir();
    let metrics = dir.path().join("m.h5");
    let m = metrics.to_str().unwrap();
    let with = |extra: &[&'static str]| {
        let mut a = train_args(data, m, &["--steps", "2"]);
        a.extend_from_slice(extra);
        a
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            with(&["--drop-rate", "1.5"]),
            "--drop-rate 1.5 is outside [0, 1]",
        ),
        (
            with(&["--drop-rate", "-0.1"]),
            "--drop-rate -0.1 is outside [0, 1]",
        ),
        (
            with(&["--servers", "3"]),
            "--servers 3 leaves no worker in a job of 3 rank(s)",
        ),
        (with(&["--servers", "0"]), "--servers must be at least 1"),
        (
            with(&["--batch-size", "0"]),
            "--batch-size must be at least 1",
        ),
        (
            with(&["--batch-size", "300"]),
            "--batch-size 300 exceeds the 256 training samples of each worker",
        ),
        (with(&["--lr", "-1"]), "--lr -1 must be a finite number > 0"),
        (with(&["--momentum", "1"]), "--momentum 1 must be in [0, 1)"),
        (
            with(&["--algorithm", "allreduce", "--drop-rate", "0.1"]),
            "apply to --algorithm rps only",
        ),
        (
            with(&["--servers", "1", "--colocated"]),
            "cannot be used with",
        ),
        (
            with(&["--drop-rate", "abc"]),
            "invalid value 'abc' for '--drop-rate <P>'",
        ),
        (
            train_args(data, m, &[
                "--epochs",
                "288230376151711745",
                "--batch-size",
                "1",
            ]),
            "--epochs 288230376151711745 of 256 steps each is more steps than can be counted",
        ),
        (
            with(&["--servers", "18446744073709551615"]),
            "or use fewer servers (at most 2)",
        ),
        (
            with(&["--detect", "deadline", "--recv-timeout-ms", "100000000"]),
            "--recv-timeout-ms 100000000 must be from 1 to 60000",
        ),
        (
            with(&["--lr-schedule", "step", "--lr-milestones", "0.5,1.5"]),
            "--lr-milestones: 1.5 is neither a fraction of the run (below 1) nor a whole step number",
        ),
        // Given explicitly, even at its default value, a UDP flag needs UDP.
        (
            with(&["--udp-link-rate", "10G"]),
            "--udp-link-rate applies to --transport udp only",
        ),
        (
            with(&["--no-such-flag"]),
            "unexpected argument '--no-such-flag'",
        ),
    ];
    let cases_len = cases.len();
    for (i, (args, needle)) in cases.into_iter().enumerate() {
        // One config error and one parse error (the last) under mpirun.
        let how = if i + 1 == cases_len {
            Launch::Mpirun
        } else {
            launch(i)
        };
        let run = expect_failure(how, 3, &args, needle);
        assert!(
            !metrics.exists(),
            "{needle}: a metrics file was left behind"
        );
        assert!(run.code.is_some());
    }
}

#[test]
fn output_problems() {
    let data = small_dataset();
    let data = data.to_str().unwrap();
    let dir = out_dir();
    // A path below a regular file cannot be created, even by root.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    let below = blocker.join("m.h5");
    expect_failure(
        Launch::Mpirun,
        3,
        &short(data, below.to_str().unwrap()),
        "cannot create directory",
    );

    // An existing metrics file is kept unless --force.
    let existing = dir.path().join("existing.h5");
    std::fs::write(&existing, "precious").unwrap();
    expect_failure(
        Launch::Local,
        3,
        &short(data, existing.to_str().unwrap()),
        "already exists (use --force",
    );
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "precious");
    let mut forced = short(data, existing.to_str().unwrap());
    forced.push("--force");
    local_ranks(3, &forced).assert_ok();
    assert_eq!(attr_str(&existing, "status"), "completed");
}

/// The job file is an input like the dataset: no output may replace it, whether the
/// output is named on the command line or inside the job file itself (with `force`).
#[test]
fn the_job_file_is_never_an_output() {
    let data = small_dataset();
    let dir = out_dir();
    let job = dir.path().join("job.toml");
    let j = job.to_str().unwrap();
    let body = |metrics: &str| {
        format!(
            "[train]\ndataset = \"{}\"\n{metrics}force = true\ncolocated = true\nsteps = 2\nbatch_size = 4\n",
            data.display()
        )
    };
    let other = dir.path().join("m.h5");
    let o = other.to_str().unwrap();
    let spelled = format!("{}/./job.toml", dir.path().display());
    let cases: Vec<(String, Vec<&str>, String)> = vec![
        // `metrics = "job.toml"` inside the job file.
        (
            body(&format!("metrics = \"{j}\"\n")),
            vec![],
            format!("--metrics {j} is also --job"),
        ),
        (
            body(""),
            vec!["--metrics", &spelled],
            format!("--metrics {spelled} is also --job"),
        ),
        (
            body(""),
            vec!["--metrics", o, "--save-model", j],
            format!("--save-model {j} is also --job"),
        ),
    ];
    for (i, (text, extra, needle)) in cases.into_iter().enumerate() {
        std::fs::write(&job, &text).unwrap();
        let mut args = vec!["train", "--job", j];
        args.extend(extra);
        let run = expect_failure(launch(i), 2, &args, &needle);
        assert_eq!(run.code, Some(2), "{}", run.stderr);
        assert_eq!(
            std::fs::read_to_string(&job).unwrap(),
            text,
            "{needle}: the job file was replaced"
        );
        assert!(!other.exists(), "{needle}: a metrics file was left behind");
    }
}

/// An unusable --metrics or --save-model is refused before the first step, with exit
/// status 2 like any bad flag (a bad --save-model used to be found only after training,
/// losing the model and leaving the metrics file `running`; a bad --metrics exited 1).
#[test]
fn unusable_outputs_are_refused_before_training() {
    let data = small_dataset();
    let data = data.to_str().unwrap();
    let dir = out_dir();
    let metrics = dir.path().join("m.h5");
    let m = metrics.to_str().unwrap();
    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    let f = folder.to_str().unwrap();
    // /proc refuses new files, even to root.
    let cases: Vec<(&str, Vec<&str>, String)> = vec![
        (
            m,
            vec!["--save-model", "/proc/rps-model.h5"],
            "--save-model /proc/rps-model.h5: cannot create a file in /proc".into(),
        ),
        (
            m,
            vec!["--save-model", f, "--force"],
            format!("--save-model {f} is a directory"),
        ),
        (
            m,
            vec!["--save-model", "/proc/rps-dir/model.h5"],
            "--save-model /proc/rps-dir/model.h5: cannot create directory /proc/rps-dir".into(),
        ),
        (
            "/proc/rps-metrics.h5",
            vec![],
            "--metrics /proc/rps-metrics.h5: cannot create a file in /proc".into(),
        ),
        (f, vec!["--force"], format!("--metrics {f} is a directory")),
    ];
    for (i, (metrics_flag, extra, needle)) in cases.into_iter().enumerate() {
        let mut args = short(data, metrics_flag);
        args.extend(["--colocated", "--steps", "3"]);
        args.extend(extra);
        let run = expect_failure(launch(i), 2, &args, &needle);
        assert_eq!(run.code, Some(2), "{}", run.stderr);
        assert!(!metrics.exists(), "{needle}: the run started");
    }
    assert!(folder.is_dir());
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 0);
}

/// Runs an MPMD job: one `mpirun` with a `:`-separated program per rank group.
fn mpmd(groups: &[(&str, Vec<&str>)]) -> Run {
    let _guard = lock_mpirun();
    let mut cmd = std::process::Command::new("mpirun");
    cmd.args(["--timeout", "60"]);
    for (i, (program, args)) in groups.iter().enumerate() {
        if i > 0 {
            cmd.arg(":");
        }
        cmd.args(["-n", "1", program]).args(args);
    }
    let out = cmd.open_mpi_env().output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Ranks started with different flags, or from different builds, stop at once with one
/// line naming what differs and where (they used to hang or train on mixed settings).
#[test]
fn ranks_must_run_the_same_job() {
    let data = small_dataset();
    let data = data.to_str().unwrap();
    let dir = out_dir();
    let metrics = dir.path().join("m.h5");
    let m = metrics.to_str().unwrap();
    let args = |steps: &'static str, lr: &'static str| {
        let mut a = short(data, m);
        a.extend(["--colocated", "--steps", steps, "--lr", lr]);
        a
    };
    let check = |run: &Run, needle: &str| {
        check_failed(run, needle);
        assert!(!metrics.exists());
    };
    let run = mpmd(&[
        (RPS, args("3", "0.05")),
        (RPS, args("4", "0.05")),
        (RPS, args("3", "0.05")),
    ]);
    check(
        &run,
        "duration is Steps(3) on rank(s) 0, 2, but Steps(4) on rank(s) 1",
    );
    let run = mpmd(&[(RPS, args("3", "0.05")), (RPS, args("3", "0.1"))]);
    check(&run, "lr is 0.05 on rank(s) 0, but 0.1 on rank(s) 1");
    // The same version, another build: a copy of the binary with one byte more.
    let other = dir.path().join("rps-other");
    let mut bytes = std::fs::read(RPS).unwrap();
    bytes.push(0);
    std::fs::write(&other, bytes).unwrap();
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let run = mpmd(&[
        (RPS, args("3", "0.05")),
        (other.to_str().unwrap(), args("3", "0.05")),
    ]);
    check(&run, "the ranks run different jobs: build is");
}

/// A typo in RPS_KERNELS is an error naming it, not silently the default kernels.
#[test]
fn an_unknown_instruction_set_is_refused() {
    let data = small_dataset();
    let dir = out_dir();
    let m = dir.path().join("m.h5");
    let args = short(data.to_str().unwrap(), m.to_str().unwrap());
    let run = local_ranks_env(2, &args, &[("RPS_KERNELS", "sse9")]);
    check_failed(
        &run,
        "RPS_KERNELS=sse9: unknown instruction set (expected auto, portable, avx2 or avx512)",
    );
}

/// Ranks started with different subcommands, or `rps bench-exchange` with different
/// flags, or one rank with an invalid command line, stop together at once with one
/// message (they used to hang, or corrupt the heap in mismatched messages).
#[test]
fn ranks_must_run_the_same_command() {
    let data = small_dataset();
    let data = data.to_str().unwrap();
    let dir = out_dir();
    let metrics = dir.path().join("m.h5");
    let train = short(data, metrics.to_str().unwrap());
    let bench = |extra: &[&'static str]| {
        let mut a = vec!["bench-exchange", "--sizes", "1e5", "--repeats", "2"];
        a.extend(extra);
        a
    };
    let different = "the ranks of this launch run different commands: `rps train` on rank(s) 0, `rps bench-exchange` on rank(s) 1";
    check_failed(&mpmd(&[(RPS, train.clone()), (RPS, bench(&[]))]), different);
    check_failed(
        &mpmd(&[(RPS, bench(&[])), (RPS, train.clone())]),
        "`rps bench-exchange` on rank(s) 0, `rps train` on rank(s) 1",
    );
    check_failed(
        &mpmd(&[(RPS, bench(&[])), (RPS, bench(&["--sizes", "4e5"]))]),
        "run `rps bench-exchange` with different flags: `bench-exchange --sizes 1e5 --repeats 2` on rank(s) 0, `bench-exchange --sizes 1e5 --repeats 2 --sizes 4e5` on rank(s) 1",
    );
    check_failed(
        &mpmd(&[(RPS, bench(&["--repeats", "3"])), (RPS, bench(&[]))]),
        "with different flags",
    );
    let mut bad = train.clone();
    bad.push("--bogus");
    check_failed(
        &mpmd(&[(RPS, bench(&[])), (RPS, bad)]),
        "unexpected argument '--bogus'",
    );
    assert!(!metrics.exists());
}

/// Statistics that would poison training are refused up front, and a run that diverges
/// anyway stops at once with a distinct status and a non-zero exit, its rows flushed.
#[test]
fn divergence_is_an_error_not_a_result() {
    let dir = out_dir();
    let metrics = dir.path().join("m.h5");
    let m = metrics.to_str().unwrap();
    for (i, (mean, std, needle)) in [
        (f64::NAN, 0.3, "attribute mean[0] = NaN"),
        (1e300, 0.3, "attribute mean[0] = 1e300"),
        (0.5, 1e-30, "attribute std[0] = 1e-30"),
        (0.5, f64::INFINITY, "attribute std[0] = inf"),
    ]
    .into_iter()
    .enumerate()
    {
        let data = h5(&dir.path().join(format!("stats{i}.h5")), |f| {
            classes(f, 10);
            split(f, "train", 8, 0);
            split(f, "test", 4, 0);
            for (name, v) in [("mean", mean), ("std", std)] {
                f.new_attr::<f64>()
                    .shape(1)
                    .create(name)
                    .unwrap()
                    .write(&[v])
                    .unwrap();
            }
        });
        expect_failure(launch(i), 2, &short(&data, m), needle);
        assert!(!metrics.exists());
    }
    let data = small_dataset();
    // A non-finite loss (the CNN at --lr 1e30), and a finite loss of about 1e11 and
    // growing (the MLP at --lr 1e6, which used to end `completed` at a loss of 1e31).
    for (i, (model, lr, needle)) in [
        ("cnn", "1e30", "not finite (NaN or infinite)"),
        ("mlp", "1e6", "the training loss exceeds"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut args = short(data.to_str().unwrap(), m);
        args.extend(["--colocated", "--lr", lr, "--model", model, "--steps", "20"]);
        args.extend(["--batch-size", "8", "--force"]);
        let run = expect_failure(launch(i), 2, &args, "training diverged at step");
        assert!(run.stderr.contains(needle), "{}", run.stderr);
        assert_eq!(run.code, Some(1));
        assert_eq!(attr_str(&metrics, "status"), "diverged");
        let steps = read_u64(&metrics, "train/step");
        assert!(!steps.is_empty() && steps.len() < 20, "{steps:?}");
        assert_eq!(attr_i64(&metrics, "steps_completed"), steps.len() as i64);
    }
}

/// `--local-ranks` started by a launcher of several processes would be several jobs on
/// the same files: refused, with one line.
#[test]
fn local_ranks_under_mpirun_is_refused() {
    let data = small_dataset();
    let dir = out_dir();
    let metrics = dir.path().join("m.h5");
    let mut args = short(data.to_str().unwrap(), metrics.to_str().unwrap());
    args.extend(["--local-ranks", "2"]);
    expect_failure(Launch::Mpirun, 2, &args, "but the launcher started 2");
    assert!(!metrics.exists());
}

/// Flags that only matter in a mode that is off are not silently dropped: rank 0 warns,
/// naming the flag and what it needs, and the run goes on.
#[test]
fn flags_of_a_mode_that_is_off_are_named() {
    let data = small_dataset();
    let dir = out_dir();
    let metrics = dir.path().join("m.h5");
    let mut args = short(data.to_str().unwrap(), metrics.to_str().unwrap());
    args.extend([
        "--colocated",
        "--lr-gamma",
        "0.5",
        "--ge-p",
        "0.2",
        "--recv-timeout-ms",
        "100",
        "--force",
    ]);
    for run in [mpirun(2, &args), local_ranks(2, &args)] {
        run.assert_ok();
        for needle in [
            "--lr-gamma is ignored: it applies to --lr-schedule step only",
            "--ge-p is ignored: it applies to --drop-model gilbert-elliott only",
            "--recv-timeout-ms is ignored: it applies to --detect deadline only",
        ] {
            assert_eq!(
                run.stderr
                    .lines()
                    .filter(|l| l.contains("WARN") && l.contains(needle))
                    .count(),
                1,
                "{needle}:\n{}",
                run.stderr
            );
        }
        assert!(!run.stderr.contains("--colocated is ignored"));
    }
}
