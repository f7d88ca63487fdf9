//! The tools' parameters: their doc comments and attributes are the JSON schemas and field
//! descriptions a model sees.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Topology {
    Mesh,
    Hierarchical,
    Ring,
    Star,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    WeightedRoundRobin,
    LeastLoaded,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
pub enum Driver {
    #[serde(rename = "exec")]
    Exec,
    #[serde(rename = "noop")]
    Noop,
    #[serde(rename = "claude-code")]
    ClaudeCode,
    #[serde(rename = "llm")]
    Llm,
}

/// A pool of agents of one type in a swarm.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// The agents' type, e.g. "coder", "tester", "reviewer".
    #[serde(rename = "type")]
    pub agent_type: String,
    /// What runs the agents' tasks: exec (shell commands), claude-code or llm (model prompts),
    /// noop (benchmarks). Required when creating a pool; omit it in swarm_scale to keep it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<Driver>,
    /// Agents kept at least (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    /// Agents at most (default max(min, 1)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// Spare idle agents kept ready (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prewarm: Option<u32>,
    /// Capabilities the agents offer (a task's `requires` must be a subset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
    /// Labels of the agents (tasks may pin labels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// System prompt replacing the role prompt (llm pools only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SwarmInitParams {
    /// A name unique in the tenant.
    pub name: String,
    /// Who may message and delegate to whom.
    pub topology: Topology,
    /// How an agent is picked among eligible ones (default weighted_round_robin).
    pub strategy: Option<Strategy>,
    /// Upper bound on the swarm's agents, 1–10000 (default 100).
    #[schemars(range(min = 1, max = 10000))]
    pub max_agents: Option<u32>,
    /// Project the swarm belongs to.
    pub project: Option<String>,
    /// Pools of agents; each pool's `min` agents are spawned at once. Without pools the swarm
    /// has no agents and runs nothing until agent_spawn or swarm_scale adds some.
    pub agents: Option<Vec<Pool>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    /// Items per page, 1–1000 (default 100).
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SwarmIdParams {
    /// The swarm's id (from swarm_init or swarm_list).
    pub swarm_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SwarmScaleParams {
    /// The swarm's id.
    pub swarm_id: String,
    /// The pool to create (driver required) or update (absent fields keep their values).
    pub pool: Pool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSpawnParams {
    /// The swarm's id.
    pub swarm_id: String,
    /// The agent's type, e.g. "coder".
    #[serde(rename = "type")]
    pub agent_type: String,
    /// What runs its tasks.
    pub driver: Driver,
    /// Capabilities it offers.
    pub capabilities: Option<Vec<String>>,
    /// Its labels.
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentListParams {
    /// Only the agents of this swarm.
    pub swarm_id: Option<String>,
    /// Only agents in this state (idle, busy, draining, stopped, quarantined, …).
    pub state: Option<String>,
    /// Items per page, 1–1000 (default 100).
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentIdParams {
    /// The agent's id (from agent_list or swarm_status).
    pub agent_id: String,
}

/// One task of a submission.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskIn {
    /// A name for this task inside the submission, for other tasks' depends_on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_id: Option<String>,
    /// The swarm (id or name) whose agents run it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swarm: Option<String>,
    /// What to run: a shell command {"command": "cargo test"}, a program {"program": "ls",
    /// "args": ["-l"]} (both also take env, cwd, workspace, artifacts, network), or a model task
    /// {"prompt": "…", "model"?, "max_turns"?, "allowed_tools"?, …}. Commands go to exec agents,
    /// prompts to claude-code or llm agents.
    pub spec: Value,
    /// 0–100 (default 50); higher runs first.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub priority: Option<u8>,
    /// Capabilities the agent must have.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requires: Option<Vec<String>>,
    /// Labels the agent or worker must carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// local_ids of this submission or existing task ids that must succeed first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<Vec<String>>,
    /// Pin the task to this agent id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// 1–86400 (default 3600).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: Option<u32>,
    /// 1–20 (default 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 20))]
    pub max_attempts: Option<u32>,
    /// Run n copies and vote on the output, 1–9 (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 9))]
    pub replicas: Option<u32>,
    /// Copies that must agree (default: a majority of replicas).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u32>,
    /// Submitting again with the same key returns the existing task instead of a new one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskSubmitParams {
    /// One task, or several forming a DAG through local_id / depends_on. All or nothing.
    #[schemars(length(min = 1))]
    pub tasks: Vec<TaskIn>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskIdParams {
    /// The task's id (from task_submit or task_list).
    pub task_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskListParams {
    /// Only tasks in this state: pending, queued, assigned, running, succeeded, failed,
    /// cancelled, timed_out.
    pub state: Option<String>,
    /// Only tasks of this swarm.
    pub swarm_id: Option<String>,
    /// Items per page, 1–1000 (default 100).
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskWaitParams {
    /// The task's id.
    pub task_id: String,
    /// How long to wait at most, 1–600 seconds (default 60).
    #[schemars(range(min = 1, max = 600))]
    pub timeout_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryStoreParams {
    /// Namespace, e.g. "project/web" ('/'-separated segments; "search" is reserved).
    pub namespace: String,
    /// The key inside the namespace.
    pub key: String,
    /// Any JSON value.
    pub value: Value,
    /// Delete the entry after this many seconds.
    pub ttl_seconds: Option<u64>,
    /// Tags for filtering and search.
    pub tags: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryKeyParams {
    /// The namespace.
    pub namespace: String,
    /// The key.
    pub key: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryListParams {
    /// The namespace.
    pub namespace: String,
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// Items per page, 1–1000 (default 100).
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemorySearchParams {
    /// Words to search for in keys, values and tags (full text).
    pub query: String,
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Results at most, 1–1000 (default 100).
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageSendParams {
    /// The swarm's id.
    pub swarm_id: String,
    /// The sending agent (a member of the swarm).
    pub from: String,
    /// The receiving agent, for a direct message (give `to` or `topic`).
    pub to: Option<String>,
    /// A topic (1–64 of A-Z a-z 0-9 . _ -), for every reader of it.
    pub topic: Option<String>,
    /// Any JSON value.
    pub body: Value,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageInboxParams {
    /// Read the direct messages of this agent (give `agent_id`, or `swarm_id` and `topic`).
    pub agent_id: Option<String>,
    /// The swarm of `topic`.
    pub swarm_id: Option<String>,
    /// Read the messages of this topic.
    pub topic: Option<String>,
    /// Only messages with an id above this one (the last id you saw).
    pub after: Option<i64>,
    /// Messages at most, 1–1000 (default 100).
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQueryParams {
    /// Only entries at or after this RFC 3339 time.
    pub since: Option<String>,
    /// Items per page, 1–1000 (default 100).
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CostBy {
    Tenant,
    Project,
    Swarm,
    Agent,
    Task,
    Model,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CostReportParams {
    /// Group by (default tenant).
    pub by: Option<CostBy>,
    /// Calls at or after this time: RFC 3339 or a date (midnight UTC).
    pub since: Option<String>,
    /// Calls before this time: RFC 3339 or a date.
    pub until: Option<String>,
}
