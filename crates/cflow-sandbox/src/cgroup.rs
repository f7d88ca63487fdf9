//! Per-run cgroups: a memory and a process-count limit on the whole process tree of one sandboxed
//! command, plus the counters the attempt record reports.
//!
//! [`CgroupHost::discover`] runs once at startup and picks one of two layouts, always nested
//! under the cgroup this process itself is in (read from `/proc/self/cgroup`), never elsewhere:
//! - **cgroup v2**, when the `memory` and `pids` controllers are delegated to our own cgroup and
//!   can be enabled in its `cgroup.subtree_control`: runs live in `<own>/cflow/<name>`, with
//!   `memory.max`, `memory.swap.max = 0` (when swap accounting exists) and `pids.max`. Accounted:
//!   OOM kills (`memory.events`), failed forks (`pids.events`), peak memory (`memory.peak`,
//!   kernels 5.19+) and CPU time (`cpu.stat`). Killing uses `cgroup.kill` (5.14+) when present.
//! - **cgroup v1**, when the `memory` and `pids` hierarchies are mounted and writable: runs live in
//!   `<own path in each hierarchy>/cflow/<name>` of `memory`, `pids` and (when mounted)
//!   `cpuacct`, with `memory.limit_in_bytes`, `memory.memsw.limit_in_bytes` (when swap accounting
//!   exists, so swap is no way around the limit) and `pids.max`. Accounted: OOM kills
//!   (`memory.oom_control`), failed forks (`pids.events`), peak memory
//!   (`memory.max_usage_in_bytes`) and CPU time (`cpuacct.usage`, when mounted).
//!
//! Because of v2's "no internal processes" rule our own cgroup must accept new controllers in its
//! `cgroup.subtree_control`; when it holds processes of its own (and is not the root) the kernel
//! refuses with `EBUSY` and v2 is unavailable. When neither layout works, `discover` returns
//! a message naming what is missing; the supervisor then records the `cgroup` layer as
//! unavailable and falls back to per-process rlimits (`RLIMIT_DATA`, `RLIMIT_NPROC`), which
//! bound each process but not the tree, and nothing is accounted.

use crate::policy::Limits;
use serde::Serialize;
use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The name of the parent directory every run's cgroup is created in.
const PARENT: &str = "cflow";
/// How long killing keeps looking for processes that forked meanwhile, and how long removal
/// waits for the killed processes to leave.
const KILL_DEADLINE: Duration = Duration::from_secs(2);
/// How long `rmdir` is retried on `EBUSY`.
const RMDIR_DEADLINE: Duration = Duration::from_secs(1);

/// Which cgroup interface is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Version {
    V1,
    V2,
}

/// One hierarchy a run's cgroup lives in: the single v2 hierarchy, or one v1 controller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hierarchy {
    Unified,
    Memory,
    Pids,
    Cpuacct,
}

impl Hierarchy {
    fn label(self) -> &'static str {
        match self {
            Hierarchy::Unified => "memory and pids",
            Hierarchy::Memory => "memory",
            Hierarchy::Pids => "pids",
            Hierarchy::Cpuacct => "cpuacct",
        }
    }
}

/// Where this process can create cgroups for sandboxed commands. Discovered once at startup.
#[derive(Debug, Clone)]
pub struct CgroupHost {
    version: Version,
    /// The parent directory of the runs' cgroups in each hierarchy (v1: memory, pids and maybe
    /// cpuacct, in that order; v2: the one unified directory).
    bases: Vec<(Hierarchy, PathBuf)>,
}

impl CgroupHost {
    /// Finds a usable cgroup setup: v2 when the memory and pids controllers can be used under our
    /// own cgroup, else v1 with writable memory and pids hierarchies (nested under our own cgroup
    /// path in each), creating a `cflow` parent directory in each base. `Err` names exactly what
    /// is missing.
    pub fn discover() -> Result<CgroupHost, String> {
        Self::discover_with_parent(PARENT)
    }

