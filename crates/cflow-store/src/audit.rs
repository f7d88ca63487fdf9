//! The audit ledger in the database: appending sealed entries (for the writer), listing and
//! verifying the chain.

use crate::exec::GetCol;
use crate::exec::WConn;
use cflow_core::audit::{AuditEntry, ChainVerifier, GENESIS_HASH, seal_with_text};
use serde_json::Value;
use sqlx::AnyPool;
use sqlx::AssertSqlSafe;

use crate::types::{AuditContext, AuditQuery, Page, PageRequest, VerifyReport};
use crate::{Backend, Result, bulk, page};

/// An audit entry before the writer gives it its place in the chain.
#[derive(Debug)]
pub(crate) struct Draft {
    /// The tenant whose data the entry is about; `None` means the caller's tenant.
    pub tenant_id: Option<String>,
    pub action: String,
    pub resource: String,
    pub outcome: String,
    pub detail: Value,
}

impl Draft {
    pub fn success(
        tenant_id: Option<&str>,
        action: &str,
        resource: String,
        detail: Value,
    ) -> Draft {
        Draft {
            tenant_id: tenant_id.map(str::to_string),
            action: action.to_string(),
            resource,
            outcome: "success".to_string(),
            detail,
        }
    }

    pub fn with_outcome(mut self, outcome: &str) -> Draft {
        self.outcome = outcome.to_string();
        self
    }
}

/// The task transitions the scheduler and workers make on many tasks in one request. When one
/// request makes several of one kind for one tenant, they are sealed as one entry (see
/// [`coalesce`]) rather than one each: each task's transition costed a ledger row, its hash and
/// its index entries, about a quarter of a task's writes.
const COALESCED: [&str; 3] = ["task.assign", "task.start", "task.complete"];

/// The most transitions one coalesced entry lists.
const MAX_ITEMS: usize = 1_000;

/// One request's drafts, with its successful task transitions of one kind and tenant grouped
/// into one draft (at the place of the first): action unchanged, resource `tasks`, detail
/// `{"count": n, "tasks": [{"id": <task id>, ...that task's detail}, ...]}`. Every transition
/// is still recorded, and sealed into the chain, with everything its own entry held; a
/// transition alone of its kind, and every refusal, keeps its own entry.
pub(crate) fn coalesce(drafts: Vec<Draft>) -> Vec<Draft> {
    enum Slot {
        Plain(Draft),
        Group(Vec<Draft>),
    }
    if drafts.len() < 2 {
        return drafts;
    }
    let mut slots: Vec<Slot> = Vec::with_capacity(drafts.len());
    // (tenant, action) -> the slot of its open group.
    let mut open: std::collections::HashMap<(Option<String>, String), usize> =
        std::collections::HashMap::new();
    for d in drafts {
        if d.outcome != "success"
            || !COALESCED.contains(&d.action.as_str())
            || !d.resource.starts_with("task/")
        {
            slots.push(Slot::Plain(d));
            continue;
        }
        let key = (d.tenant_id.clone(), d.action.clone());
        match open.get(&key).map(|&i| &mut slots[i]) {
            Some(Slot::Group(g)) if g.len() < MAX_ITEMS => g.push(d),
            _ => {
                open.insert(key, slots.len());
                slots.push(Slot::Group(vec![d]));
            }
        }
    }
    slots
        .into_iter()
        .map(|slot| match slot {
            Slot::Plain(d) => d,
            Slot::Group(mut g) if g.len() == 1 => g.remove(0),
            Slot::Group(g) => {
                let first = &g[0];
                let (tenant_id, action) = (first.tenant_id.clone(), first.action.clone());
                let count = g.len();
                let tasks: Vec<Value> = g
                    .into_iter()
                    .map(|d| {
                        let id = d.resource.strip_prefix("task/").unwrap_or(&d.resource);
                        let id = Value::String(id.to_string());
                        // The detail's own fields, and the id unless the detail names one.
                        let mut item = match d.detail {
                            Value::Object(detail) => detail,
                            Value::Null => serde_json::Map::new(),
                            other => serde_json::Map::from_iter([("detail".to_string(), other)]),
                        };
                        item.entry("id").or_insert(id);
                        Value::Object(item)
                    })
                    .collect();
                Draft {
                    tenant_id,
                    action,
                    resource: "tasks".to_string(),
                    outcome: "success".to_string(),
                    detail: serde_json::json!({ "count": count, "tasks": tasks }),
                }
            }
        })
        .collect()
}

