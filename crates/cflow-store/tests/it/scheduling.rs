//! Scheduling data: swarm strategies and agent pools, tenant quotas, agent messages, preferred
//! agents, bulk lease extension and the reads the scheduler rebuilds from.

use std::collections::BTreeMap;

use cflow_core::balance::Strategy;
use cflow_core::task::TaskState;
use cflow_store::{
    AgentPool, AgentState, Error, NewMessage, NewSwarm, NewTask, OutcomeKind, ReadyCursor,
    SwarmState, TenantQuota,
};
use serde_json::json;

use crate::attempts::{LEASE, agent, get, outcome};
use crate::swarms::{new_agent, new_swarm};
use crate::tasks::{all_tasks, task};
use crate::{ctx, each_backend, now, page, system, tenant};

fn pool(agent_type: &str, min: i64, max: i64) -> AgentPool {
    AgentPool {
        agent_type: agent_type.to_string(),
        driver: "exec".to_string(),
        capabilities: vec!["code".to_string()],
        labels: BTreeMap::new(),
        min,
        max,
        prewarm: 0,
        recycle_after_tasks: Some(10),
        recycle_on_failure: true,
        system_prompt: None,
    }
}

fn invalid(err: &Error, field: &str) -> bool {
    matches!(err, Error::Invalid(v) if v.field == field)
}

#[tokio::test]
async fn swarm_pools_are_stored_validated_and_replaced() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "pools").await;
        let new = NewSwarm {
            strategy: Strategy::LeastLoaded,
            pools: vec![pool("coder", 1, 4), pool("reviewer", 0, 2)],
            ..new_swarm("build", 8)
        };
        let s = store.create_swarm(&ctx(&t), &t, new).await.unwrap();
        assert_eq!(s.strategy, Strategy::LeastLoaded);
        let read = store.get_swarm(&t, &s.id).await.unwrap().unwrap();
        assert_eq!(read, s, "{backend:?}");
        assert_eq!(read.pools[1].agent_type, "reviewer");

        let bad = |f: fn(&mut Vec<AgentPool>)| {
            let mut pools = vec![pool("coder", 1, 4), pool("tester", 0, 2)];
            f(&mut pools);
            NewSwarm {
                pools,
                ..new_swarm("bad", 8)
            }
        };
        let cases: [(NewSwarm, &str); 8] = [
            (bad(|p| p[1].max = 9), "agents[1].max"),
            (bad(|p| p[1].min = 3), "agents[1].max"),
            (bad(|p| p[0].min = -1), "agents[0].min"),
            (bad(|p| p[1].agent_type = "coder".into()), "agents[1].type"),
            (bad(|p| p[0].agent_type = "Coder!".into()), "agents[0].type"),
            (bad(|p| p[0].driver = String::new()), "agents[0].driver"),
            (bad(|p| p[1].prewarm = -2), "agents[1].prewarm"),
            (
                bad(|p| p[0].recycle_after_tasks = Some(0)),
                "agents[0].recycle_after_tasks",
            ),
        ];
        for (new, field) in cases {
            let err = store.create_swarm(&ctx(&t), &t, new).await.unwrap_err();
            assert!(invalid(&err, field), "{backend:?} {field}: {err}");
        }
        let swarms = store.list_swarms(&t, &page(10, None)).await.unwrap().items;
        assert_eq!(swarms.len(), 1, "a refused swarm is not created");

        let pools = vec![pool("tester", 2, 3)];
        let up = store
            .update_swarm_pools(&ctx(&t), &t, &s.id, pools.clone())
            .await
            .unwrap();
        assert_eq!(up.pools, pools);
        assert_eq!(
            store.get_swarm(&t, &s.id).await.unwrap().unwrap().pools,
            pools
        );
        // Above this swarm's own max_agents: refused in the writer, nothing changed.
        let err = store
            .update_swarm_pools(&ctx(&t), &t, &s.id, vec![pool("tester", 0, 9)])
            .await
            .unwrap_err();
        assert!(invalid(&err, "agents[0].max"), "{err}");
        assert_eq!(
            store.get_swarm(&t, &s.id).await.unwrap().unwrap().pools,
            pools
        );
        let other = tenant(&store, "pools-other").await;
        let err = store
            .update_swarm_pools(&ctx(&other), &other, &s.id, vec![])
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        store
            .set_swarm_state(&ctx(&t), &t, &s.id, SwarmState::Stopped)
            .await
            .unwrap();
        let err = store
            .update_swarm_pools(&ctx(&t), &t, &s.id, vec![])
            .await
            .unwrap_err();
        assert!(matches!(err, Error::State(_)), "{err}");
        assert_eq!(
            store.get_swarm(&t, &s.id).await.unwrap().unwrap().pools,
            pools
        );
    })
    .await;
}

