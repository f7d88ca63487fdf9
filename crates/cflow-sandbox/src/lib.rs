//! cflow's sandbox: every agent command runs inside Linux namespaces, on a read-only view of the
//! host with only its workspace writable, under landlock, seccomp, `no_new_privs`, rlimits and
//! cgroups, and reports exactly which of those layers were active (see the crate README).
//!
//! # Shape
//! - The **supervisor** (the server's local pool or a `cflow worker`, via
//!   [`host::Sandbox`]) prepares a run: a workspace ([`workspace`]), a cgroup ([`cgroup`]), a
//!   [`spec::LaunchSpec`], then starts the launcher as a child and watches it.
//! - The **launcher** ([`launch::launcher_main`], behind `cflow __sandbox-exec` and the
//!   `cflow-sandbox` binary) joins the cgroup, sets rlimits, forks into new namespaces, builds
//!   the filesystem view ([`mounts`]), and becomes the namespace's init: it forks the command,
//!   which drops every capability, sets `no_new_privs`, applies [`landlock`] and [`seccomp`] and
//!   execs. Init reaps, relays signals, answers seccomp notifications (recording each denial) and
//!   exits with the command's status; its exit kills whatever the command left behind.
//! - After the run the supervisor reads the report, the cgroup's counters, collects
//!   [`artifacts`] and cleans up.

pub mod artifacts;
pub mod bridge;
pub mod cgroup;
pub mod egress;
pub mod host;
pub mod landlock;
pub mod launch;
pub mod mounts;
pub mod policy;
pub mod seccomp;
pub mod spec;
pub mod workspace;

pub use policy::{Layer, LayerState, Layers, Limits, Network, Policy};
pub use spec::{LAUNCHER_ARG, LaunchSpec, ReportLine};
