//! Helpers shared by the multi-rank tests: the real binary under real `mpirun`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

pub const RPS: &str = env!("CARGO_BIN_EXE_rps");

/// The machine has 2 cores: one mpirun at a time, whatever the test harness's threads.
static MPIRUN: Mutex<()> = Mutex::new(());

/// Result of one mpirun.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
    pub fn assert_ok(&self) {
        assert!(
            self.ok(),
            "mpirun failed ({:?})\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
    }
}

fn finish(out: Output) -> Run {
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Holds the machine for one mpirun at a time (for tests that start their own).
pub fn lock_mpirun() -> std::sync::MutexGuard<'static, ()> {
    MPIRUN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `rps <args>` on `n` ranks with a hard 60 s limit (mpirun kills a hung job).
pub fn mpirun(n: usize, args: &[&str]) -> Run {
    let _guard = lock_mpirun();
    let out = mpirun_command(n, 60, args)
        .env("RUST_LOG", "info")
        .output()
        .expect("cannot start mpirun (is openmpi-bin installed? run scripts/setup.sh)");
    finish(out)
}

/// Runs `rps train --local-ranks n ARGS` (`args` starts with `train`): `n` ranks as
/// threads of one process, no mpirun, killed after 60 s (exit 124) if it hangs.
pub fn local_ranks(n: usize, args: &[&str]) -> Run {
    local_ranks_env(n, args, &[])
}

/// [`local_ranks`] with extra environment variables.
pub fn local_ranks_env(n: usize, args: &[&str], env: &[(&str, &str)]) -> Run {
    assert_eq!(args.first(), Some(&"train"), "local_ranks runs rps train");
    let _guard = lock_mpirun();
    let out = Command::new("timeout")
        .args(["60", RPS, "train", "--local-ranks", &n.to_string()])
        .args(&args[1..])
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .output()
        .expect("cannot run rps under timeout");
    finish(out)
}

/// Digests of a run's metrics file (every non-timing dataset) and of its saved model.
pub fn run_digests(metrics: &Path, model: &Path) -> Vec<rps::metrics::digest::Digest> {
    let mut d = rps::metrics::digest::of_metrics(metrics)
        .unwrap_or_else(|e| panic!("digest of {}: {e:#}", metrics.display()));
    d.push(
        rps::metrics::digest::of_model(model)
            .unwrap_or_else(|e| panic!("digest of {}: {e:#}", model.display())),
    );
    d
}

/// The names of the datasets whose digests differ between two runs (empty: identical).
pub fn differing(
    a: &[rps::metrics::digest::Digest],
    b: &[rps::metrics::digest::Digest],
) -> Vec<String> {
    let names: std::collections::BTreeSet<&str> =
        a.iter().chain(b).map(|d| d.name.as_str()).collect();
    names
        .into_iter()
        .filter(|n| {
            let find = |v: &[rps::metrics::digest::Digest]| {
                v.iter().find(|d| d.name == *n).map(|d| d.hex.clone())
            };
            find(a) != find(b)
        })
        .map(String::from)
        .collect()
}

/// Runs `rps <args>` without mpirun.
pub fn rps(args: &[&str]) -> Run {
    finish(
        Command::new(RPS)
            .args(args)
            // For the mpirun that `rps sweep` starts.
            .open_mpi_env()
            .output()
            .expect("cannot run rps"),
    )
}

/// A small Fashion-MNIST file (512 training, 200 test images) converted once from the
/// Debian package's IDX files.
pub fn small_dataset() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join("fashion-mnist-small.h5");
        let run = rps(&[
            "convert",
            "fashion-mnist",
            "--input",
            "/usr/share/datasets/fashion-mnist",
            "--output",
            path.to_str().unwrap(),
            "--limit-train",
            "512",
            "--limit-test",
            "200",
            "--force",
        ]);
        run.assert_ok();
        path
    })
    .clone()
}

/// Writes CIFAR-10 binary batch files into `dir` in exactly the dataset's format: records
/// of one label byte then 3,072 pixel bytes (R, G, B planes of 32×32). `per_file` records
/// in each of the five training files and in the test file; record r of file f has label
/// (f + r) % 10 and pixel p = (7·f + 3·r + p) % 256.
pub fn write_cifar(dir: &Path, per_file: usize) {
    let names = [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ];
    for (f, name) in names.iter().enumerate() {
        std::fs::write(dir.join(name), cifar_records(f, per_file)).unwrap();
    }
}

/// The bytes of file `f` as [`write_cifar`] writes them.
pub fn cifar_records(f: usize, n: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(n * 3073);
    for r in 0..n {
        bytes.push(((f + r) % 10) as u8);
        bytes.extend((0..3072).map(|p| ((7 * f + 3 * r + p) % 256) as u8));
    }
    bytes
}

