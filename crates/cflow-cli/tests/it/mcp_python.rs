//! cflow's MCP server driven by a client that is not ours: the official MCP Python SDK (PyPI
//! `mcp`, pinned and installed in `target/mcp-venv` by scripts/setup.sh) runs
//! tests/mcp_client.py over stdio (`cflow mcp`) and over streamable HTTP (`/mcp`) against a real
//! server. The script calls every tool, reads a task's logs resource and provokes the error cases,
//! and reports what it saw; this test judges the report and the audit ledger.

use crate::harness::{BIN, Server, run};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::mcp::TOOLS;

/// How long one run of the script may take.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(300);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The SDK version scripts/setup.sh pins.
fn pinned_sdk() -> String {
    let setup = std::fs::read_to_string(repo().join("scripts/setup.sh")).expect("scripts/setup.sh");
    setup
        .lines()
        .find_map(|l| l.strip_prefix("MCP_SDK_VERSION="))
        .expect("scripts/setup.sh pins MCP_SDK_VERSION")
        .trim()
        .to_string()
}

/// The venv's interpreter; a missing venv fails the test (it is never skipped).
fn python() -> PathBuf {
    let python = repo().join("target/mcp-venv/bin/python");
    assert!(
        python.exists(),
        "the MCP Python SDK is not installed ({} is missing): run scripts/setup.sh",
        python.display()
    );
    python
}

/// Keys of two tenants: acme's admin and viewer, globex's admin.
struct Keys {
    admin: String,
    viewer: String,
    other: String,
}

fn key(server: &Server, tenant: &str, role: &str) -> String {
    let k = run(server.cflow().args([
        "key", "create", "--tenant", tenant, "--name", role, "--role", role, "--output", "json",
    ]))
    .json();
    k["token"].as_str().expect("token").to_string()
}

fn keys(server: &Server) -> Keys {
    run(server.cflow().args(["tenant", "create", "acme"])).ok();
    run(server.cflow().args(["tenant", "create", "globex"])).ok();
    Keys {
        admin: key(server, "acme", "admin"),
        viewer: key(server, "acme", "viewer"),
        other: key(server, "globex", "admin"),
    }
}

/// Runs tests/mcp_client.py to the end (within a deadline) and returns its report.
fn run_client(server: &Server, transport: &str, keys: &Keys) -> Value {
    let python = python();
    let out = tempfile::tempdir().expect("temporary directory");
    let (stdout, stderr) = (out.path().join("stdout"), out.path().join("stderr"));
    let mut child = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp_client.py"))
        .args([
            "--transport",
            transport,
            "--server",
            &server.url,
            "--cflow",
            BIN,
        ])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("MCP_TEST_TOKEN", &keys.admin)
        .env("MCP_TEST_VIEWER_TOKEN", &keys.viewer)
        .env("MCP_TEST_OTHER_TOKEN", &keys.other)
        .current_dir(out.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e} — run scripts/setup.sh", python.display()));
    let deadline = Instant::now() + SCRIPT_DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for the MCP client") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the MCP client did not finish within {SCRIPT_DEADLINE:?}: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (
        std::fs::read_to_string(&stdout).unwrap_or_default(),
        std::fs::read_to_string(&stderr).unwrap_or_default(),
    );
    assert!(
        status.success(),
        "the MCP client ({transport}) failed ({status}):\n{stderr}\nserver:\n{}",
        server.output()
    );
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the report is not JSON ({e}): {stdout}\n{stderr}"));
    assert_eq!(
        report["sdk_version"],
        pinned_sdk().as_str(),
        "the venv does not have the pinned SDK: run scripts/setup.sh"
    );
    report
}

/// A tool error's text (asserting that it is one).
#[track_caller]
fn tool_error(v: &Value) -> &str {
    assert_eq!(v["kind"], "tool_error", "{v}");
    v["text"].as_str().expect("text")
}

/// A protocol error's (code, message) (asserting that it is one).
#[track_caller]
fn protocol_error(v: &Value) -> (i64, &str) {
    assert_eq!(v["kind"], "protocol_error", "{v}");
    (
        v["code"].as_i64().expect("code"),
        v["message"].as_str().expect("message"),
    )
}

