//! `POST /api/v1/tenants` and `GET /api/v1/tenants`: platform administration (superadmin), and
//! a tenant's scheduler quota and sandbox overrides (`PUT` by the superadmin, `GET` also by the
//! tenant's admins), and its model providers (`/llm`: the tenant's admins, or the superadmin).

use super::{PageParams, time};
use crate::auth::{Caller, op};
use crate::error::{ApiError, ApiResult, ProblemResponse};
use crate::extract::{JsonBody, PathParams, Query, page_limit};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cflow_core::{Role, ValidationError, validate};
use cflow_store::{MAX_WEIGHT, PageRequest, Tenant, TenantQuota};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_tenant, list_tenants))
        .routes(routes!(set_quota, get_quota))
        .routes(routes!(set_sandbox, get_sandbox))
        .routes(routes!(set_llm, get_llm))
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

/// A tenant's share of the scheduler.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaParams {
    /// Fair-share weight, 1–1000 (default 1): a tenant of weight 2 gets twice the dispatches of
    /// a tenant of weight 1 when both have work waiting.
    pub weight: i64,
    /// The most tasks it may have running at once (at least 1); absent or null: no limit.
    #[serde(default)]
    pub max_running: Option<i64>,
}

impl From<TenantQuota> for QuotaParams {
    fn from(q: TenantQuota) -> Self {
        Self {
            weight: q.weight,
            max_running: q.max_running,
        }
    }
}

/// A tenant by id or name, reported as not found unless the caller may see it.
async fn visible_tenant<O>(
    state: &AppState,
    caller: &Caller<O>,
    tenant: &str,
) -> ApiResult<Tenant> {
    match state.store.get_tenant(tenant).await? {
        Some(t) if caller.is_superadmin() || t.id == caller.tenant_id() => Ok(t),
        _ => Err(ApiError::not_found(format!("tenant '{tenant}' not found"))),
    }
}

