//! The seccomp layer: a small classic-BPF deny-list applied to every sandboxed command.
//!
//! What is denied, and why: the command already runs without capabilities, under
//! `no_new_privs` and landlock, so the filter removes the kernel surface that is either
//! privileged anyway or a frequent source of escapes: tracing other processes (`ptrace`,
//! `process_vm_*`), every mount API (old and new), namespace creation (`unshare`, `setns`,
//! `clone` with any `CLONE_NEW*` flag), `bpf`, `perf_event_open`, `io_uring_*` (which bypasses
//! seccomp for the operations it submits), the kernel keyring, module loading, `kexec`,
//! `reboot`, swap, `acct`, `userfaultfd`, file handles (`open_by_handle_at`), `syslog`,
//! `quotactl`, `vhangup`, `chroot` and, on x86_64, `iopl`/`ioperm`. With the network off,
//! `socket`/`socketpair` are denied for every address family except `AF_UNIX`. `clone3` always
//! fails with `ENOSYS` (its flags live in memory, out of BPF's reach; libc then falls back to
//! `clone`, whose flags are checked). A foreign architecture kills the process, and on x86_64
//! the x32 ABI gets `ENOSYS`. Everything else is allowed.
//!
//! Notify design: with `notify`, denied calls return `SECCOMP_RET_USER_NOTIF`. The sandbox's
//! init installs the filter on itself with a new listener fd, forks the command (which
//! inherits the filter), polls the listener and calls [`deny_next`] for each attempt: it
//! answers `EPERM` and returns a description for the run's record. Init stays under the
//! filter, so it must never make a denied call itself (it would wait on its own listener);
//! if the listener is closed, denied calls fail with `ENOSYS` instead. Without `notify`,
//! denied calls fail with `EPERM` directly and nothing is recorded.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The `AUDIT_ARCH_*` value of the native syscall ABI (`EM_*` | 64-bit | little-endian).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64

/// The bit that marks an x32-ABI syscall number on x86_64.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Every namespace-creating `clone` flag.
const CLONE_NS_FLAGS: u32 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWTIME) as u32;

// Offsets into `struct seccomp_data`: nr (u32), arch (u32), instruction_pointer (u64), args[6].
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// The low 32 bits of args[0].
#[cfg(target_endian = "little")]
const OFF_ARG0_LO: u32 = 16;
#[cfg(target_endian = "big")]
const OFF_ARG0_LO: u32 = 20;

// Classic BPF opcodes (linux/filter.h), as the 16-bit `code` field.
const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
#[cfg(target_arch = "x86_64")]
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// Syscalls denied whatever their arguments (`clone`, `socket`, `socketpair` and `clone3` are
/// handled separately).
const DENIED: &[(libc::c_long, &str)] = &[
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_process_vm_readv, "process_vm_readv"),
    (libc::SYS_process_vm_writev, "process_vm_writev"),
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_pivot_root, "pivot_root"),
    (libc::SYS_move_mount, "move_mount"),
    (libc::SYS_open_tree, "open_tree"),
    (libc::SYS_fsopen, "fsopen"),
    (libc::SYS_fsconfig, "fsconfig"),
    (libc::SYS_fsmount, "fsmount"),
    (libc::SYS_fspick, "fspick"),
    (libc::SYS_mount_setattr, "mount_setattr"),
    (libc::SYS_unshare, "unshare"),
    (libc::SYS_setns, "setns"),
    (libc::SYS_kexec_load, "kexec_load"),
    (libc::SYS_kexec_file_load, "kexec_file_load"),
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_perf_event_open, "perf_event_open"),
    (libc::SYS_io_uring_setup, "io_uring_setup"),
    (libc::SYS_io_uring_enter, "io_uring_enter"),
    (libc::SYS_io_uring_register, "io_uring_register"),
    (libc::SYS_add_key, "add_key"),
    (libc::SYS_request_key, "request_key"),
    (libc::SYS_keyctl, "keyctl"),
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_delete_module, "delete_module"),
    (libc::SYS_reboot, "reboot"),
    (libc::SYS_swapon, "swapon"),
    (libc::SYS_swapoff, "swapoff"),
    (libc::SYS_acct, "acct"),
    (libc::SYS_userfaultfd, "userfaultfd"),
    (libc::SYS_open_by_handle_at, "open_by_handle_at"),
    (libc::SYS_name_to_handle_at, "name_to_handle_at"),
    (libc::SYS_syslog, "syslog"),
    (libc::SYS_lookup_dcookie, "lookup_dcookie"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_iopl, "iopl"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_ioperm, "ioperm"),
    (libc::SYS_quotactl, "quotactl"),
    (libc::SYS_quotactl_fd, "quotactl_fd"),
    (libc::SYS_vhangup, "vhangup"),
    (libc::SYS_chroot, "chroot"),
];

