//! The `exec` driver: runs a command in its own process group, streams and caps its output, and
//! on timeout or cancel kills the whole group (SIGTERM, a grace period, then SIGKILL).

use crate::driver::{
    BoxFuture, Captured, Driver, DriverError, ExecCommand, ExecSpec, Isolation, Job, JobEnd,
    JobEvent, JobOutcome, JobSpec, KilledBy, OutputStream,
};
use crate::group::ProcessGroup;
use crate::output::{parse_result, pump};
use cflow_sandbox::Policy;
use cflow_sandbox::host::{PrepareError, RunRequest, Sandbox};
use rustix::process::Signal;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why exec jobs of a driver built without a sandbox report [`Isolation::None`]: the operator
/// turned the sandbox off for this server or worker (`[sandbox] mode = "off"`).
pub const UNSANDBOXED_REASON: &str = "the sandbox is turned off in this server's or worker's \
     configuration (sandbox.mode = \"off\"), so the command runs as its user, with its \
     filesystem and network access";

/// Why a job an admin exempted from the sandbox reports [`Isolation::None`].
pub const OPTED_OUT_REASON: &str = "an admin turned the sandbox off for this tenant or agent \
     (sandbox mode \"off\", audited), so the command runs as the worker's user, with its \
     filesystem and network access";

/// How often the workspace's disk use is measured against its quota.
const DISK_CHECK_EVERY: Duration = Duration::from_millis(500);

/// Server environment variables a command inherits by default. Everything else in the server's
/// environment (API keys, the master key, database URLs) is withheld: a command sees only these,
/// `CFLOW_TASK_ID`, `CFLOW_ATTEMPT` and the job's own variables.
pub const DEFAULT_PASS_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
    "TERM",
];

/// Settings of the exec driver that are the operator's, not the task's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecConfig {
    /// How long a timed-out or cancelled job's processes get between SIGTERM and SIGKILL. Also
    /// bounds the waits after the kill (for the group to empty, for the pipes to close).
    pub kill_grace: Duration,
    /// The server environment variables passed through to commands (see [`DEFAULT_PASS_ENV`]).
    pub pass_env: Vec<String>,
}

