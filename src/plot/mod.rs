//! Figures of a set of runs (`rps plot`), each written as PNG and SVG with plotters:
//! smoothed training loss, final accuracy against loss rate, consensus distance, per-link
//! drop heat maps, and the theory figures of `--diag-every` runs (module `theory`); the
//! claim's figures ([`claim`]); netsim results ([`netsim`]). The exchange's cost curve is
//! `crate::bench::exchange::plot`, the testbed's `crate::testbed`; which of these a list
//! of files is, is decided once, in `crate::results`. Every figure looks the same way
//! ([`style`]).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::metrics::schema::{CONSENSUS_DISTANCE, EVAL_STEP, LINK_MATRICES, LOSS, STEP};
use crate::metrics::RunFile;
use crate::report::{group, mean_std, outcome_pairs, RunSummary};

pub mod claim;
pub mod netsim;
pub mod style;
mod theory;
use style::{both, font, legend, pick, register_font, SIZE};
use theory::{diag_vs_n, outcome_vs_n};

/// Options of `rps plot`.
#[derive(Debug, Clone)]
pub struct PlotOptions {
    pub files: Vec<PathBuf>,
    pub output_dir: PathBuf,
    /// Moving-average window of the training loss, in steps (at least 1).
    pub window: usize,
    /// Heat maps of per-link drops for at most this many files (the first ones).
    pub max_link_maps: usize,
}

/// Trailing moving average: element i is the mean of the last `window` values up to i
/// (fewer at the start).
pub fn moving_average(values: &[f64], window: usize) -> Vec<f64> {
    let w = window.max(1);
    let mut sum = 0.0;
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            sum += v;
            if i >= w {
                sum -= values[i - w];
            }
            sum / (i + 1).min(w) as f64
        })
        .collect()
}

/// A short legend label: algorithm (when not rps), drop model and rate, packets, n.
pub fn label(r: &RunSummary) -> String {
    let mut s = String::new();
    if r.key.algorithm != "rps" {
        s += &r.key.algorithm;
        s += " ";
    }
    s += &match r.drop_model.as_str() {
        "bernoulli" => format!("iid p={}", r.drop_rate),
        "gilbert-elliott" => format!("bursty {:.1}% lost", 100.0 * r.message_loss()),
        other => format!("{other} {:.1}% lost", 100.0 * r.message_loss()),
    };
    if r.key.packet_bytes > 0 {
        s += &format!(", {} B packets", r.key.packet_bytes);
    }
    s + &format!(", n={}", r.key.workers)
}

/// What the figures need of one run.
pub(crate) struct Series {
    summary: RunSummary,
    train_step: Vec<f64>,
    train_loss: Vec<f64>,
    eval_step: Vec<f64>,
    consensus: Vec<f64>,
}

/// Writes every figure into `opts.output_dir` (created if needed) and returns the paths.
///
/// # Errors
/// A file that is not a readable metrics file (named), no font, or a write failure.
pub fn plot(opts: &PlotOptions) -> Result<Vec<PathBuf>> {
    if opts.files.is_empty() {
        bail!("no metrics files given");
    }
    register_font()?;
    let mut runs = Vec::new();
    for p in &opts.files {
        let summary = RunSummary::read(p)?;
        let f = RunFile::open(p)?;
        runs.push(Series {
            train_step: f.column(&STEP)?,
            train_loss: f.column(&LOSS)?,
            eval_step: f.column(&EVAL_STEP)?,
            consensus: f.column(&CONSENSUS_DISTANCE)?,
            summary,
        });
    }
    let dir = &opts.output_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--output-dir {}: cannot create it", dir.display()))?;
    let mut out = Vec::new();
    out.extend(both!(
        dir,
        "train_loss",
        SIZE,
        train_loss(&runs, opts.window)
    ));
    out.extend(both!(
        dir,
        "accuracy_vs_drop",
        SIZE,
        accuracy_vs_drop(&runs)
    ));
    out.extend(both!(dir, "consensus", SIZE, consensus(&runs)));
    if runs.iter().any(|r| r.summary.diag.is_some()) {
        out.extend(both!(dir, "diag_vs_n", SIZE, diag_vs_n(&runs)));
        let summaries = summaries(&runs);
        let twins = outcome_pairs(&summaries);
        if !twins.is_empty() {
            out.extend(both!(dir, "outcome_vs_n", SIZE, outcome_vs_n(&twins)));
        }
    }
    for p in opts.files.iter().take(opts.max_link_maps) {
        let f = RunFile::open(p)?;
        let Some((m, rows, cols)) = f.matrix(LINK_MATRICES[1].name)? else {
            log::warn!("{}: no /links/dropped_up, no heat map", p.display());
            continue;
        };
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>();
        let title = format!(
            "Dropped worker→server messages per link: {}",
            p.file_name().unwrap_or_default().to_string_lossy()
        );
        out.extend(both!(
            dir,
            format!("links_{stem}"),
            (900, 700),
            links(&m, &rows, &cols, &title)
        ));
    }
    Ok(out)
}

/// The runs' summaries, in order.
fn summaries(runs: &[Series]) -> Vec<RunSummary> {
    runs.iter().map(|r| r.summary.clone()).collect()
}

