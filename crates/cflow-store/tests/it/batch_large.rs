//! Batches far larger than any per-statement parameter limit: a whole batch travels as one
//! parameter, so a 10,000-task submission and 2,000 assignments in one call must work on both
//! backends, with every value round-tripping exactly and every op audited.

use std::collections::{BTreeMap, HashSet};

use cflow_core::task::TaskState;
use cflow_store::{
    AssignRequest, AttemptState, AuditQuery, CompleteRequest, Error, NewTask, Outcome, OutcomeKind,
    StartRequest, Store, StoreOptions, TaskFilter,
};
use serde_json::json;
use sqlx::Connection;

use crate::attempts::{LEASE, agent};
use crate::{ctx, each_backend, now, page, system, tenant};

/// Tasks `0..ASSIGNED` are assigned, started and completed in one call each.
const ASSIGNED: usize = 2_000;
/// Task `MAX_SUBMIT - DEPENDENTS + i` waits on task `i`.
const DEPENDENTS: usize = 1_000;

fn spec(i: usize) -> serde_json::Value {
    json!({"command": ["echo", "quote \" backslash \\ newline \n tab \t é 🚀 \u{1}"], "n": i})
}

fn new_task(i: usize) -> NewTask {
    let n = cflow_store::MAX_SUBMIT;
    let mut t = NewTask::new(spec(i));
    t.local_id = Some(format!("t{i}"));
    t.priority = (i % 5) as i64;
    t.labels = BTreeMap::from([("zone".to_string(), format!("z{}", i % 3))]);
    if i.is_multiple_of(10) {
        t.idempotency_key = Some(format!("key-{i}"));
    }
    if i >= n - DEPENDENTS {
        t.depends_on = vec![format!("t{}", i - (n - DEPENDENTS))];
    }
    t
}

async fn count_in(store: &Store, t: &str, state: TaskState) -> usize {
    let filter = TaskFilter {
        state: Some(state),
        ..Default::default()
    };
    let mut n = 0;
    let mut cursor = None;
    loop {
        let p = store
            .list_tasks(t, &filter, &page(1000, cursor))
            .await
            .unwrap();
        n += p.items.len();
        match p.next_cursor {
            Some(c) => cursor = Some(c),
            None => return n,
        }
    }
}

