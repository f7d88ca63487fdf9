//! Artifacts (files, patches and logs an attempt leaves behind) and the tenants' sandbox policy
//! overrides.
//!
//! Contents are addressed by their SHA-256: `artifact_blobs` holds each distinct content once,
//! `artifacts` names it per `(task, epoch, name)`. An upload is fenced like a report: only the
//! worker holding the task's current attempt may store artifacts for it, while the attempt runs
//! and after it ended (a worker uploads just before it reports the ending), never for an older
//! epoch.

use crate::exec::GetCol;
use cflow_core::validate;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::attempts::head;
use crate::audit::Draft;
use crate::orch_types::{ArtifactMeta, ArtifactPut};
use crate::swarms::json_col;
use crate::types::AuditContext;
use crate::writer::{Op, OpCx, Output, Step};
use crate::{Error, Result, Store};

/// Writer op: stores an artifact of the attempt `(task_id, epoch)` held by `worker_id`.
pub(crate) async fn put(cx: &mut OpCx<'_>, req: &ArtifactPut, sha256: &str) -> Result<Step> {
    let (task_id, epoch) = (req.task_id.as_str(), req.epoch);
    let size = i64::try_from(req.bytes.len()).unwrap_or(i64::MAX);
    let draft = Draft::success(
        None,
        "artifact.put",
        format!("task/{task_id}"),
        json!({ "epoch": epoch, "worker_id": req.worker_id, "name": req.name,
            "kind": req.kind, "sha256": sha256, "size": size }),
    );
    let Some(h) = head(cx, task_id).await? else {
        return Ok(Step::failed(
            Error::NotFound(format!("task {task_id}")),
            draft,
        ));
    };
    let draft = Draft {
        tenant_id: Some(h.tenant_id.clone()),
        ..draft
    };
    let row = crate::exec::query(
        "SELECT worker_id, attempt_no FROM attempts WHERE task_id = $1 AND epoch = $2",
    )
    .bind(task_id.to_string())
    .bind(epoch)
    .fetch_optional(&mut *cx.conn)
    .await?;
    let attempt = row
        .map(|r| -> Result<(String, i64)> { Ok((r.try_get(0)?, r.try_get(1)?)) })
        .transpose()?;
    let attempt_no = match attempt {
        Some((worker, no)) if h.epoch == epoch && worker == req.worker_id => no,
        Some((worker, _)) if h.epoch == epoch => {
            let e = Error::State(format!(
                "the attempt of task {task_id} at epoch {epoch} belongs to another worker than \
                 {} ({worker}); only its own worker may store its artifacts",
                req.worker_id
            ));
            return Ok(Step::failed(e, draft));
        }
        _ => {
            let e = Error::StaleEpoch {
                task_id: task_id.to_string(),
                epoch,
                current: Some(h.epoch),
            };
            return Ok(Step::failed(e, draft));
        }
    };
    crate::exec::query(
        "INSERT INTO artifact_blobs (sha256, size, content) VALUES ($1, $2, $3) \
         ON CONFLICT (sha256) DO NOTHING",
    )
    .bind(sha256.to_string())
    .bind(size)
    .bind(req.bytes.clone())
    .execute(&mut *cx.conn)
    .await?;
    crate::exec::query(
        "INSERT INTO artifacts (task_id, epoch, tenant_id, name, kind, sha256, size, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (task_id, epoch, name) DO UPDATE SET kind = excluded.kind, \
         sha256 = excluded.sha256, size = excluded.size, created_at = excluded.created_at",
    )
    .bind(task_id.to_string())
    .bind(epoch)
    .bind(h.tenant_id.clone())
    .bind(req.name.clone())
    .bind(req.kind.clone())
    .bind(sha256.to_string())
    .bind(size)
    .bind(req.now)
    .execute(&mut *cx.conn)
    .await?;
    let meta = ArtifactMeta {
        task_id: task_id.to_string(),
        epoch,
        attempt_no,
        name: req.name.clone(),
        kind: req.kind.clone(),
        sha256: sha256.to_string(),
        size,
        created_at: req.now,
    };
    Ok(Step::done(Output::Artifact(meta), draft))
}

/// Writer op: sets (or clears) a tenant's sandbox policy overrides.
pub(crate) async fn set_sandbox(
    cx: &mut OpCx<'_>,
    tenant_id: &str,
    sandbox: Option<&Value>,
) -> Result<Step> {
    crate::tenants::set_setting(cx, tenant_id, crate::tenants::Setting::Sandbox, sandbox).await
}

