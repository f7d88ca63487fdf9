//! Per-task workspaces: the one directory an agent command may write.
//!
//! A workspace is `<root>/<id>`, made fresh for each run from a [`Source`]: an empty directory, a
//! copy of a host directory, or a git checkout (a `git worktree add --detach` of a local
//! repository, or a `git clone` of a URL). It is then handed to the sandbox's user (`chown -R`
//! with `lchown`, see [`Config::owner`]).
//!
//! # What is kept, what is cleaned
//! - A run that **succeeded** has its workspace removed by [`Workspace::finish`] at once, and a
//!   worktree's registration in its source repository is dropped.
//! - A run that **failed** keeps its workspace for debugging: `finish` writes the sibling marker
//!   `<root>/<id>.keep-until` (a unix time in seconds) and [`sweep`] removes the workspace once
//!   that time has passed.
//! - A directory under the root with no marker that no live run owns (left by a crash) is removed
//!   by [`sweep`]; one with the same id as a new workspace is removed by [`Workspace::create`].
//! - For worktrees, the sibling marker `<root>/<id>.worktree-of` records the source repository
//!   (written by the supervisor before the worktree exists, outside the workspace, so the agent
//!   cannot forge it) so a crashed run's registration can be dropped later.
//!
//! # The symlink rule
//! Everything inside a workspace was written by an untrusted program. The supervisor therefore
//! never follows a symlink found there: walks use `lstat` and never descend into a symlinked
//! directory, ownership is changed with `lchown`, removal uses `remove_dir_all` (which unlinks
//! symlinks rather than following them). A [`Source::Copy`] copies symlinks as symlinks and
//! skips special files. The supervisor never runs git inside a workspace after the agent ran (a
//! hostile `.git/config` could run code): a worktree is unregistered with
//! `git -C <source repo> worktree remove --force` only after the directory is already gone.
//!
//! Every git call gets `-c core.hooksPath=/dev/null`, `-c safe.directory=<path>` for the paths it
//! touches, `GIT_TERMINAL_PROMPT=0`, a null stdin, and no inherited `GIT_DIR`-like variables.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where a task's workspace comes from (the `workspace` field of an exec task's spec).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Source {
    /// An empty directory.
    #[default]
    Empty,
    /// A copy of a directory on the worker's host (symlinks copied as symlinks, never followed;
    /// special files skipped).
    Copy { path: PathBuf },
    /// A checkout of a git repository at a ref (branch, tag or commit; default `HEAD`). When
    /// `repo` is an absolute path to a directory (a local repository), a
    /// `git worktree add --detach` of it (cheap, shares objects); otherwise `git clone` (URL)
    /// then a detached checkout of the ref.
    Git {
        repo: String,
        #[serde(default, rename = "ref")]
        rev: Option<String>,
    },
}

impl Source {
    /// Checks the source without touching the disk: a copy path must be absolute; a git repo must
    /// be non-empty and not look like an option; a ref must not start with `-` nor contain
    /// whitespace or control characters. The error says what to do.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Source::Empty => Ok(()),
            Source::Copy { path } => {
                if path.as_os_str().is_empty() {
                    return Err("copy source path is empty — give the absolute path of a directory on the worker's host".into());
                }
                if !path.is_absolute() {
                    return Err(format!(
                        "copy source path '{}' is relative — give the absolute path of a directory on the worker's host",
                        path.display()
                    ));
                }
                if path.as_os_str().as_encoded_bytes().contains(&0) {
                    return Err(
                        "copy source path contains a NUL byte — give a plain absolute path".into(),
                    );
                }
                Ok(())
            }
            Source::Git { repo, rev } => {
                if repo.trim().is_empty() {
                    return Err("git source has an empty `repo` — give a repository URL or the absolute path of a local repository".into());
                }
                if repo.starts_with('-') {
                    return Err(format!(
                        "git repo '{repo}' starts with '-' — give a repository URL or an absolute path"
                    ));
                }
                if repo.chars().any(char::is_control) {
                    return Err("git repo contains control characters — give a plain repository URL or path".into());
                }
                if let Some(rev) = rev {
                    if rev.is_empty() {
                        return Err("git `ref` is empty — give a branch, tag or commit, or leave `ref` out for HEAD".into());
                    }
                    if rev.starts_with('-') {
                        return Err(format!(
                            "git ref '{rev}' starts with '-' — give a branch, tag or commit name"
                        ));
                    }
                    if rev.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        return Err(format!(
                            "git ref {rev:?} contains whitespace or control characters — give a branch, tag or commit name"
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}

/// Where workspaces live and how long failed ones are kept.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory under which workspaces are created (created if missing, mode 0711).
    pub root: PathBuf,
    /// How long a failed task's workspace is kept for debugging before [`sweep`] removes it.
    pub keep_failed_for: Duration,
    /// Host uid/gid that must own the workspace (the sandbox's user), or None to leave it as
    /// created.
    pub owner: Option<(u32, u32)>,
}

/// One task's workspace, `<root>/<id>`.
#[derive(Debug)]
pub struct Workspace {
    /// `<root>/<id>`, the directory the command works in.
    pub path: PathBuf,
    /// What it was made from.
    pub source: Source,
    /// For git sources: the full commit id checked out (what the patch is taken against).
    pub base_commit: Option<String>,
    root: PathBuf,
    id: String,
    /// The local repository this is a worktree of, if it is one.
    worktree_of: Option<PathBuf>,
}

/// Why a workspace could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "workspace id {0:?} is not a safe name — use only letters, digits, '.', '_' and '-', not starting with '.'"
    )]
    UnsafeId(String),
    #[error("invalid workspace source: {0}")]
    InvalidSource(String),
    #[error(
        "copy source '{0}' is not a directory — give an existing directory on the worker's host"
    )]
    CopySourceNotDir(PathBuf),
    #[error("{context}: {source} — check the path and its permissions")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("git checkout of '{repo}' at '{rev}' failed: {detail} — check the repository and ref")]
    Git {
        repo: String,
        rev: String,
        detail: String,
    },
    #[error(
        "could not hand '{path}' to uid {uid} gid {gid}: {source} — run cflow as root, or leave the workspace owner unset"
    )]
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
        #[source]
        source: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Whether `id` may name a workspace directory.
