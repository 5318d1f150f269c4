//! `rps plot EXCHANGE.csv...`: the exchange's cost curve from `rps bench-exchange --csv`
//! files (one per job size): median time against buffer size, log-log, one panel per
//! mode, RPS at each drop rate and the all-reduce per n, with the rank-to-rank swap of
//! the same buffer as the bandwidth line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::csv::{read, CsvRow};
use crate::plot::style::{both, font, legend, pick, register_font};

/// Draws `exchange_cost.png` and `.svg` into `dir`; returns their paths.
///
/// # Errors
/// Unreadable or malformed files, no font, or a write failure.
pub fn plot(paths: &[PathBuf], dir: &Path) -> Result<Vec<PathBuf>> {
    let rows = read(paths)?;
    if !rows.iter().any(|r| r.op == "rps") {
        bail!("no RPS rows in the bench-exchange files");
    }
    register_font()?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--output-dir {}: cannot create it", dir.display()))?;
    Ok(both!(dir, "exchange_cost", (1500, 640), draw(&rows)).to_vec())
}

fn draw<DB: DrawingBackend<ErrorType: 'static>>(
    root: &DrawingArea<DB, Shift>,
    rows: &[CsvRow],
) -> Result<()> {
    let root = root.titled(
        "One RPS exchange vs MPI_Allreduce of the same buffer (median, slowest rank)",
        font(22),
    )?;
    let mut modes: Vec<&str> = Vec::new();
    for r in rows.iter().filter(|r| r.op == "rps") {
        if !modes.contains(&r.mode.as_str()) {
            modes.push(&r.mode);
        }
    }
    let mut ns: Vec<usize> = rows.iter().map(|r| r.n).collect();
    ns.sort_unstable();
    ns.dedup();
    let mut rates: Vec<f64> = rows.iter().filter_map(|r| r.p).collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    // What is drawn: RPS, all-reduce and the swap (not the memcpy rows).
    let positive = |r: &&CsvRow| r.median_ms > 0.0 && r.bytes > 0.0 && r.op != "memcpy";
    let (x_lo, x_hi, y_lo, y_hi) = rows.iter().filter(positive).fold(
        (f64::INFINITY, 0.0f64, f64::INFINITY, 0.0f64),
        |(a, b, c, d), r| {
            (
                a.min(r.bytes),
                b.max(r.bytes),
                c.min(r.median_ms),
                d.max(r.median_ms),
            )
        },
    );
    let panels = root.split_evenly((1, modes.len()));
    for (panel, mode) in panels.iter().zip(&modes) {
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{mode} mode"), font(20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (x_lo / 1.5..x_hi * 1.5).log_scale(),
                (y_lo / 2.0..y_hi * 2.0).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("buffer (bytes)")
            .y_desc("time (ms)")
            .x_label_formatter(&|v| format!("{v:.0e}"))
            .y_label_formatter(&|v| format!("{v}"))
            .label_style(font(14))
            .axis_desc_style(font(15))
            .draw()?;
        let series = |op: &str, n: usize, p: Option<f64>, m: &str| -> Vec<(f64, f64)> {
            let mut pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(positive)
                .filter(|r| r.op == op && r.n == n && r.p == p && (m.is_empty() || r.mode == m))
                .map(|r| (r.bytes, r.median_ms))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            pts
        };
        for (i, &n) in ns.iter().enumerate() {
            let c = pick(i);
            let mut lines = vec![(
                format!("allreduce n={n}"),
                series("allreduce", n, None, mode),
                1,
            )];
            for (k, &p) in rates.iter().enumerate() {
                let pts = series("rps", n, Some(p), mode);
                lines.push((format!("rps p={p} n={n}"), pts, if k == 0 { 3 } else { 2 }));
            }
            for (j, (label, pts, width)) in lines.into_iter().enumerate() {
                let style = c.stroke_width(width);
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), style))?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
                match j {
                    0 => chart.draw_series(pts.iter().map(|&q| Cross::new(q, 5, style)))?,
                    1 => chart.draw_series(pts.iter().map(|&q| Circle::new(q, 4, c.filled())))?,
                    _ => {
                        chart.draw_series(pts.iter().map(|&q| TriangleMarker::new(q, 5, style)))?
                    }
                };
            }
        }
        // The bandwidth line: ranks 0 and 1 swap the buffer (the smallest n's run).
        if let Some(&n) = ns.first() {
            let pts = series("pair", n, None, "");
            let style = BLACK.mix(0.6).stroke_width(2);
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), style))?
                .label(format!("ranks 0⇄1 swap the buffer (n={n})"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    }
    Ok(())
}
