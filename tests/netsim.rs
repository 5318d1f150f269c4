//! The ns-3 datacenter simulation (netsim/): built by its own script, fed by a real
//! `rps train` run, run for both policies on a tiny fabric; its CSV must balance (every
//! learning byte sent is delivered or dropped, every web flow completes) and `rps report`
//! / `rps plot` must read it. The loss budget (`--loss-target`) must move the rate and cut
//! the loss, and the drop trace it writes must replay under `rps train --replay-trace`.

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
    read_csv_seeds(path)
        .into_iter()
        .map(|((p, _, q, c), v)| ((p, q, c), v))
        .collect()
}

/// (policy, seed, quantity, class) -> value.
fn read_csv_seeds(path: &Path) -> HashMap<(String, String, String, String), f64> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines().filter(|l| !l.starts_with('#'));
    assert_eq!(lines.next(), Some(rps::netsim::HEADER));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 6, "{l}");
            (
                (
                    f[0].to_string(),
                    f[2].to_string(),
                    f[3].to_string(),
                    f[4].to_string(),
                ),
                f[5].parse::<f64>().unwrap(),
            )
        })
        .collect()
}

/// A 5-rank dedicated-mode MLP run (1 server, 4 workers, 50,890 parameters: 146 datagrams
/// per block), whose small exchange keeps simulations of many steps cheap.
fn mlp_run(dir: &Path) -> PathBuf {
    let metrics = dir.join("mlp.h5");
    mpirun(
        5,
        &train_args(
            &small_dataset(),
            &metrics,
            &[
                "--model",
                "mlp",
                "--servers",
                "1",
                "--steps",
                "4",
                "--eval-every",
                "0",
            ],
        ),
    )
    .assert_ok();
    metrics
}

/// The small fabric at 1 Gbps (few web packets), one job, heavy web load, 100 steps/s.
const SMALL_BUSY: &[&str] = &[
    "--leaves",
    "2",
    "--spines",
    "1",
    "--hosts-per-leaf",
    "3",
    "--jobs",
    "1",
    "--host-rate",
    "1Gbps",
    "--fabric-rate",
    "1Gbps",
    "--step-rate",
    "100",
    "--min-rto-ms",
    "10",
    "--drain",
    "1",
];

