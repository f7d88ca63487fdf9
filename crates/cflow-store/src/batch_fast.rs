//! The set-based paths of batched attempt ops: read every task (and attempt, and agent) of the
//! batch in a few statements, decide each element in memory with the same checks as the single
//! op (`check_live`, `check_agent`, `plan_ending`), then write with a few multi-row statements.
//! Every list of ids or rows is bound as one JSON parameter (see `bulk`), so a batch of any
//! size costs about ten statements instead of two to four thousand, and binds ten parameters.
//!
//! They are exact only when elements do not affect each other's checks, so `batch::apply` uses
//! them only for batches of one kind of op on distinct tasks, and (for completions) not when a
//! task is a quorum replica, whose ending can cancel other replicas of the same batch. Otherwise
//! it runs the elements one by one.

use std::collections::{BTreeMap, HashMap, HashSet};

use cflow_core::task::TaskState;
use serde_json::json;
use sqlx::AssertSqlSafe;

use crate::attempts::{
    AGENT_INFO_COLUMNS, AgentInfo, Ending, HEAD_COLUMNS, Head, agent_info, assigned_attempt,
    assigned_draft, check_agent, check_live, completed_draft, head_from_row, insert_attempts,
    new_attempt, plan_ending, stale_step, start_time, tail,
};
use crate::audit::Draft;
use crate::bulk::Ty::{Int, Text};
use crate::exec::GetCol;
use crate::orch_types::{Attempt, AttemptState, Outcome, Settled};
use crate::rebuild::qualified;
use crate::swarms::{json_col, parse};
use crate::tasks::{ATTEMPT_COLUMNS, attempt_from_row_at};
use crate::writer::{OpCx, Output, Step};
use crate::{Backend, Error, Result, bulk, settle};