/// Extra names for messages: the conditionally denied calls and what init itself uses.
const OTHER_NAMES: &[(libc::c_long, &str)] = &[
    (libc::SYS_clone, "clone"),
    (libc::SYS_clone3, "clone3"),
    (libc::SYS_socket, "socket"),
    (libc::SYS_socketpair, "socketpair"),
    (libc::SYS_read, "read"),
    (libc::SYS_write, "write"),
    (libc::SYS_openat, "openat"),
    (libc::SYS_close, "close"),
    (libc::SYS_ioctl, "ioctl"),
    (libc::SYS_execve, "execve"),
    (libc::SYS_execveat, "execveat"),
    (libc::SYS_wait4, "wait4"),
    (libc::SYS_kill, "kill"),
    (libc::SYS_exit, "exit"),
    (libc::SYS_exit_group, "exit_group"),
    (libc::SYS_getpid, "getpid"),
    (libc::SYS_seccomp, "seccomp"),
    (libc::SYS_prctl, "prctl"),
    (libc::SYS_connect, "connect"),
    (libc::SYS_bind, "bind"),
    (libc::SYS_personality, "personality"),
];

/// A compiled classic-BPF seccomp program.
#[derive(Clone)]
pub struct Filter {
    insns: Vec<libc::sock_filter>,
}

impl Filter {
    /// The number of BPF instructions.
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    /// Whether the program has no instructions (never true for [`build`]'s output).
    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("instructions", &self.insns.len())
            .finish()
    }
}

const fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Builds the filter. `network_off`: also deny socket(2)/socketpair(2) for every address family
/// except `AF_UNIX`. `notify`: denied syscalls return `SECCOMP_RET_USER_NOTIF` (so a supervisor
/// can record them) when true, or `SECCOMP_RET_ERRNO(EPERM)` when false.
///
/// Every jump is at most 4 instructions forward: the program is a sequence of independent
/// blocks, each "does this syscall number match? then the next instruction returns".
pub fn build(network_off: bool, notify: bool) -> Filter {
    let deny = if notify {
        libc::SECCOMP_RET_USER_NOTIF
    } else {
        libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA)
    };
    let enosys = libc::SECCOMP_RET_ERRNO | (libc::ENOSYS as u32 & libc::SECCOMP_RET_DATA);
    let allow = libc::SECCOMP_RET_ALLOW;

    let mut p = Vec::with_capacity(64 + DENIED.len() * 2);

    // 1. Only the native ABI: anything else kills the process.
    p.push(stmt(LD_W_ABS, OFF_ARCH));
    p.push(jump(JEQ_K, AUDIT_ARCH, 1, 0));
    p.push(stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS));
    p.push(stmt(LD_W_ABS, OFF_NR));
    #[cfg(target_arch = "x86_64")]
    {
        p.push(jump(JGE_K, X32_SYSCALL_BIT, 0, 1));
        p.push(stmt(RET_K, enosys));
    }

    // 2. clone3: its flags are behind a pointer, so make libc fall back to clone.
    p.push(jump(JEQ_K, libc::SYS_clone3 as u32, 0, 1));
    p.push(stmt(RET_K, enosys));

    // 4. Denied whatever the arguments.
    for &(nr, _) in DENIED {
        p.push(jump(JEQ_K, nr as u32, 0, 1));
        p.push(stmt(RET_K, deny));
    }

    // The blocks below load an argument into the accumulator, so each ends in a return.
    // 3. clone with a namespace flag (flags are arg 0 on x86_64 and aarch64).
    p.push(jump(JEQ_K, libc::SYS_clone as u32, 0, 4));
    p.push(stmt(LD_W_ABS, OFF_ARG0_LO));
    p.push(jump(JSET_K, CLONE_NS_FLAGS, 0, 1));
    p.push(stmt(RET_K, deny));
    p.push(stmt(RET_K, allow));

    // 5. No network: only AF_UNIX sockets.
    if network_off {
        p.push(jump(JEQ_K, libc::SYS_socket as u32, 1, 0));
        p.push(jump(JEQ_K, libc::SYS_socketpair as u32, 0, 4));
        p.push(stmt(LD_W_ABS, OFF_ARG0_LO));
        p.push(jump(JEQ_K, libc::AF_UNIX as u32, 0, 1));
        p.push(stmt(RET_K, allow));
        p.push(stmt(RET_K, deny));
    }

    // 6. Everything else.
    p.push(stmt(RET_K, allow));
    Filter { insns: p }
}

