//! Integration tests for cflow-worker: the real runtime with the real `exec` and `noop` drivers,
//! against [`FakeServer`], an in-memory test double of the scheduler's side of the protocol
//! (and, in `http`, the real [`HttpLink`](cflow_worker::HttpLink) against a small axum server).

mod artifacts;
mod cancel;
mod http;
mod reports;
mod run;

use cflow_agents::proto::{
    Assignment, Finished, Held, PollRequest, PollResponse, Register, Registered, Report, ReportAck,
};
use cflow_agents::{BoxFuture, Drivers, ExecConfig};
use cflow_worker::link::Artifact;
use cflow_worker::{Link, LinkError, RetryPolicy, WorkerError, WorkerOptions};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the fake scheduler saw and what it will answer.
#[derive(Default)]
pub struct FakeState {
    /// Assignments handed out by the next polls (as many as the worker has free slots).
    pub queue: VecDeque<Assignment>,
    /// Cancellations for the next poll.
    pub cancels: Vec<Held>,
    pub registers: Vec<Register>,
    pub polls: Vec<PollRequest>,
    /// Every report of every call that reached the fake, failed calls included.
    pub received: Vec<Report>,
    /// Reports acknowledged with 200.
    pub accepted: Vec<Report>,
    /// The size of every report call.
    pub calls: Vec<usize>,
    /// Every report call as it arrived (before the gate): (task id, report type) of each report.
    pub entered: Vec<Vec<(String, &'static str)>>,
    /// The next this many report calls fail as if the network dropped them.
    pub fail_reports: usize,
    /// Acks other than 200, by (task id, report type).
    pub refuse: HashMap<(String, &'static str), u16>,
    /// What the next register or poll fails with.
    pub register_error: Option<LinkError>,
    pub poll_error: Option<LinkError>,
    pub deregistered: Vec<String>,
    /// Stored artifacts: (task id, epoch, name, kind, bytes).
    pub uploads: Vec<(String, i64, String, String, Vec<u8>)>,
    /// What the next uploads of an artifact, by name, fail with (in order).
    pub upload_errors: HashMap<String, VecDeque<LinkError>>,
}

#[derive(Default)]
pub struct FakeServer {
    pub state: Mutex<FakeState>,
    changed: Notify,
    /// When set, each report call first takes a permit (the test hands them out).
    pub report_gate: Mutex<Option<Arc<Semaphore>>>,
}

pub const HEARTBEAT_MS: u64 = 400;

impl FakeServer {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Queues assignments and wakes a waiting long-poll.
    pub fn assign(&self, assignments: impl IntoIterator<Item = Assignment>) {
        self.with(|s| s.queue.extend(assignments));
        self.changed.notify_one();
    }

    pub fn cancel(&self, task_id: &str) {
        self.with(|s| {
            s.cancels.push(Held {
                task_id: task_id.into(),
                epoch: 1,
            })
        });
        self.changed.notify_one();
    }

    /// The accepted `Finished` report of a task.
    pub fn finished(&self, task_id: &str) -> Option<Finished> {
        self.with(|s| {
            s.accepted.iter().find_map(|r| match r {
                Report::Finished {
                    task_id: t,
                    outcome,
                    ..
                } if t == task_id => Some(outcome.clone()),
                _ => None,
            })
        })
    }

    /// How many reports of this type about this task reached the fake.
    pub fn received(&self, task_id: &str, kind: &str) -> usize {
        self.with(|s| {
            s.received
                .iter()
                .filter(|r| task_of(r) == task_id && kind_of(r) == kind)
                .count()
        })
    }

    /// The concatenated accepted log text of a task's stream.
    pub fn log(&self, task_id: &str, stream: &str) -> String {
        self.with(|s| {
            s.accepted
                .iter()
                .filter_map(|r| match r {
                    Report::Log {
                        task_id: t,
                        stream: st,
                        text,
                        ..
                    } if t == task_id && st.as_str() == stream => Some(text.as_str()),
                    _ => None,
                })
                .collect()
        })
    }

    /// The last poll the worker sent.
    pub fn last_poll(&self) -> Option<PollRequest> {
        self.with(|s| s.polls.last().cloned())
    }

    /// Waits until the worker's polls show it idle: `slots` free and nothing held, so every
    /// driver has returned and every `Finished` was answered.
    pub async fn wait_idle(&self, slots: u32) {
        eventually("the worker to be idle", || {
            self.with(|s| {
                s.polls
                    .last()
                    .is_some_and(|p| p.free_slots == slots && p.held.is_empty())
            })
        })
        .await;
    }

    /// Waits for a task's accepted `Finished`.
    pub async fn wait_finished(&self, task_id: &str) -> Finished {
        let mut found = None;
        eventually(&format!("{task_id} to finish"), || {
            found = self.finished(task_id);
            found.is_some()
        })
        .await;
        found.unwrap()
    }
}

fn task_of(r: &Report) -> &str {
    match r {
        Report::Started { task_id, .. }
        | Report::Log { task_id, .. }
        | Report::Agent { task_id, .. }
        | Report::Finished { task_id, .. } => task_id,
    }
}

fn kind_of(r: &Report) -> &'static str {
    match r {
        Report::Started { .. } => "started",
        Report::Log { .. } => "log",
        Report::Agent { .. } => "agent",
        Report::Finished { .. } => "finished",
    }
}

impl Link for FakeServer {
    fn host_call<'a>(
        &'a self,
        _worker_id: &'a str,
        _task_id: &'a str,
        _epoch: i64,
        _call: cflow_agents::host::HostCall,
    ) -> BoxFuture<'a, Result<cflow_agents::proto::HostReply, LinkError>> {
        Box::pin(async move {
            Err(LinkError::Rejected {
                status: 501,
                detail: "the fake server serves no model-loop calls".into(),
            })
        })
    }

    fn register(&self, req: Register) -> BoxFuture<'_, Result<Registered, LinkError>> {
        Box::pin(async move {
            self.with(|s| {
                if let Some(e) = s.register_error.take() {
                    return Err(e);
                }
                let worker_id = req.worker_id.clone().unwrap_or_else(|| "w-fake".into());
                s.registers.push(req);
                Ok(Registered {
                    worker_id,
                    heartbeat_ms: HEARTBEAT_MS,
                    lease_ms: 5_000,
                })
            })
        })
    }

    fn poll<'a>(
        &'a self,
        _worker_id: &'a str,
        req: PollRequest,
    ) -> BoxFuture<'a, Result<PollResponse, LinkError>> {
        Box::pin(async move {
            let deadline = Instant::now() + Duration::from_millis(req.wait_ms);
            let free = req.free_slots as usize;
            if let Some(e) = self.with(|s| {
                s.polls.push(req);
                s.poll_error.take()
            }) {
                return Err(e);
            }
            loop {
                let resp = self.with(|s| {
                    let n = free.min(s.queue.len());
                    PollResponse {
                        assignments: s.queue.drain(..n).collect(),
                        cancel: std::mem::take(&mut s.cancels),
                    }
                });
                if !resp.assignments.is_empty() || !resp.cancel.is_empty() {
                    return Ok(resp);
                }
                if tokio::time::timeout_at(deadline, self.changed.notified())
                    .await
                    .is_err()
                {
                    return Ok(resp);
                }
            }
        })
    }

    fn report<'a>(
        &'a self,
        _worker_id: &'a str,
        reports: Vec<Report>,
    ) -> BoxFuture<'a, Result<Vec<ReportAck>, LinkError>> {
        Box::pin(async move {
            self.with(|s| {
                s.entered.push(
                    reports
                        .iter()
                        .map(|r| (task_of(r).to_string(), kind_of(r)))
                        .collect(),
                )
            });
            let gate = self.report_gate.lock().unwrap().clone();
            if let Some(gate) = gate {
                gate.acquire().await.unwrap().forget();
            }
            self.with(|s| {
                s.calls.push(reports.len());
                s.received.extend(reports.iter().cloned());
                if s.fail_reports > 0 {
                    s.fail_reports -= 1;
                    return Err(LinkError::Unavailable("connection reset (fake)".into()));
                }
                let mut acks = Vec::with_capacity(reports.len());
                for r in reports {
                    let refused = s.refuse.get(&(task_of(&r).to_string(), kind_of(&r)));
                    match refused {
                        Some(&status) => acks.push(ReportAck {
                            status,
                            detail: Some("stale epoch (fake)".into()),
                        }),
                        None => {
                            acks.push(ReportAck::ok());
                            s.accepted.push(r);
                        }
                    }
                }
                Ok(acks)
            })
        })
    }

    fn put_artifact<'a>(
        &'a self,
        _worker_id: &'a str,
        task_id: &'a str,
        epoch: i64,
        artifact: &'a Artifact,
    ) -> BoxFuture<'a, Result<(), LinkError>> {
        Box::pin(async move {
            self.with(|s| {
                if let Some(e) = s
                    .upload_errors
                    .get_mut(&artifact.name)
                    .and_then(|q| q.pop_front())
                {
                    return Err(e);
                }
                let kind = cflow_worker::http::artifact_kind(artifact);
                s.uploads.push((
                    task_id.to_string(),
                    epoch,
                    artifact.name.clone(),
                    kind,
                    artifact.bytes.clone(),
                ));
                Ok(())
            })
        })
    }

    fn deregister<'a>(&'a self, worker_id: &'a str) -> BoxFuture<'a, Result<(), LinkError>> {
        Box::pin(async move {
            self.with(|s| s.deregistered.push(worker_id.to_string()));
            Ok(())
        })
    }
}

