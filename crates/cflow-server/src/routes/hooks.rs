//! Lifecycle hooks: create (`POST /api/v1/hooks`), list, show, delete, test (a synthetic
//! `hook.test` event sent at once), their deliveries (`GET /api/v1/hooks/{id}/deliveries`) and
//! the re-queue of a dead one (`POST /api/v1/hooks/deliveries/{id}/retry`). Admins manage
//! hooks; every role that may read the tenant's tasks may list them.

use super::time;
use crate::auth::{Caller, op};
use crate::error::{ApiError, ApiResult, ProblemResponse};
use crate::extract::{JsonBody, PathParams, Query, page_limit};
use crate::hooks::send;
use crate::hooks::spec::{self, OnError, Settings};
use crate::state::{AppState, now_ms};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cflow_core::ValidationError;
use cflow_store::{Hook, HookDelivery, NewDelivery, NewHook, PageRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_hook, list_hooks))
        .routes(routes!(get_hook, update_hook, delete_hook))
        .routes(routes!(test_hook))
        .routes(routes!(list_deliveries))
        .routes(routes!(retry_delivery))
}

/// A new hook: its events, scope and exactly one handler (`command`, or `url` with `secret`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateHookParams {
    /// Unique in the tenant: 1–128 of A-Z a-z 0-9 _ . -
    pub name: String,
    /// Event names (`task.completed`), family wildcards (`swarm.*`), `*`, or `pre-task`.
    pub events: Vec<String>,
    /// `tenant` (default), `project:NAME` or `swarm:ID`.
    pub scope: Option<String>,
    /// A command line run with `/bin/sh -c` in the sandbox, the event JSON on its stdin.
    pub command: Option<String>,
    /// A webhook: an http:// or https:// URL the event JSON is POSTed to.
    pub url: Option<String>,
    /// The name of the tenant secret whose value keys the webhook's HMAC-SHA256 signature.
    pub secret: Option<String>,
    /// 1–300 seconds, default 10.
    pub timeout_seconds: Option<u64>,
    /// Sends per delivery before it goes to the dead-letter list: 1–50, default 8.
    pub max_attempts: Option<i64>,
    /// What a failed pre-task hook means: `allow` (default) or `deny`.
    pub on_error: Option<OnError>,
    /// Default true.
    pub enabled: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HookResponse {
    pub id: String,
    pub name: String,
    /// `tenant`, `project` or `swarm`.
    pub scope: String,
    pub scope_id: Option<String>,
    pub events: Vec<String>,
    /// `command` or `webhook`.
    pub kind: String,
    pub command: Option<String>,
    pub url: Option<String>,
    /// The signing secret's name (never its value).
    pub secret: Option<String>,
    pub timeout_seconds: u64,
    pub max_attempts: i64,
    pub on_error: OnError,
    pub enabled: bool,
    pub created_at: String,
    pub created_by: Option<String>,
}

