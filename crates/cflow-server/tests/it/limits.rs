//! Rate limits per key and per tenant (429 with Retry-After, audited) and the body limit.

use crate::common::{eventually, expect_json, expect_problem};
use cflow_core::Role;
use cflow_core::audit::AuditEntry;
use cflow_store::{AuditContext, AuditQuery, CreatedKey, NewKey, PageRequest};
use cflow_test_support::server::TestServer;
use serde_json::json;
use std::time::{Duration, Instant};

/// Creates a key through the store, so that setting up does not spend the superadmin's tokens.
async fn store_key(server: &TestServer, tenant: &str, name: &str, role: Role) -> CreatedKey {
    let new = NewKey {
        name: name.to_string(),
        role,
        project: None,
        expires_at: None,
    };
    server
        .store
        .create_key(&AuditContext::default(), tenant, new)
        .await
        .unwrap()
}

async fn store_tenant(server: &TestServer, name: &str) -> String {
    server
        .store
        .create_tenant(&AuditContext::default(), name)
        .await
        .unwrap()
        .id
}

async fn whoami(server: &TestServer, token: &str, rid: &str) -> reqwest::Response {
    server
        .client()
        .get(server.at("/api/v1/whoami"))
        .bearer_auth(token)
        .header("x-request-id", rid)
        .send()
        .await
        .unwrap()
}

/// Sends requests with `token` until one is refused; returns it. The bucket is tiny and refills
/// slowly, so this takes a few requests whatever the machine's speed.
async fn first_refusal(server: &TestServer, token: &str) -> reqwest::Response {
    for i in 0..50 {
        let resp = whoami(server, token, &format!("it-rl-{i}")).await;
        if resp.status() == 429 {
            return resp;
        }
        assert_eq!(resp.status(), 200);
    }
    panic!("no request was rate limited");
}

#[tokio::test]
async fn per_key_limit_refuses_with_retry_after_and_spares_other_keys() {
    let server = TestServer::start_with(|c| {
        c.rate_limit.per_key_rps = 1;
        c.rate_limit.per_key_burst = 3;
    })
    .await;
    let acme = store_tenant(&server, "acme").await;
    let admin = store_key(&server, &acme, "admin", Role::Admin).await.token;
    let a = store_key(&server, &acme, "a", Role::Developer).await;
    let b = store_key(&server, &acme, "b", Role::Developer).await.token;
    let a_token = a.token.as_str();

    let refused = first_refusal(&server, a_token).await;
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("whole seconds");
    assert!(retry >= 1);
    let rid = refused.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body = expect_problem(refused, 429, "rate-limited").await;
    assert!(
        body["detail"].as_str().unwrap().contains("retry after"),
        "{body}"
    );
    // Another key of the same tenant is not affected.
    expect_json(whoami(&server, &b, "it-other-key").await, 200).await;

    // The refusal is in the ledger with who and why.
    let page = expect_json(
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
    let entry = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["request_id"] == rid.as_str())
        .expect("429 audited");
    assert_eq!(entry["outcome"], "rate_limited");
    assert_eq!(entry["principal_id"], a.key.principal_id.as_str());
    assert_eq!(entry["action"], "whoami");
    server.shutdown().await;
}

#[tokio::test]
async fn per_tenant_limit_covers_all_keys_of_a_tenant_only() {
    let server = TestServer::start_with(|c| {
        c.rate_limit.per_tenant_rps = 1;
        c.rate_limit.per_tenant_burst = 4;
    })
    .await;
    let acme = store_tenant(&server, "acme").await;
    let k1 = store_key(&server, &acme, "k1", Role::Developer).await.token;
    let k2 = store_key(&server, &acme, "k2", Role::Developer).await.token;
    let other = store_tenant(&server, "other").await;
    let other = store_key(&server, &other, "o", Role::Developer).await.token;
    // Alternate two keys: together they exhaust the tenant's bucket.
    let mut refused = None;
    for i in 0..50 {
        let token = if i % 2 == 0 { &k1 } else { &k2 };
        let resp = whoami(&server, token, &format!("it-t-{i}")).await;
        if resp.status() == 429 {
            refused = Some(resp);
            break;
        }
    }
    let refused = refused.expect("the tenant bucket ran out");
    assert!(refused.headers().contains_key("retry-after"));
    expect_problem(refused, 429, "rate-limited").await;
    expect_json(whoami(&server, &other, "it-other-tenant").await, 200).await;
    server.shutdown().await;
}

/// The whole ledger, read through the store so that reading it is not itself a request.
async fn ledger(server: &TestServer) -> Vec<AuditEntry> {
    let page = PageRequest {
        cursor: None,
        limit: 1000,
    };
    let page = server
        .store
        .audit_list(&AuditQuery::default(), &page)
        .await
        .unwrap();
    assert!(page.next_cursor.is_none(), "the test ledger fits one page");
    page.items
}