/// A task's id and head columns, as [`read_live`] reads them.
type PackedHead = (String, String, String, i64, i64, i64, i64, Option<String>);
/// An attempt's columns (all null when the task has none at its epoch).
type PackedAttempt = (
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// The statement [`read_live`] runs: one row, the JSON array of the tasks named by the ids in
/// parameter 1 with their current attempts (and, with `deps`, whether other tasks wait on them).
pub(crate) fn read_live_sql(backend: Backend, deps: bool) -> String {
    let (agg, array) = match backend {
        Backend::Sqlite => ("json_group_array", "json_array"),
        Backend::Postgres => ("json_agg", "json_build_array"),
    };
    let has_dependents = if deps {
        "CASE WHEN EXISTS (SELECT 1 FROM task_deps d WHERE d.dep_id = t.id) THEN 1 ELSE 0 END"
    } else {
        "0"
    };
    format!(
        "SELECT COALESCE(CAST({agg}({array}({array}(t.id, {}), {array}({}), {has_dependents})) \
         AS TEXT), '[]') \
         FROM tasks t LEFT JOIN attempts a ON a.task_id = t.id AND a.epoch = t.epoch \
         WHERE t.id IN ({})",
        qualified("t", HEAD_COLUMNS),
        qualified("a", ATTEMPT_COLUMNS),
        bulk::ids_from(backend, 1)
    )
}

/// Each task's head and the attempt at its current epoch (if any), with the rows packed in one
/// JSON value. sqlx's SQLite driver hands each
/// result row from its worker thread to the caller through a channel (a wake-up and a copy of
/// every column per row), and sqlx's `Any` rows cost an allocation per column on both backends:
/// one row instead of one per task avoids that. With `deps`, also the tasks that other tasks
/// depend on (whose ending settles dependents), in the same read: a round trip less per
/// completion on PostgreSQL.
async fn read_live(
    cx: &mut OpCx<'_>,
    ids: &[&str],
    deps: bool,
) -> Result<(HashMap<String, (Head, Option<Attempt>)>, HashSet<String>)> {
    // Read with the batch's `BEGIN` if these are the ids the writer read there (only for the
    // run of attempts right after the leading submissions, and only once).
    let prefetched = match cx.live.take() {
        Some((read, packed)) if deps && read.iter().map(String::as_str).eq(ids.iter().copied()) => {
            Some(packed)
        }
        _ => None,
    };
    if prefetched.is_none() && cx.backend == Backend::Sqlite {
        return read_live_rows(cx, ids, deps).await;
    }
    let packed: String = match prefetched {
        Some(packed) => packed,
        // The text holds only column names written here; the ids are in the one parameter.
        None => {
            crate::exec::query_scalar(AssertSqlSafe(read_live_sql(cx.backend, deps)))
                .bind(bulk::ids_json(ids.iter().copied()))
                .fetch_one(&mut *cx.conn)
                .await?
        }
    };
    let rows: Vec<(PackedHead, PackedAttempt, i64)> = json_col("tasks", &packed)?;
    let mut out = HashMap::with_capacity(rows.len());
    let mut with_dependents = HashSet::new();
    for (h, a, dependents) in rows {
        if dependents != 0 {
            with_dependents.insert(h.0.clone());
        }
        let (id, tenant_id, state, epoch, attempts, max_attempts, replicas, replica_of) = h;
        let head = Head {
            tenant_id,
            state: parse("tasks.state", &state)?,
            epoch,
            attempts,
            max_attempts,
            replicas,
            replica_of,
        };
        let attempt = match a {
            (
                Some(task_id),
                Some(epoch),
                Some(attempt_no),
                Some(agent_id),
                Some(worker_id),
                Some(state),
                Some(lease_expires_at),
                Some(assigned_at),
                started_at,
                ended_at,
                exit_code,
                stdout_tail,
                stderr_tail,
                result,
                detail,
            ) => Some(Attempt {
                task_id,
                epoch,
                attempt_no,
                agent_id,
                worker_id,
                state: parse("attempts.state", &state)?,
                lease_expires_at,
                assigned_at,
                started_at,
                ended_at,
                exit_code,
                stdout_tail,
                stderr_tail,
                result: result
                    .map(|s| json_col("attempts.result", &s))
                    .transpose()?,
                detail: detail
                    .map(|s| json_col("attempts.detail", &s))
                    .transpose()?,
            }),
            (None, ..) => None,
            (Some(task_id), ..) => {
                return Err(Error::Corrupt {
                    what: "attempts".into(),
                    detail: format!("the attempt of {task_id} has a null required column"),
                });
            }
        };
        out.insert(id, (head, attempt));
    }
    Ok((out, with_dependents))
}

/// [`read_live`] on SQLite: the writer runs SQLite in-line (`exec::WConn::Lite`), so rows cost
/// no hop and no per-column allocation beyond their values; packing them into one JSON value
/// there (SQLite building the text, serde parsing it back) was about a tenth of the writer's
/// time under `cflow bench tasks`.
async fn read_live_rows(
    cx: &mut OpCx<'_>,
    ids: &[&str],
    deps: bool,
) -> Result<(HashMap<String, (Head, Option<Attempt>)>, HashSet<String>)> {
    let has_dependents = if deps {
        "EXISTS (SELECT 1 FROM task_deps d WHERE d.dep_id = t.id)"
    } else {
        "0"
    };
    // The text holds only column names written here; the ids are in the one parameter.
    let sql = format!(
        "SELECT t.id, {}, {}, {has_dependents} \
         FROM tasks t LEFT JOIN attempts a ON a.task_id = t.id AND a.epoch = t.epoch \
         WHERE t.id IN ({})",
        qualified("t", HEAD_COLUMNS),
        qualified("a", ATTEMPT_COLUMNS),
        bulk::ids_from(cx.backend, 1)
    );
    let rows = crate::exec::query(AssertSqlSafe(sql))
        .bind(bulk::ids_json(ids.iter().copied()))
        .fetch_all(&mut *cx.conn)
        .await?;
    // Columns: the id, the head's 7, the attempt's 15, whether others depend on the task.
    const HEAD: usize = 1;
    const ATTEMPT: usize = HEAD + 7;
    const DEPENDENTS: usize = ATTEMPT + 15;
    let mut out = HashMap::with_capacity(rows.len());
    let mut with_dependents = HashSet::new();
    for row in &rows {
        let id: String = row.try_get(0)?;
        if row.try_get::<i64>(DEPENDENTS)? != 0 {
            with_dependents.insert(id.clone());
        }
        let head = head_from_row(row, HEAD)?;
        let attempt = match row.try_get::<Option<String>>(ATTEMPT)? {
            Some(_) => Some(attempt_from_row_at(row, ATTEMPT)?),
            None => None,
        };
        out.insert(id, (head, attempt));
    }
    Ok((out, with_dependents))
}

/// Runs `UPDATE … WHERE <cond> AND id IN (ids)` with `$1` bound to `now`; returns the rows
/// changed.
async fn update_tasks_in(cx: &mut OpCx<'_>, sql_head: &str, now: i64, ids: &[&str]) -> Result<u64> {
    let sql = format!("{sql_head} ({})", bulk::ids_from(cx.backend, 2));
    // The text holds only SQL written by the callers here.
    let done = crate::exec::query(AssertSqlSafe(sql))
        .bind(now)
        .bind(bulk::ids_json(ids.iter().copied()))
        .execute(&mut *cx.conn)
        .await?;
    Ok(done.rows_affected())
}

/// Runs `sql`, whose only parameter `$1` is the rows' JSON text, over `rows` (in as many
/// statements as `bulk::rows_json` splits them into); returns the rows changed.
async fn execute_rows<T: serde::Serialize>(
    cx: &mut OpCx<'_>,
    sql: &str,
    rows: &[T],
) -> Result<u64> {
    execute_texts(cx, sql, bulk::rows_json(rows)?).await
}

/// Runs `sql` once per JSON text of rows (`$1`); returns the rows changed.
async fn execute_texts(cx: &mut OpCx<'_>, sql: &str, texts: Vec<String>) -> Result<u64> {
    let mut n = 0;
    for text in texts {
        // The callers' text holds only SQL written in this file.
        n += crate::exec::query(AssertSqlSafe(sql.to_string()))
            .bind(text)
            .execute(&mut *cx.conn)
            .await?
            .rows_affected();
    }
    Ok(n)
}

/// [`write_endings`] on SQLite: each row its own run of a prepared statement. The writer runs
/// SQLite in-line (`exec::WConn::Lite`), so a statement per row costs a bind and a step, where
/// one statement over the batch's rows as JSON cost serializing them, and SQLite parsing the
/// text and extracting every value (`jsonb_each`, `->>`): the largest share of the JSON work in
/// the writer's profile under `cflow bench tasks`.
async fn write_endings_by_row(cx: &mut OpCx<'_>, ended: &[Ended<'_>]) -> Result<()> {
    let mut n = 0;
    for (_, a, e, outcome, now, started) in ended {
        n += crate::exec::query(
            "UPDATE attempts SET state = $3, ended_at = $4, exit_code = $5, stdout_tail = $6, \
             stderr_tail = $7, result = $8, started_at = COALESCE(started_at, $9), detail = $10 \
             WHERE task_id = $1 AND epoch = $2 AND state IN ('assigned', 'running')",
        )
        .bind(a.task_id.clone())
        .bind(a.epoch)
        .bind(e.attempt_state.as_str().to_string())
        .bind(*now)
        .bind(outcome.exit_code)
        .bind(tail(&outcome.stdout_tail))
        .bind(tail(&outcome.stderr_tail))
        .bind(outcome.result.as_ref().map(|r| r.to_string()))
        .bind(started.map(|s| start_time(s, a.assigned_at, *now)))
        .bind(outcome.detail.as_ref().map(|d| d.to_string()))
        .execute(&mut *cx.conn)
        .await?
        .rows_affected();
    }
    matched("attempts", n, ended.len())?;
    let mut n = 0;
    for (_, a, e, _, now, _) in ended {
        n += crate::exec::query(
            "UPDATE tasks SET state = $2, reason = $3, retry_at = $4, updated_at = $5 \
             WHERE id = $1 AND state IN ('assigned', 'running')",
        )
        .bind(a.task_id.clone())
        .bind(e.next.as_str().to_string())
        .bind(e.reason.clone())
        .bind(e.retry_at)
        .bind(*now)
        .execute(&mut *cx.conn)
        .await?
        .rows_affected();
    }
    matched("tasks", n, ended.len())?;
    for (id, (done, failed, busy, now)) in agent_counts(ended) {
        crate::exec::query(
            "UPDATE agents SET tasks_done = tasks_done + $2, failures = failures + $3, \
             busy_ms = busy_ms + $4, updated_at = $5 WHERE id = $1",
        )
        .bind(id.to_string())
        .bind(done)
        .bind(failed)
        .bind(busy)
        .bind(now)
        .execute(&mut *cx.conn)
        .await?;
    }
    Ok(())
}

