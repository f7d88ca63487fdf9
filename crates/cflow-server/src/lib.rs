//! The cflow API gateway: axum routes under `/api/v1`, authentication, authorization, rate
//! limits, audit of refusals, metrics and the generated OpenAPI document.
//!
//! # Invariant
//! Every route under `/api/v1` except the OpenAPI document checks, in this order and before it
//! reads a body: the API key (401), the rate limits (429) and the role's permission (403), by
//! taking [`auth::Caller`] as its first extractor. Every store call then passes the caller's
//! tenant id, so another tenant's resource is "not found" (404). A route-walk test enumerates the
//! OpenAPI document and checks all three for every route.
//!
//! # Boundary
//! Only this crate knows HTTP. It calls `cflow_store` for data and `cflow_core` for policy
//! (permission matrix, validation), and never builds SQL.
//!
//! # Layout
//! - [`serve`]: [`run`] / [`start`], [`Running`], [`ServerError`], background loops, shutdown.
//! - [`routes`]: one module per resource, each exposing `router()`; `#[utoipa::path]` on every
//!   handler generates [`openapi()`].
//! - [`auth`]: the [`auth::Caller`] extractor (key, rate limit, role) and operation markers.
//! - [`edge`]: the middleware around every route: request id, timeout, problem+json bodies,
//!   audit of refusals and rejected writes, metrics.
//! - [`error`]: [`error::ApiError`] and the one mapping from store errors to statuses.
//! - [`extract`]: JSON body, query and path extractors whose errors name the field.
//! - [`authcache`]: successful authentications reused for up to a second.
//! - [`cost`]: the budget check and usage recording that model drivers call.
//! - [`modelhost`]: the server side of a model loop's calls (setup, memory, messages,
//!   delegation, budget check, usage), fenced by the scheduler and served as the task's agent.
//! - [`mcp`]: `/mcp`, cflow's MCP tools over streamable HTTP (crates/cflow-mcp), answered in
//!   process through this router with the MCP request's bearer token.
//! - [`hooks`]: lifecycle hooks (SPEC C12): the dispatcher from the event bus to the store's
//!   outbox, the sender (webhooks signed with HMAC-SHA256, sandboxed commands), retries and dead
//!   letters, and the synchronous `pre-task` veto / amend at submission.
//! - [`secrets`]: the master key, sealed secrets and the per-tenant maskers applied to task
//!   output, logs, events and memory values.
//! - [`ratelimit`], [`metrics`], [`state`], [`tls`], [`config`].

pub mod auth;
pub mod authcache;
pub mod config;
pub mod cost;
pub mod edge;
pub mod error;
pub mod events;
pub mod extract;
pub mod hooks;
pub mod llmconfig;
pub mod mcp;
pub mod metrics;
pub mod modelhost;
pub mod ratelimit;
pub mod routes;
pub mod sched;
pub mod secrets;
pub mod serve;
pub mod state;
pub mod tls;

pub use config::{RateLimitConfig, ServerConfig};
pub use serve::{Running, ServerError, app, bind, run, start};

/// The OpenAPI 3.1 document of the HTTP API, generated from the route handlers.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes::api_router().into_openapi()
}

#[cfg(test)]
mod tests {
    /// The document lists every route with a security requirement: bearer everywhere except the
    /// public operations endpoints.
    #[test]
    fn every_operation_declares_its_security() {
        let doc = serde_json::to_value(super::openapi()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let public = ["/healthz", "/readyz", "/api/v1/openapi.json"];
        let paths = doc["paths"].as_object().unwrap();
        let mut operations = 0;
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                operations += 1;
                let security = op["security"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{method} {path}"));
                let bearer = security.iter().any(|s| s.get("bearer").is_some());
                assert_eq!(bearer, !public.contains(&path.as_str()), "{method} {path}");
            }
        }
        assert_eq!(operations, 71, "{:#?}", paths.keys().collect::<Vec<_>>());
    }
}
