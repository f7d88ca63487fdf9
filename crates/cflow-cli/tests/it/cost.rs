//! `cflow cost` and `cflow budget`: budgets set, replaced, listed and deleted, an empty cost
//! report, and what bad input and an under-privileged token are told. (Rollup numbers need
//! model calls, which only the server's in-process hook records; the store and server suites
//! cover them.)

use crate::harness::{Server, run};

#[test]
fn budgets_are_set_listed_and_deleted() {
    let server = Server::start();
    let set = run(server.cflow().args([
        "budget",
        "set",
        "--period",
        "month",
        "--limit-usd",
        "10",
        "--output",
        "json",
    ]))
    .json();
    assert_eq!(set["period"], "month");
    assert_eq!(set["limit_usd"], 10.0);
    assert_eq!(set["spent_usd"], 0.0);
    assert_eq!(set["project"], serde_json::Value::Null);
    let id = set["id"].as_str().unwrap().to_string();

    // Same scope and period: the limit is replaced, the id kept.
    let again = run(server.cflow().args([
        "budget",
        "set",
        "--period",
        "month",
        "--limit-usd",
        "12.5",
        "--output",
        "json",
    ]))
    .json();
    assert_eq!(
        (again["id"].as_str(), again["limit_usd"].as_f64()),
        (Some(id.as_str()), Some(12.5))
    );
    let web = run(server.cflow().args([
        "budget",
        "set",
        "--period",
        "week",
        "--limit-usd",
        "1",
        "--project",
        "web",
    ]));
    assert!(web.ok().contains("week"), "{}", web.stdout);

    let list = run(server.cflow().args(["budget", "list", "--output", "json"])).json();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{list}");
    assert_eq!(items[0]["id"], id.as_str());
    assert_eq!(items[1]["project"], "web");
    let table = run(server.cflow().args(["budget", "list"]));
    let text = table.ok();
    assert!(
        text.contains("resets_at") && text.contains("web") && text.contains("12.5"),
        "{text}"
    );

    // Bad input is refused before or by the server, and changes nothing.
    let bad = run(server
        .cflow()
        .args(["budget", "set", "--period", "year", "--limit-usd", "1"]));
    assert!(bad.fails().contains("period"), "{}", bad.stderr);
    let bad = run(server
        .cflow()
        .args(["budget", "set", "--period", "day", "--limit-usd=-1"]));
    assert!(bad.fails().contains("limit"), "{}", bad.stderr);
    let after = run(server.cflow().args(["budget", "list", "--output", "json"])).json();
    assert_eq!(after["items"].as_array().unwrap().len(), 2, "{after}");

    let deleted = run(server.cflow().args(["budget", "delete", &id]));
    assert!(
        deleted.ok().contains("deleted budget"),
        "{}",
        deleted.stdout
    );
    let missing = run(server.cflow().args(["budget", "delete", &id]));
    assert!(missing.fails().contains("not found"), "{}", missing.stderr);
    let after = run(server.cflow().args(["budget", "list", "--output", "json"])).json();
    assert_eq!(after["items"].as_array().unwrap().len(), 1, "{after}");
}

#[test]
fn an_empty_cost_report_and_its_errors() {
    let server = Server::start();
    let report = run(server
        .cflow()
        .args(["cost", "--by", "model", "--since", "7d", "--output", "json"]))
    .json();
    assert_eq!(report["by"], "model");
    assert_eq!(report["items"], serde_json::json!([]));
    assert_eq!(report["total"]["calls"], 0);
    assert!(report["since"].as_str().is_some(), "{report}");
    let table =
        run(server
            .cflow()
            .args(["cost", "--since", "2026-01-01", "--until", "2099-01-01"]));
    assert!(table.ok().contains("(none)"), "{}", table.stdout);

    let bad = run(server.cflow().args(["cost", "--by", "colour"]));
    assert!(
        bad.fails().contains("unknown grouping 'colour'"),
        "{}",
        bad.stderr
    );
    let bad = run(server.cflow().args(["cost", "--since", "last tuesday"]));
    // A usage error, found by the argument parser: exit code 2.
    assert_eq!(bad.code(), Some(2), "{}", bad.stderr);
    assert!(bad.stderr.contains("is not a date"), "{}", bad.stderr);

    // A developer may read neither cost nor budgets; the error names who may.
    run(server.cflow().args(["tenant", "create", "acme"])).ok();
    let dev = run(server.cflow().args([
        "key",
        "create",
        "--tenant",
        "acme",
        "--name",
        "dev",
        "--role",
        "developer",
        "--output",
        "json",
    ]))
    .json();
    let token = dev["token"].as_str().unwrap();
    let denied = run(server.cflow().args(["cost", "--token", token]));
    let err = denied.fails();
    assert!(
        err.contains("permission denied") && err.contains("auditor"),
        "{err}"
    );
    let denied = run(server.cflow().args([
        "budget",
        "set",
        "--period",
        "day",
        "--limit-usd",
        "1",
        "--token",
        token,
    ]));
    assert!(denied.fails().contains("admin"), "{}", denied.stderr);
}
