//! `cflow hook add | list | test | disable | enable | deliveries | remove` against a real `cflow up`: a command
//! hook is added, listed, run for real by `test` (in the server's sandbox), its delivery is
//! listed, and it is removed; a webhook without a known secret is refused with what to do.

use crate::harness::{Server, run};

#[test]
fn hooks_are_added_listed_tested_and_removed() {
    let server = Server::start();
    let added = run(server.cflow().args([
        "hook",
        "add",
        "notify",
        "--event",
        "task.failed",
        "--event",
        "swarm.*",
        "--command",
        "cat > /dev/null",
        "--timeout",
        "5",
        "--output",
        "json",
    ]))
    .json();
    assert_eq!(added["kind"], "command", "{added}");
    assert_eq!(
        added["events"],
        serde_json::json!(["task.failed", "swarm.*"])
    );
    assert_eq!(added["timeout_seconds"], 5);
    let id = added["id"].as_str().unwrap().to_string();

    let table = run(server.cflow().args(["hook", "list"]));
    let text = table.ok();
    assert!(
        text.contains("notify") && text.contains("cat > /dev/null"),
        "{text}"
    );

    let tested = run(server
        .cflow()
        .args(["hook", "test", &id, "--output", "json"]))
    .json();
    assert_eq!(tested["ok"], true, "{tested}");
    assert_eq!(tested["status"], 0, "{tested}");

    let off = run(server
        .cflow()
        .args(["hook", "disable", &id, "--output", "json"]))
    .json();
    assert_eq!(off["enabled"], false, "{off}");
    let listed = run(server.cflow().args(["hook", "list", "--output", "json"])).json();
    assert_eq!(listed["items"][0]["enabled"], false, "{listed}");
    let on = run(server.cflow().args(["hook", "enable", &id]));
    let on = on.ok();
    assert!(on.contains("notify") && on.contains("enabled"), "{on}");
    let missing = run(server.cflow().args(["hook", "disable", "hk_missing"]));
    let missing = missing.fails();
    assert!(missing.contains("not found"), "{missing}");

    let deliveries = run(server.cflow().args([
        "hook",
        "deliveries",
        &id,
        "--state",
        "delivered",
        "--output",
        "json",
    ]))
    .json();
    let items = deliveries["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{deliveries}");
    assert_eq!(items[0]["event_type"], "hook.test");

    let bad = run(server.cflow().args([
        "hook",
        "add",
        "web",
        "--event",
        "*",
        "--webhook",
        "https://example.com/hook",
        "--secret",
        "MISSING",
    ]));
    let err = bad.fails();
    assert!(err.contains("cflow secret set MISSING"), "{err}");
    let bad_event = run(server.cflow().args([
        "hook",
        "add",
        "x",
        "--event",
        "task.finished",
        "--command",
        "true",
    ]));
    assert!(
        bad_event.fails().contains("unknown event pattern"),
        "{}",
        bad_event.stderr
    );

    run(server.cflow().args(["hook", "remove", &id])).ok();
    let listed = run(server.cflow().args(["hook", "list", "--output", "json"])).json();
    assert_eq!(listed["items"], serde_json::json!([]), "{listed}");
    let (status, _, output) = server.stop();
    assert!(status.success(), "{output}");
}
