//! Hooks through the whole server (SQLite and PostgreSQL): pre-task veto and amend by a
//! sandboxed command and by a signed webhook, bad input (422, nothing stored), roles (a viewer
//! lists but cannot add), tenant isolation (404), and the submit path of a tenant without hooks.
//! The outbox (retries, restarts, dead letters, timeouts) is in `hooks_outbox`. The helpers here
//! (a webhook receiver, signature check) are shared with it.

use crate::common::{eventually, expect_json, expect_problem};
use crate::orchestration::{Api, coders};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use cflow_test_support::server::TestServer;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const WAIT: Duration = Duration::from_secs(60);

/// What a receiver was sent: its headers (lower-case names) and body.
#[derive(Debug, Clone)]
pub struct Hit {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Hit {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// Checks `X-Cflow-Signature` against HMAC-SHA256(key, "<timestamp>.<body>"), recomputed
    /// here independently of the server's code.
    pub fn verify(&self, key: &str) {
        let ts = &self.headers["x-cflow-timestamp"];
        let sig = self.headers["x-cflow-signature"]
            .strip_prefix("sha256=")
            .expect("sha256= prefix");
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(format!("{ts}.").as_bytes());
        mac.update(&self.body);
        mac.verify_slice(&hex::decode(sig).expect("hex signature"))
            .expect("the signature verifies with the secret's value");
    }
}

type Respond = Arc<dyn Fn(&Value) -> (u16, Value) + Send + Sync>;

#[derive(Clone)]
struct RecvState {
    hits: Arc<Mutex<Vec<Hit>>>,
    respond: Arc<Mutex<Respond>>,
}

/// A webhook receiver on a real socket.
pub struct Receiver {
    pub port: u16,
    state: RecvState,
    task: tokio::task::JoinHandle<()>,
}

/// A free port on 127.0.0.1 (nothing listens on it until a receiver starts there).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn handle(
    State(s): State<RecvState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, axum::Json<Value>) {
    let hit = Hit {
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: body.to_vec(),
    };
    let parsed: Value = serde_json::from_slice(&hit.body).unwrap_or(Value::Null);
    s.hits.lock().unwrap().push(hit);
    let respond = s.respond.lock().unwrap().clone();
    let (status, reply) = respond(&parsed);
    (StatusCode::from_u16(status).unwrap(), axum::Json(reply))
}

impl Receiver {
    /// Starts a receiver on `port` (0: any) answering with `respond`.
    pub async fn start(port: u16, respond: Respond) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the receiver");
        let port = listener.local_addr().unwrap().port();
        let state = RecvState {
            hits: Arc::default(),
            respond: Arc::new(Mutex::new(respond)),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(handle))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { port, state, task }
    }

    /// A receiver that answers 200 `{}` to everything.
    pub async fn ok(port: u16) -> Receiver {
        Self::start(port, Arc::new(|_| (200, json!({})))).await
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().unwrap().clone()
    }

    pub fn set_respond(&self, respond: Respond) {
        *self.state.respond.lock().unwrap() = respond;
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server whose hook sender retries fast (tests wait for retries, never sleep for them).
pub async fn fast_server(postgres: bool) -> Option<TestServer> {
    let fast = |c: &mut cflow_server::ServerConfig| {
        c.hooks.retry_base_ms = 50;
        c.hooks.retry_max_ms = 200;
        c.hooks.poll_ms = 50;
    };
    if postgres {
        TestServer::start_postgres_with(fast).await
    } else {
        Some(TestServer::start_with(fast).await)
    }
}

pub async fn put_secret(api: &Api<'_>, name: &str, value: &str) {
    let resp = api
        .server
        .client()
        .put(api.server.at(&format!("/api/v1/secrets/{name}")))
        .bearer_auth(&api.token)
        .json(&json!({ "value": value }))
        .send()
        .await
        .unwrap();
    expect_json(resp, 200).await;
}

pub async fn add_hook(api: &Api<'_>, body: Value) -> Value {
    expect_json(api.post("/api/v1/hooks", body).await, 201).await
}

pub async fn deliveries(api: &Api<'_>, hook: &str, state: Option<&str>) -> Vec<Value> {
    let q = state.map(|s| format!("?state={s}")).unwrap_or_default();
    let page = api
        .get_json(&format!("/api/v1/hooks/{hook}/deliveries{q}"))
        .await;
    page["items"].as_array().unwrap().clone()
}

/// Waits until the hook has a delivery matching `pred`; returns it.
pub async fn wait_delivery(
    api: &Api<'_>,
    hook: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    eventually(what, WAIT, async || {
        deliveries(api, hook, None)
            .await
            .into_iter()
            .find(|d| pred(d))
    })
    .await
}

async fn delete(api: &Api<'_>, path: &str) -> reqwest::Response {
    api.server
        .client()
        .delete(api.server.at(path))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap()
}

/// What a pre-task hook decides in these tests: tasks whose command mentions `forbidden` are
/// refused; others get a label and priority 7.
const DECIDE: &str = r#"input=$(cat)
case "$input" in
  *forbidden*) echo '{"decision":"deny","reason":"no forbidden work here"}' ;;
  *) echo '{"decision":"allow","amend":{"labels":{"checked":"yes"},"priority":7}}' ;;
