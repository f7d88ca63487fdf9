//! The worker protocol over HTTP with a `worker` key, on a server without a local pool
//! (`local_slots = 0`): register, long-poll for an assignment, report started and finished,
//! fencing (a stale epoch and a task the worker does not hold are refused per report), tenant
//! isolation of workers, and refusal of every other role.

use crate::common::{eventually, expect_json, expect_problem};
use crate::orchestration::{Api, RUN_TIMEOUT, coders};
use cflow_test_support::server::TestServer;
use serde_json::{Value, json};

pub async fn remote_only() -> TestServer {
    TestServer::start_with(|c| c.sched.local_slots = 0).await
}

pub async fn remote_only_postgres() -> Option<TestServer> {
    TestServer::start_postgres_with(|c| c.sched.local_slots = 0).await
}

/// Registers a worker `id` with `api`'s key.
pub async fn register(api: &Api<'_>, id: &str) -> Value {
    let body = json!({"worker_id": id, "name": format!("{id}.test"), "slots": 2,
                      "drivers": ["exec", "noop"], "labels": {"zone": "test"}});
    expect_json(api.post("/api/v1/workers", body).await, 201).await
}

/// Polls until the worker gets an assignment; returns it.
pub async fn next_assignment(api: &Api<'_>, worker: &str) -> Value {
    eventually("an assignment", RUN_TIMEOUT, async || {
        let resp = api
            .post(
                &format!("/api/v1/workers/{worker}/poll"),
                json!({"free_slots": 1, "wait_ms": 2000}),
            )
            .await;
        let answer = expect_json(resp, 200).await;
        answer["assignments"].as_array().unwrap().first().cloned()
    })
    .await
}

pub async fn report(api: &Api<'_>, worker: &str, reports: Value) -> Vec<Value> {
    let resp = api
        .post(
            &format!("/api/v1/workers/{worker}/reports"),
            json!({ "reports": reports }),
        )
        .await;
    let body = expect_json(resp, 200).await;
    body["acks"].as_array().expect("acks").clone()
}

pub fn finished(task: &str, epoch: i64, stdout: &str) -> Value {
    json!({"type": "finished", "task_id": task, "epoch": epoch, "outcome": {
        "status": "succeeded", "exit_code": 0, "stdout": stdout, "wall_ms": 3,
        "isolation": "none: test worker", "result": {"by": "test"}}})
}

async fn protocol(server: TestServer) {
    let (tenant, admin) = server.tenant_with_key("acme", "admin").await;
    let worker_token = server.create_key(&tenant, "acme-worker", "worker").await;
    let (_, other_worker_token) = server.tenant_with_key("other", "worker").await;
    let api = Api::new(&server, &admin);
    let worker = Api::new(&server, &worker_token);
    let other = Api::new(&server, &other_worker_token);

    let swarm = api
        .create_swarm(json!({"name": "remote", "topology": "mesh", "agents": coders(1)}))
        .await;
    let swarm_id = swarm["id"].as_str().unwrap();
    let tasks = api
        .submit(json!([{"swarm": swarm_id, "spec": {"command": "echo remote"}}]))
        .await;
    let task = tasks[0]["id"].as_str().unwrap().to_string();

    // Another tenant's worker never sees this tenant's task.
    let reg = register(&other, "w-other").await;
    assert_eq!(reg["worker_id"], "w-other");
    let resp = other
        .post(
            "/api/v1/workers/w-other/poll",
            json!({"free_slots": 2, "wait_ms": 300}),
        )
        .await;
    let answer = expect_json(resp, 200).await;
    assert_eq!(answer, json!({"assignments": [], "cancel": []}));

    let reg = register(&worker, "w-1").await;
    assert_eq!(reg["worker_id"], "w-1");
    assert!(reg["lease_ms"].as_u64().unwrap() > 0 && reg["heartbeat_ms"].as_u64().unwrap() > 0);
    // The other tenant cannot poll, report for or remove this worker.
    let resp = other
        .post("/api/v1/workers/w-1/poll", json!({"free_slots": 1}))
        .await;
    expect_problem(resp, 404, "not-found").await;

    let a = next_assignment(&worker, "w-1").await;
    assert_eq!(a["task_id"], task.as_str());
    assert_eq!(a["tenant_id"], tenant.as_str());
    assert_eq!(a["driver"], "exec");
    assert_eq!(a["attempt"], 1);
    assert_eq!(a["spec"], json!({"command": "echo remote"}));
    let epoch = a["epoch"].as_i64().unwrap();
    assert_eq!(api.task(&task).await["state"], "assigned");

    // The workers listing: the tenant sees its own worker, not the other tenant's.
    let list = api.get_json("/api/v1/workers").await;
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"w-1") && !ids.contains(&"w-other"), "{list}");

    // Fencing: a stale epoch and a task the worker does not hold are refused, one ack each.
    // The start happened 250 ms before its report was sent (it waited behind another report):
    // the server records it that much earlier, on its own clock.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let before = crate::common::now_ms();
    let acks = report(
        &worker,
        "w-1",
        json!([
            {"type": "started", "task_id": task, "epoch": epoch - 1},
            {"type": "started", "task_id": "0190aaaa-0000-7000-8000-000000000000", "epoch": 1},
            {"type": "started", "task_id": task, "epoch": epoch, "waited_ms": 250},
        ]),
    )
    .await;
    let after = crate::common::now_ms();
    let attempt = server
        .state()
        .store
        .list_attempts(&tenant, &task)
        .await
        .unwrap()
        .remove(0);
    let started = attempt.started_at.unwrap();
    assert!(
        (before - 250..=after - 250).contains(&started) && started >= attempt.assigned_at,
        "started_at {started} not 250 ms before the report ({before}..{after}): {attempt:?}"
    );
    assert_eq!(acks[0]["status"], 409, "{acks:?}");
    assert!(
        matches!(acks[1]["status"].as_u64(), Some(404 | 409)),
        "{acks:?}"
    );
    assert_eq!(acks[2]["status"], 200, "{acks:?}");
    assert_eq!(api.task(&task).await["state"], "running");
    let acks = report(&other, "w-other", json!([finished(&task, epoch, "forged")])).await;
    assert!(
        matches!(acks[0]["status"].as_u64(), Some(404 | 409)),
        "{acks:?}"
    );

    let acks = report(&worker, "w-1", json!([finished(&task, epoch, "remote\n")])).await;
    assert_eq!(acks[0]["status"], 200, "{acks:?}");
    let t = api.wait_task(&task, &["succeeded"]).await;
    assert_eq!(t["attempts"][0]["worker_id"], "w-1");
    assert_eq!(t["attempts"][0]["stdout"], "remote\n");
    assert_eq!(t["result"], json!({"by": "test"}));
    // A second finish of the same attempt is stale.
    let acks = report(&worker, "w-1", json!([finished(&task, epoch, "again")])).await;
    assert_eq!(acks[0]["status"], 409, "{acks:?}");

    let resp = server
        .client()
        .delete(server.at("/api/v1/workers/w-1"))
        .bearer_auth(&worker_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = worker
        .post("/api/v1/workers/w-1/poll", json!({"free_slots": 1}))
        .await;
    expect_problem(resp, 404, "not-found").await;
    server.shutdown().await;
}

