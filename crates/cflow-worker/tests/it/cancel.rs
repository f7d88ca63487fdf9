//! Stopping attempts: cancellations from the scheduler, drain and abort on shutdown, and a
//! refused token.

use super::*;
use cflow_agents::proto::FinishedStatus;
use serde_json::json;
use std::path::Path;

/// A command that records its pid in `dir/pid`, then sleeps.
fn sleeper(task_id: &str, dir: &Path) -> Assignment {
    shell(
        task_id,
        &format!("echo $$ > {}/pid; exec sleep 30", dir.display()),
    )
}

async fn pid_of(dir: &Path) -> String {
    let file = dir.join("pid");
    let mut pid = String::new();
    eventually("the command to start", || {
        pid = std::fs::read_to_string(&file).unwrap_or_default();
        pid.ends_with('\n')
    })
    .await;
    pid.trim().to_string()
}

#[tokio::test]
async fn a_cancel_in_a_poll_kills_the_command_and_sends_no_finished() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeServer::new();
    let worker = start(&fake, options(2));
    fake.assign([sleeper("victim", dir.path())]);
    let pid = pid_of(dir.path()).await;
    assert!(Path::new(&format!("/proc/{pid}")).exists());

    fake.cancel("victim");
    fake.wait_idle(2).await;
    eventually("the process to be gone", || {
        !Path::new(&format!("/proc/{pid}")).exists()
    })
    .await;
    fake.assign([assignment("sentinel", "noop", json!(null))]);
    fake.wait_finished("sentinel").await;
    assert_eq!(fake.received("victim", "started"), 1);
    assert_eq!(fake.received("victim", "finished"), 0);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_drains_running_attempts_then_deregisters() {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let fake = FakeServer::new();
    // One slot, so no long-poll with a free slot is in flight at shutdown (its assignments would
    // be run: the server leased them).
    let worker = start(&fake, options(1));
    fake.assign([shell(
        "draining",
        &format!(
            "while [ ! -e {go} ]; do sleep 0.02; done; echo drained",
            go = go.display()
        ),
    )]);
    eventually("the attempt to start", || {
        fake.received("draining", "started") == 1
    })
    .await;

    worker.shutdown.cancel();
    // While draining the worker keeps polling as a heartbeat, but takes no work.
    fake.assign([assignment("late", "noop", json!(null))]);
    let polls_before = fake.with(|s| s.polls.len());
    eventually("a heartbeat poll during the drain", || {
        fake.with(|s| {
            s.polls.len() > polls_before
                && s.polls.last().is_some_and(|p| {
                    p.free_slots == 0 && p.held.iter().any(|h| h.task_id == "draining")
                })
        })
    })
    .await;
    assert!(!worker.handle.is_finished(), "still draining");

    std::fs::write(&go, "").unwrap();
    worker.join().await.unwrap();
    let f = fake
        .finished("draining")
        .expect("finished and flushed before leaving");
    assert_eq!(
        (f.status, f.stdout.as_str()),
        (FinishedStatus::Succeeded, "drained\n")
    );
    assert_eq!(
        fake.received("late", "started"),
        0,
        "no work taken while draining"
    );
    assert_eq!(fake.with(|s| s.deregistered.len()), 1);
}

#[tokio::test]
async fn the_drain_timeout_cancels_what_is_left_as_a_retryable_failure() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeServer::new();
    let mut opts = options(1);
    opts.drain_timeout = Duration::from_millis(100);
    let worker = start(&fake, opts);
    fake.assign([sleeper("stuck", dir.path())]);
    let pid = pid_of(dir.path()).await;

    worker.stop().await.unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "killed before run() returned"
    );
    let f = fake.finished("stuck").expect("reported before leaving");
    assert_eq!(f.status, FinishedStatus::Failed);
    assert!(f.retryable, "another worker should run it");
    assert!(
        f.error.as_deref().unwrap().contains("shut down"),
        "{:?}",
        f.error
    );
    assert_eq!(fake.with(|s| s.deregistered.len()), 1);
}

#[tokio::test]
async fn abort_cuts_the_drain_short() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeServer::new();
    let mut opts = options(1);
    opts.drain_timeout = Duration::from_secs(3600);
    let worker = start(&fake, opts);
    fake.assign([sleeper("stuck", dir.path())]);
    pid_of(dir.path()).await;
    worker.shutdown.cancel();
    worker.abort.cancel();
    worker.join().await.unwrap();
    assert_eq!(
        fake.finished("stuck").unwrap().status,
        FinishedStatus::Failed
    );
}

#[tokio::test]
async fn a_refused_token_stops_the_worker_with_a_hint() {
    let fake = FakeServer::new();
    fake.with(|s| s.register_error = Some(LinkError::Unauthorized("invalid token".into())));
    let err = start(&fake, options(1)).join().await.unwrap_err();
    assert!(err.is_auth());
    let msg = err.to_string();
    assert!(
        msg.contains("invalid token") && msg.contains("--role worker"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_token_revoked_while_running_stops_the_running_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeServer::new();
    let worker = start(&fake, options(1));
    fake.assign([sleeper("orphan", dir.path())]);
    let pid = pid_of(dir.path()).await;
    fake.with(|s| s.poll_error = Some(LinkError::Forbidden("key revoked".into())));
    let err = worker.join().await.unwrap_err();
    assert!(err.is_auth(), "{err}");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(
        fake.with(|s| s.deregistered.is_empty()),
        "no point with a refused token"
    );
}

#[tokio::test]
async fn registration_is_retried_while_the_server_is_unavailable() {
    let fake = FakeServer::new();
    fake.with(|s| s.register_error = Some(LinkError::Unavailable("connection refused".into())));
    let worker = start(&fake, options(1));
    fake.assign([assignment("n", "noop", json!(null))]);
    fake.wait_finished("n").await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn invalid_options_are_refused() {
    let fake = FakeServer::new();
    let mut o = options(1);
    o.worker_id = Some("Not Valid!".into());
    let err = start(&fake, o).join().await.unwrap_err();
    assert!(err.to_string().contains("a-z, 0-9"), "{err}");
    let err = start(&fake, options(0)).join().await.unwrap_err();
    assert!(err.to_string().contains("slots"), "{err}");
}

#[tokio::test]
async fn a_worker_the_server_forgot_registers_again_under_its_id() {
    let fake = FakeServer::new();
    let worker = start(&fake, options(1));
    eventually("the first poll", || fake.last_poll().is_some()).await;
    fake.with(|s| {
        s.poll_error = Some(LinkError::Rejected {
            status: 404,
            detail: "unknown worker".into(),
        })
    });
    eventually("a second registration", || {
        fake.with(|s| s.registers.len()) == 2
    })
    .await;
    let ids: Vec<_> = fake.with(|s| s.registers.iter().map(|r| r.worker_id.clone()).collect());
    assert_eq!(ids, vec![Some("w-test".to_string()); 2]);
    fake.assign([assignment("n", "noop", json!(null))]);
    fake.wait_finished("n").await;
    worker.stop().await.unwrap();
}
