//! `rps bench`: times the training step (forward, backward, SGD update) of a model (the
//! reference CNN or ResNet-20) on one thread, per batch size and per stage, against a
//! measured single-core matrix-product peak, and optionally the identical PyTorch model
//! (`bench/pytorch_reference.py`). rps and PyTorch alternate over several rounds in one
//! invocation and the ratio is the median of the rounds' ratios with its range, printed
//! beside the machine's fingerprint: one run on a shared machine is not a result (the
//! same binary has measured 0.72 and 1.23 of PyTorch on different days). No MPI: the
//! benchmark is one process, one thread, like one rank of a training job.

pub mod exchange;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::nn::matmul::mat_mul;
use anyhow::{bail, ensure, Context, Result};
use ndarray::{Array2, Array4};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::nn::ModelKind;
use crate::optim::Sgd;

/// Optimiser settings of the benchmarked step; the PyTorch reference uses the same.
const LR: f32 = 0.01;
const MOMENTUM: f32 = 0.9;
const WEIGHT_DECAY: f32 = 5e-4;
/// Side of the square matrix product that measures the single-core peak.
const PEAK_N: usize = 1024;

/// What to benchmark.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The network.
    pub model: ModelKind,
    /// Channels, height, width of one input image.
    pub image: [usize; 3],
    /// Number of classes.
    pub classes: usize,
    /// Batch sizes to time, each on its own freshly built model.
    pub batch_sizes: Vec<usize>,
    /// Untimed steps before measuring.
    pub warmup: usize,
    /// Timed steps per round (and profiled steps for the per-stage table).
    pub repeats: usize,
    /// Rounds of rps then PyTorch.
    pub rounds: usize,
    /// Also run the PyTorch reference script and print the ratio lines.
    pub pytorch: bool,
    /// Python interpreter that starts the reference script (it creates its own venv).
    pub python: PathBuf,
    /// The reference script.
    pub script: PathBuf,
    /// Virtual environment the script installs PyTorch into.
    pub venv: PathBuf,
}

/// Order statistics of a set of timings, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub p25: f64,
    pub p75: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// Statistics of `samples` (milliseconds); `None` when there are none.
    pub fn of(samples: &[f64]) -> Option<Spread> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        // Nearest-rank quantile; exact median of an even count is the mean of the middle two.
        let q = |f: f64| s[((s.len() - 1) as f64 * f).round() as usize];
        let mid = s.len() / 2;
        let median = if s.len().is_multiple_of(2) {
            (s[mid - 1] + s[mid]) / 2.0
        } else {
            s[mid]
        };
        Some(Spread {
            median,
            p25: q(0.25),
            p75: q(0.75),
            min: s[0],
            max: s[s.len() - 1],
        })
    }
}

