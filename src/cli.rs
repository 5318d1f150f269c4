//! Command-line interface: the only module that knows clap.
//!
//! Each flag is declared once, here: its name, help text, default and type. The parsed
//! structs go straight to the modules that validate and build from them (`config.rs` for
//! `train`); `--help`, job-file keys and the generated reference (docs/cli.md,
//! [`markdown`]) all come from these declarations.

use std::path::PathBuf;

use clap::builder::PossibleValue;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::bench::BenchOptions;
use crate::config::Algorithm;
use crate::data::convert::ConvertOptions;
use crate::nn::ModelKind;

/// Distributed training over deliberately unreliable networks: the Robust Parameter
/// Server (RPS) algorithm of Yu et al., "Distributed Learning over Unreliable Networks"
/// (ICML 2019), on MPI.
#[derive(Debug, Parser)]
// A flag given twice keeps its last value: job files put their flags first, so the
// command line overrides them.
#[command(
    name = "rps",
    version,
    propagate_version = true,
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model (the reference CNN by default) under mpirun (every rank runs this same command).
    ///
    /// Example: mpirun -n 5 rps train --dataset data/fashion-mnist.h5
    /// --metrics runs/p0.1.h5 --servers 1 --drop-rate 0.1 --epochs 1
    Train(Box<TrainFlags>),
    /// Convert a public dataset into rps's HDF5 layout (no MPI needed).
    Convert(ConvertFlags),
    /// Time the model's training step on one thread, per stage, optionally side by side
    /// with the identical PyTorch model (no MPI needed).
    ///
    /// Example: rps bench --batch-sizes 32,128 --pytorch
    Bench(BenchFlags),
    /// Time one RPS exchange of a synthetic parameter buffer against MPI_Allreduce of the
    /// same buffer, per size, drop rate and mode, under mpirun (every rank runs this same
    /// command).
    ///
    /// Example: mpirun -n 4 rps bench-exchange --sizes 1e5,1e6,1e7 --csv exchange.csv
    ///
    /// Uses the training's own exchange on the MPI transport (no dataset, no model). Each
    /// repeat starts after a barrier and counts as long as its slowest rank took. Prints a
    /// table, `bench-exchange op=... ` lines, and last one `ratio rps/allreduce mode=M
    /// bytes=B n=N: R` line per mode and size (median RPS time at p = 0 over median
    /// all-reduce time).
    BenchExchange(BenchExchangeFlags),
    /// Run every run of a sweep job file with mpirun, one after the other (or just one of
    /// them, for a Slurm job array), skipping runs that already completed.
    ///
    /// Example: rps sweep jobs/sweep-colocated.toml --list
    Sweep(SweepFlags),
    /// Summarize metrics files as a Markdown table, runs differing only by seed grouped
    /// (no MPI needed).
    ///
    /// Example: rps report runs/drop-models/*.h5
    ///
    /// Given netsim results (.csv, from netsim/run.sh), prints their web-flow completion
    /// times and learning-traffic loss instead.
    Report(ReportFlags),
    /// Draw figures (PNG and SVG) of metrics files: training loss, accuracy against loss
    /// rate, consensus distance, per-link drops (no MPI needed).
    ///
    /// Example: rps plot runs/drop-models/*.h5 --output-dir figures
    ///
    /// Given netsim results (.csv, from netsim/run.sh), draws netsim_fct: web-flow
    /// completion times per size class for both policies against load. Given `rps
    /// bench-exchange --csv` files, draws exchange_cost: time against buffer size per mode.
    Plot(PlotFlags),
    /// Print SHA-256 digests of what runs computed: every dataset of a metrics file
    /// except the timings, and the parameters of a model saved by --save-model (no MPI
    /// needed).
    ///
    /// Example: rps digest runs/a.h5 runs/b.h5
    ///
    /// Two runs of the same job give the same digests on any machine and any transport;
    /// the last line of each file, `all`, digests the others.
    Digest(DigestFlags),
    /// Print the provenance block of a results page (Markdown): date, commit, build, CPU
    /// and the flags that choose kernels, the one-core matrix-product peak measured now,
    /// load average, OS, MPI and HDF5 versions, and the command and cost given (no MPI
    /// needed).
    ///
    /// Example: rps provenance --command "jobs/drop-models.sh" --cost "12 min"
    ///
    /// scripts/results.sh writes it at the top of every page it regenerates.
    Provenance(ProvenanceFlags),
}

