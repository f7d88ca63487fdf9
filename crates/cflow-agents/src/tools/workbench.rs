//! The [`Workbench`]: the worker-side tools of the `llm` driver's model loop — `read_file`,
//! `write_file`, `edit_file`, `list_files`, `search_files` on the job's workspace, and
//! `run_command` in the sandbox.
//!
//! # Life of a workbench
//! [`Workbench::open`] makes the job's workspace from the task's `workspace` source: in the
//! sandbox's workspace root (`Sandbox::create_workspace`, live until the end so no sweep takes
//! it) when the exec driver is sandboxed, else in a fresh temporary directory. Every
//! `run_command` is one sandboxed run of the exec driver attached to that workspace
//! (`ExecDriver::run_in`): exec's policy for the job (the admin's settings, the task's network
//! at most what they allow, its environment), its process group, output caps, timeout, cancel
//! kill sequence, disk quota and report parsing. [`Workbench::close`] collects the artifacts
//! exactly as a sandboxed exec job's (the patch against the starting commit, taken by git inside
//! a sandbox; files matching the task's globs), removes the workspace or keeps a failed one for
//! `keep_failed_secs`, and sums up what the sandbox saw over all runs for `detail.sandbox`.
//!
//! # Invariants
//! - **Confinement.** The file tools reach only the workspace's own tree: paths are relative to
//!   it (or absolute inside it), `..` never leaves it, and no symlink is ever followed, for reads
//!   and for writes (see [`fs`](super::fs): resolution is `openat` with `O_NOFOLLOW`, one
//!   component at a time, from a descriptor of the root). Writes replace the target by a new
//!   file rather than writing through it, and the new file belongs to the sandbox's user, so
//!   later sandboxed commands can change it.
//! - **Nothing runs outside the sandbox** when the exec driver is sandboxed: the file tools run
//!   no program, and git runs (for the patch) only inside a sandbox. When the operator turned
//!   the sandbox off (or an admin exempted the job), `run_command` runs like an unsandboxed exec
//!   job, in the workspace directory, and [`Workbench::isolation`] says so; the patch is then
//!   not taken (it would need git on the task's `.git` outside a sandbox).
//! - **Bounded output.** Every tool's output is at most [`TOOL_OUTPUT_CAP`] bytes, cut on a
//!   character boundary with a line saying how much was cut.

use super::file_tools::{
    edit_file, floor_char_boundary, list_files, parse, read_file, search_files, write_file,
};
use super::fs::Confined;
use super::{TOOL_OUTPUT_CAP, ToolOutput, Toolbox};
use crate::driver::{
    BoxFuture, Driver, DriverError, ExecCommand, ExecSpec, Isolation, Job, JobEnd, JobOutcome,
    JobSpec, KilledBy,
};
use crate::exec::{ExecDriver, Extras, Placement, apply_network, safe_id};
use crate::model::LlmSpec;
use cflow_sandbox::artifacts::{self, Artifact};
use cflow_sandbox::host::Sandbox;
use cflow_sandbox::spec::{MAX_DENIALS_KEPT, RunReport};
use cflow_sandbox::workspace::{self, Workspace};
use cflow_sandbox::{Layers, Network};
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The workbench's tools, in the order [`Toolbox::defs`] lists them.
pub const TOOL_NAMES: [&str; 6] = [
    "read_file",
    "write_file",
    "edit_file",
    "list_files",
    "search_files",
    "run_command",
];

/// `run_command`'s default timeout, and its largest.
pub const DEFAULT_COMMAND_TIMEOUT_SECS: u64 = 300;
pub const MAX_COMMAND_TIMEOUT_SECS: u64 = 3600;

/// The job's workspace and the tools that work on it.
pub struct Workbench {
    files: Arc<Confined>,
    root: PathBuf,
    exec: ExecDriver,
    /// The job, as each `run_command` is run (its spec, timeout and output cap replaced).
    job: Job,
    env: Vec<(String, String)>,
    network: Option<Network>,
    artifacts: artifacts::Spec,
    place: Place,
    isolation: Isolation,
    /// The tools the model may use; `None`: all.
    allowed: Option<Vec<String>>,
    /// When the job's time is up (`run_command` timeouts are capped by what is left).
    deadline: Instant,
    runs: Mutex<Runs>,
}

