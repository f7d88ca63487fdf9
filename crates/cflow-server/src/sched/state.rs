//! The scheduler's in-memory state and the matching of a queued task to an (agent, worker)
//! pair. Nothing here does IO: `mod.rs` commits to the store and then calls these methods.

use cflow_sandbox::host::{LimitsPatch, Settings};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use cflow_agents::proto::{Assignment, Held};
use cflow_core::balance::{Balancer, Candidate, Strategy};
use cflow_core::breaker::{CircuitBreaker, Permit};
use cflow_core::fairshare::FairQueue;
use cflow_core::topology::{Member, TopologyGraph};
use cflow_store::{Agent, AgentState, Attempt, Swarm, SwarmState, Task};
use serde_json::Value;
use tokio::sync::Notify;

/// How many eligible agents are offered to the balancer per pick: enough to spread work, few
/// enough that a swarm of 10,000 idle agents costs no more than a small one.
const CANDIDATES: usize = 32;

/// A queued task as the dispatcher needs it.
#[derive(Debug, Clone)]
pub(crate) struct QTask {
    pub id: String,
    pub tenant: String,
    pub swarm: Option<String>,
    pub priority: i64,
    pub requires: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub agent_id: Option<String>,
    pub replica_of: Option<String>,
    pub spec: Arc<Value>,
    pub timeout_ms: i64,
    /// Attempts made before this queueing.
    pub attempts: i64,
    pub depends_on: Vec<String>,
    pub enqueued_at: i64,
    /// A prompt for a model agent (`claude-code`, `llm`) rather than a command (`exec`).
    pub model: bool,
    /// Tasks with the same class are interchangeable for eligibility (same swarm, needs, pins).
    pub class: u64,
}

/// Whether an agent with this driver can run a model task (`model`) or a command: prompts go to
/// model drivers, commands to `exec`; `noop` (benchmarks) takes anything.
pub(crate) fn driver_fits(driver: &str, model: bool) -> bool {
    match driver {
        "noop" => true,
        "claude-code" | "llm" => model,
        _ => !model,
    }
}

impl QTask {
    pub fn from_task(t: &Task, now: i64) -> Self {
        let mut q = QTask {
            id: t.id.clone(),
            tenant: t.tenant_id.clone(),
            swarm: t.swarm_id.clone(),
            priority: t.priority,
            requires: t.requires.clone(),
            labels: t.labels.clone(),
            agent_id: t.agent_id.clone(),
            replica_of: t.replica_of.clone(),
            spec: Arc::new(t.spec.clone()),
            timeout_ms: t.timeout_ms,
            attempts: t.attempts,
            depends_on: t.depends_on.clone(),
            enqueued_at: now,
            model: cflow_agents::proto::is_model_task(&t.spec),
            class: 0,
        };
        q.class = q.class_of();
        q
    }

    /// A task just submitted without dependencies or replicas, queued as submitted.
    pub fn from_new(id: &str, tenant: &str, t: cflow_store::NewTask, now: i64) -> Self {
        let mut q = QTask {
            id: id.to_string(),
            tenant: tenant.to_string(),
            swarm: t.swarm_id,
            priority: t.priority,
            requires: t.requires,
            labels: t.labels,
            agent_id: t.agent_id,
            replica_of: None,
            model: cflow_agents::proto::is_model_task(&t.spec),
            spec: Arc::new(t.spec),
            timeout_ms: t.timeout_seconds.saturating_mul(1000),
            attempts: 0,
            depends_on: Vec::new(),
            enqueued_at: now,
            class: 0,
        };
        q.class = q.class_of();
        q
    }

    fn class_of(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            &self.swarm,
            &self.requires,
            &self.labels,
            &self.agent_id,
            self.model,
        )
            .hash(&mut h);
        // Replicas of one task must land on distinct agents, which makes them unlike others.
        self.replica_of.hash(&mut h);
        h.finish()
    }
}

pub(crate) struct AgentRt {
    pub rec: Agent,
    /// The task it is running (it runs one at a time).
    pub running: Option<String>,
    /// The task it was handed over to while its running task's successful end was being
    /// committed (see [`State::reserve_next`]): reserved, not yet committed.
    pub next: Option<String>,
    /// The worker it last ran on: preferred for its next task (its session lives there).
    pub worker: Option<String>,
    pub breaker: CircuitBreaker,
    pub tasks_since_start: u64,
    pub idle_since: i64,
}

impl AgentRt {
    /// The state shown to users: `busy` is live-only (not stored, it changes every task).
    pub fn live_state(&self) -> AgentState {
        match self.rec.state {
            AgentState::Idle if self.is_busy() => AgentState::Busy,
            s => s,
        }
    }

    /// Running a task, or reserved for its next one.
    pub fn is_busy(&self) -> bool {
        self.running.is_some() || self.next.is_some()
    }
}

pub(crate) struct SwarmRt {
    pub rec: Swarm,
    /// Agent ids in join order (the topology's member order).
    pub members: Vec<String>,
    pub graph: Option<TopologyGraph>,
    /// Agents that could take a task now (idle state, nothing running).
    pub idle: BTreeSet<String>,
    pub balancer: Balancer,
    /// Queued tasks of this swarm by enqueue time, for the autoscaler's wait signal.
    pub queued: BTreeSet<(i64, String)>,
    pub running: u64,
}

