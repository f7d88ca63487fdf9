//! Batched attempt ops: each element answers exactly as its single op would.

use cflow_core::task::TaskState;
use cflow_store::{
    AgentState, AssignRequest, AttemptState, AuditQuery, CompleteRequest, Error, NextAssign,
    OutcomeKind, StartRequest, SwarmState,
};

use crate::attempts::{LEASE, agent, get, outcome, stale};
use crate::tasks::task;
use crate::{ctx, each_backend, now, page, system, tenant};

#[tokio::test]
async fn batched_attempt_ops_answer_per_element() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "batch").await;
        let ag = agent(&store, &t).await;
        let out = store
            .submit_tasks(
                &ctx(&t),
                &t,
                vec![task("a", &[]), task("b", &[]), task("c", &["a"])],
            )
            .await
            .unwrap();
        let (a, b, c) = (&out[0].id, &out[1].id, &out[2].id);
        let n = now();
        let req = |id: &str, lease_ms: i64| AssignRequest {
            task_id: id.to_string(),
            agent_id: ag.id.clone(),
            worker_id: "w1".to_string(),
            lease_ms,
            now: n,
        };
        let got = store
            .assign_tasks(
                &system(),
                vec![
                    req(a, LEASE),
                    req(b, 0),
                    req(c, LEASE),
                    req("nope", LEASE),
                    req(b, LEASE),
                    req(b, LEASE),
                ],
            )
            .await
            .unwrap();
        assert_eq!(got.len(), 6);
        assert_eq!(got[0].as_ref().unwrap().epoch, 1);
        assert!(matches!(got[1], Err(Error::Invalid(_))), "{backend:?}");
        assert!(matches!(got[2], Err(Error::State(_))), "c waits on a");
        assert!(matches!(got[3], Err(Error::NotFound(_))));
        assert_eq!(got[4].as_ref().unwrap().epoch, 1);
        assert!(
            matches!(got[5], Err(Error::State(_))),
            "assigned just before"
        );

        let start = |id: &str, epoch| StartRequest {
            task_id: id.to_string(),
            epoch,
            now: n,
        };
        let got = store
            .start_attempts(&system(), vec![start(a, 1), start(b, 2), start(a, 1)])
            .await
            .unwrap();
        assert_eq!(got[0].as_ref().unwrap().state, AttemptState::Running);
        assert!(stale(got[1].as_ref().unwrap_err()));
        assert_eq!(
            got[2].as_ref().unwrap().state,
            AttemptState::Running,
            "repeat is harmless"
        );

        let done = |id: &str, epoch| CompleteRequest {
            task_id: id.to_string(),
            epoch,
            outcome: outcome(OutcomeKind::Succeeded),
            now: n,
            started_at: None,
            next: None,
        };
        let got = store
            .complete_attempts(
                &system(),
                vec![done(a, 1), done(b, 3), done(b, 1), done(a, 1)],
            )
            .await
            .unwrap();
        let s = got[0].as_ref().unwrap();
        assert_eq!(
            (s.state, s.queued.clone()),
            (TaskState::Succeeded, vec![c.clone()])
        );
        assert!(stale(got[1].as_ref().unwrap_err()));
        assert_eq!(got[2].as_ref().unwrap().state, TaskState::Succeeded);
        assert!(stale(got[3].as_ref().unwrap_err()), "completed just before");
        assert_eq!(get(&store, &t, c).await.state, TaskState::Queued);

        // Every element was audited like its single op (the invalid lease never reached it).
        let q = AuditQuery {
            tenant_id: Some(t.clone()),
            ..Default::default()
        };
        let entries = store.audit_list(&q, &page(1000, None)).await.unwrap().items;
        // The request's two completions share one entry that lists both tasks.
        let completions: Vec<_> = entries
            .iter()
            .filter(|e| e.action == "task.complete")
            .collect();
        assert_eq!(completions.len(), 1, "{backend:?}: {completions:?}");
        let e = completions[0];
        assert_eq!(
            (e.resource.as_str(), e.outcome.as_str()),
            ("tasks", "success")
        );
        assert_eq!(e.detail["count"], 2, "{e:?}");
        let listed: Vec<&str> = e.detail["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap())
            .collect();
        assert_eq!(listed, [a.as_str(), b.as_str()], "{e:?}");
        assert!(
            store
                .assign_tasks(&system(), vec![])
                .await
                .unwrap()
                .is_empty()
        );
    })
    .await;
}

