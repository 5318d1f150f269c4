//! Checkpoints, and the early stops that write what they can (divergence, a signal):
//! methods of the step loop's [`Run`], written beside it.

use super::outcome::Failure;
use super::run::Run;
use crate::checkpoint::{self, RankState};
use crate::comm::{agree, Transport};
use crate::metrics::attrs;
use log::info;

/// Keeps the newest this many complete checkpoints.
const KEEP_CHECKPOINTS: usize = 2;

impl<T: Transport + ?Sized> Run<'_, T> {
    /// Every rank writes its state after `done` steps (`evaluated`: the evaluation due at
    /// `done`, if any, is already in the metrics); once all have, rank 0 marks the
    /// checkpoint complete. Collective.
    pub(super) fn checkpoint(&mut self, done: u64, evaluated: bool) -> Result<(), Failure> {
        let Some(dir) = self.cfg.checkpoint_dir.clone() else {
            return Ok(());
        };
        // The published metrics file must hold at least the rows the checkpoint counts.
        let rows = match &self.writer {
            Some(w) => {
                w.flush()?;
                w.rows()?
            }
            None => [0; 3],
        };
        let state = RankState {
            step: done,
            params: self.replica.params.clone(),
            velocity: self.replica.sgd.velocity().to_vec(),
            links: self.exchange.link_state(),
            metrics_rows: rows,
            evaluated,
            totals: self.totals,
        };
        let rank = self.net.rank();
        let written = checkpoint::write_rank(&dir, rank, &self.setup.fingerprint, &state);
        agree(self.net, written)?;
        if rank == 0 {
            checkpoint::mark_complete(&dir, done, self.net.size(), KEEP_CHECKPOINTS)?;
            info!(
                "checkpoint after step {done} in {}",
                checkpoint::step_dir(&dir, done).display()
            );
        }
        self.net.barrier();
        self.progress.tick();
        Ok(())
    }

    /// Closes the metrics as diverged after `done` steps.
    pub(super) fn diverged(&mut self, done: u64, what: &str) -> Result<Failure, Failure> {
        if let Some(w) = self.writer.take() {
            w.set_attr(attrs::STATUS.name, &attrs::DIVERGED.into())?;
            w.set_attr(attrs::STEPS_COMPLETED.name, &done.into())?;
            w.close()?;
        }
        Ok(Failure::Diverged {
            step: done,
            what: what.to_string(),
        })
    }

    /// Closes the metrics as interrupted; the failure says where to resume from.
    pub(super) fn interrupted(&mut self, done: u64) -> Result<Failure, Failure> {
        if let Some(w) = self.writer.take() {
            w.set_attr(attrs::STATUS.name, &attrs::INTERRUPTED.into())?;
            w.set_attr(attrs::STEPS_COMPLETED.name, &done.into())?;
            w.close()?;
        }
        let checkpoint = self
            .cfg
            .checkpoint_dir
            .as_ref()
            .map(|d| checkpoint::step_dir(d, done));
        Ok(Failure::Interrupted {
            step: done,
            checkpoint,
        })
    }
}