/// Failed authentications from one address are audited one by one only up to the burst; after
/// that they are refused with 429 before the edge audits them, and one aggregated entry per
/// address records how many were suppressed. A valid key from the same address is unaffected.
#[tokio::test]
async fn failed_authentications_per_address_are_limited_and_audited_in_aggregate() {
    let server = TestServer::start_with(|c| {
        c.rate_limit.per_ip_auth_failures_rps = 1;
        c.rate_limit.per_ip_auth_failures_burst = 5;
    })
    .await;
    let before = ledger(&server).await.len();
    // Well-formed, so that each attempt costs a key lookup, but unknown.
    let bad = format!("cflow_{}_{}", "0".repeat(16), "0".repeat(64));
    let started = Instant::now();
    let (mut unauthenticated, mut limited) = (0u64, 0u64);
    for i in 0..20 {
        let resp = whoami(&server, &bad, &format!("it-flood-{i}")).await;
        if resp.status() == 401 {
            unauthenticated += 1;
            expect_problem(resp, 401, "unauthenticated").await;
        } else {
            assert!(i >= 5, "request {i} within the burst was refused");
            let retry: u64 = resp.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .expect("whole seconds");
            assert!(retry >= 1);
            let body = expect_problem(resp, 429, "rate-limited").await;
            assert!(
                body["detail"]
                    .as_str()
                    .unwrap()
                    .contains("failed authentications"),
                "{body}"
            );
            limited += 1;
        }
        if i == 10 {
            // The address's failure bucket is empty now, yet a valid key gets through.
            let ok = whoami(&server, &server.admin_token, "it-flood-valid").await;
            expect_json(ok, 200).await;
        }
    }
    // The bucket refills one token a second; a slow machine may earn a few more 401s.
    let refills = started.elapsed().as_secs() + 1;
    assert!(
        (5..=5 + refills).contains(&unauthenticated),
        "{unauthenticated} answered 401 in {:?}",
        started.elapsed()
    );
    assert!(limited > 0 && limited + unauthenticated == 20);

    // The suppressed failures appear in aggregate (the background task writes every 5 s).
    let ledger = eventually(
        "the aggregated entry",
        Duration::from_secs(30),
        async || {
            let entries = ledger(&server).await;
            let suppressed: u64 = entries
                .iter()
                .filter(|e| e.action == "auth" && e.outcome == "rate_limited")
                .map(|e| e.detail["suppressed"].as_u64().unwrap())
                .sum();
            (suppressed == limited).then_some(entries)
        },
    )
    .await;
    let aggregates: Vec<_> = ledger
        .iter()
        .filter(|e| e.action == "auth" && e.outcome == "rate_limited")
        .collect();
    for e in &aggregates {
        assert_eq!(e.source.as_deref(), Some("127.0.0.1"), "{e:?}");
        assert_eq!(e.tenant_id, None, "{e:?}");
    }
    // Each 401 is audited on its own; the 429s are not.
    let audited: Vec<_> = ledger
        .iter()
        .filter_map(|e| e.request_id.as_deref())
        .filter(|r| r.starts_with("it-flood-"))
        .collect();
    assert_eq!(audited.len() as u64, unauthenticated, "{audited:?}");
    // The ledger grew by the 401s and a couple of aggregated entries, not by the flood.
    let grown = (ledger.len() - before) as u64;
    assert!(
        grown <= unauthenticated + 3,
        "the ledger grew by {grown} for {unauthenticated} 401s and {limited} 429s"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn body_over_the_limit_is_413_and_audited() {
    let server = TestServer::start_with(|c| c.max_body_bytes = 4096).await;
    let (acme, dev) = server.tenant_with_key("acme", "developer").await;
    let resp = server
        .client()
        .put(server.at("/api/v1/memory/notes/big"))
        .bearer_auth(&dev)
        .header("x-request-id", "it-too-big")
        .json(&json!({ "value": "x".repeat(10_000) }))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 413, "payload-too-large").await;
    let now = crate::common::now_ms();
    assert!(
        server
            .store
            .memory_get(&acme, "notes", "big", now)
            .await
            .unwrap()
            .is_none()
    );
    let page = expect_json(
        server
            .client()
            .get(server.at("/api/v1/audit?limit=1000"))
            .bearer_auth(&server.admin_token)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let entry = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["request_id"] == "it-too-big")
        .expect("413 audited");
    assert_eq!(entry["outcome"], "invalid");
    server.shutdown().await;
}

#[tokio::test]
async fn a_request_over_the_time_limit_is_a_timeout_problem() {
    let server = TestServer::start_with(|c| c.request_timeout_secs = 1).await;
    let acme = store_tenant(&server, "acme").await;
    let dev = store_key(&server, &acme, "dev", Role::Developer)
        .await
        .token;
    // A body that never finishes keeps the handler waiting past the limit.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    tx.send(Ok(br#"{"value": "#.to_vec())).await.unwrap();
    let resp = server
        .client()
        .put(server.at("/api/v1/memory/notes/slow"))
        .bearer_auth(&dev)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let body = expect_problem(resp, 408, "timeout").await;
    assert!(body["detail"].as_str().unwrap().contains("1 s"), "{body}");
    drop(tx);
    let now = crate::common::now_ms();
    assert!(
        server
            .store
            .memory_get(&acme, "notes", "slow", now)
            .await
            .unwrap()
            .is_none()
    );
    server.shutdown().await;
}
