//! Workspaces and artifacts end to end: symlinks out of the workspace, git checkouts and their
//! patch, what is kept and what is removed.

use crate::{Harness, Sandbox, report, shell};
use cflow_agents::JobEnd;
use cflow_sandbox::artifacts;
use cflow_sandbox::workspace::Source;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const SHORT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_out_of_the_workspace_are_not_collected() {
    let h = Harness::new(|_| {});
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let first_line = passwd.lines().next().unwrap().to_string();
    let mut spec = shell(
        "ln -s /etc/passwd leak.txt && ln -s /root rootdir && ln -s / rootfs && \
         echo real > real.txt && mkdir -p sub && ln -s ../../../../../../etc/passwd sub/up.txt",
    );
    spec.artifacts = Some(artifacts::Spec {
        globs: vec![
            "*.txt".into(),
            "rootdir/**".into(),
            "rootfs/etc/*".into(),
            "sub/*".into(),
        ],
        ..Default::default()
    });
    let out = h.run("symlinks", spec, SHORT).await.unwrap();
    assert_eq!(out.end, JobEnd::Exited { code: 0 }, "{}", out.stderr.text());
    for a in &out.artifacts {
        let text = String::from_utf8_lossy(&a.bytes);
        assert!(
            !text.contains(&first_line),
            "artifact {} holds /etc/passwd",
            a.name
        );
    }
    let names: Vec<&str> = out.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["real.txt"], "collected: {names:?}");
    let skipped = &report(&out).artifacts_skipped;
    assert!(
        skipped
            .iter()
            .any(|s| s.starts_with("leak.txt") && s.contains("symlink")),
        "skipped: {skipped:?}"
    );
    assert!(
        skipped
            .iter()
            .any(|s| s.starts_with("sub/up.txt") && s.contains("symlink")),
        "skipped: {skipped:?}"
    );
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A repository with one commit of `a.txt`.
fn repo(base: &Path) -> std::path::PathBuf {
    let repo = base.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "--quiet"]);
    std::fs::write(repo.join("a.txt"), "one\n").unwrap();
    git(&repo, &["add", "a.txt"]);
    git(&repo, &["commit", "--quiet", "-m", "first"]);
    repo
}

async fn git_workspace_round_trip(h: &Harness, src: &tempfile::TempDir, task: &str) {
    let repo = repo(src.path());
    let mut spec = shell("echo two >> a.txt && echo new > b.txt");
    spec.workspace = Some(Source::Git {
        repo: repo.to_string_lossy().into_owned(),
        rev: None,
    });
    let out = h.run(task, spec, SHORT).await.unwrap();
    assert_eq!(out.end, JobEnd::Exited { code: 0 }, "{}", out.stderr.text());
    let patch = out
        .artifacts
        .iter()
        .find(|a| a.name == artifacts::PATCH_NAME)
        .unwrap_or_else(|| panic!("no patch; skipped: {:?}", report(&out).artifacts_skipped));
    let text = String::from_utf8_lossy(&patch.bytes);
    assert!(text.contains("a.txt") && text.contains("+two"), "{text}");
    assert!(text.contains("b.txt") && text.contains("+new"), "{text}");
    // The source repository is untouched, and no longer has the worktree.
    assert_eq!(
        std::fs::read_to_string(repo.join("a.txt")).unwrap(),
        "one\n"
    );
    assert!(!repo.join("b.txt").exists());
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");
    assert_eq!(
        git(&repo, &["worktree", "list", "--porcelain"])
            .matches("worktree ")
            .count(),
        1
    );
    // A successful run's workspace is gone.
    assert_eq!(report(&out).workspace_kept, None);
    assert!(
        !h.data()
            .join("workspaces")
            .join(format!("{task}-1"))
            .exists()
    );

    // A failing run keeps its workspace.
    let mut spec = shell("echo three >> a.txt; exit 3");
    spec.workspace = Some(Source::Git {
        repo: repo.to_string_lossy().into_owned(),
        rev: None,
    });
    let failed = format!("{task}-fail");
    let out = h.run(&failed, spec, SHORT).await.unwrap();
    assert_eq!(out.end, JobEnd::Exited { code: 3 });
    let kept = report(&out)
        .workspace_kept
        .clone()
        .expect("a failed run keeps its workspace");
    assert!(kept.is_dir());
    assert_eq!(
        std::fs::read_to_string(kept.join("a.txt")).unwrap(),
        "one\nthree\n"
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("a.txt")).unwrap(),
        "one\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_workspace_yields_its_patch_outside_tmp() {
    let h = Harness::new_in(crate::OUTSIDE_TMP, |_| {});
    let src = {
        std::fs::create_dir_all(crate::OUTSIDE_TMP).unwrap();
        tempfile::tempdir_in(crate::OUTSIDE_TMP)
    }
    .unwrap();
    git_workspace_round_trip(&h, &src, "git-target").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_workspace_yields_its_patch_under_tmp() {
    let h = Harness::new(|_| {});
    let src = tempfile::tempdir().unwrap();
    git_workspace_round_trip(&h, &src, "git-tmp").await;
}

/// An agent works with git in its checkout: status, diff and commit must work there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_can_use_git_in_its_git_workspace() {
    let h = Harness::new_in(crate::OUTSIDE_TMP, |_| {});
    let src = {
        std::fs::create_dir_all(crate::OUTSIDE_TMP).unwrap();
        tempfile::tempdir_in(crate::OUTSIDE_TMP)
    }
    .unwrap();
    let repo = repo(src.path());
    let mut spec = shell(
        "git rev-parse HEAD && echo two >> a.txt && git status --porcelain && \
         git diff --stat",
    );
    spec.workspace = Some(Source::Git {
        repo: repo.to_string_lossy().into_owned(),
        rev: None,
    });
    let out = h.run("git-in-task", spec, SHORT).await.unwrap();
    if let Some(kept) = report(&out).workspace_kept.clone() {
        let _ = std::fs::remove_dir_all(kept);
    }
    assert_eq!(
        out.end,
        JobEnd::Exited { code: 0 },
        "git fails in the task's own checkout: {}",
        out.stderr.text()
    );
    assert!(
        out.stdout.text().contains("M a.txt"),
        "{}",
        out.stdout.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_probes_both_succeed() {
    let sandboxes: Vec<(tempfile::TempDir, Arc<Sandbox>)> = (0..2)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let config = cflow_sandbox::host::Config::under(
                dir.path(),
                std::path::PathBuf::from(env!("CARGO_BIN_EXE_cflow-sandbox")),
            );
            let sb = Arc::new(Sandbox::new(config).unwrap());
            (dir, sb)
        })
        .collect();
    // Keeps the other tests' probes out of this race.
    let _guard = crate::PROBE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut failures = Vec::new();
    for _ in 0..20 {
        let handles: Vec<_> = sandboxes
            .iter()
            .map(|(_, sb)| {
                let sb = Arc::clone(sb);
                std::thread::spawn(move || sb.probe())
            })
            .collect();
        for h in handles {
            match h.join().unwrap() {
                Ok(layers) if layers.values().all(|s| s.is_active()) => {}
                other => failures.push(format!("{other:?}")),
            }
        }
    }
    assert!(failures.is_empty(), "probes failed: {failures:#?}");
}
