//! Quorum replicas: a parent runs as n replica tasks and succeeds with the output k of them
//! agree on, or fails when agreement is out of reach; the rest are cancelled and killed.

use cflow_core::task::TaskState;
use cflow_store::{Kill, NewTask, Outcome, OutcomeKind, Store, Task};
use serde_json::json;

use crate::attempts::{LEASE, agent, get};
use crate::tasks::task;
use crate::{ctx, each_backend, now, system, tenant};

fn replicated(n: i64, k: i64, deps: &[&str]) -> NewTask {
    NewTask {
        replicas: n,
        quorum: k,
        ..task("p", deps)
    }
}

fn said(text: &str) -> Outcome {
    Outcome {
        kind: OutcomeKind::Succeeded,
        exit_code: Some(0),
        stdout_tail: text.to_string(),
        stderr_tail: String::new(),
        result: None,
        detail: None,
    }
}

/// Assigns every replica of `parent` (each to its own agent) and returns them.
async fn run_replicas(store: &Store, t: &str, parent: &str) -> Vec<Task> {
    let reps = store.replicas_of(t, parent).await.unwrap();
    for (i, r) in reps.iter().enumerate() {
        let ag = agent(store, t).await;
        store
            .assign_task(&system(), &r.id, &ag.id, &format!("w{i}"), LEASE, now())
            .await
            .unwrap();
    }
    reps
}

#[tokio::test]
async fn replicas_that_agree_decide_the_parent() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "quorum").await;
        let out = store
            .submit_tasks(&ctx(&t), &t, vec![replicated(3, 2, &[]), task("d", &["p"])])
            .await
            .unwrap();
        let (p, d) = (&out[0].id, &out[1].id);
        assert_eq!(
            out[0].state,
            TaskState::Running,
            "a parent runs as its replicas"
        );
        let reps = store.replicas_of(&t, p).await.unwrap();
        assert_eq!(reps.len(), 3);
        for (i, r) in reps.iter().enumerate() {
            assert_eq!(r.state, TaskState::Queued);
            assert_eq!(
                (r.replica_of.as_deref(), r.replica_index),
                (Some(p.as_str()), Some(i as i64))
            );
            assert_eq!(
                (r.replicas, r.quorum, r.idempotency_key.clone()),
                (1, 1, None)
            );
            assert_eq!(r.spec, get(&store, &t, p).await.spec);
        }
        let ready = store.ready_tasks(u32::MAX).await.unwrap();
        assert!(
            !ready.iter().any(|r| &r.id == p),
            "{backend:?}: the parent is never queued"
        );

        let reps = run_replicas(&store, &t, p).await;
        let n = now();
        let s = store
            .complete_attempt(&system(), &reps[0].id, 1, said("42\n"), n)
            .await
            .unwrap();
        assert_eq!(
            (s.parent.clone(), s.kill.len()),
            (None, 0),
            "one vote is not a quorum"
        );
        let s = store
            .complete_attempt(&system(), &reps[1].id, 1, said("42  \r\n\r\n"), n)
            .await
            .unwrap();
        assert_eq!(s.parent, Some((p.clone(), TaskState::Succeeded)));
        assert_eq!(
            s.kill,
            [Kill {
                task_id: reps[2].id.clone(),
                worker_id: "w2".into(),
                epoch: 1
            }]
        );
        assert_eq!(s.queued, std::slice::from_ref(d));
        let parent = get(&store, &t, p).await;
        assert_eq!(parent.state, TaskState::Succeeded);
        let result = parent.result.unwrap();
        assert_eq!(result["output"], json!({"stdout": "42\n"}));
        assert_eq!(result["quorum"]["agreeing"], json!(2));
        assert_eq!(result["quorum"]["groups"][0]["replicas"], json!([0, 1]));
        assert_eq!(
            get(&store, &t, &reps[2].id).await.state,
            TaskState::Cancelled
        );
        let outputs = store
            .task_outputs(&t, std::slice::from_ref(p))
            .await
            .unwrap();
        assert_eq!(outputs[p], json!({"stdout": "42\n"}));
        // The killed replica's late report is stale and changes nothing.
        let err = store
            .complete_attempt(&system(), &reps[2].id, 1, said("43"), n)
            .await
            .unwrap_err();
        assert!(crate::attempts::stale(&err), "{err}");
        assert_eq!(get(&store, &t, p).await.state, TaskState::Succeeded);
    })
    .await;
}

