//! The training driver: setup agreed by all ranks, the step loop, evaluation, metrics.
//!
//! Generic over [`Transport`], so the same code runs under MPI and, in unit tests, on
//! the in-process network. Invariant: every rank executes the same sequence of
//! collectives (exchanges, evaluations, metric reductions) in the same order, whatever
//! its role, so no rank ever waits for a peer that took another branch.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use log::{debug, info};
use ndarray::ArrayView4;
use thiserror::Error;

use crate::checkpoint::{self, RankState};
use crate::comm::udp;
use crate::comm::{agree, Disagreement, Transport};
use crate::config::{Algorithm, Detection, DropSpec, Duration, TrainConfig, TransportKind};
use crate::data::dataset::{epoch_order, shard_range};
use crate::data::{DatasetInfo, Shard};
use crate::drop::{
    hash_words, Bernoulli, DropModel, GilbertElliott, LinkRates, PerLink, Replay, TraceRecord,
};
use crate::metrics::{AttrValue, EvalRecord, MetricsWriter, StepRecord};
use crate::nn::Model;
use crate::optim::Sgd;
use crate::rps::{Exchange, Layout, Mode};

/// Samples per forward pass when evaluating the test set.
const EVAL_BATCH: usize = 100;

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
    Agreed(Disagreement),
    /// Only this rank knows; the job must be aborted so that the others do not wait
    /// for it forever.
    #[error("{0:#}")]
    Local(anyhow::Error),
    /// Every rank stopped together at a step boundary because the job was told to stop
    /// (SIGTERM, SIGINT, SIGUSR1); metrics are flushed and closed, and a checkpoint
    /// was written if a checkpoint directory was given.
    #[error("stopped by a signal after {step} steps")]
    Interrupted {
        step: u64,
        checkpoint: Option<PathBuf>,
    },
}

/// Keeps the newest this many complete checkpoints.
const KEEP_CHECKPOINTS: usize = 2;

/// Everything the step loop needs, prepared (and validated) before training starts.
struct Setup {
    info: DatasetInfo,
    model: Box<dyn Model>,
    layout: Layout,
    /// Content of the --link-rates file, recorded in the metrics.
    link_rates_text: Option<String>,
    steps_per_epoch: u64,
    total_steps: u64,
    /// This rank's worker index and its shards of the training and test sets.
    worker: Option<(usize, Shard, Shard)>,
    /// Everything that must match between a checkpoint and the run resuming it.
    fingerprint: String,
    /// The state to continue from, with --resume.
    resume: Option<RankState>,
}

