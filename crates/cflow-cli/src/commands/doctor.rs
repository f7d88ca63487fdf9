//! `cflow doctor`: is the server reachable and ready, is the token accepted, which database the
//! local configuration names (for PostgreSQL, its server's version and settings), which workers
//! are connected, and what isolation each driver gives its commands on this host. Exit code 1
//! when the server cannot be used.

use crate::client::{Client, is_local, shown};
use crate::config::Loaded;
use crate::output::{Printer, emit};
use anyhow::Result;
use cflow_core::Action;
use reqwest::Method;
use serde_json::{Value, json};
use std::process::ExitCode;
use std::time::Duration;

pub async fn run(loaded: &Loaded, out: Printer) -> Result<ExitCode> {
    let config = &loaded.config;
    let base = crate::client::parse_server_url(&config.client.server)?;
    let url = shown(&base).to_string();
    let mut ok = true;

    // Reachability needs no token: /healthz and /readyz are public.
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .build()?;
    let probe = |path: &str| {
        let mut u = base.clone();
        u.set_path(&format!("{}/{path}", base.path().trim_end_matches('/')));
        http.get(u).send()
    };
    let server = match probe("healthz").await {
        Ok(r) if r.status().is_success() => {
            let ready = probe("readyz").await.is_ok_and(|r| r.status().is_success());
            ok &= ready;
            json!({"url": url, "reachable": true, "ready": ready})
        }
        Ok(r) => {
            ok = false;
            json!({"url": url, "reachable": true, "ready": false, "error": format!("/healthz answered {}", r.status())})
        }
        Err(e) => {
            ok = false;
            json!({"url": url, "reachable": false, "ready": false,
                   "error": format!("{} — start it with 'cflow up' or set --server", root(&e))})
        }
    };

    let mut auth = json!({"ok": false});
    let mut workers = Value::Null;
    if server["reachable"] == true {
        match Client::from_config(loaded) {
            Ok(client) => {
                let who = client
                    .json(
                        client.request(Method::GET, client.url(&["whoami"])),
                        Action::Whoami,
                    )
                    .await;
                match who {
                    Ok(w) => {
                        auth = json!({"ok": true, "key": w.get("key_name"), "tenant": w.get("tenant_name"), "role": w.get("role")});
                        let list = client
                            .json(
                                client.request(Method::GET, client.url(&["workers"])),
                                Action::SwarmRead,
                            )
                            .await;
                        workers = match list {
                            Ok(doc) => doc.get("items").cloned().unwrap_or(doc),
                            Err(e) => json!({"error": format!("{e:#}")}),
                        };
                    }
                    Err(e) => {
                        ok = false;
                        auth = json!({"ok": false, "error": format!("{e:#}")});
                    }
                }
            }
            Err(e) => {
                ok = false;
                auth = json!({"ok": false, "error": format!("{e:#}")});
            }
        }
    }

    // The API does not report its backend; this is what the local configuration says, which is
    // the server's own only when it was started from the same configuration.
    let database = match &config.server.database_url {
        Some(url) => postgres_report(url).await,
        None => json!({
            "backend": "sqlite",
            "path": config.server.data_dir.join(super::audit::SQLITE_FILE).display().to_string(),
            "source": if is_local(&base) { "local configuration ('cflow up' always uses SQLite)" } else { "local configuration (the server is remote and may differ)" },
        }),
    };

    // The sandbox of this host, as the local configuration sets it up: a real probe run of
    // `true` through every layer (in a scratch data directory, so doctor changes nothing).
    let sandbox = sandbox_report(&config.server.sandbox);
    let sandboxed = sandbox["layers"].is_object();
    let drivers = cflow_agents::Drivers::builtin(cflow_agents::ExecConfig::default());
    let mut driver_list = Vec::new();
    for kind in drivers.kinds() {
        let (isolated, summary) = match kind {
            "exec" if sandboxed => (
                true,
                "commands run in the sandbox (layers below)".to_string(),
            ),
            "exec" => (
                false,
                format!(
                    "commands would run UNSANDBOXED on this host: {}",
                    sandbox["error"].as_str().unwrap_or("the sandbox is off")
                ),
            ),
            "noop" => (
                false,
                "no isolation: the noop benchmark driver runs no process".to_string(),
            ),
            _ => (false, "no isolation".to_string()),
        };
        driver_list.push(json!({
            "driver": kind,
            "isolated": isolated,
            "summary": summary,
        }));
    }

    let report = json!({
        "ok": ok,
        "server": server,
        "auth": auth,
        "database": database,
        "workers": workers,
        "drivers": driver_list,
        "sandbox": sandbox,
    });
    if out.is_json() {
        out.json(&report);
    } else {
        print_human(&report);
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The configured PostgreSQL database: its server's version and settings (read over one short
/// connection, given at most [`PG_PROBE`]). A database this host cannot reach is reported, not a
/// failure of the check: the server may reach it when we do not.
async fn postgres_report(url: &str) -> Value {
    let mut d = json!({"backend": "postgresql", "source": "local configuration (database_url)"});
    match tokio::time::timeout(PG_PROBE, crate::pgsettings::settings(url)).await {
        Ok(Ok(settings)) => {
            d["summary"] = json!(crate::pgsettings::describe(&settings));
            d["settings"] = json!(settings);
        }
        // What was tried and the root cause: the chain between repeats itself (sqlx's I/O
        // error prints its source, then is followed by it).
        Ok(Err(e)) => d["settings_error"] = json!(format!("{e}: {}", e.root_cause())),
        Err(_) => {
            d["settings_error"] = json!(format!(
                "no answer from the database within {} s",
                PG_PROBE.as_secs()
            ))
        }
    }
    d
}

/// How long `cflow doctor` waits for the configured PostgreSQL database.
const PG_PROBE: Duration = Duration::from_secs(5);

fn print_human(r: &Value) {
    let mark = |b: bool| if b { "ok  " } else { "FAIL" };
    let s = &r["server"];
    let reach = s["reachable"] == true;
    let line = if reach {
        format!(
            "server     {} reachable at {}, {}",
            mark(s["ready"] == true),
            s["url"].as_str().unwrap_or(""),
            if s["ready"] == true {
                "ready (database answers)"
            } else {
                "NOT ready"
            }
        )
    } else {
        format!(
            "server     {} cannot reach {}: {}",
            mark(false),
            s["url"].as_str().unwrap_or(""),
            s["error"].as_str().unwrap_or("")
        )
    };
    emit(&line);
    let a = &r["auth"];
    if reach {
        if a["ok"] == true {
            emit(&format!(
                "token      ok   key '{}' of tenant '{}', role {}",
                crate::output::cell(a.get("key")),
                crate::output::cell(a.get("tenant")),
                crate::output::cell(a.get("role"))
            ));
        } else {
            emit(&format!(
                "token      FAIL {}",
                a["error"].as_str().unwrap_or("")
            ));
        }
    }
    let d = &r["database"];
    emit(&format!(
        "database   --   {}{} (from the {})",
        d["backend"].as_str().unwrap_or("?"),
        d.get("path")
            .and_then(Value::as_str)
            .map(|p| format!(" at {p}"))
            .unwrap_or_default(),
        d["source"].as_str().unwrap_or("")
    ));
    if let Some(summary) = d["summary"].as_str() {
        emit(&format!("           --   {summary}"));
    }
    if let Some(e) = d["settings_error"].as_str() {
        emit(&format!("database   --   settings not read: {e}"));
    }
    match &r["workers"] {
        Value::Array(ws) if ws.is_empty() => emit("workers    --   none connected"),
        Value::Array(ws) => {
            for w in ws {
                emit(&format!(
                    "worker     --   {} ({}): {}, {} slot(s), drivers {}",
                    crate::output::cell(w.get("name")),
                    crate::output::cell(w.get("id")),
                    crate::output::cell(w.get("state")),
                    crate::output::cell(w.get("slots")),
                    crate::output::cell(w.get("drivers"))
                ));
            }
        }
        Value::Object(o) if o.contains_key("error") => emit(&format!(
            "workers    --   not available: {}",
            o["error"].as_str().unwrap_or("")
        )),
        _ => {}
    }
    for d in r["drivers"].as_array().into_iter().flatten() {
        emit(&format!(
            "driver     {}  {}: {}",
            match (d["isolated"] == true, d["driver"].as_str()) {
                (true, _) => "ok  ",
                // The benchmark driver runs nothing, so it has nothing to isolate.
                (false, Some("noop")) => "--  ",
                (false, _) => "WARN",
            },
            d["driver"].as_str().unwrap_or("?"),
            d["summary"].as_str().unwrap_or(""),
        ));
    }
    let sb = &r["sandbox"];
    if let Some(layers) = sb["layers"].as_object() {
        emit(&format!(
            "sandbox    ok    launcher {} (mode {})",
            sb["launcher"].as_str().unwrap_or("?"),
            sb["mode"].as_str().unwrap_or("?")
        ));
        for (layer, state) in layers {
            let (tag, text) = match state["state"].as_str() {
                Some("active") => ("ok  ", "active".to_string()),
                Some("disabled") => (
                    "--  ",
                    format!(
                        "disabled by policy ({})",
                        state["why"].as_str().unwrap_or("")
                    ),
                ),
                _ => (
                    "WARN",
                    format!("unavailable ({})", state["why"].as_str().unwrap_or("")),
                ),
            };
            emit(&format!("layer      {tag}  {layer}: {text}"));
        }
    } else {
        emit(&format!(
            "sandbox    WARN  {}",
            sb["error"].as_str().unwrap_or("not available")
        ));
    }
}

fn root(e: &reqwest::Error) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Probes the sandbox the local configuration describes: each layer's state, or why there is
/// no sandbox.
fn sandbox_report(options: &cflow_sandbox::host::Options) -> Value {
    let mode = serde_json::to_value(options.mode).unwrap_or(Value::Null);
    if options.mode == cflow_sandbox::host::Mode::Off {
        return json!({"mode": mode, "error": "the sandbox is turned off in the configuration (sandbox.mode = \"off\")"});
    }
    let scratch = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            return json!({"mode": mode, "error": format!("no scratch directory for the probe: {e}")});
        }
    };
    let sandbox = match options.build(scratch.path(), &[]) {
        Ok(Some(s)) => s,
        Ok(None) => return json!({"mode": mode, "error": "the sandbox is off"}),
        Err(e) => return json!({"mode": mode, "error": e}),
    };
    let launcher = sandbox.config().launcher.display().to_string();
    match sandbox.probe() {
        Ok(layers) => json!({
            "mode": mode,
            "launcher": launcher,
            "layers": serde_json::to_value(&layers).unwrap_or(Value::Null),
        }),
        Err(e) => {
            json!({"mode": mode, "launcher": launcher, "error": format!("the probe run failed: {e}")})
        }
    }
}