/// Peak resident set size of this process (`VmHWM` of `/proc/self/status`), in bytes.
/// `None` where procfs is not available.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resets the peak RSS mark to the current RSS (Linux ≥ 4.0), so the next reading of
/// [`peak_rss_bytes`] reflects only what happens from now on. Returns whether it worked.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Times `f` `repeats` times after `warmup` untimed calls; milliseconds.
fn time_ms(warmup: usize, repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    let mut out = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t = Instant::now();
        f()?;
        out.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

/// Single-thread GFLOP/s of the engine's f32 matrix product on 1024² matrices (median).
pub fn matmul_peak_gflops(repeats: usize) -> f64 {
    let a = Array2::from_shape_fn((PEAK_N, PEAK_N), |(i, j)| ((i * 7 + j) % 13) as f32 * 0.01);
    let b = a.t().to_owned();
    let mut c = Array2::<f32>::zeros((PEAK_N, PEAK_N));
    let mut t = Vec::new();
    for i in 0..repeats.max(1) + 1 {
        let s = Instant::now();
        mat_mul(1.0, &a, &b, 0.0, &mut c);
        if i > 0 {
            t.push(s.elapsed().as_secs_f64() * 1e3);
        }
    }
    let ms = Spread::of(&t).map_or(f64::NAN, |s| s.median);
    2.0 * (PEAK_N as f64).powi(3) / ms / 1e6
}

/// Result of one batch size.
#[derive(Debug, Clone)]
pub struct BatchResult {
    pub batch: usize,
    pub step: Spread,
    /// FLOPs of one whole step (all samples).
    pub flops: f64,
    /// (stage, median ms, FLOPs of the stage for the whole batch).
    pub stages: Vec<(&'static str, f64, f64)>,
    pub peak_rss: Option<u64>,
}

/// Benchmarks the model at one batch size; the per-stage profile only when `profile`.
fn bench_batch(opts: &BenchOptions, batch: usize, seed: u64, profile: bool) -> Result<BatchResult> {
    let rss_reset = reset_peak_rss();
    let [c, h, w] = opts.image;
    let mut model = opts.model.build(c, h, w, opts.classes)?;
    let mut params = model.init_params(seed);
    let mut grads = vec![0.0; model.num_params()];
    let mut sgd = Sgd::new(model.num_params(), LR, MOMENTUM, WEIGHT_DECAY);
    sgd.set_trainable(model.trainable());
    let mut rng = StdRng::seed_from_u64(seed);
    let x = Array4::from_shape_fn((batch, c, h, w), |_| rng.random_range(-1.0f32..1.0));
    let y: Vec<usize> = (0..batch)
        .map(|_| rng.random_range(0..opts.classes))
        .collect();

    let steps = time_ms(opts.warmup, opts.repeats, || {
        model.train_batch(&mut params, &mut grads, x.view(), &y)?;
        sgd.step(&mut params, &grads);
        Ok(())
    })?;
    let step = Spread::of(&steps).context("no timed steps (--repeats 0)")?;

    // Profiled steps, separately, so the clock reads do not touch the headline figure.
    model.set_profiling(true);
    let mut per_stage: Vec<(&'static str, Vec<f64>)> = Vec::new();
    let profiled_steps = if profile { opts.repeats } else { 0 };
    for _ in 0..profiled_steps {
        model.train_batch(&mut params, &mut grads, x.view(), &y)?;
        let t = Instant::now();
        sgd.step(&mut params, &grads);
        let sgd_s = t.elapsed().as_secs_f64();
        let mut laps = model.take_profile();
        laps.push(("sgd update", sgd_s));
        for (name, s) in laps {
            match per_stage.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => v.push(s * 1e3),
                None => per_stage.push((name, vec![s * 1e3])),
            }
        }
    }
    model.set_profiling(false);
    let flops_of = model.stage_flops();
    let stages = per_stage
        .into_iter()
        .map(|(name, v)| {
            let per_sample = flops_of
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0.0, |(_, f)| *f);
            let ms = Spread::of(&v).map_or(f64::NAN, |s| s.median);
            (name, ms, per_sample * batch as f64)
        })
        .collect();
    let flops = flops_of.iter().map(|(_, f)| f).sum::<f64>() * batch as f64;
    Ok(BatchResult {
        batch,
        step,
        flops,
        stages,
        peak_rss: if rss_reset { peak_rss_bytes() } else { None },
    })
}

/// The reference's `pytorch version=V threads=T` line, as `torch V, T thread(s)`.
fn reference_version(stdout: &str) -> Option<String> {
    let rest = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pytorch version="))?;
    let (version, threads) = rest.split_once(" threads=").unwrap_or((rest, "?"));
    Some(format!("torch {version}, {threads} thread(s)"))
}

/// One line of the PyTorch reference's output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReferenceResult {
    pub batch: usize,
    pub step: Spread,
    pub peak_rss: Option<u64>,
}

/// Parses the reference script's machine-readable lines:
/// `pytorch batch=B median_ms=… p25_ms=… p75_ms=… min_ms=… max_ms=… peak_rss_bytes=…`.
/// Other lines are ignored.
pub fn parse_reference(stdout: &str) -> Vec<ReferenceResult> {
    stdout
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("pytorch ")?;
            let get = |key: &str| -> Option<f64> {
                rest.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?
                    .parse()
                    .ok()
            };
            Some(ReferenceResult {
                batch: get("batch")? as usize,
                step: Spread {
                    median: get("median_ms")?,
                    p25: get("p25_ms")?,
                    p75: get("p75_ms")?,
                    min: get("min_ms")?,
                    max: get("max_ms")?,
                },
                peak_rss: get("peak_rss_bytes").map(|b| b as u64),
            })
        })
        .collect()
}

/// Runs the PyTorch reference script; its stderr (venv setup, pip) goes to ours.
/// Returns its results and its version line.
fn run_reference(opts: &BenchOptions) -> Result<(Vec<ReferenceResult>, String)> {
    let sizes: Vec<String> = opts.batch_sizes.iter().map(|b| b.to_string()).collect();
    let [c, h, w] = opts.image;
    let out = Command::new(&opts.python)
        .arg(&opts.script)
        .arg("--venv")
        .arg(&opts.venv)
        .args(["--model", opts.model.name()])
        .args(["--batch-sizes", &sizes.join(",")])
        .args(["--warmup", &opts.warmup.to_string()])
        .args(["--repeats", &opts.repeats.to_string()])
        .args(["--image", &format!("{c},{h},{w}")])
        .args(["--classes", &opts.classes.to_string()])
        .env("OMP_NUM_THREADS", "1")
        .env("MKL_NUM_THREADS", "1")
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {}", opts.python.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{} {} failed ({}); see its messages above",
        opts.python.display(),
        opts.script.display(),
        out.status
    );
    let results = parse_reference(&stdout);
    for b in &opts.batch_sizes {
        ensure!(
            results.iter().any(|r| r.batch == *b),
            "{} printed no result for batch {b}",
            opts.script.display()
        );
    }
    let version =
        reference_version(&stdout).unwrap_or_else(|| "torch (version not printed)".into());
    Ok((results, version))
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("n/a".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
}

