//! Attempts: assignment with a lease, and the fenced reports about it (start, heartbeat,
//! completion, lease loss). What an ending does to dependents is in `settle`.
//!
//! Fencing: each assignment raises the task's `epoch` by one, and every later write about the
//! attempt is an `UPDATE … WHERE task_id = $ AND epoch = $ AND state IN (live states)`. A report
//! from a worker that lost its lease (or whose attempt was cancelled) matches no row and gets
//! [`Error::StaleEpoch`] with nothing changed. The task's next state always comes from
//! `cflow_core::task::transition`, so the store and the scheduler share one state machine.

use crate::exec::GetCol;
use cflow_core::task::{Backoff, TaskEvent, TaskState, transition};
use serde_json::json;
use sqlx::AssertSqlSafe;

use crate::audit::Draft;
use crate::orch_types::{
    AgentState, Attempt, AttemptState, OUTPUT_TAIL_BYTES, Outcome, OutcomeKind, Settled, SwarmState,
};
use crate::swarms::parse;
use crate::tasks::{ATTEMPT_COLUMNS, attempt_from_row};
use crate::writer::{OpCx, Output, Step};
use crate::{Error, Result, bulk, settle};

/// Longest lease a worker may ask for: long enough for a slow network, short enough that a dead
/// worker's task moves within minutes.
pub const MAX_LEASE_MS: i64 = 600_000;

pub(crate) fn check_lease(lease_ms: i64) -> Result<()> {
    if (1..=MAX_LEASE_MS).contains(&lease_ms) {
        return Ok(());
    }
    let rule = format!("must be from 1 to {MAX_LEASE_MS} ms (got {lease_ms})");
    Err(Error::Invalid(cflow_core::ValidationError::new(
        "lease_ms", rule,
    )))
}

#[derive(Debug)]
pub(crate) enum AttemptOp {
    Assign {
        task_id: String,
        agent_id: String,
        worker_id: String,
        lease_ms: i64,
        now: i64,
    },
    Start {
        task_id: String,
        epoch: i64,
        now: i64,
    },
    Heartbeat {
        task_id: String,
        epoch: i64,
        lease_ms: i64,
        now: i64,
    },
    Complete {
        task_id: String,
        epoch: i64,
        outcome: Outcome,
        now: i64,
        /// Also record the start, at this time (see `CompleteRequest::started_at`).
        started_at: Option<i64>,
        /// The agent's next task, assigned if this completion is accepted (`batch::hand_over`).
        next: Option<crate::orch_types::NextAssign>,
    },
    RequeueLost {
        task_id: String,
        epoch: i64,
        now: i64,
    },
    Cancel {
        tenant_id: String,
        task_id: String,
        now: i64,
    },
    PromoteRetries {
        now: i64,
        limit: i64,
    },
}

/// What fencing needs to know about a task.
#[derive(Clone)]
pub(crate) struct Head {
    pub tenant_id: String,
    pub state: TaskState,
    pub epoch: i64,
    pub attempts: i64,
    pub max_attempts: i64,
    pub replicas: i64,
    /// For a replica: its parent, whose vote its ending may decide.
    pub replica_of: Option<String>,
}

/// The columns of [`Head`], for [`head_from_row`].
pub(crate) const HEAD_COLUMNS: &str =
    "tenant_id, state, epoch, attempts, max_attempts, replicas, replica_of";

/// A [`Head`] whose columns start at column `b`.
pub(crate) fn head_from_row(r: &impl GetCol, b: usize) -> Result<Head> {
    Ok(Head {
        tenant_id: r.try_get(b)?,
        state: parse("tasks.state", &r.try_get::<String>(b + 1)?)?,
        epoch: r.try_get(b + 2)?,
        attempts: r.try_get(b + 3)?,
        max_attempts: r.try_get(b + 4)?,
        replicas: r.try_get(b + 5)?,
        replica_of: r.try_get(b + 6)?,
    })
}

