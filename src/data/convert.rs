//! `rps convert`: public dataset formats → rps's HDF5 layout.
//!
//! The output is written to a temporary file next to the target and renamed only once
//! complete and closed, so an interrupted conversion never leaves a file that looks valid.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use hdf5::types::VarLenUnicode;
use ndarray::{Array1, ArrayView1, ArrayView4};

use super::idx::read_idx;
use super::{FASHION_MNIST_CLASSES, FORMAT};

/// Images and labels of one split, images as N×C×H×W.
pub struct Split<'a> {
    pub name: &'a str,
    pub images: ArrayView4<'a, u8>,
    pub labels: ArrayView1<'a, u8>,
}

/// Options of a conversion.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    /// Keep only the first N training / test samples (small files for quick tests).
    pub limit_train: Option<usize>,
    pub limit_test: Option<usize>,
    /// Replace an existing output file.
    pub force: bool,
}

/// An --output that names one of the conversion's own input files: writing it would
/// destroy the input (with --force), so it is refused before anything is read.
#[derive(Debug, thiserror::Error)]
#[error("--output {} is the input file {}: choose another path for --output", .output.display(), .input.display())]
pub struct OutputIsInput {
    pub output: PathBuf,
    pub input: PathBuf,
}

/// Refuses an `output` that is one of `inputs` (however either is spelled).
///
/// # Errors
/// [`OutputIsInput`], naming both.
pub fn check_output(output: &Path, inputs: &[PathBuf]) -> Result<(), OutputIsInput> {
    let key = crate::files::same_file_key(output);
    match inputs
        .iter()
        .find(|i| crate::files::same_file_key(i) == key)
    {
        Some(input) => Err(OutputIsInput {
            output: output.to_path_buf(),
            input: input.clone(),
        }),
        None => Ok(()),
    }
}

/// Fashion-MNIST's splits and the prefix of their IDX files.
const IDX_SPLITS: [(&str, &str); 2] = [("train", "train"), ("test", "t10k")];

/// The IDX file of `prefix` holding `what` (`images` or `labels`), without `.gz`.
fn idx_stem(prefix: &str, what: &str) -> String {
    match what {
        "images" => format!("{prefix}-images-idx3-ubyte"),
        _ => format!("{prefix}-labels-idx1-ubyte"),
    }
}

