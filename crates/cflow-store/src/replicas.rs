//! Quorum replicas (SPEC C3): a task submitted with `replicas: n > 1` is a parent that never
//! runs itself, plus `n` replica tasks created `queued` at the moment the parent becomes ready
//! (so the parent alone carries the dependencies). While they run the parent is `running`, a
//! state `ready_tasks`, lease expiry and retries never touch for a task without attempts. Each
//! time a replica ends, the vote is taken again in the same transaction with
//! `cflow_core::quorum`: once `quorum` replicas agree the parent succeeds with the agreed output,
//! once agreement is out of reach it fails with `no quorum: …`, and either way the replicas still
//! live are cancelled and reported for killing.

use crate::exec::GetCol;
use cflow_core::quorum::{self, QuorumDecision, Replica};
use cflow_core::task::TaskState;
use serde_json::{Value, json};
use sqlx::AssertSqlSafe;

use crate::orch_types::{Kill, Task};
use crate::swarms::{json_col, parse};
use crate::tasks::{TASK_COLUMNS, TaskRow, insert_rows, placeholders, task_from_row};
use crate::writer::OpCx;
use crate::{Result, settle};

/// The replica rows of a parent that is becoming ready.
pub(crate) fn replica_rows(parent: &TaskRow) -> Vec<TaskRow> {
    (0..parent.replicas)
        .map(|k| TaskRow {
            id: crate::tenants::new_id(),
            depends_on: "[]".to_string(),
            replicas: 1,
            quorum: 1,
            idempotency_key: None,
            state: TaskState::Queued,
            reason: None,
            unmet: 0,
            // Replicas must land on distinct agents (the scheduler's rule), so none is sticky.
            agent_id: None,
            replica_of: Some(parent.id.clone()),
            replica_index: Some(k),
            ..parent.clone()
        })
        .collect()
}

fn row_of(t: &Task, now: i64) -> TaskRow {
    TaskRow {
        id: t.id.clone(),
        tenant_id: t.tenant_id.clone(),
        swarm_id: t.swarm_id.clone(),
        spec: t.spec.to_string(),
        priority: t.priority,
        requires: json!(t.requires).to_string(),
        labels: json!(t.labels).to_string(),
        depends_on: json!(t.depends_on).to_string(),
        timeout_ms: t.timeout_ms,
        max_attempts: t.max_attempts,
        replicas: t.replicas,
        quorum: t.quorum,
        idempotency_key: t.idempotency_key.clone(),
        state: t.state,
        reason: t.reason.clone(),
        unmet: t.unmet,
        agent_id: t.agent_id.clone(),
        replica_of: t.replica_of.clone(),
        replica_index: t.replica_index,
        epoch: 0,
        now,
    }
}

/// Turns the just-queued parents among `parents` into `running` parents with queued replicas;
/// returns each parent with its replica ids.
pub(crate) async fn spawn(
    cx: &mut OpCx<'_>,
    parents: &[String],
    now: i64,
) -> Result<Vec<(String, Vec<String>)>> {
    if parents.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE state = 'queued' AND replicas > 1 \
         AND replica_of IS NULL AND id IN ({}) ORDER BY id",
        placeholders(1, parents.len())
    );
    // The text holds only placeholders.
    let mut q = crate::exec::query(AssertSqlSafe(sql));
    for id in parents {
        q = q.bind(id.clone());
    }
    let rows = q.fetch_all(&mut *cx.conn).await?;
    let mut out = Vec::new();
    for r in &rows {
        let task = task_from_row(r)?;
        let replicas = replica_rows(&row_of(&task, now));
        insert_rows(cx, &replicas).await?;
        crate::exec::query("UPDATE tasks SET state = 'running', updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(task.id.clone())
            .execute(&mut *cx.conn)
            .await?;
        out.push((task.id, replicas.into_iter().map(|r| r.id).collect()));
    }
    Ok(out)
}

