//! The step loop of one rank: the local SGD step, the exchange (RPS or the reliable
//! all-reduce), and the synchronisation points where counters are flushed, the model is
//! evaluated, checkpoints are written and a requested stop takes effect. Every rank runs
//! the same collectives in the same order, whatever its role.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use log::info;
use ndarray::ArrayView4;

use super::outcome::{Failure, Summary};
use super::outputs::Outputs;
use super::setup::Setup;
use super::watchdog::{Progress, Watchdog};
use crate::comm::Transport;
use crate::config::{Algorithm, TrainConfig};
use crate::counters::StepCounters;
use crate::data::shard::epoch_order;
use crate::drop::TraceRecord;
use crate::exchange::{Exchange, Mode};
use crate::hash::hash_words;
use crate::metrics::{EvalRecord, MetricsWriter};
use crate::optim::Sgd;

/// With deadline detection, the most steps between two checks for a stop or divergence.
const CHECK_EVERY: u64 = 10;

/// A training loss (the mean over a worker's batch) above this many times ln(classes)
/// ends the run as diverged, as a non-finite one does. ln(classes) is the loss of a
/// uniform guess, near which every run starts; a million times that means logits about
/// a million apart, where the softmax is saturated (its gradient no longer grows with
/// the error) and SGD does not come back: the MLP at --lr 100 peaks at 1.6e8 and then
/// sits at chance accuracy, and at --lr 1e6 ran on to a loss of 1e31 and ended
/// `completed`. Runs that recover stay within tens. A fixed bound, not one relative to
/// the first losses, so that a resumed run decides exactly as the uninterrupted one.
pub(super) const DIVERGED_LOSS_FACTOR: f64 = 1e6;

/// Whether a batch's mean loss `loss_sum / count` counts as diverged with `classes`
/// classes: non-finite, or above [`DIVERGED_LOSS_FACTOR`] · ln(classes).
fn loss_diverged(loss_sum: f64, count: u64, classes: usize) -> bool {
    if !loss_sum.is_finite() {
        return true;
    }
    count > 0 && loss_sum / count as f64 > DIVERGED_LOSS_FACTOR * (classes as f64).ln()
}

/// What ranks agreed on at a check point.
#[derive(Debug, Default)]
struct Check {
    stop: bool,
    diverged: Option<String>,
}

/// This rank's model: its replica, gradient and optimizer, and the average of all
/// replicas (evaluation, the all-reduce baseline). Empty on a pure server.
pub(super) struct Replica {
    pub params: Vec<f32>,
    pub grads: Vec<f32>,
    pub sgd: Sgd,
    pub average: Vec<f32>,
}

/// Reusable buffers of the minibatch and this epoch's sample order.
#[derive(Default)]
pub(super) struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<usize>,
    pub order: Vec<usize>,
}

/// The state of one rank during the step loop.
pub(super) struct Run<'a, T: Transport + ?Sized> {
    pub net: &'a T,
    pub cfg: &'a TrainConfig,
    pub setup: Setup,
    pub exchange: Exchange,
    /// Rank 0's metrics file.
    pub writer: Option<MetricsWriter>,
    /// Rank 0's lock on the checkpoint directory, held for the whole run.
    pub _checkpoint_lock: Option<crate::files::Lock>,
    pub replica: Replica,
    pub batch: Batch,
    /// Per-step counters not yet reduced, [`StepCounters::LEN`] values per step.
    pub pending: Vec<f64>,
    /// Counters reduced over ranks and summed over the steps flushed so far.
    pub totals: StepCounters,
    /// Rank 0 with --record-trace: drop decisions not yet written.
    pub trace: Option<Vec<TraceRecord>>,
    /// When training started (wall time of the metrics).
    pub clock: Instant,
    /// First step to run (after a resumed checkpoint).
    pub first_step: u64,
    /// The resumed checkpoint was taken by a stop before the evaluation due at its step.
    pub evaluate_first: bool,
    pub stop: &'a AtomicBool,
    /// The transport's count of refused datagrams at the last step.
    pub rejected_seen: u64,
    /// The transport's count of datagrams lost on this host at the last step.
    pub host_losses_seen: u64,
    /// Ticks at every step, evaluation and checkpoint, for the stall watchdog.
    pub progress: Progress,
}

