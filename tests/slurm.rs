//! The sbatch scripts under a real (single-node, localhost) Slurm: a training run, a
//! clean stop on the batch script's TERM (what `--signal=B:TERM@N` sends before the
//! time limit), a sweep as a job array, and a Python script on the rps package. Needs Debian's slurm-wlm and munge
//! (scripts/setup-slurm.sh; scripts/test.sh runs it).

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A running private cluster, stopped on drop.
struct Cluster {
    dir: PathBuf,
    conf: String,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let port = 20_000 + std::process::id() % 20_000;
        let out = Command::new(format!("{REPO}/tests/slurm/cluster.sh"))
            .args(["start", dir.join("slurm").to_str().unwrap()])
            .env("SLURM_TEST_PORT", port.to_string())
            .output()
            .expect("cannot run tests/slurm/cluster.sh");
        assert!(
            out.status.success(),
            "the test cluster did not start (scripts/setup-slurm.sh installs Slurm):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Cluster {
            dir: dir.join("slurm"),
            conf: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf)
            .open_mpi_env()
            .env("RPS_BIN", RPS)
            .env("RPS_PYTHON", format!("{REPO}/target/python/bin/python"));
        c
    }

    /// Submits a batch script from `cwd`; returns the job id.
    fn sbatch(&self, cwd: &Path, args: &[&str]) -> String {
        let out = self
            .command("sbatch")
            .current_dir(cwd)
            .arg("--parsable")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sbatch failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(';')
            .next()
            .unwrap()
            .to_string()
    }

    /// Waits until no job of `id` (array elements included) is queued or running.
    fn wait(&self, id: &str) {
        let start = Instant::now();
        loop {
            let out = self
                .command("squeue")
                .args(["-h", "-j", id])
                .output()
                .unwrap();
            if out.stdout.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "job {id} did not finish"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// `scontrol show job` fields of a finished job.
    fn job(&self, id: &str) -> String {
        let out = self
            .command("scontrol")
            .args(["-o", "show", "job", id])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(format!("{REPO}/tests/slurm/cluster.sh"))
            .args(["stop", self.dir.to_str().unwrap()])
            .status();
    }
}

#[test]
fn sbatch_scripts_run_stop_and_sweep_under_slurm() {
    let data = small_dataset();
    let data = data.to_str().unwrap();
    let dir = out_dir();
    let _guard = lock_mpirun();
    let cluster = Cluster::start(dir.path());
    let script = |name: &str| format!("{REPO}/slurm/{name}");

    // One run: outputs under runs/slurm-JOBID in the submission directory.
    let id = cluster.sbatch(
        dir.path(),
        &[
            "--ntasks=3",
            &script("train.sbatch"),
            "--dataset",
            data,
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--batch-size",
            "8",
            "--colocated",
        ],
    );
    cluster.wait(&id);
    assert!(
        cluster.job(&id).contains("JobState=COMPLETED"),
        "{}",
        cluster.job(&id)
    );
    let m = dir.path().join(format!("runs/slurm-{id}/metrics.h5"));
    assert_eq!(attr_str(&m, "status"), "completed");
    assert_eq!(attr_i64(&m, "world_size"), 3);

    // The time-limit warning: TERM to the batch script, which forwards it as SIGUSR1;
    // the ranks checkpoint, close the metrics and exit 75 (and the job is not requeued:
    // --no-requeue; tests/slurm_multinode.rs requeues).
    let id = cluster.sbatch(
        dir.path(),
        &[
            "--ntasks=3",
            "--no-requeue",
            &script("train.sbatch"),
            "--dataset",
            data,
            "--steps",
            "100000",
            "--eval-every",
            "5",
            "--batch-size",
            "8",
        ],
    );
    let ckpt = dir.path().join(format!("runs/slurm-{id}/checkpoints"));
    let start = Instant::now();
    // slurm/train.sbatch checkpoints every 500 steps by default: wait for training
    // to be under way (the metrics file), then warn.
    let m = dir.path().join(format!("runs/slurm-{id}/metrics.h5"));
    while !m.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "training never started: {}",
            cluster.job(&id)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let status = cluster
        .command("scancel")
        .args(["--batch", "--signal=TERM", &id])
        .status()
        .unwrap();
    assert!(status.success());
    cluster.wait(&id);
    let info = cluster.job(&id);
    assert!(info.contains("ExitCode=75:0"), "{info}");
    assert_eq!(attr_str(&m, "status"), "interrupted");
    let complete: Vec<_> = std::fs::read_dir(&ckpt)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("COMPLETE").is_file())
        .collect();
    assert!(
        !complete.is_empty(),
        "no complete checkpoint in {}",
        ckpt.display()
    );
    let log = std::fs::read_to_string(dir.path().join(format!("rps-{id}.out"))).unwrap();
    assert!(log.contains("asking the ranks to stop"), "{log}");
    assert!(log.contains("stopped by a signal after step"), "{log}");
    assert!(log.contains("rps: not requeueing job"), "{log}");

    // A sweep as a job array: one element per run.
    let job = dir.path().join("tiny.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"tiny\"\nranks = 3\n[train]\ndataset = \"{data}\"\nmetrics = \"{}/tiny-p{{drop_rate}}.h5\"\ncolocated = true\nsteps = 2\nbatch_size = 8\n[sweep]\ndrop_rate = [0.0, 0.3]\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let id = cluster.sbatch(
        dir.path(),
        &[
            "--array=0-1",
            "--ntasks=3",
            &script("sweep.sbatch"),
            job.to_str().unwrap(),
        ],
    );
    cluster.wait(&id);
    for p in ["0", "0.3"] {
        let m = dir.path().join(format!("tiny-p{p}.h5"));
        assert_eq!(attr_str(&m, "status"), "completed", "{}", m.display());
        assert_eq!(attr_f64(&m, "drop_rate"), p.parse::<f64>().unwrap());
    }

    // A Python script on the rps package (scripts/python.sh installs it): 1 server and
    // 2 workers, its metrics file written by rank 0.
    let m = dir.path().join("python.h5");
    let id = cluster.sbatch(
        dir.path(),
        &[
            "--ntasks=3",
            &script("python.sbatch"),
            &format!("{REPO}/tests/python/metrics.py"),
            m.to_str().unwrap(),
        ],
    );
    cluster.wait(&id);
    let info = cluster.job(&id);
    assert!(info.contains("JobState=COMPLETED"), "{info}");
    assert_eq!(attr_str(&m, "status"), "completed");
    assert_eq!(attr_str(&m, "frontend"), "python");
    assert_eq!(attr_i64(&m, "world_size"), 3);
}
