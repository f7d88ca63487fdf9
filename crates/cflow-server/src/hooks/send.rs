//! The two handlers. A webhook is one signed POST; a command is one sandboxed exec run with the
//! event JSON on its stdin. Both are bounded by the hook's timeout, and both return an
//! [`Outcome`] whatever happens (a failure is an outcome, never a panic or a hang).

use super::spec::Settings;
use crate::state::AppState;
use cflow_agents::driver::{Driver, ExecSpec, Job, JobEnd, JobSpec};
use cflow_agents::{ExecConfig, ExecDriver};
use cflow_store::Hook;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The most bytes of a reply (a webhook's body, a command's stdout) kept: a pre-task answer.
pub const REPLY_CAP: usize = 64 * 1024;

/// How one send ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub ok: bool,
    /// The HTTP status (webhooks) or the exit code (commands), when there was one.
    pub status: Option<i64>,
    pub error: Option<String>,
    /// The reply: the webhook's response body or the command's stdout (at most [`REPLY_CAP`]).
    pub reply: Vec<u8>,
    pub duration: Duration,
}

impl Outcome {
    fn failed(error: impl Into<String>, status: Option<i64>, started: Instant) -> Outcome {
        Outcome {
            ok: false,
            status,
            error: Some(error.into()),
            reply: Vec::new(),
            duration: started.elapsed(),
        }
    }
}

/// `hex(HMAC-SHA256(key, "<timestamp>.<body>"))`: what `X-Cflow-Signature` carries after
/// `sha256=`.
pub fn signature(key: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Runs command hooks: an exec driver in the server's sandbox, built at the first command hook
/// (building it runs a probe, which a server without command hooks need not pay for).
pub struct Runner {
    options: cflow_sandbox::host::Options,
    data_dir: std::path::PathBuf,
    hidden: Vec<std::path::PathBuf>,
    /// The local pool's sandbox, when the server has one: shared, because a second sandbox on
    /// the same data directory would sweep the first one's live workspaces when it starts.
    shared: std::sync::OnceLock<Arc<cflow_sandbox::host::Sandbox>>,
    driver: tokio::sync::OnceCell<Result<Arc<ExecDriver>, String>>,
}

impl Runner {
    pub fn new(config: &crate::config::ServerConfig) -> Self {
        Runner {
            options: config.sandbox.clone(),
            data_dir: config.data_dir.clone(),
            hidden: config.secret_files.clone(),
            shared: std::sync::OnceLock::new(),
            driver: tokio::sync::OnceCell::new(),
        }
    }

    /// Runs command hooks in `sandbox` (the local pool's) rather than a sandbox of their own.
    pub fn share_sandbox(&self, sandbox: Arc<cflow_sandbox::host::Sandbox>) {
        let _ = self.shared.set(sandbox);
    }

    async fn driver(&self) -> Result<Arc<ExecDriver>, String> {
        self.driver
            .get_or_init(|| async {
                let (options, dir, hidden) = (
                    self.options.clone(),
                    self.data_dir.clone(),
                    self.hidden.clone(),
                );
                let shared = self.shared.get().cloned();
                // The sandbox's set-up and probe are blocking work.
                tokio::task::spawn_blocking(move || {
                    let exec = ExecConfig::default();
                    if let Some(sandbox) = shared {
                        return Ok(Arc::new(ExecDriver::sandboxed(exec, sandbox)));
                    }
                    match options.build(&dir, &hidden)? {
                        Some(sandbox) => Ok(Arc::new(ExecDriver::sandboxed(exec, Arc::new(sandbox)))),
                        None => {
                            tracing::warn!(
                                "the sandbox is turned off (sandbox.mode = \"off\"): command hooks run unsandboxed"
                            );
                            Ok(Arc::new(ExecDriver::new(exec)))
                        }
                    }
                })
                .await
                .map_err(|e| format!("the sandbox set-up failed: {e}"))?
            })
            .await
            .clone()
    }
}

/// Sends `body` (the event JSON) to `hook` once and reports how it went.
pub async fn send(
    state: &AppState,
    hook: &Hook,
    settings: &Settings,
    delivery_id: &str,
    event_type: &str,
    body: &[u8],
) -> Outcome {
    let timeout = Duration::from_secs(settings.timeout_seconds.max(1));
    match (&settings.url, &settings.command) {
        (Some(url), _) => {
            webhook(
                state,
                hook,
                settings,
                url,
                delivery_id,
                event_type,
                body,
                timeout,
            )
            .await
        }
        (None, Some(cmd)) => {
            command(state, hook, cmd, delivery_id, event_type, body, timeout).await
        }
        (None, None) => Outcome::failed(
            "the hook has neither a URL nor a command",
            None,
            Instant::now(),
        ),
    }
}

#[allow(clippy::too_many_arguments)]
async fn webhook(
    state: &AppState,
    hook: &Hook,
    settings: &Settings,
    url: &str,
    delivery_id: &str,
    event_type: &str,
    body: &[u8],
    timeout: Duration,
) -> Outcome {
    let started = Instant::now();
    let Some(name) = &settings.secret else {
        return Outcome::failed("the webhook has no signing secret", None, started);
    };
    let Some(key) = state.secret_value(&hook.tenant_id, name).await else {
        return Outcome::failed(
            format!(
                "the signing secret '{name}' is missing: set it with 'cflow secret set {name}'"
            ),
            None,
            started,
        );
    };
    // The host is checked here when it is an IP address (a name is checked by the client's
    // resolver, at every connection).
    let checked = reqwest::Url::parse(url)
        .map_err(|e| format!("'{url}' is not a URL: {e}"))
        .and_then(|u| state.hooks.destinations().check_url(&u));
    if let Err(why) = checked {
        return Outcome::failed(why, None, started);
    }
    let client = match state.hooks.http() {
        Ok(c) => c,
        Err(why) => return Outcome::failed(why, None, started),
    };
    let timestamp = crate::state::now_ms() / 1000;
    let sig = signature(key.as_bytes(), timestamp, body);
    let request = client
        .post(url)
        .timeout(timeout)
        .header("content-type", "application/json")
        .header("x-cflow-event", event_type)
        .header("x-cflow-delivery", delivery_id)
        .header("x-cflow-hook", &hook.id)
        .header("x-cflow-timestamp", timestamp.to_string())
        .header("x-cflow-signature", format!("sha256={sig}"))
        .body(body.to_vec());
    let mut resp = match request.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return Outcome::failed(
                format!("timed out after {}s", timeout.as_secs()),
                None,
                started,
            );
        }
        Err(e) => {
            return Outcome::failed(
                format!("cannot reach {url}: {}", error_chain(&e)),
                None,
                started,
            );
        }
    };
    let status = resp.status();
    let mut reply = Vec::new();
    // The reply is read within the same deadline; a body past the cap is cut, not waited for.
    let read = tokio::time::timeout(timeout.saturating_sub(started.elapsed()), async {
        while let Ok(Some(chunk)) = resp.chunk().await {
            let room = REPLY_CAP - reply.len();
            reply.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if reply.len() >= REPLY_CAP {
                break;
            }
        }
    })
    .await;
    let code = Some(i64::from(status.as_u16()));
    if read.is_err() {
        return Outcome::failed(
            format!("timed out after {}s reading the reply", timeout.as_secs()),
            code,
            started,
        );
    }
    if !status.is_success() {
        return Outcome::failed(
            format!("the receiver answered HTTP {}", status.as_u16()),
            code,
            started,
        );
    }
    Outcome {
        ok: true,
        status: code,
        error: None,
        reply,
        duration: started.elapsed(),
    }
}

