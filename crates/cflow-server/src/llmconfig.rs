//! Model providers per tenant and the model setup of an agent's attempt.
//!
//! # Configuration
//! The operator's providers are `[[server.llm.providers]]` in `cflow.toml`, in order of
//! preference (the first is the primary, the others its failovers):
//!
//! ```toml
//! [[server.llm.providers]]
//! name = "anthropic"                 # used in costs and errors; unique
//! kind = "anthropic"                 # "anthropic" (Messages API) or "openai" (compatible)
//! model = "claude-sonnet-4-5"        # optional for anthropic; required for openai
//! api_key_env = "ANTHROPIC_API_KEY"  # an environment variable of the server (operator only)
//! # base_url = "https://api.anthropic.com"   (default per kind; openai: https://api.openai.com/v1)
//! # api_key_secret = "ANTHROPIC_KEY"         (a secret in the TASK's tenant: cflow secret set)
//! # extra_headers = { "anthropic-beta" = "..." }
//! # azure_api_version = "2024-10-21"
//!
//! [[server.llm.providers]]           # Ollama: OpenAI-compatible, no key
//! name = "ollama"
//! kind = "openai"
//! base_url = "http://localhost:11434/v1"
//! model = "llama3.1"
//! ```
//!
//! With no provider configured, one is derived at start from the server's environment:
//! `ANTHROPIC_API_KEY` gives an `anthropic` provider ([`DEFAULT_ANTHROPIC_MODEL`]), else
//! `OPENAI_API_KEY` an `openai` one ([`DEFAULT_OPENAI_MODEL`]); `ANTHROPIC_BASE_URL` /
//! `OPENAI_BASE_URL` override their base URLs.
//!
//! A tenant may set its own list (`PUT /api/v1/tenants/{id}/llm`, `cflow tenant llm set`),
//! which replaces the operator's for its tasks. A tenant's providers take keys only from the
//! tenant's secret store (`api_key_secret`): never from the server's environment, and never as
//! a raw key in the request.
//!
//! # The setup of an attempt
//! [`AppState::model_setup`] resolves, for one attempt: the providers with their keys (opened
//! from the tenant's secret store or read from the server's environment), the agent's type, the
//! agent's swarm and the peers the swarm's topology lets it message or delegate to, and the
//! `system_prompt` of the swarm's pool of the agent's type (`None`: the type's default prompt).

use crate::cost::UsageScope;
use crate::error::{ApiError, ApiResult, ProblemKind};
use crate::sched::FinishedUsage;
use crate::state::AppState;
use cflow_agents::model::{ModelSetup, ProviderSetup};
use cflow_core::ValidationError;
use cflow_core::pricing::Usage;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// The model of the provider derived from `ANTHROPIC_API_KEY` (and of an `anthropic` provider
/// that names none): a current Claude Sonnet that the built-in price table knows.
pub const DEFAULT_ANTHROPIC_MODEL: &str = "claude-sonnet-4-5";
/// The model of the provider derived from `OPENAI_API_KEY`.
pub const DEFAULT_OPENAI_MODEL: &str = "gpt-4.1";
/// The most providers one list may have.
pub const MAX_PROVIDERS: usize = 16;

/// The provider kinds (APIs) cflow speaks.
pub const KINDS: [&str; 2] = ["anthropic", "openai"];

/// The message for a raw key in a tenant's provider list.
pub const RAW_KEY_REFUSED: &str = "a provider may not carry a raw API key: store it with cflow secret set NAME and reference it \
     as api_key_secret";

/// `[server.llm]`: the operator's model providers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, try_from = "RawLlmConfig")]
pub struct LlmConfig {
    /// In order of preference; empty: derived from the environment at start.
    pub providers: Vec<ProviderConfig>,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
#[derive(Default)]
struct RawLlmConfig {
    providers: Vec<ProviderConfig>,
}

impl TryFrom<RawLlmConfig> for LlmConfig {
    type Error = String;
    fn try_from(raw: RawLlmConfig) -> Result<Self, String> {
        check_providers(&raw.providers, Origin::Operator).map_err(|e| {
            format!(
                "server.llm.{}: {} (see `cflow --help` for the provider keys)",
                e.field, e.rule
            )
        })?;
        Ok(LlmConfig {
            providers: raw.providers,
        })
    }
}

/// One model provider, as configured by the operator or a tenant. Holds where the key comes
/// from, never a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Unique in its list: 1–64 of letters, digits, '.', '_' and '-'.
    pub name: String,
    /// `anthropic` (Messages API) or `openai` (chat completions, and compatible servers).
    pub kind: String,
    /// Default per kind: `https://api.anthropic.com` (without `/v1`) or
    /// `https://api.openai.com/v1` (up to and including the version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Default for `anthropic`: a current Claude Sonnet; required for `openai`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The name of a secret in the task's tenant (`cflow secret set NAME`) holding the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret: Option<String>,
    /// An environment variable of the server process holding the key (operator config only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Headers sent with every call (no credentials: those go in a secret).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_headers: BTreeMap<String, String>,
    /// Azure OpenAI's `api-version` query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_api_version: Option<String>,
}

