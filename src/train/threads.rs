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
