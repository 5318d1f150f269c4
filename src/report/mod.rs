//! Reading finished (or interrupted) metrics files back: one [`RunSummary`] per file,
//! runs that differ only by seed grouped into a [`Group`], and a Markdown table of the
//! groups (`rps report`). A file is an rps metrics file when it has the root attribute
//! `rps_version` and the dataset `/train/step`; anything else is refused by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::metrics::attrs::{self, Attr};
pub mod claim;
mod diag;
pub mod stats;

pub(crate) use diag::{family, outcome_pairs};
pub use diag::{DiagSummary, TAIL};
pub use stats::{mean_std, standard_error, MeanStd};

use crate::metrics::schema::{
    CONSENSUS_DISTANCE, DROPPED_DOWN, DROPPED_UP, PACKETS_DOWN, PACKETS_DROPPED_DOWN,
    PACKETS_DROPPED_UP, PACKETS_UP, SENT_DOWN, SENT_UP, TEST_ACCURACY, WALL_S,
};
pub use crate::metrics::{ReadError as ReportError, RunFile};

/// The configuration a run shares with its other seeds; groups sort by it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupKey {
    pub algorithm: String,
    pub mode: String,
    pub world_size: i64,
    pub servers: i64,
    pub workers: i64,
    pub drop_model_description: String,
    pub packet_bytes: i64,
    pub detection: String,
    pub model: String,
    pub steps: i64,
    /// The optimizer settings, as written in the file (runs that differ in them are
    /// different experiments, not seeds of one).
    pub batch_size: i64,
    pub lr: String,
    pub momentum: String,
    /// `--label-skew` α as written, empty for contiguous shards.
    pub label_skew: String,
}

/// What `rps report` needs from one metrics file.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub path: PathBuf,
    pub key: GroupKey,
    pub seed: i64,
    /// The `drop_rate` attribute (the configured i.i.d. rate).
    pub drop_rate: f64,
    pub drop_model: String,
    pub status: String,
    /// The final attributes, or the last evaluation of a run that did not finish;
    /// `None` when the run has no evaluation at all.
    pub test_accuracy: Option<f64>,
    pub consensus_distance: Option<f64>,
    pub wall_time_s: Option<f64>,
    /// Packets (messages without `--packet-bytes`) dropped and attempted, both
    /// directions, over the whole run.
    pub dropped: u64,
    pub attempted: u64,
    /// Messages dropped and attempted (sent + dropped), both directions.
    pub messages_dropped: u64,
    pub messages_attempted: u64,
    /// With `--diag-every`: mean over the measurements of n·mean_error/spread and of
    /// consensus/spread (n workers), and the last training loss of the average.
    pub diag: Option<DiagSummary>,
}

