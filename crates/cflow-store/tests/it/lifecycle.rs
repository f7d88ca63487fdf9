//! Opening, migrating, reopening, bootstrapping and closing.

use std::sync::Arc;

use cflow_core::Role;
use cflow_store::{AuthOutcome, Backend, Error, Store, StoreOptions};
use serde_json::json;

use crate::{ctx, each_backend, each_backend_url, page, put, system, tenant};

#[tokio::test]
async fn migrations_apply_on_a_fresh_database_and_reopen_keeps_data() {
    each_backend_url(|store, backend, url| async move {
        let t = store.create_tenant(&system(), "persisted").await.unwrap();
        store
            .memory_put(&ctx(&t.id), &t.id, put("ns", "k", json!({"a": 1})))
            .await
            .unwrap();
        store.close().await;

        // Reopening runs the migrations again: they must find nothing to do.
        let again = Store::open(&url, StoreOptions::default()).await.unwrap();
        assert_eq!(again.backend(), backend);
        again.ping().await.unwrap();
        let found = again.get_tenant("persisted").await.unwrap().unwrap();
        assert_eq!(found, t, "{backend:?}");
        let e = again
            .memory_get(&t.id, "ns", "k", crate::now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.value, json!({"a": 1}));
        assert!(again.audit_verify().await.unwrap().first_break.is_none());
        again.close().await;
    })
    .await;
}

#[tokio::test]
async fn open_sqlite_creates_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b c/d#e/cflow.db");
    let store = Store::open_sqlite(&path, StoreOptions::default())
        .await
        .unwrap();
    store.ping().await.unwrap();
    store.create_tenant(&system(), "x").await.unwrap();
    store.close().await;
    assert!(path.is_file());
    assert!(format!("{store:?}").contains("Sqlite"));
}

#[tokio::test]
async fn unsupported_urls_are_refused() {
    let err = Store::open("mysql://localhost/x", StoreOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

#[tokio::test]
async fn bootstrap_creates_one_superadmin_once() {
    each_backend(|store, backend| async move {
        let created = store
            .bootstrap(&system())
            .await
            .unwrap()
            .expect("first bootstrap");
        assert_eq!(created.key.role, Role::Superadmin);
        assert!(created.token.starts_with("cflow_"));
        let t = store.get_tenant("default").await.unwrap().unwrap();
        assert_eq!(created.key.tenant_id, t.id);
        match store
            .authenticate(&created.token, crate::now())
            .await
            .unwrap()
        {
            AuthOutcome::Valid(k) => assert_eq!(k.id, created.key.id),
            other => panic!("{backend:?}: {other:?}"),
        }
        assert!(store.bootstrap(&system()).await.unwrap().is_none());

        let entries = store
            .audit_list(&Default::default(), &page(100, None))
            .await
            .unwrap()
            .items;
        let boots: Vec<_> = entries.iter().filter(|e| e.action == "bootstrap").collect();
        assert_eq!(boots.len(), 1, "{backend:?}");
        assert_eq!(boots[0].tenant_id.as_deref(), Some(t.id.as_str()));
        let detail = boots[0].detail.to_string();
        assert!(
            !detail.contains(&created.token[23..]),
            "no secret in the ledger"
        );
    })
    .await;
}

#[tokio::test]
async fn concurrent_bootstraps_create_exactly_one_key() {
    each_backend(|store, backend| async move {
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move { s.bootstrap(&system()).await }));
        }
        let mut created = 0;
        for t in tasks {
            if t.await.unwrap().unwrap().is_some() {
                created += 1;
            }
        }
        assert_eq!(created, 1, "{backend:?}");
        let tenants = store.list_tenants(&page(10, None)).await.unwrap().items;
        assert_eq!(tenants.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn bootstrap_does_nothing_when_tenants_exist() {
    each_backend(|store, _| async move {
        tenant(&store, "existing").await;
        assert!(store.bootstrap(&system()).await.unwrap().is_none());
        assert!(store.get_tenant("default").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn close_refuses_later_writes_and_reads() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "closing").await;
        store.close().await;
        let err = store.create_tenant(&system(), "late").await.unwrap_err();
        assert!(matches!(err, Error::Closed), "{backend:?}: {err}");
        let err = store
            .memory_put(&ctx(&t), &t, put("ns", "k", json!(1)))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Closed), "{err}");
        let err = store.get_tenant(&t).await.unwrap_err();
        assert!(matches!(err, Error::Closed), "{err}");
        // Closing again (as every clone's owner might) returns at once.
        store.close().await;
        assert!(format!("{store:?}").contains("closed: true"));
    })
    .await;
}

#[tokio::test]
async fn close_commits_the_writes_already_queued() {
    each_backend_url(|store, backend, url| async move {
        let t = tenant(&store, "flush").await;
        let store = Arc::new(store);
        let mut tasks = Vec::new();
        for i in 0..200 {
            let s = store.clone();
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                s.memory_put(&ctx(&t), &t, put("ns", &format!("k{i:03}"), json!(i)))
                    .await
            }));
        }
        // Let some writes reach the queue, then close while others are still arriving.
        tokio::task::yield_now().await;
        store.close().await;
        let mut ok = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            match task.await.unwrap() {
                Ok(e) => ok.push((i, e.version)),
                Err(Error::Closed) => {}
                Err(e) => panic!("{backend:?}: unexpected {e}"),
            }
        }
        // Every write that was acknowledged is in the database.
        let reopened = Store::open(&url, StoreOptions::default()).await.unwrap();
        for (i, version) in &ok {
            let e = reopened
                .memory_get(&t, "ns", &format!("k{i:03}"), crate::now())
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{backend:?}: acknowledged write {i} lost"));
            assert_eq!(e.version, *version);
        }
        let listed = reopened
            .memory_list(&t, "ns", "", crate::now(), &page(1000, None))
            .await
            .unwrap()
            .items;
        assert_eq!(
            listed.len(),
            ok.len(),
            "{backend:?}: only acknowledged writes exist"
        );
        reopened.close().await;
    })
    .await;
}

