//! Checkpoints: everything a run needs to continue, one HDF5 file per rank.
//!
//! Layout: `DIR/step-00000123/rank-00000.h5` … and `DIR/step-00000123/COMPLETE`. Each
//! rank file is written under a temporary name and renamed once closed; rank 0 writes
//! `COMPLETE` (also atomically) only after every rank has renamed its file, so a
//! checkpoint without `COMPLETE` is never used, whatever moment a crash struck.
//! Everything else a step depends on (data order, block assignment, drop decisions) is a
//! pure function of the seed and the step, so a resumed run with oracle detection
//! continues bit for bit.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use hdf5::types::VarLenUnicode;

use crate::counters::StepCounters;
use crate::hash::hash_words;

/// Marker file of a complete checkpoint.
pub const COMPLETE: &str = "COMPLETE";

/// The state of one rank at the end of a step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RankState {
    /// Steps completed.
    pub step: u64,
    /// This rank's replica and optimizer momentum (empty on a pure server).
    pub params: Vec<f32>,
    pub velocity: Vec<f32>,
    /// Per-link counters of the exchange, flattened (see `Exchange::link_state`).
    pub links: Vec<u64>,
    /// Rank 0: rows of the metrics file at this step (steps, evaluations, trace).
    pub metrics_rows: [u64; 3],
    /// Whether the evaluation due at this step (if any) was done before the checkpoint;
    /// a stop checkpoints first, and the resumed run then evaluates first.
    pub evaluated: bool,
    /// Every step counter summed over ranks and over the steps done (the same on every
    /// rank), stored by name so a checkpoint of another counter set is refused.
    pub totals: StepCounters,
}

/// Directory of the checkpoint taken after `step` steps.
pub fn step_dir(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("step-{step:08}"))
}

fn rank_file(step_dir: &Path, rank: usize) -> PathBuf {
    step_dir.join(format!("rank-{rank:05}.h5"))
}

fn text(s: &str) -> Result<VarLenUnicode> {
    s.parse::<VarLenUnicode>()
        .map_err(|e| anyhow::anyhow!("cannot store {s:?}: {e}"))
}

/// Writes this rank's file of the checkpoint after `state.step` steps, atomically.
///
/// # Errors
/// The directory cannot be created or the file written.
pub fn write_rank(dir: &Path, rank: usize, fingerprint: &str, state: &RankState) -> Result<()> {
    let sdir = step_dir(dir, state.step);
    std::fs::create_dir_all(&sdir)
        .with_context(|| format!("--checkpoint-dir: cannot create {}", sdir.display()))?;
    let path = rank_file(&sdir, rank);
    let tmp = sdir.join(format!(".rank-{rank:05}.h5.partial"));
    let write = || -> Result<()> {
        let f = hdf5::File::create(&tmp)?;
        f.new_attr::<u64>()
            .shape(())
            .create("step")?
            .write_scalar(&state.step)?;
        f.new_attr::<u64>()
            .shape(())
            .create("rank")?
            .write_scalar(&(rank as u64))?;
        f.new_attr::<VarLenUnicode>()
            .shape(())
            .create("fingerprint")?
            .write_scalar(&text(fingerprint)?)?;
        f.new_attr::<u64>()
            .shape(())
            .create("checksum")?
            .write_scalar(&checksum(state))?;
        f.new_dataset_builder()
            .with_data(&state.params[..])
            .create("params")?;
        f.new_dataset_builder()
            .with_data(&state.velocity[..])
            .create("velocity")?;
        f.new_dataset_builder()
            .with_data(&state.links[..])
            .create("links")?;
        f.new_dataset_builder()
            .with_data(&state.metrics_rows[..])
            .create("metrics_rows")?;
        f.new_attr::<u8>()
            .shape(())
            .create("evaluated")?
            .write_scalar(&u8::from(state.evaluated))?;
        let mut totals = Vec::with_capacity(StepCounters::LEN);
        state.totals.to_flat(&mut totals);
        f.new_dataset_builder()
            .with_data(&totals[..])
            .create("totals")?
            .new_attr::<VarLenUnicode>()
            .shape(())
            .create("columns")?
            .write_scalar(&text(&StepCounters::NAMES.join(","))?)?;
        f.close()?;
        Ok(())
    };
    let result = write()
        .and_then(|()| std::fs::rename(&tmp, &path).map_err(Into::into))
        .with_context(|| format!("--checkpoint-dir: cannot write {}", path.display()));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Rank 0, after every rank has written its file: marks the checkpoint complete, and
/// removes complete checkpoints older than the newest `keep`.
///
/// # Errors
/// The marker cannot be written.
pub fn mark_complete(dir: &Path, step: u64, world_size: usize, keep: usize) -> Result<()> {
    let sdir = step_dir(dir, step);
    let missing: Vec<usize> = (0..world_size)
        .filter(|&r| !rank_file(&sdir, r).is_file())
        .collect();
    ensure!(missing.is_empty(), "checkpoint {}: rank file(s) {missing:?} missing (is --checkpoint-dir on a file system all ranks share?)", sdir.display());
    let tmp = sdir.join(".COMPLETE.partial");
    std::fs::write(&tmp, format!("step {step}\nworld_size {world_size}\n"))
        .and_then(|()| std::fs::rename(&tmp, sdir.join(COMPLETE)))
        .with_context(|| format!("cannot mark {} complete", sdir.display()))?;
    let complete = complete_steps(dir)?;
    for &old in complete.iter().rev().skip(keep.max(1)) {
        let _ = std::fs::remove_dir_all(step_dir(dir, old));
    }
    Ok(())
}

/// Steps of the complete checkpoints in `dir`, ascending.
///
/// # Errors
/// `dir` cannot be listed.
pub fn complete_steps(dir: &Path) -> Result<Vec<u64>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("--resume {}: cannot read the directory", dir.display()))?;
    let mut steps: Vec<u64> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix("step-")?.parse().ok()?;
            e.path().join(COMPLETE).is_file().then_some(step)
        })
        .collect();
    steps.sort_unstable();
    Ok(steps)
}

