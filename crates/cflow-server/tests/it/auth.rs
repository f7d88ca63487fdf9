//! Authentication and authorization: token failures, revocation and expiry, whoami, the
//! key-creation rules, project-scoped keys and secrecy of tokens.

use crate::common::{eventually, expect_json, expect_problem, now_ms};
use cflow_test_support::server::TestServer;
use serde_json::{Value, json};
use std::time::Duration;

async fn whoami(server: &TestServer, auth: Option<&str>) -> reqwest::Response {
    let mut req = server.client().get(server.at("/api/v1/whoami"));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn token_failures_are_401_and_say_why() {
    let server = TestServer::start_sqlite().await;
    let (_, token) = server.tenant_with_key("acme", "developer").await;
    let id = &token["cflow_".len().."cflow_".len() + 16];
    let unknown = format!("cflow_{}_{}", "0".repeat(16), "a".repeat(64));
    let wrong_secret = format!("cflow_{id}_{}", "b".repeat(64));
    for (auth, says) in [
        (None, "missing API key"),
        (
            Some("Basic dXNlcjpwYXNz".to_string()),
            "malformed Authorization",
        ),
        (Some("Bearer".to_string()), "malformed Authorization"),
        (Some("Bearer not-a-token".to_string()), "malformed API key"),
        (
            Some(format!("Bearer {unknown}")),
            "unknown API key or wrong secret",
        ),
        (
            Some(format!("Bearer {wrong_secret}")),
            "unknown API key or wrong secret",
        ),
    ] {
        let resp = whoami(&server, auth.as_deref()).await;
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        let body = expect_problem(resp, 401, "unauthenticated").await;
        assert!(
            body["detail"].as_str().unwrap().contains(says),
            "{auth:?}: {body}"
        );
        // The answer never echoes the presented token.
        assert!(!body.to_string().contains(&"b".repeat(64)));
    }
    let ok = expect_json(whoami(&server, Some(&format!("Bearer {token}"))).await, 200).await;
    assert_eq!(ok["role"], "developer");
    server.shutdown().await;
}

#[tokio::test]
async fn whoami_describes_the_caller() {
    let server = TestServer::start_sqlite().await;
    let tenant = server.create_tenant("acme").await;
    let created = server
        .create_key_json(&tenant, "ci-bot", "developer", Some("web"))
        .await;
    let token = created["token"].as_str().unwrap();
    let me = expect_json(whoami(&server, Some(&format!("Bearer {token}"))).await, 200).await;
    assert_eq!(me["key_id"], created["id"]);
    assert_eq!(me["key_name"], "ci-bot");
    assert_eq!(me["principal_id"], created["principal_id"]);
    assert_eq!(me["tenant_id"], tenant);
    assert_eq!(me["tenant_name"], "acme");
    assert_eq!(me["role"], "developer");
    assert_eq!(me["project"], "web");
    let admin = server.admin_token.clone();
    let root = expect_json(whoami(&server, Some(&format!("Bearer {admin}"))).await, 200).await;
    assert_eq!(
        (root["role"].clone(), root["tenant_name"].clone()),
        (json!("superadmin"), json!("default"))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_revoked_key_is_refused_immediately() {
    let server = TestServer::start_sqlite().await;
    let (tenant, admin) = server.tenant_with_key("acme", "admin").await;
    let created = server
        .create_key_json(&tenant, "temp", "developer", None)
        .await;
    let token = format!("Bearer {}", created["token"].as_str().unwrap());
    expect_json(whoami(&server, Some(&token)).await, 200).await;
    let revoked = expect_json(
        server
            .client()
            .delete(server.at(&format!("/api/v1/keys/{}", created["id"].as_str().unwrap())))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    let body = expect_problem(whoami(&server, Some(&token)).await, 401, "unauthenticated").await;
    assert!(
        body["detail"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn an_expired_key_is_refused() {
    let server = TestServer::start_sqlite().await;
    let tenant = server.create_tenant("acme").await;
    let expires = cflow_core::timefmt::rfc3339(now_ms() + 1_500);
    let resp = server
        .client()
        .post(server.at(&format!("/api/v1/tenants/{tenant}/keys")))
        .bearer_auth(&server.admin_token)
        .json(&json!({"name": "short", "role": "viewer", "expires_at": expires}))
        .send()
        .await
        .unwrap();
    let created = expect_json(resp, 201).await;
    assert_eq!(created["expires_at"], expires);
    let token = format!("Bearer {}", created["token"].as_str().unwrap());
    let body = eventually("the key to expire", Duration::from_secs(20), async || {
        let resp = whoami(&server, Some(&token)).await;
        (resp.status() == 401).then_some(resp)
    })
    .await;
    let body = expect_problem(body, 401, "unauthenticated").await;
    assert!(
        body["detail"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    server.shutdown().await;
}

async fn create_key_as(
    server: &TestServer,
    token: &str,
    tenant: &str,
    body: Value,
) -> reqwest::Response {
    server
        .client()
        .post(server.at(&format!("/api/v1/tenants/{tenant}/keys")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn key_creation_rules() {
    let server = TestServer::start_sqlite().await;
    let (acme, admin) = server.tenant_with_key("acme", "admin").await;
    let (other, _) = server.tenant_with_key("other", "admin").await;
    let viewer = json!({"name": "v", "role": "viewer"});

    // An admin creates keys in its own tenant, by id or by name.
    let k = expect_json(
        create_key_as(&server, &admin, &acme, viewer.clone()).await,
        201,
    )
    .await;
    assert_eq!(k["tenant_id"], acme);
    let k = expect_json(
        create_key_as(
            &server,
            &admin,
            "acme",
            json!({"name": "v2", "role": "operator"}),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(
        (k["tenant_id"].clone(), k["role"].clone()),
        (json!(acme), json!("operator"))
    );

    // Another tenant does not exist for it, named either way; nor does a missing tenant.
    for t in [other.as_str(), "other", "no-such-tenant"] {
        expect_problem(
            create_key_as(&server, &admin, t, viewer.clone()).await,
            404,
            "not-found",
        )
        .await;
    }
    // Only a superadmin grants superadmin.
    let su = json!({"name": "root2", "role": "superadmin"});
    let body = expect_problem(
        create_key_as(&server, &admin, &acme, su.clone()).await,
        403,
        "forbidden",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("superadmin"),
        "{body}"
    );
    let k = expect_json(
        create_key_as(&server, &server.admin_token, &other, su).await,
        201,
    )
    .await;
    assert_eq!(k["role"], "superadmin");
    // The superadmin creates keys in any tenant.
    expect_json(
        create_key_as(
            &server,
            &server.admin_token,
            "acme",
            json!({"name": "v3", "role": "auditor"}),
        )
        .await,
        201,
    )
    .await;

    // A project-scoped admin may not create keys; neither may a developer.
    let scoped = server
        .create_key_json(&acme, "scoped-admin", "admin", Some("web"))
        .await;
    let scoped = scoped["token"].as_str().unwrap();
    let body = expect_problem(
        create_key_as(&server, scoped, &acme, viewer.clone()).await,
        403,
        "forbidden",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("project"),
        "{body}"
    );
    let dev = server.create_key(&acme, "dev", "developer").await;
    expect_problem(
        create_key_as(&server, &dev, &acme, viewer).await,
        403,
        "forbidden",
    )
    .await;

    // An admin is not a superadmin: platform routes are refused.
    let resp = server
        .client()
        .get(server.at("/api/v1/tenants"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    expect_problem(resp, 403, "forbidden").await;
    server.shutdown().await;
}

#[tokio::test]
async fn tokens_never_appear_in_listings() {
    let server = TestServer::start_sqlite().await;
    let (acme, admin) = server.tenant_with_key("acme", "admin").await;
    let mut secrets = vec![admin.clone()];
    for role in ["viewer", "developer", "auditor"] {
        secrets.push(server.create_key(&acme, role, role).await);
    }
    let list = expect_json(
        server
            .client()
            .get(server.at("/api/v1/keys"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    let text = list.to_string();
    for token in &secrets {
        let secret = token.rsplit('_').next().unwrap();
        assert!(!text.contains(secret), "a secret leaked into the key list");
    }
    for item in items {
        assert!(item.get("token").is_none(), "{item}");
        assert!(item.get("secret_hash").is_none(), "{item}");
        assert_eq!(item["tenant_id"], acme);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn project_scoped_keys_stay_in_their_project() {
    let server = TestServer::start_sqlite().await;
    let (acme, admin) = server.tenant_with_key("acme", "admin").await;
    let scoped = server
        .create_key_json(&acme, "web-dev", "developer", Some("web"))
        .await;
    let scoped = scoped["token"].as_str().unwrap().to_string();
    let put = |token: String, path: &'static str, value: &'static str| {
        let req = server
            .client()
            .put(server.at(path))
            .bearer_auth(token)
            .json(&json!({ "value": value }));
        async move { req.send().await.unwrap() }
    };
    expect_json(
        put(scoped.clone(), "/api/v1/memory/web/a", "deploy web").await,
        200,
    )
    .await;
    expect_json(
        put(scoped.clone(), "/api/v1/memory/web%2Fui/b", "deploy ui").await,
        200,
    )
    .await;
    for path in [
        "/api/v1/memory/api/c",
        "/api/v1/memory/website/c",
        "/api/v1/memory/we/c",
    ] {
        let body =
            expect_problem(put(scoped.clone(), path, "deploy").await, 403, "forbidden").await;
        assert!(
            body["detail"].as_str().unwrap().contains("project 'web'"),
            "{body}"
        );
    }
    // The tenant admin writes outside the project; the scoped key cannot read it or find it.
    expect_json(
        put(admin.clone(), "/api/v1/memory/api/secret", "deploy api").await,
        200,
    )
    .await;
    let get = |path: &'static str| {
        server
            .client()
            .get(server.at(path))
            .bearer_auth(&scoped)
            .send()
    };
    expect_problem(
        get("/api/v1/memory/api/secret").await.unwrap(),
        403,
        "forbidden",
    )
    .await;
    expect_problem(get("/api/v1/memory/api").await.unwrap(), 403, "forbidden").await;
    expect_problem(
        get("/api/v1/memory/search?q=deploy&namespace=api")
            .await
            .unwrap(),
        403,
        "forbidden",
    )
    .await;
    let found = expect_json(get("/api/v1/memory/search?q=deploy").await.unwrap(), 200).await;
    let mut namespaces: Vec<String> = found["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["namespace"].as_str().unwrap().to_string())
        .collect();
    namespaces.sort();
    assert_eq!(namespaces, ["web", "web/ui"], "{found}");
    // The admin, not scoped, finds all three.
    let all = expect_json(
        server
            .client()
            .get(server.at("/api/v1/memory/search?q=deploy"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(all["items"].as_array().unwrap().len(), 3, "{all}");
    server.shutdown().await;
}

/// A key revoked behind this server's back (another node, or the store directly) stops working
/// once the cached authentication runs out, which is at most a second.
#[tokio::test]
async fn a_key_revoked_elsewhere_stops_working_within_the_cache_ttl() {
    let server = TestServer::start_sqlite().await;
    let tenant = server.create_tenant("acme").await;
    let created = server
        .create_key_json(&tenant, "elsewhere", "developer", None)
        .await;
    let token = format!("Bearer {}", created["token"].as_str().unwrap());
    expect_json(whoami(&server, Some(&token)).await, 200).await;
    let ctx = cflow_store::AuditContext::default();
    let id = created["id"].as_str().unwrap();
    server.store.revoke_key(&ctx, &tenant, id).await.unwrap();
    let resp = eventually(
        "the revocation to take effect",
        Duration::from_secs(5),
        async || {
            let resp = whoami(&server, Some(&token)).await;
            (resp.status() == 401).then_some(resp)
        },
    )
    .await;
    let body = expect_problem(resp, 401, "unauthenticated").await;
    assert!(
        body["detail"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
    server.shutdown().await;
}
