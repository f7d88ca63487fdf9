//! The records and parameters of orchestration storage: swarms, agents, tasks and attempts.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use cflow_core::balance::Strategy;
use cflow_core::task::TaskState;
use cflow_core::topology::Topology;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Parses the snake_case names of a state enum, for reading rows back.
macro_rules! named_states {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    other => Err(format!("unknown {} '{other}'", stringify!($ty))),
                }
            }
        }
    };
}

/// A swarm's lifecycle. `stopped` is final: a stopped swarm takes no agents and cannot resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwarmState {
    Active,
    Paused,
    Stopped,
}
named_states!(SwarmState { Active => "active", Paused => "paused", Stopped => "stopped" });

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Swarm {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub topology: Topology,
    pub project: Option<String>,
    pub max_agents: i64,
    pub state: SwarmState,
    /// How the scheduler picks among eligible agents of this swarm.
    pub strategy: Strategy,
    /// The agent pools (per type) the autoscaler keeps between `min` and `max`.
    pub pools: Vec<AgentPool>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Per swarm and agent type: how many agents, of what kind, recycled when. The autoscaler keeps
/// the pool's live agents between `min` and `max`, with `prewarm` idle ones ready beyond demand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPool {
    pub agent_type: String,
    pub driver: String,
    /// Empty: the type's default capabilities.
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub min: i64,
    pub max: i64,
    #[serde(default)]
    pub prewarm: i64,
    /// Replace an agent after it finished this many tasks (`None`: never).
    #[serde(default)]
    pub recycle_after_tasks: Option<i64>,
    /// Replace an agent after a failed attempt.
    #[serde(default)]
    pub recycle_on_failure: bool,
    /// `llm` pools: the swarm's override of the type's role prompt (stored in the pools' JSON,
    /// so pools written before it existed read as `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
}

/// What to create with [`crate::Store::create_swarm`].
#[derive(Debug, Clone)]
pub struct NewSwarm {
    pub name: String,
    pub topology: Topology,
    pub project: Option<String>,
    /// 1 to [`MAX_AGENTS_PER_SWARM`].
    pub max_agents: i64,
    pub strategy: Strategy,
    /// At most one pool per agent type; `min` ≤ `max` ≤ `max_agents`.
    pub pools: Vec<AgentPool>,
}

/// The most agents one swarm may hold.
pub const MAX_AGENTS_PER_SWARM: i64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    Starting,
    Idle,
    Busy,
    Draining,
    Stopped,
    Failed,
    Quarantined,
}
named_states!(AgentState {
    Starting => "starting",
    Idle => "idle",
    Busy => "busy",
    Draining => "draining",
    Stopped => "stopped",
    Failed => "failed",
    Quarantined => "quarantined",
});

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub id: String,
    pub tenant_id: String,
    pub swarm_id: String,
    pub agent_type: String,
    pub driver: String,
    pub capabilities: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub state: AgentState,
    pub tasks_done: i64,
    pub failures: i64,
    /// Time spent on attempts, summed when each attempt ends.
    pub busy_ms: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// Sandbox policy overrides for this agent's attempts (JSON, as given); `None` for the
    /// tenant's or the platform's defaults.
    #[serde(default)]
    pub sandbox: Option<Value>,
}

/// What to create with [`crate::Store::create_agent`]; it starts in `starting`.
#[derive(Debug, Clone)]
pub struct NewAgent {
    pub agent_type: String,
    pub driver: String,
    pub capabilities: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Sandbox policy overrides (JSON, stored as given); `None` for the defaults.
    pub sandbox: Option<Value>,
}

/// One task of a bulk submission.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// A name for the task inside this submission, so that other tasks of the submission can
    /// depend on it before it has an id. `depends_on` entries match these first, then existing
    /// task ids of the tenant.
    pub local_id: Option<String>,
    pub swarm_id: Option<String>,
    /// Driver-specific (a command, a prompt…); stored as given.
    pub spec: Value,
    pub priority: i64,
    pub requires: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub depends_on: Vec<String>,
    /// A preferred agent (sticky): the task waits for it while it is alive and eligible.
    pub agent_id: Option<String>,
    pub timeout_seconds: i64,
    pub max_attempts: i64,
    pub replicas: i64,
    pub quorum: i64,
    pub idempotency_key: Option<String>,
}

