//! `cflow hooks install | uninstall | status`: cflow's entries in Claude Code's
//! `settings.json` (`<DIR>/.claude/settings.json`, or `~/.claude/settings.json` with `--user`).
//!
//! The file keeps Claude Code's shape: `hooks.<Event>` is a list of `{matcher?, hooks: [{type,
//! command, timeout}]}` groups; a matcher (`*`) only on the tool events. cflow's entries are the
//! commands that start with `cflow hook claude`: install removes them everywhere and appends
//! one group per event (so running it twice changes nothing and an older entry is replaced),
//! uninstall only removes them. Every other key and hook is kept. The file is replaced
//! atomically (a temporary file renamed over it); a file that is not valid JSON, or whose
//! `hooks` is not Claude Code's shape, is refused and left as it was.

use super::FailArg;
use crate::output::{Printer, emit};
use anyhow::{Context, Result, bail};
use cflow_core::claude::Event;
use clap::Args;
use serde_json::{Map, Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The start of every command cflow writes, and how its entries are recognised.
const COMMAND_PREFIX: &str = "cflow hook claude";
/// Claude Code's timeout for cflow's hook, in seconds: the hook bounds itself to
/// `--timeout-ms` (2 s by default), so this only catches a hook that could not even start.
const HOOK_TIMEOUT_SECS: u64 = 10;

#[derive(Debug, Args)]
pub struct Target {
    /// The project whose `.claude/settings.json` to change (default: the current directory).
    #[arg(long, value_name = "DIR", conflicts_with = "user")]
    pub project: Option<PathBuf>,
    /// Change the user's `~/.claude/settings.json` instead.
    #[arg(long)]
    pub user: bool,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    #[command(flatten)]
    pub target: Target,
    /// Written into each hook command: what the hook does when the server cannot be reached.
    #[arg(long, value_enum)]
    pub fail: Option<FailArg>,
}

impl Target {
    fn path(&self) -> Result<PathBuf> {
        let base = if self.user {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .context("--user needs HOME to find ~/.claude/settings.json")?
        } else {
            match &self.project {
                Some(dir) => dir.clone(),
                None => std::env::current_dir().context("reading the current directory")?,
            }
        };
        Ok(base.join(".claude").join("settings.json"))
    }
}

pub fn hooks(
    _loaded: &crate::config::Loaded,
    cmd: super::HooksCmd,
    out: Printer,
) -> Result<ExitCode> {
    use super::HooksCmd::*;
    match cmd {
        Install(args) => {
            let path = args.target.path()?;
            let changed = edit(&path, |doc| install(doc, args.fail))?;
            report(
                &out,
                &path,
                changed,
                "installed cflow's hooks for 9 events in",
            );
        }
        Uninstall(target) => {
            let path = target.path()?;
            if !path.exists() {
                report(&out, &path, false, "no cflow hooks in");
            } else {
                let changed = edit(&path, |doc| {
                    remove_cflow(doc);
                })?;
                report(&out, &path, changed, "removed cflow's hooks from");
            }
        }
        Status(target) => {
            let path = target.path()?;
            let doc = read(&path)?.unwrap_or_else(|| json!({}));
            let rows: Vec<Value> = Event::ALL
                .iter()
                .map(|e| {
                    let cmds = cflow_commands(&doc, e.name());
                    json!({ "event": e.name(), "installed": !cmds.is_empty(), "commands": cmds })
                })
                .collect();
            if out.is_json() {
                out.json(&json!({ "path": path, "events": rows }));
            } else {
                emit(&path.display().to_string());
                for r in &rows {
                    let cmds: Vec<&str> = r["commands"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    let state = if cmds.is_empty() {
                        "not installed".to_string()
                    } else {
                        cmds.join("; ")
                    };
                    emit(&format!(
                        "  {:<17} {state}",
                        r["event"].as_str().unwrap_or_default()
                    ));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn report(out: &Printer, path: &Path, changed: bool, what: &str) {
    if out.is_json() {
        out.json(&json!({ "path": path, "changed": changed }));
    } else if changed {
        emit(&format!("{what} {}", path.display()));
    } else {
        emit(&format!(
            "{} is already up to date (unchanged)",
            path.display()
        ));
    }
}

/// The settings document, `None` when the file does not exist; refuses anything that is not a
/// JSON object.
fn read(path: &Path) -> Result<Option<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if text.trim().is_empty() {
        return Ok(Some(json!({})));
    }
    let doc: Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not valid JSON — fix it (or move it away) and run this again; nothing was changed",
            path.display()
        )
    })?;
    if !doc.is_object() {
        bail!(
            "{} is not a JSON object as Claude Code's settings are; nothing was changed",
            path.display()
        );
    }
    check_shape(&doc).with_context(|| format!("{}: nothing was changed", path.display()))?;
    Ok(Some(doc))
}

/// Refuses a `hooks` section cflow would have to guess about.
fn check_shape(doc: &Value) -> Result<()> {
    let Some(hooks) = doc.get("hooks") else {
        return Ok(());
    };
    let Some(events) = hooks.as_object() else {
        bail!("'hooks' is not an object of event names");
    };
    for (event, groups) in events {
        let Some(groups) = groups.as_array() else {
            bail!("'hooks.{event}' is not a list of matcher groups");
        };
        for (i, g) in groups.iter().enumerate() {
            if !g.get("hooks").is_some_and(Value::is_array) {
                bail!("'hooks.{event}[{i}]' has no list 'hooks'");
            }
        }
    }
    Ok(())
}

/// Reads the file, applies `change`, and writes it back atomically if anything changed.
fn edit(path: &Path, change: impl FnOnce(&mut Value)) -> Result<bool> {
    let before = read(path)?;
    let mut doc = before.clone().unwrap_or_else(|| json!({}));
    change(&mut doc);
    if before.as_ref() == Some(&doc) {
        return Ok(false);
    }
    let dir = path
        .parent()
        .context("the settings path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut text = serde_json::to_string_pretty(&doc).context("serialising the settings")?;
    text.push('\n');
    tmp.write_all(text.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    // Keep the file's permissions (a new one gets the usual 0644, not the temporary's 0600).
    let perms = match std::fs::metadata(path) {
        Ok(m) => m.permissions(),
        Err(_) => std::os::unix::fs::PermissionsExt::from_mode(0o644),
    };
    std::fs::set_permissions(tmp.path(), perms)
        .with_context(|| format!("setting permissions of {}", tmp.path().display()))?;
    tmp.persist(path)
        .with_context(|| format!("replacing {}", path.display()))?;
    Ok(true)
}

fn is_cflow(hook: &Value) -> bool {
    hook.get("command")
        .and_then(Value::as_str)
        .is_some_and(|c| c.trim_start().starts_with(COMMAND_PREFIX))
}

/// Removes cflow's hook commands everywhere, dropping the groups and events they leave empty.
fn remove_cflow(doc: &mut Value) {
    let Some(events) = doc.get_mut("hooks").and_then(Value::as_object_mut) else {
        return;
    };
    let mut emptied = Vec::new();
    for (event, groups) in events.iter_mut() {
        let Some(list) = groups.as_array_mut() else {
            continue;
        };
        let before = list.len();
        let mut touched = false;
        for g in list.iter_mut() {
            if let Some(hooks) = g.get_mut("hooks").and_then(Value::as_array_mut) {
                let n = hooks.len();
                hooks.retain(|h| !is_cflow(h));
                touched |= hooks.len() != n;
            }
        }
        if touched {
            list.retain(|g| g["hooks"].as_array().is_some_and(|h| !h.is_empty()));
            if list.is_empty() && before > 0 {
                emptied.push(event.clone());
            }
        }
    }
    for e in emptied {
        events.remove(&e);
    }
    if events.is_empty()
        && let Some(obj) = doc.as_object_mut()
    {
        obj.remove("hooks");
    }
}

/// Replaces cflow's entries with one group per event.
fn install(doc: &mut Value, fail: Option<FailArg>) {
    remove_cflow(doc);
    let Some(obj) = doc.as_object_mut() else {
        return;
    };
    let hooks = obj
        .entry("hooks")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(events) = hooks.as_object_mut() else {
        return;
    };
    for event in Event::ALL {
        let mut command = format!("{COMMAND_PREFIX} {}", event.name());
        if let Some(f) = fail {
            command.push_str(match f {
                FailArg::Open => " --fail open",
                FailArg::Closed => " --fail closed",
            });
        }
        let hook = json!({ "type": "command", "command": command, "timeout": HOOK_TIMEOUT_SECS });
        let group = if event.matches_tools() {
            json!({ "matcher": "*", "hooks": [hook] })
        } else {
            json!({ "hooks": [hook] })
        };
        let list = events
            .entry(event.name())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(list) = list.as_array_mut() {
            list.push(group);
        }
    }
}

/// cflow's commands installed for `event`.
fn cflow_commands(doc: &Value, event: &str) -> Vec<String> {
    doc.get("hooks")
        .and_then(|h| h.get(event))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|g| g.get("hooks").and_then(Value::as_array))
        .flatten()
        .filter(|h| is_cflow(h))
        .filter_map(|h| h["command"].as_str().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_is_idempotent_and_uninstall_leaves_the_rest() {
        let mut doc = json!({
            "model": "opus",
            "hooks": {"PreToolUse": [
                {"matcher": "Bash", "hooks": [{"type": "command", "command": "./guard.sh"}]},
                {"matcher": "*", "hooks": [{"type": "command", "command": "cflow hook claude PreToolUse --fail open"}]}
            ]}
        });
        install(&mut doc, None);
        let once = doc.clone();
        install(&mut doc, None);
        assert_eq!(doc, once);
        assert_eq!(
            cflow_commands(&doc, "PreToolUse"),
            ["cflow hook claude PreToolUse"]
        );
        assert_eq!(doc["hooks"]["PreToolUse"].as_array().unwrap().len(), 2);
        assert_eq!(doc["hooks"]["Stop"][0].get("matcher"), None);
        assert_eq!(doc["hooks"]["PostToolUse"][0]["matcher"], "*");
        remove_cflow(&mut doc);
        assert_eq!(
            doc,
            json!({"model": "opus", "hooks": {"PreToolUse": [
                {"matcher": "Bash", "hooks": [{"type": "command", "command": "./guard.sh"}]}
            ]}})
        );
    }

    #[test]
    fn odd_shapes_are_refused() {
        for bad in [
            json!({"hooks": []}),
            json!({"hooks": {"Stop": {}}}),
            json!({"hooks": {"Stop": [{}]}}),
        ] {
            assert!(check_shape(&bad).is_err(), "{bad}");
        }
    }
}
