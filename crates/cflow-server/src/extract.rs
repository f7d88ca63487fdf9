//! Request extractors that answer with problem+json naming the field at fault: a JSON body
//! ([`JsonBody`]), a query string ([`Query`]) and path parameters ([`PathParams`]), plus the
//! `If-Match` / `If-None-Match` headers. axum's own extractors answer in plain text.

use crate::error::{ApiError, ApiResult, ProblemKind};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header::{CONTENT_TYPE, IF_MATCH, IF_NONE_MATCH};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use cflow_store::Precondition;
use serde::de::DeserializeOwned;

/// A JSON request body. Must be declared last among a handler's arguments, after the
/// [`crate::auth::Caller`], so that an unauthenticated or forbidden request is refused before
/// its body is read.
pub struct JsonBody<T>(pub T);

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or_default().trim();
    let Some((ty, sub)) = essence.split_once('/') else {
        return false;
    };
    ty.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json")
            || sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case("+json"))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> ApiResult<Self> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                ProblemKind::UnsupportedMediaType,
                "the body must be JSON: send 'Content-Type: application/json'",
            )
            .with_field("content-type"));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    ProblemKind::PayloadTooLarge,
                    "the request body is larger than the server accepts (max_body_bytes)",
                )
            } else {
                ApiError::new(
                    ProblemKind::BadRequest,
                    format!("could not read the request body: {}", rejection.body_text()),
                )
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// The part of a serde message before serde_json's " at line L column C" suffix.
fn message(e: &impl std::fmt::Display) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The field an error is about: its path, extended by the name inside serde's
/// "missing field `x`" (whose path is the enclosing object; for "unknown field `x`" the path
/// already ends with it).
fn field_of(path: &serde_path_to_error::Path, msg: &str) -> String {
    let path = path.to_string();
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| msg.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    match (path.as_str(), named) {
        (p, Some(name)) if p == name || p.ends_with(&format!(".{name}")) => path,
        (".", Some(name)) => name.to_string(),
        (_, Some(name)) => format!("{path}.{name}"),
        (_, None) => path,
    }
}

/// Parses a JSON document; syntax errors are 400, well-formed JSON of the wrong shape is 422.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().clone();
        let inner = e.into_inner();
        if inner.is_data() {
            let msg = message(&inner);
            let field = field_of(&path, &msg);
            ApiError::new(ProblemKind::Validation, format!("{field}: {msg}")).with_field(field)
        } else {
            ApiError::new(ProblemKind::BadRequest, format!("malformed JSON: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::new(ProblemKind::BadRequest, format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// Query-string parameters; an unknown, missing or unparsable parameter is a 400 naming it.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> ApiResult<Self> {
        let q = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(Query)
            .map_err(|e| {
                let msg = message(e.inner());
                let field = field_of(e.path(), &msg);
                ApiError::bad_request(field.clone(), format!("query parameter {field}: {msg}"))
            })
    }
}

/// Path parameters, percent-decoded; undecodable ones are a 400.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> ApiResult<Self> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| PathParams(t))
            .map_err(|r| ApiError::bad_request("path", r.body_text()))
    }
}

/// Parses a page `limit` (1–1000, default 100).
pub fn page_limit(limit: Option<u32>) -> ApiResult<u32> {
    match limit {
        None => Ok(100),
        Some(n @ 1..=1000) => Ok(n),
        Some(n) => Err(ApiError::bad_request(
            "limit",
            format!("limit must be between 1 and 1000 (got {n})"),
        )),
    }
}

/// The strong entity tag of a version.
pub fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits and quotes are a valid header")
}

/// A version from an entity tag: `"3"` or `3`. Weak and wildcard tags are not versions.
pub fn parse_version_tag(raw: &str) -> Option<i64> {
    let t = raw.trim();
    let t = t
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(t);
    t.parse::<i64>().ok().filter(|v| *v >= 1)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> ApiResult<Option<&'a str>> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| {
            ApiError::bad_request(name.to_string(), format!("{name} is not valid text"))
        }),
    }
}

/// The compare-and-set condition of a write (`If-Match: "<version>"` or `If-None-Match: *`)
/// or, with `allow_absent = false`, of a delete (`If-Match` only).
pub fn precondition(headers: &HeaderMap, allow_absent: bool) -> ApiResult<Precondition> {
    let if_match = header_str(headers, IF_MATCH.as_str())?;
    let if_none = header_str(headers, IF_NONE_MATCH.as_str())?;
    match (if_match, if_none) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "if-none-match",
            "send either If-Match or If-None-Match, not both",
        )),
        (Some(m), None) => parse_version_tag(m)
            .map(Precondition::Version)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "if-match",
                    "If-Match must be one version as returned in ETag, for example \"3\"",
                )
            }),
        (None, Some(n)) if allow_absent && n.trim() == "*" => Ok(Precondition::Absent),
        (None, Some(_)) if allow_absent => Err(ApiError::bad_request(
            "if-none-match",
            "If-None-Match on a write must be '*' (write only if absent)",
        )),
        (None, Some(_)) => Err(ApiError::bad_request(
            "if-none-match",
            "If-None-Match is not supported here; use If-Match",
        )),
        (None, None) => Ok(Precondition::None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    fn err(json: &str) -> crate::error::Problem {
        *parse_json::<Body>(json.as_bytes()).unwrap_err().0
    }

    #[test]
    fn json_errors_name_the_field() {
        let p = err(r#"{"name": "a", "extra": 1}"#);
        assert_eq!(
            (p.kind, p.field.as_deref()),
            (ProblemKind::Validation, Some("extra"))
        );
        let p = err(r#"{"name": 5}"#);
        assert_eq!(p.field.as_deref(), Some("name"));
        let p = err(r#"{"name": "a", "inner": {"n": "x"}}"#);
        assert_eq!(p.field.as_deref(), Some("inner.n"));
        let p = err(r#"{"name": "a", "inner": {"m": 1}}"#);
        assert_eq!(p.field.as_deref(), Some("inner.m"));
        let p = err(r#"{}"#);
        assert_eq!(p.field.as_deref(), Some("name"));
        let p = err(r#"{"name": "#);
        assert_eq!(p.kind, ProblemKind::BadRequest);
        let p = err(r#"{"name": "a"} x"#);
        assert_eq!(p.kind, ProblemKind::BadRequest);
    }

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        for (ct, ok) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/merge-patch+json", true),
            ("text/plain", false),
            ("application/jsonx", false),
            ("application/+json", false),
        ] {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            assert_eq!(is_json(&h), ok, "{ct}");
        }
    }

    #[test]
    fn preconditions() {
        let mut h = HeaderMap::new();
        assert_eq!(precondition(&h, true).unwrap(), Precondition::None);
        h.insert(IF_MATCH, HeaderValue::from_static("\"4\""));
        assert_eq!(precondition(&h, true).unwrap(), Precondition::Version(4));
        h.insert(IF_MATCH, HeaderValue::from_static("W/\"4\""));
        assert!(precondition(&h, true).is_err());
        h.remove(IF_MATCH);
        h.insert(IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert_eq!(precondition(&h, true).unwrap(), Precondition::Absent);
        assert!(precondition(&h, false).is_err());
    }
}
