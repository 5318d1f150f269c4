//! The validated configuration of a training run.
//!
//! Parse, then validate, then build: `cli` parses the flags and `cli::validate` checks
//! them and builds a [`TrainConfig`], the only form the rest of the program sees (no
//! intermediate copy). This module knows nothing of the command line: it is the
//! vocabulary of a run, below every module that runs one. Every rank validates the same
//! flags the same way, so a bad input fails on all ranks at once with the same message
//! ([`ConfigError`] names the flag).

use std::path::PathBuf;

use thiserror::Error;

use crate::comm::udp::{UdpOptions, HEADER_BYTES};
pub use crate::drop::DropSpec;
use crate::exchange::Mode;
use crate::nn::ModelKind;

/// The longest receive deadline accepted, in milliseconds.
pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// Which training algorithm runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Robust Parameter Server over a lossy exchange (the paper's algorithm).
    Rps,
    /// Reliable model averaging with MPI_Allreduce after every local step (the baseline).
    Allreduce,
}

impl Algorithm {
    /// The name on the command line and in metrics files.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Rps => "rps",
            Algorithm::Allreduce => "allreduce",
        }
    }
}

/// How long to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duration {
    Epochs(u64),
    Steps(u64),
}

/// Everything a training run needs, validated.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub dataset: PathBuf,
    pub metrics: PathBuf,
    /// Where rank 0 writes the final averaged model, if anywhere.
    pub save_model: Option<PathBuf>,
    pub mode: Mode,
    pub algorithm: Algorithm,
    /// `--drop-rate` as given (0 when absent); the model actually used is `drop`.
    pub drop_rate: f64,
    pub drop: DropSpec,
    /// Bytes per packet when blocks are cut into independently dropped packets.
    pub packet_bytes: Option<usize>,
    /// Bytes per chunk of the pipelined exchange (`None`: one chunk per message, not
    /// pipelined); changes the speed, never the bits.
    pub chunk_bytes: Option<usize>,
    /// Record every drop decision in the metrics file.
    pub record_trace: bool,
    pub detection: Detection,
    pub transport: TransportKind,
    pub duration: Duration,
    pub batch_size: usize,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    /// `--label-skew`: the Dirichlet concentration of the workers' label mixes (`None`:
    /// contiguous shards).
    pub label_skew: Option<f64>,
    pub seed: u64,
    /// Evaluate every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Replace existing output files.
    pub force: bool,
    /// Write a checkpoint every this many steps (into `checkpoint_dir`).
    pub checkpoint_every: Option<u64>,
    /// Where checkpoints go; also written on SIGTERM/SIGINT/SIGUSR1 when set.
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue from the newest complete checkpoint in this directory.
    pub resume: Option<PathBuf>,
    /// The command line, recorded in the metrics file.
    pub command_line: String,
    /// The job file the flags came from (`--job`), an input no output may replace.
    pub job: Option<PathBuf>,
    /// The network every worker trains.
    pub model: ModelKind,
    /// Random crop (padding 4) and horizontal flip of training batches.
    pub augment: bool,
    /// The learning-rate schedule as given; the driver resolves it for the run's length.
    pub lr_schedule: crate::schedule::LrSchedule,
    pub lr_milestones: Vec<f64>,
    pub warmup_steps: u64,
    /// Measure /diag every this many steps (0: never).
    pub diag_every: u64,
    /// Warn, and end the job, after this long without progress (`None`: never).
    pub stall_warn: Option<std::time::Duration>,
    pub stall_abort: Option<std::time::Duration>,
}

/// How receivers learn that a message was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    /// Receivers evaluate the drop model and wait only for what was sent (reproducible).
    Oracle,
    /// Receivers wait until a deadline and treat what has not arrived as lost.
    Deadline { timeout: std::time::Duration },
}

impl Detection {
    /// The name on the command line and in metrics files.
    pub fn name(self) -> &'static str {
        match self {
            Detection::Oracle => "oracle",
            Detection::Deadline { .. } => "deadline",
        }
    }

    /// The receive deadline in milliseconds (0 with oracle detection).
    pub fn timeout_ms(self) -> u64 {
        match self {
            Detection::Oracle => 0,
            Detection::Deadline { timeout } => timeout.as_millis() as u64,
        }
    }
}

/// What carries the RPS exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// MPI point-to-point (reliable; drops are simulated).
    Mpi,
    /// UDP datagrams, one per packet (unreliable; needs deadline detection).
    Udp(UdpOptions),
}

impl TransportKind {
    /// The name on the command line and in metrics files.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Mpi => "mpi",
            TransportKind::Udp(_) => "udp",
        }
    }
}

/// The largest packet (bytes of model) one datagram carries with `--transport udp`:
/// the MTU less the IP, UDP, datagram and message headers, in whole `f32`s. The
/// default of `--packet-bytes` with UDP (1396 bytes for an MTU of 1500).
pub fn udp_packet_bytes(opts: &UdpOptions) -> usize {
    opts.max_datagram()
        .saturating_sub(HEADER_BYTES + crate::exchange::DATAGRAM_HEADER_BYTES)
        / 4
        * 4
}

