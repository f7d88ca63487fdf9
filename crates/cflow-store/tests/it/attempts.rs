//! Attempts: assignment, fenced reports (stale epochs refused with nothing changed), lease
//! expiry and re-queueing, retries, dependents, cancellation and recovery after a restart.

use cflow_core::task::TaskState;
use cflow_store::{
    Agent, AgentState, AttemptState, Error, Kill, NewTask, Outcome, OutcomeKind, Store,
    StoreOptions, SwarmState, Task,
};
use serde_json::json;

use crate::swarms::{new_agent, new_swarm};
use crate::tasks::task;
use crate::{ctx, each_backend, each_backend_url, now, system, tenant};

pub const LEASE: i64 = 30_000;

pub async fn agent(store: &Store, t: &str) -> Agent {
    let name = format!("s{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let s = store
        .create_swarm(&ctx(t), t, new_swarm(&name, 10))
        .await
        .unwrap();
    store
        .create_agent(&ctx(t), t, &s.id, new_agent("coder"))
        .await
        .unwrap()
}

pub fn outcome(kind: OutcomeKind) -> Outcome {
    Outcome {
        kind,
        exit_code: Some(if kind == OutcomeKind::Succeeded { 0 } else { 1 }),
        stdout_tail: "out".into(),
        stderr_tail: "err".into(),
        result: Some(json!({"ok": kind == OutcomeKind::Succeeded})),
        detail: None,
    }
}

pub async fn get(store: &Store, t: &str, id: &str) -> Task {
    store.get_task(t, id).await.unwrap().unwrap()
}

pub fn stale(err: &Error) -> bool {
    matches!(err, Error::StaleEpoch { .. })
}

#[tokio::test]
async fn an_attempt_runs_and_its_success_queues_dependents() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "run").await;
        let ag = agent(&store, &t).await;
        let out = store
            .submit_tasks(
                &ctx(&t),
                &t,
                vec![task("a", &[]), task("b", &["a"]), task("c", &["a", "b"])],
            )
            .await
            .unwrap();
        let (a, b, c) = (&out[0].id, &out[1].id, &out[2].id);
        let n = now();
        let at = store
            .assign_task(&system(), a, &ag.id, "w1", LEASE, n)
            .await
            .unwrap();
        assert_eq!(
            (at.epoch, at.attempt_no, at.state),
            (1, 1, AttemptState::Assigned)
        );
        assert_eq!(get(&store, &t, a).await.state, TaskState::Assigned);
        // A task can be assigned only while queued.
        let err = store
            .assign_task(&system(), a, &ag.id, "w2", LEASE, n)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::State(_)), "{err}");
        let err = store
            .assign_task(&system(), b, &ag.id, "w2", LEASE, n)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::State(ref m) if m.contains("pending")),
            "{err}"
        );

        store.start_attempt(&system(), a, 1, n + 1).await.unwrap();
        store.start_attempt(&system(), a, 1, n + 1).await.unwrap();
        assert_eq!(get(&store, &t, a).await.state, TaskState::Running);
        let hb = store
            .heartbeat_attempt(&system(), a, 1, n + 10, LEASE)
            .await
            .unwrap();
        assert_eq!(hb.lease_expires_at, n + 10 + LEASE);
        let settled = store
            .complete_attempt(&system(), a, 1, outcome(OutcomeKind::Succeeded), n + 100)
            .await
            .unwrap();
        assert_eq!(settled.state, TaskState::Succeeded);
        assert_eq!(settled.queued, std::slice::from_ref(b), "{backend:?}");
        assert_eq!(get(&store, &t, c).await.unmet, 1);

        let attempts = store.list_attempts(&t, a).await.unwrap();
        assert_eq!(attempts.len(), 1);
        let rec = &attempts[0];
        assert_eq!(
            (rec.state, rec.exit_code),
            (AttemptState::Succeeded, Some(0))
        );
        assert_eq!((rec.started_at, rec.ended_at), (Some(n + 1), Some(n + 100)));
        assert_eq!(rec.stdout_tail.as_deref(), Some("out"));
        assert_eq!(rec.result, Some(json!({"ok": true})));
        let ag_now = store.get_agent(&t, &ag.id).await.unwrap().unwrap();
        assert_eq!(
            (ag_now.tasks_done, ag_now.failures, ag_now.busy_ms),
            (1, 0, 99)
        );

        store
            .assign_task(&system(), b, &ag.id, "w1", LEASE, n)
            .await
            .unwrap();
        let s = store
            .complete_attempt(&system(), b, 1, outcome(OutcomeKind::Succeeded), n)
            .await
            .unwrap();
        assert_eq!(s.queued, std::slice::from_ref(c));
        assert_eq!(get(&store, &t, c).await.state, TaskState::Queued);
    })
    .await;
}

