//! The RPS exchange as a call, for front ends that train a model of their own: the
//! `rps` Python package (`crates/py`) runs a PyTorch or NumPy model and hands its flat
//! parameter buffer to [`Session::step`] after every local update.
//!
//! A session is the exchange of `rps train` without rps's model, data and optimiser: the
//! same flags (the subset in [`OPTIONS`], validated by the same code, so errors read the
//! same), the same [`Exchange`] (blocks, servers, drop models, packets, chunks, oracle or
//! deadline detection) on the same transports, and the same metrics file (per-step
//! counters and times, plus the training and test values the front end logs). The step
//! of a session is the step of `rps train` on the same buffers: same bits, same counts.
//!
//! Every rank calls the same methods in the same order, as for MPI collectives. Before
//! each exchange the ranks compare what they were given (one small all-gather): a buffer
//! that is unusable on one rank, or of another length than on the others, fails the step
//! on every rank with one message, so nothing waits for a rank that will not come. With
//! deadline detection the ranks first drain their stragglers ([`Exchange::quiesce`]),
//! which `rps train` does only every few steps: a session's late counts can be lower.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use thiserror::Error;

use crate::comm::{agree, gather_strings, Disagreement, Transport};
use crate::config::{Algorithm, TrainConfig};
use crate::counters::StepCounters;
use crate::drop::TraceRecord;
use crate::exchange::{Exchange, Layout};
use crate::metrics::attrs::{self, RunEnv, RunFacts};
use crate::metrics::{EvalRecord, MetricsWriter};

mod options;
mod record;

pub use options::{config, SessionConfig, OPTIONS};

/// Steps whose counters are kept on every rank before they are reduced and written (and
/// at [`Session::close`]): one small reduction per this many steps.
pub const FLUSH_EVERY: u64 = 16;

/// A failed call. `agreed`: every rank failed the same call with this message (a bad
/// input anywhere, found by all ranks together); otherwise only this rank knows, and
/// the job cannot go on (its front end should abort it).
#[derive(Debug, Error)]
#[error("{message}")]
pub struct SessionError {
    pub message: String,
    pub agreed: bool,
}

impl SessionError {
    fn local(e: impl std::fmt::Display) -> Self {
        SessionError {
            message: e.to_string(),
            agreed: false,
        }
    }
}

impl From<Disagreement> for SessionError {
    fn from(d: Disagreement) -> Self {
        let message = match d.rank {
            0 => d.message,
            r => format!("rank {r}: {}", d.message),
        };
        SessionError {
            message,
            agreed: true,
        }
    }
}

/// What exists once the first step has told the model's size.
struct Ready {
    layout: Layout,
    exchange: Exchange,
    /// The all-reduce baseline's average.
    average: Vec<f32>,
}

/// One rank's side of the exchange, stepped by a front end.
pub struct Session<'a> {
    net: Box<dyn Transport + 'a>,
    cfg: SessionConfig,
    frontend: String,
    ready: Option<Ready>,
    /// Elements of every rank's buffer (fixed by the first step).
    len: Option<usize>,
    done: u64,
    /// Rank 0: the metrics file, once created at the first step.
    writer: Option<MetricsWriter>,
    env: RunEnv,
    /// Counters of the steps not yet written, flat ([`StepCounters::to_flat`]).
    pending: Vec<f64>,
    /// Training values logged for the step in progress.
    logged: StepCounters,
    /// Rank 0 with `--record-trace`: drop decisions not yet written.
    trace: Option<Vec<TraceRecord>>,
    /// The evaluation logged last (rank 0), for the final attributes.
    last_eval: Option<EvalRecord>,
    clock: Instant,
    /// When the previous step returned (the front end's compute runs from there).
    returned: Instant,
    rejected_seen: u64,
    host_losses_seen: u64,
    /// Stragglers drained since the last step (deadline detection), for its row.
    late: u64,
    closed: bool,
}

impl<'a> Session<'a> {
    /// Opens a session on `net` (every rank of the job, together). `frontend` names the
    /// caller in the metrics file (`python`).
    ///
    /// # Errors
    /// Ranks that run different configurations or builds; a metrics file that cannot be
    /// created where it points (agreed on every rank).
    pub fn open(
        net: Box<dyn Transport + 'a>,
        cfg: SessionConfig,
        frontend: &str,
    ) -> Result<Self, SessionError> {
        let t = &*net;
        agree(t, crate::train::same_job(t, &cfg.train))?;
        let writable = match (t.rank(), cfg.metrics) {
            (0, true) => crate::train::check_outputs(&cfg.train, true),
            _ => Ok(()),
        };
        agree(t, writable)?;
        let env = RunEnv {
            command_line: cfg.train.command_line.clone(),
            mpi_library_version: t.library_version(),
            hosts: gather_strings(t, &t.processor_name()),
            started_at_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        };
        let trace = (cfg.train.record_trace && cfg.metrics && t.rank() == 0).then(Vec::new);
        let (rejected_seen, host_losses_seen) = (t.rejected(), t.host_losses());
        Ok(Session {
            net,
            cfg,
            frontend: frontend.into(),
            ready: None,
            len: None,
            done: 0,
            writer: None,
            env,
            pending: Vec::new(),
            logged: StepCounters::default(),
            trace,
            last_eval: None,
            clock: Instant::now(),
            returned: Instant::now(),
            rejected_seen,
            host_losses_seen,
            late: 0,
            closed: false,
        })
    }