    fn discover_with_parent(parent: &str) -> Result<CgroupHost, String> {
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        discover_from(&own, &mountinfo, parent)
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Human summary for `cflow doctor`, e.g. "cgroup v1 (memory at /sys/fs/cgroup/memory/x/cflow,
    /// pids at ...)".
    pub fn describe(&self) -> String {
        let version = match self.version {
            Version::V1 => "v1",
            Version::V2 => "v2",
        };
        let places: Vec<String> = self
            .bases
            .iter()
            .map(|(h, dir)| format!("{} at {}", h.label(), dir.display()))
            .collect();
        format!("cgroup {version} ({})", places.join(", "))
    }

    /// Creates the cgroup(s) for one run, named `name`, limited to `limits.memory_bytes` of
    /// memory (swap included where the kernel accounts it) and `limits.max_processes` processes
    /// and threads. A stale cgroup of that name (left by a crash) is emptied and removed first.
    pub fn create(&self, name: &str, limits: &Limits) -> io::Result<Cgroup> {
        check_name(name)?;
        let dirs: Vec<(Hierarchy, PathBuf)> = self
            .bases
            .iter()
            .map(|(h, base)| (*h, base.join(name)))
            .collect();
        for (_, dir) in &dirs {
            if let Ok(meta) = fs::symlink_metadata(dir)
                && !meta.is_dir()
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} exists and is not a cgroup", dir.display()),
                ));
            }
        }
        let stale: Vec<(Hierarchy, PathBuf)> =
            dirs.iter().filter(|(_, d)| d.is_dir()).cloned().collect();
        if !stale.is_empty() {
            tracing::warn!(name, "removing a stale cgroup of the same name");
            Cgroup {
                version: self.version,
                dirs: stale,
            }
            .remove()?;
        }
        // Built up as directories are made, so an error drops (and removes) what exists so far.
        let mut cgroup = Cgroup {
            version: self.version,
            dirs: Vec::with_capacity(dirs.len()),
        };
        for (h, dir) in dirs {
            fs::create_dir(&dir).map_err(|e| context(e, "creating", &dir))?;
            cgroup.dirs.push((h, dir));
        }
        let memory = limits.memory_bytes.to_string();
        let pids = limits.max_processes.to_string();
        for (h, dir) in &cgroup.dirs {
            match h {
                Hierarchy::Unified => {
                    write_file(&dir.join("memory.max"), &memory)?;
                    let swap = dir.join("memory.swap.max");
                    if swap.exists() {
                        write_file(&swap, "0")?;
                    }
                    write_file(&dir.join("pids.max"), &pids)?;
                }
                Hierarchy::Memory => {
                    write_file(&dir.join("memory.limit_in_bytes"), &memory)?;
                    // memsw must stay >= the memory limit, so it is set after it.
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write_file(&memsw, &memory)?;
                    }
                }
                Hierarchy::Pids => write_file(&dir.join("pids.max"), &pids)?,
                Hierarchy::Cpuacct => {}
            }
        }
        Ok(cgroup)
    }

    /// Removes leftover cgroups under the cflow parent(s) from earlier runs of a process that
    /// died (killing their processes). Returns how many were removed. Called at startup.
    pub fn sweep(&self) -> usize {
        let mut names = BTreeSet::new();
        for (_, base) in &self.bases {
            for name in subdirs(base) {
                names.insert(name);
            }
        }
        let mut removed = 0;
        for name in names {
            // Runs are named `<supervisor pid>-...`: a live supervisor's runs are its own business
            // (several servers, or several tests, share one host).
            if owner_alive(&name) {
                continue;
            }
            let dirs: Vec<(Hierarchy, PathBuf)> = self
                .bases
                .iter()
                .map(|(h, base)| (*h, base.join(&name)))
                .filter(|(_, d)| d.is_dir())
                .collect();
            let cgroup = Cgroup {
                version: self.version,
                dirs,
            };
            match cgroup.remove() {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(name, error = %e, "cannot remove a leftover cgroup"),
            }
        }
        removed
    }
}

/// One run's cgroup(s). Dropping it removes them (best effort, killing what is left).
#[derive(Debug)]
pub struct Cgroup {
    version: Version,
    dirs: Vec<(Hierarchy, PathBuf)>,
}

/// Counters for the attempt record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Processes the kernel's OOM killer killed in this cgroup (v1: `oom_kill` line of
    /// memory.oom_control; v2: `oom_kill` in memory.events).
    pub oom_kills: u64,
    /// Times a fork failed on pids.max (v1 and v2: `max` line of pids.events).
    pub pids_max_hits: u64,
    /// Highest memory use (v1: memory.max_usage_in_bytes; v2: memory.peak when present).
    pub memory_peak_bytes: Option<u64>,
    /// CPU time of the whole tree (v1: cpuacct.usage in ns; v2: usage_usec in cpu.stat).
    pub cpu_usage_ns: Option<u64>,
}

