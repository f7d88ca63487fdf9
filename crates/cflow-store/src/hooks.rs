//! Lifecycle hooks and their durable outbox (`hooks`, `hook_deliveries`, migration `0009`).
//!
//! A hook is tenant data like any other: created and deleted by the writer, audited
//! (`hook.create`, `hook.delete`). Its deliveries are the outbox the server's sender drains:
//! enqueued once per (hook, event) (`UNIQUE (hook_id, event_id)`, so a repeated enqueue is a
//! no-op), claimed under a lease (`claimed_until`) so that two senders — two nodes on one
//! PostgreSQL database — never send the same delivery at the same time, and finished fenced by
//! that lease: a sender whose lease lapsed and was taken over cannot overwrite the new owner's
//! result. Enqueues, claims and ordinary results are bookkeeping of high volume and are not
//! audited; a delivery that goes dead is (`hook.dead`), and so is a re-queue (`hook.retry`).
//! The `Store` methods are in `hooks_api`.

use crate::exec::GetCol;
use serde_json::{Value, json};

use crate::audit::Draft;
use crate::swarms::json_col;
use crate::writer::{OpCx, Output, Step};
use crate::{Error, Result};

/// A hook as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Hook {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    /// `tenant`, `project` or `swarm`.
    pub scope: String,
    /// The project's name or the swarm's id; `None` at tenant scope.
    pub scope_id: Option<String>,
    /// Event patterns: exact names, `prefix.*`, `*`, `pre-task`.
    pub events: Vec<String>,
    /// `command` or `webhook`.
    pub kind: String,
    /// The handler's settings (the server defines and checks them).
    pub config: Value,
    pub enabled: bool,
    /// Unix µs: when it was last turned on (its creation, if created on); `None` if never.
    pub enabled_since: Option<i64>,
    /// Unix µs: when it was last turned off; `None` while on, or if it was never on.
    pub disabled_since: Option<i64>,
    /// Unix ms.
    pub created_at: i64,
    pub created_by: Option<String>,
}

impl Hook {
    /// Whether the hook was on at `at_us` (Unix µs), as far as its last switch on and off tell:
    /// on now, since before `at_us`; or off now, but on from before `at_us` until after it.
    /// What an event is matched against, so that an event waiting to be matched while the hook
    /// is switched is judged by the hook's state when the event happened.
    pub fn was_on_at(&self, at_us: i64) -> bool {
        match (self.enabled, self.enabled_since, self.disabled_since) {
            (true, Some(on), _) => on <= at_us,
            (false, Some(on), Some(off)) => on <= at_us && at_us < off,
            _ => false,
        }
    }
}

/// What [`crate::Store::hook_create`] creates (checked by the server, which knows the rules).
#[derive(Debug, Clone)]
pub struct NewHook {
    pub name: String,
    pub scope: String,
    pub scope_id: Option<String>,
    pub events: Vec<String>,
    pub kind: String,
    pub config: Value,
    pub enabled: bool,
}

/// One (hook, event) in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct HookDelivery {
    pub id: String,
    pub tenant_id: String,
    pub hook_id: String,
    pub event_id: String,
    pub event_type: String,
    /// What is sent (the webhook's body, the command's stdin).
    pub payload: Value,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    /// The lease of the sender holding it, when one does (Unix ms).
    pub claimed_until: Option<i64>,
    /// The last HTTP status (webhooks) or exit code (commands).
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub delivered_at: Option<i64>,
}

/// A delivery to enqueue.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub hook_id: String,
    pub event_id: String,
    pub event_type: String,
    pub payload: Value,
}

/// How one send of a claimed delivery ended.
#[derive(Debug, Clone, PartialEq)]
pub enum SendResult {
    Delivered {
        status: Option<i64>,
    },
    /// Try again at `at` (Unix ms).
    Retry {
        at: i64,
        status: Option<i64>,
        error: String,
    },
    /// Out of attempts: kept in the dead-letter list.
    Dead {
        status: Option<i64>,
        error: String,
    },
}

