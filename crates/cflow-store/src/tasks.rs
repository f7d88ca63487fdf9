//! Tasks: bulk submission (one writer op per submission) and the reads that list tasks, rebuild
//! the scheduler's queue and show attempts.
//!
//! A submission is all or nothing: it is validated field by field before it reaches the writer,
//! then its dependency graph is planned by `cflow_core::dag::plan` inside the writer's
//! transaction (so dependency states cannot change under it), and only then written. It gets one
//! audit entry, `task.submit`, listing the ids it created and the ids its idempotency keys
//! matched: one entry per task would double the rows a 10,000-task submission writes.
//! Submissions that reach the writer together are applied as one run (`submit_many`), each
//! still all or nothing with its own answer and entry.

use std::collections::{HashMap, HashSet};

use crate::exec::GetCol;
use cflow_core::ValidationError;
use cflow_core::dag::{self, DagTask, DepRef, Start};
use cflow_core::task::{self as core_task, TaskState};
use cflow_core::validate;
use serde_json::json;
use sqlx::AssertSqlSafe;

use crate::attempts::{Head, assigned_draft, check_agent, check_lease, new_attempt};
use crate::audit::Draft;
use crate::bulk::Ty::{self, Int, Text};
use crate::orch_types::{Attempt, DirectAssign, NewTask, Submitted, Task, TaskFilter};
use crate::swarms::{check_labels, check_names, json_col, parse};
use crate::types::{AuditContext, Page, PageRequest};
use crate::writer::{Op, OpCx, Output, Step};
use crate::{Error, Result, Store, bulk, page, replicas};

/// Most tasks in one submission.
pub const MAX_SUBMIT: usize = 10_000;
const TASK_CURSOR: &str = "k";

pub(crate) const TASK_COLUMNS: &str = "id, tenant_id, swarm_id, spec, priority, requires, labels, \
     depends_on, timeout_ms, max_attempts, replicas, quorum, idempotency_key, state, reason, \
     attempts, epoch, unmet, retry_at, created_at, updated_at, agent_id, replica_of, \
     replica_index, result";
/// Columns of [`TASK_COLUMNS`], the parameters each inserted row binds.
pub(crate) const TASK_ARITY: usize = 25;
pub(crate) const ATTEMPT_COLUMNS: &str = "task_id, epoch, attempt_no, agent_id, worker_id, state, \
     lease_expires_at, assigned_at, started_at, ended_at, exit_code, stdout_tail, stderr_tail, \
     result, detail";

pub(crate) fn task_from_row(r: &impl GetCol) -> Result<Task> {
    Ok(Task {
        id: r.try_get(0)?,
        tenant_id: r.try_get(1)?,
        swarm_id: r.try_get(2)?,
        spec: json_col("tasks.spec", &r.try_get::<String>(3)?)?,
        priority: r.try_get(4)?,
        requires: json_col("tasks.requires", &r.try_get::<String>(5)?)?,
        labels: json_col("tasks.labels", &r.try_get::<String>(6)?)?,
        depends_on: json_col("tasks.depends_on", &r.try_get::<String>(7)?)?,
        timeout_ms: r.try_get(8)?,
        max_attempts: r.try_get(9)?,
        replicas: r.try_get(10)?,
        quorum: r.try_get(11)?,
        idempotency_key: r.try_get(12)?,
        state: parse("tasks.state", &r.try_get::<String>(13)?)?,
        reason: r.try_get(14)?,
        attempts: r.try_get(15)?,
        epoch: r.try_get(16)?,
        unmet: r.try_get(17)?,
        retry_at: r.try_get(18)?,
        created_at: r.try_get(19)?,
        updated_at: r.try_get(20)?,
        agent_id: r.try_get(21)?,
        replica_of: r.try_get(22)?,
        replica_index: r.try_get(23)?,
        result: r
            .try_get::<Option<String>>(24)?
            .map(|s| json_col("tasks.result", &s))
            .transpose()?,
    })
}

pub(crate) fn attempt_from_row(r: &impl GetCol) -> Result<Attempt> {
    attempt_from_row_at(r, 0)
}

/// An attempt whose columns start at column `b` (after a task's in a join).
pub(crate) fn attempt_from_row_at(r: &impl GetCol, b: usize) -> Result<Attempt> {
    let result: Option<String> = r.try_get(b + 13)?;
    Ok(Attempt {
        task_id: r.try_get(b)?,
        epoch: r.try_get(b + 1)?,
        attempt_no: r.try_get(b + 2)?,
        agent_id: r.try_get(b + 3)?,
        worker_id: r.try_get(b + 4)?,
        state: parse("attempts.state", &r.try_get::<String>(b + 5)?)?,
        lease_expires_at: r.try_get(b + 6)?,
        assigned_at: r.try_get(b + 7)?,
        started_at: r.try_get(b + 8)?,
        ended_at: r.try_get(b + 9)?,
        exit_code: r.try_get(b + 10)?,
        stdout_tail: r.try_get(b + 11)?,
        stderr_tail: r.try_get(b + 12)?,
        result: result
            .map(|s| json_col("attempts.result", &s))
            .transpose()?,
        detail: r
            .try_get::<Option<String>>(b + 14)?
            .map(|s| json_col("attempts.detail", &s))
            .transpose()?,
    })
}

