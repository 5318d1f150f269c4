//! The ns-3 datacenter simulation (netsim/): built by its own script, fed by a real
//! `rps train` run, run for both policies on a tiny fabric; its CSV must balance (every
//! learning byte sent is delivered or dropped, every web flow completes) and `rps report`
//! / `rps plot` must read it.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// netsim/build.sh: the simulator's path, or a failure that says what is missing.
fn build_simulator() -> PathBuf {
    let out = Command::new(repo().join("netsim/build.sh"))
        .output()
        .expect("cannot run netsim/build.sh");
    assert!(
        out.status.success(),
        "netsim/build.sh failed (ns-3 development files missing? scripts/setup.sh installs \
         libns3-dev libgsl-dev):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// (policy, quantity, class) -> value.
fn read_csv(path: &Path) -> HashMap<(String, String, String), f64> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines().filter(|l| !l.starts_with('#'));
    assert_eq!(lines.next(), Some(rps::netsim::HEADER));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 6, "{l}");
            (
                (f[0].to_string(), f[3].to_string(), f[4].to_string()),
                f[5].parse::<f64>().unwrap(),
            )
        })
        .collect()
}

#[test]
fn both_policies_balance_their_bytes_and_complete_every_web_flow() {
    // Fails with a clear message when ns-3 is missing (netsim/run.sh would build it too).
    build_simulator();
    let dir = out_dir();
    let metrics = dir.path().join("run.h5");
    let data = small_dataset();
    mpirun(
        5,
        &[
            "train",
            "--dataset",
            data.to_str().unwrap(),
            "--metrics",
            metrics.to_str().unwrap(),
            "--servers",
            "1",
            "--steps",
            "4",
            "--eval-every",
            "0",
        ],
    )
    .assert_ok();

    let csv = dir.path().join("results.csv");
    let out = Command::new(repo().join("netsim/run.sh"))
        .args([metrics.to_str().unwrap(), csv.to_str().unwrap()])
        .args(["--leaves", "2", "--spines", "1", "--hosts-per-leaf", "3"])
        .args(["--jobs", "1", "--duration", "0.004", "--seed", "3"])
        .args(["--min-rto-ms", "10", "--drain", "1"])
        .env("LOADS", "0.3")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "netsim/run.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = read_csv(&csv);
    let get = |policy: &str, q: &str, class: &str| -> f64 {
        *v.get(&(policy.to_string(), q.to_string(), class.to_string()))
            .unwrap_or_else(|| panic!("no {policy} {q} {class} in {}", csv.display()))
    };
    // The run's exchange: 1 server, 4 workers, one block of the whole model (f32).
    let params = attr_i64(&metrics, "num_params") as f64;
    assert_eq!(get("lossy", "block_bytes", ""), 4.0 * params);
    for policy in ["reliable", "lossy"] {
        let flows = get(policy, "flows", "all");
        assert!(flows >= 1.0, "{policy}: no web flow in the scenario");
        assert_eq!(get(policy, "flows_completed", "all"), flows, "{policy}");
        let steps = get(policy, "learning_steps_started", "");
        assert!(steps >= 1.0, "{policy}: no learning step");
        assert_eq!(get(policy, "learning_steps_completed", ""), steps);
        // Every step moves 4 uplink and 4 downlink copies of the block (lossy: unless a
        // server received nothing, which a balanced run below would reveal).
        let sent = get(policy, "learning_bytes_sent", "");
        let delivered = get(policy, "learning_bytes_delivered", "");
        let dropped = get(policy, "learning_bytes_dropped", "");
        assert_eq!(sent, steps * 8.0 * 4.0 * params, "{policy}");
        assert_eq!(delivered + dropped, sent, "{policy}: bytes do not balance");
        assert!(get(policy, "learning_step_p50_ms", "") > 0.0);
    }
    // Same seed, same web flows, whatever the policy.
    for class in ["<100KB", "100KB-1MB", ">1MB"] {
        assert_eq!(
            get("reliable", "flows", class),
            get("lossy", "flows", class),
            "{class}"
        );
    }
    // TCP delivers everything; datagrams balance one by one.
    assert_eq!(get("reliable", "learning_bytes_dropped", ""), 0.0);
    let (ds, dd, dx) = (
        get("lossy", "learning_datagrams_sent", ""),
        get("lossy", "learning_datagrams_delivered", ""),
        get("lossy", "learning_datagrams_dropped", ""),
    );
    assert_eq!(dd + dx, ds);
    assert!((get("lossy", "learning_loss_rate", "") - (1.0 - dd / ds)).abs() < 1e-9);
    // Learning datagrams travel in the low-priority band, and only they do: every one
    // dropped was dropped there (no device or IP-layer drops in this scenario).
    assert_eq!(get("lossy", "other_drops", ""), 0.0);
    assert_eq!(get("lossy", "queue_drops_low", ""), dx);
    assert_eq!(get("reliable", "queue_drops_low", ""), 0.0);

    // rps report and rps plot read the combined file.
    let report = rps(&["report", csv.to_str().unwrap()]);
    report.assert_ok();
    assert!(
        report.stdout.contains("| 0.3 | reliable | 3 |")
            && report.stdout.contains("| 0.3 | lossy | 3 |"),
        "{}",
        report.stdout
    );
    let figs = dir.path().join("figs");
    let plot = rps(&[
        "plot",
        csv.to_str().unwrap(),
        "--output-dir",
        figs.to_str().unwrap(),
    ]);
    plot.assert_ok();
    for f in ["netsim_fct.png", "netsim_fct.svg"] {
        let len = std::fs::metadata(figs.join(f)).unwrap().len();
        assert!(len > 1000, "{f} has {len} bytes");
    }
}

#[test]
fn bad_options_name_the_option_in_one_line() {
    let sim = build_simulator();
    for (args, expected) in [
        (
            vec!["--metrics", "x.h5", "--load", "1.5"],
            "rps-netsim: --load 1.5: must be in [0, 1)",
        ),
        (
            vec!["--metrics", "x.h5", "--host-rate", "fast"],
            "rps-netsim: --host-rate fast: expected a positive number with a unit, e.g. 10Gbps",
        ),
        (
            vec!["--metrics", "x.h5", "--policy", "best-effort"],
            "rps-netsim: --policy best-effort: expected reliable or lossy",
        ),
        (
            vec!["--metrics", "/nonexistent/run.h5"],
            "rps-netsim: --metrics /nonexistent/run.h5: file not found",
        ),
        (
            vec!["--lod", "0.3"],
            "rps-netsim: unknown option --lod (see --help)",
        ),
    ] {
        let out = Command::new(&sim).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("{expected}\n")
        );
    }
    // A metrics file that is not one.
    let dir = out_dir();
    let bogus = dir.path().join("bogus.h5");
    std::fs::write(&bogus, "not hdf5").unwrap();
    let out = Command::new(&sim)
        .args(["--metrics", bogus.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a readable HDF5 file"));
}
