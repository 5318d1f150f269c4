//! N ranks as threads of one process, over the in-process network ([`LocalTransport`]):
//! the same driver, flags and metrics file as under `mpirun -n N`, and with oracle
//! detection the same parameters and losses bit for bit. A rank that fails alone poisons
//! the network so that no other rank waits for it; the root cause is what is reported.

use std::sync::atomic::AtomicBool;

use super::{train, Failure, Summary};
use crate::comm::local::{LocalTransport, PeerFailed};
use crate::comm::Transport;
use crate::config::TrainConfig;

/// Trains on `n` in-process ranks and returns rank 0's outcome, or the failure that
/// stopped the run: a rank's own failure first (the root cause), else the failure all
/// ranks agreed on.
///
/// # Errors
/// As [`train`]; a panic of any rank becomes a [`Failure::Local`] naming it.
pub fn train_threads(n: usize, cfg: &TrainConfig, stop: &AtomicBool) -> Result<Summary, Failure> {
    let outcomes: Vec<Option<Result<Summary, Failure>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = LocalTransport::network(n)
            .into_iter()
            .map(|net| {
                std::thread::Builder::new()
                    .name(format!("rank {}", net.rank()))
                    .spawn_scoped(scope, move || {
                        let result = train(&net, cfg, stop);
                        if matches!(result, Err(Failure::Local(_))) {
                            net.poison();
                        }
                        result
                    })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(rank, h)| match h.map(|h| h.join()) {
                Ok(Ok(result)) => Some(result),
                // Unwound because a peer failed: that peer reports.
                Ok(Err(payload)) if payload.is::<PeerFailed>() => None,
                Ok(Err(payload)) => Some(Err(Failure::Local(anyhow::anyhow!(
                    "rank {rank} panicked: {}",
                    panic_message(&*payload)
                )))),
                Err(e) => Some(Err(Failure::Local(anyhow::anyhow!(
                    "cannot start the thread of rank {rank}: {e}"
                )))),
            })
            .collect()
    });
    pick(outcomes)
}

