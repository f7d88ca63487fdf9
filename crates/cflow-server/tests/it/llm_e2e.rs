//! The `llm` driver end to end through the real server: a tenant's provider points at a
//! `MockLlm` (its key in the tenant's secret store), prompt tasks run in the local pool with the
//! sandbox on, and everything is asserted through the API: multi-turn work in the sandbox (the
//! tool steps as events, the artifacts, the transcript), the cost of the calls, a budget spent
//! mid-task, delegation through a real coordinator loop, a tool call with invalid arguments;
//! and (`secrets`) that the tenant's secrets never appear in anything the API serves.

use crate::common::{expect_json, expect_problem};
use crate::events::{Sse, SseReader};
use crate::orchestration::Api;
use cflow_core::pricing::{PriceTable, Usage, micros_to_usd};
use cflow_test_support::llm_mock::{MockLlm, MockUsage, RecordedRequest, Turn};
use cflow_test_support::server::TestServer;
use serde_json::{Value, json};

/// The model the tenant's provider names (the mock answers as the model asked for).
const MODEL: &str = "claude-sonnet-4-5";
/// The model of the OpenAI-compatible variant.
const OPENAI_MODEL: &str = "gpt-4.1";
/// The provider's API key, stored as a tenant secret.
const PROVIDER_KEY: &str = "sk-ant-e2e-0123456789abcdef";
const KEY_SECRET: &str = "ANTHROPIC_KEY";
/// A second secret of the tenant, unrelated to the provider.
const OTHER_VALUE: &str = "zq-deploy-token-31415926535";
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";
const ENDED: [&str; 4] = ["succeeded", "failed", "cancelled", "timed_out"];

async fn put(api: &Api<'_>, path: &str, body: Value) -> reqwest::Response {
    api.server
        .client()
        .put(api.server.at(path))
        .bearer_auth(&api.token)
        .json(&body)
        .send()
        .await
        .expect("request")
}

async fn put_secret(api: &Api<'_>, name: &str, value: &str) {
    expect_json(
        put(
            api,
            &format!("/api/v1/secrets/{name}"),
            json!({ "value": value }),
        )
        .await,
        200,
    )
    .await;
}

/// The API a provider speaks, with the model it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Anthropic,
    OpenAi,
}

impl Kind {
    fn model(self) -> &'static str {
        match self {
            Kind::Anthropic => MODEL,
            Kind::OpenAi => OPENAI_MODEL,
        }
    }
}

/// Stores the provider key as a secret and points the tenant's provider at `mock`, which
/// accepts only that key.
async fn use_mock(api: &Api<'_>, tenant: &str, mock: &MockLlm, kind: Kind) {
    put_secret(api, KEY_SECRET, PROVIDER_KEY).await;
    mock.require_api_key(PROVIDER_KEY);
    let (name, url) = match kind {
        Kind::Anthropic => ("anthropic", mock.url()),
        Kind::OpenAi => ("openai", mock.openai_url()),
    };
    let body = json!({"providers": [{
        "name": "mock", "kind": name, "base_url": url, "model": kind.model(),
        "api_key_secret": KEY_SECRET,
    }]});
    let resp = put(api, &format!("/api/v1/tenants/{tenant}/llm"), body).await;
    expect_json(resp, 200).await;
}

/// A tenant with an admin key whose provider is `mock`; returns `(tenant id, admin token)`.
async fn tenant_on(server: &TestServer, name: &str, mock: &MockLlm) -> (String, String) {
    tenant_on_kind(server, name, mock, Kind::Anthropic).await
}

async fn tenant_on_kind(
    server: &TestServer,
    name: &str,
    mock: &MockLlm,
    kind: Kind,
) -> (String, String) {
    let (tenant, admin) = server.tenant_with_key(name, "admin").await;
    use_mock(&Api::new(server, &admin), &tenant, mock, kind).await;
    (tenant, admin)
}

/// A mesh swarm of one `llm` coder; returns `(swarm id, agent id)`.
async fn llm_swarm(api: &Api<'_>) -> (String, String) {
    let swarm = api
        .create_swarm(json!({"name": "models", "topology": "mesh", "agents": [
            {"type": "coder", "driver": "llm", "min": 1},
        ]}))
        .await;
    let id = swarm["id"].as_str().unwrap().to_string();
    let agents = agents_of(api, &id).await;
    (id, agents[0].1.clone())
}