#[derive(Debug)]
pub(crate) enum HookOp {
    Create {
        tenant_id: String,
        new: NewHook,
        created_by: Option<String>,
    },
    Delete {
        tenant_id: String,
        id: String,
    },
    SetEnabled {
        tenant_id: String,
        id: String,
        enabled: bool,
    },
    Enqueue {
        tenant_id: String,
        deliveries: Vec<NewDelivery>,
    },
    Claim {
        limit: i64,
        lease_ms: i64,
    },
    Finish {
        id: String,
        /// The lease the sender claimed it with: the fence.
        claimed_until: i64,
        result: SendResult,
    },
    /// A delivery sent synchronously (pre-task checks, tests), recorded with its outcome.
    Record {
        tenant_id: String,
        new: NewDelivery,
        result: SendResult,
    },
    Requeue {
        tenant_id: String,
        id: String,
    },
}

#[derive(Debug)]
pub(crate) enum HookOutput {
    Hook(Hook),
    Delivery(HookDelivery),
    Deliveries(Vec<HookDelivery>),
    /// Rows enqueued (repeats of an existing (hook, event) not counted).
    Enqueued(u64),
}

pub(crate) const HOOK_COLUMNS: &str = "id, tenant_id, name, scope, scope_id, events, kind, config, enabled, created_at, created_by, \
     enabled_since, disabled_since";

pub(crate) const DELIVERY_COLUMNS: &str = "id, tenant_id, hook_id, event_id, event_type, payload, \
     state, attempts, next_attempt_at, claimed_until, last_status, last_error, created_at, \
     updated_at, delivered_at";

pub(crate) fn hook_row(r: &impl GetCol) -> Result<Hook> {
    Ok(Hook {
        id: r.try_get(0)?,
        tenant_id: r.try_get(1)?,
        name: r.try_get(2)?,
        scope: r.try_get(3)?,
        scope_id: r.try_get(4)?,
        events: json_col("hooks.events", &r.try_get::<String>(5)?)?,
        kind: r.try_get(6)?,
        config: json_col("hooks.config", &r.try_get::<String>(7)?)?,
        enabled: r.try_get::<i64>(8)? != 0,
        created_at: r.try_get(9)?,
        created_by: r.try_get(10)?,
        enabled_since: r.try_get(11)?,
        disabled_since: r.try_get(12)?,
    })
}

pub(crate) fn delivery_row(r: &impl GetCol) -> Result<HookDelivery> {
    Ok(HookDelivery {
        id: r.try_get(0)?,
        tenant_id: r.try_get(1)?,
        hook_id: r.try_get(2)?,
        event_id: r.try_get(3)?,
        event_type: r.try_get(4)?,
        payload: json_col("hook_deliveries.payload", &r.try_get::<String>(5)?)?,
        state: r.try_get(6)?,
        attempts: r.try_get(7)?,
        next_attempt_at: r.try_get(8)?,
        claimed_until: r.try_get(9)?,
        last_status: r.try_get(10)?,
        last_error: r.try_get(11)?,
        created_at: r.try_get(12)?,
        updated_at: r.try_get(13)?,
        delivered_at: r.try_get(14)?,
    })
}

pub(crate) async fn apply(cx: &mut OpCx<'_>, op: &HookOp) -> Result<Step> {
    match op {
        HookOp::Create {
            tenant_id,
            new,
            created_by,
        } => create(cx, tenant_id, new, created_by.as_deref()).await,
        HookOp::Delete { tenant_id, id } => delete(cx, tenant_id, id).await,
        HookOp::SetEnabled {
            tenant_id,
            id,
            enabled,
        } => set_enabled(cx, tenant_id, id, *enabled).await,
        HookOp::Enqueue {
            tenant_id,
            deliveries,
        } => enqueue(cx, tenant_id, deliveries).await,
        HookOp::Claim { limit, lease_ms } => claim(cx, *limit, *lease_ms).await,
        HookOp::Finish {
            id,
            claimed_until,
            result,
        } => finish(cx, id, *claimed_until, result).await,
        HookOp::Record {
            tenant_id,
            new,
            result,
        } => record(cx, tenant_id, new, result).await,
        HookOp::Requeue { tenant_id, id } => requeue(cx, tenant_id, id).await,
    }
}

async fn get_hook(cx: &mut OpCx<'_>, tenant_id: &str, id: &str) -> Result<Option<Hook>> {
    let sql = format!("SELECT {HOOK_COLUMNS} FROM hooks WHERE tenant_id = $1 AND id = $2");
    let row = crate::exec::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id.to_string())
        .bind(id.to_string())
        .fetch_optional(&mut *cx.conn)
        .await?;
    row.as_ref().map(hook_row).transpose()
}