#[tokio::test]
async fn tenant_quotas_default_and_change() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "quota").await;
        assert_eq!(
            store.tenant_quota(&t).await.unwrap(),
            TenantQuota::default()
        );
        let q = TenantQuota {
            weight: 5,
            max_running: Some(10),
        };
        assert_eq!(store.set_tenant_quota(&system(), &t, q).await.unwrap(), q);
        assert_eq!(store.tenant_quota(&t).await.unwrap(), q);
        let all = store.tenant_quotas().await.unwrap();
        assert!(all.contains(&(t.clone(), q)), "{backend:?}");
        for (bad, field) in [
            (
                TenantQuota {
                    weight: 0,
                    max_running: None,
                },
                "weight",
            ),
            (
                TenantQuota {
                    weight: 1001,
                    max_running: None,
                },
                "weight",
            ),
            (
                TenantQuota {
                    weight: 1,
                    max_running: Some(0),
                },
                "max_running",
            ),
        ] {
            let err = store
                .set_tenant_quota(&system(), &t, bad)
                .await
                .unwrap_err();
            assert!(invalid(&err, field), "{err}");
        }
        assert_eq!(store.tenant_quota(&t).await.unwrap(), q, "unchanged");
        let err = store
            .set_tenant_quota(&system(), "no-such-tenant", q)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        let err = store.tenant_quota("no-such-tenant").await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
    })
    .await;
}

fn msg(swarm: &str, from: &str, to: Option<&str>, topic: Option<&str>, n: i64) -> NewMessage {
    NewMessage {
        swarm_id: swarm.to_string(),
        from_agent: from.to_string(),
        to_agent: to.map(str::to_string),
        topic: topic.map(str::to_string),
        body: json!({ "n": n }),
    }
}

#[tokio::test]
async fn messages_are_delivered_in_order_and_checked() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "msg").await;
        let s = store
            .create_swarm(&ctx(&t), &t, new_swarm("team", 10))
            .await
            .unwrap();
        let s2 = store
            .create_swarm(&ctx(&t), &t, new_swarm("team2", 10))
            .await
            .unwrap();
        let mk = |swarm: String| {
            let store = store.clone();
            let t = t.clone();
            async move {
                store
                    .create_agent(&ctx(&t), &t, &swarm, new_agent("coder"))
                    .await
                    .unwrap()
                    .id
            }
        };
        let (a, b, c) = (
            mk(s.id.clone()).await,
            mk(s.id.clone()).await,
            mk(s2.id.clone()).await,
        );
        let mut sent = Vec::new();
        for n in 0..5 {
            let m = store
                .send_message(&ctx(&t), &t, msg(&s.id, &a, Some(&b), None, n))
                .await
                .unwrap();
            sent.push(m.id);
        }
        store
            .send_message(&ctx(&t), &t, msg(&s.id, &b, None, Some("build.status"), 9))
            .await
            .unwrap();
        let inbox = store.inbox(&t, &b, 0, 3).await.unwrap();
        assert_eq!(inbox.iter().map(|m| m.id).collect::<Vec<_>>(), sent[..3]);
        assert_eq!(inbox[0].body, json!({"n": 0}));
        let rest = store.inbox(&t, &b, inbox[2].id, 100).await.unwrap();
        assert_eq!(rest.iter().map(|m| m.id).collect::<Vec<_>>(), sent[3..]);
        assert!(store.inbox(&t, &a, 0, 100).await.unwrap().is_empty());
        let topic = store
            .topic_messages(&t, &s.id, "build.status", 0, 10)
            .await
            .unwrap();
        assert_eq!(topic.len(), 1, "{backend:?}");
        assert_eq!(topic[0].from_agent, b);

        let other = tenant(&store, "msg-other").await;
        assert!(store.inbox(&other, &b, 0, 100).await.unwrap().is_empty());
        let big = "x".repeat(70 * 1024);
        let cases: Vec<(NewMessage, &str)> = vec![
            (msg(&s.id, &a, Some(&b), Some("t"), 0), "to"),
            (msg(&s.id, &a, None, None, 0), "to"),
            (msg(&s.id, &a, None, Some("bad topic!"), 0), "topic"),
            (msg(&s.id, &a, None, Some(&"t".repeat(65)), 0), "topic"),
            (
                NewMessage {
                    body: json!(big),
                    ..msg(&s.id, &a, Some(&b), None, 0)
                },
                "body",
            ),
            (msg(&s.id, &a, Some(&c), None, 0), "to"),
            (msg(&s.id, &c, Some(&a), None, 0), "from"),
        ];
        for (m, field) in cases {
            let err = store.send_message(&ctx(&t), &t, m).await.unwrap_err();
            assert!(invalid(&err, field), "{field}: {err}");
        }
        let err = store
            .send_message(&ctx(&other), &other, msg(&s.id, &a, Some(&b), None, 0))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        let err = store
            .send_message(&ctx(&t), &t, msg(&s.id, &a, Some("nobody"), None, 0))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        assert_eq!(
            store.inbox(&t, &b, 0, 100).await.unwrap().len(),
            5,
            "nothing more sent"
        );
    })
    .await;
}

