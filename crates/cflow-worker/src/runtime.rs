//! The worker's main loop: register, poll (heartbeat, assignments, cancellations), start an
//! attempt task per assignment, and on shutdown drain, cancel what is left, flush the reports and
//! deregister.

use crate::attempt::{self, JobCtx};
use crate::backoff::{Backoff, RetryPolicy};
use crate::link::{Link, LinkError};
use crate::reporter::Reporter;
use crate::table::Table;
use crate::{Result, WorkerError};
use cflow_agents::Drivers;
use cflow_agents::proto::{PollRequest, PollResponse, Register, Registered};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The longest long-poll the protocol allows.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Never poll more often than this when the server answers at once with nothing (a server that
/// ignores `wait_ms` must not turn the loop into a busy loop).
const MIN_EMPTY_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// The most finished attempts waiting for their `Finished` ack before the worker stops taking
/// work: a slow report path must not grow the held list (and every poll) without bound.
const MAX_UNACKNOWLEDGED: usize = 4096;
/// How long deregistering may take before the worker leaves anyway.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// How a worker presents itself and behaves.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// A stable id (`[a-z0-9_-]{1,64}`), so that after a reconnect the scheduler recognises the
    /// attempts this worker still holds. `None`: the server picks one.
    pub worker_id: Option<String>,
    /// A human name (the host name, usually).
    pub name: String,
    /// `key=value` labels tasks can be pinned to.
    pub labels: BTreeMap<String, String>,
    /// How many attempts run at once (1–1024).
    pub slots: u32,
    /// On shutdown, how long running attempts may take to finish before they are cancelled.
    pub drain_timeout: Duration,
    /// The longest long-poll; the runtime also keeps it under half the server's heartbeat
    /// interval, since polls are the heartbeat.
    pub max_wait: Duration,
    /// The most bytes kept of each of an attempt's stdout and stderr (the tails in `Finished`).
    pub output_cap: usize,
    /// On shutdown, how long the last reports may take to be delivered.
    pub flush_timeout: Duration,
    /// Waits between retries of calls that failed transiently.
    pub retry: RetryPolicy,
}

impl WorkerOptions {
    /// Defaults for everything but the name and the slots.
    pub fn new(name: impl Into<String>, slots: u32) -> Self {
        Self {
            worker_id: None,
            name: name.into(),
            labels: BTreeMap::new(),
            slots,
            drain_timeout: Duration::from_secs(30),
            max_wait: Duration::from_secs(20),
            // Two full tails in one `Finished`, JSON-escaped, stay under the server's 2 MiB
            // request limit.
            output_cap: 128 * 1024,
            flush_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
        }
    }

    fn validate(&self) -> Result<()> {
        if !(1..=1024).contains(&self.slots) {
            return Err(WorkerError::Options(format!(
                "slots must be from 1 to 1024 (got {})",
                self.slots
            )));
        }
        if let Some(id) = &self.worker_id
            && !valid_worker_id(id)
        {
            return Err(WorkerError::Options(format!(
                "worker id '{id}' must be 1 to 64 characters of a-z, 0-9, '_' and '-'"
            )));
        }
        if self.name.trim().is_empty() {
            return Err(WorkerError::Options("the worker's name is empty".into()));
        }
        Ok(())
    }
}

/// Whether `id` is a worker id the protocol accepts: `[a-z0-9_-]{1,64}`.
pub fn valid_worker_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Runs a worker until `shutdown` is cancelled and it has drained (see [`WorkerRuntime::run`]).
pub async fn run(
    link: Arc<dyn Link>,
    drivers: Drivers,
    options: WorkerOptions,
    shutdown: CancellationToken,
) -> Result<()> {
    WorkerRuntime::new(link, drivers, options)
        .run(shutdown)
        .await
}

/// One worker: its link, its drivers and its options.
pub struct WorkerRuntime {
    link: Arc<dyn Link>,
    drivers: Drivers,
    options: WorkerOptions,
    abort: CancellationToken,
    registered: watch::Sender<Option<Registered>>,
}

/// What the server said at registration, turned into the loop's timing.
struct Timing {
    /// `wait_ms` of a long-poll.
    wait: Duration,
    /// The longest gap between two polls (the heartbeat).
    heartbeat: Duration,
}

impl Timing {
    fn new(r: &Registered, max_wait: Duration) -> Self {
        // Half the server's interval leaves room for a slow round trip before it suspects us.
        let half = Duration::from_millis(r.heartbeat_ms / 2).max(Duration::from_millis(50));
        Self {
            wait: max_wait.min(half).min(MAX_WAIT),
            heartbeat: half,
        }
    }
}

impl WorkerRuntime {
    pub fn new(link: Arc<dyn Link>, drivers: Drivers, options: WorkerOptions) -> Self {
        Self {
            link,
            drivers,
            options,
            abort: CancellationToken::new(),
            registered: watch::Sender::new(None),
        }
    }

    /// The server's answer to the latest registration (`None` until the first one succeeds),
    /// for a caller that wants to say "connected".
    pub fn registered(&self) -> watch::Receiver<Option<Registered>> {
        self.registered.subscribe()
    }

