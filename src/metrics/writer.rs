//! The HDF5 run log, written by rank 0.
//!
//! Root attributes hold the configuration and environment; the datasets are those of
//! [`super::schema`], 1-D, extendable and chunked, growing by one row per step (or per
//! evaluation). Rank 0 writes a hidden working copy beside `--metrics` and publishes it
//! (flush, copy, sync, rename) at creation and at every flush point, so the file at
//! `--metrics` is at every instant a complete HDF5 file, even after `kill -9`. A lock
//! file keeps a second job off the same path.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use hdf5::types::VarLenUnicode;
use hdf5::H5Type;
use ndarray::s;

use super::schema::{
    Column, DiagRecord, EvalRecord, Kind, StepRow, DIAG_COLUMNS, EVAL_COLUMNS, GROUPS, STEP,
    STEP_COLUMNS,
};

use super::attrs::AttrValue;
use super::trace::TRACE_DATASET;
use crate::files::{self, Lock};

/// Rows per chunk of every extendable dataset.
const CHUNK: usize = 1024;

/// An open metrics file.
pub struct MetricsWriter {
    /// The working copy (`.NAME.writing`), open for writing.
    file: hdf5::File,
    work: PathBuf,
    /// Where the published file lives (`--metrics`).
    path: PathBuf,
    _lock: Lock,
}

fn text(s: &str) -> Result<VarLenUnicode> {
    s.parse::<VarLenUnicode>()
        .map_err(|e| anyhow::anyhow!("cannot store {s:?} as HDF5 text: {e}"))
}

impl MetricsWriter {
    /// Creates the file (and its parent directories) with the given root attributes,
    /// and publishes it at once.
    ///
    /// # Errors
    /// The file exists and `force` is false, another job writes it, or it cannot be
    /// created; then nothing is left behind.
    pub fn create(path: &Path, force: bool, attrs: &[(&str, AttrValue)]) -> Result<Self> {
        let what = format!("--metrics {}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("{what}: cannot create directory {}", dir.display()))?;
        }
        let lock = Lock::acquire(&files::sibling(path, "lock"), &what)?;
        if path.exists() && !force {
            bail!("{what} already exists (use --force to overwrite it)");
        }
        let work = files::sibling(path, "writing");
        let file =
            hdf5::File::create(&work).with_context(|| format!("{what}: cannot create the file"))?;
        let w = MetricsWriter {
            file,
            work,
            path: path.to_path_buf(),
            _lock: lock,
        };
        match w.init(attrs).and_then(|()| w.flush()) {
            Ok(()) => Ok(w),
            Err(e) => {
                // Leave no half-initialised file behind.
                let work = w.work.clone();
                drop(w);
                let _ = std::fs::remove_file(work);
                Err(e.context(format!("{what}: cannot write the layout")))
            }
        }
    }

    fn init(&self, attrs: &[(&str, AttrValue)]) -> Result<()> {
        for (name, value) in attrs {
            self.set_attr(name, value)?;
        }
        for g in GROUPS {
            self.file.create_group(g)?;
        }
        let kinds = STEP_COLUMNS.iter().map(|c| (c.name, c.kind));
        let kinds = kinds.chain(EVAL_COLUMNS.iter().map(|c| (c.name, c.kind)));
        for (name, kind) in kinds.chain(DIAG_COLUMNS.iter().map(|c| (c.name, c.kind))) {
            match kind {
                Kind::U64 => self
                    .file
                    .new_dataset::<u64>()
                    .chunk(CHUNK)
                    .shape(0..)
                    .create(name)?,
                Kind::F64 => self
                    .file
                    .new_dataset::<f64>()
                    .chunk(CHUNK)
                    .shape(0..)
                    .create(name)?,
            };
        }
        Ok(())
    }

    /// Reopens the metrics file of an interrupted run to continue it: every per-step,
    /// per-evaluation and trace dataset is cut back to the rows it had at the checkpoint
    /// (`rows`: steps, evaluations, trace), so resumed steps are neither missing nor
    /// duplicated; `attrs` are set or replaced.
    ///
    /// # Errors
    /// The file is missing, not a metrics file, or cannot be written.
    pub fn reopen(path: &Path, rows: [u64; 3], attrs: &[(&str, AttrValue)]) -> Result<Self> {
        let ctx = || {
            format!(
                "--resume needs the run's metrics file --metrics {}",
                path.display()
            )
        };
        let what = format!("--metrics {}", path.display());
        let lock = Lock::acquire(&files::sibling(path, "lock"), &what)?;
        let work = files::sibling(path, "writing");
        std::fs::copy(path, &work).with_context(ctx)?;
        let file = hdf5::File::open_rw(&work).with_context(ctx)?;
        let w = MetricsWriter {
            file,
            work,
            path: path.to_path_buf(),
            _lock: lock,
        };
        let cut = |name: &str, n: u64| -> Result<()> {
            let ds = w.file.dataset(name).with_context(ctx)?;
            let shape = ds.shape();
            ensure!(
                shape[0] as u64 >= n,
                "--metrics {}: {name} has {} rows, the checkpoint expects {n}",
                path.display(),
                shape[0]
            );
            match shape.len() {
                1 => ds.resize(n as usize)?,
                _ => ds.resize((n as usize, shape[1]))?,
            }
            Ok(())
        };
        for c in STEP_COLUMNS {
            cut(c.name, rows[0])?;
        }
        for c in EVAL_COLUMNS {
            cut(c.name, rows[1])?;
        }
        if w.file.dataset(TRACE_DATASET).is_ok() {
            cut(TRACE_DATASET, rows[2])?;
        }
        // Diagnostic rows name their step: keep those of the steps kept.
        if let Ok(ds) = w.file.dataset(DIAG_COLUMNS[0].name) {
            let steps = ds.read_raw::<u64>().with_context(ctx)?;
            let keep = steps.iter().take_while(|&&s| s <= rows[0]).count() as u64;
            for c in DIAG_COLUMNS {
                cut(c.name, keep)?;
            }
        }
        for (name, value) in attrs {
            w.set_attr(name, value)?;
        }
        w.flush()?;
        Ok(w)
    }