/// Set a tenant's scheduler weight and running limit.
#[utoipa::path(
    put, path = "/api/v1/tenants/{tenant}/quota", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant id or name")),
    request_body = QuotaParams,
    responses(
        (status = 200, body = QuotaParams),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn set_quota(
    State(state): State<AppState>,
    caller: Caller<op::TenantQuotaSet>,
    PathParams(tenant): PathParams<String>,
    JsonBody(p): JsonBody<QuotaParams>,
) -> ApiResult<Json<QuotaParams>> {
    let target = visible_tenant(&state, &caller, &tenant).await?;
    if !(1..=MAX_WEIGHT).contains(&p.weight) {
        return Err(ValidationError::new(
            "weight",
            format!("must be from 1 to {MAX_WEIGHT} (got {})", p.weight),
        )
        .into());
    }
    if let Some(n) = p.max_running
        && n < 1
    {
        return Err(ValidationError::new(
            "max_running",
            format!("must be at least 1, or null for no limit (got {n})"),
        )
        .into());
    }
    let quota = state
        .sched
        .set_quota(
            &caller.ctx,
            &target.id,
            TenantQuota {
                weight: p.weight,
                max_running: p.max_running,
            },
        )
        .await?;
    Ok(Json(quota.into()))
}

/// A tenant's scheduler weight and running limit (the superadmin, or an admin of the tenant).
#[utoipa::path(
    get, path = "/api/v1/tenants/{tenant}/quota", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant id or name")),
    responses(
        (status = 200, body = QuotaParams),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn get_quota(
    State(state): State<AppState>,
    caller: Caller<op::TenantQuotaRead>,
    PathParams(tenant): PathParams<String>,
) -> ApiResult<Json<QuotaParams>> {
    if !matches!(caller.key.role, Role::Superadmin | Role::Admin) {
        return Err(ApiError::forbidden(format!(
            "role '{}' may not read tenant quotas (superadmin or the tenant's admin)",
            caller.key.role
        )));
    }
    let target = visible_tenant(&state, &caller, &tenant).await?;
    let quota = state.store.tenant_quota(&target.id).await?;
    Ok(Json(quota.into()))
}

/// The keys a sandbox override may have.
const SANDBOX_KEYS: &[&str] = &["mode", "network", "allow_degraded", "limits", "egress"];
/// The limits a sandbox override may set (each a whole number above 0).
const SANDBOX_LIMITS: &[&str] = &[
    "cpu_seconds",
    "memory_bytes",
    "max_processes",
    "open_files",
    "file_size_bytes",
    "disk_bytes",
    "tmp_bytes",
];

/// Checks the shape of a tenant's sandbox overrides; the error names the field and what it
/// accepts.
fn check_sandbox(v: &serde_json::Value) -> Result<(), ValidationError> {
    let Some(obj) = v.as_object() else {
        return Err(ValidationError::new(
            "sandbox",
            format!(
                "must be a JSON object with keys among {}",
                SANDBOX_KEYS.join(", ")
            ),
        ));
    };
    for (key, value) in obj {
        let one_of = |allowed: &[&str]| -> Result<(), ValidationError> {
            match value.as_str() {
                Some(s) if allowed.contains(&s) => Ok(()),
                _ => Err(ValidationError::new(
                    key.as_str(),
                    format!("must be one of {} (got {value})", allowed.join(", ")),
                )),
            }
        };
        match key.as_str() {
            "mode" => one_of(&["enforce", "off"])?,
            "network" => one_of(&["off", "loopback", "full"])?,
            "allow_degraded" if value.is_boolean() => {}
            "allow_degraded" => {
                return Err(ValidationError::new(
                    "allow_degraded",
                    format!("must be true or false (got {value})"),
                ));
            }
            "egress" => {
                let entries = value.as_array().ok_or_else(|| {
                    ValidationError::new(
                        "egress",
                        "must be an array of \"host:port\" strings".to_string(),
                    )
                })?;
                for (i, e) in entries.iter().enumerate() {
                    let field = format!("egress[{i}]");
                    let e = e.as_str().ok_or_else(|| {
                        ValidationError::new(field.clone(), "must be a \"host:port\" string")
                    })?;
                    cflow_sandbox::policy::check_egress(e)
                        .map_err(|m| ValidationError::new(field, m))?;
                }
            }
            "limits" => {
                let Some(limits) = value.as_object() else {
                    return Err(ValidationError::new(
                        "limits",
                        format!(
                            "must be an object with keys among {}",
                            SANDBOX_LIMITS.join(", ")
                        ),
                    ));
                };
                for (name, n) in limits {
                    let field = format!("limits.{name}");
                    if !SANDBOX_LIMITS.contains(&name.as_str()) {
                        return Err(ValidationError::new(
                            field,
                            format!("is not a limit; use one of {}", SANDBOX_LIMITS.join(", ")),
                        ));
                    }
                    if n.as_u64().is_none_or(|n| n == 0) {
                        return Err(ValidationError::new(
                            field,
                            format!("must be a whole number greater than 0 (got {n})"),
                        ));
                    }
                }
            }
            other => {
                return Err(ValidationError::new(
                    other,
                    format!("is not a sandbox setting; use {}", SANDBOX_KEYS.join(", ")),
                ));
            }
        }
    }
    Ok(())
}

/// A tenant's sandbox overrides: `{"sandbox": {...}}`, or `{"sandbox": null}` for none.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SandboxResponse {
    #[schema(value_type = Option<Object>)]
    pub sandbox: Option<serde_json::Value>,
}

/// Set a tenant's sandbox overrides: an object with `mode` ("enforce" or "off"), `network`
/// ("off", "loopback" or "full"), `allow_degraded` (bool) and `limits` (cpu_seconds,
/// memory_bytes, max_processes, open_files, file_size_bytes, disk_bytes, tmp_bytes: whole
/// numbers above 0), each optional. `{}` clears them.
#[utoipa::path(
    put, path = "/api/v1/tenants/{tenant}/sandbox", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant id or name")),
    request_body(content = Object, description = "The overrides, stored as given"),
    responses(
        (status = 200, body = SandboxResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn set_sandbox(
    State(state): State<AppState>,
    caller: Caller<op::TenantSandboxSet>,
    PathParams(tenant): PathParams<String>,
    JsonBody(v): JsonBody<serde_json::Value>,
) -> ApiResult<Json<SandboxResponse>> {
    let target = visible_tenant(&state, &caller, &tenant).await?;
    check_sandbox(&v)?;
    let sandbox = v.as_object().is_some_and(|o| !o.is_empty()).then_some(v);
    state
        .sched
        .set_tenant_sandbox(&caller.ctx, &target.id, sandbox.clone())
        .await?;
    Ok(Json(SandboxResponse { sandbox }))
}

/// A tenant's sandbox overrides (the superadmin, or an admin of the tenant).
#[utoipa::path(
    get, path = "/api/v1/tenants/{tenant}/sandbox", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant id or name")),
    responses(
        (status = 200, body = SandboxResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn get_sandbox(
    State(state): State<AppState>,
    caller: Caller<op::TenantSandboxRead>,
    PathParams(tenant): PathParams<String>,
) -> ApiResult<Json<SandboxResponse>> {
    if !matches!(caller.key.role, Role::Superadmin | Role::Admin) {
        return Err(ApiError::forbidden(format!(
            "role '{}' may not read sandbox overrides (superadmin or the tenant's admin)",
            caller.key.role
        )));
    }
    let target = visible_tenant(&state, &caller, &tenant).await?;
    let sandbox = state.store.tenant_sandbox(&target.id).await?;
    Ok(Json(SandboxResponse { sandbox }))
}

/// A tenant's model providers: its own list, or `null` when it uses the operator's; and the
/// providers its model tasks use now (`effective`, keys shown by where they come from only).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LlmResponse {
    pub providers: Option<Vec<crate::llmconfig::ProviderConfig>>,
    /// `tenant` (its own list) or `operator` (`[server.llm]` of the server).
    pub source: String,
    pub effective: Vec<crate::llmconfig::ProviderConfig>,
}

async fn llm_response(state: &AppState, tenant_id: &str) -> ApiResult<LlmResponse> {
    let (effective, origin) = state.tenant_providers(tenant_id).await?;
    let own = origin == crate::llmconfig::Origin::Tenant;
    Ok(LlmResponse {
        providers: own.then(|| effective.clone()),
        source: if own { "tenant" } else { "operator" }.to_string(),
        effective,
    })
}

/// Set a tenant's model providers: `{"providers": [...]}`, in order of preference, each with
/// `name`, `kind` ("anthropic" or "openai"), optional `base_url`, `model`, `api_key_secret`
/// (the NAME of one of the tenant's secrets), `extra_headers` and `azure_api_version`. Raw keys
/// and `api_key_env` are refused. An empty list returns the tenant to the operator's providers.
#[utoipa::path(
    put, path = "/api/v1/tenants/{tenant}/llm", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant id or name")),
    request_body(content = Object, description = "{\"providers\": [...]}"),
    responses(
        (status = 200, body = LlmResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn set_llm(
    State(state): State<AppState>,
    caller: Caller<op::TenantLlmSet>,
    PathParams(tenant): PathParams<String>,
    JsonBody(v): JsonBody<serde_json::Value>,
) -> ApiResult<Json<LlmResponse>> {
    let target = visible_tenant(&state, &caller, &tenant).await?;
    let list = crate::llmconfig::parse_tenant_providers(&v)?;
    let stored = (!list.is_empty())
        .then(|| serde_json::to_value(&list))
        .transpose()
        .map_err(|e| ApiError::internal(format!("providers: {e}")))?;
    state
        .store
        .set_tenant_llm(&caller.ctx, &target.id, stored)
        .await?;
    Ok(Json(llm_response(&state, &target.id).await?))
}

/// A tenant's model providers (its admins, or the superadmin).
#[utoipa::path(
    get, path = "/api/v1/tenants/{tenant}/llm", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant id or name")),
    responses(
        (status = 200, body = LlmResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn get_llm(
    State(state): State<AppState>,
    caller: Caller<op::TenantLlmRead>,
    PathParams(tenant): PathParams<String>,
) -> ApiResult<Json<LlmResponse>> {
    let target = visible_tenant(&state, &caller, &tenant).await?;
    Ok(Json(llm_response(&state, &target.id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sandbox_overrides_are_checked_field_by_field() {
        let ok = json!({"mode": "enforce", "network": "loopback", "allow_degraded": false,
            "limits": {"cpu_seconds": 10, "memory_bytes": 1_000_000}});
        assert!(check_sandbox(&ok).is_ok());
        assert!(check_sandbox(&json!({})).is_ok());
        for (bad, field) in [
            (json!([]), "sandbox"),
            (json!({"mode": "strict"}), "mode"),
            (json!({"network": true}), "network"),
            (json!({"allow_degraded": "yes"}), "allow_degraded"),
            (json!({"limits": 5}), "limits"),
            (json!({"limits": {"cpu": 1}}), "limits.cpu"),
            (json!({"limits": {"cpu_seconds": 0}}), "limits.cpu_seconds"),
            (json!({"limits": {"cpu_seconds": -1}}), "limits.cpu_seconds"),
            (
                json!({"limits": {"cpu_seconds": 1.5}}),
                "limits.cpu_seconds",
            ),
            (json!({"extra": 1}), "extra"),
        ] {
            let e = check_sandbox(&bad).unwrap_err();
            assert_eq!(e.field, field, "{bad}");
        }
    }
}
