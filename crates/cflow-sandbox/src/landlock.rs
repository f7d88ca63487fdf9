//! Landlock rules for the sandboxed command, made with the raw syscalls (no wrapper crate): read
//! and execute everywhere in the (already read-only) view, full access only beneath the writable
//! paths, `/tmp` and `/dev/shm`; with the network off, every TCP bind and connect refused (ABI 4);
//! signals and abstract unix sockets scoped to the sandbox (ABI 6). Rights the running kernel's
//! ABI does not know are left out (best effort), and the ABI in use is reported.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const SYS_CREATE_RULESET: libc::c_long = 444;
const SYS_ADD_RULE: libc::c_long = 445;
const SYS_RESTRICT_SELF: libc::c_long = 446;
const CREATE_RULESET_VERSION: u32 = 1;
const RULE_PATH_BENEATH: u32 = 1;

const EXECUTE: u64 = 1 << 0;
const WRITE_FILE: u64 = 1 << 1;
const READ_FILE: u64 = 1 << 2;
const READ_DIR: u64 = 1 << 3;
const REMOVE_DIR: u64 = 1 << 4;
const REMOVE_FILE: u64 = 1 << 5;
const MAKE_CHAR: u64 = 1 << 6;
const MAKE_DIR: u64 = 1 << 7;
const MAKE_REG: u64 = 1 << 8;
const MAKE_SOCK: u64 = 1 << 9;
const MAKE_FIFO: u64 = 1 << 10;
const MAKE_BLOCK: u64 = 1 << 11;
const MAKE_SYM: u64 = 1 << 12;
const REFER: u64 = 1 << 13;
const TRUNCATE: u64 = 1 << 14;
const IOCTL_DEV: u64 = 1 << 15;

const NET_BIND_TCP: u64 = 1 << 0;
const NET_CONNECT_TCP: u64 = 1 << 1;
const SCOPE_ABSTRACT_UNIX: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The landlock ABI version of the running kernel, or why there is none.
pub fn abi() -> Result<u32, String> {
    // SAFETY: with a null attribute, size 0 and the VERSION flag the call only returns a number.
    let v = unsafe {
        libc::syscall(
            SYS_CREATE_RULESET,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if v < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOSYS) => "the kernel has no landlock support".to_string(),
            Some(libc::EOPNOTSUPP) => {
                "landlock is built in but not enabled (lsm= boot list)".to_string()
            }
            _ => format!("landlock probe failed: {e}"),
        });
    }
    Ok(v as u32)
}

fn fs_rights(abi: u32) -> u64 {
    let mut all = EXECUTE
        | WRITE_FILE
        | READ_FILE
        | READ_DIR
        | REMOVE_DIR
        | REMOVE_FILE
        | MAKE_CHAR
        | MAKE_DIR
        | MAKE_REG
        | MAKE_SOCK
        | MAKE_FIFO
        | MAKE_BLOCK
        | MAKE_SYM;
    if abi >= 2 {
        all |= REFER;
    }
    if abi >= 3 {
        all |= TRUNCATE;
    }
    if abi >= 5 {
        all |= IOCTL_DEV;
    }
    all
}

/// Restricts the calling process (and everything it starts) to: read and execute anywhere,
/// everything beneath `writable`, writes to device files under `/dev` (`/dev/null`, ttys), and
/// with `network_off` no TCP at all. Requires `no_new_privs`. Returns the ABI version used.
///
/// `connect_ports`: with the network restricted, TCP connections are allowed to these ports
/// only (the egress proxy's port on the sandbox's own loopback).
pub fn restrict(
    writable: &[&Path],
    network_off: bool,
    connect_ports: &[u16],
) -> Result<u32, String> {
    let abi = abi()?;
    let handled = fs_rights(abi);
    let read = READ_FILE | READ_DIR | EXECUTE;
    let attr = RulesetAttr {
        handled_access_fs: handled,
        handled_access_net: if abi >= 4 && network_off {
            NET_BIND_TCP | NET_CONNECT_TCP
        } else {
            0
        },
        scoped: if abi >= 6 {
            SCOPE_ABSTRACT_UNIX | SCOPE_SIGNAL
        } else {
            0
        },
    };
    // The attribute struct grew with the ABI: pass only the part this kernel knows.
    let size = match abi {
        1..=3 => 8,
        4 | 5 => 16,
        _ => std::mem::size_of::<RulesetAttr>(),
    };
    // SAFETY: `attr` is a valid, initialised struct of at least `size` bytes.
    let fd = unsafe { libc::syscall(SYS_CREATE_RULESET, &attr as *const RulesetAttr, size, 0u32) };
    if fd < 0 {
        return Err(format!(
            "landlock_create_ruleset: {}",
            io::Error::last_os_error()
        ));
    }
    let ruleset = fd as i32;
    let result = (|| {
        add_path(ruleset, Path::new("/"), read)?;
        let dev_rights = read | WRITE_FILE | if abi >= 5 { IOCTL_DEV } else { 0 };
        add_path(ruleset, Path::new("/dev"), dev_rights)?;
        for dir in writable {
            add_path(ruleset, dir, handled)?;
        }
        if abi >= 4 && network_off {
            for port in connect_ports {
                add_port(ruleset, *port)?;
            }
        }
        // SAFETY: plain syscall on a ruleset fd we own.
        if unsafe { libc::syscall(SYS_RESTRICT_SELF, ruleset, 0u32) } < 0 {
            return Err(format!(
                "landlock_restrict_self: {}",
                io::Error::last_os_error()
            ));
        }
        Ok(abi)
    })();
    // SAFETY: closing the ruleset fd we created; nothing else uses it.
    unsafe { libc::close(ruleset) };
    result
}

fn add_path(ruleset: i32, path: &Path, access: u64) -> Result<(), String> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| "path with a NUL byte")?;
    // SAFETY: `c` is a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        // A path that does not exist in this view needs no rule.
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(());
        }
        return Err(format!("landlock: cannot open {}: {e}", path.display()));
    }
    // Rights that only make sense on directories are refused by the kernel for a file.
    let mut meta: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; meta is a valid out pointer.
    let is_dir = unsafe { libc::fstat(fd, &mut meta) } == 0
        && (meta.st_mode & libc::S_IFMT) == libc::S_IFDIR;
    let access = if is_dir {
        access
    } else {
        access & (EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV)
    };
    let attr = PathBeneathAttr {
        allowed_access: access,
        parent_fd: fd,
    };
    // SAFETY: `attr` is a valid packed struct; fds are open.
    let rc = unsafe {
        libc::syscall(
            SYS_ADD_RULE,
            ruleset,
            RULE_PATH_BENEATH,
            &attr as *const PathBeneathAttr,
            0u32,
        )
    };
    let err = io::Error::last_os_error();
    // SAFETY: closing the O_PATH fd we opened.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(format!("landlock_add_rule {}: {err}", path.display()));
    }
    Ok(())
}

const RULE_NET_PORT: u32 = 2;

#[repr(C, packed)]
struct NetPortAttr {
    allowed_access: u64,
    port: u64,
}

fn add_port(ruleset: i32, port: u16) -> Result<(), String> {
    let attr = NetPortAttr {
        allowed_access: NET_CONNECT_TCP,
        port: u64::from(port),
    };
    // SAFETY: `attr` is a valid packed struct; the ruleset fd is open.
    let rc = unsafe {
        libc::syscall(
            SYS_ADD_RULE,
            ruleset,
            RULE_NET_PORT,
            &attr as *const NetPortAttr,
            0u32,
        )
    };
    if rc < 0 {
        return Err(format!(
            "landlock_add_rule (connect to port {port}): {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}
