//! The figures of the theory experiments (runs with `--diag-every`): what one exchange's
//! drops do to the replicas against n (`diag_vs_n`), and the cost of drops in the training
//! loss of the average against n (`outcome_vs_n`).

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::style::{font, legend, pick};
use super::{summaries, Series};
use std::collections::BTreeMap;

use crate::report::{family, group, mean_std, GroupKey};

/// With `--diag-every` runs: n·mean_error/spread (solid; flat when the error drops put
/// into the average falls as 1/n) and consensus/spread (dashed) against the number of
/// workers, log-log, one colour per drop model and momentum, mean over seeds.
pub(super) fn diag_vs_n<DB: DrawingBackend<ErrorType: 'static>>(
    root: &DrawingArea<DB, Shift>,
    runs: &[Series],
) -> Result<()> {
    let summaries = summaries(runs);
    // (family label, n, error ratio, consensus ratio), means over seeds.
    let mut points: Vec<(String, f64, f64, f64)> = Vec::new();
    for g in group(&summaries) {
        let d: Vec<_> = g.runs.iter().filter_map(|r| r.diag).collect();
        let (Some(e), Some(c)) = (
            mean_std(&d.iter().map(|d| d.error_ratio).collect::<Vec<_>>()),
            mean_std(&d.iter().map(|d| d.consensus_ratio).collect::<Vec<_>>()),
        ) else {
            continue;
        };
        let family = format!(
            "{}, {}, momentum {}",
            g.key.model, g.key.drop_model_description, g.key.momentum
        );
        points.push((family, g.key.workers as f64, e.mean, c.mean));
    }
    points.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let positive = |v: f64| v > 0.0 && v.is_finite();
    let ys: Vec<f64> = points
        .iter()
        .flat_map(|p| [p.2, p.3])
        .filter(|v| positive(*v))
        .collect();
    let (y_lo, y_hi) = (
        ys.iter().copied().fold(f64::INFINITY, f64::min).min(1.0) / 1.5,
        ys.iter().copied().fold(0.0, f64::max).max(1e-3) * 1.5,
    );
    let n_max = points.iter().map(|p| p.1).fold(2.0, f64::max);
    let mut chart = ChartBuilder::on(root)
        .caption(
            "What one exchange's drops do (solid: n·mean_error/spread, dashed: consensus/spread)",
            font(22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(
            (1.5..n_max * 1.4).log_scale().with_key_points(ticks(n_max)),
            (y_lo..y_hi).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("workers n (co-located: also servers)")
        .y_desc("ratio to the spread of the replicas")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.3}"))
        .light_line_style(WHITE)
        .label_style(font(15))
        .axis_desc_style(font(17))
        .draw()?;
    let mut families: Vec<&str> = points.iter().map(|p| p.0.as_str()).collect();
    families.dedup();
    for (i, fam) in families.iter().enumerate() {
        let c = pick(i);
        let pts: Vec<_> = points.iter().filter(|p| p.0 == *fam).collect();
        let error: Vec<(f64, f64)> = pts
            .iter()
            .filter(|p| positive(p.2))
            .map(|p| (p.1, p.2))
            .collect();
        let cons: Vec<(f64, f64)> = pts
            .iter()
            .filter(|p| positive(p.3))
            .map(|p| (p.1, p.3))
            .collect();
        chart
            .draw_series(LineSeries::new(error.clone(), c.stroke_width(2)))?
            .label(fam.to_string())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(3)));
        chart.draw_series(error.iter().map(|&p| Circle::new(p, 5, c.filled())))?;
        chart.draw_series(DashedLineSeries::new(cons.clone(), 6, 4, c.stroke_width(2)))?;
        chart.draw_series(cons.iter().map(|&p| Circle::new(p, 4, c.stroke_width(2))))?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    Ok(())
}

/// The x ticks of the figures against n: the powers of 2 up to `n_max` (the n a
/// sweep uses), which a log axis would otherwise label only at 10, 20, ….
fn ticks(n_max: f64) -> Vec<f64> {
    (1..)
        .map(|e| f64::from(2u32.pow(e)))
        .take_while(|&n| n <= n_max)
        .collect()
}

/// Experiment B: n·Δ against n, where Δ = loss(p) − loss(0) of x̄ against the lossless
/// twin of the same seed (mean over seeds, bars ± one standard error), log n, one
/// colour per drop model and momentum. Flat when the cost of drops falls as 1/n; the
/// dashed line is 0, no cost. `twins` is [`outcome_pairs`] of the runs.
pub(super) fn outcome_vs_n<DB: DrawingBackend<ErrorType: 'static>>(
    root: &DrawingArea<DB, Shift>,
    twins: &BTreeMap<GroupKey, Vec<(f64, f64)>>,
) -> Result<()> {
    // (family label, n, mean n·Δ, std n·Δ).
    let mut points: Vec<(String, f64, f64, f64)> = Vec::new();
    for (k, pairs) in twins {
        let n = k.workers as f64;
        let scaled: Vec<f64> = pairs.iter().map(|p| n * p.0).collect();
        let Some(m) = mean_std(&scaled) else { continue };
        let f = family(k);
        let label = format!(
            "{}, {}, momentum {}",
            f.model, f.drop_model_description, f.momentum
        );
        // Bars: the standard error of the mean over seeds.
        points.push((label, n, m.mean, m.std.unwrap_or(0.0) / (m.n as f64).sqrt()));
    }
    points.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let lo = points.iter().map(|p| p.2 - p.3).fold(0.0, f64::min);
    let hi = points.iter().map(|p| p.2 + p.3).fold(0.0, f64::max);
    let pad = ((hi - lo) * 0.1).max(1e-6);
    let n_max = points.iter().map(|p| p.1).fold(2.0, f64::max);
    let mut chart = ChartBuilder::on(root)
        .caption(
            "Cost of drops in the training loss of the average: n·Δ, Δ = loss(p) − loss(0)",
            font(22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(
            (1.5..n_max * 1.4).log_scale().with_key_points(ticks(n_max)),
            (lo - pad)..(hi + pad),
        )?;
    chart
        .configure_mesh()
        .x_desc("workers n (co-located: also servers)")
        .y_desc("n·Δ (mean over seeds, bars ± 1 SE; flat: Δ ∝ 1/n)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        // A tick a rounding error below 0 would read "-0.000".
        .y_label_formatter(&|y| format!("{:.3}", if y.abs() < 5e-4 { 0.0 } else { *y }))
        .light_line_style(WHITE)
        .label_style(font(15))
        .axis_desc_style(font(17))
        .draw()?;
    chart.draw_series(DashedLineSeries::new(
        [(1.5, 0.0), (n_max * 1.4, 0.0)],
        6,
        4,
        BLACK.mix(0.5).stroke_width(1),
    ))?;
    let mut families: Vec<&str> = points.iter().map(|p| p.0.as_str()).collect();
    families.dedup();
    for (i, fam) in families.iter().enumerate() {
        let c = pick(i);
        // Families side by side at each n, so their bars do not hide each other.
        let shift = 1.0 + 0.03 * (i as f64 - (families.len() as f64 - 1.0) / 2.0);
        let pts: Vec<(f64, f64, f64)> = points
            .iter()
            .filter(|p| p.0 == *fam)
            .map(|p| (p.1 * shift, p.2, p.3))
            .collect();
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, p.1)),
                c.stroke_width(2),
            ))?
            .label(fam.to_string())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(3)));
        chart.draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 5, c.filled())))?;
        chart
            .draw_series(pts.iter().map(|p| {
                PathElement::new([(p.0, p.1 - p.2), (p.0, p.1 + p.2)], c.stroke_width(2))
            }))?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    Ok(())
}
