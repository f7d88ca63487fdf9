//! A PostgreSQL server's settings that bear on cflow's throughput (buffers, WAL, durability),
//! read over one short connection: printed by `cflow bench tasks --database` next to its
//! numbers, so that a number can be compared with one taken against another server, and by
//! `cflow doctor` for the configured database.

use anyhow::{Context, Result};
use serde::Serialize;
use sqlx::{Connection, Row};

/// The settings read, in this order.
const NAMES: [&str; 7] = [
    "server_version",
    "shared_buffers",
    "wal_buffers",
    "max_wal_size",
    "checkpoint_timeout",
    "synchronous_commit",
    "fsync",
];

/// A setting's name and its value as `SHOW` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Setting {
    pub(crate) name: String,
    pub(crate) value: String,
}

/// Reads [`NAMES`] from the server at `url` (one short connection).
pub(crate) async fn settings(url: &str) -> Result<Vec<Setting>> {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .context("connecting to the PostgreSQL database to read its settings")?;
    let names: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
    let rows = sqlx::query(
        "SELECT n.name, current_setting(n.name) FROM unnest($1::text[]) WITH ORDINALITY \
         AS n(name, i) ORDER BY n.i",
    )
    .bind(&names)
    .fetch_all(&mut conn)
    .await
    .context("reading the PostgreSQL server's settings")?;
    let _ = conn.close().await;
    rows.iter()
        .map(|r| {
            Ok(Setting {
                name: r.try_get(0)?,
                value: r.try_get(1)?,
            })
        })
        .collect()
}

/// One line for the report: `PostgreSQL <version>: shared_buffers 64MB, …`.
pub(crate) fn describe(settings: &[Setting]) -> String {
    let version = settings
        .iter()
        .find(|s| s.name == "server_version")
        .map_or("(version unknown)", |s| s.value.as_str());
    let rest: Vec<String> = settings
        .iter()
        .filter(|s| s.name != "server_version")
        .map(|s| format!("{} {}", s.name, s.value))
        .collect();
    format!("PostgreSQL {version}: {}", rest.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str, value: &str) -> Setting {
        Setting {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn the_line_names_the_version_then_each_setting_in_order() {
        let line = describe(&[
            s("server_version", "15.18 (Debian 15.18-0+deb12u1)"),
            s("shared_buffers", "64MB"),
            s("fsync", "on"),
        ]);
        assert_eq!(
            line,
            "PostgreSQL 15.18 (Debian 15.18-0+deb12u1): shared_buffers 64MB, fsync on"
        );
        assert_eq!(
            describe(&[s("wal_buffers", "2MB")]),
            "PostgreSQL (version unknown): wal_buffers 2MB"
        );
    }
}
