//! The benchmark's swarms: creating one and waiting for its agents, reading its live counts,
//! waiting for it to drain, counting its tasks by state, and stopping it.

use super::{DRAIN_STALL, POLL};
use crate::bench::Errors;
use crate::client::Client;
use anyhow::{Result, anyhow, bail};
use cflow_core::Action;
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};

/// How long no further agent may become idle before the wait for a swarm's agents gives up.
const STALL: Duration = Duration::from_secs(15);

/// The name of this run's swarm for a phase: `base` and the run's start time (Unix ms, in
/// hex), so that a benchmark run again against the same server creates its swarms afresh
/// rather than finding the ones a previous run stopped.
pub(super) fn run_name(base: &str) -> String {
    static RUN: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    });
    format!("{base}-{run:x}")
}

/// Creates a swarm with one pool of `n` agents (min = max = n) and waits until they are idle;
/// returns its id and how long that took. A failed creation whose swarm exists all the same is
/// recorded in `errors` and measured anyway (the server spawns the pool's agents one by one after
/// the swarm is stored, and its autoscaler may fill the pool first, failing the request).
pub(super) async fn swarm(
    client: &Client,
    name: &str,
    driver: &str,
    n: u32,
    errors: &Errors,
) -> Result<(String, Duration)> {
    let t0 = Instant::now();
    let body = json!({
        "name": name,
        "topology": "mesh",
        "max_agents": n,
        "agents": [{ "type": "coder", "driver": driver, "min": n, "max": n }],
    });
    let req = client
        .request(Method::POST, client.url(&["swarms"]))
        .json(&body);
    let created = client.json(req, Action::SwarmWrite).await;
    let id = match created {
        Ok(s) => s["id"]
            .as_str()
            .ok_or_else(|| anyhow!("the server created a swarm without an id: {s}"))?
            .to_string(),
        Err(e) => {
            let why = format!("creating swarm '{name}' of {n} {driver} agents: {e:#}");
            let Some(id) = swarm_named(client, name).await? else {
                bail!(why);
            };
            errors.record(format!("{why} (the swarm exists all the same)"));
            id
        }
    };
    // Agents that stop becoming idle (stuck in `starting`, say) are an error of the server's,
    // recorded, and the phase goes on with the agents there are.
    let mut last = (0, Instant::now());
    loop {
        let l = live(client, &id).await?;
        if l.idle >= u64::from(n) {
            return Ok((id, t0.elapsed()));
        }
        if l.idle != last.0 {
            last = (l.idle, Instant::now());
        } else if last.1.elapsed() > STALL {
            errors.record(format!(
                "swarm '{name}': only {} of {n} agents became idle; none more for {} s (agents by state: {})",
                l.idle,
                STALL.as_secs(),
                l.agents_by_state
            ));
            return Ok((id, t0.elapsed() - STALL));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The id of the swarm called `name`, if there is one.
pub(super) async fn swarm_named(client: &Client, name: &str) -> Result<Option<String>> {
    let mut url = client.url(&["swarms"]);
    url.query_pairs_mut().append_pair("limit", "1000");
    let mut found = None;
    client
        .pages(url, Action::SwarmRead, |items| {
            if let Some(s) = items.iter().find(|s| s["name"] == name) {
                found = s["id"].as_str().map(str::to_string);
            }
            Ok(())
        })
        .await?;
    Ok(found)
}

pub(super) struct Live {
    pub(super) queued: u64,
    pub(super) running: u64,
    pub(super) idle: u64,
    pub(super) agents_by_state: serde_json::Value,
}

pub(super) async fn live(client: &Client, id: &str) -> Result<Live> {
    let s = client
        .json(
            client.request(Method::GET, client.url(&["swarms", id])),
            Action::SwarmRead,
        )
        .await?;
    Ok(Live {
        queued: s["queued"].as_u64().unwrap_or(0),
        running: s["running"].as_u64().unwrap_or(0),
        idle: s["agents_by_state"]["idle"].as_u64().unwrap_or(0),
        agents_by_state: s["agents_by_state"].clone(),
    })
}

/// Waits until the swarm has nothing queued or running; gives up when that has not changed for
/// [`DRAIN_STALL`].
pub(super) async fn drained(client: &Client, id: &str) -> Result<()> {
    let mut last = (u64::MAX, Instant::now());
    loop {
        let l = live(client, id).await?;
        let left = l.queued + l.running;
        if left == 0 {
            return Ok(());
        }
        if left != last.0 {
            last = (left, Instant::now());
        } else if last.1.elapsed() > DRAIN_STALL {
            bail!(
                "the swarm still has {} queued and {} running tasks, unchanged for {} s",
                l.queued,
                l.running,
                DRAIN_STALL.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Counts the swarm's tasks in `state` through the paged list.
pub(super) async fn count(client: &Client, swarm: &str, state: &str) -> Result<u64> {
    let mut url = client.url(&["tasks"]);
    url.query_pairs_mut()
        .append_pair("swarm", swarm)
        .append_pair("state", state)
        .append_pair("limit", "1000");
    let mut n = 0u64;
    client
        .pages(url, Action::TaskRead, |items| {
            n += items.len() as u64;
            Ok(())
        })
        .await?;
    Ok(n)
}

/// Stops a phase's swarm so that its agents do not weigh on the next phase.
pub(super) async fn stop_swarm(client: &Client, id: &str, errors: &Errors) {
    let req = client.request(Method::POST, client.url(&["swarms", id, "stop"]));
    if let Err(e) = client.send(req, Action::SwarmWrite).await {
        errors.record(format!("stopping swarm {id}: {e:#}"));
    }
}

/// What the tasks that did not succeed are, for the error message.
pub(super) async fn others(client: &Client, swarm: &str) -> String {
    let mut parts = Vec::new();
    for state in [
        "pending",
        "queued",
        "assigned",
        "running",
        "failed",
        "timed_out",
        "cancelled",
    ] {
        match count(client, swarm, state).await {
            Ok(0) => {}
            Ok(n) => parts.push(format!("{n} {state}")),
            Err(e) => parts.push(format!("{state}: {e:#}")),
        }
    }
    parts.join(", ")
}
