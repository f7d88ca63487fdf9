//! The scheduler's operations on swarms, agents and tasks: each commits to the store first,
//! then updates the in-memory state, then publishes events.

use std::collections::BTreeMap;

use cflow_core::ValidationError;
use cflow_core::agent_type;
use cflow_core::breaker::CircuitBreaker;
use cflow_core::topology::Interaction;
use cflow_store::{
    Agent, AgentPool, AgentState, AuditContext, Cancelled, NewAgent, NewSwarm, NewTask, Submitted,
    Swarm, SwarmState,
};
use serde_json::json;

use super::state::{Pick, QTask};
use super::{AgentLive, SchedError, SchedResult, Scheduler, SwarmLive};
use crate::state::now_ms;

/// Drivers an agent may name. `llm` arrives with its issue.
pub const DRIVERS: [&str; 4] = cflow_agents::DRIVER_KINDS;

fn check_driver(field: &str, driver: &str) -> SchedResult<()> {
    if DRIVERS.contains(&driver) {
        return Ok(());
    }
    let hint = if driver == "llm" {
        " (it is not built yet)"
    } else {
        ""
    };
    Err(ValidationError::new(
        field,
        format!(
            "unknown driver '{driver}'{hint}: use one of {}",
            DRIVERS.join(", ")
        ),
    )
    .into())
}

fn check_pool(i: usize, p: &AgentPool) -> SchedResult<()> {
    agent_type::validate_type(&format!("agents[{i}].type"), &p.agent_type)?;
    check_driver(&format!("agents[{i}].driver"), &p.driver)?;
    for (j, c) in p.capabilities.iter().enumerate() {
        agent_type::validate_capability(&format!("agents[{i}].capabilities[{j}]"), c)?;
    }
    Ok(())
}

fn pool_agent(p: &AgentPool) -> NewAgent {
    let capabilities = if p.capabilities.is_empty() {
        agent_type::default_capabilities(&p.agent_type)
    } else {
        p.capabilities.clone()
    };
    NewAgent {
        agent_type: p.agent_type.clone(),
        driver: p.driver.clone(),
        capabilities,
        labels: p.labels.clone(),
        sandbox: None,
    }
}

impl Scheduler {
    fn breaker(&self) -> CircuitBreaker {
        CircuitBreaker::new(self.config.breaker())
    }

    // ---- swarms -------------------------------------------------------------------------

    /// Creates a swarm and the `min` (at least `prewarm`) agents of each pool.
    pub async fn create_swarm(
        &self,
        ctx: &AuditContext,
        tenant: &str,
        new: NewSwarm,
    ) -> SchedResult<Swarm> {
        for (i, p) in new.pools.iter().enumerate() {
            check_pool(i, p)?;
        }
        let swarm = self.store.create_swarm(ctx, tenant, new).await?;
        self.lock()
            .swarms
            .insert(swarm.id.clone(), super::state::SwarmRt::new(swarm.clone()));
        self.publish(
            tenant,
            "swarm.created",
            &swarm.id,
            json!({"name": swarm.name, "topology": swarm.topology}),
        );
        let _members = self.membership.lock().await;
        for pool in &swarm.pools {
            let want = pool.min.max(pool.prewarm).min(pool.max);
            let (live, _) = self.pool_agents(&swarm.id, &pool.agent_type);
            let have = i64::try_from(live.len()).unwrap_or(i64::MAX);
            let missing = usize::try_from(want - have).unwrap_or(0);
            self.spawn_agents(ctx, tenant, &swarm.id, pool_agent(pool), missing)
                .await?;
        }
        Ok(swarm)
    }

