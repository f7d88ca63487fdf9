//! One provider's client: builds the wire request, streams the response, enforces the
//! timeouts and cancellation, and maps HTTP statuses to `LlmError`.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::config::{ProviderConfig, ProviderKind};
use crate::error::{LlmError, Phase, Result};
use crate::sse::SseParser;
use crate::types::{Event, Request, Response};
use crate::{anthropic, openai};

/// The longest error body kept in an error message.
const MAX_ERROR_BODY: usize = 2048;

#[derive(Debug, Clone)]
pub struct Client {
    config: ProviderConfig,
    http: reqwest::Client,
}

enum Decoder {
    Anthropic(anthropic::Decoder),
    OpenAi(openai::Decoder),
}

impl Client {
    pub fn new(config: ProviderConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeouts.connect)
            .build()
            .map_err(|e| LlmError::Connect(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client { config, http })
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// Streams one model call and assembles its response. Events (text deltas, tool calls,
    /// usage) go to `events` as they arrive; a full or closed channel never fails the call.
    /// Cancelling `cancel` returns `Cancelled` at once and drops the connection, which tells
    /// the provider to stop generating.
    pub async fn complete(
        &self,
        req: &Request,
        events: Option<&mpsc::Sender<Event>>,
        cancel: &CancellationToken,
    ) -> Result<Response> {
        let start = Instant::now();
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(LlmError::Cancelled),
            r = timeout_at(start + self.config.timeouts.total, self.call(req, events, start)) => {
                r.unwrap_or(Err(LlmError::Timeout { phase: Phase::Total }))
            }
        };
        result.map_err(|e| self.scrub(e))
    }

    async fn call(
        &self,
        req: &Request,
        events: Option<&mpsc::Sender<Event>>,
        start: Instant,
    ) -> Result<Response> {
        let model = if req.model.is_empty() {
            &self.config.model
        } else {
            &req.model
        };
        let base = self.config.base_url.trim_end_matches('/');
        let (url, body, mut decoder) = match self.config.kind {
            ProviderKind::Anthropic => (
                format!("{base}/v1/messages"),
                anthropic::body(req, model),
                Decoder::Anthropic(Default::default()),
            ),
            ProviderKind::OpenAi => {
                let mut url = format!("{base}/chat/completions");
                if let Some(v) = &self.config.azure_api_version {
                    url.push_str("?api-version=");
                    url.push_str(v);
                }
                (
                    url,
                    openai::body(req, model),
                    Decoder::OpenAi(Default::default()),
                )
            }
        };
        let first_deadline = start + self.config.timeouts.first_token;
        let request = self
            .http
            .post(&url)
            .headers(self.headers()?)
            .json(&body)
            .send();
        let resp = timeout_at(first_deadline, request)
            .await
            .map_err(|_| LlmError::Timeout {
                phase: Phase::FirstToken,
            })?
            .map_err(map_reqwest)?;
        let status = resp.status();
        if !status.is_success() {
            let headers = resp.headers().clone();
            // The error body is small; the total timeout bounds a server that never finishes it.
            let text = resp.text().await.unwrap_or_default();
            return Err(status_error(status.as_u16(), &headers, &text));
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if content_type.starts_with("application/json") {
            return Err(LlmError::Stream(format!(
                "{url} answered with JSON instead of an event stream: the server does not support streaming"
            )));
        }
        let mut stream = resp.bytes_stream();
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        let mut seen_event = false;
        let mut ended = false;
        'read: loop {
            let next = if seen_event {
                stream.next().await
            } else {
                timeout_at(first_deadline, stream.next())
                    .await
                    .map_err(|_| LlmError::Timeout {
                        phase: Phase::FirstToken,
                    })?
            };
            let chunk = match next {
                None => {
                    ended = true;
                    break;
                }
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    return Err(LlmError::Stream(format!(
                        "reading the response failed: {}",
                        chain(&e)
                    )));
                }
            };
            for ev in parser.feed(&chunk) {
                seen_event = true;
                let done = match &mut decoder {
                    Decoder::Anthropic(d) => d.event(&ev, &mut out).map(|_| d.done),
                    Decoder::OpenAi(d) => d.event(&ev, &mut out).map(|_| d.done),
                }?;
                send(events, &mut out).await;
                if done {
                    break 'read;
                }
            }
        }
        if !ended {
            // The final event has arrived; give the end of the body a moment to arrive too, so
            // the connection goes back to the pool instead of being closed.
            let _ = tokio::time::timeout(Duration::from_millis(100), stream.next()).await;
        }
        let response = match decoder {
            Decoder::Anthropic(d) => d.finish(&mut out),
            Decoder::OpenAi(d) => d.finish(&mut out),
        }?;
        send(events, &mut out).await;
        Ok(response)
    }

    fn headers(&self) -> Result<HeaderMap> {
        let mut h = HeaderMap::new();
        h.insert("accept", HeaderValue::from_static("text/event-stream"));
        let key = self.config.api_key.as_deref().filter(|k| !k.is_empty());
        let bad_key = || {
            LlmError::BadRequest(
                "the API key contains characters not allowed in an HTTP header".into(),
            )
        };
        match self.config.kind {
            ProviderKind::Anthropic => {
                h.insert(
                    "anthropic-version",
                    HeaderValue::from_static(anthropic::VERSION),
                );
                if let Some(k) = key {
                    let mut v = HeaderValue::from_str(k).map_err(|_| bad_key())?;
                    v.set_sensitive(true);
                    h.insert("x-api-key", v);
                }
            }
            ProviderKind::OpenAi => {
                if let Some(k) = key {
                    let (name, value) = if self.config.azure_api_version.is_some() {
                        ("api-key", k.to_string())
                    } else {
                        ("authorization", format!("Bearer {k}"))
                    };
                    let mut v = HeaderValue::from_str(&value).map_err(|_| bad_key())?;
                    v.set_sensitive(true);
                    h.insert(name, v);
                }
            }
        }
        for (name, value) in &self.config.extra_headers {
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                LlmError::BadRequest(format!(
                    "extra header name {name:?} is not a valid HTTP header name"
                ))
            })?;
            let v = HeaderValue::from_str(value).map_err(|_| {
                LlmError::BadRequest(format!(
                    "extra header {name} has a value not allowed in HTTP"
                ))
            })?;
            h.insert(n, v);
        }
        Ok(h)
    }

    /// Removes the API key from any text an error carries (a proxy may echo request headers).
    fn scrub(&self, e: LlmError) -> LlmError {
        let Some(key) = self.config.api_key.as_deref().filter(|k| k.len() >= 4) else {
            return e;
        };
        let s = |t: String| t.replace(key, "[redacted]");
        match e {
            LlmError::Server { status, body } => LlmError::Server {
                status,
                body: s(body),
            },
            LlmError::Auth(t) => LlmError::Auth(s(t)),
            LlmError::BadRequest(t) => LlmError::BadRequest(s(t)),
            LlmError::Connect(t) => LlmError::Connect(s(t)),
            LlmError::Stream(t) => LlmError::Stream(s(t)),
            other => other,
        }
    }
}

