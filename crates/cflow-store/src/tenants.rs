//! Tenants: creation and bootstrap (writer ops) and reads.

use crate::exec::GetCol;
use crate::exec::WConn;
use serde_json::json;
use sqlx::AnyPool;

use crate::audit::Draft;
use crate::keys::{self, KeySpec};
use crate::types::{Page, PageRequest, Tenant};
use crate::writer::{OpCx, Output, Step};
use crate::{Error, Result, page};

/// The tenant, principal and key that [`crate::Store::bootstrap`] creates.
pub const BOOTSTRAP_TENANT: &str = "default";
pub const BOOTSTRAP_PRINCIPAL: &str = "admin";

const CURSOR_TAG: &str = "t";

fn from_row(r: &impl GetCol) -> Result<Tenant> {
    Ok(Tenant {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        created_at: r.try_get(2)?,
    })
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

async fn insert(conn: &mut WConn, name: &str, now: i64) -> Result<Tenant> {
    let tenant = Tenant {
        id: new_id(),
        name: name.to_string(),
        created_at: now,
    };
    crate::exec::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
        .bind(tenant.id.clone())
        .bind(tenant.name.clone())
        .bind(tenant.created_at)
        .execute(&mut *conn)
        .await?;
    Ok(tenant)
}

/// Writer op: a new tenant, unless the name is taken.
pub(crate) async fn create(cx: &mut OpCx<'_>, name: &str) -> Result<Step> {
    let draft = Draft::success(None, "tenant.create", format!("tenant/{name}"), json!({}));
    let taken = crate::exec::query("SELECT id FROM tenants WHERE name = $1")
        .bind(name.to_string())
        .fetch_optional(&mut *cx.conn)
        .await?
        .is_some();
    if taken {
        return Ok(Step::failed(
            Error::Conflict(format!("tenant '{name}'")),
            draft,
        ));
    }
    let tenant = insert(cx.conn, name, cx.now).await?;
    let draft = Draft {
        tenant_id: Some(tenant.id.clone()),
        detail: json!({ "tenant_id": tenant.id }),
        ..draft
    };
    Ok(Step::done(Output::Tenant(tenant), draft))
}

/// Writer op: on a database without tenants, the first tenant, its admin and a superadmin key.
/// Checking inside the writer's transaction makes concurrent bootstraps (even from several
/// nodes) create exactly one.
pub(crate) async fn bootstrap(cx: &mut OpCx<'_>) -> Result<Step> {
    let any = crate::exec::query("SELECT id FROM tenants LIMIT 1")
        .fetch_optional(&mut *cx.conn)
        .await?
        .is_some();
    if any {
        return Ok(Step::silent(Output::Bootstrap(None)));
    }
    let tenant = insert(cx.conn, BOOTSTRAP_TENANT, cx.now).await?;
    let created = keys::insert_with_principal(
        cx,
        &tenant.id,
        "user",
        BOOTSTRAP_PRINCIPAL,
        &KeySpec {
            name: BOOTSTRAP_PRINCIPAL,
            role: cflow_core::Role::Superadmin,
            project: None,
            expires_at: None,
        },
    )
    .await?;
    let draft = Draft::success(
        Some(&tenant.id),
        "bootstrap",
        format!("tenant/{}", tenant.name),
        json!({
            "tenant_id": tenant.id,
            "principal_id": created.key.principal_id,
            "key_id": created.key.id,
            "role": created.key.role,
        }),
    );
    Ok(Step::done(Output::Bootstrap(Some(created)), draft))
}

/// A tenant by id, or else by name (an id match wins, since a name may look like an id).
pub(crate) async fn get(pool: &AnyPool, id_or_name: &str) -> Result<Option<Tenant>> {
    let row = sqlx::query(
        "SELECT id, name, created_at FROM tenants WHERE id = $1 OR name = $1 \
         ORDER BY CASE WHEN id = $1 THEN 0 ELSE 1 END LIMIT 1",
    )
    .bind(id_or_name.to_string())
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Tenants ordered by name.
pub(crate) async fn list(pool: &AnyPool, req: &PageRequest) -> Result<Page<Tenant>> {
    let limit = page::clamp_limit(req.limit);
    let after = page::decode_opt(CURSOR_TAG, &req.cursor)?;
    let rows =
        match after {
            Some(after) => sqlx::query(
                "SELECT id, name, created_at FROM tenants WHERE name > $1 ORDER BY name LIMIT $2",
            )
            .bind(after)
            .bind(limit + 1)
            .fetch_all(pool)
            .await?,
            None => {
                sqlx::query("SELECT id, name, created_at FROM tenants ORDER BY name LIMIT $1")
                    .bind(limit + 1)
                    .fetch_all(pool)
                    .await?
            }
        };
    let tenants = rows.iter().map(from_row).collect::<Result<Vec<_>>>()?;
    Ok(page::finish(tenants, limit, CURSOR_TAG, |t| t.name.clone()))
}

/// Writer op: sets a tenant's model providers (a JSON array), or clears them with `None`
/// (audited as `tenant.llm`, the list included: it holds names of secrets, never values).
pub(crate) async fn set_llm(
    cx: &mut OpCx<'_>,
    tenant_id: &str,
    providers: Option<&serde_json::Value>,
) -> Result<Step> {
    set_setting(cx, tenant_id, Setting::Llm, providers).await
}

/// A tenant's settings that an admin replaces as a whole: a JSON column of `tenants`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Setting {
    /// `sandbox`: the sandbox policy overrides (audited as `tenant.sandbox`).
    Sandbox,
    /// `llm`: the model providers (audited as `tenant.llm`).
    Llm,
    /// `claude_policy`: the Claude Code hook policy (audited as `tenant.claude_policy`).
    ClaudePolicy,
}

impl Setting {
    /// `(audit action, statement, the value's key in the audit detail)`; the statements are
    /// constants, never built from input.
    fn parts(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Setting::Sandbox => (
                "tenant.sandbox",
                "UPDATE tenants SET sandbox = $1 WHERE id = $2",
                "sandbox",
            ),
            Setting::Llm => (
                "tenant.llm",
                "UPDATE tenants SET llm = $1 WHERE id = $2",
                "providers",
            ),
            Setting::ClaudePolicy => (
                "tenant.claude_policy",
                "UPDATE tenants SET claude_policy = $1 WHERE id = $2",
                "policy",
            ),
        }
    }
}

