//! Results of runs on the namespace testbed (`jobs/testbed.sh`): one row per run of an
//! index file (`variant,loss,file`, the loss rate imposed on the testbed's bridge), with
//! the step time (compute + exchange, mean over ranks) and the final test accuracy read
//! from each metrics file. `rps report --testbed` prints them as Markdown, `rps plot
//! --testbed` draws step time and accuracy against the loss rate.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::metrics::attrs;
use crate::metrics::schema::{
    COMM_S, COMPUTE_S, HOST_LOSSES, PACKETS_DOWN, PACKETS_DROPPED_DOWN, PACKETS_DROPPED_UP,
    PACKETS_MISSED_DOWN, PACKETS_MISSED_UP, PACKETS_UP, TEST_ACCURACY,
};
use crate::metrics::RunFile;
use crate::plot::style::{both, font, legend, pick, register_font};

/// One run of the index.
#[derive(Debug, Clone)]
pub struct TestbedRun {
    pub variant: String,
    /// Packet loss rate imposed on the network.
    pub loss: f64,
    pub file: PathBuf,
    pub steps: usize,
    /// Step time in seconds: mean, median and 99th percentile.
    pub step_mean: f64,
    pub step_p50: f64,
    pub step_p99: f64,
    pub test_accuracy: Option<f64>,
    /// Fraction of packets sent that did not arrive in time (datagram transports; the
    /// reliable ones retransmit, so nothing is lost to the model).
    pub packets_lost: Option<f64>,
    /// Datagrams lost on the hosts rather than the network (`None`: not recorded, or
    /// not a datagram transport).
    pub host_losses: Option<u64>,
    pub transport: String,
}

/// The `q` quantile (0..=1) of sorted `v`, by nearest rank.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

impl TestbedRun {
    fn read(variant: &str, loss: f64, file: &Path) -> Result<Self> {
        let f = RunFile::open(file)?;
        let compute = f.column(&COMPUTE_S)?;
        let comm = f.column(&COMM_S)?;
        let mut steps: Vec<f64> = compute.iter().zip(&comm).map(|(a, b)| a + b).collect();
        if steps.is_empty() {
            bail!("{}: no steps recorded", file.display());
        }
        let mean = steps.iter().sum::<f64>() / steps.len() as f64;
        steps.sort_by(f64::total_cmp);
        let transport = f
            .attr_str(attrs::TRANSPORT.name)?
            .unwrap_or_else(|| "mpi".into());
        let total = |c| f.column_total(c);
        let sent = total(&PACKETS_UP)? + total(&PACKETS_DOWN)?
            - total(&PACKETS_DROPPED_UP)?
            - total(&PACKETS_DROPPED_DOWN)?;
        let missed = total(&PACKETS_MISSED_UP)? + total(&PACKETS_MISSED_DOWN)?;
        let packets_lost = (transport == "udp" && sent > 0).then(|| missed as f64 / sent as f64);
        let host_losses = if transport == "udp" && f.has(HOST_LOSSES.name) {
            Some(total(&HOST_LOSSES)?)
        } else {
            None
        };
        let accuracy = match f.attr_f64(attrs::FINAL_TEST_ACCURACY.name)? {
            Some(a) => Some(a),
            None => f.last(&TEST_ACCURACY)?,
        };
        Ok(TestbedRun {
            variant: variant.into(),
            loss,
            file: file.into(),
            steps: steps.len(),
            step_mean: mean,
            step_p50: quantile(&steps, 0.5),
            step_p99: quantile(&steps, 0.99),
            test_accuracy: accuracy,
            packets_lost,
            host_losses,
            transport,
        })
    }
}

/// Reads an index file and every metrics file it names (relative names are taken from
/// the index's folder).
///
/// # Errors
/// A missing or malformed index (the line is named), or an unreadable metrics file.
pub fn read_index(index: &Path) -> Result<Vec<TestbedRun>> {
    let text = std::fs::read_to_string(index)
        .with_context(|| format!("testbed index {}: cannot read it", index.display()))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut runs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (n == 0 && line.starts_with("variant,")) {
            continue;
        }
        let fields: Vec<&str> = line.splitn(3, ',').collect();
        let [variant, loss, file] = fields[..] else {
            bail!(
                "testbed index {} line {}: expected variant,loss,file, got {line:?}",
                index.display(),
                n + 1
            );
        };
        let loss: f64 = loss
            .parse()
            .ok()
            .filter(|l| (0.0..=1.0).contains(l))
            .with_context(|| {
                format!(
                    "testbed index {} line {}: loss {loss:?} is not a probability",
                    index.display(),
                    n + 1
                )
            })?;
        runs.push(TestbedRun::read(variant, loss, &dir.join(file))?);
    }
    if runs.is_empty() {
        bail!("testbed index {}: no runs listed", index.display());
    }
    Ok(runs)
}

/// Variants in the order they first appear.
fn variants(runs: &[TestbedRun]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for r in runs {
        if !v.contains(&r.variant) {
            v.push(r.variant.clone());
        }
    }
    v
}

/// Loss rates, ascending.
fn losses(runs: &[TestbedRun]) -> Vec<f64> {
    let mut l: Vec<f64> = runs.iter().map(|r| r.loss).collect();
    l.sort_by(f64::total_cmp);
    l.dedup();
    l
}

fn percent(p: f64) -> String {
    format!("{}%", (p * 1000.0).round() / 10.0)
}

