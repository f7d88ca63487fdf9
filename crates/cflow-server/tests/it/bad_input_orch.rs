//! Rejected orchestration input, one test per class: each asserts the status, the problem type,
//! the field or detail, and that nothing changed (no task, swarm, agent or message was created;
//! a refused report changed no task).

use crate::common::{expect_json, expect_problem};
use crate::orchestration::{Api, coders};
use crate::workers_http::{finished, next_assignment, register, remote_only, report};
use cflow_store::{AuditQuery, PageRequest};
use cflow_test_support::server::TestServer;
use serde_json::{Value, json};

struct Env {
    server: TestServer,
    tenant: String,
    admin: String,
}

async fn env() -> Env {
    let server = TestServer::start_sqlite().await;
    let (tenant, admin) = server.tenant_with_key("acme", "admin").await;
    Env {
        server,
        tenant,
        admin,
    }
}

impl Env {
    fn api(&self) -> Api<'_> {
        Api::new(&self.server, &self.admin)
    }

    /// Submits one task list and expects a 422 naming `field`; checks that no task exists after.
    async fn refused_submission(&self, tasks: Value, field: &str, detail: &str) -> Value {
        let api = self.api();
        let before = api.task_count().await;
        let resp = api.post("/api/v1/tasks", json!({ "tasks": tasks })).await;
        let p = expect_problem(resp, 422, "validation").await;
        assert_eq!(p["field"], field, "{p}");
        let text = p["detail"].as_str().unwrap();
        assert!(text.contains(detail), "{text:?} should mention {detail:?}");
        assert_eq!(api.task_count().await, before, "nothing was submitted");
        p
    }

    async fn refused_swarm(&self, body: Value, field: &str, detail: &str) {
        let api = self.api();
        let before = api.swarm_count().await;
        let p = expect_problem(api.post("/api/v1/swarms", body).await, 422, "validation").await;
        assert_eq!(p["field"], field, "{p}");
        let text = p["detail"].as_str().unwrap();
        assert!(text.contains(detail), "{text:?} should mention {detail:?}");
        assert_eq!(api.swarm_count().await, before, "no swarm was created");
    }

    async fn ledger(&self) -> Vec<cflow_core::audit::AuditEntry> {
        let query = AuditQuery {
            tenant_id: Some(self.tenant.clone()),
            since: None,
        };
        let page = PageRequest {
            cursor: None,
            limit: 1000,
        };
        self.server
            .store
            .audit_list(&query, &page)
            .await
            .unwrap()
            .items
    }
}

fn cmd(c: &str) -> Value {
    json!({ "command": c })
}

#[tokio::test]
async fn dependency_cycle_is_refused() {
    let e = env().await;
    e.refused_submission(
        json!([
            {"local_id": "a", "depends_on": ["c"], "spec": cmd("true")},
            {"local_id": "b", "depends_on": ["a"], "spec": cmd("true")},
            {"local_id": "c", "depends_on": ["b"], "spec": cmd("true")},
        ]),
        "depends_on",
        "cycle",
    )
    .await;
    e.server.shutdown().await;
}

#[tokio::test]
async fn unknown_dependency_is_refused() {
    let e = env().await;
    e.refused_submission(
        json!([
            {"local_id": "a", "spec": cmd("true")},
            {"local_id": "b", "depends_on": ["a", "nope"], "spec": cmd("true")},
        ]),
        "depends_on",
        "unknown task 'nope'",
    )
    .await;
    e.server.shutdown().await;
}

#[tokio::test]
async fn another_tenants_task_is_an_unknown_dependency() {
    let e = env().await;
    let (_, rival) = e.server.tenant_with_key("rival", "admin").await;
    let theirs = Api::new(&e.server, &rival)
        .submit(json!([{"spec": cmd("true")}]))
        .await;
    let their_id = theirs[0]["id"].as_str().unwrap();
    e.refused_submission(
        json!([{"depends_on": [their_id], "spec": cmd("true")}]),
        "depends_on",
        &format!("unknown task '{their_id}'"),
    )
    .await;
    e.server.shutdown().await;
}

#[tokio::test]
async fn priority_above_100_is_refused() {
    let e = env().await;
    e.refused_submission(
        json!([{"spec": cmd("true")}, {"spec": cmd("true"), "priority": 101}]),
        "tasks[1].priority",
        "from 0 to 100",
    )
    .await;
    e.server.shutdown().await;
}