impl SwarmRt {
    pub fn new(rec: Swarm) -> Self {
        SwarmRt {
            rec,
            members: Vec::new(),
            graph: None,
            idle: BTreeSet::new(),
            balancer: Balancer::new(),
            queued: BTreeSet::new(),
            running: 0,
        }
    }

    /// The topology graph, rebuilt after membership changed. Coordinators (type
    /// `coordinator`) come first so that the first one is the hub / root.
    pub fn graph(&mut self, agents: &HashMap<String, AgentRt>) -> &TopologyGraph {
        if self.graph.is_none() {
            let mut ids: Vec<&String> = self.members.iter().collect();
            ids.sort_by_key(|id| {
                agents
                    .get(*id)
                    .is_none_or(|a| a.rec.agent_type != "coordinator")
            });
            let members: Vec<Member> = ids.into_iter().map(|id| Member::new(id.clone())).collect();
            let g = TopologyGraph::new(self.rec.topology, &members, None)
                .expect("members without parents always form a valid graph");
            self.graph = Some(g);
        }
        self.graph.as_ref().expect("just built")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerState {
    Active,
    Suspected,
    Lost,
    Draining,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Active => "active",
            WorkerState::Suspected => "suspected",
            WorkerState::Lost => "lost",
            WorkerState::Draining => "draining",
        }
    }
}

pub(crate) struct WorkerRt {
    pub id: String,
    pub name: String,
    pub tenant: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub drivers: BTreeSet<String>,
    pub slots: u32,
    /// Tasks assigned to it (delivered or waiting in the mailbox).
    pub running: HashSet<String>,
    pub mailbox: Vec<Assignment>,
    pub cancels: Vec<Held>,
    pub notify: Arc<Notify>,
    pub last_seen: i64,
    /// When its leases were last extended (polls extend at most every third of a lease).
    pub leases_extended_at: i64,
    pub state: WorkerState,
}

impl WorkerRt {
    pub fn free(&self) -> u32 {
        self.slots
            .saturating_sub(u32::try_from(self.running.len()).unwrap_or(u32::MAX))
    }
}

/// An attempt in flight.
pub(crate) struct RunRt {
    pub task: QTask,
    pub epoch: i64,
    pub agent: String,
    pub worker: String,
    pub permit: Option<Permit>,
}

pub(crate) struct TenantRt {
    pub weight: u32,
    pub max_running: Option<i64>,
    pub running: i64,
    /// The admin's sandbox settings for the tenant (`PUT /api/v1/tenants/{id}/sandbox`).
    pub sandbox: Option<Settings>,
}

impl Default for TenantRt {
    fn default() -> Self {
        TenantRt {
            weight: 1,
            max_running: None,
            running: 0,
            sandbox: None,
        }
    }
}

/// One dispatch decision, reserved in memory and not yet committed.
pub(crate) struct Pick {
    pub task: QTask,
    pub agent: String,
    pub driver: String,
    pub worker: String,
    pub permit: Option<Permit>,
}

#[derive(Default)]
pub(crate) struct State {
    pub queue: FairQueue<QTask, u64>,
    /// Ids in `queue`, so a task is never queued twice.
    pub queued_ids: HashSet<String>,
    /// Queued tasks without a swarm (any idle agent of their tenant may take them).
    pub queued_unswarmed: usize,
    pub agents: HashMap<String, AgentRt>,
    pub swarms: HashMap<String, SwarmRt>,
    pub workers: HashMap<String, WorkerRt>,
    pub running: HashMap<String, RunRt>,
    pub tenants: HashMap<String, TenantRt>,
    /// Agents that already ran a replica of a parent task (replicas need distinct agents).
    pub replica_agents: HashMap<String, HashSet<String>>,
    /// Tasks waiting in `pending` for a retry, by when they may be queued.
    pub retries: BinaryHeap<Reverse<(i64, String, String)>>,
    /// Tenant-wide balancers for tasks without a swarm.
    pub tenant_balancers: HashMap<String, Balancer>,
    /// The spent budgets of tenants that have one (`budget.rs`): their model tasks wait.
    pub spent: HashMap<String, super::budget::Spent>,
    /// Tenants with reported model usage not yet recorded: their model tasks wait for it.
    pub usage_pending: HashMap<String, u32>,
}

/// The [`View`] of a state, borrowing only the fields it reads (so the queue stays free to be
/// borrowed mutably beside it).
macro_rules! view {
    ($st:expr) => {
        View {
            agents: &$st.agents,
            swarms: &$st.swarms,
            workers: &$st.workers,
            replica_agents: &$st.replica_agents,
        }
    };
}

/// Read-only views used while the queue is borrowed mutably.
struct View<'a> {
    agents: &'a HashMap<String, AgentRt>,
    swarms: &'a HashMap<String, SwarmRt>,
    workers: &'a HashMap<String, WorkerRt>,
    replica_agents: &'a HashMap<String, HashSet<String>>,
}

