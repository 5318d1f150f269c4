//! Surviving the cluster under real mpirun: clean stops on signals, exact resume from
//! checkpoints, a dead rank, a killed job's metrics file.

mod common;
use common::*;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts mpirun in the background (the caller must hold no other mpirun).
fn spawn(n: usize, args: &[&str]) -> Child {
    mpirun_command(n, 90, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start mpirun")
}

fn finish(child: Child) -> Run {
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// PIDs of the rank processes (not mpirun) whose command line contains `needle`.
fn ranks_of(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if comm.trim() == "rps" && String::from_utf8_lossy(&cmd).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Waits until `path` exists (training has produced something) or panics.
fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `rps train` on two in-process ranks, co-located, batch 4, plus `extra`.
fn local_job(data: &str, metrics: &str, extra: &[&str]) -> Vec<String> {
    let rest = ["--local-ranks", "2", "--colocated", "--batch-size", "4"];
    train_args(data, metrics, &rest)
        .into_iter()
        .chain(extra.iter().copied())
        .map(String::from)
        .collect()
}

fn signal(pids: &[i32], sig: &str) {
    assert!(!pids.is_empty(), "no process to signal");
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(|p| p.to_string()))
        .status()
        .unwrap();
    assert!(status.success());
}

/// The resumable run of these tests: 40 steps, one server, 20 % drops, its model saved.
fn resumable<'a>(
    data: &'a str,
    metrics: &'a str,
    model: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut a = train_args(
        data,
        metrics,
        &[
            "--save-model",
            model,
            "--steps",
            "40",
            "--eval-every",
            "10",
            "--batch-size",
            "8",
            "--servers",
            "1",
            "--drop-rate",
            "0.2",
            "--seed",
            "4",
        ],
    );
    a.extend_from_slice(extra);
    a
}

#[test]
fn stopped_and_resumed_runs_equal_uninterrupted_ones() {
    let data = small_dataset();
    let data = data.to_str().unwrap();
    let dir = out_dir();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let (full, full_model) = (p("full.h5"), p("full-model.h5"));
    mpirun(4, &resumable(data, &full, &full_model, &[])).assert_ok();

    // Stop twice — SIGUSR1 to mpirun (forwarded to every rank), then SIGTERM to every
    // rank directly, as Slurm does — and resume each time.
    let (part, part_model, ckpt) = (p("part.h5"), p("part-model.h5"), p("ckpt"));
    let _guard = lock_mpirun();
    for (round, sig) in ["USR1", "TERM"].iter().enumerate() {
        let mut extra = vec!["--checkpoint-every", "7", "--checkpoint-dir", &ckpt];
        if round > 0 {
            extra.extend(["--resume", &ckpt, "--force"]);
        }
        let args = resumable(data, &part, &part_model, &extra);
        let child = spawn(4, &args);
        let marker = Path::new(&ckpt)
            .join(if round == 0 {
                "step-00000007"
            } else {
                "step-00000028"
            })
            .join("COMPLETE");
        wait_for(&marker);
        if *sig == "USR1" {
            signal(&[child.id() as i32], sig);
        } else {
            signal(&ranks_of(&part), sig);
        }
        let run = finish(child);
        assert_eq!(run.code, Some(75), "round {round}: {}", run.stderr);
        assert!(
            run.stderr.contains("stopped by a signal after step"),
            "{}",
            run.stderr
        );
        assert_eq!(
            run.stderr.matches("stopped by a signal").count(),
            1,
            "{}",
            run.stderr
        );
        assert_eq!(attr_str(part.as_ref(), "status"), "interrupted");
    }
    drop(_guard);
    let args = resumable(data, &part, &part_model, &["--resume", &ckpt, "--force"]);
    let run = mpirun(4, &args);
    run.assert_ok();
    assert!(run.stderr.contains("resuming after step"), "{}", run.stderr);

    let (a, b) = (Path::new(&full), Path::new(&part));
    assert_same_run(a, full_model.as_ref(), b, part_model.as_ref());
    assert_eq!(read_u64(b, "train/step"), (1..=40).collect::<Vec<u64>>());
    assert_eq!(attr_str(b, "status"), "completed");
    assert_eq!(
        hdf5::File::open(a)
            .unwrap()
            .dataset("links/dropped_up")
            .unwrap()
            .read_raw::<u64>()
            .unwrap(),
        hdf5::File::open(b)
            .unwrap()
            .dataset("links/dropped_up")
            .unwrap()
            .read_raw::<u64>()
            .unwrap()
    );

    // A checkpoint of another configuration is refused, naming what differs.
    let args = resumable(
        data,
        &part,
        &part_model,
        &["--resume", &ckpt, "--force", "--momentum", "0.5"],
    );
    let run = mpirun(4, &args);
    assert!(!run.ok());
    assert!(
        run.stderr
            .contains("incompatible configuration (momentum: checkpoint 0.9, now 0.5)"),
        "{}",
        run.stderr
    );
    let run = mpirun(
        3,
        &resumable(data, &part, &part_model, &["--resume", &ckpt, "--force"]),
    );
    assert!(
        run.stderr.contains("world_size: checkpoint 4, now 3"),
        "{}",
        run.stderr
    );
    // A fresh run does not mix its checkpoints with those of another run.
    let other = p("other.h5");
    let run = mpirun(
        4,
        &resumable(
            data,
            &other,
            &p("other-model.h5"),
            &["--checkpoint-dir", &ckpt],
        ),
    );
    assert!(
        run.stderr.contains("already holds checkpoints of a run"),
        "{}",
        run.stderr
    );
    assert!(!Path::new(&other).exists());
}

/// Reads the job's stderr until `count` progress lines (printed by rank 0 right after
/// each flush of the metrics file) have gone by; returns the rest of the stream.
fn after_progress_lines(
    child: &mut Child,
    count: usize,
) -> std::io::BufReader<std::process::ChildStderr> {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = 0;
    let mut line = String::new();
    while seen < count {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the job ended early"
        );
        if line.contains("INFO  step ") {
            seen += 1;
        }
    }
    reader
}