fn safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

const KEEP_SUFFIX: &str = ".keep-until";
const WORKTREE_SUFFIX: &str = ".worktree-of";

fn marker(root: &Path, id: &str, suffix: &str) -> PathBuf {
    root.join(format!("{id}{suffix}"))
}

/// A git command with the safety settings every call gets.
fn git(safe_dirs: &[&Path]) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("-c").arg("core.hooksPath=/dev/null");
    for dir in safe_dirs {
        let mut kv = std::ffi::OsString::from("safe.directory=");
        kv.push(dir.as_os_str());
        cmd.arg("-c").arg(kv);
    }
    cmd.env("GIT_TERMINAL_PROMPT", "0");
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_COMMON_DIR",
        "GIT_NAMESPACE",
        "GIT_CONFIG_PARAMETERS",
        "GIT_CONFIG_COUNT",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs a git command; Ok(stdout) or Err(the last lines of stderr).
fn run_git(mut cmd: Command) -> Result<Vec<u8>, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("could not run git: {e} (is git installed?)"))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    Err(if tail.is_empty() {
        format!("git exited with {}", out.status)
    } else {
        tail
    })
}

/// Drops `path`'s registration as a worktree of `repo` (the directory should already be gone:
/// git is never run inside it). Falls back to `git worktree prune`.
fn unregister_worktree(repo: &Path, path: &Path) {
    let mut cmd = git(&[repo]);
    cmd.arg("-C")
        .arg(repo)
        .args(["worktree", "remove", "--force", "--force", "--"])
        .arg(path);
    if let Err(e) = run_git(cmd) {
        tracing::debug!(repo = %repo.display(), path = %path.display(), error = %e, "worktree remove failed; pruning");
        let mut cmd = git(&[repo]);
        cmd.arg("-C").arg(repo).args(["worktree", "prune"]);
        if let Err(e) = run_git(cmd) {
            tracing::warn!(repo = %repo.display(), error = %e, "git worktree prune failed");
        }
    }
}

