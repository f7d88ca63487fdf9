//! The MCP tools of cflow: swarms, agents, tasks, memory, messages, audit and cost. Each tool
//! maps to one or more requests of the HTTP API (docs/http-api.md) through [`Api`]; an answer
//! the API refuses is a tool error (`is_error: true`) whose text says what was wrong and what to
//! do, never a protocol error (only arguments that do not fit a tool's schema are those).

use crate::params::*;
use crate::{Api, ApiFailure, ApiRequest};
use cflow_core::Action;
use http::Method;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::handler::server::{router::tool::ToolRouter, wrapper::Parameters};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    InitializeResult, ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams,
    ProgressNotificationParam, ReadResourceRequestParams, ReadResourceResponse, RequestMetaObject,
    ServerCapabilities,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, Peer, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::task::TaskTracker;

type ToolResult = Result<CallToolResult, ErrorData>;

/// The longest `task_wait` may block, so that a call cannot hold a session forever.
const MAX_WAIT_SECONDS: u64 = 600;
/// How often `task_wait` reads the task.
const WAIT_POLL: Duration = Duration::from_millis(200);
/// The states a task never leaves.
const FINAL_STATES: [&str; 4] = ["succeeded", "failed", "cancelled", "timed_out"];

const INSTRUCTIONS: &str = "cflow orchestrates agents: create a swarm (swarm_init) with pools of agents, submit tasks \
(task_submit: a command {\"command\": \"…\"} or a model prompt {\"prompt\": \"…\"}, alone or as a DAG), \
wait for them (task_wait) and read what they produced (task_result). memory_* is durable, namespaced \
key-value memory with full-text search shared by every session of the tenant.";

/// The tools, over any [`Api`].
pub struct CflowTools<A: Api> {
    api: Arc<A>,
    tool_router: ToolRouter<Self>,
    /// The `mcp.call` ledger writes still in flight (see [`CflowTools::record`]).
    records: TaskTracker,
}

// ---- helpers ----------------------------------------------------------------------------------

fn ok(v: &Value) -> ToolResult {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    Ok(CallToolResult::success(vec![ContentBlock::text(text)]))
}

fn tool_error(message: impl Into<String>) -> ToolResult {
    Ok(CallToolResult::error(vec![ContentBlock::text(message)]))
}

/// A refusal as a tool error; `not_found` is what to do when the resource does not exist.
fn failed(f: ApiFailure, not_found: &str) -> ToolResult {
    let mut message = f.message;
    if f.status == Some(404) && !not_found.is_empty() {
        message.push_str(" — ");
        message.push_str(not_found);
    }
    tool_error(message)
}

