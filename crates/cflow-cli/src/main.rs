//! The `cflow` binary: parses the command line and hands it to [`commands::run`]. Errors are
//! printed as `error: …` with their causes and exit with code 1; usage errors are clap's (code 2).

mod bench;
mod bench_sandbox;
mod bench_tasks;
mod cli;
mod client;
mod commands;
mod config;
mod env;
mod mcp;
mod output;
mod pgsettings;
mod workflow;

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: the server frees many large batch buffers, and glibc's
/// consolidation of them cost about a quarter of its CPU under load (`cflow bench tasks`).
/// Built with `no_thp` (the workspace's `Cargo.toml`): with transparent huge pages, each fault
/// in memory mimalloc had purged zeroed 2 MiB, 12-15 % of the server's CPU in that benchmark.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // The sandbox launcher (started by cflow itself for every agent command): before anything
    // else, and without the async runtime, since it must stay single-threaded until it execs.
    let args: Vec<std::ffi::OsString> = std::env::args_os().take(3).collect();
    if args
        .get(1)
        .is_some_and(|a| a == cflow_sandbox::LAUNCHER_ARG)
    {
        let code = cflow_sandbox::launch::launcher_main(&args);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            output::note(&format!("error: {err:#}"));
            ExitCode::FAILURE
        }
    }
}
