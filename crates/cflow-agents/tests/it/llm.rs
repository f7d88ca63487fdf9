//! The `llm` driver's agent loop against `MockLlm` (the real wire formats over real HTTP), with
//! a test toolbox and a test host standing in for the workbench and the server.

use cflow_agents::host::{Host, HostCall, HostError, HostHandle};
use cflow_agents::model::{LlmSpec, ModelSetup, ProviderSetup};
use cflow_agents::tools::{ToolOutput, Toolbox};
use cflow_agents::{
    BoxFuture, DriverError, ExecConfig, ExecDriver, Isolation, Job, JobEnd, JobEvent, JobOutcome,
    JobSpec, LlmConfig, LlmDriver,
};
use cflow_llm::{BreakerPolicy, BreakerStatus, RetryPolicy, ToolDef};
use cflow_test_support::llm_mock::{MockLlm, MockUsage, Part, RecordedRequest, Turn};
use serde_json::{Value, json};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Fast retries, so failover tests do not wait for the production backoff.
fn config() -> LlmConfig {
    LlmConfig {
        max_retries: 1,
        retry: RetryPolicy {
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            max_retry_after: Duration::from_secs(1),
        },
        text_flush: Duration::from_millis(10),
        ..LlmConfig::default()
    }
}

fn driver(config: LlmConfig) -> LlmDriver {
    LlmDriver::new(ExecDriver::new(ExecConfig::default()), config)
}

fn provider(name: &str, mock: &MockLlm, kind: &str) -> ProviderSetup {
    ProviderSetup {
        name: name.into(),
        kind: kind.into(),
        base_url: if kind == "openai" {
            mock.openai_url()
        } else {
            mock.url()
        },
        model: format!("{name}-model"),
        api_key: Some("sk-test-key".into()),
        extra_headers: Vec::new(),
        azure_api_version: None,
    }
}

fn spec(prompt: &str, providers: Vec<ProviderSetup>) -> LlmSpec {
    let JobSpec::Llm(mut spec) =
        cflow_agents::proto::job_spec("llm", &json!({"prompt": prompt})).expect("a valid llm spec")
    else {
        unreachable!()
    };
    spec.setup = ModelSetup {
        providers,
        agent_type: "coder".into(),
        ..ModelSetup::default()
    };
    *spec
}

fn job(spec: LlmSpec, host: Option<HostHandle>) -> Job {
    Job {
        task_id: "task-llm".into(),
        attempt: 1,
        spec: JobSpec::Llm(Box::new(spec)),
        timeout: Duration::from_secs(30),
        output_cap: 1 << 20,
        sandbox: None,
        agent_id: "agent-1".into(),
        epoch: 1,
        host,
    }
}

/// Tools for the loop: `echo` answers with its text, `fail` always errs, `wait` waits for
/// cancellation. Every call is recorded.
#[derive(Default)]
struct TestTools {
    calls: Mutex<Vec<(String, Value)>>,
}

impl Toolbox for TestTools {
    fn defs(&self) -> Vec<ToolDef> {
        let def = |name: &str| ToolDef {
            name: name.into(),
            description: format!("the {name} tool"),
            input_schema: json!({"type": "object", "properties": {"text": {"type": "string"}}}),
        };
        vec![def("echo"), def("fail"), def("wait")]
    }

    fn call<'a>(
        &'a self,
        name: &'a str,
        input: &'a Value,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, ToolOutput> {
        self.calls
            .lock()
            .unwrap()
            .push((name.to_string(), input.clone()));
        Box::pin(async move {
            match name {
                "echo" => ToolOutput::ok(format!("echo: {}", input["text"].as_str().unwrap_or(""))),
                "wait" => {
                    cancel.cancelled().await;
                    ToolOutput::error("cancelled")
                }
                _ => ToolOutput::error("this tool always fails"),
            }
        })
    }
}

/// A server for one attempt: answers setup with `setup` (or refuses it), refuses the budget
/// check from the `refuse_budget_at`-th call on, refuses `delegate_task`, answers other tools
/// with `{"ok": true, "tool": name}`, and records every call.
#[derive(Default)]
struct TestHost {
    setup: Option<ModelSetup>,
    lost_on_setup: bool,
    refuse_budget_at: Option<u32>,
    budget_checks: AtomicU32,
    usage_fails: bool,
    /// When set, usage answers carry the budgets' state (`budget`): allowed until the
    /// `n`-th usage record, spent from it on.
    usage_spends_at: Option<u32>,
    usages: AtomicU32,
    calls: Mutex<Vec<HostCall>>,
}

impl Host for TestHost {
    fn call(&self, call: HostCall) -> BoxFuture<'_, Result<Value, HostError>> {
        self.calls.lock().unwrap().push(call.clone());
        Box::pin(async move {
            match call {
                HostCall::Setup if self.lost_on_setup => Err(HostError::Lost("re-assigned".into())),
                HostCall::Setup => {
                    Ok(serde_json::to_value(self.setup.clone().unwrap_or_default()).unwrap())
                }
                HostCall::CheckBudget => {
                    let n = self.budget_checks.fetch_add(1, Ordering::SeqCst) + 1;
                    match self.refuse_budget_at {
                        Some(at) if n >= at => Err(HostError::Refused(
                            "the tenant's monthly budget of $5.00 is spent (resets 2026-12-01)"
                                .into(),
                        )),
                        _ => Ok(Value::Null),
                    }
                }
                HostCall::Usage { .. } if self.usage_fails => {
                    Err(HostError::Unavailable("connection refused".into()))
                }
                HostCall::Usage { .. } => {
                    let n = self.usages.fetch_add(1, Ordering::SeqCst) + 1;
                    Ok(match self.usage_spends_at {
                        None => json!({"cost_usd": 0.001, "priced": true}),
                        Some(at) if n >= at => json!({"cost_usd": 0.001, "priced": true,
                            "budget": "budget 'tenant acme, day' is spent: $0.0045 of $0.001"}),
                        Some(_) => json!({"cost_usd": 0.001, "priced": true, "budget": null}),
                    })
                }
                HostCall::Tool { name, .. } if name == "delegate_task" => Err(HostError::Refused(
                    "the swarm's topology (star) does not let this agent delegate".into(),
                )),
                HostCall::Tool { name, .. } => Ok(json!({"ok": true, "tool": name})),
            }
        })
    }
}

