//! Artifacts: what a run leaves behind that is worth keeping — the patch of its changes to a git
//! workspace, files of the workspace named by globs, and logs.
//!
//! # What is kept
//! - **The patch** (`changes.patch`, [`Kind::Patch`]): for a git workspace with a base commit,
//!   `git add -A` then `git diff --cached --binary <base>`, both run by the caller's
//!   [`GitRunner`] *inside the sandbox* (the workspace's `.git` was writable by the agent; a
//!   hostile `.git/config` must never run as the supervisor). Nothing when the diff is empty.
//! - **Files** ([`Kind::File`]) whose path relative to the workspace matches one of
//!   [`Spec::globs`]: `*` and `?` within one path segment, `**` for any number of segments
//!   (`out/**/*.json`, `report.md`). `.git` is never entered. Limits: each file at most
//!   [`Spec::max_file_bytes`]; everything, the patch included, at most
//!   [`Spec::max_total_bytes`]. What is left out is said in [`Collected::skipped`].
//! - **Logs** ([`Kind::Log`]) are made by the caller with [`artifact`].
//!
//! # The symlink rule
//! The workspace was written by an untrusted program. Walks use `lstat` and never descend into
//! a symlinked directory; files are opened with `O_NOFOLLOW | O_NONBLOCK` and read only if the
//! opened file is a regular file. A symlink that matches a glob is listed in `skipped`, never
//! read. Nothing here removes anything: cleaning up is [`crate::workspace`]'s business.

use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// What an artifact is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Patch,
    File,
    Log,
}

/// Which files to collect and how much.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Spec {
    /// Globs relative to the workspace (`*`, `?`, `**`).
    pub globs: Vec<String>,
    /// Largest file collected (default 8 MiB).
    pub max_file_bytes: u64,
    /// Largest total, patch included (default 32 MiB).
    pub max_total_bytes: u64,
}

/// Default [`Spec::max_file_bytes`]: 8 MiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
/// Default [`Spec::max_total_bytes`]: 32 MiB.
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 32 * 1024 * 1024;
/// Most globs a spec may have.
pub const MAX_GLOBS: usize = 64;
/// Name of the patch artifact.
pub const PATCH_NAME: &str = "changes.patch";
/// The walk stops after this many entries (a workspace may hold anything).
const MAX_WALK_ENTRIES: usize = 200_000;

impl Default for Spec {
    fn default() -> Self {
        Spec {
            globs: Vec::new(),
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
        }
    }
}

