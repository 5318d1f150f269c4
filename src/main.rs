//! The `rps` binary: parses the command line, starts MPI for `train`, reports errors.
//!
//! Exit status: 0 on success, 2 for invalid flags, 75 (EX_TEMPFAIL) when told to stop
//! by SIGTERM, SIGINT or SIGUSR1 (after a clean stop: metrics closed, checkpoint
//! written if `--checkpoint-dir` was given), 1 for any other failure. Every rank of a
//! failed job exits non-zero; only one rank prints the error.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use rps::cli::{
    BenchFlags, Cli, Command, ConvertFlags, DatasetFormat, PlotFlags, ReportFlags, SweepFlags,
    TrainFlags,
};
use rps::comm::mpi::MpiTransport;
use rps::comm::udp::UdpTransport;
use rps::comm::Transport;
use rps::config::TrainConfig;
use rps::config::TransportKind;
use rps::train::{train, Failure};

fn main() -> ExitCode {
    let args = match rps::cli::expand_job_file(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            // Every rank reads the same file: one speaks (see the clap errors below).
            if launcher_rank().is_some() {
                if let Some(t) = MpiTransport::init() {
                    stop_together(&t, t.rank() == 0, || eprintln!("error: {e}"));
                    return ExitCode::from(2);
                }
            }
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
            // Under mpirun every rank parses the same flags: one speaks, and all wait
            // for it before exiting, since mpirun tears the job down (and may drop the
            // speaker's output) as soon as any rank exits non-zero.
            if launcher_rank().is_some() {
                if let Some(t) = MpiTransport::init() {
                    stop_together(&t, t.rank() == 0, || print_clap(&e));
                    return code;
                }
            }
            print_clap(&e);
            return code;
        }
    };
    match cli.command {
        Command::Convert(flags) => convert(flags),
        Command::Train(flags) => train_command(*flags),
        Command::Bench(flags) => bench(flags),
        Command::Sweep(flags) => sweep(flags),
        Command::Report(flags) => report(flags),
        Command::Plot(flags) => plot(flags),
    }
}

