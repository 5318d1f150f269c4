//! Multi-rank training under real mpirun: equivalence with all-reduce, total loss,
//! reproducibility, the metrics layout.

mod common;
use common::*;
use std::path::Path;

/// Flags of a short run on the small dataset.
fn args<'a>(data: &'a str, metrics: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = train_args(data, metrics, &["--batch-size", "8", "--seed", "3"]);
    v.extend_from_slice(extra);
    v
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn rps_without_drops_matches_allreduce() {
    let data = small_dataset();
    let data = data.to_str().unwrap();
    let dir = out_dir();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    for (n, roles) in [(4, vec!["--servers", "2"]), (3, vec!["--colocated"])] {
        let (m1, m2, s1, s2) = (p("rps.h5"), p("ar.h5"), p("rps-model.h5"), p("ar-model.h5"));
        let mut a = args(
            data,
            &m1,
            &[
                "--steps",
                "6",
                "--drop-rate",
                "0",
                "--save-model",
                &s1,
                "--force",
            ],
        );
        a.extend(&roles);
        mpirun(n, &a).assert_ok();
        let mut b = args(
            data,
            &m2,
            &[
                "--steps",
                "6",
                "--algorithm",
                "allreduce",
                "--save-model",
                &s2,
                "--force",
            ],
        );
        b.extend(&roles);
        mpirun(n, &b).assert_ok();
        let (x, y) = (read_params(s1.as_ref()), read_params(s2.as_ref()));
        // Float tolerance: the server sums copies in another order than MPI_Allreduce,
        // and six momentum steps amplify last-bit differences to ~1e-5 of the largest
        // parameter. A lossy run (checked below) differs by orders of magnitude more.
        let diff = max_rel_diff(&x, &y);
        assert!(
            diff < 1e-4,
            "{roles:?}: parameters differ by {diff} (relative)"
        );
        let (m3, s3) = (p("lossy.h5"), p("lossy-model.h5"));
        let mut c = args(
            data,
            &m3,
            &[
                "--steps",
                "6",
                "--drop-rate",
                "0.5",
                "--save-model",
                &s3,
                "--force",
            ],
        );
        c.extend(&roles);
        mpirun(n, &c).assert_ok();
        let lossy = max_rel_diff(&read_params(s3.as_ref()), &y);
        assert!(
            lossy > 1e-2,
            "{roles:?}: a run with drops is as close to all-reduce as one without ({lossy})"
        );
        // The models really trained: they moved away from the initialisation.
        let losses = read_f64(m1.as_ref(), "train/loss");
        assert_eq!(losses.len(), 6);
        let l2 = read_f64(m2.as_ref(), "train/loss");
        for (u, v) in losses.iter().zip(&l2) {
            assert!(
                (u - v).abs() < 1e-4 * u.abs().max(1.0),
                "{roles:?}: losses {losses:?} vs {l2:?}"
            );
        }
        assert!(attr_f64(m1.as_ref(), "final_consensus_distance") < 1e-10);
        assert_eq!(
            read_u64(m1.as_ref(), "comm/dropped_up").iter().sum::<u64>(),
            0
        );
    }
}

#[test]
fn everything_dropped_completes_and_replicas_drift() {
    let data = small_dataset();
    let data = data.to_str().unwrap();
    let dir = out_dir();
    for (n, roles, up_per_step) in [(3, "--colocated", 3 * 2), (4, "--servers=1", 3)] {
        let m = dir.path().join(format!("p1-{n}.h5"));
        let m = m.to_str().unwrap();
        let run = mpirun(
            n,
            &args(
                data,
                m,
                &[
                    "--steps",
                    "6",
                    "--eval-every",
                    "2",
                    "--drop-rate",
                    "1",
                    roles,
                ],
            ),
        );
        run.assert_ok();
        let m = Path::new(m);
        assert!(read_u64(m, "comm/sent_up").iter().all(|&x| x == 0));
        assert!(read_u64(m, "comm/sent_down").iter().all(|&x| x == 0));
        assert!(
            read_u64(m, "comm/dropped_up")
                .iter()
                .all(|&x| x == up_per_step),
            "{roles}"
        );
        let consensus = read_f64(m, "eval/consensus_distance");
        assert_eq!(consensus.len(), 3);
        assert!(
            consensus[0] > 0.0 && consensus[0] < consensus[1] && consensus[1] < consensus[2],
            "{roles}: {consensus:?}"
        );
    }
}