pub(crate) async fn head(cx: &mut OpCx<'_>, task_id: &str) -> Result<Option<Head>> {
    let sql = format!("SELECT {HEAD_COLUMNS} FROM tasks WHERE id = $1");
    let row = crate::exec::query(AssertSqlSafe(sql))
        .bind(task_id.to_string())
        .fetch_optional(&mut *cx.conn)
        .await?;
    row.map(|r| head_from_row(&r, 0)).transpose()
}

/// The live attempt `(task, epoch)`, or the error a report about it gets.
async fn live(cx: &mut OpCx<'_>, task_id: &str, epoch: i64) -> Result<(Head, Attempt)> {
    let Some(h) = head(cx, task_id).await? else {
        return Err(Error::NotFound(format!("task {task_id}")));
    };
    let sql = format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE task_id = $1 AND epoch = $2");
    let row = crate::exec::query(AssertSqlSafe(sql))
        .bind(task_id.to_string())
        .bind(epoch)
        .fetch_optional(&mut *cx.conn)
        .await?;
    let attempt = row.as_ref().map(attempt_from_row).transpose()?;
    check_live(task_id, epoch, h, attempt)
}

/// Whether `attempt` (read at `epoch` or at the task's epoch) is the live attempt `(task,
/// epoch)` of the task whose head is `h`; the single and the batched reports share it.
pub(crate) fn check_live(
    task_id: &str,
    epoch: i64,
    h: Head,
    attempt: Option<Attempt>,
) -> Result<(Head, Attempt)> {
    match attempt {
        Some(a)
            if h.epoch == epoch
                && a.epoch == epoch
                && h.state.holds_lease()
                && matches!(a.state, AttemptState::Assigned | AttemptState::Running) =>
        {
            Ok((h, a))
        }
        _ => Err(Error::StaleEpoch {
            task_id: task_id.to_string(),
            epoch,
            current: h.state.holds_lease().then_some(h.epoch),
        }),
    }
}

/// The fenced update of a live attempt: must match exactly the row [`live`] found.
pub(crate) async fn fenced(
    cx: &mut OpCx<'_>,
    set: &str,
    task_id: &str,
    epoch: i64,
    binds: Vec<Bind>,
) -> Result<()> {
    let n = binds.len();
    let sql = format!(
        "UPDATE attempts SET {set} WHERE task_id = ${} AND epoch = ${} \
         AND state IN ('assigned', 'running')",
        n + 1,
        n + 2
    );
    // The text holds only SQL written here and placeholders.
    let mut q = crate::exec::query(AssertSqlSafe(sql));
    for b in binds {
        q = match b {
            Bind::I(v) => q.bind(v),
            Bind::S(v) => q.bind(v),
        };
    }
    let done = q
        .bind(task_id.to_string())
        .bind(epoch)
        .execute(&mut *cx.conn)
        .await?;
    if done.rows_affected() != 1 {
        return Err(Error::Corrupt {
            what: "attempts".into(),
            detail: format!(
                "fenced update of {task_id}@{epoch} matched {} rows",
                done.rows_affected()
            ),
        });
    }
    Ok(())
}

pub(crate) enum Bind {
    I(Option<i64>),
    S(Option<String>),
}

/// Moves the task from a lease-holding state at `epoch` to `to`.
async fn set_task(
    cx: &mut OpCx<'_>,
    task_id: &str,
    epoch: i64,
    to: TaskState,
    reason: Option<String>,
    retry_at: Option<i64>,
    now: i64,
) -> Result<()> {
    let done = crate::exec::query(
        "UPDATE tasks SET state = $1, reason = $2, retry_at = $3, updated_at = $4 \
         WHERE id = $5 AND epoch = $6 AND state IN ('assigned', 'running')",
    )
    .bind(to.as_str())
    .bind(reason)
    .bind(retry_at)
    .bind(now)
    .bind(task_id.to_string())
    .bind(epoch)
    .execute(&mut *cx.conn)
    .await?;
    if done.rows_affected() != 1 {
        return Err(Error::Corrupt {
            what: "tasks".into(),
            detail: format!("fenced update of {task_id}@{epoch} matched nothing"),
        });
    }
    Ok(())
}