/// `$from, $from+1, …` for `n` parameters.
pub(crate) fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks one task's fields; the error names the field and, in its rule, the task's position.
fn check(i: usize, t: &NewTask) -> Result<(), ValidationError> {
    let checked = (|| {
        core_task::priority(t.priority)?;
        core_task::timeout_seconds(t.timeout_seconds)?;
        core_task::max_attempts(t.max_attempts)?;
        core_task::replicas_and_quorum(t.replicas, t.quorum)?;
        check_names("requires", &t.requires)?;
        check_labels(&t.labels)?;
        if let Some(id) = &t.local_id {
            validate::name("local_id", id)?;
        }
        if let Some(key) = &t.idempotency_key {
            validate::memory_key(key)
                .map_err(|e| ValidationError::new("idempotency_key", e.rule))?;
        }
        if t.spec.to_string().len() > validate::MAX_VALUE_BYTES {
            return Err(ValidationError::new(
                "spec",
                format!(
                    "must be at most {} bytes of JSON",
                    validate::MAX_VALUE_BYTES
                ),
            ));
        }
        Ok(())
    })();
    checked.map_err(|e| ValidationError::new(e.field, format!("task {i}: {}", e.rule)))
}

/// Looks up `(id, state)` of the tenant's tasks among `ids`.
async fn states_of(
    cx: &mut OpCx<'_>,
    tenant_id: &str,
    column: &str,
    ids: &[String],
) -> Result<Vec<(String, String, TaskState)>> {
    let mut out = Vec::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let sql = format!(
        "SELECT {column}, id, state FROM tasks WHERE tenant_id = $1 AND {column} IN ({})",
        bulk::ids_from(cx.backend, 2)
    );
    // The text holds only a column name chosen here; the ids are in the one parameter.
    let rows = crate::exec::query(AssertSqlSafe(sql))
        .bind(tenant_id.to_string())
        .bind(bulk::ids_json(ids.iter().map(String::as_str)))
        .fetch_all(&mut *cx.conn)
        .await?;
    for r in rows {
        let state: String = r.try_get(2)?;
        out.push((r.try_get(0)?, r.try_get(1)?, parse("tasks.state", &state)?));
    }
    Ok(out)
}

/// The ids among `ids` of the tenant's swarms.
async fn swarms_of_tenant(
    cx: &mut OpCx<'_>,
    tenant_id: &str,
    ids: &[String],
) -> Result<HashSet<String>> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let sql = format!(
        "SELECT id FROM swarms WHERE tenant_id = $1 AND id IN ({})",
        bulk::ids_from(cx.backend, 2)
    );
    // The text holds only SQL written here; the ids are in the one parameter.
    let found = crate::exec::query_scalar::<String>(AssertSqlSafe(sql))
        .bind(tenant_id.to_string())
        .bind(bulk::ids_json(ids.iter().map(String::as_str)))
        .fetch_all(&mut *cx.conn)
        .await?;
    Ok(found.into_iter().collect())
}

/// A task row as inserted.
#[derive(Debug, Clone)]
pub(crate) struct TaskRow {
    pub id: String,
    pub tenant_id: String,
    pub swarm_id: Option<String>,
    pub spec: String,
    pub priority: i64,
    pub requires: String,
    pub labels: String,
    pub depends_on: String,
    pub timeout_ms: i64,
    pub max_attempts: i64,
    pub replicas: i64,
    pub quorum: i64,
    pub idempotency_key: Option<String>,
    pub state: TaskState,
    pub reason: Option<String>,
    pub unmet: i64,
    pub agent_id: Option<String>,
    pub replica_of: Option<String>,
    pub replica_index: Option<i64>,
    /// 0, or 1 for a task assigned as it is created (then also its attempt count).
    pub epoch: i64,
    pub now: i64,
}

impl TaskRow {
    fn new(tenant_id: &str, id: String, t: &NewTask, now: i64) -> TaskRow {
        TaskRow {
            id,
            tenant_id: tenant_id.to_string(),
            swarm_id: t.swarm_id.clone(),
            spec: t.spec.to_string(),
            priority: t.priority,
            requires: json!(t.requires).to_string(),
            labels: json!(t.labels).to_string(),
            depends_on: "[]".to_string(),
            timeout_ms: t.timeout_seconds * 1000,
            max_attempts: t.max_attempts,
            replicas: t.replicas,
            quorum: t.quorum,
            idempotency_key: t.idempotency_key.clone(),
            state: TaskState::Queued,
            reason: None,
            unmet: 0,
            agent_id: t.agent_id.clone(),
            replica_of: None,
            replica_index: None,
            epoch: 0,
            now,
        }
    }
}

