//! Memory: versions, preconditions, TTL, delete, purge, listing and tenant isolation.

use std::time::Duration;

use cflow_store::{Error, MemoryPut, Precondition};
use serde_json::json;

use crate::{ctx, each_backend, eventually, now, page, put, system, tenant};

fn with(p: MemoryPut, precondition: Precondition) -> MemoryPut {
    MemoryPut { precondition, ..p }
}

#[tokio::test]
async fn put_get_and_versions() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "mem").await;
        let c = ctx(&t);
        let first = store
            .memory_put(
                &c,
                &t,
                MemoryPut {
                    tags: vec!["a".into(), "b c".into()],
                    ..put("notes", "plan", json!({"step": 1}))
                },
            )
            .await
            .unwrap();
        assert_eq!(first.version, 1, "{backend:?}");
        assert_eq!(first.created_at, first.updated_at);
        assert_eq!(first.expires_at, None);

        let got = store
            .memory_get(&t, "notes", "plan", now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, first);

        let second = store
            .memory_put(&c, &t, put("notes", "plan", json!("two")))
            .await
            .unwrap();
        let third = store
            .memory_put(&c, &t, put("notes", "plan", json!([3])))
            .await
            .unwrap();
        assert_eq!((second.version, third.version), (2, 3));
        assert_eq!(third.created_at, first.created_at, "created_at stays");
        assert!(third.updated_at >= first.updated_at);
        let got = store
            .memory_get(&t, "notes", "plan", now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.value, json!([3]));
        assert!(got.tags.is_empty(), "tags are replaced by each write");
        assert_eq!(
            store.memory_get(&t, "notes", "other", now()).await.unwrap(),
            None
        );
        assert_eq!(
            store.memory_get(&t, "other", "plan", now()).await.unwrap(),
            None
        );
    })
    .await;
}

#[tokio::test]
async fn if_match_and_if_none_match() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "cas").await;
        let c = ctx(&t);
        // If-Match on an absent key: nothing to match.
        let err = store
            .memory_put(
                &c,
                &t,
                with(put("ns", "k", json!(0)), Precondition::Version(1)),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::PreconditionFailed { current: None }),
            "{backend:?}: {err}"
        );
        assert_eq!(
            store.memory_get(&t, "ns", "k", now()).await.unwrap(),
            None,
            "nothing written"
        );

        // If-None-Match: * creates once.
        let v1 = store
            .memory_put(&c, &t, with(put("ns", "k", json!(1)), Precondition::Absent))
            .await
            .unwrap();
        assert_eq!(v1.version, 1);
        let err = store
            .memory_put(
                &c,
                &t,
                with(put("ns", "k", json!(99)), Precondition::Absent),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::PreconditionFailed { current: Some(1) }),
            "{err}"
        );

        // If-Match with the live version succeeds; a stale one fails and writes nothing.
        let v2 = store
            .memory_put(
                &c,
                &t,
                with(put("ns", "k", json!(2)), Precondition::Version(1)),
            )
            .await
            .unwrap();
        assert_eq!(v2.version, 2);
        let err = store
            .memory_put(
                &c,
                &t,
                with(put("ns", "k", json!(3)), Precondition::Version(1)),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::PreconditionFailed { current: Some(2) }),
            "{err}"
        );
        let live = store
            .memory_get(&t, "ns", "k", now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((live.version, live.value), (2, json!(2)));
    })
    .await;
}

#[tokio::test]
async fn expired_entries_vanish_at_once_and_are_purged() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "ttl").await;
        let c = ctx(&t);
        let e = store
            .memory_put(
                &c,
                &t,
                MemoryPut {
                    ttl_seconds: Some(60),
                    ..put("ns", "short", json!("x"))
                },
            )
            .await
            .unwrap();
        let expires = e.expires_at.expect("expires_at");
        assert!(expires >= e.updated_at + 60_000 && expires <= e.updated_at + 61_000);
        store
            .memory_put(&c, &t, put("ns", "forever", json!("y")))
            .await
            .unwrap();

        // Visible until it expires, invisible from that instant, for every kind of read.
        assert!(
            store
                .memory_get(&t, "ns", "short", expires - 1)
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            store
                .memory_get(&t, "ns", "short", expires)
                .await
                .unwrap()
                .is_none(),
            "{backend:?}"
        );
        let listed = store
            .memory_list(&t, "ns", "", expires, &page(10, None))
            .await
            .unwrap()
            .items;
        assert_eq!(
            listed.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
            ["forever"]
        );
        let hits = store
            .memory_search(&t, &["x".into()], None, expires, 10)
            .await
            .unwrap();
        assert!(hits.is_empty());

        // Purge deletes only what expired, and audits it per tenant.
        assert_eq!(store.memory_purge_expired(expires - 1).await.unwrap(), 0);
        assert_eq!(store.memory_purge_expired(expires).await.unwrap(), 1);
        assert_eq!(store.memory_purge_expired(expires + 1).await.unwrap(), 0);
        assert!(
            store
                .memory_get(&t, "ns", "forever", expires)
                .await
                .unwrap()
                .is_some()
        );
        let purges: Vec<_> = store
            .audit_list(&Default::default(), &page(1000, None))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.action == "memory.purge")
            .collect();
        assert_eq!(
            purges.len(),
            1,
            "only a purge that deleted something is audited"
        );
        assert_eq!(purges[0].tenant_id.as_deref(), Some(t.as_str()));
        assert_eq!(purges[0].detail["count"], json!(1));
    })
    .await;
}

