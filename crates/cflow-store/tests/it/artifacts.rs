//! Attempt details and artifacts: the detail a completion stores (single and batched paths),
//! fenced artifact uploads (stale epochs and other workers refused with nothing written),
//! content deduplication, tenant scoping, and the tenants' sandbox overrides.

use cflow_store::{
    ArtifactPut, AuditQuery, CompleteRequest, Error, OutcomeKind, Store, sha256_hex,
};
use serde_json::json;
use sqlx::{Connection, Row};

use crate::attempts::{LEASE, agent, outcome, stale};
use crate::tasks::task;
use crate::{ctx, each_backend, each_backend_url, now, page, system, tenant};

fn put(task_id: &str, epoch: i64, worker: &str, name: &str, bytes: &[u8]) -> ArtifactPut {
    ArtifactPut {
        task_id: task_id.to_string(),
        epoch,
        worker_id: worker.to_string(),
        name: name.to_string(),
        kind: "file".to_string(),
        bytes: bytes.to_vec(),
        now: now(),
    }
}

/// A submitted task (allowing two attempts) of a fresh tenant, assigned to `worker` at epoch 1.
async fn assigned(store: &Store, prefix: &str, worker: &str) -> (String, String, String) {
    let t = tenant(store, prefix).await;
    let ag = agent(store, &t).await;
    let mut new = task("a", &[]);
    new.max_attempts = 2;
    let out = store.submit_tasks(&ctx(&t), &t, vec![new]).await.unwrap();
    let id = out[0].id.clone();
    store
        .assign_task(&system(), &id, &ag.id, worker, LEASE, now())
        .await
        .unwrap();
    (t, ag.id, id)
}

async fn blob_count(url: &str) -> i64 {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    let n: i64 = sqlx::query("SELECT COUNT(*) FROM artifact_blobs")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .try_get(0)
        .unwrap();
    conn.close().await.unwrap();
    n
}

#[tokio::test]
async fn a_completion_stores_its_detail_on_both_paths() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "detail").await;
        let ag = agent(&store, &t).await;
        let out = store
            .submit_tasks(
                &ctx(&t),
                &t,
                vec![task("a", &[]), task("b", &[]), task("c", &[])],
            )
            .await
            .unwrap();
        let n = now();
        for s in &out {
            store
                .assign_task(&system(), &s.id, &ag.id, "w1", LEASE, n)
                .await
                .unwrap();
        }
        let detail = |i: usize| {
            json!({"end": format!("exit {i}"), "isolation": "none: test",
                "sandbox": {"peak_memory_bytes": i}})
        };
        // The single op.
        let mut o = outcome(OutcomeKind::Succeeded);
        o.detail = Some(detail(0));
        store
            .complete_attempt(&system(), &out[0].id, 1, o, n + 1)
            .await
            .unwrap();
        // The batched (set-based) path: two completions of distinct tasks.
        let reqs = [1, 2]
            .into_iter()
            .map(|i| {
                let mut o = outcome(OutcomeKind::Failed { retryable: false });
                o.detail = (i == 1).then(|| detail(i));
                CompleteRequest {
                    task_id: out[i].id.clone(),
                    epoch: 1,
                    outcome: o,
                    now: n + 1,
                    started_at: Some(n + 1),
                    next: None,
                }
            })
            .collect();
        for r in store.complete_attempts(&system(), reqs).await.unwrap() {
            r.unwrap();
        }
        for (i, s) in out.iter().enumerate() {
            let attempts = store.list_attempts(&t, &s.id).await.unwrap();
            let want = (i < 2).then(|| detail(i));
            assert_eq!(attempts[0].detail, want, "{backend:?} task {i}");
        }
    })
    .await;
}

#[tokio::test]
async fn artifacts_are_stored_listed_and_served_per_tenant() {
    each_backend_url(|store, backend, url| async move {
        let (t, _, id) = assigned(&store, "art", "w1").await;
        let before = blob_count(&url).await;
        let a = store
            .put_artifact(&system(), put(&id, 1, "w1", "out/diff.patch", b"same"))
            .await
            .unwrap();
        assert_eq!(
            (a.attempt_no, a.epoch, a.size, a.sha256.as_str()),
            (1, 1, 4, sha256_hex(b"same").as_str())
        );
        // Same content under another name: one blob for both.
        store
            .put_artifact(&system(), put(&id, 1, "w1", "copy.txt", b"same"))
            .await
            .unwrap();
        assert_eq!(blob_count(&url).await, before + 1, "{backend:?}");
        // The attempt ends; its worker may still upload (it uploads just before reporting).
        store
            .complete_attempt(&system(), &id, 1, outcome(OutcomeKind::Succeeded), now())
            .await
            .unwrap();
        store
            .put_artifact(&system(), put(&id, 1, "w1", "log.txt", b"log"))
            .await
            .unwrap();
        // A second upload of a name replaces the first.
        store
            .put_artifact(&system(), put(&id, 1, "w1", "log.txt", b"log v2"))
            .await
            .unwrap();

        let list = store.list_artifacts(&t, &id).await.unwrap();
        let names: Vec<_> = list.iter().map(|m| (m.name.as_str(), m.size)).collect();
        assert_eq!(
            names,
            [("copy.txt", 4), ("log.txt", 6), ("out/diff.patch", 4)]
        );
        let log = store
            .artifact_content(&t, &id, &sha256_hex(b"log v2"))
            .await
            .unwrap();
        assert_eq!(log.as_deref(), Some(&b"log v2"[..]));
        // A hash the task has no artifact with is not served, even if another task has it.
        let none = store
            .artifact_content(&t, &id, &sha256_hex(b"nothing"))
            .await
            .unwrap();
        assert!(none.is_none());

        // Another tenant sees neither the list nor the content.
        let other = tenant(&store, "other").await;
        let err = store.list_artifacts(&other, &id).await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        let none = store
            .artifact_content(&other, &id, &sha256_hex(b"same"))
            .await
            .unwrap();
        assert!(none.is_none());
        let err = store.list_artifacts(&t, "no-such-task").await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
    })
    .await;
}

