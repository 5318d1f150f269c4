//! `rps report --claim`: the paper's claim ("the influence of the drop rate diminishes
//! with the growth of the number of parameter servers") tested on paired runs.
//!
//! Every run with drops is paired with its lossless twin: the run of the same arm,
//! configuration and seed at p = 0. The arm of a run is the directory its metrics file is
//! in (each job file of an experiment writes its own), so arms that differ in how the
//! batch, the rate or the step count follow n are never mixed. Per cell (arm,
//! configuration, n) the table gives the mean paired difference Δ = outcome(p) −
//! outcome(0) with its standard error (sample sd / √pairs); per family (an arm and drop
//! model across n) it fits Δ = a + b/x by weighted least squares over every pair, Δ ≤ 0
//! included, each pair weighted by the inverse of its cell's variance, and gives a and b
//! with ± 2 standard errors (the covariance scaled by the reduced χ², so misjudged weights
//! widen the interval instead of hiding). The outcomes are the training loss of the
//! averaged model x̄ on the fixed subset of `--diag-every` (mean of the last measurements)
//! and the final test accuracy; with a target accuracy, also the steps to reach it.

use std::collections::BTreeMap;
use std::path::Path;

use super::stats::{fit_inverse, mean_se, mean_std};
use super::{GroupKey, ReportError, RunSummary};
use crate::metrics::attrs::COMPLETED;
use crate::metrics::schema::{EVAL_STEP, TEST_ACCURACY};
use crate::metrics::RunFile;

/// One run as the claim analysis sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRun {
    /// The directory of the metrics file.
    pub arm: String,
    pub run: RunSummary,
    /// First evaluated step at which the test accuracy reached the target (`None`: never,
    /// or no target).
    pub steps_to_target: Option<f64>,
}

impl ClaimRun {
    /// Reads one metrics file; `target` is the test accuracy whose first step is wanted.
    ///
    /// # Errors
    /// See [`RunSummary::read`].
    pub fn read(path: &Path, target: Option<f64>) -> Result<Self, ReportError> {
        let run = RunSummary::read(path)?;
        let steps_to_target = match target {
            None => None,
            Some(t) => {
                let f = RunFile::open(path)?;
                let (steps, acc) = (f.column(&EVAL_STEP)?, f.column(&TEST_ACCURACY)?);
                steps
                    .iter()
                    .zip(&acc)
                    .find(|(_, &a)| a >= t)
                    .map(|(&s, _)| s)
            }
        };
        let arm = path
            .parent()
            .and_then(|d| d.file_name())
            .map_or_else(|| ".".into(), |d| d.to_string_lossy().into_owned());
        Ok(ClaimRun {
            arm,
            run,
            steps_to_target,
        })
    }

    fn outcome(&self, o: Outcome) -> Option<f64> {
        match o {
            Outcome::Loss => self.run.diag.map(|d| d.tail_loss),
            Outcome::Accuracy => self.run.test_accuracy,
        }
    }
}

/// What a pair compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Training loss of x̄ on the diagnostic subset, mean of the last measurements.
    Loss,
    /// Final test accuracy of x̄.
    Accuracy,
}

impl Outcome {
    pub fn title(self) -> &'static str {
        match self {
            Outcome::Loss => "Δ training loss of the averaged model",
            Outcome::Accuracy => "Δ test accuracy",
        }
    }
    pub fn file_stem(self) -> &'static str {
        match self {
            Outcome::Loss => "claim_loss",
            Outcome::Accuracy => "claim_accuracy",
        }
    }
}

/// A cell: one arm and configuration (n included), with drops.
pub type CellKey = (String, GroupKey);

/// The lossy runs of a cell with their twins.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub pairs: Vec<(ClaimRun, ClaimRun)>,
}

impl Cell {
    /// Paired differences of `o` (pairs where either run lacks it are left out).
    pub fn deltas(&self, o: Outcome) -> Vec<f64> {
        self.pairs
            .iter()
            .filter_map(|(lossy, twin)| Some(lossy.outcome(o)? - twin.outcome(o)?))
            .collect()
    }
}

/// The completed runs with drops, each with its lossless twin (also completed), by cell;
/// runs without a twin are counted in the second value. A run that did not complete (a
/// sweep still running, a stopped job) has no final outcome and is left out: see
/// [`unfinished`].
pub fn pair(runs: &[ClaimRun]) -> (BTreeMap<CellKey, Cell>, usize) {
    let runs: Vec<&ClaimRun> = runs.iter().filter(|r| r.run.status == COMPLETED).collect();
    let twin_key = |r: &ClaimRun| {
        let mut k = r.run.key.clone();
        k.drop_model_description.clear();
        (r.arm.clone(), k, r.run.seed)
    };
    let twins: BTreeMap<_, &ClaimRun> = runs
        .iter()
        .filter(|r| r.run.drop_rate == 0.0)
        .map(|r| (twin_key(r), *r))
        .collect();
    let mut cells: BTreeMap<CellKey, Cell> = BTreeMap::new();
    let mut unpaired = 0;
    for r in runs.iter().filter(|r| r.run.drop_rate > 0.0) {
        match twins.get(&twin_key(r)) {
            Some(t) => cells
                .entry((r.arm.clone(), r.run.key.clone()))
                .or_default()
                .pairs
                .push(((*r).clone(), (*t).clone())),
            None => unpaired += 1,
        }
    }
    (cells, unpaired)
}

