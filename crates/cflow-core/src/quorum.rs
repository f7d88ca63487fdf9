//! Byzantine-tolerant result acceptance: a task run on n replicas succeeds with the output that a
//! quorum of them agree on. Outputs are compared by the SHA-256 digest of a normalised form, so
//! differences that carry no meaning (line endings, trailing spaces, JSON key order) do not count
//! as disagreement.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// A replica's output, as text (for example stdout) or as a JSON result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Output<'a> {
    Text(&'a str),
    Json(&'a serde_json::Value),
}

impl Output<'_> {
    /// The normalised form: [`normalise_text`] or [`canonical_json`].
    pub fn normalise(&self) -> String {
        match self {
            Output::Text(s) => normalise_text(s),
            Output::Json(v) => canonical_json(v),
        }
    }

    /// The digest of the normalised form.
    pub fn digest(&self) -> String {
        digest(&self.normalise())
    }
}

/// Normalises text output: CRLF becomes LF, trailing whitespace is removed from every line, and
/// trailing blank lines and whitespace are removed from the end. Leading whitespace is kept,
/// because indentation can be meaningful (code, YAML).
pub fn normalise_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for line in s.split('\n') {
        // `trim_end` also removes the `\r` of a CRLF line ending.
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let end = out.trim_end().len();
    out.truncate(end);
    out
}

/// A canonical JSON encoding: object keys sorted by their UTF-8 bytes, no insignificant
/// whitespace, strings and numbers as serde_json writes them. Numbers are compared as written:
/// `1` and `1.0` differ, since a task that emits one or the other did produce different output.
/// Sorting is done here rather than relied on from serde_json's map, whose order depends on a
/// cargo feature that another crate in the build may turn on.
pub fn canonical_json(v: &serde_json::Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&scalar(&Value::String(k.clone())));
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        scalar_value => out.push_str(&scalar(scalar_value)),
    }
}

fn scalar(v: &serde_json::Value) -> String {
    serde_json::to_string(v).expect("serialising a JSON value cannot fail")
}

/// SHA-256 of `normalised`, as lowercase hex.
pub fn digest(normalised: &str) -> String {
    hex::encode(Sha256::digest(normalised.as_bytes()))
}

/// What is known about one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replica<'a> {
    /// Still running (or not started).
    Outstanding,
    /// Ended without an output to compare (failed, timed out).
    Failed,
    /// Ended with an output of this digest.
    Output(&'a str),
}

/// Replicas that produced the same digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    pub digest: String,
    /// Replica indices, ascending.
    pub replicas: Vec<usize>,
}

/// The outcome of a vote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum QuorumDecision {
    /// At least `quorum` replicas agree on `digest`. The task succeeds with that output; any
    /// replica still running can be cancelled.
    Accepted {
        digest: String,
        agreeing: Vec<usize>,
    },
    /// No quorum yet, but the outstanding replicas could still make one.
    Pending,
    /// No quorum is possible any more: the task fails with `no quorum`, keeping every output.
    /// Groups are largest first (ties: the group whose first replica comes first).
    NoQuorum {
        groups: Vec<Group>,
        failed: Vec<usize>,
    },
}

