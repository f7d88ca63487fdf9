//! API keys: create (`POST /api/v1/tenants/{tenant}/keys`), list (`GET /api/v1/keys`) and
//! revoke (`DELETE /api/v1/keys/{id}`). Tokens appear only in the answer to a creation.

use super::{PageParams, opt_time, time};
use crate::auth::{Caller, op};
use crate::error::{ApiError, ApiResult, ProblemResponse};
use crate::extract::{JsonBody, PathParams, Query, page_limit};
use crate::state::{AppState, now_ms};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cflow_core::{Role, ValidationError, apikey, timefmt, validate};
use cflow_store::{ApiKey, CreatedKey, NewKey, PageRequest};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_key))
        .routes(routes!(list_keys))
        .routes(routes!(revoke_key))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyParams {
    /// Names the key and its service principal.
    pub name: String,
    /// admin, operator, developer, viewer, auditor (superadmin only from a superadmin).
    pub role: String,
    /// Restricts the key to this project (memory namespaces `<project>` and `<project>/…`).
    pub project: Option<String>,
    /// RFC 3339 time in the future after which the key stops working.
    pub expires_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKeyResponse {
    pub id: String,
    /// The bearer token: shown here once and stored nowhere.
    pub token: String,
    pub name: String,
    pub role: String,
    pub project: Option<String>,
    pub tenant_id: String,
    pub principal_id: String,
    pub created_at: String,
    pub expires_at: Option<String>,
}

impl From<CreatedKey> for CreatedKeyResponse {
    fn from(c: CreatedKey) -> Self {
        let k = c.key;
        Self {
            id: k.id,
            token: c.token,
            name: k.name,
            role: k.role.to_string(),
            project: k.project,
            tenant_id: k.tenant_id,
            principal_id: k.principal_id,
            created_at: time(k.created_at),
            expires_at: opt_time(k.expires_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyResponse {
    pub id: String,
    pub name: String,
    pub role: String,
    pub project: Option<String>,
    pub tenant_id: String,
    pub principal_id: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub last_used_at: Option<String>,
}

impl From<ApiKey> for KeyResponse {
    fn from(k: ApiKey) -> Self {
        Self {
            id: k.id,
            name: k.name,
            role: k.role.to_string(),
            project: k.project,
            tenant_id: k.tenant_id,
            principal_id: k.principal_id,
            created_at: time(k.created_at),
            expires_at: opt_time(k.expires_at),
            revoked_at: opt_time(k.revoked_at),
            last_used_at: opt_time(k.last_used_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyListResponse {
    pub items: Vec<KeyResponse>,
    pub next_cursor: Option<String>,
}

fn invalid(field: &str, rule: impl Into<String>) -> ApiError {
    ApiError::validation(ValidationError::new(field, rule))
}

/// Create an API key in a tenant (an admin in its own tenant, a superadmin in any).
#[utoipa::path(
    post, path = "/api/v1/tenants/{tenant}/keys", tag = "keys",
    params(("tenant" = String, Path, description = "Tenant id or name")),
    request_body = CreateKeyParams,
    responses(
        (status = 201, body = CreatedKeyResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn create_key(
    State(state): State<AppState>,
    caller: Caller<op::KeyCreate>,
    PathParams(tenant): PathParams<String>,
    JsonBody(p): JsonBody<CreateKeyParams>,
) -> ApiResult<(StatusCode, Json<CreatedKeyResponse>)> {
    if let Some(project) = &caller.key.project {
        return Err(ApiError::forbidden(format!(
            "this key is scoped to project '{project}' and may not create keys"
        )));
    }
    // Another tenant is reported exactly like a tenant that does not exist.
    let target = match state.store.get_tenant(&tenant).await? {
        Some(t) if caller.is_superadmin() || t.id == caller.tenant_id() => t,
        _ => return Err(ApiError::not_found(format!("tenant '{tenant}' not found"))),
    };
    validate::name("name", &p.name)?;
    let role: Role = p
        .role
        .parse()
        .map_err(|e| invalid("role", format!("{e}")))?;
    if role == Role::Superadmin && !caller.is_superadmin() {
        return Err(ApiError::forbidden(
            "only a superadmin may create a superadmin key",
        ));
    }
    if let Some(project) = &p.project {
        validate::name("project", project)?;
    }
    let expires_at = match &p.expires_at {
        None => None,
        Some(s) => {
            let at = timefmt::parse_rfc3339(s).ok_or_else(|| {
                invalid(
                    "expires_at",
                    "must be an RFC 3339 time, for example 2030-01-31T12:00:00Z",
                )
            })?;
            if at <= now_ms() {
                return Err(invalid("expires_at", "must be in the future"));
            }
            Some(at)
        }
    };
    let created = state
        .store
        .create_key(
            &caller.ctx,
            &target.id,
            NewKey {
                name: p.name,
                role,
                project: p.project,
                expires_at,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

/// List the keys of the caller's tenant, oldest first (tokens are never listed).
#[utoipa::path(
    get, path = "/api/v1/keys", tag = "keys",
    params(PageParams),
    responses(
        (status = 200, body = KeyListResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list_keys(
    State(state): State<AppState>,
    caller: Caller<op::KeyList>,
    Query(q): Query<PageParams>,
) -> ApiResult<Json<KeyListResponse>> {
    let page = PageRequest {
        cursor: q.cursor,
        limit: page_limit(q.limit)?,
    };
    let page = state.store.list_keys(caller.tenant_id(), &page).await?;
    Ok(Json(KeyListResponse {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Revoke a key of the caller's tenant; it stops working at once.
#[utoipa::path(
    delete, path = "/api/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id: the 16 hex digits after 'cflow_'")),
    responses(
        (status = 200, body = KeyResponse),
        (status = 400, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller<op::KeyRevoke>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<KeyResponse>> {
    let well_formed = id.len() == apikey::ID_HEX_LEN
        && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !well_formed {
        return Err(ApiError::bad_request(
            "id",
            format!(
                "'{id}' is not a key id: expected {} lowercase hex digits",
                apikey::ID_HEX_LEN
            ),
        ));
    }
    let key = state
        .store
        .revoke_key(&caller.ctx, caller.tenant_id(), &id)
        .await?;
    // Refused from the next request on, not when the cached authentication runs out.
    state.auth_cache.forget(&id);
    Ok(Json(key.into()))
}
