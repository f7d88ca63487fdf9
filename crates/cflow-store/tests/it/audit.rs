//! The audit ledger: every change and failure is recorded, the chain verifies, the database
//! refuses to rewrite history, tampering is found, and listing filters and pages.

use cflow_core::Role;
use cflow_core::audit::Break;
use cflow_store::{AuditEvent, AuditQuery, Backend, Error, MemoryPut, Precondition};
use serde_json::json;
use sqlx::{AssertSqlSafe, Connection, Executor};

use crate::{ctx, each_backend, each_backend_url, new_key, now, page, put, system, tenant};

/// Runs raw SQL on the store's database over a separate connection, bypassing the store.
async fn raw(backend: Backend, url: &str, sql: &str) -> Result<(), sqlx::Error> {
    match backend {
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(url).await?;
            c.execute(AssertSqlSafe(sql.to_string())).await.map(|_| ())
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(url).await?;
            c.execute(AssertSqlSafe(sql.to_string())).await.map(|_| ())
        }
    }
}

/// An entry that records a denied memory read (no change).
pub(crate) fn denied_read(resource: String, detail: serde_json::Value) -> AuditEvent {
    AuditEvent {
        action: "memory.read".into(),
        resource,
        outcome: "denied".into(),
        detail,
    }
}

/// The first 100 entries of the ledger.
async fn first_entries(store: &cflow_store::Store) -> Vec<cflow_core::audit::AuditEntry> {
    store
        .audit_list(&AuditQuery::default(), &page(100, None))
        .await
        .unwrap()
        .items
}

#[tokio::test]
async fn every_change_and_failure_is_recorded_and_the_chain_verifies() {
    each_backend(|store, backend| async move {
        let t = store.create_tenant(&system(), "audited").await.unwrap();
        let c = ctx(&t.id);
        let _ = store.create_tenant(&c, "audited").await.unwrap_err();
        let key = store
            .create_key(&c, &t.id, new_key("k", Role::Admin))
            .await
            .unwrap();
        store.revoke_key(&c, &t.id, &key.key.id).await.unwrap();
        let _ = store
            .revoke_key(&c, &t.id, "0000000000000000")
            .await
            .unwrap_err();
        store
            .memory_put(
                &c,
                &t.id,
                MemoryPut {
                    ttl_seconds: Some(60),
                    tags: vec!["x".into()],
                    ..put("ns", "k", json!("top secret value"))
                },
            )
            .await
            .unwrap();
        let _ = store
            .memory_put(
                &c,
                &t.id,
                MemoryPut {
                    precondition: Precondition::Version(9),
                    ..put("ns", "k", json!(0))
                },
            )
            .await
            .unwrap_err();
        store
            .memory_delete(&c, &t.id, "ns", "k", Precondition::None)
            .await
            .unwrap();
        let _ = store
            .memory_delete(&c, &t.id, "ns", "k", Precondition::None)
            .await
            .unwrap_err();
        store
            .audit_append(
                &c,
                denied_read("memory/ns/k".into(), json!({"role": "viewer"})),
            )
            .await
            .unwrap();

        let all = first_entries(&store).await;
        let got: Vec<_> = all
            .iter()
            .map(|e| (e.action.as_str(), e.outcome.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("tenant.create", "success"),
                ("tenant.create", "conflict"),
                ("key.create", "success"),
                ("key.revoke", "success"),
                ("key.revoke", "not_found"),
                ("memory.write", "success"),
                ("memory.write", "precondition_failed"),
                ("memory.delete", "success"),
                ("memory.delete", "not_found"),
                ("memory.read", "denied"),
            ],
            "{backend:?}"
        );
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        assert!(
            all.windows(2)
                .all(|w| w[1].prev_hash == w[0].hash && w[1].at >= w[0].at)
        );
        assert_eq!(all[0].tenant_id.as_deref(), Some(t.id.as_str()));
        assert_eq!(all[2].resource, format!("key/{}", key.key.id));
        assert_eq!(all[5].resource, "memory/ns/k");
        assert_eq!(
            all[5].detail,
            json!({"version": 1, "ttl_seconds": 60, "tags": 1})
        );
        assert_eq!(all[5].request_id, c.request_id);
        assert_eq!(all[5].source.as_deref(), Some("127.0.0.1"));
        assert_eq!(all[5].principal_id.as_deref(), Some("tester"));
        let text = serde_json::to_string(&all).unwrap();
        assert!(
            !text.contains("top secret value"),
            "no memory values in the ledger"
        );
        assert!(!text.contains(&key.token[23..]), "no secrets in the ledger");

        let report = store.audit_verify().await.unwrap();
        assert_eq!(report.verified, 10);
        assert!(report.first_break.is_none());
    })
    .await;
}