impl<'a, T: Transport + ?Sized> Run<'a, T> {
    pub fn new(
        net: &'a T,
        cfg: &'a TrainConfig,
        mut setup: Setup,
        mut exchange: Exchange,
        outputs: Option<Outputs>,
        stop: &'a AtomicBool,
    ) -> Result<Self, Failure> {
        let (writer, checkpoint_lock) = match outputs {
            Some(o) => (Some(o.writer), o.checkpoint_lock),
            None => (None, None),
        };
        let d = setup.model.num_params();
        let trace = (cfg.record_trace && writer.is_some()).then(Vec::new);
        let len = if setup.worker.is_some() { d } else { 0 };
        let mut params = if len > 0 {
            setup.model.init_params(cfg.seed)
        } else {
            Vec::new()
        };
        let mut sgd = Sgd::new(len, cfg.lr, cfg.momentum, cfg.weight_decay);
        if len > 0 {
            // Batch-norm running statistics are exchanged, never trained.
            sgd.set_trainable(setup.model.trainable());
        }
        let (mut first_step, mut totals, mut evaluate_first) = (0, StepCounters::default(), false);
        if let Some(state) = setup.resume.candidates.pop() {
            params = state.params;
            sgd.velocity_mut().copy_from_slice(&state.velocity);
            exchange
                .set_link_state(&state.links)
                .context("--resume: the checkpoint's link counters do not fit this run (a checkpoint of another number of ranks, or one written before rps kept only each rank's own links)")?;
            first_step = state.step;
            totals = state.totals;
            evaluate_first = !state.evaluated;
        }
        Ok(Run {
            net,
            cfg,
            exchange,
            writer,
            _checkpoint_lock: checkpoint_lock,
            replica: Replica {
                params,
                grads: vec![0.0; len],
                sgd,
                average: vec![0.0; d],
            },
            batch: Batch::default(),
            pending: Vec::new(),
            totals,
            trace,
            clock: Instant::now(),
            first_step,
            evaluate_first,
            stop,
            rejected_seen: net.rejected(),
            host_losses_seen: net.host_losses(),
            progress: Progress::default(),
            setup,
        })
    }

