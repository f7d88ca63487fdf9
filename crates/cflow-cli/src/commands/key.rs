//! `cflow key create | list | revoke` and `cflow whoami`.

use crate::cli::{KeyCmd, KeyCreateArgs, now_ms};
use crate::client::Client;
use crate::output::{Printer, note};
use anyhow::{Context, Result};
use cflow_core::{Action, Role};
use reqwest::Method;
use serde_json::json;

const KEY_FIELDS: &[&str] = &[
    "id",
    "name",
    "role",
    "project",
    "tenant_id",
    "principal_id",
    "created_at",
    "expires_at",
    "revoked_at",
    "last_used_at",
];

pub async fn run(client: &Client, cmd: KeyCmd, out: Printer) -> Result<()> {
    match cmd {
        KeyCmd::Create(args) => create(client, args, out).await,
        KeyCmd::List => {
            let mut items = Vec::new();
            client
                .pages(client.url(&["keys"]), Action::KeyList, |page| {
                    items.extend(page);
                    Ok(())
                })
                .await?;
            let doc = json!({ "items": items, "next_cursor": null });
            out.list(
                &doc,
                &items,
                &[
                    "id",
                    "name",
                    "role",
                    "project",
                    "created_at",
                    "expires_at",
                    "revoked_at",
                    "last_used_at",
                ],
            );
            Ok(())
        }
        KeyCmd::Revoke { id } => {
            let req = client.request(Method::DELETE, client.url(&["keys", &id]));
            let key = client.json(req, Action::KeyRevoke).await?;
            out.record(&key, KEY_FIELDS);
            if !out.is_json() {
                note(&format!("key {id} is revoked: its token no longer works"));
            }
            Ok(())
        }
    }
}

async fn create(client: &Client, args: KeyCreateArgs, out: Printer) -> Result<()> {
    // Checked here so that a typo is answered without a round trip, with the list of roles.
    let role: Role = args.role.parse().context("--role")?;
    let expires_at = match (args.expires_in, args.expires_at) {
        (Some(d), _) => {
            let ms = i64::try_from(d.as_millis()).context("--expires-in is too long")?;
            Some(now_ms().saturating_add(ms))
        }
        (None, at) => at,
    };
    let mut body = json!({ "name": args.name, "role": role.as_str() });
    if let Some(p) = &args.project {
        body["project"] = json!(p);
    }
    if let Some(at) = expires_at {
        body["expires_at"] = json!(cflow_core::timefmt::rfc3339(at));
    }
    let req = client
        .request(Method::POST, client.url(&["tenants", &args.tenant, "keys"]))
        .json(&body);
    let created = client.json(req, Action::KeyCreate).await?;
    let mut fields = vec!["token"];
    fields.extend_from_slice(&KEY_FIELDS[..8]);
    out.record(&created, &fields);
    note(
        "warning: the token is shown only once and is stored nowhere — save it now (in a secret store, or as CFLOW_TOKEN)",
    );
    Ok(())
}

pub async fn whoami(client: &Client, out: Printer) -> Result<()> {
    let req = client.request(Method::GET, client.url(&["whoami"]));
    let me = client.json(req, Action::Whoami).await?;
    out.record(
        &me,
        &[
            "key_id",
            "key_name",
            "principal_id",
            "tenant_id",
            "tenant_name",
            "role",
            "project",
        ],
    );
    Ok(())
}
