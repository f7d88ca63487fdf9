//! `cflow memory …` against a real server: text and JSON values, namespaces with '/',
//! compare-and-set conflicts that change nothing, listing, search and deletion.

use crate::harness::{Server, run, run_with_stdin};
use serde_json::json;

#[test]
fn store_get_list_search_delete() {
    let server = Server::start();
    let ns = "project/web";
    let m = |args: &[&str]| {
        let mut c = server.cflow();
        c.arg("memory").args(args);
        c
    };

    let first = run(&mut m(&[
        "store",
        ns,
        "plan",
        "ship the search feature",
        "--tag",
        "roadmap",
        "--output",
        "json",
    ]))
    .json();
    assert_eq!(first["version"], 1);
    assert_eq!(first["namespace"], ns);
    assert_eq!(first["tags"], json!(["roadmap"]));

    let entry = run(&mut m(&["get", ns, "plan", "--output", "json"])).json();
    assert_eq!(
        entry["value"], "ship the search feature",
        "stored as a JSON string"
    );
    assert_eq!(entry["version"], 1);
    let table = run(&mut m(&["get", ns, "plan"]));
    assert!(
        table.ok().contains("ship the search feature"),
        "{}",
        table.stdout
    );

    let second = run(&mut m(&[
        "store",
        ns,
        "plan",
        r#"{"steps": [1, 2]}"#,
        "--json",
        "--if-version",
        "1",
        "--output",
        "json",
    ]))
    .json();
    assert_eq!(second["version"], 2);
    let entry = run(&mut m(&["get", ns, "plan", "--output", "json"])).json();
    assert_eq!(entry["value"], json!({"steps": [1, 2]}));

    // A stale version is refused, says what to do, and changes nothing.
    let stale = run(&mut m(&[
        "store",
        ns,
        "plan",
        "overwrite",
        "--if-version",
        "1",
    ]));
    let err = stale.fails();
    assert!(err.contains("version conflict"), "{err}");
    assert!(err.contains("--if-version"), "{err}");
    let entry = run(&mut m(&["get", ns, "plan", "--output", "json"])).json();
    assert_eq!(entry["version"], 2);
    assert_eq!(entry["value"], json!({"steps": [1, 2]}));

    // Invalid JSON with --json is refused before anything is sent.
    let bad = run(&mut m(&["store", ns, "broken", "{not json", "--json"]));
    assert!(bad.fails().contains("not valid JSON"), "{}", bad.stderr);
    let missing = run(&mut m(&["get", ns, "broken"]));
    assert!(missing.fails().contains("not found"), "{}", missing.stderr);

    // '-' reads the value from standard input.
    let piped = run_with_stdin(
        m(&["store", ns, "notes", "-", "--ttl", "1h", "--output", "json"])
            .arg("--tag")
            .arg("x"),
        "from stdin\n",
    )
    .json();
    assert!(piped["expires_at"].as_str().is_some(), "{piped}");
    let entry = run(&mut m(&["get", ns, "notes", "--output", "json"])).json();
    assert_eq!(entry["value"], "from stdin");

    for i in 0..3 {
        run(&mut m(&[
            "store",
            ns,
            &format!("item-{i}"),
            &format!("searchable zebra {i}"),
        ]))
        .ok();
    }
    let list = run(&mut m(&[
        "list", ns, "--prefix", "item-", "--output", "json",
    ]))
    .json();
    let keys: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["key"].as_str())
        .collect();
    assert_eq!(keys, ["item-0", "item-1", "item-2"]);
    let paged = run(&mut m(&[
        "list", ns, "--limit", "1", "--all", "--output", "json",
    ]))
    .json();
    assert_eq!(
        paged["items"].as_array().unwrap().len(),
        5,
        "--all follows the cursor: {paged}"
    );
    let one_page = run(&mut m(&["list", ns, "--limit", "1"]));
    assert!(one_page.ok().contains("item-0"), "{}", one_page.stdout);
    assert!(one_page.stderr.contains("--all"), "{}", one_page.stderr);

    let hits = run(&mut m(&[
        "search",
        "zebra",
        "--namespace",
        ns,
        "--output",
        "json",
    ]))
    .json();
    let hit_keys: Vec<&str> = hits["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["key"].as_str())
        .collect();
    assert_eq!(hit_keys.len(), 3, "{hits}");
    assert!(hit_keys.iter().all(|k| k.starts_with("item-")), "{hits}");
    let table = run(&mut m(&["search", "zebra"]));
    assert!(table.ok().contains("item-1"), "{}", table.stdout);

    let stale_delete = run(&mut m(&["delete", ns, "plan", "--if-version", "1"]));
    assert!(
        stale_delete.fails().contains("version conflict"),
        "{}",
        stale_delete.stderr
    );
    run(&mut m(&["get", ns, "plan"])).ok();
    run(&mut m(&["delete", ns, "plan", "--if-version", "2"])).ok();
    let gone = run(&mut m(&["get", ns, "plan"]));
    assert!(gone.fails().contains("not found"), "{}", gone.stderr);
}

#[test]
fn a_viewer_may_read_but_not_write() {
    let server = Server::start();
    run(server.cflow().args(["tenant", "create", "acme"])).ok();
    let key = run(server.cflow().args([
        "key", "create", "--tenant", "acme", "--name", "v", "--role", "viewer", "--output", "json",
    ]))
    .json();
    let token = key["token"].as_str().unwrap();
    let denied = run(server
        .cflow()
        .args(["memory", "store", "ns", "k", "v", "--token", token]));
    let err = denied.fails();
    assert!(err.contains("permission denied"), "{err}");
    assert!(err.contains("admin, operator, developer"), "{err}");
    let missing = run(server
        .cflow()
        .args(["memory", "get", "ns", "k", "--token", token]));
    assert!(
        missing.fails().contains("not found"),
        "nothing was written: {}",
        missing.stderr
    );
}