/// Who configured a provider list: the operator may use the server's environment, a tenant
/// may not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Operator,
    Tenant,
}

/// Headers that carry credentials, refused in `extra_headers` of a tenant (keys go in secrets).
const CREDENTIAL_HEADERS: [&str; 5] = [
    "authorization",
    "x-api-key",
    "api-key",
    "proxy-authorization",
    "cookie",
];

impl ProviderConfig {
    /// The base URL used: the configured one without a trailing `/`, else the kind's default.
    pub fn effective_base_url(&self) -> String {
        match &self.base_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None if self.kind == "anthropic" => "https://api.anthropic.com".to_string(),
            None => "https://api.openai.com/v1".to_string(),
        }
    }

    /// The model used: the configured one, else the kind's default.
    pub fn effective_model(&self) -> String {
        match &self.model {
            Some(m) => m.clone(),
            None if self.kind == "anthropic" => DEFAULT_ANTHROPIC_MODEL.to_string(),
            None => DEFAULT_OPENAI_MODEL.to_string(),
        }
    }

    fn check(&self, i: usize, origin: Origin) -> Result<(), ValidationError> {
        let f = |name: &str| format!("providers[{i}].{name}");
        cflow_core::validate::name(&f("name"), &self.name)?;
        if !KINDS.contains(&self.kind.as_str()) {
            return Err(ValidationError::new(
                f("kind"),
                format!(
                    "must be one of {} (got '{}'); Ollama, vLLM, OpenRouter, Azure and LM Studio \
                     are \"openai\" with their base_url",
                    KINDS.join(", "),
                    self.kind
                ),
            ));
        }
        if let Some(u) = &self.base_url {
            let rest = u
                .strip_prefix("https://")
                .or_else(|| u.strip_prefix("http://"));
            let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
            if host.is_none_or(str::is_empty)
                || u.len() > 2048
                || u.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ValidationError::new(
                    f("base_url"),
                    format!("must be an http:// or https:// URL with a host (got '{u}')"),
                ));
            }
        }
        match &self.model {
            Some(m)
                if m.is_empty()
                    || m.len() > 256
                    || m.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                return Err(ValidationError::new(
                    f("model"),
                    "must be 1–256 characters without spaces",
                ));
            }
            None if self.kind == "openai" => {
                return Err(ValidationError::new(
                    f("model"),
                    "is required for an \"openai\" provider (e.g. \"gpt-4.1\", or the model your \
                     server serves)",
                ));
            }
            _ => {}
        }
        if self.api_key_secret.is_some() && self.api_key_env.is_some() {
            return Err(ValidationError::new(
                f("api_key_secret"),
                "set api_key_secret or api_key_env, not both",
            ));
        }
        if let Some(s) = &self.api_key_secret {
            cflow_core::secrets::check_name(s)
                .map_err(|e| ValidationError::new(f("api_key_secret"), e.rule))?;
        }
        if let Some(env) = &self.api_key_env {
            if origin == Origin::Tenant {
                return Err(ValidationError::new(
                    f("api_key_env"),
                    "a tenant's provider cannot read the server's environment: store the key \
                     with cflow secret set NAME and reference it as api_key_secret",
                ));
            }
            let ok = env
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && env.len() <= 128
                && env.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(ValidationError::new(
                    f("api_key_env"),
                    format!(
                        "must be an environment variable name like ANTHROPIC_API_KEY (got '{env}')"
                    ),
                ));
            }
        }
        for (k, v) in &self.extra_headers {
            let field = format!("providers[{i}].extra_headers.{k}");
            let token = !k.is_empty()
                && k.len() <= 128
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                return Err(ValidationError::new(field, "is not a valid header name"));
            }
            if v.len() > 4096 || v.chars().any(|c| c.is_control()) {
                return Err(ValidationError::new(
                    field,
                    "must be at most 4096 characters without control characters",
                ));
            }
            if origin == Origin::Tenant
                && CREDENTIAL_HEADERS.contains(&k.to_ascii_lowercase().as_str())
            {
                return Err(ValidationError::new(field, RAW_KEY_REFUSED));
            }
        }
        if let Some(v) = &self.azure_api_version
            && (v.is_empty() || v.len() > 64 || v.chars().any(|c| c.is_whitespace()))
        {
            return Err(ValidationError::new(
                f("azure_api_version"),
                "must be 1–64 characters without spaces (e.g. \"2024-10-21\")",
            ));
        }
        Ok(())
    }
}

