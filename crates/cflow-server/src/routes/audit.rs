//! The audit ledger: `GET /api/v1/audit` (own tenant; every tenant for a superadmin) and
//! `GET /api/v1/audit/verify` (walks the whole hash chain).

use super::time;
use crate::auth::{Caller, op};
use crate::error::{ApiError, ApiResult, ProblemResponse};
use crate::extract::{Query, page_limit};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use cflow_core::audit::{AuditEntry, Break};
use cflow_core::timefmt;
use cflow_store::{AuditQuery, PageRequest};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_audit))
        .routes(routes!(verify_audit))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditListParams {
    /// Only entries at or after this RFC 3339 time.
    pub since: Option<String>,
    pub cursor: Option<String>,
    /// 1–1000, default 100.
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryResponse {
    pub seq: i64,
    pub at: String,
    pub tenant_id: Option<String>,
    pub principal_id: Option<String>,
    /// For example `memory.write`.
    pub action: String,
    pub resource: String,
    /// `success`, or why not: `unauthenticated`, `forbidden`, `rate_limited`, `invalid`, …
    pub outcome: String,
    pub request_id: Option<String>,
    pub source: Option<String>,
    pub detail: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

impl From<AuditEntry> for AuditEntryResponse {
    fn from(e: AuditEntry) -> Self {
        Self {
            seq: e.seq,
            at: time(e.at),
            tenant_id: e.tenant_id,
            principal_id: e.principal_id,
            action: e.action,
            resource: e.resource,
            outcome: e.outcome,
            request_id: e.request_id,
            source: e.source,
            detail: e.detail,
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditListResponse {
    pub items: Vec<AuditEntryResponse>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChainBreakResponse {
    /// The first entry that does not fit the chain.
    pub seq: i64,
    /// `hash_mismatch`, `prev_hash_mismatch` or `seq_gap`.
    pub reason: String,
    pub expected: String,
    pub stored: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditVerifyResponse {
    pub intact: bool,
    /// Entries that verified before the first break (all of them when intact).
    pub verified: u64,
    pub first_break: Option<ChainBreakResponse>,
}

fn chain_break(seq: i64, b: Break) -> ChainBreakResponse {
    let (reason, expected, stored) = match b {
        Break::HashMismatch { expected, stored } => ("hash_mismatch", expected, stored),
        Break::PrevHashMismatch { expected, stored } => ("prev_hash_mismatch", expected, stored),
        Break::SeqGap { expected, found } => ("seq_gap", expected.to_string(), found.to_string()),
    };
    ChainBreakResponse {
        seq,
        reason: reason.to_string(),
        expected,
        stored,
    }
}

/// Ledger entries in order: the caller's tenant, or every tenant for a superadmin.
#[utoipa::path(
    get, path = "/api/v1/audit", tag = "audit",
    params(AuditListParams),
    responses(
        (status = 200, body = AuditListResponse),
        (status = 400, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list_audit(
    State(state): State<AppState>,
    caller: Caller<op::AuditRead>,
    Query(q): Query<AuditListParams>,
) -> ApiResult<Json<AuditListResponse>> {
    let since = match &q.since {
        None => None,
        Some(s) => Some(timefmt::parse_rfc3339(s).ok_or_else(|| {
            ApiError::bad_request(
                "since",
                "since must be an RFC 3339 time, for example 2030-01-31T12:00:00Z",
            )
        })?),
    };
    let query = AuditQuery {
        tenant_id: (!caller.is_superadmin()).then(|| caller.tenant_id().to_owned()),
        since,
    };
    let page = PageRequest {
        cursor: q.cursor,
        limit: page_limit(q.limit)?,
    };
    let page = state.store.audit_list(&query, &page).await?;
    Ok(Json(AuditListResponse {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Walk the whole hash chain and report the first entry that does not fit.
#[utoipa::path(
    get, path = "/api/v1/audit/verify", tag = "audit",
    responses(
        (status = 200, body = AuditVerifyResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn verify_audit(
    State(state): State<AppState>,
    _caller: Caller<op::AuditRead>,
) -> ApiResult<Json<AuditVerifyResponse>> {
    let report = state.store.audit_verify().await?;
    Ok(Json(AuditVerifyResponse {
        intact: report.first_break.is_none(),
        verified: report.verified,
        first_break: report.first_break.map(|(seq, b)| chain_break(seq, b)),
    }))
}