impl TestHost {
    fn calls(&self) -> Vec<HostCall> {
        self.calls.lock().unwrap().clone()
    }
}

/// A host handle that shares `host` with the test.
fn handle(host: &std::sync::Arc<TestHost>) -> HostHandle {
    HostHandle(host.clone())
}

fn isolation() -> Isolation {
    Isolation::None {
        reason: "test toolbox".into(),
    }
}

/// Runs a job with `tools` to its end; the outcome and every event, in order.
async fn run_with(
    driver: &LlmDriver,
    job: Job,
    tools: &TestTools,
    cancel: CancellationToken,
) -> (Result<JobOutcome, DriverError>, Vec<JobEvent>) {
    let (tx, mut rx) = mpsc::channel(16);
    let collect = async {
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            events.push(e);
        }
        events
    };
    tokio::join!(
        driver.run_with_toolbox(job, tools, isolation(), tx, cancel),
        collect
    )
}

async fn run(
    driver: &LlmDriver,
    job: Job,
    tools: &TestTools,
) -> (Result<JobOutcome, DriverError>, Vec<JobEvent>) {
    run_with(driver, job, tools, CancellationToken::new()).await
}

/// The agent events as (kind, data).
fn agent(events: &[JobEvent]) -> Vec<(String, Value)> {
    events
        .iter()
        .filter_map(|e| match e {
            JobEvent::Agent { kind, data } => Some((kind.clone(), data.clone())),
            _ => None,
        })
        .collect()
}

fn usage(input: u64, output: u64) -> MockUsage {
    MockUsage {
        input_tokens: input,
        output_tokens: output,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
    }
}

/// The tool names a recorded request offered, in either wire format.
fn tool_names(r: &RecordedRequest) -> Vec<String> {
    r.body["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .map(|t| {
                    t["name"]
                        .as_str()
                        .or(t["function"]["name"].as_str())
                        .unwrap()
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}

fn transcript(o: &JobOutcome) -> Vec<Value> {
    let a = o
        .artifacts
        .iter()
        .find(|a| a.name == "transcript.jsonl")
        .expect("a transcript artifact");
    assert_eq!(a.kind, cflow_sandbox::artifacts::Kind::Log);
    String::from_utf8(a.bytes.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each transcript line is JSON"))
        .collect()
}

#[tokio::test]
async fn a_tool_call_then_a_final_answer_through_the_host() {
    let mock = MockLlm::with_turns([
        Turn::Parts(vec![
            Part::Text("Let me echo.".into()),
            Part::ToolUse {
                name: "echo".into(),
                input: json!({"text": "hi"}),
            },
        ])
        .with_usage(usage(100, 20)),
        Turn::text("The echo said hi.").with_usage(usage(150, 7)),
    ])
    .await;
    let host = std::sync::Arc::new(TestHost {
        setup: Some(ModelSetup {
            providers: vec![provider("primary", &mock, "anthropic")],
            agent_type: "coder".into(),
            ..ModelSetup::default()
        }),
        ..TestHost::default()
    });
    // The spec's own setup is empty: the host's is what counts.
    let tools = TestTools::default();
    let d = driver(config());
    let (out, events) = run(
        &d,
        job(spec("Say hi.", vec![]), Some(handle(&host))),
        &tools,
    )
    .await;
    let out = out.expect("the loop runs");

    assert_eq!(
        out.end,
        JobEnd::Exited { code: 0 },
        "{:?}",
        out.result_error
    );
    assert_eq!(out.stdout.text(), "The echo said hi.");
    let r = out.result.clone().unwrap();
    assert_eq!(r["answer"], "The echo said hi.");
    assert_eq!(r["turns"], 2);
    assert_eq!(r["usage"]["input_tokens"], 250);
    assert_eq!(r["usage"]["output_tokens"], 27);
    assert_eq!(out.model_usage.len(), 1);
    let mu = &out.model_usage[0];
    assert_eq!(
        (
            mu.provider.as_str(),
            mu.model.as_str(),
            mu.input_tokens,
            mu.output_tokens
        ),
        ("primary", "primary-model", 250, 27)
    );
    assert_eq!(out.isolation, isolation());

    // Events in order: text of turn 1, the call, its result, the answer of turn 2.
    let ev = agent(&events);
    let kinds: Vec<&str> = ev.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "assistant_text",
            "tool_use",
            "tool_result",
            "assistant_text"
        ],
        "{ev:?}"
    );
    assert_eq!(ev[0].1["text"], "Let me echo.");
    assert_eq!(ev[1].1["name"], "echo");
    assert_eq!(ev[1].1["input"], json!({"text": "hi"}));
    assert_eq!(ev[2].1["content"], "echo: hi");
    assert_eq!(ev[2].1["is_error"], false);
    assert_eq!(ev[3].1["text"], "The echo said hi.");
    assert_eq!(
        tools.calls.lock().unwrap().clone(),
        vec![("echo".to_string(), json!({"text": "hi"}))]
    );

    // The host saw setup, then budget and usage around each call.
    let calls = host.calls();
    let ops: Vec<String> = calls
        .iter()
        .map(|c| match c {
            HostCall::Setup => "setup".to_string(),
            HostCall::CheckBudget => "budget".to_string(),
            HostCall::Usage {
                provider,
                model,
                tokens,
                ..
            } => format!("usage {provider} {model} {}", tokens.output_tokens),
            HostCall::Tool { name, .. } => format!("tool {name}"),
        })
        .collect();
    assert_eq!(
        ops,
        [
            "setup",
            "budget",
            "usage primary primary-model 20",
            "budget",
            "usage primary primary-model 7"
        ]
    );

    // The second request carries the tool result, the system prompt and the server tools.
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].api_key(), Some("sk-test-key"));
    assert_eq!(reqs[0].body["model"], "primary-model");
    let system = reqs[0].body["system"][0]["text"].as_str().unwrap();
    assert!(system.starts_with("You are a coder."), "{system}");
    assert_eq!(
        tool_names(&reqs[0]),
        [
            "echo",
            "fail",
            "wait",
            "memory_get",
            "memory_put",
            "memory_search",
            "send_message",
            "delegate_task"
        ]
    );
    let msgs = reqs[1].body["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[0]["content"][0]["text"], "Say hi.");
    assert_eq!(msgs[2]["content"][0]["type"], "tool_result");
    assert_eq!(msgs[2]["content"][0]["content"], "echo: hi");
    assert_eq!(msgs[2]["content"][0]["is_error"], false);

    // The transcript: system, then each message with its turn's facts, then the end.
    let t = transcript(&out);
    assert_eq!(t[0]["type"], "system");
    assert_eq!(t[1]["type"], "message");
    assert_eq!(t[2]["type"], "turn");
    assert_eq!(t[2]["usage"]["output_tokens"], 20);
    let last = t.last().unwrap();
    assert_eq!(last["type"], "end");
    assert_eq!(last["end"], "exit 0");
    assert_eq!(last["turns"], 2);
}

