//! Task submission: bulk submit, validation (nothing written on bad input), DAG planning,
//! idempotency keys, tenant isolation, listing and the ready queue.

use cflow_core::task::TaskState;
use cflow_store::{Error, NewTask, Store, Task, TaskFilter};
use serde_json::json;

use crate::{ctx, each_backend, page, tenant};

pub fn task(local: &str, deps: &[&str]) -> NewTask {
    NewTask {
        local_id: Some(local.to_string()),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        ..NewTask::new(json!({"command": ["true"]}))
    }
}

pub async fn all_tasks(store: &Store, tenant_id: &str) -> Vec<Task> {
    store
        .list_tasks(tenant_id, &TaskFilter::default(), &page(1000, None))
        .await
        .unwrap()
        .items
}

/// Every task of the tenant, page after page.
pub async fn all_tasks_paged(store: &Store, tenant_id: &str) -> Vec<Task> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let p = store
            .list_tasks(tenant_id, &TaskFilter::default(), &page(1000, cursor))
            .await
            .unwrap();
        out.extend(p.items);
        match p.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

#[tokio::test]
async fn a_bulk_submit_plans_the_dag() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "dag").await;
        let out = store
            .submit_tasks(
                &ctx(&t),
                &t,
                vec![
                    task("a", &[]),
                    task("b", &["a"]),
                    task("c", &["a", "b"]),
                    task("d", &[]),
                ],
            )
            .await
            .unwrap();
        let states: Vec<TaskState> = out.iter().map(|s| s.state).collect();
        use TaskState::*;
        assert_eq!(states, [Queued, Pending, Pending, Queued], "{backend:?}");
        assert!(
            out.iter()
                .all(|s| !s.existing && uuid::Uuid::parse_str(&s.id).is_ok())
        );
        let c = store.get_task(&t, &out[2].id).await.unwrap().unwrap();
        assert_eq!(c.depends_on, [out[0].id.clone(), out[1].id.clone()]);
        assert_eq!(c.unmet, 2);
        assert_eq!(c.timeout_ms, 3_600_000);
        assert_eq!(c.spec, json!({"command": ["true"]}));

        // A later submission may depend on existing tasks by id.
        let later = store
            .submit_tasks(&ctx(&t), &t, vec![task("e", &[&out[3].id])])
            .await
            .unwrap();
        assert_eq!(later[0].state, Pending);

        let audit = store
            .audit_list(&Default::default(), &page(1000, None))
            .await
            .unwrap()
            .items;
        let submits: Vec<_> = audit.iter().filter(|e| e.action == "task.submit").collect();
        assert_eq!(submits.len(), 2, "one audit entry per submission");
        assert_eq!(submits[0].detail["created"].as_array().unwrap().len(), 4);
    })
    .await;
}

#[tokio::test]
async fn bad_submissions_are_refused_naming_the_field_and_write_nothing() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "bad").await;
        let other = tenant(&store, "other").await;
        let foreign = store
            .submit_tasks(&ctx(&other), &other, vec![task("x", &[])])
            .await
            .unwrap();
        let cases: Vec<(Vec<NewTask>, &str)> = vec![
            (
                vec![NewTask {
                    priority: 101,
                    ..task("a", &[])
                }],
                "priority",
            ),
            (
                vec![NewTask {
                    timeout_seconds: 0,
                    ..task("a", &[])
                }],
                "timeout_seconds",
            ),
            (
                vec![NewTask {
                    timeout_seconds: 86_401,
                    ..task("a", &[])
                }],
                "timeout_seconds",
            ),
            (
                vec![NewTask {
                    max_attempts: 0,
                    ..task("a", &[])
                }],
                "max_attempts",
            ),
            (
                vec![NewTask {
                    replicas: 3,
                    quorum: 4,
                    ..task("a", &[])
                }],
                "quorum",
            ),
            (
                vec![NewTask {
                    requires: vec!["a b".into()],
                    ..task("a", &[])
                }],
                "requires",
            ),
            (vec![task("a", &["b"]), task("b", &["a"])], "depends_on"),
            (vec![task("a", &["a"])], "depends_on"),
            (vec![task("a", &[]), task("a", &[])], "depends_on"),
            (vec![task("a", &["nope"])], "depends_on"),
            (vec![task("a", &[&foreign[0].id])], "depends_on"),
            (
                vec![NewTask {
                    swarm_id: Some("nope".into()),
                    ..task("a", &[])
                }],
                "swarm_id",
            ),
            (
                vec![
                    NewTask {
                        idempotency_key: Some("k".into()),
                        ..task("a", &[])
                    },
                    NewTask {
                        idempotency_key: Some("k".into()),
                        ..task("b", &[])
                    },
                ],
                "idempotency_key",
            ),
            (vec![], "tasks"),
        ];
        for (tasks, field) in cases {
            let err = store.submit_tasks(&ctx(&t), &t, tasks).await.unwrap_err();
            assert!(
                matches!(err, Error::Invalid(ref v) if v.field == field),
                "{backend:?} {field}: {err}"
            );
        }
        // A cycle's message names it.
        let err = store
            .submit_tasks(&ctx(&t), &t, vec![task("a", &["b"]), task("b", &["a"])])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("cycle"), "{err}");
        // The good task of a bad submission is not written either.
        let err = store
            .submit_tasks(
                &ctx(&t),
                &t,
                vec![task("ok", &[]), task("bad", &["missing"])],
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(all_tasks(&store, &t).await.is_empty(), "{backend:?}");
        assert_eq!(
            store.ready_tasks(100).await.unwrap().len(),
            1,
            "only the other tenant's"
        );
    })
    .await;
}

