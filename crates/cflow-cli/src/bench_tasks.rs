//! `cflow bench tasks`: submits no-op (or `true`) tasks through the real HTTP API and measures
//! until they are complete and durable, next to the targets: bulk throughput, the
//! submit→start latency of an open-loop trickle, and the server's memory with many idle agents.
//!
//! Completion is read from the swarm's live `queued` and `running` counts (an attempt leaves the
//! scheduler's memory only once its completion is committed) and cross-checked at the end by
//! counting the swarm's succeeded tasks page by page. With `--workers K`, the server's local pool
//! is off and K `cflow worker` processes (this binary) run the tasks instead.

mod cpu;
mod report;
mod swarm;
mod workers;

use crate::bench::{Errors, SpawnOptions, Target, client_for, env_name, histogram, tail_of};
use crate::cli::parse_duration;
use crate::client::Client;
use crate::config::Loaded;
use crate::output::{Printer, emit, note};
use anyhow::{Context, Result, anyhow, bail};
use cflow_core::Action;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use report::{
    Idle, Latency, Percentiles, PgSetup, Report, Setup, Throughput, executors, print_report,
};
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use swarm::{count, drained, others, run_name, stop_swarm, swarm};
use workers::Workers;

/// Targets from the issue.
const SQLITE_TASKS_PER_SEC: f64 = 20_000.0;
const POSTGRES_TASKS_PER_SEC: f64 = 10_000.0;
const START_P99_TARGET_MS: f64 = 10.0;
const IDLE_RSS_TARGET_MB: f64 = 200.0;
/// The most tasks one submission may hold (the API's limit).
const MAX_BATCH: usize = 10_000;
/// Tasks per submission request unless `--batch` says otherwise.
const DEFAULT_BATCH: usize = 1_000;
/// How long a swarm's queued and running counts may stay unchanged before the wait for it to
/// drain gives up.
const DRAIN_STALL: Duration = Duration::from_secs(60);
/// How often the swarm's live counts are read while waiting.
const POLL: Duration = Duration::from_millis(10);
/// Unrecorded lead-in of the latency phase (at most a fifth of it).
const WARMUP: Duration = Duration::from_secs(1);
/// Concurrent reads when fetching tasks' attempts.
const READERS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchDriver {
    /// The built-in benchmark driver: does nothing, measures the platform's overhead.
    Noop,
    /// `exec` running `true`: the overhead plus a process spawn.
    Exec,
}

impl BenchDriver {
    fn name(self) -> &'static str {
        match self {
            Self::Noop => "noop",
            Self::Exec => "exec",
        }
    }
}

