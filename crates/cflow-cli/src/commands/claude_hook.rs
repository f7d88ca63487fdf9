//! `cflow hook claude EVENT` (called by Claude Code's hooks) and `cflow hooks install |
//! uninstall | status` (which write those hooks into `.claude/settings.json`, see [`settings`]).
//!
//! The hook reads Claude Code's JSON on stdin (at most 1 MiB), posts it to
//! `POST /api/v1/claude/hooks` and turns the answer into what Claude Code understands: exit 2
//! with the reason on stderr blocks (`PreToolUse`, `UserPromptSubmit`); context goes to stdout
//! as `hookSpecificOutput.additionalContext` (`SessionStart`, `UserPromptSubmit`). It runs on
//! every tool call, so it must start fast and can never hang: the whole exchange, connection
//! included, is bounded by `--timeout-ms`; when it fails (server down, refused, timed out,
//! unusable input) the hook fails open (exit 0 and a note on stderr) or closed (exit 2 on the
//! events that can block), the stricter of `--fail` and the tenant's last known policy.

mod settings;

use crate::client::{Client, shown};
use crate::config::Loaded;
use anyhow::Result;
use cflow_core::claude::{Event, Fail};
use clap::{Args, Subcommand, ValueEnum};
use serde::Deserialize;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub use settings::hooks;

/// The most hook input read from stdin.
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailArg {
    /// Let the action go on (exit 0) and say so on stderr.
    Open,
    /// Block PreToolUse and UserPromptSubmit (exit 2); other events go on.
    Closed,
}

#[derive(Debug, Args)]
pub struct ClaudeHookArgs {
    /// The Claude Code hook event: PreToolUse, PostToolUse, UserPromptSubmit, SessionStart,
    /// SessionEnd, Stop, SubagentStop, PreCompact or Notification.
    pub event: String,
    /// When the server cannot be reached or the input is unusable: open (the default) or closed.
    /// A tenant whose policy says "closed" makes it closed: the stricter wins.
    #[arg(long, value_enum)]
    pub fail: Option<FailArg>,
    /// Bound on reading the input and the whole exchange with the server (milliseconds).
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub timeout_ms: u64,
}

/// The server's answer (`ClaudeHookResponse`).
#[derive(Debug, Deserialize)]
struct Answer {
    decision: String,
    reason: Option<String>,
    context: Option<String>,
    #[serde(default)]
    fail: Fail,
}

/// Why the hook got no usable answer.
struct Failure {
    /// One line for stderr.
    what: String,
    /// Whether the event reached the server and was recorded (a 4xx records nothing either).
    recorded: bool,
}

impl Failure {
    fn new(what: impl Into<String>) -> Self {
        Failure {
            what: what.into(),
            recorded: false,
        }
    }
}

