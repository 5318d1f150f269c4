//! Builds the drop model a configuration asks for: the one place that knows every model
//! and what each needs (seeds, files, the run's geometry).

use std::path::PathBuf;

use thiserror::Error;

use super::{
    Bernoulli, DropModel, GeParams, GilbertElliott, LinkRates, LinkRatesError, PerLink, Replay,
    TraceBounds, TraceError,
};
use crate::hash::hash_words;
use crate::metrics::attrs;

/// Which drop model decides the fate of each message (or packet), as configured.
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

/// What building a drop model needs to know about the run.
#[derive(Debug, Clone, Copy)]
pub struct RunShape {
    /// The run's `--seed` (the drop stream is derived from it).
    pub seed: u64,
    pub world_size: usize,
    pub servers: usize,
    pub colocated: bool,
    pub num_params: usize,
    pub packet_bytes: Option<usize>,
    /// Packet slots per message (1 without packets): the Gilbert–Elliott clock.
    pub slots_per_step: u64,
    pub total_steps: u64,
}

/// A drop model, and the text of the file it came from where that is worth recording.
pub struct Built {
    pub model: Box<dyn DropModel>,
    /// The `--link-rates` file's content.
    pub link_rates_text: Option<String>,
}

/// Why a drop model could not be built.
#[derive(Debug, Error)]
pub enum BuildError {
    #[error(transparent)]
    LinkRates(#[from] LinkRatesError),
    #[error(transparent)]
    Trace(#[from] TraceError),
}

/// Builds the model `spec` describes for a run of shape `run`.
///
/// # Errors
/// An unreadable or invalid link-rates file or trace, or a trace recorded by a run of
/// another shape.
pub fn build(spec: &DropSpec, run: &RunShape) -> Result<Built, BuildError> {
    let seed = hash_words(&[run.seed, 0x4452_4F50]); // "DROP"
    let mut link_rates_text = None;
    let model: Box<dyn DropModel> = match spec {
        DropSpec::Bernoulli { up, down } => Box::new(Bernoulli::with_rates(seed, *up, *down)),
        DropSpec::GilbertElliott(g) => Box::new(GilbertElliott::new(seed, *g, run.slots_per_step)),
        DropSpec::PerLink { up, down, file } => {
            let rules = LinkRates::load(file, run.world_size)?;
            link_rates_text = std::fs::read_to_string(file).ok();
            Box::new(PerLink::new(seed, *up, *down, rules))
        }
        DropSpec::Replay { file } => {
            let expected = [
                (attrs::WORLD_SIZE.name, run.world_size as i64),
                (attrs::SERVERS.name, run.servers as i64),
                (attrs::COLOCATED.name, i64::from(run.colocated)),
                (attrs::NUM_PARAMS.name, run.num_params as i64),
                (attrs::SEED.name, run.seed as i64),
                (
                    attrs::PACKET_BYTES.name,
                    run.packet_bytes.unwrap_or(0) as i64,
                ),
            ];
            let bounds = TraceBounds {
                world_size: run.world_size,
                blocks: if run.colocated {
                    run.world_size
                } else {
                    run.servers
                },
                packets: run.slots_per_step as usize,
            };
            Box::new(Replay::load(file, &expected, run.total_steps, bounds)?)
        }
    };
    Ok(Built {
        model,
        link_rates_text,
    })
}