/// Distinct tasks take the set-based path; its answers must be the single ops' answers.
#[tokio::test]
async fn set_based_batches_match_the_single_ops() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "batchfast").await;
        let ag = agent(&store, &t).await;
        let other = tenant(&store, "batchfast-other").await;
        let theirs = agent(&store, &other).await;
        let out = store
            .submit_tasks(
                &ctx(&t),
                &t,
                vec![
                    task("a", &[]),
                    task("b", &[]),
                    task("c", &["a"]),
                    task("d", &[]),
                    task("e", &["d"]),
                ],
            )
            .await
            .unwrap();
        let id = |i: usize| out[i].id.clone();
        let n = now();
        let req = |task: String, agent: &str| AssignRequest {
            task_id: task,
            agent_id: agent.to_string(),
            worker_id: "w1".to_string(),
            lease_ms: LEASE,
            now: n,
        };
        let got = store
            .assign_tasks(
                &system(),
                vec![
                    req(id(0), &ag.id),
                    req(id(1), &theirs.id),
                    req(id(2), &ag.id),
                    req("nope".into(), &ag.id),
                    req(id(3), &ag.id),
                ],
            )
            .await
            .unwrap();
        assert_eq!(got[0].as_ref().unwrap().epoch, 1, "{backend:?}");
        assert!(
            matches!(got[1], Err(Error::NotFound(_))),
            "another tenant's agent"
        );
        assert!(matches!(got[2], Err(Error::State(_))));
        assert!(matches!(got[3], Err(Error::NotFound(_))));
        assert_eq!(get(&store, &t, &id(3)).await.state, TaskState::Assigned);
        assert_eq!(get(&store, &t, &id(1)).await.state, TaskState::Queued);

        let start = |task: String, epoch| StartRequest {
            task_id: task,
            epoch,
            now: n,
        };
        let got = store
            .start_attempts(
                &system(),
                vec![start(id(0), 1), start(id(1), 1), start(id(3), 2)],
            )
            .await
            .unwrap();
        assert_eq!(got[0].as_ref().unwrap().started_at, Some(n));
        assert!(stale(got[1].as_ref().unwrap_err()));
        assert!(stale(got[2].as_ref().unwrap_err()));
        assert_eq!(get(&store, &t, &id(0)).await.state, TaskState::Running);
        assert_eq!(get(&store, &t, &id(3)).await.state, TaskState::Assigned);

        let done = |task: String, kind| CompleteRequest {
            task_id: task,
            epoch: 1,
            outcome: outcome(kind),
            now: n + 5,
            started_at: None,
            next: None,
        };
        let got = store
            .complete_attempts(
                &system(),
                vec![
                    done(id(0), OutcomeKind::Succeeded),
                    done(id(1), OutcomeKind::Succeeded),
                    done(id(3), OutcomeKind::Failed { retryable: false }),
                ],
            )
            .await
            .unwrap();
        let s = got[0].as_ref().unwrap();
        assert_eq!(
            (s.state, s.queued.clone()),
            (TaskState::Succeeded, vec![id(2)])
        );
        assert!(stale(got[1].as_ref().unwrap_err()));
        let s = got[2].as_ref().unwrap();
        assert_eq!(
            (s.state, s.cancelled.clone()),
            (TaskState::Failed, vec![id(4)])
        );
        let failed = get(&store, &t, &id(3)).await;
        assert_eq!(failed.reason.as_deref(), Some("attempt 1 failed"));
        assert_eq!(get(&store, &t, &id(4)).await.state, TaskState::Cancelled);
        let attempts = store.list_attempts(&t, &id(0)).await.unwrap();
        assert_eq!(attempts[0].state, AttemptState::Succeeded);
        assert_eq!(attempts[0].ended_at, Some(n + 5));
        assert_eq!(attempts[0].stdout_tail.as_deref(), Some("out"));
        let agent = store.get_agent(&t, &ag.id).await.unwrap().unwrap();
        assert_eq!(
            (agent.tasks_done, agent.failures, agent.busy_ms),
            (1, 1, 10)
        );
    })
    .await;
}