/// The columns of [`TASK_COLUMNS`] as unpacked from a JSON row (see `bulk`).
const TASK_ROW: &[(&str, Ty)] = &[
    ("id", Text),
    ("tenant_id", Text),
    ("swarm_id", Text),
    ("spec", Text),
    ("priority", Int),
    ("requires", Text),
    ("labels", Text),
    ("depends_on", Text),
    ("timeout_ms", Int),
    ("max_attempts", Int),
    ("replicas", Int),
    ("quorum", Int),
    ("idempotency_key", Text),
    ("state", Text),
    ("reason", Text),
    ("attempts", Int),
    ("epoch", Int),
    ("unmet", Int),
    ("retry_at", Int),
    ("created_at", Int),
    ("updated_at", Int),
    ("agent_id", Text),
    ("replica_of", Text),
    ("replica_index", Int),
    ("result", Text),
];

/// A task row as the JSON array [`insert_rows`] unpacks, in [`TASK_ROW`] order. Written by hand
/// because serde serialises tuples of at most 16 elements.
impl serde::Serialize for TaskRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(TASK_ARITY)?;
        t.serialize_element(&self.id)?;
        t.serialize_element(&self.tenant_id)?;
        t.serialize_element(&self.swarm_id)?;
        t.serialize_element(&self.spec)?;
        t.serialize_element(&self.priority)?;
        t.serialize_element(&self.requires)?;
        t.serialize_element(&self.labels)?;
        t.serialize_element(&self.depends_on)?;
        t.serialize_element(&self.timeout_ms)?;
        t.serialize_element(&self.max_attempts)?;
        t.serialize_element(&self.replicas)?;
        t.serialize_element(&self.quorum)?;
        t.serialize_element(&self.idempotency_key)?;
        t.serialize_element(self.state.as_str())?;
        t.serialize_element(&self.reason)?;
        // attempts, epoch
        t.serialize_element(&self.epoch)?;
        t.serialize_element(&self.epoch)?;
        t.serialize_element(&self.unmet)?;
        // retry_at
        t.serialize_element(&None::<i64>)?;
        // created_at, updated_at
        t.serialize_element(&self.now)?;
        t.serialize_element(&self.now)?;
        t.serialize_element(&self.agent_id)?;
        t.serialize_element(&self.replica_of)?;
        t.serialize_element(&self.replica_index)?;
        // result
        t.serialize_element(&None::<String>)?;
        t.end()
    }
}

/// Inserts task rows with one statement whose one parameter holds every row (see `bulk`; rows
/// of several MiB in all, large specs, are split over a few statements).
pub(crate) async fn insert_rows(cx: &mut OpCx<'_>, rows: &[TaskRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    if cx.backend == crate::Backend::Sqlite {
        let insert = format!("INSERT INTO tasks ({TASK_COLUMNS})");
        return bulk::insert_by_row(cx.conn, &insert, TASK_ROW, rows).await;
    }
    let sql = insert_rows_sql(cx.backend, 1);
    // The text holds only column names written here; every value is in the one parameter.
    for text in bulk::rows_json(rows)? {
        crate::exec::query(AssertSqlSafe(sql.clone()))
            .bind(text)
            .defer(&mut *cx.conn)
            .await?;
    }
    Ok(())
}

/// The insert of task rows given as the JSON text bound as `$p`.
fn insert_rows_sql(backend: crate::Backend, p: usize) -> String {
    debug_assert_eq!(TASK_ROW.len(), TASK_ARITY);
    format!(
        "INSERT INTO tasks ({TASK_COLUMNS}) {}",
        bulk::rows_from(backend, p, TASK_ROW)
    )
}

/// Inserts new task rows and the attempts of those assigned at once: on PostgreSQL in one
/// statement (the tasks' insert in a `WITH` part; the attempts' foreign keys are checked at
/// the statement's end, when the tasks are there) when each fits in one parameter.
async fn insert_rows_and_attempts(
    cx: &mut OpCx<'_>,
    rows: &[TaskRow],
    attempts: &[(&str, &Attempt)],
) -> Result<()> {
    if cx.backend == crate::Backend::Postgres && !rows.is_empty() && !attempts.is_empty() {
        let mut tasks = bulk::rows_json(rows)?;
        let mut tries = crate::attempts::attempt_rows_json(attempts)?;
        if let ([t], [a]) = (tasks.as_mut_slice(), tries.as_mut_slice()) {
            let sql = format!(
                "WITH t AS ({}) {}",
                insert_rows_sql(cx.backend, 1),
                crate::attempts::insert_attempts_sql(cx.backend, 2)
            );
            // The text holds only SQL written here; the values are in the two parameters.
            crate::exec::query(AssertSqlSafe(sql))
                .bind(std::mem::take(t))
                .bind(std::mem::take(a))
                .defer(&mut *cx.conn)
                .await?;
            return Ok(());
        }
    }
    insert_rows(cx, rows).await?;
    crate::attempts::insert_attempts(cx, attempts).await
}

