//! Benchmarks of cflow's agent loop (`llm` driver), against a local server speaking the
//! Anthropic Messages API (`MockLlm`, real HTTP and SSE):
//!
//! 1. **Per-turn overhead**: one loop of `TURNS` turns (a tool call each, then the answer), timed
//!    end to end, minus the same turns sent straight through `cflow_llm::Client` (the model's
//!    share: HTTP, SSE, JSON). What is left is the loop's own work per turn: building the
//!    request, events, the transcript, tool dispatch, the stop checks. Target: < 2 ms.
//! 2. **Concurrent loops**: `LOOPS` loops at once against a mock (in a child process, so its
//!    memory is not counted) that spaces every answer's chunks `SLOW_MS` apart, so all loops
//!    are alive together; the process's RSS is sampled from `/proc/self/status` while they run.
//!    Target: 1,000 loops in < 1 GB.
//!
//! `cargo bench -p cflow-agents --bench llm_loop` (env `LLM_BENCH_TURNS`, `LLM_BENCH_LOOPS`,
//! `LLM_BENCH_SLOW_MS` override the sizes).

use cflow_agents::llm::{LlmConfig, LlmDriver};
use cflow_agents::model::{LlmSpec, ModelSetup, ProviderSetup};
use cflow_agents::tools::{ToolOutput, Toolbox};
use cflow_agents::{BoxFuture, ExecConfig, ExecDriver, Isolation, Job, JobSpec};
use cflow_test_support::llm_mock::{MockLlm, Turn};
use serde_json::{Value, json};
use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A tool that answers at once: the benchmark measures the loop, not a tool.
struct Echo;

impl Toolbox for Echo {
    fn defs(&self) -> Vec<cflow_llm::ToolDef> {
        vec![cflow_llm::ToolDef {
            name: "echo".into(),
            description: "Returns its input.".into(),
            input_schema: json!({"type": "object", "properties": {"text": {"type": "string"}},
                                 "additionalProperties": false}),
        }]
    }

    fn call<'a>(
        &'a self,
        _name: &'a str,
        input: &'a Value,
        _cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move { ToolOutput::ok(input.to_string()) })
    }
}

fn script(tool_turns: usize) -> Vec<Turn> {
    let mut turns: Vec<Turn> = (0..tool_turns)
        .map(|i| Turn::tool_use("echo", json!({"text": format!("step {i}")})))
        .collect();
    turns.push(Turn::text("done"));
    turns
}

fn job(base_url: &str, n: usize) -> Job {
    let spec = LlmSpec {
        prompt: "benchmark".into(),
        model: None,
        max_turns: Some(1000),
        max_tokens: None,
        allowed_tools: Vec::new(),
        env: Vec::new(),
        workspace: None,
        artifacts: None,
        network: None,
        inputs: Default::default(),
        setup: ModelSetup {
            providers: vec![ProviderSetup {
                name: "mock".into(),
                kind: "anthropic".into(),
                base_url: base_url.into(),
                model: "claude-sonnet-4-5".into(),
                api_key: Some("sk-ant-bench".into()),
                extra_headers: Vec::new(),
                azure_api_version: None,
            }],
            agent_type: "coder".into(),
            ..ModelSetup::default()
        },
    };
    Job {
        task_id: format!("bench-{n}"),
        attempt: 1,
        spec: JobSpec::Llm(Box::new(spec)),
        timeout: Duration::from_secs(600),
        output_cap: 64 * 1024,
        sandbox: None,
        agent_id: String::new(),
        epoch: 0,
        host: None,
    }
}

fn driver() -> LlmDriver {
    LlmDriver::new(ExecDriver::new(ExecConfig::default()), LlmConfig::default())
}

async fn run_loop(driver: &LlmDriver, base_url: &str, n: usize) -> u32 {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let out = driver
        .run_with_toolbox(
            job(base_url, n),
            &Echo,
            Isolation::None {
                reason: "benchmark".into(),
            },
            tx,
            CancellationToken::new(),
        )
        .await
        .expect("the loop runs");
    let _ = drain.await;
    assert!(out.end.is_success(), "{:?} {:?}", out.end, out.result_error);
    out.result
        .as_ref()
        .and_then(|r| r["turns"].as_u64())
        .unwrap_or(0) as u32
}

/// The same turns straight through the provider client: the model's share of a turn.
async fn raw_client(base_url: &str, turns: usize) -> Duration {
    let client = cflow_llm::Client::new(
        cflow_llm::ProviderConfig::new(
            "mock",
            cflow_llm::ProviderKind::Anthropic,
            base_url,
            "claude-sonnet-4-5",
        )
        .with_api_key("sk-ant-bench"),
    )
    .expect("client");
    let mut req = cflow_llm::Request {
        model: String::new(),
        system: "benchmark".into(),
        messages: vec![cflow_llm::Message::user("benchmark")],
        tools: Echo.defs(),
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
        // Grow the conversation as the loop does, so both send the same bytes.
        req.messages.push(resp.to_message());
        if let Some((id, _, input)) = resp.tool_uses().next() {
            req.messages.push(cflow_llm::Message::tool_result(
                id,
                input.to_string(),
                false,
            ));
        }
    }
    start.elapsed()
}

