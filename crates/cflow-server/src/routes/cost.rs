//! Cost and budgets: `GET /api/v1/cost` (model-call rollups of the caller's tenant, or of any
//! tenant for a superadmin), and the tenant's spend budgets (`GET`/`PUT /api/v1/budgets`,
//! `DELETE /api/v1/budgets/{id}`). Amounts go out in dollars and in exact micro-dollars.

use super::time;
use crate::auth::{Caller, op};
use crate::error::{ApiError, ApiResult, ProblemResponse};
use crate::extract::{JsonBody, PathParams, Query};
use crate::state::{AppState, now_ms};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cflow_core::budget::Period;
use cflow_core::pricing::{check_usd, micros_to_usd};
use cflow_core::timefmt;
use cflow_store::{Budget, CostBy, CostRow, NewBudget};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(cost_report))
        .routes(routes!(list_budgets, set_budget))
        .routes(routes!(delete_budget))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CostParams {
    /// tenant, project, swarm, agent, task or model (default tenant).
    pub by: Option<String>,
    /// Calls at or after this time: RFC 3339, or a date (`2026-11-01`, midnight UTC).
    pub since: Option<String>,
    /// Calls before this time: RFC 3339, or a date (midnight UTC).
    pub until: Option<String>,
    /// Superadmin only: the tenant (id or name) to report on, instead of the key's own.
    pub tenant: Option<String>,
}

/// The totals of a group of model calls.
#[derive(Debug, Serialize, ToSchema)]
pub struct CostRowResponse {
    /// The tenant, project, swarm, agent or task id, or the model; null for calls that named
    /// none.
    pub key: Option<String>,
    pub calls: u64,
    /// Calls of models without a price: they count as $0 and are listed here so that a report
    /// never looks complete when it is not.
    pub unpriced_calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_usd: f64,
    /// The exact cost in micro-dollars.
    pub cost_micros: u64,
}

