//! The root attributes of a metrics file, declared once: [`RUN_ATTRS`] describe the run
//! (configuration and environment), each saying whether it is part of the checkpoint
//! fingerprint, so the attributes written and the fingerprint checked on `--resume` come
//! from one table; [`STATUS`] and the other result attributes are set as the run goes.

use std::fmt;

use crate::config::{DropSpec, TrainConfig};
use crate::data::DatasetInfo;
use crate::exchange::Layout;

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
impl From<f32> for AttrValue {
    /// The f64 nearest to the f32's shortest decimal form, so `0.9f32` is stored as 0.9.
    fn from(v: f32) -> Self {
        AttrValue::Float(v.to_string().parse().unwrap_or(f64::from(v)))
    }
}
impl From<usize> for AttrValue {
    fn from(v: usize) -> Self {
        AttrValue::Int(v as i64)
    }
}
impl From<u64> for AttrValue {
    fn from(v: u64) -> Self {
        AttrValue::Int(v as i64)
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Int(i64::from(v))
    }
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Str(s) => f.write_str(s),
            AttrValue::Int(v) => write!(f, "{v}"),
            AttrValue::Float(v) => write!(f, "{v}"),
        }
    }
}

/// Where the run happens: known once every rank has started, not part of the fingerprint.
#[derive(Debug, Clone, Default)]
pub struct RunEnv {
    pub command_line: String,
    pub mpi_library_version: String,
    pub hosts: Vec<String>,
    pub started_at_unix: i64,
}

/// Everything the root attributes are computed from.
#[derive(Debug, Clone, Copy)]
pub struct RunFacts<'a> {
    pub cfg: &'a TrainConfig,
    pub layout: &'a Layout,
    /// The dataset rps trains on; `None` where a front end trains a model of its own and
    /// calls only the exchange ([`crate::session`]): then the attributes of rps's own
    /// training (model, optimiser, schedule, dataset) are absent.
    pub dataset: Option<&'a DatasetInfo>,
    /// Who runs the steps: `rps train`, or a front end such as `python`.
    pub frontend: &'a str,
    pub num_params: usize,
    pub total_steps: u64,
    pub steps_per_epoch: u64,
    /// The drop model's own description (what it really does, rates included).
    pub drop_description: &'a str,
    /// The text of the `--link-rates` file.
    pub link_rates: Option<&'a str>,
    /// `None` while only the fingerprint is needed (before ranks meet).
    pub env: Option<&'a RunEnv>,
}

/// One root attribute describing the run.
#[derive(Debug, Clone, Copy)]
pub struct Attr {
    pub name: &'static str,
    pub doc: &'static str,
    /// Part of the checkpoint fingerprint: a run may resume only a checkpoint whose
    /// fingerprinted attributes are all equal to its own.
    pub fingerprint: bool,
    /// The value, or `None` where the attribute does not apply to this run.
    pub value: fn(&RunFacts) -> Option<AttrValue>,
}

macro_rules! fingerprinted {
    (fingerprint) => {
        true
    };
    (record) => {
        false
    };
}

