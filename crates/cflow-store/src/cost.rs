//! Cost accounting: the model calls agents make (tokens and cost in micro-dollars), rollups of
//! them, and spend budgets per tenant or project and period.
//!
//! Model calls are high volume and change nothing a user decides, so recording one is a single
//! insert with no audit entry (like a heartbeat); budgets are policy, so every change to one is
//! audited (`budget.set`, `budget.delete`). Prices are not this crate's business: the caller
//! computes the cost with `cflow_core::pricing` and the store keeps what it was told.

use crate::exec::GetCol;
use cflow_core::budget::{BudgetExceeded, Period};
use cflow_core::{ValidationError, validate};
use serde_json::json;
use sqlx::AssertSqlSafe;

use crate::audit::Draft;
use crate::types::AuditContext;
use crate::writer::{Op, OpCx, Output, Step};
use crate::{Error, Result, Store};

/// A model call to record. The ids are what the caller knows; none is checked against its table
/// (the caller is the server's own driver code, and a check would cost reads per call).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewModelCall {
    pub tenant_id: String,
    /// The project's name, as swarms and keys name it.
    pub project_id: Option<String>,
    pub swarm_id: Option<String>,
    pub agent_id: Option<String>,
    pub task_id: Option<String>,
    pub provider: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_micros: u64,
    /// False when the model had no price (`cost_micros` is then 0, not a guess).
    pub priced: bool,
    /// When the call ended, Unix ms.
    pub at: i64,
}

/// What a cost report groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CostBy {
    Tenant,
    Project,
    Swarm,
    Agent,
    Task,
    Model,
}

impl CostBy {
    pub const ALL: [CostBy; 6] = [
        CostBy::Tenant,
        CostBy::Project,
        CostBy::Swarm,
        CostBy::Agent,
        CostBy::Task,
        CostBy::Model,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CostBy::Tenant => "tenant",
            CostBy::Project => "project",
            CostBy::Swarm => "swarm",
            CostBy::Agent => "agent",
            CostBy::Task => "task",
            CostBy::Model => "model",
        }
    }

    /// The column grouped on; from this fixed list only, never from input.
    fn column(self) -> &'static str {
        match self {
            CostBy::Tenant => "tenant_id",
            CostBy::Project => "project_id",
            CostBy::Swarm => "swarm_id",
            CostBy::Agent => "agent_id",
            CostBy::Task => "task_id",
            CostBy::Model => "model",
        }
    }
}

impl std::str::FromStr for CostBy {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, ValidationError> {
        CostBy::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| {
                ValidationError::new(
                    "by",
                    format!("unknown grouping '{s}': expected tenant, project, swarm, agent, task or model"),
                )
            })
    }
}

/// The totals of a group of model calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CostRow {
    /// The group's id (tenant, project, swarm, agent, task or model); `None` for calls that
    /// named none.
    pub key: Option<String>,
    pub calls: u64,
    /// Calls whose model had no price: the cost leaves them out.
    pub unpriced_calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_micros: u64,
}

/// A spend limit on a tenant (no project) or one of its projects, per period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub id: String,
    pub tenant_id: String,
    pub project: Option<String>,
    pub period: Period,
    pub limit_micros: u64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A budget to set: replaces the limit of the budget with the same scope and period, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBudget {
    pub project: Option<String>,
    pub period: Period,
    pub limit_micros: u64,
}

/// The writer ops of this module.
#[derive(Debug)]
pub(crate) enum CostOp {
    Record(NewModelCall),
    SetBudget { tenant_id: String, new: NewBudget },
    DeleteBudget { tenant_id: String, id: String },
}

/// What a cost op produced.
#[derive(Debug)]
pub(crate) enum CostOutput {
    Recorded(i64),
    Budget(Budget),
}

