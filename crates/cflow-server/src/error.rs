//! The one error type of every handler, [`ApiError`], rendered as RFC 9457 problem+json, and the
//! single place where store errors become HTTP statuses.
//!
//! A handler does not know its request id, so [`ApiError::into_response`] attaches the
//! [`Problem`] to the response's extensions and the edge middleware (`crate::edge`) writes the
//! final body with the request id, logs 5xx detail and audits denials.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cflow_core::ValidationError;
use serde::Serialize;
use utoipa::ToSchema;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The kinds of problem the API reports; each has a stable `urn:cflow:problem:<slug>` type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    BadRequest,
    Unauthenticated,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Timeout,
    Conflict,
    PreconditionFailed,
    PayloadTooLarge,
    UnsupportedMediaType,
    Validation,
    RateLimited,
    Internal,
    Unavailable,
}

impl ProblemKind {
    pub fn status(self) -> StatusCode {
        match self {
            ProblemKind::BadRequest => StatusCode::BAD_REQUEST,
            ProblemKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ProblemKind::Forbidden => StatusCode::FORBIDDEN,
            ProblemKind::NotFound => StatusCode::NOT_FOUND,
            ProblemKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProblemKind::Timeout => StatusCode::REQUEST_TIMEOUT,
            ProblemKind::Conflict => StatusCode::CONFLICT,
            ProblemKind::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            ProblemKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProblemKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProblemKind::Validation => StatusCode::UNPROCESSABLE_ENTITY,
            ProblemKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ProblemKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ProblemKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The full problem type URI.
    pub fn type_uri(self) -> &'static str {
        match self {
            ProblemKind::BadRequest => "urn:cflow:problem:bad-request",
            ProblemKind::Unauthenticated => "urn:cflow:problem:unauthenticated",
            ProblemKind::Forbidden => "urn:cflow:problem:forbidden",
            ProblemKind::NotFound => "urn:cflow:problem:not-found",
            ProblemKind::MethodNotAllowed => "urn:cflow:problem:method-not-allowed",
            ProblemKind::Timeout => "urn:cflow:problem:timeout",
            ProblemKind::Conflict => "urn:cflow:problem:conflict",
            ProblemKind::PreconditionFailed => "urn:cflow:problem:precondition-failed",
            ProblemKind::PayloadTooLarge => "urn:cflow:problem:payload-too-large",
            ProblemKind::UnsupportedMediaType => "urn:cflow:problem:unsupported-media-type",
            ProblemKind::Validation => "urn:cflow:problem:validation",
            ProblemKind::RateLimited => "urn:cflow:problem:rate-limited",
            ProblemKind::Internal => "urn:cflow:problem:internal",
            ProblemKind::Unavailable => "urn:cflow:problem:unavailable",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            ProblemKind::BadRequest => "Bad request",
            ProblemKind::Unauthenticated => "Authentication required",
            ProblemKind::Forbidden => "Forbidden",
            ProblemKind::NotFound => "Not found",
            ProblemKind::MethodNotAllowed => "Method not allowed",
            ProblemKind::Timeout => "Request timed out",
            ProblemKind::Conflict => "Conflict",
            ProblemKind::PreconditionFailed => "Precondition failed",
            ProblemKind::PayloadTooLarge => "Payload too large",
            ProblemKind::UnsupportedMediaType => "Unsupported media type",
            ProblemKind::Validation => "Invalid request",
            ProblemKind::RateLimited => "Too many requests",
            ProblemKind::Internal => "Internal server error",
            ProblemKind::Unavailable => "Service unavailable",
        }
    }

    /// The kind for a bare status that some layer produced without a problem (for example
    /// hyper's or tower's own rejections), so that clients still get problem+json.
    pub fn for_status(status: StatusCode) -> ProblemKind {
        match status.as_u16() {
            401 => ProblemKind::Unauthenticated,
            403 => ProblemKind::Forbidden,
            404 => ProblemKind::NotFound,
            405 => ProblemKind::MethodNotAllowed,
            408 => ProblemKind::Timeout,
            409 => ProblemKind::Conflict,
            412 => ProblemKind::PreconditionFailed,
            413 => ProblemKind::PayloadTooLarge,
            415 => ProblemKind::UnsupportedMediaType,
            422 => ProblemKind::Validation,
            429 => ProblemKind::RateLimited,
            503 => ProblemKind::Unavailable,
            s if s >= 500 => ProblemKind::Internal,
            _ => ProblemKind::BadRequest,
        }
    }

    /// Whether this answer refuses the caller (and is therefore audited on every route).
    pub fn is_denial(self) -> bool {
        matches!(
            self,
            ProblemKind::Unauthenticated | ProblemKind::Forbidden | ProblemKind::RateLimited
        )
    }

    /// Whether this answer rejects the request's input (audited on mutating routes).
    pub fn is_invalid_input(self) -> bool {
        matches!(
            self,
            ProblemKind::BadRequest
                | ProblemKind::Validation
                | ProblemKind::PayloadTooLarge
                | ProblemKind::UnsupportedMediaType
        )
    }

    /// The audit `outcome` for a denied or rejected request.
    pub fn audit_outcome(self) -> &'static str {
        match self {
            ProblemKind::Unauthenticated => "unauthenticated",
            ProblemKind::Forbidden => "forbidden",
            ProblemKind::RateLimited => "rate_limited",
            _ => "invalid",
        }
    }
}

