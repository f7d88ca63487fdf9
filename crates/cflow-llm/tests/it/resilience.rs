//! Resilience across providers and formats: connection failures, failover between wire
//! formats, cancellation during a backoff wait, and the retry policy's bounds.

use std::time::Duration;

use cflow_llm::{BreakerStatus, Client, LlmError, ProviderKind, Resilient, RetryPolicy};
use cflow_test_support::llm_mock::{MockLlm, Turn};
use tokio_util::sync::CancellationToken;

use crate::common::*;

#[tokio::test]
async fn refused_primary_fails_over_to_another_format() {
    let backup = MockLlm::with_turns([Turn::text("openai-compatible backup")]).await;
    let mut primary = config(ProviderKind::Anthropic, &backup, "anthropic");
    primary.base_url = refused_url().await;
    let r = Resilient::new(vec![
        Client::new(primary).unwrap(),
        Client::new(config(ProviderKind::OpenAi, &backup, "local")).unwrap(),
    ])
    .with_retry(fast_retry());
    let answer = r
        .complete(&request("hi"), None, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(answer.provider, "local");
    assert_eq!(answer.response.text(), "openai-compatible backup");
    let refusals = answer
        .trace
        .iter()
        .filter(|t| t.contains("cannot reach the provider"))
        .count();
    assert_eq!(refusals, 3, "{:?}", answer.trace);
    assert!(matches!(
        r.breaker("anthropic"),
        Some(BreakerStatus::Open { .. })
    ));
}

#[tokio::test]
async fn all_providers_down_returns_the_last_error() {
    let mock = MockLlm::with_turns([Turn::status(503), Turn::status(503)]).await;
    let mut a = config(ProviderKind::OpenAi, &mock, "a");
    a.max_retries = 1;
    let mut b = a.clone();
    b.name = "b".into();
    b.base_url = refused_url().await;
    b.max_retries = 0;
    let r = Resilient::new(vec![Client::new(a).unwrap(), Client::new(b).unwrap()])
        .with_retry(fast_retry());
    let e = r
        .complete(&request("hi"), None, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(e, LlmError::Connect(_)), "{e:?}");
    assert_eq!(mock.request_count(), 2);
}

#[tokio::test]
async fn cancel_during_backoff_returns_at_once() {
    let mock = MockLlm::with_turns([Turn::rate_limited(30)]).await;
    let r = Resilient::new(vec![
        Client::new(config(ProviderKind::Anthropic, &mock, "p")).unwrap(),
    ])
    .with_retry(RetryPolicy {
        max_retry_after: Duration::from_secs(60),
        ..fast_retry()
    });
    let cancel = CancellationToken::new();
    let call = {
        let cancel = cancel.clone();
        tokio::spawn(async move { r.complete(&request("hi"), None, &cancel).await })
    };
    eventually("the first attempt", || mock.request_count() == 1).await;
    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .expect("prompt")
        .unwrap();
    assert!(matches!(result, Err(LlmError::Cancelled)), "{result:?}");
}

#[tokio::test]
async fn retry_after_beyond_the_cap_fails_over_instead_of_waiting() {
    let slow = MockLlm::with_turns([Turn::rate_limited(3600)]).await;
    let backup = MockLlm::with_turns([Turn::text("no waiting")]).await;
    let r = Resilient::new(vec![
        Client::new(config(ProviderKind::OpenAi, &slow, "slow")).unwrap(),
        Client::new(config(ProviderKind::OpenAi, &backup, "backup")).unwrap(),
    ])
    .with_retry(fast_retry());
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        r.complete(&request("hi"), None, &CancellationToken::new()),
    )
    .await
    .expect("no hour-long wait")
    .unwrap();
    assert_eq!(answer.provider, "backup");
    assert!(
        answer.trace.iter().any(|t| t.contains("too long to wait")),
        "{:?}",
        answer.trace
    );
}

#[test]
fn backoff_is_full_jitter_within_bounds() {
    let p = RetryPolicy {
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(1000),
        max_retry_after: Duration::from_secs(60),
    };
    for retry in 1..=10 {
        let ceiling =
            (Duration::from_millis(100) * 2u32.pow(retry - 1)).min(Duration::from_millis(1000));
        for _ in 0..50 {
            assert!(p.delay(retry, None) <= ceiling);
        }
    }
    let waits: Vec<_> = (0..50).map(|_| p.delay(3, None)).collect();
    assert!(waits.iter().any(|w| *w != waits[0]), "jitter varies");
    for _ in 0..50 {
        let d = p.delay(1, Some(Duration::from_secs(2)));
        assert!(
            d >= Duration::from_secs(2) && d <= Duration::from_millis(2100),
            "{d:?}"
        );
    }
}
