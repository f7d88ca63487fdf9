//! The audit ledger's entry and hash chain. Each entry stores
//! `hash = sha256(previous hash ‖ canonical entry)`, so altering, inserting or removing any entry
//! breaks every hash after it, and [`verify_chain`] names the first entry that does not match.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `previous hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One ledger entry as stored. `seq` starts at 1 and has no gaps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: i64,
    /// Unix milliseconds.
    pub at: i64,
    pub tenant_id: Option<String>,
    pub principal_id: Option<String>,
    /// What was attempted, for example `memory.write` or `key.create`.
    pub action: String,
    /// What it was attempted on, for example `memory/notes/plan`.
    pub resource: String,
    /// `success`, or why not: `denied`, `unauthenticated`, `rate_limited`, `conflict`, …
    pub outcome: String,
    pub request_id: Option<String>,
    /// The client's address, as the server saw it.
    pub source: Option<String>,
    /// Extra facts as a JSON object (never secrets).
    pub detail: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// The fields that the hash commits to, in a fixed order, but the last: the entry's `detail`.
/// The canonical encoding is this struct as serde_json writes it (fields in declaration order,
/// deterministic escaping) with `"detail":` and the detail's compact serde_json text added as
/// its last field, which is exactly how serde_json writes the same struct with the detail in
/// it; taking the detail's text lets a writer serialise a large detail once, for the hash and
/// for the stored row.
#[derive(Serialize)]
struct Canonical<'a> {
    seq: i64,
    at: i64,
    tenant_id: Option<&'a str>,
    principal_id: Option<&'a str>,
    action: &'a str,
    resource: &'a str,
    outcome: &'a str,
    request_id: Option<&'a str>,
    source: Option<&'a str>,
}

/// The canonical bytes of an entry (everything but its hashes).
pub fn canonical_bytes(e: &AuditEntry) -> Vec<u8> {
    canonical_bytes_with(e, &detail_text(&e.detail))
}

/// The canonical bytes of an entry whose detail's text ([`detail_text`]) is `detail`.
fn canonical_bytes_with(e: &AuditEntry, detail: &str) -> Vec<u8> {
    let c = Canonical {
        seq: e.seq,
        at: e.at,
        tenant_id: e.tenant_id.as_deref(),
        principal_id: e.principal_id.as_deref(),
        action: &e.action,
        resource: &e.resource,
        outcome: &e.outcome,
        request_id: e.request_id.as_deref(),
        source: e.source.as_deref(),
    };
    let mut out = Vec::with_capacity(256 + detail.len());
    serde_json::to_writer(&mut out, &c).expect("serialising plain data cannot fail");
    // `{...}` becomes `{...,"detail":<detail>}`.
    out.pop();
    out.extend_from_slice(b",\"detail\":");
    out.extend_from_slice(detail.as_bytes());
    out.push(b'}');
    out
}

/// A detail as the ledger stores it and the hash covers it: compact serde_json text.
pub fn detail_text(detail: &serde_json::Value) -> String {
    detail.to_string()
}

/// `sha256(prev_hash ‖ canonical entry)` as lowercase hex.
pub fn entry_hash(prev_hash: &str, e: &AuditEntry) -> String {
    hash_with(prev_hash, e, &detail_text(&e.detail))
}

fn hash_with(prev_hash: &str, e: &AuditEntry, detail: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical_bytes_with(e, detail));
    hex::encode(h.finalize())
}

/// Fills `prev_hash` and `hash` of a new entry that follows `prev_hash`.
pub fn seal(e: AuditEntry, prev_hash: &str) -> AuditEntry {
    seal_with_text(e, prev_hash).0
}

/// [`seal`], also answering the detail's text ([`detail_text`]), serialised once for the hash
/// and for the row that stores the entry.
pub fn seal_with_text(mut e: AuditEntry, prev_hash: &str) -> (AuditEntry, String) {
    let detail = detail_text(&e.detail);
    e.prev_hash = prev_hash.to_string();
    e.hash = hash_with(prev_hash, &e, &detail);
    (e, detail)
}

/// Why an entry does not fit the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Break {
    /// The entry's content no longer matches its stored hash (it was altered).
    HashMismatch { expected: String, stored: String },
    /// The entry does not point at the previous entry's hash (one was altered, inserted or removed).
    PrevHashMismatch { expected: String, stored: String },
    /// A sequence number is missing or repeated (an entry was removed or inserted).
    SeqGap { expected: i64, found: i64 },
}

