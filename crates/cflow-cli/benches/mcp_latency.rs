//! MCP tool-call latency, end to end through a real `cflow up`: over stdio (`cflow mcp`, a
//! separate process and a thin HTTP client of the server) and over streamable HTTP (`/mcp` on the
//! server), for `memory_get`, `memory_store`, `task_status` and `swarm_status`, driven by rmcp's
//! own client (a Python client's overhead would dominate the numbers). The same requests through
//! the plain HTTP API are the baseline, with the `mcp.call` ledger entry every MCP call appends:
//! the difference is what MCP adds.
//!
//! `cargo bench -p cflow-cli --bench mcp_latency` (`MCP_LATENCY_CALLS` sets the calls per tool,
//! default 2000, after a warm-up of a tenth of that).

#[allow(dead_code)]
#[path = "../tests/it/harness.rs"]
mod harness;

use harness::{BIN, Server};
use hdrhistogram::Histogram;
use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{ConfigureCommandExt, StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{Peer, RoleClient, ServiceExt};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

type Client = RunningService<RoleClient, ()>;

async fn stdio(server: &Server, token: &str) -> Client {
    let url = server.url.clone();
    let token = token.to_string();
    let cwd = server.work().to_path_buf();
    let transport = TokioChildProcess::new(tokio::process::Command::new(BIN).configure(|cmd| {
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CFLOW_SERVER", &url)
            .env("CFLOW_TOKEN", &token)
            .current_dir(&cwd)
            .arg("mcp");
    }))
    .expect("spawning cflow mcp");
    ().serve(transport)
        .await
        .expect("MCP initialize over stdio")
}

async fn http(server: &Server, token: &str) -> Client {
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", server.url))
        .auth_header(token);
    ().serve(StreamableHttpClientTransport::from_config(config))
        .await
        .expect("MCP initialize over HTTP")
}

async fn call(peer: &Peer<RoleClient>, tool: &str, args: &Value) -> Value {
    let Value::Object(args) = args.clone() else {
        panic!("arguments must be an object")
    };
    let r = peer
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    let text: String = r
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect();
    assert_ne!(r.is_error, Some(true), "{tool} failed: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

struct Row {
    transport: &'static str,
    op: String,
    hist: Histogram<u64>,
}

impl Row {
    fn new(transport: &'static str, op: &str) -> Self {
        Self {
            transport,
            op: op.to_string(),
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
        }
    }

    fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.hist.saturating_record(us);
    }

    fn ms(us: f64) -> String {
        format!("{:.3}", us / 1000.0)
    }

    fn print(&self) {
        let h = &self.hist;
        println!(
            "{:<7} {:<22} {:>6} {:>9} {:>9} {:>9} {:>9}",
            self.transport,
            self.op,
            h.len(),
            Self::ms(h.mean()),
            Self::ms(h.value_at_quantile(0.50) as f64),
            Self::ms(h.value_at_quantile(0.99) as f64),
            Self::ms(h.max() as f64),
        );
    }
}

/// Each tool's arguments for call `i`.
fn args(tool: &str, i: usize, swarm: &str, task: &str) -> Value {
    match tool {
        "memory_get" => json!({"namespace": "bench", "key": "hot"}),
        "memory_store" => {
            json!({"namespace": "bench", "key": format!("k{}", i % 100), "value": {"i": i}})
        }
        "task_status" => json!({"task_id": task}),
        "swarm_status" => json!({"swarm_id": swarm}),
        other => panic!("no arguments for {other}"),
    }
}

const TOOLS: [&str; 4] = ["memory_get", "memory_store", "task_status", "swarm_status"];

async fn measure_mcp(
    transport: &'static str,
    client: &Client,
    calls: usize,
    swarm: &str,
    task: &str,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for tool in TOOLS {
        for i in 0..calls / 10 {
            call(client, tool, &args(tool, i, swarm, task)).await;
        }
        let mut row = Row::new(transport, tool);
        for i in 0..calls {
            let a = args(tool, i, swarm, task);
            let start = Instant::now();
            call(client, tool, &a).await;
            row.record(start.elapsed());
        }
        rows.push(row);
    }
    rows
}

/// The same reads and writes through the HTTP API (one keep-alive connection): the baseline.
async fn measure_api(
    server: &Server,
    token: &str,
    calls: usize,
    swarm: &str,
    task: &str,
) -> Vec<Row> {
    let client = reqwest::Client::new();
    let url = |p: &str| format!("{}/api/v1/{p}", server.url);
    let mut rows = Vec::new();
    // The last one is what each MCP call adds after the tool ran: its `mcp.call` ledger entry (a
    // durable commit), recorded before the call is answered.
    for tool in TOOLS.into_iter().chain(["mcp.call record"]) {
        let mut row = Row::new("api", &format!("({tool})"));
        for i in 0..calls + calls / 10 {
            let req = match tool {
                "memory_get" => client.get(url("memory/bench/hot")),
                "memory_store" => client
                    .put(url(&format!("memory/bench/k{}", i % 100)))
                    .json(&json!({"value": {"i": i}})),
                "task_status" => client.get(url(&format!("tasks/{task}"))),
                "swarm_status" => client.get(url(&format!("swarms/{swarm}"))),
                _ => client.post(url("mcp/calls")).json(&json!({
                    "tool": "memory_get", "transport": "http", "ok": true, "duration_ms": 0,
                    "arguments": {"namespace": "bench", "key": "hot"}})),
            };
            let start = Instant::now();
            let resp = req.bearer_auth(token).send().await.expect("request");
            let status = resp.status();
            let _ = resp.bytes().await.expect("body");
            assert!(status.is_success(), "{tool}: {status}");
            if i >= calls / 10 {
                row.record(start.elapsed());
            }
        }
        rows.push(row);
    }
    rows
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let calls: usize = std::env::var("MCP_LATENCY_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    // The bench sends a few thousand requests a second with one key: no rate limit.
    let server = Server::launch(
        tempfile::tempdir().expect("temporary directory"),
        "up",
        &[
            ("CFLOW_RATE_LIMIT_PER_KEY_RPS", "0"),
            ("CFLOW_RATE_LIMIT_PER_TENANT_RPS", "0"),
        ],
    );
    let token = server.admin_token();

    // A swarm, a finished task (with its attempt) and a memory entry to read.
    let setup = http(&server, &token).await;
    let swarm = call(
        &setup,
        "swarm_init",
        &json!({"name": "bench", "topology": "mesh",
                "agents": [{"type": "coder", "driver": "exec", "min": 1}]}),
    )
    .await;
    let swarm = swarm["id"].as_str().expect("swarm id").to_string();
    let submitted = call(
        &setup,
        "task_submit",
        &json!({"tasks": [{"swarm": swarm, "spec": {"command": "echo bench"}}]}),
    )
    .await;
    let task = submitted["tasks"][0]["id"]
        .as_str()
        .expect("task id")
        .to_string();
    let done = call(
        &setup,
        "task_wait",
        &json!({"task_id": task, "timeout_seconds": 120}),
    )
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    call(
        &setup,
        "memory_store",
        &json!({"namespace": "bench", "key": "hot", "value": {"text": "a decision worth keeping"}}),
    )
    .await;
    setup.cancel().await.expect("closing the setup session");

    println!("MCP tool-call latency, {calls} calls per tool after a warm-up, in ms");
    println!(
        "{:<7} {:<22} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "via", "tool", "calls", "mean", "p50", "p99", "max"
    );
    let mut rows = Vec::new();
    let client = stdio(&server, &token).await;
    rows.extend(measure_mcp("stdio", &client, calls, &swarm, &task).await);
    client.cancel().await.expect("closing the stdio session");
    let client = http(&server, &token).await;
    rows.extend(measure_mcp("http", &client, calls, &swarm, &task).await);
    client.cancel().await.expect("closing the HTTP session");
    rows.extend(measure_api(&server, &token, calls, &swarm, &task).await);
    for r in &rows {
        r.print();
    }
    let (status, _, _) = server.stop();
    assert!(status.success(), "cflow up stopped cleanly");
}
