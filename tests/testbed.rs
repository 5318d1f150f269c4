//! The namespace testbed (testbed/testbed.sh): three hosts joined by a bridge that loses
//! 5 % of packets for real; rps runs across them over UDP. Skipped, with a message, where
//! network namespaces cannot be created (not root, or no permission).

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

#[test]
fn udp_across_a_lossy_three_host_testbed() {
    if let Err(why) = can_create_namespaces() {
        eprintln!("skipped: network namespaces cannot be created here ({why})");
        return;
    }
    let _machine = lock_mpirun();
    let name = format!("rpst{}", std::process::id() % 100_000);
    let tb = Testbed(name.clone());
    let up = tb.cmd(&["up", "3", "--loss", "0.05", "--mtu", "9000"]);
    assert!(
        up.status.success(),
        "testbed up failed: {}",
        String::from_utf8_lossy(&up.stderr)
    );
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
        "--udp-mtu",
        "9000",
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
}
