//! Budgets at the scheduler's edges, and the accounting of model usage that attempts report.
//!
//! - **Submission:** a model task (its spec has a `prompt`) is refused, with the budget's
//!   story (HTTP 429), while its tenant's budget, or its swarm's project's, is spent. This
//!   covers every way in: single, batch and DAG submissions and delegations all go through
//!   [`Scheduler::submit`].
//! - **Dispatch:** a queued model task is not assigned while its budget is spent: it stays
//!   queued (nothing is lost and nothing fails) and is assigned once the period resets or an
//!   admin raises the budget. Which budgets are spent is kept in memory per tenant
//!   ([`Spent`]), refreshed after every accounted usage, at submission and by a loop every
//!   [`REFRESH`] for tenants with queued work or a spent budget (`AppState::record_usage`
//!   refreshes its tenant after every recorded call). While reported usage is being recorded,
//!   the tenant's model tasks wait too: the attempt's end frees its agent first, and the next
//!   prompt must not start on a budget that usage spent. Other tasks are never held.
//! - **Usage:** a `Finished` report of a `claude-code` attempt carries the tokens per model in
//!   `detail.model_usage`; [`Scheduler::apply_reports`] hands them, with the task's scope, to
//!   the late-bound [`UsageHook`] (the server records them with `AppState::record_usage`) once
//!   per attempt: only for a report that is accepted, which happens once (a re-delivered
//!   report is answered 409 because the attempt is no longer running). `llm` agents record
//!   each model call as it happens through the model host, so their `Finished` usage is not
//!   counted again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cflow_agents::BoxFuture;
use cflow_agents::driver::ModelUsage;
use cflow_agents::proto::{Report, ReportAck};
use cflow_core::budget::BudgetExceeded;
use cflow_store::NewTask;

use super::state::{AgentRt, QTask, State, SwarmRt};
use super::{SchedError, SchedResult, Scheduler};
use crate::state::now_ms;

/// How often the spent budgets of tenants with queued work are read again.
pub const REFRESH: Duration = Duration::from_secs(2);

/// The usage one accepted `Finished` report carried, with the attempt's scope.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedUsage {
    pub tenant_id: String,
    /// The agent's swarm's project, by name.
    pub project: Option<String>,
    pub swarm_id: Option<String>,
    pub agent_id: String,
    pub task_id: String,
    pub usage: Vec<ModelUsage>,
}

/// Records the usage of a finished attempt; installed once by the server at start.
pub type UsageHook = Arc<dyn Fn(FinishedUsage) -> BoxFuture<'static, ()> + Send + Sync>;

/// The spent budgets of one tenant, as last read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Spent {
    /// A budget of the whole tenant is spent: no model task of it is assigned.
    pub tenant: bool,
    /// Projects (by name) with a spent budget.
    pub projects: HashSet<String>,
}

impl Spent {
    pub fn blocks(&self, project: Option<&str>) -> bool {
        self.tenant || project.is_some_and(|p| self.projects.contains(p))
    }
}

/// The project (by name) a task's model calls are counted under: its swarm's, else the swarm
/// of the agent it is pinned to.
fn project_of(
    agents: &HashMap<String, AgentRt>,
    swarms: &HashMap<String, SwarmRt>,
    swarm: Option<&str>,
    agent: Option<&str>,
) -> Option<String> {
    let swarm = swarm.map(str::to_string).or_else(|| {
        agent
            .and_then(|a| agents.get(a))
            .map(|a| a.rec.swarm_id.clone())
    })?;
    swarms.get(&swarm).and_then(|s| s.rec.project.clone())
}

/// Whether a queued task must wait for a budget: a model task whose tenant or project has
/// spent its budget. Takes the state's parts because the dispatcher holds the queue mutably.
pub(crate) fn budget_holds(
    (spent, pending): (&HashMap<String, Spent>, &HashMap<String, u32>),
    agents: &HashMap<String, AgentRt>,
    swarms: &HashMap<String, SwarmRt>,
    t: &QTask,
) -> bool {
    if !t.model {
        return false;
    }
    // Usage reported and not yet recorded may spend the budget: wait for it (milliseconds).
    if pending.contains_key(&t.tenant) {
        return true;
    }
    let Some(spent) = spent.get(&t.tenant) else {
        return false;
    };
    spent.tenant
        || (!spent.projects.is_empty()
            && spent.blocks(
                project_of(agents, swarms, t.swarm.as_deref(), t.agent_id.as_deref()).as_deref(),
            ))
}

impl State {
    pub(crate) fn project_of(&self, swarm: Option<&str>, agent: Option<&str>) -> Option<String> {
        project_of(&self.agents, &self.swarms, swarm, agent)
    }
}

impl Scheduler {
    /// Installs the recorder of reported model usage; the server does it once at start.
    /// Returns `false` (and keeps the first) when one was already installed.
    pub fn set_usage_hook(&self, hook: UsageHook) -> bool {
        self.usage_hook.set(hook).is_ok()
    }

