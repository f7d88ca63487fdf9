//! Starting the scheduler (rebuilding the hot state from the store) and its loops: the
//! dispatcher, and a maintenance tick for retries, expired leases, worker health, breaker
//! cool-downs and the autoscaler.

use cflow_agents::{Drivers, ExecConfig};
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cflow_core::breaker::{BreakerState, CircuitBreaker};
use cflow_core::task::TaskState;
use cflow_store::{AgentState, AuditContext, NewAgent, Store, SwarmState};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::state::{Pick, QTask, State, SwarmRt, TenantRt, WorkerRt, WorkerState};
use super::{SchedConfig, SchedResult, Scheduler, Shared};
use crate::events::EventBus;
use crate::state::now_ms;

/// Assignments committed per store round trip at most.
const DISPATCH_BATCH: usize = 1024;
/// How often the maintenance tick runs.
const TICK: Duration = Duration::from_millis(250);

impl Scheduler {
    /// Rebuilds the hot state from the store (swarms, agents, live attempts, queued tasks,
    /// pending retries) and starts the loops. Also starts the local worker pool when
    /// `config.local_slots > 0`.
    pub async fn start(store: Store, events: EventBus, config: SchedConfig) -> SchedResult<Self> {
        let drivers = Drivers::builtin(ExecConfig::default());
        Self::start_with(store, events, config, drivers).await
    }

    /// [`Scheduler::start`] with the local pool's drivers (the server passes the sandboxed ones).
    pub async fn start_with(
        store: Store,
        events: EventBus,
        config: SchedConfig,
        drivers: Drivers,
    ) -> SchedResult<Self> {
        config.validate()?;
        let now = now_ms();
        let mut st = State::default();
        for (tenant, q) in store.tenant_quotas().await? {
            let sandbox = store
                .tenant_sandbox(&tenant)
                .await?
                .and_then(|v| cflow_sandbox::host::Settings::parse(&v).ok());
            st.tenants.insert(
                tenant,
                TenantRt {
                    weight: u32::try_from(q.weight).unwrap_or(1),
                    max_running: q.max_running,
                    running: 0,
                    sandbox,
                },
            );
        }
        for s in store.active_swarms().await? {
            st.swarms.insert(s.id.clone(), SwarmRt::new(s));
        }
        let breaker = CircuitBreaker::new(config.breaker());
        let sys = AuditContext {
            source: Some("scheduler".to_string()),
            ..AuditContext::default()
        };
        for a in store.active_agents().await? {
            let a = if a.state == AgentState::Starting {
                store
                    .set_agent_state(&sys, &a.tenant_id, &a.id, AgentState::Idle)
                    .await?
            } else {
                a
            };
            st.add_agent(a, breaker.clone(), now);
        }
        // Attempts that were live when the server stopped keep running on their workers: a
        // worker that reconnects with the same id and lists them in its polls keeps them;
        // otherwise their leases expire and they are queued again.
        for la in store.live_attempts().await? {
            let q = QTask::from_task(&la.task, now);
            let worker = la.attempt.worker_id.clone();
            let w = st
                .workers
                .entry(worker.clone())
                .or_insert_with(|| WorkerRt {
                    id: worker.clone(),
                    name: worker.clone(),
                    tenant: None,
                    labels: BTreeMap::new(),
                    drivers: Default::default(),
                    slots: 0,
                    running: Default::default(),
                    mailbox: Vec::new(),
                    cancels: Vec::new(),
                    notify: Arc::new(Notify::new()),
                    last_seen: now,
                    leases_extended_at: 0,
                    state: WorkerState::Suspected,
                });
            w.running.insert(q.id.clone());
            w.slots += 1;
            if let Some(a) = st.agents.get_mut(&la.attempt.agent_id) {
                a.running = Some(q.id.clone());
                a.worker = Some(worker.clone());
                let swarm = a.rec.swarm_id.clone();
                if let Some(s) = st.swarms.get_mut(&swarm) {
                    s.idle.remove(&la.attempt.agent_id);
                    s.running += 1;
                }
            }
            if let Some(p) = &q.replica_of {
                st.replica_agents
                    .entry(p.clone())
                    .or_default()
                    .insert(la.attempt.agent_id.clone());
            }
            st.tenant(&q.tenant).running += 1;
            st.running.insert(
                q.id.clone(),
                super::state::RunRt {
                    task: q,
                    epoch: la.attempt.epoch,
                    agent: la.attempt.agent_id.clone(),
                    worker,
                    permit: None,
                },
            );
        }
        let mut cursor = None;
        loop {
            let page = store.ready_tasks_after(cursor.as_ref(), 10_000).await?;
            let Some(last) = page.last() else { break };
            cursor = Some(cflow_store::ReadyCursor::of(last));
            for t in &page {
                st.enqueue(QTask::from_task(t, t.updated_at));
            }
        }
        for (tenant, id, at) in store.pending_retries().await? {
            st.retries.push(Reverse((at, tenant, id)));
        }
        tracing::info!(
            queued = st.queue.len(),
            running = st.running.len(),
            agents = st.agents.len(),
            "scheduler state rebuilt from the store"
        );
        let sched = Scheduler(Arc::new(Shared {
            store,
            events,
            config,
            st: Mutex::new(st),
            wake: Notify::new(),
            membership: tokio::sync::Mutex::new(()),
            stop: CancellationToken::new(),
            metrics: Default::default(),
            sys,
            model_host: tokio::sync::SetOnce::new(),
            usage_hook: std::sync::OnceLock::new(),
        }));
        tokio::spawn(sched.clone().dispatcher());
        tokio::spawn(sched.clone().budget_loop());
        tokio::spawn(sched.clone().maintenance());
        if sched.config.local_slots > 0 {
            super::local::start_pool(&sched, drivers);
        }
        Ok(sched)
    }

