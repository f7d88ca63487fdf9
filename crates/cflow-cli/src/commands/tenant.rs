//! `cflow tenant create | list` (superadmin).

use crate::cli::TenantCmd;
use crate::client::Client;
use crate::output::Printer;
use anyhow::Result;
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
    }
    Ok(())
}
