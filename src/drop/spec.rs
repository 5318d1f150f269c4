//! What a configuration asks of the drop layer: which model ([`DropSpec`]) for a run of
//! which shape ([`RunShape`]), and the seed of its drop stream ([`drop_seed`]). The model
//! itself is built by the driver (`train::drops`), because replaying a trace reads a
//! metrics file, a layer above this one.

use std::path::PathBuf;

use super::GeParams;
use crate::hash::hash_words;

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

/// The seed of a run's drop stream, derived from its `--seed`: every model's decisions
/// hash from it, so the drops do not repeat the data order's or the blocks' draws.
pub fn drop_seed(run_seed: u64) -> u64 {
    hash_words(&[run_seed, 0x4452_4F50]) // "DROP"
}