impl Default for ExecConfig {
    fn default() -> Self {
        Self {
            kill_grace: Duration::from_secs(2),
            pass_env: DEFAULT_PASS_ENV.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// Runs [`JobSpec::Exec`] jobs as local processes: in the sandbox when it has one.
#[derive(Debug, Clone, Default)]
pub struct ExecDriver {
    config: ExecConfig,
    sandbox: Option<Arc<Sandbox>>,
    /// What a probe run found on this host, for [`Driver::isolation`].
    host_layers: Option<Result<cflow_sandbox::Layers, String>>,
}

impl ExecDriver {
    /// A driver without a sandbox: only for an operator who turned it off explicitly.
    pub fn new(config: ExecConfig) -> Self {
        Self {
            config,
            sandbox: None,
            host_layers: None,
        }
    }

    /// A driver whose every job runs in `sandbox` (unless an admin exempted the job's tenant or
    /// agent). Runs one probe job (`true`) to learn which layers this host provides.
    pub fn sandboxed(config: ExecConfig, sandbox: Arc<Sandbox>) -> Self {
        let host_layers = Some(sandbox.probe());
        Self {
            config,
            sandbox: Some(sandbox),
            host_layers,
        }
    }

    pub fn sandbox(&self) -> Option<&Arc<Sandbox>> {
        self.sandbox.as_ref()
    }

    pub fn config(&self) -> &ExecConfig {
        &self.config
    }

    async fn run_job(
        &self,
        job: Job,
        events: mpsc::Sender<JobEvent>,
        cancel: CancellationToken,
    ) -> Result<JobOutcome, DriverError> {
        let spec = match &job.spec {
            JobSpec::Exec(spec) => spec.clone(),
            other => {
                return Err(DriverError::Unsupported {
                    driver: "exec",
                    spec: other.name(),
                });
            }
        };
        self.run_spec(job, spec, Extras::default(), events, cancel)
            .await
    }

    /// Runs `spec` as `job`'s command: in the sandbox (with `extras`) unless the driver has
    /// none or an admin exempted the job. Other drivers (`claude-code`) run their CLI this way.
    pub(crate) async fn run_spec(
        &self,
        job: Job,
        spec: ExecSpec,
        extras: Extras,
        events: mpsc::Sender<JobEvent>,
        cancel: CancellationToken,
    ) -> Result<JobOutcome, DriverError> {
        self.run_in(job, spec, extras, None, events, cancel).await
    }

    /// Like [`ExecDriver::run_spec`], and when sandboxed, in `shared_workspace` (a live
    /// workspace of the sandbox, see `Sandbox::create_workspace`) instead of a workspace of its
    /// own: the run then takes no artifacts and leaves the workspace in place. The model
    /// loop's `run_command` runs this way, with exec's whole supervision.
    pub(crate) async fn run_in(
        &self,
        job: Job,
        spec: ExecSpec,
        extras: Extras,
        shared_workspace: Option<std::path::PathBuf>,
        events: mpsc::Sender<JobEvent>,
        cancel: CancellationToken,
    ) -> Result<JobOutcome, DriverError> {
        match self.placement(&job, &extras.egress) {
            Placement::Sandboxed(sandbox, policy) => {
                let run = Sandboxed {
                    sandbox: &sandbox,
                    policy,
                    shared_workspace,
                };
                self.run_sandboxed(run, job, spec, extras, events, cancel)
                    .await
            }
            Placement::Plain(iso) => self.run_plain(job, spec, events, cancel, iso).await,
        }
    }

    /// Where `job`'s commands run: in the sandbox under the job's policy (the host's default,
    /// the admin's settings applied, `egress` added), or without it and why.
    pub(crate) fn placement(&self, job: &Job, egress: &[String]) -> Placement {
        let Some(sandbox) = &self.sandbox else {
            return Placement::Plain(self.isolation());
        };
        let mut p = sandbox.config().policy.clone();
        if job.sandbox.as_ref().is_some_and(|s| s.apply(&mut p)) {
            let reason = OPTED_OUT_REASON.to_string();
            return Placement::Plain(Isolation::None { reason });
        }
        for e in egress {
            if !p.egress.contains(e) {
                p.egress.push(e.clone());
            }
        }
        Placement::Sandboxed(Arc::clone(sandbox), p)
    }

    async fn run_plain(
        &self,
        job: Job,
        spec: ExecSpec,
        events: mpsc::Sender<JobEvent>,
        cancel: CancellationToken,
        isolation: Isolation,
    ) -> Result<JobOutcome, DriverError> {
        if spec.workspace.is_some() || spec.artifacts.is_some() || spec.network.is_some() {
            return Err(DriverError::Sandbox {
                message: "this task asks for a workspace, artifacts or a network setting, which \
                          only the sandbox provides, and the sandbox is off for it — remove \
                          those fields or run it where the sandbox is on"
                    .to_string(),
                retryable: false,
            });
        }
        // Checked up front because a missing directory fails the spawn with the same ENOENT as
        // a missing program, and the message would blame the wrong thing.
        if let Some(dir) = &spec.cwd {
            check_dir(dir)?;
        }
        let started = std::time::Instant::now();
        let mut outcome = JobOutcome::new(JobEnd::Cancelled, isolation);
        if cancel.is_cancelled() {
            outcome.wall_time = started.elapsed();
            return Ok(outcome);
        }
        let mut command = self.command(&job.task_id, job.attempt, &spec);
        if let Some(dir) = &spec.cwd {
            command.current_dir(dir);
        }
        let child = command.spawn().map_err(|source| DriverError::SpawnFailed {
            program: program_name(&spec.command).to_string(),
            source,
        })?;
        let run = self
            .supervise_run(child, &job, &events, &cancel, None)
            .await?;
        outcome.end = run.end;
        outcome.wall_time = started.elapsed();
        outcome.cpu_time = run.cpu_time;
        finish_output(&mut outcome, run.out, run.err);
        Ok(outcome)
    }

    async fn run_sandboxed(
        &self,
        run: Sandboxed<'_>,
        job: Job,
        spec: ExecSpec,
        extras: Extras,
        events: mpsc::Sender<JobEvent>,
        cancel: CancellationToken,
    ) -> Result<JobOutcome, DriverError> {
        let Sandboxed {
            sandbox,
            mut policy,
            shared_workspace,
        } = run;
        apply_network(&mut policy, spec.network)?;
        let started = std::time::Instant::now();
        if cancel.is_cancelled() {
            let mut outcome = JobOutcome::new(JobEnd::Cancelled, self.isolation());
            outcome.wall_time = started.elapsed();
            return Ok(outcome);
        }
        // A sandboxed command works in its workspace: a relative `cwd` is a directory in it.
        let subdir = match &spec.cwd {
            Some(dir) if dir.is_absolute() => {
                return Err(DriverError::Sandbox {
                    message: format!(
                        "a sandboxed task works in its own workspace, so cwd '{}' is not \
                         reachable — start from that directory with \
                         \"workspace\": {{\"kind\": \"copy\", \"path\": \"{}\"}} (or a git \
                         workspace), and give cwd relative to the workspace",
                        dir.display(),
                        dir.display()
                    ),
                    retryable: false,
                });
            }
            Some(dir) => Some(dir.clone()),
            None => None,
        };
        let (argv, env) = self.argv_env(&job.task_id, job.attempt, &spec);
        let request = RunRequest {
            id: format!("{}-{}", safe_id(&job.task_id), job.attempt),
            argv,
            env,
            workspace: spec.workspace.clone().unwrap_or_default(),
            policy: policy.clone(),
            home: extras.home.clone(),
        };
        let sb = Arc::clone(sandbox);
        let (home, session) = (extras.home.clone(), extras.session.clone());
        let shared = shared_workspace.is_some();
        let prepared = tokio::task::spawn_blocking(move || {
            let mut prepared = match &shared_workspace {
                Some(ws) => sb.prepare_in(request, ws)?,
                None => sb.prepare(request)?,
            };
            if let Some(sub) = subdir {
                prepared.spec.cwd = prepared.spec.cwd.join(sub);
            }
            if let (Some(home), Some(session)) = (&home, &session) {
                session.install(home, &prepared.spec.cwd, sb.config().workspaces.owner);
            }
            Ok::<_, PrepareError>(prepared)
        })
        .await
        .map_err(|e| io::Error::other(format!("workspace preparation panicked: {e}")))?
        .map_err(|e| DriverError::Sandbox {
            message: e.to_string(),
            retryable: matches!(e, PrepareError::Io(_) | PrepareError::Cgroup(_)),
        })?;
        let mut command = Command::new(&prepared.launcher);
        command
            .args(prepared.args())
            .env_clear()
            // The lifeline: the launcher kills the sandbox when this pipe closes, so a worker
            // that dies (even by SIGKILL) leaves nothing running.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(source) => {
                let sb = Arc::clone(sandbox);
                let _ = tokio::task::spawn_blocking(move || {
                    sb.finish(prepared, false, &Default::default())
                })
                .await;
                return Err(DriverError::Sandbox {
                    message: format!(
                        "cannot start the sandbox launcher: {source} — check sandbox.launcher \
                         (or CFLOW_SANDBOX_LAUNCHER)"
                    ),
                    retryable: true,
                });
            }
        };
        // The watcher measures the workspace by its path: a measurement still running when the
        // job ends must not keep the run from being finished (and its report, cgroup and
        // workspace from being cleaned up).
        let disk = DiskQuota {
            path: prepared.workspace.path.clone(),
            limit: policy.limits.disk_bytes,
        };
        let run = self
            .supervise_run(child, &job, &events, &cancel, Some(disk))
            .await;
        // A command that filled the disk and exited between two checks is caught here.
        let (prepared, used) = tokio::task::spawn_blocking(move || {
            let used = prepared.disk_usage();
            (prepared, used)
        })
        .await
        .map_err(|e| io::Error::other(format!("measuring the workspace panicked: {e}")))?;
        let mut run = run;
        if let (Ok(r), Ok(used)) = (&mut run, used)
            && r.stopped.is_none()
            && used > policy.limits.disk_bytes
        {
            let killed = JobEnd::Killed {
                limit: KilledBy::Disk,
            };
            r.end = killed;
            r.stopped = Some(killed);
        }
        let succeeded_guess = run.as_ref().is_ok_and(|r| r.end.is_success());
        let artifact_spec = spec.artifacts.clone().unwrap_or_default();
        let sb = Arc::clone(sandbox);
        let finished = tokio::task::spawn_blocking(move || {
            sb.finish(prepared, succeeded_guess, &artifact_spec)
        })
        .await
        .map_err(|e| io::Error::other(format!("sandbox cleanup panicked: {e}")))?;
        let run = run?;
        if let Some(message) = finished.setup_error {
            return Err(DriverError::Sandbox {
                message,
                retryable: false,
            });
        }
        let mut end = run.end;
        if run.stopped.is_none() {
            // The launcher exits 128+N when the command died of signal N: the report knows
            // which it was.
            if let Some((code, signal)) = finished.exit {
                end = match (code, signal) {
                    (Some(code), _) => JobEnd::Exited { code },
                    (None, Some(signal)) => JobEnd::Signalled { signal },
                    (None, None) => end,
                };
            }
            if finished.oom_killed && !end.is_success() {
                end = JobEnd::Killed {
                    limit: KilledBy::Memory,
                };
            }
        }
        let mut outcome = JobOutcome::new(
            end,
            Isolation::Sandboxed {
                layers: finished.report.layers.clone(),
            },
        );
        if end
            == (JobEnd::Killed {
                limit: KilledBy::Disk,
            })
        {
            let mut report = finished.report;
            report.limits_hit.push(format!(
                "disk: the workspace went over its {}-byte quota",
                policy.limits.disk_bytes
            ));
            outcome.cpu_time = report.cpu_time_ms.map(Duration::from_millis);
            outcome.sandbox = Some(report);
        } else {
            outcome.cpu_time = finished.report.cpu_time_ms.map(Duration::from_millis);
            outcome.sandbox = Some(finished.report);
        }
        outcome.artifacts = finished.artifacts;
        // The logs are artifacts too (as captured: the first `output_cap` bytes of each); a run
        // in a shared workspace is one step of a job whose artifacts are taken at its end.
        for (name, captured) in [("stdout.log", &run.out), ("stderr.log", &run.err)] {
            if !shared && !captured.bytes.is_empty() {
                outcome.artifacts.push(cflow_sandbox::artifacts::artifact(
                    name,
                    cflow_sandbox::artifacts::Kind::Log,
                    captured.bytes.clone(),
                ));
            }
        }
        outcome.wall_time = started.elapsed();
        finish_output(&mut outcome, run.out, run.err);
        Ok(outcome)
    }

    /// Streams output, waits for the end (exit, timeout, cancel or the disk quota), and leaves
    /// nothing of the process group alive.
    async fn supervise_run(
        &self,
        mut child: Child,
        job: &Job,
        events: &mpsc::Sender<JobEvent>,
        cancel: &CancellationToken,
        disk: Option<DiskQuota>,
    ) -> Result<Run, DriverError> {
        let task_id = &job.task_id;
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("the spawned child has no pid"))?;
        let mut group = ProcessGroup::new(pid)?;
        let grace = self.config.kill_grace;
        // Held open for the whole run: the sandbox launcher's lifeline (None when unsandboxed).
        let _lifeline = child.stdin.take();
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let (mut out, mut err) = (Captured::default(), Captured::default());
        let output_cap = job.output_cap;

        let supervised = {
            let pumps = async {
                tokio::join!(
                    pump(stdout, OutputStream::Stdout, output_cap, &mut out, events),
                    pump(stderr, OutputStream::Stderr, output_cap, &mut err, events),
                )
            };
            let supervise = supervise(&mut child, &mut group, job.timeout, grace, cancel, disk);
            tokio::pin!(pumps, supervise);
            // Output is drained concurrently with supervision, so a chatty command never blocks
            // on a full pipe while we wait for it to exit.
            let mut drained = false;
            let supervised = loop {
                tokio::select! {
                    result = &mut supervise => break result,
                    _ = &mut pumps, if !drained => drained = true,
                }
            };
            // The group is dead now, so the pipes normally reach EOF at once. A process that
            // left the group (setsid) may still hold them open, or the event receiver may have
            // stalled: either way, stop reading after the grace rather than hang.
            if !drained && tokio::time::timeout(grace, &mut pumps).await.is_err() {
                tracing::warn!(
                    %task_id,
                    "job output not drained within the grace period after its process group \
                     was killed (a process that left the group, e.g. with setsid, holds the \
                     pipes, or the event receiver is stalled); stopped reading"
                );
            }
            supervised
        };
        let (end, stopped, cpu_time) = supervised?;
        Ok(Run {
            end,
            stopped,
            cpu_time,
            out,
            err,
        })
    }

