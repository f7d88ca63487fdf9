//! `cflow audit verify | export | tail`. Verification opens the database itself, so that it works
//! with the server stopped and does not have to trust a server to report on its own ledger.

use crate::cli::AuditCmd;
use crate::client::{Client, split_page};
use crate::config::Loaded;
use crate::output::{Printer, emit, note};
use anyhow::{Context, Result, bail};
use cflow_core::Action;
use cflow_core::audit::Break;
use cflow_store::{Store, StoreOptions};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

/// The SQLite file `cflow up` keeps in its data directory.
pub const SQLITE_FILE: &str = "cflow.db";
/// Entries per page when reading the whole ledger.
const PAGE: &str = "1000";

pub async fn verify(loaded: &Loaded, out: Printer) -> Result<ExitCode> {
    let server = &loaded.config.server;
    let (store, what) = match &server.database_url {
        Some(url) => {
            let shown = crate::config::redact(&json!(url));
            let store = Store::open(url, StoreOptions::default())
                .await
                .with_context(|| format!("opening the database {shown}"))?;
            (store, shown)
        }
        None => {
            let path = server.data_dir.join(SQLITE_FILE);
            // Opening would create an empty database, which would then "verify": refuse instead.
            if !path.is_file() {
                bail!(
                    "no cflow database at {} — pass --data-dir (the directory 'cflow up' used) or --database postgres://…",
                    path.display()
                );
            }
            let store = Store::open_sqlite(&path, StoreOptions::default())
                .await
                .with_context(|| format!("opening {}", path.display()))?;
            (store, path.display().to_string())
        }
    };
    let report = store.audit_verify().await;
    store.close().await;
    let report = report.with_context(|| format!("reading the audit ledger of {what}"))?;
    match &report.first_break {
        None => {
            if out.is_json() {
                out.json(
                    &json!({ "intact": true, "verified": report.verified, "first_break": null }),
                );
            } else {
                emit(&format!(
                    "audit ledger intact: {} entries verified",
                    report.verified
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        Some((seq, why)) => {
            if out.is_json() {
                out.json(&json!({
                    "intact": false,
                    "verified": report.verified,
                    "first_break": { "seq": seq, "reason": reason(why), "detail": why },
                }));
            } else {
                emit(&format!(
                    "audit ledger BROKEN at entry #{seq}: {}",
                    reason(why)
                ));
                emit(&format!(
                    "{} entries before it verified; every entry from #{seq} on is untrusted",
                    report.verified
                ));
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Why an entry breaks the chain, in words.
fn reason(b: &Break) -> String {
    match b {
        Break::HashMismatch { expected, stored } => format!(
            "its content does not match its stored hash (the entry was altered; computed {}…, stored {}…)",
            short(expected),
            short(stored)
        ),
        Break::PrevHashMismatch { expected, stored } => format!(
            "it does not link to the previous entry (an entry before it was altered, inserted or removed; expected previous hash {}…, stored {}…)",
            short(expected),
            short(stored)
        ),
        Break::SeqGap { expected, found } => format!(
            "sequence gap: expected #{expected}, found #{found} (entries were removed or inserted)"
        ),
    }
}

fn short(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}

pub async fn run(client: &Client, cmd: AuditCmd, out: Printer) -> Result<()> {
    match cmd {
        AuditCmd::Verify { .. } => unreachable!("verify opens the store, not the API"),
        AuditCmd::Export { since, out: file } => export(client, since, file).await,
        AuditCmd::Tail { follow, lines } => tail(client, follow, lines, out).await,
    }
}

fn audit_url(client: &Client, since: Option<&str>) -> reqwest::Url {
    let mut url = client.url(&["audit"]);
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("limit", PAGE);
        if let Some(s) = since {
            q.append_pair("since", s);
        }
    }
    url
}

async fn export(
    client: &Client,
    since: Option<i64>,
    file: Option<std::path::PathBuf>,
) -> Result<()> {
    let since = since.map(cflow_core::timefmt::rfc3339);
    let url = audit_url(client, since.as_deref());
    let mut sink: Box<dyn Write> = match &file {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut count = 0u64;
    client
        .pages(url, Action::AuditRead, |items| {
            for item in items {
                serde_json::to_writer(&mut sink, &item)?;
                sink.write_all(b"\n")?;
                count += 1;
            }
            Ok(())
        })
        .await?;
    sink.flush().context("writing the export")?;
    drop(sink);
    if let Some(p) = file {
        note(&format!(
            "exported {count} audit entries to {}",
            p.display()
        ));
    }
    Ok(())
}

async fn tail(client: &Client, follow: bool, lines: usize, out: Printer) -> Result<()> {
    // The API lists oldest first, so the latest entries are found by reading to the end and
    // keeping the last `lines`; following then resumes from where that read stopped.
    let mut last: VecDeque<Value> = VecDeque::with_capacity(lines + 1);
    let mut position = Position::default();
    read_from(client, &mut position, |e| {
        last.push_back(e);
        if last.len() > lines {
            last.pop_front();
        }
    })
    .await?;
    for e in &last {
        print_entry(e, out);
    }
    if !follow {
        return Ok(());
    }
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        read_from(client, &mut position, |e| print_entry(&e, out)).await?;
    }
}

/// Where a follower stands: the cursor the server gave last (if any), and the last entry seen,
/// used to resume with `since` when the server gives no cursor at the end of the ledger.
#[derive(Default)]
struct Position {
    cursor: Option<String>,
    last_seq: i64,
    last_at: Option<String>,
}

async fn read_from(client: &Client, pos: &mut Position, mut each: impl FnMut(Value)) -> Result<()> {
    loop {
        let mut url = audit_url(
            client,
            if pos.cursor.is_none() {
                pos.last_at.as_deref()
            } else {
                None
            },
        );
        if let Some(c) = &pos.cursor {
            url.query_pairs_mut().append_pair("cursor", c);
        }
        let page = client
            .json(client.request(Method::GET, url), Action::AuditRead)
            .await?;
        let (items, next) = split_page(page);
        let got = items.len();
        for e in items {
            let seq = e.get("seq").and_then(Value::as_i64).unwrap_or(0);
            if seq <= pos.last_seq {
                continue;
            }
            pos.last_seq = seq;
            pos.last_at = e.get("at").and_then(Value::as_str).map(str::to_string);
            each(e);
        }
        match next {
            Some(c) => pos.cursor = Some(c),
            // The end of the ledger: keep the cursor only if the server hands out one that
            // points past the last entry; otherwise resume by time.
            None => {
                pos.cursor = None;
                return Ok(());
            }
        }
        if got == 0 {
            return Ok(());
        }
    }
}

fn print_entry(e: &Value, out: Printer) {
    if out.is_json() {
        emit(&e.to_string());
        return;
    }
    emit(&entry_line(e));
}

/// One entry as a line of `cflow audit tail`. An entry that lists several tasks' transitions
/// (resource `tasks`, see the ledger's grouping) shows how many.
fn entry_line(e: &Value) -> String {
    let s = |k: &str| crate::output::cell(e.get(k));
    let mut resource = s("resource");
    if let Some(n) = e["detail"]["count"]
        .as_u64()
        .filter(|_| e["resource"] == "tasks")
    {
        resource = format!("{resource} ({n})");
    }
    format!(
        "#{:<6} {}  {:<14} {:<16} {}  principal={} tenant={}",
        s("seq"),
        s("at"),
        s("outcome"),
        s("action"),
        resource,
        s("principal_id"),
        s("tenant_id"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grouped_entry_shows_how_many_tasks_it_lists() {
        let e = json!({"seq": 7, "at": "2026-11-27T11:00:00.000Z", "outcome": "success",
            "action": "task.complete", "resource": "tasks", "principal_id": null,
            "tenant_id": "t1", "detail": {"count": 3, "tasks": []}});
        let line = entry_line(&e);
        assert!(
            line.contains("task.complete") && line.contains("tasks (3)"),
            "{line}"
        );
        let one = json!({"seq": 8, "action": "task.complete", "resource": "task/a",
            "detail": {"epoch": 1}});
        assert!(
            entry_line(&one).contains("task/a  "),
            "{}",
            entry_line(&one)
        );
    }
}