impl NewTask {
    /// A task with this spec and every other field at its default.
    pub fn new(spec: Value) -> Self {
        use cflow_core::task as t;
        NewTask {
            local_id: None,
            swarm_id: None,
            spec,
            priority: t::DEFAULT_PRIORITY,
            requires: Vec::new(),
            labels: BTreeMap::new(),
            depends_on: Vec::new(),
            agent_id: None,
            timeout_seconds: t::DEFAULT_TIMEOUT_SECONDS,
            max_attempts: t::DEFAULT_MAX_ATTEMPTS,
            replicas: 1,
            quorum: 1,
            idempotency_key: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub tenant_id: String,
    pub swarm_id: Option<String>,
    pub spec: Value,
    pub priority: i64,
    pub requires: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Every dependency as submitted, resolved to task ids.
    pub depends_on: Vec<String>,
    /// The preferred (sticky) agent.
    pub agent_id: Option<String>,
    /// For a replica of a `replicas: n` task: the parent task and this replica's index (0-based).
    pub replica_of: Option<String>,
    pub replica_index: Option<i64>,
    pub timeout_ms: i64,
    pub max_attempts: i64,
    pub replicas: i64,
    pub quorum: i64,
    pub idempotency_key: Option<String>,
    pub state: TaskState,
    /// Why the task ended as it did, when the store knows (`dependency X failed`, `cancelled`).
    pub reason: Option<String>,
    /// Attempts started so far (assignments).
    pub attempts: i64,
    /// The epoch of the latest assignment (0 before the first); reports must carry it.
    pub epoch: i64,
    /// Dependencies that have not yet succeeded.
    pub unmet: i64,
    /// For a task waiting in `pending` on a retry: when it may be queued again.
    pub retry_at: Option<i64>,
    /// For a quorum parent that ended: the vote, `{"output", "quorum": {"agreeing", "groups"}}`.
    pub result: Option<Value>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The answer to a bulk submission, in submission order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub id: String,
    pub state: TaskState,
    /// `true` when the idempotency key named a task that already existed, whose id this is.
    pub existing: bool,
}

/// Which tasks [`crate::Store::list_tasks`] returns.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub state: Option<TaskState>,
    pub swarm_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptState {
    Assigned,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    /// The lease expired: the worker went silent.
    Lost,
    Cancelled,
}
named_states!(AttemptState {
    Assigned => "assigned",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    TimedOut => "timed_out",
    Lost => "lost",
    Cancelled => "cancelled",
});

/// The record of one attempt, kept for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub task_id: String,
    pub epoch: i64,
    pub attempt_no: i64,
    pub agent_id: String,
    pub worker_id: String,
    pub state: AttemptState,
    pub lease_expires_at: i64,
    pub assigned_at: i64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub exit_code: Option<i64>,
    pub stdout_tail: Option<String>,
    pub stderr_tail: Option<String>,
    pub result: Option<Value>,
    /// What the worker saw of the attempt's ending (JSON): `end`, `isolation`, `sandbox`.
    #[serde(default)]
    pub detail: Option<Value>,
}

/// How an attempt ended, as its worker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    Succeeded,
    /// `retryable: false` for failures another attempt cannot fix.
    Failed {
        retryable: bool,
    },
    TimedOut,
}

/// A worker's report that an attempt ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub kind: OutcomeKind,
    pub exit_code: Option<i64>,
    /// Capped to the last [`OUTPUT_TAIL_BYTES`] bytes when stored (truncation marked).
    pub stdout_tail: String,
    pub stderr_tail: String,
    pub result: Option<Value>,
    /// How the attempt ended and what its sandbox saw (JSON), stored on the attempt as given.
    pub detail: Option<Value>,
}

/// Most bytes of each output stream kept on an attempt record.
pub const OUTPUT_TAIL_BYTES: usize = 64 * 1024;

/// What an ended attempt did to its task and the tasks depending on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    /// The task's new state (`pending` waiting on a retry, `queued` again, or terminal).
    pub state: TaskState,
    /// Dependents queued because their last dependency just succeeded.
    pub queued: Vec<String>,
    /// Dependents (transitively) cancelled because this task did not succeed.
    pub cancelled: Vec<String>,
    /// For a replica whose ending decided its parent's vote: the parent and its new state
    /// (`succeeded` or `failed`). The parent's own dependents are in `queued` / `cancelled`.
    pub parent: Option<(String, TaskState)>,
    /// Live attempts (the other replicas once the vote is decided) whose processes must now be
    /// killed; their attempts are already `cancelled`.
    pub kill: Vec<Kill>,
    /// The answer to the completion's hand-over ([`CompleteRequest::next`]): the new attempt,
    /// or why the store refused it (the task is no longer queued, the agent or its swarm no
    /// longer takes tasks). `None` when the completion asked for none.
    pub next: Option<std::result::Result<Attempt, String>>,
}

/// A live attempt that the store cancelled and whose process the scheduler must kill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kill {
    pub task_id: String,
    pub worker_id: String,
    pub epoch: i64,
}

/// An attempt whose lease ran out, from [`crate::Store::expired_leases`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredLease {
    pub task_id: String,
    pub tenant_id: String,
    pub epoch: i64,
    pub agent_id: String,
    pub worker_id: String,
    pub lease_expires_at: i64,
}

/// The answer to [`crate::Store::cancel_task`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    /// The attempts that were live and whose processes must now be killed: the task's own, or
    /// for a quorum parent its replicas'.
    pub kill: Vec<Kill>,
    /// Dependents cancelled with it.
    pub dependents: Vec<String>,
}