    /// Pause (no new assignments from now on; running tasks finish), resume, or stop (final:
    /// agents drain and stop; queued tasks stay queued until cancelled).
    pub async fn set_swarm_state(
        &self,
        ctx: &AuditContext,
        tenant: &str,
        swarm_id: &str,
        state: SwarmState,
    ) -> SchedResult<Swarm> {
        let swarm = self
            .store
            .set_swarm_state(ctx, tenant, swarm_id, state)
            .await?;
        let members = {
            let mut st = self.lock();
            match st.swarms.get_mut(swarm_id) {
                Some(s) => {
                    s.rec = swarm.clone();
                    s.members.clone()
                }
                None => Vec::new(),
            }
        };
        let kind = match state {
            SwarmState::Active => "swarm.resumed",
            SwarmState::Paused => "swarm.paused",
            SwarmState::Stopped => "swarm.stopped",
        };
        self.publish(tenant, kind, swarm_id, json!({"state": state}));
        if state == SwarmState::Stopped {
            for agent in members {
                // An agent that already left is fine.
                let _ = self.stop_agent(ctx, tenant, &agent).await;
            }
        }
        self.wake.notify_one();
        Ok(swarm)
    }

    /// Sets (or adds) the pool of `pool.agent_type` and brings the agent count within its bounds.
    pub async fn scale(
        &self,
        ctx: &AuditContext,
        tenant: &str,
        swarm_id: &str,
        pool: AgentPool,
    ) -> SchedResult<Swarm> {
        check_pool(0, &pool)?;
        let current = self
            .store
            .get_swarm(tenant, swarm_id)
            .await?
            .ok_or_else(|| SchedError::NotFound(format!("swarm {swarm_id}")))?;
        let mut pools = current.pools.clone();
        match pools.iter_mut().find(|p| p.agent_type == pool.agent_type) {
            Some(p) => *p = pool.clone(),
            None => pools.push(pool.clone()),
        }
        let swarm = self
            .store
            .update_swarm_pools(ctx, tenant, swarm_id, pools)
            .await?;
        if let Some(s) = self.lock().swarms.get_mut(swarm_id) {
            s.rec = swarm.clone();
        }
        let _members = self.membership.lock().await;
        let (live, idle) = self.pool_agents(swarm_id, &pool.agent_type);
        let live_n = i64::try_from(live.len()).unwrap_or(i64::MAX);
        let want = live_n.max(pool.min).max(pool.prewarm).min(pool.max);
        let missing = usize::try_from(want - live_n).unwrap_or(0);
        self.spawn_agents(ctx, tenant, swarm_id, pool_agent(&pool), missing)
            .await?;
        let excess = usize::try_from(live_n - want).unwrap_or(0);
        // Idle agents go first; busy ones drain after their task.
        let busy: Vec<String> = live.into_iter().filter(|a| !idle.contains(a)).collect();
        let mut order = idle;
        order.extend(busy);
        for agent in order.into_iter().take(excess) {
            let _ = self.stop_agent(ctx, tenant, &agent).await;
        }
        self.publish(
            tenant,
            "swarm.scaled",
            swarm_id,
            json!({"type": pool.agent_type, "min": pool.min, "max": pool.max, "agents": want}),
        );
        Ok(swarm)
    }

    /// Live (not stopping) agents of a pool, and the idle ones among them.
    pub(crate) fn pool_agents(
        &self,
        swarm_id: &str,
        agent_type: &str,
    ) -> (Vec<String>, Vec<String>) {
        let st = self.lock();
        let Some(s) = st.swarms.get(swarm_id) else {
            return (Vec::new(), Vec::new());
        };
        let live: Vec<String> = s
            .members
            .iter()
            .filter(|id| {
                st.agents.get(*id).is_some_and(|a| {
                    a.rec.agent_type == agent_type
                        && matches!(
                            a.rec.state,
                            AgentState::Idle | AgentState::Starting | AgentState::Quarantined
                        )
                })
            })
            .cloned()
            .collect();
        let idle = live
            .iter()
            .filter(|id| s.idle.contains(*id))
            .cloned()
            .collect();
        (live, idle)
    }

    /// Whether the scheduler holds `swarm_id` of `tenant` (every swarm that is not stopped). A
    /// `false` proves nothing: ask the store.
    pub fn has_swarm(&self, tenant: &str, swarm_id: &str) -> bool {
        self.lock()
            .swarms
            .get(swarm_id)
            .is_some_and(|s| s.rec.tenant_id == tenant)
    }