/// On PostgreSQL the entries travel as a dollar-quoted literal in the same round trip as the
/// COMMIT: quotes, backslashes and dollar-quote look-alikes in their text must arrive verbatim,
/// and nothing in them may end the literal early.
#[tokio::test]
async fn entries_with_quotes_and_dollar_signs_are_stored_verbatim() {
    each_backend(|store, backend| async move {
        let t = store.create_tenant(&system(), "quoted").await.unwrap();
        let c = ctx(&t.id);
        let nasty = [
            "it's",
            "back\\slash \\' ''",
            "$cflow$",
            "ends with $cflow",
            "$cflow$'); DROP TABLE audit; --",
            "$$ $cflow1$ $cflow1 $",
            "ünïcödé ✓ 🦀",
        ];
        // One by one, then all at once: the writer then seals several in one batch, whose
        // details travel as one array of literals, each with its own tag.
        for round in 0..2 {
            let appends = nasty.iter().enumerate().map(|(i, s)| {
                let (store, c) = (&store, &c);
                async move {
                    let detail = json!({ "i": i, "round": round, "text": s });
                    store
                        .audit_append(c, denied_read(format!("memory/{s}"), detail))
                        .await
                }
            });
            if round == 0 {
                for a in appends {
                    a.await.unwrap();
                }
            } else {
                for r in futures_util::future::join_all(appends).await {
                    r.unwrap();
                }
            }
        }
        let all = first_entries(&store).await;
        let mut got: Vec<String> = all
            .iter()
            .filter(|e| e.action == "memory.read")
            .map(|e| format!("{} {}", e.resource, e.detail))
            .collect();
        let mut want: Vec<String> = (0..2)
            .flat_map(|round| {
                nasty.iter().enumerate().map(move |(i, s)| {
                    let detail = json!({ "i": i, "round": round, "text": s });
                    format!("memory/{s} {detail}")
                })
            })
            .collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{backend:?}");
        let report = store.audit_verify().await.unwrap();
        assert_eq!(report.verified, all.len() as u64);
        assert!(report.first_break.is_none());
    })
    .await;
}

#[tokio::test]
async fn the_database_refuses_to_change_the_ledger() {
    each_backend_url(|store, backend, url| async move {
        tenant(&store, "x").await;
        for sql in [
            "UPDATE audit SET outcome = 'denied' WHERE seq = 1",
            "DELETE FROM audit WHERE seq = 1",
            "DELETE FROM audit",
        ] {
            let err = raw(backend, &url, sql).await.unwrap_err();
            assert!(
                err.to_string().contains("append-only"),
                "{backend:?}: {sql}: {err}"
            );
        }
        if backend == Backend::Postgres {
            let err = raw(backend, &url, "TRUNCATE audit").await.unwrap_err();
            assert!(err.to_string().contains("append-only"), "{err}");
        }
        let report = store.audit_verify().await.unwrap();
        assert_eq!((report.verified, report.first_break.is_none()), (1, true));
    })
    .await;
}

