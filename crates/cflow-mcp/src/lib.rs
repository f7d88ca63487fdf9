//! cflow's MCP server: the tools (swarms, agents, tasks, memory, messages, audit, cost) and the
//! resources (task logs and artifacts), over any transport.
//!
//! Every tool call becomes one or more requests to cflow's HTTP API as the caller, so RBAC,
//! tenancy, rate limits and audit apply exactly as over HTTP. The tools are written against the
//! [`Api`] trait ("send this API request as the caller"); two implementations exist:
//! - `cflow mcp` (crates/cflow-cli): stdio, a thin HTTP client of a running server with the
//!   user's token;
//! - `/mcp` on the server (crates/cflow-server): streamable HTTP ([`http_service`]), which
//!   answers each request in process with the bearer token of the MCP request that carried the
//!   call ([`current_request`]).
//!
//! # Layout
//! - `lib.rs`: the [`Api`] boundary and the streamable HTTP service.
//! - `params.rs`: the tools' parameters (their JSON schemas).
//! - `tools.rs`: the tools and the error texts.
//! - `resources.rs`: `cflow://tasks/{id}/logs` and `cflow://tasks/{id}/artifacts/{sha256}`.

mod params;
mod resources;
pub mod tools;

pub use tools::CflowTools;

use cflow_core::Action;
use http::Method;
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;

/// One request to the cflow API: `<method> /api/v1/<segments…>?<query>` with an optional JSON
/// body. `action` is what the request needs permission for (for the hint on a 403).
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: Method,
    pub segments: Vec<String>,
    pub query: Vec<(String, String)>,
    pub body: Option<Value>,
    pub action: Action,
}

impl ApiRequest {
    pub fn new(method: Method, segments: &[&str], action: Action) -> Self {
        Self {
            method,
            segments: segments.iter().map(|s| s.to_string()).collect(),
            query: Vec::new(),
            body: None,
            action,
        }
    }

    pub fn get(segments: &[&str], action: Action) -> Self {
        Self::new(Method::GET, segments, action)
    }

    pub fn post(segments: &[&str], action: Action) -> Self {
        Self::new(Method::POST, segments, action)
    }

    /// Adds `name=value` to the query string when `value` is present.
    pub fn query(mut self, name: &str, value: Option<impl ToString>) -> Self {
        if let Some(v) = value {
            self.query.push((name.to_string(), v.to_string()));
        }
        self
    }

    pub fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    /// `/api/v1/<segments>?<query>`, each segment and query part percent-encoded.
    pub fn path_and_query(&self) -> String {
        let mut out = String::from("/api/v1");
        for s in &self.segments {
            out.push('/');
            encode_into(&mut out, s);
        }
        for (i, (k, v)) in self.query.iter().enumerate() {
            out.push(if i == 0 { '?' } else { '&' });
            encode_into(&mut out, k);
            out.push('=');
            encode_into(&mut out, v);
        }
        out
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode_into(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Why a request failed: the HTTP status when the server answered, and a message for a model
/// that says what went wrong and what to do.
#[derive(Debug, Clone)]
pub struct ApiFailure {
    pub status: Option<u16>,
    pub message: String,
}

/// A 2xx answer as bytes, with its content type.
#[derive(Debug, Clone)]
pub struct Raw {
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// "Send this API request as the caller": the only thing the tools need from the world.
pub trait Api: Send + Sync + 'static {
    /// Sends the request; a 2xx answer is its body.
    fn fetch(&self, req: ApiRequest) -> impl Future<Output = Result<Raw, ApiFailure>> + Send;

    /// Sends the request; a 2xx answer is its JSON body (`null` when empty).
    fn send(&self, req: ApiRequest) -> impl Future<Output = Result<Value, ApiFailure>> + Send {
        async move {
            let raw = self.fetch(req).await?;
            if raw.body.is_empty() {
                return Ok(Value::Null);
            }
            serde_json::from_slice(&raw.body).map_err(|e| ApiFailure {
                status: None,
                message: format!("the server's answer is not JSON: {e}"),
            })
        }
    }
}

tokio::task_local! {
    /// The HTTP request that carried the MCP message being handled (streamable HTTP only).
    static REQUEST: Arc<http::request::Parts>;
}

/// The HTTP request (method, URI, headers, extensions) that carried the MCP call being handled,
/// when it came over streamable HTTP; `None` on stdio. An [`Api`] serving `/mcp` takes the
/// caller's credentials from it.
pub fn current_request() -> Option<Arc<http::request::Parts>> {
    REQUEST.try_with(Arc::clone).ok()
}

/// Runs `f` with `parts` as the [`current_request`] (when there is one).
pub(crate) async fn with_request<F: Future>(
    parts: Option<http::request::Parts>,
    f: F,
) -> F::Output {
    match parts {
        Some(p) => REQUEST.scope(Arc::new(p), f).await,
        None => f.await,
    }
}

/// The MCP endpoint over streamable HTTP (a tower service to mount at `/mcp`).
pub type HttpService<A> = rmcp::transport::streamable_http_server::StreamableHttpService<
    CflowTools<A>,
    rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
>;

/// How `/mcp` is served.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// `Host` values (`name` or `name:port`) accepted: the defence against DNS rebinding. Empty
    /// accepts any host.
    pub allowed_hosts: Vec<String>,
    /// `Origin` values accepted from browsers (scheme://host:port); empty accepts any.
    pub allowed_origins: Vec<String>,
    /// Largest MCP request body.
    pub max_body_bytes: usize,
    /// Cancelled when the server shuts down: open streams end.
    pub cancel: tokio_util::sync::CancellationToken,
    /// The sessions' `mcp.call` ledger writes in flight: close it and wait on it at shutdown.
    pub records: tokio_util::task::TaskTracker,
}

/// The tools and resources over streamable HTTP, answered by `api`.
pub fn http_service<A: Api>(api: Arc<A>, options: HttpOptions) -> HttpService<A> {
    use rmcp::transport::streamable_http_server::StreamableHttpServerConfig;
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(options.allowed_hosts)
        .with_allowed_origins(options.allowed_origins)
        .with_max_request_body_bytes(options.max_body_bytes)
        .with_cancellation_token(options.cancel);
    rmcp::transport::streamable_http_server::StreamableHttpService::new(
        move || {
            Ok(CflowTools::with_records(
                api.clone(),
                options.records.clone(),
            ))
        },
        Default::default(),
        config,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_and_query_are_encoded() {
        let r = ApiRequest::get(&["memory", "a b/c", "k?"], Action::MemoryRead)
            .query("q", Some("x&y=z"))
            .query("none", None::<String>);
        assert_eq!(
            r.path_and_query(),
            "/api/v1/memory/a%20b%2Fc/k%3F?q=x%26y%3Dz"
        );
    }
}
