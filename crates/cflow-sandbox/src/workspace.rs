//! Per-task workspaces: the one directory an agent command may write.
//!
//! A workspace is `<root>/<id>`, made fresh for each run from a [`Source`]: an empty directory, a
//! copy of a host directory, or a git checkout (a `git clone --no-checkout` of a local repository
//! or a URL, then a detached checkout of the ref). It is then handed to the sandbox's user
//! (`chown -R` with `lchown`, see [`Config::owner`]).
//!
//! # Git checkouts are self-contained clones
//! A git workspace always has its own `.git` directory inside it, never a `git worktree`: a
//! worktree's git dir lives in the source repository (`<repo>/.git/worktrees/<id>`), which the
//! sandboxed command can neither see (host paths like `/root`, `/home` and `/tmp` are hidden) nor
//! write (so `git add`/`commit` would fail), and must not be able to write (it would let the
//! agent rewrite the operator's repository). Cloning a local path is cheap: git hard-links the
//! object files instead of copying them (when both are on one filesystem). Those shared inodes
//! belong to the source repository too, so the ownership hand-over skips them (see
//! `chown_tree`): they stay owned by the source's owner, read-only to the sandbox (git object
//! files are never rewritten in place; new objects go to new files in directories the sandbox
//! owns, and the sandbox may unlink its own links without touching the source).
//!
//! # What is kept, what is cleaned
//! - A run that **succeeded** has its workspace removed by [`Workspace::finish`] at once.
//! - A run that **failed** keeps its workspace for debugging: `finish` writes the sibling marker
//!   `<root>/<id>.keep-until` (a unix time in seconds) and [`sweep`] removes the workspace once
//!   that time has passed.
//! - A directory under the root with no marker that no live run owns (left by a crash) is removed
//!   by [`sweep`]; one with the same id as a new workspace is removed by [`Workspace::create`].
//!   Any other unmarked leftover is removed the same way, e.g. the `<id>.worktree-of` markers of
//!   older versions (which made local checkouts as worktrees; a worktree registration they left
//!   in a source repository shows as prunable and is dropped by git's own `worktree prune`).
//!
//! # The symlink rule
//! Everything inside a workspace was written by an untrusted program. The supervisor therefore
//! never follows a symlink found there: walks use `lstat` and never descend into a symlinked
//! directory, ownership is changed with `lchown`, removal uses `remove_dir_all` (which unlinks
//! symlinks rather than following them). A [`Source::Copy`] copies symlinks as symlinks and
//! skips special files. The supervisor never runs git inside a workspace after the agent ran (a
//! hostile `.git/config` could run code).
//!
//! Every git call gets `-c core.hooksPath=/dev/null`, `-c safe.directory=<path>` for the paths it
//! touches, `GIT_TERMINAL_PROMPT=0`, a null stdin, and no inherited `GIT_DIR`-like variables. A
//! clone of a local repository (or `file://` URL) also passes those `-c`s to the `upload-pack`
//! that serves it (`--upload-pack`), since git does not hand them on to it: the source may be
//! owned by another user (the operator) and is trusted like a local path.

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
    /// A checkout of a git repository at a ref (branch, tag or commit; default `HEAD`):
    /// `git clone --no-checkout` of `repo`, then a detached checkout of the ref. `repo` is a URL
    /// or the absolute path of a local repository; a local clone hard-links the object files
    /// (cheap) and has its own `.git` directory. Not a `git worktree`: a worktree's git dir lives
    /// in the source repository, which the sandbox must neither see nor write.
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

/// The `--upload-pack` command (run by git through `sh -c`) for a clone of a local repository:
/// `git upload-pack` with `safe.directory` set for `safe_dirs`, since a local transport passes
/// none of the cloning git's `-c` settings on.
fn upload_pack_command(safe_dirs: &[PathBuf]) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let mut cmd = b"git -c core.hooksPath=/dev/null".to_vec();
    for dir in safe_dirs {
        cmd.extend_from_slice(b" -c 'safe.directory=");
        for &b in dir.as_os_str().as_encoded_bytes() {
            if b == b'\'' {
                cmd.extend_from_slice(b"'\\''");
            } else {
                cmd.push(b);
            }
        }
        cmd.push(b'\'');
    }
    cmd.extend_from_slice(b" upload-pack");
    std::ffi::OsString::from_vec(cmd)
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

