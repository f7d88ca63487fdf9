//! `cflow up`: bootstrap token printed once and kept in a 0600 file, graceful SIGTERM, restart.

use crate::harness::Server;
use std::os::unix::fs::PermissionsExt;

#[test]
fn first_start_prints_the_token_once_and_sigterm_stops_gracefully() {
    let server = Server::start();
    let token_file = server.data_dir().join("admin.token");
    let token = server.admin_token();
    assert!(
        token.starts_with("cflow_"),
        "admin.token holds a token: {token}"
    );
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o600,
        "admin.token must be readable by its owner only"
    );

    let (status, work, first_output) = server.stop();
    assert!(
        first_output.contains(&token),
        "first start prints the token: {first_output}"
    );
    assert_eq!(
        first_output.matches(&token).count(),
        1,
        "printed once: {first_output}"
    );
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM is a clean exit: {first_output}"
    );

    // A second start on the same data directory has nothing to bootstrap.
    let server = Server::start_in(work);
    assert_eq!(server.admin_token(), token, "admin.token is kept");
    let who = crate::harness::run(server.cflow().args(["whoami", "--output", "json"])).json();
    assert_eq!(who["role"], "superadmin");
    let (status, _work, second_output) = server.stop();
    assert!(
        !second_output.contains(&token)
            && !second_output
                .lines()
                .any(|l| l.trim().starts_with("cflow_")),
        "no token printed on the second start: {second_output}"
    );
    assert_eq!(status.code(), Some(0), "{second_output}");
}

#[test]
fn server_without_a_database_falls_back_to_sqlite_with_a_note() {
    let server = Server::launch(tempfile::tempdir().unwrap(), "server", &[]);
    assert!(server.data_dir().join("cflow.db").is_file());
    let (status, _work, output) = server.stop();
    assert!(output.contains("no --database"), "{output}");
    assert!(output.contains("using SQLite at"), "{output}");
    assert_eq!(status.code(), Some(0), "{output}");
}

#[test]
fn up_ignores_a_database_url_with_a_note_and_never_prints_its_password() {
    let url = "postgres://cflow:pw-not-for-logs@127.0.0.1:1/cflow";
    let server = Server::launch(
        tempfile::tempdir().unwrap(),
        "up",
        &[("CFLOW_DATABASE_URL", url)],
    );
    let who = crate::harness::run(server.cflow().args(["whoami", "--output", "json"])).json();
    assert_eq!(who["role"], "superadmin", "served from SQLite");
    let (status, _work, output) = server.stop();
    assert!(
        output.contains("ignoring the database URL from CFLOW_DATABASE_URL"),
        "{output}"
    );
    assert!(!output.contains("pw-not-for-logs"), "{output}");
    assert_eq!(status.code(), Some(0), "{output}");
}