/// A start is recorded at the time the worker reports it happened, never before the attempt's
/// assignment: by a start op (set-based and single) and by a completion that carries it.
#[tokio::test]
async fn reported_start_times_are_recorded_within_the_attempt() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "starts").await;
        let ag = agent(&store, &t).await;
        let out = store
            .submit_tasks(
                &ctx(&t),
                &t,
                vec![
                    task("a", &[]),
                    task("b", &[]),
                    task("c", &[]),
                    task("d", &[]),
                ],
            )
            .await
            .unwrap();
        let ids: Vec<String> = out.iter().map(|s| s.id.clone()).collect();
        let n = now();
        let assigned = store
            .assign_tasks(
                &system(),
                ids.iter()
                    .map(|id| AssignRequest {
                        task_id: id.clone(),
                        agent_id: ag.id.clone(),
                        worker_id: "w1".to_string(),
                        lease_ms: LEASE,
                        now: n,
                    })
                    .collect(),
            )
            .await
            .unwrap();
        assert!(assigned.iter().all(Result::is_ok), "{backend:?}");
        let start = |id: &String, at: i64| StartRequest {
            task_id: id.clone(),
            epoch: 1,
            now: at,
        };
        // Distinct tasks: the set-based path. One started 40 ms after its assignment, one
        // reported as starting before it (a worker cannot know the server's clock).
        let got = store
            .start_attempts(
                &system(),
                vec![start(&ids[0], n + 40), start(&ids[1], n - 5_000)],
            )
            .await
            .unwrap();
        assert_eq!(
            got[0].as_ref().unwrap().started_at,
            Some(n + 40),
            "{backend:?}"
        );
        assert_eq!(got[1].as_ref().unwrap().started_at, Some(n), "{backend:?}");
        // A single op (the same task twice goes one by one).
        let got = store
            .start_attempts(
                &system(),
                vec![start(&ids[2], n + 7), start(&ids[2], n + 9)],
            )
            .await
            .unwrap();
        assert_eq!(
            got[0].as_ref().unwrap().started_at,
            Some(n + 7),
            "{backend:?}"
        );
        // A completion that carries its start.
        store
            .complete_attempts(
                &system(),
                vec![CompleteRequest {
                    task_id: ids[3].clone(),
                    epoch: 1,
                    outcome: outcome(OutcomeKind::Succeeded),
                    now: n + 100,
                    started_at: Some(n + 60),
                    next: None,
                }],
            )
            .await
            .unwrap();
        for (id, want) in [
            (&ids[0], n + 40),
            (&ids[1], n),
            (&ids[2], n + 7),
            (&ids[3], n + 60),
        ] {
            let attempts = store.list_attempts(&t, id).await.unwrap();
            assert_eq!(attempts[0].started_at, Some(want), "{backend:?} {id}");
        }
    })
    .await;
}

