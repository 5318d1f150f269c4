//! The validated configuration of a training run.
//!
//! `cli.rs` parses flags; this module checks them and builds [`TrainConfig`], the only
//! form the rest of the program sees. Every rank validates the same arguments the same
//! way, so a bad input fails on all ranks at once with the same message.

use std::path::PathBuf;

use thiserror::Error;

use crate::drop::GeParams;
use crate::nn::ModelKind;
use crate::rps::Mode;

/// Which drop model decides the fate of each message (or packet).
#[derive(Debug, Clone, PartialEq)]
pub enum DropSpec {
    /// i.i.d. loss with a rate per direction (the paper's model when up == down).
    Bernoulli { up: f64, down: f64 },
    /// Bursty loss, one Markov chain per directed link.
    GilbertElliott(GeParams),
    /// i.i.d. loss with rates per link from a file, `up`/`down` for links it does not name.
    PerLink { up: f64, down: f64, file: PathBuf },
    /// The drops recorded in an earlier run's metrics file.
    Replay { file: PathBuf },
}

impl DropSpec {
    /// Whether this model can drop anything at all.
    pub fn is_lossless(&self) -> bool {
        matches!(self, DropSpec::Bernoulli { up, down } if *up == 0.0 && *down == 0.0)
    }

    /// Short name recorded in the metrics file.
    pub fn name(&self) -> &'static str {
        match self {
            DropSpec::Bernoulli { .. } => "bernoulli",
            DropSpec::GilbertElliott(_) => "gilbert-elliott",
            DropSpec::PerLink { .. } => "per-link",
            DropSpec::Replay { .. } => "replay",
        }
    }
}

/// Which training algorithm runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Robust Parameter Server over a lossy exchange (the paper's algorithm).
    Rps,
    /// Reliable model averaging with MPI_Allreduce after every local step (the baseline).
    Allreduce,
}

impl Algorithm {
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
    /// The network every worker trains.
    pub model: ModelKind,
    /// Random crop (padding 4) and horizontal flip of training batches.
    pub augment: bool,
}

/// How receivers learn that a message was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    /// Receivers evaluate the drop model and wait only for what was sent (reproducible).
    Oracle,
    /// Receivers wait until a deadline and treat what has not arrived as lost.
    Deadline { timeout: std::time::Duration },
}

/// What carries the RPS exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// MPI point-to-point (reliable; drops are simulated).
    Mpi,
    /// UDP datagrams, one per packet (unreliable; needs deadline detection).
    Udp(crate::comm::udp::UdpOptions),
}

/// The largest packet (bytes of model) one datagram carries with `--transport udp`:
/// the MTU less the IP, UDP, datagram and message headers, in whole `f32`s. The
/// default of `--packet-bytes` with UDP (1420 bytes for an MTU of 1500).
pub fn udp_packet_bytes(opts: &crate::comm::udp::UdpOptions) -> usize {
    opts.max_datagram().saturating_sub(
        crate::comm::udp::HEADER_BYTES + crate::rps::exchange::DATAGRAM_HEADER_BYTES,
    ) / 4
        * 4
}

/// The `--drop-model` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropModelKind {
    Bernoulli,
    GilbertElliott,
}

