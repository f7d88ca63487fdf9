//! The one registry of `CFLOW_*` environment variables. The configuration loader, `cflow config
//! show` and `--help` all read this table, so a variable cannot be documented in one place and
//! spelled differently in another. No other module reads the process environment for settings.

/// One environment variable and the configuration key it sets.
#[derive(Debug, Clone, Copy)]
pub struct EnvVar {
    /// The variable's name, for example `CFLOW_SERVER`.
    pub name: &'static str,
    /// The dotted configuration key it sets (the same key as in `cflow.toml`).
    pub key: &'static str,
    /// The command-line flag that sets the same key, if there is one (its clap argument id).
    pub flag: Option<&'static str>,
    pub description: &'static str,
    /// Whether the value must never be printed (tokens; passwords inside database URLs).
    pub secret: bool,
}

/// The variable that names the configuration file. It is not a configuration key itself: it
/// decides which file the keys are read from.
pub const CONFIG_FILE: EnvVar = EnvVar {
    name: "CFLOW_CONFIG",
    key: "config_file",
    flag: Some("config"),
    description: "configuration file to read (default: ./cflow.toml when it exists)",
    secret: false,
};

/// Every variable cflow reads. Keys follow the layout of `cflow.toml`: `[client]` for the CLI's
/// own settings, `[server]` (mapped onto `ServerConfig`) for `cflow up` / `cflow server`.
pub const VARS: &[EnvVar] = &[
    CONFIG_FILE,
    EnvVar {
        name: "CFLOW_SERVER",
        key: "client.server",
        flag: Some("server"),
        description: "URL of the cflow server the CLI talks to",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_TOKEN",
        key: "client.token",
        flag: Some("token"),
        description: "API token (default for a local server: <data-dir>/admin.token)",
        secret: true,
    },
    EnvVar {
        name: "CFLOW_OUTPUT",
        key: "client.output",
        flag: Some("output"),
        description: "output format: table or json",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_LOG",
        key: "log",
        flag: None,
        description: "log filter for the server (tracing syntax, e.g. info or cflow_server=debug)",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_DATA_DIR",
        key: "server.data_dir",
        flag: Some("data_dir"),
        description: "data directory: SQLite database, admin.token",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_LISTEN",
        key: "server.listen",
        flag: Some("listen"),
        description: "address the server listens on",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_DATABASE_URL",
        key: "server.database_url",
        flag: Some("database"),
        description: "postgres://… for scale-out (unset: SQLite in the data directory)",
        secret: true,
    },
    EnvVar {
        name: "CFLOW_MASTER_KEY",
        key: "server.master_key",
        flag: None,
        description: "key that seals tenants' secrets: 64 hex digits or base64 of 32 bytes (unset: <data_dir>/master.key, created at first start)",
        secret: true,
    },
    EnvVar {
        name: "CFLOW_TLS_CERT",
        key: "server.tls_cert",
        flag: Some("tls_cert"),
        description: "PEM certificate chain (with CFLOW_TLS_KEY: serve HTTPS)",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_TLS_KEY",
        key: "server.tls_key",
        flag: Some("tls_key"),
        description: "PEM private key",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_MAX_BODY_BYTES",
        key: "server.max_body_bytes",
        flag: None,
        description: "largest request body accepted",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_REQUEST_TIMEOUT_SECS",
        key: "server.request_timeout_secs",
        flag: None,
        description: "longest a request may take",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_MEMORY_PURGE_INTERVAL_SECS",
        key: "server.memory_purge_interval_secs",
        flag: None,
        description: "how often expired memory entries are purged",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_METRICS_PUBLIC",
        key: "server.metrics_public",
        flag: None,
        description: "serve /metrics without authentication (true/false)",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_RATE_LIMIT_PER_KEY_RPS",
        key: "server.rate_limit.per_key_rps",
        flag: None,
        description: "sustained requests/s per API key (0: unlimited)",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_RATE_LIMIT_PER_KEY_BURST",
        key: "server.rate_limit.per_key_burst",
        flag: None,
        description: "burst per API key",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_RATE_LIMIT_PER_TENANT_RPS",
        key: "server.rate_limit.per_tenant_rps",
        flag: None,
        description: "sustained requests/s per tenant (0: unlimited)",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_RATE_LIMIT_PER_TENANT_BURST",
        key: "server.rate_limit.per_tenant_burst",
        flag: None,
        description: "burst per tenant",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_RATE_LIMIT_PER_IP_AUTH_FAILURES_RPS",
        key: "server.rate_limit.per_ip_auth_failures_rps",
        flag: None,
        description: "sustained failed authentications/s per source IP (0: unlimited)",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_RATE_LIMIT_PER_IP_AUTH_FAILURES_BURST",
        key: "server.rate_limit.per_ip_auth_failures_burst",
        flag: None,
        description: "burst of failed authentications per source IP",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_HOOKS_ALLOW_PRIVATE_DESTINATIONS",
        key: "server.hooks.allow_private_destinations",
        flag: None,
        description: "let webhooks reach loopback and private addresses (true/false; off by default)",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_SANDBOX_MODE",
        key: "server.sandbox.mode",
        flag: None,
        description: "enforce (default): every agent command runs in the sandbox; off: the \
                      operator turns it off for this server or worker (each attempt says so)",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_SANDBOX_LAUNCHER",
        key: "server.sandbox.launcher",
        flag: None,
        description: "the sandbox launcher binary (default: this cflow binary)",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_LOCAL_SLOTS",
        key: "server.sched.local_slots",
        flag: None,
        description: "slots of the server's local worker pool (0: remote workers only)",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_LEASE_MS",
        key: "server.sched.lease_ms",
        flag: None,
        description: "how long an attempt's lease runs past its worker's last heartbeat (ms)",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_HEARTBEAT_MS",
        key: "server.sched.heartbeat_ms",
        flag: None,
        description: "how often workers must poll; twice this silent and a worker is suspected (ms)",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_WORKER_LABELS",
        key: "worker.labels",
        flag: Some("worker_labels"),
        description: "labels of a `cflow worker`, tasks can be pinned to them (region=eu,gpu=false)",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_WORKER_SLOTS",
        key: "worker.slots",
        flag: Some("worker_slots"),
        description: "attempts a `cflow worker` runs at once",
        secret: false,
    },
    EnvVar {
        name: "CFLOW_WORKER_ID",
        key: "worker.id",
        flag: Some("worker_id"),
        description: "stable id of a `cflow worker`, kept across restarts (default: <hostname>-<random> per start)",
        secret: false,
    },
];