#[tokio::test]
async fn idempotency_keys_return_the_existing_task() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "idem").await;
        let other = tenant(&store, "other").await;
        let keyed = |k: &str, local: &str, deps: &[&str]| NewTask {
            idempotency_key: Some(k.to_string()),
            ..task(local, deps)
        };
        let first = store
            .submit_tasks(&ctx(&t), &t, vec![keyed("build-1", "a", &[])])
            .await
            .unwrap();
        let again = store
            .submit_tasks(
                &ctx(&t),
                &t,
                vec![keyed("build-1", "a", &[]), keyed("test-1", "b", &["a"])],
            )
            .await
            .unwrap();
        assert_eq!(again[0].id, first[0].id, "{backend:?}");
        assert!(again[0].existing);
        assert!(!again[1].existing);
        // The dependency on the resubmitted task points at the original.
        let b = store.get_task(&t, &again[1].id).await.unwrap().unwrap();
        assert_eq!(b.depends_on, [first[0].id.clone()]);
        assert_eq!(all_tasks(&store, &t).await.len(), 2);
        // Keys are per tenant.
        let theirs = store
            .submit_tasks(&ctx(&other), &other, vec![keyed("build-1", "a", &[])])
            .await
            .unwrap();
        assert_ne!(theirs[0].id, first[0].id);
    })
    .await;
}

#[tokio::test]
async fn listing_is_tenant_scoped_filtered_and_paged() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "list").await;
        let other = tenant(&store, "other").await;
        let sw = store
            .create_swarm(&ctx(&t), &t, crate::swarms::new_swarm("s", 1))
            .await
            .unwrap();
        let mut batch: Vec<NewTask> = (0..5).map(|i| task(&format!("t{i}"), &[])).collect();
        batch[1].swarm_id = Some(sw.id.clone());
        batch[2].depends_on = vec!["t0".into()];
        let out = store.submit_tasks(&ctx(&t), &t, batch).await.unwrap();
        store
            .submit_tasks(&ctx(&other), &other, vec![task("x", &[])])
            .await
            .unwrap();

        assert_eq!(store.get_task(&other, &out[0].id).await.unwrap(), None);
        // Tasks in three states (queued, pending, cancelled): a page of every state merges
        // one range per state, in id order.
        store
            .cancel_task(&ctx(&t), &t, &out[3].id, 1)
            .await
            .unwrap();
        let states: std::collections::HashSet<TaskState> = all_tasks(&store, &t)
            .await
            .iter()
            .map(|t| t.state)
            .collect();
        assert_eq!(
            states,
            [TaskState::Pending, TaskState::Queued, TaskState::Cancelled].into(),
            "{backend:?}"
        );
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let p = store
                .list_tasks(&t, &TaskFilter::default(), &page(2, cursor))
                .await
                .unwrap();
            seen.extend(p.items.into_iter().map(|t| t.id));
            match p.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let mut want: Vec<String> = out.iter().map(|s| s.id.clone()).collect();
        want.sort();
        assert_eq!(seen, want, "{backend:?}");

        let pending = TaskFilter {
            state: Some(TaskState::Pending),
            swarm_id: None,
        };
        let p = store
            .list_tasks(&t, &pending, &page(10, None))
            .await
            .unwrap();
        assert_eq!(
            p.items.iter().map(|t| &t.id).collect::<Vec<_>>(),
            [&out[2].id]
        );
        let in_swarm = TaskFilter {
            state: None,
            swarm_id: Some(sw.id.clone()),
        };
        let p = store
            .list_tasks(&t, &in_swarm, &page(10, None))
            .await
            .unwrap();
        assert_eq!(
            p.items.iter().map(|t| &t.id).collect::<Vec<_>>(),
            [&out[1].id]
        );
        let queued_in_swarm = TaskFilter {
            state: Some(TaskState::Queued),
            swarm_id: Some(sw.id.clone()),
        };
        let p = store
            .list_tasks(&t, &queued_in_swarm, &page(10, None))
            .await
            .unwrap();
        assert_eq!(
            p.items.iter().map(|t| &t.id).collect::<Vec<_>>(),
            [&out[1].id]
        );
        let cancelled_in_swarm = TaskFilter {
            state: Some(TaskState::Cancelled),
            swarm_id: Some(sw.id.clone()),
        };
        let p = store
            .list_tasks(&t, &cancelled_in_swarm, &page(10, None))
            .await
            .unwrap();
        assert!(p.items.is_empty(), "{backend:?}: {:?}", p.items);
    })
    .await;
}