async fn get_delivery(cx: &mut OpCx<'_>, id: &str) -> Result<Option<HookDelivery>> {
    let sql = format!("SELECT {DELIVERY_COLUMNS} FROM hook_deliveries WHERE id = $1");
    let row = crate::exec::query(sqlx::AssertSqlSafe(sql))
        .bind(id.to_string())
        .fetch_optional(&mut *cx.conn)
        .await?;
    row.as_ref().map(delivery_row).transpose()
}

async fn create(
    cx: &mut OpCx<'_>,
    tenant_id: &str,
    new: &NewHook,
    created_by: Option<&str>,
) -> Result<Step> {
    let id = crate::tenants::new_id();
    let draft = Draft::success(
        Some(tenant_id),
        "hook.create",
        format!("hook/{id}"),
        json!({
            "name": new.name, "kind": new.kind, "scope": new.scope, "scope_id": new.scope_id,
            "events": new.events,
        }),
    );
    let taken = crate::exec::query("SELECT 1 FROM hooks WHERE tenant_id = $1 AND name = $2")
        .bind(tenant_id.to_string())
        .bind(new.name.clone())
        .fetch_optional(&mut *cx.conn)
        .await?;
    if taken.is_some() {
        let e = Error::Conflict(format!("hook '{}'", new.name));
        return Ok(Step::failed(e, draft));
    }
    let events = serde_json::to_string(&new.events).unwrap_or_else(|_| "[]".into());
    let enabled_since = new.enabled.then(crate::db::now_us);
    crate::exec::query(
        "INSERT INTO hooks (id, tenant_id, name, scope, scope_id, events, kind, config, enabled, \
         created_at, created_by, enabled_since) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(id.clone())
    .bind(tenant_id.to_string())
    .bind(new.name.clone())
    .bind(new.scope.clone())
    .bind(new.scope_id.clone())
    .bind(events)
    .bind(new.kind.clone())
    .bind(new.config.to_string())
    .bind(i64::from(new.enabled))
    .bind(cx.now)
    .bind(created_by.map(str::to_string))
    .bind(enabled_since)
    .execute(&mut *cx.conn)
    .await?;
    let hook = Hook {
        id,
        tenant_id: tenant_id.to_string(),
        name: new.name.clone(),
        scope: new.scope.clone(),
        scope_id: new.scope_id.clone(),
        events: new.events.clone(),
        kind: new.kind.clone(),
        config: new.config.clone(),
        enabled: new.enabled,
        enabled_since,
        disabled_since: None,
        created_at: cx.now,
        created_by: created_by.map(str::to_string),
    };
    Ok(Step::done(Output::Hook(HookOutput::Hook(hook)), draft))
}

/// Deletes a hook with its deliveries (pending ones are never sent; the history goes with it).
async fn delete(cx: &mut OpCx<'_>, tenant_id: &str, id: &str) -> Result<Step> {
    let mut draft = Draft::success(
        Some(tenant_id),
        "hook.delete",
        format!("hook/{id}"),
        json!({}),
    );
    let Some(hook) = get_hook(cx, tenant_id, id).await? else {
        return Ok(Step::failed(Error::NotFound(format!("hook {id}")), draft));
    };
    let dropped =
        crate::exec::query("DELETE FROM hook_deliveries WHERE tenant_id = $1 AND hook_id = $2")
            .bind(tenant_id.to_string())
            .bind(id.to_string())
            .execute(&mut *cx.conn)
            .await?
            .rows_affected();
    crate::exec::query("DELETE FROM hooks WHERE tenant_id = $1 AND id = $2")
        .bind(tenant_id.to_string())
        .bind(id.to_string())
        .execute(&mut *cx.conn)
        .await?;
    draft.detail = json!({"name": hook.name, "deliveries_dropped": dropped});
    Ok(Step::done(Output::Hook(HookOutput::Hook(hook)), draft))
}

/// Turns a hook on or off. Off: events no longer become deliveries and pre-task checks skip
/// it; deliveries already queued are still sent. A switch records its time (µs) in
/// `enabled_since` / `disabled_since` (see [`Hook::was_on_at`]); setting the state it already
/// has changes nothing.
async fn set_enabled(cx: &mut OpCx<'_>, tenant_id: &str, id: &str, enabled: bool) -> Result<Step> {
    let mut draft = Draft::success(
        Some(tenant_id),
        "hook.update",
        format!("hook/{id}"),
        json!({ "enabled": enabled }),
    );
    let Some(mut hook) = get_hook(cx, tenant_id, id).await? else {
        return Ok(Step::failed(Error::NotFound(format!("hook {id}")), draft));
    };
    if hook.enabled != enabled {
        let now = crate::db::now_us();
        if enabled {
            hook.enabled_since = Some(now);
            hook.disabled_since = None;
        } else {
            hook.disabled_since = Some(now);
        }
        crate::exec::query(
            "UPDATE hooks SET enabled = $1, enabled_since = $2, disabled_since = $3 \
             WHERE tenant_id = $4 AND id = $5",
        )
        .bind(i64::from(enabled))
        .bind(hook.enabled_since)
        .bind(hook.disabled_since)
        .bind(tenant_id.to_string())
        .bind(id.to_string())
        .execute(&mut *cx.conn)
        .await?;
    }
    draft.detail = json!({ "name": hook.name, "enabled": enabled, "was": hook.enabled });
    hook.enabled = enabled;
    Ok(Step::done(Output::Hook(HookOutput::Hook(hook)), draft))
}

async fn enqueue(cx: &mut OpCx<'_>, tenant_id: &str, items: &[NewDelivery]) -> Result<Step> {
    let mut n = 0;
    for d in items {
        // The hook may have been deleted since the event was matched: then nothing is queued.
        let done = crate::exec::query(
            "INSERT INTO hook_deliveries (id, tenant_id, hook_id, event_id, event_type, payload, \
             state, attempts, next_attempt_at, created_at, updated_at) \
             SELECT $1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7, $7 \
             WHERE EXISTS (SELECT 1 FROM hooks WHERE id = $3 AND tenant_id = $2) \
             ON CONFLICT (hook_id, event_id) DO NOTHING",
        )
        .bind(crate::tenants::new_id())
        .bind(tenant_id.to_string())
        .bind(d.hook_id.clone())
        .bind(d.event_id.clone())
        .bind(d.event_type.clone())
        .bind(d.payload.to_string())
        .bind(cx.now)
        .execute(&mut *cx.conn)
        .await?;
        n += done.rows_affected();
    }
    Ok(Step::silent(Output::Hook(HookOutput::Enqueued(n))))
}

/// Takes up to `limit` due pending deliveries whose lease (if any) has lapsed, and leases them
/// until `now + lease_ms`. Batches are serialised by the writer (and across nodes by its
/// advisory lock on PostgreSQL), so two claims never take the same row.
async fn claim(cx: &mut OpCx<'_>, limit: i64, lease_ms: i64) -> Result<Step> {
    let until = cx.now + lease_ms;
    let sql = format!(
        "UPDATE hook_deliveries SET claimed_until = $1 WHERE id IN (\
         SELECT id FROM hook_deliveries WHERE state = 'pending' AND next_attempt_at <= $2 \
         AND (claimed_until IS NULL OR claimed_until <= $2) ORDER BY next_attempt_at LIMIT $3) \
         RETURNING {DELIVERY_COLUMNS}"
    );
    let rows = crate::exec::query(sqlx::AssertSqlSafe(sql))
        .bind(until)
        .bind(cx.now)
        .bind(limit)
        .fetch_all(&mut *cx.conn)
        .await?;
    let claimed = rows.iter().map(delivery_row).collect::<Result<Vec<_>>>()?;
    Ok(Step::silent(Output::Hook(HookOutput::Deliveries(claimed))))
}

/// Records a send's result, fenced by the sender's lease.
async fn finish(
    cx: &mut OpCx<'_>,
    id: &str,
    claimed_until: i64,
    result: &SendResult,
) -> Result<Step> {
    let (state, next, status, error, delivered_at) = columns(result, cx.now);
    let done = crate::exec::query(
        "UPDATE hook_deliveries SET state = $1, attempts = attempts + 1, next_attempt_at = $2, \
         claimed_until = NULL, last_status = $3, last_error = $4, updated_at = $5, \
         delivered_at = $6 WHERE id = $7 AND state = 'pending' AND claimed_until = $8",
    )
    .bind(state)
    .bind(next)
    .bind(status)
    .bind(error.clone())
    .bind(cx.now)
    .bind(delivered_at)
    .bind(id.to_string())
    .bind(claimed_until)
    .execute(&mut *cx.conn)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(Step::silent(Output::Hook(HookOutput::Enqueued(0))));
    }
    let Some(d) = get_delivery(cx, id).await? else {
        return Err(Error::NotFound(format!("delivery {id}")));
    };
    if state == "dead" {
        let draft = Draft::success(
            Some(&d.tenant_id),
            "hook.dead",
            format!("hook/{}/delivery/{id}", d.hook_id),
            json!({"event_type": d.event_type, "attempts": d.attempts, "error": error}),
        );
        return Ok(Step::done(Output::Hook(HookOutput::Delivery(d)), draft));
    }
    Ok(Step::silent(Output::Hook(HookOutput::Delivery(d))))
}

