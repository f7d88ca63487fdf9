//! The scheduler's Prometheus series: counters and a submit→start histogram kept in atomics,
//! and gauges (queue depth, agents and workers by state) read from the live state at scrape time.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the submit→start histogram, dense below 10 ms.
const BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// Limits counted by `cflow_sandbox_limit_hits_total` (the prefix of a `limits_hit` line).
pub(crate) const LIMITS: [&str; 6] = ["memory", "processes", "disk", "file size", "cpu", "seccomp"];

/// Outcomes counted by `cflow_task_outcomes_total`.
pub(crate) const OUTCOMES: [&str; 5] = ["succeeded", "failed", "cancelled", "timed_out", "lost"];

#[derive(Default)]
pub(crate) struct SchedMetrics {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
    outcomes: [AtomicU64; OUTCOMES.len()],
    scale_up: AtomicU64,
    scale_down: AtomicU64,
    assigned: AtomicU64,
    sandbox_denied: AtomicU64,
    limit_hits: [AtomicU64; LIMITS.len()],
    attempts_sandboxed: AtomicU64,
    attempts_unsandboxed: AtomicU64,
}

impl SchedMetrics {
    pub fn observe_start(&self, millis: i64) {
        let secs = millis.max(0) as f64 / 1000.0;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(millis.max(0)).unwrap_or(0) * 1000,
            Ordering::Relaxed,
        );
    }

    pub fn outcome(&self, name: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == name) {
            self.outcomes[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts what the sandbox reported on an ended attempt (`detail.sandbox` of its report).
    pub fn sandbox(&self, detail: Option<&serde_json::Value>) {
        let Some(sb) = detail
            .and_then(|d| d.get("sandbox"))
            .filter(|s| s.is_object())
        else {
            if detail.is_some() {
                self.attempts_unsandboxed.fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        self.attempts_sandboxed.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = sb.get("denied_total").and_then(|v| v.as_u64()) {
            self.sandbox_denied.fetch_add(n, Ordering::Relaxed);
        }
        for hit in sb
            .get("limits_hit")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
        {
            let name = hit.split(':').next().unwrap_or("");
            if let Some(i) = LIMITS.iter().position(|l| *l == name) {
                self.limit_hits[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn scaled(&self, up: bool) {
        let c = if up { &self.scale_up } else { &self.scale_down };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn assigned(&self, n: u64) {
        self.assigned.fetch_add(n, Ordering::Relaxed);
    }

    /// Appends the counters and the histogram in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP cflow_task_submit_to_start_seconds Time from a task's queueing to its attempt's start.\n\
             # TYPE cflow_task_submit_to_start_seconds histogram"
        );
        for (i, b) in BUCKETS.iter().enumerate() {
            let n = self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "cflow_task_submit_to_start_seconds_bucket{{le=\"{b}\"}} {n}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "cflow_task_submit_to_start_seconds_bucket{{le=\"+Inf\"}} {count}\n\
             cflow_task_submit_to_start_seconds_sum {sum}\n\
             cflow_task_submit_to_start_seconds_count {count}"
        );
        let _ = writeln!(
            out,
            "# HELP cflow_task_outcomes_total Attempts ended, by outcome.\n\
             # TYPE cflow_task_outcomes_total counter"
        );
        for (i, o) in OUTCOMES.iter().enumerate() {
            let n = self.outcomes[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "cflow_task_outcomes_total{{outcome=\"{o}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP cflow_sandbox_attempts_total Attempts ended, by whether they ran in the sandbox.\n\
             # TYPE cflow_sandbox_attempts_total counter\n\
             cflow_sandbox_attempts_total{{sandboxed=\"true\"}} {}\n\
             cflow_sandbox_attempts_total{{sandboxed=\"false\"}} {}\n\
             # HELP cflow_sandbox_denied_total Operations the sandbox refused (seccomp), over all attempts.\n\
             # TYPE cflow_sandbox_denied_total counter\n\
             cflow_sandbox_denied_total {}\n\
             # HELP cflow_sandbox_limit_hits_total Attempts that hit a resource limit, by limit.\n\
             # TYPE cflow_sandbox_limit_hits_total counter",
            self.attempts_sandboxed.load(Ordering::Relaxed),
            self.attempts_unsandboxed.load(Ordering::Relaxed),
            self.sandbox_denied.load(Ordering::Relaxed),
        );
        for (i, l) in LIMITS.iter().enumerate() {
            let n = self.limit_hits[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "cflow_sandbox_limit_hits_total{{limit=\"{}\"}} {n}",
                l.replace(' ', "_")
            );
        }
        let _ = writeln!(
            out,
            "# HELP cflow_task_assignments_total Attempts assigned to agents.\n\
             # TYPE cflow_task_assignments_total counter\n\
             cflow_task_assignments_total {}",
            self.assigned.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP cflow_autoscaler_actions_total Agents started or stopped by the autoscaler.\n\
             # TYPE cflow_autoscaler_actions_total counter\n\
             cflow_autoscaler_actions_total{{action=\"scale_up\"}} {}\n\
             cflow_autoscaler_actions_total{{action=\"scale_down\"}} {}",
            self.scale_up.load(Ordering::Relaxed),
            self.scale_down.load(Ordering::Relaxed)
        );
    }
}

/// Appends one gauge family.
pub(crate) fn gauge<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (l, v) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{l}\"}} {v}");
    }
}