#[tokio::test]
async fn an_openai_compatible_provider_runs_the_same_loop() {
    let mock = MockLlm::with_turns([
        Turn::tool_use("echo", json!({"text": "x"})).with_usage(usage(10, 3)),
        Turn::text("done").with_usage(usage(12, 4)),
    ])
    .await;
    let tools = TestTools::default();
    let (out, events) = run(
        &driver(config()),
        job(spec("go", vec![provider("local", &mock, "openai")]), None),
        &tools,
    )
    .await;
    let out = out.unwrap();
    assert_eq!(
        out.end,
        JobEnd::Exited { code: 0 },
        "{:?}",
        out.result_error
    );
    assert_eq!(out.stdout.text(), "done");
    assert_eq!(out.model_usage[0].output_tokens, 7);
    let reqs = mock.requests();
    assert_eq!(reqs[0].path, "/v1/chat/completions");
    // No host: only the worker-side tools, and the outcome says what was missing.
    assert_eq!(tool_names(&reqs[0]), ["echo", "fail", "wait"]);
    let msgs = reqs[1].body["messages"].as_array().unwrap();
    let tool_msg = msgs
        .iter()
        .find(|m| m["role"] == "tool")
        .expect("a tool message");
    assert_eq!(tool_msg["content"], "echo: x");
    let notes = out.result.as_ref().unwrap()["notes"].to_string();
    assert!(notes.contains("server-side tools"), "{notes}");
    assert!(
        agent(&events)
            .iter()
            .any(|(k, d)| k == "notice" && d["message"].as_str().unwrap().contains("budgets")),
    );
}

#[tokio::test]
async fn max_turns_fails_the_attempt() {
    let mock = MockLlm::with_turns([
        Turn::tool_use("echo", json!({"text": "1"})),
        Turn::tool_use("echo", json!({"text": "2"})),
        Turn::tool_use("echo", json!({"text": "3"})),
    ])
    .await;
    let mut s = spec("loop", vec![provider("p", &mock, "anthropic")]);
    s.max_turns = Some(2);
    let (out, _) = run(&driver(config()), job(s, None), &TestTools::default()).await;
    let out = out.unwrap();
    assert_eq!(out.end, JobEnd::Exited { code: 1 });
    let e = out.result_error.unwrap();
    assert!(e.contains("all 2 turns (max_turns)"), "{e}");
    assert_eq!(mock.request_count(), 2);
    assert_eq!(out.result.unwrap()["turns"], 2);
}

#[tokio::test]
async fn max_tokens_bounds_the_output_of_the_whole_loop() {
    let mock = MockLlm::with_turns([
        Turn::tool_use("echo", json!({"text": "1"})).with_usage(usage(10, 5)),
        Turn::tool_use("echo", json!({"text": "2"})).with_usage(usage(10, 5)),
        Turn::text("never asked for"),
    ])
    .await;
    let mut s = spec("spend", vec![provider("p", &mock, "anthropic")]);
    s.max_tokens = Some(8);
    let (out, _) = run(&driver(config()), job(s, None), &TestTools::default()).await;
    let out = out.unwrap();
    assert_eq!(out.end, JobEnd::Exited { code: 1 });
    let e = out.result_error.unwrap();
    assert!(
        e.contains("used 10 output tokens, reaching the task's max_tokens (8)"),
        "{e}"
    );
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    // Each call may only spend what is left.
    assert_eq!(reqs[0].body["max_tokens"], 8);
    assert_eq!(reqs[1].body["max_tokens"], 3);
}

