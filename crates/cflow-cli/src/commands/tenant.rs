//! `cflow tenant create | list | sandbox` (superadmin; a tenant's admin may read its sandbox
//! overrides).

use crate::cli::TenantCmd;
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
    }
    Ok(())
}
