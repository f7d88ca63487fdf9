//! The `exec` driver: runs a command in its own process group, streams and caps its output, and
//! on timeout or cancel kills the whole group (SIGTERM, a grace period, then SIGKILL).

use crate::driver::{
    BoxFuture, Captured, Driver, DriverError, ExecCommand, ExecSpec, Isolation, Job, JobEnd,
    JobEvent, JobOutcome, JobSpec, OutputStream,
};
use crate::group::ProcessGroup;
use crate::output::{parse_result, pump};
use rustix::process::Signal;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why exec jobs report [`Isolation::None`] until the sandbox (issue 4) replaces this path.
pub const UNSANDBOXED_REASON: &str = "not sandboxed: the sandbox is not built yet (issue 4), so \
     the command runs as the server's user, with the server's filesystem and network access";

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

/// Runs [`JobSpec::Exec`] jobs as local processes.
#[derive(Debug, Clone, Default)]
pub struct ExecDriver {
    config: ExecConfig,
}

impl ExecDriver {
    pub fn new(config: ExecConfig) -> Self {
        Self { config }
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
        let Job {
            task_id,
            attempt,
            spec,
            timeout,
            output_cap,
        } = job;
        let spec = match spec {
            JobSpec::Exec(spec) => spec,
            other => {
                return Err(DriverError::Unsupported {
                    driver: "exec",
                    spec: other.name(),
                });
            }
        };
        // Checked up front because a missing directory fails the spawn with the same ENOENT as
        // a missing program, and the message would blame the wrong thing.
        if let Some(dir) = &spec.cwd {
            check_dir(dir)?;
        }
        let started = std::time::Instant::now();
        let mut outcome = JobOutcome::new(JobEnd::Cancelled, self.isolation());
        if cancel.is_cancelled() {
            outcome.wall_time = started.elapsed();
            return Ok(outcome);
        }

        let mut child = self
            .command(&task_id, attempt, &spec)
            .spawn()
            .map_err(|source| DriverError::SpawnFailed {
                program: program_name(&spec.command).to_string(),
                source,
            })?;
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("the spawned child has no pid"))?;
        let mut group = ProcessGroup::new(pid)?;
        let grace = self.config.kill_grace;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let (mut out, mut err) = (Captured::default(), Captured::default());

        let supervised = {
            let pumps = async {
                tokio::join!(
                    pump(stdout, OutputStream::Stdout, output_cap, &mut out, &events),
                    pump(stderr, OutputStream::Stderr, output_cap, &mut err, &events),
                )
            };
            let supervise = supervise(&mut child, &mut group, timeout, grace, &cancel);
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
        let (end, cpu_time) = supervised?;

        outcome.end = end;
        outcome.wall_time = started.elapsed();
        outcome.cpu_time = cpu_time;
        match parse_result(&out) {
            Ok(result) => outcome.result = result,
            Err(reason) => outcome.result_error = Some(reason),
        }
        outcome.stdout = out;
        outcome.stderr = err;
        Ok(outcome)
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
        if let Some(dir) = &spec.cwd {
            command.current_dir(dir);
        }
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
        Isolation::None {
            reason: UNSANDBOXED_REASON.to_string(),
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

/// Waits for the job to end by itself, time out or be cancelled, then makes sure its whole
/// process group is dead and its leader reaped. Returns how it ended and the leader's CPU time.
async fn supervise(
    child: &mut Child,
    group: &mut ProcessGroup,
    timeout: Duration,
    grace: Duration,
    cancel: &CancellationToken,
) -> Result<(JobEnd, Option<Duration>), DriverError> {
    let stopped = tokio::select! {
        exited = group.leader_exited(child) => { exited?; None }
        () = tokio::time::sleep(timeout) => Some(JobEnd::TimedOut),
        () = cancel.cancelled() => Some(JobEnd::Cancelled),
    };
    if stopped.is_some() {
        // Ask first: a well-behaved command gets the grace period to clean up.
        group.signal(Signal::TERM);
        group.wait_gone(deadline_after(grace)).await;
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
    Ok((end, cpu_time))
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