/// Writer op: a whole submission, or nothing of it.
pub(crate) async fn submit(
    cx: &mut OpCx<'_>,
    tenant_id: &str,
    tasks: &[NewTask],
    direct: &[Option<DirectAssign>],
) -> Result<Step> {
    let mut steps = submit_many(cx, tenant_id, &[(tasks, direct)]).await?;
    steps
        .pop()
        .ok_or_else(|| Error::State("a submission got no answer".into()))
}

/// Whether a run of submissions can go through [`submit_many`] together: one tenant, and no
/// idempotency key in two of them (the second would have to see the first's task).
pub(crate) fn can_join(
    keys: &mut HashSet<(String, String)>,
    tenant_id: &str,
    tasks: &[NewTask],
) -> bool {
    let mine: Vec<(String, String)> = tasks
        .iter()
        .filter_map(|t| t.idempotency_key.clone())
        .map(|k| (tenant_id.to_string(), k))
        .collect();
    if mine.iter().any(|k| keys.contains(k)) {
        return false;
    }
    keys.extend(mine);
    true
}

/// One submission of a run, between reading and writing.
struct Pending<'a> {
    tasks: &'a [NewTask],
    /// Empty, or one offer per task.
    direct: &'a [Option<DirectAssign>],
    results: Vec<Option<Submitted>>,
    /// Indexes of the tasks that are new (not matched by an idempotency key).
    fresh: Vec<usize>,
    /// The new tasks' ids, in `fresh` order.
    ids: Vec<String>,
    dag_tasks: Vec<DagTask>,
}

