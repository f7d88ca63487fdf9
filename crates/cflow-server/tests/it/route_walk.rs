//! Walks every operation of the served OpenAPI document and checks authentication, tenant
//! isolation and the read-only role on each, so that a new route without those checks fails here.

use crate::common::{expect_json, expect_problem};
use cflow_test_support::server::TestServer;
use reqwest::Method;
use serde_json::{Value, json};

/// Operations documented as public: they take no token.
const PUBLIC: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/api/v1/openapi.json"),
];

/// What a valid key of another tenant gets.
#[derive(Debug, Clone, Copy, PartialEq)]
enum OtherTenant {
    /// The route addresses a resource of the first tenant: it does not exist for the caller.
    NotFound,
    /// Platform or tenant-administration routes the caller's role may not use.
    Forbidden,
    /// The route acts on the caller's own tenant: it succeeds but shows nothing of the first.
    OwnTenantOnly,
    /// A compare-and-set write at the first tenant's version: the caller's tenant has no such
    /// entry, so it fails with `current_version: null` and writes nothing.
    StaleForCaller,
}

fn other_tenant(method: &str, path: &str) -> OtherTenant {
    use OtherTenant::*;
    if is_worker_route(method, path) {
        // Only worker keys connect as workers: another tenant's admin is refused by role.
        return Forbidden;
    }
    match (method, path) {
        ("post", "/api/v1/tenants")
        | ("get", "/api/v1/tenants")
        | ("get", "/metrics")
        | ("put", "/api/v1/tenants/{tenant}/quota")
        | ("put", "/api/v1/tenants/{tenant}/sandbox") => Forbidden,
        ("post", "/api/v1/tenants/{tenant}/keys") => NotFound,
        ("get", "/api/v1/tenants/{tenant}/quota") | ("get", "/api/v1/tenants/{tenant}/sandbox") => {
            NotFound
        }
        // A tenant's admin manages its own model providers; another tenant's are not found.
        ("get" | "put", "/api/v1/tenants/{tenant}/llm") => NotFound,
        ("get" | "put", "/api/v1/tenants/{tenant}/claude-policy") => NotFound,
        ("delete", "/api/v1/keys/{id}") => NotFound,
        ("delete", "/api/v1/budgets/{id}") => NotFound,
        // Alpha's hook and its delivery do not exist for beta; beta's own listing and
        // creation act in beta.
        ("get" | "delete" | "patch", "/api/v1/hooks/{id}")
        | ("post", "/api/v1/hooks/{id}/test")
        | ("get", "/api/v1/hooks/{id}/deliveries")
        | ("post", "/api/v1/hooks/deliveries/{id}/retry") => NotFound,
        ("get" | "post", "/api/v1/hooks") => OwnTenantOnly,
        ("get", "/api/v1/cost") | ("get" | "put", "/api/v1/budgets") => OwnTenantOnly,
        // Alpha's secret is not the caller's to delete; a put sets one in the caller's tenant
        // (under another name: see `send`), and the listing shows only the caller's.
        ("delete", "/api/v1/secrets/{name}") => NotFound,
        ("put", "/api/v1/secrets/{name}") | ("get", "/api/v1/secrets") => OwnTenantOnly,
        ("get" | "delete", "/api/v1/memory/{namespace}/{key}") => NotFound,
        ("put", "/api/v1/memory/{namespace}/{key}") => StaleForCaller,
        ("get", "/api/v1/swarms/{id}")
        | ("post", "/api/v1/swarms/{id}/pause")
        | ("post", "/api/v1/swarms/{id}/resume")
        | ("post", "/api/v1/swarms/{id}/stop")
        | ("post", "/api/v1/swarms/{id}/scale")
        | ("post", "/api/v1/swarms/{id}/agents")
        | ("post", "/api/v1/swarms/{id}/messages")
        | ("get", "/api/v1/swarms/{id}/topics/{topic}/messages")
        | ("get", "/api/v1/agents/{id}")
        | ("post", "/api/v1/agents/{id}/stop")
        | ("get", "/api/v1/agents/{id}/messages")
        | ("get", "/api/v1/tasks/{id}")
        | ("post", "/api/v1/tasks/{id}/cancel")
        | ("get", "/api/v1/tasks/{id}/logs")
        | ("get", "/api/v1/tasks/{id}/artifacts")
        | ("get", "/api/v1/tasks/{id}/artifacts/{sha256}") => NotFound,
        ("get", "/api/v1/keys")
        | ("get", "/api/v1/whoami")
        | ("get", "/api/v1/memory/{namespace}")
        | ("get", "/api/v1/memory/search")
        | ("get", "/api/v1/audit")
        | ("get", "/api/v1/audit/verify")
        | ("get" | "post", "/api/v1/swarms")
        | ("get", "/api/v1/agents")
        | ("get" | "post", "/api/v1/tasks")
        | ("get", "/api/v1/workers")
        | ("get", "/api/v1/events")
        // Records the caller's own MCP call in its own tenant's ledger.
        | ("post", "/api/v1/mcp/calls")
        // Records a Claude Code hook event in the caller's own tenant.
        | ("post", "/api/v1/claude/hooks") => OwnTenantOnly,
        _ => panic!("classify {method} {path} in route_walk::other_tenant"),
    }
}

