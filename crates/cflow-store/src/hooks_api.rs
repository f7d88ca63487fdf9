//! The `Store` methods of hooks and their outbox (the ops and rows are in `hooks`).

use crate::exec::GetCol;

use crate::hooks::{
    DELIVERY_COLUMNS, HOOK_COLUMNS, Hook, HookDelivery, HookOp, HookOutput, NewDelivery, NewHook,
    SendResult, delivery_row, hook_row,
};
use crate::types::{AuditContext, Page, PageRequest};
use crate::writer::{Op, Output};
use crate::{Error, Result, Store, page};

/// The listing tag of a hook's deliveries in cursors.
const DELIVERIES_TAG: &str = "hd";

impl Store {
    /// Creates a hook (audited as `hook.create`); `Conflict` when the tenant has one of that
    /// name. The caller has checked the hook's fields.
    pub async fn hook_create(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        new: NewHook,
    ) -> Result<Hook> {
        cflow_core::validate::name("name", &new.name)?;
        let op = Op::Hook(HookOp::Create {
            tenant_id: tenant_id.to_string(),
            new,
            created_by: ctx.principal_id.clone(),
        });
        let out = self.write(ctx, op).await?;
        expect_output!(out, Output::Hook(HookOutput::Hook(h)) => h)
    }

    /// Deletes a hook and its deliveries (audited as `hook.delete`); `NotFound` when the tenant
    /// has no such hook.
    pub async fn hook_delete(&self, ctx: &AuditContext, tenant_id: &str, id: &str) -> Result<Hook> {
        let op = Op::Hook(HookOp::Delete {
            tenant_id: tenant_id.to_string(),
            id: id.to_string(),
        });
        let out = self.write(ctx, op).await?;
        expect_output!(out, Output::Hook(HookOutput::Hook(h)) => h)
    }

    /// Turns a hook on or off (audited as `hook.update`); `NotFound` when the tenant has no
    /// such hook. Returns the hook as it is now.
    pub async fn hook_set_enabled(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        id: &str,
        enabled: bool,
    ) -> Result<Hook> {
        let op = Op::Hook(HookOp::SetEnabled {
            tenant_id: tenant_id.to_string(),
            id: id.to_string(),
            enabled,
        });
        let out = self.write(ctx, op).await?;
        expect_output!(out, Output::Hook(HookOutput::Hook(h)) => h)
    }

    /// A tenant's hook.
    pub async fn hook_get(&self, tenant_id: &str, id: &str) -> Result<Option<Hook>> {
        let sql = format!("SELECT {HOOK_COLUMNS} FROM hooks WHERE tenant_id = $1 AND id = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id.to_string())
            .bind(id.to_string())
            .fetch_optional(self.pool()?)
            .await?;
        row.as_ref().map(hook_row).transpose()
    }

    /// Every hook of a tenant, by name (a tenant has few).
    pub async fn hook_list(&self, tenant_id: &str) -> Result<Vec<Hook>> {
        let sql = format!("SELECT {HOOK_COLUMNS} FROM hooks WHERE tenant_id = $1 ORDER BY name");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id.to_string())
            .fetch_all(self.pool()?)
            .await?;
        rows.iter().map(hook_row).collect()
    }

    /// Queues deliveries of a tenant's event; a (hook, event) already queued, or a hook deleted
    /// meanwhile, is skipped. Not audited (one row per event and hook). Returns how many were
    /// queued.
    pub async fn hook_enqueue(&self, tenant_id: &str, deliveries: Vec<NewDelivery>) -> Result<u64> {
        let op = Op::Hook(HookOp::Enqueue {
            tenant_id: tenant_id.to_string(),
            deliveries,
        });
        let out = self.write(&AuditContext::default(), op).await?;
        expect_output!(out, Output::Hook(HookOutput::Enqueued(n)) => n)
    }

    /// Leases up to `limit` due deliveries (of every tenant) for `lease_ms`.
    pub async fn hook_claim(&self, limit: i64, lease_ms: i64) -> Result<Vec<HookDelivery>> {
        let op = Op::Hook(HookOp::Claim { limit, lease_ms });
        let out = self.write(&AuditContext::default(), op).await?;
        expect_output!(out, Output::Hook(HookOutput::Deliveries(d)) => d)
    }