/// How many of `runs` did not complete (left out of every table).
pub fn unfinished(runs: &[ClaimRun]) -> usize {
    runs.iter().filter(|r| r.run.status != COMPLETED).count()
}

/// A family: an arm and configuration across the number of ranks (sizes, batch, rate and
/// steps cleared: an arm's job file sets how they follow n).
pub fn family((arm, k): &CellKey) -> (String, GroupKey) {
    let mut f = k.clone();
    (f.world_size, f.servers, f.workers) = (0, 0, 0);
    (f.batch_size, f.steps, f.lr) = (0, 0, String::new());
    (arm.clone(), f)
}

/// A count of a configuration (its workers or its servers).
pub type Count = fn(&GroupKey) -> i64;

/// A family's fit points: the name of its x, and (x, Δ, weight) per pair.
pub type FitPoints = (&'static str, Vec<(f64, f64, f64)>);

/// Which count a family's fit is against: the one that varies across its cells.
pub fn abscissa(cells: &[&CellKey]) -> (&'static str, Count) {
    let varies = |f: fn(&GroupKey) -> i64| {
        let first = cells.first().map(|c| f(&c.1));
        cells.iter().any(|c| Some(f(&c.1)) != first)
    };
    let (workers, servers): (Count, Count) = (|k| k.workers, |k| k.servers);
    if cells.iter().all(|c| c.1.mode == "colocated") {
        ("n", workers)
    } else if varies(servers) && !varies(workers) {
        ("servers", servers)
    } else {
        ("workers", workers)
    }
}

/// Per family and outcome: the points of the fit (x, Δ, weight), one per pair. A pair's
/// weight is the inverse variance of Δ in its cell; a cell with fewer than two pairs, or
/// no spread, takes the family's median cell variance.
pub fn fit_points(
    cells: &BTreeMap<CellKey, Cell>,
    o: Outcome,
) -> BTreeMap<(String, GroupKey), FitPoints> {
    let mut by_family: BTreeMap<(String, GroupKey), Vec<&CellKey>> = BTreeMap::new();
    for k in cells.keys() {
        by_family.entry(family(k)).or_default().push(k);
    }
    let mut out = BTreeMap::new();
    for (fam, keys) in by_family {
        let (name, x_of) = abscissa(&keys);
        let var = |k: &CellKey| {
            mean_std(&cells[k].deltas(o))
                .and_then(|m| m.std)
                .map(|s| s * s)
                .filter(|v| *v > 0.0)
        };
        let mut known: Vec<f64> = keys.iter().filter_map(|k| var(k)).collect();
        known.sort_by(f64::total_cmp);
        let Some(&median) = known.get(known.len() / 2) else {
            continue;
        };
        let points: Vec<(f64, f64, f64)> = keys
            .iter()
            .flat_map(|k| {
                let w = 1.0 / var(k).unwrap_or(median);
                let x = x_of(&k.1) as f64;
                cells[*k].deltas(o).into_iter().map(move |d| (x, d, w))
            })
            .collect();
        if !points.is_empty() {
            out.insert(fam, (name, points));
        }
    }
    out
}

fn num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e-2 && v.abs() < 1e3 {
        format!("{v:.4}")
    } else {
        format!("{v:.2e}")
    }
}

fn mean_se_cell(values: &[f64]) -> String {
    match mean_se(values) {
        None => "–".into(),
        Some((m, None)) => num(m),
        Some((m, Some(se))) => format!("{} ± {}", num(m), num(se)),
    }
}

/// The first cells of a row of the claim's tables: arm, run, drop model, servers /
/// workers (the row goes on from the trailing space).
fn key_cells(arm: &str, k: &GroupKey) -> String {
    let drop = k.drop_model_description.replace('|', "\\|");
    format!(
        "| {arm} | {} | {drop} | {} / {} ",
        describe(k),
        k.servers,
        k.workers
    )
}

fn describe(k: &GroupKey) -> String {
    let mut s = format!("{} {}", k.model, k.mode);
    if !k.label_skew.is_empty() {
        s += &format!(", label skew α={}", k.label_skew);
    }
    if k.momentum != "0" && k.momentum != "?" {
        s += &format!(", momentum {}", k.momentum);
    }
    s
}