    /// The command line and environment of a job: the allow-listed server variables,
    /// `CFLOW_TASK_ID`, `CFLOW_ATTEMPT`, then the job's own.
    fn argv_env(
        &self,
        task_id: &str,
        attempt: u32,
        spec: &ExecSpec,
    ) -> (Vec<String>, Vec<(String, String)>) {
        let argv = match &spec.command {
            ExecCommand::Program { program, args } => {
                let mut v = vec![program.clone()];
                v.extend(args.iter().cloned());
                v
            }
            ExecCommand::Shell(line) => vec!["/bin/sh".into(), "-c".into(), line.clone()],
        };
        let mut env = Vec::new();
        for name in &self.config.pass_env {
            if let Ok(value) = std::env::var(name) {
                env.push((name.clone(), value));
            }
        }
        env.push(("CFLOW_TASK_ID".into(), task_id.to_string()));
        env.push(("CFLOW_ATTEMPT".into(), attempt.to_string()));
        env.extend(spec.env.iter().cloned());
        (argv, env)
    }

    fn command(&self, task_id: &str, attempt: u32, spec: &ExecSpec) -> Command {
        let mut command = match &spec.command {
            ExecCommand::Program { program, args } => {
                let mut command = Command::new(program);
                command.args(args);
                command
            }
            ExecCommand::Shell(line) => {
                let mut command = Command::new("/bin/sh");
                command.arg("-c").arg(line);
                command
            }
        };
        command.env_clear();
        for name in &self.config.pass_env {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command
            .env("CFLOW_TASK_ID", task_id)
            .env("CFLOW_ATTEMPT", attempt.to_string())
            .envs(spec.env.iter().map(|(k, v)| (k, v)));
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so one signal reaches the command and everything it starts.
            .process_group(0)
            // The group guard covers the rest of the group; this covers the leader even if the
            // guard could not be created.
            .kill_on_drop(true);
        command
    }
}

impl Driver for ExecDriver {
    fn kind(&self) -> &'static str {
        "exec"
    }

