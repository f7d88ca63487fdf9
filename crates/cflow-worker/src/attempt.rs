//! One assignment, start to end: the driver job it becomes, the reports it sends (`Started`,
//! coalesced `Log`s, `Finished`), the artifacts it uploads before its `Finished`, and how a
//! [`JobOutcome`] reads as a [`Finished`] report.

use crate::RetryPolicy;
use crate::backoff::Backoff;
use crate::link::{Artifact, Link, LinkError};
use crate::table::Table;
use cflow_agents::host::{Host, HostCall, HostError, HostHandle};
use cflow_agents::proto::HostReply;
use cflow_agents::proto::{self, Assignment, Finished, FinishedStatus, Report};
use cflow_agents::{
    BoxFuture, Captured, DriverError, Drivers, Job, JobEnd, JobEvent, JobOutcome, JobSpec,
    OutputStream,
};
use serde_json::json;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Inputs larger than this go to a file (`CFLOW_INPUTS_FILE`) instead of the environment: Linux
/// refuses a single environment string over 128 KiB, and big environments slow every `exec`.
pub(crate) const INPUTS_ENV_MAX: usize = 64 * 1024;
/// A log chunk is sent when this much output waited…
const LOG_FLUSH_BYTES: usize = 16 * 1024;
/// …or when the oldest unsent output is this old.
const LOG_FLUSH_AFTER: Duration = Duration::from_millis(100);
/// Tries of one artifact upload that fails transiently, before the attempt finishes without it.
const UPLOAD_TRIES: u32 = 5;

/// What every attempt task shares. The report sender lives here, so the reporter's queue closes
/// once the runtime and the last attempt task have let go of it.
pub(crate) struct JobCtx {
    pub(crate) table: Arc<Table>,
    pub(crate) drivers: Drivers,
    pub(crate) output_cap: usize,
    pub(crate) reports: mpsc::UnboundedSender<Report>,
    /// Where artifacts are uploaded, as `worker_id`, with `retry` between transient failures.
    pub(crate) link: Arc<dyn Link>,
    pub(crate) worker_id: String,
    pub(crate) retry: RetryPolicy,
}

impl JobCtx {
    fn send(&self, report: Report) {
        // A closed queue means the reporter hit a fatal error; the runtime is already stopping.
        let _ = self.reports.send(report);
    }
}

/// The server as one attempt's model loop sees it: calls go through the worker's link, fenced
/// by the attempt's epoch.
struct LinkHost {
    link: Arc<dyn Link>,
    worker_id: String,
    task_id: String,
    epoch: i64,
}

impl Host for LinkHost {
    fn call(&self, call: HostCall) -> BoxFuture<'_, Result<serde_json::Value, HostError>> {
        Box::pin(async move {
            match self
                .link
                .host_call(&self.worker_id, &self.task_id, self.epoch, call)
                .await
            {
                Ok(HostReply::Ok(v)) => Ok(v),
                Ok(HostReply::Err(e)) => Err(e),
                Err(LinkError::Rejected { status, detail }) if status == 404 || status == 409 => {
                    Err(HostError::Lost(detail))
                }
                Err(e) if e.is_transient() => Err(HostError::Unavailable(e.to_string())),
                Err(e) => Err(HostError::Refused(e.to_string())),
            }
        })
    }
}

/// Runs one attempt to its end (the body of its tokio task). The slot is released only after the
/// `Finished` report is queued.
pub(crate) async fn run(ctx: Arc<JobCtx>, a: Assignment, cancel: CancellationToken) {
    let mut slot = Slot {
        table: &ctx.table,
        attempt: Some((&a.task_id, a.epoch)),
    };
    let finished = execute(&ctx, &a, &cancel).await;
    slot.attempt = None;
    if ctx.table.mark_finished(&a.task_id, a.epoch) {
        ctx.send(Report::Finished {
            task_id: a.task_id.clone(),
            epoch: a.epoch,
            outcome: finished,
        });
    } else {
        tracing::debug!(task_id = %a.task_id, epoch = a.epoch, "attempt dropped: no report");
    }
}