fn to_body(v: &impl Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn enum_str(v: &impl Serialize) -> Option<String> {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
}

const SWARM_404: &str = "list the swarms with swarm_list";
const AGENT_404: &str = "list the agents with agent_list";
const TASK_404: &str = "list the tasks with task_list";
const MEMORY_404: &str = "list the namespace's keys with memory_list or search with memory_search";

impl<A: Api> CflowTools<A> {
    async fn call(&self, req: ApiRequest, not_found: &str) -> ToolResult {
        match self.api.send(req).await {
            Ok(v) => ok(&v),
            Err(f) => failed(f, not_found),
        }
    }

    async fn swarm_action(&self, id: &str, action: &str) -> ToolResult {
        self.call(
            ApiRequest::post(&["swarms", id, action], Action::SwarmWrite),
            SWARM_404,
        )
        .await
    }

    /// Appends the call's `mcp.call` ledger entry (as the caller) in the background, after the
    /// answer: a durable ledger write costs a commit, which a read tool should not wait for.
    /// The API requests the tool made were audited by their own routes before it answered; only
    /// this summary entry can be lost, if the process dies within the commit after the answer
    /// (the transports wait for in-flight entries when they stop). A call whose arguments did
    /// not fit the tool's schema is a protocol error and recorded as a failure too.
    fn record(
        &self,
        parts: Option<http::request::Parts>,
        tool: &str,
        arguments: Option<Value>,
        response: &Result<CallToolResponse, ErrorData>,
        started: Instant,
    ) {
        let error = match response {
            Ok(CallToolResponse::Complete(r)) if r.is_error == Some(true) => Some(
                r.content
                    .iter()
                    .filter_map(|c| c.as_text().map(|t| t.text.clone()))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            Ok(_) => None,
            Err(e) => Some(e.message.to_string()),
        };
        let transport = if parts.is_some() { "http" } else { "stdio" };
        let body = json!({
            "tool": tool,
            "transport": transport,
            "ok": error.is_none(),
            "error": error,
            "duration_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "arguments": arguments,
        });
        let api = self.api.clone();
        self.records.spawn(crate::with_request(parts, async move {
            let _ = api
                .send(ApiRequest::post(&["mcp", "calls"], Action::Whoami).body(body))
                .await;
        }));
    }

    fn page(req: ApiRequest, limit: Option<u32>, cursor: Option<String>) -> ApiRequest {
        req.query("limit", limit).query("cursor", cursor)
    }
}

// ---- tools ------------------------------------------------------------------------------------

#[tool_router]
impl<A: Api> CflowTools<A> {
    pub fn new(api: A) -> Self {
        Self::from_arc(Arc::new(api))
    }

    /// The tools over a shared `api` (one per MCP session; cheap).
    pub fn from_arc(api: Arc<A>) -> Self {
        Self::with_records(api, TaskTracker::new())
    }

    /// The tools over `api`, tracking their ledger writes in `records` (shared by the sessions
    /// of a transport, which waits for it when it stops).
    pub fn with_records(api: Arc<A>, records: TaskTracker) -> Self {
        Self {
            api,
            records,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Create a swarm: a named group of agents with a topology (who may message whom) and pools of agents by type and driver. Use driver exec for shell commands, claude-code or llm for model prompts. Returns the swarm with its id.",
        annotations(
            title = "Create a swarm",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn swarm_init(&self, Parameters(p): Parameters<SwarmInitParams>) -> ToolResult {
        let mut body = json!({"name": p.name, "topology": p.topology});
        let m = body.as_object_mut().expect("object");
        if let Some(s) = p.strategy {
            m.insert("strategy".into(), to_body(&s));
        }
        if let Some(n) = p.max_agents {
            m.insert("max_agents".into(), n.into());
        }
        if let Some(pr) = p.project {
            m.insert("project".into(), pr.into());
        }
        if let Some(a) = p.agents {
            m.insert("agents".into(), to_body(&a));
        }
        self.call(
            ApiRequest::post(&["swarms"], Action::SwarmWrite).body(body),
            "",
        )
        .await
    }

    #[tool(
        description = "List the tenant's swarms with their state, pools and live numbers (queued, running, agents by state).",
        annotations(
            title = "List swarms",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn swarm_list(&self, Parameters(p): Parameters<PageParams>) -> ToolResult {
        let req = Self::page(
            ApiRequest::get(&["swarms"], Action::SwarmRead),
            p.limit,
            p.cursor,
        );
        self.call(req, "").await
    }

    #[tool(
        description = "Show one swarm: state (active, paused, stopped), pools, queued and running tasks, agents by state.",
        annotations(
            title = "Swarm status",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn swarm_status(&self, Parameters(p): Parameters<SwarmIdParams>) -> ToolResult {
        self.call(
            ApiRequest::get(&["swarms", &p.swarm_id], Action::SwarmRead),
            SWARM_404,
        )
        .await
    }

    #[tool(
        description = "Create or update a pool of a swarm (by agent type): min, max, prewarm, driver. Lowering max or min stops surplus idle agents.",
        annotations(
            title = "Scale a swarm",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn swarm_scale(&self, Parameters(p): Parameters<SwarmScaleParams>) -> ToolResult {
        self.call(
            ApiRequest::post(&["swarms", &p.swarm_id, "scale"], Action::SwarmWrite)
                .body(to_body(&p.pool)),
            SWARM_404,
        )
        .await
    }

    #[tool(
        description = "Pause a swarm: no new task is assigned to its agents until swarm_resume; running tasks finish.",
        annotations(
            title = "Pause a swarm",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn swarm_pause(&self, Parameters(p): Parameters<SwarmIdParams>) -> ToolResult {
        self.swarm_action(&p.swarm_id, "pause").await
    }

    #[tool(
        description = "Resume a paused swarm: its agents take tasks again. A stopped swarm cannot be resumed.",
        annotations(
            title = "Resume a swarm",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn swarm_resume(&self, Parameters(p): Parameters<SwarmIdParams>) -> ToolResult {
        self.swarm_action(&p.swarm_id, "resume").await
    }

    #[tool(
        description = "Stop a swarm for good: its agents are stopped and it takes no more tasks. This cannot be undone.",
        annotations(
            title = "Stop a swarm",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn swarm_stop(&self, Parameters(p): Parameters<SwarmIdParams>) -> ToolResult {
        self.swarm_action(&p.swarm_id, "stop").await
    }

    #[tool(
        description = "Add one agent to a swarm, with its type and driver (exec for commands, claude-code or llm for prompts).",
        annotations(
            title = "Spawn an agent",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn agent_spawn(&self, Parameters(p): Parameters<AgentSpawnParams>) -> ToolResult {
        let mut body = json!({"type": p.agent_type, "driver": p.driver});
        let m = body.as_object_mut().expect("object");
        if let Some(c) = p.capabilities {
            m.insert("capabilities".into(), to_body(&c));
        }
        if let Some(l) = p.labels {
            m.insert("labels".into(), to_body(&l));
        }
        self.call(
            ApiRequest::post(&["swarms", &p.swarm_id, "agents"], Action::SwarmWrite).body(body),
            SWARM_404,
        )
        .await
    }

    #[tool(
        description = "List agents (of one swarm or all) with their state, current task, counters and circuit breaker.",
        annotations(
            title = "List agents",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn agent_list(&self, Parameters(p): Parameters<AgentListParams>) -> ToolResult {
        let req = ApiRequest::get(&["agents"], Action::SwarmRead)
            .query("swarm", p.swarm_id)
            .query("state", p.state);
        self.call(Self::page(req, p.limit, p.cursor), "").await
    }

    #[tool(
        description = "Show one agent: state, current task, tasks done, failures, breaker, worker.",
        annotations(
            title = "Agent status",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn agent_status(&self, Parameters(p): Parameters<AgentIdParams>) -> ToolResult {
        self.call(
            ApiRequest::get(&["agents", &p.agent_id], Action::SwarmRead),
            AGENT_404,
        )
        .await
    }

    #[tool(
        description = "Stop an agent: it drains (its running task finishes) and takes no more tasks.",
        annotations(
            title = "Stop an agent",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn agent_stop(&self, Parameters(p): Parameters<AgentIdParams>) -> ToolResult {
        self.call(
            ApiRequest::post(&["agents", &p.agent_id, "stop"], Action::SwarmWrite),
            AGENT_404,
        )
        .await
    }

    #[tool(
        description = "Submit one task or a DAG of tasks (all or nothing). Each task names its swarm and a spec: {\"command\": \"…\"} runs a shell command on an exec agent, {\"prompt\": \"…\"} a model task on a claude-code or llm agent. Tasks of one submission depend on each other with local_id / depends_on. Returns the ids; follow them with task_wait and task_result.",
        annotations(
            title = "Submit tasks",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn task_submit(&self, Parameters(p): Parameters<TaskSubmitParams>) -> ToolResult {
        if p.tasks.is_empty() {
            return tool_error(
                "tasks is empty — give at least one task, e.g. {\"swarm\": \"<swarm id>\", \"spec\": {\"command\": \"echo hi\"}}",
            );
        }
        self.call(
            ApiRequest::post(&["tasks"], Action::TaskSubmit).body(json!({"tasks": p.tasks})),
            "",
        )
        .await
    }

    #[tool(
        description = "Show one task: state, reason, result and every attempt (agent, worker, exit, output).",
        annotations(
            title = "Task status",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn task_status(&self, Parameters(p): Parameters<TaskIdParams>) -> ToolResult {
        self.call(
            ApiRequest::get(&["tasks", &p.task_id], Action::TaskRead),
            TASK_404,
        )
        .await
    }

    #[tool(
        description = "List tasks, optionally only those in one state or of one swarm, newest pages via cursor.",
        annotations(
            title = "List tasks",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn task_list(&self, Parameters(p): Parameters<TaskListParams>) -> ToolResult {
        let req = ApiRequest::get(&["tasks"], Action::TaskRead)
            .query("state", p.state)
            .query("swarm", p.swarm_id);
        self.call(Self::page(req, p.limit, p.cursor), "").await
    }

    #[tool(
        description = "What a task produced: its state, reason, result (the CFLOW_RESULT object or a model's answer) and the last attempt's exit, stdout and stderr.",
        annotations(
            title = "Task result",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn task_result(&self, Parameters(p): Parameters<TaskIdParams>) -> ToolResult {
        let task = match self
            .api
            .send(ApiRequest::get(&["tasks", &p.task_id], Action::TaskRead))
            .await
        {
            Ok(t) => t,
            Err(f) => return failed(f, TASK_404),
        };
        let mut result = result_of(&task);
        if let Some(artifacts) = crate::resources::artifacts_of(&*self.api, &p.task_id).await {
            result["artifacts"] = artifacts;
        }
        result["logs"] = json!(crate::resources::logs_uri(&p.task_id));
        ok(&result)
    }

    #[tool(
        description = "Wait until a task ends (succeeded, failed, cancelled, timed_out) or the timeout passes (default 60 s, at most 600), then return its result like task_result; each change of state is sent as a progress notification. When it is still running at the timeout, the answer says so (finished: false): call task_wait again.",
        annotations(
            title = "Wait for a task",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn task_wait(
        &self,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
        Parameters(p): Parameters<TaskWaitParams>,
    ) -> ToolResult {
        let secs = p.timeout_seconds.unwrap_or(60).clamp(1, MAX_WAIT_SECONDS);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(secs);
        // When the client asked for progress, each change of state is a notification whose
        // progress is the seconds waited so far (of `secs`), with the state as its message.
        let token = meta.get_progress_token();
        let mut last_state = String::new();
        loop {
            let task = match self
                .api
                .send(ApiRequest::get(&["tasks", &p.task_id], Action::TaskRead))
                .await
            {
                Ok(t) => t,
                Err(f) => return failed(f, TASK_404),
            };
            let state = task["state"].as_str().unwrap_or_default().to_string();
            let finished = FINAL_STATES.contains(&state.as_str());
            if let Some(token) = &token
                && state != last_state
            {
                let waited = started.elapsed().as_secs_f64();
                // A client that went away is noticed by the session; the wait just goes on.
                let _ = peer
                    .notify_progress(
                        ProgressNotificationParam::new(token.clone(), waited)
                            .with_total(secs as f64)
                            .with_message(format!("task {} is {state}", p.task_id)),
                    )
                    .await;
                last_state.clone_from(&state);
            }
            if finished || Instant::now() >= deadline {
                let mut out = result_of(&task);
                out["finished"] = finished.into();
                if !finished {
                    out["note"] = format!(
                        "the task is still {state} after {secs} s; call task_wait again or task_cancel it"
                    )
                    .into();
                }
                return ok(&out);
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    #[tool(
        description = "Cancel a task that has not finished; its waiting dependents are cancelled too and a running attempt is killed.",
        annotations(
            title = "Cancel a task",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn task_cancel(&self, Parameters(p): Parameters<TaskIdParams>) -> ToolResult {
        self.call(
            ApiRequest::post(&["tasks", &p.task_id, "cancel"], Action::TaskCancel),
            TASK_404,
        )
        .await
    }

    #[tool(
        description = "Store a JSON value under namespace/key in the tenant's durable memory (creates or replaces; each write gets a new version). Every session and agent of the tenant can read it.",
        annotations(
            title = "Store memory",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn memory_store(&self, Parameters(p): Parameters<MemoryStoreParams>) -> ToolResult {
        let mut body = json!({"value": p.value});
        let m = body.as_object_mut().expect("object");
        if let Some(t) = p.ttl_seconds {
            m.insert("ttl_seconds".into(), t.into());
        }
        if let Some(tags) = p.tags {
            m.insert("tags".into(), to_body(&tags));
        }
        self.call(
            ApiRequest::new(
                Method::PUT,
                &["memory", &p.namespace, &p.key],
                Action::MemoryWrite,
            )
            .body(body),
            "",
        )
        .await
    }

    #[tool(
        description = "Read one memory entry: its value, version, tags and times.",
        annotations(
            title = "Read memory",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn memory_get(&self, Parameters(p): Parameters<MemoryKeyParams>) -> ToolResult {
        self.call(
            ApiRequest::get(&["memory", &p.namespace, &p.key], Action::MemoryRead),
            MEMORY_404,
        )
        .await
    }

    #[tool(
        description = "List the entries of a namespace (optionally only keys with a prefix), a page at a time.",
        annotations(
            title = "List memory",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn memory_list(&self, Parameters(p): Parameters<MemoryListParams>) -> ToolResult {
        let req = ApiRequest::get(&["memory", &p.namespace], Action::MemoryRead)
            .query("prefix", p.prefix);
        self.call(Self::page(req, p.limit, p.cursor), "").await
    }

    #[tool(
        description = "Full-text search over memory keys, values and tags, best matches first (with a score).",
        annotations(
            title = "Search memory",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn memory_search(&self, Parameters(p): Parameters<MemorySearchParams>) -> ToolResult {
        let req = ApiRequest::get(&["memory", "search"], Action::MemoryRead)
            .query("q", Some(p.query))
            .query("namespace", p.namespace)
            .query("limit", p.limit);
        self.call(req, "").await
    }

    #[tool(
        description = "Delete one memory entry.",
        annotations(
            title = "Delete memory",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn memory_delete(&self, Parameters(p): Parameters<MemoryKeyParams>) -> ToolResult {
        let key = format!("{}/{}", p.namespace, p.key);
        match self
            .api
            .send(ApiRequest::new(
                Method::DELETE,
                &["memory", &p.namespace, &p.key],
                Action::MemoryWrite,
            ))
            .await
        {
            Ok(_) => ok(&json!({"deleted": key})),
            Err(f) => failed(f, MEMORY_404),
        }
    }

    #[tool(
        description = "Send a message from an agent of a swarm to another agent (to) or to a topic. The swarm's topology decides who may message whom.",
        annotations(
            title = "Send a message",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn message_send(&self, Parameters(p): Parameters<MessageSendParams>) -> ToolResult {
        if p.to.is_some() == p.topic.is_some() {
            return tool_error("give exactly one of `to` (an agent id) or `topic`");
        }
        let mut body = json!({"from": p.from, "body": p.body});
        let m = body.as_object_mut().expect("object");
        if let Some(to) = p.to {
            m.insert("to".into(), to.into());
        }
        if let Some(t) = p.topic {
            m.insert("topic".into(), t.into());
        }
        self.call(
            ApiRequest::post(&["swarms", &p.swarm_id, "messages"], Action::MessageSend).body(body),
            SWARM_404,
        )
        .await
    }

    #[tool(
        description = "Read messages: the direct messages of an agent (agent_id) or those of a topic of a swarm (swarm_id and topic), oldest first; pass the last id seen as `after` to read on.",
        annotations(
            title = "Read messages",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn message_inbox(&self, Parameters(p): Parameters<MessageInboxParams>) -> ToolResult {
        let req = match (&p.agent_id, &p.swarm_id, &p.topic) {
            (Some(a), None, None) => ApiRequest::get(&["agents", a, "messages"], Action::SwarmRead),
            (None, Some(s), Some(t)) => {
                ApiRequest::get(&["swarms", s, "topics", t, "messages"], Action::SwarmRead)
            }
            _ => {
                return tool_error(
                    "give either agent_id (an agent's direct messages) or swarm_id and topic (a topic's messages)",
                );
            }
        };
        let req = req.query("after", p.after).query("limit", p.limit);
        self.call(req, "check the id with agent_list or swarm_list")
            .await
    }

    #[tool(
        description = "Read the tamper-evident audit ledger of the tenant (who did what, when, with which outcome), oldest first; admins and auditors only.",
        annotations(
            title = "Query the audit ledger",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn audit_query(&self, Parameters(p): Parameters<AuditQueryParams>) -> ToolResult {
        let req = ApiRequest::get(&["audit"], Action::AuditRead).query("since", p.since);
        self.call(Self::page(req, p.limit, p.cursor), "").await
    }

    #[tool(
        description = "What model calls cost in a period, grouped by tenant, project, swarm, agent, task or model (tokens and USD, most expensive first).",
        annotations(
            title = "Cost report",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn cost_report(&self, Parameters(p): Parameters<CostReportParams>) -> ToolResult {
        let req = ApiRequest::get(&["cost"], Action::CostRead)
            .query("by", p.by.as_ref().and_then(enum_str))
            .query("since", p.since)
            .query("until", p.until);
        self.call(req, "").await
    }
}

/// The parts of a `TaskDetail` that say what the task produced.
fn result_of(task: &Value) -> Value {
    let last = task["attempts"]
        .as_array()
        .and_then(|a| a.last())
        .cloned()
        .unwrap_or(Value::Null);
    json!({
        "id": task["id"],
        "state": task["state"],
        "reason": task["reason"],
        "result": task["result"],
        "attempts": task["attempts"].as_array().map(Vec::len).unwrap_or(0),
        "last_attempt": {
            "exit_code": last["exit_code"],
            "end": last["end"],
            "stdout": last["stdout"],
            "stderr": last["stderr"],
        },
    })
}

#[tool_handler(router = self.tool_router)]
impl<A: Api> ServerHandler for CflowTools<A> {
    fn get_info(&self) -> InitializeResult {
        InitializeResult::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new("cflow", env!("CARGO_PKG_VERSION")))
        .with_instructions(INSTRUCTIONS)
    }

    // Over streamable HTTP, the call runs with the HTTP request that carried it, so that the
    // server's `Api` answers it with that request's credentials.
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let parts = context.extensions.get::<http::request::Parts>().cloned();
        let for_record = parts.clone();
        crate::with_request(parts, async move {
            let started = Instant::now();
            let tool = request.name.to_string();
            let arguments = request.arguments.clone().map(Value::Object);
            let tcc = ToolCallContext::new(self, request, context);
            let response = self.tool_router.call(tcc).await;
            self.record(for_record, &tool, arguments, &response, started);
            response
        })
        .await
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let parts = context.extensions.get::<http::request::Parts>().cloned();
        let cursor = request.and_then(|r| r.cursor);
        crate::with_request(parts, crate::resources::list(&*self.api, cursor)).await
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(crate::resources::templates())
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let parts = context.extensions.get::<http::request::Parts>().cloned();
        crate::with_request(parts, crate::resources::read(&*self.api, &request.uri))
            .await
            .map(Into::into)
    }
}
