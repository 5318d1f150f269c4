//! Opening and validating an rps dataset file.
//!
//! [`DatasetInfo::open`] checks everything a run relies on (groups, dtypes, shapes, label
//! range) before training starts; every rank runs the same checks on the same file, so a
//! bad dataset fails everywhere at once with the same message. `super::shard` then
//! reads only the rows of one worker by hyperslab.

use std::path::{Path, PathBuf};

use hdf5::types::{IntSize, TypeDescriptor, VarLenUnicode};
use ndarray::{s, Ix4};
use thiserror::Error;

use crate::hash::hash_words;

#[derive(Debug, Error)]
pub enum DatasetError {
    #[error("dataset {path}: file not found")]
    Missing { path: PathBuf },
    #[error("dataset {path}: not a readable HDF5 file ({why})")]
    NotHdf5 { path: PathBuf, why: String },
    #[error("dataset {path}: missing {what} (expected groups /train and /test, each with datasets images and labels, and a root attribute classes; see docs/formats.md, \"Dataset files\")")]
    MissingObject { path: PathBuf, what: String },
    #[error("dataset {path}: {name} has type {found}, expected {expected}")]
    Dtype {
        path: PathBuf,
        name: String,
        expected: String,
        found: String,
    },
    #[error("dataset {path}: {name} has shape {found:?}, expected {expected}")]
    Shape {
        path: PathBuf,
        name: String,
        expected: String,
        found: Vec<usize>,
    },
    #[error("dataset {path}: {split}/images and {split}/labels declare {count} samples of {channels}×{height}×{width}: checking them reads {need:.1} GiB (every label and the first {DIGEST_IMAGES} images), more than the {available:.1} GiB of available memory; is the shape right?")]
    TooLarge {
        path: PathBuf,
        split: String,
        count: usize,
        channels: usize,
        height: usize,
        width: usize,
        need: f64,
        available: f64,
    },
    #[error("dataset {path}: split {split} is empty")]
    Empty { path: PathBuf, split: String },
    #[error("dataset {path}: {split}/labels[{index}] = {label} is outside the {classes} classes [0, {classes})")]
    LabelRange {
        path: PathBuf,
        split: String,
        index: usize,
        label: i128,
        classes: usize,
    },
    #[error("dataset {path}: attribute {name}[{channel}] = {value:e} is not a statistic of pixels in [0, 1] (mean in [0, 1], std in [1e-3, 1])")]
    Statistics {
        path: PathBuf,
        name: &'static str,
        channel: usize,
        value: f64,
    },
    #[error("dataset {path}: cannot read {name}: {source}")]
    Read {
        path: PathBuf,
        name: String,
        source: hdf5::Error,
    },
}

/// Shape of one split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitInfo {
    pub count: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// A hash of the split's shape, every label and the first [`DIGEST_IMAGES`] images:
    /// what identifies the data, whatever the file is called.
    pub digest: u64,
}

/// Images of each split that go into its digest (reading them all would cost every rank
/// a full pass over the file).
pub const DIGEST_IMAGES: usize = 64;