/// Removes `<root>/<id>` (whatever it is) and its marker. Returns whether a directory was
/// removed.
fn remove_workspace(root: &Path, id: &str) -> io::Result<bool> {
    let path = root.join(id);
    let existed = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
    remove_path(&path)?;
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
    /// a crash) is removed first. Then the tree is handed to `config.owner` (see `chown_tree`:
    /// lchown, never following symlinks; a clone's `.git` included, except object files
    /// hard-linked with a local source repository). For a git source, records `base_commit`
    /// (`git rev-parse HEAD`).
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
                // A local path, or a `file://` URL: its owner may be someone else (the operator);
                // it is trusted like a local path. A local path is cloned with hard-linked
                // objects, so the workspace gets its own `.git` (see the module docs).
                let from = Path::new(repo.strip_prefix("file://").unwrap_or(&repo));
                let mut cmd;
                if from.is_absolute() {
                    // git checks the repository and its git dir, in the clone and in the
                    // `upload-pack` it serves the clone from (which gets none of our `-c`s).
                    let safe = [from.to_path_buf(), from.join(".git")];
                    cmd = git(&[&path, &safe[0], &safe[1]]);
                    cmd.args(["clone", "--upload-pack"])
                        .arg(upload_pack_command(&safe));
                } else {
                    cmd = git(&[&path]);
                    cmd.arg("clone");
                }
                cmd.args(["--quiet", "--no-checkout", "--"])
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

    /// Another handle on the existing workspace `<root>/<id>`, for a run that works in it without
    /// owning it (see `Sandbox::prepare_in`): it measures and uses the directory but must never
    /// [`finish`](Workspace::finish) it. The source and base commit are not known to it.
    pub(crate) fn attached(root: &Path, id: &str) -> Result<Workspace, Error> {
        if !safe_id(id) {
            return Err(Error::UnsafeId(id.to_string()));
        }
        let path = root.join(id);
        match fs::symlink_metadata(&path) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(Error::Io {
                    context: format!("workspace '{}'", path.display()),
                    source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
                });
            }
            Err(source) => {
                return Err(Error::Io {
                    context: format!("workspace '{}'", path.display()),
                    source,
                });
            }
        }
        Ok(Workspace {
            path,
            source: Source::Empty,
            base_commit: None,
            root: root.to_path_buf(),
            id: id.to_string(),
        })
    }

    /// Disk use in bytes: the sum of `st_blocks * 512` over everything under the workspace
    /// (lstat, no symlink following, each hard-linked inode counted once). Entries that vanish
    /// or cannot be read during the walk are left out.
    pub fn disk_usage(&self) -> io::Result<u64> {
        disk_usage_of(&self.path)
    }

    /// Ends the workspace. `succeeded`: removed now, returns `None`. Failed: kept, with the expiry `<root>/<id>.keep-until` (unix seconds)
    /// for [`sweep`]; returns the kept path.
    pub fn finish(self, succeeded: bool, config: &Config) -> io::Result<Option<PathBuf>> {
        if succeeded {
            remove_path(&self.path)?;
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
/// that no live run owns (`live(id)`) — and any other unmarked leftover under the root, such
/// as an older version's `<id>.worktree-of` marker. Never touches a live id. Returns how many
/// workspace directories it removed.
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
        let id = name.strip_suffix(KEEP_SUFFIX).unwrap_or(name);
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

/// `lchown -R` of a freshly made workspace: never follows a symlink, never descends into a
/// symlinked directory.
///
/// Directories and files with a single link are handed to `uid:gid`. A non-directory with more
/// than one link is left as it is: in a fresh workspace that is an object file of a local git
/// clone, hard-linked with the source repository (one inode for both), and chowning it would
/// change the operator's repository. The sandbox can still read such a file and unlink its own
/// link (it owns the directory), but not change it: git object files are read-only and never
/// rewritten in place, and new objects go to new files in directories the sandbox owns. A
/// hard-linked regular file that is writable by group or others (git never makes one, an
/// operator's `chmod` could) would be writable by the sandbox too, so its link is broken first:
/// it is replaced by a copy of its own, which is then handed over.
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
            let md = entry
                .metadata() // lstat semantics
                .map_err(io_err(format!("could not stat '{}'", p.display())))?;
            if md.is_dir() {
                chown(&p)?;
                stack.push(p);
            } else if md.nlink() <= 1 {
                chown(&p)?;
            } else if md.is_file() && md.mode() & 0o022 != 0 {
                unshare_file(&p, &md)?;
                chown(&p)?;
            }
            // Otherwise shared with the source repository: left as it is.
        }
    }
    Ok(())
}

