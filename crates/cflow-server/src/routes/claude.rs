//! Claude Code integration: `POST /api/v1/claude/hooks`, where `cflow hook claude EVENT` reports
//! each hook event of a Claude Code session and learns whether to block it and what context to
//! give, and `GET|PUT /api/v1/tenants/{tenant}/claude-policy`, the tenant's hook policy (its
//! admins, or the superadmin).
//!
//! A reported event is published on the event bus (`claude.<event>`, subject: the session id),
//! appended to the ledger (`claude.hook`, the input masked and clipped), kept in the session's
//! memory ([`session`]) and checked against the policy (`cflow_core::claude`): only `PreToolUse`
//! is ever blocked by the policy.

mod session;

use crate::auth::{Caller, op};
use crate::error::{ApiError, ApiResult, ProblemKind, ProblemResponse};
use crate::extract::{JsonBody, PathParams};
use crate::routes::memory::serialised_len;
use crate::state::{AppState, now_ms};
use axum::Json;
use axum::extract::State;
use cflow_core::ValidationError;
use cflow_core::claude::{CompiledPolicy, Event, Fail, Policy};
use cflow_store::AuditEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use session::{MAX_PROMPTS, MAX_TOOLS, SessionMemory, clip_str, clip_to};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(report_hook))
        .routes(routes!(set_policy, get_policy))
}

/// The largest hook input accepted (serialised): `cflow hook claude` reads at most this much.
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;

/// One hook event, as Claude Code gave it to `cflow hook claude`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaudeHookParams {
    /// `PreToolUse`, `PostToolUse`, `UserPromptSubmit`, `SessionStart`, `SessionEnd`, `Stop`,
    /// `SubagentStop`, `PreCompact` or `Notification`.
    pub event: String,
    /// Claude Code's hook JSON as received on stdin (at most 1 MiB serialised); its
    /// `hook_event_name` must be `event`.
    #[schema(value_type = Object)]
    pub input: Value,
}

/// What the hook should do.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClaudeHookResponse {
    /// `allow` or `block` (only `PreToolUse` is ever blocked by the policy).
    pub decision: String,
    /// Why it is blocked: `cflow hook claude` prints it on stderr, Claude Code shows it to
    /// the model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Text for the model (`SessionStart`, `UserPromptSubmit`): relevant memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// The tenant's fail mode (`open` or `closed`), for when the server cannot be reached.
    #[schema(value_type = String)]
    pub fail: Fail,
}

/// Tenant id → (the stored policy's text, the policy compiled).
type PolicyCache = HashMap<String, (String, Arc<CompiledPolicy>)>;

/// Compiled policies, keyed by tenant and checked against the stored text, so that a regex is
/// compiled once per policy version rather than once per tool call.
fn compiled(tenant: &str, text: &str) -> Result<Arc<CompiledPolicy>, ValidationError> {
    static CACHE: OnceLock<Mutex<PolicyCache>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some((t, p)) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(tenant)
        && t == text
    {
        return Ok(p.clone());
    }
    let v: Value =
        serde_json::from_str(text).map_err(|e| ValidationError::new("policy", e.to_string()))?;
    let p = Arc::new(Policy::from_json(&v)?);
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() >= 4096 {
        map.clear();
    }
    map.insert(tenant.to_string(), (text.to_string(), p.clone()));
    Ok(p)
}

/// The tenant's policy, compiled (`None`: it has none).
async fn tenant_policy(state: &AppState, tenant: &str) -> ApiResult<Option<Arc<CompiledPolicy>>> {
    let Some(v) = state.store.tenant_claude_policy(tenant).await? else {
        return Ok(None);
    };
    // Stored policies were checked when they were set; one that no longer compiles (a newer
    // server's stricter rules) is a server-side fault, not the caller's.
    compiled(tenant, &v.to_string())
        .map(Some)
        .map_err(|e| ApiError::internal(format!("stored Claude policy of {tenant}: {e}")))
}

