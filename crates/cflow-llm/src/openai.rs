//! The OpenAI chat-completions wire format (also Azure OpenAI, OpenRouter, Ollama, vLLM,
//! LM Studio): request body and streaming-chunk decoder.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::assemble::Assembler;
use crate::error::{LlmError, Result};
use crate::sse::SseEvent;
use crate::types::{Block, Event, Request, Response, Role, StopReason};

/// The request body. `max_tokens` rather than `max_completion_tokens`, because every
/// OpenAI-compatible server accepts it; usage is requested in a final chunk.
pub(crate) fn body(req: &Request, model: &str) -> Value {
    let mut messages = Vec::new();
    if !req.system.is_empty() {
        messages.push(json!({"role": "system", "content": req.system}));
    }
    for m in &req.messages {
        push_message(m, &mut messages);
    }
    let mut body = json!({
        "model": model,
        "messages": messages,
        "max_tokens": req.max_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.input_schema,
                }})
            })
            .collect();
    }
    if let Some(t) = req.temperature {
        body["temperature"] = json!(t);
    }
    body
}

/// One neutral message may become several chat messages: each tool result is a `tool`
/// message of its own, and an assistant's tool calls ride on one assistant message.
fn push_message(m: &crate::types::Message, out: &mut Vec<Value>) {
    let text: String = m
        .content
        .iter()
        .filter_map(|b| match b {
            Block::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n");
    match m.role {
        Role::Assistant => {
            let calls: Vec<Value> = m
                .content
                .iter()
                .filter_map(|b| match b {
                    Block::ToolUse { id, name, input } => Some(json!({
                        "id": id, "type": "function",
                        "function": {"name": name, "arguments": input.to_string()},
                    })),
                    _ => None,
                })
                .collect();
            let mut msg = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { json!(text) }});
            if !calls.is_empty() {
                msg["tool_calls"] = Value::Array(calls);
            }
            out.push(msg);
        }
        Role::User => {
            for b in &m.content {
                if let Block::ToolResult {
                    tool_use_id,
                    content,
                    is_error,
                } = b
                {
                    // Chat completions have no error flag on tool results; say it in the content.
                    let content = if *is_error {
                        format!("[tool error] {content}")
                    } else {
                        content.clone()
                    };
                    out.push(
                        json!({"role": "tool", "tool_call_id": tool_use_id, "content": content}),
                    );
                }
            }
            if !text.is_empty() {
                out.push(json!({"role": "user", "content": text}));
            }
        }
    }
}

/// Maps an OpenAI-style error object (`{"message":…, "type":…, "code":…}`) met in a stream.
pub(crate) fn error_from(err: &Value) -> LlmError {
    let msg = err["message"].as_str().unwrap_or("no message").to_string();
    let kind = err["type"].as_str().or(err["code"].as_str()).unwrap_or("");
    match kind {
        k if k.contains("overloaded") || k == "server_is_overloaded" => {
            LlmError::Overloaded { retry_after: None }
        }
        k if k.contains("rate_limit") => LlmError::RateLimited { retry_after: None },
        "server_error" | "internal_error" => LlmError::Server {
            status: 500,
            body: msg,
        },
        _ => LlmError::Stream(format!("provider sent error {kind}: {msg}")),
    }
}

#[derive(Default)]
pub(crate) struct Decoder {
    asm: Assembler,
    text: Option<usize>,
    /// Wire tool-call index → position in the assembler.
    tools: BTreeMap<u64, usize>,
    pub done: bool,
}

impl Decoder {
    pub fn event(&mut self, ev: &SseEvent, out: &mut Vec<Event>) -> Result<()> {
        let data = ev.data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let v: Value = serde_json::from_str(data).map_err(|e| {
            LlmError::Stream(format!(
                "chunk is not JSON ({e}): {}",
                crate::assemble::preview(data)
            ))
        })?;
        if v.get("error").is_some_and(|e| !e.is_null()) {
            return Err(error_from(&v["error"]));
        }
        if let Some(m) = v["model"].as_str().filter(|m| !m.is_empty()) {
            self.asm.model = m.to_string();
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            let prompt = u["prompt_tokens"].as_u64().unwrap_or(0);
            let cached = u["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap_or(0);
            self.asm.usage.input_tokens = prompt.saturating_sub(cached);
            self.asm.usage.cache_read_tokens = cached;
            self.asm.usage.output_tokens = u["completion_tokens"].as_u64().unwrap_or(0);
        }
        let Some(choice) = v["choices"].get(0) else {
            return Ok(());
        };
        let delta = &choice["delta"];
        if let Some(t) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            let pos = match self.text {
                Some(p) => p,
                None => *self.text.insert(self.asm.start_text()),
            };
            self.asm.push_text(pos, t, out);
        }
        if let Some(calls) = delta["tool_calls"].as_array() {
            for (i, call) in calls.iter().enumerate() {
                let idx = call["index"].as_u64().unwrap_or(i as u64);
                let pos = match self.tools.get(&idx) {
                    Some(&p) => p,
                    None => {
                        let id = call["id"].as_str().unwrap_or_default().to_string();
                        let name = call["function"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string();
                        let p = self.asm.start_tool(id, name, out);
                        self.tools.insert(idx, p);
                        p
                    }
                };
                if let Some(args) = call["function"]["arguments"].as_str() {
                    self.asm.push_json(pos, args);
                }
            }
        }
        if let Some(r) = choice["finish_reason"].as_str() {
            self.asm.stop = Some(match r {
                "stop" => StopReason::EndTurn,
                "tool_calls" | "function_call" => StopReason::ToolUse,
                "length" => StopReason::MaxTokens,
                other => StopReason::Other(other.to_string()),
            });
            for &pos in self.tools.values() {
                self.asm.finish_tool(pos, out)?;
            }
        }
        Ok(())
    }

    pub fn finish(self, out: &mut Vec<Event>) -> Result<Response> {
        if !self.done {
            return Err(LlmError::Stream(
                "the stream ended before data: [DONE] (connection closed mid-response); retry the request".into(),
            ));
        }
        self.asm.finish(out)
    }
}
