//! A real cflow server on 127.0.0.1:0 for tests: its own data directory, the bootstrap
//! superadmin token, a reqwest client, and helpers to create tenants and keys over HTTP.

use cflow_server::{Running, ServerConfig};
use cflow_store::Store;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use tempfile::TempDir;

pub struct TestServer {
    /// `http://127.0.0.1:PORT` (or `https://…` when TLS is configured).
    pub url: String,
    pub addr: SocketAddr,
    /// The bootstrap superadmin token of tenant `default`.
    pub admin_token: String,
    /// The server's store, for asserting on state directly.
    pub store: Store,
    pub data_dir: PathBuf,
    pub config: ServerConfig,
    client: reqwest::Client,
    running: Option<Running>,
    _dir: TempDir,
}

/// A configuration for tests: a fresh data directory and no rate limits (tests that want limits
/// set them), everything else at its default.
fn test_config(dir: &TempDir) -> ServerConfig {
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".to_string(),
        data_dir: dir.path().join("data"),
        ..ServerConfig::default()
    };
    config.rate_limit.per_key_rps = 0;
    config.rate_limit.per_tenant_rps = 0;
    // A walk over every route fails authentication hundreds of times from one address; the
    // limiter's own test (`limits.rs`) sets it explicitly.
    config.rate_limit.per_ip_auth_failures_rps = 0;
    // Test webhooks listen on loopback; `hooks_dest.rs` tests the default rule that refuses it.
    config.hooks.allow_private_destinations = true;
    config
}

impl TestServer {
    /// A server on a temporary SQLite database.
    pub async fn start_sqlite() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// A server on a temporary SQLite database, with the configuration adjusted by `modify`.
    pub async fn start_with(modify: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut config = test_config(&dir);
        modify(&mut config);
        Self::start_config(dir, config).await
    }

    /// A server on a fresh PostgreSQL database, or `None` when no PostgreSQL is configured
    /// (see [`crate::db::fresh_postgres_url`]).
    pub async fn start_postgres() -> Option<TestServer> {
        Self::start_postgres_with(|_| {}).await
    }

    pub async fn start_postgres_with(modify: impl FnOnce(&mut ServerConfig)) -> Option<TestServer> {
        let url = crate::db::fresh_postgres_url().await?;
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut config = test_config(&dir);
        config.database_url = Some(url);
        modify(&mut config);
        Some(Self::start_config(dir, config).await)
    }

    async fn start_config(dir: TempDir, config: ServerConfig) -> TestServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let running = cflow_server::start(config.clone(), listener)
            .await
            .expect("server starts");
        let admin_token = running
            .admin_token
            .clone()
            .expect("a fresh database is bootstrapped with a superadmin key");
        TestServer {
            url: running.url(),
            addr: running.addr,
            admin_token,
            store: running.store.clone(),
            data_dir: config.data_dir.clone(),
            config,
            client: client(),
            running: Some(running),
            _dir: dir,
        }
    }

    /// The running server's shared state, for calling its in-process hooks directly.
    pub fn state(&self) -> &cflow_server::state::AppState {
        &self
            .running
            .as_ref()
            .expect("the server is running until shutdown")
            .state
    }

    /// A client for this server (plain HTTP; a TLS test builds its own that trusts its cert).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The absolute URL of `path` (which starts with `/`).
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Creates a tenant as the superadmin; returns its id.
    pub async fn create_tenant(&self, name: &str) -> String {
        let resp = self
            .client
            .post(self.at("/api/v1/tenants"))
            .bearer_auth(&self.admin_token)
            .json(&json!({ "name": name }))
            .send()
            .await
            .expect("request");
        let status = resp.status();
        let body: Value = resp.json().await.expect("JSON body");
        assert_eq!(status, 201, "create tenant {name}: {body}");
        body["id"].as_str().expect("tenant id").to_string()
    }

    /// Creates a key in `tenant` (id or name) as the superadmin; returns the created key's JSON
    /// (`id`, `token`, …).
    pub async fn create_key_json(
        &self,
        tenant: &str,
        name: &str,
        role: &str,
        project: Option<&str>,
    ) -> Value {
        let resp = self
            .client
            .post(self.at(&format!("/api/v1/tenants/{tenant}/keys")))
            .bearer_auth(&self.admin_token)
            .json(&json!({ "name": name, "role": role, "project": project }))
            .send()
            .await
            .expect("request");
        let status = resp.status();
        let body: Value = resp.json().await.expect("JSON body");
        assert_eq!(status, 201, "create key {name} in {tenant}: {body}");
        body
    }

    /// Creates a key with `role` in `tenant`; returns its token.
    pub async fn create_key(&self, tenant: &str, name: &str, role: &str) -> String {
        let created = self.create_key_json(tenant, name, role, None).await;
        created["token"].as_str().expect("token").to_string()
    }

    /// Creates a tenant and a key with `role` in it; returns `(tenant id, token)`.
    pub async fn tenant_with_key(&self, tenant: &str, role: &str) -> (String, String) {
        let id = self.create_tenant(tenant).await;
        let token = self
            .create_key(&id, &format!("{tenant}-{role}"), role)
            .await;
        (id, token)
    }

    /// Stops the server gracefully (in-flight requests finish) and closes its store.
    pub async fn shutdown(self) {
        self.shutdown_keeping_data().await;
    }

    /// Like [`TestServer::shutdown`], but hands back the temporary directory holding the data
    /// directory, so that a test can reopen the database afterwards.
    pub async fn shutdown_keeping_data(mut self) -> TempDir {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        self._dir
    }
}

/// A plain reqwest client with a timeout, so that a hung server fails a test instead of
/// hanging it.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .expect("reqwest client")
}
