//! Model providers per tenant and budgets at the edges: `[server.llm]` parsing and checks, the
//! tenant's `/llm` settings (RBAC, raw keys refused, audited), `AppState::model_setup` (keys from
//! the tenant's secrets, peers from the topology, the system prompt of the agent's pool), the
//! usage a `claude-code` attempt reports when it finishes (recorded once), and model tasks
//! refused at submission and held at dispatch while a budget is spent.

use crate::common::{expect_json, expect_problem};
use crate::orchestration::Api;
use crate::workers_http::{next_assignment, report};
use cflow_server::ServerConfig;
use cflow_test_support::server::TestServer;
use serde_json::{Value, json};

/// An environment variable no test machine sets.
const UNSET_VAR: &str = "CFLOW_TEST_LLM_KEY_NEVER_SET_4F2A";

fn config_from(llm: Value) -> Result<ServerConfig, String> {
    serde_json::from_value(json!({ "llm": llm })).map_err(|e| e.to_string())
}

#[test]
fn server_llm_config_is_parsed_and_checked() {
    let c = config_from(json!({"providers": [
        {"name": "anthropic", "kind": "anthropic", "api_key_env": "ANTHROPIC_API_KEY"},
        {"name": "ollama", "kind": "openai", "base_url": "http://localhost:11434/v1",
         "model": "llama3.1"},
        {"name": "azure", "kind": "openai", "base_url": "https://x.openai.azure.com/openai",
         "model": "gpt-4o", "api_key_secret": "AZURE_KEY", "azure_api_version": "2024-10-21",
         "extra_headers": {"x-team": "web"}},
    ]}))
    .unwrap();
    let p = &c.llm.providers;
    assert_eq!(p.len(), 3);
    assert_eq!(p[0].effective_base_url(), "https://api.anthropic.com");
    assert_eq!(
        p[0].effective_model(),
        cflow_server::llmconfig::DEFAULT_ANTHROPIC_MODEL
    );
    // The default model has a price, so its calls are not recorded at $0.
    let prices = cflow_core::pricing::PriceTable::default();
    let usage = cflow_core::pricing::Usage {
        input_tokens: 1_000,
        ..Default::default()
    };
    assert!(
        prices
            .cost("anthropic", &p[0].effective_model(), &usage)
            .priced
    );
    assert_eq!(p[1].effective_base_url(), "http://localhost:11434/v1");
    assert_eq!(ServerConfig::default().llm.providers, vec![]);

    for (bad, needle) in [
        (
            json!({"providers": [{"name": "x", "kind": "gemini"}]}),
            "providers[0].kind",
        ),
        (
            json!({"providers": [{"name": "x", "kind": "openai"}]}),
            "providers[0].model: is required",
        ),
        (
            json!({"providers": [{"name": "x", "kind": "anthropic",
                "api_key_env": "A", "api_key_secret": "B"}]}),
            "not both",
        ),
        (
            json!({"providers": [{"name": "x", "kind": "anthropic"},
                {"name": "x", "kind": "anthropic"}]}),
            "providers[1].name",
        ),
        (
            json!({"providers": [{"name": "x", "kind": "anthropic", "base_url": "ftp://h"}]}),
            "providers[0].base_url",
        ),
        (
            json!({"providers": [{"name": "x", "kind": "anthropic", "api_key_env": "1BAD"}]}),
            "providers[0].api_key_env",
        ),
        (
            json!({"providers": [{"name": "x", "kind": "anthropic", "api_key": "sk"}]}),
            "unknown field `api_key`",
        ),
        (json!({"provider": []}), "unknown field `provider`"),
    ] {
        let e = config_from(bad.clone()).expect_err(&bad.to_string());
        assert!(e.contains(needle), "{bad}: {e}");
    }
}

async fn put_llm(server: &TestServer, token: &str, tenant: &str, body: Value) -> reqwest::Response {
    let path = format!("/api/v1/tenants/{tenant}/llm");
    crate::common::put_as(server, token, &path, &body).await
}

