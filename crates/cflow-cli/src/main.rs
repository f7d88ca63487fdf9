//! The `cflow` binary: parses the command line and hands it to [`commands::run`]. Errors are
//! printed as `error: …` with their causes and exit with code 1; usage errors are clap's (code 2).

mod bench;
mod bench_tasks;
mod cli;
mod client;
mod commands;
mod config;
mod env;
mod output;
mod workflow;

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            output::note(&format!("error: {err:#}"));
            ExitCode::FAILURE
        }
    }
}
