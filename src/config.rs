//! The validated configuration of a training run.
//!
//! `cli.rs` parses flags; this module checks them and builds [`TrainConfig`], the only
//! form the rest of the program sees. Every rank validates the same arguments the same
//! way, so a bad input fails on all ranks at once with the same message.

use std::path::PathBuf;

use thiserror::Error;

use crate::nn::ModelKind;
use crate::rps::Mode;

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
    pub drop_rate: f64,
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
    /// The command line, recorded in the metrics file.
    pub command_line: String,
    /// The network every worker trains.
    pub model: ModelKind,
    /// Random crop (padding 4) and horizontal flip of training batches.
    pub augment: bool,
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
    pub epochs: Option<u64>,
    pub steps: Option<u64>,
    pub batch_size: usize,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub seed: u64,
    pub eval_every: u64,
    pub force: bool,
    pub model: ModelKind,
    pub augment: bool,
}

#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    #[error("--drop-rate {0} is outside [0, 1]")]
    DropRate(f64),
    #[error("--drop-rate {0} applies to --algorithm rps only; --algorithm allreduce is the reliable baseline")]
    DropWithAllreduce(f64),
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
        if !(0.0..=1.0).contains(&a.drop_rate) {
            return Err(ConfigError::DropRate(a.drop_rate));
        }
        if a.algorithm == Algorithm::Allreduce && a.drop_rate > 0.0 {
            return Err(ConfigError::DropWithAllreduce(a.drop_rate));
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
            duration,
            batch_size: a.batch_size,
            lr: a.lr,
            momentum: a.momentum,
            weight_decay: a.weight_decay,
            seed: a.seed,
            eval_every: a.eval_every,
            force: a.force,
            command_line,
            model: a.model,
            augment: a.augment,
        })
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
            epochs: None,
            steps: None,
            batch_size: 32,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 0.0,
            seed: 1,
            eval_every: 100,
            force: false,
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
                ConfigError::DropRate(1.5),
            ),
            (
                TrainArgs {
                    drop_rate: -0.1,
                    ..args()
                },
                ConfigError::DropRate(-0.1),
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
                ConfigError::DropWithAllreduce(0.1),
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