/// Removes whatever is at `path` without following symlinks. Missing is fine.
fn remove_path(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn remove_file_if_any(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes `<root>/<id>`, its worktree registration (per the marker) and its markers.
/// Returns whether a directory was removed.
fn remove_workspace(root: &Path, id: &str) -> io::Result<bool> {
    let path = root.join(id);
    let existed = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
    remove_path(&path)?;
    let wt_marker = marker(root, id, WORKTREE_SUFFIX);
    if let Some(repo) = read_small(&wt_marker) {
        let repo = PathBuf::from(repo.trim_end_matches('\n'));
        if repo.is_absolute() {
            unregister_worktree(&repo, &path);
        }
    }
    remove_file_if_any(&wt_marker)?;
    remove_file_if_any(&marker(root, id, KEEP_SUFFIX))?;
    Ok(existed)
}

/// Reads a small marker file (never following a symlink).
fn read_small(path: &Path) -> Option<String> {
    use std::io::Read;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut s = String::new();
    file.take(64 * 1024).read_to_string(&mut s).ok()?;
    Some(s)
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Workspace {
    /// Creates a fresh workspace `<root>/<id>` (blocking). A stale directory of that name (from
    /// a crash) is removed first, with its worktree registration. Then the tree is handed to
    /// `config.owner` (lchown, never following symlinks; a clone's `.git` included, a worktree's
    /// shared object store not). For a git source, records `base_commit` (`git rev-parse HEAD`).
    pub fn create(config: &Config, id: &str, source: &Source) -> Result<Workspace, Error> {
        if !safe_id(id) {
            return Err(Error::UnsafeId(id.to_string()));
        }
        source.validate().map_err(Error::InvalidSource)?;
        let root = &config.root;
        if !root.is_absolute() {
            return Err(Error::Io {
                context: format!("workspace root '{}'", root.display()),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not an absolute path"),
            });
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(root)
            .map_err(io_err(format!(
                "could not create workspace root '{}'",
                root.display()
            )))?;
        remove_workspace(root, id).map_err(io_err(format!(
            "could not remove the stale workspace '{}'",
            root.join(id).display()
        )))?;

        let path = root.join(id);
        let mut ws = Workspace {
            path: path.clone(),
            source: source.clone(),
            base_commit: None,
            root: root.clone(),
            id: id.to_string(),
            worktree_of: None,
        };
        match ws.populate(config) {
            Ok(()) => Ok(ws),
            Err(e) => {
                if let Err(rm) = remove_workspace(root, id) {
                    tracing::warn!(path = %path.display(), error = %rm, "could not clean up a half-made workspace");
                }
                Err(e)
            }
        }
    }

    fn populate(&mut self, config: &Config) -> Result<(), Error> {
        let path = self.path.clone();
        match self.source.clone() {
            Source::Empty => {
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&path)
                    .map_err(io_err(format!("could not create '{}'", path.display())))?;
            }
            Source::Copy { path: src } => {
                let md = fs::metadata(&src).map_err(|_| Error::CopySourceNotDir(src.clone()))?;
                if !md.is_dir() {
                    return Err(Error::CopySourceNotDir(src));
                }
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&path)
                    .map_err(io_err(format!("could not create '{}'", path.display())))?;
                copy_tree(&src, &path, &self.root)?;
            }
            Source::Git { repo, rev } => {
                let rev_shown = rev.clone().unwrap_or_else(|| "HEAD".into());
                let git_err = |detail: String| Error::Git {
                    repo: repo.clone(),
                    rev: rev_shown.clone(),
                    detail,
                };
                let local = Path::new(&repo);
                if local.is_absolute() && local.is_dir() {
                    // Record the registration before it exists, so a crash can be cleaned up.
                    let mut m = repo.clone();
                    m.push('\n');
                    fs::write(marker(&self.root, &self.id, WORKTREE_SUFFIX), m).map_err(io_err(
                        format!("could not write a marker under '{}'", self.root.display()),
                    ))?;
                    self.worktree_of = Some(local.to_path_buf());
                    let mut cmd = git(&[local, &path]);
                    cmd.arg("-C")
                        .arg(local)
                        .args(["worktree", "add", "--detach", "--quiet", "--"])
                        .arg(&path)
                        .arg(&rev_shown);
                    run_git(cmd).map_err(git_err)?;
                } else {
                    // A `file://` source owned by someone else is trusted like a local path.
                    let from = repo.strip_prefix("file://").map(Path::new);
                    let mut cmd = match from {
                        Some(from) if from.is_absolute() => git(&[&path, from]),
                        _ => git(&[&path]),
                    };
                    cmd.args(["clone", "--quiet", "--no-checkout", "--"])
                        .arg(&repo)
                        .arg(&path);
                    run_git(cmd).map_err(git_err)?;
                    let commit = match &rev {
                        None => None,
                        Some(rev) => {
                            let mut found = None;
                            for cand in [rev.clone(), format!("origin/{rev}")] {
                                let mut cmd = git(&[&path]);
                                cmd.arg("-C").arg(&path).args([
                                    "rev-parse",
                                    "--verify",
                                    "--quiet",
                                    "--end-of-options",
                                    &format!("{cand}^{{commit}}"),
                                ]);
                                if let Ok(out) = run_git(cmd) {
                                    found = Some(String::from_utf8_lossy(&out).trim().to_string());
                                    break;
                                }
                            }
                            Some(found.ok_or_else(|| {
                                git_err(format!(
                                    "no branch, tag or commit named '{rev}' in the clone"
                                ))
                            })?)
                        }
                    };
                    let mut cmd = git(&[&path]);
                    cmd.arg("-C")
                        .arg(&path)
                        .args(["checkout", "--quiet", "--detach"]);
                    if let Some(commit) = &commit {
                        cmd.arg(commit);
                    }
                    run_git(cmd).map_err(git_err)?;
                }
                let mut cmd = git(&[&path]);
                cmd.arg("-C")
                    .arg(&path)
                    .args(["rev-parse", "--verify", "HEAD^{commit}"]);
                let out = run_git(cmd).map_err(git_err)?;
                self.base_commit = Some(String::from_utf8_lossy(&out).trim().to_string());
            }
        }
        if let Some((uid, gid)) = config.owner {
            chown_tree(&path, uid, gid)?;
        }
        Ok(())
    }

    /// Disk use in bytes: the sum of `st_blocks * 512` over everything under the workspace
    /// (lstat, no symlink following, each hard-linked inode counted once). Entries that vanish
    /// or cannot be read during the walk are left out.
    pub fn disk_usage(&self) -> io::Result<u64> {
        let top = fs::symlink_metadata(&self.path)?;
        let mut total = top.blocks() * 512;
        if !top.is_dir() {
            return Ok(total);
        }
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let mut stack = vec![self.path.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(md) = entry.metadata() else { continue }; // lstat semantics
                if md.nlink() > 1 && !md.is_dir() && !seen.insert((md.dev(), md.ino())) {
                    continue;
                }
                total += md.blocks() * 512;
                if md.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        Ok(total)
    }

    /// Ends the workspace. `succeeded`: removed now (and a worktree's registration dropped),
    /// returns `None`. Failed: kept, with the expiry `<root>/<id>.keep-until` (unix seconds)
    /// for [`sweep`]; returns the kept path.
    pub fn finish(self, succeeded: bool, config: &Config) -> io::Result<Option<PathBuf>> {
        if succeeded {
            remove_path(&self.path)?;
            if let Some(repo) = &self.worktree_of {
                unregister_worktree(repo, &self.path);
            }
            remove_file_if_any(&marker(&self.root, &self.id, WORKTREE_SUFFIX))?;
            remove_file_if_any(&marker(&self.root, &self.id, KEEP_SUFFIX))?;
            Ok(None)
        } else {
            let until = unix_secs(SystemTime::now() + config.keep_failed_for);
            let m = marker(&self.root, &self.id, KEEP_SUFFIX);
            // Not a safe id (leading '.'), so `sweep` never takes it for a workspace.
            let tmp = self.root.join(format!(".{}{KEEP_SUFFIX}.tmp", self.id));
            fs::write(&tmp, format!("{until}\n"))?;
            fs::rename(&tmp, &m)?;
            Ok(Some(self.path))
        }
    }
}

/// Removes kept workspaces whose `.keep-until` time is up, and directories with no marker
/// that no live run owns (`live(id)`), with their worktree registrations. Never touches a live
/// id. Returns how many workspaces it removed.
pub fn sweep(config: &Config, now: SystemTime, live: &dyn Fn(&str) -> bool) -> usize {
    let root = &config.root;
    let Ok(entries) = fs::read_dir(root) else {
        return 0;
    };
    let now = unix_secs(now);
    let names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let mut ids: Vec<String> = Vec::new();
    for name in &names {
        let id = name
            .strip_suffix(KEEP_SUFFIX)
            .or_else(|| name.strip_suffix(WORKTREE_SUFFIX))
            .unwrap_or(name);
        if safe_id(id) {
            ids.push(id.to_string());
        }
    }
    ids.sort();
    ids.dedup();
    let mut removed = 0;
    for id in ids {
        if live(&id) {
            continue;
        }
        let keep = marker(root, &id, KEEP_SUFFIX);
        let expired = match fs::symlink_metadata(&keep) {
            Ok(_) => read_small(&keep)
                .and_then(|s| s.trim().parse::<u64>().ok())
                .is_none_or(|until| now >= until),
            // No marker and not live: a leftover from a crash.
            Err(_) => true,
        };
        if !expired {
            continue;
        }
        match remove_workspace(root, &id) {
            Ok(true) => removed += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(path = %root.join(&id).display(), error = %e, "could not remove an expired workspace")
            }
        }
    }
    removed
}

/// Copies the tree under `src` into the existing directory `dst`: directories and regular files
/// (permission bits kept, set-id bits dropped), symlinks as symlinks; special files skipped.
/// Skips the workspace root if it lies inside `src`.
fn copy_tree(src: &Path, dst: &Path, ws_root: &Path) -> Result<(), Error> {
    let skip = fs::metadata(ws_root).ok().map(|m| (m.dev(), m.ino()));
    let mut stack = vec![(src.to_path_buf(), dst.to_path_buf())];
    while let Some((from_dir, to_dir)) = stack.pop() {
        let entries = fs::read_dir(&from_dir)
            .map_err(io_err(format!("could not read '{}'", from_dir.display())))?;
        for entry in entries {
            let entry =
                entry.map_err(io_err(format!("could not read '{}'", from_dir.display())))?;
            let from = entry.path();
            let to = to_dir.join(entry.file_name());
            let md = entry
                .metadata()
                .map_err(io_err(format!("could not stat '{}'", from.display())))?;
            let ft = md.file_type();
            let mode = md.permissions().mode() & 0o777;
            if ft.is_symlink() {
                let target = fs::read_link(&from)
                    .map_err(io_err(format!("could not read link '{}'", from.display())))?;
                std::os::unix::fs::symlink(&target, &to)
                    .map_err(io_err(format!("could not create link '{}'", to.display())))?;
            } else if ft.is_dir() {
                if Some((md.dev(), md.ino())) == skip {
                    continue;
                }
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&to)
                    .map_err(io_err(format!("could not create '{}'", to.display())))?;
                fs::set_permissions(&to, fs::Permissions::from_mode(mode | 0o700))
                    .map_err(io_err(format!("could not set mode of '{}'", to.display())))?;
                stack.push((from, to));
            } else if ft.is_file() {
                let mut input = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(&from)
                    .map_err(io_err(format!("could not open '{}'", from.display())))?;
                let opened = input
                    .metadata()
                    .map_err(io_err(format!("could not stat '{}'", from.display())))?;
                if !opened.is_file() {
                    tracing::debug!(path = %from.display(), "changed into a non-regular file; skipped");
                    continue;
                }
                let mut output = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&to)
                    .map_err(io_err(format!("could not create '{}'", to.display())))?;
                io::copy(&mut input, &mut output)
                    .map_err(io_err(format!("could not copy '{}'", from.display())))?;
                output
                    .set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(io_err(format!("could not set mode of '{}'", to.display())))?;
            } else {
                tracing::debug!(path = %from.display(), "special file skipped in workspace copy");
            }
        }
    }
    Ok(())
}

