//! The audit ledger over HTTP: writes and refusals are recorded with principal, action, outcome,
//! request id and source; who may read it; and the chain verifies.

use crate::common::{expect_json, expect_problem};
use cflow_test_support::server::TestServer;
use serde_json::{Value, json};

/// Every ledger entry visible to `token`, following cursors.
async fn ledger(server: &TestServer, token: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/api/v1/audit?limit=50".to_string();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let resp = server
            .client()
            .get(server.at(&path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let page = expect_json(resp, 200).await;
        out.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

fn by_request<'a>(entries: &'a [Value], request_id: &str) -> &'a Value {
    entries
        .iter()
        .find(|e| e["request_id"] == request_id)
        .unwrap_or_else(|| panic!("no audit entry for request {request_id}"))
}

#[tokio::test]
async fn writes_and_refusals_are_in_the_ledger() {
    let server = TestServer::start_sqlite().await;
    let (acme, admin) = server.tenant_with_key("acme", "admin").await;
    let dev = server
        .create_key_json(&acme, "dev", "developer", None)
        .await;
    let viewer = server
        .create_key_json(&acme, "viewer", "viewer", None)
        .await;
    let revoked = server
        .create_key_json(&acme, "gone", "developer", None)
        .await;
    let put = |token: &str, rid: &str, body: Value| {
        server
            .client()
            .put(server.at("/api/v1/memory/notes/plan"))
            .bearer_auth(token)
            .header("x-request-id", rid)
            .json(&body)
            .send()
    };

    // A successful write.
    let resp = put(
        dev["token"].as_str().unwrap(),
        "it-write-1",
        json!({"value": 1}),
    )
    .await
    .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "it-write-1");
    expect_json(resp, 200).await;
    // Forbidden: a viewer writes.
    expect_problem(
        put(
            viewer["token"].as_str().unwrap(),
            "it-forbidden-1",
            json!({"value": 2}),
        )
        .await
        .unwrap(),
        403,
        "forbidden",
    )
    .await;
    // Invalid input on a mutating route.
    expect_problem(
        put(
            dev["token"].as_str().unwrap(),
            "it-invalid-1",
            json!({"value": 2, "bogus": 1}),
        )
        .await
        .unwrap(),
        422,
        "validation",
    )
    .await;
    // Unauthenticated: a revoked key, then no key at all.
    let rid = revoked["id"].as_str().unwrap();
    let resp = server
        .client()
        .delete(server.at(&format!("/api/v1/keys/{rid}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    expect_json(resp, 200).await;
    expect_problem(
        put(
            revoked["token"].as_str().unwrap(),
            "it-revoked-1",
            json!({"value": 3}),
        )
        .await
        .unwrap(),
        401,
        "unauthenticated",
    )
    .await;
    let resp = server
        .client()
        .put(server.at("/api/v1/memory/notes/plan"))
        .header("x-request-id", "it-anon-1")
        .json(&json!({"value": 4}))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 401, "unauthenticated").await;

    let entries = ledger(&server, &admin).await;
    let write = by_request(&entries, "it-write-1");
    assert_eq!(write["action"], "memory.write");
    assert_eq!(write["outcome"], "success");
    assert_eq!(write["principal_id"], dev["principal_id"]);
    assert_eq!(write["tenant_id"], acme);
    assert_eq!(write["source"], "127.0.0.1");

    let denied = by_request(&entries, "it-forbidden-1");
    assert_eq!(
        (denied["action"].clone(), denied["outcome"].clone()),
        (json!("memory.write"), json!("forbidden"))
    );
    assert_eq!(denied["principal_id"], viewer["principal_id"]);
    assert_eq!(denied["resource"], "/api/v1/memory/notes/plan");
    assert_eq!(denied["source"], "127.0.0.1");
    assert_eq!(denied["detail"]["status"], 403);

    let invalid = by_request(&entries, "it-invalid-1");
    assert_eq!(invalid["outcome"], "invalid");
    assert_eq!(invalid["detail"]["field"], "bogus");

    let unauth = by_request(&entries, "it-revoked-1");
    assert_eq!(unauth["outcome"], "unauthenticated");
    assert_eq!(unauth["principal_id"], revoked["principal_id"]);
    assert!(
        unauth["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
    // An anonymous refusal belongs to no tenant: only the superadmin sees it.
    assert!(entries.iter().all(|e| e["request_id"] != "it-anon-1"));
    let all = ledger(&server, &server.admin_token).await;
    let anon = by_request(&all, "it-anon-1");
    assert_eq!(
        (anon["outcome"].clone(), anon["tenant_id"].clone()),
        (json!("unauthenticated"), Value::Null)
    );
    // The tenant admin sees only its tenant.
    assert!(
        entries.iter().all(|e| e["tenant_id"] == acme),
        "tenant isolation of the ledger"
    );
    assert!(all.len() > entries.len());

    // No token or secret ever reaches the ledger.
    let text = serde_json::to_string(&all).unwrap();
    for t in [&admin, dev["token"].as_str().unwrap(), &server.admin_token] {
        assert!(
            !text.contains(t.rsplit('_').next().unwrap()),
            "a secret reached the ledger"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn who_may_read_and_verify_the_ledger() {
    let server = TestServer::start_sqlite().await;
    let (acme, admin) = server.tenant_with_key("acme", "admin").await;
    for role in ["viewer", "developer", "operator"] {
        let token = server.create_key(&acme, role, role).await;
        for path in ["/api/v1/audit", "/api/v1/audit/verify"] {
            let resp = server
                .client()
                .get(server.at(path))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            expect_problem(resp, 403, "forbidden").await;
        }
    }
    let auditor = server.create_key(&acme, "auditor", "auditor").await;
    for token in [&auditor, &admin, &server.admin_token] {
        let resp = server
            .client()
            .get(server.at("/api/v1/audit/verify"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let report = expect_json(resp, 200).await;
        assert_eq!(report["intact"], true, "{report}");
        assert!(report["verified"].as_u64().unwrap() > 5, "{report}");
        assert_eq!(report["first_break"], Value::Null);
        assert!(!ledger(&server, token).await.is_empty());
    }
    // `since` filters by time and must be RFC 3339.
    let later = expect_json(
        server
            .client()
            .get(server.at("/api/v1/audit?since=2999-01-01T00:00:00Z"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(later["items"], json!([]));
    let resp = server
        .client()
        .get(server.at("/api/v1/audit?since=yesterday"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let body = expect_problem(resp, 400, "bad-request").await;
    assert_eq!(body["field"], "since");
    server.shutdown().await;
}
