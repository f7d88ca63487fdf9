//! Model provider clients for cflow: the Anthropic Messages API and OpenAI-compatible chat
//! completions, always streamed, behind one provider-neutral request/response model, with
//! retries, a circuit breaker per provider and failover.
//!
//! # Layout
//! - `types`: the neutral model (`Request`, `Message`, `Block`, `Response`, `Event`).
//! - `config`: `ProviderConfig` (the API key is redacted from `Debug`).
//! - `error`: `LlmError`, which says whether a retry can help and what to do.
//! - `client`: `Client::complete`, one streamed call with timeouts and cancellation.
//! - `anthropic`, `openai`: each wire format's request body and stream decoder.
//! - `sse`, `assemble`: the event-stream parser and the response assembler both formats share.
//! - `resilient`: `Resilient::complete`, retries, breakers and failover over several clients.

mod anthropic;
mod assemble;
mod client;
mod config;
mod error;
mod openai;
mod resilient;
mod sse;
mod types;

pub use assemble::{INVALID_INPUT_KEY, invalid_tool_input};
pub use client::Client;
pub use config::{ProviderConfig, ProviderKind, Timeouts};
pub use error::{LlmError, Phase, Result};
pub use resilient::{Answer, BreakerPolicy, BreakerStatus, Resilient, RetryPolicy};
pub use types::{Block, Event, Message, Request, Response, Role, StopReason, ToolDef, Usage};
