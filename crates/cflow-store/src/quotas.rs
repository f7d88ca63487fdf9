//! Tenant quotas: each tenant's fair-share weight and running-task limit, read by the
//! scheduler at start and changed by a superadmin.

use crate::exec::GetCol;
use cflow_core::ValidationError;
use serde_json::json;

use crate::audit::Draft;
use crate::orch_types::TenantQuota;
use crate::types::AuditContext;
use crate::writer::{Op, OpCx, Output, Step};
use crate::{Error, Result, Store};

/// Largest fair-share weight: a thousand to one is more skew than any fair queue needs.
pub const MAX_WEIGHT: i64 = 1000;

fn check(q: &TenantQuota) -> Result<(), ValidationError> {
    if !(1..=MAX_WEIGHT).contains(&q.weight) {
        let rule = format!("must be from 1 to {MAX_WEIGHT} (got {})", q.weight);
        return Err(ValidationError::new("weight", rule));
    }
    if let Some(n) = q.max_running
        && n < 1
    {
        let rule = format!("must be at least 1, or absent for no limit (got {n})");
        return Err(ValidationError::new("max_running", rule));
    }
    Ok(())
}

/// Writer op: sets a tenant's quota.
pub(crate) async fn set(cx: &mut OpCx<'_>, tenant_id: &str, q: &TenantQuota) -> Result<Step> {
    let draft = Draft::success(
        Some(tenant_id),
        "tenant.quota",
        format!("tenant/{tenant_id}"),
        json!({ "weight": q.weight, "max_running": q.max_running }),
    );
    let done = crate::exec::query("UPDATE tenants SET weight = $1, max_running = $2 WHERE id = $3")
        .bind(q.weight)
        .bind(q.max_running)
        .bind(tenant_id.to_string())
        .execute(&mut *cx.conn)
        .await?;
    if done.rows_affected() == 0 {
        // No write happened, so there is nothing to roll back.
        let e = Error::NotFound(format!("tenant {tenant_id}"));
        return Ok(Step::failed(
            e,
            Draft {
                tenant_id: None,
                ..draft
            },
        ));
    }
    Ok(Step::done(Output::Quota(*q), draft))
}

impl Store {
    /// A tenant's quota; `NotFound` for an unknown tenant.
    pub async fn tenant_quota(&self, tenant_id: &str) -> Result<TenantQuota> {
        let row = sqlx::query("SELECT weight, max_running FROM tenants WHERE id = $1")
            .bind(tenant_id.to_string())
            .fetch_optional(self.pool()?)
            .await?;
        let Some(r) = row else {
            return Err(Error::NotFound(format!("tenant {tenant_id}")));
        };
        Ok(TenantQuota {
            weight: r.try_get(0)?,
            max_running: r.try_get(1)?,
        })
    }

    /// Sets a tenant's quota (audited as `tenant.quota`): weight 1–1000, `max_running` at
    /// least 1 or `None` for no limit.
    pub async fn set_tenant_quota(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        quota: TenantQuota,
    ) -> Result<TenantQuota> {
        check(&quota)?;
        let op = Op::SetQuota {
            tenant_id: tenant_id.to_string(),
            quota,
        };
        let out = self.write(ctx, op).await?;
        expect_output!(out, Output::Quota(q) => q)
    }

    /// Every tenant's quota, by tenant id: what the scheduler's fair queue starts from.
    pub async fn tenant_quotas(&self) -> Result<Vec<(String, TenantQuota)>> {
        let rows = sqlx::query("SELECT id, weight, max_running FROM tenants ORDER BY id")
            .fetch_all(self.pool()?)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    TenantQuota {
                        weight: r.try_get(1)?,
                        max_running: r.try_get(2)?,
                    },
                ))
            })
            .collect()
    }
}