/// Writer op for a run of submissions of one tenant with pairwise distinct idempotency keys
/// (see [`can_join`]): each stays its own all-or-nothing submission with its own answer and
/// audit entry, exactly as if applied one after another, but the run reads what it checks
/// (idempotency keys, dependencies, swarms, agents) and writes its rows in a few statements in
/// all instead of a few per submission; at a thousand single-task requests a second, that was
/// a quarter of the writer's time. Exact because the submissions cannot see each other: a new
/// task's id is made here, so none can depend on a task of another, and distinct keys cannot
/// resolve to another's task.
///
/// A new, ready task with a [`DirectAssign`] offer is then assigned to the offered agent in the
/// same transaction, with the same checks as any assignment (`batch_fast::assign`); when the
/// agent can no longer take it, the task simply stays queued. That saves the scheduler a second
/// trip through the writer between a submission and its start.
pub(crate) async fn submit_many(
    cx: &mut OpCx<'_>,
    tenant_id: &str,
    subs: &[(&[NewTask], &[Option<DirectAssign>])],
) -> Result<Vec<Step>> {
    // Idempotency keys that already name a task resolve to that task, which stays as it is.
    let keys: Vec<String> = subs
        .iter()
        .flat_map(|(tasks, _)| tasks.iter().filter_map(|t| t.idempotency_key.clone()))
        .collect();
    let known: HashMap<String, (String, TaskState)> =
        states_of(cx, tenant_id, "idempotency_key", &keys)
            .await?
            .into_iter()
            .map(|(key, id, state)| (key, (id, state)))
            .collect();

    let mut pending = Vec::with_capacity(subs.len());
    let mut outside = HashSet::new();
    let mut swarm_ids = HashSet::new();
    for &(tasks, direct) in subs {
        let mut results: Vec<Option<Submitted>> = vec![None; tasks.len()];
        let mut alias: HashMap<&str, String> = HashMap::new();
        let mut fresh = Vec::new();
        for (i, t) in tasks.iter().enumerate() {
            match t.idempotency_key.as_ref().and_then(|k| known.get(k)) {
                Some((id, state)) => {
                    if let Some(l) = &t.local_id {
                        alias.insert(l, id.clone());
                    }
                    results[i] = Some(Submitted {
                        id: id.clone(),
                        state: *state,
                        existing: true,
                    });
                }
                None => fresh.push(i),
            }
        }
        // Every new task gets its id now; dependencies on resubmitted tasks point at the
        // originals.
        let ids: Vec<String> = fresh
            .iter()
            .map(|&i| match direct.get(i) {
                Some(Some(d)) => d.task_id.clone(),
                _ => crate::tenants::new_id(),
            })
            .collect();
        let dag_tasks: Vec<DagTask> = fresh
            .iter()
            .zip(&ids)
            .map(|(&i, id)| {
                let t = &tasks[i];
                let deps = t
                    .depends_on
                    .iter()
                    .map(|d| alias.get(d.as_str()).unwrap_or(d).clone());
                DagTask::new(t.local_id.clone().unwrap_or_else(|| id.clone()), deps)
            })
            .collect();
        let local: HashSet<&str> = dag_tasks.iter().map(|d| d.id.as_str()).collect();
        outside.extend(
            dag_tasks
                .iter()
                .flat_map(|d| d.depends_on.iter())
                .filter(|d| !local.contains(d.as_str()))
                .cloned(),
        );
        for &i in &fresh {
            swarm_ids.extend(tasks[i].swarm_id.clone());
        }
        pending.push(Pending {
            tasks,
            direct,
            results,
            fresh,
            ids,
            dag_tasks,
        });
    }
    let outside: Vec<String> = outside.into_iter().collect();
    let existing: HashMap<String, TaskState> = states_of(cx, tenant_id, "id", &outside)
        .await?
        .into_iter()
        .map(|(id, _, state)| (id, state))
        .collect();
    // One read for every agent named: those that tasks are pinned to and those offered to take
    // a task at once (on PostgreSQL often already read with the batch's `BEGIN`). An agent of
    // this tenant also shows that its swarm is one; only swarms no such agent vouches for are
    // read.
    let infos = match cx.agents.take() {
        Some(infos) => infos,
        None => {
            let agent_ids = submit_agent_ids(subs);
            if agent_ids.is_empty() {
                HashMap::new()
            } else {
                crate::batch_fast::agent_infos(cx, &agent_ids).await?
            }
        }
    };
    let mine = infos.values().filter(|a| a.tenant_id == tenant_id);
    let known_agents: HashSet<String> = mine.clone().map(|a| a.id.clone()).collect();
    let mut known_swarms: HashSet<String> = mine.map(|a| a.swarm_id.clone()).collect();
    let unvouched: Vec<String> = swarm_ids
        .into_iter()
        .filter(|s| !known_swarms.contains(s))
        .collect();
    known_swarms.extend(swarms_of_tenant(cx, tenant_id, &unvouched).await?);

    // Each submission's answers (or why it was refused) and audit entries.
    let mut planned: Vec<std::result::Result<Accepted, Step>> = Vec::with_capacity(pending.len());
    let mut rows = Vec::new();
    let mut edges = Vec::new();
    // (submission, task) of each offer to take up once the rows are written.
    let mut offered: Vec<(usize, usize, &DirectAssign)> = Vec::new();
    for p in pending {
        let draft = Draft::success(Some(tenant_id), "task.submit", "tasks".into(), json!({}));
        let direct = p.direct;
        match plan_one(
            cx.now,
            tenant_id,
            p,
            &existing,
            &known_swarms,
            &known_agents,
        ) {
            Ok((results, mine, my_edges)) => {
                rows.extend(mine);
                edges.extend(my_edges);
                let mut draft = draft;
                draft.detail = json!({
                    "created": results.iter().filter(|s| !s.existing).map(|s| &s.id).collect::<Vec<_>>(),
                    "existing": results.iter().filter(|s| s.existing).map(|s| &s.id).collect::<Vec<_>>(),
                });
                for (i, s) in results.iter().enumerate() {
                    if let Some(Some(d)) = direct.get(i)
                        && !s.existing
                        && s.state == TaskState::Queued
                        && s.id == d.task_id
                    {
                        offered.push((planned.len(), i, d));
                    }
                }
                planned.push(Ok((results, vec![draft])));
            }
            Err(e) => planned.push(Err(Step::failed(Error::Invalid(e), draft))),
        }
    }
    let (assigned, attempt_rows) = assign_new(tenant_id, &infos, &mut rows, &offered, cx.now);
    let attempt_rows: Vec<(&str, &Attempt)> = attempt_rows.iter().map(|a| (tenant_id, a)).collect();
    insert_rows_and_attempts(cx, &rows, &attempt_rows).await?;
    if !edges.is_empty() {
        let sql = format!(
            "INSERT INTO task_deps (task_id, dep_id) {}",
            bulk::rows_from(cx.backend, 1, &[("task_id", Text), ("dep_id", Text)])
        );
        // The text holds only column names written here; every value is in the one parameter.
        for text in bulk::rows_json(&edges)? {
            crate::exec::query(AssertSqlSafe(sql.clone()))
                .bind(text)
                .defer(&mut *cx.conn)
                .await?;
        }
    }
    let mut attempts: Vec<Vec<Option<Attempt>>> = planned
        .iter()
        .map(|p| match p {
            Ok((results, _)) => vec![None; results.len()],
            Err(_) => Vec::new(),
        })
        .collect();
    for (&(sub, i, _), step) in offered.iter().zip(assigned) {
        let Ok((results, drafts)) = &mut planned[sub] else {
            continue;
        };
        drafts.extend(step.audit);
        if let Ok(Output::Assigned(a)) = step.result {
            results[i].state = TaskState::Assigned;
            attempts[sub][i] = Some(a);
        }
    }
    Ok(planned
        .into_iter()
        .zip(attempts)
        .map(|(p, attempts)| match p {
            Ok((results, audit)) => Step {
                result: Ok(Output::Submitted(results, attempts)),
                audit,
            },
            Err(step) => step,
        })
        .collect())
}