/// Releases an attempt's slot when its task ends, however it ends. If it ends without an outcome
/// (a panic in a driver), the attempt is also dropped, so it is not held forever: its lease
/// lapses and the scheduler re-queues it.
struct Slot<'a> {
    table: &'a Table,
    attempt: Option<(&'a str, i64)>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some((task_id, epoch)) = self.attempt {
            tracing::error!(
                task_id,
                epoch,
                "attempt ended without an outcome; dropping it"
            );
            self.table.drop_attempt(task_id, epoch);
        }
        self.table.job_ended();
    }
}

async fn execute(ctx: &JobCtx, a: &Assignment, cancel: &CancellationToken) -> Finished {
    let spec = match proto::job_spec(&a.driver, &a.spec) {
        Ok(spec) => spec,
        Err(why) => return failed(why, false),
    };
    let driver = match ctx.drivers.get(&a.driver) {
        Ok(d) => d,
        // The scheduler should only send drivers the worker registered; another worker may have
        // this one.
        Err(e) => return failed(e.to_string(), true),
    };
    // Held until the job ends, so the inputs file outlives the command that reads it.
    let mut _inputs_file = None;
    let spec = match spec {
        JobSpec::Exec(mut exec) => {
            match inputs_env(&a.inputs) {
                Ok((var, value, file)) => {
                    exec.env.push((var.to_string(), value));
                    _inputs_file = file;
                }
                Err(e) => return failed(format!("cannot pass the task's inputs: {e}"), true),
            }
            JobSpec::Exec(exec)
        }
        JobSpec::Llm(mut llm) => {
            llm.inputs = a.inputs.clone();
            JobSpec::Llm(llm)
        }
        other => other,
    };
    ctx.send(Report::started(a.task_id.clone(), a.epoch));
    let job = Job {
        task_id: a.task_id.clone(),
        attempt: a.attempt,
        spec,
        timeout: Duration::from_millis(a.timeout_ms),
        output_cap: ctx.output_cap,
        sandbox: a.sandbox.clone(),
        agent_id: a.agent_id.clone(),
        epoch: a.epoch,
        host: Some(HostHandle::new(LinkHost {
            link: ctx.link.clone(),
            worker_id: ctx.worker_id.clone(),
            task_id: a.task_id.clone(),
            epoch: a.epoch,
        })),
    };
    let (tx, rx) = mpsc::channel(32);
    let (result, ()) = tokio::join!(
        driver.run(job, tx, cancel.clone()),
        forward_logs(rx, ctx, &a.task_id, a.epoch),
    );
    match result {
        Ok(mut outcome) => {
            let artifacts = std::mem::take(&mut outcome.artifacts);
            let mut f = finished(outcome);
            upload_artifacts(ctx, a, &artifacts, &mut f).await;
            if f.status == FinishedStatus::Cancelled && ctx.table.stopping() {
                // The worker stopped it (shutdown), not the user: another worker should retry it.
                f.status = FinishedStatus::Failed;
                f.retryable = true;
                f.error = Some(
                    "the worker shut down before the attempt finished (drain timeout)".to_string(),
                );
            }
            f
        }
        Err(e) => {
            let retryable = match &e {
                DriverError::Unsupported { .. } | DriverError::UnknownDriver { .. } => false,
                DriverError::Sandbox { retryable, .. } => *retryable,
                _ => true,
            };
            failed(e.to_string(), retryable)
        }
    }
}

/// The variable that carries the inputs: `CFLOW_INPUTS` with the JSON itself, or, past
/// [`INPUTS_ENV_MAX`], `CFLOW_INPUTS_FILE` with the path of a temporary file holding it.
pub(crate) fn inputs_env(
    inputs: &std::collections::BTreeMap<String, serde_json::Value>,
) -> std::io::Result<(&'static str, String, Option<tempfile::NamedTempFile>)> {
    let json = serde_json::to_string(inputs)?;
    if json.len() <= INPUTS_ENV_MAX {
        return Ok(("CFLOW_INPUTS", json, None));
    }
    let mut file = tempfile::Builder::new()
        .prefix("cflow-inputs-")
        .suffix(".json")
        .tempfile()?;
    file.write_all(json.as_bytes())?;
    file.flush()?;
    let path = file.path().to_string_lossy().into_owned();
    Ok(("CFLOW_INPUTS_FILE", path, Some(file)))
}

