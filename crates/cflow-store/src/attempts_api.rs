//! The [`Store`] methods for attempts: assignment, fenced worker reports, lease expiry,
//! cancellation and retries. They validate input and send an [`AttemptOp`] to the writer.

use crate::exec::GetCol;

use crate::attempts::{AttemptOp, check_lease};
use crate::orch_types::{Attempt, Cancelled, ExpiredLease, Outcome, Settled};
use crate::types::AuditContext;
use crate::writer::{Op, Output};
use crate::{Backend, Error, Result, Store};

impl Store {
    async fn attempt_op(&self, ctx: &AuditContext, op: AttemptOp) -> Result<Output> {
        self.write(ctx, Op::Attempt(op)).await
    }

    /// Leases a queued task to an agent (of the task's tenant) on a worker until
    /// `now + lease_ms`, as a new attempt whose `epoch` every later report must carry.
    pub async fn assign_task(
        &self,
        ctx: &AuditContext,
        task_id: &str,
        agent_id: &str,
        worker_id: &str,
        lease_ms: i64,
        now: i64,
    ) -> Result<Attempt> {
        check_lease(lease_ms)?;
        let op = AttemptOp::Assign {
            task_id: task_id.into(),
            agent_id: agent_id.into(),
            worker_id: worker_id.into(),
            lease_ms,
            now,
        };
        let out = self.attempt_op(ctx, op).await?;
        expect_output!(out, Output::Assigned(a) => a)
    }

    /// The worker reports that the attempt started; repeating it is harmless.
    pub async fn start_attempt(
        &self,
        ctx: &AuditContext,
        task_id: &str,
        epoch: i64,
        now: i64,
    ) -> Result<Attempt> {
        let out = self
            .attempt_op(
                ctx,
                AttemptOp::Start {
                    task_id: task_id.into(),
                    epoch,
                    now,
                },
            )
            .await?;
        expect_output!(out, Output::Assigned(a) => a)
    }

    /// Extends the attempt's lease to `now + lease_ms`.
    pub async fn heartbeat_attempt(
        &self,
        ctx: &AuditContext,
        task_id: &str,
        epoch: i64,
        now: i64,
        lease_ms: i64,
    ) -> Result<Attempt> {
        check_lease(lease_ms)?;
        let out = self
            .attempt_op(
                ctx,
                AttemptOp::Heartbeat {
                    task_id: task_id.into(),
                    epoch,
                    lease_ms,
                    now,
                },
            )
            .await?;
        expect_output!(out, Output::Assigned(a) => a)
    }

    /// Records how the attempt ended, moves the task on (retry, done) and settles its
    /// dependents, all in one transaction.
    pub async fn complete_attempt(
        &self,
        ctx: &AuditContext,
        task_id: &str,
        epoch: i64,
        outcome: Outcome,
        now: i64,
    ) -> Result<Settled> {
        let out = self
            .attempt_op(
                ctx,
                AttemptOp::Complete {
                    task_id: task_id.into(),
                    epoch,
                    outcome,
                    now,
                    started_at: None,
                    next: None,
                },
            )
            .await?;
        expect_output!(out, Output::Settled(s) => s)
    }

    /// Attempts (of every tenant) whose lease expired before `now`, oldest expiry first.
    ///
    /// It reads every live attempt through the partial index `attempts_live_by_worker` (the
    /// workers' slots bound their number) and sorts the expired ones; no index is by expiry,
    /// which saves an entry per assignment. On PostgreSQL sequential scans are off for this
    /// query: with the statistics of a young database the planner would otherwise scan the
    /// whole table of attempts, which only grows.
    pub async fn expired_leases(&self, now: i64, limit: u32) -> Result<Vec<ExpiredLease>> {
        let query = sqlx::query(
            "SELECT task_id, tenant_id, epoch, agent_id, worker_id, lease_expires_at FROM attempts \
             WHERE state IN ('assigned', 'running') AND lease_expires_at < $1 \
             ORDER BY lease_expires_at, task_id LIMIT $2",
        )
        .bind(now)
        .bind(i64::from(limit));
        let rows = if self.backend() == Backend::Postgres {
            let mut tx = self.pool()?.begin().await?;
            sqlx::query("SET LOCAL enable_seqscan = off")
                .execute(&mut *tx)
                .await?;
            let rows = query.fetch_all(&mut *tx).await?;
            tx.commit().await?;
            rows
        } else {
            query.fetch_all(self.pool()?).await?
        };
        rows.iter()
            .map(|r| {
                Ok(ExpiredLease {
                    task_id: r.try_get(0)?,
                    tenant_id: r.try_get(1)?,
                    epoch: r.try_get(2)?,
                    agent_id: r.try_get(3)?,
                    worker_id: r.try_get(4)?,
                    lease_expires_at: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Marks an attempt whose lease expired as `lost` and queues the task again (or fails it when
    /// no attempts are left, cancelling its dependents). `State` when the lease was extended.
    pub async fn requeue_lost(
        &self,
        ctx: &AuditContext,
        task_id: &str,
        epoch: i64,
        now: i64,
    ) -> Result<Settled> {
        let out = self
            .attempt_op(
                ctx,
                AttemptOp::RequeueLost {
                    task_id: task_id.into(),
                    epoch,
                    now,
                },
            )
            .await?;
        expect_output!(out, Output::Settled(s) => s)
    }

    /// Queues up to `limit` tasks (of every tenant) whose retry backoff ended by `now`; returns
    /// how many. The scheduler calls it on a timer.
    pub async fn promote_retries(&self, ctx: &AuditContext, now: i64, limit: u32) -> Result<u64> {
        let out = self
            .attempt_op(
                ctx,
                AttemptOp::PromoteRetries {
                    now,
                    limit: i64::from(limit),
                },
            )
            .await?;
        expect_output!(out, Output::Count(n) => n)
    }

    /// Cancels a task of the tenant that has not finished, and its waiting dependents. `kill` in
    /// the answer names the live attempt whose process must be killed. `State` when finished.
    pub async fn cancel_task(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        task_id: &str,
        now: i64,
    ) -> Result<Cancelled> {
        let out = self
            .attempt_op(
                ctx,
                AttemptOp::Cancel {
                    tenant_id: tenant_id.into(),
                    task_id: task_id.into(),
                    now,
                },
            )
            .await?;
        expect_output!(out, Output::Cancelled(c) => c)
    }
}