/// The routes of the worker protocol (action `WorkerConnect`: worker keys and the superadmin).
fn is_worker_route(method: &str, path: &str) -> bool {
    matches!(
        (method, path),
        ("post", "/api/v1/workers")
            | ("post", "/api/v1/workers/{id}/poll")
            | ("post", "/api/v1/workers/{id}/reports")
            | ("delete", "/api/v1/workers/{id}")
            | (
                "put",
                "/api/v1/workers/{id}/attempts/{task_id}/{epoch}/artifacts"
            )
            | (
                "post",
                "/api/v1/workers/{id}/attempts/{task_id}/{epoch}/calls"
            )
    )
}

/// A valid body for each operation that takes one.
fn body_for(method: &str, path: &str, f: &Fixture) -> Option<Value> {
    match (method, path) {
        ("post", "/api/v1/tenants") => Some(json!({ "name": "walk-created" })),
        ("post", "/api/v1/tenants/{tenant}/keys") => {
            Some(json!({ "name": "walk-key", "role": "viewer" }))
        }
        ("put", "/api/v1/memory/{namespace}/{key}") => Some(json!({ "value": "walk-overwrite" })),
        ("put", "/api/v1/tenants/{tenant}/quota") => Some(json!({ "weight": 7 })),
        ("put", "/api/v1/budgets") => Some(json!({ "period": "day", "limit_usd": 1 })),
        ("put", "/api/v1/secrets/{name}") => Some(json!({ "value": "walk-secret-value" })),
        ("put", "/api/v1/tenants/{tenant}/sandbox") => Some(json!({ "network": "full" })),
        ("put", "/api/v1/tenants/{tenant}/claude-policy") => {
            Some(json!({ "deny_tools": ["WalkTool"] }))
        }
        ("post", "/api/v1/claude/hooks") => Some(json!({ "event": "Stop", "input": {
            "session_id": "walk", "transcript_path": "/t", "cwd": "/w",
            "hook_event_name": "Stop", "stop_hook_active": false
        } })),
        ("put", "/api/v1/tenants/{tenant}/llm") => Some(json!({ "providers": [
            { "name": "walk", "kind": "anthropic", "api_key_secret": "WALK_KEY" }
        ] })),
        // Raw bytes: any body will do.
        ("put", "/api/v1/workers/{id}/attempts/{task_id}/{epoch}/artifacts") => {
            Some(json!("walk-artifact"))
        }
        ("post", "/api/v1/swarms") => Some(json!({ "name": "walk-swarm", "topology": "mesh" })),
        ("post", "/api/v1/swarms/{id}/scale") => Some(json!({ "type": "coder", "min": 0 })),
        ("post", "/api/v1/swarms/{id}/agents") => {
            Some(json!({ "type": "coder", "driver": "noop" }))
        }
        ("post", "/api/v1/swarms/{id}/messages") => {
            Some(json!({ "from": f.agents[0], "to": f.agents[1], "body": "walk" }))
        }
        ("post", "/api/v1/tasks") => Some(json!({ "tasks": [{ "spec": { "command": "true" } }] })),
        ("post", "/api/v1/workers") => {
            Some(json!({ "name": "walk", "slots": 1, "drivers": ["noop"] }))
        }
        ("post", "/api/v1/workers/{id}/poll") => Some(json!({ "free_slots": 0 })),
        ("post", "/api/v1/workers/{id}/reports") => Some(json!({ "reports": [] })),
        ("post", "/api/v1/workers/{id}/attempts/{task_id}/{epoch}/calls") => {
            Some(json!({ "call": { "op": "check_budget" } }))
        }
        ("get" | "delete", _) => None,
        ("post", p) if p.ends_with("/pause") || p.ends_with("/resume") || p.ends_with("/stop") => {
            None
        }
        ("post", "/api/v1/tasks/{id}/cancel") => None,
        ("post", "/api/v1/hooks") => Some(json!({
            "name": "walk-hook", "events": ["task.*"], "command": "true"
        })),
        ("post", "/api/v1/hooks/{id}/test") | ("post", "/api/v1/hooks/deliveries/{id}/retry") => {
            None
        }
        ("patch", "/api/v1/hooks/{id}") => Some(json!({ "enabled": true })),
        ("post", "/api/v1/mcp/calls") => {
            Some(json!({ "tool": "walk", "transport": "http", "ok": true, "duration_ms": 1 }))
        }
        _ => panic!("add a body for {method} {path} in route_walk::body_for"),
    }
}

