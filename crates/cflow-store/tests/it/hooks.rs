//! Hooks and their outbox: creation and deletion audited, names unique per tenant; enqueuing
//! the same (hook, event) twice queues it once; a claim leases a delivery so that a second claim
//! does not take it; a result is fenced by the lease; a dead delivery is audited, listed, and
//! re-queued; tenants are kept apart.

use cflow_store::{AuditQuery, Error, NewDelivery, NewHook, SendResult};
use serde_json::json;

use crate::{ctx, each_backend, now_us, page, tenant};

fn new_hook(name: &str) -> NewHook {
    NewHook {
        name: name.to_string(),
        scope: "tenant".to_string(),
        scope_id: None,
        events: vec!["task.*".to_string()],
        kind: "command".to_string(),
        config: json!({"command": "true", "timeout_seconds": 10, "max_attempts": 3}),
        enabled: true,
    }
}

fn delivery(hook: &str, event: &str) -> NewDelivery {
    NewDelivery {
        hook_id: hook.to_string(),
        event_id: event.to_string(),
        event_type: "task.failed".to_string(),
        payload: json!({"id": event}),
    }
}

#[tokio::test]
async fn hooks_and_the_outbox() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "hk").await;
        let other = tenant(&store, "hk-other").await;
        let hook = store
            .hook_create(&ctx(&t), &t, new_hook("h1"))
            .await
            .unwrap();
        assert_eq!(hook.events, ["task.*"]);
        assert_eq!(hook.created_by.as_deref(), Some("tester"));
        let dup = store
            .hook_create(&ctx(&t), &t, new_hook("h1"))
            .await
            .unwrap_err();
        assert!(matches!(dup, Error::Conflict(_)), "{backend:?}: {dup}");
        assert_eq!(store.hook_list(&t).await.unwrap().len(), 1);
        assert!(store.hook_list(&other).await.unwrap().is_empty());
        assert_eq!(store.hook_get(&other, &hook.id).await.unwrap(), None);

        // Idempotent enqueue; a delivery for another tenant's hook is not queued.
        let n = store
            .hook_enqueue(&t, vec![delivery(&hook.id, "e1"), delivery(&hook.id, "e2")])
            .await
            .unwrap();
        assert_eq!(n, 2);
        let n = store
            .hook_enqueue(&t, vec![delivery(&hook.id, "e1")])
            .await
            .unwrap();
        assert_eq!(n, 0, "{backend:?}: the same (hook, event) is queued once");
        let n = store
            .hook_enqueue(&other, vec![delivery(&hook.id, "e3")])
            .await
            .unwrap();
        assert_eq!(n, 0, "a tenant cannot queue for another's hook");

        // A claim leases; a second claim does not take what the first holds.
        let first = store.hook_claim(1, 60_000).await.unwrap();
        assert_eq!(first.len(), 1);
        let second = store.hook_claim(10, 60_000).await.unwrap();
        assert_eq!(second.len(), 1, "{backend:?}");
        assert_ne!(first[0].id, second[0].id);
        assert!(store.hook_claim(10, 60_000).await.unwrap().is_empty());

        // Results are fenced by the lease.
        let mut stale = first[0].clone();
        stale.claimed_until = Some(1);
        let fenced = store
            .hook_finish(&stale, SendResult::Delivered { status: Some(200) })
            .await
            .unwrap();
        assert_eq!(fenced, None, "a lapsed claim changes nothing");
        let done = store
            .hook_finish(&first[0], SendResult::Delivered { status: Some(200) })
            .await
            .unwrap()
            .unwrap();
        assert_eq!((done.state.as_str(), done.attempts), ("delivered", 1));
        let dead = store
            .hook_finish(
                &second[0],
                SendResult::Dead {
                    status: Some(500),
                    error: "HTTP 500".into(),
                },
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(dead.state, "dead");
        assert!(store.hook_dead_count().await.unwrap() >= 1);
        let listed = store
            .hook_deliveries(&t, &hook.id, Some("dead"), &page(10, None))
            .await
            .unwrap();
        assert_eq!(listed.items.len(), 1);
        assert!(
            store
                .hook_deliveries(&other, &hook.id, None, &page(10, None))
                .await
                .unwrap()
                .items
                .is_empty()
        );

        // Re-queue: only the owner's, only a dead one.
        let err = store
            .hook_requeue(&ctx(&other), &other, &dead.id)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)));
        let err = store
            .hook_requeue(&ctx(&t), &t, &done.id)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::State(_)), "{err}");
        let again = store.hook_requeue(&ctx(&t), &t, &dead.id).await.unwrap();
        assert_eq!((again.state.as_str(), again.attempts), ("pending", 0));
        let reclaimed = store.hook_claim(10, 60_000).await.unwrap();
        assert_eq!(reclaimed.len(), 1);
        assert_eq!(reclaimed[0].id, dead.id);
        let retry_at = reclaimed[0].next_attempt_at + 3_600_000;
        let later = store
            .hook_finish(
                &reclaimed[0],
                SendResult::Retry {
                    at: retry_at,
                    status: None,
                    error: "refused".into(),
                },
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!((later.state.as_str(), later.attempts), ("pending", 1));
        assert_eq!(store.hook_next_due().await.unwrap(), Some(retry_at));
        assert!(
            store.hook_claim(10, 60_000).await.unwrap().is_empty(),
            "not due yet"
        );

        // Deleting the hook takes its deliveries; another tenant cannot delete it.
        let err = store
            .hook_delete(&ctx(&other), &other, &hook.id)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)));
        store.hook_delete(&ctx(&t), &t, &hook.id).await.unwrap();
        assert!(store.hook_delivery(&t, &dead.id).await.unwrap().is_none());

        let entries = store
            .audit_list(
                &AuditQuery {
                    tenant_id: Some(t.clone()),
                    since: None,
                },
                &page(1000, None),
            )
            .await
            .unwrap();
        let actions: Vec<(&str, &str)> = entries
            .items
            .iter()
            .map(|e| (e.action.as_str(), e.outcome.as_str()))
            .collect();
        for want in [
            ("hook.create", "success"),
            ("hook.create", "conflict"),
            ("hook.dead", "success"),
            ("hook.retry", "success"),
            ("hook.retry", "conflict"),
            ("hook.delete", "success"),
        ] {
            assert!(
                actions.contains(&want),
                "{backend:?}: {want:?} in {actions:?}"
            );
        }
    })
    .await;
}

