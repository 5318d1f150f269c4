//! `rps train`'s flags become a [`TrainConfig`]: every check, in one place, then the
//! build. Every rank runs the same checks on the same flags, so a bad input fails
//! everywhere at once with one message ([`ConfigError`] names the flag).

use crate::comm::udp::rate::{Budget, DEFAULT_LINK_RATE};
use crate::comm::udp::{UdpOptions, DEFAULT_MTU, MAX_MTU};
use crate::config::{
    udp_packet_bytes, Algorithm, ConfigError, Detection, DropSpec, Duration, TrainConfig,
    TransportKind, MAX_TIMEOUT_MS,
};
use crate::drop::GeParams;
use crate::exchange::Mode;

use super::train::{DetectFlag, DropModelFlag, LrScheduleFlag, TrainFlags, TransportFlag};

/// Validates the parsed flags `f` for a job of `world_size` ranks and builds the
/// configuration.
///
/// # Errors
/// The first invalid or contradictory flag, named.
pub fn train_config(
    f: &TrainFlags,
    world_size: usize,
    command_line: String,
) -> Result<TrainConfig, ConfigError> {
    let drop = drop_spec(f)?;
    if let Some(n) = f.packet_bytes {
        if n == 0 || n % 4 != 0 {
            return Err(ConfigError::PacketBytes(n));
        }
    }
    if let Some(n) = f.chunk_bytes {
        if n == 0 || n % 4 != 0 {
            return Err(ConfigError::ChunkBytes(n));
        }
        if f.detect != DetectFlag::Oracle {
            return Err(ConfigError::ChunkWithDeadline);
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
        chunk_bytes: f.chunk_bytes,
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
    } else if f.chunk_bytes.is_some() {
        Some("chunk-bytes")
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
mod tests;
