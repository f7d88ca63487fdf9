//! Secrets (`/api/v1/secrets`) and masking: values are sealed at rest, never returned, and
//! masked out of every surface a task's output reaches (task detail, logs, the event stream,
//! memory, the audit ledger); the master key's sources and the refusals of a bad one.

use crate::common::{expect_json, expect_problem};
use crate::events::SseReader;
use crate::orchestration::{Api, coders};
use cflow_server::secrets::MasterKeyText;
use cflow_test_support::server::TestServer;
use serde_json::json;

const SECRET: &str = "s3cr3t-value-XYZ123";
const AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
const PEM_BODY: &str = "MIIEowIBAAKCAQEA7nHbqGcFsoT3";

impl Api<'_> {
    async fn put_secret(&self, name: &str, value: &str) -> reqwest::Response {
        self.server
            .client()
            .put(self.server.at(&format!("/api/v1/secrets/{name}")))
            .bearer_auth(&self.token)
            .json(&json!({ "value": value }))
            .send()
            .await
            .expect("request")
    }

    async fn delete(&self, path: &str) -> reqwest::Response {
        self.server
            .client()
            .delete(self.server.at(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request")
    }
}

fn assert_clean(surface: &str, text: &str) {
    for raw in [SECRET, AWS_KEY, PEM_BODY] {
        assert!(!text.contains(raw), "{surface} contains {raw:?}: {text}");
    }
}

#[tokio::test]
async fn a_secret_printed_by_a_task_is_masked_everywhere() {
    let server = TestServer::start_sqlite().await;
    let (tenant, admin) = server.tenant_with_key("acme", "admin").await;
    let api = Api::new(&server, &admin);
    let meta = expect_json(api.put_secret("DEPLOY_TOKEN", SECRET).await, 200).await;
    assert_eq!(meta["name"], "DEPLOY_TOKEN");
    assert!(meta.get("value").is_none(), "{meta}");

    let mut stream = SseReader::open(&api, "", None).await;
    let swarm = api
        .create_swarm(json!({"name": "leaky", "topology": "mesh", "agents": coders(1)}))
        .await;
    // The command builds each value at run time, so that the task's own spec (which is the
    // user's, and is not masked) does not hold them.
    let command = "printf 's3cr3t-%s\\n' 'value-XYZ123'; printf 'AKIA%s\\n' 'IOSFODNN7EXAMPLE'; \
                   printf -- '-----BEGIN RSA %s\\nMIIEowIBAAKCAQEA7nHb%s\\n-----END RSA %s\\n' \
                   'PRIVATE KEY-----' 'qGcFsoT3' 'PRIVATE KEY-----'; \
                   printf 's3cr3t-%s' 'value-XYZ123' >&2; \
                   printf 'CFLOW_RESULT {\"token\": \"s3cr3t-%s\"}\n' 'value-XYZ123'";
    let t = api
        .submit(json!([{"swarm": swarm["id"], "spec": {"command": command}}]))
        .await;
    let task = t[0]["id"].as_str().unwrap().to_string();
    let seen = stream
        .until(|e| e.event == "task.succeeded" && e.data["subject"] == task.as_str())
        .await;

    // The event stream.
    for e in &seen {
        assert_clean(&format!("event {}", e.event), &e.data.to_string());
    }
    // The task and its attempts: the output was there, masked (the result too).
    let detail = api.task(&task).await;
    let text = detail.to_string();
    assert_clean("task detail", &text);
    assert!(text.contains(r#""token":"[REDACTED:secret]""#), "{text}");
    assert!(text.contains("[REDACTED:secret]"), "{text}");
    assert!(text.contains("[REDACTED:aws_access_key_id]"), "{text}");
    assert!(text.contains("[REDACTED:private_key]"), "{text}");
    // The logs.
    let logs = api.get_json(&format!("/api/v1/tasks/{task}/logs")).await;
    let text = logs.to_string();
    assert_clean("task logs", &text);
    assert!(text.contains("[REDACTED:secret]"), "{text}");

    // Memory: a value holding the secret is stored masked.
    let resp = server
        .client()
        .put(server.at("/api/v1/memory/notes/creds"))
        .bearer_auth(&admin)
        .json(&json!({ "value": { "note": format!("the token is {SECRET}"), "aws": AWS_KEY } }))
        .send()
        .await
        .unwrap();
    expect_json(resp, 200).await;
    let entry = api.get_json("/api/v1/memory/notes/creds").await;
    assert_clean("memory", &entry.to_string());
    assert_eq!(
        entry["value"]["note"], "the token is [REDACTED:secret]",
        "{entry}"
    );

    // The listing shows names and times only.
    let list = api.get_json("/api/v1/secrets").await;
    assert_clean("secret list", &list.to_string());
    assert_eq!(list["items"][0]["name"], "DEPLOY_TOKEN", "{list}");
    assert!(list["items"][0]["created_at"].is_string(), "{list}");

    // The ledger names the secret, never its value.
    let audit = api.get_json("/api/v1/audit?limit=1000").await;
    let text = audit.to_string();
    assert_clean("audit", &text);
    assert!(text.contains("secret.put"), "{text}");
    assert!(text.contains("secret/DEPLOY_TOKEN"), "{text}");

    // The server itself can open it (for the model drivers).
    assert_eq!(
        server
            .state()
            .secret_value(&tenant, "DEPLOY_TOKEN")
            .await
            .as_deref(),
        Some(SECRET)
    );
    assert_eq!(server.state().secret_value(&tenant, "NOPE").await, None);
    // At rest, the store holds no clear text.
    let sealed = server
        .store
        .secret_get(&tenant, "DEPLOY_TOKEN")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sealed.nonce.len(), 12);
    assert!(
        !sealed
            .ciphertext
            .windows(SECRET.len())
            .any(|w| w == SECRET.as_bytes())
    );
    server.shutdown().await;
}

#[tokio::test]
async fn secret_routes_check_role_name_and_value() {
    let server = TestServer::start_sqlite().await;
    let (tenant, admin) = server.tenant_with_key("acme", "admin").await;
    let developer = server.create_key(&tenant, "dev", "developer").await;
    let (_, rival) = server.tenant_with_key("rival", "admin").await;
    let api = Api::new(&server, &admin);
    let dev = Api::new(&server, &developer);
    let rival = Api::new(&server, &rival);

    expect_problem(
        dev.put_secret("X_TOKEN", "value-123").await,
        403,
        "forbidden",
    )
    .await;
    expect_problem(dev.get("/api/v1/secrets").await, 403, "forbidden").await;
    for bad in ["a%20b", "a$b", &"x".repeat(129)] {
        let body = expect_problem(api.put_secret(bad, "value-123").await, 422, "validation").await;
        assert_eq!(body["field"], "name", "{bad}: {body}");
    }
    let big = "v".repeat(64 * 1024 + 1);
    let body = expect_problem(api.put_secret("BIG", &big).await, 422, "validation").await;
    assert_eq!(body["field"], "value", "{body}");
    expect_problem(api.put_secret("EMPTY", "").await, 422, "validation").await;
    assert!(server.store.secret_list(&tenant).await.unwrap().is_empty());

    let first = expect_json(api.put_secret("X_TOKEN", "value-123").await, 200).await;
    let second = expect_json(api.put_secret("X_TOKEN", "value-456").await, 200).await;
    assert_eq!(
        first["created_at"], second["created_at"],
        "a replace keeps its creation"
    );
    expect_json(
        api.put_secret(&"x".repeat(128), &"v".repeat(64 * 1024))
            .await,
        200,
    )
    .await;
    assert_eq!(
        server
            .state()
            .secret_value(&tenant, "X_TOKEN")
            .await
            .as_deref(),
        Some("value-456")
    );
    // Another tenant sees none of it and cannot delete it.
    let theirs = rival.get_json("/api/v1/secrets").await;
    assert_eq!(theirs["items"], json!([]), "{theirs}");
    expect_problem(
        rival.delete("/api/v1/secrets/X_TOKEN").await,
        404,
        "not-found",
    )
    .await;
    expect_problem(
        dev.delete("/api/v1/secrets/X_TOKEN").await,
        403,
        "forbidden",
    )
    .await;

    assert_eq!(api.delete("/api/v1/secrets/X_TOKEN").await.status(), 204);
    expect_problem(
        api.delete("/api/v1/secrets/X_TOKEN").await,
        404,
        "not-found",
    )
    .await;
    assert_eq!(server.state().secret_value(&tenant, "X_TOKEN").await, None);
    let audit = api.get_json("/api/v1/audit?limit=1000").await.to_string();
    assert!(audit.contains("secret.delete"), "{audit}");
    assert!(!audit.contains("value-123") && !audit.contains("value-456"));
    server.shutdown().await;
}

#[tokio::test]
async fn the_master_key_file_is_created_private_and_reused() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start_sqlite().await;
    let (tenant, admin) = server.tenant_with_key("acme", "admin").await;
    let key_file = server.data_dir.join("master.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(text.trim().len(), 64, "32 bytes in hex");
    expect_json(
        Api::new(&server, &admin)
            .put_secret("KEPT", "kept-value-1")
            .await,
        200,
    )
    .await;
    let config = server.config.clone();
    let dir = server.shutdown_keeping_data().await;

    // Restarted on the same data directory: the same key opens the secret, and masks it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let running = cflow_server::start(config.clone(), listener).await.unwrap();
    let client = cflow_test_support::server::client();
    let resp = client
        .put(format!("{}/api/v1/memory/notes/kept", running.url()))
        .bearer_auth(&admin)
        .json(&json!({ "value": "x kept-value-1 y" }))
        .send()
        .await
        .unwrap();
    expect_json(resp, 200).await;
    let entry = running
        .store
        .memory_get(&tenant, "notes", "kept", crate::common::now_ms())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        entry.value,
        json!("x [REDACTED:secret] y"),
        "masked after a restart"
    );
    running.shutdown().await;

    // A key file others may read is refused, with the fix.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = cflow_server::start(config.clone(), listener)
        .await
        .err()
        .expect("a world-readable key file is refused");
    let msg = err.to_string();
    assert!(msg.contains("chmod 600"), "{msg}");
    assert!(msg.contains("0644"), "{msg}");
    assert!(!msg.contains(text.trim()), "the key is not in the message");

    // A malformed configured key is refused, and not echoed.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut bad = config.clone();
    bad.master_key = Some(MasterKeyText("not-a-key-zzzzzzzz".to_string()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = cflow_server::start(bad, listener)
        .await
        .err()
        .expect("a malformed key is refused");
    let msg = err.to_string();
    assert!(msg.contains("CFLOW_MASTER_KEY is malformed"), "{msg}");
    assert!(!msg.contains("not-a-key-zzzzzzzz"), "{msg}");
    assert!(!format!("{:?}", config.clone()).contains(text.trim()));

    // A configured key wins over the file: the old secret does not open under it (it is left
    // out of the masker with a warning, and not readable).
    let mut other = config.clone();
    other.master_key = Some(MasterKeyText(
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_string(),
    ));
    assert!(
        !format!("{other:?}").contains("AAECAw"),
        "Debug hides the key"
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let running = cflow_server::start(other, listener).await.unwrap();
    running.shutdown().await;
    drop(dir);
}
