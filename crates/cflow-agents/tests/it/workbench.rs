//! The workbench without a sandbox (the operator turned it off): every file tool's semantics and
//! errors, path confinement (symlinks, `..`, absolute paths, hard links), `run_command` in the
//! workspace directory, timeouts, cancellation, output caps and tool restrictions.

use crate::driver;
use cflow_agents::exec::UNSANDBOXED_REASON;
use cflow_agents::model::{LlmSpec, ModelSetup};
use cflow_agents::tools::{TOOL_OUTPUT_CAP, ToolOutput, Toolbox, Workbench};
use cflow_agents::{Isolation, Job, JobSpec};
use cflow_sandbox::workspace::Source;
use serde_json::{Value, json};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub fn llm_spec() -> LlmSpec {
    LlmSpec {
        prompt: "work".into(),
        model: None,
        max_turns: None,
        max_tokens: None,
        allowed_tools: Vec::new(),
        env: Vec::new(),
        workspace: None,
        artifacts: None,
        network: None,
        inputs: Default::default(),
        setup: ModelSetup::default(),
    }
}

fn llm_job(task_id: &str, spec: &LlmSpec) -> Job {
    Job {
        task_id: task_id.into(),
        attempt: 1,
        spec: JobSpec::Llm(Box::new(spec.clone())),
        timeout: Duration::from_secs(120),
        output_cap: 1 << 20,
        sandbox: None,
        agent_id: String::new(),
        epoch: 0,
        host: None,
    }
}

async fn open_with(spec: LlmSpec) -> Workbench {
    Workbench::open(&driver(), &llm_job("wb", &spec), &spec)
        .await
        .expect("the workbench opens")
}

async fn open() -> Workbench {
    open_with(llm_spec()).await
}

async fn call(wb: &Workbench, name: &str, input: Value) -> ToolOutput {
    let out = wb.call(name, &input, &CancellationToken::new()).await;
    assert!(
        out.content.len() <= TOOL_OUTPUT_CAP,
        "{name}: {} bytes of output",
        out.content.len()
    );
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

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[tokio::test]
async fn opens_an_empty_workspace_says_it_is_unsandboxed_and_removes_it_at_close() {
    let wb = open().await;
    let root = wb.root().to_path_buf();
    assert!(root.is_dir());
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
    assert_eq!(
        wb.isolation(),
        Isolation::None {
            reason: UNSANDBOXED_REASON.into()
        }
    );
    let names: Vec<String> = wb.defs().into_iter().map(|d| d.name).collect();
    assert_eq!(
        names,
        [
            "read_file",
            "write_file",
            "edit_file",
            "list_files",
            "search_files",
            "run_command"
        ]
    );
    let end = wb.close(true).await;
    assert!(end.artifacts.is_empty());
    assert!(end.sandbox.is_none());
    assert!(!root.exists());
    assert!(
        !root.parent().unwrap().exists(),
        "the temporary directory is removed"
    );
}

#[tokio::test]
async fn a_dropped_workbench_removes_its_workspace() {
    let wb = open().await;
    let root = wb.root().to_path_buf();
    drop(wb);
    assert!(!root.parent().unwrap().exists());
}

#[tokio::test]
async fn a_copy_workspace_and_artifacts_by_glob() {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("seed.txt"), "seeded\n").unwrap();
    let mut spec = llm_spec();
    spec.workspace = Some(Source::Copy {
        path: src.path().to_path_buf(),
    });
    spec.artifacts = Some(cflow_sandbox::artifacts::Spec {
        globs: vec!["out/*.json".into()],
        ..Default::default()
    });
    let wb = open_with(spec).await;
    assert_eq!(
        ok(&wb, "read_file", json!({"path": "seed.txt"})).await,
        "seeded\n"
    );
    ok(
        &wb,
        "write_file",
        json!({"path": "out/r.json", "content": "{}"}),
    )
    .await;
    ok(
        &wb,
        "write_file",
        json!({"path": "out/r.txt", "content": "no"}),
    )
    .await;
    let end = wb.close(true).await;
    let names: Vec<&str> = end.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["out/r.json"]);
    assert_eq!(end.artifacts[0].bytes, b"{}");
    // The source is untouched.
    assert!(!src.path().join("out").exists());
}