/// The last `OUTPUT_TAIL_BYTES` of `s`, marked when cut.
pub(crate) fn tail(s: &str) -> String {
    if s.len() <= OUTPUT_TAIL_BYTES {
        return s.to_string();
    }
    let mut start = s.len() - OUTPUT_TAIL_BYTES;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[… {start} bytes truncated]\n{}", &s[start..])
}

pub(crate) fn stale_step(e: Error, action: &str, task_id: &str, epoch: i64) -> Step {
    let draft = Draft::success(
        None,
        action,
        format!("task/{task_id}"),
        json!({ "epoch": epoch }),
    );
    Step::failed(e, draft)
}

pub(crate) async fn apply(cx: &mut OpCx<'_>, op: &AttemptOp) -> Result<Step> {
    match op {
        AttemptOp::Assign {
            task_id,
            agent_id,
            worker_id,
            lease_ms,
            now,
        } => assign(cx, task_id, agent_id, worker_id, *lease_ms, *now).await,
        AttemptOp::Start {
            task_id,
            epoch,
            now,
        } => {
            let (h, a) = match live(cx, task_id, *epoch).await {
                Ok(v) => v,
                Err(e) => return Ok(stale_step(e, "task.start", task_id, *epoch)),
            };
            if a.state == AttemptState::Running {
                // A repeated start report (a retried request) changes nothing.
                return Ok(Step::silent(Output::Assigned(a)));
            }
            let now = start_time(*now, a.assigned_at, cx.now.max(*now));
            let sql = "state = 'running', started_at = $1";
            fenced(cx, sql, task_id, *epoch, vec![Bind::I(Some(now))]).await?;
            set_task(cx, task_id, *epoch, TaskState::Running, None, None, now).await?;
            let draft = Draft::success(
                Some(&h.tenant_id),
                "task.start",
                format!("task/{task_id}"),
                json!({ "epoch": epoch }),
            );
            let a = Attempt {
                state: AttemptState::Running,
                started_at: Some(now),
                ..a
            };
            Ok(Step::done(Output::Assigned(a), draft))
        }
        AttemptOp::Heartbeat {
            task_id,
            epoch,
            lease_ms,
            now,
        } => {
            let (_, a) = match live(cx, task_id, *epoch).await {
                Ok(v) => v,
                Err(e) => return Ok(stale_step(e, "task.heartbeat", task_id, *epoch)),
            };
            let expires = now + lease_ms;
            fenced(
                cx,
                "lease_expires_at = $1",
                task_id,
                *epoch,
                vec![Bind::I(Some(expires))],
            )
            .await?;
            // A lease extension is bookkeeping, like a key's last use: auditing every heartbeat
            // would bury the ledger. Refused heartbeats are audited above.
            Ok(Step::silent(Output::Assigned(Attempt {
                lease_expires_at: expires,
                ..a
            })))
        }
        AttemptOp::Complete {
            task_id,
            epoch,
            outcome,
            now,
            started_at,
            next: _,
        } => complete(cx, task_id, *epoch, outcome, *now, *started_at).await,
        AttemptOp::RequeueLost {
            task_id,
            epoch,
            now,
        } => requeue_lost(cx, task_id, *epoch, *now).await,
        AttemptOp::Cancel {
            tenant_id,
            task_id,
            now,
        } => settle::cancel(cx, tenant_id, task_id, *now).await,
        AttemptOp::PromoteRetries { now, limit } => settle::promote(cx, *now, *limit).await,
    }
}