/// Where the workspace lives; `None` once it has been ended.
enum Place {
    Sandboxed {
        sandbox: Arc<Sandbox>,
        workspace: Option<Workspace>,
    },
    /// A temporary directory of its own (removed at the end), the workspace inside it.
    Plain {
        temp: PathBuf,
        workspace: Option<Workspace>,
    },
}

/// What the sandbox saw over all runs, for `detail.sandbox`.
#[derive(Debug, Default)]
struct Runs {
    count: u64,
    layers: Option<Layers>,
    denied: Vec<String>,
    denied_total: u64,
    limits_hit: Vec<String>,
    memory_peak_bytes: Option<u64>,
    cpu_time_ms: Option<u64>,
}

/// What [`Workbench::close`] hands the attempt record.
#[derive(Debug)]
pub struct WorkbenchEnd {
    pub artifacts: Vec<Artifact>,
    /// JSON summary for the attempt's `detail.sandbox`: the fields of exec's run report (layers
    /// of the last run, all denials of all `run_command` calls, limits hit, peak memory, CPU
    /// time, the kept workspace, artifacts skipped) plus `runs`, the number of sandboxed runs.
    /// `None` when unsandboxed with nothing to report.
    pub sandbox: Option<Value>,
}

fn sandbox_error(message: impl Into<String>, retryable: bool) -> DriverError {
    DriverError::Sandbox {
        message: message.into(),
        retryable,
    }
}

fn joined<T>(r: Result<T, tokio::task::JoinError>, what: &str) -> Result<T, DriverError> {
    r.map_err(|e| std::io::Error::other(format!("{what} panicked: {e}")).into())
}

impl Workbench {
    /// Creates the job's workspace from `spec.workspace` (default empty): in the sandbox's
    /// workspace root when `exec` is sandboxed for this job, else a fresh temporary directory.
    pub async fn open(
        exec: &ExecDriver,
        job: &Job,
        spec: &LlmSpec,
    ) -> Result<Workbench, DriverError> {
        let source = spec.workspace.clone().unwrap_or_default();
        source
            .validate()
            .map_err(|m| sandbox_error(format!("invalid workspace source: {m}"), false))?;
        let artifacts = spec.artifacts.clone().unwrap_or_default();
        artifacts.validate().map_err(|m| sandbox_error(m, false))?;
        let id = format!("{}-{}", safe_id(&job.task_id), job.attempt);
        let (place, files, isolation) = match exec.placement(job, &[]) {
            Placement::Sandboxed(sandbox, mut policy) => {
                apply_network(&mut policy, spec.network)?;
                let sb = Arc::clone(&sandbox);
                let made = tokio::task::spawn_blocking(move || {
                    let ws = sb.create_workspace(&id, &source).map_err(|e| {
                        let retryable = matches!(e, cflow_sandbox::host::PrepareError::Io(_));
                        sandbox_error(e.to_string(), retryable)
                    })?;
                    match Confined::open(&ws.path, sb.config().workspaces.owner) {
                        Ok(files) => Ok((ws, files)),
                        Err(e) => {
                            sb.finish_workspace(ws, true, &artifacts::Spec::default());
                            Err(sandbox_error(
                                format!("cannot open the workspace: {e}"),
                                true,
                            ))
                        }
                    }
                });
                let (ws, files) = joined(made.await, "workspace preparation")??;
                let place = Place::Sandboxed {
                    sandbox,
                    workspace: Some(ws),
                };
                (place, files, exec.isolation())
            }
            Placement::Plain(isolation) => {
                if spec.network.is_some_and(|n| n != Network::Full) {
                    return Err(sandbox_error(
                        "the task asks for a network setting, which only the sandbox provides, \
                         and the sandbox is off for it — drop the task's network field or run \
                         it where the sandbox is on",
                        false,
                    ));
                }
                let made = tokio::task::spawn_blocking(move || plain_workspace(&id, &source));
                let (temp, ws, files) = joined(made.await, "workspace preparation")?
                    .map_err(|m| sandbox_error(m, false))?;
                let place = Place::Plain {
                    temp,
                    workspace: Some(ws),
                };
                (place, files, isolation)
            }
        };
        let mut bench = Workbench {
            root: files.root().to_path_buf(),
            files: Arc::new(files),
            exec: exec.clone(),
            job: job.clone(),
            env: spec.env.clone(),
            network: spec.network,
            artifacts,
            place,
            isolation,
            allowed: None,
            deadline: Instant::now() + job.timeout,
            runs: Mutex::default(),
        };
        bench.restrict(&spec.allowed_tools);
        Ok(bench)
    }

