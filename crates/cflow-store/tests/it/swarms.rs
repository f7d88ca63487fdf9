//! Swarms and agents: creation, name conflicts, tenant isolation, lifecycle, capacity and audit.

use std::collections::BTreeMap;

use cflow_core::topology::Topology;
use cflow_store::{AgentState, AuditQuery, Error, NewAgent, NewSwarm, Store, SwarmState};

use crate::{ctx, each_backend, page, tenant};

pub fn new_swarm(name: &str, max_agents: i64) -> NewSwarm {
    NewSwarm {
        name: name.to_string(),
        topology: Topology::Hierarchical,
        project: None,
        max_agents,
        strategy: Default::default(),
        pools: Vec::new(),
    }
}

pub fn new_agent(agent_type: &str) -> NewAgent {
    NewAgent {
        agent_type: agent_type.to_string(),
        driver: "exec".to_string(),
        capabilities: vec!["rust".to_string()],
        labels: BTreeMap::from([("region".to_string(), "eu".to_string())]),
        sandbox: None,
    }
}

async fn actions(store: &Store, tenant_id: &str) -> Vec<(String, String)> {
    let q = AuditQuery {
        tenant_id: Some(tenant_id.to_string()),
        since: None,
    };
    let items = store.audit_list(&q, &page(1000, None)).await.unwrap().items;
    items.into_iter().map(|e| (e.action, e.outcome)).collect()
}

#[tokio::test]
async fn swarms_are_created_listed_and_isolated_by_tenant() {
    each_backend(|store, backend| async move {
        let a = tenant(&store, "a").await;
        let b = tenant(&store, "b").await;
        let s = store
            .create_swarm(&ctx(&a), &a, new_swarm("build", 4))
            .await
            .unwrap();
        assert_eq!(s.state, SwarmState::Active);
        assert_eq!(s.topology, Topology::Hierarchical);
        assert_eq!(store.get_swarm(&a, &s.id).await.unwrap().as_ref(), Some(&s));
        assert_eq!(
            store.get_swarm(&b, &s.id).await.unwrap(),
            None,
            "{backend:?}"
        );

        let err = store
            .create_swarm(&ctx(&a), &a, new_swarm("build", 4))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{backend:?}: {err}");
        // The same name in another tenant is fine.
        store
            .create_swarm(&ctx(&b), &b, new_swarm("build", 4))
            .await
            .unwrap();

        for (bad, field) in [
            (new_swarm("", 4), "name"),
            (new_swarm("ok", 0), "max_agents"),
            (
                NewSwarm {
                    project: Some("a b".into()),
                    ..new_swarm("ok", 1)
                },
                "project",
            ),
        ] {
            let err = store.create_swarm(&ctx(&a), &a, bad).await.unwrap_err();
            assert!(
                matches!(err, Error::Invalid(ref v) if v.field == field),
                "{err}"
            );
        }

        for i in 0..4 {
            store
                .create_swarm(&ctx(&a), &a, new_swarm(&format!("s{i}"), 1))
                .await
                .unwrap();
        }
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let p = store.list_swarms(&a, &page(2, cursor)).await.unwrap();
            seen.extend(p.items.into_iter().map(|s| s.name));
            match p.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, ["build", "s0", "s1", "s2", "s3"], "{backend:?}");
        assert_eq!(
            store
                .list_swarms(&b, &page(10, None))
                .await
                .unwrap()
                .items
                .len(),
            1
        );
        let err = store
            .list_swarms(&a, &page(2, Some(crate::tenants_cursor())))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidCursor));
    })
    .await;
}

#[tokio::test]
async fn swarm_lifecycle_is_audited_and_stop_is_final() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "life").await;
        let s = store
            .create_swarm(&ctx(&t), &t, new_swarm("life", 2))
            .await
            .unwrap();
        let p = store
            .set_swarm_state(&ctx(&t), &t, &s.id, SwarmState::Paused)
            .await
            .unwrap();
        assert_eq!(p.state, SwarmState::Paused);
        store
            .set_swarm_state(&ctx(&t), &t, &s.id, SwarmState::Active)
            .await
            .unwrap();
        store
            .set_swarm_state(&ctx(&t), &t, &s.id, SwarmState::Stopped)
            .await
            .unwrap();
        let err = store
            .set_swarm_state(&ctx(&t), &t, &s.id, SwarmState::Active)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::State(ref m) if m.contains("stopped")),
            "{err}"
        );
        assert_eq!(
            store.get_swarm(&t, &s.id).await.unwrap().unwrap().state,
            SwarmState::Stopped
        );
        let err = store
            .create_agent(&ctx(&t), &t, &s.id, new_agent("coder"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::State(ref m) if m.contains("stopped")),
            "{err}"
        );

        // Another tenant cannot touch it.
        let other = tenant(&store, "other").await;
        let err = store
            .set_swarm_state(&ctx(&other), &other, &s.id, SwarmState::Paused)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");

        let got = actions(&store, &t).await;
        let want = [
            ("swarm.create", "success"),
            ("swarm.pause", "success"),
            ("swarm.resume", "success"),
            ("swarm.stop", "success"),
            ("swarm.resume", "conflict"),
            ("agent.create", "conflict"),
        ];
        let got: Vec<(&str, &str)> = got
            .iter()
            .filter(|(a, _)| a != "tenant.create")
            .map(|(a, o)| (a.as_str(), o.as_str()))
            .collect();
        assert_eq!(got, want, "{backend:?}");
        assert!(store.audit_verify().await.unwrap().first_break.is_none());
    })
    .await;
}

