//! The definitions (descriptions and JSON schemas) of the server-side tools a model loop is
//! offered when its job has a host; the server runs them (`HostCall::Tool`) and enforces the
//! swarm's topology.

use crate::host::SERVER_TOOLS;
use cflow_llm::ToolDef;
use serde_json::{Value, json};

/// The server-side tools' definitions, in [`SERVER_TOOLS`] order.
pub(crate) fn server_tool_defs() -> Vec<ToolDef> {
    let def = |name: &str, description: &str, schema: Value| ToolDef {
        name: name.to_string(),
        description: description.to_string(),
        input_schema: schema,
    };
    let namespace = json!({"type": "string", "description":
        "The memory namespace (default: the swarm's shared namespace)."});
    let defs = vec![
        def(
            "memory_get",
            "Reads one entry of the swarm's shared memory by key. Returns the value with its \
             version, or an error when there is no such key.",
            json!({"type": "object", "properties": {
                "key": {"type": "string", "description": "The entry's key, e.g. plan/api."},
                "namespace": namespace,
            }, "required": ["key"]}),
        ),
        def(
            "memory_put",
            "Writes an entry of the swarm's shared memory (creates it or replaces its value), so \
             that other agents and later tasks can read it.",
            json!({"type": "object", "properties": {
                "key": {"type": "string", "description": "The entry's key, e.g. design/storage."},
                "value": {"description": "The value: any JSON (a string, a number, an object...)."},
                "namespace": namespace,
                "ttl_secs": {"type": "integer", "minimum": 1,
                             "description": "Delete the entry after this many seconds (default: keep)."},
            }, "required": ["key", "value"]}),
        ),
        def(
            "memory_search",
            "Searches the swarm's shared memory by words in keys and values; returns the best \
             matching entries.",
            json!({"type": "object", "properties": {
                "query": {"type": "string", "description": "Words to look for."},
                "namespace": namespace,
                "limit": {"type": "integer", "minimum": 1, "maximum": 100,
                          "description": "The most entries returned (default 10)."},
            }, "required": ["query"]}),
        ),
        def(
            "send_message",
            "Sends a message to another agent of the swarm (one of your peers). The swarm's \
             topology decides whom you may address; a refusal says why.",
            json!({"type": "object", "properties": {
                "to_agent_id": {"type": "string", "description": "The peer's agent id."},
                "body": {"description": "The message: a string or a JSON object."},
            }, "required": ["to_agent_id", "body"]}),
        ),
        def(
            "delegate_task",
            "Creates a task for another agent of the swarm and returns its task id. A task \
             receives the results of the tasks it depends on as inputs when it starts.",
            json!({"type": "object", "properties": {
                "prompt": {"type": "string",
                           "description": "What the task must do: goal, context, constraints, expected result."},
                "agent_type": {"type": "string",
                               "description": "The agent type or capability to route the task to (coder, tester, reviewer, ...)."},
                "priority": {"type": "integer", "minimum": 0, "maximum": 100,
                             "description": "Higher runs first (default 50)."},
                "depends_on": {"type": "array", "items": {"type": "string"},
                               "description": "Ids of tasks that must finish first; their results become this task's inputs."},
            }, "required": ["prompt"]}),
        ),
    ];
    debug_assert!(defs.iter().map(|d| d.name.as_str()).eq(SERVER_TOOLS));
    defs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_tools_follow_the_host_list() {
        let names: Vec<String> = server_tool_defs().into_iter().map(|d| d.name).collect();
        assert_eq!(names, SERVER_TOOLS);
    }
}
