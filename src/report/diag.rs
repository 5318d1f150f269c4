//! The diagnostic tables of `rps report` (runs with `--diag-every`): what one exchange's
//! drops do to the replicas against the number of ranks, the slope of that on n, and the
//! training loss of the average against a lossless twin of the same seed.

use std::collections::BTreeMap;

use super::{
    fixed4, fmt_stat, group, mean_std, sci, standard_error, Group, GroupKey, ReportError,
    RunSummary,
};
use crate::metrics::schema::{DIAG_AVG_TRAIN_LOSS, DIAG_CONSENSUS, DIAG_MEAN_ERROR, DIAG_SPREAD};
use crate::metrics::RunFile;

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
    pub(super) fn read(f: &RunFile, workers: i64) -> Result<Option<Self>, ReportError> {
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

/// With `--diag-every` runs: per group, the mean (± std over seeds) of n·mean_error/spread
/// and consensus/spread, and the last training loss of the average.
pub(super) fn tables(runs: &[RunSummary], out: &mut String) {
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
        let cells = [
            g.runs.len().to_string(),
            fmt_stat(stat(|d| d.error_ratio), sci),
            fmt_stat(stat(|d| d.consensus_ratio), sci),
            fmt_stat(stat(|d| d.avg_train_loss), fixed4),
        ];
        *out += &row(k, &cells);
    }
    slopes(&groups, out);
    outcome(runs, out);
}

/// Experiment B of the theory: for every run with drops that has a lossless twin (the
/// same configuration and seed at p = 0), Δ = loss(p) − loss(0) of x̄ at the end of the
/// run, with loss(0), per configuration (one pair per seed). Shared by the outcome table
/// and the `outcome_vs_n` figure of `rps plot`.
pub(crate) fn outcome_pairs(runs: &[RunSummary]) -> BTreeMap<GroupKey, Vec<(f64, f64)>> {
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
    rows
}

/// The outcome table: per configuration, Δ, n·Δ and Δ/loss(0) over the seeds (mean ±
/// standard error), and per family the weighted fit Δ = a + b/n over every pair (Δ ≤ 0
/// included; see [`super::claim`], which also separates arms).
fn outcome(runs: &[RunSummary], out: &mut String) {
    let rows = outcome_pairs(runs);
    if rows.is_empty() {
        return;
    }
    *out += &format!("\n| mode | model | workers | drop model | momentum | seeds | Δ = loss(p) − loss(0) of x̄ (last {TAIL} measurements), ± SE | n·Δ ± SE | Δ / loss(0) ± SE |\n|---|---|---|---|---|---|---|---|---|\n");
    let mut families: BTreeMap<GroupKey, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for (k, pairs) in &rows {
        let n = k.workers as f64;
        let deltas: Vec<f64> = pairs.iter().map(|p| p.0).collect();
        let rel: Vec<f64> = pairs.iter().map(|p| p.0 / p.1).collect();
        let scaled: Vec<f64> = deltas.iter().map(|d| n * d).collect();
        let cells = [
            pairs.len().to_string(),
            fmt_stat(standard_error(&deltas), sci),
            fmt_stat(standard_error(&scaled), sci),
            fmt_stat(standard_error(&rel), sci),
        ];
        *out += &row(k, &cells);
        // Weight 1/variance of the cell (none without a spread: left out of the fit).
        if let Some(var) = mean_std(&deltas).and_then(|m| m.std).map(|s| s * s) {
            if var > 0.0 {
                let points = deltas.iter().map(|&d| (n, d, 1.0 / var));
                families.entry(family(k)).or_default().extend(points);
            }
        }
    }
    let rows: Vec<String> = families
        .iter()
        .filter_map(|(k, points)| {
            let f = super::stats::fit_inverse(points)?;
            Some(format!(
                "| {} | {} | {} | {} | {} | {} | {} ± {} | {} ± {} |\n",
                k.mode,
                k.model,
                k.drop_model_description.replace('|', "\\|"),
                k.momentum,
                f.points,
                points.iter().filter(|p| p.1 <= 0.0).count(),
                sci(f.a),
                sci(2.0 * f.se_a),
                sci(f.b),
                sci(2.0 * f.se_b),
            ))
        })
        .collect();
    if !rows.is_empty() {
        *out += "\n| mode | model | drop model | momentum | pairs | pairs with Δ ≤ 0 | a of Δ = a + b/n, ± 2 SE | b, ± 2 SE |\n|---|---|---|---|---|---|---|---|\n";
        out.extend(rows);
    }
}