#[test]
fn same_seed_same_run_and_drop_rate_matches_p() {
    let data = small_dataset();
    let data = data.to_str().unwrap();
    let dir = out_dir();
    let run = |name: &str, seed: &str| {
        let m = dir.path().join(name);
        let ms = m.to_str().unwrap().to_string();
        let a = [
            "train",
            "--dataset",
            data,
            "--metrics",
            &ms,
            "--batch-size",
            "8",
            "--seed",
            seed,
            "--steps",
            "12",
            "--eval-every",
            "6",
            "--drop-rate",
            "0.3",
            "--colocated",
        ];
        mpirun(4, &a).assert_ok();
        m
    };
    let (a, b, c) = (run("a.h5", "5"), run("b.h5", "5"), run("c.h5", "6"));
    for name in [
        "comm/dropped_up",
        "comm/dropped_down",
        "comm/sent_up",
        "comm/sent_down",
    ] {
        assert_eq!(read_u64(&a, name), read_u64(&b, name), "{name}");
    }
    assert_eq!(read_f64(&a, "train/loss"), read_f64(&b, "train/loss"));
    assert_eq!(
        read_f64(&a, "eval/test_loss"),
        read_f64(&b, "eval/test_loss")
    );
    assert_ne!(
        read_u64(&a, "comm/dropped_up"),
        read_u64(&c, "comm/dropped_up")
    );
    // 4 ranks × 3 foreign blocks × 2 directions × 12 steps = 288 messages.
    let dropped: u64 = ["comm/dropped_up", "comm/dropped_down"]
        .iter()
        .flat_map(|n| read_u64(&a, n))
        .sum();
    let sent: u64 = ["comm/sent_up", "comm/sent_down"]
        .iter()
        .flat_map(|n| read_u64(&a, n))
        .sum();
    assert_eq!(dropped + sent, 288);
    let rate = dropped as f64 / 288.0;
    let tol = 5.0 * (0.3f64 * 0.7 / 288.0).sqrt();
    assert!((rate - 0.3).abs() < tol, "dropped fraction {rate}");
}

#[test]
fn metrics_file_has_the_documented_layout() {
    let data = small_dataset();
    let dir = out_dir();
    let m = dir.path().join("m.h5");
    let run = mpirun(
        3,
        &args(
            data.to_str().unwrap(),
            m.to_str().unwrap(),
            &["--steps", "5", "--eval-every", "2", "--drop-rate", "0.2"],
        ),
    );
    run.assert_ok();
    assert!(run.stdout.contains("final test accuracy"), "{}", run.stdout);
    assert!(
        run.stderr.contains("step 2/5"),
        "no progress line in:\n{}",
        run.stderr
    );
    for name in [
        "train/step",
        "comm/sent_up",
        "comm/dropped_up",
        "comm/sent_down",
        "comm/dropped_down",
        "comm/bytes_sent",
    ] {
        assert_eq!(read_u64(&m, name).len(), 5, "{name}");
    }
    assert_eq!(read_u64(&m, "train/step"), vec![1, 2, 3, 4, 5]);
    for name in [
        "train/loss",
        "train/accuracy",
        "time/compute_s",
        "time/comm_s",
        "time/wall_s",
    ] {
        assert_eq!(read_f64(&m, name).len(), 5, "{name}");
    }
    assert_eq!(read_u64(&m, "eval/step"), vec![2, 4, 5]);
    for name in [
        "eval/test_loss",
        "eval/test_accuracy",
        "eval/consensus_distance",
    ] {
        assert_eq!(read_f64(&m, name).len(), 3, "{name}");
    }
    let acc = read_f64(&m, "eval/test_accuracy");
    assert!(acc.iter().all(|a| (0.0..=1.0).contains(a)));
    // 1 server, 2 workers, 1 block: bytes = messages × the whole model in f32.
    let params = attr_i64(&m, "num_params") as u64;
    let sent: Vec<u64> = read_u64(&m, "comm/sent_up")
        .iter()
        .zip(read_u64(&m, "comm/sent_down"))
        .map(|(u, d)| u + d)
        .collect();
    assert_eq!(
        read_u64(&m, "comm/bytes_sent"),
        sent.iter().map(|s| s * params * 4).collect::<Vec<_>>()
    );
    assert_eq!(attr_str(&m, "algorithm"), "rps");
    assert_eq!(attr_str(&m, "status"), "completed");
    assert_eq!(attr_str(&m, "mode"), "dedicated");
    assert_eq!(attr_i64(&m, "world_size"), 3);
    assert_eq!(attr_i64(&m, "servers"), 1);
    assert_eq!(attr_i64(&m, "workers"), 2);
    assert_eq!(attr_i64(&m, "colocated"), 0);
    assert_eq!(attr_i64(&m, "batch_size"), 8);
    assert_eq!(attr_i64(&m, "seed"), 3);
    assert_eq!(attr_f64(&m, "drop_rate"), 0.2);
    // f32 hyper-parameters are recorded as the decimal the user typed, not 0.0500000007.
    assert_eq!(attr_f64(&m, "lr"), 0.05);
    assert!(attr_f64(&m, "momentum") > 0.0);
    assert!(attr_str(&m, "mpi_library_version").contains("MPI"));
    assert_eq!(attr_str(&m, "rps_version"), env!("CARGO_PKG_VERSION"));
    assert!(attr_str(&m, "dataset").ends_with("fashion-mnist-small.h5"));
    assert_eq!(attr_str(&m, "hosts").split(',').count(), 3);
}

