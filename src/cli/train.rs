//! The flags of `rps train`, declared once: [`TrainFlags`] and the choices it offers.
//! [`super::validate`] checks them and builds the run's configuration.

use std::path::PathBuf;

use clap::builder::PossibleValue;
use clap::{Args, ValueEnum};

use crate::config::Algorithm;
use crate::nn::ModelKind;

impl ValueEnum for Algorithm {
    fn value_variants<'a>() -> &'a [Self] {
        &[Algorithm::Rps, Algorithm::Allreduce]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        let help = match self {
            Algorithm::Rps => "Robust Parameter Server: workers send model blocks to servers, which average what arrives; lost messages are simply missing (the paper's algorithm)",
            Algorithm::Allreduce => "Reliable baseline: model averaging with MPI_Allreduce after every local step",
        };
        Some(PossibleValue::new(self.name()).help(help))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LrScheduleFlag {
    /// --lr throughout.
    Constant,
    /// --lr, times --lr-gamma at each of --lr-milestones.
    Step,
    /// Cosine decay from --lr to 0 over the run.
    Cosine,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DetectFlag {
    /// Receivers compute the drop decisions (the default; reproducible).
    Oracle,
    /// Receivers wait until a deadline.
    Deadline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportFlag {
    /// MPI point-to-point messages (reliable; losses are simulated).
    Mpi,
    /// UDP datagrams (unreliable; losses are real).
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DropModelFlag {
    /// i.i.d. loss (--drop-rate, --drop-up, --drop-down, --link-rates).
    Bernoulli,
    /// Bursty loss: a good/bad Markov chain per link (--ge-p, --ge-r, --ge-bad-loss,
    /// --ge-good-loss).
    GilbertElliott,
}

#[derive(Debug, Args)]
pub struct TrainFlags {
    /// HDF5 dataset file (made by `rps convert`): /train and /test with images and labels.
    #[arg(long, value_name = "FILE")]
    pub dataset: PathBuf,
    /// HDF5 metrics file written by rank 0 (parent directories are created; an existing
    /// file is refused unless --force).
    #[arg(long, value_name = "FILE")]
    pub metrics: PathBuf,
    /// Also write the final averaged model (flat f32 parameters) to this HDF5 file.
    #[arg(long, value_name = "FILE")]
    pub save_model: Option<PathBuf>,
    /// Dedicated mode: the first S ranks are servers, the rest workers; the model is cut
    /// into S blocks, one per server [default: 1 when --colocated is not given].
    #[arg(long, value_name = "S", conflicts_with = "colocated")]
    pub servers: Option<usize>,
    /// Co-located mode (the paper's setting): every rank is a worker and the server of
    /// one block; the block→server assignment is a fresh random permutation each step.
    #[arg(long)]
    pub colocated: bool,
    /// Probability that each worker→server and server→worker message (or packet) is
    /// dropped: i.i.d. Bernoulli, decided from the seed and the message's coordinates.
    /// Sets both --drop-up and --drop-down.
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub drop_rate: f64,
    /// Drop probability of worker→server messages [default: --drop-rate].
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub drop_up: Option<f64>,
    /// Drop probability of server→worker messages [default: --drop-rate].
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub drop_down: Option<f64>,
    /// Drop model.
    #[arg(long, value_enum, default_value_t = DropModelFlag::Bernoulli)]
    pub drop_model: DropModelFlag,
    /// Gilbert–Elliott: probability of moving from the good to the bad state, per packet
    /// slot (netem gemodel's p, as a probability rather than percent).
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.01,
        allow_negative_numbers = true
    )]
    pub ge_p: f64,
    /// Gilbert–Elliott: probability of moving from the bad to the good state (netem's r;
    /// the mean burst is 1/r slots).
    #[arg(
        long,
        value_name = "R",
        default_value_t = 0.3,
        allow_negative_numbers = true
    )]
    pub ge_r: f64,
    /// Gilbert–Elliott: loss probability in the bad state (netem's 1-h).
    #[arg(
        long,
        value_name = "P",
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    pub ge_bad_loss: f64,
    /// Gilbert–Elliott: loss probability in the good state (netem's 1-k).
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub ge_good_loss: f64,
    /// Per-link drop rates from FILE (rules `default P`, `rank R[-R2] P`,
    /// `link SRC DST P`; see docs/formats.md); links it does not name use --drop-up/--drop-down.
    #[arg(long, value_name = "FILE")]
    pub link_rates: Option<PathBuf>,
    /// Cut each block into packets of N bytes, dropped independently; receivers merge
    /// the packets that arrived and keep their own values elsewhere [default: whole
    /// blocks are the unit of loss].
    #[arg(long, value_name = "N")]
    pub packet_bytes: Option<usize>,
    /// Cut each message into chunks of N bytes (at most 8 per message) that travel
    /// pipelined: a server averages one chunk and sends it down while the next comes up.
    /// A speed knob only: the same bits and the same drops for every N; faster for large
    /// blocks within one host, slower over TCP (docs/results/exchange-cost.md). Oracle
    /// detection only [default: one chunk, not pipelined].
    #[arg(long, value_name = "N")]
    pub chunk_bytes: Option<usize>,
    /// Record every drop decision in the metrics file (/trace/dropped).
    #[arg(long)]
    pub record_trace: bool,
    /// Replay the drops recorded (with --record-trace) in an earlier run's metrics file;
    /// the configuration must match the recording run.
    #[arg(long, value_name = "FILE")]
    pub replay_trace: Option<PathBuf>,
    /// How a receiver learns that a message was lost: `oracle` evaluates the drop model
    /// and waits only for what was sent (reproducible bit for bit); `deadline` does not
    /// consult it and treats what has not arrived by --recv-timeout-ms as lost (realistic;
    /// on a loaded machine slow messages count as missed, reported separately).
    #[arg(long, value_enum, default_value_t = DetectFlag::Oracle)]
    pub detect: DetectFlag,
    /// Deadline of each exchange phase with --detect deadline, in milliseconds.
    #[arg(long, value_name = "T", default_value_t = 200)]
    pub recv_timeout_ms: u64,
    /// What carries the RPS exchange: `mpi` (point-to-point MPI, drops decided in
    /// software) or `udp` (one datagram per packet, no retransmission: what a real
    /// network loses is lost; needs --detect deadline; --packet-bytes defaults to the largest that fits --udp-mtu).
    /// MPI always carries launch, evaluation and metrics.
    #[arg(long, value_enum, default_value_t = TransportFlag::Mpi)]
    pub transport: TransportFlag,
    /// With --transport udp: bind each rank's socket to its host's address in this IPv4
    /// network (CIDR, e.g. 10.99.0.0/24) [default: the host's first non-loopback IPv4
    /// address].
    #[arg(long, value_name = "CIDR")]
    pub udp_subnet: Option<crate::comm::udp::Subnet>,
    /// With --transport udp: rank r listens on UDP port PORT + r [default: a free port
    /// the system chooses].
    #[arg(long, value_name = "PORT")]
    pub udp_port: Option<u16>,
    /// With --transport udp: the network's MTU; every datagram fits one IP packet of
    /// this size (9000 on networks with jumbo frames).
    #[arg(long, value_name = "BYTES", default_value_t = crate::comm::udp::DEFAULT_MTU)]
    pub udp_mtu: usize,
    /// With --transport udp: a loss budget for the exchange. Each sender paces each link
    /// and adapts its rate from its receiver's reports so that the loss the job sees
    /// stays near T (e.g. 0.05); docs/concepts.md, "The loss budget", gives the rule.
    /// Losses that do not fall when the rate falls (a bad cable, imposed random loss)
    /// must be below T [default: no budget: no pacing, no reports].
    #[arg(long, value_name = "T")]
    pub loss_target: Option<f64>,
    /// With --loss-target: the highest rate of one link, in bit/s (10G, 800M, 1e9): the
    /// rate a link starts at and probes back up to.
    #[arg(long, value_name = "RATE", value_parser = crate::comm::udp::rate::parse_rate,
          default_value = "10G")]
    pub udp_link_rate: u64,
    /// Training algorithm.
    #[arg(long, value_enum, default_value_t = Algorithm::Rps)]
    pub algorithm: Algorithm,
    /// Number of passes over each worker's shard [default: 1].
    #[arg(long, value_name = "E", conflicts_with = "steps")]
    pub epochs: Option<u64>,
    /// Number of training steps (instead of --epochs).
    #[arg(long, value_name = "N")]
    pub steps: Option<u64>,
    /// Minibatch size per worker.
    #[arg(long, value_name = "B", default_value_t = 32)]
    pub batch_size: usize,
    /// Learning rate of each worker's SGD.
    #[arg(
        long,
        value_name = "LR",
        default_value_t = 0.05,
        allow_negative_numbers = true
    )]
    pub lr: f32,
    /// How the learning rate changes: `constant`, `step` (×--lr-gamma at each of
    /// --lr-milestones) or `cosine` (to 0 at the last step), after --warmup-steps.
    #[arg(long, value_enum, default_value_t = LrScheduleFlag::Constant)]
    pub lr_schedule: LrScheduleFlag,
    /// With --lr-schedule step: where the rate drops, as fractions of the run below 1
    /// (0.5,0.75) or whole step numbers (2000,3000).
    #[arg(long, value_name = "M,M,...", value_delimiter = ',')]
    pub lr_milestones: Vec<f64>,
    /// With --lr-schedule step: the factor at each milestone.
    #[arg(long, value_name = "G", default_value_t = 0.1)]
    pub lr_gamma: f32,
    /// Steps of linear warm-up from --lr/N to --lr before the schedule.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub warmup_steps: u64,
    /// Momentum of each worker's SGD (kept locally per worker, as in the paper).
    #[arg(
        long,
        value_name = "M",
        default_value_t = 0.9,
        allow_negative_numbers = true
    )]
    pub momentum: f32,
    /// L2 weight decay added to the gradient (PyTorch semantics).
    #[arg(
        long,
        value_name = "WD",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub weight_decay: f32,
    /// Deal the training set so that each worker's mix of classes is its own draw from a
    /// symmetric Dirichlet distribution of concentration ALPHA (the balanced split of
    /// Acar et al. 2021: equal shard sizes, reproducible from --seed): 0.1 gives each
    /// worker one or two dominant classes, 100 nearly i.i.d. shards [default: contiguous
    /// equal shards of the file's (shuffled) order]
    #[arg(long, value_name = "ALPHA", allow_negative_numbers = true)]
    pub label_skew: Option<f64>,
    /// Seed of model initialisation, data order, block assignment and drops.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Evaluate the averaged model on the test set every K steps (0: only at the end).
    #[arg(long, value_name = "K", default_value_t = 100)]
    pub eval_every: u64,
    /// Overwrite an existing metrics or model file.
    #[arg(long)]
    pub force: bool,
    /// Write a checkpoint every K steps into --checkpoint-dir (atomically; the newest
    /// two complete checkpoints are kept).
    #[arg(long, value_name = "K")]
    pub checkpoint_every: Option<u64>,
    /// Directory for checkpoints (shared by all ranks). A checkpoint is also written when
    /// the job is told to stop (SIGTERM, SIGINT, SIGUSR1) [default: the --resume DIR].
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue from the newest complete checkpoint in DIR, appending to the same
    /// --metrics file; refused if DIR was written by another configuration.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Take flags from a TOML job file (see jobs/README.md); flags given on the command
    /// line override it.
    #[arg(long, value_name = "FILE")]
    pub job: Option<PathBuf>,
    /// Refuse to start unless the job has exactly N ranks (set by job files' `ranks`).
    #[arg(long, value_name = "N")]
    pub ranks: Option<usize>,
    /// Every K steps, measure what the exchange did to the replicas (/diag: their spread
    /// before it, the error it put into their average, the consensus distance after it,
    /// the training loss of the average on a fixed subset) through reliable collectives
    /// that are not counted as traffic and do not change the run (0: never).
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub diag_every: u64,
    /// Warn when a rank has made no progress (no step, evaluation or checkpoint finished)
    /// for S seconds, saying which rank it waits for (0: never).
    #[arg(long, value_name = "S", default_value_t = 60)]
    pub stall_warn: u64,
    /// End the whole job when a rank has made no progress for S seconds (0: never), so a
    /// frozen or lost rank does not hold the allocation until its time limit.
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub stall_abort: u64,
    /// Run N ranks as threads of this one process over an in-process network, without
    /// mpirun or MPI: the researcher's workbench for many ranks on one machine (same
    /// flags, same metrics file, bit-identical results to `mpirun -n N` with oracle
    /// detection). MPI stays the engine for real clusters; not with --transport udp.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub local_ranks: Option<u64>,
    /// Augment training batches: random 32×32-style crop of the image zero-padded by 4
    /// pixels, and a horizontal flip with probability 1/2, seeded by (seed, worker, step).
    #[arg(long)]
    pub augment: bool,
    /// Network every worker trains (resnet20: the paper's CIFAR model, batch norm
    /// included in the exchanged state).
    #[arg(long, value_enum, default_value_t = ModelFlag::Cnn)]
    pub model: ModelFlag,
    /// The ids of the flags given on the command line or in the job file (not left at
    /// their defaults), filled by [`super::parse`]: a flag given for a mode that is off is
    /// reported even when its value is the default.
    #[arg(skip)]
    pub given: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelFlag {
    /// The reference CNN: two 5×5 convolutions with pooling, two fully connected layers.
    Cnn,
    /// CIFAR ResNet-20 (He et al. 2016): 3 stages of 3 basic blocks, batch norm.
    Resnet20,
    /// A small multilayer perceptron: one hidden layer of 64 ReLU units on the flattened
    /// image; cheap enough for many ranks and long runs (the theory experiments).
    Mlp,
}

impl From<ModelFlag> for ModelKind {
    fn from(f: ModelFlag) -> ModelKind {
        match f {
            ModelFlag::Cnn => ModelKind::Cnn,
            ModelFlag::Resnet20 => ModelKind::ResNet20,
            ModelFlag::Mlp => ModelKind::Mlp,
        }
    }
}
