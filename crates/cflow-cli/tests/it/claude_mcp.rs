//! `claude-code` agents get cflow's agent tools over MCP, end to end: `cflow up` runs a prompt
//! task of a star swarm's coder with the real Claude Code CLI in the sandbox, its model is a
//! `MockLlm` (the tenant's Anthropic provider) scripted to call `mcp__cflow__memory_put` and then
//! `mcp__cflow__send_message` to another spoke. The CLI reaches the driver's MCP server through
//! `cflow mcp-bridge`; the write lands in the server's store as the agent's (audited), the
//! message is refused by the topology (audited) and the model sees the refusal as a tool error.

use crate::harness::{Server, run};
use crate::orchestration::poll;
use cflow_test_support::llm_mock::{MockLlm, Turn};
use serde_json::{Value, json};
use std::time::Duration;

const MODEL: &str = "claude-sonnet-4-5";
const KEY: &str = "sk-ant-mcp-0123456789abcdef";

struct Http<'a> {
    server: &'a Server,
    token: String,
    client: reqwest::Client,
    rt: &'a tokio::runtime::Runtime,
}

impl Http<'_> {
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.server.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.rt.block_on(async {
            let resp = req.send().await.expect("request");
            let status = resp.status().as_u16();
            let text = resp.text().await.expect("body");
            (status, serde_json::from_str(&text).unwrap_or(json!(text)))
        })
    }

    fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }
}

fn claude_bin() -> Option<&'static str> {
    ["/usr/bin/claude", "/usr/local/bin/claude"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

#[test]
fn claude_code_agents_use_cflow_tools_over_mcp_as_themselves() {
    let Some(bin) = claude_bin() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "the Claude Code CLI is not installed (scripts/setup.sh installs it with npm)"
        );
        eprintln!("skipped: the Claude Code CLI is not installed");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mock = rt.block_on(MockLlm::start());
    mock.require_api_key(KEY);
    let server = Server::launch(
        tempfile::tempdir().unwrap(),
        "up",
        &[("CFLOW_CLAUDE_BIN", bin)],
    );
    let http = Http {
        server: &server,
        token: server.admin_token(),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        rt: &rt,
    };
    run(server
        .cflow()
        .args(["secret", "set", "ANTHROPIC_KEY", "--value", KEY]))
    .ok();
    run(server.cflow().args([
        "tenant",
        "llm",
        "set",
        "--provider",
        &format!(
            "name=mock,kind=anthropic,base_url={},model={MODEL},key_secret=ANTHROPIC_KEY",
            mock.url()
        ),
    ]))
    .ok();
    // A star: the coordinator is the hub, the coders are spokes that may not talk to each other.
    let (status, swarm) = http.call(
        reqwest::Method::POST,
        "/api/v1/swarms",
        Some(json!({"name": "cc-mcp", "topology": "star", "agents": [
            {"type": "coordinator", "driver": "claude-code", "min": 1},
            {"type": "coder", "driver": "claude-code", "min": 2},
        ]})),
    );
    assert_eq!(status, 201, "{swarm}");
    let swarm_id = swarm["id"].as_str().unwrap().to_string();
    let agents = http.get(&format!("/api/v1/agents?swarm={swarm_id}"));
    let coders: Vec<String> = agents["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["type"] == "coder")
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    let (me, spoke) = (&coders[0], &coders[1]);

    mock.push(Turn::tool_use(
        "mcp__cflow__memory_put",
        json!({"key": "plan-api", "value": {"step": 1, "note": "ship the API first"}}),
    ));
    mock.push(Turn::tool_use(
        "mcp__cflow__send_message",
        json!({"to_agent_id": spoke, "body": "the plan is in memory"}),
    ));
    mock.push(Turn::text("Stored the plan."));
    let (status, submitted) = http.call(
        reqwest::Method::POST,
        "/api/v1/tasks",
        Some(json!({"tasks": [{"swarm": swarm_id, "agent": me,
                               "spec": {"prompt": "Record the plan and tell the other coder."}}]})),
    );
    assert_eq!(status, 202, "{submitted}");
    let task_id = submitted["tasks"][0]["id"].as_str().unwrap().to_string();
    let task = poll(180, "the claude-code task to end", || {
        let t = http.get(&format!("/api/v1/tasks/{task_id}"));
        ["succeeded", "failed", "cancelled", "timed_out"]
            .contains(&t["state"].as_str().unwrap_or(""))
            .then_some(t)
    });
    assert_eq!(
        task["state"],
        "succeeded",
        "{task:#}\nserver output:\n{}",
        server.output()
    );
    assert_eq!(task["result"]["result"], "Stored the plan.", "{task:#}");

    // The model saw the write's answer, then the topology's refusal as a tool error.
    let reqs = mock.requests();
    let messages: Vec<&Value> = reqs
        .iter()
        .filter(|r| r.path.starts_with("/v1/messages") && !r.path.contains("count_tokens"))
        .map(|r| &r.body)
        .collect();
    assert_eq!(messages.len(), 3, "{messages:#?}");
    let last_result = |body: &Value| -> Value {
        body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_array())
            .and_then(|c| c.iter().find(|b| b["type"] == "tool_result"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let put = last_result(messages[1]);
    assert_ne!(put["is_error"], true, "{put:#}");
    let refused = last_result(messages[2]);
    assert_eq!(refused["is_error"], true, "{refused:#}");
    assert!(
        refused["content"].to_string().contains("star"),
        "{refused:#}"
    );

    // The entry is in the store, in the swarm's namespace, written as the agent.
    let namespace = format!("swarm/{swarm_id}");
    let entry = http.get(&format!(
        "/api/v1/memory/{}/plan-api",
        namespace.replace('/', "%2F")
    ));
    assert_eq!(
        entry["value"],
        json!({"step": 1, "note": "ship the API first"}),
        "{entry:#}"
    );
    let audit = http.get("/api/v1/audit?limit=1000");
    let entries = audit["items"].as_array().expect("audit items");
    let principal = format!("agent:{me}");
    let by_agent = |action: &str, outcome: &str| {
        entries
            .iter()
            .filter(|e| {
                e["action"] == action
                    && e["outcome"] == outcome
                    && e["principal_id"] == principal.as_str()
            })
            .collect::<Vec<_>>()
    };
    let writes = by_agent("memory.write", "success");
    assert_eq!(writes.len(), 1, "{entries:#?}");
    assert_eq!(
        writes[0]["resource"],
        format!("memory/{namespace}/plan-api"),
        "{:#}",
        writes[0]
    );
    assert_eq!(
        by_agent("message.send", "forbidden").len(),
        1,
        "{entries:#?}"
    );
    let tools: Vec<&Value> = by_agent("agent.tool", "success")
        .into_iter()
        .map(|e| &e["detail"]["tool"])
        .collect();
    assert_eq!(
        tools,
        [
            &json!("mcp__cflow__memory_put"),
            &json!("mcp__cflow__send_message")
        ],
        "{entries:#?}"
    );
    // Nothing reached the other spoke.
    let inbox = http.get(&format!("/api/v1/agents/{spoke}/messages"));
    assert_eq!(inbox["items"], json!([]), "{inbox}");
    server.stop();
}
