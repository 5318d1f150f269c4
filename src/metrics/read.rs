//! The one reader of metrics files: opens a file, checks it is one of rps's, and reads
//! attributes, series and matrices by the names [`super::schema`] declares. `rps report`,
//! `rps plot`, `rps sweep`, the testbed tables and `--replay-trace` all read through it.

use std::path::{Path, PathBuf};

use hdf5::types::VarLenUnicode;

use super::attrs::{COMPLETED, RPS_VERSION, STATUS};
use super::schema::{Column, STEP};

/// Why a metrics file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}: no such file", path.display())]
    Missing { path: PathBuf },
    #[error("{}: not an HDF5 file ({source})", path.display())]
    NotHdf5 { path: PathBuf, source: hdf5::Error },
    #[error("{}: not an rps metrics file (no {what})", path.display())]
    NotMetrics { path: PathBuf, what: &'static str },
    #[error("{}: cannot read {name}: {source}", path.display())]
    Read {
        path: PathBuf,
        name: String,
        source: hdf5::Error,
    },
    #[error("no metrics files given")]
    NoFiles,
}

/// An open metrics file, checked to be one of rps's.
pub struct RunFile {
    file: hdf5::File,
    path: PathBuf,
}

impl RunFile {
    /// Opens `path` read-only and checks that it is an rps metrics file.
    ///
    /// # Errors
    /// The file is missing, not HDF5, or lacks `rps_version` or `/train/step`.
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        if !path.exists() {
            return Err(ReadError::Missing { path: path.into() });
        }
        let file = hdf5::File::open(path).map_err(|source| ReadError::NotHdf5 {
            path: path.into(),
            source,
        })?;
        let not = |what| ReadError::NotMetrics {
            path: path.into(),
            what,
        };
        file.attr(RPS_VERSION.name)
            .map_err(|_| not("root attribute rps_version"))?;
        file.dataset(STEP.name)
            .map_err(|_| not("dataset /train/step"))?;
        Ok(RunFile {
            file,
            path: path.into(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_err(&self, name: &str, source: hdf5::Error) -> ReadError {
        ReadError::Read {
            path: self.path.clone(),
            name: name.into(),
            source,
        }
    }

    /// A text root attribute, or `None` when absent.
    ///
    /// # Errors
    /// The attribute exists but is not text.
    pub fn attr_str(&self, name: &str) -> Result<Option<String>, ReadError> {
        let Ok(a) = self.file.attr(name) else {
            return Ok(None);
        };
        let v = a
            .read_scalar::<VarLenUnicode>()
            .map_err(|e| self.read_err(name, e))?;
        Ok(Some(v.as_str().to_string()))
    }

    /// A numeric root attribute (stored as i64 or f64), or `None` when absent.
    ///
    /// # Errors
    /// The attribute exists but is not a number.
    pub fn attr_f64(&self, name: &str) -> Result<Option<f64>, ReadError> {
        let Ok(a) = self.file.attr(name) else {
            return Ok(None);
        };
        // read_scalar::<f64> converts from any stored numeric type.
        let v = a.read_scalar::<f64>().map_err(|e| self.read_err(name, e))?;
        Ok(Some(v))
    }

    /// An integer root attribute, or `None` when absent.
    ///
    /// # Errors
    /// The attribute exists but is not a number.
    pub fn attr_i64(&self, name: &str) -> Result<Option<i64>, ReadError> {
        Ok(self.attr_f64(name)?.map(|v| v as i64))
    }

    /// A 1-D dataset as f64 (u64 datasets are converted), empty when absent.
    ///
    /// # Errors
    /// The dataset exists but cannot be read as numbers.
    pub fn series(&self, name: &str) -> Result<Vec<f64>, ReadError> {
        let Ok(ds) = self.file.dataset(name) else {
            return Ok(Vec::new());
        };
        ds.read_raw::<f64>().map_err(|e| self.read_err(name, e))
    }

    /// Whether the file has a dataset `name` (older files lack newer columns).
    pub fn has(&self, name: &str) -> bool {
        self.file.dataset(name).is_ok()
    }

    /// Sum of a 1-D u64 dataset, 0 when absent.
    ///
    /// # Errors
    /// The dataset exists but cannot be read.
    pub fn total(&self, name: &str) -> Result<u64, ReadError> {
        let Ok(ds) = self.file.dataset(name) else {
            return Ok(0);
        };
        let v = ds.read_raw::<u64>().map_err(|e| self.read_err(name, e))?;
        Ok(v.iter().sum())
    }

    /// A 2-D u64 matrix (e.g. `links/dropped_up`) and its row and column labels, or
    /// `None` when absent.
    ///
    /// # Errors
    /// The dataset exists but is not a 2-D numeric matrix.
    pub fn matrix(
        &self,
        name: &str,
    ) -> Result<Option<(ndarray::Array2<u64>, String, String)>, ReadError> {
        let Ok(ds) = self.file.dataset(name) else {
            return Ok(None);
        };
        let m = ds.read_2d::<u64>().map_err(|e| self.read_err(name, e))?;
        let label = |a: &str| {
            ds.attr(a)
                .and_then(|a| a.read_scalar::<VarLenUnicode>())
                .map(|s| s.as_str().to_string())
                .unwrap_or_default()
        };
        Ok(Some((m, label("rows"), label("columns"))))
    }
}

impl RunFile {
    /// A whole per-step or per-evaluation column as f64, empty when absent.
    ///
    /// # Errors
    /// The dataset exists but cannot be read as numbers.
    pub fn column<R>(&self, c: &Column<R>) -> Result<Vec<f64>, ReadError> {
        self.series(c.name)
    }

    /// The sum of a u64 column, 0 when absent.
    ///
    /// # Errors
    /// The dataset exists but cannot be read.
    pub fn column_total<R>(&self, c: &Column<R>) -> Result<u64, ReadError> {
        self.total(c.name)
    }

    /// The last value of a column, `None` when it is empty or absent.
    ///
    /// # Errors
    /// The dataset exists but cannot be read.
    pub fn last<R>(&self, c: &Column<R>) -> Result<Option<f64>, ReadError> {
        Ok(self.series(c.name)?.last().copied())
    }

    /// The run's `status` attribute (`running`, `completed`, `interrupted`, ...).
    ///
    /// # Errors
    /// The attribute exists but is not text.
    pub fn status(&self) -> Result<Option<String>, ReadError> {
        self.attr_str(STATUS.name)
    }
}

/// Whether a metrics file exists and says its run completed.
pub fn completed(path: &Path) -> bool {
    path.is_file()
        && RunFile::open(path)
            .and_then(|f| f.status())
            .is_ok_and(|s| s.as_deref() == Some(COMPLETED))
}
