//! What a metrics file records, declared once: [`STEP_COLUMNS`] and [`EVAL_COLUMNS`]
//! are the HDF5 datasets derived from the per-step counters ([`StepCounters`], declared
//! in `crate::counters`), with name, type, unit and meaning. Writers, readers, checkpoints and the
//! generated reference (docs/metrics.md) all take names from here, never from literals.

use std::fmt::Write as _;

use crate::counters::StepCounters;

/// The HDF5 element type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    U64,
    F64,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::U64 => "u64",
            Kind::F64 => "f64",
        }
    }
}

/// One step, reduced over every rank: what [`STEP_COLUMNS`] are computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepRow {
    /// 1-based index of the step.
    pub step: u64,
    /// Ranks that contributed (for means over ranks).
    pub ranks: usize,
    /// The sum over ranks.
    pub sum: StepCounters,
}

impl StepRow {
    /// The rows of the last steps up to step `done`, from their counters summed over
    /// `ranks` ranks and laid end to end ([`StepCounters::to_flat`], one block a step).
    pub fn rows(flat: &[f64], done: u64, ranks: usize) -> Vec<StepRow> {
        let first = done - (flat.len() / StepCounters::LEN) as u64;
        flat.chunks_exact(StepCounters::LEN)
            .enumerate()
            .map(|(k, f)| StepRow {
                step: first + k as u64 + 1,
                ranks,
                sum: StepCounters::from_flat(f),
            })
            .collect()
    }
}

/// One evaluation of the averaged model: what [`EVAL_COLUMNS`] are computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EvalRecord {
    /// Steps completed when the evaluation ran.
    pub step: u64,
    pub test_loss: f64,
    pub test_accuracy: f64,
    /// Mean over workers of ‖x_i − x̄‖².
    pub consensus_distance: f64,
    pub wall_s: f64,
}

/// A 1-D extendable dataset of the metrics file, one row per step or evaluation.
#[derive(Debug, Clone, Copy)]
pub struct Column<R> {
    /// Path in the file (`group/name`).
    pub name: &'static str,
    pub kind: Kind,
    pub unit: &'static str,
    pub doc: &'static str,
    /// The value of one row (cast to the column's kind when written).
    pub value: fn(&R) -> f64,
}

