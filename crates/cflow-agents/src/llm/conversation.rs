//! One attempt's conversation: the turns of the loop (budget check, streamed model call,
//! usage, tool calls in order), the events it streams, and the outcome and transcript it ends
//! with.

use super::providers::{Link, failover};
use super::server_tools::server_tool_defs;
use super::{LlmDriver, refusal};
use crate::driver::{
    Captured, DriverError, Isolation, Job, JobEnd, JobEvent, JobOutcome, ModelUsage, TAIL_BYTES,
};
use crate::host::{HostCall, HostError, HostHandle, Tokens};
use crate::model::{LlmSpec, ModelSetup};
use crate::tools::{TOOL_OUTPUT_CAP, ToolOutput, Toolbox};
use cflow_llm::{Answer, Block, Event, Message, Request, Role, StopReason, ToolDef, Usage};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a stopped loop still waits for the server to record a call's usage.
const USAGE_GRACE: Duration = Duration::from_secs(1);
/// The most bytes of text held before an `assistant_text` event is sent anyway.
const TEXT_FLUSH_BYTES: usize = 1024;
/// The most bytes of a tool's result that a `tool_result` event carries (the model gets up to
/// [`TOOL_OUTPUT_CAP`]).
const EVENT_RESULT_CAP: usize = 4096;

/// Awaits a host call unless `stop` fires first (`None`).
pub(super) async fn guarded<T>(stop: &CancellationToken, f: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        biased;
        _ = stop.cancelled() => None,
        r = f => Some(r),
    }
}

/// The job's event channel; a closed receiver is remembered and ignored.
pub(super) struct Emitter {
    pub(super) tx: mpsc::Sender<JobEvent>,
    pub(super) open: bool,
}

impl Emitter {
    async fn send(&mut self, kind: &str, data: Value) {
        if self.open {
            let ev = JobEvent::Agent {
                kind: kind.to_string(),
                data,
            };
            self.open = self.tx.send(ev).await.is_ok();
        }
    }
}

/// How a conversation ended.
pub(super) enum LoopEnd {
    /// The model's final answer.
    Answer(String),
    /// The attempt failed with this message (turns, tokens, a provider error, a stop reason).
    Failed(String),
    /// A budget is spent: fail without retry.
    Refused(String),
    /// Cancelled or timed out.
    Stopped,
    /// The attempt is no longer this worker's.
    Lost(String),
}

/// Per-turn facts kept for the transcript.
struct TurnMeta {
    provider: String,
    model: String,
    usage: Usage,
    stop_reason: StopReason,
}

/// One attempt's conversation and its accounting.
pub(super) struct Conversation<'a> {
    driver: &'a LlmDriver,
    job: &'a Job,
    spec: &'a LlmSpec,
    host: Option<&'a HostHandle>,
    chain: &'a [Link],
    stop: &'a CancellationToken,
    /// The request: its messages are the conversation, appended in place.
    req: Request,
    /// The offered tool names: worker-side, then server-side.
    local: Vec<String>,
    server: Vec<String>,
    turns: u32,
    usage: Usage,
    by_model: Vec<ModelUsage>,
    meta: Vec<TurnMeta>,
    /// What the last usage record's answer said of the budgets: `Some(None)` they allow more,
    /// `Some(Some(why))` they are spent; `None` unknown (ask before the next call).
    budget_known: Option<Option<String>>,
    unrecorded: u32,
    notes: Vec<String>,
}

