//! The launcher: `cflow __sandbox-exec SPEC_JSON` (or `cflow-sandbox __sandbox-exec SPEC_JSON`).
//!
//! Three processes, all single-threaded while they set up:
//! - **launcher** (the supervisor's child, the leader of the job's process group): joins the
//!   run's cgroups, sets rlimits, then `clone`s the init into new user, PID, mount, IPC, UTS and
//!   (unless the network is `full`) network namespaces and writes its uid/gid maps. It ignores
//!   SIGTERM (init relays it to the command), exits with init's status, and SIGKILLs init when its
//!   stdin reaches EOF — the supervisor holds the other end, so a supervisor that dies (even by
//!   `kill -9`) takes the sandbox with it.
//! - **init** (PID 1 of the new namespace): builds the filesystem view, sets `no_new_privs`,
//!   applies landlock and seccomp (keeping the seccomp notification listener), writes the layers
//!   to the report, forks the command, then reaps, relays SIGTERM/SIGINT/SIGHUP to every process
//!   of the namespace, records each refused syscall, and exits with the command's status. Its
//!   exit makes the kernel kill everything left in the namespace: nothing outlives the command.
//! - **command**: a fresh session, stdin from `/dev/null`, every capability dropped (bounding
//!   set, ambient, `SECBIT_NOROOT` so exec gains none), default signal dispositions, then
//!   `execvpe` with exactly the spec's environment.

use crate::mounts;
use crate::policy::{Layer, LayerState, Layers, Network};
use crate::spec::{LaunchSpec, ReportLine, SETUP_FAILED_EXIT};
use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

/// Entry point: returns the exit code (the command's, or [`SETUP_FAILED_EXIT`]).
pub fn launcher_main(args: &[OsString]) -> i32 {
    let spec: LaunchSpec = match args.get(2).map(|a| serde_json::from_slice(a.as_bytes())) {
        Some(Ok(spec)) => spec,
        Some(Err(e)) => {
            eprintln!("cflow sandbox: invalid launch spec: {e}");
            return SETUP_FAILED_EXIT;
        }
        None => {
            eprintln!(
                "cflow sandbox: usage: {} __sandbox-exec SPEC_JSON (started by cflow, not by hand)",
                args.first()
                    .map(|a| a.to_string_lossy().into_owned())
                    .unwrap_or_default()
            );
            return SETUP_FAILED_EXIT;
        }
    };
    let mut report = match std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&spec.report)
    {
        Ok(f) => Report(f),
        Err(e) => {
            eprintln!(
                "cflow sandbox: cannot open the report file {}: {e}",
                spec.report.display()
            );
            return SETUP_FAILED_EXIT;
        }
    };
    match run_launcher(&spec, &mut report) {
        Ok(code) => code,
        Err(Fatal { layer, message }) => {
            report.line(&ReportLine::Error {
                layer,
                message: message.clone(),
            });
            eprintln!("cflow sandbox: {message}");
            SETUP_FAILED_EXIT
        }
    }
}

struct Fatal {
    layer: Option<Layer>,
    message: String,
}

fn fatal(layer: Layer, message: impl Into<String>) -> Fatal {
    let message = message.into();
    Fatal {
        layer: Some(layer),
        message: format!(
            "the sandbox layer '{layer}' could not be set up: {message} — {}; or allow \
             degraded sandboxes in the policy (sandbox.allow_degraded)",
            layer.fix()
        ),
    }
}

struct Report(File);

impl Report {
    fn line(&mut self, line: &ReportLine) {
        if let Ok(mut s) = serde_json::to_string(line) {
            s.push('\n');
            // One write per line: lines from init and launcher never interleave mid-line.
            let _ = self.0.write_all(s.as_bytes());
        }
    }
}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

