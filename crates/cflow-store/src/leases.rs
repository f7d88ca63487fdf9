//! Heartbeats in bulk: one worker's poll extends the leases of every attempt it still holds.
//!
//! Lease extensions are not audited: they change no state a user sees, and a worker polling
//! every two seconds with dozens of attempts would bury the ledger. What a lease running out
//! does (`task.lease_lost`) is audited. They still go through the writer, because SQLite has
//! one writer and an UPDATE from the read pool would contend with it for the write lock; in
//! the writer they share a batch's commit with everything else.

use std::collections::HashSet;

use crate::exec::GetCol;
use sqlx::AssertSqlSafe;

use crate::bulk::{
    self,
    Ty::{Int, Text},
};

use crate::writer::{Op, OpCx, Output, Step};
use crate::{Error, Result, Store};

/// Writer op: extends the live attempts among `held` that belong to `worker_id`; answers with
/// the other entries of `held`.
pub(crate) async fn extend(
    cx: &mut OpCx<'_>,
    worker_id: &str,
    held: &[(String, i64)],
    until: i64,
) -> Result<Step> {
    let mut live: HashSet<(String, i64)> = HashSet::new();
    // Row values (`(a, b) IN (SELECT …)`) match task and epoch together on both backends; the
    // pairs are one JSON parameter (see `bulk`).
    let sql = format!(
        "UPDATE attempts SET lease_expires_at = $1 WHERE worker_id = $2 \
         AND state IN ('assigned', 'running') AND (task_id, epoch) IN ({}) \
         RETURNING task_id, epoch",
        bulk::rows_from(cx.backend, 3, &[("task_id", Text), ("epoch", Int)])
    );

    // The text holds only SQL written here; the pairs are in the one parameter.
    for text in bulk::rows_json(held)? {
        let rows = crate::exec::query(AssertSqlSafe(sql.clone()))
            .bind(until)
            .bind(worker_id.to_string())
            .bind(text)
            .fetch_all(&mut *cx.conn)
            .await?;
        for r in rows {
            live.insert((r.try_get(0)?, r.try_get(1)?));
        }
    }
    let stale = held
        .iter()
        .filter(|h| !live.contains(*h))
        .cloned()
        .collect();
    Ok(Step::silent(Output::Stale(stale)))
}

impl Store {
    /// A worker's heartbeat: extends to `until` the lease of every attempt among `held`
    /// (`(task_id, epoch)`) that is a live attempt of `worker_id`, in one statement, and returns
    /// the entries that are not (lost, cancelled, reassigned, unknown): the worker must stop
    /// them. Not audited (see the module comment); expiry is.
    pub async fn extend_leases(
        &self,
        worker_id: &str,
        held: &[(String, i64)],
        until: i64,
    ) -> Result<Vec<(String, i64)>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let op = Op::ExtendLeases {
            worker_id: worker_id.to_string(),
            held: held.to_vec(),
            until,
        };
        let out = self.write(&Default::default(), op).await?;
        expect_output!(out, Output::Stale(s) => s)
    }
}