impl View<'_> {
    /// Agents that could be asked, in a stable order.
    fn agent_ids<'b>(&'b self, t: &'b QTask) -> Box<dyn Iterator<Item = &'b String> + 'b> {
        if let Some(a) = &t.agent_id {
            return Box::new(std::iter::once(a));
        }
        match &t.swarm {
            Some(s) => match self.swarms.get(s) {
                Some(sw) => Box::new(sw.idle.iter()),
                None => Box::new(std::iter::empty()),
            },
            None => Box::new(
                self.swarms
                    .values()
                    .filter(move |s| s.rec.tenant_id == t.tenant)
                    .flat_map(|s| s.idle.iter()),
            ),
        }
    }

    fn agent_ok(&self, a: &AgentRt, t: &QTask, now: i64) -> bool {
        !a.is_busy() && self.agent_fits(a, t, now)
    }

    /// Whether the agent may take the task once it is free (everything but being free).
    fn agent_fits(&self, a: &AgentRt, t: &QTask, now: i64) -> bool {
        a.rec.tenant_id == t.tenant
            && a.rec.state == AgentState::Idle
            && driver_fits(&a.rec.driver, t.model)
            && t.swarm.as_ref().is_none_or(|s| *s == a.rec.swarm_id)
            && self
                .swarms
                .get(&a.rec.swarm_id)
                .is_some_and(|s| s.rec.state == SwarmState::Active)
            && t.requires.iter().all(|c| a.rec.capabilities.contains(c))
            && t.labels
                .iter()
                .all(|(k, v)| a.rec.labels.get(k).is_none_or(|av| av == v))
            && t.replica_of.as_ref().is_none_or(|p| {
                self.replica_agents
                    .get(p)
                    .is_none_or(|used| !used.contains(&a.rec.id))
            })
            && a.breaker.is_available(now)
    }

    fn worker_ok(&self, w: &WorkerRt, a: &AgentRt, t: &QTask) -> bool {
        w.free() > 0 && self.worker_fits(w, a, t)
    }

    /// Whether the worker may run the agent's task, given a free slot.
    fn worker_fits(&self, w: &WorkerRt, a: &AgentRt, t: &QTask) -> bool {
        w.state == WorkerState::Active
            && w.drivers.contains(&a.rec.driver)
            && w.tenant.as_ref().is_none_or(|wt| *wt == t.tenant)
            && t.labels.iter().all(|(k, v)| {
                a.rec.labels.contains_key(k) || w.labels.get(k).is_some_and(|wv| wv == v)
            })
    }

    /// The worker for this agent and task: its last worker when possible, else the matching
    /// worker with the most free slots.
    fn worker_for(&self, a: &AgentRt, t: &QTask) -> Option<&str> {
        if let Some(w) = a.worker.as_ref().and_then(|w| self.workers.get(w))
            && self.worker_ok(w, a, t)
        {
            return Some(&w.id);
        }
        self.workers
            .values()
            .filter(|w| self.worker_ok(w, a, t))
            .max_by_key(|w| (w.free(), Reverse(&w.id)))
            .map(|w| w.id.as_str())
    }

    fn any_pair(&self, t: &QTask, now: i64) -> bool {
        self.agent_ids(t).any(|id| {
            self.agents
                .get(id)
                .is_some_and(|a| self.agent_ok(a, t, now) && self.worker_for(a, t).is_some())
        })
    }
}

impl State {
    pub fn tenant(&mut self, tenant: &str) -> &mut TenantRt {
        self.tenants.entry(tenant.to_string()).or_default()
    }

    /// The sandbox settings an attempt runs under: the tenant's, then the agent's on top (an
    /// agent's field wins where both set one).
    pub fn sandbox_settings(&self, tenant: &str, agent: &str) -> Option<Settings> {
        let t = self.tenants.get(tenant).and_then(|t| t.sandbox.clone());
        let a = self
            .agents
            .get(agent)
            .and_then(|a| a.rec.sandbox.as_ref().and_then(|v| Settings::parse(v).ok()));
        match (t, a) {
            (None, None) => None,
            (Some(t), None) => Some(t),
            (None, Some(a)) => Some(a),
            (Some(t), Some(a)) => Some(Settings {
                mode: a.mode.or(t.mode),
                network: a.network.or(t.network),
                allow_degraded: a.allow_degraded.or(t.allow_degraded),
                egress: a.egress.or(t.egress),
                limits: match (t.limits, a.limits) {
                    (None, l) | (l, None) => l,
                    (Some(t), Some(a)) => Some(LimitsPatch {
                        cpu_seconds: a.cpu_seconds.or(t.cpu_seconds),
                        memory_bytes: a.memory_bytes.or(t.memory_bytes),
                        max_processes: a.max_processes.or(t.max_processes),
                        open_files: a.open_files.or(t.open_files),
                        file_size_bytes: a.file_size_bytes.or(t.file_size_bytes),
                        disk_bytes: a.disk_bytes.or(t.disk_bytes),
                        tmp_bytes: a.tmp_bytes.or(t.tmp_bytes),
                    }),
                },
            }),
        }
    }

    pub fn enqueue(&mut self, t: QTask) {
        if self.running.contains_key(&t.id) || !self.queued_ids.insert(t.id.clone()) {
            return;
        }
        if let Some(s) = t.swarm.as_ref().and_then(|s| self.swarms.get_mut(s)) {
            s.queued.insert((t.enqueued_at, t.id.clone()));
        }
        if t.swarm.is_none() {
            self.queued_unswarmed += 1;
        }
        let weight = self.tenants.get(&t.tenant).map_or(1, |r| r.weight);
        let prio = i32::try_from(t.priority).unwrap_or(0);
        let tenant = t.tenant.clone();
        let class = t.class;
        self.queue.push_in(&tenant, weight, prio, class, t);
    }

