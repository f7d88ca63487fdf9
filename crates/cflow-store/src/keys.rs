//! API keys: creation and revocation (writer ops), listing and authentication.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::exec::GetCol;
use crate::exec::WConn;
use cflow_core::Role;
use cflow_core::apikey;
use serde_json::json;
use sqlx::AnyPool;

use crate::audit::Draft;
use crate::tenants::new_id;
use crate::types::{ApiKey, AuthOutcome, CreatedKey, NewKey, Page, PageRequest};
use crate::writer::{OpCx, Output, Step};
use crate::{Error, Result, page};

const CURSOR_TAG: &str = "k";

/// `last_used_at` is recorded at most this often per key, so that authentication stays a read.
pub const TOUCH_INTERVAL_MS: i64 = 60_000;

/// The columns [`from_row`] reads, in its order.
macro_rules! key_columns {
    () => {
        "id, tenant_id, principal_id, name, role, project, created_at, expires_at, revoked_at, last_used_at"
    };
}

fn from_row(r: &impl GetCol) -> Result<ApiKey> {
    let role: String = r.try_get(4)?;
    let role = role.parse::<Role>().map_err(|e| Error::Corrupt {
        what: "api_keys.role".to_string(),
        detail: e.to_string(),
    })?;
    Ok(ApiKey {
        id: r.try_get(0)?,
        tenant_id: r.try_get(1)?,
        principal_id: r.try_get(2)?,
        name: r.try_get(3)?,
        role,
        project: r.try_get(5)?,
        created_at: r.try_get(6)?,
        expires_at: r.try_get(7)?,
        revoked_at: r.try_get(8)?,
        last_used_at: r.try_get(9)?,
    })
}

/// The parts of a key to create.
pub(crate) struct KeySpec<'a> {
    pub name: &'a str,
    pub role: Role,
    pub project: Option<&'a str>,
    pub expires_at: Option<i64>,
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf)
        .map_err(|e| Error::Config(format!("the system random source failed: {e}")))?;
    Ok(buf)
}