/// Writer op: sets (or with `None` clears) one of a tenant's settings, audited with the value.
pub(crate) async fn set_setting(
    cx: &mut OpCx<'_>,
    tenant_id: &str,
    setting: Setting,
    value: Option<&serde_json::Value>,
) -> Result<Step> {
    let (action, statement, key) = setting.parts();
    let draft = Draft::success(
        Some(tenant_id),
        action,
        format!("tenant/{tenant_id}"),
        json!({ key: value }),
    );
    let done = crate::exec::query(statement)
        .bind(value.map(|v| v.to_string()))
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
    Ok(Step::done(Output::Unit, draft))
}

impl crate::Store {
    /// A tenant's model providers as stored (a JSON array); `None` when it uses the operator's,
    /// `NotFound` for an unknown tenant.
    pub async fn tenant_llm(&self, tenant_id: &str) -> Result<Option<serde_json::Value>> {
        let row = sqlx::query("SELECT llm FROM tenants WHERE id = $1")
            .bind(tenant_id.to_string())
            .fetch_optional(self.pool()?)
            .await?;
        let Some(r) = row else {
            return Err(Error::NotFound(format!("tenant {tenant_id}")));
        };
        r.try_get::<Option<String>>(0)?
            .map(|s| crate::swarms::json_col("tenants.llm", &s))
            .transpose()
    }

    /// Sets a tenant's model providers, or clears them with `None` (audited as `tenant.llm`).
    /// The value is stored as given: the caller validates its shape.
    pub async fn set_tenant_llm(
        &self,
        ctx: &crate::AuditContext,
        tenant_id: &str,
        providers: Option<serde_json::Value>,
    ) -> Result<()> {
        let op = crate::writer::Op::SetTenantLlm {
            tenant_id: tenant_id.to_string(),
            providers,
        };
        let out = self.write(ctx, op).await?;
        expect_output!(out, Output::Unit => ())
    }

    /// A tenant's Claude Code hook policy as stored (a JSON object); `None` when it has none,
    /// `NotFound` for an unknown tenant.
    pub async fn tenant_claude_policy(&self, tenant_id: &str) -> Result<Option<serde_json::Value>> {
        let row = sqlx::query("SELECT claude_policy FROM tenants WHERE id = $1")
            .bind(tenant_id.to_string())
            .fetch_optional(self.pool()?)
            .await?;
        let Some(r) = row else {
            return Err(Error::NotFound(format!("tenant {tenant_id}")));
        };
        r.try_get::<Option<String>>(0)?
            .map(|s| crate::swarms::json_col("tenants.claude_policy", &s))
            .transpose()
    }

    /// Sets a tenant's Claude Code hook policy, or clears it with `None` (audited as
    /// `tenant.claude_policy`). The value is stored as given: the caller validates it.
    pub async fn set_tenant_claude_policy(
        &self,
        ctx: &crate::AuditContext,
        tenant_id: &str,
        policy: Option<serde_json::Value>,
    ) -> Result<()> {
        let op = crate::writer::Op::SetTenantSetting {
            tenant_id: tenant_id.to_string(),
            setting: Setting::ClaudePolicy,
            value: policy,
        };
        let out = self.write(ctx, op).await?;
        expect_output!(out, Output::Unit => ())
    }
}