async fn send(events: Option<&mpsc::Sender<Event>>, out: &mut Vec<Event>) {
    for ev in out.drain(..) {
        if let Some(tx) = events {
            // A dropped receiver means nobody watches the stream; the call still completes.
            let _ = tx.send(ev).await;
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn map_reqwest(e: reqwest::Error) -> LlmError {
    if e.is_connect() && e.is_timeout() {
        LlmError::Timeout {
            phase: Phase::Connect,
        }
    } else if e.is_timeout() {
        LlmError::Timeout {
            phase: Phase::Total,
        }
    } else {
        LlmError::Connect(chain(&e))
    }
}

/// `retry-after-ms` (sent by OpenAI) wins over `retry-after` in seconds. HTTP dates are not
/// honoured: the retry policy's own backoff applies instead.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let num = |name: &str| {
        h.get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && *n >= 0.0)
    };
    num("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| num("retry-after").map(Duration::from_secs_f64))
}

pub(crate) fn status_error(status: u16, headers: &HeaderMap, body: &str) -> LlmError {
    let retry_after = retry_after(headers);
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let err = json.as_ref().map(|j| &j["error"]);
    let kind = err
        .and_then(|e| e["type"].as_str().or(e["code"].as_str()))
        .unwrap_or("");
    let mut msg = err
        .and_then(|e| e["message"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| body.trim().to_string());
    if msg.len() > MAX_ERROR_BODY {
        msg = crate::assemble::preview(&msg);
    }
    if msg.is_empty() {
        msg = "(empty body)".into();
    }
    match status {
        _ if kind == "overloaded_error" || status == 529 || status == 503 => {
            LlmError::Overloaded { retry_after }
        }
        429 => LlmError::RateLimited { retry_after },
        401 | 403 => LlmError::Auth(format!("HTTP {status}: {msg}")),
        500..=599 => LlmError::Server { status, body: msg },
        _ => LlmError::BadRequest(format!("HTTP {status}: {msg}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn statuses_map_to_errors() {
        let none = HeaderMap::new();
        let overloaded =
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let e = status_error(529, &headers(&[("retry-after", "2")]), overloaded);
        assert!(
            matches!(e, LlmError::Overloaded { retry_after: Some(d) } if d == Duration::from_secs(2))
        );
        assert!(matches!(
            status_error(500, &none, overloaded),
            LlmError::Overloaded { .. }
        ));
        assert!(matches!(
            status_error(503, &none, ""),
            LlmError::Overloaded { retry_after: None }
        ));
        let e = status_error(
            429,
            &headers(&[("retry-after-ms", "1500"), ("retry-after", "9")]),
            "",
        );
        assert!(
            matches!(e, LlmError::RateLimited { retry_after: Some(d) } if d == Duration::from_millis(1500))
        );
        let e = status_error(
            429,
            &headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            "",
        );
        assert!(matches!(e, LlmError::RateLimited { retry_after: None }));
        assert!(matches!(status_error(401, &none, "{}"), LlmError::Auth(_)));
        assert!(matches!(status_error(403, &none, ""), LlmError::Auth(_)));
        let e = status_error(404, &none, r#"{"error":{"message":"model: nope"}}"#);
        assert!(
            matches!(&e, LlmError::BadRequest(m) if m == "HTTP 404: model: nope"),
            "{e:?}"
        );
        let e = status_error(502, &none, "<html>bad gateway</html>");
        assert!(
            matches!(&e, LlmError::Server { status: 502, body } if body == "<html>bad gateway</html>")
        );
        let e = status_error(500, &none, &"x".repeat(10_000));
        assert!(matches!(&e, LlmError::Server { body, .. } if body.len() < 300));
    }
}