#[tokio::test]
async fn tampering_behind_the_guard_is_found() {
    each_backend_url(|store, backend, url| async move {
        let t = tenant(&store, "tamper").await;
        for i in 0..4 {
            store
                .memory_put(&ctx(&t), &t, put("ns", &format!("k{i}"), json!(i)))
                .await
                .unwrap();
        }
        // An attacker with database access removes the guard and rewrites entry 3.
        raw(backend, &url, "DROP TRIGGER audit_no_update ON audit")
            .await
            .or(raw(backend, &url, "DROP TRIGGER audit_no_update").await)
            .unwrap();
        raw(
            backend,
            &url,
            "UPDATE audit SET outcome = 'denied' WHERE seq = 3",
        )
        .await
        .unwrap();
        let report = store.audit_verify().await.unwrap();
        assert_eq!(report.verified, 2, "{backend:?}");
        let (seq, why) = report.first_break.expect("a break");
        assert_eq!(seq, 3);
        assert!(matches!(why, Break::HashMismatch { .. }), "{why:?}");

        // Rewriting its hash too moves the break to the next entry, which no longer links.
        let entry = store
            .audit_list(&AuditQuery::default(), &page(10, None))
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| e.seq == 3)
            .unwrap();
        let rehashed = cflow_core::audit::entry_hash(&entry.prev_hash, &entry);
        raw(
            backend,
            &url,
            &format!("UPDATE audit SET hash = '{rehashed}' WHERE seq = 3"),
        )
        .await
        .unwrap();
        let (seq, why) = store.audit_verify().await.unwrap().first_break.unwrap();
        assert_eq!(seq, 4);
        assert!(matches!(why, Break::PrevHashMismatch { .. }), "{why:?}");

        // Detail that is no longer JSON is reported as a break, not an error.
        raw(
            backend,
            &url,
            "UPDATE audit SET detail = 'not json' WHERE seq = 2",
        )
        .await
        .unwrap();
        let (seq, _) = store.audit_verify().await.unwrap().first_break.unwrap();
        assert_eq!(seq, 2);
    })
    .await;
}

#[tokio::test]
async fn list_filters_by_tenant_and_time_and_pages() {
    each_backend(|store, backend| async move {
        let a = tenant(&store, "la").await;
        let b = tenant(&store, "lb").await;
        for i in 0..5 {
            store
                .memory_put(&ctx(&a), &a, put("ns", &format!("a{i}"), json!(i)))
                .await
                .unwrap();
            store
                .memory_put(&ctx(&b), &b, put("ns", &format!("b{i}"), json!(i)))
                .await
                .unwrap();
        }
        let first_half = store
            .audit_list(&AuditQuery::default(), &page(1000, None))
            .await
            .unwrap()
            .items;
        let mid = first_half.last().unwrap().at + 1;
        // Wait for the clock to pass `mid` so that later entries are stamped after it.
        while now() <= mid {
            tokio::task::yield_now().await;
        }
        for i in 5..8 {
            store
                .memory_put(&ctx(&a), &a, put("ns", &format!("a{i}"), json!(i)))
                .await
                .unwrap();
        }
        store
            .memory_put(&ctx(&b), &b, put("ns", "late", json!(1)))
            .await
            .unwrap();

        let collect = |q: AuditQuery| {
            let store = store.clone();
            async move {
                let mut out = Vec::new();
                let mut cursor = None;
                loop {
                    let p = store.audit_list(&q, &page(3, cursor)).await.unwrap();
                    assert!(p.items.len() <= 3);
                    out.extend(p.items);
                    match p.next_cursor {
                        Some(c) => cursor = Some(c),
                        None => return out,
                    }
                }
            }
        };
        let of_a = collect(AuditQuery {
            tenant_id: Some(a.clone()),
            since: None,
        })
        .await;
        // The tenant's creation (by the platform) is its first entry, then its 8 writes.
        assert_eq!(of_a.len(), 9, "{backend:?}");
        assert!(
            of_a.iter()
                .all(|e| e.tenant_id.as_deref() == Some(a.as_str()))
        );
        assert!(of_a.windows(2).all(|w| w[0].seq < w[1].seq));

        let recent = collect(AuditQuery {
            tenant_id: None,
            since: Some(mid),
        })
        .await;
        assert_eq!(recent.len(), 4, "{backend:?}");
        assert!(recent.iter().all(|e| e.at >= mid));
        let recent_a = collect(AuditQuery {
            tenant_id: Some(a.clone()),
            since: Some(mid),
        })
        .await;
        assert_eq!(
            recent_a
                .iter()
                .map(|e| e.resource.as_str())
                .collect::<Vec<_>>(),
            ["memory/ns/a5", "memory/ns/a6", "memory/ns/a7"]
        );
        let future = collect(AuditQuery {
            tenant_id: None,
            since: Some(now() + 3_600_000),
        })
        .await;
        assert!(future.is_empty());

        let err = store
            .audit_list(
                &AuditQuery::default(),
                &page(3, Some(crate::tenants_cursor())),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidCursor), "{err}");
    })
    .await;
}
