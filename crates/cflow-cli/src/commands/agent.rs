//! `cflow agent spawn | list | get | stop`: the agents of a swarm.

use super::task::{all_items, parse_kv};
use crate::client::Client;
use crate::output::Printer;
use anyhow::Result;
use cflow_core::Action;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Start one agent in a swarm.
    Spawn(SpawnArgs),
    /// List agents.
    List {
        /// Only this swarm's agents (its id or name).
        #[arg(long)]
        swarm: Option<String>,
        /// idle, busy, draining, stopped, failed, ...
        #[arg(long)]
        state: Option<String>,
    },
    /// Show one agent with its circuit breaker.
    Get { id: String },
    /// Drain the agent (its running task finishes) and stop it.
    Stop { id: String },
}

#[derive(Debug, Args)]
pub struct SpawnArgs {
    /// The swarm: its id or name.
    #[arg(long)]
    pub swarm: String,
    /// coordinator, architect, coder, tester, reviewer, researcher or a custom type.
    #[arg(long = "type", value_name = "TYPE")]
    pub agent_type: String,
    #[arg(long, default_value = "exec")]
    pub driver: String,
    /// A capability (repeatable, or comma-separated); default: the type's own.
    #[arg(long = "cap", value_delimiter = ',', value_name = "CAP")]
    pub capabilities: Vec<String>,
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub labels: Vec<(String, String)>,
}

const FIELDS: &[&str] = &[
    "id",
    "swarm_id",
    "type",
    "driver",
    "state",
    "capabilities",
    "labels",
    "tasks_done",
    "failures",
    "busy_ms",
    "breaker",
    "worker_id",
    "current_task",
    "created_at",
    "updated_at",
];

pub async fn run(client: &Client, cmd: AgentCmd, out: Printer) -> Result<()> {
    match cmd {
        AgentCmd::Spawn(a) => {
            let mut body = Map::new();
            body.insert("type".into(), json!(a.agent_type));
            body.insert("driver".into(), json!(a.driver));
            if !a.capabilities.is_empty() {
                body.insert("capabilities".into(), json!(a.capabilities));
            }
            if !a.labels.is_empty() {
                let labels: Map<String, Value> =
                    a.labels.into_iter().map(|(k, v)| (k, json!(v))).collect();
                body.insert("labels".into(), Value::Object(labels));
            }
            let swarm = super::swarm::swarm_id(client, &a.swarm).await?;
            let req = client
                .request(Method::POST, client.url(&["swarms", &swarm, "agents"]))
                .json(&Value::Object(body));
            show(&client.json(req, Action::SwarmWrite).await?, out);
        }
        AgentCmd::List { swarm, state } => {
            let swarm = match swarm {
                Some(s) => Some(super::swarm::swarm_id(client, &s).await?),
                None => None,
            };
            let mut url = client.url(&["agents"]);
            {
                let mut q = url.query_pairs_mut();
                if let Some(s) = &swarm {
                    q.append_pair("swarm", s);
                }
                if let Some(s) = &state {
                    q.append_pair("state", s);
                }
            }
            let (doc, items) = all_items(client, url, Action::SwarmRead).await?;
            let rows: Vec<Value> = items.iter().map(display).collect();
            out.list(
                &doc,
                &rows,
                &[
                    "id",
                    "swarm_id",
                    "type",
                    "driver",
                    "state",
                    "tasks_done",
                    "failures",
                    "breaker",
                    "current_task",
                ],
            );
        }
        AgentCmd::Get { id } => {
            let req = client.request(Method::GET, client.url(&["agents", &id]));
            show(&client.json(req, Action::SwarmRead).await?, out);
        }
        AgentCmd::Stop { id } => {
            let req = client.request(Method::POST, client.url(&["agents", &id, "stop"]));
            show(&client.json(req, Action::SwarmWrite).await?, out);
        }
    }
    Ok(())
}

fn show(agent: &Value, out: Printer) {
    if out.is_json() {
        return out.json(agent);
    }
    out.record(&display(agent), FIELDS);
}

/// The breaker as its state (with the failure count when it is not closed), for tables.
fn display(agent: &Value) -> Value {
    let mut a = agent.clone();
    let b = &agent["breaker"];
    if let Some(state) = b.get("state").and_then(Value::as_str) {
        a["breaker"] = match b.get("consecutive_failures").and_then(Value::as_i64) {
            Some(n) if state != "closed" => json!(format!("{state} ({n} failures)")),
            _ => json!(state),
        };
    }
    a
}