pub fn run(loaded: &Loaded, args: ClaudeHookArgs) -> Result<ExitCode> {
    let deadline = Instant::now() + Duration::from_millis(args.timeout_ms);
    let Some(event) = Event::parse(&args.event) else {
        let names: Vec<&str> = Event::ALL.iter().map(|e| e.name()).collect();
        eprintln!(
            "cflow hook claude: unknown event '{}' (expected one of {}); nothing was recorded",
            args.event,
            names.join(", ")
        );
        return Ok(ExitCode::SUCCESS);
    };
    let cache = FailCache::new(loaded);
    match exchange(loaded, event, deadline) {
        Ok(answer) => {
            if let Some(cache) = &cache {
                cache.store(answer.fail);
            }
            Ok(act(event, answer))
        }
        Err(f) => {
            let tenant_closed = cache.as_ref().is_some_and(FailCache::closed);
            let closed = args.fail == Some(FailArg::Closed) || tenant_closed;
            let recorded = if f.recorded {
                ""
            } else {
                "; the event was not recorded"
            };
            if closed && event.can_block() {
                eprintln!(
                    "cflow hook claude: blocked: {}{recorded} (the hook fails closed)",
                    f.what
                );
                Ok(ExitCode::from(2))
            } else {
                eprintln!("cflow hook claude: {}{recorded} (continuing)", f.what);
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// Turns the server's answer into Claude Code's terms.
fn act(event: Event, answer: Answer) -> ExitCode {
    if answer.decision == "block" {
        let reason = answer
            .reason
            .as_deref()
            .unwrap_or("blocked by cflow policy");
        if event.can_block() {
            eprintln!("{reason}");
            return ExitCode::from(2);
        }
        eprintln!(
            "cflow hook claude: {reason} (not blocking: {} cannot be blocked)",
            event.name()
        );
        return ExitCode::SUCCESS;
    }
    if let Some(context) = answer.context.filter(|c| !c.is_empty())
        && event.takes_context()
    {
        let out = json!({
            "hookSpecificOutput": {
                "hookEventName": event.name(),
                "additionalContext": context,
            }
        });
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{out}");
        let _ = stdout.flush();
    }
    ExitCode::SUCCESS
}

/// Reads and checks the input, then asks the server, all before `deadline`.
fn exchange(loaded: &Loaded, event: Event, deadline: Instant) -> Result<Answer, Failure> {
    let bytes = read_stdin(deadline)?;
    let input: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Failure::new(format!("the input on stdin is not JSON ({e})")))?;
    cflow_core::claude::check_input(event, &input).map_err(|e| {
        Failure::new(format!(
            "the input is not Claude Code's {} JSON: {e}",
            event.name()
        ))
    })?;
    let client = Client::from_config(loaded).map_err(|e| Failure::new(format!("{e:#}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("starting the async runtime: {e}")))?;
    let body = json!({ "event": event.name(), "input": input });
    let server = shown(client.base()).to_string();
    let remaining = deadline.saturating_duration_since(Instant::now());
    runtime.block_on(async {
        let url = client.url(&["claude", "hooks"]);
        let send = async {
            let resp = client
                .request(reqwest::Method::POST, url)
                .json(&body)
                .send()
                .await
                .map_err(|e| Failure::new(format!("cannot reach the cflow server at {server} ({})", root_cause(&e))))?;
            let status = resp.status();
            let text = resp.text().await.map_err(|e| {
                Failure::new(format!("reading the answer of the cflow server at {server}: {}", root_cause(&e)))
            })?;
            if !status.is_success() {
                let detail = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["detail"].as_str().map(str::to_string))
                    .unwrap_or_else(|| text.trim().chars().take(200).collect());
                return Err(Failure::new(format!(
                    "the cflow server at {server} answered {status}: {detail}"
                )));
            }
            serde_json::from_str::<Answer>(&text).map_err(|e| Failure {
                what: format!("the cflow server at {server} sent an answer this cflow does not understand ({e})"),
                recorded: true,
            })
        };
        match tokio::time::timeout(remaining, send).await {
            Ok(r) => r,
            Err(_) => Err(Failure::new(format!(
                "the cflow server at {server} did not answer within {} ms",
                remaining.as_millis()
            ))),
        }
    })
}

/// The innermost cause of a transport error, in words.
fn root_cause(e: &reqwest::Error) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let s = cur.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_lowercase(),
        None => s,
    }
}

/// Reads stdin up to [`MAX_INPUT_BYTES`] before `deadline`. A writer that never closes the pipe
/// leaves the reading thread blocked; the process exits without waiting for it.
fn read_stdin(deadline: Instant) -> Result<Vec<u8>, Failure> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let r = std::io::stdin()
            .lock()
            .take(MAX_INPUT_BYTES as u64 + 1)
            .read_to_end(&mut buf)
            .map(|_| buf);
        let _ = tx.send(r);
    });
    let wait = deadline.saturating_duration_since(Instant::now());
    match rx.recv_timeout(wait) {
        Ok(Ok(buf)) if buf.len() > MAX_INPUT_BYTES => Err(Failure::new(format!(
            "the input on stdin is larger than {MAX_INPUT_BYTES} bytes"
        ))),
        Ok(Ok(buf)) if buf.iter().all(u8::is_ascii_whitespace) => Err(Failure::new(
            "no input on stdin (Claude Code sends the hook's JSON there)",
        )),
        Ok(Ok(buf)) => Ok(buf),
        Ok(Err(e)) => Err(Failure::new(format!("reading stdin: {e}"))),
        Err(_) => Err(Failure::new("no complete input on stdin in time")),
    }
}

/// The tenant's fail mode as last answered by its server, kept per server and key in the user's
/// cache directory: a file exists while the tenant's policy says "closed".
struct FailCache(PathBuf);

impl FailCache {
    fn new(loaded: &Loaded) -> Option<FailCache> {
        let dir = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        let server = &loaded.config.client.server;
        // The key's id (never its secret) tells tenants apart on one server.
        let key_id = loaded
            .config
            .client
            .token
            .as_deref()
            .and_then(|t| t.trim().split('_').nth(1))
            .unwrap_or("admin");
        let name = format!(
            "claude-fail-closed-{:016x}",
            fnv1a(&format!("{server} {key_id}"))
        );
        Some(FailCache(dir.join("cflow").join(name)))
    }

    fn closed(&self) -> bool {
        self.0.exists()
    }

    /// Best effort: a cache that cannot be written only loses the tenant's closed mode for the
    /// next failure.
    fn store(&self, fail: Fail) {
        match (fail, self.closed()) {
            (Fail::Closed, false) => {
                if let Some(dir) = self.0.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let _ = std::fs::write(&self.0, b"closed\n");
            }
            (Fail::Open, true) => {
                let _ = std::fs::remove_file(&self.0);
            }
            _ => {}
        }
    }
}

/// FNV-1a: a stable file name from a server URL and key id (not a security boundary).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[derive(Debug, Subcommand)]
pub enum HooksCmd {
    /// Add `cflow hook claude EVENT` to Claude Code's settings for all nine hook events
    /// (keeping every other setting and hook; an older cflow entry is replaced).
    Install(settings::InstallArgs),
    /// Remove cflow's entries from Claude Code's settings (and nothing else).
    Uninstall(settings::Target),
    /// Show which events have cflow's hook in Claude Code's settings.
    Status(settings::Target),
}