/// The name of tenant alpha's secret: the marker, so that a listing that leaked it would fail
/// the marker check.
const SECRET_NAME: &str = "alpha-private-marker";

struct Fixture {
    tenant_a: String,
    key_a_id: String,
    swarm: String,
    agents: Vec<String>,
    task: String,
    worker: String,
    /// Alpha's monthly budget of $5.
    budget: String,
    /// Alpha's hook, and a dead delivery of it.
    hook: String,
    delivery: String,
}

fn fill(path: &str, f: &Fixture) -> String {
    let id = if path.starts_with("/api/v1/swarms/") {
        &f.swarm
    } else if path.starts_with("/api/v1/agents/") {
        &f.agents[0]
    } else if path.starts_with("/api/v1/tasks/") {
        &f.task
    } else if path.starts_with("/api/v1/workers/") {
        &f.worker
    } else if path.starts_with("/api/v1/budgets/") {
        &f.budget
    } else if path.starts_with("/api/v1/hooks/deliveries/") {
        &f.delivery
    } else if path.starts_with("/api/v1/hooks/") {
        &f.hook
    } else {
        &f.key_a_id
    };
    let filled = path
        .replace("{tenant}", &f.tenant_a)
        .replace("{id}", id)
        .replace("{namespace}", "notes")
        .replace("{key}", "plan")
        .replace("{topic}", "news")
        .replace("{task_id}", &f.task)
        .replace("{epoch}", "1")
        .replace("{sha256}", &"ab".repeat(32))
        .replace("{name}", SECRET_NAME);
    assert!(!filled.contains('{'), "unfilled parameter in {path}");
    if filled == "/api/v1/memory/search" {
        return format!("{filled}?q=marker");
    }
    if path.ends_with("/artifacts") && path.starts_with("/api/v1/workers/") {
        return format!("{filled}?name=walk.txt&kind=file");
    }
    filled
}