fn ids(page: &Value) -> Vec<&str> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect()
}

fn judge(server: &Server, transport: &str, keys: &Keys, r: &Value) {
    assert_eq!(r["transport"], transport);
    assert_eq!(r["server_info"]["name"], "cflow", "{}", r["server_info"]);
    assert_eq!(r["server_info"]["instructions"], true);

    // The tool list: all 26, each with an object schema, a description and its hints.
    let tools = r["tools"].as_array().expect("tools");
    let mut names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    names.sort_unstable();
    let mut expected = TOOLS.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected);
    for t in tools {
        assert_eq!(t["schema_type"], "object", "{t}");
        assert!(
            t["description"].as_str().is_some_and(|d| d.len() > 20),
            "{t}"
        );
        assert!(
            t["read_only"].is_boolean() && t["destructive"].is_boolean(),
            "{t}"
        );
    }
    let tool = |n: &str| tools.iter().find(|t| t["name"] == n).expect("tool");
    for ro in ["task_status", "memory_get", "swarm_list", "audit_query"] {
        assert_eq!(tool(ro)["read_only"], true, "{ro}");
    }
    for d in ["swarm_stop", "memory_delete", "task_cancel", "agent_stop"] {
        assert_eq!(tool(d)["destructive"], true, "{d}");
        assert_eq!(tool(d)["read_only"], false, "{d}");
    }
    let required = |n: &str| tool(n)["required"].as_array().cloned().unwrap_or_default();
    assert!(required("task_submit").contains(&"tasks".into()));
    for f in ["namespace", "key", "value"] {
        assert!(required("memory_store").contains(&f.into()), "{f}");
    }

    // Every tool was called, and succeeded at least once.
    let calls = r["calls"].as_array().expect("calls");
    for t in TOOLS {
        assert!(
            calls
                .iter()
                .any(|c| c["tool"] == t && c["who"] == "admin" && c["kind"] == "ok"),
            "{t} was not called successfully: {calls:?}"
        );
    }

    let s = &r["steps"];
    // A command ran end to end, with progress while task_wait waited.
    assert_eq!(s["task_wait"]["finished"], true, "{}", s["task_wait"]);
    assert_eq!(s["task_wait"]["state"], "succeeded", "{}", s["task_wait"]);
    let task_id = s["task_wait"]["id"].as_str().expect("task id");
    for (wait, progress) in [
        ("task_wait", "task_wait_progress"),
        ("dag_wait", "dag_wait_progress"),
    ] {
        let id = s[wait]["id"].as_str().expect("id");
        let p = s[progress].as_array().expect("progress");
        assert!(!p.is_empty(), "no progress notification during {wait}");
        assert!(p.iter().all(|n| n["total"] == 120.0), "{p:?}");
        assert!(
            p.iter().all(|n| n["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(&format!("task {id} is ")))),
            "{wait}: {p:?}"
        );
        assert!(
            p.iter().any(|n| n["message"]
                .as_str()
                .is_some_and(|m| m.ends_with("succeeded"))),
            "{wait}: the final state was reported: {p:?}"
        );
        let seconds: Vec<f64> = p.iter().filter_map(|n| n["progress"].as_f64()).collect();
        assert!(seconds.windows(2).all(|w| w[0] <= w[1]), "{p:?}");
    }
    assert_eq!(s["task_status"]["state"], "succeeded");
    assert_eq!(
        s["task_result"]["last_attempt"]["stdout"], "hello-from-python\n",
        "{}",
        s["task_result"]
    );
    assert_eq!(s["task_result"]["last_attempt"]["exit_code"], 0);
    assert_eq!(
        s["task_result"]["logs"],
        format!("cflow://tasks/{task_id}/logs").as_str()
    );
    // The DAG: the dependent ran after its dependency, both succeeded.
    assert_eq!(
        s["dag_submit"]["tasks"][1]["state"], "pending",
        "{}",
        s["dag_submit"]
    );
    assert_eq!(s["dag_wait"]["state"], "succeeded", "{}", s["dag_wait"]);
    assert_eq!(s["dag_wait"]["last_attempt"]["stdout"], "tested\n");
    assert_eq!(s["dag_first"]["state"], "succeeded");
    let listed = ids(&s["task_list"]);
    for t in s["dag_submit"]["tasks"].as_array().unwrap() {
        assert!(listed.contains(&t["id"].as_str().unwrap()), "{listed:?}");
    }
    assert!(listed.contains(&task_id), "{listed:?}");

    // Resources: both templates, and the task's logs.
    assert_eq!(
        s["resource_templates"],
        serde_json::json!([
            "cflow://tasks/{task_id}/logs",
            "cflow://tasks/{task_id}/artifacts/{sha256}"
        ])
    );
    let logs = &s["logs_resource"][0];
    assert_eq!(
        logs["uri"],
        format!("cflow://tasks/{task_id}/logs").as_str()
    );
    assert_eq!(logs["mime_type"], "application/json");
    let logs: Value = serde_json::from_str(logs["text"].as_str().unwrap()).expect("logs JSON");
    assert_eq!(
        logs["attempts"][0]["stdout"], "hello-from-python\n",
        "{logs}"
    );

    // Memory.
    assert_eq!(s["memory_store"]["version"], 1, "{}", s["memory_store"]);
    assert_eq!(
        s["memory_get"]["value"]["text"],
        "sqlite for tests, postgres in production"
    );
    let keys_listed: Vec<&str> = s["memory_list"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["key"].as_str())
        .collect();
    assert_eq!(keys_listed, ["decision", "other"]);
    assert!(
        s["memory_search"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["key"] == "decision"),
        "{}",
        s["memory_search"]
    );
    assert_eq!(s["memory_delete"]["deleted"], "project/py/decision");
    let gone = tool_error(&s["memory_get_deleted"]);
    assert!(
        gone.contains("not found") && gone.contains("memory_list"),
        "{gone}"
    );

    // Agents and a message between two of them.
    let agents = ids(&s["agent_list"]);
    assert!(agents.len() >= 2, "{agents:?}");
    assert!(agents.contains(&s["agent_spawn"]["id"].as_str().unwrap()));
    assert_eq!(s["agent_status"]["id"], s["agent_spawn"]["id"]);
    let inbox = &s["message_inbox"]["items"][0];
    assert_eq!(inbox["body"]["note"], "please review", "{inbox}");
    assert_eq!(inbox["from"], s["message_sender"]);
    assert_eq!(inbox["to"], s["message_receiver"]);

    // The swarm's life.
    assert_eq!(
        s["task_cancel"]["state"], "cancelled",
        "{}",
        s["task_cancel"]
    );
    let coder = s["swarm_scale"]["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == "coder")
        .expect("coder pool");
    assert_eq!(coder["max"], 3, "{coder}");
    assert_eq!(coder["driver"], "exec", "an absent field keeps its value");
    assert_eq!(s["swarm_pause"]["state"], "paused");
    assert_eq!(s["swarm_resume"]["state"], "active");
    assert!(
        matches!(
            s["agent_stop"]["state"].as_str(),
            Some("draining" | "stopped")
        ),
        "{}",
        s["agent_stop"]
    );
    assert_eq!(s["swarm_stop"]["state"], "stopped");
    assert_eq!(s["swarm_status_after_stop"]["state"], "stopped");
    assert_eq!(s["cost_report"]["by"], "model");
    assert_eq!(s["cost_report"]["total"]["calls"], 0);

    let e = &r["errors"];
    // A viewer calling destructive tools: tool errors naming the refused action; nothing changed.
    for (call, action) in [
        ("viewer_swarm_stop", "swarm.state"),
        ("viewer_memory_delete", "memory.delete"),
    ] {
        let text = tool_error(&e[call]);
        assert!(
            text.contains("viewer") && text.contains(action),
            "{call}: {text}"
        );
        // The same words over both transports.
        assert!(
            text.contains("permission denied") && text.contains("one of the roles"),
            "{transport} {call}: {text}"
        );
    }
    assert_eq!(
        s["viewer_swarm_status"]["state"], "active",
        "the refused stop changed nothing"
    );
    assert_eq!(
        s["after_viewer_memory_get"]["value"], 42,
        "the refused delete changed nothing"
    );

    // Arguments that do not fit the schema: an error answer naming the field, never a crash
    // (the session answers the next call).
    for (call, needle) in [
        ("unknown_field", "unknown field `swarm`"),
        ("wrong_type", "expected u64"),
        ("missing_field", "missing field `key`"),
    ] {
        let text = tool_error(&e[call]);
        assert!(text.contains(needle), "{call}: {text}");
    }
    let (code, message) = protocol_error(&e["unknown_tool"]);
    assert_eq!(code, -32602, "{message}");
    assert!(s["after_bad_arguments"]["items"].is_array());

    // Resources that do not exist: resource-not-found errors that say why.
    for (call, needle) in [
        ("resource_unknown_task", "not found"),
        ("resource_not_cflow", "not a cflow resource"),
        ("resource_other_tenant", "not found"),
    ] {
        let (code, message) = protocol_error(&e[call]);
        assert_eq!(code, -32002, "{call}: {message}");
        assert!(message.contains(needle), "{call}: {message}");
    }

    // Another tenant's ids do not exist for this tenant, and its task was left alone.
    for call in [
        "other_tenant_task_status",
        "other_tenant_task_cancel",
        "other_tenant_swarm_status",
    ] {
        let text = tool_error(&e[call]);
        assert!(text.contains("not found"), "{call}: {text}");
    }
    let other_task = s["other_task_id"].as_str().unwrap();
    let theirs = run(server
        .cflow()
        .env("CFLOW_TOKEN", &keys.other)
        .args(["task", "get", other_task, "--output", "json"]))
    .json();
    assert_ne!(theirs["state"], "cancelled", "{theirs}");

    // The ledger: an `mcp.call` entry for every tool, with this transport, as the caller; the
    // refused calls as failures with their reason.
    let audit = run(server
        .cflow()
        .env("CFLOW_TOKEN", &keys.admin)
        .args(["audit", "export", "--since", "1h"]));
    let entries: Vec<Value> = audit
        .ok()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit JSON line"))
        .filter(|e: &Value| e["action"] == "mcp.call")
        .collect();
    for t in TOOLS {
        assert!(
            entries.iter().any(|e| e["detail"]["tool"] == t
                && e["detail"]["transport"] == transport
                && e["outcome"] == "success"
                && e["resource"] == format!("mcp/{t}").as_str()),
            "no successful mcp.call entry for {t}"
        );
    }
    let failed = |tool: &str, needle: &str| {
        entries.iter().any(|e| {
            e["detail"]["tool"] == tool
                && e["outcome"] == "failure"
                && e["detail"]["error"]
                    .as_str()
                    .is_some_and(|m| m.contains(needle))
        })
    };
    assert!(
        failed("swarm_stop", "viewer"),
        "the viewer's refusal is audited"
    );
    assert!(failed("task_status", "not found"));
    assert!(failed("swarm_status", "unknown field"));
    // The report's own audit_query saw the ledger as the tool returns it.
    assert!(
        s["audit_query"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "mcp.call" && e["detail"]["tool"] == "swarm_init"),
        "audit_query shows mcp.call entries"
    );
    // Tenant isolation holds in the ledger too: globex's export has none of acme's calls.
    let theirs = run(server
        .cflow()
        .env("CFLOW_TOKEN", &keys.other)
        .args(["audit", "export", "--since", "1h"]));
    assert!(
        !theirs.ok().contains("memory_store"),
        "globex sees acme's calls"
    );
}

#[test]
fn python_sdk_over_stdio() {
    let server = Server::start();
    let keys = keys(&server);
    let report = run_client(&server, "stdio", &keys);
    judge(&server, "stdio", &keys, &report);
}

#[test]
fn python_sdk_over_streamable_http() {
    let server = Server::start();
    let keys = keys(&server);
    let report = run_client(&server, "http", &keys);
    judge(&server, "http", &keys, &report);
}