impl RunSummary {
    /// Reads one metrics file.
    ///
    /// # Errors
    /// See [`RunFile::open`]; an attribute or dataset of the wrong type.
    pub fn read(path: &Path) -> Result<Self, ReportError> {
        let f = RunFile::open(path)?;
        let s = |a: Attr| -> Result<String, ReportError> {
            Ok(f.attr_str(a.name)?.unwrap_or_else(|| "?".into()))
        };
        let i = |a: Attr| -> Result<i64, ReportError> { Ok(f.attr_i64(a.name)?.unwrap_or(0)) };
        let key = GroupKey {
            algorithm: s(attrs::ALGORITHM)?,
            mode: s(attrs::MODE)?,
            world_size: i(attrs::WORLD_SIZE)?,
            servers: i(attrs::SERVERS)?,
            workers: i(attrs::WORKERS)?,
            drop_model_description: s(attrs::DROP_MODEL_DESCRIPTION)?,
            packet_bytes: i(attrs::PACKET_BYTES)?,
            detection: s(attrs::DETECTION)?,
            model: s(attrs::MODEL)?,
            steps: i(attrs::STEPS)?,
            batch_size: i(attrs::BATCH_SIZE)?,
            lr: f
                .attr_f64(attrs::LR.name)?
                .map_or("?".into(), |v| v.to_string()),
            momentum: f
                .attr_f64(attrs::MOMENTUM.name)?
                .map_or("?".into(), |v| v.to_string()),
            label_skew: f
                .attr_f64(attrs::LABEL_SKEW.name)?
                .map_or(String::new(), |v| v.to_string()),
        };
        let test_accuracy = match f.attr_f64(attrs::FINAL_TEST_ACCURACY.name)? {
            Some(v) => Some(v),
            None => f.last(&TEST_ACCURACY)?,
        };
        // Runs of a front end that evaluates its own model (the Python package) record
        // no consensus distance: NaN in its column.
        let consensus_distance = match f.attr_f64(attrs::FINAL_CONSENSUS_DISTANCE.name)? {
            Some(v) => Some(v),
            None => f.last(&CONSENSUS_DISTANCE)?,
        }
        .filter(|v| !v.is_nan());
        let wall_time_s = match f.attr_f64(attrs::WALL_TIME_S.name)? {
            Some(v) => Some(v),
            None => f.last(&WALL_S)?,
        };
        let total = |c| f.column_total(c);
        let messages_dropped = total(&DROPPED_UP)? + total(&DROPPED_DOWN)?;
        Ok(RunSummary {
            key,
            seed: i(attrs::SEED)?,
            drop_rate: f.attr_f64(attrs::DROP_RATE.name)?.unwrap_or(0.0),
            drop_model: s(attrs::DROP_MODEL)?,
            status: f.status()?.unwrap_or_else(|| "?".into()),
            test_accuracy,
            consensus_distance,
            wall_time_s,
            dropped: total(&PACKETS_DROPPED_UP)? + total(&PACKETS_DROPPED_DOWN)?,
            attempted: total(&PACKETS_UP)? + total(&PACKETS_DOWN)?,
            messages_dropped,
            messages_attempted: messages_dropped + total(&SENT_UP)? + total(&SENT_DOWN)?,
            diag: DiagSummary::read(&f, i(attrs::WORKERS)?)?,
            path: path.into(),
        })
    }

    /// Fraction of messages the drop model discarded (0 when none were attempted).
    pub fn message_loss(&self) -> f64 {
        if self.messages_attempted == 0 {
            0.0
        } else {
            self.messages_dropped as f64 / self.messages_attempted as f64
        }
    }

    /// The x value of a run in a loss-rate plot: the configured rate for plain i.i.d.
    /// message loss, the measured fraction of packets lost with `--packet-bytes`,
    /// otherwise the measured fraction of messages lost.
    pub fn effective_drop_rate(&self) -> f64 {
        if self.key.packet_bytes > 0 && self.attempted > 0 {
            return self.dropped as f64 / self.attempted as f64;
        }
        if self.drop_model == "bernoulli"
            && self.key.packet_bytes == 0
            && self.key.drop_model_description == format!("bernoulli(p={})", self.drop_rate)
        {
            self.drop_rate
        } else {
            self.message_loss()
        }
    }
}

/// Reads every file, stopping at the first that is not a readable rps metrics file.
///
/// # Errors
/// No paths, or the first failure of [`RunSummary::read`].
pub fn summarize<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<RunSummary>, ReportError> {
    if paths.is_empty() {
        return Err(ReportError::NoFiles);
    }
    paths.iter().map(|p| RunSummary::read(p.as_ref())).collect()
}

/// Runs sharing a configuration (they differ only by seed).
#[derive(Debug, Clone)]
pub struct Group {
    pub key: GroupKey,
    pub runs: Vec<RunSummary>,
}

