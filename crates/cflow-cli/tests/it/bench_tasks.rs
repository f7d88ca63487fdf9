//! `cflow bench tasks` as a smoke test: a small run of every phase against the server the
//! benchmark spawns itself, checking that each phase measured something and saw no error. No
//! timing is asserted (timings are benchmarks, not tests).

use crate::harness::{cflow_in, run};
use serde_json::Value;

#[track_caller]
fn positive(v: &Value, path: &str) {
    let n = path
        .split('.')
        .fold(v, |v, k| &v[k])
        .as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"));
    assert!(n > 0.0, "{path} = {n} is not positive in {v:#}");
}

#[test]
fn bench_tasks_runs_every_phase_without_errors() {
    let work = tempfile::tempdir().expect("a temporary directory");
    let report = run(cflow_in(work.path()).args([
        "bench",
        "tasks",
        "--tasks",
        "200",
        "--agents",
        "16",
        "--slots",
        "16",
        "--rate",
        "50",
        "--duration",
        "2s",
        "--idle-agents",
        "100",
        "--json",
    ]))
    .json();
    assert_eq!(report["errors"], 0, "errors in {report:#}");
    assert_eq!(report["setup"]["backend"], "sqlite");
    for path in [
        "throughput.tasks_per_sec",
        "throughput.submit_per_sec",
        "throughput.succeeded",
        "latency.submit_to_start.count",
        "latency.submit_to_start.p99_ms",
        "latency.http_202.p99_ms",
        "latency.succeeded",
        "idle.register_secs",
        "idle.rss_before_mb",
        "idle.rss_after_mb",
    ] {
        positive(&report, path);
    }
    assert_eq!(report["throughput"]["succeeded"], 200);
    for phase in ["throughput", "latency", "idle"] {
        assert_eq!(report[phase]["errors"], 0, "errors in {phase}: {report:#}");
    }
    // Where the CPU went in each timed phase: the spawned server is measured, there are no
    // workers, and the machine's share is a percentage. The latency phase (two seconds of
    // requests) certainly used more than the counters' resolution of 10 ms on the server; the
    // 200 tasks in bulk may not have.
    positive(&report, "latency.cpu.server_secs");
    for phase in ["throughput", "latency"] {
        let cpu = &report[phase]["cpu"];
        positive(cpu, "wall_secs");
        assert!(cpu["workers_secs"].is_null(), "{phase}: {cpu:#}");
        for key in ["server_secs", "client_secs", "rest_secs"] {
            assert!(
                cpu[key].as_f64().is_some_and(|v| v >= 0.0),
                "{phase}.{key}: {cpu:#}"
            );
        }
        let busy = cpu["machine_busy_pct"].as_f64().unwrap_or(-1.0);
        assert!((0.0..=100.0).contains(&busy), "{phase}: {cpu:#}");
    }
}

/// Against a running server (`--server`), the benchmark can run again: each run's phases create
/// swarms of their own instead of finding the ones the previous run stopped (which have no
/// agents left to run the tasks).
#[test]
fn bench_tasks_runs_twice_against_the_same_server() {
    let server = crate::harness::Server::start();
    for round in 1..=2 {
        let report = run(server.cflow().args([
            "bench",
            "tasks",
            "--server",
            &server.url,
            "--tasks",
            "100",
            "--agents",
            "4",
            "--rate",
            "20",
            "--duration",
            "1s",
            "--idle-agents",
            "0",
            "--json",
        ]))
        .json();
        assert_eq!(report["errors"], 0, "errors in round {round}: {report:#}");
        assert_eq!(report["throughput"]["succeeded"], 100, "round {round}");
        assert_eq!(report["latency"]["errors"], 0, "round {round}: {report:#}");
        positive(&report, "latency.succeeded");
        // A server the benchmark did not start is not measured: its CPU is in the rest.
        let cpu = &report["throughput"]["cpu"];
        assert!(cpu["server_secs"].is_null(), "round {round}: {cpu:#}");
        positive(cpu, "wall_secs");
    }
    server.stop();
}

/// With `--database`, the benchmark spawns a server on that (fresh) PostgreSQL database, runs
/// the tasks there, and reports the PostgreSQL server's settings next to its numbers: the
/// values it prints are the server's own (`SHOW`), read from the same server.
#[test]
fn bench_tasks_on_postgres_reports_the_servers_settings() {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let Some(url) = rt.block_on(cflow_test_support::pg::fresh_postgres_url()) else {
        return;
    };
    let work = tempfile::tempdir().expect("a temporary directory");
    let report = run(cflow_in(work.path()).args([
        "bench",
        "tasks",
        "--database",
        &url,
        "--tasks",
        "100",
        "--agents",
        "8",
        "--slots",
        "8",
        "--rate",
        "0",
        "--idle-agents",
        "0",
        "--json",
    ]))
    .json();
    assert_eq!(report["errors"], 0, "errors in {report:#}");
    assert_eq!(report["setup"]["backend"], "postgresql");
    assert_eq!(report["throughput"]["succeeded"], 100);
    let pg = &report["setup"]["postgres"];
    let settings = pg["settings"].as_array().expect("settings");
    let value = |name: &str| {
        settings
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["value"].as_str())
            .unwrap_or_else(|| panic!("{name} missing in {pg:#}"))
            .to_string()
    };
    let (shown, fsync): (String, String) = rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        sqlx::query_as("SELECT current_setting('shared_buffers'), current_setting('fsync')")
            .fetch_one(&mut conn)
            .await
            .expect("SHOW shared_buffers, fsync")
    });
    assert_eq!(value("shared_buffers"), shown);
    assert_eq!(value("fsync"), fsync);
    for name in ["wal_buffers", "max_wal_size", "synchronous_commit"] {
        assert!(!value(name).is_empty(), "{name} in {pg:#}");
    }
    let summary = pg["summary"].as_str().expect("summary");
    assert!(
        summary.starts_with(&format!("PostgreSQL {}: ", value("server_version")))
            && summary.contains(&format!("shared_buffers {shown}")),
        "{summary}"
    );
}