    /// Restricts the tools to those named in `allowed` (the task's `allowed_tools`; names of
    /// server-side tools are ignored here). Empty: all tools.
    pub fn restrict(&mut self, allowed: &[String]) {
        self.allowed = (!allowed.is_empty()).then(|| allowed.to_vec());
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The isolation `run_command` gets (exec's for this job's policy).
    pub fn isolation(&self) -> Isolation {
        self.isolation.clone()
    }

    fn is_allowed(&self, name: &str) -> bool {
        self.allowed
            .as_ref()
            .is_none_or(|a| a.iter().any(|n| n == name))
    }

    /// Ends the job: collects artifacts like a sandboxed exec job, removes the workspace (kept
    /// on failure, when sandboxed, for `keep_failed_secs`), and returns what the attempt records.
    pub async fn close(mut self, succeeded: bool) -> WorkbenchEnd {
        let spec = self.artifacts.clone();
        let (artifacts, skipped, kept) = match &mut self.place {
            Place::Sandboxed { sandbox, workspace } => {
                let Some(ws) = workspace.take() else {
                    return WorkbenchEnd {
                        artifacts: Vec::new(),
                        sandbox: None,
                    };
                };
                let sb = Arc::clone(sandbox);
                let ended =
                    tokio::task::spawn_blocking(move || sb.finish_workspace(ws, succeeded, &spec))
                        .await;
                ended.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "ending a workbench's workspace panicked");
                    (
                        Vec::new(),
                        vec![format!("artifacts: collection failed: {e}")],
                        None,
                    )
                })
            }
            Place::Plain { temp, workspace } => {
                let (temp, ws) = (temp.clone(), workspace.take());
                let ended = tokio::task::spawn_blocking(move || plain_finish(&temp, ws, &spec));
                ended.await.unwrap_or_default()
            }
        };
        let sandboxed = matches!(self.place, Place::Sandboxed { .. });
        if !sandboxed && skipped.is_empty() {
            return WorkbenchEnd {
                artifacts,
                sandbox: None,
            };
        }
        let runs = std::mem::take(&mut *self.runs.lock().unwrap_or_else(|e| e.into_inner()));
        let layers = runs.layers.or_else(|| match &self.isolation {
            Isolation::Sandboxed { layers } => Some(layers.clone()),
            _ => None,
        });
        let report = RunReport {
            layers: layers.unwrap_or_default(),
            denied: runs.denied,
            denied_total: runs.denied_total,
            limits_hit: runs.limits_hit,
            memory_peak_bytes: runs.memory_peak_bytes,
            cpu_time_ms: runs.cpu_time_ms,
            workspace_kept: kept,
            artifacts_skipped: skipped,
        };
        let mut value = serde_json::to_value(&report).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut value {
            map.insert("runs".into(), json!(runs.count));
        }
        WorkbenchEnd {
            artifacts,
            sandbox: Some(value),
        }
    }

    /// Runs a file tool on a blocking thread.
    async fn blocking(
        &self,
        input: &Value,
        f: fn(&Confined, &Value) -> Result<String, String>,
    ) -> ToolOutput {
        let (files, input) = (Arc::clone(&self.files), input.clone());
        match tokio::task::spawn_blocking(move || f(&files, &input)).await {
            Ok(Ok(text)) => ToolOutput::ok(cap(text)),
            Ok(Err(message)) => ToolOutput::error(cap(message)),
            Err(e) => ToolOutput::error(format!("the tool failed unexpectedly: {e}")),
        }
    }

    async fn run_command(&self, input: &Value, cancel: &CancellationToken) -> ToolOutput {
        let input: RunInput = match parse(input) {
            Ok(i) => i,
            Err(e) => return ToolOutput::error(e),
        };
        let asked = input.timeout_secs.unwrap_or(DEFAULT_COMMAND_TIMEOUT_SECS);
        if !(1..=MAX_COMMAND_TIMEOUT_SECS).contains(&asked) {
            return ToolOutput::error(format!(
                "timeout_secs {asked} is out of range — give 1 to {MAX_COMMAND_TIMEOUT_SECS}"
            ));
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_secs(1) {
            return ToolOutput::error(
                "the job's time is up: no command can start — finish with what you have",
            );
        }
        let timeout = Duration::from_secs(asked).min(left);
        let sandboxed = matches!(self.place, Place::Sandboxed { .. });
        let spec = ExecSpec {
            command: ExecCommand::Shell(input.command),
            env: self.env.clone(),
            cwd: (!sandboxed).then(|| self.root.clone()),
            workspace: None,
            artifacts: None,
            network: if sandboxed { self.network } else { None },
        };
        let mut job = self.job.clone();
        job.spec = JobSpec::Exec(spec.clone());
        job.timeout = timeout;
        job.output_cap = TOOL_OUTPUT_CAP;
        // Nobody listens to the stream: the outcome's capture has what the model sees.
        let (events, _) = mpsc::channel(1);
        let shared = sandboxed.then(|| self.root.clone());
        let outcome = self
            .exec
            .run_in(job, spec, Extras::default(), shared, events, cancel.clone())
            .await;
        match outcome {
            Ok(outcome) => {
                if let Some(report) = &outcome.sandbox {
                    self.record(report);
                }
                ToolOutput::ok(cap(describe_run(&outcome, timeout)))
            }
            Err(e) => ToolOutput::error(cap(format!("the command could not run: {e}"))),
        }
    }

    fn record(&self, report: &RunReport) {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.count += 1;
        runs.layers = Some(report.layers.clone());
        let room = MAX_DENIALS_KEPT.saturating_sub(runs.denied.len());
        runs.denied.extend(report.denied.iter().take(room).cloned());
        runs.denied_total += report.denied_total;
        let room = MAX_DENIALS_KEPT.saturating_sub(runs.limits_hit.len());
        runs.limits_hit
            .extend(report.limits_hit.iter().take(room).cloned());
        if let Some(m) = report.memory_peak_bytes {
            runs.memory_peak_bytes = Some(runs.memory_peak_bytes.unwrap_or(0).max(m));
        }
        if let Some(c) = report.cpu_time_ms {
            runs.cpu_time_ms = Some(runs.cpu_time_ms.unwrap_or(0) + c);
        }
    }
}