#[tokio::test]
async fn ready_tasks_come_by_priority_then_age_across_tenants() {
    each_backend(|store, backend| async move {
        let a = tenant(&store, "a").await;
        let b = tenant(&store, "b").await;
        let low = store
            .submit_tasks(
                &ctx(&a),
                &a,
                vec![NewTask {
                    priority: 10,
                    ..task("l", &[])
                }],
            )
            .await
            .unwrap();
        let high = store
            .submit_tasks(
                &ctx(&b),
                &b,
                vec![NewTask {
                    priority: 90,
                    ..task("h", &[])
                }],
            )
            .await
            .unwrap();
        let mid = store
            .submit_tasks(&ctx(&a), &a, vec![task("m", &[]), task("w", &["m"])])
            .await
            .unwrap();
        let ready: Vec<String> = store
            .ready_tasks(100)
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(
            ready,
            [high[0].id.clone(), mid[0].id.clone(), low[0].id.clone()],
            "{backend:?}"
        );
        assert_eq!(store.ready_tasks(1).await.unwrap().len(), 1);
    })
    .await;
}

/// Submissions that reach the writer together are applied as one run (`tasks::submit_many`):
/// each must still be its own all-or-nothing submission. 240 concurrent submissions mix good
/// ones, ones refused (an unknown swarm, a dependency of another tenant's task), ones that share
/// an idempotency key (the writer keeps those in separate runs: both answer the same task) and
/// ones that depend on an existing task.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submissions_stay_separate_when_applied_together() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "runs").await;
        let other = tenant(&store, "other").await;
        let foreign = store
            .submit_tasks(&ctx(&other), &other, vec![task("f", &[])])
            .await
            .unwrap();
        let sw = store
            .create_swarm(&ctx(&t), &t, crate::swarms::new_swarm("s", 1))
            .await
            .unwrap();
        let base = store
            .submit_tasks(&ctx(&t), &t, vec![task("base", &[])])
            .await
            .unwrap()[0]
            .id
            .clone();
        let mut handles = Vec::new();
        for i in 0..240usize {
            let (store, t) = (store.clone(), t.clone());
            let (sw, base, foreign) = (sw.id.clone(), base.clone(), foreign[0].id.clone());
            handles.push(tokio::spawn(async move {
                let tasks = match i % 6 {
                    // Two tasks in the swarm, the second after the first.
                    0 => vec![
                        NewTask {
                            swarm_id: Some(sw.clone()),
                            ..task("a", &[])
                        },
                        NewTask {
                            swarm_id: Some(sw),
                            ..task("b", &["a"])
                        },
                    ],
                    1 => vec![NewTask {
                        swarm_id: Some(format!("no-such-swarm-{i}")),
                        ..task("x", &[])
                    }],
                    2 => vec![task("ok", &[]), task("bad", &[&foreign])],
                    // Submissions 3 and 4 of each block of 6 share a key.
                    3 | 4 => vec![NewTask {
                        idempotency_key: Some(format!("key-{}", i / 6)),
                        ..task("k", &[])
                    }],
                    _ => vec![task("after", &[&base])],
                };
                store.submit_tasks(&ctx(&t), &t, tasks).await
            }));
        }
        let mut created = 0;
        let mut by_key: std::collections::HashMap<usize, Vec<String>> = Default::default();
        for (i, h) in handles.into_iter().enumerate() {
            let out = h.await.unwrap();
            match (i % 6, out) {
                (0, Ok(s)) => {
                    let states: Vec<TaskState> = s.iter().map(|s| s.state).collect();
                    assert_eq!(
                        states,
                        [TaskState::Queued, TaskState::Pending],
                        "{backend:?}"
                    );
                    created += 2;
                }
                (1, Err(Error::Invalid(v))) => assert_eq!(v.field, "swarm_id", "{backend:?}"),
                (2, Err(Error::Invalid(v))) => assert_eq!(v.field, "depends_on", "{backend:?}"),
                (3 | 4, Ok(s)) => {
                    created += usize::from(!s[0].existing);
                    by_key.entry(i / 6).or_default().push(s[0].id.clone());
                }
                (5, Ok(s)) => {
                    assert_eq!(s[0].state, TaskState::Pending, "{backend:?}");
                    created += 1;
                }
                (_, other) => panic!("{backend:?}: submission {i}: {other:?}"),
            }
        }
        assert_eq!(by_key.len(), 40);
        for ids in by_key.values() {
            assert_eq!(ids.len(), 2);
            assert_eq!(ids[0], ids[1], "{backend:?}: one key, one task");
        }
        // 40 × 2 in the swarm, 40 keyed, 40 after `base`; nothing of the refused 80.
        assert_eq!(created, 160, "{backend:?}");
        let all = all_tasks(&store, &t).await;
        assert_eq!(all.len(), 161, "{backend:?}: the run's tasks and `base`");
        assert!(all.iter().all(|x| x.spec == json!({"command": ["true"]})));
        let audit = store
            .audit_list(&Default::default(), &page(1000, None))
            .await
            .unwrap()
            .items;
        let ok = audit
            .iter()
            .filter(|e| e.action == "task.submit" && e.tenant_id.as_deref() == Some(t.as_str()))
            .filter(|e| e.outcome == "success")
            .count();
        // `base`, and one per accepted submission (a matched key is accepted too).
        assert_eq!(ok, 1 + 40 + 80 + 40, "{backend:?}");
        let report = store.audit_verify().await.unwrap();
        assert!(report.first_break.is_none(), "{report:?}");
    })
    .await;
}

