//! Commands that try to get out: fork bombs, writes and reads outside the workspace, ptrace,
//! mount, daemons that outlive the command, and the layers a plain run reports.

use crate::{Harness, denied, hit, live_with_marker, marker, report, shell, survivors};
use cflow_agents::{ExecSpec, JobEnd};
use cflow_sandbox::{Layer, LayerState};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const SHORT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb_hits_the_process_limit_and_leaves_nothing() {
    let h = Harness::new(|p| p.limits.max_processes = 64);
    let mark = marker("forkbomb");
    // Every forked shell keeps the `sh -c LINE` command line, so each carries the marker.
    let line = format!(": {mark}; bomb() {{ bomb | bomb & }}; bomb; sleep 30");
    let started = Instant::now();
    let out = h.sh("forkbomb", &line, Duration::from_secs(3)).await;
    let took = started.elapsed();
    assert!(
        matches!(out.end, JobEnd::TimedOut | JobEnd::Exited { .. }),
        "{:?}",
        out.end
    );
    assert!(
        took < Duration::from_secs(10),
        "the bomb took {took:?} to stop"
    );
    assert!(
        hit(&out, "processes:"),
        "limits_hit should name the process limit: {:?}",
        report(&out).limits_hit
    );
    let left = live_with_marker(&mark);
    assert!(left.is_empty(), "fork bomb processes survived: {left:?}");
    // The host can still fork.
    assert!(
        std::process::Command::new("true")
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_outside_the_workspace_fail_and_inside_succeed() {
    let h = Harness::new(|_| {});
    let mark = marker("write");
    let etc = format!("/etc/{mark}");
    let usr = format!("/usr/{mark}");
    let data_file = h.data().join(format!("{mark}.pwned"));
    let runs_file = h.data().join("runs").join(format!("{mark}.pwned"));
    let line = format!(
        "echo x > {etc} && echo ETC-WRITTEN; \
         touch {usr} && echo USR-WRITTEN; \
         echo x > {data} && echo DATA-WRITTEN; \
         echo x > {runs} && echo RUNS-WRITTEN; \
         echo inside > inside.txt && cat inside.txt && pwd",
        data = data_file.display(),
        runs = runs_file.display(),
    );
    let out = h.sh("write-outside", &line, SHORT).await;
    let stdout = out.stdout.text();
    let stderr = out.stderr.text();
    for path in [
        std::path::PathBuf::from(&etc),
        std::path::PathBuf::from(&usr),
        data_file.clone(),
        runs_file.clone(),
    ] {
        assert!(!path.exists(), "{} was created on the host", path.display());
    }
    assert!(!stdout.contains("ETC-WRITTEN"), "stdout: {stdout}");
    assert!(!stdout.contains("USR-WRITTEN"), "stdout: {stdout}");
    // The recorded reason: the shell's errors.
    assert!(
        stderr.contains("Read-only file system") || stderr.contains("Permission denied"),
        "stderr should say why: {stderr}"
    );
    // Inside the workspace the write works; the cwd is the workspace under the data dir.
    assert!(stdout.contains("inside\n"), "stdout: {stdout}");
    assert!(
        stdout.contains(&h.data().join("workspaces").to_string_lossy().into_owned()),
        "the cwd should be the workspace: {stdout}"
    );
    assert_eq!(out.end, JobEnd::Exited { code: 0 }, "stderr: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_into_a_hidden_data_dir_outside_tmp_fail() {
    // A data directory outside /tmp (as a real server's is): its path exists in the sandbox's
    // view, covered by an empty read-only tmpfs.
    let h = Harness::new_in(crate::OUTSIDE_TMP, |_| {});
    let mark = marker("write-data");
    let data_file = h.data().join(format!("{mark}.pwned"));
    let line = format!(
        "echo x > {data} && echo DATA-WRITTEN; ls -A {dir} | wc -l; \
         echo inside > inside.txt && cat inside.txt",
        data = data_file.display(),
        dir = h.data().display(),
    );
    let out = h.sh("write-data-outside-tmp", &line, SHORT).await;
    let stdout = out.stdout.text();
    assert!(!data_file.exists(), "{} was created", data_file.display());
    assert!(!stdout.contains("DATA-WRITTEN"), "stdout: {stdout}");
    assert!(
        out.stderr.text().contains("Read-only file system"),
        "stderr: {}",
        out.stderr.text()
    );
    assert!(stdout.contains("inside\n"), "stdout: {stdout}");
}

/// A data directory only root may search (`mktemp -d` makes it 0700), or one beneath such a
/// directory: the sandbox's user (host `nobody`, cflow being root here) could not reach the
/// workspace, and every command failed before it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_in_a_data_dir_only_its_owner_may_search() {
    use std::os::unix::fs::PermissionsExt;
    let private = |p: &std::path::Path| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).unwrap()
    };
    // Under /tmp (replaced by the sandbox's own tmpfs), the data directory itself 0700.
    let dir = tempfile::tempdir().unwrap();
    private(dir.path());
    let h = Harness::with_dir(dir, |_| {});
    let out = h
        .sh(
            "private-data-dir",
            "echo inside > inside.txt && cat inside.txt",
            SHORT,
        )
        .await;
    assert_eq!(
        out.end,
        JobEnd::Exited { code: 0 },
        "stderr: {}",
        out.stderr.text()
    );
    assert_eq!(out.stdout.text(), "inside\n");

    // Outside /tmp, beneath a 0700 directory that holds something else too.
    std::fs::create_dir_all(crate::OUTSIDE_TMP).unwrap();
    let parent = tempfile::tempdir_in(crate::OUTSIDE_TMP).unwrap();
    private(parent.path());
    let secret = parent.path().join("secret.txt");
    std::fs::write(&secret, "SECRET-CONTENT").unwrap();
    let data = tempfile::tempdir_in(parent.path()).unwrap();
    let h = Harness::with_dir(data, |_| {});
    let line = format!(
        "cat {secret}; ls -A {parent}; echo inside > inside.txt && cat inside.txt",
        secret = secret.display(),
        parent = parent.path().display(),
    );
    let out = h.sh("private-parent-dir", &line, SHORT).await;
    let stdout = out.stdout.text();
    assert_eq!(
        out.end,
        JobEnd::Exited { code: 0 },
        "stderr: {}",
        out.stderr.text()
    );
    assert!(stdout.contains("inside\n"), "stdout: {stdout}");
    assert!(!stdout.contains("SECRET-CONTENT"), "stdout: {stdout}");
    assert!(!stdout.contains("secret.txt"), "stdout: {stdout}");
    // Nothing was written outside the workspace.
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "SECRET-CONTENT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_not_readable() {
    for (base, task) in [
        (None, "secrets-tmp"),
        (Some(crate::OUTSIDE_TMP), "secrets-target"),
    ] {
        let h = match base {
            None => Harness::new(|_| {}),
            Some(b) => Harness::new_in(b, |_| {}),
        };
        let mark = marker("secret");
        let db = h.data().join("cflow.db");
        let token = h.data().join("admin.token");
        let root_file = std::path::PathBuf::from(format!("/root/.{mark}"));
        std::fs::write(&db, format!("DB-{mark}")).unwrap();
        std::fs::write(&token, format!("TOKEN-{mark}")).unwrap();
        std::fs::write(&root_file, format!("ROOT-{mark}")).unwrap();
        let line = format!(
            "cat {db} {token} {root}; rc=$?; ls -la /root {dir}; exit $rc",
            db = db.display(),
            token = token.display(),
            root = root_file.display(),
            dir = h.data().display(),
        );
        let out = h.sh(task, &line, SHORT).await;
        std::fs::remove_file(&root_file).unwrap();
        let stdout = out.stdout.text();
        assert!(!stdout.contains(&mark), "{task}: a secret leaked: {stdout}");
        assert!(
            !stdout.contains(".cflow-hostile"),
            "{task}: /root is listed: {stdout}"
        );
        assert!(
            !stdout.contains("cflow.db") && !stdout.contains("admin.token"),
            "{task}: the data dir is listed: {stdout}"
        );
        assert_ne!(out.end, JobEnd::Exited { code: 0 }, "{task}: {stdout}");
        assert!(
            out.stderr.text().contains("No such file"),
            "{task}: stderr should say why: {}",
            out.stderr.text()
        );
    }
}