#[derive(Debug, Args, Clone)]
pub struct BenchTasksArgs {
    /// Tasks of the throughput phase (0 skips it).
    #[arg(long, default_value_t = 20_000)]
    pub tasks: usize,
    /// Tasks per submission request (1 to 10000). A request is one all-or-nothing
    /// transaction: with 10,000 per request no task can end while the next request's insert
    /// holds the store's writer, so execution and submission overlap less than when a client
    /// streams its tasks in requests of a thousand.
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    pub batch: usize,
    /// Submission requests in flight at once in the throughput phase.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// The agents' driver.
    #[arg(long, value_enum, default_value_t = BenchDriver::Noop)]
    pub driver: BenchDriver,
    /// Remote `cflow worker` processes to run the tasks (0: the server's local pool).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Slots of each worker, or of the spawned server's local pool when --workers is 0.
    #[arg(
        long = "slots",
        id = "bench_slots",
        value_name = "N",
        default_value_t = 64
    )]
    pub slots: u32,
    /// Agents in the swarm of the throughput and latency phases.
    #[arg(long, default_value_t = 256)]
    pub agents: u32,
    /// Offered rate of the latency phase (tasks/s, one task per request; 0 skips it).
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// How long the latency phase offers tasks.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Idle agents registered in the memory phase (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    pub idle_agents: u32,
    /// Spawn `cflow server --database URL` (a fresh, empty PostgreSQL database) instead of
    /// `cflow up` on SQLite.
    #[arg(long = "database", id = "bench_database", value_name = "URL")]
    pub database: Option<String>,
    /// Run the spawned server's (or workers') commands without the sandbox, to measure what
    /// the sandbox costs (`--driver exec`).
    #[arg(long)]
    pub no_sandbox: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(
    loaded: &Loaded,
    args: BenchTasksArgs,
    explicit_server: bool,
    out: Printer,
) -> Result<ExitCode> {
    if !(1..=MAX_BATCH).contains(&args.batch) || args.in_flight == 0 || args.agents == 0 {
        bail!("--batch must be 1 to {MAX_BATCH}; --in-flight and --agents must be positive");
    }
    if explicit_server && args.database.is_some() {
        bail!("--database starts a server of its own; it cannot be combined with --server");
    }
    let json_out = args.json || out.is_json();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let target = if explicit_server {
            Target::external(loaded)?
        } else {
            let local_slots = if args.workers > 0 { 0 } else { args.slots };
            let mut env = vec![(
                env_name("server.sched.local_slots")?.to_string(),
                local_slots.to_string(),
            )];
            if args.no_sandbox {
                env.push((env_name("server.sandbox.mode")?.to_string(), "off".into()));
            }
            Target::spawn_with(&SpawnOptions {
                env,
                database: args.database.clone(),
                // Creating swarms needs an operator.
                role: Some("operator"),
            })
            .await?
        };
        let workers = match Workers::start(&target, &args).await {
            Ok(w) => w,
            Err(e) => {
                target.stop().await;
                return Err(e);
            }
        };
        let procs = cpu::Procs {
            server: target.child.as_ref().and_then(tokio::process::Child::id),
            workers: workers.pids(),
        };
        let result = bench(&target, &args, json_out, &procs).await;
        let failed = result.as_ref().map_or(true, |r| r.errors > 0);
        workers.stop().await;
        if failed && let Some(log) = &target.log {
            note(&format!(
                "the benchmark's server log ends with:\n{}",
                tail_of(log)
            ));
        }
        target.stop().await;
        let report = result?;
        if json_out {
            emit(&serde_json::to_string_pretty(&report)?);
        } else {
            print_report(&report);
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn bench(
    target: &Target,
    args: &BenchTasksArgs,
    quiet: bool,
    procs: &cpu::Procs,
) -> Result<Report> {
    let client = client_for(&target.url, &target.token)?;
    let backend = if args.database.is_some() {
        "postgresql"
    } else if target.child.is_some() {
        "sqlite"
    } else {
        "external (unknown)"
    };
    // The PostgreSQL server's settings, read before any phase; a failure to read them is
    // reported in their place rather than failing the run.
    let postgres = match &args.database {
        Some(url) => Some(match crate::pgsettings::settings(url).await {
            Ok(settings) => PgSetup {
                summary: crate::pgsettings::describe(&settings),
                settings,
            },
            Err(e) => PgSetup {
                summary: format!("PostgreSQL settings not read: {e:#}"),
                settings: Vec::new(),
            },
        }),
        None => None,
    };
    let setup = Setup {
        server: target.description.clone(),
        backend,
        postgres,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        driver: args.driver,
        workers: args.workers,
        slots: args.slots,
        agents: args.agents,
    };
    if !quiet {
        note(&format!(
            "benchmarking tasks on {} — {} cores, driver {}, {}",
            setup.server,
            setup.cores,
            args.driver.name(),
            executors(&setup)
        ));
    }
    let throughput = if args.tasks > 0 {
        Some(throughput(&client, args, backend, quiet, procs).await?)
    } else {
        None
    };
    let latency = if args.rate > 0 && !args.duration.is_zero() {
        Some(latency(&client, args, quiet, procs).await?)
    } else {
        None
    };
    let idle = if args.idle_agents > 0 {
        Some(idle(&client, target, args, quiet).await?)
    } else {
        None
    };
    let errors = throughput.as_ref().map_or(0, |t| t.errors)
        + latency.as_ref().map_or(0, |l| l.errors)
        + idle.as_ref().map_or(0, |i| i.errors);
    Ok(Report {
        setup,
        throughput,
        latency,
        idle,
        errors,
    })
}

fn task(swarm: &str) -> Value {
    json!({ "swarm": swarm, "spec": { "command": "true" } })
}

/// Phase 1: all tasks in bulk requests, several in flight, timed until all are complete.
async fn throughput(
    client: &Client,
    args: &BenchTasksArgs,
    backend: &str,
    quiet: bool,
    procs: &cpu::Procs,
) -> Result<Throughput> {
    let errors = Arc::new(Errors::default());
    let (swarm_id, _) = swarm(
        client,
        &run_name("bench-throughput"),
        args.driver.name(),
        args.agents,
        &errors,
    )
    .await?;
    let batches: Vec<usize> = (0..args.tasks)
        .step_by(args.batch)
        .map(|from| args.batch.min(args.tasks - from))
        .collect();
    let bodies: Arc<Vec<Value>> = Arc::new(
        batches
            .iter()
            .map(|&n| json!({ "tasks": vec![task(&swarm_id); n] }))
            .collect(),
    );
    if !quiet {
        note(&format!(
            "throughput: {} tasks in {} requests of up to {}, {} in flight",
            args.tasks,
            bodies.len(),
            args.batch,
            args.in_flight
        ));
    }
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let cpu_before = cpu::sample(procs);
    let start = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..args.in_flight.min(bodies.len()) {
        let (c, bodies, next, accepted, errors) = (
            client.clone(),
            bodies.clone(),
            next.clone(),
            accepted.clone(),
            errors.clone(),
        );
        senders.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let req = c.request(Method::POST, c.url(&["tasks"])).json(body);
                match c.json(req, Action::TaskSubmit).await {
                    Ok(v) => {
                        let n = v["tasks"].as_array().map_or(0, Vec::len);
                        accepted.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => errors.record(format!("submitting {} tasks: {e:#}", batch_len(body))),
                }
            }
        });
    }
    while senders.join_next().await.is_some() {}
    let submitted = start.elapsed();
    let result = drained(client, &swarm_id).await;
    let complete = start.elapsed();
    let cpu = cpu::since(cpu_before, procs);
    if let Err(e) = result {
        errors.record(format!("{e:#}"));
    }
    let succeeded = count(client, &swarm_id, "succeeded").await?;
    let accepted = accepted.load(Ordering::Relaxed);
    if accepted != args.tasks {
        errors.record(format!("{accepted} of {} tasks were accepted", args.tasks));
    }
    if succeeded != args.tasks as u64 {
        errors.record(format!(
            "{succeeded} of {} tasks succeeded (the rest: {})",
            args.tasks,
            others(client, &swarm_id).await
        ));
    }
    stop_swarm(client, &swarm_id, &errors).await;
    let tasks_per_sec = succeeded as f64 / complete.as_secs_f64().max(1e-9);
    let goal = if backend == "postgresql" {
        POSTGRES_TASKS_PER_SEC
    } else {
        SQLITE_TASKS_PER_SEC
    };
    Ok(Throughput {
        tasks: args.tasks,
        batch: args.batch,
        in_flight: args.in_flight,
        submit_secs: submitted.as_secs_f64(),
        submit_per_sec: accepted as f64 / submitted.as_secs_f64().max(1e-9),
        complete_secs: complete.as_secs_f64(),
        tasks_per_sec,
        succeeded,
        errors: errors.count(),
        error_reasons: errors.seen(),
        target: format!(">= {goal:.0} tasks/s ({backend})"),
        met: tasks_per_sec >= goal && errors.count() == 0,
        cpu,
    })
}

