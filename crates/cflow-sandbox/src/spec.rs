//! The contract between the supervisor (the server or worker process, which prepares a run) and
//! the launcher (`cflow __sandbox-exec` or `cflow-sandbox`, which builds the sandbox and execs the
//! command): the [`LaunchSpec`] it is given, and the [`ReportLine`]s it writes back.

use crate::policy::{Layer, Layers, Limits, Network};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The first argument that turns `cflow` (or `cflow-sandbox`) into the launcher.
pub const LAUNCHER_ARG: &str = "__sandbox-exec";

/// Exit code of the launcher when it could not build the sandbox (the report says why).
pub const SETUP_FAILED_EXIT: i32 = 125;

/// Everything the launcher needs, passed as one JSON argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchSpec {
    /// The program (looked up on the command's `PATH` unless it contains a `/`) and its arguments.
    pub argv: Vec<String>,
    /// The command's whole environment (nothing else of the launcher's is passed on).
    pub env: Vec<(String, String)>,
    /// The working directory, normally the workspace.
    pub cwd: PathBuf,
    /// Paths mounted read-write at the same place (the workspace). Everything else is read-only.
    pub writable: Vec<PathBuf>,
    /// Paths replaced by an empty read-only directory (or an empty file): secrets.
    pub hidden: Vec<PathBuf>,
    pub network: Network,
    pub limits: Limits,
    /// `cgroup.procs` files the launcher joins before anything else, so the whole tree is
    /// accounted and limited (created and cleaned up by the supervisor).
    #[serde(default)]
    pub cgroup_procs: Vec<PathBuf>,
    /// The host user and group the sandbox's root maps to.
    pub host_uid: u32,
    pub host_gid: u32,
    /// Run even when a layer cannot be set up, recording it as unavailable.
    pub allow_degraded: bool,
    /// The file the launcher appends [`ReportLine`]s to (JSON lines).
    pub report: PathBuf,
    /// The supervisor's egress proxy socket: init relays connections to 127.0.0.1:3128 inside
    /// the sandbox to it (see [`crate::egress`]).
    #[serde(default)]
    pub egress_socket: Option<PathBuf>,
}

/// One line of the launcher's report file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReportLine {
    /// Which layers the sandbox has, written once it is built, before the command starts.
    Layers { layers: Layers },
    /// An operation the sandbox refused (a seccomp-filtered syscall, by name and detail).
    Denied { what: String },
    /// How the command ended (its own exit, not the launcher's).
    Exit {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// The sandbox could not be built: nothing was run.
    Error {
        layer: Option<Layer>,
        message: String,
    },
}

/// What the sandbox saw of one run, for the attempt record (`detail.sandbox` in the API).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    /// Every layer's state on this run.
    pub layers: Layers,
    /// Operations the sandbox refused, in order (the first [`MAX_DENIALS_KEPT`]).
    pub denied: Vec<String>,
    /// How many operations were refused in all.
    pub denied_total: u64,
    /// Limits the run hit, e.g. `memory: 1 OOM kill`, `processes: 37 forks refused`,
    /// `disk: 1073741824 bytes used of 1073741824`.
    pub limits_hit: Vec<String>,
    /// Peak memory of the tree and its CPU time, when a cgroup measured them.
    pub memory_peak_bytes: Option<u64>,
    pub cpu_time_ms: Option<u64>,
    /// Where a failed run's workspace was kept for debugging.
    pub workspace_kept: Option<PathBuf>,
    /// Artifacts left out and why (limits, symlinks).
    pub artifacts_skipped: Vec<String>,
}

/// Most denials listed on one attempt; the rest are only counted.
pub const MAX_DENIALS_KEPT: usize = 100;
