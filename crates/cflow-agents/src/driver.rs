//! The driver boundary: what one attempt of a task asks a driver to run ([`Job`]), what the
//! driver streams while it runs ([`JobEvent`]), how the attempt ended ([`JobOutcome`]), and the
//! [`Driver`] trait that `exec`, `noop` and (later) `claude-code` and `llm` implement.

use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A boxed, sendable future: what [`Driver::run`] returns, so the trait stays object-safe and the
/// scheduler can hold `Arc<dyn Driver>` for every kind.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How an agent does work. One value serves many jobs concurrently; per-job state lives in the
/// future that [`Driver::run`] returns.
pub trait Driver: Send + Sync {
    /// The name tasks and agents use to pick this driver (`exec`, `noop`, ...).
    fn kind(&self) -> &'static str;

    /// The isolation this driver's jobs get on this host, so `cflow doctor` can report it
    /// without running a job. Every [`JobOutcome`] repeats it for the task record.
    fn isolation(&self) -> Isolation;

    /// Runs one attempt to its end.
    ///
    /// Output and progress are streamed to `events` as they happen; a full channel slows the job
    /// down (backpressure) rather than buffering without bound, and a closed channel is ignored
    /// (the outcome still carries the captured output). Cancelling `cancel` stops the job and
    /// yields [`JobEnd::Cancelled`]. When the returned future completes, nothing the job started
    /// is still running (see the crate's invariant).
    fn run(
        &self,
        job: Job,
        events: mpsc::Sender<JobEvent>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JobOutcome, DriverError>>;
}

/// One attempt of one task, as a driver sees it.
#[derive(Debug, Clone)]
pub struct Job {
    /// The task this attempt belongs to; exec passes it to the command as `CFLOW_TASK_ID`.
    pub task_id: String,
    /// Which attempt this is (1-based); exec passes it as `CFLOW_ATTEMPT`, so a command can build
    /// an idempotency key for its side effects (delivery is at-least-once).
    pub attempt: u32,
    /// What to run; each driver accepts the variants it understands.
    pub spec: JobSpec,
    /// Wall-clock limit for the attempt; past it the job is stopped and ends in
    /// [`JobEnd::TimedOut`].
    pub timeout: Duration,
    /// The most bytes kept of each of stdout and stderr (separately). Bytes beyond it are read
    /// and discarded, so the job never blocks on a full pipe and memory stays bounded.
    pub output_cap: usize,
    /// The admin's sandbox settings for this job's tenant and agent (from the server), applied
    /// over the worker's default policy. `None`: the defaults.
    pub sandbox: Option<cflow_sandbox::host::Settings>,
    /// The agent running the attempt: drivers that keep state per agent (a model session to
    /// resume) key it by this. Empty when there is none (tests, benchmarks).
    pub agent_id: String,
    /// The attempt's fencing epoch (0 outside a scheduler: tests, benchmarks).
    pub epoch: i64,
    /// The server as this attempt's model loop sees it (server-side tools, budgets, cost).
    /// `None` outside a worker: model drivers then run without server-side tools and without
    /// budget enforcement, and say so.
    pub host: Option<crate::host::HostHandle>,
}

/// The driver-specific part of a [`Job`]. It grows with the drivers (issue 5 adds model work).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum JobSpec {
    /// A command, for the `exec` driver.
    Exec(ExecSpec),
    /// Nothing at all, for the `noop` benchmark driver (which also ignores any other spec).
    Noop,
    /// A prompt for the Claude Code CLI, for the `claude-code` driver.
    Claude(crate::claude::ClaudeSpec),
    /// A prompt for cflow's own agent loop, for the `llm` driver.
    Llm(Box<crate::model::LlmSpec>),
}

/// A command for the `exec` driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    pub command: ExecCommand,
    /// Variables added to the command's environment, after the server's allow-listed variables
    /// (see `ExecConfig::pass_env`), so they win on a clash.
    pub env: Vec<(String, String)>,
    /// The working directory; `None` means the server's own. It must exist. Unsandboxed only:
    /// a sandboxed command works in its workspace.
    pub cwd: Option<PathBuf>,
    /// Where the sandboxed command's workspace comes from (default: empty).
    pub workspace: Option<cflow_sandbox::workspace::Source>,
    /// Which files of the workspace to keep as artifacts (the patch is always taken).
    pub artifacts: Option<cflow_sandbox::artifacts::Spec>,
    /// The network the task asks for; at most what its policy allows.
    pub network: Option<cflow_sandbox::Network>,
}

