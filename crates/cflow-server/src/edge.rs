//! The middleware every request passes through: it assigns the request id, enforces the request
//! timeout, turns every error answer into problem+json carrying that id, audits refusals and
//! rejected writes, logs 5xx detail, and records metrics under the matched route template.

use crate::auth::{AuditSlot, RequestContext};
use crate::error::{ApiError, PROBLEM_JSON, Problem, ProblemKind};
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cflow_store::AuditEvent;
use std::net::SocketAddr;
use std::time::Instant;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A client's own request id is kept when it is short and plain (so that it cannot smuggle
/// anything into logs or the ledger); otherwise a UUIDv7 is made.
fn incoming_request_id(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(&REQUEST_ID)?.to_str().ok()?;
    let sane = (1..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    sane.then(|| v.to_owned())
}

pub async fn edge(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id =
        incoming_request_id(req.headers()).unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0.ip().to_string());
    // Present for matched routes (this middleware is applied per route); bounded label values.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let slot = AuditSlot::default();
    req.extensions_mut().insert(RequestContext {
        request_id: request_id.clone(),
        source,
        slot: slot.clone(),
    });

    let mut resp = match tokio::time::timeout(state.request_timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            ProblemKind::Timeout,
            format!(
                "the request took longer than {} s and was abandoned; a write may or may not \
                 have been applied: read it back before retrying",
                state.request_timeout.as_secs()
            ),
        )
        .into_response(),
    };

    let status = resp.status();
    if let Some(problem) = resp.extensions_mut().remove::<Problem>() {
        finish_problem(&state, &mut resp, &problem, &request_id, &slot).await;
    } else if status.is_client_error() || status.is_server_error() {
        // An answer from a layer that does not speak problem+json (axum's 405, a panic caught
        // by tower-http, …): replace its body so that clients only ever see problems.
        let is_problem = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
        if !is_problem {
            let kind = ProblemKind::for_status(status);
            let problem = Problem {
                kind,
                status,
                detail: bare_detail(kind, &method, route.as_ref()),
                field: None,
                current_version: None,
                retry_after_secs: None,
                internal: None,
            };
            *resp.body_mut() = Body::from(problem.body(Some(&request_id)));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
            resp.headers_mut().remove(header::CONTENT_LENGTH);
            if kind == ProblemKind::Internal {
                tracing::error!(%request_id, %status, "request failed without detail");
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }

    let route_label = route.as_ref().map_or("unmatched", |m| m.as_str());
    let elapsed = started.elapsed();
    state.metrics.record(
        method.as_str(),
        route_label,
        resp.status().as_u16(),
        elapsed,
    );
    tracing::debug!(
        %request_id, %method, route = route_label, status = resp.status().as_u16(),
        micros = elapsed.as_micros() as u64, "request"
    );
    resp
}

fn bare_detail(
    kind: ProblemKind,
    method: &axum::http::Method,
    route: Option<&MatchedPath>,
) -> String {
    match (kind, route) {
        (ProblemKind::MethodNotAllowed, Some(r)) => {
            format!(
                "{method} is not allowed on {}; see /api/v1/openapi.json",
                r.as_str()
            )
        }
        (ProblemKind::Internal, _) => {
            "the server failed to answer; quote the request id when reporting it".to_string()
        }
        _ => kind.title().to_string(),
    }
}

/// Writes the final problem body, logs server-side detail and audits what must be audited.
async fn finish_problem(
    state: &AppState,
    resp: &mut Response,
    problem: &Problem,
    request_id: &str,
    slot: &AuditSlot,
) {
    *resp.body_mut() = Body::from(problem.body(Some(request_id)));
    resp.headers_mut().remove(header::CONTENT_LENGTH);
    if problem.status.is_server_error() {
        tracing::error!(
            %request_id,
            status = problem.status.as_u16(),
            detail = problem.internal.as_deref().unwrap_or(&problem.detail),
            "request failed"
        );
    }
    let Some(attempt) = slot.get() else { return };
    let audit = problem.kind.is_denial() || (attempt.mutating && problem.kind.is_invalid_input());
    if !audit {
        return;
    }
    let mut detail = serde_json::json!({
        "status": problem.status.as_u16(),
        "reason": problem.detail,
    });
    if let Some(f) = &problem.field {
        detail["field"] = serde_json::Value::String(f.clone());
    }
    let event = AuditEvent {
        action: attempt.action.to_string(),
        resource: attempt.resource.clone(),
        outcome: problem.kind.audit_outcome().to_string(),
        detail,
    };
    // Awaited rather than spawned: a flood of refused requests then slows its sender instead of
    // queueing unbounded work.
    if let Err(e) = state.store.audit_append(&attempt.ctx, event).await {
        tracing::warn!(%request_id, error = %e, "could not audit a refused request");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_only_when_plain() {
        let mut h = HeaderMap::new();
        assert_eq!(incoming_request_id(&h), None);
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123_x.y:z"));
        assert_eq!(incoming_request_id(&h).as_deref(), Some("abc-123_x.y:z"));
        h.insert(REQUEST_ID, HeaderValue::from_static("a b"));
        assert_eq!(incoming_request_id(&h), None);
        h.insert(REQUEST_ID, HeaderValue::from_str(&"a".repeat(129)).unwrap());
        assert_eq!(incoming_request_id(&h), None);
    }
}
