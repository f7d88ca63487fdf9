//! Orchestration end to end over HTTP, run by the server's local worker pool: a swarm with an
//! `exec` pool, a small DAG whose outputs reach its dependents through `CFLOW_INPUTS`, cancelling
//! a running task, and a failed dependency cancelling what waits on it (SQLite and PostgreSQL).
//! The [`Api`] helper is shared with the other orchestration test modules.

use crate::common::{eventually, expect_json};
use cflow_test_support::server::TestServer;
use reqwest::Response;
use serde_json::{Value, json};
use std::time::Duration;

/// How long a test waits for the scheduler to run something.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// A caller of the API with one token.
pub struct Api<'a> {
    pub server: &'a TestServer,
    pub token: String,
}

impl<'a> Api<'a> {
    pub fn new(server: &'a TestServer, token: &str) -> Self {
        Api {
            server,
            token: token.to_string(),
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.server
            .client()
            .post(self.server.at(path))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn post_empty(&self, path: &str) -> Response {
        self.server
            .client()
            .post(self.server.at(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.server
            .client()
            .get(self.server.at(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        expect_json(self.get(path).await, 200).await
    }

    /// Creates a swarm; returns its JSON.
    pub async fn create_swarm(&self, body: Value) -> Value {
        expect_json(self.post("/api/v1/swarms", body).await, 201).await
    }

    /// Submits tasks; returns the answer's `tasks` list.
    pub async fn submit(&self, tasks: Value) -> Vec<Value> {
        let body = expect_json(
            self.post("/api/v1/tasks", json!({ "tasks": tasks })).await,
            202,
        )
        .await;
        body["tasks"].as_array().expect("tasks").clone()
    }

    pub async fn task(&self, id: &str) -> Value {
        self.get_json(&format!("/api/v1/tasks/{id}")).await
    }

    /// Waits until the task is in one of `states`; returns it.
    pub async fn wait_task(&self, id: &str, states: &[&str]) -> Value {
        eventually(
            &format!("task {id} to reach {states:?}"),
            RUN_TIMEOUT,
            async || {
                let t = self.task(id).await;
                let s = t["state"].as_str().unwrap_or_default();
                states.contains(&s).then_some(t)
            },
        )
        .await
    }

    /// The number of tasks of the caller's tenant.
    pub async fn task_count(&self) -> usize {
        let page = self.get_json("/api/v1/tasks?limit=1000").await;
        page["items"].as_array().unwrap().len()
    }

    pub async fn swarm_count(&self) -> usize {
        let page = self.get_json("/api/v1/swarms?limit=1000").await;
        page["items"].as_array().unwrap().len()
    }
}

/// An exec pool of `n` coders.
pub fn coders(n: i64) -> Value {
    json!([{ "type": "coder", "driver": "exec", "min": n }])
}

async fn dag_runs_end_to_end(server: TestServer) {
    let (_, admin) = server.tenant_with_key("acme", "admin").await;
    let api = Api::new(&server, &admin);
    let swarm = api
        .create_swarm(json!({"name": "build", "topology": "mesh", "agents": coders(2)}))
        .await;
    let swarm_id = swarm["id"].as_str().unwrap().to_string();
    assert_eq!(swarm["state"], "active");
    assert_eq!(swarm["strategy"], "weighted_round_robin");
    assert_eq!(swarm["pools"][0]["type"], "coder");
    assert_eq!(
        (
            swarm["pools"][0]["min"].clone(),
            swarm["pools"][0]["max"].clone()
        ),
        (json!(2), json!(2))
    );
    assert_eq!(swarm["agents_by_state"]["idle"], 2, "{swarm}");
    let agents = api
        .get_json(&format!("/api/v1/agents?swarm={swarm_id}"))
        .await;
    assert_eq!(agents["items"].as_array().unwrap().len(), 2, "{agents}");
    assert_eq!(agents["items"][0]["breaker"]["state"], "closed");

    let submitted = api
        .submit(json!([
            {"local_id": "a", "swarm": swarm_id,
             "spec": {"command": "echo hello-a; echo 'CFLOW_RESULT {\"n\":1}'"}},
            {"local_id": "b", "swarm": swarm_id, "depends_on": ["a"],
             "spec": {"command": "printf 'inputs=%s\\n' \"$CFLOW_INPUTS\""}},
            {"local_id": "c", "swarm": swarm_id, "depends_on": ["a", "b"],
             "spec": {"program": "echo", "args": ["c-done"]}, "priority": 70},
        ]))
        .await;
    assert_eq!(submitted.len(), 3);
    let ids: Vec<String> = submitted
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(submitted[0]["local_id"], "a");
    // Nothing else waits and two agents are idle: `a` is assigned in its submission's commit.
    assert_eq!(submitted[0]["state"], "assigned");
    assert_eq!(submitted[1]["state"], "pending");
    assert_eq!(submitted[2]["existing"], false);

    let c = api
        .wait_task(&ids[2], &["succeeded", "failed", "cancelled"])
        .await;
    assert_eq!(c["state"], "succeeded", "{c}");
    assert_eq!(c["depends_on"], json!([ids[0], ids[1]]));
    assert_eq!(c["priority"], 70);
    let a = api.task(&ids[0]).await;
    let b = api.task(&ids[1]).await;
    assert_eq!(
        (a["state"].as_str(), b["state"].as_str()),
        (Some("succeeded"), Some("succeeded"))
    );

    let attempt = &a["attempts"][0];
    assert_eq!(attempt["attempt"], 1);
    assert_eq!(attempt["state"], "succeeded");
    assert_eq!(attempt["exit_code"], 0);
    // Every attempt states the isolation its worker reported, and how it ended.
    let isolation = attempt["isolation"].as_str().unwrap();
    assert!(
        isolation.starts_with("none: ") || isolation.starts_with("sandbox: "),
        "{a}"
    );
    assert_eq!(attempt["end"], "exit 0", "{a}");
    assert!(
        attempt["stdout"].as_str().unwrap().contains("hello-a"),
        "{a}"
    );
    assert_eq!(attempt["result"], json!({"n": 1}));
    assert_eq!(a["result"], json!({"n": 1}));
    assert!(attempt["ended_at"].is_string() && attempt["started_at"].is_string());
    assert!(attempt["worker_id"].is_string() && attempt["agent_id"].is_string());

    // b saw a's result, keyed by a's id.
    let out = b["attempts"][0]["stdout"].as_str().unwrap();
    let inputs: Value = serde_json::from_str(
        out.trim()
            .strip_prefix("inputs=")
            .unwrap_or_else(|| panic!("b printed {out:?}")),
    )
    .unwrap();
    assert_eq!(inputs, json!({ ids[0].clone(): {"n": 1} }));
    let c_out = c["attempts"][0]["stdout"].as_str().unwrap();
    assert_eq!(c_out.trim(), "c-done");

    let logs = api
        .get_json(&format!("/api/v1/tasks/{}/logs", ids[0]))
        .await;
    assert_eq!(logs["attempts"][0]["attempt"], 1);
    assert_eq!(logs["attempts"][0]["truncated"], false);
    assert!(
        logs["attempts"][0]["stdout"]
            .as_str()
            .unwrap()
            .contains("hello-a")
    );

    // The listing shows the three, with results for the succeeded ones.
    let list = api
        .get_json(&format!("/api/v1/tasks?swarm={swarm_id}&state=succeeded"))
        .await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{list}");
    assert_eq!(items[0]["result"], json!({"n": 1}));
    assert_eq!(items[0]["attempts"], 1);
    let swarm = api.get_json(&format!("/api/v1/swarms/{swarm_id}")).await;
    assert_eq!(
        (swarm["queued"].clone(), swarm["running"].clone()),
        (json!(0), json!(0))
    );
    let agents = api
        .get_json(&format!("/api/v1/agents?swarm={swarm_id}"))
        .await;
    let done: i64 = agents["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["tasks_done"].as_i64().unwrap())
        .sum();
    assert_eq!(done, 3, "{agents}");
    server.shutdown().await;
}

#[tokio::test]
async fn dag_runs_end_to_end_on_sqlite() {
    dag_runs_end_to_end(TestServer::start_sqlite().await).await;
}

#[tokio::test]
async fn dag_runs_end_to_end_on_postgres() {
    let Some(server) = TestServer::start_postgres().await else {
        eprintln!("skipped: no PostgreSQL configured (set CFLOW_TEST_DATABASE_URL)");
        return;
    };
    dag_runs_end_to_end(server).await;
}

async fn cancel_and_failure_propagate(server: TestServer) {
    let (_, admin) = server.tenant_with_key("acme", "admin").await;
    let api = Api::new(&server, &admin);
    let swarm = api
        .create_swarm(json!({"name": "ops", "topology": "mesh", "agents": coders(2)}))
        .await;
    let swarm_id = swarm["id"].as_str().unwrap();

    // A running `sleep 30` is cancelled: the task at once, the attempt once the worker stopped it.
    let sleeper = api
        .submit(json!([{"swarm": swarm_id, "spec": {"command": "sleep 30"}}]))
        .await;
    let sleeper = sleeper[0]["id"].as_str().unwrap().to_string();
    api.wait_task(&sleeper, &["running"]).await;
    let cancelled = expect_json(
        api.post_empty(&format!("/api/v1/tasks/{sleeper}/cancel"))
            .await,
        200,
    )
    .await;
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    let t = eventually("the attempt to end cancelled", RUN_TIMEOUT, async || {
        let t = api.task(&sleeper).await;
        (t["attempts"][0]["state"] == "cancelled").then_some(t)
    })
    .await;
    assert_eq!(t["state"], "cancelled");
    // Cancelling again: the task has already finished.
    let again = api
        .post_empty(&format!("/api/v1/tasks/{sleeper}/cancel"))
        .await;
    crate::common::expect_problem(again, 409, "conflict").await;

    // A failing task (no retries) cancels its dependents, transitively, naming it.
    let tasks = api
        .submit(json!([
            {"local_id": "root", "swarm": swarm_id, "max_attempts": 1,
             "spec": {"command": "echo broken >&2; exit 3"}},
            {"local_id": "mid", "swarm": swarm_id, "depends_on": ["root"],
             "spec": {"command": "echo never"}},
            {"local_id": "leaf", "swarm": swarm_id, "depends_on": ["mid"],
             "spec": {"command": "echo never"}},
        ]))
        .await;
    let ids: Vec<&str> = tasks.iter().map(|t| t["id"].as_str().unwrap()).collect();
    let root = api.wait_task(ids[0], &["failed", "succeeded"]).await;
    assert_eq!(root["state"], "failed", "{root}");
    assert_eq!(root["attempts"][0]["exit_code"], 3);
    assert!(
        root["attempts"][0]["stderr"]
            .as_str()
            .unwrap()
            .contains("broken")
    );
    for id in &ids[1..] {
        let t = api
            .wait_task(id, &["cancelled", "succeeded", "failed"])
            .await;
        assert_eq!(t["state"], "cancelled", "{t}");
        let reason = t["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains(ids[0]),
            "{id}: reason {reason:?} names the root"
        );
        assert_eq!(t["attempts"], json!([]), "a cancelled dependent never ran");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn cancel_and_failure_propagate_on_sqlite() {
    cancel_and_failure_propagate(TestServer::start_sqlite().await).await;
}

#[tokio::test]
async fn cancel_and_failure_propagate_on_postgres() {
    let Some(server) = TestServer::start_postgres().await else {
        eprintln!("skipped: no PostgreSQL configured (set CFLOW_TEST_DATABASE_URL)");
        return;
    };
    cancel_and_failure_propagate(server).await;
}

/// Swarm life cycle and scaling: pause stops assignments, resume restarts them, scale adds and
/// removes agents, stop is final.
#[tokio::test]
async fn swarm_pause_resume_scale_and_stop() {
    let server = TestServer::start_sqlite().await;
    let (_, admin) = server.tenant_with_key("acme", "admin").await;
    let api = Api::new(&server, &admin);
    let swarm = api
        .create_swarm(
            json!({"name": "life", "topology": "ring", "strategy": "least_loaded",
                             "max_agents": 5, "agents": coders(1)}),
        )
        .await;
    let id = swarm["id"].as_str().unwrap();
    assert_eq!(swarm["strategy"], "least_loaded");
    let paused = expect_json(
        api.post_empty(&format!("/api/v1/swarms/{id}/pause")).await,
        200,
    )
    .await;
    assert_eq!(paused["state"], "paused");
    let t = api
        .submit(json!([{"swarm": id, "spec": {"command": "echo resumed"}}]))
        .await;
    let task = t[0]["id"].as_str().unwrap();
    let swarm = eventually(
        "the task to wait in the paused swarm",
        RUN_TIMEOUT,
        async || {
            let s = api.get_json(&format!("/api/v1/swarms/{id}")).await;
            (s["queued"] == 1).then_some(s)
        },
    )
    .await;
    assert_eq!(swarm["state"], "paused");
    assert_eq!(api.task(task).await["state"], "queued");
    let resumed = expect_json(
        api.post_empty(&format!("/api/v1/swarms/{id}/resume")).await,
        200,
    )
    .await;
    assert_eq!(resumed["state"], "active");
    assert_eq!(
        api.wait_task(task, &["succeeded"]).await["state"],
        "succeeded"
    );

    let scaled = expect_json(
        api.post(
            &format!("/api/v1/swarms/{id}/scale"),
            json!({"type": "coder", "min": 3, "max": 4}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(scaled["pools"][0]["min"], 3);
    assert_eq!(scaled["pools"][0]["driver"], "exec", "the driver was kept");
    let live = eventually("three idle agents", RUN_TIMEOUT, async || {
        let s = api.get_json(&format!("/api/v1/swarms/{id}")).await;
        (s["agents_by_state"]["idle"] == 3).then_some(s)
    })
    .await;
    assert_eq!(live["pools"][0]["max"], 4);
    // A pool of a new type needs a driver.
    let resp = api
        .post(
            &format!("/api/v1/swarms/{id}/scale"),
            json!({"type": "tester", "min": 1}),
        )
        .await;
    let p = crate::common::expect_problem(resp, 422, "validation").await;
    assert_eq!(p["field"], "driver");

    let spawned = expect_json(
        api.post(
            &format!("/api/v1/swarms/{id}/agents"),
            json!({"type": "reviewer", "driver": "noop"}),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(spawned["capabilities"], json!(["review"]));
    let agent = spawned["id"].as_str().unwrap();
    let stopped = expect_json(
        api.post_empty(&format!("/api/v1/agents/{agent}/stop"))
            .await,
        200,
    )
    .await;
    assert_eq!(stopped["state"], "stopped");
    let all = api.get_json("/api/v1/agents?state=stopped").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 1, "{all}");

    let stopped = expect_json(
        api.post_empty(&format!("/api/v1/swarms/{id}/stop")).await,
        200,
    )
    .await;
    assert_eq!(stopped["state"], "stopped");
    let again = api.post_empty(&format!("/api/v1/swarms/{id}/resume")).await;
    crate::common::expect_problem(again, 409, "conflict").await;
    server.shutdown().await;
}

/// The tenant-wide agent listing pages across swarms; filters and cursors are checked.
#[tokio::test]
async fn agents_page_across_swarms() {
    let server = TestServer::start_sqlite().await;
    let (_, admin) = server.tenant_with_key("acme", "admin").await;
    let api = Api::new(&server, &admin);
    let mut expected = Vec::new();
    for (name, n) in [("one", 2), ("two", 0), ("three", 3)] {
        let s = api
            .create_swarm(json!({"name": name, "topology": "mesh",
                                 "agents": [{"type": "tester", "driver": "noop", "min": n}]}))
            .await;
        let page = api
            .get_json(&format!(
                "/api/v1/agents?swarm={}",
                s["id"].as_str().unwrap()
            ))
            .await;
        for a in page["items"].as_array().unwrap() {
            expected.push(a["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(expected.len(), 5);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => "/api/v1/agents?limit=2".to_string(),
            Some(c) => format!("/api/v1/agents?limit=2&cursor={c}"),
        };
        let page = api.get_json(&path).await;
        pages += 1;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|a| a["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 10, "the listing ends");
    }
    assert_eq!(seen, expected);
    let idle = api.get_json("/api/v1/agents?state=idle").await;
    assert_eq!(idle["items"].as_array().unwrap().len(), 5);
    let p = crate::common::expect_problem(
        api.get("/api/v1/agents?state=sleepy").await,
        400,
        "bad-request",
    )
    .await;
    assert_eq!(p["field"], "state");
    let p = crate::common::expect_problem(
        api.get("/api/v1/agents?cursor=zz").await,
        400,
        "bad-request",
    )
    .await;
    assert_eq!(p["field"], "cursor");
    let p =
        crate::common::expect_problem(api.get("/api/v1/agents?swarm=nope").await, 404, "not-found")
            .await;
    assert!(p["detail"].as_str().unwrap().contains("nope"));
    server.shutdown().await;
}

/// Tenant quotas: the superadmin sets them, the tenant's admin reads them, nobody else does.
#[tokio::test]
async fn tenant_quota_routes() {
    let server = TestServer::start_sqlite().await;
    let (tenant, admin) = server.tenant_with_key("acme", "admin").await;
    let dev = server.create_key(&tenant, "acme-dev", "developer").await;
    let (_, rival) = server.tenant_with_key("rival", "admin").await;
    let sa = Api::new(&server, &server.admin_token);
    let path = "/api/v1/tenants/acme/quota";
    let put = |api: &Api<'_>, body: Value| {
        let req = api
            .server
            .client()
            .put(api.server.at(path))
            .bearer_auth(&api.token)
            .json(&body);
        async move { req.send().await.unwrap() }
    };
    let default = expect_json(Api::new(&server, &admin).get(path).await, 200).await;
    assert_eq!(default, json!({"weight": 1, "max_running": null}));
    let set = expect_json(put(&sa, json!({"weight": 5, "max_running": 10})).await, 200).await;
    assert_eq!(set, json!({"weight": 5, "max_running": 10}));
    let by_id = format!("/api/v1/tenants/{tenant}/quota");
    assert_eq!(Api::new(&server, &admin).get_json(&by_id).await, set);

    for (token, status) in [(&admin, 403), (&dev, 403), (&rival, 403)] {
        let resp = put(&Api::new(&server, token), json!({"weight": 9})).await;
        crate::common::expect_problem(resp, status, "forbidden").await;
    }
    crate::common::expect_problem(Api::new(&server, &dev).get(path).await, 403, "forbidden").await;
    crate::common::expect_problem(Api::new(&server, &rival).get(path).await, 404, "not-found")
        .await;
    for (body, field) in [
        (json!({"weight": 0}), "weight"),
        (json!({"weight": 1001}), "weight"),
        (json!({"weight": 2, "max_running": 0}), "max_running"),
        (json!({"weight": 2, "burst": 1}), "burst"),
    ] {
        let p = crate::common::expect_problem(put(&sa, body).await, 422, "validation").await;
        assert_eq!(p["field"], field);
    }
    let quota = server.store.tenant_quota(&tenant).await.unwrap();
    assert_eq!(
        (quota.weight, quota.max_running),
        (5, Some(10)),
        "refused writes changed nothing"
    );
    let resp = put(&sa, json!({"weight": 3, "max_running": null})).await;
    assert_eq!(
        expect_json(resp, 200).await,
        json!({"weight": 3, "max_running": null})
    );
    server.shutdown().await;
}