#[tokio::test]
async fn a_spent_budget_stops_the_loop_before_the_next_call_for_good() {
    let mock = MockLlm::with_turns([
        Turn::tool_use("echo", json!({"text": "1"})),
        Turn::text("never asked for"),
    ])
    .await;
    let host = std::sync::Arc::new(TestHost {
        setup: Some(ModelSetup {
            providers: vec![provider("p", &mock, "anthropic")],
            ..ModelSetup::default()
        }),
        refuse_budget_at: Some(2),
        ..TestHost::default()
    });
    let (out, _) = run(
        &driver(config()),
        job(spec("x", vec![]), Some(handle(&host))),
        &TestTools::default(),
    )
    .await;
    match out {
        Err(DriverError::Sandbox { message, retryable }) => {
            assert!(!retryable);
            assert!(
                message.contains("monthly budget of $5.00 is spent"),
                "{message}"
            );
            assert!(message.contains("before model call 2"), "{message}");
        }
        other => panic!("expected a final refusal, got {other:?}"),
    }
    assert_eq!(mock.request_count(), 1);
    // The first call's usage was recorded before the refusal.
    assert!(
        host.calls()
            .iter()
            .any(|c| matches!(c, HostCall::Usage { .. }))
    );
}

/// A usage record's answer that carries the budgets' state stands in for the next budget
/// check: one check before the first call only, and a budget spent by a call stops the loop
/// before the next one.
#[tokio::test]
async fn the_usage_answer_stands_in_for_the_next_budget_check() {
    let mock = MockLlm::with_turns([
        Turn::tool_use("echo", json!({"text": "1"})),
        Turn::tool_use("echo", json!({"text": "2"})),
        Turn::text("never asked for"),
    ])
    .await;
    let host = std::sync::Arc::new(TestHost {
        setup: Some(ModelSetup {
            providers: vec![provider("p", &mock, "anthropic")],
            ..ModelSetup::default()
        }),
        usage_spends_at: Some(2),
        ..TestHost::default()
    });
    let (out, _) = run(
        &driver(config()),
        job(spec("x", vec![]), Some(handle(&host))),
        &TestTools::default(),
    )
    .await;
    match out {
        Err(DriverError::Sandbox { message, retryable }) => {
            assert!(!retryable);
            assert!(message.contains("'tenant acme, day' is spent"), "{message}");
        }
        other => panic!("expected a final refusal, got {other:?}"),
    }
    assert_eq!(mock.request_count(), 2);
    let checks = host
        .calls()
        .iter()
        .filter(|c| matches!(c, HostCall::CheckBudget))
        .count();
    assert_eq!(checks, 1, "only before the first call: {:?}", host.calls());
}

#[tokio::test]
async fn server_tools_go_to_the_host_and_refusals_reach_the_model() {
    let mock = MockLlm::with_turns([
        Turn::Parts(vec![
            Part::ToolUse {
                name: "memory_put".into(),
                input: json!({"key": "plan/api", "value": {"v": 1}}),
            },
            Part::ToolUse {
                name: "delegate_task".into(),
                input: json!({"prompt": "write tests", "agent_type": "tester"}),
            },
        ]),
        Turn::text("noted"),
    ])
    .await;
    let host = std::sync::Arc::new(TestHost {
        setup: Some(ModelSetup {
            providers: vec![provider("p", &mock, "anthropic")],
            agent_type: "coordinator".into(),
            peers: vec![cflow_agents::model::Peer {
                agent_id: "agent-9".into(),
                agent_type: "tester".into(),
            }],
            ..ModelSetup::default()
        }),
        ..TestHost::default()
    });
    let (out, events) = run(
        &driver(config()),
        job(spec("plan", vec![]), Some(handle(&host))),
        &TestTools::default(),
    )
    .await;
    let out = out.unwrap();
    assert_eq!(out.end, JobEnd::Exited { code: 0 });
    let tools: Vec<(String, Value)> = host
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            HostCall::Tool { name, input } => Some((name, input)),
            _ => None,
        })
        .collect();
    assert_eq!(
        tools,
        vec![
            (
                "memory_put".to_string(),
                json!({"key": "plan/api", "value": {"v": 1}})
            ),
            (
                "delegate_task".to_string(),
                json!({"prompt": "write tests", "agent_type": "tester"})
            ),
        ]
    );
    let reqs = mock.requests();
    let system = reqs[0].body["system"][0]["text"].as_str().unwrap();
    assert!(system.starts_with("You are the swarm's coordinator."));
    assert!(system.contains("agent-9: tester"), "{system}");
    let results = &reqs[1].body["messages"][2]["content"];
    assert_eq!(results[0]["is_error"], false);
    assert_eq!(results[0]["content"], r#"{"ok":true,"tool":"memory_put"}"#);
    assert_eq!(results[1]["is_error"], true);
    assert!(
        results[1]["content"]
            .as_str()
            .unwrap()
            .contains("topology (star) does not let this agent delegate")
    );
    let ev = agent(&events);
    assert!(
        ev.iter().any(|(k, d)| k == "tool_result"
            && d["name"] == "delegate_task"
            && d["is_error"] == true)
    );
}

