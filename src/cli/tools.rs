//! The flags of the tools beside training (`rps convert`, `rps bench`,
//! `rps bench-exchange`) and their conversion into each tool's options.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::ModelFlag;
use crate::bench::BenchOptions;
use crate::data::convert::ConvertOptions;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DatasetFormat {
    /// The four IDX files of Fashion-MNIST (gzipped or not).
    FashionMnist,
    /// The CIFAR-10 binary version: data_batch_1.bin … data_batch_5.bin and
    /// test_batch.bin (cifar-10-binary.tar.gz extracted to cifar-10-batches-bin/).
    Cifar10,
}

#[derive(Debug, Args)]
pub struct ConvertFlags {
    /// Format of the input.
    #[arg(value_enum)]
    pub format: DatasetFormat,
    /// Directory holding the input files (for cifar10: the extracted
    /// cifar-10-batches-bin/).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/usr/share/datasets/fashion-mnist"
    )]
    pub input: PathBuf,
    /// HDF5 file to write (atomically: a temporary file renamed when complete).
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    /// Keep only the first N training samples (small files for quick tests).
    #[arg(long, value_name = "N")]
    pub limit_train: Option<usize>,
    /// Keep only the first N test samples.
    #[arg(long, value_name = "N")]
    pub limit_test: Option<usize>,
    /// Replace an existing output file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct BenchFlags {
    /// Model to benchmark.
    #[arg(long, value_enum, default_value_t = ModelFlag::Cnn)]
    pub model: ModelFlag,
    /// Batch sizes, comma-separated.
    #[arg(
        long,
        value_name = "B,B,...",
        value_delimiter = ',',
        default_value = "32,128"
    )]
    pub batch_sizes: Vec<usize>,
    /// Input image as channels,height,width [default: 1,28,28 (Fashion-MNIST) for cnn and
    /// mlp, 3,32,32 (CIFAR-10) for resnet20].
    #[arg(long, value_name = "C,H,W", value_delimiter = ',')]
    pub image: Option<Vec<usize>>,
    /// Number of classes.
    #[arg(long, value_name = "K", default_value_t = 10)]
    pub classes: usize,
    /// Untimed steps before measuring.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub warmup: usize,
    /// Timed steps per batch size and round (the per-stage table, measured in the first
    /// round, uses as many again).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub repeats: usize,
    /// Rounds: each times rps at every batch size, then (with --pytorch) PyTorch, so a
    /// slow moment of the machine falls on both; figures are medians over the rounds,
    /// with their range.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub rounds: usize,
    /// Also run bench/pytorch_reference.py (PyTorch from PyPI in its own virtual
    /// environment, one thread) once per round, and print `ratio rps/pytorch batch=B: R
    /// (median of N rounds, range A–B)` lines; fails if the reference cannot run.
    #[arg(long)]
    pub pytorch: bool,
    /// Python interpreter that starts the reference script.
    #[arg(long, value_name = "PATH", default_value = "python3")]
    pub python: PathBuf,
    /// The reference script.
    #[arg(long, value_name = "FILE", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/pytorch_reference.py"))]
    pub pytorch_script: PathBuf,
    /// Virtual environment the script creates and installs PyTorch into (reused).
    #[arg(long, value_name = "DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-venv"))]
    pub venv: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExchangeModeFlag {
    /// The first --servers ranks are servers, the rest workers (as `rps train --servers`).
    Dedicated,
    /// Every rank is a worker and the server of one block (as `rps train --colocated`).
    Colocated,
}

