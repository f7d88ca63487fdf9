//! Cases every wire format must pass; `main.rs` runs each once per format.

use std::time::{Duration, Instant};

use cflow_llm::{
    BreakerPolicy, BreakerStatus, Client, Event, LlmError, Message, Phase, ProviderKind, Resilient,
    StopReason, Usage,
};
use cflow_test_support::llm_mock::{MockLlm, MockUsage, Part, Turn};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::common::*;

pub async fn text_answer(kind: ProviderKind) {
    let usage = MockUsage {
        input_tokens: 42,
        output_tokens: 7,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
    };
    let mock = MockLlm::with_turns([
        Turn::text("Hello there, this is the mock speaking.").with_usage(usage)
    ])
    .await;
    let client = Client::new(config(kind, &mock, "p")).unwrap();
    let (tx, mut rx) = channel();
    let resp = client
        .complete(&request("hi"), Some(&tx), &CancellationToken::new())
        .await
        .unwrap();

    assert_eq!(resp.text(), "Hello there, this is the mock speaking.");
    assert_eq!(resp.stop_reason, StopReason::EndTurn);
    assert_eq!(resp.model, "mock-model");
    assert_eq!((resp.usage.input_tokens, resp.usage.output_tokens), (42, 7));
    let events = drain(&mut rx);
    let deltas: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::TextDelta(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        deltas.len() > 1,
        "text should arrive in several deltas: {deltas:?}"
    );
    assert_eq!(deltas.concat(), resp.text());
    assert_eq!(events.last(), Some(&Event::Usage(resp.usage)));

    eventually("the mock to finish the stream", || {
        mock.completed_streams() == 1
    })
    .await;
    assert_eq!(mock.disconnects(), 0);

    let req = &mock.requests()[0];
    assert_eq!(req.api_key(), Some(KEY));
    assert_eq!(req.body["stream"], true);
    match kind {
        ProviderKind::Anthropic => {
            assert_eq!(req.path, "/v1/messages");
            assert_eq!(req.header("anthropic-version"), Some("2023-06-01"));
            assert_eq!(req.header("x-api-key"), Some(KEY));
        }
        ProviderKind::OpenAi => {
            assert_eq!(req.path, "/v1/chat/completions");
            assert_eq!(
                req.header("authorization"),
                Some(format!("Bearer {KEY}").as_str())
            );
            assert_eq!(req.body["stream_options"]["include_usage"], true);
            assert_eq!(req.body["messages"][0]["role"], "system");
        }
    }
}

