//! Masking secrets out of text that enters the platform (task output, logs, events, memory):
//! each known secret value of the tenant and each common credential pattern is replaced with
//! `[REDACTED:<kind>]`.
//!
//! Most text has nothing to mask, and this runs on every event and every task output, so the
//! first step is one Aho-Corasick scan for the few literals every pattern starts with (`AKIA`,
//! `ghp_`, `sk-`, `eyJ`, `-----`, …); only text that contains one of them goes through the
//! pattern regex. Known values are found with one Aho-Corasick automaton per tenant.
//!
//! Limitation: text is masked piece by piece as it arrives. A secret split across two log
//! chunks is masked in neither (a PEM block is still caught from its `BEGIN` line to the end
//! of its chunk, and from the start of a chunk to its `END` line); the attempt's final output,
//! which is stored, is masked whole.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::Regex;
use serde_json::Value;
use std::borrow::Cow;
use std::sync::LazyLock;

/// Known values shorter than this are not masked: they would redact ordinary words.
pub const MIN_VALUE_CHARS: usize = 6;

/// The kind named in the replacement of a known secret value.
pub const SECRET_KIND: &str = "secret";

/// A credential pattern: its kind and its regex. When the regex has a group `v`, only that
/// group is replaced (the label before it, such as `Authorization: Bearer`, stays readable).
struct Pattern {
    kind: &'static str,
    re: &'static str,
}

// Order matters where two patterns can match at the same place: the first one wins
// (`sk-ant-` before the generic `sk-`).
const PATTERNS: &[Pattern] = &[
    Pattern {
        kind: "private_key",
        re: r"-----BEGIN[A-Z0-9 ]{0,40} PRIVATE KEY-----(?:[\s\S]*?-----END[A-Z0-9 ]{0,40} PRIVATE KEY-----|[\s\S]*\z)",
    },
    // The tail of a block whose BEGIN line was in an earlier chunk.
    Pattern {
        kind: "private_key",
        re: r"\A[A-Za-z0-9+/=\s]*-----END[A-Z0-9 ]{0,40} PRIVATE KEY-----",
    },
    Pattern {
        kind: "aws_access_key_id",
        re: r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
    },
    Pattern {
        kind: "aws_secret_access_key",
        re: r#"(?i:aws_secret_access_key)["']?\s*[=:]\s*["']?(?P<v>[A-Za-z0-9/+=]{40})"#,
    },
    Pattern {
        kind: "github_token",
        re: r"\b(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,255})",
    },
    Pattern {
        kind: "anthropic_key",
        re: r"\bsk-ant-[A-Za-z0-9_\-]{20,}",
    },
    Pattern {
        kind: "openai_key",
        re: r"\bsk-(?:proj-[A-Za-z0-9_\-]{20,}|[A-Za-z0-9]{20,})",
    },
    Pattern {
        kind: "slack_token",
        re: r"\bxox[abprs]-[A-Za-z0-9\-]{10,}",
    },
    Pattern {
        kind: "google_api_key",
        re: r"\bAIza[0-9A-Za-z_\-]{35}",
    },
    Pattern {
        kind: "jwt",
        re: r"\beyJ[A-Za-z0-9_\-]{7,}\.[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]{8,}",
    },
    Pattern {
        kind: "bearer_token",
        re: r"(?i:authorization)\s*:\s*(?i:bearer)\s+(?P<v>[A-Za-z0-9._~+/=\-]{8,})",
    },
    Pattern {
        kind: "cflow_api_key",
        re: r"\bcflow_[0-9a-f]{16}_[0-9a-f]{64}\b",
    },
];

/// Literals at least one of which every pattern's match contains (ASCII case-insensitive).
const TRIGGERS: &[&str] = &[
    "-----",
    "AKIA",
    "ASIA",
    "aws_secret_access_key",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "sk-",
    "xox",
    "AIza",
    "eyJ",
    "authorization",
    "cflow_",
];

struct Compiled {
    triggers: AhoCorasick,
    regex: Regex,
}

static COMPILED: LazyLock<Compiled> = LazyLock::new(|| {
    let joined = PATTERNS
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "(?P<p{i}>{})",
                p.re.replace("(?P<v>", &format!("(?P<v{i}>"))
            )
        })
        .collect::<Vec<_>>()
        .join("|");
    Compiled {
        triggers: AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .build(TRIGGERS)
            .expect("the trigger literals compile"),
        regex: Regex::new(&joined).expect("the credential patterns compile"),
    }
});

/// Masks one tenant's text. Cheap to share (build it once per tenant and keep it while the
/// tenant's secrets do not change).
#[derive(Clone, Default)]
pub struct Masker {
    /// The tenant's secret values, longest first; `None` when it has none worth masking.
    values: Option<AhoCorasick>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the values.
        f.debug_struct("Masker")
            .field(
                "known_values",
                &self.values.as_ref().map_or(0, |a| a.patterns_len()),
            )
            .finish()
    }
}