#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    #[error("--{flag} {value} is outside [0, 1]")]
    Probability { flag: &'static str, value: f64 },
    #[error("drops (--{0}) apply to --algorithm rps only; --algorithm allreduce is the reliable baseline")]
    DropWithAllreduce(&'static str),
    #[error(
        "--{0} cannot be combined with --drop-model gilbert-elliott (its loss comes from --ge-*)"
    )]
    GilbertElliottWith(&'static str),
    #[error(
        "--replay-trace takes every decision from the trace; it cannot be combined with --{0}"
    )]
    ReplayWith(&'static str),
    #[error("--packet-bytes {0} must be a positive multiple of 4 (one f32 element)")]
    PacketBytes(usize),
    #[error("--chunk-bytes {0} must be a positive multiple of 4 (one f32 element)")]
    ChunkBytes(usize),
    #[error(
        "--chunk-bytes applies to --detect oracle only (deadline detection does not pipeline)"
    )]
    ChunkWithDeadline,
    #[error("--recv-timeout-ms {0} must be from 1 to 60000 (a minute): a deadline is a bound on one exchange phase")]
    Timeout(u64),
    #[error("--transport udp needs --detect deadline: a receiver cannot know what a real network lost, it can only stop waiting")]
    UdpWithoutDeadline,
    #[error("--{0} applies to --transport udp only")]
    UdpFlagWithoutUdp(&'static str),
    #[error("--udp-mtu {0} must be from 576 to 9216 bytes")]
    UdpMtu(usize),
    #[error("--loss-target {0} must be a fraction above 0 and below 0.5 (e.g. 0.05): the loss the job may see")]
    LossTarget(f64),
    #[error("--udp-link-rate applies with --loss-target only (without a budget nothing is paced)")]
    LinkRateWithoutBudget,
    #[error("--packet-bytes {bytes} is too large for --transport udp: at most {max} bytes of model fit in one datagram (raise --udp-mtu if the network has jumbo frames)")]
    UdpPacketBytes { bytes: usize, max: usize },
    #[error("--{0} applies to --lr-schedule step only")]
    LrFlag(&'static str),
    #[error("--lr-milestones: {0}")]
    LrMilestones(String),
    #[error("--diag-every measures between exchanges with reliable collectives, which needs --detect oracle (with deadlines, messages may still be in flight)")]
    DiagWithDeadline,
    #[error("--checkpoint-every needs --checkpoint-dir (or --resume DIR)")]
    CheckpointWithoutDir,
    #[error("--checkpoint-every must be at least 1")]
    CheckpointEvery,
    #[error("the job asks for {expected} ranks (--ranks / a job file's ranks), but {found} were started (mpirun -n {expected})")]
    Ranks { expected: usize, found: usize },
    #[error("--batch-size must be at least 1")]
    BatchSize,
    #[error("--{flag} must be at least 1")]
    ZeroDuration { flag: &'static str },
    #[error("--epochs and --steps are mutually exclusive")]
    BothDurations,
    #[error("--lr {0} must be a finite number > 0")]
    LearningRate(f32),
    #[error("--momentum {0} must be in [0, 1)")]
    Momentum(f32),
    #[error("--weight-decay {0} must be a finite number ≥ 0")]
    WeightDecay(f32),
    #[error("--label-skew {0} must be a finite number > 0 (the Dirichlet concentration)")]
    LabelSkew(f64),
    #[error("--servers and --colocated are mutually exclusive")]
    ServersAndColocated,
    #[error("--servers must be at least 1 (or use --colocated)")]
    NoServers,
    #[error("--servers {servers} leaves no worker in a job of {size} rank(s): start at least {need} ranks (mpirun -n {need}) or use fewer servers (at most {})", size.saturating_sub(1))]
    NoWorkers {
        servers: usize,
        size: usize,
        need: usize,
    },
    #[error("--metrics {0} names no file")]
    MetricsPath(PathBuf),
}
impl TrainConfig {
    /// The learning-rate schedule of a run of `total` steps.
    pub fn lr(&self, total: u64) -> crate::schedule::Lr {
        use crate::schedule::{resolve_milestones, Lr, LrSchedule};
        let schedule = match &self.lr_schedule {
            LrSchedule::Step { gamma, .. } => LrSchedule::Step {
                milestones: resolve_milestones(&self.lr_milestones, total),
                gamma: *gamma,
            },
            other => other.clone(),
        };
        Lr {
            base: self.lr,
            schedule,
            warmup: self.warmup_steps,
            total,
        }
    }

    /// What drop counts count: packets with `--packet-bytes`, else whole messages.
    pub fn drop_unit(&self) -> &'static str {
        if self.packet_bytes.is_some() {
            "packets"
        } else {
            "messages"
        }
    }
}