/// Declares attributes once: a constant per attribute and the list of all of them.
macro_rules! attrs {
    ($list:ident { $( $(#[doc = $doc:literal])+ $konst:ident = $name:literal, $fp:ident, $value:expr; )+ }) => {
        $(
            #[doc = concat!("Root attribute `", $name, "`:", $($doc),+)]
            pub const $konst: Attr = Attr {
                name: $name,
                doc: concat!($($doc),+),
                fingerprint: fingerprinted!($fp),
                value: $value,
            };
        )+
        /// Every attribute describing a run, in the order they are written.
        pub const $list: &[Attr] = &[$($konst),+];
    };
}

fn env<T>(f: &RunFacts, get: impl Fn(&RunEnv) -> T) -> Option<AttrValue>
where
    T: Into<AttrValue>,
{
    f.env.map(|e| get(e).into())
}

/// `value` where rps trains the model itself (`rps train`), else absent.
fn trains<T: Into<AttrValue>>(f: &RunFacts, value: impl FnOnce() -> T) -> Option<AttrValue> {
    f.dataset.map(|_| value().into())
}

fn rates(f: &RunFacts) -> Option<(f64, f64)> {
    match f.cfg.drop {
        DropSpec::Bernoulli { up, down } | DropSpec::PerLink { up, down, .. } => Some((up, down)),
        _ => None,
    }
}

/// The UDP exchange's loss budget, if any.
fn budget(f: &RunFacts) -> Option<crate::comm::udp::rate::Budget> {
    match f.cfg.transport {
        crate::config::TransportKind::Udp(o) => o.budget,
        crate::config::TransportKind::Mpi => None,
    }
}

fn ge<T: Into<AttrValue>>(
    f: &RunFacts,
    get: impl Fn(&crate::drop::GeParams) -> T,
) -> Option<AttrValue> {
    match &f.cfg.drop {
        DropSpec::GilbertElliott(g) => Some(get(g).into()),
        _ => None,
    }
}

attrs! {
    RUN_ATTRS {
        /// Version of rps that wrote the file.
        RPS_VERSION = "rps_version", record, |_| Some(env!("CARGO_PKG_VERSION").into());
        /// Who ran the steps: `rps train`, or `python` (the `rps` Python package, whose script trains a model of its own and calls only the exchange; attributes of rps's own training are then absent).
        FRONTEND = "frontend", record, |f| Some(f.frontend.into());
        /// The command line of rank 0.
        COMMAND_LINE = "command_line", record, |f| env(f, |e| e.command_line.clone());
        /// Start of training, seconds since the Unix epoch.
        STARTED_AT_UNIX = "started_at_unix", record, |f| env(f, |e| e.started_at_unix);
        /// `rps` (the paper's algorithm) or `allreduce` (the reliable baseline).
        ALGORITHM = "algorithm", fingerprint, |f| Some(f.cfg.algorithm.name().into());
        /// `dedicated` (the first ranks serve) or `colocated` (every rank serves one block).
        MODE = "mode", fingerprint, |f| Some(f.cfg.mode.name().into());
        /// 1 in co-located mode, else 0.
        COLOCATED = "colocated", record, |f| Some((f.cfg.mode == crate::exchange::Mode::Colocated).into());
        /// Ranks in the job.
        WORLD_SIZE = "world_size", fingerprint, |f| Some(f.layout.size().into());
        /// Ranks that serve blocks.
        SERVERS = "servers", fingerprint, |f| Some(f.layout.num_servers().into());
        /// Ranks that train a replica.
        WORKERS = "workers", record, |f| Some(f.layout.num_workers().into());
        /// The worker ranks, as `first..end`.
        WORKER_RANKS = "worker_ranks", record, |f| {
            let w = f.layout.workers();
            Some(format!("{}..{}", w.start, w.end).into())
        };
        /// Blocks the model is cut into.
        BLOCKS = "blocks", record, |f| Some(f.layout.num_blocks().into());
        /// `--drop-rate` as given (0 when absent).
        DROP_RATE = "drop_rate", record, |f| Some(f.cfg.drop_rate.into());
        /// `bernoulli`, `gilbert-elliott`, `per-link` or `replay`.
        DROP_MODEL = "drop_model", record, |f| Some(f.cfg.drop.name().into());
        /// What the drop model does, rates included.
        DROP_MODEL_DESCRIPTION = "drop_model_description", fingerprint, |f| Some(f.drop_description.into());
        /// Uplink drop probability (Bernoulli and per-link models).
        DROP_UP = "drop_up", record, |f| rates(f).map(|r| r.0.into());
        /// Downlink drop probability (Bernoulli and per-link models).
        DROP_DOWN = "drop_down", record, |f| rates(f).map(|r| r.1.into());
        /// Gilbert–Elliott: probability of moving from the good to the bad state.
        GE_P = "ge_p", record, |f| ge(f, |g| g.p);
        /// Gilbert–Elliott: probability of moving from the bad to the good state.
        GE_R = "ge_r", record, |f| ge(f, |g| g.r);
        /// Gilbert–Elliott: loss probability in the bad state.
        GE_BAD_LOSS = "ge_bad_loss", record, |f| ge(f, |g| g.bad_loss);
        /// Gilbert–Elliott: loss probability in the good state.
        GE_GOOD_LOSS = "ge_good_loss", record, |f| ge(f, |g| g.good_loss);
        /// Gilbert–Elliott: stationary loss rate.
        GE_MEAN_LOSS = "ge_mean_loss", record, |f| ge(f, |g| g.mean_loss());
        /// Gilbert–Elliott: mean burst length, in packet slots.
        GE_MEAN_BURST = "ge_mean_burst", record, |f| ge(f, |g| g.mean_burst());
        /// The metrics file whose drop trace is replayed.
        REPLAYED_TRACE = "replayed_trace", record, |f| match &f.cfg.drop {
            DropSpec::Replay { file } => Some(file.display().to_string().into()),
            _ => None,
        };
        /// The `--link-rates` file.
        LINK_RATES_FILE = "link_rates_file", record, |f| match (&f.cfg.drop, f.link_rates) {
            (DropSpec::PerLink { file, .. }, Some(_)) => Some(file.display().to_string().into()),
            _ => None,
        };
        /// The text of the `--link-rates` file.
        LINK_RATES = "link_rates", record, |f| f.link_rates.map(Into::into);
        /// Bytes per packet (0: whole blocks are the unit of loss).
        PACKET_BYTES = "packet_bytes", fingerprint, |f| Some(f.cfg.packet_bytes.unwrap_or(0).into());
        /// Bytes per chunk of the pipelined exchange (`--chunk-bytes`; absent when the
        /// exchange is not pipelined). The same bits for every value, so not part of the
        /// fingerprint.
        CHUNK_BYTES = "chunk_bytes", record, |f| f.cfg.chunk_bytes.map(Into::into);
        /// 1 when every drop decision is recorded in `/trace/dropped`.
        TRACE_RECORDED = "trace_recorded", record, |f| Some(f.cfg.record_trace.into());
        /// `mpi` or `udp`: what carries the exchange.
        TRANSPORT = "transport", fingerprint, |f| Some(f.cfg.transport.name().into());
        /// `--loss-target`: the loss budget of the UDP exchange (absent: none).
        LOSS_TARGET = "loss_target", record, |f| budget(f).map(|b| b.target().into());
        /// `--udp-link-rate` with a loss budget, in bit/s.
        UDP_LINK_RATE = "udp_link_rate", record, |f| budget(f).map(|b| b.link_rate.into());
        /// `oracle` or `deadline`.
        DETECTION = "detection", fingerprint, |f| Some(f.cfg.detection.name().into());
        /// The receive deadline (0 with oracle detection), in milliseconds.
        RECV_TIMEOUT_MS = "recv_timeout_ms", fingerprint, |f| Some(f.cfg.detection.timeout_ms().into());
        /// Seed of initialisation, data order, block assignment and drops.
        SEED = "seed", fingerprint, |f| Some(f.cfg.seed.into());
        /// Minibatch size per worker.
        BATCH_SIZE = "batch_size", fingerprint, |f| trains(f, || f.cfg.batch_size);
        /// Learning rate.
        LR = "lr", fingerprint, |f| trains(f, || f.cfg.lr);
        /// The learning-rate schedule, resolved for this run's length (`constant`, `step(milestones=[..], gamma=..)`, `cosine(..)`, and the warm-up).
        LR_SCHEDULE = "lr_schedule", fingerprint, |f| trains(f, || f.cfg.lr(f.total_steps).to_string());
        /// SGD momentum.
        MOMENTUM = "momentum", fingerprint, |f| trains(f, || f.cfg.momentum);
        /// L2 weight decay.
        WEIGHT_DECAY = "weight_decay", fingerprint, |f| trains(f, || f.cfg.weight_decay);
        /// Steps the run is configured for.
        STEPS = "steps", record, |f| trains(f, || f.total_steps);
        /// Steps per pass over each worker's shard.
        STEPS_PER_EPOCH = "steps_per_epoch", record, |f| trains(f, || f.steps_per_epoch);
        /// Passes over each worker's shard (steps / steps_per_epoch).
        EPOCHS = "epochs", record, |f| trains(f, || f.total_steps as f64 / f.steps_per_epoch as f64);
        /// Evaluate every this many steps (0: only at the end).
        EVAL_EVERY = "eval_every", record, |f| trains(f, || f.cfg.eval_every);
        /// `cnn` or `resnet20`.
        MODEL = "model", fingerprint, |f| trains(f, || f.cfg.model.name());
        /// 1 when training batches are augmented.
        AUGMENT = "augment", fingerprint, |f| trains(f, || f.cfg.augment);
        /// With `--label-skew`: the Dirichlet concentration α of the workers' label mixes (absent: contiguous shards).
        LABEL_SKEW = "label_skew", fingerprint, |f| f.dataset.and(f.cfg.label_skew).map(Into::into);
        /// Length of the flat parameter (and state) vector.
        NUM_PARAMS = "num_params", fingerprint, |f| Some(f.num_params.into());
        /// The dataset file as given.
        DATASET = "dataset", record, |f| trains(f, || f.cfg.dataset.display().to_string());
        /// What identifies the dataset's content, whatever its file is called: a hash of its shapes, labels, classes, statistics and first images.
        DATASET_DIGEST = "dataset_digest", fingerprint, |f| f.dataset.map(|d| d.digest().into());
        /// The dataset's `source` attribute.
        DATASET_SOURCE = "dataset_source", fingerprint, |f| f.dataset.map(|d| d.source.clone().into());
        /// Samples in the dataset's training split.
        TRAIN_SAMPLES = "train_samples", fingerprint, |f| f.dataset.map(|d| d.train.count.into());
        /// Samples in the dataset's test split.
        TEST_SAMPLES = "test_samples", fingerprint, |f| f.dataset.map(|d| d.test.count.into());
        /// The MPI library (or `in-process`).
        MPI_LIBRARY_VERSION = "mpi_library_version", record, |f| env(f, |e| e.mpi_library_version.clone());
        /// The instruction set of rank 0's kernels (`avx512`, `avx2` or `portable`; `RPS_KERNELS` caps it): a matter of speed only, every one gives the same results.
        KERNELS = "kernels", record, |_| Some(crate::nn::simd::isa().name().into());
        /// Host of every rank, in rank order, comma-separated; a resumed run (a requeued Slurm job may land on other nodes) replaces it with its own.
        HOSTS = "hosts", record, |f| env(f, |e| e.hosts.join(","));
        /// The checkpoint fingerprint (`name=value;...` of the attributes marked fingerprint): `--resume` refuses a metrics file of another run.
        FINGERPRINT = "fingerprint", record, |f| Some(fingerprint(f).into());
    }
}

/// Every applicable attribute of the run with its value.
pub fn attributes(f: &RunFacts) -> Vec<(&'static str, AttrValue)> {
    RUN_ATTRS
        .iter()
        .filter_map(|a| (a.value)(f).map(|v| (a.name, v)))
        .collect()
}

/// The checkpoint fingerprint: `name=value` of every fingerprinted attribute, `;`-joined.
pub fn fingerprint(f: &RunFacts) -> String {
    RUN_ATTRS
        .iter()
        .filter(|a| a.fingerprint)
        .filter_map(|a| (a.value)(f).map(|v| format!("{}={v}", a.name)))
        .collect::<Vec<_>>()
        .join(";")
}

/// A root attribute that the run sets as it goes (status, results).
#[derive(Debug, Clone, Copy)]
pub struct ResultAttr {
    pub name: &'static str,
    pub doc: &'static str,
}

macro_rules! result_attrs {
    ($list:ident { $( $(#[doc = $doc:literal])+ $konst:ident = $name:literal; )+ }) => {
        $(
            #[doc = concat!("Root attribute `", $name, "`:", $($doc),+)]
            pub const $konst: ResultAttr = ResultAttr { name: $name, doc: concat!($($doc),+) };
        )+
        /// Every attribute the run sets as it goes.
        pub const $list: &[ResultAttr] = &[$($konst),+];
    };
}

result_attrs! {
    RESULT_ATTRS {
        /// `running`, then `completed`, `interrupted` (stopped by a signal; resumable), `diverged` (a non-finite loss or parameter, or a loss a million times that of a uniform guess, stopped it) or, if the job died, still `running`.
        STATUS = "status";
        /// Steps whose rows are in the file.
        STEPS_COMPLETED = "steps_completed";
        /// The step a resumed run continued after.
        RESUMED_AT_STEP = "resumed_at_step";
        /// Test accuracy of the averaged model at the end.
        FINAL_TEST_ACCURACY = "final_test_accuracy";
        /// Test loss of the averaged model at the end.
        FINAL_TEST_LOSS = "final_test_loss";
        /// Consensus distance at the end.
        FINAL_CONSENSUS_DISTANCE = "final_consensus_distance";
        /// Seconds of training.
        WALL_TIME_S = "wall_time_s";
        /// The largest peak resident memory (`VmHWM`) of any rank, in bytes.
        PEAK_RSS_BYTES_MAX = "peak_rss_bytes_max";
        /// Where the final averaged model was written (`--save-model`).
        SAVED_MODEL = "saved_model";
    }
}

/// Values of [`STATUS`].
pub const RUNNING: &str = "running";
pub const COMPLETED: &str = "completed";
pub const INTERRUPTED: &str = "interrupted";
pub const DIVERGED: &str = "diverged";

/// The reference of the root attributes in Markdown (part of docs/metrics.md).
pub fn markdown() -> String {
    use std::fmt::Write as _;
    let mut s = String::from(
        "## Root attributes\n\n\
         Attributes marked *fingerprint* must be equal for `--resume` to accept a checkpoint.\n\
         Numbers are stored as i64 or f64, text as UTF-8 strings; an attribute that does not\n\
         apply to a run (e.g. `ge_p` without Gilbert–Elliott) is absent.\n\n\
         | attribute | fingerprint | meaning |\n|---|---|---|\n",
    );
    for a in RUN_ATTRS {
        let fp = if a.fingerprint { "yes" } else { "" };
        let _ = writeln!(s, "| `{}` | {fp} | {} |", a.name, a.doc.trim());
    }
    s.push_str("\nSet as the run goes:\n\n| attribute | meaning |\n|---|---|\n");
    for a in RESULT_ATTRS {
        let _ = writeln!(s, "| `{}` | {} |", a.name, a.doc.trim());
    }
    s
}
