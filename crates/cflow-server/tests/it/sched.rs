//! The scheduler driven directly (no HTTP): real store on both backends, the real local worker
//! pool running real `exec` and `noop` jobs.

use std::collections::BTreeMap;
use std::time::Duration;

use cflow_core::balance::Strategy;
use cflow_core::task::TaskState;
use cflow_core::topology::Topology;
use cflow_server::events::EventBus;
use cflow_server::sched::{SchedConfig, Scheduler};
use cflow_store::{AgentPool, AuditContext, NewSwarm, NewTask, Store, TaskFilter};
use cflow_test_support::db::each_backend;
use serde_json::json;

fn ctx() -> AuditContext {
    AuditContext {
        source: Some("test".into()),
        ..AuditContext::default()
    }
}

async fn tenant(store: &Store, prefix: &str) -> String {
    let name = format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    store.create_tenant(&ctx(), &name).await.unwrap().id
}

fn pool(agent_type: &str, driver: &str, n: i64) -> AgentPool {
    AgentPool {
        agent_type: agent_type.into(),
        driver: driver.into(),
        capabilities: Vec::new(),
        labels: BTreeMap::new(),
        min: n,
        max: n,
        prewarm: 0,
        recycle_after_tasks: None,
        recycle_on_failure: false,
        system_prompt: None,
    }
}

