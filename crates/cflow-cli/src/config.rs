//! Layered configuration (SPEC D2): defaults → `cflow.toml` → `CFLOW_*` environment → flags,
//! merged with figment. Each layer is a figment provider with its own metadata, so `cflow config
//! show` can say where every effective value came from.

use crate::env::{self, EnvVar};
use anyhow::{Context, Result, anyhow, bail};
use cflow_server::ServerConfig;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file read when neither `--config` nor `CFLOW_CONFIG` names one (only if it exists).
pub const DEFAULT_FILE: &str = "cflow.toml";
/// The server the CLI talks to by default (SPEC: `CFLOW_SERVER` default).
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7700";

/// Metadata names of the layers that are not files; `config show` maps them to sources.
const DEFAULTS: &str = "default";
const ENVIRONMENT: &str = "environment";
const FLAG: &str = "flag";

/// Everything `cflow.toml` may contain. Unknown keys are errors, so a typo is reported instead of
/// silently ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The CLI's own settings.
    pub client: ClientConfig,
    /// What `cflow up` / `cflow server` run with (the data directory is shared with the client,
    /// which finds `admin.token` there).
    pub server: ServerConfig,
    /// What `cflow worker` runs with.
    pub worker: crate::commands::worker::WorkerConfig,
    /// Log filter for the server process.
    pub log: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            client: ClientConfig::default(),
            server: ServerConfig::default(),
            worker: Default::default(),
            log: "info".to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    pub server: String,
    pub token: Option<String>,
    pub output: OutputFormat,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            server: DEFAULT_SERVER.to_string(),
            token: None,
            output: OutputFormat::Table,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Table,
    Json,
}

/// A value given on the command line for a configuration key.
#[derive(Debug, Clone)]
pub struct FlagValue {
    /// The clap argument id (registered in [`env::VARS`]).
    pub flag: &'static str,
    pub value: Value,
}

impl FlagValue {
    pub fn new(flag: &'static str, value: impl Into<Value>) -> Self {
        Self {
            flag,
            value: value.into(),
        }
    }
}

/// Where the configuration file came from.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub path: PathBuf,
    /// `--config`, `CFLOW_CONFIG` or `default`.
    pub origin: &'static str,
}

/// The merged configuration and the figment that produced it (kept for `config show`).
pub struct Loaded {
    pub config: Config,
    pub figment: Figment,
    pub file: Option<ConfigFile>,
}

/// Loads the configuration: `config_flag` is `--config`, `flags` the other options given on the
/// command line.
pub fn load(config_flag: Option<&Path>, flags: &[FlagValue]) -> Result<Loaded> {
    let file = config_file(config_flag)?;
    let mut figment = Figment::new().merge(Named {
        name: DEFAULTS,
        inner: Serialized::defaults(Config::default()),
    });
    if let Some(f) = &file {
        figment = figment.merge(Toml::file_exact(&f.path));
    }
    figment = figment.merge(EnvLayer::read()).merge(Flags(flags.to_vec()));
    let config: Config = figment.extract().map_err(describe)?;
    Ok(Loaded {
        config,
        figment,
        file,
    })
}

fn config_file(config_flag: Option<&Path>) -> Result<Option<ConfigFile>> {
    let (path, origin) = match (config_flag, env::get(&env::CONFIG_FILE)) {
        (Some(p), _) => (p.to_path_buf(), "--config"),
        (None, Some(p)) => (PathBuf::from(p), env::CONFIG_FILE.name),
        (None, None) => {
            let p = PathBuf::from(DEFAULT_FILE);
            if !p.exists() {
                return Ok(None);
            }
            (p, "default")
        }
    };
    if !path.is_file() {
        bail!(
            "configuration file {} (from {origin}) does not exist — create it or point {}/--config at an existing file",
            path.display(),
            env::CONFIG_FILE.name
        );
    }
    Ok(Some(ConfigFile { path, origin }))
}

/// Turns figment's error into one that names the key, the layer it came from, and what to fix.
fn describe(err: figment::Error) -> anyhow::Error {
    let messages: Vec<String> = err.into_iter().map(|e| describe_one(&e)).collect();
    anyhow!("invalid configuration: {}", messages.join("; "))
}

fn describe_one(e: &figment::Error) -> String {
    let origin = e
        .metadata
        .as_ref()
        .map(|m| layer_name(m, &e.path.join(".")))
        .unwrap_or_else(|| "the configuration".to_string());
    match &e.kind {
        figment::error::Kind::UnknownField(field, expected) => {
            let mut path = e.path.clone();
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            format!(
                "unknown key '{}' in {origin} (expected one of: {})",
                path.join("."),
                expected.join(", ")
            )
        }
        kind => format!("key '{}' from {origin}: {kind}", e.path.join(".")),
    }
}

/// A human name for the layer a value came from: `default`, the file's path, the environment
/// variable's name or the flag.
pub fn layer_name(md: &Metadata, key: &str) -> String {
    if let Some(Source::File(path)) = &md.source {
        return path.display().to_string();
    }
    match md.name.as_ref() {
        ENVIRONMENT => env::by_key(key)
            .map(|v| v.name.to_string())
            .unwrap_or_else(|| "the environment".into()),
        FLAG => env::by_key(key)
            .and_then(|v| v.flag)
            .map(|f| format!("--{}", f.replace('_', "-")))
            .unwrap_or_else(|| "a flag".into()),
        DEFAULTS => "default".into(),
        other => other.to_string(),
    }
}

