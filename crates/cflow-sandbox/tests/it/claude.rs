//! The `claude-code` driver with the real Claude Code CLI (from the npm registry), in the full
//! sandbox, against a local server speaking the Anthropic Messages API (streaming): the CLI
//! reaches that endpoint through the egress proxy and nothing else, edits a file in the
//! workspace through its `Write` tool, its final result (session, turns, usage, cost) becomes
//! the task's result, and the agent's next task resumes the session.

use crate::{Harness, PATH};
use cflow_agents::host::{Host, HostCall, HostError, HostHandle};
use cflow_agents::model::{ModelSetup, ProviderSetup};
use cflow_agents::{BoxFuture, ClaudeCodeDriver, ClaudeConfig, ClaudeSpec, Driver, Job, JobSpec};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where `npm install -g @anthropic-ai/claude-code` puts the CLI (visible in the sandbox's
/// read-only view, unlike anything under /root).
fn claude_bin() -> Option<String> {
    ["/usr/bin/claude", "/usr/local/bin/claude"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(str::to_string)
}

struct Mock {
    port: u16,
    requests: Arc<Mutex<Vec<(String, Value)>>>,
}

/// A minimal Messages API: a request whose last message carries a `tool_result` gets a final
/// text; any other gets a `tool_use` of `Write` creating `file` with `content`.
fn mock(file: String, content: &'static str) -> Mock {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&requests);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (seen, file) = (Arc::clone(&seen), file.clone());
            std::thread::spawn(move || {
                let _ = serve(conn, &seen, &file, content);
            });
        }
    });
    Mock { port, requests }
}

fn serve(
    conn: std::net::TcpStream,
    seen: &Mutex<Vec<(String, Value)>>,
    file: &str,
    content: &str,
) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut w = conn;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let request_line = line.trim().to_string();
        let mut len = 0usize;
        let mut headers = String::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            if h == "\r\n" || h.is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            headers.push_str(&h);
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !request_line.starts_with("POST") || !request_line.contains("/v1/messages") {
            w.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")?;
            continue;
        }
        if request_line.contains("count_tokens") {
            let out = br#"{"input_tokens": 10}"#;
            write!(
                w,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                out.len()
            )?;
            w.write_all(out)?;
            continue;
        }
        seen.lock().unwrap().push((headers.clone(), req.clone()));
        let last_has_result = req["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_array())
            .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"));
        let model = req["model"].as_str().unwrap_or("claude").to_string();
        let start = json!({"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":model,"content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":100,"output_tokens":1,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}}});
        let mut events = vec![("message_start", start)];
        let stop = if last_has_result {
            events.push(("content_block_start", json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}})));
            events.push(("content_block_delta", json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Wrote the file."}})));
            "end_turn"
        } else {
            let input = json!({"file_path": file, "content": content}).to_string();
            events.push(("content_block_start", json!({"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_1","name":"Write","input":{}}})));
            events.push(("content_block_delta", json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":input}})));
            "tool_use"
        };
        events.push((
            "content_block_stop",
            json!({"type":"content_block_stop","index":0}),
        ));
        events.push(("message_delta", json!({"type":"message_delta","delta":{"stop_reason":stop,"stop_sequence":null},"usage":{"output_tokens":20}})));
        events.push(("message_stop", json!({"type":"message_stop"})));
        w.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n")?;
        for (name, data) in events {
            write!(w, "event: {name}\ndata: {data}\n\n")?;
        }
        w.flush()?;
        return Ok(());
    }
}

async fn run(
    driver: &ClaudeCodeDriver,
    task: &str,
    agent: &str,
    prompt: &str,
) -> (cflow_agents::JobOutcome, Vec<(String, Value)>) {
    run_with(driver, task, agent, prompt, None).await
}

