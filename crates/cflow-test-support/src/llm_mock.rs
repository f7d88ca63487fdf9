//! A fake model server for tests: an axum server on `127.0.0.1:0` that answers
//! `POST /v1/messages` (Anthropic Messages, `?beta=true` too, as the Claude Code CLI sends it)
//! and `POST /v1/chat/completions` (OpenAI; also Azure's deployment path) by streaming a queue
//! of scripted turns in each wire format, records every request, and counts the streams that
//! the client closed before their end.
//!
//! One queue serves both endpoints: each request takes the next turn and renders it in the
//! format of the endpoint it came to. An empty queue answers 500 "no scripted turn left".

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};

/// Token counts a turn reports. OpenAI's `prompt_tokens` is rendered as
/// `input_tokens + cache_read_tokens` (it includes cached tokens); it has no cache writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MockUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
}

impl Default for MockUsage {
    fn default() -> Self {
        MockUsage {
            input_tokens: 10,
            output_tokens: 5,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
        }
    }
}

/// One content block of a scripted answer.
#[derive(Debug, Clone)]
pub enum Part {
    Text(String),
    ToolUse {
        name: String,
        input: Value,
    },
    /// A tool call whose argument string is sent verbatim, valid JSON or not.
    RawToolUse {
        name: String,
        json: String,
    },
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Turn {
    Text(String),
    ToolUse {
        name: String,
        input: Value,
    },
    /// Several blocks in one answer (text then tool calls, parallel tool calls, raw JSON).
    Parts(Vec<Part>),
    /// An HTTP error. An empty `body` becomes the format's error JSON for the status
    /// (Anthropic `overloaded_error` for 529, `rate_limit_error` for 429, ...).
    Status {
        code: u16,
        retry_after: Option<u64>,
        body: String,
    },
    /// Starts a stream, then sends an error event (`{"type":"error",…}` / `data: {"error":…}`)
    /// and closes, as a provider overloaded mid-answer does.
    StreamError {
        kind: String,
        message: String,
    },
    /// Streams part of a text answer, then ends the body without the final events.
    Truncated,
    /// Streams part of a text answer, then aborts the connection mid-body (no end of the
    /// chunked body, as when a proxy or the provider drops the connection).
    Dropped,
    /// Streams part of a text answer, then an event whose `data:` is not JSON, then keeps the
    /// connection open: a client that waited for the end of the stream would hang.
    Malformed,
    /// Sends the response headers, then nothing, forever.
    Hang,
    /// Waits `delay` before each chunk of `turn`.
    Slow {
        delay: Duration,
        turn: Box<Turn>,
    },
    /// `turn` with these usage numbers.
    WithUsage {
        usage: MockUsage,
        turn: Box<Turn>,
    },
}

impl Turn {
    pub fn text(text: impl Into<String>) -> Turn {
        Turn::Text(text.into())
    }

    pub fn tool_use(name: impl Into<String>, input: Value) -> Turn {
        Turn::ToolUse {
            name: name.into(),
            input,
        }
    }

    pub fn status(code: u16) -> Turn {
        Turn::Status {
            code,
            retry_after: None,
            body: String::new(),
        }
    }

    /// HTTP 429 with `retry-after: secs`.
    pub fn rate_limited(secs: u64) -> Turn {
        Turn::Status {
            code: 429,
            retry_after: Some(secs),
            body: String::new(),
        }
    }

    /// HTTP 529 with Anthropic's `overloaded_error` body.
    pub fn overloaded() -> Turn {
        Turn::status(529)
    }

    pub fn slow(self, delay: Duration) -> Turn {
        Turn::Slow {
            delay,
            turn: Box::new(self),
        }
    }

    pub fn with_usage(self, usage: MockUsage) -> Turn {
        Turn::WithUsage {
            usage,
            turn: Box::new(self),
        }
    }
}

/// A request the mock received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The JSON body (`Value::String` of the raw text when it was not JSON).
    pub body: Value,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The key from `x-api-key`, `Authorization: Bearer` or Azure's `api-key`, whichever came.
    pub fn api_key(&self) -> Option<&str> {
        self.header("x-api-key")
            .or_else(|| {
                self.header("authorization")
                    .and_then(|a| a.strip_prefix("Bearer "))
            })
            .or_else(|| self.header("api-key"))
    }
}

