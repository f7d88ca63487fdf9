//! Agent drivers for cflow: the boundary between the scheduler and whatever does a task's work,
//! and the drivers built so far — `exec` (a local command) and `noop` (a benchmark driver that
//! does nothing). The sandbox (issue 4) and the `claude-code` and `llm` drivers (issue 5) plug in
//! here.
//!
//! A worker turns an assignment into a [`Job`], picks the [`Driver`] by kind from [`Drivers`],
//! and awaits [`Driver::run`] while forwarding the [`JobEvent`]s it streams to the task's log.
//! The [`JobOutcome`] is what the attempt record stores: how it ended, capped stdout and stderr,
//! wall and CPU time, an optional result object and the [`Isolation`] it ran under.
//!
//! # Invariant
//! A job's processes never outlive its outcome: when `run()` returns an outcome, every process
//! of the job's process group has been killed (background strays included, even after a normal
//! exit), the leader has been reaped, and `/proc` shows no live member of the group (waited for
//! up to the kill grace period; a process stuck in uninterruptible sleep is logged). If `run()`
//! fails after the spawn, or its future is dropped early, the group is SIGKILLed as it unwinds
//! and tokio reaps the leader in the background.
//!
//! The one way out is a process that leaves the group itself (`setsid`, `setpgid`): exec cannot
//! see it, and the sandbox's PID namespace (issue 4) is what closes that gap. Killed descendants
//! are reaped by init, not by us (they are no longer our children); under an init that does not
//! reap, as in some containers, they linger as zombies, which run nothing.
//!
//! # Layout
//! - [`driver`]: the boundary — [`Driver`], [`Job`], [`JobSpec`], [`JobEvent`],
//!   [`JobOutcome`], [`JobEnd`], [`Isolation`], [`DriverError`].
//! - [`exec`]: the `exec` driver: process group, output capping, the kill sequence.
//! - [`noop`]: the `noop` benchmark driver.
//! - [`llm`]: the `llm` driver, cflow's own agent loop over `cflow-llm` providers, the job's
//!   [`tools::Workbench`] and the server's [`host::Host`]; [`prompts`]: its system prompts.
//! - [`registry`]: [`Drivers`], the drivers on offer by kind.
//! - `group` (private): signalling, watching and emptying one job's process group.
//! - `output` (private): capped output capture and the [`RESULT_MARKER`] line.

pub mod claude;
pub mod driver;
pub mod exec;
mod group;
pub mod host;
pub mod llm;
pub mod model;
pub mod noop;
mod output;
pub mod prompts;
pub mod proto;
pub mod registry;
pub mod tools;

pub use claude::{ClaudeCodeDriver, ClaudeConfig, ClaudeSpec};
pub use driver::{
    BoxFuture, Captured, Driver, DriverError, ExecCommand, ExecSpec, Isolation, Job, JobEnd,
    JobEvent, JobOutcome, JobSpec, KilledBy, ModelUsage, OutputStream,
};
pub use exec::{ExecConfig, ExecDriver};
pub use llm::{LlmConfig, LlmDriver};
pub use noop::NoopDriver;
pub use output::RESULT_MARKER;
pub use registry::Drivers;

/// Every driver kind an agent may name (the drivers a worker actually offers are in its
/// [`Drivers`]).
pub const DRIVER_KINDS: [&str; 4] = ["exec", "noop", "claude-code", "llm"];

/// The result type of this crate.
pub type Result<T, E = DriverError> = std::result::Result<T, E>;
