//! The crate's error type: what went wrong with a model call, whether a retry can help, and
//! what to do about it.

use std::time::Duration;

pub type Result<T, E = LlmError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connect,
    FirstToken,
    Total,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connect",
            Phase::FirstToken => "first_token",
            Phase::Total => "total",
        })
    }
}

fn secs(d: &Option<Duration>) -> String {
    match d {
        Some(d) => format!("the provider asked to wait {:.1}s", d.as_secs_f64()),
        None => "the provider gave no retry-after".to_string(),
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LlmError {
    #[error("rate limited (HTTP 429; {}): retry later, lower the request rate or raise the account's limits", secs(.retry_after))]
    RateLimited { retry_after: Option<Duration> },
    #[error("provider overloaded ({}): retry with backoff or fail over to another provider", secs(.retry_after))]
    Overloaded { retry_after: Option<Duration> },
    #[error("provider server error (HTTP {status}): {body} — retry, or fail over if it persists")]
    Server { status: u16, body: String },
    #[error(
        "authentication failed: {0} — check the provider's API key and that it may use this model"
    )]
    Auth(String),
    #[error(
        "request rejected: {0} — fix the request (model name, max_tokens, tools, messages); retrying will not help"
    )]
    BadRequest(String),
    #[error(
        "cannot reach the provider: {0} — check base_url, the network and that the server is running"
    )]
    Connect(String),
    #[error("timed out ({phase} timeout): raise timeouts.{phase} or check the provider's status")]
    Timeout { phase: Phase },
    #[error("broken response stream: {0}")]
    Stream(String),
    #[error("cancelled")]
    Cancelled,
    #[error("circuit breaker for provider {provider} is open for another {:.1}s after repeated failures: wait, or configure a failover provider", .until.saturating_duration_since(tokio::time::Instant::now()).as_secs_f64())]
    CircuitOpen {
        provider: String,
        until: tokio::time::Instant,
    },
}

impl LlmError {
    /// Whether another attempt (after a wait) may succeed: rate limits, overload, 5xx,
    /// timeouts, connection failures and broken streams. Authentication, bad requests, invalid
    /// tool input and cancellation are final.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            LlmError::RateLimited { .. }
                | LlmError::Overloaded { .. }
                | LlmError::Server { .. }
                | LlmError::Connect(_)
                | LlmError::Timeout { .. }
                | LlmError::Stream(_)
        )
    }

    /// The wait the provider asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::RateLimited { retry_after } | LlmError::Overloaded { retry_after } => {
                *retry_after
            }
            _ => None,
        }
    }
}
