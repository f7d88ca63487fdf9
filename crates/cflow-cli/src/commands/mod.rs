//! Dispatch of the subcommands. Each command loads only what it needs: client commands get a
//! current-thread runtime (start-up time matters for scripts calling `cflow` in a loop), the
//! server and the benchmark a multi-thread one, and `config show` none at all.

pub mod agent;
pub mod artifacts;
pub mod audit;
pub mod claude_hook;
pub mod config;
pub mod cost;
pub mod doctor;
pub mod hook;
pub mod key;
pub mod mcp_bridge;
pub mod memory;
pub mod run;
pub mod secret;
pub mod swarm;
pub mod task;
pub mod tenant;
pub mod up;
pub mod worker;

use crate::cli::{AuditCmd, BenchCmd, Cli, Command, ConfigCmd};
use crate::client::Client;
use crate::config::{FlagValue, Loaded, load};
use crate::output::Printer;
use anyhow::{Context, Result};
use std::process::ExitCode;

/// Runs a parsed command line; the exit code is 0 on success and 1 when a check failed (an
/// error returned from here also exits 1).
pub fn run(cli: Cli) -> Result<ExitCode> {
    // Inside a sandbox, with no configuration to read: nothing but the byte pump.
    if let Command::McpBridge(args) = &cli.command {
        return Ok(mcp_bridge::run(args));
    }
    let mut flags = cli.global.flags();
    match &cli.command {
        Command::Up(a) => flags.extend(a.flags()),
        Command::Worker(a) => flags.extend(a.flags()),
        Command::Server(a) => {
            flags.extend(a.up.flags());
            if let Some(d) = &a.database {
                flags.push(FlagValue::new("database", d.as_str()));
            }
        }
        Command::Audit(AuditCmd::Verify {
            database: Some(d), ..
        }) => flags.push(FlagValue::new("database", d.as_str())),
        _ => {}
    }
    let loaded = load(cli.global.config.as_deref(), &flags)?;
    let printer = Printer::new(loaded.config.client.output);
    match cli.command {
        Command::Up(a) => up::run(loaded, up::Mode::Embedded, a.demo, printer),
        Command::Server(a) => up::run(loaded, up::Mode::Server, a.up.demo, printer),
        Command::Doctor => current_thread()?.block_on(doctor::run(&loaded, printer)),
        Command::Run(args) => current_thread()?.block_on(run::run(&loaded, args, printer)),
        Command::Config(ConfigCmd::Show) => config::show(&loaded, printer),
        Command::Worker(args) => worker::run(&loaded, args),
        Command::Audit(AuditCmd::Verify { .. }) => {
            current_thread()?.block_on(audit::verify(&loaded, printer))
        }
        Command::Bench(BenchCmd::Api(args)) => {
            crate::bench::run(&loaded, args, cli.global.server.is_some(), printer)
        }
        Command::Bench(BenchCmd::Tasks(args)) => {
            crate::bench_tasks::run(&loaded, args, cli.global.server.is_some(), printer)
        }
        Command::Bench(BenchCmd::Sandbox(args)) => {
            crate::bench_sandbox::run(&loaded, args, printer)
        }
        Command::Mcp(args) => {
            let rt = current_thread()?;
            // A server that cannot be reached or a missing token must not stop the MCP server
            // from starting: the client that launched it would only see a dead process. Every
            // tool call then answers with the reason, as a tool error.
            let started = match args.start {
                true => rt.block_on(crate::mcp::ensure_server(
                    &loaded,
                    cli.global.config.as_deref(),
                )),
                false => Ok(()),
            };
            let client = started
                .and_then(|()| Client::from_config(&loaded))
                .map_err(|e| format!("{e:#}"));
            rt.block_on(crate::mcp::serve_stdio(crate::mcp::HttpApi::new(client)))?;
            Ok(ExitCode::SUCCESS)
        }
        // Must answer Claude Code within a bounded time even without a config or a server.
        Command::Hook(hook::HookCmd::Claude(args)) => claude_hook::run(&loaded, args),
        Command::Hooks(cmd) => claude_hook::hooks(&loaded, cmd, printer),
        cmd => current_thread()?.block_on(client_command(cmd, &loaded, printer)),
    }
}

async fn client_command(cmd: Command, loaded: &Loaded, printer: Printer) -> Result<ExitCode> {
    let client = Client::from_config(loaded)?;
    match cmd {
        Command::Tenant(c) => tenant::run(&client, c, printer).await?,
        Command::Key(c) => key::run(&client, c, printer).await?,
        Command::Whoami => key::whoami(&client, printer).await?,
        Command::Memory(c) => memory::run(&client, c, printer).await?,
        Command::Audit(c) => audit::run(&client, c, printer).await?,
        Command::Swarm(c) => swarm::run(&client, c, printer).await?,
        Command::Agent(c) => agent::run(&client, c, printer).await?,
        Command::Task(c) => task::run(&client, c, printer).await?,
        Command::Secret(c) => secret::run(&client, c, printer).await?,
        Command::Cost(a) => cost::cost(&client, a, printer).await?,
        Command::Budget(c) => cost::budget(&client, c, printer).await?,
        Command::Hook(c) => hook::run(&client, c, printer).await?,
        Command::Up(_)
        | Command::Server(_)
        | Command::Config(_)
        | Command::Bench(_)
        | Command::Worker(_)
        | Command::Doctor
        | Command::Mcp(_)
        | Command::Hooks(_)
        | Command::McpBridge(_)
        | Command::Run(_) => {
            unreachable!("dispatched in run()")
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn current_thread() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