    /// A root attribute as text, `None` when absent (e.g. the fingerprint on resume).
    pub fn attr_str(&self, name: &str) -> Option<String> {
        let a = self.file.attr(name).ok()?;
        a.read_scalar::<VarLenUnicode>()
            .ok()
            .map(|v| v.as_str().to_string())
    }

    /// Rows of the per-step, per-evaluation and trace datasets (for checkpoints).
    ///
    /// # Errors
    /// HDF5 failures.
    pub fn rows(&self) -> Result<[u64; 3]> {
        let n = |name: &str| -> Result<u64> { Ok(self.file.dataset(name)?.shape()[0] as u64) };
        let trace = if self.file.dataset(TRACE_DATASET).is_ok() {
            n(TRACE_DATASET)?
        } else {
            0
        };
        Ok([n(STEP.name)?, n(EVAL_COLUMNS[0].name)?, trace])
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets (or replaces) a root attribute.
    ///
    /// # Errors
    /// HDF5 failures.
    pub fn set_attr(&self, name: &str, value: &AttrValue) -> Result<()> {
        if self.file.attr(name).is_ok() {
            self.file.delete_attr(name)?;
        }
        match value {
            AttrValue::Str(s) => self
                .file
                .new_attr::<VarLenUnicode>()
                .shape(())
                .create(name)?
                .write_scalar(&text(s)?)?,
            AttrValue::Int(v) => self
                .file
                .new_attr::<i64>()
                .shape(())
                .create(name)?
                .write_scalar(v)?,
            AttrValue::Float(v) => self
                .file
                .new_attr::<f64>()
                .shape(())
                .create(name)?
                .write_scalar(v)?,
        }
        Ok(())
    }

    fn append<T: H5Type + Copy>(&self, name: &str, values: &[T]) -> Result<()> {
        let ds = self.file.dataset(name)?;
        let old = ds.shape()[0];
        ds.resize(old + values.len())?;
        ds.write_slice(values, s![old..old + values.len()])?;
        Ok(())
    }

    /// Appends `rows` to every dataset of `columns`, each value cast to its column's kind.
    fn append_rows<R>(&self, columns: &[Column<R>], rows: &[R]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        for c in columns {
            let values = rows.iter().map(|r| (c.value)(r));
            match c.kind {
                Kind::U64 => self.append(c.name, &values.map(|v| v as u64).collect::<Vec<_>>())?,
                Kind::F64 => self.append(c.name, &values.collect::<Vec<_>>())?,
            }
        }
        Ok(())
    }

    /// Appends step rows to every per-step dataset.
    ///
    /// # Errors
    /// HDF5 failures.
    pub fn append_steps(&self, rows: &[StepRow]) -> Result<()> {
        self.append_rows(STEP_COLUMNS, rows)
    }

    /// Appends one evaluation row.
    ///
    /// # Errors
    /// HDF5 failures.
    pub fn append_eval(&self, r: &EvalRecord) -> Result<()> {
        self.append_rows(EVAL_COLUMNS, std::slice::from_ref(r))
    }

    /// Appends one diagnostic row.
    ///
    /// # Errors
    /// HDF5 failures.
    pub fn append_diag(&self, r: &DiagRecord) -> Result<()> {
        self.append_rows(DIAG_COLUMNS, std::slice::from_ref(r))
    }

    /// Appends rows of the drop trace (`/trace/dropped`, u32 N×6), creating it on first use.
    ///
    /// # Errors
    /// HDF5 failures.
    pub fn append_trace(&self, rows: &[crate::drop::TraceRecord]) -> Result<()> {
        let name = TRACE_DATASET;
        let ds = match self.file.dataset(name) {
            Ok(ds) => ds,
            Err(_) => {
                if self.file.group("trace").is_err() {
                    self.file.create_group("trace")?;
                }
                let ds = self
                    .file
                    .new_dataset::<u32>()
                    .chunk((4096, 6))
                    .deflate(4)
                    .shape((0.., 6))
                    .create(name)?;
                ds.new_attr::<VarLenUnicode>()
                    .shape(())
                    .create("columns")?
                    .write_scalar(&text(
                        "step, direction (0 up, 1 down), src rank, dst rank, block, packet",
                    )?)?;
                ds
            }
        };
        if rows.is_empty() {
            return Ok(());
        }
        let old = ds.shape()[0];
        ds.resize((old + rows.len(), 6))?;
        let flat: Vec<u32> = rows.iter().flatten().copied().collect();
        let arr = ndarray::ArrayView2::from_shape((rows.len(), 6), &flat)?;
        ds.write_slice(arr, s![old..old + rows.len(), ..])?;
        Ok(())
    }

    /// Writes a 2-D u64 matrix (e.g. per-link counts) with row and column labels.
    ///
    /// # Errors
    /// HDF5 failures.
    pub fn write_matrix(
        &self,
        name: &str,
        m: &ndarray::Array2<u64>,
        rows: &str,
        cols: &str,
    ) -> Result<()> {
        if self.file.dataset(name).is_ok() {
            self.file.unlink(name)?; // a resumed run that had finished once
        }
        let (group, _) = name.rsplit_once('/').unwrap_or(("", name));
        if !group.is_empty() && self.file.group(group).is_err() {
            self.file.create_group(group)?;
        }
        let ds = self.file.new_dataset_builder().with_data(m).create(name)?;
        ds.new_attr::<VarLenUnicode>()
            .shape(())
            .create("rows")?
            .write_scalar(&text(rows)?)?;
        ds.new_attr::<VarLenUnicode>()
            .shape(())
            .create("columns")?
            .write_scalar(&text(cols)?)?;
        Ok(())
    }

    /// Publishes everything written so far: the working copy is flushed and copied over
    /// `--metrics` atomically.
    ///
    /// # Errors
    /// HDF5 or file-system failures (a full disk), naming `--metrics`.
    pub fn flush(&self) -> Result<()> {
        self.file
            .flush()
            .map_err(anyhow::Error::from)
            .and_then(|()| files::publish_copy(&self.work, &self.path))
            .with_context(|| format!("--metrics {}: cannot write", self.path.display()))
    }

    /// Flushes, closes and publishes the file for the last time.
    ///
    /// # Errors
    /// HDF5 or file-system failures, naming `--metrics`.
    pub fn close(self) -> Result<()> {
        let what = format!("--metrics {}: cannot write", self.path.display());
        let ctx = || what.clone();
        self.file.flush().with_context(ctx)?;
        let (work, path, lock) = (self.work, self.path, self._lock);
        self.file.close().with_context(ctx)?;
        files::publish_rename(&work, &path).with_context(ctx)?;
        drop(lock);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_append_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/m.h5");
        let w = MetricsWriter::create(
            &path,
            false,
            &[
                ("algorithm", "rps".into()),
                ("seed", 7i64.into()),
                ("drop_rate", 0.1.into()),
            ],
        )
        .unwrap();
        let rows: Vec<StepRow> = (0..3)
            .map(|i| StepRow {
                step: i,
                ranks: 1,
                sum: crate::counters::StepCounters {
                    loss_sum: i as f64,
                    count: 1,
                    sent_up: 2 * i,
                    ..Default::default()
                },
            })
            .collect();
        w.append_steps(&rows).unwrap();
        w.append_steps(&rows[..1]).unwrap();
        w.append_eval(&EvalRecord {
            step: 2,
            test_accuracy: 0.5,
            ..Default::default()
        })
        .unwrap();
        w.set_attr("status", &"completed".into()).unwrap();
        w.set_attr("status", &"done".into()).unwrap();
        w.close().unwrap();

        let f = hdf5::File::open(&path).unwrap();
        assert_eq!(
            f.dataset("train/step").unwrap().read_raw::<u64>().unwrap(),
            vec![0, 1, 2, 0]
        );
        assert_eq!(
            f.dataset("comm/sent_up")
                .unwrap()
                .read_raw::<u64>()
                .unwrap(),
            vec![0, 2, 4, 0]
        );
        assert_eq!(
            f.dataset("train/loss").unwrap().read_raw::<f64>().unwrap(),
            vec![0.0, 1.0, 2.0, 0.0]
        );
        assert_eq!(
            f.dataset("eval/test_accuracy")
                .unwrap()
                .read_raw::<f64>()
                .unwrap(),
            vec![0.5]
        );
        assert_eq!(f.attr("seed").unwrap().read_scalar::<i64>().unwrap(), 7);
        assert_eq!(
            f.attr("status")
                .unwrap()
                .read_scalar::<VarLenUnicode>()
                .unwrap()
                .as_str(),
            "done"
        );
        drop(f);
        let err = MetricsWriter::create(&path, false, &[]).err().unwrap();
        assert!(format!("{err:#}").contains("already exists"), "{err:#}");
    }
}
