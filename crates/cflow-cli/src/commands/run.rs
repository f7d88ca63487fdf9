//! `cflow run FILE.toml`: creates the workflow's swarm (a unique name per run), submits its task
//! DAG in one request, follows it live on the event stream (state per task, log lines prefixed
//! by the task's workflow id), prints a summary and stops the swarm. Exit code 0 when every task
//! succeeded, 1 otherwise (the failed ones are named with their reason).
//!
//! Also home of the event-stream reader ([`subscribe`]) that `cflow task logs --follow` uses.

use crate::client::Client;
use crate::output::{Printer, emit, note};
use crate::workflow::{self, Checked};
use anyhow::{Context, Result};
use cflow_core::Action;
use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The workflow file (TOML): a [swarm] and [[tasks]]; see examples/quickstart.toml.
    pub file: PathBuf,
    /// Give up after this long: cancel what is left and exit 1.
    #[arg(long, value_parser = crate::cli::parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// Check the file and print what would be submitted, without contacting the server.
    #[arg(long)]
    pub dry_run: bool,
}

// ---- the event stream -----------------------------------------------------------------------

/// One server-sent event of `GET /api/v1/events`.
#[derive(Debug, Clone)]
pub struct Event {
    /// `task.running`, `task.log`, ..., or `reset` (events were missed: re-read state).
    pub kind: String,
    /// The id of what changed (a task id for `task.*`).
    pub subject: String,
    /// The event's own `data` object.
    pub data: Value,
}

/// Opens the event stream (filtered by type prefixes such as `task.`) and returns a channel of
/// its events. The first connection is made before this returns, so nothing published after it
/// is missed; when the connection drops (the client's request timeout ends it, or the server
/// restarts) it reconnects with `Last-Event-ID`, and the server sends `reset` when it cannot
/// replay what was missed.
pub async fn subscribe(client: &Client, types: &str) -> Result<mpsc::Receiver<Event>> {
    let mut url = client.url(&["events"]);
    url.query_pairs_mut().append_pair("types", types);
    let first = client
        .send(
            client
                .request(Method::GET, url.clone())
                .header(reqwest::header::ACCEPT, "text/event-stream"),
            Action::TaskRead,
        )
        .await
        .context("opening the event stream")?;
    let (tx, rx) = mpsc::channel(1024);
    let client = client.clone();
    tokio::spawn(async move {
        let mut last_id: Option<String> = None;
        let mut resp = Some(first);
        loop {
            if let Some(r) = resp.take()
                && !pump(r, &tx, &mut last_id).await
            {
                return; // nobody listens any more
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            if tx.is_closed() {
                return;
            }
            let mut req = client
                .request(Method::GET, url.clone())
                .header(reqwest::header::ACCEPT, "text/event-stream");
            if let Some(id) = &last_id {
                req = req.header("Last-Event-ID", id);
            }
            match client.send(req, Action::TaskRead).await {
                Ok(r) => resp = Some(r),
                Err(e) => tracing::debug!("event stream reconnect failed: {e:#}"),
            }
        }
    });
    Ok(rx)
}

/// Reads one connection's events into `tx`; false when the receiver is gone.
async fn pump(
    resp: reqwest::Response,
    tx: &mpsc::Sender<Event>,
    last_id: &mut Option<String>,
) -> bool {
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let (mut id, mut kind, mut data) = (None::<String>, String::new(), String::new());
    loop {
        // Stop reading (and close the connection) as soon as nobody listens: an open stream
        // would otherwise hold up the server's graceful shutdown.
        let chunk = tokio::select! {
            c = body.next() => c,
            () = tx.closed() => return false,
        };
        let Some(Ok(chunk)) = chunk else { break };
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                // End of one event: dispatch it.
                if let Some(i) = id.take() {
                    *last_id = Some(i);
                }
                if !kind.is_empty() || !data.is_empty() {
                    let event = parse_event(std::mem::take(&mut kind), &std::mem::take(&mut data));
                    if tx.send(event).await.is_err() {
                        return false;
                    }
                }
                continue;
            }
            if line.starts_with(':') {
                continue; // a keep-alive comment
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = Some(value.to_string()),
                "event" => kind = value.to_string(),
                "data" => {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value);
                }
                _ => {}
            }
        }
    }
    !tx.is_closed()
}

/// `data:` is `{id, type, subject, data, at}`; the `event:` line wins for the type.
fn parse_event(kind: String, data: &str) -> Event {
    let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    let kind = if kind.is_empty() {
        v.get("type")
            .and_then(Value::as_str)
            .unwrap_or("message")
            .to_string()
    } else {
        kind
    };
    Event {
        kind,
        subject: v
            .get("subject")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        data: v.get("data").cloned().unwrap_or(Value::Null),
    }
}