/// A hook records when it was last switched on and off (µs), the window the dispatcher matches
/// events against; setting the state it already has moves neither time.
#[tokio::test]
async fn a_hook_records_when_it_was_switched_on_and_off() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "hk-switch").await;
        let before = now_us();
        let on = store
            .hook_create(&ctx(&t), &t, new_hook("on"))
            .await
            .unwrap();
        let on_since = on.enabled_since.expect("created on: on since its creation");
        assert!(before <= on_since && on_since <= now_us(), "{backend:?}");
        assert_eq!(on.disabled_since, None);
        assert_eq!(
            store.hook_get(&t, &on.id).await.unwrap().as_ref(),
            Some(&on)
        );
        assert!(on.was_on_at(on_since) && !on.was_on_at(on_since - 1));

        let mut off_hook = new_hook("off");
        off_hook.enabled = false;
        let off = store.hook_create(&ctx(&t), &t, off_hook).await.unwrap();
        assert_eq!((off.enabled_since, off.disabled_since), (None, None));
        assert!(!off.was_on_at(now_us()), "created off: never on");

        // Off: the window closes; an event from inside it still counts as on.
        let switched = store
            .hook_set_enabled(&ctx(&t), &t, &on.id, false)
            .await
            .unwrap();
        let off_since = switched.disabled_since.expect("switched off");
        assert_eq!(switched.enabled_since, Some(on_since));
        assert!(on_since <= off_since, "{backend:?}");
        assert!(switched.was_on_at(off_since - 1) || off_since == on_since);
        assert!(!switched.was_on_at(off_since));
        let same = store
            .hook_set_enabled(&ctx(&t), &t, &on.id, false)
            .await
            .unwrap();
        assert_eq!(
            same.disabled_since,
            Some(off_since),
            "already off: unchanged"
        );
        assert_eq!(store.hook_get(&t, &on.id).await.unwrap(), Some(same));

        // On again: a new window from now; the old one is forgotten.
        let again = store
            .hook_set_enabled(&ctx(&t), &t, &on.id, true)
            .await
            .unwrap();
        let again_since = again.enabled_since.unwrap();
        assert!(again_since >= off_since);
        assert_eq!(again.disabled_since, None);
        assert!(again.was_on_at(again_since) && !again.was_on_at(again_since - 1));
        assert_eq!(store.hook_get(&t, &on.id).await.unwrap(), Some(again));
    })
    .await;
}