/// The agents' counters of ended attempts, summed per agent: tasks done, failures, busy time,
/// and the latest end.
fn agent_counts<'a>(ended: &[Ended<'a>]) -> BTreeMap<&'a str, (i64, i64, i64, i64)> {
    let mut agents: BTreeMap<&str, (i64, i64, i64, i64)> = BTreeMap::new();
    for (_, a, e, _, now, _) in ended {
        let (done, failed) = e.counts();
        let s = agents.entry(a.agent_id.as_str()).or_default();
        *s = (s.0 + done, s.1 + failed, s.2 + e.busy, s.3.max(*now));
    }
    agents
}

/// Writes ended attempts, their tasks and their agents' counters: on PostgreSQL in one
/// statement (three data-modifying `WITH` parts) held back to travel with the batch's next
/// round trip (`exec::Query::defer`; it checks its own counts) when each set of rows fits in
/// one parameter, otherwise in three; on SQLite a statement per row
/// ([`write_endings_by_row`]).
async fn write_endings(cx: &mut OpCx<'_>, ended: &[Ended<'_>]) -> Result<()> {
    let backend = cx.backend;
    if backend == Backend::Sqlite {
        return write_endings_by_row(cx, ended).await;
    }
    // The attempts: one fenced update of every ended attempt, each row with its own values.
    let attempts_sql = |p| {
        format!(
            "UPDATE attempts SET state = v.state, ended_at = v.ended_at, exit_code = v.exit_code, \
             stdout_tail = v.stdout_tail, stderr_tail = v.stderr_tail, result = v.result, \
             started_at = COALESCE(attempts.started_at, v.started_at), detail = v.detail \
             FROM ({}) AS v WHERE attempts.task_id = v.task_id AND attempts.epoch = v.epoch \
             AND {}",
            bulk::rows_from(
                backend,
                p,
                &[
                    ("task_id", Text),
                    ("epoch", Int),
                    ("state", Text),
                    ("ended_at", Int),
                    ("exit_code", Int),
                    ("stdout_tail", Text),
                    ("stderr_tail", Text),
                    ("result", Text),
                    ("started_at", Int),
                    ("detail", Text),
                ],
            ),
            attempt_state_in(backend, &["assigned", "running"])
        )
    };
    let attempt_rows = bulk::rows_json(
        &ended
            .iter()
            .map(|(_, a, e, outcome, now, started)| {
                (
                    &a.task_id,
                    a.epoch,
                    e.attempt_state.as_str(),
                    now,
                    outcome.exit_code,
                    tail(&outcome.stdout_tail),
                    tail(&outcome.stderr_tail),
                    outcome.result.as_ref().map(|r| r.to_string()),
                    started.map(|s| start_time(s, a.assigned_at, *now)),
                    outcome.detail.as_ref().map(|d| d.to_string()),
                )
            })
            .collect::<Vec<_>>(),
    )?;
    // The tasks, each with its own state, reason, retry time and clock.
    let tasks_sql = |p| {
        format!(
            "UPDATE tasks SET state = v.state, reason = v.reason, retry_at = v.retry_at, \
             updated_at = v.ts FROM ({}) AS v WHERE tasks.id = v.id \
             AND tasks.state IN ('assigned', 'running')",
            bulk::rows_from(
                backend,
                p,
                &[
                    ("id", Text),
                    ("state", Text),
                    ("reason", Text),
                    ("retry_at", Int),
                    ("ts", Int),
                ],
            )
        )
    };
    let task_rows = bulk::rows_json(
        &ended
            .iter()
            .map(|(_, a, e, _, now, _)| (&a.task_id, e.next.as_str(), &e.reason, e.retry_at, now))
            .collect::<Vec<_>>(),
    )?;
    // The agents' counters, summed per agent.
    let agents = agent_counts(ended);
    let agents_sql = |p| {
        format!(
            "UPDATE agents SET tasks_done = agents.tasks_done + v.done, \
             failures = agents.failures + v.failed, busy_ms = agents.busy_ms + v.busy, \
             updated_at = v.ts FROM ({}) AS v WHERE agents.id = v.id",
            bulk::rows_from(
                backend,
                p,
                &[
                    ("id", Text),
                    ("done", Int),
                    ("failed", Int),
                    ("busy", Int),
                    ("ts", Int),
                ],
            )
        )
    };
    let agent_rows = bulk::rows_json(
        &agents
            .iter()
            .map(|(id, (done, failed, busy, now))| (id, done, failed, busy, now))
            .collect::<Vec<_>>(),
    )?;
    if let (Backend::Postgres, [a], [t], [g]) = (
        backend,
        attempt_rows.as_slice(),
        task_rows.as_slice(),
        agent_rows.as_slice(),
    ) {
        // Held back to go with the batch's next round trip (its `COMMIT`, usually): the
        // counts are checked by the statement itself.
        let sql = format!(
            "WITH a AS ({} RETURNING 1), t AS ({} RETURNING 1), g AS ({} RETURNING 1) \
             SELECT cflow_expect('attempts', (SELECT COUNT(*) FROM a), $4), \
             cflow_expect('tasks', (SELECT COUNT(*) FROM t), $4), (SELECT COUNT(*) FROM g)",
            attempts_sql(1),
            tasks_sql(2),
            agents_sql(3)
        );
        // The text holds only SQL written here; the values are in the parameters.
        crate::exec::query(AssertSqlSafe(sql))
            .bind(a.clone())
            .bind(t.clone())
            .bind(g.clone())
            .bind(ended.len() as i64)
            .defer(&mut *cx.conn)
            .await?;
        return Ok(());
    }
    let n = execute_texts(cx, &attempts_sql(1), attempt_rows).await?;
    matched("attempts", n, ended.len())?;
    let n = execute_texts(cx, &tasks_sql(1), task_rows).await?;
    matched("tasks", n, ended.len())?;
    execute_texts(cx, &agents_sql(1), agent_rows).await?;
    Ok(())
}

