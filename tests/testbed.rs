//! The namespace testbed (testbed/testbed.sh): hosts joined by a bridge that loses
//! packets for real, or whose ports are slow; rps runs across them over UDP. Skipped,
//! with a message, where network namespaces cannot be created (not root, or no
//! permission).

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testbed/testbed.sh")
}

/// Tears the testbed down however the test ends.
struct Testbed(String);

impl Testbed {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new(script())
            .args(args)
            .env("TESTBED_NAME", &self.0)
            .output()
            .expect("cannot run testbed/testbed.sh")
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = self.cmd(&["down"]);
    }
}

fn namespaces() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether this process may create network namespaces (why not, if it may not).
fn can_create_namespaces() -> Result<(), String> {
    let probe = format!("rpsprobe{}", std::process::id());
    let out = Command::new("ip")
        .args(["netns", "add", &probe])
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let _ = Command::new("ip").args(["netns", "del", &probe]).output();
    Ok(())
}

/// Brings a testbed up (`testbed.sh up ARGS`) under a name starting with `prefix`, with
/// the machine's mpirun lock held; `None` (the test skips, saying why) where network
/// namespaces cannot be created.
fn start(prefix: &str, args: &[&str]) -> Option<(Testbed, std::sync::MutexGuard<'static, ()>)> {
    if let Err(why) = can_create_namespaces() {
        eprintln!("skipped: network namespaces cannot be created here ({why})");
        return None;
    }
    let machine = lock_mpirun();
    let tb = Testbed(format!("{prefix}{}", std::process::id() % 100_000));
    let mut up_args = vec!["up"];
    up_args.extend_from_slice(args);
    let up = tb.cmd(&up_args);
    assert!(
        up.status.success(),
        "testbed up failed: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    Some((tb, machine))
}

#[test]
fn udp_across_a_lossy_three_host_testbed() {
    // The ordinary MTU: datagrams leave in segmentation-offload messages and arrive
    // coalesced, while the bridge still sees (and drops) each wire packet.
    let Some((tb, _machine)) = start("rpst", &["3", "--loss", "0.05"]) else {
        return;
    };
    let name = tb.0.clone();
    assert!(namespaces().contains(&format!("{name}-h2")));

    let dir = out_dir();
    let metrics = dir.path().join("m.h5");
    let data = small_dataset();
    let run = tb.cmd(&[
        "mpirun",
        "--timeout",
        "120",
        RPS,
        "train",
        "--dataset",
        data.to_str().unwrap(),
        "--metrics",
        metrics.to_str().unwrap(),
        "--colocated",
        "--steps",
        "30",
        "--batch-size",
        "8",
        "--eval-every",
        "15",
        "--transport",
        "udp",
        "--detect",
        "deadline",
        // Generous, so that what the job misses is what the network lost, not what a
        // busy 2-core machine delivered late.
        "--recv-timeout-ms",
        "1000",
        "--udp-subnet",
        "10.99.0.0/24",
    ]);
    let counters = tb.cmd(&["counters"]);
    let down = tb.cmd(&["down"]);
    assert!(
        run.status.success(),
        "the run failed or hung ({:?}):\n{}\n{}",
        run.status.code(),
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(down.status.success());
    assert!(
        !namespaces().contains(&name),
        "the testbed is still there: {}",
        namespaces()
    );

    assert_eq!(attr_str(&metrics, "status"), "completed");
    let sum = |n: &str| read_u64(&metrics, n).iter().sum::<u64>();
    let sent = sum("comm/packets_up") - sum("comm/packets_dropped_up") + sum("comm/packets_down")
        - sum("comm/packets_dropped_down");
    let missed = sum("comm/packets_missed_up") + sum("comm/packets_missed_down");
    let rate = missed as f64 / sent as f64;
    // Tens of thousands of datagrams: the binomial spread around 5 % is about 0.1 %.
    assert!(
        (0.04..0.07).contains(&rate),
        "the job saw {missed} of {sent} packets lost ({rate:.4}); the bridge dropped 5 % ({})",
        String::from_utf8_lossy(&counters.stdout).trim()
    );
    assert_eq!(sum("comm/rejected"), 0);
    // Every datagram crossed the bridge as a packet of its own (plus MPI's segments): a
    // 64 KB offload message crossing whole would count once and be lost whole.
    let bridge: u64 = String::from_utf8_lossy(&counters.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        bridge >= sent,
        "the bridge saw {bridge} packets for {sent} datagrams"
    );
}

/// Up metrics of a run: datagrams sent and missed per step.
fn uplink(metrics: &Path) -> Vec<(u64, u64)> {
    let up = read_u64(metrics, "comm/packets_up");
    let dropped = read_u64(metrics, "comm/packets_dropped_up");
    let missed = read_u64(metrics, "comm/packets_missed_up");
    (0..up.len())
        .map(|i| (up[i] - dropped[i], missed[i]))
        .collect()
}

/// Incast: four workers send to one server whose port carries 20 Mbit/s. Sent as fast
/// as they can, most of it is lost; with `--loss-target 0.05` the workers pace their
/// links and the loss the job sees settles near 5 %.
#[test]
fn a_loss_budget_holds_incast_near_its_target() {
    let Some((tb, _machine)) = start("rpsb", &["5", "--rate", "20mbit"]) else {
        return;
    };
    let dir = out_dir();
    let data = small_dataset();
    let run = |file: &str, extra: &[&str]| {
        let metrics = dir.path().join(file);
        let mut args = vec![
            "mpirun",
            "--timeout",
            "120",
            RPS,
            "train",
            "--dataset",
            data.to_str().unwrap(),
            "--metrics",
            metrics.to_str().unwrap(),
            "--model",
            "mlp",
            "--servers",
            "1",
            "--steps",
            "16",
            "--eval-every",
            "0",
            "--transport",
            "udp",
            "--detect",
            "deadline",
            "--recv-timeout-ms",
            "1000",
            "--udp-subnet",
            "10.99.0.0/24",
        ];
        args.extend_from_slice(extra);
        let out = tb.cmd(&args);
        assert!(
            out.status.success(),
            "the run failed or hung ({:?}):\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        metrics
    };
    let blast = run("blast.h5", &[]);
    let paced = run(
        "paced.h5",
        &["--loss-target", "0.05", "--udp-link-rate", "20M"],
    );
    drop(tb);
    let share = |steps: &[(u64, u64)]| {
        let (sent, missed) = steps.iter().fold((0, 0), |(s, m), &(a, b)| (s + a, m + b));
        missed as f64 / sent as f64
    };
    let blast_loss = share(&uplink(&blast));
    // After a few steps to converge (links start at a quarter of the port, then the
    // reports bring each to what its share carried).
    let paced_loss = share(&uplink(&paced)[6..]);
    assert!(blast_loss > 0.5, "unpaced incast lost only {blast_loss:.3}");
    assert!(
        paced_loss < 0.12,
        "with a 5 % budget the job still saw {paced_loss:.3} lost (unpaced: {blast_loss:.3})"
    );
    assert_eq!(attr_f64(&paced, "loss_target"), 0.05);
}