/// A running worker under test.
pub struct Worker {
    pub handle: JoinHandle<Result<(), WorkerError>>,
    pub shutdown: CancellationToken,
    pub abort: CancellationToken,
}

impl Worker {
    /// Asks for a graceful shutdown and waits for the worker to end.
    pub async fn stop(self) -> Result<(), WorkerError> {
        self.shutdown.cancel();
        self.join().await
    }

    pub async fn join(self) -> Result<(), WorkerError> {
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("the worker ends within 30 s")
            .expect("the worker task does not panic")
    }
}

/// Options with short waits, so retries and heartbeats come quickly.
pub fn options(slots: u32) -> WorkerOptions {
    let mut o = WorkerOptions::new("test-worker", slots);
    o.worker_id = Some("w-test".into());
    o.max_wait = Duration::from_millis(200);
    o.output_cap = 1 << 20;
    o.drain_timeout = Duration::from_secs(20);
    o.retry = RetryPolicy {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(100),
    };
    o
}

pub fn start(fake: &Arc<FakeServer>, options: WorkerOptions) -> Worker {
    let drivers = Drivers::builtin(ExecConfig {
        kill_grace: Duration::from_millis(300),
        ..ExecConfig::default()
    });
    start_with(fake, options, drivers)
}

/// [`start`] with these drivers.
pub fn start_with(fake: &Arc<FakeServer>, options: WorkerOptions, drivers: Drivers) -> Worker {
    let link: Arc<dyn Link> = fake.clone();
    let runtime = cflow_worker::WorkerRuntime::new(link, drivers, options);
    let shutdown = CancellationToken::new();
    let abort = runtime.abort_token();
    let handle = tokio::spawn(runtime.run(shutdown.clone()));
    Worker {
        handle,
        shutdown,
        abort,
    }
}

/// An assignment of epoch 1, attempt 1.
pub fn assignment(task_id: &str, driver: &str, spec: serde_json::Value) -> Assignment {
    Assignment {
        task_id: task_id.into(),
        tenant_id: "t-1".into(),
        epoch: 1,
        attempt: 1,
        agent_id: "a-1".into(),
        driver: driver.into(),
        spec,
        timeout_ms: 60_000,
        inputs: Default::default(),
        sandbox: None,
    }
}

pub fn shell(task_id: &str, command: &str) -> Assignment {
    assignment(task_id, "exec", serde_json::json!({ "command": command }))
}

/// Polls `cond` every few milliseconds until it holds; fails the test after 20 s.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
