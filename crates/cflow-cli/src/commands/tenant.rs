//! `cflow tenant create | list | sandbox | llm | claude-policy` (superadmin; a tenant's admin
//! may read its sandbox overrides and manage its model providers and Claude Code hook policy).

use crate::cli::{TenantCmd, TenantLlmCmd};
use crate::client::Client;
use crate::output::Printer;
use anyhow::{Context, Result, bail};
use cflow_core::Action;
use reqwest::Method;
use serde_json::json;

const FIELDS: &[&str] = &["id", "name", "created_at"];

pub async fn run(client: &Client, cmd: TenantCmd, out: Printer) -> Result<()> {
    match cmd {
        TenantCmd::Create { name } => {
            let req = client
                .request(Method::POST, client.url(&["tenants"]))
                .json(&json!({ "name": name }));
            let tenant = client.json(req, Action::TenantCreate).await?;
            out.record(&tenant, FIELDS);
        }
        TenantCmd::List => {
            let mut items = Vec::new();
            client
                .pages(client.url(&["tenants"]), Action::TenantList, |page| {
                    items.extend(page);
                    Ok(())
                })
                .await?;
            let doc = json!({ "items": items, "next_cursor": null });
            out.list(&doc, &items, FIELDS);
        }
        TenantCmd::Sandbox { tenant, set, clear } => {
            let url = client.url(&["tenants", &tenant, "sandbox"]);
            let body = match (set, clear) {
                (Some(text), _) => {
                    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| {
                        format!("--set is not JSON: {text} — pass an object such as '{{\"network\": \"off\"}}'")
                    })?;
                    if !v.is_object() {
                        bail!(
                            "--set must be a JSON object such as '{{\"network\": \"off\"}}' (got {v})"
                        );
                    }
                    Some(v)
                }
                (None, true) => Some(json!({})),
                (None, false) => None,
            };
            let doc = match body {
                Some(b) => {
                    let req = client.request(Method::PUT, url).json(&b);
                    client.json(req, Action::TenantUpdate).await?
                }
                None => {
                    let req = client.request(Method::GET, url);
                    client.json(req, Action::TenantUpdate).await?
                }
            };
            if out.is_json() {
                out.json(&doc);
            } else if doc["sandbox"].is_null() {
                crate::output::emit("(no overrides: the platform's sandbox defaults apply)");
            } else {
                let text = serde_json::to_string_pretty(&doc["sandbox"])?;
                crate::output::emit(&text);
            }
        }
        TenantCmd::Llm(cmd) => llm(client, cmd, out).await?,
        TenantCmd::ClaudePolicy(cmd) => claude_policy(client, cmd, out).await?,
    }
    Ok(())
}

/// The tenant named, or the caller's own.
async fn tenant_or_own(client: &Client, tenant: Option<String>) -> Result<String> {
    if let Some(t) = tenant {
        return Ok(t);
    }
    let req = client.request(Method::GET, client.url(&["whoami"]));
    let me = client.json(req, Action::Whoami).await?;
    me["tenant_id"]
        .as_str()
        .map(str::to_string)
        .context("the server's whoami answer has no tenant_id")
}

/// Keys `--provider` accepts, and the JSON field each becomes.
const PROVIDER_KEYS: &[(&str, &str)] = &[
    ("name", "name"),
    ("kind", "kind"),
    ("base_url", "base_url"),
    ("model", "model"),
    ("key_secret", "api_key_secret"),
    ("api_key_secret", "api_key_secret"),
    ("azure_api_version", "azure_api_version"),
];

/// One `--provider name=..,kind=..` as a provider object.
pub(crate) fn parse_provider(text: &str) -> Result<serde_json::Value> {
    let mut obj = serde_json::Map::new();
    for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("--provider {text}: '{pair}' is not key=value (e.g. name=main,kind=anthropic)");
        };
        let k = k.trim();
        let Some((_, field)) = PROVIDER_KEYS.iter().find(|(key, _)| *key == k) else {
            let keys: Vec<&str> = PROVIDER_KEYS.iter().map(|(k, _)| *k).collect();
            bail!(
                "--provider {text}: unknown key '{k}'; use {}",
                keys.join(", ")
            );
        };
        obj.insert((*field).to_string(), json!(v.trim()));
    }
    for needed in ["name", "kind"] {
        if !obj.contains_key(needed) {
            bail!("--provider {text}: {needed}=... is required");
        }
    }
    Ok(serde_json::Value::Object(obj))
}