/// Everything known about a failed request; travels in the response extensions to the edge.
#[derive(Debug, Clone)]
pub struct Problem {
    pub kind: ProblemKind,
    /// Usually `kind.status()`; differs only for bare statuses mapped by [`ProblemKind::for_status`].
    pub status: StatusCode,
    pub detail: String,
    pub field: Option<String>,
    /// For 412: the live version, `Some(None)` when the entry does not exist.
    pub current_version: Option<Option<i64>>,
    /// For 429: whole seconds until a retry can succeed.
    pub retry_after_secs: Option<u64>,
    /// Server-side detail of a 5xx: logged with the request id, never sent.
    pub internal: Option<String>,
}

/// The problem+json body (RFC 9457).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemResponse {
    /// `urn:cflow:problem:<slug>`.
    #[serde(rename = "type")]
    pub type_: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// Correlates the answer with the server log and the audit ledger.
    pub request_id: Option<String>,
    /// The request field, parameter or header that was wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// On 412: the live version of the entry, or null when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>)]
    pub current_version: Option<Option<i64>>,
}

impl Problem {
    /// The body, with the request id known only at the edge.
    pub fn body(&self, request_id: Option<&str>) -> Vec<u8> {
        let body = ProblemResponse {
            type_: self.kind.type_uri(),
            title: self.kind.title(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            request_id: request_id.map(str::to_owned),
            field: self.field.clone(),
            current_version: self.current_version,
        };
        serde_json::to_vec(&body).expect("serialising a problem cannot fail")
    }
}

/// A failed request. Boxed so that `Result<T, ApiError>` stays small on the success path.
#[derive(Debug)]
pub struct ApiError(pub Box<Problem>);

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        ApiError(Box::new(Problem {
            kind,
            status: kind.status(),
            detail: detail.into(),
            field: None,
            current_version: None,
            retry_after_secs: None,
            internal: None,
        }))
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.0.field = Some(field.into());
        self
    }

    pub fn bad_request(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(ProblemKind::BadRequest, detail).with_field(field)
    }

    pub fn validation(e: ValidationError) -> Self {
        Self::new(ProblemKind::Validation, e.to_string()).with_field(e.field)
    }

    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        Self::new(ProblemKind::Unauthenticated, detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(ProblemKind::Forbidden, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(ProblemKind::NotFound, detail)
    }

    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self::rate_limited_because("rate limit exceeded", retry_after_secs)
    }

    /// A 429 whose detail starts with `why`.
    pub fn rate_limited_because(why: &str, retry_after_secs: u64) -> Self {
        let mut e = Self::new(
            ProblemKind::RateLimited,
            format!("{why}; retry after {retry_after_secs} s"),
        );
        e.0.retry_after_secs = Some(retry_after_secs);
        e
    }

    /// A 500 whose `detail` goes to the log only.
    pub fn internal(internal: impl Into<String>) -> Self {
        let mut e = Self::new(
            ProblemKind::Internal,
            "the server failed to answer; quote the request id when reporting it",
        );
        e.0.internal = Some(internal.into());
        e
    }

    pub fn kind(&self) -> ProblemKind {
        self.0.kind
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::validation(e)
    }
}

