//! MCP resources: a task's captured logs and its artifacts, read through the same [`Api`] (and so
//! the same RBAC and tenancy) as the tools.
//!
//! - `cflow://tasks/{task_id}/logs`: the last 64 KiB of each attempt's stdout and stderr (JSON).
//! - `cflow://tasks/{task_id}/artifacts/{sha256}`: one artifact (patch, file or log): text when
//!   it is UTF-8, else base64.
//!
//! `resources/list` lists the logs of the most recent tasks (paged with the task list's cursor);
//! a task's artifacts are listed by `task_result`, with their resource URIs.

use crate::{Api, ApiFailure, ApiRequest};
use base64::Engine as _;
use cflow_core::Action;
use rmcp::ErrorData;
use rmcp::model::{
    ListResourceTemplatesResult, ListResourcesResult, ReadResourceResult, Resource,
    ResourceContents, ResourceTemplate,
};
use serde_json::Value;

const SCHEME: &str = "cflow://tasks/";
/// Tasks per `resources/list` page.
const LIST_PAGE: u32 = 50;

pub fn logs_uri(task_id: &str) -> String {
    format!("{SCHEME}{task_id}/logs")
}

pub fn artifact_uri(task_id: &str, sha256: &str) -> String {
    format!("{SCHEME}{task_id}/artifacts/{sha256}")
}

pub fn templates() -> ListResourceTemplatesResult {
    ListResourceTemplatesResult::with_all_items(vec![
        ResourceTemplate::new("cflow://tasks/{task_id}/logs", "task-logs")
            .with_title("A task's logs")
            .with_description(
                "The captured output (last 64 KiB of stdout and stderr) of every attempt of a task.",
            )
            .with_mime_type("application/json"),
        ResourceTemplate::new("cflow://tasks/{task_id}/artifacts/{sha256}", "task-artifact")
            .with_title("A task's artifact")
            .with_description(
                "One artifact a task produced (the diff as a patch, a collected file, a log), by \
                 its SHA-256; task_result lists a task's artifacts with these URIs.",
            ),
    ])
}

/// What a resource URI names.
#[derive(Debug, PartialEq)]
enum Target<'a> {
    Logs(&'a str),
    Artifact(&'a str, &'a str),
}

fn parse(uri: &str) -> Option<Target<'_>> {
    let rest = uri.strip_prefix(SCHEME)?;
    let parts: Vec<&str> = rest.split('/').collect();
    let plain = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    };
    match parts.as_slice() {
        [id, "logs"] if plain(id) => Some(Target::Logs(id)),
        [id, "artifacts", sha] if plain(id) && plain(sha) => Some(Target::Artifact(id, sha)),
        _ => None,
    }
}

fn refused(uri: &str, f: ApiFailure) -> ErrorData {
    match f.status {
        Some(404) => ErrorData::resource_not_found(
            format!("{uri}: {} — list tasks with task_list", f.message),
            None,
        ),
        Some(400..=499) => ErrorData::invalid_request(format!("{uri}: {}", f.message), None),
        _ => ErrorData::internal_error(format!("{uri}: {}", f.message), None),
    }
}

pub async fn list<A: Api>(
    api: &A,
    cursor: Option<String>,
) -> Result<ListResourcesResult, ErrorData> {
    let req = ApiRequest::get(&["tasks"], Action::TaskRead)
        .query("limit", Some(LIST_PAGE))
        .query("cursor", cursor);
    let page = api
        .send(req)
        .await
        .map_err(|f| refused("resources/list", f))?;
    let resources = page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let id = t["id"].as_str()?;
            let state = t["state"].as_str().unwrap_or("?");
            Some(
                Resource::new(logs_uri(id), format!("task {id} logs"))
                    .with_description(format!("Logs of task {id} ({state})"))
                    .with_mime_type("application/json"),
            )
        })
        .collect();
    let mut out = ListResourcesResult::with_all_items(resources);
    out.next_cursor = page["next_cursor"].as_str().map(str::to_string);
    Ok(out)
}