/// Report a Claude Code hook event: recorded (event bus, ledger, the session's memory) and
/// checked against the tenant's policy; the answer says whether to block and what context to
/// give.
#[utoipa::path(
    post, path = "/api/v1/claude/hooks", tag = "claude",
    request_body = ClaudeHookParams,
    responses(
        (status = 200, body = ClaudeHookResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 413, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn report_hook(
    State(state): State<AppState>,
    caller: Caller<op::ClaudeHook>,
    JsonBody(p): JsonBody<ClaudeHookParams>,
) -> ApiResult<Json<ClaudeHookResponse>> {
    let Some(event) = Event::parse(&p.event) else {
        let names: Vec<&str> = Event::ALL.iter().map(|e| e.name()).collect();
        return Err(
            ValidationError::new("event", format!("must be one of {}", names.join(", "))).into(),
        );
    };
    if serialised_len(&p.input) > MAX_INPUT_BYTES {
        return Err(ApiError::new(
            ProblemKind::PayloadTooLarge,
            format!("the hook input is larger than {MAX_INPUT_BYTES} bytes"),
        ));
    }
    cflow_core::claude::check_input(event, &p.input)?;
    let input = &p.input;
    let str_field = |name: &str| input.get(name).and_then(Value::as_str);
    let session_id = str_field("session_id").unwrap_or_default().to_string();
    let namespace = match &caller.key.project {
        Some(project) => format!("{project}/claude/session/{session_id}"),
        None => format!("claude/session/{session_id}"),
    };
    cflow_core::validate::namespace(&namespace)?;
    let tenant = caller.tenant_id().to_string();
    let policy = tenant_policy(&state, &tenant).await?;
    let fail = policy.as_ref().map(|p| p.policy.fail).unwrap_or_default();

    let tool = str_field("tool_name");
    let reason = match (event, &policy, tool) {
        (Event::PreToolUse, Some(policy), Some(tool)) => {
            policy.check_tool(tool, &input["tool_input"], str_field("cwd"))
        }
        _ => None,
    };
    let mem = SessionMemory {
        state: &state,
        ctx: &caller.ctx,
        tenant: &tenant,
        namespace,
    };
    // Context namespaces outside a project-scoped key's project are left out, as the memory
    // routes would refuse them.
    let namespaces: Vec<String> = policy
        .iter()
        .flat_map(|p| p.policy.context_namespaces.iter())
        .filter(|ns| caller.check_namespace(ns).is_ok())
        .cloned()
        .collect();
    let context = match event {
        Event::SessionStart => session::session_start_context(&mem, &namespaces).await?,
        Event::UserPromptSubmit => {
            session::prompt_context(&mem, &namespaces, str_field("prompt").unwrap_or_default())
                .await?
        }
        _ => None,
    };

    // What is kept of the input: masked with the tenant's secrets, long strings clipped.
    let mut masked = input.clone();
    state.secrets.masks().json(&tenant, &mut masked);
    // At most 64 KiB of it goes to the ledger and memory.
    let kept = clip_to(&masked, 64 * 1024);
    let decision = if reason.is_some() { "block" } else { "allow" };
    let at = cflow_core::timefmt::rfc3339(now_ms());
    let audit = AuditEvent {
        action: "claude.hook".to_string(),
        resource: mem.namespace.clone(),
        outcome: if reason.is_some() {
            "blocked"
        } else {
            "success"
        }
        .to_string(),
        detail: json!({
            "event": event.name(),
            "session_id": session_id,
            "decision": decision,
            "reason": reason,
            "input": kept,
        }),
    };
    // The ledger entry and the memory write go to the writer together, so that they usually
    // share one commit.
    let remember = remember(&mem, event, &kept, reason.as_deref(), &at);
    let (audited, remembered) =
        tokio::join!(state.store.audit_append(&caller.ctx, audit), remember);
    audited?;
    remembered?;
    let mut data = json!({
        "session_id": session_id,
        "event": event.name(),
        "decision": decision,
        "cwd": kept.get("cwd"),
    });
    if let Some(tool) = tool {
        data["tool_name"] = json!(tool);
    }
    if let Some(r) = &reason {
        data["reason"] = json!(r);
    }
    for field in ["source", "trigger", "message", "notification_type"] {
        if let Some(v) = kept.get(field) {
            data[field] = v.clone();
        }
    }
    if event == Event::SessionEnd {
        data["end_reason"] = kept.get("reason").cloned().unwrap_or(Value::Null);
    }
    state.events.publish(
        &tenant,
        &format!("claude.{}", event.kind()),
        &session_id,
        data,
    );
    Ok(Json(ClaudeHookResponse {
        decision: decision.to_string(),
        reason,
        context,
        fail,
    }))
}

/// Keeps what the session's memory holds of this event.
async fn remember(
    mem: &SessionMemory<'_>,
    event: Event,
    kept: &Value,
    blocked: Option<&str>,
    at: &str,
) -> ApiResult<()> {
    let fields = |names: &[&str]| -> Map<String, Value> {
        names
            .iter()
            .filter_map(|n| kept.get(*n).map(|v| (n.to_string(), v.clone())))
            .collect()
    };
    match event {
        Event::SessionStart => {
            let mut f = fields(&[
                "source",
                "cwd",
                "model",
                "transcript_path",
                "permission_mode",
            ]);
            f.insert("started_at".into(), json!(at));
            f.insert("ended_at".into(), Value::Null);
            mem.merge("session", f).await
        }
        Event::SessionEnd => {
            let mut f = Map::new();
            f.insert("ended_at".into(), json!(at));
            f.insert(
                "end_reason".into(),
                kept.get("reason").cloned().unwrap_or(Value::Null),
            );
            mem.merge("session", f).await
        }
        Event::UserPromptSubmit => {
            let prompt = kept.get("prompt").cloned().unwrap_or(Value::Null);
            mem.append(
                "prompts",
                json!({ "at": at, "prompt": prompt }),
                MAX_PROMPTS,
            )
            .await
        }
        Event::PostToolUse | Event::PreToolUse
            if event == Event::PostToolUse || blocked.is_some() =>
        {
            let tool = kept.get("tool_name").and_then(Value::as_str).unwrap_or("?");
            let input = kept.get("tool_input").cloned().unwrap_or(Value::Null);
            let brief = input
                .get("command")
                .or_else(|| input.get("file_path"))
                .or_else(|| input.get("pattern"))
                .or_else(|| input.get("url"))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .unwrap_or_else(|| input.to_string());
            let mut item = json!({
                "at": at,
                "tool": tool,
                "input": clip_to(&input, 2048),
                "summary": format!("{tool}: {}", clip_str(&brief, 200)),
            });
            if let Some(r) = blocked {
                item["blocked"] = json!(r);
                item["summary"] = json!(format!("{tool} (blocked): {}", clip_str(&brief, 200)));
            }
            mem.append("tools", item, MAX_TOOLS).await
        }
        _ => Ok(()),
    }
}

/// A tenant's Claude Code hook policy (`null`: none).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClaudePolicyResponse {
    #[schema(value_type = Object)]
    pub policy: Option<Policy>,
}

/// A tenant by id or name, reported as not found unless the caller may see it.
async fn visible_tenant<O>(
    state: &AppState,
    caller: &Caller<O>,
    tenant: &str,
) -> ApiResult<String> {
    match state.store.get_tenant(tenant).await? {
        Some(t) if caller.is_superadmin() || t.id == caller.tenant_id() => Ok(t.id),
        _ => Err(ApiError::not_found(format!("tenant '{tenant}' not found"))),
    }
}

/// Set a tenant's Claude Code hook policy: `{"deny_commands": [...], "deny_tools": [...],
/// "deny_paths": [...], "context_namespaces": [...], "fail": "open"|"closed"}` (every field
/// optional). A `deny_commands` entry is a substring of the Bash command, or `re:<regex>`;
/// `deny_paths` are absolute prefixes. `{}` removes the policy. An invalid policy is refused
/// (422) and nothing is stored.
#[utoipa::path(
    put, path = "/api/v1/tenants/{tenant}/claude-policy", tag = "claude",
    params(("tenant" = String, Path, description = "Tenant id or name")),
    request_body(content = Object, description = "The policy"),
    responses(
        (status = 200, body = ClaudePolicyResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn set_policy(
    State(state): State<AppState>,
    caller: Caller<op::ClaudePolicySet>,
    PathParams(tenant): PathParams<String>,
    JsonBody(v): JsonBody<Value>,
) -> ApiResult<Json<ClaudePolicyResponse>> {
    let target = visible_tenant(&state, &caller, &tenant).await?;
    let compiled = Policy::from_json(&v)?;
    let policy = (compiled.policy != Policy::default()).then_some(compiled.policy);
    let stored = policy
        .as_ref()
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| ApiError::internal(format!("policy: {e}")))?;
    state
        .store
        .set_tenant_claude_policy(&caller.ctx, &target, stored)
        .await?;
    Ok(Json(ClaudePolicyResponse { policy }))
}

/// A tenant's Claude Code hook policy (its admins, or the superadmin).
#[utoipa::path(
    get, path = "/api/v1/tenants/{tenant}/claude-policy", tag = "claude",
    params(("tenant" = String, Path, description = "Tenant id or name")),
    responses(
        (status = 200, body = ClaudePolicyResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn get_policy(
    State(state): State<AppState>,
    caller: Caller<op::ClaudePolicyRead>,
    PathParams(tenant): PathParams<String>,
) -> ApiResult<Json<ClaudePolicyResponse>> {
    let target = visible_tenant(&state, &caller, &tenant).await?;
    let policy = match state.store.tenant_claude_policy(&target).await? {
        Some(v) => Some(
            compiled(&target, &v.to_string())
                .map_err(|e| ApiError::internal(format!("stored Claude policy of {target}: {e}")))?
                .policy
                .clone(),
        ),
        None => None,
    };
    Ok(Json(ClaudePolicyResponse { policy }))
}
