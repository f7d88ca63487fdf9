//! Walks every operation of the served OpenAPI document and checks authentication, tenant
//! isolation and the read-only role on each, so that a new route without those checks fails here.

use crate::common::{expect_json, expect_problem};
use cflow_test_support::server::TestServer;
use reqwest::Method;
use serde_json::{Value, json};

/// Operations documented as public: they take no token.
const PUBLIC: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/api/v1/openapi.json"),
];

/// What a valid key of another tenant gets.
#[derive(Debug, Clone, Copy, PartialEq)]
enum OtherTenant {
    /// The route addresses a resource of the first tenant: it does not exist for the caller.
    NotFound,
    /// Platform or tenant-administration routes the caller's role may not use.
    Forbidden,
    /// The route acts on the caller's own tenant: it succeeds but shows nothing of the first.
    OwnTenantOnly,
    /// A compare-and-set write at the first tenant's version: the caller's tenant has no such
    /// entry, so it fails with `current_version: null` and writes nothing.
    StaleForCaller,
}

fn other_tenant(method: &str, path: &str) -> OtherTenant {
    use OtherTenant::*;
    match (method, path) {
        ("post", "/api/v1/tenants") | ("get", "/api/v1/tenants") | ("get", "/metrics") => Forbidden,
        ("post", "/api/v1/tenants/{tenant}/keys") => NotFound,
        ("delete", "/api/v1/keys/{id}") => NotFound,
        ("get" | "delete", "/api/v1/memory/{namespace}/{key}") => NotFound,
        ("put", "/api/v1/memory/{namespace}/{key}") => StaleForCaller,
        ("get", "/api/v1/keys")
        | ("get", "/api/v1/whoami")
        | ("get", "/api/v1/memory/{namespace}")
        | ("get", "/api/v1/memory/search")
        | ("get", "/api/v1/audit")
        | ("get", "/api/v1/audit/verify") => OwnTenantOnly,
        _ => panic!("classify {method} {path} in route_walk::other_tenant"),
    }
}

/// A valid body for each operation that takes one.
fn body_for(method: &str, path: &str) -> Option<Value> {
    match (method, path) {
        ("post", "/api/v1/tenants") => Some(json!({ "name": "walk-created" })),
        ("post", "/api/v1/tenants/{tenant}/keys") => {
            Some(json!({ "name": "walk-key", "role": "viewer" }))
        }
        ("put", "/api/v1/memory/{namespace}/{key}") => Some(json!({ "value": "walk-overwrite" })),
        ("get" | "delete", _) => None,
        _ => panic!("add a body for {method} {path} in route_walk::body_for"),
    }
}

struct Fixture {
    tenant_a: String,
    key_a_id: String,
}

fn fill(path: &str, f: &Fixture) -> String {
    let filled = path
        .replace("{tenant}", &f.tenant_a)
        .replace("{id}", &f.key_a_id)
        .replace("{namespace}", "notes")
        .replace("{key}", "plan");
    assert!(!filled.contains('{'), "unfilled parameter in {path}");
    if filled == "/api/v1/memory/search" {
        return format!("{filled}?q=marker");
    }
    filled
}

async fn send(
    server: &TestServer,
    method: &str,
    path: &str,
    f: &Fixture,
    token: Option<&str>,
) -> reqwest::Response {
    let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let mut req = server.client().request(m, server.at(&fill(path, f)));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(body) = body_for(method, path) {
        req = req.json(&body);
    }
    if method == "put" {
        // Every write is conditional on alpha's version, so that no walk step can succeed
        // silently in the wrong tenant.
        req = req.header("if-match", "\"1\"");
    }
    req.send().await.expect("request")
}

#[tokio::test]
async fn every_route_checks_authentication_tenant_and_role_on_sqlite() {
    walk(TestServer::start_sqlite().await).await;
}

#[tokio::test]
async fn every_route_checks_authentication_tenant_and_role_on_postgres() {
    let Some(server) = TestServer::start_postgres().await else {
        eprintln!("skipped: no PostgreSQL configured (set CFLOW_TEST_DATABASE_URL)");
        return;
    };
    walk(server).await;
}

