//! Tenants' secrets: set (`PUT /api/v1/secrets/{name}`), list names (`GET /api/v1/secrets`)
//! and delete (`DELETE /api/v1/secrets/{name}`). Values go in and never come out: they are
//! sealed at rest, no answer or ledger entry holds one, and from the moment one is set it is
//! masked out of task output, logs, events and memory values of its tenant.

use super::time;
use crate::auth::{Caller, op};
use crate::error::{ApiError, ApiResult, ProblemResponse};
use crate::extract::{JsonBody, PathParams};
use crate::secrets::SecretsError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cflow_core::secrets::{check_name, check_value};
use cflow_store::SecretMeta;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(put_secret, delete_secret))
        .routes(routes!(list_secrets))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSecretParams {
    /// The value, at most 64 KiB. Never returned by any route.
    pub value: String,
}

// Not derived: the value must not reach a log through `{:?}`.
impl std::fmt::Debug for PutSecretParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PutSecretParams { value: <redacted> }")
    }
}

/// A secret as listed: its name and times, never its value.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretResponse {
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<SecretMeta> for SecretResponse {
    fn from(m: SecretMeta) -> Self {
        Self {
            name: m.name,
            created_at: time(m.created_at),
            updated_at: time(m.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecretListResponse {
    pub items: Vec<SecretResponse>,
}

/// Secrets belong to the whole tenant: a key scoped to one project may not touch them.
fn check_unscoped<O>(caller: &Caller<O>) -> ApiResult<()> {
    match &caller.key.project {
        Some(p) => Err(ApiError::forbidden(format!(
            "this key is scoped to project '{p}' and may not manage the tenant's secrets"
        ))),
        None => Ok(()),
    }
}

fn api_error(e: SecretsError) -> ApiError {
    match e {
        SecretsError::Store(e) => e.into(),
        other => ApiError::internal(other.to_string()),
    }
}

/// Set a secret of the caller's tenant (created or replaced); the answer holds no value.
#[utoipa::path(
    put, path = "/api/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, description = "1–128 of A-Z a-z 0-9 _ . -")),
    request_body = PutSecretParams,
    responses(
        (status = 200, body = SecretResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn put_secret(
    State(state): State<AppState>,
    caller: Caller<op::SecretPut>,
    PathParams(name): PathParams<String>,
    JsonBody(p): JsonBody<PutSecretParams>,
) -> ApiResult<Json<SecretResponse>> {
    check_unscoped(&caller)?;
    check_name(&name)?;
    check_value(&p.value)?;
    if p.value.is_empty() {
        return Err(ApiError::validation(cflow_core::ValidationError::new(
            "value",
            "must not be empty (delete the secret instead)",
        )));
    }
    let meta = state
        .secrets
        .put(&caller.ctx, caller.tenant_id(), &name, &p.value)
        .await
        .map_err(api_error)?;
    Ok(Json(meta.into()))
}

/// List the secrets of the caller's tenant by name: names and times, never values.
#[utoipa::path(
    get, path = "/api/v1/secrets", tag = "secrets",
    responses(
        (status = 200, body = SecretListResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list_secrets(
    State(state): State<AppState>,
    caller: Caller<op::SecretList>,
) -> ApiResult<Json<SecretListResponse>> {
    check_unscoped(&caller)?;
    let items = state.store.secret_list(caller.tenant_id()).await?;
    Ok(Json(SecretListResponse {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

/// Delete a secret of the caller's tenant; its value is no longer masked from then on.
#[utoipa::path(
    delete, path = "/api/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, description = "The secret's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn delete_secret(
    State(state): State<AppState>,
    caller: Caller<op::SecretDelete>,
    PathParams(name): PathParams<String>,
) -> ApiResult<StatusCode> {
    check_unscoped(&caller)?;
    check_name(&name)?;
    state
        .secrets
        .delete(&caller.ctx, caller.tenant_id(), &name)
        .await
        .map_err(api_error)?;
    Ok(StatusCode::NO_CONTENT)
}
