//! The scheduler's view of retries after a restart: which tasks wait in `pending` for their
//! backoff to end, and when.

use crate::exec::GetCol;

use crate::{Result, Store};

impl Store {
    /// Every task (of every tenant) waiting in `pending` for a retry: `(tenant, task, retry_at)`,
    /// soonest first. The scheduler keeps them in a timer heap and calls
    /// [`Store::promote_retries`] when they are due.
    pub async fn pending_retries(&self) -> Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query(
            "SELECT tenant_id, id, retry_at FROM tasks \
             WHERE state = 'pending' AND retry_at IS NOT NULL ORDER BY retry_at, id",
        )
        .fetch_all(self.pool()?)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }
}
