//! Swarms: create (`POST /api/v1/swarms`, with agent pools whose `min` agents are spawned at
//! once), list and read with live numbers from the scheduler, pause / resume / stop, and scale a
//! pool. Every change goes through the scheduler so that its in-memory state stays consistent;
//! reads come from the store.

use super::{PageParams, time};
use crate::auth::{Caller, op};
use crate::error::{ApiError, ApiResult, ProblemResponse};
use crate::extract::{JsonBody, PathParams, Query, page_limit};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cflow_core::balance::Strategy;
use cflow_core::topology::Topology;
use cflow_core::{ValidationError, agent_type, validate};
use cflow_store::{AgentPool, MAX_AGENTS_PER_SWARM, NewSwarm, PageRequest, Swarm, SwarmState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_swarm, list_swarms))
        .routes(routes!(get_swarm))
        .routes(routes!(pause_swarm))
        .routes(routes!(resume_swarm))
        .routes(routes!(stop_swarm))
        .routes(routes!(scale_swarm))
}

/// The drivers an agent may use today.
pub const DRIVERS: [&str; 4] = cflow_agents::DRIVER_KINDS;

/// Agents a swarm holds unless told otherwise.
const DEFAULT_MAX_AGENTS: i64 = 100;

pub(super) fn invalid(field: impl Into<String>, rule: impl Into<String>) -> ApiError {
    ApiError::validation(ValidationError::new(field, rule))
}

/// Checks a driver name against [`DRIVERS`].
pub(super) fn check_driver(field: &str, driver: &str) -> ApiResult<()> {
    if DRIVERS.contains(&driver) {
        return Ok(());
    }
    Err(invalid(
        field,
        format!(
            "unknown driver '{driver}': expected one of {}",
            DRIVERS.join(", ")
        ),
    ))
}

/// Checks capability names; `field` is the list's name.
pub(super) fn check_capabilities(field: &str, caps: &[String]) -> ApiResult<()> {
    for (i, c) in caps.iter().enumerate() {
        agent_type::validate_capability(&format!("{field}[{i}]"), c)?;
    }
    Ok(())
}

/// A pool of agents of one type, as sent: when scaling, absent fields keep their current values.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolParams {
    /// Agent type: coordinator, architect, coder, tester, reviewer, researcher or a custom name.
    #[serde(rename = "type")]
    pub agent_type: String,
    /// exec, noop, claude-code or llm (required when the pool is created).
    pub driver: Option<String>,
    /// Agents kept alive at all times (default 0).
    pub min: Option<i64>,
    /// Most agents the autoscaler may run (default max(min, 1)).
    pub max: Option<i64>,
    /// Idle agents kept ready beyond demand (default 0).
    pub prewarm: Option<i64>,
    /// Empty or absent: the type's default capabilities.
    pub capabilities: Option<Vec<String>>,
    pub labels: Option<BTreeMap<String, String>>,
    /// Replace an agent after it finished this many tasks.
    pub recycle_after_tasks: Option<i64>,
    /// Replace an agent after a failed attempt.
    pub recycle_on_failure: Option<bool>,
    /// `llm` pools only: replaces the type's default role prompt for this swarm's agents of the
    /// type (1 to 32 KiB). When scaling, `null` removes it and an absent field keeps it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub system_prompt: Option<Option<String>>,
}

/// Tells a field sent as `null` (`Some(None)`) from an absent one (`None`, by `default`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A pool as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolResponse {
    #[serde(rename = "type")]
    pub agent_type: String,
    pub driver: String,
    pub min: i64,
    pub max: i64,
    pub prewarm: i64,
    pub capabilities: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub recycle_after_tasks: Option<i64>,
    pub recycle_on_failure: bool,
    /// The swarm's override of the type's role prompt (`llm` pools), or null.
    pub system_prompt: Option<String>,
}

impl From<AgentPool> for PoolResponse {
    fn from(p: AgentPool) -> Self {
        Self {
            agent_type: p.agent_type,
            driver: p.driver,
            min: p.min,
            max: p.max,
            prewarm: p.prewarm,
            capabilities: p.capabilities,
            labels: p.labels,
            recycle_after_tasks: p.recycle_after_tasks,
            recycle_on_failure: p.recycle_on_failure,
            system_prompt: p.system_prompt,
        }
    }
}