impl Masker {
    /// A masker for the credential patterns and the given secret values (values shorter than
    /// [`MIN_VALUE_CHARS`] are left out; surrounding whitespace is ignored).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Masker {
        let mut vals: Vec<&str> = values
            .into_iter()
            .map(str::trim)
            .filter(|v| v.chars().count() >= MIN_VALUE_CHARS)
            .collect();
        vals.sort_unstable_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        vals.dedup();
        let values = (!vals.is_empty()).then(|| {
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                // A DFA (what `auto` picks for few patterns) takes minutes to build for one
                // 64 KiB value; the NFA takes milliseconds and searches fast enough.
                .kind(Some(aho_corasick::AhoCorasickKind::NoncontiguousNFA))
                .build(&vals)
                .expect("literal secret values always compile")
        });
        Masker { values }
    }

    /// `text` with every known value and credential replaced; borrowed when nothing was.
    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let text = match &self.values {
            Some(ac) if ac.is_match(text) => {
                let marker = format!("[REDACTED:{SECRET_KIND}]");
                Cow::Owned(ac.replace_all(text, &vec![marker; ac.patterns_len()]))
            }
            _ => Cow::Borrowed(text),
        };
        match mask_patterns(&text) {
            Some(masked) => Cow::Owned(masked),
            None => text,
        }
    }

    /// Masks a string in place; returns whether it changed.
    pub fn mask_string(&self, s: &mut String) -> bool {
        match self.mask(s) {
            Cow::Borrowed(_) => false,
            Cow::Owned(m) => {
                *s = m;
                true
            }
        }
    }

    /// Masks every string inside a JSON value (not object keys); returns whether any changed.
    pub fn mask_json(&self, v: &mut Value) -> bool {
        match v {
            Value::String(s) => self.mask_string(s),
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, x| self.mask_json(x) | changed),
            Value::Object(map) => map
                .values_mut()
                .fold(false, |changed, x| self.mask_json(x) | changed),
            _ => false,
        }
    }
}