impl From<Hook> for HookResponse {
    fn from(h: Hook) -> Self {
        let s = Settings::of(&h.config).unwrap_or(Settings {
            command: None,
            url: None,
            secret: None,
            timeout_seconds: spec::DEFAULT_TIMEOUT_SECS,
            max_attempts: spec::DEFAULT_MAX_ATTEMPTS,
            on_error: OnError::Allow,
        });
        HookResponse {
            id: h.id,
            name: h.name,
            scope: h.scope,
            scope_id: h.scope_id,
            events: h.events,
            kind: h.kind,
            command: s.command,
            url: s.url,
            secret: s.secret,
            timeout_seconds: s.timeout_seconds,
            max_attempts: s.max_attempts,
            on_error: s.on_error,
            enabled: h.enabled,
            created_at: time(h.created_at),
            created_by: h.created_by,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HookListResponse {
    pub items: Vec<HookResponse>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryResponse {
    /// Stable across retries: the `X-Cflow-Delivery` header.
    pub id: String,
    pub hook_id: String,
    pub event_id: String,
    pub event_type: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: Option<String>,
    /// The last HTTP status (webhook) or exit code (command).
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub delivered_at: Option<String>,
    /// What was (or will be) sent.
    pub payload: Value,
}

impl From<HookDelivery> for DeliveryResponse {
    fn from(d: HookDelivery) -> Self {
        DeliveryResponse {
            next_attempt_at: (d.state == "pending").then(|| time(d.next_attempt_at)),
            id: d.id,
            hook_id: d.hook_id,
            event_id: d.event_id,
            event_type: d.event_type,
            state: d.state,
            attempts: d.attempts,
            last_status: d.last_status,
            last_error: d.last_error,
            created_at: time(d.created_at),
            delivered_at: d.delivered_at.map(time),
            payload: d.payload,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryListResponse {
    pub items: Vec<DeliveryResponse>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryListParams {
    /// `pending`, `delivered` or `dead`.
    pub state: Option<String>,
    pub cursor: Option<String>,
    /// 1–1000, default 100.
    pub limit: Option<u32>,
}

/// What a test send did.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestResponse {
    pub ok: bool,
    /// The HTTP status (webhook) or exit code (command).
    pub status: Option<i64>,
    pub duration_ms: u64,
    pub error: Option<String>,
    /// The recorded delivery (event type `hook.test`).
    pub delivery_id: Option<String>,
}

/// Hooks belong to the whole tenant: a key scoped to one project may not manage them.
fn check_unscoped<O>(caller: &Caller<O>) -> ApiResult<()> {
    match &caller.key.project {
        Some(p) => Err(ApiError::forbidden(format!(
            "this key is scoped to project '{p}' and may not manage the tenant's hooks"
        ))),
        None => Ok(()),
    }
}

fn invalid(field: &str, rule: impl Into<String>) -> ApiError {
    ApiError::validation(ValidationError::new(field, rule))
}

/// Checks a new hook and turns it into what the store takes.
async fn new_hook(state: &AppState, tenant: &str, p: CreateHookParams) -> ApiResult<NewHook> {
    cflow_core::validate::name("name", &p.name)?;
    if p.events.is_empty() || p.events.len() > 32 {
        return Err(invalid(
            "events",
            "give 1 to 32 event patterns, such as [\"task.completed\"]",
        ));
    }
    for (i, e) in p.events.iter().enumerate() {
        spec::check_pattern(e).map_err(|m| invalid(&format!("events[{i}]"), m))?;
    }
    let (scope, scope_id) = spec::parse_scope(p.scope.as_deref().unwrap_or("tenant"))?;
    match (scope.as_str(), &scope_id) {
        ("swarm", Some(id)) if state.store.get_swarm(tenant, id).await?.is_none() => {
            return Err(invalid(
                "scope",
                format!("no swarm '{id}' in this tenant: give the id of one of its swarms"),
            ));
        }
        ("project", Some(name)) if !state.store.project_known(tenant, name).await? => {
            return Err(invalid(
                "scope",
                format!(
                    "no project '{name}' in this tenant: give the project of one of its swarms \
                     or keys"
                ),
            ));
        }
        _ => {}
    }
    let timeout_seconds = p.timeout_seconds.unwrap_or(spec::DEFAULT_TIMEOUT_SECS);
    if !(1..=spec::MAX_TIMEOUT_SECS).contains(&timeout_seconds) {
        return Err(invalid(
            "timeout_seconds",
            format!(
                "must be 1 to {} seconds (got {timeout_seconds})",
                spec::MAX_TIMEOUT_SECS
            ),
        ));
    }
    let max_attempts = p.max_attempts.unwrap_or(spec::DEFAULT_MAX_ATTEMPTS);
    if !(1..=spec::MAX_ATTEMPTS).contains(&max_attempts) {
        return Err(invalid(
            "max_attempts",
            format!("must be 1 to {} (got {max_attempts})", spec::MAX_ATTEMPTS),
        ));
    }
    let kind = match (&p.command, &p.url) {
        (Some(cmd), None) => {
            if cmd.trim().is_empty() || cmd.len() > 16 * 1024 {
                return Err(invalid(
                    "command",
                    "give a command line of 1 to 16384 bytes",
                ));
            }
            if p.secret.is_some() {
                return Err(invalid(
                    "secret",
                    "a command hook takes no signing secret; remove 'secret'",
                ));
            }
            "command"
        }
        (None, Some(url)) => {
            spec::check_url(url)?;
            let parsed = reqwest::Url::parse(url).map_err(|e| invalid("url", e.to_string()))?;
            state
                .hooks
                .destinations()
                .check_url(&parsed)
                .map_err(|why| invalid("url", why))?;
            let Some(secret) = &p.secret else {
                return Err(invalid(
                    "secret",
                    "a webhook needs 'secret': the name of a tenant secret whose value signs \
                     each request (create one with 'cflow secret set NAME')",
                ));
            };
            cflow_core::secrets::check_name(secret)?;
            let names = state.store.secret_list(tenant).await?;
            if !names.iter().any(|m| m.name == *secret) {
                return Err(invalid(
                    "secret",
                    format!(
                        "the tenant has no secret '{secret}': create it first with \
                         'cflow secret set {secret}'"
                    ),
                ));
            }
            "webhook"
        }
        (Some(_), Some(_)) => {
            return Err(invalid(
                "command",
                "give either 'command' or 'url', not both",
            ));
        }
        (None, None) => {
            return Err(invalid(
                "command",
                "a hook needs a handler: 'command' (a command line) or 'url' with 'secret' (a \
                 webhook)",
            ));
        }
    };
    let settings = Settings {
        command: p.command,
        url: p.url,
        secret: p.secret,
        timeout_seconds,
        max_attempts,
        on_error: p.on_error.unwrap_or_default(),
    };
    Ok(NewHook {
        name: p.name,
        scope,
        scope_id,
        events: p.events,
        kind: kind.to_string(),
        config: serde_json::to_value(&settings).unwrap_or(Value::Null),
        enabled: p.enabled.unwrap_or(true),
    })
}

/// Create a hook of the caller's tenant.
#[utoipa::path(
    post, path = "/api/v1/hooks", tag = "hooks",
    request_body = CreateHookParams,
    responses(
        (status = 201, body = HookResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 409, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn create_hook(
    State(state): State<AppState>,
    caller: Caller<op::HookCreate>,
    JsonBody(p): JsonBody<CreateHookParams>,
) -> ApiResult<(StatusCode, Json<HookResponse>)> {
    check_unscoped(&caller)?;
    let tenant = caller.tenant_id();
    let new = new_hook(&state, tenant, p).await?;
    let hook = state.store.hook_create(&caller.ctx, tenant, new).await?;
    state.hooks.invalidate(tenant);
    Ok((StatusCode::CREATED, Json(hook.into())))
}

/// List the caller's tenant's hooks, by name.
#[utoipa::path(
    get, path = "/api/v1/hooks", tag = "hooks",
    responses(
        (status = 200, body = HookListResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list_hooks(
    State(state): State<AppState>,
    caller: Caller<op::HookList>,
) -> ApiResult<Json<HookListResponse>> {
    let hooks = state.store.hook_list(caller.tenant_id()).await?;
    Ok(Json(HookListResponse {
        items: hooks.into_iter().map(Into::into).collect(),
    }))
}

async fn load(state: &AppState, tenant: &str, id: &str) -> ApiResult<Hook> {
    state
        .store
        .hook_get(tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("hook {id} not found")))
}

/// Show a hook.
#[utoipa::path(
    get, path = "/api/v1/hooks/{id}", tag = "hooks",
    params(("id" = String, Path, description = "The hook's id")),
    responses(
        (status = 200, body = HookResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn get_hook(
    State(state): State<AppState>,
    caller: Caller<op::HookList>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<HookResponse>> {
    Ok(Json(load(&state, caller.tenant_id(), &id).await?.into()))
}

/// What `PATCH /api/v1/hooks/{id}` changes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateHookParams {
    /// Off: the hook's events no longer become deliveries and pre-task checks skip it
    /// (deliveries already queued are still sent); on again: from the next event.
    pub enabled: bool,
}

/// Turn a hook off or on.
#[utoipa::path(
    patch, path = "/api/v1/hooks/{id}", tag = "hooks",
    params(("id" = String, Path, description = "The hook's id")),
    request_body = UpdateHookParams,
    responses(
        (status = 200, body = HookResponse),
        (status = 400, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn update_hook(
    State(state): State<AppState>,
    caller: Caller<op::HookUpdate>,
    PathParams(id): PathParams<String>,
    JsonBody(p): JsonBody<UpdateHookParams>,
) -> ApiResult<Json<HookResponse>> {
    check_unscoped(&caller)?;
    let tenant = caller.tenant_id();
    let hook = state
        .store
        .hook_set_enabled(&caller.ctx, tenant, &id, p.enabled)
        .await?;
    state.hooks.invalidate(tenant);
    Ok(Json(hook.into()))
}

/// Delete a hook with its deliveries (pending ones are not sent).
#[utoipa::path(
    delete, path = "/api/v1/hooks/{id}", tag = "hooks",
    params(("id" = String, Path, description = "The hook's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn delete_hook(
    State(state): State<AppState>,
    caller: Caller<op::HookDelete>,
    PathParams(id): PathParams<String>,
) -> ApiResult<StatusCode> {
    check_unscoped(&caller)?;
    let tenant = caller.tenant_id();
    state.store.hook_delete(&caller.ctx, tenant, &id).await?;
    state.hooks.invalidate(tenant);
    Ok(StatusCode::NO_CONTENT)
}

/// Send a synthetic `hook.test` event to this hook now, and answer how it went (recorded as a
/// delivery; a failed one is in the dead-letter list and may be re-queued).
#[utoipa::path(
    post, path = "/api/v1/hooks/{id}/test", tag = "hooks",
    params(("id" = String, Path, description = "The hook's id")),
    responses(
        (status = 200, body = TestResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn test_hook(
    State(state): State<AppState>,
    caller: Caller<op::HookTest>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<TestResponse>> {
    check_unscoped(&caller)?;
    let tenant = caller.tenant_id();
    let hook = load(&state, tenant, &id).await?;
    let settings =
        Settings::of(&hook.config).map_err(|e| ApiError::internal(format!("hook {id}: {e}")))?;
    let event_id = format!("test-{}", uuid::Uuid::new_v4().simple());
    let payload = json!({
        "id": event_id,
        "type": spec::TEST_EVENT,
        "tenant_id": tenant,
        "subject": hook.id,
        "data": {"test": true, "by": caller.key.principal_id},
        "at": now_ms(),
        "hook": {"id": hook.id, "name": hook.name},
    });
    let body = serde_json::to_vec(&payload).unwrap_or_default();
    let outcome = send::send(&state, &hook, &settings, &event_id, spec::TEST_EVENT, &body).await;
    let result = crate::hooks::outbox::result_of(&state, &outcome, 0, 1);
    state.hooks.metrics().outcome(&result);
    let new = NewDelivery {
        hook_id: hook.id.clone(),
        event_id,
        event_type: spec::TEST_EVENT.to_string(),
        payload,
    };
    let recorded = state.store.hook_record(tenant, new, result).await.ok();
    Ok(Json(TestResponse {
        ok: outcome.ok,
        status: outcome.status,
        duration_ms: u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX),
        error: outcome.error,
        delivery_id: recorded.map(|d| d.id),
    }))
}

/// A hook's deliveries, oldest first, optionally in one state.
#[utoipa::path(
    get, path = "/api/v1/hooks/{id}/deliveries", tag = "hooks",
    params(("id" = String, Path, description = "The hook's id"), DeliveryListParams),
    responses(
        (status = 200, body = DeliveryListResponse),
        (status = 400, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list_deliveries(
    State(state): State<AppState>,
    caller: Caller<op::HookList>,
    PathParams(id): PathParams<String>,
    Query(q): Query<DeliveryListParams>,
) -> ApiResult<Json<DeliveryListResponse>> {
    let tenant = caller.tenant_id();
    if let Some(s) = &q.state
        && !matches!(s.as_str(), "pending" | "delivered" | "dead")
    {
        return Err(ApiError::bad_request(
            "state",
            format!("unknown state '{s}': expected pending, delivered or dead"),
        ));
    }
    load(&state, tenant, &id).await?;
    let page = PageRequest {
        cursor: q.cursor,
        limit: page_limit(q.limit)?,
    };
    let page = state
        .store
        .hook_deliveries(tenant, &id, q.state.as_deref(), &page)
        .await?;
    Ok(Json(DeliveryListResponse {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Re-queue a dead delivery: it is sent again at once, with its attempts reset.
#[utoipa::path(
    post, path = "/api/v1/hooks/deliveries/{id}/retry", tag = "hooks",
    params(("id" = String, Path, description = "The delivery's id")),
    responses(
        (status = 200, body = DeliveryResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 409, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn retry_delivery(
    State(state): State<AppState>,
    caller: Caller<op::HookRetry>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<DeliveryResponse>> {
    check_unscoped(&caller)?;
    let tenant = caller.tenant_id();
    let found = state.store.hook_delivery(tenant, &id).await?;
    if found
        .as_ref()
        .is_some_and(|d| d.event_type == spec::PRE_TASK)
    {
        return Err(invalid(
            "id",
            "a pre-task check cannot be sent again: the submission it decided is over",
        ));
    }
    let d = state.store.hook_requeue(&caller.ctx, tenant, &id).await?;
    state.hooks.wake();
    Ok(Json(d.into()))
}