    /// Runs every remaining step, then finishes the run.
    ///
    /// # Errors
    /// [`Failure::Interrupted`] after a requested stop; any failure on the way.
    pub fn steps(&mut self) -> Result<Summary, Failure> {
        self.announce();
        let _watchdog = Watchdog::start(
            self.net.rank(),
            &self.progress,
            self.cfg.stall_warn,
            self.cfg.stall_abort,
        );
        let total = self.setup.total_steps;
        self.clock = Instant::now();
        let mut last = EvalRecord::default();
        let eval_due = |done: u64| {
            done == total || (self.cfg.eval_every > 0 && done.is_multiple_of(self.cfg.eval_every))
        };
        if self.evaluate_first && eval_due(self.first_step) {
            // The evaluation the stop skipped: the state is the one it would have seen.
            last = self.evaluate(self.first_step)?;
            self.report(&[], &last)?;
        }
        for step in self.first_step..total {
            let mut counts = self.local_step(step)?;
            let diag = self.cfg.diag_every > 0 && (step + 1) % self.cfg.diag_every == 0;
            let before = diag.then(|| self.diag_before());
            let t0 = Instant::now();
            self.communicate(step, &mut counts)?;
            counts.comm_s = t0.elapsed().as_secs_f64();
            if let Some(before) = before {
                self.diag_after(step + 1, before)?;
            }
            if self.net.rank() == 0 {
                counts.wall_s = self.clock.elapsed().as_secs_f64();
            }
            self.progress.tick();
            let done = step + 1;
            let eval_due = eval_due(done);
            let checkpoint_due =
                done < total && self.cfg.checkpoint_every.is_some_and(|k| done % k == 0);
            // With deadline detection, ranks check for stops and divergence only where
            // no message is in flight: at sync points, and every CHECK_EVERY steps.
            let check_point = !self.exchange.uses_deadline() || done % CHECK_EVERY == 0;
            let sync_point = eval_due || checkpoint_due;
            // No message may still be in flight when a collective starts: with deadline
            // detection ranks drain stragglers first, and agree on stopping only where
            // they synchronise anyway (oracle exchanges leave nothing in flight).
            if sync_point || check_point {
                counts.late += self.exchange.quiesce(self.net);
            }
            counts.to_flat(&mut self.pending);
            let check = match sync_point || check_point {
                true => self.check(&counts),
                false => Check::default(),
            };
            if let Some(what) = check.diverged {
                self.flush_steps(done)?;
                return Err(self.diverged(done, &what)?);
            }
            if check.stop && done < total {
                // mpirun kills the ranks about a second after forwarding the signal: the
                // rows and the checkpoint come first, and no evaluation delays them.
                self.flush_steps(done)?;
                self.checkpoint(done, false)?;
                return Err(self.interrupted(done)?);
            }
            if sync_point {
                let rows = self.flush_steps(done)?;
                if eval_due {
                    last = self.evaluate(done)?;
                    self.report(&rows, &last)?;
                }
                // After the evaluation, so that a resumed run keeps its row.
                if checkpoint_due {
                    self.checkpoint(done, eval_due)?;
                }
            }
        }
        self.finish(last)
    }

    /// Rank 0 says what is about to run.
    fn announce(&self) {
        if self.net.rank() != 0 {
            return;
        }
        let (s, cfg) = (&self.setup, self.cfg);
        info!(
            "{} {} workers, {} servers ({}), {} steps ({} per epoch), batch {} per worker, drop rate {}, {} parameters in {} blocks",
            cfg.algorithm.name(),
            s.layout.num_workers(),
            s.layout.num_servers(),
            if cfg.mode == Mode::Colocated { "co-located" } else { "dedicated" },
            s.total_steps,
            s.steps_per_epoch,
            cfg.batch_size,
            cfg.drop_rate,
            s.model.num_params(),
            s.layout.num_blocks()
        );
        if self.first_step > 0 {
            info!("resuming after step {}", self.first_step);
        }
    }

    /// Whether any rank was told to stop, and whether any rank's training diverged: a
    /// non-finite or huge loss in this step (see [`DIVERGED_LOSS_FACTOR`]) or a
    /// non-finite parameter (a scan costs well under a millisecond against a step of
    /// tens). Collective.
    fn check(&self, counts: &StepCounters) -> Check {
        let bad_params = self.replica.params.iter().any(|x| !x.is_finite());
        let classes = self.setup.info.classes.len();
        let mut flags = [
            f64::from(u8::from(self.stop.load(Ordering::Relaxed))),
            f64::from(u8::from(!counts.loss_sum.is_finite())),
            f64::from(u8::from(bad_params)),
            f64::from(u8::from(loss_diverged(
                counts.loss_sum,
                counts.count,
                classes,
            ))),
        ];
        self.net.allreduce_sum_f64(&mut flags);
        let ln = (classes as f64).ln();
        let diverged = if flags[1] > 0.0 {
            Some("the training loss is not finite (NaN or infinite)".to_string())
        } else if flags[2] > 0.0 {
            Some("a parameter is not finite (NaN or infinite)".to_string())
        } else if flags[3] > 0.0 {
            Some(format!(
                "the training loss exceeds {DIVERGED_LOSS_FACTOR:e} × ln({classes}) = {:.3e}, a million times that of a uniform guess",
                DIVERGED_LOSS_FACTOR * ln
            ))
        } else {
            None
        };
        Check {
            stop: flags[0] > 0.0,
            diverged,
        }
    }

