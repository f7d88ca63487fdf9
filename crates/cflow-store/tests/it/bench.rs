//! Rough throughput measurements, ignored by default (timings are never test assertions):
//!
//! ```text
//! cargo test --release -p cflow-store --test it -- --ignored --nocapture bench_
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use cflow_store::{Backend, Store};
use cflow_test_support::db;
use serde_json::json;

use crate::{ctx, now, put, tenant};

const WRITERS: usize = 64;
const WRITES: usize = 40_000;

async fn concurrent_puts(store: &Store, backend: Backend) {
    let t = tenant(store, "bench").await;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let (store, t, next) = (store.clone(), t.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= WRITES {
                    return;
                }
                let p = put(
                    "bench",
                    &format!("key-{i}"),
                    json!({"n": i, "text": "some words to index"}),
                );
                store.memory_put(&ctx(&t), &t, p).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{backend:?}: {WRITES} durable memory_put with {WRITERS} concurrent writers in {secs:.2} s = {:.0} writes/s",
        WRITES as f64 / secs
    );
}

async fn searches(store: &Store, backend: Backend) {
    let t = tenant(store, "search-bench").await;
    let words = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    ];
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (store, t) = (store.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..100_000).step_by(WRITERS) {
                let text = format!("{} {} note {i}", words[i % 8], words[(i / 8) % 8]);
                store
                    .memory_put(&ctx(&t), &t, put("docs", &format!("d{i}"), json!(text)))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    println!(
        "{backend:?}: 100000 entries written in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    for q in [
        vec!["note"],
        vec!["alpha"],
        vec!["alpha", "bravo"],
        vec!["12345"],
    ] {
        let terms: Vec<String> = q.iter().map(|s| s.to_string()).collect();
        let start = Instant::now();
        let n = 20;
        let mut hits = 0;
        for _ in 0..n {
            hits = store
                .memory_search(&t, &terms, None, now(), 20)
                .await
                .unwrap()
                .len();
        }
        println!(
            "{backend:?}: search {q:?} over 100000 entries: {:.2} ms per query ({hits} hits)",
            start.elapsed().as_secs_f64() * 1000.0 / f64::from(n)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark; run with --ignored --nocapture"]
async fn bench_write_throughput() {
    let (store, _dir) = db::temp_sqlite().await;
    concurrent_puts(&store, Backend::Sqlite).await;
    store.close().await;
    if let Some((store, _)) = db::postgres_store().await {
        concurrent_puts(&store, Backend::Postgres).await;
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark; run with --ignored --nocapture"]
async fn bench_search_100k() {
    let (store, _dir) = db::temp_sqlite().await;
    searches(&store, Backend::Sqlite).await;
    store.close().await;
    if let Some((store, _)) = db::postgres_store().await {
        searches(&store, Backend::Postgres).await;
        store.close().await;
    }
}

/// Bulk-submits 10,000 independent tasks, once as a single submission and once as 40
/// concurrent submissions of 250, and prints tasks/s (committed, durable).
async fn bulk_submit(store: &Store, backend: Backend) {
    use cflow_store::NewTask;
    const TOTAL: usize = 10_000;
    let t = tenant(store, "submit-bench").await;
    let make = |n: usize| -> Vec<NewTask> {
        (0..n)
            .map(|i| NewTask {
                idempotency_key: Some(format!("k-{}", uuid::Uuid::new_v4().simple())),
                ..NewTask::new(json!({"command": ["true"], "n": i}))
            })
            .collect()
    };
    let batch = make(TOTAL);
    let start = Instant::now();
    store.submit_tasks(&ctx(&t), &t, batch).await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{backend:?}: {TOTAL} tasks in one submission in {secs:.2} s = {:.0} tasks/s",
        TOTAL as f64 / secs
    );
    let start = Instant::now();
    let mut calls = Vec::new();
    for _ in 0..40 {
        let (store, t, batch) = (store.clone(), t.clone(), make(TOTAL / 40));
        calls.push(tokio::spawn(async move {
            store.submit_tasks(&ctx(&t), &t, batch).await.unwrap();
        }));
    }
    for c in calls {
        c.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{backend:?}: {TOTAL} tasks in 40 concurrent submissions of 250 in {secs:.2} s = {:.0} tasks/s",
        TOTAL as f64 / secs
    );
    let start = Instant::now();
    let mut calls = Vec::new();
    for _ in 0..40 {
        let batch: Vec<NewTask> = (0..TOTAL / 40)
            .map(|i| NewTask::new(json!({"command": ["true"], "n": i})))
            .collect();
        let (store, t) = (store.clone(), t.clone());
        calls.push(tokio::spawn(async move {
            store.submit_tasks(&ctx(&t), &t, batch).await.unwrap();
        }));
    }
    for c in calls {
        c.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{backend:?}: {TOTAL} tasks without keys in 40 concurrent submissions in {secs:.2} s = {:.0} tasks/s",
        TOTAL as f64 / secs
    );
    let plain: Vec<NewTask> = (0..TOTAL)
        .map(|i| NewTask::new(json!({"command": ["true"], "n": i})))
        .collect();
    let start = Instant::now();
    store.submit_tasks(&ctx(&t), &t, plain).await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{backend:?}: {TOTAL} tasks without idempotency keys in one submission in {secs:.2} s = {:.0} tasks/s",
        TOTAL as f64 / secs
    );
    assert_eq!(store.ready_tasks(1).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark; run with --ignored --nocapture"]
async fn bench_bulk_submit() {
    let (store, _dir) = db::temp_sqlite().await;
    bulk_submit(&store, Backend::Sqlite).await;
    store.close().await;
    if let Some((store, _)) = db::postgres_store().await {
        bulk_submit(&store, Backend::Postgres).await;
        store.close().await;
    }
}
