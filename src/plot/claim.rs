//! The figures of `rps plot --claim`: per outcome, the paired differences Δ of
//! `rps report --claim` against the count each family varies (log scale), mean ± one
//! standard error per cell, with the weighted fit a + b/x dashed in the same colour.

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::style::{both, font, legend, pick, register_font, SIZE};
use crate::report::claim::{abscissa, family, fit_points, pair, Cell, CellKey, ClaimRun, Outcome};
use crate::report::stats::{fit_inverse, mean_se};

/// One family's points (x, mean Δ, SE) and fit.
struct Curve {
    label: String,
    points: Vec<(f64, f64, f64)>,
    fit: Option<(f64, f64)>,
}

/// The curves of outcome `o`, and the name of their x (the names joined with " / " when
/// families vary different counts).
fn curves(cells: &BTreeMap<CellKey, Cell>, o: Outcome) -> (Vec<Curve>, String) {
    let fits = fit_points(cells, o);
    let mut by_family: BTreeMap<_, Vec<&CellKey>> = BTreeMap::new();
    for k in cells.keys() {
        by_family.entry(family(k)).or_default().push(k);
    }
    let mut names: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for (fam, keys) in by_family {
        let (name, x_of) = abscissa(&keys);
        if !names.contains(&name) {
            names.push(name);
        }
        let points: Vec<(f64, f64, f64)> = keys
            .iter()
            .filter_map(|k| {
                let (m, se) = mean_se(&cells[*k].deltas(o))?;
                Some((x_of(&k.1) as f64, m, se.unwrap_or(0.0)))
            })
            .collect();
        if points.is_empty() {
            continue;
        }
        let fit = fits
            .get(&fam)
            .and_then(|(_, p)| fit_inverse(p))
            .map(|f| (f.a, f.b));
        let (arm, k) = &fam;
        out.push(Curve {
            label: format!("{arm}: {}, {}", k.model, k.drop_model_description),
            points,
            fit,
        });
    }
    (out, names.join(" / "))
}

/// Writes claim_loss and claim_accuracy (PNG and SVG) into `dir` for the outcomes the
/// runs have, and returns their paths.
///
/// # Errors
/// No pairs, no font, or a write failure.
pub fn plot(runs: &[ClaimRun], dir: &Path) -> Result<Vec<PathBuf>> {
    register_font()?;
    let (cells, _) = pair(runs);
    if cells.is_empty() {
        bail!("--claim: no run with drops has a lossless twin (same directory, configuration and seed at p = 0)");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut paths = Vec::new();
    for o in [Outcome::Loss, Outcome::Accuracy] {
        let (curves, x_name) = curves(&cells, o);
        if curves.is_empty() {
            continue;
        }
        paths.extend(both!(dir, o.file_stem(), SIZE, draw(&curves, o, &x_name)));
    }
    Ok(paths)
}

/// The smallest and largest x of a curve's points.
fn span(c: &Curve) -> (f64, f64) {
    let xs = c.points.iter().map(|p| p.0);
    (
        xs.clone().fold(f64::INFINITY, f64::min),
        xs.fold(f64::NEG_INFINITY, f64::max),
    )
}

fn draw<DB: DrawingBackend<ErrorType: 'static>>(
    root: &DrawingArea<DB, Shift>,
    curves: &[Curve],
    o: Outcome,
    x_name: &str,
) -> Result<()> {
    let all = || curves.iter().flat_map(|c| c.points.iter());
    let x_min = all().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_max = all().map(|p| p.0).fold(1.0, f64::max);
    // The fitted curves at the ends of the range count too.
    let fitted = || {
        curves.iter().flat_map(|c| {
            let (lo, hi) = span(c);
            c.fit
                .into_iter()
                .flat_map(move |(a, b)| [a + b / lo, a + b / hi])
        })
    };
    let lo = all().map(|p| p.1 - p.2).chain(fitted()).fold(0.0, f64::min);
    let hi = all().map(|p| p.1 + p.2).chain(fitted()).fold(0.0, f64::max);
    let pad = ((hi - lo) * 0.1).max(1e-6);
    let (x0, x1) = (x_min / 1.3, x_max * 1.3);
    let ticks: Vec<f64> = {
        let mut t: Vec<f64> = all().map(|p| p.0).collect();
        t.sort_by(f64::total_cmp);
        t.dedup();
        t
    };
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!("{}: with drops − lossless twin", o.title()),
            font(22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(85)
        .build_cartesian_2d(
            (x0..x1).log_scale().with_key_points(ticks),
            (lo - pad)..(hi + pad),
        )?;
    chart
        .configure_mesh()
        .x_desc(format!("{x_name} (log scale)"))
        .y_desc("Δ: mean ± 1 SE over paired seeds; dashed: fit a + b/x")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{:.4}", if y.abs() < 5e-5 { 0.0 } else { *y }))
        .light_line_style(WHITE)
        .label_style(font(15))
        .axis_desc_style(font(17))
        .draw()?;
    chart.draw_series(LineSeries::new(
        [(x0, 0.0), (x1, 0.0)],
        BLACK.mix(0.4).stroke_width(1),
    ))?;
    for (i, c) in curves.iter().enumerate() {
        let colour = pick(i);
        // Families side by side at each x, so their bars do not hide each other.
        let shift = 1.0 + 0.025 * (i as f64 - (curves.len() as f64 - 1.0) / 2.0);
        let pts: Vec<(f64, f64, f64)> = c.points.iter().map(|p| (p.0 * shift, p.1, p.2)).collect();
        chart
            .draw_series(
                pts.iter()
                    .map(|p| Circle::new((p.0, p.1), 5, colour.filled())),
            )?
            .label(c.label.clone())
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, colour.filled()));
        chart.draw_series(pts.iter().map(|p| {
            PathElement::new([(p.0, p.1 - p.2), (p.0, p.1 + p.2)], colour.stroke_width(2))
        }))?;
        if let Some((a, b)) = c.fit {
            // Over the family's own counts only.
            let (lo, hi) = span(c);
            let line: Vec<(f64, f64)> = (0..=60)
                .map(|j| {
                    let x = lo * (hi / lo).powf(f64::from(j) / 60.0);
                    (x, a + b / x)
                })
                .collect();
            chart.draw_series(DashedLineSeries::new(line, 6, 4, colour.stroke_width(2)))?;
        }
    }
    // Costs rise as loss and fall as accuracy: the legend goes where small n's bars are not.
    let corner = match o {
        Outcome::Loss => SeriesLabelPosition::UpperRight,
        Outcome::Accuracy => SeriesLabelPosition::LowerRight,
    };
    legend(&mut chart, corner)?;
    Ok(())
}