/// Installs the filter on the calling thread (requires `no_new_privs` already set, or
/// `CAP_SYS_ADMIN`). With `notify` filters, uses `SECCOMP_FILTER_FLAG_NEW_LISTENER` and returns
/// the listener fd (close-on-exec). Fails with `EBUSY` if an ancestor filter already has a
/// listener.
pub fn install(filter: &Filter, notify: bool) -> io::Result<Option<OwnedFd>> {
    let len = u16::try_from(filter.insns.len())
        .ok()
        .filter(|&n| n > 0 && i32::from(n) <= libc::BPF_MAXINSNS)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let prog = libc::sock_fprog {
        len,
        // The kernel only reads the program (it copies it in).
        filter: filter.insns.as_ptr().cast_mut(),
    };
    let flags: libc::c_ulong = if notify {
        libc::SECCOMP_FILTER_FLAG_NEW_LISTENER
    } else {
        0
    };
    // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER, flags, &prog) reads `prog` and the `len`
    // instructions it points to, both alive for the duration of the call; it writes nothing to
    // our memory.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER as libc::c_ulong,
            flags,
            &prog as *const libc::sock_fprog,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    if !notify {
        return Ok(None);
    }
    let fd = libc::c_int::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: with NEW_LISTENER the kernel returned a fresh fd (opened O_CLOEXEC) that nothing
    // else owns.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Whether the kernel supports seccomp filters and user notification, probed without
/// installing anything on the caller. `Err(why)` when not.
pub fn probe() -> Result<(), String> {
    for (action, name) in [
        (libc::SECCOMP_RET_KILL_PROCESS, "SECCOMP_RET_KILL_PROCESS"),
        (libc::SECCOMP_RET_ERRNO, "SECCOMP_RET_ERRNO"),
        (libc::SECCOMP_RET_USER_NOTIF, "SECCOMP_RET_USER_NOTIF"),
    ] {
        let action: u32 = action;
        // SAFETY: SECCOMP_GET_ACTION_AVAIL only reads the u32 behind the pointer, which lives
        // on our stack for the whole call; nothing is installed.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_GET_ACTION_AVAIL as libc::c_ulong,
                0 as libc::c_ulong,
                &action as *const u32,
            )
        };
        if ret != 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::ENOSYS) => "the kernel has no seccomp(2) syscall".to_string(),
                Some(libc::EINVAL) => {
                    "the kernel does not support seccomp filters (CONFIG_SECCOMP_FILTER)"
                        .to_string()
                }
                Some(libc::EOPNOTSUPP) => format!("the kernel does not support {name}"),
                _ => format!("seccomp(SECCOMP_GET_ACTION_AVAIL, {name}): {err}"),
            });
        }
    }
    let mut sizes = libc::seccomp_notif_sizes {
        seccomp_notif: 0,
        seccomp_notif_resp: 0,
        seccomp_data: 0,
    };
    // SAFETY: SECCOMP_GET_NOTIF_SIZES writes one `struct seccomp_notif_sizes` (three u16s),
    // exactly the size of `sizes`, which outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_NOTIF_SIZES as libc::c_ulong,
            0 as libc::c_ulong,
            &mut sizes as *mut libc::seccomp_notif_sizes,
        )
    };
    if ret != 0 {
        return Err(format!(
            "seccomp(SECCOMP_GET_NOTIF_SIZES): {}",
            io::Error::last_os_error()
        ));
    }
    if usize::from(sizes.seccomp_data) != std::mem::size_of::<libc::seccomp_data>() {
        return Err(format!(
            "unexpected struct seccomp_data size {} (expected {})",
            sizes.seccomp_data,
            std::mem::size_of::<libc::seccomp_data>()
        ));
    }
    Ok(())
}