/// Checks a provider list: each provider's fields, unique names, at most [`MAX_PROVIDERS`].
pub fn check_providers(list: &[ProviderConfig], origin: Origin) -> Result<(), ValidationError> {
    if list.len() > MAX_PROVIDERS {
        return Err(ValidationError::new(
            "providers",
            format!("at most {MAX_PROVIDERS} providers (got {})", list.len()),
        ));
    }
    let mut names = HashSet::new();
    for (i, p) in list.iter().enumerate() {
        p.check(i, origin)?;
        if !names.insert(p.name.as_str()) {
            return Err(ValidationError::new(
                format!("providers[{i}].name"),
                format!(
                    "'{}' is used by an earlier provider; names must be unique",
                    p.name
                ),
            ));
        }
    }
    Ok(())
}

/// Keys of a provider object that would carry a raw key.
const RAW_KEY_FIELDS: [&str; 5] = ["api_key", "key", "apikey", "token", "authorization"];

/// Parses a tenant's provider list from a request body (`{"providers": [...]}` or the bare
/// array), refusing raw keys with [`RAW_KEY_REFUSED`] before anything else.
pub fn parse_tenant_providers(
    body: &serde_json::Value,
) -> Result<Vec<ProviderConfig>, ValidationError> {
    let list = match body {
        serde_json::Value::Array(_) => body,
        serde_json::Value::Object(o) if o.len() == 1 && o.contains_key("providers") => {
            &o["providers"]
        }
        _ => {
            return Err(ValidationError::new(
                "providers",
                "the body must be {\"providers\": [...]} (an empty list: the operator's providers)",
            ));
        }
    };
    let Some(items) = list.as_array() else {
        return Err(ValidationError::new(
            "providers",
            "must be an array of provider objects",
        ));
    };
    for (i, item) in items.iter().enumerate() {
        if let Some(o) = item.as_object()
            && let Some(k) = o
                .keys()
                .find(|k| RAW_KEY_FIELDS.contains(&k.to_ascii_lowercase().as_str()))
        {
            return Err(ValidationError::new(
                format!("providers[{i}].{k}"),
                RAW_KEY_REFUSED,
            ));
        }
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let p: ProviderConfig = serde_json::from_value(item.clone()).map_err(|e| {
            ValidationError::new(
                format!("providers[{i}]"),
                format!(
                    "{e} (keys: name, kind, base_url, model, api_key_secret, extra_headers, \
                     azure_api_version)"
                ),
            )
        })?;
        out.push(p);
    }
    check_providers(&out, Origin::Tenant)?;
    Ok(out)
}

impl LlmConfig {
    /// The operator's providers in effect: the configured ones, else one derived from the
    /// environment (`ANTHROPIC_API_KEY`, then `OPENAI_API_KEY`), else none.
    pub fn effective(&self, env: impl Fn(&str) -> Option<String>) -> Vec<ProviderConfig> {
        if !self.providers.is_empty() {
            return self.providers.clone();
        }
        let set = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let derived = |kind: &str, key: &str, url: &str, model: &str| ProviderConfig {
            name: kind.to_string(),
            kind: kind.to_string(),
            base_url: set(url),
            model: Some(model.to_string()),
            api_key_secret: None,
            api_key_env: Some(key.to_string()),
            extra_headers: BTreeMap::new(),
            azure_api_version: None,
        };
        if set("ANTHROPIC_API_KEY").is_some() {
            vec![derived(
                "anthropic",
                "ANTHROPIC_API_KEY",
                "ANTHROPIC_BASE_URL",
                DEFAULT_ANTHROPIC_MODEL,
            )]
        } else if set("OPENAI_API_KEY").is_some() {
            vec![derived(
                "openai",
                "OPENAI_API_KEY",
                "OPENAI_BASE_URL",
                DEFAULT_OPENAI_MODEL,
            )]
        } else {
            Vec::new()
        }
    }
}

