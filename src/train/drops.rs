//! Builds the drop model a configuration asks for: the one place that knows every model
//! and what each needs (seeds, files, the run's geometry). It sits in the driver, above
//! both the drop models and the metrics file that a replayed trace is read from.

use thiserror::Error;

use crate::drop::{
    drop_seed, Bernoulli, DropModel, DropSpec, GilbertElliott, LinkRates, LinkRatesError, PerLink,
    RunShape, TraceError,
};
use crate::metrics::trace::load_replay;

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
    let seed = drop_seed(run.seed);
    let mut link_rates_text = None;
    let model: Box<dyn DropModel> = match spec {
        DropSpec::Bernoulli { up, down } => Box::new(Bernoulli::with_rates(seed, *up, *down)),
        DropSpec::GilbertElliott(g) => Box::new(GilbertElliott::new(seed, *g, run.slots_per_step)),
        DropSpec::PerLink { up, down, file } => {
            let rules = LinkRates::load(file, run.world_size)?;
            link_rates_text = std::fs::read_to_string(file).ok();
            Box::new(PerLink::new(seed, *up, *down, rules))
        }
        DropSpec::Replay { file } => Box::new(load_replay(file, run)?),
    };
    Ok(Built {
        model,
        link_rates_text,
    })
}
