//! The reads the scheduler rebuilds its in-memory state from after a restart (every tenant at
//! once), and the outputs of finished tasks that dependents and quorum parents pass on.

use std::collections::BTreeMap;

use crate::exec::GetCol;
use serde_json::{Value, json};
use sqlx::AssertSqlSafe;

use crate::orch_types::{Agent, LiveAttempt, ReadyCursor, Swarm, Task};
use crate::swarms::{AGENT_COLUMNS, SWARM_COLUMNS, agent_from_row, json_col, swarm_from_row};
use crate::tasks::{ATTEMPT_COLUMNS, TASK_ARITY, TASK_COLUMNS, attempt_from_row_at, task_from_row};
use crate::{Result, Store, bulk};

/// `cols` with every column qualified by `alias`.
pub(crate) fn qualified(alias: &str, cols: &str) -> String {
    cols.split(',')
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// Every attempt in `assigned` or `running` (of every tenant), with its task.
    pub async fn live_attempts(&self) -> Result<Vec<LiveAttempt>> {
        let sql = format!(
            "SELECT {}, {} FROM attempts a JOIN tasks t ON t.id = a.task_id \
             WHERE a.state IN ('assigned', 'running') ORDER BY a.task_id",
            qualified("t", TASK_COLUMNS),
            qualified("a", ATTEMPT_COLUMNS)
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(self.pool()?)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(LiveAttempt {
                    task: task_from_row(r)?,
                    attempt: attempt_from_row_at(r, TASK_ARITY)?,
                })
            })
            .collect()
    }

    /// Every agent (of every tenant) that is not stopped or failed, by id.
    pub async fn active_agents(&self) -> Result<Vec<Agent>> {
        let sql = format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE state NOT IN ('stopped', 'failed') ORDER BY id"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(self.pool()?)
            .await?;
        rows.iter().map(agent_from_row).collect()
    }

    /// Every swarm (of every tenant) that is not stopped, by id.
    pub async fn active_swarms(&self) -> Result<Vec<Swarm>> {
        let sql =
            format!("SELECT {SWARM_COLUMNS} FROM swarms WHERE state <> 'stopped' ORDER BY id");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(self.pool()?)
            .await?;
        rows.iter().map(swarm_from_row).collect()
    }

    /// The queue after `after` (from the start when `None`), in [`Store::ready_tasks`] order:
    /// page through a large queue with the cursor of each page's last task
    /// ([`ReadyCursor::of`]). Keyset paging keeps every page one index range scan.
    pub async fn ready_tasks_after(
        &self,
        after: Option<&ReadyCursor>,
        limit: u32,
    ) -> Result<Vec<Task>> {
        let Some(c) = after else {
            return self.ready_tasks(limit).await;
        };
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE state = 'queued' AND (priority < $1 \
             OR (priority = $1 AND (created_at > $2 OR (created_at = $2 AND id > $3)))) \
             ORDER BY priority DESC, created_at, id LIMIT $4"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(c.priority)
            .bind(c.created_at)
            .bind(c.id.clone())
            .bind(i64::from(limit))
            .fetch_all(self.pool()?)
            .await?;
        rows.iter().map(task_from_row).collect()
    }

    /// The replicas of one of the tenant's quorum parents, by replica index.
    pub async fn replicas_of(&self, tenant_id: &str, parent_id: &str) -> Result<Vec<Task>> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE tenant_id = $1 AND replica_of = $2 \
             ORDER BY replica_index"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(tenant_id.to_string())
            .bind(parent_id.to_string())
            .fetch_all(self.pool()?)
            .await?;
        rows.iter().map(task_from_row).collect()
    }

    /// The tenant of a task, for callers that hold only a task id from a worker (which is
    /// checked by the task's epoch, not by a tenant).
    pub async fn task_tenant(&self, task_id: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT tenant_id FROM tasks WHERE id = $1")
                .bind(task_id.to_string())
                .fetch_optional(self.pool()?)
                .await?,
        )
    }

    /// The outputs of the tenant's succeeded tasks among `task_ids` (others are left out): the
    /// succeeded attempt's `result`, or `{"stdout": <tail>}` when it had none; for a quorum
    /// parent, the output its replicas agreed on.
    pub async fn task_outputs(
        &self,
        tenant_id: &str,
        task_ids: &[String],
    ) -> Result<BTreeMap<String, Value>> {
        let mut out = BTreeMap::new();
        if task_ids.is_empty() {
            return Ok(out);
        }
        let sql = format!(
            "SELECT t.id, t.result, a.result, a.stdout_tail FROM tasks t LEFT JOIN attempts a \
             ON a.task_id = t.id AND a.epoch = t.epoch AND a.state = 'succeeded' \
             WHERE t.tenant_id = $1 AND t.state = 'succeeded' AND t.id IN ({})",
            bulk::ids_from(self.backend(), 2)
        );
        // The text holds only SQL written here; the ids are in the one parameter (`bulk`).
        let q = sqlx::query(AssertSqlSafe(sql))
            .bind(tenant_id.to_string())
            .bind(bulk::ids_json(task_ids.iter().map(String::as_str)));
        for r in q.fetch_all(self.pool()?).await? {
            let id: String = r.try_get(0)?;
            let vote: Option<String> = r.try_get(1)?;
            let result: Option<String> = r.try_get(2)?;
            let stdout: Option<String> = r.try_get(3)?;
            let value = match (vote, result) {
                (Some(v), _) => json_col::<Value>("tasks.result", &v)?
                    .get("output")
                    .cloned()
                    .unwrap_or(Value::Null),
                (None, Some(r)) => json_col("attempts.result", &r)?,
                (None, None) => json!({ "stdout": stdout.unwrap_or_default() }),
            };
            out.insert(id, value);
        }
        Ok(out)
    }
}