/// Records a layer, or fails the launch when the policy does not allow running without it.
fn layer_result(
    layers: &mut Layers,
    allow_degraded: bool,
    layer: Layer,
    result: Result<(), String>,
) -> Result<(), Fatal> {
    match result {
        Ok(()) => {
            layers.insert(layer, LayerState::Active);
            Ok(())
        }
        Err(why) if allow_degraded => {
            layers.insert(layer, LayerState::Unavailable { why });
            Ok(())
        }
        Err(why) => Err(fatal(layer, why)),
    }
}

fn set_rlimit(resource: libc::__rlimit_resource_t, value: u64) -> Result<(), String> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(resource, &lim) } != 0 {
        return Err(format!("setrlimit({resource}): {}", errno()));
    }
    Ok(())
}

fn run_launcher(spec: &LaunchSpec, report: &mut Report) -> Result<i32, Fatal> {
    let mut layers = Layers::new();
    let degraded = spec.allow_degraded;

    if !spec.cgroup_procs.is_empty() {
        let pid = std::process::id().to_string();
        let joined = spec.cgroup_procs.iter().try_for_each(|f| {
            std::fs::write(f, &pid).map_err(|e| format!("joining {}: {e}", f.display()))
        });
        layer_result(&mut layers, degraded, Layer::Cgroup, joined)?;
    }

    let l = &spec.limits;
    let have_cgroup = layers
        .get(&Layer::Cgroup)
        .is_some_and(LayerState::is_active);
    let rlimits = (|| {
        set_rlimit(libc::RLIMIT_CPU, l.cpu_seconds)?;
        set_rlimit(libc::RLIMIT_NOFILE, l.open_files)?;
        set_rlimit(libc::RLIMIT_FSIZE, l.file_size_bytes)?;
        set_rlimit(libc::RLIMIT_CORE, 0)?;
        if !have_cgroup {
            // Without a cgroup, the per-process data limit is the only memory bound there is.
            set_rlimit(libc::RLIMIT_DATA, l.memory_bytes)?;
        }
        Ok(())
    })();
    layer_result(&mut layers, degraded, Layer::Rlimits, rlimits)?;

    // The supervisor's SIGTERM is for the command: init relays it. The launcher stays to report.
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: setting a signal to SIG_IGN in a single-threaded process.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }

    let (ready_r, ready_w) = pipe().map_err(|e| fatal(Layer::UserNs, format!("pipe: {e}")))?;
    let mut flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS;
    if spec.network != Network::Full {
        flags |= libc::CLONE_NEWNET;
    }
    let parent_pid = std::process::id() as libc::pid_t;
    let mut pid = clone_process(flags);
    let in_ns = if pid < 0 {
        let why = format!("cannot create namespaces: {}", errno());
        if !degraded {
            return Err(fatal(Layer::UserNs, why));
        }
        for layer in [
            Layer::UserNs,
            Layer::PidNs,
            Layer::MountNs,
            Layer::IpcNs,
            Layer::UtsNs,
            Layer::NetNs,
            Layer::Filesystem,
        ] {
            layers.insert(layer, LayerState::Unavailable { why: why.clone() });
        }
        pid = clone_process(0);
        if pid < 0 {
            return Err(fatal(Layer::Session, format!("fork: {}", errno())));
        }
        false
    } else {
        true
    };

    if pid == 0 {
        // Init (or, degraded, the command's parent). Never returns.
        drop(ready_w);
        let code = init_main(spec, report, layers, ready_r, parent_pid, in_ns);
        // SAFETY: leaving the child without running the parent's destructors or atexit handlers.
        unsafe { libc::_exit(code) };
    }
    drop(ready_r);

    if in_ns && let Err(why) = write_id_maps(pid, spec.host_uid, spec.host_gid) {
        // SAFETY: killing the child we just created.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait_for(pid);
        return Err(fatal(Layer::UserNs, why));
    }
    // Init waits for this byte before it does anything in its namespaces.
    let _ = (&File::from(ready_w)).write_all(b"1");

    watch_lifeline(pid);
    Ok(wait_for(pid))
}