impl Cgroup {
    /// The `cgroup.procs` files a process writes its pid into to join (v1: one per hierarchy:
    /// memory, pids, cpuacct if available; v2: one).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|(_, d)| d.join("cgroup.procs"))
            .collect()
    }

    /// Counters for the attempt record (zero or `None` where a file cannot be read).
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        for (h, dir) in &self.dirs {
            match h {
                Hierarchy::Unified => {
                    stats.oom_kills = keyed(&dir.join("memory.events"), "oom_kill").unwrap_or(0);
                    stats.pids_max_hits = keyed(&dir.join("pids.events"), "max").unwrap_or(0);
                    stats.memory_peak_bytes = single(&dir.join("memory.peak"));
                    stats.cpu_usage_ns = keyed(&dir.join("cpu.stat"), "usage_usec")
                        .map(|us| us.saturating_mul(1000));
                }
                Hierarchy::Memory => {
                    stats.oom_kills =
                        keyed(&dir.join("memory.oom_control"), "oom_kill").unwrap_or(0);
                    stats.memory_peak_bytes = single(&dir.join("memory.max_usage_in_bytes"));
                }
                Hierarchy::Pids => {
                    stats.pids_max_hits = keyed(&dir.join("pids.events"), "max").unwrap_or(0);
                }
                Hierarchy::Cpuacct => {
                    stats.cpu_usage_ns = single(&dir.join("cpuacct.usage"));
                }
            }
        }
        stats
    }

    /// SIGKILLs every process in the cgroup(s). On v2 with `cgroup.kill` the kernel does it in
    /// one step; otherwise the members are listed and signalled until none is left or only
    /// already-signalled (dying) ones remain, for at most two seconds, since processes may fork
    /// meanwhile. Returns the number of processes signalled.
    pub fn kill_all(&self) -> io::Result<usize> {
        if self.version == Version::V2
            && let Some((_, dir)) = self.dirs.first()
        {
            let kill = dir.join("cgroup.kill");
            if kill.exists() {
                let members = self.members()?.len();
                write_file(&kill, "1")?;
                return Ok(members);
            }
        }
        let own = std::process::id() as libc::pid_t;
        let deadline = Instant::now() + KILL_DEADLINE;
        let mut signalled: HashSet<libc::pid_t> = HashSet::new();
        let mut quiet_rounds = 0;
        loop {
            let members = self.members()?;
            if members.is_empty() {
                break;
            }
            let mut new = 0;
            for pid in members {
                if pid == own {
                    tracing::warn!(
                        pid,
                        "the supervisor itself is in a run's cgroup; not killed"
                    );
                    continue;
                }
                // Signalled again every round: harmless for a dying process, and it catches a
                // pid reused by a fork in the meantime.
                send_sigkill(pid);
                if signalled.insert(pid) {
                    new += 1;
                }
            }
            if new == 0 {
                // Only processes already signalled are left: they are exiting. A few quiet
                // rounds rule out forks that were in flight while we listed.
                quiet_rounds += 1;
                if quiet_rounds >= 3 {
                    break;
                }
            } else {
                quiet_rounds = 0;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(signalled.len())
    }

    /// Whether no process is left (a cgroup that cannot be read counts as empty).
    pub fn is_empty(&self) -> bool {
        self.members().map(|m| m.is_empty()).unwrap_or(true)
    }

    /// Kills every process, waits until the cgroup is empty (at most two seconds) and removes
    /// every directory (retrying briefly while the kernel still reports it busy).
    pub fn remove(mut self) -> io::Result<()> {
        self.cleanup()
    }

    fn cleanup(&mut self) -> io::Result<()> {
        let mut first_error = self.kill_all().err();
        let deadline = Instant::now() + KILL_DEADLINE;
        let mut last_kill = Instant::now();
        while !self.is_empty() && Instant::now() < deadline {
            if last_kill.elapsed() >= Duration::from_millis(100) {
                if let Err(e) = self.kill_all() {
                    first_error.get_or_insert(e);
                }
                last_kill = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for (_, dir) in std::mem::take(&mut self.dirs) {
            if let Err(e) = rmdir_tree(&dir) {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every pid in the cgroup(s) and their sub-cgroups, without duplicates.
    fn members(&self) -> io::Result<Vec<libc::pid_t>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (_, dir) in &self.dirs {
            collect_pids(dir, &mut seen, &mut out)?;
        }
        Ok(out)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.dirs.is_empty() {
            return;
        }
        if let Err(e) = self.cleanup() {
            tracing::warn!(error = %e, "cannot remove a run's cgroup");
        }
    }
}

/// Discovery from the text of `/proc/self/cgroup` and `/proc/self/mountinfo` (the directories
/// themselves are real): v2 first, then v1.
fn discover_from(own: &str, mountinfo: &str, parent: &str) -> Result<CgroupHost, String> {
    let memberships = parse_proc_cgroup(own);
    let mounts = parse_mountinfo(mountinfo);
    let v2 = match discover_v2(&memberships, &mounts, parent) {
        Ok(host) => return Ok(host),
        Err(why) => why,
    };
    match discover_v1(&memberships, &mounts, parent) {
        Ok(host) => {
            tracing::debug!(why = %v2, "cgroup v2 unusable, using v1");
            Ok(host)
        }
        Err(v1) => Err(format!("{v2} and {v1}")),
    }
}

fn discover_v2(
    memberships: &[Membership],
    mounts: &[Mount],
    parent: &str,
) -> Result<CgroupHost, String> {
    let Some(path) = memberships
        .iter()
        .find(|m| m.id == "0" && m.controllers.is_empty())
        .map(|m| m.path.as_str())
    else {
        return Err("this process is in no cgroup v2".to_string());
    };
    let candidates: Vec<&Mount> = mounts.iter().filter(|m| m.fstype == "cgroup2").collect();
    if candidates.is_empty() {
        return Err("cgroup v2 is not mounted".to_string());
    }
    let Some(own) = candidates
        .iter()
        .filter_map(|m| m.dir_of(path))
        .find(|d| d.is_dir())
    else {
        return Err(format!(
            "our own cgroup v2 ({path}) is not visible under any cgroup2 mount"
        ));
    };
    let available = read_words(&own.join("cgroup.controllers"));
    let missing: Vec<&str> = ["memory", "pids"]
        .into_iter()
        .filter(|c| !available.iter().any(|a| a == c))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "cgroup v2 has no {} controller delegated here (cgroup.controllers: {})",
            missing.join(" or "),
            if available.is_empty() {
                "empty".to_string()
            } else {
                available.join(" ")
            }
        ));
    }
    let control = own.join("cgroup.subtree_control");
    let enabled = read_words(&control);
    if !["memory", "pids"]
        .iter()
        .all(|c| enabled.iter().any(|e| e == c))
    {
        write_file(&control, "+memory +pids").map_err(|e| {
            let hint = if e.raw_os_error() == Some(libc::EBUSY) {
                " (our own cgroup has processes in it; run cflow in a leaf cgroup of a delegated \
                 subtree whose parent enables memory and pids, or use cgroup v1)"
            } else {
                ""
            };
            format!("cgroup v2 controllers cannot be enabled: {e}{hint}")
        })?;
    }
    let base = own.join(parent);
    let created = make_dir(&base).map_err(|e| format!("cgroup v2: {e}"))?;
    if let Err(e) = write_file(&base.join("cgroup.subtree_control"), "+memory +pids") {
        if created {
            let _ = fs::remove_dir(&base);
        }
        return Err(format!("cgroup v2 controllers cannot be enabled: {e}"));
    }
    Ok(CgroupHost {
        version: Version::V2,
        bases: vec![(Hierarchy::Unified, base)],
    })
}

fn discover_v1(
    memberships: &[Membership],
    mounts: &[Mount],
    parent: &str,
) -> Result<CgroupHost, String> {
    let memory = v1_own_dir(memberships, mounts, "memory")?;
    let pids = v1_own_dir(memberships, mounts, "pids")?;
    let cpuacct = v1_own_dir(memberships, mounts, "cpuacct").ok();
    let mut bases = Vec::new();
    let mut created = Vec::new();
    let wanted = [
        (Hierarchy::Memory, Some(memory)),
        (Hierarchy::Pids, Some(pids)),
        (Hierarchy::Cpuacct, cpuacct),
    ];
    for (h, own) in wanted {
        let Some(own) = own else { continue };
        let base = own.join(parent);
        match make_dir(&base) {
            Ok(new) => {
                if new {
                    created.push(base.clone());
                }
                bases.push((h, base));
            }
            // Without cpuacct only the CPU time is not accounted.
            Err(e) if h == Hierarchy::Cpuacct => {
                tracing::debug!(error = %e, "cgroup v1 cpuacct hierarchy not writable");
            }
            Err(e) => {
                for dir in created {
                    let _ = fs::remove_dir(dir);
                }
                return Err(format!(
                    "cgroup v1 {} hierarchy is not writable: {e}",
                    h.label()
                ));
            }
        }
    }
    Ok(CgroupHost {
        version: Version::V1,
        bases,
    })
}

/// Our own cgroup's directory in the v1 hierarchy holding `controller`.
fn v1_own_dir(
    memberships: &[Membership],
    mounts: &[Mount],
    controller: &str,
) -> Result<PathBuf, String> {
    let candidates: Vec<&Mount> = mounts
        .iter()
        .filter(|m| m.fstype == "cgroup" && m.super_opts.iter().any(|o| o == controller))
        .collect();
    if candidates.is_empty() {
        return Err(format!("cgroup v1 {controller} hierarchy is not mounted"));
    }
    let Some(path) = memberships
        .iter()
        .find(|m| m.controllers.iter().any(|c| c == controller))
        .map(|m| m.path.as_str())
    else {
        return Err(format!(
            "this process is in no cgroup v1 {controller} hierarchy"
        ));
    };
    candidates
        .iter()
        .filter_map(|m| m.dir_of(path))
        .find(|d| d.is_dir())
        .ok_or_else(|| {
            format!("our own cgroup v1 {controller} cgroup ({path}) is not visible under any mount")
        })
}

/// One line of `/proc/self/cgroup`: `id:controllers:path`.
#[derive(Debug)]
struct Membership {
    id: String,
    controllers: Vec<String>,
    path: String,
}

fn parse_proc_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let id = parts.next()?.to_string();
            let controllers = parts
                .next()?
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            let path = parts.next()?.to_string();
            Some(Membership {
                id,
                controllers,
                path,
            })
        })
        .collect()
}