impl SplitInfo {
    pub fn sample_len(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// What a validated dataset file holds.
#[derive(Debug, Clone)]
pub struct DatasetInfo {
    pub path: PathBuf,
    pub source: String,
    pub classes: Vec<String>,
    pub train: SplitInfo,
    pub test: SplitInfo,
    /// Per-channel (mean, std) of pixels in [0, 1], from the root attributes `mean` and
    /// `std` when the file has them (CIFAR-10); batches are then standardised with them,
    /// otherwise pixels are only scaled to [0, 1].
    pub normalization: Option<Normalization>,
}

impl DatasetInfo {
    /// What identifies the dataset's content (not its file name): both splits' digests,
    /// the classes and the statistics, as 16 hex digits.
    pub fn digest(&self) -> String {
        let mut words = vec![self.train.digest, self.test.digest];
        words.extend(
            self.classes
                .iter()
                .map(|c| crate::hash::hash_bytes(c.as_bytes())),
        );
        if let Some((mean, std)) = &self.normalization {
            words.extend(mean.iter().chain(std).map(|&x| u64::from(x.to_bits())));
        }
        format!("{:016x}", hash_words(&words))
    }

    /// Opens and validates a dataset file, reading all labels to check their range.
    ///
    /// # Errors
    /// Every way the file can differ from the layout: see [`DatasetError`].
    pub fn open(path: &Path) -> Result<Self, DatasetError> {
        let p = || path.to_path_buf();
        if !path.exists() {
            return Err(DatasetError::Missing { path: p() });
        }
        let file = hdf5::File::open(path).map_err(|e| DatasetError::NotHdf5 {
            path: p(),
            why: e.to_string(),
        })?;
        let missing = |what: &str| DatasetError::MissingObject {
            path: p(),
            what: what.to_string(),
        };
        let classes: Vec<String> = file
            .attr("classes")
            .map_err(|_| missing("root attribute classes"))?
            .read_raw::<VarLenUnicode>()
            .map_err(|e| DatasetError::Dtype {
                path: p(),
                name: "attribute classes".into(),
                expected: "an array of variable-length strings".into(),
                found: e.to_string(),
            })?
            .iter()
            .map(|c| c.as_str().to_string())
            .collect();
        if classes.len() < 2 {
            return Err(DatasetError::Shape {
                path: p(),
                name: "attribute classes".into(),
                expected: "at least 2 class names".into(),
                found: vec![classes.len()],
            });
        }
        let source = file
            .attr("source")
            .and_then(|a| a.read_scalar::<VarLenUnicode>())
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let train = check_split(&file, path, "train", classes.len())?;
        let test = check_split(&file, path, "test", classes.len())?;
        if (train.channels, train.height, train.width) != (test.channels, test.height, test.width) {
            return Err(DatasetError::Shape {
                path: p(),
                name: "test/images".into(),
                expected: format!(
                    "N×{}×{}×{} like train/images",
                    train.channels, train.height, train.width
                ),
                found: vec![test.count, test.channels, test.height, test.width],
            });
        }
        let normalization = read_normalization(&file, path, train.channels)?;
        Ok(DatasetInfo {
            path: p(),
            source,
            classes,
            train,
            test,
            normalization,
        })
    }

    pub fn split(&self, name: &str) -> SplitInfo {
        if name == "train" {
            self.train
        } else {
            self.test
        }
    }
}

/// The smallest per-channel pixel std accepted (pixels in [0, 1]; real data is ~0.1–0.4).
const MIN_STD: f64 = 1e-3;

/// Per-channel (mean, std) used to standardise pixels.
pub type Normalization = (Vec<f32>, Vec<f32>);

/// The optional `mean` and `std` root attributes: one positive-std entry per channel.
fn read_normalization(
    file: &hdf5::File,
    path: &Path,
    channels: usize,
) -> Result<Option<Normalization>, DatasetError> {
    let (Ok(mean), Ok(std)) = (file.attr("mean"), file.attr("std")) else {
        return Ok(None);
    };
    let read = |a: hdf5::Attribute, name: &str| {
        a.read_raw::<f64>().map_err(|source| DatasetError::Read {
            path: path.to_path_buf(),
            name: format!("attribute {name}"),
            source,
        })
    };
    let (mean, std) = (read(mean, "mean")?, read(std, "std")?);
    if mean.len() != channels || std.len() != channels {
        return Err(DatasetError::Shape {
            path: path.to_path_buf(),
            name: "attributes mean and std".into(),
            expected: format!("{channels} values each (one per channel)"),
            found: vec![mean.len(), std.len()],
        });
    }
    // Statistics of pixels in [0, 1]: a mean outside it, a std of 0 (or so small that
    // standardised pixels overflow) or above 1 would poison training from the first step.
    let bad = |name: &'static str, v: &[f64], ok: fn(f64) -> bool| {
        v.iter()
            .position(|&x| !ok(x))
            .map(|c| DatasetError::Statistics {
                path: path.to_path_buf(),
                name,
                channel: c,
                value: v[c],
            })
    };
    if let Some(e) = bad("mean", &mean, |m| (0.0..=1.0).contains(&m))
        .or_else(|| bad("std", &std, |s| (MIN_STD..=1.0).contains(&s)))
    {
        return Err(e);
    }
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    Ok(Some((f(mean), f(std))))
}

/// Maps an HDF5 failure reading `/{split}/{name}` of `path` to a [`DatasetError::Read`].
pub(super) fn read_error(
    path: &Path,
    split: &str,
    name: &str,
) -> impl FnOnce(hdf5::Error) -> DatasetError {
    let (path, name) = (path.to_path_buf(), format!("{split}/{name}"));
    move |source| DatasetError::Read { path, name, source }
}

fn check_split(
    file: &hdf5::File,
    path: &Path,
    split: &str,
    classes: usize,
) -> Result<SplitInfo, DatasetError> {
    let p = || path.to_path_buf();
    let missing = |what: String| DatasetError::MissingObject { path: p(), what };
    let group = file
        .group(split)
        .map_err(|_| missing(format!("group /{split}")))?;
    let images = group
        .dataset("images")
        .map_err(|_| missing(format!("dataset /{split}/images")))?;
    let labels = group
        .dataset("labels")
        .map_err(|_| missing(format!("dataset /{split}/labels")))?;
    let read_err = |name: &str| read_error(&p(), split, name);
    let dtype = images
        .dtype()
        .and_then(|t| t.to_descriptor())
        .map_err(read_err("images"))?;
    if dtype != TypeDescriptor::Unsigned(IntSize::U1) {
        return Err(DatasetError::Dtype {
            path: p(),
            name: format!("{split}/images"),
            expected: "u8".into(),
            found: dtype.to_string(),
        });
    }
    let shape = images.shape();
    if shape.len() != 4 || shape[1..].contains(&0) {
        return Err(DatasetError::Shape {
            path: p(),
            name: format!("{split}/images"),
            expected: "N×C×H×W with C, H, W ≥ 1".into(),
            found: shape,
        });
    }
    let ldtype = labels
        .dtype()
        .and_then(|t| t.to_descriptor())
        .map_err(read_err("labels"))?;
    if !matches!(
        ldtype,
        TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_)
    ) {
        return Err(DatasetError::Dtype {
            path: p(),
            name: format!("{split}/labels"),
            expected: "an integer type".into(),
            found: ldtype.to_string(),
        });
    }
    if labels.shape() != [shape[0]] {
        return Err(DatasetError::Shape {
            path: p(),
            name: format!("{split}/labels"),
            expected: format!("[{}] (one label per image)", shape[0]),
            found: labels.shape(),
        });
    }
    if shape[0] == 0 {
        return Err(DatasetError::Empty {
            path: p(),
            split: split.into(),
        });
    }
    check_declared_size(path, split, &shape)?;
    // Unsigned labels are read as such: u64::MAX must not turn into i64::MAX or -1.
    let values: Vec<i128> = match ldtype {
        TypeDescriptor::Unsigned(_) => labels
            .read_raw::<u64>()
            .map_err(read_err("labels"))?
            .into_iter()
            .map(i128::from)
            .collect(),
        _ => labels
            .read_raw::<i64>()
            .map_err(read_err("labels"))?
            .into_iter()
            .map(i128::from)
            .collect(),
    };
    if let Some((index, &label)) = values
        .iter()
        .enumerate()
        .find(|(_, &l)| l < 0 || l >= classes as i128)
    {
        return Err(DatasetError::LabelRange {
            path: p(),
            split: split.into(),
            index,
            label,
            classes,
        });
    }
    let first = images
        .read_slice::<u8, _, Ix4>(s![..shape[0].min(DIGEST_IMAGES), .., .., ..])
        .map_err(read_err("images"))?;
    let mut words: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    words.extend(values.iter().map(|&l| l as u64));
    words.push(crate::hash::hash_bytes(
        first.as_slice().unwrap_or_default(),
    ));
    Ok(SplitInfo {
        count: shape[0],
        channels: shape[1],
        height: shape[2],
        width: shape[3],
        digest: hash_words(&words),
    })
}