    pub fn rank(&self) -> usize {
        self.net.rank()
    }

    pub fn size(&self) -> usize {
        self.net.size()
    }

    /// The validated configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg.train
    }

    /// Steps exchanged so far.
    pub fn steps_done(&self) -> u64 {
        self.done
    }

    /// Whether this rank trains a replica: every rank in co-located mode, the ranks after
    /// the servers in dedicated mode.
    pub fn is_worker(&self) -> bool {
        self.worker_index().is_some()
    }

    /// This rank's index among the workers (for sharding data), if it is one.
    pub fn worker_index(&self) -> Option<usize> {
        self.rank().checked_sub(self.cfg.train.mode.first_worker())
    }

    /// Workers in the job.
    pub fn num_workers(&self) -> usize {
        self.size()
            .saturating_sub(self.cfg.train.mode.first_worker())
    }

    /// The drop model's description (known from the first step on).
    pub fn drop_description(&self) -> Option<String> {
        self.ready
            .as_ref()
            .map(|r| r.exchange.drop_model().describe())
    }

    /// Where rank 0 writes the metrics file, if anywhere.
    pub fn metrics_path(&self) -> Option<PathBuf> {
        self.cfg.metrics.then(|| self.cfg.train.metrics.clone())
    }

    /// One step of RPS (or of the all-reduce baseline) on this rank's parameter buffer:
    /// on entry the locally updated replica, on return the exchanged one (a pure server's
    /// buffer is left as it is). `buffer` is `Err(why)` where the front end found this
    /// rank's buffer unusable. Collective.
    ///
    /// # Errors
    /// Agreed: an unusable buffer on any rank, buffers of different lengths, a length
    /// other than the first step's, anything that fails building the exchange at the
    /// first step (the model's size then fixes blocks and drop model), a closed session.
    /// Local: a transport failure.
    pub fn step(
        &mut self,
        buffer: Result<&mut [f32], String>,
    ) -> Result<StepCounters, SessionError> {
        let compute_s = self.returned.elapsed().as_secs_f64();
        if self.closed {
            return Err(SessionError {
                message: "the exchange is closed".into(),
                agreed: true,
            });
        }
        // No message may be in flight when the check's collective starts.
        self.quiesce();
        let params = self.check_buffers(buffer)?;
        if self.ready.is_none() {
            self.prepare(params.len())?;
        }
        let step = self.done;
        let rank = self.rank();
        let worker = self.is_worker();
        let t0 = Instant::now();
        let net = &*self.net;
        let r = self.ready.as_mut().expect("prepared above");
        let mut counts = match self.cfg.train.algorithm {
            Algorithm::Rps => {
                let mine: &mut [f32] = if worker { params } else { &mut [] };
                r.exchange
                    .step(net, step, mine)
                    .with_context(|| format!("exchange of step {}", step + 1))
                    .map_err(|e| SessionError::local(format!("rank {rank}: {e:#}")))?
            }
            Algorithm::Allreduce => {
                let mine: &[f32] = if worker { params } else { &[] };
                crate::train::average_workers(net, mine, &mut r.average, r.layout.num_workers());
                if worker {
                    params.copy_from_slice(&r.average);
                }
                StepCounters::default()
            }
        };
        counts.comm_s = t0.elapsed().as_secs_f64();
        counts.compute_s = compute_s;
        counts.late += std::mem::take(&mut self.late);
        let rejected = net.rejected();
        counts.rejected += rejected - self.rejected_seen;
        self.rejected_seen = rejected;
        let host = net.host_losses();
        counts.host_losses += host - self.host_losses_seen;
        self.host_losses_seen = host;
        if let Some(trace) = &mut self.trace {
            r.exchange.trace_step(step, trace);
        }
        let logged = std::mem::take(&mut self.logged);
        counts.loss_sum = logged.loss_sum;
        counts.correct = logged.correct;
        counts.count = logged.count;
        if rank == 0 {
            counts.wall_s = self.clock.elapsed().as_secs_f64();
        }
        self.done += 1;
        counts.to_flat(&mut self.pending);
        if self.done.is_multiple_of(FLUSH_EVERY) {
            self.flush()?;
        }
        self.returned = Instant::now();
        Ok(counts)
    }

    /// Replaces every rank's `buffer` with the mean of the workers' buffers (a pure
    /// server's counts as none): the reliable average in rank order, as `rps train`
    /// evaluates its averaged model. Collective.
    ///
    /// # Errors
    /// As [`Session::step`] for the buffers; before the first step.
    pub fn average(&mut self, buffer: Result<&mut [f32], String>) -> Result<(), SessionError> {
        if self.ready.is_none() {
            return Err(SessionError {
                message: "average: no step yet (the first step fixes the model's size)".into(),
                agreed: true,
            });
        }
        self.quiesce();
        let params = self.check_buffers(buffer)?;
        let worker = self.is_worker();
        let net = &*self.net;
        let r = self.ready.as_mut().expect("checked above");
        let mut average = std::mem::take(&mut r.average);
        average.resize(params.len(), 0.0);
        let mine: &[f32] = if worker { params } else { &[] };
        crate::train::average_workers(net, mine, &mut average, r.layout.num_workers());
        params.copy_from_slice(&average);
        r.average = average;
        Ok(())
    }

    /// Waits until every rank has called it (a reliable barrier, after draining
    /// stragglers with deadline detection). Collective.
    pub fn barrier(&mut self) {
        self.quiesce();
        self.net.barrier();
    }

    /// Every rank's `value`, in rank order (reliable: for timings and values the front
    /// end wants from all ranks). Collective.
    pub fn gather(&mut self, value: f64) -> Vec<f64> {
        self.quiesce();
        self.net
            .allgather_bytes(&value.to_le_bytes())
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect()
    }

    /// With deadline detection, drains the messages still in flight (counted as late in
    /// the next step's row) so that a reliable collective can start.
    fn quiesce(&mut self) {
        if let Some(r) = &mut self.ready {
            self.late += r.exchange.quiesce(&*self.net);
        }
    }

    /// Compares every rank's buffer: all usable, all of one length (the first step's
    /// from the second on). Collective.
    fn check_buffers<'b>(
        &self,
        buffer: Result<&'b mut [f32], String>,
    ) -> Result<&'b mut [f32], SessionError> {
        let t = &*self.net;
        let mut mine = [0u8; 9];
        match &buffer {
            Ok(b) => mine[1..].copy_from_slice(&(b.len() as u64).to_le_bytes()),
            Err(_) => mine[0] = 1,
        }
        let all = t.allgather_bytes(&mine);
        let rows: Vec<(bool, u64)> = all
            .chunks_exact(9)
            .map(|c| {
                (
                    c[0] == 1,
                    u64::from_le_bytes(c[1..].try_into().unwrap_or_default()),
                )
            })
            .collect();
        if let Some(bad) = rows.iter().position(|r| r.0) {
            let why = gather_strings(t, buffer.as_ref().err().map_or("", |s| s.as_str()));
            return Err(SessionError {
                message: format!("rank {bad}: {}", why[bad]),
                agreed: true,
            });
        }
        let expected = self.len.map_or(rows[0].1, |n| n as u64);
        if rows.iter().any(|r| r.1 != expected) {
            let sides =
                crate::comm::ranks_by_value(rows.iter().map(|r| r.1), |n| format!("{n} elements"));
            let message = match self.len {
                None => format!(
                    "the buffers differ in length between ranks: {} (every rank passes its copy of the same model)",
                    sides.join(", ")
                ),
                Some(n) => format!(
                    "the buffer has changed length since the first step ({n} elements): now {}",
                    sides.join(", ")
                ),
            };
            return Err(SessionError {
                message,
                agreed: true,
            });
        }
        buffer.map_err(SessionError::local)
    }

    /// At the first step: blocks, drop model and exchange for a model of `len`
    /// parameters, and rank 0's metrics file. Collective.
    fn prepare(&mut self, len: usize) -> Result<(), SessionError> {
        let t = &*self.net;
        let cfg = &self.cfg.train;
        let built = Layout::new(t.size(), cfg.mode, len, cfg.seed)
            .map_err(anyhow::Error::from)
            .and_then(|layout| {
                let (exchange, link_rates) = crate::train::build_exchange(cfg, &layout, 0)?;
                Ok((layout, exchange, link_rates))
            });
        let (layout, exchange, link_rates) = agree(t, built)?;
        let writer = match (t.rank(), self.cfg.metrics) {
            (0, true) => {
                let description = exchange.drop_model().describe();
                let facts = RunFacts {
                    cfg,
                    layout: &layout,
                    dataset: None,
                    frontend: &self.frontend,
                    num_params: len,
                    total_steps: 0,
                    steps_per_epoch: 0,
                    drop_description: &description,
                    link_rates: link_rates.as_deref(),
                    env: Some(&self.env),
                };
                let mut all = attrs::attributes(&facts);
                all.insert(1, (attrs::STATUS.name, attrs::RUNNING.into()));
                MetricsWriter::create(&cfg.metrics, cfg.force, &all).map(Some)
            }
            _ => Ok(None),
        };
        self.writer = agree(t, writer)?;
        let average = match cfg.algorithm {
            Algorithm::Allreduce => vec![0.0; len],
            Algorithm::Rps => Vec::new(),
        };
        self.ready = Some(Ready {
            layout,
            exchange,
            average,
        });
        self.len = Some(len);
        self.clock = Instant::now();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
