//! Crash durability: `cflow up` (SQLite) is killed with SIGKILL while many clients write, then
//! restarted on the same data directory. Every write that was answered with a 2xx must still be
//! there (at its acknowledged version or, for the one write each client had in flight, one
//! later), every write that exists must have its `memory.write` entry in the audit ledger, and the
//! ledger must verify intact — straight after the crash, with the restarted server running, and
//! after it stopped. A server that answered before its commit was durable fails these tests.

use crate::harness::{Server, cflow_in, run};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const NS: &str = "crash";
/// How long the writers may take to get enough writes acknowledged, and to notice the crash.
const DEADLINE: Duration = Duration::from_secs(60);

/// Starts `cflow up` with rate limits off, so that the clients only meet the database.
fn start(work: tempfile::TempDir) -> Server {
    Server::launch(
        work,
        "up",
        &[
            ("CFLOW_RATE_LIMIT_PER_KEY_RPS", "0"),
            ("CFLOW_RATE_LIMIT_PER_TENANT_RPS", "0"),
        ],
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

fn entry_url(base: &str, key: &str) -> String {
    format!("{base}/api/v1/memory/{NS}/{key}")
}

/// The version in an `ETag: "<version>"` header.
fn etag_version(resp: &reqwest::Response) -> Option<i64> {
    resp.headers()
        .get(reqwest::header::ETAG)?
        .to_str()
        .ok()?
        .trim_matches('"')
        .parse()
        .ok()
}

/// Polls (no fixed sleep for the condition itself) until `n` writes are acknowledged, failing
/// early if a client stopped before the crash.
fn wait_for_acks(acked: &AtomicUsize, n: usize, stopped: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while acked.load(Ordering::SeqCst) < n {
        assert!(
            !stopped(),
            "a client stopped before the crash (after {} acknowledged writes)",
            acked.load(Ordering::SeqCst)
        );
        assert!(
            Instant::now() < deadline,
            "only {} of {n} writes acknowledged within {DEADLINE:?}",
            acked.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `cflow audit verify --data-dir DIR` exits 0 and says the ledger is intact.
#[track_caller]
fn assert_ledger_intact(work: &Path, when: &str) {
    let r = run(cflow_in(work)
        .args(["audit", "verify", "--data-dir"])
        .arg(work.join(".cflow")));
    assert_eq!(r.code(), Some(0), "audit verify {when}: {r:?}");
    assert!(
        r.stdout.contains("audit ledger intact"),
        "audit verify {when}: {}",
        r.stdout
    );
}

/// Every successful `memory.write` in the ledger, as (resource, version).
fn audited_writes(server: &Server) -> BTreeSet<(String, i64)> {
    let export = run(server.cflow().args(["audit", "export"]));
    export
        .ok()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|e| e["action"] == "memory.write" && e["outcome"] == "success")
        .map(|e| {
            let version = e["detail"]["version"]
                .as_i64()
                .unwrap_or_else(|| panic!("a successful write names its version: {e}"));
            (
                e["resource"].as_str().expect("resource").to_string(),
                version,
            )
        })
        .collect()
}

fn resource(key: &str) -> String {
    format!("memory/{NS}/{key}")
}

/// Everything one plain writer did: acknowledged writes in order, the write it had in flight
/// when the server went away, and whether it failed before the crash.
#[derive(Debug, Default)]
struct WriterLog {
    /// (key, version, i): write number `i` of this writer was acknowledged at `version`.
    acked: Vec<(String, i64, u64)>,
    in_flight: Option<(String, u64)>,
    error: String,
    failed_before_kill: bool,
}

const WRITERS: u64 = 16;
const KEYS_PER_WRITER: u64 = 8;

fn writer_key(w: u64, i: u64) -> String {
    format!("w{w:02}-k{}", i % KEYS_PER_WRITER)
}

async fn plain_writer(
    http: reqwest::Client,
    base: String,
    token: String,
    w: u64,
    killed: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> WriterLog {
    let mut log = WriterLog::default();
    for i in 0.. {
        let key = writer_key(w, i);
        let sent = http
            .put(entry_url(&base, &key))
            .bearer_auth(&token)
            .json(&json!({ "value": { "w": w, "i": i } }))
            .send()
            .await;
        // The status line and headers are the acknowledgement; the body may be cut off.
        let version = match &sent {
            Ok(resp) if resp.status().is_success() => etag_version(resp),
            _ => None,
        };
        let Some(version) = version else {
            log.in_flight = Some((key, i));
            log.error = match sent {
                Ok(resp) => format!(
                    "{}: {}",
                    resp.status(),
                    resp.text().await.unwrap_or_default()
                ),
                Err(e) => e.to_string(),
            };
            log.failed_before_kill = !killed.load(Ordering::SeqCst);
            return log;
        };
        log.acked.push((key, version, i));
        acked.fetch_add(1, Ordering::SeqCst);
    }
    unreachable!()
}

/// All entries of the namespace, by key: (version, value).
async fn list_all(
    http: &reqwest::Client,
    base: &str,
    token: &str,
) -> BTreeMap<String, (i64, Value)> {
    let mut all = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = reqwest::Url::parse(&format!("{base}/api/v1/memory/{NS}")).expect("URL");
        url.query_pairs_mut().append_pair("limit", "1000");
        if let Some(c) = &cursor {
            url.query_pairs_mut().append_pair("cursor", c);
        }
        let req = http.get(url).bearer_auth(token);
        let resp = req.send().await.expect("listing memory");
        assert!(
            resp.status().is_success(),
            "listing memory: {}",
            resp.status()
        );
        let page: Value = resp.json().await.expect("a page of entries");
        for e in page["items"].as_array().expect("items") {
            let key = e["key"].as_str().expect("key").to_string();
            let version = e["version"].as_i64().expect("version");
            assert!(
                all.insert(key.clone(), (version, e["value"].clone()))
                    .is_none(),
                "{key} listed twice"
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return all,
        }
    }
}

#[test]
fn acknowledged_memory_writes_survive_kill_9() {
    let server = start(tempfile::tempdir().expect("temporary directory"));
    let (base, token) = (server.url.clone(), server.admin_token());
    let rt = runtime();
    let http = client();
    let killed = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            rt.spawn(plain_writer(
                http.clone(),
                base.clone(),
                token.clone(),
                w,
                killed.clone(),
                acked.clone(),
            ))
        })
        .collect();

    wait_for_acks(&acked, 500, || handles.iter().any(|h| h.is_finished()));
    // Crash while every writer still has a request going.
    killed.store(true, Ordering::SeqCst);
    let (status, work, _) = server.kill9();
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}");
    let logs: Vec<WriterLog> = rt.block_on(async {
        let mut logs = Vec::new();
        for h in handles {
            let log = tokio::time::timeout(DEADLINE, h)
                .await
                .expect("a writer noticed the crash")
                .expect("writer task");
            logs.push(log);
        }
        logs
    });
    for (w, log) in logs.iter().enumerate() {
        assert!(
            !log.failed_before_kill,
            "writer {w} failed before the crash: {}",
            log.error
        );
    }
    let total_acked: usize = logs.iter().map(|l| l.acked.len()).sum();
    assert!(total_acked >= 500, "{total_acked} acknowledged");

    // The ledger as the crash left it (SQLite recovers its WAL on open).
    assert_ledger_intact(work.path(), "right after the crash");

    let server = start(work);
    let stored = rt.block_on(list_all(&http, &server.url, &server.admin_token()));

    // Per key: the acknowledged versions are exactly 1, 2, …, n (one writer per key, each write
    // acknowledged before the next), and the entry is the last acknowledged write or, if it was
    // that writer's write in flight, the one after.
    let mut survivors_in_flight = 0;
    for (w, log) in logs.iter().enumerate() {
        let w = w as u64;
        for k in 0..KEYS_PER_WRITER {
            let key = writer_key(w, k);
            let acks: Vec<&(String, i64, u64)> = log.acked.iter().filter(|a| a.0 == key).collect();
            let versions: Vec<i64> = acks.iter().map(|a| a.1).collect();
            assert_eq!(
                versions,
                (1..=acks.len() as i64).collect::<Vec<_>>(),
                "{key}: acknowledged versions"
            );
            let last = acks.last().map(|a| (a.1, json!({ "w": w, "i": a.2 })));
            let in_flight = log
                .in_flight
                .as_ref()
                .filter(|f| f.0 == key)
                .map(|f| (acks.len() as i64 + 1, json!({ "w": w, "i": f.1 })));
            let now = stored.get(&key).cloned();
            if now.is_some() && now == in_flight {
                survivors_in_flight += 1;
            } else {
                assert_eq!(
                    now, last,
                    "{key}: the last acknowledged write (in flight: {in_flight:?})"
                );
            }
        }
    }
    assert!(
        stored
            .keys()
            .all(|k| (0..WRITERS).any(|w| k.starts_with(&format!("w{w:02}-")))),
        "only the writers' keys: {:?}",
        stored.keys().collect::<Vec<_>>()
    );

    // Every write that exists, and so every acknowledged one, is in the ledger, and nothing
    // else is.
    let audited = audited_writes(&server);
    let expected: BTreeSet<(String, i64)> = stored
        .iter()
        .flat_map(|(k, (v, _))| (1..=*v).map(move |v| (resource(k), v)))
        .collect();
    for (w, log) in logs.iter().enumerate() {
        for (key, version, _) in &log.acked {
            assert!(
                audited.contains(&(resource(key), *version)),
                "writer {w}: no audit entry for acknowledged {key} v{version}"
            );
        }
    }
    assert!(audited.len() >= total_acked);
    assert_eq!(
        audited, expected,
        "the ledger has exactly the writes that exist"
    );
    eprintln!(
        "{total_acked} writes acknowledged, {} in flight at the crash, {survivors_in_flight} of them stored",
        logs.iter().filter(|l| l.in_flight.is_some()).count()
    );

    assert_ledger_intact(server.work(), "with the restarted server running");
    let (status, work, output) = server.stop();
    assert!(status.success(), "{status}: {output}");
    assert_ledger_intact(work.path(), "after the restarted server stopped");
}

/// Everything one compare-and-set client did.
#[derive(Debug, Default)]
struct CasLog {
    /// Versions this client's increments were acknowledged at.
    acked: Vec<i64>,
    /// The version the client's in-flight `PUT` would have created.
    in_flight: Option<i64>,
    conflicts: u64,
    /// What went wrong before the crash, if anything.
    violations: Vec<String>,
    error: String,
    failed_before_kill: bool,
}

const COUNTER: &str = "counter";
const CAS_CLIENTS: usize = 6;

async fn cas_client(
    http: reqwest::Client,
    base: String,
    token: String,
    killed: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> CasLog {
    let mut log = CasLog::default();
    let url = entry_url(&base, COUNTER);
    loop {
        let read = match http.get(&url).bearer_auth(&token).send().await {
            Ok(r) if r.status().is_success() => r.json::<Value>().await.map_err(|e| e.to_string()),
            Ok(r) => Err(r.status().to_string()),
            Err(e) => Err(e.to_string()),
        };
        let entry = match read {
            Ok(entry) => entry,
            Err(e) => {
                log.error = format!("GET: {e}");
                log.failed_before_kill = !killed.load(Ordering::SeqCst);
                return log;
            }
        };
        let (Some(version), Some(n)) = (entry["version"].as_i64(), entry["value"]["n"].as_i64())
        else {
            log.violations.push(format!("unexpected entry {entry}"));
            return log;
        };
        if n != version - 1 {
            log.violations
                .push(format!("read n={n} at version {version}"));
        }
        let sent = http
            .put(&url)
            .bearer_auth(&token)
            .header(reqwest::header::IF_MATCH, version.to_string())
            .json(&json!({ "value": { "n": n + 1 } }))
            .send()
            .await;
        match &sent {
            Ok(r) if r.status() == reqwest::StatusCode::PRECONDITION_FAILED => {
                log.conflicts += 1;
                continue;
            }
            Ok(r) if r.status().is_success() => {
                let got = etag_version(r);
                if got != Some(version + 1) {
                    log.violations
                        .push(format!("PUT If-Match {version} answered version {got:?}"));
                }
                log.acked.push(version + 1);
                acked.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            _ => {}
        }
        log.in_flight = Some(version + 1);
        log.error = match sent {
            Ok(r) => format!("PUT: {}", r.status()),
            Err(e) => format!("PUT: {e}"),
        };
        log.failed_before_kill = !killed.load(Ordering::SeqCst);
        return log;
    }
}

#[test]
fn acknowledged_compare_and_set_increments_survive_kill_9() {
    let server = start(tempfile::tempdir().expect("temporary directory"));
    let (base, token) = (server.url.clone(), server.admin_token());
    let rt = runtime();
    let http = client();
    rt.block_on(async {
        let r = http
            .put(entry_url(&base, COUNTER))
            .bearer_auth(&token)
            .header(reqwest::header::IF_NONE_MATCH, "*")
            .json(&json!({ "value": { "n": 0 } }))
            .send()
            .await
            .expect("creating the counter");
        assert!(r.status().is_success(), "{}", r.status());
        assert_eq!(etag_version(&r), Some(1));
    });
    let killed = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..CAS_CLIENTS)
        .map(|_| {
            rt.spawn(cas_client(
                http.clone(),
                base.clone(),
                token.clone(),
                killed.clone(),
                acked.clone(),
            ))
        })
        .collect();

    wait_for_acks(&acked, 200, || handles.iter().any(|h| h.is_finished()));
    killed.store(true, Ordering::SeqCst);
    let (status, work, _) = server.kill9();
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}");
    let logs: Vec<CasLog> = rt.block_on(async {
        let mut logs = Vec::new();
        for h in handles {
            let log = tokio::time::timeout(DEADLINE, h)
                .await
                .expect("a client noticed the crash")
                .expect("client task");
            logs.push(log);
        }
        logs
    });
    for (c, log) in logs.iter().enumerate() {
        assert!(
            log.violations.is_empty(),
            "client {c}: {:?}",
            log.violations
        );
        assert!(
            !log.failed_before_kill,
            "client {c} failed before the crash: {}",
            log.error
        );
    }
    let mut acked_versions: Vec<i64> = logs.iter().flat_map(|l| l.acked.clone()).collect();
    acked_versions.sort_unstable();
    let total_acked = acked_versions.len();
    acked_versions.dedup();
    assert_eq!(
        acked_versions.len(),
        total_acked,
        "two increments acknowledged at the same version: a lost update"
    );
    let max_acked = *acked_versions.last().expect("acknowledged increments");
    let in_flight: BTreeSet<i64> = logs.iter().filter_map(|l| l.in_flight).collect();

    assert_ledger_intact(work.path(), "right after the crash");

    let server = start(work);
    let entry: Value = rt.block_on(async {
        let r = http
            .get(entry_url(&server.url, COUNTER))
            .bearer_auth(server.admin_token())
            .send()
            .await
            .expect("reading the counter");
        assert!(r.status().is_success(), "{}", r.status());
        r.json().await.expect("a memory entry")
    });
    let version = entry["version"].as_i64().expect("version");
    let n = entry["value"]["n"].as_i64().expect("value.n");
    assert_eq!(n, version - 1, "one increment per version: {entry}");
    assert!(
        version >= max_acked,
        "acknowledged increments lost: at version {version}, acknowledged up to {max_acked}"
    );
    // Every version there is came from an acknowledged increment or from one still in flight
    // at the crash; nothing beyond.
    for v in 2..=version {
        assert!(
            acked_versions.binary_search(&v).is_ok() || in_flight.contains(&v),
            "version {v} of {version} was neither acknowledged nor in flight \
             (acknowledged up to {max_acked}, in flight {in_flight:?})"
        );
    }
    assert!(version <= max_acked + in_flight.len() as i64);

    let audited: BTreeSet<i64> = audited_writes(&server)
        .into_iter()
        .filter(|(r, _)| *r == resource(COUNTER))
        .map(|(_, v)| v)
        .collect();
    for v in &acked_versions {
        assert!(audited.contains(v), "no audit entry for acknowledged v{v}");
    }
    assert_eq!(
        audited,
        (1..=version).collect::<BTreeSet<_>>(),
        "the ledger has exactly the increments that exist"
    );
    eprintln!(
        "{total_acked} increments acknowledged (up to v{max_acked}), {} conflicts, in flight \
         {in_flight:?}, final v{version}",
        logs.iter().map(|l| l.conflicts).sum::<u64>()
    );

    assert_ledger_intact(server.work(), "with the restarted server running");
    let (status, work, output) = server.stop();
    assert!(status.success(), "{status}: {output}");
    assert_ledger_intact(work.path(), "after the restarted server stopped");
}
