//! Secrets: sealed values stored per tenant and name, replaced in place, listed by name,
//! deleted; every write audited with the name and never the value; tenants kept apart.

use cflow_store::{AuditQuery, Error, SealedSecret};

use crate::{ctx, each_backend, page, tenant};

fn sealed(tag: u8) -> SealedSecret {
    SealedSecret {
        nonce: vec![tag; 12],
        ciphertext: vec![tag ^ 0x5a; 40],
    }
}

#[tokio::test]
async fn put_list_get_delete_and_audit() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "sec").await;
        let other = tenant(&store, "sec-other").await;
        let first = store
            .secret_put(&ctx(&t), &t, "B_TOKEN", sealed(1))
            .await
            .unwrap();
        assert_eq!(first.name, "B_TOKEN");
        assert_eq!(first.created_at, first.updated_at);
        store
            .secret_put(&ctx(&t), &t, "A_TOKEN", sealed(2))
            .await
            .unwrap();
        let replaced = store
            .secret_put(&ctx(&t), &t, "B_TOKEN", sealed(3))
            .await
            .unwrap();
        assert_eq!(replaced.created_at, first.created_at, "{backend:?}");
        assert!(replaced.updated_at >= first.updated_at);

        let names: Vec<String> = store
            .secret_list(&t)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(names, ["A_TOKEN", "B_TOKEN"]);
        assert_eq!(
            store.secret_get(&t, "B_TOKEN").await.unwrap(),
            Some(sealed(3))
        );
        assert_eq!(store.secret_all(&t).await.unwrap().len(), 2);
        assert!(store.secret_tenants().await.unwrap().contains(&t));

        // Another tenant sees and deletes nothing of it.
        assert!(store.secret_list(&other).await.unwrap().is_empty());
        assert_eq!(store.secret_get(&other, "B_TOKEN").await.unwrap(), None);
        let err = store
            .secret_delete(&ctx(&other), &other, "B_TOKEN")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{backend:?}: {err}");

        let err = store
            .secret_put(&ctx(&t), &t, "bad name", sealed(4))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Invalid(ref v) if v.field == "name"),
            "{err}"
        );

        store.secret_delete(&ctx(&t), &t, "A_TOKEN").await.unwrap();
        let err = store
            .secret_delete(&ctx(&t), &t, "A_TOKEN")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)));
        assert_eq!(store.secret_list(&t).await.unwrap().len(), 1);

        let entries = store
            .audit_list(
                &AuditQuery {
                    tenant_id: Some(t.clone()),
                    since: None,
                },
                &page(100, None),
            )
            .await
            .unwrap()
            .items;
        let secret_entries: Vec<_> = entries
            .iter()
            .filter(|e| e.action.starts_with("secret."))
            .map(|e| (e.action.as_str(), e.resource.as_str(), e.outcome.as_str()))
            .collect();
        assert_eq!(
            secret_entries,
            [
                ("secret.put", "secret/B_TOKEN", "success"),
                ("secret.put", "secret/A_TOKEN", "success"),
                ("secret.put", "secret/B_TOKEN", "success"),
                ("secret.delete", "secret/A_TOKEN", "success"),
                ("secret.delete", "secret/A_TOKEN", "not_found"),
            ],
            "{backend:?}"
        );
        for e in entries.iter().filter(|e| e.action.starts_with("secret.")) {
            let detail = e.detail.to_string();
            // The sealed bytes (0x5a ^ tag) never reach the ledger, not even encoded.
            assert!(
                !detail.contains("ciphertext") && !detail.contains("nonce"),
                "{detail}"
            );
        }
        assert!(store.audit_verify().await.unwrap().first_break.is_none());
    })
    .await;
}
