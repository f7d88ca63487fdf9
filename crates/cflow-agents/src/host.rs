//! What a model loop asks of the server while it runs: the server-side tools (memory, messages,
//! delegation), the budget check before each model call and the accounting after it.
//!
//! A worker gives each job a [`Host`] bound to its attempt (task id and epoch). The local pool's
//! host calls the server in-process; a remote worker's goes over
//! `POST /api/v1/workers/{id}/attempts/{task_id}/{epoch}/calls`. Either way every call is fenced
//! by the epoch: once the attempt is no longer the worker's, calls fail with
//! [`HostError::Lost`] and the loop stops.

use crate::driver::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

/// The server-side tools a model loop may call through [`HostCall::Tool`].
pub const SERVER_TOOLS: [&str; 5] = [
    "memory_get",
    "memory_put",
    "memory_search",
    "send_message",
    "delegate_task",
];

/// Token counts of one model call, as the accounting records them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_read_tokens: u64,
    #[serde(default)]
    pub cache_write_tokens: u64,
}

/// One request of a running model loop to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum HostCall {
    /// Once, when an `llm` job starts: the agent's [`ModelSetup`](crate::model::ModelSetup)
    /// (providers with their keys from the tenant's secrets, agent type, system prompt, peers).
    /// The answer is the setup as JSON. Keys travel only to the worker holding the attempt.
    Setup,
    /// One of [`SERVER_TOOLS`], with the model's input. The answer is the tool's JSON result;
    /// a refusal (unknown key, topology forbids the message, bad input) is
    /// [`HostError::Refused`] with a message the model can act on.
    Tool { name: String, input: Value },
    /// Before each model call: `Ok` when the tenant's and project's budgets allow more model
    /// work; [`HostError::Refused`] saying which budget is spent and until when otherwise.
    CheckBudget,
    /// After each model call: prices and records it (per task, agent, swarm, project, tenant).
    /// The answer is `{"cost_usd": f64, "priced": bool, "budget": null | "why not"}`: the
    /// budgets as this call left them, which stands in for the next [`HostCall::CheckBudget`].
    Usage {
        /// The name of the provider that answered (as configured).
        provider: String,
        model: String,
        tokens: Tokens,
    },
}

/// Why a [`HostCall`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum HostError {
    /// The server refused this call; the message says why and what to do. For a tool, the model
    /// sees it as the tool's error; for [`HostCall::CheckBudget`], the loop stops with it.
    #[error("{0}")]
    Refused(String),
    /// The attempt is no longer this worker's (cancelled, lease lost, re-assigned): stop.
    #[error("the attempt is no longer this worker's: {0}")]
    Lost(String),
    /// The server could not be reached; the call may be retried.
    #[error("the server is unavailable: {0}")]
    Unavailable(String),
}

/// The server, as one attempt's model loop sees it.
pub trait Host: Send + Sync {
    fn call(&self, call: HostCall) -> BoxFuture<'_, Result<Value, HostError>>;
}

/// A shareable [`Host`] for a [`Job`](crate::Job) (which is `Debug` and `Clone`).
#[derive(Clone)]
pub struct HostHandle(pub Arc<dyn Host>);

impl HostHandle {
    pub fn new(host: impl Host + 'static) -> Self {
        Self(Arc::new(host))
    }

    pub async fn call(&self, call: HostCall) -> Result<Value, HostError> {
        self.0.call(call).await
    }
}

impl std::fmt::Debug for HostHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostHandle")
    }
}