    /// Takes a task out of the queue (cancelled); `true` when it was there.
    pub fn dequeue(&mut self, task_id: &str) -> bool {
        if !self.queued_ids.remove(task_id) {
            return false;
        }
        for t in self.queue.remove(|t| t.id == task_id) {
            self.forget_queued(&t);
        }
        true
    }

    fn forget_queued(&mut self, t: &QTask) {
        if let Some(s) = t.swarm.as_ref().and_then(|s| self.swarms.get_mut(s)) {
            s.queued.remove(&(t.enqueued_at, t.id.clone()));
        }
        if t.swarm.is_none() {
            self.queued_unswarmed = self.queued_unswarmed.saturating_sub(1);
        }
    }

    /// Whether idle agents wait for a slot while tasks they could run are queued: then a slot
    /// that frees up must go through the dispatcher's fair-share pick, not stay with its agent.
    fn slots_contested(&self) -> bool {
        self.swarms
            .values()
            .any(|s| !s.idle.is_empty() && (!s.queued.is_empty() || self.queued_unswarmed > 0))
    }

    /// Picks up to `max` (task, agent, worker) triples and reserves them: the agent is busy, the
    /// worker's slot and the tenant's quota are taken. The caller commits them, then calls
    /// [`State::assigned`] or [`State::unreserve`] for each.
    pub fn pick_batch(&mut self, max: usize, now: i64) -> Vec<Pick> {
        let mut picks = Vec::new();
        // Classes found without an agent this round: resources only shrink within a round.
        let mut stuck: HashSet<u64> = HashSet::new();
        while picks.len() < max && !self.queue.is_empty() {
            let view = view!(self);
            let tenants = &self.tenants;
            let spent = (&self.spent, &self.usage_pending);
            let popped = self.queue.pop_eligible(
                |tenant| {
                    tenants
                        .get(tenant)
                        .is_none_or(|r| r.max_running.is_none_or(|m| r.running < m))
                },
                |t| {
                    if stuck.contains(&t.class) {
                        return false;
                    }
                    // A model task waits while its budget is spent (see `budget.rs`); its class
                    // (swarm, pins, model) decides its project, so the whole class waits.
                    if super::budget::budget_holds(spent, view.agents, view.swarms, t) {
                        stuck.insert(t.class);
                        return false;
                    }
                    let ok = view.any_pair(t, now);
                    if !ok && t.replica_of.is_none() && t.agent_id.is_none() {
                        stuck.insert(t.class);
                    }
                    ok
                },
            );
            let Some(task) = popped else { break };
            self.queued_ids.remove(&task.id);
            self.forget_queued(&task);
            match self.choose(&task, now) {
                Some(pick) => picks.push(pick),
                // Cannot happen (eligibility was just checked), but never lose the task.
                None => self.enqueue(task),
            }
        }
        picks
    }