/// Finds `stem` or `stem.gz` in `dir`.
fn find_idx(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [format!("{stem}.gz"), stem.to_string()] {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{} has no {stem}.gz or {stem} (expected the Fashion-MNIST IDX files, e.g. from Debian's dataset-fashion-mnist in /usr/share/datasets/fashion-mnist)",
        dir.display()
    )
}

/// Converts the four Fashion-MNIST IDX files in `opts.input` into one HDF5 file.
///
/// # Errors
/// Missing or malformed input files, inconsistent sizes, an existing output without
/// `force`, or a failure to write the output.
pub fn fashion_mnist(opts: &ConvertOptions) -> Result<ConvertSummary> {
    ensure!(
        opts.input.is_dir(),
        "--input {}: not a directory",
        opts.input.display()
    );
    // Both spellings of every file: whichever the conversion would read.
    let inputs: Vec<PathBuf> = IDX_SPLITS
        .iter()
        .flat_map(|(_, prefix)| [idx_stem(prefix, "images"), idx_stem(prefix, "labels")])
        .flat_map(|stem| [format!("{stem}.gz"), stem])
        .map(|name| opts.input.join(name))
        .collect();
    check_output(&opts.output, &inputs)?;
    let mut splits = Vec::new();
    for ((name, prefix), limit) in IDX_SPLITS
        .into_iter()
        .zip([opts.limit_train, opts.limit_test])
    {
        let images = read_idx(&find_idx(&opts.input, &idx_stem(prefix, "images"))?)?;
        let labels = read_idx(&find_idx(&opts.input, &idx_stem(prefix, "labels"))?)?;
        ensure!(
            images.dims.len() == 3 && labels.dims.len() == 1 && images.dims[0] == labels.dims[0],
            "{name}: images {:?} and labels {:?} do not describe the same N samples",
            images.dims,
            labels.dims
        );
        let (n, h, w) = (images.dims[0], images.dims[1], images.dims[2]);
        let keep = limit.map_or(n, |l| l.min(n));
        ensure!(keep > 0, "{name}: no samples to convert (limit {limit:?})");
        if let Some(&bad) = labels
            .data
            .iter()
            .find(|&&l| l as usize >= FASHION_MNIST_CLASSES.len())
        {
            bail!("{name}: label {bad} is outside the 10 Fashion-MNIST classes");
        }
        splits.push((
            name,
            images.data[..keep * h * w].to_vec(),
            labels.data[..keep].to_vec(),
            (keep, h, w),
        ));
    }
    let views: Vec<Split> = splits
        .iter()
        .map(|(name, img, lab, (n, h, w))| Split {
            name,
            images: ArrayView4::from_shape((*n, 1, *h, *w), img).expect("length checked above"),
            labels: ArrayView1::from(lab.as_slice()),
        })
        .collect();
    write_dataset(
        &opts.output,
        opts.force,
        "Fashion-MNIST (Zalando Research), IDX files",
        &FASHION_MNIST_CLASSES,
        &views,
    )?;
    Ok(ConvertSummary {
        train: splits[0].3 .0,
        test: splits[1].3 .0,
    })
}

/// Sample counts written by a conversion.
#[derive(Debug, Clone, Copy)]
pub struct ConvertSummary {
    pub train: usize,
    pub test: usize,
}

/// Writes splits to `output` atomically (temporary file, then rename).
///
/// # Errors
/// An existing output without `force`, an unwritable directory, or an HDF5 failure.
pub fn write_dataset(
    output: &Path,
    force: bool,
    source: &str,
    classes: &[&str],
    splits: &[Split],
) -> Result<()> {
    write_dataset_with(output, force, source, classes, splits, &[])
}

/// [`write_dataset`] plus root attributes holding f64 arrays (e.g. per-channel `mean`
/// and `std`).
///
/// # Errors
/// As [`write_dataset`].
pub fn write_dataset_with(
    output: &Path,
    force: bool,
    source: &str,
    classes: &[&str],
    splits: &[Split],
    extra: &[(&str, Vec<f64>)],
) -> Result<()> {
    if output.exists() && !force {
        bail!(
            "--output {} already exists (use --force to replace it)",
            output.display()
        );
    }
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    let file_name = output
        .file_name()
        .with_context(|| format!("--output {} names no file", output.display()))?;
    let tmp = dir.join(format!(
        ".{}.partial-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = write_hdf5(&tmp, source, classes, splits, extra)
        .with_context(|| format!("cannot write {}", output.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, output)
                .with_context(|| format!("cannot rename {} to {}", tmp.display(), output.display()))
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_hdf5(
    path: &Path,
    source: &str,
    classes: &[&str],
    splits: &[Split],
    extra: &[(&str, Vec<f64>)],
) -> Result<()> {
    let file = hdf5::File::create(path)?;
    for (name, values) in extra {
        file.new_attr::<f64>()
            .shape(values.len())
            .create(*name)?
            .write(&Array1::from(values.clone()))?;
    }
    let text = |s: &str| {
        s.parse::<VarLenUnicode>()
            .map_err(|e| anyhow::anyhow!("{e}"))
    };
    file.new_attr::<VarLenUnicode>()
        .shape(())
        .create("format")?
        .write_scalar(&text(FORMAT)?)?;
    file.new_attr::<VarLenUnicode>()
        .shape(())
        .create("source")?
        .write_scalar(&text(source)?)?;
    let names: Array1<VarLenUnicode> = classes.iter().map(|c| text(c)).collect::<Result<_>>()?;
    file.new_attr::<VarLenUnicode>()
        .shape(classes.len())
        .create("classes")?
        .write(&names)?;
    for split in splits {
        let group = file.create_group(split.name)?;
        let (n, c, h, w) = split.images.dim();
        // Chunks of up to 1,024 images: a good unit for both compression and the
        // contiguous shard reads of the workers.
        group
            .new_dataset_builder()
            .with_data(&split.images)
            .chunk((n.clamp(1, 1024), c, h, w))
            .deflate(4)
            .create("images")?;
        group
            .new_dataset_builder()
            .with_data(&split.labels)
            .create("labels")?;
        group
            .new_attr::<u64>()
            .shape(())
            .create("count")?
            .write_scalar(&(n as u64))?;
    }
    file.close()?;
    Ok(())
}
