//! `cflow bench api`: drives a real cflow server over HTTP and reports measured latencies and
//! throughputs next to the SPEC's targets. Fixed-rate phases are open loop: requests are
//! scheduled on a clock and latency is measured from the *scheduled* time, so a stalled server
//! shows up as latency instead of silently lowering the offered load (coordinated omission).

use crate::cli::BenchArgs;
use crate::client::{ADMIN_TOKEN_FILE, Client, api_url, parse_server_url};
use crate::config::Loaded;
use crate::env;
use crate::output::{Printer, emit, note};
use anyhow::{Context, Result, anyhow, bail};
use futures_util::future::BoxFuture;
use hdrhistogram::Histogram;
use reqwest::{Method, Url};
use serde::Serialize;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs of `cflow memory store` timed as whole processes.
const CLI_RUNS: usize = 50;
/// Words in the search corpus's vocabulary, and words per entry.
const VOCABULARY: u64 = 1000;
const WORDS_PER_ENTRY: u64 = 8;
/// Targets from the SPEC's non-functional section.
const READ_P99_TARGET_MS: f64 = 5.0;
const WRITES_PER_SEC_TARGET: f64 = 5_000.0;
const CLI_TARGET_MS: f64 = 30.0;
/// Unrecorded lead-in of the fixed-rate phases (at most a fifth of the phase).
const WARMUP: Duration = Duration::from_secs(1);