    fn isolation(&self) -> Isolation {
        match &self.host_layers {
            None => Isolation::None {
                reason: UNSANDBOXED_REASON.to_string(),
            },
            Some(Ok(layers)) => Isolation::Sandboxed {
                layers: layers.clone(),
            },
            Some(Err(why)) => Isolation::None {
                reason: format!("the sandbox probe failed on this host: {why}"),
            },
        }
    }

    fn run(
        &self,
        job: Job,
        events: mpsc::Sender<JobEvent>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JobOutcome, DriverError>> {
        Box::pin(self.run_job(job, events, cancel))
    }
}

/// What a driver built on `exec` adds to a sandboxed run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Extras {
    /// A persistent `HOME` (see `RunRequest::home`).
    pub home: Option<std::path::PathBuf>,
    /// Endpoints the command must reach through the egress proxy (a model API).
    pub egress: Vec<String>,
    /// A model session to put in place in the new workspace (`claude-code --resume`).
    pub session: Option<crate::claude::SessionHook>,
}

/// Where a job's commands run (see [`ExecDriver::placement`]).
pub(crate) enum Placement {
    /// In this sandbox, under this policy (before the task's network request is applied).
    Sandboxed(Arc<Sandbox>, Policy),
    /// Without the sandbox; the isolation says why.
    Plain(Isolation),
}

