//! The worker protocol: what a worker (the local pool inside the server, or a remote
//! `cflow worker` that dials out over HTTP) and the scheduler say to each other.
//!
//! The worker drives every exchange, so it works behind NAT and firewalls:
//! 1. `register` once: its labels, slots and drivers; the answer is its id and lease timing.
//! 2. `poll` in a loop (long-poll): it says which attempts it holds and how many slots are free;
//!    the answer carries new [`Assignment`]s and the attempts it must [`cancel`](PollResponse).
//!    Every poll is also the worker's heartbeat: it extends the lease of every attempt it holds.
//! 3. `report` batches of [`Report`]s: started, log output, finished. Each report carries the
//!    attempt's `epoch`; a report about an attempt the worker no longer holds (lease expired and
//!    re-assigned, cancelled) is refused with status 409 and the worker drops that attempt.
//!
//! The same types travel as JSON over HTTP (`/api/v1/workers/...`) and in-process for the local
//! pool, so one code path serves both.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::driver::{ExecCommand, ExecSpec, JobSpec};

/// `POST /api/v1/workers` — a worker introduces itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// A stable id chosen by the worker (`[a-z0-9_-]{1,64}`), so that after a reconnect (or a
    /// server restart) the scheduler recognises the attempts it still holds. `None`: the server
    /// makes one up.
    #[serde(default)]
    pub worker_id: Option<String>,
    /// A human name (host name by default).
    pub name: String,
    /// `key=value` labels tasks can be pinned to (`region=eu`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How many attempts it runs at once (1–1024).
    pub slots: u32,
    /// The driver kinds it can run (`exec`, `noop`, ...).
    pub drivers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Registered {
    pub worker_id: String,
    /// Poll (heartbeat) at least this often, or the worker is suspected.
    pub heartbeat_ms: u64,
    /// An attempt's lease runs this long past the last poll that listed it.
    pub lease_ms: u64,
}

/// One attempt a worker holds, as listed in a poll.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Held {
    pub task_id: String,
    pub epoch: i64,
}

/// `POST /api/v1/workers/{id}/poll`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    /// Every attempt the worker is running (including finished ones whose report is not yet
    /// acknowledged); their leases are extended.
    #[serde(default)]
    pub held: Vec<Held>,
    /// How many new assignments it can take now.
    pub free_slots: u32,
    /// How long the server may hold the request open when it has nothing to say (0–30,000 ms).
    #[serde(default)]
    pub wait_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PollResponse {
    pub assignments: Vec<Assignment>,
    /// Attempts the worker must stop at once (cancelled, or no longer its own): kill the
    /// process group and drop them without a report.
    pub cancel: Vec<Held>,
}

/// One attempt of one task, leased to this worker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Assignment {
    pub task_id: String,
    pub tenant_id: String,
    pub epoch: i64,
    /// 1-based attempt number.
    pub attempt: u32,
    pub agent_id: String,
    /// The agent's driver kind.
    pub driver: String,
    /// The task's spec, as submitted; see [`job_spec`].
    pub spec: serde_json::Value,
    pub timeout_ms: u64,
    /// Outputs of the task's dependencies, by dependency task id (their `result` objects, or
    /// the stdout tail when they had none), so a task can build on what came before.
    #[serde(default)]
    pub inputs: BTreeMap<String, serde_json::Value>,
    /// The admins' sandbox settings for the task's tenant and agent, merged by the server
    /// (agent over tenant); the worker applies them over its own default policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<cflow_sandbox::host::Settings>,
}

/// `POST /api/v1/workers/{id}/attempts/{task_id}/{epoch}/calls`: what a model loop asks the
/// server (see [`crate::host`]); the answer is a [`HostReply`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostCallRequest {
    pub call: crate::host::HostCall,
}

/// The answer to a [`HostCallRequest`] (HTTP 200 either way; a stale epoch is a 409).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum HostReply {
    Ok(serde_json::Value),
    Err(crate::host::HostError),
}

