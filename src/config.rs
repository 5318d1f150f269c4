//! The validated configuration of a training run.
//!
//! Parse, then validate, then build: `cli.rs` parses the flags into [`TrainFlags`], and
//! [`TrainConfig::build`] checks them and builds the only form the rest of the program
//! sees (no intermediate copy). Every rank validates the same flags the same way, so a bad
//! input fails on all ranks at once with the same message.

use std::path::PathBuf;

use thiserror::Error;

use crate::cli::{DetectFlag, DropModelFlag, LrScheduleFlag, TrainFlags, TransportFlag};
use crate::comm::udp::rate::{Budget, DEFAULT_LINK_RATE};
use crate::comm::udp::{UdpOptions, DEFAULT_MTU, HEADER_BYTES, MAX_MTU};
pub use crate::drop::DropSpec;
use crate::drop::GeParams;
use crate::nn::ModelKind;
use crate::rps::Mode;

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
        .saturating_sub(HEADER_BYTES + crate::rps::exchange::DATAGRAM_HEADER_BYTES)
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
    /// Validates the parsed flags for a job of `world_size` ranks and builds the
    /// configuration.
    ///
    /// # Errors
    /// The first invalid or contradictory flag, named.
    pub fn build(
        f: &TrainFlags,
        world_size: usize,
        command_line: String,
    ) -> Result<Self, ConfigError> {
        let drop = drop_spec(f)?;
        if let Some(n) = f.packet_bytes {
            if n == 0 || n % 4 != 0 {
                return Err(ConfigError::PacketBytes(n));
            }
        }
        let detection = match f.detect {
            DetectFlag::Oracle => Detection::Oracle,
            DetectFlag::Deadline if !(1..=MAX_TIMEOUT_MS).contains(&f.recv_timeout_ms) => {
                return Err(ConfigError::Timeout(f.recv_timeout_ms))
            }
            DetectFlag::Deadline => Detection::Deadline {
                timeout: std::time::Duration::from_millis(f.recv_timeout_ms),
            },
        };
        let (transport, packet_bytes) = transport(f, detection)?;
        if f.diag_every > 0 && detection != Detection::Oracle {
            return Err(ConfigError::DiagWithDeadline);
        }
        if f.algorithm == Algorithm::Allreduce {
            check_allreduce(f, &drop)?;
        }
        let duration = duration(f)?;
        check_optimizer(f)?;
        let mode = mode(f, world_size)?;
        if let Some(expected) = f.ranks {
            if expected != world_size {
                return Err(ConfigError::Ranks {
                    expected,
                    found: world_size,
                });
            }
        }
        if f.checkpoint_every == Some(0) {
            return Err(ConfigError::CheckpointEvery);
        }
        // Resuming keeps checkpointing into the directory it resumed from by default.
        let checkpoint_dir = f.checkpoint_dir.clone().or_else(|| f.resume.clone());
        if f.checkpoint_every.is_some() && checkpoint_dir.is_none() {
            return Err(ConfigError::CheckpointWithoutDir);
        }
        if f.metrics.file_name().is_none() {
            return Err(ConfigError::MetricsPath(f.metrics.clone()));
        }
        Ok(TrainConfig {
            dataset: f.dataset.clone(),
            metrics: f.metrics.clone(),
            save_model: f.save_model.clone(),
            mode,
            algorithm: f.algorithm,
            drop_rate: f.drop_rate,
            drop,
            packet_bytes,
            record_trace: f.record_trace,
            detection,
            transport,
            duration,
            batch_size: f.batch_size,
            lr: f.lr,
            momentum: f.momentum,
            weight_decay: f.weight_decay,
            label_skew: f.label_skew,
            seed: f.seed,
            eval_every: f.eval_every,
            force: f.force,
            checkpoint_every: f.checkpoint_every,
            checkpoint_dir,
            resume: f.resume.clone(),
            command_line,
            job: f.job.clone(),
            model: f.model.into(),
            augment: f.augment,
            lr_schedule: lr_schedule(f)?,
            lr_milestones: f.lr_milestones.clone(),
            warmup_steps: f.warmup_steps,
            diag_every: f.diag_every,
            stall_warn: seconds(f.stall_warn),
            stall_abort: seconds(f.stall_abort),
        })
    }

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