fn long_job(n: usize, data: &Path, metrics: &Path) -> Child {
    spawn(
        n,
        &train_args(
            &data,
            &metrics,
            &[
                "--steps",
                "100000",
                "--eval-every",
                "10",
                "--batch-size",
                "8",
            ],
        ),
    )
}

#[test]
fn a_dead_rank_ends_the_job_promptly_and_is_named() {
    use std::io::Read;
    let data = small_dataset();
    let dir = out_dir();
    let m = dir.path().join("dead.h5");
    let _guard = lock_mpirun();
    let mut child = long_job(4, &data, &m);
    let mut rest = after_progress_lines(&mut child, 1);
    let ranks = ranks_of(m.to_str().unwrap());
    assert_eq!(ranks.len(), 4);
    let killed = Instant::now();
    signal(&ranks[2..3], "KILL");
    let mut stderr = String::new();
    rest.read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    while !ranks_of(m.to_str().unwrap()).is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "the job did not end promptly"
    );
    assert!(
        status.code().is_some_and(|c| c != 0 && c != 110),
        "{status:?}"
    );
    assert!(stderr.contains("exited on signal 9"), "{stderr}");
    assert!(stderr.contains("rank"), "{stderr}");
    // What was flushed before the crash is readable.
    let steps = read_u64(&m, "eval/step");
    assert!(
        !steps.is_empty() && steps.iter().all(|s| s % 10 == 0),
        "{steps:?}"
    );
}