/// The agents a run of submissions names: those its tasks are pinned to and those offered to
/// take its tasks at once (what [`submit_many`] reads of agents, also for tasks that an
/// idempotency key resolves to an existing one: reading more agents is harmless).
pub(crate) fn submit_agent_ids<'a>(
    subs: &[(&'a [NewTask], &'a [Option<DirectAssign>])],
) -> Vec<&'a str> {
    let mut ids = HashSet::new();
    for (tasks, direct) in subs {
        ids.extend(tasks.iter().filter_map(|t| t.agent_id.as_deref()));
        ids.extend(direct.iter().flatten().map(|d| d.agent_id.as_str()));
    }
    ids.into_iter().collect()
}

/// Takes up the offers of accepted submissions (`offered`: submission, task, offer) before their
/// rows are written: each offered agent is checked as any assignment checks it
/// (`attempts::check_agent`, against `agents` as read for the run), and a task whose agent can take it is written
/// already `assigned` (epoch and attempts 1) with its attempt, instead of being inserted, read
/// back and updated. Answers one step per offer (its `task.assign` entry, or why not) and the
/// attempts to insert.
fn assign_new(
    tenant_id: &str,
    agents: &HashMap<String, crate::attempts::AgentInfo>,
    rows: &mut [TaskRow],
    offered: &[(usize, usize, &DirectAssign)],
    now: i64,
) -> (Vec<Step>, Vec<Attempt>) {
    if offered.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let mut at: HashMap<&str, usize> = offered
        .iter()
        .enumerate()
        .map(|(k, (_, _, d))| (d.task_id.as_str(), k))
        .collect();
    let mut row_of = vec![None; offered.len()];
    for (r, row) in rows.iter().enumerate() {
        if let Some(k) = at.remove(row.id.as_str()) {
            row_of[k] = Some(r);
        }
    }
    let mut steps = Vec::with_capacity(offered.len());
    let mut created = Vec::new();
    for ((_, _, d), r) in offered.iter().zip(row_of) {
        let draft = Draft::success(
            Some(tenant_id),
            "task.assign",
            format!("task/{}", d.task_id),
            json!({ "agent_id": d.agent_id, "worker_id": d.worker_id }),
        );
        let Some(row) = r.map(|r| &mut rows[r]) else {
            let e = Error::NotFound(format!("task {}", d.task_id));
            steps.push(Step::failed(e, draft));
            continue;
        };
        let h = Head {
            tenant_id: tenant_id.to_string(),
            state: row.state,
            epoch: 0,
            attempts: 0,
            max_attempts: row.max_attempts,
            replicas: row.replicas,
            replica_of: None,
        };
        if let Err(e) = check_agent(&d.agent_id, &h, agents.get(&d.agent_id)) {
            steps.push(Step::failed(e, draft));
            continue;
        }
        let a = new_attempt(&d.task_id, &d.agent_id, &d.worker_id, &h, d.lease_ms, now);
        row.state = TaskState::Assigned;
        row.epoch = a.epoch;
        steps.push(Step::done(
            Output::Assigned(a.clone()),
            assigned_draft(draft, &a),
        ));
        created.push(a);
    }
    (steps, created)
}

/// An accepted submission's answers and audit entries.
type Accepted = (Vec<Submitted>, Vec<Draft>);

/// A submission's answers, its task rows and its dependency edges (task, dependency).
type Planned = (Vec<Submitted>, Vec<TaskRow>, Vec<(String, String)>);

