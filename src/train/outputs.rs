//! What a run leaves on disk besides its step rows: the metrics file's creation (or
//! reopening on --resume) with the run's attributes, checkpoints, the interrupted status,
//! and the saved model. Output paths are checked before the first step, never after.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use log::info;

use super::run::Run;
use super::setup::Setup;
use super::Failure;
use crate::checkpoint::{self, RankState};
use crate::comm::{agree, Transport};
use crate::config::{DropSpec, TrainConfig};
use crate::files::{self, Lock};
use crate::metrics::attrs::{self, AttrValue};
use crate::metrics::{MetricsWriter, RunEnv, RunFile};
use crate::nn::Model;

/// Keeps the newest this many complete checkpoints.
const KEEP_CHECKPOINTS: usize = 2;

/// Rank 0's open outputs: the metrics file and the lock on the checkpoint directory,
/// both held until the run ends.
pub(super) struct Outputs {
    pub writer: MetricsWriter,
    pub checkpoint_lock: Option<Lock>,
}

/// Rank 0: locks the checkpoint directory, checks the output paths and creates the
/// metrics file with the run's attributes, or reopens it to continue a resumed run.
///
/// # Errors
/// Outputs that exist without --force, a checkpoint directory of another run or in use
/// by another job, a metrics file that cannot be created or continued.
pub(super) fn open(cfg: &TrainConfig, s: &Setup, env: &RunEnv) -> Result<Outputs> {
    let checkpoint_lock = match &cfg.checkpoint_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("--checkpoint-dir {}: cannot create it", dir.display()))?;
            let what = format!("--checkpoint-dir {}", dir.display());
            Some(Lock::acquire(&dir.join(".lock"), &what)?)
        }
        None => None,
    };
    Ok(Outputs {
        writer: open_metrics(cfg, s, env)?,
        checkpoint_lock,
    })
}

fn open_metrics(cfg: &TrainConfig, s: &Setup, env: &RunEnv) -> Result<MetricsWriter> {
    if let (Some(dir), None) = (&cfg.checkpoint_dir, &cfg.resume) {
        // A fresh run must not mix its checkpoints with an earlier run's: a later
        // --resume would pick whichever is newest.
        let old = checkpoint::all_steps(dir)?;
        if !old.is_empty() {
            ensure!(
                cfg.force,
                "--checkpoint-dir {} already holds checkpoints of a run (continue it with --resume {}, or use --force to delete them and start over)",
                dir.display(),
                dir.display()
            );
            checkpoint::remove_all(dir, &old)?;
        }
    }
    // Repeated here for callers of `train` that skipped `check_outputs`.
    check_writable(cfg)?;
    let facts = s.facts(cfg, Some(env));
    match s.resume.candidates.first() {
        Some(state) => {
            check_metrics_of_this_run(cfg, &s.fingerprint)?;
            let resumed: [(&str, AttrValue); 6] = [
                (attrs::STATUS.name, attrs::RUNNING.into()),
                (attrs::STEPS.name, s.total_steps.into()),
                (
                    attrs::EPOCHS.name,
                    (attrs::EPOCHS.value)(&facts).unwrap_or(AttrValue::Float(0.0)),
                ),
                (attrs::RESUMED_AT_STEP.name, state.step.to_string().into()),
                (attrs::COMMAND_LINE.name, env.command_line.clone().into()),
                // Where this run is, which after a requeue need not be where it began.
                (attrs::HOSTS.name, env.hosts.join(",").into()),
            ];
            MetricsWriter::reopen(&cfg.metrics, state.metrics_rows, &resumed)
        }
        None => {
            let mut all = attrs::attributes(&facts);
            all.insert(1, (attrs::STATUS.name, attrs::RUNNING.into()));
            MetricsWriter::create(&cfg.metrics, cfg.force, &all)
        }
    }
}

/// With --resume, the metrics file continued must be this run's (same fingerprint).
fn check_metrics_of_this_run(cfg: &TrainConfig, fingerprint: &str) -> Result<()> {
    let what = format!("--resume: --metrics {}", cfg.metrics.display());
    let f = RunFile::open(&cfg.metrics).with_context(|| what.clone())?;
    let theirs = f
        .attr_str(attrs::FINGERPRINT.name)
        .with_context(|| what.clone())?;
    let Some(theirs) = theirs else {
        bail!("{what} has no fingerprint attribute: it was not written by this version of rps");
    };
    ensure!(
        theirs == fingerprint,
        "{what} belongs to another run ({})",
        checkpoint::fingerprint_diff(&theirs, fingerprint)
    );
    Ok(())
}

/// Refuses an output that is also an input, or two outputs that are one file, before
/// anything is written (`--metrics` equal to `--dataset` or to the `--job` file, with
/// `--force`, would destroy it). The checkpoint directory counts as an output: rps
/// writes into it.
///
/// # Errors
/// The two flags that name the same file.
pub(super) fn check_paths(cfg: &TrainConfig) -> Result<()> {
    let mut outputs = vec![("--metrics", cfg.metrics.clone())];
    outputs.extend(cfg.save_model.clone().map(|p| ("--save-model", p)));
    if let Some(dir) = &cfg.checkpoint_dir {
        // Without --checkpoint-dir, checkpoints go to the --resume directory.
        let flag = match cfg.resume.as_ref() == Some(dir) {
            true => "--resume",
            false => "--checkpoint-dir",
        };
        outputs.push((flag, dir.clone()));
    }
    let mut inputs = vec![("--dataset", cfg.dataset.clone())];
    inputs.extend(cfg.job.clone().map(|p| ("--job", p)));
    match &cfg.drop {
        DropSpec::Replay { file } => inputs.push(("--replay-trace", file.clone())),
        DropSpec::PerLink { file, .. } => inputs.push(("--link-rates", file.clone())),
        _ => {}
    }
    let all: Vec<_> = outputs
        .iter()
        .chain(&inputs)
        .map(|(f, p)| (*f, files::same_file_key(p)))
        .collect();
    for (i, (out, key)) in all.iter().enumerate().take(outputs.len()) {
        if let Some((other, _)) = all
            .iter()
            .enumerate()
            .find(|(j, (_, k))| *j != i && k == key)
            .map(|(_, x)| x)
        {
            bail!(
                "{out} {} is also {other}: choose another path for {out}",
                outputs[i].1.display()
            );
        }
    }
    Ok(())
}

