//! Everything a run needs before its first step, prepared and validated on every rank:
//! the dataset and model, roles and blocks, the drop model, this rank's shards, the
//! fingerprint and the state to resume from. Nothing here communicates, so every rank
//! fails (or not) on its own and `agree` turns that into one verdict.

use anyhow::{bail, ensure, Context, Result};

use crate::checkpoint::{self, RankState};
use crate::comm::udp;
use crate::config::{Detection, Duration, TrainConfig, TransportKind};
use crate::data::shard::{read_labels, shard_range};
use crate::data::skew::{dirichlet_shards, dominant_share};
use crate::data::{DatasetInfo, Shard};
use crate::drop::RunShape;
use crate::exchange::{Exchange, Layout, Mode};
use crate::metrics::{attrs, RunEnv, RunFacts};
use crate::nn::Model;

/// Samples per forward pass when evaluating the test set (the memory check counts it).
pub(super) const EVAL_BATCH: usize = 100;

/// This rank's worker index and its shards of the training and test sets.
pub(super) struct WorkerData {
    pub index: usize,
    pub train: Shard,
    pub test: Shard,
}

/// Everything the step loop needs, prepared before training starts.
pub(super) struct Setup {
    pub info: DatasetInfo,
    pub model: Box<dyn Model>,
    pub layout: Layout,
    /// The drop model's description and the --link-rates text, for the metrics file.
    pub drop_description: String,
    pub link_rates_text: Option<String>,
    pub steps_per_epoch: u64,
    pub total_steps: u64,
    /// The learning rate of every step.
    pub lr: crate::schedule::Lr,
    /// `None` on a pure server.
    pub worker: Option<WorkerData>,
    /// Everything that must match between a checkpoint and the run resuming it.
    pub fingerprint: String,
    /// With --resume, the states this rank could continue from.
    pub resume: Resume,
}

/// This rank's checkpoints, with --resume.
#[derive(Debug, Default)]
pub(super) struct Resume {
    /// Usable states, newest first.
    pub candidates: Vec<RankState>,
    /// Complete checkpoints this rank cannot use: step and why.
    pub unusable: Vec<(u64, String)>,
}

impl Setup {
    /// The facts the metrics file's root attributes are computed from.
    pub fn facts<'a>(&'a self, cfg: &'a TrainConfig, env: Option<&'a RunEnv>) -> RunFacts<'a> {
        RunFacts {
            cfg,
            layout: &self.layout,
            dataset: Some(&self.info),
            frontend: "rps train",
            num_params: self.model.num_params(),
            total_steps: self.total_steps,
            steps_per_epoch: self.steps_per_epoch,
            drop_description: &self.drop_description,
            link_rates: self.link_rates_text.as_deref(),
            env,
        }
    }
}

/// Validates everything and builds the set-up of rank `rank` of `size`, and the exchange
/// (with its drop model).
///
/// # Errors
/// Whatever this rank finds wrong: the launcher, the dataset, the model's fit to it, the
/// roles, the drop model's files, the checkpoint to resume, the datagram size.
pub(super) fn prepare(
    rank: usize,
    size: usize,
    ranks_here: usize,
    cfg: &TrainConfig,
) -> Result<(Setup, Exchange)> {
    check_launcher(size)?;
    super::paths::check_paths(cfg)?;
    let info = DatasetInfo::open(&cfg.dataset)?;
    let model = build_model(cfg, &info)?;
    let layout = Layout::new(size, cfg.mode, model.num_params(), cfg.seed)?;
    check_memory(cfg, &info, &layout, &*model, ranks_here)?;
    let (steps_per_epoch, total_steps) = schedule(cfg, &info, &layout)?;
    // The drop model's files are checked before any shard is read.
    let (exchange, link_rates_text) = build_exchange(cfg, &layout, total_steps)?;
    let worker = match layout.worker_index(rank) {
        Some(w) => Some(read_shards(&info, layout.num_workers(), w, cfg)?),
        None => None,
    };
    let mut setup = Setup {
        drop_description: exchange.drop_model().describe(),
        info,
        model,
        layout,
        link_rates_text,
        steps_per_epoch,
        total_steps,
        lr: cfg.lr(total_steps),
        worker,
        fingerprint: String::new(),
        resume: Resume::default(),
    };
    setup.fingerprint = attrs::fingerprint(&setup.facts(cfg, None));
    setup.resume = resume_candidates(rank, cfg, &setup)?;
    Ok((setup, exchange))
}