/// The state, next attempt, status, error and delivery time a result is stored as.
fn columns(
    r: &SendResult,
    now: i64,
) -> (&'static str, i64, Option<i64>, Option<String>, Option<i64>) {
    match r {
        SendResult::Delivered { status } => ("delivered", now, *status, None, Some(now)),
        SendResult::Retry { at, status, error } => {
            ("pending", *at, *status, Some(error.clone()), None)
        }
        SendResult::Dead { status, error } => ("dead", now, *status, Some(error.clone()), None),
    }
}

async fn record(
    cx: &mut OpCx<'_>,
    tenant_id: &str,
    new: &NewDelivery,
    result: &SendResult,
) -> Result<Step> {
    let (state, next, status, error, delivered_at) = columns(result, cx.now);
    let id = crate::tenants::new_id();
    crate::exec::query(
        "INSERT INTO hook_deliveries (id, tenant_id, hook_id, event_id, event_type, payload, \
         state, attempts, next_attempt_at, last_status, last_error, created_at, updated_at, \
         delivered_at) \
         SELECT $1, $2, $3, $4, $5, $6, $7, 1, $8, $9, $10, $11, $11, $12 \
         WHERE EXISTS (SELECT 1 FROM hooks WHERE id = $3 AND tenant_id = $2) \
         ON CONFLICT (hook_id, event_id) DO NOTHING",
    )
    .bind(id.clone())
    .bind(tenant_id.to_string())
    .bind(new.hook_id.clone())
    .bind(new.event_id.clone())
    .bind(new.event_type.clone())
    .bind(new.payload.to_string())
    .bind(state)
    .bind(next)
    .bind(status)
    .bind(error)
    .bind(cx.now)
    .bind(delivered_at)
    .execute(&mut *cx.conn)
    .await?;
    match get_delivery(cx, &id).await? {
        Some(d) => Ok(Step::silent(Output::Hook(HookOutput::Delivery(d)))),
        None => Err(Error::NotFound(format!("hook {}", new.hook_id))),
    }
}

