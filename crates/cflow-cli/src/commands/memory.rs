//! `cflow memory store | get | list | search | delete`: the durable shared memory.

use crate::cli::{MemoryCmd, MemoryStoreArgs};
use crate::client::{ApiError, Client, split_page};
use crate::output::{Printer, emit, note};
use anyhow::{Context, Result, bail};
use cflow_core::Action;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::io::Read;

const ENTRY_FIELDS: &[&str] = &[
    "namespace",
    "key",
    "value",
    "version",
    "tags",
    "created_at",
    "updated_at",
    "expires_at",
];
const META_FIELDS: &[&str] = &[
    "namespace",
    "key",
    "version",
    "tags",
    "updated_at",
    "expires_at",
];

pub async fn run(client: &Client, cmd: MemoryCmd, out: Printer) -> Result<()> {
    match cmd {
        MemoryCmd::Store(args) => store(client, args, out).await,
        MemoryCmd::Get { namespace, key } => {
            let req = client.request(Method::GET, client.url(&["memory", &namespace, &key]));
            let entry = client.json(req, Action::MemoryRead).await?;
            out.record(&entry, ENTRY_FIELDS);
            Ok(())
        }
        MemoryCmd::List {
            namespace,
            prefix,
            limit,
            all,
        } => list(client, &namespace, prefix, limit, all, out).await,
        MemoryCmd::Search {
            query,
            namespace,
            limit,
        } => {
            let mut url = client.url(&["memory", "search"]);
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("q", &query);
                if let Some(ns) = &namespace {
                    q.append_pair("namespace", ns);
                }
                if let Some(l) = limit {
                    q.append_pair("limit", &l.to_string());
                }
            }
            let doc = client
                .json(client.request(Method::GET, url), Action::MemoryRead)
                .await?;
            let (items, _) = split_page(doc.clone());
            out.list(
                &doc,
                &items,
                &["namespace", "key", "score", "value", "tags", "updated_at"],
            );
            Ok(())
        }
        MemoryCmd::Delete {
            namespace,
            key,
            if_version,
        } => {
            let mut req = client.request(Method::DELETE, client.url(&["memory", &namespace, &key]));
            if let Some(v) = if_version {
                req = req.header(reqwest::header::IF_MATCH, if_match(v));
            }
            client
                .send(req, Action::MemoryWrite)
                .await
                .map_err(|e| conflict_hint(e, &namespace, &key))?;
            if out.is_json() {
                out.json(&json!({ "namespace": namespace, "key": key, "deleted": true }));
            } else {
                emit(&format!("deleted {namespace} / {key}"));
            }
            Ok(())
        }
    }
}

async fn store(client: &Client, args: MemoryStoreArgs, out: Printer) -> Result<()> {
    let raw = if args.value == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the value from standard input")?;
        // `echo text | cflow memory store ns k -` should store "text", not "text\n".
        if !args.json {
            if s.ends_with('\n') {
                s.pop();
            }
            if s.ends_with('\r') {
                s.pop();
            }
        }
        s
    } else {
        args.value
    };
    let value: Value = if args.json {
        serde_json::from_str(&raw).with_context(|| {
            "VALUE is not valid JSON (--json was given) — quote text, or drop --json to store it as a string"
        })?
    } else {
        Value::String(raw)
    };
    let mut body = json!({ "value": value });
    if let Some(ttl) = args.ttl {
        if ttl.as_secs() < 1 {
            bail!("--ttl must be at least 1s");
        }
        // A TTL is whole seconds; rounding up never expires an entry before the user asked.
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        body["ttl_seconds"] = json!(secs);
    }
    if !args.tags.is_empty() {
        body["tags"] = json!(args.tags);
    }
    let mut req = client
        .request(
            Method::PUT,
            client.url(&["memory", &args.namespace, &args.key]),
        )
        .json(&body);
    if let Some(v) = args.if_version {
        req = req.header(reqwest::header::IF_MATCH, if_match(v));
    }
    let meta = client
        .json(req, Action::MemoryWrite)
        .await
        .map_err(|e| conflict_hint(e, &args.namespace, &args.key))?;
    out.record(&meta, META_FIELDS);
    Ok(())
}

async fn list(
    client: &Client,
    namespace: &str,
    prefix: Option<String>,
    limit: Option<u32>,
    all: bool,
    out: Printer,
) -> Result<()> {
    let mut url = client.url(&["memory", namespace]);
    {
        let mut q = url.query_pairs_mut();
        if let Some(p) = &prefix {
            q.append_pair("prefix", p);
        }
        if let Some(l) = limit {
            q.append_pair("limit", &l.to_string());
        }
    }
    let columns = &[
        "key",
        "version",
        "value",
        "tags",
        "updated_at",
        "expires_at",
    ];
    if !all {
        let doc = client
            .json(client.request(Method::GET, url), Action::MemoryRead)
            .await?;
        let (items, next) = split_page(doc.clone());
        out.list(&doc, &items, columns);
        if next.is_some() && !out.is_json() {
            note("(more entries: pass --all to list every page)");
        }
        return Ok(());
    }
    let mut items = Vec::new();
    client
        .pages(url, Action::MemoryRead, |page| {
            items.extend(page);
            Ok(())
        })
        .await?;
    let doc = json!({ "items": items, "next_cursor": null });
    out.list(&doc, &items, columns);
    Ok(())
}

/// The entity tag of a version, as the server sends it in `ETag`.
fn if_match(version: i64) -> String {
    format!("\"{version}\"")
}

/// Adds what to do to a compare-and-set failure.
fn conflict_hint(e: anyhow::Error, namespace: &str, key: &str) -> anyhow::Error {
    match e.downcast_ref::<ApiError>() {
        Some(api) if api.status == StatusCode::PRECONDITION_FAILED => {
            match api.problem.current_version {
                Some(v) => anyhow::anyhow!(
                    "{api} — check the entry with 'cflow memory get {namespace} {key}' and retry with --if-version {v}"
                ),
                None => anyhow::anyhow!("{api} — drop --if-version to write regardless"),
            }
        }
        _ => e,
    }
}