/// A provider under a name of our choosing (figment names `Serialized` after the Rust type).
struct Named<P> {
    name: &'static str,
    inner: P,
}

impl<P: Provider> Provider for Named<P> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }
    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        self.inner.data()
    }
}

/// The `CFLOW_*` variables of the registry that are set. figment's own `Env` provider would also
/// pick up unrelated `CFLOW_*` variables (a test harness's, say) and would type a numeric-looking
/// data directory as a number; reading exactly the registered names, typed by the key's default,
/// avoids both.
struct EnvLayer(Vec<(&'static EnvVar, String)>);

impl EnvLayer {
    fn read() -> Self {
        Self(
            env::VARS
                .iter()
                .filter(|v| v.key != env::CONFIG_FILE.key)
                .filter_map(|v| env::get(v).map(|val| (v, val)))
                .collect(),
        )
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENVIRONMENT)
    }
    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        let defaults = serde_json::to_value(Config::default()).unwrap_or_default();
        let mut dict = Dict::new();
        for (var, raw) in &self.0 {
            let pointer = format!("/{}", var.key.replace('.', "/"));
            // Numbers and booleans are parsed; everything else stays the string it was written as.
            let typed = match defaults.pointer(&pointer) {
                Some(serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => raw
                    .parse::<Value>()
                    .unwrap_or_else(|_| Value::from(raw.clone())),
                _ => Value::from(raw.clone()),
            };
            merge_into(&mut dict, var.key, typed);
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Command-line values, the top layer.
struct Flags(Vec<FlagValue>);

impl Provider for Flags {
    fn metadata(&self) -> Metadata {
        Metadata::named(FLAG)
    }
    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        let mut dict = Dict::new();
        for f in &self.0 {
            let key = env::by_flag(f.flag)
                .map(|v| v.key)
                .ok_or_else(|| figment::Error::from(format!("flag --{} has no key", f.flag)))?;
            merge_into(&mut dict, key, f.value.clone());
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Inserts `value` at the dotted `key` of `dict`, creating the tables on the way.
fn merge_into(dict: &mut Dict, key: &str, value: Value) {
    let mut parts = key.splitn(2, '.');
    let head = parts.next().unwrap_or_default().to_string();
    match parts.next() {
        None => {
            dict.insert(head, value);
        }
        Some(rest) => {
            let entry = dict.entry(head).or_insert_with(|| Value::from(Dict::new()));
            if entry.as_dict().is_none() {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                merge_into(inner, rest, value);
            }
        }
    }
}

/// One row of `cflow config show`.
#[derive(Debug, Serialize)]
pub struct ShownValue {
    pub key: String,
    /// The effective value, redacted when secret; `None` when unset.
    pub value: Option<serde_json::Value>,
    pub source: String,
}

/// Every configuration key with its effective (redacted) value and the layer it came from.
pub fn show(loaded: &Loaded) -> Result<Vec<ShownValue>> {
    let json = serde_json::to_value(&loaded.config).context("serialising the configuration")?;
    let mut leaves = Vec::new();
    flatten("", &json, &mut leaves);
    Ok(leaves
        .into_iter()
        .map(|(key, value)| {
            let source = loaded
                .figment
                .find_metadata(&key)
                .map(|md| layer_name(md, &key))
                .unwrap_or_else(|| DEFAULTS.to_string());
            let value = match value {
                serde_json::Value::Null => None,
                v if env::is_secret(&key) => Some(serde_json::Value::String(redact(&v))),
                v => Some(v),
            };
            ShownValue { key, value, source }
        })
        .collect())
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        leaf => out.push((prefix.to_string(), leaf.clone())),
    }
}

/// Hides a secret: a URL keeps its scheme, host and database but loses its password (in the
/// authority or in a `password=` query parameter); anything else is hidden entirely.
pub fn redact(v: &serde_json::Value) -> String {
    const HIDDEN: &str = "<redacted>";
    let Some(s) = v.as_str() else {
        return HIDDEN.into();
    };
    if !s.contains("://") {
        return HIDDEN.into();
    }
    let Ok(mut url) = reqwest::Url::parse(s) else {
        return HIDDEN.into();
    };
    if url.password().is_some() && url.set_password(Some("REDACTED")).is_err() {
        return HIDDEN.into();
    }
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let secret =
                k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword");
            (
                k.into_owned(),
                if secret {
                    "REDACTED".into()
                } else {
                    v.into_owned()
                },
            )
        })
        .collect();
    if !pairs.is_empty() {
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_the_host_and_drops_the_password() {
        let v = serde_json::json!("postgres://cflow:s3cret@db.example:5432/cflow?sslmode=require");
        let r = redact(&v);
        assert!(!r.contains("s3cret"), "{r}");
        assert!(r.contains("db.example:5432/cflow"), "{r}");
        let q = redact(&serde_json::json!(
            "postgres://db/cflow?user=a&password=hunter2"
        ));
        assert!(!q.contains("hunter2"), "{q}");
        assert_eq!(redact(&serde_json::json!("cflow_0123_abcd")), "<redacted>");
    }

    #[test]
    fn flags_nest_under_their_keys() {
        let mut d = Dict::new();
        merge_into(&mut d, "server.rate_limit.per_key_rps", Value::from(0u32));
        merge_into(&mut d, "server.listen", Value::from("127.0.0.1:1"));
        let v = Value::from(d);
        assert!(v.find_ref("server.rate_limit.per_key_rps").is_some());
        assert!(v.find_ref("server.listen").is_some());
    }
}
