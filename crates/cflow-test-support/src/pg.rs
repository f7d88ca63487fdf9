//! Throwaway PostgreSQL databases for tests, from `CFLOW_TEST_DATABASE_URL` (a server where the
//! user may create databases; `scripts/pg-test.sh start` prints one): each call makes a fresh,
//! uniquely named database. Without the variable a test skips its PostgreSQL part with a note,
//! except under CI (`CI` set), where that fails: CI must never pass by silently skipping a
//! backend. Feature `pg` alone (no server stack) for crates that run cflow as a process.

use sqlx::{AssertSqlSafe, Connection, Executor};

/// The environment variable naming the PostgreSQL server for tests.
pub const DATABASE_URL_ENV: &str = "CFLOW_TEST_DATABASE_URL";

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
