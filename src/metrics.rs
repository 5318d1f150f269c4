//! The HDF5 run log, written by rank 0.
//!
//! Root attributes hold the configuration and environment; groups `train`, `eval`,
//! `comm` and `time` hold 1-D extendable, chunked datasets that grow by one row per step
//! (or per evaluation). The file is flushed after every evaluation, so a killed job keeps
//! what it had recorded up to its last evaluation. The layout is documented in README.md.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use hdf5::types::VarLenUnicode;
use hdf5::H5Type;
use ndarray::s;

/// Value of a root attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Float(f64),
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::Str(s.to_string())
    }
}
impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::Str(s)
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}
impl From<f64> for AttrValue {
    fn from(v: f64) -> Self {
        AttrValue::Float(v)
    }
}

/// One training step, already reduced over ranks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepRecord {
    pub step: u64,
    /// Mean training loss over the workers' minibatches.
    pub loss: f64,
    pub accuracy: f64,
    pub sent_up: u64,
    pub dropped_up: u64,
    pub sent_down: u64,
    pub dropped_down: u64,
    pub bytes_sent: u64,
    /// Packets attempted and dropped per direction (message counts without packets).
    pub packets_up: u64,
    pub packets_dropped_up: u64,
    pub packets_down: u64,
    pub packets_dropped_down: u64,
    /// Messages posted but not received before the deadline (0 with oracle detection),
    /// and messages discarded because they arrived after it.
    pub missed_up: u64,
    pub missed_down: u64,
    /// Packets sent but not received in time (lost by a real network, or late); equal
    /// to the message counts without packets.
    pub packets_missed_up: u64,
    pub packets_missed_down: u64,
    pub late: u64,
    /// Datagrams or messages refused as foreign or malformed.
    pub rejected: u64,
    /// Mean over ranks of the time spent in the local step (data, forward, backward,
    /// update) and in the exchange.
    pub compute_s: f64,
    pub comm_s: f64,
    /// Seconds since training started, on rank 0, at the end of the step.
    pub wall_s: f64,
}

/// One evaluation of the averaged model.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EvalRecord {
    pub step: u64,
    pub test_loss: f64,
    pub test_accuracy: f64,
    /// Mean over workers of ‖x_i − x̄‖².
    pub consensus_distance: f64,
    pub wall_s: f64,
}

const GROUPS: [&str; 4] = ["train", "eval", "comm", "time"];
const STEP_U64: [&str; 16] = [
    "train/step",
    "comm/sent_up",
    "comm/dropped_up",
    "comm/sent_down",
    "comm/dropped_down",
    "comm/bytes_sent",
    "comm/packets_up",
    "comm/packets_dropped_up",
    "comm/packets_down",
    "comm/packets_dropped_down",
    "comm/missed_up",
    "comm/missed_down",
    "comm/late",
    "comm/packets_missed_up",
    "comm/packets_missed_down",
    "comm/rejected",
];
const STEP_F64: [&str; 5] = [
    "train/loss",
    "train/accuracy",
    "time/compute_s",
    "time/comm_s",
    "time/wall_s",
];
const EVAL_U64: [&str; 1] = ["eval/step"];
const EVAL_F64: [&str; 4] = [
    "eval/test_loss",
    "eval/test_accuracy",
    "eval/consensus_distance",
    "eval/wall_s",
];

/// Rows per chunk of every extendable dataset.
const CHUNK: usize = 1024;

/// An open metrics file.
pub struct MetricsWriter {
    file: hdf5::File,
    path: PathBuf,
}

fn text(s: &str) -> Result<VarLenUnicode> {
    s.parse::<VarLenUnicode>()
        .map_err(|e| anyhow::anyhow!("cannot store {s:?} as HDF5 text: {e}"))
}