fn spread_text(s: &Spread) -> String {
    format!(
        "median {:.1} ms (IQR {:.1}–{:.1}, min {:.1}, max {:.1})",
        s.median, s.p25, s.p75, s.min, s.max
    )
}

/// Per batch size, the median of each round.
#[derive(Debug, Default)]
struct Rounds {
    rps: Vec<Vec<f64>>,
    pytorch: Vec<Vec<ReferenceResult>>,
    peaks: Vec<f64>,
}

/// `median M (range A–B)` of per-round values.
fn over_rounds(v: &[f64], digits: usize) -> String {
    match Spread::of(v) {
        Some(s) => format!(
            "{:.digits$} (range {:.digits$}–{:.digits$})",
            s.median, s.min, s.max
        ),
        None => "n/a".into(),
    }
}

/// Runs the benchmark and prints its report on stdout; the last lines are
/// `ratio rps/pytorch batch=B: R (median of N rounds, range A–B)` when the reference ran.
///
/// # Errors
/// Invalid options, a model that does not fit the image size, or — only when
/// `opts.pytorch` is set — a reference run that failed (after the rps figures measured
/// so far are printed).
pub fn run(opts: &BenchOptions) -> Result<()> {
    ensure!(!opts.batch_sizes.is_empty(), "--batch-sizes is empty");
    ensure!(
        opts.batch_sizes.iter().all(|&b| b > 0),
        "--batch-sizes must all be at least 1"
    );
    ensure!(opts.repeats > 0, "--repeats must be at least 1");
    ensure!(opts.rounds > 0, "--rounds must be at least 1");
    crate::nn::conv_algo::check_env()?;
    crate::nn::simd::check_env().map_err(anyhow::Error::msg)?;
    let [c, h, w] = opts.image;
    let name = opts.model.name();
    let probe = opts
        .model
        .build(c, h, w, opts.classes)
        .with_context(|| format!("image {c}×{h}×{w} does not fit the {}", opts.model.title()))?;
    println!(
        "rps bench: model {name} ({c}×{h}×{w}, {} classes, {} parameters), one thread, SGD lr {LR} momentum {MOMENTUM} weight decay {WEIGHT_DECAY}, warmup {}, repeats {}, rounds {}",
        opts.classes,
        probe.num_params(),
        opts.warmup,
        opts.repeats,
        opts.rounds
    );
    drop(probe);
    let machine = crate::machine::Fingerprint::read();
    println!("machine: {}", machine.line());
    println!("build: rps {}, measured {}", machine.build, machine.date);
    let mut batches = opts.batch_sizes.clone();
    batches.sort_unstable();
    batches.dedup();
    let mut rounds = Rounds {
        rps: vec![Vec::new(); batches.len()],
        ..Rounds::default()
    };
    let mut profiled = Vec::new();
    for round in 0..opts.rounds {
        rounds.peaks.push(matmul_peak_gflops(3));
        let mut line = format!(
            "round {}/{}: peak {:.1} GFLOP/s; rps",
            round + 1,
            opts.rounds,
            rounds.peaks[round]
        );
        for (i, &b) in batches.iter().enumerate() {
            let r = bench_batch(opts, b, 1, round == 0)?;
            rounds.rps[i].push(r.step.median);
            line.push_str(&format!(" {b}: {:.1} ms", r.step.median));
            if round == 0 {
                profiled.push(r);
            }
        }
        if opts.pytorch {
            match run_reference(opts) {
                Ok((r, version)) => {
                    if round == 0 {
                        println!("reference: {version}");
                    }
                    line.push_str("; pytorch");
                    for p in &r {
                        line.push_str(&format!(" {}: {:.1} ms", p.batch, p.step.median));
                    }
                    rounds.pytorch.push(r);
                }
                Err(e) => {
                    report(&profiled, &rounds);
                    println!("PyTorch reference unavailable: {e:#}; no ratio measured");
                    bail!("the PyTorch reference did not run: {e:#}");
                }
            }
        }
        println!("{line}");
    }
    report(&profiled, &rounds);
    println!(
        "load average at the end: {}",
        crate::machine::Fingerprint::read().load
    );
    if !opts.pytorch {
        return Ok(());
    }
    // Per batch size, rps/PyTorch of each round; printed last, after the PyTorch lines.
    let mut ratios = Vec::new();
    for (i, r) in profiled.iter().enumerate() {
        let theirs: Vec<f64> = rounds
            .pytorch
            .iter()
            .filter_map(|round| round.iter().find(|p| p.batch == r.batch))
            .map(|p| p.step.median)
            .collect();
        let rss = rounds.pytorch[0]
            .iter()
            .find(|p| p.batch == r.batch)
            .and_then(|p| p.peak_rss);
        println!(
            "pytorch batch={}: median {} ms over {} rounds, peak RSS {}",
            r.batch,
            over_rounds(&theirs, 1),
            theirs.len(),
            mib(rss)
        );
        let per_round: Vec<f64> = rounds.rps[i]
            .iter()
            .zip(&theirs)
            .map(|(a, b)| a / b)
            .collect();
        ratios.push((r.batch, per_round));
    }
    for (batch, per_round) in ratios {
        let s = Spread::of(&per_round).context("no rounds")?;
        println!(
            "ratio rps/pytorch batch={batch}: {:.3} (median of {} rounds, range {:.3}–{:.3})",
            s.median,
            per_round.len(),
            s.min,
            s.max
        );
    }
    Ok(())
}

