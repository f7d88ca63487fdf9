//! The server side of a model loop's calls ([`HostCall`]): the setup of an `llm` attempt, the
//! server-side tools (memory, messages, delegation), the budget check before each model call and
//! the accounting after it.
//!
//! The scheduler fences every call by the attempt's epoch (`sched/host.rs`) and hands it here
//! with the attempt's [`CallContext`]. Each tool does what the equivalent HTTP action does, with
//! the same validation and limits, acting as the task's agent: its writes are audited by the
//! store with the principal `agent:<id>`, and its refusals are audited exactly when the edge
//! would audit the HTTP refusal (denials always, invalid input of a write). Every failure is a
//! [`HostError`] in a 200 answer: [`HostError::Refused`] with a message the model can act on, or
//! [`HostError::Unavailable`] for a server fault (logged here, never detailed to the worker).
//!
//! Scope: an agent acts in its task's tenant. An agent of a swarm with a project is confined to
//! that project's memory namespaces (`<project>` and `<project>/…`), like a project-scoped key.
//! Memory calls default to the swarm's shared namespace, `swarm/<swarm id>` (inside a project:
//! `<project>/swarm/<swarm id>`); a search without a namespace covers the project, or the whole
//! tenant when there is none (as over HTTP). `delegate_task`'s `agent_type` names an agent type
//! or a capability.

use crate::auth::namespace_in_project;
use crate::cost::{UsageScope, budget_error};
use crate::error::{ApiError, ApiResult, ProblemKind};
use crate::extract::page_limit;
use crate::routes::memory::{RESERVED_NAMESPACE, serialised_len};
use crate::sched::{CallContext, ModelHost};
use crate::state::{AppState, WeakState, now_ms};
use cflow_agents::BoxFuture;
use cflow_agents::host::{HostCall, HostError, SERVER_TOOLS, Tokens};
use cflow_agents::proto::HostReply;
use cflow_core::budget::BudgetExceeded;
use cflow_core::pricing::{Usage, micros_to_usd};
use cflow_core::task as core_task;
use cflow_core::topology::Interaction;
use cflow_core::{ValidationError, search, validate};
use cflow_store::{
    AuditContext, AuditEvent, MAX_MESSAGE_BYTES, MemoryEntry, MemoryPut, NewMessage, NewTask,
    Precondition,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The drivers that run a prompt: a delegated task goes only to an agent with one of them.
const MODEL_DRIVERS: [&str; 2] = ["llm", "claude-code"];
/// Search hits a model gets when it does not say how many (HTTP's default of 100 would flood
/// its context); the HTTP range (1–1000) applies when it does.
const DEFAULT_SEARCH_LIMIT: u32 = 10;

/// Installs the model host on the state's scheduler; the server calls it once at start.
pub fn install(state: &AppState) {
    let host = Arc::new(Host {
        state: state.downgrade(),
        alerted: Mutex::new(HashSet::new()),
    });
    if !state.sched.set_model_host(host) {
        tracing::warn!("a model host was already installed on this scheduler");
    }
}

/// What the scheduler holds: a weak handle (the state holds the scheduler) and the spent
/// budgets already announced, so `budget.exceeded` is published once per budget and period.
struct Host {
    state: WeakState,
    /// (tenant id, budget id, end of the period).
    alerted: Mutex<HashSet<(String, String, i64)>>,
}

impl ModelHost for Host {
    fn serve(&self, ctx: CallContext, call: HostCall) -> BoxFuture<'_, HostReply> {
        Box::pin(async move {
            let Some(state) = self.state.upgrade() else {
                return HostReply::Err(HostError::Unavailable(
                    "the server is shutting down".to_string(),
                ));
            };
            let served = Served {
                state: &state,
                ctx: &ctx,
                alerted: &self.alerted,
            };
            match served.call(call).await {
                Ok(v) => HostReply::Ok(v),
                Err(e) => HostReply::Err(e),
            }
        })
    }
}