/// `clone` without a new stack, like `fork`, but into new namespaces: the child is PID 1 of its
/// PID namespace. Returns the child's pid in the parent, 0 in the child, -1 on error.
fn clone_process(flags: libc::c_int) -> libc::pid_t {
    // SAFETY: with a null stack the child runs on a copy of the parent's stack, exactly like
    // fork(2); the launcher is single-threaded, so no lock can be held by another thread.
    unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        ) as libc::pid_t
    }
}

fn write_id_maps(pid: libc::pid_t, uid: u32, gid: u32) -> Result<(), String> {
    let base = format!("/proc/{pid}");
    std::fs::write(format!("{base}/uid_map"), format!("0 {uid} 1\n"))
        .map_err(|e| format!("writing the uid map (0 -> {uid}): {e}"))?;
    std::fs::write(format!("{base}/setgroups"), "deny")
        .map_err(|e| format!("denying setgroups: {e}"))?;
    std::fs::write(format!("{base}/gid_map"), format!("0 {gid} 1\n"))
        .map_err(|e| format!("writing the gid map (0 -> {gid}): {e}"))?;
    Ok(())
}

/// A thread that SIGKILLs init when the launcher's stdin reaches EOF: the supervisor holds the
/// other end, and it closes (at the latest when the supervisor dies) to mean "stop now".
fn watch_lifeline(init: libc::pid_t) {
    // Only a pipe is a lifeline: run by hand, stdin is a terminal or /dev/null.
    // SAFETY: zeroed stat is a valid out buffer for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on fd 0 with a valid out pointer.
    if unsafe { libc::fstat(0, &mut st) } != 0 || (st.st_mode & libc::S_IFMT) != libc::S_IFIFO {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("lifeline".into())
        .spawn(move || {
            let mut buf = [0u8; 64];
            loop {
                // SAFETY: reading into a valid buffer from fd 0.
                let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
                if n == 0 || (n < 0 && errno().raw_os_error() != Some(libc::EINTR)) {
                    break;
                }
            }
            // SAFETY: signalling our own child.
            unsafe { libc::kill(init, libc::SIGKILL) };
        });
}

/// Waits for a child and turns its status into an exit code (128 + signal when killed).
fn wait_for(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child with a valid status pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        if rc < 0 && errno().raw_os_error() != Some(libc::EINTR) {
            return SETUP_FAILED_EXIT;
        }
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        SETUP_FAILED_EXIT
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: valid out array of two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(errno());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

extern "C" fn noop_handler(_: libc::c_int) {}

/// The namespace's init. Returns its exit code.
fn init_main(
    spec: &LaunchSpec,
    report: &mut Report,
    mut layers: Layers,
    ready: OwnedFd,
    parent_pid: libc::pid_t,
    in_ns: bool,
) -> i32 {
    // SAFETY: plain prctl; a launcher that dies takes init (and so the namespace) with it.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let mut byte = [0u8; 1];
    // Wait until the launcher has written the id maps (EOF: it died, so stop).
    if !matches!((&File::from(ready)).read_exact_or_eof(&mut byte), Ok(true)) {
        return SETUP_FAILED_EXIT;
    }
    // Opened while init still has the launcher's credentials (in its new mount namespace, so
    // they can be bound there): the sandbox's user (host `nobody` when cflow runs as root) may
    // not search the directories above them, e.g. a data directory made by `mktemp -d` (0700).
    let host = HostFds::open(spec);
    if in_ns {
        // Become the namespace's root, i.e. the mapped host user: until now init still has the
        // launcher's ids, which may be unmapped here (files could not even be created).
        // SAFETY: plain syscalls; init holds CAP_SETUID/CAP_SETGID in its user namespace.
        let ok = unsafe { libc::setresgid(0, 0, 0) == 0 && libc::setresuid(0, 0, 0) == 0 };
        if !ok {
            let message = format!("cannot become the sandbox's root user: {}", errno());
            report.line(&ReportLine::Error {
                layer: Some(Layer::UserNs),
                message: message.clone(),
            });
            eprintln!("cflow sandbox: {message}");
            return SETUP_FAILED_EXIT;
        }
    } else {
        // Degraded: no PID namespace, so become the subreaper of what the command leaves.
        // SAFETY: plain prctl.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
        // SAFETY: reading our parent's pid.
        if unsafe { libc::getppid() } != parent_pid {
            return SETUP_FAILED_EXIT;
        }
    }
    match setup_init(spec, host, &mut layers, in_ns) {
        Ok((listener, egress)) => {
            report.line(&ReportLine::Layers {
                layers: layers.clone(),
            });
            supervise_command(spec, report, listener, in_ns, egress)
        }
        Err(Fatal { layer, message }) => {
            report.line(&ReportLine::Error {
                layer,
                message: message.clone(),
            });
            eprintln!("cflow sandbox: {message}");
            SETUP_FAILED_EXIT
        }
    }
}

trait ReadExactOrEof {
    fn read_exact_or_eof(self, buf: &mut [u8]) -> io::Result<bool>;
}

impl ReadExactOrEof for &File {
    fn read_exact_or_eof(self, buf: &mut [u8]) -> io::Result<bool> {
        use std::io::Read;
        let mut this = self;
        loop {
            match this.read(buf) {
                Ok(0) => return Ok(false),
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Init's end of the egress path: the listener on the sandbox's loopback, and the supervisor's
/// proxy socket (opened while the host's tree was visible).
struct Egress {
    listener: std::net::TcpListener,
    socket: OwnedFd,
}

/// What init needs from the host's tree, opened before it changes its credentials; the fds are
/// closed at the command's `exec`.
struct HostFds {
    /// The writable paths, to bind into the view.
    sources: Result<mounts::Sources, String>,
    /// The supervisor's egress proxy socket, if the policy has one.
    egress_socket: Result<Option<OwnedFd>, String>,
}

impl HostFds {
    fn open(spec: &LaunchSpec) -> HostFds {
        let egress_socket = match &spec.egress_socket {
            None => Ok(None),
            Some(path) => open_path(path)
                .map(Some)
                .map_err(|e| format!("egress socket {}: {e}", path.display())),
        };
        HostFds {
            sources: mounts::open_sources(&spec.writable),
            egress_socket,
        }
    }
}

/// An `O_PATH` fd of `path` (no read or write access, just a handle to reach it later).
fn open_path(path: &std::path::Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))?;
    // SAFETY: valid path; the fd is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: fd was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setup_egress(
    spec: &LaunchSpec,
    socket: Result<Option<OwnedFd>, String>,
) -> Result<Option<Egress>, String> {
    let Some(socket) = socket? else {
        return Ok(None);
    };
    if spec.network != Network::Loopback {
        loopback_up()?;
    }
    let listener = std::net::TcpListener::bind(("127.0.0.1", crate::egress::PORT))
        .map_err(|e| format!("egress listener on 127.0.0.1:{}: {e}", crate::egress::PORT))?;
    Ok(Some(Egress { listener, socket }))
}

/// Relays every connection to the sandbox's egress port to the supervisor's proxy. Runs in
/// init, on threads started after the command was forked.
fn relay_egress(egress: Egress) {
    let target = format!("/proc/self/fd/{}", egress.socket.as_raw_fd());
    let _ = std::thread::Builder::new()
        .name("egress-accept".into())
        .spawn(move || {
            let _keep = egress.socket;
            for conn in egress.listener.incoming() {
                let Ok(client) = conn else { continue };
                let target = target.clone();
                let _ = std::thread::Builder::new()
                    .name("egress-relay".into())
                    .spawn(move || {
                        let Ok(up) = std::os::unix::net::UnixStream::connect(&target) else {
                            return;
                        };
                        let (Ok(mut up_r), Ok(mut client_w)) = (up.try_clone(), client.try_clone())
                        else {
                            return;
                        };
                        let back = std::thread::spawn(move || {
                            let _ = std::io::copy(&mut up_r, &mut client_w);
                            let _ = client_w.shutdown(std::net::Shutdown::Write);
                        });
                        let (mut client_r, mut up_w) = (client, up);
                        let _ = std::io::copy(&mut client_r, &mut up_w);
                        let _ = up_w.shutdown(std::net::Shutdown::Write);
                        let _ = back.join();
                    });
            }
        });
}

fn setup_init(
    spec: &LaunchSpec,
    host: HostFds,
    layers: &mut Layers,
    in_ns: bool,
) -> Result<(Option<OwnedFd>, Option<Egress>), Fatal> {
    let degraded = spec.allow_degraded;
    let mut egress = None;
    if in_ns {
        for layer in [
            Layer::UserNs,
            Layer::PidNs,
            Layer::MountNs,
            Layer::IpcNs,
            Layer::UtsNs,
        ] {
            layers.insert(layer, LayerState::Active);
        }
        if spec.network == Network::Full {
            layers.insert(
                Layer::NetNs,
                LayerState::Disabled {
                    why: "the policy grants the full network".into(),
                },
            );
        } else {
            layers.insert(Layer::NetNs, LayerState::Active);
        }
        let name = b"cflow-sandbox";
        // SAFETY: valid buffer and length; only affects our new UTS namespace.
        unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
        if spec.network == Network::Loopback {
            layer_result(layers, degraded, Layer::NetNs, loopback_up())?;
        }
        // Before the view hides the host: the proxy socket lives in the supervisor's directory.
        egress = match setup_egress(spec, host.egress_socket) {
            Ok(e) => e,
            Err(why) => {
                return Err(Fatal {
                    layer: Some(Layer::NetNs),
                    message: format!("the egress proxy could not be set up: {why}"),
                });
            }
        };
        let fs = host
            .sources
            .and_then(|sources| mounts::build(&sources, &spec.hidden, spec.limits.tmp_bytes));
        if let Err(why) = &fs
            && !degraded
        {
            return Err(fatal(Layer::Filesystem, why.clone()));
        }
        layer_result(layers, true, Layer::Filesystem, fs)?;
    }
    if let Err(e) = std::env::set_current_dir(&spec.cwd) {
        return Err(Fatal {
            layer: None,
            message: format!(
                "the working directory {} is not usable in the sandbox: {e}",
                spec.cwd.display()
            ),
        });
    }

    // SAFETY: plain prctl.
    let nnp = if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(format!("prctl(PR_SET_NO_NEW_PRIVS): {}", errno()))
    };
    layer_result(layers, degraded, Layer::NoNewPrivs, nnp)?;

    let mut writable: Vec<&std::path::Path> = spec.writable.iter().map(|p| p.as_path()).collect();
    writable.push(std::path::Path::new("/tmp"));
    writable.push(std::path::Path::new("/dev/shm"));
    let off = spec.network == Network::Off;
    let ports: &[u16] = if egress.is_some() {
        &[crate::egress::PORT]
    } else {
        &[]
    };
    let ll = crate::landlock::restrict(&writable, off, ports).map(|_| ());
    layer_result(layers, degraded, Layer::Landlock, ll)?;

    // Signals init handles: a handler (not SIG_DFL) is what lets a PID namespace's init
    // receive them at all; they are blocked and read from a signalfd.
    for sig in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: installing a handler that does nothing, in a single-threaded process.
        unsafe { libc::signal(sig, noop_handler as *const () as libc::sighandler_t) };
    }
    // SAFETY: sigset manipulation on a local, zeroed set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }

    // With an egress proxy the command needs an AF_INET socket to reach it; the network
    // namespace (loopback only) and landlock (that one port) keep it there.
    let filter = crate::seccomp::build(off && egress.is_none(), true);
    let listener = match crate::seccomp::install(&filter, true) {
        Ok(listener) => {
            layers.insert(Layer::Seccomp, LayerState::Active);
            listener
        }
        Err(e) => {
            layer_result(layers, degraded, Layer::Seccomp, Err(e.to_string()))?;
            None
        }
    };
    layers.insert(Layer::Session, LayerState::Active);
    Ok((listener, egress))
}

fn loopback_up() -> Result<(), String> {
    // SAFETY: creating a datagram socket to configure an interface.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(format!("socket: {}", errno()));
    }
    // SAFETY: zeroed ifreq is valid; we fill the name and flags.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as i16;
    // SAFETY: valid socket and request struct.
    let rc = unsafe { libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) };
    let err = errno();
    // SAFETY: closing our socket.
    unsafe { libc::close(sock) };
    if rc != 0 {
        return Err(format!("bringing loopback up: {err}"));
    }
    Ok(())
}