#[tokio::test]
async fn an_expired_entry_counts_as_absent_and_versions_keep_growing() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "reborn").await;
        let c = ctx(&t);
        store
            .memory_put(&c, &t, put("ns", "k", json!(1)))
            .await
            .unwrap();
        let v2 = store
            .memory_put(
                &c,
                &t,
                MemoryPut {
                    ttl_seconds: Some(1),
                    ..put("ns", "k", json!(2))
                },
            )
            .await
            .unwrap();
        assert_eq!(v2.version, 2);
        // The writer judges expiry by its own clock, so wait (by polling) for real expiry.
        eventually("expiry", Duration::from_secs(10), || {
            let store = store.clone();
            let t = t.clone();
            async move {
                store
                    .memory_get(&t, "ns", "k", now())
                    .await
                    .unwrap()
                    .is_none()
                    .then_some(())
            }
        })
        .await;
        let err = store
            .memory_put(
                &c,
                &t,
                with(put("ns", "k", json!(0)), Precondition::Version(2)),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::PreconditionFailed { current: None }),
            "{backend:?}: {err}"
        );
        let err = store
            .memory_delete(&c, &t, "ns", "k", Precondition::None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        let v3 = store
            .memory_put(&c, &t, with(put("ns", "k", json!(3)), Precondition::Absent))
            .await
            .unwrap();
        assert_eq!(
            v3.version, 3,
            "an old If-Match can never match the new entry"
        );
        assert!(v3.created_at > v2.created_at, "a new life");
        assert_eq!(v3.expires_at, None);
    })
    .await;
}

#[tokio::test]
async fn delete_with_and_without_preconditions() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "del").await;
        let c = ctx(&t);
        store
            .memory_put(&c, &t, put("ns", "a", json!(1)))
            .await
            .unwrap();
        store
            .memory_put(&c, &t, put("ns", "a", json!(2)))
            .await
            .unwrap();

        let err = store
            .memory_delete(&c, &t, "ns", "a", Precondition::Version(1))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::PreconditionFailed { current: Some(2) }),
            "{backend:?}: {err}"
        );
        let err = store
            .memory_delete(&c, &t, "ns", "a", Precondition::Absent)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::PreconditionFailed { current: Some(2) }),
            "{err}"
        );
        assert!(
            store
                .memory_get(&t, "ns", "a", now())
                .await
                .unwrap()
                .is_some(),
            "still there"
        );

        store
            .memory_delete(&c, &t, "ns", "a", Precondition::Version(2))
            .await
            .unwrap();
        assert!(
            store
                .memory_get(&t, "ns", "a", now())
                .await
                .unwrap()
                .is_none()
        );
        let err = store
            .memory_delete(&c, &t, "ns", "a", Precondition::None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        let err = store
            .memory_delete(&c, &t, "ns", "a", Precondition::Version(2))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");

        store
            .memory_put(&c, &t, put("ns", "b", json!(1)))
            .await
            .unwrap();
        store
            .memory_delete(&c, &t, "ns", "b", Precondition::None)
            .await
            .unwrap();
        assert!(
            store
                .memory_get(&t, "ns", "b", now())
                .await
                .unwrap()
                .is_none()
        );
    })
    .await;
}