    pub fn swarm_live(&self, tenant: &str, swarm_id: &str) -> SwarmLive {
        let st = self.lock();
        let Some(s) = st
            .swarms
            .get(swarm_id)
            .filter(|s| s.rec.tenant_id == tenant)
        else {
            return SwarmLive::default();
        };
        let mut agents_by_state = BTreeMap::new();
        for id in &s.members {
            if let Some(a) = st.agents.get(id) {
                *agents_by_state
                    .entry(a.live_state().as_str().to_string())
                    .or_insert(0) += 1;
            }
        }
        SwarmLive {
            queued: s.queued.len() as u64,
            running: s.running,
            agents_by_state,
        }
    }

    // ---- agents -------------------------------------------------------------------------

    pub async fn spawn_agent(
        &self,
        ctx: &AuditContext,
        tenant: &str,
        swarm_id: &str,
        mut new: NewAgent,
    ) -> SchedResult<Agent> {
        agent_type::validate_type("type", &new.agent_type)?;
        check_driver("driver", &new.driver)?;
        for (i, c) in new.capabilities.iter().enumerate() {
            agent_type::validate_capability(&format!("capabilities[{i}]"), c)?;
        }
        if new.capabilities.is_empty() {
            new.capabilities = agent_type::default_capabilities(&new.agent_type);
        }
        let created = self.store.create_agent(ctx, tenant, swarm_id, new).await?;
        // Exec agents need no warm-up: the agent is ready as soon as it is recorded.
        let agent = self
            .store
            .set_agent_state(ctx, tenant, &created.id, AgentState::Idle)
            .await?;
        let now = now_ms();
        self.lock().add_agent(agent.clone(), self.breaker(), now);
        self.publish(
            tenant,
            "agent.spawned",
            &agent.id,
            json!({"swarm_id": swarm_id, "type": agent.agent_type, "driver": agent.driver}),
        );
        self.wake.notify_one();
        Ok(agent)
    }

