//! `cflow task submit | list | get | logs | artifacts | cancel`: tasks of the scheduler.

use super::run::{event_state, is_terminal, log_text, str_of, subscribe};
use crate::client::Client;
use crate::output::{Printer, emit, note};
use anyhow::{Result, bail};
use cflow_core::Action;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum TaskCmd {
    /// Submit one task: a shell command for an exec agent (cflow task submit --swarm S -- make
    /// test), or a prompt for a model agent (cflow task submit --swarm S --prompt "fix the
    /// failing test")
    Submit(Box<SubmitArgs>),
    /// List tasks (every page).
    List {
        /// pending, queued, assigned, running, succeeded, failed, cancelled or timed_out.
        #[arg(long)]
        state: Option<String>,
        /// Only this swarm's tasks (its id or name).
        #[arg(long)]
        swarm: Option<String>,
    },
    /// Show a task with its attempts.
    Get { id: String },
    /// Print a task's output (the stored tails); with --follow, then its live output until it
    /// ends.
    Logs {
        id: String,
        #[arg(long, short)]
        follow: bool,
    },
    /// List a task's artifacts (patches, files, logs its attempts stored); with --download,
    /// write each to DIR/<name> after checking its SHA-256.
    Artifacts {
        id: String,
        #[arg(long, value_name = "DIR")]
        download: Option<std::path::PathBuf>,
    },
    /// Cancel a task and its waiting dependents.
    Cancel { id: String },
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The swarm whose agents run it (its id or name).
    #[arg(long)]
    pub swarm: Option<String>,
    /// 0-100 (default 50).
    #[arg(long)]
    pub priority: Option<i64>,
    /// A capability the agent must have (repeatable, or comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "CAP")]
    pub requires: Vec<String>,
    /// Pin to agents or workers with this label (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub labels: Vec<(String, String)>,
    /// A task id this one waits for (repeatable, or comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "TASK")]
    pub depends_on: Vec<String>,
    /// Per-attempt time limit, e.g. 30s, 10m (default one hour).
    #[arg(long, value_parser = crate::cli::parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// 1-20 (default 3).
    #[arg(long)]
    pub max_attempts: Option<i64>,
    /// Run it this many times on different agents (1-9)…
    #[arg(long)]
    pub replicas: Option<i64>,
    /// …and accept the result this many agree on (default: a majority).
    #[arg(long, requires = "replicas")]
    pub quorum: Option<i64>,
    /// Submitting again with the same key returns the existing task instead of a new one.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// An environment variable for the command (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub env: Vec<(String, String)>,
    /// The command's working directory.
    #[arg(long)]
    pub cwd: Option<String>,
    /// A prompt for a model agent (claude-code or llm) instead of a command.
    #[arg(long, conflicts_with_all = ["command", "cwd"])]
    pub prompt: Option<String>,
    /// Model tasks: the model to ask (default: the provider's configured model).
    #[arg(long, requires = "prompt")]
    pub model: Option<String>,
    /// Model tasks: model calls (turns) at most.
    #[arg(long, requires = "prompt")]
    pub max_turns: Option<u64>,
    /// llm tasks: output tokens at most over the whole loop.
    #[arg(long, requires = "prompt")]
    pub max_tokens: Option<u64>,
    /// Model tasks: a tool the model may use (repeatable, or comma-separated; default all).
    #[arg(long = "allowed-tool", value_delimiter = ',', requires = "prompt")]
    pub allowed_tools: Vec<String>,
    /// The command: a shell line (`sh -c`); several words are joined with spaces.
    #[arg(
        last = true,
        required_unless_present = "prompt",
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

pub async fn run(client: &Client, cmd: TaskCmd, out: Printer) -> Result<()> {
    match cmd {
        TaskCmd::Submit(a) => submit(client, *a, out).await,
        TaskCmd::List { state, swarm } => {
            let swarm = match swarm {
                Some(s) => Some(super::swarm::swarm_id(client, &s).await?),
                None => None,
            };
            let mut url = client.url(&["tasks"]);
            {
                let mut q = url.query_pairs_mut();
                if let Some(s) = &state {
                    q.append_pair("state", s);
                }
                if let Some(s) = &swarm {
                    q.append_pair("swarm", s);
                }
            }
            let (doc, items) = all_items(client, url, Action::TaskRead).await?;
            let rows: Vec<Value> = items.iter().map(task_row).collect();
            out.list(
                &doc,
                &rows,
                &[
                    "id",
                    "name",
                    "state",
                    "priority",
                    "attempts",
                    "swarm_id",
                    "command",
                    "reason",
                    "updated_at",
                ],
            );
            Ok(())
        }
        TaskCmd::Get { id } => get(client, &id, out).await,
        TaskCmd::Logs { id, follow } => logs(client, &id, follow, out).await,
        TaskCmd::Artifacts { id, download } => {
            super::artifacts::run(client, &id, download.as_deref(), out).await
        }
        TaskCmd::Cancel { id } => {
            let req = client.request(Method::POST, client.url(&["tasks", &id, "cancel"]));
            let task = client.json(req, Action::TaskCancel).await?;
            out.record(&task_row(&task), &["id", "state", "reason", "updated_at"]);
            Ok(())
        }
    }
}

async fn submit(client: &Client, a: SubmitArgs, out: Printer) -> Result<()> {
    let swarm = match &a.swarm {
        Some(s) => Some(super::swarm::swarm_id(client, s).await?),
        None => None,
    };
    let mut spec = Map::new();
    match &a.prompt {
        Some(p) => {
            spec.insert("prompt".into(), json!(p));
            if let Some(m) = &a.model {
                spec.insert("model".into(), json!(m));
            }
            if let Some(n) = a.max_turns {
                spec.insert("max_turns".into(), json!(n));
            }
            if let Some(n) = a.max_tokens {
                spec.insert("max_tokens".into(), json!(n));
            }
            if !a.allowed_tools.is_empty() {
                spec.insert("allowed_tools".into(), json!(a.allowed_tools));
            }
        }
        None => {
            spec.insert("command".into(), json!(a.command.join(" ")));
        }
    }
    if !a.env.is_empty() {
        let env: BTreeMap<_, _> = a.env.into_iter().collect();
        spec.insert("env".into(), json!(env));
    }
    if let Some(c) = a.cwd {
        spec.insert("cwd".into(), json!(c));
    }
    let mut t = Map::new();
    t.insert("spec".into(), Value::Object(spec));
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            t.insert(k.into(), v);
        }
    };
    put("swarm", swarm.map(Value::from));
    put("priority", a.priority.map(Value::from));
    put(
        "requires",
        (!a.requires.is_empty()).then(|| json!(a.requires)),
    );
    if !a.labels.is_empty() {
        let labels: BTreeMap<_, _> = a.labels.into_iter().collect();
        put("labels", Some(json!(labels)));
    }
    put(
        "depends_on",
        (!a.depends_on.is_empty()).then(|| json!(a.depends_on)),
    );
    if let Some(d) = a.timeout {
        if d.subsec_millis() != 0 || d.as_secs() == 0 {
            bail!("--timeout must be a whole number of seconds, at least 1s");
        }
        put("timeout_seconds", Some(json!(d.as_secs())));
    }
    put("max_attempts", a.max_attempts.map(Value::from));
    put("replicas", a.replicas.map(Value::from));
    put("quorum", a.quorum.map(Value::from));
    put("idempotency_key", a.idempotency_key.map(Value::from));
    let body = json!({ "tasks": [Value::Object(t)] });
    let req = client
        .request(Method::POST, client.url(&["tasks"]))
        .json(&body);
    let answer = client.json(req, Action::TaskSubmit).await?;
    if out.is_json() {
        out.json(&answer);
        return Ok(());
    }
    let items = answer
        .get("tasks")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for t in &items {
        let existing = if t["existing"] == true {
            " (existing task for this idempotency key)"
        } else {
            ""
        };
        emit(&format!(
            "{} {}{existing}",
            str_of(t, "id"),
            str_of(t, "state")
        ));
    }
    Ok(())
}