/// The model `cfg` names, built for the dataset's images and classes.
fn build_model(cfg: &TrainConfig, info: &DatasetInfo) -> Result<Box<dyn Model>> {
    crate::nn::conv_algo::check_env()?;
    crate::nn::simd::check_env().map_err(anyhow::Error::msg)?;
    let t = info.train;
    cfg.model
        .build(t.channels, t.height, t.width, info.classes.len())
        .with_context(|| {
            format!(
                "dataset {}: images of {}×{}×{} do not fit the {}",
                info.path.display(),
                t.channels,
                t.height,
                t.width,
                cfg.model.title()
            )
        })
}

/// Steps per epoch and in total.
fn schedule(cfg: &TrainConfig, info: &DatasetInfo, layout: &Layout) -> Result<(u64, u64)> {
    let workers = layout.num_workers();
    let count = info.train.count;
    let per_worker = count / workers;
    let steps_per_epoch = (per_worker / cfg.batch_size) as u64;
    ensure!(
        steps_per_epoch > 0,
        "--batch-size {} exceeds the {per_worker} training samples of each worker ({count} samples over {workers} workers)",
        cfg.batch_size,
    );
    let total_steps = match cfg.duration {
        Duration::Epochs(e) => e.checked_mul(steps_per_epoch).with_context(|| {
            format!(
                "--epochs {e} of {steps_per_epoch} steps each is more steps than can be counted"
            )
        })?,
        Duration::Steps(s) => s,
    };
    Ok((steps_per_epoch, total_steps))
}

/// Refuses a run that cannot fit in memory before anything big is allocated (images of
/// 4096×4096 pixels would otherwise abort every rank on a failed allocation): a worker
/// holds its shards as bytes, a few batches as f32, and about five copies of the model
/// (replica, gradient, momentum, average, a received block).
fn check_memory(
    cfg: &TrainConfig,
    info: &DatasetInfo,
    layout: &Layout,
    model: &dyn Model,
    ranks_here: usize,
) -> Result<()> {
    let Some(available) = crate::memory::available() else {
        return Ok(());
    };
    let workers = layout.num_workers() as u128;
    let sample = info.train.sample_len() as u128;
    let shard = info.train.count as u128 / workers + (info.test.count as u128).div_ceil(workers);
    let batches = 2 * (cfg.batch_size.max(EVAL_BATCH)) as u128 * sample * 4;
    let per_rank = shard * sample + batches + 5 * 4 * model.num_params() as u128;
    let need = per_rank * ranks_here.max(1) as u128;
    let gib = crate::memory::gib;
    ensure!(
        need <= available as u128,
        "dataset {} with the {}: each rank needs about {:.1} GiB ({} samples of {}×{}×{} in its shards, {} parameters), and {ranks_here} rank(s) share this host's {:.1} GiB of available memory; use smaller images, fewer ranks per host or more workers",
        info.path.display(),
        cfg.model.title(),
        gib(per_rank),
        shard,
        info.train.channels,
        info.train.height,
        info.train.width,
        model.num_params(),
        gib(available as u128)
    );
    Ok(())
}

/// Worker `w`'s shards: its part of the training set (contiguous, or dealt by
/// `--label-skew`), and a balanced part of the test set.
fn read_shards(
    info: &DatasetInfo,
    workers: usize,
    w: usize,
    cfg: &TrainConfig,
) -> Result<WorkerData> {
    let train = match cfg.label_skew {
        None => Shard::read(info, "train", shard_range(info.train.count, workers, w))?,
        Some(alpha) => {
            let labels = read_labels(info, "train")?;
            let shards = dirichlet_shards(&labels, info.classes.len(), workers, alpha, cfg.seed);
            if w == 0 {
                log::info!(
                    "--label-skew {alpha}: {} samples per worker; on average {:.0} % of a worker's samples are of its most frequent class",
                    shards[0].len(),
                    100.0 * dominant_share(&labels, info.classes.len(), &shards)
                );
            }
            Shard::read_rows(info, "train", &shards[w])?
        }
    };
    Ok(WorkerData {
        index: w,
        train,
        test: Shard::read(info, "test", balanced_range(info.test.count, workers, w))?,
    })
}

/// Test samples `part` of `parts` evaluates: every sample once, sizes differ by at most one.
fn balanced_range(count: usize, parts: usize, part: usize) -> std::ops::Range<usize> {
    part * count / parts..(part + 1) * count / parts
}

