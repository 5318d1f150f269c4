//! The HDF5 run log: what it records ([`schema`] for datasets, [`attrs`] for root
//! attributes, each declared once), how rank 0 writes it ([`writer`]) and the one way to
//! read it back ([`read`]), and digests of its contents for bit-for-bit comparisons
//! ([`digest`]). The reference in docs/metrics.md is generated from here.

pub mod attrs;
pub mod digest;
pub mod read;
pub mod schema;
pub mod trace;
pub mod writer;

pub use attrs::{AttrValue, RunEnv, RunFacts};
pub use read::{ReadError, RunFile};
pub use schema::{EvalRecord, StepRow};
pub use writer::MetricsWriter;

/// The whole metrics reference (docs/metrics.md).
pub fn markdown() -> String {
    format!("{}\n{}", schema::markdown(), attrs::markdown())
}
