//! The platform's share of a model turn, through the whole server: a `llm` agent of the local
//! pool (sandbox on when the host has it) works a task of `TURNS` turns against `MockLlm` (zero
//! model latency; each turn calls `list_files`, then the answer). Per turn the platform does the
//! fenced budget check, the streamed call, the usage record (a durable commit), the events and
//! the tool-call audit entry (another commit). The attempt's wall time per turn is compared with
//! the same requests sent straight through `cflow_llm::Client`.
//!
//! `cargo bench -p cflow-server --bench model_turns` (`MODEL_TURNS` sets the turns, default 100).

use cflow_test_support::llm_mock::{MockLlm, Turn};
use cflow_test_support::server::TestServer;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const KEY: &str = "sk-ant-bench-0123456789";

fn script(turns: usize) -> Vec<Turn> {
    let mut t: Vec<Turn> = (0..turns - 1)
        .map(|_| Turn::tool_use("list_files", json!({})))
        .collect();
    t.push(Turn::text("done"));
    t
}

async fn send(
    server: &TestServer,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> Value {
    let resp = server
        .client()
        .request(method, server.at(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {v}");
    v
}

/// The same turns straight through the provider client.
async fn raw(url: &str, turns: usize) -> Duration {
    let client = cflow_llm::Client::new(
        cflow_llm::ProviderConfig::new(
            "mock",
            cflow_llm::ProviderKind::Anthropic,
            url,
            "claude-sonnet-4-5",
        )
        .with_api_key(KEY),
    )
    .expect("client");
    let mut req = cflow_llm::Request {
        model: String::new(),
        system: "bench".into(),
        messages: vec![cflow_llm::Message::user("bench")],
        tools: Vec::new(),
        max_tokens: 1024,
        temperature: None,
    };
    let cancel = CancellationToken::new();
    let start = Instant::now();
    for _ in 0..turns {
        let resp = client
            .complete(&req, None, &cancel)
            .await
            .expect("raw call");
        req.messages.push(resp.to_message());
        if let Some((id, _, _)) = resp.tool_uses().next() {
            req.messages
                .push(cflow_llm::Message::tool_result(id, "a.txt\n", false));
        }
    }
    start.elapsed()
}

#[tokio::main]
async fn main() {
    let turns: usize = std::env::var("MODEL_TURNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let server = TestServer::start_sqlite().await;
    let (tenant, admin) = server.tenant_with_key("bench", "admin").await;
    send(
        &server,
        &admin,
        reqwest::Method::PUT,
        "/api/v1/secrets/KEY",
        json!({"value": KEY}),
    )
    .await;
    let mut best_task = Duration::MAX;
    let mut best_raw = Duration::MAX;
    let swarm = send(
        &server,
        &admin,
        reqwest::Method::POST,
        "/api/v1/swarms",
        json!({"name": "bench", "topology": "mesh",
               "agents": [{"type": "coder", "driver": "llm", "min": 1}]}),
    )
    .await;
    for round in 0..3 {
        let mock = MockLlm::with_turns(script(turns)).await;
        let body = json!({"providers": [{"name": "mock", "kind": "anthropic",
            "base_url": mock.url(), "model": "claude-sonnet-4-5", "api_key_secret": "KEY"}]});
        send(
            &server,
            &admin,
            reqwest::Method::PUT,
            &format!("/api/v1/tenants/{tenant}/llm"),
            body,
        )
        .await;
        let submitted = send(
            &server,
            &admin,
            reqwest::Method::POST,
            "/api/v1/tasks",
            json!({"tasks": [{"swarm": swarm["id"], "spec": {"prompt": format!("bench {round}"),
                    "max_turns": turns + 1}, "timeout_seconds": 600}]}),
        )
        .await;
        let id = submitted["tasks"][0]["id"].as_str().unwrap().to_string();
        let task = loop {
            let resp = server
                .client()
                .get(server.at(&format!("/api/v1/tasks/{id}")))
                .bearer_auth(&admin)
                .send()
                .await
                .unwrap();
            let t: Value = resp.json().await.unwrap();
            match t["state"].as_str() {
                Some("succeeded") => break t,
                Some("failed" | "cancelled" | "timed_out") => {
                    panic!("the task did not succeed: {t:#}")
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let a = &task["attempts"][0];
        let ms = |k: &str| {
            chrono_ms(
                a[k].as_str()
                    .unwrap_or_else(|| panic!("attempt {k}: {a:#}")),
            )
        };
        let wall = Duration::from_millis((ms("ended_at") - ms("started_at")).max(0) as u64);
        assert_eq!(task["result"]["turns"], turns, "{:#}", task["result"]);
        best_task = best_task.min(wall);
        let mock = MockLlm::with_turns(script(turns)).await;
        best_raw = best_raw.min(raw(&mock.url(), turns).await);
    }
    let per = |d: Duration| d.as_secs_f64() * 1e3 / turns as f64;
    println!(
        "through the server ({turns} turns, best of 3): {:.3} ms per turn (attempt start to end), \
         model call alone {:.3} ms => platform overhead {:.3} ms/turn (target < 2 ms)",
        per(best_task),
        per(best_raw),
        per(best_task) - per(best_raw)
    );
    server.shutdown().await;
}

/// Milliseconds since the epoch of an RFC 3339 UTC time with milliseconds
/// (`2026-11-26T10:00:00.123Z`), as the API writes them.
fn chrono_ms(s: &str) -> i64 {
    let (date, time) = s.trim_end_matches('Z').split_once('T').expect("RFC 3339");
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    let frac_ms: i64 = format!("{frac:0<3}")[..3].parse().unwrap();
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + t[0]) * 60 + t[1]) * 60_000 + t[2] * 1000 + frac_ms
}