impl Spec {
    /// Checks the globs: at most 64, each non-empty, relative, without `..` or `.` or empty
    /// segments nor control characters. The error says what to do.
    pub fn validate(&self) -> Result<(), String> {
        if self.globs.len() > MAX_GLOBS {
            return Err(format!(
                "{} artifact globs given, at most {MAX_GLOBS} allowed — merge them with `*` or `**`",
                self.globs.len()
            ));
        }
        for g in &self.globs {
            if g.is_empty() {
                return Err(
                    "an artifact glob is empty — remove it or name files relative to the workspace"
                        .into(),
                );
            }
            if g.starts_with('/') {
                return Err(format!(
                    "artifact glob '{g}' is absolute — write it relative to the workspace, e.g. 'out/*.json'"
                ));
            }
            if g.chars().any(char::is_control) {
                return Err(format!(
                    "artifact glob {g:?} contains control characters — remove them"
                ));
            }
            for seg in g.split('/') {
                match seg {
                    ".." => {
                        return Err(format!(
                            "artifact glob '{g}' contains '..' — only files inside the workspace can be collected"
                        ));
                    }
                    "." | "" => {
                        return Err(format!(
                            "artifact glob '{g}' has an empty or '.' segment — write it like 'dir/*.txt'"
                        ));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// One collected artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// `changes.patch`, or the file's path relative to the workspace.
    pub name: String,
    pub kind: Kind,
    pub bytes: Vec<u8>,
    /// sha256 of `bytes`, lowercase hex.
    pub sha256: String,
}

/// What [`collect`] found.
#[derive(Debug, Default)]
pub struct Collected {
    /// Sorted by name.
    pub artifacts: Vec<Artifact>,
    /// Why something was left out ("src/big.bin: 20000000 bytes is over the 8388608-byte
    /// limit", "link: a symlink, not followed", ... "total limit reached").
    pub skipped: Vec<String>,
}

/// The runner: runs `git <args>` in the workspace inside the sandbox and returns its stdout
/// (Err on failure with a message).
pub type GitRunner<'a> = &'a dyn Fn(&[&str]) -> Result<Vec<u8>, String>;

/// Makes an artifact from bytes (e.g. logs), computing its sha256.
pub fn artifact(name: impl Into<String>, kind: Kind, bytes: Vec<u8>) -> Artifact {
    let sha256 = hex::encode(Sha256::digest(&bytes));
    Artifact {
        name: name.into(),
        kind,
        bytes,
        sha256,
    }
}

/// Collects the patch (git workspaces with a base commit), then the files matching
/// `spec.globs`, read safely and within the limits (see the module docs). Deterministic:
/// files are considered in name order and the result is sorted by name.
pub fn collect(
    ws_path: &Path,
    base_commit: Option<&str>,
    spec: &Spec,
    git_runner: GitRunner<'_>,
) -> Collected {
    let mut out = Collected::default();
    let mut total: u64 = 0;

    if let Some(base) = base_commit {
        if base.is_empty() || !base.bytes().all(|b| b.is_ascii_hexdigit()) {
            out.skipped.push(format!(
                "{PATCH_NAME}: base commit {base:?} is not a commit id"
            ));
        } else {
            match git_runner(&["add", "-A"]).and_then(|_| {
                git_runner(&[
                    "diff",
                    "--cached",
                    "--binary",
                    "--no-color",
                    "--no-ext-diff",
                    "--no-textconv",
                    base,
                    "--",
                ])
            }) {
                Err(e) => out.skipped.push(format!("{PATCH_NAME}: git failed: {e}")),
                Ok(bytes) if bytes.is_empty() => {}
                Ok(bytes) => {
                    let len = bytes.len() as u64;
                    if len > spec.max_total_bytes {
                        out.skipped.push(format!(
                            "{PATCH_NAME}: {len} bytes is over the {}-byte total limit (total limit reached)",
                            spec.max_total_bytes
                        ));
                    } else {
                        total += len;
                        out.artifacts.push(artifact(PATCH_NAME, Kind::Patch, bytes));
                    }
                }
            }
        }
    }

    let patterns: Vec<Vec<&str>> = spec
        .globs
        .iter()
        .map(|g| g.split('/').filter(|s| !s.is_empty()).collect())
        .collect();
    if !patterns.is_empty() {
        let (matches, notes) = walk(ws_path, &patterns);
        out.skipped.extend(notes);
        let has_patch = out.artifacts.iter().any(|a| a.name == PATCH_NAME);
        for (name, path) in matches {
            if has_patch && name == PATCH_NAME {
                out.skipped
                    .push(format!("{name}: the name is taken by the patch"));
                continue;
            }
            match read_regular(&path, spec.max_file_bytes) {
                Err(why) => out.skipped.push(format!("{name}: {why}")),
                Ok(bytes) => {
                    let len = bytes.len() as u64;
                    if total + len > spec.max_total_bytes {
                        out.skipped.push(format!(
                            "{name}: {len} bytes would pass the {}-byte total limit (total limit reached)",
                            spec.max_total_bytes
                        ));
                        continue;
                    }
                    total += len;
                    out.artifacts.push(artifact(name, Kind::File, bytes));
                }
            }
        }
    }
    out.artifacts.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Walks the workspace (lstat, no symlink following, `.git` skipped, directories entered only
/// if some pattern could match below them). Returns the matching non-directory entries sorted
/// by name, and notes for what was left out.
fn walk(ws: &Path, patterns: &[Vec<&str>]) -> (Vec<(String, PathBuf)>, Vec<String>) {
    let mut found = Vec::new();
    let mut notes = Vec::new();
    let mut seen = 0usize;
    // (relative segments, absolute path)
    let mut stack: Vec<(Vec<String>, PathBuf)> = vec![(Vec::new(), ws.to_path_buf())];
    'outer: while let Some((rel, dir)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                let shown = if rel.is_empty() {
                    ".".to_string()
                } else {
                    rel.join("/")
                };
                notes.push(format!("{shown}: could not be read: {e}"));
                continue;
            }
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_WALK_ENTRIES {
                notes.push(format!(
                    "the workspace has over {MAX_WALK_ENTRIES} entries: the search stopped there"
                ));
                break 'outer;
            }
            let Ok(file_name) = entry.file_name().into_string() else {
                notes.push(format!(
                    "{}: a name that is not UTF-8, left out",
                    entry.path().display()
                ));
                continue;
            };
            if file_name == ".git" {
                continue;
            }
            let mut segs = rel.clone();
            segs.push(file_name);
            let seg_refs: Vec<&str> = segs.iter().map(String::as_str).collect();
            let Ok(ft) = entry.file_type() else { continue }; // lstat semantics
            let full = patterns.iter().any(|p| glob_match(p, &seg_refs));
            if ft.is_dir() {
                if patterns.iter().any(|p| could_match_below(p, &seg_refs)) {
                    stack.push((segs, entry.path()));
                }
                continue;
            }
            if !full {
                continue;
            }
            let name = segs.join("/");
            if ft.is_symlink() {
                notes.push(format!("{name}: a symlink, not followed"));
            } else if !ft.is_file() {
                notes.push(format!("{name}: not a regular file"));
            } else {
                found.push((name, entry.path()));
            }
        }
    }
    found.sort();
    notes.sort();
    (found, notes)
}

/// Reads a regular file without following a symlink, at most `max` bytes.
fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                "a symlink, not followed".to_string()
            } else {
                format!("could not be opened: {e}")
            }
        })?;
    let md = file
        .metadata()
        .map_err(|e| format!("could not be read: {e}"))?;
    if !md.is_file() {
        return Err("not a regular file".into());
    }
    let over = |n: u64| format!("{n} bytes is over the {max}-byte limit");
    if md.len() > max {
        return Err(over(md.len()));
    }
    let mut bytes = Vec::with_capacity(md.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("could not be read: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(over(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Whether `path` (segments) matches `pat` (segments; `**` is any number of segments).
fn glob_match(pat: &[&str], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|i| glob_match(rest, &path[i..])),
        Some((first, rest)) => match path.split_first() {
            Some((seg, path_rest)) => segment_match(first, seg) && glob_match(rest, path_rest),
            None => false,
        },
    }
}