async fn walk(server: TestServer) {
    let (tenant_a, admin_a) = server.tenant_with_key("alpha", "admin").await;
    let (_tenant_b, admin_b) = server.tenant_with_key("beta", "admin").await;
    let viewer_a = server.create_key(&tenant_a, "alpha-viewer", "viewer").await;
    let extra = server
        .create_key_json(&tenant_a, "alpha-extra", "developer", None)
        .await;
    let fixture = Fixture {
        tenant_a: tenant_a.clone(),
        key_a_id: extra["id"].as_str().unwrap().to_string(),
    };
    let marker = "alpha-private-marker";
    let put = server
        .client()
        .put(server.at("/api/v1/memory/notes/plan"))
        .bearer_auth(&admin_a)
        .json(&json!({ "value": marker, "tags": ["marker"] }))
        .send()
        .await
        .unwrap();
    expect_json(put, 200).await;

    let doc = expect_json(
        server
            .client()
            .get(server.at("/api/v1/openapi.json"))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let mut walked = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().unwrap() {
            let security = op["security"]
                .as_array()
                .expect("every operation has security");
            let needs_bearer = security.iter().any(|s| s.get("bearer").is_some());
            if PUBLIC.contains(&(method.as_str(), path.as_str())) {
                assert!(!needs_bearer, "{method} {path} is public");
                continue;
            }
            assert!(needs_bearer, "{method} {path} must require a bearer token");
            walked += 1;
            let what = format!("{method} {path}");

            // 1. No token.
            let resp = send(&server, method, path, &fixture, None).await;
            assert_eq!(
                resp.headers()
                    .get("www-authenticate")
                    .map(|v| v.to_str().unwrap()),
                Some("Bearer"),
                "{what}"
            );
            expect_problem(resp, 401, "unauthenticated").await;

            // 2. A valid key of another tenant.
            let resp = send(&server, method, path, &fixture, Some(&admin_b)).await;
            match other_tenant(method, path) {
                OtherTenant::NotFound => {
                    expect_problem(resp, 404, "not-found").await;
                }
                OtherTenant::Forbidden => {
                    expect_problem(resp, 403, "forbidden").await;
                }
                OtherTenant::StaleForCaller => {
                    let body = expect_problem(resp, 412, "precondition-failed").await;
                    assert_eq!(
                        body.get("current_version"),
                        Some(&Value::Null),
                        "{what}: {body}"
                    );
                }
                OtherTenant::OwnTenantOnly => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap();
                    assert!(status.is_success(), "{what}: {status} {text}");
                    assert!(
                        !text.contains(&tenant_a),
                        "{what} leaks tenant alpha: {text}"
                    );
                    assert!(
                        !text.contains(marker),
                        "{what} leaks alpha's memory: {text}"
                    );
                }
            }

            // 3. A viewer of the tenant may not mutate anything.
            if matches!(method.as_str(), "post" | "put" | "delete" | "patch") {
                let resp = send(&server, method, path, &fixture, Some(&viewer_a)).await;
                expect_problem(resp, 403, "forbidden").await;
            }
        }
    }
    assert_eq!(walked, 14, "every non-public operation was walked");

    // Nothing of tenant alpha changed: the entry is at version 1 and the key is live.
    let entry = server
        .store
        .memory_get(&tenant_a, "notes", "plan", crate::common::now_ms())
        .await
        .unwrap()
        .expect("alpha's entry survives");
    assert_eq!((entry.version, entry.value), (1, json!(marker)));
    let keys = server
        .store
        .list_keys(
            &tenant_a,
            &cflow_store::PageRequest {
                cursor: None,
                limit: 100,
            },
        )
        .await
        .unwrap();
    assert!(
        keys.items.iter().all(|k| k.revoked_at.is_none()),
        "no key of alpha was revoked"
    );
    assert_eq!(keys.items.len(), 3, "no key was created in alpha");
    server.shutdown().await;
}
