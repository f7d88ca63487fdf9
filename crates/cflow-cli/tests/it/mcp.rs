//! `cflow mcp` driven by rmcp's own client over stdio, against a real server: the tool list with
//! schemas and annotations, a task run end to end, memory, and refusals as tool errors.

use crate::harness::{BIN, Server, run};
use rmcp::model::{CallToolRequestParams, CallToolResult, ProgressNotificationParam};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{ClientHandler, Peer, RoleClient, ServiceExt};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A client that keeps the progress notifications it receives.
#[derive(Default, Clone)]
struct Client {
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
}

impl ClientHandler for Client {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().unwrap().push(params);
    }
}

/// Every tool cflow's MCP server lists (shared with the Python SDK test).
pub const TOOLS: [&str; 26] = [
    "swarm_init",
    "swarm_list",
    "swarm_status",
    "swarm_scale",
    "swarm_pause",
    "swarm_resume",
    "swarm_stop",
    "agent_spawn",
    "agent_list",
    "agent_status",
    "agent_stop",
    "task_submit",
    "task_status",
    "task_list",
    "task_result",
    "task_wait",
    "task_cancel",
    "memory_store",
    "memory_get",
    "memory_list",
    "memory_search",
    "memory_delete",
    "message_send",
    "message_inbox",
    "audit_query",
    "cost_report",
];

/// Starts `cflow mcp` with a clean environment but `CFLOW_SERVER` and, when given, `CFLOW_TOKEN`,
/// in a directory without an admin token file, and connects rmcp's client to it.
async fn connect(
    server: &str,
    token: Option<&str>,
) -> (RunningService<RoleClient, Client>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let cwd = dir.path().to_path_buf();
    let server = server.to_string();
    let token = token.map(str::to_string);
    let transport = TokioChildProcess::new(tokio::process::Command::new(BIN).configure(|cmd| {
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CFLOW_SERVER", &server)
            .current_dir(&cwd)
            .arg("mcp");
        if let Some(t) = &token {
            cmd.env("CFLOW_TOKEN", t);
        }
    }))
    .expect("spawning cflow mcp");
    let client = Client::default()
        .serve(transport)
        .await
        .expect("MCP initialize");
    (client, dir)
}

async fn call(client: &Peer<RoleClient>, tool: &str, args: Value) -> CallToolResult {
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    client
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args))
        .await
        .unwrap_or_else(|e| {
            panic!("{tool} is answered as a tool result, not a protocol error: {e}")
        })
}

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A successful call's JSON answer.
async fn ok(client: &Peer<RoleClient>, tool: &str, args: Value) -> Value {
    let r = call(client, tool, args).await;
    assert_ne!(r.is_error, Some(true), "{tool} failed: {}", text(&r));
    serde_json::from_str(&text(&r))
        .unwrap_or_else(|e| panic!("{tool}: not JSON ({e}): {}", text(&r)))
}

