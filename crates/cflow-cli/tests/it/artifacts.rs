//! `cflow task artifacts` against a real server: artifacts uploaded through the worker route
//! (by a worker that took the task over HTTP) are listed, downloaded under a directory with
//! their SHA-256 checked, and `cflow tenant sandbox` sets, shows and clears overrides.

use crate::harness::{Server, run};
use crate::orchestration::poll;
use serde_json::{Value, json};
use std::time::Duration;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A remote worker, speaking the protocol over HTTP with the admin (superadmin) token.
struct Remote<'a> {
    server: &'a Server,
    token: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Remote<'_> {
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.server.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.rt.block_on(async {
            let resp = req.send().await.expect("request");
            let status = resp.status().as_u16();
            let text = resp.text().await.expect("body");
            (status, serde_json::from_str(&text).unwrap_or(json!(text)))
        })
    }

    fn upload(&self, worker: &str, task: &str, epoch: i64, name: &str, bytes: &[u8]) -> u16 {
        let mut url = reqwest::Url::parse(&format!(
            "{}/api/v1/workers/{worker}/attempts/{task}/{epoch}/artifacts",
            self.server.url
        ))
        .unwrap();
        url.query_pairs_mut()
            .append_pair("name", name)
            .append_pair("kind", "file");
        let req = self
            .http
            .put(url)
            .bearer_auth(&self.token)
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec());
        self.rt
            .block_on(async { req.send().await.expect("upload").status().as_u16() })
    }
}

#[test]
fn task_artifacts_are_listed_and_downloaded_with_their_hashes_checked() {
    let server = Server::start();
    let remote = Remote {
        server: &server,
        token: server.admin_token(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        rt: runtime(),
    };
    let swarm = run(server.cflow().args([
        "--output",
        "json",
        "swarm",
        "init",
        "arts",
        "--agents",
        "coder=exec:1",
    ]))
    .json();
    let sid = swarm["id"].as_str().unwrap().to_string();
    // Pinned to a label only the remote worker has, so the server's own pool leaves it alone.
    let (status, _) = remote.call(
        reqwest::Method::POST,
        "/api/v1/workers",
        Some(json!({"worker_id": "w-cli", "name": "cli-test", "slots": 1,
                    "drivers": ["exec"], "labels": {"zone": "cli"}})),
    );
    assert_eq!(status, 201);
    let task = run(server.cflow().args([
        "--output", "json", "task", "submit", "--swarm", &sid, "--label", "zone=cli", "--", "true",
    ]))
    .json();
    let task = task["tasks"][0]["id"].as_str().unwrap().to_string();
    let assignment = poll(30, "an assignment for the remote worker", || {
        let (status, body) = remote.call(
            reqwest::Method::POST,
            "/api/v1/workers/w-cli/poll",
            Some(json!({"free_slots": 1, "wait_ms": 1000})),
        );
        assert_eq!(status, 200, "{body}");
        body["assignments"].as_array().unwrap().first().cloned()
    });
    assert_eq!(assignment["task_id"], task.as_str());
    let epoch = assignment["epoch"].as_i64().unwrap();
    let patch = b"--- a/x\n+++ b/x\n@@ -1 +1 @@\n-old\n+new\n";
    let report = "report \u{e9}\n".as_bytes();
    assert_eq!(
        remote.upload("w-cli", &task, epoch, "changes.patch", patch),
        201
    );
    assert_eq!(
        remote.upload("w-cli", &task, epoch, "out/report.txt", report),
        201
    );
    let (status, body) = remote.call(
        reqwest::Method::POST,
        "/api/v1/workers/w-cli/reports",
        Some(json!({"reports": [{"type": "finished", "task_id": task, "epoch": epoch,
            "outcome": {"status": "succeeded", "exit_code": 0, "wall_ms": 1,
                        "isolation": "none: cli test",
                        "detail": {"end": "exit 0", "isolation": "none: cli test", "sandbox": null}}}]})),
    );
    assert_eq!(
        (status, &body["acks"][0]["status"]),
        (200, &json!(200)),
        "{body}"
    );

    // The table: one row per artifact, hashes shortened.
    let table = run(server.cflow().args(["task", "artifacts", &task]));
    let out = table.ok();
    let sha_patch = cflow_store::sha256_hex(patch);
    assert!(
        out.contains("changes.patch") && out.contains("out/report.txt"),
        "{out}"
    );
    assert!(
        out.contains(&sha_patch[..12]) && !out.contains(&sha_patch),
        "{out}"
    );

    // The download: files under DIR (parents created), identical bytes.
    let dir = server.work().join("dl");
    let dl = run(server
        .cflow()
        .args(["task", "artifacts", &task, "--download"])
        .arg(&dir));
    let out = dl.ok();
    assert!(out.contains("2 artifact(s) written"), "{out}");
    assert_eq!(std::fs::read(dir.join("changes.patch")).unwrap(), patch);
    assert_eq!(std::fs::read(dir.join("out/report.txt")).unwrap(), report);

    // JSON output names every file written.
    let dir2 = server.work().join("dl2");
    let doc = run(server
        .cflow()
        .args(["--output", "json", "task", "artifacts", &task, "--download"])
        .arg(&dir2))
    .json();
    assert_eq!(doc["artifacts"].as_array().unwrap().len(), 2, "{doc}");

    // The attempt shows how it ended.
    let got = run(server
        .cflow()
        .args(["--output", "json", "task", "get", &task]))
    .json();
    assert_eq!(got["attempts"][0]["end"], "exit 0", "{got}");
    assert_eq!(got["attempts"][0]["isolation"], "none: cli test");

    // An unknown task: a clear error, nothing written.
    let missing = run(server
        .cflow()
        .args(["task", "artifacts", "no-such-task", "--download"])
        .arg(server.work().join("dl3")));
    assert!(missing.fails().contains("not found"), "{missing:?}");
    assert!(!server.work().join("dl3").exists());
    server.stop();
}

#[test]
fn tenant_sandbox_overrides_are_set_shown_and_cleared() {
    let server = Server::start();
    let none = run(server.cflow().args(["tenant", "sandbox", "default"]));
    assert!(none.ok().contains("no overrides"), "{none:?}");
    let set = run(server.cflow().args([
        "--output",
        "json",
        "tenant",
        "sandbox",
        "default",
        "--set",
        r#"{"network": "loopback", "limits": {"memory_bytes": 1000000}}"#,
    ]))
    .json();
    assert_eq!(set["sandbox"]["network"], "loopback");
    let shown = run(server.cflow().args(["tenant", "sandbox", "default"]));
    assert!(
        shown.ok().contains("\"memory_bytes\": 1000000"),
        "{shown:?}"
    );
    // Bad input: a clear error, and the overrides stay as they were.
    let bad = run(server.cflow().args([
        "tenant",
        "sandbox",
        "default",
        "--set",
        r#"{"network": "wide"}"#,
    ]));
    assert!(bad.fails().contains("network"), "{bad:?}");
    let bad = run(server
        .cflow()
        .args(["tenant", "sandbox", "default", "--set", "{oops"]));
    assert!(bad.fails().contains("--set is not JSON"), "{bad:?}");
    let shown = run(server.cflow().args(["tenant", "sandbox", "default"]));
    assert!(shown.ok().contains("loopback"), "{shown:?}");
    let cleared = run(server
        .cflow()
        .args(["tenant", "sandbox", "default", "--clear"]));
    assert!(cleared.ok().contains("no overrides"), "{cleared:?}");
    server.stop();
}