/// One colour per configuration (runs differing only by seed share it), in the order of
/// [`group`].
fn colours(runs: &[Series]) -> Vec<RGBColor> {
    let summaries = summaries(runs);
    let groups = group(&summaries);
    runs.iter()
        .map(|r| {
            let i = groups
                .iter()
                .position(|g| g.key == r.summary.key)
                .unwrap_or(0);
            pick(i)
        })
        .collect()
}

/// Legend entries once per configuration: `seeds` lists the seeds sharing a colour.
fn legend_label(runs: &[Series], i: usize) -> Option<String> {
    let r = &runs[i].summary;
    if runs[..i].iter().any(|o| o.summary.key == r.key) {
        return None;
    }
    let seeds: Vec<String> = runs
        .iter()
        .filter(|o| o.summary.key == r.key)
        .map(|o| o.summary.seed.to_string())
        .collect();
    Some(format!("{} (seed {})", label(r), seeds.join(",")))
}

fn train_loss<DB: DrawingBackend<ErrorType: 'static>>(
    root: &DrawingArea<DB, Shift>,
    runs: &[Series],
    window: usize,
) -> Result<()> {
    let smoothed: Vec<Vec<f64>> = runs
        .iter()
        .map(|r| moving_average(&r.train_loss, window))
        .collect();
    let max_step = runs
        .iter()
        .flat_map(|r| r.train_step.last().copied())
        .fold(1.0, f64::max);
    let finite = smoothed.iter().flatten().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!("Training loss ({window}-step moving average)"),
            font(26),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_step, (lo - pad).max(0.0)..hi + pad)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("training loss (cross-entropy)")
        .label_style(font(15))
        .axis_desc_style(font(17))
        .draw()?;
    let colours = colours(runs);
    for (i, (r, y)) in runs.iter().zip(&smoothed).enumerate() {
        let c = colours[i];
        let s = chart.draw_series(LineSeries::new(
            r.train_step.iter().copied().zip(y.iter().copied()),
            c.stroke_width(2),
        ))?;
        if let Some(l) = legend_label(runs, i) {
            s.label(l)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(3)));
        }
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    Ok(())
}

fn accuracy_vs_drop<DB: DrawingBackend<ErrorType: 'static>>(
    root: &DrawingArea<DB, Shift>,
    runs: &[Series],
) -> Result<()> {
    let summaries = summaries(runs);
    // (workers, x, mean, min, max) per configuration with an accuracy.
    let mut points: Vec<(i64, f64, f64, f64, f64)> = Vec::new();
    for g in group(&summaries) {
        let acc: Vec<f64> = g.runs.iter().filter_map(|r| r.test_accuracy).collect();
        let Some(m) = mean_std(&acc) else { continue };
        let x = g.runs.iter().map(|r| r.effective_drop_rate()).sum::<f64>() / g.runs.len() as f64;
        let min = acc.iter().copied().fold(f64::INFINITY, f64::min);
        let max = acc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        points.push((g.key.workers, x, m.mean, min, max));
    }
    points.sort_by(|a, b| {
        (a.0, a.1)
            .partial_cmp(&(b.0, b.1))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let x_max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(0.01) * 1.15;
    let y_lo = points.iter().map(|p| p.3).fold(1.0, f64::min);
    let y_hi = points.iter().map(|p| p.4).fold(0.0, f64::max);
    let pad = ((y_hi - y_lo) * 0.15).max(0.005);
    let mut chart = ChartBuilder::on(root)
        .caption(
            "Final test accuracy vs. loss rate (mean over seeds, bars: min–max)",
            font(24),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(
            -x_max * 0.03..x_max,
            (y_lo - pad).max(0.0)..(y_hi + pad).min(1.0),
        )?;
    chart
        .configure_mesh()
        .x_desc("loss rate (configured p for i.i.d. messages, else measured fraction of packets or messages lost)")
        .y_desc("final test accuracy")
        .label_style(font(15))
        .axis_desc_style(font(17))
        .draw()?;
    let mut ns: Vec<i64> = points.iter().map(|p| p.0).collect();
    ns.dedup();
    for (i, n) in ns.iter().enumerate() {
        let c = pick(i);
        let pts: Vec<_> = points.iter().filter(|p| p.0 == *n).collect();
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.1, p.2)),
                c.stroke_width(2),
            ))?
            .label(format!("n = {n} workers"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(3)));
        chart.draw_series(pts.iter().map(|p| Circle::new((p.1, p.2), 5, c.filled())))?;
        let cap = x_max * 0.008;
        chart.draw_series(pts.iter().map(|p| {
            PathElement::new(
                [
                    (p.1 - cap, p.3),
                    (p.1 + cap, p.3),
                    (p.1, p.3),
                    (p.1, p.4),
                    (p.1 - cap, p.4),
                    (p.1 + cap, p.4),
                ],
                c.stroke_width(2),
            )
        }))?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    Ok(())
}

