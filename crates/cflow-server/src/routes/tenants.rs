//! `POST /api/v1/tenants` and `GET /api/v1/tenants`: platform administration (superadmin).

use super::{PageParams, time};
use crate::auth::{Caller, op};
use crate::error::{ApiResult, ProblemResponse};
use crate::extract::{JsonBody, Query, page_limit};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cflow_core::validate;
use cflow_store::{PageRequest, Tenant};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_tenant, list_tenants))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantParams {
    /// 1–64 letters, digits, '.', '_' or '-', starting with a letter or digit.
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantResponse {
    pub id: String,
    pub name: String,
    pub created_at: String,
}

impl From<Tenant> for TenantResponse {
    fn from(t: Tenant) -> Self {
        Self {
            id: t.id,
            name: t.name,
            created_at: time(t.created_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantListResponse {
    pub items: Vec<TenantResponse>,
    pub next_cursor: Option<String>,
}

/// Create a tenant.
#[utoipa::path(
    post, path = "/api/v1/tenants", tag = "tenants",
    request_body = CreateTenantParams,
    responses(
        (status = 201, body = TenantResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 409, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn create_tenant(
    State(state): State<AppState>,
    caller: Caller<op::TenantCreate>,
    JsonBody(p): JsonBody<CreateTenantParams>,
) -> ApiResult<(StatusCode, Json<TenantResponse>)> {
    validate::name("name", &p.name)?;
    let t = state.store.create_tenant(&caller.ctx, &p.name).await?;
    Ok((StatusCode::CREATED, Json(t.into())))
}

/// List every tenant, ordered by name.
#[utoipa::path(
    get, path = "/api/v1/tenants", tag = "tenants",
    params(PageParams),
    responses(
        (status = 200, body = TenantListResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list_tenants(
    State(state): State<AppState>,
    _caller: Caller<op::TenantList>,
    Query(q): Query<PageParams>,
) -> ApiResult<Json<TenantListResponse>> {
    let page = PageRequest {
        cursor: q.cursor,
        limit: page_limit(q.limit)?,
    };
    let page = state.store.list_tenants(&page).await?;
    Ok(Json(TenantListResponse {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}
