//! The sandbox through the whole server: a task's command runs in the local pool's sandbox, its
//! attempt records the layers, the refused operations and how it ended, `/metrics` counts them,
//! its artifacts (the workspace's files) are listed and served; a tenant's admin opt-out runs
//! commands unsandboxed (audited, and the attempt says so); a task asking for more network
//! than its policy grants fails with the reason and is not retried.

use crate::common::expect_json;
use crate::orchestration::{Api, coders};
use cflow_test_support::server::TestServer;
use serde_json::{Value, json};

async fn put_sandbox(server: &TestServer, tenant: &str, body: Value) -> reqwest::Response {
    server
        .client()
        .put(server.at(&format!("/api/v1/tenants/{tenant}/sandbox")))
        .bearer_auth(&server.admin_token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn metrics(server: &TestServer) -> String {
    server
        .client()
        .get(server.at("/metrics"))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn counter(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_in_the_sandbox_and_their_attempts_say_what_it_saw() {
    let server = TestServer::start_sqlite().await;
    let (tenant, admin) = server.tenant_with_key("sbx", "admin").await;
    let api = Api::new(&server, &admin);
    let swarm = api
        .create_swarm(json!({"name": "sbx", "topology": "mesh", "agents": coders(2)}))
        .await;
    let sid = swarm["id"].clone();

    // A command that tries the network (refused: the network is off), writes outside its
    // workspace (read-only) and leaves a report in its workspace (an artifact).
    let hostile = "python3 -c \"import socket\ntry:\n socket.socket(socket.AF_INET)\n print('NET-OPEN')\nexcept OSError as e:\n print('net refused', e.errno)\" ; \
                   echo pwned > /etc/cflow-sbx-test 2>/dev/null || echo 'etc read-only'; \
                   mkdir -p out && echo '{\"ok\":true}' > out/report.json; cat /proc/self/status | grep NoNewPrivs";
    let tasks = api
        .submit(json!([{
            "swarm": sid,
            "spec": {"command": hostile, "artifacts": ["out/*.json"], "env": {"PATH": "/usr/local/bin:/usr/bin:/bin"}}
        }]))
        .await;
    let id = tasks[0]["id"].as_str().unwrap().to_string();
    let t = api.wait_task(&id, &["succeeded", "failed"]).await;
    assert_eq!(t["state"], "succeeded", "{t:#}");
    let a = &t["attempts"][0];
    let stdout = a["stdout"].as_str().unwrap();
    assert!(stdout.contains("net refused 1"), "{stdout}");
    assert!(!stdout.contains("NET-OPEN"), "{stdout}");
    assert!(stdout.contains("etc read-only"), "{stdout}");
    assert!(stdout.contains("NoNewPrivs:\t1"), "{stdout}");
    assert!(!std::path::Path::new("/etc/cflow-sbx-test").exists());
    assert_eq!(a["end"], "exit 0");
    let iso = a["isolation"].as_str().unwrap();
    assert!(iso.starts_with("sandbox: "), "{iso}");
    for layer in [
        "user_ns",
        "pid_ns",
        "net_ns",
        "filesystem",
        "landlock",
        "seccomp",
        "cgroup",
    ] {
        assert!(iso.contains(layer), "{layer} missing: {iso}");
        assert_eq!(a["sandbox"]["layers"][layer]["state"], "active", "{a:#}");
    }
    let denied: Vec<&str> = a["sandbox"]["denied"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(denied.contains(&"socket(AF_INET)"), "{denied:?}");

    // The artifacts (the file matching the glob, and the log) are listed and served, byte for
    // byte.
    let list = expect_json(api.get(&format!("/api/v1/tasks/{id}/artifacts")).await, 200).await;
    let arts = list["artifacts"].as_array().unwrap();
    let names: Vec<(&str, &str)> = arts
        .iter()
        .map(|a| (a["name"].as_str().unwrap(), a["kind"].as_str().unwrap()))
        .collect();
    assert!(names.contains(&("out/report.json", "file")), "{list:#}");
    assert!(names.contains(&("stdout.log", "log")), "{list:#}");
    assert!(
        names.iter().all(|(n, _)| *n != "changes.patch"),
        "an empty workspace has no patch"
    );
    let sha_of = |name: &str| {
        arts.iter()
            .find(|a| a["name"] == name)
            .and_then(|a| a["sha256"].as_str())
            .unwrap()
            .to_string()
    };
    let fetch = |sha: String| {
        let api = &api;
        let id = &id;
        async move {
            api.get(&format!("/api/v1/tasks/{id}/artifacts/{sha}"))
                .await
                .bytes()
                .await
                .unwrap()
        }
    };
    let body = fetch(sha_of("out/report.json")).await;
    assert_eq!(&body[..], b"{\"ok\":true}\n");
    let log = fetch(sha_of("stdout.log")).await;
    assert_eq!(&log[..], stdout.as_bytes());

    let m = metrics(&server).await;
    assert!(counter(&m, "cflow_sandbox_denied_total") >= 1, "{m}");
    assert!(
        counter(&m, "cflow_sandbox_attempts_total{sandboxed=\"true\"}") >= 1,
        "{m}"
    );

    // More network than the policy grants: failed with the reason, one attempt only.
    let tasks = api
        .submit(json!([{"swarm": sid, "max_attempts": 3, "spec": {"command": "true", "network": "full"}}]))
        .await;
    let nid = tasks[0]["id"].as_str().unwrap().to_string();
    let t = api.wait_task(&nid, &["failed"]).await;
    assert_eq!(t["attempts"].as_array().unwrap().len(), 1, "{t:#}");
    let err = t["attempts"][0]["stderr"]
        .as_str()
        .unwrap_or("")
        .to_string()
        + t["reason"].as_str().unwrap_or("");
    assert!(
        err.contains("network 'full'") && err.contains("allows 'off'"),
        "{t:#}"
    );

    // The admin's opt-out for the tenant: audited, and the attempt says it ran unsandboxed.
    let r = put_sandbox(&server, &tenant, json!({"mode": "off"})).await;
    assert_eq!(r.status(), 200);
    let tasks = api
        .submit(
            json!([{"swarm": sid, "spec": {"command": "cat /proc/self/status | grep NoNewPrivs"}}]),
        )
        .await;
    let oid = tasks[0]["id"].as_str().unwrap().to_string();
    let t = api.wait_task(&oid, &["succeeded", "failed"]).await;
    assert_eq!(t["state"], "succeeded", "{t:#}");
    let a = &t["attempts"][0];
    assert!(
        a["stdout"].as_str().unwrap().contains("NoNewPrivs:\t0"),
        "{a:#}"
    );
    let iso = a["isolation"].as_str().unwrap();
    assert!(
        iso.starts_with("none: an admin turned the sandbox off"),
        "{iso}"
    );
    let m = metrics(&server).await;
    assert!(
        counter(&m, "cflow_sandbox_attempts_total{sandboxed=\"false\"}") >= 1,
        "{m}"
    );
    let audit = expect_json(
        server
            .client()
            .get(server.at("/api/v1/audit?limit=1000"))
            .bearer_auth(&server.admin_token)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    // The opt-out is in the ledger, with its value.
    let entry = audit["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(audit["items"].as_array().into_iter().flatten())
        .find(|e| e.to_string().contains("tenant.sandbox"))
        .cloned();
    let entry = entry.unwrap_or_else(|| panic!("no tenant.sandbox entry: {audit:#}"));
    assert!(entry.to_string().contains("off"), "{entry:#}");

    // Back to enforced: the next attempt is sandboxed again.
    let r = put_sandbox(&server, &tenant, json!({})).await;
    assert_eq!(r.status(), 200);
    let tasks = api
        .submit(json!([{"swarm": sid, "spec": {"command": "true"}}]))
        .await;
    let t = api
        .wait_task(tasks[0]["id"].as_str().unwrap(), &["succeeded", "failed"])
        .await;
    assert!(
        t["attempts"][0]["isolation"]
            .as_str()
            .unwrap()
            .starts_with("sandbox: "),
        "{t:#}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_opt_out_is_the_superadmins_alone() {
    let server = TestServer::start_sqlite().await;
    let (_, admin) = server.tenant_with_key("sbx-agent", "admin").await;
    let api = Api::new(&server, &admin);
    let swarm = api
        .create_swarm(json!({"name": "a", "topology": "mesh", "agents": coders(0)}))
        .await;
    let sid = swarm["id"].as_str().unwrap();
    // A tenant's admin may not turn its own agents' sandbox off; nothing is created.
    let r = api
        .post(
            &format!("/api/v1/swarms/{sid}/agents"),
            json!({"type": "coder", "driver": "exec", "sandbox": {"mode": "off"}}),
        )
        .await;
    assert_eq!(r.status(), 403);
    let agents = api.get_json(&format!("/api/v1/agents?swarm={sid}")).await;
    assert_eq!(
        agents["agents"].as_array().map_or(0, Vec::len),
        0,
        "{agents:#}"
    );

    // The superadmin may, in its own tenant; that agent's commands run unsandboxed and say so.
    let root = Api::new(&server, &server.admin_token);
    let swarm = root
        .create_swarm(json!({"name": "root", "topology": "mesh", "agents": coders(0)}))
        .await;
    let sid = swarm["id"].as_str().unwrap();
    let bad = root
        .post(
            &format!("/api/v1/swarms/{sid}/agents"),
            json!({"type": "coder", "driver": "exec", "sandbox": {"mode": "sideways"}}),
        )
        .await;
    assert_eq!(bad.status(), 422);
    let agent = expect_json(
        root.post(
            &format!("/api/v1/swarms/{sid}/agents"),
            json!({"type": "coder", "driver": "exec", "sandbox": {"mode": "off"}}),
        )
        .await,
        201,
    )
    .await;
    let tasks = root
        .submit(json!([{"swarm": sid, "spec": {"command": "true"}}]))
        .await;
    let t = root
        .wait_task(tasks[0]["id"].as_str().unwrap(), &["succeeded", "failed"])
        .await;
    assert_eq!(t["attempts"][0]["agent_id"], agent["id"]);
    let iso = t["attempts"][0]["isolation"].as_str().unwrap();
    assert!(
        iso.starts_with("none: an admin turned the sandbox off"),
        "{iso}"
    );
    server.shutdown().await;
}
