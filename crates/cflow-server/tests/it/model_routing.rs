//! Prompts go to model agents, commands to exec agents: the scheduler never hands a prompt to an
//! `exec` agent (which could only fail it) nor a command to a model agent, and a task pinned to
//! an agent whose driver cannot run it is refused at submission.

use crate::common::{expect_json, expect_problem};
use crate::orchestration::Api;
use crate::workers_http::remote_only;
use serde_json::json;

#[tokio::test]
async fn prompts_go_to_model_agents_and_commands_to_exec_agents() {
    let server = remote_only().await;
    let (tenant, admin) = server.tenant_with_key("acme", "admin").await;
    let worker_token = server.create_key(&tenant, "w", "worker").await;
    let api = Api::new(&server, &admin);
    let worker = Api::new(&server, &worker_token);
    let swarm = api
        .create_swarm(json!({"name": "mixed", "topology": "mesh", "agents": [
            {"type": "coder", "driver": "exec", "min": 1},
            {"type": "reviewer", "driver": "llm", "min": 1},
        ]}))
        .await;
    let swarm_id = swarm["id"].as_str().unwrap();
    let agents = api
        .get_json(&format!("/api/v1/agents?swarm={swarm_id}"))
        .await;
    let agent_of = |driver: &str| {
        agents["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["driver"] == driver)
            .unwrap_or_else(|| panic!("an {driver} agent in {agents}"))["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (exec_agent, llm_agent) = (agent_of("exec"), agent_of("llm"));

    // Pinned to the wrong kind of agent: refused, nothing stored.
    for (spec, agent) in [
        (json!({"prompt": "write a haiku"}), &exec_agent),
        (json!({"command": "true"}), &llm_agent),
    ] {
        let resp = api
            .post(
                "/api/v1/tasks",
                json!({"tasks": [{"swarm": swarm_id, "agent": agent, "spec": spec}]}),
            )
            .await;
        let problem = expect_problem(resp, 422, "validation").await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("cannot run"),
            "{problem}"
        );
    }
    let listed = api.get_json("/api/v1/tasks").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 0, "{listed}");

    // The prompt is submitted first and at a lower priority than the command: whatever the
    // order, each reaches the agent whose driver can run it.
    let tasks = api
        .submit(json!([
            {"swarm": swarm_id, "spec": {"prompt": "write a haiku"}, "priority": 1},
            {"swarm": swarm_id, "spec": {"command": "echo hi"}, "priority": 5},
        ]))
        .await;
    let (prompt_task, command_task) = (
        tasks[0]["id"].as_str().unwrap(),
        tasks[1]["id"].as_str().unwrap(),
    );
    let body = json!({"worker_id": "w-1", "name": "w-1", "slots": 2, "drivers": ["exec", "llm"]});
    expect_json(worker.post("/api/v1/workers", body).await, 201).await;
    // One poll may carry both assignments.
    let mut got: Vec<serde_json::Value> = Vec::new();
    while got.len() < 2 {
        let resp = worker
            .post(
                "/api/v1/workers/w-1/poll",
                json!({"free_slots": 2, "wait_ms": 2000}),
            )
            .await;
        let answer = expect_json(resp, 200).await;
        got.extend(answer["assignments"].as_array().unwrap().iter().cloned());
    }
    let (first, second) = (&got[0], &got[1]);
    for a in [first, second] {
        let (want_driver, want_agent) = if a["task_id"] == prompt_task {
            ("llm", &llm_agent)
        } else {
            assert_eq!(a["task_id"], command_task, "{a}");
            ("exec", &exec_agent)
        };
        assert_eq!(a["driver"], want_driver, "{a}");
        assert_eq!(a["attempt"], 1, "{a}");
        assert_eq!(a["agent_id"], want_agent.as_str(), "{a}");
    }
    assert_ne!(first["task_id"], second["task_id"]);
    server.shutdown().await;
}

/// Every tool call a model agent reports is in the audit ledger, as the agent, with its input
/// masked; a report about an attempt the worker does not hold is refused and not audited.
#[tokio::test]
async fn every_tool_call_of_a_model_agent_is_audited_as_the_agent() {
    const SECRET: &str = "s3cr3t-tool-audit-value-0123456789";
    let server = remote_only().await;
    let (tenant, admin) = server.tenant_with_key("acme", "admin").await;
    let worker_token = server.create_key(&tenant, "w", "worker").await;
    let api = Api::new(&server, &admin);
    let worker = Api::new(&server, &worker_token);
    let resp = server
        .client()
        .put(server.at("/api/v1/secrets/deploy-token"))
        .bearer_auth(&admin)
        .json(&json!({ "value": SECRET }))
        .send()
        .await
        .unwrap();
    expect_json(resp, 200).await;
    let swarm = api
        .create_swarm(json!({"name": "m", "topology": "mesh", "agents": [
            {"type": "coder", "driver": "llm", "min": 1}]}))
        .await;
    let tasks = api
        .submit(json!([{"swarm": swarm["id"], "spec": {"prompt": "edit a file"}}]))
        .await;
    let task = tasks[0]["id"].as_str().unwrap();
    let body = json!({"worker_id": "w-1", "name": "w-1", "slots": 1, "drivers": ["llm"]});
    expect_json(worker.post("/api/v1/workers", body).await, 201).await;
    let a = crate::workers_http::next_assignment(&worker, "w-1").await;
    let (epoch, agent) = (
        a["epoch"].as_i64().unwrap(),
        a["agent_id"].as_str().unwrap(),
    );
    let tool_use = |epoch: i64, name: &str| {
        json!({"type": "agent", "task_id": task, "epoch": epoch, "kind": "tool_use",
               "data": {"id": "toolu_1", "name": name,
                        "input": {"path": "deploy.sh", "content": format!("TOKEN={SECRET}")}}})
    };
    let acks = crate::workers_http::report(
        &worker,
        "w-1",
        json!([
            {"type": "started", "task_id": task, "epoch": epoch},
            tool_use(epoch, "write_file"),
            {"type": "agent", "task_id": task, "epoch": epoch, "kind": "assistant_text",
             "data": {"text": "done"}},
            tool_use(epoch - 1, "run_command"),
        ]),
    )
    .await;
    assert_eq!(acks[1]["status"], 200, "{acks:?}");
    assert_eq!(acks[3]["status"], 409, "a stale epoch: {acks:?}");

    let audit = api.get_json("/api/v1/audit?limit=1000").await;
    let calls: Vec<&serde_json::Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "agent.tool")
        .collect();
    assert_eq!(
        calls.len(),
        1,
        "one audited call (not the text, not the stale one): {audit:#}"
    );
    let e = calls[0];
    assert_eq!(e["principal_id"], format!("agent:{agent}"));
    assert_eq!(e["resource"], format!("task/{task}"));
    assert_eq!(e["outcome"], "success");
    assert_eq!(e["detail"]["tool"], "write_file");
    let input = e["detail"]["input"].as_str().unwrap();
    assert!(input.contains("deploy.sh"), "{input}");
    assert!(
        !audit.to_string().contains(SECRET),
        "the secret is masked: {input}"
    );
    server.shutdown().await;
}
