//! `cflow config show` and configuration errors: the source of every value, and secrets that
//! never appear.

use crate::harness::{cflow_in, run};

const TOKEN: &str = "cflow_0123456789abcdef_topsecretvalue";
const PASSWORD: &str = "hunter2-db-password";

fn source_of<'a>(shown: &'a serde_json::Value, key: &str) -> &'a str {
    shown["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["key"] == key)
        .unwrap_or_else(|| panic!("{key} missing: {shown}"))["source"]
        .as_str()
        .unwrap()
}

#[test]
fn config_show_names_every_source_and_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cflow.toml"),
        "[client]\nserver = \"http://127.0.0.1:9999\"\n[server]\nlisten = \"127.0.0.1:9999\"\n[server.rate_limit]\nper_key_rps = 7\n",
    )
    .unwrap();
    let db = format!("postgres://cflow:{PASSWORD}@db.internal:5432/cflow");
    let show = |format: &str| {
        run(cflow_in(dir.path())
            .env("CFLOW_TOKEN", TOKEN)
            .env("CFLOW_DATABASE_URL", &db)
            .env("CFLOW_RATE_LIMIT_PER_KEY_BURST", "9")
            .args([
                "config",
                "show",
                "--data-dir",
                "/srv/cflow",
                "--output",
                format,
            ]))
    };
    let json = show("json");
    let table = show("table");
    for out in [&json.stdout, &json.stderr, &table.stdout, &table.stderr] {
        assert!(
            !out.contains(TOKEN) && !out.contains("topsecret"),
            "token leaked: {out}"
        );
        assert!(!out.contains(PASSWORD), "database password leaked: {out}");
    }
    let shown = json.json();
    assert_eq!(source_of(&shown, "client.server"), "cflow.toml");
    assert_eq!(source_of(&shown, "server.listen"), "cflow.toml");
    assert_eq!(
        source_of(&shown, "server.rate_limit.per_key_rps"),
        "cflow.toml"
    );
    assert_eq!(
        source_of(&shown, "server.rate_limit.per_key_burst"),
        "CFLOW_RATE_LIMIT_PER_KEY_BURST"
    );
    assert_eq!(source_of(&shown, "client.token"), "CFLOW_TOKEN");
    assert_eq!(
        source_of(&shown, "server.database_url"),
        "CFLOW_DATABASE_URL"
    );
    assert_eq!(source_of(&shown, "server.data_dir"), "--data-dir");
    assert_eq!(source_of(&shown, "client.output"), "--output");
    assert_eq!(source_of(&shown, "server.request_timeout_secs"), "default");
    let values = shown["values"].as_array().unwrap();
    let value_of = |k: &str| values.iter().find(|v| v["key"] == k).unwrap()["value"].clone();
    assert_eq!(value_of("server.rate_limit.per_key_rps"), 7);
    assert_eq!(value_of("server.rate_limit.per_key_burst"), 9);
    assert_eq!(value_of("server.data_dir"), "/srv/cflow");
    assert!(
        value_of("server.database_url")
            .as_str()
            .unwrap()
            .contains("db.internal:5432")
    );
    assert_eq!(shown["file"]["path"], "cflow.toml");

    let t = table.ok();
    assert!(
        t.contains("CFLOW_TOKEN") && t.contains("--data-dir") && t.contains("default"),
        "{t}"
    );

    // A flag beats the environment, which beats the file.
    let layered = run(cflow_in(dir.path())
        .env("CFLOW_SERVER", "http://127.0.0.1:8888")
        .args(["config", "show", "--output", "json"]))
    .json();
    assert_eq!(source_of(&layered, "client.server"), "CFLOW_SERVER");
    let flagged = run(cflow_in(dir.path())
        .env("CFLOW_SERVER", "http://127.0.0.1:8888")
        .args([
            "config",
            "show",
            "--output",
            "json",
            "--server",
            "http://127.0.0.1:7777",
        ]))
    .json();
    assert_eq!(source_of(&flagged, "client.server"), "--server");
}

#[test]
fn an_unknown_key_in_cflow_toml_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cflow.toml"),
        "[server]\nlisten = \"127.0.0.1:1\"\nmax_body_byts = 10\n",
    )
    .unwrap();
    let r = run(cflow_in(dir.path()).args(["config", "show"]));
    let err = r.fails();
    assert!(err.contains("unknown key 'server.max_body_byts'"), "{err}");
    assert!(err.contains("cflow.toml"), "{err}");

    let other = dir.path().join("other.toml");
    std::fs::write(&other, "colour = \"blue\"\n").unwrap();
    let r = run(cflow_in(dir.path())
        .env("CFLOW_CONFIG", &other)
        .args(["whoami"]));
    assert!(r.fails().contains("unknown key 'colour'"), "{}", r.stderr);
}
