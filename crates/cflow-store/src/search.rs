//! Full-text search over live memory entries: FTS5 with BM25 on SQLite, a `tsvector` with
//! `ts_rank` on PostgreSQL. Both take plain words (already split by
//! `cflow_core::search::terms`) and match entries that contain every one of them.

use crate::exec::GetCol;
use sqlx::AnyPool;

use crate::memory::{from_row, memory_columns};
use crate::types::SearchHit;
use crate::{Backend, Result, page};

/// A string as an FTS5 phrase: quoted, so nothing in it is read as FTS5 syntax (a quote inside
/// is doubled, as FTS5 escapes it).
fn phrase(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// An FTS5 query for the documents that contain every term (implicit AND).
fn fts5_query(terms: &[String]) -> String {
    terms
        .iter()
        .map(|t| phrase(t))
        .collect::<Vec<_>>()
        .join(" ")
}

// `CROSS JOIN` makes SQLite drive the join from the full-text index; left to itself it may scan
// the tenant's entries and run the full-text query once per entry. The bm25 weights give the
// tenant column no say in the ranking.
//
// The namespace filter is "that namespace or any below it": `ns` itself, or the range
// [`ns/`, `ns0`), since '0' is the character after '/'.

const SQLITE_ALL: &str = concat!(
    "SELECT ",
    "m.namespace, m.key, m.value, m.tags, m.version, m.created_at, m.updated_at, m.expires_at",
    ", -bm25(memory_fts) AS score \
     FROM memory_fts CROSS JOIN memory m ON m.id = memory_fts.rowid \
     WHERE memory_fts MATCH $1 AND m.tenant_id = $2 AND (m.expires_at IS NULL OR m.expires_at > $3) \
     ORDER BY score DESC, m.namespace, m.key LIMIT $4"
);
const SQLITE_NS: &str = concat!(
    "SELECT ",
    "m.namespace, m.key, m.value, m.tags, m.version, m.created_at, m.updated_at, m.expires_at",
    ", -bm25(memory_fts) AS score \
     FROM memory_fts CROSS JOIN memory m ON m.id = memory_fts.rowid \
     WHERE memory_fts MATCH $1 AND m.tenant_id = $2 AND (m.expires_at IS NULL OR m.expires_at > $3) \
     AND (m.namespace = $5 OR (m.namespace >= $6 AND m.namespace < $7)) \
     ORDER BY score DESC, m.namespace, m.key LIMIT $4"
);
const PG_ALL: &str = concat!(
    "SELECT ",
    memory_columns!(),
    ", ts_rank(search, q)::float8 AS score FROM memory, plainto_tsquery('simple', $1) AS q \
     WHERE search @@ q AND tenant_id = $2 AND (expires_at IS NULL OR expires_at > $3) \
     ORDER BY score DESC, namespace, key LIMIT $4"
);
const PG_NS: &str = concat!(
    "SELECT ",
    memory_columns!(),
    ", ts_rank(search, q)::float8 AS score FROM memory, plainto_tsquery('simple', $1) AS q \
     WHERE search @@ q AND tenant_id = $2 AND (expires_at IS NULL OR expires_at > $3) \
     AND (namespace = $5 OR (namespace >= $6 AND namespace < $7)) \
     ORDER BY score DESC, namespace, key LIMIT $4"
);

/// Live entries of the tenant that contain every term, most relevant first.
pub(crate) async fn search(
    pool: &AnyPool,
    backend: Backend,
    tenant_id: &str,
    terms: &[String],
    namespace: Option<&str>,
    now: i64,
    limit: u32,
) -> Result<Vec<SearchHit>> {
    if terms.is_empty() {
        return Ok(Vec::new());
    }
    let limit = page::clamp_limit(limit);
    let (sql, query_text) = match (backend, namespace.is_some()) {
        (Backend::Sqlite, false) => (SQLITE_ALL, fts5_query(terms)),
        (Backend::Sqlite, true) => (SQLITE_NS, fts5_query(terms)),
        // plainto_tsquery reads its text as plain words joined by AND, never as operators.
        (Backend::Postgres, false) => (PG_ALL, terms.join(" ")),
        (Backend::Postgres, true) => (PG_NS, terms.join(" ")),
    };
    let mut q = sqlx::query(sql)
        .bind(query_text)
        .bind(tenant_id.to_string())
        .bind(now)
        .bind(limit);
    if let Some(ns) = namespace {
        q = q
            .bind(ns.to_string())
            .bind(format!("{ns}/"))
            .bind(format!("{ns}0"));
    }
    let rows = q.fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            Ok(SearchHit {
                entry: from_row(r)?,
                score: r.try_get(8)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fts5_queries_quote_every_term() {
        let q = fts5_query(&["deploy".into(), "a\"b".into(), "or".into()]);
        assert_eq!(q, "\"deploy\" \"a\"\"b\" \"or\"");
    }
}
