//! The `rps` Python package (crates/py) against the native exchange: same bits and
//! counts on the same buffers, over mpirun (MPI and UDP) and on in-process ranks; bad input raised on
//! every rank, nothing hanging; its metrics file read by `rps report`.
//!
//! The package is installed into target/python by `scripts/python.sh` (which
//! `scripts/test.sh` runs first); these tests run its interpreter on tests/python/*.py.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{lock_mpirun, OpenMpiEnv, Run};
use rps::comm::local::LocalTransport;
use rps::comm::Transport;
use rps::config::Algorithm;
use rps::counters::StepCounters;
use rps::exchange::Layout;

fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/python/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/python.sh (scripts/test.sh does) to build and install the rps Python package",
        p.display()
    );
    p
}

fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
        .display()
        .to_string()
}

fn finish(out: std::process::Output) -> Run {
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What one mpirun of Python did: mpirun's own exit and output, and every rank's
/// stdout and stderr apart (mpirun interleaves the ranks' writes on its own streams).
struct PyRun {
    run: Run,
    ranks: Vec<(String, String)>,
}

impl PyRun {
    /// Every rank's stdout, rank after rank.
    fn stdout(&self) -> String {
        self.ranks.iter().map(|r| r.0.as_str()).collect()
    }
}

/// `mpirun -n N python ARGS...`, killed by mpirun after 60 s.
fn mpirun_python(n: usize, args: &[&str]) -> PyRun {
    let _guard = lock_mpirun();
    let dir = common::out_dir();
    let out = Command::new("mpirun")
        .args(["-n", &n.to_string(), "--timeout", "60", "--output-filename"])
        .arg(dir.path())
        .arg(python())
        .args(args)
        .open_mpi_env()
        .output()
        .expect("cannot start mpirun (is openmpi-bin installed? run scripts/setup.sh)");
    let read = |r: usize, what: &str| {
        std::fs::read_to_string(dir.path().join(format!("1/rank.{r}/{what}"))).unwrap_or_default()
    };
    let ranks = (0..n)
        .map(|r| (read(r, "stdout"), read(r, "stderr")))
        .collect();
    PyRun {
        run: finish(out),
        ranks,
    }
}

/// `python ARGS...` (in-process ranks), killed after 60 s.
fn run_python(args: &[&str]) -> Run {
    let _guard = lock_mpirun();
    let out = Command::new("timeout")
        .arg("60")
        .arg(python())
        .args(args)
        .output()
        .expect("cannot start python");
    finish(out)
}

/// The buffer rank `r` starts with (tests/python/exchange_bits.py makes the same).
fn buffer(r: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7 + r * 13) % 29) as f32 * 0.25 - 3.0)
        .collect()
}

/// Counters as exchange_bits.py writes them: per step, `name value` lines, times left out.
fn counts_text(steps: &[StepCounters]) -> String {
    let mut blocks = Vec::new();
    for c in steps {
        let mut flat = Vec::new();
        c.to_flat(&mut flat);
        let mut lines: Vec<String> = StepCounters::NAMES
            .iter()
            .zip(flat)
            .filter(|(n, _)| !["compute_s", "comm_s", "wall_s"].contains(n))
            .map(|(n, v)| match *n {
                "loss_sum" => format!("{n} {v:?}"),
                _ => format!("{n} {}", v as u64),
            })
            .collect();
        lines.push(String::new());
        blocks.push(lines.join("\n"));
    }
    blocks.join("\n")
}

