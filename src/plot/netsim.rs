//! The figure of netsim results (`rps plot RESULTS.csv...`): web-flow completion times
//! per size class, for both policies and every load.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::style::{both, font, pick, register_font};
use crate::netsim::{Results, CLASSES};

/// `rps plot RESULTS.csv...`: `netsim_fct.png` and `.svg`, one panel per flow-size class
/// with the median and 99th-percentile FCT of each policy against load (means over seeds,
/// bars from the smallest to the largest seed's value).
pub fn plot(files: &[PathBuf], dir: &Path) -> Result<Vec<PathBuf>> {
    let results = Results::read(files)?;
    register_font()?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--output-dir {}: cannot create it", dir.display()))?;
    Ok(both!(dir, "netsim_fct", (1500, 560), netsim_fct(&results)).to_vec())
}

/// (policy, percentile quantity, load, (mean, min, max) FCT over seeds in µs), finite
/// values only.
type NetsimPoint = (String, &'static str, f64, (f64, f64, f64));

fn netsim_points(results: &Results, class: &str) -> Vec<NetsimPoint> {
    let mut points = Vec::new();
    for (load, policy, runs) in crate::netsim::groups(results) {
        for q in ["fct_p50_us", "fct_p99_us"] {
            let vals: Vec<f64> = runs
                .iter()
                .filter_map(|r| results.get(r, q, class))
                .filter(|v| v.is_finite() && *v > 0.0)
                .collect();
            if !vals.is_empty() {
                let mean = vals.iter().sum::<f64>() / vals.len() as f64;
                let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = vals.iter().copied().fold(0.0, f64::max);
                points.push((policy.clone(), q, load, (mean, lo, hi)));
            }
        }
    }
    points
}

fn netsim_fct<DB: DrawingBackend<ErrorType: 'static>>(
    root: &DrawingArea<DB, Shift>,
    results: &Results,
) -> Result<()> {
    let root = root.titled(
        "Web-flow completion time by flow size: learning traffic reliable (TCP) vs lossy (low-priority UDP); bars: range over seeds",
        font(22),
    )?;
    let mut policies: Vec<String> = Vec::new();
    for (_, p, _) in crate::netsim::groups(results) {
        if !policies.contains(&p) {
            policies.push(p);
        }
    }
    let loads: Vec<f64> = results.runs().iter().map(|r| r.load).collect();
    let (lo, hi) = loads
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &l| {
            (a.min(l), b.max(l))
        });
    let pad = ((hi - lo) * 0.15).max(0.05);
    let panels = root.split_evenly((1, CLASSES.len()));
    for (panel, class) in panels.iter().zip(CLASSES) {
        let points = netsim_points(results, class);
        let (ymin, ymax) = points.iter().fold((f64::INFINITY, 0.0f64), |(a, b), p| {
            (a.min(p.3 .1), b.max(p.3 .2))
        });
        let (ymin, ymax) = if ymin.is_finite() {
            (ymin / 2.0, ymax * 2.0)
        } else {
            (1.0, 10.0)
        };
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("flows {class}"), font(20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(75)
            .build_cartesian_2d(lo - pad..hi + pad, (ymin..ymax).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("web-flow load (fraction of host link)")
            .y_desc("flow completion time (µs)")
            .x_label_formatter(&|v| format!("{v:.2}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style(font(14))
            .axis_desc_style(font(15))
            .draw()?;
        for (i, policy) in policies.iter().enumerate() {
            let c = pick(i);
            for (q, label, width) in [("fct_p50_us", "median", 3), ("fct_p99_us", "99th pct", 1)] {
                let mut ranged: Vec<(f64, (f64, f64, f64))> = points
                    .iter()
                    .filter(|p| &p.0 == policy && p.1 == q)
                    .map(|p| (p.2, p.3))
                    .collect();
                ranged.sort_by(|a, b| a.0.total_cmp(&b.0));
                let pts: Vec<(f64, f64)> = ranged.iter().map(|&(x, (m, _, _))| (x, m)).collect();
                // The seeds' range, where there are several.
                chart.draw_series(ranged.iter().filter(|(_, (_, lo, hi))| hi > lo).map(
                    |&(x, (_, lo, hi))| PathElement::new([(x, lo), (x, hi)], c.stroke_width(width)),
                ))?;
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(width)))?
                    .label(format!("{policy}, {label}"))
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 20, y)], c.stroke_width(width))
                    });
                if q == "fct_p50_us" {
                    chart.draw_series(pts.iter().map(|p| Circle::new(*p, 5, c.filled())))?;
                } else {
                    chart.draw_series(
                        pts.iter()
                            .map(|p| TriangleMarker::new(*p, 6, c.stroke_width(2))),
                    )?;
                }
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(font(13))
            // Medians sit low and 99th percentiles high: the middle is usually free.
            .position(SeriesLabelPosition::MiddleRight)
            .draw()?;
    }
    Ok(())
}
