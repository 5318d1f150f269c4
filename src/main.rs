//! The `rps` binary: parses the command line and hands each command to its `run` in
//! [`rps::commands`], which owns exit statuses and error printing (see there).

use std::process::ExitCode;

use rps::cli::{Cli, Command};
use rps::commands::{self, print_error, stop_together_if_launched, EXIT_USAGE};

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = match cli.command {
        Command::Train(flags) => return commands::train(*flags),
        Command::Convert(flags) => logged(|| commands::convert(flags)),
        Command::Bench(flags) => logged(|| commands::bench(flags)),
        Command::BenchExchange(flags) => return commands::bench_exchange(flags),
        Command::Sweep(flags) => logged(|| commands::sweep(flags)),
        Command::Report(flags) => commands::report(flags),
        Command::Plot(flags) => logged(|| commands::plot(flags)),
        Command::Digest(flags) => commands::digest(flags),
        Command::Provenance(flags) => commands::provenance(flags),
    };
    result.unwrap_or_else(|e| {
        print_error(None, &e);
        ExitCode::FAILURE
    })
}

/// Runs a one-process command with the logger on.
fn logged(run: impl FnOnce() -> anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    commands::init_logger(None);
    run()
}

/// The command line, with `rps train --job FILE` expanded. Under mpirun every rank
/// parses the same arguments: one rank speaks and all exit together.
fn parse() -> Result<Cli, ExitCode> {
    let args = rps::cli::expand_job_file(std::env::args_os().collect()).map_err(|e| {
        stop_together_if_launched(true, || print_error(None, &e));
        ExitCode::from(EXIT_USAGE)
    })?;
    rps::cli::parse(args).map_err(|e| {
        let (stderr, code) = match e.use_stderr() {
            true => (true, ExitCode::from(EXIT_USAGE)),
            false => (false, ExitCode::SUCCESS),
        };
        stop_together_if_launched(stderr, || {
            // clap's text already says `error:`; help and version go to stdout.
            if stderr {
                eprint!("{e}");
            } else {
                print!("{e}");
            }
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
        });
        code
    })
}