/// The writer joins attempt batches of different callers that reach it together (and puts a
/// batch's ops in groups first): each caller must still get exactly its own answers. First 100
/// concurrent single completions, every fourth with a stale epoch (one set-based run); then the
/// tasks those left running each get the same report from two callers at once (not distinct, so
/// applied one by one: one is accepted, the other is stale).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_attempt_reports_are_answered_per_caller() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "joined").await;
        let ag = agent(&store, &t).await;
        let mut tasks = Vec::new();
        for i in 0..100 {
            tasks.push(task(&format!("t{i}"), &[]));
        }
        // Ten dependents, each after one of the first ten tasks.
        for i in 0..10 {
            tasks.push(task(&format!("d{i}"), &[&format!("t{i}")]));
        }
        let out = store.submit_tasks(&ctx(&t), &t, tasks).await.unwrap();
        let ids: Vec<String> = out.iter().take(100).map(|s| s.id.clone()).collect();
        let n = now();
        let reqs = ids
            .iter()
            .map(|id| AssignRequest {
                task_id: id.clone(),
                agent_id: ag.id.clone(),
                worker_id: "w1".to_string(),
                lease_ms: LEASE,
                now: n,
            })
            .collect();
        for a in store.assign_tasks(&system(), reqs).await.unwrap() {
            assert_eq!(a.unwrap().epoch, 1);
        }
        let report = |i: usize, epoch: i64| {
            let store = store.clone();
            let id = ids[i].clone();
            tokio::spawn(async move {
                let done = CompleteRequest {
                    task_id: id,
                    epoch,
                    outcome: outcome(OutcomeKind::Succeeded),
                    now: n,
                    started_at: None,
                    next: None,
                };
                (
                    i,
                    epoch,
                    store.complete_attempts(&system(), vec![done]).await,
                )
            })
        };
        let mut waves = Vec::new();
        waves.push(
            (0..100)
                .map(|i| report(i, if i % 4 == 3 { 7 } else { 1 }))
                .collect::<Vec<_>>(),
        );
        let mut accepted = vec![0usize; 100];
        for wave in 0..2 {
            let handles = std::mem::take(&mut waves[wave]);
            for h in handles {
                let (i, epoch, got) = h.await.unwrap();
                let got = got.unwrap();
                assert_eq!(got.len(), 1, "{backend:?}");
                match &got[0] {
                    Ok(s) => {
                        assert_eq!(epoch, 1, "{backend:?}: stale report of {i} accepted");
                        assert_eq!(s.state, TaskState::Succeeded, "{backend:?}: {i}");
                        if i < 10 {
                            assert_eq!(s.queued.len(), 1, "{backend:?}: task {i}'s dependent");
                        }
                        accepted[i] += 1;
                    }
                    Err(e) => assert!(stale(e), "{backend:?}: {i}: {e:?}"),
                }
            }
            if wave == 0 {
                let left: Vec<usize> = (0..100).filter(|i| i % 4 == 3).collect();
                assert!(left.iter().all(|&i| accepted[i] == 0), "{backend:?}");
                let twice = left
                    .iter()
                    .flat_map(|&i| [report(i, 1), report(i, 1)])
                    .collect();
                waves.push(twice);
            }
        }
        for (i, n) in accepted.iter().enumerate() {
            assert_eq!(*n, 1, "{backend:?}: task {i} accepted {n} times");
            assert_eq!(get(&store, &t, &ids[i]).await.state, TaskState::Succeeded);
        }
        let q = AuditQuery {
            tenant_id: Some(t.clone()),
            ..AuditQuery::default()
        };
        let entries = store.audit_list(&q, &page(1000, None)).await.unwrap().items;
        let ok = entries
            .iter()
            .filter(|e| e.action == "task.complete" && e.outcome == "success")
            .count();
        assert_eq!(
            ok, 100,
            "{backend:?}: one success entry per accepted report"
        );
        let report = store.audit_verify().await.unwrap();
        assert!(report.first_break.is_none(), "{report:?}");
    })
    .await;
}