/// The rps figures: per batch size the median over rounds of each round's median step,
/// the first round's per-stage profile, and the peak over rounds.
fn report(profiled: &[BatchResult], rounds: &Rounds) {
    println!(
        "matrix-product peak (rps f32 {PEAK_N}×{PEAK_N}×{PEAK_N}, one thread, median of 3 per round): {} GFLOP/s over {} rounds",
        over_rounds(&rounds.peaks, 1),
        rounds.peaks.len()
    );
    let peak = Spread::of(&rounds.peaks).map_or(f64::NAN, |s| s.median);
    for (i, r) in profiled.iter().enumerate() {
        let step = Spread::of(&rounds.rps[i]).map_or(f64::NAN, |s| s.median);
        let gf = r.flops / step / 1e6;
        println!(
            "rps batch={}: median {} ms over {} rounds (first round: {}), {:.1} MFLOP/sample, {gf:.1} GFLOP/s = {:.2} of peak, peak RSS {}",
            r.batch,
            over_rounds(&rounds.rps[i], 1),
            rounds.rps[i].len(),
            spread_text(&r.step),
            r.flops / r.batch as f64 / 1e6,
            gf / peak,
            mib(r.peak_rss)
        );
        println!(
            "  {:<16} {:>8} {:>6} {:>8} {:>7}",
            "stage", "ms", "share", "GFLOP/s", "of peak"
        );
        let total: f64 = r.stages.iter().map(|(_, ms, _)| ms).sum();
        for (name, ms, flops) in &r.stages {
            let (gf, frac) = if *flops > 0.0 {
                let g = flops / ms / 1e6;
                (format!("{g:.1}"), format!("{:.2}", g / peak))
            } else {
                ("-".into(), "-".into())
            };
            println!(
                "  {name:<16} {ms:>8.2} {:>5.1}% {gf:>8} {frac:>7}",
                100.0 * ms / total
            );
        }
        println!("  {:<16} {total:>8.2} (profiled step, first round)", "sum");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_orders_and_medians() {
        let s = Spread::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).expect("spread");
        assert_eq!(
            s,
            Spread {
                median: 3.0,
                p25: 2.0,
                p75: 4.0,
                min: 1.0,
                max: 5.0
            }
        );
        assert_eq!(Spread::of(&[1.0, 2.0]).expect("spread").median, 1.5);
        assert!(Spread::of(&[]).is_none());
    }

    #[test]
    fn parses_reference_lines_and_skips_others() {
        let out = "torch 2.5.1, threads 1\npytorch batch=32 median_ms=50.5 p25_ms=50 p75_ms=51 min_ms=49 max_ms=60 peak_rss_bytes=1048576\npytorch batch=x median_ms=1\n";
        let r = parse_reference(out);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].batch, 32);
        assert_eq!(r[0].step.median, 50.5);
        assert_eq!(r[0].step.max, 60.0);
        assert_eq!(r[0].peak_rss, Some(1048576));
    }

    #[test]
    fn peak_rss_is_read_from_procfs() {
        let rss = peak_rss_bytes().expect("VmHWM on Linux");
        assert!(rss > 1 << 20, "peak RSS {rss} bytes is implausibly small");
    }
}