#[tokio::test]
async fn stale_epochs_are_refused_and_change_nothing() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "fence").await;
        let ag = agent(&store, &t).await;
        let out = store
            .submit_tasks(&ctx(&t), &t, vec![task("a", &[])])
            .await
            .unwrap();
        let id = &out[0].id;
        let n = now();
        store
            .assign_task(&system(), id, &ag.id, "w1", 1_000, n)
            .await
            .unwrap();
        let lost = store.expired_leases(n + 2_000, 100).await.unwrap();
        assert_eq!(lost.len(), 1);
        assert_eq!(
            (
                lost[0].task_id.as_str(),
                lost[0].epoch,
                lost[0].worker_id.as_str()
            ),
            (id.as_str(), 1, "w1")
        );
        let s = store
            .requeue_lost(&system(), id, 1, n + 2_000)
            .await
            .unwrap();
        assert_eq!(s.state, TaskState::Queued);
        let at2 = store
            .assign_task(&system(), id, &ag.id, "w2", LEASE, n + 3_000)
            .await
            .unwrap();
        assert_eq!((at2.epoch, at2.attempt_no), (2, 2));
        let before = get(&store, &t, id).await;

        // The first worker comes back and reports with its old epoch.
        let err = store
            .start_attempt(&system(), id, 1, n + 4_000)
            .await
            .unwrap_err();
        assert!(stale(&err), "{backend:?}: {err}");
        let err = store
            .heartbeat_attempt(&system(), id, 1, n + 4_000, LEASE)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::StaleEpoch {
                    current: Some(2),
                    ..
                }
            ),
            "{err}"
        );
        let err = store
            .complete_attempt(&system(), id, 1, outcome(OutcomeKind::Succeeded), n + 4_000)
            .await
            .unwrap_err();
        assert!(stale(&err), "{err}");
        let err = store
            .requeue_lost(&system(), id, 1, n + 99_000)
            .await
            .unwrap_err();
        assert!(stale(&err), "{err}");
        let err = store
            .heartbeat_attempt(&system(), id, 7, n, LEASE)
            .await
            .unwrap_err();
        assert!(stale(&err), "{err}");
        let err = store
            .heartbeat_attempt(&system(), "nope", 1, n, LEASE)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        assert_eq!(
            get(&store, &t, id).await,
            before,
            "{backend:?}: nothing changed"
        );
        let attempts = store.list_attempts(&t, id).await.unwrap();
        let states: Vec<_> = attempts.iter().map(|a| a.state).collect();
        assert_eq!(states, [AttemptState::Lost, AttemptState::Assigned]);

        // A lease that was extended is not lost.
        let err = store
            .requeue_lost(&system(), id, 2, n + 3_001)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::State(_)), "{err}");
        let refused = store
            .audit_list(&Default::default(), &crate::page(1000, None))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.outcome == "stale_epoch")
            .count();
        assert_eq!(refused, 5, "every stale report is audited");
    })
    .await;
}

#[tokio::test]
async fn failures_retry_then_fail_and_cancel_dependents() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "fail").await;
        let ag = agent(&store, &t).await;
        let out = store
            .submit_tasks(
                &ctx(&t),
                &t,
                vec![
                    NewTask {
                        max_attempts: 2,
                        ..task("a", &[])
                    },
                    task("b", &["a"]),
                    task("c", &["b"]),
                ],
            )
            .await
            .unwrap();
        let a = &out[0].id;
        let n = now();
        store
            .assign_task(&system(), a, &ag.id, "w", LEASE, n)
            .await
            .unwrap();
        let s = store
            .complete_attempt(
                &system(),
                a,
                1,
                outcome(OutcomeKind::Failed { retryable: true }),
                n,
            )
            .await
            .unwrap();
        assert_eq!(
            s.state,
            TaskState::Pending,
            "{backend:?}: retry waits for its backoff"
        );
        let task_a = get(&store, &t, a).await;
        assert!(task_a.retry_at.unwrap() > n);
        assert!(store.ready_tasks(100).await.unwrap().is_empty());
        let promoted = store
            .promote_retries(&system(), task_a.retry_at.unwrap(), 100)
            .await
            .unwrap();
        assert_eq!(promoted, 1);
        assert_eq!(get(&store, &t, a).await.state, TaskState::Queued);

        store
            .assign_task(&system(), a, &ag.id, "w", LEASE, n)
            .await
            .unwrap();
        let s = store
            .complete_attempt(
                &system(),
                a,
                2,
                outcome(OutcomeKind::Failed { retryable: true }),
                n,
            )
            .await
            .unwrap();
        assert_eq!(s.state, TaskState::Failed);
        assert_eq!(s.cancelled, [out[1].id.clone(), out[2].id.clone()]);
        for dep in &out[1..] {
            let d = get(&store, &t, &dep.id).await;
            assert_eq!(d.state, TaskState::Cancelled);
            assert_eq!(
                d.reason.as_deref(),
                Some(format!("dependency {a} failed").as_str())
            );
        }
        let ag_now = store.get_agent(&t, &ag.id).await.unwrap().unwrap();
        assert_eq!(ag_now.failures, 2);
        // A new task depending on the failed one starts cancelled.
        let late = store
            .submit_tasks(&ctx(&t), &t, vec![task("d", &[a])])
            .await
            .unwrap();
        assert_eq!(late[0].state, TaskState::Cancelled);
    })
    .await;
}