/// The one mapping from store errors to HTTP. Database text never reaches a client.
impl From<cflow_store::Error> for ApiError {
    fn from(e: cflow_store::Error) -> Self {
        use cflow_store::Error as E;
        match e {
            E::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            E::Conflict(what) => {
                ApiError::new(ProblemKind::Conflict, format!("{what} already exists"))
            }
            E::PreconditionFailed { current } => {
                let detail = match current {
                    Some(v) => format!("the entry is at version {v}"),
                    None => "the entry does not exist".to_string(),
                };
                let mut err = ApiError::new(ProblemKind::PreconditionFailed, detail);
                err.0.current_version = Some(current);
                err
            }
            E::Invalid(v) => ApiError::validation(v),
            E::InvalidCursor => ApiError::bad_request(
                "cursor",
                "cursor is not valid for this listing; start again without a cursor",
            ),
            E::Closed => ApiError::new(
                ProblemKind::Unavailable,
                "the server is shutting down; retry on another node or later",
            ),
            e @ (E::State(_) | E::StaleEpoch { .. }) => {
                ApiError::new(ProblemKind::Conflict, e.to_string())
            }
            other => ApiError::internal(format!("store: {other}")),
        }
    }
}

/// The one mapping from scheduler errors to HTTP. A refusal is a 403, which the edge audits.
impl From<crate::sched::SchedError> for ApiError {
    fn from(e: crate::sched::SchedError) -> Self {
        use crate::sched::SchedError as E;
        match e {
            E::Store(e) => e.into(),
            E::Refused(why) => ApiError::forbidden(why),
            E::NotFound(what) => ApiError::not_found(what),
            E::Invalid(v) => ApiError::validation(v),
            E::Conflict(why) => ApiError::new(ProblemKind::Conflict, why),
            E::Budget(b) => crate::cost::budget_error(&b, crate::state::now_ms()),
            E::ShuttingDown => ApiError::new(
                ProblemKind::Unavailable,
                "the scheduler is shutting down; retry on another node or later",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = *self.0;
        let mut resp = (problem.status, problem.body(None)).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if problem.kind == ProblemKind::Unauthenticated {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = problem.retry_after_secs {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp.extensions_mut().insert(problem);
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_statuses_without_leaking_detail() {
        let e: ApiError = cflow_store::Error::Corrupt {
            what: "audit".into(),
            detail: "SELECT * FROM secrets".into(),
        }
        .into();
        assert_eq!(e.0.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.0.detail.contains("SELECT"));
        assert!(e.0.internal.as_deref().unwrap().contains("SELECT"));

        let e: ApiError = cflow_store::Error::PreconditionFailed { current: None }.into();
        assert_eq!(e.0.status, StatusCode::PRECONDITION_FAILED);
        let body: serde_json::Value = serde_json::from_slice(&e.0.body(Some("r1"))).unwrap();
        assert_eq!(body["current_version"], serde_json::Value::Null);
        assert!(body.as_object().unwrap().contains_key("current_version"));
        assert_eq!(body["request_id"], "r1");

        for (err, status) in [
            (cflow_store::Error::NotFound("key".into()), 404),
            (cflow_store::Error::Conflict("tenant".into()), 409),
            (cflow_store::Error::InvalidCursor, 400),
            (cflow_store::Error::Closed, 503),
        ] {
            assert_eq!(ApiError::from(err).0.status.as_u16(), status);
        }
    }

    #[test]
    fn scheduler_errors_map_to_statuses() {
        use crate::sched::SchedError as E;
        let refused: ApiError = E::Refused("the star topology forbids it".into()).into();
        assert_eq!(refused.kind(), ProblemKind::Forbidden);
        assert!(
            refused.kind().is_denial(),
            "a refusal is audited by the edge"
        );
        assert_eq!(refused.0.detail, "the star topology forbids it");
        let invalid: ApiError =
            E::Invalid(ValidationError::new("tasks[0].agent", "required")).into();
        assert_eq!(
            (invalid.0.status.as_u16(), invalid.0.field.as_deref()),
            (422, Some("tasks[0].agent"))
        );
        for (err, status) in [
            (E::NotFound("worker w".into()), 404),
            (E::Conflict("stopped".into()), 409),
            (E::ShuttingDown, 503),
            (E::Store(cflow_store::Error::Closed), 503),
            (
                E::Store(cflow_store::Error::StaleEpoch {
                    task_id: "t".into(),
                    epoch: 1,
                    current: Some(2),
                }),
                409,
            ),
        ] {
            assert_eq!(ApiError::from(err).0.status.as_u16(), status);
        }
    }
}
