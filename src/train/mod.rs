//! The training driver, generic over [`Transport`]: it runs the same way under MPI, over
//! UDP and on N in-process ranks ([`threads`]). Split by role: `setup.rs` prepares and
//! validates, `run.rs` is the step loop, `record.rs` the metrics and evaluations,
//! `outputs.rs` the files. Invariant: every rank executes the same sequence of
//! collectives (exchanges, evaluations, metric reductions) in the same order, whatever
//! its role, so no rank ever waits for a peer that took another branch.

mod outputs;
mod record;
mod run;
mod setup;
pub mod threads;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use thiserror::Error;

use crate::comm::{agree, Disagreement, Transport};
use crate::config::TrainConfig;
use crate::metrics::RunEnv;

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
    /// Every rank stopped together at a step boundary because the job was told to stop
    /// (SIGTERM, SIGINT, SIGUSR1); metrics are flushed and closed, and a checkpoint
    /// was written if a checkpoint directory was given.
    #[error("stopped by a signal after {step} steps")]
    Interrupted {
        step: u64,
        checkpoint: Option<PathBuf>,
    },
}

/// Runs training on every rank of `t`.
///
/// # Errors
/// [`Failure::Agreed`] for anything detected before training starts (bad dataset,
/// unwritable output, impossible roles) or by all ranks together; [`Failure::Local`] for
/// a failure on this rank during training; [`Failure::Interrupted`] after a stop.
///
/// `stop` is raised (by a signal handler) to ask for a clean stop; all ranks then stop
/// at the same step boundary.
pub fn train<T: Transport + ?Sized>(
    t: &T,
    cfg: &TrainConfig,
    stop: &AtomicBool,
) -> Result<Summary, Failure> {
    let (setup, exchange) = agree(t, setup::prepare(t.rank(), t.size(), cfg))?;
    same_resume_step(t, setup.resume.as_ref().map_or(0, |r| r.step))?;
    let env = RunEnv {
        command_line: cfg.command_line.clone(),
        mpi_library_version: t.library_version(),
        hosts: gather_hosts(t),
        started_at_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    };
    let writer = match t.rank() {
        0 => outputs::open_metrics(cfg, &setup, &env).map(Some),
        _ => Ok(None),
    };
    let writer = agree(t, writer)?;
    run::Run::new(t, cfg, setup, exchange, writer, stop)?.steps()
}

/// Every rank must resume from the same step (a checkpoint directory all ranks share).
fn same_resume_step<T: Transport + ?Sized>(t: &T, step: u64) -> Result<(), Disagreement> {
    let steps: Vec<u64> = t
        .allgather_bytes(&step.to_le_bytes())
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    let same = match steps.iter().all(|&s| s == step) {
        true => Ok(()),
        false => Err(anyhow::anyhow!("--resume: ranks found different newest checkpoints (steps {steps:?}); is the directory shared by all ranks?")),
    };
    agree(t, same)
}

/// The host name of every rank, in rank order. Collective.
fn gather_hosts<T: Transport + ?Sized>(t: &T) -> Vec<String> {
    const SLOT: usize = 64;
    let mut mine = t.processor_name().into_bytes();
    mine.resize(SLOT, 0);
    t.allgather_bytes(&mine)
        .chunks(SLOT)
        .map(|c| {
            String::from_utf8_lossy(&c[..c.iter().position(|&b| b == 0).unwrap_or(SLOT)])
                .into_owned()
        })
        .collect()
}