impl From<CostRow> for CostRowResponse {
    fn from(r: CostRow) -> Self {
        Self {
            key: r.key,
            calls: r.calls,
            unpriced_calls: r.unpriced_calls,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cache_read_tokens: r.cache_read_tokens,
            cache_write_tokens: r.cache_write_tokens,
            cost_usd: micros_to_usd(r.cost_micros),
            cost_micros: r.cost_micros,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CostReportResponse {
    pub tenant_id: String,
    pub by: String,
    pub since: Option<String>,
    pub until: Option<String>,
    /// Most expensive first.
    pub items: Vec<CostRowResponse>,
    /// Every call of the report (its key is null).
    pub total: CostRowResponse,
}

/// A time parameter: RFC 3339, or a date meaning its midnight UTC.
fn parse_time(field: &str, s: &str) -> ApiResult<i64> {
    timefmt::parse_rfc3339(s)
        .or_else(|| timefmt::parse_rfc3339(&format!("{s}T00:00:00Z")))
        .ok_or_else(|| {
            ApiError::bad_request(
                field,
                format!("{field} must be an RFC 3339 time or a date, for example 2026-11-01"),
            )
        })
}

/// Model calls of a tenant grouped by tenant, project, swarm, agent, task or model.
#[utoipa::path(
    get, path = "/api/v1/cost", tag = "cost",
    params(CostParams),
    responses(
        (status = 200, body = CostReportResponse),
        (status = 400, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn cost_report(
    State(state): State<AppState>,
    caller: Caller<op::CostRead>,
    Query(q): Query<CostParams>,
) -> ApiResult<Json<CostReportResponse>> {
    let by: CostBy = match &q.by {
        None => CostBy::Tenant,
        Some(b) => b
            .parse()
            .map_err(|e: cflow_core::ValidationError| ApiError::bad_request("by", e.rule))?,
    };
    let since = q
        .since
        .as_deref()
        .map(|s| parse_time("since", s))
        .transpose()?;
    let until = q
        .until
        .as_deref()
        .map(|s| parse_time("until", s))
        .transpose()?;
    if let (Some(s), Some(u)) = (since, until)
        && u <= s
    {
        return Err(ApiError::bad_request("until", "until must be after since"));
    }
    let tenant_id = match &q.tenant {
        None => caller.tenant_id().to_string(),
        Some(_) if !caller.is_superadmin() => {
            return Err(ApiError::forbidden(
                "only a superadmin may report on another tenant (parameter tenant)",
            ));
        }
        Some(t) => {
            state
                .store
                .get_tenant(t)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("tenant '{t}' not found")))?
                .id
        }
    };
    let rows = state
        .store
        .cost_report(&tenant_id, by, since, until)
        .await?;
    let mut total = CostRow::default();
    for r in &rows {
        total.calls += r.calls;
        total.unpriced_calls += r.unpriced_calls;
        total.input_tokens += r.input_tokens;
        total.output_tokens += r.output_tokens;
        total.cache_read_tokens += r.cache_read_tokens;
        total.cache_write_tokens += r.cache_write_tokens;
        total.cost_micros += r.cost_micros;
    }
    Ok(Json(CostReportResponse {
        tenant_id,
        by: by.as_str().to_string(),
        since: since.map(time),
        until: until.map(time),
        items: rows.into_iter().map(Into::into).collect(),
        total: total.into(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BudgetResponse {
    pub id: String,
    /// Null for the tenant-wide budget.
    pub project: Option<String>,
    /// day (UTC), week (from Monday 00:00 UTC) or month (calendar, UTC).
    pub period: String,
    pub limit_usd: f64,
    pub limit_micros: u64,
    /// Spent in the current period.
    pub spent_usd: f64,
    pub spent_micros: u64,
    /// The current period's start and end; the spend starts again from zero at `resets_at`.
    pub period_start: String,
    pub resets_at: String,
    pub created_at: String,
    pub updated_at: String,
}

async fn budget_response(state: &AppState, b: Budget, now: i64) -> ApiResult<BudgetResponse> {
    let (start, end) = b.period.bounds(now);
    let spent = state
        .store
        .spent(&b.tenant_id, b.project.as_deref(), start, end)
        .await?;
    Ok(BudgetResponse {
        id: b.id,
        project: b.project,
        period: b.period.as_str().to_string(),
        limit_usd: micros_to_usd(b.limit_micros),
        limit_micros: b.limit_micros,
        spent_usd: micros_to_usd(spent),
        spent_micros: spent,
        period_start: time(start),
        resets_at: time(end),
        created_at: time(b.created_at),
        updated_at: time(b.updated_at),
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BudgetListResponse {
    pub items: Vec<BudgetResponse>,
}

/// The tenant's budgets with the spend of their current period.
#[utoipa::path(
    get, path = "/api/v1/budgets", tag = "cost",
    responses(
        (status = 200, body = BudgetListResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list_budgets(
    State(state): State<AppState>,
    caller: Caller<op::BudgetRead>,
) -> ApiResult<Json<BudgetListResponse>> {
    let now = now_ms();
    let mut items = Vec::new();
    for b in state.store.list_budgets(caller.tenant_id()).await? {
        items.push(budget_response(&state, b, now).await?);
    }
    Ok(Json(BudgetListResponse { items }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetParams {
    /// A project name; absent for the tenant-wide budget.
    pub project: Option<String>,
    /// day, week or month.
    pub period: String,
    /// Dollars per period; 0 refuses every model call.
    pub limit_usd: f64,
}

/// Set the budget of the tenant or of one of its projects for a period (replacing the limit of
/// an existing one of the same scope and period).
#[utoipa::path(
    put, path = "/api/v1/budgets", tag = "cost",
    request_body = BudgetParams,
    responses(
        (status = 200, body = BudgetResponse),
        (status = 400, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn set_budget(
    State(state): State<AppState>,
    caller: Caller<op::BudgetSet>,
    JsonBody(p): JsonBody<BudgetParams>,
) -> ApiResult<Json<BudgetResponse>> {
    let period: Period = p
        .period
        .parse()
        .map_err(|e: cflow_core::budget::UnknownPeriod| {
            ApiError::validation(cflow_core::ValidationError::new("period", e.to_string()))
        })?;
    let limit_micros = check_usd("limit_usd", p.limit_usd)?;
    let new = NewBudget {
        project: p.project,
        period,
        limit_micros,
    };
    let b = state
        .store
        .set_budget(&caller.ctx, caller.tenant_id(), new)
        .await?;
    Ok(Json(budget_response(&state, b, now_ms()).await?))
}

/// Delete a budget of the tenant.
#[utoipa::path(
    delete, path = "/api/v1/budgets/{id}", tag = "cost",
    params(("id" = String, Path, description = "Budget id")),
    responses(
        (status = 204),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn delete_budget(
    State(state): State<AppState>,
    caller: Caller<op::BudgetDelete>,
    PathParams(id): PathParams<String>,
) -> ApiResult<StatusCode> {
    state
        .store
        .delete_budget(&caller.ctx, caller.tenant_id(), &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