esac"#;

async fn veto_and_amend(api: &Api<'_>, hook_id: &str, hook_name: &str) {
    let before = api.task_count().await;
    let refused = api
        .post(
            "/api/v1/tasks",
            json!({"tasks": [
                {"local_id": "a", "spec": {"command": "true"}},
                {"local_id": "b", "spec": {"command": "echo forbidden"}},
            ]}),
        )
        .await;
    let body = expect_problem(refused, 403, "forbidden").await;
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains(hook_name), "{detail}");
    assert!(detail.contains("no forbidden work here"), "{detail}");
    assert!(detail.contains("tasks[1]"), "{detail}");
    assert_eq!(
        api.task_count().await,
        before,
        "a refused submission stores nothing"
    );

    let tasks = api
        .submit(json!([{"spec": {"command": "true"}, "labels": {"team": "web"}, "priority": 1}]))
        .await;
    let task = api.task(tasks[0]["id"].as_str().unwrap()).await;
    assert_eq!(
        task["labels"],
        json!({"team": "web", "checked": "yes"}),
        "{task}"
    );
    assert_eq!(task["priority"], 7, "{task}");

    // Every check is recorded as a delivery of event type pre-task.
    let seen = deliveries(api, hook_id, Some("delivered")).await;
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(seen.iter().all(|d| d["event_type"] == "pre-task"));
    // The audit ledger has the refusal with the hook's reason.
    let audit = api.get_json("/api/v1/audit?limit=1000").await;
    let refused = audit["items"].as_array().unwrap().iter().any(|e| {
        e["action"] == "task.submit"
            && e["outcome"] == "forbidden"
            && e["detail"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains(hook_name))
    });
    assert!(refused, "{audit}");
}

async fn pre_task_command(server: TestServer) {
    let (_, admin) = server.tenant_with_key("pre-cmd", "admin").await;
    let api = Api::new(&server, &admin);
    let hook = add_hook(
        &api,
        json!({"name": "gate", "events": ["pre-task"], "command": DECIDE}),
    )
    .await;
    assert_eq!(hook["kind"], "command");
    veto_and_amend(&api, hook["id"].as_str().unwrap(), "gate").await;
    server.shutdown().await;
}