/// A refused call's message.
async fn refused(client: &Peer<RoleClient>, tool: &str, args: Value) -> String {
    let r = call(client, tool, args).await;
    assert_eq!(r.is_error, Some(true), "{tool} should fail: {}", text(&r));
    text(&r)
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_drive_swarms_tasks_and_memory() {
    let server = Server::start();
    let token = server.admin_token();
    let (client, _dir) = connect(&server.url, Some(&token)).await;

    let info = client.peer_info().expect("server info");
    assert_eq!(
        info.server_info.as_ref().map(|i| i.name.as_str()),
        Some("cflow")
    );

    let tools = client.list_all_tools().await.expect("tools/list");
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort_unstable();
    let mut expected = TOOLS.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected);
    for t in &tools {
        assert_eq!(
            t.input_schema.get("type"),
            Some(&json!("object")),
            "{}",
            t.name
        );
        assert!(
            t.description.as_ref().is_some_and(|d| d.len() > 20),
            "{} has a description",
            t.name
        );
        let a = t
            .annotations
            .as_ref()
            .unwrap_or_else(|| panic!("{} has annotations", t.name));
        assert!(
            a.read_only_hint.is_some() && a.destructive_hint.is_some(),
            "{}",
            t.name
        );
    }
    let by_name = |n: &str| tools.iter().find(|t| t.name == n).expect("tool");
    assert_eq!(
        by_name("task_status")
            .annotations
            .as_ref()
            .unwrap()
            .read_only_hint,
        Some(true)
    );
    assert_eq!(
        by_name("swarm_stop")
            .annotations
            .as_ref()
            .unwrap()
            .destructive_hint,
        Some(true)
    );
    let submit = &by_name("task_submit").input_schema;
    assert!(
        submit["required"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("tasks"))),
        "{submit:?}"
    );

    // A swarm with one exec agent runs a command end to end.
    let swarm = ok(
        &client,
        "swarm_init",
        json!({"name": "mcp-team", "topology": "mesh",
               "agents": [{"type": "coder", "driver": "exec", "min": 1}]}),
    )
    .await;
    let swarm_id = swarm["id"].as_str().expect("swarm id").to_string();
    assert_eq!(swarm["state"], "active");
    let listed = ok(&client, "swarm_list", json!({})).await;
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == swarm_id.as_str()),
        "{listed}"
    );

    let submitted = ok(
        &client,
        "task_submit",
        json!({"tasks": [{"swarm": swarm_id, "spec": {"command": "echo hi"}}]}),
    )
    .await;
    let task_id = submitted["tasks"][0]["id"]
        .as_str()
        .expect("task id")
        .to_string();
    let waited = ok(
        &client,
        "task_wait",
        json!({"task_id": task_id, "timeout_seconds": 120}),
    )
    .await;
    assert_eq!(waited["finished"], true, "{waited}");
    assert_eq!(waited["state"], "succeeded", "{waited}");
    // task_wait reported the task's states as progress while it waited.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let progress = client.service().progress.lock().unwrap().clone();
        if progress.iter().any(|p| {
            p.message
                .as_deref()
                .is_some_and(|m| m.contains(&task_id) && m.ends_with("succeeded"))
        }) {
            assert!(
                progress.iter().all(|p| p.total == Some(120.0)),
                "{progress:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no progress notification: {progress:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let result = ok(&client, "task_result", json!({"task_id": task_id})).await;
    assert_eq!(result["state"], "succeeded");
    assert_eq!(
        result["last_attempt"]["stdout"].as_str().map(str::trim),
        Some("hi"),
        "{result}"
    );
    assert_eq!(result["last_attempt"]["exit_code"], 0, "{result}");
    let listed = ok(&client, "task_list", json!({"state": "succeeded"})).await;
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == task_id.as_str()),
        "{listed}"
    );

    // Memory: store, read back, find by search, delete.
    let meta = ok(
        &client,
        "memory_store",
        json!({"namespace": "project/web", "key": "decision",
               "value": {"text": "we chose postgres for durability"}, "tags": ["db"]}),
    )
    .await;
    assert_eq!(meta["version"], 1, "{meta}");
    let got = ok(
        &client,
        "memory_get",
        json!({"namespace": "project/web", "key": "decision"}),
    )
    .await;
    assert_eq!(got["value"]["text"], "we chose postgres for durability");
    let found = ok(&client, "memory_search", json!({"query": "postgres"})).await;
    assert!(
        found["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["key"] == "decision"),
        "{found}"
    );
    ok(
        &client,
        "memory_delete",
        json!({"namespace": "project/web", "key": "decision"}),
    )
    .await;
    let gone = refused(
        &client,
        "memory_get",
        json!({"namespace": "project/web", "key": "decision"}),
    )
    .await;
    assert!(
        gone.contains("not found") && gone.contains("memory_list"),
        "{gone}"
    );

    // The API's refusals are tool errors that say what to do.
    let unknown = refused(
        &client,
        "task_status",
        json!({"task_id": "tk-does-not-exist"}),
    )
    .await;
    assert!(
        unknown.contains("not found") && unknown.contains("task_list"),
        "{unknown}"
    );
    ok(&client, "swarm_stop", json!({"swarm_id": swarm_id})).await;
    let stopped = refused(&client, "swarm_resume", json!({"swarm_id": swarm_id})).await;
    assert!(stopped.contains("conflict"), "{stopped}");
    let status = ok(&client, "swarm_status", json!({"swarm_id": swarm_id})).await;
    assert_eq!(
        status["state"], "stopped",
        "a refused resume changes nothing"
    );

    // Every call went through the API as the caller, so the ledger has it.
    let audit = ok(&client, "audit_query", json!({"limit": 1000})).await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.iter().any(|a| a.starts_with("memory.")),
        "{actions:?}"
    );
    assert!(
        actions.iter().any(|a| a.starts_with("task.")),
        "{actions:?}"
    );

    client.cancel().await.expect("closing the session");
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_and_bad_tokens_are_tool_errors() {
    let server = Server::start();
    run(server.cflow().args(["tenant", "create", "acme"])).ok();
    let viewer = run(server.cflow().args([
        "key", "create", "--tenant", "acme", "--name", "watcher", "--role", "viewer", "--output",
        "json",
    ]))
    .json();
    let viewer_token = viewer["token"].as_str().expect("token").to_string();

    let (client, _dir) = connect(&server.url, Some(&viewer_token)).await;
    let denied = refused(
        &client,
        "swarm_init",
        json!({"name": "nope", "topology": "star"}),
    )
    .await;
    assert!(
        denied.contains("permission denied")
            && denied.contains("admin")
            && denied.contains("operator"),
        "{denied}"
    );
    let swarms = ok(&client, "swarm_list", json!({})).await;
    assert_eq!(
        swarms["items"],
        json!([]),
        "the refused swarm_init created nothing"
    );
    client.cancel().await.expect("closing the session");

    // A token the server does not know.
    let (client, _dir) = connect(&server.url, Some("cflow_nope_nope")).await;
    let bad = refused(&client, "swarm_list", json!({})).await;
    assert!(
        bad.contains("rejected the token") && bad.contains("CFLOW_TOKEN"),
        "{bad}"
    );
    client.cancel().await.expect("closing the session");

    // No token at all, for a server elsewhere: the MCP server still starts and says what to set.
    let (client, _dir) = connect("http://10.255.255.1:7700", None).await;
    let none = refused(&client, "task_list", json!({})).await;
    assert!(
        none.contains("no API token") && none.contains("CFLOW_TOKEN"),
        "{none}"
    );
    client.cancel().await.expect("closing the session");
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_scaling_cancel_messages_and_cost() {
    let server = Server::start();
    let token = server.admin_token();
    let (client, _dir) = connect(&server.url, Some(&token)).await;

    let swarm = ok(
        &client,
        "swarm_init",
        json!({"name": "ops", "topology": "mesh", "strategy": "least_loaded"}),
    )
    .await;
    let swarm_id = swarm["id"].as_str().expect("swarm id").to_string();
    assert_eq!(swarm["strategy"], "least_loaded");

    let paused = ok(&client, "swarm_pause", json!({"swarm_id": swarm_id})).await;
    assert_eq!(paused["state"], "paused");
    let resumed = ok(&client, "swarm_resume", json!({"swarm_id": swarm_id})).await;
    assert_eq!(resumed["state"], "active");
    let scaled = ok(
        &client,
        "swarm_scale",
        json!({"swarm_id": swarm_id, "pool": {"type": "coder", "driver": "exec", "min": 1, "max": 2}}),
    )
    .await;
    assert_eq!(scaled["pools"][0]["type"], "coder", "{scaled}");
    assert_eq!(scaled["pools"][0]["max"], 2, "{scaled}");

    let a = ok(
        &client,
        "agent_spawn",
        json!({"swarm_id": swarm_id, "type": "tester", "driver": "exec", "capabilities": ["rust"]}),
    )
    .await;
    let a_id = a["id"].as_str().expect("agent id").to_string();
    assert_eq!(a["capabilities"], json!(["rust"]));
    let agents = ok(&client, "agent_list", json!({"swarm_id": swarm_id})).await;
    let ids: Vec<&str> = agents["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    assert!(ids.len() >= 2 && ids.contains(&a_id.as_str()), "{agents}");
    let b_id = ids
        .iter()
        .find(|i| **i != a_id)
        .expect("the pool's agent")
        .to_string();
    let status = ok(&client, "agent_status", json!({"agent_id": a_id})).await;
    assert_eq!(status["swarm_id"], swarm_id.as_str());

    // Messages: a direct one and a topic, read back in order.
    let sent = ok(
        &client,
        "message_send",
        json!({"swarm_id": swarm_id, "from": b_id, "to": a_id, "body": {"note": "tests are green"}}),
    )
    .await;
    assert_eq!(sent["to"], a_id.as_str());
    ok(
        &client,
        "message_send",
        json!({"swarm_id": swarm_id, "from": a_id, "topic": "builds", "body": "done"}),
    )
    .await;
    let inbox = ok(&client, "message_inbox", json!({"agent_id": a_id})).await;
    assert_eq!(
        inbox["items"][0]["body"]["note"], "tests are green",
        "{inbox}"
    );
    let topic = ok(
        &client,
        "message_inbox",
        json!({"swarm_id": swarm_id, "topic": "builds"}),
    )
    .await;
    assert_eq!(topic["items"][0]["body"], "done", "{topic}");
    let both = refused(
        &client,
        "message_send",
        json!({"swarm_id": swarm_id, "from": a_id, "to": b_id, "topic": "x", "body": 1}),
    )
    .await;
    assert!(both.contains("exactly one"), "{both}");

    // A long task is cancelled while it runs; a DAG's dependent goes with it.
    let submitted = ok(
        &client,
        "task_submit",
        json!({"tasks": [
            {"local_id": "slow", "swarm": swarm_id, "spec": {"command": "sleep 30"}},
            {"local_id": "after", "swarm": swarm_id, "spec": {"command": "echo after"},
             "depends_on": ["slow"]}
        ]}),
    )
    .await;
    let slow = submitted["tasks"][0]["id"].as_str().unwrap().to_string();
    let after = submitted["tasks"][1]["id"].as_str().unwrap().to_string();
    assert_eq!(submitted["tasks"][1]["state"], "pending", "{submitted}");
    let short = ok(
        &client,
        "task_wait",
        json!({"task_id": slow, "timeout_seconds": 1}),
    )
    .await;
    assert_eq!(short["finished"], false, "{short}");
    assert!(
        short["note"]
            .as_str()
            .is_some_and(|n| n.contains("task_wait")),
        "{short}"
    );
    let cancelled = ok(&client, "task_cancel", json!({"task_id": slow})).await;
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    let dep = ok(
        &client,
        "task_wait",
        json!({"task_id": after, "timeout_seconds": 30}),
    )
    .await;
    assert_eq!(dep["state"], "cancelled", "{dep}");
    let again = refused(&client, "task_cancel", json!({"task_id": slow})).await;
    assert!(again.contains("conflict"), "{again}");

    let stopped = ok(&client, "agent_stop", json!({"agent_id": a_id})).await;
    assert!(
        matches!(stopped["state"].as_str(), Some("draining" | "stopped")),
        "{stopped}"
    );

    // Memory pages and the (empty) cost report.
    for k in ["a1", "a2", "b1"] {
        ok(
            &client,
            "memory_store",
            json!({"namespace": "notes", "key": k, "value": k}),
        )
        .await;
    }
    let page = ok(
        &client,
        "memory_list",
        json!({"namespace": "notes", "prefix": "a"}),
    )
    .await;
    let keys: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["key"].as_str())
        .collect();
    assert_eq!(keys, ["a1", "a2"]);
    let cost = ok(&client, "cost_report", json!({"by": "model"})).await;
    assert_eq!(cost["by"], "model", "{cost}");
    assert_eq!(cost["total"]["calls"], 0, "{cost}");

    // Arguments that do not fit the schema: rmcp answers them as a tool error naming the field
    // (the model can correct itself), and nothing is sent to the API.
    let bad = refused(&client, "swarm_status", json!({"swarm": "x"})).await;
    assert!(
        bad.contains("unknown field `swarm`") && bad.contains("swarm_id"),
        "{bad}"
    );

    client.cancel().await.expect("closing the session");
}

/// The pids of processes whose command line contains `needle`.
fn pids_with(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            out.push(pid);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn start_launches_a_server_when_none_answers_and_reuses_it() {
    let port = crate::harness::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let launch = |dir: std::path::PathBuf| {
        let url = url.clone();
        TokioChildProcess::new(tokio::process::Command::new(BIN).configure(move |cmd| {
            cmd.env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("CFLOW_SERVER", &url)
                .current_dir(&dir)
                .args(["mcp", "--start"]);
        }))
        .expect("spawning cflow mcp --start")
    };
    let first = Client::default()
        .serve(launch(dir.path().to_path_buf()))
        .await
        .expect("MCP initialize");
    // The token is the admin token the started server left in ./.cflow.
    let stored = ok(
        &first,
        "memory_store",
        json!({"namespace": "notes", "key": "k", "value": "from the first session"}),
    )
    .await;
    assert_eq!(stored["version"], 1);
    let log = std::fs::read_to_string(dir.path().join(".cflow/cflow-up.log")).unwrap();
    assert!(log.contains("superadmin key"), "{log}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join(".cflow/cflow-up.log"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the log holds the admin token");
    first.cancel().await.unwrap();

    // The server outlives the session; a second session finds it and starts nothing.
    let needle = format!("up --listen 127.0.0.1:{port}");
    let servers = pids_with(&needle);
    assert_eq!(servers.len(), 1, "one server started: {servers:?}");
    let second = Client::default()
        .serve(launch(dir.path().to_path_buf()))
        .await
        .expect("MCP initialize");
    let got = ok(
        &second,
        "memory_get",
        json!({"namespace": "notes", "key": "k"}),
    )
    .await;
    assert_eq!(got["value"], "from the first session");
    second.cancel().await.unwrap();
    assert_eq!(pids_with(&needle), servers, "no second server");
    for pid in servers {
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn start_refuses_a_remote_server_it_cannot_start() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().to_path_buf();
    let transport = TokioChildProcess::new(tokio::process::Command::new(BIN).configure(|cmd| {
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CFLOW_SERVER", "http://192.0.2.1:7700")
            .current_dir(&cwd)
            .args(["mcp", "--start"]);
    }))
    .unwrap();
    let client = Client::default()
        .serve(transport)
        .await
        .expect("MCP initialize");
    let msg = refused(&client, "swarm_list", json!({})).await;
    assert!(msg.contains("only starts one on this machine"), "{msg}");
    client.cancel().await.unwrap();
}
