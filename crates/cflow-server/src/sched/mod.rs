//! The scheduler: the in-memory hot state of orchestration (ready queues per tenant, agents,
//! workers, live attempts), rebuilt from the store at start, and the loops that drive it
//! (dispatch, lease expiry, retries, autoscaling).
//!
//! Every change is first committed to the store, then applied in memory, then published on the
//! [`EventBus`](crate::events::EventBus). See ARCHITECTURE.md "Scheduler".

mod api;
mod budget;
mod host;
mod local;
mod loops;
mod metrics;
mod state;
mod workers;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cflow_core::breaker::{BreakerConfig, BreakerSnapshot};
use cflow_store::{AuditContext, Store};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::events::EventBus;

pub use budget::{FinishedUsage, UsageHook};
pub use host::{CallContext, DelegationTarget, ModelHost};

/// Scheduler settings (part of the server configuration).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedConfig {
    /// Slots of the local worker pool inside the server (0: no local pool; remote workers only).
    pub local_slots: u32,
    /// An attempt's lease runs this long past the worker's last poll (ms).
    pub lease_ms: u64,
    /// Workers poll at least this often (ms); a worker silent for twice this is suspected.
    pub heartbeat_ms: u64,
    /// Consecutive failures that open an agent's circuit breaker, and its cool-down (ms).
    pub breaker_failures: u32,
    pub breaker_cooldown_ms: u64,
    /// How often the autoscaler looks at demand (ms).
    pub autoscale_interval_ms: u64,
    /// An idle agent above its pool's `min` (and pre-warm) is stopped after this long (ms).
    pub scale_down_idle_ms: u64,
    /// A task that waited this long for an agent counts as demand for one more (ms).
    pub scale_up_wait_ms: u64,
}

impl Default for SchedConfig {
    fn default() -> Self {
        Self {
            local_slots: 8,
            lease_ms: 15_000,
            heartbeat_ms: 2_000,
            breaker_failures: 3,
            breaker_cooldown_ms: 30_000,
            autoscale_interval_ms: 1_000,
            scale_down_idle_ms: 60_000,
            scale_up_wait_ms: 500,
        }
    }
}

impl SchedConfig {
    /// Refuses settings the scheduler cannot honour, naming the setting.
    pub fn validate(&self) -> Result<(), cflow_core::ValidationError> {
        use cflow_core::ValidationError as V;
        if self.local_slots > 1024 {
            return Err(V::new(
                "sched.local_slots",
                format!("must be from 0 to 1024 (got {})", self.local_slots),
            ));
        }
        if !(100..=600_000).contains(&self.lease_ms) {
            return Err(V::new(
                "sched.lease_ms",
                format!("must be from 100 to 600000 (got {})", self.lease_ms),
            ));
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms * 2 > self.lease_ms {
            return Err(V::new(
                "sched.heartbeat_ms",
                format!(
                    "must be at least 1 and at most half of lease_ms ({}) (got {})",
                    self.lease_ms, self.heartbeat_ms
                ),
            ));
        }
        if self.breaker_failures == 0 {
            return Err(V::new("sched.breaker_failures", "must be at least 1"));
        }
        self.breaker().validate()
    }

    pub fn breaker(&self) -> BreakerConfig {
        BreakerConfig {
            failure_threshold: self.breaker_failures,
            cooldown_ms: i64::try_from(self.breaker_cooldown_ms).unwrap_or(i64::MAX),
            ..BreakerConfig::default()
        }
    }
}

/// What a scheduler operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    #[error(transparent)]
    Store(#[from] cflow_store::Error),
    /// The topology (or another policy) forbids it: 403, audited.
    #[error("{0}")]
    Refused(String),
    /// 404 with this detail.
    #[error("{0}")]
    NotFound(String),
    /// 400 naming the field.
    #[error(transparent)]
    Invalid(#[from] cflow_core::ValidationError),
    /// 409 with this detail.
    #[error("{0}")]
    Conflict(String),
    /// The scheduler is shutting down: 503.
    #[error("the scheduler is shutting down")]
    ShuttingDown,
    /// A model task while its tenant's or project's budget is spent: 429 with the budget's
    /// story (`crate::cost::budget_error`).
    #[error("{0}")]
    Budget(Box<cflow_core::budget::BudgetExceeded>),
}

pub type SchedResult<T> = Result<T, SchedError>;

/// An agent's live scheduling state (not stored: rebuilt from attempts at start).
#[derive(Debug, Clone, Serialize)]
pub struct AgentLive {
    /// The live state: `busy` while it runs a task (the store keeps `idle` then).
    pub state: cflow_store::AgentState,
    pub breaker: BreakerSnapshot,
    /// The worker slot it occupies while running.
    pub worker_id: Option<String>,
    pub current_task: Option<String>,
    /// Tasks finished since it was (re)started, for recycling.
    pub tasks_since_start: u64,
}

/// A connected (or recently connected) worker.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerView {
    pub id: String,
    pub name: String,
    /// `None`: the local pool, which serves every tenant.
    pub tenant_id: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub drivers: Vec<String>,
    pub slots: u32,
    pub running: u32,
    /// `active`, `suspected` (missed heartbeats), `lost` (its leases expired) or `draining`.
    pub state: String,
    /// Unix ms of its last poll.
    pub last_seen: i64,
}

/// Live numbers of one swarm for its status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SwarmLive {
    /// Tasks of the swarm waiting for an agent.
    pub queued: u64,
    pub running: u64,
    pub agents_by_state: BTreeMap<String, u64>,
}