/// Steps of every checkpoint directory in `dir`, complete or not (none if `dir` does
/// not exist).
///
/// # Errors
/// `dir` exists but cannot be listed.
pub fn all_steps(dir: &Path) -> Result<Vec<u64>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "--checkpoint-dir {}: cannot read the directory",
            dir.display()
        )
    })?;
    let mut steps: Vec<u64> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .into_string()
                .ok()?
                .strip_prefix("step-")?
                .parse()
                .ok()
        })
        .collect();
    steps.sort_unstable();
    Ok(steps)
}

/// Deletes the checkpoints of `steps` in `dir`.
///
/// # Errors
/// A directory that cannot be removed.
pub fn remove_all(dir: &Path, steps: &[u64]) -> Result<()> {
    for &s in steps {
        let d = step_dir(dir, s);
        std::fs::remove_dir_all(&d).with_context(|| format!("cannot remove {}", d.display()))?;
    }
    Ok(())
}

/// This rank's state in every complete checkpoint of `dir`, newest first: each one read
/// and verified against its checksum, or the reason it cannot be used (unreadable,
/// corrupt), so the job can fall back to an older checkpoint that every rank can read.
///
/// # Errors
/// No complete checkpoint at all, or one written under another configuration (a
/// fingerprint mismatch is never a reason to fall back).
pub fn read_candidates(
    dir: &Path,
    rank: usize,
    fingerprint: &str,
) -> Result<Vec<(u64, Result<RankState>)>> {
    let steps = complete_steps(dir)?;
    if steps.is_empty() {
        bail!("--resume {}: no complete checkpoint (a step-NNNNNNNN directory with a COMPLETE marker)", dir.display());
    }
    let mut out = Vec::new();
    for &step in steps.iter().rev() {
        let path = rank_file(&step_dir(dir, step), rank);
        let theirs = hdf5::File::open(&path)
            .and_then(|f| f.attr("fingerprint"))
            .and_then(|a| a.read_scalar::<VarLenUnicode>());
        if let Ok(theirs) = &theirs {
            if theirs.as_str() != fingerprint {
                let diff = fingerprint_diff(theirs.as_str(), fingerprint);
                bail!(
                    "--resume {}: the checkpoint was written by an incompatible configuration ({diff})",
                    dir.display()
                );
            }
        }
        out.push((step, read_rank(&path, step)));
    }
    Ok(out)
}

/// Reads and verifies one rank file.
fn read_rank(path: &Path, step: u64) -> Result<RankState> {
    let ctx = || format!("--resume: cannot read {}", path.display());
    let f = hdf5::File::open(path).with_context(ctx)?;
    let read_u64 = |name: &str| {
        f.dataset(name)
            .and_then(|d| d.read_raw::<u64>())
            .with_context(ctx)
    };
    let rows = read_u64("metrics_rows")?;
    let totals = f.dataset("totals").with_context(ctx)?;
    let columns = totals
        .attr("columns")
        .and_then(|a| a.read_scalar::<VarLenUnicode>())
        .with_context(ctx)?;
    ensure!(
        columns.as_str() == StepCounters::NAMES.join(","),
        "{}: the checkpoint counts {}, this build of rps counts {} (written by another version)",
        path.display(),
        columns.as_str(),
        StepCounters::NAMES.join(",")
    );
    let totals = totals.read_raw::<f64>().with_context(ctx)?;
    ensure!(
        rows.len() == 3 && totals.len() == StepCounters::LEN,
        "{}: malformed checkpoint",
        path.display()
    );
    let read_f32 = |name: &str| {
        f.dataset(name)
            .and_then(|d| d.read_raw::<f32>())
            .with_context(ctx)
    };
    let state = RankState {
        step: f
            .attr("step")
            .and_then(|a| a.read_scalar::<u64>())
            .with_context(ctx)?,
        params: read_f32("params")?,
        velocity: read_f32("velocity")?,
        links: read_u64("links")?,
        metrics_rows: [rows[0], rows[1], rows[2]],
        evaluated: f
            .attr("evaluated")
            .and_then(|a| a.read_scalar::<u8>())
            .with_context(ctx)?
            != 0,
        totals: StepCounters::from_flat(&totals),
    };
    let stored = f
        .attr("checksum")
        .and_then(|a| a.read_scalar::<u64>())
        .with_context(|| format!("{}: no checksum", path.display()))?;
    ensure!(
        stored == checksum(&state) && state.step == step,
        "{}: the checksum does not match the content (the file is corrupt)",
        path.display()
    );
    Ok(state)
}

