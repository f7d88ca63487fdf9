//! `cflow swarm init | list | status | pause | resume | stop | scale`: swarms of agents.

use super::task::{all_items, parse_kv};
use crate::client::{ApiError, Client};
use crate::output::Printer;
use crate::workflow::{self, PoolDef};
use anyhow::{Context, Result, anyhow, bail};
use cflow_core::Action;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum SwarmCmd {
    /// Create a swarm and the minimum agents of each pool.
    Init(InitArgs),
    /// List swarms.
    List,
    /// A swarm with its live numbers (queued, running, agents by state). SWARM: its id or name.
    Status {
        #[arg(value_name = "SWARM")]
        id: String,
    },
    /// Stop assigning new tasks (running ones finish).
    Pause {
        #[arg(value_name = "SWARM")]
        id: String,
    },
    /// Assign tasks again.
    Resume {
        #[arg(value_name = "SWARM")]
        id: String,
    },
    /// Stop the swarm for good: agents stop after their running task.
    Stop {
        #[arg(value_name = "SWARM")]
        id: String,
    },
    /// Set a pool's bounds (creating the pool when --driver is given and it does not exist).
    Scale(ScaleArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The swarm's name (default: the name in --file).
    #[arg(required_unless_present = "file")]
    pub name: Option<String>,
    /// mesh, hierarchical, ring or star.
    #[arg(long)]
    pub topology: Option<String>,
    /// weighted_round_robin or least_loaded.
    #[arg(long)]
    pub strategy: Option<String>,
    /// The most agents the swarm may hold (1-10000, default 100).
    #[arg(long)]
    pub max_agents: Option<i64>,
    #[arg(long)]
    pub project: Option<String>,
    /// Agent pools as TYPE=DRIVER[:MIN[..MAX]], e.g. coder=exec:2..4,tester=exec:1 (repeatable
    /// or comma-separated). Without MIN, no agent is started until there is work.
    #[arg(long, value_delimiter = ',', value_name = "POOL", value_parser = parse_pool)]
    pub agents: Vec<PoolDef>,
    /// Take the swarm from a workflow file's [swarm] table (flags override it).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// The swarm: its id or name.
    #[arg(value_name = "SWARM")]
    pub id: String,
    /// The pool's agent type.
    #[arg(long = "type", value_name = "TYPE")]
    pub agent_type: String,
    /// The driver (needed to create a new pool).
    #[arg(long)]
    pub driver: Option<String>,
    #[arg(long)]
    pub min: Option<i64>,
    #[arg(long)]
    pub max: Option<i64>,
    /// Idle agents kept ready beyond demand.
    #[arg(long)]
    pub prewarm: Option<i64>,
    /// Capabilities of the pool's agents (repeatable, or comma-separated).
    #[arg(long = "cap", value_delimiter = ',', value_name = "CAP")]
    pub capabilities: Vec<String>,
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub labels: Vec<(String, String)>,
}

/// `TYPE=DRIVER[:MIN[..MAX]]`.
pub fn parse_pool(s: &str) -> Result<PoolDef, String> {
    let err = |why: &str| {
        format!("'{s}' is not a pool ({why}): use TYPE=DRIVER[:MIN[..MAX]], e.g. coder=exec:2..4")
    };
    let (agent_type, rest) = s.split_once('=').ok_or_else(|| err("no '='"))?;
    let (driver, bounds) = match rest.split_once(':') {
        Some((d, b)) => (d, Some(b)),
        None => (rest, None),
    };
    if agent_type.is_empty() || driver.is_empty() {
        return Err(err("empty type or driver"));
    }
    let num = |n: &str| {
        n.parse::<i64>()
            .map_err(|_| err("bounds are whole numbers"))
    };
    let (min, max) = match bounds {
        None => (None, None),
        Some(b) => match b.split_once("..") {
            Some((lo, hi)) => (Some(num(lo)?), Some(num(hi)?)),
            None => (Some(num(b)?), None),
        },
    };
    if let (Some(lo), Some(hi)) = (min, max)
        && lo > hi
    {
        return Err(err("MIN is more than MAX"));
    }
    Ok(PoolDef {
        agent_type: agent_type.to_string(),
        driver: driver.to_string(),
        min,
        max,
        prewarm: None,
        capabilities: Vec::new(),
        labels: Default::default(),
        recycle_after_tasks: None,
        recycle_on_failure: None,
        system_prompt: None,
    })
}

const COLUMNS: &[&str] = &[
    "id",
    "name",
    "topology",
    "strategy",
    "state",
    "pools",
    "agents",
    "queued",
    "running",
    "created_at",
];

pub async fn run(client: &Client, cmd: SwarmCmd, out: Printer) -> Result<()> {
    match cmd {
        SwarmCmd::Init(a) => {
            let body = init_body(a)?;
            let req = client
                .request(Method::POST, client.url(&["swarms"]))
                .json(&body);
            let swarm = client.json(req, Action::SwarmWrite).await?;
            show(&swarm, out);
        }
        SwarmCmd::List => {
            let (doc, items) =
                all_items(client, client.url(&["swarms"]), Action::SwarmRead).await?;
            let rows: Vec<Value> = items.iter().map(display).collect();
            out.list(&doc, &rows, COLUMNS);
        }
        SwarmCmd::Status { id } => {
            let id = swarm_id(client, &id).await?;
            let req = client.request(Method::GET, client.url(&["swarms", &id]));
            show(&client.json(req, Action::SwarmRead).await?, out);
        }
        SwarmCmd::Pause { id } => act(client, &id, "pause", out).await?,
        SwarmCmd::Resume { id } => act(client, &id, "resume", out).await?,
        SwarmCmd::Stop { id } => act(client, &id, "stop", out).await?,
        SwarmCmd::Scale(a) => {
            let mut pool = Map::new();
            pool.insert("type".into(), json!(a.agent_type));
            for (k, v) in [("min", a.min), ("max", a.max), ("prewarm", a.prewarm)] {
                if let Some(v) = v {
                    pool.insert(k.into(), json!(v));
                }
            }
            if let Some(d) = a.driver {
                pool.insert("driver".into(), json!(d));
            }
            if !a.capabilities.is_empty() {
                pool.insert("capabilities".into(), json!(a.capabilities));
            }
            if !a.labels.is_empty() {
                let labels: Map<String, Value> =
                    a.labels.into_iter().map(|(k, v)| (k, json!(v))).collect();
                pool.insert("labels".into(), Value::Object(labels));
            }
            let id = swarm_id(client, &a.id).await?;
            let req = client
                .request(Method::POST, client.url(&["swarms", &id, "scale"]))
                .json(&Value::Object(pool));
            show(&client.json(req, Action::SwarmWrite).await?, out);
        }
    }
    Ok(())
}

fn init_body(a: InitArgs) -> Result<Value> {
    let mut def = match &a.file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            workflow::parse_swarm(&text, &path.display().to_string())?
        }
        None => workflow::SwarmDef {
            name: String::new(),
            topology: "hierarchical".into(),
            strategy: None,
            max_agents: None,
            project: None,
            agents: Vec::new(),
        },
    };
    if let Some(n) = a.name {
        def.name = n;
    }
    if let Some(t) = a.topology {
        def.topology = t;
    }
    if a.strategy.is_some() {
        def.strategy = a.strategy;
    }
    if a.max_agents.is_some() {
        def.max_agents = a.max_agents;
    }
    if a.project.is_some() {
        def.project = a.project;
    }
    for p in a.agents {
        def.agents.retain(|q| q.agent_type != p.agent_type);
        def.agents.push(p);
    }
    workflow::check_swarm(&def).map_err(|e| anyhow!("{e}"))?;
    if def.name.trim().is_empty() {
        bail!("the swarm needs a name");
    }
    let name = def.name.clone();
    Ok(workflow::Workflow {
        swarm: def,
        tasks: Vec::new(),
    }
    .swarm_body(&name))
}

