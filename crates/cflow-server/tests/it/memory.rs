//! Memory over HTTP: versions and ETags, compare-and-set, delete, pagination, search, TTL, and
//! concurrent compare-and-set increments that lose no update (SQLite and PostgreSQL).

use crate::common::{eventually, expect_json, expect_problem};
use cflow_test_support::server::TestServer;
use serde_json::{Value, json};
use std::time::Duration;

struct Mem<'a> {
    server: &'a TestServer,
    token: String,
}

impl Mem<'_> {
    fn url(&self, ns: &str, key: &str) -> String {
        self.server.at(&format!("/api/v1/memory/{ns}/{key}"))
    }

    async fn put(
        &self,
        ns: &str,
        key: &str,
        body: Value,
        header: Option<(&str, &str)>,
    ) -> reqwest::Response {
        let mut req = self
            .server
            .client()
            .put(self.url(ns, key))
            .bearer_auth(&self.token)
            .json(&body);
        if let Some((h, v)) = header {
            req = req.header(h, v);
        }
        req.send().await.unwrap()
    }

    async fn get(&self, ns: &str, key: &str) -> reqwest::Response {
        self.server
            .client()
            .get(self.url(ns, key))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }

    async fn value(&self, ns: &str, key: &str) -> Value {
        expect_json(self.get(ns, key).await, 200).await
    }

    async fn get_path(&self, path: &str) -> Value {
        let resp = self
            .server
            .client()
            .get(self.server.at(path))
            .bearer_auth(&self.token)
            .send();
        expect_json(resp.await.unwrap(), 200).await
    }
}

async fn setup(server: &TestServer) -> Mem<'_> {
    let (_, token) = server.tenant_with_key("acme", "developer").await;
    Mem { server, token }
}