/// Validates everything and builds the set-up and the exchange (with its drop model).
fn prepare(rank: usize, size: usize, cfg: &TrainConfig) -> Result<(Setup, Exchange)> {
    check_launcher(size)?;
    let info = DatasetInfo::open(&cfg.dataset)?;
    let t = info.train;
    let model = cfg
        .model
        .build(t.channels, t.height, t.width, info.classes.len())
        .with_context(|| {
            format!(
                "dataset {}: images of {}×{}×{} do not fit the {}",
                info.path.display(),
                t.channels,
                t.height,
                t.width,
                cfg.model.title()
            )
        })?;
    let layout = Layout::new(size, cfg.mode, model.num_params(), cfg.seed)?;
    let workers = layout.num_workers();
    let per_worker = t.count / workers;
    let steps_per_epoch = (per_worker / cfg.batch_size) as u64;
    ensure!(
        steps_per_epoch > 0,
        "--batch-size {} exceeds the {} training samples of each worker ({} samples over {} workers)",
        cfg.batch_size,
        per_worker,
        t.count,
        workers
    );
    let total_steps = match cfg.duration {
        Duration::Epochs(e) => e * steps_per_epoch,
        Duration::Steps(s) => s,
    };
    let packet_elems = cfg.packet_bytes.map(|b| b / 4);
    let max_block = layout.blocks().iter().map(|r| r.len()).max().unwrap_or(1);
    let slots = packet_elems.map_or(1, |pe| max_block.div_ceil(pe)) as u64;
    let seed = hash_words(&[cfg.seed, 0x4452_4F50]); // "DROP"
    let mut link_rates_text = None;
    let drop: Box<dyn DropModel> = match &cfg.drop {
        DropSpec::Bernoulli { up, down } => Box::new(Bernoulli::with_rates(seed, *up, *down)),
        DropSpec::GilbertElliott(g) => Box::new(GilbertElliott::new(seed, *g, slots)),
        DropSpec::PerLink { up, down, file } => {
            let rules = LinkRates::load(file, size)?;
            link_rates_text = std::fs::read_to_string(file).ok();
            Box::new(PerLink::new(seed, *up, *down, rules))
        }
        DropSpec::Replay { file } => {
            let (servers, colocated) = match cfg.mode {
                Mode::Dedicated { servers } => (servers, 0),
                Mode::Colocated => (size, 1),
            };
            let expected = [
                ("world_size", size as i64),
                ("servers", servers as i64),
                ("colocated", colocated),
                ("num_params", model.num_params() as i64),
                ("seed", cfg.seed as i64),
                ("packet_bytes", cfg.packet_bytes.unwrap_or(0) as i64),
            ];
            Box::new(Replay::load(file, &expected, total_steps)?)
        }
    };
    let worker = match layout.worker_index(rank) {
        Some(w) => {
            let train = Shard::read(&info, "train", shard_range(t.count, workers, w))?;
            let test = Shard::read(&info, "test", balanced_range(info.test.count, workers, w))?;
            Some((w, train, test))
        }
        None => None,
    };
    let fingerprint = [
        format!("world_size={size}"),
        format!("mode={:?}", cfg.mode),
        format!("model={}", cfg.model.name()),
        format!("num_params={}", model.num_params()),
        format!(
            "dataset={}",
            cfg.dataset
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
        format!("train_samples={}", info.train.count),
        format!("algorithm={}", cfg.algorithm.name()),
        format!("batch_size={}", cfg.batch_size),
        format!("lr={}", cfg.lr),
        format!("momentum={}", cfg.momentum),
        format!("weight_decay={}", cfg.weight_decay),
        format!("seed={}", cfg.seed),
        format!("drop={}", drop.describe()),
        format!("packet_bytes={}", cfg.packet_bytes.unwrap_or(0)),
        format!("detection={:?}", cfg.detection),
        format!("augment={}", cfg.augment),
        format!(
            "transport={}",
            match cfg.transport {
                TransportKind::Mpi => "mpi",
                TransportKind::Udp(_) => "udp",
            }
        ),
    ]
    .join(";");
    let resume = match &cfg.resume {
        Some(dir) => {
            let state = checkpoint::read_newest(dir, rank, &fingerprint)?;
            let expected = if worker.is_some() {
                model.num_params()
            } else {
                0
            };
            ensure!(
                state.params.len() == expected && state.velocity.len() == expected,
                "--resume {}: rank {rank}'s checkpoint holds {} parameters, expected {expected}",
                dir.display(),
                state.params.len()
            );
            ensure!(
                state.step < total_steps,
                "--resume {}: the checkpoint is at step {}, but this run has only {total_steps} steps (raise --steps or --epochs)",
                dir.display(),
                state.step
            );
            Some(state)
        }
        None => None,
    };
    let exchange = Exchange::new(layout.clone(), drop, packet_elems);
    let exchange = match cfg.detection {
        Detection::Oracle => exchange,
        Detection::Deadline { timeout } => exchange.with_deadline(timeout),
    };
    if let TransportKind::Udp(opts) = cfg.transport {
        let packet = cfg.packet_bytes.unwrap_or(0);
        let bytes = udp::HEADER_BYTES + 4 * exchange.header_elems(true) + packet;
        ensure!(
            bytes <= opts.max_datagram(),
            "--transport udp: packets of {packet} bytes need datagrams of {bytes} bytes (headers included), over the {} bytes that fit --udp-mtu {}; use a smaller --packet-bytes",
            opts.max_datagram(),
            opts.mtu
        );
    }
    let setup = Setup {
        info,
        model,
        layout,
        link_rates_text,
        steps_per_epoch,
        total_steps,
        worker,
        fingerprint,
        resume,
    };
    Ok((setup, exchange))
}

/// Test samples `part` of `parts` evaluates: every sample once, sizes differ by at most one.
fn balanced_range(count: usize, parts: usize, part: usize) -> std::ops::Range<usize> {
    part * count / parts..(part + 1) * count / parts
}

/// A binary started by another MPI's launcher runs as N one-rank jobs, silently; catch
/// that by comparing with the size the launcher announced.
fn check_launcher(size: usize) -> Result<()> {
    for var in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"] {
        if let Some(n) = std::env::var(var)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            if n != size {
                bail!("the launcher started {n} ranks ({var}) but MPI reports a world of {size}: rps was built against a different MPI than the mpirun that started it");
            }
        }
    }
    Ok(())
}

/// Per-step values each rank contributes; summed over ranks at every metrics flush.
mod field {
    pub const LOSS_SUM: usize = 0;
    pub const CORRECT: usize = 1;
    pub const COUNT: usize = 2;
    pub const SENT_UP: usize = 3;
    pub const DROPPED_UP: usize = 4;
    pub const SENT_DOWN: usize = 5;
    pub const DROPPED_DOWN: usize = 6;
    pub const BYTES: usize = 7;
    pub const COMPUTE_S: usize = 8;
    pub const COMM_S: usize = 9;
    pub const WALL_S: usize = 10;
    pub const PACKETS_UP: usize = 11;
    pub const PACKETS_DROPPED_UP: usize = 12;
    pub const PACKETS_DOWN: usize = 13;
    pub const PACKETS_DROPPED_DOWN: usize = 14;
    pub const RECEIVED_UP: usize = 15;
    pub const RECEIVED_DOWN: usize = 16;
    pub const LATE: usize = 17;
    pub const PACKETS_RECEIVED_UP: usize = 18;
    pub const PACKETS_RECEIVED_DOWN: usize = 19;
    pub const REJECTED: usize = 20;
    pub const N: usize = 21;
}

