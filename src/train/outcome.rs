//! How a run ends: its [`Summary`], or the [`Failure`] that decides how the process
//! exits. A leaf of the driver: every part of it reports through these.

use std::path::PathBuf;

use thiserror::Error;

use crate::comm::Disagreement;

/// What a finished run reports to the user.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub steps: u64,
    pub test_loss: f64,
    pub test_accuracy: f64,
    pub consensus_distance: f64,
    pub wall_s: f64,
    /// Messages (packets, with `--packet-bytes`) the drop model discarded / attempted.
    pub dropped: u64,
    pub attempted: u64,
}

/// How a run failed, which decides how the process must end.
#[derive(Debug, Error)]
pub enum Failure {
    /// Every rank learned of the failure through a collective; each can finish MPI
    /// normally and exit non-zero. The lowest failing rank reports it.
    #[error("{0}")]
    Agreed(#[from] Disagreement),
    /// Only this rank knows; the job must be aborted so that the others do not wait
    /// for it forever.
    #[error("{0:#}")]
    Local(#[from] anyhow::Error),
    /// Every rank stopped together because the loss or a parameter became non-finite;
    /// the metrics file says `diverged`.
    #[error("training diverged at step {step}: {what}")]
    Diverged { step: u64, what: String },
    /// Every rank stopped together at a step boundary because the job was told to stop
    /// (SIGTERM, SIGINT, SIGUSR1); metrics are flushed and closed, and a checkpoint
    /// was written if a checkpoint directory was given.
    #[error("stopped by a signal after {step} steps")]
    Interrupted {
        step: u64,
        checkpoint: Option<PathBuf>,
    },
}
