//! Operations endpoints and process-level behaviour: health, readiness, metrics, `run` and its
//! admin token file, and start-up errors a user can act on.

use crate::common::{eventually, expect_json, expect_problem};
use cflow_server::{ServerConfig, ServerError};
use cflow_test_support::server::TestServer;
use std::time::Duration;

#[tokio::test]
async fn health_and_readiness() {
    let server = TestServer::start_sqlite().await;
    let resp = server
        .client()
        .get(server.at("/healthz"))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(
        expect_json(resp, 200).await,
        serde_json::json!({"status": "ok"})
    );
    let ready = expect_json(
        server
            .client()
            .get(server.at("/readyz"))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(ready["status"], "ready");
    // With the database gone, the server is alive but not ready.
    server.store.close().await;
    let resp = server
        .client()
        .get(server.at("/readyz"))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 503, "unavailable").await;
    expect_json(
        server
            .client()
            .get(server.at("/healthz"))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn metrics_need_a_superadmin_and_use_route_templates() {
    let server = TestServer::start_sqlite().await;
    let (_, admin) = server.tenant_with_key("acme", "admin").await;
    expect_problem(
        server
            .client()
            .get(server.at("/metrics"))
            .send()
            .await
            .unwrap(),
        401,
        "unauthenticated",
    )
    .await;
    let resp = server
        .client()
        .get(server.at("/metrics"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    expect_problem(resp, 403, "forbidden").await;
    // Traffic to a parameterised route.
    let resp = server
        .client()
        .get(server.at("/api/v1/memory/some-ns/some-key"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not-found").await;
    let resp = server
        .client()
        .get(server.at("/metrics"))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = resp.text().await.unwrap();
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/api/v1/memory/{namespace}/{key}",status="404"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/metrics",status="401"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("http_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(!text.contains("some-key"), "raw paths never become labels");
    server.shutdown().await;
}

#[tokio::test]
async fn metrics_can_be_public() {
    let server = TestServer::start_with(|c| c.metrics_public = true).await;
    let resp = server
        .client()
        .get(server.at("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    server.shutdown().await;
}

#[tokio::test]
async fn run_writes_a_private_admin_token_once_and_stops_on_its_signal() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().join("data"),
        ..ServerConfig::default()
    };
    let token_path = config.data_dir.join("admin.token");
    for round in 0..2 {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(cflow_server::run(config.clone(), async {
            let _ = rx.await;
        }));
        let token = eventually("admin.token", Duration::from_secs(20), async || {
            std::fs::read_to_string(&token_path)
                .ok()
                .filter(|t| t.ends_with('\n'))
        })
        .await;
        tx.send(()).unwrap();
        server.await.unwrap().expect("run ends cleanly");
        let mode = std::fs::metadata(&token_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "round {round}");
        assert!(token.trim().starts_with("cflow_"));
        // Read again once `run` has returned, so that a late rewrite would be seen.
        let after = std::fs::read_to_string(&token_path).unwrap();
        assert_eq!(after, token);
        if round == 0 {
            std::fs::write(dir.path().join("first"), &token).unwrap();
        } else {
            // A second start on the same database must not mint another superadmin key.
            let first = std::fs::read_to_string(dir.path().join("first")).unwrap();
            assert_eq!(
                after, first,
                "the token file is written only on the first start"
            );
        }
    }
}

#[tokio::test]
async fn start_up_errors_say_what_to_do() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = cflow_server::bind(&addr).unwrap_err();
    assert!(matches!(err, ServerError::AddressInUse { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("address in use") && msg.contains("--listen"),
        "{msg}"
    );
    let err = cflow_server::bind("not an address").unwrap_err();
    assert!(err.to_string().contains("expected HOST:PORT"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        data_dir: dir.path().join("data"),
        tls_cert: Some(dir.path().join("cert.pem")),
        ..ServerConfig::default()
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = cflow_server::start(config.clone(), listener)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("tls_key"), "{err}");
    let config = ServerConfig {
        tls_key: Some(dir.path().join("key.pem")),
        ..config
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = cflow_server::start(config, listener)
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, ServerError::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains("PEM"), "{err}");
}