/// The last entry of the chain, which the next entry follows.
pub(crate) struct Head {
    seq: i64,
    at: i64,
    hash: String,
}

impl Head {
    /// The head read by [`HEAD_SQL`].
    pub(crate) fn from_row(r: &impl GetCol) -> Result<Head> {
        Ok(Head {
            seq: r.try_get(0)?,
            at: r.try_get(1)?,
            hash: r.try_get(2)?,
        })
    }

    /// The head of an empty ledger.
    pub(crate) fn genesis() -> Head {
        Head {
            seq: 0,
            at: i64::MIN,
            hash: GENESIS_HASH.to_string(),
        }
    }

    /// Seals `draft` as the next entry and makes it the head. Times never go backwards along the
    /// chain (a clock step back, or another node's clock, cannot reorder it), which also lets a
    /// `since` filter be turned into a range of `seq`.
    pub fn append(&mut self, ctx: &AuditContext, draft: Draft, now: i64) -> Sealed {
        let at = now.max(self.at);
        let (entry, detail) = seal_with_text(
            AuditEntry {
                seq: self.seq + 1,
                at,
                tenant_id: draft.tenant_id.or_else(|| ctx.tenant_id.clone()),
                principal_id: ctx.principal_id.clone(),
                action: draft.action,
                resource: draft.resource,
                outcome: draft.outcome,
                request_id: ctx.request_id.clone(),
                source: ctx.source.clone(),
                detail: sorted_keys(draft.detail),
                prev_hash: String::new(),
                hash: String::new(),
            },
            &self.hash,
        );
        self.seq = entry.seq;
        self.at = at;
        self.hash.clone_from(&entry.hash);
        Sealed { entry, detail }
    }
}

/// An entry sealed into the chain, with its detail's text: serialised once, for the hash and
/// for the stored row (a coalesced entry's detail lists up to a thousand tasks).
pub(crate) struct Sealed {
    entry: AuditEntry,
    detail: String,
}

/// `v` with every object's keys in sorted order. The hash covers the detail as serde_json writes
/// it, and serde_json keeps insertion order when any crate in a build enables its
/// `preserve_order` feature: sorting before sealing makes the stored text, and so the hash, the
/// same whichever way the writing and the verifying binaries were built.
fn sorted_keys(mut v: Value) -> Value {
    // In place: a no-op without `preserve_order` (a `Map` is then a `BTreeMap`, sorted
    // already), where rebuilding every object of a coalesced entry's detail (up to a thousand
    // tasks' items) was about 1.5 % of the writer's time under `cflow bench tasks`.
    v.sort_all_objects();
    v
}

/// Reads the chain head; must run inside the writer's transaction, after its lock.
pub(crate) async fn head(conn: &mut WConn) -> Result<Head> {
    let row = crate::exec::query(HEAD_SQL)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(r) => Head::from_row(&r),
        None => Ok(Head::genesis()),
    }
}

/// PostgreSQL: takes the ledger's transaction-scoped lock (the one the main writer takes with
/// each batch's `BEGIN`, see `writer::PG_BEGIN_AND_HEAD`) and then reads the head, in one round
/// trip after the writes held back so far. From here to its `COMMIT` the transaction is the
/// ledger's only appender; the head read after the lock was granted sees every entry committed
/// before.
pub(crate) async fn lock_and_head_pg(conn: &mut WConn) -> Result<Head> {
    let rows = crate::exec::raw_rows_pg(conn, PG_LOCK_AND_HEAD.to_string()).await?;
    // The lock's row (one column), then the head's if the ledger has one (three).
    match rows.get(1) {
        Some(r) => Head::from_row(r),
        None => Ok(Head::genesis()),
    }
}

/// The statements of [`lock_and_head_pg`]: the key is "cflowaud" in ASCII, as in the `BEGIN`.
pub(crate) const PG_LOCK_AND_HEAD: &str =
    "SELECT 1 FROM pg_advisory_xact_lock(7162531483379397988); EXECUTE cflow_head";

/// The ledger's head: the last entry's `seq, at, hash` (none in an empty ledger).
pub(crate) const HEAD_SQL: &str = "SELECT seq, at, hash FROM audit ORDER BY seq DESC LIMIT 1";

const COLUMNS: &str = "seq, at, tenant_id, principal_id, action, resource, outcome, request_id, source, detail, prev_hash, hash";

