//! Model loops' calls to the server ([`HostCall`]): the scheduler fences each one by the
//! attempt's epoch and hands it, with the attempt's context, to the late-bound [`ModelHost`]
//! (the server's `AppState`, in `crate::modelhost`), which the scheduler cannot hold itself
//! because the state holds the scheduler.

use std::sync::Arc;
use std::time::Duration;

use cflow_agents::BoxFuture;
use cflow_agents::host::{HostCall, HostError};
use cflow_agents::proto::HostReply;

use super::{SchedError, SchedResult, Scheduler};
use crate::state::now_ms;

/// How long a call waits for the server to install its [`ModelHost`].
const HOST_WAIT: Duration = Duration::from_secs(10);

/// Who is calling: the attempt a [`HostCall`] belongs to, as the scheduler knows it while the
/// attempt runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallContext {
    pub tenant_id: String,
    pub task_id: String,
    pub agent_id: String,
    /// The agent's swarm (a task without a swarm runs on an agent that has one).
    pub swarm_id: Option<String>,
    /// The swarm's project (by name), when it has one.
    pub project: Option<String>,
    pub epoch: i64,
    pub worker_id: String,
}

/// What serves the calls that passed the fence. Every failure is part of the [`HostReply`]: a
/// call that reached the handler never turns into an HTTP error.
pub trait ModelHost: Send + Sync + 'static {
    fn serve(&self, ctx: CallContext, call: HostCall) -> BoxFuture<'_, HostReply>;
}

/// A fellow member of a delegating agent's swarm (see [`Scheduler::delegation_targets`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelegationTarget {
    pub agent_id: String,
    pub agent_type: String,
    pub driver: String,
    pub capabilities: Vec<String>,
    /// Whether it is running a task right now.
    pub busy: bool,
    /// Whether the topology lets the delegating agent hand work to it.
    pub allowed: bool,
}

impl Scheduler {
    /// Installs the handler of model-loop calls; the server does it once at start. Returns
    /// `false` (and keeps the first) when one was already installed.
    pub fn set_model_host(&self, host: Arc<dyn ModelHost>) -> bool {
        self.model_host.set(host).is_ok()
    }

    /// A model loop's call for the attempt `(task_id, epoch)` of `worker_id`. `tenant`: the
    /// tenant of the worker's key (`None`: the local pool or a superadmin's worker).
    ///
    /// Served only while the worker holds that attempt at that epoch: another tenant's or an
    /// unknown task is [`NotFound`](cflow_store::Error::NotFound) (404), an attempt that ended,
    /// moved or was re-assigned is [`StaleEpoch`](cflow_store::Error::StaleEpoch) or
    /// [`State`](cflow_store::Error::State) (409); the worker stops the loop on either.
    pub async fn host_call(
        &self,
        tenant: Option<&str>,
        worker_id: &str,
        task_id: &str,
        epoch: i64,
        call: HostCall,
    ) -> SchedResult<HostReply> {
        let fence = {
            let mut st = self.lock();
            let st = &mut *st;
            let w = Self::check_worker(st, tenant, worker_id)?;
            w.last_seen = now_ms();
            match st.running.get(task_id) {
                // Another tenant's attempt does not exist for a tenant's worker.
                Some(run) if tenant.is_some_and(|t| t != run.task.tenant) => Fence::Unknown,
                Some(run) if run.epoch == epoch && run.worker == worker_id => {
                    let swarm_id = run
                        .task
                        .swarm
                        .clone()
                        .or_else(|| st.agents.get(&run.agent).map(|a| a.rec.swarm_id.clone()));
                    let project = swarm_id
                        .as_ref()
                        .and_then(|s| st.swarms.get(s))
                        .and_then(|s| s.rec.project.clone());
                    Fence::Held(CallContext {
                        tenant_id: run.task.tenant.clone(),
                        task_id: task_id.to_string(),
                        agent_id: run.agent.clone(),
                        swarm_id,
                        project,
                        epoch,
                        worker_id: worker_id.to_string(),
                    })
                }
                Some(run) => Fence::Stale(Some(run.epoch).filter(|_| run.worker == worker_id)),
                None => Fence::NotRunning,
            }
        };
        let ctx = match fence {
            Fence::Held(ctx) => ctx,
            Fence::Unknown => return Err(not_found(task_id)),
            Fence::Stale(current) => {
                return Err(cflow_store::Error::StaleEpoch {
                    task_id: task_id.to_string(),
                    epoch,
                    current,
                }
                .into());
            }
            Fence::NotRunning => {
                // Tell an unknown (or another tenant's) task from one whose attempt is over.
                let owner = self.store.task_tenant(task_id).await?;
                if owner.is_none() || tenant.is_some_and(|t| owner.as_deref() != Some(t)) {
                    return Err(not_found(task_id));
                }
                return Err(cflow_store::Error::State(format!(
                    "task {task_id} has no running attempt at epoch {epoch}: it ended, was \
                     cancelled or was re-assigned; stop working on it"
                ))
                .into());
            }
        };
        let host = match self.model_host.get() {
            Some(h) => h.clone(),
            // The local pool starts before the server installs the host: wait for it, briefly.
            None => tokio::select! {
                h = self.model_host.wait() => h.clone(),
                () = tokio::time::sleep(HOST_WAIT) => {
                    return Ok(HostReply::Err(HostError::Unavailable(
                        "this server does not serve model-loop calls yet".to_string(),
                    )));
                }
                () = self.stop.cancelled() => return Err(SchedError::ShuttingDown),
            },
        };
        Ok(host.serve(ctx, call).await)
    }

    /// The other live agents of `from`'s swarm, each with whether the swarm's topology lets
    /// `from` delegate to it. Returns the swarm id with them.
    pub fn delegation_targets(
        &self,
        tenant: &str,
        from: &str,
    ) -> SchedResult<(String, Vec<DelegationTarget>)> {
        let mut st = self.lock();
        let st = &mut *st;
        let swarm_id = st
            .agents
            .get(from)
            .filter(|a| a.rec.tenant_id == tenant)
            .map(|a| a.rec.swarm_id.clone())
            .ok_or_else(|| SchedError::NotFound(format!("agent {from}")))?;
        let swarm = st
            .swarms
            .get_mut(&swarm_id)
            .filter(|s| s.rec.tenant_id == tenant)
            .ok_or_else(|| SchedError::NotFound(format!("swarm {swarm_id}")))?;
        let members = swarm.members.clone();
        let graph = swarm.graph(&st.agents);
        let targets = members
            .into_iter()
            .filter(|id| id != from)
            .filter_map(|id| {
                let allowed = graph.may_delegate(from, &id);
                st.agents.get(&id).map(|a| DelegationTarget {
                    agent_type: a.rec.agent_type.clone(),
                    driver: a.rec.driver.clone(),
                    capabilities: a.rec.capabilities.clone(),
                    busy: a.is_busy(),
                    allowed,
                    agent_id: id,
                })
            })
            .collect();
        Ok((swarm_id, targets))
    }
}

/// What the fence found for a call.
enum Fence {
    Held(CallContext),
    /// No such task for this caller.
    Unknown,
    /// Running at another epoch, or on another worker (`None`).
    Stale(Option<i64>),
    /// Not running at all (ended, cancelled, waiting for a retry).
    NotRunning,
}

fn not_found(task_id: &str) -> SchedError {
    cflow_store::Error::NotFound(format!("task {task_id}")).into()
}