    async fn dispatcher(self) {
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(TICK) => {}
                () = self.stop.cancelled() => return,
            }
            loop {
                let picks = self.lock().pick_batch(DISPATCH_BATCH, now_ms());
                if picks.is_empty() {
                    break;
                }
                self.commit(picks).await;
            }
        }
    }

    /// Commits reserved picks as attempts, then hands them to their workers.
    async fn commit(&self, picks: Vec<Pick>) {
        let now = now_ms();
        let lease = i64::try_from(self.config.lease_ms).unwrap_or(i64::MAX);
        let mut inputs = Vec::with_capacity(picks.len());
        for p in &picks {
            if p.task.depends_on.is_empty() {
                inputs.push(BTreeMap::new());
                continue;
            }
            let got = self
                .store
                .task_outputs(&p.task.tenant, &p.task.depends_on)
                .await
                .unwrap_or_default();
            inputs.push(got);
        }
        let reqs = picks
            .iter()
            .map(|p| cflow_store::AssignRequest {
                task_id: p.task.id.clone(),
                agent_id: p.agent.clone(),
                worker_id: p.worker.clone(),
                lease_ms: lease,
                now,
            })
            .collect();
        let results = match self.store.assign_tasks(&self.sys, reqs).await {
            Ok(r) => r,
            Err(e) => {
                // The batch as a whole failed (database down): nothing was assigned.
                tracing::warn!(error = %e, "cannot commit assignments; queueing them again");
                {
                    let mut st = self.lock();
                    for pick in picks {
                        st.unreserve(pick, true, now);
                    }
                }
                tokio::time::sleep(TICK).await;
                return;
            }
        };
        let mut events = Vec::new();
        let mut failed = Vec::new();
        {
            let mut st = self.lock();
            for ((pick, res), inputs) in picks.into_iter().zip(results).zip(inputs) {
                match res {
                    Ok(a) => {
                        let (tenant, id) = (pick.task.tenant.clone(), pick.task.id.clone());
                        events.push((tenant, id, st.assigned(pick, &a, inputs)));
                    }
                    Err(e) => failed.push((pick, e)),
                }
            }
        }
        self.metrics.assigned(events.len() as u64);
        for (tenant, id, data) in events {
            self.publish(&tenant, "task.assigned", &id, data);
        }
        for (pick, e) in failed {
            // The store refused: the task was cancelled meanwhile (drop it), or the agent or
            // swarm changed state (queue the task again).
            let still_queued = self.still_queued(&pick.task).await;
            tracing::debug!(task = %pick.task.id, error = %e, still_queued, "assignment refused");
            self.lock().unreserve(pick, still_queued, now);
        }
    }

    /// Whether a task whose assignment the store refused is still queued there (else it was
    /// cancelled meanwhile). When the store cannot say, it is queued again in memory: a refused
    /// assignment of a task that is gone costs a pick, a task dropped from memory would wait for
    /// the next start.
    pub(crate) async fn still_queued(&self, task: &QTask) -> bool {
        match self.store.get_task(&task.tenant, &task.id).await {
            Ok(Some(t)) => t.state == TaskState::Queued,
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(task = %task.id, error = %e, "cannot read a task whose assignment was refused; queueing it again");
                true
            }
        }
    }

    async fn maintenance(self) {
        let mut last_scale = 0;
        loop {
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                () = self.stop.cancelled() => return,
            }
            let now = now_ms();
            if let Err(e) = self.promote_due(now).await {
                tracing::warn!(error = %e, "retry promotion failed; trying again");
            }
            if let Err(e) = self.expire_leases(now).await {
                tracing::warn!(error = %e, "lease expiry failed; trying again");
            }
            self.check_workers(now);
            self.half_open_breakers(now).await;
            let every = i64::try_from(self.config.autoscale_interval_ms).unwrap_or(1000);
            if now - last_scale >= every {
                last_scale = now;
                self.autoscale(now).await;
            }
        }
    }

    async fn promote_due(&self, now: i64) -> SchedResult<()> {
        let due: Vec<(String, String)> = {
            let mut st = self.lock();
            let mut due = Vec::new();
            while st
                .retries
                .peek()
                .is_some_and(|Reverse((at, _, _))| *at <= now)
            {
                let Reverse((_, tenant, id)) = st.retries.pop().expect("peeked");
                due.push((tenant, id));
            }
            due
        };
        if due.is_empty() {
            return Ok(());
        }
        self.store.promote_retries(&self.sys, now, 10_000).await?;
        let mut by_tenant: HashMap<String, Vec<String>> = HashMap::new();
        for (t, id) in due {
            by_tenant.entry(t).or_default().push(id);
        }
        for (tenant, ids) in by_tenant {
            self.enqueue_ids(&tenant, &ids, now).await?;
        }
        Ok(())
    }

    async fn expire_leases(&self, now: i64) -> SchedResult<()> {
        for lease in self.store.expired_leases(now, 1000).await? {
            match self
                .store
                .requeue_lost(&self.sys, &lease.task_id, lease.epoch, now)
                .await
            {
                Ok(settled) => {
                    self.publish(
                        &lease.tenant_id,
                        "task.lost",
                        &lease.task_id,
                        json!({"epoch": lease.epoch, "worker_id": lease.worker_id, "agent_id": lease.agent_id}),
                    );
                    self.settle(&lease.task_id, &settled, None, now).await;
                    // The worker may still run it: make it stop if it ever polls again.
                    let mut st = self.lock();
                    if let Some(w) = st.workers.get_mut(&lease.worker_id) {
                        w.cancels.push(cflow_agents::proto::Held {
                            task_id: lease.task_id.clone(),
                            epoch: lease.epoch,
                        });
                    }
                }
                // Extended meanwhile, or already ended: nothing to do.
                Err(cflow_store::Error::State(_) | cflow_store::Error::StaleEpoch { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Suspects a worker that missed two heartbeats and declares it lost when a lease would
    /// have expired; lost workers with nothing left are forgotten after ten minutes.
    fn check_workers(&self, now: i64) {
        let hb = i64::try_from(self.config.heartbeat_ms).unwrap_or(i64::MAX);
        let lease = i64::try_from(self.config.lease_ms).unwrap_or(i64::MAX);
        let mut changes = Vec::new();
        {
            let mut st = self.lock();
            for w in st.workers.values_mut() {
                let silent = now - w.last_seen;
                let next = match w.state {
                    WorkerState::Active if silent > 2 * hb => Some(WorkerState::Suspected),
                    WorkerState::Suspected | WorkerState::Draining if silent > lease => {
                        Some(WorkerState::Lost)
                    }
                    _ => None,
                };
                if let Some(next) = next {
                    w.state = next;
                    changes.push((w.tenant.clone(), w.id.clone(), next, silent));
                }
            }
            st.workers.retain(|_, w| {
                !(w.state == WorkerState::Lost
                    && w.running.is_empty()
                    && now - w.last_seen > 600_000)
            });
        }
        for (tenant, id, state, silent) in changes {
            self.publish(
                tenant.as_deref().unwrap_or(super::ALL_TENANTS),
                &format!("worker.{}", state.as_str()),
                &id,
                json!({"silent_ms": silent}),
            );
        }
    }

    /// Quarantined agents whose breaker cool-down ended become idle for one probe task.
    async fn half_open_breakers(&self, now: i64) {
        let due: Vec<(String, String)> = {
            let st = self.lock();
            st.agents
                .values()
                .filter(|a| {
                    a.rec.state == AgentState::Quarantined
                        && a.breaker.state(now) == BreakerState::HalfOpen
                })
                .map(|a| (a.rec.tenant_id.clone(), a.rec.id.clone()))
                .collect()
        };
        for (tenant, agent) in due {
            self.breaker_changed(&tenant, &agent, BreakerState::HalfOpen)
                .await;
        }
        self.wake.notify_one();
    }

    /// Demand-based scaling per swarm and pool: queued tasks that waited longer than
    /// `scale_up_wait_ms` with no idle agent → more agents (up to `max`); agents idle longer
    /// than `scale_down_idle_ms` beyond `min` and `prewarm` → fewer. Decisions are events.
    async fn autoscale(&self, now: i64) {
        struct Plan {
            tenant: String,
            swarm: String,
            agent_type: String,
            new: NewAgent,
            add: i64,
            remove: Vec<String>,
            reason: String,
        }
        let _members = self.membership.lock().await;
        let wait = i64::try_from(self.config.scale_up_wait_ms).unwrap_or(i64::MAX);
        let idle_for = i64::try_from(self.config.scale_down_idle_ms).unwrap_or(i64::MAX);
        let mut plans = Vec::new();
        {
            let st = self.lock();
            for s in st.swarms.values() {
                if s.rec.state != SwarmState::Active {
                    continue;
                }
                let oldest = s.queued.first().map(|(at, _)| now - at);
                let depth = s.queued.len() as i64;
                for pool in &s.rec.pools {
                    let mine: Vec<&super::state::AgentRt> = s
                        .members
                        .iter()
                        .filter_map(|id| st.agents.get(id))
                        .filter(|a| a.rec.agent_type == pool.agent_type)
                        .filter(|a| {
                            matches!(a.rec.state, AgentState::Idle | AgentState::Quarantined)
                        })
                        .collect();
                    let live = mine.len() as i64;
                    let idle: Vec<&&super::state::AgentRt> =
                        mine.iter().filter(|a| s.idle.contains(&a.rec.id)).collect();
                    let idle_n = idle.len() as i64;
                    let new = NewAgent {
                        agent_type: pool.agent_type.clone(),
                        driver: pool.driver.clone(),
                        capabilities: if pool.capabilities.is_empty() {
                            cflow_core::agent_type::default_capabilities(&pool.agent_type)
                        } else {
                            pool.capabilities.clone()
                        },
                        labels: pool.labels.clone(),
                        sandbox: None,
                    };
                    // Demand this pool can serve: queued tasks of the swarm beyond idle agents.
                    let waiting = oldest.is_some_and(|w| w >= wait);
                    let floor = pool.min.max(pool.prewarm.min(pool.max));
                    let mut add = (floor - live).max(0);
                    if waiting && depth > idle_n {
                        add = add.max((depth - idle_n).min(8));
                    }
                    add = add.min(pool.max - live).max(0);
                    if pool.prewarm > idle_n && live < pool.max {
                        add = add.max((pool.prewarm - idle_n).min(pool.max - live));
                    }
                    let mut remove = Vec::new();
                    if add == 0 && depth == 0 {
                        let keep = pool.min.max(0);
                        let spare_idle = idle_n - pool.prewarm.max(0);
                        let mut excess = (live - keep).min(spare_idle).min(1);
                        for a in &idle {
                            if excess <= 0 {
                                break;
                            }
                            if now - a.idle_since >= idle_for {
                                remove.push(a.rec.id.clone());
                                excess -= 1;
                            }
                        }
                    }
                    if add > 0 || !remove.is_empty() {
                        let reason = if add > 0 {
                            format!(
                                "{depth} queued, oldest waited {} ms, {idle_n} idle of {live} (min {}, max {}, prewarm {})",
                                oldest.unwrap_or(0),
                                pool.min,
                                pool.max,
                                pool.prewarm
                            )
                        } else {
                            format!(
                                "idle for over {idle_for} ms with nothing queued; {live} live, min {}",
                                pool.min
                            )
                        };
                        plans.push(Plan {
                            tenant: s.rec.tenant_id.clone(),
                            swarm: s.rec.id.clone(),
                            agent_type: pool.agent_type.clone(),
                            new,
                            add,
                            remove,
                            reason,
                        });
                    }
                }
            }
        }
        for p in plans {
            let want = usize::try_from(p.add).unwrap_or(0);
            let added = match self
                .spawn_agents(&self.sys, &p.tenant, &p.swarm, p.new.clone(), want)
                .await
            {
                Ok(a) => a.len(),
                Err(e) => {
                    tracing::warn!(swarm = %p.swarm, error = %e, "autoscaler cannot add agents");
                    0
                }
            };
            if added > 0 {
                self.metrics.scaled(true);
                self.publish(
                    &p.tenant,
                    "autoscaler.scale_up",
                    &p.swarm,
                    json!({"type": p.agent_type, "added": added, "reason": p.reason}),
                );
            }
            for agent in &p.remove {
                if self.stop_agent(&self.sys, &p.tenant, agent).await.is_ok() {
                    self.metrics.scaled(false);
                    self.publish(
                        &p.tenant,
                        "autoscaler.scale_down",
                        &p.swarm,
                        json!({"type": p.agent_type, "removed": agent, "reason": p.reason}),
                    );
                }
            }
        }
    }
}
