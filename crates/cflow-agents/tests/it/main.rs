//! Integration tests for cflow-agents: real processes through the real drivers.

mod exec;
mod kill;
mod llm;
mod noop;
mod workbench;

use cflow_agents::{
    Driver, DriverError, ExecConfig, ExecDriver, ExecSpec, Job, JobEvent, JobOutcome, JobSpec,
};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A short grace period, so the tests that need SIGKILL do not wait 2 s each.
pub fn driver() -> ExecDriver {
    ExecDriver::new(ExecConfig {
        kill_grace: Duration::from_millis(300),
        ..ExecConfig::default()
    })
}

/// A job with generous limits; tests narrow the one they are about.
pub fn job(spec: ExecSpec) -> Job {
    Job {
        task_id: "task-1".to_string(),
        attempt: 1,
        spec: JobSpec::Exec(spec),
        timeout: Duration::from_secs(60),
        output_cap: 1 << 20,
        sandbox: None,
        agent_id: String::new(),
        epoch: 0,
        host: None,
    }
}

/// Runs a job to its end and returns the outcome with every event it streamed, in order.
pub async fn run(
    driver: &dyn Driver,
    job: Job,
) -> (Result<JobOutcome, DriverError>, Vec<JobEvent>) {
    let (tx, mut rx) = mpsc::channel(16);
    let collect = async {
        let mut events = Vec::new();
        while let Some(event) = rx.recv().await {
            events.push(event);
        }
        events
    };
    // The sender moves into run(), so the collector ends when the job does.
    tokio::join!(driver.run(job, tx, CancellationToken::new()), collect)
}

/// A live process in some process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub pid: i32,
    pub ppid: i32,
}

/// The live processes of group `pgid`, read from `/proc` independently of the crate under test.
/// Zombies are left out: they are dead, and this machine's init does not reap orphans, so
/// killed grandchildren stay zombies forever here.
pub fn live_group_members(pgid: i32) -> Vec<Member> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc is readable") {
        let name = entry.expect("a /proc entry").file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue; // It exited between the listing and the read.
        };
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .collect();
        let (state, ppid, pgrp) = (fields[0], fields[1], fields[2]);
        if pgrp.parse() == Ok(pgid) && state != "Z" && state != "X" {
            members.push(Member {
                pid,
                ppid: ppid.parse().unwrap(),
            });
        }
    }
    members
}

/// Polls until `pred` holds for the group's live members, or panics at the deadline.
pub async fn wait_for_group(
    pgid: i32,
    what: &str,
    pred: impl Fn(&[Member]) -> bool,
) -> Vec<Member> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let members = live_group_members(pgid);
        if pred(&members) {
            return members;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The concatenated stdout chunks of a run's events.
pub fn streamed_stdout(events: &[JobEvent]) -> Vec<u8> {
    events
        .iter()
        .filter_map(|e| match e {
            JobEvent::Stdout(bytes) => Some(bytes.as_slice()),
            _ => None,
        })
        .flatten()
        .copied()
        .collect()
}