#[tokio::test]
async fn read_file_pages_by_line_and_says_where_it_continues() {
    let wb = open().await;
    let text: String = (1..=10).map(|i| format!("line {i}\n")).collect();
    std::fs::write(wb.root().join("ten.txt"), &text).unwrap();
    assert_eq!(ok(&wb, "read_file", json!({"path": "ten.txt"})).await, text);
    let part = ok(
        &wb,
        "read_file",
        json!({"path": "ten.txt", "offset": 3, "limit": 2}),
    )
    .await;
    assert_eq!(
        part,
        "line 3\nline 4\n[lines 3-4 of 10; read on with offset=5]"
    );
    let end = ok(&wb, "read_file", json!({"path": "ten.txt", "offset": 9})).await;
    assert_eq!(end, "line 9\nline 10\n[lines 9-10 of 10]");
    let e = err(&wb, "read_file", json!({"path": "ten.txt", "offset": 11})).await;
    assert!(e.contains("past the end") && e.contains("10 lines"), "{e}");
    let e = err(&wb, "read_file", json!({"path": "ten.txt", "offset": 0})).await;
    assert!(e.contains("1-based"), "{e}");

    // A file over the cap comes back cut at a line, with where to read on.
    let big: String = (1..=20_000).map(|i| format!("row {i:06}\n")).collect();
    std::fs::write(wb.root().join("big.txt"), &big).unwrap();
    let out = ok(&wb, "read_file", json!({"path": "big.txt"})).await;
    assert!(out.starts_with("row 000001\n"));
    let note = out.lines().last().unwrap();
    assert!(
        note.starts_with("[lines 1-") && note.contains("read on with offset="),
        "{note}"
    );
    // One line longer than the cap is cut too, on a character boundary.
    std::fs::write(wb.root().join("long.txt"), "é".repeat(40_000)).unwrap();
    let out = ok(&wb, "read_file", json!({"path": "long.txt"})).await;
    assert!(out.starts_with("ééé"));
    let note = out.lines().last().unwrap();
    assert_eq!(note, "[lines 1-1 of 1]");
    assert!(
        out.contains("line 1 is 80000 bytes; only its first"),
        "{note}"
    );
}

#[tokio::test]
async fn read_file_refuses_binary_missing_and_directories() {
    let wb = open().await;
    std::fs::write(wb.root().join("bin"), b"abc\0def").unwrap();
    std::fs::create_dir(wb.root().join("dir")).unwrap();
    let e = err(&wb, "read_file", json!({"path": "bin"})).await;
    assert!(e.contains("binary"), "{e}");
    let e = err(&wb, "read_file", json!({"path": "nope.txt"})).await;
    assert!(e.contains("does not exist"), "{e}");
    let e = err(&wb, "read_file", json!({"path": "dir"})).await;
    assert!(e.contains("is a directory"), "{e}");
    let e = err(&wb, "read_file", json!({"path": "nope/x.txt"})).await;
    assert!(e.contains("'nope' does not exist"), "{e}");
    let e = err(&wb, "read_file", json!({"path": "bin/x"})).await;
    assert!(e.contains("not a directory"), "{e}");
    std::fs::write(wb.root().join("empty"), "").unwrap();
    assert!(
        ok(&wb, "read_file", json!({"path": "empty"}))
            .await
            .contains("empty")
    );
}

