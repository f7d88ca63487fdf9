//! `cflow run FILE.toml` and `cflow up --demo` against a real server: the quickstart runs to
//! success with data passed between tasks, a failing task fails the run and cancels its
//! dependents, and a broken file is refused before anything reaches the server.

use crate::harness::{Server, cflow_in, free_port, run};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn quickstart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart.toml")
}

/// Every task of the server (all pages), as `cflow task list --output json` shows them.
pub fn tasks(server: &Server) -> Vec<Value> {
    let doc = run(server.cflow().args(["task", "list", "--output", "json"])).json();
    doc["items"].as_array().cloned().unwrap_or_default()
}

/// The workflow id `cflow run` gave a task (in its spec's environment).
fn workflow_id(task: &Value) -> &str {
    task["spec"]["env"]["CFLOW_WORKFLOW_TASK"]
        .as_str()
        .unwrap_or_default()
}

fn by_workflow_id<'a>(tasks: &'a [Value], id: &str) -> &'a Value {
    tasks
        .iter()
        .find(|t| workflow_id(t) == id)
        .unwrap_or_else(|| panic!("no task '{id}' in {tasks:#?}"))
}

fn swarms(server: &Server) -> Vec<Value> {
    let doc = run(server.cflow().args(["swarm", "list", "--output", "json"])).json();
    doc["items"].as_array().cloned().unwrap_or_default()
}

#[test]
fn the_quickstart_runs_to_success_and_passes_data_between_tasks() {
    let server = Server::start();
    let r = run(server
        .cflow()
        .args(["run", "--timeout", "120s"])
        .arg(quickstart()));
    let out = r.ok();
    assert!(out.contains("6/6 task(s) succeeded"), "{out}\n{}", r.stderr);
    // Log lines arrive live from the event stream, prefixed by the workflow id.
    assert!(
        out.contains("code-api | code-api: writing the api module"),
        "{out}"
    );

    let all = tasks(&server);
    assert_eq!(all.len(), 6, "{all:#?}");
    for t in &all {
        assert_eq!(t["state"], "succeeded", "{t:#}");
    }
    // The reviewer saw every module and the test report through CFLOW_INPUTS.
    let review = by_workflow_id(&all, "review");
    assert_eq!(review["result"]["approved"], true, "{review:#}");
    assert_eq!(review["result"]["modules"], "api cli store", "{review:#}");
    assert_eq!(by_workflow_id(&all, "test")["result"]["lines"], 540);

    // The run stopped its swarm at the end.
    let s = swarms(&server);
    assert_eq!(s.len(), 1, "{s:#?}");
    assert_eq!(s[0]["state"], "stopped");
    assert!(
        s[0]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("quickstart-")),
        "{s:#?}"
    );
}

const FAILING: &str = r#"
[swarm]
name = "failing"
topology = "mesh"

[[swarm.agents]]
type = "coder"
min = 2

[[tasks]]
id = "ok"
command = "echo fine"

[[tasks]]
id = "broken"
command = "echo 'about to fail' >&2; exit 3"
max_attempts = 1

[[tasks]]
id = "after"
command = "echo never"
depends_on = ["broken", "ok"]

[[tasks]]
id = "last"
command = "echo never either"
depends_on = ["after"]
"#;