async fn run_with(
    driver: &ClaudeCodeDriver,
    task: &str,
    agent: &str,
    prompt: &str,
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
            prompt: prompt.into(),
            model: Some("claude-sonnet-4-5".into()),
            max_turns: Some(4),
            permission_mode: Some("acceptEdits".into()),
            allowed_tools: vec!["Write".into()],
            env: vec![("PATH".into(), PATH.into())],
            workspace: None,
            artifacts: None,
        }),
        timeout: Duration::from_secs(90),
        output_cap: 1 << 20,
        sandbox: None,
        agent_id: agent.into(),
        epoch: 0,
        host,
    };
    let out = driver
        .run(job, tx, tokio_util::sync::CancellationToken::new())
        .await
        .expect("the claude-code job runs");
    (out, drain.await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_works_in_the_sandbox_through_the_egress_proxy_and_resumes() {
    let Some(bin) = claude_bin() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "the Claude Code CLI is not installed (scripts/setup.sh installs it with npm)"
        );
        eprintln!("skipped: the Claude Code CLI is not installed");
        return;
    };
    let h = Harness::new(|_| {});
    let ws = h.data().join("workspaces").join("cc-1-1");
    let m = mock(
        ws.join("hello.txt").display().to_string(),
        "hello from claude\n",
    );
    let driver = ClaudeCodeDriver::new(
        h.driver.clone(),
        ClaudeConfig {
            binary: bin,
            base_url: Some(format!("http://127.0.0.1:{}", m.port)),
            api_key: Some("sk-ant-test-0000000000000000".into()),
            homes: h.data().join("agents"),
        },
    );
    let (out, events) = run(&driver, "cc-1", "agent-a", "Create hello.txt saying hello").await;
    // The stream became agent events: the Write call, its result, the final text.
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert!(kinds.contains(&"session"), "{kinds:?}");
    let write = events
        .iter()
        .find(|(k, d)| k == "tool_use" && d["name"] == "Write");
    assert!(write.is_some(), "{events:?}");
    let result = events
        .iter()
        .find(|(k, _)| k == "tool_result")
        .map(|(_, d)| d.clone());
    assert_eq!(
        result.as_ref().map(|d| d["is_error"].clone()),
        Some(json!(false)),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|(k, d)| k == "assistant_text" && d["text"] == "Wrote the file.")
    );
    assert!(
        out.end.is_success(),
        "{:?}\nstdout {}\nstderr {}\n{:?}",
        out.end,
        out.stdout.text(),
        out.stderr.text(),
        out.result_error
    );
    let result = out
        .result
        .clone()
        .expect("the result event becomes the task's result");
    assert_eq!(result["is_error"], false, "{result:#}");
    assert_eq!(result["result"], "Wrote the file.");
    assert_eq!(result["num_turns"], 2, "{result:#}");
    assert!(result["session_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(
        result["usage"]["output_tokens"].as_u64().unwrap_or(0) >= 20,
        "{result:#}"
    );
    // Per-model usage, for cost and budgets: the model the task named.
    let usage = out
        .model_usage
        .iter()
        .find(|u| u.model == "claude-sonnet-4-5")
        .unwrap_or_else(|| panic!("{:?}", out.model_usage));
    assert_eq!(usage.provider, "anthropic");
    assert!(
        usage.output_tokens >= 40 && usage.input_tokens >= 200,
        "{usage:?}"
    );
    // The CLI's Write tool ran in the workspace (kept only on failure: read the patch-free
    // evidence from the mock instead): the second request carried the tool result.
    let reqs = m.requests.lock().unwrap().clone();
    assert!(reqs.len() >= 2, "{} requests", reqs.len());
    assert!(reqs.iter().all(|(headers, _)| {
        headers
            .to_ascii_lowercase()
            .contains("sk-ant-test-0000000000000000")
    }));
    let tool_result = reqs[1].1["messages"].to_string();
    assert!(tool_result.contains("tool_result"), "{tool_result}");
    assert!(
        !tool_result.contains("is_error\":true"),
        "the Write failed: {tool_result}"
    );
    // Only the model endpoint was reachable: anything else the CLI tried was refused and recorded.
    let sb = out.sandbox.as_ref().expect("sandboxed");
    assert!(sb.layers.values().all(|l| l.is_active()), "{:?}", sb.layers);
    assert!(
        sb.denied
            .iter()
            .all(|d| !d.contains(&format!("127.0.0.1:{}", m.port))),
        "{:?}",
        sb.denied
    );

    // The agent's next task resumes its session: the first request carries the earlier turns.
    let before = reqs.len();
    let (out2, _) = run(&driver, "cc-2", "agent-a", "And now say done").await;
    assert!(
        out2.end.is_success(),
        "{:?}\n{}\n{:?}",
        out2.end,
        out2.stderr.text(),
        out2.result_error
    );
    let reqs = m.requests.lock().unwrap().clone();
    let first_of_second = &reqs[before].1;
    let history = first_of_second["messages"].as_array().map_or(0, Vec::len);
    assert!(
        history >= 3,
        "the second task did not resume the session: {first_of_second:#}"
    );
    assert!(out2.result.as_ref().unwrap()["session_id"].is_string());
}

/// The server's answer to `Setup`: the tenant's providers.
struct SetupHost(Result<ModelSetup, HostError>);

impl Host for SetupHost {
    fn call(&self, call: HostCall) -> BoxFuture<'_, Result<Value, HostError>> {
        Box::pin(async move {
            assert_eq!(
                call,
                HostCall::Setup,
                "the claude-code driver asks only for its setup"
            );
            self.0
                .clone()
                .map(|s| serde_json::to_value(s).expect("a setup serialises"))
        })
    }
}