/// The transport and, with UDP, the packet size (by default the largest that fits).
fn transport(
    f: &TrainFlags,
    detection: Detection,
) -> Result<(TransportKind, Option<usize>), ConfigError> {
    // Given explicitly, a flag counts even at its default value.
    let link_rate = f.udp_link_rate != DEFAULT_LINK_RATE || given(f, "udp_link_rate");
    let udp_flag = if f.udp_subnet.is_some() {
        Some("udp-subnet")
    } else if f.udp_port.is_some() {
        Some("udp-port")
    } else if f.udp_mtu != DEFAULT_MTU || given(f, "udp_mtu") {
        Some("udp-mtu")
    } else if f.loss_target.is_some() {
        Some("loss-target")
    } else if link_rate {
        Some("udp-link-rate")
    } else {
        None
    };
    match f.transport {
        TransportFlag::Mpi => match udp_flag {
            Some(flag) => Err(ConfigError::UdpFlagWithoutUdp(flag)),
            None => Ok((TransportKind::Mpi, f.packet_bytes)),
        },
        TransportFlag::Udp => {
            if link_rate && f.loss_target.is_none() {
                return Err(ConfigError::LinkRateWithoutBudget);
            }
            let budget = match f.loss_target {
                None => None,
                Some(t) if t > 0.0 && t < 0.5 => Some(Budget {
                    target_ppm: (t * 1e6).round() as u32,
                    link_rate: f.udp_link_rate,
                }),
                Some(t) => return Err(ConfigError::LossTarget(t)),
            };
            let opts = UdpOptions {
                subnet: f.udp_subnet,
                port_base: f.udp_port,
                mtu: f.udp_mtu,
                budget,
            };
            if !(576..=MAX_MTU).contains(&opts.mtu) {
                return Err(ConfigError::UdpMtu(opts.mtu));
            }
            if f.algorithm == Algorithm::Allreduce {
                return Err(ConfigError::DropWithAllreduce("transport udp"));
            }
            if detection == Detection::Oracle {
                return Err(ConfigError::UdpWithoutDeadline);
            }
            let max = udp_packet_bytes(&opts);
            let bytes = f.packet_bytes.unwrap_or(max);
            if bytes > max {
                return Err(ConfigError::UdpPacketBytes { bytes, max });
            }
            Ok((TransportKind::Udp(opts), Some(bytes)))
        }
    }
}

/// Whether the flag with clap id `id` was given (see [`TrainFlags::given`]).
fn given(f: &TrainFlags, id: &str) -> bool {
    f.given.iter().any(|g| g == id)
}

/// Flags that were given but that this run does not use, because the mode they belong to
/// is off, each as `--flag is ignored: it applies to MODE only`. They are warnings, not
/// errors: a job file may set them for the runs of a sweep that turn the mode on. (Flags
/// whose misuse the configuration refuses, such as the UDP ones, are not listed.)
pub fn ignored_flags(f: &TrainFlags) -> Vec<String> {
    let ge = f.drop_model == DropModelFlag::GilbertElliott;
    let rules = [
        (
            "lr_gamma",
            f.lr_schedule == LrScheduleFlag::Step,
            "--lr-schedule step",
        ),
        ("ge_p", ge, "--drop-model gilbert-elliott"),
        ("ge_r", ge, "--drop-model gilbert-elliott"),
        ("ge_bad_loss", ge, "--drop-model gilbert-elliott"),
        ("ge_good_loss", ge, "--drop-model gilbert-elliott"),
        (
            "recv_timeout_ms",
            f.detect == DetectFlag::Deadline,
            "--detect deadline",
        ),
    ];
    rules
        .iter()
        .filter(|(id, on, _)| !on && given(f, id))
        .map(|(id, _, needs)| {
            format!(
                "{} is ignored: it applies to {needs} only",
                crate::job::flag_name(id)
            )
        })
        .collect()
}

