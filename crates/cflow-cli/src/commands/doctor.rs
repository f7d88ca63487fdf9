//! `cflow doctor`: is the server reachable and ready, is the token accepted, which database the
//! local configuration names, which workers are connected, and what isolation each driver gives
//! its commands on this host. Exit code 1 when the server cannot be used.

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
        Some(_) => json!({"backend": "postgresql", "source": "local configuration (database_url)"}),
        None => json!({
            "backend": "sqlite",
            "path": config.server.data_dir.join(super::audit::SQLITE_FILE).display().to_string(),
            "source": if is_local(&base) { "local configuration ('cflow up' always uses SQLite)" } else { "local configuration (the server is remote and may differ)" },
        }),
    };

    let drivers = cflow_agents::Drivers::builtin(cflow_agents::ExecConfig::default());
    let mut driver_list = Vec::new();
    for kind in drivers.kinds() {
        let Ok(d) = drivers.get(kind) else { continue };
        let iso = d.isolation();
        let summary = match (kind, iso.is_isolated()) {
            ("exec", false) => {
                "commands run UNSANDBOXED (the sandbox is not built yet)".to_string()
            }
            (_, false) => "no isolation".to_string(),
            (_, true) => "isolated".to_string(),
        };
        driver_list.push(json!({
            "driver": kind,
            "isolated": iso.is_isolated(),
            "summary": summary,
            "isolation": serde_json::to_value(&iso).unwrap_or(Value::Null),
        }));
    }

    let report = json!({
        "ok": ok,
        "server": server,
        "auth": auth,
        "database": database,
        "workers": workers,
        "drivers": driver_list,
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
        let reason = d["isolation"]["reason"].as_str().unwrap_or("");
        emit(&format!(
            "driver     {}  {}: {}{}",
            match (d["isolated"] == true, d["driver"].as_str()) {
                (true, _) => "ok  ",
                // The benchmark driver runs nothing, so it has nothing to isolate.
                (false, Some("noop")) => "--  ",
                (false, _) => "WARN",
            },
            d["driver"].as_str().unwrap_or("?"),
            d["summary"].as_str().unwrap_or(""),
            if reason.is_empty() {
                String::new()
            } else {
                format!(" — {reason}")
            }
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