/// ResNet-20 (batch norm in the exchanged state) under mpirun on a tiny converted
/// CIFAR-format set, with augmentation: RPS at p = 0 equals all-reduce to float tolerance,
/// running statistics included, and the metrics name the model and the peak memory.
#[test]
fn resnet20_trains_and_rps_without_drops_matches_allreduce() {
    let data = small_cifar();
    let data = data.to_str().unwrap();
    let dir = out_dir();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let (m1, m2, s1, s2) = (p("rps.h5"), p("ar.h5"), p("rps-model.h5"), p("ar-model.h5"));
    let common = [
        "--model",
        "resnet20",
        "--augment",
        "--steps",
        "3",
        "--eval-every",
        "0",
        "--force",
    ];
    let mut a = args(
        data,
        &m1,
        &["--servers", "1", "--drop-rate", "0", "--save-model", &s1],
    );
    a.extend(common);
    mpirun(3, &a).assert_ok();
    let mut b = args(
        data,
        &m2,
        &[
            "--servers",
            "1",
            "--algorithm",
            "allreduce",
            "--save-model",
            &s2,
        ],
    );
    b.extend(common);
    mpirun(3, &b).assert_ok();
    let (x, y) = (read_params(s1.as_ref()), read_params(s2.as_ref()));
    assert_eq!(x.len(), 271_098, "ResNet-20 for 3×32×32 and 10 classes");
    let diff = max_rel_diff(&x, &y);
    assert!(diff < 1e-4, "parameters differ by {diff} (relative)");
    // The running statistics (saved with the model) moved and agree as well.
    let f = hdf5::File::open(&s1).unwrap();
    let rv = f
        .dataset("params")
        .unwrap()
        .attr("bn1.running_var")
        .unwrap()
        .read_raw::<u64>()
        .unwrap();
    let (lo, len) = (rv[0] as usize, rv[1] as usize);
    assert!(
        x[lo..lo + len].iter().all(|&v| v != 1.0),
        "running variance never updated"
    );
    assert!(max_rel_diff(&x[lo..lo + len], &y[lo..lo + len]) < 1e-4);
    assert_eq!(attr_str(m1.as_ref(), "model"), "resnet20");
    assert_eq!(attr_i64(m1.as_ref(), "augment"), 1);
    let losses = read_f64(m1.as_ref(), "train/loss");
    assert_eq!(losses.len(), 3);
    assert!(
        losses.iter().all(|l| l.is_finite() && *l > 0.0),
        "{losses:?}"
    );
    let rss = attr_i64(m1.as_ref(), "peak_rss_bytes_max");
    assert!(rss > 10 << 20 && rss < 2 << 30, "peak RSS {rss} bytes");
}

/// `--label-skew`: the workers' shards are dealt by label (logged, recorded), the run is a
/// function of the seed (in-process ranks and mpirun give the same bits), and it differs
/// from a run on contiguous shards. Reading a shard row by row gives the same samples as
/// reading the range.
#[test]
fn label_skew_deals_shards_by_label_reproducibly() {
    let data = small_dataset();
    let data = data.to_str().unwrap();
    let dir = out_dir();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (a, b, c) = (path("a.h5"), path("b.h5"), path("c.h5"));
    let skew = [
        "--steps",
        "6",
        "--colocated",
        "--model",
        "mlp",
        "--label-skew",
        "0.2",
    ];
    let run = local_ranks(4, &args(data, &a, &skew));
    run.assert_ok();
    assert!(
        run.stderr
            .contains("--label-skew 0.2: 128 samples per worker"),
        "{}",
        run.stderr
    );
    assert_eq!(attr_f64(Path::new(&a), "label_skew"), 0.2);
    mpirun(4, &args(data, &b, &skew)).assert_ok();
    let (da, db) = (
        rps::metrics::digest::of_metrics(Path::new(&a)).unwrap(),
        rps::metrics::digest::of_metrics(Path::new(&b)).unwrap(),
    );
    assert_eq!(
        da, db,
        "in-process and mpirun runs with --label-skew differ"
    );
    local_ranks(4, &args(data, &c, &skew[..5])).assert_ok();
    let dc = rps::metrics::digest::of_metrics(Path::new(&c)).unwrap();
    let loss = |d: &[rps::metrics::digest::Digest]| {
        d.iter()
            .find(|x| x.name == "train/loss")
            .unwrap()
            .hex
            .clone()
    };
    assert_ne!(loss(&da), loss(&dc), "--label-skew changed nothing");

    let info = rps::data::DatasetInfo::open(Path::new(data)).unwrap();
    let range = rps::data::Shard::read(&info, "train", 100..300).unwrap();
    let rows: Vec<usize> = (100..300).collect();
    let by_rows = rps::data::Shard::read_rows(&info, "train", &rows).unwrap();
    let batch = |s: &rps::data::Shard| {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        s.fill_batch(&(0..200).collect::<Vec<_>>(), &mut x, &mut y);
        (x, y)
    };
    assert_eq!(batch(&range), batch(&by_rows));
}
