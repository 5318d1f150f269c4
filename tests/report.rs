//! `rps report` and `rps plot` through the real binary, on small metrics files written
//! with the project's own [`MetricsWriter`]; bad inputs are named and exit 1.

mod common;

use std::path::{Path, PathBuf};

use common::rps;
use rps::counters::StepCounters;
use rps::metrics::schema::DiagRecord;
use rps::metrics::{AttrValue, EvalRecord, MetricsWriter, StepRow};

/// A metrics file of `steps` steps with constant drops (1 of 10 messages up), two
/// evaluations, and a 2×3 per-link matrix.
fn write_run(path: &Path, desc: &str, rate: f64, seed: i64, acc: Option<f64>, status: &str) {
    write_run_with_diag(path, desc, rate, seed, acc, status, None);
}

/// [`write_run`], plus two `--diag-every` measurements whose training loss of the average
/// is `diag_loss` when given.
fn write_run_with_diag(
    path: &Path,
    desc: &str,
    rate: f64,
    seed: i64,
    acc: Option<f64>,
    status: &str,
    diag_loss: Option<f64>,
) {
    let mut attrs: Vec<(&str, AttrValue)> = vec![
        ("rps_version", "0.1.0".into()),
        ("algorithm", "rps".into()),
        ("mode", "dedicated".into()),
        ("world_size", 5i64.into()),
        ("servers", 2i64.into()),
        ("workers", 3i64.into()),
        ("drop_model", "bernoulli".into()),
        ("drop_model_description", desc.into()),
        ("drop_rate", rate.into()),
        ("packet_bytes", 0i64.into()),
        ("detection", "oracle".into()),
        ("model", "cnn".into()),
        ("steps", 30i64.into()),
        ("seed", seed.into()),
        ("status", status.into()),
        ("final_consensus_distance", 1e-3.into()),
        ("wall_time_s", (10.0 * seed as f64).into()),
    ];
    if let Some(a) = acc {
        attrs.push(("final_test_accuracy", a.into()));
    }
    let w = MetricsWriter::create(path, true, &attrs).unwrap();
    let rows: Vec<StepRow> = (1..=30)
        .map(|s| StepRow {
            step: s,
            ranks: 5,
            sum: StepCounters {
                loss_sum: 2.0 / s as f64,
                count: 1,
                sent_up: 9,
                dropped_up: 1,
                sent_down: 10,
                received_up: 9,
                received_down: 10,
                packets_up: 10,
                packets_dropped_up: 1,
                packets_received_up: 9,
                packets_down: 10,
                packets_received_down: 10,
                ..Default::default()
            },
        })
        .collect();
    w.append_steps(&rows).unwrap();
    for (step, a) in [(15, 0.5), (30, acc.unwrap_or(0.6))] {
        w.append_eval(&EvalRecord {
            step,
            test_accuracy: a,
            consensus_distance: 1e-3 * step as f64,
            ..Default::default()
        })
        .unwrap();
    }
    for step in [15, 30].into_iter().filter(|_| diag_loss.is_some()) {
        w.append_diag(&DiagRecord {
            step,
            spread: 1.0,
            mean_error: rate / 3.0,
            consensus: rate,
            avg_train_loss: diag_loss.unwrap_or_default(),
        })
        .unwrap();
    }
    let m = ndarray::Array2::from_shape_vec((2, 3), vec![1u64, 2, 3, 4, 5, 6]).unwrap();
    w.write_matrix(
        "links/dropped_up",
        &m,
        "server ranks 0..2",
        "worker ranks 2..5",
    )
    .unwrap();
    w.close().unwrap();
}

/// Writes three runs. Callers hold [`common::lock_mpirun`] while they write and run the
/// binary: a child spawned by another test thread while HDF5 has a file open for writing
/// inherits that descriptor, and its lock, and the file then cannot be opened.
fn runs(dir: &Path) -> Vec<PathBuf> {
    let p = |n: &str| dir.join(n);
    write_run(
        &p("a-s1.h5"),
        "bernoulli(p=0.1)",
        0.1,
        1,
        Some(0.80),
        "completed",
    );
    write_run(
        &p("a-s2.h5"),
        "bernoulli(p=0.1)",
        0.1,
        2,
        Some(0.90),
        "completed",
    );
    write_run(&p("b-s1.h5"), "bernoulli(p=0)", 0.0, 1, None, "interrupted");
    vec![p("a-s1.h5"), p("a-s2.h5"), p("b-s1.h5")]
}

