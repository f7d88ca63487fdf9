//! The server's configuration. The CLI layers it (defaults → `cflow.toml` → `CFLOW_*`
//! environment → flags); this crate only defines it and its defaults.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Everything `cflow up` / `cflow server` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: String,
    /// Where the embedded database, `admin.token` and other local state live.
    pub data_dir: PathBuf,
    /// `postgres://…` for scale-out; `None` means SQLite at `<data_dir>/cflow.db`.
    pub database_url: Option<String>,
    /// PEM certificate chain and private key: both set means HTTPS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Largest request body accepted (larger gets 413).
    pub max_body_bytes: usize,
    /// Longest a request may take before it is answered with a timeout problem.
    pub request_timeout_secs: u64,
    pub rate_limit: RateLimitConfig,
    /// How often expired memory entries are purged (they are invisible at once regardless).
    pub memory_purge_interval_secs: u64,
    /// Serve `/metrics` without authentication (for a Prometheus on a trusted network).
    pub metrics_public: bool,
    /// The scheduler and the local worker pool.
    pub sched: crate::sched::SchedConfig,
    /// How many recent events `GET /api/v1/events` can replay to a client that reconnects.
    pub event_buffer: usize,
    /// The sandbox every command of the local pool runs in.
    pub sandbox: cflow_sandbox::host::Options,
    /// Model prices that override or extend the built-in table (`[server.pricing.models."m"]`).
    pub pricing: PricingConfig,
    /// Model providers (`[[server.llm.providers]]`): the operator's defaults, which a tenant may
    /// replace with its own (see [`crate::llmconfig`]). Empty: derived from `ANTHROPIC_API_KEY`
    /// or `OPENAI_API_KEY` at start.
    pub llm: crate::llmconfig::LlmConfig,
    /// `/mcp`: MCP over streamable HTTP (`[server.mcp]`).
    pub mcp: crate::mcp::McpConfig,
    /// The master key that seals tenants' secrets (`CFLOW_MASTER_KEY`): 64 hex digits or the
    /// base64 of 32 bytes. Unset means `<data_dir>/master.key`, created (mode 0600) at the first
    /// start. Never shown by `Debug`.
    pub master_key: Option<crate::secrets::MasterKeyText>,
    /// The hook sender: retries, backoff, leases (`[server.hooks]`).
    pub hooks: crate::hooks::HookConfig,
    /// Host files commands must never see besides the data directory (the CLI adds the config
    /// file it read). Not a config key.
    #[serde(skip)]
    pub secret_files: Vec<PathBuf>,
}

/// Token buckets: a sustained rate per second and a burst. `0` as a rate means unlimited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub per_key_rps: u32,
    pub per_key_burst: u32,
    pub per_tenant_rps: u32,
    pub per_tenant_burst: u32,
    /// Failed authentications (401) per source IP address. When the bucket is empty, further
    /// failures from that address are answered 429 and, instead of one ledger entry each, are
    /// counted into one aggregated entry per address every few seconds.
    pub per_ip_auth_failures_rps: u32,
    pub per_ip_auth_failures_burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_key_rps: 2_000,
            per_key_burst: 4_000,
            per_tenant_rps: 5_000,
            per_tenant_burst: 10_000,
            per_ip_auth_failures_rps: 10,
            per_ip_auth_failures_burst: 50,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7700".to_string(),
            data_dir: PathBuf::from(".cflow"),
            database_url: None,
            tls_cert: None,
            tls_key: None,
            max_body_bytes: 2 * 1024 * 1024,
            request_timeout_secs: 30,
            rate_limit: RateLimitConfig::default(),
            memory_purge_interval_secs: 60,
            metrics_public: false,
            sched: crate::sched::SchedConfig::default(),
            event_buffer: 65_536,
            sandbox: cflow_sandbox::host::Options::default(),
            pricing: PricingConfig::default(),
            llm: crate::llmconfig::LlmConfig::default(),
            mcp: crate::mcp::McpConfig::default(),
            master_key: None,
            hooks: crate::hooks::HookConfig::default(),
            secret_files: Vec::new(),
        }
    }
}

/// Prices per model, in US dollars per million tokens, on top of the built-in table of
/// `cflow_core::pricing` (a model named here replaces its built-in price; any other is added).
/// Names match like built-in ones: exactly, or as the longest name a dated snapshot extends.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PricingConfig {
    pub models: std::collections::BTreeMap<String, ModelPriceConfig>,
}

/// One model's price. Cache prices default to the input price: no discount is assumed that the
/// operator did not state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPriceConfig {
    pub input_per_mtok: UsdPerMtok,
    pub output_per_mtok: UsdPerMtok,
    pub cache_read_per_mtok: Option<UsdPerMtok>,
    pub cache_write_per_mtok: Option<UsdPerMtok>,
}

/// Dollars per million tokens: a finite number, not negative (checked when the file is read).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct UsdPerMtok(f64);

impl TryFrom<f64> for UsdPerMtok {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        cflow_core::pricing::check_usd("price", v)
            .map(|_| UsdPerMtok(v))
            .map_err(|e| e.rule)
    }
}

impl From<UsdPerMtok> for f64 {
    fn from(v: UsdPerMtok) -> f64 {
        v.0
    }
}

impl PricingConfig {
    /// The built-in table with these prices applied.
    pub fn table(&self) -> cflow_core::pricing::PriceTable {
        let mut table = cflow_core::pricing::PriceTable::default();
        for (model, p) in &self.models {
            let input = p.input_per_mtok.0;
            let price = cflow_core::pricing::ModelPrice::usd(
                input,
                p.output_per_mtok.0,
                p.cache_read_per_mtok.map_or(input, |v| v.0),
                p.cache_write_per_mtok.map_or(input, |v| v.0),
            );
            table.set(model, price);
        }
        table
    }
}