/// Inserts sealed entries: on SQLite (which the writer runs in-line) a prepared insert per
/// entry, its detail's text bound as it is; on PostgreSQL one statement whose one parameter
/// holds every entry (see `bulk`): one round trip and one bind, however many ops the batch had
/// (unless the entries hold several MiB, which are split over a few statements).
pub(crate) async fn insert(conn: &mut WConn, backend: Backend, entries: Vec<Sealed>) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    if backend == Backend::Sqlite {
        let sql = format!(
            "INSERT INTO audit ({COLUMNS}) VALUES ({})",
            crate::tasks::placeholders(1, ROW_COLUMNS.len())
        );
        for Sealed { entry: e, detail } in entries {
            // The text holds only column names written here; every value is bound.
            crate::exec::query(AssertSqlSafe(sql.clone()))
                .bind(e.seq)
                .bind(e.at)
                .bind(e.tenant_id)
                .bind(e.principal_id)
                .bind(e.action)
                .bind(e.resource)
                .bind(e.outcome)
                .bind(e.request_id)
                .bind(e.source)
                .bind(detail)
                .bind(e.prev_hash)
                .bind(e.hash)
                .execute(&mut *conn)
                .await?;
        }
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO audit ({COLUMNS}) {}",
        bulk::rows_from(backend, 1, &ROW_COLUMNS)
    );
    // The text holds only column names written here; every value is in the one parameter.
    for text in bulk::rows_json(&rows_of(&entries, true))? {
        crate::exec::query(AssertSqlSafe(sql.clone()))
            .bind(text)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// PostgreSQL: the text of one simple query that inserts `entries` and commits, so that a write
/// batch's ledger insert and its `COMMIT` take one round trip; `None` when the entries are too
/// large for one statement (then [`insert`] and a separate `COMMIT`). It executes the statement
/// that [`pg_prepare`] prepared on the writer's connection (planned once, not per batch), with
/// the rows but their details as one dollar-quoted literal ([`bulk::dollar_quoted`]) and the
/// details as an array of such literals. A coalesced entry's detail lists up to a thousand
/// tasks: inside the rows' JSON it was escaped by the writer and parsed back by PostgreSQL
/// (88 KB of rows for a batch of 222 tasks: 0.53 ms of `jsonb` parsing, against 0.12 ms for the
/// same details as plain literals), and a literal reaches the column byte for byte, as sealed.
/// If the insert fails, PostgreSQL skips the `COMMIT` and the transaction stays open, aborted.
pub(crate) fn insert_and_commit_pg(entries: &[Sealed]) -> Result<Option<String>> {
    if entries.is_empty() {
        return Ok(Some("COMMIT".into()));
    }
    let detail_bytes: usize = entries.iter().map(|s| s.detail.len()).sum();
    if detail_bytes >= bulk::MAX_JSON_BYTES {
        return Ok(None);
    }
    // The details go in the array: `null` in the rows.
    let rows = rows_of(entries, false);
    let mut texts = bulk::rows_json(&rows)?;
    let (Some(text), None) = (texts.pop(), texts.pop()) else {
        return Ok(None);
    };
    let mut sql = String::with_capacity(text.len() + detail_bytes + 64 * entries.len() + 64);
    sql.push_str("EXECUTE cflow_audit_insert(");
    sql.push_str(&bulk::dollar_quoted(&text));
    sql.push_str(", ARRAY[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&bulk::dollar_quoted(&e.detail));
    }
    sql.push_str("]::text[]); COMMIT");
    Ok(Some(sql))
}

/// PostgreSQL: the ledger's statements the writer prepares on each new connection: the head
/// read (`cflow_head`) and the insert of [`insert_and_commit_pg`] (`cflow_audit_insert`: the
/// rows in `ROW_COLUMNS` order as JSON but the detail, `$1`, and the details in the rows'
/// order, `$2`).
pub(crate) fn pg_prepare() -> String {
    let cols: Vec<String> = ROW_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, (name, ty))| match (*name, ty) {
            ("detail", _) => "$2[j.ord] AS detail".to_string(),
            (_, bulk::Ty::Int) => format!("(j.value ->> {i})::bigint AS {name}"),
            (_, bulk::Ty::Text) => format!("j.value ->> {i} AS {name}"),
        })
        .collect();
    format!(
        "PREPARE cflow_head AS {HEAD_SQL}; \
         PREPARE cflow_audit_insert(text, text[]) AS INSERT INTO audit ({COLUMNS}) SELECT {} \
         FROM cflow_rows($1::jsonb) WITH ORDINALITY AS j(value, ord)",
        cols.join(", ")
    )
}

