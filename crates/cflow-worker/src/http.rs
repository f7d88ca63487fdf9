//! [`HttpLink`]: the worker protocol over HTTP/JSON (`/api/v1/workers/...`), for a remote
//! `cflow worker`. Failures are classified for the runtime; a problem+json `detail` from the
//! server is carried in the error.

use crate::link::{Artifact, Link, LinkError};
use cflow_agents::BoxFuture;
use cflow_agents::host::HostCall;
use cflow_agents::proto::{
    HostCallRequest, HostReply, PollRequest, PollResponse, Register, Registered, Report, ReportAck,
    ReportAcks, ReportBatch,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// How long any call but a poll may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// What a poll may take beyond its `wait_ms`: the round trip and a loaded server.
const POLL_MARGIN: Duration = Duration::from_secs(10);
/// How long an artifact upload may take: up to 64 MiB on a modest link.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// A [`Link`] to a cflow server over HTTP(S), authenticated with a bearer token (the token of an
/// API key of role `worker`).
#[derive(Clone)]
pub struct HttpLink {
    http: reqwest::Client,
    base: Url,
    token: String,
}

impl std::fmt::Debug for HttpLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("HttpLink")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl HttpLink {
    /// A link to the server at `base` (`http://host:7700`, or a URL with a path prefix).
    pub fn new(base: Url, token: impl Into<String>) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("cflow-worker/", env!("CARGO_PKG_VERSION")));
        if base.scheme() == "http" {
            // A plain-HTTP server needs no root certificates; loading them costs start-up time.
            builder = builder.tls_certs_only(Vec::new());
        }
        Ok(Self {
            http: builder.build()?,
            base,
            token: token.into(),
        })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    /// `<base>/api/v1/workers[/<id>[/<tail>]]`, the id as one percent-encoded segment.
    fn url(&self, worker_id: Option<&str>, tail: Option<&str>) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty().extend(["api", "v1", "workers"]);
            if let Some(id) = worker_id {
                segs.push(id);
            }
            if let Some(t) = tail {
                segs.push(t);
            }
        }
        url
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        self.http.request(method, url).bearer_auth(&self.token)
    }

    async fn call<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, LinkError> {
        let resp = check(req.send().await.map_err(transport)?).await?;
        let status = resp.status().as_u16();
        resp.json::<T>().await.map_err(|e| {
            if e.is_decode() {
                LinkError::Rejected {
                    status,
                    detail: format!("unexpected response body: {}", chain(&e)),
                }
            } else {
                transport(e)
            }
        })
    }
}

impl Link for HttpLink {
    fn register(&self, req: Register) -> BoxFuture<'_, Result<Registered, LinkError>> {
        Box::pin(async move {
            let url = self.url(None, None);
            self.call(self.request(Method::POST, url).json(&req)).await
        })
    }

    fn poll<'a>(
        &'a self,
        worker_id: &'a str,
        req: PollRequest,
    ) -> BoxFuture<'a, Result<PollResponse, LinkError>> {
        Box::pin(async move {
            let timeout = Duration::from_millis(req.wait_ms) + POLL_MARGIN;
            let url = self.url(Some(worker_id), Some("poll"));
            self.call(self.request(Method::POST, url).timeout(timeout).json(&req))
                .await
        })
    }

    fn report<'a>(
        &'a self,
        worker_id: &'a str,
        reports: Vec<Report>,
    ) -> BoxFuture<'a, Result<Vec<ReportAck>, LinkError>> {
        Box::pin(async move {
            let url = self.url(Some(worker_id), Some("reports"));
            let batch = ReportBatch { reports };
            let acks: ReportAcks = self
                .call(self.request(Method::POST, url).json(&batch))
                .await?;
            Ok(acks.acks)
        })
    }

    fn put_artifact<'a>(
        &'a self,
        worker_id: &'a str,
        task_id: &'a str,
        epoch: i64,
        artifact: &'a Artifact,
    ) -> BoxFuture<'a, Result<(), LinkError>> {
        Box::pin(async move {
            let mut url = self.url(Some(worker_id), Some("attempts"));
            if let Ok(mut segs) = url.path_segments_mut() {
                segs.extend([task_id, &epoch.to_string(), "artifacts"]);
            }
            url.query_pairs_mut()
                .append_pair("name", &artifact.name)
                .append_pair("kind", &artifact_kind(artifact));
            let req = self
                .request(Method::PUT, url)
                .timeout(UPLOAD_TIMEOUT)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(artifact.bytes.clone());
            check(req.send().await.map_err(transport)?).await.map(drop)
        })
    }

    fn host_call<'a>(
        &'a self,
        worker_id: &'a str,
        task_id: &'a str,
        epoch: i64,
        call: HostCall,
    ) -> BoxFuture<'a, Result<HostReply, LinkError>> {
        Box::pin(async move {
            let mut url = self.url(Some(worker_id), Some("attempts"));
            if let Ok(mut segs) = url.path_segments_mut() {
                segs.extend([task_id, &epoch.to_string(), "calls"]);
            }
            let body = HostCallRequest { call };
            self.call(self.request(Method::POST, url).json(&body)).await
        })
    }

    fn deregister<'a>(&'a self, worker_id: &'a str) -> BoxFuture<'a, Result<(), LinkError>> {
        Box::pin(async move {
            let url = self.url(Some(worker_id), None);
            let resp = self
                .request(Method::DELETE, url)
                .send()
                .await
                .map_err(transport)?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(()); // already gone
            }
            check(resp).await.map(drop)
        })
    }
}

/// An artifact's kind as the API names it (`patch`, `file`, `log`).
pub fn artifact_kind(artifact: &Artifact) -> String {
    match serde_json::to_value(artifact.kind) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "file".to_string(),
    }
}

/// Passes a success through; turns anything else into the matching [`LinkError`].
async fn check(resp: Response) -> Result<Response, LinkError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let detail = problem_detail(resp).await;
    Err(match status.as_u16() {
        401 => LinkError::Unauthorized(detail),
        403 => LinkError::Forbidden(detail),
        408 | 429 | 500..=599 => LinkError::Unavailable(format!("{status}: {detail}")),
        code => LinkError::Rejected {
            status: code,
            detail,
        },
    })
}

/// The `detail` of a problem+json body, else the body's start, else the status's reason.
async fn problem_detail(resp: Response) -> String {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
        if let Some(d) = v.get("detail").and_then(|d| d.as_str()) {
            return d.to_string();
        }
        if let Some(t) = v.get("title").and_then(|d| d.as_str()) {
            return t.to_string();
        }
    }
    let body = body.trim();
    if body.is_empty() {
        status.canonical_reason().unwrap_or("no detail").to_string()
    } else {
        body.chars().take(300).collect()
    }
}

/// A request that did not get an answer: connection refused, DNS, TLS, timeout, a reset.
fn transport(e: reqwest::Error) -> LinkError {
    let what = if e.is_timeout() {
        "timed out".to_string()
    } else {
        chain(&e)
    };
    LinkError::Unavailable(what)
}

/// An error with its causes (reqwest's own message alone is "error sending request").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
