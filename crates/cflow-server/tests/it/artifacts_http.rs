//! Artifacts and attempt details over HTTP: a worker uploads artifacts of the attempt it holds
//! (fenced: another worker, another tenant's worker or a stale epoch is refused, and bad names
//! and oversized bodies change nothing), readers list and download them, the attempt shows what
//! the worker reported (`end`, `isolation`, `sandbox`); and tenant sandbox overrides.

use crate::common::{expect_json, expect_problem};
use crate::orchestration::{Api, coders};
use crate::workers_http::{next_assignment, register, remote_only, remote_only_postgres, report};
use cflow_test_support::server::TestServer;
use serde_json::{Value, json};

fn sha(bytes: &[u8]) -> String {
    cflow_store::sha256_hex(bytes)
}

async fn upload(
    server: &TestServer,
    token: &str,
    worker: &str,
    task: &str,
    epoch: i64,
    name: &str,
    bytes: Vec<u8>,
) -> reqwest::Response {
    let mut url = reqwest::Url::parse(&server.at(&format!(
        "/api/v1/workers/{worker}/attempts/{task}/{epoch}/artifacts"
    )))
    .unwrap();
    url.query_pairs_mut()
        .append_pair("name", name)
        .append_pair("kind", "file");
    server
        .client()
        .put(url)
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap()
}

async fn list(api: &Api<'_>, task: &str) -> Value {
    expect_json(
        api.get(&format!("/api/v1/tasks/{task}/artifacts")).await,
        200,
    )
    .await
}

async fn artifacts(server: TestServer) {
    let (tenant, admin) = server.tenant_with_key("art", "admin").await;
    let worker_token = server.create_key(&tenant, "art-worker", "worker").await;
    let (_, other_admin) = server.tenant_with_key("art-other", "admin").await;
    let (_, other_worker_token) = server.tenant_with_key("art-otherw", "worker").await;
    let api = Api::new(&server, &admin);
    let worker = Api::new(&server, &worker_token);
    let other = Api::new(&server, &other_worker_token);

    let swarm = api
        .create_swarm(json!({"name": "arts", "topology": "mesh", "agents": coders(1)}))
        .await;
    let tasks = api
        .submit(json!([{"swarm": swarm["id"], "spec": {"command": "true"}}]))
        .await;
    let task = tasks[0]["id"].as_str().unwrap().to_string();
    register(&worker, "w-art").await;
    register(&worker, "w-idle").await;
    register(&other, "w-foreign").await;
    let a = next_assignment(&worker, "w-art").await;
    assert_eq!(a["task_id"], task.as_str());
    let epoch = a["epoch"].as_i64().unwrap();

    // Refusals first: each changes nothing.
    let patch = b"--- a\n+++ b\n".to_vec();
    let resp = upload(
        &server,
        &other_worker_token,
        "w-foreign",
        &task,
        epoch,
        "x",
        patch.clone(),
    )
    .await;
    // Another tenant's task does not exist for another tenant's worker.
    expect_problem(resp, 404, "not-found").await;
    let resp = upload(
        &server,
        &other_worker_token,
        "w-art",
        &task,
        epoch,
        "x",
        patch.clone(),
    )
    .await;
    expect_problem(resp, 404, "not-found").await;
    let resp = upload(
        &server,
        &worker_token,
        "w-idle",
        &task,
        epoch,
        "x",
        patch.clone(),
    )
    .await;
    expect_problem(resp, 409, "conflict").await;
    let resp = upload(
        &server,
        &worker_token,
        "w-art",
        &task,
        epoch - 1,
        "x",
        patch.clone(),
    )
    .await;
    expect_problem(resp, 409, "conflict").await;
    for bad in ["../escape", "/etc/passwd", "a/../../b", ""] {
        let resp = upload(
            &server,
            &worker_token,
            "w-art",
            &task,
            epoch,
            bad,
            patch.clone(),
        )
        .await;
        let body = expect_problem(resp, 422, "validation").await;
        assert_eq!(body["field"], "name", "{bad:?}: {body}");
    }
    let resp = upload(
        &server,
        &worker_token,
        "w-art",
        &task,
        epoch,
        "huge.bin",
        vec![0u8; 64 * 1024 * 1024 + 1],
    )
    .await;
    expect_problem(resp, 413, "payload-too-large").await;
    let resp = upload(&server, &admin, "w-art", &task, epoch, "x", patch.clone()).await;
    expect_problem(resp, 403, "forbidden").await;
    assert_eq!(list(&api, &task).await["artifacts"], json!([]));

    // Above the server's general body limit (2 MiB), within the upload's (64 MiB).
    let big = vec![7u8; 3 * 1024 * 1024];
    let resp = upload(
        &server,
        &worker_token,
        "w-art",
        &task,
        epoch,
        "out/big.bin",
        big.clone(),
    )
    .await;
    let stored = expect_json(resp, 201).await;
    assert_eq!(stored["sha256"], sha(&big));
    let resp = upload(
        &server,
        &worker_token,
        "w-art",
        &task,
        epoch,
        "changes.patch",
        patch.clone(),
    )
    .await;
    expect_json(resp, 201).await;

    // The attempt ends with what the worker saw.
    let mut fin = crate::workers_http::finished(&task, epoch, "done");
    fin["outcome"]["detail"] = json!({"end": "exit 0", "isolation": "sandbox: user_ns, pid_ns",
        "sandbox": {"denied": ["ptrace"], "denied_total": 1}});
    let acks = report(&worker, "w-art", json!([fin])).await;
    assert_eq!(acks[0]["status"], 200, "{acks:?}");
    // After the end its own worker may still upload (e.g. a log).
    let resp = upload(
        &server,
        &worker_token,
        "w-art",
        &task,
        epoch,
        "run.log",
        b"log".to_vec(),
    )
    .await;
    expect_json(resp, 201).await;

    let detail = expect_json(api.get(&format!("/api/v1/tasks/{task}")).await, 200).await;
    let attempt = &detail["attempts"][0];
    assert_eq!(attempt["end"], "exit 0", "{detail}");
    assert_eq!(attempt["isolation"], "sandbox: user_ns, pid_ns");
    assert_eq!(attempt["sandbox"]["denied"], json!(["ptrace"]));

    let listed = list(&api, &task).await;
    let names: Vec<&str> = listed["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["changes.patch", "out/big.bin", "run.log"]);
    let first = &listed["artifacts"][0];
    assert_eq!(first["attempt"], 1);
    assert_eq!(first["size"], patch.len());
    let url = first["url"].as_str().unwrap();
    assert_eq!(
        url,
        format!("/api/v1/tasks/{task}/artifacts/{}", sha(&patch))
    );
    let resp = api.get(url).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-disposition"],
        "attachment; filename=\"changes.patch\"; filename*=UTF-8''changes.patch"
    );
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), patch.as_slice());

    let missing = format!("/api/v1/tasks/{task}/artifacts/{}", sha(b"nothing"));
    expect_problem(api.get(&missing).await, 404, "not-found").await;
    let other_api = Api::new(&server, &other_admin);
    expect_problem(other_api.get(url).await, 404, "not-found").await;
    let resp = other_api
        .get(&format!("/api/v1/tasks/{task}/artifacts"))
        .await;
    expect_problem(resp, 404, "not-found").await;
    server.shutdown().await;
}

