//! Where webhooks may go (`[server.hooks] allow_private_destinations`, `allowed_destinations`):
//! by default a tenant admin cannot point a webhook at the server's loopback, its private
//! network or a cloud metadata address — not at creation, and not at send time for a hook that
//! was stored before the rule (an IP address checked before the request, a name through the
//! client's resolver). An operator's exception lets one destination through.

use crate::common::{expect_json, expect_problem};
use crate::hooks::{Receiver, add_hook, put_secret};
use crate::orchestration::Api;
use cflow_test_support::server::TestServer;
use serde_json::{Value, json};

fn strict(c: &mut cflow_server::ServerConfig) {
    c.hooks.allow_private_destinations = false;
}

#[tokio::test]
async fn webhooks_to_internal_addresses_are_refused_at_creation() {
    let server = TestServer::start_with(strict).await;
    let (_, admin) = server.tenant_with_key("dest", "admin").await;
    let api = Api::new(&server, &admin);
    put_secret(&api, "WH_KEY", "k").await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.7/hook",
        "http://[::1]:9/hook",
        "http://[::ffff:192.168.0.1]/hook",
    ] {
        let resp = api
            .post(
                "/api/v1/hooks",
                json!({"name": "h", "events": ["task.failed"], "url": url, "secret": "WH_KEY"}),
            )
            .await;
        let p = expect_problem(resp, 422, "validation").await;
        let detail = p["detail"].as_str().unwrap();
        assert!(
            detail.contains("allowed_destinations") && detail.contains("public"),
            "{url}: {p}"
        );
    }
    let listed = api.get_json("/api/v1/hooks").await;
    assert_eq!(listed["items"], json!([]), "nothing was created: {listed}");
    // A public destination is accepted (nothing is sent until an event matches).
    add_hook(
        &api,
        json!({"name": "ok", "events": ["task.failed"], "url": "https://hooks.example.com/x",
               "secret": "WH_KEY"}),
    )
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn an_operator_exception_lets_one_internal_destination_through() {
    let server = TestServer::start_with(|c| {
        strict(c);
        c.hooks.allowed_destinations = vec!["127.0.0.1/32".to_string()];
    })
    .await;
    let (_, admin) = server.tenant_with_key("dest-allow", "admin").await;
    let api = Api::new(&server, &admin);
    put_secret(&api, "WH_KEY", "the-key").await;
    let receiver = Receiver::ok(0).await;
    let hook = add_hook(
        &api,
        json!({"name": "ok", "events": ["task.failed"],
               "url": format!("http://127.0.0.1:{}/hook", receiver.port), "secret": "WH_KEY"}),
    )
    .await;
    let id = hook["id"].as_str().unwrap();
    let tested = expect_json(
        api.post_empty(&format!("/api/v1/hooks/{id}/test")).await,
        200,
    )
    .await;
    assert_eq!(tested["ok"], true, "{tested}");
    let hits = receiver.hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    hits[0].verify("the-key");
    // Only that block: another loopback address is still refused.
    let resp = api
        .post(
            "/api/v1/hooks",
            json!({"name": "other", "events": ["task.failed"], "url": "http://127.0.0.2:1/h",
                   "secret": "WH_KEY"}),
        )
        .await;
    expect_problem(resp, 422, "validation").await;
    server.shutdown().await;
}

/// Hooks stored while internal destinations were allowed, sent after the operator forbade them:
/// the IP address and the name that resolves to loopback are both refused, nothing arrives.
#[tokio::test]
async fn hooks_stored_before_the_rule_are_refused_when_sent() {
    let server = TestServer::start_sqlite().await;
    let (_, admin) = server.tenant_with_key("dest-later", "admin").await;
    let api = Api::new(&server, &admin);
    put_secret(&api, "WH_KEY", "k").await;
    let receiver = Receiver::ok(0).await;
    // The machine's own name resolves to one of its addresses (loopback or private): it is
    // checked by the client's resolver, not by its spelling.
    let own = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let own_is_internal = !own.is_empty()
        && std::net::ToSocketAddrs::to_socket_addrs(&(own.as_str(), 80)).is_ok_and(|mut a| {
            a.all(|a| match a.ip() {
                std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
                std::net::IpAddr::V6(v6) => v6.is_loopback(),
            })
        });
    let mut hosts = vec![
        ("by-ip", "127.0.0.1", "is a loopback address"),
        ("by-name", "localhost", "is a loopback address"),
    ];
    if own_is_internal {
        hosts.push(("by-resolution", own.as_str(), "resolves to"));
    } else {
        eprintln!("the host name '{own}' does not resolve to internal addresses only; skipping it");
    }
    let mut ids = Vec::new();
    for (name, host, _) in &hosts {
        let hook = add_hook(
            &api,
            json!({"name": name, "events": ["task.failed"],
                   "url": format!("http://{host}:{}/hook", receiver.port), "secret": "WH_KEY"}),
        )
        .await;
        ids.push(hook["id"].as_str().unwrap().to_string());
    }

    let mut config = server.config.clone();
    config.hooks.allow_private_destinations = false;
    let _dir = server.shutdown_keeping_data().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let running = cflow_server::start(config, listener)
        .await
        .expect("restart");
    let client = cflow_test_support::server::client();
    for (id, (_, _, kind)) in ids.iter().zip(&hosts) {
        let resp = client
            .post(format!("{}/api/v1/hooks/{id}/test", running.url()))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        let tested: Value = expect_json(resp, 200).await;
        assert_eq!(tested["ok"], false, "{tested}");
        let error = tested["error"].as_str().unwrap();
        assert!(
            error.contains(kind) && error.contains("allowed_destinations"),
            "{id}: {tested}"
        );
    }
    assert!(receiver.hits().is_empty(), "{:?}", receiver.hits());
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_bad_destination_setting_stops_the_server_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = cflow_server::ServerConfig {
        listen: "127.0.0.1:0".to_string(),
        data_dir: dir.path().join("data"),
        ..cflow_server::ServerConfig::default()
    };
    config.hooks.allowed_destinations = vec!["10.0.0.0/40".to_string()];
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = match cflow_server::start(config, listener).await {
        Ok(_) => panic!("a bad allowed_destinations entry was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("allowed_destinations") && err.contains("10.0.0.0/40"),
        "{err}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing was created before the check"
    );
}
