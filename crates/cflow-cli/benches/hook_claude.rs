//! `cflow hook claude PreToolUse` as a whole process, the way Claude Code runs it before every
//! tool call: spawn, read the hook JSON on stdin, post it to a real `cflow up`, exit. Reports
//! the wall time per process (p50, p99, max) against a live server (with a tenant policy to
//! check, so the answer includes the policy work), and against a port where nothing listens
//! (the fail-open path). `cflow --version` is the floor: what starting the binary costs.
//!
//! `cargo bench -p cflow-cli --bench hook_claude` (`HOOK_CLAUDE_RUNS` sets the processes per
//! case, default 300, after a warm-up of 20).

#[allow(dead_code)]
#[path = "../tests/it/harness.rs"]
mod harness;

use harness::{BIN, Server, free_port};
use hdrhistogram::Histogram;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const INPUT: &str = r#"{"session_id":"bench-session","transcript_path":"/home/u/.claude/projects/p/bench.jsonl","cwd":"/home/u/project","permission_mode":"default","hook_event_name":"PreToolUse","tool_name":"Bash","tool_input":{"command":"cargo test --workspace","description":"Run the tests"},"tool_use_id":"toolu_01"}"#;

/// Runs one process to its end; returns its wall time in microseconds and its exit code.
fn once(work: &Path, server: &str, args: &[&str], stdin: &str) -> (u64, Option<i32>) {
    let t = Instant::now();
    let mut child = Command::new(BIN)
        .current_dir(work)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", work)
        .env("CFLOW_SERVER", server)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning cflow");
    let mut pipe = child.stdin.take().expect("stdin");
    let _ = pipe.write_all(stdin.as_bytes());
    drop(pipe);
    let status = child.wait().expect("waiting for cflow");
    (t.elapsed().as_micros() as u64, status.code())
}

fn case(name: &str, runs: usize, work: &Path, server: &str, args: &[&str], want: i32) {
    for _ in 0..20 {
        once(work, server, args, INPUT);
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for _ in 0..runs {
        let (us, code) = once(work, server, args, INPUT);
        assert_eq!(code, Some(want), "{name}: unexpected exit code");
        hist.record(us).expect("record");
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{name:<44} runs {runs:>5}  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
        ms(0.5),
        ms(0.99),
        hist.max() as f64 / 1000.0
    );
}

fn main() {
    let runs: usize = std::env::var("HOOK_CLAUDE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let server = Server::start();
    let work = server.work().to_path_buf();
    let policy = r#"{"deny_commands": ["rm -rf /", "re:curl .*\\| *sh"], "deny_tools": ["WebFetch"], "deny_paths": ["/etc"]}"#;
    let out = Command::new(BIN)
        .current_dir(&work)
        .env("CFLOW_SERVER", &server.url)
        .args(["tenant", "claude-policy", "set", "--json", policy])
        .output()
        .expect("setting the policy");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    println!("cflow hook claude, one process per call ({BIN})");
    case(
        "cflow --version (process start floor)",
        runs,
        &work,
        &server.url,
        &["--version"],
        0,
    );
    case(
        "hook claude PreToolUse, server up (allowed)",
        runs,
        &work,
        &server.url,
        &["hook", "claude", "PreToolUse"],
        0,
    );
    let down = format!("http://127.0.0.1:{}", free_port());
    case(
        "hook claude PreToolUse, nothing listening",
        runs,
        &work,
        &down,
        &["hook", "claude", "PreToolUse"],
        0,
    );
    server.stop();
}