#[tokio::test]
async fn agents_respect_capacity_and_tenancy() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "agents").await;
        let other = tenant(&store, "other").await;
        let s = store
            .create_swarm(&ctx(&t), &t, new_swarm("pool", 2))
            .await
            .unwrap();
        let a1 = store
            .create_agent(&ctx(&t), &t, &s.id, new_agent("coder"))
            .await
            .unwrap();
        assert_eq!(a1.state, AgentState::Starting);
        assert_eq!((a1.tasks_done, a1.failures, a1.busy_ms), (0, 0, 0));
        assert_eq!(a1.labels["region"], "eu");
        let a2 = store
            .create_agent(&ctx(&t), &t, &s.id, new_agent("tester"))
            .await
            .unwrap();
        let err = store
            .create_agent(&ctx(&t), &t, &s.id, new_agent("coder"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::State(ref m) if m.contains("full")),
            "{backend:?}: {err}"
        );

        let err = store
            .create_agent(&ctx(&other), &other, &s.id, new_agent("coder"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        assert_eq!(store.get_agent(&other, &a1.id).await.unwrap(), None);
        let err = store
            .set_agent_state(&ctx(&other), &other, &a1.id, AgentState::Stopped)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");

        for (bad, field) in [
            (
                NewAgent {
                    agent_type: "".into(),
                    ..new_agent("x")
                },
                "agent_type",
            ),
            (
                NewAgent {
                    driver: "a b".into(),
                    ..new_agent("x")
                },
                "driver",
            ),
            (
                NewAgent {
                    capabilities: vec!["".into()],
                    ..new_agent("x")
                },
                "capabilities",
            ),
            (
                NewAgent {
                    labels: BTreeMap::from([("k".into(), "a b".into())]),
                    ..new_agent("x")
                },
                "labels",
            ),
        ] {
            let err = store
                .create_agent(&ctx(&t), &t, &s.id, bad)
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::Invalid(ref v) if v.field == field),
                "{err}"
            );
        }

        let idle = store
            .set_agent_state(&ctx(&t), &t, &a1.id, AgentState::Idle)
            .await
            .unwrap();
        assert_eq!(idle.state, AgentState::Idle);
        assert_eq!(
            store.get_agent(&t, &a1.id).await.unwrap().unwrap().state,
            AgentState::Idle
        );
        let listed = store.list_agents(&t, &s.id, &page(1, None)).await.unwrap();
        assert_eq!(listed.items.len(), 1);
        let rest = store
            .list_agents(&t, &s.id, &page(1, listed.next_cursor))
            .await
            .unwrap();
        let mut ids = vec![listed.items[0].id.clone(), rest.items[0].id.clone()];
        ids.sort();
        let mut want = vec![a1.id.clone(), a2.id.clone()];
        want.sort();
        assert_eq!(ids, want, "{backend:?}");
        assert!(
            store
                .list_agents(&other, &s.id, &page(10, None))
                .await
                .unwrap()
                .items
                .is_empty()
        );
    })
    .await;
}

#[tokio::test]
async fn concurrent_agent_creations_never_overshoot_and_one_assignment_wins() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "race").await;
        let s = store
            .create_swarm(&ctx(&t), &t, new_swarm("race", 3))
            .await
            .unwrap();
        let mut calls = Vec::new();
        for _ in 0..12 {
            let (store, t, sid) = (store.clone(), t.clone(), s.id.clone());
            calls.push(tokio::spawn(async move {
                store
                    .create_agent(&ctx(&t), &t, &sid, new_agent("coder"))
                    .await
            }));
        }
        let mut made = Vec::new();
        for c in calls {
            if let Ok(a) = c.await.unwrap() {
                made.push(a);
            }
        }
        assert_eq!(made.len(), 3, "{backend:?}");

        let out = store
            .submit_tasks(&ctx(&t), &t, vec![crate::tasks::task("a", &[])])
            .await
            .unwrap();
        let mut calls = Vec::new();
        for (i, a) in made.iter().enumerate() {
            let (store, id, aid) = (store.clone(), out[0].id.clone(), a.id.clone());
            calls.push(tokio::spawn(async move {
                let w = format!("w{i}");
                store
                    .assign_task(&crate::system(), &id, &aid, &w, 30_000, crate::now())
                    .await
            }));
        }
        let mut won = 0;
        for c in calls {
            match c.await.unwrap() {
                Ok(a) => {
                    assert_eq!(a.epoch, 1);
                    won += 1;
                }
                Err(e) => assert!(matches!(e, Error::State(_)), "{e}"),
            }
        }
        assert_eq!(won, 1, "{backend:?}: exactly one assignment");
        assert_eq!(store.list_attempts(&t, &out[0].id).await.unwrap().len(), 1);
    })
    .await;
}
