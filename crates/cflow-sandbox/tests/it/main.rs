//! Hostile tests of the sandbox: real commands that try to escape, exhaust or outlive it, run
//! through the real exec driver (`ExecDriver::sandboxed`) on this host. Every test checks both
//! that the host was unaffected and that the outcome records why.
//!
//! These tests need what the CI machine has: root, user namespaces, landlock, seccomp and
//! cgroup v1 (or v2) `memory` and `pids` hierarchies writable by cflow.

mod claude;
mod claude_mcp;
mod hostile;
mod limits;
mod network;
mod workbench;
mod workspace;

use cflow_agents::{
    Driver, DriverError, ExecConfig, ExecDriver, ExecSpec, Job, JobEvent, JobOutcome, JobSpec,
};
use cflow_sandbox::spec::RunReport;
use cflow_sandbox::{Limits, Network, Policy};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use cflow_sandbox::host::Sandbox;
pub use cflow_sandbox::policy::MIB;

/// A base directory outside `/tmp`, `/root` and `/home` (all hidden or replaced in the sandbox),
/// as a real server's data directory is: `/var/tmp` (the checkout itself may live under `/tmp`).
pub const OUTSIDE_TMP: &str = "/var/tmp/cflow-sandbox-tests";

/// The PATH every sandboxed command gets: the system's, not this test process's (whose first
/// entries live under `/root`, which the sandbox hides).
pub const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Small limits so that a hostile command hits them fast.
pub fn small_limits() -> Limits {
    Limits {
        cpu_seconds: 60,
        memory_bytes: 256 * MIB,
        max_processes: 64,
        open_files: 256,
        file_size_bytes: 64 * MIB,
        disk_bytes: 64 * MIB,
        tmp_bytes: 16 * MIB,
    }
}

/// One sandbox on its own data directory, and a driver that runs every job in it.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub sandbox: Arc<Sandbox>,
    pub driver: ExecDriver,
}

/// Builds drivers one at a time. Concurrent probes once shared a cgroup name and removed each
/// other's (`concurrent_probes_both_succeed` guards that); serialising them also keeps the
/// start of each test's driver cheap on 2 cores.
pub static PROBE_LOCK: Mutex<()> = Mutex::new(());

impl Harness {
    /// A sandbox with [`small_limits`], the network off and no degrading, adjusted by `tweak`.
    pub fn new(tweak: impl FnOnce(&mut Policy)) -> Self {
        Self::with_dir(
            tempfile::tempdir().expect("a temporary data directory"),
            tweak,
        )
    }

    /// Like [`Harness::new`], with the data directory under `base` instead of `/tmp` (which the
    /// sandbox replaces by a private tmpfs, so a data directory there is out of sight anyway).
    pub fn new_in(base: &str, tweak: impl FnOnce(&mut Policy)) -> Self {
        std::fs::create_dir_all(base).expect("the base directory");
        Self::with_dir(
            tempfile::tempdir_in(base).expect("a temporary data directory"),
            tweak,
        )
    }

    /// Like [`Harness::new`], on the data directory `dir`.
    pub fn with_dir(dir: tempfile::TempDir, tweak: impl FnOnce(&mut Policy)) -> Self {
        let mut config = cflow_sandbox::host::Config::under(
            dir.path(),
            PathBuf::from(env!("CARGO_BIN_EXE_cflow-sandbox")),
        );
        let mut policy = Policy {
            network: Network::Off,
            limits: small_limits(),
            allow_degraded: false,
            egress: Vec::new(),
        };
        tweak(&mut policy);
        config.policy = policy;
        let sandbox = Arc::new(Sandbox::new(config).expect("the sandbox sets up"));
        let driver = {
            let _guard = PROBE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            ExecDriver::sandboxed(
                ExecConfig {
                    kill_grace: Duration::from_millis(500),
                    ..ExecConfig::default()
                },
                Arc::clone(&sandbox),
            )
        };
        Self {
            dir,
            sandbox,
            driver,
        }
    }

