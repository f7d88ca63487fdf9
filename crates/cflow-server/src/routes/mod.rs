//! The HTTP routes. Each module exposes `router()`, an [`OpenApiRouter`] whose handlers are
//! annotated with `#[utoipa::path]`, so the OpenAPI document is generated from this code.
//!
//! Every handler under `/api/v1` (except the OpenAPI document) takes a
//! [`Caller`](crate::auth::Caller) as its first extractor, which checks the key, the rate limit
//! and the role; the handler then passes `caller.tenant_id()` to every store call.

use crate::error::{ApiError, ProblemResponse};
use crate::state::AppState;
use axum::http::{Method, Uri};
use serde::Deserialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

pub mod agents;
pub mod artifacts;
pub mod audit;
pub mod claude;
pub mod cost;
pub mod events;
pub mod hooks;
pub mod keys;
pub mod mcp;
pub mod memory;
pub mod messages;
pub mod ops;
pub mod secrets;
pub mod swarms;
pub mod tasks;
pub mod tenants;
pub mod whoami;
pub mod workers;

/// The name of the bearer security scheme in the OpenAPI document.
pub const BEARER: &str = "bearer";

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("cflow_<id>_<secret>")
                    .description(Some(
                        "An API key, created with POST /api/v1/tenants/{tenant}/keys",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "cflow API",
        description = "The cflow HTTP API v1. Errors are RFC 9457 problem+json.",
    ),
    modifiers(&BearerScheme),
    components(schemas(ProblemResponse)),
)]
struct ApiDoc;

/// Every route, with its OpenAPI description.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(tenants::router())
        .merge(keys::router())
        .merge(whoami::router())
        .merge(memory::router())
        .merge(audit::router())
        .merge(ops::router())
        .merge(swarms::router())
        .merge(agents::router())
        .merge(tasks::router())
        .merge(messages::router())
        .merge(events::router())
        .merge(workers::router())
        .merge(artifacts::router())
        .merge(secrets::router())
        .merge(cost::router())
        .merge(hooks::router())
        .merge(mcp::router())
        .merge(claude::router())
}

/// Unknown routes get a problem, not axum's empty 404.
pub async fn fallback(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route for {method} {}; see /api/v1/openapi.json",
        uri.path()
    ))
}

/// `cursor` and `limit` of a list route.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// 1–1000, default 100.
    pub limit: Option<u32>,
}

/// Formats stored Unix milliseconds for the wire.
pub fn time(ms: i64) -> String {
    cflow_core::timefmt::rfc3339(ms)
}

pub fn opt_time(ms: Option<i64>) -> Option<String> {
    ms.map(time)
}
