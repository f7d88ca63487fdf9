//! `cflow hook claude EVENT` (called by Claude Code's hooks) and `cflow hooks install`.

use crate::config::Loaded;
use crate::output::Printer;
use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ClaudeHookArgs {
    /// The Claude Code hook event: PreToolUse, PostToolUse, UserPromptSubmit, SessionStart,
    /// SessionEnd, Stop, SubagentStop, PreCompact or Notification.
    pub event: String,
}

#[derive(Debug, Subcommand)]
pub enum HooksCmd {
    /// Not built yet.
    Install,
}

pub fn run(_loaded: &Loaded, _args: ClaudeHookArgs) -> Result<ExitCode> {
    bail!("cflow hook claude is not built yet")
}

pub fn hooks(_loaded: &Loaded, _cmd: HooksCmd, _out: Printer) -> Result<ExitCode> {
    bail!("cflow hooks install is not built yet")
}
