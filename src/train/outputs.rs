//! What a run leaves on disk besides its step rows: the metrics file's creation (or
//! reopening on --resume) with the run's attributes, checkpoints, the interrupted status,
//! and the saved model. Output paths are checked before the first step, never after.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use super::paths::check_writable;
use super::setup::Setup;
use crate::checkpoint;
use crate::config::TrainConfig;
use crate::files::Lock;
use crate::metrics::attrs::{self, AttrValue};
use crate::metrics::{MetricsWriter, RunEnv, RunFile};
use crate::nn::Model;

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