#[tokio::test]
async fn uploads_are_fenced_and_bad_ones_write_nothing() {
    each_backend_url(|store, backend, url| async move {
        let (t, ag, id) = assigned(&store, "fence", "w1").await;
        // Attempt 1 fails and is retried on another worker: epoch 2 belongs to w2.
        store
            .complete_attempt(
                &system(),
                &id,
                1,
                outcome(OutcomeKind::Failed { retryable: true }),
                now(),
            )
            .await
            .unwrap();
        store
            .promote_retries(&system(), now() + 3_600_000, 100)
            .await
            .unwrap();
        store
            .assign_task(&system(), &id, &ag, "w2", LEASE, now())
            .await
            .unwrap();
        let before = blob_count(&url).await;

        let err = store
            .put_artifact(&ctx(&t), put(&id, 1, "w1", "late.txt", b"stale bytes"))
            .await
            .unwrap_err();
        assert!(stale(&err), "{err}");
        let err = store
            .put_artifact(&ctx(&t), put(&id, 2, "w1", "x.txt", b"wrong worker"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::State(ref m) if m.contains("another worker")),
            "{err}"
        );
        let err = store
            .put_artifact(&ctx(&t), put(&id, 3, "w2", "x.txt", b"future"))
            .await
            .unwrap_err();
        assert!(stale(&err), "{err}");
        let err = store
            .put_artifact(&ctx(&t), put("nope", 1, "w1", "x.txt", b"x"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        for bad in ["", "/abs", "a/../b", "nul\0"] {
            let err = store
                .put_artifact(&ctx(&t), put(&id, 2, "w2", bad, b"x"))
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::Invalid(ref v) if v.field == "name"),
                "{bad:?}: {err}"
            );
        }
        let mut bad_kind = put(&id, 2, "w2", "k.txt", b"x");
        bad_kind.kind = "blob".into();
        let err = store.put_artifact(&ctx(&t), bad_kind).await.unwrap_err();
        assert!(
            matches!(err, Error::Invalid(ref v) if v.field == "kind"),
            "{err}"
        );

        assert!(store.list_artifacts(&t, &id).await.unwrap().is_empty());
        assert_eq!(blob_count(&url).await, before, "{backend:?}");
        // Refusals are audited.
        let q = AuditQuery {
            tenant_id: None,
            since: None,
        };
        let entries = store.audit_list(&q, &page(1000, None)).await.unwrap().items;
        let refused = entries
            .iter()
            .filter(|e| e.action == "artifact.put" && e.resource == format!("task/{id}"))
            .map(|e| e.outcome.as_str())
            .collect::<Vec<_>>();
        assert_eq!(refused, ["stale_epoch", "conflict", "stale_epoch"]);

        // The live attempt's own worker stores it.
        let m = store
            .put_artifact(&ctx(&t), put(&id, 2, "w2", "ok.txt", b"fine"))
            .await
            .unwrap();
        assert_eq!((m.epoch, m.attempt_no), (2, 2));
    })
    .await;
}

#[tokio::test]
async fn tenant_sandbox_overrides_are_set_cleared_and_audited() {
    each_backend(|store, _| async move {
        let t = tenant(&store, "sbx").await;
        assert_eq!(store.tenant_sandbox(&t).await.unwrap(), None);
        let v = json!({"mode": "enforce", "network": "off", "limits": {"cpu_seconds": 10}});
        store
            .set_tenant_sandbox(&ctx(&t), &t, Some(v.clone()))
            .await
            .unwrap();
        assert_eq!(store.tenant_sandbox(&t).await.unwrap(), Some(v));
        store.set_tenant_sandbox(&ctx(&t), &t, None).await.unwrap();
        assert_eq!(store.tenant_sandbox(&t).await.unwrap(), None);
        let err = store
            .set_tenant_sandbox(&ctx(&t), "no-such-tenant", Some(json!({})))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        let err = store.tenant_sandbox("no-such-tenant").await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        let q = AuditQuery {
            tenant_id: Some(t.clone()),
            since: None,
        };
        let entries = store.audit_list(&q, &page(1000, None)).await.unwrap().items;
        let n = entries
            .iter()
            .filter(|e| e.action == "tenant.sandbox" && e.outcome == "success")
            .count();
        assert_eq!(n, 2);

        // An agent's overrides are stored with it.
        let s = store
            .create_swarm(&ctx(&t), &t, crate::swarms::new_swarm("sbx", 2))
            .await
            .unwrap();
        let new = cflow_store::NewAgent {
            sandbox: Some(json!({"network": "loopback"})),
            ..crate::swarms::new_agent("coder")
        };
        let a = store.create_agent(&ctx(&t), &t, &s.id, new).await.unwrap();
        let got = store.get_agent(&t, &a.id).await.unwrap().unwrap();
        assert_eq!(got.sandbox, Some(json!({"network": "loopback"})));
    })
    .await;
}
