//! Full-text search: matching every term, ranking, namespace filter, tenancy and expiry.

use cflow_store::MemoryPut;
use serde_json::json;

use crate::{ctx, each_backend, now, put, tenant};

fn terms(q: &str) -> Vec<String> {
    cflow_core::search::terms(q).unwrap()
}

#[tokio::test]
async fn every_term_must_match_and_more_matches_rank_first() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "search").await;
        let c = ctx(&t);
        store
            .memory_put(
                &c,
                &t,
                put("ops", "once", json!("deploy the gateway today")),
            )
            .await
            .unwrap();
        store
            .memory_put(
                &c,
                &t,
                put(
                    "ops",
                    "thrice",
                    json!({"text": "deploy deploy deploy gateway"}),
                ),
            )
            .await
            .unwrap();
        store
            .memory_put(&c, &t, put("ops", "unrelated", json!("lunch menu")))
            .await
            .unwrap();

        let hits = store
            .memory_search(&t, &terms("deploy"), None, now(), 10)
            .await
            .unwrap();
        let keys: Vec<_> = hits.iter().map(|h| h.entry.key.as_str()).collect();
        assert_eq!(keys, ["thrice", "once"], "{backend:?}");
        assert!(hits[0].score > hits[1].score, "{backend:?}: {hits:?}");

        let hits = store
            .memory_search(&t, &terms("deploy today"), None, now(), 10)
            .await
            .unwrap();
        assert_eq!(
            hits.iter()
                .map(|h| h.entry.key.as_str())
                .collect::<Vec<_>>(),
            ["once"]
        );
        assert!(
            store
                .memory_search(&t, &terms("deploy pizza"), None, now(), 10)
                .await
                .unwrap()
                .is_empty()
        );

        // Keys and tags are searchable; the whole entry comes back.
        store
            .memory_put(
                &c,
                &t,
                MemoryPut {
                    tags: vec!["urgent".into()],
                    ..put("ops", "runbook_v2", json!(1))
                },
            )
            .await
            .unwrap();
        let hits = store
            .memory_search(&t, &terms("urgent"), None, now(), 10)
            .await
            .unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].entry.tags, ["urgent"]);
        let hits = store
            .memory_search(&t, &terms("runbook"), None, now(), 10)
            .await
            .unwrap();
        assert_eq!(hits.len(), 1, "{backend:?}");
        assert_eq!(hits[0].entry.value, json!(1));

        // Words that look like query syntax are plain words.
        let hits = store
            .memory_search(&t, &terms("NEAR OR deploy AND"), None, now(), 10)
            .await
            .unwrap();
        assert!(hits.is_empty());
        // The limit holds.
        assert_eq!(
            store
                .memory_search(&t, &terms("deploy"), None, now(), 1)
                .await
                .unwrap()
                .len(),
            1
        );
        // Updating an entry re-indexes it.
        store
            .memory_put(&c, &t, put("ops", "thrice", json!("nothing here")))
            .await
            .unwrap();
        let hits = store
            .memory_search(&t, &terms("deploy"), None, now(), 10)
            .await
            .unwrap();
        assert_eq!(
            hits.iter()
                .map(|h| h.entry.key.as_str())
                .collect::<Vec<_>>(),
            ["once"]
        );
        store
            .memory_delete(&c, &t, "ops", "once", cflow_store::Precondition::None)
            .await
            .unwrap();
        assert!(
            store
                .memory_search(&t, &terms("deploy"), None, now(), 10)
                .await
                .unwrap()
                .is_empty()
        );
    })
    .await;
}

