//! One worker's shard of a validated dataset: which rows it owns, read by hyperslab (only
//! those rows leave the file), the order it visits them in each epoch, and its batches,
//! scaled or standardised and optionally augmented.

use std::ops::Range;

use ndarray::{s, Ix1, Ix4};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::dataset::{read_error, DatasetError, DatasetInfo, SplitInfo};
use crate::hash::hash_words;

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
    use crate::data::dataset::Normalization;

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
