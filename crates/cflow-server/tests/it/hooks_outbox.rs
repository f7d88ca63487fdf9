//! The hooks' outbox through the whole server (SQLite and PostgreSQL): a webhook whose receiver
//! is down, then up after a server restart, is delivered exactly once with a valid signature;
//! a delivery that keeps failing goes dead after the hook's most attempts, stays dead across a
//! restart, and is delivered once re-queued; a command hook that hangs is killed with its whole
//! process tree at its timeout while its task goes on unaffected.

use crate::common::{eventually, expect_json};
use crate::hooks::{
    Receiver, WAIT, add_hook, deliveries, fast_server, free_port, put_secret, wait_delivery,
};
use crate::orchestration::{Api, coders};
use cflow_test_support::server::TestServer;
use serde_json::{Value, json};
use std::sync::Arc;

/// Restarts a server on the same data directory (and database) with the same configuration.
async fn restart(server: TestServer) -> (cflow_server::Running, tempfile::TempDir) {
    let config = server.config.clone();
    let dir = server.shutdown_keeping_data().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let running = cflow_server::start(config, listener)
        .await
        .expect("restart");
    (running, dir)
}

/// An API caller against a restarted server.
struct Raw {
    url: String,
    token: String,
    client: reqwest::Client,
}

impl Raw {
    async fn get(&self, path: &str) -> Value {
        let resp = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        expect_json(resp, 200).await
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn deliveries(&self, hook: &str, state: &str) -> Vec<Value> {
        let page = self
            .get(&format!("/api/v1/hooks/{hook}/deliveries?state={state}"))
            .await;
        page["items"].as_array().unwrap().clone()
    }

    async fn metrics(&self, admin_token: &str) -> String {
        self.client
            .get(format!("{}/metrics", self.url))
            .bearer_auth(admin_token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

async fn down_then_up(server: TestServer) {
    let (_, admin) = server.tenant_with_key("wh-down", "admin").await;
    let api = Api::new(&server, &admin);
    put_secret(&api, "WH_KEY", "the-signing-value").await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let hook = add_hook(
        &api,
        json!({"name": "notify", "events": ["swarm.created"], "url": url, "secret": "WH_KEY",
               "timeout_seconds": 2, "max_attempts": 50}),
    )
    .await;
    let hook_id = hook["id"].as_str().unwrap().to_string();
    let swarm = api
        .create_swarm(json!({"name": "s1", "topology": "mesh", "agents": coders(0)}))
        .await;
    // The receiver is down: the delivery is tried, fails, and waits for its next attempt.
    let pending = wait_delivery(&api, &hook_id, "failed attempts while down", |d| {
        d["state"] == "pending" && d["attempts"].as_i64() >= Some(2)
    })
    .await;
    assert!(
        pending["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot reach"),
        "{pending}"
    );
    let delivery_id = pending["id"].as_str().unwrap().to_string();

    // Stop the server with the delivery pending, start it again on the same data.
    let admin_token = server.admin_token.clone();
    let (running, _dir) = restart(server).await;
    let raw = Raw {
        url: running.url(),
        token: admin.clone(),
        client: cflow_test_support::server::client(),
    };
    let still = raw.deliveries(&hook_id, "pending").await;
    assert_eq!(
        still.len(),
        1,
        "the pending delivery survived the restart: {still:?}"
    );

    // The receiver comes up: the delivery arrives once, signed, with its stable id.
    let receiver = Receiver::ok(port).await;
    let done = eventually("the delivery after recovery", WAIT, async || {
        raw.deliveries(&hook_id, "delivered").await.pop()
    })
    .await;
    assert_eq!(done["id"], delivery_id.as_str());
    let hits = receiver.hits();
    assert_eq!(hits.len(), 1, "delivered exactly once: {hits:?}");
    let hit = &hits[0];
    hit.verify("the-signing-value");
    assert_eq!(hit.headers["x-cflow-delivery"], delivery_id);
    assert_eq!(hit.headers["x-cflow-event"], "swarm.created");
    let body = hit.json();
    assert_eq!(body["type"], "swarm.created");
    assert_eq!(body["subject"], swarm["id"]);
    assert_eq!(body["hook"]["id"], hook_id.as_str());
    assert!(body["tenant_id"].is_string() && body["at"].is_i64() && body["id"].is_string());

    // A later event is delivered too, and the first one was not sent again meanwhile.
    raw.post(
        "/api/v1/swarms",
        json!({"name": "s2", "topology": "mesh", "agents": coders(0)}),
    )
    .await;
    eventually("the second delivery", WAIT, async || {
        (raw.deliveries(&hook_id, "delivered").await.len() == 2).then_some(())
    })
    .await;
    let ids: Vec<String> = receiver
        .hits()
        .iter()
        .map(|h| h.headers["x-cflow-delivery"].clone())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_ne!(ids[0], ids[1]);
    let metrics = raw.metrics(&admin_token).await;
    assert!(
        metrics.contains("cflow_hook_deliveries_total{outcome=\"delivered\"} 2"),
        "{metrics}"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_down_then_up_is_delivered_once_across_a_restart() {
    down_then_up(fast_server(false).await.unwrap()).await;
    if let Some(s) = fast_server(true).await {
        down_then_up(s).await;
    }
}

async fn dead_letters(server: TestServer) {
    let (_, admin) = server.tenant_with_key("wh-dead", "admin").await;
    let api = Api::new(&server, &admin);
    put_secret(&api, "K", "k-value").await;
    let receiver = Receiver::start(0, Arc::new(|_| (500, json!({"error": "broken"})))).await;
    let hook = add_hook(
        &api,
        json!({"name": "fragile", "events": ["swarm.created"], "url": receiver.url(), "secret": "K",
               "max_attempts": 3}),
    )
    .await;
    let hook_id = hook["id"].as_str().unwrap().to_string();
    api.create_swarm(json!({"name": "d1", "topology": "mesh", "agents": coders(0)}))
        .await;
    let dead = wait_delivery(&api, &hook_id, "a dead letter", |d| d["state"] == "dead").await;
    assert_eq!(dead["attempts"], 3, "{dead}");
    assert_eq!(dead["last_status"], 500, "{dead}");
    assert!(
        dead["last_error"].as_str().unwrap().contains("HTTP 500"),
        "{dead}"
    );
    assert_eq!(receiver.hits().len(), 3, "one request per attempt");
    assert_eq!(deliveries(&api, &hook_id, Some("dead")).await.len(), 1);
    let dead_id = dead["id"].as_str().unwrap().to_string();

    let admin_token = server.admin_token.clone();
    let (running, _dir) = restart(server).await;
    let raw = Raw {
        url: running.url(),
        token: admin.clone(),
        client: cflow_test_support::server::client(),
    };
    let listed = raw.deliveries(&hook_id, "dead").await;
    assert_eq!(listed.len(), 1, "the dead letter survived the restart");
    assert_eq!(listed[0]["id"], dead_id.as_str());
    let gauge = eventually("the dead-letter gauge", WAIT, async || {
        let m = raw.metrics(&admin_token).await;
        m.lines()
            .any(|l| l.starts_with("cflow_hook_dead_letters ") && !l.ends_with(" 0"))
            .then_some(m)
    })
    .await;
    assert!(gauge.contains("cflow_hook_dead_letters"), "{gauge}");

    // Fixed receiver, re-queued: delivered, same delivery id, attempts counted afresh.
    receiver.set_respond(Arc::new(|_| (204, json!(null))));
    let requeued = expect_json(
        raw.post(
            &format!("/api/v1/hooks/deliveries/{dead_id}/retry"),
            json!({}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(requeued["state"], "pending");
    let done = eventually("the re-queued delivery", WAIT, async || {
        raw.deliveries(&hook_id, "delivered").await.pop()
    })
    .await;
    assert_eq!(done["id"], dead_id.as_str());
    assert_eq!(done["attempts"], 1);
    let hits = receiver.hits();
    assert_eq!(hits.len(), 4);
    assert!(
        hits.iter()
            .all(|h| h.headers["x-cflow-delivery"] == dead_id)
    );
    hits[3].verify("k-value");
    let audit = raw.get("/api/v1/audit?limit=1000").await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"hook.create"), "{actions:?}");
    assert!(actions.contains(&"hook.dead"), "{actions:?}");
    assert!(actions.contains(&"hook.retry"), "{actions:?}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_survive_a_restart_and_can_be_requeued() {
    dead_letters(fast_server(false).await.unwrap()).await;
    if let Some(s) = fast_server(true).await {
        dead_letters(s).await;
    }
}

/// Whether a process whose command line contains `marker` is alive on this host.
fn process_alive(marker: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(marker)
            })
            .unwrap_or(false)
    })
}

async fn hanging_command(server: TestServer) {
    let (_, admin) = server.tenant_with_key("cmd-hang", "admin").await;
    let api = Api::new(&server, &admin);
    let marker = format!("{}", 40_000 + std::process::id() % 20_000);
    // A child in the background and one in the foreground: the whole tree must die.
    let command = format!("sleep {marker}1 & sleep {marker}2; wait");
    let hook = add_hook(
        &api,
        json!({"name": "slow", "events": ["task.created"], "command": command,
               "timeout_seconds": 1, "max_attempts": 1}),
    )
    .await;
    let hook_id = hook["id"].as_str().unwrap().to_string();
    let swarm = api
        .create_swarm(json!({"name": "h", "topology": "mesh", "agents": coders(1)}))
        .await;
    let tasks = api
        .submit(json!([{"swarm": swarm["id"], "spec": {"command": "echo hello"}}]))
        .await;
    let task_id = tasks[0]["id"].as_str().unwrap().to_string();
    let dead = wait_delivery(&api, &hook_id, "the hook's timeout", |d| {
        d["state"] == "dead"
    })
    .await;
    let error = dead["last_error"].as_str().unwrap();
    assert!(error.contains("timed out after 1s"), "{error}");
    // The event is recorded in the delivery regardless.
    assert_eq!(dead["payload"]["subject"], task_id.as_str());
    assert_eq!(dead["event_type"], "task.queued");
    assert!(
        !process_alive(&format!("sleep {marker}1")) && !process_alive(&format!("sleep {marker}2")),
        "every process of the hook was killed"
    );
    // The task is unaffected: it runs to success.
    let t = api
        .wait_task(&task_id, &["succeeded", "failed", "cancelled", "timed_out"])
        .await;
    assert_eq!(t["state"], "succeeded", "{t}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_command_hook_is_killed_at_its_timeout() {
    hanging_command(fast_server(false).await.unwrap()).await;
    if let Some(s) = fast_server(true).await {
        hanging_command(s).await;
    }
}