/// For each set of groups that differ only in the number of workers: the least-squares
/// slope of log(mean_error/spread) on log(n) over every run, ± twice its standard error
/// (the theory predicts −1: the error drops put into the average falls as 1/n).
fn slopes(groups: &[Group], out: &mut String) {
    let mut families: BTreeMap<GroupKey, Vec<(f64, f64)>> = BTreeMap::new();
    for g in groups {
        let family = family(&g.key);
        // Lossless runs have no drop error to fit (only the rounding of the averages).
        for d in g
            .runs
            .iter()
            .filter(|r| r.drop_rate > 0.0)
            .filter_map(|r| r.diag)
        {
            let n = g.key.workers as f64;
            if d.error_ratio > 0.0 && n > 0.0 {
                families
                    .entry(family.clone())
                    .or_default()
                    .push((n.ln(), (d.error_ratio / n).ln()));
            }
        }
    }
    // A check of the implementation, not evidence about learning: for any replicas the
    // averaging step alone gives E‖x̄ − v̄‖² = c(n, p)·spread/n (docs/results/claim.md).
    let header = "\n| mode | model | drop model | momentum | slope of log(mean_error/spread) on log(n), ± 2 SE (an identity of the averaging step: a check of the implementation) |\n|---|---|---|---|---|\n";
    fit_table(&families, header, out);
}

/// The fitted slope (± 2 SE) of every family with enough points, under `header`. Nothing
/// when no family can be fitted.
fn fit_table(families: &BTreeMap<GroupKey, Vec<(f64, f64)>>, header: &str, out: &mut String) {
    let rows: Vec<String> = families
        .iter()
        .filter_map(|(k, points)| {
            let (slope, se) = fit(points)?;
            Some(format!(
                "| {} | {} | {} | {} | {slope:.3} ± {:.3} |\n",
                k.mode,
                k.model,
                k.drop_model_description.replace('|', "\\|"),
                k.momentum,
                2.0 * se
            ))
        })
        .collect();
    if !rows.is_empty() {
        *out += header;
        out.extend(rows);
    }
}

/// A configuration with its size cleared: the family of runs that differ only in n.
pub(crate) fn family(k: &GroupKey) -> GroupKey {
    let mut family = k.clone();
    (family.world_size, family.servers, family.workers) = (0, 0, 0);
    family
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

/// A table row: the configuration's mode, model, workers, drop model and momentum, then
/// `cells`.
fn row(k: &GroupKey, cells: &[String]) -> String {
    let key = [
        k.mode.to_string(),
        k.model.to_string(),
        k.workers.to_string(),
        k.drop_model_description.replace('|', "\\|"),
        k.momentum.to_string(),
    ];
    format!("| {} | {} |\n", key.join(" | "), cells.join(" | "))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut lossless = super::super::tests::run("bernoulli(p=0)", 1, 0.8, "completed");
        (lossless.drop_rate, lossless.diag) = (0.0, diag(0.5));
        let mut lossy = super::super::tests::run("bernoulli(p=0.1)", 1, 0.8, "completed");
        lossy.diag = diag(0.6);
        let mut out = String::new();
        outcome(&[lossless, lossy], &mut out);
        // Δ = 0.1, n·Δ = 0.4 (4 workers), Δ/loss(0) = 0.2 (one seed: no standard error).
        assert!(out.contains("| 1 | 1.00e-1 | 4.00e-1 | 2.00e-1 |"), "{out}");
    }
}