async fn pre_task_webhook(server: TestServer) {
    let (_, admin) = server.tenant_with_key("pre-web", "admin").await;
    let api = Api::new(&server, &admin);
    put_secret(&api, "GATE_KEY", "s3cret-gate-value").await;
    let receiver = Receiver::start(
        0,
        Arc::new(|body: &Value| {
            let spec = body["data"]["task"]["spec"].to_string();
            if spec.contains("forbidden") {
                (200, json!({"decision": "deny", "reason": "no forbidden work here"}))
            } else {
                (200, json!({"decision": "allow", "amend": {"labels": {"checked": "yes"}, "priority": 7}}))
            }
        }),
    )
    .await;
    let hook = add_hook(
        &api,
        json!({"name": "web-gate", "events": ["pre-task"], "url": receiver.url(), "secret": "GATE_KEY"}),
    )
    .await;
    veto_and_amend(&api, hook["id"].as_str().unwrap(), "web-gate").await;
    let hits = receiver.hits();
    assert!(hits.len() >= 3);
    for h in &hits {
        h.verify("s3cret-gate-value");
        assert_eq!(h.headers["x-cflow-event"], "pre-task");
        assert_eq!(h.json()["hook"]["name"], "web-gate");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_task_hooks_veto_and_amend() {
    pre_task_command(TestServer::start_sqlite().await).await;
    pre_task_webhook(TestServer::start_sqlite().await).await;
    if let Some(s) = TestServer::start_postgres().await {
        pre_task_command(s).await;
    }
    if let Some(s) = TestServer::start_postgres().await {
        pre_task_webhook(s).await;
    }
}

async fn bad_input_roles_and_isolation(server: TestServer) {
    let (tenant, admin) = server.tenant_with_key("hk-bad", "admin").await;
    let api = Api::new(&server, &admin);
    put_secret(&api, "KEY", "v").await;
    let cases = [
        (
            json!({"name": "x", "events": ["task.finished"], "command": "true"}),
            "events[0]",
            "unknown event pattern",
        ),
        (
            json!({"name": "x", "events": [], "command": "true"}),
            "events",
            "1 to 32",
        ),
        (
            json!({"name": "x", "events": ["*"], "url": "ftp://example.com/x", "secret": "KEY"}),
            "url",
            "http",
        ),
        (
            json!({"name": "x", "events": ["*"], "url": "http://127.0.0.1:9/x", "secret": "NOPE"}),
            "secret",
            "cflow secret set NOPE",
        ),
        (
            json!({"name": "x", "events": ["*"], "url": "http://127.0.0.1:9/x"}),
            "secret",
            "needs 'secret'",
        ),
        (
            json!({"name": "x", "events": ["*"]}),
            "command",
            "needs a handler",
        ),
        (
            json!({"name": "x", "events": ["*"], "command": "true", "timeout_seconds": 301}),
            "timeout_seconds",
            "1 to 300",
        ),
        (
            json!({"name": "x", "events": ["*"], "command": "true", "timeout_seconds": 0}),
            "timeout_seconds",
            "1 to 300",
        ),
        (
            json!({"name": "x", "events": ["*"], "command": "true", "scope": "swarm:nope"}),
            "scope",
            "no swarm 'nope'",
        ),
        (
            json!({"name": "x", "events": ["*"], "command": "true", "scope": "project:ghost"}),
            "scope",
            "no project 'ghost'",
        ),
        (
            json!({"name": "x", "events": ["*"], "command": "true", "scope": "galaxy"}),
            "scope",
            "not a scope",
        ),
        (
            json!({"name": "bad name", "events": ["*"], "command": "true"}),
            "name",
            "",
        ),
        (
            json!({"name": "x", "events": ["*"], "command": "true", "max_attempts": 0}),
            "max_attempts",
            "1 to 50",
        ),
    ];
    for (body, field, words) in cases {
        let resp = api.post("/api/v1/hooks", body.clone()).await;
        let p = expect_problem(resp, 422, "validation").await;
        assert_eq!(p["field"], field, "{body} → {p}");
        assert!(
            p["detail"].as_str().unwrap().contains(words),
            "{body} → {p}"
        );
    }
    let listed = api.get_json("/api/v1/hooks").await;
    assert_eq!(listed["items"], json!([]), "nothing was stored");

    let hook = add_hook(
        &api,
        json!({"name": "ok", "events": ["task.*"], "command": "true"}),
    )
    .await;
    let id = hook["id"].as_str().unwrap();
    let dup = api
        .post(
            "/api/v1/hooks",
            json!({"name": "ok", "events": ["*"], "command": "true"}),
        )
        .await;
    expect_problem(dup, 409, "conflict").await;

    // A viewer lists and reads, but cannot add, delete or test.
    let viewer_token = server.create_key(&tenant, "watcher", "viewer").await;
    let viewer = Api::new(&server, &viewer_token);
    assert_eq!(viewer.get_json("/api/v1/hooks").await["items"][0]["id"], id);
    viewer
        .get_json(&format!("/api/v1/hooks/{id}/deliveries"))
        .await;
    let add = viewer
        .post(
            "/api/v1/hooks",
            json!({"name": "v", "events": ["*"], "command": "true"}),
        )
        .await;
    expect_problem(add, 403, "forbidden").await;
    expect_problem(
        delete(&viewer, &format!("/api/v1/hooks/{id}")).await,
        403,
        "forbidden",
    )
    .await;
    expect_problem(
        viewer.post_empty(&format!("/api/v1/hooks/{id}/test")).await,
        403,
        "forbidden",
    )
    .await;

    // Another tenant sees nothing of it.
    let (_, other_admin) = server.tenant_with_key("hk-other", "admin").await;
    let other = Api::new(&server, &other_admin);
    assert_eq!(other.get_json("/api/v1/hooks").await["items"], json!([]));
    expect_problem(
        other.get(&format!("/api/v1/hooks/{id}")).await,
        404,
        "not-found",
    )
    .await;
    expect_problem(
        other.get(&format!("/api/v1/hooks/{id}/deliveries")).await,
        404,
        "not-found",
    )
    .await;
    expect_problem(
        delete(&other, &format!("/api/v1/hooks/{id}")).await,
        404,
        "not-found",
    )
    .await;
    expect_problem(
        other.post_empty(&format!("/api/v1/hooks/{id}/test")).await,
        404,
        "not-found",
    )
    .await;
    expect_problem(
        other
            .post_empty("/api/v1/hooks/deliveries/nope/retry")
            .await,
        404,
        "not-found",
    )
    .await;
    let bad_state = api
        .get(&format!("/api/v1/hooks/{id}/deliveries?state=lost"))
        .await;
    expect_problem(bad_state, 400, "bad-request").await;

    // The test route runs the command for real; a delivered delivery is not re-queued.
    let tested = expect_json(
        api.post_empty(&format!("/api/v1/hooks/{id}/test")).await,
        200,
    )
    .await;
    assert_eq!(tested["ok"], true, "{tested}");
    let did = tested["delivery_id"].as_str().unwrap();
    let again = api
        .post_empty(&format!("/api/v1/hooks/deliveries/{did}/retry"))
        .await;
    expect_problem(again, 409, "conflict").await;

    assert_eq!(
        delete(&api, &format!("/api/v1/hooks/{id}")).await.status(),
        204
    );
    assert_eq!(api.get_json("/api/v1/hooks").await["items"], json!([]));
    expect_problem(
        api.get(&format!("/api/v1/hooks/{id}")).await,
        404,
        "not-found",
    )
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_input_roles_and_tenants() {
    bad_input_roles_and_isolation(TestServer::start_sqlite().await).await;
    if let Some(s) = TestServer::start_postgres().await {
        bad_input_roles_and_isolation(s).await;
    }
}

/// A tenant without hooks submits exactly as before, even while another tenant's pre-task hook
/// refuses everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_without_hooks_are_unchanged() {
    let server = TestServer::start_sqlite().await;
    let (_, strict) = server.tenant_with_key("strict", "admin").await;
    let strict = Api::new(&server, &strict);
    let deny = r#"echo '{"decision":"deny","reason":"closed"}'"#;
    add_hook(
        &strict,
        json!({"name": "closed", "events": ["pre-task"], "command": deny}),
    )
    .await;
    let refused = strict
        .post(
            "/api/v1/tasks",
            json!({"tasks": [{"spec": {"command": "true"}}]}),
        )
        .await;
    expect_problem(refused, 403, "forbidden").await;

    let (_, free) = server.tenant_with_key("free", "admin").await;
    let free = Api::new(&server, &free);
    let tasks = free
        .submit(json!([{"spec": {"command": "true"}, "labels": {"a": "b"}, "priority": 3}]))
        .await;
    let t = free.task(tasks[0]["id"].as_str().unwrap()).await;
    assert_eq!(t["labels"], json!({"a": "b"}));
    assert_eq!(t["priority"], 3);
    assert_eq!(free.get_json("/api/v1/hooks").await["items"], json!([]));
    server.shutdown().await;
}

/// Memory writes are events too: a webhook on `memory.*` gets the write (never the value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_writes_reach_hooks() {
    let server = TestServer::start_sqlite().await;
    let (_, admin) = server.tenant_with_key("mem-hooks", "admin").await;
    let api = Api::new(&server, &admin);
    put_secret(&api, "MEM_KEY", "mem-signing-value").await;
    let receiver = Receiver::ok(0).await;
    add_hook(
        &api,
        json!({"name": "mem", "events": ["memory.*"], "url": receiver.url(), "secret": "MEM_KEY"}),
    )
    .await;
    let put = api
        .server
        .client()
        .put(server.at("/api/v1/memory/notes/plan"))
        .bearer_auth(&admin)
        .json(&json!({"value": "private-value-123"}))
        .send()
        .await
        .unwrap();
    expect_json(put, 200).await;
    let hit = eventually("the memory.written delivery", WAIT, async || {
        receiver.hits().into_iter().next()
    })
    .await;
    hit.verify("mem-signing-value");
    let body = hit.json();
    assert_eq!(body["type"], "memory.written");
    assert_eq!(body["subject"], "notes/plan");
    assert_eq!(body["data"]["version"], 1);
    assert!(!String::from_utf8_lossy(&hit.body).contains("private-value-123"));
    server.shutdown().await;
}

async fn patch(api: &Api<'_>, path: &str, body: Value) -> reqwest::Response {
    api.server
        .client()
        .patch(api.server.at(path))
        .bearer_auth(&api.token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// A hook turned off gets no deliveries for the events meanwhile; turned on again, it gets the
/// next ones. Only its tenant's admins may toggle it; a bad body changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_hook_gets_no_deliveries_until_enabled_again() {
    let server = TestServer::start_sqlite().await;
    let (tenant, admin) = server.tenant_with_key("toggle", "admin").await;
    let api = Api::new(&server, &admin);
    put_secret(&api, "T_KEY", "toggle-key").await;
    let receiver = Receiver::ok(0).await;
    let hook = add_hook(
        &api,
        json!({"name": "swarms", "events": ["swarm.created"], "url": receiver.url(),
               "secret": "T_KEY"}),
    )
    .await;
    let id = hook["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/hooks/{id}");
    let swarm = async |name: &str| {
        api.create_swarm(json!({"name": name, "topology": "mesh", "agents": coders(0)}))
            .await["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let first = swarm("s1").await;
    eventually("the first delivery", WAIT, async || {
        (receiver.hits().len() == 1).then_some(())
    })
    .await;

    for bad in [
        json!({"enabled": "no"}),
        json!({"enabled": false, "name": "x"}),
        json!({}),
    ] {
        let resp = patch(&api, &path, bad.clone()).await;
        assert!(resp.status().is_client_error(), "{bad}: {}", resp.status());
    }
    let viewer = server.create_key(&tenant, "toggle-viewer", "viewer").await;
    let as_viewer = Api::new(&server, &viewer);
    expect_problem(
        patch(&as_viewer, &path, json!({"enabled": false})).await,
        403,
        "forbidden",
    )
    .await;
    let (_, other) = server.tenant_with_key("toggle-other", "admin").await;
    let as_other = Api::new(&server, &other);
    expect_problem(
        patch(&as_other, &path, json!({"enabled": false})).await,
        404,
        "not-found",
    )
    .await;
    assert_eq!(
        api.get_json(&path).await["enabled"],
        true,
        "unchanged so far"
    );

    let off = expect_json(patch(&api, &path, json!({"enabled": false})).await, 200).await;
    assert_eq!(off["enabled"], false, "{off}");
    // Turned on again at once: s2's event may still wait to be matched, and it is matched
    // against the hook as it was when s2 was created (off).
    let skipped = swarm("s2").await;
    let on = expect_json(patch(&api, &path, json!({"enabled": true})).await, 200).await;
    assert_eq!(on["enabled"], true, "{on}");
    let third = swarm("s3").await;
    eventually("the delivery after re-enabling", WAIT, async || {
        (receiver.hits().len() >= 2).then_some(())
    })
    .await;
    // Events are matched in order, so s2's was seen (and skipped) before s3's was delivered.
    let subjects: Vec<Value> = receiver
        .hits()
        .iter()
        .map(|h| h.json()["subject"].clone())
        .collect();
    assert_eq!(subjects, vec![json!(first), json!(third)], "not {skipped}");
    // Turned off at once after s4: s4 happened while the hook was on, so it is delivered.
    let fourth = swarm("s4").await;
    let off = expect_json(patch(&api, &path, json!({"enabled": false})).await, 200).await;
    assert_eq!(off["enabled"], false, "{off}");
    eventually("the delivery of s4", WAIT, async || {
        (receiver.hits().len() >= 3).then_some(())
    })
    .await;
    assert_eq!(receiver.hits()[2].json()["subject"], json!(fourth));
    let ledger = api.get_json("/api/v1/audit?limit=500").await;
    let updates: Vec<&Value> = ledger["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "hook.update" && e["outcome"] == "success")
        .collect();
    assert_eq!(updates.len(), 3, "{updates:?}");
    server.shutdown().await;
}