/// `POST /api/v1/workers/{id}/reports`: a batch, answered one [`ReportAck`] per report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReportBatch {
    pub reports: Vec<Report>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Report {
    /// The driver started the attempt.
    Started {
        task_id: String,
        epoch: i64,
        /// How long before this report was sent the attempt started (ms): a report can wait
        /// behind the worker's report call in flight. The server records the start this long
        /// before it received the report, on its own clock (no clock skew between machines).
        #[serde(default, skip_serializing_if = "is_zero")]
        waited_ms: u64,
        /// When the attempt started, on the worker's clock; `waited_ms` is computed from it when
        /// the report is sent. Never sent.
        #[serde(skip)]
        at: Option<std::time::Instant>,
    },
    /// Output as it happens (already capped by the driver); published as `task.log` events.
    Log {
        task_id: String,
        epoch: i64,
        stream: crate::OutputStream,
        text: String,
    },
    /// Something a model agent did (assistant text, a tool call, a tool's result), parsed by
    /// its driver; published as `task.agent` events.
    Agent {
        task_id: String,
        epoch: i64,
        kind: String,
        data: serde_json::Value,
    },
    /// The attempt ended.
    Finished {
        task_id: String,
        epoch: i64,
        outcome: Finished,
    },
}

impl Report {
    /// The start of an attempt, now.
    pub fn started(task_id: impl Into<String>, epoch: i64) -> Report {
        Report::Started {
            task_id: task_id.into(),
            epoch,
            waited_ms: 0,
            at: Some(std::time::Instant::now()),
        }
    }

    /// Sets a start report's `waited_ms` from when it started (just before it is sent).
    pub fn stamp(&mut self) {
        if let Report::Started {
            waited_ms,
            at: Some(at),
            ..
        } = self
        {
            *waited_ms = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
        }
    }

    pub fn held(&self) -> Held {
        let (task_id, epoch) = match self {
            Report::Started { task_id, epoch, .. }
            | Report::Log { task_id, epoch, .. }
            | Report::Agent { task_id, epoch, .. }
            | Report::Finished { task_id, epoch, .. } => (task_id, epoch),
        };
        Held {
            task_id: task_id.clone(),
            epoch: *epoch,
        }
    }
}

/// How an attempt ended, as the worker saw it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Finished {
    /// `succeeded`, `failed`, `timed_out` or `cancelled`.
    pub status: FinishedStatus,
    /// `false` when another attempt cannot help (a spec this worker's driver cannot run).
    #[serde(default = "yes")]
    pub retryable: bool,
    pub exit_code: Option<i64>,
    /// The signal that killed the command, when one did and cflow did not send it.
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    /// Whether either stream was cut at the output cap.
    #[serde(default)]
    pub truncated: bool,
    #[serde(default)]
    pub result: Option<serde_json::Value>,
    /// A failure the driver reported before or instead of running anything.
    #[serde(default)]
    pub error: Option<String>,
    pub wall_ms: u64,
    /// The isolation the attempt ran under, as the driver reported it (`none: ...` until the
    /// sandbox lands).
    pub isolation: String,
    /// What the worker saw of the ending, stored on the attempt as given: `end` (how the job
    /// ended, e.g. `exit 3` or `killed: memory`), `isolation` (as above), `sandbox` (the
    /// sandbox's report, or null) and, when an upload failed for good, `artifacts_failed`.
    #[serde(default)]
    pub detail: Option<serde_json::Value>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FinishedStatus {
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

/// The answer to one report: `status` 200 when accepted, else the HTTP status the same problem
/// would get (409 stale epoch, 404 unknown task) and why. On anything but 200 for a `Finished`
/// or `Started`, the worker stops the attempt and forgets it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReportAck {
    pub status: u16,
    #[serde(default)]
    pub detail: Option<String>,
}

