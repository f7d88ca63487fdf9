//! Tenants' secrets, stored sealed: the store keeps each value's nonce and ciphertext and never
//! sees the clear value or the key (the server seals and opens with `cflow_core::secrets`).
//! Writes are audited as `secret.put` and `secret.delete`, naming the secret and never its value.

use crate::exec::GetCol;
use serde_json::json;

use crate::audit::Draft;
use crate::types::AuditContext;
use crate::writer::{Op, OpCx, Output, Step};
use crate::{Error, Result, Store};

/// A secret as listed: its name and times, never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMeta {
    pub name: String,
    /// Unix ms.
    pub created_at: i64,
    pub updated_at: i64,
}

/// A secret's sealed value.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSecret {
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSecret")
            .field("len", &self.ciphertext.len())
            .finish()
    }
}

#[derive(Debug)]
pub(crate) enum SecretOp {
    Put {
        tenant_id: String,
        name: String,
        sealed: SealedSecret,
    },
    Delete {
        tenant_id: String,
        name: String,
    },
}

pub(crate) async fn apply(cx: &mut OpCx<'_>, op: &SecretOp) -> Result<Step> {
    match op {
        SecretOp::Put {
            tenant_id,
            name,
            sealed,
        } => put(cx, tenant_id, name, sealed).await,
        SecretOp::Delete { tenant_id, name } => delete(cx, tenant_id, name).await,
    }
}

async fn put(
    cx: &mut OpCx<'_>,
    tenant_id: &str,
    name: &str,
    sealed: &SealedSecret,
) -> Result<Step> {
    let exists =
        crate::exec::query("SELECT created_at FROM secrets WHERE tenant_id = $1 AND name = $2")
            .bind(tenant_id.to_string())
            .bind(name.to_string())
            .fetch_optional(&mut *cx.conn)
            .await?;
    let created_at = match exists {
        Some(ref r) => r.try_get::<i64>(0)?,
        None => cx.now,
    };
    let draft = Draft::success(
        Some(tenant_id),
        "secret.put",
        format!("secret/{name}"),
        json!({ "name": name, "created": exists.is_none() }),
    );
    let tenant = crate::exec::query("SELECT 1 FROM tenants WHERE id = $1")
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
    crate::exec::query(
        "INSERT INTO secrets (tenant_id, name, nonce, ciphertext, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (tenant_id, name) DO UPDATE SET nonce = excluded.nonce, \
         ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
    )
    .bind(tenant_id.to_string())
    .bind(name.to_string())
    .bind(sealed.nonce.clone())
    .bind(sealed.ciphertext.clone())
    .bind(created_at)
    .bind(cx.now)
    .execute(&mut *cx.conn)
    .await?;
    let meta = SecretMeta {
        name: name.to_string(),
        created_at,
        updated_at: cx.now,
    };
    Ok(Step::done(Output::Secret(meta), draft))
}

async fn delete(cx: &mut OpCx<'_>, tenant_id: &str, name: &str) -> Result<Step> {
    let draft = Draft::success(
        Some(tenant_id),
        "secret.delete",
        format!("secret/{name}"),
        json!({ "name": name }),
    );
    let done = crate::exec::query("DELETE FROM secrets WHERE tenant_id = $1 AND name = $2")
        .bind(tenant_id.to_string())
        .bind(name.to_string())
        .execute(&mut *cx.conn)
        .await?;
    if done.rows_affected() == 0 {
        let e = Error::NotFound(format!("secret '{name}'"));
        return Ok(Step::failed(e, draft));
    }
    Ok(Step::done(Output::Unit, draft))
}

impl Store {
    /// Creates or replaces a tenant's secret (audited as `secret.put`, without the value).
    /// `sealed` is the value as `cflow_core::secrets::MasterKey::seal` sealed it.
    pub async fn secret_put(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        name: &str,
        sealed: SealedSecret,
    ) -> Result<SecretMeta> {
        cflow_core::secrets::check_name(name)?;
        let op = Op::Secret(SecretOp::Put {
            tenant_id: tenant_id.to_string(),
            name: name.to_string(),
            sealed,
        });
        let out = self.write(ctx, op).await?;
        expect_output!(out, Output::Secret(m) => m)
    }

    /// Deletes a tenant's secret (audited as `secret.delete`); `NotFound` if it has none.
    pub async fn secret_delete(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        name: &str,
    ) -> Result<()> {
        let op = Op::Secret(SecretOp::Delete {
            tenant_id: tenant_id.to_string(),
            name: name.to_string(),
        });
        let out = self.write(ctx, op).await?;
        expect_output!(out, Output::Unit => ())
    }

    /// The names and times of a tenant's secrets, by name.
    pub async fn secret_list(&self, tenant_id: &str) -> Result<Vec<SecretMeta>> {
        let rows = sqlx::query(
            "SELECT name, created_at, updated_at FROM secrets WHERE tenant_id = $1 ORDER BY name",
        )
        .bind(tenant_id.to_string())
        .fetch_all(self.pool()?)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SecretMeta {
                    name: r.try_get(0)?,
                    created_at: r.try_get(1)?,
                    updated_at: r.try_get(2)?,
                })
            })
            .collect()
    }

    /// A tenant's secret, sealed.
    pub async fn secret_get(&self, tenant_id: &str, name: &str) -> Result<Option<SealedSecret>> {
        let row =
            sqlx::query("SELECT nonce, ciphertext FROM secrets WHERE tenant_id = $1 AND name = $2")
                .bind(tenant_id.to_string())
                .bind(name.to_string())
                .fetch_optional(self.pool()?)
                .await?;
        row.map(|r| {
            Ok(SealedSecret {
                nonce: r.try_get(0)?,
                ciphertext: r.try_get(1)?,
            })
        })
        .transpose()
    }

    /// Every sealed secret of a tenant, by name (for building its masker).
    pub async fn secret_all(&self, tenant_id: &str) -> Result<Vec<(String, SealedSecret)>> {
        let rows = sqlx::query(
            "SELECT name, nonce, ciphertext FROM secrets WHERE tenant_id = $1 ORDER BY name",
        )
        .bind(tenant_id.to_string())
        .fetch_all(self.pool()?)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    SealedSecret {
                        nonce: r.try_get(1)?,
                        ciphertext: r.try_get(2)?,
                    },
                ))
            })
            .collect()
    }

    /// The tenants that have at least one secret (for loading maskers at start).
    pub async fn secret_tenants(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT DISTINCT tenant_id FROM secrets ORDER BY tenant_id")
            .fetch_all(self.pool()?)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }
}