#[tokio::test]
async fn paths_stay_inside_the_workspace() {
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.txt");
    std::fs::write(&secret, "secret\n").unwrap();
    let wb = open().await;
    let root = wb.root().to_path_buf();
    std::fs::write(root.join("in.txt"), "inside\n").unwrap();

    // `..` that leaves the root, and absolute paths outside it.
    for path in ["../x", "a/../../x", "./../in.txt"] {
        let e = err(&wb, "read_file", json!({"path": path})).await;
        assert!(e.contains("'..'"), "{path}: {e}");
        let e = err(&wb, "write_file", json!({"path": path, "content": "x"})).await;
        assert!(e.contains("'..'"), "{path}: {e}");
    }
    let e = err(&wb, "read_file", json!({"path": secret.to_str().unwrap()})).await;
    assert!(e.contains("outside the workspace"), "{e}");
    let e = err(
        &wb,
        "write_file",
        json!({"path": "/etc/cflow-x", "content": "x"}),
    )
    .await;
    assert!(e.contains("outside the workspace"), "{e}");
    assert!(!Path::new("/etc/cflow-x").exists());
    // `..` that stays inside, and an absolute path inside, are fine.
    assert_eq!(
        ok(&wb, "read_file", json!({"path": "a/../in.txt"})).await,
        "inside\n"
    );
    let abs = root.join("in.txt");
    assert_eq!(
        ok(&wb, "read_file", json!({"path": abs.to_str().unwrap()})).await,
        "inside\n"
    );

    // Symlinks, as the last component or on the way, are never followed.
    symlink(&secret, root.join("to-secret")).unwrap();
    symlink("/etc/passwd", root.join("passwd")).unwrap();
    symlink(outside.path(), root.join("out-dir")).unwrap();
    symlink("in.txt", root.join("to-in")).unwrap();
    symlink("..", root.join("up")).unwrap();
    let before = read(Path::new("/etc/passwd"));
    for path in ["to-secret", "passwd", "to-in"] {
        let e = err(&wb, "read_file", json!({"path": path})).await;
        assert!(e.contains("symlink"), "{path}: {e}");
        let e = err(&wb, "write_file", json!({"path": path, "content": "pwned"})).await;
        assert!(e.contains("symlink"), "{path}: {e}");
        let e = err(
            &wb,
            "edit_file",
            json!({"path": path, "old_string": "s", "new_string": "p"}),
        )
        .await;
        assert!(e.contains("symlink"), "{path}: {e}");
    }
    for path in ["out-dir/secret.txt", "out-dir/new.txt", "up/x", "passwd/x"] {
        let e = err(&wb, "read_file", json!({"path": path})).await;
        assert!(e.contains("symlink"), "{path}: {e}");
        let e = err(&wb, "write_file", json!({"path": path, "content": "pwned"})).await;
        assert!(e.contains("symlink"), "{path}: {e}");
    }
    let e = err(&wb, "list_files", json!({"path": "out-dir"})).await;
    assert!(e.contains("symlink"), "{e}");
    let e = err(
        &wb,
        "search_files",
        json!({"pattern": "secret", "path": "out-dir"}),
    )
    .await;
    assert!(e.contains("symlink"), "{e}");
    // Nothing outside changed, and the links are still links.
    assert_eq!(read(&secret), "secret\n");
    assert_eq!(read(Path::new("/etc/passwd")), before);
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    assert!(
        std::fs::symlink_metadata(root.join("passwd"))
            .unwrap()
            .is_symlink()
    );
    assert!(!root.parent().unwrap().join("x").exists());
    // A search of the whole workspace does not go through the links either.
    let found = ok(&wb, "search_files", json!({"pattern": "secret|root:"})).await;
    assert_eq!(found, "no matches");
    wb.close(true).await;
}

#[tokio::test]
async fn writing_a_hard_linked_file_replaces_it_instead_of_writing_through() {
    let wb = open().await;
    // Same filesystem as the workspace: a file of the workbench's temporary directory.
    let outside = wb.root().parent().unwrap().join("outside.txt");
    std::fs::write(&outside, "original\n").unwrap();
    std::fs::hard_link(&outside, wb.root().join("linked.txt")).unwrap();
    ok(
        &wb,
        "write_file",
        json!({"path": "linked.txt", "content": "new\n"}),
    )
    .await;
    assert_eq!(read(&outside), "original\n");
    assert_eq!(read(&wb.root().join("linked.txt")), "new\n");
    std::fs::remove_file(wb.root().join("linked.txt")).unwrap();
    std::fs::hard_link(&outside, wb.root().join("linked.txt")).unwrap();
    ok(
        &wb,
        "edit_file",
        json!({"path": "linked.txt", "old_string": "original", "new_string": "edited"}),
    )
    .await;
    assert_eq!(read(&outside), "original\n");
    assert_eq!(read(&wb.root().join("linked.txt")), "edited\n");
}

