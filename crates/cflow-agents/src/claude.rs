//! The `claude-code` driver: runs the Claude Code CLI headless in the sandbox.
//!
//! `claude -p PROMPT --output-format stream-json --verbose [--model M] [--max-turns N]
//! [--permission-mode MODE] [--allowedTools …] [--resume SESSION]` runs in the task's workspace,
//! with the network off but for the model endpoint (the sandbox's egress proxy), `HOME` in a
//! directory of the agent's own that persists across its tasks, and the stream parsed into the
//! outcome: the final `result` event's text, session id, turns, usage and cost become the task's
//! result; `is_error` fails the attempt with the CLI's message.
//!
//! **Sessions.** Claude Code files a session under `~/.claude/projects/<the cwd, escaped>/`, and
//! `--resume` only looks in the current directory's folder. Every task has a workspace of its
//! own, so before a run the driver copies the agent's last session file into the folder of the
//! new workspace and passes `--resume` with its id: the agent keeps its context from task to
//! task (on the same worker; on another worker it starts afresh).
//!
//! **cflow's tools.** When the job has a host (it runs under a server), the agent also gets the
//! server-side tools of the `llm` driver (memory, messages, delegation) as `mcp__cflow__<tool>`:
//! the driver serves them over MCP on a Unix socket in the agent's home for the attempt's
//! lifetime and passes `--mcp-config` (a stdio server: the sandbox launcher binary as
//! `mcp-bridge --socket PATH`) with `--strict-mcp-config`, and pre-approves them with
//! `--allowedTools` unless the task's `allowed_tools` restricts them (see [`mcp`]).
//!
//! Never `--dangerously-skip-permissions`: tools run under the permission mode the task names
//! (default `acceptEdits`: file edits allowed, commands only when listed in `allowed_tools`).

mod mcp;

use crate::driver::{
    BoxFuture, Driver, DriverError, ExecCommand, ExecSpec, Isolation, Job, JobEnd, JobEvent,
    JobOutcome, JobSpec,
};
use crate::exec::{ExecDriver, Extras, Placement};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A task's prompt and the CLI options it may set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaudeSpec {
    pub prompt: String,
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    /// `default`, `acceptEdits`, `plan` (default `acceptEdits`).
    pub permission_mode: Option<String>,
    /// Tools allowed without asking, e.g. `Bash(cargo test:*)`, `Edit`.
    pub allowed_tools: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workspace: Option<cflow_sandbox::workspace::Source>,
    pub artifacts: Option<cflow_sandbox::artifacts::Spec>,
}

/// The permission modes a task may ask for (`bypassPermissions` is not one of them).
pub const PERMISSION_MODES: &[&str] = &["default", "acceptEdits", "plan"];

/// The operator's settings of the driver (`[server.claude]`-like; from the environment today).
#[derive(Debug, Clone)]
pub struct ClaudeConfig {
    /// The CLI: `claude` on the command's `PATH`, or a path.
    pub binary: String,
    /// `ANTHROPIC_BASE_URL` (a gateway or a local server); `None`: Anthropic's API.
    pub base_url: Option<String>,
    /// `ANTHROPIC_API_KEY` passed to the CLI. Never logged.
    pub api_key: Option<String>,
    /// Where agents' homes live (`<dir>/<agent id>`): their Claude Code sessions.
    pub homes: PathBuf,
}

impl ClaudeConfig {
    /// From the worker's environment: `CFLOW_CLAUDE_BIN` (default `claude`),
    /// `ANTHROPIC_BASE_URL`, `ANTHROPIC_API_KEY`; homes under `data_dir/agents`.
    pub fn from_env(data_dir: &Path) -> Self {
        Self {
            binary: std::env::var("CFLOW_CLAUDE_BIN").unwrap_or_else(|_| "claude".into()),
            base_url: std::env::var("ANTHROPIC_BASE_URL")
                .ok()
                .filter(|s| !s.is_empty()),
            api_key: std::env::var("ANTHROPIC_API_KEY")
                .ok()
                .filter(|s| !s.is_empty()),
            homes: std::path::absolute(data_dir.join("agents"))
                .unwrap_or_else(|_| data_dir.join("agents")),
        }
    }

    /// The `host:port` the CLI must reach: the base URL's, or Anthropic's API.
    pub fn endpoint(&self) -> Result<String, String> {
        let Some(url) = &self.base_url else {
            return Ok("api.anthropic.com:443".to_string());
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!("ANTHROPIC_BASE_URL '{url}' has no scheme (http:// or https://)")
        })?;
        let authority = rest.split('/').next().unwrap_or("");
        if authority.is_empty() {
            return Err(format!("ANTHROPIC_BASE_URL '{url}' has no host"));
        }
        Ok(if authority.contains(':') {
            authority.to_string()
        } else if scheme == "https" {
            format!("{authority}:443")
        } else {
            format!("{authority}:80")
        })
    }
}