/// Rank 0's outcome unless some rank failed on its own.
fn pick(outcomes: Vec<Option<Result<Summary, Failure>>>) -> Result<Summary, Failure> {
    let mut outcomes: Vec<_> = outcomes.into_iter().flatten().collect();
    if let Some(i) = outcomes
        .iter()
        .position(|o| matches!(o, Err(Failure::Local(_))))
    {
        return outcomes.swap_remove(i);
    }
    outcomes.into_iter().next().unwrap_or_else(|| {
        Err(Failure::Local(anyhow::anyhow!(
            "every rank stopped without a result"
        )))
    })
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use ndarray::{Array1, Array4};

    use super::*;
    use crate::data::convert::{write_dataset, Split};

    /// A dataset of 64 training and 16 test 28×28 images: class k is a bright row k.
    fn dataset(dir: &Path) -> PathBuf {
        let path = dir.join("tiny.h5");
        let make = |n: usize| {
            let labels = Array1::from_shape_fn(n, |i| (i % 4) as u8);
            let images = Array4::from_shape_fn((n, 1, 28, 28), |(i, _, y, x)| {
                let noise = ((i * 31 + y * 7 + x * 3) % 17) as u8;
                if y == 4 * (i % 4) + 2 {
                    200 + noise
                } else {
                    noise
                }
            });
            (images, labels)
        };
        let (train, test) = (make(64), make(16));
        let splits = [
            Split {
                name: "train",
                images: train.0.view(),
                labels: train.1.view(),
            },
            Split {
                name: "test",
                images: test.0.view(),
                labels: test.1.view(),
            },
        ];
        write_dataset(
            &path,
            true,
            "synthetic rows",
            &["a", "b", "c", "d"],
            &splits,
        )
        .unwrap();
        path
    }

    fn config(dir: &Path, n: usize, extra: &[&str]) -> TrainConfig {
        let data = dataset(dir);
        let metrics = dir.join("m.h5");
        let mut args = vec![
            "--dataset",
            data.to_str().unwrap(),
            "--metrics",
            metrics.to_str().unwrap(),
            "--steps",
            "6",
            "--batch-size",
            "4",
            "--eval-every",
            "3",
            "--force",
        ];
        args.extend_from_slice(extra);
        let flags = crate::cli::parse_train(args).unwrap();
        crate::cli::validate::train_config(&flags, n, "test".into()).unwrap()
    }

    #[test]
    fn in_process_ranks_train_and_record() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 3, &["--colocated", "--drop-rate", "0.25"]);
        let stop = AtomicBool::new(false);
        let s = train_threads(3, &cfg, &stop).unwrap();
        assert_eq!(s.steps, 6);
        // Co-located, 3 ranks: each sends 2 blocks up and 2 down per step.
        assert_eq!(s.attempted, 6 * 3 * 4);
        assert!(s.dropped > 0 && s.dropped < s.attempted, "{s:?}");
        let f = crate::metrics::RunFile::open(&cfg.metrics).unwrap();
        let steps = f.column(&crate::metrics::schema::STEP).unwrap();
        assert_eq!(steps, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(f.status().unwrap().as_deref(), Some("completed"));
        let dropped = f
            .column_total(&crate::metrics::schema::PACKETS_DROPPED_UP)
            .unwrap()
            + f.column_total(&crate::metrics::schema::PACKETS_DROPPED_DOWN)
                .unwrap();
        assert_eq!(dropped, s.dropped);
        drop(f);
        // The same seed gives the same run.
        let again = train_threads(3, &cfg, &stop).unwrap();
        assert_eq!((again.test_loss, again.dropped), (s.test_loss, s.dropped));
    }

    #[test]
    fn a_bad_input_fails_on_every_rank_without_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), 3, &["--servers", "1"]);
        cfg.dataset = dir.path().join("absent.h5");
        let err = train_threads(3, &cfg, &AtomicBool::new(false)).unwrap_err();
        match err {
            Failure::Agreed(d) => assert!(d.message.contains("absent.h5"), "{}", d.message),
            other => panic!("expected an agreed failure, got {other}"),
        }
        assert!(!cfg.metrics.exists(), "no metrics file is left behind");
    }

    #[test]
    fn a_stop_request_interrupts_at_a_step_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 2, &["--colocated"]);
        let err = train_threads(2, &cfg, &AtomicBool::new(true)).unwrap_err();
        assert!(
            matches!(
                err,
                Failure::Interrupted {
                    step: 1,
                    checkpoint: None
                }
            ),
            "{err}"
        );
        let f = crate::metrics::RunFile::open(&cfg.metrics).unwrap();
        assert_eq!(f.status().unwrap().as_deref(), Some("interrupted"));
    }

    #[test]
    fn a_rank_failing_alone_poisons_the_network() {
        let outcomes: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = LocalTransport::network(3)
                .into_iter()
                .map(|net| {
                    scope.spawn(move || {
                        if net.rank() == 1 {
                            net.poison();
                            return Err(Failure::Local(anyhow::anyhow!("rank 1 broke")));
                        }
                        // The others would wait for rank 1 forever in this collective.
                        net.barrier();
                        Ok(())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
        for (rank, o) in outcomes.iter().enumerate() {
            match rank {
                1 => assert!(matches!(o, Ok(Err(Failure::Local(_))))),
                _ => assert!(o.as_ref().is_err_and(|p| p.is::<PeerFailed>())),
            }
        }
    }

    /// The diagnostics measure without changing the run: at p = 0 the replicas agree
    /// exactly and the average moves only by the rounding of the servers' f32 averages;
    /// with drops both become visible.
    #[test]
    fn diagnostics_measure_without_changing_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let stop = AtomicBool::new(false);
        let diag = |p: &str| {
            let cfg = config(
                dir.path(),
                3,
                &["--colocated", "--drop-rate", p, "--diag-every", "2"],
            );
            let s = train_threads(3, &cfg, &stop).unwrap();
            let f = crate::metrics::RunFile::open(&cfg.metrics).unwrap();
            let col = |c| f.column(c).unwrap();
            use crate::metrics::schema::*;
            let rows = (
                col(&DIAG_STEP),
                col(&DIAG_SPREAD),
                col(&DIAG_MEAN_ERROR),
                col(&DIAG_CONSENSUS),
                col(&DIAG_AVG_TRAIN_LOSS),
            );
            (s, rows)
        };
        let (lossless, (steps, spread, error, consensus, loss)) = diag("0");
        assert_eq!(steps, vec![2.0, 4.0, 6.0]);
        assert!(spread.iter().all(|&s| s > 0.0), "{spread:?}");
        assert!(consensus.iter().all(|&c| c == 0.0), "{consensus:?}");
        for (e, s) in error.iter().zip(&spread) {
            assert!(*e <= 1e-6 * s, "mean error {e} against spread {s}");
        }
        assert!(loss.iter().all(|l| l.is_finite() && *l > 0.0));
        let (lossy, (_, spread, error, consensus, _)) = diag("0.5");
        assert!(consensus.iter().any(|&c| c > 0.0), "{consensus:?}");
        assert!(
            error.iter().zip(&spread).any(|(e, s)| *e > 1e-3 * s),
            "{error:?} {spread:?}"
        );
        // The same runs without diagnostics end identically.
        for (p, with) in [("0", lossless), ("0.5", lossy)] {
            let cfg = config(dir.path(), 3, &["--colocated", "--drop-rate", p]);
            let without = train_threads(3, &cfg, &stop).unwrap();
            assert_eq!(
                (without.test_loss, without.dropped),
                (with.test_loss, with.dropped)
            );
        }
    }
}