/// One call being served.
struct Served<'a> {
    state: &'a AppState,
    ctx: &'a CallContext,
    alerted: &'a Mutex<HashSet<(String, String, i64)>>,
}

/// A tool call as the ledger names it (the HTTP action it stands for).
struct Action {
    name: &'static str,
    mutating: bool,
    resource: String,
}

impl Served<'_> {
    async fn call(&self, call: HostCall) -> Result<Value, HostError> {
        match call {
            HostCall::Setup => self.setup().await.map_err(host_error),
            HostCall::Tool { name, input } => self.tool(&name, input).await,
            HostCall::CheckBudget => self.check_budget().await,
            HostCall::Usage {
                provider,
                model,
                tokens,
            } => self
                .usage(&provider, &model, tokens)
                .await
                .map_err(host_error),
        }
    }

    /// The agent as the actor of its changes.
    fn actor(&self) -> AuditContext {
        AuditContext {
            tenant_id: Some(self.ctx.tenant_id.clone()),
            principal_id: Some(format!("agent:{}", self.ctx.agent_id)),
            request_id: None,
            source: Some(format!(
                "task {} epoch {} on worker {}",
                self.ctx.task_id, self.ctx.epoch, self.ctx.worker_id
            )),
        }
    }

    async fn setup(&self) -> ApiResult<Value> {
        let c = self.ctx;
        let setup = self
            .state
            .model_setup(&c.tenant_id, &c.agent_id, &c.task_id)
            .await?;
        serde_json::to_value(setup).map_err(|e| ApiError::internal(format!("setup: {e}")))
    }

    async fn tool(&self, name: &str, input: Value) -> Result<Value, HostError> {
        let (action, mutating) = match name {
            "memory_get" | "memory_search" => ("memory.read", false),
            "memory_put" => ("memory.write", true),
            "send_message" => ("message.send", true),
            "delegate_task" => ("task.submit", true),
            _ => {
                return Err(HostError::Refused(format!(
                    "unknown tool '{name}': the server's tools are {}",
                    SERVER_TOOLS.join(", ")
                )));
            }
        };
        let mut act = Action {
            name: action,
            mutating,
            // Refined by the tool once it knows its target (`memory/<ns>/<key>`, `swarm/<id>/…`).
            resource: match action {
                "message.send" => "messages",
                "task.submit" => "tasks",
                _ => "memory",
            }
            .to_string(),
        };
        let done = match name {
            "memory_get" => self.memory_get(input, &mut act).await,
            "memory_put" => self.memory_put(input, &mut act).await,
            "memory_search" => self.memory_search(input).await,
            "send_message" => self.send_message(input, &mut act).await,
            _ => self.delegate_task(input, &mut act).await,
        };
        match done {
            Ok(v) => Ok(v),
            Err(e) => {
                self.audit_refusal(&act, &e).await;
                Err(host_error(e))
            }
        }
    }

    /// Records a refused tool call where the edge would record the HTTP refusal.
    async fn audit_refusal(&self, act: &Action, e: &ApiError) {
        let kind = e.kind();
        if !(kind.is_denial() || (act.mutating && kind.is_invalid_input())) {
            return;
        }
        let mut detail = json!({
            "status": e.0.status.as_u16(),
            "reason": e.0.detail,
            "task_id": self.ctx.task_id,
            "epoch": self.ctx.epoch,
        });
        if let Some(f) = &e.0.field {
            detail["field"] = Value::String(f.clone());
        }
        let event = AuditEvent {
            action: act.name.to_string(),
            resource: act.resource.clone(),
            outcome: kind.audit_outcome().to_string(),
            detail,
        };
        if let Err(err) = self.state.store.audit_append(&self.actor(), event).await {
            tracing::warn!(task = %self.ctx.task_id, error = %err, "could not audit a refused model-loop call");
        }
    }

    /// The namespace a memory call names, else the agent's default.
    fn namespace_of(&self, given: Option<String>) -> String {
        let c = self.ctx;
        given.unwrap_or_else(|| {
            let own = match &c.swarm_id {
                Some(s) => format!("swarm/{s}"),
                None => format!("agent/{}", c.agent_id),
            };
            match &c.project {
                Some(p) => format!("{p}/{own}"),
                None => own,
            }
        })
    }

    /// Checks a namespace, and that it is inside the agent's project when it has one.
    fn check_namespace(&self, ns: &str) -> ApiResult<()> {
        validate::namespace(ns)?;
        match &self.ctx.project {
            Some(p) if !namespace_in_project(p, ns) => Err(ApiError::forbidden(format!(
                "this agent works in project '{p}' and may only use namespaces '{p}' and '{p}/…'"
            ))),
            _ => Ok(()),
        }
    }

    async fn memory_get(&self, input: Value, act: &mut Action) -> ApiResult<Value> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct In {
            key: String,
            namespace: Option<String>,
        }
        let p: In = parse("memory_get", input, "{key, namespace?}")?;
        let ns = self.namespace_of(p.namespace);
        act.resource = format!("memory/{ns}/{}", p.key);
        self.check_namespace(&ns)?;
        validate::memory_key(&p.key)?;
        let entry = self
            .state
            .store
            .memory_get(&self.ctx.tenant_id, &ns, &p.key, now_ms())
            .await?
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "no memory entry '{}' in namespace '{ns}' (memory_search finds entries by \
                     their words)",
                    p.key
                ))
            })?;
        Ok(entry_json(entry, None))
    }

    async fn memory_put(&self, input: Value, act: &mut Action) -> ApiResult<Value> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct In {
            key: String,
            value: Value,
            namespace: Option<String>,
            ttl_secs: Option<i64>,
        }
        let mut p: In = parse("memory_put", input, "{key, value, namespace?, ttl_secs?}")?;
        let tenant = &self.ctx.tenant_id;
        let ns = self.namespace_of(p.namespace);
        act.resource = format!("memory/{ns}/{}", p.key);
        self.check_namespace(&ns)?;
        validate::memory_key(&p.key)?;
        // As on the HTTP write path: secrets and credentials are masked out before the value is
        // stored, and the size limit applies to what is stored.
        self.state.secrets.masks().json(tenant, &mut p.value);
        if ns == RESERVED_NAMESPACE {
            return Err(ApiError::validation(ValidationError::new(
                "namespace",
                "'search' is reserved: use another namespace",
            )));
        }
        if let Some(ttl) = p.ttl_secs {
            validate::ttl_seconds(ttl).map_err(|e| field("ttl_secs", e))?;
        }
        validate::value_size(serialised_len(&p.value))?;
        let e = self
            .state
            .store
            .memory_put(
                &self.actor(),
                tenant,
                MemoryPut {
                    namespace: ns,
                    key: p.key,
                    value: p.value,
                    tags: Vec::new(),
                    ttl_seconds: p.ttl_secs,
                    precondition: Precondition::None,
                },
            )
            .await?;
        self.state.events.publish(
            tenant,
            "memory.written",
            &format!("{}/{}", e.namespace, e.key),
            json!({"namespace": e.namespace, "key": e.key, "version": e.version}),
        );
        Ok(json!({
            "namespace": e.namespace,
            "key": e.key,
            "version": e.version,
            "expires_at": e.expires_at.map(cflow_core::timefmt::rfc3339),
        }))
    }

    async fn memory_search(&self, input: Value) -> ApiResult<Value> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct In {
            query: String,
            namespace: Option<String>,
            limit: Option<u32>,
        }
        let p: In = parse("memory_search", input, "{query, namespace?, limit?}")?;
        let terms = search::terms(&p.query).map_err(|e| field("query", e))?;
        let limit = match p.limit {
            None => DEFAULT_SEARCH_LIMIT,
            l => page_limit(l)?,
        };
        // Like a project-scoped key: the project unless a namespace inside it is named.
        let ns = match p.namespace {
            Some(ns) => {
                self.check_namespace(&ns)?;
                Some(ns)
            }
            None => self.ctx.project.clone(),
        };
        let hits = self
            .state
            .store
            .memory_search(&self.ctx.tenant_id, &terms, ns.as_deref(), now_ms(), limit)
            .await?;
        let items: Vec<Value> = hits
            .into_iter()
            .map(|h| entry_json(h.entry, Some(h.score)))
            .collect();
        Ok(json!({ "items": items }))
    }

    async fn send_message(&self, input: Value, act: &mut Action) -> ApiResult<Value> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct In {
            to_agent_id: String,
            body: Value,
        }
        let p: In = parse("send_message", input, "{to_agent_id, body}")?;
        let c = self.ctx;
        let tenant = &c.tenant_id;
        let Some(swarm) = c.swarm_id.clone() else {
            return Err(invalid("to_agent_id", "this agent is in no swarm"));
        };
        act.resource = format!("swarm/{swarm}/messages");
        match self.state.store.get_agent(tenant, &p.to_agent_id).await? {
            Some(a) if a.swarm_id == swarm => {}
            _ => {
                return Err(invalid(
                    "to_agent_id",
                    format!(
                        "no agent '{}' in swarm '{swarm}' (your setup lists the agents you may \
                         address)",
                        p.to_agent_id
                    ),
                ));
            }
        }
        let size = serde_json::to_vec(&p.body).map_or(usize::MAX, |v| v.len());
        if size > MAX_MESSAGE_BYTES {
            return Err(invalid(
                "body",
                format!("must be at most {MAX_MESSAGE_BYTES} bytes of JSON (got {size})"),
            ));
        }
        self.state.sched.check_interaction(
            tenant,
            &swarm,
            Interaction::Message,
            &c.agent_id,
            Some(&p.to_agent_id),
        )?;
        let m = self
            .state
            .store
            .send_message(
                &self.actor(),
                tenant,
                NewMessage {
                    swarm_id: swarm,
                    from_agent: c.agent_id.clone(),
                    to_agent: Some(p.to_agent_id),
                    topic: None,
                    body: p.body,
                },
            )
            .await?;
        self.state.events.publish(
            tenant,
            "message.sent",
            &m.id.to_string(),
            json!({
                "swarm_id": m.swarm_id,
                "from": m.from_agent,
                "to": m.to_agent,
                "topic": m.topic,
            }),
        );
        Ok(json!({ "message_id": m.id, "to_agent_id": m.to_agent }))
    }

    async fn delegate_task(&self, input: Value, act: &mut Action) -> ApiResult<Value> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct In {
            prompt: String,
            agent_type: Option<String>,
            priority: Option<i64>,
            depends_on: Option<Vec<String>>,
        }
        let p: In = parse(
            "delegate_task",
            input,
            "{prompt, agent_type?, priority?, depends_on?}",
        )?;
        let c = self.ctx;
        let tenant = &c.tenant_id;
        act.resource = "tasks".to_string();
        // A delegated task is more model work: a spent budget refuses it.
        let now = now_ms();
        if let Some(e) = self
            .state
            .budget_exceeded(tenant, c.project.as_deref(), now)
            .await?
        {
            self.announce(&e);
            return Err(budget_error(&e, now));
        }
        if p.prompt.trim().is_empty() {
            return Err(invalid("prompt", "must not be empty"));
        }
        let spec = json!({ "prompt": p.prompt });
        cflow_agents::proto::check_task_spec(&spec).map_err(|why| invalid("prompt", why))?;
        let priority = p.priority.unwrap_or(core_task::DEFAULT_PRIORITY);
        core_task::priority(priority)?;
        let (swarm, members) = self.state.sched.delegation_targets(tenant, &c.agent_id)?;
        let fits = |t: &&crate::sched::DelegationTarget| {
            MODEL_DRIVERS.contains(&t.driver.as_str())
                && p.agent_type
                    .as_ref()
                    .is_none_or(|ty| *ty == t.agent_type || t.capabilities.contains(ty))
        };
        let candidates: Vec<_> = members.iter().filter(fits).collect();
        let wanted = p
            .agent_type
            .as_deref()
            .map_or("model agent".to_string(), |t| {
                format!("model agent of type or capability '{t}'")
            });
        if candidates.is_empty() {
            let mut types: Vec<&str> = members
                .iter()
                .filter(|t| MODEL_DRIVERS.contains(&t.driver.as_str()))
                .map(|t| t.agent_type.as_str())
                .collect();
            types.sort_unstable();
            types.dedup();
            return Err(invalid(
                "agent_type",
                format!(
                    "swarm '{swarm}' has no other live {wanted} (model agent types there: {})",
                    if types.is_empty() {
                        "none".to_string()
                    } else {
                        types.join(", ")
                    }
                ),
            ));
        }
        let Some(target) = candidates
            .iter()
            .filter(|t| t.allowed)
            .min_by_key(|t| t.busy)
        else {
            // The topology's own reason, refused (403) like the HTTP delegation.
            self.state.sched.check_interaction(
                tenant,
                &swarm,
                Interaction::Delegate,
                &c.agent_id,
                Some(&candidates[0].agent_id),
            )?;
            return Err(ApiError::forbidden(format!(
                "the swarm's topology lets this agent delegate to no {wanted}"
            )));
        };
        let task = NewTask {
            swarm_id: Some(swarm.clone()),
            priority,
            depends_on: p.depends_on.unwrap_or_default(),
            agent_id: Some(target.agent_id.clone()),
            ..NewTask::new(spec)
        };
        // A delegation is a submission: the tenant's pre-task hooks may refuse or amend it.
        let mut tasks = vec![task];
        crate::hooks::pretask::check(self.state, tenant, &mut tasks).await?;
        let submitted = self
            .state
            .sched
            .submit(&self.actor(), tenant, tasks, Some(&c.agent_id))
            .await?;
        let Some(s) = submitted.into_iter().next() else {
            return Err(ApiError::internal("a submission of one task answered none"));
        };
        self.state.events.publish(
            tenant,
            "task.delegated",
            &s.id,
            json!({
                "parent_task_id": c.task_id,
                "from_agent": c.agent_id,
                "to_agent": target.agent_id,
                "swarm_id": swarm,
            }),
        );
        Ok(json!({
            "task_id": s.id,
            "agent_id": target.agent_id,
            "agent_type": target.agent_type,
            "state": s.state.to_string(),
        }))
    }

    async fn check_budget(&self) -> Result<Value, HostError> {
        let c = self.ctx;
        match self
            .state
            .budget_exceeded(&c.tenant_id, c.project.as_deref(), now_ms())
            .await
        {
            Ok(None) => Ok(json!({ "allowed": true })),
            Ok(Some(e)) => {
                self.announce(&e);
                Err(HostError::Refused(e.to_string()))
            }
            Err(e) => Err(host_error(e)),
        }
    }

    /// Publishes `budget.exceeded` the first time this server sees a budget spent in a period.
    fn announce(&self, e: &BudgetExceeded) {
        let tenant = &self.ctx.tenant_id;
        let first = {
            let mut seen = self.alerted.lock().unwrap_or_else(|p| p.into_inner());
            // Periods that ended cannot be announced again; forget them.
            let now = now_ms();
            seen.retain(|(_, _, resets_at)| *resets_at > now);
            seen.insert((tenant.clone(), e.budget_id.clone(), e.resets_at))
        };
        if first {
            self.state.events.publish(
                tenant,
                "budget.exceeded",
                &e.budget_id,
                json!({
                    "budget": e.which(),
                    "project": e.project,
                    "period": e.period.to_string(),
                    "limit_usd": micros_to_usd(e.limit_micros),
                    "spent_usd": micros_to_usd(e.spent_micros),
                    "resets_at": cflow_core::timefmt::rfc3339(e.resets_at),
                    "task_id": self.ctx.task_id,
                    "agent_id": self.ctx.agent_id,
                }),
            );
        }
    }

    async fn usage(&self, provider: &str, model: &str, tokens: Tokens) -> ApiResult<Value> {
        for (name, value) in [("provider", provider), ("model", model)] {
            if value.is_empty() || value.len() > 256 || value.chars().any(char::is_control) {
                return Err(invalid(
                    name,
                    "must be 1-256 characters without control characters",
                ));
            }
        }
        let c = self.ctx;
        let scope = UsageScope {
            tenant_id: c.tenant_id.clone(),
            project: c.project.clone(),
            swarm_id: c.swarm_id.clone(),
            agent_id: Some(c.agent_id.clone()),
            task_id: Some(c.task_id.clone()),
        };
        let usage = Usage {
            input_tokens: tokens.input_tokens,
            output_tokens: tokens.output_tokens,
            cache_read_tokens: tokens.cache_read_tokens,
            cache_write_tokens: tokens.cache_write_tokens,
        };
        let cost = self
            .state
            .record_usage(&scope, provider, model, &usage)
            .await?;
        // The budgets as this call left them, so the loop need not ask again before its next
        // call: `null` while they allow more, else why not.
        let budget = match self
            .state
            .budget_exceeded(&self.ctx.tenant_id, self.ctx.project.as_deref(), now_ms())
            .await?
        {
            None => Value::Null,
            Some(e) => {
                self.announce(&e);
                Value::String(e.to_string())
            }
        };
        Ok(json!({
            "cost_usd": micros_to_usd(cost.micros),
            "priced": cost.priced,
            "budget": budget,
        }))
    }
}