/// The 422 for a provider whose key cannot be had; the detail names the secret or variable
/// and how to provide it.
fn key_missing(detail: String) -> ApiError {
    ApiError::new(ProblemKind::Validation, detail)
}

impl AppState {
    /// The providers a tenant's model tasks use: its own list when it set one, else the
    /// operator's; and which of the two it is.
    pub async fn tenant_providers(
        &self,
        tenant_id: &str,
    ) -> ApiResult<(Vec<ProviderConfig>, Origin)> {
        if let Some(v) = self.store.tenant_llm(tenant_id).await? {
            let list: Vec<ProviderConfig> = serde_json::from_value(v).map_err(|e| {
                ApiError::internal(format!("tenant {tenant_id}: stored llm providers: {e}"))
            })?;
            if !list.is_empty() {
                return Ok((list, Origin::Tenant));
            }
        }
        Ok((self.llm_providers.clone(), Origin::Operator))
    }

    /// A provider with its key: from the tenant's secret store (`api_key_secret`) or, for the
    /// operator's providers only, the server's environment (`api_key_env`).
    async fn resolve_provider(
        &self,
        tenant_id: &str,
        p: &ProviderConfig,
        origin: Origin,
    ) -> ApiResult<ProviderSetup> {
        let api_key = match (&p.api_key_secret, &p.api_key_env) {
            (Some(name), _) => match self.secrets.value(tenant_id, name).await {
                Ok(Some(v)) => Some(v),
                Ok(None) => {
                    return Err(key_missing(format!(
                        "model provider '{}' takes its key from the secret '{name}', which this \
                         tenant does not have: store it with cflow secret set {name}",
                        p.name
                    )));
                }
                Err(crate::secrets::SecretsError::Store(e)) => return Err(e.into()),
                Err(e) => {
                    return Err(key_missing(format!(
                        "model provider '{}': {e}; store it again with cflow secret set {name}",
                        p.name
                    )));
                }
            },
            (None, Some(var)) if origin == Origin::Operator => {
                match std::env::var(var).ok().filter(|v| !v.is_empty()) {
                    Some(v) => Some(v),
                    None => {
                        return Err(key_missing(format!(
                            "model provider '{}' takes its key from the environment variable \
                             {var}, which the server does not have: set {var} where the server \
                             runs, or give the provider an api_key_secret (cflow secret set NAME)",
                            p.name
                        )));
                    }
                }
            }
            _ => None,
        };
        Ok(ProviderSetup {
            name: p.name.clone(),
            kind: p.kind.clone(),
            base_url: p.effective_base_url(),
            model: p.effective_model(),
            api_key,
            extra_headers: p
                .extra_headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            azure_api_version: p.azure_api_version.clone(),
        })
    }

    /// The model setup of `agent_id`'s attempt at `task_id` in `tenant_id`: the tenant's
    /// providers with their keys, the agent's type, its swarm and the peers the swarm's
    /// topology lets it message or delegate to, and the system prompt override of the swarm's
    /// pool of that type (`None` when the pool sets none, or the agent's type has no pool). A
    /// provider whose key cannot be had is an error naming the secret (or variable) and how to
    /// set it.
    pub async fn model_setup(
        &self,
        tenant_id: &str,
        agent_id: &str,
        task_id: &str,
    ) -> ApiResult<ModelSetup> {
        let agent = self
            .store
            .get_agent(tenant_id, agent_id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("agent {agent_id} not found")))?;
        if self.store.get_task(tenant_id, task_id).await?.is_none() {
            return Err(ApiError::not_found(format!("task {task_id} not found")));
        }
        let (list, origin) = self.tenant_providers(tenant_id).await?;
        let mut providers = Vec::with_capacity(list.len());
        for p in &list {
            providers.push(self.resolve_provider(tenant_id, p, origin).await?);
        }
        let peers = self.sched.peers_of(tenant_id, &agent.swarm_id, agent_id);
        // The pool as stored, read once per attempt: a scale that changes the prompt applies
        // from the next attempt on.
        let system_prompt = self
            .store
            .get_swarm(tenant_id, &agent.swarm_id)
            .await?
            .and_then(|s| {
                s.pools
                    .into_iter()
                    .find(|p| p.agent_type == agent.agent_type)
            })
            .and_then(|p| p.system_prompt);
        Ok(ModelSetup {
            providers,
            agent_type: agent.agent_type,
            system_prompt,
            swarm_id: Some(agent.swarm_id),
            peers,
        })
    }
}