/// A completion may hand its agent over to a queued task (`CompleteRequest::next`): assigned in
/// the same transaction only when the completion is accepted, refused like any assignment.
#[tokio::test]
async fn a_completion_hands_its_agent_over_to_the_next_task() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "handover").await;
        let ag = agent(&store, &t).await;
        let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let out = store
            .submit_tasks(&ctx(&t), &t, names.iter().map(|n| task(n, &[])).collect())
            .await
            .unwrap();
        let id: std::collections::HashMap<&str, String> = names
            .iter()
            .zip(&out)
            .map(|(n, s)| (*n, s.id.clone()))
            .collect();
        let n = now();
        let assign = |x: &str| AssignRequest {
            task_id: id[x].clone(),
            agent_id: ag.id.clone(),
            worker_id: "w1".to_string(),
            lease_ms: LEASE,
            now: n,
        };
        let got = store
            .assign_tasks(&system(), ["a", "b", "f", "g"].map(assign).to_vec())
            .await
            .unwrap();
        assert!(got.iter().all(Result::is_ok), "{got:?}");
        store.cancel_task(&ctx(&t), &t, &id["d"], n).await.unwrap();
        let done = |x: &str, epoch, next: &str| CompleteRequest {
            task_id: id[x].clone(),
            epoch,
            outcome: outcome(OutcomeKind::Succeeded),
            now: n,
            started_at: None,
            next: Some(NextAssign {
                task_id: id[next].clone(),
                agent_id: ag.id.clone(),
                worker_id: "w1".to_string(),
                lease_ms: LEASE,
            }),
        };

        // One op per element (b twice): accepted -> assigned; stale -> nothing; accepted with
        // a cancelled next -> the completion stands, the hand-over is refused.
        let got = store
            .complete_attempts(
                &system(),
                vec![done("a", 1, "c"), done("b", 9, "e"), done("b", 1, "d")],
            )
            .await
            .unwrap();
        let s = got[0].as_ref().unwrap();
        assert_eq!(s.state, TaskState::Succeeded, "{backend:?}");
        let a = s.next.as_ref().unwrap().as_ref().unwrap();
        assert_eq!(
            (a.task_id.as_str(), a.agent_id.as_str(), a.epoch),
            (id["c"].as_str(), ag.id.as_str(), 1)
        );
        assert_eq!(get(&store, &t, &id["c"]).await.state, TaskState::Assigned);
        assert!(stale(got[1].as_ref().unwrap_err()), "{:?}", got[1]);
        assert_eq!(get(&store, &t, &id["e"]).await.state, TaskState::Queued);
        let s = got[2].as_ref().unwrap();
        assert_eq!(s.state, TaskState::Succeeded);
        assert!(
            matches!(&s.next, Some(Err(m)) if m.contains("cancelled")),
            "{s:?}"
        );
        assert_eq!(get(&store, &t, &id["d"]).await.state, TaskState::Cancelled);

        // Distinct completions (the set-based path) naming the same next task: one gets it.
        let got = store
            .complete_attempts(&system(), vec![done("f", 1, "h"), done("g", 1, "h")])
            .await
            .unwrap();
        let nexts: Vec<bool> = got
            .iter()
            .map(|r| matches!(r.as_ref().unwrap().next, Some(Ok(_))))
            .collect();
        assert_eq!(nexts, [true, false], "{backend:?}: {got:?}");
        assert_eq!(get(&store, &t, &id["h"]).await.state, TaskState::Assigned);
        assert_eq!(get(&store, &t, &id["g"]).await.state, TaskState::Succeeded);

        // The hand-overs are in the ledger as assignments.
        let q = AuditQuery {
            tenant_id: Some(t.clone()),
            ..Default::default()
        };
        let entries = store.audit_list(&q, &page(1000, None)).await.unwrap().items;
        let assigned: Vec<String> = entries
            .iter()
            .filter(|e| e.action == "task.assign" && e.outcome == "success")
            .flat_map(|e| match e.detail["tasks"].as_array() {
                Some(list) => list
                    .iter()
                    .map(|t| t["id"].as_str().unwrap().to_string())
                    .collect(),
                None => vec![e.resource.trim_start_matches("task/").to_string()],
            })
            .collect();
        for x in ["c", "h"] {
            assert!(
                assigned.contains(&id[x]),
                "{backend:?}: {x} in {assigned:?}"
            );
        }
        assert!(!assigned.contains(&id["e"]));
    })
    .await;
}

