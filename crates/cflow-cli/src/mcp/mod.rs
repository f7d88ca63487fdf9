//! `cflow mcp`: an MCP server (rmcp) over stdio that is a thin client of a running cflow server.
//!
//! Every tool call becomes one or more requests to the HTTP API with the caller's token, so RBAC,
//! tenancy and audit apply exactly as over HTTP. The tools ([`tools::CflowTools`]) are written
//! against the [`Api`] trait ("send this API request") rather than the HTTP client, so that a
//! later `/mcp` endpoint on the server can serve the same tools with its own implementation.
//!
//! # Layout
//! - `mod.rs`: the [`Api`] boundary, its HTTP implementation ([`HttpApi`]) and [`serve_stdio`].
//! - `tools.rs`: the tools, their parameters (JSON schemas) and the error texts.

pub mod tools;

use crate::client::{ApiError, Client};
use anyhow::{Context, Result};
use cflow_core::Action;
use reqwest::Method;
use rmcp::ServiceExt;
use serde_json::Value;
use std::future::Future;

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
}

/// Why a request failed: the HTTP status when the server answered, and a message for a model
/// that says what went wrong and what to do.
#[derive(Debug, Clone)]
pub struct ApiFailure {
    pub status: Option<u16>,
    pub message: String,
}

/// "Send this API request": the only thing the tools need from the world.
pub trait Api: Send + Sync + 'static {
    /// Sends the request as the caller; a 2xx answer is its JSON body (`null` when empty).
    fn send(&self, req: ApiRequest) -> impl Future<Output = Result<Value, ApiFailure>> + Send;
}

/// The API over HTTP with the CLI's client, or the reason there is no client (no token, a bad
/// server URL): then every call fails with that reason, so that a misconfigured MCP server
/// still starts and tells the model what to fix instead of vanishing.
pub struct HttpApi {
    client: Result<Client, String>,
}

impl HttpApi {
    pub fn new(client: Result<Client, String>) -> Self {
        Self { client }
    }
}

impl Api for HttpApi {
    async fn send(&self, req: ApiRequest) -> Result<Value, ApiFailure> {
        let client = self.client.as_ref().map_err(|e| ApiFailure {
            status: None,
            message: format!("cflow mcp is not configured: {e}"),
        })?;
        let segments: Vec<&str> = req.segments.iter().map(String::as_str).collect();
        let mut url = client.url(&segments);
        if !req.query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in &req.query {
                pairs.append_pair(k, v);
            }
        }
        let mut builder = client.request(req.method, url);
        if let Some(body) = &req.body {
            builder = builder.json(body);
        }
        let failure = |e: anyhow::Error| ApiFailure {
            status: e.downcast_ref::<ApiError>().map(|a| a.status.as_u16()),
            message: format!("{e:#}"),
        };
        let resp = client.send(builder, req.action).await.map_err(failure)?;
        let bytes = resp
            .bytes()
            .await
            .context("reading the server's answer")
            .map_err(failure)?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes)
            .context("the server's answer is not JSON")
            .map_err(failure)
    }
}

/// Serves the tools on stdin/stdout until the client closes the connection.
pub async fn serve_stdio(api: HttpApi) -> Result<()> {
    let service = tools::CflowTools::new(api)
        .serve(rmcp::transport::stdio())
        .await
        .context("starting the MCP session on stdio")?;
    service.waiting().await.context("serving MCP on stdio")?;
    Ok(())
}