/// Runs training on every rank of `t`.
///
/// # Errors
/// [`Failure::Agreed`] for anything detected before training starts (bad dataset,
/// unwritable output, impossible roles); [`Failure::Local`] for a failure on this rank
/// during training.
///
/// `stop` is raised (by a signal handler) to ask for a clean stop; all ranks then stop
/// at the same step boundary.
pub fn train<T: Transport + ?Sized>(
    t: &T,
    cfg: &TrainConfig,
    stop: &AtomicBool,
) -> Result<Summary, Failure> {
    let (rank, size) = (t.rank(), t.size());
    let (setup, exchange) = agree(t, prepare(rank, size, cfg)).map_err(Failure::Agreed)?;
    // Every rank must resume from the same step (a shared checkpoint directory).
    let step = setup.resume.as_ref().map_or(0, |r| r.step);
    let steps: Vec<u64> = t
        .allgather_bytes(&step.to_le_bytes())
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    let same = match steps.iter().all(|&s| s == step) {
        true => Ok(()),
        false => Err(anyhow::anyhow!("--resume: ranks found different newest checkpoints (steps {steps:?}); is the directory shared by all ranks?")),
    };
    agree(t, same).map_err(Failure::Agreed)?;
    let hosts = gather_hosts(t);
    let writer = if rank == 0 {
        open_outputs(t, cfg, &setup, &exchange, &hosts).map(Some)
    } else {
        Ok(None)
    };
    let writer = agree(t, writer).map_err(Failure::Agreed)?;
    let mut run = Run::new(t, cfg, setup, exchange, writer, stop).map_err(Failure::Local)?;
    run.steps().map_err(|e| match e.downcast::<Failure>() {
        Ok(f) => f,
        Err(e) => match e.downcast::<Disagreement>() {
            Ok(d) => Failure::Agreed(d),
            Err(e) => Failure::Local(e),
        },
    })
}

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

