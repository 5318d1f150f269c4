//! Drop models under real mpirun: bursty loss, per-link rates, packets, trace replay —
//! each run ends (no hang) with counts that match what the model says.

mod common;
use common::*;

use std::path::Path;

fn run_ok(n: usize, metrics: &Path, extra: &[&str]) -> Run {
    let data = small_dataset();
    let mut a = train_args(
        &data,
        &metrics,
        &["--batch-size", "8", "--eval-every", "4", "--force"],
    );
    a.extend_from_slice(extra);
    let run = mpirun(n, &a);
    run.assert_ok();
    run
}

fn total(path: &Path, name: &str) -> u64 {
    read_u64(path, name).iter().sum()
}

fn matrix(path: &Path, name: &str) -> ndarray::Array2<u64> {
    hdf5::File::open(path)
        .unwrap()
        .dataset(name)
        .unwrap()
        .read_2d::<u64>()
        .unwrap()
}

#[test]
fn replayed_trace_reproduces_the_run_bit_for_bit() {
    let dir = out_dir();
    let (rec, rep) = (dir.path().join("rec.h5"), dir.path().join("rep.h5"));
    let common = ["--steps", "8", "--servers", "2", "--packet-bytes", "400000"];
    let mut a = common.to_vec();
    a.extend([
        "--drop-model",
        "gilbert-elliott",
        "--ge-p",
        "0.2",
        "--ge-r",
        "0.3",
        "--record-trace",
    ]);
    run_ok(5, &rec, &a);
    assert_eq!(attr_i64(&rec, "trace_recorded"), 1);
    let mut b = common.to_vec();
    b.extend(["--replay-trace", rec.to_str().unwrap()]);
    run_ok(5, &rep, &b);
    assert_eq!(attr_str(&rep, "drop_model"), "replay");
    assert!(
        total(&rec, "comm/packets_dropped_up") > 0,
        "the recorded run dropped nothing"
    );
    for name in [
        "train/loss",
        "train/accuracy",
        "eval/test_loss",
        "eval/consensus_distance",
    ] {
        assert_eq!(read_f64(&rec, name), read_f64(&rep, name), "{name}");
    }
    for name in [
        "comm/packets_dropped_up",
        "comm/packets_dropped_down",
        "comm/sent_up",
        "comm/bytes_sent",
    ] {
        assert_eq!(read_u64(&rec, name), read_u64(&rep, name), "{name}");
    }
    // The trace lists exactly the dropped packets.
    let rows = hdf5::File::open(&rec)
        .unwrap()
        .dataset("trace/dropped")
        .unwrap()
        .shape()[0] as u64;
    assert_eq!(
        rows,
        total(&rec, "comm/packets_dropped_up") + total(&rec, "comm/packets_dropped_down")
    );

    // A trace replays only under the configuration that recorded it.
    let data = small_dataset();
    let mismatch = mpirun(
        4,
        &train_args(
            &data,
            &dir.path().join("x.h5"),
            &[
                "--batch-size",
                "8",
                "--steps",
                "8",
                "--servers",
                "2",
                "--packet-bytes",
                "400000",
                "--replay-trace",
                rec.to_str().unwrap(),
            ],
        ),
    );
    assert!(!mismatch.ok());
    assert!(
        mismatch
            .stderr
            .contains("recorded with world_size = 5, this run has 4"),
        "{}",
        mismatch.stderr
    );
}

#[test]
fn fully_bursty_loss_ends_with_every_message_dropped() {
    let dir = out_dir();
    let m = dir.path().join("ge.h5");
    run_ok(
        4,
        &m,
        &[
            "--steps",
            "6",
            "--colocated",
            "--drop-model",
            "gilbert-elliott",
            "--ge-p",
            "1",
            "--ge-r",
            "0",
        ],
    );
    assert_eq!(total(&m, "comm/sent_up") + total(&m, "comm/sent_down"), 0);
    // 4 ranks × 3 foreign blocks × 6 steps.
    assert_eq!(total(&m, "comm/dropped_up"), 72);
    assert_eq!(attr_f64(&m, "ge_mean_loss"), 1.0);
}

