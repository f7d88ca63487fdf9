//! cflow's agent tools for `claude-code` agents, over MCP: the real Claude Code CLI in the full
//! sandbox (network off but for the model endpoint), against `MockLlm` scripted to call
//! `mcp__cflow__…` tools. The driver's per-attempt MCP server is reached through the
//! `cflow-sandbox mcp-bridge` stdio bridge and a Unix socket in the agent's home; every call
//! reaches the job's host as `HostCall::Tool`, and a refusal comes back to the model as a tool
//! error. (The server's side — the store, the topology, the audit — is tested end to end in
//! cflow-cli's `claude_mcp`.)

use crate::{Harness, PATH};
use cflow_agents::host::{Host, HostCall, HostError, HostHandle};
use cflow_agents::model::ModelSetup;
use cflow_agents::{BoxFuture, ClaudeCodeDriver, ClaudeConfig, ClaudeSpec, Driver, Job, JobSpec};
use cflow_test_support::llm_mock::{MockLlm, RecordedRequest, Turn};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn claude_bin() -> Option<String> {
    ["/usr/bin/claude", "/usr/local/bin/claude"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(str::to_string)
}

/// The refusal the host gives every `send_message`, as the server does when the topology
/// forbids the peer.
const REFUSAL: &str = "the swarm's topology (hierarchical) does not let agent-m message agent-z: \
                       send it to your coordinator instead";

/// A server as one attempt sees it: no provider of the tenant's (the worker's configuration
/// applies), `memory_put` accepted, `send_message` refused; every tool call recorded.
#[derive(Default)]
struct ToolHost {
    calls: Mutex<Vec<(String, Value)>>,
}

impl Host for ToolHost {
    fn call(&self, call: HostCall) -> BoxFuture<'_, Result<Value, HostError>> {
        Box::pin(async move {
            match call {
                HostCall::Setup => Ok(serde_json::to_value(ModelSetup::default()).unwrap()),
                HostCall::Tool { name, input } => {
                    self.calls
                        .lock()
                        .unwrap()
                        .push((name.clone(), input.clone()));
                    match name.as_str() {
                        "memory_put" => Ok(json!({"namespace": "swarm", "key": input["key"],
                                                  "version": 1})),
                        "send_message" => Err(HostError::Refused(REFUSAL.into())),
                        other => Err(HostError::Refused(format!("unexpected tool {other}"))),
                    }
                }
                other => panic!("the claude-code driver does not ask for {other:?}"),
            }
        })
    }
}

struct Shared(Arc<ToolHost>);

impl Host for Shared {
    fn call(&self, call: HostCall) -> BoxFuture<'_, Result<Value, HostError>> {
        self.0.call(call)
    }
}

fn driver(h: &Harness, bin: String, mock: &MockLlm) -> ClaudeCodeDriver {
    ClaudeCodeDriver::new(
        h.driver.clone(),
        ClaudeConfig {
            binary: bin,
            base_url: Some(mock.url()),
            api_key: Some("sk-ant-test-0000000000000000".into()),
            homes: h.data().join("agents"),
        },
    )
}

async fn run(
    driver: &ClaudeCodeDriver,
    task: &str,
    allowed_tools: Vec<String>,
    host: Option<HostHandle>,
) -> (cflow_agents::JobOutcome, Vec<(String, Value)>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let drain = tokio::spawn(async move {
        let mut agent_events = Vec::new();
        while let Some(ev) = rx.recv().await {
            if let cflow_agents::JobEvent::Agent { kind, data } = ev {
                agent_events.push((kind, data));
            }
        }
        agent_events
    });
    let job = Job {
        task_id: task.into(),
        attempt: 1,
        spec: JobSpec::Claude(ClaudeSpec {
            prompt: "Record the plan in the swarm's memory and tell agent-z.".into(),
            model: Some("claude-sonnet-4-5".into()),
            max_turns: Some(6),
            permission_mode: Some("acceptEdits".into()),
            allowed_tools,
            env: vec![("PATH".into(), PATH.into())],
            workspace: None,
            artifacts: None,
        }),
        timeout: Duration::from_secs(90),
        output_cap: 1 << 20,
        sandbox: None,
        agent_id: "agent-m".into(),
        epoch: 0,
        host,
    };
    let out = driver
        .run(job, tx, tokio_util::sync::CancellationToken::new())
        .await
        .expect("the claude-code job runs");
    (out, drain.await.unwrap())
}

/// The tools a request offered the model.
fn offered(req: &RecordedRequest) -> Vec<String> {
    req.body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .collect()
}

/// The `tool_result` blocks of a request's last message.
fn tool_results(req: &RecordedRequest) -> Vec<Value> {
    req.body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_array())
        .into_iter()
        .flatten()
        .filter(|b| b["type"] == "tool_result")
        .cloned()
        .collect()
}

