//! Graceful shutdown: a request in flight when shutdown begins completes (and is durable), new
//! connections are refused, and the port is closed afterwards.

use crate::common::{eventually, expect_json};
use cflow_test_support::server::TestServer;
use std::time::Duration;

#[tokio::test]
async fn an_in_flight_request_completes_and_the_port_closes() {
    let server = TestServer::start_sqlite().await;
    let (acme, _) = server.tenant_with_key("acme", "admin").await;
    // A fresh key, so that its first use is observable as `last_used_at`.
    let slow = server
        .create_key_json(&acme, "slow", "developer", None)
        .await;
    let slow_id = slow["id"].as_str().unwrap().to_string();

    // A PUT whose body trickles in: the server authenticates it, then waits for the body.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    let request = server
        .client()
        .put(server.at("/api/v1/memory/notes/in-flight"))
        .bearer_auth(slow["token"].as_str().unwrap())
        .header("content-type", "application/json")
        .body(body)
        .send();
    let in_flight = tokio::spawn(request);
    tx.send(Ok(br#"{"value": "#.to_vec())).await.unwrap();

    // The request has reached the handler once its key's use is recorded.
    let store = server.store.clone();
    eventually(
        "the slow request to be authenticated",
        Duration::from_secs(20),
        async || {
            let page = cflow_store::PageRequest {
                cursor: None,
                limit: 100,
            };
            let keys = store.list_keys(&acme, &page).await.ok()?;
            keys.items
                .iter()
                .find(|k| k.id == slow_id && k.last_used_at.is_some())
                .map(|_| ())
        },
    )
    .await;

    let addr = server.addr;
    let data_dir = server.data_dir.clone();
    let shutdown = tokio::spawn(server.shutdown_keeping_data());
    // New connections are refused while the old request is still open.
    eventually(
        "the listener to close",
        Duration::from_secs(20),
        async || {
            tokio::net::TcpStream::connect(addr)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    assert!(
        !shutdown.is_finished(),
        "shutdown waits for the in-flight request"
    );

    tx.send(Ok(br#""finished"}"#.to_vec())).await.unwrap();
    drop(tx);
    let resp = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    let meta = expect_json(resp, 200).await;
    assert_eq!(meta["version"], 1);
    let _dir = tokio::time::timeout(Duration::from_secs(30), shutdown)
        .await
        .expect("shutdown completes")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the port is closed"
    );

    // The answered write is durable: a new store on the same file sees it.
    let store = cflow_store::Store::open_sqlite(&data_dir.join("cflow.db"), Default::default())
        .await
        .unwrap();
    let entry = store
        .memory_get(&acme, "notes", "in-flight", crate::common::now_ms())
        .await
        .unwrap()
        .expect("the in-flight write was committed");
    assert_eq!(entry.value, serde_json::json!("finished"));
    store.close().await;
}