/// A tool's input, or a refusal saying what it expects.
fn parse<T: DeserializeOwned>(tool: &str, input: Value, expects: &str) -> ApiResult<T> {
    serde_json::from_value(input)
        .map_err(|e| ApiError::bad_request("input", format!("{tool} takes {expects}: {e}")))
}

fn invalid(name: &str, rule: impl Into<String>) -> ApiError {
    ApiError::validation(ValidationError::new(name, rule))
}

/// A validation error renamed to the tool's field.
fn field(name: &str, e: ValidationError) -> ApiError {
    invalid(name, e.rule)
}

fn entry_json(e: MemoryEntry, score: Option<f64>) -> Value {
    let mut v = json!({
        "namespace": e.namespace,
        "key": e.key,
        "value": e.value,
        "version": e.version,
        "updated_at": cflow_core::timefmt::rfc3339(e.updated_at),
        "expires_at": e.expires_at.map(cflow_core::timefmt::rfc3339),
    });
    if let Some(s) = score {
        v["score"] = json!(s);
    }
    v
}

/// What the worker (and the model) sees of a failed call: the refusal's text with the field it
/// is about, or, for a server fault, only that the call may be retried.
fn host_error(e: ApiError) -> HostError {
    let p = *e.0;
    if p.status.is_server_error() {
        if p.kind == ProblemKind::Unavailable {
            return HostError::Unavailable(p.detail);
        }
        tracing::error!(
            detail = p.internal.as_deref().unwrap_or(&p.detail),
            "a model-loop call failed"
        );
        return HostError::Unavailable(
            "the server failed to serve the call; it may be retried".to_string(),
        );
    }
    HostError::Refused(match p.field {
        Some(f) if !p.detail.contains(&f) => format!("{f}: {}", p.detail),
        _ => p.detail,
    })
}