impl Drop for Workbench {
    /// A workbench dropped without [`Workbench::close`] (an error, a panic, a dropped future)
    /// still ends its workspace: kept like a failed one when sandboxed, removed otherwise.
    fn drop(&mut self) {
        match &mut self.place {
            Place::Sandboxed { sandbox, workspace } => {
                if let Some(ws) = workspace.take() {
                    // Off the async threads when there is a runtime: ending it may sweep.
                    let sb = Arc::clone(sandbox);
                    let end = move || {
                        sb.abandon_workspace(ws);
                    };
                    match tokio::runtime::Handle::try_current() {
                        Ok(rt) => drop(rt.spawn_blocking(end)),
                        Err(_) => end(),
                    }
                }
            }
            Place::Plain { temp, workspace } => {
                if workspace.take().is_some() {
                    let _ = std::fs::remove_dir_all(&*temp);
                }
            }
        }
    }
}

/// Makes an unsandboxed workspace: `<tmp>/cflow-workbench-…/<id>` (blocking).
fn plain_workspace(
    id: &str,
    source: &workspace::Source,
) -> Result<(PathBuf, Workspace, Confined), String> {
    use std::os::unix::fs::DirBuilderExt;
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let base = std::path::absolute(std::env::temp_dir())
        .map_err(|e| format!("cannot find the temporary directory: {e}"))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let temp = base.join(format!(
        "cflow-workbench-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&temp)
        .map_err(|e| format!("cannot create a workspace under {}: {e}", base.display()))?;
    let config = workspace::Config {
        root: temp.clone(),
        keep_failed_for: Duration::ZERO,
        owner: None,
    };
    let made = Workspace::create(&config, id, source)
        .map_err(|e| e.to_string())
        .and_then(|ws| match Confined::open(&ws.path, None) {
            Ok(files) => Ok((ws, files)),
            Err(e) => Err(format!("cannot open the workspace: {e}")),
        });
    match made {
        Ok((ws, files)) => Ok((temp, ws, files)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&temp);
            Err(e)
        }
    }
}

/// Ends an unsandboxed workspace: the files matching the globs, no patch (git would run on the
/// task's `.git` outside a sandbox), then the temporary directory removed.
fn plain_finish(
    temp: &Path,
    ws: Option<Workspace>,
    spec: &artifacts::Spec,
) -> (Vec<Artifact>, Vec<String>, Option<PathBuf>) {
    let Some(ws) = ws else {
        return Default::default();
    };
    let refuse = |_: &[&str]| Err::<Vec<u8>, String>("not run".into());
    let collected = artifacts::collect(&ws.path, None, spec, &refuse);
    let mut skipped = collected.skipped;
    if ws.base_commit.is_some() {
        skipped.push(format!(
            "{}: not taken — the sandbox is off for this job, and cflow runs git on a task's \
             .git only inside a sandbox",
            artifacts::PATCH_NAME
        ));
    }
    if let Err(e) = std::fs::remove_dir_all(temp) {
        tracing::warn!(path = %temp.display(), error = %e, "could not remove a workbench's workspace");
    }
    (collected.artifacts, skipped, None)
}

impl Toolbox for Workbench {
    fn defs(&self) -> Vec<cflow_llm::ToolDef> {
        defs()
            .into_iter()
            .filter(|d| self.is_allowed(&d.name))
            .collect()
    }

    fn call<'a>(
        &'a self,
        name: &'a str,
        input: &'a Value,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            if !TOOL_NAMES.contains(&name) {
                return ToolOutput::error(format!(
                    "unknown tool '{name}' — the tools are: {}",
                    self.defs()
                        .iter()
                        .map(|d| d.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if !self.is_allowed(name) {
                return ToolOutput::error(format!(
                    "the tool '{name}' is not allowed for this task (its allowed_tools do not \
                     list it) — use one of the tools you were given"
                ));
            }
            if cancel.is_cancelled() {
                return ToolOutput::error("the job was cancelled");
            }
            match name {
                "read_file" => self.blocking(input, read_file).await,
                "write_file" => self.blocking(input, write_file).await,
                "edit_file" => self.blocking(input, edit_file).await,
                "list_files" => self.blocking(input, list_files).await,
                "search_files" => self.blocking(input, search_files).await,
                _ => self.run_command(input, cancel).await,
            }
        })
    }
}

fn tool(name: &str, description: &str, schema: Value) -> cflow_llm::ToolDef {
    cflow_llm::ToolDef {
        name: name.into(),
        description: description.into(),
        input_schema: schema,
    }
}

/// Every tool's definition, in [`TOOL_NAMES`] order.
fn defs() -> Vec<cflow_llm::ToolDef> {
    let path = json!({"type": "string", "description": "Path relative to the workspace root (an absolute path must lie inside the workspace)."});
    vec![
        tool(
            "read_file",
            "Read a text file of the workspace. Returns its text (the lines asked for), with a \
             note when the file continues. Binary files are refused; symlinks are not followed.",
            json!({"type": "object", "additionalProperties": false, "required": ["path"], "properties": {
                "path": path,
                "offset": {"type": "integer", "minimum": 1, "description": "First line to return (1-based; default 1)."},
                "limit": {"type": "integer", "minimum": 1, "description": "Most lines to return (default: as many as fit)."}
            }}),
        ),
        tool(
            "write_file",
            "Create or replace a file of the workspace with the given content (parent \
             directories are created). Returns the bytes written.",
            json!({"type": "object", "additionalProperties": false, "required": ["path", "content"], "properties": {
                "path": path,
                "content": {"type": "string", "description": "The whole new content of the file."}
            }}),
        ),
        tool(
            "edit_file",
            "Replace an exact piece of text in a file of the workspace. old_string must occur \
             exactly once (include surrounding lines to make it unique), or set replace_all to \
             replace every occurrence.",
            json!({"type": "object", "additionalProperties": false, "required": ["path", "old_string", "new_string"], "properties": {
                "path": path,
                "old_string": {"type": "string", "description": "The exact text to replace, whitespace included."},
                "new_string": {"type": "string", "description": "The text to put in its place."},
                "replace_all": {"type": "boolean", "description": "Replace every occurrence (default false)."}
            }}),
        ),
        tool(
            "list_files",
            "List a directory of the workspace: one path per line, relative to the workspace, \
             directories ending in '/', symlinks shown as 'name -> target'. .git is skipped; at \
             most 1000 entries.",
            json!({"type": "object", "additionalProperties": false, "properties": {
                "path": {"type": "string", "description": "Directory to list (default '.', the workspace root)."},
                "recursive": {"type": "boolean", "description": "Include everything below it (default false)."}
            }}),
        ),
        tool(
            "search_files",
            "Search the text files of the workspace for a regular expression (Rust regex \
             syntax). Returns 'file:line: text' for each matching line; .git and binary files \
             are skipped.",
            json!({"type": "object", "additionalProperties": false, "required": ["pattern"], "properties": {
                "pattern": {"type": "string", "description": "Regular expression to look for in each line."},
                "path": {"type": "string", "description": "Directory (or file) to search (default '.')."},
                "glob": {"type": "string", "description": "Only files matching this glob, e.g. '*.rs' (a file name) or 'src/**/*.rs' (a path)."}
            }}),
        ),
        tool(
            "run_command",
            "Run a shell command (/bin/sh -c) in the workspace directory, in the sandbox. \
             Returns how it ended (exit code N, timed out, killed) and the end of its stdout and \
             stderr. A non-zero exit code is reported, not an error.",
            json!({"type": "object", "additionalProperties": false, "required": ["command"], "properties": {
                "command": {"type": "string", "description": "The command line, e.g. 'cargo test 2>&1 | tail -50'."},
                "timeout_secs": {"type": "integer", "minimum": 1, "maximum": MAX_COMMAND_TIMEOUT_SECS, "description": "Stop it after this many seconds (default 300; at most what is left of the job's time)."}
            }}),
        ),
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunInput {
    command: String,
    timeout_secs: Option<u64>,
}

/// How a run ended and the end of its output, for the model.
fn describe_run(outcome: &JobOutcome, timeout: Duration) -> String {
    let mut head = match outcome.end {
        JobEnd::Exited { code } => format!("exit code {code}"),
        JobEnd::Signalled { signal } => format!("killed by signal {signal}"),
        JobEnd::TimedOut => format!(
            "timed out after {} s (the command and everything it started were killed)",
            timeout.as_secs()
        ),
        JobEnd::Cancelled => "cancelled (the command was killed)".to_string(),
        JobEnd::Killed {
            limit: KilledBy::Memory,
        } => "killed: memory (the sandbox's memory limit)".to_string(),
        JobEnd::Killed {
            limit: KilledBy::Disk,
        } => "killed: disk (the workspace went over its disk quota — remove or truncate large \
              files to get back under it)"
            .to_string(),
    };
    head.push('\n');
    if let Some(report) = &outcome.sandbox {
        for l in &report.limits_hit {
            head.push_str(&format!("limit hit: {l}\n"));
        }
        for d in report.denied.iter().take(10) {
            head.push_str(&format!("refused by the sandbox: {d}\n"));
        }
        if report.denied_total > 10 {
            head.push_str(&format!("({} refusals in all)\n", report.denied_total));
        }
    }
    let budget = TOOL_OUTPUT_CAP.saturating_sub(head.len() + 400);
    let (out, err) = (&outcome.stdout, &outcome.stderr);
    let (out_len, err_len) = (out.tail.len(), err.tail.len());
    // Each stream gets half; what one does not need goes to the other.
    let half = budget / 2;
    let out_room = budget - err_len.min(half);
    let err_room = budget - out_len.min(out_room);
    for (name, c, room) in [("stdout", out, out_room), ("stderr", err, err_room)] {
        if c.total_bytes == 0 {
            head.push_str(&format!("--- {name}: empty ---\n"));
            continue;
        }
        head.push_str(&format!("--- {name} ({} bytes) ---\n", c.total_bytes));
        let (text, cut) = tail(&c.tail, room);
        let cut = cut + (c.total_bytes as usize).saturating_sub(c.tail.len());
        if cut > 0 {
            head.push_str(&format!("[... the first {cut} bytes are cut ...]\n"));
        }
        head.push_str(&text);
        if !text.ends_with('\n') {
            head.push('\n');
        }
    }
    head
}

/// The last at most `room` bytes of `bytes`, starting on a character boundary; and how many
/// bytes were left out before them.
fn tail(bytes: &[u8], room: usize) -> (String, usize) {
    let mut start = bytes.len().saturating_sub(room);
    while start < bytes.len() && (bytes[start] & 0xC0) == 0x80 {
        start += 1;
    }
    (String::from_utf8_lossy(&bytes[start..]).into_owned(), start)
}

/// Caps a tool's output at [`TOOL_OUTPUT_CAP`] bytes, cut on a character boundary, with a line
/// saying how much was cut.
pub fn cap(mut text: String) -> String {
    if text.len() <= TOOL_OUTPUT_CAP {
        return text;
    }
    let total = text.len();
    let keep = floor_char_boundary(&text, TOOL_OUTPUT_CAP - 120);
    text.truncate(keep);
    text.push_str(&format!(
        "\n[... output cut: {} of {total} bytes not shown]",
        total - keep
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_cuts_on_a_char_boundary_and_says_so() {
        let s = "é".repeat(TOOL_OUTPUT_CAP);
        let c = cap(s.clone());
        assert!(c.len() <= TOOL_OUTPUT_CAP, "{}", c.len());
        assert!(c.contains("output cut"));
        assert!(s.starts_with(c.split("\n[...").next().unwrap()));
        assert_eq!(cap("short".into()), "short");
    }

    #[test]
    fn tail_starts_on_a_char_boundary() {
        let (t, cut) = tail("aé".as_bytes(), 1);
        assert_eq!((t.as_str(), cut), ("", 3));
        let (t, cut) = tail("aéb".as_bytes(), 3);
        assert_eq!((t.as_str(), cut), ("éb", 1));
    }

    #[test]
    fn schemas_are_closed_objects() {
        for d in defs() {
            assert_eq!(d.input_schema["type"], "object", "{}", d.name);
            assert_eq!(d.input_schema["additionalProperties"], false, "{}", d.name);
            assert!(!d.description.is_empty());
        }
        let names: Vec<String> = defs().into_iter().map(|d| d.name).collect();
        assert_eq!(names, TOOL_NAMES);
    }
}