/// Declares columns once: a constant per column and the list of all of them.
macro_rules! columns {
    ($list:ident: $row:ty { $( $(#[doc = $doc:literal])+ $konst:ident = $name:literal, $kind:ident, $unit:literal, $value:expr; )+ }) => {
        $(
            #[doc = concat!("`/", $name, "`:", $($doc),+)]
            pub const $konst: Column<$row> = Column {
                name: $name,
                kind: Kind::$kind,
                unit: $unit,
                doc: concat!($($doc),+),
                value: $value,
            };
        )+
        /// Every column of this kind of row, in the order of the reference.
        pub const $list: &[Column<$row>] = &[$($konst),+];
    };
}

/// `(a − b)` for counts that cannot be negative (clamped where timing made them so).
fn missing(a: u64, b: u64) -> f64 {
    a.saturating_sub(b) as f64
}

fn mean(sum: f64, count: u64) -> f64 {
    sum / count.max(1) as f64
}

columns! {
    STEP_COLUMNS: StepRow {
        /// 1-based index of the step.
        STEP = "train/step", U64, "step", |r| r.step as f64;
        /// Mean training loss over the workers' minibatches.
        LOSS = "train/loss", F64, "nats", |r| mean(r.sum.loss_sum, r.sum.count);
        /// Fraction of the workers' minibatch samples classified correctly.
        ACCURACY = "train/accuracy", F64, "fraction", |r| mean(r.sum.correct as f64, r.sum.count);
        /// Worker→server messages posted (at least one packet survived the drop model).
        SENT_UP = "comm/sent_up", U64, "messages", |r| r.sum.sent_up as f64;
        /// Worker→server messages the drop model discarded entirely.
        DROPPED_UP = "comm/dropped_up", U64, "messages", |r| r.sum.dropped_up as f64;
        /// Server→worker messages posted.
        SENT_DOWN = "comm/sent_down", U64, "messages", |r| r.sum.sent_down as f64;
        /// Server→worker messages the drop model discarded entirely.
        DROPPED_DOWN = "comm/dropped_down", U64, "messages", |r| r.sum.dropped_down as f64;
        /// Payload bytes of the packets that were not dropped (the all-reduce baseline records 0).
        BYTES_SENT = "comm/bytes_sent", U64, "bytes", |r| r.sum.bytes_sent as f64;
        /// Worker→server packets attempted (equal to messages without --packet-bytes).
        PACKETS_UP = "comm/packets_up", U64, "packets", |r| r.sum.packets_up as f64;
        /// Worker→server packets the drop model discarded.
        PACKETS_DROPPED_UP = "comm/packets_dropped_up", U64, "packets", |r| r.sum.packets_dropped_up as f64;
        /// Server→worker packets attempted.
        PACKETS_DOWN = "comm/packets_down", U64, "packets", |r| r.sum.packets_down as f64;
        /// Server→worker packets the drop model discarded.
        PACKETS_DROPPED_DOWN = "comm/packets_dropped_down", U64, "packets", |r| r.sum.packets_dropped_down as f64;
        /// Worker→server messages posted but not received before the deadline (0 with oracle detection).
        MISSED_UP = "comm/missed_up", U64, "messages", |r| missing(r.sum.sent_up, r.sum.received_up);
        /// Server→worker messages posted but not received before the deadline.
        MISSED_DOWN = "comm/missed_down", U64, "messages", |r| missing(r.sum.sent_down, r.sum.received_down);
        /// Messages (datagrams with --transport udp) that arrived after their deadline and were discarded, including those drained at evaluations.
        LATE = "comm/late", U64, "messages", |r| r.sum.late as f64;
        /// Worker→server packets sent but not received in time: what a real network lost with --transport udp, or late (0 with oracle detection).
        PACKETS_MISSED_UP = "comm/packets_missed_up", U64, "packets",
            |r| missing(r.sum.packets_up, r.sum.packets_dropped_up + r.sum.packets_received_up);
        /// Server→worker packets sent but not received in time.
        PACKETS_MISSED_DOWN = "comm/packets_missed_down", U64, "packets",
            |r| missing(r.sum.packets_down, r.sum.packets_dropped_down + r.sum.packets_received_down);
        /// Datagrams or messages refused: foreign sender or job, a MAC that does not verify, a replayed datagram, a malformed header, or a header that does not fit what the receiver awaits.
        REJECTED = "comm/rejected", U64, "datagrams", |r| r.sum.rejected as f64;
        /// Datagrams lost on the hosts, not on the network (--transport udp): refused by the sender's stack, or dropped by the receiver's kernel with its socket's buffer full. Such losses mean the job outran its hosts.
        HOST_LOSSES = "comm/host_losses", U64, "datagrams", |r| r.sum.host_losses as f64;
        /// Mean over ranks of the time in the local step (data, forward, backward, update).
        COMPUTE_S = "time/compute_s", F64, "s", |r| r.sum.compute_s / r.ranks.max(1) as f64;
        /// Mean over ranks of the time in the exchange.
        COMM_S = "time/comm_s", F64, "s", |r| r.sum.comm_s / r.ranks.max(1) as f64;
        /// Seconds since training started (restarts from 0 at a resume), on rank 0, at the end of the step.
        WALL_S = "time/wall_s", F64, "s", |r| r.sum.wall_s;
    }
}

columns! {
    EVAL_COLUMNS: EvalRecord {
        /// Steps completed when the evaluation ran.
        EVAL_STEP = "eval/step", U64, "step", |e| e.step as f64;
        /// Mean loss of the averaged model x̄ on the test set.
        TEST_LOSS = "eval/test_loss", F64, "nats", |e| e.test_loss;
        /// Test accuracy of the averaged model x̄.
        TEST_ACCURACY = "eval/test_accuracy", F64, "fraction", |e| e.test_accuracy;
        /// Mean over workers of ‖x_i − x̄‖², the direct cost of drops (NaN in runs of the Python package, whose script evaluates its own model).
        CONSENSUS_DISTANCE = "eval/consensus_distance", F64, "parameter²", |e| e.consensus_distance;
        /// Seconds since training started.
        EVAL_WALL_S = "eval/wall_s", F64, "s", |e| e.wall_s;
    }
}

/// One diagnostic measurement (`--diag-every`): what the drops did to the replicas at
/// one step, measured with reliable collectives that do not change the run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DiagRecord {
    /// The step measured (1-based).
    pub step: u64,
    /// (1/n)Σ‖v_i − v̄‖²: the spread of the worker replicas before the exchange.
    pub spread: f64,
    /// ‖x̄ − v̄‖²: how far the exchange moved the average of the replicas.
    pub mean_error: f64,
    /// (1/n)Σ‖x_i − x̄‖² after the exchange.
    pub consensus: f64,
    /// Training loss of x̄ on a fixed subset of the training set.
    pub avg_train_loss: f64,
}

columns! {
    DIAG_COLUMNS: DiagRecord {
        /// The step measured (1-based), every --diag-every steps.
        DIAG_STEP = "diag/step", U64, "step", |d| d.step as f64;
        /// (1/n)Σ‖v_i − v̄‖² over the n workers: the spread of the replicas after their local step, before the exchange.
        DIAG_SPREAD = "diag/spread", F64, "parameter²", |d| d.spread;
        /// ‖x̄ − v̄‖²: what the exchange (its drops) did to the average of the replicas; at p = 0 only the f32 rounding of the servers' averages.
        DIAG_MEAN_ERROR = "diag/mean_error", F64, "parameter²", |d| d.mean_error;
        /// (1/n)Σ‖x_i − x̄‖² after the exchange (0 without drops).
        DIAG_CONSENSUS = "diag/consensus", F64, "parameter²", |d| d.consensus;
        /// Mean training loss of the averaged model x̄ on a fixed subset of the training set (the first samples of each worker's shard, 1,024 in all at most).
        DIAG_AVG_TRAIN_LOSS = "diag/avg_train_loss", F64, "nats", |d| d.avg_train_loss;
    }
}

/// A per-link matrix written at the end of a run: servers × workers, u64.
#[derive(Debug, Clone, Copy)]
pub struct LinkMatrix {
    pub name: &'static str,
    pub doc: &'static str,
}

/// Per-link totals, in the order the driver computes them.
pub const LINK_MATRICES: [LinkMatrix; 6] = [
    LinkMatrix {
        name: "links/sent_up",
        doc: "worker→server messages posted",
    },
    LinkMatrix {
        name: "links/dropped_up",
        doc: "worker→server messages the drop model discarded",
    },
    LinkMatrix {
        name: "links/missed_up",
        doc: "worker→server messages posted but not received in time",
    },
    LinkMatrix {
        name: "links/sent_down",
        doc: "server→worker messages posted",
    },
    LinkMatrix {
        name: "links/dropped_down",
        doc: "server→worker messages the drop model discarded",
    },
    LinkMatrix {
        name: "links/missed_down",
        doc: "server→worker messages posted but not received in time",
    },
];

/// The groups every metrics file has.
pub const GROUPS: [&str; 5] = ["train", "eval", "comm", "time", "diag"];

/// The reference of the per-step, per-evaluation and per-link datasets, in Markdown
/// (docs/metrics.md is this text; a test keeps it current).
pub fn markdown() -> String {
    let mut s = String::from(
        "# Metrics file: datasets\n\n\
         <!-- Generated from src/metrics/schema.rs by `cargo test` (RPS_UPDATE_DOCS=1 rewrites it); do not edit. -->\n\n\
         Every dataset below is 1-D, chunked and extendable; rank 0 appends one row per step\n\
         (per evaluation for `eval/`). Counts are summed over all ranks. The root attributes\n\
         (configuration, environment, status) are described in [formats.md](formats.md).\n\n\
         ## One row per step\n\n| dataset | type | unit | meaning |\n|---|---|---|---|\n",
    );
    let row = |s: &mut String, name: &str, kind: Kind, unit: &str, doc: &str| {
        let _ = writeln!(s, "| `/{name}` | {} | {unit} | {doc} |", kind.name());
    };
    for c in STEP_COLUMNS {
        row(&mut s, c.name, c.kind, c.unit, c.doc);
    }
    s.push_str(
        "\n## One row per evaluation\n\n| dataset | type | unit | meaning |\n|---|---|---|---|\n",
    );
    for c in EVAL_COLUMNS {
        row(&mut s, c.name, c.kind, c.unit, c.doc);
    }
    s.push_str("\n## One row per diagnostic measurement (`--diag-every K`; empty without it)\n\n| dataset | type | unit | meaning |\n|---|---|---|---|\n");
    for c in DIAG_COLUMNS {
        row(&mut s, c.name, c.kind, c.unit, c.doc);
    }
    s.push_str(
        "\n## Per link, at the end of the run\n\n\
         Matrices of u64, one row per server rank and one column per worker rank (attributes\n\
         `rows` and `columns` say which), summed over the whole run. In co-located mode both\n\
         are all ranks and the diagonal is 0: a server's own block never crosses the network.\n\n\
         | dataset | meaning |\n|---|---|\n",
    );
    for m in LINK_MATRICES {
        let _ = writeln!(s, "| `/{}` | {} |", m.name, m.doc);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_round_trip_through_their_flat_form() {
        let c = StepCounters {
            loss_sum: 1.5,
            count: 7,
            rejected: 3,
            wall_s: 0.25,
            ..Default::default()
        };
        let mut flat = Vec::new();
        c.to_flat(&mut flat);
        assert_eq!(flat.len(), StepCounters::LEN);
        assert_eq!(StepCounters::from_flat(&flat), c);
        let mut twice = c;
        twice.add(&c);
        assert_eq!(twice.count, 14);
        assert_eq!(twice.loss_sum, 3.0);
    }

    #[test]
    fn column_names_are_unique_and_grouped() {
        let mut names: Vec<&str> = STEP_COLUMNS
            .iter()
            .map(|c| c.name)
            .chain(EVAL_COLUMNS.iter().map(|c| c.name))
            .chain(DIAG_COLUMNS.iter().map(|c| c.name))
            .chain(LINK_MATRICES.iter().map(|m| m.name))
            .collect();
        for n in &names {
            let group = n.split('/').next().unwrap_or_default();
            assert!(GROUPS.contains(&group) || group == "links", "{n}");
        }
        let len = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), len, "duplicate column name");
    }

    #[test]
    fn derived_columns() {
        let row = StepRow {
            step: 3,
            ranks: 2,
            sum: StepCounters {
                loss_sum: 6.0,
                correct: 1,
                count: 4,
                sent_up: 5,
                received_up: 3,
                packets_up: 10,
                packets_dropped_up: 2,
                packets_received_up: 7,
                compute_s: 1.0,
                ..Default::default()
            },
        };
        assert_eq!((LOSS.value)(&row), 1.5);
        assert_eq!((ACCURACY.value)(&row), 0.25);
        assert_eq!((MISSED_UP.value)(&row), 2.0);
        assert_eq!((PACKETS_MISSED_UP.value)(&row), 1.0);
        assert_eq!((COMPUTE_S.value)(&row), 0.5);
        assert_eq!((STEP.value)(&row), 3.0);
    }
}
