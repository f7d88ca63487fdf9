//! The server side of a model loop's calls over HTTP (`POST
//! /api/v1/workers/{id}/attempts/{task_id}/{epoch}/calls`), driven as a remote worker would: a
//! worker key registers an `llm` worker, receives a prompt task of a star swarm's coder, and
//! calls the server for its setup, memory (with masking), messages and delegation under the
//! topology (refusals audited), the budget check and usage accounting (with the full scope),
//! and is fenced: a stale epoch, a finished attempt, another tenant's worker, an unknown task.

use crate::common::{expect_json, expect_problem};
use crate::orchestration::Api;
use crate::workers_http::{finished, next_assignment, remote_only, remote_only_postgres, report};
use cflow_agents::host::HostError;
use cflow_agents::proto::HostReply;
use cflow_server::events::Resume;
use cflow_server::sched::SchedError;
use cflow_test_support::server::TestServer;
use serde_json::{Value, json};

/// A value of the tenant's secret, which must never come back from memory.
const SECRET: &str = "s3cr3t-memory-value-4242";

struct Attempt<'a> {
    worker: &'a Api<'a>,
    worker_id: &'a str,
    task: String,
    epoch: i64,
}

impl Attempt<'_> {
    async fn post(&self, epoch: i64, call: Value) -> reqwest::Response {
        let path = format!(
            "/api/v1/workers/{}/attempts/{}/{epoch}/calls",
            self.worker_id, self.task
        );
        self.worker.post(&path, json!({ "call": call })).await
    }

    /// A call at the attempt's epoch; returns the reply (`{"ok": ..}` or `{"err": ..}`).
    async fn call(&self, call: Value) -> Value {
        expect_json(self.post(self.epoch, call).await, 200).await
    }

    async fn tool(&self, name: &str, input: Value) -> Value {
        self.call(json!({"op": "tool", "name": name, "input": input}))
            .await
    }
}

/// The `ok` value of a reply, failing on a refusal.
fn ok(reply: Value) -> Value {
    reply
        .get("ok")
        .cloned()
        .unwrap_or_else(|| panic!("expected ok: {reply}"))
}

/// The message of a refusal, failing on anything else.
fn refused(reply: Value) -> String {
    assert_eq!(reply["err"]["kind"], "refused", "{reply}");
    reply["err"]["message"].as_str().unwrap().to_string()
}

async fn agents_by_type(api: &Api<'_>, swarm: &str, ty: &str) -> Vec<String> {
    let list = api.get_json(&format!("/api/v1/agents?swarm={swarm}")).await;
    let mut ids: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["type"] == ty)
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