impl ReportAck {
    pub fn ok() -> Self {
        Self {
            status: 200,
            detail: None,
        }
    }
    pub fn is_ok(&self) -> bool {
        self.status == 200
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReportAcks {
    pub acks: Vec<ReportAck>,
}

/// Turns a task spec into what `driver` runs, or says why it cannot.
///
/// - `exec`: `{"command": "sh command line"}` or `{"program": "p", "args": ["a"]}`, with
///   optional `"env": {"K": "V"}` and `"cwd": "/dir"`.
/// - `noop`: any spec (ignored).
pub fn job_spec(driver: &str, spec: &serde_json::Value) -> Result<JobSpec, String> {
    match driver {
        "noop" => Ok(JobSpec::Noop),
        "exec" => {
            if spec.get("prompt").is_some() && spec.get("command").is_none() {
                return Err(
                    "this task is a prompt for a model agent (claude-code), and this \
                            agent runs commands (exec): give the task to a claude-code agent"
                        .into(),
                );
            }
            exec_spec(spec).map(JobSpec::Exec)
        }
        "claude-code" => {
            check_model_fields(spec, "claude-code")?;
            claude_spec(spec).map(JobSpec::Claude)
        }
        "llm" => {
            check_model_fields(spec, "llm")?;
            llm_spec(spec).map(|s| JobSpec::Llm(Box::new(s)))
        }
        other => Err(format!("driver '{other}' is not built yet")),
    }
}

/// Whether a task's spec is a prompt for a model agent (`claude-code` or `llm`) rather than a
/// command.
pub fn is_model_task(spec: &serde_json::Value) -> bool {
    spec.get("prompt").is_some()
}

/// Checks a task's spec when it is submitted (before any agent is chosen): a `prompt` makes it
/// a model task (for a `claude-code` or an `llm` agent), anything else an `exec` command.
pub fn check_task_spec(spec: &serde_json::Value) -> Result<(), String> {
    if is_model_task(spec) {
        claude_spec(spec)?;
        llm_spec(spec).map(|_| ())
    } else {
        exec_spec(spec).map(|_| ())
    }
}

/// Every field a model task's spec may have. One spec serves both model drivers; the fields
/// one of them does not use are refused by that driver's agent (see [`check_model_fields`]).
const MODEL_FIELDS: &str = "prompt, model, max_turns, max_tokens, permission_mode, \
    allowed_tools, env, workspace, artifacts, network";

/// Refuses the fields of a model spec that `driver` cannot honour, rather than ignoring them,
/// and a command given to a model agent.
fn check_model_fields(spec: &serde_json::Value, driver: &str) -> Result<(), String> {
    if !is_model_task(spec) && (spec.get("command").is_some() || spec.get("program").is_some()) {
        return Err(format!(
            "this task is a command for an exec agent, and this agent runs a model ({driver}): \
             give the task to an exec agent, or give this one a \"prompt\""
        ));
    }
    let unsupported: &[&str] = match driver {
        "claude-code" => &["max_tokens", "network"],
        _ => &["permission_mode"],
    };
    for k in unsupported {
        if spec.get(*k).is_some() {
            return Err(format!(
                "\"{k}\" is not supported by the {driver} driver: remove it, or give the task \
                 to an agent whose driver supports it"
            ));
        }
    }
    Ok(())
}

/// The fields of a model spec both drivers share.
struct ModelCommon {
    prompt: String,
    model: Option<String>,
    max_turns: Option<u32>,
    allowed_tools: Vec<String>,
    obj: serde_json::Map<String, serde_json::Value>,
}

fn model_common(spec: &serde_json::Value) -> Result<ModelCommon, String> {
    let obj = spec
        .as_object()
        .ok_or("a model task's spec must be an object with \"prompt\"")?;
    for key in obj.keys() {
        if !MODEL_FIELDS.split(", ").any(|k| k == key) {
            return Err(format!(
                "unknown field '{key}' in a model task's spec (known: {MODEL_FIELDS})"
            ));
        }
    }
    let prompt = obj
        .get("prompt")
        .and_then(|p| p.as_str())
        .filter(|p| !p.trim().is_empty())
        .ok_or("\"prompt\" must be a non-empty string")?
        .to_string();
    let model = match obj.get("model") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .filter(|s| !s.is_empty() && !s.starts_with('-'))
                .map(str::to_string)
                .ok_or("\"model\" must be a non-empty string not starting with '-'")?,
        ),
    };
    let max_turns = match obj.get("max_turns") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|n| (1..=1000).contains(n))
                .ok_or("\"max_turns\" must be a whole number from 1 to 1000")? as u32,
        ),
    };
    let allowed_tools = match obj.get("allowed_tools") {
        None => Vec::new(),
        Some(a) => a
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|v| v.as_str().filter(|s| !s.starts_with('-')).map(str::to_string))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or("\"allowed_tools\" must be an array of tool names, e.g. [\"Edit\", \"Bash(cargo test:*)\"]")?,
    };
    Ok(ModelCommon {
        prompt,
        model,
        max_turns,
        allowed_tools,
        obj: obj.clone(),
    })
}