/// A batch of assignments of distinct tasks takes the set-based path (on PostgreSQL one
/// statement that checks and writes every element, the refused ones then checked again one by
/// one for their reason): each element still gets exactly the answer of its single op, and the
/// refused ones change nothing.
#[tokio::test]
async fn a_set_of_assignments_checks_every_element_like_its_single_op() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "set").await;
        let other = tenant(&store, "set-other").await;
        let ag = agent(&store, &t).await;
        let paused = agent(&store, &t).await;
        let quarantined = agent(&store, &t).await;
        let theirs = agent(&store, &other).await;
        store
            .set_swarm_state(&ctx(&t), &t, &paused.swarm_id, SwarmState::Paused)
            .await
            .unwrap();
        store
            .set_agent_state(&ctx(&t), &t, &quarantined.id, AgentState::Quarantined)
            .await
            .unwrap();
        let names = ["ok", "again", "taken", "waits", "paused", "quar", "theirs"];
        let mut tasks: Vec<_> = names.iter().map(|n| task(n, &[])).collect();
        tasks[3] = task("waits", &["ok"]);
        let out = store.submit_tasks(&ctx(&t), &t, tasks).await.unwrap();
        let id = |n: &str| out[names.iter().position(|x| *x == n).unwrap()].id.clone();
        let n = now();
        let req = |task: &str, agent: &str| AssignRequest {
            task_id: id(task),
            agent_id: agent.to_string(),
            worker_id: "w1".to_string(),
            lease_ms: LEASE,
            now: n,
        };
        // "again" runs once and is lost, so its next attempt is its second; "taken" is
        // assigned already.
        let first = store
            .assign_tasks(&system(), vec![req("again", &ag.id), req("taken", &ag.id)])
            .await
            .unwrap();
        assert!(first.iter().all(Result::is_ok), "{backend:?}: {first:?}");
        store
            .requeue_lost(&system(), &id("again"), 1, n + LEASE + 1)
            .await
            .unwrap();
        let before: Vec<_> = ["taken", "waits", "paused", "quar", "theirs"]
            .iter()
            .map(|x| id(x))
            .collect();
        let mut before_tasks = Vec::new();
        for x in &before {
            before_tasks.push(get(&store, &t, x).await);
        }

        let got = store
            .assign_tasks(
                &system(),
                vec![
                    req("ok", &ag.id),
                    req("taken", &ag.id),
                    req("again", &ag.id),
                    req("waits", &ag.id),
                    req("paused", &paused.id),
                    req("quar", &quarantined.id),
                    req("theirs", &theirs.id),
                ],
            )
            .await
            .unwrap();
        let a = got[0].as_ref().unwrap();
        assert_eq!(
            (
                a.epoch,
                a.attempt_no,
                a.state,
                a.lease_expires_at,
                a.assigned_at
            ),
            (1, 1, AttemptState::Assigned, n + LEASE, n),
            "{backend:?}"
        );
        assert!(matches!(got[1], Err(Error::State(_))), "{:?}", got[1]);
        let a = got[2].as_ref().unwrap();
        assert_eq!((a.epoch, a.attempt_no), (2, 2), "{backend:?}");
        assert!(matches!(got[3], Err(Error::State(_))), "{:?}", got[3]);
        assert!(
            matches!(got[4], Err(Error::State(ref m)) if m.contains("paused")),
            "{:?}",
            got[4]
        );
        assert!(
            matches!(got[5], Err(Error::State(ref m)) if m.contains("quarantined")),
            "{:?}",
            got[5]
        );
        assert!(matches!(got[6], Err(Error::NotFound(_))), "{:?}", got[6]);

        // What was assigned is in the task and its attempt; the refused are unchanged.
        for x in ["ok", "again"] {
            let task = get(&store, &t, &id(x)).await;
            assert_eq!(task.state, TaskState::Assigned, "{backend:?} {x}");
            let attempts = store.list_attempts(&t, &id(x)).await.unwrap();
            let last = attempts.last().unwrap();
            assert_eq!(
                (last.epoch, last.agent_id.as_str(), last.worker_id.as_str()),
                (task.epoch, ag.id.as_str(), "w1"),
                "{backend:?} {x}"
            );
        }
        for (x, was) in before.iter().zip(&before_tasks) {
            assert_eq!(&get(&store, &t, x).await, was, "{backend:?}");
        }
        // Each accepted element was audited like its single op (a batch's entries are grouped
        // into one that lists them); the refused ones of this tenant as failures.
        let q = AuditQuery {
            tenant_id: Some(t.clone()),
            ..Default::default()
        };
        let entries = store.audit_list(&q, &page(1000, None)).await.unwrap().items;
        let mut assigned: Vec<(String, i64)> = entries
            .iter()
            .filter(|e| e.action == "task.assign" && e.outcome == "success")
            .flat_map(|e| e.detail["tasks"].as_array().cloned().unwrap_or_default())
            .map(|x| {
                (
                    x["id"].as_str().unwrap().to_string(),
                    x["epoch"].as_i64().unwrap(),
                )
            })
            .collect();
        assigned.sort();
        let mut want = vec![
            (id("again"), 1),
            (id("taken"), 1),
            (id("ok"), 1),
            (id("again"), 2),
        ];
        want.sort();
        assert_eq!(assigned, want, "{backend:?}");
        let refused = entries
            .iter()
            .filter(|e| e.action == "task.assign" && e.outcome != "success")
            .count();
        assert!(refused >= 1, "{backend:?}: {entries:?}");
    })
    .await;
}
