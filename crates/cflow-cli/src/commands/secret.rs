//! `cflow secret set | list | delete`: the tenant's secrets. A value goes to the server and is
//! never printed: it is read from standard input (not echoed on a terminal), from an environment
//! variable, or from `--value`.

use crate::client::Client;
use crate::output::{Printer, emit, note};
use anyhow::{Context, Result, bail};
use cflow_core::Action;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::json;
use std::io::{IsTerminal, Read};

#[derive(Debug, Subcommand)]
pub enum SecretCmd {
    /// Set a secret (created or replaced). The value is read from standard input unless
    /// --value or --from-env is given, and is never shown again.
    Set(SetArgs),
    /// List the secrets' names and times (values are never listed).
    List,
    /// Delete a secret.
    Delete { name: String },
}

#[derive(Args)]
pub struct SetArgs {
    /// 1–128 of A-Z a-z 0-9 _ . -
    pub name: String,
    /// The value on the command line (visible in the shell's history and the process list:
    /// prefer standard input or --from-env).
    #[arg(long, conflicts_with = "from_env")]
    pub value: Option<String>,
    /// Read the value from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub from_env: Option<String>,
}

// Not derived: `--value` must not reach a log or an error through `{:?}`.
impl std::fmt::Debug for SetArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetArgs")
            .field("name", &self.name)
            .field("from_env", &self.from_env)
            .finish_non_exhaustive()
    }
}

const FIELDS: &[&str] = &["name", "created_at", "updated_at"];

pub async fn run(client: &Client, cmd: SecretCmd, out: Printer) -> Result<()> {
    match cmd {
        SecretCmd::Set(args) => {
            let value = value_of(&args)?;
            if value.is_empty() {
                bail!(
                    "the value is empty: give it on standard input, with --from-env VAR or with --value"
                );
            }
            let req = client
                .request(Method::PUT, client.url(&["secrets", &args.name]))
                .json(&json!({ "value": value }));
            let meta = client.json(req, Action::SecretWrite).await?;
            out.record(&meta, FIELDS);
            Ok(())
        }
        SecretCmd::List => {
            let req = client.request(Method::GET, client.url(&["secrets"]));
            let doc = client.json(req, Action::SecretRead).await?;
            let items = doc["items"].as_array().cloned().unwrap_or_default();
            out.list(&doc, &items, FIELDS);
            Ok(())
        }
        SecretCmd::Delete { name } => {
            let req = client.request(Method::DELETE, client.url(&["secrets", &name]));
            client.send(req, Action::SecretWrite).await?;
            if out.is_json() {
                out.json(&json!({ "name": name, "deleted": true }));
            } else {
                emit(&format!("deleted secret {name}"));
            }
            Ok(())
        }
    }
}

fn value_of(args: &SetArgs) -> Result<String> {
    if let Some(v) = &args.value {
        return Ok(v.clone());
    }
    if let Some(var) = &args.from_env {
        return std::env::var(var).with_context(|| {
            format!("--from-env {var}: the variable is not set (or is not UTF-8)")
        });
    }
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    if terminal {
        note("enter the value, then press Enter (it is not echoed):");
    }
    let _echo = terminal.then(EchoOff::new).flatten();
    let mut s = String::new();
    if terminal {
        stdin
            .read_line(&mut s)
            .context("reading the value from the terminal")?;
    } else {
        stdin
            .lock()
            .read_to_string(&mut s)
            .context("reading the value from standard input")?;
    }
    // `echo value | cflow secret set NAME` sets "value", not "value\n".
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    Ok(s)
}

/// Turns the terminal's echo off while it lives.
struct EchoOff {
    saved: rustix::termios::Termios,
}

impl EchoOff {
    fn new() -> Option<EchoOff> {
        use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        tcsetattr(&stdin, OptionalActions::Now, &quiet).ok()?;
        Some(EchoOff { saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        use rustix::termios::{OptionalActions, tcsetattr};
        let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
        // The newline the user typed was not echoed either.
        eprintln!();
    }
}