/// Runs [`JobSpec::Claude`] jobs through the sandboxed exec path.
pub struct ClaudeCodeDriver {
    exec: ExecDriver,
    config: ClaudeConfig,
}

impl ClaudeCodeDriver {
    pub fn new(exec: ExecDriver, config: ClaudeConfig) -> Self {
        Self { exec, config }
    }

    /// The configuration with the tenant's first Anthropic provider from the server's
    /// [`HostCall::Setup`](crate::host::HostCall::Setup): `Ok(None)` when there is no host or the
    /// tenant has no Anthropic provider (the worker's own configuration applies), `Err` when the
    /// server refuses (a provider whose key secret is missing, say).
    async fn tenant_config(&self, job: &Job) -> Result<Option<ClaudeConfig>, (String, bool)> {
        let Some(host) = &job.host else {
            return Ok(None);
        };
        let setup = match host.call(crate::host::HostCall::Setup).await {
            Ok(v) => serde_json::from_value::<crate::model::ModelSetup>(v).map_err(|e| {
                (
                    format!("the server's model setup does not parse: {e}"),
                    false,
                )
            })?,
            Err(crate::host::HostError::Unavailable(e)) => {
                return Err((
                    format!(
                        "cannot get the tenant's model provider from the server ({e}); the \
                         attempt is retried"
                    ),
                    true,
                ));
            }
            Err(e) => return Err((e.to_string(), false)),
        };
        let Some(p) = setup.providers.iter().find(|p| p.kind == "anthropic") else {
            return Ok(None);
        };
        let base_url = p.base_url.trim_end_matches('/');
        Ok(Some(ClaudeConfig {
            base_url: (base_url != "https://api.anthropic.com").then(|| base_url.to_string()),
            api_key: p.api_key.clone().or_else(|| self.config.api_key.clone()),
            ..self.config.clone()
        }))
    }

    /// Starts the MCP server of cflow's tools for this attempt: `None` when there is no host (no
    /// server to act for), no agent home to put the socket in, no tool the task allows, or no
    /// bridge the sandboxed CLI can run (each but the first logged). Else the server, the bridge
    /// program and the tools served.
    fn serve_tools(
        &self,
        job: &Job,
        spec: &ClaudeSpec,
        home: Option<&Path>,
        run: &CancellationToken,
    ) -> Option<(mcp::Serving, mcp::Bridge, Vec<&'static str>)> {
        let host = job.host.clone()?;
        let tools = mcp::allowed(&spec.allowed_tools);
        if tools.is_empty() {
            return None;
        }
        let unavailable = |why: String| {
            tracing::warn!(task = %job.task_id, "claude-code runs without cflow's tools: {why}");
        };
        let Some(home) = home else {
            unavailable("the job has no agent, so no home to serve them in".into());
            return None;
        };
        let (bridge, owner) = match self.bridge(job) {
            Ok(b) => b,
            Err(why) => {
                unavailable(why);
                return None;
            }
        };
        // The home must exist before the socket is bound in it; the sandbox hands it to its
        // user when it prepares the run.
        if let Err(e) = std::fs::create_dir_all(home) {
            unavailable(format!("cannot create {}: {e}", home.display()));
            return None;
        }
        let socket = mcp::socket_path(home);
        match mcp::Serving::start(socket.clone(), owner, host, &tools, run.clone()) {
            Ok(serving) => Some((serving, bridge, tools)),
            Err(e) => {
                unavailable(format!("cannot serve them on {}: {e}", socket.display()));
                None
            }
        }
    }