    /// The data directory (hidden from commands).
    pub fn data(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `spec` as task `task_id` (which must be unique in this test binary: it names the
    /// run's cgroup) to its end, then checks that the run left no report file and no cgroup.
    pub async fn run(
        &self,
        task_id: &str,
        spec: ExecSpec,
        timeout: Duration,
    ) -> Result<JobOutcome, DriverError> {
        self.run_job(job(task_id, spec, timeout), CancellationToken::new())
            .await
    }

    pub async fn run_job(
        &self,
        job: Job,
        cancel: CancellationToken,
    ) -> Result<JobOutcome, DriverError> {
        let task_id = job.task_id.clone();
        let (result, _events) = drive(&self.driver, job, cancel).await;
        self.assert_cleaned_up(&task_id);
        result
    }

    /// Runs a shell command line and expects an outcome (not a driver error).
    pub async fn sh(&self, task_id: &str, line: &str, timeout: Duration) -> JobOutcome {
        self.run(task_id, shell(line), timeout)
            .await
            .unwrap_or_else(|e| panic!("task {task_id} could not run: {e}"))
    }

    /// No report file is left in `<data>/runs`, and the run's cgroup `<pid>-<task>-1` is gone
    /// from every hierarchy.
    pub fn assert_cleaned_up(&self, task_id: &str) {
        let runs = self.data().join("runs");
        let left: Vec<String> = std::fs::read_dir(&runs)
            .expect("the runs directory exists")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            left.is_empty(),
            "task {task_id}: report files left in {}: {left:?}",
            runs.display()
        );
        // Runs are named `<pid>-<task>-<attempt>-<n>`.
        let prefix = format!("{}-{task_id}-1-", std::process::id());
        for parent in cgroup_dirs("") {
            let left: Vec<String> = std::fs::read_dir(&parent)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect();
            assert!(
                left.is_empty(),
                "task {task_id}: the run's cgroup is still in {}: {left:?}",
                parent.display()
            );
        }
    }
}

/// Where a run's cgroup named `name` lives in this host's hierarchies (v1 memory and pids, and
/// the v2 tree), whether or not it exists.
pub fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut out = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => continue,
        };
        let rel = path.trim_start_matches('/');
        let base = match controllers {
            "memory" | "pids" | "cpuacct" => Path::new("/sys/fs/cgroup").join(controllers),
            "" => {
                let unified = Path::new("/sys/fs/cgroup/unified");
                if unified.is_dir() {
                    unified.to_path_buf()
                } else {
                    PathBuf::from("/sys/fs/cgroup")
                }
            }
            _ => continue,
        };
        out.push(base.join(rel).join("cflow").join(name));
    }
    out
}

/// A job with the system PATH, a 1 MiB output cap and no admin settings.
pub fn job(task_id: &str, spec: ExecSpec, timeout: Duration) -> Job {
    Job {
        task_id: task_id.to_string(),
        attempt: 1,
        spec: JobSpec::Exec(spec),
        timeout,
        output_cap: 1 << 20,
        sandbox: None,
        agent_id: String::new(),
        epoch: 0,
        host: None,
    }
}

/// `sh -c LINE` with the system PATH.
pub fn shell(line: &str) -> ExecSpec {
    ExecSpec::shell(line).env("PATH", PATH)
}

/// Runs a job to its end, draining its events concurrently.
pub async fn drive(
    driver: &dyn Driver,
    job: Job,
    cancel: CancellationToken,
) -> (Result<JobOutcome, DriverError>, Vec<JobEvent>) {
    let (tx, mut rx) = mpsc::channel(16);
    let collect = async {
        let mut events = Vec::new();
        while let Some(event) = rx.recv().await {
            events.push(event);
        }
        events
    };
    tokio::join!(driver.run(job, tx, cancel), collect)
}

/// The outcome's sandbox report (every sandboxed outcome has one).
pub fn report(outcome: &JobOutcome) -> &RunReport {
    outcome
        .sandbox
        .as_ref()
        .expect("a sandboxed outcome carries a run report")
}

/// Whether some `limits_hit` entry starts with `prefix` (e.g. "memory:", "processes:").
pub fn hit(outcome: &JobOutcome, prefix: &str) -> bool {
    report(outcome)
        .limits_hit
        .iter()
        .any(|l| l.starts_with(prefix))
}

/// Whether `what` was recorded as denied.
pub fn denied(outcome: &JobOutcome, what: &str) -> bool {
    report(outcome).denied.iter().any(|d| d == what)
}

/// A marker unlikely to appear anywhere else on the host.
pub fn marker(label: &str) -> String {
    format!(
        "cflow-hostile-{label}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

/// The live (not zombie) processes of the whole host whose command line contains `needle`.
pub fn live_with_marker(needle: &str) -> Vec<(i32, String)> {
    let own = std::process::id() as i32;
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains(needle) {
            continue;
        }
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rfind(')')
                    .and_then(|i| s[i + 1..].split_whitespace().next().map(str::to_string))
            })
            .unwrap_or_default();
        if state == "Z" || state == "X" {
            continue;
        }
        found.push((pid, cmdline));
    }
    found
}

/// Waits up to `within` for no live process to carry `needle`; returns what is left.
pub async fn survivors(needle: &str, within: Duration) -> Vec<(i32, String)> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = live_with_marker(needle);
        if left.is_empty() || tokio::time::Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// This process's resident set size in bytes (`VmRSS` of /proc/self/status).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("a VmRSS line")
}
