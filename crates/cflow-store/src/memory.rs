//! Memory: writes, deletes and purges (writer ops) and reads.
//!
//! An entry whose `expires_at` is at or before "now" is treated as absent by every read and
//! precondition at once, whether or not the purge has removed it yet.
//!
//! A version of a (tenant, namespace, key) never repeats, so an old `If-Match` can never match a
//! later entry: versions keep growing when an expired entry is overwritten, and a delete or purge
//! leaves the last version in `memory_tombstones` (a trigger, in the same transaction) for a new
//! entry to count on from.

use std::collections::BTreeMap;

use crate::exec::GetCol;
use crate::exec::WConn;
use serde_json::{Value, json};
use sqlx::AnyPool;

use crate::audit::Draft;
use crate::types::{MemoryEntry, MemoryPut, Page, PageRequest, Precondition};
use crate::writer::{OpCx, Output, Step};
use crate::{Backend, Error, Result, page};

const CURSOR_TAG: &str = "m";

/// The columns [`from_row`] reads, in its order.
macro_rules! memory_columns {
    () => {
        "namespace, key, value, tags, version, created_at, updated_at, expires_at"
    };
}
pub(crate) use memory_columns;

/// Reads an entry from the columns of [`memory_columns`], starting at column 0.
pub(crate) fn from_row(r: &impl GetCol) -> Result<MemoryEntry> {
    let value: String = r.try_get(2)?;
    let tags: String = r.try_get(3)?;
    let corrupt = |what: &str, e: serde_json::Error| Error::Corrupt {
        what: format!("memory.{what}"),
        detail: e.to_string(),
    };
    Ok(MemoryEntry {
        namespace: r.try_get(0)?,
        key: r.try_get(1)?,
        value: serde_json::from_str(&value).map_err(|e| corrupt("value", e))?,
        tags: serde_json::from_str(&tags).map_err(|e| corrupt("tags", e))?,
        version: r.try_get(4)?,
        created_at: r.try_get(5)?,
        updated_at: r.try_get(6)?,
        expires_at: r.try_get(7)?,
    })
}

fn resource(namespace: &str, key: &str) -> String {
    format!("memory/{namespace}/{key}")
}