#[tokio::test]
async fn list_by_prefix_with_pages() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "list").await;
        let c = ctx(&t);
        for k in ["a1", "a2", "a3", "a4", "a5", "b1", "a", "ab/c", "é"] {
            store
                .memory_put(&c, &t, put("proj", k, json!(k)))
                .await
                .unwrap();
        }
        // Entries in other namespaces, including one below this one, are not listed.
        store
            .memory_put(&c, &t, put("proj/sub", "a9", json!(0)))
            .await
            .unwrap();
        store
            .memory_put(&c, &t, put("projx", "a8", json!(0)))
            .await
            .unwrap();

        let mut keys = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let p = store
                .memory_list(&t, "proj", "a", now(), &page(2, cursor))
                .await
                .unwrap();
            pages += 1;
            keys.extend(p.items.into_iter().map(|e| e.key));
            match p.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(
            keys,
            ["a", "a1", "a2", "a3", "a4", "a5", "ab/c"],
            "{backend:?}"
        );
        assert_eq!(pages, 4);

        let all = store
            .memory_list(&t, "proj", "", now(), &page(0, None))
            .await
            .unwrap();
        let all: Vec<_> = all.items.into_iter().map(|e| e.key).collect();
        assert_eq!(
            all,
            ["a", "a1", "a2", "a3", "a4", "a5", "ab/c", "b1", "é"],
            "byte order"
        );
        let none = store
            .memory_list(&t, "proj", "zz", now(), &page(10, None))
            .await
            .unwrap();
        assert!(none.items.is_empty() && none.next_cursor.is_none());
        // Prefixes are literal: LIKE wildcards mean nothing.
        let wild = store
            .memory_list(&t, "proj", "%", now(), &page(10, None))
            .await
            .unwrap();
        assert!(wild.items.is_empty());

        let err = store
            .memory_list(
                &t,
                "proj",
                "a",
                now(),
                &page(2, Some(crate::tenants_cursor())),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidCursor), "{err}");
    })
    .await;
}

#[tokio::test]
async fn another_tenant_cannot_see_overwrite_or_delete() {
    each_backend(|store, backend| async move {
        let a = tenant(&store, "owner").await;
        let b = tenant(&store, "other").await;
        let e = store
            .memory_put(&ctx(&a), &a, put("shared", "secret", json!("a's")))
            .await
            .unwrap();

        assert!(
            store
                .memory_get(&b, "shared", "secret", now())
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .memory_list(&b, "shared", "", now(), &page(10, None))
                .await
                .unwrap()
                .items
                .is_empty()
        );
        assert!(
            store
                .memory_search(&b, &["secret".into()], None, now(), 10)
                .await
                .unwrap()
                .is_empty()
        );
        let err = store
            .memory_delete(&ctx(&b), &b, "shared", "secret", Precondition::None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{backend:?}: {err}");
        let err = store
            .memory_put(
                &ctx(&b),
                &b,
                with(
                    put("shared", "secret", json!("b's")),
                    Precondition::Version(e.version),
                ),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::PreconditionFailed { current: None }),
            "{err}"
        );

        // The same namespace and key in another tenant is another entry.
        let mine = store
            .memory_put(&ctx(&b), &b, put("shared", "secret", json!("b's")))
            .await
            .unwrap();
        assert_eq!(mine.version, 1);
        let theirs = store
            .memory_get(&a, "shared", "secret", now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((theirs.version, theirs.value), (1, json!("a's")));

        // A tenant that does not exist cannot write at all.
        let err = store
            .memory_put(&system(), "no-such-tenant", put("ns", "k", json!(1)))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
    })
    .await;
}

#[tokio::test]
async fn invalid_writes_are_refused_and_write_nothing() {
    each_backend(|store, _| async move {
        let t = tenant(&store, "invalid").await;
        let c = ctx(&t);
        let cases = [
            (put("a//b", "k", json!(1)), "namespace"),
            (put("ns", "", json!(1)), "key"),
            (
                MemoryPut {
                    tags: vec![String::new()],
                    ..put("ns", "k", json!(1))
                },
                "tags[0]",
            ),
            (
                MemoryPut {
                    ttl_seconds: Some(0),
                    ..put("ns", "k", json!(1))
                },
                "ttl_seconds",
            ),
            (put("ns", "k", json!("x".repeat(1024 * 1024))), "value"),
        ];
        for (p, field) in cases {
            let err = store.memory_put(&c, &t, p).await.unwrap_err();
            assert!(
                matches!(err, Error::Invalid(ref v) if v.field == field),
                "{field}: {err}"
            );
        }
        assert!(
            store
                .memory_list(&t, "ns", "", now(), &page(10, None))
                .await
                .unwrap()
                .items
                .is_empty()
        );
    })
    .await;
}

/// Versions never repeat across a delete: a recreated entry counts on from its predecessor, so
/// an `If-Match` taken before the delete cannot match it (no ABA).
#[tokio::test]
async fn versions_never_repeat_across_deletes() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "aba").await;
        let c = ctx(&t);
        for want in [1, 2] {
            let e = store
                .memory_put(&c, &t, put("ns", "k", json!(want)))
                .await
                .unwrap();
            assert_eq!(e.version, want, "{backend:?}");
        }
        store
            .memory_delete(&c, &t, "ns", "k", Precondition::None)
            .await
            .unwrap();
        let e = store
            .memory_put(&c, &t, put("ns", "k", json!(3)))
            .await
            .unwrap();
        assert_eq!(e.version, 3, "{backend:?}: counts on after a delete");
        assert!(e.created_at >= e.updated_at, "a new life");
        let err = store
            .memory_put(
                &c,
                &t,
                with(put("ns", "k", json!(0)), Precondition::Version(2)),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::PreconditionFailed { current: Some(3) }),
            "{backend:?}: {err}"
        );

        // Deleted under If-Match and recreated under If-None-Match: still counting.
        store
            .memory_delete(&c, &t, "ns", "k", Precondition::Version(3))
            .await
            .unwrap();
        let e = store
            .memory_put(&c, &t, with(put("ns", "k", json!(4)), Precondition::Absent))
            .await
            .unwrap();
        assert_eq!(e.version, 4, "{backend:?}");
        let e = store
            .memory_put(
                &c,
                &t,
                with(put("ns", "k", json!(5)), Precondition::Version(4)),
            )
            .await
            .unwrap();
        assert_eq!(e.version, 5);

        // Another key, tenant or namespace has its own count.
        let other = store
            .memory_put(&c, &t, put("ns2", "k", json!(1)))
            .await
            .unwrap();
        assert_eq!(other.version, 1);
    })
    .await;
}