/// Whether some path below the directory `dir` (segments) could match `pat`.
fn could_match_below(pat: &[&str], dir: &[&str]) -> bool {
    match (pat.split_first(), dir.split_first()) {
        (_, None) => !pat.is_empty(),
        (None, Some(_)) => false,
        (Some((&"**", _)), Some(_)) => true,
        (Some((first, rest)), Some((seg, dir_rest))) => {
            segment_match(first, seg) && could_match_below(rest, dir_rest)
        }
    }
}

/// One segment: `*` any run of characters, `?` one character, the rest literal.
fn segment_match(pat: &str, s: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn m(pat: &str, path: &str) -> bool {
        let p: Vec<&str> = pat.split('/').collect();
        let s: Vec<&str> = path.split('/').collect();
        glob_match(&p, &s)
    }

    #[test]
    fn glob_matcher() {
        let yes = [
            ("report.md", "report.md"),
            ("*.md", "report.md"),
            ("r?port.md", "report.md"),
            ("*", "x"),
            ("out/*.json", "out/a.json"),
            ("out/**/*.json", "out/a.json"),
            ("out/**/*.json", "out/x/y/a.json"),
            ("**/*.log", "a.log"),
            ("**/*.log", "d/e/a.log"),
            ("**", "any/thing"),
            ("out/**", "out/a/b"),
            ("a*b*c", "abc"),
            ("a*b*c", "aXbYbZc"),
            ("*.tar.gz", "x.tar.gz"),
            ("é?", "éa"),
        ];
        for (p, s) in yes {
            assert!(m(p, s), "{p} should match {s}");
        }
        let no = [
            ("report.md", "report.mdx"),
            ("*.md", "docs/report.md"),
            ("out/*.json", "out/x/a.json"),
            ("out/*.json", "out/a.jsonl"),
            ("out/**/*.json", "other/a.json"),
            ("r?port.md", "rport.md"),
            ("a*b*c", "aXbY"),
            ("out/**", "outx/a"),
            ("*", "a/b"),
        ];
        for (p, s) in no {
            assert!(!m(p, s), "{p} should not match {s}");
        }
        let below = |p: &str, d: &str| {
            let p: Vec<&str> = p.split('/').collect();
            let d: Vec<&str> = d.split('/').collect();
            could_match_below(&p, &d)
        };
        assert!(below("out/**/*.json", "out"));
        assert!(below("out/**/*.json", "out/a/b"));
        assert!(below("out/*.json", "out"));
        assert!(!below("out/*.json", "out/sub"));
        assert!(!below("out/*.json", "src"));
        assert!(!below("report.md", "docs"));
        assert!(below("*/x", "anything"));
    }

    #[test]
    fn spec_defaults_and_validate() {
        let s: Spec = serde_json::from_str(r#"{"globs":["out/*.json"]}"#).unwrap();
        assert_eq!(s.max_file_bytes, 8 * 1024 * 1024);
        assert_eq!(s.max_total_bytes, 32 * 1024 * 1024);
        s.validate().unwrap();
        assert!(serde_json::from_str::<Spec>(r#"{"globz":[]}"#).is_err());
        for (g, want) in [
            ("/etc/passwd", "absolute"),
            ("../x", "'..'"),
            ("a/../b", "'..'"),
            ("", "empty"),
            ("a//b", "empty"),
            ("./a", "'.'"),
        ] {
            let spec = Spec {
                globs: vec![g.into()],
                ..Spec::default()
            };
            let err = spec.validate().unwrap_err();
            assert!(err.contains(want), "{g}: {err}");
        }
        let many = Spec {
            globs: vec!["x".into(); 65],
            ..Spec::default()
        };
        assert!(many.validate().unwrap_err().contains("at most 64"));
        let ok = Spec {
            globs: vec!["x".into(); 64],
            ..Spec::default()
        };
        ok.validate().unwrap();
    }

    #[test]
    fn artifact_hashes() {
        let a = artifact("log", Kind::Log, b"abc".to_vec());
        assert_eq!(
            a.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(a.kind, Kind::Log);
        assert_eq!(serde_json::to_string(&Kind::Patch).unwrap(), r#""patch""#);
    }

    fn git(dir: &Path, args: &[&str]) -> Result<Vec<u8>, String> {
        let out = Command::new("git")
            .args([
                "-c",
                "safe.directory=*",
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
            ])
            .args(args)
            .current_dir(dir)
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn no_git(_: &[&str]) -> Result<Vec<u8>, String> {
        panic!("git must not run without a base commit")
    }

    #[test]
    fn collect_patch_with_modified_and_new_files() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path();
        git(ws, &["init", "-q"]).unwrap();
        fs::write(ws.join("a.txt"), "one\n").unwrap();
        git(ws, &["add", "-A"]).unwrap();
        git(ws, &["commit", "-q", "-m", "base"]).unwrap();
        let base = String::from_utf8(git(ws, &["rev-parse", "HEAD"]).unwrap()).unwrap();
        let base = base.trim();
        let runner = |args: &[&str]| git(ws, args);

        // No changes: no patch.
        let c = collect(ws, Some(base), &Spec::default(), &runner);
        assert!(c.artifacts.is_empty(), "{:?}", c.artifacts);
        assert!(c.skipped.is_empty(), "{:?}", c.skipped);

        fs::write(ws.join("a.txt"), "two\n").unwrap();
        fs::create_dir(ws.join("new")).unwrap();
        fs::write(ws.join("new/b.txt"), "bee\n").unwrap();
        fs::write(ws.join("bin.dat"), [0u8, 1, 2, 255]).unwrap();
        let spec = Spec {
            globs: vec!["new/*.txt".into()],
            ..Spec::default()
        };
        let c = collect(ws, Some(base), &spec, &runner);
        let names: Vec<&str> = c.artifacts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["changes.patch", "new/b.txt"]);
        let patch = String::from_utf8_lossy(&c.artifacts[0].bytes).into_owned();
        assert_eq!(c.artifacts[0].kind, Kind::Patch);
        assert!(patch.contains("diff --git a/a.txt b/a.txt"), "{patch}");
        assert!(patch.contains("-one") && patch.contains("+two"), "{patch}");
        assert!(
            patch.contains("new file mode") && patch.contains("+bee"),
            "{patch}"
        );
        assert!(patch.contains("GIT binary patch"), "{patch}");
        assert_eq!(c.artifacts[1].kind, Kind::File);
        assert_eq!(c.artifacts[1].bytes, b"bee\n");
        assert_eq!(
            c.artifacts[1].sha256,
            artifact("", Kind::File, b"bee\n".to_vec()).sha256
        );

        // The patch applies to the base and reproduces the tree.
        let tmp2 = tempfile::tempdir().unwrap();
        let clone = tmp2.path().join("c");
        git(tmp2.path(), &["clone", "-q", ws.to_str().unwrap(), "c"]).unwrap();
        fs::write(tmp2.path().join("p"), &c.artifacts[0].bytes).unwrap();
        git(
            &clone,
            &["apply", "--index", tmp2.path().join("p").to_str().unwrap()],
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(clone.join("new/b.txt")).unwrap(),
            "bee\n"
        );
        assert_eq!(fs::read(clone.join("bin.dat")).unwrap(), [0u8, 1, 2, 255]);

        // A failing runner is reported, files still collected.
        let failing = |_: &[&str]| -> Result<Vec<u8>, String> { Err("sandbox said no".into()) };
        let c = collect(ws, Some(base), &spec, &failing);
        assert_eq!(c.artifacts.len(), 1);
        assert!(c.skipped[0].contains("sandbox said no"), "{:?}", c.skipped);
    }

    #[test]
    fn collect_files_by_glob_skips_symlinks_and_git() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path();
        fs::create_dir_all(ws.join("out/x/y")).unwrap();
        fs::create_dir_all(ws.join(".git")).unwrap();
        fs::write(ws.join(".git/config.json"), "{}").unwrap();
        fs::write(ws.join("report.md"), "# r").unwrap();
        fs::write(ws.join("notes.md"), "n").unwrap();
        fs::write(ws.join("out/a.json"), "1").unwrap();
        fs::write(ws.join("out/x/y/b.json"), "2").unwrap();
        fs::write(ws.join("out/x/c.txt"), "3").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", ws.join("out/passwd.json")).unwrap();
        std::os::unix::fs::symlink("/etc", ws.join("out/etc")).unwrap();
        let fifo = std::ffi::CString::new(ws.join("out/fifo.json").to_str().unwrap()).unwrap();
        // SAFETY: `fifo` is a valid NUL-terminated path that outlives the call.
        let rc = unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) };
        assert_eq!(rc, 0);

        let spec = Spec {
            globs: vec![
                "report.md".into(),
                "out/**/*.json".into(),
                "**/config.json".into(),
                "out/etc/**".into(),
            ],
            ..Spec::default()
        };
        let c = collect(ws, None, &spec, &no_git);
        let names: Vec<&str> = c.artifacts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["out/a.json", "out/x/y/b.json", "report.md"]);
        assert!(c.artifacts.iter().all(|a| !a.bytes.starts_with(b"root:")));
        assert!(
            c.skipped
                .contains(&"out/passwd.json: a symlink, not followed".to_string()),
            "{:?}",
            c.skipped
        );
        assert!(
            c.skipped
                .contains(&"out/etc: a symlink, not followed".to_string()),
            "{:?}",
            c.skipped
        );
        assert!(
            c.skipped
                .contains(&"out/fifo.json: not a regular file".to_string()),
            "{:?}",
            c.skipped
        );
        assert_eq!(c.skipped.len(), 3, "{:?}", c.skipped);

        // read_regular refuses a symlink even if handed one directly.
        let err = read_regular(&ws.join("out/passwd.json"), 1 << 20).unwrap_err();
        assert!(err.contains("symlink"), "{err}");
    }

    #[test]
    fn collect_limits() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path();
        fs::write(ws.join("a.bin"), vec![1u8; 400]).unwrap();
        fs::write(ws.join("b.bin"), vec![2u8; 2000]).unwrap();
        fs::write(ws.join("c.bin"), vec![3u8; 500]).unwrap();
        fs::write(ws.join("d.bin"), vec![4u8; 100]).unwrap();
        let spec = Spec {
            globs: vec!["*.bin".into()],
            max_file_bytes: 1000,
            max_total_bytes: 1000,
        };
        let c = collect(ws, None, &spec, &no_git);
        let names: Vec<&str> = c.artifacts.iter().map(|a| a.name.as_str()).collect();
        // a (400) fits, b over the per-file limit, c (500) fits (900), d (100) fits (1000).
        assert_eq!(names, ["a.bin", "c.bin", "d.bin"]);
        assert_eq!(c.skipped, ["b.bin: 2000 bytes is over the 1000-byte limit"]);

        let spec = Spec {
            max_total_bytes: 950,
            ..spec
        };
        let c = collect(ws, None, &spec, &no_git);
        let names: Vec<&str> = c.artifacts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["a.bin", "c.bin"]);
        assert_eq!(c.skipped.len(), 2);
        assert!(
            c.skipped[1].starts_with("d.bin: 100 bytes would pass")
                && c.skipped[1].contains("total limit reached"),
            "{:?}",
            c.skipped
        );

        // The patch counts toward the total.
        let patch = |args: &[&str]| -> Result<Vec<u8>, String> {
            Ok(if args[0] == "diff" {
                vec![b'p'; 700]
            } else {
                Vec::new()
            })
        };
        let base = "0123456789abcdef0123456789abcdef01234567";
        let c = collect(ws, Some(base), &spec, &patch);
        let names: Vec<&str> = c.artifacts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["changes.patch", "d.bin"]);
        assert_eq!(c.artifacts[0].kind, Kind::Patch);
        // A patch over the total is left out with a reason.
        let small = Spec {
            max_total_bytes: 10,
            ..spec
        };
        let c = collect(ws, Some(base), &small, &patch);
        assert!(c.artifacts.is_empty());
        assert!(
            c.skipped[0].starts_with("changes.patch: 700 bytes"),
            "{:?}",
            c.skipped
        );
        // A base that is not a commit id never reaches git.
        let c = collect(ws, Some("--output=/tmp/x"), &Spec::default(), &no_git);
        assert!(c.skipped[0].contains("not a commit id"));
    }
}