/// Variables of model providers that the server reads (not configuration keys): when
/// `[[server.llm.providers]]` is empty, a default provider is derived from them at start, and a
/// provider's `api_key_env` names one like them.
pub const MODEL_VARS: &[(&str, &str)] = &[
    (
        "ANTHROPIC_API_KEY",
        "with no [[server.llm.providers]]: an \"anthropic\" provider with this key",
    ),
    (
        "ANTHROPIC_BASE_URL",
        "that provider's base URL (default https://api.anthropic.com)",
    ),
    (
        "OPENAI_API_KEY",
        "else: an \"openai\" provider with this key",
    ),
    (
        "OPENAI_BASE_URL",
        "that provider's base URL (default https://api.openai.com/v1)",
    ),
];

/// The registry entry for a configuration key.
pub fn by_key(key: &str) -> Option<&'static EnvVar> {
    VARS.iter().find(|v| v.key == key)
}

/// The registry entry for a clap argument id.
pub fn by_flag(flag: &str) -> Option<&'static EnvVar> {
    VARS.iter().find(|v| v.flag == Some(flag))
}

/// Reads one registered variable. Empty values count as unset, which is what a user who writes
/// `CFLOW_TOKEN= cflow …` to clear a setting expects.
pub fn get(var: &EnvVar) -> Option<String> {
    std::env::var(var.name).ok().filter(|v| !v.is_empty())
}

/// Whether a configuration key holds a secret.
pub fn is_secret(key: &str) -> bool {
    by_key(key).is_some_and(|v| v.secret)
}

/// The "Environment variables" section appended to `cflow --help`.
pub fn help_section() -> String {
    let width = VARS.iter().map(|v| v.name.len()).max().unwrap_or(0);
    let mut s = String::from(
        "Environment variables (each also settable in cflow.toml under the key shown):\n",
    );
    for v in VARS {
        s.push_str(&format!(
            "  {:width$}  {}  [{}]\n",
            v.name, v.description, v.key
        ));
    }
    s.push_str(
        "\nModel providers (server; configure them under [[server.llm.providers]] with name, kind, \
         base_url, model, api_key_secret or api_key_env, extra_headers, azure_api_version; a \
         tenant sets its own with 'cflow tenant llm set'):\n",
    );
    for (name, description) in MODEL_VARS {
        s.push_str(&format!("  {name:width$}  {description}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keys_and_flags_are_unique_and_prefixed() {
        for (i, a) in VARS.iter().enumerate() {
            assert!(a.name.starts_with("CFLOW_"), "{}", a.name);
            for b in &VARS[i + 1..] {
                assert_ne!(a.name, b.name);
                assert_ne!(a.key, b.key);
                if a.flag.is_some() {
                    assert_ne!(a.flag, b.flag);
                }
            }
        }
        assert_eq!(by_key("client.token").unwrap().name, "CFLOW_TOKEN");
        assert_eq!(by_flag("data_dir").unwrap().name, "CFLOW_DATA_DIR");
        assert!(is_secret("client.token") && is_secret("server.database_url"));
        assert!(!is_secret("server.listen"));
    }
}
