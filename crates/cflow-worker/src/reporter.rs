//! The reporter: one task that sends every report of the worker, at most [`IN_FLIGHT`] `report`
//! calls at a time, each call carrying everything that queued up meanwhile. With nothing else
//! queued a report goes out at once (after a few yields of the thread that let a burst being
//! reported join it, see [`gather`]); under load the batches grow by themselves, so the number of
//! round trips tracks the server's latency rather than the task rate. Two calls in flight keep
//! the server's writer busy while it finishes the previous call (its commit, then the in-memory
//! settlement) and this worker runs what that call handed it; one call would make them take
//! turns.
//!
//! Order: the reports of one attempt reach the server in the order they were made. A report
//! whose attempt already has a report in a call in flight waits for that call's answer (and is
//! sent after anything of that call that has to be sent again).

use crate::backoff::{Backoff, RetryPolicy};
use crate::link::{Link, LinkError};
use crate::table::Table;
use cflow_agents::proto::{Report, ReportAck};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// The most reports in one call.
const MAX_BATCH: usize = 4096;
/// Roughly the most bytes of output in one call, well under the server's 2 MiB body limit (one
/// `Finished` with two full output tails may exceed it alone; it then goes out on its own).
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// The most `report` calls in flight at once.
pub(crate) const IN_FLIGHT: usize = 2;
/// Times the reporter yields its thread to let a burst of reports finish queueing before it
/// sends a call (see [`gather`]).
const GATHER_YIELDS: u32 = 3;

/// Takes what is queued, then yields the thread (at most [`GATHER_YIELDS`] times, while more
/// keeps arriving) and takes again. A call's answer hands the worker a wave of attempts at once
/// (the scheduler's hand-over); without the pause the first of their reports went out alone and
/// the rest waited for that call's answer, so the server's writer alternated a batch of a few
/// tasks with one of hundreds and sat idle after each small one.
async fn gather(rx: &mut mpsc::UnboundedReceiver<Report>, pending: &mut VecDeque<Report>) {
    while let Ok(r) = rx.try_recv() {
        pending.push_back(r);
    }
    for _ in 0..GATHER_YIELDS {
        tokio::task::yield_now().await;
        let before = pending.len();
        while let Ok(r) = rx.try_recv() {
            pending.push_back(r);
        }
        if pending.len() == before {
            break;
        }
    }
}

pub(crate) struct Reporter {
    pub(crate) link: Arc<dyn Link>,
    pub(crate) worker_id: String,
    pub(crate) table: Arc<Table>,
    pub(crate) retry: RetryPolicy,
}

/// An attempt, as reports name it.
type Key = (String, i64);

/// A call's answer with what it sent.
type Answered = (Vec<Sent>, Result<Vec<ReportAck>, LinkError>);

impl Reporter {
    /// Runs until the queue is closed and every report is answered, or a fatal error (recorded
    /// in the table).
    pub(crate) async fn run(self, mut rx: mpsc::UnboundedReceiver<Report>) {
        let mut backoff = Backoff::new(self.retry);
        // Reports not sent yet, in the order they were made (those of a call that failed
        // transiently go back to the front, ahead of newer ones).
        let mut pending: VecDeque<Report> = VecDeque::new();
        // Attempts with a report in a call in flight.
        let mut busy: HashSet<Key> = HashSet::new();
        let mut calls: JoinSet<Answered> = JoinSet::new();
        let mut closed = false;
        loop {
            while calls.len() < IN_FLIGHT {
                gather(&mut rx, &mut pending).await;
                let mut batch = take_batch(&mut pending, &busy);
                if batch.is_empty() {
                    break;
                }
                for r in &mut batch {
                    r.stamp();
                }
                let sent: Vec<Sent> = batch.iter().map(Sent::of).collect();
                busy.extend(sent.iter().map(|s| (s.task_id.clone(), s.epoch)));
                let (link, id) = (self.link.clone(), self.worker_id.clone());
                calls.spawn(async move {
                    let answer = link.report(&id, batch).await;
                    (sent, answer)
                });
            }
            if calls.is_empty() {
                if closed {
                    // Nothing in flight, so nothing is held back: the queue is empty.
                    return;
                }
                match rx.recv().await {
                    Some(r) => pending.push_back(r),
                    None => closed = true,
                }
                continue;
            }
            tokio::select! {
                joined = calls.join_next() => {
                    let Some(joined) = joined else { continue };
                    let (sent, answer) = match joined {
                        Ok(v) => v,
                        // A call's task cannot panic short of a bug in the link; its attempts
                        // stay held and their leases will lapse.
                        Err(e) => {
                            tracing::error!(error = %e, "a report call failed unexpectedly");
                            continue;
                        }
                    };
                    for s in &sent {
                        busy.remove(&(s.task_id.clone(), s.epoch));
                    }
                    if !self.answered(sent, answer, &mut backoff, &mut pending).await {
                        return;
                    }
                }
                r = rx.recv(), if !closed => match r {
                    Some(r) => pending.push_back(r),
                    None => closed = true,
                },
            }
        }
    }