/// Decides a vote among `replicas` (indexed by replica number). A `quorum` of 0 counts as 1. With
/// a quorum of at most half the replicas two groups could both reach it; the largest group wins,
/// and a caller that decides after every result accepts the first group to get there.
pub fn decide(replicas: &[Replica<'_>], quorum: usize) -> QuorumDecision {
    let quorum = quorum.max(1);
    let mut groups: Vec<Group> = Vec::new();
    let mut failed = Vec::new();
    let mut outstanding = 0;
    for (i, r) in replicas.iter().enumerate() {
        match r {
            Replica::Outstanding => outstanding += 1,
            Replica::Failed => failed.push(i),
            // At most nine replicas, so a linear search beats hashing.
            Replica::Output(d) => match groups.iter_mut().find(|g| g.digest == *d) {
                Some(g) => g.replicas.push(i),
                None => groups.push(Group {
                    digest: (*d).to_string(),
                    replicas: vec![i],
                }),
            },
        }
    }
    // Stable sort: among groups of equal size, the one seen first (lowest first replica) leads.
    groups.sort_by_key(|g| std::cmp::Reverse(g.replicas.len()));
    let largest = groups.first().map_or(0, |g| g.replicas.len());
    if largest >= quorum {
        let g = groups.swap_remove(0);
        return QuorumDecision::Accepted {
            digest: g.digest,
            agreeing: g.replicas,
        };
    }
    if largest + outstanding >= quorum {
        return QuorumDecision::Pending;
    }
    QuorumDecision::NoQuorum { groups, failed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Replica::{Failed, Output as Out, Outstanding};
    use serde_json::json;

    #[test]
    fn text_normalisation() {
        assert_eq!(normalise_text("a  \r\nb\t\r\n\r\n  \n"), "a\nb");
        assert_eq!(
            normalise_text("  indented\n\tkept \n"),
            "  indented\n\tkept"
        );
        assert_eq!(normalise_text(""), "");
        assert_eq!(normalise_text("\n\n"), "");
        assert_eq!(
            normalise_text("a\n\nb"),
            "a\n\nb",
            "inner blank lines are kept"
        );
        let same = ["result: 42\n", "result: 42\r\n", "result: 42   \n\n\n"];
        let digests: Vec<_> = same.iter().map(|s| Output::Text(s).digest()).collect();
        assert!(digests.iter().all(|d| *d == digests[0]));
        assert_ne!(Output::Text("result: 43").digest(), digests[0]);
        assert_ne!(Output::Text(" result: 42").digest(), digests[0]);
    }

    #[test]
    fn json_canonical_form() {
        let a = json!({"b": [1, {"y": true, "x": null}], "a": "é\"\n", "c": 1.5});
        assert_eq!(
            canonical_json(&a),
            r#"{"a":"é\"\n","b":[1,{"x":null,"y":true}],"c":1.5}"#
        );
        let b: serde_json::Value =
            serde_json::from_str(r#"{ "c": 1.5, "a": "é\"\n", "b": [1, {"x": null, "y": true}] }"#)
                .unwrap();
        assert_eq!(Output::Json(&a).digest(), Output::Json(&b).digest());
        assert_ne!(
            Output::Json(&json!([1, 2])).digest(),
            Output::Json(&json!([2, 1])).digest(),
            "array order matters"
        );
        assert_eq!(
            digest(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn accepted_as_soon_as_a_quorum_agrees() {
        let d = decide(&[Out("x"), Outstanding, Out("x")], 2);
        assert_eq!(
            d,
            QuorumDecision::Accepted {
                digest: "x".into(),
                agreeing: vec![0, 2]
            }
        );
        let d = decide(&[Out("y"), Out("x"), Failed, Out("x"), Out("x")], 3);
        assert!(
            matches!(d, QuorumDecision::Accepted { ref agreeing, .. } if agreeing == &[1, 3, 4])
        );
        // Quorum 1: the first output wins.
        assert!(matches!(
            decide(&[Outstanding, Out("z")], 1),
            QuorumDecision::Accepted { .. }
        ));
    }

    #[test]
    fn pending_while_a_quorum_is_still_reachable() {
        assert_eq!(
            decide(&[Out("x"), Out("y"), Outstanding], 2),
            QuorumDecision::Pending
        );
        assert_eq!(decide(&[Outstanding; 3], 2), QuorumDecision::Pending);
        assert_eq!(
            decide(&[Failed, Outstanding, Outstanding], 2),
            QuorumDecision::Pending
        );
    }

    #[test]
    fn no_quorum_once_it_is_out_of_reach() {
        let d = decide(&[Out("x"), Out("y"), Failed, Out("y"), Outstanding], 4);
        assert_eq!(
            d,
            QuorumDecision::NoQuorum {
                groups: vec![
                    Group {
                        digest: "y".into(),
                        replicas: vec![1, 3]
                    },
                    Group {
                        digest: "x".into(),
                        replicas: vec![0]
                    },
                ],
                failed: vec![2],
            }
        );
        let d = decide(&[Out("x"), Out("y"), Out("z")], 2);
        let QuorumDecision::NoQuorum { groups, .. } = d else {
            panic!("{d:?}")
        };
        let order: Vec<_> = groups.iter().map(|g| g.digest.as_str()).collect();
        assert_eq!(order, ["x", "y", "z"], "equal groups keep replica order");
        assert!(matches!(
            decide(&[Failed, Failed], 1),
            QuorumDecision::NoQuorum { .. }
        ));
        assert!(matches!(decide(&[], 1), QuorumDecision::NoQuorum { .. }));
        assert!(matches!(
            decide(&[Out("x")], 0),
            QuorumDecision::Accepted { .. }
        ));
    }

    #[test]
    fn decisions_serialise_for_the_task_record() {
        let v = serde_json::to_value(decide(&[Out("x"), Out("y")], 2)).unwrap();
        assert_eq!(v["decision"], "no_quorum");
        assert_eq!(v["groups"][0]["replicas"], json!([0]));
    }
}
