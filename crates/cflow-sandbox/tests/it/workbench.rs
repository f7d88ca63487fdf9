//! The model loop's workbench in a real sandbox: `run_command` runs sandboxed in the workspace
//! the file tools work on; files the host writes belong to the sandbox's user; symlinks a
//! command planted never lead a file tool out; the network is off; timeouts, cancellation; the
//! patch of a git workspace at close; the workspace removed or kept.

use crate::{Harness, OUTSIDE_TMP, PATH, marker, survivors};
use cflow_agents::model::{LlmSpec, ModelSetup};
use cflow_agents::tools::{TOOL_OUTPUT_CAP, ToolOutput, Toolbox, Workbench};
use cflow_agents::{Isolation, Job, JobSpec};
use cflow_sandbox::artifacts;
use cflow_sandbox::workspace::Source;
use serde_json::{Value, json};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn spec() -> LlmSpec {
    LlmSpec {
        prompt: "work".into(),
        model: None,
        max_turns: None,
        max_tokens: None,
        allowed_tools: Vec::new(),
        env: vec![("PATH".into(), PATH.into())],
        workspace: None,
        artifacts: None,
        network: None,
        inputs: Default::default(),
        setup: ModelSetup::default(),
    }
}

fn job(task_id: &str, spec: &LlmSpec) -> Job {
    Job {
        task_id: task_id.into(),
        attempt: 1,
        spec: JobSpec::Llm(Box::new(spec.clone())),
        timeout: Duration::from_secs(300),
        output_cap: 1 << 20,
        sandbox: None,
        agent_id: String::new(),
        epoch: 0,
        host: None,
    }
}

async fn open(h: &Harness, task_id: &str, spec: LlmSpec) -> Workbench {
    Workbench::open(&h.driver, &job(task_id, &spec), &spec)
        .await
        .unwrap_or_else(|e| panic!("the workbench of {task_id} opens: {e}"))
}

async fn call(wb: &Workbench, name: &str, input: Value) -> ToolOutput {
    let out = wb.call(name, &input, &CancellationToken::new()).await;
    assert!(out.content.len() <= TOOL_OUTPUT_CAP);
    out
}

async fn ok(wb: &Workbench, name: &str, input: Value) -> String {
    let out = call(wb, name, input.clone()).await;
    assert!(!out.is_error, "{name} {input}: {}", out.content);
    out.content
}

async fn err(wb: &Workbench, name: &str, input: Value) -> String {
    let out = call(wb, name, input.clone()).await;
    assert!(out.is_error, "{name} {input} should fail: {}", out.content);
    out.content
}

async fn sh(wb: &Workbench, line: &str) -> String {
    let out = ok(wb, "run_command", json!({ "command": line })).await;
    assert!(out.starts_with("exit code 0\n"), "{line}: {out}");
    out
}