#[derive(Default)]
struct Inner {
    turns: Mutex<VecDeque<Turn>>,
    requests: Mutex<Vec<RecordedRequest>>,
    required_key: Mutex<Option<String>>,
    disconnects: AtomicUsize,
    completed: AtomicUsize,
    ids: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running mock; the server stops when this is dropped.
pub struct MockLlm {
    addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Anthropic,
    OpenAi,
}

impl MockLlm {
    pub async fn start() -> MockLlm {
        Self::with_turns(Vec::new()).await
    }

    pub async fn with_turns(turns: impl IntoIterator<Item = Turn>) -> MockLlm {
        let inner = Arc::new(Inner::default());
        lock(&inner.turns).extend(turns);
        let app = Router::new()
            .route("/v1/messages", post(anthropic))
            .route("/v1/messages/count_tokens", post(count_tokens))
            .route("/v1/chat/completions", post(openai))
            .route(
                "/openai/deployments/{deployment}/chat/completions",
                post(openai),
            )
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the mock model server");
        let addr = listener.local_addr().expect("mock address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockLlm { addr, inner, task }
    }

    pub fn push(&self, turn: Turn) {
        lock(&self.inner.turns).push_back(turn);
    }

    /// Requests must carry this key (in any of the accepted headers), else they get a 401.
    pub fn require_api_key(&self, key: impl Into<String>) {
        *lock(&self.inner.required_key) = Some(key.into());
    }

    /// The Anthropic base URL (`ANTHROPIC_BASE_URL`): `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The OpenAI base URL (`OPENAI_BASE_URL`): `http://127.0.0.1:PORT/v1`.
    pub fn openai_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.requests).clone()
    }

    pub fn request_count(&self) -> usize {
        lock(&self.inner.requests).len()
    }

    pub fn remaining_turns(&self) -> usize {
        lock(&self.inner.turns).len()
    }

    /// Streams the client closed before the mock finished sending them.
    pub fn disconnects(&self) -> usize {
        self.inner.disconnects.load(Ordering::SeqCst)
    }

    /// Streams the mock sent to their end (truncated ones included).
    pub fn completed_streams(&self) -> usize {
        self.inner.completed.load(Ordering::SeqCst)
    }
}

async fn anthropic(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(inner, Format::Anthropic, uri, headers, body)
}

async fn openai(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(inner, Format::OpenAi, uri, headers, body)
}

async fn count_tokens(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&inner, &uri, &headers, &body);
    json_response(200, &json!({"input_tokens": 100}))
}