/// What the `exec` driver starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecCommand {
    /// A program (looked up on `PATH` unless it contains a `/`) with its arguments, no shell.
    Program { program: String, args: Vec<String> },
    /// A command line run with `/bin/sh -c`. A missing program inside it is the shell's
    /// business: exit code 127 and the shell's message on stderr, not a spawn error.
    Shell(String),
}

impl ExecSpec {
    /// A command line for `/bin/sh -c`.
    pub fn shell(command: impl Into<String>) -> Self {
        Self {
            command: ExecCommand::Shell(command.into()),
            env: Vec::new(),
            cwd: None,
            workspace: None,
            artifacts: None,
            network: None,
        }
    }

    /// A program with arguments, started without a shell.
    pub fn program<I, S>(program: impl Into<String>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            command: ExecCommand::Program {
                program: program.into(),
                args: args.into_iter().map(Into::into).collect(),
            },
            env: Vec::new(),
            cwd: None,
            workspace: None,
            artifacts: None,
            network: None,
        }
    }

    /// Adds one environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets the working directory.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }
}

/// Which output stream a chunk or a truncation belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }
}

/// Something a running job reports before it ends, in the order it happened per stream.
/// Issue 5 adds model and tool events; match with a wildcard arm.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum JobEvent {
    /// Bytes the command wrote to stdout (only bytes within the output cap are sent).
    Stdout(Vec<u8>),
    /// Bytes the command wrote to stderr (only bytes within the output cap are sent).
    Stderr(Vec<u8>),
    /// The stream reached the output cap; later bytes are discarded. Sent at most once per stream.
    Truncated { stream: OutputStream },
    /// A model agent's step, parsed by its driver: `kind` is `assistant_text`, `tool_use` or
    /// `tool_result`; `data` the step's content (tool results capped).
    Agent {
        kind: String,
        data: serde_json::Value,
    },
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobEnd {
    /// The command exited by itself with this code.
    Exited { code: i32 },
    /// The command was killed by a signal that cflow did not send (for example a crash).
    Signalled { signal: i32 },
    /// The job ran past its timeout and was stopped.
    TimedOut,
    /// The job was cancelled through its token and stopped.
    Cancelled,
    /// The sandbox killed the job's processes because they went over a limit.
    Killed { limit: KilledBy },
}

/// The limit that made the sandbox kill a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KilledBy {
    /// The tree's memory limit (the kernel's OOM killer ended a process of it).
    Memory,
    /// The workspace's disk quota.
    Disk,
}

impl KilledBy {
    pub fn as_str(self) -> &'static str {
        match self {
            KilledBy::Memory => "memory",
            KilledBy::Disk => "disk",
        }
    }
}

impl JobEnd {
    /// Whether the attempt succeeded: exit code 0.
    pub fn is_success(self) -> bool {
        matches!(self, JobEnd::Exited { code: 0 })
    }

    /// How the attempt record states it: `exit 3`, `signal 9`, `timed_out`, `killed: cancelled`,
    /// `killed: memory`, `killed: disk`.
    pub fn describe(self) -> String {
        match self {
            JobEnd::Exited { code } => format!("exit {code}"),
            JobEnd::Signalled { signal } => format!("signal {signal}"),
            JobEnd::TimedOut => "timed_out".to_string(),
            JobEnd::Cancelled => "killed: cancelled".to_string(),
            JobEnd::Killed { limit } => format!("killed: {}", limit.as_str()),
        }
    }
}

/// One output stream as kept on the attempt record: its first `output_cap` bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// The kept bytes, at most the job's `output_cap`.
    pub bytes: Vec<u8>,
    /// Whether bytes beyond the cap were discarded.
    pub truncated: bool,
    /// How many bytes the stream produced in all (kept or discarded), as far as it was read.
    pub total_bytes: u64,
    /// The stream's last bytes (up to [`TAIL_BYTES`]), kept even past the cap: where a final
    /// result line is (the `claude-code` driver's `result` event).
    pub tail: Vec<u8>,
}

/// How many of a stream's last bytes [`Captured::tail`] keeps.
pub const TAIL_BYTES: usize = 256 * 1024;

impl Captured {
    /// The kept bytes as text, with invalid UTF-8 replaced.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.bytes)
    }
}

/// What isolation a job ran under. Reported on every outcome so the task record and
/// `cflow doctor` say plainly what was and was not contained. The sandbox (issue 4) adds the
/// isolated variants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Isolation {
    /// No isolation at all, and why.
    None { reason: String },
    /// The sandbox, with the state of each of its layers.
    Sandboxed { layers: cflow_sandbox::Layers },
}

impl Isolation {
    /// Whether any isolation layer was active.
    pub fn is_isolated(&self) -> bool {
        match self {
            Isolation::None { .. } => false,
            Isolation::Sandboxed { layers } => layers.values().any(|s| s.is_active()),
        }
    }