#[derive(Debug, Args)]
pub struct ProvenanceFlags {
    /// The command that produced the page's numbers.
    #[arg(long, value_name = "TEXT")]
    pub command: Option<String>,
    /// What the command cost (wall time, runs).
    #[arg(long, value_name = "TEXT")]
    pub cost: Option<String>,
}

#[derive(Debug, Args)]
pub struct DigestFlags {
    /// Metrics files written by `rps train --metrics`, or models written by --save-model.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// Print only the `all` line of each file.
    #[arg(long)]
    pub short: bool,
}

#[derive(Debug, Args)]
pub struct SweepFlags {
    /// Job file with a `[sweep]` table (see jobs/README.md).
    #[arg(value_name = "FILE")]
    pub job: PathBuf,
    /// Print the runs (index, ranks, metrics file, sweep values) and exit.
    #[arg(long)]
    pub list: bool,
    /// Run only the run with this index (e.g. $SLURM_ARRAY_TASK_ID).
    #[arg(long, value_name = "I")]
    pub index: Option<usize>,
    /// Rerun runs whose metrics file says completed.
    #[arg(long)]
    pub rerun: bool,
    /// The launcher [default: mpirun].
    #[arg(long, value_name = "CMD", default_value = "mpirun")]
    pub mpirun: String,
}

/// Splices the flags of `rps train --job FILE` into the arguments, right after `train`
/// and before the user's own flags, which therefore override them.
///
/// # Errors
/// An unreadable or invalid job file, a key that is not a flag of `rps train`, or a
/// sweep (which `rps sweep` runs).
pub fn expand_job_file(args: Vec<std::ffi::OsString>) -> Result<Vec<std::ffi::OsString>, String> {
    let Some(train_at) = args.iter().position(|a| a == "train") else {
        return Ok(args);
    };
    let mut path = None;
    for (i, a) in args.iter().enumerate().skip(train_at + 1) {
        let a = a.to_string_lossy();
        if a == "--job" {
            path = args.get(i + 1).map(PathBuf::from);
        } else if let Some(p) = a.strip_prefix("--job=") {
            path = Some(PathBuf::from(p));
        }
    }
    let Some(path) = path else {
        return Ok(args);
    };
    let job = crate::job::JobFile::load(&path).map_err(|e| e.to_string())?;
    check_job_keys(&job)?;
    let mut runs = job.runs().map_err(|e| e.to_string())?;
    if runs.len() != 1 {
        return Err(format!(
            "job file {}: a sweep of {} runs; run it with `rps sweep {}`",
            path.display(),
            runs.len(),
            path.display()
        ));
    }
    let run = runs.remove(0);
    let mut out: Vec<std::ffi::OsString> = args[..=train_at].to_vec();
    out.extend(run.args.into_iter().map(Into::into));
    if let Some(r) = run.ranks {
        out.push("--ranks".into());
        out.push(r.to_string().into());
    }
    out.extend(args[train_at + 1..].iter().cloned());
    Ok(out)
}

