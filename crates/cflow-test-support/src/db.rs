//! Temporary SQLite stores and throwaway PostgreSQL databases for tests.
//!
//! PostgreSQL comes from `CFLOW_TEST_DATABASE_URL` (a server where the user may create
//! databases; `scripts/pg-test.sh start` prints one). Every call makes a fresh, uniquely named
//! database on it, so tests are isolated and run in parallel. Without the variable, PostgreSQL
//! tests are skipped with a note on stderr, except under CI (`CI` set), where that is an error:
//! CI must never pass by silently skipping a backend.
//!
//! To run one test body on both backends:
//!
//! ```ignore
//! #[tokio::test]
//! async fn memory_round_trip() {
//!     each_backend(|store, backend| async move {
//!         // … assertions; `backend` names the one under test in messages …
//!     })
//!     .await;
//! }
//! ```

use std::future::Future;

use cflow_store::{Backend, Store, StoreOptions};
use tempfile::TempDir;

pub use crate::pg::{DATABASE_URL_ENV, fresh_postgres_url, postgres_server_url};

/// A store on a new SQLite file in a new temporary directory. Keep the directory alive as long
/// as the store; dropping it deletes the database.
pub async fn temp_sqlite() -> (Store, TempDir) {
    temp_sqlite_with(StoreOptions::default()).await
}

/// [`temp_sqlite`] with options.
pub async fn temp_sqlite_with(opts: StoreOptions) -> (Store, TempDir) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let store = Store::open_sqlite(&dir.path().join("cflow.db"), opts)
        .await
        .expect("open a temporary SQLite store");
    (store, dir)
}

/// A store on a fresh PostgreSQL database and that database's URL, or `None` when no
/// PostgreSQL is configured.
pub async fn postgres_store() -> Option<(Store, String)> {
    postgres_store_with(StoreOptions::default()).await
}

/// [`postgres_store`] with options.
pub async fn postgres_store_with(opts: StoreOptions) -> Option<(Store, String)> {
    let url = fresh_postgres_url().await?;
    let store = Store::open(&url, opts)
        .await
        .unwrap_or_else(|e| panic!("open a store on the test PostgreSQL database: {e}"));
    Some((store, url))
}

/// Runs `body` once on a fresh SQLite store and once on a fresh PostgreSQL store (when one is
/// configured), closing each store afterwards.
pub async fn each_backend<F, Fut>(body: F)
where
    F: Fn(Store, Backend) -> Fut,
    Fut: Future<Output = ()>,
{
    each_backend_with(StoreOptions::default(), body).await;
}

/// [`each_backend`] with store options.
pub async fn each_backend_with<F, Fut>(opts: StoreOptions, body: F)
where
    F: Fn(Store, Backend) -> Fut,
    Fut: Future<Output = ()>,
{
    let (store, dir) = temp_sqlite_with(opts.clone()).await;
    body(store.clone(), Backend::Sqlite).await;
    store.close().await;
    drop(dir);
    if let Some((store, _url)) = postgres_store_with(opts).await {
        body(store.clone(), Backend::Postgres).await;
        store.close().await;
    }
}
