//! Builds a `Response` from streamed pieces: text deltas appended in order, tool inputs
//! assembled from partial JSON strings and parsed only when their block is complete.

use serde_json::Value;

use crate::error::Result;
use crate::types::{Block, Event, Response, StopReason, Usage};

enum Partial {
    Text(String),
    Tool {
        id: String,
        name: String,
        json: String,
        done: Option<Value>,
    },
}

#[derive(Default)]
pub(crate) struct Assembler {
    blocks: Vec<Partial>,
    pub usage: Usage,
    pub stop: Option<StopReason>,
    pub model: String,
}

impl Assembler {
    pub fn start_text(&mut self) -> usize {
        self.blocks.push(Partial::Text(String::new()));
        self.blocks.len() - 1
    }

    pub fn start_tool(&mut self, id: String, name: String, out: &mut Vec<Event>) -> usize {
        out.push(Event::ToolUseStart {
            id: id.clone(),
            name: name.clone(),
        });
        self.blocks.push(Partial::Tool {
            id,
            name,
            json: String::new(),
            done: None,
        });
        self.blocks.len() - 1
    }

    pub fn push_text(&mut self, pos: usize, text: &str, out: &mut Vec<Event>) {
        if let Some(Partial::Text(t)) = self.blocks.get_mut(pos) {
            t.push_str(text);
            out.push(Event::TextDelta(text.to_string()));
        }
    }

    pub fn push_json(&mut self, pos: usize, piece: &str) {
        if let Some(Partial::Tool { json, .. }) = self.blocks.get_mut(pos) {
            json.push_str(piece);
        }
    }

    /// Parses a tool's assembled input. Empty input means a tool without arguments (`{}`).
    pub fn finish_tool(&mut self, pos: usize, out: &mut Vec<Event>) -> Result<()> {
        let Some(Partial::Tool {
            id,
            name,
            json,
            done,
        }) = self.blocks.get_mut(pos)
        else {
            return Ok(());
        };
        if done.is_some() {
            return Ok(());
        }
        let input = if json.trim().is_empty() {
            Value::Object(Default::default())
        } else {
            match serde_json::from_str::<Value>(json) {
                Ok(v) if v.is_object() => v,
                // Arguments that are not a JSON object are the model's mistake, which it can
                // correct: the call is kept, marked, for the caller to answer with an error.
                Ok(_) => invalid_input(format!("expected a JSON object, got {}", preview(json))),
                Err(e) => invalid_input(format!("{e} in {}", preview(json))),
            }
        };
        out.push(Event::ToolUseDone {
            id: id.clone(),
            name: name.clone(),
            input: input.clone(),
        });
        *done = Some(input);
        Ok(())
    }

    pub fn finish(mut self, out: &mut Vec<Event>) -> Result<Response> {
        for pos in 0..self.blocks.len() {
            self.finish_tool(pos, out)?;
        }
        out.push(Event::Usage(self.usage));
        let content = self
            .blocks
            .into_iter()
            .filter_map(|b| match b {
                Partial::Text(text) if text.is_empty() => None,
                Partial::Text(text) => Some(Block::Text { text }),
                Partial::Tool { id, name, done, .. } => Some(Block::ToolUse {
                    id,
                    name,
                    input: done.unwrap_or_default(),
                }),
            })
            .collect();
        Ok(Response {
            content,
            stop_reason: self
                .stop
                .unwrap_or_else(|| StopReason::Other("none".into())),
            usage: self.usage,
            model: self.model,
        })
    }
}

/// The start of a possibly long string, for error messages.
/// The key of a tool call's input whose arguments did not parse: `{"_invalid_input": {"error":
/// "..."}}` stands for the arguments, so the conversation stays valid on the wire and the
/// caller can tell the model what was wrong (see [`crate::invalid_tool_input`]).
pub const INVALID_INPUT_KEY: &str = "_invalid_input";

fn invalid_input(error: String) -> Value {
    serde_json::json!({ INVALID_INPUT_KEY: { "error": error } })
}

/// When a tool call's arguments were not a JSON object: why (the parse error and the start of
/// what the model sent). Answer such a call with an error result instead of running it.
pub fn invalid_tool_input(input: &Value) -> Option<&str> {
    let obj = input.as_object()?;
    if obj.len() != 1 {
        return None;
    }
    obj.get(INVALID_INPUT_KEY)?.get("error")?.as_str()
}

pub(crate) fn preview(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return format!("{s:?}");
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &s[..end], s.len())
}