fn batch_len(body: &Value) -> usize {
    body["tasks"].as_array().map_or(0, Vec::len)
}

/// Microseconds since the Unix epoch.
fn unix_micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Phase 2: one task per request at a fixed rate; each request's latency counts from its
/// scheduled send time, so a stalled server shows as latency (no coordinated omission).
async fn latency(
    client: &Client,
    args: &BenchTasksArgs,
    quiet: bool,
    procs: &cpu::Procs,
) -> Result<Latency> {
    let errors = Arc::new(Errors::default());
    let (swarm_id, _) = swarm(
        client,
        &run_name("bench-latency"),
        args.driver.name(),
        args.agents,
        &errors,
    )
    .await?;
    if !quiet {
        note(&format!(
            "latency: {} tasks/s for {} s (open loop, one task per request)",
            args.rate,
            args.duration.as_secs_f64()
        ));
    }
    let warmup = WARMUP.min(args.duration / 5);
    let total = (f64::from(args.rate) * (warmup + args.duration).as_secs_f64()).round() as u64;
    let interval = 1.0 / f64::from(args.rate);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let cpu_before = cpu::sample(procs);
    let begin = Instant::now() + Duration::from_millis(5);
    // The wall clock at `begin`: scheduled send times are compared with the server's stamps.
    let begin_wall = unix_micros(SystemTime::now()) + 5_000;
    let measured_from = begin + warmup;
    let scheduler = std::thread::spawn(move || {
        for i in 0..total {
            let at = begin + Duration::from_secs_f64(interval * i as f64);
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if tx.send((i, at)).is_err() {
                break;
            }
        }
    });
    let rtt = Arc::new(Mutex::new(histogram()));
    // (task id, scheduled wall-clock µs) of each measured task.
    let sent = Arc::new(Mutex::new(Vec::<(String, i64)>::new()));
    let mut requests = tokio::task::JoinSet::new();
    let body = Arc::new(json!({ "tasks": [task(&swarm_id)] }));
    while let Some((_, at)) = rx.recv().await {
        let (c, rtt, sent, errors, body) = (
            client.clone(),
            rtt.clone(),
            sent.clone(),
            errors.clone(),
            body.clone(),
        );
        let measured = at >= measured_from;
        let wall = begin_wall + i64::try_from((at - begin).as_micros()).unwrap_or(0);
        requests.spawn(async move {
            let req = c.request(Method::POST, c.url(&["tasks"])).json(&*body);
            match c.json(req, Action::TaskSubmit).await {
                Ok(v) => {
                    let us = at.elapsed().as_micros().max(1) as u64;
                    let Some(id) = v["tasks"][0]["id"].as_str() else {
                        errors.record(format!("a 202 without a task id: {v}"));
                        return;
                    };
                    if measured {
                        if let Ok(mut h) = rtt.lock() {
                            let _ = h.record(us);
                        }
                        if let Ok(mut s) = sent.lock() {
                            s.push((id.to_string(), wall));
                        }
                    }
                }
                Err(e) => errors.record(format!("submitting one task: {e:#}")),
            }
        });
    }
    while requests.join_next().await.is_some() {}
    let _ = scheduler.join();
    if let Err(e) = drained(client, &swarm_id).await {
        errors.record(format!("{e:#}"));
    }
    let cpu = cpu::since(cpu_before, procs);
    let sent = std::mem::take(&mut *sent.lock().map_err(|_| anyhow!("poisoned"))?);
    let (starts, clamped) = start_latencies(client, sent, &errors).await;
    let succeeded = count(client, &swarm_id, "succeeded").await?;
    if succeeded != total {
        errors.record(format!(
            "{succeeded} of {total} tasks succeeded (the rest: {})",
            others(client, &swarm_id).await
        ));
    }
    stop_swarm(client, &swarm_id, &errors).await;
    let rtt = rtt
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| histogram());
    let submit_to_start = Percentiles::of(&starts);
    Ok(Latency {
        offered_rate: args.rate,
        duration_secs: args.duration.as_secs_f64(),
        submitted: total,
        met: submit_to_start.p99_ms < START_P99_TARGET_MS && errors.count() == 0,
        submit_to_start,
        http_202: Percentiles::of(&rtt),
        clamped,
        succeeded,
        errors: errors.count(),
        error_reasons: errors.seen(),
        target: format!(
            "submit→start p99 < {START_P99_TARGET_MS} ms at {} tasks/s",
            args.rate
        ),
        cpu,
    })
}