/// A hash of everything a rank file holds.
fn checksum(s: &RankState) -> u64 {
    let mut totals = Vec::new();
    s.totals.to_flat(&mut totals);
    let mut words = vec![s.step];
    words.extend(
        s.params
            .iter()
            .chain(&s.velocity)
            .map(|x| u64::from(x.to_bits())),
    );
    words.extend(&s.links);
    words.extend(s.metrics_rows);
    words.push(u64::from(s.evaluated));
    words.extend(totals.iter().map(|x| x.to_bits()));
    hash_words(&words)
}

/// Names the fields of two `key=value;` fingerprints that differ.
pub fn fingerprint_diff(theirs: &str, ours: &str) -> String {
    let parse = |s: &str| -> Vec<(String, String)> {
        s.split(';')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    };
    let (a, b) = (parse(theirs), parse(ours));
    let diffs: Vec<String> = b
        .iter()
        .filter_map(|(k, v)| {
            let old = a
                .iter()
                .find(|(k2, _)| k2 == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or("(absent)");
            (old != v).then(|| format!("{k}: checkpoint {old}, now {v}"))
        })
        .collect();
    if diffs.is_empty() {
        "fingerprints differ".into()
    } else {
        diffs.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: u64) -> RankState {
        RankState {
            step,
            params: vec![1.0, 2.0],
            velocity: vec![0.5, 0.25],
            links: vec![3, 4, 5],
            metrics_rows: [step, 1, 0],
            evaluated: true,
            totals: StepCounters {
                packets_up: 70,
                packets_dropped_up: 7,
                wall_s: 1.5,
                ..Default::default()
            },
        }
    }

    #[test]
    fn only_complete_checkpoints_are_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for r in 0..2 {
            write_rank(d, r, "a=1;b=2", &state(10)).unwrap();
        }
        mark_complete(d, 10, 2, 2).unwrap();
        // Step 20: only rank 0 wrote before the "crash"; never marked complete.
        write_rank(d, 0, "a=1;b=2", &state(20)).unwrap();
        assert!(mark_complete(d, 20, 2, 2)
            .unwrap_err()
            .to_string()
            .contains("[1] missing"));
        assert_eq!(complete_steps(d).unwrap(), vec![10]);
        let c = read_candidates(d, 1, "a=1;b=2").unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].1.as_ref().unwrap(), &state(10));
        let err = read_candidates(d, 1, "a=1;b=3").unwrap_err().to_string();
        assert!(err.contains("b: checkpoint 2, now 3"), "{err}");
    }

    #[test]
    fn old_checkpoints_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        for step in [5, 10, 15] {
            write_rank(dir.path(), 0, "x=1", &state(step)).unwrap();
            mark_complete(dir.path(), step, 1, 2).unwrap();
        }
        assert_eq!(complete_steps(dir.path()).unwrap(), vec![10, 15]);
        let empty = tempfile::tempdir().unwrap();
        assert!(read_candidates(empty.path(), 0, "x=1")
            .unwrap_err()
            .to_string()
            .contains("no complete checkpoint"));
    }

    #[test]
    fn a_corrupt_file_is_detected_and_older_checkpoints_remain_candidates() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for step in [5, 10] {
            write_rank(d, 0, "x=1", &state(step)).unwrap();
            mark_complete(d, step, 1, 2).unwrap();
        }
        // Flip bytes of the newest file's parameters, as a bad disk would.
        let path = rank_file(&step_dir(d, 10), 0);
        let f = hdf5::File::open_rw(&path).unwrap();
        f.dataset("params")
            .unwrap()
            .write(&[1.0f32, -152_943.0])
            .unwrap();
        drop(f);
        let c = read_candidates(d, 0, "x=1").unwrap();
        assert_eq!(c.iter().map(|x| x.0).collect::<Vec<_>>(), vec![10, 5]);
        let err = format!("{:#}", c[0].1.as_ref().unwrap_err());
        assert!(err.contains("checksum does not match"), "{err}");
        assert_eq!(c[1].1.as_ref().unwrap(), &state(5));
    }
}