    /// The program the CLI runs as its `cflow` MCP server: the sandbox's launcher (`cflow` or
    /// `cflow-sandbox`, both have `mcp-bridge --socket PATH`) when it is in the sandbox's view,
    /// else the same pump in the host's `/usr/bin/python3`; with the sandbox's user that must own
    /// the socket.
    fn bridge(&self, job: &Job) -> Result<(mcp::Bridge, Option<(u32, u32)>), String> {
        match self.exec.placement(job, &[]) {
            Placement::Sandboxed(sandbox, _) => {
                let config = sandbox.config();
                let owner = config.workspaces.owner;
                let bin = std::path::absolute(&config.launcher)
                    .unwrap_or_else(|_| config.launcher.clone());
                // The sandbox hides these and replaces `/tmp` with a private one.
                let hidden = |p: &Path| {
                    config
                        .hidden
                        .iter()
                        .map(PathBuf::as_path)
                        .chain([Path::new("/tmp")])
                        .find(|h| p.starts_with(h))
                        .map(Path::to_path_buf)
                };
                let Some(h) = hidden(&bin) else {
                    return Ok((mcp::Bridge::launcher(bin), owner));
                };
                let python = PathBuf::from("/usr/bin/python3");
                if python.is_file() && hidden(&python).is_none() {
                    return Ok((mcp::Bridge::python(python), owner));
                }
                Err(format!(
                    "the cflow binary {} is under {}, which the sandbox hides, and there is no                      /usr/bin/python3 to bridge with — install cflow outside /root, /home, /tmp                      and the data directory (e.g. in /usr/local/bin) to give claude-code agents                      cflow's tools",
                    bin.display(),
                    h.display()
                ))
            }
            Placement::Plain(_) => Ok((
                mcp::Bridge::launcher(cflow_sandbox::host::find_launcher()?),
                None,
            )),
        }
    }

    async fn run_job(
        &self,
        job: Job,
        events: mpsc::Sender<JobEvent>,
        cancel: CancellationToken,
    ) -> Result<JobOutcome, DriverError> {
        let spec = match &job.spec {
            JobSpec::Claude(spec) => spec.clone(),
            other => {
                return Err(DriverError::Unsupported {
                    driver: "claude-code",
                    spec: other.name(),
                });
            }
        };
        // The tenant's Anthropic provider (its key from the tenant's secrets), when the server
        // resolves one; else the worker's own configuration.
        let config = match self.tenant_config(&job).await {
            Ok(c) => c,
            Err((message, retryable)) => {
                return Err(DriverError::Sandbox { message, retryable });
            }
        };
        let config = config.as_ref().unwrap_or(&self.config);
        let endpoint = config.endpoint().map_err(|message| DriverError::Sandbox {
            message,
            retryable: false,
        })?;
        let home = (!job.agent_id.is_empty()).then(|| self.config.homes.join(safe(&job.agent_id)));
        let mut argv = vec![
            self.config.binary.clone(),
            "-p".into(),
            spec.prompt.clone(),
            "--output-format".into(),
            "stream-json".into(),
            "--verbose".into(),
            "--permission-mode".into(),
            spec.permission_mode
                .clone()
                .unwrap_or_else(|| "acceptEdits".into()),
        ];
        if let Some(m) = &spec.model {
            argv.extend(["--model".into(), m.clone()]);
        }
        if let Some(n) = spec.max_turns {
            argv.extend(["--max-turns".into(), n.to_string()]);
        }
        // The tools cflow serves this attempt, if any, and the run's own token: a host that
        // says the attempt is lost stops the run.
        let run = cancel.child_token();
        let serving = self.serve_tools(&job, &spec, home.as_deref(), &run);
        let mut allowed = spec.allowed_tools.clone();
        if let Some((serving, bridge, tools)) = &serving {
            argv.extend([
                "--mcp-config".into(),
                mcp::config_json(bridge, serving.socket()),
                "--strict-mcp-config".into(),
            ]);
            // A restricting list already names the server tools it allows.
            if allowed.is_empty() {
                allowed.extend(tools.iter().map(|t| mcp::tool_name(t)));
            }
        }
        if !allowed.is_empty() {
            argv.push("--allowedTools".into());
            argv.extend(allowed);
        }
        let resume = match &home {
            Some(h) => {
                let h = h.clone();
                tokio::task::spawn_blocking(move || last_session(&h))
                    .await
                    .ok()
                    .flatten()
            }
            None => None,
        };
        if let Some((id, _)) = &resume {
            argv.extend(["--resume".into(), id.clone()]);
        }
        let mut env = vec![
            (
                "PATH".to_string(),
                "/usr/local/bin:/usr/bin:/bin".to_string(),
            ),
            // No telemetry, update checks or other calls: the model endpoint is all it reaches.
            (
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC".into(),
                "1".into(),
            ),
            ("DISABLE_AUTOUPDATER".into(), "1".into()),
        ];
        if let Some(url) = &config.base_url {
            env.push(("ANTHROPIC_BASE_URL".into(), url.clone()));
        }
        if let Some(key) = &config.api_key {
            env.push(("ANTHROPIC_API_KEY".into(), key.clone()));
        }
        if let Some(h) = &home {
            env.push(("HOME".into(), h.display().to_string()));
        }
        env.extend(spec.env.iter().cloned());
        let exec_spec = ExecSpec {
            command: ExecCommand::Program {
                program: argv[0].clone(),
                args: argv[1..].to_vec(),
            },
            env,
            cwd: None,
            workspace: spec.workspace.clone(),
            artifacts: spec.artifacts.clone(),
            network: None,
        };
        // The session file must be where `--resume` looks: the new workspace's folder. The
        // workspace path is known only once the run is prepared, so the CLI is told to resume
        // and the file is put in place by a hook before the command starts.
        let extras = Extras {
            home: home.clone(),
            egress: vec![endpoint],
            session: resume.map(|(id, file)| SessionHook { id, file }),
        };
        let mut job = job;
        job.spec = JobSpec::Exec(exec_spec.clone());
        // The stream's lines become agent events, next to the raw output.
        let (tx, rx) = mpsc::channel(64);
        let parser = tokio::spawn(parse_stream(rx, events));
        let outcome = self.exec.run_spec(job, exec_spec, extras, tx, run).await;
        if let Some((serving, _, _)) = serving {
            serving.close().await;
        }
        let _ = parser.await;
        let mut outcome = outcome?;
        apply_result(&mut outcome);
        if let (Some(h), Some(id)) = (
            &home,
            outcome
                .result
                .as_ref()
                .and_then(|r| r.get("session_id"))
                .and_then(Value::as_str),
        ) {
            let _ = std::fs::write(h.join(LAST_SESSION), id);
        }
        Ok(outcome)
    }
}