/// The schedule `--lr-schedule` names, its flags checked (milestones resolve to steps
/// once the run's length is known).
fn lr_schedule(f: &TrainFlags) -> Result<crate::schedule::LrSchedule, ConfigError> {
    use crate::schedule::LrSchedule;
    let step = f.lr_schedule == LrScheduleFlag::Step;
    if !step && !f.lr_milestones.is_empty() {
        return Err(ConfigError::LrFlag("lr-milestones"));
    }
    if step && f.lr_milestones.is_empty() {
        return Err(ConfigError::LrMilestones("give at least one".into()));
    }
    if let Some(m) = f
        .lr_milestones
        .iter()
        .find(|m| !(m.is_finite() && **m > 0.0))
    {
        return Err(ConfigError::LrMilestones(format!(
            "{m} is not a fraction in (0, 1) or a step number"
        )));
    }
    // Below 1 a milestone is a fraction of the run, from 1 on a step number: 1.5 would
    // silently become step 1 (resolve_milestones truncates).
    if let Some(m) = f
        .lr_milestones
        .iter()
        .find(|m| **m >= 1.0 && m.fract() != 0.0)
    {
        return Err(ConfigError::LrMilestones(format!(
            "{m} is neither a fraction of the run (below 1) nor a whole step number"
        )));
    }
    if !(f.lr_gamma.is_finite() && f.lr_gamma > 0.0) {
        return Err(ConfigError::LrMilestones(format!(
            "--lr-gamma {} must be > 0",
            f.lr_gamma
        )));
    }
    Ok(match f.lr_schedule {
        LrScheduleFlag::Constant => LrSchedule::Constant,
        LrScheduleFlag::Cosine => LrSchedule::Cosine,
        LrScheduleFlag::Step => LrSchedule::Step {
            milestones: Vec::new(),
            gamma: f.lr_gamma,
        },
    })
}

/// `s` seconds, or `None` for 0.
fn seconds(s: u64) -> Option<std::time::Duration> {
    (s > 0).then(|| std::time::Duration::from_secs(s))
}

/// How long to train: epochs or steps, never both, never zero.
fn duration(f: &TrainFlags) -> Result<Duration, ConfigError> {
    match (f.epochs, f.steps) {
        (Some(_), Some(_)) => Err(ConfigError::BothDurations),
        (Some(0), None) => Err(ConfigError::ZeroDuration { flag: "epochs" }),
        (None, Some(0)) => Err(ConfigError::ZeroDuration { flag: "steps" }),
        (Some(e), None) => Ok(Duration::Epochs(e)),
        (None, Some(s)) => Ok(Duration::Steps(s)),
        (None, None) => Ok(Duration::Epochs(1)),
    }
}

/// Batch size and SGD hyper-parameters.
fn check_optimizer(f: &TrainFlags) -> Result<(), ConfigError> {
    if f.batch_size == 0 {
        return Err(ConfigError::BatchSize);
    }
    if !(f.lr.is_finite() && f.lr > 0.0) {
        return Err(ConfigError::LearningRate(f.lr));
    }
    if !(0.0..1.0).contains(&f.momentum) {
        return Err(ConfigError::Momentum(f.momentum));
    }
    if !(f.weight_decay.is_finite() && f.weight_decay >= 0.0) {
        return Err(ConfigError::WeightDecay(f.weight_decay));
    }
    if let Some(a) = f.label_skew {
        if !(a.is_finite() && a > 0.0) {
            return Err(ConfigError::LabelSkew(a));
        }
    }
    Ok(())
}