/// The task state a `task.*` event announces, if it is a state change.
pub fn event_state(kind: &str) -> Option<&str> {
    // Other task events (`task.log`, `task.lost`) are not state changes; the periodic re-read
    // catches anything these miss.
    match kind.strip_prefix("task.")? {
        "retrying" => Some("pending"),
        s @ ("pending" | "queued" | "assigned" | "running" | "succeeded" | "failed"
        | "cancelled" | "timed_out") => Some(s),
        _ => None,
    }
}

pub fn is_terminal(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled" | "timed_out")
}

/// The text of a `task.log` event, and whether it came from stderr.
pub fn log_text(data: &Value) -> (String, bool) {
    let text = ["text", "line", "chunk", "data"]
        .iter()
        .find_map(|k| data.get(*k).and_then(Value::as_str))
        .unwrap_or_default()
        .to_string();
    let stderr = data.get("stream").and_then(Value::as_str) == Some("stderr");
    (text, stderr)
}

// ---- cflow run ------------------------------------------------------------------------------

pub async fn run(loaded: &crate::config::Loaded, args: RunArgs, out: Printer) -> Result<ExitCode> {
    let origin = args.file.display().to_string();
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading the workflow file {origin}"))?;
    let checked = workflow::parse(&text, &origin)?;
    if args.dry_run {
        let name = format!("{}-<id>", checked.workflow.swarm.name);
        out.json(&json!({
            "swarm": checked.workflow.swarm_body(&name),
            "tasks": checked.workflow.tasks_body("<swarm id>")["tasks"],
        }));
        return Ok(ExitCode::SUCCESS);
    }
    let client = Client::from_config(loaded)?;
    let outcome = run_workflow(&client, &checked, args.timeout, out).await?;
    Ok(outcome.exit_code())
}

/// How a workflow run ended.
pub struct Outcome {
    pub swarm_id: String,
    pub failed: Vec<String>,
    pub interrupted: bool,
}

impl Outcome {
    pub fn exit_code(&self) -> ExitCode {
        if self.interrupted {
            ExitCode::from(130)
        } else if self.failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

struct Row {
    local: String,
    id: String,
    state: String,
    attempts: i64,
    reason: Option<String>,
    bar: Option<ProgressBar>,
    /// Partial log lines (stdout, stderr) waiting for their newline.
    partial: [String; 2],
}

/// Where progress goes: bars on a terminal, plain lines otherwise (stderr under --output json,
/// so standard output stays one JSON document).
struct View {
    multi: Option<MultiProgress>,
    to_stderr: bool,
}

impl View {
    fn line(&self, s: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(s);
            }
            None if self.to_stderr => note(s),
            None => emit(s),
        }
    }
}