/// Runs the simulator; its CSV.
fn simulate(sim: &Path, args: &[&str], csv: &Path) -> HashMap<(String, String, String), f64> {
    let out = Command::new(sim)
        .args(args)
        .args(["--output", csv.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rps-netsim {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    read_csv(csv)
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
        &train_args(
            &data,
            &metrics,
            &["--servers", "1", "--steps", "4", "--eval-every", "0"],
        ),
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
        (
            vec!["--metrics", "x.h5", "--policy", "lossy", "--loss-target", "1.5"],
            "rps-netsim: --loss-target 1.5: must be in (0, 1)",
        ),
        (
            vec!["--metrics", "x.h5", "--loss-target", "0.05"],
            "rps-netsim: --loss-target applies to --policy lossy only",
        ),
        (
            vec!["--metrics", "x.h5", "--trace-out", "t.h5"],
            "rps-netsim: --trace-out applies to --policy lossy only (reliable learning traffic loses nothing)",
        ),
        (
            vec!["--metrics", "x.h5", "--warmup", "-1"],
            "rps-netsim: --warmup -1: must be in [0, 100] seconds",
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

#[test]
fn a_loss_budget_moves_the_rate_and_cuts_the_loss() {
    let sim = build_simulator();
    let dir = out_dir();
    let metrics = mlp_run(dir.path());
    let m = metrics.to_str().unwrap();
    let common = [
        &["--metrics", m, "--policy", "lossy", "--load", "0.8"][..],
        &["--warmup", "0.03", "--duration", "0.1"],
        SMALL_BUSY,
    ]
    .concat();
    let fixed = simulate(&sim, &common, &dir.path().join("fixed.csv"));
    let budget = simulate(
        &sim,
        &[&common[..], &["--loss-target", "0.05"]].concat(),
        &dir.path().join("budget.csv"),
    );
    let get = |v: &HashMap<(String, String, String), f64>, policy: &str, q: &str| -> f64 {
        *v.get(&(policy.to_string(), q.to_string(), String::new()))
            .unwrap_or_else(|| panic!("no {policy} {q}"))
    };
    let t = "lossy-target-0.05";
    // Fixed pacing: host rate / 4 on every link, no reports.
    assert_eq!(get(&fixed, "lossy", "learning_rate_final_max_gbps"), 0.25);
    assert_eq!(get(&fixed, "lossy", "rate_reports_sent"), 0.0);
    // The budget: links start at a quarter of the host rate (5 ranks), reports come
    // back, the rate falls under loss and probes back up in between.
    assert_eq!(get(&budget, t, "loss_target"), 0.05);
    assert!(get(&budget, t, "rate_reports_sent") >= 20.0);
    assert!(get(&budget, t, "rate_backoffs") >= 1.0);
    assert!(get(&budget, t, "rate_probes") >= 1.0);
    assert!(get(&budget, t, "learning_rate_final_min_gbps") < 0.5);
    assert!(get(&budget, t, "learning_steps_measured") >= 3.0);
    let (lf, lb) = (
        get(&fixed, "lossy", "learning_loss_rate"),
        get(&budget, t, "learning_loss_rate"),
    );
    assert!(lb < lf, "loss with a budget {lb}, without {lf}");
    // Every datagram is accounted for, and the low band drops learning datagrams and
    // reports only.
    let sent = get(&budget, t, "learning_datagrams_sent");
    let delivered = get(&budget, t, "learning_datagrams_delivered");
    let dropped = get(&budget, t, "learning_datagrams_dropped");
    assert_eq!(delivered + dropped, sent);
    assert_eq!(
        get(&budget, t, "queue_drops_low"),
        dropped + get(&budget, t, "rate_reports_dropped")
    );
    assert_eq!(get(&budget, t, "other_drops"), 0.0);
}

#[test]
fn the_simulated_trace_replays_in_rps_train() {
    let sim = build_simulator();
    let dir = out_dir();
    let metrics = mlp_run(dir.path());
    let trace = dir.path().join("sim-trace.h5");
    let v = simulate(
        &sim,
        &[
            &["--metrics", metrics.to_str().unwrap(), "--policy", "lossy"][..],
            &[
                "--load",
                "0.8",
                "--loss-target",
                "0.05",
                "--duration",
                "0.05",
            ],
            &["--trace-out", trace.to_str().unwrap()],
            SMALL_BUSY,
        ]
        .concat(),
        &dir.path().join("trace.csv"),
    );
    let get = |q: &str| {
        v[&(
            "lossy-target-0.05".to_string(),
            q.to_string(),
            String::new(),
        )]
    };
    let steps = get("trace_steps");
    let rows = get("trace_rows");
    assert!(steps >= 3.0, "{steps} steps");
    // One job: every lost or late datagram of the run is job 0's, and one row of the trace.
    assert_eq!(
        rows,
        get("learning_datagrams_dropped") + get("learning_datagrams_late")
    );
    assert!(rows > 0.0);
    assert_eq!(attr_i64(&trace, "steps_completed") as f64, steps);
    assert_eq!(attr_i64(&trace, "packet_bytes"), 1396);

    // rps train drops exactly the simulated datagrams: same ranks, model and seed, packets
    // of the simulated datagrams' 1,396 bytes.
    let replay = dir.path().join("replay.h5");
    let steps_arg = (steps as u64).to_string();
    mpirun(
        5,
        &train_args(
            &small_dataset(),
            &replay,
            &[
                "--model",
                "mlp",
                "--servers",
                "1",
                "--steps",
                &steps_arg,
                "--eval-every",
                "0",
                "--packet-bytes",
                "1396",
                "--replay-trace",
                trace.to_str().unwrap(),
            ],
        ),
    )
    .assert_ok();
    let dropped: u64 = read_u64(&replay, "comm/packets_dropped_up")
        .iter()
        .chain(&read_u64(&replay, "comm/packets_dropped_down"))
        .sum();
    assert_eq!(dropped as f64, rows);
    // Per step too: the trace's rows of each step are that step's drops.
    let file = open(&trace);
    let t = file
        .dataset("trace/dropped")
        .unwrap()
        .read_2d::<u32>()
        .unwrap();
    let up = read_u64(&replay, "comm/packets_dropped_up");
    let down = read_u64(&replay, "comm/packets_dropped_down");
    for step in 0..steps as usize {
        let n = t
            .rows()
            .into_iter()
            .filter(|r| r[0] as usize == step)
            .count();
        assert_eq!(up[step] + down[step], n as u64, "step {step}");
    }
}

#[test]
fn seeds_give_different_flows_and_report_as_one_row() {
    build_simulator();
    let dir = out_dir();
    let metrics = mlp_run(dir.path());
    let csv = dir.path().join("seeds.csv");
    let out = Command::new(repo().join("netsim/run.sh"))
        .args([metrics.to_str().unwrap(), csv.to_str().unwrap()])
        .args(SMALL_BUSY)
        .args(["--duration", "0.03"])
        .env("LOADS", "0.5")
        .env("SEEDS", "1 2 3")
        .env("POLICIES", "lossy-target-0.05")
        .env("PARALLEL", "2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "netsim/run.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = read_csv_seeds(&csv);
    let fct = |seed: &str| {
        v[&(
            "lossy-target-0.05".to_string(),
            seed.to_string(),
            "fct_mean_us".to_string(),
            "all".to_string(),
        )]
    };
    assert!(fct("1") != fct("2") && fct("2") != fct("3") && fct("1") != fct("3"));
    let report = rps(&["report", csv.to_str().unwrap()]);
    report.assert_ok();
    assert!(
        report
            .stdout
            .contains("| 0.5 | lossy-target-0.05 | 1, 2, 3 |"),
        "{}",
        report.stdout
    );
    assert_eq!(report.stdout.lines().count(), 3, "{}", report.stdout);
}

/// The lines `exe ARGS` prints for `input` on its standard input.
fn feed(exe: &Path, args: &[&str], input: &str) -> Vec<String> {
    use std::io::Write;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// The simulator's copy of rps's facts (netsim/loss_budget.h): every datagram size and
/// constant of the loss budget equals the Rust one, and the two rules give the same rate
/// and streak on one table of cases. Needs only a C++ compiler, not ns-3.
#[test]
fn the_simulator_shares_the_datagram_sizes_and_the_loss_budget_rule() {
    use rps::comm::udp::rate::{
        next_streak, Budget, Report, MAX_STEP, MAX_STREAK, MIN_INTERVAL, RANGE,
    };
    let dir = out_dir();
    let exe = dir.path().join("loss_budget_cases");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    let out = Command::new(&cxx)
        .args(["-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(repo().join("netsim/loss_budget_cases.cc"))
        .output()
        .expect("no C++ compiler (g++)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&exe).arg("--constants").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let constants: HashMap<&str, f64> = text
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k, v.parse().unwrap())
        })
        .collect();
    let rust = [
        ("datagram_header", rps::comm::udp::HEADER_BYTES as f64),
        (
            "message_header",
            rps::exchange::DATAGRAM_HEADER_BYTES as f64,
        ),
        (
            "packet_bytes",
            rps::config::udp_packet_bytes(&rps::comm::udp::UdpOptions::default()) as f64,
        ),
        ("report_bytes", Report::BYTES as f64),
        ("min_interval", MIN_INTERVAL as f64),
        ("max_step", MAX_STEP),
        ("max_streak", f64::from(MAX_STREAK)),
        ("range", RANGE),
    ];
    assert_eq!(constants.len(), rust.len(), "{text}");
    for (name, value) in rust {
        assert_eq!(
            constants.get(name),
            Some(&value),
            "{name}: ns-3 model vs rps"
        );
    }
    // Losses around the target, streaks up to past the cap, rates at and between bounds.
    let budget = Budget {
        target_ppm: 50_000,
        link_rate: 10_000_000_000,
    };
    let max = budget.max_rate();
    let mut cases = Vec::new();
    for &rate in &[max, 0.5 * max, max / 999.0, max / RANGE] {
        for &loss in &[0.0, 0.01, 0.024, 0.025, 0.05, 0.2, 0.6, 1.0] {
            for streak in [0u32, 1, 3, 7, 8, 12] {
                cases.push((rate, loss, streak));
            }
        }
    }
    let input: String = cases
        .iter()
        .map(|(r, l, s)| format!("{r:e} {l:e} {:e} {max:e} {s}\n", budget.target()))
        .collect();
    let lines = feed(&exe, &[], &input);
    assert_eq!(lines.len(), cases.len());
    for ((rate, loss, streak), line) in cases.iter().zip(&lines) {
        let (c_rate, c_streak) = line.split_once(' ').unwrap();
        let next = next_streak(*loss, budget.target(), *streak);
        let r = budget.update(*rate, *loss, next);
        let c: f64 = c_rate.parse().unwrap();
        assert_eq!(
            c_streak.parse::<u32>().unwrap(),
            next,
            "streak after {rate} {loss} {streak}"
        );
        // std::pow and powi may differ in the last bit; nothing more.
        assert!(
            (c - r).abs() <= 1e-12 * r,
            "rate after {rate} {loss} {streak}: C++ {c}, Rust {r}"
        );
    }
    // The start rate, from jobs of one rank to more than the range.
    let ranks = [1usize, 2, 3, 5, 9, 64, 1001, 5000];
    let input: String = ranks.iter().map(|n| format!("{max:e} {n}\n")).collect();
    let starts: Vec<f64> = feed(&exe, &["--start"], &input)
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
    let rust: Vec<f64> = ranks.iter().map(|&n| budget.start_rate(n)).collect();
    assert_eq!(
        starts, rust,
        "start rates for {ranks:?} ranks: C++ against Rust"
    );
}