/// The reliable baseline takes no flag about losses.
fn check_allreduce(f: &TrainFlags, drop: &DropSpec) -> Result<(), ConfigError> {
    let flag = if f.detect == DetectFlag::Deadline {
        Some("detect")
    } else if !drop.is_lossless() {
        Some(match drop {
            DropSpec::GilbertElliott(_) => "drop-model",
            DropSpec::Replay { .. } => "replay-trace",
            DropSpec::PerLink { .. } => "link-rates",
            DropSpec::Bernoulli { .. } => "drop-rate",
        })
    } else if f.packet_bytes.is_some() {
        Some("packet-bytes")
    } else if f.record_trace {
        Some("record-trace")
    } else {
        None
    };
    match flag {
        Some(flag) => Err(ConfigError::DropWithAllreduce(flag)),
        None => Ok(()),
    }
}

/// Dedicated (the first S ranks serve) or co-located mode.
fn mode(f: &TrainFlags, world_size: usize) -> Result<Mode, ConfigError> {
    match (f.servers, f.colocated) {
        (Some(_), true) => Err(ConfigError::ServersAndColocated),
        (_, true) => Ok(Mode::Colocated),
        (Some(0), false) => Err(ConfigError::NoServers),
        (servers, false) => {
            let servers = servers.unwrap_or(1);
            if servers >= world_size {
                return Err(ConfigError::NoWorkers {
                    servers,
                    size: world_size,
                    need: servers.saturating_add(1),
                });
            }
            Ok(Mode::Dedicated { servers })
        }
    }
}