/// A task as a table row: the spec's command pulled out, the attempt count as a number.
fn task_row(t: &Value) -> Value {
    let mut r = t.clone();
    let spec = &t["spec"];
    r["command"] = spec
        .get("command")
        .cloned()
        .or_else(|| {
            spec.get("program").map(|p| {
                let args = spec["args"].as_array().cloned().unwrap_or_default();
                let mut words = vec![p.as_str().unwrap_or_default().to_string()];
                words.extend(args.iter().filter_map(|a| a.as_str().map(str::to_string)));
                json!(words.join(" "))
            })
        })
        // A model task shows its prompt, marked as one.
        .or_else(|| {
            spec.get("prompt")
                .and_then(Value::as_str)
                .map(|p| json!(format!("prompt: {p}")))
        })
        .unwrap_or(Value::Null);
    // A multi-line script (or prompt) shows its first line in a table, a long one its start.
    if let Some(c) = r["command"].as_str() {
        let c = c.trim();
        let first: String = c
            .lines()
            .next()
            .unwrap_or_default()
            .chars()
            .take(80)
            .collect();
        if first.len() < c.len() {
            r["command"] = json!(format!("{first} …"));
        }
    }
    // `cflow run` names each task in its environment; tables show that name.
    r["name"] = spec["env"][crate::workflow::WORKFLOW_ID_ENV].clone();
    if let Some(a) = t["attempts"].as_array() {
        r["attempts"] = json!(a.len());
    }
    r
}