/// `lchown -R`: never follows a symlink, never descends into a symlinked directory.
fn chown_tree(top: &Path, uid: u32, gid: u32) -> Result<(), Error> {
    let chown = |p: &Path| {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid)).map_err(|source| Error::Chown {
            path: p.to_path_buf(),
            uid,
            gid,
            source,
        })
    };
    chown(top)?;
    let mut stack = vec![top.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            fs::read_dir(&dir).map_err(io_err(format!("could not read '{}'", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(io_err(format!("could not read '{}'", dir.display())))?;
            let p = entry.path();
            chown(&p)?;
            let is_dir = entry
                .file_type()
                .map_err(io_err(format!("could not stat '{}'", p.display())))?
                .is_dir();
            if is_dir {
                stack.push(p);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git_ok(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(["-c", "safe.directory=*"])
            .arg("-C")
            .arg(dir)
            .args(args)
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A repo with two commits: `v1` tag on the first (a.txt = "one"), HEAD on the second.
    fn make_repo(dir: &Path) -> (String, String) {
        fs::create_dir_all(dir).unwrap();
        git_ok(dir, &["init", "-q", "-b", "main"]);
        fs::write(dir.join("a.txt"), "one\n").unwrap();
        git_ok(dir, &["add", "-A"]);
        git_ok(dir, &["commit", "-q", "-m", "one"]);
        git_ok(dir, &["tag", "v1"]);
        let first = git_ok(dir, &["rev-parse", "HEAD"]);
        fs::write(dir.join("a.txt"), "two\n").unwrap();
        fs::write(dir.join("b.txt"), "bee\n").unwrap();
        git_ok(dir, &["add", "-A"]);
        git_ok(dir, &["commit", "-q", "-m", "two"]);
        let second = git_ok(dir, &["rev-parse", "HEAD"]);
        (first, second)
    }

    fn config(root: &Path) -> Config {
        Config {
            root: root.join("ws"),
            keep_failed_for: Duration::from_secs(3600),
            owner: None,
        }
    }

    #[test]
    fn empty_workspace_created_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let ws = Workspace::create(&cfg, "run-1", &Source::Empty).unwrap();
        assert_eq!(ws.path, cfg.root.join("run-1"));
        assert!(ws.path.is_dir());
        assert_eq!(fs::read_dir(&ws.path).unwrap().count(), 0);
        assert_eq!(ws.base_commit, None);
        let root_mode = fs::metadata(&cfg.root).unwrap().permissions().mode() & 0o777;
        assert_eq!(root_mode, 0o711);
        let path = ws.path.clone();
        assert_eq!(ws.finish(true, &cfg).unwrap(), None);
        assert!(!path.exists());
    }

    #[test]
    fn stale_directory_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        fs::create_dir_all(cfg.root.join("run-1/old")).unwrap();
        fs::write(cfg.root.join("run-1/old/f"), "x").unwrap();
        let ws = Workspace::create(&cfg, "run-1", &Source::Empty).unwrap();
        assert_eq!(fs::read_dir(&ws.path).unwrap().count(), 0);
    }

    #[test]
    fn unsafe_ids_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        for id in ["", ".", "..", ".hidden", "a/b", "../x", "a b", "é", "a\0b"] {
            let err = Workspace::create(&cfg, id, &Source::Empty).unwrap_err();
            assert!(matches!(err, Error::UnsafeId(_)), "{id:?}: {err}");
            assert!(err.to_string().contains("not a safe name"));
        }
        assert!(safe_id("task-1.attempt_2"));
    }

    #[test]
    fn copy_keeps_symlinks_as_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let src = tmp.path().join("src");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret"), "secret").unwrap();
        fs::write(src.join("sub/file.txt"), "hello").unwrap();
        fs::set_permissions(src.join("sub/file.txt"), fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::symlink(&outside, src.join("dirlink")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), src.join("filelink")).unwrap();

        let ws = Workspace::create(&cfg, "c1", &Source::Copy { path: src.clone() }).unwrap();
        assert_eq!(
            fs::read_to_string(ws.path.join("sub/file.txt")).unwrap(),
            "hello"
        );
        let mode = fs::metadata(ws.path.join("sub/file.txt"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o750);
        for (link, target) in [
            ("dirlink", outside.clone()),
            ("filelink", outside.join("secret")),
        ] {
            let md = fs::symlink_metadata(ws.path.join(link)).unwrap();
            assert!(md.file_type().is_symlink(), "{link} should stay a symlink");
            assert_eq!(fs::read_link(ws.path.join(link)).unwrap(), target);
        }
        // The linked directory was not copied: only a link exists, so the secret was never
        // written under the workspace.
        let mut files = Vec::new();
        let mut stack = vec![ws.path.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                let md = e.metadata().unwrap();
                if md.is_dir() {
                    stack.push(e.path());
                } else if md.is_file() {
                    files.push(e.path());
                }
            }
        }
        assert_eq!(files, vec![ws.path.join("sub/file.txt")]);
    }

    #[test]
    fn copy_of_a_missing_or_non_directory_source_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        fs::write(tmp.path().join("file"), "x").unwrap();
        for p in [tmp.path().join("nope"), tmp.path().join("file")] {
            let err = Workspace::create(&cfg, "c2", &Source::Copy { path: p }).unwrap_err();
            assert!(matches!(err, Error::CopySourceNotDir(_)), "{err}");
            assert!(err.to_string().contains("is not a directory"));
        }
        assert!(!cfg.root.join("c2").exists());
    }

    fn worktree_list(repo: &Path) -> String {
        git_ok(repo, &["worktree", "list", "--porcelain"])
    }

    #[test]
    fn git_worktree_at_head_tag_and_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let repo = tmp.path().join("repo");
        let (first, second) = make_repo(&repo);
        let repo_s = repo.to_str().unwrap().to_string();

        let head = Workspace::create(
            &cfg,
            "h",
            &Source::Git {
                repo: repo_s.clone(),
                rev: None,
            },
        )
        .unwrap();
        assert_eq!(head.base_commit.as_deref(), Some(second.as_str()));
        assert_eq!(
            fs::read_to_string(head.path.join("a.txt")).unwrap(),
            "two\n"
        );
        // A worktree: `.git` is a file pointing into the source repository.
        assert!(
            fs::symlink_metadata(head.path.join(".git"))
                .unwrap()
                .is_file()
        );

        let tag = Source::Git {
            repo: repo_s.clone(),
            rev: Some("v1".into()),
        };
        let at_tag = Workspace::create(&cfg, "t", &tag).unwrap();
        assert_eq!(at_tag.base_commit.as_deref(), Some(first.as_str()));
        assert_eq!(
            fs::read_to_string(at_tag.path.join("a.txt")).unwrap(),
            "one\n"
        );
        assert!(!at_tag.path.join("b.txt").exists());

        let at_commit = Workspace::create(
            &cfg,
            "c",
            &Source::Git {
                repo: repo_s.clone(),
                rev: Some(first.clone()),
            },
        )
        .unwrap();
        assert_eq!(at_commit.base_commit.as_deref(), Some(first.as_str()));

        let list = worktree_list(&repo);
        for ws in [&head, &at_tag, &at_commit] {
            assert!(list.contains(ws.path.to_str().unwrap()), "{list}");
        }

        // Success: directory and registration gone.
        let p = head.path.clone();
        assert_eq!(head.finish(true, &cfg).unwrap(), None);
        assert!(!p.exists());
        let list = worktree_list(&repo);
        assert!(!list.contains(p.to_str().unwrap()), "{list}");
        assert!(!cfg.root.join("h.worktree-of").exists());

        // Failure: kept until swept; sweep drops the registration too.
        let kept = at_tag.finish(false, &cfg).unwrap().unwrap();
        assert!(kept.join("a.txt").exists());
        assert_eq!(sweep(&cfg, SystemTime::now(), &|id| id == "c"), 0);
        assert!(kept.exists());
        let later = SystemTime::now() + Duration::from_secs(7200);
        // `c` has no marker and is live: untouched.
        assert_eq!(sweep(&cfg, later, &|id| id == "c"), 1);
        assert!(!kept.exists());
        assert!(at_commit.path.exists());
        let list = worktree_list(&repo);
        assert!(!list.contains(kept.to_str().unwrap()), "{list}");
        assert!(list.contains(at_commit.path.to_str().unwrap()), "{list}");

        // Re-creating over a stale worktree with the same id works (registration dropped).
        let again = Workspace::create(&cfg, "c", &tag).unwrap();
        assert_eq!(again.base_commit.as_deref(), Some(first.as_str()));
        again.finish(true, &cfg).unwrap();
        assert_eq!(worktree_list(&repo).matches("worktree ").count(), 1);
    }

    #[test]
    fn git_bad_ref_fails_and_cleans_up() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let repo = tmp.path().join("repo");
        make_repo(&repo);
        let src = Source::Git {
            repo: repo.to_str().unwrap().into(),
            rev: Some("no-such-branch".into()),
        };
        let err = Workspace::create(&cfg, "bad", &src).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Git { .. }), "{msg}");
        assert!(
            msg.contains("no-such-branch") && msg.contains("check the repository and ref"),
            "{msg}"
        );
        assert!(!cfg.root.join("bad").exists());
        assert!(!cfg.root.join("bad.worktree-of").exists());

        let url = Source::Git {
            repo: format!("file://{}", repo.display()),
            rev: Some("nope".into()),
        };
        let err = Workspace::create(&cfg, "bad2", &url).unwrap_err();
        assert!(matches!(err, Error::Git { .. }), "{err}");
        assert!(!cfg.root.join("bad2").exists());
    }

    #[test]
    fn git_clone_via_file_url() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let repo = tmp.path().join("repo");
        let (first, second) = make_repo(&repo);
        git_ok(&repo, &["branch", "old", "v1"]);
        let url = format!("file://{}", repo.display());

        let ws = Workspace::create(
            &cfg,
            "u",
            &Source::Git {
                repo: url.clone(),
                rev: None,
            },
        )
        .unwrap();
        assert_eq!(ws.base_commit.as_deref(), Some(second.as_str()));
        assert!(fs::symlink_metadata(ws.path.join(".git")).unwrap().is_dir());
        assert_eq!(fs::read_to_string(ws.path.join("b.txt")).unwrap(), "bee\n");
        // Not registered as a worktree of the source.
        assert!(!worktree_list(&repo).contains(ws.path.to_str().unwrap()));

        // A branch that only exists as origin/<name> in the clone, a tag, a commit.
        for (id, rev) in [
            ("u-branch", "old"),
            ("u-tag", "v1"),
            ("u-commit", first.as_str()),
        ] {
            let w = Workspace::create(
                &cfg,
                id,
                &Source::Git {
                    repo: url.clone(),
                    rev: Some(rev.into()),
                },
            )
            .unwrap();
            assert_eq!(w.base_commit.as_deref(), Some(first.as_str()), "{rev}");
            assert!(!w.path.join("b.txt").exists());
            let p = w.path.clone();
            w.finish(true, &cfg).unwrap();
            assert!(!p.exists());
        }
        ws.finish(true, &cfg).unwrap();
    }

    #[test]
    fn owner_is_applied_with_lchown() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("probe"), "").unwrap();
        if fs::metadata(tmp.path().join("probe")).unwrap().uid() != 0 {
            eprintln!("not root: chown test skipped");
            return;
        }
        let mut cfg = config(tmp.path());
        cfg.owner = Some((65534, 65533));
        let repo = tmp.path().join("repo");
        make_repo(&repo);
        let target = tmp.path().join("target");
        fs::write(&target, "t").unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("d")).unwrap();
        fs::write(src.join("d/f"), "f").unwrap();
        std::os::unix::fs::symlink(&target, src.join("link")).unwrap();

        let ws = Workspace::create(&cfg, "o", &Source::Copy { path: src }).unwrap();
        for p in ["", "d", "d/f", "link"] {
            let md = fs::symlink_metadata(ws.path.join(p)).unwrap();
            assert_eq!((md.uid(), md.gid()), (65534, 65533), "{p}");
        }
        // The link's target was not chowned.
        assert_eq!(fs::metadata(&target).unwrap().uid(), 0);

        let url = format!("file://{}", repo.display());
        let ws = Workspace::create(
            &cfg,
            "oc",
            &Source::Git {
                repo: url,
                rev: None,
            },
        )
        .unwrap();
        for p in ["", ".git", ".git/HEAD", ".git/objects", "a.txt"] {
            assert_eq!(
                fs::symlink_metadata(ws.path.join(p)).unwrap().uid(),
                65534,
                "{p}"
            );
        }
        let wt = Workspace::create(
            &cfg,
            "ow",
            &Source::Git {
                repo: repo.to_str().unwrap().into(),
                rev: None,
            },
        )
        .unwrap();
        assert_eq!(fs::metadata(wt.path.join("a.txt")).unwrap().uid(), 65534);
        // The source repository's object store stays as it was.
        assert_eq!(fs::metadata(repo.join(".git/objects")).unwrap().uid(), 0);
        wt.finish(true, &cfg).unwrap();
        assert_eq!(worktree_list(&repo).matches("worktree ").count(), 1);
    }

    #[test]
    fn finish_failed_then_sweep() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let ws = Workspace::create(&cfg, "f1", &Source::Empty).unwrap();
        fs::write(ws.path.join("log"), "x").unwrap();
        let kept = ws.finish(false, &cfg).unwrap().unwrap();
        assert!(kept.join("log").exists());
        let until: u64 = fs::read_to_string(cfg.root.join("f1.keep-until"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let now = unix_secs(SystemTime::now());
        assert!(
            until >= now + 3590 && until <= now + 3610,
            "{until} vs {now}"
        );

        // A crash leftover without marker: removed unless live.
        fs::create_dir_all(cfg.root.join("orphan/x")).unwrap();
        fs::create_dir_all(cfg.root.join("running")).unwrap();

        let live = |id: &str| id == "running";
        assert_eq!(sweep(&cfg, SystemTime::now(), &live), 1);
        assert!(!cfg.root.join("orphan").exists());
        assert!(kept.exists());
        assert!(cfg.root.join("running").exists());

        let later = SystemTime::now() + Duration::from_secs(3601);
        assert_eq!(sweep(&cfg, later, &live), 1);
        assert!(!kept.exists());
        assert!(!cfg.root.join("f1.keep-until").exists());
        assert!(cfg.root.join("running").exists());
        assert_eq!(sweep(&cfg, later, &live), 0);
    }

    #[test]
    fn disk_usage_grows() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let ws = Workspace::create(&cfg, "d", &Source::Empty).unwrap();
        let before = ws.disk_usage().unwrap();
        let data: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
        fs::write(ws.path.join("big"), &data).unwrap();
        let after = ws.disk_usage().unwrap();
        assert!(after >= before + 1024 * 1024, "{before} -> {after}");
        // Hard links are counted once; symlinks are not followed.
        fs::hard_link(ws.path.join("big"), ws.path.join("big2")).unwrap();
        std::os::unix::fs::symlink("/usr", ws.path.join("usr")).unwrap();
        let linked = ws.disk_usage().unwrap();
        assert!(linked < after + 64 * 1024, "{after} -> {linked}");
    }

    #[test]
    fn source_json_and_validate() {
        let s: Source =
            serde_json::from_str(r#"{"kind":"git","repo":"https://x/y.git","ref":"v1"}"#).unwrap();
        assert_eq!(
            s,
            Source::Git {
                repo: "https://x/y.git".into(),
                rev: Some("v1".into())
            }
        );
        for s in [
            Source::Empty,
            Source::Copy {
                path: "/srv/proj".into(),
            },
            Source::Git {
                repo: "/srv/repo".into(),
                rev: None,
            },
            Source::Git {
                repo: "https://x/y.git".into(),
                rev: Some("main".into()),
            },
        ] {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(serde_json::from_str::<Source>(&json).unwrap(), s, "{json}");
            s.validate().unwrap();
        }
        assert_eq!(
            serde_json::to_string(&Source::default()).unwrap(),
            r#"{"kind":"empty"}"#
        );
        assert!(serde_json::from_str::<Source>(r#"{"kind":"git","repo":"x","bogus":1}"#).is_err());
        assert!(
            serde_json::from_str::<Source>(r#"{"kind":"copy","path":"/x","ref":"a"}"#).is_err()
        );

        let bad = [
            (
                Source::Git {
                    repo: "/r".into(),
                    rev: Some("-rev".into()),
                },
                "starts with '-'",
            ),
            (
                Source::Git {
                    repo: "/r".into(),
                    rev: Some("a b".into()),
                },
                "whitespace",
            ),
            (
                Source::Git {
                    repo: "/r".into(),
                    rev: Some("a\nb".into()),
                },
                "whitespace",
            ),
            (
                Source::Git {
                    repo: " ".into(),
                    rev: None,
                },
                "empty",
            ),
            (
                Source::Git {
                    repo: "--upload-pack=x".into(),
                    rev: None,
                },
                "starts with '-'",
            ),
            (
                Source::Copy {
                    path: "rel/dir".into(),
                },
                "relative",
            ),
        ];
        for (s, want) in bad {
            let err = s.validate().unwrap_err();
            assert!(err.contains(want), "{s:?}: {err}");
            let tmp = tempfile::tempdir().unwrap();
            let e = Workspace::create(&config(tmp.path()), "v", &s).unwrap_err();
            assert!(matches!(e, Error::InvalidSource(_)), "{e}");
        }
    }
}