/// A small CIFAR-format dataset (5 × `per_file` training, `per_file` test images)
/// converted once.
pub fn small_cifar() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cifar-small");
        std::fs::create_dir_all(&dir).unwrap();
        write_cifar(&dir, 24);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cifar-small.h5");
        rps(&[
            "convert",
            "cifar10",
            "--input",
            dir.to_str().unwrap(),
            "--output",
            path.to_str().unwrap(),
            "--force",
        ])
        .assert_ok();
        path
    })
    .clone()
}

/// A fresh directory for one test's outputs.
pub fn out_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rps-test")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// Opens an HDF5 file for reading, waiting (up to 10 s) while a process that is still
/// exiting holds HDF5's lock on it.
pub fn open(path: &Path) -> hdf5::File {
    let start = std::time::Instant::now();
    loop {
        match hdf5::File::open(path) {
            Ok(f) => return f,
            Err(e)
                if e.to_string().contains("unable to lock file")
                    && start.elapsed().as_secs() < 10 =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("cannot open {}: {e}", path.display()),
        }
    }
}

pub fn read_u64(path: &Path, name: &str) -> Vec<u64> {
    open(path).dataset(name).unwrap().read_raw::<u64>().unwrap()
}

pub fn read_f64(path: &Path, name: &str) -> Vec<f64> {
    open(path).dataset(name).unwrap().read_raw::<f64>().unwrap()
}

pub fn read_params(path: &Path) -> Vec<f32> {
    open(path)
        .dataset("params")
        .unwrap()
        .read_raw::<f32>()
        .unwrap()
}

pub fn attr_f64(path: &Path, name: &str) -> f64 {
    open(path).attr(name).unwrap().read_scalar::<f64>().unwrap()
}

pub fn attr_i64(path: &Path, name: &str) -> i64 {
    open(path).attr(name).unwrap().read_scalar::<i64>().unwrap()
}

pub fn attr_str(path: &Path, name: &str) -> String {
    open(path)
        .attr(name)
        .unwrap()
        .read_scalar::<hdf5::types::VarLenUnicode>()
        .unwrap()
        .as_str()
        .to_string()
}

/// `train --dataset DATA --metrics METRICS REST...`: the argument vector of a training
/// run, for [`mpirun`], [`local_ranks`] and [`rps`].
pub fn train_args<'a, D, M>(data: &'a D, metrics: &'a M, rest: &[&'a str]) -> Vec<&'a str>
where
    D: AsRef<Path> + ?Sized,
    M: AsRef<Path> + ?Sized,
{
    let path = |p: &'a Path| p.to_str().expect("test paths are UTF-8");
    let mut v = vec![
        "train",
        "--dataset",
        path(data.as_ref()),
        "--metrics",
        path(metrics.as_ref()),
    ];
    v.extend_from_slice(rest);
    v
}

/// Lets Open MPI run as root (CI, containers) and start more ranks than cores: the
/// environment of every mpirun of the suite, and of every command that starts one.
pub trait OpenMpiEnv {
    fn open_mpi_env(&mut self) -> &mut Self;
}

impl OpenMpiEnv for Command {
    fn open_mpi_env(&mut self) -> &mut Self {
        self.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
    }
}

/// `mpirun -n N --timeout SECONDS rps ARGS...`, not started: mpirun kills a job that
/// outlives the timeout, so a hung rank fails its test instead of the suite.
pub fn mpirun_command(n: usize, timeout_s: u64, args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args([
        "-n",
        &n.to_string(),
        "--timeout",
        &timeout_s.to_string(),
        RPS,
    ])
    .args(args)
    .open_mpi_env();
    c
}

/// Asserts that two runs are the same run, bit for bit: their final models, the losses,
/// accuracies and consensus distances, and the step, message and drop counts.
pub fn assert_same_run(a: &Path, a_model: &Path, b: &Path, b_model: &Path) {
    use rps::metrics::schema::*;
    assert_eq!(read_params(a_model), read_params(b_model), "final models");
    let real = [
        LOSS.name,
        ACCURACY.name,
        TEST_LOSS.name,
        CONSENSUS_DISTANCE.name,
    ];
    for name in real {
        assert_eq!(read_f64(a, name), read_f64(b, name), "{name}");
    }
    let counts = [
        STEP.name,
        SENT_UP.name,
        DROPPED_UP.name,
        DROPPED_DOWN.name,
        EVAL_STEP.name,
    ];
    for name in counts {
        assert_eq!(read_u64(a, name), read_u64(b, name), "{name}");
    }
}