    /// Reserves idle agents for tasks being submitted (their ids made by the caller) when
    /// nothing waits in the queue: then these tasks are exactly what [`State::pick_batch`]
    /// would pick next, so the submission can assign them in its own transaction (see
    /// `cflow_store::DirectAssign`) without changing any scheduling decision. Higher priority
    /// first, with the same checks as `pick_batch` (tenant quota, budget, an eligible agent
    /// and worker); a task that gets `None` is queued as usual once submitted.
    pub fn reserve_new(&mut self, tasks: &[Option<QTask>], now: i64) -> Vec<Option<Pick>> {
        let mut picks: Vec<Option<Pick>> = tasks.iter().map(|_| None).collect();
        if !self.queue.is_empty() {
            return picks;
        }
        let mut order: Vec<(usize, &QTask)> = tasks
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.as_ref().map(|t| (i, t)))
            .collect();
        order.sort_by_key(|(_, t)| std::cmp::Reverse(t.priority));
        let mut stuck: HashSet<u64> = HashSet::new();
        for (i, t) in order {
            let quota_ok = self
                .tenants
                .get(&t.tenant)
                .is_none_or(|r| r.max_running.is_none_or(|m| r.running < m));
            if !quota_ok {
                break;
            }
            if stuck.contains(&t.class)
                || super::budget::budget_holds(
                    (&self.spent, &self.usage_pending),
                    &self.agents,
                    &self.swarms,
                    t,
                )
            {
                continue;
            }
            match self.choose(t, now) {
                Some(p) => picks[i] = Some(p),
                None => {
                    stuck.insert(t.class);
                }
            }
        }
        picks
    }

    /// Hands the agent of the running task `task_id`, which is ending successfully, over to its
    /// next task: the first queued task in fair-share and priority order that it may take on
    /// the same worker (whose slot it keeps), checked as [`State::pick_batch`] checks (tenant
    /// quota counting the ending task as done, budget, capabilities, pins, breaker). Reserved
    /// like a pick (slot, quota; the agent's `next`), so that the completion assigns it in its
    /// own transaction (`cflow_store::CompleteRequest::next`). Only when no agent of the swarm is
    /// idle, so the balancer's choice among idle agents is never bypassed, and when no idle
    /// agent anywhere waits for a slot for a queued task (the freed slot then goes through the
    /// fair-share pick, so a tenant whose agents hold every slot cannot keep them from another's
    /// waiting tasks); never for an agent that its pool recycles after this task, nor one whose
    /// breaker is not closed. The caller ends the reservation with [`State::handed_over`] or
    /// [`State::unreserve`].
    pub fn reserve_next(&mut self, task_id: &str, now: i64) -> Option<Pick> {
        if self.queue.is_empty() {
            return None;
        }
        let run = self.running.get(task_id)?;
        let (agent_id, worker_id) = (run.agent.clone(), run.worker.clone());
        let old_tenant = run.task.tenant.clone();
        let a = self.agents.get(&agent_id)?;
        if a.next.is_some()
            || a.running.as_deref() != Some(task_id)
            || a.breaker.state(now) != cflow_core::breaker::BreakerState::Closed
        {
            return None;
        }
        let sw = self.swarms.get(&a.rec.swarm_id)?;
        if sw.rec.state != SwarmState::Active || !sw.idle.is_empty() || self.slots_contested() {
            return None;
        }
        let worn = sw.rec.pools.iter().any(|p| {
            p.agent_type == a.rec.agent_type
                && p.recycle_after_tasks
                    .is_some_and(|n| a.tasks_since_start + 1 >= u64::try_from(n).unwrap_or(0))
        });
        if worn {
            return None;
        }
        let w = self.workers.get(&worker_id)?;
        let view = view!(self);
        let tenants = &self.tenants;
        let spent = (&self.spent, &self.usage_pending);
        let task = self.queue.pop_eligible(
            |tenant| {
                tenants.get(tenant).is_none_or(|r| {
                    let ending = i64::from(tenant == old_tenant);
                    r.max_running.is_none_or(|m| r.running - ending < m)
                })
            },
            |t| {
                t.agent_id.as_ref().is_none_or(|p| *p == agent_id)
                    && view.agent_fits(a, t, now)
                    && view.worker_fits(w, a, t)
                    && !super::budget::budget_holds(spent, view.agents, view.swarms, t)
            },
        )?;
        self.queued_ids.remove(&task.id);
        self.forget_queued(&task);
        let a = self.agents.get_mut(&agent_id)?;
        let permit = a.breaker.allow(now);
        a.next = Some(task.id.clone());
        let driver = a.rec.driver.clone();
        let swarm_id = a.rec.swarm_id.clone();
        Some(self.reserved(task, agent_id, swarm_id, driver, worker_id, permit))
    }

    /// The agent's hand-over to `pick` committed (see [`State::reserve_next`]); its previous task
    /// is finished. Answers the data of the `task.assigned` event.
    pub fn handed_over(
        &mut self,
        pick: Pick,
        attempt: &Attempt,
        inputs: BTreeMap<String, Value>,
    ) -> Value {
        if let Some(a) = self.agents.get_mut(&pick.agent) {
            if a.next.as_deref() == Some(pick.task.id.as_str()) {
                a.next = None;
            }
            a.running = Some(pick.task.id.clone());
            a.worker = Some(pick.worker.clone());
            let swarm = a.rec.swarm_id.clone();
            if let Some(s) = self.swarms.get_mut(&swarm) {
                s.idle.remove(&pick.agent);
            }
        }
        self.assigned(pick, attempt, inputs)
    }

    fn choose(&mut self, t: &QTask, now: i64) -> Option<Pick> {
        // The balancer is taken out of the state while the view borrows it (and put back
        // below), so that the candidates can borrow their ids instead of copying them.
        let (strategy, mut balancer) = match &t.swarm {
            Some(s) => {
                let sw = self.swarms.get_mut(s)?;
                (sw.rec.strategy, std::mem::take(&mut sw.balancer))
            }
            None => (
                Strategy::WeightedRoundRobin,
                self.tenant_balancers
                    .get_mut(&t.tenant)
                    .map(std::mem::take)
                    .unwrap_or_default(),
            ),
        };
        let chosen = {
            let view = view!(self);
            let mut candidates: Vec<Candidate<'_>> = Vec::new();
            let mut workers: Vec<&str> = Vec::new();
            for id in view.agent_ids(t) {
                let Some(a) = view.agents.get(id) else {
                    continue;
                };
                if !view.agent_ok(a, t, now) {
                    continue;
                }
                if let Some(w) = view.worker_for(a, t) {
                    candidates.push(Candidate {
                        id: a.rec.id.as_str(),
                        weight: 1,
                        running: u32::try_from(a.tasks_since_start).unwrap_or(u32::MAX),
                    });
                    workers.push(w);
                    if candidates.len() == CANDIDATES {
                        break;
                    }
                }
            }
            balancer.pick(strategy, &candidates).and_then(|id| {
                let i = candidates.iter().position(|c| c.id == id)?;
                Some((id.to_string(), workers[i].to_string()))
            })
        };
        match &t.swarm {
            Some(s) => {
                if let Some(sw) = self.swarms.get_mut(s) {
                    sw.balancer = balancer;
                }
            }
            None => match self.tenant_balancers.get_mut(&t.tenant) {
                Some(b) => *b = balancer,
                None => {
                    self.tenant_balancers.insert(t.tenant.clone(), balancer);
                }
            },
        }
        let (agent_id, worker_id) = chosen?;
        let a = self.agents.get_mut(&agent_id)?;
        let permit = Some(a.breaker.allow(now)?);
        a.running = Some(t.id.clone());
        a.worker = Some(worker_id.clone());
        let driver = a.rec.driver.clone();
        let swarm_id = a.rec.swarm_id.clone();
        Some(self.reserved(t.clone(), agent_id, swarm_id, driver, worker_id, permit))
    }

    /// Takes the slot, quota and replica place of a reservation of `t` for the agent.
    fn reserved(
        &mut self,
        t: QTask,
        agent_id: String,
        swarm_id: String,
        driver: String,
        worker_id: String,
        permit: Option<Permit>,
    ) -> Pick {
        if let Some(s) = self.swarms.get_mut(&swarm_id) {
            s.idle.remove(&agent_id);
            s.running += 1;
        }
        if let Some(w) = self.workers.get_mut(&worker_id) {
            w.running.insert(t.id.clone());
        }
        self.tenant(&t.tenant).running += 1;
        if let Some(p) = &t.replica_of {
            self.replica_agents
                .entry(p.clone())
                .or_default()
                .insert(agent_id.clone());
        }
        Pick {
            task: t,
            agent: agent_id,
            driver,
            worker: worker_id,
            permit,
        }
    }

    /// Undoes a reservation whose commit failed (a pick, or a hand-over, which leaves the
    /// agent's running task alone); the task is queued again when `requeue`.
    pub fn unreserve(&mut self, pick: Pick, requeue: bool, now: i64) {
        if let Some(a) = self.agents.get_mut(&pick.agent) {
            if let Some(p) = pick.permit {
                a.breaker.release(p);
            }
            let id = Some(pick.task.id.as_str());
            if a.next.as_deref() == id {
                a.next = None;
                if a.running.is_none() {
                    self.free_agent(&pick.agent, now);
                }
            } else if a.running.as_deref() == id {
                self.free_agent(&pick.agent, now);
            }
        }
        if let Some(w) = self.workers.get_mut(&pick.worker) {
            w.running.remove(&pick.task.id);
        }
        if let Some(s) = pick
            .task
            .swarm
            .as_ref()
            .and_then(|s| self.swarms.get_mut(s))
        {
            s.running = s.running.saturating_sub(1);
        }
        self.tenant(&pick.task.tenant).running -= 1;
        if let Some(p) = &pick.task.replica_of
            && let Some(used) = self.replica_agents.get_mut(p)
        {
            used.remove(&pick.agent);
        }
        if requeue {
            self.enqueue(pick.task);
        }
    }

    /// Marks an agent as having nothing to run; it becomes idle again if its state allows.
    pub fn free_agent(&mut self, agent_id: &str, now: i64) {
        let Some(a) = self.agents.get_mut(agent_id) else {
            return;
        };
        a.running = None;
        a.idle_since = now;
        // An agent handed over to its next task is not idle in between.
        let idle = a.rec.state == AgentState::Idle && a.next.is_none();
        let swarm = a.rec.swarm_id.clone();
        if let Some(s) = self.swarms.get_mut(&swarm) {
            if idle {
                s.idle.insert(agent_id.to_string());
            } else {
                s.idle.remove(agent_id);
            }
        }
    }

    /// The attempt committed: it is running on its worker (delivered at the next poll).
    /// Answers the data of its `task.assigned` event.
    pub fn assigned(&mut self, pick: Pick, a: &Attempt, inputs: BTreeMap<String, Value>) -> Value {
        let epoch = a.epoch;
        let assignment = Assignment {
            task_id: pick.task.id.clone(),
            tenant_id: pick.task.tenant.clone(),
            epoch,
            attempt: u32::try_from(a.attempt_no).unwrap_or(u32::MAX),
            agent_id: pick.agent.clone(),
            driver: pick.driver.clone(),
            spec: (*pick.task.spec).clone(),
            timeout_ms: u64::try_from(pick.task.timeout_ms).unwrap_or(0),
            inputs,
            sandbox: self.sandbox_settings(&pick.task.tenant, &pick.agent),
        };
        if let Some(w) = self.workers.get_mut(&pick.worker) {
            w.mailbox.push(assignment);
            w.notify.notify_one();
        }
        self.running.insert(
            pick.task.id.clone(),
            RunRt {
                task: pick.task,
                epoch,
                agent: pick.agent,
                worker: pick.worker,
                permit: pick.permit,
            },
        );
        serde_json::json!({"agent_id": a.agent_id, "worker_id": a.worker_id, "epoch": epoch})
    }

    /// An attempt ended (or was lost or cancelled): frees its agent, slot and quota.
    pub fn finished(&mut self, task_id: &str, now: i64) -> Option<RunRt> {
        let run = self.running.remove(task_id)?;
        if let Some(w) = self.workers.get_mut(&run.worker) {
            w.running.remove(task_id);
            w.mailbox.retain(|a| a.task_id != task_id);
        }
        if let Some(s) = run.task.swarm.as_ref().and_then(|s| self.swarms.get_mut(s)) {
            s.running = s.running.saturating_sub(1);
        }
        self.tenant(&run.task.tenant).running -= 1;
        self.free_agent(&run.agent, now);
        Some(run)
    }

    /// Adds (or refreshes) an agent from its stored record.
    pub fn add_agent(&mut self, rec: Agent, breaker: CircuitBreaker, now: i64) {
        let id = rec.id.clone();
        let swarm = rec.swarm_id.clone();
        let idle = rec.state == AgentState::Idle;
        match self.agents.get_mut(&id) {
            Some(a) => a.rec = rec,
            None => {
                self.agents.insert(
                    id.clone(),
                    AgentRt {
                        rec,
                        running: None,
                        next: None,
                        worker: None,
                        breaker,
                        tasks_since_start: 0,
                        idle_since: now,
                    },
                );
            }
        }
        let running = self.agents.get(&id).is_some_and(AgentRt::is_busy);
        if let Some(s) = self.swarms.get_mut(&swarm) {
            if !s.members.contains(&id) {
                s.members.push(id.clone());
                s.graph = None;
            }
            if idle && !running {
                s.idle.insert(id);
            } else {
                s.idle.remove(&id);
            }
        }
    }

    /// Removes a stopped agent.
    pub fn remove_agent(&mut self, agent_id: &str) {
        let Some(a) = self.agents.remove(agent_id) else {
            return;
        };
        if let Some(s) = self.swarms.get_mut(&a.rec.swarm_id) {
            s.members.retain(|m| m != agent_id);
            s.idle.remove(agent_id);
            s.graph = None;
            s.balancer.forget(agent_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cflow_core::breaker::BreakerConfig;
    use cflow_core::topology::Topology;
    use cflow_store::AttemptState;

    const NOW: i64 = 1_000_000;

    fn swarm(id: &str) -> Swarm {
        Swarm {
            id: id.into(),
            tenant_id: "t".into(),
            name: id.into(),
            topology: Topology::Mesh,
            project: None,
            max_agents: 10,
            state: SwarmState::Active,
            strategy: Strategy::WeightedRoundRobin,
            pools: Vec::new(),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn agent(id: &str) -> Agent {
        Agent {
            id: id.into(),
            tenant_id: "t".into(),
            swarm_id: "s".into(),
            agent_type: "coder".into(),
            driver: "noop".into(),
            capabilities: Vec::new(),
            labels: BTreeMap::new(),
            state: AgentState::Idle,
            tasks_done: 0,
            failures: 0,
            busy_ms: 0,
            created_at: 0,
            updated_at: 0,
            sandbox: None,
        }
    }

    fn task(id: &str, priority: i64) -> QTask {
        let mut q = QTask {
            id: id.into(),
            tenant: "t".into(),
            swarm: Some("s".into()),
            priority,
            requires: Vec::new(),
            labels: BTreeMap::new(),
            agent_id: None,
            replica_of: None,
            spec: Arc::new(Value::Null),
            timeout_ms: 1000,
            attempts: 0,
            depends_on: Vec::new(),
            enqueued_at: NOW,
            model: false,
            class: 0,
        };
        q.class = q.class_of();
        q
    }

    fn attempt(p: &Pick) -> Attempt {
        Attempt {
            task_id: p.task.id.clone(),
            epoch: 1,
            attempt_no: 1,
            agent_id: p.agent.clone(),
            worker_id: p.worker.clone(),
            state: AttemptState::Assigned,
            lease_expires_at: NOW + 30_000,
            assigned_at: NOW,
            started_at: None,
            ended_at: None,
            exit_code: None,
            stdout_tail: None,
            stderr_tail: None,
            result: None,
            detail: None,
        }
    }

    /// One swarm `s` with the given agents on one worker `w` with `slots`, agent `a1` running
    /// task `run` (committed), and `queued` waiting.
    fn state(agents: &[&str], slots: u32, queued: &[QTask]) -> State {
        let mut st = State::default();
        st.swarms.insert("s".into(), SwarmRt::new(swarm("s")));
        for a in agents {
            st.add_agent(agent(a), CircuitBreaker::new(BreakerConfig::default()), NOW);
        }
        st.workers.insert(
            "w".into(),
            WorkerRt {
                id: "w".into(),
                name: "w".into(),
                tenant: None,
                labels: BTreeMap::new(),
                drivers: ["noop".to_string()].into(),
                slots,
                running: HashSet::new(),
                mailbox: Vec::new(),
                cancels: Vec::new(),
                notify: Arc::new(Notify::new()),
                last_seen: NOW,
                leases_extended_at: NOW,
                state: WorkerState::Active,
            },
        );
        st.enqueue(task("run", 0));
        let picks = st.pick_batch(1, NOW);
        let p = picks.into_iter().next().expect("a1 takes run");
        assert_eq!(p.agent, "a1");
        let a = attempt(&p);
        st.assigned(p, &a, BTreeMap::new());
        for q in queued {
            st.enqueue(q.clone());
        }
        st
    }

    #[test]
    fn an_ending_task_hands_its_agent_over_to_the_best_queued_task() {
        // One slot: the worker is full, yet the hand-over keeps the ending task's slot.
        let mut st = state(&["a1"], 1, &[task("low", 1), task("high", 5)]);
        let p = st.reserve_next("run", NOW).expect("handed over");
        assert_eq!((p.task.id.as_str(), p.agent.as_str()), ("high", "a1"));
        assert_eq!(st.agents["a1"].next.as_deref(), Some("high"));
        assert!(st.agents["a1"].is_busy());
        // A second hand-over of the same agent is not made.
        assert!(st.reserve_next("run", NOW).is_none());

        // The ending task finishes: the agent is not idle in between, so no pick takes it.
        st.finished("run", NOW);
        assert!(st.swarms["s"].idle.is_empty());
        assert!(st.pick_batch(10, NOW).is_empty(), "low must wait for a1");
        let a = attempt(&p);
        st.handed_over(p, &a, BTreeMap::new());
        assert_eq!(st.agents["a1"].running.as_deref(), Some("high"));
        assert!(st.agents["a1"].next.is_none());
        let mailbox: Vec<&str> = st.workers["w"]
            .mailbox
            .iter()
            .map(|a| a.task_id.as_str())
            .collect();
        assert_eq!(mailbox, ["high"], "run's assignment left with run");
        assert!(st.workers["w"].running.contains("high"));
        assert_eq!(st.tenants["t"].running, 1);
    }

    #[test]
    fn a_refused_hand_over_frees_the_agent_and_queues_the_task_again() {
        let mut st = state(&["a1"], 1, &[task("next", 0)]);
        let p = st.reserve_next("run", NOW).expect("handed over");
        // The completion was refused (stale): the agent still runs `run`.
        st.unreserve(p, true, NOW);
        assert_eq!(st.agents["a1"].running.as_deref(), Some("run"));
        assert!(st.agents["a1"].next.is_none());
        assert!(st.queued_ids.contains("next"));
        assert_eq!(st.tenants["t"].running, 1);

        // Accepted completion, refused assignment: the agent ends up idle.
        let p = st.reserve_next("run", NOW).expect("handed over again");
        st.finished("run", NOW);
        st.unreserve(p, true, NOW);
        assert!(st.swarms["s"].idle.contains("a1"));
        assert_eq!(st.tenants["t"].running, 0);
        assert!(st.workers["w"].running.is_empty());
        let picks = st.pick_batch(10, NOW);
        assert_eq!(picks.len(), 1, "the task and the agent meet again");
    }

    #[test]
    fn no_hand_over_while_another_agent_is_idle_or_the_agent_cannot_take_work() {
        // a2 idle: the balancer decides among idle agents, so no hand-over.
        let mut st = state(&["a1", "a2"], 4, &[]);
        st.enqueue(task("next", 0));
        // `next` went nowhere yet (no pick ran): a2 is idle.
        assert!(st.reserve_next("run", NOW).is_none());

        // Draining agent, paused swarm, unknown task: none.
        let mut st = state(&["a1"], 1, &[task("next", 0)]);
        st.agents.get_mut("a1").unwrap().rec.state = AgentState::Draining;
        assert!(st.reserve_next("run", NOW).is_none());
        st.agents.get_mut("a1").unwrap().rec.state = AgentState::Idle;
        st.swarms.get_mut("s").unwrap().rec.state = SwarmState::Paused;
        assert!(st.reserve_next("run", NOW).is_none());
        st.swarms.get_mut("s").unwrap().rec.state = SwarmState::Active;
        assert!(st.reserve_next("nope", NOW).is_none());

        // A task pinned to another agent is not taken.
        let mut st = state(&["a1"], 1, &[]);
        let mut pinned = task("pinned", 0);
        pinned.agent_id = Some("a9".into());
        pinned.class = pinned.class_of();
        st.enqueue(pinned);
        assert!(st.reserve_next("run", NOW).is_none());
    }

    #[test]
    fn no_hand_over_while_idle_agents_of_another_swarm_wait_for_a_slot() {
        // The worker's only slot is a1's; b1 (swarm `s2`) is idle with a task queued.
        let mut st = state(&["a1"], 1, &[task("next", 0)]);
        st.swarms.insert("s2".into(), SwarmRt::new(swarm("s2")));
        let mut b1 = agent("b1");
        b1.swarm_id = "s2".into();
        st.add_agent(b1, CircuitBreaker::new(BreakerConfig::default()), NOW);
        let mut waiting = task("waiting", 0);
        waiting.swarm = Some("s2".into());
        waiting.class = waiting.class_of();
        st.enqueue(waiting);
        assert!(st.reserve_next("run", NOW).is_none());
        // The slot frees normally and the fair-share pick decides who gets it.
        st.finished("run", NOW);
        assert_eq!(st.pick_batch(10, NOW).len(), 1);

        // An idle agent with nothing queued for it contests nothing.
        let mut st = state(&["a1"], 1, &[task("next", 0)]);
        st.swarms.insert("s2".into(), SwarmRt::new(swarm("s2")));
        let mut b1 = agent("b1");
        b1.swarm_id = "s2".into();
        st.add_agent(b1, CircuitBreaker::new(BreakerConfig::default()), NOW);
        assert!(st.reserve_next("run", NOW).is_some());
    }

    #[test]
    fn a_hand_over_counts_the_ending_task_as_done_against_the_quota() {
        let mut st = state(&["a1"], 1, &[task("next", 0)]);
        st.tenants.get_mut("t").unwrap().max_running = Some(1);
        let p = st
            .reserve_next("run", NOW)
            .expect("the quota frees with run");
        assert_eq!(p.task.id, "next");
    }
}