    /// Cancelling this token cuts the drain short: running attempts are cancelled at once (they
    /// are reported as retryable failures), then the worker flushes its reports and leaves. It
    /// implies shutdown. For a second Ctrl-C.
    pub fn abort_token(&self) -> CancellationToken {
        self.abort.clone()
    }

    /// Registers, then runs assignments until `shutdown` is cancelled; then takes no more work,
    /// lets running attempts finish for up to `drain_timeout`, cancels the rest, flushes the
    /// reports and deregisters. Transient link failures are retried with backoff for as long
    /// as it takes; an authentication failure (or a refused registration) ends the worker with
    /// an error, after its running attempts were stopped.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        self.options.validate()?;
        let shutdown = Stop {
            shutdown,
            abort: self.abort.clone(),
        };
        let Some(registered) = self.register(&shutdown).await? else {
            return Ok(());
        };
        let worker_id = registered.worker_id.clone();
        tracing::info!(
            worker_id,
            heartbeat_ms = registered.heartbeat_ms,
            lease_ms = registered.lease_ms,
            "worker registered"
        );
        let table = Arc::new(Table::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let reporter = tokio::spawn(
            Reporter {
                link: self.link.clone(),
                worker_id: worker_id.clone(),
                table: table.clone(),
                retry: self.options.retry,
            }
            .run(rx),
        );
        let ctx = Arc::new(JobCtx {
            table: table.clone(),
            drivers: self.drivers.clone(),
            output_cap: self.options.output_cap,
            reports: tx,
            link: self.link.clone(),
            worker_id: worker_id.clone(),
            retry: self.options.retry,
        });
        let mut state = Loop {
            rt: &self,
            ctx,
            worker_id,
            timing: Timing::new(&registered, self.options.max_wait),
        };
        let outcome = state.poll_loop(&shutdown).await;
        let Loop { ctx, worker_id, .. } = state;

        // Teardown: whatever is still running is cancelled; the Finished reports of what ended
        // are flushed; then the worker leaves.
        table.cancel_all();
        table.all_ended().await;
        drop(ctx);
        let mut reporter = reporter;
        if tokio::time::timeout(self.options.flush_timeout, &mut reporter)
            .await
            .is_err()
        {
            reporter.abort();
            tracing::warn!(
                unacknowledged = table.len(),
                "reports not delivered before the flush timeout; the scheduler will re-queue \
                 those attempts when their leases lapse"
            );
        }
        let outcome = outcome.and_then(|()| match table.fatal_error() {
            Some(e) => Err(WorkerError::Link(e)),
            None => Ok(()),
        });
        if !matches!(&outcome, Err(e) if e.is_auth()) {
            match tokio::time::timeout(DEREGISTER_TIMEOUT, self.link.deregister(&worker_id)).await {
                Ok(Ok(())) => tracing::info!(worker_id, "worker deregistered"),
                Ok(Err(e)) => tracing::warn!(worker_id, "could not deregister: {e}"),
                Err(_) => tracing::warn!(worker_id, "could not deregister: timed out"),
            }
        }
        outcome
    }

    /// Registers, retrying transient failures. `None`: shut down before it succeeded.
    async fn register(&self, shutdown: &Stop) -> Result<Option<Registered>> {
        let req = Register {
            worker_id: self.options.worker_id.clone(),
            name: self.options.name.clone(),
            labels: self.options.labels.clone(),
            slots: self.options.slots,
            drivers: self.drivers.kinds().map(str::to_string).collect(),
        };
        let mut backoff = Backoff::new(self.options.retry);
        loop {
            match self.link.register(req.clone()).await {
                Ok(r) => {
                    self.registered.send_replace(Some(r.clone()));
                    return Ok(Some(r));
                }
                Err(LinkError::Unavailable(why)) => {
                    let wait = backoff.next_wait();
                    tracing::warn!("cannot register with the server ({why}); retrying in {wait:?}");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.wait() => return Ok(None),
                    }
                }
                Err(e) => return Err(WorkerError::Link(e)),
            }
        }
    }
}

/// Shutdown was asked for: gracefully (`shutdown`) or not (`abort`).
struct Stop {
    shutdown: CancellationToken,
    abort: CancellationToken,
}

impl Stop {
    fn is_set(&self) -> bool {
        self.shutdown.is_cancelled() || self.abort.is_cancelled()
    }

    async fn wait(&self) {
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            () = self.abort.cancelled() => {}
        }
    }
}

/// The poll loop's state.
struct Loop<'r> {
    rt: &'r WorkerRuntime,
    ctx: Arc<JobCtx>,
    worker_id: String,
    timing: Timing,
}