/// Decides one submission of a run from what the run read: its answer, rows and edges, or why
/// it is refused (then it writes nothing).
fn plan_one(
    now: i64,
    tenant_id: &str,
    p: Pending<'_>,
    existing: &HashMap<String, TaskState>,
    known_swarms: &HashSet<String>,
    known_agents: &HashSet<String>,
) -> std::result::Result<Planned, ValidationError> {
    let Pending {
        tasks,
        direct: _,
        mut results,
        fresh,
        ids,
        dag_tasks,
    } = p;
    let plan = dag::plan(&dag_tasks, |id| existing.get(id).copied())?;
    for &i in &fresh {
        if let Some(s) = &tasks[i].swarm_id
            && !known_swarms.contains(s)
        {
            return Err(ValidationError::new(
                "swarm_id",
                format!("no swarm {s} in this tenant"),
            ));
        }
    }
    // A preferred agent must be one of the tenant's.
    for &i in &fresh {
        if let Some(a) = &tasks[i].agent_id
            && !known_agents.contains(a)
        {
            return Err(ValidationError::new(
                format!("tasks[{i}].agent"),
                format!("no agent {a} in this tenant"),
            ));
        }
    }

    // Resolve each dependency to a task id, and write.
    let id_of = |r: &DepRef| match r {
        DepRef::Local(j) => ids[*j].clone(),
        DepRef::Existing(id) => id.clone(),
    };
    let local_ids: HashMap<&str, &str> = dag_tasks
        .iter()
        .zip(&ids)
        .map(|(d, id)| (d.id.as_str(), id.as_str()))
        .collect();
    let mut rows = Vec::with_capacity(fresh.len());
    let mut edges = Vec::new();
    for (n, &i) in fresh.iter().enumerate() {
        let (state, reason, unmet) = match &plan.start[n] {
            Start::Ready => (TaskState::Queued, None, 0),
            Start::Waiting { on } => {
                edges.extend(on.iter().map(|r| (ids[n].clone(), id_of(r))));
                (TaskState::Pending, None, on.len() as i64)
            }
            Start::Cancelled { reason } => (TaskState::Cancelled, Some(reason.clone()), 0),
        };
        let deps: Vec<&str> = dag_tasks[n]
            .depends_on
            .iter()
            .map(|d| local_ids.get(d.as_str()).copied().unwrap_or(d.as_str()))
            .collect();
        let mut row = TaskRow::new(tenant_id, ids[n].clone(), &tasks[i], now);
        row.state = state;
        row.reason = reason;
        row.unmet = unmet;
        row.depends_on = json!(deps).to_string();
        if state == TaskState::Queued && row.replicas > 1 {
            // A quorum parent runs as its replicas, created as it becomes ready.
            rows.extend(replicas::replica_rows(&row));
            row.state = TaskState::Running;
        }
        results[i] = Some(Submitted {
            id: ids[n].clone(),
            state: row.state,
            existing: false,
        });
        rows.push(row);
    }
    Ok((results.into_iter().flatten().collect(), rows, edges))
}

impl Store {
    /// Submits tasks in one transaction: every task is accepted (and durable) or none is.
    /// Answers in submission order; a task whose idempotency key the tenant already used answers
    /// with the existing task's id and `existing: true`, and is not changed.
    pub async fn submit_tasks(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        tasks: Vec<NewTask>,
    ) -> Result<Vec<Submitted>> {
        let (submitted, _) = self
            .submit_tasks_direct(ctx, tenant_id, tasks, Vec::new())
            .await?;
        Ok(submitted)
    }

    /// [`Store::submit_tasks`] that also assigns new, ready tasks at once where `direct` offers
    /// an agent (empty, or one element per task): each such task is created with the offered id
    /// and assigned in the same transaction if the agent can still take it (its swarm active,
    /// the agent in service), and stays queued otherwise. Answers each task's submission (state
    /// `assigned` when it was) and its attempt when it was assigned.
    pub async fn submit_tasks_direct(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        tasks: Vec<NewTask>,
        direct: Vec<Option<DirectAssign>>,
    ) -> Result<(Vec<Submitted>, Vec<Option<Attempt>>)> {
        if !direct.is_empty() {
            if direct.len() != tasks.len() {
                let rule = format!(
                    "must be empty or hold one element per task ({} tasks, got {})",
                    tasks.len(),
                    direct.len()
                );
                return Err(Error::Invalid(ValidationError::new("direct", rule)));
            }
            let mut ids = HashSet::new();
            for d in direct.iter().flatten() {
                check_lease(d.lease_ms)?;
                if uuid::Uuid::parse_str(&d.task_id).is_err() || !ids.insert(d.task_id.as_str()) {
                    let rule = format!("'{}' is not a fresh task id (a UUID)", d.task_id);
                    return Err(Error::Invalid(ValidationError::new("direct.task_id", rule)));
                }
            }
        }
        if tasks.is_empty() || tasks.len() > MAX_SUBMIT {
            let rule = format!("must hold 1 to {MAX_SUBMIT} tasks (got {})", tasks.len());
            return Err(Error::Invalid(ValidationError::new("tasks", rule)));
        }
        let mut keys = HashSet::new();
        for (i, t) in tasks.iter().enumerate() {
            check(i, t)?;
            if let Some(k) = &t.idempotency_key
                && !keys.insert(k.as_str())
            {
                let rule = format!("task {i}: '{k}' is used twice in this submission");
                return Err(Error::Invalid(ValidationError::new(
                    "idempotency_key",
                    rule,
                )));
            }
        }
        let op = Op::SubmitTasks {
            tenant_id: tenant_id.to_string(),
            tasks,
            direct,
        };
        let out = self.write(ctx, op).await?;
        expect_output!(out, Output::Submitted(s, a) => (s, a))
    }