fn open_outputs<T: Transport + ?Sized>(
    t: &T,
    cfg: &TrainConfig,
    s: &Setup,
    exchange: &Exchange,
    hosts: &[String],
) -> Result<MetricsWriter> {
    if let (Some(dir), None) = (&cfg.checkpoint_dir, &cfg.resume) {
        // A fresh run must not mix its checkpoints with an earlier run's: a later
        // --resume would pick whichever is newest.
        let old = checkpoint::all_steps(dir)?;
        if !old.is_empty() {
            ensure!(
                cfg.force,
                "--checkpoint-dir {} already holds checkpoints of a run (continue it with --resume {}, or use --force to delete them and start over)",
                dir.display(),
                dir.display()
            );
            checkpoint::remove_all(dir, &old)?;
        }
    }
    if let Some(p) = &cfg.save_model {
        ensure!(
            cfg.force || !p.exists(),
            "--save-model {} already exists (use --force to overwrite it)",
            p.display()
        );
    }
    let (mode, colocated) = match cfg.mode {
        Mode::Dedicated { .. } => ("dedicated", 0),
        Mode::Colocated => ("colocated", 1),
    };
    let workers = s.layout.workers();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let attrs: Vec<(&str, AttrValue)> = vec![
        ("rps_version", env!("CARGO_PKG_VERSION").into()),
        ("command_line", cfg.command_line.clone().into()),
        ("status", "running".into()),
        ("started_at_unix", started.into()),
        ("algorithm", cfg.algorithm.name().into()),
        ("mode", mode.into()),
        ("colocated", (colocated as i64).into()),
        ("world_size", (t.size() as i64).into()),
        ("servers", (s.layout.num_servers() as i64).into()),
        ("workers", (s.layout.num_workers() as i64).into()),
        (
            "worker_ranks",
            format!("{}..{}", workers.start, workers.end).into(),
        ),
        ("blocks", (s.layout.num_blocks() as i64).into()),
        ("drop_rate", cfg.drop_rate.into()),
        ("drop_model", cfg.drop.name().into()),
        (
            "drop_model_description",
            exchange.drop_model().describe().into(),
        ),
        (
            "packet_bytes",
            (cfg.packet_bytes.unwrap_or(0) as i64).into(),
        ),
        ("trace_recorded", (cfg.record_trace as i64).into()),
        (
            "transport",
            match cfg.transport {
                TransportKind::Mpi => "mpi",
                TransportKind::Udp(_) => "udp",
            }
            .into(),
        ),
        (
            "detection",
            match cfg.detection {
                Detection::Oracle => "oracle",
                Detection::Deadline { .. } => "deadline",
            }
            .into(),
        ),
        (
            "recv_timeout_ms",
            match cfg.detection {
                Detection::Oracle => 0i64,
                Detection::Deadline { timeout } => timeout.as_millis() as i64,
            }
            .into(),
        ),
        ("seed", (cfg.seed as i64).into()),
        ("batch_size", (cfg.batch_size as i64).into()),
        ("lr", (cfg.lr as f64).into()),
        ("momentum", (cfg.momentum as f64).into()),
        ("weight_decay", (cfg.weight_decay as f64).into()),
        ("steps", (s.total_steps as i64).into()),
        ("steps_per_epoch", (s.steps_per_epoch as i64).into()),
        (
            "epochs",
            (s.total_steps as f64 / s.steps_per_epoch as f64).into(),
        ),
        ("eval_every", (cfg.eval_every as i64).into()),
        ("model", cfg.model.name().into()),
        ("augment", (cfg.augment as i64).into()),
        ("num_params", (s.model.num_params() as i64).into()),
        ("dataset", cfg.dataset.display().to_string().into()),
        ("dataset_source", s.info.source.clone().into()),
        ("train_samples", (s.info.train.count as i64).into()),
        ("test_samples", (s.info.test.count as i64).into()),
        ("mpi_library_version", t.library_version().into()),
        ("hosts", hosts.join(",").into()),
    ];
    let mut attrs = attrs;
    match &cfg.drop {
        DropSpec::Bernoulli { up, down } | DropSpec::PerLink { up, down, .. } => {
            attrs.push(("drop_up", (*up).into()));
            attrs.push(("drop_down", (*down).into()));
        }
        DropSpec::GilbertElliott(g) => {
            attrs.push(("ge_p", g.p.into()));
            attrs.push(("ge_r", g.r.into()));
            attrs.push(("ge_bad_loss", g.bad_loss.into()));
            attrs.push(("ge_good_loss", g.good_loss.into()));
            attrs.push(("ge_mean_loss", g.mean_loss().into()));
            attrs.push(("ge_mean_burst", g.mean_burst().into()));
        }
        DropSpec::Replay { file } => {
            attrs.push(("replayed_trace", file.display().to_string().into()))
        }
    }
    if let (DropSpec::PerLink { file, .. }, Some(text)) = (&cfg.drop, &s.link_rates_text) {
        attrs.push(("link_rates_file", file.display().to_string().into()));
        attrs.push(("link_rates", text.clone().into()));
    }
    match &s.resume {
        Some(state) => {
            let resumed = format!("{}", state.step);
            let attrs = [
                ("status", "running".into()),
                ("steps", (s.total_steps as i64).into()),
                (
                    "epochs",
                    (s.total_steps as f64 / s.steps_per_epoch as f64).into(),
                ),
                ("resumed_at_step", resumed.into()),
                ("command_line", cfg.command_line.clone().into()),
            ];
            MetricsWriter::reopen(&cfg.metrics, state.metrics_rows, &attrs)
        }
        None => MetricsWriter::create(&cfg.metrics, cfg.force, &attrs),
    }
}

/// The state of one rank during the step loop.
struct Run<'a, T: Transport + ?Sized> {
    t: &'a T,
    cfg: &'a TrainConfig,
    s: Setup,
    writer: Option<MetricsWriter>,
    exchange: Exchange,
    /// This rank's replica (empty on a pure server).
    params: Vec<f32>,
    grads: Vec<f32>,
    sgd: Sgd,
    /// The average of the worker replicas (evaluation, all-reduce baseline).
    average: Vec<f32>,
    /// Per-step contributions not yet reduced, `field::N` per step.
    pending: Vec<f64>,
    images: Vec<f32>,
    labels: Vec<usize>,
    order: Vec<usize>,
    /// Rank 0 with --record-trace: drop decisions not yet written.
    trace: Option<Vec<TraceRecord>>,
    start: Instant,
    dropped: u64,
    attempted: u64,
    /// First step to run (after a resumed checkpoint).
    first_step: u64,
    stop: &'a AtomicBool,
    /// The transport's count of refused datagrams at the last step.
    rejected: u64,
}