#[tokio::test]
async fn the_text_inside_the_json_is_indexed_not_its_source() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "json").await;
        let c = ctx(&t);
        let value = json!({"fieldname": "first line\nsecond\tline \"quoted\"", "n": 4242, "deep": [{"x": "buried"}]});
        store.memory_put(&c, &t, put("ns", "doc", value.clone())).await.unwrap();
        for (q, found) in [
            ("second", true),
            ("quoted", true),
            ("4242", true),
            ("buried", true),
            ("nsecond", false),
            ("fieldname", false),
        ] {
            let hits = store.memory_search(&t, &terms(q), None, now(), 10).await.unwrap();
            assert_eq!(hits.len(), usize::from(found), "{backend:?}: {q}");
        }
        // A NUL character is valid JSON text and must not break the write or the index.
        let nul = json!("before\u{0}after words");
        let e = store.memory_put(&c, &t, put("ns", "nul", nul.clone())).await.unwrap();
        assert_eq!(e.value, nul);
        let got = store.memory_get(&t, "ns", "nul", now()).await.unwrap().unwrap();
        assert_eq!(got.value, nul, "{backend:?}");
        let hits = store.memory_search(&t, &terms("before"), None, now(), 10).await.unwrap();
        assert_eq!(hits.len(), 1, "{backend:?}");
        store.memory_put(&c, &t, put("ns", "nul", json!("replaced"))).await.unwrap();
        store.memory_delete(&c, &t, "ns", "doc", cflow_store::Precondition::None).await.unwrap();
        assert!(store.memory_search(&t, &terms("second"), None, now(), 10).await.unwrap().is_empty());
        assert!(store.memory_search(&t, &terms("before"), None, now(), 10).await.unwrap().is_empty());
        assert_eq!(store.memory_search(&t, &terms("replaced"), None, now(), 10).await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn namespace_filter_tenancy_and_expiry() {
    each_backend(|store, backend| async move {
        let a = tenant(&store, "sa").await;
        let b = tenant(&store, "sb").await;
        for ns in ["proj", "proj/web", "proj/web/deep", "project", "other"] {
            store
                .memory_put(&ctx(&a), &a, put(ns, "k", json!("needle")))
                .await
                .unwrap();
        }
        store
            .memory_put(&ctx(&b), &b, put("proj", "k", json!("needle")))
            .await
            .unwrap();
        let e = store
            .memory_put(
                &ctx(&a),
                &a,
                MemoryPut {
                    ttl_seconds: Some(30),
                    ..put("proj", "soon", json!("needle"))
                },
            )
            .await
            .unwrap();

        let ns_of = |hits: Vec<cflow_store::SearchHit>| {
            let mut v: Vec<_> = hits
                .into_iter()
                .map(|h| format!("{}:{}", h.entry.namespace, h.entry.key))
                .collect();
            v.sort();
            v
        };
        let all = store
            .memory_search(&a, &terms("needle"), None, now(), 100)
            .await
            .unwrap();
        assert_eq!(all.len(), 6, "{backend:?}");
        let under = store
            .memory_search(&a, &terms("needle"), Some("proj"), now(), 100)
            .await
            .unwrap();
        assert_eq!(
            ns_of(under),
            ["proj/web/deep:k", "proj/web:k", "proj:k", "proj:soon"],
            "{backend:?}"
        );
        let web = store
            .memory_search(&a, &terms("needle"), Some("proj/web"), now(), 100)
            .await
            .unwrap();
        assert_eq!(ns_of(web), ["proj/web/deep:k", "proj/web:k"]);

        let later = e.expires_at.unwrap();
        let after = store
            .memory_search(&a, &terms("needle"), Some("proj"), later, 100)
            .await
            .unwrap();
        assert_eq!(
            ns_of(after),
            ["proj/web/deep:k", "proj/web:k", "proj:k"],
            "expired hidden"
        );

        let theirs = store
            .memory_search(&b, &terms("needle"), None, now(), 100)
            .await
            .unwrap();
        assert_eq!(ns_of(theirs), ["proj:k"], "{backend:?}: only b's own");
        assert!(
            store
                .memory_search(&a, &[], None, now(), 10)
                .await
                .unwrap()
                .is_empty()
        );
    })
    .await;
}