/// The longest stream line parsed into events; longer ones are only logged.
const MAX_LINE: usize = 1 << 20;
/// The most of a tool's result an event carries.
const MAX_TOOL_RESULT: usize = 4096;

/// Forwards every event, and turns each complete stdout line of the stream into
/// [`JobEvent::Agent`] events: `session` (init), `assistant_text`, `tool_use`, `tool_result`,
/// `result`.
async fn parse_stream(mut rx: mpsc::Receiver<JobEvent>, events: mpsc::Sender<JobEvent>) {
    let mut line = Vec::new();
    let mut listening = true;
    while let Some(ev) = rx.recv().await {
        let mut parsed = Vec::new();
        if let JobEvent::Stdout(bytes) = &ev {
            for &b in bytes {
                if b == b'\n' {
                    if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                        parsed.extend(agent_events(&v));
                    }
                    line.clear();
                } else if line.len() < MAX_LINE {
                    line.push(b);
                }
            }
        }
        if listening {
            listening = events.send(ev).await.is_ok();
        }
        for p in parsed {
            if listening {
                listening = events.send(p).await.is_ok();
            }
        }
    }
}

/// The agent events of one `stream-json` line.
fn agent_events(v: &Value) -> Vec<JobEvent> {
    let ev = |kind: &str, data: Value| JobEvent::Agent {
        kind: kind.to_string(),
        data,
    };
    let blocks = || {
        v.pointer("/message/content")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    match v.get("type").and_then(Value::as_str) {
        Some("system") if v.get("subtype").and_then(Value::as_str) == Some("init") => {
            vec![ev(
                "session",
                serde_json::json!({"session_id": v.get("session_id"), "model": v.get("model")}),
            )]
        }
        Some("assistant") => blocks()
            .iter()
            .filter_map(|b| match b.get("type").and_then(Value::as_str) {
                Some("text") => Some(ev("assistant_text", serde_json::json!({"text": b.get("text")}))),
                Some("tool_use") => Some(ev(
                    "tool_use",
                    serde_json::json!({"id": b.get("id"), "name": b.get("name"), "input": b.get("input")}),
                )),
                _ => None,
            })
            .collect(),
        Some("user") => blocks()
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
            .map(|b| {
                let content = match b.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                let mut cut = content.len().min(MAX_TOOL_RESULT);
                while !content.is_char_boundary(cut) {
                    cut -= 1;
                }
                ev(
                    "tool_result",
                    serde_json::json!({
                        "tool_use_id": b.get("tool_use_id"),
                        "is_error": b.get("is_error").and_then(Value::as_bool).unwrap_or(false),
                        "content": &content[..cut],
                        "truncated": cut < content.len(),
                    }),
                )
            })
            .collect(),
        Some("result") => vec![ev(
            "result",
            serde_json::json!({
                "is_error": v.get("is_error"),
                "num_turns": v.get("num_turns"),
                "total_cost_usd": v.get("total_cost_usd"),
            }),
        )],
        _ => Vec::new(),
    }
}

/// The file in an agent's home naming its last session.
const LAST_SESSION: &str = ".cflow-last-session";

/// The agent's last session: its id and where its transcript is.
fn last_session(home: &Path) -> Option<(String, PathBuf)> {
    let id = std::fs::read_to_string(home.join(LAST_SESSION)).ok()?;
    let id = id.trim().to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return None;
    }
    let projects = home.join(".claude").join("projects");
    for dir in std::fs::read_dir(&projects).ok()?.flatten() {
        let candidate = dir.path().join(format!("{id}.jsonl"));
        if std::fs::symlink_metadata(&candidate).is_ok_and(|m| m.is_file()) {
            return Some((id, candidate));
        }
    }
    None
}

