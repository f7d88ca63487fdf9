//! `pre-task` hooks: asked synchronously, once per submitted task and matching hook, before
//! anything is stored. A hook answers JSON (a command on stdout, a webhook in its 2xx body):
//! `{"decision": "deny", "reason": "…"}` refuses the whole submission (403 naming the hook and
//! its reason); `{"decision": "allow", "amend": {"labels": {…}, "priority": N}}` merges the
//! labels and replaces the priority; an empty answer or `{"decision": "allow"}` changes nothing.
//! A hook that fails, times out or answers something else follows its `on_error` (`allow` by
//! default). Every call is recorded as a delivery of event type `pre-task`, for visibility.
//!
//! A tenant without pre-task hooks pays one cache lookup per submission.

use super::send;
use super::spec::{OnError, PRE_TASK, Settings};
use crate::error::{ApiError, ApiResult};
use crate::state::{AppState, now_ms};
use cflow_core::ValidationError;
use cflow_store::{Hook, NewDelivery, NewTask, SendResult};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// A hook's answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Reply {
    decision: Decision,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    amend: Option<Amend>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Decision {
    Allow,
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Amend {
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    priority: Option<i64>,
}

/// What one hook decided about one task.
enum Verdict {
    Allow(Option<Amend>),
    Deny(String),
}

/// Asks the tenant's pre-task hooks about each task, amending `tasks` in place; an error is the
/// refusal to answer (403).
pub async fn check(state: &AppState, tenant: &str, tasks: &mut [NewTask]) -> ApiResult<()> {
    let hooks = state.hooks.all(&state.store, tenant).await?;
    let pre: Vec<&Hook> = hooks
        .iter()
        .filter(|h| h.enabled && h.events.iter().any(|p| p == PRE_TASK))
        .collect();
    if pre.is_empty() {
        return Ok(());
    }
    let submission = uuid::Uuid::new_v4().simple().to_string();
    for (i, task) in tasks.iter_mut().enumerate() {
        for hook in &pre {
            if !in_scope(state, tenant, hook, task).await {
                continue;
            }
            match ask(state, tenant, hook, &submission, i, task).await {
                Verdict::Allow(None) => {}
                Verdict::Allow(Some(amend)) => {
                    if let Some(labels) = amend.labels {
                        task.labels.extend(labels);
                    }
                    if let Some(p) = amend.priority {
                        task.priority = p;
                    }
                }
                Verdict::Deny(reason) => {
                    state.hooks.metrics().denied();
                    return Err(ApiError::forbidden(format!(
                        "the pre-task hook '{}' refused tasks[{i}]: {reason}",
                        hook.name
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Whether a task falls in a hook's scope: its swarm, or its swarm's project.
async fn in_scope(state: &AppState, tenant: &str, hook: &Hook, task: &NewTask) -> bool {
    let Some(want) = &hook.scope_id else {
        return true;
    };
    let swarm = match (&task.swarm_id, &task.agent_id) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(a)) => state
            .store
            .get_agent(tenant, a)
            .await
            .ok()
            .flatten()
            .map(|a| a.swarm_id),
        (None, None) => None,
    };
    let Some(swarm) = swarm else { return false };
    match hook.scope.as_str() {
        "swarm" => swarm == *want,
        "project" => state
            .hooks
            .project_of(&state.store, tenant, &swarm)
            .await
            .is_some_and(|p| p == *want),
        _ => false,
    }
}

/// The task as a pre-task hook sees it.
fn task_json(i: usize, t: &NewTask) -> Value {
    json!({
        "index": i,
        "local_id": t.local_id,
        "swarm_id": t.swarm_id,
        "agent_id": t.agent_id,
        "spec": t.spec,
        "priority": t.priority,
        "labels": t.labels,
        "requires": t.requires,
        "depends_on": t.depends_on,
        "timeout_seconds": t.timeout_seconds,
        "max_attempts": t.max_attempts,
        "replicas": t.replicas,
        "quorum": t.quorum,
    })
}

async fn ask(
    state: &AppState,
    tenant: &str,
    hook: &Hook,
    submission: &str,
    i: usize,
    task: &NewTask,
) -> Verdict {
    let event_id = format!("pre-task-{submission}-{i}");
    let payload = json!({
        "id": event_id,
        "type": PRE_TASK,
        "tenant_id": tenant,
        "subject": task.local_id.clone().unwrap_or_else(|| format!("tasks[{i}]")),
        "data": {"task": task_json(i, task)},
        "at": now_ms(),
        "hook": {"id": hook.id, "name": hook.name},
    });
    let (outcome, on_error) = match Settings::of(&hook.config) {
        Ok(settings) => {
            let body = serde_json::to_vec(&payload).unwrap_or_default();
            let o = send::send(state, hook, &settings, &event_id, PRE_TASK, &body).await;
            (o, settings.on_error)
        }
        Err(e) => (
            send::Outcome {
                ok: false,
                status: None,
                error: Some(e),
                reply: Vec::new(),
                duration: std::time::Duration::ZERO,
            },
            OnError::Allow,
        ),
    };
    let answer = if outcome.ok {
        interpret(&outcome.reply)
    } else {
        Err(outcome.error.clone().unwrap_or_else(|| "failed".into()))
    };
    let (verdict, result) = match answer {
        Ok(v) => (
            v,
            SendResult::Delivered {
                status: outcome.status,
            },
        ),
        Err(error) => {
            let verdict = match on_error {
                OnError::Allow => Verdict::Allow(None),
                OnError::Deny => Verdict::Deny(format!(
                    "the hook failed ({error}) and its on_error is 'deny'"
                )),
            };
            let result = SendResult::Dead {
                status: outcome.status,
                error: format!("{error} (on_error: {})", spec_on_error(on_error)),
            };
            (verdict, result)
        }
    };
    state.hooks.metrics().outcome(&result);
    let new = NewDelivery {
        hook_id: hook.id.clone(),
        event_id,
        event_type: PRE_TASK.to_string(),
        payload,
    };
    if let Err(e) = state.store.hook_record(tenant, new, result).await {
        tracing::warn!(hook = %hook.id, error = %e, "hooks: cannot record a pre-task check");
    }
    verdict
}

fn spec_on_error(o: OnError) -> &'static str {
    match o {
        OnError::Allow => "allow",
        OnError::Deny => "deny",
    }
}

/// Reads a hook's answer; an answer that is not one of the documented forms is an error (and
/// then the hook's `on_error` decides).
fn interpret(reply: &[u8]) -> Result<Verdict, String> {
    let text = String::from_utf8_lossy(reply);
    let text = text.trim();
    if text.is_empty() {
        return Ok(Verdict::Allow(None));
    }
    // A command may print other lines first: its answer is its last line.
    let last = text.lines().last().unwrap_or(text).trim();
    let reply: Reply = serde_json::from_str(last).map_err(|e| {
        format!(
            "the answer is not {{\"decision\": \"allow\"|\"deny\", \"reason\"?, \"amend\"?}}: {e}"
        )
    })?;
    match reply.decision {
        Decision::Deny => Ok(Verdict::Deny(
            reply
                .reason
                .unwrap_or_else(|| "no reason given".to_string()),
        )),
        Decision::Allow => {
            if let Some(a) = &reply.amend {
                check_amend(a).map_err(|e| format!("the amendment is invalid: {e}"))?;
            }
            Ok(Verdict::Allow(reply.amend))
        }
    }
}

/// The same rules as the fields of a submitted task.
fn check_amend(a: &Amend) -> Result<(), ValidationError> {
    if let Some(p) = a.priority {
        cflow_core::task::priority(p)?;
    }
    if let Some(labels) = &a.labels {
        if labels.len() > cflow_core::validate::MAX_TAGS {
            return Err(ValidationError::new(
                "labels",
                format!("at most {} labels", cflow_core::validate::MAX_TAGS),
            ));
        }
        for (k, v) in labels {
            cflow_core::validate::name("labels", k)?;
            cflow_core::validate::name("labels", v)?;
        }
    }
    Ok(())
}
