//! A PostgreSQL server's settings that cflow's throughput moves with, read over one short
//! connection: printed by `cflow bench tasks --database` next to its numbers (a run with
//! `shared_buffers` 1 GB and `wal_buffers` 64 MB drained about a tenth more tasks a second than
//! one with 64 MB and 2 MB on the same machine, so a number without them cannot be compared),
//! and by `cflow doctor` for the configured database, with advice when the buffers are small.

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

/// Below this `shared_buffers` (bytes), [`advice`] suggests more.
const SMALL_SHARED_BUFFERS: i64 = 256 << 20;

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

/// What to change, if anything: `shared_buffers` (as `SHOW` prints it, e.g. `64MB`) below
/// [`SMALL_SHARED_BUFFERS`] holds too little of a busy cflow database, and its writer then
/// fills the WAL buffers (a thirty-second of `shared_buffers` by default) and writes them itself.
pub(crate) fn advice(settings: &[Setting]) -> Option<String> {
    let shown = &settings.iter().find(|s| s.name == "shared_buffers")?.value;
    let bytes = size_bytes(shown)?;
    (bytes < SMALL_SHARED_BUFFERS).then(|| {
        format!(
            "shared_buffers is {shown}: under load cflow's writes overflow PostgreSQL's \
             buffers, and its backend then writes WAL and pages itself; the usual size is about \
             a quarter of the database server's memory, with wal_buffers 16MB or more (both \
             take a restart of PostgreSQL)"
        )
    })
}

/// The bytes of a size as PostgreSQL prints one (`64MB`, `8kB`, `1GB`, `1TB`).
fn size_bytes(shown: &str) -> Option<i64> {
    let digits = shown.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: i64 = digits.parse().ok()?;
    let unit: i64 = match &shown[digits.len()..] {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(unit)
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

    #[test]
    fn small_shared_buffers_get_advice_and_large_ones_none() {
        assert_eq!(size_bytes("64MB"), Some(64 << 20));
        assert_eq!(size_bytes("8kB"), Some(8 << 10));
        assert_eq!(size_bytes("1GB"), Some(1 << 30));
        assert_eq!(size_bytes("12 parsecs"), None);
        let small = advice(&[s("shared_buffers", "128MB")]).expect("advice");
        assert!(small.starts_with("shared_buffers is 128MB: "), "{small}");
        assert_eq!(advice(&[s("shared_buffers", "256MB")]), None);
        assert_eq!(advice(&[s("shared_buffers", "4GB")]), None);
        // Nothing read, or a size it cannot parse: no advice rather than a wrong one.
        assert_eq!(advice(&[]), None);
        assert_eq!(advice(&[s("shared_buffers", "lots")]), None);
    }
}