/// A tool result's text: a string, or its text blocks joined.
fn result_text(block: &Value) -> String {
    match &block["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}

fn sockets_left(h: &Harness) -> Vec<String> {
    std::fs::read_dir(h.data().join("agents").join("agent-m"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".cflow-mcp-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_calls_cflow_tools_over_mcp_from_the_sandbox() {
    let Some(bin) = claude_bin() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "the Claude Code CLI is not installed (scripts/setup.sh installs it with npm)"
        );
        eprintln!("skipped: the Claude Code CLI is not installed");
        return;
    };
    let h = Harness::new(|_| {});
    let mock = MockLlm::with_turns([
        Turn::tool_use(
            "mcp__cflow__memory_put",
            json!({"key": "plan/api", "value": "ship the API first"}),
        ),
        Turn::tool_use(
            "mcp__cflow__send_message",
            json!({"to_agent_id": "agent-z", "body": "the plan is in memory"}),
        ),
        Turn::text("Stored the plan; agent-z could not be told."),
    ])
    .await;
    let driver = driver(&h, bin, &mock);
    let host = Arc::new(ToolHost::default());
    let (out, events) = run(
        &driver,
        "ccm-1",
        Vec::new(),
        Some(HostHandle::new(Shared(Arc::clone(&host)))),
    )
    .await;
    assert!(
        out.end.is_success(),
        "{:?}\nstdout {}\nstderr {}\n{:?}",
        out.end,
        out.stdout.text(),
        out.stderr.text(),
        out.result_error
    );
    assert_eq!(
        out.result.as_ref().unwrap()["result"],
        "Stored the plan; agent-z could not be told."
    );
    // Both calls reached the host, as the agent's, with the model's input.
    let calls = host.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![
            (
                "memory_put".to_string(),
                json!({"key": "plan/api", "value": "ship the API first"})
            ),
            (
                "send_message".to_string(),
                json!({"to_agent_id": "agent-z", "body": "the plan is in memory"})
            ),
        ],
        "{}",
        out.stdout.text()
    );
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 3, "{reqs:#?}");
    // Every server tool was offered under its MCP name.
    let tools = offered(&reqs[0]);
    for t in cflow_agents::host::SERVER_TOOLS {
        assert!(
            tools.contains(&format!("mcp__cflow__{t}")),
            "{t} not offered: {tools:?}"
        );
    }
    // The accepted call's answer, then the refusal as a tool error, each in the next request.
    let put = tool_results(&reqs[1]);
    assert_eq!(put.len(), 1, "{:#}", reqs[1].body);
    assert_ne!(put[0]["is_error"], true, "{:#}", put[0]);
    assert!(
        result_text(&put[0]).contains("\"version\":1"),
        "{:#}",
        put[0]
    );
    let refused = tool_results(&reqs[2]);
    assert_eq!(refused.len(), 1, "{:#}", reqs[2].body);
    assert_eq!(refused[0]["is_error"], true, "{:#}", refused[0]);
    assert!(
        result_text(&refused[0]).contains(REFUSAL),
        "{:#}",
        refused[0]
    );
    // The stream's events name the calls (the server audits them as `agent.tool`).
    let used: Vec<&Value> = events
        .iter()
        .filter(|(k, _)| k == "tool_use")
        .map(|(_, d)| &d["name"])
        .collect();
    assert_eq!(
        used,
        [
            &json!("mcp__cflow__memory_put"),
            &json!("mcp__cflow__send_message")
        ]
    );
    assert!(
        events
            .iter()
            .any(|(k, d)| k == "tool_result" && d["is_error"] == true),
        "{events:?}"
    );
    // Every layer was on, and nothing was refused on the way to the server's tools.
    let sb = out.sandbox.as_ref().expect("sandboxed");
    assert!(sb.layers.values().all(|l| l.is_active()), "{:?}", sb.layers);
    assert!(sb.denied.is_empty(), "{:?}", sb.denied);
    // The server lived as long as the attempt: its socket is gone.
    assert_eq!(sockets_left(&h), Vec::<String>::new());
}

/// A task whose `allowed_tools` restricts gets only the server tools it names; a job without a
/// host (no server to act for) gets none, and no MCP configuration at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_gets_only_the_allowed_cflow_tools_and_none_without_a_host() {
    let Some(bin) = claude_bin() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "the Claude Code CLI is not installed"
        );
        return;
    };
    let h = Harness::new(|_| {});
    let mock = MockLlm::with_turns([Turn::text("ok"), Turn::text("ok")]).await;
    let driver = driver(&h, bin, &mock);
    let host = HostHandle::new(ToolHost::default());
    let (out, _) = run(
        &driver,
        "ccm-2",
        vec!["Write".into(), "mcp__cflow__memory_get".into()],
        Some(host),
    )
    .await;
    assert!(out.end.is_success(), "{:?} {}", out.end, out.stderr.text());
    let (out, _) = run(&driver, "ccm-3", Vec::new(), None).await;
    assert!(out.end.is_success(), "{:?} {}", out.end, out.stderr.text());
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    let restricted: Vec<String> = offered(&reqs[0])
        .into_iter()
        .filter(|t| t.starts_with("mcp__"))
        .collect();
    assert_eq!(restricted, ["mcp__cflow__memory_get"]);
    let without_host: Vec<String> = offered(&reqs[1])
        .into_iter()
        .filter(|t| t.starts_with("mcp__"))
        .collect();
    assert_eq!(without_host, Vec::<String>::new());
    assert_eq!(sockets_left(&h), Vec::<String>::new());
}