/// The credential patterns alone; `None` when nothing matched.
fn mask_patterns(text: &str) -> Option<String> {
    let c = &*COMPILED;
    if !c.triggers.is_match(text) {
        return None;
    }
    let mut out = String::new();
    let mut last = 0;
    for caps in c.regex.captures_iter(text) {
        let Some((i, whole)) =
            (0..PATTERNS.len()).find_map(|i| caps.name(&format!("p{i}")).map(|m| (i, m)))
        else {
            continue;
        };
        let span = caps.name(&format!("v{i}")).unwrap_or(whole);
        out.push_str(&text[last..span.start()]);
        out.push_str("[REDACTED:");
        out.push_str(PATTERNS[i].kind);
        out.push(']');
        last = span.end();
        // The rest of a labelled match (nothing, as `v` ends each such pattern) is dropped with
        // the value; what follows the match is copied from `last` on.
        debug_assert_eq!(span.end(), whole.end());
    }
    if last == 0 && out.is_empty() {
        return None;
    }
    out.push_str(&text[last..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(text: &str) -> String {
        Masker::default().mask(text).into_owned()
    }

    fn assert_masked(text: &str, secret: &str, kind: &str) {
        let out = m(text);
        assert!(!out.contains(secret), "{text:?} -> {out:?}");
        assert!(
            out.contains(&format!("[REDACTED:{kind}]")),
            "{text:?} -> {out:?}"
        );
    }

    fn assert_kept(text: &str) {
        assert_eq!(m(text), text);
        assert!(matches!(Masker::default().mask(text), Cow::Borrowed(_)));
    }

    #[test]
    fn aws_access_key_ids() {
        assert_masked(
            "key=AKIAIOSFODNN7EXAMPLE end",
            "AKIAIOSFODNN7EXAMPLE",
            "aws_access_key_id",
        );
        assert_masked(
            "ASIAY34FZKBOKMUTVV7A",
            "ASIAY34FZKBOKMUTVV7A",
            "aws_access_key_id",
        );
        assert_eq!(
            m("id AKIAIOSFODNN7EXAMPLE."),
            "id [REDACTED:aws_access_key_id]."
        );
        assert_kept("AKIAIOSFODNN7EXAMPL"); // 15 after the prefix
        assert_kept("AKIAiosfodnn7example"); // lowercase
        assert_kept("XAKIAIOSFODNN7EXAMPLE1"); // inside a longer word
    }

    #[test]
    fn aws_secret_access_keys() {
        let s = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        assert_eq!(
            m(&format!("aws_secret_access_key = {s}")),
            "aws_secret_access_key = [REDACTED:aws_secret_access_key]"
        );
        assert_masked(
            &format!("AWS_SECRET_ACCESS_KEY: \"{s}\""),
            s,
            "aws_secret_access_key",
        );
        assert_kept(&format!("secret {s}")); // no label: could be anything
        assert_kept("aws_secret_access_key = short");
    }

    #[test]
    fn github_tokens() {
        let body = "a".repeat(36);
        for p in ["ghp_", "gho_", "ghu_", "ghs_", "ghr_"] {
            let t = format!("{p}{body}");
            assert_masked(&format!("token {t}"), &t, "github_token");
        }
        let pat = format!("github_pat_11ABCDEFG0{}", "x".repeat(60));
        assert_masked(&pat, &pat, "github_token");
        assert_kept("ghp_short");
        assert_kept(&format!("ghx_{body}"));
        assert_kept("github_pat_tooshort");
    }

    #[test]
    fn model_provider_keys() {
        let ant = format!("sk-ant-api03-{}", "Ab1_".repeat(10));
        assert_eq!(m(&ant), "[REDACTED:anthropic_key]");
        let proj = format!("sk-proj-{}", "Xy9-".repeat(10));
        assert_eq!(m(&proj), "[REDACTED:openai_key]");
        let classic = format!("sk-{}", "a1B2".repeat(12));
        assert_eq!(
            m(&format!("OPENAI={classic}")),
            "OPENAI=[REDACTED:openai_key]"
        );
        assert_kept("sk-learn is a library");
        assert_kept("sk-ant-short");
        assert_kept("task-sk-12345"); // too short
        assert_kept("risk-assessment-document-for-the-quarter");
    }

    #[test]
    fn slack_google_and_jwts() {
        let slack = "xoxb-123456789012-abcdefABCDEF";
        assert_masked(slack, slack, "slack_token");
        assert_kept("xoxz-123456789012-abcdef");
        assert_kept("xoxb-12");
        let google = format!("AIza{}", "B".repeat(35));
        assert_masked(&format!("key={google}"), &google, "google_api_key");
        assert_kept(&format!("AIza{}", "B".repeat(30)));
        let jwt =
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(m(&format!("token: {jwt} ok")), "token: [REDACTED:jwt] ok");
        assert_kept("eyJhbGciOiJIUzI1NiJ9 only one segment");
        assert_kept("eyJ.a.b");
    }

    #[test]
    fn private_key_blocks() {
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7nHb\nqGcFsoT3\n-----END RSA PRIVATE KEY-----";
        assert_eq!(
            m(&format!("before\n{pem}\nafter")),
            "before\n[REDACTED:private_key]\nafter"
        );
        let open = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA";
        assert_eq!(m(&format!("x {open}")), "x [REDACTED:private_key]");
        let tail = "Zm9vYmFy\nYmF6cXV4\n-----END PRIVATE KEY-----\nnext line";
        assert_eq!(m(tail), "[REDACTED:private_key]\nnext line");
        assert_kept("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----");
        assert_kept("-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----");
        assert_kept("a line -----\n");
    }

    #[test]
    fn bearer_and_cflow_tokens() {
        assert_eq!(
            m("curl -H 'Authorization: Bearer abc.def-123456'"),
            "curl -H 'Authorization: Bearer [REDACTED:bearer_token]'"
        );
        assert_kept("Authorization: Basic"); // not a bearer token
        assert_kept("Bearer abc.def-123456"); // no header name
        let (_, token) = crate::apikey::format_token([0xab; 8], [0xcd; 32]);
        assert_eq!(
            m(&format!("CFLOW_TOKEN={token}")),
            "CFLOW_TOKEN=[REDACTED:cflow_api_key]"
        );
        assert_kept("cflow_0123_abc");
    }

    #[test]
    fn known_values() {
        let masker = Masker::new([
            "hunter2-secret",
            "short",
            "hunter2-secret-longer",
            "  padded-value \n",
        ]);
        assert_eq!(
            masker
                .mask("a hunter2-secret-longer b hunter2-secret c short padded-value")
                .as_ref(),
            "a [REDACTED:secret] b [REDACTED:secret] c short [REDACTED:secret]"
        );
        assert!(matches!(masker.mask("nothing here"), Cow::Borrowed(_)));
        // A value and a pattern in the same text.
        assert_eq!(
            masker.mask("hunter2-secret AKIAIOSFODNN7EXAMPLE").as_ref(),
            "[REDACTED:secret] [REDACTED:aws_access_key_id]"
        );
        assert!(!format!("{masker:?}").contains("hunter2"));
        assert!(
            Masker::new(["12345"]).values.is_none(),
            "values under 6 chars are skipped"
        );
    }

    #[test]
    fn json_values() {
        let masker = Masker::new(["top-secret-value"]);
        let mut v = json!({
            "text": "x top-secret-value y",
            "list": [1, "AKIAIOSFODNN7EXAMPLE", {"deep": "top-secret-value"}],
            "top-secret-value": true,
            "n": null
        });
        assert!(masker.mask_json(&mut v));
        let s = v.to_string();
        assert!(!s.contains("AKIAIOSFODNN7EXAMPLE"), "{s}");
        assert_eq!(v["text"], "x [REDACTED:secret] y");
        assert_eq!(v["list"][2]["deep"], "[REDACTED:secret]");
        let mut plain = json!({"state": "queued", "id": "0190a1b2-c3d4"});
        assert!(!masker.mask_json(&mut plain));
    }
}