/// The error and its causes, for a delivery's `last_error`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

async fn command(
    state: &AppState,
    hook: &Hook,
    cmd: &str,
    delivery_id: &str,
    event_type: &str,
    body: &[u8],
    timeout: Duration,
) -> Outcome {
    let started = Instant::now();
    let driver = match state.hooks.runner().driver().await {
        Ok(d) => d,
        Err(e) => return Outcome::failed(format!("cannot run command hooks: {e}"), None, started),
    };
    let sandbox = state
        .store
        .tenant_sandbox(&hook.tenant_id)
        .await
        .ok()
        .flatten()
        .and_then(|v| cflow_sandbox::host::Settings::parse(&v).ok());
    // The launcher's own stdin is its lifeline, so the event reaches the command through the
    // environment and a pipe the shell sets up inside the sandbox.
    let mut spec = ExecSpec::shell(format!("printf '%s' \"$CFLOW_HOOK_INPUT\" | {{\n{cmd}\n}}"));
    spec.env = vec![
        (
            "CFLOW_HOOK_INPUT".into(),
            String::from_utf8_lossy(body).into_owned(),
        ),
        ("CFLOW_HOOK_EVENT".into(), event_type.to_string()),
        ("CFLOW_HOOK_DELIVERY".into(), delivery_id.to_string()),
        ("CFLOW_HOOK_ID".into(), hook.id.clone()),
    ];
    let job = Job {
        task_id: format!("hook-{delivery_id}"),
        attempt: 1,
        spec: JobSpec::Exec(spec),
        timeout,
        output_cap: REPLY_CAP,
        sandbox,
        agent_id: String::new(),
        epoch: 0,
        host: None,
    };
    // Output is taken from the outcome; the stream of events is not needed (a closed channel
    // is ignored by the driver).
    let (events, _) = tokio::sync::mpsc::channel(1);
    let outcome = match driver.run(job, events, CancellationToken::new()).await {
        Ok(o) => o,
        Err(e) => return Outcome::failed(format!("the command could not run: {e}"), None, started),
    };
    let stderr = String::from_utf8_lossy(&outcome.stderr.tail)
        .trim()
        .to_string();
    let tail = |s: &str| -> String {
        let start = s.len().saturating_sub(500);
        let start = (start..s.len())
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(s.len());
        s[start..].to_string()
    };
    let (ok, status, error) = match outcome.end {
        JobEnd::Exited { code: 0 } => (true, Some(0), None),
        JobEnd::Exited { code } => (
            false,
            Some(i64::from(code)),
            Some(if stderr.is_empty() {
                format!("exited with code {code}")
            } else {
                format!("exited with code {code}: {}", tail(&stderr))
            }),
        ),
        JobEnd::TimedOut => (
            false,
            None,
            Some(format!(
                "timed out after {}s: the command and every process it started were killed",
                timeout.as_secs()
            )),
        ),
        JobEnd::Signalled { signal } => (false, None, Some(format!("killed by signal {signal}"))),
        JobEnd::Cancelled => (false, None, Some("cancelled".to_string())),
        JobEnd::Killed { limit } => (
            false,
            None,
            Some(format!(
                "killed by the sandbox: over its {} limit",
                limit.as_str()
            )),
        ),
        other => (false, None, Some(format!("ended: {other:?}"))),
    };
    Outcome {
        ok,
        status,
        error,
        reply: outcome.stdout.bytes,
        duration: started.elapsed(),
    }
}
