//! One `run` per subcommand of the `rps` binary, the logger, and the one error printer.
//! `main.rs` only parses and dispatches. Errors are printed with their whole context
//! chain (`{:#}`), tagged with the rank under MPI; under mpirun exactly one rank speaks
//! and every rank exits non-zero.
//!
//! Exit status: 0 on success, 2 for invalid flags, 75 (EX_TEMPFAIL) when told to stop
//! by SIGTERM, SIGINT or SIGUSR1 (after a clean stop: metrics closed, checkpoint
//! written if `--checkpoint-dir` was given), 1 for any other failure.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Result;

use crate::cli::{
    BenchExchangeFlags, BenchFlags, ConvertFlags, DatasetFormat, DigestFlags, PlotFlags,
    ProvenanceFlags, ReportFlags, SweepFlags, TrainFlags,
};
use crate::comm::mpi::MpiTransport;
use crate::comm::udp::UdpTransport;
use crate::comm::{agree, handshake, Intent, Refusal, Transport};
use crate::config::{TrainConfig, TransportKind};
use crate::train::{threads::train_threads, train as train_on, Failure, Summary};

/// Exit status of invalid flags or configuration.
pub const EXIT_USAGE: u8 = 2;
/// Exit status of a run stopped by a signal (EX_TEMPFAIL: try again, with --resume).
pub const EXIT_STOPPED: u8 = 75;

/// The one error printer: `error: ` (or `error [rank R]: `) and the whole context chain.
pub fn print_error(rank: Option<usize>, e: &dyn std::fmt::Display) {
    match rank {
        Some(r) => eprintln!("error [rank {r}]: {e:#}"),
        None => eprintln!("error: {e:#}"),
    }
    let _ = std::io::stderr().flush();
}

/// Prints a message that stops a job launched by mpirun: one rank speaks, every rank
/// then meets the others before exiting, so the message is out before mpirun reacts to
/// a non-zero exit status by killing the job. Outside mpirun, just prints it. `failed`:
/// this rank's command line is invalid (else it only prints help or a version). Under
/// mpirun the ranks first hold the [`handshake`] that every MPI command starts with, so
/// ranks that run a command learn of the failure instead of waiting for this one.
pub fn stop_together_if_launched(failed: bool, speak: impl FnOnce()) {
    if launcher_rank().is_some() {
        if let Some(t) = MpiTransport::init() {
            let intent = match failed {
                true => Intent::Failed,
                false => Intent::Run {
                    command: "help",
                    args: None,
                },
            };
            match handshake(&t, intent) {
                Ok(()) => stop_together(&t, t.rank() == 0, speak),
                // This rank's own message explains it, if this rank is the one to speak.
                Err(Refusal {
                    speaker,
                    message: None,
                }) => stop_together(&t, speaker == t.rank(), speak),
                Err(r) => refuse(&t, &r),
            }
            return;
        }
    }
    speak();
}

/// The [`handshake`] every MPI command starts with; on refusal one rank says why and
/// every rank returns the usage exit status.
fn launch<T: Transport + ?Sized>(t: &T, command: &str, args: Option<&str>) -> Result<(), ExitCode> {
    handshake(t, Intent::Run { command, args }).map_err(|r| {
        refuse(t, &r);
        ExitCode::from(EXIT_USAGE)
    })
}

/// Stops a refused launch together: the speaker prints the refusal's message.
fn refuse<T: Transport + ?Sized>(t: &T, r: &Refusal) {
    stop_together(t, r.speaker == t.rank(), || {
        if let Some(m) = &r.message {
            print_error(None, m);
        }
    });
}

