//! HTTPS with a certificate generated at test time, trusted by the client.

use crate::common::expect_json;
use cflow_test_support::server::TestServer;

#[tokio::test]
async fn serves_https_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("self-signed certificate");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();

    let server = TestServer::start_with(|c| {
        c.tls_cert = Some(cert_path.clone());
        c.tls_key = Some(key_path.clone());
    })
    .await;
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let health = expect_json(client.get(server.at("/healthz")).send().await.unwrap(), 200).await;
    assert_eq!(health["status"], "ok");
    let resp = client
        .get(server.at("/api/v1/whoami"))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(expect_json(resp, 200).await["role"], "superadmin");

    // A client that does not trust the certificate is refused, and plain HTTP gets no answer.
    let untrusting = reqwest::Client::builder()
        .tls_certs_only([])
        .build()
        .unwrap();
    assert!(untrusting.get(server.at("/healthz")).send().await.is_err());
    let plain = format!("http://{}/healthz", server.addr);
    let answered = server
        .client()
        .get(&plain)
        .send()
        .await
        .map(|r| r.status().is_success());
    assert!(
        !matches!(answered, Ok(true)),
        "plain HTTP must not be served on the TLS port"
    );
    server.shutdown().await;
}
