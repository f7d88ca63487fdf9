//! Commands that exhaust a resource: memory, output, disk, file size.

use crate::{Harness, MIB, hit, report, rss_bytes};
use cflow_agents::{ExecSpec, JobEnd, KilledBy};
use std::time::{Duration, Instant};

const ALLOCATE_PY: &str = "b = []\nwhile True: b.append(bytearray(10**7))\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocating_until_killed_ends_killed_by_memory() {
    let h = Harness::new(|p| p.limits.memory_bytes = 64 * MIB);
    let spec = ExecSpec::program("python3", ["-c", ALLOCATE_PY]).env("PATH", crate::PATH);
    let started = Instant::now();
    let out = h.run("oom", spec, Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        out.end,
        JobEnd::Killed {
            limit: KilledBy::Memory
        },
        "stderr: {} report: {:?}",
        out.stderr.text(),
        out.sandbox
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        hit(&out, "memory:"),
        "limits_hit: {:?}",
        report(&out).limits_hit
    );
    if let Some(peak) = report(&out).memory_peak_bytes {
        assert!(peak <= 64 * MIB + MIB, "peak {peak} over the limit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_flood_is_capped_and_costs_no_memory() {
    let h = Harness::new(|_| {});
    let cap = 64 * 1024;
    let mut job = crate::job(
        "flood",
        crate::shell("head -c 3G /dev/zero; echo done >&2"),
        Duration::from_secs(60),
    );
    job.output_cap = cap;
    let before = rss_bytes();
    let started = Instant::now();
    let out = h
        .run_job(job, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    let after = rss_bytes();
    assert_eq!(
        out.end,
        JobEnd::Exited { code: 0 },
        "took {:?}",
        started.elapsed()
    );
    assert!(out.stdout.truncated);
    assert!(out.stdout.bytes.len() <= cap);
    assert_eq!(out.stdout.total_bytes, 3 << 30);
    assert_eq!(out.stderr.text(), "done\n");
    let grew = after.saturating_sub(before);
    assert!(grew <= 64 * MIB, "RSS grew by {grew} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filling_the_disk_quota_kills_the_run() {
    let h = Harness::new(|p| {
        p.limits.disk_bytes = 20 * MIB;
        p.limits.file_size_bytes = 1024 * MIB;
    });
    // The command stays alive after writing, as an agent would: the quota watcher catches it.
    let out = h
        .sh(
            "disk-live",
            "dd if=/dev/zero of=big bs=1M count=100 2>/dev/null; echo written; sleep 20",
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(
        out.end,
        JobEnd::Killed {
            limit: KilledBy::Disk
        }
    );
    assert!(
        hit(&out, "disk:"),
        "limits_hit: {:?}",
        report(&out).limits_hit
    );
    let kept = report(&out)
        .workspace_kept
        .clone()
        .expect("a killed run keeps its workspace");
    let _ = std::fs::remove_dir_all(kept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_overrun_by_a_command_that_exits_at_once_is_caught() {
    let h = Harness::new(|p| {
        p.limits.disk_bytes = 20 * MIB;
        p.limits.file_size_bytes = 1024 * MIB;
    });
    // dd writes 100 MiB and exits well within the watcher's first period.
    let out = h
        .sh(
            "disk-quick",
            "dd if=/dev/zero of=big bs=1M count=100",
            Duration::from_secs(30),
        )
        .await;
    if let Some(kept) = report(&out).workspace_kept.clone() {
        let _ = std::fs::remove_dir_all(kept);
    }
    assert_eq!(
        out.end,
        JobEnd::Killed {
            limit: KilledBy::Disk
        },
        "a run that left 100 MiB in a 20 MiB workspace; limits_hit: {:?}",
        report(&out).limits_hit
    );
    assert!(
        hit(&out, "disk:"),
        "limits_hit: {:?}",
        report(&out).limits_hit
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_past_the_size_limit_is_cut() {
    let h = Harness::new(|p| p.limits.file_size_bytes = 10 * MIB);
    let spec = ExecSpec::program("dd", ["if=/dev/zero", "of=big", "bs=1M", "count=50"])
        .env("PATH", crate::PATH);
    let out = h.run("fsize", spec, Duration::from_secs(30)).await.unwrap();
    let size = kept_file_size(&out, "big");
    assert_eq!(size, 10 * MIB, "the file was not cut at the limit");
    assert_eq!(
        out.end,
        JobEnd::Signalled {
            signal: libc::SIGXFSZ
        },
        "stderr: {}",
        out.stderr.text()
    );
    assert!(
        hit(&out, "file size:"),
        "limits_hit: {:?}",
        report(&out).limits_hit
    );
}

/// The same write from a shell command line, the usual form of a task: dd dies of SIGXFSZ
/// inside `sh -c`, which exits 128 + SIGXFSZ. The run should still say which limit it hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_past_the_size_limit_in_a_shell_is_reported() {
    let h = Harness::new(|p| p.limits.file_size_bytes = 10 * MIB);
    let out = h
        .sh(
            "fsize-shell",
            "dd if=/dev/zero of=big bs=1M count=50; rc=$?; echo dd=$rc; exit $rc",
            Duration::from_secs(30),
        )
        .await;
    let size = kept_file_size(&out, "big");
    assert_eq!(size, 10 * MIB, "the file was not cut at the limit");
    assert!(
        out.stdout
            .text()
            .contains(&format!("dd={}", 128 + libc::SIGXFSZ)),
        "dd should have died of SIGXFSZ: {} {}",
        out.stdout.text(),
        out.stderr.text()
    );
    assert!(
        hit(&out, "file size:"),
        "a process died of SIGXFSZ but limits_hit does not say so: {:?}",
        report(&out).limits_hit
    );
}

/// The size of `name` in the run's kept workspace (a run that succeeded has none: 0), which is
/// removed afterwards.
fn kept_file_size(out: &cflow_agents::JobOutcome, name: &str) -> u64 {
    let Some(kept) = report(out).workspace_kept.clone() else {
        return 0;
    };
    let size = std::fs::metadata(kept.join(name))
        .map(|m| m.len())
        .unwrap_or(0);
    let _ = std::fs::remove_dir_all(&kept);
    size
}
