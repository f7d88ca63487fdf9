//! A Claude Code session's memory and the context cflow gives it.
//!
//! Each session has a namespace (`claude/session/<id>`, under the key's project for a
//! project-scoped key) with three bounded entries, each rewritten (and its TTL renewed) on
//! every change: `session` (how it started and ended), `prompts` (the newest
//! [`MAX_PROMPTS`]) and `tools` (the newest [`MAX_TOOLS`] tool uses, refused ones included).
//! Concurrent hooks of one session (Claude Code runs parallel tool calls' hooks in parallel)
//! update an entry by compare-and-set on its version, retried a few times.
//!
//! Context is text, at most [`MAX_CONTEXT_BYTES`]: on `SessionStart` the session's own recent
//! memory (a resumed or compacted session) and the newest entries of the policy's context
//! namespaces; on `UserPromptSubmit` the entries of those namespaces that match the prompt's
//! words (the server's full-text search, one query per word, ranked together).

use crate::error::ApiResult;
use crate::state::{AppState, now_ms};
use cflow_store::{AuditContext, MemoryEntry, MemoryPut, PageRequest, Precondition};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

/// How long a session's memory lives after its last change: a week.
pub const SESSION_TTL_SECS: i64 = 7 * 24 * 3600;
/// Prompts kept per session.
pub const MAX_PROMPTS: usize = 20;
/// Tool uses kept per session.
pub const MAX_TOOLS: usize = 50;
/// The most context text given to Claude Code at once.
pub const MAX_CONTEXT_BYTES: usize = 8 * 1024;
/// Longest string kept in a clipped value (memory items, audit details).
pub const CLIP_STRING: usize = 500;
/// Compare-and-set attempts before an update of a session entry is given up (and logged).
const CAS_ATTEMPTS: usize = 5;

/// A copy of `v` with long strings cut to `max` characters and arrays to 50 items, so that a
/// tool's whole output or a file's content never lands in memory, the ledger or an event.
pub fn clip(v: &Value, max: usize) -> Value {
    match v {
        Value::String(s) => Value::String(clip_str(s, max)),
        Value::Array(a) => {
            let mut out: Vec<Value> = a.iter().take(50).map(|x| clip(x, max)).collect();
            if a.len() > 50 {
                out.push(json!(format!("… {} more", a.len() - 50)));
            }
            Value::Array(out)
        }
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, x)| (k.clone(), clip(x, max))).collect())
        }
        other => other.clone(),
    }
}

/// A copy of `v` whose JSON is at most `max_bytes`: clipped harder until it fits, else a note
/// of its size (an object with thousands of keys clips to little less than itself).
pub fn clip_to(v: &Value, max_bytes: usize) -> Value {
    for max in [CLIP_STRING, 100, 20] {
        let c = clip(v, max);
        if crate::routes::memory::serialised_len(&c) <= max_bytes {
            return c;
        }
    }
    json!({ "clipped": format!("{} bytes of JSON, too large to keep", crate::routes::memory::serialised_len(v)) })
}

/// `s` cut to `max` characters, saying how much was left out.
pub fn clip_str(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}… [{} more bytes]", &s[..i], s.len() - i),
        None => s.to_string(),
    }
}

/// Where a session's memory lives.
pub struct SessionMemory<'a> {
    pub state: &'a AppState,
    pub ctx: &'a AuditContext,
    pub tenant: &'a str,
    pub namespace: String,
}