/// Receives one pending notification from the listener, answers it with `EPERM` and returns
/// what was denied ("ptrace", "socket(AF_INET)", "clone(new namespace)", ...). `Ok(None)` when
/// the notification vanished before it could be received (its process died) or the wait was
/// interrupted. Blocks if nothing is pending: poll the listener first.
pub fn deny_next(listener: BorrowedFd<'_>) -> io::Result<Option<String>> {
    // SAFETY: seccomp_notif is plain old data (integers); all-zero is a valid value, and the
    // kernel requires the receive buffer to be zeroed.
    let mut notif: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    // SAFETY: SECCOMP_IOCTL_NOTIF_RECV writes one `struct seccomp_notif` (its size is encoded
    // in the request number) into `notif`, which outlives the call.
    let ret = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_RECV,
            &mut notif as *mut libc::seccomp_notif,
        )
    };
    if ret < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::EINTR) => Ok(None),
            _ => Err(err),
        };
    }
    let mut resp = libc::seccomp_notif_resp {
        id: notif.id,
        val: 0,
        error: -libc::EPERM,
        flags: 0,
    };
    // SAFETY: SECCOMP_IOCTL_NOTIF_SEND reads one `struct seccomp_notif_resp` from `resp`,
    // which outlives the call.
    let ret = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SEND,
            &mut resp as *mut libc::seccomp_notif_resp,
        )
    };
    if ret < 0 {
        let err = io::Error::last_os_error();
        // ENOENT: the target died (or was interrupted) meanwhile; the attempt still happened.
        if err.raw_os_error() != Some(libc::ENOENT) {
            return Err(err);
        }
    }
    Ok(Some(describe(&notif.data)))
}

/// A description of a denied call for the attempt record.
fn describe(data: &libc::seccomp_data) -> String {
    let nr = libc::c_long::from(data.nr);
    let arg0_lo = data.args[0] as u32;
    if nr == libc::SYS_clone && arg0_lo & CLONE_NS_FLAGS != 0 {
        "clone(new namespace)".to_string()
    } else if nr == libc::SYS_socket || nr == libc::SYS_socketpair {
        format!("{}({})", syscall_name(nr), family_name(arg0_lo))
    } else {
        syscall_name(nr)
    }
}

fn family_name(family: u32) -> String {
    let name = match libc::c_int::try_from(family).unwrap_or(-1) {
        libc::AF_UNIX => "AF_UNIX",
        libc::AF_INET => "AF_INET",
        libc::AF_INET6 => "AF_INET6",
        libc::AF_NETLINK => "AF_NETLINK",
        libc::AF_PACKET => "AF_PACKET",
        libc::AF_KEY => "AF_KEY",
        libc::AF_BLUETOOTH => "AF_BLUETOOTH",
        libc::AF_CAN => "AF_CAN",
        libc::AF_ALG => "AF_ALG",
        libc::AF_VSOCK => "AF_VSOCK",
        libc::AF_XDP => "AF_XDP",
        libc::AF_TIPC => "AF_TIPC",
        _ => return format!("family {family}"),
    };
    name.to_string()
}