/// What a decided vote did.
pub(crate) struct Decided {
    pub parent: String,
    pub state: TaskState,
    pub kill: Vec<Kill>,
    /// The parent's dependents, queued or cancelled.
    pub queued: Vec<String>,
    pub cancelled: Vec<String>,
}

/// A replica's output as compared and reported: its result JSON, else its stdout tail.
fn output_of(result: Option<&str>, stdout: Option<&str>) -> Result<Value> {
    Ok(match result {
        Some(r) => json_col("attempts.result", r)?,
        None => json!({ "stdout": stdout.unwrap_or_default() }),
    })
}

/// Takes the vote of `parent` again after one of its replicas ended.
pub(crate) async fn vote(cx: &mut OpCx<'_>, parent: &str, now: i64) -> Result<Option<Decided>> {
    let row = crate::exec::query("SELECT state, quorum FROM tasks WHERE id = $1")
        .bind(parent.to_string())
        .fetch_optional(&mut *cx.conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let state: TaskState = parse("tasks.state", &row.try_get::<String>(0)?)?;
    let quorum: i64 = row.try_get(1)?;
    if state.is_terminal() {
        // Already decided (or cancelled): a late replica changes nothing.
        return Ok(None);
    }
    let rows = crate::exec::query(
        "SELECT t.id, t.state, t.epoch, a.state, a.worker_id, a.result, a.stdout_tail \
         FROM tasks t LEFT JOIN attempts a ON a.task_id = t.id AND a.epoch = t.epoch \
         WHERE t.replica_of = $1 ORDER BY t.replica_index",
    )
    .bind(parent.to_string())
    .fetch_all(&mut *cx.conn)
    .await?;
    struct R {
        id: String,
        state: TaskState,
        epoch: i64,
        live_worker: Option<String>,
        output: Option<Value>,
        digest: Option<String>,
    }
    let mut reps = Vec::with_capacity(rows.len());
    for r in &rows {
        let state: TaskState = parse("tasks.state", &r.try_get::<String>(1)?)?;
        let attempt_state: Option<String> = r.try_get(3)?;
        let live = matches!(attempt_state.as_deref(), Some("assigned" | "running"));
        let (output, digest) = if state == TaskState::Succeeded {
            let result: Option<String> = r.try_get(5)?;
            let stdout: Option<String> = r.try_get(6)?;
            let digest = match &result {
                Some(_) => quorum::Output::Json(&output_of(result.as_deref(), None)?).digest(),
                None => quorum::Output::Text(stdout.as_deref().unwrap_or_default()).digest(),
            };
            (
                Some(output_of(result.as_deref(), stdout.as_deref())?),
                Some(digest),
            )
        } else {
            (None, None)
        };
        reps.push(R {
            id: r.try_get(0)?,
            state,
            epoch: r.try_get(2)?,
            live_worker: if live { r.try_get(4)? } else { None },
            output,
            digest,
        });
    }
    let ballots: Vec<Replica<'_>> = reps
        .iter()
        .map(|r| match (&r.digest, r.state.is_terminal()) {
            (Some(d), _) => Replica::Output(d),
            (None, true) => Replica::Failed,
            (None, false) => Replica::Outstanding,
        })
        .collect();
    let decision = quorum::decide(&ballots, usize::try_from(quorum).unwrap_or(1));
    // Every group, largest first, for the record either way.
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, r) in reps.iter().enumerate() {
        if let Some(d) = &r.digest {
            match groups.iter_mut().find(|g| &g.0 == d) {
                Some(g) => g.1.push(i),
                None => groups.push((d.clone(), vec![i])),
            }
        }
    }
    groups.sort_by_key(|g| std::cmp::Reverse(g.1.len()));
    let groups_json: Vec<Value> = groups
        .iter()
        .map(|(d, idx)| json!({ "digest": d, "replicas": idx }))
        .collect();
    let (next, reason, result) = match decision {
        QuorumDecision::Pending => return Ok(None),
        QuorumDecision::Accepted { agreeing, .. } => {
            let output = agreeing
                .first()
                .and_then(|&i| reps[i].output.clone())
                .unwrap_or(Value::Null);
            let result = json!({
                "output": output,
                "quorum": { "agreeing": agreeing.len(), "groups": groups_json },
            });
            (TaskState::Succeeded, None, result)
        }
        QuorumDecision::NoQuorum { failed, .. } => {
            let largest = groups.first().map_or(0, |g| g.1.len());
            let reason = format!(
                "no quorum: {quorum} of {} replicas had to agree; the largest group had {largest}, \
                 {} replicas failed",
                reps.len(),
                failed.len()
            );
            let result = json!({ "quorum": { "agreeing": 0, "groups": groups_json } });
            (TaskState::Failed, Some(reason), result)
        }
    };
    // The vote is decided: what still runs is wasted work.
    let why = format!("quorum decided: parent {next}");
    let mut kill = Vec::new();
    for r in reps.iter().filter(|r| !r.state.is_terminal()) {
        if let Some(worker) = &r.live_worker {
            crate::exec::query(
                "UPDATE attempts SET state = 'cancelled', ended_at = $1 WHERE task_id = $2 \
                 AND epoch = $3 AND state IN ('assigned', 'running')",
            )
            .bind(now)
            .bind(r.id.clone())
            .bind(r.epoch)
            .execute(&mut *cx.conn)
            .await?;
            kill.push(Kill {
                task_id: r.id.clone(),
                worker_id: worker.clone(),
                epoch: r.epoch,
            });
        }
        crate::exec::query(
            "UPDATE tasks SET state = 'cancelled', reason = $1, retry_at = NULL, updated_at = $2 \
             WHERE id = $3",
        )
        .bind(why.clone())
        .bind(now)
        .bind(r.id.clone())
        .execute(&mut *cx.conn)
        .await?;
    }
    crate::exec::query(
        "UPDATE tasks SET state = $1, reason = $2, result = $3, updated_at = $4 WHERE id = $5",
    )
    .bind(next.as_str())
    .bind(reason)
    .bind(result.to_string())
    .bind(now)
    .bind(parent.to_string())
    .execute(&mut *cx.conn)
    .await?;
    let settled = Box::pin(settle::settle(cx, parent, None, next, now)).await?;
    Ok(Some(Decided {
        parent: parent.to_string(),
        state: next,
        kill,
        queued: settled.queued,
        cancelled: settled.cancelled,
    }))
}