/// User + system CPU time of this process, from `/proc/self/stat` (clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Child mode: serve `turns` slow turns and print the URL; exit when stdin closes.
async fn serve_mock(turns: usize, slow: Duration) {
    let mut script = Vec::with_capacity(turns);
    for i in 0..turns {
        let t = if i % 3 == 2 {
            Turn::text("done")
        } else {
            Turn::tool_use("echo", json!({"text": "x"}))
        };
        script.push(t.slow(slow));
    }
    let mock = MockLlm::with_turns(script).await;
    println!("{}", mock.url());
    std::io::stdout().flush().ok();
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    })
    .await
    .ok();
}

#[tokio::main]
async fn main() {
    if let Ok(spec) = std::env::var("LLM_BENCH_CHILD_MOCK") {
        let (turns, slow) = spec.split_once(',').expect("turns,slow_ms");
        serve_mock(
            turns.parse().unwrap(),
            Duration::from_millis(slow.parse().unwrap()),
        )
        .await;
        return;
    }
    let turns = env_num("LLM_BENCH_TURNS", 200) as usize;
    let loops = env_num("LLM_BENCH_LOOPS", 1000) as usize;
    // About 6 SSE chunks per turn: 170 ms apart is about 1 s of model latency per turn.
    let slow_ms = env_num("LLM_BENCH_SLOW_MS", 170);

    concurrent(loops, slow_ms).await;
    per_turn(turns).await;
}

async fn per_turn(turns: usize) {
    // 1. Per-turn overhead (best of 5 of each, interleaved).
    let d = driver();
    let mut best_loop = Duration::MAX;
    let mut best_raw = Duration::MAX;
    for round in 0..5 {
        let mock = MockLlm::with_turns(script(turns - 1)).await;
        let start = Instant::now();
        let done = run_loop(&d, &mock.url(), round).await;
        best_loop = best_loop.min(start.elapsed());
        assert_eq!(done as usize, turns, "the loop made every turn");
        let mock = MockLlm::with_turns(script(turns - 1)).await;
        best_raw = best_raw.min(raw_client(&mock.url(), turns).await);
    }
    let per_turn_loop = best_loop.as_secs_f64() * 1e3 / turns as f64;
    let per_turn_raw = best_raw.as_secs_f64() * 1e3 / turns as f64;
    println!(
        "per turn ({turns} turns, best of 5): loop {per_turn_loop:.3} ms, model call alone \
         {per_turn_raw:.3} ms => loop overhead {:.3} ms/turn (target < 2 ms)",
        per_turn_loop - per_turn_raw
    );
}

/// 2. Concurrent loops, the mock in a child process; run first, while the process is small.
async fn concurrent(loops: usize, slow_ms: u64) {
    let per_loop_turns = 3;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env(
            "LLM_BENCH_CHILD_MOCK",
            format!("{},{slow_ms}", loops * per_loop_turns),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the mock");
    let mut url = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut url)
        .expect("the mock's URL");
    let url = url.trim().to_string();
    let before = status_kib("VmRSS:");
    // The process's RSS while the loops run, sampled (VmHWM would include earlier work).
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampling = CancellationToken::new();
    let sampler = {
        let (peak, stop) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                peak.fetch_max(status_kib("VmRSS:"), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let d = Arc::new(driver());
    let cpu_before = cpu_time();
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for n in 0..loops {
        let (d, url) = (d.clone(), url.clone());
        set.spawn(async move { run_loop(&d, &url, n).await });
    }
    let mut total_turns = 0u64;
    while let Some(r) = set.join_next().await {
        total_turns += u64::from(r.expect("a loop task"));
    }
    let took = start.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before);
    sampling.cancel();
    let _ = sampler.await;
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    drop(child.stdin.take());
    let _ = child.wait();
    println!(
        "{loops} concurrent loops ({total_turns} turns, each answer's ~6 chunks {slow_ms} ms \
         apart): {:.1} s, peak RSS {:.0} MiB (before {:.0} MiB; {:.1} KiB per loop) (target < \
         1 GB); CPU {:.2} s ({:.0}% of one core; {:.2} ms per turn)",
        took.as_secs_f64(),
        peak as f64 / 1024.0,
        before as f64 / 1024.0,
        (peak.saturating_sub(before)) as f64 / loops as f64,
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 100.0 / took.as_secs_f64(),
        cpu.as_secs_f64() * 1e3 / total_turns.max(1) as f64
    );
}