/// A durable message between agents of a swarm: direct (`to_agent`) or on a topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Grows with every message of the store; inbox reads page with `after`.
    pub id: i64,
    pub tenant_id: String,
    pub swarm_id: String,
    pub from_agent: String,
    pub to_agent: Option<String>,
    pub topic: Option<String>,
    pub body: Value,
    pub created_at: i64,
}

/// What [`crate::Store::send_message`] stores; exactly one of `to_agent` and `topic`.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub swarm_id: String,
    pub from_agent: String,
    pub to_agent: Option<String>,
    pub topic: Option<String>,
    pub body: Value,
}

/// A tenant's share of the scheduler: its fair-share `weight` (1–1000, default 1) and the most
/// tasks it may have running at once (`None`: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantQuota {
    pub weight: i64,
    pub max_running: Option<i64>,
}

impl Default for TenantQuota {
    fn default() -> Self {
        Self {
            weight: 1,
            max_running: None,
        }
    }
}

/// A live attempt with what the scheduler needs to rebuild its state after a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveAttempt {
    pub task: Task,
    pub attempt: Attempt,
}

/// One element of [`crate::Store::assign_tasks`]; see [`crate::Store::assign_task`].
#[derive(Debug, Clone)]
pub struct AssignRequest {
    pub task_id: String,
    pub agent_id: String,
    pub worker_id: String,
    pub lease_ms: i64,
    pub now: i64,
}

/// An offer to start a new task at once: the scheduler reserved an idle agent for it before
/// submitting (see [`crate::Store::submit_tasks_direct`]). The task is created with `task_id`
/// and, when the agent can still take it, assigned in the same transaction as its submission.
#[derive(Debug, Clone)]
pub struct DirectAssign {
    /// The new task's id (a UUIDv7 made by the caller; unused when an idempotency key names an
    /// existing task).
    pub task_id: String,
    pub agent_id: String,
    pub worker_id: String,
    pub lease_ms: i64,
}

/// One element of [`crate::Store::start_attempts`]; see [`crate::Store::start_attempt`].
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub task_id: String,
    pub epoch: i64,
    /// When the attempt started (recorded as its `started_at`, never before its assignment).
    pub now: i64,
}

/// One element of [`crate::Store::complete_attempts`]; see [`crate::Store::complete_attempt`].
#[derive(Debug, Clone)]
pub struct CompleteRequest {
    pub task_id: String,
    pub epoch: i64,
    pub outcome: Outcome,
    pub now: i64,
    /// The worker's start report came with this completion, saying the attempt started at
    /// this time: the completion records it (never before the assignment, never after `now`)
    /// instead of a start op (and ledger entry) of its own.
    pub started_at: Option<i64>,
    /// The agent's next task, assigned in the same transaction if (and only if) this
    /// completion is accepted: a hand-over, one commit where a completion and a separate
    /// assignment would take two in a row. Its answer is [`Settled::next`].
    pub next: Option<NextAssign>,
}

/// The assignment a completion hands its agent over to (see [`CompleteRequest::next`]): checked
/// and recorded exactly as [`crate::Store::assign_tasks`] would, at the completion's time.
#[derive(Debug, Clone)]
pub struct NextAssign {
    pub task_id: String,
    pub agent_id: String,
    pub worker_id: String,
    pub lease_ms: i64,
}

/// Where [`crate::Store::ready_tasks_after`] resumes: the queue order's key of the last task of
/// the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyCursor {
    pub priority: i64,
    pub created_at: i64,
    pub id: String,
}

impl ReadyCursor {
    pub fn of(task: &Task) -> Self {
        Self {
            priority: task.priority,
            created_at: task.created_at,
            id: task.id.clone(),
        }
    }
}

/// An artifact an attempt's worker uploads with [`crate::Store::put_artifact`].
#[derive(Clone)]
pub struct ArtifactPut {
    pub task_id: String,
    pub epoch: i64,
    /// The worker that must hold the attempt `(task_id, epoch)`.
    pub worker_id: String,
    /// A relative path (see `cflow_core::validate::artifact_name`).
    pub name: String,
    /// `patch`, `file` or `log`.
    pub kind: String,
    pub bytes: Vec<u8>,
    pub now: i64,
}

impl fmt::Debug for ArtifactPut {
    // The content may be megabytes: its size is what a log needs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArtifactPut")
            .field("task_id", &self.task_id)
            .field("epoch", &self.epoch)
            .field("worker_id", &self.worker_id)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("size", &self.bytes.len())
            .field("now", &self.now)
            .finish()
    }
}

/// A stored artifact, without its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactMeta {
    pub task_id: String,
    pub epoch: i64,
    pub attempt_no: i64,
    pub name: String,
    pub kind: String,
    /// Lowercase hex SHA-256 of the content; the content's address.
    pub sha256: String,
    pub size: i64,
    pub created_at: i64,
}