fn owner(p: &Path) -> (u32, u32) {
    let md = std::fs::symlink_metadata(p).unwrap();
    (md.uid(), md.gid())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_file_tools_share_one_sandboxed_workspace() {
    let h = Harness::new_in(OUTSIDE_TMP, |_| {});
    let wb = open(&h, "wb-share", spec()).await;
    let root = wb.root().to_path_buf();
    assert_eq!(root, h.data().join("workspaces").join("wb-share-1"));
    assert!(
        matches!(wb.isolation(), Isolation::Sandboxed { .. }),
        "{:?}",
        wb.isolation()
    );

    // A command's file is seen by read_file.
    let out = sh(&wb, "echo from-sandbox > made.txt && pwd").await;
    assert!(out.contains(&root.display().to_string()), "{out}");
    assert_eq!(
        ok(&wb, "read_file", json!({"path": "made.txt"})).await,
        "from-sandbox\n"
    );

    // What the host writes belongs to the sandbox's user, so commands can change it.
    ok(
        &wb,
        "write_file",
        json!({"path": "dir/host.txt", "content": "host\n"}),
    )
    .await;
    let want = h
        .sandbox
        .config()
        .workspaces
        .owner
        .unwrap_or_else(|| owner(&root));
    assert_eq!(owner(&root.join("dir")), want);
    assert_eq!(owner(&root.join("dir/host.txt")), want);
    sh(
        &wb,
        "echo more >> dir/host.txt && touch dir/new && rm made.txt",
    )
    .await;
    assert_eq!(
        ok(&wb, "read_file", json!({"path": "dir/host.txt"})).await,
        "host\nmore\n"
    );
    assert!(root.join("dir/new").exists());
    ok(
        &wb,
        "edit_file",
        json!({"path": "dir/host.txt", "old_string": "more", "new_string": "edited"}),
    )
    .await;
    let out = sh(&wb, "cat dir/host.txt; echo appended >> dir/host.txt").await;
    assert!(out.contains("host\nedited\n"), "{out}");

    // A failing command is an outcome, not a tool error.
    let out = ok(&wb, "run_command", json!({"command": "exit 7"})).await;
    assert!(out.starts_with("exit code 7\n"), "{out}");

    let end = wb.close(true).await;
    assert!(end.artifacts.is_empty(), "no git, no globs");
    let summary = end.sandbox.expect("a sandboxed workbench reports");
    assert_eq!(summary["runs"], 4, "{summary}");
    assert!(
        summary["layers"].as_object().is_some_and(|l| !l.is_empty()),
        "{summary}"
    );
    assert_eq!(summary["workspace_kept"], Value::Null);
    assert!(!root.exists(), "a successful job's workspace is removed");
    h.assert_cleaned_up("wb-share");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_a_command_planted_never_lead_a_file_tool_out() {
    let h = Harness::new_in(OUTSIDE_TMP, |_| {});
    let wb = open(&h, "wb-links", spec()).await;
    let root = wb.root().to_path_buf();
    let passwd = std::fs::read("/etc/passwd").unwrap();
    sh(
        &wb,
        "ln -s /etc/passwd passwd && ln -s / rootfs && ln -s .. up && mkdir d && \
         ln -s /etc d/etc && ln -s ../../.. d/far",
    )
    .await;
    for path in [
        "passwd",
        "rootfs/etc/passwd",
        "up/wb-links-1/passwd",
        "d/etc/passwd",
    ] {
        let e = err(&wb, "read_file", json!({ "path": path })).await;
        assert!(e.contains("symlink"), "{path}: {e}");
    }
    for path in [
        "passwd",
        "rootfs/etc/cflow-pwned",
        "up/escape.txt",
        "d/etc/cflow-pwned",
        "d/far/escape.txt",
    ] {
        let e = err(
            &wb,
            "write_file",
            json!({"path": path, "content": "pwned\n"}),
        )
        .await;
        assert!(e.contains("symlink"), "{path}: {e}");
    }
    let e = err(
        &wb,
        "edit_file",
        json!({"path": "passwd", "old_string": "root", "new_string": "toor"}),
    )
    .await;
    assert!(e.contains("symlink"), "{e}");
    for path in ["../escape.txt", "d/../../escape.txt"] {
        let e = err(&wb, "write_file", json!({"path": path, "content": "x"})).await;
        assert!(e.contains("'..'"), "{path}: {e}");
    }
    let e = err(&wb, "read_file", json!({"path": "/etc/passwd"})).await;
    assert!(e.contains("outside the workspace"), "{e}");
    assert_eq!(
        ok(&wb, "search_files", json!({"pattern": "root:"})).await,
        "no matches"
    );
    let listing = ok(&wb, "list_files", json!({"recursive": true})).await;
    assert!(listing.contains("passwd -> /etc/passwd"), "{listing}");
    assert!(!listing.contains("shadow"), "{listing}");

    // Nothing outside changed, the links are still links.
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd);
    assert!(!Path::new("/etc/cflow-pwned").exists());
    assert!(!root.parent().unwrap().join("escape.txt").exists());
    assert!(!h.data().join("escape.txt").exists());
    assert!(
        std::fs::symlink_metadata(root.join("passwd"))
            .unwrap()
            .is_symlink()
    );
    wb.close(true).await;
    h.assert_cleaned_up("wb-links");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_network_off_a_command_cannot_connect() {
    let h = Harness::new_in(OUTSIDE_TMP, |_| {});
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let wb = open(&h, "wb-net", spec()).await;
    let line = format!(
        "python3 -c 'import socket\ntry:\n socket.create_connection((\"127.0.0.1\", {port}), 2); \
         print(\"tcp-ok\")\nexcept OSError as e:\n print(\"tcp-fail\", e.errno)'"
    );
    let out = sh(&wb, &line).await;
    assert!(out.contains(&format!("tcp-fail {}", libc::EPERM)), "{out}");
    assert!(
        out.contains("refused by the sandbox: socket(AF_INET)"),
        "{out}"
    );
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the host's listener was reached"
    );
    let end = wb.close(true).await;
    let summary = end.sandbox.unwrap();
    let denied: Vec<&str> = summary["denied"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(denied.contains(&"socket(AF_INET)"), "{summary}");

    // A task cannot ask for more network than its policy allows.
    let mut full = spec();
    full.network = Some(cflow_sandbox::Network::Full);
    let e = Workbench::open(&h.driver, &job("wb-net-full", &full), &full)
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("asks for network 'full'"), "{e}");
    assert!(!h.data().join("workspaces/wb-net-full-1").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_command_times_out_and_is_cancelled_leaving_nothing_running() {
    let h = Harness::new_in(OUTSIDE_TMP, |_| {});
    let wb = open(&h, "wb-stop", spec()).await;
    let mark = marker("wb-timeout");
    let out = ok(
        &wb,
        "run_command",
        json!({"command": format!("sleep 300 & sleep 300; : {mark}"), "timeout_secs": 1}),
    )
    .await;
    assert!(out.starts_with("timed out after 1 s"), "{out}");
    assert_eq!(survivors(&mark, Duration::from_secs(5)).await, vec![]);

    let mark = marker("wb-cancel");
    let cancel = CancellationToken::new();
    let input = json!({"command": format!("sleep 300 & sleep 300; : {mark}")});
    let run = wb.call("run_command", &input, &cancel);
    let canceller = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cancel.cancel();
    };
    let started = std::time::Instant::now();
    let (out, ()) = tokio::join!(run, canceller);
    assert!(out.content.starts_with("cancelled"), "{}", out.content);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(survivors(&mark, Duration::from_secs(5)).await, vec![]);

    // The job still works after both.
    sh(&wb, "true").await;
    wb.close(true).await;
    h.assert_cleaned_up("wb-stop");
}

/// Runs a shell script with git's identity set; returns its stdout.
fn script(dir: &Path, line: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", line])
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_workspace_yields_its_patch_at_close() {
    let h = Harness::new_in(OUTSIDE_TMP, |_| {});
    let src = tempfile::tempdir_in(OUTSIDE_TMP).unwrap();
    let repo = src.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    script(
        &repo,
        "git init -q && echo one > a.txt && git add a.txt && git commit -qm first",
    );
    let mut s = spec();
    s.workspace = Some(Source::Git {
        repo: repo.to_string_lossy().into_owned(),
        rev: None,
    });
    s.artifacts = Some(artifacts::Spec {
        globs: vec!["out/*.txt".into()],
        ..Default::default()
    });
    let wb = open(&h, "wb-git", s.clone()).await;
    let root = wb.root().to_path_buf();
    sh(&wb, "echo two >> a.txt && git status --porcelain").await;
    ok(
        &wb,
        "write_file",
        json!({"path": "b.txt", "content": "new\n"}),
    )
    .await;
    ok(
        &wb,
        "write_file",
        json!({"path": "out/r.txt", "content": "report\n"}),
    )
    .await;
    let end = wb.close(true).await;
    let names: Vec<&str> = end.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        [artifacts::PATCH_NAME, "out/r.txt"],
        "{:?}",
        end.sandbox
    );
    let patch = String::from_utf8_lossy(&end.artifacts[0].bytes);
    assert!(patch.contains("a.txt") && patch.contains("+two"), "{patch}");
    assert!(patch.contains("b.txt") && patch.contains("+new"), "{patch}");
    assert!(!root.exists());
    // The source repository is untouched.
    assert_eq!(
        std::fs::read_to_string(repo.join("a.txt")).unwrap(),
        "one\n"
    );
    assert_eq!(script(&repo, "git status --porcelain"), "");

    // A failed job keeps its workspace, and says where.
    let wb = open(&h, "wb-git-fail", s).await;
    ok(
        &wb,
        "write_file",
        json!({"path": "c.txt", "content": "kept\n"}),
    )
    .await;
    let end = wb.close(false).await;
    let kept = end.sandbox.unwrap()["workspace_kept"]
        .as_str()
        .map(std::path::PathBuf::from)
        .expect("the kept path");
    assert_eq!(
        std::fs::read_to_string(kept.join("c.txt")).unwrap(),
        "kept\n"
    );
    h.assert_cleaned_up("wb-git");
    h.assert_cleaned_up("wb-git-fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_workbench_keeps_its_workspace_like_a_failed_job() {
    let h = Harness::new_in(OUTSIDE_TMP, |_| {});
    let wb = open(&h, "wb-drop", spec()).await;
    ok(
        &wb,
        "write_file",
        json!({"path": "left.txt", "content": "x"}),
    )
    .await;
    let root = wb.root().to_path_buf();
    drop(wb);
    let keep = h.data().join("workspaces/wb-drop-1.keep-until");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !keep.exists() {
        assert!(std::time::Instant::now() < deadline, "no keep marker");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(root.join("left.txt").exists());
}

/// A run can only be attached to a live workspace of its own sandbox.
#[test]
fn prepare_in_refuses_what_is_not_a_live_workspace() {
    let h = Harness::new(|_| {});
    let request = |id: &str| cflow_sandbox::host::RunRequest {
        id: id.into(),
        argv: vec!["true".into()],
        env: Vec::new(),
        workspace: Default::default(),
        policy: h.sandbox.config().policy.clone(),
        home: None,
    };
    let root = h.data().join("workspaces");
    std::fs::create_dir_all(root.join("stray")).unwrap();
    for path in [
        Path::new("/etc"),
        &root.join("stray"),
        &root.join("missing"),
    ] {
        let e = h.sandbox.prepare_in(request("p-bad"), path).err();
        let e = e.unwrap_or_else(|| panic!("{} was accepted", path.display()));
        assert!(e.to_string().contains("not a live workspace"), "{e}");
    }
    let ws = h
        .sandbox
        .create_workspace("p-live", &Source::Empty)
        .expect("a workspace");
    let prepared = h
        .sandbox
        .prepare_in(request("p-live"), &ws.path)
        .expect("attached");
    assert_eq!(prepared.spec.cwd, ws.path);
    let finished = h.sandbox.finish(prepared, true, &Default::default());
    assert!(ws.path.is_dir(), "finish leaves a shared workspace alone");
    assert_eq!(finished.report.workspace_kept, None);
    let (artifacts, _, kept) = h.sandbox.finish_workspace(ws, true, &Default::default());
    assert!(artifacts.is_empty() && kept.is_none());
    assert!(!root.join("p-live").exists());
}
