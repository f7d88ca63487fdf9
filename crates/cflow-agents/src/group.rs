//! The process group of one exec job: signalling it, noticing that its leader exited without
//! reaping it, reading the leader's CPU time from its zombie, and waiting until no live member
//! remains.

use rustix::io::Errno;
use rustix::process::{
    Pid, Signal, WaitId, WaitIdOptions, kill_process_group, test_kill_process_group, waitid,
};
use std::io;
use std::process::ExitStatus;
use std::time::Duration;
use tokio::process::Child;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

/// A job's process group, led by the spawned child (`process_group(0)` makes its pid the group
/// id). Dropping it before the leader is reaped SIGKILLs the whole group, so a `run()` future
/// that is dropped midway still leaves nothing behind (tokio's `kill_on_drop` alone would kill
/// only the leader).
pub(crate) struct ProcessGroup {
    pgid: Pid,
    /// Wakes us on every SIGCHLD, after which `waitid(WNOWAIT)` tells whether it was our leader,
    /// without reaping it. Acting while the leader is still an unreaped zombie keeps the group id
    /// reserved (the kernel does not hand out a pid that still names a process group), so
    /// signalling the group then can never reach an unrelated process, and the zombie's
    /// `/proc/<pid>/stat` still holds its CPU time. `None` if the runtime has no signal driver:
    /// then the exit is only seen by reaping the leader.
    sigchld: Option<tokio::signal::unix::Signal>,
    /// The leader has exited (it is a zombie, or reaped if `status` is set).
    exited: bool,
    /// The leader's wait status, once reaped.
    status: Option<ExitStatus>,
}

impl ProcessGroup {
    /// Takes charge of the group that `leader_pid` leads. Call it right after the spawn.
    pub(crate) fn new(leader_pid: u32) -> io::Result<Self> {
        let pgid = i32::try_from(leader_pid)
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| io::Error::other(format!("invalid child pid {leader_pid}")))?;
        let sigchld = signal(SignalKind::child()).ok();
        if sigchld.is_none() {
            tracing::debug!(
                pgid = leader_pid,
                "no signal driver: the job's exit is seen only by reaping (no CPU time)"
            );
        }
        Ok(Self {
            pgid,
            sigchld,
            exited: false,
            status: None,
        })
    }

    /// Sends `sig` to every process in the group. A group that is already empty is not an
    /// error. Once the leader has been reaped, the group id stays reserved only while other
    /// members live, so signalling an empty group then has a tiny pid-reuse window; supervision
    /// sends its last signal before reaping, and only the no-signal-driver fallback reaps first.
    pub(crate) fn signal(&self, sig: Signal) {
        match kill_process_group(self.pgid, sig) {
            Ok(()) | Err(Errno::SRCH) => {}
            Err(err) => tracing::warn!(pgid = self.pgid.as_raw_nonzero().get(), ?sig, %err,
                "could not signal the job's process group"),
        }
    }

    /// Completes once the leader has exited, leaving it an unreaped zombie (or reaping it, in
    /// the fallback without a signal driver). Cancel-safe: it can be raced in `select!` and
    /// called again.
    pub(crate) async fn leader_exited(&mut self, child: &mut Child) -> io::Result<()> {
        if self.exited {
            return Ok(());
        }
        if let Some(sigchld) = &mut self.sigchld {
            let options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | WaitIdOptions::NOHANG;
            loop {
                // The listener exists before the first check, so an exit between a check and
                // the next wait still wakes us.
                if waitid(WaitId::Pid(self.pgid), options)?.is_some() {
                    self.exited = true;
                    return Ok(());
                }
                if sigchld.recv().await.is_none() {
                    break; // The runtime is shutting down its signal driver.
                }
            }
        }
        self.status = Some(child.wait().await?);
        self.exited = true;
        Ok(())
    }

    /// Reaps the leader (once) and returns its wait status. After this, dropping the group does
    /// nothing.
    pub(crate) async fn reap(&mut self, child: &mut Child) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = child.wait().await?;
        self.status = Some(status);
        self.exited = true;
        Ok(status)
    }

    /// The leader's CPU time (user + system, plus the children it waited for), read from its
    /// zombie's `/proc/<pid>/stat`. Only possible between its exit and its reaping, so `None`
    /// in the fallback that reaps to notice the exit.
    pub(crate) fn leader_cpu_time(&self) -> Option<Duration> {
        if !self.exited || self.status.is_some() {
            return None;
        }
        let pid = self.pgid.as_raw_nonzero().get();
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let stat = parse_stat(&text)?;
        let hz = rustix::param::clock_ticks_per_second();
        if hz == 0 {
            return None;
        }
        let nanos = u128::from(stat.cpu_ticks) * 1_000_000_000 / u128::from(hz);
        Some(Duration::from_nanos(u64::try_from(nanos).ok()?))
    }

    /// Waits until no live process is left in the group (zombies awaiting their reaper count
    /// as gone: they run nothing and hold nothing but a pid), or until `deadline`. Returns
    /// whether the group emptied. There is no event for "group empty", so this polls, starting
    /// fast because a SIGKILLed process normally dies within a scheduler tick.
    pub(crate) async fn wait_gone(&self, deadline: Instant) -> bool {
        let mut pause = Duration::from_millis(1);
        loop {
            if self.is_gone() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    fn is_gone(&self) -> bool {
        // The cheap check first: no member at all, not even a zombie.
        if let Err(Errno::SRCH) = test_kill_process_group(self.pgid) {
            return true;
        }
        let pgid = self.pgid.as_raw_nonzero().get();
        matches!(live_members(pgid), Ok(0))
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.signal(Signal::KILL);
        }
    }
}

/// How many processes in group `pgid` are alive (not zombies), from `/proc`.
fn live_members(pgid: i32) -> io::Result<usize> {
    let mut count = 0;
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        // A process may vanish between the listing and the read; that is one fewer member.
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some(stat) = parse_stat(&text)
            && stat.pgid == pgid
            && !matches!(stat.state, 'Z' | 'X')
        {
            count += 1;
        }
    }
    Ok(count)
}

/// The fields of `/proc/<pid>/stat` that supervision needs.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    state: char,
    pgid: i32,
    /// utime + stime + cutime + cstime, in clock ticks.
    cpu_ticks: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may itself
/// contain spaces and parentheses, so the fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 (index 0), pgrp field 5 (index 2), and utime, stime,
    // cutime, cstime fields 14-17 (indices 11-14).
    let state = fields.first()?.chars().next()?;
    let pgid = fields.get(2)?.parse().ok()?;
    let mut cpu_ticks = 0u64;
    for field in fields.get(11..15)? {
        // cutime and cstime are signed in the kernel's format; they are never negative in
        // practice, and a negative value is treated as unreadable rather than guessed.
        cpu_ticks = cpu_ticks.checked_add(field.parse::<u64>().ok()?)?;
    }
    Some(Stat {
        state,
        pgid,
        cpu_ticks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_zombie_stat_line() {
        let line =
            "24846 (sh) Z 24805 24801 20331 0 -1 4227084 65 0 0 0 20 3 4 5 20 0 1 0 517752 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'Z',
                pgid: 24801,
                cpu_ticks: 32
            })
        );
    }

    #[test]
    fn counts_fields_from_the_last_parenthesis() {
        let line = "7 (a) b (c)) S 1 42 1 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!((stat.state, stat.pgid, stat.cpu_ticks), ('S', 42, 2));
    }

    #[test]
    fn rejects_truncated_lines() {
        assert_eq!(parse_stat("1 (x) S 1 1"), None);
        assert_eq!(parse_stat("garbage"), None);
    }
}
