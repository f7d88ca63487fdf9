//! The network: off means no socket but AF_UNIX; loopback means a namespace of one's own.

use crate::{Harness, denied, report};
use cflow_agents::{DriverError, ExecSpec, JobEnd};
use cflow_sandbox::Network;
use std::io::ErrorKind;
use std::net::{TcpListener, UdpSocket};
use std::time::Duration;

const SHORT: Duration = Duration::from_secs(20);

/// Tries a TCP connection and a UDP datagram to 127.0.0.1:PORT and prints how each went.
const CONNECT_PY: &str = r#"
import socket, sys
port = int(sys.argv[1])
try:
    s = socket.create_connection(("127.0.0.1", port), 2)
    s.sendall(b"hello")
    print("tcp-ok")
except OSError as e:
    print("tcp-fail", e.errno)
try:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"hello", ("127.0.0.1", port))
    print("udp-ok")
except OSError as e:
    print("udp-fail", e.errno)
"#;

fn host_listeners() -> (TcpListener, UdpSocket, u16) {
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let port = tcp.local_addr().unwrap().port();
    let udp = UdpSocket::bind(("127.0.0.1", port)).unwrap();
    udp.set_nonblocking(true).unwrap();
    (tcp, udp, port)
}

fn assert_untouched(tcp: &TcpListener, udp: &UdpSocket) {
    match tcp.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the host's TCP listener accepted a connection: {other:?}"),
    }
    let mut buf = [0u8; 64];
    match udp.recv_from(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the host's UDP socket received a datagram: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_network_off_no_inet_socket_can_be_made() {
    let h = Harness::new(|_| {});
    let (tcp, udp, port) = host_listeners();
    let spec = ExecSpec::program("python3", ["-c", CONNECT_PY, &port.to_string()])
        .env("PATH", crate::PATH);
    let out = h.run("net-off", spec, SHORT).await.unwrap();
    let stdout = out.stdout.text();
    assert_eq!(out.end, JobEnd::Exited { code: 0 }, "{}", out.stderr.text());
    assert!(
        stdout.contains(&format!("tcp-fail {}", libc::EPERM)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("udp-fail {}", libc::EPERM)),
        "{stdout}"
    );
    assert_untouched(&tcp, &udp);
    assert!(
        denied(&out, "socket(AF_INET)"),
        "denied: {:?}",
        report(&out).denied
    );
}

/// Serves one connection on a loopback port of its own, talks to it, then tries the host's.
const LOOPBACK_PY: &str = r#"
import socket, sys, threading
host_port = int(sys.argv[1])
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
def serve():
    c, _ = srv.accept()
    c.sendall(c.recv(16).upper())
    c.close()
t = threading.Thread(target=serve)
t.start()
c = socket.create_connection(srv.getsockname(), 2)
c.sendall(b"ping")
print("self", c.recv(16).decode())
t.join()
try:
    socket.create_connection(("127.0.0.1", host_port), 2)
    print("host-ok")
except OSError as e:
    print("host-fail", e.errno)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.sendto(b"hello", ("127.0.0.1", host_port))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_reaches_itself_but_not_the_host() {
    let h = Harness::new(|p| p.network = Network::Loopback);
    let (tcp, udp, port) = host_listeners();
    let mut spec = ExecSpec::program("python3", ["-c", LOOPBACK_PY, &port.to_string()])
        .env("PATH", crate::PATH);
    spec.network = Some(Network::Loopback);
    let out = h.run("net-loopback", spec, SHORT).await.unwrap();
    let stdout = out.stdout.text();
    assert_eq!(out.end, JobEnd::Exited { code: 0 }, "{}", out.stderr.text());
    assert!(stdout.contains("self PING"), "{stdout}");
    assert!(
        stdout.contains(&format!("host-fail {}", libc::ECONNREFUSED)),
        "{stdout}"
    );
    assert_untouched(&tcp, &udp);
    assert!(report(&out).denied.is_empty(), "{:?}", report(&out).denied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_asking_for_more_network_than_its_policy_is_refused() {
    let h = Harness::new(|_| {});
    let mut spec = crate::shell("echo SHOULD-NOT-RUN");
    spec.network = Some(Network::Full);
    let err = h.run("net-full", spec, SHORT).await.unwrap_err();
    let DriverError::Sandbox { message, retryable } = &err else {
        panic!("expected a sandbox error, got {err:?}");
    };
    assert!(!retryable);
    assert!(
        message.contains("'full'") && message.contains("'off'"),
        "the message should name the asked and allowed network: {message}"
    );
    assert!(
        message.contains("/sandbox") && message.contains("admin"),
        "the message should say how to get it: {message}"
    );
    // Nothing was prepared: no workspace.
    let left: Vec<_> = std::fs::read_dir(h.data().join("workspaces"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A tiny HTTP server on the host's loopback answering every request with `body`; returns its
/// port and a counter of the requests it served.
fn http_server(body: &'static str) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&served);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = c.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    (port, served)
}

/// With the network off and an egress allow-list, the command reaches the allowed endpoint
/// through the proxy, and nothing else: another host port is refused by the proxy (recorded),
/// a TLS tunnel to an unlisted host is refused, and a direct connection (no proxy) fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_egress_proxy_reaches_the_allowed_endpoint_and_nothing_else() {
    let (allowed, served) = http_server("model-endpoint");
    let (other, other_served) = http_server("secret-service");
    let h = Harness::new(|p| {
        p.network = Network::Off;
        p.egress = vec![format!("127.0.0.1:{allowed}")];
    });
    let line = format!(
        "curl -s --max-time 5 http://127.0.0.1:{allowed}/v1/messages; echo; \
         curl -s -o /dev/null -w 'other=%{{http_code}}' --max-time 5 http://127.0.0.1:{other}/; echo; \
         curl -s -o /dev/null -w 'tunnel=%{{http_connect}}' --max-time 5 https://example.com/; echo; \
         curl -s --max-time 3 --noproxy '*' http://127.0.0.1:{allowed}/ || echo direct-fails"
    );
    let out = h.sh("egress", &line, SHORT).await;
    let stdout = out.stdout.text();
    assert!(
        stdout.contains("model-endpoint"),
        "{stdout}\n{}",
        out.stderr.text()
    );
    assert!(stdout.contains("other=403"), "{stdout}");
    assert!(stdout.contains("tunnel=403"), "{stdout}");
    assert!(stdout.contains("direct-fails"), "{stdout}");
    assert!(!stdout.contains("secret-service"), "{stdout}");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(other_served.load(std::sync::atomic::Ordering::SeqCst), 0);
    let d = &report(&out).denied;
    assert!(
        d.iter()
            .any(|w| w.contains(&format!("GET http://127.0.0.1:{other}"))),
        "{d:?}"
    );
    assert!(
        d.iter().any(|w| w.contains("CONNECT example.com:443")),
        "{d:?}"
    );
    assert!(out.end.is_success(), "{:?}", out.end);
    h.assert_cleaned_up("egress");
}