async fn assign(
    cx: &mut OpCx<'_>,
    task_id: &str,
    agent_id: &str,
    worker_id: &str,
    lease_ms: i64,
    now: i64,
) -> Result<Step> {
    let draft = Draft::success(
        None,
        "task.assign",
        format!("task/{task_id}"),
        json!({ "agent_id": agent_id, "worker_id": worker_id }),
    );
    let Some(h) = head(cx, task_id).await? else {
        return Ok(Step::failed(
            Error::NotFound(format!("task {task_id}")),
            draft,
        ));
    };
    let draft = Draft {
        tenant_id: Some(h.tenant_id.clone()),
        ..draft
    };
    if h.state != TaskState::Queued {
        let e = Error::State(format!("task {task_id} is {}, not queued", h.state));
        return Ok(Step::failed(e, draft));
    }
    let sql = format!(
        "SELECT {AGENT_INFO_COLUMNS} FROM agents a JOIN swarms s ON s.id = a.swarm_id WHERE a.id = $1"
    );
    let agent = crate::exec::query(AssertSqlSafe(sql))
        .bind(agent_id.to_string())
        .fetch_optional(&mut *cx.conn)
        .await?;
    let agent = agent.map(|r| agent_info(&r)).transpose()?;
    if let Err(e) = check_agent(agent_id, &h, agent.as_ref()) {
        return Ok(Step::failed(e, draft));
    }
    let attempt = new_attempt(task_id, agent_id, worker_id, &h, lease_ms, now);
    let done = crate::exec::query(
        "UPDATE tasks SET state = 'assigned', epoch = $1, attempts = $2, updated_at = $3 \
         WHERE id = $4 AND epoch = $5 AND state = 'queued'",
    )
    .bind(attempt.epoch)
    .bind(attempt.attempt_no)
    .bind(now)
    .bind(task_id.to_string())
    .bind(h.epoch)
    .execute(&mut *cx.conn)
    .await?;
    if done.rows_affected() != 1 {
        return Err(Error::Corrupt {
            what: "tasks".into(),
            detail: format!("assign of {task_id} matched nothing"),
        });
    }
    insert_attempts(cx, &[(h.tenant_id.as_str(), &attempt)]).await?;
    Ok(Step::done(
        Output::Assigned(attempt.clone()),
        assigned_draft(draft, &attempt),
    ))
}

/// The columns [`agent_info`] reads, from `agents a JOIN swarms s`.
pub(crate) const AGENT_INFO_COLUMNS: &str = "a.id, a.tenant_id, a.state, s.state, a.swarm_id";

/// What an assignment checks about an agent: its id, tenant, state and its swarm's state (and
/// which swarm, which a submission checks).
pub(crate) struct AgentInfo {
    /// Keys the batched lookup.
    pub id: String,
    pub tenant_id: String,
    pub state: AgentState,
    pub swarm_state: SwarmState,
    pub swarm_id: String,
}

pub(crate) fn agent_info(r: &impl GetCol) -> Result<AgentInfo> {
    Ok(AgentInfo {
        id: r.try_get(0)?,
        tenant_id: r.try_get(1)?,
        state: parse("agents.state", &r.try_get::<String>(2)?)?,
        swarm_state: parse("swarms.state", &r.try_get::<String>(3)?)?,
        swarm_id: r.try_get(4)?,
    })
}

/// Whether `agent` may take a task of `h`'s tenant now.
pub(crate) fn check_agent(agent_id: &str, h: &Head, agent: Option<&AgentInfo>) -> Result<()> {
    let Some(agent) = agent.filter(|a| a.tenant_id == h.tenant_id) else {
        // Another tenant's agent is as unknown as a missing one.
        return Err(Error::NotFound(format!("agent {agent_id}")));
    };
    let (agent_state, swarm_state) = (agent.state, agent.swarm_state);
    // Pausing or stopping a swarm, or taking an agent out of service, stops new assignments
    // here, whatever the scheduler's in-memory view still says.
    if swarm_state != SwarmState::Active
        || matches!(
            agent_state,
            AgentState::Stopped
                | AgentState::Failed
                | AgentState::Quarantined
                | AgentState::Draining
        )
    {
        return Err(Error::State(format!(
            "agent {agent_id} is {agent_state} in a swarm that is {swarm_state}: it takes no tasks"
        )));
    }
    Ok(())
}