#[tokio::test]
async fn lost_leases_use_up_attempts() {
    each_backend(|store, _| async move {
        let t = tenant(&store, "lost").await;
        let ag = agent(&store, &t).await;
        let out = store
            .submit_tasks(
                &ctx(&t),
                &t,
                vec![
                    NewTask {
                        max_attempts: 1,
                        ..task("a", &[])
                    },
                    task("b", &["a"]),
                ],
            )
            .await
            .unwrap();
        let n = now();
        store
            .assign_task(&system(), &out[0].id, &ag.id, "w", 1, n)
            .await
            .unwrap();
        let s = store
            .requeue_lost(&system(), &out[0].id, 1, n + 10)
            .await
            .unwrap();
        assert_eq!(s.state, TaskState::Failed);
        assert_eq!(s.cancelled, [out[1].id.clone()]);
        assert!(store.expired_leases(n + 10, 10).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn cancel_kills_the_live_attempt_and_is_tenant_scoped() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "cancel").await;
        let other = tenant(&store, "other").await;
        let ag = agent(&store, &t).await;
        let out = store
            .submit_tasks(
                &ctx(&t),
                &t,
                vec![task("a", &[]), task("b", &["a"]), task("q", &[])],
            )
            .await
            .unwrap();
        let a = &out[0].id;
        let n = now();
        store
            .assign_task(&system(), a, &ag.id, "w9", LEASE, n)
            .await
            .unwrap();
        store.start_attempt(&system(), a, 1, n).await.unwrap();

        let err = store
            .cancel_task(&ctx(&other), &other, a, n)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{backend:?}: {err}");
        assert_eq!(get(&store, &t, a).await.state, TaskState::Running);

        let c = store.cancel_task(&ctx(&t), &t, a, n).await.unwrap();
        assert_eq!(
            c.kill,
            [Kill {
                task_id: a.to_string(),
                worker_id: "w9".to_string(),
                epoch: 1
            }]
        );
        assert_eq!(c.dependents, [out[1].id.clone()]);
        assert_eq!(get(&store, &t, a).await.state, TaskState::Cancelled);
        // The worker's late report is stale.
        let err = store
            .complete_attempt(&system(), a, 1, outcome(OutcomeKind::Succeeded), n)
            .await
            .unwrap_err();
        assert!(stale(&err), "{err}");
        let err = store.cancel_task(&ctx(&t), &t, a, n).await.unwrap_err();
        assert!(matches!(err, Error::State(_)), "{err}");

        let q = store
            .cancel_task(&ctx(&t), &t, &out[2].id, n)
            .await
            .unwrap();
        assert!(q.kill.is_empty());
        // An agent of another tenant cannot be assigned the task.
        let theirs = agent(&store, &other).await;
        let more = store
            .submit_tasks(&ctx(&t), &t, vec![task("z", &[])])
            .await
            .unwrap();
        let err = store
            .assign_task(&system(), &more[0].id, &theirs.id, "w", LEASE, n)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        let err = store
            .assign_task(&system(), &more[0].id, &ag.id, "w", 0, n)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Invalid(ref v) if v.field == "lease_ms"),
            "{err}"
        );
        // A paused swarm's agents and agents out of service take no new tasks.
        let z = &more[0].id;
        store
            .set_swarm_state(&ctx(&t), &t, &ag.swarm_id, SwarmState::Paused)
            .await
            .unwrap();
        let err = store
            .assign_task(&system(), z, &ag.id, "w", LEASE, n)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::State(ref m) if m.contains("paused")),
            "{err}"
        );
        store
            .set_swarm_state(&ctx(&t), &t, &ag.swarm_id, SwarmState::Active)
            .await
            .unwrap();
        store
            .set_agent_state(&ctx(&t), &t, &ag.id, AgentState::Quarantined)
            .await
            .unwrap();
        let err = store
            .assign_task(&system(), z, &ag.id, "w", LEASE, n)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::State(ref m) if m.contains("quarantined")),
            "{err}"
        );
        assert_eq!(get(&store, &t, z).await.state, TaskState::Queued);
    })
    .await;
}