/// A running verification of a chain, fed entries in `seq` order. It keeps only the last hash, so
/// a ledger of any length is verified in constant memory.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    expected_prev: String,
    expected_seq: i64,
    checked: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainVerifier {
    pub fn new() -> Self {
        Self {
            expected_prev: GENESIS_HASH.to_string(),
            expected_seq: 1,
            checked: 0,
        }
    }

    /// Checks the next entry; on success it becomes the new chain head.
    pub fn check(&mut self, e: &AuditEntry) -> Result<(), Break> {
        if e.seq != self.expected_seq {
            return Err(Break::SeqGap {
                expected: self.expected_seq,
                found: e.seq,
            });
        }
        if e.prev_hash != self.expected_prev {
            return Err(Break::PrevHashMismatch {
                expected: self.expected_prev.clone(),
                stored: e.prev_hash.clone(),
            });
        }
        let computed = entry_hash(&e.prev_hash, e);
        if computed != e.hash {
            return Err(Break::HashMismatch {
                expected: computed,
                stored: e.hash.clone(),
            });
        }
        self.expected_prev = e.hash.clone();
        self.expected_seq += 1;
        self.checked += 1;
        Ok(())
    }

    /// How many entries verified so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }
}

/// Verifies a whole chain; returns the number of entries, or the first bad entry's `seq` and why.
pub fn verify_chain<'a>(
    entries: impl IntoIterator<Item = &'a AuditEntry>,
) -> Result<u64, (i64, Break)> {
    let mut v = ChainVerifier::new();
    for e in entries {
        v.check(e).map_err(|b| (e.seq, b))?;
    }
    Ok(v.checked())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The encoding before the detail's text was spliced in: the whole entry's fields, detail
    /// included, as one struct. Stored hashes were made this way, so the two must agree.
    #[derive(Serialize)]
    struct Whole<'a> {
        seq: i64,
        at: i64,
        tenant_id: Option<&'a str>,
        principal_id: Option<&'a str>,
        action: &'a str,
        resource: &'a str,
        outcome: &'a str,
        request_id: Option<&'a str>,
        source: Option<&'a str>,
        detail: &'a serde_json::Value,
    }

    #[test]
    fn the_spliced_encoding_equals_serialising_the_whole_entry() {
        let details = [
            serde_json::json!({}),
            serde_json::Value::Null,
            serde_json::json!("plain \"quoted\" \\ text\n\u{1}é✓"),
            serde_json::json!({"count": 2, "tasks": [{"id": "a", "epoch": 1}, {"id": "b", "x": [1.5, -2, null, true]}]}),
        ];
        for (i, detail) in details.into_iter().enumerate() {
            let e = AuditEntry {
                seq: 7 + i as i64,
                at: 1_764_000_000_000,
                tenant_id: Some("t\"1".into()),
                principal_id: None,
                action: "task.complete".into(),
                resource: "tasks".into(),
                outcome: "success".into(),
                request_id: Some("r-1".into()),
                source: None,
                detail,
                prev_hash: String::new(),
                hash: String::new(),
            };
            let whole = serde_json::to_vec(&Whole {
                seq: e.seq,
                at: e.at,
                tenant_id: e.tenant_id.as_deref(),
                principal_id: e.principal_id.as_deref(),
                action: &e.action,
                resource: &e.resource,
                outcome: &e.outcome,
                request_id: e.request_id.as_deref(),
                source: e.source.as_deref(),
                detail: &e.detail,
            })
            .unwrap();
            assert_eq!(
                String::from_utf8(canonical_bytes(&e)).unwrap(),
                String::from_utf8(whole).unwrap()
            );
            let (sealed, text) = seal_with_text(e.clone(), GENESIS_HASH);
            assert_eq!(text, e.detail.to_string());
            assert_eq!(sealed, seal(e, GENESIS_HASH));
        }
    }

    fn chain(n: i64) -> Vec<AuditEntry> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|seq| {
                let e = seal(
                    AuditEntry {
                        seq,
                        at: 1_700_000_000_000 + seq,
                        tenant_id: Some("t1".into()),
                        principal_id: Some("p1".into()),
                        action: "memory.write".into(),
                        resource: format!("memory/ns/k{seq}"),
                        outcome: "success".into(),
                        request_id: Some(format!("r{seq}")),
                        source: Some("127.0.0.1".into()),
                        detail: serde_json::json!({"version": seq}),
                        prev_hash: String::new(),
                        hash: String::new(),
                    },
                    &prev,
                );
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify_chain(&chain(5)), Ok(5));
        assert_eq!(verify_chain(&[]), Ok(0));
    }

    #[test]
    fn an_altered_entry_is_named() {
        let mut c = chain(5);
        c[2].outcome = "denied".into();
        let (seq, why) = verify_chain(&c).unwrap_err();
        assert_eq!(seq, 3);
        assert!(matches!(why, Break::HashMismatch { .. }));
    }

    #[test]
    fn a_rehashed_entry_breaks_the_next_link() {
        let mut c = chain(5);
        c[2].outcome = "denied".into();
        c[2].hash = entry_hash(&c[2].prev_hash, &c[2]);
        let (seq, why) = verify_chain(&c).unwrap_err();
        assert_eq!(seq, 4);
        assert!(matches!(why, Break::PrevHashMismatch { .. }));
    }

    #[test]
    fn a_removed_entry_is_a_gap() {
        let mut c = chain(5);
        c.remove(1);
        let (seq, why) = verify_chain(&c).unwrap_err();
        assert_eq!(seq, 3);
        assert_eq!(
            why,
            Break::SeqGap {
                expected: 2,
                found: 3
            }
        );
    }
}
