//! File operations confined to one workspace, for the workbench's file tools.
//!
//! # The confinement invariant
//! Every path a model gives is resolved from a directory descriptor of the workspace root held
//! since the workbench opened, one component at a time, with `openat(…, O_NOFOLLOW)`: a symlink
//! is never followed, whether it is the last component or a directory on the way, and whoever
//! planted it (an earlier `run_command`, a copied source tree). `..` is resolved lexically and
//! refused when it leaves the root; an absolute path is accepted only when it names something
//! inside the root. So no read, write, listing or search reaches outside the workspace's
//! directory tree, even if the sandboxed commands rearrange it while the tools run.
//!
//! Writes never go through an existing file: the content goes to a new file made with
//! `O_CREAT | O_EXCL | O_NOFOLLOW` in the same directory, handed to the sandbox's user, then
//! renamed over the target. A hard link to a file outside the workspace (a local git clone's
//! object files are hard-linked with the operator's repository) is replaced, never written.
//! A target that is a symlink, a directory or a special file is refused.

use regex::Regex;
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, mkdirat, openat, renameat, statat};
use rustix::io::Errno;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The largest file `read_file` and `edit_file` read.
pub const MAX_READ_BYTES: u64 = 16 * 1024 * 1024;
/// The largest file `search_files` looks into; larger ones are counted and skipped.
pub const MAX_SEARCH_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// The most entries `list_files` returns.
pub const MAX_LIST_ENTRIES: usize = 1000;
/// The most matching lines `search_files` returns.
pub const MAX_MATCHES: usize = 500;
/// The most entries one walk visits (a workspace may hold anything).
const MAX_WALK_ENTRIES: usize = 200_000;
/// A matching line is cut to this many characters.
pub(crate) const MAX_MATCH_LINE_CHARS: usize = 300;

/// Names temporary files of writes uniquely within this process.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// The workspace, as the file tools see it.
#[derive(Debug)]
pub(crate) struct Confined {
    /// The root as cflow made it, and its canonical form (absolute paths may use either).
    root: PathBuf,
    canonical: PathBuf,
    root_fd: OwnedFd,
    /// The host uid and gid files written here must belong to (the sandbox's user).
    owner: Option<(u32, u32)>,
}

/// A path inside the workspace, as components below the root.
#[derive(Debug, Clone)]
pub(crate) struct Rel(Vec<String>);

impl Rel {
    /// How tool output names it: relative to the root, `.` for the root itself.
    pub(crate) fn shown(&self) -> String {
        if self.0.is_empty() {
            ".".to_string()
        } else {
            self.0.join("/")
        }
    }

    fn prefix(&self, n: usize) -> String {
        self.0[..n].join("/")
    }
}

/// What a walk meets.
pub(crate) struct Entry<'a> {
    /// The directory holding it, to open it without following anything.
    pub dir: BorrowedFd<'a>,
    pub name: &'a str,
    /// Its path relative to the workspace root.
    pub rel: &'a str,
    pub kind: FileType,
}