pub async fn tool_use_session_sums_usage(kind: ProviderKind) {
    let u1 = MockUsage {
        input_tokens: 100,
        output_tokens: 20,
        cache_read_tokens: 50,
        cache_write_tokens: 30,
    };
    let u2 = MockUsage {
        input_tokens: 130,
        output_tokens: 9,
        cache_read_tokens: 80,
        cache_write_tokens: 0,
    };
    let mock = MockLlm::with_turns([
        Turn::Parts(vec![
            Part::Text("Let me look.".into()),
            Part::ToolUse {
                name: "read_file".into(),
                input: json!({"path": "src/main.rs", "nested": {"lines": [1, 2, 3]}}),
            },
        ])
        .with_usage(u1),
        Turn::text("The file prints hello.").with_usage(u2),
    ])
    .await;
    let client = Client::new(config(kind, &mock, "p")).unwrap();
    let cancel = CancellationToken::new();
    let (tx, mut rx) = channel();
    let mut req = request("what does main.rs do?");

    let first = client.complete(&req, Some(&tx), &cancel).await.unwrap();
    assert_eq!(first.stop_reason, StopReason::ToolUse);
    let (id, name, input) = first.tool_uses().next().expect("a tool call");
    assert_eq!(name, "read_file");
    assert_eq!(
        input,
        &json!({"path": "src/main.rs", "nested": {"lines": [1, 2, 3]}})
    );
    let id = id.to_string();
    let events = drain(&mut rx);
    assert!(events.contains(&Event::ToolUseStart {
        id: id.clone(),
        name: "read_file".into()
    }));
    assert!(events.iter().any(
        |e| matches!(e, Event::ToolUseDone { id: i, input: v, .. } if *i == id && v == input)
    ));

    req.messages.push(first.to_message());
    req.messages.push(Message::tool_result(
        &id,
        "fn main() { println!(\"hello\") }",
        false,
    ));
    let second = client.complete(&req, Some(&tx), &cancel).await.unwrap();
    assert_eq!(second.text(), "The file prints hello.");
    assert_eq!(second.stop_reason, StopReason::EndTurn);

    let mut total = Usage::default();
    total.add(&first.usage);
    total.add(&second.usage);
    let expected_write = if kind == ProviderKind::Anthropic {
        30
    } else {
        0
    };
    assert_eq!(
        total,
        Usage {
            input_tokens: 230,
            output_tokens: 29,
            cache_read_tokens: 130,
            cache_write_tokens: expected_write,
        }
    );

    // The second request carries the assistant's tool call and the tool's result.
    let body = &mock.requests()[1].body;
    match kind {
        ProviderKind::Anthropic => {
            let msgs = body["messages"].as_array().unwrap();
            assert_eq!(msgs.len(), 3);
            assert_eq!(msgs[1]["role"], "assistant");
            assert_eq!(msgs[1]["content"][1]["type"], "tool_use");
            assert_eq!(msgs[1]["content"][1]["id"], id.as_str());
            assert_eq!(msgs[2]["content"][0]["type"], "tool_result");
            assert_eq!(msgs[2]["content"][0]["tool_use_id"], id.as_str());
            assert_eq!(msgs[2]["content"][0]["is_error"], false);
        }
        ProviderKind::OpenAi => {
            let msgs = body["messages"].as_array().unwrap();
            let call = &msgs[2]["tool_calls"][0];
            assert_eq!(msgs[2]["role"], "assistant");
            assert_eq!(call["id"], id.as_str());
            let args: serde_json::Value =
                serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
            assert_eq!(&args, first.tool_uses().next().unwrap().2);
            assert_eq!(msgs[3]["role"], "tool");
            assert_eq!(msgs[3]["tool_call_id"], id.as_str());
        }
    }
}

pub async fn rate_limited_then_success_waits_retry_after(kind: ProviderKind) {
    let mock = MockLlm::with_turns([Turn::rate_limited(1), Turn::text("after the wait")]).await;
    let r = Resilient::new(vec![Client::new(config(kind, &mock, "p")).unwrap()])
        .with_retry(fast_retry());
    let started = Instant::now();
    let answer = r
        .complete(&request("hi"), None, &CancellationToken::new())
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(answer.response.text(), "after the wait");
    assert!(
        waited >= Duration::from_secs(1),
        "retry-after: 1 must be honoured, waited {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "the wait must stay bounded, waited {waited:?}"
    );
    assert_eq!(mock.request_count(), 2);
    assert!(
        answer.trace.iter().any(|t| t.contains("rate limited")),
        "{:?}",
        answer.trace
    );
}

pub async fn overloaded_then_success(kind: ProviderKind) {
    let mock = MockLlm::with_turns([
        Turn::overloaded(),
        Turn::StreamError {
            kind: "overloaded_error".into(),
            message: "Overloaded".into(),
        },
    ])
    .await;
    let client = Client::new(config(kind, &mock, "p")).unwrap();
    let cancel = CancellationToken::new();
    // Each failure on its own, as a direct client call sees it.
    let e = client
        .complete(&request("hi"), None, &cancel)
        .await
        .unwrap_err();
    assert!(matches!(e, LlmError::Overloaded { .. }), "{e:?}");
    let e = client
        .complete(&request("hi"), None, &cancel)
        .await
        .unwrap_err();
    assert!(
        matches!(e, LlmError::Overloaded { .. }),
        "mid-stream error event: {e:?}"
    );

    mock.push(Turn::overloaded());
    mock.push(Turn::StreamError {
        kind: "overloaded_error".into(),
        message: "Overloaded".into(),
    });
    mock.push(Turn::text("after overload"));
    let r = Resilient::new(vec![client]).with_retry(fast_retry());
    let (tx, mut rx) = channel();
    let answer = r
        .complete(&request("hi"), Some(&tx), &cancel)
        .await
        .unwrap();
    assert_eq!(answer.response.text(), "after overload");
    assert_eq!(answer.provider, "p");
    let notices = drain(&mut rx)
        .into_iter()
        .filter(|e| matches!(e, Event::Notice(_)))
        .count();
    assert!(
        notices >= 3,
        "two failures, a retry each and the answer are reported"
    );
    assert_eq!(r.breaker("p"), Some(BreakerStatus::Closed { failures: 0 }));
}

