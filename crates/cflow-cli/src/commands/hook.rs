//! `cflow hook add | list | remove | test | deliveries | retry`: lifecycle hooks (commands and
//! webhooks run on cflow's events), and `cflow hook claude EVENT` (see [`super::claude_hook`]).

use crate::client::Client;
use crate::output::{Printer, emit};
use anyhow::{Result, bail};
use cflow_core::Action;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

#[derive(Debug, Subcommand)]
pub enum HookCmd {
    /// Add a hook: a command (run in the sandbox, the event JSON on stdin) or a webhook (a
    /// signed POST) run on the given events.
    Add(AddArgs),
    /// List the tenant's hooks.
    List,
    /// Remove a hook (its pending deliveries are not sent).
    Remove { id: String },
    /// Turn a hook off: its events no longer become deliveries (queued ones are still sent).
    Disable { id: String },
    /// Turn a hook on again, from the next event.
    Enable { id: String },
    /// Send a synthetic `hook.test` event to a hook now and show how it went.
    Test { id: String },
    /// A hook's deliveries, oldest first.
    Deliveries {
        id: String,
        /// Only deliveries in this state: pending, delivered or dead.
        #[arg(long)]
        state: Option<String>,
    },
    /// Re-queue a dead delivery: it is sent again at once.
    Retry { delivery_id: String },
    /// Called by Claude Code's hooks: reads the hook's JSON on standard input, records it and
    /// applies the tenant's policy (exit code 2 blocks). Installed by `cflow hooks install`.
    Claude(super::claude_hook::ClaudeHookArgs),
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Unique in the tenant: 1–128 of A-Z a-z 0-9 _ . -
    pub name: String,
    /// An event (task.completed, task.failed, agent.spawned, …), a family (swarm.*), '*', or
    /// pre-task (asked at submission; may refuse or amend the task). Repeat for several.
    #[arg(long = "event", required = true)]
    pub events: Vec<String>,
    /// A command line run with /bin/sh -c in the sandbox.
    #[arg(long, conflicts_with = "webhook", required_unless_present = "webhook")]
    pub command: Option<String>,
    /// A URL the event is POSTed to, signed with --secret.
    #[arg(long, requires = "secret")]
    pub webhook: Option<String>,
    /// The name of the tenant secret that signs the webhook's requests (X-Cflow-Signature).
    #[arg(long)]
    pub secret: Option<String>,
    /// tenant (default), project:NAME or swarm:SWARM (its id or name).
    #[arg(long)]
    pub scope: Option<String>,
    /// Seconds per run or request: 1–300 (default 10).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Sends per delivery before it is dead-lettered: 1–50 (default 8).
    #[arg(long)]
    pub max_attempts: Option<i64>,
    /// For pre-task hooks that fail or time out: allow (default) or deny the submission.
    #[arg(long, value_parser = ["allow", "deny"])]
    pub on_error: Option<String>,
}

const FIELDS: &[&str] = &[
    "id",
    "name",
    "kind",
    "events",
    "scope",
    "scope_id",
    "command",
    "url",
    "secret",
    "timeout_seconds",
    "max_attempts",
    "on_error",
    "enabled",
    "created_at",
];
const COLUMNS: &[&str] = &["id", "name", "kind", "events", "scope", "target"];
const DELIVERY_COLUMNS: &[&str] = &[
    "id",
    "event_type",
    "state",
    "attempts",
    "last_status",
    "last_error",
    "created_at",
];

/// `cflow hook enable|disable ID`.
async fn toggle(client: &Client, id: &str, enabled: bool, out: &Printer) -> Result<()> {
    let req = client
        .request(Method::PATCH, client.url(&["hooks", id]))
        .json(&json!({ "enabled": enabled }));
    let hook = client.json(req, Action::HookWrite).await?;
    if out.is_json() {
        out.json(&hook);
    } else {
        emit(&format!(
            "hook {id} ({}) is {}",
            hook["name"].as_str().unwrap_or_default(),
            if enabled { "enabled" } else { "disabled" }
        ));
    }
    Ok(())
}

pub async fn run(client: &Client, cmd: HookCmd, out: Printer) -> Result<()> {
    match cmd {
        HookCmd::Add(a) => {
            let scope = match a.scope.as_deref().and_then(|s| s.strip_prefix("swarm:")) {
                Some(swarm) => Some(format!(
                    "swarm:{}",
                    super::swarm::swarm_id(client, swarm).await?
                )),
                None => a.scope,
            };
            let body = json!({
                "name": a.name,
                "events": a.events,
                "command": a.command,
                "url": a.webhook,
                "secret": a.secret,
                "scope": scope,
                "timeout_seconds": a.timeout,
                "max_attempts": a.max_attempts,
                "on_error": a.on_error,
            });
            let req = client
                .request(Method::POST, client.url(&["hooks"]))
                .json(&without_nulls(body));
            let hook = client.json(req, Action::HookWrite).await?;
            out.record(&hook, FIELDS);
        }
        HookCmd::List => {
            let req = client.request(Method::GET, client.url(&["hooks"]));
            let doc = client.json(req, Action::HookRead).await?;
            let items: Vec<Value> = doc["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(with_target)
                .collect();
            out.list(&doc, &items, COLUMNS);
        }
        HookCmd::Remove { id } => {
            let req = client.request(Method::DELETE, client.url(&["hooks", &id]));
            client.send(req, Action::HookWrite).await?;
            if out.is_json() {
                out.json(&json!({ "id": id, "deleted": true }));
            } else {
                emit(&format!("removed hook {id}"));
            }
        }
        HookCmd::Disable { id } => toggle(client, &id, false, &out).await?,
        HookCmd::Enable { id } => toggle(client, &id, true, &out).await?,
        HookCmd::Test { id } => {
            let req = client.request(Method::POST, client.url(&["hooks", &id, "test"]));
            let result = client.json(req, Action::HookWrite).await?;
            out.record(
                &result,
                &["ok", "status", "duration_ms", "error", "delivery_id"],
            );
            if result["ok"] != Value::Bool(true) && !out.is_json() {
                bail!(
                    "the hook failed: {}",
                    result["error"].as_str().unwrap_or("no detail")
                );
            }
        }
        HookCmd::Deliveries { id, state } => {
            let mut url = client.url(&["hooks", &id, "deliveries"]);
            if let Some(s) = &state {
                url.query_pairs_mut().append_pair("state", s);
            }
            let req = client.request(Method::GET, url);
            let doc = client.json(req, Action::HookRead).await?;
            let items = doc["items"].as_array().cloned().unwrap_or_default();
            out.list(&doc, &items, DELIVERY_COLUMNS);
        }
        HookCmd::Retry { delivery_id } => {
            let url = client.url(&["hooks", "deliveries", &delivery_id, "retry"]);
            let req = client.request(Method::POST, url);
            let d = client.json(req, Action::HookWrite).await?;
            out.record(&d, &["id", "event_type", "state", "attempts"]);
        }
        HookCmd::Claude(_) => bail!("dispatched before a client is made"),
    }
    Ok(())
}

/// The body without the options that were not given (the server applies its defaults).
fn without_nulls(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, x| !x.is_null());
    }
    v
}

/// A listed hook with one `target` column: its command or its URL.
fn with_target(mut h: Value) -> Value {
    let target = h
        .get("command")
        .filter(|c| !c.is_null())
        .or_else(|| h.get("url"))
        .cloned()
        .unwrap_or(Value::Null);
    h["target"] = target;
    h
}