async fn llm(client: &Client, cmd: TenantLlmCmd, out: Printer) -> Result<()> {
    let (tenant, body) = match cmd {
        TenantLlmCmd::Show { tenant } => (tenant, None),
        TenantLlmCmd::Set {
            tenant,
            file,
            provider,
            clear,
        } => {
            let providers = if clear {
                json!([])
            } else if let Some(path) = file {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let v: serde_json::Value = serde_json::from_str(&text).with_context(|| {
                    format!(
                        "{} is not JSON: write {{\"providers\": [{{\"name\": ..., \"kind\": ...}}]}}",
                        path.display()
                    )
                })?;
                match v {
                    serde_json::Value::Object(mut o) if o.contains_key("providers") => {
                        o.remove("providers").unwrap_or_default()
                    }
                    other => other,
                }
            } else if !provider.is_empty() {
                serde_json::Value::Array(
                    provider
                        .iter()
                        .map(|p| parse_provider(p))
                        .collect::<Result<_>>()?,
                )
            } else {
                bail!(
                    "say what to set: --provider name=..,kind=.. (repeatable), --file PATH or --clear"
                );
            };
            (tenant, Some(json!({ "providers": providers })))
        }
    };
    let tenant = tenant_or_own(client, tenant).await?;
    let url = client.url(&["tenants", &tenant, "llm"]);
    let doc = match body {
        Some(b) => {
            let req = client.request(Method::PUT, url).json(&b);
            client.json(req, Action::SecretWrite).await?
        }
        None => {
            let req = client.request(Method::GET, url);
            client.json(req, Action::SecretRead).await?
        }
    };
    if out.is_json() {
        out.json(&doc);
        return Ok(());
    }
    let source = doc["source"].as_str().unwrap_or("operator");
    crate::output::emit(&if source == "tenant" {
        "the tenant's own providers (first = primary):".to_string()
    } else {
        "no providers of its own: the operator's apply (first = primary):".to_string()
    });
    let empty = Vec::new();
    let effective = doc["effective"].as_array().unwrap_or(&empty);
    if effective.is_empty() {
        crate::output::emit(
            "  (none: model tasks fail until one is set with cflow tenant llm set, or the \
             operator configures [[server.llm.providers]] or ANTHROPIC_API_KEY)",
        );
    }
    for p in effective {
        let key = match (p["api_key_secret"].as_str(), p["api_key_env"].as_str()) {
            (Some(s), _) => format!("key: secret {s}"),
            (None, Some(e)) => format!("key: server env {e}"),
            _ => "no key".to_string(),
        };
        crate::output::emit(&format!(
            "  {}  {}  {}  {}  ({key})",
            p["name"].as_str().unwrap_or("?"),
            p["kind"].as_str().unwrap_or("?"),
            p["model"].as_str().unwrap_or("(default model)"),
            p["base_url"].as_str().unwrap_or("(default url)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_flags_become_provider_objects() {
        let v = parse_provider("name=main,kind=anthropic,key_secret=K,model=m").unwrap();
        assert_eq!(
            v,
            json!({"name": "main", "kind": "anthropic", "api_key_secret": "K", "model": "m"})
        );
        let e = parse_provider("name=x,kind=openai,api_key=sk").unwrap_err();
        assert!(e.to_string().contains("unknown key 'api_key'"), "{e}");
        assert!(parse_provider("kind=openai").is_err());
        assert!(parse_provider("name").is_err());
    }
}

/// A tenant's Claude Code hook policy.
#[derive(Debug, clap::Subcommand)]
pub enum ClaudePolicyCmd {
    /// Show the tenant's policy.
    Show {
        /// Tenant id or name (default: the caller's tenant).
        tenant: Option<String>,
    },
    /// Replace the tenant's policy (or --clear it).
    ///
    /// Example:
    ///   cflow tenant claude-policy set --json '{"deny_commands": ["rm -rf /", "re:curl .*\\| *sh"],
    ///     "deny_tools": ["WebFetch"], "deny_paths": ["/etc"], "context_namespaces": ["project/web"],
    ///     "fail": "open"}'
    #[command(verbatim_doc_comment)]
    Set {
        /// Tenant id or name (default: the caller's tenant).
        tenant: Option<String>,
        /// The policy as a JSON object.
        #[arg(long, value_name = "JSON", conflicts_with_all = ["file", "clear"])]
        json: Option<String>,
        /// A file holding the policy as a JSON object.
        #[arg(long, value_name = "PATH", conflicts_with = "clear")]
        file: Option<std::path::PathBuf>,
        /// Remove the policy (nothing is blocked, no context namespaces, fail open).
        #[arg(long)]
        clear: bool,
    },
}

async fn claude_policy(client: &Client, cmd: ClaudePolicyCmd, out: Printer) -> Result<()> {
    let (tenant, body) = match cmd {
        ClaudePolicyCmd::Show { tenant } => (tenant, None),
        ClaudePolicyCmd::Set {
            tenant,
            json: text,
            file,
            clear,
        } => {
            let (text, origin) = match (text, file) {
                _ if clear => ("{}".to_string(), "--clear".to_string()),
                (Some(t), _) => (t, "--json".to_string()),
                (None, Some(path)) => (
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                    path.display().to_string(),
                ),
                (None, None) => bail!("pass the policy with --json or --file, or --clear it"),
            };
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{origin} is not JSON: write an object such as '{{\"deny_tools\": [\"WebFetch\"]}}'"))?;
            if !v.is_object() {
                bail!("{origin} must be a JSON object (got {v})");
            }
            (tenant, Some(v))
        }
    };
    let tenant = tenant_or_own(client, tenant).await?;
    let url = client.url(&["tenants", &tenant, "claude-policy"]);
    let req = match body {
        Some(b) => client.request(Method::PUT, url).json(&b),
        None => client.request(Method::GET, url),
    };
    let doc = client.json(req, Action::HookWrite).await?;
    if out.is_json() {
        out.json(&doc);
    } else if doc["policy"].is_null() {
        crate::output::emit("(no policy: nothing is blocked, no context namespaces, fail open)");
    } else {
        crate::output::emit(&serde_json::to_string_pretty(&doc["policy"])?);
    }
    Ok(())
}
