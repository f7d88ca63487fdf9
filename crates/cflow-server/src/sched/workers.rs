//! The worker side of the scheduler: registration, long-poll (which is also the heartbeat that
//! extends leases), fenced reports, and what an ended attempt does to the in-memory state.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cflow_agents::proto::{
    Finished, FinishedStatus, Held, PollRequest, PollResponse, Register, Registered, Report,
    ReportAck,
};
use cflow_core::ValidationError;
use cflow_core::breaker::BreakerState;
use cflow_core::task::TaskState;
use cflow_store::{
    AgentState, ArtifactMeta, ArtifactPut, AuditContext, Outcome, OutcomeKind, Settled,
};
use serde_json::json;
use tokio::sync::Notify;

use super::state::{QTask, RunRt, WorkerRt, WorkerState};
use super::{SchedError, SchedResult, Scheduler, WorkerView};
use crate::state::now_ms;

/// The longest a poll may wait: below the server's default request timeout (30 s).
pub const MAX_WAIT_MS: u64 = 25_000;
const MAX_SLOTS: u32 = 1024;

fn worker_id_ok(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn ack(status: u16, detail: impl Into<String>) -> ReportAck {
    ReportAck {
        status,
        detail: Some(detail.into()),
    }
}

/// What the store error means for the worker that reported.
fn ack_for(e: &cflow_store::Error) -> ReportAck {
    use cflow_store::Error as E;
    match e {
        E::StaleEpoch { .. } | E::State(_) => ack(409, e.to_string()),
        E::NotFound(_) => ack(404, e.to_string()),
        E::Invalid(v) => ack(400, v.to_string()),
        // Transient: the worker keeps the report and sends it again.
        _ => ack(503, "the server could not record the report; send it again"),
    }
}

fn outcome_of(f: &Finished) -> Outcome {
    let kind = match f.status {
        FinishedStatus::Succeeded => OutcomeKind::Succeeded,
        FinishedStatus::TimedOut => OutcomeKind::TimedOut,
        FinishedStatus::Failed => OutcomeKind::Failed {
            retryable: f.retryable,
        },
        // A worker stops an attempt by itself only when it shuts down: another attempt may work.
        FinishedStatus::Cancelled => OutcomeKind::Failed { retryable: true },
    };
    let mut stderr = f.stderr.clone();
    if let Some(e) = &f.error {
        if !stderr.is_empty() {
            stderr.push('\n');
        }
        stderr.push_str(&format!("cflow: {e}"));
    }
    if f.truncated {
        stderr.push_str("\ncflow: output was truncated at the output cap");
    }
    Outcome {
        kind,
        exit_code: f.exit_code,
        stdout_tail: f.stdout.clone(),
        stderr_tail: stderr,
        result: f.result.clone(),
        detail: f.detail.clone(),
    }
}

/// The most bytes of a tool call's input kept in its audit entry.
const TOOL_AUDIT_INPUT_CAP: usize = 2048;

/// The ledger entry of one tool call a model agent made (`agent.tool`, as `agent:<id>`): the
/// tool's name and its input, masked and capped.
#[allow(clippy::too_many_arguments)]
fn tool_call_audit(
    masks: &crate::secrets::Masks,
    tenant: &str,
    agent: &str,
    worker_id: &str,
    task_id: &str,
    epoch: i64,
    data: &serde_json::Value,
) -> (AuditContext, cflow_store::AuditEvent) {
    let name = data["name"].as_str().unwrap_or("unknown").to_string();
    let mut input = data
        .get("input")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    masks.json(tenant, &mut input);
    let mut text = input.to_string();
    let truncated = text.len() > TOOL_AUDIT_INPUT_CAP;
    if truncated {
        let mut end = TOOL_AUDIT_INPUT_CAP;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    let ctx = AuditContext {
        tenant_id: Some(tenant.to_string()),
        principal_id: Some(format!("agent:{agent}")),
        request_id: None,
        source: Some(format!(
            "task {task_id} epoch {epoch} on worker {worker_id}"
        )),
    };
    let event = cflow_store::AuditEvent {
        action: "agent.tool".to_string(),
        resource: format!("task/{task_id}"),
        outcome: "success".to_string(),
        detail: json!({"tool": name, "input": text, "input_truncated": truncated,
                       "epoch": epoch}),
    };
    (ctx, event)
}

/// Artifacts up to this size are masked on the calling (async) thread.
const MASK_INLINE_BYTES: usize = 256 * 1024;

/// `bytes` with `tenant`'s secrets and credentials masked out when they are UTF-8 text; binary
/// content as it is (see [`Scheduler::put_artifact`]).
fn mask_text(masks: &crate::secrets::Masks, tenant: &str, bytes: Vec<u8>) -> Vec<u8> {
    match String::from_utf8(bytes) {
        Ok(mut text) => {
            masks.string(tenant, &mut text);
            text.into_bytes()
        }
        Err(binary) => binary.into_bytes(),
    }
}

/// `outcome` with the tenant's secrets and any credentials masked out of everything a user
/// can read back (output tails, result, detail).
fn masked(masks: &crate::secrets::Masks, tenant: &str, mut outcome: Outcome) -> Outcome {
    masks.with(tenant, |m| {
        m.mask_string(&mut outcome.stdout_tail);
        m.mask_string(&mut outcome.stderr_tail);
        if let Some(r) = &mut outcome.result {
            m.mask_json(r);
        }
        if let Some(d) = &mut outcome.detail {
            m.mask_json(d);
        }
    });
    outcome
}

impl Scheduler {
    /// A worker connects. `tenant`: the tenant of its key (a remote worker serves only that
    /// tenant); `None` for the local pool or a superadmin key (every tenant).
    pub fn register_worker(&self, tenant: Option<&str>, reg: Register) -> SchedResult<Registered> {
        if !(1..=MAX_SLOTS).contains(&reg.slots) {
            return Err(ValidationError::new(
                "slots",
                format!("must be from 1 to {MAX_SLOTS} (got {})", reg.slots),
            )
            .into());
        }
        if reg.drivers.is_empty() {
            return Err(ValidationError::new("drivers", "list at least one driver kind").into());
        }
        let id = match reg.worker_id {
            Some(id) if worker_id_ok(&id) => id,
            Some(id) => {
                return Err(ValidationError::new(
                    "worker_id",
                    format!("'{id}' must be 1-64 characters of a-z, 0-9, '-' or '_'"),
                )
                .into());
            }
            None => format!("w-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        };
        let now = now_ms();
        {
            let mut st = self.lock();
            match st.workers.get_mut(&id) {
                // A worker id belongs to whoever registered it first (the local pool's to the
                // platform): nobody else may take it over, or it could take over its work.
                Some(w) if w.tenant.as_deref() != tenant => {
                    return Err(SchedError::Conflict(format!(
                        "worker id '{id}' belongs to another worker; choose another id"
                    )));
                }
                Some(w) => {
                    w.name = reg.name.clone();
                    w.tenant = tenant.map(str::to_string);
                    w.labels = reg.labels.clone();
                    w.drivers = reg.drivers.iter().cloned().collect();
                    w.slots = reg.slots;
                    w.last_seen = now;
                    w.state = WorkerState::Active;
                }
                None => {
                    st.workers.insert(
                        id.clone(),
                        WorkerRt {
                            id: id.clone(),
                            name: reg.name.clone(),
                            tenant: tenant.map(str::to_string),
                            labels: reg.labels.clone(),
                            drivers: reg.drivers.iter().cloned().collect::<BTreeSet<_>>(),
                            slots: reg.slots,
                            running: HashSet::new(),
                            mailbox: Vec::new(),
                            cancels: Vec::new(),
                            notify: Arc::new(Notify::new()),
                            last_seen: now,
                            leases_extended_at: 0,
                            state: WorkerState::Active,
                        },
                    );
                }
            }
        }
        self.publish(
            tenant.unwrap_or(super::ALL_TENANTS),
            "worker.connected",
            &id,
            json!({"name": reg.name, "slots": reg.slots, "labels": reg.labels}),
        );
        self.wake.notify_one();
        Ok(Registered {
            worker_id: id,
            heartbeat_ms: self.config.heartbeat_ms,
            lease_ms: self.config.lease_ms,
        })
    }

    pub(super) fn check_worker<'a>(
        st: &'a mut super::state::State,
        tenant: Option<&str>,
        worker_id: &str,
    ) -> SchedResult<&'a mut WorkerRt> {
        match st.workers.get_mut(worker_id) {
            Some(w) if tenant.is_none() || w.tenant.as_deref() == tenant => Ok(w),
            _ => Err(SchedError::NotFound(format!(
                "worker {worker_id} (register it first with POST /api/v1/workers)"
            ))),
        }
    }

    /// Stores an artifact of the attempt `(task_id, epoch)` for the worker that holds it (or
    /// held it: a worker uploads just before it reports the ending). The worker must be the
    /// caller's (`tenant`); the store refuses another worker's attempt or an older epoch (409).
    ///
    /// An artifact whose content is valid UTF-8 (logs, transcripts, patches, text files) has
    /// the task's tenant's secrets and common credentials masked out before it is hashed and
    /// stored, with the masker that [`masked`] applies to completions, so what is served back
    /// is the masked text (and its SHA-256 is that of the masked text). Binary artifacts are
    /// stored as given: masking could corrupt them, and a value inside them is not text a
    /// masker could find reliably.
    #[allow(clippy::too_many_arguments)]
    pub async fn put_artifact(
        &self,
        ctx: &AuditContext,
        tenant: Option<&str>,
        worker_id: &str,
        task_id: &str,
        epoch: i64,
        name: &str,
        kind: &str,
        bytes: Vec<u8>,
    ) -> SchedResult<ArtifactMeta> {
        {
            let mut st = self.lock();
            Self::check_worker(&mut st, tenant, worker_id)?;
        }
        // Another tenant's task does not exist for a tenant's worker.
        let task_tenant = match tenant {
            Some(t) => {
                if self.store.task_tenant(task_id).await?.as_deref() != Some(t) {
                    return Err(SchedError::NotFound(format!("task {task_id} not found")));
                }
                Some(t.to_string())
            }
            // The local pool (or a superadmin's worker): the attempt is usually still running
            // (artifacts come before the ending's report), else the store knows its tenant.
            None => {
                let running = self
                    .lock()
                    .running
                    .get(task_id)
                    .map(|r| r.task.tenant.clone());
                match running {
                    Some(t) => Some(t),
                    None => self.store.task_tenant(task_id).await?,
                }
            }
        };
        let bytes = match task_tenant {
            // A large artifact (up to the route's 64 MiB) is masked off the async threads.
            Some(t) if bytes.len() > MASK_INLINE_BYTES => {
                let masks = self.events.masks().clone();
                // The blocking task fails only when the runtime shuts down (masking does not
                // panic); the worker sends the artifact again to whoever serves next.
                tokio::task::spawn_blocking(move || mask_text(&masks, &t, bytes))
                    .await
                    .map_err(|_| SchedError::ShuttingDown)?
            }
            Some(t) => mask_text(self.events.masks(), &t, bytes),
            // No such task: the store refuses the upload, so there is nothing to mask.
            None => bytes,
        };
        let req = ArtifactPut {
            task_id: task_id.to_string(),
            epoch,
            worker_id: worker_id.to_string(),
            name: name.to_string(),
            kind: kind.to_string(),
            bytes,
            now: now_ms(),
        };
        Ok(self.store.put_artifact(ctx, req).await?)
    }

    /// Long-poll: extends the leases of `held`, returns cancellations and new assignments, and
    /// waits up to `wait_ms` when it has neither.
    pub async fn poll(
        &self,
        tenant: Option<&str>,
        worker_id: &str,
        req: PollRequest,
    ) -> SchedResult<PollResponse> {
        if req.wait_ms > MAX_WAIT_MS {
            return Err(ValidationError::new(
                "wait_ms",
                format!("must be at most {MAX_WAIT_MS} (got {})", req.wait_ms),
            )
            .into());
        }
        let now = now_ms();
        let lease = i64::try_from(self.config.lease_ms).unwrap_or(i64::MAX);
        let (notify, extend, recovered) = {
            let mut st = self.lock();
            let st = &mut *st;
            let w = Self::check_worker(st, tenant, worker_id)?;
            w.last_seen = now;
            let recovered = matches!(w.state, WorkerState::Suspected | WorkerState::Lost);
            if recovered {
                w.state = WorkerState::Active;
            }
            let extend = !req.held.is_empty() && now - w.leases_extended_at > lease / 3;
            if extend {
                w.leases_extended_at = now;
            }
            let notify = w.notify.clone();
            let tenant_of_worker = w.tenant.clone();
            // Attempts the worker runs that are no longer its own: stop them.
            let foreign: Vec<Held> = req
                .held
                .iter()
                .filter(|h| {
                    st.running
                        .get(&h.task_id)
                        .is_none_or(|r| r.epoch != h.epoch || r.worker != worker_id)
                })
                .cloned()
                .collect();
            if let Some(w) = st.workers.get_mut(worker_id) {
                w.cancels.extend(foreign);
            }
            (notify, extend, recovered.then_some(tenant_of_worker))
        };
        if let Some(t) = recovered {
            self.publish(
                t.as_deref().unwrap_or(super::ALL_TENANTS),
                "worker.connected",
                worker_id,
                json!({"recovered": true}),
            );
        }
        if extend {
            let held: Vec<(String, i64)> = req
                .held
                .iter()
                .map(|h| (h.task_id.clone(), h.epoch))
                .collect();
            let stale = self
                .store
                .extend_leases(worker_id, &held, now + lease)
                .await?;
            if !stale.is_empty() {
                let mut st = self.lock();
                if let Some(w) = st.workers.get_mut(worker_id) {
                    for (task_id, epoch) in stale {
                        let h = Held { task_id, epoch };
                        if !w.cancels.contains(&h) {
                            w.cancels.push(h);
                        }
                    }
                }
            }
        }
        self.wake.notify_one();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(req.wait_ms);
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                let w = Self::check_worker(&mut st, tenant, worker_id)?;
                if !w.mailbox.is_empty() || !w.cancels.is_empty() {
                    return Ok(PollResponse {
                        assignments: std::mem::take(&mut w.mailbox),
                        cancel: std::mem::take(&mut w.cancels),
                    });
                }
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => return Ok(PollResponse::default()),
                () = self.stop.cancelled() => return Ok(PollResponse::default()),
            }
        }
    }

    /// Applies a batch of reports, one ack per report, in order.
    pub async fn report(
        &self,
        tenant: Option<&str>,
        worker_id: &str,
        reports: Vec<Report>,
    ) -> SchedResult<Vec<ReportAck>> {
        let now = now_ms();
        let mut acks: Vec<Option<ReportAck>> = vec![None; reports.len()];
        {
            let mut st = self.lock();
            let w = Self::check_worker(&mut st, tenant, worker_id)?;
            w.last_seen = now;
            for (i, r) in reports.iter().enumerate() {
                let h = r.held();
                let held = st
                    .running
                    .get(&h.task_id)
                    .is_some_and(|run| run.epoch == h.epoch && run.worker == worker_id);
                if !held {
                    acks[i] = Some(ack(
                        409,
                        format!(
                            "task {} at epoch {} is not held by worker {worker_id}: it was \
                             cancelled, re-assigned after its lease expired, or never assigned \
                             to it; stop it",
                            h.task_id, h.epoch
                        ),
                    ));
                }
            }
        }
        // A start that arrives with its attempt's end (a fast task) is recorded by the
        // completion itself: one commit and one ledger entry instead of two.
        let finishing: HashSet<Held> = reports
            .iter()
            .enumerate()
            .filter(|(i, r)| acks[*i].is_none() && matches!(r, Report::Finished { .. }))
            .map(|(_, r)| r.held())
            .collect();
        // When each start happened on the server's clock: when its report arrived, less the
        // time the worker says it waited to be sent (at most a lease: never before assignment).
        let lease = i64::try_from(self.config.lease_ms).unwrap_or(i64::MAX);
        let started_at = |r: &Report| match r {
            Report::Started { waited_ms, .. } => {
                now - i64::try_from(*waited_ms).unwrap_or(i64::MAX).min(lease)
            }
            _ => now,
        };
        let mut folded: HashMap<Held, i64> = HashMap::new();
        for (i, r) in reports.iter().enumerate() {
            if acks[i].is_none() && matches!(r, Report::Started { .. }) {
                let h = r.held();
                if finishing.contains(&h) {
                    acks[i] = Some(ReportAck::ok());
                    folded.insert(h, started_at(r));
                }
            }
        }
        // Other starts before the finishes, so a start and an end of one attempt apply in order.
        let starts: Vec<usize> = (0..reports.len())
            .filter(|&i| acks[i].is_none() && matches!(reports[i], Report::Started { .. }))
            .collect();
        let reqs = starts
            .iter()
            .filter_map(|&i| match &reports[i] {
                Report::Started { task_id, epoch, .. } => Some(cflow_store::StartRequest {
                    task_id: task_id.clone(),
                    epoch: *epoch,
                    now: started_at(&reports[i]),
                }),
                _ => None,
            })
            .collect::<Vec<_>>();
        let started = if reqs.is_empty() {
            Vec::new()
        } else {
            self.store.start_attempts(&self.sys, reqs).await?
        };
        for (&i, res) in starts.iter().zip(started) {
            let Report::Started { task_id, .. } = &reports[i] else {
                continue;
            };
            let at = started_at(&reports[i]);
            acks[i] = Some(match res {
                Ok(_) => {
                    let (tenant, waited) = {
                        let st = self.lock();
                        st.running
                            .get(task_id)
                            .map(|r| (r.task.tenant.clone(), at - r.task.enqueued_at))
                            .unwrap_or_default()
                    };
                    self.metrics.observe_start(waited);
                    self.publish(
                        &tenant,
                        "task.running",
                        task_id,
                        json!({"worker_id": worker_id}),
                    );
                    ReportAck::ok()
                }
                Err(e) => ack_for(&e),
            });
        }
        let mut tool_calls = Vec::new();
        for (i, r) in reports.iter().enumerate() {
            if acks[i].is_some() {
                continue;
            }
            if let Report::Log {
                task_id,
                epoch,
                stream,
                text,
            } = r
            {
                let tenant = self
                    .lock()
                    .running
                    .get(task_id)
                    .map(|r| r.task.tenant.clone())
                    .unwrap_or_default();
                self.publish(
                    &tenant,
                    "task.log",
                    task_id,
                    json!({"epoch": epoch, "stream": stream.as_str(), "text": text}),
                );
                acks[i] = Some(ReportAck::ok());
            }
            if let Report::Agent {
                task_id,
                epoch,
                kind,
                data,
            } = r
            {
                let (tenant, agent) = self
                    .lock()
                    .running
                    .get(task_id)
                    .map(|r| (r.task.tenant.clone(), r.agent.clone()))
                    .unwrap_or_default();
                self.publish(
                    &tenant,
                    "task.agent",
                    task_id,
                    json!({"epoch": epoch, "kind": kind, "data": data}),
                );
                if kind == "tool_use" {
                    tool_calls.push(tool_call_audit(
                        self.events.masks(),
                        &tenant,
                        &agent,
                        worker_id,
                        task_id,
                        *epoch,
                        data,
                    ));
                }
                acks[i] = Some(ReportAck::ok());
            }
        }
        // Every tool call a model agent made is in the ledger, as the agent.
        for (ctx, event) in tool_calls {
            if let Err(e) = self.store.audit_append(&ctx, event).await {
                tracing::warn!(error = %e, "could not audit a model agent's tool call");
            }
        }
        let finishes: Vec<usize> = (0..reports.len())
            .filter(|&i| acks[i].is_none() && matches!(reports[i], Report::Finished { .. }))
            .collect();
        // The tenants of the finishing attempts, whose secrets are masked out of their output
        // before it is stored.
        let finish_tenants: HashMap<&str, String> = {
            let st = self.lock();
            finishes
                .iter()
                .filter_map(|&i| match &reports[i] {
                    Report::Finished { task_id, .. } => st
                        .running
                        .get(task_id)
                        .map(|r| (task_id.as_str(), r.task.tenant.clone())),
                    _ => None,
                })
                .collect()
        };
        // Each agent ending its task successfully is handed over to its next queued task, which
        // the completion's own transaction assigns (see `State::reserve_next`).
        let mut nexts: HashMap<String, super::state::Pick> = HashMap::new();
        {
            let mut st = self.lock();
            for &i in &finishes {
                if let Report::Finished {
                    task_id, outcome, ..
                } = &reports[i]
                    && outcome.status == FinishedStatus::Succeeded
                    && let Some(pick) = st.reserve_next(task_id, now)
                {
                    nexts.insert(task_id.clone(), pick);
                }
            }
        }
        let mut next_inputs: HashMap<String, BTreeMap<String, serde_json::Value>> = HashMap::new();
        for pick in nexts.values() {
            if !pick.task.depends_on.is_empty() {
                let got = self
                    .store
                    .task_outputs(&pick.task.tenant, &pick.task.depends_on)
                    .await
                    .unwrap_or_default();
                next_inputs.insert(pick.task.id.clone(), got);
            }
        }
        let lease_ms = i64::try_from(self.config.lease_ms).unwrap_or(i64::MAX);
        let masks = self.events.masks();
        let reqs = finishes
            .iter()
            .filter_map(|&i| match &reports[i] {
                Report::Finished {
                    task_id,
                    epoch,
                    outcome,
                } => Some(cflow_store::CompleteRequest {
                    task_id: task_id.clone(),
                    epoch: *epoch,
                    outcome: masked(
                        masks,
                        finish_tenants
                            .get(task_id.as_str())
                            .map_or("", String::as_str),
                        outcome_of(outcome),
                    ),
                    now,
                    started_at: folded
                        .get(&Held {
                            task_id: task_id.clone(),
                            epoch: *epoch,
                        })
                        .copied(),
                    next: nexts.get(task_id).map(|p| cflow_store::NextAssign {
                        task_id: p.task.id.clone(),
                        agent_id: p.agent.clone(),
                        worker_id: p.worker.clone(),
                        lease_ms,
                    }),
                }),
                _ => None,
            })
            .collect::<Vec<_>>();
        let done = if reqs.is_empty() {
            Vec::new()
        } else {
            match self.store.complete_attempts(&self.sys, reqs).await {
                Ok(done) => done,
                Err(e) => {
                    // Nothing was written: the hand-overs' tasks wait in the queue again.
                    let mut st = self.lock();
                    for (_, pick) in nexts {
                        st.unreserve(pick, true, now);
                    }
                    return Err(e.into());
                }
            }
        };
        if !folded.is_empty() {
            let waits: Vec<(String, String, i64)> = {
                let st = self.lock();
                folded
                    .iter()
                    .filter_map(|(h, at)| {
                        st.running.get(&h.task_id).map(|r| {
                            (
                                r.task.tenant.clone(),
                                h.task_id.clone(),
                                at - r.task.enqueued_at,
                            )
                        })
                    })
                    .collect()
            };
            for (tenant, task_id, waited) in waits {
                self.metrics.observe_start(waited);
                self.publish(
                    &tenant,
                    "task.running",
                    &task_id,
                    json!({"worker_id": worker_id}),
                );
            }
        }
        for (&i, res) in finishes.iter().zip(done) {
            let Report::Finished {
                task_id, outcome, ..
            } = &reports[i]
            else {
                continue;
            };
            let next = nexts.remove(task_id);
            acks[i] = Some(match res {
                Ok(settled) => {
                    let failed = outcome.status != FinishedStatus::Succeeded;
                    self.metrics.sandbox(outcome.detail.as_ref());
                    self.settle(task_id, &settled, Some(failed), now).await;
                    if let Some(pick) = next {
                        let inputs = next_inputs.remove(&pick.task.id).unwrap_or_default();
                        self.hand_over(pick, settled.next, inputs, now).await;
                    }
                    ReportAck::ok()
                }
                Err(e) => {
                    if let Some(pick) = next {
                        self.lock().unreserve(pick, true, now);
                        self.wake.notify_one();
                    }
                    ack_for(&e)
                }
            });
        }
        // The store answers every element; should it not, no reservation may outlive the report.
        if !nexts.is_empty() {
            let mut st = self.lock();
            for (_, pick) in nexts.drain() {
                st.unreserve(pick, true, now);
            }
            self.wake.notify_one();
        }
        Ok(acks
            .into_iter()
            .map(|a| a.unwrap_or_else(|| ack(400, "unrecognised report")))
            .collect())
    }

    /// Ends the reservation of a hand-over (`State::reserve_next`) with the store's answer: the
    /// agent runs its next task, or the task is queued again (unless the store says it is no
    /// longer queued: cancelled meanwhile) and the agent is free.
    async fn hand_over(
        &self,
        pick: super::state::Pick,
        answer: Option<Result<cflow_store::Attempt, String>>,
        inputs: BTreeMap<String, serde_json::Value>,
        now: i64,
    ) {
        match answer {
            Some(Ok(attempt)) => {
                let (tenant, id) = (pick.task.tenant.clone(), pick.task.id.clone());
                let data = self.lock().handed_over(pick, &attempt, inputs);
                self.metrics.assigned(1);
                self.publish(&tenant, "task.assigned", &id, data);
            }
            refused => {
                let still_queued = self.still_queued(&pick.task).await;
                tracing::debug!(task = %pick.task.id, ?refused, still_queued, "hand-over not made");
                let agent = pick.agent.clone();
                let draining = {
                    let mut st = self.lock();
                    st.unreserve(pick, still_queued, now);
                    st.agents.get(&agent).and_then(|a| {
                        (a.rec.state == AgentState::Draining && !a.is_busy()).then(|| a.rec.clone())
                    })
                };
                // A drain that began while the hand-over was in flight ends now.
                if let Some(a) = draining {
                    let tenant = a.tenant_id.clone();
                    self.recycle(&tenant, a, false).await;
                }
                self.wake.notify_one();
            }
        }
    }

    /// Applies an ended attempt to the in-memory state: frees the agent, slot and quota, feeds
    /// the breaker (`failed`: `None` for a lost lease, which is not the agent's fault), queues
    /// retries and dependents, recycles the agent when its pool says so, publishes events.
    pub(crate) async fn settle(
        &self,
        task_id: &str,
        settled: &Settled,
        failed: Option<bool>,
        now: i64,
    ) {
        let mut breaker_change = None;
        let mut recycle = None;
        let mut handing_over = false;
        let run: Option<RunRt> = {
            let mut st = self.lock();
            let st = &mut *st;
            let run = st.finished(task_id, now);
            if let Some(run) = &run {
                if let Some(a) = st.agents.get_mut(&run.agent) {
                    a.tasks_since_start += 1;
                    handing_over = a.next.is_some();
                    if let Some(p) = run.permit {
                        breaker_change = match failed {
                            Some(false) => a.breaker.record_success(p),
                            Some(true) => a.breaker.record_failure(p, now),
                            None => {
                                a.breaker.release(p);
                                None
                            }
                        };
                    }
                    let pool = st.swarms.get(&a.rec.swarm_id).and_then(|s| {
                        s.rec
                            .pools
                            .iter()
                            .find(|p| p.agent_type == a.rec.agent_type)
                    });
                    // An agent being handed over to its next task is recycled (if a drain began
                    // meanwhile) when that task ends, or when the hand-over is not made.
                    let draining = a.rec.state == AgentState::Draining && a.next.is_none();
                    let worn = pool.is_some_and(|p| {
                        p.recycle_after_tasks
                            .is_some_and(|n| a.tasks_since_start >= u64::try_from(n).unwrap_or(0))
                            || (p.recycle_on_failure && failed == Some(true))
                    });
                    if draining || worn {
                        recycle = Some((a.rec.clone(), worn));
                        let (swarm, id) = (a.rec.swarm_id.clone(), a.rec.id.clone());
                        if let Some(s) = st.swarms.get_mut(&swarm) {
                            s.idle.remove(&id);
                        }
                    }
                }
                if settled.state == TaskState::Queued {
                    let mut q: QTask = run.task.clone();
                    q.attempts += 1;
                    q.enqueued_at = now;
                    st.enqueue(q);
                }
            }
            run
        };
        let tenant = match &run {
            Some(r) => r.task.tenant.clone(),
            None => match self.store.task_tenant(task_id).await {
                Ok(Some(t)) => t,
                _ => return,
            },
        };
        let state = settled.state;
        let outcome = match state {
            TaskState::Pending | TaskState::Queued => "retrying",
            s => s.as_str(),
        };
        if let Some(f) = failed {
            let name = if f { "failed" } else { "succeeded" };
            self.metrics.outcome(if state == TaskState::TimedOut {
                "timed_out"
            } else {
                name
            });
        } else {
            self.metrics.outcome("lost");
        }
        self.publish(
            &tenant,
            &format!("task.{outcome}"),
            task_id,
            json!({
                "state": state,
                "agent_id": run.as_ref().map(|r| &r.agent),
                "swarm_id": run.as_ref().and_then(|r| r.task.swarm.as_ref()),
            }),
        );
        if state == TaskState::Pending
            && let Ok(Some(t)) = self.store.get_task(&tenant, task_id).await
            && let Some(at) = t.retry_at
        {
            self.lock()
                .retries
                .push(std::cmp::Reverse((at, tenant.clone(), task_id.to_string())));
        }
        if let Some(run) = &run {
            if let Some(change) = breaker_change {
                self.breaker_changed(&tenant, &run.agent, change).await;
            }
            if !handing_over {
                let idle = json!({"swarm_id": run.task.swarm});
                self.publish(&tenant, "agent.idle", &run.agent, idle);
            }
        }
        for d in &settled.cancelled {
            self.publish(
                &tenant,
                "task.cancelled",
                d,
                json!({"reason": format!("dependency {task_id} did not succeed ({state})")}),
            );
        }
        for k in &settled.kill {
            let mut st = self.lock();
            if st.finished(&k.task_id, now).is_some()
                && let Some(w) = st.workers.get_mut(&k.worker_id)
            {
                w.cancels.push(Held {
                    task_id: k.task_id.clone(),
                    epoch: k.epoch,
                });
                w.notify.notify_one();
            }
        }
        if let Some((parent, pstate)) = &settled.parent {
            self.publish(
                &tenant,
                &format!("task.{}", pstate.as_str()),
                parent,
                json!({"quorum": true}),
            );
        }
        if let Err(e) = self.enqueue_ids(&tenant, &settled.queued, now).await {
            tracing::error!(error = %e, "cannot load dependents of {task_id}; they stay queued in the store and are loaded at the next start");
        }
        if let Some((agent, worn)) = recycle {
            self.recycle(&tenant, agent, worn).await;
        }
        self.wake.notify_one();
    }

    /// Stops an agent that drained or wore out, and (worn out) replaces it with a fresh one.
    async fn recycle(&self, tenant: &str, agent: cflow_store::Agent, replace: bool) {
        let ctx = &self.sys;
        if let Err(e) = self.stop_agent(ctx, tenant, &agent.id).await {
            tracing::warn!(agent = %agent.id, error = %e, "cannot stop a recycled agent");
            return;
        }
        if replace && agent.state != AgentState::Draining {
            let new = cflow_store::NewAgent {
                agent_type: agent.agent_type.clone(),
                driver: agent.driver.clone(),
                capabilities: agent.capabilities.clone(),
                labels: agent.labels.clone(),
                sandbox: agent.sandbox.clone(),
            };
            match self.spawn_agent(ctx, tenant, &agent.swarm_id, new).await {
                Ok(fresh) => self.publish(
                    tenant,
                    "agent.recycled",
                    &agent.id,
                    json!({"replaced_by": fresh.id}),
                ),
                Err(e) => {
                    tracing::warn!(agent = %agent.id, error = %e, "cannot replace a recycled agent")
                }
            }
        }
    }

    /// Records a breaker transition: open → the agent is quarantined (stored), half-open → idle
    /// again for one probe, closed → healthy.
    pub(crate) async fn breaker_changed(&self, tenant: &str, agent_id: &str, change: BreakerState) {
        let (kind, target) = match change {
            BreakerState::Open => ("agent.breaker_open", Some(AgentState::Quarantined)),
            BreakerState::HalfOpen => ("agent.breaker_half_open", Some(AgentState::Idle)),
            BreakerState::Closed => ("agent.breaker_closed", None),
        };
        if let Some(target) = target {
            match self
                .store
                .set_agent_state(&self.sys, tenant, agent_id, target)
                .await
            {
                Ok(rec) => {
                    let now = now_ms();
                    let mut st = self.lock();
                    if let Some(a) = st.agents.get_mut(agent_id) {
                        a.rec = rec;
                    }
                    st.free_agent(agent_id, now);
                }
                Err(e) => {
                    tracing::warn!(agent = agent_id, error = %e, "cannot record a breaker change")
                }
            }
        }
        self.publish(tenant, kind, agent_id, json!({"breaker": change}));
    }

    /// A worker leaves: no more assignments; what it still holds moves when its leases expire.
    pub async fn deregister_worker(
        &self,
        tenant: Option<&str>,
        worker_id: &str,
    ) -> SchedResult<()> {
        let t = {
            let mut st = self.lock();
            let w = Self::check_worker(&mut st, tenant, worker_id)?;
            let t = w.tenant.clone();
            if w.running.is_empty() {
                st.workers.remove(worker_id);
            } else {
                w.state = WorkerState::Draining;
            }
            t
        };
        self.publish(
            t.as_deref().unwrap_or(super::ALL_TENANTS),
            "worker.left",
            worker_id,
            json!({}),
        );
        Ok(())
    }

    /// Workers visible to `tenant`: its own remote workers and the platform-wide ones.
    pub fn workers(&self, tenant: Option<&str>) -> Vec<WorkerView> {
        let st = self.lock();
        let mut out: Vec<WorkerView> = st
            .workers
            .values()
            .filter(|w| tenant.is_none() || w.tenant.is_none() || w.tenant.as_deref() == tenant)
            .map(|w| WorkerView {
                id: w.id.clone(),
                name: w.name.clone(),
                tenant_id: w.tenant.clone(),
                labels: w.labels.clone(),
                drivers: w.drivers.iter().cloned().collect(),
                slots: w.slots,
                running: u32::try_from(w.running.len()).unwrap_or(u32::MAX),
                state: w.state.as_str().to_string(),
                last_seen: w.last_seen,
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}