#[test]
fn per_link_file_can_cut_a_server_off() {
    let dir = out_dir();
    let rates = dir.path().join("rates.txt");
    std::fs::write(&rates, "# server 0 is unreachable\nrank 0 1.0\n").unwrap();
    let m = dir.path().join("links.h5");
    run_ok(
        5,
        &m,
        &[
            "--steps",
            "6",
            "--servers",
            "2",
            "--link-rates",
            rates.to_str().unwrap(),
        ],
    );
    // 3 workers: every upload to server 0 dropped, every upload to server 1 delivered;
    // server 0 never has anything to send back.
    assert_eq!(
        matrix(&m, "links/dropped_up").row(0).to_vec(),
        vec![6, 6, 6]
    );
    assert_eq!(matrix(&m, "links/sent_up").row(0).to_vec(), vec![0, 0, 0]);
    assert_eq!(matrix(&m, "links/sent_up").row(1).to_vec(), vec![6, 6, 6]);
    assert_eq!(matrix(&m, "links/sent_down").row(0).to_vec(), vec![0, 0, 0]);
    assert_eq!(matrix(&m, "links/sent_down").row(1).to_vec(), vec![6, 6, 6]);
    assert!(attr_str(&m, "link_rates").contains("rank 0 1.0"));
    // Replicas drift on block 0 only, so consensus grows but stays finite.
    let consensus = read_f64(&m, "eval/consensus_distance");
    assert!(
        consensus.iter().all(|c| c.is_finite() && *c > 0.0),
        "{consensus:?}"
    );

    std::fs::write(&rates, "rank 0 1.0\nlink 1 9 0.5\n").unwrap();
    let data = small_dataset();
    let bad = mpirun(
        5,
        &train_args(
            &data,
            &dir.path().join("x.h5"),
            &["--steps", "2", "--link-rates", rates.to_str().unwrap()],
        ),
    );
    assert!(!bad.ok());
    assert!(
        bad.stderr
            .contains("line 2: rank 9 does not exist in a job of 5 rank(s)"),
        "{}",
        bad.stderr
    );
}

#[test]
fn packet_loss_counts_add_up() {
    let dir = out_dir();
    let m = dir.path().join("packets.h5");
    // 1,663,370 parameters in 2 blocks of 831,685 floats; 400,000-byte packets hold
    // 100,000 floats: 9 packets per block.
    run_ok(
        4,
        &m,
        &[
            "--steps",
            "5",
            "--servers",
            "2",
            "--packet-bytes",
            "400000",
            "--drop-up",
            "0.3",
            "--drop-down",
            "0.1",
        ],
    );
    let up = total(&m, "comm/packets_up");
    assert_eq!(up, 2 * 2 * 9 * 5);
    let rate = total(&m, "comm/packets_dropped_up") as f64 / up as f64;
    assert!(
        (rate - 0.3).abs() < 5.0 * (0.21f64 / up as f64).sqrt(),
        "{rate}"
    );
    assert_eq!(attr_i64(&m, "packet_bytes"), 400_000);
    assert!(total(&m, "comm/bytes_sent") < 4 * 1_663_370 * 2 * 2 * 5);
}

#[test]
fn deadline_detection_without_late_messages_matches_the_oracle() {
    let dir = out_dir();
    let run = |name: &str, extra: &[&str]| {
        let m = dir.path().join(name);
        let mut a = vec!["--steps", "6", "--colocated", "--packet-bytes", "1200000"];
        a.extend_from_slice(extra);
        run_ok(3, &m, &a);
        m
    };
    // Without drops nobody waits for a message that will not come, and a deadline far
    // longer than any transfer here means nothing is late: the receivers then see
    // exactly what the oracle would have told them, bit for bit.
    let oracle = run("oracle.h5", &[]);
    let deadline = run(
        "deadline.h5",
        &["--detect", "deadline", "--recv-timeout-ms", "5000"],
    );
    assert_eq!(attr_str(&deadline, "detection"), "deadline");
    assert_eq!(
        total(&deadline, "comm/missed_up") + total(&deadline, "comm/missed_down"),
        0
    );
    assert_eq!(
        read_f64(&oracle, "train/loss"),
        read_f64(&deadline, "train/loss")
    );
    assert_eq!(
        read_f64(&oracle, "eval/test_loss"),
        read_f64(&deadline, "eval/test_loss")
    );

    // With drops, a receiver cannot tell a lost message from a slow one and waits out
    // its deadline; the model's decisions on the uplink stay those of the oracle run.
    let oracle = run("oracle-p.h5", &["--drop-rate", "0.3"]);
    let deadline = run(
        "deadline-p.h5",
        &[
            "--drop-rate",
            "0.3",
            "--detect",
            "deadline",
            "--recv-timeout-ms",
            "50",
        ],
    );
    for name in ["comm/packets_dropped_up", "comm/sent_up", "comm/dropped_up"] {
        assert_eq!(read_u64(&oracle, name), read_u64(&deadline, name), "{name}");
    }
}

#[test]
fn deadline_shorter_than_any_transfer_ends_with_consistent_counts() {
    let dir = out_dir();
    let m = dir.path().join("short.h5");
    // 1 ms for 3.3 MB blocks between 5 ranks on 2 cores: most messages miss it.
    let run = run_ok(
        5,
        &m,
        &[
            "--steps",
            "8",
            "--servers",
            "2",
            "--drop-rate",
            "0.1",
            "--detect",
            "deadline",
            "--recv-timeout-ms",
            "1",
        ],
    );
    assert!(run.stdout.contains("final test accuracy"));
    let sent = total(&m, "comm/sent_up") + total(&m, "comm/sent_down");
    let missed = total(&m, "comm/missed_up") + total(&m, "comm/missed_down");
    assert!(missed > 0, "a 1 ms deadline missed nothing");
    assert!(missed <= sent);
    // Every message that missed its deadline was drained and discarded, never applied
    // to a later step: late ones are counted, and nothing is left at the end.
    assert!(
        total(&m, "comm/late") >= missed,
        "late {} < missed {missed}",
        total(&m, "comm/late")
    );
    let links_missed: u64 =
        matrix(&m, "links/missed_up").sum() + matrix(&m, "links/missed_down").sum();
    assert_eq!(links_missed, missed);
    assert!(read_f64(&m, "eval/test_loss").iter().all(|l| l.is_finite()));
}