fn strs(paths: &[PathBuf]) -> Vec<&str> {
    paths.iter().map(|p| p.to_str().unwrap()).collect()
}

#[test]
fn report_groups_seeds_and_marks_unfinished_runs() {
    let _machine = common::lock_mpirun();
    let dir = common::out_dir();
    let files = runs(dir.path());
    let mut args = vec!["report"];
    args.extend(strs(&files));
    let run = rps(&args);
    run.assert_ok();
    let rows: Vec<&str> = run.stdout.lines().skip(2).collect();
    assert_eq!(rows.len(), 2, "{}", run.stdout);
    // Sorted by configuration: p=0 before p=0.1.
    assert_eq!(
        rows[0],
        "| rps | dedicated | 5 / 2 / 3 | bernoulli(p=0) | 0 | oracle | cnn, 30, 0, ?, ? | 1 (1) | 0.6000 | 1.00e-3 | 30 / 600 messages (5.00%) | 10.0 | 1 interrupted |"
    );
    assert_eq!(
        rows[1],
        "| rps | dedicated | 5 / 2 / 3 | bernoulli(p=0.1) | 0 | oracle | cnn, 30, 0, ?, ? | 2 (1,2) | 0.8500 ± 0.0707 | 1.00e-3 ± 0 | 60 / 1200 messages (5.00%) | 15.0 | completed |"
    );
}

#[test]
fn plot_writes_png_and_svg_figures() {
    let _machine = common::lock_mpirun();
    let dir = common::out_dir();
    let files = runs(dir.path());
    let out = dir.path().join("figs");
    let mut args = vec![
        "plot",
        "--output-dir",
        out.to_str().unwrap(),
        "--window",
        "5",
    ];
    args.extend(strs(&files));
    let run = rps(&args);
    run.assert_ok();
    let titles = [
        ("train_loss", "Training loss (5-step moving average)"),
        ("accuracy_vs_drop", "Final test accuracy vs. loss rate"),
        ("consensus", "Consensus distance at evaluations"),
        (
            "links_a-s1",
            "Dropped worker→server messages per link: a-s1.h5",
        ),
        (
            "links_b-s1",
            "Dropped worker→server messages per link: b-s1.h5",
        ),
    ];
    for (name, title) in titles {
        let png = std::fs::read(out.join(format!("{name}.png"))).unwrap();
        assert!(png.len() > 1000, "{name}.png is {} bytes", png.len());
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name}.png");
        let svg = std::fs::read_to_string(out.join(format!("{name}.svg"))).unwrap();
        assert!(svg.starts_with("<svg"), "{name}.svg");
        assert!(svg.contains(title), "{name}.svg lacks {title:?}");
        assert!(
            run.stdout.contains(&format!("{name}.png")),
            "{}",
            run.stdout
        );
    }
    let svg = std::fs::read_to_string(out.join("train_loss.svg")).unwrap();
    assert!(svg.contains("iid p=0.1, n=3 (seed 1,2)"), "legend");
    let heat = std::fs::read_to_string(out.join("links_a-s1.svg")).unwrap();
    // plotters writes each text on a line of its own.
    assert!(heat.contains("\n6\n") && heat.contains("worker (column; worker ranks 2..5)"));
}

