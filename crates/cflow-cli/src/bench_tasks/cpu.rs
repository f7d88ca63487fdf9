//! Where the machine's CPU went during a phase: the spawned server, its workers, the benchmark
//! client itself, and everything else (PostgreSQL's backends, and any other program that ran
//! meanwhile). On a machine of two cores shared by all of them, a throughput number means little
//! without this: a run that "everything else" took a core from is not comparable with one it
//! did not (a build running alongside halved the PostgreSQL numbers once), and the split shows
//! which process was short of CPU.
//!
//! Read from Linux's `/proc` (`/proc/stat` for the machine, `/proc/<pid>/stat` for a process and
//! the children it has waited for, such as the sandboxed commands of `--driver exec`); elsewhere
//! nothing is reported.

use serde::Serialize;
use std::time::Instant;

/// The unit of `/proc`'s CPU times: Linux reports them in `USER_HZ` ticks, which is 100 per
/// second on every architecture (`getconf CLK_TCK`), whatever the kernel's own tick rate.
const TICKS_PER_SEC: f64 = 100.0;

/// The processes a phase's CPU is split between, besides the benchmark client itself.
#[derive(Clone, Debug, Default)]
pub(super) struct Procs {
    /// The server the benchmark spawned (`None`: a server it did not start).
    pub(super) server: Option<u32>,
    /// The `cflow worker` processes it spawned.
    pub(super) workers: Vec<u32>,
}

/// The counters at one moment.
#[derive(Clone, Debug)]
pub(super) struct Sample {
    at: Instant,
    /// Ticks of all CPUs busy, and in total (busy and idle), since boot.
    busy: u64,
    total: u64,
    server: Option<u64>,
    workers: Option<u64>,
    client: u64,
}

/// What [`between`] reports for a phase.
#[derive(Debug, Serialize, PartialEq)]
pub(super) struct CpuUse {
    pub(super) wall_secs: f64,
    /// How busy the machine's CPUs were over the phase, all of them together (100: every core
    /// busy all the time).
    pub(super) machine_busy_pct: f64,
    /// CPU seconds of the spawned server (with the commands it ran), `None` for a server the
    /// benchmark did not start.
    pub(super) server_secs: Option<f64>,
    /// CPU seconds of the spawned `cflow worker`s (`None` without any).
    pub(super) workers_secs: Option<f64>,
    /// CPU seconds of the benchmark client.
    pub(super) client_secs: f64,
    /// The machine's busy CPU seconds that none of the above account for: PostgreSQL's
    /// processes, a server the benchmark did not start, and whatever else ran meanwhile.
    pub(super) rest_secs: f64,
}