const ROW_COLUMNS: [(&str, bulk::Ty); 12] = {
    use crate::bulk::Ty::{Int, Text};
    [
        ("seq", Int),
        ("at", Int),
        ("tenant_id", Text),
        ("principal_id", Text),
        ("action", Text),
        ("resource", Text),
        ("outcome", Text),
        ("request_id", Text),
        ("source", Text),
        ("detail", Text),
        ("prev_hash", Text),
        ("hash", Text),
    ]
};

/// Each entry as a row in `ROW_COLUMNS` order; its detail `null` unless `with_detail`.
fn rows_of(entries: &[Sealed], with_detail: bool) -> Vec<impl serde::Serialize + '_> {
    entries
        .iter()
        .map(move |Sealed { entry: e, detail }| {
            (
                e.seq,
                e.at,
                &e.tenant_id,
                &e.principal_id,
                &e.action,
                &e.resource,
                &e.outcome,
                &e.request_id,
                &e.source,
                with_detail.then_some(detail),
                &e.prev_hash,
                &e.hash,
            )
        })
        .collect()
}

fn from_row(r: &impl GetCol) -> Result<AuditEntry> {
    let detail_text: String = r.try_get(9)?;
    // A detail that is no longer JSON was tampered with; keeping its text (instead of failing)
    // lets the listing show it and the verifier name the entry.
    let detail = serde_json::from_str(&detail_text).unwrap_or(Value::String(detail_text));
    Ok(AuditEntry {
        seq: r.try_get(0)?,
        at: r.try_get(1)?,
        tenant_id: r.try_get(2)?,
        principal_id: r.try_get(3)?,
        action: r.try_get(4)?,
        resource: r.try_get(5)?,
        outcome: r.try_get(6)?,
        request_id: r.try_get(7)?,
        source: r.try_get(8)?,
        detail,
        prev_hash: r.try_get(10)?,
        hash: r.try_get(11)?,
    })
}

const CURSOR_TAG: &str = "a";

/// The first `seq` at or after a time: `at` grows with `seq` (see [`Head::append`]), so this
/// turns `since` into an index range on `seq`.
macro_rules! since_floor {
    ($p:literal) => {
        concat!(
            "seq >= COALESCE((SELECT seq FROM audit WHERE at >= ",
            $p,
            " ORDER BY at, seq LIMIT 1), 9223372036854775807) AND at >= ",
            $p
        )
    };
}

const LIST_ALL: &str = concat!(
    "SELECT seq, at, tenant_id, principal_id, action, resource, outcome, request_id, source, detail, prev_hash, hash ",
    "FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2"
);
const LIST_TENANT: &str = concat!(
    "SELECT seq, at, tenant_id, principal_id, action, resource, outcome, request_id, source, detail, prev_hash, hash ",
    "FROM audit WHERE seq > $1 AND tenant_id = $3 ORDER BY seq LIMIT $2"
);
const LIST_SINCE: &str = concat!(
    "SELECT seq, at, tenant_id, principal_id, action, resource, outcome, request_id, source, detail, prev_hash, hash ",
    "FROM audit WHERE seq > $1 AND ",
    since_floor!("$3"),
    " ORDER BY seq LIMIT $2"
);
const LIST_TENANT_SINCE: &str = concat!(
    "SELECT seq, at, tenant_id, principal_id, action, resource, outcome, request_id, source, detail, prev_hash, hash ",
    "FROM audit WHERE seq > $1 AND tenant_id = $3 AND ",
    since_floor!("$4"),
    " ORDER BY seq LIMIT $2"
);

