//! What a sandboxed command may do: its network, its resource limits, and whether it may run
//! when a layer of isolation is missing on the host. A [`Policy`] is the operator's (config) and
//! the admin's (tenant and agent settings); a task may ask for less, never for more.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The network a sandboxed command gets.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// No network at all: a fresh network namespace with its loopback down, socket families
    /// other than `AF_UNIX` refused by seccomp, and TCP bind/connect refused by landlock.
    #[default]
    Off,
    /// A fresh network namespace whose loopback is up: the command can talk to itself only.
    Loopback,
    /// The host's network (no network namespace).
    Full,
}

impl Network {
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Off => "off",
            Network::Loopback => "loopback",
            Network::Full => "full",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Network::Off),
            "loopback" => Ok(Network::Loopback),
            "full" => Ok(Network::Full),
            other => Err(format!(
                "unknown network '{other}': expected off, loopback or full"
            )),
        }
    }
}

/// Resource limits of one sandboxed command (and everything it starts). `0` never means
/// "unlimited": every limit has a value; a policy raises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// CPU seconds per process (`RLIMIT_CPU`): past it the kernel sends SIGXCPU, then SIGKILL.
    pub cpu_seconds: u64,
    /// Memory of the whole process tree (cgroup `memory` limit; `RLIMIT_DATA` per process when no
    /// cgroup is available). Past it the kernel's OOM killer ends a process of the tree.
    pub memory_bytes: u64,
    /// Processes and threads of the whole tree (cgroup `pids.max`; also `RLIMIT_NPROC`).
    pub max_processes: u64,
    /// Open file descriptors per process (`RLIMIT_NOFILE`).
    pub open_files: u64,
    /// Largest file a process may write (`RLIMIT_FSIZE`): past it writes fail with `EFBIG`
    /// and the writer gets SIGXFSZ.
    pub file_size_bytes: u64,
    /// Disk the task's workspace may use in all; the supervisor measures it while the task runs
    /// and kills the tree when it is exceeded.
    pub disk_bytes: u64,
    /// Size of the private `/tmp` (a tmpfs, counted against memory).
    pub tmp_bytes: u64,
}

pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;

impl Default for Limits {
    fn default() -> Self {
        Self {
            cpu_seconds: 3600,
            memory_bytes: 2 * GIB,
            max_processes: 256,
            open_files: 1024,
            file_size_bytes: GIB,
            disk_bytes: GIB,
            tmp_bytes: 256 * MIB,
        }
    }
}

/// One layer of isolation, as `cflow doctor` and the attempt record name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// A new user namespace: the command's root maps to an unprivileged host user.
    UserNs,
    PidNs,
    MountNs,
    IpcNs,
    UtsNs,
    /// A new network namespace (absent by design when the network is `full`).
    NetNs,
    /// The host's filesystem read-only, only the workspace and a private `/tmp` writable,
    /// secrets (data directory, `/root`, `/home`, config and token files) hidden, a fresh `/proc`.
    Filesystem,
    Landlock,
    Seccomp,
    NoNewPrivs,
    /// A fresh session (`setsid`): no controlling terminal of the server's.
    Session,
    /// Per-process limits (`setrlimit`).
    Rlimits,
    /// Per-tree limits and accounting (cgroup v2, or v1 `memory` and `pids`).
    Cgroup,
}