/// `attempts.state IN (<states>)` for a batched statement that finds each attempt by its key
/// (task, epoch). On PostgreSQL the states are an `InitPlan` value, not constants: the writer's
/// statements are prepared and planned once, with the statistics of a young database (every
/// table nearly empty), and a constant condition that implies the predicate of a partial index
/// on live attempts (`attempts_live_by_worker`, `attempts_live_leases`) let the planner pick
/// that index with the task as its second column, a scan of every live attempt for each row
/// (the completions' update went from 30 to 67 us a task in some runs, which then ran at 6,200
/// tasks/s instead of 8,000). With a value the planner cannot see, only the key's index serves.
fn attempt_state_in(backend: Backend, states: &[&str]) -> String {
    let list = states
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    match backend {
        Backend::Postgres => {
            format!("attempts.state = ANY (CAST((SELECT ARRAY[{list}]) AS text[]))")
        }
        Backend::Sqlite => format!("attempts.state IN ({list})"),
    }
}

fn matched(what: &str, n: u64, expected: usize) -> Result<()> {
    if n == expected as u64 {
        return Ok(());
    }
    Err(Error::Corrupt {
        what: what.into(),
        detail: format!("a batched update matched {n} rows, not {expected}"),
    })
}

/// One assignment of a batch.
#[derive(Clone)]
pub(crate) struct AssignReq<'a> {
    pub task_id: &'a str,
    pub agent_id: &'a str,
    pub worker_id: &'a str,
    pub lease_ms: i64,
    pub now: i64,
}