impl Group {
    fn stat(&self, f: impl Fn(&RunSummary) -> Option<f64>) -> Option<MeanStd> {
        mean_std(&self.runs.iter().filter_map(f).collect::<Vec<_>>())
    }
    pub fn test_accuracy(&self) -> Option<MeanStd> {
        self.stat(|r| r.test_accuracy)
    }
    pub fn consensus_distance(&self) -> Option<MeanStd> {
        self.stat(|r| r.consensus_distance)
    }
    pub fn wall_time_s(&self) -> Option<MeanStd> {
        self.stat(|r| r.wall_time_s)
    }
    pub fn seeds(&self) -> Vec<i64> {
        self.runs.iter().map(|r| r.seed).collect()
    }
    /// "completed" when every run completed, else counts per status, e.g.
    /// "2 completed, 1 interrupted".
    pub fn status(&self) -> String {
        let mut counts = BTreeMap::<&str, usize>::new();
        for r in &self.runs {
            *counts.entry(r.status.as_str()).or_default() += 1;
        }
        if counts.len() == 1 && counts.contains_key("completed") {
            return "completed".into();
        }
        counts
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Groups runs that differ only by seed, sorted by configuration; runs within a group
/// are sorted by seed.
pub fn group(runs: &[RunSummary]) -> Vec<Group> {
    let mut map = BTreeMap::<GroupKey, Vec<RunSummary>>::new();
    for r in runs {
        map.entry(r.key.clone()).or_default().push(r.clone());
    }
    map.into_iter()
        .map(|(key, mut runs)| {
            runs.sort_by_key(|r| r.seed);
            Group { key, runs }
        })
        .collect()
}

pub(crate) fn fmt_stat(s: Option<MeanStd>, fmt: fn(f64) -> String) -> String {
    match s {
        None => "–".into(),
        Some(MeanStd {
            mean, std: None, ..
        }) => fmt(mean),
        Some(MeanStd {
            mean,
            std: Some(sd),
            ..
        }) => format!("{} ± {}", fmt(mean), fmt(sd)),
    }
}

pub(crate) fn fixed4(v: f64) -> String {
    format!("{v:.4}")
}

pub(crate) fn sci(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else {
        format!("{v:.2e}")
    }
}

/// The Markdown table of `rps report`: one row per group, sorted by configuration.
pub fn markdown(runs: &[RunSummary]) -> String {
    let mut out = String::from(
        "| algorithm | mode | world / servers / workers | drop model | packet bytes | detection | model, steps, batch, lr, momentum | seeds | test accuracy | consensus distance | dropped / attempted | wall time (s) | status |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for g in group(runs) {
        let k = &g.key;
        let dropped: u64 = g.runs.iter().map(|r| r.dropped).sum();
        let attempted: u64 = g.runs.iter().map(|r| r.attempted).sum();
        let unit = if k.packet_bytes > 0 {
            "packets"
        } else {
            "messages"
        };
        let frac = if attempted > 0 {
            format!(" ({:.2}%)", 100.0 * dropped as f64 / attempted as f64)
        } else {
            String::new()
        };
        let seeds = g
            .seeds()
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(",");
        out += &format!(
            "| {} | {} | {} / {} / {} | {} | {} | {} | {}, {}, {}, {}, {}{} | {} ({}) | {} | {} | {} / {} {}{} | {} | {} |\n",
            k.algorithm,
            k.mode,
            k.world_size,
            k.servers,
            k.workers,
            k.drop_model_description.replace('|', "\\|"),
            k.packet_bytes,
            k.detection,
            k.model,
            k.steps,
            k.batch_size,
            k.lr,
            k.momentum,
            if k.label_skew.is_empty() {
                String::new()
            } else {
                format!(", label skew α={}", k.label_skew)
            },
            g.runs.len(),
            seeds,
            fmt_stat(g.test_accuracy(), fixed4),
            fmt_stat(g.consensus_distance(), sci),
            dropped,
            attempted,
            unit,
            frac,
            g.wall_time_s()
                .map(|s| format!("{:.1}", s.mean))
                .unwrap_or_else(|| "–".into()),
            g.status(),
        );
    }
    diag::tables(runs, &mut out);
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(super) fn run(desc: &str, seed: i64, acc: f64, status: &str) -> RunSummary {
        RunSummary {
            path: PathBuf::from(format!("{desc}-{seed}.h5")),
            key: GroupKey {
                algorithm: "rps".into(),
                mode: "colocated".into(),
                world_size: 4,
                servers: 4,
                workers: 4,
                drop_model_description: desc.into(),
                packet_bytes: 0,
                detection: "oracle".into(),
                model: "cnn".into(),
                steps: 10,
                batch_size: 32,
                lr: "0.05".into(),
                momentum: "0.9".into(),
                label_skew: String::new(),
            },
            seed,
            drop_rate: 0.1,
            drop_model: "bernoulli".into(),
            status: status.into(),
            test_accuracy: Some(acc),
            consensus_distance: Some(0.0),
            wall_time_s: Some(2.0),
            dropped: 10,
            attempted: 100,
            messages_dropped: 10,
            messages_attempted: 100,
            diag: None,
        }
    }

    #[test]
    fn mean_std_matches_hand_computation() {
        let s = mean_std(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(s.mean, 2.5);
        // sample variance: (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3
        assert!((s.std.unwrap() - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(s.n, 4);
        let one = mean_std(&[0.7]).unwrap();
        assert_eq!((one.mean, one.std), (0.7, None));
        assert!(mean_std(&[]).is_none());
    }

    #[test]
    fn groups_differ_only_by_seed_and_sort_by_config() {
        let runs = vec![
            run("bernoulli(p=0.1)", 2, 0.8, "completed"),
            run("bernoulli(p=0)", 1, 0.9, "completed"),
            run("bernoulli(p=0.1)", 1, 0.6, "interrupted"),
        ];
        let groups = group(&runs);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].key.drop_model_description, "bernoulli(p=0)");
        assert_eq!(groups[1].seeds(), vec![1, 2]);
        let acc = groups[1].test_accuracy().unwrap();
        assert!((acc.mean - 0.7).abs() < 1e-12);
        assert!((acc.std.unwrap() - 0.02f64.sqrt()).abs() < 1e-12);
        assert_eq!(groups[0].status(), "completed");
        assert_eq!(groups[1].status(), "1 completed, 1 interrupted");

        let table = markdown(&runs);
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(rows.len(), 2, "{table}");
        assert!(rows[0].contains("bernoulli(p=0) |"), "{table}");
        assert!(rows[0].contains("| 1 (1) | 0.9000 |"), "{table}");
        assert!(rows[1].contains("| 2 (1,2) | 0.7000 ± 0.1414 |"), "{table}");
        assert!(rows[1].contains("20 / 200 messages (10.00%)"), "{table}");
        assert!(
            rows[1].ends_with("| 1 completed, 1 interrupted |"),
            "{table}"
        );
    }

    #[test]
    fn effective_rate_is_configured_for_iid_and_measured_otherwise() {
        let mut r = run("bernoulli(p=0.1)", 1, 0.5, "completed");
        r.messages_dropped = 5;
        assert_eq!(r.effective_drop_rate(), 0.1);
        r.drop_model = "gilbert-elliott".into();
        assert_eq!(r.effective_drop_rate(), 0.05);
        r.key.packet_bytes = 1500;
        r.dropped = 20;
        assert_eq!(r.effective_drop_rate(), 0.2);
    }

    #[test]
    fn missing_and_foreign_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.h5");
        let e = summarize(&[&missing]).unwrap_err().to_string();
        assert!(e.contains("nope.h5: no such file"), "{e}");
        let text = dir.path().join("text.h5");
        std::fs::write(&text, "hello").unwrap();
        let e = summarize(&[&text]).unwrap_err().to_string();
        assert!(e.contains("text.h5: not an HDF5 file"), "{e}");
        let foreign = dir.path().join("foreign.h5");
        hdf5::File::create(&foreign).unwrap();
        let e = summarize(&[&foreign]).unwrap_err().to_string();
        assert!(
            e.contains("foreign.h5: not an rps metrics file (no root attribute rps_version)"),
            "{e}"
        );
        let none: [&Path; 0] = [];
        assert!(matches!(summarize(&none), Err(ReportError::NoFiles)));
    }
}