#[test]
fn a_killed_job_leaves_a_readable_metrics_file() {
    let data = small_dataset();
    let dir = out_dir();
    let m = dir.path().join("killed.h5");
    let _guard = lock_mpirun();
    let mut child = long_job(3, &data, &m);
    // Right after a flush: the metrics file is complete up to that evaluation.
    let _rest = after_progress_lines(&mut child, 2);
    let mut all = ranks_of(m.to_str().unwrap());
    all.push(child.id() as i32);
    signal(&all, "KILL");
    let _ = child.wait();
    while !ranks_of(m.to_str().unwrap()).is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(open(&m)); // waits until no exiting process holds the file
    let out = Command::new("h5dump")
        .args(["-H", m.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "h5dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steps = read_u64(&m, "train/step");
    let evals = read_u64(&m, "eval/step");
    assert!(evals.len() >= 2, "{evals:?}");
    // Flushed at every evaluation: the step rows end exactly at the last evaluation.
    assert_eq!(steps.len() as u64, *evals.last().unwrap());
    assert_eq!(attr_str(&m, "status"), "running");
}

/// Kills a job at many moments (before the first flush, during flushes, evaluations and
/// checkpoints) and opens what it left each time: the metrics file is always a complete
/// HDF5 file whose step rows run 1..=n with every column of the same length, and the
/// newest complete checkpoint always resumes.
#[test]
fn a_job_killed_at_any_moment_leaves_files_that_open() {
    let data = small_dataset();
    let data = data.to_str().unwrap();
    let dir = out_dir();
    let m = dir.path().join("m.h5");
    let ckpt = dir.path().join("ckpt");
    let (m_s, ckpt_s) = (m.to_str().unwrap(), ckpt.to_str().unwrap());
    let args = local_job(
        data,
        m_s,
        &[
            "--steps",
            "100000",
            "--eval-every",
            "7",
            "--checkpoint-every",
            "5",
            "--checkpoint-dir",
            ckpt_s,
            "--force",
        ],
    );
    let mut seen_rows = 0;
    let _guard = lock_mpirun();
    // Delays from before the file exists to well into the run, at odd offsets so the kill
    // lands in different phases.
    for (i, ms) in [5u64, 40, 90, 150, 230, 330, 470, 610, 790, 1030]
        .iter()
        .enumerate()
    {
        let mut child = Command::new(RPS).args(&args).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(*ms));
        signal(&[child.id() as i32], "KILL");
        let _ = child.wait();
        if !m.exists() {
            assert!(*ms < 500, "kill {i} after {ms} ms: no metrics file yet");
            continue;
        }
        let out = Command::new("h5dump").args(["-H", m_s]).output().unwrap();
        assert!(
            out.status.success(),
            "kill {i} after {ms} ms: h5dump cannot read the file: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let steps = read_u64(&m, "train/step");
        assert_eq!(
            steps,
            (1..=steps.len() as u64).collect::<Vec<_>>(),
            "kill {i}"
        );
        assert_eq!(read_f64(&m, "train/loss").len(), steps.len(), "kill {i}");
        assert_eq!(read_u64(&m, "comm/sent_up").len(), steps.len(), "kill {i}");
        assert_eq!(attr_str(&m, "status"), "running");
        seen_rows = seen_rows.max(steps.len());
    }
    assert!(seen_rows > 0, "no kill landed after the first flush");
    // The last kill's checkpoints resume (the lock of the killed job is gone with it).
    if ckpt.join("step-00000005").exists() || std::fs::read_dir(&ckpt).is_ok() {
        let resume = local_job(
            data,
            m_s,
            &["--eval-every", "7", "--resume", ckpt_s, "--steps", "100"],
        );
        let out = Command::new(RPS).args(&resume).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || stderr.contains("no complete checkpoint"),
            "{stderr}"
        );
    }
}

/// A second job on a running job's metrics file or checkpoint directory is refused and
/// the running job's files are untouched.
#[test]
fn a_second_job_cannot_take_a_running_jobs_files() {
    let data = small_dataset();
    let data = data.to_str().unwrap();
    let dir = out_dir();
    let m = dir.path().join("m.h5");
    let ckpt = dir.path().join("ckpt");
    let other = dir.path().join("other.h5");
    let (m_s, ckpt_s, other_s) = (
        m.to_str().unwrap(),
        ckpt.to_str().unwrap(),
        other.to_str().unwrap(),
    );
    let job = |metrics: &str, ckpt_s: &str| {
        let extra = [
            "--steps",
            "100000",
            "--eval-every",
            "5",
            "--checkpoint-every",
            "5",
        ];
        let mut a = local_job(data, metrics, &extra);
        a.extend(["--checkpoint-dir".into(), ckpt_s.into(), "--force".into()]);
        a
    };
    let _guard = lock_mpirun();
    let mut first = Command::new(RPS).args(job(m_s, ckpt_s)).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !(m.exists() && ckpt.join(".lock").exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the first job never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let elsewhere = dir.path().join("ckpt2");
    let second = Command::new(RPS)
        .args(job(m_s, elsewhere.to_str().unwrap()))
        .output()
        .unwrap();
    let third = Command::new(RPS)
        .args(job(other_s, ckpt_s))
        .output()
        .unwrap();
    signal(&[first.id() as i32], "INT");
    let status = first.wait().unwrap();
    for (out, what) in [
        (&second, format!("--metrics {m_s}")),
        (&third, format!("--checkpoint-dir {ckpt_s}")),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains(&format!(
                "{what} is in use by another job (pid {}",
                first.id()
            )),
            "{stderr}"
        );
    }
    assert_eq!(status.code(), Some(75), "the first job stops cleanly");
    assert_eq!(attr_str(&m, "status"), "interrupted");
    assert!(!other.exists());
}

/// Outputs that are inputs are refused before anything is written; --resume refuses a
/// metrics file of another run and a dataset of other content under the same name, and
/// falls back past a corrupt checkpoint to the newest one every rank can read.
#[test]
fn outputs_and_resume_trust_nothing_they_are_given() {
    let data = small_dataset();
    let dir = out_dir();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let copy = p("data.h5");
    std::fs::copy(&data, &copy).unwrap();
    let before = std::fs::read(&copy).unwrap();
    let base = |metrics: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "train",
            "--dataset",
            &copy,
            "--metrics",
            metrics,
            "--colocated",
            "--batch-size",
            "4",
            "--eval-every",
            "5",
            "--seed",
            "2",
            "--drop-rate",
            "0.1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        local_ranks(2, &args)
    };
    let refused = |r: &Run, needle: &str| {
        assert!(!r.ok(), "{}", r.stdout);
        assert!(
            r.stderr.contains(needle),
            "expected {needle:?} in:\n{}",
            r.stderr
        );
    };
    // An output that is an input, or two outputs that are one file.
    let r = run(&base(&copy, &["--steps", "3", "--force"]));
    refused(&r, &format!("--metrics {copy} is also --dataset"));
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        before,
        "the dataset was touched"
    );
    let (m, model) = (p("m.h5"), p("model.h5"));
    let r = run(&base(&m, &["--steps", "3", "--save-model", &m]));
    refused(&r, &format!("--metrics {m} is also --save-model"));
    assert!(!Path::new(&m).exists());

    // A run with checkpoints at steps 5 and 10, stopped there.
    let ckpt = p("ckpt");
    // (No checkpoint is taken at the last step, so 12 steps keep those of 5 and 10.)
    let first = base(
        &m,
        &[
            "--steps",
            "12",
            "--checkpoint-every",
            "5",
            "--checkpoint-dir",
            &ckpt,
        ],
    );
    run(&first).assert_ok();
    let resume = |metrics: &str, data_extra: &[&str]| {
        let mut a = base(
            metrics,
            &[
                "--steps",
                "15",
                "--resume",
                &ckpt,
                "--save-model",
                &model,
                "--force",
            ],
        );
        a.extend(data_extra.iter().map(|s| s.to_string()));
        a
    };
    // Another run's metrics file (another seed) is refused.
    let other = p("other.h5");
    let mut other_run = base(&other, &["--steps", "3"]);
    other_run.extend(["--seed".into(), "9".into()]);
    run(&other_run).assert_ok();
    refused(
        &run(&resume(&other, &[])),
        "belongs to another run (seed: checkpoint 9, now 2)",
    );

    // The same file name with other content (one label changed) is another dataset.
    let original = std::fs::read(&copy).unwrap();
    {
        let f = hdf5::File::open_rw(&copy).unwrap();
        let labels = f.dataset("train/labels").unwrap();
        let mut l: Vec<u8> = labels.read_raw().unwrap();
        l[0] = (l[0] + 1) % 10;
        labels.write(&l).unwrap();
    }
    refused(&run(&resume(&m, &[])), "dataset_digest: checkpoint");
    std::fs::write(&copy, original).unwrap();

    // A corrupt newest checkpoint: the job falls back to the older one, says so, and
    // still ends like the uninterrupted run.
    let newest = Path::new(&ckpt).join("step-00000010").join("rank-00001.h5");
    {
        let f = hdf5::File::open_rw(&newest).unwrap();
        let params = f.dataset("params").unwrap();
        let mut v: Vec<f32> = params.read_raw().unwrap();
        v[17] = -152_943.0;
        params.write(&v).unwrap();
    }
    let r = run(&resume(&m, &[]));
    r.assert_ok();
    assert!(r.stderr.contains("checksum does not match"), "{}", r.stderr);
    assert!(
        r.stderr.contains("resuming from the checkpoint of step 5"),
        "{}",
        r.stderr
    );
    let (full, full_model) = (p("full.h5"), p("full-model.h5"));
    run(&base(
        &full,
        &["--steps", "15", "--save-model", &full_model],
    ))
    .assert_ok();
    assert_eq!(
        read_params(Path::new(&model)),
        read_params(Path::new(&full_model))
    );
}