/// What assignments check of each agent (and its swarm), by agent id, in one read.
pub(crate) async fn agent_infos(
    cx: &mut OpCx<'_>,
    agent_ids: &[&str],
) -> Result<HashMap<String, AgentInfo>> {
    let sql = agent_infos_sql(cx.backend, 1);
    // The text holds only column names written here; the ids are in the one parameter.
    let rows = crate::exec::query(AssertSqlSafe(sql))
        .bind(bulk::ids_json(agent_ids.iter().copied()))
        .fetch_all(&mut *cx.conn)
        .await?;
    let mut agents = HashMap::with_capacity(rows.len());
    for r in rows {
        let a = agent_info(&r)?;
        agents.insert(a.id.clone(), a);
    }
    Ok(agents)
}

/// The read of [`agent_infos`], the ids' JSON array bound as `$p`.
pub(crate) fn agent_infos_sql(backend: Backend, p: usize) -> String {
    format!(
        "SELECT {AGENT_INFO_COLUMNS} FROM agents a JOIN swarms s ON s.id = a.swarm_id \
         WHERE a.id IN ({})",
        bulk::ids_from(backend, p)
    )
}

/// Assignments of distinct tasks. On PostgreSQL each is first tried by one statement that
/// checks and writes them all ([`assign_pg`]); those it leaves take the read-then-write path
/// ([`assign_checked`]), which says why.
pub(crate) async fn assign(cx: &mut OpCx<'_>, reqs: &[AssignReq<'_>]) -> Result<Vec<Step>> {
    if cx.backend == Backend::Postgres && crate::exec::defers(cx.conn) {
        return assign_pg(cx, reqs).await;
    }
    if cx.backend == Backend::Sqlite {
        return assign_lite(cx, reqs).await;
    }
    assign_checked(cx, reqs).await
}

/// The agent states that take no tasks, as a list of SQL literals (`check_agent`).
fn refused_agent_states() -> String {
    use crate::orch_types::AgentState;
    [
        AgentState::Stopped,
        AgentState::Failed,
        AgentState::Quarantined,
        AgentState::Draining,
    ]
    .map(|s| format!("'{}'", s.as_str()))
    .join(", ")
}

/// The tenant of agent `agent` (a column or parameter) when it takes tasks (its swarm active,
/// its state not refused), else `NULL`: the agent half of [`check_agent`] as a scalar subquery.
fn agent_tenant_if_open(agent: &str) -> String {
    format!(
        "(SELECT a.tenant_id FROM agents a JOIN swarms s ON s.id = a.swarm_id \
         WHERE a.id = {agent} AND s.state = '{}' AND a.state NOT IN ({}))",
        crate::orch_types::SwarmState::Active.as_str(),
        refused_agent_states()
    )
}

/// An assignment that the database made: its attempt and audit entry.
fn made_assignment(
    r: &AssignReq<'_>,
    tenant: &str,
    epoch: i64,
    attempt_no: i64,
) -> (Attempt, Draft) {
    let a = assigned_attempt(
        r.task_id,
        r.agent_id,
        r.worker_id,
        (epoch, attempt_no),
        r.lease_ms,
        r.now,
    );
    // The detail is the assignment's (`assigned_draft`).
    let draft = Draft::success(
        Some(tenant),
        "task.assign",
        format!("task/{}", r.task_id),
        serde_json::Value::Null,
    );
    let draft = assigned_draft(draft, &a);
    (a, draft)
}

/// [`assign`] on SQLite: each task by one guarded `UPDATE … RETURNING` that makes the same
/// checks as [`assign_checked`] (the task is queued, the agent is of its tenant and takes
/// tasks) with no read first, then the attempts' rows; the tasks it leaves go through
/// [`assign_checked`], which finds them unchanged and says why each is refused. A hand-over
/// (a completion that gives its agent the next task) is one such assignment: reading each task
/// and agent first cost about a third of the writer's time under `cflow bench tasks`.
async fn assign_lite(cx: &mut OpCx<'_>, reqs: &[AssignReq<'_>]) -> Result<Vec<Step>> {
    let sql = format!(
        "UPDATE tasks SET state = '{}', epoch = epoch + 1, attempts = attempts + 1, \
         updated_at = $1 WHERE id = $2 AND state = '{}' AND tenant_id = {} \
         RETURNING tenant_id, epoch, attempts",
        TaskState::Assigned.as_str(),
        TaskState::Queued.as_str(),
        agent_tenant_if_open("$3"),
    );
    let mut steps: Vec<Option<Step>> = Vec::with_capacity(reqs.len());
    let mut created: Vec<(String, Attempt)> = Vec::with_capacity(reqs.len());
    let mut rest: Vec<(usize, AssignReq<'_>)> = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        // The text holds only constants written here; the values are bound.
        let row = crate::exec::query(AssertSqlSafe(sql.clone()))
            .bind(r.now)
            .bind(r.task_id)
            .bind(r.agent_id)
            .fetch_optional(&mut *cx.conn)
            .await?;
        let Some(row) = row else {
            steps.push(None);
            rest.push((i, r.clone()));
            continue;
        };
        let tenant: String = row.try_get(0)?;
        let (a, draft) = made_assignment(r, &tenant, row.try_get(1)?, row.try_get(2)?);
        created.push((tenant, a.clone()));
        steps.push(Some(Step::done(Output::Assigned(a), draft)));
    }
    let rows: Vec<(&str, &Attempt)> = created.iter().map(|(t, a)| (t.as_str(), a)).collect();
    insert_attempts(cx, &rows).await?;
    fill_refused(cx, steps, rest).await
}

