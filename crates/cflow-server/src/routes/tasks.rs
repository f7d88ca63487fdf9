//! Tasks: bulk submission of a DAG (`POST /api/v1/tasks`, answered 202 once durable), list and
//! read with attempts, cancel, and the captured output of each attempt. Submission and cancel go
//! through the scheduler; reads come from the store.

use super::{opt_time, time};
use crate::auth::{Caller, op};
use crate::error::{ApiError, ApiResult, ProblemResponse};
use crate::extract::{JsonBody, PathParams, Query, page_limit};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cflow_core::task::{self as core_task, TaskState};
use cflow_core::{ValidationError, agent_type, validate};
use cflow_store::{Attempt, MAX_SUBMIT, NewTask, PageRequest, Task, TaskFilter};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit_tasks, list_tasks))
        .routes(routes!(get_task))
        .routes(routes!(cancel_task))
        .routes(routes!(task_logs))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskIn {
    /// A name for the task inside this submission, for `depends_on` of other tasks in it.
    pub local_id: Option<String>,
    /// The swarm whose agents run it.
    pub swarm: Option<String>,
    /// `{"command": "sh line"}` or `{"program": "p", "args": [..]}`, with optional `env` and
    /// `cwd`.
    pub spec: serde_json::Value,
    /// 0–100, default 50.
    pub priority: Option<i64>,
    /// Capabilities the agent must have.
    pub requires: Option<Vec<String>>,
    /// Labels the agent or worker must carry (pinning).
    pub labels: Option<BTreeMap<String, String>>,
    /// `local_id`s of this submission or ids of existing tasks.
    pub depends_on: Option<Vec<String>>,
    /// A preferred agent id.
    pub agent: Option<String>,
    /// 1–86400, default 3600.
    pub timeout_seconds: Option<i64>,
    /// 1–20, default 3.
    pub max_attempts: Option<i64>,
    /// 1–9, default 1.
    pub replicas: Option<i64>,
    /// 1..=replicas, default a strict majority of replicas.
    pub quorum: Option<i64>,
    /// A task of the tenant with this key already answers for this one.
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitParams {
    /// 1–10000 tasks, accepted all or none.
    pub tasks: Vec<TaskIn>,
    /// The agent delegating these tasks; checked against its swarm's topology.
    pub delegated_by: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubmittedTask {
    pub id: String,
    pub local_id: Option<String>,
    /// pending (waiting on dependencies) or queued, or the state of the existing task.
    pub state: String,
    /// The idempotency key named a task that already existed.
    pub existing: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubmitResponse {
    pub tasks: Vec<SubmittedTask>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptResponse {
    /// 1-based attempt number.
    pub attempt: i64,
    pub epoch: i64,
    pub agent_id: String,
    pub worker_id: String,
    /// assigned, running, succeeded, failed, timed_out, lost or cancelled.
    pub state: String,
    pub assigned_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub exit_code: Option<i64>,
    /// The last 64 KiB of standard output.
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub result: Option<serde_json::Value>,
    /// The isolation the attempt ran under, as its worker reported it (`none: …` or
    /// `sandbox: user_ns, pid_ns, …; landlock unavailable (…)`). Attempts recorded before
    /// workers reported it say that they ran unsandboxed.
    pub isolation: String,
    /// How the attempt ended, as its worker saw it: `exit 3`, `signal 9`, `timed_out`,
    /// `killed: cancelled`, `killed: memory`…; null until it ends or when not reported.
    pub end: Option<String>,
    /// What the sandbox saw (layers, denials, limits hit, peak memory, CPU time, artifacts
    /// skipped); null for an attempt that ran without the sandbox.
    #[schema(value_type = Option<Object>)]
    pub sandbox: Option<serde_json::Value>,
}

/// What [`AttemptResponse::isolation`] says of an attempt whose worker did not report it.
pub const NO_ISOLATION: &str =
    "none: not reported by the worker; commands ran unsandboxed, as the worker's user";

impl From<Attempt> for AttemptResponse {
    fn from(a: Attempt) -> Self {
        let detail = a.detail.unwrap_or(serde_json::Value::Null);
        let isolation = match detail.get("isolation").and_then(|v| v.as_str()) {
            Some(i) if !i.is_empty() => i.to_string(),
            _ => NO_ISOLATION.to_string(),
        };
        let end = detail
            .get("end")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let sandbox = detail.get("sandbox").filter(|v| !v.is_null()).cloned();
        Self {
            attempt: a.attempt_no,
            epoch: a.epoch,
            agent_id: a.agent_id,
            worker_id: a.worker_id,
            state: a.state.to_string(),
            assigned_at: time(a.assigned_at),
            started_at: opt_time(a.started_at),
            ended_at: opt_time(a.ended_at),
            exit_code: a.exit_code,
            stdout: a.stdout_tail,
            stderr: a.stderr_tail,
            result: a.result,
            isolation,
            end,
            sandbox,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskResponse {
    pub id: String,
    pub swarm_id: Option<String>,
    pub spec: serde_json::Value,
    pub priority: i64,
    pub requires: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub depends_on: Vec<String>,
    /// The preferred agent.
    pub agent_id: Option<String>,
    /// For a replica: the task it is a replica of.
    pub replica_of: Option<String>,
    /// pending, queued, assigned, running, succeeded, failed, cancelled or timed_out.
    pub state: String,
    /// Why it ended as it did, when known.
    pub reason: Option<String>,
    /// Attempts started so far.
    pub attempts: i64,
    pub max_attempts: i64,
    pub timeout_seconds: i64,
    pub replicas: i64,
    pub quorum: i64,
    /// The result of the attempt that succeeded; for a task with replicas, the vote
    /// (`{output, quorum: {agreeing, groups}}`).
    pub result: Option<serde_json::Value>,
    pub created_at: String,
    pub updated_at: String,
}

/// `GET /tasks/{id}`: a task whose `attempts` is the list of its attempts (whose length is the
/// count that [`TaskResponse`] shows).
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskDetailResponse {
    pub id: String,
    pub swarm_id: Option<String>,
    pub spec: serde_json::Value,
    pub priority: i64,
    pub requires: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub depends_on: Vec<String>,
    pub agent_id: Option<String>,
    pub replica_of: Option<String>,
    pub state: String,
    pub reason: Option<String>,
    pub attempts: Vec<AttemptResponse>,
    pub max_attempts: i64,
    pub timeout_seconds: i64,
    pub replicas: i64,
    pub quorum: i64,
    pub result: Option<serde_json::Value>,
    pub created_at: String,
    pub updated_at: String,
    /// The task's model calls, summed over every attempt; null when it made none.
    pub cost: Option<TaskCost>,
}

/// What a task's model calls used and cost.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskCost {
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_usd: f64,
    /// Calls of models without a price, counted as $0.
    pub unpriced_calls: u64,
}

impl From<cflow_store::CostRow> for TaskCost {
    fn from(r: cflow_store::CostRow) -> Self {
        Self {
            calls: r.calls,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cache_read_tokens: r.cache_read_tokens,
            cache_write_tokens: r.cache_write_tokens,
            cost_usd: cflow_core::pricing::micros_to_usd(r.cost_micros),
            unpriced_calls: r.unpriced_calls,
        }
    }
}

impl TaskDetailResponse {
    fn new(t: TaskResponse, attempts: Vec<AttemptResponse>, cost: Option<TaskCost>) -> Self {
        Self {
            id: t.id,
            swarm_id: t.swarm_id,
            spec: t.spec,
            priority: t.priority,
            requires: t.requires,
            labels: t.labels,
            depends_on: t.depends_on,
            agent_id: t.agent_id,
            replica_of: t.replica_of,
            state: t.state,
            reason: t.reason,
            attempts,
            max_attempts: t.max_attempts,
            timeout_seconds: t.timeout_seconds,
            replicas: t.replicas,
            quorum: t.quorum,
            result: t.result,
            created_at: t.created_at,
            updated_at: t.updated_at,
            cost,
        }
    }
}

/// The result of the task's succeeded attempt, if any (a quorum parent's result is its vote,
/// stored on the task).
fn result_of(attempts: &[Attempt]) -> Option<serde_json::Value> {
    attempts
        .iter()
        .rev()
        .find(|a| a.state == cflow_store::AttemptState::Succeeded)
        .and_then(|a| a.result.clone())
}

fn task_response(t: Task, result: Option<serde_json::Value>) -> TaskResponse {
    let result = t.result.or(result);
    TaskResponse {
        id: t.id,
        swarm_id: t.swarm_id,
        spec: t.spec,
        priority: t.priority,
        requires: t.requires,
        labels: t.labels,
        depends_on: t.depends_on,
        agent_id: t.agent_id,
        replica_of: t.replica_of,
        state: t.state.to_string(),
        reason: t.reason,
        attempts: t.attempts,
        max_attempts: t.max_attempts,
        timeout_seconds: t.timeout_ms / 1000,
        replicas: t.replicas,
        quorum: t.quorum,
        result,
        created_at: time(t.created_at),
        updated_at: time(t.updated_at),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskListResponse {
    /// Without `attempts` lists; `result` is filled for succeeded tasks.
    pub items: Vec<TaskResponse>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TaskListParams {
    /// Only tasks in this state.
    pub state: Option<String>,
    /// Only tasks of this swarm.
    pub swarm: Option<String>,
    pub cursor: Option<String>,
    /// 1–1000, default 100.
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptLog {
    pub attempt: i64,
    pub stdout: String,
    pub stderr: String,
    /// Whether either stream was cut to its last 64 KiB.
    pub truncated: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskLogsResponse {
    pub attempts: Vec<AttemptLog>,
}

fn invalid(field: String, rule: impl Into<String>) -> ApiError {
    ApiError::validation(ValidationError::new(field, rule))
}

/// What one submission has looked up already: which swarms exist, and each agent's swarm.
#[derive(Default)]
struct Seen {
    swarms: HashMap<String, bool>,
    agents: HashMap<String, Option<String>>,
}

/// Checks one task as sent and turns it into what the scheduler takes.
async fn new_task(
    state: &AppState,
    tenant: &str,
    i: usize,
    t: TaskIn,
    seen: &mut Seen,
) -> ApiResult<NewTask> {
    let f = |name: &str| format!("tasks[{i}].{name}");
    // A check that names the field as `tasks[i].<field>`.
    let at = |e: ValidationError| invalid(f(&e.field), e.rule);
    cflow_agents::proto::check_task_spec(&t.spec).map_err(|why| invalid(f("spec"), why))?;
    let priority = t.priority.unwrap_or(core_task::DEFAULT_PRIORITY);
    core_task::priority(priority).map_err(at)?;
    let timeout_seconds = t
        .timeout_seconds
        .unwrap_or(core_task::DEFAULT_TIMEOUT_SECONDS);
    core_task::timeout_seconds(timeout_seconds).map_err(at)?;
    let max_attempts = t.max_attempts.unwrap_or(core_task::DEFAULT_MAX_ATTEMPTS);
    core_task::max_attempts(max_attempts).map_err(at)?;
    let replicas = t.replicas.unwrap_or(1);
    let quorum = match t.quorum {
        Some(q) => q,
        None => u32::try_from(replicas)
            .map(|r| i64::from(core_task::default_quorum(r)))
            .unwrap_or(1),
    };
    core_task::replicas_and_quorum(replicas, quorum).map_err(at)?;
    let requires = t.requires.unwrap_or_default();
    for (j, c) in requires.iter().enumerate() {
        agent_type::validate_capability(&f(&format!("requires[{j}]")), c)?;
    }
    if let Some(l) = &t.local_id {
        validate::name(&f("local_id"), l)?;
    }
    if let Some(k) = &t.idempotency_key {
        validate::memory_key(k).map_err(|e| invalid(f("idempotency_key"), e.rule))?;
    }
    if let Some(swarm) = &t.swarm {
        let exists = match seen.swarms.get(swarm) {
            Some(e) => *e,
            None => {
                // The scheduler holds every live swarm: only a stopped or unknown one costs a read.
                let e = state.sched.has_swarm(tenant, swarm)
                    || state.store.get_swarm(tenant, swarm).await?.is_some();
                seen.swarms.insert(swarm.clone(), e);
                e
            }
        };
        if !exists {
            return Err(invalid(f("swarm"), format!("no swarm '{swarm}'")));
        }
    }
    if let Some(agent) = &t.agent {
        let swarm_of = match seen.agents.get(agent) {
            Some(s) => s.clone(),
            None => {
                let s = state
                    .store
                    .get_agent(tenant, agent)
                    .await?
                    .map(|a| a.swarm_id);
                seen.agents.insert(agent.clone(), s.clone());
                s
            }
        };
        match swarm_of {
            Some(s) if t.swarm.as_ref().is_none_or(|own| *own == s) => {}
            Some(_) => {
                return Err(invalid(
                    f("agent"),
                    format!("agent '{agent}' is not in the task's swarm"),
                ));
            }
            None => return Err(invalid(f("agent"), format!("no agent '{agent}'"))),
        }
    }
    Ok(NewTask {
        local_id: t.local_id,
        swarm_id: t.swarm,
        spec: t.spec,
        priority,
        requires,
        labels: t.labels.unwrap_or_default(),
        depends_on: t.depends_on.unwrap_or_default(),
        agent_id: t.agent,
        timeout_seconds,
        max_attempts,
        replicas,
        quorum,
        idempotency_key: t.idempotency_key,
    })
}

/// Submit tasks (a DAG through `depends_on`): all are accepted, durably, or none is.
#[utoipa::path(
    post, path = "/api/v1/tasks", tag = "tasks",
    request_body = SubmitParams,
    responses(
        (status = 202, body = SubmitResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn submit_tasks(
    State(state): State<AppState>,
    caller: Caller<op::TaskSubmit>,
    JsonBody(p): JsonBody<SubmitParams>,
) -> ApiResult<(StatusCode, Json<SubmitResponse>)> {
    let tenant = caller.tenant_id();
    if p.tasks.is_empty() || p.tasks.len() > MAX_SUBMIT {
        return Err(invalid(
            "tasks".into(),
            format!("must hold 1 to {MAX_SUBMIT} tasks (got {})", p.tasks.len()),
        ));
    }
    if let Some(by) = &p.delegated_by
        && state.store.get_agent(tenant, by).await?.is_none()
    {
        return Err(invalid("delegated_by".into(), format!("no agent '{by}'")));
    }
    let mut seen = Seen::default();
    let mut local_ids = Vec::with_capacity(p.tasks.len());
    let mut tasks = Vec::with_capacity(p.tasks.len());
    for (i, t) in p.tasks.into_iter().enumerate() {
        local_ids.push(t.local_id.clone());
        tasks.push(new_task(&state, tenant, i, t, &mut seen).await?);
    }
    // The tenant's pre-task hooks may refuse or amend (a cached no-op without such hooks).
    crate::hooks::pretask::check(&state, tenant, &mut tasks).await?;
    let submitted = state
        .sched
        .submit(&caller.ctx, tenant, tasks, p.delegated_by.as_deref())
        .await?;
    let tasks = submitted
        .into_iter()
        .zip(local_ids)
        .map(|(s, local_id)| SubmittedTask {
            id: s.id,
            local_id,
            state: s.state.to_string(),
            existing: s.existing,
        })
        .collect();
    Ok((StatusCode::ACCEPTED, Json(SubmitResponse { tasks })))
}

/// List the caller's tasks in submission order.
#[utoipa::path(
    get, path = "/api/v1/tasks", tag = "tasks",
    params(TaskListParams),
    responses(
        (status = 200, body = TaskListResponse),
        (status = 400, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list_tasks(
    State(state): State<AppState>,
    caller: Caller<op::TaskRead>,
    Query(q): Query<TaskListParams>,
) -> ApiResult<Json<TaskListResponse>> {
    let tenant = caller.tenant_id();
    let filter = TaskFilter {
        state: match &q.state {
            None => None,
            Some(s) => Some(s.parse::<TaskState>().map_err(|e| {
                ApiError::bad_request(
                    "state",
                    format!(
                        "{e}: expected pending, queued, assigned, running, succeeded, failed, \
                         cancelled or timed_out"
                    ),
                )
            })?),
        },
        swarm_id: q.swarm,
    };
    let page = PageRequest {
        cursor: q.cursor,
        limit: page_limit(q.limit)?,
    };
    let page = state.store.list_tasks(tenant, &filter, &page).await?;
    // Results live on attempts: read those of the page's succeeded tasks in one query.
    let want: Vec<&str> = page
        .items
        .iter()
        .filter(|t| t.state == TaskState::Succeeded && t.result.is_none())
        .map(|t| t.id.as_str())
        .collect();
    let mut results = state.store.succeeded_results(tenant, &want).await?;
    let items = page
        .items
        .into_iter()
        .map(|t| {
            let result = results.remove(&t.id);
            task_response(t, result)
        })
        .collect();
    Ok(Json(TaskListResponse {
        items,
        next_cursor: page.next_cursor,
    }))
}

async fn load_task(state: &AppState, tenant: &str, id: &str) -> ApiResult<Task> {
    state
        .store
        .get_task(tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("task '{id}' not found")))
}

async fn task_detail(state: &AppState, tenant: &str, id: &str) -> ApiResult<TaskDetailResponse> {
    let task = load_task(state, tenant, id).await?;
    let attempts = state.store.list_attempts(tenant, id).await?;
    let cost = state.store.task_cost(tenant, id).await?;
    Ok(TaskDetailResponse::new(
        task_response(task, result_of(&attempts)),
        attempts.into_iter().map(Into::into).collect(),
        cost.map(Into::into),
    ))
}

/// A task with every attempt.
#[utoipa::path(
    get, path = "/api/v1/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    responses(
        (status = 200, body = TaskDetailResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn get_task(
    State(state): State<AppState>,
    caller: Caller<op::TaskRead>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<TaskDetailResponse>> {
    Ok(Json(task_detail(&state, caller.tenant_id(), &id).await?))
}

/// Cancel a task and the tasks waiting on it; a running attempt is killed.
#[utoipa::path(
    post, path = "/api/v1/tasks/{id}/cancel", tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    responses(
        (status = 200, body = TaskResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 409, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn cancel_task(
    State(state): State<AppState>,
    caller: Caller<op::TaskCancel>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<TaskResponse>> {
    let tenant = caller.tenant_id();
    load_task(&state, tenant, &id).await?;
    state.sched.cancel(&caller.ctx, tenant, &id).await?;
    let task = load_task(&state, tenant, &id).await?;
    Ok(Json(task_response(task, None)))
}

/// Whether a stored output tail was cut (the store marks the cut at its start).
fn is_truncated(tail: &str) -> bool {
    tail.starts_with("[… ")
        && tail
            .split_once('\n')
            .is_some_and(|(first, _)| first.ends_with(" bytes truncated]"))
}

/// The captured output (last 64 KiB of each stream) of every attempt; live output is on the
/// event stream as `task.log`.
#[utoipa::path(
    get, path = "/api/v1/tasks/{id}/logs", tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    responses(
        (status = 200, body = TaskLogsResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn task_logs(
    State(state): State<AppState>,
    caller: Caller<op::TaskRead>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<TaskLogsResponse>> {
    let tenant = caller.tenant_id();
    load_task(&state, tenant, &id).await?;
    let attempts = state.store.list_attempts(tenant, &id).await?;
    Ok(Json(TaskLogsResponse {
        attempts: attempts
            .into_iter()
            .map(|a| {
                let stdout = a.stdout_tail.unwrap_or_default();
                let stderr = a.stderr_tail.unwrap_or_default();
                AttemptLog {
                    attempt: a.attempt_no,
                    truncated: is_truncated(&stdout) || is_truncated(&stderr),
                    stdout,
                    stderr,
                }
            })
            .collect(),
    }))
}