#[tokio::test]
async fn worker_protocol_over_http_on_sqlite() {
    protocol(remote_only().await).await;
}

#[tokio::test]
async fn worker_protocol_over_http_on_postgres() {
    let Some(server) = remote_only_postgres().await else {
        eprintln!("skipped: no PostgreSQL configured (set CFLOW_TEST_DATABASE_URL)");
        return;
    };
    protocol(server).await;
}

/// Only `worker` keys (and the superadmin) may use the worker routes; a worker key may use
/// nothing else.
#[tokio::test]
async fn worker_routes_are_for_worker_keys_only() {
    let server = remote_only().await;
    let (tenant, admin) = server.tenant_with_key("acme", "admin").await;
    let dev = server.create_key(&tenant, "acme-dev", "developer").await;
    let worker_token = server.create_key(&tenant, "acme-worker", "worker").await;
    let worker = Api::new(&server, &worker_token);
    register(&worker, "w-1").await;
    for token in [&admin, &dev] {
        let api = Api::new(&server, token);
        let body = json!({"name": "x", "slots": 1, "drivers": ["exec"]});
        expect_problem(api.post("/api/v1/workers", body).await, 403, "forbidden").await;
        let resp = api
            .post("/api/v1/workers/w-1/poll", json!({"free_slots": 1}))
            .await;
        expect_problem(resp, 403, "forbidden").await;
        let resp = api
            .post("/api/v1/workers/w-1/reports", json!({"reports": []}))
            .await;
        expect_problem(resp, 403, "forbidden").await;
        let resp = server
            .client()
            .delete(server.at("/api/v1/workers/w-1"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        expect_problem(resp, 403, "forbidden").await;
    }
    for path in [
        "/api/v1/swarms",
        "/api/v1/tasks",
        "/api/v1/events",
        "/api/v1/workers",
    ] {
        expect_problem(worker.get(path).await, 403, "forbidden").await;
    }
    let resp = worker
        .post(
            "/api/v1/tasks",
            json!({"tasks": [{"spec": {"command": "true"}}]}),
        )
        .await;
    expect_problem(resp, 403, "forbidden").await;
    // The superadmin may connect a platform-wide worker.
    let sa = Api::new(&server, &server.admin_token);
    let reg = register(&sa, "w-platform").await;
    assert_eq!(reg["worker_id"], "w-platform");
    let list = Api::new(&server, &admin).get_json("/api/v1/workers").await;
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == "w-platform" && w["tenant_id"].is_null()),
        "{list}"
    );
    server.shutdown().await;
}

/// A worker id belongs to its tenant: another tenant's worker key may not take it over, least of
/// all the local pool's (the local pool would then serve only the other tenant).
#[tokio::test]
async fn another_tenant_cannot_take_over_a_worker_id() {
    let server = TestServer::start_sqlite().await;
    let (_, admin) = server.tenant_with_key("acme", "admin").await;
    let (_, rival) = server.tenant_with_key("rival", "worker").await;
    let rival = Api::new(&server, &rival);
    let body = json!({"worker_id": "local", "name": "x", "slots": 1, "drivers": ["exec"]});
    expect_problem(rival.post("/api/v1/workers", body).await, 409, "conflict").await;
    let api = Api::new(&server, &admin);
    let list = api.get_json("/api/v1/workers").await;
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == "local"),
        "{list}"
    );
    let swarm = api
        .create_swarm(json!({"name": "s", "topology": "mesh", "agents": coders(1)}))
        .await;
    let t = api
        .submit(json!([{"swarm": swarm["id"], "spec": {"command": "echo hi"}}]))
        .await;
    let id = t[0]["id"].as_str().unwrap();
    assert_eq!(
        api.wait_task(id, &["succeeded", "failed"]).await["state"],
        "succeeded"
    );
    server.shutdown().await;
}