impl<'a> Conversation<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        driver: &'a LlmDriver,
        job: &'a Job,
        spec: &'a LlmSpec,
        setup: &ModelSetup,
        toolbox: &dyn Toolbox,
        host: Option<&'a HostHandle>,
        chain: &'a [Link],
        stop: &'a CancellationToken,
    ) -> Self {
        let allowed = |name: &str| {
            spec.allowed_tools.is_empty() || spec.allowed_tools.iter().any(|a| a == name)
        };
        let mut tools: Vec<ToolDef> = toolbox
            .defs()
            .into_iter()
            .filter(|d| allowed(&d.name))
            .collect();
        let local: Vec<String> = tools.iter().map(|d| d.name.clone()).collect();
        let mut server = Vec::new();
        if host.is_some() {
            for d in server_tool_defs() {
                if allowed(&d.name) {
                    server.push(d.name.clone());
                    tools.push(d);
                }
            }
        }
        let mut notes = Vec::new();
        let unknown: Vec<&str> = spec
            .allowed_tools
            .iter()
            .map(String::as_str)
            .filter(|a| !local.iter().chain(&server).any(|n| n == a))
            .collect();
        if !unknown.is_empty() {
            notes.push(format!(
                "allowed_tools names tools this run does not have: {}",
                unknown.join(", ")
            ));
        }
        let names: Vec<&str> = tools.iter().map(|d| d.name.as_str()).collect();
        let system = crate::prompts::system_prompt(setup, &names);
        let req = Request {
            model: String::new(),
            system,
            messages: vec![Message::user(first_message(spec, driver.config.input_cap))],
            tools,
            max_tokens: driver.config.max_tokens_per_call,
            temperature: None,
        };
        Self {
            driver,
            job,
            spec,
            host,
            chain,
            stop,
            req,
            local,
            server,
            turns: 0,
            usage: Usage::default(),
            by_model: Vec::new(),
            meta: Vec::new(),
            unrecorded: 0,
            budget_known: None,
            notes,
        }
    }

    /// Notes from before the conversation (setup), put first; all are sent when it starts.
    pub(super) fn prepend_notes(&mut self, mut notes: Vec<String>) {
        notes.append(&mut self.notes);
        self.notes = notes;
    }

    /// Keeps a note for the result and tells the event stream.
    async fn note(&mut self, emit: &mut Emitter, note: String) {
        emit.send("notice", json!({ "message": note })).await;
        self.notes.push(note);
    }

    pub(super) async fn run(&mut self, emit: &mut Emitter, toolbox: &dyn Toolbox) -> LoopEnd {
        for n in self.notes.clone() {
            emit.send("notice", json!({ "message": n })).await;
        }
        let config = &self.driver.config;
        let max_turns = self.spec.max_turns.unwrap_or(config.max_turns);
        // Text of answers cut at the per-call output limit, continued in the next turn.
        let mut pending = String::new();
        loop {
            if self.stop.is_cancelled() {
                return LoopEnd::Stopped;
            }
            if self.turns >= max_turns {
                return LoopEnd::Failed(format!(
                    "the model used all {max_turns} turns (max_turns) without a final answer — \
                     raise the task's max_turns or narrow its prompt"
                ));
            }
            let left = self
                .spec
                .max_tokens
                .map(|max| max.saturating_sub(self.usage.output_tokens));
            if let Some(0) = left {
                return self.tokens_spent();
            }
            self.req.max_tokens = left
                .map_or(config.max_tokens_per_call, |l| {
                    l.min(u64::from(config.max_tokens_per_call)) as u32
                })
                .max(1);
            if let Some(end) = self.check_budget().await {
                return end;
            }
            self.turns += 1;
            let answer = match self.call_model(emit).await {
                Ok(a) => a,
                Err(None) => return LoopEnd::Stopped,
                Err(Some(message)) => return LoopEnd::Failed(message),
            };
            if let Some(end) = self.account(emit, &answer).await {
                return end;
            }
            let Answer { response, .. } = answer;
            let stop_reason = response.stop_reason;
            let has_calls = response
                .content
                .iter()
                .any(|b| matches!(b, Block::ToolUse { .. }));
            self.req.messages.push(Message {
                role: Role::Assistant,
                content: response.content,
            });
            if !has_calls {
                let text = last_text(&self.req.messages);
                match stop_reason {
                    StopReason::EndTurn => {
                        pending.push_str(&text);
                        return LoopEnd::Answer(pending);
                    }
                    StopReason::MaxTokens => {
                        if self
                            .spec
                            .max_tokens
                            .is_some_and(|m| self.usage.output_tokens >= m)
                        {
                            return self.tokens_spent();
                        }
                        pending.push_str(&text);
                        self.req.messages.push(Message::user(
                            "Your reply was cut off at the output limit. Continue exactly where \
                             it stopped, without repeating anything.",
                        ));
                        continue;
                    }
                    other => {
                        return LoopEnd::Failed(format!(
                            "the model stopped without a final answer (stop reason: {other:?})"
                        ));
                    }
                }
            }
            pending.clear();
            match self.run_tools(emit, toolbox).await {
                Ok(results) => self.req.messages.push(Message {
                    role: Role::User,
                    content: results,
                }),
                Err(end) => return end,
            }
        }
    }

    fn tokens_spent(&self) -> LoopEnd {
        LoopEnd::Failed(format!(
            "the model used {} output tokens, reaching the task's max_tokens ({}), without a \
             final answer — raise max_tokens or narrow the prompt",
            self.usage.output_tokens,
            self.spec.max_tokens.unwrap_or(0)
        ))
    }

    /// Asks the host whether budgets allow another call; `Some` ends the loop. The answer to the
    /// last call's usage record, when it carried the budgets' state, stands in for asking.
    async fn check_budget(&mut self) -> Option<LoopEnd> {
        let host = self.host?;
        if let Some(known) = self.budget_known.take() {
            return known.map(LoopEnd::Refused);
        }
        let mut waits = [1u64, 2, 4].into_iter();
        loop {
            match guarded(self.stop, host.call(HostCall::CheckBudget)).await {
                None => return Some(LoopEnd::Stopped),
                Some(Ok(_)) => return None,
                Some(Err(HostError::Refused(m))) => return Some(LoopEnd::Refused(m)),
                Some(Err(HostError::Lost(m))) => return Some(LoopEnd::Lost(m)),
                Some(Err(HostError::Unavailable(m))) => {
                    let Some(secs) = waits.next() else {
                        return Some(LoopEnd::Failed(format!(
                            "cannot check the budget before a model call: the server is \
                             unavailable ({m}); the attempt will be retried"
                        )));
                    };
                    let wait = tokio::time::sleep(Duration::from_secs(secs));
                    if guarded(self.stop, wait).await.is_none() {
                        return Some(LoopEnd::Stopped);
                    }
                }
            }
        }
    }

    /// One model call over the provider chain, streaming to `emit`. `Err(None)`: stopped.
    async fn call_model(&mut self, emit: &mut Emitter) -> Result<Answer, Option<String>> {
        let (tx, rx) = mpsc::channel::<Event>(64);
        let chain = self.chain;
        let req = &self.req;
        let stop = self.stop;
        let call = async move {
            let tx = tx;
            failover(chain, req, &tx, stop).await
        };
        let turn = self.turns;
        let flush = self.driver.config.text_flush;
        let (result, ()) = tokio::join!(call, forward(rx, emit, turn, flush));
        result
    }

    /// Records one call's usage: in the tally, and with the host (a failure is logged and
    /// kept in the result). `Some` ends the loop (the attempt was lost or stopped).
    async fn account(&mut self, emit: &mut Emitter, answer: &Answer) -> Option<LoopEnd> {
        let r = &answer.response;
        // The model the provider says answered; else the one asked for.
        let model = if r.model.is_empty() {
            self.chain
                .iter()
                .find(|l| l.name == answer.provider)
                .map(|l| l.model.clone())
                .unwrap_or_default()
        } else {
            r.model.clone()
        };
        let u = r.usage;
        self.usage.add(&u);
        match self
            .by_model
            .iter_mut()
            .find(|m| m.provider == answer.provider && m.model == model)
        {
            Some(m) => {
                m.input_tokens += u.input_tokens;
                m.output_tokens += u.output_tokens;
                m.cache_read_tokens += u.cache_read_tokens;
                m.cache_write_tokens += u.cache_write_tokens;
            }
            None => self.by_model.push(ModelUsage {
                provider: answer.provider.clone(),
                model: model.clone(),
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                cache_read_tokens: u.cache_read_tokens,
                cache_write_tokens: u.cache_write_tokens,
                reported_cost_usd: None,
            }),
        }
        self.meta.push(TurnMeta {
            provider: answer.provider.clone(),
            model: model.clone(),
            usage: u,
            stop_reason: r.stop_reason.clone(),
        });
        let host = self.host?;
        let call = HostCall::Usage {
            provider: answer.provider.clone(),
            model,
            tokens: Tokens {
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                cache_read_tokens: u.cache_read_tokens,
                cache_write_tokens: u.cache_write_tokens,
            },
        };
        // The tokens are spent whatever happens next, so a stopped loop still gives the record
        // a moment before it gives up on it.
        let grace = async {
            self.stop.cancelled().await;
            tokio::time::sleep(USAGE_GRACE).await;
        };
        let recorded = tokio::select! {
            r = host.call(call) => r,
            () = grace => Err(HostError::Unavailable("the loop was stopped first".into())),
        };
        match recorded {
            Ok(answer) => {
                // `budget`: null while the budgets allow more, else why not (a server that does
                // not say leaves the next check to `CheckBudget`).
                self.budget_known = match answer.get("budget") {
                    Some(Value::Null) => Some(None),
                    Some(Value::String(m)) => Some(Some(m.clone())),
                    _ => None,
                };
                None
            }
            Err(HostError::Lost(m)) => Some(LoopEnd::Lost(m)),
            Err(e) => {
                tracing::warn!(
                    task_id = %self.job.task_id,
                    error = %e,
                    "the model call's usage was not recorded; it stays in the attempt's outcome"
                );
                self.unrecorded += 1;
                if self.unrecorded == 1 {
                    let note = format!("usage not recorded by the server: {e}");
                    self.note(emit, note).await;
                }
                None
            }
        }
    }

    /// Runs the last response's tool calls in order; the results, or how the loop ends.
    async fn run_tools(
        &mut self,
        emit: &mut Emitter,
        toolbox: &dyn Toolbox,
    ) -> Result<Vec<Block>, LoopEnd> {
        let mut results = Vec::new();
        let Some(last) = self.req.messages.last() else {
            return Ok(results);
        };
        for block in &last.content {
            let Block::ToolUse { id, name, input } = block else {
                continue;
            };
            emit.send(
                "tool_use",
                json!({"turn": self.turns, "id": id, "name": name, "input": input}),
            )
            .await;
            let out = if let Some(why) = cflow_llm::invalid_tool_input(input) {
                // The model's arguments did not parse: nothing runs, and it is told why.
                ToolOutput::error(format!(
                    "the arguments of this {name} call are not a JSON object ({why}); nothing \
                     was run — call {name} again with a JSON object that matches its schema"
                ))
            } else if self.server.iter().any(|n| n == name) {
                let host = self
                    .host
                    .expect("server tools are offered only with a host");
                let call = HostCall::Tool {
                    name: name.clone(),
                    input: input.clone(),
                };
                match guarded(self.stop, host.call(call)).await {
                    None => return Err(LoopEnd::Stopped),
                    Some(Ok(v)) => ToolOutput::ok(cap_text(value_text(v), TOOL_OUTPUT_CAP)),
                    Some(Err(HostError::Refused(m))) => {
                        ToolOutput::error(cap_text(m, TOOL_OUTPUT_CAP))
                    }
                    Some(Err(HostError::Lost(m))) => return Err(LoopEnd::Lost(m)),
                    Some(Err(HostError::Unavailable(m))) => ToolOutput::error(format!(
                        "the server is unavailable ({m}): try again later, or go on without \
                         this tool"
                    )),
                }
            } else if self.local.iter().any(|n| n == name) {
                let out = toolbox.call(name, input, self.stop).await;
                if self.stop.is_cancelled() {
                    return Err(LoopEnd::Stopped);
                }
                // The toolbox caps its output; this only bounds a toolbox that does not.
                ToolOutput {
                    content: cap_text(out.content, 2 * TOOL_OUTPUT_CAP),
                    is_error: out.is_error,
                }
            } else {
                let have: Vec<&str> = self
                    .local
                    .iter()
                    .chain(&self.server)
                    .map(String::as_str)
                    .collect();
                ToolOutput::error(format!(
                    "there is no tool named '{name}' in this run; the tools are: {}",
                    if have.is_empty() {
                        "none".to_string()
                    } else {
                        have.join(", ")
                    }
                ))
            };
            let (shown, cut) = prefix(&out.content, EVENT_RESULT_CAP);
            emit.send(
                "tool_result",
                json!({"turn": self.turns, "tool_use_id": id, "name": name,
                       "is_error": out.is_error, "content": shown, "truncated": cut}),
            )
            .await;
            results.push(Block::ToolResult {
                tool_use_id: id.clone(),
                content: out.content,
                is_error: out.is_error,
            });
        }
        Ok(results)
    }

    /// The outcome of the conversation.
    pub(super) fn finish(
        self,
        end: LoopEnd,
        isolation: Isolation,
        mut artifacts: Vec<cflow_sandbox::artifacts::Artifact>,
        sandbox: Option<cflow_sandbox::spec::RunReport>,
        started: Instant,
    ) -> Result<JobOutcome, DriverError> {
        let usage = json!({
            "input_tokens": self.usage.input_tokens,
            "output_tokens": self.usage.output_tokens,
            "cache_read_tokens": self.usage.cache_read_tokens,
            "cache_write_tokens": self.usage.cache_write_tokens,
        });
        let mut result = json!({
            "answer": Value::Null,
            "turns": self.turns,
            "usage": usage,
            "models": self.by_model,
        });
        if !self.notes.is_empty() {
            result["notes"] = json!(self.notes);
        }
        if self.unrecorded > 0 {
            result["usage_unrecorded_calls"] = json!(self.unrecorded);
        }
        let (end_state, error, answer) = match end {
            LoopEnd::Answer(text) => (JobEnd::Exited { code: 0 }, None, Some(text)),
            LoopEnd::Failed(m) => (JobEnd::Exited { code: 1 }, Some(m), None),
            LoopEnd::Stopped => (JobEnd::Cancelled, None, None),
            LoopEnd::Lost(m) => (
                JobEnd::Cancelled,
                Some(format!("the attempt is no longer this worker's: {m}")),
                None,
            ),
            LoopEnd::Refused(m) => {
                // Final: a retry would be refused the same way.
                return Err(refusal(format!(
                    "stopped before model call {}: {m}",
                    self.turns + 1
                )));
            }
        };
        artifacts.insert(
            0,
            cflow_sandbox::artifacts::artifact(
                "transcript.jsonl",
                cflow_sandbox::artifacts::Kind::Log,
                self.transcript(&end_state, error.as_deref()),
            ),
        );
        let mut outcome = JobOutcome::new(end_state, isolation);
        if let Some(text) = &answer {
            outcome.stdout = captured(text, self.job.output_cap);
            result["answer"] = json!(text);
        }
        if let Some(e) = &error {
            result["error"] = json!(e);
        }
        outcome.result = Some(result);
        outcome.result_error = error;
        outcome.model_usage = self.by_model;
        outcome.artifacts = artifacts;
        outcome.sandbox = sandbox;
        outcome.wall_time = started.elapsed();
        Ok(outcome)
    }

    /// The conversation as JSON lines: the system prompt and tools, each turn's provider,
    /// model and usage before the assistant message it produced, every message, and the end.
    /// Past the cap, messages are left out (and counted) but the end line is always there.
    fn transcript(&self, end: &JobEnd, error: Option<&str>) -> Vec<u8> {
        let cap = self.driver.config.transcript_cap;
        let mut out = Vec::with_capacity(4096.min(cap));
        let mut omitted = 0usize;
        let mut push = |out: &mut Vec<u8>, line: Value| {
            let s = line.to_string();
            if out.len() + s.len() < cap {
                out.extend_from_slice(s.as_bytes());
                out.push(b'\n');
            } else {
                omitted += 1;
            }
        };
        let tools: Vec<&str> = self.req.tools.iter().map(|t| t.name.as_str()).collect();
        push(
            &mut out,
            json!({"type": "system", "text": self.req.system, "tools": tools}),
        );
        let mut turn = 0;
        for m in &self.req.messages {
            if m.role == Role::Assistant
                && let Some(meta) = self.meta.get(turn)
            {
                turn += 1;
                push(
                    &mut out,
                    json!({"type": "turn", "turn": turn, "provider": meta.provider,
                           "model": meta.model, "usage": meta.usage,
                           "stop_reason": meta.stop_reason}),
                );
            }
            push(
                &mut out,
                json!({"type": "message", "role": m.role, "content": m.content}),
            );
        }
        let end = json!({"type": "end", "end": end.describe(), "error": error,
                         "turns": self.turns, "usage": self.usage, "omitted_lines": omitted});
        out.extend_from_slice(end.to_string().as_bytes());
        out.push(b'\n');
        out
    }
}