pub fn run(
    loaded: &Loaded,
    args: BenchArgs,
    explicit_server: bool,
    out: Printer,
) -> Result<ExitCode> {
    if args.concurrency == 0 || args.read_rate == 0 || args.duration.is_zero() {
        bail!("--concurrency, --read-rate and --duration must be positive");
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
            Target::spawn().await?
        };
        let result = bench(&target, &args, json_out).await;
        let failed = result
            .as_ref()
            .map_or(true, |r| r.phases.iter().any(|p| p.errors > 0));
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

/// The server under test: one spawned for the run, or one given with `--server`.
pub(crate) struct Target {
    pub(crate) url: Url,
    /// A token for the benchmark's requests.
    pub(crate) token: String,
    pub(crate) description: String,
    pub(crate) child: Option<tokio::process::Child>,
    /// Holds the spawned server's data directory until the run ends.
    _dir: Option<tempfile::TempDir>,
    /// The spawned server's log, shown when requests failed.
    pub(crate) log: Option<PathBuf>,
    /// The spawned server's superadmin token and the benchmark's tenant, so that other keys
    /// (a worker's) can be made for it.
    pub(crate) admin_token: Option<String>,
    pub(crate) tenant: Option<String>,
}

/// How [`Target::spawn_with`] starts the server.
#[derive(Debug, Default)]
pub(crate) struct SpawnOptions {
    /// Extra environment variables for the server process.
    pub(crate) env: Vec<(String, String)>,
    /// `cflow server --database URL` instead of `cflow up` (SQLite).
    pub(crate) database: Option<String>,
    /// The role of the benchmark's key (default: developer).
    pub(crate) role: Option<&'static str>,
}

impl Target {
    pub(crate) fn external(loaded: &Loaded) -> Result<Self> {
        let client = Client::from_config(loaded)?;
        Ok(Self {
            url: client.base().clone(),
            token: client.token().to_string(),
            description: format!("external server at {}", client.base()),
            child: None,
            _dir: None,
            log: None,
            admin_token: None,
            tenant: None,
        })
    }

    /// Starts `cflow up` (this very binary) on a free port with a fresh data directory and rate
    /// limits off, waits for `/readyz`, and gives the benchmark a developer key of its own tenant.
    async fn spawn() -> Result<Self> {
        Self::spawn_with(&SpawnOptions::default()).await
    }

    /// [`Target::spawn`] with extra environment variables, or on PostgreSQL.
    pub(crate) async fn spawn_with(opts: &SpawnOptions) -> Result<Self> {
        let dir = tempfile::tempdir().context("creating a temporary data directory")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port")?
            .port();
        let listen = format!("127.0.0.1:{port}");
        let log_path = dir.path().join("server.log");
        let log = std::fs::File::create(&log_path).context("creating the server log")?;
        let exe = std::env::current_exe().context("locating the cflow binary")?;
        let mut cmd = tokio::process::Command::new(&exe);
        match &opts.database {
            Some(db) => cmd.args(["server", "--database", db]),
            None => cmd.arg("up"),
        };
        cmd.args(["--listen", &listen, "--data-dir"])
            .arg(dir.path())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        for var in env::VARS {
            cmd.env_remove(var.name);
        }
        for key in [
            "server.rate_limit.per_key_rps",
            "server.rate_limit.per_tenant_rps",
        ] {
            cmd.env(env_name(key)?, "0");
        }
        cmd.env(env_name("log")?, "warn");
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .context("starting 'cflow up' for the benchmark")?;
        let url = parse_server_url(&format!("http://{listen}"))?;
        let ready = api_url(&url, &[]).join("/readyz")?;
        let probe = reqwest::Client::builder()
            .tls_certs_only(Vec::new())
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the benchmark's server exited ({status}) before it was ready:\n{}",
                    tail_of(&log_path)
                );
            }
            if let Ok(r) = probe.get(ready.clone()).send().await
                && r.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the benchmark's server was not ready within 60 s:\n{}",
                    tail_of(&log_path)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let admin = std::fs::read_to_string(dir.path().join(ADMIN_TOKEN_FILE))
            .context("reading the spawned server's admin.token")?
            .trim()
            .to_string();
        let admin_client = client_for(&url, &admin)?;
        let tenant = format!("bench-{port}");
        let req = admin_client
            .request(Method::POST, admin_client.url(&["tenants"]))
            .json(&json!({ "name": tenant }));
        admin_client
            .json(req, cflow_core::Action::TenantCreate)
            .await?;
        let req = admin_client
            .request(
                Method::POST,
                admin_client.url(&["tenants", &tenant, "keys"]),
            )
            .json(&json!({ "name": "bench", "role": opts.role.unwrap_or("developer") }));
        let key = admin_client
            .json(req, cflow_core::Action::KeyCreate)
            .await?;
        let token = key
            .get("token")
            .and_then(|t| t.as_str())
            .ok_or_else(|| anyhow!("the server created a key without a token"))?
            .to_string();
        let description = match &opts.database {
            Some(_) => {
                format!("fresh 'cflow server' at http://{listen} (PostgreSQL, rate limits off)")
            }
            None => format!(
                "fresh 'cflow up' at http://{listen} (SQLite in a temporary directory, rate limits off)"
            ),
        };
        Ok(Self {
            url,
            token,
            description,
            child: Some(child),
            log: Some(dir.path().join("server.log")),
            _dir: Some(dir),
            admin_token: Some(admin),
            tenant: Some(tenant),
        })
    }

    pub(crate) async fn stop(mut self) {
        if let Some(child) = &mut self.child {
            // A graceful stop first (the server's own SIGTERM path), a kill if it hangs.
            if let Some(pid) = child.id() {
                let _ = tokio::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

pub(crate) fn env_name(key: &str) -> Result<&'static str> {
    env::by_key(key)
        .map(|v| v.name)
        .ok_or_else(|| anyhow!("no environment variable for {key}"))
}

pub(crate) fn tail_of(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

pub(crate) fn client_for(url: &Url, token: &str) -> Result<Client> {
    Client::new(
        url.clone(),
        token.to_string(),
        "the benchmark".into(),
        PathBuf::new(),
    )
}

/// One measured phase.
#[derive(Debug, Serialize)]
struct Phase {
    name: String,
    /// Requests that succeeded.
    ok: u64,
    errors: u64,
    /// Why the first failed request failed.
    first_error: Option<String>,
    seconds: f64,
    /// Succeeded requests per second.
    throughput: f64,
    /// The offered rate of an open-loop phase.
    offered_rate: Option<u32>,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    target: String,
    /// Whether the target was met (`None`: no target).
    met: Option<bool>,
}

#[derive(Debug, Serialize)]
struct Report {
    server: String,
    cores: usize,
    duration_secs: f64,
    concurrency: usize,
    phases: Vec<Phase>,
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

fn phase(
    name: String,
    h: &Histogram<u64>,
    errors: &Errors,
    elapsed: Duration,
    offered: Option<u32>,
) -> Phase {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let ok = h.len();
    Phase {
        name,
        ok,
        errors: errors.count(),
        first_error: errors.first(),
        seconds: elapsed.as_secs_f64(),
        throughput: ok as f64 / elapsed.as_secs_f64().max(1e-9),
        offered_rate: offered,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: h.max() as f64 / 1000.0,
        target: String::new(),
        met: None,
    }
}

/// One request of a phase: given the client number and the request number, sends it and says
/// whether it succeeded (and if not, why).
type Request = Arc<dyn Fn(usize, u64) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Failed requests of a phase: how many, and the first few distinct reasons (enough to see what
/// went wrong).
#[derive(Default)]
pub(crate) struct Errors {
    count: AtomicU64,
    seen: Mutex<Vec<String>>,
}

/// How many distinct reasons [`Errors`] keeps.
const KEPT_REASONS: usize = 5;

impl Errors {
    pub(crate) fn record(&self, why: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut seen) = self.seen.lock()
            && seen.len() < KEPT_REASONS
            && !seen.contains(&why)
        {
            seen.push(why);
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub(crate) fn first(&self) -> Option<String> {
        self.seen.lock().ok().and_then(|s| s.first().cloned())
    }

    /// The first few distinct reasons, in the order they were seen.
    pub(crate) fn seen(&self) -> Vec<String> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

async fn bench(target: &Target, args: &BenchArgs, quiet: bool) -> Result<Report> {
    let client = client_for(&target.url, &target.token)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if !quiet {
        note(&format!(
            "benchmarking {} — {cores} cores, {}s per phase",
            target.description,
            args.duration.as_secs_f64()
        ));
    }
    let mut phases = Vec::new();

    // 1. Durable writes, closed loop: every writer sends its next write as soon as the last one
    //    is acknowledged (acknowledged means committed).
    let c = client.clone();
    let write: Request = Arc::new(move |worker, i| {
        let c = c.clone();
        Box::pin(async move {
            let key = format!("w{worker}-{i}");
            let body =
                json!({ "value": { "worker": worker, "n": i, "text": "benchmark write payload" } });
            ok(
                c.request(Method::PUT, c.url(&["memory", "bench-writes", &key]))
                    .json(&body),
            )
            .await
        })
    });
    let (mut writes, per_worker) = closed_loop(
        format!(
            "memory write, durable ({} clients, closed loop)",
            args.concurrency
        ),
        args.concurrency,
        args.duration,
        write,
    )
    .await;
    writes.target = format!(">= {WRITES_PER_SEC_TARGET:.0} writes/s");
    writes.met = Some(writes.throughput >= WRITES_PER_SEC_TARGET);
    phases.push(writes);
    let written: Arc<Vec<u64>> = Arc::new(per_worker);
    if written.iter().all(|&n| n == 0) {
        bail!("no write succeeded; the server is not usable for the benchmark");
    }

    // 2. Reads of the written keys at a fixed offered rate.
    let c = client.clone();
    let keys = written.clone();
    let read: Request = Arc::new(move |_, i| {
        let c = c.clone();
        let keys = keys.clone();
        Box::pin(async move {
            let mut r = Rng(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let worker = loop {
                let w = (r.next() % keys.len() as u64) as usize;
                if keys[w] > 0 {
                    break w;
                }
            };
            let key = format!("w{worker}-{}", r.next() % keys[worker]);
            ok(c.request(Method::GET, c.url(&["memory", "bench-writes", &key]))).await
        })
    });
    let mut reads = fixed_rate(
        format!("memory read @ {} req/s (open loop)", args.read_rate),
        args.read_rate,
        args.duration,
        read,
    )
    .await;
    reads.target = format!("p99 < {READ_P99_TARGET_MS} ms at {} req/s", args.read_rate);
    reads.met = Some(reads.p99_ms < READ_P99_TARGET_MS && reads.errors == 0);
    phases.push(reads);

    // 3. Authenticated whoami at the same fixed rate: the cost of authentication alone.
    let c = client.clone();
    let whoami: Request = Arc::new(move |_, _| {
        let c = c.clone();
        Box::pin(async move { ok(c.request(Method::GET, c.url(&["whoami"]))).await })
    });
    let mut who = fixed_rate(
        format!("whoami @ {} req/s (open loop)", args.read_rate),
        args.read_rate,
        args.duration,
        whoami,
    )
    .await;
    who.target = format!("p99 < {READ_P99_TARGET_MS} ms at {} req/s", args.read_rate);
    who.met = Some(who.p99_ms < READ_P99_TARGET_MS && who.errors == 0);
    phases.push(who);

    // 4. The CLI as a user runs it: a whole `cflow memory store` process, start-up included.
    let mut cli = cli_round_trip(&target.url, &target.token).await?;
    cli.target = format!("< {CLI_TARGET_MS} ms per process (p99)");
    cli.met = Some(cli.p99_ms < CLI_TARGET_MS && cli.errors == 0);
    phases.push(cli);

    // 5. Full-text search over a corpus loaded first (last: loading it is the heaviest work).
    load_corpus(&client, args.search_entries, args.concurrency, quiet).await?;
    let c = client.clone();
    let search: Request = Arc::new(move |worker, i| {
        let c = c.clone();
        Box::pin(async move {
            let mut r = Rng((worker as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D) ^ i | 1);
            // One word or two: a broad query and a narrow one.
            let mut q = word(r.next() % VOCABULARY);
            if i % 2 == 1 {
                q = format!("{q} {}", word(r.next() % VOCABULARY));
            }
            let mut url = c.url(&["memory", "search"]);
            url.query_pairs_mut()
                .append_pair("q", &q)
                .append_pair("namespace", "bench-search")
                .append_pair("limit", "20");
            ok(c.request(Method::GET, url)).await
        })
    });
    let (mut s, _) = closed_loop(
        format!(
            "memory search over {} entries ({} clients)",
            args.search_entries, args.concurrency
        ),
        args.concurrency,
        args.duration,
        search,
    )
    .await;
    s.target = "(no target; measured)".into();
    phases.push(s);

    Ok(Report {
        server: target.description.clone(),
        cores,
        duration_secs: args.duration.as_secs_f64(),
        concurrency: args.concurrency,
        phases,
    })
}

/// Sends a request and reports whether it succeeded (2xx), reading the whole body so that the
/// connection is reused and the measured time includes the answer.
async fn ok(req: reqwest::RequestBuilder) -> Result<(), String> {
    let r = req.send().await.map_err(|e| {
        let kind = if e.is_timeout() {
            "timed out"
        } else {
            "failed"
        };
        format!("request {kind}: {e}")
    })?;
    let status = r.status();
    let body = r
        .bytes()
        .await
        .map_err(|e| format!("reading the answer failed: {e}"))?;
    if status.is_success() {
        return Ok(());
    }
    let detail = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_string))
        .unwrap_or_default();
    Err(format!("HTTP {status} {detail}").trim_end().to_string())
}

/// `concurrency` clients, each sending its next request when the previous one is answered.
/// Returns the phase and how many requests each client completed successfully.
async fn closed_loop(
    name: String,
    concurrency: usize,
    duration: Duration,
    req: Request,
) -> (Phase, Vec<u64>) {
    let start = Instant::now();
    let deadline = start + duration;
    let errors = Arc::new(Errors::default());
    let mut handles = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let (req, errors) = (req.clone(), errors.clone());
        handles.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match req(worker, i).await {
                    Ok(()) => {
                        let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
                        i += 1;
                    }
                    Err(why) => errors.record(why),
                }
            }
            (h, i)
        }));
    }
    let mut total = histogram();
    let mut per_worker = Vec::with_capacity(concurrency);
    for h in handles {
        match h.await {
            Ok((hist, n)) => {
                let _ = total.add(&hist);
                per_worker.push(n);
            }
            Err(e) => {
                errors.record(format!("a client task failed: {e}"));
                per_worker.push(0);
            }
        }
    }
    (
        phase(name, &total, &errors, start.elapsed(), None),
        per_worker,
    )
}

/// Requests offered at `rate` per second for `duration`, whatever the answers' latency. A plain
/// thread keeps the schedule, since its sleep is finer than the async runtime's 1 ms timer. The
/// first [`WARMUP`] at the same rate is not recorded, so that the phase measures the steady state
/// rather than the tail of the previous phase's work.
async fn fixed_rate(name: String, rate: u32, duration: Duration, req: Request) -> Phase {
    let warmup = WARMUP.min(duration / 5);
    let total = (f64::from(rate) * (warmup + duration).as_secs_f64()).round() as u64;
    let interval = 1.0 / f64::from(rate);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let begin = Instant::now() + Duration::from_millis(5);
    let start = begin + warmup;
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
    let hist = Arc::new(Mutex::new(histogram()));
    let errors = Arc::new(Errors::default());
    let mut tasks = tokio::task::JoinSet::new();
    while let Some((i, at)) = rx.recv().await {
        let fut = req(0, i);
        let hist = hist.clone();
        let errors = errors.clone();
        let measured = at >= start;
        tasks.spawn(async move {
            let result = fut.await;
            if !measured {
                return;
            }
            match result {
                Ok(()) => {
                    let us = at.elapsed().as_micros().max(1) as u64;
                    if let Ok(mut h) = hist.lock() {
                        let _ = h.record(us);
                    }
                }
                Err(why) => errors.record(why),
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let _ = scheduler.join();
    let elapsed = start.elapsed();
    let h = hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| histogram());
    phase(name, &h, &errors, elapsed, Some(rate))
}

/// Loads the search corpus with concurrent writes, showing progress on a terminal.
async fn load_corpus(client: &Client, n: usize, concurrency: usize, quiet: bool) -> Result<()> {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(n as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "loading search corpus {bar:40} {pos}/{len} ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    };
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Errors::default());
    let mut handles = Vec::new();
    for _ in 0..concurrency {
        let (c, next, failed, bar) = (client.clone(), next.clone(), failed.clone(), bar.clone());
        handles.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let mut r = Rng((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let text: Vec<String> = (0..WORDS_PER_ENTRY)
                    .map(|_| word(r.next() % VOCABULARY))
                    .collect();
                let body = json!({ "value": { "text": text.join(" "), "n": i } });
                let key = format!("doc-{i}");
                let req = c
                    .request(Method::PUT, c.url(&["memory", "bench-search", &key]))
                    .json(&body);
                if let Err(why) = ok(req).await {
                    failed.record(why);
                }
                bar.inc(1);
            }
        }));
    }
    for h in handles {
        h.await.context("a corpus loader failed")?;
    }
    bar.finish_and_clear();
    if failed.count() > 0 {
        bail!(
            "{} of {n} corpus writes failed; the first: {}",
            failed.count(),
            failed.first().unwrap_or_default()
        );
    }
    Ok(())
}

/// Times `cflow memory store` as whole processes, one after another.
async fn cli_round_trip(url: &Url, token: &str) -> Result<Phase> {
    let exe = std::env::current_exe().context("locating the cflow binary")?;
    let (url, token) = (url.to_string(), token.to_string());
    let started = Instant::now();
    let (h, errors) = tokio::task::spawn_blocking(move || -> Result<(Histogram<u64>, Errors)> {
        let mut h = histogram();
        let errors = Errors::default();
        for i in 0..CLI_RUNS {
            let mut cmd = std::process::Command::new(&exe);
            for var in env::VARS {
                cmd.env_remove(var.name);
            }
            cmd.env(env_name("client.server")?, &url)
                .env(env_name("client.token")?, &token)
                .args(["memory", "store", "bench-cli", &format!("k{i}"), "a value"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let t0 = Instant::now();
            let out = cmd.output().context("running cflow memory store")?;
            if out.status.success() {
                let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
            } else {
                errors.record(String::from_utf8_lossy(&out.stderr).trim().to_string());
            }
        }
        Ok((h, errors))
    })
    .await
    .context("the CLI benchmark thread failed")??;
    Ok(phase(
        format!("'cflow memory store' process round trip ({CLI_RUNS} runs, sequential)"),
        &h,
        &errors,
        started.elapsed(),
        None,
    ))
}

/// A pseudo-word of the search vocabulary: pronounceable, so that it is one token to every
/// full-text tokenizer.
fn word(n: u64) -> String {
    const SYLLABLES: [&str; 32] = [
        "ka", "lo", "mi", "ra", "te", "vu", "zo", "ne", "pa", "si", "do", "ge", "hu", "ji", "be",
        "fo", "ta", "ri", "mo", "le", "nu", "sa", "ko", "pe", "di", "va", "zu", "go", "he", "ju",
        "bo", "fa",
    ];
    let a = SYLLABLES[(n % 32) as usize];
    let b = SYLLABLES[((n / 32) % 32) as usize];
    let c = SYLLABLES[((n / 1024) % 32) as usize];
    format!("{a}{b}{c}")
}

/// xorshift64: enough randomness to spread keys and queries, without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

fn print_report(r: &Report) {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header([
        "benchmark",
        "ok",
        "errors",
        "throughput",
        "p50",
        "p99",
        "p99.9",
        "target",
        "met",
    ]);
    for p in &r.phases {
        let rate = match p.offered_rate {
            Some(o) => format!("{:.0}/s (offered {o}/s)", p.throughput),
            None => format!("{:.0}/s", p.throughput),
        };
        t.add_row([
            p.name.clone(),
            p.ok.to_string(),
            p.errors.to_string(),
            rate,
            format!("{:.2} ms", p.p50_ms),
            format!("{:.2} ms", p.p99_ms),
            format!("{:.2} ms", p.p999_ms),
            p.target.clone(),
            match p.met {
                Some(true) => "yes".into(),
                Some(false) => "NO".into(),
                None => "-".into(),
            },
        ]);
    }
    emit(&format!("cflow bench api — server: {}", r.server));
    emit(&format!(
        "machine: {} cores (the benchmark client and the server share them); {}s per phase; {} concurrent clients in closed-loop phases",
        r.cores, r.duration_secs, r.concurrency
    ));
    emit(&t.to_string());
    emit(
        "fixed-rate phases: latency measured from each request's scheduled start (no coordinated omission), after an unrecorded 1 s warm-up at the same rate",
    );
    for p in r.phases.iter().filter(|p| p.errors > 0) {
        emit(&format!(
            "errors in '{}': {} failed; the first: {}",
            p.name,
            p.errors,
            p.first_error.as_deref().unwrap_or("?")
        ));
    }
}