/// The exec-like part of a model spec (`env`, `workspace`, `artifacts`, `network`), parsed by
/// the exec parser on a command stand-in.
fn model_exec_part(obj: &serde_json::Map<String, serde_json::Value>) -> Result<ExecSpec, String> {
    let mut rest = serde_json::Map::new();
    rest.insert("command".into(), serde_json::Value::String("true".into()));
    for k in ["env", "workspace", "artifacts", "network"] {
        if let Some(v) = obj.get(k) {
            rest.insert(k.into(), v.clone());
        }
    }
    exec_spec(&serde_json::Value::Object(rest))
}

/// `{"prompt", "model"?, "max_turns"?, "max_tokens"?, "allowed_tools"?, "env"?, "workspace"?,
/// "artifacts"?, "network"?}` for the `llm` driver; `allowed_tools` names cflow's built-in
/// tools.
fn llm_spec(spec: &serde_json::Value) -> Result<crate::model::LlmSpec, String> {
    let c = model_common(spec)?;
    let max_tokens = match c.obj.get("max_tokens") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|n| *n >= 1)
                .ok_or("\"max_tokens\" must be a positive whole number")?,
        ),
    };
    let exec = model_exec_part(&c.obj)?;
    Ok(crate::model::LlmSpec {
        prompt: c.prompt,
        model: c.model,
        max_turns: c.max_turns,
        max_tokens,
        allowed_tools: c.allowed_tools,
        env: exec.env,
        workspace: exec.workspace,
        artifacts: exec.artifacts,
        network: exec.network,
        inputs: BTreeMap::new(),
        setup: crate::model::ModelSetup::default(),
    })
}

/// `{"prompt": "...", "model"?, "max_turns"?, "permission_mode"?, "allowed_tools"?: [..],
/// "env"?: {..}, "workspace"?, "artifacts"?}` for the `claude-code` driver.
fn claude_spec(spec: &serde_json::Value) -> Result<crate::claude::ClaudeSpec, String> {
    let ModelCommon {
        prompt,
        model,
        max_turns,
        allowed_tools,
        obj,
    } = model_common(spec)?;
    let permission_mode = match obj.get("permission_mode") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .map(str::to_string)
                .ok_or("\"permission_mode\" must be a string")?,
        ),
    };
    if let Some(m) = &permission_mode
        && !crate::claude::PERMISSION_MODES.contains(&m.as_str())
    {
        return Err(format!(
            "\"permission_mode\" must be one of {} (bypassing permissions is not offered)",
            crate::claude::PERMISSION_MODES.join(", ")
        ));
    }
    let exec = model_exec_part(&obj)?;
    Ok(crate::claude::ClaudeSpec {
        prompt,
        model,
        max_turns,
        permission_mode,
        allowed_tools,
        env: exec.env,
        workspace: exec.workspace,
        artifacts: exec.artifacts,
    })
}