/// Forwards a call's stream as agent events: text deltas coalesced (sent every `flush` or
/// [`TEXT_FLUSH_BYTES`], cut only after whitespace: see [`send_text`]), notices at once.
async fn forward(mut rx: mpsc::Receiver<Event>, emit: &mut Emitter, turn: u32, flush: Duration) {
    let mut buf = String::new();
    let mut due: Option<Instant> = None;
    loop {
        let ev = tokio::select! {
            ev = rx.recv() => ev,
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                send_text(emit, &mut buf, turn, false).await;
                // The word held back goes with the next flush.
                due = (!buf.is_empty()).then(|| Instant::now() + flush);
                continue;
            }
        };
        match ev {
            None => break,
            Some(Event::TextDelta(t)) => {
                buf.push_str(&t);
                if buf.len() >= TEXT_FLUSH_BYTES {
                    send_text(emit, &mut buf, turn, false).await;
                }
                if buf.is_empty() {
                    due = None;
                } else if due.is_none() {
                    due = Some(Instant::now() + flush);
                }
            }
            Some(Event::Notice(m)) => {
                send_text(emit, &mut buf, turn, true).await;
                due = None;
                emit.send("notice", json!({"turn": turn, "message": m}))
                    .await;
            }
            Some(_) => {}
        }
    }
    send_text(emit, &mut buf, turn, true).await;
}

