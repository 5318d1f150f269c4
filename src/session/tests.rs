use super::*;
use crate::comm::local::LocalTransport;

fn flags(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

/// Runs `body` on `n` in-process ranks, each with its own session on `flags`.
fn on_ranks<R: Send>(
    n: usize,
    flags: &[String],
    body: impl Fn(&mut Session<'_>) -> R + Sync,
) -> Vec<R> {
    std::thread::scope(|s| {
        let handles: Vec<_> = LocalTransport::network(n)
            .into_iter()
            .map(|net| {
                let body = &body;
                s.spawn(move || {
                    let cfg = config(flags, n, "test".into()).unwrap();
                    let mut session = Session::open(Box::new(net), cfg, "test").unwrap();
                    body(&mut session)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn buffer(rank: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7 + rank * 13) % 29) as f32 * 0.25 - 3.0)
        .collect()
}

#[test]
fn a_session_steps_as_the_exchange_itself() {
    let f = flags("--colocated --drop-rate 0.3 --packet-bytes 16 --seed 5");
    let (n, len, steps) = (3, 101, 6);
    let got = on_ranks(n, &f, |s| {
        let mut b = buffer(s.rank(), len);
        let mut counts = Vec::new();
        for _ in 0..steps {
            b.iter_mut().for_each(|x| *x += 0.5);
            counts.push(s.step(Ok(&mut b)).unwrap());
        }
        (b, counts)
    });
    // The same steps on the exchange alone, built as `rps train` builds it.
    let cfg = config(&f, n, String::new()).unwrap().train;
    let want: Vec<(Vec<f32>, Vec<StepCounters>)> = std::thread::scope(|s| {
        let handles: Vec<_> = LocalTransport::network(n)
            .into_iter()
            .map(|net| {
                let cfg = &cfg;
                s.spawn(move || {
                    let layout = Layout::new(n, cfg.mode, len, cfg.seed).unwrap();
                    let (mut ex, _) = crate::train::build_exchange(cfg, &layout, 0).unwrap();
                    let mut b = buffer(net.rank(), len);
                    let mut counts = Vec::new();
                    for step in 0..steps {
                        b.iter_mut().for_each(|x| *x += 0.5);
                        counts.push(ex.step(&net, step, &mut b).unwrap());
                    }
                    (b, counts)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut dropped = 0;
    for ((gb, gc), (wb, wc)) in got.iter().zip(&want) {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(gb), bits(wb));
        for (g, w) in gc.iter().zip(wc) {
            let strip = |c: &StepCounters| StepCounters {
                comm_s: 0.0,
                compute_s: 0.0,
                wall_s: 0.0,
                ..*c
            };
            assert_eq!(strip(g), strip(w));
            dropped += g.packets_dropped();
        }
    }
    assert!(dropped > 0, "the drops were exercised");
}

#[test]
fn a_bad_buffer_on_one_rank_fails_the_step_on_every_rank() {
    let f = flags("--colocated");
    let results = on_ranks(3, &f, |s| {
        let mut b = vec![1.0f32; 10];
        let first = match s.rank() {
            1 => s.step(Err("the buffer is float64".into())),
            _ => s.step(Ok(&mut b)),
        };
        let err = first.unwrap_err();
        // Nothing was exchanged: the next step runs.
        let mut b = vec![s.rank() as f32; 10];
        s.step(Ok(&mut b)).unwrap();
        let mut short = vec![0f32; 9 + usize::from(s.rank() == 2)];
        let changed = s.step(Ok(&mut short)).unwrap_err();
        s.close(true).unwrap();
        (err, changed, s.steps_done())
    });
    for (err, changed, done) in results {
        assert!(err.agreed);
        assert_eq!(err.message, "rank 1: the buffer is float64");
        assert!(changed.agreed);
        assert_eq!(
            changed.message,
            "the buffer has changed length since the first step (10 elements): now 9 elements on rank(s) 0, 1, 10 elements on rank(s) 2"
        );
        assert_eq!(done, 1);
    }
}

#[test]
fn buffers_of_different_lengths_fail_the_first_step_everywhere() {
    let results = on_ranks(2, &flags("--colocated"), |s| {
        let mut b = vec![0f32; 5 + s.rank()];
        s.step(Ok(&mut b)).unwrap_err()
    });
    for e in results {
        assert!(e.agreed);
        assert!(
            e.message
                .contains("5 elements on rank(s) 0, 6 elements on rank(s) 1"),
            "{}",
            e.message
        );
    }
}

#[test]
fn options_are_those_of_rps_train_with_its_messages() {
    let e = config(&flags("--lr 0.1"), 2, String::new()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("--lr is not an option of the exchange"),
        "{e}"
    );
    let e = config(&flags("--colocated --drop-rate 1.5"), 2, String::new()).unwrap_err();
    assert_eq!(e.to_string(), "--drop-rate 1.5 is outside [0, 1]");
    let e = config(&flags("--colocated --drop-rate x"), 2, String::new()).unwrap_err();
    assert!(e.to_string().contains("invalid value 'x'"), "{e}");
    let c = config(
        &flags("--servers 1 --drop-model gilbert-elliott"),
        3,
        String::new(),
    )
    .unwrap();
    assert!(!c.metrics);
}

#[test]
fn the_metrics_file_holds_rows_logs_and_results() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.h5");
    let f = flags(&format!(
        "--servers 1 --drop-rate 0.2 --metrics {}",
        path.display()
    ));
    let steps = FLUSH_EVERY + 3;
    on_ranks(3, &f, |s| {
        let mut b = vec![1.0f32; 40];
        for k in 0..steps {
            s.log_train(0.5 + k as f64, 0.25, 4).unwrap();
            s.step(Ok(&mut b)).unwrap();
        }
        s.set_attr("model", "lstm".into()).unwrap();
        assert!(s.set_attr("drop_rate", 0.0.into()).is_err());
        s.log_eval(steps, 0.75, 0.5).unwrap();
        s.close(true).unwrap();
    });
    let f = crate::metrics::read::RunFile::open(&path).unwrap();
    assert_eq!(f.status().unwrap().as_deref(), Some("completed"));
    assert_eq!(f.attr_str("frontend").unwrap().as_deref(), Some("test"));
    assert_eq!(f.attr_str("model").unwrap().as_deref(), Some("lstm"));
    assert_eq!(f.attr_i64("steps").unwrap(), Some(steps as i64));
    assert!(f.attr_str("dataset").unwrap().is_none());
    let loss = f.column(&crate::metrics::schema::LOSS).unwrap();
    assert_eq!(loss.len(), steps as usize);
    // Two workers logged each step; the server logged nothing.
    assert_eq!(loss[1], 1.5);
    let acc = f.column(&crate::metrics::schema::ACCURACY).unwrap();
    assert_eq!(acc[0], 0.25);
    let summary = crate::report::RunSummary::read(&path).unwrap();
    assert_eq!(summary.test_accuracy, Some(0.5));
    assert!(summary.messages_dropped > 0);
}

#[test]
fn deadline_detection_average_and_gather_run_on_every_rank() {
    let f = flags("--servers 1 --detect deadline --recv-timeout-ms 200 --drop-rate 0.3 --seed 3");
    let got = on_ranks(3, &f, |s| {
        let mut b = vec![s.rank() as f32; 30];
        let mut dropped = 0;
        for _ in 0..4 {
            dropped += s.step(Ok(&mut b)).unwrap().packets_dropped();
        }
        let mut avg = vec![s.rank() as f32 * 2.0; 30];
        s.average(Ok(&mut avg)).unwrap();
        s.barrier();
        let all = s.gather(s.rank() as f64 + 0.5);
        s.close(true).unwrap();
        (dropped, avg, all, b)
    });
    // The workers are ranks 1 and 2: their mean of 2·rank is 3, on every rank.
    for (_, avg, all, _) in &got {
        assert!(avg.iter().all(|&x| x == 3.0), "{avg:?}");
        assert_eq!(all, &[0.5, 1.5, 2.5]);
    }
    assert!(
        got.iter().map(|g| g.0).sum::<u64>() > 0,
        "drops were exercised"
    );
    // The pure server's buffer is left as it was.
    assert!(got[0].3.iter().all(|&x| x == 0.0));
}