impl Confined {
    /// Opens the workspace root (a directory cflow made; blocking).
    pub(crate) fn open(root: &Path, owner: Option<(u32, u32)>) -> std::io::Result<Self> {
        let root_fd = openat(
            rustix::fs::CWD,
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let canonical = std::fs::canonicalize(root)?;
        Ok(Self {
            root: root.to_path_buf(),
            canonical,
            root_fd,
            owner,
        })
    }

    /// The workspace root, as cflow made it.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves `path` lexically: relative to the root, or absolute inside it; `.` dropped, `..`
    /// taken back and refused when it would leave the root.
    pub(crate) fn rel(&self, path: &str) -> Result<Rel, String> {
        if path.is_empty() {
            return Err("the path is empty — give a path relative to the workspace, e.g. 'src/main.rs' or '.'".into());
        }
        if path.contains('\0') {
            return Err("the path contains a NUL byte — give a plain path".into());
        }
        let p = Path::new(path);
        let below = if p.is_absolute() {
            p.strip_prefix(&self.root)
                .or_else(|_| p.strip_prefix(&self.canonical))
                .map_err(|_| {
                    format!(
                        "'{path}' is outside the workspace ({}) — give a path relative to the \
                         workspace",
                        self.root.display()
                    )
                })?
        } else {
            p
        };
        let mut parts = Vec::new();
        for c in below.components() {
            match c {
                Component::Normal(n) => parts.push(
                    n.to_str()
                        .ok_or_else(|| format!("'{path}' is not valid UTF-8"))?
                        .to_string(),
                ),
                Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
                Component::ParentDir => {
                    if parts.pop().is_none() {
                        return Err(format!(
                            "'{path}' leads out of the workspace with '..' — file tools only \
                             reach files inside the workspace"
                        ));
                    }
                }
            }
        }
        Ok(Rel(parts))
    }

    /// Opens the directory `rel` (no symlink followed on the way). With `create`, missing
    /// directories are made (mode 0755, handed to the owner).
    fn open_dir(&self, rel: &Rel, upto: usize, create: bool) -> Result<OwnedFd, String> {
        let mut cur = openat(
            &self.root_fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("the workspace cannot be opened: {e}"))?;
        for (i, name) in rel.0[..upto].iter().enumerate() {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let mut opened = openat(&cur, name.as_str(), flags, Mode::empty());
            if create && matches!(opened, Err(Errno::NOENT)) {
                match mkdirat(&cur, name.as_str(), Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(format!("cannot create '{}': {e}", rel.prefix(i + 1))),
                }
                opened = openat(&cur, name.as_str(), flags, Mode::empty());
                if let (Ok(fd), Some((uid, gid))) = (&opened, self.owner) {
                    std::os::unix::fs::fchown(fd, Some(uid), Some(gid))
                        .map_err(|e| format!("cannot hand '{}' over: {e}", rel.prefix(i + 1)))?;
                }
            }
            cur = opened.map_err(|e| self.explain(&cur, name, &rel.prefix(i + 1), e, true))?;
        }
        Ok(cur)
    }

    /// Says why opening `shown` (the entry `name` of `dir`) failed, in words a model can act on.
    fn explain(&self, dir: &OwnedFd, name: &str, shown: &str, e: Errno, want_dir: bool) -> String {
        let kind = statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .ok()
            .map(|st| FileType::from_raw_mode(st.st_mode));
        match (e, kind) {
            (_, Some(FileType::Symlink)) => symlink_refused(shown),
            (Errno::NOENT, _) => format!("'{shown}' does not exist"),
            (Errno::NOTDIR, _) if want_dir => format!("'{shown}' is not a directory"),
            (e, _) => format!("'{shown}' cannot be opened: {e}"),
        }
    }

    /// The directory holding `rel` and its last name. The root itself has none.
    fn parent(&self, rel: &Rel, create: bool) -> Result<(OwnedFd, String), String> {
        let Some(name) = rel.0.last() else {
            return Err("'.' is the workspace directory itself, not a file".into());
        };
        let dir = self.open_dir(rel, rel.0.len() - 1, create)?;
        Ok((dir, name.clone()))
    }

    /// Reads the regular file `rel` (never through a symlink), at most [`MAX_READ_BYTES`].
    pub(crate) fn read(&self, rel: &Rel) -> Result<Vec<u8>, String> {
        let (dir, name) = self.parent(rel, false)?;
        let shown = rel.shown();
        // Special files are refused before they are opened (opening a device can act on it).
        if let Ok(st) = statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile | FileType::Directory => {}
                FileType::Symlink => return Err(symlink_refused(&shown)),
                _ => return Err(format!("'{shown}' is not a regular file")),
            }
        }
        let fd = openat(
            &dir,
            name.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.explain(&dir, &name, &shown, e, false))?;
        let file = File::from(fd);
        let md = file
            .metadata()
            .map_err(|e| format!("'{shown}' cannot be read: {e}"))?;
        if md.is_dir() {
            return Err(format!(
                "'{shown}' is a directory — use list_files to see what it holds"
            ));
        }
        if !md.is_file() {
            return Err(format!("'{shown}' is not a regular file"));
        }
        if md.len() > MAX_READ_BYTES {
            return Err(format!(
                "'{shown}' is {} bytes, over the {MAX_READ_BYTES}-byte limit of file tools — use \
                 search_files, or run_command with head, tail or sed",
                md.len()
            ));
        }
        let mut bytes = Vec::with_capacity(md.len() as usize);
        file.take(MAX_READ_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("'{shown}' cannot be read: {e}"))?;
        Ok(bytes)
    }

    /// Writes `content` as the file `rel` (see the module docs: a new file renamed over the
    /// target, never through it). Returns the bytes written.
    pub(crate) fn write(&self, rel: &Rel, content: &[u8]) -> Result<u64, String> {
        let shown = rel.shown();
        let (dir, name) = self.parent(rel, true)?;
        let mode = match statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => st.st_mode & 0o777,
                FileType::Symlink => {
                    return Err(format!(
                        "'{shown}' is a symlink — file tools never write through symlinks (one \
                         could lead out of the workspace); remove it with run_command first, or \
                         write to the path it points to inside the workspace"
                    ));
                }
                FileType::Directory => return Err(format!("'{shown}' is a directory")),
                _ => return Err(format!("'{shown}' is not a regular file")),
            },
            Err(Errno::NOENT) => 0o644,
            Err(e) => return Err(format!("'{shown}' cannot be checked: {e}")),
        };
        let tmp = format!(
            ".cflow-write-{}-{}.tmp",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let fd = openat(
            &dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| format!("cannot write '{shown}': {e}"))?;
        let written = self.fill(File::from(fd), content, mode).and_then(|()| {
            renameat(&dir, tmp.as_str(), &dir, name.as_str()).map_err(std::io::Error::from)
        });
        if let Err(e) = written {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
            return Err(format!("cannot write '{shown}': {e}"));
        }
        Ok(content.len() as u64)
    }

    fn fill(&self, mut file: File, content: &[u8], mode: u32) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        file.write_all(content)?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        file.set_permissions(std::fs::Permissions::from_mode(mode))
    }

    /// Calls `visit` for every entry under the directory `rel` (`.git` skipped), depth first in
    /// name order; with `recursive`, descends into directories (never through a symlink).
    /// `visit` returns false to stop. Returns a note when the walk was cut short.
    pub(crate) fn walk(
        &self,
        rel: &Rel,
        recursive: bool,
        visit: &mut dyn FnMut(&Entry<'_>) -> bool,
    ) -> Result<Option<String>, String> {
        let top = self.open_dir(rel, rel.0.len(), false)?;
        let prefix = if rel.0.is_empty() {
            String::new()
        } else {
            format!("{}/", rel.shown())
        };
        let mut stack = vec![Frame::read(prefix, top)];
        let mut seen = 0usize;
        while let Some(frame) = stack.last_mut() {
            let Some((name, kind)) = frame.entries.get(frame.next).cloned() else {
                stack.pop();
                continue;
            };
            frame.next += 1;
            seen += 1;
            if seen > MAX_WALK_ENTRIES {
                return Ok(Some(format!(
                    "the walk stopped after {MAX_WALK_ENTRIES} entries — narrow the path"
                )));
            }
            let rel = format!("{}{name}", frame.prefix);
            let entry = Entry {
                dir: frame.fd.as_fd(),
                name: &name,
                rel: &rel,
                kind,
            };
            if !visit(&entry) {
                return Ok(None);
            }
            if recursive && kind == FileType::Directory {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                if let Ok(sub) = openat(&frame.fd, name.as_str(), flags, Mode::empty()) {
                    stack.push(Frame::read(format!("{rel}/"), sub));
                }
            }
        }
        Ok(None)
    }

    /// Whether `rel` names a directory (not through a symlink).
    pub(crate) fn is_dir(&self, rel: &Rel) -> Result<bool, String> {
        let Ok((dir, name)) = self.parent(rel, false) else {
            return self.open_dir(rel, rel.0.len(), false).map(|_| true);
        };
        match statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::Symlink => Err(symlink_refused(&rel.shown())),
                kind => Ok(kind == FileType::Directory),
            },
            Err(e) => Err(self.explain(&dir, &name, &rel.shown(), e, false)),
        }
    }
}

