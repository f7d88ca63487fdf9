//! `/mcp` (MCP over streamable HTTP on the server) at the HTTP level and through rmcp's own
//! streamable HTTP client: bearer authentication (none, unknown, revoked), the allowed `Host`
//! list, tenant isolation, and `[server.mcp] enabled = false`.

use crate::harness::{Server, run};
use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "cflow-test", "version": "1"}}})
}

/// POSTs an `initialize` to `/mcp` with the given bearer token and `Host` header.
async fn post_initialize(url: &str, token: Option<&str>, host: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("{url}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&initialize());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(h) = host {
        req = req.header(reqwest::header::HOST, h);
    }
    req.send().await.expect("POST /mcp")
}

fn key(server: &Server, tenant: &str, name: &str, role: &str) -> Value {
    run(server.cflow().args([
        "key", "create", "--tenant", tenant, "--name", name, "--role", role, "--output", "json",
    ]))
    .json()
}

async fn client(url: &str, token: &str) -> RunningService<RoleClient, ()> {
    let config =
        StreamableHttpClientTransportConfig::with_uri(format!("{url}/mcp")).auth_header(token);
    ().serve(StreamableHttpClientTransport::from_config(config))
        .await
        .expect("MCP initialize over HTTP")
}

/// A call's (is_error, text).
async fn call(c: &RunningService<RoleClient, ()>, tool: &str, args: Value) -> (bool, String) {
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    let r = c
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("{tool}: a tool result, not a protocol error: {e}"));
    let text = r
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n");
    (r.is_error == Some(true), text)
}

async fn ok(c: &RunningService<RoleClient, ()>, tool: &str, args: Value) -> Value {
    let (failed, text) = call(c, tool, args).await;
    assert!(!failed, "{tool} failed: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{tool}: not JSON ({e}): {text}"))
}