/// Every key of a job file must be a flag of `rps train`, and every value (each sweep
/// value too) one that flag accepts, so a bad value is reported with its file and key
/// before any run starts.
///
/// # Errors
/// The first unknown key or invalid value, named with the file.
pub fn check_job_keys(job: &crate::job::JobFile) -> Result<(), String> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let train = cmd.find_subcommand("train").ok_or("no train subcommand")?;
    let file = job.path.display();
    for key in job.keys() {
        if key == "job" || !train.get_arguments().any(|a| a.get_id() == key) {
            return Err(format!(
                "job file {file}: {key:?} is not a flag of `rps train` (keys are flag names with _ for -, e.g. drop_rate)"
            ));
        }
    }
    for (key, value) in job.values() {
        let Some(arg) = train.get_arguments().find(|a| a.get_id() == key) else {
            continue;
        };
        let flag = format!("--{}", arg.get_long().unwrap_or(key));
        let switch = !arg.get_action().takes_values();
        let bad = |why: String| Err(format!("job file {file}: {key} = {value}: {why}"));
        match (switch, value) {
            (true, toml::Value::Boolean(_)) => {}
            (true, _) => return bad("a switch takes true or false".into()),
            (false, toml::Value::Boolean(_)) => {
                return bad(format!("{flag} takes a value, not true or false"))
            }
            (false, v) => {
                let v = crate::job::scalar(&job.path, key, v).map_err(|e| e.to_string())?;
                // `--flag=value`, so that a negative number is read as a value.
                let pair = format!("{flag}={v}");
                let args = ["--dataset", "d", "--metrics", "m", &pair];
                if let Err(e) = parse_train(args) {
                    let why = e.to_string();
                    let why = why.lines().next().unwrap_or_default();
                    return bad(why.trim_start_matches("error: ").to_string());
                }
            }
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct ReportFlags {
    /// Metrics files written by `rps train --metrics`, netsim results (.csv), or with
    /// --testbed one testbed index file.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// FILE is the index of a testbed measurement (`variant,loss,file` lines, written by
    /// jobs/testbed.sh): print step time and accuracy per variant and loss rate.
    #[arg(long)]
    pub testbed: bool,
    /// Test the paper's claim on paired runs: each run with drops against its lossless
    /// twin (same configuration and seed, p = 0; runs of one arm share a directory):
    /// Δ ± standard error per cell, and Δ = a + b/n fitted by weighted least squares over
    /// every pair (docs/operations.md, "Testing the claim").
    #[arg(long, conflicts_with = "testbed")]
    pub claim: bool,
    /// With --claim: also the first evaluated step at which each run's test accuracy
    /// reached A.
    #[arg(long, value_name = "A", requires = "claim", value_parser = parse_fraction)]
    pub target_accuracy: Option<f64>,
}

#[derive(Debug, Args)]
pub struct PlotFlags {
    /// Metrics files written by `rps train --metrics`, netsim results (.csv),
    /// `rps bench-exchange --csv` files, or with --testbed one testbed index file.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// FILE is the index of a testbed measurement (jobs/testbed.sh): draw step time and
    /// accuracy against the loss rate (testbed_step_time, testbed_accuracy).
    #[arg(long)]
    pub testbed: bool,
    /// Draw the paired differences of `rps report --claim` against n, ± standard error,
    /// with the fitted a + b/n (claim_loss, claim_accuracy).
    #[arg(long, conflicts_with = "testbed")]
    pub claim: bool,
    /// Directory for the figures (created if needed; existing figures are replaced).
    #[arg(long, value_name = "DIR")]
    pub output_dir: PathBuf,
    /// Moving-average window of the training loss, in steps.
    #[arg(long, value_name = "STEPS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub window: u64,
    /// Draw per-link heat maps for the first N files.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub link_maps: usize,
}

impl From<PlotFlags> for crate::plot::PlotOptions {
    fn from(f: PlotFlags) -> Self {
        crate::plot::PlotOptions {
            files: f.files,
            output_dir: f.output_dir,
            window: f.window as usize,
            max_link_maps: f.link_maps,
        }
    }
}

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
    /// their defaults), filled by [`parse`]: a flag given for a mode that is off is
    /// reported even when its value is the default.
    #[arg(skip)]
    pub given: Vec<String>,
}

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
    #[arg(
        long,
        value_name = "B,B,...",
        value_delimiter = ',',
        default_value = "1e5,1e6,1e7,1e8",
        value_parser = parse_bytes
    )]
    pub sizes: Vec<u64>,
    /// i.i.d. Bernoulli drop rates of the RPS exchange, comma-separated, each in [0, 1);
    /// must include 0.
    #[arg(
        long,
        value_name = "P,P,...",
        value_delimiter = ',',
        default_value = "0,0.1",
        allow_negative_numbers = true
    )]
    pub drop_rates: Vec<f64>,
    /// Role splits to time, comma-separated.
    #[arg(
        long,
        value_name = "M,M,...",
        value_enum,
        value_delimiter = ',',
        default_value = "dedicated,colocated"
    )]
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
    /// Also write every measured row to this CSV file (rank 0; parent directories are
    /// created, an existing file is replaced); `rps plot` draws it.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
}

/// A byte count written as an integer (`1000000`) or in 1e6 style.
/// A fraction in [0, 1] (an accuracy).
fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s} is not a fraction in [0, 1]")),
    }
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    if let Ok(b) = s.parse::<u64>() {
        return Ok(b);
    }
    match s.parse::<f64>() {
        Ok(x) if x >= 0.0 && x.fract() == 0.0 && x <= u64::MAX as f64 => Ok(x as u64),
        _ => Err(format!("{s:?} is not a whole number of bytes")),
    }
}