fn record(inner: &Inner, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> RecordedRequest {
    let body = serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
    let rec = RecordedRequest {
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        headers: headers.clone(),
        body,
    };
    lock(&inner.requests).push(rec.clone());
    rec
}

fn serve(inner: Arc<Inner>, format: Format, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let rec = record(&inner, &uri, &headers, &body);
    if let Some(required) = lock(&inner.required_key).clone()
        && rec.api_key() != Some(required.as_str())
    {
        return error_response(format, 401, None, "");
    }
    let Some(turn) = lock(&inner.turns).pop_front() else {
        return error_response(format, 500, None, "mock: no scripted turn left");
    };
    let mut delay = Duration::ZERO;
    let mut usage = MockUsage::default();
    let mut turn = turn;
    let turn = loop {
        match turn {
            Turn::Slow { delay: d, turn: t } => {
                delay = d;
                turn = *t;
            }
            Turn::WithUsage { usage: u, turn: t } => {
                usage = u;
                turn = *t;
            }
            other => break other,
        }
    };
    let model = rec.body["model"]
        .as_str()
        .unwrap_or("mock-model")
        .to_string();
    let include_usage = rec.body["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let n = inner.ids.fetch_add(1, Ordering::SeqCst);
    let r = Render {
        format,
        model,
        usage,
        n,
        include_usage,
    };
    let (frames, after) = match turn {
        Turn::Status {
            code,
            retry_after,
            body,
        } => return error_response(format, code, retry_after, &body),
        Turn::Text(t) => (r.frames(&[Part::Text(t)], End::Complete), After::Close),
        Turn::ToolUse { name, input } => (
            r.frames(&[Part::ToolUse { name, input }], End::Complete),
            After::Close,
        ),
        Turn::Parts(parts) => (r.frames(&parts, End::Complete), After::Close),
        Turn::StreamError { kind, message } => {
            (r.frames(&[], End::Error(kind, message)), After::Close)
        }
        Turn::Truncated => (r.cut_off(), After::Close),
        Turn::Dropped => (r.cut_off(), After::Abort),
        Turn::Malformed => {
            let mut f = r.cut_off();
            f.push(match format {
                Format::Anthropic => "event: content_block_delta\ndata: {\"type\": \
                    \"content_block_delta\", \"index\": 0, \"delta\": {\"text\": \"cut\n\n"
                    .to_string(),
                Format::OpenAi => "data: {\"id\": \"chatcmpl-mock\", \"choices\": [{\"delta\": \
                    {\"content\": \"cut\n\n"
                    .to_string(),
            });
            (f, After::Hang)
        }
        Turn::Hang => (Vec::new(), After::Hang),
        Turn::Slow { .. } | Turn::WithUsage { .. } => unreachable!("unwrapped above"),
    };
    stream_response(inner, frames, delay, after)
}

/// What the mock does once a stream's frames are sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    /// Ends the body.
    Close,
    /// Keeps the connection open without sending anything, forever.
    Hang,
    /// Fails the body, so the server aborts the connection without ending it.
    Abort,
}

struct Guard {
    inner: Arc<Inner>,
    finished: bool,
}

impl Guard {
    fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let counter = if self.finished {
            &self.inner.completed
        } else {
            &self.inner.disconnects
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

struct Playing {
    frames: VecDeque<String>,
    delay: Duration,
    after: After,
    guard: Guard,
}

fn stream_response(
    inner: Arc<Inner>,
    frames: Vec<String>,
    delay: Duration,
    after: After,
) -> Response {
    let state = Playing {
        frames: frames.into(),
        delay,
        after,
        guard: Guard {
            inner,
            finished: false,
        },
    };
    // The guard lives in the stream's state: when the client closes the connection, hyper
    // drops the body and the guard counts a disconnect.
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if let Some(frame) = st.frames.pop_front() {
            if !st.delay.is_zero() {
                tokio::time::sleep(st.delay).await;
            }
            // Once the last frame is handed over, a client that closes without waiting for the
            // end of the body has read everything: that is a completed stream, not a disconnect.
            if st.frames.is_empty() && st.after != After::Hang {
                st.guard.finish();
            }
            return Some((Ok::<_, std::io::Error>(Bytes::from(frame)), st));
        }
        match st.after {
            After::Hang => std::future::pending::<()>().await,
            After::Abort => {
                // hyper discards what it has not written yet when the body fails: give it a
                // moment to flush the frames, so the client sees the headers and a partial body.
                tokio::time::sleep(Duration::from_millis(100)).await;
                // Ends the stream after this error: hyper closes the connection mid-body.
                st.after = After::Close;
                st.guard.finish();
                let e = std::io::Error::other("mock: connection dropped mid-stream");
                return Some((Err(e), st));
            }
            After::Close => {}
        }
        st.guard.finish();
        None
    });
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .expect("mock stream response")
}

fn json_response(code: u16, body: &Value) -> Response {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("mock json response")
}

fn error_response(format: Format, code: u16, retry_after: Option<u64>, body: &str) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = if body.is_empty() || !body.trim_start().starts_with('{') {
        let (kind, default_msg) = match code {
            400 => ("invalid_request_error", "invalid request"),
            401 => ("authentication_error", "invalid x-api-key"),
            403 => ("permission_error", "permission denied"),
            404 => ("not_found_error", "not found"),
            429 => ("rate_limit_error", "rate limited"),
            529 | 503 => ("overloaded_error", "Overloaded"),
            _ => ("api_error", "internal server error"),
        };
        let msg = if body.is_empty() { default_msg } else { body };
        match format {
            Format::Anthropic => {
                json!({"type": "error", "error": {"type": kind, "message": msg}}).to_string()
            }
            Format::OpenAi => {
                json!({"error": {"message": msg, "type": kind, "code": null}}).to_string()
            }
        }
    } else {
        body.to_string()
    };
    let mut resp = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    if let Some(secs) = retry_after {
        resp = resp.header("retry-after", secs.to_string());
    }
    resp.body(Body::from(body)).expect("mock error response")
}

enum End {
    Complete,
    Truncated,
    Error(String, String),
}

struct Render {
    format: Format,
    model: String,
    usage: MockUsage,
    n: u64,
    include_usage: bool,
}

/// Splits a string into pieces of at most `n` characters, so deltas arrive in several chunks.
fn pieces(s: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    chars.chunks(n.max(1)).map(|c| c.iter().collect()).collect()
}