/// Installs the recorder of the model usage that `claude-code` attempts report when they
/// finish (see `sched/budget.rs`): each model's tokens are priced and recorded with the task's
/// full scope. Called once, when the state is built.
pub fn install_usage_recorder(state: &AppState) {
    let weak = state.downgrade();
    let hook: crate::sched::UsageHook = std::sync::Arc::new(move |u: FinishedUsage| {
        let weak = weak.clone();
        Box::pin(async move {
            let Some(state) = weak.upgrade() else { return };
            state.record_finished_usage(u).await;
        })
    });
    if !state.sched.set_usage_hook(hook) {
        tracing::warn!("a usage recorder was already installed on this scheduler");
    }
}

impl AppState {
    /// Records the per-model usage of a finished attempt, one model call row per model. A
    /// failure is logged: the attempt's result is already committed and must not be lost.
    pub async fn record_finished_usage(&self, u: FinishedUsage) {
        let scope = UsageScope {
            tenant_id: u.tenant_id.clone(),
            project: u.project.clone(),
            swarm_id: u.swarm_id.clone(),
            agent_id: Some(u.agent_id.clone()),
            task_id: Some(u.task_id.clone()),
        };
        for m in &u.usage {
            let usage = Usage {
                input_tokens: m.input_tokens,
                output_tokens: m.output_tokens,
                cache_read_tokens: m.cache_read_tokens,
                cache_write_tokens: m.cache_write_tokens,
            };
            let provider = if m.provider.is_empty() {
                "anthropic"
            } else {
                m.provider.as_str()
            };
            if let Err(e) = self.record_usage(&scope, provider, &m.model, &usage).await {
                tracing::warn!(task = u.task_id, model = m.model, error = ?e,
                    "cannot record the model usage of a finished attempt");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(v: serde_json::Value) -> ProviderConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn defaults_are_derived_from_the_environment() {
        let none = LlmConfig::default();
        assert!(none.effective(|_| None).is_empty());
        let env = |k: &str| match k {
            "ANTHROPIC_API_KEY" => Some("sk-ant".to_string()),
            "OPENAI_API_KEY" => Some("sk-oai".to_string()),
            _ => None,
        };
        let got = none.effective(env);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind, "anthropic");
        assert_eq!(got[0].api_key_env.as_deref(), Some("ANTHROPIC_API_KEY"));
        assert_eq!(got[0].effective_base_url(), "https://api.anthropic.com");
        let open = |k: &str| match k {
            "OPENAI_API_KEY" => Some("sk".to_string()),
            "OPENAI_BASE_URL" => Some("http://localhost:11434/v1/".to_string()),
            _ => None,
        };
        let got = none.effective(open);
        assert_eq!(got[0].kind, "openai");
        assert_eq!(got[0].effective_base_url(), "http://localhost:11434/v1");
        let configured = LlmConfig {
            providers: vec![p(json!({"name": "o", "kind": "openai", "model": "m"}))],
        };
        assert_eq!(configured.effective(env), configured.providers);
    }

    #[test]
    fn tenants_cannot_use_the_environment_or_credential_headers() {
        let env = p(json!({"name": "a", "kind": "anthropic", "api_key_env": "HOME"}));
        assert!(check_providers(std::slice::from_ref(&env), Origin::Operator).is_ok());
        let e = check_providers(&[env], Origin::Tenant).unwrap_err();
        assert_eq!(e.field, "providers[0].api_key_env");
        let h = p(json!({"name": "a", "kind": "anthropic",
            "extra_headers": {"X-Api-Key": "sk-raw"}}));
        let e = check_providers(&[h], Origin::Tenant).unwrap_err();
        assert!(e.rule.contains("cflow secret set NAME"), "{e:?}");
    }
}