/// A python3 script that starts `sleep`, tries `ptrace(PTRACE_ATTACH)` on it and prints the
/// result and errno.
const PTRACE_PY: &str = r#"
import ctypes, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
p = subprocess.Popen(["sleep", "30"])
rc = libc.ptrace(16, p.pid, None, None)
err = ctypes.get_errno()
p.kill()
p.wait()
print("ptrace", rc, err)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ptrace_of_a_sibling_is_denied() {
    let h = Harness::new(|_| {});
    let spec = ExecSpec::program("python3", ["-c", PTRACE_PY]).env("PATH", crate::PATH);
    let out = h.run("ptrace", spec, SHORT).await.unwrap();
    let stdout = out.stdout.text();
    assert!(
        stdout.contains(&format!("ptrace -1 {}", libc::EPERM)),
        "stdout: {stdout} stderr: {}",
        out.stderr.text()
    );
    assert!(denied(&out, "ptrace"), "denied: {:?}", report(&out).denied);
    assert!(report(&out).denied_total >= 1);
}

const MOUNT_PY: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
os.makedirs("/tmp/x", exist_ok=True)
rc = libc.mount(b"none", b"/tmp/x", b"tmpfs", 0, None)
print("mount", rc, ctypes.get_errno())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_is_denied() {
    let h = Harness::new(|_| {});
    let spec = ExecSpec::program("python3", ["-c", MOUNT_PY]).env("PATH", crate::PATH);
    let out = h.run("mount-py", spec, SHORT).await.unwrap();
    let stdout = out.stdout.text();
    assert!(
        stdout.contains(&format!("mount -1 {}", libc::EPERM)),
        "stdout: {stdout} stderr: {}",
        out.stderr.text()
    );
    assert!(denied(&out, "mount"), "denied: {:?}", report(&out).denied);

    // mount(8) fails too (whichever mount API it uses, it is denied).
    let out = h
        .sh(
            "mount-cmd",
            "mkdir -p /tmp/x && mount -t tmpfs none /tmp/x; echo rc=$?; grep -c ' /tmp/x ' /proc/self/mountinfo",
            SHORT,
        )
        .await;
    let stdout = out.stdout.text();
    assert!(!stdout.contains("rc=0"), "mount(8) succeeded: {stdout}");
    assert!(
        stdout.trim_end().ends_with('0'),
        "/tmp/x is mounted: {stdout}"
    );
    assert!(
        report(&out)
            .denied
            .iter()
            .any(|d| d == "mount" || d.starts_with("fs")),
        "denied: {:?} stderr: {}",
        report(&out).denied,
        out.stderr.text()
    );
}

