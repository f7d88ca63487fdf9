//! Rejected input, one test per class: each asserts the status, the problem type, the message or
//! field, and that the store is unchanged afterwards.

use crate::common::{expect_json, expect_problem, now_ms};
use cflow_store::{AuditQuery, PageRequest};
use cflow_test_support::server::TestServer;
use serde_json::{Value, json};

/// A server with one developer key in tenant `acme`.
struct Env {
    server: TestServer,
    tenant: String,
    admin: String,
    dev: String,
}

async fn env() -> Env {
    env_with(|_| {}).await
}

async fn env_with(modify: impl FnOnce(&mut cflow_server::ServerConfig)) -> Env {
    let server = TestServer::start_with(modify).await;
    let (tenant, admin) = server.tenant_with_key("acme", "admin").await;
    let dev = server.create_key(&tenant, "acme-dev", "developer").await;
    Env {
        server,
        tenant,
        admin,
        dev,
    }
}

impl Env {
    async fn tenant_names(&self) -> Vec<String> {
        let page = PageRequest {
            cursor: None,
            limit: 1000,
        };
        let page = self.server.store.list_tenants(&page).await.unwrap();
        page.items.into_iter().map(|t| t.name).collect()
    }

    async fn key_count(&self) -> usize {
        let page = PageRequest {
            cursor: None,
            limit: 1000,
        };
        let page = self
            .server
            .store
            .list_keys(&self.tenant, &page)
            .await
            .unwrap();
        assert!(page.items.iter().all(|k| k.revoked_at.is_none()));
        page.items.len()
    }

    /// Memory entries written in the tenant, counted from the audit ledger (which sees every
    /// namespace, including ones the listing could not address) and checked against the listing.
    async fn memory_count(&self) -> usize {
        let query = AuditQuery {
            tenant_id: Some(self.tenant.clone()),
            since: None,
        };
        let page = PageRequest {
            cursor: None,
            limit: 1000,
        };
        let ledger = self.server.store.audit_list(&query, &page).await.unwrap();
        let writes = ledger
            .items
            .iter()
            .filter(|e| e.action.starts_with("memory.") && e.outcome == "success")
            .count();
        let listed = self
            .server
            .store
            .memory_list(&self.tenant, "notes", "", now_ms(), &page)
            .await
            .unwrap()
            .items
            .len();
        assert_eq!(writes, listed, "every write went to 'notes'");
        writes
    }

    /// POSTs raw bytes to create a tenant as the superadmin.
    async fn post_tenant_raw(&self, content_type: Option<&str>, body: &str) -> reqwest::Response {
        let mut req = self
            .server
            .client()
            .post(self.server.at("/api/v1/tenants"))
            .bearer_auth(&self.server.admin_token)
            .body(body.to_string());
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req.send().await.unwrap()
    }

