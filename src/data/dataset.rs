//! Opening and validating an rps dataset file, and reading one worker's shard.
//!
//! [`DatasetInfo::open`] checks everything a run relies on (groups, dtypes, shapes, label
//! range) before training starts; every rank runs the same checks on the same file, so a
//! bad dataset fails everywhere at once with the same message. [`Shard::read`] then
//! reads only the rows of one worker by hyperslab.

use std::ops::Range;
use std::path::{Path, PathBuf};

use hdf5::types::{IntSize, TypeDescriptor, VarLenUnicode};
use ndarray::{s, Ix1, Ix4};
use rand::seq::SliceRandom;
use rand::SeedableRng;
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
fn read_error(path: &Path, split: &str, name: &str) -> impl FnOnce(hdf5::Error) -> DatasetError {
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

/// The contiguous range of samples of `part` when `count` samples are cut into `parts`
/// equal shards (the remainder, fewer than `parts` samples, is left out so that every
/// shard has the same size and all workers take the same number of steps).
pub fn shard_range(count: usize, parts: usize, part: usize) -> Range<usize> {
    let each = count / parts;
    part * each..(part + 1) * each
}

/// The dataset file, opened for reading.
fn open_file(info: &DatasetInfo) -> Result<hdf5::File, DatasetError> {
    hdf5::File::open(&info.path).map_err(|e| DatasetError::NotHdf5 {
        path: info.path.clone(),
        why: e.to_string(),
    })
}

/// Rows of images read at once by [`Shard::read_rows`].
pub const SCAN_ROWS: usize = 4096;

/// Every label of `split` (one small read; validated by [`DatasetInfo::open`]).
///
/// # Errors
/// I/O or HDF5 failures.
pub fn read_labels(info: &DatasetInfo, split: &str) -> Result<Vec<usize>, DatasetError> {
    let p = || info.path.clone();
    let file = open_file(info)?;
    let labels = file
        .dataset(&format!("{split}/labels"))
        .and_then(|d| d.read_1d::<i64>())
        .map_err(read_error(&p(), split, "labels"))?;
    Ok(labels.iter().map(|&l| l as usize).collect())
}

/// One worker's rows of a split, held in memory as bytes.
#[derive(Debug, Clone)]
pub struct Shard {
    pub info: SplitInfo,
    /// Global index of the first sample.
    pub offset: usize,
    images: Vec<u8>,
    labels: Vec<usize>,
    /// Per channel: value = byte · scale + shift (standardisation folded into one affine map).
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl Shard {
    /// Reads samples `range` of `split` by hyperslab (only those rows leave the disk).
    ///
    /// # Errors
    /// I/O or HDF5 failures (for example a truncated file).
    pub fn read(
        info: &DatasetInfo,
        split: &str,
        range: Range<usize>,
    ) -> Result<Self, DatasetError> {
        let p = || info.path.clone();
        let read_err = |name: &str| read_error(&p(), split, name);
        let file = open_file(info)?;
        let (lo, hi) = (range.start, range.end);
        let images = file
            .dataset(&format!("{split}/images"))
            .and_then(|d| d.read_slice::<u8, _, Ix4>(s![lo..hi, .., .., ..]))
            .map_err(read_err("images"))?;
        let labels = file
            .dataset(&format!("{split}/labels"))
            .and_then(|d| d.read_slice::<i64, _, Ix1>(s![lo..hi]))
            .map_err(read_err("labels"))?;
        let (images, _) = images.into_raw_vec_and_offset();
        // Range validated by DatasetInfo::open.
        let labels = labels.iter().map(|&l| l as usize).collect();
        Ok(Self::assemble(info, split, lo, images, labels))
    }

    /// Reads the samples `rows` (sorted global indices) of `split`, scanning the images
    /// in blocks of [`SCAN_ROWS`] rows so that memory stays near the shard's own size (for
    /// shards that are not one range: `--label-skew`).
    ///
    /// # Errors
    /// I/O or HDF5 failures (for example a truncated file).
    pub fn read_rows(
        info: &DatasetInfo,
        split: &str,
        rows: &[usize],
    ) -> Result<Self, DatasetError> {
        let p = || info.path.clone();
        let read_err = |name: &str| read_error(&p(), split, name);
        let file = open_file(info)?;
        let all_labels = read_labels(info, split)?;
        let len = info.split(split).sample_len();
        let dataset = file
            .dataset(&format!("{split}/images"))
            .map_err(read_err("images"))?;
        let mut images = Vec::with_capacity(rows.len() * len);
        let mut next = 0;
        while next < rows.len() {
            let lo = rows[next];
            let hi = (lo + SCAN_ROWS).min(all_labels.len());
            let block = dataset
                .read_slice::<u8, _, Ix4>(s![lo..hi, .., .., ..])
                .map_err(read_err("images"))?;
            let block = block
                .as_slice()
                .expect("a freshly read block is contiguous");
            while next < rows.len() && rows[next] < hi {
                let r = rows[next] - lo;
                images.extend_from_slice(&block[r * len..(r + 1) * len]);
                next += 1;
            }
        }
        let labels = rows.iter().map(|&r| all_labels[r]).collect();
        Ok(Self::assemble(
            info,
            split,
            rows.first().copied().unwrap_or(0),
            images,
            labels,
        ))
    }

    /// A shard from its raw images and labels, with the dataset's normalisation.
    fn assemble(
        info: &DatasetInfo,
        split: &str,
        offset: usize,
        images: Vec<u8>,
        labels: Vec<usize>,
    ) -> Self {
        let split_info = info.split(split);
        let channels = split_info.channels;
        let (scale, shift) = match &info.normalization {
            Some((mean, std)) => (
                std.iter().map(|s| 1.0 / (255.0 * s)).collect(),
                mean.iter().zip(std).map(|(m, s)| -m / s).collect(),
            ),
            None => (vec![1.0 / 255.0; channels], vec![0.0; channels]),
        };
        Shard {
            scale,
            shift,
            info: SplitInfo {
                count: labels.len(),
                ..split_info
            },
            offset,
            images,
            labels,
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Fills `images` (N·C·H·W floats, scaled to [0, 1] or standardised per channel when
    /// the file has `mean`/`std`) and `labels` with the samples at `indices` (shard-local).
    pub fn fill_batch(&self, indices: &[usize], images: &mut Vec<f32>, labels: &mut Vec<usize>) {
        self.fill_batch_augmented(indices, images, labels, None);
    }

    /// [`Shard::fill_batch`], and with `Some(seed)` each sample is also randomly cropped
    /// from the image zero-padded by [`AUGMENT_PAD`] pixels (same size as the image) and
    /// flipped horizontally with probability 1/2; sample k's choice is a function of
    /// (seed, k), so a run is reproducible.
    pub fn fill_batch_augmented(
        &self,
        indices: &[usize],
        images: &mut Vec<f32>,
        labels: &mut Vec<usize>,
        augment: Option<u64>,
    ) {
        let (c, h, w) = (self.info.channels, self.info.height, self.info.width);
        let len = self.info.sample_len();
        images.clear();
        labels.clear();
        for (k, &i) in indices.iter().enumerate() {
            let src = &self.images[i * len..(i + 1) * len];
            let start = images.len();
            images.resize(start + len, 0.0);
            let dst = &mut images[start..];
            let (dy, dx, flip) = match augment {
                Some(seed) => {
                    let r = hash_words(&[seed, k as u64, 0x4155_474D]); // "AUGM"
                    let span = 2 * AUGMENT_PAD as u64 + 1;
                    (
                        (r % span) as isize - AUGMENT_PAD as isize,
                        ((r / span) % span) as isize - AUGMENT_PAD as isize,
                        (r / (span * span)) % 2 == 1,
                    )
                }
                None => (0, 0, false),
            };
            for ch in 0..c {
                let (scale, shift) = (self.scale[ch], self.shift[ch]);
                let plane = &src[ch * h * w..(ch + 1) * h * w];
                for y in 0..h {
                    let sy = y as isize + dy;
                    let out = &mut dst[(ch * h + y) * w..(ch * h + y + 1) * w];
                    for (x, o) in out.iter_mut().enumerate() {
                        let xx = if flip { w - 1 - x } else { x };
                        let sx = xx as isize + dx;
                        // Padding is a zero byte, as torchvision pads before normalising.
                        let b = if sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w {
                            plane[sy as usize * w + sx as usize]
                        } else {
                            0
                        };
                        *o = b as f32 * scale + shift;
                    }
                }
            }
            labels.push(self.labels[i]);
        }
    }
}

/// Zero padding of the random crop of [`Shard::fill_batch_augmented`] (4, as for CIFAR).
pub const AUGMENT_PAD: usize = 4;

/// The order in which a worker visits its shard in `epoch`: a permutation seeded by
/// (seed, worker, epoch), so runs are reproducible and every algorithm sees the same data.
pub fn epoch_order(seed: u64, worker: usize, epoch: u64, len: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    let s = hash_words(&[seed, worker as u64, epoch, 0x4441_5441]); // "DATA"
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(s));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(c: usize, h: usize, w: usize, n: usize, norm: Option<Normalization>) -> Shard {
        let info = SplitInfo {
            count: n,
            channels: c,
            height: h,
            width: w,
            digest: 0,
        };
        let (scale, shift) = match norm {
            Some((m, s)) => (
                s.iter().map(|s| 1.0 / (255.0 * s)).collect(),
                m.iter().zip(&s).map(|(m, s)| -m / s).collect(),
            ),
            None => (vec![1.0 / 255.0; c], vec![0.0; c]),
        };
        Shard {
            info,
            offset: 0,
            images: (0..n * c * h * w).map(|i| (i % 251 + 1) as u8).collect(),
            labels: (0..n).collect(),
            scale,
            shift,
        }
    }

    #[test]
    fn batches_are_scaled_or_standardised() {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        shard(1, 2, 2, 2, None).fill_batch(&[1], &mut x, &mut y);
        assert_eq!(y, [1]);
        // Bit for bit what rps always fed the CNN: byte · (1/255).
        let want: Vec<f32> = (5..9).map(|b| b as f32 * (1.0 / 255.0)).collect();
        assert_eq!(x, want);
        let s = shard(2, 1, 2, 1, Some((vec![0.5, 0.0], vec![0.25, 1.0])));
        s.fill_batch(&[0], &mut x, &mut y);
        for (got, (b, ch)) in x.iter().zip([(1u8, 0), (2, 0), (3, 1), (4, 1)]) {
            let want = if ch == 0 {
                (b as f32 / 255.0 - 0.5) / 0.25
            } else {
                b as f32 / 255.0
            };
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }

    /// Every augmented sample is the original shifted by (dy, dx) ∈ [−4, 4]² with zero
    /// padding, possibly mirrored; the choice is reproducible and varies with the seed.
    #[test]
    fn augmentation_is_a_seeded_crop_and_flip() {
        let (c, h, w, n) = (3, 8, 8, 6);
        let s = shard(c, h, w, n, None);
        let idx: Vec<usize> = (0..n).collect();
        let (mut plain, mut a, mut b, mut y) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        s.fill_batch(&idx, &mut plain, &mut y);
        s.fill_batch_augmented(&idx, &mut a, &mut y, Some(7));
        s.fill_batch_augmented(&idx, &mut b, &mut y, Some(7));
        assert_eq!(a, b, "same seed, same batch");
        s.fill_batch_augmented(&idx, &mut b, &mut y, Some(8));
        assert_ne!(a, b, "another step, another augmentation");
        assert_eq!(y, idx, "labels are not touched");
        let len = c * h * w;
        let mut flips = 0;
        for k in 0..n {
            let (orig, got) = (&plain[k * len..(k + 1) * len], &a[k * len..(k + 1) * len]);
            let found = (-4isize..=4)
                .flat_map(|dy| (-4isize..=4).map(move |dx| (dy, dx)))
                .flat_map(|(dy, dx)| [(dy, dx, false), (dy, dx, true)])
                .find(|&(dy, dx, flip)| {
                    (0..len).all(|i| {
                        let (ch, yy, xx) = (i / (h * w), (i / w) % h, i % w);
                        let sx = if flip { w - 1 - xx } else { xx } as isize + dx;
                        let sy = yy as isize + dy;
                        let want = if sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w {
                            orig[ch * h * w + sy as usize * w + sx as usize]
                        } else {
                            0.0
                        };
                        got[i] == want
                    })
                });
            let (_, _, flip) =
                found.unwrap_or_else(|| panic!("sample {k} is no crop/flip of its image"));
            flips += flip as usize;
        }
        assert!(flips < n, "not every sample should be flipped");
    }

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

    #[test]
    fn shards_are_equal_and_disjoint() {
        let r: Vec<_> = (0..3).map(|i| shard_range(10, 3, i)).collect();
        assert_eq!(r, vec![0..3, 3..6, 6..9]);
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_order(1, 0, 0, 100);
        assert_eq!(a, epoch_order(1, 0, 0, 100));
        assert_ne!(a, epoch_order(1, 0, 1, 100));
        assert_ne!(a, epoch_order(1, 1, 0, 100));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }
}