async fn get_llm(server: &TestServer, token: &str, tenant: &str) -> reqwest::Response {
    crate::common::get_as(server, token, &format!("/api/v1/tenants/{tenant}/llm")).await
}

fn with_operator_provider(c: &mut ServerConfig) {
    c.sched.local_slots = 0;
    c.llm = serde_json::from_value(json!({"providers": [
        {"name": "op", "kind": "anthropic", "api_key_env": UNSET_VAR}
    ]}))
    .unwrap();
}

#[tokio::test]
async fn tenant_providers_are_guarded_and_audited_on_sqlite() {
    tenant_providers(TestServer::start_with(with_operator_provider).await).await;
}

#[tokio::test]
async fn tenant_providers_are_guarded_and_audited_on_postgres() {
    let Some(server) = TestServer::start_postgres_with(with_operator_provider).await else {
        eprintln!("skipped: no PostgreSQL configured (set CFLOW_TEST_DATABASE_URL)");
        return;
    };
    tenant_providers(server).await;
}

async fn tenant_providers(server: TestServer) {
    let (acme, admin) = server.tenant_with_key("acme", "admin").await;
    let developer = server.create_key(&acme, "acme-dev", "developer").await;
    let (globex, globex_admin) = server.tenant_with_key("globex", "admin").await;
    let root = server.admin_token.clone();

    // Without a list of its own, the operator's providers apply.
    let doc = expect_json(get_llm(&server, &admin, &acme).await, 200).await;
    assert_eq!(doc["source"], "operator", "{doc}");
    assert_eq!(doc["providers"], Value::Null, "{doc}");
    assert_eq!(doc["effective"][0]["name"], "op", "{doc}");

    let good = json!({"providers": [
        {"name": "main", "kind": "anthropic", "api_key_secret": "ANTHROPIC_KEY"},
        {"name": "local", "kind": "openai", "base_url": "http://localhost:11434/v1",
         "model": "llama3.1"},
    ]});

    // Raw keys, in a field or a header, and the server's environment are refused; nothing
    // is stored.
    for (body, field) in [
        (
            json!({"providers": [{"name": "m", "kind": "anthropic", "api_key": "sk-ant-raw"}]}),
            "providers[0].api_key",
        ),
        (
            json!({"providers": [{"name": "m", "kind": "openai", "model": "gpt-4o",
                "extra_headers": {"Authorization": "Bearer sk-raw"}}]}),
            "providers[0].extra_headers.Authorization",
        ),
    ] {
        let problem = expect_problem(
            put_llm(&server, &admin, &acme, body).await,
            422,
            "validation",
        )
        .await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail
                .contains("store it with cflow secret set NAME and reference it as api_key_secret"),
            "{problem}"
        );
        assert!(
            detail.contains(field) || problem.to_string().contains(field),
            "{problem}"
        );
        assert!(
            !problem.to_string().contains("sk-"),
            "the key is echoed: {problem}"
        );
    }
    let body = json!({"providers": [{"name": "m", "kind": "anthropic", "api_key_env": "HOME"}]});
    let problem = expect_problem(
        put_llm(&server, &admin, &acme, body).await,
        422,
        "validation",
    )
    .await;
    assert!(problem.to_string().contains("api_key_env"), "{problem}");
    let body = json!({"providers": [{"name": "m", "kind": "openai"}]});
    expect_problem(
        put_llm(&server, &admin, &acme, body).await,
        422,
        "validation",
    )
    .await;
    let doc = expect_json(get_llm(&server, &admin, &acme).await, 200).await;
    assert_eq!(doc["source"], "operator", "{doc}");

    // Only admins: a developer may neither set nor read them.
    expect_problem(
        put_llm(&server, &developer, &acme, good.clone()).await,
        403,
        "forbidden",
    )
    .await;
    expect_problem(get_llm(&server, &developer, &acme).await, 403, "forbidden").await;
    // Another tenant's admin cannot see or set this tenant's.
    expect_problem(
        put_llm(&server, &globex_admin, &acme, good.clone()).await,
        404,
        "not-found",
    )
    .await;
    expect_problem(
        get_llm(&server, &globex_admin, &acme).await,
        404,
        "not-found",
    )
    .await;
    let doc = expect_json(get_llm(&server, &admin, &acme).await, 200).await;
    assert_eq!(doc["source"], "operator", "{doc}");

    // The tenant's admin sets its own (by name, too).
    let doc = expect_json(put_llm(&server, &admin, "acme", good.clone()).await, 200).await;
    assert_eq!(doc["source"], "tenant", "{doc}");
    assert_eq!(doc["providers"], good["providers"], "{doc}");
    let doc = expect_json(get_llm(&server, &admin, &acme).await, 200).await;
    assert_eq!(doc["providers"], good["providers"], "{doc}");
    assert_eq!(doc["effective"], good["providers"], "{doc}");
    // The superadmin sets any tenant's; globex's is its own.
    let other = json!([{"name": "g", "kind": "anthropic", "api_key_secret": "G"}]);
    let doc = expect_json(put_llm(&server, &root, &globex, other.clone()).await, 200).await;
    assert_eq!(doc["providers"], other, "{doc}");
    let doc = expect_json(get_llm(&server, &admin, &acme).await, 200).await;
    assert_eq!(doc["providers"], good["providers"], "{doc}");

    // Audited, with the names of secrets and never a value.
    let audit = expect_json(
        server
            .client()
            .get(server.at("/api/v1/audit?limit=1000"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let sets: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "tenant.llm")
        .collect();
    assert_eq!(sets.len(), 1, "{audit}");
    assert!(sets[0].to_string().contains("ANTHROPIC_KEY"), "{}", sets[0]);
    let refused = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "tenant.llm.set" && e["outcome"] != "success")
        .count();
    assert!(refused >= 1, "refusals are audited: {audit}");
    assert!(!audit.to_string().contains("sk-ant-raw"), "{audit}");

    // An empty list returns the tenant to the operator's providers.
    let doc = expect_json(
        put_llm(&server, &admin, &acme, json!({"providers": []})).await,
        200,
    )
    .await;
    assert_eq!(doc["source"], "operator", "{doc}");
    assert_eq!(server.store.tenant_llm(&acme).await.unwrap(), None);
}