impl From<BenchExchangeFlags> for crate::bench_exchange::Options {
    fn from(f: BenchExchangeFlags) -> Self {
        use crate::bench_exchange::Roles;
        crate::bench_exchange::Options {
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

/// Parses a whole command line (`args[0]` is the program); `rps train` also records
/// which of its flags were given ([`TrainFlags::given`]).
///
/// # Errors
/// clap's error for an unknown flag or a value that does not parse (help and version
/// are errors too, as with [`Parser::try_parse_from`]).
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    let mut matches = Cli::command().try_get_matches_from(args)?;
    let given: Vec<String> = match matches.subcommand() {
        Some(("train", sub)) => sub
            .ids()
            .filter(|id| {
                sub.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine)
            })
            .map(|id| id.as_str().to_string())
            .collect(),
        _ => Vec::new(),
    };
    let mut cli =
        Cli::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut Cli::command()))?;
    if let Command::Train(flags) = &mut cli.command {
        flags.given = given;
    }
    Ok(cli)
}

/// Parses the flags of `rps train` alone (no job file), as `rps train ARGS...` would.
///
/// # Errors
/// clap's error for an unknown flag or a value that does not parse.
pub fn parse_train<I, T>(args: I) -> Result<TrainFlags, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let argv = ["rps".into(), "train".into()]
        .into_iter()
        .chain(args.into_iter().map(Into::into));
    match parse(argv)?.command {
        Command::Train(flags) => Ok(*flags),
        _ => unreachable!("parsed as train"),
    }
}

/// The command-line reference in Markdown, generated from the clap definitions
/// (docs/cli.md is this text; a test keeps it current).
pub fn markdown() -> String {
    use clap::CommandFactory;
    use std::fmt::Write as _;
    let root = Cli::command();
    let mut s = String::from(
        "# Command-line reference\n\n\
         <!-- Generated from src/cli.rs by `cargo test` (RPS_UPDATE_DOCS=1 rewrites it); do not edit. -->\n\n",
    );
    if let Some(about) = root.get_about() {
        let _ = writeln!(s, "{about}\n");
    }
    let _ = writeln!(s, "Commands:\n");
    for sub in root.get_subcommands() {
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        let _ = writeln!(s, "- [`rps {0}`](#rps-{0}): {about}", sub.get_name());
    }
    for sub in root.get_subcommands() {
        let _ = writeln!(s, "\n## rps {}\n", sub.get_name());
        let about = sub
            .get_long_about()
            .or(sub.get_about())
            .map(|a| a.to_string())
            .unwrap_or_default();
        let _ = writeln!(s, "{about}\n");
        let _ = writeln!(s, "| argument | meaning |\n|---|---|");
        for arg in sub.get_arguments() {
            if let Some(row) = argument_row(arg) {
                s.push_str(&row);
            }
        }
    }
    s
}

/// One row of the reference's argument table: name, help, choices and default.
fn argument_row(arg: &clap::Arg) -> Option<String> {
    use std::fmt::Write as _;
    let id = arg.get_id().as_str();
    if id == "help" || id == "version" {
        return None;
    }
    let value = arg
        .get_value_names()
        .map(|v| {
            v.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let name = match arg.get_long() {
        Some(long) if arg.get_action().takes_values() => format!("`--{long} {value}`"),
        Some(long) => format!("`--{long}`"),
        None => format!("`{value}`"),
    };
    let mut help = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default()
        .replace("\n\n", " ")
        .replace('\n', " ")
        .replace('|', "\\|");
    if !help.is_empty() && !help.trim_end().ends_with(['.', ')', ']']) {
        help.push('.');
    }
    let choices: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|_| arg.get_action().takes_values())
        .map(|v| match v.get_help() {
            Some(h) => format!("`{}` ({h})", v.get_name()),
            None => format!("`{}`", v.get_name()),
        })
        .collect();
    if !choices.is_empty()
        && !value.is_empty()
        && arg.get_value_parser().possible_values().is_some()
    {
        let _ = write!(help, " Values: {}.", choices.join("; "));
    }
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|d| d.to_string_lossy().into_owned())
        .collect();
    if !defaults.is_empty()
        && !defaults
            .iter()
            .any(|d| d.contains(env!("CARGO_MANIFEST_DIR")))
    {
        let _ = write!(help, " Default: `{}`.", defaults.join(","));
    }
    Some(format!("| {name} | {} |\n", help.trim()))
}