/// `steps` with the gaps (the assignments in `rest`, with their index) filled by
/// [`assign_checked`].
async fn fill_refused(
    cx: &mut OpCx<'_>,
    mut steps: Vec<Option<Step>>,
    rest: Vec<(usize, AssignReq<'_>)>,
) -> Result<Vec<Step>> {
    if !rest.is_empty() {
        let reqs: Vec<AssignReq<'_>> = rest.iter().map(|(_, r)| r.clone()).collect();
        for ((i, _), step) in rest.iter().zip(assign_checked(cx, &reqs).await?) {
            steps[*i] = Some(step);
        }
    }
    steps
        .into_iter()
        .map(|s| {
            s.ok_or_else(|| Error::Corrupt {
                what: "tasks".into(),
                detail: "an assignment of the batch got no answer".into(),
            })
        })
        .collect()
}

/// The statement `cflow_assign` (prepared on the writer's PostgreSQL connection) that
/// [`assign_pg`] runs: for each row of the JSON array `$1` (task, agent, worker, lease in ms,
/// time), the same checks as [`assign_checked`] (the task is queued, the agent is of the task's
/// tenant and takes tasks: `check_agent`) and the same writes (the task's state, epoch and
/// attempt count, the attempt's row), as one statement. It returns one row: the JSON array of
/// `[task, tenant, epoch, attempt number]` of the tasks it assigned.
///
/// Its plan is generic (prepared once, planned with the statistics of a young database, where
/// every table looks nearly empty), so it leaves the planner no join to reorder: the agent check
/// is a scalar subquery by the agent's key, and the task's state is compared with an `InitPlan`
/// value, not a constant, which keeps the partial index of queued tasks (`tasks_ready`) out of
/// it. With a plain join and a constant, the plan walked every queued task for each row, and the
/// agents of the tenant (`agents_by_swarm`) for each task: 55 us a task against 36 for the
/// statements it replaces.
pub(crate) fn assign_pg_sql() -> String {
    format!(
        "WITH v AS ({}), \
         ok AS (SELECT v.*, {} AS tenant_id FROM v), \
         u AS (UPDATE tasks SET state = '{}', epoch = tasks.epoch + 1, \
         attempts = tasks.attempts + 1, updated_at = ok.now FROM ok \
         WHERE tasks.id = ok.task_id AND tasks.state = (SELECT '{}'::text) \
         AND tasks.tenant_id = ok.tenant_id \
         RETURNING tasks.id, tasks.tenant_id, tasks.epoch, tasks.attempts, ok.agent_id, \
         ok.worker_id, ok.now + ok.lease_ms AS lease_expires_at, ok.now), \
         i AS (INSERT INTO attempts (task_id, epoch, attempt_no, tenant_id, agent_id, worker_id, \
         lease_expires_at, assigned_at, state) SELECT id, epoch, attempts, tenant_id, agent_id, \
         worker_id, lease_expires_at, now, '{}' FROM u RETURNING task_id) \
         SELECT COALESCE(CAST(json_agg(json_build_array(u.id, u.tenant_id, u.epoch, \
         u.attempts)) AS TEXT), '[]') FROM u JOIN i ON i.task_id = u.id",
        bulk::rows_from(
            Backend::Postgres,
            1,
            &[
                ("task_id", Text),
                ("agent_id", Text),
                ("worker_id", Text),
                ("lease_ms", Int),
                ("now", Int),
            ],
        ),
        agent_tenant_if_open("v.agent_id"),
        TaskState::Assigned.as_str(),
        TaskState::Queued.as_str(),
        AttemptState::Assigned.as_str(),
    )
}

/// [`assign`] on PostgreSQL: one round trip (with the writes held back before it, usually the
/// batch's completions) assigns every task that passes the checks, with no read first; the
/// rest (a task no longer queued, an agent that takes no tasks) go through
/// [`assign_checked`], which finds them unchanged and refuses each with its reason.
async fn assign_pg(cx: &mut OpCx<'_>, reqs: &[AssignReq<'_>]) -> Result<Vec<Step>> {
    let rows = bulk::rows_json(
        &reqs
            .iter()
            .map(|r| (r.task_id, r.agent_id, r.worker_id, r.lease_ms, r.now))
            .collect::<Vec<_>>(),
    )?;
    let [text] = rows.as_slice() else {
        // Several megabytes of rows: the general path splits them.
        return assign_checked(cx, reqs).await;
    };
    let sql = format!("EXECUTE cflow_assign({})", bulk::dollar_quoted(text));
    let packed = crate::exec::fetch_last_pg(cx.conn, &sql).await?;
    let assigned: Vec<(String, String, i64, i64)> = json_col("assigned tasks", &packed)?;
    let mut assigned: HashMap<String, (String, i64, i64)> = assigned
        .into_iter()
        .map(|(id, tenant, epoch, attempt_no)| (id, (tenant, epoch, attempt_no)))
        .collect();
    let mut steps: Vec<Option<Step>> = Vec::with_capacity(reqs.len());
    let mut rest: Vec<(usize, AssignReq<'_>)> = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        let Some((tenant, epoch, attempt_no)) = assigned.remove(r.task_id) else {
            steps.push(None);
            rest.push((i, r.clone()));
            continue;
        };
        let (a, draft) = made_assignment(r, &tenant, epoch, attempt_no);
        steps.push(Some(Step::done(Output::Assigned(a), draft)));
    }
    if !assigned.is_empty() {
        return Err(Error::Corrupt {
            what: "tasks".into(),
            detail: format!("{} tasks assigned that no request named", assigned.len()),
        });
    }
    fill_refused(cx, steps, rest).await
}