#[tokio::test]
async fn put_get_etag_and_compare_and_set() {
    let server = TestServer::start_sqlite().await;
    let m = setup(&server).await;
    let resp = m
        .put(
            "notes",
            "plan",
            json!({"value": {"step": 1}, "tags": ["a"]}),
            None,
        )
        .await;
    assert_eq!(resp.headers()["etag"], "\"1\"");
    let meta = expect_json(resp, 200).await;
    assert_eq!(meta["version"], 1);
    assert_eq!(
        (meta["namespace"].clone(), meta["key"].clone()),
        (json!("notes"), json!("plan"))
    );
    assert!(
        meta.get("value").is_none(),
        "a write answers with metadata only"
    );
    assert!(meta["created_at"].as_str().unwrap().ends_with('Z'));

    let resp = m.get("notes", "plan").await;
    assert_eq!(resp.headers()["etag"], "\"1\"");
    let e = expect_json(resp, 200).await;
    assert_eq!(
        (
            e["value"].clone(),
            e["tags"].clone(),
            e["expires_at"].clone()
        ),
        (json!({"step": 1}), json!(["a"]), Value::Null)
    );

    let v2 = expect_json(m.put("notes", "plan", json!({"value": 2}), None).await, 200).await;
    assert_eq!(v2["version"], 2);

    // A stale If-Match writes nothing and says what the version is.
    let body = expect_problem(
        m.put(
            "notes",
            "plan",
            json!({"value": "stale"}),
            Some(("if-match", "\"1\"")),
        )
        .await,
        412,
        "precondition-failed",
    )
    .await;
    assert_eq!(body["current_version"], 2, "{body}");
    assert_eq!(m.value("notes", "plan").await["value"], 2);
    let v3 = expect_json(
        m.put(
            "notes",
            "plan",
            json!({"value": 3}),
            Some(("if-match", "\"2\"")),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(v3["version"], 3);

    // If-None-Match: * writes only when absent.
    let body = expect_problem(
        m.put(
            "notes",
            "plan",
            json!({"value": "x"}),
            Some(("if-none-match", "*")),
        )
        .await,
        412,
        "precondition-failed",
    )
    .await;
    assert_eq!(body["current_version"], 3);
    let fresh = expect_json(
        m.put(
            "notes",
            "fresh",
            json!({"value": 0}),
            Some(("if-none-match", "*")),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(fresh["version"], 1);
    // If-Match on an absent entry: current_version is null.
    let body = expect_problem(
        m.put(
            "notes",
            "absent",
            json!({"value": 0}),
            Some(("if-match", "\"1\"")),
        )
        .await,
        412,
        "precondition-failed",
    )
    .await;
    assert_eq!(body.get("current_version"), Some(&Value::Null), "{body}");
    expect_problem(m.get("notes", "absent").await, 404, "not-found").await;

    // A conditional GET at the current version is 304.
    let resp = server
        .client()
        .get(m.url("notes", "plan"))
        .bearer_auth(&m.token)
        .header("if-none-match", "\"3\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 304);
    assert_eq!(resp.headers()["etag"], "\"3\"");
    server.shutdown().await;
}

#[tokio::test]
async fn delete_with_and_without_precondition() {
    let server = TestServer::start_sqlite().await;
    let m = setup(&server).await;
    expect_json(m.put("notes", "d", json!({"value": 1}), None).await, 200).await;
    let del = |h: Option<(&'static str, &'static str)>| {
        let mut req = server
            .client()
            .delete(m.url("notes", "d"))
            .bearer_auth(&m.token);
        if let Some((k, v)) = h {
            req = req.header(k, v);
        }
        req.send()
    };
    let body = expect_problem(
        del(Some(("if-match", "\"7\""))).await.unwrap(),
        412,
        "precondition-failed",
    )
    .await;
    assert_eq!(body["current_version"], 1);
    assert_eq!(
        m.value("notes", "d").await["version"],
        1,
        "nothing was deleted"
    );
    let resp = del(Some(("if-match", "\"1\""))).await.unwrap();
    assert_eq!(resp.status(), 204);
    expect_problem(m.get("notes", "d").await, 404, "not-found").await;
    expect_problem(del(None).await.unwrap(), 404, "not-found").await;
    server.shutdown().await;
}

#[tokio::test]
async fn namespaces_with_slashes_travel_percent_encoded() {
    let server = TestServer::start_sqlite().await;
    let m = setup(&server).await;
    let meta = expect_json(
        m.put("project%2Fweb", "a%2Fb c", json!({"value": 1}), None)
            .await,
        200,
    )
    .await;
    assert_eq!(
        (meta["namespace"].clone(), meta["key"].clone()),
        (json!("project/web"), json!("a/b c"))
    );
    assert_eq!(m.value("project%2Fweb", "a%2Fb%20c").await["value"], 1);
    let page = m.get_path("/api/v1/memory/project%2Fweb").await;
    assert_eq!(page["items"][0]["key"], "a/b c");
    server.shutdown().await;
}

#[tokio::test]
async fn list_pages_through_a_namespace() {
    let server = TestServer::start_sqlite().await;
    let m = setup(&server).await;
    for i in 0..25 {
        expect_json(
            m.put("pages", &format!("k{i:02}"), json!({"value": i}), None)
                .await,
            200,
        )
        .await;
    }
    expect_json(
        m.put("pages", "other", json!({"value": 0}), None).await,
        200,
    )
    .await;
    expect_json(
        m.put("elsewhere", "k99", json!({"value": 0}), None).await,
        200,
    )
    .await;
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = "/api/v1/memory/pages?prefix=k&limit=10".to_string();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = m.get_path(&path).await;
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            keys.push(item["key"].as_str().unwrap().to_string());
            assert!(item["value"].is_number());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 10, "pagination terminates");
    }
    let expected: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
    assert_eq!(keys, expected);
    assert!((3..=4).contains(&pages), "{pages} pages");
    let all = m.get_path("/api/v1/memory/pages").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 26);
    server.shutdown().await;
}

#[tokio::test]
async fn search_finds_words_in_keys_values_and_tags() {
    let server = TestServer::start_sqlite().await;
    let m = setup(&server).await;
    expect_json(
        m.put(
            "notes",
            "deploy-plan",
            json!({"value": "roll out the gateway on friday"}),
            None,
        )
        .await,
        200,
    )
    .await;
    expect_json(
        m.put(
            "notes",
            "lunch",
            json!({"value": "pizza", "tags": ["gateway"]}),
            None,
        )
        .await,
        200,
    )
    .await;
    expect_json(
        m.put(
            "ops",
            "runbook",
            json!({"value": {"text": "restart the gateway"}}),
            None,
        )
        .await,
        200,
    )
    .await;
    expect_json(
        m.put("ops", "unrelated", json!({"value": "nothing to see"}), None)
            .await,
        200,
    )
    .await;

    let hits = m.get_path("/api/v1/memory/search?q=gateway").await;
    let mut found: Vec<String> = hits["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            assert!(h["score"].is_number(), "{h}");
            format!(
                "{}/{}",
                h["namespace"].as_str().unwrap(),
                h["key"].as_str().unwrap()
            )
        })
        .collect();
    found.sort();
    assert_eq!(found, ["notes/deploy-plan", "notes/lunch", "ops/runbook"]);
    let hits = m.get_path("/api/v1/memory/search?q=gateway%20friday").await;
    assert_eq!(
        hits["items"].as_array().unwrap().len(),
        1,
        "every term must match: {hits}"
    );
    let hits = m
        .get_path("/api/v1/memory/search?q=GATEWAY&namespace=ops")
        .await;
    assert_eq!(hits["items"][0]["key"], "runbook");
    assert_eq!(hits["items"].as_array().unwrap().len(), 1);
    let hits = m.get_path("/api/v1/memory/search?q=gateway&limit=1").await;
    assert_eq!(hits["items"].as_array().unwrap().len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let server = TestServer::start_with(|c| c.memory_purge_interval_secs = 1).await;
    let m = setup(&server).await;
    let meta = expect_json(
        m.put(
            "notes",
            "brief",
            json!({"value": 1, "ttl_seconds": 1}),
            None,
        )
        .await,
        200,
    )
    .await;
    assert!(meta["expires_at"].is_string(), "{meta}");
    expect_json(
        m.put("notes", "lasting", json!({"value": 2}), None).await,
        200,
    )
    .await;
    eventually("the entry to expire", Duration::from_secs(20), async || {
        (m.get("notes", "brief").await.status() == 404).then_some(())
    })
    .await;
    let page = m.get_path("/api/v1/memory/notes").await;
    let keys: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["lasting"]);
    server.shutdown().await;
}

/// Many clients increment one counter by read → `PUT If-Match` → retry on 412; every increment
/// must land exactly once.
async fn concurrent_increments(server: TestServer) {
    const CLIENTS: usize = 20;
    const PER_CLIENT: usize = 10;
    let (_, token) = server.tenant_with_key("acme", "developer").await;
    let url = server.at("/api/v1/memory/counters/hits");
    let init = cflow_test_support::server::client()
        .put(&url)
        .bearer_auth(&token)
        .json(&json!({"value": 0}))
        .send()
        .await
        .unwrap();
    expect_json(init, 200).await;

    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (url, token) = (url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let client = cflow_test_support::server::client();
            let mut conflicts = 0u32;
            for _ in 0..PER_CLIENT {
                loop {
                    let cur = expect_json(
                        client.get(&url).bearer_auth(&token).send().await.unwrap(),
                        200,
                    )
                    .await;
                    let (n, version) = (
                        cur["value"].as_i64().unwrap(),
                        cur["version"].as_i64().unwrap(),
                    );
                    let resp = client
                        .put(&url)
                        .bearer_auth(&token)
                        .header("if-match", format!("\"{version}\""))
                        .json(&json!({ "value": n + 1 }))
                        .send()
                        .await
                        .unwrap();
                    match resp.status().as_u16() {
                        200 => break,
                        412 => conflicts += 1,
                        s => panic!("unexpected {s}: {}", resp.text().await.unwrap()),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let total = (CLIENTS * PER_CLIENT) as i64;
    let client = cflow_test_support::server::client();
    let end = expect_json(
        client.get(&url).bearer_auth(&token).send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(
        end["value"], total,
        "no increment was lost ({conflicts} retries)"
    );
    assert_eq!(end["version"], total + 1);
    server.shutdown().await;
}

#[tokio::test]
async fn concurrent_cas_increments_lose_nothing_on_sqlite() {
    concurrent_increments(TestServer::start_sqlite().await).await;
}

#[tokio::test]
async fn concurrent_cas_increments_lose_nothing_on_postgres() {
    let Some(server) = TestServer::start_postgres().await else {
        eprintln!("skipped: no PostgreSQL configured (set CFLOW_TEST_DATABASE_URL)");
        return;
    };
    concurrent_increments(server).await;
}

#[tokio::test]
async fn memory_round_trip_on_postgres() {
    let Some(server) = TestServer::start_postgres().await else {
        eprintln!("skipped: no PostgreSQL configured (set CFLOW_TEST_DATABASE_URL)");
        return;
    };
    let m = setup(&server).await;
    expect_json(
        m.put(
            "notes",
            "pg",
            json!({"value": "on postgres", "tags": ["pg"]}),
            None,
        )
        .await,
        200,
    )
    .await;
    let body = expect_problem(
        m.put(
            "notes",
            "pg",
            json!({"value": 1}),
            Some(("if-match", "\"9\"")),
        )
        .await,
        412,
        "precondition-failed",
    )
    .await;
    assert_eq!(body["current_version"], 1);
    let hits = m.get_path("/api/v1/memory/search?q=postgres").await;
    assert_eq!(hits["items"][0]["key"], "pg");
    server.shutdown().await;
}