impl Layer {
    pub const ALL: [Layer; 13] = [
        Layer::UserNs,
        Layer::PidNs,
        Layer::MountNs,
        Layer::IpcNs,
        Layer::UtsNs,
        Layer::NetNs,
        Layer::Filesystem,
        Layer::Landlock,
        Layer::Seccomp,
        Layer::NoNewPrivs,
        Layer::Session,
        Layer::Rlimits,
        Layer::Cgroup,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Layer::UserNs => "user_ns",
            Layer::PidNs => "pid_ns",
            Layer::MountNs => "mount_ns",
            Layer::IpcNs => "ipc_ns",
            Layer::UtsNs => "uts_ns",
            Layer::NetNs => "net_ns",
            Layer::Filesystem => "filesystem",
            Layer::Landlock => "landlock",
            Layer::Seccomp => "seccomp",
            Layer::NoNewPrivs => "no_new_privs",
            Layer::Session => "session",
            Layer::Rlimits => "rlimits",
            Layer::Cgroup => "cgroup",
        }
    }

    /// What to do when this layer is unavailable on a host.
    pub fn fix(self) -> &'static str {
        match self {
            Layer::UserNs
            | Layer::PidNs
            | Layer::MountNs
            | Layer::IpcNs
            | Layer::UtsNs
            | Layer::NetNs => {
                "enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, \
                 user.max_user_namespaces > 0; on Ubuntu also \
                 kernel.apparmor_restrict_unprivileged_userns=0) or run cflow as root"
            }
            // The namespaces exist by then (their failures name their own layers): what failed
            // is a mount, a directory or the root switch inside them.
            Layer::Filesystem => {
                "the namespaces were made, but the host refused a step of the sandbox's view of \
                 the filesystem (named above); a container's default security profile (Docker's \
                 seccomp and AppArmor profiles, for example) forbids mounts inside namespaces: \
                 run cflow on the host, or in a container allowed to mount"
            }
            Layer::Landlock => {
                "boot a kernel with CONFIG_SECURITY_LANDLOCK=y and 'landlock' in the lsm= list \
                 (Linux 5.13 or later)"
            }
            Layer::Seccomp => "boot a kernel with CONFIG_SECCOMP_FILTER=y (Linux 5.0 or later)",
            Layer::NoNewPrivs | Layer::Session | Layer::Rlimits => {
                "this should never happen on Linux"
            }
            Layer::Cgroup => {
                "mount cgroup v2 with the memory and pids controllers delegated to cflow's user, \
                 or cgroup v1 memory and pids hierarchies writable by it"
            }
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of one layer on one attempt (or on the host, for `cflow doctor`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LayerState {
    Active,
    /// The host cannot provide it; `why` names the cause.
    Unavailable {
        why: String,
    },
    /// Turned off by policy (for example the network namespace when the network is `full`).
    Disabled {
        why: String,
    },
}

impl LayerState {
    pub fn is_active(&self) -> bool {
        matches!(self, LayerState::Active)
    }
}

impl fmt::Display for LayerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerState::Active => f.write_str("active"),
            LayerState::Unavailable { why } => write!(f, "unavailable ({why})"),
            LayerState::Disabled { why } => write!(f, "disabled by policy ({why})"),
        }
    }
}

/// Every layer's state, in [`Layer::ALL`] order.
pub type Layers = BTreeMap<Layer, LayerState>;

/// How a command is sandboxed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub network: Network,
    pub limits: Limits,
    /// Run even when a layer is unavailable on the host, recording which were active. When
    /// `false` (the default) such a task is refused with an error naming the layer and the fix.
    pub allow_degraded: bool,
    /// `host:port` endpoints reachable through the egress proxy when the network is `off` or
    /// `loopback` (a model API, e.g. `api.anthropic.com:443`); everything else stays out of reach.
    pub egress: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            network: Network::Off,
            limits: Limits::default(),
            allow_degraded: false,
            egress: Vec::new(),
        }
    }
}

/// Checks an egress entry: `host:port`, a port from 1 to 65535, no scheme, no path.
pub fn check_egress(entry: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "egress entry '{entry}' is not host:port (e.g. api.anthropic.com:443 or 127.0.0.1:11434)"
        )
    };
    let (host, port) = entry.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty()
        || host.contains('/')
        || host.contains(char::is_whitespace)
        || port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failure inside the namespaces does not send the operator to enable user namespaces,
    /// which already worked by then; a failure to make them does.
    #[test]
    fn each_layer_says_what_to_do_about_its_own_failure() {
        assert!(Layer::UserNs.fix().contains("user namespaces"));
        let fs = Layer::Filesystem.fix();
        assert!(!fs.contains("unprivileged_userns"), "{fs}");
        assert!(fs.contains("mount"), "{fs}");
        for layer in Layer::ALL {
            assert!(!layer.fix().is_empty(), "{layer}");
        }
    }
}
