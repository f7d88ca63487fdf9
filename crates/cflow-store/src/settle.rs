//! What ending a task does beyond its own row: its waiting dependents are queued or cancelled,
//! a user's cancellation stops the live attempt, and retries whose backoff ended are queued.

use cflow_core::dag::dependency_reason;
use cflow_core::task::{TaskEvent, TaskState, transition};
use serde_json::json;
use sqlx::AssertSqlSafe;

use crate::Error;
use crate::attempts::{Bind, fenced, head};
use crate::audit::Draft;
use crate::orch_types::{Cancelled, Kill, Settled};
use crate::writer::{OpCx, Output, Step};
use crate::{Result, bulk, replicas};

/// The dependents of a task that just ended in `state`: on success each loses one unmet
/// dependency and those at zero are queued; otherwise every waiting transitive dependent is
/// cancelled with the reason naming this task (the root cause, which is what a user must fix).
///
/// For a replica (`replica_of` set) that ended, the parent's vote is taken again, and what it
/// decided (the parent's state, its dependents, the replicas to kill) is added to the answer.
pub(crate) async fn settle(
    cx: &mut OpCx<'_>,
    task_id: &str,
    replica_of: Option<&str>,
    state: TaskState,
    now: i64,
) -> Result<Settled> {
    let mut out = dependents(cx, task_id, state, now).await?;
    if let Some(parent) = replica_of
        && state.is_terminal()
        && let Some(d) = replicas::vote(cx, parent, now).await?
    {
        out.parent = Some((d.parent, d.state));
        out.kill = d.kill;
        out.queued.extend(d.queued);
        out.cancelled.extend(d.cancelled);
    }
    Ok(out)
}

async fn dependents(
    cx: &mut OpCx<'_>,
    task_id: &str,
    state: TaskState,
    now: i64,
) -> Result<Settled> {
    let mut out = Settled {
        state,
        queued: Vec::new(),
        cancelled: Vec::new(),
        parent: None,
        kill: Vec::new(),
        next: None,
    };
    const WAITING: &str =
        "state = 'pending' AND id IN (SELECT task_id FROM task_deps WHERE dep_id = $1)";
    if state == TaskState::Succeeded {
        let sql = format!(
            "UPDATE tasks SET unmet = unmet - 1, updated_at = $2 WHERE unmet > 0 AND {WAITING}"
        );
        crate::exec::query(AssertSqlSafe(sql))
            .bind(task_id.to_string())
            .bind(now)
            .execute(&mut *cx.conn)
            .await?;
        let sql = format!(
            "SELECT id, replicas FROM tasks WHERE unmet = 0 AND retry_at IS NULL AND {WAITING} \
             ORDER BY id"
        );
        let ready: Vec<(String, i64)> = crate::exec::query_as(AssertSqlSafe(sql))
            .bind(task_id.to_string())
            .fetch_all(&mut *cx.conn)
            .await?;
        if ready.is_empty() {
            return Ok(out);
        }
        let sql = format!(
            "UPDATE tasks SET state = 'queued', updated_at = $2 WHERE unmet = 0 AND retry_at IS NULL AND {WAITING}"
        );
        crate::exec::query(AssertSqlSafe(sql))
            .bind(task_id.to_string())
            .bind(now)
            .execute(&mut *cx.conn)
            .await?;
        // Quorum parents do not run: their replicas are what is queued.
        let parents: Vec<String> = ready
            .iter()
            .filter(|(_, n)| *n > 1)
            .map(|(id, _)| id.clone())
            .collect();
        let spawned = replicas::spawn(cx, &parents, now).await?;
        for (id, _) in ready {
            match spawned.iter().find(|(p, _)| *p == id) {
                Some((_, reps)) => out.queued.extend(reps.iter().cloned()),
                None => out.queued.push(id),
            }
        }
        return Ok(out);
    }
    if !state.is_terminal() {
        return Ok(out);
    }
    let reason = dependency_reason(task_id, state);
    let mut next = vec![task_id.to_string()];
    while let Some(dep) = next.pop() {
        let sql = format!("SELECT id FROM tasks WHERE {WAITING} ORDER BY id");
        let ids: Vec<String> = crate::exec::query_scalar(AssertSqlSafe(sql))
            .bind(dep.clone())
            .fetch_all(&mut *cx.conn)
            .await?;
        if ids.is_empty() {
            continue;
        }
        // One statement for all of this task's waiting dependents (one JSON parameter).
        let sql = format!(
            "UPDATE tasks SET state = 'cancelled', reason = $1, updated_at = $2 \
             WHERE state = 'pending' AND id IN ({})",
            bulk::ids_from(cx.backend, 3)
        );
        // The text holds only SQL written here; the ids are in the one parameter.
        crate::exec::query(AssertSqlSafe(sql))
            .bind(reason.clone())
            .bind(now)
            .bind(bulk::ids_json(ids.iter().map(String::as_str)))
            .execute(&mut *cx.conn)
            .await?;
        for id in ids {
            out.cancelled.push(id.clone());
            next.push(id);
        }
    }
    Ok(out)
}