/// The parts of a `/proc/self/mountinfo` line discovery needs.
#[derive(Debug)]
struct Mount {
    /// The directory of the filesystem mounted here (a cgroup path for cgroup mounts).
    root: String,
    point: PathBuf,
    fstype: String,
    super_opts: Vec<String>,
}

impl Mount {
    /// Where cgroup `path` of this mount's hierarchy appears, if it is under the mount's root.
    fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let root = self.root.trim_end_matches('/');
        let rest = if root.is_empty() {
            path
        } else {
            let rest = path.strip_prefix(root)?;
            if !rest.is_empty() && !rest.starts_with('/') {
                return None;
            }
            rest
        };
        let rest = rest.trim_start_matches('/');
        if rest.split('/').any(|c| c == "..") {
            return None;
        }
        Some(if rest.is_empty() {
            self.point.clone()
        } else {
            self.point.join(rest)
        })
    }
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            if sep < 5 || fields.len() < sep + 4 {
                return None;
            }
            Some(Mount {
                root: unescape(fields[3]),
                point: PathBuf::from(unescape(fields[4])),
                fstype: fields[sep + 1].to_string(),
                super_opts: fields[sep + 3].split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty()
        || name.len() > 200
        || name.starts_with('.')
        || name.contains('/')
        || name.contains('\0')
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid cgroup name"),
        ));
    }
    Ok(())
}