/// Turns a pool as sent into a complete pool, taking absent fields from `current` (the pool as
/// it is, when scaling one that exists). `field` prefixes the names in errors (`agents[0].`).
fn resolve_pool(
    field: &str,
    p: PoolParams,
    current: Option<&AgentPool>,
    max_agents: i64,
) -> ApiResult<AgentPool> {
    let f = |name: &str| format!("{field}{name}");
    agent_type::validate_type(&f("type"), &p.agent_type)?;
    let driver = match (p.driver, current) {
        (Some(d), _) => d,
        (None, Some(c)) => c.driver.clone(),
        (None, None) => {
            return Err(invalid(
                f("driver"),
                format!("is required for a new pool ({})", DRIVERS.join(", ")),
            ));
        }
    };
    check_driver(&f("driver"), &driver)?;
    let min = p.min.or(current.map(|c| c.min)).unwrap_or(0);
    let max = p
        .max
        .or(current.map(|c| c.max.max(min)))
        .unwrap_or(min.max(1));
    let prewarm = p.prewarm.or(current.map(|c| c.prewarm)).unwrap_or(0);
    if min < 0 {
        return Err(invalid(f("min"), format!("must be at least 0 (got {min})")));
    }
    if max < 1 || max < min {
        return Err(invalid(
            f("max"),
            format!("must be at least 1 and at least min {min} (got {max})"),
        ));
    }
    if max > max_agents {
        return Err(invalid(
            f("max"),
            format!("must not exceed the swarm's max_agents {max_agents} (got {max})"),
        ));
    }
    if !(0..=max).contains(&prewarm) {
        return Err(invalid(
            f("prewarm"),
            format!("must be from 0 to max {max} (got {prewarm})"),
        ));
    }
    let capabilities = match p.capabilities {
        Some(c) => c,
        None => current.map(|c| c.capabilities.clone()).unwrap_or_default(),
    };
    check_capabilities(&f("capabilities"), &capabilities)?;
    let labels = match p.labels {
        Some(l) => l,
        None => current.map(|c| c.labels.clone()).unwrap_or_default(),
    };
    let recycle_after_tasks = p
        .recycle_after_tasks
        .or(current.and_then(|c| c.recycle_after_tasks));
    if let Some(n) = recycle_after_tasks
        && n < 1
    {
        return Err(invalid(
            f("recycle_after_tasks"),
            format!("must be at least 1 (got {n})"),
        ));
    }
    let system_prompt = match p.system_prompt {
        Some(set) => set,
        None => current.and_then(|c| c.system_prompt.clone()),
    };
    if let Some(prompt) = &system_prompt {
        cflow_agents::model::check_system_prompt(&driver, prompt)
            .map_err(|rule| invalid(f("system_prompt"), rule))?;
    }
    Ok(AgentPool {
        agent_type: p.agent_type,
        driver,
        capabilities,
        labels,
        min,
        max,
        prewarm,
        recycle_after_tasks,
        recycle_on_failure: p
            .recycle_on_failure
            .or(current.map(|c| c.recycle_on_failure))
            .unwrap_or(false),
        system_prompt,
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSwarmParams {
    /// 1–64 letters, digits, '.', '_' or '-'; unique in the tenant.
    pub name: String,
    /// mesh, hierarchical, ring or star.
    pub topology: String,
    /// weighted_round_robin (default) or least_loaded.
    pub strategy: Option<String>,
    /// 1–10000, default 100.
    pub max_agents: Option<i64>,
    pub project: Option<String>,
    /// Agent pools, at most one per type; `min` agents of each are spawned at once.
    pub agents: Option<Vec<PoolParams>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SwarmResponse {
    pub id: String,
    pub name: String,
    pub topology: String,
    pub strategy: String,
    /// active, paused or stopped.
    pub state: String,
    pub max_agents: i64,
    pub project: Option<String>,
    pub pools: Vec<PoolResponse>,
    /// Tasks of the swarm waiting for an agent.
    pub queued: u64,
    /// Tasks of the swarm running now.
    pub running: u64,
    /// Live agents by state (`idle`, `busy`, ...).
    pub agents_by_state: BTreeMap<String, u64>,
    pub created_at: String,
    pub updated_at: String,
}

/// A swarm with the scheduler's live numbers.
pub(super) fn swarm_response(state: &AppState, s: Swarm) -> SwarmResponse {
    let live = state.sched.swarm_live(&s.tenant_id, &s.id);
    SwarmResponse {
        id: s.id,
        name: s.name,
        topology: s.topology.to_string(),
        strategy: s.strategy.to_string(),
        state: s.state.to_string(),
        max_agents: s.max_agents,
        project: s.project,
        pools: s.pools.into_iter().map(Into::into).collect(),
        queued: live.queued,
        running: live.running,
        agents_by_state: live.agents_by_state,
        created_at: time(s.created_at),
        updated_at: time(s.updated_at),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SwarmListResponse {
    pub items: Vec<SwarmResponse>,
    pub next_cursor: Option<String>,
}

/// A swarm of the caller's tenant, or 404.
pub(super) async fn load_swarm(state: &AppState, tenant: &str, id: &str) -> ApiResult<Swarm> {
    state
        .store
        .get_swarm(tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("swarm '{id}' not found")))
}

/// Create a swarm and the `min` agents of each pool.
#[utoipa::path(
    post, path = "/api/v1/swarms", tag = "swarms",
    request_body = CreateSwarmParams,
    responses(
        (status = 201, body = SwarmResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 409, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn create_swarm(
    State(state): State<AppState>,
    caller: Caller<op::SwarmCreate>,
    JsonBody(p): JsonBody<CreateSwarmParams>,
) -> ApiResult<(StatusCode, Json<SwarmResponse>)> {
    validate::name("name", &p.name)?;
    let topology: Topology = p
        .topology
        .parse()
        .map_err(|e| invalid("topology", format!("{e}")))?;
    let strategy: Strategy = match &p.strategy {
        None => Strategy::default(),
        Some(s) => s.parse().map_err(|e| invalid("strategy", format!("{e}")))?,
    };
    let max_agents = p.max_agents.unwrap_or(DEFAULT_MAX_AGENTS);
    if !(1..=MAX_AGENTS_PER_SWARM).contains(&max_agents) {
        return Err(invalid(
            "max_agents",
            format!("must be from 1 to {MAX_AGENTS_PER_SWARM} (got {max_agents})"),
        ));
    }
    // A project-scoped key creates swarms of its project only.
    let project = match (p.project, &caller.key.project) {
        (Some(p), Some(own)) if &p != own => {
            return Err(ApiError::forbidden(format!(
                "this key is scoped to project '{own}' and may not create swarms of project '{p}'"
            )));
        }
        (Some(p), _) => Some(p),
        (None, own) => own.clone(),
    };
    if let Some(project) = &project {
        validate::name("project", project)?;
    }
    let mut pools = Vec::new();
    let mut types = HashSet::new();
    let mut min_total = 0;
    for (i, pool) in p.agents.unwrap_or_default().into_iter().enumerate() {
        let field = format!("agents[{i}].");
        if !types.insert(pool.agent_type.clone()) {
            return Err(invalid(
                format!("{field}type"),
                format!(
                    "type '{}' has two pools; give one per type",
                    pool.agent_type
                ),
            ));
        }
        let pool = resolve_pool(&field, pool, None, max_agents)?;
        min_total += pool.min;
        pools.push(pool);
    }
    if min_total > max_agents {
        return Err(invalid(
            "agents",
            format!("the pools' min agents add up to {min_total}, above max_agents {max_agents}"),
        ));
    }
    let swarm = state
        .sched
        .create_swarm(
            &caller.ctx,
            caller.tenant_id(),
            NewSwarm {
                name: p.name,
                topology,
                project,
                max_agents,
                strategy,
                pools,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(swarm_response(&state, swarm))))
}

/// List the caller's swarms, oldest first.
#[utoipa::path(
    get, path = "/api/v1/swarms", tag = "swarms",
    params(PageParams),
    responses(
        (status = 200, body = SwarmListResponse),
        (status = 400, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list_swarms(
    State(state): State<AppState>,
    caller: Caller<op::SwarmRead>,
    Query(q): Query<PageParams>,
) -> ApiResult<Json<SwarmListResponse>> {
    let page = PageRequest {
        cursor: q.cursor,
        limit: page_limit(q.limit)?,
    };
    let page = state.store.list_swarms(caller.tenant_id(), &page).await?;
    Ok(Json(SwarmListResponse {
        items: page
            .items
            .into_iter()
            .map(|s| swarm_response(&state, s))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

/// A swarm with its live numbers.
#[utoipa::path(
    get, path = "/api/v1/swarms/{id}", tag = "swarms",
    params(("id" = String, Path, description = "Swarm id")),
    responses(
        (status = 200, body = SwarmResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn get_swarm(
    State(state): State<AppState>,
    caller: Caller<op::SwarmRead>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<SwarmResponse>> {
    let swarm = load_swarm(&state, caller.tenant_id(), &id).await?;
    Ok(Json(swarm_response(&state, swarm)))
}

async fn set_state(
    state: &AppState,
    caller: &Caller<op::SwarmState>,
    id: &str,
    to: SwarmState,
) -> ApiResult<Json<SwarmResponse>> {
    let swarm = state
        .sched
        .set_swarm_state(&caller.ctx, caller.tenant_id(), id, to)
        .await?;
    Ok(Json(swarm_response(state, swarm)))
}

/// Pause a swarm: no new assignments; running tasks finish.
#[utoipa::path(
    post, path = "/api/v1/swarms/{id}/pause", tag = "swarms",
    params(("id" = String, Path, description = "Swarm id")),
    responses(
        (status = 200, body = SwarmResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 409, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn pause_swarm(
    State(state): State<AppState>,
    caller: Caller<op::SwarmState>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<SwarmResponse>> {
    set_state(&state, &caller, &id, SwarmState::Paused).await
}

/// Resume a paused swarm.
#[utoipa::path(
    post, path = "/api/v1/swarms/{id}/resume", tag = "swarms",
    params(("id" = String, Path, description = "Swarm id")),
    responses(
        (status = 200, body = SwarmResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 409, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn resume_swarm(
    State(state): State<AppState>,
    caller: Caller<op::SwarmState>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<SwarmResponse>> {
    set_state(&state, &caller, &id, SwarmState::Active).await
}

/// Stop a swarm for good: agents stop after their running task.
#[utoipa::path(
    post, path = "/api/v1/swarms/{id}/stop", tag = "swarms",
    params(("id" = String, Path, description = "Swarm id")),
    responses(
        (status = 200, body = SwarmResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 409, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn stop_swarm(
    State(state): State<AppState>,
    caller: Caller<op::SwarmState>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<SwarmResponse>> {
    set_state(&state, &caller, &id, SwarmState::Stopped).await
}

/// Create or update the pool of one agent type; the agent count is brought within its bounds at
/// once. Absent fields keep the pool's current values.
#[utoipa::path(
    post, path = "/api/v1/swarms/{id}/scale", tag = "swarms",
    params(("id" = String, Path, description = "Swarm id")),
    request_body = PoolParams,
    responses(
        (status = 200, body = SwarmResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 409, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn scale_swarm(
    State(state): State<AppState>,
    caller: Caller<op::SwarmScale>,
    PathParams(id): PathParams<String>,
    JsonBody(p): JsonBody<PoolParams>,
) -> ApiResult<Json<SwarmResponse>> {
    let swarm = load_swarm(&state, caller.tenant_id(), &id).await?;
    let current = swarm.pools.iter().find(|c| c.agent_type == p.agent_type);
    let pool = resolve_pool("", p, current, swarm.max_agents)?;
    let swarm = state
        .sched
        .scale(&caller.ctx, caller.tenant_id(), &id, pool)
        .await?;
    Ok(Json(swarm_response(&state, swarm)))
}
