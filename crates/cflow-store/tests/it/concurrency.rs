//! Many writers at once: compare-and-set without lost updates, and batches whose failing ops do
//! not affect the others.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cflow_store::{Error, MemoryPut, NewTask, Precondition, Store};
use serde_json::json;

use crate::{ctx, each_backend, now, page, put, system, tenant};

/// One increment by compare-and-set: read, write `value + 1` if the version is unchanged,
/// retry when someone else won. Returns how many attempts failed.
async fn increment(store: &Store, t: &str) -> u64 {
    let mut failures = 0;
    loop {
        let cur = store
            .memory_get(t, "counters", "hits", now())
            .await
            .unwrap()
            .unwrap();
        let n = cur.value.as_i64().unwrap();
        let next = MemoryPut {
            precondition: Precondition::Version(cur.version),
            ..put("counters", "hits", json!(n + 1))
        };
        match store.memory_put(&ctx(t), t, next).await {
            Ok(_) => return failures,
            Err(Error::PreconditionFailed { .. }) => failures += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
}

/// Every ledger entry of the tenant, page after page.
async fn tenant_ledger(store: &Store, t: &str) -> Vec<cflow_core::audit::AuditEntry> {
    let q = cflow_store::AuditQuery {
        tenant_id: Some(t.to_string()),
        since: None,
    };
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let p = store.audit_list(&q, &page(1000, cursor)).await.unwrap();
        out.extend(p.items);
        match p.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_cas_increments_lose_nothing() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "cas").await;
        store
            .memory_put(&ctx(&t), &t, put("counters", "hits", json!(0)))
            .await
            .unwrap();
        let failures = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (store, t, failures) = (store.clone(), t.clone(), failures.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..4 {
                    failures.fetch_add(increment(&store, &t).await, Ordering::Relaxed);
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let end = store
            .memory_get(&t, "counters", "hits", now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(end.value, json!(200), "{backend:?}");
        assert_eq!(end.version, 201);

        // Every attempt, won or lost, is in the ledger.
        let mut writes = 0u64;
        let mut refused = 0u64;
        for e in tenant_ledger(&store, &t).await {
            if e.action == "memory.write" {
                match e.outcome.as_str() {
                    "success" => writes += 1,
                    "precondition_failed" => refused += 1,
                    other => panic!("{other}"),
                }
            }
        }
        assert_eq!(writes, 201);
        assert_eq!(refused, failures.load(Ordering::Relaxed), "{backend:?}");
        assert!(store.audit_verify().await.unwrap().first_break.is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_ops_in_a_batch_do_not_affect_the_others() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "batch").await;
        let mut tasks = Vec::new();
        for i in 0..300 {
            let (store, t) = (store.clone(), t.clone());
            tasks.push(tokio::spawn(async move {
                let key = format!("k{i:03}");
                match i % 3 {
                    // A stale If-Match on an absent key: a domain failure.
                    0 => {
                        store
                            .memory_put(
                                &ctx(&t),
                                &t,
                                MemoryPut {
                                    precondition: Precondition::Version(7),
                                    ..put("b", &key, json!(i))
                                },
                            )
                            .await
                    }
                    // A write into a tenant that does not exist: the database refuses the
                    // statement, which rolls the batch back and re-runs its ops one by one.
                    1 if i % 30 == 1 => {
                        store
                            .memory_put(&ctx(&t), "ghost-tenant", put("b", &key, json!(i)))
                            .await
                    }
                    _ => {
                        store
                            .memory_put(&ctx(&t), &t, put("b", &key, json!(i)))
                            .await
                    }
                }
            }));
        }
        let mut ok = 0;
        for (i, task) in tasks.into_iter().enumerate() {
            let result = task.await.unwrap();
            match (i % 3, i % 30 == 1, result) {
                (0, _, Err(Error::PreconditionFailed { current: None })) => {}
                (1, true, Err(Error::NotFound(_))) => {}
                (_, _, Ok(e)) if i % 3 != 0 && i % 30 != 1 => {
                    assert_eq!(e.version, 1);
                    ok += 1;
                }
                (_, _, other) => panic!("{backend:?}: op {i}: {other:?}"),
            }
        }
        let listed = store
            .memory_list(&t, "b", "", now(), &page(1000, None))
            .await
            .unwrap()
            .items;
        assert_eq!(listed.len(), ok, "{backend:?}");
        assert!(listed.iter().all(|e| {
            let i: usize = e.key[1..].parse().unwrap();
            !i.is_multiple_of(3) && i % 30 != 1
        }));
        let report = store.audit_verify().await.unwrap();
        assert!(report.first_break.is_none(), "{report:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_plain_writes_to_the_same_entries_keep_versions_exact() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "same").await;
        let mut tasks = Vec::new();
        for i in 0..200 {
            let (store, t) = (store.clone(), t.clone());
            tasks.push(tokio::spawn(async move {
                let key = format!("k{}", i % 10);
                let e = store
                    .memory_put(&ctx(&t), &t, put("s", &key, json!(i)))
                    .await
                    .unwrap();
                (key, e.version, i)
            }));
        }
        let mut by_key: std::collections::BTreeMap<String, Vec<(i64, i32)>> = Default::default();
        for task in tasks {
            let (key, version, i) = task.await.unwrap();
            by_key.entry(key).or_default().push((version, i));
        }
        assert_eq!(by_key.len(), 10);
        for (key, mut writes) in by_key {
            writes.sort();
            let versions: Vec<i64> = writes.iter().map(|w| w.0).collect();
            assert_eq!(versions, (1..=20).collect::<Vec<_>>(), "{backend:?}: {key}");
            // The entry holds the value of the write that got the highest version.
            let live = store
                .memory_get(&t, "s", &key, now())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(live.version, 20);
            assert_eq!(
                live.value,
                json!(writes.last().unwrap().1),
                "{backend:?}: {key}"
            );
        }
        let hits = store
            .memory_search(&t, &["k3".into()], None, now(), 10)
            .await
            .unwrap();
        assert_eq!(
            hits.len(),
            1,
            "{backend:?}: the index holds one document per entry"
        );
    })
    .await;
}

/// PostgreSQL: the writer commits without waiting for the flush and a connection of the syncer's
/// own confirms durability (see `durable`). Losing that connection must not acknowledge a write
/// it cannot vouch for, nor stop the store: a write answered in between is either `Ok` or says
/// that it may or may not have committed, and writes succeed again once it has reconnected.
#[tokio::test]
async fn postgres_writes_go_on_when_the_durability_connection_is_lost() {
    use sqlx::Connection;
    let Some((store, url)) = cflow_test_support::db::postgres_store().await else {
        return;
    };
    let t = tenant(&store, "sync").await;
    store
        .memory_put(&ctx(&t), &t, put("n", "k0", json!(0)))
        .await
        .unwrap();
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND datname = current_database()) AS t",
    )
    .bind(cflow_store::PG_SYNC_APPLICATION)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(killed, 1, "the store's durability connection was not found");
    let mut acknowledged = Vec::new();
    for i in 1..=6 {
        let key = format!("k{i}");
        match store
            .memory_put(&ctx(&t), &t, put("n", &key, json!(i)))
            .await
        {
            Ok(_) => acknowledged.push(key),
            Err(e) => assert!(e.to_string().contains("may or may not"), "{e}"),
        }
    }
    // At most the writes committed before the reconnect fail; the later ones succeed.
    assert!(
        acknowledged.len() >= 4 && acknowledged.last().is_some_and(|k| k == "k6"),
        "{acknowledged:?}"
    );
    for key in &acknowledged {
        assert!(
            store
                .memory_get(&t, "n", key, now())
                .await
                .unwrap()
                .is_some()
        );
    }
    let back: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
         AND datname = current_database()",
    )
    .bind(cflow_store::PG_SYNC_APPLICATION)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(back, 1, "the durability connection did not come back");
    store.close().await;
}