fn drop_spec(f: &TrainFlags) -> Result<DropSpec, ConfigError> {
    let prob = |flag: &'static str, value: f64| {
        if (0.0..=1.0).contains(&value) {
            Ok(value)
        } else {
            Err(ConfigError::Probability { flag, value })
        }
    };
    let rate = prob("drop-rate", f.drop_rate)?;
    let up = prob("drop-up", f.drop_up.unwrap_or(rate))?;
    let down = prob("drop-down", f.drop_down.unwrap_or(rate))?;
    let explicit_rates = f.drop_rate != 0.0 || f.drop_up.is_some() || f.drop_down.is_some();
    if let Some(file) = &f.replay_trace {
        let conflict = if explicit_rates {
            Some("drop-rate")
        } else if f.drop_model != DropModelFlag::Bernoulli {
            Some("drop-model")
        } else if f.link_rates.is_some() {
            Some("link-rates")
        } else {
            None
        };
        return match conflict {
            Some(flag) => Err(ConfigError::ReplayWith(flag)),
            None => Ok(DropSpec::Replay { file: file.clone() }),
        };
    }
    match f.drop_model {
        DropModelFlag::GilbertElliott => {
            if explicit_rates {
                return Err(ConfigError::GilbertElliottWith(
                    "drop-rate/--drop-up/--drop-down",
                ));
            }
            if f.link_rates.is_some() {
                return Err(ConfigError::GilbertElliottWith("link-rates"));
            }
            Ok(DropSpec::GilbertElliott(GeParams {
                p: prob("ge-p", f.ge_p)?,
                r: prob("ge-r", f.ge_r)?,
                bad_loss: prob("ge-bad-loss", f.ge_bad_loss)?,
                good_loss: prob("ge-good-loss", f.ge_good_loss)?,
            }))
        }
        DropModelFlag::Bernoulli => Ok(match &f.link_rates {
            Some(file) => DropSpec::PerLink {
                up,
                down,
                file: file.clone(),
            },
            None => DropSpec::Bernoulli { up, down },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags of `rps train --dataset d.h5 --metrics m.h5 --drop-rate 0.1 EXTRA...`.
    fn flags(extra: &[&str]) -> TrainFlags {
        let base = "--dataset d.h5 --metrics m.h5 --drop-rate 0.1".split(' ');
        crate::cli::parse_train(base.chain(extra.iter().copied())).expect("flags parse")
    }

    fn check(extra: &[&str], size: usize) -> Result<TrainConfig, ConfigError> {
        TrainConfig::build(&flags(extra), size, String::new())
    }

    #[test]
    fn defaults_are_one_server_one_epoch() {
        let c = check(&[], 5).unwrap();
        assert_eq!(c.mode, Mode::Dedicated { servers: 1 });
        assert_eq!(c.duration, Duration::Epochs(1));
        assert_eq!(c.batch_size, 32);
        assert_eq!(c.transport, TransportKind::Mpi);
    }

    #[test]
    fn rejects_bad_values_by_name() {
        let prob = |flag, value| ConfigError::Probability { flag, value };
        let cases: Vec<(&[&str], ConfigError)> = vec![
            (&["--drop-rate", "1.5"], prob("drop-rate", 1.5)),
            (&["--drop-rate", "-0.1"], prob("drop-rate", -0.1)),
            (&["--drop-down", "2"], prob("drop-down", 2.0)),
            (&["--packet-bytes", "6"], ConfigError::PacketBytes(6)),
            (
                &["--drop-model", "gilbert-elliott"],
                ConfigError::GilbertElliottWith("drop-rate/--drop-up/--drop-down"),
            ),
            (
                &["--replay-trace", "t.h5"],
                ConfigError::ReplayWith("drop-rate"),
            ),
            (&["--batch-size", "0"], ConfigError::BatchSize),
            (
                &["--steps", "0"],
                ConfigError::ZeroDuration { flag: "steps" },
            ),
            (&["--lr", "0"], ConfigError::LearningRate(0.0)),
            (&["--momentum", "1"], ConfigError::Momentum(1.0)),
            (&["--weight-decay", "-1"], ConfigError::WeightDecay(-1.0)),
            (&["--label-skew", "0"], ConfigError::LabelSkew(0.0)),
            (
                &["--label-skew", "inf"],
                ConfigError::LabelSkew(f64::INFINITY),
            ),
            (&["--servers", "0"], ConfigError::NoServers),
            (
                &["--servers", "5"],
                ConfigError::NoWorkers {
                    servers: 5,
                    size: 5,
                    need: 6,
                },
            ),
            (
                &["--algorithm", "allreduce"],
                ConfigError::DropWithAllreduce("drop-rate"),
            ),
            (
                &["--detect", "deadline", "--recv-timeout-ms", "0"],
                ConfigError::Timeout(0),
            ),
            (
                &["--detect", "deadline", "--recv-timeout-ms", "100000000"],
                ConfigError::Timeout(100_000_000),
            ),
            (&["--transport", "udp"], ConfigError::UdpWithoutDeadline),
            (
                &["--udp-mtu", "9000"],
                ConfigError::UdpFlagWithoutUdp("udp-mtu"),
            ),
            (
                &["--loss-target", "0.05"],
                ConfigError::UdpFlagWithoutUdp("loss-target"),
            ),
            (
                &[
                    "--transport",
                    "udp",
                    "--detect",
                    "deadline",
                    "--loss-target",
                    "0.7",
                ],
                ConfigError::LossTarget(0.7),
            ),
            (
                &[
                    "--transport",
                    "udp",
                    "--detect",
                    "deadline",
                    "--loss-target",
                    "0",
                ],
                ConfigError::LossTarget(0.0),
            ),
            (
                &[
                    "--transport",
                    "udp",
                    "--detect",
                    "deadline",
                    "--udp-link-rate",
                    "1G",
                ],
                ConfigError::LinkRateWithoutBudget,
            ),
            (
                &["--checkpoint-every", "3"],
                ConfigError::CheckpointWithoutDir,
            ),
            (
                &["--lr-milestones", "0.5"],
                ConfigError::LrFlag("lr-milestones"),
            ),
            (
                &["--lr-schedule", "step"],
                ConfigError::LrMilestones("give at least one".into()),
            ),
            (
                &["--lr-schedule", "step", "--lr-milestones", "0.5,1.5"],
                ConfigError::LrMilestones(
                    "1.5 is neither a fraction of the run (below 1) nor a whole step number".into(),
                ),
            ),
            (
                &["--diag-every", "5", "--detect", "deadline"],
                ConfigError::DiagWithDeadline,
            ),
            (
                &["--ranks", "4"],
                ConfigError::Ranks {
                    expected: 4,
                    found: 5,
                },
            ),
        ];
        for (extra, expected) in cases {
            assert_eq!(check(extra, 5).unwrap_err(), expected, "{extra:?}");
        }
        assert!(check(&["--drop-rate", "NaN"], 5).is_err());
        // clap itself refuses what cannot be parsed or contradicts by declaration.
        assert!(crate::cli::parse_train([
            "--dataset",
            "d",
            "--metrics",
            "m",
            "--steps",
            "3",
            "--epochs",
            "1"
        ])
        .is_err());
        assert!(crate::cli::parse_train([
            "--dataset",
            "d",
            "--metrics",
            "m",
            "--servers",
            "1",
            "--colocated"
        ])
        .is_err());
    }

    #[test]
    fn flags_of_a_mode_that_is_off_are_listed() {
        let f = flags(&[
            "--lr-gamma",
            "0.1",
            "--ge-r",
            "0.5",
            "--recv-timeout-ms",
            "9",
        ]);
        assert_eq!(
            ignored_flags(&f),
            [
                "--lr-gamma is ignored: it applies to --lr-schedule step only",
                "--ge-r is ignored: it applies to --drop-model gilbert-elliott only",
                "--recv-timeout-ms is ignored: it applies to --detect deadline only",
            ]
        );
        let on = flags(&[
            "--lr-gamma=0.1",
            "--lr-schedule=step",
            "--lr-milestones=0.5",
            "--detect=deadline",
            "--recv-timeout-ms=9",
        ]);
        assert!(ignored_flags(&on).is_empty());
        assert!(
            ignored_flags(&flags(&[])).is_empty(),
            "defaults are not given"
        );
        // A UDP flag given at its default value is refused like any other value.
        assert_eq!(
            check(&["--udp-mtu", "1500"], 5).unwrap_err(),
            ConfigError::UdpFlagWithoutUdp("udp-mtu")
        );
    }

    #[test]
    fn drop_specs() {
        let c = check(&["--drop-up", "0.2"], 5).unwrap();
        assert_eq!(c.drop, DropSpec::Bernoulli { up: 0.2, down: 0.1 });
        let ge = check(&["--drop-rate", "0", "--drop-model", "gilbert-elliott"], 5);
        assert!(matches!(ge.unwrap().drop, DropSpec::GilbertElliott(_)));
        let links = check(&["--link-rates", "l.txt"], 5).unwrap();
        assert!(matches!(links.drop, DropSpec::PerLink { .. }));
        let lossless = check(&["--drop-rate", "0", "--algorithm", "allreduce"], 5);
        assert!(lossless.unwrap().drop.is_lossless());
    }

    #[test]
    fn udp_packets_default_to_what_fits_the_mtu() {
        let c = check(&["--transport", "udp", "--detect", "deadline"], 3).unwrap();
        assert_eq!(c.packet_bytes, Some(1396));
        let big = check(
            &[
                "--transport",
                "udp",
                "--detect",
                "deadline",
                "--packet-bytes",
                "4000",
            ],
            3,
        );
        assert_eq!(
            big.unwrap_err(),
            ConfigError::UdpPacketBytes {
                bytes: 4000,
                max: 1396
            }
        );
    }

    #[test]
    fn single_rank_needs_colocated() {
        assert!(check(&[], 1).is_err());
        assert_eq!(check(&["--colocated"], 1).unwrap().mode, Mode::Colocated);
    }
}