#[test]
fn plot_draws_the_theory_figures_for_diag_runs() {
    let _machine = common::lock_mpirun();
    let dir = common::out_dir();
    let p = |n: &str| dir.path().join(n);
    // A lossy run and its lossless twin (same configuration and seed): Δ = 0.1.
    for (name, desc, rate, loss) in [
        ("lossy.h5", "bernoulli(p=0.1)", 0.1, 0.6),
        ("twin.h5", "bernoulli(p=0)", 0.0, 0.5),
    ] {
        let status = "completed";
        write_run_with_diag(&p(name), desc, rate, 1, Some(0.8), status, Some(loss));
    }
    let out = p("figs");
    let run = rps(&[
        "plot",
        "--output-dir",
        out.to_str().unwrap(),
        p("lossy.h5").to_str().unwrap(),
        p("twin.h5").to_str().unwrap(),
    ]);
    run.assert_ok();
    for (name, title) in [
        ("diag_vs_n", "n·mean_error/spread"),
        (
            "outcome_vs_n",
            "Cost of drops in the training loss of the average",
        ),
    ] {
        let svg = std::fs::read_to_string(out.join(format!("{name}.svg"))).unwrap();
        assert!(svg.contains(title), "{name}.svg lacks {title:?}");
        assert!(out.join(format!("{name}.png")).is_file(), "{name}.png");
    }
    // Without a lossless twin there is no Δ, and no outcome figure.
    let alone = p("alone");
    let run = rps(&[
        "plot",
        "--output-dir",
        alone.to_str().unwrap(),
        p("lossy.h5").to_str().unwrap(),
    ]);
    run.assert_ok();
    assert!(alone.join("diag_vs_n.svg").is_file());
    assert!(!alone.join("outcome_vs_n.svg").exists());
}

#[test]
fn bad_inputs_are_named_and_exit_1() {
    let _machine = common::lock_mpirun();
    let dir = common::out_dir();
    let good = runs(dir.path()).remove(0);
    let missing = dir.path().join("missing.h5");
    let foreign = dir.path().join("foreign.h5");
    hdf5::File::create(&foreign)
        .unwrap()
        .new_attr::<i64>()
        .shape(())
        .create("x")
        .unwrap();
    let out = dir.path().join("figs");
    for (bad, message) in [
        (&missing, "missing.h5: no such file"),
        (
            &foreign,
            "foreign.h5: not an rps metrics file (no root attribute rps_version)",
        ),
    ] {
        for cmd in ["report", "plot"] {
            let mut args = vec![cmd, good.to_str().unwrap(), bad.to_str().unwrap()];
            if cmd == "plot" {
                args.extend(["--output-dir", out.to_str().unwrap()]);
            }
            let run = rps(&args);
            assert_eq!(run.code, Some(1), "{cmd}: {}", run.stderr);
            assert!(run.stderr.contains(message), "{cmd}: {}", run.stderr);
            assert!(run.stdout.is_empty(), "{cmd} printed {}", run.stdout);
        }
    }
    let run = rps(&["report"]);
    assert_eq!(run.code, Some(2), "clap requires a file: {}", run.stderr);
}

/// One file named twice (here by two spellings) would count as two seeds of its
/// configuration (two curves in a figure): refused, naming both spellings.
#[test]
fn a_file_given_twice_is_refused() {
    let _machine = common::lock_mpirun();
    let dir = common::out_dir();
    let files = runs(dir.path());
    let first = files[0].to_str().unwrap();
    let again = format!(
        "{}/../{}/a-s1.h5",
        dir.path().display(),
        dir.path().file_name().unwrap().to_str().unwrap()
    );
    let out = dir.path().join("figs");
    for cmd in ["report", "plot"] {
        let mut args = vec![cmd, first, files[1].to_str().unwrap(), &again];
        if cmd == "plot" {
            args.extend(["--output-dir", out.to_str().unwrap()]);
        }
        let run = rps(&args);
        assert_eq!(run.code, Some(2), "{cmd}: {}", run.stderr);
        assert!(
            run.stderr
                .contains(&format!("{again} is {first} again: each file counts once")),
            "{cmd}: {}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{cmd}: {}", run.stdout);
    }
}