    /// Applies a call's answer; `false` on a fatal error (recorded in the table).
    async fn answered(
        &self,
        sent: Vec<Sent>,
        answer: Result<Vec<ReportAck>, LinkError>,
        backoff: &mut Backoff,
        pending: &mut VecDeque<Report>,
    ) -> bool {
        match answer {
            Ok(acks) if acks.len() == sent.len() => {
                backoff.reset();
                for (s, ack) in sent.iter().zip(&acks) {
                    self.apply(s, ack);
                }
            }
            Ok(acks) => {
                tracing::error!(
                    sent = sent.len(),
                    acks = acks.len(),
                    "the server answered a report batch with the wrong number of acks; \
                     dropping the batch's attempts (their leases will lapse)"
                );
                self.refuse_all(&sent, 502, "wrong number of acks");
            }
            Err(LinkError::Unavailable(why)) => {
                let wait = backoff.next_wait();
                tracing::warn!(
                    reports = sent.len(),
                    "cannot deliver reports ({why}); retrying in {wait:?}"
                );
                // `Started` and `Finished` must arrive; a lost `Log` chunk is also in the final
                // output tails, so it is not worth a retry.
                for r in sent.into_iter().rev().filter_map(|s| s.retry) {
                    pending.push_front(r);
                }
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = self.table.fatal.cancelled() => return false,
                }
            }
            Err(LinkError::Rejected { status, detail }) => {
                tracing::error!(
                    status,
                    %detail,
                    reports = sent.len(),
                    "the server refused a report batch; dropping its attempts \
                     (their leases will lapse and the scheduler will re-queue them)"
                );
                self.refuse_all(&sent, status, &detail);
            }
            Err(fatal) => {
                self.table.set_fatal(fatal);
                return false;
            }
        }
        true
    }

    fn refuse_all(&self, sent: &[Sent], status: u16, detail: &str) {
        let ack = ReportAck {
            status,
            detail: Some(detail.to_string()),
        };
        for s in sent {
            self.apply(s, &ack);
        }
    }

    /// A refused `Started` or `Log` means the scheduler no longer considers this worker the
    /// attempt's holder: stop the job and forget it. Any answer to a `Finished` settles it.
    fn apply(&self, s: &Sent, ack: &ReportAck) {
        if s.finished {
            self.table.settled(&s.task_id, s.epoch);
            if !ack.is_ok() {
                tracing::info!(
                    task_id = %s.task_id,
                    epoch = s.epoch,
                    status = ack.status,
                    detail = ack.detail.as_deref().unwrap_or(""),
                    "the server refused the attempt's result (it was taken away from this worker)"
                );
            }
        } else if !ack.is_ok() && self.table.drop_attempt(&s.task_id, s.epoch) {
            tracing::warn!(
                task_id = %s.task_id,
                epoch = s.epoch,
                status = ack.status,
                detail = ack.detail.as_deref().unwrap_or(""),
                "the server refused a report: stopping the attempt"
            );
        }
    }
}

/// What was sent, for applying its ack.
struct Sent {
    task_id: String,
    epoch: i64,
    finished: bool,
    /// A copy to send again if the call fails transiently (`Started` and `Finished` only).
    retry: Option<Report>,
}

impl Sent {
    fn of(r: &Report) -> Self {
        match r {
            Report::Started { task_id, epoch, .. } => Sent {
                task_id: task_id.clone(),
                epoch: *epoch,
                finished: false,
                retry: Some(r.clone()),
            },
            Report::Log { task_id, epoch, .. } | Report::Agent { task_id, epoch, .. } => Sent {
                task_id: task_id.clone(),
                epoch: *epoch,
                finished: false,
                retry: None,
            },
            Report::Finished { task_id, epoch, .. } => Sent {
                task_id: task_id.clone(),
                epoch: *epoch,
                finished: true,
                retry: Some(r.clone()),
            },
        }
    }
}

/// Takes the next call's reports out of `pending`, in order: every report whose attempt has no
/// report in a call in flight (`busy`), up to the caps. The others stay, in order.
fn take_batch(pending: &mut VecDeque<Report>, busy: &HashSet<Key>) -> Vec<Report> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    let mut kept = VecDeque::new();
    while let Some(r) = pending.pop_front() {
        if batch.len() >= MAX_BATCH || (bytes >= MAX_BATCH_BYTES && !batch.is_empty()) {
            pending.push_front(r);
            break;
        }
        let h = r.held();
        if busy.contains(&(h.task_id, h.epoch)) {
            kept.push_back(r);
        } else {
            bytes += weight(&r);
            batch.push(r);
        }
    }
    kept.append(pending);
    *pending = kept;
    batch
}

/// A rough size of a report on the wire, for capping a batch.
fn weight(r: &Report) -> usize {
    match r {
        Report::Started { .. } => 64,
        Report::Log { text, .. } => 96 + text.len(),
        Report::Agent { data, .. } => 128 + data.to_string().len(),
        Report::Finished { outcome, .. } => {
            256 + outcome.stdout.len() + outcome.stderr.len() + outcome.isolation.len()
        }
    }
}