async fn send(
    server: &TestServer,
    method: &str,
    path: &str,
    f: &Fixture,
    token: Option<&str>,
) -> reqwest::Response {
    let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let mut url = fill(path, f);
    if method == "put" && path == "/api/v1/secrets/{name}" {
        // A put succeeds in the caller's own tenant: under alpha's name it would make the later
        // delete find the caller's copy, whichever order the walk takes.
        url = url.replace(SECRET_NAME, "walk-put-secret");
    }
    let mut req = server.client().request(m, server.at(&url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(body) = body_for(method, path, f) {
        req = req.json(&body);
    }
    if method == "put" {
        // Every write is conditional on alpha's version, so that no walk step can succeed
        // silently in the wrong tenant.
        req = req.header("if-match", "\"1\"");
    }
    req.send().await.expect("request")
}

#[tokio::test]
async fn every_route_checks_authentication_tenant_and_role_on_sqlite() {
    walk(TestServer::start_sqlite().await).await;
}

#[tokio::test]
async fn every_route_checks_authentication_tenant_and_role_on_postgres() {
    let Some(server) = TestServer::start_postgres().await else {
        eprintln!("skipped: no PostgreSQL configured (set CFLOW_TEST_DATABASE_URL)");
        return;
    };
    walk(server).await;
}

async fn walk(server: TestServer) {
    let (tenant_a, admin_a) = server.tenant_with_key("alpha", "admin").await;
    let (_tenant_b, admin_b) = server.tenant_with_key("beta", "admin").await;
    let viewer_a = server.create_key(&tenant_a, "alpha-viewer", "viewer").await;
    let extra = server
        .create_key_json(&tenant_a, "alpha-extra", "developer", None)
        .await;
    let worker_a = server.create_key(&tenant_a, "alpha-worker", "worker").await;
    let worker_b = server.create_key(&_tenant_b, "beta-worker", "worker").await;
    let fixture = orchestration_fixture(&server, &tenant_a, &admin_a, &worker_a).await;
    let fixture = Fixture {
        key_a_id: extra["id"].as_str().unwrap().to_string(),
        ..fixture
    };
    let marker = "alpha-private-marker";
    let put = server
        .client()
        .put(server.at("/api/v1/memory/notes/plan"))
        .bearer_auth(&admin_a)
        .json(&json!({ "value": marker, "tags": ["marker"] }))
        .send()
        .await
        .unwrap();
    expect_json(put, 200).await;
    let put = server
        .client()
        .put(server.at(&format!("/api/v1/secrets/{SECRET_NAME}")))
        .bearer_auth(&admin_a)
        .json(&json!({ "value": "alpha-secret-value-123" }))
        .send()
        .await
        .unwrap();
    expect_json(put, 200).await;

    let doc = expect_json(
        server
            .client()
            .get(server.at("/api/v1/openapi.json"))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let mut walked = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().unwrap() {
            let security = op["security"]
                .as_array()
                .expect("every operation has security");
            let needs_bearer = security.iter().any(|s| s.get("bearer").is_some());
            if PUBLIC.contains(&(method.as_str(), path.as_str())) {
                assert!(!needs_bearer, "{method} {path} is public");
                continue;
            }
            assert!(needs_bearer, "{method} {path} must require a bearer token");
            walked += 1;
            let what = format!("{method} {path}");

            // 1. No token.
            let resp = send(&server, method, path, &fixture, None).await;
            assert_eq!(
                resp.headers()
                    .get("www-authenticate")
                    .map(|v| v.to_str().unwrap()),
                Some("Bearer"),
                "{what}"
            );
            expect_problem(resp, 401, "unauthenticated").await;

            // 2. A valid key of another tenant.
            let resp = send(&server, method, path, &fixture, Some(&admin_b)).await;
            match other_tenant(method, path) {
                OtherTenant::NotFound => {
                    expect_problem(resp, 404, "not-found").await;
                }
                OtherTenant::Forbidden => {
                    expect_problem(resp, 403, "forbidden").await;
                }
                OtherTenant::StaleForCaller => {
                    let body = expect_problem(resp, 412, "precondition-failed").await;
                    assert_eq!(
                        body.get("current_version"),
                        Some(&Value::Null),
                        "{what}: {body}"
                    );
                }
                OtherTenant::OwnTenantOnly if path == "/api/v1/events" => {
                    // An endless stream: its answer is checked, its events by the events tests.
                    assert_eq!(resp.status(), 200, "{what}");
                }
                OtherTenant::OwnTenantOnly => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap();
                    assert!(status.is_success(), "{what}: {status} {text}");
                    assert!(
                        !text.contains(&tenant_a),
                        "{what} leaks tenant alpha: {text}"
                    );
                    assert!(
                        !text.contains(marker),
                        "{what} leaks alpha's memory: {text}"
                    );
                }
            }

            // 3. A viewer of the tenant may not mutate anything. Recording its own MCP tool call
            // in the ledger is not a change of state: every key may.
            if path == "/api/v1/mcp/calls" {
                let resp = send(&server, method, path, &fixture, Some(&viewer_a)).await;
                assert_eq!(resp.status(), 204, "{what}");
            } else if matches!(method.as_str(), "post" | "put" | "delete" | "patch") {
                let resp = send(&server, method, path, &fixture, Some(&viewer_a)).await;
                expect_problem(resp, 403, "forbidden").await;
            }

            // 4. A worker key may use the worker routes and nothing else (but whoami); on them,
            // another tenant's worker key finds none of the first tenant's workers.
            if is_worker_route(method, path) {
                let resp = send(&server, method, path, &fixture, Some(&worker_b)).await;
                if path == "/api/v1/workers" {
                    let body = expect_json(resp, 201).await;
                    assert_ne!(body["worker_id"], fixture.worker.as_str(), "{what}");
                } else {
                    expect_problem(resp, 404, "not-found").await;
                }
            } else if path != "/api/v1/whoami" && path != "/api/v1/mcp/calls" {
                let resp = send(&server, method, path, &fixture, Some(&worker_a)).await;
                expect_problem(resp, 403, "forbidden").await;
            }
        }
    }
    assert_eq!(walked, 68, "every non-public operation was walked");

    // Nothing of tenant alpha changed: the entry is at version 1 and the key is live.
    let entry = server
        .store
        .memory_get(&tenant_a, "notes", "plan", crate::common::now_ms())
        .await
        .unwrap()
        .expect("alpha's entry survives");
    assert_eq!((entry.version, entry.value), (1, json!(marker)));
    let keys = server
        .store
        .list_keys(
            &tenant_a,
            &cflow_store::PageRequest {
                cursor: None,
                limit: 100,
            },
        )
        .await
        .unwrap();
    assert!(
        keys.items.iter().all(|k| k.revoked_at.is_none()),
        "no key of alpha was revoked"
    );
    assert_eq!(keys.items.len(), 4, "no key was created in alpha");
    let secrets = server.store.secret_list(&tenant_a).await.unwrap();
    let names: Vec<&str> = secrets.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, [SECRET_NAME], "alpha's secrets are unchanged");
    assert_orchestration_unchanged(&server, &fixture, &admin_a).await;
    server.shutdown().await;
}

