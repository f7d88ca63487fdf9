//! Artifacts of task attempts: a worker uploads them (`PUT
//! /api/v1/workers/{id}/attempts/{task_id}/{epoch}/artifacts?name=…&kind=…`, raw bytes, up to
//! [`MAX_ARTIFACT_BYTES`]), readers of the task list them and download them by content hash.

use super::time;
use crate::auth::{Caller, op};
use crate::error::{ApiError, ApiResult, ProblemKind, ProblemResponse};
use crate::extract::{PathParams, Query};
use crate::state::AppState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cflow_core::validate;
use cflow_store::ArtifactMeta;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The largest artifact a worker may upload (the body limit of the upload route only).
pub const MAX_ARTIFACT_BYTES: usize = 64 * 1024 * 1024;

pub fn router() -> OpenApiRouter<AppState> {
    // The upload gets its own body limit; every other route keeps the server's (small) one.
    let upload = OpenApiRouter::new()
        .routes(routes!(put_artifact))
        .layer(DefaultBodyLimit::max(MAX_ARTIFACT_BYTES));
    OpenApiRouter::new()
        .routes(routes!(list_artifacts))
        .routes(routes!(get_artifact))
        .merge(upload)
}

/// A raw request body. Declared last among a handler's arguments, after the
/// [`Caller`], so that an unauthenticated or forbidden upload is refused before it is read.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> ApiResult<Self> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        ProblemKind::PayloadTooLarge,
                        format!(
                            "the artifact is larger than {MAX_ARTIFACT_BYTES} bytes (64 MiB): \
                             leave it out or compress it"
                        ),
                    )
                } else {
                    ApiError::new(
                        ProblemKind::BadRequest,
                        format!("could not read the request body: {}", rejection.body_text()),
                    )
                }
            })
    }
}

/// Which artifact an upload is.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ArtifactQuery {
    /// A relative path: 1–255 bytes, no NUL, not absolute, no `..` segment.
    pub name: String,
    /// `patch`, `file` or `log`.
    pub kind: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ArtifactResponse {
    pub name: String,
    /// `patch`, `file` or `log`.
    pub kind: String,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    pub size: i64,
    /// The attempt (1-based) that stored it.
    pub attempt: i64,
    pub epoch: i64,
    pub created_at: String,
    /// Where to download the content.
    pub url: String,
}

impl From<ArtifactMeta> for ArtifactResponse {
    fn from(m: ArtifactMeta) -> Self {
        Self {
            url: format!("/api/v1/tasks/{}/artifacts/{}", m.task_id, m.sha256),
            name: m.name,
            kind: m.kind,
            sha256: m.sha256,
            size: m.size,
            attempt: m.attempt_no,
            epoch: m.epoch,
            created_at: time(m.created_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ArtifactListResponse {
    /// By epoch, then name.
    pub artifacts: Vec<ArtifactResponse>,
}

/// Store an artifact of an attempt this worker holds (or just finished): the raw bytes as the
/// body. A later upload of the same name in the same attempt replaces it.
#[utoipa::path(
    put, path = "/api/v1/workers/{id}/attempts/{task_id}/{epoch}/artifacts", tag = "workers",
    params(
        ("id" = String, Path, description = "Worker id"),
        ("task_id" = String, Path, description = "Task id"),
        ("epoch" = i64, Path, description = "The attempt's epoch"),
        ArtifactQuery,
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, body = ArtifactResponse),
        (status = 400, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 409, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 413, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn put_artifact(
    State(state): State<AppState>,
    caller: Caller<op::WorkerArtifact>,
    PathParams((id, task_id, epoch)): PathParams<(String, String, i64)>,
    Query(q): Query<ArtifactQuery>,
    RawBody(body): RawBody,
) -> ApiResult<(StatusCode, Json<ArtifactResponse>)> {
    validate::artifact_name(&q.name)?;
    validate::artifact_kind(&q.kind)?;
    // A worker key serves its own tenant; a superadmin's worker (like the local pool) every one.
    let tenant = (!caller.is_superadmin()).then(|| caller.tenant_id());
    let meta = state
        .sched
        .put_artifact(
            &caller.ctx,
            tenant,
            &id,
            &task_id,
            epoch,
            &q.name,
            &q.kind,
            body.to_vec(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(meta.into())))
}

/// The artifacts the attempts of a task stored.
#[utoipa::path(
    get, path = "/api/v1/tasks/{id}/artifacts", tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    responses(
        (status = 200, body = ArtifactListResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list_artifacts(
    State(state): State<AppState>,
    caller: Caller<op::TaskArtifacts>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<ArtifactListResponse>> {
    let list = state.store.list_artifacts(caller.tenant_id(), &id).await?;
    Ok(Json(ArtifactListResponse {
        artifacts: list.into_iter().map(Into::into).collect(),
    }))
}

/// An artifact's content, by its SHA-256.
#[utoipa::path(
    get, path = "/api/v1/tasks/{id}/artifacts/{sha256}", tag = "tasks",
    params(
        ("id" = String, Path, description = "Task id"),
        ("sha256" = String, Path, description = "The content's SHA-256 (lowercase hex)"),
    ),
    responses(
        (status = 200, body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn get_artifact(
    State(state): State<AppState>,
    caller: Caller<op::TaskArtifacts>,
    PathParams((id, sha256)): PathParams<(String, String)>,
) -> ApiResult<Response> {
    let tenant = caller.tenant_id();
    let not_found = || {
        ApiError::not_found(format!(
            "task {id} has no artifact with sha256 {sha256}: list them with GET \
             /api/v1/tasks/{id}/artifacts"
        ))
    };
    let list = state.store.list_artifacts(tenant, &id).await?;
    let Some(meta) = list.iter().rev().find(|m| m.sha256 == sha256) else {
        return Err(not_found());
    };
    let Some(bytes) = state.store.artifact_content(tenant, &id, &sha256).await? else {
        return Err(not_found());
    };
    let disposition = HeaderValue::from_str(&content_disposition(&meta.name))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response())
}

/// `attachment` with the name's last segment: an ASCII `filename` (other characters replaced)
/// and the exact name percent-encoded in `filename*` (RFC 6266).
fn content_disposition(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    let ascii: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in base.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disposition_names_the_file_safely() {
        assert_eq!(
            content_disposition("out/diff.patch"),
            "attachment; filename=\"diff.patch\"; filename*=UTF-8''diff.patch"
        );
        assert_eq!(
            content_disposition("a \"b\"é"),
            "attachment; filename=\"a _b__\"; filename*=UTF-8''a%20%22b%22%C3%A9"
        );
    }
}