/// The audit entry of a successful assignment.
pub(crate) fn assigned_draft(draft: Draft, a: &Attempt) -> Draft {
    Draft {
        detail: json!({ "agent_id": a.agent_id, "worker_id": a.worker_id, "epoch": a.epoch }),
        ..draft
    }
}

/// The attempt an assignment of the task `h` creates.
pub(crate) fn new_attempt(
    task_id: &str,
    agent_id: &str,
    worker_id: &str,
    h: &Head,
    lease_ms: i64,
    now: i64,
) -> Attempt {
    assigned_attempt(
        task_id,
        agent_id,
        worker_id,
        (h.epoch + 1, h.attempts + 1),
        lease_ms,
        now,
    )
}

/// A new attempt in `assigned` at `(epoch, attempt number)`, its lease running `lease_ms` from
/// `now`.
pub(crate) fn assigned_attempt(
    task_id: &str,
    agent_id: &str,
    worker_id: &str,
    (epoch, attempt_no): (i64, i64),
    lease_ms: i64,
    now: i64,
) -> Attempt {
    Attempt {
        task_id: task_id.to_string(),
        epoch,
        attempt_no,
        agent_id: agent_id.to_string(),
        worker_id: worker_id.to_string(),
        state: AttemptState::Assigned,
        lease_expires_at: now + lease_ms,
        assigned_at: now,
        started_at: None,
        ended_at: None,
        exit_code: None,
        stdout_tail: None,
        stderr_tail: None,
        result: None,
        detail: None,
    }
}

/// Inserts new attempts (in `assigned`), each with its task's tenant, in one statement whose one
/// parameter holds every row (see `bulk`).
pub(crate) async fn insert_attempts(
    cx: &mut OpCx<'_>,
    attempts: &[(&str, &Attempt)],
) -> Result<()> {
    if attempts.is_empty() {
        return Ok(());
    }
    if cx.backend == crate::Backend::Sqlite {
        // A statement per row: see `bulk::insert_by_row`.
        for (tenant_id, a) in attempts {
            crate::exec::query(
                "INSERT INTO attempts (task_id, epoch, attempt_no, tenant_id, agent_id, \
                 worker_id, lease_expires_at, assigned_at, state) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'assigned')",
            )
            .bind(a.task_id.clone())
            .bind(a.epoch)
            .bind(a.attempt_no)
            .bind(tenant_id.to_string())
            .bind(a.agent_id.clone())
            .bind(a.worker_id.clone())
            .bind(a.lease_expires_at)
            .bind(a.assigned_at)
            .execute(&mut *cx.conn)
            .await?;
        }
        return Ok(());
    }
    let sql = insert_attempts_sql(cx.backend, 1);
    // The text holds only column names written here; every value is in the one parameter.
    for text in attempt_rows_json(attempts)? {
        crate::exec::query(AssertSqlSafe(sql.clone()))
            .bind(text)
            .defer(&mut *cx.conn)
            .await?;
    }
    Ok(())
}

/// The insert of new attempts given as the JSON text bound as `$p` ([`attempt_rows_json`]).
pub(crate) fn insert_attempts_sql(backend: crate::Backend, p: usize) -> String {
    use crate::bulk::Ty::{Int, Text};
    format!(
        "INSERT INTO attempts (task_id, epoch, attempt_no, tenant_id, agent_id, worker_id, \
         lease_expires_at, assigned_at, state) SELECT v.*, 'assigned' FROM ({}) AS v",
        bulk::rows_from(
            backend,
            p,
            &[
                ("task_id", Text),
                ("epoch", Int),
                ("attempt_no", Int),
                ("tenant_id", Text),
                ("agent_id", Text),
                ("worker_id", Text),
                ("lease_expires_at", Int),
                ("assigned_at", Int),
            ],
        )
    )
}