    /// [`Scheduler::report`], then the model usage of every accepted `Finished` report of a
    /// `claude-code` attempt handed to the [`UsageHook`] (see the module's documentation).
    /// Every transport (HTTP and the local pool) applies reports through this.
    pub async fn apply_reports(
        &self,
        tenant: Option<&str>,
        worker_id: &str,
        reports: Vec<Report>,
    ) -> SchedResult<Vec<ReportAck>> {
        let usages: Vec<(usize, FinishedUsage)> = {
            let mut st = self.lock();
            let usages: Vec<(usize, FinishedUsage)> = reports
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let Report::Finished {
                        task_id,
                        epoch,
                        outcome,
                    } = r
                    else {
                        return None;
                    };
                    let usage: Vec<ModelUsage> = outcome
                        .detail
                        .as_ref()
                        .and_then(|d| d.get("model_usage"))
                        .and_then(|u| serde_json::from_value(u.clone()).ok())
                        .filter(|u: &Vec<ModelUsage>| !u.is_empty())?;
                    let run = st
                        .running
                        .get(task_id)
                        .filter(|run| run.epoch == *epoch && run.worker == worker_id)?;
                    let agent = st.agents.get(&run.agent)?;
                    if agent.rec.driver != "claude-code" {
                        return None;
                    }
                    let swarm = agent.rec.swarm_id.clone();
                    Some((
                        i,
                        FinishedUsage {
                            tenant_id: run.task.tenant.clone(),
                            project: st.project_of(Some(&swarm), None),
                            swarm_id: Some(swarm),
                            agent_id: run.agent.clone(),
                            task_id: task_id.clone(),
                            usage,
                        },
                    ))
                })
                .collect();
            // The attempt's end frees its agent before its usage is recorded: the tenant's
            // model tasks wait until it is, so none starts on a budget that usage spent.
            for (_, u) in &usages {
                *st.usage_pending.entry(u.tenant_id.clone()).or_default() += 1;
            }
            usages
        };
        let acks = self.report(tenant, worker_id, reports).await;
        let hook = self.usage_hook.get().cloned();
        for (i, u) in &usages {
            if !acks
                .as_ref()
                .is_ok_and(|a| a.get(*i).is_some_and(ReportAck::is_ok))
            {
                continue;
            }
            match &hook {
                Some(hook) => hook(u.clone()).await,
                None => tracing::warn!(
                    task = u.task_id,
                    "model usage reported but no recorder is installed; not counted"
                ),
            }
        }
        if !usages.is_empty() {
            let mut st = self.lock();
            for (_, u) in &usages {
                if let Some(n) = st.usage_pending.get_mut(&u.tenant_id) {
                    *n -= 1;
                    if *n == 0 {
                        st.usage_pending.remove(&u.tenant_id);
                    }
                }
            }
            drop(st);
            self.wake.notify_one();
        }
        acks
    }

    /// Refuses model tasks while their tenant's or project's budget is spent (429 with the
    /// budget's story); other tasks pass.
    pub(crate) async fn check_submit_budget(
        &self,
        tenant: &str,
        tasks: &[NewTask],
    ) -> SchedResult<()> {
        let projects: Vec<Option<String>> = {
            let st = self.lock();
            let mut ps: Vec<Option<String>> = Vec::new();
            for t in tasks
                .iter()
                .filter(|t| cflow_agents::proto::is_model_task(&t.spec))
            {
                let p = st.project_of(t.swarm_id.as_deref(), t.agent_id.as_deref());
                if !ps.contains(&p) {
                    ps.push(p);
                }
            }
            ps
        };
        let now = now_ms();
        for p in projects {
            if let Err(e) = self.store.budget_status(tenant, p.as_deref(), now).await? {
                self.refresh_budgets(tenant).await;
                return Err(SchedError::Budget(Box::new(e)));
            }
        }
        Ok(())
    }

    /// Reads which of the tenant's budgets are spent now and applies it to dispatch; wakes the
    /// dispatcher when a budget stopped holding tasks back. A failed read keeps what was known.
    pub async fn refresh_budgets(&self, tenant: &str) {
        let projects: Vec<String> = {
            let st = self.lock();
            let mut ps: Vec<String> = st
                .swarms
                .values()
                .filter(|s| s.rec.tenant_id == tenant)
                .filter_map(|s| s.rec.project.clone())
                .collect();
            ps.sort();
            ps.dedup();
            ps
        };
        let now = now_ms();
        let spent = async {
            let mut spent = Spent::default();
            let tenant_wide: Result<(), BudgetExceeded> =
                self.store.budget_status(tenant, None, now).await?;
            spent.tenant = tenant_wide.is_err();
            if !spent.tenant {
                for p in projects {
                    if self
                        .store
                        .budget_status(tenant, Some(&p), now)
                        .await?
                        .is_err()
                    {
                        spent.projects.insert(p);
                    }
                }
            }
            Ok::<_, cflow_store::Error>(spent)
        }
        .await;
        let spent = match spent {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(tenant, error = %e, "cannot read the tenant's budgets");
                return;
            }
        };
        let released = {
            let mut st = self.lock();
            let before = st.spent.remove(tenant).unwrap_or_default();
            let released = (before.tenant && !spent.tenant)
                || before.projects.iter().any(|p| !spent.projects.contains(p));
            if spent != Spent::default() {
                st.spent.insert(tenant.to_string(), spent);
            }
            released
        };
        if released {
            self.wake.notify_one();
        }
    }

    /// Every [`REFRESH`]: re-reads the spent budgets of tenants with queued tasks or a spent
    /// budget, so that a budget lowered below its spend holds tasks back and a reset or raised
    /// one lets them go.
    pub(crate) async fn budget_loop(self) {
        loop {
            let tenants: Vec<String> = {
                let st = self.lock();
                let mut ts: Vec<String> = st.queue.depths().map(|(t, _)| t.to_string()).collect();
                ts.extend(st.spent.keys().cloned());
                ts.sort();
                ts.dedup();
                ts
            };
            for t in tenants {
                self.refresh_budgets(&t).await;
            }
            tokio::select! {
                () = tokio::time::sleep(REFRESH) => {}
                () = self.stop.cancelled() => return,
            }
        }
    }
}
