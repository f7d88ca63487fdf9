//! The supervisor's side of the sandbox: one [`Sandbox`] per server or worker process. It knows
//! the launcher binary, where workspaces and reports go, which host paths are secrets, and what
//! the host can provide (cgroups, and the layers a real probe run found). For each run it
//! prepares a workspace, a cgroup and a [`LaunchSpec`] ([`Sandbox::prepare`]); after the run it
//! reads the launcher's report and the cgroup's counters, collects artifacts and cleans up
//! ([`Sandbox::finish`]).
//!
//! # Several runs in one workspace
//! A model agent's loop runs many commands in one workspace. [`Sandbox::create_workspace`] makes
//! it (marked live, so the sweeper never takes it), [`Sandbox::prepare_in`] prepares each run
//! attached to it (its own cgroup, report and launch spec; [`Sandbox::finish`] then neither
//! collects artifacts from the workspace nor ends it), and [`Sandbox::finish_workspace`]
//! collects the artifacts and removes or keeps it once, at the end.

use crate::artifacts::{self, Artifact};
use crate::cgroup::{Cgroup, CgroupHost};
use crate::egress::EgressProxy;
use crate::policy::{Layer, LayerState, Layers, Network, Policy};
use crate::spec::{LAUNCHER_ARG, LaunchSpec, MAX_DENIALS_KEPT, ReportLine, RunReport};
use crate::workspace::{self, Source, Workspace};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};

/// How the operator set the sandbox up (the `[sandbox]` section of the config).
#[derive(Debug, Clone)]
pub struct Config {
    /// The launcher: the `cflow` binary itself, or `cflow-sandbox`.
    pub launcher: PathBuf,
    /// Where workspaces are made, and how long failed ones are kept.
    pub workspaces: workspace::Config,
    /// Where the launcher's report files go (hidden from the command).
    pub run_dir: PathBuf,
    /// Host paths the command must not see (the data directory, config and token files);
    /// `/root` and `/home` are always added.
    pub hidden: Vec<PathBuf>,
    /// The host user and group the sandbox's root maps to. Default: `nobody` (65534) when cflow
    /// runs as root, else cflow's own user (the only mapping an unprivileged user may write).
    pub host_uid: u32,
    pub host_gid: u32,
    /// The default policy; tenant and agent settings adjust it per run.
    pub policy: Policy,
}

impl Config {
    /// Defaults under `data_dir`: `workspaces/`, `runs/`, failed workspaces kept an hour.
    pub fn under(data_dir: &Path, launcher: PathBuf) -> Self {
        let (host_uid, host_gid) = default_ids();
        let owner = (host_uid, host_gid);
        Self {
            launcher,
            workspaces: workspace::Config {
                root: data_dir.join("workspaces"),
                keep_failed_for: std::time::Duration::from_secs(3600),
                // SAFETY: geteuid has no preconditions.
                owner: (unsafe { libc::geteuid() } == 0).then_some(owner),
            },
            run_dir: data_dir.join("runs"),
            hidden: vec![data_dir.to_path_buf()],
            host_uid,
            host_gid,
            policy: Policy::default(),
        }
    }
}

fn default_ids() -> (u32, u32) {
    // SAFETY: getters without preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if uid == 0 { (65534, 65534) } else { (uid, gid) }
}

/// Finds the launcher: `$CFLOW_SANDBOX_LAUNCHER`, else this executable when it is `cflow` or
/// `cflow-sandbox`, else a `cflow-sandbox` or `cflow` next to it or one directory up (a test
/// binary in `target/<profile>/deps`).
pub fn find_launcher() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("CFLOW_SANDBOX_LAUNCHER") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name == "cflow" || name == "cflow-sandbox" {
        return Ok(exe);
    }
    let dir = exe.parent().unwrap_or(Path::new("."));
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        for n in ["cflow-sandbox", "cflow"] {
            let p = d.join(n);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(format!(
        "no sandbox launcher found next to {} — build the cflow binary, or set \
         CFLOW_SANDBOX_LAUNCHER to the cflow or cflow-sandbox binary",
        exe.display()
    ))
}