/// The version of the live entry, if there is one.
async fn live_version(
    conn: &mut WConn,
    tenant_id: &str,
    namespace: &str,
    key: &str,
    now: i64,
) -> Result<Option<i64>> {
    let row = crate::exec::query(
        "SELECT version FROM memory WHERE tenant_id = $1 AND namespace = $2 AND key = $3 \
         AND (expires_at IS NULL OR expires_at > $4)",
    )
    .bind(tenant_id.to_string())
    .bind(namespace.to_string())
    .bind(key.to_string())
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// The start of every insert into memory, up to its VALUES.
macro_rules! insert_head {
    () => {
        "INSERT INTO memory \
         (tenant_id, namespace, key, value, tags, version, created_at, updated_at, expires_at) VALUES "
    };
}

/// The version of a new entry: one past the last version of the entry's deleted predecessors, if
/// any. The placeholders are the entry's tenant, namespace and key.
macro_rules! first_version {
    ($t:literal, $n:literal, $k:literal) => {
        concat!(
            "COALESCE((SELECT memory_tombstones.last_version FROM memory_tombstones \
             WHERE memory_tombstones.tenant_id = ",
            $t,
            " AND memory_tombstones.namespace = ",
            $n,
            " AND memory_tombstones.key = ",
            $k,
            "), 0) + 1"
        )
    };
}

/// How a plain write meets an existing entry: it replaces it. An expired entry being replaced
/// starts a new life (`created_at`) but keeps counting versions.
macro_rules! upsert_tail {
    () => {
        " ON CONFLICT (tenant_id, namespace, key) DO UPDATE SET \
         value = excluded.value, tags = excluded.tags, version = memory.version + 1, \
         created_at = CASE WHEN memory.expires_at IS NOT NULL AND memory.expires_at <= excluded.updated_at \
             THEN excluded.created_at ELSE memory.created_at END, \
         updated_at = excluded.updated_at, expires_at = excluded.expires_at"
    };
}

/// Writes whatever is there.
const UPSERT: &str = concat!(
    insert_head!(),
    "($1, $2, $3, $4, $5, ",
    first_version!("$1", "$2", "$3"),
    ", $6, $6, $7)",
    upsert_tail!(),
    " RETURNING version, created_at"
);

/// `If-None-Match: *`: inserts, or replaces only an expired entry.
const UPSERT_IF_ABSENT: &str = concat!(
    insert_head!(),
    "($1, $2, $3, $4, $5, ",
    first_version!("$1", "$2", "$3"),
    ", $6, $6, $7) \
    ON CONFLICT (tenant_id, namespace, key) DO UPDATE SET \
    value = excluded.value, tags = excluded.tags, version = memory.version + 1, \
    created_at = excluded.created_at, updated_at = excluded.updated_at, \
    expires_at = excluded.expires_at \
    WHERE memory.expires_at IS NOT NULL AND memory.expires_at <= excluded.updated_at \
    RETURNING version, created_at"
);

/// `If-Match: <version>`: updates only the live entry of that version.
const UPDATE_IF_VERSION: &str = "UPDATE memory SET \
    value = $4, tags = $5, version = version + 1, updated_at = $6, expires_at = $7 \
    WHERE tenant_id = $1 AND namespace = $2 AND key = $3 AND version = $8 \
    AND (expires_at IS NULL OR expires_at > $6) \
    RETURNING version, created_at";

/// Writer op: a write under its precondition. The write is a single statement whose condition
/// is the precondition, so the common case costs one round trip; only a failed precondition
/// reads the current version for the answer.
pub(crate) async fn put(
    cx: &mut OpCx<'_>,
    tenant_id: &str,
    put: &MemoryPut,
    value_text: &str,
) -> Result<Step> {
    let now = cx.now;
    let value = value_text.to_string();
    let tags = tags_text(put);
    let expires_at = expires_at(put, now);
    let sql = match put.precondition {
        Precondition::None => UPSERT,
        Precondition::Absent => UPSERT_IF_ABSENT,
        Precondition::Version(_) => UPDATE_IF_VERSION,
    };
    let mut q = crate::exec::query(sql)
        .bind(tenant_id.to_string())
        .bind(put.namespace.clone())
        .bind(put.key.clone())
        .bind(value)
        .bind(tags)
        .bind(now)
        .bind(expires_at);
    if let Precondition::Version(v) = put.precondition {
        q = q.bind(v);
    }
    let row = q.fetch_optional(&mut *cx.conn).await?;
    let Some(row) = row else {
        let current = live_version(cx.conn, tenant_id, &put.namespace, &put.key, now).await?;
        let draft = Draft::success(
            Some(tenant_id),
            "memory.write",
            resource(&put.namespace, &put.key),
            json!({ "expected": expected(put.precondition), "current": current }),
        );
        return Ok(Step::failed(Error::PreconditionFailed { current }, draft));
    };
    Ok(written(
        tenant_id,
        put,
        now,
        row.try_get(0)?,
        row.try_get(1)?,
    ))
}

fn expires_at(put: &MemoryPut, now: i64) -> Option<i64> {
    put.ttl_seconds
        .map(|ttl| now.saturating_add(ttl.saturating_mul(1000)))
}

/// The answer and audit entry of a write that happened.
fn written(tenant_id: &str, put: &MemoryPut, now: i64, version: i64, created_at: i64) -> Step {
    let entry = MemoryEntry {
        namespace: put.namespace.clone(),
        key: put.key.clone(),
        value: put.value.clone(),
        tags: put.tags.clone(),
        version,
        created_at,
        updated_at: now,
        expires_at: expires_at(put, now),
    };
    // Never the value itself: the ledger is readable by auditors who may not read memory.
    let draft = Draft::success(
        Some(tenant_id),
        "memory.write",
        resource(&put.namespace, &put.key),
        json!({ "version": version, "ttl_seconds": put.ttl_seconds, "tags": put.tags.len() }),
    );
    Step::done(Output::Memory(entry), draft)
}

fn tags_text(put: &MemoryPut) -> String {
    serde_json::to_string(&put.tags).unwrap_or_else(|_| "[]".to_string())
}

/// Writer op for a run of plain writes (no precondition) to different entries: one multi-row
/// upsert writes them all. Answers in the order given.
pub(crate) async fn put_many(
    cx: &mut OpCx<'_>,
    puts: &[(&str, &MemoryPut, &str)],
) -> Result<Vec<Step>> {
    let now = cx.now;
    let mut sql = String::from(insert_head!());
    for i in 0..puts.len() {
        let b = i * 7;
        if i > 0 {
            sql.push(',');
        }
        let (t, n, k) = (b + 1, b + 2, b + 3);
        sql.push_str(&format!(
            "(${t}, ${n}, ${k}, ${}, ${}, COALESCE((SELECT memory_tombstones.last_version \
             FROM memory_tombstones WHERE memory_tombstones.tenant_id = ${t} \
             AND memory_tombstones.namespace = ${n} AND memory_tombstones.key = ${k}), 0) + 1, \
             ${}, ${}, ${})",
            b + 4,
            b + 5,
            b + 6,
            b + 6,
            b + 7
        ));
    }
    sql.push_str(upsert_tail!());
    sql.push_str(" RETURNING tenant_id, namespace, key, version, created_at");
    // The text holds only placeholders; every value is bound.
    let mut q = crate::exec::query(sqlx::AssertSqlSafe(sql));
    for (tenant_id, put, value_text) in puts {
        q = q
            .bind(tenant_id.to_string())
            .bind(put.namespace.clone())
            .bind(put.key.clone())
            .bind(value_text.to_string())
            .bind(tags_text(put))
            .bind(now)
            .bind(expires_at(put, now));
    }
    let rows = q.fetch_all(&mut *cx.conn).await?;
    // RETURNING gives no order guarantee, so rows are matched to writes by their entry.
    let mut by_entry = std::collections::HashMap::with_capacity(rows.len());
    for r in &rows {
        let id: (String, String, String) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        by_entry.insert(id, (r.try_get::<i64>(3)?, r.try_get::<i64>(4)?));
    }
    puts.iter()
        .map(|(tenant_id, put, _)| {
            let id = (
                tenant_id.to_string(),
                put.namespace.clone(),
                put.key.clone(),
            );
            let (version, created_at) =
                by_entry.get(&id).copied().ok_or_else(|| Error::Corrupt {
                    what: "memory upsert".to_string(),
                    detail: format!("no row returned for {}/{}", put.namespace, put.key),
                })?;
            Ok(written(tenant_id, put, now, version, created_at))
        })
        .collect()
}

fn expected(p: Precondition) -> Value {
    match p {
        Precondition::None => Value::Null,
        Precondition::Absent => json!("absent"),
        Precondition::Version(v) => json!(v),
    }
}

/// Writer op: deletes the live entry under its precondition.
pub(crate) async fn delete(
    cx: &mut OpCx<'_>,
    tenant_id: &str,
    namespace: &str,
    key: &str,
    precondition: Precondition,
) -> Result<Step> {
    let now = cx.now;
    let base = |detail: Value| {
        Draft::success(
            Some(tenant_id),
            "memory.delete",
            resource(namespace, key),
            detail,
        )
    };
    let deleted: Option<i64> = match precondition {
        Precondition::Absent => None,
        Precondition::None | Precondition::Version(_) => {
            let mut q = crate::exec::query(match precondition {
                Precondition::Version(_) => {
                    "DELETE FROM memory WHERE tenant_id = $1 AND namespace = $2 AND key = $3 \
                     AND (expires_at IS NULL OR expires_at > $4) AND version = $5 RETURNING version"
                }
                _ => {
                    "DELETE FROM memory WHERE tenant_id = $1 AND namespace = $2 AND key = $3 \
                     AND (expires_at IS NULL OR expires_at > $4) RETURNING version"
                }
            })
            .bind(tenant_id.to_string())
            .bind(namespace.to_string())
            .bind(key.to_string())
            .bind(now);
            if let Precondition::Version(v) = precondition {
                q = q.bind(v);
            }
            let row = q.fetch_optional(&mut *cx.conn).await?;
            row.map(|r| r.try_get(0)).transpose()?
        }
    };
    if let Some(version) = deleted {
        return Ok(Step::done(
            Output::Unit,
            base(json!({ "version": version })),
        ));
    }
    let current = live_version(cx.conn, tenant_id, namespace, key, now).await?;
    let detail = json!({ "expected": expected(precondition), "current": current });
    let err = match current {
        None => Error::NotFound(format!("memory entry '{namespace}/{key}'")),
        Some(_) => Error::PreconditionFailed { current },
    };
    Ok(Step::failed(err, base(detail)))
}

/// Writer op: deletes up to `limit` expired entries, with one audit entry per tenant affected.
pub(crate) async fn purge(cx: &mut OpCx<'_>, now: i64, limit: i64) -> Result<Step> {
    let sql = match cx.backend {
        Backend::Sqlite => {
            "DELETE FROM memory WHERE id IN \
             (SELECT id FROM memory WHERE expires_at <= $1 LIMIT $2) RETURNING tenant_id"
        }
        Backend::Postgres => {
            "DELETE FROM memory WHERE (tenant_id, namespace, key) IN \
             (SELECT tenant_id, namespace, key FROM memory WHERE expires_at <= $1 LIMIT $2) \
             RETURNING tenant_id"
        }
    };
    let rows = crate::exec::query(sql)
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *cx.conn)
        .await?;
    let mut per_tenant: BTreeMap<String, u64> = BTreeMap::new();
    for r in &rows {
        *per_tenant.entry(r.try_get(0)?).or_default() += 1;
    }
    let audit = per_tenant
        .into_iter()
        .map(|(tenant, count)| {
            Draft::success(
                Some(&tenant),
                "memory.purge",
                "memory".to_string(),
                json!({ "count": count, "expired_before": now }),
            )
        })
        .collect();
    Ok(Step {
        result: Ok(Output::Count(rows.len() as u64)),
        audit,
    })
}