#[tokio::test]
async fn model_setup_resolves_keys_and_peers_on_sqlite() {
    model_setup(TestServer::start_with(with_operator_provider).await).await;
}

#[tokio::test]
async fn model_setup_resolves_keys_and_peers_on_postgres() {
    let Some(server) = TestServer::start_postgres_with(with_operator_provider).await else {
        eprintln!("skipped: no PostgreSQL configured (set CFLOW_TEST_DATABASE_URL)");
        return;
    };
    model_setup(server).await;
}

async fn model_setup(server: TestServer) {
    let (acme, admin) = server.tenant_with_key("acme", "admin").await;
    let (globex, _) = server.tenant_with_key("globex", "admin").await;
    let api = Api::new(&server, &admin);
    let swarm = api
        .create_swarm(json!({"name": "team", "topology": "star", "agents": [
            {"type": "coordinator", "driver": "llm", "min": 1},
            {"type": "coder", "driver": "llm", "min": 2},
        ]}))
        .await;
    let swarm_id = swarm["id"].as_str().unwrap().to_string();
    let agents = api
        .get_json(&format!("/api/v1/agents?swarm={swarm_id}"))
        .await;
    let of_type = |t: &str| -> Vec<String> {
        agents["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["type"] == t)
            .map(|a| a["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (hub, coders) = (of_type("coordinator").remove(0), of_type("coder"));
    assert_eq!(coders.len(), 2, "{agents}");
    let task = api
        .submit(json!([{"swarm": swarm_id, "spec": {"prompt": "plan the work"}}]))
        .await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let state = server.state();

    // The operator's provider reads a variable the server does not have: the error names it.
    let e = state
        .model_setup(&acme, &coders[0], &task)
        .await
        .unwrap_err();
    assert_eq!(e.0.status, 422);
    assert!(e.0.detail.contains(UNSET_VAR), "{}", e.0.detail);

    // The tenant's providers: the key comes from its secret, which is missing at first.
    let body = json!({"providers": [
        {"name": "main", "kind": "anthropic", "api_key_secret": "ANTHROPIC_KEY",
         "extra_headers": {"anthropic-beta": "b1"}},
        {"name": "local", "kind": "openai", "base_url": "http://localhost:11434/v1/",
         "model": "llama3.1"},
    ]});
    expect_json(put_llm(&server, &admin, &acme, body).await, 200).await;
    let e = state
        .model_setup(&acme, &coders[0], &task)
        .await
        .unwrap_err();
    assert_eq!(e.0.status, 422);
    assert!(
        e.0.detail.contains("'ANTHROPIC_KEY'")
            && e.0.detail.contains("cflow secret set ANTHROPIC_KEY"),
        "{}",
        e.0.detail
    );
    let resp = server
        .client()
        .put(server.at("/api/v1/secrets/ANTHROPIC_KEY"))
        .bearer_auth(&admin)
        .json(&json!({"value": "sk-ant-test-5150"}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());

    let setup = state.model_setup(&acme, &coders[0], &task).await.unwrap();
    assert_eq!(setup.providers.len(), 2, "{setup:?}");
    let main = &setup.providers[0];
    assert_eq!(
        (
            main.name.as_str(),
            main.kind.as_str(),
            main.base_url.as_str()
        ),
        ("main", "anthropic", "https://api.anthropic.com")
    );
    assert_eq!(main.model, cflow_server::llmconfig::DEFAULT_ANTHROPIC_MODEL);
    assert_eq!(main.api_key.as_deref(), Some("sk-ant-test-5150"));
    assert_eq!(
        main.extra_headers,
        vec![("anthropic-beta".to_string(), "b1".to_string())]
    );
    assert!(!format!("{setup:?}").contains("sk-ant-test-5150"));
    let local = &setup.providers[1];
    assert_eq!(local.base_url, "http://localhost:11434/v1");
    assert_eq!(
        (local.model.as_str(), local.api_key.as_deref()),
        ("llama3.1", None)
    );
    assert_eq!(setup.agent_type, "coder");
    assert_eq!(setup.swarm_id.as_deref(), Some(swarm_id.as_str()));
    assert_eq!(setup.system_prompt, None);
    // A star: a coder reaches the hub only; the hub reaches every coder.
    let peer_ids = |s: &cflow_agents::model::ModelSetup| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = s
            .peers
            .iter()
            .map(|p| (p.agent_id.clone(), p.agent_type.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        peer_ids(&setup),
        vec![(hub.clone(), "coordinator".to_string())]
    );
    let hub_setup = state.model_setup(&acme, &hub, &task).await.unwrap();
    let mut want: Vec<(String, String)> = coders
        .iter()
        .map(|c| (c.clone(), "coder".to_string()))
        .collect();
    want.sort();
    assert_eq!(peer_ids(&hub_setup), want);
    assert_eq!(hub_setup.agent_type, "coordinator");

    // Another tenant cannot get this tenant's setup (nor its keys).
    let e = state
        .model_setup(&globex, &coders[0], &task)
        .await
        .unwrap_err();
    assert_eq!(e.0.status, 404);
}

#[tokio::test]
async fn pool_system_prompts_reach_the_model_setup_on_sqlite() {
    pool_system_prompts(TestServer::start_with(|c| c.sched.local_slots = 0).await).await;
}

#[tokio::test]
async fn pool_system_prompts_reach_the_model_setup_on_postgres() {
    let Some(server) = TestServer::start_postgres_with(|c| c.sched.local_slots = 0).await else {
        eprintln!("skipped: no PostgreSQL configured (set CFLOW_TEST_DATABASE_URL)");
        return;
    };
    pool_system_prompts(server).await;
}

async fn pool_system_prompts(server: TestServer) {
    let (acme, admin) = server.tenant_with_key("acme", "admin").await;
    let api = Api::new(&server, &admin);
    // A provider without a key, so that the setup resolves.
    let local = json!({"providers": [{"name": "local", "kind": "openai",
        "base_url": "http://localhost:11434/v1", "model": "llama3.1"}]});
    expect_json(put_llm(&server, &admin, &acme, local).await, 200).await;
    let plan = "You only plan: hand every change to a coder.";
    let swarm = api
        .create_swarm(json!({"name": "team", "topology": "mesh", "agents": [
            {"type": "coordinator", "driver": "llm", "min": 1, "system_prompt": plan},
            {"type": "coder", "driver": "llm", "min": 1},
            {"type": "tester", "driver": "exec", "min": 0},
        ]}))
        .await;
    let swarm_id = swarm["id"].as_str().unwrap().to_string();
    // Shown in the swarm's JSON, null where none is set.
    assert_eq!(swarm["pools"][0]["system_prompt"], plan, "{swarm}");
    assert_eq!(swarm["pools"][1]["system_prompt"], Value::Null, "{swarm}");
    let read = api.get_json(&format!("/api/v1/swarms/{swarm_id}")).await;
    assert_eq!(read["pools"], swarm["pools"], "{read}");

    let agents = api
        .get_json(&format!("/api/v1/agents?swarm={swarm_id}"))
        .await;
    let of_type = |t: &str| -> String {
        agents["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["type"] == t)
            .map(|a| a["id"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no {t} agent: {agents}"))
    };
    let (hub, coder) = (of_type("coordinator"), of_type("coder"));
    let task = api
        .submit(json!([{"swarm": swarm_id, "spec": {"prompt": "plan the work"}}]))
        .await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let state = server.state();
    let setup = state.model_setup(&acme, &hub, &task).await.unwrap();
    assert_eq!(setup.system_prompt.as_deref(), Some(plan));
    assert_eq!(setup.agent_type, "coordinator");
    // The coder's pool sets none: the type's default prompt applies.
    let setup = state.model_setup(&acme, &coder, &task).await.unwrap();
    assert_eq!(setup.system_prompt, None);

    // Scaling sets one, keeps one when the field is absent, and removes one with null.
    let tests_first = "You write the failing test first.";
    let scale_path = format!("/api/v1/swarms/{swarm_id}/scale");
    let scale = |body: Value| api.post(&scale_path, body);
    expect_json(
        scale(json!({"type": "coder", "system_prompt": tests_first})).await,
        200,
    )
    .await;
    let setup = state.model_setup(&acme, &coder, &task).await.unwrap();
    assert_eq!(setup.system_prompt.as_deref(), Some(tests_first));
    let doc = expect_json(scale(json!({"type": "coder", "max": 3})).await, 200).await;
    assert_eq!(doc["pools"][1]["system_prompt"], tests_first, "{doc}");
    let doc = expect_json(
        scale(json!({"type": "coordinator", "system_prompt": null})).await,
        200,
    )
    .await;
    assert_eq!(doc["pools"][0]["system_prompt"], Value::Null, "{doc}");
    let setup = state.model_setup(&acme, &hub, &task).await.unwrap();
    assert_eq!(setup.system_prompt, None);

    // Refused with the field and the reason; nothing is created or changed.
    let before = api.get_json("/api/v1/swarms").await["items"]
        .as_array()
        .unwrap()
        .len();
    let too_long = "x".repeat(cflow_agents::model::MAX_SYSTEM_PROMPT_BYTES + 1);
    for (pool, why) in [
        (
            json!({"type": "coder", "driver": "exec", "system_prompt": "Be brief."}),
            "only for pools of the llm driver (this pool's driver is 'exec')",
        ),
        (
            json!({"type": "coder", "driver": "claude-code", "system_prompt": "Be brief."}),
            "this pool's driver is 'claude-code'",
        ),
        (
            json!({"type": "coder", "driver": "llm", "system_prompt": too_long}),
            "over the limit of 32768",
        ),
        (
            json!({"type": "coder", "driver": "llm", "system_prompt": " \n "}),
            "must not be empty",
        ),
    ] {
        let body = json!({"name": "refused", "topology": "mesh",
            "agents": [{"type": "tester", "driver": "exec"}, pool]});
        let problem =
            expect_problem(api.post("/api/v1/swarms", body).await, 422, "validation").await;
        assert_eq!(problem["field"], "agents[1].system_prompt", "{problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(why), "{why}: {problem}");
        assert!(detail.len() < 1024, "the prompt is not echoed: {problem}");
    }
    let after = api.get_json("/api/v1/swarms").await["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(after, before);
    // Scaling: a prompt on the exec pool, or an exec driver under the coder's prompt.
    for body in [
        json!({"type": "tester", "system_prompt": "Be brief."}),
        json!({"type": "coder", "driver": "exec"}),
    ] {
        let problem = expect_problem(scale(body.clone()).await, 422, "validation").await;
        assert_eq!(problem["field"], "system_prompt", "{body}: {problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("only for pools of the llm driver"),
            "{problem}"
        );
    }
    let read = api.get_json(&format!("/api/v1/swarms/{swarm_id}")).await;
    assert_eq!(read["pools"][1]["driver"], "llm", "{read}");
    assert_eq!(read["pools"][1]["system_prompt"], tests_first, "{read}");
    assert_eq!(read["pools"][2]["system_prompt"], Value::Null, "{read}");
}

fn claude_swarm(project: &str) -> Value {
    json!({"name": "claude", "topology": "mesh", "project": project, "agents": [
        {"type": "coder", "driver": "claude-code", "min": 1},
    ]})
}

/// A `Finished` report of a claude-code attempt that used two models.
fn finished_with_usage(task: &str, epoch: i64) -> Value {
    json!({"type": "finished", "task_id": task, "epoch": epoch, "outcome": {
    "status": "succeeded", "exit_code": 0, "stdout": "done", "wall_ms": 3,
    "isolation": "none: test worker", "detail": {"model_usage": [
        {"provider": "anthropic", "model": "claude-sonnet-4-5", "input_tokens": 100000,
         "output_tokens": 10000, "cache_read_tokens": 2000, "cache_write_tokens": 0,
         "reported_cost_usd": 0.45},
        {"provider": "anthropic", "model": "claude-haiku-4-5", "input_tokens": 1000,
         "output_tokens": 100, "cache_read_tokens": 0, "cache_write_tokens": 0,
         "reported_cost_usd": null},
    ]}}})
}

#[tokio::test]
async fn claude_code_usage_is_recorded_once_on_sqlite() {
    claude_usage(TestServer::start_with(|c| c.sched.local_slots = 0).await).await;
}

#[tokio::test]
async fn claude_code_usage_is_recorded_once_on_postgres() {
    let Some(server) = TestServer::start_postgres_with(|c| c.sched.local_slots = 0).await else {
        eprintln!("skipped: no PostgreSQL configured (set CFLOW_TEST_DATABASE_URL)");
        return;
    };
    claude_usage(server).await;
}

async fn claude_usage(server: TestServer) {
    let (tenant, admin) = server.tenant_with_key("acme", "admin").await;
    let worker_token = server.create_key(&tenant, "acme-worker", "worker").await;
    let api = Api::new(&server, &admin);
    let worker = Api::new(&server, &worker_token);
    let swarm = api.create_swarm(claude_swarm("web")).await;
    let swarm_id = swarm["id"].as_str().unwrap().to_string();
    // $0.40 a month: the first attempt's usage ($0.45 and more) spends it.
    put_budget(&api, json!({"period": "month", "limit_usd": 0.4})).await;
    let submitted = api
        .submit(json!([
            {"swarm": swarm_id, "spec": {"prompt": "fix the bug"}},
            {"swarm": swarm_id, "spec": {"prompt": "fix the next bug"}},
        ]))
        .await;
    let ids: Vec<String> = submitted
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    let body = json!({"worker_id": "w-claude", "name": "w-claude", "slots": 2,
                      "drivers": ["claude-code"]});
    expect_json(worker.post("/api/v1/workers", body).await, 201).await;
    // One agent: one task at a time.
    let a = next_assignment(&worker, "w-claude").await;
    let task = a["task_id"].as_str().unwrap().to_string();
    let next = ids.iter().find(|id| **id != task).unwrap().clone();
    let epoch = a["epoch"].as_i64().unwrap();
    let agent = a["agent_id"].as_str().unwrap().to_string();

    let report_once = finished_with_usage(&task, epoch);
    let acks = report(&worker, "w-claude", json!([report_once.clone()])).await;
    assert_eq!(acks[0]["status"], 200, "{acks:?}");
    // Re-delivered (the worker did not get the ack): refused, and not counted again.
    let acks = report(&worker, "w-claude", json!([report_once])).await;
    assert_eq!(acks[0]["status"], 409, "{acks:?}");

    // The agent is free, but the usage spent the budget: the next prompt waits, from the
    // moment the report was accepted.
    for _ in 0..3 {
        let resp = worker
            .post(
                "/api/v1/workers/w-claude/poll",
                json!({"free_slots": 2, "wait_ms": 300}),
            )
            .await;
        let answer = expect_json(resp, 200).await;
        assert_eq!(answer["assignments"], json!([]), "{answer}");
    }
    assert_eq!(api.task(&next).await["state"], "queued");

    let body = api.get_json(&format!("/api/v1/tasks/{task}")).await;
    assert_eq!(body["state"], "succeeded", "{body}");
    assert_eq!(body["cost"]["calls"], 2, "{body}");
    assert_eq!(body["cost"]["input_tokens"], 101_000, "{body}");
    assert_eq!(body["cost"]["output_tokens"], 10_100, "{body}");
    // Priced by cflow's table ($0.4506 for the Sonnet part), not by the reported figure.
    let usd = body["cost"]["cost_usd"].as_f64().unwrap();
    assert!(usd > 0.4506 && usd < 0.46, "{body}");
    // Recorded with the task's whole scope.
    for (by, key) in [
        ("project", "web"),
        ("swarm", swarm_id.as_str()),
        ("agent", agent.as_str()),
        ("task", task.as_str()),
    ] {
        let report = api.get_json(&format!("/api/v1/cost?by={by}")).await;
        let rows = report["items"].as_array().unwrap();
        assert_eq!(rows.len(), 1, "by {by}: {report}");
        assert_eq!(rows[0]["key"], key, "by {by}: {report}");
        assert_eq!(rows[0]["calls"], 2, "by {by}: {report}");
    }
}

async fn put_budget(api: &Api<'_>, body: Value) {
    let resp = api
        .server
        .client()
        .put(api.server.at("/api/v1/budgets"))
        .bearer_auth(&api.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    expect_json(resp, 200).await;
}

#[tokio::test]
async fn spent_budgets_refuse_and_hold_model_tasks_on_sqlite() {
    budgets(TestServer::start_with(|c| c.sched.local_slots = 0).await).await;
}

#[tokio::test]
async fn spent_budgets_refuse_and_hold_model_tasks_on_postgres() {
    let Some(server) = TestServer::start_postgres_with(|c| c.sched.local_slots = 0).await else {
        eprintln!("skipped: no PostgreSQL configured (set CFLOW_TEST_DATABASE_URL)");
        return;
    };
    budgets(server).await;
}

async fn budgets(server: TestServer) {
    let (tenant, admin) = server.tenant_with_key("acme", "admin").await;
    let worker_token = server.create_key(&tenant, "acme-worker", "worker").await;
    let api = Api::new(&server, &admin);
    let worker = Api::new(&server, &worker_token);
    let swarm = api
        .create_swarm(
            json!({"name": "mixed", "topology": "mesh", "project": "web", "agents": [
                {"type": "coder", "driver": "exec", "min": 1},
                {"type": "reviewer", "driver": "llm", "min": 1},
            ]}),
        )
        .await;
    let swarm_id = swarm["id"].as_str().unwrap().to_string();
    let prompt = json!({"swarm": swarm_id, "spec": {"prompt": "review"}});
    let command = json!({"swarm": swarm_id, "spec": {"command": "true"}});

    // A model task is accepted under budget; then the tenant's budget is spent ($0 refuses
    // every model call).
    let held = api.submit(json!([prompt.clone()])).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    put_budget(&api, json!({"period": "month", "limit_usd": 0})).await;

    // Refused with the budget's story, alone, in a batch with a command, or in a DAG; nothing
    // of a refused submission is stored.
    let before = api.task_count().await;
    for tasks in [
        json!([prompt.clone()]),
        json!([command.clone(), prompt.clone()]),
        json!([
            {"local_id": "build", "swarm": swarm_id, "spec": {"command": "true"}},
            {"swarm": swarm_id, "spec": {"prompt": "review the build"}, "depends_on": ["build"]},
        ]),
    ] {
        let resp = api.post("/api/v1/tasks", json!({ "tasks": tasks })).await;
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        let problem = expect_problem(resp, 429, "rate-limited").await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains("is spent") && detail.contains("PUT /api/v1/budgets"),
            "{problem}"
        );
        assert!(retry_after.is_some_and(|s| s > 0), "{problem}");
    }
    assert_eq!(api.task_count().await, before);
    // Commands do not spend model budget: accepted.
    let cmd = api.submit(json!([command.clone()])).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // A worker for both drivers: the command runs, the model task accepted before the budget
    // was spent waits in the queue.
    let body = json!({"worker_id": "w-1", "name": "w-1", "slots": 4, "drivers": ["exec", "llm"]});
    expect_json(worker.post("/api/v1/workers", body).await, 201).await;
    let a = next_assignment(&worker, "w-1").await;
    assert_eq!(a["task_id"], cmd.as_str(), "{a}");
    for _ in 0..3 {
        let resp = worker
            .post(
                "/api/v1/workers/w-1/poll",
                json!({"free_slots": 3, "wait_ms": 400}),
            )
            .await;
        let answer = expect_json(resp, 200).await;
        assert_eq!(answer["assignments"], json!([]), "{answer}");
    }
    assert_eq!(api.task(&held).await["state"], "queued");

    // Raised: the held task is assigned within the refresh interval.
    put_budget(&api, json!({"period": "month", "limit_usd": 100})).await;
    let a = next_assignment(&worker, "w-1").await;
    assert_eq!(a["task_id"], held.as_str(), "{a}");
    assert!(api.submit(json!([prompt.clone()])).await[0]["id"].is_string());

    // A project's budget: spent for "web" refuses model tasks of its swarms only.
    put_budget(
        &api,
        json!({"project": "web", "period": "day", "limit_usd": 0}),
    )
    .await;
    let resp = api
        .post("/api/v1/tasks", json!({ "tasks": [prompt.clone()] }))
        .await;
    let problem = expect_problem(resp, 429, "rate-limited").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("web"),
        "{problem}"
    );
    let free = json!([{"spec": {"prompt": "no project"}, "labels": {"never": "matches"}}]);
    assert!(api.submit(free).await[0]["id"].is_string());
}
