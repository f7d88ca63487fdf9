//! `cflow worker`: a remote worker that dials out to a server (so it works behind NAT), takes
//! assignments for its slots and runs them with the built-in drivers until SIGINT/SIGTERM. The
//! first signal drains (no new work; running attempts finish within `--drain-timeout`), the
//! second cancels what is still running.
//!
//! The worker id defaults to `<hostname>-<8 random hex digits>`, new at every start; pass `--id`
//! (or `CFLOW_WORKER_ID`) to keep one across restarts, so that after a quick restart the server
//! recognises the attempts the worker held instead of waiting for their leases to lapse.

use crate::client::Client;
use crate::config::{FlagValue, Loaded};
use crate::output;
use anyhow::{Context, Result, anyhow, bail};
use cflow_agents::{Drivers, ExecConfig};
use cflow_worker::{HttpLink, Link, WorkerOptions, WorkerRuntime};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// The `[worker]` section of `cflow.toml` (and its `CFLOW_WORKER_*` variables).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// `key=value` labels, comma-separated (`region=eu,gpu=false`).
    pub labels: String,
    /// Attempts run at once.
    pub slots: u32,
    /// A stable worker id; unset: `<hostname>-<random>` per start.
    pub id: Option<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            labels: String::new(),
            slots: 4,
            id: None,
        }
    }
}

/// The three configuration flags have ids of their own (`worker_labels`, ...), so the registry's
/// help does not land on other commands' `--labels` or `<ID>`; the hidden aliases make the name
/// `cflow config show` derives from the id (`--worker-labels`) a working flag too.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[arg(
        long = "labels",
        id = "worker_labels",
        alias = "worker-labels",
        value_name = "K=V,..."
    )]
    pub labels: Option<String>,
    #[arg(
        long = "slots",
        id = "worker_slots",
        alias = "worker-slots",
        value_name = "N"
    )]
    pub slots: Option<u32>,
    #[arg(long = "id", id = "worker_id", alias = "worker-id", value_name = "ID")]
    pub id: Option<String>,
    /// A human name for the worker (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// On the first SIGINT/SIGTERM, how long running attempts may take to finish (seconds).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub drain_timeout: u64,
}

impl WorkerArgs {
    pub fn flags(&self) -> Vec<FlagValue> {
        let mut f = Vec::new();
        if let Some(l) = &self.labels {
            f.push(FlagValue::new("worker_labels", l.as_str()));
        }
        if let Some(s) = self.slots {
            f.push(FlagValue::new("worker_slots", s));
        }
        if let Some(i) = &self.id {
            f.push(FlagValue::new("worker_id", i.as_str()));
        }
        f
    }
}

