//! The `noop` driver: a BENCHMARK driver that runs nothing. It exists so `cflow bench tasks` can
//! measure the platform's own overhead (submit, schedule, lease, report, commit) without a
//! process spawn in the way. Not for real work.

use crate::driver::{BoxFuture, Driver, DriverError, Isolation, Job, JobEnd, JobEvent, JobOutcome};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Completes every job at once with exit code 0 and no output, whatever its spec, without
/// sending any event. A job whose token is already cancelled ends as cancelled instead, like
/// any driver. Wall time is measured (it is tiny); CPU time is `None` as no process ran.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopDriver;

impl Driver for NoopDriver {
    fn kind(&self) -> &'static str {
        "noop"
    }

    fn isolation(&self) -> Isolation {
        Isolation::None {
            reason: "the noop benchmark driver runs no process, so there is nothing to isolate"
                .to_string(),
        }
    }

    fn run(
        &self,
        _job: Job,
        _events: mpsc::Sender<JobEvent>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JobOutcome, DriverError>> {
        let started = std::time::Instant::now();
        let end = if cancel.is_cancelled() {
            JobEnd::Cancelled
        } else {
            JobEnd::Exited { code: 0 }
        };
        let mut outcome = JobOutcome::new(end, self.isolation());
        outcome.wall_time = started.elapsed();
        Box::pin(std::future::ready(Ok(outcome)))
    }
}
