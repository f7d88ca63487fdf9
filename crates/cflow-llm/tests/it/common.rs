//! Helpers shared by the tests: provider configs pointing at a mock, requests, event capture.

use std::time::Duration;

use cflow_llm::{
    Event, Message, ProviderConfig, ProviderKind, Request, RetryPolicy, Timeouts, ToolDef,
};
use cflow_test_support::llm_mock::MockLlm;
use serde_json::json;
use tokio::sync::mpsc;

pub const KEY: &str = "sk-test-SECRET-7f3a9c21";

/// A config for `kind` at the mock, with timeouts short enough that a broken test fails fast.
pub fn config(kind: ProviderKind, mock: &MockLlm, name: &str) -> ProviderConfig {
    let base = match kind {
        ProviderKind::Anthropic => mock.url(),
        ProviderKind::OpenAi => mock.openai_url(),
    };
    let mut c = ProviderConfig::new(name, kind, base, "mock-model").with_api_key(KEY);
    c.timeouts = Timeouts {
        connect: Duration::from_secs(2),
        first_token: Duration::from_secs(5),
        total: Duration::from_secs(20),
    };
    c
}

pub fn request(text: &str) -> Request {
    Request {
        model: String::new(),
        system: "You are a careful coding agent.".into(),
        messages: vec![Message::user(text)],
        tools: tools(),
        max_tokens: 1024,
        temperature: Some(0.0),
    }
}

pub fn tools() -> Vec<ToolDef> {
    vec![
        ToolDef {
            name: "read_file".into(),
            description: "Read a file of the workspace".into(),
            input_schema: json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}),
        },
        ToolDef {
            name: "edit".into(),
            description: "Replace a file's text".into(),
            input_schema: json!({"type": "object", "properties": {"path": {"type": "string"}, "text": {"type": "string"}}}),
        },
    ]
}

/// Retries that wait milliseconds, not seconds.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_retry_after: Duration::from_secs(10),
    }
}

pub fn channel() -> (mpsc::Sender<Event>, mpsc::Receiver<Event>) {
    mpsc::channel(4096)
}

pub fn drain(rx: &mut mpsc::Receiver<Event>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        out.push(ev);
    }
    out
}

/// Polls `f` until it holds or the deadline passes.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A port with nothing listening on it.
pub async fn refused_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}