/// `rps report`: the Markdown table on stdout.
fn report(flags: ReportFlags) -> ExitCode {
    if flags.testbed {
        return match testbed_index(&flags.files).and_then(rps::testbed::read_index) {
            Ok(runs) => {
                print!("{}", rps::testbed::markdown(&runs));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if flags.files.iter().any(|p| rps::netsim::is_results_file(p)) {
        return netsim_report(&flags.files);
    }
    match rps::report::summarize(&flags.files) {
        Ok(runs) => {
            print!("{}", rps::report::markdown(&runs));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `rps report RESULTS.csv...`: the netsim results as a Markdown table.
fn netsim_report(files: &[std::path::PathBuf]) -> ExitCode {
    if !files.iter().all(|p| rps::netsim::is_results_file(p)) {
        eprintln!("error: give either metrics files (.h5) or netsim results (.csv), not both");
        return ExitCode::FAILURE;
    }
    match rps::netsim::Results::read(files) {
        Ok(r) => {
            print!("{}", rps::netsim::markdown(&r));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `rps plot`: figures into --output-dir, their paths on stdout.
fn plot(flags: PlotFlags) -> ExitCode {
    init_logger(None);
    let result = if flags.testbed {
        testbed_index(&flags.files)
            .and_then(rps::testbed::read_index)
            .and_then(|runs| rps::testbed::plot(&runs, &flags.output_dir))
    } else {
        rps::plot::plot(&flags.into())
    };
    match result {
        Ok(paths) => {
            for p in paths {
                println!("wrote {}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The one index file that --testbed takes.
fn testbed_index(files: &[std::path::PathBuf]) -> anyhow::Result<&std::path::Path> {
    match files {
        [one] => Ok(one),
        _ => anyhow::bail!(
            "--testbed takes one index file (jobs/testbed.sh writes OUTDIR/index.csv), got {}",
            files.len()
        ),
    }
}

/// `rps sweep`: a launcher, no MPI in this process.
fn sweep(flags: SweepFlags) -> ExitCode {
    init_logger(None);
    let opts = rps::sweep::SweepOptions {
        job: flags.job,
        list: flags.list,
        index: flags.index,
        rerun: flags.rerun,
        mpirun: flags.mpirun,
    };
    match rps::sweep::run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a clap message (help to stdout, errors to stderr) and flushes it.
fn print_clap(e: &clap::Error) {
    if e.use_stderr() {
        eprint!("{e}");
        let _ = std::io::stderr().flush();
    } else {
        print!("{e}");
        let _ = std::io::stdout().flush();
    }
}

/// `rps bench`: one process, one thread, no MPI.
fn bench(flags: BenchFlags) -> ExitCode {
    init_logger(None);
    let opts = match rps::bench::BenchOptions::try_from(flags) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match rps::bench::run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Lets one rank print a message, then synchronises every rank before they exit, so the
/// message is out before mpirun reacts to a non-zero exit status by killing the job.
fn stop_together<T: Transport>(t: &T, speaker: bool, print: impl FnOnce()) {
    if speaker {
        print();
        let _ = std::io::stderr().flush();
    }
    t.barrier();
    // mpirun drains the output of a rank that exits, but may tear the job down before it
    // has read the output of others: let the speaker be the first to exit.
    if !speaker {
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// SIGTERM (Slurm's warning before the time limit, `scancel`), SIGINT (Ctrl-C) and
/// SIGUSR1 (which `mpirun` forwards to every rank) raise `stop`; training then stops
/// cleanly at the next step boundary. A second SIGTERM or SIGINT kills at once.
fn stop_on_signals(stop: &Arc<AtomicBool>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    use signal_hook::flag;
    for sig in [SIGTERM, SIGINT] {
        // Order matters: the shutdown hook sees the flag still unset on the first signal.
        flag::register_conditional_shutdown(sig, 1, Arc::clone(stop))?;
        flag::register(sig, Arc::clone(stop))?;
    }
    flag::register(SIGUSR1, Arc::clone(stop))?;
    Ok(())
}

/// The rank the launcher assigned, read before MPI starts.
fn launcher_rank() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_RANK",
        "PMI_RANK",
        "PMIX_RANK",
        "SLURM_PROCID",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// Logs go to stderr, prefixed with the rank; rank 0 logs `info` by default, the others
/// only warnings. `RUST_LOG` overrides both.
fn init_logger(rank: Option<usize>) {
    let default = if rank.unwrap_or(0) == 0 {
        "info"
    } else {
        "warn"
    };
    let tag = rank.map(|r| format!("[rank {r}] ")).unwrap_or_default();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format(move |buf, record| {
            writeln!(
                buf,
                "{} {}{:<5} {}",
                buf.timestamp_seconds(),
                tag,
                record.level(),
                record.args()
            )
        })
        .init();
}

fn convert(flags: ConvertFlags) -> ExitCode {
    init_logger(None);
    let format = flags.format;
    let opts = flags.into();
    let result = match format {
        DatasetFormat::FashionMnist => rps::data::convert::fashion_mnist(&opts),
        DatasetFormat::Cifar10 => rps::data::cifar::cifar10(&opts),
    };
    match result {
        Ok(summary) => {
            println!(
                "wrote {} ({} training and {} test samples)",
                opts.output.display(),
                summary.train,
                summary.test
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn train_command(flags: TrainFlags) -> ExitCode {
    let Some(transport) = MpiTransport::init() else {
        eprintln!("error: MPI was already initialised");
        return ExitCode::FAILURE;
    };
    let rank = transport.rank();
    init_logger(Some(rank));
    let stop = Arc::new(AtomicBool::new(false));
    if let Err(e) = stop_on_signals(&stop) {
        log::warn!("cannot install signal handlers, SIGTERM will kill the job at once: {e}");
    }
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    // Every rank validates the same flags identically, so all fail together; rank 0 says why.
    let cfg = match TrainConfig::from_args(flags.into(), transport.size(), command_line) {
        Ok(cfg) => cfg,
        Err(e) => {
            stop_together(&transport, rank == 0, || eprintln!("error: {e}"));
            return ExitCode::from(2);
        }
    };
    let result = match cfg.transport {
        TransportKind::Mpi => train(&transport, &cfg, &stop),
        TransportKind::Udp(opts) => match UdpTransport::connect(&transport, &opts) {
            Ok(udp) => {
                log::info!("rank {rank}: RPS exchange over UDP on {}", udp.local_addr());
                train(&udp, &cfg, &stop)
            }
            Err(d) => Err(Failure::Agreed(d)),
        },
    };
    match result {
        Ok(s) => {
            if rank == 0 {
                println!(
                    "final test accuracy {:.4} (test loss {:.4}, consensus distance {:.3e}) after {} steps in {:.1} s; dropped {} of {} {}; metrics: {}",
                    s.test_accuracy,
                    s.test_loss,
                    s.consensus_distance,
                    s.steps,
                    s.wall_s,
                    s.dropped,
                    s.attempted,
                    rps::train::unit(&cfg),
                    cfg.metrics.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(Failure::Agreed(d)) => {
            log::debug!("stopping because {d}");
            stop_together(&transport, d.rank == rank, || match &d.own {
                Some(e) => eprintln!("error [rank {rank}]: {e:#}"),
                None => eprintln!("error [rank {rank}]: {}", d.message),
            });
            ExitCode::FAILURE
        }
        Err(Failure::Interrupted { step, checkpoint }) => {
            stop_together(&transport, rank == 0, || {
                match checkpoint {
                    Some(c) => eprintln!(
                        "stopped by a signal after step {step}; checkpoint {}; metrics {} (status \"interrupted\"); continue with the same command plus --resume {}",
                        c.display(),
                        cfg.metrics.display(),
                        c.parent().map(|p| p.display().to_string()).unwrap_or_default()
                    ),
                    None => eprintln!(
                        "stopped by a signal after step {step}; metrics {} (status \"interrupted\"); no checkpoint (no --checkpoint-dir)",
                        cfg.metrics.display()
                    ),
                }
            });
            ExitCode::from(75)
        }
        Err(Failure::Local(e)) => {
            eprintln!("error [rank {rank}]: {e:#}");
            let _ = std::io::stderr().flush();
            transport.abort(1)
        }
    }
}
