//! Failures the user must be able to act on: no server, bad usage.

use crate::harness::{cflow_in, free_port, run};

#[test]
fn no_server_exits_1_with_the_start_hint() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let r = run(cflow_in(dir.path()).args(["whoami", "--server", &url, "--token", "cflow_x_y"]));
    let err = r.fails();
    assert!(err.contains("cannot reach cflow server at"), "{err}");
    assert!(err.contains("connection refused"), "{err}");
    assert!(err.contains("start it with 'cflow up'"), "{err}");
    assert!(!err.contains("cflow_x_y"), "the token is not echoed: {err}");
}

#[test]
fn no_token_for_a_local_server_points_at_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(cflow_in(dir.path()).args(["memory", "get", "ns", "k"]));
    let err = r.fails();
    assert!(err.contains("pass --token or set CFLOW_TOKEN"), "{err}");
    assert!(err.contains("admin.token"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(cflow_in(dir.path()).args(["memory", "store", "ns"]));
    assert_eq!(r.code(), Some(2), "{r:?}");
    let r = run(cflow_in(dir.path()).args(["memory", "store", "ns", "k", "v", "--ttl", "soon"]));
    assert_eq!(r.code(), Some(2), "{r:?}");
    assert!(r.stderr.contains("not a duration"), "{}", r.stderr);
    let r = run(cflow_in(dir.path()).args(["whoami", "--output", "xml"]));
    assert_eq!(r.code(), Some(2), "{r:?}");
}
