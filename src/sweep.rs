//! `rps sweep`: runs the runs of a job file one after the other under mpirun.
//!
//! A launcher, not an MPI program: it starts `mpirun -n R <this binary> train ...` per
//! run and waits for it. A run whose metrics file already says `completed` is skipped, so
//! an interrupted sweep picks up where it stopped; `--index I` runs one run only, which
//! is what a Slurm job array element does.

use std::process::Command;

use anyhow::{bail, Context, Result};
use log::info;

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

/// Runs (or lists) the sweep.
///
/// # Errors
/// An invalid job file, an index out of range, or runs that failed (named).
pub fn run(opts: &SweepOptions) -> Result<()> {
    let job = JobFile::load(&opts.job)?;
    crate::cli::check_job_keys(&job).map_err(anyhow::Error::msg)?;
    let runs = job.runs()?;
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