#[tokio::test]
async fn a_preferred_agent_must_be_the_tenants() {
    each_backend(|store, _| async move {
        let t = tenant(&store, "sticky").await;
        let ag = agent(&store, &t).await;
        let other = tenant(&store, "sticky-other").await;
        let theirs = agent(&store, &other).await;
        let sticky = |id: &str| NewTask {
            agent_id: Some(id.to_string()),
            ..task("s", &[])
        };
        let out = store
            .submit_tasks(&ctx(&t), &t, vec![sticky(&ag.id)])
            .await
            .unwrap();
        assert_eq!(
            get(&store, &t, &out[0].id).await.agent_id,
            Some(ag.id.clone())
        );
        let err = store
            .submit_tasks(&ctx(&t), &t, vec![task("x", &[]), sticky(&theirs.id)])
            .await
            .unwrap_err();
        assert!(invalid(&err, "tasks[1].agent"), "{err}");
        assert_eq!(all_tasks(&store, &t).await.len(), 1, "nothing written");
    })
    .await;
}

#[tokio::test]
async fn leases_are_extended_in_bulk_for_the_worker_that_holds_them() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "lease").await;
        let ag = agent(&store, &t).await;
        let out = store
            .submit_tasks(
                &ctx(&t),
                &t,
                vec![task("a", &[]), task("b", &[]), task("c", &[])],
            )
            .await
            .unwrap();
        let (a, b, c) = (&out[0].id, &out[1].id, &out[2].id);
        let n = now();
        for (id, w) in [(a, "w1"), (b, "w1"), (c, "w2")] {
            store
                .assign_task(&system(), id, &ag.id, w, LEASE, n)
                .await
                .unwrap();
        }
        store.start_attempt(&system(), b, 1, n).await.unwrap();
        let until = n + 500_000;
        let held = vec![
            (a.clone(), 1),
            (b.clone(), 1),
            (c.clone(), 1),
            (a.clone(), 7),
            ("unknown".to_string(), 1),
        ];
        let stale = store.extend_leases("w1", &held, until).await.unwrap();
        assert_eq!(stale, held[2..], "{backend:?}");
        let live = store.live_attempts().await.unwrap();
        let lease = |id: &str| {
            live.iter()
                .find(|l| l.task.id == id)
                .map(|l| l.attempt.lease_expires_at)
                .unwrap()
        };
        assert_eq!((lease(a), lease(b), lease(c)), (until, until, n + LEASE));
        assert!(
            store
                .extend_leases("w1", &[], until)
                .await
                .unwrap()
                .is_empty()
        );
    })
    .await;
}

