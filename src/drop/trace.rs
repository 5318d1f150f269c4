//! Drop traces: every decision of a run, recorded in its metrics file and replayed later.
//!
//! A trace lists the *dropped* messages (or packets) of every step as rows
//! `(step, direction, src, dst, block, packet)` in `/trace/dropped` (u32, N×6); every
//! attempted message not listed was delivered, so the list encodes every decision.
//! Replaying it reproduces the original run's drops, and therefore (with oracle
//! detection) its losses, bit for bit.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ndarray::Ix2;
use thiserror::Error;

use super::{Direction, DropModel, MessageId};
use crate::metrics::attrs;

/// One dropped message of a trace: (step, direction, src, dst, block, packet).
pub type TraceRecord = [u32; 6];

/// Name of the trace dataset in a metrics file.
pub const TRACE_DATASET: &str = "trace/dropped";

#[derive(Debug, Error)]
pub enum TraceError {
    #[error("--replay-trace {path}: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("--replay-trace {path}: recorded with {name} = {found}, this run has {expected}; a trace replays only under the configuration that recorded it")]
    Mismatch {
        path: PathBuf,
        name: String,
        found: String,
        expected: String,
    },
}

/// Converts a message to its trace row.
pub fn record(m: &MessageId) -> TraceRecord {
    [
        m.step as u32,
        m.direction as u32,
        m.src as u32,
        m.dst as u32,
        m.block as u32,
        m.packet,
    ]
}

/// Replays a recorded trace: a message is dropped iff the trace lists it.
#[derive(Debug, Clone)]
pub struct Replay {
    source: PathBuf,
    dropped: HashSet<MessageId>,
}

/// What a run can send: every row of a replayed trace must fall inside these.
#[derive(Debug, Clone, Copy)]
pub struct TraceBounds {
    pub world_size: usize,
    pub blocks: usize,
    /// Packets per block (1 when whole blocks are the unit of loss).
    pub packets: usize,
}

impl Replay {
    pub fn from_records(source: PathBuf, rows: impl IntoIterator<Item = TraceRecord>) -> Self {
        let dropped = rows
            .into_iter()
            .map(|r| MessageId {
                step: r[0] as u64,
                direction: if r[1] == 0 {
                    Direction::Up
                } else {
                    Direction::Down
                },
                src: r[2] as usize,
                dst: r[3] as usize,
                block: r[4] as usize,
                packet: r[5],
            })
            .collect();
        Replay { source, dropped }
    }

    /// Loads the trace of a metrics file, checking that the recording run's integer
    /// attributes named in `expected` equal this run's, that it recorded at least `steps`
    /// steps, and that every row names a message this run can send (`bounds`).
    ///
    /// # Errors
    /// Not a metrics file with a trace, or recorded under another configuration.
    pub fn load(
        path: &Path,
        expected: &[(&str, i64)],
        steps: u64,
        bounds: TraceBounds,
    ) -> Result<Self, TraceError> {
        let invalid = |why: String| TraceError::Invalid {
            path: path.to_path_buf(),
            why,
        };
        let file = hdf5::File::open(path)
            .map_err(|e| invalid(format!("not a readable HDF5 file ({e})")))?;
        let attr = |name: &str| file.attr(name).and_then(|a| a.read_scalar::<i64>());
        if attr(attrs::TRACE_RECORDED.name).unwrap_or(0) != 1 {
            return Err(invalid(
                "holds no drop trace (record one with --record-trace)".into(),
            ));
        }
        for (name, want) in expected {
            let found = attr(name).map_err(|_| invalid(format!("has no attribute {name}")))?;
            if found != *want {
                return Err(TraceError::Mismatch {
                    path: path.to_path_buf(),
                    name: name.to_string(),
                    found: found.to_string(),
                    expected: want.to_string(),
                });
            }
        }
        let recorded = attr(attrs::STEPS_COMPLETED.name).unwrap_or(0).max(0) as u64;
        if recorded < steps {
            return Err(TraceError::Mismatch {
                path: path.to_path_buf(),
                name: attrs::STEPS_COMPLETED.name.into(),
                found: recorded.to_string(),
                expected: format!("at least {steps}"),
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
            .collect::<Vec<_>>();
        let limits = [
            ("step", recorded),
            ("direction", 2),
            ("source rank", bounds.world_size as u64),
            ("destination rank", bounds.world_size as u64),
            ("block", bounds.blocks as u64),
            ("packet", bounds.packets as u64),
        ];
        for (i, r) in records.iter().enumerate() {
            if let Some(((name, limit), v)) =
                limits.iter().zip(r).find(|((_, l), &v)| u64::from(v) >= *l)
            {
                return Err(invalid(format!(
                    "row {i} of /{TRACE_DATASET} names {name} {v}, but this run has only {limit} (0..{limit})"
                )));
            }
        }
        Ok(Self::from_records(path.to_path_buf(), records))
    }

    /// Drop decisions recorded.
    pub fn len(&self) -> usize {
        self.dropped.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dropped.is_empty()
    }
}

impl DropModel for Replay {
    fn drops(&self, m: &MessageId) -> bool {
        self.dropped.contains(m)
    }

    fn describe(&self) -> String {
        format!(
            "replay({}, {} dropped messages)",
            self.source.display(),
            self.dropped.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let m = MessageId {
            step: 7,
            direction: Direction::Down,
            src: 0,
            dst: 3,
            block: 1,
            packet: 4,
        };
        let replay = Replay::from_records("t".into(), [record(&m)]);
        assert!(replay.drops(&m));
        assert!(!replay.drops(&MessageId { packet: 5, ..m }));
        assert!(!replay.drops(&MessageId {
            direction: Direction::Up,
            ..m
        }));
    }
}
