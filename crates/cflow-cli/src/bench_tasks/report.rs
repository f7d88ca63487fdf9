//! The report of `cflow bench tasks`: what each phase measured next to its target, as a table
//! or as JSON.

use super::BenchDriver;
use super::cpu::{CpuUse, describe};
use crate::output::emit;
use hdrhistogram::Histogram;
use serde::Serialize;

/// The PostgreSQL server a `--database` run measured against.
#[derive(Debug, Serialize)]
pub(super) struct PgSetup {
    /// The line printed above the numbers (or why the settings could not be read).
    pub(super) summary: String,
    pub(super) settings: Vec<crate::pgsettings::Setting>,
}

/// The run's setup, printed above the numbers.
#[derive(Debug, Serialize)]
pub(super) struct Setup {
    pub(super) server: String,
    pub(super) backend: &'static str,
    /// With `--database`: the PostgreSQL server's settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) postgres: Option<PgSetup>,
    pub(super) cores: usize,
    pub(super) driver: BenchDriver,
    /// `cflow worker` processes (0: the server's local pool).
    pub(super) workers: usize,
    /// Slots per worker, or of the local pool.
    pub(super) slots: u32,
    pub(super) agents: u32,
}

#[derive(Debug, Serialize)]
pub(super) struct Throughput {
    pub(super) tasks: usize,
    pub(super) batch: usize,
    pub(super) in_flight: usize,
    /// From the first request to the last 202.
    pub(super) submit_secs: f64,
    pub(super) submit_per_sec: f64,
    /// From the first request to all tasks complete (and committed).
    pub(super) complete_secs: f64,
    pub(super) tasks_per_sec: f64,
    /// Counted at the end through the task list.
    pub(super) succeeded: u64,
    pub(super) errors: u64,
    /// The first few distinct reasons of the errors.
    pub(super) error_reasons: Vec<String>,
    pub(super) target: String,
    pub(super) met: bool,
    /// Where the CPU went from the first request until all tasks were complete (`None` where
    /// `/proc` cannot be read).
    pub(super) cpu: Option<CpuUse>,
}

/// Percentiles in milliseconds.
#[derive(Debug, Serialize)]
pub(super) struct Percentiles {
    pub(super) count: u64,
    pub(super) p50_ms: f64,
    pub(super) p90_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) max_ms: f64,
}

impl Percentiles {
    pub(super) fn of(h: &Histogram<u64>) -> Self {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            max_ms: h.max() as f64 / 1000.0,
        }
    }
}

#[derive(Debug, Serialize)]
pub(super) struct Latency {
    pub(super) offered_rate: u32,
    pub(super) duration_secs: f64,
    /// Tasks sent, warm-up included.
    pub(super) submitted: u64,
    /// From the scheduled send time to the attempt's `started_at` (the server's clock, in ms).
    pub(super) submit_to_start: Percentiles,
    /// From the scheduled send time to the 202.
    pub(super) http_202: Percentiles,
    /// Starts stamped before their scheduled send (the server's clock has ms resolution),
    /// recorded as 0.
    pub(super) clamped: u64,
    pub(super) succeeded: u64,
    pub(super) errors: u64,
    /// The first few distinct reasons of the errors.
    pub(super) error_reasons: Vec<String>,
    pub(super) target: String,
    pub(super) met: bool,
    /// Where the CPU went over the phase, warm-up included, until all its tasks were complete.
    pub(super) cpu: Option<CpuUse>,
}

#[derive(Debug, Serialize)]
pub(super) struct Idle {
    pub(super) agents: u32,
    /// From the swarm's creation request until all its agents are idle.
    pub(super) register_secs: f64,
    pub(super) rss_before_mb: Option<f64>,
    pub(super) rss_after_mb: Option<f64>,
    /// Why there is no RSS (the server was not spawned by the benchmark).
    pub(super) rss_note: Option<String>,
    pub(super) errors: u64,
    /// The first few distinct reasons of the errors.
    pub(super) error_reasons: Vec<String>,
    pub(super) target: String,
    pub(super) met: Option<bool>,
}

#[derive(Debug, Serialize)]
pub(super) struct Report {
    pub(super) setup: Setup,
    pub(super) throughput: Option<Throughput>,
    pub(super) latency: Option<Latency>,
    pub(super) idle: Option<Idle>,
    /// Errors over all phases.
    pub(super) errors: u64,
}

