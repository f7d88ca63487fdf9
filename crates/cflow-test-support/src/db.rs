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
use sqlx::{AssertSqlSafe, Connection, Executor};
use tempfile::TempDir;

/// The environment variable naming the PostgreSQL server for tests.
pub const DATABASE_URL_ENV: &str = "CFLOW_TEST_DATABASE_URL";

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

/// The PostgreSQL server URL for tests, or `None` (after a note on stderr) when none is
/// configured. Panics under CI when none is configured.
pub fn postgres_server_url() -> Option<String> {
    match std::env::var(DATABASE_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "{DATABASE_URL_ENV} is not set, and CI must test PostgreSQL too: run \
                     `eval \"$(scripts/pg-test.sh start)\"` first (or use scripts/test.sh)"
                );
            }
            eprintln!(
                "note: skipping the PostgreSQL part of this test: {DATABASE_URL_ENV} is not set \
                 (run `eval \"$(scripts/pg-test.sh start)\"` to enable it)"
            );
            None
        }
    }
}

/// `url` with its database name replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let server = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{server}/{database}?{q}"),
        None => format!("{server}/{database}"),
    }
}

/// A URL of a new, empty, uniquely named database on the test PostgreSQL server, or `None` when
/// none is configured (see [`postgres_server_url`]). For tests that open their own store (a
/// server under test); the database is left behind and goes away with the throwaway cluster.
pub async fn fresh_postgres_url() -> Option<String> {
    let server = postgres_server_url()?;
    let name = format!("cflow_t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {DATABASE_URL_ENV}: {e}"));
    // The name is generated here from hex digits only, so it needs no quoting.
    conn.execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
    let _ = conn.close().await;
    Some(with_database(&server, &name))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced() {
        assert_eq!(
            with_database("postgres://u@h:5/postgres", "x"),
            "postgres://u@h:5/x"
        );
        assert_eq!(with_database("postgres://u@h:5", "x"), "postgres://u@h:5/x");
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
    }
}