pub async fn read<A: Api>(api: &A, uri: &str) -> Result<ReadResourceResult, ErrorData> {
    let Some(target) = parse(uri) else {
        return Err(ErrorData::resource_not_found(
            format!(
                "{uri} is not a cflow resource: use cflow://tasks/{{task_id}}/logs or \
                 cflow://tasks/{{task_id}}/artifacts/{{sha256}}"
            ),
            None,
        ));
    };
    match target {
        Target::Logs(id) => {
            let logs = api
                .send(ApiRequest::get(&["tasks", id, "logs"], Action::TaskRead))
                .await
                .map_err(|f| refused(uri, f))?;
            let text = serde_json::to_string_pretty(&logs).unwrap_or_default();
            Ok(ReadResourceResult::new(vec![
                ResourceContents::text(text, uri).with_mime_type("application/json"),
            ]))
        }
        Target::Artifact(id, sha) => {
            let list = api
                .send(ApiRequest::get(
                    &["tasks", id, "artifacts"],
                    Action::TaskRead,
                ))
                .await
                .map_err(|f| refused(uri, f))?;
            let kind = list["artifacts"]
                .as_array()
                .into_iter()
                .flatten()
                .rev()
                .find(|a| a["sha256"] == sha)
                .map(|a| a["kind"].as_str().unwrap_or("file").to_string());
            let raw = api
                .fetch(ApiRequest::get(
                    &["tasks", id, "artifacts", sha],
                    Action::TaskRead,
                ))
                .await
                .map_err(|f| refused(uri, f))?;
            Ok(ReadResourceResult::new(vec![contents(
                uri,
                kind.as_deref(),
                raw.body,
            )]))
        }
    }
}

/// Text with a MIME type from the artifact's kind when the bytes are UTF-8, else a blob.
fn contents(uri: &str, kind: Option<&str>, body: Vec<u8>) -> ResourceContents {
    match String::from_utf8(body) {
        Ok(text) => {
            let mime = match kind {
                Some("patch") => "text/x-diff",
                _ => "text/plain",
            };
            ResourceContents::text(text, uri).with_mime_type(mime)
        }
        Err(e) => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(e.into_bytes());
            ResourceContents::blob(b64, uri).with_mime_type("application/octet-stream")
        }
    }
}

/// The artifacts of a task with their resource URIs (for `task_result`), or `None` when they
/// cannot be listed (the caller may lack the right: the result is still useful without them).
pub async fn artifacts_of<A: Api>(api: &A, task_id: &str) -> Option<Value> {
    let list = api
        .send(ApiRequest::get(
            &["tasks", task_id, "artifacts"],
            Action::TaskRead,
        ))
        .await
        .ok()?;
    let items: Vec<Value> = list["artifacts"]
        .as_array()?
        .iter()
        .map(|a| {
            serde_json::json!({
                "name": a["name"],
                "kind": a["kind"],
                "size": a["size"],
                "attempt": a["attempt"],
                "uri": artifact_uri(task_id, a["sha256"].as_str().unwrap_or_default()),
            })
        })
        .collect();
    Some(Value::Array(items))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_and_refuse_anything_else() {
        assert_eq!(parse("cflow://tasks/t1/logs"), Some(Target::Logs("t1")));
        assert_eq!(
            parse("cflow://tasks/t-1/artifacts/ab12"),
            Some(Target::Artifact("t-1", "ab12"))
        );
        for bad in [
            "cflow://tasks//logs",
            "cflow://tasks/t1/logs/x",
            "cflow://tasks/../logs",
            "cflow://tasks/t1/artifacts/a%2F",
            "file:///etc/passwd",
            "cflow://tasks/t1/other",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_eq!(logs_uri("t1"), "cflow://tasks/t1/logs");
    }

    #[test]
    fn binary_artifacts_are_blobs_and_text_keeps_its_kind() {
        match contents("u", Some("patch"), b"diff --git".to_vec()) {
            ResourceContents::TextResourceContents { mime_type, .. } => {
                assert_eq!(mime_type.as_deref(), Some("text/x-diff"))
            }
            other => panic!("{other:?}"),
        }
        match contents("u", Some("file"), vec![0xff, 0x00]) {
            ResourceContents::BlobResourceContents { blob, .. } => assert_eq!(blob, "/wA="),
            other => panic!("{other:?}"),
        }
    }
}