/// The same holds for many entries recreated at once (the writer's multi-row upsert).
#[tokio::test]
async fn versions_never_repeat_across_deletes_in_a_batch() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "abab").await;
        let c = ctx(&t);
        let keys: Vec<String> = (0..16).map(|i| format!("k{i}")).collect();
        for k in &keys {
            for v in 0..2 {
                store
                    .memory_put(&c, &t, put("ns", k, json!(v)))
                    .await
                    .unwrap();
            }
            store
                .memory_delete(&c, &t, "ns", k, Precondition::None)
                .await
                .unwrap();
        }
        let tasks: Vec<_> = keys
            .iter()
            .map(|k| {
                let (store, c, t, k) = (store.clone(), c.clone(), t.clone(), k.clone());
                tokio::spawn(async move {
                    store
                        .memory_put(&c, &t, put("ns", &k, json!("again")))
                        .await
                        .unwrap()
                })
            })
            .collect();
        for task in tasks {
            let e = task.await.unwrap();
            assert_eq!(e.version, 3, "{backend:?}: {}", e.key);
        }
    })
    .await;
}

/// A purged entry leaves its last version behind just like a deleted one.
#[tokio::test]
async fn versions_never_repeat_across_purges() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "abap").await;
        let c = ctx(&t);
        store
            .memory_put(&c, &t, put("ns", "k", json!(1)))
            .await
            .unwrap();
        let e = store
            .memory_put(
                &c,
                &t,
                MemoryPut {
                    ttl_seconds: Some(1),
                    ..put("ns", "k", json!(2))
                },
            )
            .await
            .unwrap();
        assert_eq!(e.version, 2);
        let expires = e.expires_at.unwrap();
        // Purge judges by the time given; the writer judges expiry by its own clock, so wait
        // for real expiry before writing again.
        assert_eq!(store.memory_purge_expired(expires).await.unwrap(), 1);
        eventually("expiry", Duration::from_secs(10), || async move {
            (now() > expires).then_some(())
        })
        .await;
        let e = store
            .memory_put(&c, &t, put("ns", "k", json!(3)))
            .await
            .unwrap();
        assert_eq!(e.version, 3, "{backend:?}: counts on after a purge");
        let err = store
            .memory_put(
                &c,
                &t,
                with(put("ns", "k", json!(0)), Precondition::Version(2)),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::PreconditionFailed { current: Some(3) }),
            "{backend:?}: {err}"
        );
    })
    .await;
}