/// A sandboxed run's setting: the sandbox, the job's policy, and the workspace it shares, if any.
struct Sandboxed<'a> {
    sandbox: &'a Arc<Sandbox>,
    policy: Policy,
    shared_workspace: Option<std::path::PathBuf>,
}

/// Applies the network a task asks for to its policy: at most what the policy allows.
pub(crate) fn apply_network(
    policy: &mut Policy,
    asked: Option<cflow_sandbox::Network>,
) -> Result<(), DriverError> {
    let Some(asked) = asked else { return Ok(()) };
    if asked > policy.network {
        return Err(DriverError::Sandbox {
            message: format!(
                "the task asks for network '{}' but its policy allows '{}' — ask an admin to \
                 grant it (PUT /api/v1/tenants/{{id}}/sandbox), or drop the task's network field",
                asked.as_str(),
                policy.network.as_str()
            ),
            retryable: false,
        });
    }
    policy.network = asked;
    Ok(())
}

/// A finished supervision: how it ended, whether cflow stopped it, and the output.
struct Run {
    end: JobEnd,
    stopped: Option<JobEnd>,
    cpu_time: Option<Duration>,
    out: Captured,
    err: Captured,
}

/// The workspace quota of a sandboxed run, measured while it runs.
struct DiskQuota {
    path: std::path::PathBuf,
    limit: u64,
}