/// Rank 0, before the first step: --metrics and --save-model name files that can be
/// created where they point (their directories are created), so a bad path stops the job
/// at once with exit status 2, and a model is never lost to one after training. Whether
/// the metrics file may be replaced (--force, --resume) is decided when it is opened.
///
/// # Errors
/// A path is a directory, names no file, or no file can be created there; --save-model
/// exists without --force.
pub(super) fn check_writable(cfg: &TrainConfig) -> Result<()> {
    creatable(
        &format!("--metrics {}", cfg.metrics.display()),
        &cfg.metrics,
    )?;
    let Some(path) = &cfg.save_model else {
        return Ok(());
    };
    let what = format!("--save-model {}", path.display());
    ensure!(!path.is_dir(), "{what} is a directory: name a file");
    ensure!(
        cfg.force || !path.exists(),
        "{what} already exists (use --force to overwrite it)"
    );
    creatable(&what, path)
}

/// `path` is not a directory, names a file, and a file can be created beside it (its
/// directory is created if missing).
fn creatable(what: &str, path: &Path) -> Result<()> {
    ensure!(!path.is_dir(), "{what} is a directory: name a file");
    ensure!(path.file_name().is_some(), "{what} names no file");
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("{what}: cannot create directory {}", dir.display()))?;
    // A file beside it, not the file itself: a failed run must leave nothing behind.
    let probe = files::sibling(path, &format!("probe-{}", std::process::id()));
    std::fs::File::create(&probe)
        .with_context(|| format!("{what}: cannot create a file in {}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

impl<T: Transport + ?Sized> Run<'_, T> {
    /// Every rank writes its state after `done` steps (`evaluated`: the evaluation due at
    /// `done`, if any, is already in the metrics); once all have, rank 0 marks the
    /// checkpoint complete. Collective.
    pub(super) fn checkpoint(&mut self, done: u64, evaluated: bool) -> Result<(), Failure> {
        let Some(dir) = self.cfg.checkpoint_dir.clone() else {
            return Ok(());
        };
        // The published metrics file must hold at least the rows the checkpoint counts.
        let rows = match &self.writer {
            Some(w) => {
                w.flush()?;
                w.rows()?
            }
            None => [0; 3],
        };
        let state = RankState {
            step: done,
            params: self.replica.params.clone(),
            velocity: self.replica.sgd.velocity().to_vec(),
            links: self.exchange.link_state(),
            metrics_rows: rows,
            evaluated,
            totals: self.totals,
        };
        let rank = self.net.rank();
        let written = checkpoint::write_rank(&dir, rank, &self.setup.fingerprint, &state);
        agree(self.net, written)?;
        if rank == 0 {
            checkpoint::mark_complete(&dir, done, self.net.size(), KEEP_CHECKPOINTS)?;
            info!(
                "checkpoint after step {done} in {}",
                checkpoint::step_dir(&dir, done).display()
            );
        }
        self.net.barrier();
        self.progress.tick();
        Ok(())
    }

    /// Closes the metrics as diverged after `done` steps.
    pub(super) fn diverged(&mut self, done: u64, what: &str) -> Result<Failure, Failure> {
        if let Some(w) = self.writer.take() {
            w.set_attr(attrs::STATUS.name, &attrs::DIVERGED.into())?;
            w.set_attr(attrs::STEPS_COMPLETED.name, &done.into())?;
            w.close()?;
        }
        Ok(Failure::Diverged {
            step: done,
            what: what.to_string(),
        })
    }

    /// Closes the metrics as interrupted; the failure says where to resume from.
    pub(super) fn interrupted(&mut self, done: u64) -> Result<Failure, Failure> {
        if let Some(w) = self.writer.take() {
            w.set_attr(attrs::STATUS.name, &attrs::INTERRUPTED.into())?;
            w.set_attr(attrs::STEPS_COMPLETED.name, &done.into())?;
            w.close()?;
        }
        let checkpoint = self
            .cfg
            .checkpoint_dir
            .as_ref()
            .map(|d| checkpoint::step_dir(d, done));
        Ok(Failure::Interrupted {
            step: done,
            checkpoint,
        })
    }
}

/// Writes the flat parameter vector and its layout (one attribute per tensor: offset
/// and length) to an HDF5 file.
pub(super) fn save_model(path: &Path, model: &dyn Model, params: &[f32]) -> Result<()> {
    let ctx = || format!("--save-model {}: cannot write the model", path.display());
    let f = hdf5::File::create(path).with_context(ctx)?;
    let ds = f
        .new_dataset_builder()
        .with_data(params)
        .create("params")
        .with_context(ctx)?;
    for (name, range) in model.param_layout() {
        ds.new_attr::<u64>()
            .shape(2)
            .create(name.as_str())
            .and_then(|a| a.write(&[range.start as u64, range.len() as u64]))
            .with_context(ctx)?;
    }
    f.close().with_context(ctx)?;
    Ok(())
}