/// The project's id, creating the project when the tenant has none of that name.
async fn ensure_project(conn: &mut WConn, tenant_id: &str, name: &str, now: i64) -> Result<String> {
    let existing = crate::exec::query("SELECT id FROM projects WHERE tenant_id = $1 AND name = $2")
        .bind(tenant_id.to_string())
        .bind(name.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(r) = existing {
        return Ok(r.try_get(0)?);
    }
    let id = new_id();
    crate::exec::query(
        "INSERT INTO projects (id, tenant_id, name, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(id.clone())
    .bind(tenant_id.to_string())
    .bind(name.to_string())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(id)
}

/// Creates a principal, its role binding and its key, inside the writer's transaction.
pub(crate) async fn insert_with_principal(
    cx: &mut OpCx<'_>,
    tenant_id: &str,
    kind: &str,
    principal_name: &str,
    spec: &KeySpec<'_>,
) -> Result<CreatedKey> {
    let now = cx.now;
    let conn = &mut *cx.conn;
    let principal_id = new_id();
    crate::exec::query(
        "INSERT INTO principals (id, tenant_id, kind, name, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(principal_id.clone())
    .bind(tenant_id.to_string())
    .bind(kind.to_string())
    .bind(principal_name.to_string())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let project_id = match spec.project {
        Some(p) => Some(ensure_project(conn, tenant_id, p, now).await?),
        None => None,
    };
    crate::exec::query(
        "INSERT INTO role_bindings (principal_id, tenant_id, project_id, role, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(principal_id.clone())
    .bind(tenant_id.to_string())
    .bind(project_id)
    .bind(spec.role.as_str().to_string())
    .bind(now)
    .execute(&mut *conn)
    .await?;

    // A 64-bit id collides essentially never, but checking costs one primary-key lookup.
    let (id, token) = loop {
        let (id, token) = apikey::format_token(random::<8>()?, random::<32>()?);
        let taken = crate::exec::query("SELECT id FROM api_keys WHERE id = $1")
            .bind(id.clone())
            .fetch_optional(&mut *conn)
            .await?
            .is_some();
        if !taken {
            break (id, token);
        }
    };
    let secret = apikey::parse_token(&token)
        .map(|p| p.secret.to_string())
        .ok_or_else(|| Error::Config("a freshly formatted token does not parse".to_string()))?;
    let key = ApiKey {
        id,
        tenant_id: tenant_id.to_string(),
        principal_id,
        name: spec.name.to_string(),
        role: spec.role,
        project: spec.project.map(str::to_string),
        created_at: now,
        expires_at: spec.expires_at,
        revoked_at: None,
        last_used_at: None,
    };
    crate::exec::query(
        "INSERT INTO api_keys (id, tenant_id, principal_id, name, secret_hash, role, project, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(key.id.clone())
    .bind(key.tenant_id.clone())
    .bind(key.principal_id.clone())
    .bind(key.name.clone())
    .bind(apikey::hash_secret(&secret))
    .bind(key.role.as_str().to_string())
    .bind(key.project.clone())
    .bind(key.created_at)
    .bind(key.expires_at)
    .execute(&mut *conn)
    .await?;
    Ok(CreatedKey { key, token })
}

/// Writer op: a service principal named after the key, its binding, and the key.
pub(crate) async fn create(cx: &mut OpCx<'_>, tenant_id: &str, new: &NewKey) -> Result<Step> {
    let detail = json!({
        "name": new.name,
        "role": new.role,
        "project": new.project,
        "expires_at": new.expires_at,
    });
    let exists = crate::exec::query("SELECT id FROM tenants WHERE id = $1")
        .bind(tenant_id.to_string())
        .fetch_optional(&mut *cx.conn)
        .await?
        .is_some();
    if !exists {
        let draft = Draft::success(None, "key.create", format!("tenant/{tenant_id}"), detail);
        return Ok(Step::failed(Error::NotFound("tenant".to_string()), draft));
    }
    let spec = KeySpec {
        name: &new.name,
        role: new.role,
        project: new.project.as_deref(),
        expires_at: new.expires_at,
    };
    let created = insert_with_principal(cx, tenant_id, "service", &new.name, &spec).await?;
    let draft = Draft::success(
        Some(tenant_id),
        "key.create",
        format!("key/{}", created.key.id),
        detail,
    );
    Ok(Step::done(Output::Created(created), draft))
}

/// Writer op: revokes a key of the tenant (the first revocation time stays).
pub(crate) async fn revoke(cx: &mut OpCx<'_>, tenant_id: &str, key_id: &str) -> Result<Step> {
    let resource = format!("key/{key_id}");
    let sql = concat!(
        "SELECT ",
        key_columns!(),
        " FROM api_keys WHERE tenant_id = $1 AND id = $2"
    );
    let row = crate::exec::query(sql)
        .bind(tenant_id.to_string())
        .bind(key_id.to_string())
        .fetch_optional(&mut *cx.conn)
        .await?;
    let Some(row) = row else {
        let draft = Draft::success(Some(tenant_id), "key.revoke", resource, json!({}));
        return Ok(Step::failed(
            Error::NotFound(format!("key '{key_id}'")),
            draft,
        ));
    };
    let mut key = from_row(&row)?;
    let already = key.revoked_at.is_some();
    if !already {
        crate::exec::query("UPDATE api_keys SET revoked_at = $1 WHERE tenant_id = $2 AND id = $3")
            .bind(cx.now)
            .bind(tenant_id.to_string())
            .bind(key_id.to_string())
            .execute(&mut *cx.conn)
            .await?;
        key.revoked_at = Some(cx.now);
    }
    let draft = Draft::success(
        Some(tenant_id),
        "key.revoke",
        resource,
        json!({ "already_revoked": already }),
    );
    Ok(Step::done(Output::Key(key), draft))
}

/// Writer op (unaudited bookkeeping): records a key's last use.
pub(crate) async fn touch(cx: &mut OpCx<'_>, key_id: &str, at: i64) -> Result<Step> {
    crate::exec::query(
        "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
    )
    .bind(key_id.to_string())
    .bind(at)
    .execute(&mut *cx.conn)
    .await?;
    Ok(Step::silent(Output::Unit))
}

/// Keys of a tenant, oldest first.
pub(crate) async fn list(
    pool: &AnyPool,
    tenant_id: &str,
    req: &PageRequest,
) -> Result<Page<ApiKey>> {
    let limit = page::clamp_limit(req.limit);
    let (after_time, after_id) = match page::decode_opt(CURSOR_TAG, &req.cursor)? {
        Some(c) => {
            let (t, id) = c.split_once(':').ok_or(Error::InvalidCursor)?;
            (
                t.parse::<i64>().map_err(|_| Error::InvalidCursor)?,
                id.to_string(),
            )
        }
        None => (i64::MIN, String::new()),
    };
    let sql = concat!(
        "SELECT ",
        key_columns!(),
        " FROM api_keys WHERE tenant_id = $1 \
         AND (created_at, id) > ($2, $3) ORDER BY created_at, id LIMIT $4"
    );
    let rows = sqlx::query(sql)
        .bind(tenant_id.to_string())
        .bind(after_time)
        .bind(after_id)
        .bind(limit + 1)
        .fetch_all(pool)
        .await?;
    let keys = rows.iter().map(from_row).collect::<Result<Vec<_>>>()?;
    Ok(page::finish(keys, limit, CURSOR_TAG, |k| {
        format!("{}:{}", k.created_at, k.id)
    }))
}

/// Remembers when each key's use was last recorded, so that a busy key costs one write a minute.
#[derive(Debug, Default)]
pub(crate) struct TouchTracker {
    last: Mutex<HashMap<String, i64>>,
}

impl TouchTracker {
    /// Whether a use at `now` should be recorded, given the stored `last_used_at`.
    fn should_record(&self, key_id: &str, stored: Option<i64>, now: i64) -> bool {
        if stored.is_some_and(|s| now.saturating_sub(s) < TOUCH_INTERVAL_MS) {
            return false;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last
            .get(key_id)
            .is_some_and(|&t| now.saturating_sub(t) < TOUCH_INTERVAL_MS)
        {
            return false;
        }
        // Old marks are useless (the interval has passed), so drop them before the map grows.
        if last.len() >= 100_000 {
            last.retain(|_, t| now.saturating_sub(*t) < TOUCH_INTERVAL_MS);
        }
        last.insert(key_id.to_string(), now);
        true
    }
}

/// Checks a token; returns the outcome and, for a live key whose use should be recorded, the
/// touch to queue.
pub(crate) async fn authenticate(
    pool: &AnyPool,
    tracker: &TouchTracker,
    token: &str,
    now: i64,
) -> Result<(AuthOutcome, bool)> {
    let Some(parsed) = apikey::parse_token(token) else {
        return Ok((AuthOutcome::Invalid, false));
    };
    let sql = concat!(
        "SELECT ",
        key_columns!(),
        ", secret_hash FROM api_keys WHERE id = $1"
    );
    let row = sqlx::query(sql)
        .bind(parsed.id.to_string())
        .fetch_optional(pool)
        .await?;
    let Some(row) = row else {
        return Ok((AuthOutcome::Invalid, false));
    };
    let stored_hash: String = row.try_get(10)?;
    if !apikey::verify_secret(parsed.secret, &stored_hash) {
        return Ok((AuthOutcome::Invalid, false));
    }
    let key = from_row(&row)?;
    if key.revoked_at.is_some() {
        return Ok((AuthOutcome::Revoked(key), false));
    }
    if key.expires_at.is_some_and(|e| e <= now) {
        return Ok((AuthOutcome::Expired(key), false));
    }
    let touch = tracker.should_record(&key.id, key.last_used_at, now);
    Ok((AuthOutcome::Valid(key), touch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touches_at_most_once_per_interval() {
        let t = TouchTracker::default();
        assert!(t.should_record("k", None, 1_000));
        assert!(!t.should_record("k", None, 1_000 + TOUCH_INTERVAL_MS - 1));
        assert!(t.should_record("k", None, 1_000 + TOUCH_INTERVAL_MS));
        assert!(!t.should_record("other", Some(5_000), 5_000 + 10));
        assert!(t.should_record("other", Some(5_000), 5_000 + TOUCH_INTERVAL_MS));
    }
}
