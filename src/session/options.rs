//! What a session takes: the flags of `rps train` that concern the exchange, parsed and
//! validated by `rps train`'s own code, so that a bad option reads as on the command line.

use anyhow::{anyhow, bail};

use crate::config::TrainConfig;

/// The flags of `rps train` a session takes (everything about the exchange, its
/// transport and its metrics file; nothing about rps's model, data or optimiser).
pub const OPTIONS: &[&str] = &[
    "servers",
    "colocated",
    "algorithm",
    "drop-rate",
    "drop-up",
    "drop-down",
    "drop-model",
    "ge-p",
    "ge-r",
    "ge-bad-loss",
    "ge-good-loss",
    "link-rates",
    "packet-bytes",
    "chunk-bytes",
    "record-trace",
    "replay-trace",
    "detect",
    "recv-timeout-ms",
    "transport",
    "udp-subnet",
    "udp-port",
    "udp-mtu",
    "loss-target",
    "udp-link-rate",
    "seed",
    "metrics",
    "force",
    "ranks",
];

/// What `--dataset`, which `rps train`'s flags require, holds in a session's
/// configuration: a session reads no dataset, and records none.
const NO_DATASET: &str = "(no dataset: a front end trains its own)";

/// What a session's metrics flag holds when no metrics file was asked for.
const NO_METRICS: &str = "(no metrics file)";

/// A session's validated configuration.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub train: TrainConfig,
    /// Whether rank 0 writes a metrics file (`--metrics` given).
    pub metrics: bool,
}

/// Parses and validates a session's flags (`--name value` or `--name`, names from
/// [`OPTIONS`]) for a job of `size` ranks, as `rps train` would. Local: every rank runs
/// it, and the front end agrees on the outcome before it builds a transport.
///
/// # Errors
/// A flag that is not an option of the exchange, or any error `rps train` would give.
pub fn config(
    flags: &[String],
    size: usize,
    command_line: String,
) -> anyhow::Result<SessionConfig> {
    let mut metrics = false;
    for f in flags.iter().filter(|f| f.starts_with("--")) {
        let name = f[2..].split('=').next().unwrap_or_default();
        if !OPTIONS.contains(&name) {
            bail!(
                "--{name} is not an option of the exchange (rps.Exchange takes: {})",
                OPTIONS.join(", ")
            );
        }
        metrics |= name == "metrics";
    }
    let mut args: Vec<String> = vec!["--dataset".into(), NO_DATASET.into()];
    if !metrics {
        args.extend(["--metrics".into(), NO_METRICS.into()]);
    }
    args.extend(flags.iter().cloned());
    let parsed = crate::cli::parse_train(&args).map_err(|e| {
        // clap's own text, less its usage line for the whole of `rps train`.
        let text = e.to_string();
        let text = text.split("\n\nUsage:").next().unwrap_or(&text);
        anyhow!("{}", text.trim().trim_start_matches("error: "))
    })?;
    let train = crate::cli::validate::train_config(&parsed, size, command_line)?;
    if metrics {
        crate::train::check_outputs(&train, false)?;
    }
    Ok(SessionConfig { train, metrics })
}