/// Replaces the hard link `path` by a copy of the file with its own inode (same content and
/// permission bits, set-id bits dropped). The other links keep the old inode, untouched.
fn unshare_file(path: &Path, md: &fs::Metadata) -> Result<(), Error> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.cflow-unshare"));
    remove_file_if_any(&tmp).map_err(io_err(format!("could not remove '{}'", tmp.display())))?;
    let mode = md.mode() & 0o777;
    let mut input = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(io_err(format!("could not open '{}'", path.display())))?;
    let mut output = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(format!("could not create '{}'", tmp.display())))?;
    io::copy(&mut input, &mut output)
        .map_err(io_err(format!("could not copy '{}'", path.display())))?;
    output
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("could not set mode of '{}'", tmp.display())))?;
    drop(output);
    fs::rename(&tmp, path).map_err(io_err(format!("could not replace '{}'", path.display())))
}

/// The disk use of the tree at `path`, as [`Workspace::disk_usage`] measures it (usable while
/// the workspace itself is owned elsewhere, e.g. by a run being supervised).
pub fn disk_usage_of(path: &Path) -> io::Result<u64> {
    let top = fs::symlink_metadata(path)?;
    let mut total = top.blocks() * 512;
    if !top.is_dir() {
        return Ok(total);
    }
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut stack = vec![path.to_path_buf()];
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

    fn running_as_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    /// A regular file under `<dir>/.git/objects` with more than one link (hard-linked with the
    /// source repository by a local clone), as a path relative to `dir`.
    fn linked_object(dir: &Path) -> Option<PathBuf> {
        let mut stack = vec![dir.join(".git/objects")];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                let md = e.metadata().unwrap();
                if md.is_dir() {
                    stack.push(e.path());
                } else if md.is_file() && md.nlink() > 1 {
                    return Some(e.path().strip_prefix(dir).unwrap().to_path_buf());
                }
            }
        }
        None
    }

    /// `lchown -R` for test fixtures.
    fn chown_all(dir: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).unwrap();
        for e in fs::read_dir(dir).unwrap().flatten() {
            if e.metadata().unwrap().is_dir() {
                chown_all(&e.path(), uid, gid);
            } else {
                std::os::unix::fs::lchown(e.path(), Some(uid), Some(gid)).unwrap();
            }
        }
    }

    fn owner(p: &Path) -> (u32, u32) {
        let md = fs::symlink_metadata(p).unwrap();
        (md.uid(), md.gid())
    }

    fn local_git(repo: &Path, rev: Option<&str>) -> Source {
        Source::Git {
            repo: repo.to_str().unwrap().into(),
            rev: rev.map(String::from),
        }
    }

    #[test]
    fn git_local_clone_at_head_tag_and_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let repo = tmp.path().join("repo");
        let (first, second) = make_repo(&repo);

        let head = Workspace::create(&cfg, "h", &local_git(&repo, None)).unwrap();
        let at_tag = Workspace::create(&cfg, "t", &local_git(&repo, Some("v1"))).unwrap();
        let at_commit = Workspace::create(&cfg, "c", &local_git(&repo, Some(&first))).unwrap();
        for (ws, commit, a) in [
            (&head, &second, "two\n"),
            (&at_tag, &first, "one\n"),
            (&at_commit, &first, "one\n"),
        ] {
            let name = ws.path.display();
            assert_eq!(ws.base_commit.as_deref(), Some(commit.as_str()), "{name}");
            assert_eq!(fs::read_to_string(ws.path.join("a.txt")).unwrap(), a);
            assert_eq!(ws.path.join("b.txt").exists(), commit == &second, "{name}");
            // A clone of its own: `.git` is a directory inside the workspace, not a worktree's
            // pointer into the source repository, and borrows no objects by reference.
            assert!(
                fs::symlink_metadata(ws.path.join(".git")).unwrap().is_dir(),
                "{name}"
            );
            assert!(!ws.path.join(".git/objects/info/alternates").exists());
            assert_eq!(&git_ok(&ws.path, &["rev-parse", "HEAD"]), commit, "{name}");
            assert_eq!(git_ok(&ws.path, &["rev-parse", "--git-dir"]), ".git");
            // Cheap: the object files are hard-linked with the source's.
            assert!(linked_object(&ws.path).is_some(), "{name}");
        }
        // The source repository has no worktree besides its own.
        let list = worktree_list(&repo);
        assert_eq!(list.matches("worktree ").count(), 1, "{list}");
        assert!(!list.contains(cfg.root.to_str().unwrap()), "{list}");

        // Success: directory gone, source intact.
        let p = head.path.clone();
        assert_eq!(head.finish(true, &cfg).unwrap(), None);
        assert!(!p.exists());
        git_ok(&repo, &["fsck", "--no-progress"]);
        assert_eq!(git_ok(&repo, &["rev-parse", "HEAD"]), second);
        assert_eq!(git_ok(&repo, &["status", "--porcelain"]), "");

        // Failure: kept until swept.
        let kept = at_tag.finish(false, &cfg).unwrap().unwrap();
        assert!(kept.join("a.txt").exists());
        assert_eq!(sweep(&cfg, SystemTime::now(), &|id| id == "c"), 0);
        assert!(kept.exists());
        let later = SystemTime::now() + Duration::from_secs(7200);
        // `c` has no marker and is live: untouched.
        assert_eq!(sweep(&cfg, later, &|id| id == "c"), 1);
        assert!(!kept.exists());
        assert!(at_commit.path.exists());

        // Re-creating over a stale workspace with the same id works.
        let again = Workspace::create(&cfg, "c", &local_git(&repo, Some("v1"))).unwrap();
        assert_eq!(again.base_commit.as_deref(), Some(first.as_str()));
        again.finish(true, &cfg).unwrap();
        assert_eq!(worktree_list(&repo).matches("worktree ").count(), 1);
        git_ok(&repo, &["fsck", "--no-progress"]);
    }

    #[test]
    fn upload_pack_command_quotes_paths_for_the_shell() {
        let dirs = [PathBuf::from("/a b/it's"), PathBuf::from("/x/$(y)`z`\\")];
        let cmd = upload_pack_command(&dirs);
        let mut script = std::ffi::OsString::from("set -- ");
        script.push(&cmd);
        script.push("; printf '%s\\n' \"$@\"");
        let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .collect::<Vec<_>>(),
            [
                "git",
                "-c",
                "core.hooksPath=/dev/null",
                "-c",
                "safe.directory=/a b/it's",
                "-c",
                "safe.directory=/x/$(y)`z`\\",
                "upload-pack"
            ]
        );
    }

    #[test]
    fn stale_worktree_markers_of_older_versions_are_swept() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        fs::create_dir_all(cfg.root.join("old/sub")).unwrap();
        fs::write(
            cfg.root.join("old/.git"),
            "gitdir: /srv/repo/.git/worktrees/old\n",
        )
        .unwrap();
        fs::write(cfg.root.join("old.worktree-of"), "/srv/repo\n").unwrap();
        assert_eq!(sweep(&cfg, SystemTime::now(), &|_| false), 1);
        assert_eq!(fs::read_dir(&cfg.root).unwrap().count(), 0);
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
        assert_eq!(fs::read_dir(&cfg.root).unwrap().count(), 0);

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
    }

    #[test]
    fn local_clone_is_handed_over_except_hard_linked_objects() {
        if !running_as_root() {
            eprintln!("not root: local clone ownership test skipped");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = config(tmp.path());
        cfg.owner = Some((65534, 65534));
        let repo = tmp.path().join("repo");
        let (_, second) = make_repo(&repo);
        // The operator's repository, owned by someone else than both root and the sandbox.
        chown_all(&repo, 1234, 1235);
        let source_files = [
            "",
            "a.txt",
            ".git",
            ".git/HEAD",
            ".git/index",
            ".git/objects",
        ];
        for p in source_files {
            assert_eq!(owner(&repo.join(p)), (1234, 1235), "{p}");
        }

        let ws = Workspace::create(&cfg, "l", &local_git(&repo, None)).unwrap();
        assert_eq!(ws.base_commit.as_deref(), Some(second.as_str()));
        for p in [
            "",
            ".git",
            ".git/HEAD",
            ".git/index",
            ".git/objects",
            "a.txt",
            "b.txt",
        ] {
            assert_eq!(owner(&ws.path.join(p)), (65534, 65534), "{p}");
        }
        for e in fs::read_dir(ws.path.join(".git/objects"))
            .unwrap()
            .flatten()
        {
            let md = fs::symlink_metadata(e.path()).unwrap();
            if md.is_dir() {
                assert_eq!(
                    (md.uid(), md.gid()),
                    (65534, 65534),
                    "{}",
                    e.path().display()
                );
            }
        }
        // A hard-linked object keeps its owner: it is the source repository's inode too.
        let obj = linked_object(&ws.path).expect("a hard-linked object file");
        let (in_ws, in_src) = (
            fs::symlink_metadata(ws.path.join(&obj)).unwrap(),
            fs::symlink_metadata(repo.join(&obj)).unwrap(),
        );
        assert_eq!((in_ws.dev(), in_ws.ino()), (in_src.dev(), in_src.ino()));
        assert_eq!((in_ws.uid(), in_ws.gid()), (1234, 1235));
        assert_eq!(in_ws.mode() & 0o222, 0, "git objects are read-only");
        // The source repository's files keep their owners.
        for p in source_files {
            assert_eq!(owner(&repo.join(p)), (1234, 1235), "{p}");
        }
        assert_eq!(owner(&repo.join(&obj)), (1234, 1235));
        assert_eq!(worktree_list(&repo).matches("worktree ").count(), 1);

        // A `file://` URL of the same repository clones too (no hard links: all handed over).
        let url = Workspace::create(
            &cfg,
            "lu",
            &Source::Git {
                repo: format!("file://{}", repo.display()),
                rev: Some("v1".into()),
            },
        )
        .unwrap();
        assert_eq!(linked_object(&url.path), None);
        assert_eq!(owner(&url.path.join(".git/objects")), (65534, 65534));
        url.finish(true, &cfg).unwrap();

        let p = ws.path.clone();
        ws.finish(true, &cfg).unwrap();
        assert!(!p.exists());
        git_ok(&repo, &["fsck", "--no-progress"]);
        assert_eq!(git_ok(&repo, &["rev-parse", "HEAD"]), second);
        for p in source_files {
            assert_eq!(owner(&repo.join(p)), (1234, 1235), "{p}");
        }
        assert_eq!(owner(&repo.join(&obj)), (1234, 1235));
        assert_eq!(fs::symlink_metadata(repo.join(&obj)).unwrap().nlink(), 1);
    }

    #[test]
    fn writable_hard_linked_file_gets_a_copy_of_its_own() {
        if !running_as_root() {
            eprintln!("not root: unshare test skipped");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = config(tmp.path());
        cfg.owner = Some((65534, 65534));
        let repo = tmp.path().join("repo");
        make_repo(&repo);
        chown_all(&repo, 1234, 1235);
        // Make every object file world-writable (git never does; an operator's chmod could).
        let mut stack = vec![repo.join(".git/objects")];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                if e.metadata().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    fs::set_permissions(e.path(), fs::Permissions::from_mode(0o666)).unwrap();
                }
            }
        }
        let ws = Workspace::create(&cfg, "w", &local_git(&repo, None)).unwrap();
        // No object is shared with the source any more; the copies are the sandbox's.
        assert_eq!(linked_object(&ws.path), None);
        let mut stack = vec![ws.path.join(".git/objects")];
        let mut seen = 0;
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                let md = e.metadata().unwrap();
                if md.is_dir() {
                    stack.push(e.path());
                } else if md.mode() & 0o777 == 0o666 {
                    seen += 1;
                    assert_eq!((md.uid(), md.gid(), md.nlink()), (65534, 65534, 1));
                    let rel = e.path().strip_prefix(&ws.path).unwrap().to_path_buf();
                    assert_eq!(
                        fs::read(e.path()).unwrap(),
                        fs::read(repo.join(&rel)).unwrap()
                    );
                    assert_eq!(owner(&repo.join(&rel)), (1234, 1235));
                }
            }
        }
        assert!(seen > 0);
        git_ok(&ws.path, &["fsck", "--no-progress"]);
        git_ok(&repo, &["fsck", "--no-progress"]);
        ws.finish(true, &cfg).unwrap();
    }

    #[test]
    fn sandbox_user_can_commit_in_a_local_clone() {
        if !running_as_root() {
            eprintln!("not root: commit-as-uid-65534 test skipped");
            return;
        }
        use std::os::unix::process::CommandExt;
        let tmp = tempfile::tempdir().unwrap();
        // Let uid 65534 reach the workspace root (tempdir is 0700).
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o711)).unwrap();
        let mut cfg = config(tmp.path());
        cfg.owner = Some((65534, 65534));
        let repo = tmp.path().join("repo");
        let (_, second) = make_repo(&repo);
        chown_all(&repo, 1234, 1235);
        let ws = Workspace::create(&cfg, "s", &local_git(&repo, None)).unwrap();
        let obj = linked_object(&ws.path).expect("a hard-linked object file");

        let out = Command::new("sh")
            .arg("-c")
            .arg(
                "echo three >> a.txt && echo new > c.txt && \
                 git -c safe.directory=* -C \"$1\" add -A && \
                 git -c safe.directory=* -C \"$1\" -c user.name=t -c user.email=t@t \
                 commit -q -m x",
            )
            .arg("sh")
            .arg(&ws.path)
            .current_dir(&ws.path)
            .env("HOME", "/nonexistent")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "commit as 65534: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let head = git_ok(&ws.path, &["rev-parse", "HEAD"]);
        assert_ne!(head, second);
        assert_eq!(git_ok(&ws.path, &["rev-parse", "HEAD^"]), second);
        assert_eq!(git_ok(&ws.path, &["log", "-1", "--format=%s"]), "x");
        assert_eq!(
            git_ok(&ws.path, &["--no-optional-locks", "status", "--porcelain"]),
            ""
        );
        git_ok(&ws.path, &["fsck", "--no-progress"]);

        // The source repository did not change: same HEAD, no new object, same owners.
        assert_eq!(git_ok(&repo, &["rev-parse", "HEAD"]), second);
        assert_eq!(
            git_ok(&repo, &["--no-optional-locks", "status", "--porcelain"]),
            ""
        );
        let probe = Command::new("git")
            .args(["-c", "safe.directory=*", "-C"])
            .arg(&repo)
            .args(["cat-file", "-e", &head])
            .output()
            .unwrap();
        assert!(
            !probe.status.success(),
            "the new commit leaked into the source"
        );
        git_ok(&repo, &["fsck", "--no-progress"]);
        assert_eq!(owner(&repo.join(&obj)), (1234, 1235));
        assert_eq!(owner(&ws.path.join(&obj)), (1234, 1235));
        for p in [
            "",
            "a.txt",
            ".git",
            ".git/HEAD",
            ".git/index",
            ".git/objects",
        ] {
            assert_eq!(owner(&repo.join(p)), (1234, 1235), "{p}");
        }
        assert_eq!(fs::read_to_string(repo.join("a.txt")).unwrap(), "two\n");

        let p = ws.path.clone();
        ws.finish(true, &cfg).unwrap();
        assert!(!p.exists());
        git_ok(&repo, &["fsck", "--no-progress"]);
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
