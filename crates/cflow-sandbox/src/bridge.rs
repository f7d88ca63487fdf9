//! The stdio bridge to a supervisor's Unix socket: `cflow mcp-bridge --socket PATH` (or
//! `cflow-sandbox mcp-bridge --socket PATH`), run inside the sandbox by a command that speaks a
//! protocol over a child's stdin and stdout (Claude Code's stdio MCP servers), so that it reaches
//! a server the supervisor runs for that one attempt (the `claude-code` driver's MCP server).
//!
//! It only copies bytes, both ways, until either side closes: it understands nothing of what
//! passes and has no authority of its own (the server behind the socket decides everything).
//! With the network off the sandbox still allows `AF_UNIX` sockets (seccomp), and landlock does
//! not restrict connecting to a socket file that is in the view, so the bridge needs no extra
//! permission; the socket must live under a path the command can see (a writable path of the
//! run, such as the agent's home).

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// The subcommand that starts the bridge (with `--socket PATH`).
pub const BRIDGE_ARG: &str = "mcp-bridge";

/// The longest path `sun_path` holds (108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Connects to the Unix socket at `path`, also when the path is too long for `sun_path`: then
/// through `/proc/self/fd/N/NAME`, with `N` a descriptor of the socket's directory.
pub fn connect(path: &Path) -> io::Result<UnixStream> {
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        return UnixStream::connect(path);
    }
    let (dir, name) = split(path)?;
    let dir = std::fs::File::open(dir)?;
    UnixStream::connect(Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name))
}

/// Binds a Unix socket at `path` (the supervisor's side), with the same detour as [`connect`]
/// for a path too long for `sun_path`.
pub fn bind(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        return std::os::unix::net::UnixListener::bind(path);
    }
    let (dir, name) = split(path)?;
    let dir = std::fs::File::open(dir)?;
    std::os::unix::net::UnixListener::bind(
        Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name),
    )
}

/// A path's directory and file name, for the `/proc/self/fd` detour.
fn split(path: &Path) -> io::Result<(&Path, &std::ffi::OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a socket path", path.display()),
        )),
    }
}

/// Copies stdin to the socket and the socket to stdout until either side ends. Returns when the
/// socket closes (the server ended the session) or stdin reaches EOF (the client did).
pub fn run(socket: &Path) -> io::Result<()> {
    let stream = connect(socket).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot connect to {}: {e}", socket.display()),
        )
    })?;
    let mut to_socket = stream.try_clone()?;
    // Stdin is read on a thread of its own: a read blocked on stdin must not keep the bridge
    // alive once the server has closed the session.
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let _ = copy_flushing(&mut stdin, &mut to_socket);
        let _ = to_socket.shutdown(std::net::Shutdown::Write);
    });
    let mut from_socket = stream;
    let mut stdout = io::stdout().lock();
    copy_flushing(&mut from_socket, &mut stdout)?;
    Ok(())
}

/// `io::copy`, flushing after every read so that each message goes out as soon as it is read.
fn copy_flushing(from: &mut impl Read, to: &mut impl Write) -> io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
}

/// The entry point for `BIN mcp-bridge --socket PATH` (`args` without the program name and the
/// subcommand): the exit code, with the reason on stderr.
pub fn bridge_main(args: &[std::ffi::OsString]) -> i32 {
    let socket = match args {
        [flag, path] if flag == "--socket" => Path::new(path),
        _ => {
            eprintln!("usage: cflow {BRIDGE_ARG} --socket PATH (started by cflow, not by hand)");
            return 2;
        }
    };
    match run(socket) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cflow {BRIDGE_ARG}: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    #[test]
    fn connects_through_the_directory_when_the_path_is_too_long() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("s.sock");
        assert!(path.as_os_str().len() > MAX_SOCKET_PATH);
        let listener = bind(&path).unwrap();
        assert!(path.exists(), "the socket is at its long path");
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut line = String::new();
            io::BufReader::new(&s).read_line(&mut line).unwrap();
            (&s).write_all(line.to_uppercase().as_bytes()).unwrap();
        });
        let mut c = connect(&path).unwrap();
        c.write_all(b"ping\n").unwrap();
        let mut answer = String::new();
        io::BufReader::new(&c).read_line(&mut answer).unwrap();
        assert_eq!(answer, "PING\n");
        server.join().unwrap();
    }

    #[test]
    fn a_bad_command_line_says_how_it_is_used() {
        assert_eq!(bridge_main(&["--sock".into()]), 2);
        let missing = std::ffi::OsString::from("/nonexistent/cflow-test.sock");
        assert_eq!(bridge_main(&["--socket".into(), missing]), 1);
    }
}