async fn audit_entries(api: &Api<'_>) -> Vec<Value> {
    api.get_json("/api/v1/audit?limit=1000").await["items"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_model_loop_calls_the_server_on_sqlite() {
    model_loop_calls(remote_only().await).await;
}

#[tokio::test]
async fn a_model_loop_calls_the_server_on_postgres() {
    let Some(server) = remote_only_postgres().await else {
        eprintln!("skipped: no PostgreSQL configured (set CFLOW_TEST_DATABASE_URL)");
        return;
    };
    model_loop_calls(server).await;
}

async fn model_loop_calls(server: TestServer) {
    let (tenant, admin) = server.tenant_with_key("acme", "admin").await;
    let worker_token = server.create_key(&tenant, "acme-worker", "worker").await;
    let (_, other_token) = server.tenant_with_key("other", "worker").await;
    let api = Api::new(&server, &admin);
    let worker = Api::new(&server, &worker_token);
    let other = Api::new(&server, &other_token);

    let resp = server
        .client()
        .put(server.at("/api/v1/secrets/memory-token"))
        .bearer_auth(&admin)
        .json(&json!({ "value": SECRET }))
        .send()
        .await
        .unwrap();
    expect_json(resp, 200).await;

    // A star swarm of the project `web`: the coordinator is the hub, the coders are spokes.
    let swarm = api
        .create_swarm(
            json!({"name": "models", "topology": "star", "project": "web", "agents": [
                {"type": "coordinator", "driver": "llm", "min": 1},
                {"type": "coder", "driver": "llm", "min": 2},
            ]}),
        )
        .await;
    let swarm_id = swarm["id"].as_str().unwrap().to_string();
    let coordinator = agents_by_type(&api, &swarm_id, "coordinator").await;
    let coders = agents_by_type(&api, &swarm_id, "coder").await;
    assert_eq!((coordinator.len(), coders.len()), (1, 2));
    let (hub, me, spoke) = (&coordinator[0], &coders[0], &coders[1]);

    let reg = json!({"worker_id": "w-llm", "name": "llm.test", "slots": 4, "drivers": ["llm"]});
    expect_json(worker.post("/api/v1/workers", reg).await, 201).await;
    let tasks = api
        .submit(json!([{"swarm": swarm_id, "agent": me,
                        "spec": {"prompt": "plan the release"}}]))
        .await;
    let task = tasks[0]["id"].as_str().unwrap().to_string();
    let a = next_assignment(&worker, "w-llm").await;
    assert_eq!(
        (a["task_id"].as_str(), a["driver"].as_str()),
        (Some(task.as_str()), Some("llm"))
    );
    assert_eq!(a["agent_id"], me.as_str());
    let epoch = a["epoch"].as_i64().unwrap();
    let at = Attempt {
        worker: &worker,
        worker_id: "w-llm",
        task: task.clone(),
        epoch,
    };

    // Setup answers with a model setup (whatever the tenant configured).
    let setup = ok(at.call(json!({"op": "setup"})).await);
    serde_json::from_value::<cflow_agents::model::ModelSetup>(setup.clone())
        .unwrap_or_else(|e| panic!("setup does not parse ({e}): {setup}"));

    // Memory: a round trip in the project's namespace, the secret masked on the way in.
    let put = ok(at
        .tool(
            "memory_put",
            json!({"key": "plan", "value": {"note": format!("deploy with {SECRET}"), "step": 1}}),
        )
        .await);
    let shared = format!("web/swarm/{swarm_id}");
    assert_eq!(
        (put["namespace"].as_str(), put["version"].as_i64()),
        (Some(shared.as_str()), Some(1))
    );
    let got = ok(at.tool("memory_get", json!({"key": "plan"})).await);
    assert_eq!(
        got["value"],
        json!({"note": "deploy with [REDACTED:secret]", "step": 1}),
        "{got}"
    );
    let stored = api
        .get_json(&format!("/api/v1/memory/web%2Fswarm%2F{swarm_id}/plan"))
        .await;
    assert!(!stored.to_string().contains(SECRET), "{stored}");
    ok(at
        .tool(
            "memory_put",
            json!({"key": "notes", "namespace": "web/release", "value": "deploy on friday",
                   "ttl_secs": 3600}),
        )
        .await);
    let hits = ok(at.tool("memory_search", json!({"query": "deploy"})).await);
    let mut keys: Vec<&str> = hits["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["key"].as_str().unwrap())
        .collect();
    keys.sort();
    assert_eq!(keys, ["notes", "plan"], "{hits}");
    // Outside its project, unknown keys and bad input are refused with what to do.
    let why = refused(
        at.tool(
            "memory_put",
            json!({"key": "x", "namespace": "ops", "value": 1}),
        )
        .await,
    );
    assert!(why.contains("project 'web'"), "{why}");
    let why = refused(at.tool("memory_get", json!({"key": "absent"})).await);
    assert!(why.contains("no memory entry 'absent'"), "{why}");
    let why = refused(at.tool("memory_get", json!({"name": "plan"})).await);
    assert!(why.contains("memory_get takes {key, namespace?}"), "{why}");
    assert!(api.get("/api/v1/memory/ops/x").await.status() == 404);

    // Messages: a spoke may message the hub, not another spoke; the refusal is audited.
    let sent = ok(at
        .tool(
            "send_message",
            json!({"to_agent_id": hub, "body": {"text": "plan ready"}}),
        )
        .await);
    assert!(sent["message_id"].as_i64().is_some(), "{sent}");
    let inbox = api
        .get_json(&format!("/api/v1/agents/{hub}/messages"))
        .await;
    assert_eq!(inbox["items"][0]["from"], me.as_str(), "{inbox}");
    assert_eq!(inbox["items"][0]["body"], json!({"text": "plan ready"}));
    let why = refused(
        at.tool(
            "send_message",
            json!({"to_agent_id": spoke, "body": "psst"}),
        )
        .await,
    );
    assert!(why.contains("star"), "{why}");
    let spoke_inbox = api
        .get_json(&format!("/api/v1/agents/{spoke}/messages"))
        .await;
    assert_eq!(spoke_inbox["items"], json!([]), "nothing was delivered");
    let principal = format!("agent:{me}");
    let audit = audit_entries(&api).await;
    assert!(
        audit.iter().any(|e| e["action"] == "memory.write"
            && e["outcome"] == "forbidden"
            && e["resource"] == "memory/ops/x"
            && e["principal_id"] == principal.as_str()),
        "the write outside the project is audited"
    );
    let denied = audit
        .iter()
        .find(|e| e["action"] == "message.send" && e["outcome"] == "forbidden")
        .unwrap_or_else(|| panic!("the refused message is audited: {audit:#?}"));
    assert_eq!(denied["principal_id"], principal.as_str(), "{denied}");
    assert_eq!(denied["detail"]["task_id"], task.as_str(), "{denied}");
    assert!(
        audit.iter().any(|e| e["action"] == "memory.write"
            && e["outcome"] == "success"
            && e["principal_id"] == principal.as_str()),
        "the agent's memory write is audited as its own"
    );

    // Delegation: to the hub (a coordinator) yes, to another spoke no (audited).
    let why = refused(
        at.tool(
            "delegate_task",
            json!({"prompt": "write tests", "agent_type": "coder"}),
        )
        .await,
    );
    assert!(why.contains("star"), "{why}");
    assert!(
        audit_entries(&api)
            .await
            .iter()
            .any(|e| e["action"] == "task.submit" && e["outcome"] == "forbidden"),
        "the refused delegation is audited"
    );
    let why = refused(
        at.tool(
            "delegate_task",
            json!({"prompt": "x", "agent_type": "tester"}),
        )
        .await,
    );
    assert!(
        why.contains("no other live model agent of type or capability 'tester'"),
        "{why}"
    );
    let before = api.task_count().await;
    let delegated = ok(at
        .tool(
            "delegate_task",
            json!({"prompt": "review the plan", "agent_type": "coordinator", "priority": 70}),
        )
        .await);
    let sub = delegated["task_id"].as_str().unwrap().to_string();
    assert_eq!(delegated["agent_id"], hub.as_str(), "{delegated}");
    assert_eq!(api.task_count().await, before + 1);
    let t = api.task(&sub).await;
    assert_eq!(t["spec"], json!({"prompt": "review the plan"}), "{t}");
    assert_eq!(
        (
            t["swarm_id"].as_str(),
            t["agent_id"].as_str(),
            t["priority"].as_i64()
        ),
        (Some(swarm_id.as_str()), Some(hub.as_str()), Some(70))
    );

    // Unknown tools are refused with the list of the server's tools.
    let why = refused(at.tool("rm_rf", json!({})).await);
    assert!(
        why.contains("memory_get, memory_put, memory_search, send_message, delegate_task"),
        "{why}"
    );

    // Budget: allowed, then spent by usage (with the whole scope recorded), then refused.
    assert_eq!(
        ok(at.call(json!({"op": "check_budget"})).await),
        json!({"allowed": true})
    );
    let resp = server
        .client()
        .put(server.at("/api/v1/budgets"))
        .bearer_auth(&admin)
        .json(&json!({"period": "month", "limit_usd": 1, "project": "web"}))
        .send()
        .await
        .unwrap();
    expect_json(resp, 200).await;
    let usage = json!({"op": "usage", "provider": "anthropic", "model": "claude-sonnet-4",
                       "tokens": {"input_tokens": 100_000, "output_tokens": 10_000}});
    let mut calls = 0;
    let why = loop {
        let reply = at.call(json!({"op": "check_budget"})).await;
        if reply.get("err").is_some() {
            break refused(reply);
        }
        let cost = ok(at.call(usage.clone()).await);
        calls += 1;
        assert_eq!(cost["cost_usd"], 0.45, "{cost}");
        assert_eq!(cost["priced"], true, "{cost}");
        // The answer says what the budgets are after this call: spent by the third.
        if calls < 3 {
            assert_eq!(cost["budget"], serde_json::Value::Null, "{cost}");
        } else {
            let spent = cost["budget"].as_str().unwrap_or_default();
            assert!(spent.contains("project web, month"), "{cost}");
        }
        assert!(calls <= 3, "the budget never refused");
    };
    assert_eq!(calls, 3);
    assert!(
        why.contains("project web, month")
            && why.contains("$1.35 of $1.00")
            && why.contains("resets at"),
        "{why}"
    );
    // A second refusal and a refused delegation do not announce the budget again.
    refused(at.call(json!({"op": "check_budget"})).await);
    let why = refused(
        at.tool(
            "delegate_task",
            json!({"prompt": "more", "agent_type": "coordinator"}),
        )
        .await,
    );
    assert!(why.contains("is spent"), "{why}");
    let events = server.state().events.subscribe(
        &tenant,
        Resume::After(format!("{}-0", server.state().events.boot())),
    );
    let exceeded: Vec<_> = events
        .backlog
        .iter()
        .filter(|e| e.kind == "budget.exceeded")
        .collect();
    assert_eq!(exceeded.len(), 1, "{exceeded:?}");
    assert_eq!(exceeded[0].data["task_id"], task.as_str());
    for (by, key) in [
        ("task", task.as_str()),
        ("agent", me.as_str()),
        ("swarm", swarm_id.as_str()),
        ("project", "web"),
    ] {
        let report = api.get_json(&format!("/api/v1/cost?by={by}")).await;
        assert_eq!(report["items"][0]["key"], key, "by {by}: {report}");
        assert_eq!(report["items"][0]["calls"], 3, "by {by}: {report}");
    }
    let bad = refused(
        at.call(
            json!({"op": "usage", "provider": "", "model": "m", "tokens":
                     {"input_tokens": 1, "output_tokens": 1}}),
        )
        .await,
    );
    assert!(bad.contains("provider"), "{bad}");

    // Fencing: another tenant's worker finds neither this worker nor this task; a stale epoch
    // and an unknown task are refused; no call is served once the attempt has finished.
    let reg = json!({"worker_id": "w-other", "name": "o", "slots": 1, "drivers": ["llm"]});
    expect_json(other.post("/api/v1/workers", reg).await, 201).await;
    let call = json!({"call": {"op": "check_budget"}});
    for path in [
        format!("/api/v1/workers/w-llm/attempts/{task}/{epoch}/calls"),
        format!("/api/v1/workers/w-other/attempts/{task}/{epoch}/calls"),
        format!("/api/v1/workers/w-llm/attempts/no-such-task/{epoch}/calls"),
    ] {
        let worker = if path.contains("no-such") {
            &worker
        } else {
            &other
        };
        expect_problem(worker.post(&path, call.clone()).await, 404, "not-found").await;
    }
    expect_problem(
        at.post(epoch - 1, json!({"op": "check_budget"})).await,
        409,
        "conflict",
    )
    .await;
    // In-process (the local pool's path): the same fence, as store errors the link maps to
    // 404 and 409.
    let sched = &server.state().sched;
    let check = || cflow_agents::host::HostCall::CheckBudget;
    let served = sched.host_call(None, "w-llm", &task, epoch, check()).await;
    assert!(
        matches!(served, Ok(HostReply::Err(HostError::Refused(_)))),
        "{served:?}"
    );
    let unknown = sched
        .host_call(None, "w-llm", "no-such", epoch, check())
        .await;
    assert!(
        matches!(
            unknown,
            Err(SchedError::Store(cflow_store::Error::NotFound(_)))
        ),
        "{unknown:?}"
    );
    let stale = sched
        .host_call(None, "w-llm", &task, epoch + 1, check())
        .await;
    assert!(
        matches!(
            stale,
            Err(SchedError::Store(cflow_store::Error::StaleEpoch { .. }))
        ),
        "{stale:?}"
    );
    let acks = report(&worker, "w-llm", json!([finished(&task, epoch, "done")])).await;
    assert_eq!(acks[0]["status"], 200, "{acks:?}");
    expect_problem(
        at.post(epoch, json!({"op": "check_budget"})).await,
        409,
        "conflict",
    )
    .await;
    server.shutdown().await;
}