fn consensus<DB: DrawingBackend<ErrorType: 'static>>(
    root: &DrawingArea<DB, Shift>,
    runs: &[Series],
) -> Result<()> {
    let positive = |r: &Series| -> Vec<(f64, f64)> {
        r.eval_step
            .iter()
            .copied()
            .zip(r.consensus.iter().copied())
            .filter(|(_, v)| *v > 0.0 && v.is_finite())
            .collect()
    };
    let all: Vec<f64> = runs.iter().flat_map(positive).map(|p| p.1).collect();
    let (lo, hi) = if all.is_empty() {
        (1e-6, 1.0)
    } else {
        (
            // Room below the data for the legend.
            all.iter().copied().fold(f64::INFINITY, f64::min) / 10.0,
            all.iter().copied().fold(0.0, f64::max) * 2.0,
        )
    };
    let max_step = runs
        .iter()
        .flat_map(|r| r.eval_step.last().copied())
        .fold(1.0, f64::max);
    let caption = if all.is_empty() {
        "Consensus distance (every evaluation gave 0)".to_string()
    } else {
        "Consensus distance at evaluations (log scale; zeros not shown)".to_string()
    };
    let mut chart = ChartBuilder::on(root)
        .caption(caption, font(24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..max_step * 1.02, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("mean ‖x_i − x̄‖² over workers")
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .label_style(font(15))
        .axis_desc_style(font(17))
        .draw()?;
    let colours = colours(runs);
    for (i, r) in runs.iter().enumerate() {
        let c = colours[i];
        let pts = positive(r);
        let s = chart.draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?;
        if let Some(l) = legend_label(runs, i) {
            s.label(l)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(3)));
        }
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, c.filled())))?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    Ok(())
}

/// White (0) to dark red (1).
fn heat(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(lerp(255.0, 165.0), lerp(255.0, 0.0), lerp(255.0, 38.0))
}

fn links<DB: DrawingBackend<ErrorType: 'static>>(
    root: &DrawingArea<DB, Shift>,
    m: &ndarray::Array2<u64>,
    rows: &str,
    cols: &str,
    title: &str,
) -> Result<()> {
    let (nr, nc) = m.dim();
    if nr == 0 || nc == 0 {
        bail!("empty per-link matrix");
    }
    let max = m.iter().copied().max().unwrap_or(0).max(1) as f64;
    let root = root.titled(title, font(22))?;
    let (left, right) = root.split_horizontally(root.dim_in_pixel().0 as i32 - 140);
    let mut chart = ChartBuilder::on(&left)
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(
            // A segmented range a..b has the b − a + 1 cells a..=b.
            (0..nc as i32 - 1).into_segmented(),
            (0..nr as i32 - 1).into_segmented(),
        )?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(nc.min(32))
        .y_labels(nr.min(32))
        .x_desc(format!("worker (column; {cols})"))
        .y_desc(format!("server (row; {rows})"))
        .label_style(font(15))
        .axis_desc_style(font(16))
        .draw()?;
    let exact = |v: usize| SegmentValue::Exact(v as i32);
    chart.draw_series(m.indexed_iter().map(|((r, c), v)| {
        Rectangle::new(
            [(exact(c), exact(r)), (exact(c + 1), exact(r + 1))],
            heat(*v as f64 / max).filled(),
        )
    }))?;
    if nr * nc <= 64 {
        let centre = Pos::new(HPos::Center, VPos::Center);
        chart.draw_series(m.indexed_iter().map(|((r, c), v)| {
            let colour: &'static RGBColor = if *v as f64 / max > 0.6 {
                &WHITE
            } else {
                &BLACK
            };
            Text::new(
                v.to_string(),
                (
                    SegmentValue::CenterOf(c as i32),
                    SegmentValue::CenterOf(r as i32),
                ),
                font(16).color(colour).pos(centre),
            )
        }))?;
    }
    // Colour scale.
    let mut bar = ChartBuilder::on(&right)
        .margin_top(15)
        .margin_bottom(65)
        .margin_right(10)
        .y_label_area_size(75)
        .build_cartesian_2d(0.0..1.0, 0.0..max)?;
    bar.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_desc("dropped messages")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(font(14))
        .axis_desc_style(font(15))
        .draw()?;
    let steps = 100;
    bar.draw_series((0..steps).map(|i| {
        let (a, b) = (i as f64 / steps as f64, (i + 1) as f64 / steps as f64);
        Rectangle::new([(0.0, a * max), (1.0, b * max)], heat(a).filled())
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_is_trailing_and_shrinks_at_start() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(moving_average(&v, 2), vec![1.0, 1.5, 2.5, 3.5, 4.5]);
        assert_eq!(moving_average(&v, 1), v.to_vec());
        assert_eq!(moving_average(&v, 0), v.to_vec());
        assert_eq!(moving_average(&v, 10), vec![1.0, 1.5, 2.0, 2.5, 3.0]);
        assert!(moving_average(&[], 3).is_empty());
    }

    #[test]
    fn heat_runs_white_to_dark_red() {
        assert_eq!(heat(0.0), RGBColor(255, 255, 255));
        assert_eq!(heat(1.0), RGBColor(165, 0, 38));
        assert_eq!(heat(7.0), heat(1.0));
    }
}
