//! `GET /api/v1/whoami`: the caller's key, principal, tenant and role.

use crate::auth::{Caller, op};
use crate::error::{ApiResult, ProblemResponse};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(whoami))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WhoamiResponse {
    pub key_id: String,
    pub key_name: String,
    pub principal_id: String,
    pub tenant_id: String,
    pub tenant_name: String,
    pub role: String,
    /// Set when the key's role applies only inside this project.
    pub project: Option<String>,
}

/// Who the caller is.
#[utoipa::path(
    get, path = "/api/v1/whoami", tag = "keys",
    responses(
        (status = 200, body = WhoamiResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn whoami(
    State(state): State<AppState>,
    caller: Caller<op::Whoami>,
) -> ApiResult<Json<WhoamiResponse>> {
    let tenant = state.store.get_tenant(caller.tenant_id()).await?;
    let key = caller.key;
    Ok(Json(WhoamiResponse {
        tenant_name: tenant.map_or_else(|| key.tenant_id.clone(), |t| t.name),
        key_id: key.id,
        key_name: key.name,
        principal_id: key.principal_id,
        tenant_id: key.tenant_id,
        role: key.role.to_string(),
        project: key.project,
    }))
}