/// The tenant's Anthropic provider (base URL and key from the server's setup) wins over the
/// worker's own configuration; a setup the server refuses fails the attempt with its message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_uses_the_tenants_provider_from_the_server() {
    let Some(bin) = claude_bin() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "the Claude Code CLI is not installed"
        );
        eprintln!("skipped: the Claude Code CLI is not installed");
        return;
    };
    let h = Harness::new(|_| {});
    let ws = h.data().join("workspaces").join("cc-t-1");
    let m = mock(ws.join("t.txt").display().to_string(), "tenant\n");
    // The worker's own configuration points nowhere useful.
    let driver = ClaudeCodeDriver::new(
        h.driver.clone(),
        ClaudeConfig {
            binary: bin,
            base_url: Some("http://127.0.0.1:9".into()),
            api_key: Some("sk-ant-worker-111111111111".into()),
            homes: h.data().join("agents"),
        },
    );
    let setup = ModelSetup {
        providers: vec![ProviderSetup {
            name: "anthropic".into(),
            kind: "anthropic".into(),
            base_url: format!("http://127.0.0.1:{}", m.port),
            model: "claude-sonnet-4-5".into(),
            api_key: Some("sk-ant-tenant-222222222222".into()),
            extra_headers: Vec::new(),
            azure_api_version: None,
        }],
        agent_type: "coder".into(),
        ..ModelSetup::default()
    };
    let host = HostHandle::new(SetupHost(Ok(setup)));
    let (out, _) = run_with(&driver, "cc-t", "agent-t", "Create t.txt", Some(host)).await;
    assert!(
        out.end.is_success(),
        "{:?}\n{}\n{:?}",
        out.end,
        out.stderr.text(),
        out.result_error
    );
    let reqs = m.requests.lock().unwrap().clone();
    assert!(!reqs.is_empty());
    for (headers, _) in &reqs {
        let headers = headers.to_ascii_lowercase();
        assert!(headers.contains("sk-ant-tenant-222222222222"), "{headers}");
        assert!(!headers.contains("sk-ant-worker"), "{headers}");
    }

    let refused = HostHandle::new(SetupHost(Err(HostError::Refused(
        "the provider 'anthropic' needs the secret ANTHROPIC_KEY: cflow secret set ANTHROPIC_KEY"
            .into(),
    ))));
    let (tx, _rx) = tokio::sync::mpsc::channel(64);
    let job = Job {
        task_id: "cc-r".into(),
        attempt: 1,
        spec: JobSpec::Claude(ClaudeSpec {
            prompt: "x".into(),
            model: None,
            max_turns: None,
            permission_mode: None,
            allowed_tools: Vec::new(),
            env: Vec::new(),
            workspace: None,
            artifacts: None,
        }),
        timeout: Duration::from_secs(30),
        output_cap: 1 << 20,
        sandbox: None,
        agent_id: "agent-r".into(),
        epoch: 0,
        host: Some(refused),
    };
    let err = driver
        .run(job, tx, tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("a refused setup fails the attempt");
    assert!(
        err.to_string().contains("cflow secret set ANTHROPIC_KEY"),
        "{err}"
    );
    assert_eq!(
        m.requests.lock().unwrap().len(),
        reqs.len(),
        "nothing was sent"
    );
}

/// No credentials: the CLI answers "Not logged in", and the attempt fails with that message.
/// No CLI: the attempt fails saying how to install it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_fails_clearly_when_not_logged_in_or_missing() {
    let Some(bin) = claude_bin() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "the Claude Code CLI is not installed"
        );
        return;
    };
    let h = Harness::new(|_| {});
    let m = mock("/nowhere".into(), "");
    let driver = ClaudeCodeDriver::new(
        h.driver.clone(),
        ClaudeConfig {
            binary: bin,
            base_url: Some(format!("http://127.0.0.1:{}", m.port)),
            api_key: None,
            homes: h.data().join("agents"),
        },
    );
    let (out, _) = run(&driver, "nologin", "agent-b", "hi").await;
    assert!(!out.end.is_success(), "{:?}", out.end);
    let why = out.result_error.clone().unwrap_or_default();
    assert!(
        why.contains("Not logged in"),
        "{why}\n{}",
        out.stdout.text()
    );
    assert_eq!(out.result.as_ref().unwrap()["is_error"], true);

    let missing = ClaudeCodeDriver::new(
        h.driver.clone(),
        ClaudeConfig {
            binary: "/usr/bin/no-such-claude".into(),
            base_url: None,
            api_key: None,
            homes: h.data().join("agents"),
        },
    );
    let (out, _) = run(&missing, "missing", "agent-c", "hi").await;
    assert_eq!(out.end, cflow_agents::JobEnd::Exited { code: 127 });
    let why = out.result_error.clone().unwrap_or_default();
    assert!(
        why.contains("npm install -g @anthropic-ai/claude-code"),
        "{why}"
    );
}