/// Reads each task's first attempt and records `started_at` minus the scheduled send time.
async fn start_latencies(
    client: &Client,
    sent: Vec<(String, i64)>,
    errors: &Arc<Errors>,
) -> (Histogram<u64>, u64) {
    let sent = Arc::new(sent);
    let next = Arc::new(AtomicUsize::new(0));
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..READERS {
        let (c, sent, next, errors) = (client.clone(), sent.clone(), next.clone(), errors.clone());
        readers.spawn(async move {
            let mut h = histogram();
            let mut clamped = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((id, wall)) = sent.get(i) else { break };
                let req = c.request(Method::GET, c.url(&["tasks", id]));
                let started = match c.json(req, Action::TaskRead).await {
                    Ok(t) => t["attempts"][0]["started_at"]
                        .as_str()
                        .and_then(cflow_core::timefmt::parse_rfc3339),
                    Err(e) => {
                        errors.record(format!("reading task {id}: {e:#}"));
                        continue;
                    }
                };
                let Some(ms) = started else {
                    errors.record(format!("task {id} has no started attempt"));
                    continue;
                };
                let us = ms * 1000 - wall;
                if us < 1 {
                    clamped += 1;
                }
                let _ = h.record(us.max(1) as u64);
            }
            (h, clamped)
        });
    }
    let mut total = histogram();
    let mut clamped = 0;
    while let Some(r) = readers.join_next().await {
        match r {
            Ok((h, c)) => {
                let _ = total.add(&h);
                clamped += c;
            }
            Err(e) => errors.record(format!("a reader failed: {e}")),
        }
    }
    (total, clamped)
}

/// The server's resident memory in MB, from `/proc/<pid>/status`.
fn rss_mb(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kb / 1024.0)
}

/// Phase 3: a swarm of `--idle-agents` idle noop agents, and the server's RSS around it.
async fn idle(
    client: &Client,
    target: &Target,
    args: &BenchTasksArgs,
    quiet: bool,
) -> Result<Idle> {
    let n = args.idle_agents;
    if !quiet {
        note(&format!("idle agents: registering {n} noop agents"));
    }
    let pid = target.child.as_ref().and_then(tokio::process::Child::id);
    let errors = Errors::default();
    let before = pid.map(rss_mb).transpose()?;
    let (swarm_id, took) = swarm(client, &run_name("bench-idle"), "noop", n, &errors).await?;
    // Let the registration's transient allocations settle before reading.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = pid.map(rss_mb).transpose()?;
    stop_swarm(client, &swarm_id, &errors).await;
    Ok(Idle {
        agents: n,
        register_secs: took.as_secs_f64(),
        rss_before_mb: before,
        rss_after_mb: after,
        rss_note: pid.is_none().then(|| {
            "the server was not started by the benchmark (--server): its RSS is not read".into()
        }),
        errors: errors.count(),
        error_reasons: errors.seen(),
        target: format!("{n} idle agents with the server < {IDLE_RSS_TARGET_MB} MB RSS"),
        met: after.map(|mb| mb < IDLE_RSS_TARGET_MB),
    })
}
