//! `cflow mcp-bridge --socket PATH` (hidden): the stdio ⇄ Unix-socket bridge that Claude Code,
//! running as a `claude-code` agent in its sandbox, starts as its `cflow` MCP server; the bytes
//! go to the driver's MCP server for that attempt (see `cflow_sandbox::bridge`).

use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct McpBridgeArgs {
    /// The Unix socket of the attempt's MCP server.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
}

/// Pumps bytes until either side closes; exit code 1 (the reason on stderr) when the socket
/// cannot be reached.
pub fn run(args: &McpBridgeArgs) -> ExitCode {
    match cflow_sandbox::bridge::run(&args.socket) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cflow mcp-bridge: {e}");
            ExitCode::FAILURE
        }
    }
}