impl MetricsWriter {
    /// Creates the file (and its parent directories) with the given root attributes.
    ///
    /// # Errors
    /// The file exists and `force` is false, or it cannot be created.
    pub fn create(path: &Path, force: bool, attrs: &[(&str, AttrValue)]) -> Result<Self> {
        if path.exists() && !force {
            bail!(
                "--metrics {} already exists (use --force to overwrite it)",
                path.display()
            );
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "--metrics {}: cannot create directory {}",
                    path.display(),
                    dir.display()
                )
            })?;
        }
        let file = hdf5::File::create(path)
            .with_context(|| format!("--metrics {}: cannot create the file", path.display()))?;
        let w = MetricsWriter {
            file,
            path: path.to_path_buf(),
        };
        if let Err(e) = w.init(attrs) {
            // Leave no half-initialised file behind.
            drop(w);
            let _ = std::fs::remove_file(path);
            return Err(e.context(format!(
                "--metrics {}: cannot write the layout",
                path.display()
            )));
        }
        Ok(w)
    }

    fn init(&self, attrs: &[(&str, AttrValue)]) -> Result<()> {
        for (name, value) in attrs {
            self.set_attr(name, value)?;
        }
        for g in GROUPS {
            self.file.create_group(g)?;
        }
        for name in STEP_U64.iter().chain(&EVAL_U64) {
            self.file
                .new_dataset::<u64>()
                .chunk(CHUNK)
                .shape(0..)
                .create(*name)?;
        }
        for name in STEP_F64.iter().chain(&EVAL_F64) {
            self.file
                .new_dataset::<f64>()
                .chunk(CHUNK)
                .shape(0..)
                .create(*name)?;
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
        let file = hdf5::File::open_rw(path).with_context(ctx)?;
        let w = MetricsWriter {
            file,
            path: path.to_path_buf(),
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
        for name in STEP_U64.iter().chain(&STEP_F64) {
            cut(name, rows[0])?;
        }
        for name in EVAL_U64.iter().chain(&EVAL_F64) {
            cut(name, rows[1])?;
        }
        if w.file.dataset(crate::drop::trace::TRACE_DATASET).is_ok() {
            cut(crate::drop::trace::TRACE_DATASET, rows[2])?;
        }
        for (name, value) in attrs {
            w.set_attr(name, value)?;
        }
        Ok(w)
    }

    /// Rows of the per-step, per-evaluation and trace datasets (for checkpoints).
    ///
    /// # Errors
    /// HDF5 failures.
    pub fn rows(&self) -> Result<[u64; 3]> {
        let n = |name: &str| -> Result<u64> { Ok(self.file.dataset(name)?.shape()[0] as u64) };
        let trace = if self.file.dataset(crate::drop::trace::TRACE_DATASET).is_ok() {
            n(crate::drop::trace::TRACE_DATASET)?
        } else {
            0
        };
        Ok([n(STEP_U64[0])?, n(EVAL_U64[0])?, trace])
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

    /// Appends step rows to every per-step dataset.
    ///
    /// # Errors
    /// HDF5 failures.
    pub fn append_steps(&self, rows: &[StepRecord]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let u = |f: fn(&StepRecord) -> u64| rows.iter().map(f).collect::<Vec<_>>();
        let f = |f: fn(&StepRecord) -> f64| rows.iter().map(f).collect::<Vec<_>>();
        let columns_u64 = [
            u(|r| r.step),
            u(|r| r.sent_up),
            u(|r| r.dropped_up),
            u(|r| r.sent_down),
            u(|r| r.dropped_down),
            u(|r| r.bytes_sent),
            u(|r| r.packets_up),
            u(|r| r.packets_dropped_up),
            u(|r| r.packets_down),
            u(|r| r.packets_dropped_down),
            u(|r| r.missed_up),
            u(|r| r.missed_down),
            u(|r| r.late),
            u(|r| r.packets_missed_up),
            u(|r| r.packets_missed_down),
            u(|r| r.rejected),
        ];
        let columns_f64 = [
            f(|r| r.loss),
            f(|r| r.accuracy),
            f(|r| r.compute_s),
            f(|r| r.comm_s),
            f(|r| r.wall_s),
        ];
        for (name, col) in STEP_U64.iter().zip(&columns_u64) {
            self.append(name, col)?;
        }
        for (name, col) in STEP_F64.iter().zip(&columns_f64) {
            self.append(name, col)?;
        }
        Ok(())
    }

    /// Appends one evaluation row.
    ///
    /// # Errors
    /// HDF5 failures.
    pub fn append_eval(&self, r: &EvalRecord) -> Result<()> {
        self.append(EVAL_U64[0], &[r.step])?;
        let values = [r.test_loss, r.test_accuracy, r.consensus_distance, r.wall_s];
        for (name, v) in EVAL_F64.iter().zip(values) {
            self.append(name, &[v])?;
        }
        Ok(())
    }

    /// Appends rows of the drop trace (`/trace/dropped`, u32 N×6), creating it on first use.
    ///
    /// # Errors
    /// HDF5 failures.
    pub fn append_trace(&self, rows: &[crate::drop::TraceRecord]) -> Result<()> {
        let name = crate::drop::trace::TRACE_DATASET;
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

    /// Pushes everything written so far to disk.
    ///
    /// # Errors
    /// HDF5 failures.
    pub fn flush(&self) -> Result<()> {
        self.file.flush()?;
        Ok(())
    }

    /// Flushes and closes the file.
    ///
    /// # Errors
    /// HDF5 failures.
    pub fn close(self) -> Result<()> {
        self.file.flush()?;
        self.file.close()?;
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
        let rows: Vec<StepRecord> = (0..3)
            .map(|i| StepRecord {
                step: i,
                loss: i as f64,
                sent_up: 2 * i,
                ..Default::default()
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