#[test]
fn a_failing_task_fails_the_run_names_it_and_cancels_its_dependents() {
    let server = Server::start();
    let file = server.work().join("failing.toml");
    std::fs::write(&file, FAILING).unwrap();
    let r = run(server.cflow().args(["run", "--timeout", "120s"]).arg(&file));
    let err = r.fails();
    assert!(err.contains("workflow failed"), "{err}");
    // Named by their workflow ids, with the reason: exit code and last stderr line.
    assert!(
        err.contains("broken failed: attempt 1 failed (exit code 3; stderr: about to fail)"),
        "{err}"
    );
    assert!(
        err.contains("after cancelled: dependency broken failed"),
        "{err}"
    );
    assert!(
        err.contains("last cancelled: dependency broken failed"),
        "{err}"
    );
    assert!(r.stdout.contains("1/4 task(s) succeeded"), "{}", r.stdout);
    assert!(r.stdout.contains("broken ! about to fail"), "{}", r.stdout);

    let all = tasks(&server);
    let broken = by_workflow_id(&all, "broken");
    assert_eq!(broken["state"], "failed", "{broken:#}");
    assert_eq!(by_workflow_id(&all, "ok")["state"], "succeeded");
    for id in ["after", "last"] {
        let t = by_workflow_id(&all, id);
        assert_eq!(t["state"], "cancelled", "{t:#}");
        assert!(
            t["reason"]
                .as_str()
                .is_some_and(|r| r.contains("dependency")),
            "{t:#}"
        );
    }
    // Exactly one attempt: max_attempts = 1.
    let detail = run(server.cflow().args([
        "task",
        "get",
        broken["id"].as_str().unwrap(),
        "--output",
        "json",
    ]))
    .json();
    let attempts = detail["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "{detail:#}");
    assert_eq!(attempts[0]["exit_code"], 3, "{detail:#}");
}

#[test]
fn broken_files_are_refused_before_anything_is_submitted() {
    let server = Server::start();
    let cases = [
        (
            "cycle",
            FAILING.replace(
                "command = \"echo fine\"",
                "command = \"echo fine\"\ndepends_on = [\"last\"]",
            ),
            vec!["dependency cycle", "ok"],
        ),
        (
            "unknown key",
            FAILING.replace("max_attempts = 1", "max_attempt = 1"),
            vec!["unknown field `max_attempt`", "line 17"],
        ),
        (
            "unknown dependency",
            FAILING.replace("depends_on = [\"after\"]", "depends_on = [\"aftr\"]"),
            vec!["depends on unknown task 'aftr'", "line 27"],
        ),
        (
            "unmet requirement",
            FAILING.replace(
                "command = \"echo never\"",
                "command = \"x\"\nrequires = [\"deploy\"]",
            ),
            vec!["requires 'deploy'"],
        ),
    ];
    for (what, text, expected) in cases {
        let file = server.work().join("broken.toml");
        std::fs::write(&file, text).unwrap();
        let r = run(server.cflow().arg("run").arg(&file));
        let err = r.fails();
        for e in expected {
            assert!(err.contains(e), "{what}: expected '{e}' in: {err}");
        }
    }
    assert!(
        swarms(&server).is_empty(),
        "nothing was created on the server"
    );
    assert!(tasks(&server).is_empty());
}

/// `cflow up --demo`: runs the quickstart, prints its summary, keeps serving, stops on SIGTERM.
#[test]
fn up_demo_runs_the_quickstart_and_keeps_serving() {
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    // From a directory without examples/: the workflow is built into the binary.
    let mut child = cflow_in(work.path())
        .args(["up", "--demo", "--listen", &format!("127.0.0.1:{port}")])
        .env("CFLOW_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning cflow up --demo");
    let output = Arc::new(Mutex::new(String::new()));
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let output = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let mut o = output.lock().unwrap();
                o.push_str(&line);
                o.push('\n');
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !output.lock().unwrap().contains("Press Ctrl-C to stop") {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "cflow up --demo exited ({status}): {}",
                output.lock().unwrap()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not finish in time: {}",
            output.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let printed = output.lock().unwrap().clone();
    assert!(printed.contains("the quickstart succeeded"), "{printed}");
    assert!(printed.contains("6/6 task(s) succeeded"), "{printed}");

    // Still serving: the CLI can explore what the demo left behind.
    let listed = run(cflow_in(work.path())
        .args(["task", "list", "--output", "json"])
        .env("CFLOW_SERVER", &url))
    .json();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 6, "{listed:#}");
    assert!(
        items.iter().all(|t| t["state"] == "succeeded"),
        "{listed:#}"
    );
    assert!(ready(port), "the server still answers /readyz");

    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "cflow up --demo ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exit.code(), Some(0), "{}", output.lock().unwrap());
}

fn ready(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200")
}
