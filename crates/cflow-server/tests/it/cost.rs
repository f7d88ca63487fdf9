//! Cost accounting and budgets: the drivers' hooks (`record_usage`, `check_budget`) called
//! in-process, and what they leave in the API (`/cost`, `/budgets`, a task's `cost`) and in
//! `/metrics`.

use crate::common::{expect_json, expect_problem};
use cflow_core::budget::Period;
use cflow_core::pricing::Usage;
use cflow_server::config::{ModelPriceConfig, UsdPerMtok};
use cflow_server::cost::UsageScope;
use cflow_test_support::server::TestServer;
use serde_json::{Value, json};

async fn get(server: &TestServer, token: &str, path: &str) -> reqwest::Response {
    server
        .client()
        .get(server.at(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn put_budget(server: &TestServer, token: &str, body: Value) -> reqwest::Response {
    server
        .client()
        .put(server.at("/api/v1/budgets"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// A task that never runs (pinned to a label nothing has), to hang model calls on.
async fn idle_task(server: &TestServer, token: &str) -> String {
    let resp = server
        .client()
        .post(server.at("/api/v1/tasks"))
        .bearer_auth(token)
        .json(&json!({"tasks": [{"spec": {"command": "true"}, "labels": {"never": "matches"}}]}))
        .send()
        .await
        .unwrap();
    let body = expect_json(resp, 202).await;
    body["tasks"][0]["id"].as_str().unwrap().to_string()
}

/// 100,000 input and 10,000 output tokens: $0.45 on Claude Sonnet 4.
const SONNET_CALL: Usage = Usage {
    input_tokens: 100_000,
    output_tokens: 10_000,
    cache_read_tokens: 2_000,
    cache_write_tokens: 0,
};
/// $0.30 + $0.15 + $0.0006 of cache reads.
const SONNET_CALL_MICROS: u64 = 450_600;

#[tokio::test]
async fn usage_is_recorded_and_a_spent_budget_refuses_on_sqlite() {
    spend_until_refused(TestServer::start_sqlite().await).await;
}

#[tokio::test]
async fn usage_is_recorded_and_a_spent_budget_refuses_on_postgres() {
    let Some(server) = TestServer::start_postgres().await else {
        eprintln!("skipped: no PostgreSQL configured (set CFLOW_TEST_DATABASE_URL)");
        return;
    };
    spend_until_refused(server).await;
}

async fn spend_until_refused(server: TestServer) {
    let (tenant, admin) = server.tenant_with_key("acme", "admin").await;
    let tenant_name = server
        .store
        .get_tenant(&tenant)
        .await
        .unwrap()
        .unwrap()
        .name;
    let state = server.state();
    let task = idle_task(&server, &admin).await;
    let scope = UsageScope {
        tenant_id: tenant.clone(),
        project: Some("web".to_string()),
        swarm_id: None,
        agent_id: Some("agent-7".to_string()),
        task_id: Some(task.clone()),
    };

    // A task without model calls has no cost.
    let other_task = idle_task(&server, &admin).await;
    let body = expect_json(
        get(&server, &admin, &format!("/api/v1/tasks/{other_task}")).await,
        200,
    )
    .await;
    assert_eq!(body["cost"], Value::Null, "{body}");

    let budget = expect_json(
        put_budget(
            &server,
            &admin,
            json!({"period": "month", "limit_usd": 1.0}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(budget["limit_micros"], 1_000_000, "{budget}");
    assert_eq!(budget["spent_micros"], 0, "{budget}");

    // Spend until the check refuses: $0.45 a call against $1.00 takes three calls.
    let mut calls = 0;
    let refusal = loop {
        if let Err(e) = state.check_budget(&tenant, Some("web")).await {
            break e;
        }
        let cost = state
            .record_usage(
                &scope,
                "anthropic",
                "claude-sonnet-4-20250514",
                &SONNET_CALL,
            )
            .await
            .unwrap();
        assert!(cost.priced);
        assert_eq!(cost.micros, SONNET_CALL_MICROS);
        calls += 1;
        assert!(calls <= 3, "the budget never refused");
    };
    assert_eq!(calls, 3);
    let (_, resets_at) = Period::Month.bounds(crate::common::now_ms());
    let resets = cflow_core::timefmt::rfc3339(resets_at);
    assert!(resets.ends_with("-01T00:00:00Z"), "{resets}");
    assert_eq!(refusal.0.status, 429);
    assert_eq!(
        refusal.0.detail,
        format!(
            "budget 'tenant {tenant_name}, month' is spent: $1.35 of $1.00; it resets at \
             {resets} — raise it with PUT /api/v1/budgets"
        )
    );
    assert!(refusal.0.retry_after_secs.is_some_and(|s| s > 0));
    // Raising the budget lets calls through again.
    expect_json(
        put_budget(&server, &admin, json!({"period": "month", "limit_usd": 2})).await,
        200,
    )
    .await;
    state.check_budget(&tenant, Some("web")).await.unwrap();

    // An unpriced model and a local one.
    let small = Usage {
        input_tokens: 10,
        output_tokens: 5,
        ..Usage::default()
    };
    let unpriced = state
        .record_usage(&scope, "acme-ai", "mystery-9", &small)
        .await
        .unwrap();
    assert_eq!((unpriced.priced, unpriced.micros), (false, 0));
    let local = state
        .record_usage(&scope, "ollama", "llama3.1:8b", &small)
        .await
        .unwrap();
    assert_eq!((local.priced, local.micros), (true, 0));

    // The task's record sums its calls.
    let body = expect_json(
        get(&server, &admin, &format!("/api/v1/tasks/{task}")).await,
        200,
    )
    .await;
    assert_eq!(
        body["cost"],
        json!({
            "calls": 5,
            "input_tokens": 300_020,
            "output_tokens": 30_010,
            "cache_read_tokens": 6_000,
            "cache_write_tokens": 0,
            "cost_usd": 1.3518,
            "unpriced_calls": 1,
        }),
        "{body}"
    );

    // Reports.
    let report = expect_json(get(&server, &admin, "/api/v1/cost?by=model").await, 200).await;
    assert_eq!(report["tenant_id"], tenant.as_str());
    let rows: Vec<(Value, Value, Value)> = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].clone(),
                r["calls"].clone(),
                r["cost_micros"].clone(),
            )
        })
        .collect();
    assert_eq!(
        rows[0],
        (
            json!("claude-sonnet-4-20250514"),
            json!(3),
            json!(1_351_800)
        )
    );
    assert_eq!(rows.len(), 3, "{report}");
    assert_eq!(report["total"]["calls"], 5);
    assert_eq!(report["total"]["unpriced_calls"], 1);
    assert_eq!(report["total"]["cost_usd"], 1.3518);
    let by_task = expect_json(
        get(&server, &admin, "/api/v1/cost?by=task&since=2020-01-01").await,
        200,
    )
    .await;
    assert_eq!(by_task["items"][0]["key"], task.as_str(), "{by_task}");
    let future = expect_json(
        get(
            &server,
            &admin,
            "/api/v1/cost?by=project&since=2999-01-01T00:00:00Z",
        )
        .await,
        200,
    )
    .await;
    assert_eq!(future["items"], json!([]), "{future}");
    assert_eq!(future["total"]["calls"], 0);

    // Budgets show the period's spend.
    let list = expect_json(get(&server, &admin, "/api/v1/budgets").await, 200).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["items"][0]["spent_micros"], 1_351_800, "{list}");
    assert_eq!(list["items"][0]["resets_at"], resets.as_str(), "{list}");

    // Metrics (a superadmin's view of this server).
    let resp = get(&server, &server.admin_token, "/metrics").await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    for line in [
        r#"cflow_model_tokens_total{kind="input"} 300020"#,
        r#"cflow_model_tokens_total{kind="output"} 30010"#,
        r#"cflow_model_tokens_total{kind="cache_read"} 6000"#,
        r#"cflow_model_tokens_total{kind="cache_write"} 0"#,
        r#"cflow_model_calls_total{priced="true"} 4"#,
        r#"cflow_model_calls_total{priced="false"} 1"#,
        "cflow_model_cost_usd_total 1.3518",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line} in:\n{text}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn roles_tenants_and_bad_input() {
    let server = TestServer::start_sqlite().await;
    let (tenant, admin) = server.tenant_with_key("costs", "admin").await;
    let (other, other_admin) = server.tenant_with_key("costs-other", "admin").await;
    let scope = UsageScope {
        tenant_id: other.clone(),
        ..UsageScope::default()
    };
    server
        .state()
        .record_usage(&scope, "openai", "gpt-4o", &SONNET_CALL)
        .await
        .unwrap();

    for (role, may_read) in [
        ("operator", true),
        ("auditor", true),
        ("developer", false),
        ("viewer", false),
    ] {
        let key = server.create_key(&tenant, &format!("k-{role}"), role).await;
        let resp = get(&server, &key, "/api/v1/cost").await;
        if may_read {
            let body = expect_json(resp, 200).await;
            assert_eq!(
                body["items"],
                json!([]),
                "{role}: another tenant's calls leak: {body}"
            );
            expect_json(get(&server, &key, "/api/v1/budgets").await, 200).await;
        } else {
            expect_problem(resp, 403, "forbidden").await;
        }
        // Only admins set budgets.
        let resp = put_budget(&server, &key, json!({"period": "day", "limit_usd": 5})).await;
        expect_problem(resp, 403, "forbidden").await;
    }
    // A tenant admin may not look at another tenant; the superadmin may.
    let resp = get(&server, &admin, &format!("/api/v1/cost?tenant={other}")).await;
    expect_problem(resp, 403, "forbidden").await;
    let body = expect_json(
        get(
            &server,
            &server.admin_token,
            &format!("/api/v1/cost?tenant={other}"),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(body["total"]["calls"], 1, "{body}");
    assert_eq!(body["total"]["cost_micros"], 352_500, "{body}");
    let resp = get(
        &server,
        &server.admin_token,
        "/api/v1/cost?tenant=no-such-tenant",
    )
    .await;
    expect_problem(resp, 404, "not-found").await;

    // Bad parameters and bodies are refused and change nothing.
    for (query, field) in [
        ("by=colour", "by"),
        ("since=last-tuesday", "since"),
        ("until=2026-13-45", "until"),
        ("since=2026-11-02&until=2026-11-01", "until"),
        ("bogus=1", "bogus"),
    ] {
        let resp = get(&server, &admin, &format!("/api/v1/cost?{query}")).await;
        let body = expect_problem(resp, 400, "bad-request").await;
        assert_eq!(body["field"], field, "{query}: {body}");
    }
    for (body, field) in [
        (json!({"period": "year", "limit_usd": 5}), "period"),
        (json!({"period": "day", "limit_usd": -1}), "limit_usd"),
        (
            json!({"period": "day", "limit_usd": 5, "project": "not a name"}),
            "project",
        ),
    ] {
        let resp = put_budget(&server, &admin, body.clone()).await;
        let problem = expect_problem(resp, 422, "validation").await;
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
    let resp = put_budget(&server, &admin, json!({"period": "day"})).await;
    let problem = expect_problem(resp, 422, "validation").await;
    assert_eq!(problem["field"], "limit_usd", "{problem}");
    let list = expect_json(get(&server, &admin, "/api/v1/budgets").await, 200).await;
    assert_eq!(list["items"], json!([]), "{list}");

    // Set, replace, delete; another tenant's admin cannot delete it.
    let b = expect_json(
        put_budget(
            &server,
            &admin,
            json!({"project": "web", "period": "week", "limit_usd": 3.5}),
        )
        .await,
        200,
    )
    .await;
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(
        (b["project"].clone(), b["limit_usd"].clone()),
        (json!("web"), json!(3.5))
    );
    let again = expect_json(
        put_budget(
            &server,
            &admin,
            json!({"project": "web", "period": "week", "limit_usd": 4}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(again["id"], id.as_str());
    let delete = |token: String| {
        let server = &server;
        let id = id.clone();
        async move {
            server
                .client()
                .delete(server.at(&format!("/api/v1/budgets/{id}")))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };
    expect_problem(delete(other_admin.clone()).await, 404, "not-found").await;
    assert_eq!(delete(admin.clone()).await.status(), 204);
    expect_problem(delete(admin.clone()).await, 404, "not-found").await;
    server.shutdown().await;
}

#[tokio::test]
async fn configured_prices_override_and_extend_the_table() {
    let price = |i: f64, o: f64| ModelPriceConfig {
        input_per_mtok: UsdPerMtok::try_from(i).unwrap(),
        output_per_mtok: UsdPerMtok::try_from(o).unwrap(),
        cache_read_per_mtok: None,
        cache_write_per_mtok: None,
    };
    let server = TestServer::start_with(|c| {
        c.pricing.models.insert("gpt-4o".into(), price(1.0, 1.0));
        c.pricing
            .models
            .insert("house-model".into(), price(2.0, 4.0));
    })
    .await;
    assert!(UsdPerMtok::try_from(-1.0).is_err());
    let (tenant, _) = server.tenant_with_key("priced", "admin").await;
    let scope = UsageScope {
        tenant_id: tenant,
        ..UsageScope::default()
    };
    let usage = Usage {
        input_tokens: 1_000_000,
        output_tokens: 1_000_000,
        cache_read_tokens: 1_000_000,
        cache_write_tokens: 0,
    };
    let state = server.state();
    let c = state
        .record_usage(&scope, "openai", "gpt-4o-2024-08-06", &usage)
        .await
        .unwrap();
    // Cache reads default to the input price when the configuration does not give one.
    assert_eq!((c.priced, c.micros), (true, 3_000_000));
    let c = state
        .record_usage(&scope, "house", "house-model", &usage)
        .await
        .unwrap();
    assert_eq!((c.priced, c.micros), (true, 8_000_000));
    let c = state
        .record_usage(&scope, "anthropic", "claude-opus-4", &usage)
        .await
        .unwrap();
    assert_eq!((c.priced, c.micros), (true, 91_500_000));
    server.shutdown().await;
}
