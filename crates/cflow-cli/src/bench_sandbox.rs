//! `cflow bench sandbox`: what the sandbox adds to starting a command, on this host.
//!
//! Three ways to run `true`, each `--runs` times one after another, timed from just before the
//! spawn to the reaped exit:
//! - **bare**: `true` as a plain child process;
//! - **launcher**: `true` through the launcher with every layer (user, PID, mount, IPC, UTS and
//!   network namespaces, the read-only view, landlock, seccomp, rlimits), no cgroup;
//! - **full run**: what a task pays: a fresh workspace, a cgroup, the launcher, reading the
//!   report and the cgroup's counters, and removing both.

use crate::config::Loaded;
use crate::output::Printer;
use anyhow::{Context, Result, bail};
use cflow_sandbox::host::{RunRequest, Sandbox};
use clap::Args;
use serde_json::json;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Args, Clone)]
pub struct BenchSandboxArgs {
    /// Runs of each kind.
    #[arg(long, default_value_t = 200)]
    pub runs: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(loaded: &Loaded, args: BenchSandboxArgs, out: Printer) -> Result<ExitCode> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let scratch = tempfile::tempdir().context("creating a scratch data directory")?;
    let sandbox = loaded
        .config
        .server
        .sandbox
        .build(scratch.path(), &[])
        .map_err(anyhow::Error::msg)?
        .context("the sandbox is turned off in the configuration (sandbox.mode = \"off\")")?;
    let layers = sandbox.probe().map_err(anyhow::Error::msg)?;
    let inactive: Vec<String> = layers
        .iter()
        .filter(|(_, s)| !s.is_active())
        .map(|(l, s)| format!("{l}: {s}"))
        .collect();

    let bare = time_runs(args.runs, || {
        let status = std::process::Command::new("true")
            .stdin(Stdio::null())
            .status()
            .context("running true")?;
        anyhow::ensure!(status.success(), "true failed: {status}");
        Ok(())
    })?;
    let dir = scratch.path().join("launcher-cwd");
    std::fs::create_dir_all(&dir)?;
    let launcher = time_runs(args.runs, || {
        let out = sandbox
            .run_sync(&dir, vec!["true".into()], sandbox.config().policy.clone())
            .map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            out.status.success(),
            "true failed in the sandbox: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    })?;
    let mut n = 0u64;
    let full = time_runs(args.runs, || {
        n += 1;
        full_run(&sandbox, n)
    })?;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let row = |s: &Stats| json!({"mean_ms": ms(s.mean), "p50_ms": ms(s.p50), "p99_ms": ms(s.p99)});
    let report = json!({
        "runs": args.runs,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "layers_inactive": inactive,
        "bare": row(&bare),
        "launcher": row(&launcher),
        "full_run": row(&full),
        "launcher_added_ms": ms(launcher.mean.saturating_sub(bare.mean)),
        "full_run_added_ms": ms(full.mean.saturating_sub(bare.mean)),
        "launcher_ratio": launcher.mean.as_secs_f64() / bare.mean.as_secs_f64(),
        "full_run_ratio": full.mean.as_secs_f64() / bare.mean.as_secs_f64(),
    });
    if args.json || out.is_json() {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "sandbox start overhead — `true`, {} runs each, {} cores{}",
        args.runs,
        report["cores"],
        if inactive.is_empty() {
            ", every layer active".to_string()
        } else {
            format!(", NOT active: {}", inactive.join("; "))
        }
    );
    println!("                 mean       p50       p99");
    for (name, s) in [
        ("bare", &bare),
        ("launcher", &launcher),
        ("full run", &full),
    ] {
        println!(
            "  {name:<10} {:>7.2} ms {:>7.2} ms {:>7.2} ms",
            ms(s.mean),
            ms(s.p50),
            ms(s.p99)
        );
    }
    println!(
        "  added: launcher {:.2} ms ({:.1}x bare), full run {:.2} ms ({:.1}x bare)",
        report["launcher_added_ms"].as_f64().unwrap_or(0.0),
        report["launcher_ratio"].as_f64().unwrap_or(0.0),
        report["full_run_added_ms"].as_f64().unwrap_or(0.0),
        report["full_run_ratio"].as_f64().unwrap_or(0.0),
    );
    Ok(ExitCode::SUCCESS)
}

/// One whole sandboxed run of `true`, as a task gets it.
fn full_run(sandbox: &Sandbox, n: u64) -> Result<()> {
    let prepared = sandbox
        .prepare(RunRequest {
            id: format!("bench-{n}"),
            argv: vec!["true".into()],
            env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())],
            workspace: Default::default(),
            policy: sandbox.config().policy.clone(),
            home: None,
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut child = std::process::Command::new(&prepared.launcher)
        .args(prepared.args())
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the launcher")?;
    // `wait` would close stdin first, and a closed stdin tells the launcher to kill the run.
    let lifeline = child.stdin.take();
    let status = child.wait()?;
    drop(lifeline);
    let finished = sandbox.finish(prepared, status.success(), &Default::default());
    if let Some(e) = finished.setup_error {
        bail!("{e}");
    }
    anyhow::ensure!(status.success(), "true failed in the sandbox: {status}");
    Ok(())
}

struct Stats {
    mean: Duration,
    p50: Duration,
    p99: Duration,
}

fn time_runs(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Stats> {
    // One untimed run warms the page cache and the launcher binary.
    f()?;
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed());
    }
    samples.sort();
    let total: Duration = samples.iter().sum();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Ok(Stats {
        mean: total / runs as u32,
        p50: at(0.5),
        p99: at(0.99),
    })
}