/// Tenant alpha's swarm (two noop agents), a task that waits for ever (pinned to a label no
/// agent or worker has), a message and
/// a registered worker.
async fn orchestration_fixture(
    server: &TestServer,
    tenant_a: &str,
    admin_a: &str,
    worker_a: &str,
) -> Fixture {
    let post = async |token: &str, path: &str, body: Value, status: u16| {
        let resp = server
            .client()
            .post(server.at(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        expect_json(resp, status).await
    };
    let swarm = post(
        admin_a,
        "/api/v1/swarms",
        json!({"name": "alpha-swarm", "topology": "mesh",
               "agents": [{"type": "coder", "driver": "noop", "min": 2}]}),
        201,
    )
    .await;
    let swarm = swarm["id"].as_str().unwrap().to_string();
    let agents = server
        .store
        .list_agents(
            tenant_a,
            &swarm,
            &cflow_store::PageRequest {
                cursor: None,
                limit: 10,
            },
        )
        .await
        .unwrap();
    let agents: Vec<String> = agents.items.into_iter().map(|a| a.id).collect();
    assert_eq!(agents.len(), 2);
    let tasks = post(
        admin_a,
        "/api/v1/tasks",
        json!({"tasks": [{"spec": {"command": "true"}, "labels": {"walk": "never-matches"}}]}),
        202,
    )
    .await;
    let task = tasks["tasks"][0]["id"].as_str().unwrap().to_string();
    post(
        admin_a,
        &format!("/api/v1/swarms/{swarm}/messages"),
        json!({"from": agents[0], "topic": "news", "body": "alpha-private-marker"}),
        201,
    )
    .await;
    let worker = post(
        worker_a,
        "/api/v1/workers",
        json!({"worker_id": "walk-alpha", "name": "alpha", "slots": 1, "drivers": ["noop"]}),
        201,
    )
    .await;
    let budget = server
        .client()
        .put(server.at("/api/v1/budgets"))
        .bearer_auth(admin_a)
        .json(&json!({"period": "month", "limit_usd": 5}))
        .send()
        .await
        .unwrap();
    let budget = expect_json(budget, 200).await;
    // A hook whose command fails: its test leaves a dead delivery that may be re-queued.
    let hook = post(
        admin_a,
        "/api/v1/hooks",
        json!({"name": "walk-alpha-hook", "events": ["task.*"], "command": "exit 3"}),
        201,
    )
    .await;
    let hook_id = hook["id"].as_str().unwrap();
    let tested = post(
        admin_a,
        &format!("/api/v1/hooks/{hook_id}/test"),
        json!({}),
        200,
    )
    .await;
    assert_eq!(tested["ok"], false, "{tested}");
    Fixture {
        budget: budget["id"].as_str().unwrap().to_string(),
        tenant_a: tenant_a.to_string(),
        key_a_id: String::new(),
        swarm,
        agents,
        task,
        worker: worker["worker_id"].as_str().unwrap().to_string(),
        hook: hook["id"].as_str().unwrap().to_string(),
        delivery: tested["delivery_id"].as_str().unwrap().to_string(),
    }
}

async fn assert_orchestration_unchanged(server: &TestServer, f: &Fixture, admin_a: &str) {
    let get = async |path: String| {
        let resp = server
            .client()
            .get(server.at(&path))
            .bearer_auth(admin_a)
            .send()
            .await
            .unwrap();
        expect_json(resp, 200).await
    };
    let swarm = get(format!("/api/v1/swarms/{}", f.swarm)).await;
    assert_eq!(swarm["state"], "active", "{swarm}");
    assert_eq!(swarm["pools"][0]["min"], 2, "{swarm}");
    let agents = get(format!("/api/v1/agents?swarm={}", f.swarm)).await;
    let items = agents["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "no agent was spawned into alpha's swarm");
    assert!(items.iter().all(|a| a["state"] == "idle"), "{agents}");
    let task = get(format!("/api/v1/tasks/{}", f.task)).await;
    assert_eq!(task["state"], "queued", "{task}");
    let tasks = get("/api/v1/tasks".to_string()).await;
    assert_eq!(tasks["items"].as_array().unwrap().len(), 1, "{tasks}");
    let topic = get(format!("/api/v1/swarms/{}/topics/news/messages", f.swarm)).await;
    assert_eq!(topic["items"].as_array().unwrap().len(), 1, "{topic}");
    let inbox = get(format!("/api/v1/agents/{}/messages", f.agents[1])).await;
    assert_eq!(inbox["items"], json!([]), "no message was sent in alpha");
    let quota = server.store.tenant_quota(&f.tenant_a).await.unwrap();
    assert_eq!(quota, cflow_store::TenantQuota::default());
    let sandbox = server.store.tenant_sandbox(&f.tenant_a).await.unwrap();
    assert_eq!(sandbox, None, "alpha's sandbox overrides are unchanged");
    let llm = server.store.tenant_llm(&f.tenant_a).await.unwrap();
    assert_eq!(llm, None, "alpha's model providers are unchanged");
    let claude = server
        .store
        .tenant_claude_policy(&f.tenant_a)
        .await
        .unwrap();
    assert_eq!(claude, None, "alpha's Claude Code policy is unchanged");
    let artifacts = get(format!("/api/v1/tasks/{}/artifacts", f.task)).await;
    assert_eq!(
        artifacts["artifacts"],
        json!([]),
        "no artifact was stored in alpha"
    );
    let budgets = server.store.list_budgets(&f.tenant_a).await.unwrap();
    let budgets: Vec<_> = budgets
        .iter()
        .map(|b| (b.id.as_str(), b.limit_micros))
        .collect();
    assert_eq!(
        budgets,
        vec![(f.budget.as_str(), 5_000_000)],
        "alpha's budgets are unchanged"
    );
    let workers = get("/api/v1/workers".to_string()).await;
    assert!(
        workers["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == f.worker.as_str()),
        "alpha's worker is still registered: {workers}"
    );
}