pub(crate) async fn cancel(
    cx: &mut OpCx<'_>,
    tenant_id: &str,
    task_id: &str,
    now: i64,
) -> Result<Step> {
    let draft = Draft::success(
        Some(tenant_id),
        "task.cancel",
        format!("task/{task_id}"),
        json!({}),
    );
    let h = match head(cx, task_id).await? {
        Some(h) if h.tenant_id == tenant_id => h,
        _ => {
            return Ok(Step::failed(
                Error::NotFound(format!("task {task_id}")),
                draft,
            ));
        }
    };
    let next = match transition(h.state, TaskEvent::Cancelled) {
        Ok(s) => s,
        Err(e) => {
            return Ok(Step::failed(
                Error::State(format!("task {task_id}: {e}")),
                draft,
            ));
        }
    };
    let mut kill = Vec::new();
    if h.replicas > 1 && h.replica_of.is_none() {
        // A parent never has attempts of its own: its replicas are what runs.
        kill = replicas::cancel_replicas(cx, task_id, now).await?;
    } else if h.state.holds_lease() {
        let worker: String = crate::exec::query_scalar(
            "SELECT worker_id FROM attempts WHERE task_id = $1 AND epoch = $2",
        )
        .bind(task_id.to_string())
        .bind(h.epoch)
        .fetch_one(&mut *cx.conn)
        .await?;
        fenced(
            cx,
            "state = 'cancelled', ended_at = $1",
            task_id,
            h.epoch,
            vec![Bind::I(Some(now))],
        )
        .await?;
        kill.push(Kill {
            task_id: task_id.to_string(),
            worker_id: worker,
            epoch: h.epoch,
        });
    }
    crate::exec::query("UPDATE tasks SET state = $1, reason = 'cancelled', updated_at = $2 WHERE id = $3 AND tenant_id = $4")
        .bind(next.as_str())
        .bind(now)
        .bind(task_id.to_string())
        .bind(tenant_id.to_string())
        .execute(&mut *cx.conn)
        .await?;
    let settled = settle(cx, task_id, h.replica_of.as_deref(), next, now).await?;
    kill.extend(settled.kill);
    let killed: Vec<&str> = kill.iter().map(|k| k.task_id.as_str()).collect();
    let draft = Draft {
        detail: json!({ "from": h.state.as_str(), "kill": killed, "cancelled": settled.cancelled,
                        "parent": settled.parent.as_ref().map(|(p, s)| json!({ "id": p, "state": s.as_str() })) }),
        ..draft
    };
    Ok(Step::done(
        Output::Cancelled(Cancelled {
            kill,
            dependents: settled.cancelled,
        }),
        draft,
    ))
}

/// Queues (at most `limit`) tasks whose retry delay ended by `now`. One audit entry per call
/// that moved something, listing the tasks.
pub(crate) async fn promote(cx: &mut OpCx<'_>, now: i64, limit: i64) -> Result<Step> {
    const DUE: &str = "state = 'pending' AND unmet = 0 AND retry_at IS NOT NULL AND retry_at <= $1";
    let sql = format!("SELECT id FROM tasks WHERE {DUE} ORDER BY retry_at, id LIMIT $2");
    let ids: Vec<String> = crate::exec::query_scalar(AssertSqlSafe(sql))
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *cx.conn)
        .await?;
    if !ids.is_empty() {
        let sql = format!(
            "UPDATE tasks SET state = 'queued', retry_at = NULL, updated_at = $2 WHERE {DUE} \
             AND id IN ({})",
            bulk::ids_from(cx.backend, 3)
        );
        // The text holds only SQL written here; the ids are in the one parameter.
        crate::exec::query(AssertSqlSafe(sql))
            .bind(now)
            .bind(now)
            .bind(bulk::ids_json(ids.iter().map(String::as_str)))
            .execute(&mut *cx.conn)
            .await?;
    }
    let count = ids.len() as u64;
    if ids.is_empty() {
        return Ok(Step::silent(Output::Count(0)));
    }
    let draft = Draft::success(None, "task.retry", "tasks".into(), json!({ "queued": ids }));
    Ok(Step::done(Output::Count(count), draft))
}
