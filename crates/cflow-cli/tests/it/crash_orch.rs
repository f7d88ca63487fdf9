//! Orchestration under `kill -9`: a remote worker killed mid-task (the task completes on another
//! worker, each attempt recorded once), and the server killed with tasks queued and running
//! (after the restart every accepted task completes, exactly one attempt of each succeeds, and
//! the ledger verifies).

use crate::harness::{Server, cflow_in, run};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(90);

/// Short leases and heartbeats so a lost worker is noticed in seconds; no rate limits.
const ENV: &[(&str, &str)] = &[
    ("CFLOW_LEASE_MS", "3000"),
    ("CFLOW_HEARTBEAT_MS", "500"),
    ("CFLOW_RATE_LIMIT_PER_KEY_RPS", "0"),
    ("CFLOW_RATE_LIMIT_PER_TENANT_RPS", "0"),
];

/// A small synchronous client of the HTTP API (the test itself is synchronous, like the
/// processes it drives).
struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Api {
    fn new(server: &Server) -> Api {
        Api {
            base: server.url.clone(),
            token: server.admin_token(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method.clone(), format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let (status, text) = self.rt.block_on(async {
            let resp = req
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            let status = resp.status();
            (status, resp.text().await.unwrap())
        });
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None)
    }

    fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body))
    }

    fn swarm(&self, agents: i64) -> String {
        let name = format!("crash-{}", std::process::id());
        self.post(
            "/swarms",
            json!({"name": name, "topology": "mesh",
                   "agents": [{"type": "coder", "driver": "exec", "min": agents, "max": agents}]}),
        )["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn task(&self, id: &str) -> Value {
        self.get(&format!("/tasks/{id}"))
    }

    /// Polls until `done` holds, or fails with `what` and the last value seen.
    fn wait_for(&self, what: &str, mut done: impl FnMut(&Api) -> Option<Value>) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(v) = done(self) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn spawn_worker(server: &Server, token: &str, id: &str) -> Child {
    cflow_in(server.work())
        .args(["worker", "--slots", "2", "--id", id, "--drain-timeout", "1"])
        .env("CFLOW_SERVER", &server.url)
        .env("CFLOW_TOKEN", token)
        .env("CFLOW_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning cflow worker")
}

#[test]
fn a_task_survives_kill_9_of_its_remote_worker() {
    let mut env = ENV.to_vec();
    env.push(("CFLOW_LOCAL_SLOTS", "0"));
    let server = Server::launch(tempfile::tempdir().unwrap(), "up", &env);
    let api = Api::new(&server);
    let tenant = api.get("/whoami")["tenant_id"]
        .as_str()
        .unwrap()
        .to_string();
    let key = api.post(
        &format!("/tenants/{tenant}/keys"),
        json!({"name": "worker", "role": "worker"}),
    );
    let worker_token = key["token"].as_str().unwrap().to_string();
    let swarm = api.swarm(2);
    let mut a = spawn_worker(&server, &worker_token, "wa");
    api.wait_for("worker wa to connect", |api| {
        let w = api.get("/workers");
        let items = w["items"].as_array()?;
        items
            .iter()
            .any(|w| w["id"] == "wa" && w["state"] == "active")
            .then_some(w)
    });
    let submitted = api.post(
        "/tasks",
        json!({"tasks": [{"swarm": swarm, "max_attempts": 3,
                           "spec": {"command": "sleep 2; echo finished"}}]}),
    );
    let id = submitted["tasks"][0]["id"].as_str().unwrap().to_string();
    api.wait_for("the task to run on wa", |api| {
        let t = api.task(&id);
        (t["state"] == "running" && t["attempts"][0]["worker_id"] == "wa").then_some(t)
    });
    a.kill().unwrap();
    a.wait().unwrap();
    let mut b = spawn_worker(&server, &worker_token, "wb");
    let done = api.wait_for("the task to finish on wb", |api| {
        let t = api.task(&id);
        let state = t["state"].as_str()?;
        matches!(state, "succeeded" | "failed" | "cancelled" | "timed_out").then_some(t)
    });
    // The killed worker went silent: suspected after two heartbeats, lost after a lease.
    api.wait_for("worker wa to be declared lost", |api| {
        let w = api.get("/workers");
        let items = w["items"].as_array()?;
        items
            .iter()
            .any(|w| w["id"] == "wa" && w["state"] == "lost")
            .then_some(w)
    });
    let _ = b.kill();
    let _ = b.wait();
    assert_eq!(done["state"], "succeeded", "{done}");
    let attempts = done["attempts"].as_array().unwrap();
    assert_eq!(
        attempts.len(),
        2,
        "one lost attempt, one that succeeded: {done}"
    );
    assert_eq!(attempts[0]["worker_id"], "wa");
    assert_eq!(attempts[0]["state"], "lost");
    assert_eq!(attempts[1]["worker_id"], "wb");
    assert_eq!(attempts[1]["state"], "succeeded");
    assert!(
        attempts[1]["stdout"]
            .as_str()
            .unwrap_or("")
            .contains("finished")
    );
    assert_ne!(attempts[0]["epoch"], attempts[1]["epoch"]);
    let (status, _, _) = server.stop();
    assert!(status.success());
}

#[test]
fn accepted_tasks_survive_kill_9_of_the_server() {
    let server = Server::launch(tempfile::tempdir().unwrap(), "up", ENV);
    let api = Api::new(&server);
    let swarm = api.swarm(4);
    let tasks: Vec<Value> = (0..40)
        .map(|_| json!({"swarm": swarm, "max_attempts": 5, "spec": {"command": "sleep 0.2; echo ok"}}))
        .collect();
    let submitted = api.post("/tasks", json!({ "tasks": tasks }));
    let ids: Vec<String> = submitted["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 40);
    // Kill while some tasks are done, some running and the rest still queued.
    api.wait_for("some tasks to finish", |api| {
        let done = api.get(&format!("/tasks?swarm={swarm}&state=succeeded&limit=1000"));
        (done["items"].as_array()?.len() >= 4).then_some(done)
    });
    let (_, work, _) = server.kill9();
    let server = Server::launch(work, "up", ENV);
    let api = Api::new(&server);
    for id in &ids {
        let t = api.wait_for("every accepted task to finish after the restart", |api| {
            let t = api.task(id);
            matches!(
                t["state"].as_str()?,
                "succeeded" | "failed" | "cancelled" | "timed_out"
            )
            .then_some(t)
        });
        assert_eq!(t["state"], "succeeded", "{t}");
        let attempts = t["attempts"].as_array().unwrap();
        let succeeded = attempts
            .iter()
            .filter(|a| a["state"] == "succeeded")
            .count();
        assert_eq!(succeeded, 1, "exactly one successful attempt: {t}");
        // Every other attempt was cut off by the crash and is recorded as lost, once.
        assert!(
            attempts
                .iter()
                .all(|a| a["state"] == "succeeded" || a["state"] == "lost"),
            "{t}"
        );
        let mut epochs: Vec<i64> = attempts
            .iter()
            .map(|a| a["epoch"].as_i64().unwrap())
            .collect();
        epochs.dedup();
        assert_eq!(epochs.len(), attempts.len(), "one record per attempt: {t}");
    }
    let (status, work, _) = server.stop();
    assert!(status.success());
    let verify = run(Command::new(env!("CARGO_BIN_EXE_cflow"))
        .current_dir(work.path())
        .args(["audit", "verify", "--data-dir"])
        .arg(work.path().join(".cflow")));
    verify.ok();
}
