//! The exec driver's kill paths: timeout, cancel, SIGTERM-ignoring children, double forks,
//! stray background processes, a dropped run, and the documented setsid escape. Each test first
//! sees the group's processes alive (so the final check cannot pass vacuously), then checks
//! `/proc` as soon as `run()` returns: no live process may be left in the group.

use crate::{Member, driver, job, live_group_members, wait_for_group};
use cflow_agents::{Driver, DriverError, ExecSpec, Job, JobEnd, JobEvent, JobOutcome};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a watched run saw: its outcome, the group id the command printed, and the group's live
/// members once they were all up.
struct Watched {
    outcome: Result<JobOutcome, DriverError>,
    pgid: i32,
    members: Vec<Member>,
}

/// Runs a shell command that prints `$$` on its first line and `ready` once its processes are
/// started. Waits (polling /proc) until the group has at least `expect` live members, then
/// cancels the job if `cancel_when_seen`.
async fn watch(job: Job, expect: usize, cancel_when_seen: bool) -> Watched {
    let driver = driver();
    let (tx, mut rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let observe = async {
        let mut stdout = String::new();
        let mut seen = None;
        while let Some(event) = rx.recv().await {
            if let JobEvent::Stdout(bytes) = event {
                stdout.push_str(&String::from_utf8(bytes).unwrap());
            }
            if seen.is_none() && stdout.contains("ready\n") {
                let pgid: i32 = stdout.lines().next().unwrap().parse().unwrap();
                let members =
                    wait_for_group(pgid, "the job's processes", |m| m.len() >= expect).await;
                if cancel_when_seen {
                    cancel.cancel();
                }
                seen = Some((pgid, members));
            }
        }
        seen.expect("the command printed its pid and 'ready'")
    };
    let (outcome, (pgid, members)) = tokio::join!(driver.run(job, tx, cancel.clone()), observe);
    Watched {
        outcome,
        pgid,
        members,
    }
}

fn with_timeout(spec: ExecSpec, timeout: Duration) -> Job {
    let mut job = job(spec);
    job.timeout = timeout;
    job
}

fn assert_group_gone(pgid: i32) {
    let left = live_group_members(pgid);
    assert!(
        left.is_empty(),
        "processes of group {pgid} outlived run(): {left:?}"
    );
}

#[tokio::test]
async fn timeout_kills_the_whole_group() {
    let spec = ExecSpec::shell("echo $$; sleep 1000 & sleep 1000 & echo ready; wait");
    let watched = watch(with_timeout(spec, Duration::from_secs(1)), 3, false).await;
    assert_eq!(watched.outcome.unwrap().end, JobEnd::TimedOut);
    assert_group_gone(watched.pgid);
}

#[tokio::test]
async fn a_child_ignoring_sigterm_is_killed_after_the_grace() {
    // The ignored disposition is inherited across exec, so `sleep` ignores SIGTERM too.
    let spec = ExecSpec::shell("trap '' TERM; echo $$; sleep 1000 & echo ready; wait; wait");
    let watched = watch(with_timeout(spec, Duration::from_secs(1)), 2, false).await;
    assert_eq!(watched.outcome.unwrap().end, JobEnd::TimedOut);
    assert_group_gone(watched.pgid);
}

#[tokio::test]
async fn a_double_forked_daemon_in_the_group_dies_too() {
    // The subshell exits at once, so its `sleep` is re-parented away from the job's leader.
    let spec = ExecSpec::shell("echo $$; (sleep 1000 &); echo ready; sleep 1000");
    let watched = watch(with_timeout(spec, Duration::from_secs(1)), 3, false).await;
    let orphans: Vec<_> = watched
        .members
        .iter()
        .filter(|m| m.pid != watched.pgid && m.ppid != watched.pgid)
        .collect();
    assert!(
        !orphans.is_empty(),
        "no re-parented process seen: {:?}",
        watched.members
    );
    assert_eq!(watched.outcome.unwrap().end, JobEnd::TimedOut);
    assert_group_gone(watched.pgid);
}

#[tokio::test]
async fn cancel_mid_run_kills_the_group() {
    let spec = ExecSpec::shell("echo $$; sleep 1000 & echo ready; wait");
    let watched = watch(job(spec), 2, true).await;
    let outcome = watched.outcome.unwrap();
    assert_eq!(outcome.end, JobEnd::Cancelled);
    assert_eq!(outcome.stdout.text(), format!("{}\nready\n", watched.pgid));
    assert_group_gone(watched.pgid);
}

#[tokio::test]
async fn a_job_cancelled_before_it_starts_never_spawns() {
    let (tx, mut rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    cancel.cancel();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let spec = ExecSpec::shell(format!("touch '{}'", marker.display()));
    let outcome = driver().run(job(spec), tx, cancel).await.unwrap();
    assert_eq!(outcome.end, JobEnd::Cancelled);
    assert!(!marker.exists());
    assert!(rx.recv().await.is_none());
}

#[tokio::test]
async fn background_strays_die_when_the_leader_exits() {
    // The stray keeps the output pipes open; the run must still end, and take the stray with it.
    let spec = ExecSpec::shell("echo $$; sleep 1000 & echo ready; sleep 0.2; exit 4");
    let watched = watch(job(spec), 2, false).await;
    assert_eq!(watched.outcome.unwrap().end, JobEnd::Exited { code: 4 });
    assert_group_gone(watched.pgid);
}

#[tokio::test]
async fn dropping_the_run_future_kills_the_group() {
    let driver = driver();
    let (tx, mut rx) = mpsc::channel(16);
    let spec = ExecSpec::shell("echo $$; sleep 1000 & echo ready; wait");
    let run = driver.run(job(spec), tx, CancellationToken::new());
    let observe = async {
        let mut stdout = String::new();
        while let Some(JobEvent::Stdout(bytes)) = rx.recv().await {
            stdout.push_str(&String::from_utf8(bytes).unwrap());
            if stdout.contains("ready\n") {
                break;
            }
        }
        let pgid: i32 = stdout.lines().next().unwrap().parse().unwrap();
        wait_for_group(pgid, "the job's processes", |m| m.len() >= 2).await;
        pgid
    };
    // The observer finishes first, so select! drops the unfinished run future.
    let pgid = tokio::select! {
        _ = run => panic!("the job ended by itself"),
        pgid = observe => pgid,
    };
    // The kill on drop is sent synchronously, but dying takes a moment.
    wait_for_group(pgid, "the group to die", <[Member]>::is_empty).await;
}

#[tokio::test]
async fn a_setsid_escapee_is_the_documented_limit() {
    // `setsid` leaves the job's group, so exec cannot kill it (the sandbox's PID namespace will).
    // It also holds the output pipes open: run() must stop reading after the grace, not hang.
    let spec = ExecSpec::shell("setsid sleep 1000 & echo $!");
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        let (tx, _rx) = mpsc::channel(16);
        driver().run(job(spec), tx, CancellationToken::new()).await
    })
    .await
    .expect("run() returned despite the escapee holding its pipes")
    .unwrap();
    assert_eq!(outcome.end, JobEnd::Exited { code: 0 });
    let escapee: i32 = outcome.stdout.text().trim().parse().unwrap();
    let alive = std::path::Path::new(&format!("/proc/{escapee}")).exists();
    // Clean up before asserting, so a failure leaves nothing behind.
    let _ = std::process::Command::new("kill")
        .args(["-9", &escapee.to_string()])
        .status();
    assert!(
        alive,
        "the escapee died: if the sandbox now contains it, update the docs"
    );
}
