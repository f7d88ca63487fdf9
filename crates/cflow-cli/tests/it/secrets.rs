//! `cflow secret set | list | delete` against a real server, the master key from
//! `CFLOW_MASTER_KEY`, and values that never appear in any output (the CLI's or the server's).

use crate::harness::{Server, cflow_in, run, run_with_stdin};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const FROM_STDIN: &str = "stdin-value-4f1c9a";
const FROM_ENV: &str = "env-value-7d2e0b";
const FROM_FLAG: &str = "flag-value-9a8b7c";

#[test]
fn secrets_are_set_listed_and_deleted_without_showing_values() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::launch(work, "up", &[("CFLOW_MASTER_KEY", KEY)]);
    assert!(
        !server.data_dir().join("master.key").exists(),
        "a configured key needs no key file"
    );

    let set = run_with_stdin(
        server
            .cflow()
            .args(["secret", "set", "FROM_STDIN", "--output", "json"]),
        &format!("{FROM_STDIN}\n"),
    );
    let meta = set.json();
    assert_eq!(meta["name"], "FROM_STDIN");
    let set = run(server
        .cflow()
        .args(["secret", "set", "FROM_ENV", "--from-env", "MY_VAR"])
        .env("MY_VAR", FROM_ENV));
    set.ok();
    let set = run(server
        .cflow()
        .args(["secret", "set", "FROM_FLAG", "--value", FROM_FLAG]));
    set.ok();
    let missing =
        run(server
            .cflow()
            .args(["secret", "set", "X", "--from-env", "CFLOW_TEST_UNSET_VAR"]));
    assert!(
        missing.fails().contains("CFLOW_TEST_UNSET_VAR"),
        "{}",
        missing.stderr
    );
    let empty = run(server.cflow().args(["secret", "set", "EMPTY"]));
    assert!(empty.fails().contains("empty"), "{}", empty.stderr);
    let bad = run(server
        .cflow()
        .args(["secret", "set", "bad name", "--value", "whatever-1"]));
    assert!(bad.fails().contains("name"), "{}", bad.stderr);

    let list = run(server.cflow().args(["secret", "list", "--output", "json"])).json();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["FROM_ENV", "FROM_FLAG", "FROM_STDIN"]);
    let table = run(server.cflow().args(["secret", "list"]));
    assert!(table.ok().contains("FROM_STDIN"), "{}", table.stdout);

    // Memory written with a secret in it is stored masked.
    run(server.cflow().args([
        "memory",
        "store",
        "notes",
        "creds",
        &format!("token {FROM_ENV}"),
    ]))
    .ok();
    let got = run(server
        .cflow()
        .args(["memory", "get", "notes", "creds", "--output", "json"]))
    .json();
    assert_eq!(got["value"], "token [REDACTED:secret]", "{got}");

    // A viewer may not even list them, and is told who may.
    let viewer = run(server.cflow().args([
        "key", "create", "--tenant", "default", "--name", "v", "--role", "viewer", "--output",
        "json",
    ]))
    .json();
    let denied = run(server
        .cflow()
        .args(["secret", "list"])
        .env("CFLOW_TOKEN", viewer["token"].as_str().unwrap()));
    assert!(
        denied.fails().contains("may not perform secret.list")
            && denied.stderr.contains("superadmin, admin"),
        "{}",
        denied.stderr
    );

    run(server.cflow().args(["secret", "delete", "FROM_FLAG"])).ok();
    let again = run(server.cflow().args(["secret", "delete", "FROM_FLAG"]));
    assert!(again.fails().contains("not found"), "{}", again.stderr);

    let audit = run(server.cflow().args(["audit", "export"]));
    let audit = audit.ok().to_string();
    assert!(
        audit.contains("secret.put") && audit.contains("secret.delete"),
        "{audit}"
    );
    let (status, _work, output) = server.stop();
    assert!(status.success(), "{output}");
    for value in [FROM_STDIN, FROM_ENV, FROM_FLAG, KEY] {
        for (what, text) in [
            ("server output", &output),
            ("audit", &audit),
            ("set output", &set.stdout),
            ("list", &list.to_string()),
        ] {
            assert!(!text.contains(value), "{what} shows {value}: {text}");
        }
    }
}

#[test]
fn a_bad_master_key_stops_the_start_with_the_fix() {
    let work = tempfile::tempdir().unwrap();
    let out = cflow_in(work.path())
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(work.path().join(".cflow"))
        .env("CFLOW_MASTER_KEY", "not-a-real-key-qqq")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("CFLOW_MASTER_KEY is malformed"), "{stderr}");
    assert!(stderr.contains("openssl rand -hex 32"), "{stderr}");
    assert!(!stderr.contains("not-a-real-key-qqq"), "{stderr}");

    // A key file others can read is refused too, with the chmod to run.
    let data = work.path().join(".cflow");
    std::fs::create_dir_all(&data).unwrap();
    let file = data.join("master.key");
    std::fs::write(&file, KEY).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cflow_in(work.path())
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(!stderr.contains(KEY), "{stderr}");
}