/// With deadline detection and no evaluation before the end, a signal still stops the
/// run within a few steps (ranks check every 10 steps where nothing is in flight).
#[test]
fn deadline_runs_without_evaluations_still_stop_on_a_signal() {
    let data = small_dataset();
    let dir = out_dir();
    let m = dir.path().join("m.h5");
    let _guard = lock_mpirun();
    let mut child = Command::new(RPS)
        .args(local_job(
            data.to_str().unwrap(),
            m.to_str().unwrap(),
            &[
                "--steps",
                "100000",
                "--eval-every",
                "0",
                "--detect",
                "deadline",
                "--recv-timeout-ms",
                "50",
            ],
        ))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&m);
    std::thread::sleep(Duration::from_millis(300));
    signal(&[child.id() as i32], "TERM");
    let sent = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if sent.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("SIGTERM was ignored for 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(75));
    assert_eq!(attr_str(&m, "status"), "interrupted");
}

/// A frozen rank (SIGSTOP) no longer stalls the job silently: the others warn, naming
/// the rank they wait for, and --stall-abort ends the job with a non-zero status.
#[test]
fn a_frozen_rank_is_named_and_the_job_ends() {
    let data = small_dataset();
    let dir = out_dir();
    let m = dir.path().join("frozen.h5");
    let _guard = lock_mpirun();
    let child = Command::new("mpirun")
        .args(["-n", "3", "--timeout", "60", RPS, "train", "--dataset"])
        .arg(&data)
        .args([
            "--metrics",
            m.to_str().unwrap(),
            "--colocated",
            "--steps",
            "100000",
        ])
        .args([
            "--batch-size",
            "4",
            "--eval-every",
            "20",
            "--stall-warn",
            "2",
            "--stall-abort",
            "6",
        ])
        .open_mpi_env()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&m);
    std::thread::sleep(Duration::from_millis(500));
    let ranks = ranks_of(m.to_str().unwrap());
    assert_eq!(ranks.len(), 3, "{ranks:?}");
    // The process of rank 2 is the one whose environment says so.
    let frozen = *ranks
        .iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|e| e.split(|&b| b == 0).any(|v| v == b"OMPI_COMM_WORLD_RANK=2"))
                .unwrap_or(false)
        })
        .expect("rank 2's process");
    signal(&[frozen], "STOP");
    let stopped = Instant::now();
    let out = child.wait_with_output().unwrap();
    // Clean up the stopped rank, which mpirun has usually killed already (a stopped
    // process still dies of SIGKILL): its absence is not a failure.
    let _ = Command::new("kill")
        .args(["-KILL", &frozen.to_string()])
        .stderr(Stdio::null())
        .status();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stopped.elapsed() < Duration::from_secs(30), "{stderr}");
    assert!(!out.status.success());
    assert!(stderr.contains("WARN  rank 0: no progress for"), "{stderr}");
    assert!(
        stderr.contains("rank(s) 2"),
        "the frozen rank is not named:\n{stderr}"
    );
    assert!(
        stderr.contains("ending the job (--stall-abort)"),
        "{stderr}"
    );
    drop(open(&m)); // still a readable file
}