/// A live entry.
pub(crate) async fn get(
    pool: &AnyPool,
    tenant_id: &str,
    namespace: &str,
    key: &str,
    now: i64,
) -> Result<Option<MemoryEntry>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        memory_columns!(),
        " FROM memory WHERE tenant_id = $1 AND namespace = $2 AND key = $3 \
         AND (expires_at IS NULL OR expires_at > $4)"
    ))
    .bind(tenant_id.to_string())
    .bind(namespace.to_string())
    .bind(key.to_string())
    .bind(now)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Live entries of one namespace whose key starts with `prefix`, ordered by key. The prefix is an
/// index range, not a `LIKE`, so it needs no escaping and stays fast.
pub(crate) async fn list(
    pool: &AnyPool,
    tenant_id: &str,
    namespace: &str,
    prefix: &str,
    now: i64,
    req: &PageRequest,
) -> Result<Page<MemoryEntry>> {
    let limit = page::clamp_limit(req.limit);
    // Keys are never empty, so every key sorts after "".
    let after = page::decode_opt(CURSOR_TAG, &req.cursor)?.unwrap_or_default();
    let end = page::prefix_end(prefix);
    let sql = if end.is_some() {
        concat!(
            "SELECT ",
            memory_columns!(),
            " FROM memory WHERE tenant_id = $1 AND namespace = $2 AND key >= $3 AND key > $4 \
             AND (expires_at IS NULL OR expires_at > $5) AND key < $7 ORDER BY key LIMIT $6"
        )
    } else {
        concat!(
            "SELECT ",
            memory_columns!(),
            " FROM memory WHERE tenant_id = $1 AND namespace = $2 AND key >= $3 AND key > $4 \
             AND (expires_at IS NULL OR expires_at > $5) ORDER BY key LIMIT $6"
        )
    };
    let mut q = sqlx::query(sql)
        .bind(tenant_id.to_string())
        .bind(namespace.to_string())
        .bind(prefix.to_string())
        .bind(after)
        .bind(now)
        .bind(limit + 1);
    if let Some(end) = end {
        q = q.bind(end);
    }
    let rows = q.fetch_all(pool).await?;
    let entries = rows.iter().map(from_row).collect::<Result<Vec<_>>>()?;
    Ok(page::finish(entries, limit, CURSOR_TAG, |e| e.key.clone()))
}