/// `(type, id)` of a swarm's agents.
async fn agents_of(api: &Api<'_>, swarm: &str) -> Vec<(String, String)> {
    let list = api.get_json(&format!("/api/v1/agents?swarm={swarm}")).await;
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["type"].as_str().unwrap().to_string(),
                a["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Submits one prompt task (one attempt, a short timeout); returns its id.
async fn submit_prompt(api: &Api<'_>, swarm: &str, spec: Value) -> String {
    let tasks = api
        .submit(json!([{"swarm": swarm, "max_attempts": 1, "timeout_seconds": 30, "spec": spec}]))
        .await;
    tasks[0]["id"].as_str().unwrap().to_string()
}

/// The task's events from the stream, until it ended.
async fn events_until_end(stream: &mut SseReader, task: &str) -> Vec<Sse> {
    stream
        .until(|e| {
            e.data["subject"] == task && ENDED.iter().any(|s| e.event == format!("task.{s}"))
        })
        .await
}

/// `(kind, data)` of the task's `task.agent` events, in order.
fn agent_steps(events: &[Sse], task: &str) -> Vec<(String, Value)> {
    events
        .iter()
        .filter(|e| e.event == "task.agent" && e.data["subject"] == task)
        .map(|e| {
            let d = &e.data["data"];
            (d["kind"].as_str().unwrap().to_string(), d["data"].clone())
        })
        .collect()
}

/// The tool results of the last message of a request the mock received.
fn tool_results(r: &RecordedRequest) -> Vec<Value> {
    let msgs = r.body["messages"].as_array().expect("messages");
    let last = msgs.last().expect("a message");
    assert_eq!(last["role"], "user", "{last}");
    last["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "tool_result")
        .cloned()
        .collect()
}

/// A tool result's text, whether the format sent a string or text blocks.
fn result_text(block: &Value) -> String {
    match &block["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        other => other.to_string(),
    }
}

/// The task's artifacts as `(name, kind, sha256)`.
async fn artifacts(api: &Api<'_>, task: &str) -> Vec<(String, String, String)> {
    let list = api
        .get_json(&format!("/api/v1/tasks/{task}/artifacts"))
        .await;
    list["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                a["kind"].as_str().unwrap().to_string(),
                a["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn artifact(api: &Api<'_>, task: &str, sha: &str) -> Vec<u8> {
    let resp = api
        .get(&format!("/api/v1/tasks/{task}/artifacts/{sha}"))
        .await;
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap().to_vec()
}

fn usage(input: u64, output: u64, cache_read: u64, cache_write: u64) -> MockUsage {
    MockUsage {
        input_tokens: input,
        output_tokens: output,
        cache_read_tokens: cache_read,
        cache_write_tokens: cache_write,
    }
}

/// What the default price table charges for these calls of `model`, rounded per call as the
/// server does.
fn priced(model: &str, calls: &[MockUsage]) -> u64 {
    let table = PriceTable::default();
    calls
        .iter()
        .map(|u| {
            let usage = Usage {
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                cache_read_tokens: u.cache_read_tokens,
                cache_write_tokens: u.cache_write_tokens,
            };
            let cost = table.cost("mock", model, &usage);
            assert!(cost.priced, "{model} has a default price");
            cost.micros
        })
        .sum()
}

/// The script the model writes: it greets, and says whether it could open an internet socket.
const HELLO_PY: &str = "import socket\nprint('hello from the sandbox')\ntry:\n    \
                        socket.socket(socket.AF_INET)\n    print('network: open')\n\
                        except OSError:\n    print('network: refused')\n";
/// What it prints in the sandbox, with the network off.
const HELLO_OUT: &str = "hello from the sandbox\nnetwork: refused\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_writes_runs_and_reads_in_the_sandbox() {
    let answer = "The script printed: hello from the sandbox";
    let mock = MockLlm::with_turns([
        Turn::tool_use(
            "write_file",
            json!({"path": "hello.py", "content": HELLO_PY}),
        ),
        Turn::tool_use(
            "run_command",
            json!({"command": "python3 hello.py > out.txt"}),
        ),
        Turn::tool_use("read_file", json!({"path": "out.txt"})),
        Turn::text(answer),
    ])
    .await;
    let server = TestServer::start_sqlite().await;
    let (_, admin) = tenant_on(&server, "acme", &mock).await;
    let api = Api::new(&server, &admin);
    let (swarm, agent) = llm_swarm(&api).await;
    let mut stream = SseReader::open(&api, "?types=task.", None).await;

    let task = submit_prompt(
        &api,
        &swarm,
        json!({"prompt": "Write hello.py, run it into out.txt and tell me what it printed.",
               "network": "off", "artifacts": ["out.txt"], "env": {"PATH": PATH}}),
    )
    .await;
    let events = events_until_end(&mut stream, &task).await;
    let t = api.task(&task).await;
    assert_eq!(t["state"], "succeeded", "{t:#}");
    assert_eq!(t["result"]["answer"], answer, "{t:#}");
    assert_eq!(t["result"]["turns"], 4, "{t:#}");
    let a = &t["attempts"][0];
    assert_eq!(a["agent_id"], agent.as_str());
    assert_eq!(a["stdout"], answer);
    assert_eq!(a["end"], "exit 0", "{a:#}");

    // The command ran in the sandbox, without network.
    let iso = a["isolation"].as_str().unwrap();
    assert!(iso.starts_with("sandbox: "), "{iso}");
    for layer in ["user_ns", "pid_ns", "net_ns", "filesystem", "seccomp"] {
        assert_eq!(a["sandbox"]["layers"][layer]["state"], "active", "{a:#}");
    }
    // The run's own report reached the attempt: the socket the script tried was refused.
    let denied = a["sandbox"]["denied"].to_string();
    assert!(denied.contains("socket(AF_INET)"), "{a:#}");

    // The tool steps, in order, as events.
    let steps = agent_steps(&events, &task);
    let tools: Vec<(String, String)> = steps
        .iter()
        .filter(|(k, _)| k == "tool_use" || k == "tool_result")
        .map(|(k, d)| {
            (
                k.clone(),
                d["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = ["write_file", "run_command", "read_file"]
        .iter()
        .flat_map(|n| {
            [
                ("tool_use".to_string(), n.to_string()),
                ("tool_result".to_string(), n.to_string()),
            ]
        })
        .collect();
    assert_eq!(tools, want, "{steps:#?}");
    let results: Vec<&Value> = steps
        .iter()
        .filter(|(k, _)| k == "tool_result")
        .map(|(_, d)| d)
        .collect();
    assert!(
        results.iter().all(|r| r["is_error"] == false),
        "{results:#?}"
    );
    let ran = results[1]["content"].as_str().unwrap();
    assert!(ran.starts_with("exit code 0"), "{ran}");
    let read = results[2]["content"].as_str().unwrap();
    assert!(read.contains("hello from the sandbox"), "{read}");
    assert!(
        steps
            .iter()
            .any(|(k, d)| k == "assistant_text" && d["text"] == answer),
        "{steps:#?}"
    );

    // The declared artifact holds the command's output; the transcript is an artifact too.
    let arts = artifacts(&api, &task).await;
    let sha = |name: &str| {
        arts.iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("{name} in {arts:?}"))
            .2
            .clone()
    };
    let kind = |name: &str| arts.iter().find(|(n, _, _)| n == name).unwrap().1.clone();
    assert_eq!(kind("out.txt"), "file");
    let out = artifact(&api, &task, &sha("out.txt")).await;
    assert_eq!(String::from_utf8_lossy(&out), HELLO_OUT);
    assert_eq!(kind("transcript.jsonl"), "log");
    let transcript = artifact(&api, &task, &sha("transcript.jsonl")).await;
    let lines: Vec<Value> = String::from_utf8(transcript)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines[0]["type"], "system");
    let end = lines.last().unwrap();
    assert_eq!(
        (end["type"].as_str(), end["turns"].as_u64()),
        (Some("end"), Some(4))
    );
    assert!(
        lines
            .iter()
            .filter(|l| l["type"] == "turn")
            .all(|l| l["model"] == MODEL && l["provider"] == "mock"),
        "{lines:#?}"
    );

    // The mock got the key, and each tool's result in the next request.
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 4);
    assert!(reqs.iter().all(|r| r.api_key() == Some(PROVIDER_KEY)));
    assert_eq!(reqs[0].body["model"], MODEL);
    for (i, needle) in [
        (1, "hello.py"),
        (2, "exit code 0"),
        (3, "hello from the sandbox"),
    ] {
        let results = tool_results(&reqs[i]);
        assert_eq!(results.len(), 1, "request {i}: {results:?}");
        assert_eq!(results[0]["is_error"], false, "request {i}: {results:?}");
        let text = result_text(&results[0]);
        assert!(text.contains(needle), "request {i}: {text}");
    }
    drop(stream);
    server.shutdown().await;
}

async fn cost_of_the_calls(server: TestServer, kind: Kind) {
    // OpenAI reports cached input inside its prompt tokens and has no cache writes.
    let calls = match kind {
        Kind::Anthropic => [usage(1200, 80, 300, 50), usage(1500, 40, 0, 0)],
        Kind::OpenAi => [usage(1200, 80, 300, 0), usage(1500, 40, 0, 0)],
    };
    let mock = MockLlm::with_turns([
        Turn::tool_use("list_files", json!({})).with_usage(calls[0]),
        Turn::text("nothing here").with_usage(calls[1]),
    ])
    .await;
    let (_, admin) = tenant_on_kind(&server, "acme", &mock, kind).await;
    let api = Api::new(&server, &admin);
    let (swarm, agent) = llm_swarm(&api).await;
    let task = submit_prompt(&api, &swarm, json!({"prompt": "List the workspace."})).await;
    let t = api.wait_task(&task, &ENDED).await;
    assert_eq!(t["state"], "succeeded", "{t:#}");
    assert_eq!(t["result"]["answer"], "nothing here", "{t:#}");
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    let path = match kind {
        Kind::Anthropic => "/v1/messages",
        Kind::OpenAi => "/v1/chat/completions",
    };
    assert!(reqs.iter().all(|r| r.path == path), "{:?}", reqs[0].path);

    let micros = priced(kind.model(), &calls);
    assert!(micros > 0);
    let sum = |f: fn(&MockUsage) -> u64| calls.iter().map(f).sum::<u64>();
    let cost = &t["cost"];
    assert_eq!(cost["calls"], 2, "{cost}");
    assert_eq!(cost["input_tokens"], sum(|u| u.input_tokens), "{cost}");
    assert_eq!(cost["output_tokens"], sum(|u| u.output_tokens), "{cost}");
    assert_eq!(
        cost["cache_read_tokens"],
        sum(|u| u.cache_read_tokens),
        "{cost}"
    );
    assert_eq!(
        cost["cache_write_tokens"],
        sum(|u| u.cache_write_tokens),
        "{cost}"
    );
    assert_eq!(cost["unpriced_calls"], 0, "{cost}");
    assert_eq!(
        cost["cost_usd"].as_f64(),
        Some(micros_to_usd(micros)),
        "{cost}"
    );
    // The attempt's own tally agrees.
    assert_eq!(
        t["result"]["usage"]["input_tokens"],
        sum(|u| u.input_tokens),
        "{t:#}"
    );

    for (by, key) in [
        ("task", task.as_str()),
        ("agent", agent.as_str()),
        ("swarm", swarm.as_str()),
        ("model", kind.model()),
    ] {
        let report = api.get_json(&format!("/api/v1/cost?by={by}")).await;
        let rows = report["items"].as_array().unwrap();
        assert_eq!(rows.len(), 1, "by {by}: {report}");
        assert_eq!(rows[0]["key"], key, "by {by}: {report}");
        assert_eq!(rows[0]["calls"], 2, "by {by}: {report}");
        assert_eq!(rows[0]["cost_micros"], micros, "by {by}: {report}");
        assert_eq!(report["total"]["cost_micros"], micros, "by {by}: {report}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cost_of_the_calls_is_the_price_tables_on_sqlite() {
    cost_of_the_calls(TestServer::start_sqlite().await, Kind::Anthropic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cost_of_openai_calls_is_the_price_tables_on_sqlite() {
    cost_of_the_calls(TestServer::start_sqlite().await, Kind::OpenAi).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cost_of_the_calls_is_the_price_tables_on_postgres() {
    let Some(server) = TestServer::start_postgres().await else {
        eprintln!("skipped: no PostgreSQL configured (set CFLOW_TEST_DATABASE_URL)");
        return;
    };
    cost_of_the_calls(server, Kind::Anthropic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_spent_by_the_first_call_stops_the_loop_at_the_next() {
    // 1000 input and 100 output tokens of claude-sonnet-4-5 cost $0.0045: over $0.001.
    let mock = MockLlm::with_turns([
        Turn::tool_use("write_file", json!({"path": "a.txt", "content": "a"}))
            .with_usage(usage(1000, 100, 0, 0)),
        Turn::tool_use("read_file", json!({"path": "a.txt"})),
        Turn::text("never asked for"),
    ])
    .await;
    let server = TestServer::start_sqlite().await;
    let (_, admin) = tenant_on(&server, "acme", &mock).await;
    let api = Api::new(&server, &admin);
    let (swarm, _) = llm_swarm(&api).await;
    let resp = put(
        &api,
        "/api/v1/budgets",
        json!({"period": "day", "limit_usd": 0.001}),
    )
    .await;
    expect_json(resp, 200).await;

    let task = submit_prompt(&api, &swarm, json!({"prompt": "Write a.txt and read it."})).await;
    let t = api.wait_task(&task, &ENDED).await;
    assert_eq!(t["state"], "failed", "{t:#}");
    // One model call: the budget check before the second refused it.
    assert_eq!(mock.request_count(), 1);
    assert_eq!(mock.remaining_turns(), 2);
    assert_eq!(t["attempts"].as_array().unwrap().len(), 1, "{t:#}");
    // The attempt says which budget stopped it and until when (the task's reason only says
    // that attempt 1 failed).
    let said = t["attempts"][0]["stderr"].as_str().unwrap();
    for needle in [
        "stopped before model call 2",
        "budget 'tenant acme, day' is spent",
        "it resets at ",
        "PUT /api/v1/budgets",
    ] {
        assert!(said.contains(needle), "{needle} missing: {t:#}");
    }
    assert_eq!(t["cost"]["calls"], 1, "{t:#}");
    assert_eq!(
        t["cost"]["cost_usd"].as_f64(),
        Some(micros_to_usd(priced(MODEL, &[usage(1000, 100, 0, 0)])))
    );

    // A new prompt is refused at submission; the budget says what was spent.
    let resp = api
        .post(
            "/api/v1/tasks",
            json!({"tasks": [{"swarm": swarm, "spec": {"prompt": "again"}}]}),
        )
        .await;
    let problem = expect_problem(resp, 429, "rate-limited").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("is spent"),
        "{problem}"
    );
    let budgets = api.get_json("/api/v1/budgets").await;
    assert_eq!(budgets["items"][0]["spent_micros"], 4500, "{budgets}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_delegates_to_a_coder_through_its_loop() {
    // One local slot: the coordinator's attempt ends before the coder's starts, so the turns
    // of the shared script are taken in this order.
    let mock = MockLlm::with_turns([
        Turn::tool_use(
            "delegate_task",
            json!({"prompt": "Write the unit tests for parse().", "agent_type": "coder"}),
        ),
        Turn::text("Delegated the tests to a coder."),
        Turn::tool_use(
            "delegate_task",
            json!({"prompt": "Review my tests.", "agent_type": "coordinator"}),
        ),
        Turn::text("Tests written."),
    ])
    .await;
    let server = TestServer::start_with(|c| c.sched.local_slots = 1).await;
    let (_, admin) = tenant_on(&server, "acme", &mock).await;
    let api = Api::new(&server, &admin);
    let swarm = api
        .create_swarm(
            json!({"name": "team", "topology": "hierarchical", "agents": [
                {"type": "coordinator", "driver": "llm", "min": 1},
                {"type": "coder", "driver": "llm", "min": 1},
            ]}),
        )
        .await;
    let swarm_id = swarm["id"].as_str().unwrap().to_string();
    let agents = agents_of(&api, &swarm_id).await;
    let id_of = |ty: &str| agents.iter().find(|(t, _)| t == ty).unwrap().1.clone();
    let (coordinator, coder) = (id_of("coordinator"), id_of("coder"));
    let mut stream = SseReader::open(&api, "?types=task.", None).await;

    let tasks = api
        .submit(
            json!([{"swarm": swarm_id, "agent": coordinator, "max_attempts": 1,
                        "timeout_seconds": 30, "spec": {"prompt": "Get parse() tested."}}]),
        )
        .await;
    let parent = tasks[0]["id"].as_str().unwrap().to_string();
    let t = api.wait_task(&parent, &ENDED).await;
    assert_eq!(t["state"], "succeeded", "{t:#}");
    assert_eq!(t["attempts"][0]["agent_id"], coordinator.as_str());
    assert_eq!(t["result"]["answer"], "Delegated the tests to a coder.");

    // The coordinator's model saw the subtask it created.
    let reqs = mock.requests();
    let results = tool_results(&reqs[1]);
    assert_eq!(results[0]["is_error"], false, "{results:?}");
    let made: Value = serde_json::from_str(&result_text(&results[0])).expect("JSON");
    assert_eq!(made["agent_id"], coder.as_str(), "{made}");
    assert_eq!(made["agent_type"], "coder", "{made}");
    let child = made["task_id"].as_str().unwrap().to_string();

    // The subtask runs on the coder, whose model gets its prompt and sees the topology's
    // refusal of a delegation upwards as a tool error.
    let c = api.wait_task(&child, &ENDED).await;
    assert_eq!(c["state"], "succeeded", "{c:#}");
    assert_eq!(c["agent_id"], coder.as_str(), "{c:#}");
    assert_eq!(c["attempts"][0]["agent_id"], coder.as_str(), "{c:#}");
    assert_eq!(c["spec"]["prompt"], "Write the unit tests for parse().");
    assert_eq!(c["result"]["answer"], "Tests written.");
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 4);
    let first = reqs[2].body["messages"][0].to_string();
    assert!(
        first.contains("Write the unit tests for parse()."),
        "{first}"
    );
    let refusal = tool_results(&reqs[3]);
    assert_eq!(refusal[0]["is_error"], true, "{refusal:?}");
    let why = result_text(&refusal[0]);
    assert!(why.contains("hierarchical topology"), "{why}");
    assert_eq!(
        api.task_count().await,
        2,
        "the refused delegation created nothing"
    );

    let events = events_until_end(&mut stream, &child).await;
    let delegated = events
        .iter()
        .find(|e| e.event == "task.delegated")
        .expect("a task.delegated event");
    assert_eq!(delegated.data["subject"], child.as_str());
    assert_eq!(delegated.data["data"]["parent_task_id"], parent.as_str());
    assert_eq!(delegated.data["data"]["from_agent"], coordinator.as_str());
    drop(stream);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_with_invalid_arguments_is_an_error_the_model_recovers_from() {
    let mock = MockLlm::with_turns([
        Turn::tool_use("read_file", json!({})),
        Turn::tool_use("edit_file", json!({"path": "notes.txt", "new_string": "b"})),
        Turn::tool_use("write_file", json!({"path": "notes.txt", "content": "a"})),
        Turn::text("Wrote notes.txt."),
    ])
    .await;
    let server = TestServer::start_sqlite().await;
    let (_, admin) = tenant_on(&server, "acme", &mock).await;
    let api = Api::new(&server, &admin);
    let (swarm, _) = llm_swarm(&api).await;
    let task = submit_prompt(&api, &swarm, json!({"prompt": "Write notes.txt."})).await;
    let t = api.wait_task(&task, &ENDED).await;
    assert_eq!(t["state"], "succeeded", "{t:#}");
    assert_eq!(t["result"]["answer"], "Wrote notes.txt.");

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 4);
    for (i, field) in [(1, "path"), (2, "old_string")] {
        let results = tool_results(&reqs[i]);
        assert_eq!(results[0]["is_error"], true, "request {i}: {results:?}");
        let text = result_text(&results[0]);
        assert!(text.contains(field), "request {i}: {text}");
    }
    let ok = tool_results(&reqs[3]);
    assert_eq!(ok[0]["is_error"], false, "{ok:?}");
    server.shutdown().await;
}

mod secrets;