    /// Records the result of sending a claimed delivery. `None` when the claim had lapsed and
    /// another sender owns the delivery now (nothing was changed).
    pub async fn hook_finish(
        &self,
        delivery: &HookDelivery,
        result: SendResult,
    ) -> Result<Option<HookDelivery>> {
        let Some(claimed_until) = delivery.claimed_until else {
            return Err(Error::State(format!(
                "delivery {} was not claimed",
                delivery.id
            )));
        };
        let op = Op::Hook(HookOp::Finish {
            id: delivery.id.clone(),
            claimed_until,
            result,
        });
        let ctx = AuditContext {
            tenant_id: Some(delivery.tenant_id.clone()),
            source: Some("hooks".to_string()),
            ..AuditContext::default()
        };
        match self.write(&ctx, op).await? {
            Output::Hook(HookOutput::Delivery(d)) => Ok(Some(d)),
            Output::Hook(HookOutput::Enqueued(0)) => Ok(None),
            other => Err(Error::Corrupt {
                what: "writer".to_string(),
                detail: format!("unexpected output {other:?}"),
            }),
        }
    }

    /// Records a delivery that was sent synchronously (a pre-task check, a test) with its
    /// result. Not audited: the decision it led to is.
    pub async fn hook_record(
        &self,
        tenant_id: &str,
        new: NewDelivery,
        result: SendResult,
    ) -> Result<HookDelivery> {
        let op = Op::Hook(HookOp::Record {
            tenant_id: tenant_id.to_string(),
            new,
            result,
        });
        let out = self.write(&AuditContext::default(), op).await?;
        expect_output!(out, Output::Hook(HookOutput::Delivery(d)) => d)
    }

    /// Re-queues a dead delivery (audited as `hook.retry`): `NotFound` for another tenant's or
    /// an unknown one, `State` when it is not dead.
    pub async fn hook_requeue(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        id: &str,
    ) -> Result<HookDelivery> {
        let op = Op::Hook(HookOp::Requeue {
            tenant_id: tenant_id.to_string(),
            id: id.to_string(),
        });
        let out = self.write(ctx, op).await?;
        expect_output!(out, Output::Hook(HookOutput::Delivery(d)) => d)
    }

    /// A tenant's delivery.
    pub async fn hook_delivery(&self, tenant_id: &str, id: &str) -> Result<Option<HookDelivery>> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM hook_deliveries WHERE tenant_id = $1 AND id = $2"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id.to_string())
            .bind(id.to_string())
            .fetch_optional(self.pool()?)
            .await?;
        row.as_ref().map(delivery_row).transpose()
    }

    /// A hook's deliveries, oldest first, optionally in one state.
    pub async fn hook_deliveries(
        &self,
        tenant_id: &str,
        hook_id: &str,
        state: Option<&str>,
        req: &PageRequest,
    ) -> Result<Page<HookDelivery>> {
        let limit = page::clamp_limit(req.limit);
        let after = page::decode_opt(DELIVERIES_TAG, &req.cursor)?.unwrap_or_default();
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM hook_deliveries WHERE tenant_id = $1 AND hook_id = $2 \
             AND ($3 = '' OR state = $3) AND id > $4 ORDER BY id LIMIT $5"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id.to_string())
            .bind(hook_id.to_string())
            .bind(state.unwrap_or_default().to_string())
            .bind(after)
            .bind(limit + 1)
            .fetch_all(self.pool()?)
            .await?;
        let items = rows.iter().map(delivery_row).collect::<Result<Vec<_>>>()?;
        Ok(page::finish(items, limit, DELIVERIES_TAG, |d| d.id.clone()))
    }

    /// Whether the tenant knows a project of that name (a key's or a swarm's project).
    pub async fn project_known(&self, tenant_id: &str, name: &str) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 FROM projects WHERE tenant_id = $1 AND name = $2 \
             UNION ALL SELECT 1 FROM swarms WHERE tenant_id = $1 AND project = $2 LIMIT 1",
        )
        .bind(tenant_id.to_string())
        .bind(name.to_string())
        .fetch_optional(self.pool()?)
        .await?;
        Ok(row.is_some())
    }

    /// Dead deliveries of every tenant (for the metrics gauge).
    pub async fn hook_dead_count(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM hook_deliveries WHERE state = 'dead'")
            .fetch_one(self.pool()?)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// When the next pending delivery falls due (Unix ms), if any: how long a sender may sleep.
    pub async fn hook_next_due(&self) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT MIN(CASE WHEN claimed_until IS NOT NULL AND claimed_until > next_attempt_at \
             THEN claimed_until ELSE next_attempt_at END) FROM hook_deliveries \
             WHERE state = 'pending'",
        )
        .fetch_one(self.pool()?)
        .await?;
        Ok(row.try_get::<Option<i64>>(0)?)
    }
}
