//! Cases that belong to one wire format: Anthropic prompt caching and the Claude Code CLI's
//! request shape, Azure OpenAI's addressing.

use cflow_llm::{Client, ProviderKind};
use cflow_test_support::llm_mock::{MockLlm, Turn};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::common::*;

#[tokio::test]
async fn anthropic_request_marks_system_and_last_tool_for_caching() {
    let mock = MockLlm::with_turns([Turn::text("ok")]).await;
    let client = Client::new(config(ProviderKind::Anthropic, &mock, "p")).unwrap();
    client
        .complete(&request("hi"), None, &CancellationToken::new())
        .await
        .unwrap();
    let body = &mock.requests()[0].body;
    let ephemeral = json!({"type": "ephemeral"});
    assert_eq!(body["system"][0]["type"], "text");
    assert_eq!(body["system"][0]["text"], "You are a careful coding agent.");
    assert_eq!(body["system"][0]["cache_control"], ephemeral);
    let tools = body["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 2);
    assert!(
        tools[0].get("cache_control").is_none(),
        "only the last tool ends the cached prefix"
    );
    assert_eq!(tools[1]["name"], "edit");
    assert_eq!(tools[1]["cache_control"], ephemeral);
    assert_eq!(tools[1]["input_schema"]["type"], "object");
    assert_eq!(body["max_tokens"], 1024);
    assert_eq!(body["model"], "mock-model");
}

/// The Claude Code CLI posts to `/v1/messages?beta=true` and may authenticate with a bearer
/// token; the mock must serve it like the SDK's requests.
#[tokio::test]
async fn mock_serves_claude_code_style_requests() {
    let mock = MockLlm::with_turns([Turn::text("hello from the mock")]).await;
    mock.require_api_key("cc-token");
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/v1/messages?beta=true", mock.url()))
        .header("authorization", "Bearer cc-token")
        .header("anthropic-version", "2023-06-01")
        .json(
            &json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    for event in [
        "message_start",
        "content_block_start",
        "text_delta",
        "message_delta",
        "message_stop",
    ] {
        assert!(
            text.contains(&format!("\"type\":\"{event}\"")),
            "missing {event} in {text}"
        );
    }
    assert!(text.contains("\"model\":\"claude-sonnet-4-5\""));
    let req = &mock.requests()[0];
    assert_eq!(req.query.as_deref(), Some("beta=true"));
    assert_eq!(req.api_key(), Some("cc-token"));

    // A wrong key is refused without using up a turn.
    let resp = http
        .post(format!("{}/v1/messages?beta=true", mock.url()))
        .header("x-api-key", "wrong")
        .json(&json!({"model": "m", "max_tokens": 1, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");
}

#[tokio::test]
async fn azure_openai_uses_api_key_header_and_api_version() {
    let mock = MockLlm::with_turns([Turn::text("azure says hi")]).await;
    let mut cfg = config(ProviderKind::OpenAi, &mock, "azure");
    cfg.base_url = format!("{}/openai/deployments/gpt-4o-prod/", mock.url());
    cfg.azure_api_version = Some("2024-10-21".into());
    let client = Client::new(cfg).unwrap();
    let resp = client
        .complete(&request("hi"), None, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(resp.text(), "azure says hi");
    let req = &mock.requests()[0];
    assert_eq!(req.path, "/openai/deployments/gpt-4o-prod/chat/completions");
    assert_eq!(req.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(req.header("api-key"), Some(KEY));
    assert_eq!(req.header("authorization"), None);
}

#[tokio::test]
async fn extra_headers_replace_defaults_and_are_redacted() {
    let mock = MockLlm::with_turns([Turn::text("ok")]).await;
    let mut cfg = config(ProviderKind::Anthropic, &mock, "p");
    cfg.extra_headers = vec![
        ("anthropic-version".into(), "2099-01-01".into()),
        ("anthropic-beta".into(), "prompt-caching-2024-07-31".into()),
    ];
    assert!(!format!("{cfg:?}").contains("prompt-caching"));
    let client = Client::new(cfg).unwrap();
    client
        .complete(&request("hi"), None, &CancellationToken::new())
        .await
        .unwrap();
    let req = &mock.requests()[0];
    assert_eq!(req.header("anthropic-version"), Some("2099-01-01"));
    assert_eq!(
        req.header("anthropic-beta"),
        Some("prompt-caching-2024-07-31")
    );
}