    /// A task of the tenant (another tenant's is `None`).
    pub async fn get_task(&self, tenant_id: &str, id: &str) -> Result<Option<Task>> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE tenant_id = $1 AND id = $2");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(tenant_id.to_string())
            .bind(id.to_string())
            .fetch_optional(self.pool()?)
            .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    /// The tenant's tasks ordered by id (UUIDv7, so by submission), optionally only in one
    /// state or swarm.
    pub async fn list_tasks(
        &self,
        tenant_id: &str,
        filter: &TaskFilter,
        req: &PageRequest,
    ) -> Result<Page<Task>> {
        let limit = page::clamp_limit(req.limit);
        let after = page::decode_opt(TASK_CURSOR, &req.cursor)?.unwrap_or_default();
        // Parameters: $1 tenant, $2 cursor, $3 the page's size (and one more), then the swarm
        // and the state when filtered on.
        let mut cond = String::from("tenant_id = $1 AND id > $2");
        let mut n = 4;
        if filter.swarm_id.is_some() {
            cond.push_str(&format!(" AND swarm_id = ${n}"));
            n += 1;
        }
        let sql = if filter.state.is_some() {
            format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE {cond} AND state = ${n} ORDER BY id LIMIT $3"
            )
        } else {
            list_all_states_sql(&cond)
        };
        // The text holds only placeholders and constants written here; every value is bound.
        let mut q = sqlx::query(AssertSqlSafe(sql))
            .bind(tenant_id.to_string())
            .bind(after)
            .bind(limit + 1);
        if let Some(s) = &filter.swarm_id {
            q = q.bind(s.clone());
        }
        if let Some(s) = filter.state {
            q = q.bind(s.as_str());
        }
        let rows = q.fetch_all(self.pool()?).await?;
        let items = rows.iter().map(task_from_row).collect::<Result<Vec<_>>>()?;
        Ok(page::finish(items, limit, TASK_CURSOR, |t| t.id.clone()))
    }

    /// Queued tasks of every tenant, highest priority first, then oldest: what the scheduler
    /// loads into its in-memory queues at start. `limit` is not clamped, so one call can load a
    /// whole queue; [`Store::ready_tasks_after`] pages through it instead.
    pub async fn ready_tasks(&self, limit: u32) -> Result<Vec<Task>> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE state = 'queued' \
             ORDER BY priority DESC, created_at, id LIMIT $1"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(i64::from(limit))
            .fetch_all(self.pool()?)
            .await?;
        rows.iter().map(task_from_row).collect()
    }

    /// The result of each task's last succeeded attempt, for a page of the tenant's tasks, in
    /// one query (a task without such an attempt, or whose attempt has no result, is absent).
    pub async fn succeeded_results(
        &self,
        tenant_id: &str,
        task_ids: &[&str],
    ) -> Result<HashMap<String, serde_json::Value>> {
        if task_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = format!(
            "SELECT task_id, result FROM attempts WHERE tenant_id = $1 AND task_id IN ({}) \
             AND state = 'succeeded' AND result IS NOT NULL ORDER BY task_id, epoch",
            bulk::ids_from(self.backend(), 2)
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(tenant_id.to_string())
            .bind(bulk::ids_json(task_ids.iter().copied()))
            .fetch_all(self.pool()?)
            .await?;
        let mut out = HashMap::new();
        for r in &rows {
            let task_id: String = r.try_get(0)?;
            let result: String = r.try_get(1)?;
            // Ordered by epoch: a later attempt's result replaces an earlier one's.
            out.insert(task_id, json_col("attempts.result", &result)?);
        }
        Ok(out)
    }

    /// Every attempt of one of the tenant's tasks, oldest first.
    pub async fn list_attempts(&self, tenant_id: &str, task_id: &str) -> Result<Vec<Attempt>> {
        let sql = format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE tenant_id = $1 AND task_id = $2 \
             ORDER BY epoch"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(tenant_id.to_string())
            .bind(task_id.to_string())
            .fetch_all(self.pool()?)
            .await?;
        rows.iter().map(attempt_from_row).collect()
    }
}

/// A page of a tenant's tasks in every state, in id order (`cond` the tenant's, cursor's and
/// swarm's conditions; `$3` the page's size): one ordered range of `tasks_by_state` per state,
/// merged. The tasks have no index by tenant and id alone (PostgreSQL's migration 0016,
/// SQLite's 0013): on PostgreSQL every update of a task's state wrote an entry into it, and
/// into `tasks_by_state`, whose ranges serve the same pages.
fn list_all_states_sql(cond: &str) -> String {
    let parts: Vec<String> = TaskState::ALL
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "SELECT * FROM (SELECT {TASK_COLUMNS} FROM tasks WHERE {cond} AND state = '{}' \
                 ORDER BY id LIMIT $3) AS s{i}",
                s.as_str()
            )
        })
        .collect();
    format!("{} ORDER BY id LIMIT $3", parts.join(" UNION ALL "))
}
