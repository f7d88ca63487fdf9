//! Operations endpoints: `/healthz`, `/readyz`, `/metrics` and the OpenAPI document.

use crate::auth::{Caller, op};
use crate::error::{ApiError, ApiResult, ProblemKind, ProblemResponse};
use crate::state::AppState;
use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusResponse {
    pub status: &'static str,
}

/// Liveness: 200 while the process runs.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, body = StatusResponse)),
    security(()),
)]
async fn healthz() -> Json<StatusResponse> {
    Json(StatusResponse { status: "ok" })
}

/// Readiness: 200 when the database answers and its writes can be made durable, else 503.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, body = StatusResponse),
        (status = 503, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(()),
)]
async fn readyz(State(state): State<AppState>) -> ApiResult<Json<StatusResponse>> {
    state.store.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness check failed");
        match e {
            // The store's own verdict (writes can no longer be made durable), said as it is.
            cflow_store::Error::Config(why) => ApiError::new(ProblemKind::Unavailable, why),
            _ => ApiError::new(ProblemKind::Unavailable, "the database does not answer"),
        }
    })?;
    Ok(Json(StatusResponse { status: "ready" }))
}

/// A superadmin caller, or nobody when `metrics_public` is set.
pub struct MetricsAccess;

impl FromRequestParts<AppState> for MetricsAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        if !state.metrics_public {
            Caller::<op::MetricsRead>::from_request_parts(parts, state).await?;
        }
        Ok(MetricsAccess)
    }
}

/// Prometheus text exposition of this server's metrics (superadmin, unless `metrics_public`).
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, body = String, content_type = "text/plain; version=0.0.4"),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn metrics(State(state): State<AppState>, _access: MetricsAccess) -> Response {
    let mut text = state.metrics.render();
    state.sched.render_metrics(&mut text);
    state.hooks.metrics().render(&mut text);
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// This document.
#[utoipa::path(
    get, path = "/api/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")),
    security(()),
)]
async fn openapi_json(State(state): State<AppState>) -> Response {
    let mut resp = state.openapi_json.clone().into_response();
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
