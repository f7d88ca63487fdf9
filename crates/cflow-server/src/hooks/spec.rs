//! What a hook is made of, checked: event patterns and how they match events, its scope, and
//! its handler's settings (stored as the hook's `config` JSON).

use cflow_core::ValidationError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The synchronous check at task submission.
pub const PRE_TASK: &str = "pre-task";

/// The synthetic event `POST /api/v1/hooks/{id}/test` sends.
pub const TEST_EVENT: &str = "hook.test";

/// Families a `family.*` pattern may name.
pub const FAMILIES: &[&str] = &[
    "task",
    "agent",
    "swarm",
    "worker",
    "autoscaler",
    "message",
    "budget",
    "memory",
    "hook",
    "claude",
];

/// Every event name a hook may subscribe to exactly (besides `claude.<Event>`). The bus's own
/// names, plus three aliases: `task.created` (the submission's `task.queued` / `task.pending`),
/// `task.started` (`task.running`) and `task.completed` (`task.succeeded`).
pub const EVENTS: &[&str] = &[
    "task.created",
    "task.queued",
    "task.pending",
    "task.assigned",
    "task.running",
    "task.started",
    "task.succeeded",
    "task.completed",
    "task.failed",
    "task.timed_out",
    "task.cancelled",
    "task.retrying",
    "task.lost",
    "task.delegated",
    "task.log",
    "task.agent",
    "agent.spawned",
    "agent.starting",
    "agent.idle",
    "agent.busy",
    "agent.draining",
    "agent.stopped",
    "agent.failed",
    "agent.quarantined",
    "agent.recycled",
    "agent.breaker_open",
    "agent.breaker_half_open",
    "agent.breaker_closed",
    "swarm.created",
    "swarm.paused",
    "swarm.resumed",
    "swarm.stopped",
    "swarm.scaled",
    "worker.connected",
    "worker.suspected",
    "worker.lost",
    "worker.left",
    "autoscaler.scale_up",
    "autoscaler.scale_down",
    "message.sent",
    "budget.exceeded",
    "memory.written",
    "memory.deleted",
    "hook.test",
];

/// Events so frequent (one per output chunk or agent step) that wildcards leave them out: a
/// hook gets them only by naming them.
const NOISY: &[&str] = &["task.log", "task.agent"];

/// Checks one event pattern; the error says what is accepted.
pub fn check_pattern(p: &str) -> Result<(), String> {
    if p == "*" || p == PRE_TASK || EVENTS.contains(&p) {
        return Ok(());
    }
    if let Some(family) = p.strip_suffix(".*")
        && FAMILIES.contains(&family)
    {
        return Ok(());
    }
    if let Some(event) = p.strip_prefix("claude.")
        && !event.is_empty()
        && event.len() <= 64
        && event.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Ok(());
    }
    Err(format!(
        "unknown event pattern '{p}': use an event name such as task.completed, task.failed, \
         agent.spawned, swarm.created or budget.exceeded, a family wildcard ({}), '*' for \
         every event, or 'pre-task' for the check at submission",
        FAMILIES
            .iter()
            .map(|f| format!("{f}.*"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Whether `pattern` selects the event named `name`.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    if name == PRE_TASK || pattern == PRE_TASK {
        return pattern == name;
    }
    if pattern == "*" {
        return !NOISY.contains(&name);
    }
    if let Some(family) = pattern.strip_suffix(".*") {
        return !NOISY.contains(&name)
            && name
                .strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('.'));
    }
    pattern == name
}

/// The names an event of type `kind` answers to: its own, and its alias if it has one.
pub fn names_of<'a>(kind: &'a str, data: &Value) -> Vec<&'a str> {
    let alias = match kind {
        "task.succeeded" => Some("task.completed"),
        "task.running" => Some("task.started"),
        "task.queued" | "task.pending" if data.get("submitted") == Some(&Value::Bool(true)) => {
            Some("task.created")
        }
        _ => None,
    };
    let mut names = vec![kind];
    names.extend(alias);
    names
}

/// Whether any of the hook's patterns selects any of the event's names.
pub fn selects(patterns: &[String], names: &[&str]) -> bool {
    patterns
        .iter()
        .any(|p| names.iter().any(|n| pattern_matches(p, n)))
}

/// What a failed or timed-out pre-task hook means for the submission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    #[default]
    Allow,
    Deny,
}

