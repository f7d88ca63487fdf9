//! Shared memory: `PUT|GET|DELETE /api/v1/memory/{namespace}/{key}` with versions and
//! compare-and-set through `ETag` / `If-Match` / `If-None-Match`, listing by namespace and
//! full-text search. A namespace containing `/` travels percent-encoded as one path segment.

use super::{opt_time, time};
use crate::auth::{Caller, op};
use crate::error::{ApiError, ApiResult, ProblemResponse};
use crate::extract::{JsonBody, PathParams, Query, etag, page_limit, parse_version_tag};
use crate::state::{AppState, now_ms};
use axum::Json;
use axum::extract::State;
use axum::http::header::{ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use cflow_core::{ValidationError, search, validate};
use cflow_store::{MemoryEntry, MemoryPut, PageRequest, SearchHit};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(put_memory, get_memory, delete_memory))
        .routes(routes!(search_memory))
        .routes(routes!(list_memory))
}

/// The namespace that cannot be used because `/api/v1/memory/search` is the search route.
pub(crate) const RESERVED_NAMESPACE: &str = "search";

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutMemoryParams {
    /// Any JSON value, at most 1 MiB serialised.
    pub value: serde_json::Value,
    /// The entry disappears this many seconds after the write (1 s – 10 years).
    pub ttl_seconds: Option<i64>,
    /// At most 32 tags of 1–64 characters; searchable.
    pub tags: Option<Vec<String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryMetaResponse {
    pub namespace: String,
    pub key: String,
    pub version: i64,
    pub tags: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    pub expires_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryEntryResponse {
    pub namespace: String,
    pub key: String,
    pub value: serde_json::Value,
    pub version: i64,
    pub tags: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    pub expires_at: Option<String>,
}

impl From<MemoryEntry> for MemoryEntryResponse {
    fn from(e: MemoryEntry) -> Self {
        Self {
            namespace: e.namespace,
            key: e.key,
            value: e.value,
            version: e.version,
            tags: e.tags,
            created_at: time(e.created_at),
            updated_at: time(e.updated_at),
            expires_at: opt_time(e.expires_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryListResponse {
    pub items: Vec<MemoryEntryResponse>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchHitResponse {
    #[serde(flatten)]
    pub entry: MemoryEntryResponse,
    /// Higher is more relevant; comparable only within one answer.
    pub score: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemorySearchResponse {
    pub items: Vec<SearchHitResponse>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MemoryListParams {
    /// Only keys starting with this text.
    pub prefix: Option<String>,
    pub cursor: Option<String>,
    /// 1–1000, default 100.
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MemorySearchParams {
    /// Words to find (all must match); operators and punctuation are ignored.
    pub q: String,
    /// Only this namespace and the namespaces below it.
    pub namespace: Option<String>,
    /// 1–1000, default 100.
    pub limit: Option<u32>,
}

/// Counts the bytes of a value's JSON without building the string.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) fn serialised_len(v: &serde_json::Value) -> usize {
    let mut c = Counter(0);
    serde_json::to_writer(&mut c, v).expect("writing JSON to a counter cannot fail");
    c.0
}

/// Checks a namespace and key from the path and the caller's project scope.
fn check_address<O>(caller: &Caller<O>, namespace: &str, key: Option<&str>) -> ApiResult<()> {
    validate::namespace(namespace)?;
    if let Some(key) = key {
        validate::memory_key(key)?;
    }
    caller.check_namespace(namespace)
}

/// Write an entry, optionally only at a version (`If-Match`) or only if absent
/// (`If-None-Match: *`).
#[utoipa::path(
    put, path = "/api/v1/memory/{namespace}/{key}", tag = "memory",
    params(
        ("namespace" = String, Path, description = "Namespace, percent-encoded if it contains '/'"),
        ("key" = String, Path, description = "Key, percent-encoded"),
        ("If-Match" = Option<String>, Header, description = "Write only at this version (\"3\")"),
        ("If-None-Match" = Option<String>, Header, description = "'*': write only if absent"),
    ),
    request_body = PutMemoryParams,
    responses(
        (status = 200, body = MemoryMetaResponse, headers(("ETag" = String))),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 412, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn put_memory(
    State(state): State<AppState>,
    caller: Caller<op::MemoryWrite>,
    PathParams((namespace, key)): PathParams<(String, String)>,
    headers: HeaderMap,
    JsonBody(mut p): JsonBody<PutMemoryParams>,
) -> ApiResult<Response> {
    check_address(&caller, &namespace, Some(&key))?;
    // Memory is read by agents and people alike: the tenant's secrets and any credentials are
    // masked out of the value before it is stored (the size limit applies to what is stored).
    state.secrets.masks().json(caller.tenant_id(), &mut p.value);
    if namespace == RESERVED_NAMESPACE {
        return Err(ApiError::validation(ValidationError::new(
            "namespace",
            "'search' is reserved (GET /api/v1/memory/search is the search route)",
        )));
    }
    let precondition = crate::extract::precondition(&headers, true)?;
    let tags = p.tags.unwrap_or_default();
    validate::tags(&tags)?;
    if let Some(ttl) = p.ttl_seconds {
        validate::ttl_seconds(ttl)?;
    }
    validate::value_size(serialised_len(&p.value))?;
    let e = state
        .store
        .memory_put(
            &caller.ctx,
            caller.tenant_id(),
            MemoryPut {
                namespace,
                key,
                value: p.value,
                tags,
                ttl_seconds: p.ttl_seconds,
                precondition,
            },
        )
        .await?;
    // After the commit, like every event: hooks and the event stream see the write (never
    // the value).
    state.events.publish(
        caller.tenant_id(),
        "memory.written",
        &format!("{}/{}", e.namespace, e.key),
        serde_json::json!({"namespace": e.namespace, "key": e.key, "version": e.version}),
    );
    let tag = etag(e.version);
    let meta = MemoryMetaResponse {
        namespace: e.namespace,
        key: e.key,
        version: e.version,
        tags: e.tags,
        created_at: time(e.created_at),
        updated_at: time(e.updated_at),
        expires_at: opt_time(e.expires_at),
    };
    Ok(([(ETAG, tag)], Json(meta)).into_response())
}

/// Read a live entry. `If-None-Match` with its current version answers 304.
#[utoipa::path(
    get, path = "/api/v1/memory/{namespace}/{key}", tag = "memory",
    params(
        ("namespace" = String, Path, description = "Namespace, percent-encoded if it contains '/'"),
        ("key" = String, Path, description = "Key, percent-encoded"),
    ),
    responses(
        (status = 200, body = MemoryEntryResponse, headers(("ETag" = String))),
        (status = 304, description = "The entry is still at the version in If-None-Match"),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn get_memory(
    State(state): State<AppState>,
    caller: Caller<op::MemoryRead>,
    PathParams((namespace, key)): PathParams<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    check_address(&caller, &namespace, Some(&key))?;
    let entry = state
        .store
        .memory_get(caller.tenant_id(), &namespace, &key, now_ms())
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "memory entry '{key}' in namespace '{namespace}' not found"
            ))
        })?;
    let tag = etag(entry.version);
    let unchanged = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| parse_version_tag(t) == Some(entry.version))
        });
    if unchanged {
        return Ok((StatusCode::NOT_MODIFIED, [(ETAG, tag)]).into_response());
    }
    Ok(([(ETAG, tag)], Json(MemoryEntryResponse::from(entry))).into_response())
}

/// Delete a live entry, optionally only at a version (`If-Match`).
#[utoipa::path(
    delete, path = "/api/v1/memory/{namespace}/{key}", tag = "memory",
    params(
        ("namespace" = String, Path, description = "Namespace, percent-encoded if it contains '/'"),
        ("key" = String, Path, description = "Key, percent-encoded"),
        ("If-Match" = Option<String>, Header, description = "Delete only at this version"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 412, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn delete_memory(
    State(state): State<AppState>,
    caller: Caller<op::MemoryDelete>,
    PathParams((namespace, key)): PathParams<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    check_address(&caller, &namespace, Some(&key))?;
    let precondition = crate::extract::precondition(&headers, false)?;
    state
        .store
        .memory_delete(
            &caller.ctx,
            caller.tenant_id(),
            &namespace,
            &key,
            precondition,
        )
        .await?;
    state.events.publish(
        caller.tenant_id(),
        "memory.deleted",
        &format!("{namespace}/{key}"),
        serde_json::json!({"namespace": namespace, "key": key}),
    );
    Ok(StatusCode::NO_CONTENT)
}

/// List the live entries of a namespace, ordered by key.
#[utoipa::path(
    get, path = "/api/v1/memory/{namespace}", tag = "memory",
    params(
        ("namespace" = String, Path, description = "Namespace, percent-encoded if it contains '/'"),
        MemoryListParams,
    ),
    responses(
        (status = 200, body = MemoryListResponse),
        (status = 400, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list_memory(
    State(state): State<AppState>,
    caller: Caller<op::MemoryRead>,
    PathParams(namespace): PathParams<String>,
    Query(q): Query<MemoryListParams>,
) -> ApiResult<Json<MemoryListResponse>> {
    check_address(&caller, &namespace, None)?;
    let prefix = q.prefix.unwrap_or_default();
    if !prefix.is_empty() {
        validate::memory_key(&prefix).map_err(|e| ApiError::bad_request("prefix", e.rule))?;
    }
    let page = PageRequest {
        cursor: q.cursor,
        limit: page_limit(q.limit)?,
    };
    let page = state
        .store
        .memory_list(caller.tenant_id(), &namespace, &prefix, now_ms(), &page)
        .await?;
    Ok(Json(MemoryListResponse {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Full-text search of live entries (key, value text and tags), most relevant first.
#[utoipa::path(
    get, path = "/api/v1/memory/search", tag = "memory",
    params(MemorySearchParams),
    responses(
        (status = 200, body = MemorySearchResponse),
        (status = 400, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn search_memory(
    State(state): State<AppState>,
    caller: Caller<op::MemoryRead>,
    Query(q): Query<MemorySearchParams>,
) -> ApiResult<Json<MemorySearchResponse>> {
    let terms = search::terms(&q.q)?;
    let limit = page_limit(q.limit)?;
    // A project-scoped key searches its project unless it names a namespace inside it.
    let namespace = match (q.namespace, &caller.key.project) {
        (Some(ns), _) => {
            check_address(&caller, &ns, None)?;
            Some(ns)
        }
        (None, Some(project)) => Some(project.clone()),
        (None, None) => None,
    };
    let hits = state
        .store
        .memory_search(
            caller.tenant_id(),
            &terms,
            namespace.as_deref(),
            now_ms(),
            limit,
        )
        .await?;
    Ok(Json(MemorySearchResponse {
        items: hits
            .into_iter()
            .map(|SearchHit { entry, score }| SearchHitResponse {
                entry: entry.into(),
                score,
            })
            .collect(),
    }))
}