/// New attempts (with their tenant) as rows of [`insert_attempts_sql`].
pub(crate) fn attempt_rows_json(attempts: &[(&str, &Attempt)]) -> Result<Vec<String>> {
    let rows = attempts
        .iter()
        .map(|(tenant_id, a)| {
            (
                &a.task_id,
                a.epoch,
                a.attempt_no,
                tenant_id,
                &a.agent_id,
                &a.worker_id,
                a.lease_expires_at,
                a.assigned_at,
            )
        })
        .collect::<Vec<_>>();
    bulk::rows_json(&rows)
}

/// A reported start time as recorded: never before the attempt's assignment (the worker's
/// report cannot know the server's clock) nor after `latest`.
pub(crate) fn start_time(reported: i64, assigned_at: i64, latest: i64) -> i64 {
    reported.min(latest).max(assigned_at)
}

async fn complete(
    cx: &mut OpCx<'_>,
    task_id: &str,
    epoch: i64,
    outcome: &Outcome,
    now: i64,
    started_at: Option<i64>,
) -> Result<Step> {
    let (h, a) = match live(cx, task_id, epoch).await {
        Ok(v) => v,
        Err(e) => return Ok(stale_step(e, "task.complete", task_id, epoch)),
    };
    let e = plan_ending(&h, &a, outcome.kind, now)?;
    let (attempt_state, next) = (e.attempt_state, e.next);
    fenced(
        cx,
        "state = $1, ended_at = $2, exit_code = $3, stdout_tail = $4, stderr_tail = $5, \
         result = $6, started_at = COALESCE(started_at, $7), detail = $8",
        task_id,
        epoch,
        vec![
            Bind::S(Some(attempt_state.as_str().to_string())),
            Bind::I(Some(now)),
            Bind::I(outcome.exit_code),
            Bind::S(Some(tail(&outcome.stdout_tail))),
            Bind::S(Some(tail(&outcome.stderr_tail))),
            Bind::S(outcome.result.as_ref().map(|r| r.to_string())),
            Bind::I(started_at.map(|s| start_time(s, a.assigned_at, now))),
            Bind::S(outcome.detail.as_ref().map(|d| d.to_string())),
        ],
    )
    .await?;
    set_task(cx, task_id, epoch, next, e.reason.clone(), e.retry_at, now).await?;
    let (done, failed) = e.counts();
    let busy = e.busy;
    crate::exec::query("UPDATE agents SET tasks_done = tasks_done + $1, failures = failures + $2, busy_ms = busy_ms + $3, updated_at = $4 WHERE id = $5")
        .bind(done)
        .bind(failed)
        .bind(busy)
        .bind(now)
        .bind(a.agent_id.clone())
        .execute(&mut *cx.conn)
        .await?;
    let settled = settle::settle(cx, task_id, h.replica_of.as_deref(), next, now).await?;
    let draft = completed_draft(&h, task_id, epoch, &e, &settled);
    Ok(Step::done(Output::Settled(settled), draft))
}

/// How an attempt's ending moves its task, computed before anything is written.
pub(crate) struct Ending {
    pub attempt_state: AttemptState,
    pub next: TaskState,
    pub reason: Option<String>,
    pub retry_at: Option<i64>,
    /// Time the agent spent on the attempt.
    pub busy: i64,
}

impl Ending {
    /// `(tasks_done, failures)` to add to the agent.
    pub fn counts(&self) -> (i64, i64) {
        if self.attempt_state == AttemptState::Succeeded {
            (1, 0)
        } else {
            (0, 1)
        }
    }
}