fn stop_together<T: Transport + ?Sized>(t: &T, speaker: bool, speak: impl FnOnce()) {
    if speaker {
        speak();
        let _ = std::io::stderr().flush();
    }
    t.barrier();
    // mpirun drains the output of a rank that exits, but may tear the job down before it
    // has read the output of others: let the speaker be the first to exit.
    if !speaker {
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// The rank the launcher assigned, read before MPI starts.
pub fn launcher_rank() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_RANK",
        "PMI_RANK",
        "PMIX_RANK",
        "SLURM_PROCID",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// Logs go to stderr, prefixed with the rank (the MPI rank, or the thread's with
/// `--local-ranks`); rank 0 logs `info` by default, the others only warnings.
/// `RUST_LOG` overrides both.
pub fn init_logger(rank: Option<usize>) {
    let rust_log = std::env::var_os("RUST_LOG").is_some();
    let logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
            .format(move |buf, record| {
                let tag = rank
                    .or_else(thread_rank)
                    .map(|r| format!("[rank {r}] "))
                    .unwrap_or_default();
                writeln!(
                    buf,
                    "{} {}{:<5} {}",
                    buf.timestamp_seconds(),
                    tag,
                    record.level(),
                    record.args()
                )
            })
            .build();
    let max = logger.filter();
    let quiet_others = !rust_log;
    if log::set_boxed_logger(Box::new(RankLogger {
        inner: logger,
        rank,
        quiet_others,
    }))
    .is_ok()
    {
        log::set_max_level(max);
    }
}

/// Keeps ranks other than 0 to warnings unless `RUST_LOG` says otherwise.
struct RankLogger {
    inner: env_logger::Logger,
    rank: Option<usize>,
    quiet_others: bool,
}

impl log::Log for RankLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        self.inner.enabled(m)
    }

    fn log(&self, record: &log::Record) {
        let rank = self.rank.or_else(thread_rank).unwrap_or(0);
        if self.quiet_others && rank != 0 && record.level() > log::Level::Warn {
            return;
        }
        self.inner.log(record);
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// The rank of an in-process rank's thread (named `rank N`, or `rank N watchdog`).
fn thread_rank() -> Option<usize> {
    let thread = std::thread::current();
    let name = thread.name()?.strip_prefix("rank ")?;
    name.split(' ').next()?.parse().ok()
}

/// SIGTERM (Slurm's warning before the time limit, `scancel`), SIGINT (Ctrl-C) and
/// SIGUSR1 (which `mpirun` forwards to every rank) raise `stop`; training then stops
/// cleanly at the next step boundary. A second SIGTERM or SIGINT kills at once.
///
/// The signals are also unblocked: the mask is inherited through exec, and a launcher
/// that started rps with them blocked would make a stop wait forever (one that arrived
/// before is then delivered at once, and stops the run at its first step).
fn stop_on_signals(stop: &Arc<AtomicBool>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    use signal_hook::flag;
    for sig in [SIGTERM, SIGINT] {
        // Order matters: the shutdown hook sees the flag still unset on the first signal.
        flag::register_conditional_shutdown(sig, 1, Arc::clone(stop))?;
        flag::register(sig, Arc::clone(stop))?;
    }
    flag::register(SIGUSR1, Arc::clone(stop))?;
    // SAFETY: plain calls on a signal set owned by this frame; the handlers are in place.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [SIGTERM, SIGINT, SIGUSR1] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut())
    };
    match rc {
        0 => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

/// `rps train`: under mpirun (every rank runs this), or on `--local-ranks N` threads.
pub fn train(flags: TrainFlags) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    // First of all: MPI takes a quarter of a second to start, and a stop signal (mpirun
    // forwards SIGUSR1 at once) must find the handlers in place, not kill the rank.
    let handlers = stop_on_signals(&stop);
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    if let Some(n) = flags.local_ranks {
        return train_local(&flags, n as usize, command_line, &stop, handlers);
    }
    let Some(mpi) = MpiTransport::init() else {
        print_error(None, &"MPI was already initialised");
        return ExitCode::FAILURE;
    };
    let rank = mpi.rank();
    init_logger(Some(rank));
    if let Err(e) = handlers {
        log::warn!("cannot install signal handlers, SIGTERM will kill the job at once: {e}");
    }
    // The flags are compared below, field by field, with a clearer message.
    if let Err(code) = launch(&mpi, "train", None) {
        return code;
    }
    // Every rank validates its flags; all learn whether any failed (ranks may have been
    // started with different flags), and the lowest failing rank says why.
    let built = crate::cli::validate::train_config(&flags, mpi.size(), command_line)
        .map_err(anyhow::Error::from)
        .and_then(|cfg| crate::train::check_outputs(&cfg, rank == 0).map(|()| cfg));
    let cfg = match agree(&mpi, built) {
        Ok(cfg) => cfg,
        Err(d) => {
            stop_together(&mpi, d.rank == rank, || print_error(None, &d.message));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if rank == 0 {
        warn_ignored(&flags);
    }
    let result = match cfg.transport {
        TransportKind::Mpi => train_on(&mpi, &cfg, &stop),
        TransportKind::Udp(opts) => match UdpTransport::connect(&mpi, &opts) {
            Ok(udp) => {
                log::info!("rank {rank}: RPS exchange over UDP on {}", udp.local_addr());
                train_on(&udp, &cfg, &stop)
            }
            Err(d) => Err(Failure::Agreed(d)),
        },
    };
    if let Err(Failure::Local(e)) = &result {
        print_error(Some(rank), e);
        mpi.abort(1)
    }
    let speaker = match &result {
        Ok(_) if rank != 0 => return ExitCode::SUCCESS,
        Ok(_) => return conclude(&cfg, result),
        Err(Failure::Agreed(d)) => d.rank == rank,
        Err(_) => rank == 0,
    };
    // Every rank exits with the status the speaker's conclusion gives.
    let code = match &result {
        Err(Failure::Interrupted { .. }) => ExitCode::from(EXIT_STOPPED),
        _ => ExitCode::FAILURE,
    };
    stop_together(&mpi, speaker, || {
        conclude(&cfg, result);
    });
    code
}

/// `rps train --local-ranks N`: N ranks as threads, no MPI.
fn train_local(
    flags: &TrainFlags,
    n: usize,
    command_line: String,
    stop: &Arc<AtomicBool>,
    handlers: std::io::Result<()>,
) -> ExitCode {
    init_logger(None);
    // Several processes of one launch would be several jobs on the same files (a batch
    // script, where the launcher started just this process, is fine).
    let launched = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"]
        .iter()
        .filter_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
        .max()
        .unwrap_or(1);
    if launched > 1 {
        let why = format!("--local-ranks runs every rank in this one process, but the launcher started {launched}: start it once, without mpirun -n or srun -n");
        stop_together_if_launched(true, || print_error(None, &why));
        return ExitCode::from(EXIT_USAGE);
    }
    if let Err(e) = handlers {
        log::warn!("cannot install signal handlers, SIGTERM will kill the job at once: {e}");
    }
    let cfg = match crate::cli::validate::train_config(flags, n, command_line) {
        Ok(cfg) if matches!(cfg.transport, TransportKind::Udp(_)) => {
            print_error(
                None,
                &"--local-ranks runs on the in-process network; --transport udp needs mpirun",
            );
            return ExitCode::from(EXIT_USAGE);
        }
        Ok(cfg) => cfg,
        Err(e) => {
            print_error(None, &e);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Err(e) = crate::train::check_outputs(&cfg, true) {
        print_error(None, &e);
        return ExitCode::from(EXIT_USAGE);
    }
    warn_ignored(flags);
    conclude(&cfg, train_threads(n, &cfg, stop))
}

/// Rank 0 names the flags this run will not use (their mode is off).
fn warn_ignored(flags: &TrainFlags) {
    for w in crate::cli::validate::ignored_flags(flags) {
        log::warn!("{w}");
    }
}

/// Says how a run ended (the speaking rank only) and gives its exit status.
fn conclude(cfg: &TrainConfig, result: Result<Summary, Failure>) -> ExitCode {
    let metrics = cfg.metrics.display();
    match result {
        Ok(s) => {
            println!(
                "final test accuracy {:.4} (test loss {:.4}, consensus distance {:.3e}) after {} steps in {:.1} s; dropped {} of {} {}; metrics: {metrics}",
                s.test_accuracy, s.test_loss, s.consensus_distance, s.steps, s.wall_s, s.dropped, s.attempted, cfg.drop_unit(),
            );
            ExitCode::SUCCESS
        }
        Err(Failure::Agreed(d)) => {
            match &d.own {
                Some(e) => print_error(Some(d.rank), e),
                None => print_error(Some(d.rank), &d.message),
            }
            ExitCode::FAILURE
        }
        Err(Failure::Local(e)) => {
            print_error(None, &e);
            ExitCode::FAILURE
        }
        Err(e @ Failure::Diverged { .. }) => {
            print_error(
                None,
                &format!("{e}; metrics {metrics} (status \"diverged\"); lower --lr, or check the dataset's mean and std attributes"),
            );
            ExitCode::FAILURE
        }
        Err(Failure::Interrupted { step, checkpoint }) => {
            match checkpoint {
                Some(c) => eprintln!(
                    "stopped by a signal after step {step}; checkpoint {}; metrics {metrics} (status \"interrupted\"); continue with the same command plus --resume {}",
                    c.display(),
                    c.parent().map(|p| p.display().to_string()).unwrap_or_default()
                ),
                None => eprintln!("stopped by a signal after step {step}; metrics {metrics} (status \"interrupted\"); no checkpoint (no --checkpoint-dir)"),
            }
            ExitCode::from(EXIT_STOPPED)
        }
    }
}

/// `rps convert`: one process, no MPI. An --output that is an input is a usage error.
pub fn convert(flags: ConvertFlags) -> Result<ExitCode> {
    let format = flags.format;
    let opts = flags.into();
    let converted = match format {
        DatasetFormat::FashionMnist => crate::data::convert::fashion_mnist(&opts),
        DatasetFormat::Cifar10 => crate::data::cifar::cifar10(&opts),
    };
    let summary = match converted {
        Err(e) if e.is::<crate::data::convert::OutputIsInput>() => {
            print_error(None, &e);
            return Ok(ExitCode::from(EXIT_USAGE));
        }
        other => other?,
    };
    println!(
        "wrote {} ({} training and {} test samples)",
        opts.output.display(),
        summary.train,
        summary.test
    );
    Ok(ExitCode::SUCCESS)
}

/// `rps bench`: one process, one thread, no MPI.
pub fn bench(flags: BenchFlags) -> Result<ExitCode> {
    let opts = match crate::bench::BenchOptions::try_from(flags) {
        Ok(o) => o,
        Err(e) => {
            print_error(None, &e);
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    crate::bench::run(&opts)?;
    Ok(ExitCode::SUCCESS)
}

/// `rps bench-exchange`: under mpirun, every rank runs this. Invalid options stop every
/// rank with one message (exit 2); rank 0 prints the report.
pub fn bench_exchange(flags: BenchExchangeFlags) -> ExitCode {
    let Some(mpi) = MpiTransport::init() else {
        print_error(None, &"MPI was already initialised");
        return ExitCode::FAILURE;
    };
    let rank = mpi.rank();
    init_logger(Some(rank));
    // Every rank's flags must be alike: ranks timing different sizes or counts of
    // repeats would meet in mismatched messages.
    let args = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    if let Err(code) = launch(&mpi, "bench-exchange", Some(&args)) {
        return code;
    }
    let opts = crate::bench::exchange::Options::from(flags);
    let mut plan = match agree(&mpi, opts.plan(mpi.size(), rank, mpi.ranks_on_host())) {
        Ok(plan) => plan,
        Err(d) => {
            stop_together(&mpi, d.rank == rank, || print_error(None, &d.message));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match crate::bench::exchange::run(&mpi, &mut plan) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            // A rank failing alone would leave the others in the next collective.
            print_error(Some(rank), &e);
            mpi.abort(1)
        }
    }
}

/// `rps sweep`: a launcher, no MPI in this process. A job file that `rps train` would
/// refuse is a usage error, found before any run starts.
pub fn sweep(flags: SweepFlags) -> Result<ExitCode> {
    let done = crate::sweep::run(&crate::sweep::SweepOptions {
        job: flags.job,
        list: flags.list,
        index: flags.index,
        rerun: flags.rerun,
        mpirun: flags.mpirun,
    });
    match done {
        Err(e) if e.is::<crate::sweep::BadJob>() => {
            print_error(None, &e);
            Ok(ExitCode::from(EXIT_USAGE))
        }
        Ok(crate::sweep::Ended::Stopped(why)) => {
            eprintln!("{why}");
            Ok(ExitCode::from(EXIT_STOPPED))
        }
        other => other.map(|_| ExitCode::SUCCESS),
    }
}

/// A file named twice (however spelled) would count twice: as two seeds of its
/// configuration in a report, two curves in a figure. A usage error.
fn refuse_repeats(files: &[PathBuf]) -> Option<ExitCode> {
    let (i, j) = crate::files::first_repeat(files)?;
    print_error(
        None,
        &format!(
            "{} is {} again: each file counts once (give it once)",
            files[j].display(),
            files[i].display()
        ),
    );
    Some(ExitCode::from(EXIT_USAGE))
}

/// `rps report`: the Markdown table on stdout.
pub fn report(flags: ReportFlags) -> Result<ExitCode> {
    use crate::results::Kind;
    let files = &flags.input.files;
    if let Some(code) = refuse_repeats(files) {
        return Ok(code);
    }
    let text = match crate::results::kind(files, flags.input.testbed)? {
        Kind::TestbedIndex => crate::testbed::markdown(&crate::testbed::read_index(
            crate::results::testbed_index(files)?,
        )?),
        Kind::Netsim => crate::netsim::markdown(&crate::netsim::Results::read(files)?),
        Kind::BenchExchange => {
            crate::bench::exchange::csv::markdown(&crate::bench::exchange::csv::read(files)?)
        }
        Kind::Metrics if flags.input.claim => {
            let target = flags.target_accuracy;
            crate::report::claim::markdown(&claim_runs(files, target)?, target)
        }
        Kind::Metrics => crate::report::markdown(&crate::report::summarize(files)?),
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// `rps plot`: figures into --output-dir, their paths on stdout.
pub fn plot(flags: PlotFlags) -> Result<ExitCode> {
    use crate::results::Kind;
    if let Some(code) = refuse_repeats(&flags.input.files) {
        return Ok(code);
    }
    let dir = &flags.output_dir;
    let paths = match crate::results::kind(&flags.input.files, flags.input.testbed)? {
        Kind::TestbedIndex => {
            let index = crate::results::testbed_index(&flags.input.files)?;
            crate::testbed::plot(&crate::testbed::read_index(index)?, dir)?
        }
        Kind::Netsim => crate::plot::netsim::plot(&flags.input.files, dir)?,
        Kind::BenchExchange => crate::bench::exchange::plot::plot(&flags.input.files, dir)?,
        Kind::Metrics if flags.input.claim => {
            crate::plot::claim::plot(&claim_runs(&flags.input.files, None)?, dir)?
        }
        Kind::Metrics => crate::plot::plot(&flags.into())?,
    };
    for p in paths {
        println!("wrote {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The metrics files of `--claim`, each read with its arm (directory).
fn claim_runs(
    files: &[PathBuf],
    target: Option<f64>,
) -> Result<Vec<crate::report::claim::ClaimRun>> {
    if files.is_empty() {
        return Err(crate::report::ReportError::NoFiles.into());
    }
    files
        .iter()
        .map(|p| Ok(crate::report::claim::ClaimRun::read(p, target)?))
        .collect()
}

/// `rps digest`: per file, one line per dataset (`HEX  NAME  N values`) and an `all` line.
pub fn digest(flags: DigestFlags) -> Result<ExitCode> {
    use crate::metrics::digest;
    for path in &flags.files {
        let all = digest::of_file(path)?;
        println!("{}", path.display());
        if !flags.short {
            for d in &all {
                println!("  {}  {}  {} values", d.hex, d.name, d.values);
            }
        }
        println!("  {}  all", digest::combined(&all));
    }
    Ok(ExitCode::SUCCESS)
}

/// `rps provenance`: the provenance block of a results page, as a Markdown table.
pub fn provenance(flags: ProvenanceFlags) -> Result<ExitCode> {
    use crate::machine::{self, Fingerprint};
    let peak = crate::bench::matmul_peak_gflops(5);
    let f = Fingerprint::read();
    let rows = [
        ("date", f.date.clone()),
        (
            "commit",
            machine::commit().unwrap_or_else(|| "not a git checkout".into()),
        ),
        ("build", format!("rps {}", f.build)),
        ("machine", f.line()),
        (
            "one-core peak",
            format!(
                "{peak:.1} GFLOP/s (rps f32 1024³ product, median of 5, measured with the page)"
            ),
        ),
        ("MPI", machine::mpi_version()),
        ("HDF5", f.hdf5.clone()),
    ];
    println!("| | |\n|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
    if let Some(c) = &flags.command {
        println!("| command | `{c}` |");
    }
    if let Some(c) = &flags.cost {
        println!("| cost | {c} |");
    }
    Ok(ExitCode::SUCCESS)
}