#[tokio::test]
async fn a_vote_that_cannot_agree_fails_the_parent() {
    each_backend(|store, _| async move {
        let t = tenant(&store, "noquorum").await;
        let out = store
            .submit_tasks(
                &ctx(&t),
                &t,
                vec![
                    NewTask {
                        max_attempts: 1,
                        ..replicated(3, 3, &[])
                    },
                    task("d", &["p"]),
                ],
            )
            .await
            .unwrap();
        let (p, d) = (&out[0].id, &out[1].id);
        let reps = run_replicas(&store, &t, p).await;
        let n = now();
        store
            .complete_attempt(&system(), &reps[0].id, 1, said("a"), n)
            .await
            .unwrap();
        let failed = Outcome {
            kind: OutcomeKind::Failed { retryable: false },
            ..said("")
        };
        let s = store
            .complete_attempt(&system(), &reps[1].id, 1, failed, n)
            .await
            .unwrap();
        assert_eq!(s.parent, Some((p.clone(), TaskState::Failed)));
        assert_eq!(s.cancelled, std::slice::from_ref(d));
        assert_eq!(s.kill.len(), 1);
        let parent = get(&store, &t, p).await;
        assert!(
            parent.reason.as_deref().unwrap().starts_with("no quorum: "),
            "{parent:?}"
        );
        assert_eq!(
            parent.result.unwrap()["quorum"]["groups"][0]["replicas"],
            json!([0])
        );
        assert_eq!(get(&store, &t, d).await.state, TaskState::Cancelled);
    })
    .await;
}

#[tokio::test]
async fn replicas_wait_for_the_parents_dependencies_and_die_with_it() {
    each_backend(|store, _| async move {
        let t = tenant(&store, "repdeps").await;
        let ag = agent(&store, &t).await;
        let out = store
            .submit_tasks(&ctx(&t), &t, vec![task("x", &[]), replicated(2, 2, &["x"])])
            .await
            .unwrap();
        let (x, p) = (&out[0].id, &out[1].id);
        assert_eq!(out[1].state, TaskState::Pending);
        assert!(store.replicas_of(&t, p).await.unwrap().is_empty());
        let n = now();
        store
            .assign_task(&system(), x, &ag.id, "w", LEASE, n)
            .await
            .unwrap();
        let s = store
            .complete_attempt(&system(), x, 1, said("done"), n)
            .await
            .unwrap();
        let reps = store.replicas_of(&t, p).await.unwrap();
        assert_eq!(reps.len(), 2);
        assert_eq!(
            s.queued,
            reps.iter().map(|r| r.id.clone()).collect::<Vec<_>>()
        );
        assert_eq!(get(&store, &t, p).await.state, TaskState::Running);

        let ag2 = agent(&store, &t).await;
        store
            .assign_task(&system(), &reps[0].id, &ag2.id, "w7", LEASE, n)
            .await
            .unwrap();
        let c = store.cancel_task(&ctx(&t), &t, p, n).await.unwrap();
        assert_eq!(
            c.kill,
            [Kill {
                task_id: reps[0].id.clone(),
                worker_id: "w7".into(),
                epoch: 1
            }]
        );
        for r in store.replicas_of(&t, p).await.unwrap() {
            assert_eq!(r.state, TaskState::Cancelled);
        }
        assert_eq!(get(&store, &t, p).await.state, TaskState::Cancelled);
    })
    .await;
}

/// A batch that holds replicas runs element by element: a vote decided by one element kills
/// the replica that a later element reports on, which then finds its epoch stale.
#[tokio::test]
async fn a_batch_of_replica_completions_votes_in_order() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "repbatch").await;
        let out = store
            .submit_tasks(&ctx(&t), &t, vec![replicated(3, 2, &[])])
            .await
            .unwrap();
        let p = &out[0].id;
        let reps = run_replicas(&store, &t, p).await;
        let n = now();
        let reqs = reps
            .iter()
            .map(|r| cflow_store::CompleteRequest {
                task_id: r.id.clone(),
                epoch: 1,
                outcome: said("same"),
                now: n,
                started_at: None,
                next: None,
            })
            .collect();
        let got = store.complete_attempts(&system(), reqs).await.unwrap();
        assert_eq!(got[0].as_ref().unwrap().parent, None, "{backend:?}");
        let decided = got[1].as_ref().unwrap();
        assert_eq!(decided.parent, Some((p.clone(), TaskState::Succeeded)));
        assert_eq!(decided.kill[0].task_id, reps[2].id);
        assert!(crate::attempts::stale(got[2].as_ref().unwrap_err()));
        assert_eq!(
            get(&store, &t, &reps[2].id).await.state,
            TaskState::Cancelled
        );
    })
    .await;
}