async fn get(client: &Client, id: &str, out: Printer) -> Result<()> {
    let req = client.request(Method::GET, client.url(&["tasks", id]));
    let task = client.json(req, Action::TaskRead).await?;
    if out.is_json() {
        out.json(&task);
        return Ok(());
    }
    out.record(
        &task_row(&task),
        &[
            "id",
            "swarm_id",
            "state",
            "reason",
            "command",
            "priority",
            "requires",
            "labels",
            "depends_on",
            "agent_id",
            "replica_of",
            "attempts",
            "max_attempts",
            "timeout_seconds",
            "replicas",
            "quorum",
            "result",
            "created_at",
            "updated_at",
        ],
    );
    let attempts = task["attempts"].as_array().cloned().unwrap_or_default();
    if !attempts.is_empty() {
        emit("attempts:");
        out.list(
            &Value::Null,
            &attempts,
            &[
                "attempt",
                "state",
                "end",
                "agent_id",
                "worker_id",
                "exit_code",
                "started_at",
                "ended_at",
                "result",
            ],
        );
    }
    Ok(())
}

async fn logs(client: &Client, id: &str, follow: bool, out: Printer) -> Result<()> {
    // Subscribed before the tails are read, so output between the two is not lost (a line may
    // show twice at the seam, never be missing).
    let mut events = if follow {
        Some(subscribe(client, "task.").await?)
    } else {
        None
    };
    let req = client.request(Method::GET, client.url(&["tasks", id, "logs"]));
    let doc = client.json(req, Action::TaskRead).await?;
    if out.is_json() && !follow {
        out.json(&doc);
        return Ok(());
    }
    let attempts = doc["attempts"].as_array().cloned().unwrap_or_default();
    for a in &attempts {
        if out.is_json() {
            out.json(a);
            continue;
        }
        if attempts.len() > 1 {
            emit(&format!("── attempt {} ──", a["attempt"]));
        }
        write_raw(
            &mut std::io::stdout().lock(),
            a["stdout"].as_str().unwrap_or_default(),
        );
        write_raw(
            &mut std::io::stderr().lock(),
            a["stderr"].as_str().unwrap_or_default(),
        );
        if a["truncated"] == true {
            note("(output truncated: only the tail was kept)");
        }
    }
    let Some(events) = events.as_mut() else {
        return Ok(());
    };
    let mut state = state_of(client, id).await?;
    let mut check = tokio::time::interval(Duration::from_secs(2));
    while !is_terminal(&state) {
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                if ev.subject != id {
                    continue;
                }
                if ev.kind == "task.log" {
                    if out.is_json() {
                        emit(&ev.data.to_string());
                        continue;
                    }
                    let (text, stderr) = log_text(&ev.data);
                    if stderr {
                        write_raw(&mut std::io::stderr().lock(), &text);
                    } else {
                        write_raw(&mut std::io::stdout().lock(), &text);
                    }
                } else if let Some(s) = event_state(&ev.kind) {
                    state = s.to_string();
                }
            }
            _ = check.tick() => state = state_of(client, id).await?,
        }
    }
    note(&format!("task {id} {}", state.replace('_', " ")));
    Ok(())
}

async fn state_of(client: &Client, id: &str) -> Result<String> {
    let req = client.request(Method::GET, client.url(&["tasks", id]));
    let t = client.json(req, Action::TaskRead).await?;
    Ok(str_of(&t, "state"))
}

fn write_raw(w: &mut impl Write, s: &str) {
    let _ = w.write_all(s.as_bytes());
    let _ = w.flush();
}

/// All pages of a list endpoint as one `{items}` document and its items.
pub async fn all_items(
    client: &Client,
    url: reqwest::Url,
    action: Action,
) -> Result<(Value, Vec<Value>)> {
    let mut items = Vec::new();
    client
        .pages(url, action, |page| {
            items.extend(page);
            Ok(())
        })
        .await?;
    Ok((json!({ "items": items, "next_cursor": null }), items))
}