/// The default and bounds of a hook's timeout, in seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 10;
pub const MAX_TIMEOUT_SECS: u64 = 300;
/// The default and bounds of a hook's attempts per delivery.
pub const DEFAULT_MAX_ATTEMPTS: i64 = 8;
pub const MAX_ATTEMPTS: i64 = 50;

/// A hook's handler settings, as stored in its `config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// A command line, run with `/bin/sh -c` in the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The name of the tenant's secret whose value keys the webhook's signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub timeout_seconds: u64,
    pub max_attempts: i64,
    #[serde(default)]
    pub on_error: OnError,
}

impl Settings {
    /// The settings of a stored hook; a row that does not parse (never written by this server)
    /// is reported, not guessed at.
    pub fn of(config: &Value) -> Result<Settings, String> {
        serde_json::from_value(config.clone()).map_err(|e| format!("invalid hook settings: {e}"))
    }
}

/// A scope as the API writes it: `tenant`, `project:NAME` or `swarm:ID`.
pub fn parse_scope(s: &str) -> Result<(String, Option<String>), ValidationError> {
    let bad = || {
        ValidationError::new(
            "scope",
            format!("'{s}' is not a scope: use 'tenant', 'project:NAME' or 'swarm:ID'"),
        )
    };
    if s == "tenant" {
        return Ok(("tenant".into(), None));
    }
    let (kind, id) = s.split_once(':').ok_or_else(bad)?;
    if !matches!(kind, "project" | "swarm") || id.trim().is_empty() {
        return Err(bad());
    }
    Ok((kind.to_string(), Some(id.to_string())))
}

/// Checks a webhook URL: absolute `http` or `https` with a host.
pub fn check_url(url: &str) -> Result<(), ValidationError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        ValidationError::new(
            "url",
            format!("'{url}' is not a URL ({e}): give an absolute http:// or https:// URL"),
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ValidationError::new(
            "url",
            format!(
                "the scheme '{}' is not supported: a webhook URL must be http:// or https:// \
                 with a host",
                parsed.scheme()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patterns_match_names_wildcards_and_aliases() {
        assert!(pattern_matches("task.failed", "task.failed"));
        assert!(!pattern_matches("task.failed", "task.failed2"));
        assert!(pattern_matches("swarm.*", "swarm.created"));
        assert!(!pattern_matches("swarm.*", "swarmy.created"));
        assert!(pattern_matches("*", "agent.spawned"));
        assert!(
            !pattern_matches("*", "task.log"),
            "noisy events need their name"
        );
        assert!(pattern_matches("task.log", "task.log"));
        assert!(
            !pattern_matches("*", PRE_TASK),
            "pre-task is never a wildcard's"
        );
        let names = names_of("task.succeeded", &json!({}));
        assert!(selects(&["task.completed".into()], &names));
        let created = names_of("task.queued", &json!({"submitted": true}));
        assert!(selects(&["task.created".into()], &created));
        assert!(!selects(
            &["task.created".into()],
            &names_of("task.queued", &json!({}))
        ));
    }

    #[test]
    fn patterns_and_scopes_are_checked() {
        for ok in [
            "*",
            "pre-task",
            "task.*",
            "task.completed",
            "claude.PreToolUse",
        ] {
            check_pattern(ok).unwrap();
        }
        for bad in ["task.finished", "nope.*", "", "claude.", "task"] {
            let e = check_pattern(bad).unwrap_err();
            assert!(e.contains("unknown event pattern"), "{e}");
        }
        assert_eq!(parse_scope("tenant").unwrap(), ("tenant".into(), None));
        assert_eq!(
            parse_scope("swarm:abc").unwrap(),
            ("swarm".into(), Some("abc".into()))
        );
        assert!(parse_scope("swarm:").is_err());
        assert!(parse_scope("org:x").is_err());
        check_url("https://example.com/hook").unwrap();
        assert!(check_url("ftp://example.com").is_err());
        assert!(check_url("not a url").is_err());
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let c = super::super::HookConfig {
            retry_base_ms: 100,
            retry_max_ms: 1_000,
            ..Default::default()
        };
        assert!((50..=100).contains(&c.backoff_ms(1, 7)));
        assert!((100..=200).contains(&c.backoff_ms(2, 12345)));
        assert!((500..=1_000).contains(&c.backoff_ms(30, u64::MAX)));
    }
}
