//! Authentication, rate limiting and role checks: the [`Caller`] extractor. A handler that takes
//! `Caller<O>` runs only for a live key whose bucket has tokens and whose role may perform `O`'s
//! action; everything else is refused here, before the body is read, and audited by the edge —
//! except failed authentications beyond the source address's failure bucket, which are answered
//! 429 and audited in aggregate by the background task.

use crate::error::{ApiError, ApiResult};
use crate::state::{AppState, now_ms};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use cflow_core::{Action, Role, apikey};
use cflow_store::{ApiKey, AuditContext, AuthOutcome};
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};

/// Per-request facts set by the edge middleware before routing.
#[derive(Clone)]
pub struct RequestContext {
    pub request_id: String,
    /// The client's IP address.
    pub source: Option<String>,
    /// Filled by [`Caller`] so that the edge can audit a refusal or a rejected input with who
    /// asked and what for.
    pub slot: AuditSlot,
}

/// Who asked for what, recorded once authentication has got as far as it could.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub ctx: AuditContext,
    /// Audit action name, for example `memory.write`.
    pub action: &'static str,
    pub mutating: bool,
    /// The request path, as the resource of an entry that records no change.
    pub resource: String,
}

#[derive(Clone, Default)]
pub struct AuditSlot(Arc<OnceLock<Attempt>>);

impl AuditSlot {
    fn set(&self, attempt: Attempt) {
        // Only the first extractor of a request records; a handler has one `Caller`.
        let _ = self.0.set(attempt);
    }

    pub fn get(&self) -> Option<&Attempt> {
        self.0.get()
    }
}

/// An operation a route performs: the permission it needs and its name in the audit ledger.
pub trait Op: Send + Sync + 'static {
    const ACTION: Action;
    const NAME: &'static str;
}