async fn refused(c: &RunningService<RoleClient, ()>, tool: &str, args: Value) -> String {
    let (failed, text) = call(c, tool, args).await;
    assert!(failed, "{tool} should fail: {text}");
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_auth_and_allowed_hosts() {
    let server = Server::start();
    run(server.cflow().args(["tenant", "create", "acme"])).ok();
    let admin = key(&server, "acme", "admin", "admin");
    let dev = key(&server, "acme", "dev", "developer");
    let token = dev["token"].as_str().expect("token");

    // No token, or one the server does not know: 401 before MCP sees the request.
    for bad in [None, Some("cflow_nope_nope")] {
        let resp = post_initialize(&server.url, bad, None).await;
        assert_eq!(resp.status(), 401, "{bad:?}");
        let www = resp.headers().get("www-authenticate").cloned();
        let body: Value = resp.json().await.expect("problem+json");
        assert!(body["detail"].is_string(), "{body}");
        assert!(
            www.is_some_and(|h| h.to_str().unwrap_or_default().starts_with("Bearer")),
            "a 401 names the scheme"
        );
    }

    // A live key opens a session.
    let resp = post_initialize(&server.url, Some(token), None).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("mcp-session-id").is_some(),
        "{:?}",
        resp.headers()
    );

    // A Host that is not allowed (DNS rebinding): 403, even with a good key.
    for host in ["evil.example.com", "evil.example.com:80"] {
        let resp = post_initialize(&server.url, Some(token), Some(host)).await;
        assert_eq!(resp.status(), 403, "{host}");
    }
    let port = server.url.rsplit(':').next().unwrap();
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let resp = post_initialize(&server.url, Some(token), Some(&host)).await;
        assert_eq!(resp.status(), 200, "{host}");
    }

    // A session opened with the key stops working when the key is revoked.
    let c = client(&server.url, token).await;
    ok(
        &c,
        "memory_store",
        json!({"namespace": "n", "key": "k", "value": 1}),
    )
    .await;
    let id = dev["id"].as_str().expect("key id");
    run(server
        .cflow()
        .env("CFLOW_TOKEN", admin["token"].as_str().unwrap())
        .args(["key", "revoke", id, "--output", "json"]))
    .ok();
    let resp = post_initialize(&server.url, Some(token), None).await;
    assert_eq!(resp.status(), 401, "a revoked key opens no session");
    // The open session's next call is refused at the edge too (its transport sees the 401).
    let next = c
        .call_tool(
            CallToolRequestParams::new("memory_get").with_arguments(
                json!({"namespace": "n", "key": "k"})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        )
        .await;
    assert!(
        next.is_err(),
        "a revoked key's session answers nothing: {next:?}"
    );
    let _ = c.cancel().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_are_isolated_over_http() {
    let server = Server::start();
    run(server.cflow().args(["tenant", "create", "acme"])).ok();
    run(server.cflow().args(["tenant", "create", "globex"])).ok();
    let acme = key(&server, "acme", "a", "admin")["token"]
        .as_str()
        .unwrap()
        .to_string();
    let globex = key(&server, "globex", "g", "admin")["token"]
        .as_str()
        .unwrap()
        .to_string();

    let a = client(&server.url, &acme).await;
    let tools = a.list_all_tools().await.expect("tools/list");
    assert_eq!(tools.len(), 26);
    let swarm = ok(
        &a,
        "swarm_init",
        json!({"name": "team", "topology": "mesh"}),
    )
    .await;
    let swarm_id = swarm["id"].as_str().unwrap().to_string();
    let submitted = ok(
        &a,
        "task_submit",
        json!({"tasks": [{"swarm": swarm_id, "spec": {"command": "echo secret"}}]}),
    )
    .await;
    let task_id = submitted["tasks"][0]["id"].as_str().unwrap().to_string();
    ok(
        &a,
        "memory_store",
        json!({"namespace": "plans", "key": "q3", "value": "acquire globex"}),
    )
    .await;

    let g = client(&server.url, &globex).await;
    for (tool, args) in [
        ("task_status", json!({"task_id": task_id})),
        ("task_cancel", json!({"task_id": task_id})),
        ("swarm_status", json!({"swarm_id": swarm_id})),
        ("swarm_stop", json!({"swarm_id": swarm_id})),
        ("memory_get", json!({"namespace": "plans", "key": "q3"})),
    ] {
        let text = refused(&g, tool, args).await;
        assert!(text.contains("not found"), "{tool}: {text}");
    }
    let swarms = ok(&g, "swarm_list", json!({})).await;
    assert_eq!(swarms["items"], json!([]));
    let tasks = ok(&g, "task_list", json!({})).await;
    assert_eq!(tasks["items"], json!([]));
    let found = ok(&g, "memory_search", json!({"query": "globex"})).await;
    assert_eq!(found["items"], json!([]));
    let err = g
        .read_resource(rmcp::model::ReadResourceRequestParams::new(format!(
            "cflow://tasks/{task_id}/logs"
        )))
        .await
        .expect_err("another tenant's logs");
    assert!(err.to_string().contains("not found"), "{err}");

    // Nothing globex tried changed acme's state.
    let status = ok(&a, "swarm_status", json!({"swarm_id": swarm_id})).await;
    assert_eq!(status["state"], "active");
    let task = ok(&a, "task_status", json!({"task_id": task_id})).await;
    assert_ne!(task["state"], "cancelled");
    let got = ok(&a, "memory_get", json!({"namespace": "plans", "key": "q3"})).await;
    assert_eq!(got["value"], "acquire globex");
    a.cancel().await.expect("closing");
    g.cancel().await.expect("closing");
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_can_be_disabled() {
    let work = tempfile::tempdir().expect("temporary directory");
    std::fs::write(
        work.path().join("cflow.toml"),
        "[server.mcp]\nenabled = false\n",
    )
    .expect("writing cflow.toml");
    let server = Server::start_in(work);
    let token = server.admin_token();
    let resp = post_initialize(&server.url, Some(&token), None).await;
    assert_eq!(resp.status(), 404);
    // The rest of the API is there.
    let whoami = reqwest::Client::new()
        .get(format!("{}/api/v1/whoami", server.url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("whoami");
    assert_eq!(whoami.status(), 200);
}