#[tokio::test]
async fn the_scheduler_rebuilds_from_live_state() {
    each_backend(|store, backend| async move {
        let t = tenant(&store, "rebuild").await;
        let ag = agent(&store, &t).await;
        let stopped = agent(&store, &t).await;
        store
            .set_agent_state(&ctx(&t), &t, &stopped.id, AgentState::Stopped)
            .await
            .unwrap();
        let gone = store
            .create_swarm(&ctx(&t), &t, new_swarm("gone", 1))
            .await
            .unwrap();
        store
            .set_swarm_state(&ctx(&t), &t, &gone.id, SwarmState::Stopped)
            .await
            .unwrap();
        let tasks: Vec<NewTask> = (0..60)
            .map(|i| NewTask {
                priority: i % 7,
                ..NewTask::new(json!({"n": i}))
            })
            .collect();
        let out = store.submit_tasks(&ctx(&t), &t, tasks).await.unwrap();
        let n = now();
        store
            .assign_task(&system(), &out[0].id, &ag.id, "w1", LEASE, n)
            .await
            .unwrap();

        let live = store.live_attempts().await.unwrap();
        let mine = live.iter().find(|l| l.task.id == out[0].id).unwrap();
        assert_eq!(mine.task.state, TaskState::Assigned);
        assert_eq!(
            (mine.attempt.worker_id.as_str(), mine.attempt.epoch),
            ("w1", 1)
        );
        let agents = store.active_agents().await.unwrap();
        assert!(agents.iter().any(|a| a.id == ag.id), "{backend:?}");
        assert!(!agents.iter().any(|a| a.id == stopped.id));
        let swarms = store.active_swarms().await.unwrap();
        assert!(swarms.iter().any(|s| s.id == ag.swarm_id));
        assert!(!swarms.iter().any(|s| s.id == gone.id));

        // Paging the queue gives the same order as one read (other tests' tasks included).
        let whole = store.ready_tasks(u32::MAX).await.unwrap();
        let mut paged = Vec::new();
        let mut cursor: Option<ReadyCursor> = None;
        loop {
            let p = store.ready_tasks_after(cursor.as_ref(), 7).await.unwrap();
            let Some(last) = p.last() else { break };
            cursor = Some(ReadyCursor::of(last));
            paged.extend(p.into_iter().map(|t| t.id));
        }
        let ids: Vec<String> = whole.iter().map(|t| t.id.clone()).collect();
        let mine: Vec<&String> = ids
            .iter()
            .filter(|id| out.iter().any(|o| &o.id == *id))
            .collect();
        assert_eq!(mine.len(), 59);
        let paged_mine: Vec<&String> = paged
            .iter()
            .filter(|id| out.iter().any(|o| &o.id == *id))
            .collect();
        assert_eq!(paged_mine, mine);
    })
    .await;
}

#[tokio::test]
async fn task_outputs_are_results_or_stdout() {
    each_backend(|store, _| async move {
        let t = tenant(&store, "outputs").await;
        let ag = agent(&store, &t).await;
        let out = store
            .submit_tasks(
                &ctx(&t),
                &t,
                vec![
                    task("a", &[]),
                    task("b", &[]),
                    NewTask {
                        max_attempts: 1,
                        ..task("c", &[])
                    },
                ],
            )
            .await
            .unwrap();
        let n = now();
        let ids: Vec<String> = out.iter().map(|s| s.id.clone()).collect();
        for id in &ids {
            store
                .assign_task(&system(), id, &ag.id, "w1", LEASE, n)
                .await
                .unwrap();
        }
        store
            .complete_attempt(&system(), &ids[0], 1, outcome(OutcomeKind::Succeeded), n)
            .await
            .unwrap();
        let plain = cflow_store::Outcome {
            result: None,
            ..outcome(OutcomeKind::Succeeded)
        };
        store
            .complete_attempt(&system(), &ids[1], 1, plain, n)
            .await
            .unwrap();
        let failed = outcome(OutcomeKind::Failed { retryable: false });
        store
            .complete_attempt(&system(), &ids[2], 1, failed, n)
            .await
            .unwrap();
        let got = store.task_outputs(&t, &ids).await.unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[&ids[0]], json!({"ok": true}));
        assert_eq!(got[&ids[1]], json!({"stdout": "out"}));
        let other = tenant(&store, "outputs-other").await;
        assert!(store.task_outputs(&other, &ids).await.unwrap().is_empty());
    })
    .await;
}