/// Why a run could not be prepared. Nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("{0}")]
    Workspace(#[from] workspace::Error),
    #[error("cannot create the run's cgroup: {0}")]
    Cgroup(std::io::Error),
    #[error(
        "the sandbox layer 'cgroup' is unavailable on this host ({0}) — {fix}; or allow \
         degraded sandboxes in the policy (sandbox.allow_degraded)",
        fix = Layer::Cgroup.fix()
    )]
    NoCgroup(String),
    #[error("cannot prepare the run: {0}")]
    Io(#[from] std::io::Error),
}

/// One run to prepare.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// A safe, unique name for this run (task id and epoch): names the workspace, cgroup and report.
    pub id: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workspace: Source,
    pub policy: Policy,
    /// A host directory that persists across runs (an agent's own state, such as its model
    /// sessions), mounted writable at its own path and used as the command's `HOME`. `None`:
    /// `HOME` is the private `/tmp`.
    pub home: Option<PathBuf>,
}

/// A prepared run: start [`Prepared::launcher`] with [`Prepared::args`], stdin a pipe the
/// supervisor keeps open for the run (closing it kills the sandbox), in its own process group.
#[derive(Debug)]
pub struct Prepared {
    pub launcher: PathBuf,
    pub spec: LaunchSpec,
    pub workspace: Workspace,
    pub cgroup: Option<Cgroup>,
    cgroup_state: LayerState,
    /// The run's egress proxy, when its policy allows endpoints.
    pub egress: Option<EgressProxy>,
    /// The run works in a workspace it does not own ([`Sandbox::prepare_in`]): `finish` leaves
    /// the workspace alone.
    attached: bool,
}

impl Prepared {
    pub fn args(&self) -> Vec<OsString> {
        vec![
            OsString::from(LAUNCHER_ARG),
            OsString::from(serde_json::to_string(&self.spec).expect("a launch spec serialises")),
        ]
    }

    /// The workspace's disk use, for the quota.
    pub fn disk_usage(&self) -> std::io::Result<u64> {
        self.workspace.disk_usage()
    }
}

/// What the launcher's report file said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedReport {
    pub layers: Option<Layers>,
    pub denied: Vec<String>,
    pub denied_total: u64,
    pub exit: Option<(Option<i32>, Option<i32>)>,
    pub error: Option<(Option<Layer>, String)>,
}

impl ParsedReport {
    pub fn read(path: &Path) -> Self {
        let mut out = ParsedReport::default();
        let Ok(text) = std::fs::read_to_string(path) else {
            return out;
        };
        for line in text.lines() {
            match serde_json::from_str::<ReportLine>(line) {
                Ok(ReportLine::Layers { layers }) => out.layers = Some(layers),
                Ok(ReportLine::Denied { what }) => {
                    out.denied_total += 1;
                    if out.denied.len() < MAX_DENIALS_KEPT {
                        out.denied.push(what);
                    }
                }
                Ok(ReportLine::Exit { code, signal }) => out.exit = Some((code, signal)),
                Ok(ReportLine::Error { layer, message }) => out.error = Some((layer, message)),
                Err(_) => {}
            }
        }
        out
    }
}

/// The end of a run, as the supervisor assembles it.
#[derive(Debug)]
pub struct Finished {
    pub report: RunReport,
    pub artifacts: Vec<Artifact>,
    /// The launcher could not build the sandbox: nothing ran. The message names the layer and fix.
    pub setup_error: Option<String>,
    /// How the command itself ended, from init: `(exit code, signal)`.
    pub exit: Option<(Option<i32>, Option<i32>)>,
    /// The kernel's OOM killer ended a process of the run.
    pub oom_killed: bool,
}

/// The host's sandbox.
#[derive(Debug)]
pub struct Sandbox {
    config: Config,
    cgroups: Result<CgroupHost, String>,
    /// Workspace ids of the runs in progress (never swept).
    live: std::sync::Mutex<std::collections::HashSet<String>>,
    /// When kept workspaces were last swept.
    last_sweep: std::sync::Mutex<std::time::Instant>,
}