/// Assignments of distinct tasks: read every task and agent, check each, then write.
async fn assign_checked(cx: &mut OpCx<'_>, reqs: &[AssignReq<'_>]) -> Result<Vec<Step>> {
    let ids: Vec<&str> = reqs.iter().map(|r| r.task_id).collect();
    let (live, _) = read_live(cx, &ids, false).await?;
    let agent_ids: Vec<&str> = reqs
        .iter()
        .map(|r| r.agent_id)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let agents = agent_infos(cx, &agent_ids).await?;
    let mut steps = Vec::with_capacity(reqs.len());
    let mut by_now: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
    let mut created: Vec<(&str, Attempt)> = Vec::new();
    for r in reqs {
        let draft = Draft::success(
            None,
            "task.assign",
            format!("task/{}", r.task_id),
            json!({ "agent_id": r.agent_id, "worker_id": r.worker_id }),
        );
        let Some((h, _)) = live.get(r.task_id) else {
            let e = Error::NotFound(format!("task {}", r.task_id));
            steps.push(Step::failed(e, draft));
            continue;
        };
        let draft = Draft {
            tenant_id: Some(h.tenant_id.clone()),
            ..draft
        };
        if h.state != TaskState::Queued {
            let e = Error::State(format!("task {} is {}, not queued", r.task_id, h.state));
            steps.push(Step::failed(e, draft));
            continue;
        }
        if let Err(e) = check_agent(r.agent_id, h, agents.get(r.agent_id)) {
            steps.push(Step::failed(e, draft));
            continue;
        }
        let a = new_attempt(r.task_id, r.agent_id, r.worker_id, h, r.lease_ms, r.now);
        by_now.entry(r.now).or_default().push(r.task_id);
        created.push((&h.tenant_id, a.clone()));
        steps.push(Step::done(
            Output::Assigned(a.clone()),
            assigned_draft(draft, &a),
        ));
    }
    // Each task's new epoch and attempt number are one more than what was read, as computed.
    for (now, ids) in &by_now {
        // On PostgreSQL the state is an `InitPlan` value, for the reason given at
        // `attempt_state_in`: with the constant, a generic plan could walk the partial index of
        // queued tasks (`tasks_ready`) for each id.
        let queued = match cx.backend {
            Backend::Postgres => "(SELECT 'queued'::text)",
            Backend::Sqlite => "'queued'",
        };
        let head = format!(
            "UPDATE tasks SET state = 'assigned', epoch = epoch + 1, attempts = attempts + 1, \
             updated_at = $1 WHERE state = {queued} AND id IN"
        );
        let n = update_tasks_in(cx, &head, *now, ids).await?;
        matched("tasks", n, ids.len())?;
    }
    let rows: Vec<(&str, &Attempt)> = created.iter().map(|(t, a)| (*t, a)).collect();
    insert_attempts(cx, &rows).await?;
    Ok(steps)
}

