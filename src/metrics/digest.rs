//! Digests of what a run computed, for comparing runs bit for bit across machines and
//! transports without the files: SHA-256 of every dataset of a metrics file that does not
//! measure time (columns whose unit is seconds are left out), and of the parameters of a
//! model saved by `--save-model`. `rps digest` prints them; the test suite holds golden
//! values for short fixed runs (tests/golden/digests.txt).

use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};

use super::schema::{Column, DIAG_COLUMNS, EVAL_COLUMNS, LINK_MATRICES, STEP_COLUMNS};
use super::trace::TRACE_DATASET;
use super::RunFile;

/// The digest of one dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// Dataset path in the file (`train/loss`, `params`, …).
    pub name: String,
    /// Number of values digested.
    pub values: usize,
    /// The first 16 bytes of the SHA-256 of the values (little-endian, as stored), hex.
    pub hex: String,
}

/// What makes a column a measurement of time, and so different on every run.
fn is_timing<R>(c: &Column<R>) -> bool {
    c.unit == "s"
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn digest_of(name: &str, values: usize, bytes: &[u8]) -> Digest {
    Digest {
        name: name.into(),
        values,
        hex: hex(&Sha256::digest(bytes)),
    }
}

fn of_f64(name: &str, v: &[f64]) -> Digest {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    digest_of(name, v.len(), &bytes)
}

/// Digests of every non-timing dataset of a metrics file, in the order of the schema
/// (steps, evaluations, diagnostics, per-link matrices, then the drop trace if any).
///
/// # Errors
/// The file is not a readable metrics file.
pub fn of_metrics(path: &Path) -> Result<Vec<Digest>> {
    let f = RunFile::open(path)?;
    let mut out = Vec::new();
    let names = STEP_COLUMNS
        .iter()
        .filter(|c| !is_timing(c))
        .map(|c| c.name)
        .chain(
            EVAL_COLUMNS
                .iter()
                .filter(|c| !is_timing(c))
                .map(|c| c.name),
        )
        .chain(
            DIAG_COLUMNS
                .iter()
                .filter(|c| !is_timing(c))
                .map(|c| c.name),
        );
    for name in names {
        if f.has(name) {
            out.push(of_f64(name, &f.series(name)?));
        }
    }
    for m in LINK_MATRICES {
        if let Some((matrix, _, _)) = f.matrix(m.name)? {
            let bytes: Vec<u8> = matrix.iter().flat_map(|x| x.to_le_bytes()).collect();
            out.push(digest_of(m.name, matrix.len(), &bytes));
        }
    }
    if f.has(TRACE_DATASET) {
        let hdf = hdf5::File::open(path)?;
        let raw: Vec<u64> = hdf
            .dataset(TRACE_DATASET)
            .and_then(|d| d.read_raw::<u64>())
            .with_context(|| format!("{}: cannot read {TRACE_DATASET}", path.display()))?;
        let bytes: Vec<u8> = raw.iter().flat_map(|x| x.to_le_bytes()).collect();
        out.push(digest_of(TRACE_DATASET, raw.len(), &bytes));
    }
    Ok(out)
}

/// The digest of the parameters of a model saved by `--save-model` (dataset `params`).
///
/// # Errors
/// The file is not HDF5 or has no f32 `params` dataset.
pub fn of_model(path: &Path) -> Result<Digest> {
    let ctx = || format!("{}: not a model saved by --save-model", path.display());
    let f = hdf5::File::open(path).with_context(ctx)?;
    let params: Vec<f32> = f
        .dataset("params")
        .and_then(|d| d.read_raw::<f32>())
        .with_context(ctx)?;
    let bytes: Vec<u8> = params.iter().flat_map(|x| x.to_le_bytes()).collect();
    Ok(digest_of("params", params.len(), &bytes))
}

/// Digests of a metrics file or a saved model, whichever `path` is.
///
/// # Errors
/// The file is neither.
pub fn of_file(path: &Path) -> Result<Vec<Digest>> {
    match of_metrics(path) {
        Ok(d) => Ok(d),
        Err(metrics) => of_model(path).map(|d| vec![d]).map_err(|_| metrics),
    }
}

/// One digest of several: of their names and digests, in order.
pub fn combined(digests: &[Digest]) -> String {
    let mut h = Sha256::new();
    for d in digests {
        h.update(d.name.as_bytes());
        h.update([0]);
        h.update(d.hex.as_bytes());
        h.update([0]);
    }
    hex(&h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_see_every_bit_and_the_combined_one_sees_names() {
        let a = of_f64("x", &[1.0, 2.0]);
        let b = of_f64("x", &[1.0, f64::from_bits(2f64.to_bits() + 1)]);
        assert_ne!(a.hex, b.hex);
        assert_eq!(a.hex.len(), 32);
        let renamed = Digest {
            name: "y".into(),
            ..a.clone()
        };
        assert_ne!(combined(std::slice::from_ref(&a)), combined(&[renamed]));
        assert_eq!(combined(std::slice::from_ref(&a)), combined(&[a]));
    }

    #[test]
    fn timing_columns_are_the_ones_in_seconds() {
        let timing: Vec<&str> = STEP_COLUMNS
            .iter()
            .filter(|c| is_timing(c))
            .map(|c| c.name)
            .chain(EVAL_COLUMNS.iter().filter(|c| is_timing(c)).map(|c| c.name))
            .collect();
        assert_eq!(
            timing,
            [
                "time/compute_s",
                "time/comm_s",
                "time/wall_s",
                "eval/wall_s"
            ]
        );
    }
}
