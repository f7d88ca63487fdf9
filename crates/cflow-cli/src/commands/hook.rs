//! `cflow hook add | list | remove | test | deliveries`: lifecycle hooks (commands and webhooks
//! run on cflow's events), and `cflow hook claude EVENT` (see [`super::claude_hook`]).

use crate::client::Client;
use crate::output::Printer;
use anyhow::{Result, bail};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum HookCmd {
    /// Called by Claude Code's hooks: reads the hook's JSON on standard input, records it and
    /// applies the tenant's policy (exit code 2 blocks). Installed by `cflow hooks install`.
    Claude(super::claude_hook::ClaudeHookArgs),
}

pub async fn run(_client: &Client, cmd: HookCmd, _out: Printer) -> Result<()> {
    match cmd {
        HookCmd::Claude(_) => bail!("dispatched before a client is made"),
    }
}