impl SessionMemory<'_> {
    /// Appends `item` to the list kept under `key`, dropping the oldest beyond `max`.
    pub async fn append(&self, key: &str, item: Value, max: usize) -> ApiResult<()> {
        self.update(key, |cur| {
            let mut items = cur
                .and_then(|v| v.get("items"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            items.push(item.clone());
            let excess = items.len().saturating_sub(max);
            items.drain(..excess);
            json!({ "items": items })
        })
        .await
    }

    /// Sets the given fields of the object kept under `key`.
    pub async fn merge(&self, key: &str, fields: Map<String, Value>) -> ApiResult<()> {
        self.update(key, |cur| {
            let mut obj = cur.and_then(Value::as_object).cloned().unwrap_or_default();
            obj.extend(fields.clone());
            Value::Object(obj)
        })
        .await
    }

    async fn update(&self, key: &str, change: impl Fn(Option<&Value>) -> Value) -> ApiResult<()> {
        for _ in 0..CAS_ATTEMPTS {
            let cur = self
                .state
                .store
                .memory_get(self.tenant, &self.namespace, key, now_ms())
                .await?;
            let precondition = match &cur {
                Some(e) => Precondition::Version(e.version),
                None => Precondition::Absent,
            };
            let mut value = change(cur.as_ref().map(|e| &e.value));
            // Whatever ends up in memory is masked, like any memory write.
            self.state.secrets.masks().json(self.tenant, &mut value);
            let put = MemoryPut {
                namespace: self.namespace.clone(),
                key: key.to_string(),
                value,
                tags: vec!["claude".to_string()],
                ttl_seconds: Some(SESSION_TTL_SECS),
                precondition,
            };
            match self
                .state
                .store
                .memory_put(self.ctx, self.tenant, put)
                .await
            {
                Ok(_) => return Ok(()),
                Err(cflow_store::Error::PreconditionFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        tracing::warn!(namespace = %self.namespace, key, "gave up updating a Claude Code session entry after {CAS_ATTEMPTS} concurrent changes");
        Ok(())
    }

    async fn get(&self, key: &str) -> ApiResult<Option<MemoryEntry>> {
        Ok(self
            .state
            .store
            .memory_get(self.tenant, &self.namespace, key, now_ms())
            .await?)
    }
}

/// Text of a memory value: a string as is, anything else as compact JSON.
fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Accumulates context lines up to [`MAX_CONTEXT_BYTES`].
#[derive(Default)]
struct Context(String);

impl Context {
    fn line(&mut self, s: &str) {
        let room = MAX_CONTEXT_BYTES.saturating_sub(self.0.len());
        let mut s = s.replace('\n', " ");
        if s.len() + 1 > room {
            // Room for a few characters, '…' (3 bytes) and the newline, or nothing at all.
            if room < 8 {
                return;
            }
            let mut cut = room - 4;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push('…');
        }
        self.0.push_str(&s);
        self.0.push('\n');
    }

    fn finish(self) -> Option<String> {
        let s = self.0.trim_end().to_string();
        (!s.is_empty()).then_some(s)
    }
}

/// Context for `SessionStart`: the session's own memory (when it is resumed) and the newest
/// entries of the policy's namespaces.
pub async fn session_start_context(
    mem: &SessionMemory<'_>,
    namespaces: &[String],
) -> ApiResult<Option<String>> {
    let mut cx = Context::default();
    let prompts = mem.get("prompts").await?;
    let tools = mem.get("tools").await?;
    if prompts.is_some() || tools.is_some() {
        cx.line(&format!(
            "cflow memory of this session ({}):",
            mem.namespace
        ));
        for (what, entry, field) in [("prompt", &prompts, "prompt"), ("tool", &tools, "summary")] {
            let items = entry
                .as_ref()
                .and_then(|e| e.value.get("items"))
                .and_then(Value::as_array);
            for item in items.into_iter().flatten().rev().take(5) {
                let text = item.get(field).map(text_of).unwrap_or_default();
                cx.line(&format!("- {what}: {}", clip_str(&text, 300)));
            }
        }
    }
    for ns in namespaces {
        let page = PageRequest {
            cursor: None,
            limit: 200,
        };
        let mut entries = mem
            .state
            .store
            .memory_list(mem.tenant, ns, "", now_ms(), &page)
            .await?
            .items;
        if entries.is_empty() {
            continue;
        }
        entries.sort_by_key(|e| std::cmp::Reverse(e.updated_at));
        cx.line(&format!("cflow memory '{ns}' (newest first):"));
        for e in entries.iter().take(5) {
            cx.line(&format!(
                "- {}: {}",
                e.key,
                clip_str(&text_of(&e.value), 500)
            ));
        }
    }
    Ok(cx.finish())
}

/// Words short enough to carry no meaning in a search.
const STOPWORDS: &[&str] = &[
    "about", "after", "again", "also", "because", "been", "before", "being", "could", "does",
    "doing", "from", "have", "here", "into", "just", "like", "make", "more", "most", "need",
    "only", "other", "please", "should", "some", "than", "that", "their", "them", "then", "there",
    "these", "they", "this", "those", "what", "when", "where", "which", "while", "will", "with",
    "would", "your",
];

/// The prompt's most telling words: at least four characters, no stop words, longest first.
pub fn prompt_terms(prompt: &str, max: usize) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for w in prompt.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
        let w = w.to_lowercase();
        if w.chars().count() >= 4 && !STOPWORDS.contains(&w.as_str()) && !words.contains(&w) {
            words.push(w);
        }
    }
    words.sort_by_key(|w| std::cmp::Reverse(w.chars().count()));
    words.truncate(max);
    words
}

/// Context for `UserPromptSubmit`: entries of the policy's namespaces that match the prompt.
pub async fn prompt_context(
    mem: &SessionMemory<'_>,
    namespaces: &[String],
    prompt: &str,
) -> ApiResult<Option<String>> {
    if namespaces.is_empty() {
        return Ok(None);
    }
    let in_scope = |ns: &str| {
        namespaces.iter().any(|n| {
            ns == n
                || ns
                    .strip_prefix(n.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        })
    };
    // One query per word ranks entries that match any of them; an entry matching several
    // words adds up their scores.
    let mut hits: HashMap<(String, String), (f64, Value)> = HashMap::new();
    for term in prompt_terms(prompt, 5) {
        let found = mem
            .state
            .store
            .memory_search(mem.tenant, &[term], None, now_ms(), 50)
            .await?;
        for h in found.into_iter().filter(|h| in_scope(&h.entry.namespace)) {
            let slot = hits
                .entry((h.entry.namespace, h.entry.key))
                .or_insert((0.0, h.entry.value));
            slot.0 += h.score;
        }
    }
    if hits.is_empty() {
        return Ok(None);
    }
    let mut ranked: Vec<_> = hits.into_iter().collect();
    ranked.sort_by(|a, b| b.1.0.total_cmp(&a.1.0).then_with(|| a.0.cmp(&b.0)));
    let mut cx = Context::default();
    cx.line("cflow memory relevant to this prompt:");
    for ((ns, key), (_, value)) in ranked.into_iter().take(5) {
        cx.line(&format!(
            "- {ns}/{key}: {}",
            clip_str(&text_of(&value), 1000)
        ));
    }
    Ok(cx.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_bounds_strings_and_arrays() {
        let v = json!({"content": "x".repeat(2000), "list": (0..60).collect::<Vec<_>>()});
        let c = clip(&v, 10);
        assert!(
            c["content"]
                .as_str()
                .unwrap()
                .starts_with("xxxxxxxxxx… [1990 more")
        );
        assert_eq!(c["list"].as_array().unwrap().len(), 51);
        assert_eq!(clip_str("héllo", 2), "hé… [3 more bytes]");
        let wide: serde_json::Map<String, Value> = (0..5000)
            .map(|i| (format!("k{i}"), json!("v".repeat(50))))
            .collect();
        let c = clip_to(&Value::Object(wide), 16 * 1024);
        assert!(c["clipped"].as_str().unwrap().contains("too large"), "{c}");
    }

    #[test]
    fn prompt_terms_keep_the_telling_words() {
        assert_eq!(
            prompt_terms("How should we deploy the payments gateway? deploy it", 3),
            vec!["payments", "gateway", "deploy"]
        );
    }

    #[test]
    fn context_is_bounded() {
        let mut cx = Context::default();
        for _ in 0..100 {
            cx.line(&"é".repeat(300));
        }
        assert!(cx.finish().unwrap().len() <= MAX_CONTEXT_BYTES);
    }
}
