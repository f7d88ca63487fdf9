//! Provider configuration: where a provider is, how to authenticate, and how long to wait.

use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// Anthropic Messages API: `POST {base_url}/v1/messages`.
    Anthropic,
    /// OpenAI-compatible chat completions: `POST {base_url}/chat/completions` (OpenAI, Azure
    /// OpenAI, OpenRouter, Ollama, vLLM, LM Studio).
    OpenAi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP (and TLS) connection establishment.
    pub connect: Duration,
    /// From sending the request to the first event of the response stream.
    pub first_token: Duration,
    /// The whole call, stream included.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            first_token: Duration::from_secs(90),
            total: Duration::from_secs(600),
        }
    }
}

#[derive(Clone)]
pub struct ProviderConfig {
    /// A name for logs, notices and errors ("anthropic", "openrouter-backup").
    pub name: String,
    pub kind: ProviderKind,
    /// Anthropic: `https://api.anthropic.com` (no `/v1`, as `ANTHROPIC_BASE_URL`). OpenAI
    /// compatible: up to and including the version, as `OPENAI_BASE_URL`:
    /// `https://api.openai.com/v1`, `https://openrouter.ai/api/v1`, `http://localhost:11434/v1`,
    /// or for Azure `https://RES.openai.azure.com/openai/deployments/DEPLOYMENT`.
    pub base_url: String,
    /// Sent as `x-api-key` (Anthropic), `Authorization: Bearer` (OpenAI) or `api-key` (Azure).
    /// Local servers such as Ollama need none. Never printed by `Debug`.
    pub api_key: Option<String>,
    /// The model used when a request names none (and always by `Resilient`, so that each
    /// failover provider asks for its own model).
    pub model: String,
    /// Extra headers sent on every request (OpenRouter's `HTTP-Referer`, `anthropic-beta`, ...).
    /// A header named here replaces the default one of the same name.
    pub extra_headers: Vec<(String, String)>,
    /// Azure OpenAI: the `api-version` query parameter; when set, the key goes in `api-key`.
    pub azure_api_version: Option<String>,
    pub timeouts: Timeouts,
    /// Retries after the first attempt (used by `Resilient`).
    pub max_retries: u32,
}

impl ProviderConfig {
    pub fn new(
        name: impl Into<String>,
        kind: ProviderKind,
        base_url: impl Into<String>,
        model: impl Into<String>,
    ) -> Self {
        ProviderConfig {
            name: name.into(),
            kind,
            base_url: base_url.into(),
            api_key: None,
            model: model.into(),
            extra_headers: Vec::new(),
            azure_api_version: None,
            timeouts: Timeouts::default(),
            max_retries: 2,
        }
    }

    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("model", &self.model)
            .field(
                "extra_headers",
                &self
                    .extra_headers
                    .iter()
                    .map(|(k, _)| (k.as_str(), "[redacted]"))
                    .collect::<Vec<_>>(),
            )
            .field("azure_api_version", &self.azure_api_version)
            .field("timeouts", &self.timeouts)
            .field("max_retries", &self.max_retries)
            .finish()
    }
}