#[tokio::test]
async fn write_file_creates_parents_and_keeps_the_mode() {
    use std::os::unix::fs::PermissionsExt;
    let wb = open().await;
    let out = ok(
        &wb,
        "write_file",
        json!({"path": "a/b/c.txt", "content": "héllo"}),
    )
    .await;
    assert_eq!(out, "wrote 6 bytes to a/b/c.txt");
    assert_eq!(read(&wb.root().join("a/b/c.txt")), "héllo");
    let script = wb.root().join("run.sh");
    std::fs::write(&script, "old").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    ok(
        &wb,
        "write_file",
        json!({"path": "run.sh", "content": "new"}),
    )
    .await;
    assert_eq!(read(&script), "new");
    let mode = std::fs::metadata(&script).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755);
    let e = err(&wb, "write_file", json!({"path": "a/b", "content": "x"})).await;
    assert!(e.contains("is a directory"), "{e}");
    let e = err(
        &wb,
        "write_file",
        json!({"path": "a/b/c.txt/d", "content": "x"}),
    )
    .await;
    assert!(e.contains("not a directory"), "{e}");
    let e = err(&wb, "write_file", json!({"path": ".", "content": "x"})).await;
    assert!(e.contains("workspace directory itself"), "{e}");
    // No temporary file is left behind.
    let left: Vec<String> = std::fs::read_dir(wb.root())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("cflow-write"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn edit_file_replaces_exactly_or_says_why_not() {
    let wb = open().await;
    let f = wb.root().join("f.rs");
    std::fs::write(&f, "let a = 1;\nlet b = 1;\nlet c = 2;\n").unwrap();
    let e = err(
        &wb,
        "edit_file",
        json!({"path": "f.rs", "old_string": "= 1", "new_string": "= 3"}),
    )
    .await;
    assert!(e.contains("2 times") && e.contains("replace_all"), "{e}");
    let e = err(
        &wb,
        "edit_file",
        json!({"path": "f.rs", "old_string": "let d", "new_string": "x"}),
    )
    .await;
    assert!(e.contains("not found"), "{e}");
    let e = err(
        &wb,
        "edit_file",
        json!({"path": "f.rs", "old_string": "", "new_string": "x"}),
    )
    .await;
    assert!(e.contains("empty"), "{e}");
    assert_eq!(
        read(&f),
        "let a = 1;\nlet b = 1;\nlet c = 2;\n",
        "unchanged after errors"
    );
    let out = ok(
        &wb,
        "edit_file",
        json!({"path": "f.rs", "old_string": "let b = 1;", "new_string": "let b = 5;"}),
    )
    .await;
    assert_eq!(out, "replaced 1 occurrence in f.rs");
    let out = ok(
        &wb,
        "edit_file",
        json!({"path": "f.rs", "old_string": "let", "new_string": "const", "replace_all": true}),
    )
    .await;
    assert_eq!(out, "replaced 3 occurrences in f.rs");
    assert_eq!(read(&f), "const a = 1;\nconst b = 5;\nconst c = 2;\n");
    let e = err(
        &wb,
        "edit_file",
        json!({"path": "missing.rs", "old_string": "a", "new_string": "b"}),
    )
    .await;
    assert!(e.contains("does not exist"), "{e}");
    std::fs::write(wb.root().join("bin"), b"a\0b").unwrap();
    let e = err(
        &wb,
        "edit_file",
        json!({"path": "bin", "old_string": "a", "new_string": "b"}),
    )
    .await;
    assert!(e.contains("binary"), "{e}");
}

#[tokio::test]
async fn list_files_marks_directories_skips_git_and_caps() {
    let wb = open().await;
    let r = wb.root();
    std::fs::create_dir_all(r.join("src/inner")).unwrap();
    std::fs::create_dir_all(r.join(".git/objects")).unwrap();
    std::fs::write(r.join("src/main.rs"), "fn main() {}").unwrap();
    std::fs::write(r.join("src/inner/x.rs"), "").unwrap();
    std::fs::write(r.join("README"), "").unwrap();
    symlink("/etc", r.join("etc")).unwrap();
    let top = ok(&wb, "list_files", json!({})).await;
    assert_eq!(top, "README\netc -> /etc\nsrc/");
    let all = ok(&wb, "list_files", json!({"path": ".", "recursive": true})).await;
    assert_eq!(
        all,
        "README\netc -> /etc\nsrc/\nsrc/inner/\nsrc/inner/x.rs\nsrc/main.rs"
    );
    let sub = ok(&wb, "list_files", json!({"path": "src"})).await;
    assert_eq!(sub, "src/inner/\nsrc/main.rs");
    let e = err(&wb, "list_files", json!({"path": "README"})).await;
    assert!(e.contains("not a directory"), "{e}");
    let e = err(&wb, "list_files", json!({"path": "nope"})).await;
    assert!(e.contains("does not exist"), "{e}");

    std::fs::create_dir(r.join("many")).unwrap();
    for i in 0..1100 {
        std::fs::write(r.join(format!("many/f{i:04}")), "").unwrap();
    }
    let many = ok(&wb, "list_files", json!({"path": "many"})).await;
    let lines: Vec<&str> = many.lines().collect();
    assert_eq!(lines.len(), 1001, "1000 entries and a note");
    assert_eq!(lines[0], "many/f0000");
    assert!(
        lines[1000].contains("stopped at 1000 entries"),
        "{}",
        lines[1000]
    );
}

#[tokio::test]
async fn search_files_finds_lines_by_regex_and_glob() {
    let wb = open().await;
    let r = wb.root();
    std::fs::create_dir_all(r.join("src/deep")).unwrap();
    std::fs::create_dir_all(r.join(".git")).unwrap();
    std::fs::write(r.join("src/a.rs"), "fn alpha() {}\nfn beta() {}\n").unwrap();
    std::fs::write(r.join("src/deep/b.rs"), "// alpha here\n").unwrap();
    std::fs::write(r.join("notes.md"), "alpha notes\n").unwrap();
    std::fs::write(r.join(".git/config"), "alpha\n").unwrap();
    std::fs::write(r.join("blob.bin"), b"alpha\0").unwrap();
    let all = ok(&wb, "search_files", json!({"pattern": "alph[a]"})).await;
    assert_eq!(
        all,
        "notes.md:1: alpha notes\nsrc/a.rs:1: fn alpha() {}\nsrc/deep/b.rs:1: // alpha here"
    );
    let rs = ok(
        &wb,
        "search_files",
        json!({"pattern": "alpha", "glob": "*.rs"}),
    )
    .await;
    assert_eq!(
        rs,
        "src/a.rs:1: fn alpha() {}\nsrc/deep/b.rs:1: // alpha here"
    );
    let deep = ok(
        &wb,
        "search_files",
        json!({"pattern": "alpha", "glob": "deep/*.rs", "path": "src"}),
    )
    .await;
    assert_eq!(deep, "src/deep/b.rs:1: // alpha here");
    let one = ok(
        &wb,
        "search_files",
        json!({"pattern": "^fn b", "path": "src/a.rs"}),
    )
    .await;
    assert_eq!(one, "src/a.rs:2: fn beta() {}");
    assert_eq!(
        ok(&wb, "search_files", json!({"pattern": "gamma"})).await,
        "no matches"
    );
    let e = err(&wb, "search_files", json!({"pattern": "("})).await;
    assert!(e.contains("invalid pattern"), "{e}");

    // Capped: many matching lines stop with a note, within the output cap.
    let lots: String = (0..2000).map(|i| format!("match {i}\n")).collect();
    std::fs::write(r.join("lots.txt"), lots).unwrap();
    let out = ok(
        &wb,
        "search_files",
        json!({"pattern": "match", "path": "lots.txt"}),
    )
    .await;
    assert!(
        out.lines().last().unwrap().contains("stopped after"),
        "{out}"
    );
}

#[tokio::test]
async fn run_command_works_in_the_workspace_unsandboxed() {
    let mut spec = llm_spec();
    spec.env = vec![("GREETING".into(), "hi".into())];
    let wb = open_with(spec).await;
    let out = ok(
        &wb,
        "run_command",
        json!({"command": "pwd; echo \"$GREETING\" > made.txt; echo oops >&2; exit 3"}),
    )
    .await;
    assert!(out.starts_with("exit code 3\n"), "{out}");
    assert!(out.contains(&wb.root().display().to_string()), "{out}");
    assert!(out.contains("--- stderr (5 bytes) ---\noops\n"), "{out}");
    assert_eq!(
        ok(&wb, "read_file", json!({"path": "made.txt"})).await,
        "hi\n"
    );

    // Output past the cap: its end is kept, the cut said.
    let out = ok(
        &wb,
        "run_command",
        json!({"command": "seq 1 200000; echo done"}),
    )
    .await;
    assert!(out.starts_with("exit code 0"), "{out}");
    assert!(out.contains("bytes are cut"), "{}", &out[..300]);
    assert!(out.contains("200000\ndone\n"), "the end is kept");
    assert!(out.contains("--- stderr: empty ---"), "{out}");

    let e = err(
        &wb,
        "run_command",
        json!({"command": "true", "timeout_secs": 0}),
    )
    .await;
    assert!(e.contains("out of range"), "{e}");
    let e = err(
        &wb,
        "run_command",
        json!({"command": "true", "timeout_secs": 3601}),
    )
    .await;
    assert!(e.contains("out of range"), "{e}");
    let e = err(&wb, "run_command", json!({"cmd": "true"})).await;
    assert!(e.contains("invalid input"), "{e}");
    wb.close(true).await;
}

#[tokio::test]
async fn run_command_times_out_and_is_cancelled() {
    let wb = open().await;
    let started = std::time::Instant::now();
    let out = ok(
        &wb,
        "run_command",
        json!({"command": "sleep 30", "timeout_secs": 1}),
    )
    .await;
    assert!(out.starts_with("timed out after 1 s"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(20));

    let cancel = CancellationToken::new();
    let input = json!({"command": "echo started; sleep 30"});
    let run = wb.call("run_command", &input, &cancel);
    let canceller = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel();
    };
    let started = std::time::Instant::now();
    let (out, ()) = tokio::join!(run, canceller);
    assert!(!out.is_error, "{}", out.content);
    assert!(out.content.starts_with("cancelled"), "{}", out.content);
    assert!(started.elapsed() < Duration::from_secs(20));
    // A cancelled job's tools refuse to start anything.
    let out = wb.call("read_file", &json!({"path": "x"}), &cancel).await;
    assert!(
        out.is_error && out.content.contains("cancelled"),
        "{}",
        out.content
    );
}

#[tokio::test]
async fn run_command_timeout_is_capped_by_the_jobs_time() {
    let spec = llm_spec();
    let mut job = llm_job("wb-short", &spec);
    job.timeout = Duration::from_secs(2);
    let wb = Workbench::open(&driver(), &job, &spec).await.unwrap();
    let out = ok(
        &wb,
        "run_command",
        json!({"command": "sleep 30", "timeout_secs": 600}),
    )
    .await;
    assert!(
        out.starts_with("timed out after 1 s") || out.starts_with("timed out after 2 s"),
        "{out}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let e = err(&wb, "run_command", json!({"command": "true"})).await;
    assert!(e.contains("time is up"), "{e}");
}

#[tokio::test]
async fn allowed_tools_restrict_defs_and_calls() {
    let mut spec = llm_spec();
    spec.allowed_tools = vec!["read_file".into(), "list_files".into(), "memory_get".into()];
    let wb = open_with(spec).await;
    let names: Vec<String> = wb.defs().into_iter().map(|d| d.name).collect();
    assert_eq!(names, ["read_file", "list_files"]);
    let e = err(&wb, "write_file", json!({"path": "x", "content": "y"})).await;
    assert!(e.contains("not allowed"), "{e}");
    assert!(!wb.root().join("x").exists());
    let e = err(&wb, "run_command", json!({"command": "touch y"})).await;
    assert!(e.contains("not allowed"), "{e}");
    assert!(!wb.root().join("y").exists());
    ok(&wb, "list_files", json!({})).await;
    let e = err(&wb, "frobnicate", json!({})).await;
    assert!(e.contains("unknown tool"), "{e}");
    let e = err(&wb, "read_file", json!({"path": "x", "bogus": 1})).await;
    assert!(e.contains("invalid input") && e.contains("bogus"), "{e}");
}

#[tokio::test]
async fn a_restrictive_network_needs_the_sandbox() {
    let mut spec = llm_spec();
    spec.network = Some(cflow_sandbox::Network::Off);
    let e = Workbench::open(&driver(), &llm_job("wb-net", &spec), &spec)
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("only the sandbox provides"), "{e}");
}
