//! The egress proxy: how a sandboxed command with no network reaches the few endpoints its
//! policy allows (a model API) and nothing else.
//!
//! ```text
//!  command ──TCP──▶ 127.0.0.1:3128 (the sandbox's own loopback; landlock lets it connect
//!                   to that port only)
//!                   └─ init relays each connection ──unix socket──▶ EgressProxy (supervisor,
//!                      outside the sandbox) ──TCP──▶ an allowed host:port, or 403
//! ```
//!
//! The command finds the proxy through `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY`. The proxy
//! speaks HTTP proxying: `CONNECT host:port` (TLS tunnels, e.g. to `api.anthropic.com:443`) and
//! absolute-form requests (`POST http://127.0.0.1:8080/v1/messages`, for plain-HTTP endpoints such
//! as a local Ollama). Anything not in the allow-list is answered `403` and recorded as a denial
//! on the attempt. The proxy runs on plain threads: one accept loop per run, two relay threads
//! per connection (model traffic is a handful of long streams, not thousands).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The port the proxy listens on inside the sandbox.
pub const PORT: u16 = 3128;

/// The longest request head the proxy reads before deciding.
const MAX_HEAD: usize = 16 * 1024;

/// A running proxy for one sandboxed run. Dropping it stops accepting (connections in flight
/// end when either side closes).
#[derive(Debug)]
pub struct EgressProxy {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    denied: Arc<Mutex<Vec<String>>>,
}

impl EgressProxy {
    /// Listens on the unix socket `path` (created here, mode 0600 by the umask of the
    /// supervisor's runs directory) and relays to the `allow`ed `host:port` pairs only.
    pub fn start(path: &Path, allow: Vec<String>) -> io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        // The sandbox's root is another host user: it must be able to connect.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
        let stop = Arc::new(AtomicBool::new(false));
        let denied = Arc::new(Mutex::new(Vec::new()));
        let allow = Arc::new(allow);
        {
            let (stop, denied) = (Arc::clone(&stop), Arc::clone(&denied));
            std::thread::Builder::new()
                .name("egress-proxy".into())
                .spawn(move || accept_loop(listener, allow, stop, denied))?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            stop,
            denied,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the proxy refused so far, e.g. `network: CONNECT evil.example:443 (not allowed)`.
    pub fn denied(&self) -> Vec<String> {
        self.denied.lock().map(|d| d.clone()).unwrap_or_default()
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(
    listener: UnixListener,
    allow: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
    denied: Arc<Mutex<Vec<String>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                let (allow, denied) = (Arc::clone(&allow), Arc::clone(&denied));
                let _ = std::thread::Builder::new()
                    .name("egress-conn".into())
                    .spawn(move || {
                        if let Err(e) = serve(conn, &allow, &denied) {
                            tracing::debug!(error = %e, "egress proxy connection ended");
                        }
                    });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::warn!(error = %e, "egress proxy: accept failed");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Reads the request head, checks the destination, connects and relays.
fn serve(conn: UnixStream, allow: &[String], denied: &Mutex<Vec<String>>) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut head = Vec::new();
    loop {
        let n = reader.read_until(b'\n', &mut head)?;
        if n == 0 || head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            break;
        }
        if head.len() > MAX_HEAD {
            return refuse(&conn, 431, "request head too large", None, denied);
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut first = text.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let (dest, forward) = if method.eq_ignore_ascii_case("CONNECT") {
        (target.to_string(), None)
    } else if let Some(rest) = target.strip_prefix("http://") {
        // Absolute form: forward the request in origin form to the host.
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let authority = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let version = text
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or("HTTP/1.1");
        let mut rewritten = format!("{method} {path} {version}\r\n").into_bytes();
        let after_first = head
            .iter()
            .position(|&b| b == b'\n')
            .map_or(head.len(), |i| i + 1);
        rewritten.extend_from_slice(&head[after_first..]);
        (authority, Some(rewritten))
    } else {
        let what = format!("{method} {target}");
        return refuse(
            &conn,
            400,
            "only CONNECT and absolute http:// requests are proxied",
            Some(what),
            denied,
        );
    };
    if !allow.iter().any(|a| a.eq_ignore_ascii_case(&dest)) {
        let what = if forward.is_some() {
            format!("{method} http://{dest}")
        } else {
            format!("CONNECT {dest}")
        };
        return refuse(
            &conn,
            403,
            &format!("{dest} is not in this task's egress allow-list"),
            Some(what),
            denied,
        );
    }
    let upstream = match TcpStream::connect(&dest) {
        Ok(s) => s,
        Err(e) => {
            return refuse(
                &conn,
                502,
                &format!("cannot reach {dest}: {e}"),
                None,
                denied,
            );
        }
    };
    let mut up_w = upstream.try_clone()?;
    match forward {
        None => (&conn).write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")?,
        Some(req) => up_w.write_all(&req)?,
    }
    // Whatever the reader buffered past the head belongs to the upstream.
    let buffered = reader.buffer().to_vec();
    if !buffered.is_empty() {
        up_w.write_all(&buffered)?;
    }
    let mut down = conn.try_clone()?;
    let mut up_r = upstream.try_clone()?;
    let t = std::thread::spawn(move || {
        let _ = io::copy(&mut up_r, &mut down);
        let _ = down.shutdown(Shutdown::Write);
    });
    let mut from_client = reader.into_inner();
    let _ = io::copy(&mut from_client, &mut up_w);
    let _ = upstream.shutdown(Shutdown::Write);
    let _ = t.join();
    Ok(())
}

fn refuse(
    conn: &UnixStream,
    status: u16,
    why: &str,
    record: Option<String>,
    denied: &Mutex<Vec<String>>,
) -> io::Result<()> {
    if let Some(what) = record
        && let Ok(mut d) = denied.lock()
    {
        d.push(format!("network: {what} (not in the egress allow-list)"));
    }
    let body = format!("cflow sandbox egress proxy: {why}\n");
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        431 => "Request Header Fields Too Large",
        _ => "Bad Gateway",
    };
    let mut w = conn;
    w.write_all(
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )?;
    let _ = conn.shutdown(Shutdown::Both);
    let mut sink = [0u8; 1];
    let _ = (&mut &*conn).read(&mut sink);
    Ok(())
}