#[tokio::test]
async fn timeouts_of_zero_and_over_a_day_are_refused() {
    let e = env().await;
    for t in [0, 86_401] {
        e.refused_submission(
            json!([{"spec": cmd("true"), "timeout_seconds": t}]),
            "tasks[0].timeout_seconds",
            &format!("got {t}"),
        )
        .await;
    }
    e.server.shutdown().await;
}

#[tokio::test]
async fn quorum_above_replicas_is_refused() {
    let e = env().await;
    e.refused_submission(
        json!([{"spec": cmd("true"), "replicas": 3, "quorum": 4}]),
        "tasks[0].quorum",
        "must not exceed replicas",
    )
    .await;
    e.server.shutdown().await;
}

#[tokio::test]
async fn unknown_topology_is_refused() {
    let e = env().await;
    e.refused_swarm(
        json!({"name": "s", "topology": "tree", "agents": coders(1)}),
        "topology",
        "unknown topology 'tree'",
    )
    .await;
    e.server.shutdown().await;
}

#[tokio::test]
async fn unknown_driver_is_refused() {
    let e = env().await;
    e.refused_swarm(
        json!({"name": "s", "topology": "mesh",
               "agents": [{"type": "coder", "driver": "docker", "min": 1}]}),
        "agents[0].driver",
        "unknown driver 'docker'",
    )
    .await;
    // Spawning into an existing swarm is checked the same way.
    let api = e.api();
    let swarm = api
        .create_swarm(json!({"name": "ok", "topology": "mesh"}))
        .await;
    let path = format!("/api/v1/swarms/{}/agents", swarm["id"].as_str().unwrap());
    let resp = api
        .post(&path, json!({"type": "coder", "driver": "docker"}))
        .await;
    let p = expect_problem(resp, 422, "validation").await;
    assert_eq!(p["field"], "driver");
    let agents = api
        .get_json(&format!(
            "/api/v1/agents?swarm={}",
            swarm["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(agents["items"], json!([]), "no agent was spawned");
    e.server.shutdown().await;
}

#[tokio::test]
async fn malformed_agent_type_is_refused() {
    let e = env().await;
    e.refused_swarm(
        json!({"name": "s", "topology": "mesh",
               "agents": [{"type": "Coder!", "driver": "exec", "min": 1}]}),
        "agents[0].type",
        "not a valid agent type",
    )
    .await;
    e.server.shutdown().await;
}

/// A star swarm: the coordinator is the hub; the two coders are spokes that may not talk to or
/// delegate to each other. Returns `(swarm, hub, spokes)`.
async fn star(api: &Api<'_>) -> (String, String, Vec<String>) {
    let swarm = api
        .create_swarm(json!({"name": "star", "topology": "star", "agents": [
            {"type": "coordinator", "driver": "noop", "min": 1},
            {"type": "coder", "driver": "exec", "min": 2},
        ]}))
        .await;
    let swarm_id = swarm["id"].as_str().unwrap().to_string();
    let agents = api
        .get_json(&format!("/api/v1/agents?swarm={swarm_id}"))
        .await;
    let of_type = |t: &str| -> Vec<String> {
        agents["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["type"] == t)
            .map(|a| a["id"].as_str().unwrap().to_string())
            .collect()
    };
    (swarm_id, of_type("coordinator").remove(0), of_type("coder"))
}

#[tokio::test]
async fn message_the_topology_forbids_is_refused_and_audited() {
    let e = env().await;
    let api = e.api();
    let (swarm_id, hub, spokes) = star(&api).await;
    let path = format!("/api/v1/swarms/{swarm_id}/messages");

    // Allowed: spoke to hub.
    let ok = api
        .post(
            &path,
            json!({"from": spokes[0], "to": hub, "body": {"hello": 1}}),
        )
        .await;
    let sent = expect_json(ok, 201).await;
    assert_eq!(
        (sent["from"].as_str(), sent["to"].as_str()),
        (Some(spokes[0].as_str()), Some(hub.as_str()))
    );

    let before = e.ledger().await.len();
    let resp = api
        .post(
            &path,
            json!({"from": spokes[0], "to": spokes[1], "body": {"psst": true}}),
        )
        .await;
    let p = expect_problem(resp, 403, "forbidden").await;
    let inbox = api
        .get_json(&format!("/api/v1/agents/{}/messages", spokes[1]))
        .await;
    assert_eq!(
        inbox["items"],
        json!([]),
        "the refused message was not stored"
    );
    let hub_inbox = api
        .get_json(&format!("/api/v1/agents/{hub}/messages"))
        .await;
    assert_eq!(hub_inbox["items"].as_array().unwrap().len(), 1);
    let ledger = e.ledger().await;
    let refusal = ledger[before..]
        .iter()
        .find(|entry| entry.action == "message.send")
        .unwrap_or_else(|| panic!("the refusal is in the ledger: {:?}", &ledger[before..]));
    assert_eq!(refusal.outcome, "forbidden");
    assert_eq!(refusal.resource, path);
    assert_eq!(refusal.detail["status"], 403);
    assert_eq!(refusal.detail["reason"], p["detail"]);
    e.server.shutdown().await;
}

#[tokio::test]
async fn worker_reports_with_a_stale_epoch_or_for_tasks_not_held_change_nothing() {
    let server = remote_only().await;
    let (tenant, admin) = server.tenant_with_key("acme", "admin").await;
    let token = server.create_key(&tenant, "acme-worker", "worker").await;
    let api = Api::new(&server, &admin);
    let worker = Api::new(&server, &token);
    // One agent: one of the two tasks is assigned, the other waits for it.
    let swarm = api
        .create_swarm(json!({"name": "s", "topology": "mesh", "agents": coders(1)}))
        .await;
    let tasks = api
        .submit(json!([{"swarm": swarm["id"], "spec": cmd("true")},
                       {"swarm": swarm["id"], "spec": cmd("true")}]))
        .await;
    register(&worker, "w-1").await;
    let a = next_assignment(&worker, "w-1").await;
    let (task, epoch) = (a["task_id"].as_str().unwrap(), a["epoch"].as_i64().unwrap());
    let other = tasks
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .find(|id| *id != task)
        .unwrap();

    // A stale epoch: 409, and the task stays assigned with no attempt started or ended.
    let acks = report(&worker, "w-1", json!([finished(task, epoch - 1, "stale")])).await;
    assert_eq!(acks[0]["status"], 409, "{acks:?}");
    assert!(acks[0]["detail"].is_string());
    let t = api.task(task).await;
    assert_eq!(t["state"], "assigned");
    assert_eq!(t["attempts"][0]["state"], "assigned");
    assert!(t["attempts"][0]["ended_at"].is_null());

    // A task the worker does not hold (queued, never assigned to it): refused, still queued.
    let acks = report(
        &worker,
        "w-1",
        json!([{"type": "started", "task_id": other, "epoch": 1}, finished(other, 1, "forged")]),
    )
    .await;
    for ack in &acks {
        assert!(
            matches!(ack["status"].as_u64(), Some(404 | 409)),
            "{acks:?}"
        );
    }
    let t = api.task(other).await;
    assert_eq!(t["state"], "queued", "{t}");
    assert_eq!(t["attempts"], json!([]));
    server.shutdown().await;
}

#[tokio::test]
async fn delegation_the_topology_forbids_is_refused_and_audited() {
    let e = env().await;
    let api = e.api();
    let (swarm_id, hub, spokes) = star(&api).await;
    let before = api.task_count().await;
    let ledger_before = e.ledger().await.len();
    let resp = api
        .post(
            "/api/v1/tasks",
            json!({"delegated_by": spokes[0],
                   "tasks": [{"agent": spokes[1], "spec": cmd("echo delegated")}]}),
        )
        .await;
    let p = expect_problem(resp, 403, "forbidden").await;
    assert_eq!(api.task_count().await, before, "nothing was submitted");
    let ledger = e.ledger().await;
    let refusal = ledger[ledger_before..]
        .iter()
        .find(|entry| entry.action == "task.submit" && entry.outcome == "forbidden")
        .unwrap_or_else(|| {
            panic!(
                "the refusal is in the ledger: {:?}",
                &ledger[ledger_before..]
            )
        });
    assert_eq!(refusal.detail["reason"], p["detail"]);

    // A delegation without a target agent is invalid; the hub may delegate to a spoke.
    let resp = api
        .post(
            "/api/v1/tasks",
            json!({"delegated_by": hub, "tasks": [{"spec": cmd("true")}]}),
        )
        .await;
    let p = expect_problem(resp, 422, "validation").await;
    assert_eq!(p["field"], "tasks[0].agent");
    let resp = api
        .post(
            "/api/v1/tasks",
            json!({"delegated_by": hub,
                   "tasks": [{"agent": spokes[1], "spec": cmd("echo delegated")}]}),
        )
        .await;
    let body = expect_json(resp, 202).await;
    let id = body["tasks"][0]["id"].as_str().unwrap();
    let t = api.wait_task(id, &["succeeded", "failed"]).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(t["swarm_id"], swarm_id.as_str());
    assert_eq!(
        t["attempts"][0]["agent_id"],
        spokes[1].as_str(),
        "the preferred agent ran it"
    );
    e.server.shutdown().await;
}