/// Sends the held text as one `assistant_text` event: all of it when `all`, else up to and
/// including its last whitespace, the unfinished word staying held for the next event (all of
/// it when it has no whitespace and reached [`TEXT_FLUSH_BYTES`], which bounds what is held).
///
/// The server masks secrets in each event on its own, so an event boundary inside a secret
/// would leave two unmasked halves that any reader of the stream pieces together. Cutting only
/// after whitespace keeps every whitespace-free run (API keys, tokens) of up to
/// [`TEXT_FLUSH_BYTES`] inside one event.
async fn send_text(emit: &mut Emitter, buf: &mut String, turn: u32, all: bool) {
    let cut = if all {
        buf.len()
    } else {
        match buf.char_indices().rev().find(|(_, c)| c.is_whitespace()) {
            Some((i, c)) => i + c.len_utf8(),
            None if buf.len() >= TEXT_FLUSH_BYTES => buf.len(),
            None => 0,
        }
    };
    if cut == 0 {
        return;
    }
    let rest = buf.split_off(cut);
    let text = std::mem::replace(buf, rest);
    emit.send("assistant_text", json!({"turn": turn, "text": text}))
        .await;
}

/// The text blocks of the last message.
fn last_text(messages: &[Message]) -> String {
    messages
        .last()
        .map(|m| {
            m.content
                .iter()
                .filter_map(|b| match b {
                    Block::Text { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The first user message: the task's prompt, then each dependency's result as JSON (capped).
fn first_message(spec: &LlmSpec, input_cap: usize) -> String {
    let mut s = spec.prompt.clone();
    if spec.inputs.is_empty() {
        return s;
    }
    s.push_str("\n\n# Results of the tasks this task depends on\n");
    for (id, v) in &spec.inputs {
        let json = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
        let json = cap_text(json, input_cap);
        s.push_str(&format!("\n## Task {id}\n```json\n{json}\n```\n"));
    }
    s
}

/// A JSON value as a tool's text: a string as it is, anything else as compact JSON.
fn value_text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// The longest prefix of `s` within `max` bytes that ends on a character boundary, and whether
/// anything was cut.
fn prefix(s: &str, max: usize) -> (&str, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    (&s[..cut], true)
}

/// `s` cut to `max` bytes, saying so at the end.
fn cap_text(s: String, max: usize) -> String {
    let (kept, cut) = prefix(&s, max);
    if !cut {
        return s;
    }
    format!("{kept}\n[cut: {} of {} bytes shown]", kept.len(), s.len())
}

/// The answer as captured stdout.
fn captured(text: &str, cap: usize) -> Captured {
    let bytes = text.as_bytes();
    let keep = bytes.len().min(cap);
    Captured {
        bytes: bytes[..keep].to_vec(),
        truncated: keep < bytes.len(),
        total_bytes: bytes.len() as u64,
        tail: bytes[bytes.len().saturating_sub(TAIL_BYTES)..].to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::JobSpec;

    #[test]
    fn caps_cut_on_character_boundaries() {
        assert_eq!(prefix("héllo", 2), ("h", true));
        assert_eq!(prefix("abc", 3), ("abc", false));
        let s = cap_text("x".repeat(100), 10);
        assert!(
            s.starts_with("xxxxxxxxxx\n[cut: 10 of 100 bytes shown]"),
            "{s}"
        );
        let c = captured("abcdef", 4);
        assert_eq!(
            (c.bytes.as_slice(), c.truncated, c.total_bytes),
            (&b"abcd"[..], true, 6)
        );
    }

    #[tokio::test]
    async fn text_events_are_cut_only_after_whitespace() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut emit = Emitter { tx, open: true };
        let mut buf = "the key is sk-ant-0123".to_string();
        send_text(&mut emit, &mut buf, 1, false).await;
        assert_eq!(buf, "sk-ant-0123", "the unfinished word is held");
        buf.push_str("4567 ok");
        send_text(&mut emit, &mut buf, 1, false).await;
        assert_eq!(buf, "ok");
        send_text(&mut emit, &mut buf, 1, true).await;
        assert!(buf.is_empty());
        let mut long = "x".repeat(TEXT_FLUSH_BYTES);
        send_text(&mut emit, &mut long, 1, false).await;
        assert!(long.is_empty(), "a word past the cap is sent whole");
        drop(emit);
        let mut texts = Vec::new();
        while let Some(JobEvent::Agent { data, .. }) = rx.recv().await {
            texts.push(data["text"].as_str().unwrap().to_string());
        }
        assert_eq!(texts[..3], ["the key is ", "sk-ant-01234567 ", "ok"]);
        assert_eq!(texts[3].len(), TEXT_FLUSH_BYTES);
    }

    #[test]
    fn inputs_follow_the_prompt_capped() {
        let mut spec = crate::proto::job_spec("llm", &json!({"prompt": "Do it."})).unwrap();
        let JobSpec::Llm(spec) = &mut spec else {
            unreachable!()
        };
        spec.inputs
            .insert("t-1".into(), json!({"answer": "x".repeat(100)}));
        let m = first_message(spec, 40);
        assert!(m.starts_with("Do it.\n\n# Results of the tasks this task depends on\n"));
        assert!(m.contains("## Task t-1\n```json\n"), "{m}");
        assert!(m.contains("[cut: "), "{m}");
    }
}
