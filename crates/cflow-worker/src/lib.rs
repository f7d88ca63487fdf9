//! The cflow worker loop, shared by the local pool inside the server and the remote
//! `cflow worker`: register, long-poll for assignments (each poll is also the heartbeat), run each
//! assignment with a [`Driver`](cflow_agents::Driver), and report what happened in batches.
//!
//! The loop talks to the scheduler only through a [`Link`]: [`HttpLink`] for a remote worker,
//! an in-process implementation for the server's own pool. The wire types are
//! [`cflow_agents::proto`].
//!
//! ```text
//!  poll loop ──poll(held, free_slots, wait_ms)──▶ Link ──▶ scheduler
//!     │  assignments                                ▲
//!     ▼                                             │ report(batch) → acks
//!  one tokio task per attempt ──Report──▶ reporter task (two calls in flight, batches what queued)
//! ```
//!
//! # Invariant
//! An attempt stays in the `held` list of every poll from the moment it is assigned until the
//! scheduler has acknowledged its `Finished` report (or told the worker to drop it: a `cancel` in
//! a poll, or a non-200 ack), so its lease never lapses while the worker is alive and polling.
//! A slot is free only once the driver has returned, that is (by the drivers' own invariant)
//! once the attempt's processes are gone; an attempt the worker dropped still occupies its slot
//! until then. A `Finished` report is queued before its slot is released, so when no attempt is
//! running every outcome is already in the reporter's queue.
//!
//! # Layout
//! - [`link`]: the [`Link`] trait and [`LinkError`] (fatal vs. transient failures).
//! - [`http`]: [`HttpLink`], the HTTP/JSON implementation used by `cflow worker`.
//! - [`runtime`]: [`WorkerRuntime`] and [`run`]: registration, the poll loop, drain and teardown.
//! - `table` (private): the attempts the worker holds, the running count and the slot signal.
//! - `attempt` (private): one assignment → a driver job → `Started`, `Log`, `Finished` reports.
//! - `reporter` (private): the batching reporter task and how it applies acks.
//! - `backoff` (private): capped exponential backoff with jitter for transient failures.

mod attempt;
mod backoff;
pub mod http;
pub mod link;
mod reporter;
pub mod runtime;
mod table;

pub use backoff::RetryPolicy;
pub use http::HttpLink;
pub use link::{Link, LinkError};
pub use runtime::{WorkerOptions, WorkerRuntime, run};

/// Why the worker stopped with an error. A clean shutdown is `Ok(())`.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The server refused the worker for good: a bad or unauthorised token, or a registration it
    /// rejects. Retrying cannot help.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The options cannot work (no slots, a malformed worker id).
    #[error("invalid worker options: {0}")]
    Options(String),
}

impl WorkerError {
    /// Whether the token was refused (401 or 403): the user has to use another key.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            WorkerError::Link(LinkError::Unauthorized(_) | LinkError::Forbidden(_))
        )
    }
}

/// The result type of this crate.
pub type Result<T, E = WorkerError> = std::result::Result<T, E>;