pub async fn server_errors_open_breaker_and_fail_over(kind: ProviderKind) {
    let primary =
        MockLlm::with_turns([Turn::status(500), Turn::status(502), Turn::status(500)]).await;
    let backup =
        MockLlm::with_turns([Turn::text("from the backup"), Turn::text("backup again")]).await;
    let mut backup_cfg = config(kind, &backup, "backup");
    backup_cfg.model = "backup-model".into();
    let r = Resilient::new(vec![
        Client::new(config(kind, &primary, "primary")).unwrap(),
        Client::new(backup_cfg).unwrap(),
    ])
    .with_retry(fast_retry())
    .with_breaker(BreakerPolicy {
        failure_threshold: 3,
        cool_down: Duration::from_millis(300),
    });
    let cancel = CancellationToken::new();
    let answer = r.complete(&request("hi"), None, &cancel).await.unwrap();
    assert_eq!(answer.provider, "backup");
    assert_eq!(answer.response.text(), "from the backup");
    assert_eq!(backup.requests()[0].body["model"], "backup-model");
    assert_eq!(primary.request_count(), 3);
    assert!(matches!(
        r.breaker("primary"),
        Some(BreakerStatus::Open { .. })
    ));
    assert!(
        answer
            .trace
            .iter()
            .any(|t| t.contains("circuit breaker opened")),
        "{:?}",
        answer.trace
    );
    assert!(
        answer
            .trace
            .iter()
            .any(|t| t.contains("failing over from primary to backup"))
    );

    // While open, the primary is skipped without a request.
    let answer = r.complete(&request("hi"), None, &cancel).await.unwrap();
    assert_eq!(answer.response.text(), "backup again");
    assert_eq!(primary.request_count(), 3);
    assert!(
        answer.trace.iter().any(|t| t.contains("primary: skipped")),
        "{:?}",
        answer.trace
    );

    // After the cool-down one probe goes to the primary; its success closes the breaker.
    let Some(BreakerStatus::Open { until }) = r.breaker("primary") else {
        panic!("breaker should be open")
    };
    tokio::time::sleep_until(until).await;
    primary.push(Turn::text("primary is back"));
    let answer = r.complete(&request("hi"), None, &cancel).await.unwrap();
    assert_eq!(answer.provider, "primary");
    assert_eq!(answer.response.text(), "primary is back");
    assert_eq!(
        r.breaker("primary"),
        Some(BreakerStatus::Closed { failures: 0 })
    );
}

pub async fn cancel_mid_stream_closes_connection(kind: ProviderKind) {
    let long = "word ".repeat(400);
    let mock = MockLlm::with_turns([Turn::text(long).slow(Duration::from_millis(20))]).await;
    let client = Client::new(config(kind, &mock, "p")).unwrap();
    let cancel = CancellationToken::new();
    let (tx, mut rx) = channel();
    let call = {
        let cancel = cancel.clone();
        tokio::spawn(async move { client.complete(&request("hi"), Some(&tx), &cancel).await })
    };
    // Wait until text is flowing, then cancel.
    loop {
        match rx.recv().await {
            Some(Event::TextDelta(_)) => break,
            Some(_) => continue,
            None => panic!("stream ended before any text"),
        }
    }
    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .expect("cancel is prompt")
        .unwrap();
    assert!(matches!(result, Err(LlmError::Cancelled)), "{result:?}");
    eventually("the mock to see the connection closed", || {
        mock.disconnects() == 1
    })
    .await;
    assert_eq!(mock.completed_streams(), 0);
}

