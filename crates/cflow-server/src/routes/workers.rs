//! The worker protocol over HTTP (`cflow_agents::proto`): register, long-poll for assignments,
//! report, leave, and serve a model loop's calls for an attempt it holds (`…/calls`, fenced by
//! the epoch; see `crate::modelhost`). Only keys of role `worker` (serving their own tenant) or a
//! superadmin key (serving every tenant, like the local pool) may connect.
//! `GET /api/v1/workers` lists the workers a tenant can see.

use super::time;
use crate::auth::{Caller, op};
use crate::error::{ApiResult, ProblemResponse};
use crate::extract::{JsonBody, PathParams};
use crate::routes::swarms::invalid;
use crate::sched::WorkerView;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cflow_agents::proto::{
    HostCallRequest, HostReply, PollRequest, PollResponse, Register, Registered, ReportAcks,
    ReportBatch,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register_worker, list_workers))
        .routes(routes!(poll))
        .routes(routes!(report))
        .routes(routes!(host_call))
        .routes(routes!(deregister_worker))
}

/// Longest long-poll the protocol allows.
const MAX_WAIT_MS: u64 = 30_000;
/// Longest wait the scheduler takes (it refuses more); longer requests are shortened to it.
const SCHED_MAX_WAIT_MS: u64 = 25_000;

/// `cflow_agents::proto::Register`: `{worker_id?, name, labels?, slots, drivers}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct RegisterBody(pub Register);

/// `cflow_agents::proto::Registered`: `{worker_id, heartbeat_ms, lease_ms}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct RegisteredBody(pub Registered);

/// `cflow_agents::proto::PollRequest`: `{held?: [{task_id, epoch}], free_slots, wait_ms?}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct PollBody(pub PollRequest);

/// `cflow_agents::proto::PollResponse`: `{assignments: [Assignment], cancel: [{task_id, epoch}]}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct PollAnswer(pub PollResponse);

/// `cflow_agents::proto::ReportBatch`: `{reports: [Report]}`, each report tagged by `type`
/// (`started`, `log`, `finished`) with its `task_id` and `epoch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct ReportBody(pub ReportBatch);

/// `cflow_agents::proto::ReportAcks`: `{acks: [{status, detail?}]}`, one per report in order;
/// 409 for a stale epoch, 404 for a task the worker does not hold.
#[derive(Debug, Serialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct AcksBody(pub ReportAcks);

/// `cflow_agents::proto::HostCallRequest`: `{call: {op, ...}}` with `op` one of `setup`,
/// `tool` (`name`, `input`), `check_budget`, `usage` (`provider`, `model`, `tokens`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct HostCallBody(pub HostCallRequest);

/// `cflow_agents::proto::HostReply`: `{"ok": <value>}`, or `{"err": {"kind": "refused" |
/// "unavailable", "message": ...}}` when the call was served but refused or failed.
#[derive(Debug, Serialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct HostReplyBody(pub HostReply);

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerResponse {
    pub id: String,
    pub name: String,
    /// `null`: serves every tenant (the local pool, or a superadmin's worker).
    pub tenant_id: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub drivers: Vec<String>,
    pub slots: u32,
    pub running: u32,
    /// active, suspected, lost or draining.
    pub state: String,
    /// Its last poll.
    pub last_seen: String,
}