/// The tenant id of events about platform-wide workers (the local pool, superadmin workers):
/// every tenant's event stream shows them, since every tenant's work runs there.
pub const ALL_TENANTS: &str = "*";

/// The handle every route and the local pool use. Cheap to clone.
#[derive(Clone)]
pub struct Scheduler(Arc<Shared>);

/// The scheduler's shared state; reach it through [`Scheduler`].
pub struct Shared {
    store: Store,
    events: EventBus,
    config: SchedConfig,
    st: Mutex<state::State>,
    /// Wakes the dispatcher: tasks queued, agents or slots freed, swarms resumed.
    wake: Notify,
    /// Held while a swarm's agent count is brought to its pools' bounds (creation, scale, the
    /// autoscaler), so two of them never both fill the same gap.
    membership: tokio::sync::Mutex<()>,
    stop: CancellationToken,
    metrics: metrics::SchedMetrics,
    /// The audit context of the scheduler's own changes (assignments, lease expiry, scaling).
    sys: AuditContext,
    /// Serves model loops' calls once they passed the fence; installed by the server at start
    /// (it is the server's state, which holds this scheduler, so it cannot be passed in). A call
    /// that arrives before (the local pool starts first) waits for it.
    model_host: tokio::sync::SetOnce<Arc<dyn ModelHost>>,
    /// Records the model usage that `Finished` reports carry; installed by the server at start
    /// (see `budget.rs`).
    usage_hook: OnceLock<UsageHook>,
}

impl std::ops::Deref for Scheduler {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, state::State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, tenant: &str, kind: &str, subject: &str, data: serde_json::Value) {
        self.events.publish(tenant, kind, subject, data);
    }
}

impl Scheduler {
    pub fn config(&self) -> &SchedConfig {
        &self.config
    }

    /// Stops the loops and the local pool; in-flight calls finish, open long-polls and event
    /// streams end.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Completes when [`Scheduler::shutdown`] was called.
    pub async fn stopped(&self) {
        self.stop.cancelled().await;
    }

    /// Sets a tenant's fair-share weight and concurrency quota, effective for the next
    /// dispatch.
    pub async fn set_quota(
        &self,
        ctx: &AuditContext,
        tenant: &str,
        quota: cflow_store::TenantQuota,
    ) -> SchedResult<cflow_store::TenantQuota> {
        let q = self.store.set_tenant_quota(ctx, tenant, quota).await?;
        {
            let mut st = self.lock();
            let t = st.tenant(tenant);
            t.weight = u32::try_from(q.weight).unwrap_or(1);
            t.max_running = q.max_running;
            let weight = t.weight;
            st.queue.set_weight(tenant, weight);
        }
        self.wake.notify_one();
        Ok(q)
    }

    /// Sets a tenant's sandbox overrides (stored and audited, then applied to the tenant's next
    /// assignments). `None` clears them.
    pub async fn set_tenant_sandbox(
        &self,
        ctx: &AuditContext,
        tenant: &str,
        sandbox: Option<serde_json::Value>,
    ) -> SchedResult<()> {
        let settings = sandbox
            .as_ref()
            .map(cflow_sandbox::host::Settings::parse)
            .transpose()
            .map_err(|e| {
                cflow_store::Error::Invalid(cflow_core::ValidationError::new("sandbox", e))
            })?;
        self.store.set_tenant_sandbox(ctx, tenant, sandbox).await?;
        self.lock().tenant(tenant).sandbox = settings;
        Ok(())
    }

    /// Appends the scheduler's series to a Prometheus scrape.
    pub fn render_metrics(&self, out: &mut String) {
        self.metrics.render(out);
        let st = self.lock();
        let mut depth: Vec<(String, u64)> = st
            .queue
            .depths()
            .map(|(t, n)| (t.to_string(), u64::try_from(n).unwrap_or(u64::MAX)))
            .collect();
        depth.sort();
        metrics::gauge(
            out,
            "cflow_queue_depth",
            "Tasks queued and waiting for an agent, by tenant.",
            "tenant",
            depth.iter().map(|(t, n)| (t.as_str(), *n)),
        );
        let mut agents: BTreeMap<&'static str, u64> = BTreeMap::new();
        for a in st.agents.values() {
            *agents.entry(a.live_state().as_str()).or_default() += 1;
        }
        metrics::gauge(
            out,
            "cflow_agents",
            "Live agents, by state.",
            "state",
            agents,
        );
        let mut workers: BTreeMap<&'static str, u64> = BTreeMap::new();
        for w in st.workers.values() {
            *workers.entry(w.state.as_str()).or_default() += 1;
        }
        metrics::gauge(
            out,
            "cflow_workers",
            "Connected workers, by state.",
            "state",
            workers,
        );
        metrics::gauge(
            out,
            "cflow_tasks_running",
            "Attempts assigned or running.",
            "scope",
            [("all", u64::try_from(st.running.len()).unwrap_or(u64::MAX))],
        );
    }
}