/// Puts a dead delivery back in the queue, due now, with its attempts reset.
async fn requeue(cx: &mut OpCx<'_>, tenant_id: &str, id: &str) -> Result<Step> {
    let draft = Draft::success(
        Some(tenant_id),
        "hook.retry",
        format!("delivery/{id}"),
        json!({}),
    );
    let found = get_delivery(cx, id)
        .await?
        .filter(|d| d.tenant_id == tenant_id);
    let Some(d) = found else {
        return Ok(Step::failed(
            Error::NotFound(format!("delivery {id}")),
            draft,
        ));
    };
    if d.state != "dead" {
        let e = Error::State(format!(
            "delivery {id} is {}; only a dead delivery can be re-queued",
            d.state
        ));
        return Ok(Step::failed(e, draft));
    }
    crate::exec::query(
        "UPDATE hook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = $1, \
         claimed_until = NULL, updated_at = $1 WHERE id = $2 AND tenant_id = $3",
    )
    .bind(cx.now)
    .bind(id.to_string())
    .bind(tenant_id.to_string())
    .execute(&mut *cx.conn)
    .await?;
    let d = get_delivery(cx, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("delivery {id}")))?;
    let draft = Draft {
        resource: format!("hook/{}/delivery/{id}", d.hook_id),
        detail: json!({"event_type": d.event_type}),
        ..draft
    };
    Ok(Step::done(Output::Hook(HookOutput::Delivery(d)), draft))
}