fn exec_spec(spec: &serde_json::Value) -> Result<ExecSpec, String> {
    let obj = spec
        .as_object()
        .ok_or("an exec task's spec must be an object with \"command\" or \"program\"")?;
    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "command" | "program" | "args" | "env" | "cwd" | "workspace" | "artifacts" | "network"
        ) {
            return Err(format!(
                "unknown field '{key}' in an exec spec (known: command, program, args, env, cwd, \
                 workspace, artifacts, network)"
            ));
        }
    }
    let command = match (obj.get("command"), obj.get("program")) {
        (Some(c), None) => {
            if obj.contains_key("args") {
                return Err("\"args\" goes with \"program\", not \"command\"".into());
            }
            let c = c.as_str().ok_or("\"command\" must be a string")?;
            if c.trim().is_empty() {
                return Err("\"command\" must not be empty".into());
            }
            ExecCommand::Shell(c.to_string())
        }
        (None, Some(p)) => {
            let program = p.as_str().ok_or("\"program\" must be a string")?;
            if program.is_empty() {
                return Err("\"program\" must not be empty".into());
            }
            let args = match obj.get("args") {
                None => Vec::new(),
                Some(a) => a
                    .as_array()
                    .and_then(|a| {
                        a.iter()
                            .map(|v| v.as_str().map(str::to_string))
                            .collect::<Option<Vec<_>>>()
                    })
                    .ok_or("\"args\" must be an array of strings")?,
            };
            ExecCommand::Program {
                program: program.to_string(),
                args,
            }
        }
        (Some(_), Some(_)) => return Err("give \"command\" or \"program\", not both".into()),
        (None, None) => {
            return Err(
                "an exec task's spec needs \"command\" (a shell line) or \"program\"".into(),
            );
        }
    };
    let env = match obj.get("env") {
        None => Vec::new(),
        Some(e) => e
            .as_object()
            .and_then(|m| {
                m.iter()
                    .map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or("\"env\" must be an object of strings")?,
    };
    let cwd = match obj.get("cwd") {
        None => None,
        Some(c) => Some(c.as_str().ok_or("\"cwd\" must be a string")?.into()),
    };
    let workspace = match obj.get("workspace") {
        None => None,
        Some(w) => {
            let source: cflow_sandbox::workspace::Source = serde_json::from_value(w.clone())
                .map_err(|e| {
                    format!(
                        "invalid \"workspace\": {e} (expected {{\"kind\": \"empty\"}}, \
                         {{\"kind\": \"copy\", \"path\": \"/abs/dir\"}} or {{\"kind\": \"git\", \
                         \"repo\": \"URL or /abs/repo\", \"ref\": \"main\"}})"
                    )
                })?;
            source
                .validate()
                .map_err(|e| format!("invalid \"workspace\": {e}"))?;
            Some(source)
        }
    };
    let artifacts = match obj.get("artifacts") {
        None => None,
        Some(serde_json::Value::Array(globs)) => {
            let globs = globs
                .iter()
                .map(|g| g.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or(
                    "\"artifacts\" must be an array of glob strings, e.g. [\"out/**/*.json\"]",
                )?;
            let spec = cflow_sandbox::artifacts::Spec {
                globs,
                ..Default::default()
            };
            spec.validate()
                .map_err(|e| format!("invalid \"artifacts\": {e}"))?;
            Some(spec)
        }
        Some(_) => {
            return Err(
                "\"artifacts\" must be an array of glob strings, e.g. [\"out/**/*.json\"]".into(),
            );
        }
    };
    let network = match obj.get("network") {
        None => None,
        Some(n) => Some(cflow_sandbox::Network::parse(
            n.as_str()
                .ok_or("\"network\" must be \"off\", \"loopback\" or \"full\"")?,
        )?),
    };
    Ok(ExecSpec {
        command,
        env,
        cwd,
        workspace,
        artifacts,
        network,
    })
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exec_specs_parse_or_say_why() {
        assert!(matches!(
            job_spec("exec", &json!({"command": "echo hi"})),
            Ok(JobSpec::Exec(ExecSpec {
                command: ExecCommand::Shell(_),
                ..
            }))
        ));
        let p = job_spec(
            "exec",
            &json!({"program": "true", "args": ["a"], "env": {"K": "V"}}),
        );
        assert!(matches!(p, Ok(JobSpec::Exec(ref s)) if s.env == vec![("K".into(), "V".into())]));
        for (bad, why) in [
            (json!("echo"), "must be an object"),
            (json!({}), "needs \"command\""),
            (json!({"command": ""}), "must not be empty"),
            (json!({"command": "x", "program": "y"}), "not both"),
            (
                json!({"command": "x", "shell": true}),
                "unknown field 'shell'",
            ),
            (json!({"program": "x", "args": [1]}), "array of strings"),
        ] {
            let err = job_spec("exec", &bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(matches!(job_spec("noop", &json!(null)), Ok(JobSpec::Noop)));
        assert!(
            job_spec("gpt", &json!({}))
                .unwrap_err()
                .contains("not built yet")
        );
    }
}