/// Takes a sample, or `None` where `/proc` cannot be read (not Linux) or a process is gone.
pub(super) fn sample(procs: &Procs) -> Option<Sample> {
    let at = Instant::now();
    let (busy, total) = machine(&std::fs::read_to_string("/proc/stat").ok()?)?;
    let server = match procs.server {
        Some(pid) => Some(process_of(pid)?),
        None => None,
    };
    let workers = if procs.workers.is_empty() {
        None
    } else {
        let mut sum = 0;
        for &pid in &procs.workers {
            sum += process_of(pid)?;
        }
        Some(sum)
    };
    let client = process(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    Some(Sample {
        at,
        busy,
        total,
        server,
        workers,
        client,
    })
}

fn process_of(pid: u32) -> Option<u64> {
    process(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The CPU used since `before` (`None` if either sample could not be taken).
pub(super) fn since(before: Option<Sample>, procs: &Procs) -> Option<CpuUse> {
    let after = sample(procs)?;
    Some(between(&before?, &after))
}

/// The CPU used between two samples.
pub(super) fn between(a: &Sample, b: &Sample) -> CpuUse {
    let secs = |t: u64| t as f64 / TICKS_PER_SEC;
    let diff = |x: Option<u64>, y: Option<u64>| match (x, y) {
        (Some(x), Some(y)) => Some(y.saturating_sub(x)),
        _ => None,
    };
    let busy = b.busy.saturating_sub(a.busy);
    let total = b.total.saturating_sub(a.total);
    let server = diff(a.server, b.server);
    let workers = diff(a.workers, b.workers);
    let client = b.client.saturating_sub(a.client);
    let accounted = server.unwrap_or(0) + workers.unwrap_or(0) + client;
    CpuUse {
        wall_secs: b.at.duration_since(a.at).as_secs_f64(),
        machine_busy_pct: if total == 0 {
            0.0
        } else {
            100.0 * busy as f64 / total as f64
        },
        server_secs: server.map(secs),
        workers_secs: workers.map(secs),
        client_secs: secs(client),
        // Ticks are counted per CPU and per process at different moments: a few ticks either
        // way are rounding, not CPU.
        rest_secs: secs(busy.saturating_sub(accounted)),
    }
}

/// The machine's busy and total ticks from `/proc/stat`'s `cpu` line (user, nice, system, idle,
/// iowait, irq, softirq, steal, ...; guest time is already counted in user). Waiting for I/O
/// counts as idle; stolen time (another virtual machine had the core) as busy, since nothing
/// here could use it.
fn machine(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    let (idle, iowait) = (at(3), at(4));
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    Some((busy, busy + idle + iowait))
}

/// A process's CPU ticks from its `/proc/<pid>/stat`: its own user and system time and that of
/// the children it has waited for (fields 14 to 17). The command name (field 2) is in
/// parentheses and may hold spaces or parentheses itself, so the fields are counted after its
/// last `)`.
fn process(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state (field 3) is the first; utime is field 14, the 12th here.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let mut sum = 0;
    for i in 11..15 {
        sum += f.get(i)?.parse::<u64>().ok()?;
    }
    Some(sum)
}

/// The phase's CPU in one line of the report.
pub(super) fn describe(c: &CpuUse) -> String {
    let mut parts = Vec::new();
    if let Some(s) = c.server_secs {
        parts.push(format!("server {s:.2} s"));
    }
    if let Some(w) = c.workers_secs {
        parts.push(format!("workers {w:.2} s"));
    }
    parts.push(format!("client {:.2} s", c.client_secs));
    parts.push(format!(
        "everything else {:.2} s (PostgreSQL, other programs)",
        c.rest_secs
    ));
    format!(
        "{}; machine {:.0} % busy over {:.2} s",
        parts.join(", "),
        c.machine_busy_pct,
        c.wall_secs
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_machine_line_counts_steal_as_busy_and_iowait_as_idle() {
        let stat = "cpu  100 5 50 800 20 3 2 10 0 0\ncpu0 50 2 25 400 10 1 1 5 0 0\nintr 1 2 3\n";
        // busy = user + nice + system + irq + softirq + steal; total adds idle and iowait.
        assert_eq!(machine(stat), Some((170, 990)));
        assert_eq!(machine("intr 1 2 3\n"), None);
        assert_eq!(machine("cpu  1 x 3\n"), None);
    }

    #[test]
    fn a_process_line_is_read_after_the_last_parenthesis_of_its_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime ...
        let stat = "4242 (cflow (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 40 7 3 20 0 9 0";
        assert_eq!(process(stat), Some(250 + 40 + 7 + 3));
        assert_eq!(process("4242 (cflow) S 1 2 3"), None);
        assert_eq!(process("no parenthesis"), None);
    }

    #[test]
    fn the_rest_is_the_busy_time_no_process_accounts_for() {
        let t0 = Instant::now();
        let a = Sample {
            at: t0,
            busy: 1_000,
            total: 10_000,
            server: Some(500),
            workers: None,
            client: 30,
        };
        let b = Sample {
            at: t0 + Duration::from_secs(2),
            // 2 cores over 2 s: 400 ticks in total, 300 of them busy.
            busy: 1_300,
            total: 10_400,
            server: Some(650),
            workers: None,
            client: 50,
        };
        let c = between(&a, &b);
        assert_eq!(
            c,
            CpuUse {
                wall_secs: 2.0,
                machine_busy_pct: 75.0,
                server_secs: Some(1.5),
                workers_secs: None,
                client_secs: 0.2,
                rest_secs: 1.3,
            }
        );
        assert_eq!(
            describe(&c),
            "server 1.50 s, client 0.20 s, everything else 1.30 s (PostgreSQL, other programs); \
             machine 75 % busy over 2.00 s"
        );
        // Rounding between the machine's and the processes' counters never makes it negative.
        let c = between(
            &a,
            &Sample {
                busy: 1_100,
                ..b.clone()
            },
        );
        assert_eq!(c.rest_secs, 0.0);
    }

    #[test]
    fn this_process_can_be_sampled_on_linux() {
        if !std::path::Path::new("/proc/self/stat").exists() {
            return;
        }
        let procs = Procs {
            server: Some(std::process::id()),
            workers: vec![std::process::id()],
        };
        let a = sample(&procs).expect("a sample of this process");
        // Burn some CPU so that the counters move by more than their resolution.
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(120) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let c = since(Some(a), &procs).expect("a second sample");
        assert!(c.client_secs > 0.0, "{c:?}");
        assert_eq!(c.server_secs, Some(c.client_secs));
        assert!(
            c.machine_busy_pct > 0.0 && c.machine_busy_pct <= 100.0,
            "{c:?}"
        );
        // A process that is gone cannot be sampled.
        let gone = Procs {
            server: Some(u32::MAX),
            workers: Vec::new(),
        };
        assert!(sample(&gone).is_none());
        assert!(since(None, &procs).is_none());
    }
}