impl Loop<'_> {
    /// Polls until drained (or the drain timed out), or a fatal error.
    async fn poll_loop(&mut self, shutdown: &Stop) -> Result<()> {
        let table = self.ctx.table.clone();
        let slots = self.rt.options.slots;
        let mut backoff = Backoff::new(self.rt.options.retry);
        let mut drain_until: Option<Instant> = None;
        let mut last_poll: Option<Instant> = None;
        loop {
            if table.fatal.is_cancelled() {
                return Ok(()); // the caller reports the recorded error
            }
            if drain_until.is_none() && shutdown.is_set() {
                let timeout = if self.rt.abort.is_cancelled() {
                    Duration::ZERO
                } else {
                    self.rt.options.drain_timeout
                };
                tracing::info!(
                    running = table.running(),
                    "shutting down: taking no more work, draining for up to {timeout:?}"
                );
                drain_until = Some(Instant::now() + timeout);
            }
            let running = table.running();
            if let Some(until) = drain_until {
                if running == 0 {
                    return Ok(());
                }
                if Instant::now() >= until || self.rt.abort.is_cancelled() {
                    tracing::warn!(running, "drain timeout: cancelling the running attempts");
                    return Ok(());
                }
            }
            let unacknowledged = table.len().saturating_sub(running as usize);
            let free = if drain_until.is_some() || unacknowledged >= MAX_UNACKNOWLEDGED {
                0
            } else {
                slots.saturating_sub(running)
            };
            if free == 0 {
                // Full or draining: poll only as a heartbeat, and wake as soon as a slot frees
                // (to ask for work, or to see whether the drain is done).
                let due = last_poll.map_or_else(Instant::now, |t| t + self.timing.heartbeat);
                if Instant::now() < due {
                    let drain_end = drain_until.unwrap_or(due);
                    tokio::select! {
                        () = table.slot_freed() => {}
                        () = tokio::time::sleep_until(due) => {}
                        () = tokio::time::sleep_until(drain_end), if drain_until.is_some() => {}
                        () = shutdown.wait(), if drain_until.is_none() => {}
                        () = self.rt.abort.cancelled() => {}
                        () = table.fatal.cancelled() => {}
                    }
                    continue;
                }
            }
            let wait = if free > 0 {
                self.timing.wait
            } else {
                Duration::ZERO
            };
            let req = PollRequest {
                held: table.held(),
                free_slots: free,
                wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            };
            let started = Instant::now();
            last_poll = Some(started);
            // An in-flight poll is not abandoned on shutdown: the server may already have leased
            // assignments in its answer, and dropping it would strand them until their leases
            // lapse. It returns within `wait` anyway.
            let result = tokio::select! {
                r = self.rt.link.poll(&self.worker_id, req) => r,
                () = table.fatal.cancelled() => continue,
            };
            match result {
                Ok(resp) => {
                    backoff.reset();
                    let empty = resp.assignments.is_empty() && resp.cancel.is_empty();
                    self.apply(resp);
                    if empty && free > 0 && started.elapsed() < MIN_EMPTY_POLL_INTERVAL {
                        tokio::time::sleep_until(started + MIN_EMPTY_POLL_INTERVAL).await;
                    }
                }
                Err(LinkError::Unavailable(why)) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(
                        "cannot reach the server ({why}); retrying in {wait:?} (running attempts \
                         continue)"
                    );
                    self.pause(wait, &table).await;
                }
                Err(LinkError::Rejected {
                    status: 404,
                    detail,
                }) => {
                    // The server forgot this worker (a restart, or it was declared lost): register
                    // again under the same id; the next poll lists what it still holds.
                    tracing::warn!(%detail, "the server does not know this worker; registering again");
                    match self.rt.register(shutdown).await? {
                        Some(r) => {
                            self.timing = Timing::new(&r, self.rt.options.max_wait);
                            self.worker_id = r.worker_id;
                        }
                        None => continue,
                    }
                }
                Err(LinkError::Rejected { status, detail }) => {
                    let wait = backoff.next_wait();
                    tracing::error!(status, %detail, "the server refused a poll; retrying in {wait:?}");
                    self.pause(wait, &table).await;
                }
                Err(fatal) => {
                    table.set_fatal(fatal.clone());
                    return Err(WorkerError::Link(fatal));
                }
            }
        }
    }

    async fn pause(&self, wait: Duration, table: &Table) {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = self.rt.abort.cancelled() => {}
            () = table.fatal.cancelled() => {}
        }
    }

    /// Cancels what the server took away and starts what it gave.
    fn apply(&self, resp: PollResponse) {
        let table = &self.ctx.table;
        for held in resp.cancel {
            match table.drop_held(&held.task_id, held.epoch) {
                Some(false) => {
                    tracing::info!(task_id = %held.task_id, epoch = held.epoch, "attempt cancelled");
                }
                // Its end is reported (a poll listed it while the report's answer was on its
                // way, and the scheduler had already settled it): nothing was stopped. Under a
                // load of short tasks this happens for about a quarter of them.
                Some(true) => {
                    tracing::debug!(task_id = %held.task_id, epoch = held.epoch, "finished attempt forgotten");
                }
                None => {}
            }
        }
        for a in resp.assignments {
            let cancel = CancellationToken::new();
            if !table.insert(&a.task_id, a.epoch, cancel.clone()) {
                continue;
            }
            tokio::spawn(attempt::run(self.ctx.clone(), a, cancel));
        }
    }
}