/// A line that leaves a daemon behind: double fork, `setsid`, SIGTERM ignored, the marker as
/// its `$0` (so it is in its command line), looping on short sleeps that ignore SIGTERM too.
fn daemon_line(mark: &str) -> String {
    format!(
        "( setsid sh -c 'trap \"\" TERM HUP INT; while :; do sleep 1; done' {mark} \
         </dev/null >/dev/null 2>&1 & ); sleep 0.3; echo daemonised"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_ignores_sigterm_dies_with_a_timed_out_run() {
    let h = Harness::new(|_| {});
    let mark = marker("daemon-timeout");
    let line = format!("{}; trap '' TERM; sleep 30", daemon_line(&mark));
    let started = Instant::now();
    let out = h.sh("daemon-timeout", &line, Duration::from_secs(2)).await;
    assert_eq!(out.end, JobEnd::TimedOut, "stderr: {}", out.stderr.text());
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(out.stdout.text().contains("daemonised"));
    let left = live_with_marker(&mark);
    assert!(left.is_empty(), "the daemon survived the run: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_left_by_a_command_that_exits_dies_with_it() {
    let h = Harness::new(|_| {});
    let mark = marker("daemon-exit");
    let line = format!("{}; exit 0", daemon_line(&mark));
    let out = h.sh("daemon-exit", &line, SHORT).await;
    assert_eq!(out.end, JobEnd::Exited { code: 0 });
    assert!(out.stdout.text().contains("daemonised"));
    let left = live_with_marker(&mark);
    assert!(left.is_empty(), "the daemon survived the run: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_stops_the_run_and_leaves_nothing() {
    let h = Harness::new(|_| {});
    let mark = marker("cancel");
    let line = format!("{}; sleep 30; : {mark}", daemon_line(&mark));
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.cancel();
    });
    let started = Instant::now();
    let out = h
        .run_job(crate::job("cancel", shell(&line), SHORT), cancel)
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(out.end, JobEnd::Cancelled);
    assert!(took < Duration::from_secs(5), "cancelling took {took:?}");
    let left = survivors(&mark, Duration::ZERO).await;
    assert!(left.is_empty(), "processes survived the cancel: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_layer_is_active_and_the_command_is_unprivileged() {
    let h = Harness::new(|_| {});
    let out = h.sh("layers-true", "true", SHORT).await;
    assert_eq!(out.end, JobEnd::Exited { code: 0 });
    let cflow_agents::Isolation::Sandboxed { layers } = &out.isolation else {
        panic!("not sandboxed: {:?}", out.isolation);
    };
    for layer in Layer::ALL {
        assert_eq!(
            layers.get(&layer),
            Some(&LayerState::Active),
            "layer {layer} on this host: {layers:?}"
        );
    }
    assert_eq!(&report(&out).layers, layers);
    assert!(report(&out).denied.is_empty());
    assert!(report(&out).limits_hit.is_empty());

    let me = std::process::id();
    let line = format!(
        "echo procs=$(ls /proc | grep -c '^[0-9]'); \
         test -e /proc/{me} && echo TEST-PID-VISIBLE; \
         grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; \
         echo host=$(hostname); echo uid=$(id -u); echo pid=$$"
    );
    let out = h.sh("layers-inside", &line, SHORT).await;
    let stdout = out.stdout.text();
    assert_eq!(out.end, JobEnd::Exited { code: 0 }, "{}", out.stderr.text());
    let field = |name: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
    };
    let procs: u32 = field("procs=").parse().unwrap();
    assert!(procs <= 6, "the sandbox sees {procs} processes: {stdout}");
    assert!(!stdout.contains("TEST-PID-VISIBLE"), "{stdout}");
    for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(cap), "0000000000000000", "{cap} {stdout}");
    }
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2");
    assert_eq!(field("host="), "cflow-sandbox");
    assert_eq!(field("uid="), "0");
    let pid: u32 = field("pid=").parse().unwrap();
    assert!(
        pid <= 3,
        "the command should be near pid 1 of its namespace: {pid}"
    );
}