/// Puts a session transcript where `--resume` will look for it in the new workspace.
#[derive(Debug, Clone)]
pub(crate) struct SessionHook {
    id: String,
    file: PathBuf,
}

impl SessionHook {
    /// Copies the transcript into `<home>/.claude/projects/<escaped cwd>/`. Best effort: without
    /// it the CLI says it found no conversation and the task fails with that message.
    pub(crate) fn install(&self, home: &Path, cwd: &Path, owner: Option<(u32, u32)>) {
        let folder: String = cwd
            .display()
            .to_string()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let dir = home.join(".claude").join("projects").join(folder);
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        let target = dir.join(format!("{}.jsonl", self.id));
        if std::fs::copy(&self.file, &target).is_ok()
            && let Some((uid, gid)) = owner
        {
            let _ = std::os::unix::fs::lchown(&dir, Some(uid), Some(gid));
            let _ = std::os::unix::fs::lchown(&target, Some(uid), Some(gid));
        }
    }
}

/// Reads the stream's final `result` event into the outcome: the task's result object, and a
/// failure when the CLI reported one.
fn apply_result(outcome: &mut JobOutcome) {
    let tail = String::from_utf8_lossy(&outcome.stdout.tail).into_owned();
    let result = tail
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .find(|v| v.get("type").and_then(Value::as_str) == Some("result"));
    let Some(r) = result else {
        let stderr = outcome.stderr.text();
        outcome.result_error = Some(match outcome.end {
            JobEnd::Exited { code: 127 } => {
                "the Claude Code CLI is not installed on this worker — install it with \
                 `npm install -g @anthropic-ai/claude-code` (or set CFLOW_CLAUDE_BIN)"
                    .to_string()
            }
            _ => format!(
                "Claude Code ended without a result event ({}){}",
                outcome.end.describe(),
                if stderr.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", stderr.trim())
                }
            ),
        });
        if outcome.end.is_success() {
            outcome.end = JobEnd::Exited { code: 1 };
        }
        return;
    };
    // `modelUsage`: per model, the tokens and the CLI's own cost figure.
    if let Some(models) = r.get("modelUsage").and_then(Value::as_object) {
        let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        for (model, u) in models {
            // The CLI may decorate the name (`claude-opus-4-8[1m]`): price by the plain name.
            let name = model.split('[').next().unwrap_or(model).to_string();
            outcome.model_usage.push(crate::driver::ModelUsage {
                provider: "anthropic".into(),
                model: name,
                input_tokens: n(u, "inputTokens"),
                output_tokens: n(u, "outputTokens"),
                cache_read_tokens: n(u, "cacheReadInputTokens"),
                cache_write_tokens: n(u, "cacheCreationInputTokens"),
                reported_cost_usd: u.get("costUSD").and_then(Value::as_f64),
            });
        }
    }
    let pick = |k: &str| r.get(k).cloned().unwrap_or(Value::Null);
    let is_error = r.get("is_error").and_then(Value::as_bool).unwrap_or(false);
    outcome.result = Some(serde_json::json!({
        "result": pick("result"),
        "subtype": pick("subtype"),
        "is_error": is_error,
        "session_id": pick("session_id"),
        "num_turns": pick("num_turns"),
        "total_cost_usd": pick("total_cost_usd"),
        "usage": pick("usage"),
        "duration_ms": pick("duration_ms"),
    }));
    outcome.result_error = None;
    if is_error && outcome.end.is_success() {
        outcome.end = JobEnd::Exited { code: 1 };
    }
    if is_error {
        let msg = r
            .get("result")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| r.get("subtype").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| "error".into());
        outcome.result_error = Some(format!("Claude Code reported an error: {msg}"));
    }
}

fn safe(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Driver for ClaudeCodeDriver {
    fn kind(&self) -> &'static str {
        "claude-code"
    }

    fn isolation(&self) -> Isolation {
        self.exec.isolation()
    }

    fn run(
        &self,
        job: Job,
        events: mpsc::Sender<JobEvent>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JobOutcome, DriverError>> {
        Box::pin(self.run_job(job, events, cancel))
    }
}