/// A replayed trace whose rows name a message the run cannot send is refused, naming
/// the row, instead of silently ignoring it.
#[test]
fn a_trace_naming_missing_ranks_is_refused() {
    let dir = out_dir();
    let (rec, rep) = (dir.path().join("rec.h5"), dir.path().join("rep.h5"));
    let common = ["--steps", "4", "--servers", "1", "--drop-rate", "0.5"];
    let mut a = common.to_vec();
    a.push("--record-trace");
    run_ok(3, &rec, &a);
    {
        let f = hdf5::File::open_rw(&rec).unwrap();
        let ds = f.dataset("trace/dropped").unwrap();
        let mut rows: ndarray::Array2<u32> = ds.read_2d().unwrap();
        assert!(rows.nrows() > 0);
        rows[[0, 2]] = 99; // source rank 99 in a job of 3
        ds.write(&rows).unwrap();
    }
    let data = small_dataset();
    let args = train_args(
        &data,
        &rep,
        &[
            "--batch-size",
            "8",
            "--steps",
            "4",
            "--servers",
            "1",
            "--replay-trace",
            rec.to_str().unwrap(),
        ],
    );
    let run = local_ranks(3, &args);
    assert!(!run.ok());
    assert!(
        run.stderr
            .contains("row 0 of /trace/dropped names source rank 99, but this run has only 3"),
        "{}",
        run.stderr
    );
}

/// E‖x̄ − v̄‖² = c(n, p)·spread/n, where c follows from the averaging rule alone (for any
/// replicas, in expectation over the drops and the block assignment). This is a check of
/// the implementation, not evidence about learning: c(n, p) is computed here by simulating
/// the rule of DESIGN.md on random values, and the mean of n·mean_error/spread over the
/// diagnosed steps of real co-located runs must agree with it within 4 standard errors.
#[test]
fn the_error_in_the_average_is_the_identity_of_the_averaging_rule() {
    use rand::{Rng, SeedableRng};
    // One exchange of one coordinate: server s keeps its own value and receives each
    // other worker's with probability 1 − p; each other worker receives the average with
    // probability 1 − p, otherwise keeps its own. Returns the mean of n·error/spread.
    let simulate = |n: usize, p: f64, draws: usize| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut total = 0.0;
        for _ in 0..draws {
            let v: Vec<f64> = (0..n).map(|_| rng.random::<f64>() - 0.5).collect();
            let mean = v.iter().sum::<f64>() / n as f64;
            let spread = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
            let s = rng.random_range(0..n);
            let arrived: Vec<usize> = (0..n)
                .filter(|&i| i == s || rng.random::<f64>() >= p)
                .collect();
            let avg = arrived.iter().map(|&i| v[i]).sum::<f64>() / arrived.len() as f64;
            let err: f64 = (0..n)
                .filter(|&i| i == s || rng.random::<f64>() >= p)
                .map(|i| avg - v[i])
                .sum::<f64>()
                / n as f64;
            total += n as f64 * err * err / spread;
        }
        total / draws as f64
    };
    let data = small_dataset();
    let dir = out_dir();
    for n in [2usize, 8] {
        let c = simulate(n, 0.3, 200_000);
        let m = dir.path().join(format!("n{n}.h5"));
        let args = train_args(
            &data,
            &m,
            &[
                "--model",
                "mlp",
                "--colocated",
                "--batch-size",
                "8",
                "--lr",
                "0.1",
                "--momentum",
                "0",
                "--steps",
                "300",
                "--eval-every",
                "0",
                "--diag-every",
                "1",
                "--drop-rate",
                "0.3",
            ],
        );
        local_ranks(n, &args).assert_ok();
        let (err, spread) = (read_f64(&m, "diag/mean_error"), read_f64(&m, "diag/spread"));
        let r: Vec<f64> = err
            .iter()
            .zip(&spread)
            .filter(|(_, &s)| s > 0.0)
            .map(|(e, s)| n as f64 * e / s)
            .collect();
        let k = r.len() as f64;
        let mean = r.iter().sum::<f64>() / k;
        let se = (r.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (k - 1.0) / k).sqrt();
        assert!(
            (mean - c).abs() < 4.0 * se + 0.01,
            "n = {n}, p = 0.3: measured n·error/spread {mean:.4} ± {se:.4} (SE over {k} steps), the averaging rule gives {c:.4}"
        );
    }
}