/// Rows too large for one parameter's text (specs of nearly a MiB) are split over several
/// statements, all in the one transaction.
#[tokio::test]
async fn large_rows_are_split_over_statements() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "bigrows").await;
        let blob = |i: usize| json!({"blob": format!("{i}é\"{}", "x".repeat(900_000))});
        let tasks: Vec<NewTask> = (0..12).map(|i| NewTask::new(blob(i))).collect();
        let out = store.submit_tasks(&ctx(&t), &t, tasks).await.unwrap();
        assert_eq!(out.len(), 12, "{backend:?}");
        for (i, s) in out.iter().enumerate() {
            let got = store.get_task(&t, &s.id).await.unwrap().unwrap();
            assert_eq!(got.spec, blob(i), "{backend:?}: task {i}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_batches_take_the_one_parameter_path() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "huge").await;
        let agents = [agent(&store, &t).await, agent(&store, &t).await];
        let n = cflow_store::MAX_SUBMIT;

        // One submission of the most tasks allowed, with edges, keys, labels and odd text.
        let tasks: Vec<NewTask> = (0..n).map(new_task).collect();
        let out = store.submit_tasks(&ctx(&t), &t, tasks).await.unwrap();
        assert_eq!(out.len(), n, "{backend:?}");
        assert!(out.iter().all(|s| !s.existing));
        let ids: Vec<String> = out.iter().map(|s| s.id.clone()).collect();
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), n);
        for i in [0, 1, 4_999, n - DEPENDENTS - 1] {
            let got = store.get_task(&t, &ids[i]).await.unwrap().unwrap();
            assert_eq!(got.spec, spec(i), "{backend:?}: task {i}");
            assert_eq!(got.priority, (i % 5) as i64);
            assert_eq!(got.labels["zone"], format!("z{}", i % 3));
            assert_eq!(got.state, TaskState::Queued);
            assert_eq!((got.epoch, got.attempts, got.unmet), (0, 0, 0));
        }
        let dependent = store.get_task(&t, &ids[n - 1]).await.unwrap().unwrap();
        assert_eq!(dependent.state, TaskState::Pending);
        assert_eq!(dependent.unmet, 1);
        assert_eq!(dependent.depends_on, vec![ids[DEPENDENTS - 1].clone()]);
        assert_eq!(count_in(&store, &t, TaskState::Pending).await, DEPENDENTS);

        // Resubmitting the keyed tasks resolves all thousand keys in one lookup.
        let again: Vec<NewTask> = (0..n).step_by(10).map(new_task).collect();
        let again_len = again.len();
        let out = store.submit_tasks(&ctx(&t), &t, again).await.unwrap();
        assert_eq!(out.len(), again_len);
        for (k, s) in out.iter().enumerate() {
            assert!(s.existing, "{backend:?}");
            assert_eq!(s.id, ids[k * 10]);
        }

        // 2,000 assignments in one call, plus elements that must fail alone.
        let at = now();
        let mut reqs: Vec<AssignRequest> = ids[..ASSIGNED]
            .iter()
            .enumerate()
            .map(|(i, id)| AssignRequest {
                task_id: id.clone(),
                agent_id: agents[i % 2].id.clone(),
                worker_id: format!("w{}", i % 3),
                lease_ms: LEASE,
                now: at,
            })
            .collect();
        reqs.push(AssignRequest {
            task_id: "nope".into(),
            ..reqs[0].clone()
        });
        reqs.push(AssignRequest {
            task_id: ids[n - 1].clone(),
            ..reqs[0].clone()
        });
        let got = store.assign_tasks(&system(), reqs).await.unwrap();
        assert_eq!(got.len(), ASSIGNED + 2);
        for (i, a) in got[..ASSIGNED].iter().enumerate() {
            let a = a.as_ref().unwrap();
            assert_eq!((&a.task_id, a.epoch, a.attempt_no), (&ids[i], 1, 1));
            assert_eq!(a.lease_expires_at, at + LEASE);
        }
        assert!(matches!(got[ASSIGNED], Err(Error::NotFound(_))));
        assert!(matches!(got[ASSIGNED + 1], Err(Error::State(_))));
        assert_eq!(count_in(&store, &t, TaskState::Assigned).await, ASSIGNED);

        // One heartbeat holding all of them (and one it does not own).
        let mut held: Vec<(String, i64)> = ids[..ASSIGNED]
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 == 0)
            .map(|(_, id)| (id.clone(), 1))
            .collect();
        held.push((ids[1].clone(), 1));
        let stale = store
            .extend_leases("w0", &held, at + 2 * LEASE)
            .await
            .unwrap();
        assert_eq!(stale, vec![(ids[1].clone(), 1)], "{backend:?}");

        let starts = ids[..ASSIGNED]
            .iter()
            .map(|id| StartRequest {
                task_id: id.clone(),
                epoch: 1,
                now: at + 1,
            })
            .collect();
        let got = store.start_attempts(&system(), starts).await.unwrap();
        for s in &got {
            assert_eq!(s.as_ref().unwrap().state, AttemptState::Running);
        }
        assert_eq!(count_in(&store, &t, TaskState::Running).await, ASSIGNED);

        // Half of the tasks with dependents succeed (queueing them), half fail (cancelling
        // them); the rest succeed.
        let outcome = |i: usize| {
            let fail = (DEPENDENTS / 2..DEPENDENTS).contains(&i);
            Outcome {
                kind: if fail {
                    OutcomeKind::Failed { retryable: false }
                } else {
                    OutcomeKind::Succeeded
                },
                exit_code: Some(i as i64),
                stdout_tail: format!("out \"{i}\"\n"),
                stderr_tail: String::new(),
                result: Some(json!({"i": i, "s": "é\"\\"})),
                detail: Some(json!({"end": format!("exit {i}")})),
            }
        };
        let done = ids[..ASSIGNED]
            .iter()
            .enumerate()
            .map(|(i, id)| CompleteRequest {
                task_id: id.clone(),
                epoch: 1,
                outcome: outcome(i),
                now: at + 3,
                started_at: None,
                next: None,
            })
            .collect();
        let got = store.complete_attempts(&system(), done).await.unwrap();
        for (i, s) in got.iter().enumerate() {
            let s = s.as_ref().unwrap();
            let dep = n - DEPENDENTS + i;
            if i < DEPENDENTS / 2 {
                assert_eq!(s.state, TaskState::Succeeded, "{backend:?}");
                assert_eq!(s.queued, vec![ids[dep].clone()]);
            } else if i < DEPENDENTS {
                assert_eq!(s.state, TaskState::Failed);
                assert_eq!(s.cancelled, vec![ids[dep].clone()]);
            } else {
                assert_eq!((s.state, s.queued.len()), (TaskState::Succeeded, 0));
            }
        }
        assert_eq!(count_in(&store, &t, TaskState::Succeeded).await, 1_500);
        assert_eq!(count_in(&store, &t, TaskState::Failed).await, 500);
        assert_eq!(count_in(&store, &t, TaskState::Cancelled).await, 500);
        assert_eq!(count_in(&store, &t, TaskState::Pending).await, 0);
        let failed = store.get_task(&t, &ids[700]).await.unwrap().unwrap();
        assert_eq!(failed.reason.as_deref(), Some("attempt 1 failed"));
        let attempt = &store.list_attempts(&t, &ids[1_234]).await.unwrap()[0];
        assert_eq!(attempt.state, AttemptState::Succeeded);
        assert_eq!(attempt.ended_at, Some(at + 3));
        assert_eq!(attempt.exit_code, Some(1_234));
        assert_eq!(attempt.stdout_tail.as_deref(), Some("out \"1234\"\n"));
        assert_eq!(attempt.result, Some(json!({"i": 1_234, "s": "é\"\\"})));
        assert_eq!(attempt.detail, Some(json!({"end": "exit 1234"})));
        let mut totals = (0, 0, 0);
        for a in &agents {
            let a = store.get_agent(&t, &a.id).await.unwrap().unwrap();
            totals = (
                totals.0 + a.tasks_done,
                totals.1 + a.failures,
                totals.2 + a.busy_ms,
            );
        }
        assert_eq!(totals, (1_500, 500, 2 * ASSIGNED as i64));

        // Every op in the ledger, in an intact chain: a request's transitions of one kind share
        // an entry (`detail.count` of them, at most 1,000 each), a lone one has its own.
        let q = AuditQuery {
            tenant_id: Some(t.clone()),
            ..Default::default()
        };
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut cursor = None;
        loop {
            let p = store.audit_list(&q, &page(1000, cursor)).await.unwrap();
            for e in &p.items {
                let transition =
                    ["task.assign", "task.start", "task.complete"].contains(&e.action.as_str());
                let n = if transition && e.resource == "tasks" {
                    let n = e.detail["count"].as_u64().unwrap() as usize;
                    assert_eq!(e.detail["tasks"].as_array().unwrap().len(), n, "{e:?}");
                    assert!(n <= 1_000, "{n}");
                    n
                } else {
                    1
                };
                *counts.entry(e.action.clone()).or_default() += n;
            }
            match p.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(
            counts["task.assign"],
            ASSIGNED + 1,
            "{backend:?}: {counts:?}"
        );
        assert_eq!(counts["task.start"], ASSIGNED);
        assert_eq!(counts["task.complete"], ASSIGNED);
        assert_eq!(counts["task.submit"], 2);
        let report = store.audit_verify().await.unwrap();
        assert!(report.first_break.is_none(), "{backend:?}: {report:?}");
    })
    .await;
}

