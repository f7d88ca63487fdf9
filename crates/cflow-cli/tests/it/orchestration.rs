//! `cflow swarm | agent | task | doctor` against a real server: a swarm's life cycle, a task
//! submitted, read back with its attempts and logs, and cancelled with its dependents.

use crate::harness::{Run, Server, run};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Calls `f` until it returns `Some`, failing the test after `secs` seconds.
#[track_caller]
pub fn poll<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cf(server: &Server, args: &[&str]) -> Run {
    run(server.cflow().args(args))
}

fn json(server: &Server, args: &[&str]) -> Value {
    // Before the subcommand: after `--` it would be part of a task's command.
    let mut a = vec!["--output", "json"];
    a.extend_from_slice(args);
    cf(server, &a).json()
}

#[test]
fn swarm_init_list_pause_resume_stop_and_scale() {
    let server = Server::start();
    let swarm = json(
        &server,
        &[
            "swarm",
            "init",
            "team",
            "--topology",
            "mesh",
            "--strategy",
            "least_loaded",
            "--agents",
            "coder=exec:2..4,tester=exec:1",
        ],
    );
    let id = swarm["id"].as_str().expect("swarm id").to_string();
    assert_eq!(swarm["name"], "team");
    assert_eq!(swarm["topology"], "mesh");
    assert_eq!(swarm["strategy"], "least_loaded");
    assert_eq!(swarm["state"], "active");
    assert_eq!(
        swarm["pools"].as_array().map(Vec::len),
        Some(2),
        "{swarm:#}"
    );

    // The pools' minimum agents are spawned at once.
    let agents = poll(30, "3 agents", || {
        let doc = json(&server, &["agent", "list", "--swarm", &id]);
        let items = doc["items"].as_array().cloned().unwrap_or_default();
        (items.len() == 3).then_some(items)
    });
    assert_eq!(
        agents.iter().filter(|a| a["type"] == "coder").count(),
        2,
        "{agents:#?}"
    );

    let list = json(&server, &["swarm", "list"]);
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == id.as_str()),
        "{list:#}"
    );
    let table = cf(&server, &["swarm", "list"]);
    assert!(table.ok().contains("team"), "{}", table.stdout);

    assert_eq!(json(&server, &["swarm", "pause", &id])["state"], "paused");
    assert_eq!(json(&server, &["swarm", "status", &id])["state"], "paused");
    assert_eq!(json(&server, &["swarm", "resume", &id])["state"], "active");

    let scaled = json(
        &server,
        &[
            "swarm", "scale", &id, "--type", "coder", "--min", "3", "--max", "5",
        ],
    );
    let coder = scaled["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == "coder" || p["agent_type"] == "coder")
        .cloned()
        .unwrap_or_else(|| panic!("{scaled:#}"));
    assert_eq!(
        (coder["min"].as_i64(), coder["max"].as_i64()),
        (Some(3), Some(5))
    );

    assert_eq!(json(&server, &["swarm", "stop", &id])["state"], "stopped");
    // Stopped is final: resuming is a conflict (stopping again changes nothing).
    let again = cf(&server, &["swarm", "resume", &id]);
    assert!(again.fails().contains("conflict"), "{}", again.stderr);
    assert_eq!(json(&server, &["swarm", "status", &id])["state"], "stopped");

    // From a workflow file's [swarm] table, a flag overriding one pool.
    let file = crate::workflow::quickstart();
    let from_file = json(
        &server,
        &[
            "swarm",
            "init",
            "--file",
            file.to_str().unwrap(),
            "--agents",
            "coder=exec:1..2",
        ],
    );
    assert_eq!(from_file["name"], "quickstart");
    assert_eq!(from_file["topology"], "hierarchical");
    let pools = from_file["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 3, "{from_file:#}");
    let coder = pools
        .iter()
        .find(|p| p["type"] == "coder" || p["agent_type"] == "coder")
        .unwrap();
    assert_eq!(
        (coder["min"].as_i64(), coder["max"].as_i64()),
        (Some(1), Some(2))
    );

    // A bad pool is a usage error before anything is sent.
    let bad = cf(
        &server,
        &["swarm", "init", "x", "--agents", "coder=exec:4..2"],
    );
    assert_eq!(bad.code(), Some(2), "{bad:?}");
    assert_eq!(
        json(&server, &["swarm", "list"])["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn agents_spawn_and_stop() {
    let server = Server::start();
    let swarm = json(&server, &["swarm", "init", "crew"]);
    let id = swarm["id"].as_str().unwrap();
    let agent = json(
        &server,
        &[
            "agent", "spawn", "--swarm", id, "--type", "reviewer", "--driver", "exec", "--label",
            "team=web",
        ],
    );
    assert_eq!(agent["type"], "reviewer");
    assert_eq!(agent["labels"]["team"], "web");
    let agent_id = agent["id"].as_str().unwrap();
    let stopped = json(&server, &["agent", "stop", agent_id]);
    assert!(
        matches!(stopped["state"].as_str(), Some("draining" | "stopped")),
        "{stopped:#}"
    );
    poll(30, "the agent to stop", || {
        (json(&server, &["agent", "get", agent_id])["state"] == "stopped").then_some(())
    });
}

#[test]
fn task_submit_get_logs_and_cancel() {
    let server = Server::start();
    let swarm = json(
        &server,
        &["swarm", "init", "work", "--agents", "coder=exec:2"],
    );
    let sid = swarm["id"].as_str().unwrap().to_string();

    let submitted = json(
        &server,
        &[
            "task",
            "submit",
            "--swarm",
            &sid,
            "--requires",
            "code",
            "--",
            "echo",
            "hello from",
            "cflow;",
            "echo",
            "'CFLOW_RESULT {\"n\": 7}'",
        ],
    );
    let id = submitted["tasks"][0]["id"].as_str().unwrap().to_string();
    let done = poll(60, "the task to succeed", || {
        let t = json(&server, &["task", "get", &id]);
        matches!(
            t["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled" | "timed_out")
        )
        .then_some(t)
    });
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["result"]["n"], 7, "{done:#}");
    let attempts = done["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "{done:#}");
    assert_eq!(attempts[0]["exit_code"], 0);
    let logs = cf(&server, &["task", "logs", &id]);
    assert!(logs.ok().contains("hello from cflow"), "{}", logs.stdout);
    let human = cf(&server, &["task", "get", &id]);
    assert!(human.ok().contains("attempts:"), "{}", human.stdout);

    // Idempotency: the same key gives back the same task.
    let k1 = json(
        &server,
        &[
            "task",
            "submit",
            "--swarm",
            &sid,
            "--idempotency-key",
            "k-1",
            "--",
            "true",
        ],
    );
    let k2 = json(
        &server,
        &[
            "task",
            "submit",
            "--swarm",
            &sid,
            "--idempotency-key",
            "k-1",
            "--",
            "true",
        ],
    );
    assert_eq!(k1["tasks"][0]["id"], k2["tasks"][0]["id"]);
    assert_eq!(k2["tasks"][0]["existing"], true);

    // A long task, a dependent waiting for it, then cancel: both end cancelled.
    let long = json(
        &server,
        &[
            "task",
            "submit",
            "--swarm",
            &sid,
            "--timeout",
            "5m",
            "--",
            "sleep 300",
        ],
    );
    let long_id = long["tasks"][0]["id"].as_str().unwrap().to_string();
    let dep = json(
        &server,
        &[
            "task",
            "submit",
            "--swarm",
            &sid,
            "--depends-on",
            &long_id,
            "--",
            "echo never",
        ],
    );
    let dep_id = dep["tasks"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(dep["tasks"][0]["state"], "pending");
    poll(60, "the long task to run", || {
        (json(&server, &["task", "get", &long_id])["state"] == "running").then_some(())
    });
    let cancelled = json(&server, &["task", "cancel", &long_id]);
    assert_eq!(cancelled["state"], "cancelled", "{cancelled:#}");
    let dependent = poll(30, "the dependent to be cancelled", || {
        let t = json(&server, &["task", "get", &dep_id]);
        (t["state"] == "cancelled").then_some(t)
    });
    assert!(
        dependent["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&long_id)),
        "{dependent:#}"
    );
    let again = cf(&server, &["task", "cancel", &long_id]);
    assert!(again.fails().contains("conflict"), "{}", again.stderr);

    let listed = json(&server, &["task", "list", "--state", "cancelled"]);
    assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{listed:#}");

    // Bad input: refused by the server with the field named, nothing submitted.
    let before = json(&server, &["task", "list"])["items"]
        .as_array()
        .unwrap()
        .len();
    let bad = cf(
        &server,
        &[
            "task",
            "submit",
            "--swarm",
            &sid,
            "--priority",
            "500",
            "--",
            "true",
        ],
    );
    assert!(bad.fails().contains("priority"), "{}", bad.stderr);
    let after = json(&server, &["task", "list"])["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after);
}

#[test]
fn task_logs_follow_streams_until_the_task_ends() {
    let server = Server::start();
    let swarm = json(
        &server,
        &["swarm", "init", "logs", "--agents", "coder=exec:1"],
    );
    let sid = swarm["id"].as_str().unwrap();
    let t = json(
        &server,
        &[
            "task",
            "submit",
            "--swarm",
            sid,
            "--",
            "for i in 1 2 3; do echo line $i; sleep 0.3; done",
        ],
    );
    let id = t["tasks"][0]["id"].as_str().unwrap();
    let r = cf(&server, &["task", "logs", id, "--follow"]);
    let out = r.ok();
    for i in 1..=3 {
        assert!(out.contains(&format!("line {i}")), "{out}");
    }
    assert!(r.stderr.contains("succeeded"), "{}", r.stderr);
}

#[test]
fn doctor_reports_the_server_and_each_sandbox_layer() {
    let server = Server::start();
    let r = cf(&server, &["doctor"]);
    let out = r.ok();
    assert!(out.contains("reachable at"), "{out}");
    assert!(out.contains("ready"), "{out}");
    assert!(out.contains("sqlite"), "{out}");
    assert!(out.contains("exec: commands run in the sandbox"), "{out}");
    // Every layer is named with its state; on this machine (root, cgroup v1, landlock) all are
    // active.
    for layer in [
        "user_ns",
        "pid_ns",
        "mount_ns",
        "ipc_ns",
        "uts_ns",
        "net_ns",
        "filesystem",
        "landlock",
        "seccomp",
        "no_new_privs",
        "session",
        "rlimits",
        "cgroup",
    ] {
        assert!(
            out.contains(&format!("layer      ok    {layer}: active")),
            "{layer}: {out}"
        );
    }
    let doc = json(&server, &["doctor"]);
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["auth"]["role"], "superadmin");
    let exec = doc["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["driver"] == "exec")
        .cloned()
        .unwrap();
    assert_eq!(exec["isolated"], true);
    assert_eq!(doc["sandbox"]["layers"]["seccomp"]["state"], "active");

    // Without a server: exit 1 and the start hint.
    let (_, work, _) = server.stop();
    let r = run(crate::harness::cflow_in(work.path()).args([
        "doctor",
        "--server",
        "http://127.0.0.1:9",
    ]));
    let _ = r.fails();
    assert!(r.stdout.contains("cannot reach"), "{}", r.stdout);
}

/// With a PostgreSQL `database_url` configured, `cflow doctor` reads that server's settings; a
/// database it cannot reach is reported without its password. Neither decides whether the check
/// passes: here no cflow server runs, so it exits 1 either way.
#[test]
fn doctor_reads_the_configured_postgres_settings() {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let Some(url) = rt.block_on(cflow_test_support::pg::fresh_postgres_url()) else {
        return;
    };
    let work = tempfile::tempdir().expect("a temporary directory");
    let doctor = |database: &str| {
        let r = run(crate::harness::cflow_in(work.path())
            .env("CFLOW_DATABASE_URL", database)
            .args([
                "--output",
                "json",
                "doctor",
                "--server",
                "http://127.0.0.1:9",
            ]));
        let _ = r.fails();
        serde_json::from_str::<Value>(&r.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.stdout))
    };
    let doc = doctor(&url);
    let d = &doc["database"];
    assert_eq!(d["backend"], "postgresql", "{d:#}");
    let shown: String = rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        sqlx::query_scalar("SELECT current_setting('shared_buffers')")
            .fetch_one(&mut conn)
            .await
            .expect("SHOW shared_buffers")
    });
    let reported = d["settings"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "shared_buffers"))
        .unwrap_or_else(|| panic!("no shared_buffers in {d:#}"));
    assert_eq!(reported["value"], shown.as_str());
    assert!(
        d["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("PostgreSQL ")),
        "{d:#}"
    );

    let doc = doctor("postgres://cflow:hunter2-secret@127.0.0.1:9/cflow");
    let d = &doc["database"];
    assert!(d["settings_error"].is_string(), "{d:#}");
    assert!(d["settings"].is_null(), "{d:#}");
    assert!(!doc.to_string().contains("hunter2-secret"), "{doc:#}");
}

/// Wherever a command takes a swarm, its name works as well as its id (names are unique in a
/// tenant); an unknown one is an error that says where to look, and nothing is sent.
#[test]
fn a_swarm_is_named_by_its_name_or_its_id() {
    let server = Server::start();
    let swarm = json(
        &server,
        &["swarm", "init", "named", "--agents", "coder=exec:1"],
    );
    let id = swarm["id"].as_str().unwrap().to_string();
    assert_eq!(
        json(&server, &["swarm", "status", "named"])["id"],
        id.as_str()
    );
    assert_eq!(json(&server, &["swarm", "status", &id])["id"], id.as_str());

    let task = json(
        &server,
        &[
            "task", "submit", "--swarm", "named", "--", "echo", "by-name",
        ],
    );
    let task_id = task["tasks"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{task:#}"));
    let got = json(&server, &["task", "get", task_id]);
    assert_eq!(got["swarm_id"], id.as_str(), "{got:#}");
    let listed = json(&server, &["task", "list", "--swarm", "named"]);
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(ids, [task_id], "{listed:#}");

    let spawned = json(
        &server,
        &[
            "agent", "spawn", "--swarm", "named", "--type", "tester", "--driver", "exec",
        ],
    );
    assert_eq!(spawned["swarm_id"], id.as_str(), "{spawned:#}");
    let agents = poll(30, "2 agents", || {
        let doc = json(&server, &["agent", "list", "--swarm", "named"]);
        let items = doc["items"].as_array().cloned().unwrap_or_default();
        (items.len() == 2).then_some(items)
    });
    assert!(agents.iter().all(|a| a["swarm_id"] == id.as_str()));

    assert_eq!(
        json(&server, &["swarm", "pause", "named"])["state"],
        "paused"
    );
    assert_eq!(
        json(&server, &["swarm", "resume", "named"])["state"],
        "active"
    );

    let unknown = cf(
        &server,
        &["task", "submit", "--swarm", "nosuch", "--", "true"],
    );
    let err = unknown.fails();
    assert!(
        err.contains("no swarm with the id or name 'nosuch'") && err.contains("cflow swarm list"),
        "{err}"
    );
    let listed = json(&server, &["task", "list"]);
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        1,
        "nothing was sent"
    );
    assert_eq!(
        json(&server, &["swarm", "stop", "named"])["state"],
        "stopped"
    );
}