/// Ledger entries in `seq` order, filtered by tenant and time.
pub(crate) async fn list(
    pool: &AnyPool,
    query: &AuditQuery,
    req: &PageRequest,
) -> Result<Page<AuditEntry>> {
    let limit = page::clamp_limit(req.limit);
    let after: i64 = match page::decode_opt(CURSOR_TAG, &req.cursor)? {
        Some(s) => s.parse().map_err(|_| crate::Error::InvalidCursor)?,
        None => 0,
    };
    let sql = match (&query.tenant_id, query.since) {
        (None, None) => LIST_ALL,
        (Some(_), None) => LIST_TENANT,
        (None, Some(_)) => LIST_SINCE,
        (Some(_), Some(_)) => LIST_TENANT_SINCE,
    };
    // Placeholders are numbered in bind order: $1 and $2 first, then the filters present.
    let mut q = sqlx::query(sql).bind(after).bind(limit + 1);
    if let Some(t) = &query.tenant_id {
        q = q.bind(t.clone());
    }
    if let Some(s) = query.since {
        q = q.bind(s);
    }
    let rows = q.fetch_all(pool).await?;
    let entries = rows.iter().map(from_row).collect::<Result<Vec<_>>>()?;
    Ok(page::finish(entries, limit, CURSOR_TAG, |e| {
        e.seq.to_string()
    }))
}

/// Entries read per query while verifying, so a long ledger neither fills memory nor holds one
/// read transaction open for the whole walk.
const VERIFY_CHUNK: i64 = 1000;

/// Walks the whole chain in `seq` order and reports the first entry that does not fit.
pub(crate) async fn verify(pool: &AnyPool) -> Result<VerifyReport> {
    let mut verifier = ChainVerifier::new();
    let mut after = 0i64;
    loop {
        let rows = sqlx::query(LIST_ALL)
            .bind(after)
            .bind(VERIFY_CHUNK)
            .fetch_all(pool)
            .await?;
        for r in &rows {
            let e = from_row(r)?;
            if let Err(why) = verifier.check(&e) {
                return Ok(VerifyReport {
                    verified: verifier.checked(),
                    first_break: Some((e.seq, why)),
                });
            }
            after = e.seq;
        }
        if i64::try_from(rows.len()).unwrap_or(0) < VERIFY_CHUNK {
            return Ok(VerifyReport {
                verified: verifier.checked(),
                first_break: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(tenant: &str, action: &str, task: &str, outcome: &str) -> Draft {
        Draft::success(
            Some(tenant),
            action,
            format!("task/{task}"),
            serde_json::json!({"epoch": 1, "agent_id": "ag"}),
        )
        .with_outcome(outcome)
    }

    /// A request's successful transitions of one kind and tenant become one entry listing each
    /// task with its detail, at the first one's place; refusals, lone transitions, other
    /// actions and other tenants keep their own entries; a group holds at most `MAX_ITEMS`.
    #[test]
    fn a_requests_task_transitions_share_an_entry() {
        let drafts = vec![
            draft("t1", "task.complete", "a", "success"),
            draft("t1", "task.complete", "b", "conflict"),
            draft("t2", "task.complete", "c", "success"),
            draft("t1", "task.complete", "d", "success"),
            draft("t1", "task.cancel", "e", "success"),
            draft("t1", "task.assign", "f", "success"),
        ];
        let out = coalesce(drafts);
        let shape: Vec<(Option<&str>, &str, &str, &str)> = out
            .iter()
            .map(|d| {
                (
                    d.tenant_id.as_deref(),
                    d.action.as_str(),
                    d.resource.as_str(),
                    d.outcome.as_str(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                (Some("t1"), "task.complete", "tasks", "success"),
                (Some("t1"), "task.complete", "task/b", "conflict"),
                (Some("t2"), "task.complete", "task/c", "success"),
                (Some("t1"), "task.cancel", "task/e", "success"),
                (Some("t1"), "task.assign", "task/f", "success"),
            ]
        );
        assert_eq!(
            out[0].detail,
            serde_json::json!({"count": 2, "tasks": [
                {"id": "a", "epoch": 1, "agent_id": "ag"},
                {"id": "d", "epoch": 1, "agent_id": "ag"},
            ]})
        );

        let many: Vec<Draft> = (0..MAX_ITEMS + 1)
            .map(|i| draft("t1", "task.assign", &i.to_string(), "success"))
            .collect();
        let out = coalesce(many);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].detail["count"], MAX_ITEMS);
        assert_eq!(
            out[1].resource,
            format!("task/{MAX_ITEMS}"),
            "a lone remainder"
        );
    }

    #[test]
    fn details_are_sealed_with_sorted_keys() {
        let v = serde_json::json!({"b": 1, "a": {"d": [{"z": 0, "y": 1}], "c": 2}});
        assert_eq!(
            sorted_keys(v).to_string(),
            r#"{"a":{"c":2,"d":[{"y":1,"z":0}]},"b":1}"#
        );
    }
}