/// The supervisor dies (its end of the launcher's stdin pipe closes, as it does when a server or
/// worker is killed with SIGKILL): the launcher kills the sandbox, daemons included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_supervisor_takes_the_sandbox_with_it() {
    use std::process::Stdio;
    let h = Harness::new(|_| {});
    let mark = marker("lifeline");
    let line = format!("{}; sleep 600; : {mark}", daemon_line(&mark));
    let sb = Arc::clone(&h.sandbox);
    let prepared = sb
        .prepare(cflow_sandbox::host::RunRequest {
            id: "lifeline-1".into(),
            argv: vec!["/bin/sh".into(), "-c".into(), line],
            env: vec![("PATH".into(), crate::PATH.into())],
            workspace: Default::default(),
            policy: sb.config().policy.clone(),
            home: None,
        })
        .expect("prepared");
    let mut launcher = std::process::Command::new(&prepared.launcher)
        .args(prepared.args())
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the launcher starts");
    // Wait until the daemon is up (the command prints once it has forked it).
    let mut out = launcher.stdout.take().unwrap();
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut out, &mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("daemonised"));
    assert!(
        !live_with_marker(&mark).is_empty(),
        "the daemon should be running"
    );
    // The supervisor "dies": its end of the lifeline closes.
    drop(launcher.stdin.take());
    let status = launcher.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 9), "init was SIGKILLed: {status}");
    let left = survivors(&mark, Duration::from_secs(2)).await;
    assert!(left.is_empty(), "survived its supervisor: {left:?}");
    let finished = sb.finish(prepared, false, &Default::default());
    assert!(finished.setup_error.is_none());
}
