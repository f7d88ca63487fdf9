//! The reporter: one task that sends every report of the worker, one `report` call at a time,
//! each call carrying everything that queued up meanwhile. With nothing else queued a report goes
//! out at once; under load the batches grow by themselves, so the number of round trips tracks
//! the server's latency rather than the task rate.

use crate::backoff::{Backoff, RetryPolicy};
use crate::link::{Link, LinkError};
use crate::table::Table;
use cflow_agents::proto::{Report, ReportAck};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The most reports in one call.
const MAX_BATCH: usize = 4096;
/// Roughly the most bytes of output in one call, well under the server's 2 MiB body limit (one
/// `Finished` with two full output tails may exceed it alone; it then goes out on its own).
const MAX_BATCH_BYTES: usize = 1024 * 1024;

pub(crate) struct Reporter {
    pub(crate) link: Arc<dyn Link>,
    pub(crate) worker_id: String,
    pub(crate) table: Arc<Table>,
    pub(crate) retry: RetryPolicy,
}

impl Reporter {
    /// Runs until the queue is closed and empty, or a fatal error (recorded in the table).
    pub(crate) async fn run(self, mut rx: mpsc::UnboundedReceiver<Report>) {
        let mut backoff = Backoff::new(self.retry);
        // Reports of a call that failed transiently, sent again (in order) before newer ones.
        let mut carried: Vec<Report> = Vec::new();
        loop {
            let mut batch = std::mem::take(&mut carried);
            if batch.is_empty() {
                match rx.recv().await {
                    Some(r) => batch.push(r),
                    None => return,
                }
            }
            let mut bytes: usize = batch.iter().map(weight).sum();
            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(r) => {
                        bytes += weight(&r);
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
            // What the acks are applied to, and what is sent again if the call fails on the way:
            // `Started` and `Finished` must arrive; a lost `Log` chunk is also in the final
            // output tails, so it is not worth a retry.
            for r in &mut batch {
                r.stamp();
            }
            let sent: Vec<Sent> = batch.iter().map(Sent::of).collect();
            match self.link.report(&self.worker_id, batch).await {
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
                    carried = sent.into_iter().filter_map(|s| s.retry).collect();
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.table.fatal.cancelled() => return,
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
                    return;
                }
            }
        }
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