    async fn put_memory(&self, path: &str, body: Value) -> reqwest::Response {
        self.server
            .client()
            .put(self.server.at(path))
            .bearer_auth(&self.dev)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.server
            .client()
            .get(self.server.at(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    async fn create_key(&self, body: Value) -> reqwest::Response {
        self.server
            .client()
            .post(
                self.server
                    .at(&format!("/api/v1/tenants/{}/keys", self.tenant)),
            )
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn malformed_json_is_400() {
    let e = env().await;
    let before = e.tenant_names().await;
    let resp = e
        .post_tenant_raw(Some("application/json"), r#"{"name": "#)
        .await;
    let body = expect_problem(resp, 400, "bad-request").await;
    assert!(
        body["detail"].as_str().unwrap().contains("malformed JSON"),
        "{body}"
    );
    let resp = e
        .post_tenant_raw(Some("application/json"), r#"{"name": "x"} trailing"#)
        .await;
    expect_problem(resp, 400, "bad-request").await;
    assert_eq!(e.tenant_names().await, before);
}

#[tokio::test]
async fn unknown_field_is_422_naming_it() {
    let e = env().await;
    let before = e.tenant_names().await;
    let resp = e
        .post_tenant_raw(
            Some("application/json"),
            r#"{"name": "x1", "colour": "red"}"#,
        )
        .await;
    let body = expect_problem(resp, 422, "validation").await;
    assert_eq!(body["field"], "colour", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("unknown field"),
        "{body}"
    );
    assert_eq!(e.tenant_names().await, before);
}

#[tokio::test]
async fn wrong_type_is_422_naming_the_field() {
    let e = env().await;
    let resp = e
        .put_memory(
            "/api/v1/memory/notes/a",
            json!({"value": 1, "ttl_seconds": "soon"}),
        )
        .await;
    let body = expect_problem(resp, 422, "validation").await;
    assert_eq!(body["field"], "ttl_seconds", "{body}");
    let resp = e
        .put_memory("/api/v1/memory/notes/a", json!({"value": 1, "tags": [1]}))
        .await;
    let body = expect_problem(resp, 422, "validation").await;
    assert_eq!(body["field"], "tags[0]", "{body}");
    let resp = e
        .put_memory("/api/v1/memory/notes/a", json!({"tags": []}))
        .await;
    let body = expect_problem(resp, 422, "validation").await;
    assert_eq!(body["field"], "value", "a missing field is named: {body}");
    assert_eq!(e.memory_count().await, 0);
}

#[tokio::test]
async fn oversized_body_is_413() {
    let e = env_with(|c| c.max_body_bytes = 1024).await;
    let resp = e
        .put_memory(
            "/api/v1/memory/notes/big",
            json!({"value": "x".repeat(4096)}),
        )
        .await;
    let body = expect_problem(resp, 413, "payload-too-large").await;
    assert!(
        body["detail"].as_str().unwrap().contains("max_body_bytes"),
        "{body}"
    );
    // Just under the limit is accepted.
    let resp = e
        .put_memory(
            "/api/v1/memory/notes/small",
            json!({"value": "x".repeat(900)}),
        )
        .await;
    expect_json(resp, 200).await;
    assert_eq!(e.memory_count().await, 1);
}

#[tokio::test]
async fn wrong_or_missing_content_type_is_415() {
    let e = env().await;
    let before = e.tenant_names().await;
    let resp = e
        .post_tenant_raw(Some("text/plain"), r#"{"name": "x2"}"#)
        .await;
    let body = expect_problem(resp, 415, "unsupported-media-type").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("application/json"),
        "{body}"
    );
    let resp = e.post_tenant_raw(None, r#"{"name": "x3"}"#).await;
    expect_problem(resp, 415, "unsupported-media-type").await;
    assert_eq!(e.tenant_names().await, before);
}

#[tokio::test]
async fn an_id_that_does_not_parse_is_400() {
    let e = env().await;
    let before = e.key_count().await;
    let resp = e
        .server
        .client()
        .delete(e.server.at("/api/v1/keys/not-a-key-id"))
        .bearer_auth(&e.admin)
        .send()
        .await
        .unwrap();
    let body = expect_problem(resp, 400, "bad-request").await;
    assert_eq!(body["field"], "id", "{body}");
    // Well-formed but unknown is a 404.
    let resp = e
        .server
        .client()
        .delete(e.server.at("/api/v1/keys/0123456789abcdef"))
        .bearer_auth(&e.admin)
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not-found").await;
    assert_eq!(e.key_count().await, before);
}

#[tokio::test]
async fn empty_long_and_control_character_names_are_422() {
    let e = env().await;
    let before = e.tenant_names().await;
    for (name, rule) in [
        ("".to_string(), "must not be empty"),
        ("a".repeat(65), "at most 64"),
        ("a\u{7}b".to_string(), "control characters"),
        ("-dash".to_string(), "must start with a letter or digit"),
    ] {
        let resp = e
            .post_tenant_raw(
                Some("application/json"),
                &json!({ "name": name }).to_string(),
            )
            .await;
        let body = expect_problem(resp, 422, "validation").await;
        assert_eq!(body["field"], "name", "{body}");
        assert!(
            body["detail"].as_str().unwrap().contains(rule),
            "{name:?}: {body}"
        );
    }
    assert_eq!(e.tenant_names().await, before);
    let keys = e.key_count().await;
    let resp = e.create_key(json!({"name": "", "role": "viewer"})).await;
    let body = expect_problem(resp, 422, "validation").await;
    assert_eq!(body["field"], "name");
    assert_eq!(e.key_count().await, keys);
}

#[tokio::test]
async fn control_characters_in_a_memory_key_are_422() {
    let e = env().await;
    let resp = e
        .put_memory("/api/v1/memory/notes/a%07b", json!({"value": 1}))
        .await;
    let body = expect_problem(resp, 422, "validation").await;
    assert_eq!(body["field"], "key", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("control"),
        "{body}"
    );
    let resp = e
        .put_memory("/api/v1/memory/no%0Ates/a", json!({"value": 1}))
        .await;
    let body = expect_problem(resp, 422, "validation").await;
    assert_eq!(body["field"], "namespace", "{body}");
    assert_eq!(e.memory_count().await, 0);
}

#[tokio::test]
async fn namespace_over_its_limit_and_reserved_namespace_are_422() {
    let e = env().await;
    let long = "n".repeat(257);
    let resp = e
        .put_memory(&format!("/api/v1/memory/{long}/k"), json!({"value": 1}))
        .await;
    let body = expect_problem(resp, 422, "validation").await;
    assert_eq!(body["field"], "namespace", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("at most 256"),
        "{body}"
    );
    let resp = e
        .put_memory("/api/v1/memory/search/k", json!({"value": 1}))
        .await;
    let body = expect_problem(resp, 422, "validation").await;
    assert_eq!(body["field"], "namespace", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("reserved"),
        "{body}"
    );
    let resp = e
        .put_memory("/api/v1/memory/a%2F%2Fb/k", json!({"value": 1}))
        .await;
    expect_problem(resp, 422, "validation").await;
    assert_eq!(e.memory_count().await, 0);
}

#[tokio::test]
async fn negative_or_huge_ttl_is_422() {
    let e = env().await;
    for ttl in [-5_i64, 0, 10 * 365 * 24 * 3600 + 1] {
        let resp = e
            .put_memory(
                "/api/v1/memory/notes/t",
                json!({"value": 1, "ttl_seconds": ttl}),
            )
            .await;
        let body = expect_problem(resp, 422, "validation").await;
        assert_eq!(body["field"], "ttl_seconds", "{body}");
    }
    assert_eq!(e.memory_count().await, 0);
}

#[tokio::test]
async fn too_many_or_bad_tags_are_422() {
    let e = env().await;
    let tags: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
    let resp = e
        .put_memory("/api/v1/memory/notes/t", json!({"value": 1, "tags": tags}))
        .await;
    let body = expect_problem(resp, 422, "validation").await;
    assert_eq!(body["field"], "tags", "{body}");
    let resp = e
        .put_memory(
            "/api/v1/memory/notes/t",
            json!({"value": 1, "tags": ["ok", ""]}),
        )
        .await;
    let body = expect_problem(resp, 422, "validation").await;
    assert_eq!(body["field"], "tags[1]", "{body}");
    assert_eq!(e.memory_count().await, 0);
}

#[tokio::test]
async fn search_query_of_only_operators_is_422() {
    let e = env().await;
    let resp = e
        .get("/api/v1/memory/search?q=*%20-%20(%20)%20%22", &e.dev)
        .await;
    let body = expect_problem(resp, 422, "validation").await;
    assert_eq!(body["field"], "q", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("at least one word"),
        "{body}"
    );
    let resp = e.get("/api/v1/memory/search", &e.dev).await;
    let body = expect_problem(resp, 400, "bad-request").await;
    assert_eq!(body["field"], "q", "a missing q is named: {body}");
}

#[tokio::test]
async fn bad_cursor_is_400() {
    let e = env().await;
    for path in [
        "/api/v1/keys?cursor=garbage",
        "/api/v1/memory/notes?cursor=zz",
        "/api/v1/audit?cursor=%FF",
        "/api/v1/tenants?cursor=nope",
    ] {
        let token = if path.starts_with("/api/v1/tenants") {
            e.server.admin_token.clone()
        } else {
            e.admin.clone()
        };
        let body = expect_problem(e.get(path, &token).await, 400, "bad-request").await;
        assert_eq!(body["field"], "cursor", "{path}: {body}");
    }
}

#[tokio::test]
async fn limit_out_of_range_or_unknown_parameter_is_400() {
    let e = env().await;
    for (path, field) in [
        ("/api/v1/keys?limit=0", "limit"),
        ("/api/v1/keys?limit=1001", "limit"),
        ("/api/v1/keys?limit=abc", "limit"),
        ("/api/v1/keys?limit=-1", "limit"),
        ("/api/v1/memory/notes?limit=5000", "limit"),
        ("/api/v1/keys?limt=5", "limt"),
    ] {
        let body = expect_problem(e.get(path, &e.admin).await, 400, "bad-request").await;
        assert_eq!(body["field"], field, "{path}: {body}");
    }
    let page = expect_json(e.get("/api/v1/keys?limit=1000", &e.admin).await, 200).await;
    assert!(page["items"].is_array());
}

#[tokio::test]
async fn invalid_role_is_422() {
    let e = env().await;
    let before = e.key_count().await;
    let resp = e.create_key(json!({"name": "k1", "role": "root"})).await;
    let body = expect_problem(resp, 422, "validation").await;
    assert_eq!(body["field"], "role", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("unknown role 'root'"),
        "{body}"
    );
    let resp = e.create_key(json!({"name": "k1", "role": 5})).await;
    let body = expect_problem(resp, 422, "validation").await;
    assert_eq!(body["field"], "role", "{body}");
    assert_eq!(e.key_count().await, before);
}

#[tokio::test]
async fn expires_at_in_the_past_or_unparseable_is_422() {
    let e = env().await;
    let before = e.key_count().await;
    for (expires_at, rule) in [
        ("2001-01-01T00:00:00Z", "in the future"),
        ("tomorrow", "RFC 3339"),
        ("2030-13-45T99:00:00Z", "RFC 3339"),
    ] {
        let resp = e
            .create_key(json!({"name": "k2", "role": "viewer", "expires_at": expires_at}))
            .await;
        let body = expect_problem(resp, 422, "validation").await;
        assert_eq!(body["field"], "expires_at", "{body}");
        assert!(
            body["detail"].as_str().unwrap().contains(rule),
            "{expires_at}: {body}"
        );
    }
    assert_eq!(e.key_count().await, before);
}

#[tokio::test]
async fn bad_precondition_headers_are_400() {
    let e = env().await;
    for (header, value) in [
        ("if-match", "W/\"1\""),
        ("if-match", "*"),
        ("if-match", "one"),
        ("if-none-match", "\"1\""),
    ] {
        let resp = e
            .server
            .client()
            .put(e.server.at("/api/v1/memory/notes/p"))
            .bearer_auth(&e.dev)
            .header(header, value)
            .json(&json!({"value": 1}))
            .send()
            .await
            .unwrap();
        let body = expect_problem(resp, 400, "bad-request").await;
        assert_eq!(body["field"], header, "{header}: {value}: {body}");
    }
    assert_eq!(e.memory_count().await, 0);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let e = env().await;
    let resp = e.get("/api/v1/nothing-here", &e.admin).await;
    let body = expect_problem(resp, 404, "not-found").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("/api/v1/nothing-here"),
        "{body}"
    );
    let resp = e
        .server
        .client()
        .patch(e.server.at("/api/v1/whoami"))
        .bearer_auth(&e.admin)
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers().get("allow").is_some(),
        "405 names the allowed methods"
    );
    expect_problem(resp, 405, "method-not-allowed").await;
}