/// Stored amounts are BIGINT; a u64 beyond i64 (never a real amount) is clamped.
fn db_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_db(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

const BUDGET_COLUMNS: &str =
    "id, tenant_id, project_id, period, limit_micros, created_at, updated_at";

fn budget_from_row(r: &impl GetCol) -> Result<Budget> {
    let period: String = r.try_get(3)?;
    Ok(Budget {
        id: r.try_get(0)?,
        tenant_id: r.try_get(1)?,
        project: r.try_get(2)?,
        period: period.parse().map_err(|e| Error::Corrupt {
            what: "budgets.period".to_string(),
            detail: format!("{e}"),
        })?,
        limit_micros: from_db(r.try_get(4)?),
        created_at: r.try_get(5)?,
        updated_at: r.try_get(6)?,
    })
}

pub(crate) async fn apply(cx: &mut OpCx<'_>, op: &CostOp) -> Result<Step> {
    match op {
        CostOp::Record(call) => record(cx, call).await,
        CostOp::SetBudget { tenant_id, new } => set_budget(cx, tenant_id, new).await,
        CostOp::DeleteBudget { tenant_id, id } => delete_budget(cx, tenant_id, id).await,
    }
}

async fn record(cx: &mut OpCx<'_>, c: &NewModelCall) -> Result<Step> {
    let id: i64 = crate::exec::query_scalar(
        "INSERT INTO model_calls (tenant_id, project_id, swarm_id, agent_id, task_id, provider, \
         model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_micros, \
         priced, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
         RETURNING id",
    )
    .bind(c.tenant_id.clone())
    .bind(c.project_id.clone())
    .bind(c.swarm_id.clone())
    .bind(c.agent_id.clone())
    .bind(c.task_id.clone())
    .bind(c.provider.clone())
    .bind(c.model.clone())
    .bind(db_int(c.input_tokens))
    .bind(db_int(c.output_tokens))
    .bind(db_int(c.cache_read_tokens))
    .bind(db_int(c.cache_write_tokens))
    .bind(db_int(c.cost_micros))
    .bind(i64::from(c.priced))
    .bind(c.at)
    .fetch_one(&mut *cx.conn)
    .await?;
    Ok(Step::silent(Output::Cost(CostOutput::Recorded(id))))
}

async fn set_budget(cx: &mut OpCx<'_>, tenant_id: &str, new: &NewBudget) -> Result<Step> {
    let draft = Draft::success(
        Some(tenant_id),
        "budget.set",
        "budgets".to_string(),
        json!({ "project": new.project, "period": new.period.as_str(),
                "limit_micros": new.limit_micros }),
    );
    let tenant: Option<String> = crate::exec::query_scalar("SELECT id FROM tenants WHERE id = $1")
        .bind(tenant_id.to_string())
        .fetch_optional(&mut *cx.conn)
        .await?;
    if tenant.is_none() {
        let e = Error::NotFound(format!("tenant {tenant_id}"));
        return Ok(Step::failed(
            e,
            Draft {
                tenant_id: None,
                ..draft
            },
        ));
    }
    let existing = crate::exec::query(AssertSqlSafe(format!(
        "SELECT {BUDGET_COLUMNS} FROM budgets WHERE tenant_id = $1 \
         AND COALESCE(project_id, '') = $2 AND period = $3"
    )))
    .bind(tenant_id.to_string())
    .bind(new.project.clone().unwrap_or_default())
    .bind(new.period.as_str())
    .fetch_optional(&mut *cx.conn)
    .await?;
    let budget = match existing {
        Some(row) => {
            let old = budget_from_row(&row)?;
            crate::exec::query(
                "UPDATE budgets SET limit_micros = $1, updated_at = $2 WHERE id = $3",
            )
            .bind(db_int(new.limit_micros))
            .bind(cx.now)
            .bind(old.id.clone())
            .execute(&mut *cx.conn)
            .await?;
            Budget {
                limit_micros: new.limit_micros,
                updated_at: cx.now,
                ..old
            }
        }
        None => {
            let b = Budget {
                id: crate::tenants::new_id(),
                tenant_id: tenant_id.to_string(),
                project: new.project.clone(),
                period: new.period,
                limit_micros: new.limit_micros,
                created_at: cx.now,
                updated_at: cx.now,
            };
            crate::exec::query(AssertSqlSafe(format!(
                "INSERT INTO budgets ({BUDGET_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            )))
            .bind(b.id.clone())
            .bind(b.tenant_id.clone())
            .bind(b.project.clone())
            .bind(b.period.as_str())
            .bind(db_int(b.limit_micros))
            .bind(b.created_at)
            .bind(b.updated_at)
            .execute(&mut *cx.conn)
            .await?;
            b
        }
    };
    let draft = Draft {
        resource: format!("budget/{}", budget.id),
        ..draft
    };
    Ok(Step::done(Output::Cost(CostOutput::Budget(budget)), draft))
}

async fn delete_budget(cx: &mut OpCx<'_>, tenant_id: &str, id: &str) -> Result<Step> {
    let existing = crate::exec::query(AssertSqlSafe(format!(
        "SELECT {BUDGET_COLUMNS} FROM budgets WHERE tenant_id = $1 AND id = $2"
    )))
    .bind(tenant_id.to_string())
    .bind(id.to_string())
    .fetch_optional(&mut *cx.conn)
    .await?;
    let draft = Draft::success(
        Some(tenant_id),
        "budget.delete",
        format!("budget/{id}"),
        json!({}),
    );
    let Some(row) = existing else {
        return Ok(Step::failed(Error::NotFound(format!("budget {id}")), draft));
    };
    let b = budget_from_row(&row)?;
    crate::exec::query("DELETE FROM budgets WHERE tenant_id = $1 AND id = $2")
        .bind(tenant_id.to_string())
        .bind(id.to_string())
        .execute(&mut *cx.conn)
        .await?;
    let draft = Draft {
        detail: json!({ "project": b.project, "period": b.period.as_str(),
                        "limit_micros": b.limit_micros }),
        ..draft
    };
    Ok(Step::done(Output::Unit, draft))
}

/// The SELECT list of a rollup, after the key.
const TOTALS: &str = "COUNT(*), \
     CAST(COALESCE(SUM(1 - priced), 0) AS BIGINT), \
     CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT), \
     CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT), \
     CAST(COALESCE(SUM(cache_read_tokens), 0) AS BIGINT), \
     CAST(COALESCE(SUM(cache_write_tokens), 0) AS BIGINT), \
     CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT)";

/// A rollup row: the key, then [`TOTALS`].
fn row_of(r: &impl GetCol) -> Result<CostRow> {
    let n = |i: usize| -> Result<u64> { Ok(from_db(r.try_get::<i64>(i)?)) };
    Ok(CostRow {
        key: r.try_get(0)?,
        calls: n(1)?,
        unpriced_calls: n(2)?,
        input_tokens: n(3)?,
        output_tokens: n(4)?,
        cache_read_tokens: n(5)?,
        cache_write_tokens: n(6)?,
        cost_micros: n(7)?,
    })
}

/// The spend of calls in `[since, until)`, all the tenant's or only a project's.
async fn spent(
    pool: &sqlx::AnyPool,
    tenant_id: &str,
    project: Option<&str>,
    since: i64,
    until: i64,
) -> Result<u64> {
    let sql = match project {
        None => {
            "SELECT CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) FROM model_calls \
             WHERE tenant_id = $1 AND at >= $2 AND at < $3"
        }
        Some(_) => {
            "SELECT CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) FROM model_calls \
             WHERE tenant_id = $1 AND at >= $2 AND at < $3 AND project_id = $4"
        }
    };
    let mut q = sqlx::query_scalar::<_, i64>(sql)
        .bind(tenant_id.to_string())
        .bind(since)
        .bind(until);
    if let Some(p) = project {
        q = q.bind(p.to_string());
    }
    Ok(from_db(q.fetch_one(pool).await?))
}

impl Store {
    /// Records one model call: a single insert, committed before this returns, not audited.
    /// Returns the call's id. `NotFound` for an unknown tenant.
    pub async fn record_model_call(&self, call: NewModelCall) -> Result<i64> {
        if call.provider.is_empty() || call.model.is_empty() {
            return Err(Error::Invalid(ValidationError::new(
                "model",
                "provider and model must not be empty",
            )));
        }
        let out = self
            .write(&AuditContext::default(), Op::Cost(CostOp::Record(call)))
            .await?;
        expect_output!(out, Output::Cost(CostOutput::Recorded(id)) => id)
    }

    /// The tenant's model calls in `[since, until)` (either end open when `None`), grouped by
    /// `by`, most expensive first (then by key).
    pub async fn cost_report(
        &self,
        tenant_id: &str,
        by: CostBy,
        since: Option<i64>,
        until: Option<i64>,
    ) -> Result<Vec<CostRow>> {
        let col = by.column();
        let sql = format!(
            "SELECT {col}, {TOTALS} FROM model_calls \
             WHERE tenant_id = $1 AND at >= $2 AND at < $3 \
             GROUP BY {col} ORDER BY 8 DESC, 1"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(tenant_id.to_string())
            .bind(since.unwrap_or(i64::MIN))
            .bind(until.unwrap_or(i64::MAX))
            .fetch_all(self.pool()?)
            .await?;
        rows.iter().map(row_of).collect()
    }

    /// What the tenant (every call) or one of its projects spent in `[since, until)`.
    pub async fn spent(
        &self,
        tenant_id: &str,
        project: Option<&str>,
        since: i64,
        until: i64,
    ) -> Result<u64> {
        spent(self.pool()?, tenant_id, project, since, until).await
    }

    /// The totals of a task's model calls; `None` when it made none.
    pub async fn task_cost(&self, tenant_id: &str, task_id: &str) -> Result<Option<CostRow>> {
        let sql = format!(
            "SELECT task_id, {TOTALS} FROM model_calls WHERE tenant_id = $1 AND task_id = $2 \
             GROUP BY task_id"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(tenant_id.to_string())
            .bind(task_id.to_string())
            .fetch_optional(self.pool()?)
            .await?;
        row.as_ref().map(row_of).transpose()
    }

    /// Sets the budget of the tenant (or one of its projects) for a period, audited as
    /// `budget.set`; an existing budget of the same scope and period gets the new limit.
    pub async fn set_budget(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        new: NewBudget,
    ) -> Result<Budget> {
        if let Some(p) = &new.project {
            validate::name("project", p)?;
        }
        if i64::try_from(new.limit_micros).is_err() {
            return Err(Error::Invalid(ValidationError::new(
                "limit",
                "is too large",
            )));
        }
        let op = Op::Cost(CostOp::SetBudget {
            tenant_id: tenant_id.to_string(),
            new,
        });
        let out = self.write(ctx, op).await?;
        expect_output!(out, Output::Cost(CostOutput::Budget(b)) => b)
    }

    /// Deletes a budget of the tenant, audited as `budget.delete`; `NotFound` when the tenant
    /// has no such budget.
    pub async fn delete_budget(&self, ctx: &AuditContext, tenant_id: &str, id: &str) -> Result<()> {
        let op = Op::Cost(CostOp::DeleteBudget {
            tenant_id: tenant_id.to_string(),
            id: id.to_string(),
        });
        let out = self.write(ctx, op).await?;
        expect_output!(out, Output::Unit => ())
    }

    /// The tenant's budgets: tenant-wide first, then by project, then day, week, month.
    pub async fn list_budgets(&self, tenant_id: &str) -> Result<Vec<Budget>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {BUDGET_COLUMNS} FROM budgets WHERE tenant_id = $1"
        )))
        .bind(tenant_id.to_string())
        .fetch_all(self.pool()?)
        .await?;
        let mut budgets = rows
            .iter()
            .map(budget_from_row)
            .collect::<Result<Vec<_>>>()?;
        budgets.sort_by(|a, b| (&a.project, a.period).cmp(&(&b.project, b.period)));
        Ok(budgets)
    }

    /// Whether the tenant, and `project` when given, may still spend at `now`: `Err` names a
    /// budget whose current period's spend has reached its limit (a tenant budget counts every
    /// call of the tenant; a project budget the calls of that project). When several are spent,
    /// the one that resets last is named, since waiting for an earlier reset would not help.
    pub async fn budget_status(
        &self,
        tenant_id: &str,
        project: Option<&str>,
        now: i64,
    ) -> Result<Result<(), BudgetExceeded>> {
        let pool = self.pool()?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {BUDGET_COLUMNS} FROM budgets WHERE tenant_id = $1 \
             AND (project_id IS NULL OR project_id = $2)"
        )))
        .bind(tenant_id.to_string())
        .bind(project.unwrap_or_default().to_string())
        .fetch_all(pool)
        .await?;
        let mut worst: Option<BudgetExceeded> = None;
        for row in &rows {
            let b = budget_from_row(row)?;
            let (start, end) = b.period.bounds(now);
            let spent = spent(pool, tenant_id, b.project.as_deref(), start, end).await?;
            if spent < b.limit_micros || worst.as_ref().is_some_and(|w| w.resets_at >= end) {
                continue;
            }
            worst = Some(BudgetExceeded {
                budget_id: b.id,
                tenant: String::new(),
                project: b.project,
                period: b.period,
                limit_micros: b.limit_micros,
                spent_micros: spent,
                resets_at: end,
            });
        }
        let Some(mut exceeded) = worst else {
            return Ok(Ok(()));
        };
        // Named as people know it; the id stands in for a tenant deleted meanwhile.
        exceeded.tenant = self
            .get_tenant(tenant_id)
            .await?
            .map_or_else(|| tenant_id.to_string(), |t| t.name);
        Ok(Err(exceeded))
    }
}