#[tokio::test]
async fn store_is_send_sync_clone_and_debug() {
    fn assert_traits<T: Send + Sync + Clone + std::fmt::Debug + 'static>() {}
    assert_traits::<Store>();
    each_backend(|store, backend| async move {
        let text = format!("{store:?}");
        match backend {
            Backend::Sqlite => assert!(text.contains("Sqlite"), "{text}"),
            Backend::Postgres => assert!(text.contains("Postgres"), "{text}"),
        }
    })
    .await;
}

/// Opening is `Send`, so a store (and a server built on one) can be opened on a spawned task.
#[tokio::test]
async fn open_can_be_spawned() {
    each_backend_url(|store, backend, url| async move {
        store.close().await;
        let again = tokio::spawn(async move { Store::open(&url, StoreOptions::default()).await })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.backend(), backend);
        again.ping().await.unwrap();
        again.close().await;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spawned/cflow.db");
    let store =
        tokio::spawn(async move { Store::open_sqlite(&path, StoreOptions::default()).await })
            .await
            .unwrap()
            .unwrap();
    store.ping().await.unwrap();
    store.close().await;
}

/// Under a steady stream of commits the WAL starts over again and again instead of growing with
/// every commit: the checkpointer asks the writer to checkpoint between two batches once the
/// WAL is past `wal_restart_frames`. The file's size is its high-water mark, so it levels off
/// within the first rounds; without the restarts it grows with every commit to the end (about
/// 90 MB here, against 13 MB with them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_starts_over_under_steady_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cflow.db");
    let opts = StoreOptions {
        wal_restart_frames: 64,
        ..StoreOptions::default()
    };
    let store = Store::open_sqlite(&path, opts).await.unwrap();
    let t = store.create_tenant(&system(), "wal").await.unwrap();
    let wal = dir.path().join("cflow.db-wal");
    let wal_size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    let started = std::time::Instant::now();
    let mut commits = 0u64;
    let mut at_half = None;
    // One write at a time: each is a commit of its own. 5 s is 20 checkpointer rounds.
    while started.elapsed() < std::time::Duration::from_secs(5) {
        let key = format!("k{}", commits % 1000);
        store
            .memory_put(&ctx(&t.id), &t.id, put("ns", &key, json!({"n": commits})))
            .await
            .unwrap();
        commits += 1;
        if at_half.is_none() && started.elapsed() >= std::time::Duration::from_millis(2500) {
            at_half = Some((commits, wal_size()));
        }
    }
    let (half_commits, half) = at_half.unwrap();
    let end = wal_size();
    println!("WAL {half} bytes after {half_commits} commits, {end} after {commits}");
    assert!(
        commits - half_commits > half_commits / 2,
        "too few commits in the second half to tell: {half_commits} then {commits}"
    );
    assert!(
        end < half + half / 2,
        "the WAL grew from {half} bytes ({half_commits} commits) to {end} ({commits} commits): \
         it never started over"
    );
    store.close().await;
}

/// A new SQLite database (and its WAL and shared-memory files) is readable by its owner only:
/// it holds key hashes, sealed secrets and the ledger. An existing file keeps its mode.
#[tokio::test]
async fn a_new_sqlite_database_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("cflow.db");
    let store = cflow_store::Store::open_sqlite(&path, cflow_store::StoreOptions::default())
        .await
        .unwrap();
    store
        .create_tenant(&crate::system(), "private")
        .await
        .unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    let wal = path.with_file_name("cflow.db-wal");
    assert!(wal.exists());
    assert_eq!(mode(&wal), 0o600);
    store.close().await;

    let shared = dir.path().join("shared.db");
    std::fs::write(&shared, b"").unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o640)).unwrap();
    let store = cflow_store::Store::open_sqlite(&shared, cflow_store::StoreOptions::default())
        .await
        .unwrap();
    store.close().await;
    assert_eq!(mode(&shared), 0o640, "an operator's choice stays");
}