async fn act(client: &Client, id: &str, what: &str, out: Printer) -> Result<()> {
    let id = swarm_id(client, id).await?;
    let req = client.request(Method::POST, client.url(&["swarms", &id, what]));
    show(&client.json(req, Action::SwarmWrite).await?, out);
    Ok(())
}

/// The id of the swarm `arg` names: its id, or its name (unique in a tenant, so a person can
/// type `--swarm web` instead of a UUID). An id is tried first; a name costs a listing.
pub async fn swarm_id(client: &Client, arg: &str) -> Result<String> {
    let req = client.request(Method::GET, client.url(&["swarms", arg]));
    match client.json(req, Action::SwarmRead).await {
        Ok(swarm) => {
            return Ok(swarm["id"].as_str().unwrap_or(arg).to_string());
        }
        Err(e)
            if e.downcast_ref::<ApiError>()
                .is_some_and(|a| a.status == reqwest::StatusCode::NOT_FOUND) => {}
        Err(e) => return Err(e),
    }
    let mut found = None;
    client
        .pages(client.url(&["swarms"]), Action::SwarmRead, |items| {
            if found.is_none() {
                found = items
                    .iter()
                    .find(|s| s["name"] == arg)
                    .and_then(|s| s["id"].as_str())
                    .map(str::to_string);
            }
            Ok(())
        })
        .await?;
    found.ok_or_else(|| {
        anyhow!(
            "no swarm with the id or name '{arg}' in this tenant ('cflow swarm list' shows them)"
        )
    })
}

fn show(swarm: &Value, out: Printer) {
    if out.is_json() {
        return out.json(swarm);
    }
    out.record(
        &display(swarm),
        &[
            "id",
            "name",
            "topology",
            "strategy",
            "state",
            "max_agents",
            "project",
            "pools",
            "agents",
            "queued",
            "running",
            "created_at",
            "updated_at",
        ],
    );
}

/// Pools as `coder exec 2..4` and agents by state as `idle 2, busy 1`, for tables.
fn display(swarm: &Value) -> Value {
    let mut s = swarm.clone();
    let pools: Vec<String> = swarm["pools"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let ty = p.get("type").or_else(|| p.get("agent_type"));
                    format!(
                        "{} {} {}..{}",
                        ty.and_then(Value::as_str).unwrap_or("?"),
                        p["driver"].as_str().unwrap_or("?"),
                        p["min"],
                        p["max"]
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    s["pools"] = json!(pools);
    let agents: Vec<String> = swarm["agents_by_state"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect())
        .unwrap_or_default();
    s["agents"] = json!(agents);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_syntax() {
        let p = parse_pool("coder=exec:2..4").unwrap();
        assert_eq!(
            (p.agent_type.as_str(), p.driver.as_str(), p.min, p.max),
            ("coder", "exec", Some(2), Some(4))
        );
        let p = parse_pool("tester=exec:1").unwrap();
        assert_eq!((p.min, p.max), (Some(1), None));
        let p = parse_pool("reviewer=noop").unwrap();
        assert_eq!((p.min, p.max), (None, None));
        for bad in ["coder", "coder=exec:x", "coder=exec:4..2", "=exec"] {
            assert!(parse_pool(bad).is_err(), "{bad}");
        }
    }
}
