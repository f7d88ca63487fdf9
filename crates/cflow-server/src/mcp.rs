//! `/mcp`: cflow's MCP tools and resources (crates/cflow-mcp) over streamable HTTP.
//!
//! The endpoint is an ordinary route behind the edge: a request must carry a live API key
//! (`Authorization: Bearer …`, checked by the same extractor as every route, rate limits and
//! audit of refusals included) before rmcp sees it, and its `Host` must be one of
//! [`McpConfig::allowed_hosts`] (DNS-rebinding defence; rmcp answers 403 otherwise).
//!
//! Each tool call is answered in process by [`InProcessApi`]: it sends the tool's API requests
//! through this server's own router with the bearer token of the MCP request that carried the
//! call, so RBAC, tenancy, rate limits and audit apply exactly as over HTTP, without a network
//! hop. The router holds the endpoint and the endpoint's API holds the router: the cycle is cut
//! at shutdown ([`McpHandle::close`]).

use crate::auth::{Caller, RequestContext, op};
use crate::edge::REQUEST_ID;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::response::IntoResponse;
use cflow_mcp::{Api, ApiFailure, ApiRequest, Raw};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// `[server.mcp]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpConfig {
    /// Serve `/mcp` (default true).
    pub enabled: bool,
    /// `Host` header values accepted by `/mcp` (`name` or `name:port`). Empty: `localhost`,
    /// `127.0.0.1`, `::1` and the host of `listen`. A server reached by another name (a DNS
    /// name, a public address) must list it.
    pub allowed_hosts: Vec<String>,
    /// Browser `Origin`s accepted (`scheme://host:port`); empty accepts requests without an
    /// `Origin` and any origin.
    pub allowed_origins: Vec<String>,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
        }
    }
}

impl McpConfig {
    /// The hosts `/mcp` accepts when listening on `listen`.
    pub fn effective_hosts(&self, listen: &str) -> Vec<String> {
        if !self.allowed_hosts.is_empty() {
            return self.allowed_hosts.clone();
        }
        let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
        let host = match listen.parse::<SocketAddr>() {
            Ok(addr) => addr.ip().to_string(),
            Err(_) => listen
                .rsplit_once(':')
                .map_or(listen, |(h, _)| h)
                .to_string(),
        };
        // A wildcard address is not a name anyone connects with.
        if !host.is_empty() && host != "0.0.0.0" && host != "::" && !hosts.contains(&host) {
            hosts.push(host);
        }
        hosts
    }
}

/// Answers the MCP tools' API requests through the server's own router.
#[derive(Default)]
pub struct InProcessApi {
    router: Mutex<Option<Router>>,
}

/// The largest answer body the tools read (artifacts included).
const MAX_ANSWER_BYTES: usize = 256 * 1024 * 1024;