/// The Markdown of `rps report --claim`.
pub fn markdown(runs: &[ClaimRun], target: Option<f64>) -> String {
    let (cells, unpaired) = pair(runs);
    let mut out = String::new();
    let wall: f64 = runs.iter().filter_map(|r| r.run.wall_time_s).sum();
    out += &format!(
        "{} runs, {:.1} h of run time in all (the sum of their `wall_time_s`).\n\n",
        runs.len(),
        wall / 3600.0
    );
    out += "Per cell: mean ± standard error over the paired seeds of Δ = outcome(p) − outcome(0), each run with drops against its lossless twin (same arm, configuration and seed).\n\n";
    out += "| arm | run | drop model | servers / workers | global batch | lr | steps | samples seen | pairs | loss(0) of x̄ | Δ loss of x̄ | Δ loss / loss(0) | accuracy(0) | Δ accuracy | n·error/spread | consensus/spread |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for ((arm, k), cell) in &cells {
        let twins = |f: fn(&ClaimRun) -> Option<f64>| -> Vec<f64> {
            cell.pairs.iter().filter_map(|(_, t)| f(t)).collect()
        };
        let lossy = |f: fn(&ClaimRun) -> Option<f64>| -> Vec<f64> {
            cell.pairs.iter().filter_map(|(l, _)| f(l)).collect()
        };
        let rel: Vec<f64> = cell
            .pairs
            .iter()
            .filter_map(|(l, t)| {
                let (a, b) = (l.outcome(Outcome::Loss)?, t.outcome(Outcome::Loss)?);
                Some((a - b) / b)
            })
            .collect();
        let global = k.batch_size * k.workers;
        out += &format!(
            "{}| {global} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            key_cells(arm, k),
            k.lr,
            k.steps,
            global * k.steps,
            cell.pairs.len(),
            mean_se_cell(&twins(|r| r.outcome(Outcome::Loss))),
            mean_se_cell(&cell.deltas(Outcome::Loss)),
            mean_se_cell(&rel),
            mean_se_cell(&twins(|r| r.outcome(Outcome::Accuracy))),
            mean_se_cell(&cell.deltas(Outcome::Accuracy)),
            mean_se_cell(&lossy(|r| r.run.diag.map(|d| d.error_ratio))),
            mean_se_cell(&lossy(|r| r.run.diag.map(|d| d.consensus_ratio))),
        );
    }
    if let Some(t) = target {
        out += &format!("\nSteps to a test accuracy of {t} (first evaluation at or above it; mean ± SE over the seeds that reached it, and how many did):\n\n| arm | run | drop model | servers / workers | lossless | with drops | paired difference |\n|---|---|---|---|---|---|---|\n");
        for ((arm, k), cell) in &cells {
            let steps = |pick: fn(&(ClaimRun, ClaimRun)) -> &ClaimRun| -> String {
                let v: Vec<f64> = cell
                    .pairs
                    .iter()
                    .filter_map(|p| pick(p).steps_to_target)
                    .collect();
                format!("{} ({} of {})", mean_se_cell(&v), v.len(), cell.pairs.len())
            };
            let diff: Vec<f64> = cell
                .pairs
                .iter()
                .filter_map(|(l, t)| Some(l.steps_to_target? - t.steps_to_target?))
                .collect();
            out += &format!(
                "{}| {} | {} | {} |\n",
                key_cells(arm, k),
                steps(|p| &p.1),
                steps(|p| &p.0),
                mean_se_cell(&diff),
            );
        }
    }
    for o in [Outcome::Loss, Outcome::Accuracy] {
        let fits = fit_points(&cells, o);
        let rows: Vec<String> = fits
            .iter()
            .filter_map(|((arm, k), (x, points))| {
                let f = fit_inverse(points)?;
                let nonpositive = points
                    .iter()
                    .filter(|p| match o {
                        Outcome::Loss => p.1 <= 0.0,
                        Outcome::Accuracy => p.1 >= 0.0,
                    })
                    .count();
                Some(format!(
                    "| {arm} | {} | {} | {x} | {} | {nonpositive} | {} ± {} | {} ± {} | {:.2} |\n",
                    describe(k),
                    k.drop_model_description.replace('|', "\\|"),
                    f.points,
                    num(f.a),
                    num(2.0 * f.se_a),
                    num(f.b),
                    num(2.0 * f.se_b),
                    f.reduced_chi2
                ))
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        let (worse, unit) = match o {
            Outcome::Loss => ("Δ ≤ 0", "loss"),
            Outcome::Accuracy => ("Δ ≥ 0", "accuracy"),
        };
        out += &format!("\nFit of {} = a + b/x over every pair (weighted least squares, weights 1/variance of the cell; ± 2 SE). a is the cost of drops that does not fall with x, b the part that falls as 1/x; the claim predicts a ≈ 0 and b of the sign of a cost ({}).\n\n| arm | run | drop model | x | pairs | pairs with {worse} | a ± 2 SE | b ± 2 SE | reduced χ² |\n|---|---|---|---|---|---|---|---|---|\n", o.title(), if unit == "loss" { "b > 0" } else { "b < 0" });
        out.extend(rows);
    }
    let unfinished = unfinished(runs);
    if unfinished > 0 {
        out += &format!("\n{unfinished} run(s) did not complete (status other than `completed`) and are not in these tables.\n");
    }
    if unpaired > 0 {
        out += &format!(
            "\n{unpaired} run(s) with drops have no lossless twin and are not in these tables.\n"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inverse_fit_recovers_a_and_b() {
        // y = 0.5 + 2/x exactly: a = 0.5, b = 2, no residual.
        let pts: Vec<(f64, f64, f64)> = [2.0, 4.0, 8.0, 16.0]
            .iter()
            .map(|&x| (x, 0.5 + 2.0 / x, 1.0))
            .collect();
        let f = fit_inverse(&pts).unwrap();
        assert!(
            (f.a - 0.5).abs() < 1e-12 && (f.b - 2.0).abs() < 1e-12,
            "{f:?}"
        );
        assert!(f.se_b < 1e-9);
        // One x only: nothing to fit.
        assert!(fit_inverse(&[(2.0, 1.0, 1.0), (2.0, 2.0, 1.0), (2.0, 3.0, 1.0)]).is_none());
        // Noise: symmetric residuals around y = 1 + 0/x give b ≈ 0 with a positive SE;
        // a point weighted 100× pulls the fit towards it.
        let noisy = [(2.0, 1.1), (2.0, 0.9), (8.0, 1.1), (8.0, 0.9)].map(|(x, y)| (x, y, 1.0));
        let f = fit_inverse(&noisy).unwrap();
        assert!(f.b.abs() < 1e-12 && f.se_b > 0.0 && (f.a - 1.0).abs() < 1e-12);
        let weighted = [
            (2.0, 1.1, 100.0),
            (2.0, 0.9, 1.0),
            (8.0, 1.0, 1.0),
            (8.0, 1.0, 1.0),
        ];
        let f = fit_inverse(&weighted).unwrap();
        assert!(f.a + f.b / 2.0 > 1.09, "{f:?}");
    }

    #[test]
    fn runs_pair_with_the_twin_of_their_arm_and_seed() {
        let run = |arm: &str, desc: &str, p: f64, seed: i64, acc: f64| {
            let mut r = super::super::tests::run(desc, seed, acc, "completed");
            r.drop_rate = p;
            ClaimRun {
                arm: arm.into(),
                run: r,
                steps_to_target: None,
            }
        };
        let runs = [
            run("a", "bernoulli(p=0)", 0.0, 1, 0.80),
            run("a", "bernoulli(p=0)", 0.0, 2, 0.90),
            run("a", "bernoulli(p=0.1)", 0.1, 1, 0.75),
            run("a", "bernoulli(p=0.1)", 0.1, 2, 0.80),
            // Another arm's twin is not this arm's: unpaired.
            run("b", "bernoulli(p=0.1)", 0.1, 1, 0.5),
            // Still running: no final outcome, left out.
            ClaimRun {
                run: RunSummary {
                    status: "running".into(),
                    ..run("a", "bernoulli(p=0.1)", 0.1, 3, 0.1).run
                },
                ..run("a", "bernoulli(p=0.1)", 0.1, 3, 0.1)
            },
        ];
        let (cells, unpaired) = pair(&runs);
        assert_eq!((cells.len(), unpaired), (1, 1));
        let cell = cells.values().next().unwrap();
        let mut d = cell.deltas(Outcome::Accuracy);
        d.sort_by(f64::total_cmp);
        assert!(
            (d[0] + 0.10).abs() < 1e-12 && (d[1] + 0.05).abs() < 1e-12,
            "{d:?}"
        );
        let md = markdown(&runs, None);
        assert!(
            md.contains("| a | cnn colocated, momentum 0.9 | bernoulli(p=0.1) | 4 / 4 | 128 |"),
            "{md}"
        );
        assert!(md.contains("-0.0750 ± 0.0250"), "{md}");
        assert!(
            md.contains("1 run(s) with drops have no lossless twin"),
            "{md}"
        );
        assert!(md.contains("1 run(s) did not complete"), "{md}");
    }

    #[test]
    fn standard_errors_are_of_the_mean() {
        let (m, se) = mean_se(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        // sd = 1.2910, SE = sd / 2.
        assert!((m - 2.5).abs() < 1e-12 && (se.unwrap() - 0.645_497).abs() < 1e-6);
        assert_eq!(mean_se(&[1.0]), Some((1.0, None)));
    }
}
