//! Agents: spawn one into a swarm (`POST /api/v1/swarms/{id}/agents`), list and read them with
//! their live scheduling state (breaker, worker, current task), and stop one (it drains: its
//! running task finishes first).

use super::swarms::{check_capabilities, check_driver, load_swarm};
use super::{opt_time, time};
use crate::auth::{Caller, op};
use crate::error::{ApiError, ApiResult, ProblemResponse};
use crate::extract::{JsonBody, PathParams, Query, page_limit};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cflow_core::agent_type;
use cflow_core::authz::Role;
use cflow_core::breaker::BreakerState;
use cflow_store::{Agent, AgentState, NewAgent, PageRequest};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(spawn_agent))
        .routes(routes!(list_agents))
        .routes(routes!(get_agent))
        .routes(routes!(stop_agent))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpawnAgentParams {
    /// Agent type: a built-in one or a custom name.
    #[serde(rename = "type")]
    pub agent_type: String,
    /// exec or noop.
    pub driver: String,
    /// Absent: the type's default capabilities.
    pub capabilities: Option<Vec<String>>,
    pub labels: Option<BTreeMap<String, String>>,
    /// Sandbox overrides for this agent, over its tenant's (superadmin only; audited with the
    /// agent's creation): `mode` ("enforce"|"off"), `network`, `allow_degraded`, `limits`.
    #[schema(value_type = Option<Object>)]
    pub sandbox: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BreakerResponse {
    /// closed, open or half_open.
    pub state: String,
    pub consecutive_failures: u32,
    /// The cool-down of the current (or next) opening.
    pub cooldown_ms: i64,
    /// When an open breaker lets a probe through.
    pub open_until: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentResponse {
    pub id: String,
    pub swarm_id: String,
    #[serde(rename = "type")]
    pub agent_type: String,
    pub driver: String,
    pub capabilities: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// starting, idle, busy, draining, stopped, failed or quarantined.
    pub state: String,
    pub tasks_done: i64,
    pub failures: i64,
    pub busy_ms: i64,
    pub breaker: BreakerResponse,
    /// The worker running its current task.
    pub worker_id: Option<String>,
    pub current_task: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

fn breaker_state(s: BreakerState) -> &'static str {
    match s {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half_open",
    }
}

/// An agent with the scheduler's live state (an agent the scheduler no longer tracks, such as a
/// stopped one, shows its stored state, a closed breaker and no task).
pub(super) fn agent_response(state: &AppState, a: Agent) -> AgentResponse {
    let live = state.sched.agent_live(&a.tenant_id, &a.id);
    let breaker = match &live {
        Some(l) => BreakerResponse {
            state: breaker_state(l.breaker.state).to_string(),
            consecutive_failures: l.breaker.consecutive_failures,
            cooldown_ms: l.breaker.cooldown_ms,
            open_until: opt_time(l.breaker.open_until),
        },
        None => BreakerResponse {
            state: "closed".to_string(),
            consecutive_failures: 0,
            cooldown_ms: state.sched.config().breaker().cooldown_ms,
            open_until: None,
        },
    };
    // The stored state changes only at spawn, drain, stop and quarantine; idle and busy are live.
    let agent_state = live.as_ref().map_or(a.state, |l| l.state);
    let (worker_id, current_task) = live
        .map(|l| (l.worker_id, l.current_task))
        .unwrap_or_default();
    AgentResponse {
        id: a.id,
        swarm_id: a.swarm_id,
        agent_type: a.agent_type,
        driver: a.driver,
        capabilities: a.capabilities,
        labels: a.labels,
        state: agent_state.to_string(),
        tasks_done: a.tasks_done,
        failures: a.failures,
        busy_ms: a.busy_ms,
        breaker,
        worker_id,
        current_task,
        created_at: time(a.created_at),
        updated_at: time(a.updated_at),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentListResponse {
    pub items: Vec<AgentResponse>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AgentListParams {
    /// Only agents of this swarm (absent: every swarm of the tenant).
    pub swarm: Option<String>,
    /// Only agents in this state (a page may then hold fewer than `limit` items).
    pub state: Option<String>,
    pub cursor: Option<String>,
    /// 1–1000, default 100.
    pub limit: Option<u32>,
}

/// An agent of the caller's tenant, or 404.
pub(super) async fn load_agent(state: &AppState, tenant: &str, id: &str) -> ApiResult<Agent> {
    state
        .store
        .get_agent(tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("agent '{id}' not found")))
}

/// Spawn an agent into a swarm.
#[utoipa::path(
    post, path = "/api/v1/swarms/{id}/agents", tag = "agents",
    params(("id" = String, Path, description = "Swarm id")),
    request_body = SpawnAgentParams,
    responses(
        (status = 201, body = AgentResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 409, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn spawn_agent(
    State(state): State<AppState>,
    caller: Caller<op::AgentSpawn>,
    PathParams(swarm_id): PathParams<String>,
    JsonBody(p): JsonBody<SpawnAgentParams>,
) -> ApiResult<(StatusCode, Json<AgentResponse>)> {
    load_swarm(&state, caller.tenant_id(), &swarm_id).await?;
    agent_type::validate_type("type", &p.agent_type)?;
    check_driver("driver", &p.driver)?;
    let capabilities = match p.capabilities {
        Some(c) if !c.is_empty() => c,
        _ => agent_type::default_capabilities(&p.agent_type),
    };
    check_capabilities("capabilities", &capabilities)?;
    let sandbox = match p.sandbox {
        None => None,
        Some(v) if v.as_object().is_some_and(|o| o.is_empty()) => None,
        Some(v) => {
            // Only the operator's superadmin may change how an agent is contained: a tenant's
            // own admin could otherwise turn its sandbox off.
            if caller.key.role != Role::Superadmin {
                return Err(ApiError::forbidden(
                    "only a superadmin may set an agent's sandbox overrides",
                ));
            }
            cflow_sandbox::host::Settings::parse(&v)
                .map_err(|e| cflow_core::ValidationError::new("sandbox", e))?;
            Some(v)
        }
    };
    let agent = state
        .sched
        .spawn_agent(
            &caller.ctx,
            caller.tenant_id(),
            &swarm_id,
            NewAgent {
                agent_type: p.agent_type,
                driver: p.driver,
                capabilities,
                labels: p.labels.unwrap_or_default(),
                sandbox,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(agent_response(&state, agent))))
}

/// A cursor of the tenant-wide listing: the swarm being listed and the store's cursor inside it.
fn split_cursor(cursor: &str) -> ApiResult<(String, Option<String>)> {
    let bad = || {
        ApiError::bad_request(
            "cursor",
            "cursor is not valid for this listing; start again without a cursor",
        )
    };
    let (swarm, inner) = cursor.split_once('.').ok_or_else(bad)?;
    if swarm.is_empty() {
        return Err(bad());
    }
    Ok((
        swarm.to_string(),
        (!inner.is_empty()).then(|| inner.to_string()),
    ))
}

/// List agents, by swarm (oldest swarm first) and then by id.
#[utoipa::path(
    get, path = "/api/v1/agents", tag = "agents",
    params(AgentListParams),
    responses(
        (status = 200, body = AgentListResponse),
        (status = 400, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list_agents(
    State(state): State<AppState>,
    caller: Caller<op::SwarmRead>,
    Query(q): Query<AgentListParams>,
) -> ApiResult<Json<AgentListResponse>> {
    let tenant = caller.tenant_id();
    let limit = page_limit(q.limit)?;
    let wanted: Option<AgentState> = match &q.state {
        None => None,
        Some(s) => Some(s.parse().map_err(|e: String| {
            ApiError::bad_request(
                "state",
                format!(
                    "{e}: expected starting, idle, busy, draining, stopped, failed or quarantined"
                ),
            )
        })?),
    };
    let keep = |a: &Agent| wanted.is_none_or(|w| a.state == w);
    if let Some(swarm) = &q.swarm {
        load_swarm(&state, tenant, swarm).await?;
        let req = PageRequest {
            cursor: q.cursor,
            limit,
        };
        let page = state.store.list_agents(tenant, swarm, &req).await?;
        return Ok(Json(AgentListResponse {
            items: page
                .items
                .into_iter()
                .filter(keep)
                .map(|a| agent_response(&state, a))
                .collect(),
            next_cursor: page.next_cursor,
        }));
    }

    // Every swarm of the tenant, in creation order; the cursor names where the last page ended.
    let mut swarms = Vec::new();
    let mut req = PageRequest {
        cursor: None,
        limit: 1000,
    };
    loop {
        let page = state.store.list_swarms(tenant, &req).await?;
        swarms.extend(page.items.into_iter().map(|s| s.id));
        match page.next_cursor {
            Some(c) => req.cursor = Some(c),
            None => break,
        }
    }
    let (mut index, mut inner) = match &q.cursor {
        None => (0, None),
        Some(c) => {
            let (swarm, inner) = split_cursor(c)?;
            let i = swarms.iter().position(|s| *s == swarm).ok_or_else(|| {
                ApiError::bad_request("cursor", "the swarm this cursor points into is gone")
            })?;
            (i, inner)
        }
    };
    let mut items = Vec::new();
    let mut next_cursor = None;
    while index < swarms.len() {
        let room = limit - u32::try_from(items.len()).unwrap_or(limit);
        if room == 0 {
            next_cursor = Some(format!("{}.", swarms[index]));
            break;
        }
        let req = PageRequest {
            cursor: inner.take(),
            limit: room,
        };
        let page = state
            .store
            .list_agents(tenant, &swarms[index], &req)
            .await?;
        items.extend(page.items.into_iter().filter(keep));
        if let Some(c) = page.next_cursor {
            next_cursor = Some(format!("{}.{c}", swarms[index]));
            break;
        }
        index += 1;
    }
    Ok(Json(AgentListResponse {
        items: items
            .into_iter()
            .map(|a| agent_response(&state, a))
            .collect(),
        next_cursor,
    }))
}

/// An agent with its live state.
#[utoipa::path(
    get, path = "/api/v1/agents/{id}", tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    responses(
        (status = 200, body = AgentResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn get_agent(
    State(state): State<AppState>,
    caller: Caller<op::SwarmRead>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<AgentResponse>> {
    let agent = load_agent(&state, caller.tenant_id(), &id).await?;
    Ok(Json(agent_response(&state, agent)))
}

/// Stop an agent: it takes no new task and stops once its running task has finished.
#[utoipa::path(
    post, path = "/api/v1/agents/{id}/stop", tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    responses(
        (status = 200, body = AgentResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 409, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn stop_agent(
    State(state): State<AppState>,
    caller: Caller<op::AgentStop>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<AgentResponse>> {
    load_agent(&state, caller.tenant_id(), &id).await?;
    let agent = state
        .sched
        .stop_agent(&caller.ctx, caller.tenant_id(), &id)
        .await?;
    Ok(Json(agent_response(&state, agent)))
}