/// Raw training arguments as given by the user (any front end: flags, later job files).
#[derive(Debug, Clone)]
pub struct TrainArgs {
    pub dataset: PathBuf,
    pub metrics: PathBuf,
    pub save_model: Option<PathBuf>,
    pub servers: Option<usize>,
    pub colocated: bool,
    pub algorithm: Algorithm,
    pub drop_rate: f64,
    pub drop_up: Option<f64>,
    pub drop_down: Option<f64>,
    pub drop_model: DropModelKind,
    pub ge: GeParams,
    pub link_rates: Option<PathBuf>,
    pub packet_bytes: Option<usize>,
    pub record_trace: bool,
    pub replay_trace: Option<PathBuf>,
    /// `--detect deadline`: the receive deadline in milliseconds; `None`: oracle.
    pub deadline_ms: Option<u64>,
    pub transport: TransportKind,
    /// A `--udp-*` flag given (only meaningful with `--transport udp`).
    pub udp_flag: Option<&'static str>,
    pub epochs: Option<u64>,
    pub steps: Option<u64>,
    pub batch_size: usize,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub seed: u64,
    pub eval_every: u64,
    pub force: bool,
    pub checkpoint_every: Option<u64>,
    pub checkpoint_dir: Option<PathBuf>,
    pub resume: Option<PathBuf>,
    /// World size the job expects (`ranks` of a job file).
    pub ranks: Option<usize>,
    pub model: ModelKind,
    pub augment: bool,
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
    #[error("--recv-timeout-ms must be at least 1")]
    Timeout,
    #[error("--transport udp needs --detect deadline: a receiver cannot know what a real network lost, it can only stop waiting")]
    UdpWithoutDeadline,
    #[error("--{0} applies to --transport udp only")]
    UdpFlagWithoutUdp(&'static str),
    #[error("--udp-mtu {0} must be from 576 to 9216 bytes")]
    UdpMtu(usize),
    #[error("--packet-bytes {bytes} is too large for --transport udp: at most {max} bytes of model fit in one datagram (raise --udp-mtu if the network has jumbo frames)")]
    UdpPacketBytes { bytes: usize, max: usize },
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
    #[error("--servers and --colocated are mutually exclusive")]
    ServersAndColocated,
    #[error("--servers must be at least 1 (or use --colocated)")]
    NoServers,
    #[error("--servers {servers} leaves no worker in a job of {size} rank(s): start at least {need} ranks (mpirun -n {need}) or use fewer servers")]
    NoWorkers {
        servers: usize,
        size: usize,
        need: usize,
    },
    #[error("--metrics {0} names no file")]
    MetricsPath(PathBuf),
}

impl TrainConfig {
    /// Validates `args` for a job of `world_size` ranks.
    ///
    /// # Errors
    /// The first invalid or contradictory flag, named.
    pub fn from_args(
        args: TrainArgs,
        world_size: usize,
        command_line: String,
    ) -> Result<Self, ConfigError> {
        let a = args;
        let drop = Self::drop_spec(&a)?;
        if let Some(n) = a.packet_bytes {
            if n == 0 || n % 4 != 0 {
                return Err(ConfigError::PacketBytes(n));
            }
        }
        let detection = match a.deadline_ms {
            None => Detection::Oracle,
            Some(0) => return Err(ConfigError::Timeout),
            Some(ms) => Detection::Deadline {
                timeout: std::time::Duration::from_millis(ms),
            },
        };
        let mut packet_bytes = a.packet_bytes;
        match a.transport {
            TransportKind::Mpi => {
                if let Some(flag) = a.udp_flag {
                    return Err(ConfigError::UdpFlagWithoutUdp(flag));
                }
            }
            TransportKind::Udp(opts) => {
                if !(576..=crate::comm::udp::MAX_MTU).contains(&opts.mtu) {
                    return Err(ConfigError::UdpMtu(opts.mtu));
                }
                if a.algorithm == Algorithm::Allreduce {
                    return Err(ConfigError::DropWithAllreduce("transport udp"));
                }
                if a.deadline_ms.is_none() {
                    return Err(ConfigError::UdpWithoutDeadline);
                }
                let max = udp_packet_bytes(&opts);
                let bytes = *packet_bytes.get_or_insert(max);
                if bytes > max {
                    return Err(ConfigError::UdpPacketBytes { bytes, max });
                }
            }
        }
        if a.algorithm == Algorithm::Allreduce {
            let flag = if a.deadline_ms.is_some() {
                Some("detect")
            } else if !drop.is_lossless() {
                Some(match &drop {
                    DropSpec::GilbertElliott(_) => "drop-model",
                    DropSpec::Replay { .. } => "replay-trace",
                    DropSpec::PerLink { .. } => "link-rates",
                    DropSpec::Bernoulli { .. } => "drop-rate",
                })
            } else if a.packet_bytes.is_some() {
                Some("packet-bytes")
            } else if a.record_trace {
                Some("record-trace")
            } else {
                None
            };
            if let Some(flag) = flag {
                return Err(ConfigError::DropWithAllreduce(flag));
            }
        }
        if a.batch_size == 0 {
            return Err(ConfigError::BatchSize);
        }
        let duration = match (a.epochs, a.steps) {
            (Some(_), Some(_)) => return Err(ConfigError::BothDurations),
            (Some(0), None) => return Err(ConfigError::ZeroDuration { flag: "epochs" }),
            (None, Some(0)) => return Err(ConfigError::ZeroDuration { flag: "steps" }),
            (Some(e), None) => Duration::Epochs(e),
            (None, Some(s)) => Duration::Steps(s),
            (None, None) => Duration::Epochs(1),
        };
        if !(a.lr.is_finite() && a.lr > 0.0) {
            return Err(ConfigError::LearningRate(a.lr));
        }
        if !(0.0..1.0).contains(&a.momentum) {
            return Err(ConfigError::Momentum(a.momentum));
        }
        if !(a.weight_decay.is_finite() && a.weight_decay >= 0.0) {
            return Err(ConfigError::WeightDecay(a.weight_decay));
        }
        let mode = match (a.servers, a.colocated) {
            (Some(_), true) => return Err(ConfigError::ServersAndColocated),
            (_, true) => Mode::Colocated,
            (Some(0), false) => return Err(ConfigError::NoServers),
            (servers, false) => {
                let servers = servers.unwrap_or(1);
                if servers >= world_size {
                    return Err(ConfigError::NoWorkers {
                        servers,
                        size: world_size,
                        need: servers + 1,
                    });
                }
                Mode::Dedicated { servers }
            }
        };
        if let Some(expected) = a.ranks {
            if expected != world_size {
                return Err(ConfigError::Ranks {
                    expected,
                    found: world_size,
                });
            }
        }
        if a.checkpoint_every == Some(0) {
            return Err(ConfigError::CheckpointEvery);
        }
        // Resuming keeps checkpointing into the directory it resumed from by default.
        let checkpoint_dir = a.checkpoint_dir.clone().or_else(|| a.resume.clone());
        if a.checkpoint_every.is_some() && checkpoint_dir.is_none() {
            return Err(ConfigError::CheckpointWithoutDir);
        }
        if a.metrics.file_name().is_none() {
            return Err(ConfigError::MetricsPath(a.metrics));
        }
        Ok(TrainConfig {
            dataset: a.dataset,
            metrics: a.metrics,
            save_model: a.save_model,
            mode,
            algorithm: a.algorithm,
            drop_rate: a.drop_rate,
            drop,
            packet_bytes,
            record_trace: a.record_trace,
            detection,
            transport: a.transport,
            duration,
            batch_size: a.batch_size,
            lr: a.lr,
            momentum: a.momentum,
            weight_decay: a.weight_decay,
            seed: a.seed,
            eval_every: a.eval_every,
            force: a.force,
            checkpoint_every: a.checkpoint_every,
            checkpoint_dir,
            resume: a.resume,
            command_line,
            model: a.model,
            augment: a.augment,
        })
    }
}

impl TrainConfig {
    fn drop_spec(a: &TrainArgs) -> Result<DropSpec, ConfigError> {
        let prob = |flag: &'static str, value: f64| {
            if (0.0..=1.0).contains(&value) {
                Ok(value)
            } else {
                Err(ConfigError::Probability { flag, value })
            }
        };
        let rate = prob("drop-rate", a.drop_rate)?;
        let up = prob("drop-up", a.drop_up.unwrap_or(rate))?;
        let down = prob("drop-down", a.drop_down.unwrap_or(rate))?;
        let explicit_rates = a.drop_rate != 0.0 || a.drop_up.is_some() || a.drop_down.is_some();
        if let Some(file) = &a.replay_trace {
            let conflict = if explicit_rates {
                Some("drop-rate")
            } else if a.drop_model != DropModelKind::Bernoulli {
                Some("drop-model")
            } else if a.link_rates.is_some() {
                Some("link-rates")
            } else {
                None
            };
            return match conflict {
                Some(flag) => Err(ConfigError::ReplayWith(flag)),
                None => Ok(DropSpec::Replay { file: file.clone() }),
            };
        }
        match a.drop_model {
            DropModelKind::GilbertElliott => {
                if explicit_rates {
                    return Err(ConfigError::GilbertElliottWith(
                        "drop-rate/--drop-up/--drop-down",
                    ));
                }
                if a.link_rates.is_some() {
                    return Err(ConfigError::GilbertElliottWith("link-rates"));
                }
                let g = a.ge;
                Ok(DropSpec::GilbertElliott(GeParams {
                    p: prob("ge-p", g.p)?,
                    r: prob("ge-r", g.r)?,
                    bad_loss: prob("ge-bad-loss", g.bad_loss)?,
                    good_loss: prob("ge-good-loss", g.good_loss)?,
                }))
            }
            DropModelKind::Bernoulli => Ok(match &a.link_rates {
                Some(file) => DropSpec::PerLink {
                    up,
                    down,
                    file: file.clone(),
                },
                None => DropSpec::Bernoulli { up, down },
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> TrainArgs {
        TrainArgs {
            dataset: "d.h5".into(),
            metrics: "m.h5".into(),
            save_model: None,
            servers: None,
            colocated: false,
            algorithm: Algorithm::Rps,
            drop_rate: 0.1,
            drop_up: None,
            drop_down: None,
            drop_model: DropModelKind::Bernoulli,
            ge: GeParams {
                p: 0.01,
                r: 0.3,
                bad_loss: 1.0,
                good_loss: 0.0,
            },
            link_rates: None,
            packet_bytes: None,
            record_trace: false,
            replay_trace: None,
            deadline_ms: None,
            transport: TransportKind::Mpi,
            udp_flag: None,
            epochs: None,
            steps: None,
            batch_size: 32,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 0.0,
            seed: 1,
            eval_every: 100,
            force: false,
            checkpoint_every: None,
            checkpoint_dir: None,
            resume: None,
            ranks: None,
            model: ModelKind::Cnn,
            augment: false,
        }
    }

    fn check(a: TrainArgs, size: usize) -> Result<TrainConfig, ConfigError> {
        TrainConfig::from_args(a, size, String::new())
    }

    #[test]
    fn defaults_are_one_server_one_epoch() {
        let c = check(args(), 5).unwrap();
        assert_eq!(c.mode, Mode::Dedicated { servers: 1 });
        assert_eq!(c.duration, Duration::Epochs(1));
    }

    #[test]
    fn rejects_bad_values_by_name() {
        let cases: Vec<(TrainArgs, ConfigError)> = vec![
            (
                TrainArgs {
                    drop_rate: 1.5,
                    ..args()
                },
                ConfigError::Probability {
                    flag: "drop-rate",
                    value: 1.5,
                },
            ),
            (
                TrainArgs {
                    drop_rate: -0.1,
                    ..args()
                },
                ConfigError::Probability {
                    flag: "drop-rate",
                    value: -0.1,
                },
            ),
            (
                TrainArgs {
                    drop_down: Some(2.0),
                    ..args()
                },
                ConfigError::Probability {
                    flag: "drop-down",
                    value: 2.0,
                },
            ),
            (
                TrainArgs {
                    packet_bytes: Some(6),
                    ..args()
                },
                ConfigError::PacketBytes(6),
            ),
            (
                TrainArgs {
                    drop_model: DropModelKind::GilbertElliott,
                    ..args()
                },
                ConfigError::GilbertElliottWith("drop-rate/--drop-up/--drop-down"),
            ),
            (
                TrainArgs {
                    replay_trace: Some("t.h5".into()),
                    ..args()
                },
                ConfigError::ReplayWith("drop-rate"),
            ),
            (
                TrainArgs {
                    batch_size: 0,
                    ..args()
                },
                ConfigError::BatchSize,
            ),
            (
                TrainArgs {
                    steps: Some(0),
                    ..args()
                },
                ConfigError::ZeroDuration { flag: "steps" },
            ),
            (
                TrainArgs {
                    steps: Some(3),
                    epochs: Some(1),
                    ..args()
                },
                ConfigError::BothDurations,
            ),
            (
                TrainArgs { lr: 0.0, ..args() },
                ConfigError::LearningRate(0.0),
            ),
            (
                TrainArgs {
                    momentum: 1.0,
                    ..args()
                },
                ConfigError::Momentum(1.0),
            ),
            (
                TrainArgs {
                    weight_decay: -1.0,
                    ..args()
                },
                ConfigError::WeightDecay(-1.0),
            ),
            (
                TrainArgs {
                    servers: Some(0),
                    ..args()
                },
                ConfigError::NoServers,
            ),
            (
                TrainArgs {
                    servers: Some(5),
                    ..args()
                },
                ConfigError::NoWorkers {
                    servers: 5,
                    size: 5,
                    need: 6,
                },
            ),
            (
                TrainArgs {
                    servers: Some(1),
                    colocated: true,
                    ..args()
                },
                ConfigError::ServersAndColocated,
            ),
            (
                TrainArgs {
                    algorithm: Algorithm::Allreduce,
                    ..args()
                },
                ConfigError::DropWithAllreduce("drop-rate"),
            ),
        ];
        for (a, expected) in cases {
            assert_eq!(check(a, 5).unwrap_err(), expected);
        }
        assert!(check(
            TrainArgs {
                drop_rate: f64::NAN,
                ..args()
            },
            5
        )
        .is_err());
    }

    #[test]
    fn drop_specs() {
        let c = check(
            TrainArgs {
                drop_up: Some(0.2),
                ..args()
            },
            5,
        )
        .unwrap();
        assert_eq!(c.drop, DropSpec::Bernoulli { up: 0.2, down: 0.1 });
        let ge = TrainArgs {
            drop_rate: 0.0,
            drop_model: DropModelKind::GilbertElliott,
            ..args()
        };
        assert!(matches!(
            check(ge, 5).unwrap().drop,
            DropSpec::GilbertElliott(_)
        ));
        let links = TrainArgs {
            link_rates: Some("l.txt".into()),
            ..args()
        };
        assert!(matches!(
            check(links, 5).unwrap().drop,
            DropSpec::PerLink { .. }
        ));
        let lossless = TrainArgs {
            drop_rate: 0.0,
            algorithm: Algorithm::Allreduce,
            ..args()
        };
        assert!(check(lossless, 5).unwrap().drop.is_lossless());
    }

    #[test]
    fn single_rank_needs_colocated() {
        assert!(check(args(), 1).is_err());
        assert_eq!(
            check(
                TrainArgs {
                    colocated: true,
                    ..args()
                },
                1
            )
            .unwrap()
            .mode,
            Mode::Colocated
        );
    }
}