    /// `count` agents of one pool at once (one commit), ready at once.
    pub(crate) async fn spawn_agents(
        &self,
        ctx: &AuditContext,
        tenant: &str,
        swarm_id: &str,
        mut new: NewAgent,
        count: usize,
    ) -> SchedResult<Vec<Agent>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        if new.capabilities.is_empty() {
            new.capabilities = agent_type::default_capabilities(&new.agent_type);
        }
        let agents = self
            .store
            .create_agents(ctx, tenant, swarm_id, new, count, AgentState::Idle)
            .await?;
        let now = now_ms();
        {
            let mut st = self.lock();
            for a in &agents {
                st.add_agent(a.clone(), self.breaker(), now);
            }
        }
        for a in &agents {
            self.publish(
                tenant,
                "agent.spawned",
                &a.id,
                json!({"swarm_id": swarm_id, "type": a.agent_type, "driver": a.driver}),
            );
        }
        self.wake.notify_one();
        Ok(agents)
    }

    /// Stops the agent at once when it is idle, else drains it: it takes no new task and stops
    /// when its running task ends.
    pub async fn stop_agent(
        &self,
        ctx: &AuditContext,
        tenant: &str,
        agent_id: &str,
    ) -> SchedResult<Agent> {
        let running = {
            let st = self.lock();
            match st.agents.get(agent_id) {
                Some(a) if a.rec.tenant_id == tenant => a.is_busy(),
                _ => false,
            }
        };
        let target = if running {
            AgentState::Draining
        } else {
            AgentState::Stopped
        };
        let agent = self
            .store
            .set_agent_state(ctx, tenant, agent_id, target)
            .await?;
        {
            let mut st = self.lock();
            if target == AgentState::Stopped {
                st.remove_agent(agent_id);
            } else if let Some(a) = st.agents.get_mut(agent_id) {
                a.rec = agent.clone();
                let swarm = a.rec.swarm_id.clone();
                if let Some(s) = st.swarms.get_mut(&swarm) {
                    s.idle.remove(agent_id);
                }
            }
        }
        self.publish(
            tenant,
            &format!("agent.{}", target.as_str()),
            agent_id,
            json!({"swarm_id": agent.swarm_id}),
        );
        Ok(agent)
    }

    pub fn agent_live(&self, tenant: &str, agent_id: &str) -> Option<AgentLive> {
        let st = self.lock();
        let a = st
            .agents
            .get(agent_id)
            .filter(|a| a.rec.tenant_id == tenant)?;
        Some(AgentLive {
            state: a.live_state(),
            breaker: a.breaker.snapshot(now_ms()),
            worker_id: a.worker.clone(),
            current_task: a.running.clone(),
            tasks_since_start: a.tasks_since_start,
        })
    }

    /// Whether `from` may message (or delegate to) `to` in the swarm's topology; `to` `None` is a
    /// topic message, allowed when `from` may message anyone.
    pub fn check_interaction(
        &self,
        tenant: &str,
        swarm_id: &str,
        kind: Interaction,
        from: &str,
        to: Option<&str>,
    ) -> SchedResult<()> {
        let mut st = self.lock();
        let st = &mut *st;
        let swarm = st
            .swarms
            .get_mut(swarm_id)
            .filter(|s| s.rec.tenant_id == tenant)
            .ok_or_else(|| SchedError::NotFound(format!("swarm {swarm_id}")))?;
        for (field, id) in [("from", Some(from)), ("to", to)] {
            if let Some(id) = id
                && !swarm.members.iter().any(|m| m == id)
            {
                return Err(ValidationError::new(
                    field,
                    format!("agent '{id}' is not a live agent of swarm {swarm_id}"),
                )
                .into());
            }
        }
        let graph = swarm.graph(&st.agents);
        match to {
            Some(to) => graph
                .check(kind, from, to)
                .map_err(|r| SchedError::Refused(r.reason)),
            None if graph.members().len() == 1 || !graph.peers(kind, from).is_empty() => Ok(()),
            None => Err(SchedError::Refused(format!(
                "the {} topology gives agent '{from}' no peer to reach",
                graph.topology().as_str()
            ))),
        }
    }

    /// The agents `agent_id` may message or delegate to under its swarm's topology, with their
    /// types, in the swarm's member order; empty when the agent or swarm is not live.
    pub fn peers_of(
        &self,
        tenant: &str,
        swarm_id: &str,
        agent_id: &str,
    ) -> Vec<cflow_agents::model::Peer> {
        let mut st = self.lock();
        let st = &mut *st;
        let Some(swarm) = st
            .swarms
            .get_mut(swarm_id)
            .filter(|s| s.rec.tenant_id == tenant)
        else {
            return Vec::new();
        };
        let graph = swarm.graph(&st.agents);
        let mut ids: Vec<&str> = graph.peers(Interaction::Message, agent_id);
        for id in graph.peers(Interaction::Delegate, agent_id) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids.into_iter()
            .filter(|id| *id != agent_id)
            .filter_map(|id| {
                st.agents.get(id).map(|a| cflow_agents::model::Peer {
                    agent_id: id.to_string(),
                    agent_type: a.rec.agent_type.clone(),
                })
            })
            .collect()
    }

    // ---- tasks --------------------------------------------------------------------------

    /// Commits the tasks (durable when this returns) and queues the ready ones. With
    /// `delegated_by`, every task must name its target agent, which the topology must allow
    /// the delegating agent to delegate to.
    /// Refuses a task pinned to a live agent whose driver cannot run it (a prompt for an `exec`
    /// agent, a command for a model agent): it would wait in the queue forever.
    fn check_pinned_drivers(&self, tenant: &str, tasks: &[NewTask]) -> SchedResult<()> {
        let st = self.lock();
        for (i, t) in tasks.iter().enumerate() {
            let Some(a) = t
                .agent_id
                .as_ref()
                .and_then(|id| st.agents.get(id))
                .filter(|a| a.rec.tenant_id == tenant)
            else {
                continue;
            };
            let model = cflow_agents::proto::is_model_task(&t.spec);
            if !super::state::driver_fits(&a.rec.driver, model) {
                let (what, needs) = if model {
                    ("a prompt", "a claude-code or llm agent")
                } else {
                    ("a command", "an exec agent")
                };
                return Err(ValidationError::new(
                    format!("tasks[{i}].agent"),
                    format!(
                        "agent '{}' runs the {} driver, which cannot run {what}: pin the task to \
                         {needs}, or leave the agent out",
                        a.rec.id, a.rec.driver
                    ),
                )
                .into());
            }
        }
        Ok(())
    }

    pub async fn submit(
        &self,
        ctx: &AuditContext,
        tenant: &str,
        mut tasks: Vec<NewTask>,
        delegated_by: Option<&str>,
    ) -> SchedResult<Vec<Submitted>> {
        if let Some(from) = delegated_by {
            let swarm = {
                let st = self.lock();
                st.agents
                    .get(from)
                    .filter(|a| a.rec.tenant_id == tenant)
                    .map(|a| a.rec.swarm_id.clone())
            }
            .ok_or_else(|| {
                SchedError::from(ValidationError::new(
                    "delegated_by",
                    format!("'{from}' is not a live agent of this tenant"),
                ))
            })?;
            for (i, t) in tasks.iter_mut().enumerate() {
                let Some(to) = t.agent_id.clone() else {
                    return Err(ValidationError::new(
                        format!("tasks[{i}].agent"),
                        "a delegated task must name the agent it is delegated to",
                    )
                    .into());
                };
                self.check_interaction(tenant, &swarm, Interaction::Delegate, from, Some(&to))?;
                t.swarm_id.get_or_insert_with(|| swarm.clone());
            }
        }
        self.check_pinned_drivers(tenant, &tasks)?;
        self.check_submit_budget(tenant, &tasks).await?;
        let now = now_ms();
        let mut picks = self.reserve_new(tenant, &tasks, now);
        let offers = if picks.iter().any(Option::is_some) {
            let lease = i64::try_from(self.config.lease_ms).unwrap_or(i64::MAX);
            picks
                .iter()
                .map(|p| {
                    p.as_ref().map(|p| cflow_store::DirectAssign {
                        task_id: p.task.id.clone(),
                        agent_id: p.agent.clone(),
                        worker_id: p.worker.clone(),
                        lease_ms: lease,
                    })
                })
                .collect()
        } else {
            picks.clear();
            Vec::new()
        };
        let (submitted, attempts) = match self
            .store
            .submit_tasks_direct(ctx, tenant, tasks.clone(), offers)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                let mut st = self.lock();
                for p in picks.into_iter().flatten() {
                    st.unreserve(p, false, now);
                }
                return Err(e.into());
            }
        };
        picks.resize_with(submitted.len(), || None);
        // Tasks without dependencies or replicas are queued from what was submitted; the others
        // are read back (resolved dependency ids, replica tasks).
        let mut ready = Vec::new();
        let mut direct = Vec::new();
        let mut started = Vec::new();
        let mut unreserved = Vec::new();
        for (((s, new), pick), attempt) in submitted.iter().zip(tasks).zip(picks).zip(attempts) {
            if s.existing {
                unreserved.extend(pick.map(|p| (p, false)));
                continue;
            }
            let state = match s.state {
                // Assigned in the submission's transaction: it was queued first.
                cflow_core::task::TaskState::Assigned => cflow_core::task::TaskState::Queued,
                other => other,
            };
            self.publish(
                tenant,
                &format!("task.{}", state.as_str()),
                &s.id,
                json!({"swarm_id": new.swarm_id, "priority": new.priority, "submitted": true}),
            );
            if let Some(pick) = pick {
                match attempt {
                    Some(a) => started.push((pick, a)),
                    // The agent could not take it after all: it waits in the queue.
                    None => unreserved.push((pick, s.state == cflow_core::task::TaskState::Queued)),
                }
                continue;
            }
            // A quorum parent that is ready is `running` at once: its replicas are queued.
            if new.replicas > 1 && s.state == cflow_core::task::TaskState::Running {
                ready.push(s.id.clone());
                continue;
            }
            if s.state != cflow_core::task::TaskState::Queued {
                continue;
            }
            if new.depends_on.is_empty() && new.replicas <= 1 {
                direct.push(QTask::from_new(&s.id, tenant, new, now));
            } else {
                ready.push(s.id.clone());
            }
        }
        let mut events = Vec::with_capacity(started.len());
        {
            let mut st = self.lock();
            for (pick, a) in started {
                events.push((a.task_id.clone(), st.assigned(pick, &a, BTreeMap::new())));
            }
            for (pick, requeue) in unreserved {
                st.unreserve(pick, requeue, now);
            }
            for q in direct {
                st.enqueue(q);
            }
        }
        self.metrics.assigned(events.len() as u64);
        for (id, data) in events {
            self.publish(tenant, "task.assigned", &id, data);
        }
        self.wake.notify_one();
        self.enqueue_ids(tenant, &ready, now).await?;
        Ok(submitted)
    }

    /// Idle agents reserved for the new, ready tasks of a submission (see
    /// [`super::state::State::reserve_new`]), one element per task; the ids of the tasks that
    /// may start at once are made here.
    fn reserve_new(&self, tenant: &str, tasks: &[NewTask], now: i64) -> Vec<Option<Pick>> {
        let idle = {
            let st = self.lock();
            if !st.queue.is_empty() {
                return Vec::new();
            }
            st.swarms.values().map(|s| s.idle.len()).sum::<usize>()
        };
        if idle == 0 {
            return Vec::new();
        }
        // A task with dependencies or replicas is not ready as submitted. At most one task per
        // idle agent can start, so only that many (the highest priorities) are offered: the
        // rest of a bulk submission is queued as usual without being copied here first.
        let mut ready: Vec<usize> = (0..tasks.len())
            .filter(|&i| tasks[i].depends_on.is_empty() && tasks[i].replicas <= 1)
            .collect();
        ready.sort_by_key(|&i| std::cmp::Reverse(tasks[i].priority));
        ready.truncate(idle);
        let mut candidates: Vec<Option<QTask>> = tasks.iter().map(|_| None).collect();
        for i in ready {
            let id = uuid::Uuid::now_v7().to_string();
            candidates[i] = Some(QTask::from_new(&id, tenant, tasks[i].clone(), now));
        }
        self.lock().reserve_new(&candidates, now)
    }

    /// Loads tasks that the store just queued and puts them in the ready queue (replica tasks
    /// of a parent are queued in its place).
    pub(crate) async fn enqueue_ids(
        &self,
        tenant: &str,
        ids: &[String],
        now: i64,
    ) -> SchedResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut loaded = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(t) = self.store.get_task(tenant, id).await? {
                if t.state == cflow_core::task::TaskState::Queued {
                    loaded.push(QTask::from_task(&t, now));
                } else if t.replicas > 1 {
                    for r in self.store.replicas_of(tenant, id).await? {
                        if r.state == cflow_core::task::TaskState::Queued {
                            loaded.push(QTask::from_task(&r, now));
                        }
                    }
                }
            }
        }
        {
            let mut st = self.lock();
            for q in loaded {
                st.enqueue(q);
            }
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Cancels the task and its waiting dependents; a running attempt's process group is killed
    /// by its worker (woken at once).
    pub async fn cancel(
        &self,
        ctx: &AuditContext,
        tenant: &str,
        task_id: &str,
    ) -> SchedResult<Cancelled> {
        let now = now_ms();
        let cancelled = self.store.cancel_task(ctx, tenant, task_id, now).await?;
        {
            let mut st = self.lock();
            st.dequeue(task_id);
            for d in &cancelled.dependents {
                st.dequeue(d);
            }
            for k in &cancelled.kill {
                st.dequeue(&k.task_id);
                if let Some(run) = st.finished(&k.task_id, now) {
                    if let (Some(p), Some(a)) = (run.permit, st.agents.get_mut(&run.agent)) {
                        a.breaker.release(p);
                    }
                    if let Some(w) = st.workers.get_mut(&k.worker_id) {
                        w.cancels.push(cflow_agents::proto::Held {
                            task_id: k.task_id.clone(),
                            epoch: k.epoch,
                        });
                        w.notify.notify_one();
                    }
                }
            }
        }
        self.publish(
            tenant,
            "task.cancelled",
            task_id,
            json!({"reason": "cancelled"}),
        );
        for d in &cancelled.dependents {
            self.publish(
                tenant,
                "task.cancelled",
                d,
                json!({"reason": format!("dependency {task_id} was cancelled")}),
            );
        }
        self.metrics.outcome("cancelled");
        self.wake.notify_one();
        Ok(cancelled)
    }

    /// Tasks of the tenant waiting for an agent.
    pub fn queue_depth(&self, tenant: &str) -> u64 {
        self.lock().queue.len_for(tenant) as u64
    }
}