fn offer(agent: &cflow_store::Agent) -> Option<cflow_store::DirectAssign> {
    Some(cflow_store::DirectAssign {
        task_id: uuid::Uuid::now_v7().to_string(),
        agent_id: agent.id.clone(),
        worker_id: "local".into(),
        lease_ms: crate::attempts::LEASE,
    })
}

/// A submission that offers an agent for a new, ready task assigns it in the same transaction
/// (both entries audited); a task not ready, a matched idempotency key, or an agent that cannot
/// take it (its swarm paused) leaves the task as a plain submission would; a refused
/// submission writes nothing.
#[tokio::test]
async fn a_submission_can_assign_its_ready_tasks_at_once() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "direct").await;
        let ag = crate::attempts::agent(&store, &t).await;
        let keyed = NewTask {
            idempotency_key: Some("k".into()),
            ..task("k", &[])
        };
        let first = store
            .submit_tasks(&ctx(&t), &t, vec![keyed.clone()])
            .await
            .unwrap();

        let offers = vec![offer(&ag), offer(&ag), offer(&ag), None];
        let (sub, attempts) = store
            .submit_tasks_direct(
                &ctx(&t),
                &t,
                vec![task("a", &[]), task("b", &["a"]), keyed, task("d", &[])],
                offers.clone(),
            )
            .await
            .unwrap();
        let states: Vec<TaskState> = sub.iter().map(|s| s.state).collect();
        assert_eq!(
            states,
            [
                TaskState::Assigned,
                TaskState::Pending,
                TaskState::Queued,
                TaskState::Queued
            ],
            "{backend:?}"
        );
        assert_eq!(
            sub[0].id,
            offers[0].as_ref().unwrap().task_id,
            "{backend:?}"
        );
        assert_eq!(sub[2].id, first[0].id, "{backend:?}: the key's task");
        assert!(sub[2].existing);
        let a = attempts[0].as_ref().expect("the ready task's attempt");
        assert!(attempts[1..].iter().all(Option::is_none), "{backend:?}");
        assert_eq!((a.epoch, a.attempt_no), (1, 1), "{backend:?}");
        assert_eq!(a.agent_id, ag.id);
        let stored = crate::attempts::get(&store, &t, &sub[0].id).await;
        assert_eq!(stored.state, TaskState::Assigned, "{backend:?}");
        let listed = store.list_attempts(&t, &sub[0].id).await.unwrap();
        assert_eq!(listed, vec![a.clone()], "{backend:?}");
        // The attempt runs and ends like any other.
        store
            .start_attempt(&ctx(&t), &sub[0].id, a.epoch, crate::now())
            .await
            .unwrap();
        assert_eq!(
            crate::attempts::get(&store, &t, &sub[1].id).await.state,
            TaskState::Pending
        );

        // The swarm paused meanwhile: the task is submitted and stays queued.
        store
            .set_swarm_state(&ctx(&t), &t, &ag.swarm_id, cflow_store::SwarmState::Paused)
            .await
            .unwrap();
        let (sub, attempts) = store
            .submit_tasks_direct(&ctx(&t), &t, vec![task("p", &[])], vec![offer(&ag)])
            .await
            .unwrap();
        assert_eq!(sub[0].state, TaskState::Queued, "{backend:?}");
        assert_eq!(attempts, vec![None]);
        assert!(
            store
                .list_attempts(&t, &sub[0].id)
                .await
                .unwrap()
                .is_empty()
        );

        // A refused submission assigns nothing and creates nothing.
        let before = all_tasks(&store, &t).await.len();
        let err = store
            .submit_tasks_direct(
                &ctx(&t),
                &t,
                vec![NewTask {
                    swarm_id: Some("no-such-swarm".into()),
                    ..task("x", &[])
                }],
                vec![offer(&ag)],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Invalid(ref v) if v.field == "swarm_id"),
            "{err:?}"
        );
        assert_eq!(all_tasks(&store, &t).await.len(), before, "{backend:?}");
        // Offers must be one per task, with fresh ids.
        let err = store
            .submit_tasks_direct(&ctx(&t), &t, vec![task("y", &[])], vec![None, None])
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Invalid(ref v) if v.field == "direct"),
            "{err:?}"
        );
        let mut dup = offer(&ag);
        dup.as_mut().unwrap().task_id = "not-a-uuid".into();
        let err = store
            .submit_tasks_direct(&ctx(&t), &t, vec![task("z", &[])], vec![dup])
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Invalid(ref v) if v.field == "direct.task_id"),
            "{err:?}"
        );
        // An agent vouches for its swarm only within its own tenant: another tenant's agent,
        // offered for a task naming that tenant's swarm, does not make the swarm this tenant's.
        let other = tenant(&store, "direct-other").await;
        let theirs = crate::attempts::agent(&store, &other).await;
        let err = store
            .submit_tasks_direct(
                &ctx(&t),
                &t,
                vec![NewTask {
                    swarm_id: Some(theirs.swarm_id.clone()),
                    ..task("w", &[])
                }],
                vec![offer(&theirs)],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Invalid(ref v) if v.field == "swarm_id"),
            "{backend:?}: {err:?}"
        );
        assert_eq!(all_tasks(&store, &t).await.len(), before, "{backend:?}");

        let audit = store
            .audit_list(&Default::default(), &page(1000, None))
            .await
            .unwrap()
            .items;
        let of = |action: &str, resource: &str| {
            audit
                .iter()
                .filter(|e| e.action == action && e.resource == resource)
                .map(|e| e.outcome.clone())
                .collect::<Vec<_>>()
        };
        let first_task = format!("task/{}", listed[0].task_id);
        assert_eq!(of("task.assign", &first_task), ["success"], "{backend:?}");
        let paused_task = format!("task/{}", sub[0].id);
        assert_eq!(of("task.assign", &paused_task), ["conflict"], "{backend:?}");
        let report = store.audit_verify().await.unwrap();
        assert!(report.first_break.is_none(), "{report:?}");
    })
    .await;
}
