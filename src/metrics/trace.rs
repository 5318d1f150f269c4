//! The drop trace in a metrics file: where it is stored (`/trace/dropped`, u32, N×6, one
//! row per dropped message as `drop::trace` lays it out) and how a later run loads it for
//! `--replay-trace`, checked against the run that recorded it.

use std::path::Path;

use ndarray::Ix2;

use super::attrs;
use crate::drop::{Replay, RunShape, TraceBounds, TraceError};

/// Name of the trace dataset in a metrics file.
pub const TRACE_DATASET: &str = "trace/dropped";

/// Loads the trace of the metrics file `path` for a run of shape `run`, checking that the
/// recording run had the same world size, servers, mode, model size, seed and packets,
/// that it recorded at least as many steps as this run takes, and that every row names a
/// message this run can send.
///
/// # Errors
/// Not a metrics file with a trace, or recorded under another configuration.
pub fn load_replay(path: &Path, run: &RunShape) -> Result<Replay, TraceError> {
    let invalid = |why: String| TraceError::Invalid {
        path: path.to_path_buf(),
        why,
    };
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
    let file =
        hdf5::File::open(path).map_err(|e| invalid(format!("not a readable HDF5 file ({e})")))?;
    let attr = |name: &str| file.attr(name).and_then(|a| a.read_scalar::<i64>());
    if attr(attrs::TRACE_RECORDED.name).unwrap_or(0) != 1 {
        return Err(invalid(
            "holds no drop trace (record one with --record-trace)".into(),
        ));
    }
    for (name, want) in expected {
        let found = attr(name).map_err(|_| invalid(format!("has no attribute {name}")))?;
        if found != want {
            return Err(TraceError::Mismatch {
                path: path.to_path_buf(),
                name: name.to_string(),
                found: found.to_string(),
                expected: want.to_string(),
            });
        }
    }
    let recorded = attr(attrs::STEPS_COMPLETED.name).unwrap_or(0).max(0) as u64;
    if recorded < run.total_steps {
        return Err(TraceError::Mismatch {
            path: path.to_path_buf(),
            name: attrs::STEPS_COMPLETED.name.into(),
            found: recorded.to_string(),
            expected: format!("at least {}", run.total_steps),
        });
    }
    let rows = file
        .dataset(TRACE_DATASET)
        .and_then(|d| d.read::<u32, Ix2>())
        .map_err(|e| invalid(format!("cannot read /{TRACE_DATASET}: {e}")))?;
    if rows.ncols() != 6 {
        return Err(invalid(format!(
            "/{TRACE_DATASET} has {} columns, expected 6",
            rows.ncols()
        )));
    }
    let records = rows
        .rows()
        .into_iter()
        .map(|r| [r[0], r[1], r[2], r[3], r[4], r[5]])
        .collect();
    let bounds = TraceBounds {
        world_size: run.world_size,
        blocks: if run.colocated {
            run.world_size
        } else {
            run.servers
        },
        packets: run.slots_per_step as usize,
    };
    Replay::checked(
        path,
        &format!("/{TRACE_DATASET}"),
        records,
        recorded,
        bounds,
    )
}