    /// Worker part of a step: minibatch, forward, backward, optimizer update.
    fn local_step(&mut self, step: u64) -> Result<StepCounters, Failure> {
        let mut counts = StepCounters::default();
        let Some(w) = &self.setup.worker else {
            return Ok(counts);
        };
        let t0 = Instant::now();
        let spe = self.setup.steps_per_epoch;
        let (epoch, j) = (step / spe, (step % spe) as usize);
        let batch = &mut self.batch;
        if j == 0 || batch.order.is_empty() {
            batch.order = epoch_order(self.cfg.seed, w.index, epoch, w.train.len());
        }
        let b = self.cfg.batch_size;
        // Augmentation draws from (seed, worker, step), so every run is reproducible.
        let augment = self
            .cfg
            .augment
            .then(|| hash_words(&[self.cfg.seed, w.index as u64, step, 0x4155_4731]));
        w.train.fill_batch_augmented(
            &batch.order[j * b..(j + 1) * b],
            &mut batch.images,
            &mut batch.labels,
            augment,
        );
        let i = w.train.info;
        let view = ArrayView4::from_shape((b, i.channels, i.height, i.width), &batch.images)
            .context("minibatch")?;
        let r = &mut self.replica;
        let stats = self
            .setup
            .model
            .train_batch(&mut r.params, &mut r.grads, view, &batch.labels)
            .with_context(|| format!("training step {}", step + 1))?;
        r.sgd.lr = self.setup.lr.at(step);
        r.sgd.step(&mut r.params, &r.grads);
        counts.loss_sum = stats.loss_sum;
        counts.correct = stats.correct as u64;
        counts.count = stats.count as u64;
        counts.compute_s = t0.elapsed().as_secs_f64();
        Ok(counts)
    }

    /// The exchange of a step: RPS over the lossy network, or the reliable all-reduce.
    fn communicate(&mut self, step: u64, counts: &mut StepCounters) -> Result<(), Failure> {
        match self.cfg.algorithm {
            Algorithm::Rps => {
                let c = self
                    .exchange
                    .step(self.net, step, &mut self.replica.params)
                    .with_context(|| format!("exchange of step {}", step + 1))?;
                counts.add(&c);
                let rejected = self.net.rejected();
                counts.rejected += rejected - self.rejected_seen;
                self.rejected_seen = rejected;
                let host = self.net.host_losses();
                counts.host_losses += host - self.host_losses_seen;
                self.host_losses_seen = host;
                if let Some(trace) = &mut self.trace {
                    self.exchange.trace_step(step, trace);
                }
            }
            Algorithm::Allreduce => {
                self.average_replicas();
                let r = &mut self.replica;
                if !r.params.is_empty() {
                    r.params.copy_from_slice(&r.average);
                }
            }
        }
        Ok(())
    }

    /// Sets the replica's `average` to the mean of the worker replicas (pure servers add
    /// zeros). Collective.
    pub fn average_replicas(&mut self) {
        let r = &mut self.replica;
        let workers = self.setup.layout.num_workers();
        super::average_workers(self.net, &r.params, &mut r.average, workers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_finite_loss_is_divergence() {
        let bound = DIVERGED_LOSS_FACTOR * 10f64.ln();
        // Per sample: 32 samples at 2.3 each (a fresh run) is fine; a mean just above
        // the bound, infinity or NaN is not.
        assert!(!loss_diverged(32.0 * 2.3, 32, 10));
        assert!(!loss_diverged(32.0 * bound * 0.999, 32, 10));
        assert!(loss_diverged(32.0 * bound * 1.001, 32, 10));
        assert!(loss_diverged(3e31, 8, 10));
        assert!(loss_diverged(f64::INFINITY, 8, 10));
        assert!(loss_diverged(f64::NAN, 8, 10));
        // A pure server trains nothing.
        assert!(!loss_diverged(0.0, 0, 10));
    }
}