#[tokio::test]
async fn artifacts_are_fenced_stored_and_served_on_sqlite() {
    artifacts(remote_only().await).await;
}

#[tokio::test]
async fn artifacts_are_fenced_stored_and_served_on_postgres() {
    let Some(server) = remote_only_postgres().await else {
        eprintln!("skipped: no PostgreSQL configured (set CFLOW_TEST_DATABASE_URL)");
        return;
    };
    artifacts(server).await;
}

async fn sandbox_overrides(server: TestServer) {
    let (tenant, admin) = server.tenant_with_key("sbx", "admin").await;
    let viewer = server.create_key(&tenant, "sbx-viewer", "viewer").await;
    let root = Api::new(&server, &server.admin_token);
    let path = format!("/api/v1/tenants/{tenant}/sandbox");
    let put = async |token: &str, body: Value| {
        server
            .client()
            .put(server.at(&path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    };
    let v = json!({"mode": "enforce", "network": "loopback", "allow_degraded": true,
        "limits": {"memory_bytes": 268435456, "max_processes": 64}});
    let body = expect_json(put(&server.admin_token, v.clone()).await, 200).await;
    assert_eq!(body["sandbox"], v);
    // The tenant's admin reads them but may not change them; a viewer may do neither.
    let got = expect_json(Api::new(&server, &admin).get(&path).await, 200).await;
    assert_eq!(got["sandbox"], v);
    let resp = put(&admin, json!({"mode": "off"})).await;
    expect_problem(resp, 403, "forbidden").await;
    let resp = Api::new(&server, &viewer).get(&path).await;
    expect_problem(resp, 403, "forbidden").await;
    for (bad, field) in [
        (json!({"mode": "lenient"}), "mode"),
        (json!({"network": "internet"}), "network"),
        (json!({"limits": {"cpu_seconds": 0}}), "limits.cpu_seconds"),
        (json!({"limits": {"gpus": 1}}), "limits.gpus"),
        (json!({"seccomp": false}), "seccomp"),
        (json!(["enforce"]), "sandbox"),
    ] {
        let body = expect_problem(
            put(&server.admin_token, bad.clone()).await,
            422,
            "validation",
        )
        .await;
        assert_eq!(body["field"], field, "{bad}: {body}");
    }
    let got = expect_json(root.get(&path).await, 200).await;
    assert_eq!(got["sandbox"], v, "refused overrides changed nothing");
    // `{}` clears them.
    let body = expect_json(put(&server.admin_token, json!({})).await, 200).await;
    assert_eq!(body["sandbox"], Value::Null);
    assert_eq!(server.store.tenant_sandbox(&tenant).await.unwrap(), None);
    server.shutdown().await;
}

#[tokio::test]
async fn tenant_sandbox_overrides_on_sqlite() {
    sandbox_overrides(TestServer::start_sqlite().await).await;
}

#[tokio::test]
async fn tenant_sandbox_overrides_on_postgres() {
    let Some(server) = TestServer::start_postgres().await else {
        eprintln!("skipped: no PostgreSQL configured (set CFLOW_TEST_DATABASE_URL)");
        return;
    };
    sandbox_overrides(server).await;
}
