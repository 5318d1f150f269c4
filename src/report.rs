//! Reading finished (or interrupted) metrics files back: one [`RunSummary`] per file,
//! runs that differ only by seed grouped into a [`Group`], and a Markdown table of the
//! groups (`rps report`). A file is an rps metrics file when it has the root attribute
//! `rps_version` and the dataset `/train/step`; anything else is refused by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::metrics::attrs::{self, Attr};
use crate::metrics::schema::{
    CONSENSUS_DISTANCE, DIAG_AVG_TRAIN_LOSS, DIAG_CONSENSUS, DIAG_MEAN_ERROR, DIAG_SPREAD,
    DROPPED_DOWN, DROPPED_UP, PACKETS_DOWN, PACKETS_DROPPED_DOWN, PACKETS_DROPPED_UP, PACKETS_UP,
    SENT_DOWN, SENT_UP, TEST_ACCURACY, WALL_S,
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

/// The diagnostics of one run, reduced to the ratios the theory speaks of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiagSummary {
    pub error_ratio: f64,
    pub consensus_ratio: f64,
    pub avg_train_loss: f64,
    /// The training loss of x̄ averaged over the last [`TAIL`] measurements.
    pub tail_loss: f64,
}

/// Diagnostic measurements the end-of-run loss of x̄ is averaged over.
pub const TAIL: usize = 10;

impl DiagSummary {
    fn read(f: &RunFile, workers: i64) -> Result<Option<Self>, ReportError> {
        let spread = f.column(&DIAG_SPREAD)?;
        let (error, consensus) = (f.column(&DIAG_MEAN_ERROR)?, f.column(&DIAG_CONSENSUS)?);
        let ratios = |v: &[f64], scale: f64| {
            let r: Vec<f64> = v
                .iter()
                .zip(&spread)
                .filter(|(_, &s)| s > 0.0)
                .map(|(x, s)| scale * x / s)
                .collect();
            r.iter().sum::<f64>() / r.len().max(1) as f64
        };
        let losses = f.column(&DIAG_AVG_TRAIN_LOSS)?;
        let tail = &losses[losses.len().saturating_sub(TAIL)..];
        let tail_loss = tail.iter().sum::<f64>() / tail.len().max(1) as f64;
        Ok(losses.last().map(|&avg_train_loss| DiagSummary {
            error_ratio: ratios(&error, workers as f64),
            consensus_ratio: ratios(&consensus, 1.0),
            avg_train_loss,
            tail_loss,
        }))
    }
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
        };
        let test_accuracy = match f.attr_f64(attrs::FINAL_TEST_ACCURACY.name)? {
            Some(v) => Some(v),
            None => f.last(&TEST_ACCURACY)?,
        };
        let consensus_distance = match f.attr_f64(attrs::FINAL_CONSENSUS_DISTANCE.name)? {
            Some(v) => Some(v),
            None => f.last(&CONSENSUS_DISTANCE)?,
        };
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

/// Mean and sample standard deviation (n − 1; `None` for fewer than two values).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanStd {
    pub mean: f64,
    pub std: Option<f64>,
    pub n: usize,
}

/// Mean and sample standard deviation of `values`, `None` when empty.
pub fn mean_std(values: &[f64]) -> Option<MeanStd> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let std = (n > 1)
        .then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt());
    Some(MeanStd { mean, std, n })
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

fn fmt_stat(s: Option<MeanStd>, fmt: fn(f64) -> String) -> String {
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

fn fixed4(v: f64) -> String {
    format!("{v:.4}")
}

fn sci(v: f64) -> String {
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
            "| {} | {} | {} / {} / {} | {} | {} | {} | {}, {}, {}, {}, {} | {} ({}) | {} | {} | {} / {} {}{} | {} | {} |\n",
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
    diag_table(runs, &mut out);
    out
}

/// With `--diag-every` runs: per group, the mean (± std over seeds) of n·mean_error/spread
/// and consensus/spread, and the last training loss of the average.
fn diag_table(runs: &[RunSummary], out: &mut String) {
    let groups: Vec<Group> = group(runs)
        .into_iter()
        .filter(|g| g.runs.iter().any(|r| r.diag.is_some()))
        .collect();
    if groups.is_empty() {
        return;
    }
    *out += "\n| mode | model | workers | drop model | momentum | seeds | n·mean_error/spread | consensus/spread | train loss of x̄ |\n|---|---|---|---|---|---|---|---|---|\n";
    for g in &groups {
        let k = &g.key;
        let stat = |f: fn(&DiagSummary) -> f64| g.stat(|r| r.diag.as_ref().map(f));
        *out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            k.mode,
            k.model,
            k.workers,
            k.drop_model_description.replace('|', "\\|"),
            k.momentum,
            g.runs.len(),
            fmt_stat(stat(|d| d.error_ratio), sci),
            fmt_stat(stat(|d| d.consensus_ratio), sci),
            fmt_stat(stat(|d| d.avg_train_loss), fixed4),
        );
    }
    slopes(&groups, out);
    outcome(runs, out);
}

