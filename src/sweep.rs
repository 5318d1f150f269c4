//! `rps sweep`: runs the runs of a job file one after the other under mpirun.
//!
//! A launcher, not an MPI program: it starts `mpirun -n R <this binary> train ...` per
//! run and waits for it. A run whose metrics file already says `completed` is skipped, so
//! an interrupted sweep picks up where it stopped; `--index I` runs one run only, which
//! is what a Slurm job array element does. A stop signal to the sweep is passed on to
//! the running run, which stops cleanly; the sweep waits for it and exits 75, so no
//! `mpirun` is ever left behind.

use std::process::{Command, ExitStatus, Stdio};

use anyhow::{bail, Context, Result};
use log::info;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

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

/// How a sweep ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    /// Every selected run ran (or was skipped as completed), and none failed.
    Done,
    /// A signal stopped the sweep: what was running and how it ended.
    Stopped(String),
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
pub fn run(opts: &SweepOptions) -> Result<Ended> {
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
        return Ok(Ended::Done);
    }
    let exe = std::env::current_exe().context("cannot find the rps binary")?;
    let selected: Vec<(usize, &JobRun)> = runs
        .iter()
        .enumerate()
        .filter(|(i, _)| opts.index.is_none_or(|x| x == *i))
        .collect();
    let mut stops = Stops::install()?;
    let mut failed = Vec::new();
    for (i, r) in &selected {
        let this = format!("run {i}/{} ({})", runs.len(), r.label);
        if let Some(sig) = stops.first() {
            return Ok(Ended::Stopped(format!(
                "stopped by {sig} before {this}{}",
                failed_so_far(&failed)
            )));
        }
        if !opts.rerun && r.metrics.as_deref().is_some_and(completed) {
            info!("{this}: completed already, skipped");
            continue;
        }
        // --force: a run that did not complete left a metrics file to replace.
        let mut cmd = if r.args.iter().any(|a| a == "--local-ranks") {
            // In-process ranks: no launcher.
            info!("{this}: rps train {}", r.args.join(" "));
            Command::new(&exe)
        } else {
            let Some(ranks) = r.ranks else {
                bail!(
                    "{}: run {i} has no ranks (set `ranks` at the top of the file or in [sweep], or use local_ranks)",
                    opts.job.display()
                );
            };
            info!(
                "{this}: {} -n {ranks} rps train {}",
                opts.mpirun,
                r.args.join(" ")
            );
            let mut c = Command::new(&opts.mpirun);
            c.args(["-n", &ranks.to_string()]).arg(&exe);
            c
        };
        cmd.arg("train").args(&r.args).arg("--force");
        let status = supervise(cmd, &mut stops).with_context(|| format!("cannot start run {i}"))?;
        if let Some(sig) = stops.first() {
            let metrics = r
                .metrics
                .as_ref()
                .map(|m| format!("; its metrics file {} says how", m.display()))
                .unwrap_or_default();
            return Ok(Ended::Stopped(format!(
                "stopped by {sig} during {this}: the run was told to stop and ended ({status}){metrics}; run the sweep again to rerun it and the rest (completed runs are skipped){}",
                failed_so_far(&failed)
            )));
        }
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
    Ok(Ended::Done)
}

/// The signals that stop a sweep: SIGTERM (Slurm, `kill`), SIGINT (Ctrl-C), SIGUSR1
/// and SIGHUP (the terminal closed). The running run is told to stop cleanly, the sweep
/// waits for it, and no run starts after it.
struct Stops {
    signals: Signals,
    /// The first stop signal received, and how many were received.
    first: Option<i32>,
    count: usize,
}

impl Stops {
    fn install() -> Result<Stops> {
        Ok(Stops {
            signals: Signals::new([SIGTERM, SIGINT, SIGUSR1, SIGHUP])
                .context("cannot install the signal handlers")?,
            first: None,
            count: 0,
        })
    }

    /// Takes in the signals received since the last call; the new ones, in order.
    fn poll(&mut self) -> Vec<i32> {
        let new: Vec<i32> = self.signals.pending().collect();
        self.first = self.first.or(new.first().copied());
        self.count += new.len();
        new
    }

    /// The first stop signal received so far, by name.
    fn first(&mut self) -> Option<&'static str> {
        self.poll();
        self.first.map(|s| match s {
            SIGTERM => "SIGTERM",
            SIGINT => "SIGINT",
            SIGUSR1 => "SIGUSR1",
            _ => "SIGHUP",
        })
    }
}

fn failed_so_far(failed: &[String]) -> String {
    match failed.is_empty() {
        true => String::new(),
        false => format!("; failed before: {}", failed.join("; ")),
    }
}

/// Starts a run's process and waits for it, passing on a stop: the first stop signal the
/// sweep receives reaches the run as SIGUSR1, which `mpirun` forwards to every rank
/// without killing them a second later as it does on SIGTERM and SIGINT (and which
/// `rps train --local-ranks` takes as a stop too); the ranks then write their rows and
/// a checkpoint and exit 75. A second stop signal is passed on as SIGTERM, which ends
/// the run at once.
///
/// The run gets a process group of its own (so Ctrl-C reaches only the sweep, which
/// passes it on once), no standard input (a background process group must not read the
/// terminal), and SIGUSR1 if the sweep itself dies (SIGKILL cannot be caught), so a run
/// is never orphaned.
fn supervise(mut cmd: Command, stops: &mut Stops) -> std::io::Result<ExitStatus> {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0).stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGUSR1) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    // Stops passed on: the first as SIGUSR1, the second as SIGTERM; more change nothing.
    // (No stop came before the run started, or it would not have started; one that came
    // between that check and the spawn is counted here.)
    let mut passed = 0;
    loop {
        stops.poll();
        while passed < stops.count.min(2) {
            let sig = if passed == 0 { SIGUSR1 } else { SIGTERM };
            // SAFETY: kill only sends a signal to the child we started and still own.
            unsafe { libc::kill(pid, sig) };
            passed += 1;
        }
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
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
            Ok(flags) => match crate::cli::validate::train_config(&flags, world, String::new()) {
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
