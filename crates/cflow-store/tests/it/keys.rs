//! API keys: creation, authentication in every outcome, listing, revocation, tenancy.

use std::time::Duration;

use cflow_core::Role;
use cflow_store::{AuthOutcome, Error, NewKey};

use crate::{ctx, each_backend, eventually, new_key, now, page, tenant};

#[tokio::test]
async fn create_and_authenticate_in_every_outcome() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "keys").await;
        let created = store
            .create_key(&ctx(&t), &t, new_key("ci-bot", Role::Developer))
            .await
            .unwrap();
        let k = &created.key;
        assert_eq!(
            (k.tenant_id.as_str(), k.name.as_str(), k.role),
            (t.as_str(), "ci-bot", Role::Developer)
        );
        assert!(created.token.starts_with(&format!("cflow_{}_", k.id)));
        assert_eq!(k.revoked_at, None);

        let n = now();
        match store.authenticate(&created.token, n).await.unwrap() {
            AuthOutcome::Valid(found) => {
                assert_eq!(found.id, k.id);
                assert_eq!(found.principal_id, k.principal_id);
            }
            other => panic!("{backend:?}: {other:?}"),
        }

        // Wrong secret, unknown id, malformed: all the same answer.
        let wrong_secret = format!("cflow_{}_{}", k.id, "0".repeat(64));
        let unknown_id = format!("cflow_{}_{}", "0".repeat(16), &created.token[23..]);
        for bad in [
            wrong_secret.as_str(),
            unknown_id.as_str(),
            "cflow_x",
            "",
            "Bearer abc",
        ] {
            assert_eq!(
                store.authenticate(bad, n).await.unwrap(),
                AuthOutcome::Invalid,
                "{bad:?}"
            );
        }

        // Expiry is checked against the time given.
        let expiring = store
            .create_key(
                &ctx(&t),
                &t,
                NewKey {
                    expires_at: Some(n + 60_000),
                    ..new_key("short", Role::Viewer)
                },
            )
            .await
            .unwrap();
        assert!(matches!(
            store.authenticate(&expiring.token, n).await.unwrap(),
            AuthOutcome::Valid(_)
        ));
        assert!(matches!(
            store
                .authenticate(&expiring.token, n + 60_000)
                .await
                .unwrap(),
            AuthOutcome::Expired(_)
        ));

        // Revocation takes effect at once.
        let revoked = store.revoke_key(&ctx(&t), &t, &k.id).await.unwrap();
        let first = revoked.revoked_at.expect("revoked_at set");
        match store.authenticate(&created.token, n).await.unwrap() {
            AuthOutcome::Revoked(found) => assert_eq!(found.revoked_at, Some(first)),
            other => panic!("{backend:?}: {other:?}"),
        }
        // Revoking twice keeps the first time.
        let again = store.revoke_key(&ctx(&t), &t, &k.id).await.unwrap();
        assert_eq!(again.revoked_at, Some(first));
    })
    .await;
}

#[tokio::test]
async fn keys_of_another_tenant_are_not_found() {
    each_backend(|store, backend| async move {
        let a = tenant(&store, "a").await;
        let b = tenant(&store, "b").await;
        let key_a = store
            .create_key(&ctx(&a), &a, new_key("a-admin", Role::Admin))
            .await
            .unwrap();

        let err = store
            .revoke_key(&ctx(&b), &b, &key_a.key.id)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{backend:?}: {err}");
        assert!(
            matches!(
                store.authenticate(&key_a.token, now()).await.unwrap(),
                AuthOutcome::Valid(_)
            ),
            "still valid"
        );
        assert!(
            store
                .list_keys(&b, &page(10, None))
                .await
                .unwrap()
                .items
                .is_empty()
        );

        let err = store
            .create_key(&ctx(&a), "no-such-tenant", new_key("x", Role::Viewer))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
    })
    .await;
}

#[tokio::test]
async fn list_keys_oldest_first_with_pages_and_duplicate_names() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "list").await;
        let mut ids = Vec::new();
        for i in 0..5 {
            // Names are labels: the same name twice is two keys.
            let name = if i < 2 {
                "same".to_string()
            } else {
                format!("key{i}")
            };
            let k = store
                .create_key(&ctx(&t), &t, new_key(&name, Role::Viewer))
                .await
                .unwrap();
            ids.push((k.key.created_at, k.key.id));
        }
        // Keys created in the same millisecond are listed in id order (ids are random), so the
        // expected order is by creation time, then id.
        ids.sort();
        let ids: Vec<String> = ids.into_iter().map(|(_, id)| id).collect();
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let p = store.list_keys(&t, &page(2, cursor)).await.unwrap();
            seen.extend(p.items.iter().map(|k| k.id.clone()));
            match p.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, ids, "{backend:?}: creation order");
        let err = store
            .list_keys(&t, &page(2, Some("nothex".into())))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidCursor));
    })
    .await;
}

#[tokio::test]
async fn project_scoped_keys_and_invalid_input() {
    each_backend(|store, _| async move {
        let t = tenant(&store, "proj").await;
        let k = store
            .create_key(
                &ctx(&t),
                &t,
                NewKey {
                    project: Some("web".into()),
                    ..new_key("web-dev", Role::Developer)
                },
            )
            .await
            .unwrap();
        assert_eq!(k.key.project.as_deref(), Some("web"));
        // A second key in the same project reuses the project.
        store
            .create_key(
                &ctx(&t),
                &t,
                NewKey {
                    project: Some("web".into()),
                    ..new_key("web-2", Role::Viewer)
                },
            )
            .await
            .unwrap();
        match store.authenticate(&k.token, now()).await.unwrap() {
            AuthOutcome::Valid(found) => assert_eq!(found.project.as_deref(), Some("web")),
            other => panic!("{other:?}"),
        }
        let err = store
            .create_key(&ctx(&t), &t, new_key("bad name", Role::Viewer))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Invalid(ref v) if v.field == "name"),
            "{err}"
        );
        let err = store
            .create_key(
                &ctx(&t),
                &t,
                NewKey {
                    project: Some("a/b".into()),
                    ..new_key("ok", Role::Viewer)
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Invalid(ref v) if v.field == "project"),
            "{err}"
        );
        assert_eq!(
            store
                .list_keys(&t, &page(10, None))
                .await
                .unwrap()
                .items
                .len(),
            2
        );
    })
    .await;
}

#[tokio::test]
async fn last_used_is_recorded_off_the_request_path() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "touch").await;
        let k = store
            .create_key(&ctx(&t), &t, new_key("used", Role::Viewer))
            .await
            .unwrap();
        assert_eq!(k.key.last_used_at, None);
        let at = now();
        assert!(matches!(
            store.authenticate(&k.token, at).await.unwrap(),
            AuthOutcome::Valid(_)
        ));
        let used = eventually("last_used_at", Duration::from_secs(10), || {
            let store = store.clone();
            let t = t.clone();
            async move {
                let keys = store.list_keys(&t, &page(10, None)).await.unwrap().items;
                keys[0].last_used_at
            }
        })
        .await;
        assert_eq!(used, at, "{backend:?}");
        // Touching is bookkeeping, not an audited change.
        let touches = store
            .audit_list(&Default::default(), &page(1000, None))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.action.contains("touch") || e.action.contains("auth"))
            .count();
        assert_eq!(touches, 0);
    })
    .await;
}
