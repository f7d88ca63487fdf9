//! Tenants: creation, name conflicts, lookup and pagination, and their model providers.

use cflow_store::Error;

use crate::{each_backend, page, system};

#[tokio::test]
async fn create_get_and_conflict() {
    each_backend(|store, backend| async move {
        let t = store.create_tenant(&system(), "acme").await.unwrap();
        assert!(
            uuid::Uuid::parse_str(&t.id).is_ok(),
            "ids are UUIDs: {}",
            t.id
        );
        assert_eq!(t.name, "acme");
        assert!(t.created_at > 0);
        assert_eq!(store.get_tenant(&t.id).await.unwrap().as_ref(), Some(&t));
        assert_eq!(store.get_tenant("acme").await.unwrap().as_ref(), Some(&t));
        assert_eq!(store.get_tenant("nope").await.unwrap(), None);

        let err = store.create_tenant(&system(), "acme").await.unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{backend:?}: {err}");
        let all = store.list_tenants(&page(100, None)).await.unwrap();
        assert_eq!(all.items, vec![t.clone()], "a conflict creates nothing");

        for bad in ["", "-x", "a b", "a/b"] {
            let err = store.create_tenant(&system(), bad).await.unwrap_err();
            assert!(
                matches!(err, Error::Invalid(ref v) if v.field == "name"),
                "{bad:?}: {err}"
            );
        }
        assert_eq!(
            store
                .list_tenants(&page(100, None))
                .await
                .unwrap()
                .items
                .len(),
            1
        );
    })
    .await;
}

#[tokio::test]
async fn an_id_match_wins_over_a_name_match() {
    each_backend(|store, _| async move {
        let a = store.create_tenant(&system(), "first").await.unwrap();
        // A tenant whose name is the other tenant's id.
        let b = store.create_tenant(&system(), &a.id).await.unwrap();
        assert_eq!(store.get_tenant(&a.id).await.unwrap().unwrap().id, a.id);
        assert_eq!(store.get_tenant(&b.id).await.unwrap().unwrap().id, b.id);
    })
    .await;
}

#[tokio::test]
async fn list_pages_through_tenants_in_name_order() {
    each_backend(|store, backend| async move {
        let names = ["delta", "alpha", "echo", "charlie", "bravo"];
        for n in names {
            store.create_tenant(&system(), n).await.unwrap();
        }
        let mut seen = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let p = store.list_tenants(&page(2, cursor)).await.unwrap();
            pages += 1;
            assert!(p.items.len() <= 2);
            seen.extend(p.items.into_iter().map(|t| t.name));
            match p.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(
            seen,
            ["alpha", "bravo", "charlie", "delta", "echo"],
            "{backend:?}"
        );
        assert_eq!(pages, 3);
        // Limit 0 means the default, which holds them all.
        let p = store.list_tenants(&page(0, None)).await.unwrap();
        assert_eq!(p.items.len(), 5);
        assert!(p.next_cursor.is_none());

        for bad in ["zz", "00", &hex_of("k:whatever")] {
            let err = store
                .list_tenants(&page(2, Some(bad.to_string())))
                .await
                .unwrap_err();
            assert!(matches!(err, Error::InvalidCursor), "{bad}: {err}");
        }
    })
    .await;
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn tenant_llm_providers_are_set_cleared_and_audited() {
    use cflow_store::AuditQuery;
    use serde_json::json;
    crate::each_backend(|store, _| async move {
        let t = crate::tenant(&store, "llm").await;
        let other = crate::tenant(&store, "llm-other").await;
        assert_eq!(store.tenant_llm(&t).await.unwrap(), None);
        let v = json!([{"name": "main", "kind": "anthropic", "api_key_secret": "K"}]);
        store
            .set_tenant_llm(&crate::ctx(&t), &t, Some(v.clone()))
            .await
            .unwrap();
        assert_eq!(store.tenant_llm(&t).await.unwrap(), Some(v));
        assert_eq!(store.tenant_llm(&other).await.unwrap(), None);
        store
            .set_tenant_llm(&crate::ctx(&t), &t, None)
            .await
            .unwrap();
        assert_eq!(store.tenant_llm(&t).await.unwrap(), None);
        let err = store
            .set_tenant_llm(&crate::ctx(&t), "no-such-tenant", Some(json!([])))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        let err = store.tenant_llm("no-such-tenant").await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        let q = AuditQuery {
            tenant_id: Some(t.clone()),
            since: None,
        };
        let entries = store
            .audit_list(&q, &crate::page(1000, None))
            .await
            .unwrap()
            .items;
        let sets: Vec<_> = entries
            .iter()
            .filter(|e| e.action == "tenant.llm" && e.outcome == "success")
            .collect();
        assert_eq!(sets.len(), 2);
        assert!(
            sets.iter()
                .any(|e| e.detail.to_string().contains("api_key_secret"))
        );
    })
    .await;
}

#[tokio::test]
async fn tenant_claude_policy_is_set_cleared_and_audited() {
    use cflow_store::AuditQuery;
    use serde_json::json;
    crate::each_backend(|store, _| async move {
        let t = crate::tenant(&store, "claude").await;
        let other = crate::tenant(&store, "claude-other").await;
        assert_eq!(store.tenant_claude_policy(&t).await.unwrap(), None);
        let v = json!({"deny_tools": ["WebFetch"], "fail": "closed"});
        store
            .set_tenant_claude_policy(&crate::ctx(&t), &t, Some(v.clone()))
            .await
            .unwrap();
        assert_eq!(store.tenant_claude_policy(&t).await.unwrap(), Some(v));
        assert_eq!(store.tenant_claude_policy(&other).await.unwrap(), None);
        // The other settings of the tenant are separate columns.
        assert_eq!(store.tenant_llm(&t).await.unwrap(), None);
        store
            .set_tenant_claude_policy(&crate::ctx(&t), &t, None)
            .await
            .unwrap();
        assert_eq!(store.tenant_claude_policy(&t).await.unwrap(), None);
        let err = store
            .set_tenant_claude_policy(&crate::ctx(&t), "no-such-tenant", Some(json!({})))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        let q = AuditQuery {
            tenant_id: Some(t.clone()),
            since: None,
        };
        let entries = store
            .audit_list(&q, &crate::page(1000, None))
            .await
            .unwrap()
            .items;
        let sets: Vec<_> = entries
            .iter()
            .filter(|e| e.action == "tenant.claude_policy" && e.outcome == "success")
            .collect();
        assert_eq!(sets.len(), 2);
        assert!(sets[0].detail.to_string().contains("WebFetch"));
    })
    .await;
}