/// The name of a syscall number for messages ("ptrace"), or "syscall <nr>".
pub fn syscall_name(nr: i64) -> String {
    DENIED
        .iter()
        .chain(OTHER_NAMES)
        .find(|&&(n, _)| n == nr)
        .map_or_else(|| format!("syscall {nr}"), |&(_, name)| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    // ---- a tiny classic-BPF interpreter, to check the program's logic without a kernel ----

    fn data(arch: u32, nr: libc::c_long, arg0: u64) -> [u8; 64] {
        let mut d = [0u8; 64];
        d[0..4].copy_from_slice(&(nr as u32).to_ne_bytes());
        d[4..8].copy_from_slice(&arch.to_ne_bytes());
        d[16..24].copy_from_slice(&arg0.to_ne_bytes());
        d
    }

    fn run(f: &Filter, d: &[u8; 64]) -> u32 {
        let mut acc: u32 = 0;
        let mut pc = 0usize;
        loop {
            let i = f.insns[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => {
                    let k = i.k as usize;
                    acc = u32::from_ne_bytes(d[k..k + 4].try_into().unwrap());
                }
                RET_K => return i.k,
                c if c == JEQ_K || c == JSET_K || c == (libc::BPF_JMP | libc::BPF_JGE) as u16 => {
                    let taken = match c {
                        JEQ_K => acc == i.k,
                        JSET_K => acc & i.k != 0,
                        _ => acc >= i.k,
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    const EPERM_RET: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const ENOSYS_RET: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

    #[test]
    fn program_is_small_and_jumps_stay_inside() {
        for (net, notify) in [(false, false), (false, true), (true, false), (true, true)] {
            let f = build(net, notify);
            assert!(!f.is_empty());
            assert!(f.len() < 150, "{} instructions", f.len());
            for (idx, i) in f.insns.iter().enumerate() {
                if i.code & 0x07 == libc::BPF_JMP as u16 {
                    assert!(
                        idx + 1 + usize::from(i.jt.max(i.jf)) < f.len(),
                        "jump at {idx}"
                    );
                }
            }
            assert_eq!(f.insns.last().unwrap().code, RET_K);
        }
        assert_eq!(
            format!("{:?}", build(false, false)),
            format!("Filter {{ instructions: {} }}", build(false, false).len())
        );
    }

    #[test]
    fn program_logic() {
        let f = build(true, false);
        let a = AUDIT_ARCH;
        let allow = libc::SECCOMP_RET_ALLOW;
        assert_eq!(
            run(&f, &data(0x4000_0003, libc::SYS_getpid, 0)),
            libc::SECCOMP_RET_KILL_PROCESS
        );
        for nr in [
            libc::SYS_getpid,
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_wait4,
            libc::SYS_kill,
            libc::SYS_ioctl,
            libc::SYS_signalfd4,
            libc::SYS_exit_group,
            libc::SYS_personality,
            libc::SYS_execve,
        ] {
            assert_eq!(run(&f, &data(a, nr, 0)), allow, "{}", syscall_name(nr));
        }
        for &(nr, name) in DENIED {
            assert_eq!(run(&f, &data(a, nr, 0)), EPERM_RET, "{name}");
        }
        assert_eq!(run(&f, &data(a, libc::SYS_clone3, 0)), ENOSYS_RET);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(run(&f, &data(a, 0x4000_0000 + 39, 0)), ENOSYS_RET);
        let fork_flags =
            (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD) as u64;
        assert_eq!(run(&f, &data(a, libc::SYS_clone, fork_flags)), allow);
        let thread_flags = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        assert_eq!(run(&f, &data(a, libc::SYS_clone, thread_flags)), allow);
        for ns in [libc::CLONE_NEWUSER, libc::CLONE_NEWNET, libc::CLONE_NEWTIME] {
            let flags = fork_flags | ns as u64;
            assert_eq!(run(&f, &data(a, libc::SYS_clone, flags)), EPERM_RET);
        }
        for nr in [libc::SYS_socket, libc::SYS_socketpair] {
            assert_eq!(run(&f, &data(a, nr, libc::AF_UNIX as u64)), allow);
            assert_eq!(run(&f, &data(a, nr, libc::AF_INET as u64)), EPERM_RET);
            assert_eq!(run(&f, &data(a, nr, libc::AF_NETLINK as u64)), EPERM_RET);
        }

        let open = build(false, true);
        assert_eq!(
            run(&open, &data(a, libc::SYS_socket, libc::AF_INET as u64)),
            allow
        );
        assert_eq!(
            run(&open, &data(a, libc::SYS_ptrace, 0)),
            libc::SECCOMP_RET_USER_NOTIF
        );
        assert_eq!(run(&open, &data(a, libc::SYS_clone3, 0)), ENOSYS_RET);
    }

    #[test]
    fn names_and_ioctl_numbers() {
        assert_eq!(syscall_name(libc::SYS_ptrace), "ptrace");
        assert_eq!(syscall_name(libc::SYS_unshare), "unshare");
        assert_eq!(syscall_name(99_999), "syscall 99999");
        let mut d: libc::seccomp_data = unsafe_zeroed_data();
        d.nr = libc::SYS_socket as i32;
        d.args[0] = libc::AF_INET6 as u64;
        assert_eq!(describe(&d), "socket(AF_INET6)");
        d.args[0] = 4242;
        assert_eq!(describe(&d), "socket(family 4242)");
        d.nr = libc::SYS_clone as i32;
        d.args[0] = (libc::CLONE_NEWNS | libc::SIGCHLD) as u64;
        assert_eq!(describe(&d), "clone(new namespace)");
        d.nr = libc::SYS_bpf as i32;
        assert_eq!(describe(&d), "bpf");

        assert_eq!(std::mem::size_of::<libc::seccomp_notif>(), 80);
        assert_eq!(std::mem::size_of::<libc::seccomp_notif_resp>(), 24);
        // _IOWR('!', nr, size) = (3 << 30) | (size << 16) | ('!' << 8) | nr.
        let iowr = |nr: u32, size: u32| {
            ((3u32 << 30) | (size << 16) | (u32::from(b'!') << 8) | nr) as libc::Ioctl
        };
        assert_eq!(libc::SECCOMP_IOCTL_NOTIF_RECV, iowr(0, 80));
        assert_eq!(libc::SECCOMP_IOCTL_NOTIF_SEND, iowr(1, 24));
    }

    fn unsafe_zeroed_data() -> libc::seccomp_data {
        // SAFETY: seccomp_data is integers only; all-zero is valid.
        unsafe { std::mem::zeroed() }
    }

    #[test]
    fn probe_succeeds_here() {
        probe().unwrap();
    }

    // ---- real kernel tests: each runs in a forked child so the filter stays there ----

    /// Forks, runs `body` in the child (which `_exit`s with its return value, or 99 if it
    /// panicked) and returns the child's exit status.
    fn in_child(body: impl FnOnce() -> i32) -> i32 {
        // SAFETY: fork in a (possibly multi-threaded) test process; the child only runs `body`,
        // which sticks to raw syscalls and glibc's fork-safe allocator, then _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(99);
            // SAFETY: _exit never returns and skips atexit handlers and the test harness.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // A broken filter can deadlock the child (a supervisor notifying itself): give up
        // after 30 s rather than hang the test run.
        for _ in 0..3000 {
            // SAFETY: non-blocking wait for our own child, `status` outlives the call.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            assert!(
                r == 0 || r == pid,
                "waitpid: {}",
                io::Error::last_os_error()
            );
            if r == pid {
                assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
                return libc::WEXITSTATUS(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // SAFETY: kill and reap our own, still unreaped, child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, &mut status, 0);
        }
        panic!("the child did not finish within 30 s");
    }

    fn errno() -> i32 {
        io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    fn set_no_new_privs() -> bool {
        // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes only integers.
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 }
    }

    /// Returns whether a call failed with EPERM (closing the fd if it unexpectedly succeeded).
    fn eperm(ret: libc::c_long) -> bool {
        ret == -1 && errno() == libc::EPERM
    }

    #[test]
    fn errno_mode_denies_in_the_kernel() {
        let filter = build(true, false);
        let code = in_child(move || {
            if !set_no_new_privs() {
                return 1;
            }
            match install(&filter, false) {
                Ok(None) => {}
                _ => return 2,
            }
            // SAFETY (all calls below): raw syscalls with integer or valid pointer arguments
            // whose effects, if the filter let them through, stay in this throwaway child.
            unsafe {
                if !eperm(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0).into()) {
                    return 3;
                }
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                if fd < 0 {
                    return 4;
                }
                libc::close(fd);
                let mut pair = [0; 2];
                if !eperm(
                    libc::socketpair(libc::AF_INET6, libc::SOCK_STREAM, 0, pair.as_mut_ptr())
                        .into(),
                ) {
                    return 5;
                }
                if !eperm(libc::unshare(libc::CLONE_NEWUSER).into()) {
                    return 6;
                }
                if !eperm(libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0)) {
                    return 7;
                }
                let ret = libc::mount(
                    c"none".as_ptr(),
                    c"/nonexistent-cflow-seccomp-test".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                );
                if !eperm(ret.into()) {
                    return 8;
                }
                let ret = libc::syscall(
                    libc::SYS_clone,
                    (libc::CLONE_NEWUTS | libc::SIGCHLD) as libc::c_ulong,
                    0,
                    0,
                    0,
                    0,
                );
                if ret == 0 {
                    libc::_exit(0);
                }
                if !eperm(ret) {
                    return 9;
                }
                let ret = libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0);
                if !(ret == -1 && errno() == libc::ENOSYS) {
                    return 10;
                }
                let pid = libc::fork();
                if pid == 0 {
                    libc::_exit(0);
                }
                if pid < 0 {
                    return 11;
                }
                let mut status = 0;
                if libc::waitpid(pid, &mut status, 0) != pid || status != 0 {
                    return 12;
                }
                if libc::getpid() <= 0 {
                    return 13;
                }
            }
            // Threads still work: clone3 fails with ENOSYS and glibc falls back to clone.
            match std::thread::spawn(|| 7).join() {
                Ok(7) => 0,
                _ => 14,
            }
        });
        assert_eq!(code, 0, "step {code} of the errno-mode check failed");
    }

    #[test]
    fn notify_mode_reports_denials() {
        let filter = build(true, true);
        let code = in_child(move || {
            if !set_no_new_privs() {
                return 1;
            }
            let listener = match install(&filter, true) {
                Ok(Some(fd)) => fd,
                _ => return 2,
            };
            // SAFETY: F_GETFD on an fd we own.
            let fd_flags = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_GETFD) };
            if fd_flags < 0 || fd_flags & libc::FD_CLOEXEC == 0 {
                return 3;
            }
            // SAFETY: fork from this single-threaded child; the grandchild makes raw syscalls
            // and _exits.
            let pid = unsafe { libc::fork() };
            if pid < 0 {
                return 4;
            }
            if pid == 0 {
                // SAFETY: raw syscalls with integer arguments, then _exit.
                unsafe {
                    let s = eperm(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0).into());
                    let p = eperm(libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0));
                    libc::_exit(i32::from(!s) | (i32::from(!p) << 1));
                }
            }
            let mut denied: Vec<String> = Vec::new();
            let mut status = 0;
            let mut exited = false;
            for _ in 0..200 {
                let mut pfd = libc::pollfd {
                    fd: listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                let n = unsafe { libc::poll(&mut pfd, 1, 50) };
                if n > 0 && pfd.revents & libc::POLLIN != 0 {
                    match deny_next(listener.as_fd()) {
                        Ok(Some(what)) => denied.push(what),
                        Ok(None) => {}
                        Err(_) => return 5,
                    }
                }
                // SAFETY: non-blocking wait for our own child; `status` outlives the call.
                let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                if r == pid {
                    exited = true;
                    break;
                }
            }
            if !exited {
                return 6;
            }
            if !libc::WIFEXITED(status) {
                return 7;
            }
            match libc::WEXITSTATUS(status) {
                0 => {}
                c => return 10 + c, // 11: socket not EPERM, 12: ptrace, 13: both
            }
            if denied != ["socket(AF_INET)", "ptrace"] {
                return 20 + denied.len().min(9) as i32;
            }
            0
        });
        assert_eq!(code, 0, "notify-mode check failed with code {code}");
    }
}