/// How often [`Sandbox::finish`] also removes kept workspaces whose time is up.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Numbers every run, probe and report file of this process (several sandboxes may share a
/// process, and cgroups and report names must never collide).
static SEQ: AtomicU64 = AtomicU64::new(0);

fn next_seq() -> u64 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

impl Sandbox {
    /// Sets up the directories, finds the host's cgroups and sweeps what a crashed process left.
    pub fn new(mut config: Config) -> std::io::Result<Self> {
        for p in ["/root", "/home"] {
            let p = PathBuf::from(p);
            if !config.hidden.contains(&p) {
                config.hidden.push(p);
            }
        }
        if !config.hidden.contains(&config.run_dir) {
            config.hidden.push(config.run_dir.clone());
        }
        std::fs::create_dir_all(&config.run_dir)?;
        std::fs::create_dir_all(&config.workspaces.root)?;
        let cgroups = CgroupHost::discover();
        if let Ok(host) = &cgroups {
            let swept = host.sweep();
            if swept > 0 {
                tracing::info!(swept, "removed cgroups left by an earlier run");
            }
        }
        let swept = workspace::sweep(&config.workspaces, std::time::SystemTime::now(), &|_| false);
        if swept > 0 {
            tracing::info!(swept, "removed expired workspaces");
        }
        Ok(Self {
            config,
            cgroups,
            live: Default::default(),
            last_sweep: std::sync::Mutex::new(std::time::Instant::now()),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What the host offers for cgroups, or why it offers none.
    pub fn cgroups(&self) -> Result<&CgroupHost, &str> {
        self.cgroups.as_ref().map_err(|s| s.as_str())
    }

    /// Prepares a run (blocking: it may copy a directory or check out a repository).
    pub fn prepare(&self, req: RunRequest) -> Result<Prepared, PrepareError> {
        let (cgroup, cgroup_state) = self.run_cgroup(&req.id, &req.policy)?;
        if let Ok(mut live) = self.live.lock() {
            live.insert(req.id.clone());
        }
        let ws = match Workspace::create(&self.config.workspaces, &req.id, &req.workspace) {
            Ok(ws) => ws,
            Err(e) => {
                if let Some(cg) = cgroup {
                    let _ = cg.remove();
                }
                if let Ok(mut live) = self.live.lock() {
                    live.remove(&req.id);
                }
                return Err(e.into());
            }
        };
        self.assemble(req, ws, cgroup, cgroup_state, false)
    }

    /// Creates a workspace that several runs share (blocking: it may copy a directory or check
    /// out a repository). It is live until [`Sandbox::finish_workspace`] (or
    /// [`Sandbox::abandon_workspace`]) ends it, so no sweep removes it meanwhile.
    pub fn create_workspace(&self, id: &str, source: &Source) -> Result<Workspace, PrepareError> {
        if let Ok(mut live) = self.live.lock() {
            live.insert(id.to_string());
        }
        Workspace::create(&self.config.workspaces, id, source).map_err(|e| {
            if let Ok(mut live) = self.live.lock() {
                live.remove(id);
            }
            e.into()
        })
    }

    /// Prepares a run in `workspace`, the path of a live workspace of this sandbox (from
    /// [`Sandbox::create_workspace`]): `req.workspace` is ignored, and [`Sandbox::finish`]
    /// neither collects artifacts from the workspace nor removes it.
    pub fn prepare_in(&self, req: RunRequest, workspace: &Path) -> Result<Prepared, PrepareError> {
        let root = &self.config.workspaces.root;
        let id = workspace
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|_| workspace.parent() == Some(root.as_path()))
            .filter(|id| self.live.lock().is_ok_and(|live| live.contains(*id)));
        let Some(id) = id else {
            return Err(PrepareError::Workspace(workspace::Error::Io {
                context: format!("workspace '{}'", workspace.display()),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not a live workspace of this sandbox (make it with create_workspace)",
                ),
            }));
        };
        let ws = Workspace::attached(root, id)?;
        let (cgroup, cgroup_state) = self.run_cgroup(&req.id, &req.policy)?;
        self.assemble(req, ws, cgroup, cgroup_state, true)
    }

    /// The run's cgroup, or why it has none (an error unless the policy allows degrading).
    fn run_cgroup(
        &self,
        id: &str,
        policy: &Policy,
    ) -> Result<(Option<Cgroup>, LayerState), PrepareError> {
        Ok(match &self.cgroups {
            Ok(host) => match host.create(
                &format!("{}-{}-{}", std::process::id(), id, next_seq()),
                &policy.limits,
            ) {
                Ok(cg) => (Some(cg), LayerState::Active),
                Err(e) if policy.allow_degraded => (
                    None,
                    LayerState::Unavailable {
                        why: format!("creating the run's cgroup failed: {e}"),
                    },
                ),
                Err(e) => return Err(PrepareError::Cgroup(e)),
            },
            Err(why) if policy.allow_degraded => {
                (None, LayerState::Unavailable { why: why.clone() })
            }
            Err(why) => return Err(PrepareError::NoCgroup(why.clone())),
        })
    }

    /// The rest of a run's preparation, once it has its workspace and cgroup: the report file,
    /// the environment, the writable paths, the egress proxy and the launch spec.
    fn assemble(
        &self,
        req: RunRequest,
        ws: Workspace,
        cgroup: Option<Cgroup>,
        cgroup_state: LayerState,
        attached: bool,
    ) -> Result<Prepared, PrepareError> {
        let policy = req.policy;
        let report = self
            .config
            .run_dir
            .join(format!("{}-{}.report", req.id, next_seq()));
        let _ = std::fs::remove_file(&report);
        let mut env: Vec<(String, String)> = req
            .env
            .into_iter()
            .filter(|(k, _)| k != "HOME" && k != "TMPDIR")
            .collect();
        let home = req
            .home
            .as_ref()
            .map_or_else(|| "/tmp".to_string(), |h| h.display().to_string());
        env.push(("HOME".into(), home));
        env.push(("TMPDIR".into(), "/tmp".into()));
        let mut writable = vec![ws.path.clone()];
        if let Some(h) = &req.home {
            std::fs::create_dir_all(h)?;
            if let Some((uid, gid)) = self.config.workspaces.owner {
                std::os::unix::fs::lchown(h, Some(uid), Some(gid))?;
            }
            writable.push(h.clone());
        }
        let egress = if !policy.egress.is_empty() && policy.network != Network::Full {
            let path = self
                .config
                .run_dir
                .join(format!("{}-{}.egress", req.id, next_seq()));
            let proxy = EgressProxy::start(&path, policy.egress.clone())?;
            let url = format!("http://127.0.0.1:{}", crate::egress::PORT);
            env.retain(|(k, _)| {
                !matches!(
                    k.to_ascii_uppercase().as_str(),
                    "HTTP_PROXY" | "HTTPS_PROXY" | "ALL_PROXY" | "NO_PROXY"
                )
            });
            for var in [
                "HTTP_PROXY",
                "HTTPS_PROXY",
                "ALL_PROXY",
                "http_proxy",
                "https_proxy",
                "all_proxy",
            ] {
                env.push((var.into(), url.clone()));
            }
            Some(proxy)
        } else {
            None
        };
        let spec = LaunchSpec {
            argv: req.argv,
            env,
            cwd: ws.path.clone(),
            writable,
            hidden: self.config.hidden.clone(),
            network: policy.network,
            limits: policy.limits,
            cgroup_procs: cgroup.as_ref().map(|c| c.procs_files()).unwrap_or_default(),
            host_uid: self.config.host_uid,
            host_gid: self.config.host_gid,
            allow_degraded: policy.allow_degraded,
            report,
            egress_socket: egress.as_ref().map(|e| e.path().to_path_buf()),
        };
        Ok(Prepared {
            launcher: self.config.launcher.clone(),
            spec,
            workspace: ws,
            cgroup,
            cgroup_state,
            egress,
            attached,
        })
    }

    /// Reads the report and the cgroup, collects artifacts (the patch is taken by `git` run
    /// inside a sandbox of its own), removes the cgroup and ends the workspace.
    pub fn finish(
        &self,
        prepared: Prepared,
        succeeded: bool,
        artifact_spec: &artifacts::Spec,
    ) -> Finished {
        let Prepared {
            spec,
            workspace,
            cgroup,
            cgroup_state,
            egress,
            attached,
            ..
        } = prepared;
        let mut parsed = ParsedReport::read(&spec.report);
        if let Some(proxy) = egress {
            for what in proxy.denied() {
                parsed.denied_total += 1;
                if parsed.denied.len() < MAX_DENIALS_KEPT {
                    parsed.denied.push(what);
                }
            }
        }
        let _ = std::fs::remove_file(&spec.report);
        let mut report = RunReport {
            layers: parsed.layers.clone().unwrap_or_default(),
            denied: parsed.denied.clone(),
            denied_total: parsed.denied_total,
            ..RunReport::default()
        };
        report.layers.insert(Layer::Cgroup, cgroup_state);
        let mut oom_killed = false;
        if let Some(cg) = cgroup {
            let _ = cg.kill_all();
            let stats = cg.stats();
            if stats.oom_kills > 0 {
                oom_killed = true;
                report.limits_hit.push(format!(
                    "memory: {} process(es) killed by the OOM killer at the {}-byte limit",
                    stats.oom_kills, spec.limits.memory_bytes
                ));
            }
            if stats.pids_max_hits > 0 {
                report.limits_hit.push(format!(
                    "processes: {} fork(s) refused at the limit of {}",
                    stats.pids_max_hits, spec.limits.max_processes
                ));
            }
            report.memory_peak_bytes = stats.memory_peak_bytes;
            report.cpu_time_ms = stats.cpu_usage_ns.map(|ns| ns / 1_000_000);
            if let Err(e) = cg.remove() {
                tracing::warn!(error = %e, "could not remove a run's cgroup");
            }
        }
        // The command died of the limit's signal, or (run through a shell, which reports a
        // child's death as 128 + signal) exited with that code.
        let limit_signal = match parsed.exit {
            Some((_, Some(sig))) => Some((sig, "died of")),
            Some((Some(code), None)) if code > 128 => Some((code - 128, "exited with 128 + ")),
            _ => None,
        };
        if let Some((sig, how)) = limit_signal {
            let shown = if how == "died of" {
                format!("the command died of signal {sig}")
            } else {
                format!("a process died of signal {sig} (exit {})", 128 + sig)
            };
            match sig {
                libc::SIGXCPU => report.limits_hit.push(format!(
                    "cpu: over {} CPU seconds ({shown}, SIGXCPU)",
                    spec.limits.cpu_seconds
                )),
                libc::SIGXFSZ => report.limits_hit.push(format!(
                    "file size: a write past {} bytes ({shown}, SIGXFSZ)",
                    spec.limits.file_size_bytes
                )),
                libc::SIGSYS => report.limits_hit.push(format!(
                    "seccomp: killed for a forbidden system call ({shown}, SIGSYS)"
                )),
                _ => {}
            }
        }
        let mut artifacts = Vec::new();
        if !attached {
            let collect = parsed.error.is_none().then_some(artifact_spec);
            let (collected, skipped, kept) = self.end_workspace(workspace, succeeded, collect);
            artifacts = collected;
            report.artifacts_skipped = skipped;
            report.workspace_kept = kept;
        }
        Finished {
            report,
            artifacts,
            setup_error: parsed.error.map(|(_, m)| m),
            exit: parsed.exit,
            oom_killed,
        }
    }

    /// Ends a workspace made by [`Sandbox::create_workspace`] (blocking): collects its artifacts
    /// like [`Sandbox::finish`] does for a run's own workspace (the patch against the starting
    /// commit taken by `git` in a sandbox, files matching the globs), then removes it
    /// (`succeeded`) or keeps it for `keep_failed_for`. Returns the artifacts, what was left
    /// out and why, and the kept path.
    pub fn finish_workspace(
        &self,
        workspace: Workspace,
        succeeded: bool,
        artifact_spec: &artifacts::Spec,
    ) -> (Vec<Artifact>, Vec<String>, Option<PathBuf>) {
        self.end_workspace(workspace, succeeded, Some(artifact_spec))
    }

    /// Ends a workspace made by [`Sandbox::create_workspace`] without collecting anything, kept
    /// like a failed run's (its owner went away without finishing it). Returns the kept path.
    pub fn abandon_workspace(&self, workspace: Workspace) -> Option<PathBuf> {
        self.end_workspace(workspace, false, None).2
    }

    /// Collects artifacts (when `collect` is given), removes or keeps the workspace, and drops
    /// it from the live set.
    fn end_workspace(
        &self,
        workspace: Workspace,
        succeeded: bool,
        collect: Option<&artifacts::Spec>,
    ) -> (Vec<Artifact>, Vec<String>, Option<PathBuf>) {
        let (mut artifacts, mut skipped, mut kept) = (Vec::new(), Vec::new(), None);
        if let Some(artifact_spec) = collect {
            let runner = |args: &[&str]| self.run_git(&workspace.path, args);
            let collected = artifacts::collect(
                &workspace.path,
                workspace.base_commit.as_deref(),
                artifact_spec,
                &runner,
            );
            artifacts = collected.artifacts;
            skipped = collected.skipped;
        }
        let id = workspace
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match workspace.finish(succeeded, &self.config.workspaces) {
            Ok(k) => kept = k,
            Err(e) => tracing::warn!(error = %e, "could not clean a workspace up"),
        }
        if let Ok(mut live) = self.live.lock() {
            live.remove(&id);
        }
        self.sweep_now_and_then();
        (artifacts, skipped, kept)
    }

    /// Removes kept workspaces whose time is up, at most every [`SWEEP_EVERY`].
    fn sweep_now_and_then(&self) {
        {
            let Ok(mut last) = self.last_sweep.lock() else {
                return;
            };
            if last.elapsed() < SWEEP_EVERY {
                return;
            }
            *last = std::time::Instant::now();
        }
        let live = self.live.lock().map(|l| l.clone()).unwrap_or_default();
        let removed = workspace::sweep(
            &self.config.workspaces,
            std::time::SystemTime::now(),
            &|id| live.contains(id),
        );
        if removed > 0 {
            tracing::info!(removed, "removed kept workspaces whose time was up");
        }
    }

    /// Runs `git ARGS` in `dir` inside a sandbox (network off, only `dir` writable): the
    /// workspace's `.git` was writable by the task, so its config is not trusted outside one.
    fn run_git(&self, dir: &Path, args: &[&str]) -> Result<Vec<u8>, String> {
        let mut argv = vec![
            "git".to_string(),
            "-c".into(),
            "core.hooksPath=/dev/null".into(),
            "-c".into(),
            "core.fsmonitor=false".into(),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        let out = self.run_sync(dir, argv, Policy::default())?;
        if !out.status.success() {
            return Err(format!(
                "git {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(out.stdout)
    }

    /// Runs a command to its end in a sandbox whose only writable path is `dir` (no workspace,
    /// no cgroup): for short helper commands of the supervisor and for `cflow doctor`'s probe.
    pub fn run_sync(
        &self,
        dir: &Path,
        argv: Vec<String>,
        mut policy: Policy,
    ) -> Result<std::process::Output, String> {
        policy.allow_degraded = true;
        let report =
            self.config
                .run_dir
                .join(format!("sync-{}-{}.report", std::process::id(), next_seq()));
        let spec = LaunchSpec {
            argv,
            env: vec![
                ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
                ("HOME".into(), "/tmp".into()),
                ("LANG".into(), "C.UTF-8".into()),
            ],
            cwd: dir.to_path_buf(),
            writable: vec![dir.to_path_buf()],
            hidden: self.config.hidden.clone(),
            network: policy.network,
            limits: policy.limits,
            cgroup_procs: Vec::new(),
            host_uid: self.config.host_uid,
            host_gid: self.config.host_gid,
            allow_degraded: true,
            report: report.clone(),
            egress_socket: None,
        };
        let out = std::process::Command::new(&self.config.launcher)
            .arg(LAUNCHER_ARG)
            .arg(serde_json::to_string(&spec).map_err(|e| e.to_string())?)
            .env_clear()
            // Not a pipe: `output()` would close it at once, and a closed pipe is the
            // launcher's signal to stop.
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| {
                format!(
                    "cannot start the sandbox launcher {}: {e}",
                    self.config.launcher.display()
                )
            });
        let _ = std::fs::remove_file(&report);
        out
    }

    /// Runs `true` in a full sandbox with this host's default policy (degrading allowed, so
    /// every layer is reported) and returns each layer's state: what `cflow doctor` prints.
    pub fn probe(&self) -> Result<Layers, String> {
        let dir = tempdir_in(&self.config.workspaces.root)?;
        let report_path = self.config.run_dir.join(format!(
            "probe-{}-{}.report",
            std::process::id(),
            next_seq()
        ));
        let mut policy = self.config.policy.clone();
        policy.allow_degraded = true;
        let cg = self.cgroups.as_ref().map_err(|e| e.clone()).and_then(|h| {
            h.create(
                &format!("{}-probe-{}", std::process::id(), next_seq()),
                &policy.limits,
            )
            .map_err(|e| e.to_string())
        });
        let spec = LaunchSpec {
            argv: vec!["true".into()],
            env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())],
            cwd: dir.clone(),
            writable: vec![dir.clone()],
            hidden: self.config.hidden.clone(),
            network: policy.network,
            limits: policy.limits,
            cgroup_procs: cg.as_ref().map(|c| c.procs_files()).unwrap_or_default(),
            host_uid: self.config.host_uid,
            host_gid: self.config.host_gid,
            allow_degraded: true,
            report: report_path.clone(),
            egress_socket: None,
        };
        let out = std::process::Command::new(&self.config.launcher)
            .arg(LAUNCHER_ARG)
            .arg(serde_json::to_string(&spec).map_err(|e| e.to_string())?)
            .env_clear()
            // Not a pipe: `output()` would close it at once, and a closed pipe is the
            // launcher's signal to stop.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        let parsed = ParsedReport::read(&report_path);
        let _ = std::fs::remove_file(&report_path);
        let _ = std::fs::remove_dir_all(&dir);
        let cg_state = match cg {
            Ok(cg) => {
                let _ = cg.remove();
                LayerState::Active
            }
            Err(why) => LayerState::Unavailable { why },
        };
        let out = out.map_err(|e| {
            format!(
                "cannot start the sandbox launcher {}: {e}",
                self.config.launcher.display()
            )
        })?;
        if let Some((_, message)) = parsed.error {
            return Err(message);
        }
        let Some(mut layers) = parsed.layers else {
            return Err(format!(
                "the sandbox probe reported nothing (exit {:?}): {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        };
        layers.insert(Layer::Cgroup, cg_state);
        Ok(layers)
    }
}

fn tempdir_in(root: &Path) -> Result<PathBuf, String> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = root.join(format!(
        ".probe-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    Ok(dir)
}

/// The settings an admin sets on a tenant or an agent (`PUT /api/v1/tenants/{id}/sandbox`),
/// applied over the host's default policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `off` runs commands without any sandbox (an audited admin opt-out); `enforce` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_degraded: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsPatch>,
    /// `host:port` endpoints reachable through the egress proxy (replaces the default list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Enforce,
    Off,
}

/// Limits to change; absent fields keep the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    pub cpu_seconds: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub max_processes: Option<u64>,
    pub open_files: Option<u64>,
    pub file_size_bytes: Option<u64>,
    pub disk_bytes: Option<u64>,
    pub tmp_bytes: Option<u64>,
}

impl Settings {
    /// Parses and checks settings from JSON; the error says what to fix.
    pub fn parse(value: &serde_json::Value) -> Result<Self, String> {
        let s: Settings = serde_json::from_value(value.clone())
            .map_err(|e| format!("invalid sandbox settings: {e}"))?;
        for e in s.egress.iter().flatten() {
            crate::policy::check_egress(e).map_err(|m| format!("invalid sandbox settings: {m}"))?;
        }
        if let Some(l) = &s.limits {
            for (name, v) in [
                ("cpu_seconds", l.cpu_seconds),
                ("memory_bytes", l.memory_bytes),
                ("max_processes", l.max_processes),
                ("open_files", l.open_files),
                ("file_size_bytes", l.file_size_bytes),
                ("disk_bytes", l.disk_bytes),
                ("tmp_bytes", l.tmp_bytes),
            ] {
                if v == Some(0) {
                    return Err(format!(
                        "invalid sandbox settings: limits.{name} must be greater than 0"
                    ));
                }
            }
        }
        Ok(s)
    }

    /// Applies these settings over `policy`; returns whether the sandbox is turned off.
    pub fn apply(&self, policy: &mut Policy) -> bool {
        if let Some(n) = self.network {
            policy.network = n;
        }
        if let Some(d) = self.allow_degraded {
            policy.allow_degraded = d;
        }
        if let Some(e) = &self.egress {
            policy.egress = e.clone();
        }
        if let Some(l) = &self.limits {
            let t = &mut policy.limits;
            let set = |dst: &mut u64, v: Option<u64>| {
                if let Some(v) = v {
                    *dst = v;
                }
            };
            set(&mut t.cpu_seconds, l.cpu_seconds);
            set(&mut t.memory_bytes, l.memory_bytes);
            set(&mut t.max_processes, l.max_processes);
            set(&mut t.open_files, l.open_files);
            set(&mut t.file_size_bytes, l.file_size_bytes);
            set(&mut t.disk_bytes, l.disk_bytes);
            set(&mut t.tmp_bytes, l.tmp_bytes);
        }
        self.mode == Some(Mode::Off)
    }
}

/// The `[sandbox]` section of `cflow.toml`, for the server's local pool and for `cflow worker`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// `enforce` (default): every command runs in the sandbox unless an admin exempts a tenant
    /// or agent. `off`: the operator turns the sandbox off for this process; every attempt says
    /// so, and the server logs a warning at start.
    pub mode: Mode,
    /// The launcher binary; default: this `cflow` binary (see [`find_launcher`]).
    pub launcher: Option<PathBuf>,
    /// The default network of commands (`off`, `loopback`, `full`).
    pub network: Network,
    /// Run when a layer is unavailable on the host, recording which were active.
    pub allow_degraded: bool,
    pub limits: crate::policy::Limits,
    /// How long a failed task's workspace is kept for debugging (seconds).
    pub keep_failed_secs: u64,
    /// More host paths to hide from commands (the data directory, `/root`, `/home` and the
    /// config file are always hidden).
    pub hidden: Vec<PathBuf>,
    /// `host:port` endpoints commands may reach through the egress proxy although the network
    /// is off (a model API such as `api.anthropic.com:443`). Empty: none.
    pub egress: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mode: Mode::Enforce,
            launcher: None,
            network: Network::Off,
            allow_degraded: false,
            limits: crate::policy::Limits::default(),
            keep_failed_secs: 3600,
            hidden: Vec::new(),
            egress: Vec::new(),
        }
    }
}

impl Options {
    /// The sandbox these options describe, with its state under `data_dir`; `None` when the
    /// operator turned it off. `hidden` adds paths to hide (the config file, token files).
    pub fn build(&self, data_dir: &Path, hidden: &[PathBuf]) -> Result<Option<Sandbox>, String> {
        if self.mode == Mode::Off {
            return Ok(None);
        }
        let launcher = match &self.launcher {
            Some(p) => p.clone(),
            None => find_launcher()?,
        };
        let data_dir = std::path::absolute(data_dir)
            .map_err(|e| format!("data directory {}: {e}", data_dir.display()))?;
        let mut config = Config::under(&data_dir, launcher);
        for e in &self.egress {
            crate::policy::check_egress(e).map_err(|m| format!("sandbox.egress: {m}"))?;
        }
        config.policy = Policy {
            network: self.network,
            limits: self.limits,
            allow_degraded: self.allow_degraded,
            egress: self.egress.clone(),
        };
        config.workspaces.keep_failed_for = std::time::Duration::from_secs(self.keep_failed_secs);
        for p in self.hidden.iter().chain(hidden) {
            if let Ok(abs) = std::path::absolute(p) {
                config.hidden.push(abs);
            }
        }
        Sandbox::new(config).map(Some).map_err(|e| {
            format!(
                "cannot set the sandbox up under {}: {e}",
                data_dir.display()
            )
        })
    }
}