/// Forwards the job's output as `Log` reports, coalesced per stream: a chunk goes out when
/// [`LOG_FLUSH_BYTES`] are waiting or the oldest waiting byte is [`LOG_FLUSH_AFTER`] old, and
/// whatever is left when the job ends. A UTF-8 sequence split between chunks is held back until
/// it is complete, so chunk boundaries never produce replacement characters.
async fn forward_logs(mut rx: mpsc::Receiver<JobEvent>, ctx: &JobCtx, task_id: &str, epoch: i64) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut deadline: Option<Instant> = None;
    let flush = |buf: &mut Vec<u8>, stream: OutputStream, last: bool| {
        let keep = if last { 0 } else { unfinished_word(buf) };
        if buf.len() > keep {
            let rest = buf.split_off(buf.len() - keep);
            let bytes = std::mem::replace(buf, rest);
            ctx.send(Report::Log {
                task_id: task_id.to_string(),
                epoch,
                stream,
                text: lossy(bytes),
            });
        }
    };
    loop {
        let event = match deadline {
            Some(at) => tokio::select! {
                ev = rx.recv() => ev,
                () = tokio::time::sleep_until(at) => {
                    flush(&mut out, OutputStream::Stdout, false);
                    flush(&mut err, OutputStream::Stderr, false);
                    deadline = None;
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let (buf, stream) = match event {
            None => {
                flush(&mut out, OutputStream::Stdout, true);
                flush(&mut err, OutputStream::Stderr, true);
                return;
            }
            Some(JobEvent::Stdout(bytes)) => {
                out.extend_from_slice(&bytes);
                (&mut out, OutputStream::Stdout)
            }
            Some(JobEvent::Stderr(bytes)) => {
                err.extend_from_slice(&bytes);
                (&mut err, OutputStream::Stderr)
            }
            Some(JobEvent::Agent { kind, data }) => {
                ctx.send(Report::Agent {
                    task_id: task_id.to_string(),
                    epoch,
                    kind,
                    data,
                });
                continue;
            }
            Some(_) => continue,
        };
        if buf.len() >= LOG_FLUSH_BYTES {
            flush(buf, stream, false);
        }
        if deadline.is_none() && !(out.is_empty() && err.is_empty()) {
            deadline = Some(Instant::now() + LOG_FLUSH_AFTER);
        }
    }
}

/// The longest word a log chunk holds back for the next one.
const WORD_HOLD_MAX: usize = 1024;

/// How many bytes at the end of `b` a log chunk leaves for the next: the word after the last
/// whitespace (up to [`WORD_HOLD_MAX`] bytes), so that a token or key printed across two reads
/// still reaches the server's masker in one piece; else an incomplete UTF-8 sequence.
pub(crate) fn unfinished_word(b: &[u8]) -> usize {
    let from = b.len().saturating_sub(WORD_HOLD_MAX + 1);
    match b[from..].iter().rposition(|c| c.is_ascii_whitespace()) {
        Some(i) => b.len() - (from + i + 1),
        None if b.len() <= WORD_HOLD_MAX => b.len(),
        None => incomplete_tail(b),
    }
}

/// How many bytes at the end of `b` are the start of a UTF-8 sequence that is not complete yet.
pub(crate) fn incomplete_tail(b: &[u8]) -> usize {
    let from = b.len().saturating_sub(3);
    for i in (from..b.len()).rev() {
        if b[i] & 0xC0 != 0x80 {
            return match std::str::from_utf8(&b[i..]) {
                Err(e) if e.error_len().is_none() => b.len() - i,
                _ => 0,
            };
        }
    }
    0
}

/// Bytes as text, invalid UTF-8 replaced; no copy when they are valid.
fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn captured(c: Captured) -> String {
    lossy(c.bytes)
}

/// A failure before (or instead of) running anything.
fn failed(error: String, retryable: bool) -> Finished {
    Finished {
        status: FinishedStatus::Failed,
        retryable,
        exit_code: None,
        signal: None,
        stdout: String::new(),
        stderr: String::new(),
        truncated: false,
        result: None,
        isolation: "none: nothing ran".to_string(),
        detail: Some(json!({
            "end": format!("not started: {error}"),
            "isolation": "none: nothing ran",
        })),
        error: Some(error),
        wall_ms: 0,
    }
}

/// Uploads the attempt's artifacts before its `Finished` report, retrying transient failures a
/// few times. An artifact that cannot be stored does not fail the attempt: it is named, with
/// the reason, in the detail's `artifacts_failed`.
async fn upload_artifacts(ctx: &JobCtx, a: &Assignment, artifacts: &[Artifact], f: &mut Finished) {
    let mut failed = Vec::new();
    for artifact in artifacts {
        if let Err(e) = upload(ctx, a, artifact).await {
            tracing::warn!(task_id = %a.task_id, epoch = a.epoch, name = %artifact.name, "artifact not stored: {e}");
            failed.push(json!(format!("artifact {} not stored: {e}", artifact.name)));
        }
    }
    if !failed.is_empty() {
        let detail = f.detail.get_or_insert_with(|| json!({}));
        if let Some(obj) = detail.as_object_mut() {
            obj.insert("artifacts_failed".to_string(), failed.into());
        }
    }
}

async fn upload(ctx: &JobCtx, a: &Assignment, artifact: &Artifact) -> Result<(), LinkError> {
    let mut backoff = Backoff::new(ctx.retry);
    let mut tries = 0;
    loop {
        tries += 1;
        match ctx
            .link
            .put_artifact(&ctx.worker_id, &a.task_id, a.epoch, artifact)
            .await
        {
            Err(e) if e.is_transient() && tries < UPLOAD_TRIES => {
                tokio::time::sleep(backoff.next_wait()).await;
            }
            other => return other,
        }
    }
}

/// How a driver's outcome reads on the wire.
pub(crate) fn finished(o: JobOutcome) -> Finished {
    let (status, exit_code, signal) = match o.end {
        JobEnd::Exited { code: 0 } => (FinishedStatus::Succeeded, Some(0), None),
        JobEnd::Exited { code } => (FinishedStatus::Failed, Some(i64::from(code)), None),
        JobEnd::Signalled { signal } => (FinishedStatus::Failed, None, Some(signal)),
        JobEnd::TimedOut => (FinishedStatus::TimedOut, None, None),
        JobEnd::Cancelled => (FinishedStatus::Cancelled, None, None),
        // The sandbox killed it over a limit: a failure (`detail.end` says which limit).
        JobEnd::Killed { .. } => (FinishedStatus::Failed, None, None),
        _ => (FinishedStatus::Failed, None, None),
    };
    let isolation = o.isolation.summary();
    let sandbox = o
        .sandbox
        .as_ref()
        .and_then(|r| serde_json::to_value(r).ok())
        .unwrap_or(serde_json::Value::Null);
    let mut detail = json!({ "end": o.end.describe(), "isolation": isolation, "sandbox": sandbox });
    if !o.model_usage.is_empty() {
        detail["model_usage"] = serde_json::to_value(&o.model_usage).unwrap_or_default();
    }
    if let Some(why) = &o.result_error {
        tracing::debug!(%why, "the job's result was not usable");
        detail["result_error"] = json!(why);
    }
    Finished {
        status,
        retryable: true,
        exit_code,
        signal,
        truncated: o.stdout.truncated || o.stderr.truncated,
        stdout: captured(o.stdout),
        stderr: captured(o.stderr),
        result: o.result,
        // Why a failed attempt failed, when the driver knows more than the exit code (a model
        // tool's error result, an unusable CFLOW_RESULT line): shown after its stderr.
        error: (status == FinishedStatus::Failed)
            .then(|| o.result_error.clone())
            .flatten(),
        wall_ms: u64::try_from(o.wall_time.as_millis()).unwrap_or(u64::MAX),
        isolation,
        detail: Some(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cflow_agents::{Isolation, KilledBy};

    #[test]
    fn an_incomplete_utf8_sequence_at_the_end_is_held_back() {
        let euro = "€".as_bytes(); // three bytes
        assert_eq!(incomplete_tail(b"abc"), 0);
        assert_eq!(incomplete_tail(euro), 0);
        assert_eq!(incomplete_tail(&euro[..1]), 1);
        assert_eq!(incomplete_tail(&[b'a', euro[0], euro[1]]), 2);
        // Invalid bytes are not "incomplete": they go out (replaced) at once.
        assert_eq!(incomplete_tail(&[b'a', 0xff]), 0);
        assert_eq!(incomplete_tail(&[]), 0);
    }

    #[test]
    fn a_log_chunk_holds_back_the_word_it_ends_in() {
        assert_eq!(
            unfinished_word(b"token sk-ant-api03-abc"),
            "sk-ant-api03-abc".len()
        );
        assert_eq!(unfinished_word(b"line one\n"), 0);
        assert_eq!(unfinished_word(b"nowhitespace"), 12);
        assert_eq!(unfinished_word(b""), 0);
        // A word too long to hold is cut, on a character boundary.
        let mut long = vec![b'x'; WORD_HOLD_MAX + 10];
        assert_eq!(unfinished_word(&long), 0);
        long.extend_from_slice(&"€".as_bytes()[..2]);
        assert_eq!(unfinished_word(&long), 2);
        // Whitespace further back than the limit does not count.
        let mut far = b"a ".to_vec();
        far.extend(vec![b'y'; WORD_HOLD_MAX + 5]);
        assert_eq!(unfinished_word(&far), 0);
    }

    #[test]
    fn outcomes_map_to_statuses() {
        let iso = Isolation::None {
            reason: "test".into(),
        };
        let mut o = JobOutcome::new(JobEnd::Exited { code: 0 }, iso.clone());
        o.stdout.bytes = b"hi\xff".to_vec();
        o.stderr.truncated = true;
        o.wall_time = Duration::from_millis(12);
        let f = finished(o);
        assert_eq!(f.status, FinishedStatus::Succeeded);
        assert_eq!((f.exit_code, f.stdout.as_str()), (Some(0), "hi\u{fffd}"));
        assert!(f.truncated && f.retryable);
        assert_eq!((f.wall_ms, f.isolation.as_str()), (12, "none: test"));
        assert_eq!(
            f.detail,
            Some(json!({"end": "exit 0", "isolation": "none: test", "sandbox": null}))
        );

        let f = finished(JobOutcome::new(JobEnd::Exited { code: 3 }, iso.clone()));
        assert_eq!((f.status, f.exit_code), (FinishedStatus::Failed, Some(3)));
        let f = finished(JobOutcome::new(
            JobEnd::Signalled { signal: 9 },
            iso.clone(),
        ));
        assert_eq!((f.status, f.signal), (FinishedStatus::Failed, Some(9)));
        let f = finished(JobOutcome::new(JobEnd::TimedOut, iso.clone()));
        assert_eq!(f.status, FinishedStatus::TimedOut);
        let f = finished(JobOutcome::new(JobEnd::Cancelled, iso.clone()));
        assert_eq!(f.status, FinishedStatus::Cancelled);
        let mut o = JobOutcome::new(
            JobEnd::Killed {
                limit: KilledBy::Memory,
            },
            iso,
        );
        o.sandbox = Some(cflow_sandbox::spec::RunReport {
            limits_hit: vec!["memory: 1 OOM kill".into()],
            ..Default::default()
        });
        let f = finished(o);
        assert_eq!((f.status, f.exit_code), (FinishedStatus::Failed, None));
        let d = f.detail.unwrap();
        assert_eq!(d["end"], "killed: memory");
        assert_eq!(d["sandbox"]["limits_hit"][0], "memory: 1 OOM kill");
    }

    #[test]
    fn big_inputs_go_to_a_file() {
        let mut inputs = std::collections::BTreeMap::new();
        inputs.insert("a".to_string(), serde_json::json!({"x": 1}));
        let (var, value, file) = inputs_env(&inputs).unwrap();
        assert_eq!((var, value.as_str()), ("CFLOW_INPUTS", r#"{"a":{"x":1}}"#));
        assert!(file.is_none());

        inputs.insert(
            "b".to_string(),
            serde_json::json!("x".repeat(INPUTS_ENV_MAX)),
        );
        let (var, path, file) = inputs_env(&inputs).unwrap();
        assert_eq!(var, "CFLOW_INPUTS_FILE");
        let back: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back["a"]["x"], 1);
        drop(file);
        assert!(
            !std::path::Path::new(&path).exists(),
            "removed with the job"
        );
    }
}