macro_rules! ops {
    ($($(#[$doc:meta])* $ty:ident => $action:ident, $name:literal;)*) => {$(
        $(#[$doc])*
        pub struct $ty;
        impl Op for $ty {
            const ACTION: Action = Action::$action;
            const NAME: &'static str = $name;
        }
    )*};
}

/// Operation markers, one per kind of route.
pub mod op {
    use super::*;
    ops! {
        TenantCreate => TenantCreate, "tenant.create";
        TenantList => TenantList, "tenant.list";
        KeyCreate => KeyCreate, "key.create";
        KeyList => KeyList, "key.list";
        KeyRevoke => KeyRevoke, "key.revoke";
        Whoami => Whoami, "whoami";
        MemoryRead => MemoryRead, "memory.read";
        MemoryWrite => MemoryWrite, "memory.write";
        /// Deleting needs the write permission but is its own entry in the ledger.
        MemoryDelete => MemoryWrite, "memory.delete";
        AuditRead => AuditRead, "audit.read";
        MetricsRead => MetricsRead, "metrics.read";
        SwarmRead => SwarmRead, "swarm.read";
        SwarmCreate => SwarmWrite, "swarm.create";
        /// Pause, resume or stop.
        SwarmState => SwarmWrite, "swarm.state";
        SwarmScale => SwarmWrite, "swarm.scale";
        AgentSpawn => SwarmWrite, "agent.create";
        AgentStop => SwarmWrite, "agent.stop";
        TaskRead => TaskRead, "task.read";
        TaskSubmit => TaskSubmit, "task.submit";
        TaskCancel => TaskCancel, "task.cancel";
        MessageSend => MessageSend, "message.send";
        /// The event stream shows task, agent and swarm changes: reading it needs `TaskRead`.
        EventRead => TaskRead, "events.read";
        WorkerRegister => WorkerConnect, "worker.register";
        WorkerPoll => WorkerConnect, "worker.poll";
        WorkerReport => WorkerConnect, "worker.report";
        WorkerLeave => WorkerConnect, "worker.deregister";
        WorkerList => SwarmRead, "worker.list";
        TenantQuotaSet => TenantUpdate, "tenant.quota.set";
        /// Reading a quota is for the superadmin and the tenant's own admins; the handler checks
        /// the role, since no action of the matrix means exactly that.
        TenantQuotaRead => SwarmRead, "tenant.quota.read";
        /// Sandbox overrides loosen or tighten isolation: setting them is platform
        /// administration, like quotas.
        TenantSandboxSet => TenantUpdate, "tenant.sandbox.set";
        /// Like quotas: the superadmin and the tenant's own admins (the handler checks the role).
        TenantSandboxRead => SwarmRead, "tenant.sandbox.read";
        /// A tenant's model providers reference its secrets by name: managed by whoever
        /// manages those (the tenant's admins; the superadmin for any tenant).
        TenantLlmSet => SecretWrite, "tenant.llm.set";
        TenantLlmRead => SecretRead, "tenant.llm.read";
        WorkerArtifact => WorkerConnect, "worker.artifact";
        /// Artifacts are part of a task's record: reading them needs `TaskRead`.
        TaskArtifacts => TaskRead, "task.artifacts";
        /// Names and times only: no route returns a secret's value.
        SecretList => SecretRead, "secret.list";
        SecretPut => SecretWrite, "secret.put";
        SecretDelete => SecretWrite, "secret.delete";
        CostRead => CostRead, "cost.read";
        /// Budgets are read by whoever may read cost reports.
        BudgetRead => CostRead, "budget.read";
        BudgetSet => BudgetWrite, "budget.set";
        BudgetDelete => BudgetWrite, "budget.delete";
        HookList => HookRead, "hook.list";
        HookCreate => HookWrite, "hook.create";
        HookDelete => HookWrite, "hook.delete";
        HookUpdate => HookWrite, "hook.update";
        /// Sends a synthetic event to one hook: it runs the hook's command or calls its URL.
        HookTest => HookWrite, "hook.test";
        HookRetry => HookWrite, "hook.retry";
        /// Claude Code's hooks record a session's events in its memory: whoever may write
        /// memory may report them.
        ClaudeHook => MemoryWrite, "claude.hook";
        /// A tenant's Claude Code hook policy is managed like its hooks: by its admins.
        ClaudePolicySet => HookWrite, "tenant.claude_policy.set";
        ClaudePolicyRead => HookWrite, "tenant.claude_policy.read";
        /// Any live key may open `/mcp`: each tool call then needs its own permission.
        Mcp => Whoami, "mcp";
        /// Any live key records its own MCP tool calls.
        McpCall => Whoami, "mcp.call";
    }
}

/// An authenticated, rate-limited, authorised caller allowed to perform `O`.
pub struct Caller<O> {
    pub key: ApiKey,
    /// Pass this to every store write, so that the audit entry names the caller.
    pub ctx: AuditContext,
    _op: PhantomData<fn() -> O>,
}

impl<O> Caller<O> {
    pub fn tenant_id(&self) -> &str {
        &self.key.tenant_id
    }

    pub fn is_superadmin(&self) -> bool {
        self.key.role == Role::Superadmin
    }

    /// Refuses a project-scoped key outside its project's namespaces (`p` and `p/…`).
    pub fn check_namespace(&self, namespace: &str) -> ApiResult<()> {
        match &self.key.project {
            Some(p) if !namespace_in_project(p, namespace) => Err(ApiError::forbidden(format!(
                "this key is scoped to project '{p}' and may only use namespaces '{p}' and '{p}/…'"
            ))),
            _ => Ok(()),
        }
    }
}

pub fn namespace_in_project(project: &str, namespace: &str) -> bool {
    namespace
        .strip_prefix(project)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The request context the edge inserted; absent only if a route was mounted without the edge,
/// which is a programming error answered with a 500 rather than a panic.
pub fn request_context(parts: &Parts) -> ApiResult<&RequestContext> {
    parts
        .extensions
        .get::<RequestContext>()
        .ok_or_else(|| ApiError::internal("request context missing: route mounted without edge"))
}

/// The bearer token, or why there is none. Never logged.
fn bearer(parts: &Parts) -> ApiResult<&str> {
    let Some(value) = parts.headers.get(AUTHORIZATION) else {
        return Err(ApiError::unauthenticated(
            "missing API key: send 'Authorization: Bearer <token>'",
        ));
    };
    let value = value.to_str().unwrap_or_default();
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthenticated(
            "malformed Authorization header: expected 'Bearer <token>'",
        ));
    }
    let token = token.trim();
    if apikey::parse_token(token).is_none() {
        return Err(ApiError::unauthenticated(
            "malformed API key: expected cflow_<16 hex>_<64 hex>",
        ));
    }
    Ok(token)
}

impl<O: Op> FromRequestParts<AppState> for Caller<O> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let rc = request_context(parts)?;
        let mut ctx = AuditContext {
            tenant_id: None,
            principal_id: None,
            request_id: Some(rc.request_id.clone()),
            source: rc.source.clone(),
        };
        let slot = rc.slot.clone();
        let record = |ctx: &AuditContext| {
            slot.set(Attempt {
                ctx: ctx.clone(),
                action: O::NAME,
                mutating: O::ACTION.is_mutating(),
                resource: parts.uri.path().to_owned(),
            })
        };
        // A failed authentication spends a token of the source address's failure bucket. Once
        // that is empty the answer is 429 and nothing is recorded, so the edge appends no ledger
        // entry: the failure is only counted, into one aggregated entry per address that the
        // background task appends (see `serve::audit_suppressed_auth_failures`).
        let source = rc.source.clone();
        let fail = |ctx: &AuditContext, e: ApiError| -> ApiError {
            if let Some(source) = &source
                && let Err(secs) = state.limits.auth_failure(source)
            {
                return ApiError::rate_limited_because(
                    "too many failed authentications from this address",
                    secs,
                );
            }
            record(ctx);
            e
        };

        let token = match bearer(parts) {
            Ok(t) => t,
            Err(e) => return Err(fail(&ctx, e)),
        };
        let now = now_ms();
        let outcome = match state.auth_cache.get(token, now) {
            Some(key) => AuthOutcome::Valid(key),
            None => {
                let outcome = state.store.authenticate(token, now).await?;
                if let AuthOutcome::Valid(key) = &outcome {
                    state.auth_cache.put(token, key, now);
                }
                outcome
            }
        };
        let (refusal, key) = match outcome {
            AuthOutcome::Valid(key) => (None, key),
            AuthOutcome::Invalid => {
                // Unknown key id and wrong secret are deliberately indistinguishable.
                let e = ApiError::unauthenticated("unknown API key or wrong secret");
                return Err(fail(&ctx, e));
            }
            AuthOutcome::Revoked(key) => (Some("API key has been revoked"), key),
            AuthOutcome::Expired(key) => (Some("API key has expired"), key),
        };
        // A revoked or expired key still names its tenant and principal, so the ledger entry of
        // the refusal is visible to that tenant's auditors.
        ctx.tenant_id = Some(key.tenant_id.clone());
        ctx.principal_id = Some(key.principal_id.clone());
        if let Some(why) = refusal {
            return Err(fail(&ctx, ApiError::unauthenticated(why)));
        }
        record(&ctx);

        if let Err(secs) = state.limits.check(&key.id, &key.tenant_id) {
            return Err(ApiError::rate_limited(secs));
        }
        if !cflow_core::authz::allows(key.role, O::ACTION) {
            return Err(ApiError::forbidden(format!(
                "role '{}' may not perform {}",
                key.role,
                O::NAME
            )));
        }
        Ok(Caller {
            key,
            ctx,
            _op: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_scope() {
        assert!(namespace_in_project("web", "web"));
        assert!(namespace_in_project("web", "web/notes"));
        assert!(!namespace_in_project("web", "website"));
        assert!(!namespace_in_project("web", "api/web"));
        assert!(!namespace_in_project("web", "we"));
    }
}