#[tokio::test]
async fn output_is_capped_with_a_mark() {
    each_backend(|store, _| async move {
        let t = tenant(&store, "cap").await;
        let ag = agent(&store, &t).await;
        let out = store
            .submit_tasks(&ctx(&t), &t, vec![task("a", &[])])
            .await
            .unwrap();
        let n = now();
        store
            .assign_task(&system(), &out[0].id, &ag.id, "w", LEASE, n)
            .await
            .unwrap();
        let mut o = outcome(OutcomeKind::Succeeded);
        o.stdout_tail = format!("{}END", "é".repeat(40_000));
        store
            .complete_attempt(&system(), &out[0].id, 1, o, n)
            .await
            .unwrap();
        let rec = &store.list_attempts(&t, &out[0].id).await.unwrap()[0];
        let tail = rec.stdout_tail.as_deref().unwrap();
        assert!(
            tail.starts_with("[… ") && tail.ends_with("END"),
            "{}",
            &tail[..40]
        );
        assert!(tail.len() <= cflow_store::OUTPUT_TAIL_BYTES + 40);
    })
    .await;
}

#[tokio::test]
async fn a_restart_rebuilds_exactly_the_accepted_work() {
    each_backend_url(|store, backend, url| async move {
        let t = tenant(&store, "crash").await;
        let ag = agent(&store, &t).await;
        let batch: Vec<NewTask> = (0..50).map(|i| task(&format!("t{i}"), &[])).collect();
        let out = store.submit_tasks(&ctx(&t), &t, batch).await.unwrap();
        let n = now();
        for s in &out[..5] {
            store
                .assign_task(&system(), &s.id, &ag.id, "w", 1_000, n)
                .await
                .unwrap();
        }
        store
            .start_attempt(&system(), &out[0].id, 1, n)
            .await
            .unwrap();
        store.close().await;

        let again = Store::open(&url, StoreOptions::default()).await.unwrap();
        let ready: Vec<String> = again
            .ready_tasks(1000)
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        let want: Vec<String> = out[5..].iter().map(|s| s.id.clone()).collect();
        assert_eq!(ready, want, "{backend:?}");
        let mut leased: Vec<String> = again
            .expired_leases(n + 5_000, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.task_id)
            .collect();
        leased.sort();
        let mut want: Vec<String> = out[..5].iter().map(|s| s.id.clone()).collect();
        want.sort();
        assert_eq!(
            leased, want,
            "{backend:?}: every leased task is found again"
        );
        for id in &leased {
            again
                .requeue_lost(&system(), id, 1, n + 5_000)
                .await
                .unwrap();
        }
        assert_eq!(again.ready_tasks(1000).await.unwrap().len(), 50);
        assert!(again.audit_verify().await.unwrap().first_break.is_none());
        again.close().await;
    })
    .await;
}

#[tokio::test]
async fn a_page_of_results_comes_from_each_tasks_last_succeeded_attempt() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "results").await;
        let other = tenant(&store, "results-other").await;
        let ag = agent(&store, &t).await;
        let out = store
            .submit_tasks(
                &ctx(&t),
                &t,
                vec![
                    task("retried", &[]),
                    task("failed", &[]),
                    task("queued", &[]),
                ],
            )
            .await
            .unwrap();
        let (retried, failed, queued) = (&out[0].id, &out[1].id, &out[2].id);
        let n = now();
        // `retried`: its first attempt is lost, its second succeeds with its own result.
        store
            .assign_task(&system(), retried, &ag.id, "w1", LEASE, n)
            .await
            .unwrap();
        store
            .requeue_lost(&system(), retried, 1, n + LEASE + 1)
            .await
            .unwrap();
        store
            .assign_task(&system(), retried, &ag.id, "w2", LEASE, n + LEASE + 2)
            .await
            .unwrap();
        let mut second = outcome(OutcomeKind::Succeeded);
        second.result = Some(json!({"attempt": 2}));
        store
            .complete_attempt(&system(), retried, 2, second, n + LEASE + 3)
            .await
            .unwrap();
        // `failed`: a failed attempt's result is not a task result.
        store
            .assign_task(&system(), failed, &ag.id, "w1", LEASE, n)
            .await
            .unwrap();
        store
            .complete_attempt(
                &system(),
                failed,
                1,
                outcome(OutcomeKind::Failed { retryable: false }),
                n + 1,
            )
            .await
            .unwrap();

        let ids = [retried.as_str(), failed.as_str(), queued.as_str(), "nope"];
        let results = store.succeeded_results(&t, &ids).await.unwrap();
        assert_eq!(results.len(), 1, "{backend:?}: {results:?}");
        assert_eq!(results[retried], json!({"attempt": 2}));
        // Another tenant reads none of them; an empty page reads nothing.
        assert!(
            store
                .succeeded_results(&other, &ids)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(store.succeeded_results(&t, &[]).await.unwrap().is_empty());
    })
    .await;
}