fn sse(event: &str, data: &Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

fn data(v: &Value) -> String {
    format!("data: {v}\n\n")
}

impl Render {
    /// The start of a text answer, without its end.
    fn cut_off(&self) -> Vec<String> {
        self.frames(
            &[Part::Text("This answer is cut off in the mid".into())],
            End::Truncated,
        )
    }

    fn frames(&self, parts: &[Part], end: End) -> Vec<String> {
        match self.format {
            Format::Anthropic => self.anthropic(parts, end),
            Format::OpenAi => self.openai(parts, end),
        }
    }

    fn anthropic(&self, parts: &[Part], end: End) -> Vec<String> {
        let u = self.usage;
        let mut f = vec![sse(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": format!("msg_mock_{}", self.n), "type": "message", "role": "assistant",
                "model": self.model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": u.input_tokens, "cache_creation_input_tokens": u.cache_write_tokens,
                          "cache_read_input_tokens": u.cache_read_tokens, "output_tokens": 1},
            }}),
        )];
        if let End::Error(kind, message) = &end {
            f.push(sse(
                "error",
                &json!({"type": "error", "error": {"type": kind, "message": message}}),
            ));
            return f;
        }
        f.push(sse("ping", &json!({"type": "ping"})));
        let mut tool = false;
        for (i, part) in parts.iter().enumerate() {
            match part {
                Part::Text(t) => {
                    f.push(sse(
                        "content_block_start",
                        &json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}),
                    ));
                    for p in pieces(t, 8) {
                        f.push(sse(
                            "content_block_delta",
                            &json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": p}}),
                        ));
                    }
                }
                Part::ToolUse { name, .. } | Part::RawToolUse { name, .. } => {
                    tool = true;
                    let json = match part {
                        Part::ToolUse { input, .. } => input.to_string(),
                        Part::RawToolUse { json, .. } => json.clone(),
                        Part::Text(_) => unreachable!(),
                    };
                    f.push(sse(
                        "content_block_start",
                        &json!({"type": "content_block_start", "index": i, "content_block": {
                            "type": "tool_use", "id": format!("toolu_mock_{}_{i}", self.n), "name": name, "input": {}}}),
                    ));
                    let mut ps = pieces(&json, 10);
                    ps.insert(0, String::new());
                    for p in ps {
                        f.push(sse(
                            "content_block_delta",
                            &json!({"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": p}}),
                        ));
                    }
                }
            }
            if matches!(end, End::Truncated) {
                return f;
            }
            f.push(sse(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": i}),
            ));
        }
        let stop = if tool { "tool_use" } else { "end_turn" };
        f.push(sse(
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
                    "usage": {"output_tokens": u.output_tokens}}),
        ));
        f.push(sse("message_stop", &json!({"type": "message_stop"})));
        f
    }

    fn openai(&self, parts: &[Part], end: End) -> Vec<String> {
        let id = format!("chatcmpl-mock-{}", self.n);
        let chunk = |delta: Value, finish: Value| {
            data(
                &json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
            )
        };
        let mut f = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        if let End::Error(kind, message) = &end {
            f.push(data(
                &json!({"error": {"message": message, "type": kind, "code": null}}),
            ));
            return f;
        }
        let mut tools = 0;
        for part in parts {
            match part {
                Part::Text(t) => {
                    for p in pieces(t, 8) {
                        f.push(chunk(json!({"content": p}), Value::Null));
                    }
                }
                Part::ToolUse { name, .. } | Part::RawToolUse { name, .. } => {
                    let json = match part {
                        Part::ToolUse { input, .. } => input.to_string(),
                        Part::RawToolUse { json, .. } => json.clone(),
                        Part::Text(_) => unreachable!(),
                    };
                    let index = tools;
                    tools += 1;
                    f.push(chunk(
                        json!({"tool_calls": [{"index": index, "id": format!("call_mock_{}_{index}", self.n),
                            "type": "function", "function": {"name": name, "arguments": ""}}]}),
                        Value::Null,
                    ));
                    for p in pieces(&json, 10) {
                        f.push(chunk(
                            json!({"tool_calls": [{"index": index, "function": {"arguments": p}}]}),
                            Value::Null,
                        ));
                    }
                }
            }
        }
        if matches!(end, End::Truncated) {
            return f;
        }
        let finish = if tools > 0 { "tool_calls" } else { "stop" };
        f.push(chunk(json!({}), json!(finish)));
        if self.include_usage {
            let u = self.usage;
            f.push(data(&json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": self.model,
                "choices": [], "usage": {
                    "prompt_tokens": u.input_tokens + u.cache_read_tokens,
                    "completion_tokens": u.output_tokens,
                    "total_tokens": u.input_tokens + u.cache_read_tokens + u.output_tokens,
                    "prompt_tokens_details": {"cached_tokens": u.cache_read_tokens}}})));
        }
        f.push("data: [DONE]\n\n".to_string());
        f
    }
}