/// Start reports about distinct tasks: (task, epoch, when it started).
pub(crate) async fn start(cx: &mut OpCx<'_>, reqs: &[(&str, i64, i64)]) -> Result<Vec<Step>> {
    let ids: Vec<&str> = reqs.iter().map(|r| r.0).collect();
    let (live, _) = read_live(cx, &ids, false).await?;
    let mut steps = Vec::with_capacity(reqs.len());
    // (task, epoch, started_at) of the attempts that start now.
    let mut rows: Vec<(&str, i64, i64)> = Vec::new();
    for &(task_id, epoch, at) in reqs {
        let checked = match live.get(task_id) {
            None => Err(Error::NotFound(format!("task {task_id}"))),
            Some((h, a)) => check_live(task_id, epoch, h.clone(), a.clone()),
        };
        let (h, a) = match checked {
            Ok(v) => v,
            Err(e) => {
                steps.push(stale_step(e, "task.start", task_id, epoch));
                continue;
            }
        };
        if a.state == AttemptState::Running {
            // A repeated start report (a retried request) changes nothing.
            steps.push(Step::silent(Output::Assigned(a)));
            continue;
        }
        let at = start_time(at, a.assigned_at, cx.now.max(at));
        rows.push((task_id, epoch, at));
        let draft = Draft::success(
            Some(&h.tenant_id),
            "task.start",
            format!("task/{task_id}"),
            json!({ "epoch": epoch }),
        );
        let a = Attempt {
            state: AttemptState::Running,
            started_at: Some(at),
            ..a
        };
        steps.push(Step::done(Output::Assigned(a), draft));
    }
    if rows.is_empty() {
        return Ok(steps);
    }
    let sql = format!(
        "UPDATE attempts SET state = 'running', started_at = v.started_at FROM ({}) AS v \
         WHERE attempts.task_id = v.task_id AND attempts.epoch = v.epoch AND {}",
        bulk::rows_from(
            cx.backend,
            1,
            &[("task_id", Text), ("epoch", Int), ("started_at", Int)]
        ),
        attempt_state_in(cx.backend, &["assigned"])
    );
    // The text holds only SQL written here; the rows are in the one parameter.
    let n = execute_rows(cx, &sql, &rows).await?;
    matched("attempts", n, rows.len())?;
    let sql = format!(
        "UPDATE tasks SET state = 'running', reason = NULL, retry_at = NULL, updated_at = v.ts \
         FROM ({}) AS v WHERE tasks.id = v.id AND tasks.state = 'assigned'",
        bulk::rows_from(cx.backend, 1, &[("id", Text), ("epoch", Int), ("ts", Int)])
    );
    // The same rows: the epoch column is read but not used.
    let n = execute_rows(cx, &sql, &rows).await?;
    matched("tasks", n, rows.len())?;
    Ok(steps)
}

/// Completions of distinct tasks; `None` when a task is a quorum replica (the caller then runs
/// the elements one by one).
/// A completion that ends its attempt: the task's head, the attempt, how it ends, the outcome,
/// the time and the start it also records.
type Ended<'a> = (
    &'a Head,
    &'a Attempt,
    &'a Ending,
    &'a Outcome,
    i64,
    Option<i64>,
);

/// One completion of a batch: task, epoch, outcome, time, and the start it also records.
pub(crate) type CompleteReq<'a> = (&'a str, i64, &'a Outcome, i64, Option<i64>);

pub(crate) async fn complete(
    cx: &mut OpCx<'_>,
    reqs: &[CompleteReq<'_>],
) -> Result<Option<Vec<Step>>> {
    let ids: Vec<&str> = reqs.iter().map(|r| r.0).collect();
    // Dependents: only tasks that have some are settled (for the others settling is a no-op).
    let (live, with_deps) = read_live(cx, &ids, true).await?;
    let replicas = live.values().any(|(h, _)| h.replica_of.is_some());
    // Settling dependents and counting a quorum's votes read what other completions change:
    // alongside other writers, they wait for the ones before them (`OpCx::serialize`), before
    // anything is written.
    if replicas || !with_deps.is_empty() {
        cx.serialize().await?;
    }
    if replicas {
        return Ok(None);
    }
    enum Planned {
        Stale(Step),
        Ends(Head, Attempt, Ending),
    }
    let mut planned = Vec::with_capacity(reqs.len());
    for &(task_id, epoch, outcome, now, _) in reqs {
        let checked = match live.get(task_id) {
            None => Err(Error::NotFound(format!("task {task_id}"))),
            Some((h, a)) => check_live(task_id, epoch, h.clone(), a.clone()),
        };
        planned.push(match checked {
            Err(e) => Planned::Stale(stale_step(e, "task.complete", task_id, epoch)),
            Ok((h, a)) => {
                let e = plan_ending(&h, &a, outcome.kind, now)?;
                Planned::Ends(h, a, e)
            }
        });
    }

    let ended: Vec<Ended<'_>> = planned
        .iter()
        .zip(reqs)
        .filter_map(|(p, r)| match p {
            Planned::Ends(h, a, e) => Some((h, a, e, r.2, r.3, r.4)),
            Planned::Stale(_) => None,
        })
        .collect();
    if !ended.is_empty() {
        write_endings(cx, &ended).await?;
    }

    let mut steps = Vec::with_capacity(reqs.len());
    for (p, r) in planned.into_iter().zip(reqs) {
        let (h, e) = match p {
            Planned::Stale(step) => {
                steps.push(step);
                continue;
            }
            Planned::Ends(h, _, e) => (h, e),
        };
        let (task_id, epoch, _, now, _) = *r;
        let settled = if with_deps.contains(task_id) {
            settle::settle(cx, task_id, None, e.next, now).await?
        } else {
            Settled {
                state: e.next,
                queued: Vec::new(),
                cancelled: Vec::new(),
                parent: None,
                kill: Vec::new(),
                next: None,
            }
        };
        let draft = completed_draft(&h, task_id, epoch, &e, &settled);
        steps.push(Step::done(Output::Settled(settled), draft));
    }
    Ok(Some(steps))
}
