//! Drop traces: every decision of a run, recorded and replayed later.
//!
//! A trace lists the *dropped* messages (or packets) of every step as rows
//! `(step, direction, src, dst, block, packet)`; every attempted message not listed was
//! delivered, so the list encodes every decision. Replaying it reproduces the original
//! run's drops, and therefore (with oracle detection) its losses, bit for bit. Where a
//! trace is stored (a dataset of the metrics file) is the metrics layer's business
//! (`metrics::trace`); this module only knows the rows.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::{Direction, DropModel, MessageId};

/// One dropped message of a trace: (step, direction, src, dst, block, packet).
pub type TraceRecord = [u32; 6];

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

    /// A replay of `records`, read from `path` (its rows named `where_` in errors) where
    /// `recorded` steps were recorded, for a run that can send what `bounds` allows.
    ///
    /// # Errors
    /// A row that names a step, rank, block or packet the run does not have.
    pub fn checked(
        path: &Path,
        where_: &str,
        records: Vec<TraceRecord>,
        recorded: u64,
        bounds: TraceBounds,
    ) -> Result<Self, TraceError> {
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
                return Err(TraceError::Invalid {
                    path: path.to_path_buf(),
                    why: format!(
                        "row {i} of {where_} names {name} {v}, but this run has only {limit} (0..{limit})"
                    ),
                });
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