/// The ending of the live attempt `a` of the task `h` with an outcome of `kind` at `now`.
pub(crate) fn plan_ending(h: &Head, a: &Attempt, kind: OutcomeKind, now: i64) -> Result<Ending> {
    let (attempt_no, max) = (h.attempts as u32, h.max_attempts as u32);
    let (event, attempt_state) = match kind {
        OutcomeKind::Succeeded => (TaskEvent::Succeeded, AttemptState::Succeeded),
        OutcomeKind::Failed { retryable } => (
            TaskEvent::Failed {
                retryable,
                attempt: attempt_no,
                max_attempts: max,
            },
            AttemptState::Failed,
        ),
        OutcomeKind::TimedOut => (
            TaskEvent::TimedOut {
                attempt: attempt_no,
                max_attempts: max,
            },
            AttemptState::TimedOut,
        ),
    };
    let next = transition(h.state, event).map_err(|e| Error::State(e.to_string()))?;
    let (reason, retry_at) = match (attempt_state, next) {
        (AttemptState::Succeeded, _) => (None, None),
        (_, TaskState::Pending) => {
            let mut b = [0u8; 4];
            getrandom::fill(&mut b).map_err(|e| Error::Config(e.to_string()))?;
            let jitter = f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX);
            let delay = Backoff::default().delay_ms(attempt_no, jitter) as i64;
            (
                Some(format!("attempt {attempt_no} {attempt_state}; retrying")),
                Some(now + delay),
            )
        }
        _ => (Some(format!("attempt {attempt_no} {attempt_state}")), None),
    };
    Ok(Ending {
        attempt_state,
        next,
        reason,
        retry_at,
        busy: (now - a.started_at.unwrap_or(a.assigned_at)).max(0),
    })
}

/// The audit entry of a completion.
pub(crate) fn completed_draft(
    h: &Head,
    task_id: &str,
    epoch: i64,
    e: &Ending,
    settled: &Settled,
) -> Draft {
    let mut detail = json!({ "epoch": epoch, "outcome": e.attempt_state.as_str(),
        "state": e.next.as_str(), "queued": settled.queued, "cancelled": settled.cancelled });
    if let Some((parent, state)) = &settled.parent {
        detail["parent"] = json!({ "id": parent, "state": state.as_str() });
    }
    Draft::success(
        Some(&h.tenant_id),
        "task.complete",
        format!("task/{task_id}"),
        detail,
    )
}

async fn requeue_lost(cx: &mut OpCx<'_>, task_id: &str, epoch: i64, now: i64) -> Result<Step> {
    let (h, a) = match live(cx, task_id, epoch).await {
        Ok(v) => v,
        Err(e) => return Ok(stale_step(e, "task.lease_lost", task_id, epoch)),
    };
    if a.lease_expires_at > now {
        // A heartbeat arrived after the expiry scan: the worker is alive after all.
        let e = Error::State(format!(
            "the lease of task {task_id} at epoch {epoch} runs until {}",
            a.lease_expires_at
        ));
        return Ok(stale_step(e, "task.lease_lost", task_id, epoch));
    }
    let event = TaskEvent::LeaseLost {
        attempt: h.attempts as u32,
        max_attempts: h.max_attempts as u32,
    };
    let next = transition(h.state, event).map_err(|e| Error::State(e.to_string()))?;
    fenced(
        cx,
        "state = 'lost', ended_at = $1",
        task_id,
        epoch,
        vec![Bind::I(Some(now))],
    )
    .await?;
    let reason = (next == TaskState::Failed)
        .then(|| format!("lease lost on attempt {}; no attempts left", h.attempts));
    set_task(cx, task_id, epoch, next, reason, None, now).await?;
    let settled = settle::settle(cx, task_id, h.replica_of.as_deref(), next, now).await?;
    let draft = Draft::success(
        Some(&h.tenant_id),
        "task.lease_lost",
        format!("task/{task_id}"),
        json!({ "epoch": epoch, "worker_id": a.worker_id, "state": next.as_str(), "cancelled": settled.cancelled }),
    );
    Ok(Step::done(Output::Settled(settled), draft))
}