/// On PostgreSQL a batch's ids come from a JSON parameter; `jsonb_array_elements_text` is
/// estimated at 100 rows whatever it holds, which made the planner scan the whole tasks table
/// for a batch of a few ids. The one-row functions of migrations 0011 and 0013 make it look them
/// up by index: checked on the plans of a batched read and a batched update, with 3,000 tasks
/// stored.
#[tokio::test]
async fn postgres_plans_batched_reads_as_index_lookups() {
    crate::each_backend_url(|store, backend, url| async move {
        if backend != cflow_store::Backend::Postgres {
            return;
        }
        let t = crate::tenant(&store, "plans").await;
        let tasks: Vec<_> = (0..3000)
            .map(|i| crate::tasks::task(&format!("t{i}"), &[]))
            .collect();
        let out = store
            .submit_tasks(&crate::ctx(&t), &t, tasks)
            .await
            .unwrap();
        let ids = format!(r#"["{}", "{}"]"#, out[0].id, out[1].id);
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("ANALYZE tasks")
            .execute(&mut conn)
            .await
            .unwrap();
        let read = explain(
            &mut conn,
            format!("SELECT id FROM tasks WHERE id IN (SELECT cflow_ids('{ids}'::jsonb))"),
        )
        .await;
        assert!(read.contains("Index"), "{read}");
        assert!(!read.contains("Seq Scan on tasks"), "{read}");
        // What the function replaces: the built-in's 100-row estimate scans the table.
        let old = explain(
            &mut conn,
            format!(
                "SELECT id FROM tasks WHERE id IN \
                 (SELECT jsonb_array_elements_text('{ids}'::jsonb))"
            ),
        )
        .await;
        assert!(old.contains("Seq Scan on tasks"), "{old}");

        // Batched updates join their rows to the table: with `cflow_rows` (migration 0013)
        // the planner probes the primary key per row instead of scanning the table.
        let rows = format!(r#"[["{}", 1], ["{}", 2]]"#, out[0].id, out[1].id);
        let update = |source: &str| {
            format!(
                "UPDATE tasks SET updated_at = v.ts FROM (SELECT j.value ->> 0 AS id, \
                 (j.value ->> 1)::bigint AS ts FROM {source}('{rows}'::jsonb) AS j(value)) AS v \
                 WHERE tasks.id = v.id AND tasks.state IN ('assigned', 'running')"
            )
        };
        let plan = explain(&mut conn, update("cflow_rows")).await;
        assert!(plan.contains("Index Scan using tasks_pkey"), "{plan}");
        assert!(!plan.contains("Seq Scan on tasks"), "{plan}");
        let old = explain(&mut conn, update("jsonb_array_elements")).await;
        assert!(old.contains("Seq Scan on tasks"), "{old}");
    })
    .await;
}

async fn explain(conn: &mut sqlx::PgConnection, sql: String) -> String {
    let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}")))
        .fetch_all(conn)
        .await
        .unwrap();
    rows.join("\n")
}

/// PostgreSQL: a table that grows fast is analyzed by the store itself, well before autovacuum
/// would look (once a minute), so that the writer's prepared statements are planned for its
/// size (see `db::analyzer`). A fresh database, 3,000 tasks submitted: `tasks` was never
/// analyzed before, and is soon after, by a manual `ANALYZE` (not autovacuum's).
#[tokio::test]
async fn postgres_analyzes_a_table_that_grew_fast() {
    let Some((store, url)) = cflow_test_support::db::postgres_store().await else {
        return;
    };
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url.as_str()).await.unwrap();
    let analyzed_table = async |conn: &mut sqlx::AnyConnection, table: &str| -> bool {
        sqlx::query_scalar::<_, bool>(
            "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables \
             WHERE relname = $1 AND schemaname = current_schema()",
        )
        .bind(table.to_string())
        .fetch_one(conn)
        .await
        .unwrap()
    };
    let analyzed = async |conn: &mut sqlx::AnyConnection| analyzed_table(conn, "tasks").await;
    assert!(!analyzed(&mut conn).await, "a fresh table, never analyzed");
    let t = tenant(&store, "grows").await;
    // The ledger grows as fast, but is left to autovacuum (its analysis was the dearest, and
    // no writer statement plans with its statistics).
    let c = ctx(&t);
    let appends = (0..1_500).map(|i| {
        store.audit_append(
            &c,
            crate::audit::denied_read(format!("memory/ns/{i}"), json!({})),
        )
    });
    for r in futures_util::future::join_all(appends).await {
        r.unwrap();
    }
    for chunk in 0..3 {
        let tasks: Vec<NewTask> = (0..1_000)
            .map(|i| NewTask::new(json!({"n": chunk * 1_000 + i})))
            .collect();
        store.submit_tasks(&ctx(&t), &t, tasks).await.unwrap();
    }
    // Statistics reach `pg_stat_user_tables` within about a second of a commit (up to 10 s when
    // the session goes idle), and the analyzer looks every second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !analyzed(&mut conn).await {
        assert!(
            std::time::Instant::now() < deadline,
            "tasks was not analyzed within 60 s of growing by 3,000 rows"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let rows: f64 = sqlx::query_scalar::<_, f64>(
        "SELECT reltuples::float8 FROM pg_class WHERE relname = 'tasks' \
         AND relnamespace = current_schema()::regnamespace",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(rows >= 1_000.0, "the statistics see the rows: {rows}");
    // The analyzer analyzes every grown table of a round together: the ledger grew past its
    // threshold before the tasks did, yet was not analyzed.
    assert!(
        !analyzed_table(&mut conn, "audit").await,
        "the ledger is left to autovacuum"
    );
    conn.close().await.unwrap();
    store.close().await;
}

/// PostgreSQL: the writer finds its rows by index even while the statistics say the tables are
/// nearly empty (see `writer::pg_prepare`). On a fresh database, tasks submitted, assigned,
/// started and completed one at a time, each call a batch of its own, enough of them for
/// PostgreSQL to switch the prepared statements to their generic plans: not one sequential scan
/// of `tasks` or `attempts`. (With the planner's defaults, the completions scanned `tasks`.)
#[tokio::test]
async fn postgres_writer_uses_the_indexes_of_a_fresh_database() {
    let Some((store, url)) = cflow_test_support::db::postgres_store().await else {
        return;
    };
    let t = tenant(&store, "fresh").await;
    let a = agent(&store, &t).await;
    // The migrations scanned the tables (building indexes): counted from after them. A session
    // reports its counters when it ends, so the store is closed and its sessions waited out.
    store.close().await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let before = scans(&mut conn).await;
    let store = cflow_store::Store::open(&url, Default::default())
        .await
        .unwrap();
    const ROUNDS: i64 = 12;
    for i in 0..ROUNDS {
        let (id, epoch) = running_task(&store, &t, &a.id, json!({"n": i})).await;
        store
            .complete_attempts(&system(), vec![succeeded(id, epoch)])
            .await
            .unwrap()[0]
            .as_ref()
            .unwrap();
    }
    store.close().await;
    let after = scans(&mut conn).await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.0, b.0);
        assert!(
            a.3 >= b.3 + ROUNDS,
            "the rounds' updates are counted: {after:?}"
        );
        assert_eq!(
            a.1, b.1,
            "sequential scans of {}: {before:?} -> {after:?}",
            a.0
        );
        assert!(
            a.2 > b.2,
            "{} was read by index: {before:?} -> {after:?}",
            a.0
        );
    }
    conn.close().await.unwrap();
}

