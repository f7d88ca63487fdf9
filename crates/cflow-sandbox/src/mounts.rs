//! The sandbox's filesystem view, built by the namespace's init inside its own mount namespace
//! (it holds every capability of the new user namespace at that point):
//!
//! 1. `/` made recursively private, so nothing propagates back to the host;
//! 2. the host's `/` bound recursively onto a staging directory and made read-only and
//!    `nosuid` there, submounts included (`mount_setattr` with `AT_RECURSIVE`);
//! 3. a fresh tmpfs on `/tmp` (and `/dev/shm`), capped in size;
//! 4. each hidden path covered: a directory by an empty read-only tmpfs, a file by `/dev/null`;
//! 5. each writable path (the workspace) bound read-write at its own place, even beneath a
//!    hidden directory;
//! 6. a fresh `/proc` that shows only the sandbox's processes;
//! 7. `pivot_root` into the staging directory and the old root detached.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const STAGING: &str = "/tmp";
const NEW_ROOT: &str = "/tmp/.cflow-root";

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    let src = source.map(cstr).transpose().map_err(|e| e.to_string())?;
    let tgt = cstr(target).map_err(|e| e.to_string())?;
    let fs = fstype.map(|f| CString::new(f).expect("static fs type"));
    let dat = data.map(|d| CString::new(d).expect("mount data without NUL"));
    // SAFETY: every pointer is either null or a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            tgt.as_ptr(),
            fs.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            dat.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast::<libc::c_void>()),
        )
    };
    if rc != 0 {
        return Err(format!(
            "mount {} on {}: {}",
            source.map_or("-".into(), |s| s.display().to_string()),
            target.display(),
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// Sets attributes on the mount at `path` (and every mount beneath it with `recursive`).
fn mount_setattr(path: &Path, set: u64, recursive: bool) -> Result<(), String> {
    let p = cstr(path).map_err(|e| e.to_string())?;
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: valid path string and attribute struct of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            p.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "mount_setattr {}: {}",
            path.display(),
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// `/tmp/.cflow-root` + an absolute host path.
fn under_root(path: &Path) -> PathBuf {
    let rel = path.strip_prefix("/").unwrap_or(path);
    Path::new(NEW_ROOT).join(rel)
}

/// What [`prepare`] opened before the view hides the host: the writable paths, by fd.
pub struct Sources {
    writable: Vec<(PathBuf, OwnedFd)>,
}

/// Opens every writable path while the host's tree is still visible (the staging tmpfs on `/tmp`
/// would hide a workspace under `/tmp`). Init calls it before it becomes the sandbox's
/// user, who may not be allowed to search the directories above these paths.
pub fn open_sources(writable: &[PathBuf]) -> Result<Sources, String> {
    let mut out = Vec::new();
    for path in writable {
        let c = cstr(path).map_err(|e| e.to_string())?;
        // SAFETY: valid path; the fd returned is owned below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(format!(
                "writable path {}: {}",
                path.display(),
                io::Error::last_os_error()
            ));
        }
        // SAFETY: fd was just returned by open and is owned by nobody else.
        out.push((path.clone(), unsafe {
            <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        }));
    }
    Ok(Sources { writable: out })
}

/// Covers a directory with an empty tmpfs (made read-only once the writable paths beneath it
/// are bound).
fn cover(dir: &Path) -> Result<(), String> {
    mount(
        Some(Path::new("tmpfs")),
        dir,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("size=64k,mode=0755"),
    )
}

/// The first directory on the way to `target` that the sandbox's user may not search, if the
/// walk meets one before it meets a missing entry. The sandbox's root is the host user it maps
/// to (`nobody` when cflow runs as root), with no power over the host's other users' files: a
/// workspace under a data directory made by `mktemp -d` (0700, owned by root) could not be
/// reached. Covering that directory with a tmpfs hides nothing the user could see, and the path
/// to the workspace is then made inside the cover.
fn unsearchable_ancestor(target: &Path) -> Result<Option<PathBuf>, String> {
    let mut dir = PathBuf::from("/");
    for part in target.iter().skip(1) {
        let next = dir.join(part);
        match std::fs::symlink_metadata(&next) {
            Ok(meta) if meta.is_dir() => dir = next,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(Some(dir)),
            Err(e) => return Err(format!("{}: {e}", next.display())),
        }
    }
    Ok(None)
}

/// Builds the view and pivots into it. Must run in a new mount namespace.
pub fn build(sources: &Sources, hidden: &[PathBuf], tmp_bytes: u64) -> Result<(), String> {
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    mount(
        Some(Path::new("tmpfs")),
        Path::new(STAGING),
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("size=64k,mode=0700"),
    )?;
    std::fs::create_dir(NEW_ROOT).map_err(|e| format!("mkdir {NEW_ROOT}: {e}"))?;
    let root = Path::new(NEW_ROOT);
    mount(
        Some(Path::new("/")),
        root,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    mount_setattr(root, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, true)?;

    let tmp_opts = format!("size={tmp_bytes},mode=1777");
    mount(
        Some(Path::new("tmpfs")),
        &under_root(Path::new("/tmp")),
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&tmp_opts),
    )?;
    let shm = under_root(Path::new("/dev/shm"));
    if shm.is_dir() {
        mount(
            Some(Path::new("tmpfs")),
            &shm,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(&tmp_opts),
        )?;
    }

    // Hidden paths: covered before the writable binds, so a workspace beneath a hidden data
    // directory is bound on top of the cover. (A hidden path the sandbox's user cannot reach is
    // out of sight already.)
    let mut covers = Vec::new();
    for path in hidden {
        let target = under_root(path);
        let Ok(meta) = std::fs::symlink_metadata(&target) else {
            continue;
        };
        if meta.is_dir() {
            cover(&target)?;
            covers.push(target);
        } else if meta.is_file() {
            mount(
                Some(Path::new("/dev/null")),
                &target,
                None,
                libc::MS_BIND,
                None,
            )?;
        }
    }

    for (path, fd) in &sources.writable {
        let target = under_root(path);
        if !target.is_dir() {
            // Beneath a cover, or beneath a directory the sandbox's user may not search: the
            // mount point has to be made in a tmpfs.
            if let Some(dir) = unsearchable_ancestor(&target)? {
                cover(&dir)?;
                covers.push(dir);
            }
            std::fs::create_dir_all(&target)
                .map_err(|e| format!("mkdir {}: {e}", target.display()))?;
        }
        let source = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        mount(
            Some(&source),
            &target,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )?;
        mount_setattr(&target, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, true)?;
    }
    for cover in &covers {
        mount_setattr(cover, MOUNT_ATTR_RDONLY, false)?;
    }

    // /proc of the new PID namespace: only the sandbox's processes.
    mount(
        Some(Path::new("proc")),
        &under_root(Path::new("/proc")),
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?;

    pivot(root)
}

fn pivot(root: &Path) -> Result<(), String> {
    std::env::set_current_dir(root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
    let dot = CString::new(".").expect("static");
    // SAFETY: pivot_root(".", ".") stacks the old root on top of the new one; both are valid
    // strings. The old root is detached right after.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    if rc != 0 {
        return Err(format!("pivot_root: {}", io::Error::last_os_error()));
    }
    // SAFETY: valid string; MNT_DETACH lazily unmounts the old root stacked on ".".
    if unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(format!(
            "detaching the old root: {}",
            io::Error::last_os_error()
        ));
    }
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}