/// Cancels the replicas of a parent being cancelled; returns the attempts to kill.
pub(crate) async fn cancel_replicas(
    cx: &mut OpCx<'_>,
    parent: &str,
    now: i64,
) -> Result<Vec<Kill>> {
    let rows = crate::exec::query(
        "SELECT t.id, t.epoch, a.worker_id FROM tasks t LEFT JOIN attempts a \
         ON a.task_id = t.id AND a.epoch = t.epoch AND a.state IN ('assigned', 'running') \
         WHERE t.replica_of = $1 AND t.state IN ('pending', 'queued', 'assigned', 'running') \
         ORDER BY t.replica_index",
    )
    .bind(parent.to_string())
    .fetch_all(&mut *cx.conn)
    .await?;
    let mut kill = Vec::new();
    for r in &rows {
        let id: String = r.try_get(0)?;
        let epoch: i64 = r.try_get(1)?;
        let worker: Option<String> = r.try_get(2)?;
        if let Some(worker_id) = worker {
            crate::exec::query(
                "UPDATE attempts SET state = 'cancelled', ended_at = $1 WHERE task_id = $2 \
                 AND epoch = $3",
            )
            .bind(now)
            .bind(id.clone())
            .bind(epoch)
            .execute(&mut *cx.conn)
            .await?;
            kill.push(Kill {
                task_id: id.clone(),
                worker_id,
                epoch,
            });
        }
        crate::exec::query(
            "UPDATE tasks SET state = 'cancelled', reason = 'cancelled', retry_at = NULL, \
             updated_at = $1 WHERE id = $2",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *cx.conn)
        .await?;
    }
    Ok(kill)
}