/// The native exchange on in-process ranks: the buffers and per-step counters of every
/// rank after `steps` steps, each preceded by adding 0.5 to the buffer.
fn native(n: usize, len: usize, steps: u64, flags: &[String]) -> Vec<(Vec<f32>, String)> {
    let cfg = rps::session::config(flags, n, String::new()).unwrap().train;
    std::thread::scope(|s| {
        let handles: Vec<_> = LocalTransport::network(n)
            .into_iter()
            .map(|net| {
                let cfg = &cfg;
                s.spawn(move || {
                    let layout = Layout::new(n, cfg.mode, len, cfg.seed).unwrap();
                    let (mut ex, _) = rps::train::build_exchange(cfg, &layout, 0).unwrap();
                    let worker = layout.is_worker(net.rank());
                    let mut b = buffer(net.rank(), len);
                    let mut avg = vec![0f32; len];
                    let mut counts = Vec::new();
                    for step in 0..steps {
                        b.iter_mut().for_each(|x| *x += 0.5);
                        let mine: &mut [f32] = if worker { &mut b } else { &mut [] };
                        let c = match cfg.algorithm {
                            Algorithm::Rps => ex.step(&net, step, mine).unwrap(),
                            Algorithm::Allreduce => {
                                rps::train::average_workers(
                                    &net,
                                    mine,
                                    &mut avg,
                                    layout.num_workers(),
                                );
                                if worker {
                                    b.copy_from_slice(&avg);
                                }
                                StepCounters::default()
                            }
                        };
                        counts.push(c);
                    }
                    (b, counts_text(&counts))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn read_rank(dir: &Path, r: usize) -> (Vec<f32>, String) {
    let bytes = std::fs::read(dir.join(format!("rank{r}.f32")))
        .unwrap_or_else(|e| panic!("rank {r} wrote no buffer in {}: {e}", dir.display()));
    let b = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let counts = std::fs::read_to_string(dir.join(format!("rank{r}.counts"))).unwrap();
    (b, counts)
}

fn assert_same(what: &str, got: &[(Vec<f32>, String)], want: &[(Vec<f32>, String)]) {
    assert_eq!(got.len(), want.len());
    for (r, ((gb, gc), (wb, wc))) in got.iter().zip(want).enumerate() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(
            bits(gb) == bits(wb),
            "{what}: rank {r}'s buffer differs from the native exchange's"
        );
        assert_eq!(
            gc, wc,
            "{what}: rank {r}'s counters differ from the native exchange's"
        );
    }
}

#[test]
fn the_python_exchange_is_the_native_exchange_bit_for_bit() {
    let (n, len, steps) = (3, 1001, 7);
    let cases = [
        "--colocated --drop-rate 0.3 --packet-bytes 256 --seed 5",
        "--servers 1 --drop-model gilbert-elliott --ge-p 0.3 --ge-r 0.4 --seed 2",
        "--servers 1 --drop-up 0.5 --drop-down 0.2 --chunk-bytes 400",
        "--colocated --algorithm allreduce",
    ];
    for case in cases {
        let flags: Vec<String> = case.split(' ').map(String::from).collect();
        let want = native(n, len, steps, &flags);
        if !case.contains("allreduce") {
            let dropped = want.iter().any(|w| {
                w.1.lines()
                    .any(|l| l.starts_with("packets_dropped") && !l.ends_with(" 0"))
            });
            assert!(dropped, "{case}: the drops are exercised");
        }
        let (l, s) = (len.to_string(), steps.to_string());
        let dir = common::out_dir();
        let d = dir.path().display().to_string();
        let mut args = vec![script("exchange_bits.py"), d.clone(), l.clone(), s.clone()];
        args.extend(flags.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        mpirun_python(n, &args).run.assert_ok();
        let got: Vec<_> = (0..n).map(|r| read_rank(dir.path(), r)).collect();
        assert_same(&format!("mpirun, {case}"), &got, &want);

        if let Some(udp) = udp_twin(case) {
            // The same step over UDP datagrams with deadline detection, on loopback with a
            // deadline far beyond any delay here: every packet the drop model let through
            // arrives, so it is the oracle's step, bit for bit (as tests/agreement.rs).
            let dir = common::out_dir();
            let d = dir.path().display().to_string();
            let mut args = vec![script("exchange_bits.py"), d, l.clone(), s.clone()];
            args.extend(udp.split(' ').map(String::from));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            mpirun_python(n, &args).run.assert_ok();
            let got: Vec<_> = (0..n).map(|r| read_rank(dir.path(), r)).collect();
            assert_same(&format!("UDP, {udp}"), &got, &want);
        }
        let local = common::out_dir();
        let ld = local.path().display().to_string();
        let n_text = n.to_string();
        let mut args = vec![
            script("exchange_bits.py"),
            "--local".into(),
            n_text,
            ld,
            l,
            s,
        ];
        args.extend(flags.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_python(&args).assert_ok();
        let got: Vec<_> = (0..n).map(|r| read_rank(local.path(), r)).collect();
        assert_same(&format!("in-process, {case}"), &got, &want);
    }
}

/// The UDP variant of a case with packet loss (in-process ranks have no UDP).
fn udp_twin(case: &str) -> Option<String> {
    case.contains("--packet-bytes")
        .then(|| format!("{case} --transport udp --detect deadline --recv-timeout-ms 20000"))
}

/// Every line `rank R: CASE: ...` of every rank, for one case.
fn lines_of<'a>(out: &'a str, case: &str) -> Vec<&'a str> {
    let mut v: Vec<&str> = out
        .lines()
        .filter(|l| l.split(": ").nth(1) == Some(case))
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn bad_buffers_raise_the_same_error_on_every_rank() {
    let py = mpirun_python(3, &[&script("errors.py"), "buffers"]);
    py.run.assert_ok();
    let stdout = py.stdout();
    let expect = [
        ("float64", "rank 0: the buffer's dtype is float64"),
        ("strided", "rank 1: the buffer is not contiguous"),
        ("readonly", "rank 2: the buffer is read-only"),
        ("list", "rank 0: the buffer is a list"),
        (
            "length",
            "the buffers differ in length between ranks: 12 elements on rank(s) 0, 13 elements on rank(s) 1, 14 elements on rank(s) 2",
        ),
        (
            "changed",
            "the buffer has changed length since the first step (12 elements): now 12 elements on rank(s) 0, 1, 13 elements on rank(s) 2",
        ),
    ];
    for (case, message) in expect {
        let lines = lines_of(&stdout, case);
        assert_eq!(lines.len(), 3, "{case}: one line per rank\n{stdout}");
        for (r, l) in lines.iter().enumerate() {
            assert!(
                l.starts_with(&format!("rank {r}: {case}: agreed=True: {message}")),
                "{l}"
            );
        }
    }
    // After all that, a good step runs on every rank.
    assert_eq!(lines_of(&stdout, "good").len(), 3);
    assert!(lines_of(&stdout, "good")
        .iter()
        .all(|l| l.ends_with("no error")));
    assert_eq!(lines_of(&stdout, "done").len(), 3, "{stdout}");
}

#[test]
fn bad_options_and_ranks_that_disagree_raise_on_every_rank() {
    let py = mpirun_python(3, &[&script("errors.py"), "options"]);
    py.run.assert_ok();
    let stdout = py.stdout();
    let expect = [
        ("unknown", "--lr is not an option of the exchange"),
        ("value", "--drop-rate 2 is outside [0, 1]"),
        (
            "differ",
            "the ranks run different jobs: drop_rate is 0.1 on rank(s) 0, 2, but 0.2 on rank(s) 1",
        ),
    ];
    for (case, message) in expect {
        let lines = lines_of(&stdout, case);
        assert_eq!(lines.len(), 3, "{case}\n{stdout}");
        for (r, l) in lines.iter().enumerate() {
            assert!(
                l.starts_with(&format!("rank {r}: {case}: agreed=True: {message}")),
                "{l}"
            );
        }
    }
    // A failed opening leaves MPI usable for the next exchange.
    assert!(lines_of(&stdout, "after")
        .iter()
        .all(|l| l.ends_with("no error")));
}

#[test]
fn an_exchange_collected_without_close_still_ends_the_job_cleanly() {
    let py = mpirun_python(3, &[&script("errors.py"), "collected"]);
    py.run.assert_ok();
    assert_eq!(lines_of(&py.stdout(), "done").len(), 3, "{}", py.stdout());
}

#[test]
fn an_error_on_one_rank_only_aborts_the_job_instead_of_hanging() {
    let t0 = std::time::Instant::now();
    let py = mpirun_python(3, &[&script("errors.py"), "uncaught"]);
    assert!(!py.run.ok());
    let rank1 = &py.ranks[1].1;
    assert!(
        rank1.contains("ValueError: a bug in rank 1's script"),
        "{rank1}"
    );
    assert!(rank1.contains("aborting the MPI job"), "{rank1}");
    assert!(
        t0.elapsed().as_secs() < 50,
        "the job was killed by the timeout, not aborted"
    );
}

#[test]
fn an_agreed_error_ends_every_rank_and_leaves_the_metrics_readable() {
    let dir = common::out_dir();
    let metrics = dir.path().join("m.h5");
    let m = metrics.display().to_string();
    let t0 = std::time::Instant::now();
    let py = mpirun_python(3, &[&script("errors.py"), "agreed", &m]);
    assert!(!py.run.ok());
    assert!(t0.elapsed().as_secs() < 50, "a rank hung");
    // Every rank raised it and exited with status 1; none was aborted.
    for (r, (_, stderr)) in py.ranks.iter().enumerate() {
        assert!(
            stderr.contains("rps.Error: rank 0: the buffer's dtype is float64"),
            "rank {r}: {stderr}"
        );
    }
    assert!(!py.run.stderr.contains("MPI_ABORT"), "{}", py.run.stderr);
    assert_eq!(common::attr_str(&metrics, "status"), "running");
    assert_eq!(common::read_u64(&metrics, "train/step"), [1]);
    let report = common::rps(&["report", &m]);
    report.assert_ok();
    assert!(report.stdout.contains("1 running"), "{}", report.stdout);
}

#[test]
fn a_python_run_writes_a_metrics_file_that_rps_reads() {
    let dir = common::out_dir();
    let metrics = dir.path().join("py.h5");
    let m = metrics.display().to_string();
    mpirun_python(3, &[&script("metrics.py"), &m])
        .run
        .assert_ok();
    assert_eq!(common::attr_str(&metrics, "status"), "completed");
    assert_eq!(common::attr_str(&metrics, "frontend"), "python");
    assert_eq!(common::attr_str(&metrics, "model"), "mlp");
    assert_eq!(common::read_u64(&metrics, "train/step").len(), 20);
    let loss = common::read_f64(&metrics, "train/loss");
    assert_eq!(loss[19], 1.0 / 20.0, "the mean of what the workers logged");
    let report = common::rps(&["report", &m]);
    report.assert_ok();
    assert!(
        report.stdout.contains("| mlp, 20, 16,"),
        "{}",
        report.stdout
    );
    assert!(report.stdout.contains("| 0.7500 |"), "{}", report.stdout);
    assert!(report.stdout.contains("completed"), "{}", report.stdout);
}