/// Creates `dir` unless it exists; says whether it was created.
fn make_dir(dir: &Path) -> Result<bool, String> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(false),
        Err(e) => Err(format!("cannot create {}: {e}", dir.display())),
    }
}

/// Writes `value` to an existing cgroup control file in one write.
fn write_file(path: &Path, value: &str) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| context(e, "opening", path))?;
    file.write_all(value.as_bytes())
        .map_err(|e| context(e, &format!("writing {value:?} to"), path))
}

fn context(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

fn read_words(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// The value of the `key value` line of a flat keyed file.
fn keyed(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        (parts.next()? == key).then_some(())?;
        parts.next()?.parse().ok()
    })
}

/// A file holding one number.
fn single(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Names of the subdirectories of `dir` (the child cgroups).
fn subdirs(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Adds the pids of `dir`'s `cgroup.procs` and of its sub-cgroups; a vanished cgroup is empty.
fn collect_pids(
    dir: &Path,
    seen: &mut HashSet<libc::pid_t>,
    out: &mut Vec<libc::pid_t>,
) -> io::Result<()> {
    let text = match fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(context(e, "reading", &dir.join("cgroup.procs"))),
    };
    for pid in text
        .lines()
        .filter_map(|l| l.trim().parse::<libc::pid_t>().ok())
    {
        if pid > 0 && seen.insert(pid) {
            out.push(pid);
        }
    }
    for sub in subdirs(dir) {
        collect_pids(&dir.join(sub), seen, out)?;
    }
    Ok(())
}

fn send_sigkill(pid: libc::pid_t) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; `pid` is positive (a
    // single process, never a group or "every process"), and a pid that has already exited
    // just yields ESRCH, which is ignored.
    let _ = unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// Removes a cgroup directory and any sub-cgroups, retrying briefly on `EBUSY`. A directory
/// that is already gone is fine.
fn rmdir_tree(dir: &Path) -> io::Result<()> {
    for sub in subdirs(dir) {
        rmdir_tree(&dir.join(sub))?;
    }
    let deadline = Instant::now() + RMDIR_DEADLINE;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(context(e, "removing", dir)),
        }
    }
}

