//! Tenants, keys and whoami: creation, listing, revocation, and what a revoked or
//! under-privileged token is told.

use crate::harness::{Server, run};

#[test]
fn tenants_are_created_and_listed() {
    let server = Server::start();
    let t = run(server
        .cflow()
        .args(["tenant", "create", "acme", "--output", "json"]))
    .json();
    assert_eq!(t["name"], "acme");
    assert!(t["id"].as_str().is_some_and(|s| !s.is_empty()));

    let list = run(server.cflow().args(["tenant", "list", "--output", "json"])).json();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        names.contains(&"acme") && names.contains(&"default"),
        "{names:?}"
    );
    let table = run(server.cflow().args(["tenant", "list"]));
    assert!(table.ok().contains("acme"), "{}", table.stdout);

    let dup = run(server.cflow().args(["tenant", "create", "acme"]));
    assert!(dup.fails().contains("conflict"), "{}", dup.stderr);
    let after = run(server.cflow().args(["tenant", "list", "--output", "json"])).json();
    assert_eq!(
        after["items"], list["items"],
        "a refused create changes nothing"
    );
}

#[test]
fn keys_are_created_listed_and_revoked() {
    let server = Server::start();
    run(server.cflow().args(["tenant", "create", "acme"])).ok();
    let create = |name: &str, role: &str| {
        let r = run(server.cflow().args([
            "key",
            "create",
            "--tenant",
            "acme",
            "--name",
            name,
            "--role",
            role,
            "--expires-in",
            "30d",
            "--output",
            "json",
        ]));
        assert!(
            r.stderr.contains("shown only once"),
            "warning: {}",
            r.stderr
        );
        r.json()
    };
    let admin = create("acme-admin", "admin");
    let admin_token = admin["token"].as_str().unwrap().to_string();
    let dev = create("ci", "developer");
    let dev_token = dev["token"].as_str().unwrap().to_string();
    assert!(dev["expires_at"].as_str().is_some(), "{dev}");

    let who = run(server
        .cflow()
        .args(["whoami", "--output", "json", "--token", &dev_token]))
    .json();
    assert_eq!(who["role"], "developer");
    assert_eq!(who["tenant_name"], "acme");
    assert_eq!(who["key_name"], "ci");

    // A developer may not manage keys; the error names the role that may.
    let denied = run(server.cflow().args(["key", "list", "--token", &dev_token]));
    let err = denied.fails();
    assert!(
        err.contains("permission denied") && err.contains("admin"),
        "{err}"
    );

    let list =
        run(server
            .cflow()
            .args(["key", "list", "--output", "json", "--token", &admin_token]))
        .json();
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["id"].as_str())
        .collect();
    assert!(ids.contains(&dev["id"].as_str().unwrap()), "{list}");
    assert!(
        list.to_string().find(&dev_token).is_none(),
        "listing never shows tokens"
    );

    let id = dev["id"].as_str().unwrap();
    let revoked = run(server.cflow().args([
        "key",
        "revoke",
        id,
        "--output",
        "json",
        "--token",
        &admin_token,
    ]))
    .json();
    assert!(revoked["revoked_at"].as_str().is_some(), "{revoked}");

    let rejected = run(server.cflow().args(["whoami", "--token", &dev_token]));
    let err = rejected.fails();
    assert!(err.contains("the server rejected the token"), "{err}");
    assert!(err.contains("pass --token or set CFLOW_TOKEN"), "{err}");
    assert!(err.contains("admin.token"), "{err}");

    let bad_role = run(server.cflow().args([
        "key", "create", "--tenant", "acme", "--name", "x", "--role", "root",
    ]));
    assert!(
        bad_role.fails().contains("unknown role 'root'"),
        "{}",
        bad_role.stderr
    );
}

#[test]
fn whoami_with_a_token_and_with_the_admin_token_fallback() {
    let server = Server::start();
    let token = server.admin_token();
    let explicit = run(server
        .cflow()
        .args(["whoami", "--output", "json", "--token", &token]))
    .json();
    let fallback = run(server.cflow().args(["whoami", "--output", "json"])).json();
    assert_eq!(explicit["role"], "superadmin");
    assert_eq!(explicit, fallback);
    let by_env = run(server.cflow().env("CFLOW_TOKEN", &token).args(["whoami"]));
    assert!(by_env.ok().contains("superadmin"), "{}", by_env.stdout);
}