/// With --resume: this rank's usable states, newest first, each checked against this
/// run (the job then resumes from the newest step every rank can use), and the reasons
/// the others cannot be used.
fn resume_candidates(rank: usize, cfg: &TrainConfig, s: &Setup) -> Result<Resume> {
    let Some(dir) = &cfg.resume else {
        return Ok(Resume::default());
    };
    let expected = if s.worker.is_some() {
        s.model.num_params()
    } else {
        0
    };
    let mut resume = Resume::default();
    for (step, state) in checkpoint::read_candidates(dir, rank, &s.fingerprint)? {
        match state {
            Ok(state) => {
                ensure!(
                    state.params.len() == expected && state.velocity.len() == expected,
                    "--resume {}: rank {rank}'s checkpoint holds {} parameters, expected {expected}",
                    dir.display(),
                    state.params.len()
                );
                ensure!(
                    state.step < s.total_steps,
                    "--resume {}: the checkpoint is at step {}, but this run has only {} steps (raise --steps or --epochs)",
                    dir.display(),
                    state.step,
                    s.total_steps
                );
                resume.candidates.push(state);
            }
            Err(e) => resume.unusable.push((step, format!("{e:#}"))),
        }
    }
    Ok(resume)
}

/// The exchange `cfg` asks for over `layout` (drop model, packets, chunks, detection),
/// for a run of `total_steps` (0 where unknown: a replayed trace is then not checked for
/// length, and steps past its end drop nothing), and the text of its `--link-rates` file.
/// The one place the train driver and [`crate::session`] build it.
///
/// # Errors
/// A drop model's file that cannot be used; packets that do not fit a UDP datagram.
pub fn build_exchange(
    cfg: &TrainConfig,
    layout: &Layout,
    total_steps: u64,
) -> Result<(Exchange, Option<String>)> {
    let packet_elems = cfg.packet_bytes.map(|b| b / 4);
    let max_block = layout.blocks().iter().map(|r| r.len()).max().unwrap_or(1);
    let (servers, colocated) = match cfg.mode {
        Mode::Dedicated { servers } => (servers, false),
        Mode::Colocated => (layout.size(), true),
    };
    let num_params = layout.blocks().last().map_or(0, |r| r.end);
    let drop = super::drops::build(
        &cfg.drop,
        &RunShape {
            seed: cfg.seed,
            world_size: layout.size(),
            servers,
            colocated,
            num_params,
            packet_bytes: cfg.packet_bytes,
            slots_per_step: packet_elems.map_or(1, |pe| max_block.div_ceil(pe)) as u64,
            total_steps,
        },
    )?;
    let exchange = Exchange::new(layout.clone(), drop.model, packet_elems);
    let exchange = match cfg.chunk_bytes {
        Some(bytes) => exchange.with_chunk_elems(bytes / 4),
        None => exchange,
    };
    let exchange = match cfg.detection {
        Detection::Oracle => exchange,
        Detection::Deadline { timeout } => exchange.with_deadline(timeout),
    };
    check_datagrams(cfg, &exchange)?;
    Ok((exchange, drop.link_rates_text))
}

/// With UDP, every packet and its headers must fit one datagram.
fn check_datagrams(cfg: &TrainConfig, exchange: &Exchange) -> Result<()> {
    if let TransportKind::Udp(opts) = cfg.transport {
        let packet = cfg.packet_bytes.unwrap_or(0);
        let bytes = udp::HEADER_BYTES + 4 * exchange.header_elems(true) + packet;
        ensure!(
            bytes <= opts.max_datagram(),
            "--transport udp: packets of {packet} bytes need datagrams of {bytes} bytes (headers included), over the {} bytes that fit --udp-mtu {}; use a smaller --packet-bytes",
            opts.max_datagram(),
            opts.mtu
        );
    }
    Ok(())
}

/// A binary started by another MPI's launcher runs as N one-rank jobs, silently; catch
/// that by comparing with the size the launcher announced.
fn check_launcher(size: usize) -> Result<()> {
    for var in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"] {
        if let Some(n) = std::env::var(var)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            if n != size {
                bail!("the launcher started {n} ranks ({var}) but MPI reports a world of {size}: rps was built against a different MPI than the mpirun that started it");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_ranges_cover_everything() {
        let r: Vec<_> = (0..3).map(|p| balanced_range(10, 3, p)).collect();
        assert_eq!(r, vec![0..3, 3..6, 6..10]);
    }
}