impl Api for InProcessApi {
    async fn fetch(&self, req: ApiRequest) -> Result<Raw, ApiFailure> {
        let failure = |message: String| ApiFailure {
            status: None,
            message,
        };
        let router = self
            .router
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| failure("the server is shutting down".to_string()))?;
        let Some(outer) = cflow_mcp::current_request() else {
            return Err(failure("no MCP request in scope".to_string()));
        };
        let mut builder = axum::http::Request::builder()
            .method(req.method.clone())
            .uri(req.path_and_query());
        if let Some(auth) = outer.headers.get(AUTHORIZATION) {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        // The inner requests carry the outer request's id, so that the ledger ties them to it.
        if let Some(rc) = outer.extensions.get::<RequestContext>() {
            builder = builder.header(REQUEST_ID, rc.request_id.as_str());
        }
        let body = match &req.body {
            Some(v) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let mut inner = builder
            .body(body)
            .map_err(|e| failure(format!("building the request: {e}")))?;
        if let Some(ci) = outer.extensions.get::<ConnectInfo<SocketAddr>>() {
            inner.extensions_mut().insert(*ci);
        }
        let resp = match router.oneshot(inner).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = axum::body::to_bytes(resp.into_body(), MAX_ANSWER_BYTES)
            .await
            .map_err(|e| failure(format!("reading the answer: {e}")))?;
        if status.is_success() {
            return Ok(Raw {
                content_type,
                body: bytes.to_vec(),
            });
        }
        Err(ApiFailure {
            status: Some(status.as_u16()),
            message: problem_message(status.as_u16(), &bytes, req.action),
        })
    }
}

/// A refusal as a sentence in the words `cflow mcp` (the CLI's client) uses, so that a model
/// reads the same text over either transport: the problem's detail (and field), then what to do.
fn problem_message(status: u16, body: &[u8], action: cflow_core::Action) -> String {
    let problem = serde_json::from_slice::<serde_json::Value>(body).unwrap_or_default();
    let mut what = problem["detail"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(500).collect());
    if let Some(field) = problem["field"].as_str()
        && !what.contains(field)
    {
        what.push_str(&format!(" (field: {field})"));
    }
    match status {
        401 => format!("the server rejected the token ({what}) — use a live API key"),
        403 => {
            let roles: Vec<&str> = cflow_core::Role::ALL
                .into_iter()
                .filter(|r| cflow_core::authz::allows(*r, action))
                .map(cflow_core::Role::as_str)
                .collect();
            format!(
                "permission denied ({what}) — this needs a key with one of the roles: {}",
                roles.join(", ")
            )
        }
        404 if what.contains("not found") => what,
        404 => format!("not found: {what}"),
        409 => format!("conflict: {what}"),
        412 => format!("version conflict: {what}; nothing was changed"),
        413 => format!("request too large: {what} — send a smaller value"),
        400 | 422 => format!("invalid request: {what}"),
        429 => format!("rate limited ({what}) — retry in a few seconds"),
        _ => format!("server error ({status}): {what}"),
    }
}

/// What `start` keeps to stop the endpoint.
pub struct McpHandle {
    api: Arc<InProcessApi>,
    cancel: CancellationToken,
    records: tokio_util::task::TaskTracker,
}

/// How long shutdown waits for the `mcp.call` ledger entries still being written.
const RECORDS_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

impl McpHandle {
    /// Ends open MCP streams, lets the tool calls' ledger entries in flight land (for a few
    /// seconds at most), and cuts the router ↔ endpoint cycle. Call before the store closes.
    pub async fn close(&self) {
        self.cancel.cancel();
        self.records.close();
        if tokio::time::timeout(RECORDS_GRACE, self.records.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                pending = self.records.len(),
                "MCP call ledger entries still unwritten at shutdown"
            );
        }
        self.api
            .router
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

/// Adds `/mcp` to `router` (which must then go through the edge), or nothing when disabled.
/// Call [`McpHandle::attach`] with the finished router.
pub fn route(
    router: Router<crate::state::AppState>,
    config: &McpConfig,
    listen: &str,
    max_body_bytes: usize,
) -> (Router<crate::state::AppState>, Option<McpHandle>) {
    if !config.enabled {
        return (router, None);
    }
    let api = Arc::new(InProcessApi::default());
    let cancel = CancellationToken::new();
    let records = tokio_util::task::TaskTracker::new();
    let service = cflow_mcp::http_service(
        api.clone(),
        cflow_mcp::HttpOptions {
            allowed_hosts: config.effective_hosts(listen),
            allowed_origins: config.allowed_origins.clone(),
            max_body_bytes,
            cancel: cancel.clone(),
            records: records.clone(),
        },
    );
    let handler = move |_caller: Caller<op::Mcp>, req: Request| {
        let service = service.clone();
        async move {
            match service.oneshot(req).await {
                Ok(resp) => resp.map(Body::new).into_response(),
                Err(never) => match never {},
            }
        }
    };
    let router = router.route("/mcp", axum::routing::any(handler));
    (
        router,
        Some(McpHandle {
            api,
            cancel,
            records,
        }),
    )
}

impl McpHandle {
    /// Gives the endpoint the finished router to answer tool calls with.
    pub fn attach(&self, router: &Router) {
        *self.api.router.lock().unwrap_or_else(|e| e.into_inner()) = Some(router.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_hosts_are_loopback_and_the_listen_host() {
        let c = McpConfig::default();
        assert_eq!(
            c.effective_hosts("127.0.0.1:7700"),
            ["localhost", "127.0.0.1", "::1"]
        );
        assert_eq!(
            c.effective_hosts("10.1.2.3:7700"),
            ["localhost", "127.0.0.1", "::1", "10.1.2.3"]
        );
        assert_eq!(
            c.effective_hosts("0.0.0.0:7700"),
            ["localhost", "127.0.0.1", "::1"]
        );
        let set = McpConfig {
            allowed_hosts: vec!["cflow.example.com".into()],
            ..McpConfig::default()
        };
        assert_eq!(set.effective_hosts("0.0.0.0:7700"), ["cflow.example.com"]);
    }

    #[test]
    fn refusals_read_like_the_clis() {
        let m = problem_message(
            403,
            br#"{"detail":"role 'viewer' may not perform swarm.create"}"#,
            cflow_core::Action::SwarmWrite,
        );
        assert!(
            m.starts_with("permission denied (role 'viewer' may not perform swarm.create)"),
            "{m}"
        );
        assert!(m.contains("admin") && !m.contains("viewer,"), "{m}");
        let m = problem_message(
            422,
            br#"{"detail":"must not be empty","field":"name"}"#,
            cflow_core::Action::SwarmWrite,
        );
        assert_eq!(m, "invalid request: must not be empty (field: name)");
        assert_eq!(
            problem_message(500, b"boom", cflow_core::Action::Whoami),
            "server error (500): boom"
        );
    }
}
