//! The model side of an assignment: which providers a model agent talks to, which system prompt
//! it works under, and what an `llm` task asks for.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One model provider, as the server resolved it for the task's tenant (the key comes from the
/// tenant's secret store, so it is masked wherever it could show up).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSetup {
    /// The configured name (`anthropic`, `ollama`, `openrouter-backup`), used in costs and errors.
    pub name: String,
    /// The API spoken: `anthropic` (Messages API) or `openai` (chat completions, compatible).
    pub kind: String,
    /// Anthropic: without `/v1`; OpenAI-compatible: up to and including the version.
    pub base_url: String,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_api_version: Option<String>,
}

impl std::fmt::Debug for ProviderSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSetup")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .finish_non_exhaustive()
    }
}

/// What the server answers to [`HostCall::Setup`](crate::host::HostCall::Setup) for an `llm`
/// agent's attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ModelSetup {
    /// In order of preference: the primary first, then the failovers. Empty: the tenant has no
    /// provider configured, and the job fails saying how to configure one.
    pub providers: Vec<ProviderSetup>,
    /// The agent's type (`coordinator`, `coder`, ...): picks the default system prompt.
    pub agent_type: String,
    /// The swarm's override of that type's system prompt, when it set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// The swarm the agent belongs to, and the agents it may message or delegate to under the
    /// swarm's topology (ids with their types), so the model knows whom it can address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Peer>,
}

/// The most bytes of a swarm pool's `system_prompt` (the override of its type's role prompt).
pub const MAX_SYSTEM_PROMPT_BYTES: usize = 32 * 1024;

/// Checks a pool's `system_prompt` for a pool of `driver`: only `llm` pools have one (cflow's
/// own loop is the only driver that sends a system prompt), and it is 1 to
/// [`MAX_SYSTEM_PROMPT_BYTES`] bytes, not blank. The error says what to change; the caller
/// names the field.
pub fn check_system_prompt(driver: &str, prompt: &str) -> Result<(), String> {
    if driver != "llm" {
        return Err(format!(
            "is only for pools of the llm driver (this pool's driver is '{driver}'): remove it, \
             or use driver \"llm\""
        ));
    }
    if prompt.trim().is_empty() {
        return Err(
            "must not be empty or blank: remove it to use the type's default prompt".into(),
        );
    }
    if prompt.len() > MAX_SYSTEM_PROMPT_BYTES {
        return Err(format!(
            "is {} bytes, over the limit of {MAX_SYSTEM_PROMPT_BYTES} (32 KiB): shorten it",
            prompt.len()
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub agent_id: String,
    pub agent_type: String,
}

/// A task for the `llm` driver: a prompt worked on by cflow's own agent loop.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmSpec {
    pub prompt: String,
    /// Overrides the providers' configured model (for the primary provider only).
    pub model: Option<String>,
    /// Model calls at most (default 50).
    pub max_turns: Option<u32>,
    /// Output tokens at most over the whole loop.
    pub max_tokens: Option<u64>,
    /// The built-in tools the model may use; empty: all of them.
    pub allowed_tools: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workspace: Option<cflow_sandbox::workspace::Source>,
    pub artifacts: Option<cflow_sandbox::artifacts::Spec>,
    /// The network `run_command` gets (at most what the policy allows; default off).
    pub network: Option<cflow_sandbox::Network>,
    /// Filled in by the worker from the assignment: the dependencies' outputs by task id.
    pub inputs: BTreeMap<String, serde_json::Value>,
    /// Filled in by the driver from [`HostCall::Setup`](crate::host::HostCall::Setup) when the
    /// job has a host; set directly where there is none (tests, benchmarks).
    pub setup: ModelSetup,
}
