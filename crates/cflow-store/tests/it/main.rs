//! The store conformance suite: every test runs the same body against SQLite and PostgreSQL
//! (PostgreSQL when `CFLOW_TEST_DATABASE_URL` is set; see `scripts/pg-test.sh`).

mod artifacts;
mod attempts;
mod audit;
mod batch;
mod batch_large;
mod bench;
mod bench_lifecycle;
mod concurrency;
mod cost;
mod hooks;
mod keys;
mod lifecycle;
mod memory;
mod replicas;
mod scheduling;
mod search;
mod secrets;
mod swarms;
mod tasks;
mod tenants;

use std::future::Future;
use std::time::{Duration, Instant};

use cflow_store::{AuditContext, Backend, MemoryPut, NewKey, PageRequest, Precondition, Store};
use cflow_test_support::db;
use serde_json::Value;

/// The current Unix time in milliseconds.
pub fn now() -> i64 {
    i64::try_from(since_epoch().as_millis()).unwrap()
}

/// The current Unix time in microseconds.
pub fn now_us() -> i64 {
    i64::try_from(since_epoch().as_micros()).unwrap()
}

fn since_epoch() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
}

/// An audit context acting in `tenant_id` with a recognisable request id.
pub fn ctx(tenant_id: &str) -> AuditContext {
    AuditContext {
        tenant_id: Some(tenant_id.to_string()),
        principal_id: Some("tester".to_string()),
        request_id: Some(format!("req-{}", uuid::Uuid::new_v4().simple())),
        source: Some("127.0.0.1".to_string()),
    }
}

/// The context of the platform itself (no tenant, no principal).
pub fn system() -> AuditContext {
    AuditContext::default()
}

/// A write of `value` at `namespace`/`key` with no precondition, TTL or tags.
pub fn put(namespace: &str, key: &str, value: Value) -> MemoryPut {
    MemoryPut {
        namespace: namespace.to_string(),
        key: key.to_string(),
        value,
        tags: Vec::new(),
        ttl_seconds: None,
        precondition: Precondition::None,
    }
}

pub fn page(limit: u32, cursor: Option<String>) -> PageRequest {
    PageRequest { cursor, limit }
}

pub fn new_key(name: &str, role: cflow_core::Role) -> NewKey {
    NewKey {
        name: name.to_string(),
        role,
        project: None,
        expires_at: None,
    }
}

/// A fresh tenant with a unique name; returns its id.
pub async fn tenant(store: &Store, prefix: &str) -> String {
    let name = format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    store
        .create_tenant(&system(), &name)
        .await
        .expect("create tenant")
        .id
}

/// Polls `check` until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `body` on both backends, also passing each store's database URL (for tests that reopen
/// the database or reach it with raw SQL).
pub async fn each_backend_url<F, Fut>(body: F)
where
    F: Fn(Store, Backend, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let (store, dir) = db::temp_sqlite().await;
    let url = cflow_store::sqlite_url(&dir.path().join("cflow.db"));
    body(store.clone(), Backend::Sqlite, url).await;
    store.close().await;
    drop(dir);
    if let Some((store, url)) = db::postgres_store().await {
        body(store.clone(), Backend::Postgres, url).await;
        store.close().await;
    }
}

/// Runs `body` on both backends.
pub async fn each_backend<F, Fut>(body: F)
where
    F: Fn(Store, Backend) -> Fut,
    Fut: Future<Output = ()>,
{
    db::each_backend(body).await;
}

/// A valid cursor of another listing (tenants), which every other listing must refuse.
pub fn tenants_cursor() -> String {
    "t:zzz".bytes().map(|b| format!("{b:02x}")).collect()
}
