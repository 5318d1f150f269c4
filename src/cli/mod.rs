//! Command-line interface: the only module that knows clap.
//!
//! Each flag is declared once: its name, help text, default and type. `rps train`'s flags
//! are in [`train`] and become a validated [`crate::config::TrainConfig`] in
//! [`validate`] (flags above configuration: `config` knows nothing of the command line);
//! the tools' flags (`convert`, `bench`, `bench-exchange`) and their conversions are in
//! [`tools`]; the rest is here. `--help`, job-file keys and the generated reference
//! (docs/cli.md, [`markdown`]) all come from these declarations.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub mod tools;
pub mod train;
pub mod validate;

pub use tools::{BenchExchangeFlags, BenchFlags, ConvertFlags, DatasetFormat, ExchangeModeFlag};
pub use train::{DetectFlag, DropModelFlag, LrScheduleFlag, ModelFlag, TrainFlags, TransportFlag};

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
    /// times and learning-traffic loss instead; given `rps bench-exchange --csv` files,
    /// their rows (median time per operation, mode, size and drop rate).
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

/// The result files of `rps report` and `rps plot`, and what to make of them.
#[derive(Debug, Args)]
pub struct ResultFiles {
    /// Metrics files written by `rps train --metrics`, netsim results (.csv),
    /// `rps bench-exchange --csv` files, or with --testbed one testbed index file (what
    /// they are is told from the files: docs/operations.md, "Reports and figures").
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// FILE is the index of a testbed measurement (`variant,loss,file` lines, written by
    /// jobs/testbed.sh): step time and accuracy per variant and loss rate (figures
    /// testbed_step_time, testbed_accuracy).
    #[arg(long)]
    pub testbed: bool,
    /// Test the paper's claim on paired runs: each run with drops against its lossless
    /// twin (same configuration and seed, p = 0; runs of one arm share a directory):
    /// Δ ± standard error per cell, and Δ = a + b/n fitted by weighted least squares over
    /// every pair (docs/operations.md, "Testing the claim"; figures claim_loss,
    /// claim_accuracy).
    #[arg(long, conflicts_with = "testbed")]
    pub claim: bool,
}

#[derive(Debug, Args)]
pub struct ReportFlags {
    #[command(flatten)]
    pub input: ResultFiles,
    /// With --claim: also the first evaluated step at which each run's test accuracy
    /// reached A.
    #[arg(long, value_name = "A", requires = "claim", value_parser = parse_fraction)]
    pub target_accuracy: Option<f64>,
}

#[derive(Debug, Args)]
pub struct PlotFlags {
    #[command(flatten)]
    pub input: ResultFiles,
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
            files: f.input.files,
            output_dir: f.output_dir,
            window: f.window as usize,
            max_link_maps: f.link_maps,
        }
    }
}

/// A fraction in [0, 1] (an accuracy).
fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s} is not a fraction in [0, 1]")),
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
         <!-- Generated from src/cli/ by `cargo test` (RPS_UPDATE_DOCS=1 rewrites it); do not edit. -->\n\n",
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