/// `(table, sequential scans, index scans, updated rows)` of `tasks` and `attempts`, once every
/// other session of the database has ended (a session's counters are complete then).
async fn scans(conn: &mut sqlx::PgConnection) -> Vec<(String, i64, i64, i64)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        if others == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{others} other sessions still open after 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A fresh snapshot of the counters, not the one this transaction already read.
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query_as(
        "SELECT relname::text, seq_scan, COALESCE(idx_scan, 0), n_tup_upd \
         FROM pg_stat_user_tables WHERE relname IN ('attempts', 'tasks') \
         AND schemaname = current_schema() ORDER BY relname",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap()
}

/// PostgreSQL: a completion that shares its batch with submissions is read with the batch's
/// `BEGIN` (`writer::live_prefetch`), unless one of those submissions depends on a task: its
/// new dependency edge must be seen by the completion, which queues the dependent. The writer
/// is held at its lock (a session of the test's holds it) while a batch of submissions and a
/// completion queues behind it. Both kinds of batch: a dependent of the completed task is
/// queued, and an independent submission is stored, with the completion recorded once. Without
/// attempt writers, which would take the completion (`StoreOptions::attempt_writers`).
#[tokio::test]
async fn postgres_completion_after_submissions_in_one_batch() {
    let opts = StoreOptions {
        attempt_writers: 0,
        ..StoreOptions::default()
    };
    let Some((store, url)) = cflow_test_support::db::postgres_store_with(opts).await else {
        return;
    };
    let t = tenant(&store, "prefetch").await;
    let a = agent(&store, &t).await;
    for with_dependency in [true, false] {
        let (id, epoch) = running_task(&store, &t, &a.id, json!({"n": 1})).await;

        // Hold the writer's lock; a first write waits for it, and the next ones queue.
        let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
        sqlx::query("SELECT 1 FROM pg_advisory_xact_lock($1)")
            .bind(i64::from_be_bytes(*b"cflowaud"))
            .execute(&mut holder)
            .await
            .unwrap();
        let first = tokio::spawn({
            let (store, t) = (store.clone(), t.clone());
            async move {
                store
                    .submit_tasks(&ctx(&t), &t, vec![NewTask::new(json!({"first": true}))])
                    .await
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let mut next = NewTask::new(json!({"next": true}));
        if with_dependency {
            next.depends_on = vec![id.clone()];
        }
        let submitted = tokio::spawn({
            let (store, t) = (store.clone(), t.clone());
            async move { store.submit_tasks(&ctx(&t), &t, vec![next]).await }
        });
        let completed = tokio::spawn({
            let (store, id) = (store.clone(), id.clone());
            async move {
                store
                    .complete_attempts(&system(), vec![succeeded(id, epoch)])
                    .await
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
        first.await.unwrap().unwrap();
        let next_id = submitted.await.unwrap().unwrap()[0].id.clone();
        completed.await.unwrap().unwrap()[0].as_ref().unwrap();

        let done = store.get_task(&t, &id).await.unwrap().unwrap();
        assert_eq!(done.state, TaskState::Succeeded);
        let attempts = store.list_attempts(&t, &id).await.unwrap();
        assert_eq!(attempts.len(), 1, "{attempts:?}");
        assert_eq!(attempts[0].state, AttemptState::Succeeded);
        let dependent = store.get_task(&t, &next_id).await.unwrap().unwrap();
        assert_eq!(
            dependent.state,
            TaskState::Queued,
            "with a dependency: {with_dependency}"
        );
        // Leave the queue empty for the next round.
        store
            .cancel_task(&ctx(&t), &t, &next_id, now())
            .await
            .unwrap();
        holder.close().await.unwrap();
    }
    store.close().await;
}

/// A task submitted with `spec`, assigned to `agent_id` and started: its id and epoch.
async fn running_task(
    store: &Store,
    t: &str,
    agent_id: &str,
    spec: serde_json::Value,
) -> (String, i64) {
    let id = store
        .submit_tasks(&ctx(t), t, vec![NewTask::new(spec)])
        .await
        .unwrap()[0]
        .id
        .clone();
    let n = now();
    let assign = AssignRequest {
        task_id: id.clone(),
        agent_id: agent_id.to_string(),
        worker_id: "w".into(),
        lease_ms: LEASE,
        now: n,
    };
    let epoch = store.assign_tasks(&system(), vec![assign]).await.unwrap()[0]
        .as_ref()
        .unwrap()
        .epoch;
    let start = StartRequest {
        task_id: id.clone(),
        epoch,
        now: n,
    };
    store.start_attempts(&system(), vec![start]).await.unwrap()[0]
        .as_ref()
        .unwrap();
    (id, epoch)
}

/// The report that the attempt `epoch` of task `id` succeeded.
fn succeeded(task_id: String, epoch: i64) -> CompleteRequest {
    CompleteRequest {
        task_id,
        epoch,
        outcome: crate::attempts::outcome(OutcomeKind::Succeeded),
        now: now(),
        started_at: None,
        next: None,
    }
}

/// PostgreSQL (migration 0017): expired leases are found through the partial index of live
/// attempts, with sequential scans off for that query as `Store::expired_leases` sets them, on
/// a young database whose statistics would otherwise favour scanning the table; the hot path's
/// references are checked by its statements, not by foreign keys.
#[tokio::test]
async fn postgres_finds_expired_leases_through_the_live_attempts_index() {
    crate::each_backend_url(|_store, backend, url| async move {
        if backend != cflow_store::Backend::Postgres {
            return;
        }
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        sqlx::query("SET LOCAL enable_seqscan = off")
            .execute(&mut *tx)
            .await
            .unwrap();
        let plan: Vec<String> = sqlx::query_scalar(
            "EXPLAIN SELECT task_id, tenant_id, epoch, agent_id, worker_id, lease_expires_at \
             FROM attempts WHERE state IN ('assigned', 'running') AND lease_expires_at < 5 \
             ORDER BY lease_expires_at, task_id LIMIT 1000",
        )
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("attempts_live_by_worker"), "{plan}");
        assert!(!plan.contains("Seq Scan"), "{plan}");
        tx.rollback().await.unwrap();
        let keys: Vec<String> = sqlx::query_scalar(
            "SELECT conname::text FROM pg_constraint WHERE contype = 'f' \
             AND conrelid IN ('tasks'::regclass, 'attempts'::regclass) ORDER BY 1",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert!(
            !keys.iter().any(|k| k == "tasks_tenant_id_fkey"
                || k == "tasks_swarm_id_fkey"
                || k == "attempts_task_id_fkey"),
            "{keys:?}"
        );
    })
    .await;
}