/// The Markdown table: one row per run, by loss rate then variant, with the slow-down
/// against the same variant without loss.
pub fn markdown(runs: &[TestbedRun]) -> String {
    let mut s = String::from(
        "| loss | variant | step mean (ms) | step p50 (ms) | step p99 (ms) | × no loss | test accuracy | packets lost (seen by the job) | host losses |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for loss in losses(runs) {
        for v in variants(runs) {
            let Some(r) = runs.iter().find(|r| r.variant == v && r.loss == loss) else {
                continue;
            };
            let base = runs
                .iter()
                .find(|b| b.variant == v && b.loss == 0.0)
                .map_or("–".into(), |b| {
                    format!("{:.1}", r.step_mean / b.step_mean)
                });
            s.push_str(&format!(
                "| {} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} |\n",
                percent(loss),
                v,
                1e3 * r.step_mean,
                1e3 * r.step_p50,
                1e3 * r.step_p99,
                base,
                r.test_accuracy.map_or("–".into(), |a| format!("{a:.4}")),
                r.packets_lost
                    .map_or("– (retransmitted)".into(), |l| format!(
                        "{:.2}%",
                        100.0 * l
                    )),
                r.host_losses.map_or("–".into(), |n| n.to_string()),
            ));
        }
    }
    s
}

/// Draws `testbed_step_time` and `testbed_accuracy` (PNG and SVG) into `dir`.
///
/// # Errors
/// The folder cannot be made or a figure cannot be written.
pub fn plot(runs: &[TestbedRun], dir: &Path) -> Result<Vec<PathBuf>> {
    register_font()?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--output-dir {}: cannot create it", dir.display()))?;
    let mut out = Vec::new();
    for (name, what) in [
        ("testbed_step_time", Panel::StepTime),
        ("testbed_accuracy", Panel::Accuracy),
    ] {
        out.extend(both!(dir, name, (1000, 650), draw(runs, what)));
    }
    Ok(out)
}

#[derive(Clone, Copy)]
enum Panel {
    StepTime,
    Accuracy,
}

fn draw<DB: DrawingBackend<ErrorType: 'static>>(
    root: &DrawingArea<DB, Shift>,
    runs: &[TestbedRun],
    what: Panel,
) -> Result<()> {
    let ls = losses(runs);
    let x_of = |loss: f64| ls.iter().position(|&l| l == loss).unwrap_or(0) as f64;
    let value = |r: &TestbedRun| match what {
        Panel::StepTime => Some(1e3 * r.step_mean),
        Panel::Accuracy => r.test_accuracy,
    };
    let vals: Vec<f64> = runs.iter().filter_map(value).collect();
    let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let x_range = -0.3..(ls.len() as f64 - 0.7);
    let labels = ls.clone();
    let x_fmt = move |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
            percent(labels[i as usize])
        } else {
            String::new()
        }
    };
    let mut builder = ChartBuilder::on(root);
    builder
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(75);
    match what {
        Panel::StepTime => {
            let mut chart = builder
                .caption(
                    "Step time under real packet loss (3 hosts, mean over steps)",
                    font(24),
                )
                .build_cartesian_2d(x_range, (lo * 0.7..hi * 1.5).log_scale())?;
            chart
                .configure_mesh()
                .x_labels(ls.len())
                .x_label_formatter(&x_fmt)
                .y_label_formatter(&|y| format!("{y:.0}"))
                .x_desc("packet loss imposed on the network")
                .y_desc("step time (ms, log scale)")
                .label_style(font(15))
                .axis_desc_style(font(17))
                .draw()?;
            series(&mut chart, runs, &x_of, &value)?;
        }
        Panel::Accuracy => {
            let pad = ((hi - lo) * 0.2).max(0.005);
            let mut chart = builder
                .caption("Final test accuracy under real packet loss", font(24))
                .build_cartesian_2d(x_range, (lo - pad).max(0.0)..(hi + pad).min(1.0))?;
            chart
                .configure_mesh()
                .x_labels(ls.len())
                .x_label_formatter(&x_fmt)
                .x_desc("packet loss imposed on the network")
                .y_desc("final test accuracy")
                .label_style(font(15))
                .axis_desc_style(font(17))
                .draw()?;
            series(&mut chart, runs, &x_of, &value)?;
        }
    }
    Ok(())
}

/// One line with markers per variant, and the legend.
fn series<'a, DB, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    runs: &[TestbedRun],
    x_of: &dyn Fn(f64) -> f64,
    value: &dyn Fn(&TestbedRun) -> Option<f64>,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    Y: Ranged<ValueType = f64>,
{
    for (i, v) in variants(runs).iter().enumerate() {
        let c = pick(i);
        let mut pts: Vec<(f64, f64)> = runs
            .iter()
            .filter(|r| &r.variant == v)
            .filter_map(|r| Some((x_of(r.loss), value(r)?)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(v.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(3)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 5, c.filled())))?;
    }
    legend(chart, SeriesLabelPosition::UpperLeft)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn malformed_index_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("index.csv");
        std::fs::write(&index, "variant,loss,file\nrps-udp,0.01\n").unwrap();
        let e = read_index(&index).unwrap_err().to_string();
        assert!(e.contains("line 2: expected variant,loss,file"), "{e}");
        std::fs::write(&index, "rps-udp,2,x.h5\n").unwrap();
        let e = read_index(&index).unwrap_err().to_string();
        assert!(e.contains("line 1: loss \"2\" is not a probability"), "{e}");
        std::fs::write(&index, "variant,loss,file\n").unwrap();
        assert!(read_index(&index)
            .unwrap_err()
            .to_string()
            .contains("no runs listed"));
    }
}
