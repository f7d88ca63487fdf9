//! `POST /api/v1/mcp/calls`: the ledger entry of one MCP tool call (`mcp.call`). Both MCP
//! transports (`cflow mcp` on stdio, `/mcp` over HTTP) record every tool call here after it
//! ran, as the caller, with its outcome; the arguments are masked with the tenant's secrets and
//! capped. The API requests the tool made are audited by their own routes as usual.

use crate::auth::{Caller, op};
use crate::error::{ApiError, ApiResult, ProblemResponse};
use crate::extract::JsonBody;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use cflow_core::ValidationError;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(record_call))
}

/// The most bytes of a call's arguments (after masking) and error kept in the entry.
const ARGS_CAP: usize = 2048;
const ERROR_CAP: usize = 1024;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct McpCallParams {
    /// The tool's name: 1–64 of a-z 0-9 _.
    pub tool: String,
    /// `stdio` or `http`.
    pub transport: String,
    /// Whether the call succeeded (a tool error is `false`).
    pub ok: bool,
    /// The tool error's text, when it failed.
    pub error: Option<String>,
    pub duration_ms: u64,
    /// The call's arguments.
    #[schema(value_type = Object)]
    pub arguments: Option<Value>,
}

fn invalid(field: &str, rule: &str) -> ApiError {
    ApiError::validation(ValidationError::new(field, rule))
}

/// `s` cut to at most `cap` bytes at a character boundary, and whether it was cut.
fn capped(mut s: String, cap: usize) -> (String, bool) {
    if s.len() <= cap {
        return (s, false);
    }
    let mut end = cap;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    (s, true)
}

/// Record one MCP tool call in the audit ledger (`mcp.call`).
#[utoipa::path(
    post, path = "/api/v1/mcp/calls", tag = "mcp",
    request_body = McpCallParams,
    responses(
        (status = 204, description = "Recorded"),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn record_call(
    State(state): State<AppState>,
    caller: Caller<op::McpCall>,
    JsonBody(p): JsonBody<McpCallParams>,
) -> ApiResult<StatusCode> {
    let plain = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    if p.tool.is_empty() || p.tool.len() > 64 || !plain(&p.tool) {
        return Err(invalid("tool", "1–64 of a-z 0-9 _"));
    }
    if p.transport != "stdio" && p.transport != "http" {
        return Err(invalid("transport", "'stdio' or 'http'"));
    }
    let tenant = caller.tenant_id().to_string();
    let mut arguments = p.arguments.unwrap_or(Value::Null);
    state.events.masks().json(&tenant, &mut arguments);
    let (arguments, arguments_truncated) = capped(arguments.to_string(), ARGS_CAP);
    let error = p.error.map(|mut e| {
        state.events.masks().string(&tenant, &mut e);
        capped(e, ERROR_CAP).0
    });
    let event = cflow_store::AuditEvent {
        action: "mcp.call".to_string(),
        resource: format!("mcp/{}", p.tool),
        outcome: if p.ok { "success" } else { "failure" }.to_string(),
        detail: json!({
            "tool": p.tool,
            "transport": p.transport,
            "duration_ms": p.duration_ms,
            "arguments": arguments,
            "arguments_truncated": arguments_truncated,
            "error": error,
        }),
    };
    state.store.audit_append(&caller.ctx, event).await?;
    Ok(StatusCode::NO_CONTENT)
}
