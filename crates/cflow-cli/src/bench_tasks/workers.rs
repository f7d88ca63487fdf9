//! The `cflow worker` processes of a run with `--workers`: a key of role `worker`, the children
//! (this very binary), the wait until the server lists them, and their stop.

use super::BenchTasksArgs;
use crate::bench::{Target, client_for, env_name};
use crate::env;
use anyhow::{Context, Result, anyhow, bail};
use cflow_core::Action;
use reqwest::Method;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The `cflow worker` processes of a run with `--workers`.
pub(super) struct Workers {
    children: Vec<tokio::process::Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Workers {
    /// The process ids of the workers still running.
    pub(super) fn pids(&self) -> Vec<u32> {
        self.children
            .iter()
            .filter_map(tokio::process::Child::id)
            .collect()
    }

    pub(super) async fn start(target: &Target, args: &BenchTasksArgs) -> Result<Self> {
        if args.workers == 0 {
            return Ok(Self {
                children: Vec::new(),
                _dir: None,
            });
        }
        let token = worker_key(target).await?;
        let dir = tempfile::tempdir().context("creating the workers' directory")?;
        let exe = std::env::current_exe().context("locating the cflow binary")?;
        let mut children = Vec::new();
        for i in 0..args.workers {
            let log = std::fs::File::create(dir.path().join(format!("worker-{i}.log")))
                .context("creating a worker log")?;
            let mut cmd = tokio::process::Command::new(&exe);
            for var in env::VARS {
                cmd.env_remove(var.name);
            }
            cmd.env(env_name("client.server")?, target.url.as_str())
                .env(env_name("client.token")?, &token)
                .env(env_name("log")?, "warn")
                .env(
                    env_name("server.sandbox.mode")?,
                    if args.no_sandbox { "off" } else { "enforce" },
                )
                .args(["worker", "--name", &format!("bench-worker-{i}"), "--slots"])
                .arg(args.slots.to_string())
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true);
            children.push(cmd.spawn().context("starting 'cflow worker'")?);
        }
        let workers = Self {
            children,
            _dir: Some(dir),
        };
        workers.wait_registered(target, args.workers).await?;
        Ok(workers)
    }

    /// Waits until the server lists all the benchmark's workers as active.
    async fn wait_registered(&self, target: &Target, n: usize) -> Result<()> {
        let mut client = client_for(&target.url, &target.token)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let req = client.request(Method::GET, client.url(&["workers"]));
            let active = match client.json(req, Action::SwarmRead).await {
                Ok(page) => page
                    .get("items")
                    .and_then(Value::as_array)
                    .map_or(0, |items| {
                        items
                            .iter()
                            .filter(|w| {
                                w["name"]
                                    .as_str()
                                    .is_some_and(|s| s.starts_with("bench-worker-"))
                                    && w["state"] == "active"
                            })
                            .count()
                    }),
                Err(e) => match &target.admin_token {
                    // The benchmark's key may not list workers; the admin's may.
                    Some(admin) if client.token() != admin => {
                        client = client_for(&target.url, admin)?;
                        continue;
                    }
                    _ => return Err(e.context("listing the workers")),
                },
            };
            if active >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {active} of {n} workers registered within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the workers as an operator would: SIGTERM (drain), a kill if one hangs.
    pub(super) async fn stop(mut self) {
        for child in &self.children {
            if let Some(pid) = child.id() {
                let _ = tokio::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
        }
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(15), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

/// A key of role `worker` in the benchmark's tenant: made with the spawned server's admin token,
/// or with the caller's own token against an external server (which must be allowed to).
async fn worker_key(target: &Target) -> Result<String> {
    let (token, tenant) = match (&target.admin_token, &target.tenant) {
        (Some(admin), Some(tenant)) => (admin.clone(), tenant.clone()),
        _ => {
            let c = client_for(&target.url, &target.token)?;
            let who = c
                .json(c.request(Method::GET, c.url(&["whoami"])), Action::Whoami)
                .await?;
            let tenant = who["tenant_name"]
                .as_str()
                .or_else(|| who["tenant_id"].as_str())
                .ok_or_else(|| anyhow!("whoami named no tenant: {who}"))?
                .to_string();
            (target.token.clone(), tenant)
        }
    };
    let c = client_for(&target.url, &token)?;
    let req = c
        .request(Method::POST, c.url(&["tenants", &tenant, "keys"]))
        .json(&json!({ "name": "bench-worker", "role": "worker" }));
    let key = c
        .json(req, Action::KeyCreate)
        .await
        .context("creating a worker key for the benchmark's workers")?;
    key["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the server created a worker key without a token"))
}