    /// One line for the attempt record: `none: <why>`, or `sandbox: <active layers>` followed by
    /// `; missing: <layer> (<why>)` for each layer that was not active.
    pub fn summary(&self) -> String {
        match self {
            Isolation::None { reason } => format!("none: {reason}"),
            Isolation::Sandboxed { layers } => {
                let active: Vec<&str> = layers
                    .iter()
                    .filter(|(_, s)| s.is_active())
                    .map(|(l, _)| l.as_str())
                    .collect();
                let mut line = format!("sandbox: {}", active.join(", "));
                for (layer, state) in layers.iter().filter(|(_, s)| !s.is_active()) {
                    line.push_str(&format!("; {layer} {state}"));
                }
                line
            }
        }
    }
}

/// The end state of one attempt.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct JobOutcome {
    pub end: JobEnd,
    pub stdout: Captured,
    pub stderr: Captured,
    /// From just before the spawn to the end of supervision (the group killed, the leader reaped).
    pub wall_time: Duration,
    /// User plus system CPU time of the command's leader process and of the children it waited
    /// for, at clock-tick granularity (usually 10 ms). `None` when it could not be read (the
    /// process had already been reaped, or `/proc` is unavailable): never a guess.
    pub cpu_time: Option<Duration>,
    /// The JSON object from a final `CFLOW_RESULT {...}` stdout line (see
    /// [`RESULT_MARKER`](crate::RESULT_MARKER)).
    pub result: Option<serde_json::Value>,
    /// Why a `CFLOW_RESULT` line was present but not used (invalid JSON, not an object).
    pub result_error: Option<String>,
    pub isolation: Isolation,
    /// What the sandbox saw (layers, denials, limits hit), for sandboxed jobs.
    pub sandbox: Option<cflow_sandbox::spec::RunReport>,
    /// What the job produced: the workspace's patch, files matching the task's globs.
    pub artifacts: Vec<cflow_sandbox::artifacts::Artifact>,
    /// The model calls the job made, by model (model drivers only): what cost and budgets are
    /// computed from.
    pub model_usage: Vec<ModelUsage>,
}

/// Tokens one job spent on one model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelUsage {
    /// `anthropic`, `openai`, … (the API spoken).
    pub provider: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// What the tool itself reported it cost, when it did (Claude Code does); cflow's own
    /// figure comes from its price table.
    pub reported_cost_usd: Option<f64>,
}

impl JobOutcome {
    /// An outcome with no output, no result and zero wall time; drivers fill in the rest.
    pub fn new(end: JobEnd, isolation: Isolation) -> Self {
        Self {
            end,
            stdout: Captured::default(),
            stderr: Captured::default(),
            wall_time: Duration::ZERO,
            cpu_time: None,
            result: None,
            result_error: None,
            isolation,
            sandbox: None,
            artifacts: Vec::new(),
            model_usage: Vec::new(),
        }
    }
}

/// Why a driver could not run a job at all. A job that ran and failed is not an error: it is a
/// [`JobOutcome`] with a non-success [`JobEnd`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    #[error("{}", spawn_message(program, source))]
    SpawnFailed {
        program: String,
        source: std::io::Error,
    },
    #[error(
        "working directory '{}' is not usable ({source}) — create it, or fix the task's working directory",
        path.display()
    )]
    WorkingDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the {driver} driver cannot run a {spec} job — pick a driver that supports it")]
    Unsupported {
        driver: &'static str,
        spec: &'static str,
    },
    #[error("unknown driver '{kind}': expected one of {known}")]
    UnknownDriver { kind: String, known: String },
    /// The sandbox could not run the job (a missing layer, a workspace that could not be made,
    /// a network the policy does not grant). The message names the cause and the fix.
    #[error("{message}")]
    Sandbox { message: String, retryable: bool },
    #[error("I/O error while supervising the job: {0}")]
    Io(#[from] std::io::Error),
}

/// Says what to do about a failed spawn, not just the errno.
fn spawn_message(program: &str, source: &std::io::Error) -> String {
    match source.kind() {
        std::io::ErrorKind::NotFound => {
            format!("command not found: '{program}' — is it installed and on PATH?")
        }
        std::io::ErrorKind::PermissionDenied => format!(
            "permission denied running '{program}' — is the file executable, and may the server's user run it?"
        ),
        _ => format!("cannot start '{program}': {source}"),
    }
}

impl JobSpec {
    /// A short name for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            JobSpec::Exec(_) => "exec",
            JobSpec::Noop => "noop",
            JobSpec::Claude(_) => "claude-code",
            JobSpec::Llm(_) => "llm",
        }
    }
}
