//! Helpers shared by the integration tests: problem assertions, polling with a deadline, and
//! authenticated GET/PUT.

use reqwest::Response;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Asserts that `resp` is a problem+json of `status` and type `urn:cflow:problem:<kind>` that
/// carries the response's request id; returns the body.
pub async fn expect_problem(resp: Response, status: u16, kind: &str) -> Value {
    let got = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let header_id = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    let text = resp.text().await.expect("body");
    assert_eq!(got, status, "status; body: {text}");
    assert!(
        ct.starts_with("application/problem+json"),
        "content type {ct:?}; body: {text}"
    );
    let body: Value = serde_json::from_str(&text).expect("problem body is JSON");
    assert_eq!(body["type"], format!("urn:cflow:problem:{kind}"), "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert!(body["title"].is_string(), "{body}");
    assert!(body["detail"].is_string(), "{body}");
    let id = header_id.expect("x-request-id header");
    assert_eq!(body["request_id"], id, "{body}");
    body
}

/// Reads a JSON answer and asserts its status.
pub async fn expect_json(resp: Response, status: u16) -> Value {
    let got = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    assert_eq!(got, status, "status; body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Polls `check` until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `GET path` with `token`.
pub async fn get_as(
    server: &cflow_test_support::server::TestServer,
    token: &str,
    path: &str,
) -> Response {
    server
        .client()
        .get(server.at(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// `PUT path` with `token` and a JSON body.
pub async fn put_as(
    server: &cflow_test_support::server::TestServer,
    token: &str,
    path: &str,
    body: &serde_json::Value,
) -> Response {
    server
        .client()
        .put(server.at(path))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}