/// Why a path through a symlink is refused.
fn symlink_refused(shown: &str) -> String {
    format!(
        "'{shown}' is a symlink — file tools never follow symlinks (one could lead out of the \
         workspace); use the path it points to inside the workspace"
    )
}

/// One directory of a walk: its entries in name order, and how far the walk got.
struct Frame {
    prefix: String,
    fd: OwnedFd,
    entries: Vec<(String, FileType)>,
    next: usize,
}

impl Frame {
    /// Reads the directory's entries (`.`, `..`, `.git` and names that are not UTF-8 left out).
    fn read(prefix: String, fd: OwnedFd) -> Frame {
        let mut entries = Vec::new();
        if let Ok(dir) = Dir::read_from(&fd) {
            for entry in dir.flatten() {
                let Ok(name) = entry.file_name().to_str() else {
                    continue;
                };
                if name == "." || name == ".." || name == ".git" {
                    continue;
                }
                let kind = match entry.file_type() {
                    FileType::Unknown => statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW)
                        .map(|st| FileType::from_raw_mode(st.st_mode))
                        .unwrap_or(FileType::Unknown),
                    k => k,
                };
                entries.push((name.to_string(), kind));
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Frame {
            prefix,
            fd,
            entries,
            next: 0,
        }
    }
}

/// Reads the regular file `name` of `dir` for a search (never through a symlink): `None` when
/// it is not a regular file or cannot be read, `Err(size)` when over the limit.
pub(crate) fn read_for_search(dir: BorrowedFd<'_>, name: &str) -> Option<Result<Vec<u8>, u64>> {
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let file = File::from(openat(dir, name, flags, Mode::empty()).ok()?);
    let md = file.metadata().ok()?;
    if !md.is_file() {
        return None;
    }
    if md.len() > MAX_SEARCH_FILE_BYTES {
        return Some(Err(md.len()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SEARCH_FILE_BYTES)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(Ok(bytes))
}

/// Where a symlink points (for listings; never followed).
pub(crate) fn link_target(dir: BorrowedFd<'_>, name: &str) -> String {
    rustix::fs::readlinkat(dir, name, Vec::new())
        .map(|t| t.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "?".into())
}

/// Whether bytes look binary: a NUL byte anywhere.
pub(crate) fn is_binary(bytes: &[u8]) -> bool {
    bytes.contains(&0)
}

/// A glob (`*` and `?` within a path segment, `**` across segments) as a regex over a
/// `/`-separated path. A glob without `/` is matched against file names alone.
pub(crate) fn glob_regex(glob: &str) -> Result<Regex, String> {
    let mut re = String::from("^");
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                if chars.peek() == Some(&'/') {
                    chars.next();
                    re.push_str("(?:.*/)?");
                } else {
                    re.push_str(".*");
                }
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    Regex::new(&re).map_err(|e| format!("invalid glob '{glob}': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let m = |g: &str, p: &str| glob_regex(g).unwrap().is_match(p);
        assert!(m("*.rs", "main.rs"));
        assert!(!m("*.rs", "src/main.rs"));
        assert!(!m("*.rs", "main.rsx"));
        assert!(m("src/*.rs", "src/main.rs"));
        assert!(!m("src/*.rs", "src/a/main.rs"));
        assert!(m("src/**/*.rs", "src/main.rs"));
        assert!(m("src/**/*.rs", "src/a/b/main.rs"));
        assert!(m("a?.txt", "ab.txt"));
        assert!(!m("a?.txt", "a/.txt"));
        assert!(m("a+b.txt", "a+b.txt"));
    }

    #[test]
    fn paths_resolve_lexically_and_stay_inside() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Confined::open(tmp.path(), None).unwrap();
        let ok = |p: &str| c.rel(p).unwrap().shown();
        assert_eq!(ok("a/./b/../c"), "a/c");
        assert_eq!(ok("."), ".");
        assert_eq!(ok(&format!("{}/x/y", tmp.path().display())), "x/y");
        assert!(c.rel("../x").unwrap_err().contains("'..'"));
        assert!(c.rel("a/../../x").unwrap_err().contains("'..'"));
        assert!(c.rel("/etc/passwd").unwrap_err().contains("outside"));
        assert!(c.rel("").unwrap_err().contains("empty"));
    }
}
