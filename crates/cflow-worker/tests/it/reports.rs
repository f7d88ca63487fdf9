//! The reporter: batching, retries of `Finished`, and what a refused report does.

use super::*;
use cflow_agents::proto::FinishedStatus;
use serde_json::json;

#[tokio::test]
async fn reports_queued_behind_a_slow_call_go_out_as_one_batch() {
    let fake = FakeServer::new();
    let gate = Arc::new(Semaphore::new(0));
    *fake.report_gate.lock().unwrap() = Some(gate.clone());
    let slots = 64;
    let worker = start(&fake, options(slots));
    fake.assign((0..slots).map(|i| assignment(&format!("n{i}"), "noop", json!(null))));

    // Every attempt ended (all slots free again) while the first report call is held: their
    // reports are all queued, none acknowledged.
    eventually("every noop attempt to end", || {
        fake.with(|s| {
            s.polls
                .last()
                .is_some_and(|p| p.free_slots == slots && p.held.len() == slots as usize)
        })
    })
    .await;
    gate.add_permits(1_000);
    for i in 0..slots {
        fake.wait_finished(&format!("n{i}")).await;
    }
    let calls = fake.with(|s| s.calls.clone());
    let reports: usize = calls.iter().sum();
    assert_eq!(
        reports,
        2 * slots as usize,
        "one Started and one Finished each"
    );
    assert!(
        calls.len() <= 3,
        "the reports queued behind the held call go out together: {calls:?}"
    );
    fake.wait_idle(slots).await;
    worker.stop().await.unwrap();
}

/// A wave of attempts handed out at once (as the scheduler's hand-over does) reports in one
/// call. Without the reporter's pause before a call, its first reports went out alone or in
/// pairs: up to 64 calls of 2 reports here, one writer batch each on a real server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_of_attempts_reports_in_one_call() {
    let fake = FakeServer::new();
    let slots = 64;
    let worker = start(&fake, options(slots));
    fake.assign((0..slots).map(|i| assignment(&format!("w{i}"), "noop", json!(null))));
    for i in 0..slots {
        fake.wait_finished(&format!("w{i}")).await;
    }
    let calls = fake.with(|s| s.calls.clone());
    assert_eq!(calls.iter().sum::<usize>(), 2 * slots as usize, "{calls:?}");
    assert!(
        calls[0] >= slots as usize,
        "the first call carries most of the wave: {calls:?}"
    );
    fake.wait_idle(slots).await;
    worker.stop().await.unwrap();
}

/// A second call goes out while the first is held, but a report never overtakes an earlier
/// report of its attempt: it waits for that call's answer.
#[tokio::test]
async fn two_calls_fly_at_once_and_an_attempts_reports_stay_in_order() {
    let fake = FakeServer::new();
    let gate = Arc::new(Semaphore::new(0));
    *fake.report_gate.lock().unwrap() = Some(gate.clone());
    let worker = start(&fake, options(2));
    fake.assign([shell("slow", "sleep 0.3")]);
    eventually("slow's Started to be in flight", || {
        fake.with(|s| s.entered.len() == 1)
    })
    .await;
    // slow ends while its Started is still held: its Finished waits for that call.
    eventually("slow's driver to return", || {
        fake.with(|s| s.polls.last().is_some_and(|p| p.free_slots == 2))
    })
    .await;
    fake.assign([assignment("fast", "noop", json!(null))]);
    eventually("a second call in flight", || {
        fake.with(|s| s.entered.len() == 2)
    })
    .await;
    let second = fake.with(|s| s.entered[1].clone());
    assert!(
        second.iter().all(|(t, _)| t == "fast"),
        "slow's Finished must not overtake its Started: {second:?}"
    );
    assert!(second.contains(&("fast".into(), "finished")), "{second:?}");
    gate.add_permits(1_000);
    fake.wait_finished("slow").await;
    fake.wait_finished("fast").await;
    let entered = fake.with(|s| s.entered.clone());
    let call_of = |task: &str, kind: &str| {
        entered
            .iter()
            .position(|c| c.iter().any(|(t, k)| t == task && *k == kind))
            .unwrap()
    };
    assert_eq!(call_of("slow", "started"), 0);
    assert!(call_of("slow", "finished") >= 2, "{entered:?}");
    fake.wait_idle(2).await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn finished_is_retried_until_acknowledged_after_transient_errors() {
    let fake = FakeServer::new();
    fake.with(|s| s.fail_reports = 3);
    let worker = start(&fake, options(1));
    fake.assign([shell("t", "echo done")]);
    let f = fake.wait_finished("t").await;
    assert_eq!(f.status, FinishedStatus::Succeeded);
    assert_eq!(f.stdout, "done\n");
    assert!(
        fake.received("t", "finished") >= 2,
        "sent again after a failure"
    );
    assert!(
        fake.with(|s| s.calls.len()) >= 4,
        "three failed calls, then success"
    );
    // Until acknowledged it stays held (its lease is extended); afterwards it is dropped.
    fake.wait_idle(1).await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn an_attempt_stays_held_until_its_finished_is_acknowledged() {
    let fake = FakeServer::new();
    let gate = Arc::new(Semaphore::new(0));
    *fake.report_gate.lock().unwrap() = Some(gate.clone());
    let worker = start(&fake, options(1));
    fake.assign([assignment("n", "noop", json!(null))]);
    // The driver returned (the slot is free) but nothing was acknowledged: still held.
    eventually("a heartbeat holding the finished attempt", || {
        fake.with(|s| {
            s.polls.last().is_some_and(|p| {
                p.free_slots == 1 && p.held.iter().any(|h| h.task_id == "n" && h.epoch == 1)
            })
        })
    })
    .await;
    gate.add_permits(1_000);
    fake.wait_finished("n").await;
    fake.wait_idle(1).await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_refused_started_stops_the_job_without_a_finished_report() {
    let fake = FakeServer::new();
    fake.with(|s| s.refuse.insert(("stale".into(), "started"), 409));
    let worker = start(&fake, options(1));
    fake.assign([shell("stale", "sleep 30")]);
    // The slot comes back only when the driver returned, i.e. the command was killed.
    eventually("the refused attempt to be dropped", || {
        fake.with(|s| {
            s.polls
                .last()
                .is_some_and(|p| p.free_slots == 1 && p.held.is_empty())
                && !s.received.is_empty()
        })
    })
    .await;
    // Reports are sent in order: once a later task's Finished arrived, a Finished of the refused
    // attempt would have arrived too.
    fake.assign([assignment("sentinel", "noop", json!(null))]);
    fake.wait_finished("sentinel").await;
    assert_eq!(fake.received("stale", "finished"), 0);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_refused_finished_is_not_retried() {
    let fake = FakeServer::new();
    fake.with(|s| s.refuse.insert(("late".into(), "finished"), 409));
    let worker = start(&fake, options(1));
    fake.assign([assignment("late", "noop", json!(null))]);
    fake.wait_idle(1).await;
    fake.assign([assignment("sentinel", "noop", json!(null))]);
    fake.wait_finished("sentinel").await;
    assert_eq!(fake.received("late", "finished"), 1);
    worker.stop().await.unwrap();
}