/// A co-located run of `n` ranks for `rps report --claim`: one step, evaluations at steps
/// 10 and 20 (the second at `acc`), and a diagnostic training loss of the average `loss`.
fn write_claim_run(path: &Path, n: i64, rate: f64, seed: i64, acc: f64, loss: f64) {
    let attrs: Vec<(&str, AttrValue)> = vec![
        ("rps_version", "0.1.0".into()),
        ("algorithm", "rps".into()),
        ("mode", "colocated".into()),
        ("world_size", n.into()),
        ("servers", n.into()),
        ("workers", n.into()),
        ("drop_model", "bernoulli".into()),
        (
            "drop_model_description",
            format!("bernoulli(p={rate})").into(),
        ),
        ("drop_rate", rate.into()),
        ("model", "mlp".into()),
        ("steps", 20i64.into()),
        ("batch_size", (64 / n).into()),
        ("seed", seed.into()),
        ("status", "completed".into()),
        ("final_test_accuracy", acc.into()),
        ("wall_time_s", 1.0.into()),
    ];
    let w = MetricsWriter::create(path, true, &attrs).unwrap();
    w.append_steps(&[StepRow {
        step: 1,
        ranks: n as usize,
        sum: StepCounters::default(),
    }])
    .unwrap();
    for (step, a) in [(10, acc - 0.1), (20, acc)] {
        w.append_eval(&EvalRecord {
            step,
            test_accuracy: a,
            ..Default::default()
        })
        .unwrap();
    }
    w.append_diag(&DiagRecord {
        step: 20,
        spread: 1.0,
        mean_error: rate / n as f64,
        consensus: rate,
        avg_train_loss: loss,
    })
    .unwrap();
    w.close().unwrap();
}

/// `rps report --claim` pairs each lossy run with the twin of its directory and seed, and
/// fits Δ = a + b/n; `rps plot --claim` draws it; a target outside [0, 1] is a usage error.
#[test]
fn the_claim_report_pairs_twins_and_fits_over_n() {
    let _machine = common::lock_mpirun();
    let dir = common::out_dir();
    let arm = dir.path().join("arm");
    std::fs::create_dir(&arm).unwrap();
    let mut files = Vec::new();
    // Δ loss = 0.08/n exactly (a = 0, b = 0.08), ± 0.001 between the two seeds.
    for n in [2i64, 4, 8] {
        for seed in [1i64, 2] {
            let noise = if seed == 1 { 0.001 } else { -0.001 };
            for (rate, loss, acc) in [(0.0, 0.5, 0.85), (0.2, 0.5 + 0.08 / n as f64 + noise, 0.84)]
            {
                let f = arm.join(format!("n{n}-p{rate}-s{seed}.h5"));
                write_claim_run(&f, n, rate, seed, acc, loss);
                files.push(f.to_str().unwrap().to_string());
            }
        }
    }
    let mut args = vec!["report", "--claim", "--target-accuracy", "0.8"];
    args.extend(files.iter().map(String::as_str));
    let run = rps(&args);
    run.assert_ok();
    let out = &run.stdout;
    assert!(out.contains("12 runs"), "{out}");
    // n = 2: Δ = 0.04 ± 0.001 (SE of ± 0.001 over two seeds), accuracy −0.01.
    assert!(
        out.contains("| 2 | 0.5000 ± 0 | 0.0400 ± 1.00e-3 |"),
        "{out}"
    );
    // The fit finds a = 0, b = 0.08 (± 2 SE), all 6 pairs above 0.
    assert!(
        out.contains("| arm | mlp colocated | bernoulli(p=0.2) | n | 6 | 0 | "),
        "{out}"
    );
    assert!(out.contains("0.0800 ± "), "{out}");
    // Steps to 0.8: 20 for every run (the first evaluation, at 0.75 or 0.74, is below).
    assert!(out.contains("20.0000 ± 0 (2 of 2)"), "{out}");
    let figs = dir.path().join("figs");
    let mut plot = vec!["plot", "--claim", "--output-dir", figs.to_str().unwrap()];
    plot.extend(files.iter().map(String::as_str));
    rps(&plot).assert_ok();
    for f in ["claim_loss.png", "claim_loss.svg", "claim_accuracy.svg"] {
        assert!(figs.join(f).is_file(), "{f}");
    }
    let bad = rps(&["report", "--claim", "--target-accuracy", "80", &files[0]]);
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
    assert!(
        bad.stderr.contains("80 is not a fraction in [0, 1]"),
        "{}",
        bad.stderr
    );
}
