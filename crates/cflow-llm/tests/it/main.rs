//! Integration tests of cflow-llm: real clients against the mock model server of
//! `cflow-test-support` over real sockets, for both wire formats.

mod cases;
mod common;
mod format_specific;
mod resilience;

/// Generates one test per case and wire format, so both formats pass the same cases.
macro_rules! for_both_formats {
    ($($case:ident),* $(,)?) => {
        mod anthropic {
            $(#[tokio::test]
            async fn $case() {
                crate::cases::$case(cflow_llm::ProviderKind::Anthropic).await
            })*
        }
        mod openai {
            $(#[tokio::test]
            async fn $case() {
                crate::cases::$case(cflow_llm::ProviderKind::OpenAi).await
            })*
        }
    };
}

for_both_formats!(
    text_answer,
    tool_use_session_sums_usage,
    rate_limited_then_success_waits_retry_after,
    overloaded_then_success,
    server_errors_open_breaker_and_fail_over,
    cancel_mid_stream_closes_connection,
    truncated_stream_is_an_error,
    malformed_event_is_an_error_not_a_hang,
    dropped_connection_is_an_error,
    hang_hits_first_token_timeout,
    invalid_tool_json_is_marked_for_the_model_to_correct,
    api_key_never_in_debug_or_errors,
    bad_request_is_not_retried,
    parallel_tool_calls_keep_their_order,
);