/// Creates the swarm, submits the DAG, follows it to the end, prints the summary and stops the
/// swarm. Used by `cflow run` and `cflow up --demo`.
pub async fn run_workflow(
    client: &Client,
    checked: &Checked,
    timeout: Option<Duration>,
    out: Printer,
) -> Result<Outcome> {
    let wf = &checked.workflow;
    // Subscribed before anything is created, so no event of this run is missed.
    let mut events = subscribe(client, "task.").await?;
    let name = format!("{}-{}", wf.swarm.name, short_id());
    let swarm = client
        .json(
            client
                .request(Method::POST, client.url(&["swarms"]))
                .json(&wf.swarm_body(&name)),
            Action::SwarmWrite,
        )
        .await
        .with_context(|| format!("creating the swarm '{name}'"))?;
    let swarm_id = str_of(&swarm, "id");
    let view = View {
        multi: (!out.is_json() && std::io::stdout().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout())),
        to_stderr: out.is_json(),
    };
    view.line(&format!(
        "swarm {name} ({swarm_id}): {} topology, {} task(s)",
        str_of(&swarm, "topology"),
        checked.ids.len()
    ));

    let submitted = client
        .json(
            client
                .request(Method::POST, client.url(&["tasks"]))
                .json(&wf.tasks_body(&swarm_id)),
            Action::TaskSubmit,
        )
        .await;
    let submitted = match submitted {
        Ok(s) => s,
        Err(e) => {
            stop_swarm(client, &swarm_id).await;
            return Err(e.context("submitting the workflow's tasks (the swarm was stopped)"));
        }
    };
    let mut rows = rows_from(&submitted, &checked.ids, &view)?;
    let width = rows.iter().map(|r| r.local.len()).max().unwrap_or(4);
    for r in &rows {
        view.line(&format!("  {:width$}  {}  {}", r.local, r.id, r.state));
    }
    if let Some(m) = &view.multi {
        let style = ProgressStyle::with_template("{prefix} {spinner} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        for r in &mut rows {
            let bar = m.add(ProgressBar::new_spinner());
            bar.set_style(style.clone());
            bar.set_prefix(format!("{:width$}", r.local));
            bar.set_message(r.state.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            r.bar = Some(bar);
        }
    }
    let mut index: HashMap<String, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.clone(), i))
        .collect();

    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut refresh = tokio::time::interval(Duration::from_secs(2));
    let mut interrupted = false;
    let mut timed_out = false;
    let mut events_open = true;
    loop {
        if rows.iter().all(|r| is_terminal(&r.state)) {
            // Confirm with the store: events are notifications, the store is the truth.
            poll_states(client, &swarm_id, &mut rows, &mut index, &view).await?;
            if rows.iter().all(|r| is_terminal(&r.state)) {
                break;
            }
        }
        tokio::select! {
            ev = events.recv(), if events_open => match ev {
                Some(ev) => on_event(&ev, &mut rows, &index, &view, width),
                None => events_open = false,
            },
            _ = refresh.tick() => {
                poll_states(client, &swarm_id, &mut rows, &mut index, &view).await?;
            }
            _ = tokio::signal::ctrl_c() => { interrupted = true; break; }
            _ = sleep_until(deadline) => { timed_out = true; break; }
        }
    }
    for r in &mut rows {
        for (i, stderr) in [(0, false), (1, true)] {
            let rest = std::mem::take(&mut r.partial[i]);
            if !rest.is_empty() {
                view.line(&log_line(&r.local, width, &rest, stderr));
            }
        }
    }
    if interrupted || timed_out {
        let why = if interrupted {
            "interrupted"
        } else {
            "the --timeout passed"
        };
        view.line(&format!("{why}: cancelling the unfinished tasks"));
        for r in rows.iter().filter(|r| !is_terminal(&r.state)) {
            let req = client.request(Method::POST, client.url(&["tasks", &r.id, "cancel"]));
            if let Err(e) = client.send(req, Action::TaskCancel).await {
                note(&format!(
                    "warning: cancelling {} ({}): {e:#}",
                    r.local, r.id
                ));
            }
        }
        let _ = poll_states(client, &swarm_id, &mut rows, &mut index, &view).await;
    }
    for r in &rows {
        if let Some(b) = &r.bar {
            b.finish_with_message(final_message(r));
        }
    }
    stop_swarm(client, &swarm_id).await;
    let summary = summarize(client, &rows).await;
    if let Some(m) = &view.multi {
        let _ = m.clear();
    }
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| r.state != "succeeded")
        .map(|r| r.local.clone())
        .collect();
    print_summary(&summary, &name, &swarm_id, out);
    if !failed.is_empty() && !interrupted {
        let mut msg = String::from("workflow failed:");
        for t in summary.iter().filter(|t| t["state"] != "succeeded") {
            let state = t["state"].as_str().unwrap_or_default();
            msg.push_str(&format!(
                "\n  {} {}: {}",
                t["task"].as_str().unwrap_or_default(),
                state.replace('_', " "),
                t["reason"].as_str().unwrap_or(if is_terminal(state) {
                    "no reason given"
                } else {
                    "did not finish"
                })
            ));
        }
        note(&msg);
    }
    Ok(Outcome {
        swarm_id,
        failed,
        interrupted,
    })
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn rows_from(submitted: &Value, ids: &[String], view: &View) -> Result<Vec<Row>> {
    let items = submitted
        .get("tasks")
        .and_then(Value::as_array)
        .context("the server's answer to the submission has no 'tasks' list")?;
    let mut rows = Vec::with_capacity(ids.len());
    for (i, t) in items.iter().enumerate() {
        // Matched by local_id when the server echoes it, else by position (the contract keeps
        // submission order).
        let local = t
            .get("local_id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| ids.get(i).cloned())
            .unwrap_or_else(|| str_of(t, "id"));
        rows.push(Row {
            local,
            id: str_of(t, "id"),
            state: str_of(t, "state"),
            attempts: 0,
            reason: None,
            bar: None,
            partial: [String::new(), String::new()],
        });
    }
    if rows.len() != ids.len() {
        view.line(&format!(
            "note: submitted {} task(s), the server answered for {}",
            ids.len(),
            rows.len()
        ));
    }
    Ok(rows)
}

fn on_event(
    ev: &Event,
    rows: &mut [Row],
    index: &HashMap<String, usize>,
    view: &View,
    width: usize,
) {
    let Some(&i) = index.get(&ev.subject) else {
        return;
    };
    let named = ev
        .data
        .get("reason")
        .and_then(Value::as_str)
        .map(|s| workflow_names(s, rows));
    let r = &mut rows[i];
    if ev.kind == "task.log" {
        let (text, stderr) = log_text(&ev.data);
        let buf = &mut r.partial[usize::from(stderr)];
        buf.push_str(&text);
        while let Some(nl) = buf.find('\n') {
            let line: String = buf.drain(..=nl).collect();
            view.line(&log_line(
                &r.local,
                width,
                line.trim_end_matches(['\n', '\r']),
                stderr,
            ));
        }
        return;
    }
    let Some(state) = event_state(&ev.kind) else {
        return;
    };
    if let Some(a) = ev.data.get("attempt").and_then(Value::as_i64) {
        r.attempts = r.attempts.max(a);
    }
    if let Some(reason) = named {
        r.reason = Some(reason);
    }
    set_state(r, state, view, width);
}

fn set_state(r: &mut Row, state: &str, view: &View, width: usize) {
    if r.state == state {
        return;
    }
    // A terminal state is final; a late event must not move it back.
    if is_terminal(&r.state) {
        return;
    }
    r.state = state.to_string();
    match &r.bar {
        Some(b) if is_terminal(state) => b.finish_with_message(final_message(r)),
        Some(b) => b.set_message(describe_state(r)),
        None => view.line(&format!("[{:width$}] {}", r.local, describe_state(r))),
    }
}

/// A finished bar's text: a mark, then the state.
fn final_message(r: &Row) -> String {
    let mark = match r.state.as_str() {
        "succeeded" => "✓",
        s if is_terminal(s) => "✗",
        _ => "…",
    };
    format!("{mark} {}", describe_state(r))
}

fn describe_state(r: &Row) -> String {
    let mut s = r.state.replace('_', " ");
    if r.attempts > 1 {
        s.push_str(&format!(" (attempt {})", r.attempts));
    }
    if !matches!(
        r.state.as_str(),
        "succeeded" | "running" | "queued" | "assigned"
    ) && let Some(reason) = &r.reason
    {
        s.push_str(&format!(": {reason}"));
    }
    s
}

fn log_line(local: &str, width: usize, line: &str, stderr: bool) -> String {
    let sep = if stderr { "!" } else { "|" };
    format!("{local:>width$} {sep} {line}")
}

/// Re-reads every task of the swarm; replicas (tasks with `replica_of`) are mapped to their
/// parent row so their log lines are shown under it.
async fn poll_states(
    client: &Client,
    swarm_id: &str,
    rows: &mut [Row],
    index: &mut HashMap<String, usize>,
    view: &View,
) -> Result<()> {
    let mut url = client.url(&["tasks"]);
    url.query_pairs_mut().append_pair("swarm", swarm_id);
    let mut all = Vec::new();
    client
        .pages(url, Action::TaskRead, |items| {
            all.extend(items);
            Ok(())
        })
        .await?;
    let width = rows.iter().map(|r| r.local.len()).max().unwrap_or(4);
    for t in &all {
        let id = str_of(t, "id");
        if let Some(parent) = t.get("replica_of").and_then(Value::as_str)
            && let Some(&i) = index.get(parent)
        {
            index.entry(id).or_insert(i);
            continue;
        }
        let Some(&i) = index.get(&id) else { continue };
        let named = t
            .get("reason")
            .and_then(Value::as_str)
            .map(|s| workflow_names(s, rows));
        let r = &mut rows[i];
        if let Some(a) = t.get("attempts").and_then(Value::as_i64) {
            r.attempts = a;
        }
        if let Some(reason) = named {
            r.reason = Some(reason);
        }
        let state = str_of(t, "state");
        set_state(r, &state, view, width);
    }
    Ok(())
}

async fn stop_swarm(client: &Client, swarm_id: &str) {
    let req = client.request(Method::POST, client.url(&["swarms", swarm_id, "stop"]));
    if let Err(e) = client.send(req, Action::SwarmWrite).await {
        note(&format!("warning: stopping the swarm {swarm_id}: {e:#}"));
    }
}

/// The final record of each task: state, attempts, duration (first start to last end of its
/// attempts) and its result or reason.
async fn summarize(client: &Client, rows: &[Row]) -> Vec<Value> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let detail = client
            .json(
                client.request(Method::GET, client.url(&["tasks", &r.id])),
                Action::TaskRead,
            )
            .await
            .unwrap_or(Value::Null);
        let attempts = detail.get("attempts");
        let list = attempts.and_then(Value::as_array);
        let count = attempts
            .and_then(Value::as_i64)
            .or_else(|| list.map(|l| l.len() as i64))
            .unwrap_or(r.attempts);
        let started = list.and_then(|l| l.iter().filter_map(|a| time_of(a, "started_at")).min());
        let ended = list.and_then(|l| l.iter().filter_map(|a| time_of(a, "ended_at")).max());
        let duration_ms = match (started, ended) {
            (Some(s), Some(e)) if e >= s => Some(e - s),
            _ => None,
        };
        let state = detail
            .get("state")
            .and_then(Value::as_str)
            .unwrap_or(&r.state)
            .to_string();
        let mut reason = detail
            .get("reason")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| r.reason.clone());
        // What the last attempt said: its exit code and the last line it wrote to stderr.
        if state != "succeeded"
            && let Some(last) = list.and_then(|l| l.last())
        {
            let mut why = Vec::new();
            if let Some(code) = last.get("exit_code").and_then(Value::as_i64) {
                why.push(format!("exit code {code}"));
            }
            if let Some(line) = last
                .get("stderr")
                .and_then(Value::as_str)
                .and_then(|e| e.lines().rev().find(|l| !l.trim().is_empty()))
            {
                let line: String = line.trim().chars().take(160).collect();
                why.push(format!("stderr: {line}"));
            }
            if !why.is_empty() {
                let base = reason.unwrap_or_else(|| state.replace('_', " "));
                reason = Some(format!("{base} ({})", why.join("; ")));
            }
        }
        out.push(json!({
            "task": r.local,
            "id": r.id,
            "state": state,
            "attempts": count,
            "duration_ms": duration_ms,
            "reason": reason.map(|s| workflow_names(&s, rows)),
            "result": detail.get("result").cloned().unwrap_or(Value::Null),
        }));
    }
    out
}