/// Runs the worker until it is stopped. Exit code 2 when the server refuses the token.
pub fn run(loaded: &Loaded, args: WorkerArgs) -> Result<ExitCode> {
    let config = &loaded.config.worker;
    let labels = parse_labels(&config.labels)?;
    let host = hostname();
    let worker_id = match &config.id {
        Some(id) => id.clone(),
        None => default_worker_id(&host),
    };
    if !cflow_worker::runtime::valid_worker_id(&worker_id) {
        bail!(
            "worker id '{worker_id}' is not valid: use 1 to 64 characters of a-z, 0-9, '_' and '-' (--id / CFLOW_WORKER_ID)"
        );
    }
    let mut options = WorkerOptions::new(args.name.unwrap_or(host), config.slots);
    options.worker_id = Some(worker_id.clone());
    options.labels = labels;
    options.drain_timeout = Duration::from_secs(args.drain_timeout);

    init_tracing(&loaded.config.log)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let client = Client::from_config(loaded)?;
        let link = HttpLink::new(client.base().clone(), client.token())
            .context("creating the HTTP client")?;
        let url = client.base().to_string();
        let link: Arc<dyn Link> = Arc::new(link);
        let server = &loaded.config.server;
        let secret_files: Vec<std::path::PathBuf> =
            loaded.file.iter().map(|f| f.path.clone()).collect();
        let sandbox = server
            .sandbox
            .build(&server.data_dir, &secret_files)
            .map_err(|e| {
                anyhow::anyhow!(
                    "sandbox: {e} (or set sandbox.mode = \"off\" to run commands unsandboxed)"
                )
            })?;
        let sandboxed = sandbox.is_some();
        let claude = cflow_agents::ClaudeConfig::from_env(&server.data_dir);
        let llm = cflow_agents::LlmConfig::from_env();
        let drivers = Drivers::with_sandbox(
            ExecConfig::default(),
            sandbox.map(Arc::new),
            Some(claude),
            Some(llm),
        );
        let describe = format!(
            "with {} slots, labels {}",
            options.slots,
            show_labels(&options.labels)
        );
        let runtime = WorkerRuntime::new(link, drivers, options);
        let shutdown = CancellationToken::new();
        watch_signals(shutdown.clone(), runtime.abort_token(), args.drain_timeout)?;
        let mut registered = runtime.registered();
        tokio::spawn(async move {
            if registered.wait_for(Option::is_some).await.is_ok() {
                output::note(&format!(
                    "worker {worker_id} connected to {url} {describe}; {}",
                    if sandboxed {
                        "commands run in the sandbox"
                    } else {
                        "commands run UNSANDBOXED (sandbox.mode = \"off\")"
                    }
                ));
            }
        });
        match runtime.run(shutdown).await {
            Ok(()) => {
                output::note("worker stopped");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) if e.is_auth() => {
                output::note(&format!("error: {e}"));
                Ok(ExitCode::from(2))
            }
            Err(e) => Err(anyhow!(e)),
        }
    })
}

/// First SIGINT/SIGTERM: drain. Second: cancel what is still running.
fn watch_signals(
    shutdown: CancellationToken,
    abort: CancellationToken,
    drain_secs: u64,
) -> Result<()> {
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        output::note(&format!(
            "draining: no new work; running attempts get up to {drain_secs} s (signal again to cancel them now)"
        ));
        shutdown.cancel();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        output::note("cancelling the running attempts");
        abort.cancel();
    });
    Ok(())
}

/// `region=eu,gpu=false` → labels; empty → none.
fn parse_labels(s: &str) -> Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            anyhow!("label '{part}' is not key=value (--labels / CFLOW_WORKER_LABELS, e.g. region=eu,gpu=false)")
        })?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() {
            bail!("label '{part}' has an empty key");
        }
        labels.insert(k.to_string(), v.to_string());
    }
    Ok(labels)
}

fn show_labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "(none)".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The host name, or `worker` when it cannot be read.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into())
}

/// `<hostname>-<8 random hex digits>`, the host name reduced to the id alphabet.
fn default_worker_id(host: &str) -> String {
    let mut base: String = host
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(55)
        .collect();
    if base.is_empty() {
        base = "worker".into();
    }
    // std's RandomState is seeded from the OS: good enough to tell two processes apart.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("{base}-{:08x}", h.finish() as u32)
}

fn init_tracing(filter: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid log filter '{filter}' (CFLOW_LOG / log)"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|e| anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_or_say_why() {
        let l = parse_labels("region=eu, gpu=false").unwrap();
        assert_eq!(l.get("region").map(String::as_str), Some("eu"));
        assert_eq!(l.get("gpu").map(String::as_str), Some("false"));
        assert!(parse_labels("").unwrap().is_empty());
        assert!(
            parse_labels("region")
                .unwrap_err()
                .to_string()
                .contains("key=value")
        );
        assert!(parse_labels("=x").is_err());
    }

    #[test]
    fn default_ids_are_valid_and_differ() {
        let a = default_worker_id("Build.Host_01");
        assert!(a.starts_with("build-host_01-"), "{a}");
        assert!(cflow_worker::runtime::valid_worker_id(&a), "{a}");
        assert_ne!(a, default_worker_id("Build.Host_01"));
        assert!(cflow_worker::runtime::valid_worker_id(&default_worker_id(
            &"x".repeat(200)
        )));
    }
}