#[tokio::test]
async fn cancelling_mid_stream_ends_at_once_and_closes_the_stream() {
    let mock = MockLlm::with_turns([
        Turn::text("a long answer ".repeat(200)).slow(Duration::from_millis(50))
    ])
    .await;
    let (tx, mut rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let d = driver(config());
    let tools = TestTools::default();
    let run = d.run_with_toolbox(
        job(spec("talk", vec![provider("p", &mock, "anthropic")]), None),
        &tools,
        isolation(),
        tx,
        cancel.clone(),
    );
    let watch = async {
        // Cancel once the answer has started to stream.
        while let Some(e) = rx.recv().await {
            if matches!(&e, JobEvent::Agent { kind, .. } if kind == "assistant_text") {
                cancel.cancel();
                break;
            }
        }
        let at = Instant::now();
        while rx.recv().await.is_some() {}
        at
    };
    let (out, cancelled_at) = tokio::join!(run, watch);
    let out = out.unwrap();
    assert_eq!(out.end, JobEnd::Cancelled);
    assert!(cancelled_at.elapsed() < Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.disconnects() == 0 {
        assert!(Instant::now() < deadline, "the stream was not closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(mock.completed_streams(), 0);
}

#[tokio::test]
async fn cancelling_during_a_tool_call_cancels_the_tool() {
    let mock = MockLlm::with_turns([Turn::tool_use("wait", json!({}))]).await;
    let cancel = CancellationToken::new();
    let tools = TestTools::default();
    let d = driver(config());
    let stopper = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tools.calls.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the tool was never called");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cancel.cancel();
    };
    let ((out, _), ()) = tokio::join!(
        run_with(
            &d,
            job(spec("t", vec![provider("p", &mock, "anthropic")]), None),
            &tools,
            cancel.clone(),
        ),
        stopper
    );
    assert_eq!(out.unwrap().end, JobEnd::Cancelled);
}

#[tokio::test]
async fn the_job_timeout_stops_a_hanging_provider() {
    let mock = MockLlm::with_turns([Turn::Hang]).await;
    let mut j = job(spec("t", vec![provider("p", &mock, "anthropic")]), None);
    j.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let (out, _) = run(&driver(config()), j, &TestTools::default()).await;
    let out = out.unwrap();
    assert_eq!(out.end, JobEnd::TimedOut);
    assert!(out.result_error.unwrap().contains("timeout"));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(out.wall_time >= Duration::from_millis(300));
}

#[tokio::test]
async fn an_overloaded_primary_fails_over_and_its_breaker_is_shared() {
    let primary = MockLlm::with_turns([Turn::overloaded(), Turn::overloaded()]).await;
    let backup = MockLlm::with_turns([
        Turn::text("from the backup").with_usage(usage(3, 2)),
        Turn::text("again from the backup"),
    ])
    .await;
    let mut cfg = config();
    cfg.breaker = BreakerPolicy {
        failure_threshold: 2,
        cool_down: Duration::from_secs(60),
    };
    let d = driver(cfg);
    let providers = vec![
        provider("primary", &primary, "anthropic"),
        provider("backup", &backup, "openai"),
    ];
    let (out, events) = run(
        &d,
        job(spec("x", providers.clone()), None),
        &TestTools::default(),
    )
    .await;
    let out = out.unwrap();
    assert_eq!(
        out.end,
        JobEnd::Exited { code: 0 },
        "{:?}",
        out.result_error
    );
    assert_eq!(out.stdout.text(), "from the backup");
    assert_eq!(out.model_usage.len(), 1);
    assert_eq!(out.model_usage[0].provider, "backup");
    assert_eq!(out.model_usage[0].model, "backup-model");
    assert_eq!(primary.request_count(), 2);
    let notices: Vec<String> = agent(&events)
        .into_iter()
        .filter(|(k, _)| k == "notice")
        .map(|(_, d)| d["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        notices
            .iter()
            .any(|n| n == "failing over from primary to backup"),
        "{notices:?}"
    );
    assert!(matches!(
        d.breaker(&providers[0]),
        Some(BreakerStatus::Open { .. })
    ));

    // Another loop of the same driver skips the primary without calling it.
    let (out, _) = run(&d, job(spec("y", providers), None), &TestTools::default()).await;
    assert_eq!(out.unwrap().stdout.text(), "again from the backup");
    assert_eq!(primary.request_count(), 2);
}

#[tokio::test]
async fn a_provider_error_after_retries_fails_with_its_message() {
    let mock = MockLlm::with_turns([Turn::status(401)]).await;
    let (out, _) = run(
        &driver(config()),
        job(spec("x", vec![provider("p", &mock, "anthropic")]), None),
        &TestTools::default(),
    )
    .await;
    let out = out.unwrap();
    assert_eq!(out.end, JobEnd::Exited { code: 1 });
    let e = out.result_error.unwrap();
    assert!(
        e.contains("the model call to p failed: authentication failed"),
        "{e}"
    );
    assert!(!e.contains("sk-test-key"));
}

#[tokio::test]
async fn no_provider_is_a_clear_final_error() {
    let (out, _) = run(
        &driver(config()),
        job(spec("x", vec![]), None),
        &TestTools::default(),
    )
    .await;
    match out {
        Err(DriverError::Sandbox { message, retryable }) => {
            assert!(!retryable);
            assert!(
                message.contains("no model provider is configured"),
                "{message}"
            );
            assert!(message.contains("[server.llm]"), "{message}");
            assert!(message.contains("cflow tenant llm set"), "{message}");
            assert!(message.contains("ANTHROPIC_API_KEY"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_lost_attempt_at_setup_ends_as_cancelled() {
    let host = std::sync::Arc::new(TestHost {
        lost_on_setup: true,
        ..TestHost::default()
    });
    let (out, _) = run(
        &driver(config()),
        job(spec("x", vec![]), Some(handle(&host))),
        &TestTools::default(),
    )
    .await;
    let out = out.unwrap();
    assert_eq!(out.end, JobEnd::Cancelled);
    assert!(out.result_error.unwrap().contains("re-assigned"));
}

#[tokio::test]
async fn allowed_tools_restricts_what_the_model_is_offered() {
    let mock = MockLlm::with_turns([Turn::tool_use("fail", json!({})), Turn::text("ok")]).await;
    let host = std::sync::Arc::new(TestHost {
        setup: Some(ModelSetup {
            providers: vec![provider("p", &mock, "anthropic")],
            ..ModelSetup::default()
        }),
        usage_fails: true,
        ..TestHost::default()
    });
    let mut s = spec("x", vec![]);
    s.allowed_tools = vec!["echo".into(), "memory_get".into(), "Bash".into()];
    let tools = TestTools::default();
    let (out, _) = run(&driver(config()), job(s, Some(handle(&host))), &tools).await;
    let out = out.unwrap();
    assert_eq!(out.end, JobEnd::Exited { code: 0 });
    let reqs = mock.requests();
    assert_eq!(tool_names(&reqs[0]), ["echo", "memory_get"]);
    // A tool not offered is not run; the model is told which tools there are.
    assert!(tools.calls.lock().unwrap().is_empty());
    let result = &reqs[1].body["messages"][2]["content"][0];
    assert_eq!(result["is_error"], true);
    assert_eq!(
        result["content"],
        "there is no tool named 'fail' in this run; the tools are: echo, memory_get"
    );
    let r = out.result.unwrap();
    let notes = r["notes"].to_string();
    assert!(
        notes.contains("tools this run does not have: Bash"),
        "{notes}"
    );
    // The server could not record usage: the outcome keeps it and says so.
    assert_eq!(r["usage_unrecorded_calls"], 2);
    assert_eq!(out.model_usage[0].output_tokens, 10);
}

#[tokio::test]
async fn dependency_results_follow_the_prompt() {
    let mock = MockLlm::with_turns([Turn::text("ok")]).await;
    let mut s = spec("Review it.", vec![provider("p", &mock, "anthropic")]);
    s.inputs
        .insert("task-a".into(), json!({"answer": "the patch is ready"}));
    let (out, _) = run(&driver(config()), job(s, None), &TestTools::default()).await;
    assert_eq!(out.unwrap().end, JobEnd::Exited { code: 0 });
    let first = mock.requests()[0].body["messages"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(first.starts_with("Review it.\n\n"), "{first}");
    assert!(first.contains("## Task task-a"), "{first}");
    assert!(first.contains("the patch is ready"), "{first}");
}

#[tokio::test]
async fn the_real_workbench_runs_the_tools_and_yields_the_artifacts() {
    use cflow_agents::Driver;
    let mock = MockLlm::with_turns([
        Turn::tool_use(
            "write_file",
            json!({"path": "notes/hello.txt", "content": "hello from the model\n"}),
        ),
        Turn::tool_use("run_command", json!({"command": "cat notes/hello.txt"})),
        Turn::text("Wrote and read the file."),
    ])
    .await;
    let JobSpec::Llm(mut s) = cflow_agents::proto::job_spec(
        "llm",
        &json!({"prompt": "write a file", "artifacts": ["notes/*.txt"]}),
    )
    .unwrap() else {
        unreachable!()
    };
    s.setup.providers = vec![provider("p", &mock, "anthropic")];
    let d = driver(config());
    let (tx, mut rx) = mpsc::channel(16);
    let collect = async {
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            events.push(e);
        }
        events
    };
    let (out, events) = tokio::join!(d.run(job(*s, None), tx, CancellationToken::new()), collect);
    let out = out.expect("the loop runs");
    assert_eq!(
        out.end,
        JobEnd::Exited { code: 0 },
        "{:?}",
        out.result_error
    );
    assert_eq!(out.stdout.text(), "Wrote and read the file.");
    assert!(!out.isolation.is_isolated());
    let results: Vec<Value> = agent(&events)
        .into_iter()
        .filter(|(k, _)| k == "tool_result")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(results.len(), 2, "{results:?}");
    assert_eq!(results[0]["is_error"], false, "{results:?}");
    assert_eq!(results[1]["name"], "run_command");
    assert!(
        results[1]["content"]
            .as_str()
            .unwrap()
            .contains("hello from the model"),
        "{results:?}"
    );
    let names: Vec<&str> = out.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert!(names.contains(&"transcript.jsonl"), "{names:?}");
    let file = out
        .artifacts
        .iter()
        .find(|a| a.name == "notes/hello.txt")
        .unwrap_or_else(|| panic!("the file artifact is missing: {names:?}"));
    assert_eq!(file.bytes, b"hello from the model\n");
    // The workbench's tools were offered, not the test ones.
    assert_eq!(
        tool_names(&mock.requests()[0]),
        [
            "read_file",
            "write_file",
            "edit_file",
            "list_files",
            "search_files",
            "run_command"
        ]
    );
}

#[tokio::test]
async fn the_swarm_pools_system_prompt_replaces_the_role_prompt() {
    let mock = MockLlm::with_turns([Turn::text("ok"), Turn::text("ok")]).await;
    let haiku = "You only answer in haiku.";
    for kind in ["anthropic", "openai"] {
        let host = std::sync::Arc::new(TestHost {
            setup: Some(ModelSetup {
                providers: vec![provider("p", &mock, kind)],
                agent_type: "coder".into(),
                system_prompt: Some(haiku.into()),
                ..ModelSetup::default()
            }),
            ..TestHost::default()
        });
        let (out, _) = run(
            &driver(config()),
            job(spec("x", vec![]), Some(handle(&host))),
            &TestTools::default(),
        )
        .await;
        assert_eq!(out.unwrap().end, JobEnd::Exited { code: 0 });
    }
    let reqs = mock.requests();
    let anthropic = reqs[0].body["system"][0]["text"].as_str().unwrap();
    let openai = reqs[1].body["messages"][0]["content"].as_str().unwrap();
    assert_eq!(reqs[1].body["messages"][0]["role"], "system");
    for system in [anthropic, openai] {
        // The override in place of the coder's role prompt, then what every agent gets.
        assert!(system.starts_with(&format!("{haiku}\n\n")), "{system}");
        assert!(!system.contains("You are a coder."), "{system}");
        assert!(system.contains("- Agent type: coder."), "{system}");
    }
}

/// The model call's stream breaks on every attempt: the loop fails the attempt, promptly and
/// saying what broke, after the provider's retries (each reported as a notice).
#[tokio::test]
async fn a_broken_stream_fails_the_attempt_clearly_and_promptly() {
    for (turn, why) in [
        (Turn::Malformed, "is not JSON"),
        (Turn::Truncated, "the stream ended before message_stop"),
        (Turn::Dropped, "reading the response failed"),
    ] {
        let mock = MockLlm::with_turns([turn.clone(), turn.clone()]).await;
        let j = job(spec("x", vec![provider("p", &mock, "anthropic")]), None);
        // Far below the job's timeout (30 s) and the provider's (300 s): nothing waits them out.
        let (out, events) = tokio::time::timeout(
            Duration::from_secs(10),
            run(&driver(config()), j, &TestTools::default()),
        )
        .await
        .unwrap_or_else(|_| panic!("{turn:?}: the loop hung"));
        let out = out.unwrap();
        assert_eq!(out.end, JobEnd::Exited { code: 1 }, "{turn:?}");
        let e = out.result_error.unwrap();
        assert!(
            e.starts_with("the model call to p failed: broken response stream: ")
                && e.contains(why),
            "{turn:?}: {e}"
        );
        assert!(!e.contains("sk-test-key"), "{e}");
        // max_retries = 1: two calls, the first failure reported with the retry.
        assert_eq!(mock.request_count(), 2, "{turn:?}");
        let notices: Vec<String> = agent(&events)
            .into_iter()
            .filter(|(k, _)| k == "notice")
            .map(|(_, d)| d["message"].as_str().unwrap().to_string())
            .collect();
        assert!(
            notices
                .iter()
                .any(|n| n.starts_with("p: attempt 1/2 failed: broken response stream")),
            "{turn:?}: {notices:?}"
        );
        assert!(
            notices.iter().any(|n| n.starts_with("p: retrying in")),
            "{notices:?}"
        );
        assert_eq!(out.result.unwrap()["turns"], 1);
    }
}

/// A rate limit (429 with retry-after) or an overloaded provider (529) on one call is retried
/// on the same provider, and the loop goes on as if nothing happened; a notice says so.
#[tokio::test]
async fn a_rate_limit_or_overload_is_retried_and_the_loop_goes_on() {
    for (first, why) in [
        (
            Turn::rate_limited(1),
            "rate limited (HTTP 429; the provider asked to wait 1.0s)",
        ),
        (Turn::overloaded(), "provider overloaded"),
    ] {
        let mock = MockLlm::with_turns([
            Turn::tool_use("echo", json!({"text": "hi"})),
            first.clone(),
            Turn::text("done after the retry").with_usage(usage(20, 4)),
        ])
        .await;
        let tools = TestTools::default();
        let (out, events) = run(
            &driver(config()),
            job(spec("x", vec![provider("p", &mock, "anthropic")]), None),
            &tools,
        )
        .await;
        let out = out.unwrap();
        assert_eq!(
            out.end,
            JobEnd::Exited { code: 0 },
            "{first:?}: {:?}",
            out.result_error
        );
        assert_eq!(out.stdout.text(), "done after the retry");
        assert_eq!(mock.request_count(), 3);
        // The retried call is the same request: the tool's result is not lost or repeated.
        let reqs = mock.requests();
        assert_eq!(reqs[1].body["messages"], reqs[2].body["messages"]);
        assert_eq!(tools.calls.lock().unwrap().len(), 1);
        let r = out.result.unwrap();
        assert_eq!(r["turns"], 2);
        assert_eq!(out.model_usage.len(), 1);
        let notices: Vec<(Value, String)> = agent(&events)
            .into_iter()
            .filter(|(k, _)| k == "notice")
            .map(|(_, d)| {
                (
                    d["turn"].clone(),
                    d["message"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert!(
            notices.iter().any(|(turn, n)| *turn == 2
                && n.starts_with("p: attempt 1/2 failed: ")
                && n.contains(why)),
            "{first:?}: {notices:?}"
        );
        assert!(
            notices
                .iter()
                .any(|(turn, n)| *turn == 2 && n == "p (p-model) answered on attempt 2"),
            "{first:?}: {notices:?}"
        );
    }
}

/// A tool call whose arguments break the tool's schema is not run: the model gets an error
/// result naming the problem, and the loop goes on to its next turn.
#[tokio::test]
async fn invalid_tool_arguments_reach_the_model_which_recovers() {
    use cflow_agents::Driver;
    let mock = MockLlm::with_turns([
        Turn::tool_use("read_file", json!({})),
        Turn::tool_use("read_file", json!({"path": 42})),
        Turn::tool_use(
            "write_file",
            json!({"path": "a.txt", "content": "x", "mode": "0600"}),
        ),
        // Arguments that are not JSON at all (cut off mid-string).
        Turn::Parts(vec![cflow_test_support::llm_mock::Part::RawToolUse {
            name: "write_file".into(),
            json: r#"{"path": "a.txt", "content": "unterminat"#.into(),
        }]),
        Turn::tool_use("write_file", json!({"path": "a.txt", "content": "fixed\n"})),
        Turn::text("Recovered: wrote a.txt."),
    ])
    .await;
    let mut s = spec("write a.txt", vec![provider("p", &mock, "anthropic")]);
    s.max_turns = Some(6);
    let d = driver(config());
    let (tx, mut rx) = mpsc::channel(16);
    let collect = async {
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            events.push(e);
        }
        events
    };
    let (out, events) = tokio::join!(d.run(job(s, None), tx, CancellationToken::new()), collect);
    let out = out.expect("the loop runs");
    assert_eq!(
        out.end,
        JobEnd::Exited { code: 0 },
        "{:?}",
        out.result_error
    );
    assert_eq!(out.stdout.text(), "Recovered: wrote a.txt.");
    let results: Vec<Value> = agent(&events)
        .into_iter()
        .filter(|(k, _)| k == "tool_result")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(results.len(), 5, "{results:?}");
    let broken = results[3]["content"].as_str().unwrap();
    assert_eq!(results[3]["is_error"], true, "{broken}");
    assert!(
        broken.contains("not a JSON object") && broken.contains("nothing was run"),
        "{broken}"
    );
    for (r, problem) in results[..3].iter().zip([
        "missing field `path`",
        "invalid type: integer `42`, expected a string",
        "unknown field `mode`",
    ]) {
        assert_eq!(r["is_error"], true, "{r}");
        let content = r["content"].as_str().unwrap();
        assert!(
            content.starts_with("invalid input: ") && content.contains(problem),
            "{problem}: {content}"
        );
        assert!(content.contains("see the tool's schema"), "{content}");
    }
    assert_eq!(results[4]["is_error"], false, "{results:?}");
    // The model saw each error as the result of its call.
    let reqs = mock.requests();
    let seen = &reqs[1].body["messages"][2]["content"][0];
    assert_eq!(seen["type"], "tool_result");
    assert_eq!(seen["is_error"], true);
    assert!(
        seen["content"]
            .as_str()
            .unwrap()
            .contains("missing field `path`"),
        "{seen}"
    );
}

/// Kilobytes of a `/proc/self/status` field (`VmRSS`, `VmHWM`).
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

/// A measurement, not a test of timings: the loop's own cost per turn (a loop of many turns
/// against the mock, minus the same number of bare provider calls), and the memory of 1,000
/// concurrent loops. Run with
/// `cargo test --release -p cflow-agents --test it llm::measure -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn measure_overhead_and_memory() {
    const TURNS: u32 = 200;
    let mock = MockLlm::start().await;
    let p = provider("p", &mock, "anthropic");

    // Bare calls: the same provider, a request like one turn's.
    for _ in 0..TURNS {
        mock.push(Turn::tool_use("echo", json!({"text": "x"})));
    }
    let client = cflow_llm::Resilient::new(vec![
        cflow_llm::Client::new(
            cflow_llm::ProviderConfig::new(
                "p",
                cflow_llm::ProviderKind::Anthropic,
                mock.url(),
                "m",
            )
            .with_api_key("k"),
        )
        .unwrap(),
    ]);
    let mut req = cflow_llm::Request {
        model: String::new(),
        system: "s".into(),
        messages: vec![cflow_llm::Message::user("go")],
        tools: TestTools::default().defs(),
        max_tokens: 100,
        temperature: None,
    };
    let cancel = CancellationToken::new();
    let t = Instant::now();
    for _ in 0..TURNS {
        // The conversation grows as the loop's does: the answer, then the tool's result.
        let a = client.complete(&req, None, &cancel).await.unwrap();
        let id = a.response.tool_uses().next().unwrap().0.to_string();
        req.messages.push(a.response.to_message());
        req.messages
            .push(cflow_llm::Message::tool_result(id, "echo: x", false));
    }
    let bare = t.elapsed();

    // The loop: TURNS - 1 tool turns, then the answer.
    for _ in 0..TURNS - 1 {
        mock.push(Turn::tool_use("echo", json!({"text": "x"})));
    }
    mock.push(Turn::text("done"));
    let mut s = spec("go", vec![p.clone()]);
    s.max_turns = Some(TURNS);
    let d = driver(config());
    let t = Instant::now();
    let (out, _) = run(&d, job(s, None), &TestTools::default()).await;
    let looped = t.elapsed();
    assert_eq!(out.unwrap().end, JobEnd::Exited { code: 0 });
    println!(
        "per turn: loop {:?}, bare call {:?}, loop overhead {:?}",
        looped / TURNS,
        bare / TURNS,
        looped.saturating_sub(bare) / TURNS
    );

    // 1,000 loops at once, each a tool turn and an answer, streamed slowly so they overlap.
    const LOOPS: usize = 1000;
    for _ in 0..LOOPS {
        mock.push(Turn::tool_use("echo", json!({"text": "x"})).slow(Duration::from_millis(20)));
    }
    for _ in 0..LOOPS {
        mock.push(Turn::text("done").slow(Duration::from_millis(20)));
    }
    let before = status_kb("VmRSS");
    let d = std::sync::Arc::new(d);
    let tools = std::sync::Arc::new(TestTools::default());
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..LOOPS {
        let mut s = spec("go", vec![p.clone()]);
        s.max_turns = Some(10);
        let (d, tools) = (d.clone(), tools.clone());
        set.spawn(async move { run(&d, job(s, None), &tools).await.0 });
    }
    let outs = set.join_all().await;
    let ok = outs
        .iter()
        .filter(|o| matches!(o, Ok(o) if o.end == JobEnd::Exited { code: 0 }))
        .count();
    assert_eq!(ok, LOOPS);
    println!(
        "{LOOPS} concurrent loops in {:?}: RSS {} MiB before, peak {} MiB (mock server included)",
        t.elapsed(),
        before / 1024,
        status_kb("VmHWM") / 1024
    );
}
