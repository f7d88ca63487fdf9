//! The enforcement and accounting hooks the model drivers call: [`AppState::check_budget`]
//! before a model call, [`AppState::record_usage`] after it.
//!
//! Enforcement is at call granularity: a call that starts under budget may end over it (its
//! cost is only known afterwards), and the next check refuses. The spend is read from the store,
//! so every node of a deployment enforces the same budgets.

use crate::error::{ApiError, ApiResult, ProblemKind};
use crate::state::{AppState, now_ms};
use cflow_core::budget::BudgetExceeded;
use cflow_core::pricing::{Cost, Usage};
use cflow_store::NewModelCall;

/// Who made a model call: the tenant, and whatever the caller knows of project, swarm, agent
/// and task (the project by name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageScope {
    pub tenant_id: String,
    pub project: Option<String>,
    pub swarm_id: Option<String>,
    pub agent_id: Option<String>,
    pub task_id: Option<String>,
}

/// The refusal for a spent budget: 429 with the whole story in its detail and `Retry-After`
/// at the period's reset.
pub fn budget_error(e: &BudgetExceeded, now: i64) -> ApiError {
    let mut err = ApiError::new(ProblemKind::RateLimited, e.to_string());
    let ms = u64::try_from(e.resets_at.saturating_sub(now)).unwrap_or(0);
    err.0.retry_after_secs = Some(ms.div_ceil(1000));
    err
}

impl AppState {
    /// Refuses when a budget of the tenant, or of `project`, has been spent for its current
    /// period; the error says which, how much, when it resets and how to raise it.
    pub async fn check_budget(&self, tenant_id: &str, project: Option<&str>) -> ApiResult<()> {
        self.check_budget_at(tenant_id, project, now_ms()).await
    }

    /// [`AppState::check_budget`] at a given time.
    pub async fn check_budget_at(
        &self,
        tenant_id: &str,
        project: Option<&str>,
        now: i64,
    ) -> ApiResult<()> {
        match self.budget_exceeded(tenant_id, project, now).await? {
            None => Ok(()),
            Some(e) => Err(budget_error(&e, now)),
        }
    }

    /// The spent budget that refuses more model work for the tenant (or `project`) at `now`,
    /// if any: what [`AppState::check_budget_at`] refuses with, for callers that need its parts
    /// (the model host publishes `budget.exceeded` with them).
    pub async fn budget_exceeded(
        &self,
        tenant_id: &str,
        project: Option<&str>,
        now: i64,
    ) -> ApiResult<Option<BudgetExceeded>> {
        Ok(self
            .store
            .budget_status(tenant_id, project, now)
            .await?
            .err())
    }

    /// Prices a model call with the configured table, records it (one commit, not audited) and
    /// counts it in the metrics. Returns what it cost.
    pub async fn record_usage(
        &self,
        scope: &UsageScope,
        provider: &str,
        model: &str,
        usage: &Usage,
    ) -> ApiResult<Cost> {
        let cost = self.prices.cost(provider, model, usage);
        if !cost.priced {
            tracing::warn!(
                provider,
                model,
                "model has no price; its calls are recorded at $0 with priced=false \
                 (add it under [server.pricing.models])"
            );
        }
        self.store
            .record_model_call(NewModelCall {
                tenant_id: scope.tenant_id.clone(),
                project_id: scope.project.clone(),
                swarm_id: scope.swarm_id.clone(),
                agent_id: scope.agent_id.clone(),
                task_id: scope.task_id.clone(),
                provider: provider.to_string(),
                model: model.to_string(),
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                cache_read_tokens: usage.cache_read_tokens,
                cache_write_tokens: usage.cache_write_tokens,
                cost_micros: cost.micros,
                priced: cost.priced,
                at: now_ms(),
            })
            .await?;
        self.metrics.record_model_call(usage, &cost);
        // A call that spent the budget holds the tenant's queued model tasks from now on,
        // rather than at the scheduler's next periodic read.
        self.sched.refresh_budgets(&scope.tenant_id).await;
        Ok(cost)
    }
}