impl<'a, T: Transport + ?Sized> Run<'a, T> {
    fn new(
        t: &'a T,
        cfg: &'a TrainConfig,
        mut s: Setup,
        mut exchange: Exchange,
        writer: Option<MetricsWriter>,
        stop: &'a AtomicBool,
    ) -> Result<Self> {
        let d = s.model.num_params();
        let trace = (cfg.record_trace && writer.is_some()).then(Vec::new);
        let replica = if s.worker.is_some() { d } else { 0 };
        let mut params = if replica > 0 {
            s.model.init_params(cfg.seed)
        } else {
            Vec::new()
        };
        let mut sgd = Sgd::new(replica, cfg.lr, cfg.momentum, cfg.weight_decay);
        if replica > 0 {
            // Batch-norm running statistics are exchanged, never trained.
            sgd.set_trainable(s.model.trainable());
        }
        let (mut first_step, mut totals) = (0, [0, 0]);
        if let Some(state) = s.resume.take() {
            params = state.params;
            sgd.velocity_mut().copy_from_slice(&state.velocity);
            exchange.set_link_state(&state.links)?;
            first_step = state.step;
            totals = state.totals;
        }
        Ok(Run {
            t,
            cfg,
            exchange,
            params,
            grads: vec![0.0; replica],
            sgd,
            average: vec![0.0; d],
            pending: Vec::new(),
            images: Vec::new(),
            labels: Vec::new(),
            order: Vec::new(),
            trace,
            start: Instant::now(),
            dropped: totals[0],
            attempted: totals[1],
            first_step,
            stop,
            rejected: t.rejected(),
            s,
            writer,
        })
    }

    fn steps(&mut self) -> Result<Summary> {
        let total = self.s.total_steps;
        if self.t.rank() == 0 {
            info!(
                "{} {} workers, {} servers ({}), {} steps ({} per epoch), batch {} per worker, drop rate {}, {} parameters in {} blocks",
                self.cfg.algorithm.name(),
                self.s.layout.num_workers(),
                self.s.layout.num_servers(),
                if self.cfg.mode == Mode::Colocated { "co-located" } else { "dedicated" },
                total,
                self.s.steps_per_epoch,
                self.cfg.batch_size,
                self.cfg.drop_rate,
                self.s.model.num_params(),
                self.s.layout.num_blocks()
            );
        }
        self.start = Instant::now();
        let mut last = EvalRecord::default();
        if self.first_step > 0 && self.t.rank() == 0 {
            info!("resuming after step {}", self.first_step);
        }
        for step in self.first_step..total {
            let mut rec = [0f64; field::N];
            self.local_step(step, &mut rec)?;
            let t0 = Instant::now();
            self.communicate(step, &mut rec)?;
            rec[field::COMM_S] = t0.elapsed().as_secs_f64();
            if self.t.rank() == 0 {
                rec[field::WALL_S] = self.start.elapsed().as_secs_f64();
            }
            self.pending.extend_from_slice(&rec);
            let done = step + 1;
            let eval_due =
                done == total || (self.cfg.eval_every > 0 && done % self.cfg.eval_every == 0);
            let checkpoint_due =
                done < total && self.cfg.checkpoint_every.is_some_and(|k| done % k == 0);
            let sync_point = eval_due || checkpoint_due;
            // No message may still be in flight when a collective starts: with deadline
            // detection ranks drain stragglers first, and agree on stopping only where
            // they synchronise anyway (oracle exchanges leave nothing in flight).
            if sync_point {
                let late = self.exchange.quiesce(self.t) as f64;
                let n = self.pending.len();
                self.pending[n - field::N + field::LATE] += late;
            }
            let stop = (sync_point || !self.exchange.uses_deadline()) && self.stop_requested();
            if sync_point || stop {
                let rows = self.flush_steps(done)?;
                if eval_due {
                    last = self.evaluate(done)?;
                    self.report(&rows, &last)?;
                } else if let Some(w) = &self.writer {
                    w.flush()?;
                }
            }
            if checkpoint_due || (stop && self.cfg.checkpoint_dir.is_some()) {
                self.checkpoint(done)?;
            }
            if stop && done < total {
                return Err(self.interrupted(done)?.into());
            }
        }
        self.finish(last)
    }

    /// Whether any rank was told to stop (collective).
    fn stop_requested(&self) -> bool {
        let mut flag = [f64::from(u8::from(self.stop.load(Ordering::Relaxed)))];
        self.t.allreduce_sum_f64(&mut flag);
        flag[0] > 0.0
    }

    /// Every rank writes its state after `done` steps; once all have, rank 0 marks the
    /// checkpoint complete. Collective.
    fn checkpoint(&mut self, done: u64) -> Result<()> {
        let Some(dir) = self.cfg.checkpoint_dir.clone() else {
            return Ok(());
        };
        let rows = match &self.writer {
            Some(w) => w.rows()?,
            None => [0; 3],
        };
        let state = RankState {
            step: done,
            params: self.params.clone(),
            velocity: self.sgd.velocity().to_vec(),
            links: self.exchange.link_state(),
            metrics_rows: rows,
            totals: [self.dropped, self.attempted],
        };
        let written = checkpoint::write_rank(&dir, self.t.rank(), &self.s.fingerprint, &state);
        agree(self.t, written)?;
        if self.t.rank() == 0 {
            checkpoint::mark_complete(&dir, done, self.t.size(), KEEP_CHECKPOINTS)?;
            info!(
                "checkpoint after step {done} in {}",
                checkpoint::step_dir(&dir, done).display()
            );
        }
        self.t.barrier();
        Ok(())
    }