/// Submissions from many callers at once, of every kind, while other writes go on: on
/// PostgreSQL plain submissions take the submissions' writer (its batches run alongside the main
/// writer's and append to the ledger between two of them) and the rest the main writer. Nothing
/// is lost, an idempotency key still names one task, and the ledger's chain stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submissions_of_every_kind_at_once_keep_the_ledger_whole() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "subs").await;
        let mut calls = Vec::new();
        // Plain submissions: 8 callers x 10 requests x 20 tasks.
        for c in 0..8 {
            let (store, t) = (store.clone(), t.clone());
            calls.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for r in 0..10 {
                    let tasks = (0..20)
                        .map(|i| crate::tasks::task(&format!("p{c}-{r}-{i}"), &[]))
                        .collect();
                    let out = store.submit_tasks(&ctx(&t), &t, tasks).await.unwrap();
                    ids.extend(out.into_iter().map(|s| (None, s.id, s.existing)));
                }
                ids
            }));
        }
        // Four callers submit the same ten idempotency keys; two submit small DAGs.
        for _ in 0..4 {
            let (store, t) = (store.clone(), t.clone());
            calls.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for k in 0..10 {
                    let task = cflow_store::NewTask {
                        idempotency_key: Some(format!("key-{k}")),
                        ..crate::tasks::task("k", &[])
                    };
                    let out = store.submit_tasks(&ctx(&t), &t, vec![task]).await.unwrap();
                    ids.push((Some(k), out[0].id.clone(), out[0].existing));
                }
                ids
            }));
        }
        for c in 0..2 {
            let (store, t) = (store.clone(), t.clone());
            calls.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for r in 0..10 {
                    let a = format!("a{c}-{r}");
                    let tasks = vec![
                        crate::tasks::task(&a, &[]),
                        crate::tasks::task(&format!("b{c}-{r}"), &[&a]),
                    ];
                    let out = store.submit_tasks(&ctx(&t), &t, tasks).await.unwrap();
                    ids.extend(out.into_iter().map(|s| (None, s.id, s.existing)));
                }
                ids
            }));
        }
        // Other writes meanwhile (the main writer's).
        {
            let (store, t) = (store.clone(), t.clone());
            calls.push(tokio::spawn(async move {
                for i in 0..40 {
                    store
                        .memory_put(&ctx(&t), &t, put("ns", &format!("k{i}"), json!(i)))
                        .await
                        .unwrap();
                }
                Vec::new()
            }));
        }
        let mut keyed: std::collections::HashMap<usize, std::collections::HashSet<String>> =
            Default::default();
        let mut created = std::collections::HashSet::new();
        for call in calls {
            for (key, id, existing) in call.await.unwrap() {
                match key {
                    Some(k) => {
                        keyed.entry(k).or_default().insert(id.clone());
                        if !existing {
                            created.insert(id);
                        }
                    }
                    None => {
                        assert!(!existing, "{backend:?}");
                        created.insert(id);
                    }
                }
            }
        }
        // 1,600 plain, 40 in DAGs, one task per key.
        assert_eq!(keyed.len(), 10);
        assert!(
            keyed.values().all(|ids| ids.len() == 1),
            "{backend:?}: {keyed:?}"
        );
        assert_eq!(created.len(), 1_600 + 40 + 10, "{backend:?}");
        let all = crate::tasks::all_tasks_paged(&store, &t).await;
        assert_eq!(all.len(), created.len(), "{backend:?}");
        assert!(all.iter().all(|task| created.contains(&task.id)));

        // Every submission request is in the ledger, and the chain is whole.
        let submits = tenant_ledger(&store, &t)
            .await
            .iter()
            .filter(|e| e.action == "task.submit" && e.outcome == "success")
            .count();
        assert_eq!(submits, 80 + 40 + 20, "{backend:?}");
        let report = store.audit_verify().await.unwrap();
        assert!(report.first_break.is_none(), "{backend:?}: {report:?}");
    })
    .await;
}

