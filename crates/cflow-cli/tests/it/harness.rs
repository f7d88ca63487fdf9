//! Test harness: starts `cflow up` as a child process, waits for `/readyz` with a deadline,
//! runs `cflow` commands against it, and stops it with SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_cflow");

/// Every variable the CLI reads, as `cflow --help` lists them from its registry; cleared for
/// each child so that the developer's own environment cannot leak into a test.
fn cflow_vars() -> &'static [String] {
    static VARS: OnceLock<Vec<String>> = OnceLock::new();
    VARS.get_or_init(|| {
        let help = Command::new(BIN)
            .arg("--help")
            .output()
            .expect("cflow --help");
        let vars: Vec<String> = String::from_utf8_lossy(&help.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| w.starts_with("CFLOW_"))
            .map(str::to_string)
            .collect();
        assert!(
            vars.len() > 10,
            "cflow --help lists its environment variables"
        );
        vars
    })
}

/// How long a server may take to become ready or to stop.
const DEADLINE: Duration = Duration::from_secs(60);

/// A bare `cflow` command: clean environment, working directory `cwd`.
pub fn cflow_in(cwd: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    for v in cflow_vars() {
        cmd.env_remove(v);
    }
    cmd.current_dir(cwd).stdin(Stdio::null());
    cmd
}

/// The result of a finished `cflow` run.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Asserts success and returns standard output.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert!(
            self.status.success(),
            "cflow failed ({}):\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// Asserts success and parses standard output as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        let out = self.ok();
        serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    /// Asserts exit code 1 and returns standard error.
    #[track_caller]
    pub fn fails(&self) -> &str {
        assert_eq!(
            self.code(),
            Some(1),
            "expected exit code 1:\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        &self.stderr
    }
}

/// Runs a command to completion.
pub fn run(cmd: &mut Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("running cflow");
    Run {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Runs a command with `input` on its standard input.
pub fn run_with_stdin(cmd: &mut Command, input: &str) -> Run {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning cflow");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("writing stdin");
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("waiting for cflow");
    Run {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a free port")
        .port()
}

/// A `cflow up` child process.
pub struct Server {
    child: Option<Child>,
    /// The working directory of every command; the data directory is `./.cflow` inside it, so
    /// that the CLI's default data directory finds `admin.token`.
    work: Option<tempfile::TempDir>,
    pub url: String,
    /// Everything the server printed, standard output and standard error interleaved.
    output: Arc<Mutex<String>>,
}

impl Server {
    /// Starts a server in a fresh working directory.
    pub fn start() -> Server {
        Server::start_in(tempfile::tempdir().expect("temporary directory"))
    }

    /// Starts a server in `work` (data directory `work/.cflow`).
    pub fn start_in(work: tempfile::TempDir) -> Server {
        Server::launch(work, "up", &[])
    }

    /// Runs `cflow <command> --listen … --data-dir work/.cflow` with extra environment, retrying
    /// on another port if the chosen one was taken in the meantime.
    pub fn launch(work: tempfile::TempDir, command: &str, envs: &[(&str, &str)]) -> Server {
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let url = format!("http://127.0.0.1:{port}");
            let mut child = cflow_in(work.path())
                .args([
                    command,
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--data-dir",
                ])
                .arg(work.path().join(".cflow"))
                // The serve module's info line "listening on …" proves that this child, not
                // another test's server that took the port in the meantime, answers there.
                .env("CFLOW_LOG", "warn,cflow_server::serve=info")
                .envs(envs.iter().copied())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawning cflow up");
            let output = Arc::new(Mutex::new(String::new()));
            collect(child.stdout.take().expect("stdout"), output.clone());
            collect(child.stderr.take().expect("stderr"), output.clone());
            let deadline = Instant::now() + DEADLINE;
            loop {
                if let Some(status) = child.try_wait().expect("polling cflow up") {
                    last = format!("cflow up exited with {status}: {}", output.lock().unwrap());
                    break;
                }
                let listening = format!("listening on {url}");
                if output.lock().unwrap().contains(&listening) && ready(port) {
                    return Server {
                        child: Some(child),
                        work: Some(work),
                        url,
                        output,
                    };
                }
                assert!(
                    Instant::now() < deadline,
                    "cflow up was not ready within {DEADLINE:?}: {}",
                    output.lock().unwrap()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start cflow up: {last}");
    }

    pub fn work(&self) -> &Path {
        self.work.as_ref().expect("working directory").path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.work().join(".cflow")
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("admin.token"))
            .expect("reading admin.token")
            .trim()
            .to_string()
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// `cflow` pointed at this server (the token comes from `./.cflow/admin.token` unless the
    /// test passes one).
    pub fn cflow(&self) -> Command {
        let mut cmd = cflow_in(self.work());
        cmd.env("CFLOW_SERVER", &self.url);
        cmd
    }

    /// Sends SIGTERM and waits for the exit; returns the status, the working directory (for a
    /// restart) and everything the server printed.
    pub fn stop(mut self) -> (ExitStatus, tempfile::TempDir, String) {
        let mut child = self.child.take().expect("running server");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + DEADLINE;
        let exit = loop {
            if let Some(s) = child.try_wait().expect("waiting for cflow up") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("cflow up did not stop within {DEADLINE:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader threads finish at end of file; give them the same deadline.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&self.output) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        (
            exit,
            self.work.take().expect("working directory"),
            self.output(),
        )
    }
}

impl Server {
    /// Sends SIGKILL (no shutdown of any kind runs) and waits for the exit; returns the status,
    /// the working directory (for a restart) and everything the server printed.
    pub fn kill9(mut self) -> (ExitStatus, tempfile::TempDir, String) {
        let mut child = self.child.take().expect("running server");
        child.kill().expect("sending SIGKILL");
        let exit = child.wait().expect("waiting for cflow up");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&self.output) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        (
            exit,
            self.work.take().expect("working directory"),
            self.output(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn collect(stream: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut s = into.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
}

/// Whether `GET /readyz` answers 200 (a minimal HTTP/1.1 exchange over a plain socket).
fn ready(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.starts_with("HTTP/1.1 200")
}