pub(super) fn executors(s: &Setup) -> String {
    // A server the benchmark did not start keeps its own local pool, whatever its size.
    let external = s.backend.starts_with("external");
    match (s.workers, external) {
        (0, false) => format!("the server's local pool ({} slots)", s.slots),
        (0, true) => "the server's own local pool".into(),
        (k, false) => format!("{k} 'cflow worker' x {} slots (local pool off)", s.slots),
        (k, true) => format!(
            "{k} 'cflow worker' x {} slots, plus the server's own local pool if it has one",
            s.slots
        ),
    }
}

pub(super) fn met(m: Option<bool>) -> String {
    match m {
        Some(true) => "yes".into(),
        Some(false) => "NO".into(),
        None => "-".into(),
    }
}

/// A phase's CPU split, under its numbers (nothing where `/proc` could not be read).
fn cpu_row(t: &mut comfy_table::Table, cpu: Option<&CpuUse>) {
    if let Some(c) = cpu {
        t.add_row([
            "  CPU over the phase".to_string(),
            describe(c),
            "-".into(),
            "(no target; measured)".into(),
            "-".into(),
        ]);
    }
}

pub(super) fn print_report(r: &Report) {
    let s = &r.setup;
    emit(&format!("cflow bench tasks — server: {}", s.server));
    emit(&format!(
        "backend: {}; driver: {}; executors: {}; {} agents per swarm; machine: {} cores (shared by client, server and workers)",
        s.backend,
        s.driver.name(),
        executors(s),
        s.agents,
        s.cores
    ));
    if let Some(pg) = &s.postgres {
        emit(&pg.summary);
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(["benchmark", "measured", "errors", "target", "met"]);
    if let Some(p) = &r.throughput {
        t.add_row([
            format!(
                "throughput: {} tasks, requests of {}, {} in flight",
                p.tasks, p.batch, p.in_flight
            ),
            format!(
                "{:.0} tasks/s complete ({:.2} s); submit only {:.0} tasks/s ({:.2} s); {} succeeded",
                p.tasks_per_sec, p.complete_secs, p.submit_per_sec, p.submit_secs, p.succeeded
            ),
            p.errors.to_string(),
            p.target.clone(),
            met(Some(p.met)),
        ]);
        cpu_row(&mut t, p.cpu.as_ref());
    }
    if let Some(l) = &r.latency {
        let pct = |p: &Percentiles| {
            format!(
                "p50 {:.2} / p90 {:.2} / p99 {:.2} / max {:.2} ms",
                p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms
            )
        };
        t.add_row([
            format!(
                "submit→start @ {} tasks/s for {} s (open loop)",
                l.offered_rate, l.duration_secs
            ),
            format!(
                "{} ({} tasks)",
                pct(&l.submit_to_start),
                l.submit_to_start.count
            ),
            l.errors.to_string(),
            l.target.clone(),
            met(Some(l.met)),
        ]);
        t.add_row([
            "  HTTP 202 round trip (same requests)".to_string(),
            pct(&l.http_202),
            "-".into(),
            "(no target; measured)".into(),
            "-".into(),
        ]);
        cpu_row(&mut t, l.cpu.as_ref());
    }
    if let Some(i) = &r.idle {
        let mb = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.1} MB"));
        t.add_row([
            format!("idle agents: {}", i.agents),
            format!(
                "RSS {} before, {} after; registered in {:.2} s",
                mb(i.rss_before_mb),
                mb(i.rss_after_mb),
                i.register_secs
            ),
            i.errors.to_string(),
            i.target.clone(),
            met(i.met),
        ]);
    }
    emit(&t.to_string());
    if let Some(l) = &r.latency {
        emit(&format!(
            "submit→start: from each request's scheduled send time to the attempt's started_at (the server's clock, ms resolution; {} starts stamped before their send were counted as 0); an unrecorded warm-up of up to 1 s at the same rate came first",
            l.clamped
        ));
    }
    if let Some(i) = &r.idle
        && let Some(why) = &i.rss_note
    {
        emit(&format!("idle agents: {why}"));
    }
    let reasons = [
        (
            "throughput",
            r.throughput.as_ref().map(|p| &p.error_reasons),
        ),
        ("latency", r.latency.as_ref().map(|p| &p.error_reasons)),
        ("idle agents", r.idle.as_ref().map(|p| &p.error_reasons)),
    ];
    for (name, why) in reasons {
        for why in why.into_iter().flatten() {
            emit(&format!("error in '{name}': {why}"));
        }
    }
}
