//! `rps sweep`: runs the runs of a job file one after the other under mpirun.
//!
//! A launcher, not an MPI program: it starts `mpirun -n R <this binary> train ...` per
//! run and waits for it. A run whose metrics file already says `completed` is skipped, so
//! an interrupted sweep picks up where it stopped; `--index I` runs one run only, which
//! is what a Slurm job array element does.

use std::process::Command;

use anyhow::{bail, Context, Result};
use log::info;

use crate::config::TrainConfig;
use crate::job::{JobFile, JobRun};

/// What `rps sweep` was asked to do.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    pub job: std::path::PathBuf,
    pub list: bool,
    pub index: Option<usize>,
    pub rerun: bool,
    pub mpirun: String,
}

pub use crate::metrics::read::completed;

/// A job file that `rps train` would refuse, found before any run starts: a usage
/// error (exit status 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadJob(pub String);

/// Runs (or lists) the sweep.
///
/// # Errors
/// An invalid job file ([`BadJob`]: every value of every run is checked first), an
/// index out of range, or runs that failed (named).
pub fn run(opts: &SweepOptions) -> Result<()> {
    let bad = |e: String| anyhow::Error::new(BadJob(e));
    let job = JobFile::load(&opts.job).map_err(|e| bad(e.to_string()))?;
    crate::cli::check_job_keys(&job).map_err(bad)?;
    let runs = job.runs().map_err(|e| bad(e.to_string()))?;
    check_runs(&job, &runs).map_err(bad)?;
    if let Some(i) = opts.index {
        if i >= runs.len() {
            bail!(
                "--index {i}: {} has {} runs (0..{})",
                opts.job.display(),
                runs.len(),
                runs.len() - 1
            );
        }
    }
    if opts.list {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for (i, r) in runs.iter().enumerate() {
            let metrics = r
                .metrics
                .as_ref()
                .map(|m| m.display().to_string())
                .unwrap_or_default();
            let done = if r.metrics.as_deref().is_some_and(completed) {
                " (completed)"
            } else {
                ""
            };
            let local = r.args.iter().position(|a| a == "--local-ranks");
            let ranks = match local.and_then(|p| r.args.get(p + 1)) {
                Some(n) => format!("local_ranks={n}"),
                None => format!("ranks={}", r.ranks.map_or("?".into(), |n| n.to_string())),
            };
            if writeln!(out, "{i}\t{ranks}\t{metrics}{done}\t{}", r.label).is_err() {
                break; // e.g. piped into head
            }
        }
        return Ok(());
    }
    let exe = std::env::current_exe().context("cannot find the rps binary")?;
    let selected: Vec<(usize, &JobRun)> = runs
        .iter()
        .enumerate()
        .filter(|(i, _)| opts.index.is_none_or(|x| x == *i))
        .collect();
    let mut failed = Vec::new();
    for (i, r) in &selected {
        if !opts.rerun && r.metrics.as_deref().is_some_and(completed) {
            info!(
                "run {i}/{} ({}): completed already, skipped",
                runs.len(),
                r.label
            );
            continue;
        }
        // --force: a run that did not complete left a metrics file to replace.
        let status = if r.args.iter().any(|a| a == "--local-ranks") {
            // In-process ranks: no launcher.
            info!("run {i}/{} ({}): rps train {}", runs.len(), r.label, r.args.join(" "));
            Command::new(&exe).arg("train").args(&r.args).arg("--force").status()
        } else {
            let Some(ranks) = r.ranks else {
                bail!(
                    "{}: run {i} has no ranks (set `ranks` at the top of the file or in [sweep], or use local_ranks)",
                    opts.job.display()
                );
            };
            info!(
                "run {i}/{} ({}): {} -n {ranks} rps train {}",
                runs.len(),
                r.label,
                opts.mpirun,
                r.args.join(" ")
            );
            Command::new(&opts.mpirun)
                .args(["-n", &ranks.to_string()])
                .arg(&exe)
                .arg("train")
                .args(&r.args)
                .arg("--force")
                .status()
        }
        .with_context(|| format!("cannot start run {i}"))?;
        if !status.success() {
            failed.push(format!("{i} ({}): {status}", r.label));
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} runs failed: {}",
            failed.len(),
            selected.len(),
            failed.join("; ")
        );
    }
    Ok(())
}

/// Builds every run's configuration as `rps train` will, for the run's world size, so
/// that a value it refuses (`lr = [0.1, -5.0]`, more servers than a run has ranks) stops
/// the sweep before its first run, not when that run starts. A run without a known
/// world size is checked when it starts.
///
/// # Errors
/// The first refused run: the job file, the key and value the message names (a sweep
/// value of the run first, else one of `[train]`), the run, and why.
pub fn check_runs(job: &JobFile, runs: &[JobRun]) -> Result<(), String> {
    for (i, r) in runs.iter().enumerate() {
        let local = r.args.iter().position(|a| a == "--local-ranks");
        let world = match local.and_then(|p| r.args.get(p + 1)) {
            Some(n) => n.parse().ok(),
            None => r.ranks,
        };
        let Some(world) = world else {
            continue;
        };
        let why = match crate::cli::parse_train(&r.args) {
            Ok(flags) => match TrainConfig::build(&flags, world, String::new()) {
                Ok(_) => continue,
                Err(e) => e.to_string(),
            },
            Err(e) => {
                let e = e.to_string();
                let first = e.lines().next().unwrap_or_default().to_string();
                first.trim_start_matches("error: ").to_string()
            }
        };
        let run = match r.label.as_str() {
            "" => format!("run {i} of {}", runs.len()),
            label => format!("run {i} of {}: {label}", runs.len()),
        };
        let file = job.path.display();
        return Err(match blamed_key(job, r, &why) {
            Some((key, value)) => format!("job file {file}: {key} = {value} ({run}): {why}"),
            None => format!("job file {file}: {run}: {why}"),
        });
    }
    Ok(())
}

/// The key of the job file behind a message that names flags (`--lr -5 must be ...`):
/// the first named flag that is a sweep value of run `r`, else one of `[train]`.
fn blamed_key(job: &JobFile, r: &JobRun, why: &str) -> Option<(String, toml::Value)> {
    let named: Vec<String> = why
        .match_indices("--")
        .map(|(at, _)| {
            why[at + 2..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect::<String>()
                .replace('-', "_")
        })
        .filter(|k| !k.is_empty())
        .collect();
    [&r.values, &job.train].iter().find_map(|pairs| {
        named
            .iter()
            .find_map(|k| pairs.iter().find(|(key, _)| key == k).cloned())
    })
}