    /// Closes the metrics as interrupted and reports where to resume from.
    fn interrupted(&mut self, done: u64) -> Result<Failure> {
        if let Some(w) = self.writer.take() {
            w.set_attr("status", &"interrupted".into())?;
            w.set_attr("steps_completed", &(done as i64).into())?;
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

    /// Worker part of a step: minibatch, forward, backward, optimizer update.
    fn local_step(&mut self, step: u64, rec: &mut [f64; field::N]) -> Result<()> {
        let Some((w, shard, _)) = &self.s.worker else {
            return Ok(());
        };
        let t0 = Instant::now();
        let spe = self.s.steps_per_epoch;
        let (epoch, j) = (step / spe, (step % spe) as usize);
        if j == 0 || self.order.is_empty() {
            self.order = epoch_order(self.cfg.seed, *w, epoch, shard.len());
        }
        let b = self.cfg.batch_size;
        // Augmentation draws from (seed, worker, step), so every run is reproducible.
        let augment = self
            .cfg
            .augment
            .then(|| hash_words(&[self.cfg.seed, *w as u64, step, 0x4155_4731]));
        shard.fill_batch_augmented(
            &self.order[j * b..(j + 1) * b],
            &mut self.images,
            &mut self.labels,
            augment,
        );
        let i = shard.info;
        let view = ArrayView4::from_shape((b, i.channels, i.height, i.width), &self.images)?;
        let stats =
            self.s
                .model
                .train_batch(&mut self.params, &mut self.grads, view, &self.labels)?;
        self.sgd.step(&mut self.params, &self.grads);
        rec[field::LOSS_SUM] = stats.loss_sum;
        rec[field::CORRECT] = stats.correct as f64;
        rec[field::COUNT] = stats.count as f64;
        rec[field::COMPUTE_S] = t0.elapsed().as_secs_f64();
        Ok(())
    }

    /// The exchange of a step: RPS over the lossy network, or the reliable all-reduce.
    fn communicate(&mut self, step: u64, rec: &mut [f64; field::N]) -> Result<()> {
        match self.cfg.algorithm {
            Algorithm::Rps => {
                let c = self.exchange.step(self.t, step, &mut self.params)?;
                rec[field::SENT_UP] = c.sent_up as f64;
                rec[field::DROPPED_UP] = c.dropped_up as f64;
                rec[field::SENT_DOWN] = c.sent_down as f64;
                rec[field::DROPPED_DOWN] = c.dropped_down as f64;
                rec[field::BYTES] = c.bytes_sent as f64;
                rec[field::PACKETS_UP] = c.packets_up as f64;
                rec[field::PACKETS_DROPPED_UP] = c.packets_dropped_up as f64;
                rec[field::PACKETS_DOWN] = c.packets_down as f64;
                rec[field::PACKETS_DROPPED_DOWN] = c.packets_dropped_down as f64;
                rec[field::RECEIVED_UP] = c.received_up as f64;
                rec[field::RECEIVED_DOWN] = c.received_down as f64;
                rec[field::LATE] = c.late as f64;
                rec[field::PACKETS_RECEIVED_UP] = c.packets_received_up as f64;
                rec[field::PACKETS_RECEIVED_DOWN] = c.packets_received_down as f64;
                let rejected = self.t.rejected();
                rec[field::REJECTED] = (c.rejected + rejected - self.rejected) as f64;
                self.rejected = rejected;
                if let Some(trace) = &mut self.trace {
                    self.exchange.trace_step(step, trace);
                }
            }
            Algorithm::Allreduce => {
                self.average_replicas();
                if !self.params.is_empty() {
                    self.params.copy_from_slice(&self.average);
                }
            }
        }
        Ok(())
    }

    /// Sets `self.average` to the mean of the worker replicas (pure servers add zeros).
    fn average_replicas(&mut self) {
        if self.params.is_empty() {
            self.average.fill(0.0);
        } else {
            self.average.copy_from_slice(&self.params);
        }
        self.t.allreduce_sum_f32(&mut self.average);
        let scale = 1.0 / self.s.layout.num_workers() as f32;
        self.average.iter_mut().for_each(|x| *x *= scale);
    }

    /// Reduces the pending per-step records over ranks; rank 0 appends them to the file.
    fn flush_steps(&mut self, done: u64) -> Result<Vec<StepRecord>> {
        self.t.allreduce_sum_f64(&mut self.pending);
        let n = self.pending.len() / field::N;
        let size = self.t.size() as f64;
        let first = done - n as u64;
        let rows: Vec<StepRecord> = self
            .pending
            .chunks_exact(field::N)
            .enumerate()
            .map(|(k, r)| StepRecord {
                step: first + k as u64 + 1,
                loss: r[field::LOSS_SUM] / r[field::COUNT].max(1.0),
                accuracy: r[field::CORRECT] / r[field::COUNT].max(1.0),
                sent_up: r[field::SENT_UP] as u64,
                dropped_up: r[field::DROPPED_UP] as u64,
                sent_down: r[field::SENT_DOWN] as u64,
                dropped_down: r[field::DROPPED_DOWN] as u64,
                bytes_sent: r[field::BYTES] as u64,
                packets_up: r[field::PACKETS_UP] as u64,
                packets_dropped_up: r[field::PACKETS_DROPPED_UP] as u64,
                packets_down: r[field::PACKETS_DOWN] as u64,
                packets_dropped_down: r[field::PACKETS_DROPPED_DOWN] as u64,
                missed_up: (r[field::SENT_UP] - r[field::RECEIVED_UP]).max(0.0) as u64,
                missed_down: (r[field::SENT_DOWN] - r[field::RECEIVED_DOWN]).max(0.0) as u64,
                late: r[field::LATE] as u64,
                packets_missed_up: (r[field::PACKETS_UP]
                    - r[field::PACKETS_DROPPED_UP]
                    - r[field::PACKETS_RECEIVED_UP])
                    .max(0.0) as u64,
                packets_missed_down: (r[field::PACKETS_DOWN]
                    - r[field::PACKETS_DROPPED_DOWN]
                    - r[field::PACKETS_RECEIVED_DOWN])
                    .max(0.0) as u64,
                rejected: r[field::REJECTED] as u64,
                compute_s: r[field::COMPUTE_S] / size,
                comm_s: r[field::COMM_S] / size,
                wall_s: r[field::WALL_S],
            })
            .collect();
        self.pending.clear();
        for r in &rows {
            // Packets: equal to messages unless blocks are cut into packets.
            self.dropped += r.packets_dropped_up + r.packets_dropped_down;
            self.attempted += r.packets_up + r.packets_down;
        }
        if let Some(w) = &self.writer {
            w.append_steps(&rows)?;
            if let Some(trace) = &mut self.trace {
                w.append_trace(trace)?;
                trace.clear();
            }
        }
        Ok(rows)
    }

    /// Evaluates the average of the worker replicas on the test set, and the consensus
    /// distance. Uses reliable collectives: measurement, not training traffic.
    fn evaluate(&mut self, done: u64) -> Result<EvalRecord> {
        self.average_replicas();
        // [consensus sum, test loss sum, correct, count]
        let mut stats = [0f64; 4];
        if let Some((_, _, test)) = &self.s.worker {
            stats[0] = self
                .params
                .iter()
                .zip(&self.average)
                .map(|(&x, &a)| ((x - a) as f64).powi(2))
                .sum();
            let i = test.info;
            let indices: Vec<usize> = (0..test.len()).collect();
            for chunk in indices.chunks(EVAL_BATCH) {
                test.fill_batch(chunk, &mut self.images, &mut self.labels);
                let view = ArrayView4::from_shape(
                    (chunk.len(), i.channels, i.height, i.width),
                    &self.images,
                )?;
                let b = self.s.model.eval_batch(&self.average, view, &self.labels)?;
                stats[1] += b.loss_sum;
                stats[2] += b.correct as f64;
                stats[3] += b.count as f64;
            }
        }
        self.t.allreduce_sum_f64(&mut stats);
        Ok(EvalRecord {
            step: done,
            consensus_distance: stats[0] / self.s.layout.num_workers() as f64,
            test_loss: stats[1] / stats[3].max(1.0),
            test_accuracy: stats[2] / stats[3].max(1.0),
            wall_s: self.start.elapsed().as_secs_f64(),
        })
    }

    /// Rank 0: writes the evaluation, flushes the file, logs a progress line.
    fn report(&mut self, rows: &[StepRecord], e: &EvalRecord) -> Result<()> {
        let Some(w) = &self.writer else {
            return Ok(());
        };
        w.append_eval(e)?;
        w.flush()?;
        let n = rows.len().max(1) as f64;
        let loss = rows.iter().map(|r| r.loss).sum::<f64>() / n;
        let acc = rows.iter().map(|r| r.accuracy).sum::<f64>() / n;
        info!(
            "step {}/{} (epoch {:.2}): train loss {:.4} acc {:.3} | test loss {:.4} acc {:.4} | consensus {:.3e} | dropped {}/{} {} | {:.1} s",
            e.step,
            self.s.total_steps,
            e.step as f64 / self.s.steps_per_epoch as f64,
            loss,
            acc,
            e.test_loss,
            e.test_accuracy,
            e.consensus_distance,
            self.dropped,
            self.attempted,
            unit(self.cfg),
            e.wall_s
        );
        Ok(())
    }

    /// Sums every rank's per-link counters into servers × workers matrices (row: server
    /// index, column: worker index), per direction: [sent up, dropped up, received up,
    /// sent down, dropped down, received down]. Collective.
    fn link_matrices(&self) -> [ndarray::Array2<u64>; 6] {
        let layout = &self.s.layout;
        let (size, servers, workers) = (layout.size(), layout.num_servers(), layout.workers());
        let (up, down) = self.exchange.link_counts();
        let mut flat = Vec::with_capacity(6 * servers * workers.len());
        for (counts, upward) in [
            (&up.sent, true),
            (&up.dropped, true),
            (&up.received, true),
            (&down.sent, false),
            (&down.dropped, false),
            (&down.received, false),
        ] {
            for s in 0..servers {
                for w in workers.clone() {
                    let index = if upward { w * size + s } else { s * size + w };
                    flat.push(counts[index] as f64);
                }
            }
        }
        self.t.allreduce_sum_f64(&mut flat);
        let n = servers * workers.len();
        std::array::from_fn(|i| {
            ndarray::Array2::from_shape_fn((servers, workers.len()), |(s, w)| {
                flat[i * n + s * workers.len() + w] as u64
            })
        })
    }

    fn finish(&mut self, last: EvalRecord) -> Result<Summary> {
        let wall_s = self.start.elapsed().as_secs_f64();
        let links = self.link_matrices();
        let peak_rss = max_over_ranks(self.t, crate::bench::peak_rss_bytes().unwrap_or(0));
        if let Some(w) = self.writer.take() {
            w.set_attr("peak_rss_bytes_max", &(peak_rss as i64).into())?;
            let workers = self.s.layout.workers();
            let cols = format!("worker ranks {}..{}", workers.start, workers.end);
            let rows = format!("server ranks 0..{}", self.s.layout.num_servers());
            let [sent_up, dropped_up, received_up, sent_down, dropped_down, received_down] = links;
            let missed_up = &sent_up - &received_up;
            let missed_down = &sent_down - &received_down;
            for (name, m) in [
                ("links/sent_up", &sent_up),
                ("links/dropped_up", &dropped_up),
                ("links/missed_up", &missed_up),
                ("links/sent_down", &sent_down),
                ("links/dropped_down", &dropped_down),
                ("links/missed_down", &missed_down),
            ] {
                w.write_matrix(name, m, &rows, &cols)?;
            }
            if let Some(p) = &self.cfg.save_model {
                save_model(p, &*self.s.model, &self.average)?;
                w.set_attr("saved_model", &p.display().to_string().into())?;
            }
            for (name, v) in [
                ("final_test_accuracy", last.test_accuracy),
                ("final_test_loss", last.test_loss),
                ("final_consensus_distance", last.consensus_distance),
                ("wall_time_s", wall_s),
            ] {
                w.set_attr(name, &v.into())?;
            }
            w.set_attr("steps_completed", &(last.step as i64).into())?;
            w.set_attr("status", &"completed".into())?;
            w.close()?;
        }
        debug!("rank {} finished", self.t.rank());
        Ok(Summary {
            steps: last.step,
            test_loss: last.test_loss,
            test_accuracy: last.test_accuracy,
            consensus_distance: last.consensus_distance,
            wall_s,
            dropped: self.dropped,
            attempted: self.attempted,
        })
    }
}

/// What drop counts count: packets with `--packet-bytes`, else whole messages.
pub fn unit(cfg: &TrainConfig) -> &'static str {
    if cfg.packet_bytes.is_some() {
        "packets"
    } else {
        "messages"
    }
}

/// The largest of every rank's `value` (a collective: all ranks call it).
fn max_over_ranks<T: Transport + ?Sized>(t: &T, value: u64) -> u64 {
    t.allgather_bytes(&value.to_le_bytes())
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .max()
        .unwrap_or(0)
}

/// Writes the flat parameter vector and its layout (one attribute per tensor: offset
/// and length) to an HDF5 file.
fn save_model(path: &Path, model: &dyn Model, params: &[f32]) -> Result<()> {
    let ctx = || format!("--save-model {}: cannot write the model", path.display());
    let f = hdf5::File::create(path).with_context(ctx)?;
    let ds = f
        .new_dataset_builder()
        .with_data(params)
        .create("params")
        .with_context(ctx)?;
    for (name, range) in model.param_layout() {
        ds.new_attr::<u64>()
            .shape(2)
            .create(name.as_str())
            .and_then(|a| a.write(&[range.start as u64, range.len() as u64]))
            .with_context(ctx)?;
    }
    f.close().with_context(ctx)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_ranges_cover_everything() {
        let r: Vec<_> = (0..3).map(|p| balanced_range(10, 3, p)).collect();
        assert_eq!(r, vec![0..3, 3..6, 6..10]);
    }
}