/// Task ids in a server message replaced by the workflow ids the user wrote.
fn workflow_names(s: &str, rows: &[Row]) -> String {
    rows.iter()
        .fold(s.to_string(), |s, r| s.replace(&r.id, &r.local))
}

fn time_of(v: &Value, key: &str) -> Option<i64> {
    v.get(key)
        .and_then(Value::as_str)
        .and_then(cflow_core::timefmt::parse_rfc3339)
}

fn print_summary(summary: &[Value], name: &str, swarm_id: &str, out: Printer) {
    let ok = summary.iter().all(|t| t["state"] == "succeeded");
    if out.is_json() {
        out.json(&json!({
            "swarm": {"id": swarm_id, "name": name},
            "succeeded": ok,
            "tasks": summary,
        }));
        return;
    }
    let rows: Vec<Value> = summary
        .iter()
        .map(|t| {
            let mut t = t.clone();
            t["duration"] = match t["duration_ms"].as_i64() {
                Some(ms) => json!(format!("{:.2}s", ms as f64 / 1000.0)),
                None => Value::Null,
            };
            t["outcome"] = if t["state"] == "succeeded" {
                t["result"].clone()
            } else {
                t["reason"].clone()
            };
            t
        })
        .collect();
    emit("");
    out.list(
        &Value::Null,
        &rows,
        &["task", "state", "attempts", "duration", "id", "outcome"],
    );
    let done = summary.iter().filter(|t| t["state"] == "succeeded").count();
    emit(&format!(
        "{done}/{} task(s) succeeded; swarm {name} ({swarm_id}) stopped",
        summary.len()
    ));
}

pub fn str_of(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// A short, practically unique suffix for a run's swarm name (no randomness crate needed: the
/// clock's nanoseconds and the process id, hashed).
fn short_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("{:06x}", h.finish() & 0xff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_from_their_data_line() {
        let e = parse_event(
            "task.log".into(),
            r#"{"id":"b-1","type":"task.log","subject":"t1","data":{"stream":"stderr","text":"hi\n"},"at":"x"}"#,
        );
        assert_eq!(e.kind, "task.log");
        assert_eq!(e.subject, "t1");
        assert_eq!(log_text(&e.data), ("hi\n".to_string(), true));
        assert_eq!(event_state("task.retrying"), Some("pending"));
        assert_eq!(event_state("task.log"), None);
        assert_eq!(event_state("task.lost"), None);
        assert_eq!(event_state("agent.busy"), None);
    }
}
