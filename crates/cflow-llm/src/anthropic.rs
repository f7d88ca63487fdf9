//! The Anthropic Messages wire format: request body and streaming-event decoder.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::assemble::Assembler;
use crate::error::{LlmError, Result};
use crate::sse::SseEvent;
use crate::types::{Block, Event, Request, Response, Role, StopReason};

pub(crate) const VERSION: &str = "2023-06-01";

/// The request body. Prompt caching: the last system block and the last tool definition carry
/// `cache_control: ephemeral`, so the stable prefix (tools, then system) is cached across turns.
pub(crate) fn body(req: &Request, model: &str) -> Value {
    let mut body = json!({
        "model": model,
        "max_tokens": req.max_tokens,
        "stream": true,
        "messages": req.messages.iter().map(message).collect::<Vec<_>>(),
    });
    if !req.system.is_empty() {
        body["system"] = json!([{
            "type": "text",
            "text": req.system,
            "cache_control": {"type": "ephemeral"},
        }]);
    }
    if !req.tools.is_empty() {
        let mut tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.input_schema}))
            .collect();
        if let Some(last) = tools.last_mut() {
            last["cache_control"] = json!({"type": "ephemeral"});
        }
        body["tools"] = Value::Array(tools);
    }
    if let Some(t) = req.temperature {
        body["temperature"] = json!(t);
    }
    body
}

fn message(m: &crate::types::Message) -> Value {
    let role = match m.role {
        Role::User => "user",
        Role::Assistant => "assistant",
    };
    let content: Vec<Value> = m
        .content
        .iter()
        .map(|b| match b {
            Block::Text { text } => json!({"type": "text", "text": text}),
            Block::ToolUse { id, name, input } => json!({"type": "tool_use", "id": id, "name": name, "input": input}),
            Block::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => json!({"type": "tool_result", "tool_use_id": tool_use_id, "content": content, "is_error": is_error}),
        })
        .collect();
    json!({"role": role, "content": content})
}

/// Maps an Anthropic error object (`{"type":"overloaded_error","message":…}`) to an error.
pub(crate) fn error_from(err: &Value) -> LlmError {
    let kind = err["type"].as_str().unwrap_or("");
    let msg = err["message"].as_str().unwrap_or("no message").to_string();
    match kind {
        "overloaded_error" => LlmError::Overloaded { retry_after: None },
        "rate_limit_error" => LlmError::RateLimited { retry_after: None },
        "api_error" => LlmError::Server {
            status: 500,
            body: msg,
        },
        "authentication_error" | "permission_error" => LlmError::Auth(msg),
        "invalid_request_error" | "not_found_error" | "request_too_large" => {
            LlmError::BadRequest(msg)
        }
        _ => LlmError::Stream(format!("provider sent error {kind}: {msg}")),
    }
}

#[derive(Default)]
pub(crate) struct Decoder {
    asm: Assembler,
    /// Wire block index → position in the assembler.
    index: HashMap<u64, usize>,
    pub done: bool,
}

impl Decoder {
    pub fn event(&mut self, ev: &SseEvent, out: &mut Vec<Event>) -> Result<()> {
        let v: Value = serde_json::from_str(&ev.data).map_err(|e| {
            LlmError::Stream(format!(
                "event is not JSON ({e}): {}",
                crate::assemble::preview(&ev.data)
            ))
        })?;
        let ty = v["type"].as_str().or(ev.event.as_deref()).unwrap_or("");
        match ty {
            "message_start" => {
                let m = &v["message"];
                self.asm.model = m["model"].as_str().unwrap_or_default().to_string();
                self.usage(&m["usage"]);
            }
            "content_block_start" => {
                let idx = v["index"].as_u64().unwrap_or(0);
                let block = &v["content_block"];
                let pos = match block["type"].as_str() {
                    Some("text") => {
                        let pos = self.asm.start_text();
                        if let Some(t) = block["text"].as_str().filter(|t| !t.is_empty()) {
                            self.asm.push_text(pos, t, out);
                        }
                        pos
                    }
                    Some("tool_use") => {
                        let id = block["id"].as_str().unwrap_or_default().to_string();
                        let name = block["name"].as_str().unwrap_or_default().to_string();
                        self.asm.start_tool(id, name, out)
                    }
                    // Thinking and other block kinds are not part of the neutral model.
                    _ => return Ok(()),
                };
                self.index.insert(idx, pos);
            }
            "content_block_delta" => {
                let Some(&pos) = v["index"].as_u64().and_then(|i| self.index.get(&i)) else {
                    return Ok(());
                };
                let d = &v["delta"];
                match d["type"].as_str() {
                    Some("text_delta") => {
                        self.asm
                            .push_text(pos, d["text"].as_str().unwrap_or(""), out)
                    }
                    Some("input_json_delta") => self
                        .asm
                        .push_json(pos, d["partial_json"].as_str().unwrap_or("")),
                    _ => {}
                }
            }
            "content_block_stop" => {
                if let Some(&pos) = v["index"].as_u64().and_then(|i| self.index.get(&i)) {
                    self.asm.finish_tool(pos, out)?;
                }
            }
            "message_delta" => {
                if let Some(r) = v["delta"]["stop_reason"].as_str() {
                    self.asm.stop = Some(match r {
                        "end_turn" | "stop_sequence" => StopReason::EndTurn,
                        "tool_use" => StopReason::ToolUse,
                        "max_tokens" => StopReason::MaxTokens,
                        other => StopReason::Other(other.to_string()),
                    });
                }
                self.usage(&v["usage"]);
            }
            "message_stop" => self.done = true,
            "error" => return Err(error_from(&v["error"])),
            _ => {} // ping and future event types
        }
        Ok(())
    }

    /// Usage numbers are cumulative: a later event replaces what an earlier one said.
    fn usage(&mut self, u: &Value) {
        let u64_of = |k: &str| u[k].as_u64();
        if let Some(n) = u64_of("input_tokens") {
            self.asm.usage.input_tokens = n;
        }
        if let Some(n) = u64_of("output_tokens") {
            self.asm.usage.output_tokens = n;
        }
        if let Some(n) = u64_of("cache_read_input_tokens") {
            self.asm.usage.cache_read_tokens = n;
        }
        if let Some(n) = u64_of("cache_creation_input_tokens") {
            self.asm.usage.cache_write_tokens = n;
        }
    }

    pub fn finish(self, out: &mut Vec<Event>) -> Result<Response> {
        if !self.done {
            return Err(LlmError::Stream(
                "the stream ended before message_stop (connection closed mid-response); retry the request".into(),
            ));
        }
        self.asm.finish(out)
    }
}
