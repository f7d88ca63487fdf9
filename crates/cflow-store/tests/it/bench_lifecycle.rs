//! The throughput of a task's whole life through the batch ops, ignored by default:
//!
//! ```text
//! cargo test --release -p cflow-store --test it -- --ignored --nocapture bench_task_lifecycle
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use cflow_store::{
    AssignRequest, Backend, CompleteRequest, NewTask, Outcome, OutcomeKind, StartRequest, Store,
};
use cflow_test_support::db;
use serde_json::json;

use crate::swarms::{new_agent, new_swarm};
use crate::{ctx, now, system, tenant};

const TASKS: usize = 20_000;
const BATCH: usize = 500;
const CALLERS: usize = 4;
const AGENTS: usize = 8;

async fn lifecycle(store: &Store, backend: Backend) {
    let t = tenant(store, "life-bench").await;
    let s = store
        .create_swarm(&ctx(&t), &t, new_swarm("bench", AGENTS as i64))
        .await
        .unwrap();
    let mut agents = Vec::new();
    for _ in 0..AGENTS {
        let a = store
            .create_agent(&ctx(&t), &t, &s.id, new_agent("coder"))
            .await
            .unwrap();
        agents.push(a.id);
    }
    let start = Instant::now();
    let mut ids = Vec::with_capacity(TASKS);
    for chunk in 0..TASKS / cflow_store::MAX_SUBMIT {
        let tasks: Vec<NewTask> = (0..cflow_store::MAX_SUBMIT)
            .map(|i| NewTask::new(json!({"command": ["true"], "n": chunk * 10_000 + i})))
            .collect();
        let out = store.submit_tasks(&ctx(&t), &t, tasks).await.unwrap();
        ids.extend(out.into_iter().map(|s| s.id));
    }
    let submitted = start.elapsed().as_secs_f64();
    // What a restarting scheduler does first: load the whole queue.
    let load = Instant::now();
    let queued = store.ready_tasks(u32::MAX).await.unwrap().len();
    let loaded = load.elapsed().as_secs_f64();
    let start = start + load.elapsed();

    let ids = Arc::new(ids);
    let agents = Arc::new(agents);
    let next = Arc::new(AtomicUsize::new(0));
    let phases = Instant::now();
    let mut callers = Vec::new();
    for c in 0..CALLERS {
        let (store, ids, agents, next) = (store.clone(), ids.clone(), agents.clone(), next.clone());
        callers.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(BATCH, Ordering::Relaxed);
                if from >= ids.len() {
                    return;
                }
                let batch = &ids[from..(from + BATCH).min(ids.len())];
                let n = now();
                let assign = batch
                    .iter()
                    .enumerate()
                    .map(|(i, id)| AssignRequest {
                        task_id: id.clone(),
                        agent_id: agents[i % agents.len()].clone(),
                        worker_id: format!("w{c}"),
                        lease_ms: 30_000,
                        now: n,
                    })
                    .collect();
                let assigned = store.assign_tasks(&system(), assign).await.unwrap();
                let epochs: Vec<i64> = assigned.into_iter().map(|a| a.unwrap().epoch).collect();
                let start = batch
                    .iter()
                    .zip(&epochs)
                    .map(|(id, &epoch)| StartRequest {
                        task_id: id.clone(),
                        epoch,
                        now: n,
                    })
                    .collect();
                for s in store.start_attempts(&system(), start).await.unwrap() {
                    s.unwrap();
                }
                let done = batch
                    .iter()
                    .zip(&epochs)
                    .map(|(id, &epoch)| CompleteRequest {
                        task_id: id.clone(),
                        epoch,
                        outcome: Outcome {
                            kind: OutcomeKind::Succeeded,
                            exit_code: Some(0),
                            stdout_tail: "ok\n".into(),
                            stderr_tail: String::new(),
                            result: Some(json!({"n": from})),
                            detail: None,
                        },
                        now: n,
                        started_at: None,
                        next: None,
                    })
                    .collect();
                for s in store.complete_attempts(&system(), done).await.unwrap() {
                    s.unwrap();
                }
            }
        }));
    }
    for c in callers {
        c.await.unwrap();
    }
    let ran = phases.elapsed().as_secs_f64();
    let total = start.elapsed().as_secs_f64();
    println!("{backend:?}: the queue of {queued} tasks loaded by ready_tasks in {loaded:.2} s");
    println!(
        "{backend:?}: {TASKS} tasks submitted in {submitted:.2} s; assigned, started and completed \
         in batches of {BATCH} by {CALLERS} callers in {ran:.2} s = {:.0} tasks/s; whole \
         lifecycle {total:.2} s = {:.0} tasks/s",
        TASKS as f64 / ran,
        TASKS as f64 / total
    );
    assert!(store.ready_tasks(1).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark; run with --ignored --nocapture"]
async fn bench_task_lifecycle() {
    let (store, _dir) = db::temp_sqlite().await;
    lifecycle(&store, Backend::Sqlite).await;
    store.close().await;
    if let Some((store, _)) = db::postgres_store().await {
        lifecycle(&store, Backend::Postgres).await;
        store.close().await;
    }
}