/// A split's shape is only what the file declares (a few kilobytes of HDF5 can declare
/// 2^40 samples, or images of 65536×65536 pixels): before reading anything, the split
/// must be addressable, and what validation reads (every label as 8 bytes, the first
/// [`DIGEST_IMAGES`] images) must fit the available memory, else the rank would abort on
/// a failed allocation instead of naming the file.
fn check_declared_size(path: &Path, split: &str, shape: &[usize]) -> Result<(), DatasetError> {
    let [count, channels, height, width] = shape[..] else {
        return Ok(()); // the caller checked that images are 4-D
    };
    let sample = channels
        .checked_mul(height)
        .and_then(|x| x.checked_mul(width));
    let addressable = sample
        .and_then(|s| s.checked_mul(count))
        .is_some_and(|b| b <= isize::MAX as usize);
    let Some(sample) = sample.filter(|_| addressable) else {
        return Err(DatasetError::Shape {
            path: path.to_path_buf(),
            name: format!("{split}/images"),
            expected: format!("N×C×H×W of at most {} bytes in all", isize::MAX),
            found: shape.to_vec(),
        });
    };
    let need = 8 * count as u128 + count.min(DIGEST_IMAGES) as u128 * sample as u128;
    match crate::memory::available() {
        Some(available) if need > u128::from(available) => Err(DatasetError::TooLarge {
            path: path.to_path_buf(),
            split: split.into(),
            count,
            channels,
            height,
            width,
            need: crate::memory::gib(need),
            available: crate::memory::gib(available.into()),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_sizes_beyond_memory_are_refused_before_reading() {
        let p = Path::new("d.h5");
        let e = check_declared_size(p, "train", &[1 << 40, 1, 4, 4]).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("dataset d.h5: train/images and train/labels declare 1099511627776 samples of 1×4×4"),
            "{e}"
        );
        let e = check_declared_size(p, "test", &[2, usize::MAX / 2, 4, 1]).unwrap_err();
        assert!(e.to_string().contains("N×C×H×W of at most"), "{e}");
        check_declared_size(p, "train", &[60_000, 1, 28, 28]).unwrap();
    }
}