/// The lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn meta_from_row(r: &impl GetCol) -> Result<ArtifactMeta> {
    Ok(ArtifactMeta {
        task_id: r.try_get(0)?,
        epoch: r.try_get(1)?,
        attempt_no: r.try_get(2)?,
        name: r.try_get(3)?,
        kind: r.try_get(4)?,
        sha256: r.try_get(5)?,
        size: r.try_get(6)?,
        created_at: r.try_get(7)?,
    })
}

impl Store {
    /// Stores an artifact of the attempt `(task_id, epoch)`, which `worker_id` must hold: while
    /// it runs or after it ended, as long as it is the task's current attempt. The content is
    /// stored once per distinct SHA-256; a second upload of the same name in the same attempt
    /// replaces the first. `StaleEpoch` for an older epoch, `State` for another worker's
    /// attempt, `NotFound` for an unknown task: each writes nothing (but is audited).
    pub async fn put_artifact(&self, ctx: &AuditContext, req: ArtifactPut) -> Result<ArtifactMeta> {
        validate::artifact_name(&req.name)?;
        validate::artifact_kind(&req.kind)?;
        // Hashing megabytes is done here, not in the writer that every write waits on.
        let sha256 = sha256_hex(&req.bytes);
        let out = self.write(ctx, Op::PutArtifact { req, sha256 }).await?;
        expect_output!(out, Output::Artifact(m) => m)
    }

    /// The artifacts of one of the tenant's tasks, by epoch then name; `NotFound` when the
    /// tenant has no such task.
    pub async fn list_artifacts(
        &self,
        tenant_id: &str,
        task_id: &str,
    ) -> Result<Vec<ArtifactMeta>> {
        let pool = self.pool()?;
        let known = sqlx::query("SELECT 1 FROM tasks WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id.to_string())
            .bind(task_id.to_string())
            .fetch_optional(pool)
            .await?
            .is_some();
        if !known {
            return Err(Error::NotFound(format!("task {task_id}")));
        }
        let rows = sqlx::query(
            "SELECT r.task_id, r.epoch, a.attempt_no, r.name, r.kind, r.sha256, r.size, \
             r.created_at FROM artifacts r JOIN attempts a ON a.task_id = r.task_id \
             AND a.epoch = r.epoch WHERE r.tenant_id = $1 AND r.task_id = $2 \
             ORDER BY r.epoch, r.name",
        )
        .bind(tenant_id.to_string())
        .bind(task_id.to_string())
        .fetch_all(pool)
        .await?;
        rows.iter().map(meta_from_row).collect()
    }

    /// The content whose SHA-256 is `sha256`, only when the tenant's task `task_id` has an
    /// artifact with that content.
    pub async fn artifact_content(
        &self,
        tenant_id: &str,
        task_id: &str,
        sha256: &str,
    ) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query(
            "SELECT b.content FROM artifact_blobs b WHERE b.sha256 = $3 AND EXISTS \
             (SELECT 1 FROM artifacts r WHERE r.tenant_id = $1 AND r.task_id = $2 \
             AND r.sha256 = $3)",
        )
        .bind(tenant_id.to_string())
        .bind(task_id.to_string())
        .bind(sha256.to_string())
        .fetch_optional(self.pool()?)
        .await?;
        row.map(|r| r.try_get::<Vec<u8>>(0))
            .transpose()
            .map_err(Error::from)
    }

    /// A tenant's sandbox policy overrides; `None` when it has none, `NotFound` for an unknown
    /// tenant.
    pub async fn tenant_sandbox(&self, tenant_id: &str) -> Result<Option<Value>> {
        let row = sqlx::query("SELECT sandbox FROM tenants WHERE id = $1")
            .bind(tenant_id.to_string())
            .fetch_optional(self.pool()?)
            .await?;
        let Some(r) = row else {
            return Err(Error::NotFound(format!("tenant {tenant_id}")));
        };
        r.try_get::<Option<String>>(0)?
            .map(|s| json_col("tenants.sandbox", &s))
            .transpose()
    }

    /// Sets a tenant's sandbox policy overrides, or clears them with `None` (audited as
    /// `tenant.sandbox`). The value is stored as given: the caller validates its shape.
    pub async fn set_tenant_sandbox(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        sandbox: Option<Value>,
    ) -> Result<()> {
        let op = Op::SetTenantSandbox {
            tenant_id: tenant_id.to_string(),
            sandbox,
        };
        let out = self.write(ctx, op).await?;
        expect_output!(out, Output::Unit => ())
    }
}
