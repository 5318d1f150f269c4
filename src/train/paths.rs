//! The output paths of a run, checked before anything is written: no output is also an
//! input, no two outputs are one file, and each can be created where it points.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use crate::config::TrainConfig;
use crate::drop::DropSpec;
use crate::files;

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