/// Experiment B of the theory: for every run with drops that has a lossless twin (the
/// same configuration and seed at p = 0), Δ = loss(p) − loss(0) of x̄ at the end of the
/// run; per configuration, Δ, n·Δ and Δ/loss(0) over the seeds, and the slope of log Δ
/// on log n.
fn outcome(runs: &[RunSummary], out: &mut String) {
    let twin_key = |r: &RunSummary| {
        let mut k = r.key.clone();
        k.drop_model_description.clear();
        (k, r.seed)
    };
    let lossless: BTreeMap<(GroupKey, i64), f64> = runs
        .iter()
        .filter(|r| r.drop_rate == 0.0)
        .filter_map(|r| Some((twin_key(r), r.diag?.tail_loss)))
        .collect();
    let mut rows: BTreeMap<GroupKey, Vec<(f64, f64)>> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.drop_rate > 0.0) {
        if let (Some(d), Some(&base)) = (r.diag, lossless.get(&twin_key(r))) {
            rows.entry(r.key.clone())
                .or_default()
                .push((d.tail_loss - base, base));
        }
    }
    if rows.is_empty() {
        return;
    }
    *out += &format!("\n| mode | model | workers | drop model | momentum | seeds | Δ = loss(p) − loss(0) of x̄ (last {TAIL} measurements) | n·Δ | Δ / loss(0) |\n|---|---|---|---|---|---|---|---|---|\n");
    let mut families: BTreeMap<GroupKey, Vec<(f64, f64)>> = BTreeMap::new();
    for (k, pairs) in &rows {
        let n = k.workers as f64;
        let deltas: Vec<f64> = pairs.iter().map(|p| p.0).collect();
        let rel: Vec<f64> = pairs.iter().map(|p| p.0 / p.1).collect();
        let scaled: Vec<f64> = deltas.iter().map(|d| n * d).collect();
        *out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            k.mode,
            k.model,
            k.workers,
            k.drop_model_description.replace('|', "\\|"),
            k.momentum,
            pairs.len(),
            fmt_stat(mean_std(&deltas), sci),
            fmt_stat(mean_std(&scaled), sci),
            fmt_stat(mean_std(&rel), sci),
        );
        let mut family = k.clone();
        (family.world_size, family.servers, family.workers) = (0, 0, 0);
        let points = deltas
            .iter()
            .filter(|d| **d > 0.0)
            .map(|d| (n.ln(), d.ln()));
        families.entry(family).or_default().extend(points);
    }
    let fits: Vec<String> = families
        .iter()
        .filter_map(|(k, points)| {
            let (slope, se) = fit(points)?;
            Some(format!(
                "| {} | {} | {} | {} | {} | {:.3} ± {:.3} |\n",
                k.mode,
                k.model,
                k.drop_model_description.replace('|', "\\|"),
                k.momentum,
                points.len(),
                slope,
                2.0 * se
            ))
        })
        .collect();
    if !fits.is_empty() {
        *out += "\n| mode | model | drop model | momentum | runs with Δ > 0 | slope of log Δ on log(n), ± 2 SE |\n|---|---|---|---|---|---|\n";
        out.extend(fits);
    }
}

/// For each set of groups that differ only in the number of workers: the least-squares
/// slope of log(mean_error/spread) on log(n) over every run, ± twice its standard error
/// (the theory predicts −1: the error drops put into the average falls as 1/n).
fn slopes(groups: &[Group], out: &mut String) {
    let mut families: BTreeMap<GroupKey, Vec<(f64, f64)>> = BTreeMap::new();
    for g in groups {
        let mut family = g.key.clone();
        (family.world_size, family.servers, family.workers) = (0, 0, 0);
        for d in g.runs.iter().filter_map(|r| r.diag) {
            let n = g.key.workers as f64;
            if d.error_ratio > 0.0 && n > 0.0 {
                families
                    .entry(family.clone())
                    .or_default()
                    .push((n.ln(), (d.error_ratio / n).ln()));
            }
        }
    }
    let fits: Vec<String> = families
        .iter()
        .filter_map(|(k, points)| {
            let (slope, se) = fit(points)?;
            Some(format!(
                "| {} | {} | {} | {} | {:.3} ± {:.3} |\n",
                k.mode,
                k.model,
                k.drop_model_description.replace('|', "\\|"),
                k.momentum,
                slope,
                2.0 * se
            ))
        })
        .collect();
    if !fits.is_empty() {
        *out += "\n| mode | model | drop model | momentum | slope of log(mean_error/spread) on log(n), ± 2 SE |\n|---|---|---|---|---|\n";
        out.extend(fits);
    }
}

/// Least-squares slope of y on x and its standard error (`None` with fewer than 3 points
/// or a single x).
fn fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 3 {
        return None;
    }
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let slope = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / sxx;
    let resid: f64 = points
        .iter()
        .map(|p| (p.1 - my - slope * (p.0 - mx)).powi(2))
        .sum();
    Some((slope, (resid / (n - 2.0) / sxx).sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(desc: &str, seed: i64, acc: f64, status: &str) -> RunSummary {
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

    #[test]
    fn slopes_and_lossless_twins() {
        // y = -x + 0.5, no noise: slope -1, standard error 0.
        let points: Vec<(f64, f64)> = (1..5).map(|i| (i as f64, 0.5 - i as f64)).collect();
        let (slope, se) = fit(&points).unwrap();
        assert!((slope + 1.0).abs() < 1e-12 && se < 1e-12);
        assert!(fit(&points[..2]).is_none());
        let diag = |tail_loss| {
            Some(DiagSummary {
                error_ratio: 0.2,
                consensus_ratio: 0.1,
                avg_train_loss: tail_loss,
                tail_loss,
            })
        };
        let mut lossless = run("bernoulli(p=0)", 1, 0.8, "completed");
        (lossless.drop_rate, lossless.diag) = (0.0, diag(0.5));
        let mut lossy = run("bernoulli(p=0.1)", 1, 0.8, "completed");
        lossy.diag = diag(0.6);
        let mut out = String::new();
        outcome(&[lossless, lossy], &mut out);
        // Δ = 0.1, n·Δ = 0.4 (4 workers), Δ/loss(0) = 0.2.
        assert!(out.contains("| 1 | 1.00e-1 | 4.00e-1 | 2.00e-1 |"), "{out}");
    }
}