impl From<WorkerView> for WorkerResponse {
    fn from(w: WorkerView) -> Self {
        Self {
            id: w.id,
            name: w.name,
            tenant_id: w.tenant_id,
            labels: w.labels,
            drivers: w.drivers,
            slots: w.slots,
            running: w.running,
            state: w.state,
            last_seen: time(w.last_seen),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerListResponse {
    pub items: Vec<WorkerResponse>,
}

/// The tenant a worker connecting with this key serves: its own, or every tenant for a
/// superadmin key (which is platform-wide).
fn worker_tenant<O>(caller: &Caller<O>) -> Option<&str> {
    (!caller.is_superadmin()).then(|| caller.tenant_id())
}

fn valid_worker_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

/// Connect as a worker.
#[utoipa::path(
    post, path = "/api/v1/workers", tag = "workers",
    request_body = RegisterBody,
    responses(
        (status = 201, body = RegisteredBody),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn register_worker(
    State(state): State<AppState>,
    caller: Caller<op::WorkerRegister>,
    JsonBody(RegisterBody(reg)): JsonBody<RegisterBody>,
) -> ApiResult<(StatusCode, Json<RegisteredBody>)> {
    if let Some(id) = &reg.worker_id
        && !valid_worker_id(id)
    {
        return Err(invalid(
            "worker_id",
            format!("'{id}' is not a worker id: 1-64 characters a-z, 0-9, '_' or '-'"),
        ));
    }
    if reg.name.trim().is_empty() || reg.name.len() > 128 {
        return Err(invalid("name", "must be 1-128 characters"));
    }
    if !(1..=1024).contains(&reg.slots) {
        return Err(invalid(
            "slots",
            format!("must be from 1 to 1024 (got {})", reg.slots),
        ));
    }
    if reg.drivers.is_empty() {
        return Err(invalid("drivers", "name at least one driver (exec, noop)"));
    }
    let registered = state.sched.register_worker(worker_tenant(&caller), reg)?;
    Ok((StatusCode::CREATED, Json(RegisteredBody(registered))))
}

/// Long-poll: heartbeat for the attempts held, get cancellations and new assignments.
#[utoipa::path(
    post, path = "/api/v1/workers/{id}/poll", tag = "workers",
    params(("id" = String, Path, description = "Worker id")),
    request_body = PollBody,
    responses(
        (status = 200, body = PollAnswer),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn poll(
    State(state): State<AppState>,
    caller: Caller<op::WorkerPoll>,
    PathParams(id): PathParams<String>,
    JsonBody(PollBody(mut req)): JsonBody<PollBody>,
) -> ApiResult<Json<PollAnswer>> {
    if req.wait_ms > MAX_WAIT_MS {
        return Err(invalid(
            "wait_ms",
            format!("must be from 0 to {MAX_WAIT_MS} (got {})", req.wait_ms),
        ));
    }
    // The edge abandons a request after the request timeout: answer well before it, so that a
    // long-poll ends with an (empty) answer rather than a 408.
    let budget = state
        .request_timeout
        .saturating_sub(Duration::from_secs(2))
        .max(state.request_timeout / 2);
    req.wait_ms = req
        .wait_ms
        .min(SCHED_MAX_WAIT_MS)
        .min(u64::try_from(budget.as_millis()).unwrap_or(SCHED_MAX_WAIT_MS));
    let answer = state.sched.poll(worker_tenant(&caller), &id, req).await?;
    Ok(Json(PollAnswer(answer)))
}

/// Report on attempts: started, output, finished. One ack per report.
#[utoipa::path(
    post, path = "/api/v1/workers/{id}/reports", tag = "workers",
    params(("id" = String, Path, description = "Worker id")),
    request_body = ReportBody,
    responses(
        (status = 200, body = AcksBody),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn report(
    State(state): State<AppState>,
    caller: Caller<op::WorkerReport>,
    PathParams(id): PathParams<String>,
    JsonBody(ReportBody(batch)): JsonBody<ReportBody>,
) -> ApiResult<Json<AcksBody>> {
    let acks = state
        .sched
        .apply_reports(worker_tenant(&caller), &id, batch.reports)
        .await?;
    Ok(Json(AcksBody(ReportAcks { acks })))
}

/// A model loop's call (server-side tool, budget check, usage, setup) for an attempt the worker
/// holds. Fenced like a report: 409 when the attempt is no longer running at this epoch on this
/// worker, 404 for a task the worker's tenant does not have; the worker then stops the loop.
#[utoipa::path(
    post, path = "/api/v1/workers/{id}/attempts/{task_id}/{epoch}/calls", tag = "workers",
    params(
        ("id" = String, Path, description = "Worker id"),
        ("task_id" = String, Path, description = "Task id"),
        ("epoch" = i64, Path, description = "The attempt's epoch"),
    ),
    request_body = HostCallBody,
    responses(
        (status = 200, body = HostReplyBody),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 409, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn host_call(
    State(state): State<AppState>,
    caller: Caller<op::WorkerReport>,
    PathParams((id, task_id, epoch)): PathParams<(String, String, i64)>,
    JsonBody(HostCallBody(req)): JsonBody<HostCallBody>,
) -> ApiResult<Json<HostReplyBody>> {
    let reply = state
        .sched
        .host_call(worker_tenant(&caller), &id, &task_id, epoch, req.call)
        .await?;
    Ok(Json(HostReplyBody(reply)))
}

/// Leave: the worker takes no more assignments; what it holds is re-queued when its leases end.
#[utoipa::path(
    delete, path = "/api/v1/workers/{id}", tag = "workers",
    params(("id" = String, Path, description = "Worker id")),
    responses(
        (status = 204, description = "Deregistered"),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn deregister_worker(
    State(state): State<AppState>,
    caller: Caller<op::WorkerLeave>,
    PathParams(id): PathParams<String>,
) -> ApiResult<StatusCode> {
    state
        .sched
        .deregister_worker(worker_tenant(&caller), &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The workers the caller's tenant can see: its own and the shared ones (all for a superadmin).
#[utoipa::path(
    get, path = "/api/v1/workers", tag = "workers",
    responses(
        (status = 200, body = WorkerListResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list_workers(
    State(state): State<AppState>,
    caller: Caller<op::WorkerList>,
) -> ApiResult<Json<WorkerListResponse>> {
    let workers = state.sched.workers(worker_tenant(&caller));
    Ok(Json(WorkerListResponse {
        items: workers.into_iter().map(Into::into).collect(),
    }))
}