/// Whether the name starts with the pid of a live process (`<pid>-...`), this one included. A
/// reused pid only delays the sweep of that cgroup to a later start.
fn owner_alive(name: &str) -> bool {
    let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::MIB;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command, ExitStatus, Stdio};

    fn name(tag: &str) -> String {
        format!("test-{}-{tag}", std::process::id())
    }

    /// Starts `argv` so that it runs inside `cgroup`: a shell waits for a line on stdin, which
    /// is sent once its pid has been written to every procs file, then execs the command.
    fn spawn_in(cgroup: &Cgroup, argv: &[&str]) -> Child {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("read _ && exec \"$@\"")
            .arg("sh")
            .args(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh");
        for file in cgroup.procs_files() {
            write_file(&file, &child.id().to_string()).expect("join the cgroup");
        }
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"go\n").expect("release the child");
        drop(stdin);
        child
    }

    fn wait_for(child: &mut Child, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("child did not end within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn host() -> CgroupHost {
        CgroupHost::discover().expect("cgroups usable on this machine")
    }

    #[test]
    fn discover_finds_v1_here() {
        let host = host();
        assert_eq!(host.version(), Version::V1);
        let summary = host.describe();
        assert!(summary.starts_with("cgroup v1 (memory at "), "{summary}");
        assert!(summary.contains("pids at "), "{summary}");
        // Nested under our own memory cgroup, whatever it is.
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let memory_path = own
            .lines()
            .map(|l| l.splitn(3, ':').collect::<Vec<_>>())
            .find(|p| p.len() == 3 && p[1].split(',').any(|c| c == "memory"))
            .map(|p| p[2].to_string())
            .unwrap();
        let memory_base = &host.bases[0].1;
        assert!(
            memory_base.ends_with(Path::new(memory_path.trim_start_matches('/')).join(PARENT)),
            "{} not under {memory_path}",
            memory_base.display()
        );
        assert!(host.bases.iter().all(|(_, b)| b.is_dir()));
    }

    #[test]
    fn create_join_kill_remove() {
        let host = host();
        let limits = Limits::default();
        let cgroup = host.create(&name("basic"), &limits).unwrap();
        let dirs: Vec<PathBuf> = cgroup.dirs.iter().map(|(_, d)| d.clone()).collect();
        assert!(dirs.iter().all(|d| d.is_dir()));
        let files = cgroup.procs_files();
        assert!(files.len() >= 2, "{files:?}");
        assert!(
            files
                .iter()
                .all(|f| f.ends_with("cgroup.procs") && f.exists())
        );
        // The limits are in place.
        let memory_dir = &cgroup.dirs[0].1;
        assert_eq!(
            single(&memory_dir.join("memory.limit_in_bytes")),
            Some(limits.memory_bytes)
        );
        let pids_dir = &cgroup.dirs[1].1;
        assert_eq!(
            fs::read_to_string(pids_dir.join("pids.max"))
                .unwrap()
                .trim(),
            limits.max_processes.to_string()
        );

        assert!(cgroup.is_empty());
        let mut child = spawn_in(&cgroup, &["sleep", "30"]);
        // Wait until the exec'd sleep has burnt a little CPU time (the exec itself is enough).
        std::thread::sleep(Duration::from_millis(100));
        assert!(!cgroup.is_empty());
        let members = cgroup.members().unwrap();
        assert_eq!(members, vec![child.id() as libc::pid_t]);
        let stats = cgroup.stats();
        assert_eq!(stats.oom_kills, 0);
        assert_eq!(stats.pids_max_hits, 0);
        assert!(stats.memory_peak_bytes.unwrap() > 0, "{stats:?}");
        assert!(stats.cpu_usage_ns.unwrap() > 0, "{stats:?}");

        assert_eq!(cgroup.kill_all().unwrap(), 1);
        let status = wait_for(&mut child, Duration::from_secs(5));
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(cgroup.is_empty());
        cgroup.remove().unwrap();
        assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?}");
    }

    #[test]
    fn memory_limit_ooms_the_tree() {
        let host = host();
        let limits = Limits {
            memory_bytes: 32 * MIB,
            ..Limits::default()
        };
        let cgroup = host.create(&name("oom"), &limits).unwrap();
        let mut child = spawn_in(
            &cgroup,
            &["python3", "-c", "b = b'x' * (200 * 1024 * 1024)"],
        );
        let status = wait_for(&mut child, Duration::from_secs(30));
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        let stats = cgroup.stats();
        assert!(stats.oom_kills >= 1, "{stats:?}");
        assert!(stats.memory_peak_bytes.unwrap() <= 32 * MIB, "{stats:?}");
        let dirs: Vec<PathBuf> = cgroup.dirs.iter().map(|(_, d)| d.clone()).collect();
        cgroup.remove().unwrap();
        assert!(dirs.iter().all(|d| !d.exists()));
    }

    #[test]
    fn pids_limit_stops_forks() {
        let host = host();
        let limits = Limits {
            max_processes: 5,
            ..Limits::default()
        };
        let cgroup = host.create(&name("pids"), &limits).unwrap();
        let mut child = spawn_in(
            &cgroup,
            &[
                "sh",
                "-c",
                "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 2 & done; wait",
            ],
        );
        let _ = wait_for(&mut child, Duration::from_secs(20));
        let stats = cgroup.stats();
        assert!(stats.pids_max_hits >= 1, "{stats:?}");
        let dirs: Vec<PathBuf> = cgroup.dirs.iter().map(|(_, d)| d.clone()).collect();
        cgroup.remove().unwrap();
        assert!(dirs.iter().all(|d| !d.exists()));
    }

    #[test]
    fn kill_all_gets_a_whole_tree() {
        let host = host();
        let cgroup = host.create(&name("tree"), &Limits::default()).unwrap();
        let mut child = spawn_in(
            &cgroup,
            &["sh", "-c", "sleep 30 & sleep 30 & sleep 30 & wait"],
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while cgroup.members().unwrap().len() < 4 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(cgroup.members().unwrap().len(), 4);
        assert_eq!(cgroup.kill_all().unwrap(), 4);
        let status = wait_for(&mut child, Duration::from_secs(5));
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // The orphaned sleeps are reaped by init; the cgroup empties all the same.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !cgroup.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(cgroup.is_empty());
        cgroup.remove().unwrap();
    }

    #[test]
    fn a_stale_cgroup_of_the_same_name_is_replaced() {
        let host = host();
        let run = name("stale");
        let old = host.create(&run, &Limits::default()).unwrap();
        let mut child = spawn_in(&old, &["sleep", "30"]);
        std::mem::forget(old);
        let new = host.create(&run, &Limits::default()).unwrap();
        let status = wait_for(&mut child, Duration::from_secs(5));
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(new.is_empty());
        let dirs: Vec<PathBuf> = new.dirs.iter().map(|(_, d)| d.clone()).collect();
        drop(new);
        assert!(dirs.iter().all(|d| !d.exists()));
    }

    #[test]
    fn sweep_removes_leftovers() {
        // A parent of its own, so that sweeping cannot touch the other tests' cgroups.
        let parent = format!("cflow-test-sweep-{}", std::process::id());
        let host = CgroupHost::discover_with_parent(&parent).unwrap();
        let cgroup = host.create("leftover", &Limits::default()).unwrap();
        let dirs: Vec<PathBuf> = cgroup.dirs.iter().map(|(_, d)| d.clone()).collect();
        let mut child = spawn_in(&cgroup, &["sleep", "30"]);
        std::mem::forget(cgroup);
        assert!(dirs.iter().all(|d| d.is_dir()));
        assert_eq!(host.sweep(), 1);
        let status = wait_for(&mut child, Duration::from_secs(5));
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(dirs.iter().all(|d| !d.exists()));
        assert_eq!(host.sweep(), 0);
        for (_, base) in &host.bases {
            fs::remove_dir(base).unwrap();
        }
    }

    #[test]
    fn bad_names_are_refused() {
        let host = host();
        for bad in ["", ".", "..", ".hidden", "a/b", "a\0b"] {
            let err = host.create(bad, &Limits::default()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn dropping_removes_the_cgroup() {
        let host = host();
        let cgroup = host.create(&name("drop"), &Limits::default()).unwrap();
        let dirs: Vec<PathBuf> = cgroup.dirs.iter().map(|(_, d)| d.clone()).collect();
        let mut child = spawn_in(&cgroup, &["sleep", "30"]);
        drop(cgroup);
        let status = wait_for(&mut child, Duration::from_secs(5));
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(dirs.iter().all(|d| !d.exists()));
    }

    // Discovery logic on made-up hosts (plain directories standing in for cgroupfs).

    const V1_PROC: &str = "4:memory:/process_api/abc\n8:pids:/\n2:cpuacct:/\n0::/\n";

    #[test]
    fn parses_proc_cgroup_and_mountinfo() {
        let m = parse_proc_cgroup(V1_PROC);
        assert_eq!(m[0].controllers, ["memory"]);
        assert_eq!(m[0].path, "/process_api/abc");
        assert!(m[3].controllers.is_empty());
        let mounts = parse_mountinfo(
            "30 25 0:26 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory\n\
             31 25 0:27 /process_api /mnt/my\\040cg rw - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        assert_eq!(mounts[0].fstype, "cgroup");
        assert_eq!(mounts[0].super_opts, ["rw", "memory"]);
        assert_eq!(mounts[1].point, Path::new("/mnt/my cg"));
        assert_eq!(
            mounts[0].dir_of("/process_api/abc"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"))
        );
        assert_eq!(
            mounts[1].dir_of("/process_api/abc"),
            Some(PathBuf::from("/mnt/my cg/abc"))
        );
        assert_eq!(
            mounts[1].dir_of("/process_api"),
            Some(PathBuf::from("/mnt/my cg"))
        );
        assert_eq!(mounts[1].dir_of("/process_apix"), None);
        assert_eq!(mounts[1].dir_of("/other"), None);
    }

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn pure_v2_host_with_delegation() {
        let tmp = tempdir();
        let own = tmp.path().join("user.slice/cflow.service");
        fs::create_dir_all(own.join(PARENT)).unwrap();
        fs::write(own.join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
        fs::write(own.join("cgroup.subtree_control"), "").unwrap();
        fs::write(own.join(PARENT).join("cgroup.subtree_control"), "").unwrap();
        let mountinfo = format!(
            "35 24 0:30 / {} rw - cgroup2 cgroup2 rw\n",
            tmp.path().display()
        );
        let host = discover_from("0::/user.slice/cflow.service\n", &mountinfo, PARENT).unwrap();
        assert_eq!(host.version(), Version::V2);
        assert_eq!(host.bases, vec![(Hierarchy::Unified, own.join(PARENT))]);
        // Both levels were asked for the controllers.
        assert_eq!(
            fs::read_to_string(own.join("cgroup.subtree_control")).unwrap(),
            "+memory +pids"
        );
        assert_eq!(
            fs::read_to_string(own.join(PARENT).join("cgroup.subtree_control")).unwrap(),
            "+memory +pids"
        );
        assert!(
            host.describe()
                .starts_with("cgroup v2 (memory and pids at ")
        );
    }

    #[test]
    fn nothing_usable_says_what_is_missing() {
        let tmp = tempdir();
        fs::write(tmp.path().join("cgroup.controllers"), "hugetlb\n").unwrap();
        let mountinfo = format!(
            "35 24 0:30 / {} rw - cgroup2 cgroup2 rw\n",
            tmp.path().display()
        );
        let err = discover_from("0::/\n", &mountinfo, PARENT).unwrap_err();
        assert_eq!(
            err,
            "cgroup v2 has no memory or pids controller delegated here (cgroup.controllers: \
             hugetlb) and cgroup v1 memory hierarchy is not mounted"
        );
        let err = discover_from("", "", PARENT).unwrap_err();
        assert_eq!(
            err,
            "this process is in no cgroup v2 and cgroup v1 memory hierarchy is not mounted"
        );
    }

    #[test]
    fn v1_host_nests_under_own_cgroup() {
        let tmp = tempdir();
        let memory = tmp.path().join("memory");
        let pids = tmp.path().join("pids");
        fs::create_dir_all(memory.join("process_api/abc")).unwrap();
        fs::create_dir_all(&pids).unwrap();
        let mountinfo = format!(
            "30 25 0:26 / {} rw - cgroup cgroup rw,memory\n\
             31 25 0:27 / {} rw - cgroup cgroup rw,pids\n",
            memory.display(),
            pids.display()
        );
        let host = discover_from(V1_PROC, &mountinfo, PARENT).unwrap();
        assert_eq!(host.version(), Version::V1);
        assert_eq!(
            host.bases,
            vec![
                (
                    Hierarchy::Memory,
                    memory.join("process_api/abc").join(PARENT)
                ),
                (Hierarchy::Pids, pids.join(PARENT)),
            ]
        );
        assert!(memory.join("process_api/abc/cflow").is_dir());
    }
}