/// A stop signal that arrives while a rank is still starting (it used to kill the rank:
/// SIGUSR1's default action, exit 138) stops the run cleanly at its first step. The
/// rank is started with SIGUSR1 blocked and the signal is sent at once, so it is
/// pending from the first instruction and is delivered as soon as rps takes it.
#[test]
fn a_signal_during_start_up_stops_cleanly() {
    use std::os::unix::process::CommandExt;
    let data = small_dataset();
    let dir = out_dir();
    let m = dir.path().join("m.h5");
    let _guard = lock_mpirun();
    let mut cmd = Command::new(RPS);
    cmd.args(train_args(
        &data,
        &m,
        &[
            "--colocated",
            "--batch-size",
            "4",
            "--steps",
            "1000",
            "--eval-every",
            "0",
        ],
    ))
    // One rank without mpirun (a singleton): the signal goes to the rank itself.
    .open_mpi_env()
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls (sigemptyset, sigaddset, sigprocmask) between
    // fork and exec; the mask is inherited by the program that exec starts.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    signal(&[child.id() as i32], "USR1");
    let run = finish(child);
    assert_eq!(run.code, Some(75), "{}", run.stderr);
    assert!(
        run.stderr.contains("stopped by a signal after step 1;"),
        "{}",
        run.stderr
    );
    assert_eq!(attr_str(&m, "status"), "interrupted");
}