async fn swarm(sched: &Scheduler, tenant: &str, pools: Vec<AgentPool>) -> String {
    let name = format!("s-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    sched
        .create_swarm(
            &ctx(),
            tenant,
            NewSwarm {
                name,
                topology: Topology::Hierarchical,
                project: None,
                max_agents: 1000,
                strategy: Strategy::WeightedRoundRobin,
                pools,
            },
        )
        .await
        .unwrap()
        .id
}

fn exec(swarm: &str, command: &str) -> NewTask {
    let mut t = NewTask::new(json!({ "command": command }));
    t.swarm_id = Some(swarm.to_string());
    t
}

/// Polls until every listed task is in a terminal state; returns their states.
async fn wait_done(
    store: &Store,
    tenant: &str,
    ids: &[String],
    within: Duration,
) -> Vec<TaskState> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut states = Vec::new();
        for id in ids {
            states.push(store.get_task(tenant, id).await.unwrap().unwrap().state);
        }
        if states.iter().all(|s| s.is_terminal()) {
            return states;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tasks not finished in time: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Submits `tasks` for `tenant` and answers their ids, in order.
async fn submit_ids(sched: &Scheduler, tenant: &str, tasks: Vec<NewTask>) -> Vec<String> {
    sched
        .submit(&ctx(), tenant, tasks, None)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect()
}

async fn start(store: &Store, config: SchedConfig) -> Scheduler {
    Scheduler::start(store.clone(), EventBus::new(1024), config)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_dag_runs_on_the_local_pool_and_outputs_flow_to_dependents() {
    each_backend(|store, _| async move {
        let sched = start(&store, SchedConfig::default()).await;
        let t = tenant(&store, "dag").await;
        let s = swarm(&sched, &t, vec![pool("coder", "exec", 3)]).await;
        let mut a = exec(&s, "echo 'CFLOW_RESULT {\"n\": 20}'");
        a.local_id = Some("a".into());
        let mut b = exec(&s, "echo 'CFLOW_RESULT {\"n\": 22}'");
        b.local_id = Some("b".into());
        let mut sum = exec(&s, "echo \"$CFLOW_INPUTS\"");
        sum.depends_on = vec!["a".into(), "b".into()];
        let ids: Vec<String> = submit_ids(&sched, &t, vec![a, b, sum]).await;
        let states = wait_done(&store, &t, &ids, Duration::from_secs(30)).await;
        assert_eq!(states, vec![TaskState::Succeeded; 3]);
        let attempts = store.list_attempts(&t, &ids[2]).await.unwrap();
        assert_eq!(attempts.len(), 1);
        // A fast task's start arrives with its end and is recorded by the completion.
        for id in &ids {
            let a = &store.list_attempts(&t, id).await.unwrap()[0];
            let (start, end) = (a.started_at.unwrap(), a.ended_at.unwrap());
            assert!(a.assigned_at <= start && start <= end, "{a:?}");
        }
        let out = attempts[0].stdout_tail.clone().unwrap_or_default();
        let inputs: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(inputs[&ids[0]]["n"], 20, "{out}");
        assert_eq!(inputs[&ids[1]]["n"], 22, "{out}");
        sched.shutdown();
    })
    .await;
}

#[tokio::test]
async fn a_failing_task_is_retried_then_fails_and_cancels_its_dependents() {
    each_backend(|store, _| async move {
        let sched = start(&store, SchedConfig::default()).await;
        let t = tenant(&store, "fail").await;
        let s = swarm(&sched, &t, vec![pool("coder", "exec", 2)]).await;
        let mut bad = exec(&s, "echo broken >&2; exit 3");
        bad.local_id = Some("bad".into());
        bad.max_attempts = 2;
        let mut after = exec(&s, "true");
        after.depends_on = vec!["bad".into()];
        let ids: Vec<String> = submit_ids(&sched, &t, vec![bad, after]).await;
        let states = wait_done(&store, &t, &ids, Duration::from_secs(60)).await;
        assert_eq!(states, vec![TaskState::Failed, TaskState::Cancelled]);
        let attempts = store.list_attempts(&t, &ids[0]).await.unwrap();
        assert_eq!(attempts.len(), 2, "one retry after the first failure");
        assert!(attempts.iter().all(|a| a.exit_code == Some(3)));
        assert!(
            attempts[0]
                .stderr_tail
                .as_deref()
                .unwrap_or("")
                .contains("broken")
        );
        let dependent = store.get_task(&t, &ids[1]).await.unwrap().unwrap();
        assert!(dependent.reason.unwrap_or_default().contains(&ids[0]));
        sched.shutdown();
    })
    .await;
}

#[tokio::test]
async fn cancelling_a_running_task_kills_its_process_group() {
    each_backend(|store, _| async move {
        let sched = start(&store, SchedConfig::default()).await;
        let t = tenant(&store, "cancel").await;
        let s = swarm(&sched, &t, vec![pool("coder", "exec", 1)]).await;
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("started");
        let cmd = format!("touch {}; sleep 30; echo never", marker.display());
        let id = sched
            .submit(&ctx(), &t, vec![exec(&s, &cmd)], None)
            .await
            .unwrap()[0]
            .id
            .clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !marker.exists() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the task never started"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sched.cancel(&ctx(), &t, &id).await.unwrap();
        let states = wait_done(
            &store,
            &t,
            std::slice::from_ref(&id),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(states, vec![TaskState::Cancelled]);
        // The agent is free again: a next task runs (the sleep was killed, not waited for).
        let next = sched
            .submit(&ctx(), &t, vec![exec(&s, "true")], None)
            .await
            .unwrap()[0]
            .id
            .clone();
        let states = wait_done(&store, &t, &[next], Duration::from_secs(10)).await;
        assert_eq!(states, vec![TaskState::Succeeded]);
        sched.shutdown();
    })
    .await;
}

#[tokio::test]
async fn a_flooding_tenant_cannot_starve_another() {
    each_backend(|store, _| async move {
        let sched = start(&store, SchedConfig::default()).await;
        let a = tenant(&store, "flood").await;
        let b = tenant(&store, "quiet").await;
        // Both tenants' agents use the same 8 slots of the local pool.
        let sa = swarm(&sched, &a, vec![pool("coder", "exec", 8)]).await;
        let sb = swarm(&sched, &b, vec![pool("coder", "exec", 8)]).await;
        let flood: Vec<NewTask> = (0..10_000).map(|_| exec(&sa, "true")).collect();
        sched.submit(&ctx(), &a, flood, None).await.unwrap();
        let quiet: Vec<String> =
            submit_ids(&sched, &b, (0..10).map(|_| exec(&sb, "true")).collect()).await;
        let states = wait_done(&store, &b, &quiet, Duration::from_secs(60)).await;
        assert_eq!(states, vec![TaskState::Succeeded; 10]);
        let filter = TaskFilter {
            state: Some(TaskState::Queued),
            swarm_id: None,
        };
        let page = store
            .list_tasks(&a, &filter, &cflow_store::PageRequest::default())
            .await
            .unwrap();
        assert!(
            !page.items.is_empty(),
            "tenant B finished while tenant A still has a backlog"
        );
        assert!(
            sched.queue_depth(&a) > 9_000,
            "depth {}",
            sched.queue_depth(&a)
        );
        sched.shutdown();
    })
    .await;
}

/// Platform overhead with the `noop` benchmark driver: `cargo test --release -p cflow-server
/// --test it -- --ignored --nocapture bench_sched_noop`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_sched_noop() {
    each_backend(|store, backend| async move {
        let config = SchedConfig {
            local_slots: 256,
            ..SchedConfig::default()
        };
        let sched = start(&store, config).await;
        let t = tenant(&store, "bench").await;
        let s = swarm(&sched, &t, vec![pool("coder", "noop", 256)]).await;
        let n = 20_000;
        let started = std::time::Instant::now();
        for _ in 0..n / 10_000 {
            let batch: Vec<NewTask> = (0..10_000)
                .map(|_| {
                    let mut t = NewTask::new(json!({}));
                    t.swarm_id = Some(s.clone());
                    t
                })
                .collect();
            sched.submit(&ctx(), &t, batch, None).await.unwrap();
        }
        let submitted = started.elapsed();
        // Attempts leave the in-memory state only after their completion is committed.
        loop {
            let live = sched.swarm_live(&t, &s);
            if live.queued == 0 && live.running == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let total = started.elapsed();
        println!(
            "{backend:?}: {n} noop tasks: submitted in {submitted:?}, all complete and durable in {total:?} = {:.0} tasks/s",
            n as f64 / total.as_secs_f64()
        );
        sched.shutdown();
    })
    .await;
}

#[tokio::test]
async fn replicas_agree_by_quorum_or_fail_with_no_quorum() {
    each_backend(|store, _| async move {
        let sched = start(&store, SchedConfig::default()).await;
        let t = tenant(&store, "quorum").await;
        let s = swarm(&sched, &t, vec![pool("reviewer", "exec", 3)]).await;
        let mut agree = exec(&s, "echo 'CFLOW_RESULT {\"verdict\": \"ok\"}'");
        agree.replicas = 3;
        agree.quorum = 2;
        // Each replica is its own task, so its id differs: no two outputs agree.
        let mut split = exec(&s, "echo \"$CFLOW_TASK_ID\"");
        split.replicas = 3;
        split.quorum = 2;
        let ids: Vec<String> = submit_ids(&sched, &t, vec![agree, split]).await;
        let states = wait_done(&store, &t, &ids, Duration::from_secs(60)).await;
        assert_eq!(states, vec![TaskState::Succeeded, TaskState::Failed]);
        let parent = store.get_task(&t, &ids[0]).await.unwrap().unwrap();
        assert_eq!(
            parent.result.as_ref().unwrap()["output"]["verdict"],
            "ok",
            "{parent:?}"
        );
        let failed = store.get_task(&t, &ids[1]).await.unwrap().unwrap();
        assert!(failed.reason.unwrap_or_default().contains("no quorum"));
        // The replicas ran on distinct agents.
        for id in &ids {
            let replicas = store.replicas_of(&t, id).await.unwrap();
            let mut agents = std::collections::BTreeSet::new();
            for r in &replicas {
                for a in store.list_attempts(&t, &r.id).await.unwrap() {
                    agents.insert(a.agent_id);
                }
            }
            let ran = replicas.iter().filter(|r| r.attempts > 0).count();
            assert_eq!(agents.len(), ran, "each replica on its own agent");
        }
        sched.shutdown();
    })
    .await;
}

#[tokio::test]
async fn tasks_pinned_to_labels_go_only_to_matching_workers() {
    each_backend(|store, _| async move {
        let config = SchedConfig {
            local_slots: 0,
            ..SchedConfig::default()
        };
        let sched = start(&store, config).await;
        let t = tenant(&store, "pin").await;
        let s = swarm(&sched, &t, vec![pool("coder", "exec", 2)]).await;
        let reg = |id: &str, region: &str| cflow_agents::proto::Register {
            worker_id: Some(id.into()),
            name: id.into(),
            labels: BTreeMap::from([("region".to_string(), region.to_string())]),
            slots: 4,
            drivers: vec!["exec".into()],
        };
        sched.register_worker(Some(&t), reg("us1", "us")).unwrap();
        sched.register_worker(Some(&t), reg("eu1", "eu")).unwrap();
        let mut task = exec(&s, "true");
        task.labels = BTreeMap::from([("region".to_string(), "eu".to_string())]);
        let id = sched.submit(&ctx(), &t, vec![task], None).await.unwrap()[0]
            .id
            .clone();
        let poll = |wait| cflow_agents::proto::PollRequest {
            held: vec![],
            free_slots: 4,
            wait_ms: wait,
        };
        let us = sched.poll(Some(&t), "us1", poll(300)).await.unwrap();
        assert!(us.assignments.is_empty(), "{us:?}");
        let eu = sched.poll(Some(&t), "eu1", poll(5_000)).await.unwrap();
        assert_eq!(eu.assignments.len(), 1);
        assert_eq!(eu.assignments[0].task_id, id);
        // Another tenant's worker id cannot be taken over, nor polled by another tenant.
        let other = tenant(&store, "other").await;
        assert!(
            sched
                .register_worker(Some(&other), reg("eu1", "eu"))
                .is_err()
        );
        assert!(sched.poll(Some(&other), "eu1", poll(0)).await.is_err());
        sched.shutdown();
    })
    .await;
}

#[tokio::test]
async fn an_agent_that_keeps_failing_is_quarantined_then_probed_and_closed() {
    each_backend(|store, _| async move {
        let config = SchedConfig {
            breaker_failures: 2,
            breaker_cooldown_ms: 2_000,
            ..SchedConfig::default()
        };
        let sched = start(&store, config).await;
        let t = tenant(&store, "breaker").await;
        let s = swarm(&sched, &t, vec![pool("coder", "exec", 1)]).await;
        let agent = store
            .list_agents(&t, &s, &cflow_store::PageRequest::default())
            .await
            .unwrap()
            .items[0]
            .id
            .clone();
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("healthy");
        // Fails until the flag file exists.
        let cmd = format!("test -e {}", flag.display());
        let mut failing = Vec::new();
        for _ in 0..2 {
            let mut task = exec(&s, &cmd);
            task.max_attempts = 1;
            failing.push(task);
        }
        let ids: Vec<String> = submit_ids(&sched, &t, failing).await;
        wait_done(&store, &t, &ids, Duration::from_secs(30)).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let live = sched.agent_live(&t, &agent).unwrap();
            if live.breaker.state == cflow_core::breaker::BreakerState::Open {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "breaker never opened: {live:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The quarantine is stored right after the breaker opens in memory.
        loop {
            let state = store.get_agent(&t, &agent).await.unwrap().unwrap().state;
            if state == cflow_store::AgentState::Quarantined {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never quarantined: {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::fs::write(&flag, b"").unwrap();
        // After the cool-down one probe runs; it succeeds and the breaker closes.
        let probe = sched
            .submit(&ctx(), &t, vec![exec(&s, &cmd)], None)
            .await
            .unwrap()[0]
            .id
            .clone();
        let states = wait_done(&store, &t, &[probe], Duration::from_secs(30)).await;
        assert_eq!(states, vec![TaskState::Succeeded]);
        // The breaker learns the outcome when the scheduler settles the committed report, just
        // after the store has it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let live = sched.agent_live(&t, &agent).unwrap();
            if live.breaker.state == cflow_core::breaker::BreakerState::Closed {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the breaker never closed after the probe succeeded: {live:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sched.shutdown();
    })
    .await;
}

#[tokio::test]
async fn a_paused_swarm_gets_no_assignments_until_resumed() {
    each_backend(|store, _| async move {
        let sched = start(&store, SchedConfig::default()).await;
        let t = tenant(&store, "pause").await;
        let s = swarm(&sched, &t, vec![pool("coder", "exec", 2)]).await;
        sched
            .set_swarm_state(&ctx(), &t, &s, cflow_store::SwarmState::Paused)
            .await
            .unwrap();
        let id = sched
            .submit(&ctx(), &t, vec![exec(&s, "true")], None)
            .await
            .unwrap()[0]
            .id
            .clone();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let task = store.get_task(&t, &id).await.unwrap().unwrap();
        assert_eq!(
            task.state,
            TaskState::Queued,
            "nothing assigned while paused"
        );
        sched
            .set_swarm_state(&ctx(), &t, &s, cflow_store::SwarmState::Active)
            .await
            .unwrap();
        let states = wait_done(&store, &t, &[id], Duration::from_secs(20)).await;
        assert_eq!(states, vec![TaskState::Succeeded]);
        sched.shutdown();
    })
    .await;
}

/// An agent ending a task while others wait is handed over to the next one in the completion's
/// own commit: it never shows as idle in between, and every task runs once.
#[tokio::test]
async fn an_agent_ending_a_task_takes_the_next_queued_one_without_going_idle() {
    each_backend(|store, backend| async move {
        let events = EventBus::new(4096);
        let sched = Scheduler::start(store.clone(), events.clone(), SchedConfig::default())
            .await
            .unwrap();
        let t = tenant(&store, "handover").await;
        let s = swarm(&sched, &t, vec![pool("coder", "exec", 1)]).await;
        let sub = events.subscribe(&t, cflow_server::events::Resume::Now);
        let mut live = sub.live;
        let tasks: Vec<NewTask> = (0..20).map(|_| exec(&s, "true")).collect();
        let ids: Vec<String> = submit_ids(&sched, &t, tasks).await;
        let states = wait_done(&store, &t, &ids, Duration::from_secs(60)).await;
        assert_eq!(states, vec![TaskState::Succeeded; 20]);
        for id in &ids {
            let attempts = store.list_attempts(&t, id).await.unwrap();
            assert_eq!(attempts.len(), 1, "{backend:?}: {attempts:?}");
            assert_eq!(attempts[0].epoch, 1);
        }
        // Give the last completion's events time to be published.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (mut idle, mut assigned) = (0, 0);
        while let Ok(e) = live.try_recv() {
            match e.kind.as_str() {
                "agent.idle" => idle += 1,
                "task.assigned" => assigned += 1,
                _ => {}
            }
        }
        assert_eq!(assigned, 20, "{backend:?}");
        assert_eq!(idle, 1, "{backend:?}: idle only after the last task");
        sched.shutdown();
    })
    .await;
}

#[tokio::test]
async fn the_autoscaler_adds_agents_under_demand_and_says_why() {
    each_backend(|store, _| async move {
        let config = SchedConfig {
            scale_up_wait_ms: 50,
            autoscale_interval_ms: 100,
            ..SchedConfig::default()
        };
        let events = EventBus::new(4096);
        let sched = Scheduler::start(store.clone(), events.clone(), config)
            .await
            .unwrap();
        let t = tenant(&store, "scale").await;
        let mut p = pool("coder", "exec", 0);
        p.max = 3;
        let s = swarm(&sched, &t, vec![p]).await;
        let sub = events.subscribe(&t, cflow_server::events::Resume::Now);
        let mut live = sub.live;
        let tasks: Vec<NewTask> = (0..6).map(|_| exec(&s, "sleep 0.2")).collect();
        let ids: Vec<String> = submit_ids(&sched, &t, tasks).await;
        let states = wait_done(&store, &t, &ids, Duration::from_secs(30)).await;
        assert_eq!(states, vec![TaskState::Succeeded; 6]);
        let mut saw = None;
        while let Ok(e) = live.try_recv() {
            if e.kind == "autoscaler.scale_up" {
                saw = Some(e);
                break;
            }
        }
        let e = saw.expect("a scale_up event");
        assert!(
            e.data["reason"].as_str().unwrap().contains("queued"),
            "{:?}",
            e.data
        );
        let agents = store
            .list_agents(&t, &s, &cflow_store::PageRequest::default())
            .await
            .unwrap();
        assert!(!agents.items.is_empty() && agents.items.len() <= 3);
        sched.shutdown();
    })
    .await;
}

#[tokio::test]
async fn a_tenant_quota_caps_its_running_tasks_and_agents_recycle() {
    each_backend(|store, _| async move {
        let sched = start(&store, SchedConfig::default()).await;
        let t = tenant(&store, "quota").await;
        sched
            .set_quota(
                &ctx(),
                &t,
                cflow_store::TenantQuota {
                    weight: 1,
                    max_running: Some(1),
                },
            )
            .await
            .unwrap();
        let mut p = pool("coder", "exec", 2);
        p.recycle_after_tasks = Some(2);
        let s = swarm(&sched, &t, vec![p]).await;
        let ids: Vec<String> =
            submit_ids(&sched, &t, (0..4).map(|_| exec(&s, "sleep 0.2")).collect()).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut most = 0;
        loop {
            most = most.max(sched.swarm_live(&t, &s).running);
            let mut done = 0;
            for id in &ids {
                if store
                    .get_task(&t, id)
                    .await
                    .unwrap()
                    .unwrap()
                    .state
                    .is_terminal()
                {
                    done += 1;
                }
            }
            if done == ids.len() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "tasks did not finish"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(most, 1, "the quota allows one running task at a time");
        let mut agents = std::collections::BTreeSet::new();
        for id in &ids {
            for a in store.list_attempts(&t, id).await.unwrap() {
                agents.insert(a.agent_id);
            }
        }
        // Each agent retires after two tasks, so four tasks needed at least two agents, and the
        // pool was refilled: two live agents remain.
        assert!(agents.len() >= 2, "{agents:?}");
        // The replacement of the last retired agent may still be starting.
        loop {
            let live = sched.swarm_live(&t, &s);
            if live.agents_by_state.get("idle").copied().unwrap_or(0) == 2 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "pool not refilled: {live:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut metrics = String::new();
        sched.render_metrics(&mut metrics);
        assert!(metrics.contains("cflow_task_outcomes_total{outcome=\"succeeded\"}"));
        assert!(metrics.contains("cflow_task_submit_to_start_seconds_count"));
        assert!(metrics.contains("cflow_agents{state=\"idle\"}"));
        sched.shutdown();
    })
    .await;
}

/// With nothing waiting in the queue, a submission's ready tasks are assigned to idle agents in
/// the submission's own commit, the highest priority first; once something waits (here a task
/// of a paused swarm), new tasks queue behind it as usual and the dispatcher assigns them.
#[tokio::test]
async fn idle_agents_take_new_tasks_in_their_submission_only_when_nothing_waits() {
    each_backend(|store, backend| async move {
        let sched = start(&store, SchedConfig::default()).await;
        let t = tenant(&store, "direct").await;
        let s = swarm(&sched, &t, vec![pool("coder", "exec", 1)]).await;
        let mut low = exec(&s, "true");
        low.priority = 10;
        let mut high = exec(&s, "true");
        high.priority = 90;
        let sub = sched
            .submit(&ctx(), &t, vec![low, high], None)
            .await
            .unwrap();
        let states: Vec<TaskState> = sub.iter().map(|s| s.state).collect();
        assert_eq!(
            states,
            [TaskState::Queued, TaskState::Assigned],
            "{backend:?}: one idle agent, taken by the higher priority"
        );
        let high_attempts = store.list_attempts(&t, &sub[1].id).await.unwrap();
        assert_eq!(high_attempts.len(), 1, "{backend:?}");
        let ids: Vec<String> = sub.iter().map(|s| s.id.clone()).collect();
        let done = wait_done(&store, &t, &ids, Duration::from_secs(20)).await;
        assert_eq!(done, [TaskState::Succeeded, TaskState::Succeeded]);

        let paused = swarm(&sched, &t, vec![pool("coder", "exec", 1)]).await;
        sched
            .set_swarm_state(&ctx(), &t, &paused, cflow_store::SwarmState::Paused)
            .await
            .unwrap();
        let waiting = sched
            .submit(&ctx(), &t, vec![exec(&paused, "true")], None)
            .await
            .unwrap();
        assert_eq!(waiting[0].state, TaskState::Queued, "{backend:?}");
        let behind = sched
            .submit(&ctx(), &t, vec![exec(&s, "true")], None)
            .await
            .unwrap();
        assert_eq!(
            behind[0].state,
            TaskState::Queued,
            "{backend:?}: a task waits, so the new one queues"
        );
        let done = wait_done(&store, &t, &[behind[0].id.clone()], Duration::from_secs(20)).await;
        assert_eq!(done, [TaskState::Succeeded]);
        assert_eq!(
            store
                .get_task(&t, &waiting[0].id)
                .await
                .unwrap()
                .unwrap()
                .state,
            TaskState::Queued
        );
        sched.shutdown();
    })
    .await;
}