impl DiskQuota {
    /// Completes when the workspace uses more than the limit.
    async fn exceeded(&self) {
        let mut tick = tokio::time::interval(DISK_CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let path = self.path.clone();
            let used =
                tokio::task::spawn_blocking(move || cflow_sandbox::workspace::disk_usage_of(&path))
                    .await;
            if let Ok(Ok(used)) = used
                && used > self.limit
            {
                return;
            }
        }
    }
}

/// Waits for the job to end by itself, time out, be cancelled or go over its disk quota, then
/// makes sure its whole process group is dead and its leader reaped. Returns how it ended, what
/// stopped it (if cflow did), and the leader's CPU time.
async fn supervise(
    child: &mut Child,
    group: &mut ProcessGroup,
    timeout: Duration,
    grace: Duration,
    cancel: &CancellationToken,
    disk: Option<DiskQuota>,
) -> Result<(JobEnd, Option<JobEnd>, Option<Duration>), DriverError> {
    let over_quota = async {
        match &disk {
            Some(d) => d.exceeded().await,
            None => std::future::pending().await,
        }
    };
    let stopped = tokio::select! {
        exited = group.leader_exited(child) => { exited?; None }
        () = tokio::time::sleep(timeout) => Some(JobEnd::TimedOut),
        () = cancel.cancelled() => Some(JobEnd::Cancelled),
        () = over_quota => Some(JobEnd::Killed { limit: KilledBy::Disk }),
    };
    match stopped {
        Some(JobEnd::Killed { .. }) => {
            // Over a quota: no grace, the disk is filling now.
            group.signal(Signal::KILL);
        }
        Some(_) => {
            // Ask first: a well-behaved command gets the grace period to clean up.
            group.signal(Signal::TERM);
            group.wait_gone(deadline_after(grace)).await;
        }
        None => {}
    }
    // Whatever is left dies now: processes that ignored SIGTERM or, after a normal exit,
    // background processes the command left behind (the job is over, so they are strays). The
    // leader is at most an unreaped zombie here, so the group id cannot have been reused.
    group.signal(Signal::KILL);
    group.leader_exited(child).await?;
    let cpu_time = group.leader_cpu_time();
    // Belt and braces once the leader is certainly dead: it costs one syscall.
    group.signal(Signal::KILL);
    let status = group.reap(child).await?;
    if !group.wait_gone(deadline_after(grace)).await {
        tracing::warn!(
            "processes of a killed job are still alive after the grace period (stuck in \
             uninterruptible sleep?)"
        );
    }
    let end = match stopped {
        Some(end) => end,
        None => end_from_status(status)?,
    };
    Ok((end, stopped, cpu_time))
}

fn finish_output(outcome: &mut JobOutcome, out: Captured, err: Captured) {
    match parse_result(&out) {
        Ok(result) => outcome.result = result,
        Err(reason) => outcome.result_error = Some(reason),
    }
    outcome.stdout = out;
    outcome.stderr = err;
}

/// A task id as a file name: anything but `[A-Za-z0-9_-]` becomes `_`.
pub(crate) fn safe_id(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn end_from_status(status: ExitStatus) -> Result<JobEnd, DriverError> {
    match (status.code(), status.signal()) {
        (Some(code), _) => Ok(JobEnd::Exited { code }),
        (None, Some(signal)) => Ok(JobEnd::Signalled { signal }),
        (None, None) => Err(io::Error::other(format!("unexpected wait status {status}")).into()),
    }
}

fn check_dir(dir: &Path) -> Result<(), DriverError> {
    let error = |source| DriverError::WorkingDir {
        path: dir.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(dir).map_err(error)?;
    if !meta.is_dir() {
        return Err(error(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        )));
    }
    Ok(())
}

fn program_name(command: &ExecCommand) -> &str {
    match command {
        ExecCommand::Program { program, .. } => program,
        ExecCommand::Shell(_) => "/bin/sh",
    }
}

/// `now + d`, saturating far in the future instead of panicking on an absurd configuration.
fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}