#[derive(Debug, Args)]
pub struct BenchExchangeFlags {
    /// Buffer sizes in bytes (multiples of 4), comma-separated, as integers or 1e6-style.
    #[arg(long, value_name = "B,B,...", value_delimiter = ',', value_parser = parse_bytes)]
    #[arg(default_value = "1e5,1e6,1e7,1e8")]
    pub sizes: Vec<u64>,
    /// i.i.d. Bernoulli drop rates of the RPS exchange, comma-separated, each in [0, 1);
    /// must include 0.
    #[arg(
        long,
        value_name = "P,P,...",
        value_delimiter = ',',
        allow_negative_numbers = true
    )]
    #[arg(default_value = "0,0.1")]
    pub drop_rates: Vec<f64>,
    /// Role splits to time, comma-separated.
    #[arg(long, value_name = "M,M,...", value_enum, value_delimiter = ',')]
    #[arg(default_value = "dedicated,colocated")]
    pub modes: Vec<ExchangeModeFlag>,
    /// Servers in dedicated mode [default: half the ranks, at least 1].
    #[arg(long, value_name = "S")]
    pub servers: Option<usize>,
    /// Untimed repeats of every operation before measuring.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub warmup: usize,
    /// Timed repeats of every operation.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub repeats: usize,
    /// Seed of the drop decisions and of co-located mode's block assignment.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Bytes per chunk of the pipelined RPS exchange (at most 8 chunks per message), as
    /// `rps train --chunk-bytes`: to find whether and at what size pipelining pays on a
    /// network [default: one chunk, not pipelined].
    #[arg(long, value_name = "N")]
    pub chunk_bytes: Option<usize>,
    /// Also write every measured row to this CSV file (rank 0; parent directories are
    /// created, an existing file is replaced); `rps plot` draws it.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
}

/// A byte count written as an integer (`1000000`) or in 1e6 style.
fn parse_bytes(s: &str) -> Result<u64, String> {
    if let Ok(b) = s.parse::<u64>() {
        return Ok(b);
    }
    match s.parse::<f64>() {
        Ok(x) if x >= 0.0 && x.fract() == 0.0 && x <= u64::MAX as f64 => Ok(x as u64),
        _ => Err(format!("{s:?} is not a whole number of bytes")),
    }
}

impl From<BenchExchangeFlags> for crate::bench::exchange::Options {
    fn from(f: BenchExchangeFlags) -> Self {
        use crate::bench::exchange::Roles;
        crate::bench::exchange::Options {
            sizes: f.sizes,
            drop_rates: f.drop_rates,
            modes: f
                .modes
                .into_iter()
                .map(|m| match m {
                    ExchangeModeFlag::Dedicated => Roles::Dedicated,
                    ExchangeModeFlag::Colocated => Roles::Colocated,
                })
                .collect(),
            servers: f.servers,
            warmup: f.warmup,
            repeats: f.repeats,
            seed: f.seed,
            chunk_bytes: f.chunk_bytes,
            csv: f.csv,
        }
    }
}

impl TryFrom<BenchFlags> for BenchOptions {
    type Error = String;

    fn try_from(f: BenchFlags) -> Result<Self, String> {
        let image = f.image.unwrap_or_else(|| match f.model {
            ModelFlag::Cnn | ModelFlag::Mlp => vec![1, 28, 28],
            ModelFlag::Resnet20 => vec![3, 32, 32],
        });
        let image: [usize; 3] = image.as_slice().try_into().map_err(|_| {
            format!(
                "--image needs exactly three numbers C,H,W, got {}",
                image.len()
            )
        })?;
        Ok(BenchOptions {
            model: f.model.into(),
            image,
            classes: f.classes,
            batch_sizes: f.batch_sizes,
            warmup: f.warmup,
            repeats: f.repeats,
            rounds: f.rounds,
            pytorch: f.pytorch,
            python: f.python,
            script: f.pytorch_script,
            venv: f.venv,
        })
    }
}

impl From<ConvertFlags> for ConvertOptions {
    fn from(f: ConvertFlags) -> Self {
        ConvertOptions {
            input: f.input,
            output: f.output,
            limit_train: f.limit_train,
            limit_test: f.limit_test,
            force: f.force,
        }
    }
}