/// Forks the command and supervises it as init. Returns init's exit code.
fn supervise_command(
    spec: &LaunchSpec,
    report: &mut Report,
    listener: Option<OwnedFd>,
    in_ns: bool,
    egress: Option<Egress>,
) -> i32 {
    let argv: Vec<CString> = match spec
        .argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
    {
        Ok(v) => v,
        Err(_) => {
            eprintln!("cflow sandbox: an argument contains a NUL byte");
            return SETUP_FAILED_EXIT;
        }
    };
    let envp: Vec<CString> = spec
        .env
        .iter()
        .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok())
        .collect();
    if argv.is_empty() {
        eprintln!("cflow sandbox: empty command");
        return SETUP_FAILED_EXIT;
    }
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    let devnull = CString::new("/dev/null").expect("static");
    let program = match resolve_program(spec) {
        Ok(p) => p,
        Err(msg) => {
            eprintln!("cflow sandbox: {msg}");
            report.line(&ReportLine::Exit {
                code: Some(127),
                signal: None,
            });
            return 127;
        }
    };

    // SAFETY: fork in a single-threaded process.
    let child = unsafe { libc::fork() };
    if child < 0 {
        eprintln!("cflow sandbox: fork: {}", errno());
        return SETUP_FAILED_EXIT;
    }
    if child == 0 {
        // The command. Only raw calls from here to exec.
        // SAFETY: all pointers were prepared before the fork and stay valid; these calls are
        // async-signal-safe.
        unsafe {
            drop_to_command(&devnull);
            libc::execve(program.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr());
            let e = *libc::__errno_location();
            let msg: &[u8] = if e == libc::ENOENT {
                b"cflow sandbox: command not found\n"
            } else if e == libc::EACCES {
                b"cflow sandbox: permission denied executing the command\n"
            } else {
                b"cflow sandbox: exec failed\n"
            };
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(if e == libc::ENOENT { 127 } else { 126 });
        }
    }
    if let Some(egress) = egress {
        relay_egress(egress);
    }
    init_loop(child, report, listener, in_ns)
}