pub async fn truncated_stream_is_an_error(kind: ProviderKind) {
    let mock = MockLlm::with_turns([Turn::Truncated]).await;
    let mut cfg = config(kind, &mock, "p");
    cfg.timeouts.first_token = Duration::from_secs(30);
    cfg.timeouts.total = Duration::from_secs(60);
    let client = Client::new(cfg).unwrap();
    let (req, cancel) = (request("hi"), CancellationToken::new());
    let call = client.complete(&req, None, &cancel);
    // Far below both timeouts: the end of the body is detected, not waited out.
    let e = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("no hang")
        .unwrap_err();
    let LlmError::Stream(msg) = &e else {
        panic!("{e:?}")
    };
    let marker = if kind == ProviderKind::Anthropic {
        "message_stop"
    } else {
        "[DONE]"
    };
    assert!(msg.contains(marker), "{msg}");
    assert!(e.is_retryable());
}

pub async fn malformed_event_is_an_error_not_a_hang(kind: ProviderKind) {
    // The mock keeps the connection open after the bad event: only the client can end the call.
    let mock = MockLlm::with_turns([Turn::Malformed]).await;
    let mut cfg = config(kind, &mock, "p");
    cfg.timeouts.first_token = Duration::from_secs(30);
    cfg.timeouts.total = Duration::from_secs(60);
    let client = Client::new(cfg).unwrap();
    let (tx, mut rx) = channel();
    let (req, cancel) = (request("hi"), CancellationToken::new());
    let call = client.complete(&req, Some(&tx), &cancel);
    let e = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("no hang")
        .unwrap_err();
    let LlmError::Stream(msg) = &e else {
        panic!("{e:?}")
    };
    // What was wrong, and the start of the offending data.
    assert!(msg.contains("is not JSON"), "{msg}");
    assert!(msg.contains("cut"), "{msg}");
    assert!(e.is_retryable());
    // The text before the bad event was streamed; the connection was dropped, not left open.
    let text: String = drain(&mut rx)
        .into_iter()
        .filter_map(|ev| match ev {
            Event::TextDelta(t) => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(text, "This answer is cut off in the mid");
    eventually("the mock to see the connection closed", || {
        mock.disconnects() == 1
    })
    .await;
}

pub async fn dropped_connection_is_an_error(kind: ProviderKind) {
    let mock = MockLlm::with_turns([Turn::Dropped]).await;
    let mut cfg = config(kind, &mock, "p");
    cfg.timeouts.first_token = Duration::from_secs(30);
    cfg.timeouts.total = Duration::from_secs(60);
    let client = Client::new(cfg).unwrap();
    let (req, cancel) = (request("hi"), CancellationToken::new());
    let call = client.complete(&req, None, &cancel);
    let e = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("no hang")
        .unwrap_err();
    let LlmError::Stream(msg) = &e else {
        panic!("{e:?}")
    };
    assert!(msg.contains("reading the response failed"), "{msg}");
    assert!(e.is_retryable());
    assert!(!msg.contains(KEY), "{msg}");
}

pub async fn hang_hits_first_token_timeout(kind: ProviderKind) {
    let mock = MockLlm::with_turns([Turn::Hang]).await;
    let mut cfg = config(kind, &mock, "p");
    cfg.timeouts.first_token = Duration::from_millis(300);
    let client = Client::new(cfg).unwrap();
    let e = client
        .complete(&request("hi"), None, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            LlmError::Timeout {
                phase: Phase::FirstToken
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("timeouts.first_token"), "{e}");
    // The timed-out call dropped its connection: the provider is not left generating.
    eventually("the mock to see the connection closed", || {
        mock.disconnects() == 1
    })
    .await;
}

pub async fn invalid_tool_json_is_marked_for_the_model_to_correct(kind: ProviderKind) {
    let mock = MockLlm::with_turns([Turn::Parts(vec![Part::RawToolUse {
        name: "edit".into(),
        json: r#"{"path": "a.txt", "text": "unterminated"#.into(),
    }])])
    .await;
    let client = Client::new(config(kind, &mock, "p")).unwrap();
    let resp = client
        .complete(&request("hi"), None, &CancellationToken::new())
        .await
        .expect("malformed arguments do not fail the call");
    let (_, name, input) = resp.tool_uses().next().expect("the call is kept");
    assert_eq!(name, "edit");
    let why = cflow_llm::invalid_tool_input(input).expect("marked as invalid");
    assert!(why.contains("unterminated") && why.contains("EOF"), "{why}");
    // Well-formed arguments are never mistaken for it.
    assert_eq!(
        cflow_llm::invalid_tool_input(&json!({"path": "a.txt"})),
        None
    );
}

pub async fn api_key_never_in_debug_or_errors(kind: ProviderKind) {
    // A proxy that echoes the key in its error body.
    let echo = match kind {
        ProviderKind::Anthropic => {
            json!({"type": "error", "error": {"type": "authentication_error", "message": format!("invalid key {KEY}")}})
        }
        ProviderKind::OpenAi => {
            json!({"error": {"type": "invalid_api_key", "message": format!("invalid key {KEY}")}})
        }
    };
    let mock = MockLlm::with_turns([
        Turn::Status {
            code: 401,
            retry_after: None,
            body: echo.to_string(),
        },
        Turn::Status {
            code: 500,
            retry_after: None,
            body: format!("upstream rejected {KEY}"),
        },
    ])
    .await;
    let cfg = config(kind, &mock, "p");
    let debug = format!("{cfg:?} {:?}", Client::new(cfg.clone()).unwrap());
    assert!(!debug.contains(KEY), "{debug}");
    assert!(debug.contains("[redacted]"));

    let r = Resilient::new(vec![Client::new(cfg).unwrap()]).with_retry(fast_retry());
    let e = r
        .complete(&request("hi"), None, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(e, LlmError::Auth(_)), "{e:?}");
    assert_eq!(
        mock.request_count(),
        1,
        "authentication failures are not retried"
    );
    for text in [e.to_string(), format!("{e:?}")] {
        assert!(!text.contains(KEY), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
    }
    let client = Client::new(config(kind, &mock, "p")).unwrap();
    let e = client
        .complete(&request("hi"), None, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(e, LlmError::Server { status: 500, .. }), "{e:?}");
    assert!(!e.to_string().contains(KEY), "{e}");
}

pub async fn bad_request_is_not_retried(kind: ProviderKind) {
    let mock = MockLlm::with_turns([Turn::status(400)]).await;
    let backup = MockLlm::with_turns([Turn::text("unused")]).await;
    let r = Resilient::new(vec![
        Client::new(config(kind, &mock, "p")).unwrap(),
        Client::new(config(kind, &backup, "b")).unwrap(),
    ])
    .with_retry(fast_retry());
    let e = r
        .complete(&request("hi"), None, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(e, LlmError::BadRequest(_)), "{e:?}");
    assert!(e.to_string().contains("retrying will not help"), "{e}");
    assert_eq!((mock.request_count(), backup.request_count()), (1, 0));
    // A rejected request says nothing about the provider's health.
    assert_eq!(r.breaker("p"), Some(BreakerStatus::Closed { failures: 0 }));
}

pub async fn parallel_tool_calls_keep_their_order(kind: ProviderKind) {
    let mock = MockLlm::with_turns([Turn::Parts(vec![
        Part::ToolUse {
            name: "read_file".into(),
            input: json!({"path": "a.rs"}),
        },
        Part::ToolUse {
            name: "read_file".into(),
            input: json!({"path": "b.rs"}),
        },
        Part::RawToolUse {
            name: "edit".into(),
            json: String::new(),
        },
    ])])
    .await;
    let client = Client::new(config(kind, &mock, "p")).unwrap();
    let resp = client
        .complete(&request("hi"), None, &CancellationToken::new())
        .await
        .unwrap();
    let calls: Vec<_> = resp
        .tool_uses()
        .map(|(id, name, input)| (id.to_string(), name, input.clone()))
        .collect();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0].2, json!({"path": "a.rs"}));
    assert_eq!(calls[1].2, json!({"path": "b.rs"}));
    assert_eq!(
        (calls[2].1, &calls[2].2),
        ("edit", &json!({})),
        "empty arguments mean no arguments"
    );
    assert_ne!(calls[0].0, calls[1].0, "each call has its own id");
}