/// Attempt reports from many callers at once, alongside the main writer's ops: on PostgreSQL the
/// completions take the attempt writers, whose batches run alongside each other, while
/// heartbeats, cancellations and memory writes take the main writer. Each dependent whose two
/// dependencies end in different batches is settled exactly once (queued, or cancelled when one
/// failed), a quorum whose replicas end in different batches is decided once, a task cancelled
/// while its completion is in flight ends one way with one attempt, nothing waits on another
/// writer's lock for good (PostgreSQL's deadlock detection is put off for an hour here, so a
/// deadlock between writers would hold the writes past the deadline), and the ledger's chain is
/// whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attempt_reports_alongside_other_writes_settle_everything_once() {
    use cflow_core::task::TaskState;
    use cflow_store::{AssignRequest, CompleteRequest, OutcomeKind, StartRequest, StoreOptions};

    async fn body(store: Store, backend: cflow_store::Backend, url: &str) {
        let t = tenant(&store, "reports").await;
        let mut agents = Vec::new();
        for _ in 0..8 {
            agents.push(crate::attempts::agent(&store, &t).await.id);
        }
        // 40 pairs of dependencies with a dependent each (the first of every odd pair fails
        // for good), 24 tasks to cancel while they complete, a quorum of 4 replicas.
        let mut pairs = Vec::new();
        for i in 0..40 {
            let a = NewTask {
                max_attempts: 1,
                ..crate::tasks::task("a", &[])
            };
            let tasks = vec![
                a,
                crate::tasks::task("b", &[]),
                crate::tasks::task("d", &["a", "b"]),
            ];
            let out = store.submit_tasks(&ctx(&t), &t, tasks).await.unwrap();
            pairs.push((i, out[0].id.clone(), out[1].id.clone(), out[2].id.clone()));
        }
        let racing: Vec<String> = store
            .submit_tasks(
                &ctx(&t),
                &t,
                (0..24)
                    .map(|i| crate::tasks::task(&format!("x{i}"), &[]))
                    .collect(),
            )
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        // Quorums of three replicas that must all agree: each replica's completion counts the
        // votes of the other two.
        let quorums: Vec<NewTask> = (0..12)
            .map(|i| NewTask {
                replicas: 3,
                quorum: 3,
                ..crate::tasks::task(&format!("q{i}"), &[])
            })
            .collect();
        let parents: Vec<String> = store
            .submit_tasks(&ctx(&t), &t, quorums)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        // By replica index: the first replicas of every parent, then the second ones, ...
        let mut by_index: Vec<Vec<String>> = vec![Vec::new(); 3];
        for p in &parents {
            for (i, r) in store
                .replicas_of(&t, p)
                .await
                .unwrap()
                .into_iter()
                .enumerate()
            {
                by_index[i].push(r.id);
            }
        }
        let replicas: Vec<String> = by_index.iter().flatten().cloned().collect();

        // Everything assigned and running.
        let all: Vec<String> = pairs
            .iter()
            .flat_map(|(_, a, b, _)| [a.clone(), b.clone()])
            .chain(racing.iter().cloned())
            .chain(replicas.iter().cloned())
            .collect();
        let assigns = all
            .iter()
            .enumerate()
            .map(|(i, id)| AssignRequest {
                task_id: id.clone(),
                agent_id: agents[i % agents.len()].clone(),
                worker_id: "w".into(),
                lease_ms: crate::attempts::LEASE,
                now: now(),
            })
            .collect();
        let mut epochs = std::collections::HashMap::new();
        for a in store.assign_tasks(&system(), assigns).await.unwrap() {
            let a = a.unwrap();
            epochs.insert(a.task_id.clone(), a.epoch);
        }
        let starts = all
            .iter()
            .map(|id| StartRequest {
                task_id: id.clone(),
                epoch: epochs[id],
                now: now(),
            })
            .collect();
        for s in store.start_attempts(&system(), starts).await.unwrap() {
            s.unwrap();
        }
        let report = |id: &String, kind: OutcomeKind| CompleteRequest {
            task_id: id.clone(),
            epoch: epochs[id],
            outcome: crate::attempts::outcome(kind),
            now: now(),
            started_at: None,
            next: None,
        };

        let mut calls = Vec::new();
        // The first and the second of each pair from different callers, in opposite orders,
        // in batches of 4; the replicas one per batch from two callers.
        let firsts: Vec<CompleteRequest> = pairs
            .iter()
            .map(|(i, a, _, _)| {
                let kind = if i % 2 == 1 {
                    OutcomeKind::Failed { retryable: true }
                } else {
                    OutcomeKind::Succeeded
                };
                report(a, kind)
            })
            .collect();
        let seconds: Vec<CompleteRequest> = pairs
            .iter()
            .rev()
            .map(|(_, _, b, _)| report(b, OutcomeKind::Succeeded))
            .collect();
        let racing_reports: Vec<CompleteRequest> = racing
            .iter()
            .map(|id| report(id, OutcomeKind::Succeeded))
            .collect();
        let mut sets = vec![(firsts, 4), (seconds, 4), (racing_reports, 3)];
        for ids in &by_index {
            let reqs = ids
                .iter()
                .map(|id| report(id, OutcomeKind::Succeeded))
                .collect();
            sets.push((reqs, 2));
        }
        for (reqs, per) in sets {
            let store = store.clone();
            calls.push(tokio::spawn(async move {
                let mut settled = Vec::new();
                for chunk in reqs.chunks(per) {
                    let out = store
                        .complete_attempts(&system(), chunk.to_vec())
                        .await
                        .unwrap();
                    for (req, r) in chunk.iter().zip(out) {
                        settled.push((req.task_id.clone(), r));
                    }
                }
                settled
            }));
        }
        let mut others = Vec::new();
        // The main writer's ops meanwhile: heartbeats of every attempt, cancellations of the
        // racing tasks, memory writes.
        {
            let store = store.clone();
            let held: Vec<(String, i64)> = all.iter().map(|id| (id.clone(), epochs[id])).collect();
            others.push(tokio::spawn(async move {
                for _ in 0..30 {
                    store
                        .extend_leases("w", &held, now() + crate::attempts::LEASE)
                        .await
                        .unwrap();
                }
                Vec::new()
            }));
        }
        {
            let (store, t, racing) = (store.clone(), t.clone(), racing.clone());
            others.push(tokio::spawn(async move {
                let mut cancelled = Vec::new();
                for id in racing.iter().rev() {
                    if store.cancel_task(&ctx(&t), &t, id, now()).await.is_ok() {
                        cancelled.push(id.clone());
                    }
                }
                cancelled
            }));
        }
        {
            let (store, t) = (store.clone(), t.clone());
            others.push(tokio::spawn(async move {
                for i in 0..30 {
                    store
                        .memory_put(&ctx(&t), &t, put("ns", &format!("k{i}"), json!(i)))
                        .await
                        .unwrap();
                }
                Vec::new()
            }));
        }
        let deadline = std::time::Duration::from_secs(60);
        let settled = tokio::time::timeout(deadline, async {
            let mut settled = Vec::new();
            for call in calls {
                settled.extend(call.await.unwrap());
            }
            let mut cancelled = Vec::new();
            for call in others {
                cancelled.extend(call.await.unwrap());
            }
            (settled, cancelled)
        })
        .await;
        let Ok((settled, cancelled)) = settled else {
            panic!(
                "{backend:?}: the writes did not finish within {deadline:?}: writers waiting on each other's locks?"
            );
        };

        // Each dependent settled by exactly one of its dependencies' completions.
        let mut queued = std::collections::HashMap::<String, usize>::new();
        let mut dependents_cancelled = std::collections::HashMap::<String, usize>::new();
        let mut decided = 0;
        for (id, r) in &settled {
            match r {
                Ok(s) => {
                    for q in &s.queued {
                        *queued.entry(q.clone()).or_default() += 1;
                    }
                    for c in &s.cancelled {
                        *dependents_cancelled.entry(c.clone()).or_default() += 1;
                    }
                    decided += usize::from(s.parent.is_some());
                }
                // A racing task cancelled before its completion arrived.
                Err(e) => assert!(
                    racing.contains(id) && crate::attempts::stale(e),
                    "{backend:?}: {id}: {e}"
                ),
            }
        }
        for (i, _, _, d) in &pairs {
            let task = crate::attempts::get(&store, &t, d).await;
            if i % 2 == 1 {
                assert_eq!(task.state, TaskState::Cancelled, "{backend:?}");
                assert_eq!(dependents_cancelled.get(d), Some(&1), "{backend:?}: {d}");
                assert_eq!(queued.get(d), None, "{backend:?}: {d}");
            } else {
                assert_eq!(task.state, TaskState::Queued, "{backend:?}");
                assert_eq!(queued.get(d), Some(&1), "{backend:?}: {d}");
            }
        }
        assert_eq!(
            decided,
            parents.len(),
            "{backend:?}: each quorum decided once"
        );
        for p in &parents {
            let p = crate::attempts::get(&store, &t, p).await;
            assert_eq!(p.state, TaskState::Succeeded, "{backend:?}");
        }
        // A racing task ended one way: cancelled (by the cancel that won) or succeeded.
        for id in &racing {
            let task = crate::attempts::get(&store, &t, id).await;
            let expected = if cancelled.contains(id) {
                TaskState::Cancelled
            } else {
                TaskState::Succeeded
            };
            assert_eq!(task.state, expected, "{backend:?}: {id}");
            let attempts = store.list_attempts(&t, id).await.unwrap();
            assert_eq!(attempts.len(), 1, "{backend:?}: {attempts:?}");
            assert_eq!(
                attempts[0].state.as_str(),
                if expected == TaskState::Cancelled {
                    "cancelled"
                } else {
                    "succeeded"
                },
                "{backend:?}: {id}"
            );
        }
        let report = store.audit_verify().await.unwrap();
        assert!(report.first_break.is_none(), "{backend:?}: {report:?}");
        store.close().await;
        assert_eq!(
            dangling_references(url).await,
            (0, 0, 0),
            "{backend:?}: tasks without their tenant or swarm, attempts without their task"
        );
    }

    let (store, dir) = cflow_test_support::db::temp_sqlite().await;
    let url = cflow_store::sqlite_url(&dir.path().join("cflow.db"));
    body(store, cflow_store::Backend::Sqlite, &url).await;
    let Some(url) = cflow_test_support::db::fresh_postgres_url().await else {
        return;
    };
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let (name,): (String,) = sqlx::query_as("SELECT current_database()::text")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE \"{name}\" SET deadlock_timeout = '1h'"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    // The attempt writers take batches in turn, so that they run alongside each other.
    let opts = StoreOptions {
        attempt_spill_after: 0,
        ..StoreOptions::default()
    };
    let store = Store::open(&url, opts).await.unwrap();
    body(store, cflow_store::Backend::Postgres, &url).await;
}

/// Tasks whose tenant is missing, tasks whose swarm is missing or another tenant's, and
/// attempts whose task is missing or another tenant's, counted in the database at `url`. No
/// foreign key checks these on PostgreSQL (migration 0017): the statements that make the rows
/// do, and this keeps them honest (SQLite keeps its keys, so there a zero is also the keys').
async fn dangling_references(url: &str) -> (i64, i64, i64) {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    let (tasks,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM tasks")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(tasks > 0, "the workload wrote tasks to {url}");
    let row: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM tasks t WHERE NOT EXISTS \
         (SELECT 1 FROM tenants n WHERE n.id = t.tenant_id)), \
         (SELECT COUNT(*) FROM tasks t WHERE t.swarm_id IS NOT NULL AND NOT EXISTS \
         (SELECT 1 FROM swarms s WHERE s.id = t.swarm_id AND s.tenant_id = t.tenant_id)), \
         (SELECT COUNT(*) FROM attempts a WHERE NOT EXISTS \
         (SELECT 1 FROM tasks t WHERE t.id = a.task_id AND t.tenant_id = a.tenant_id))",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    row
}