/// In the command's process before exec.
///
/// # Safety
/// Called in a freshly forked child of a single-threaded process.
unsafe fn drop_to_command(devnull: &CString) {
    // SAFETY: async-signal-safe syscalls with valid arguments.
    unsafe {
        libc::setsid();
        let fd = libc::open(devnull.as_ptr(), libc::O_RDONLY);
        if fd >= 0 {
            libc::dup2(fd, 0);
            if fd != 0 {
                libc::close(fd);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        // No capability survives: not in the bounding set, not ambient, not gained by exec as
        // the namespace's root (SECBIT_NOROOT), and none effective or permitted now.
        const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
        const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
        const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
        const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
        libc::prctl(
            libc::PR_SET_SECUREBITS,
            SECBIT_NOROOT
                | SECBIT_NOROOT_LOCKED
                | SECBIT_NO_SETUID_FIXUP
                | SECBIT_NO_SETUID_FIXUP_LOCKED,
        );
        for cap in 0..64 {
            libc::prctl(libc::PR_CAPBSET_DROP, cap);
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        #[repr(C)]
        struct CapHeader {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        struct CapData {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let header = CapHeader {
            version: 0x2008_0522,
            pid: 0,
        };
        let data = [
            CapData {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            },
            CapData {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            },
        ];
        libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr());
    }
}

fn init_loop(
    command: libc::pid_t,
    report: &mut Report,
    listener: Option<OwnedFd>,
    in_ns: bool,
) -> i32 {
    // SAFETY: building the same blocked set as before for the signalfd.
    let sfd = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::signalfd(-1, &set, libc::SFD_CLOEXEC)
    };
    if sfd < 0 {
        eprintln!("cflow sandbox: signalfd: {}", errno());
        return SETUP_FAILED_EXIT;
    }
    // SAFETY: fd just created, owned here.
    let sfd = unsafe { OwnedFd::from_raw_fd(sfd) };
    let mut denied_total: u64 = 0;
    loop {
        let mut fds = vec![libc::pollfd {
            fd: sfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(l) = &listener {
            fds.push(libc::pollfd {
                fd: l.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: valid pollfd array.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            if errno().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return SETUP_FAILED_EXIT;
        }
        if let (Some(l), Some(pfd)) = (&listener, fds.get(1))
            && pfd.revents & libc::POLLIN != 0
            && let Ok(Some(what)) = crate::seccomp::deny_next(l.as_fd())
        {
            denied_total += 1;
            if denied_total <= crate::spec::MAX_DENIALS_KEPT as u64 * 10 {
                report.line(&ReportLine::Denied { what });
            }
        }
        if fds[0].revents & libc::POLLIN != 0 {
            // SAFETY: zeroed siginfo struct is a valid read buffer.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            // SAFETY: reading one struct into a valid buffer.
            let n = unsafe {
                libc::read(
                    sfd.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    std::mem::size_of::<libc::signalfd_siginfo>(),
                )
            };
            if n <= 0 {
                continue;
            }
            let sig = info.ssi_signo as libc::c_int;
            if sig != libc::SIGCHLD {
                // Relay to every process of the namespace (init itself is exempt). Without a
                // PID namespace, -1 would mean every process of the host: only the command's
                // session then.
                let target = if in_ns { -1 } else { -command };
                // SAFETY: plain kill.
                unsafe { libc::kill(target, sig) };
                continue;
            }
            loop {
                let mut status = 0;
                // SAFETY: reaping any child with a valid status pointer.
                let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                if pid <= 0 {
                    break;
                }
                if pid == command {
                    let (code, signal) = if libc::WIFEXITED(status) {
                        (Some(libc::WEXITSTATUS(status)), None)
                    } else {
                        (None, Some(libc::WTERMSIG(status)))
                    };
                    // Answer any last notifications so nothing blocks in the kernel, then go:
                    // the kernel kills the rest of the namespace when init exits.
                    report.line(&ReportLine::Exit { code, signal });
                    return code.unwrap_or_else(|| 128 + signal.unwrap_or(0));
                }
            }
        }
    }
}

/// The program to exec, looked up on the command's own `PATH` (not the launcher's) in the
/// sandbox's view, as `execvpe` would.
fn resolve_program(spec: &LaunchSpec) -> Result<CString, String> {
    let name = &spec.argv[0];
    let found = if name.contains('/') {
        Some(std::path::PathBuf::from(name))
    } else {
        let path = spec
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str())
            .unwrap_or("/usr/local/bin:/usr/bin:/bin");
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| std::path::Path::new(d).join(name))
            .find(|p| {
                CString::new(p.as_os_str().as_bytes()).is_ok_and(|c| {
                    // SAFETY: valid path string.
                    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
                }) && p.is_file()
            })
    };
    let Some(found) = found else {
        return Err(format!(
            "command not found: '{name}' — is it installed and on the PATH the task passes?"
        ));
    };
    CString::new(found.as_os_str().as_bytes()).map_err(|_| "a path with a NUL byte".to_string())
}
