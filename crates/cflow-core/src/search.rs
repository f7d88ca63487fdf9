//! Turns a user's search text into plain search terms. Users type words, not the query language
//! of FTS5 or `tsquery`, so operators and punctuation are dropped here and each backend builds its
//! own query from the terms; a query with no words at all is an input error.

use crate::validate::ValidationError;

/// Most terms in one query.
pub const MAX_TERMS: usize = 16;
/// Longest query text.
pub const MAX_QUERY_LEN: usize = 1000;

/// Splits `q` into lowercase words of letters, digits and `_`.
pub fn terms(q: &str) -> Result<Vec<String>, ValidationError> {
    if q.chars().count() > MAX_QUERY_LEN {
        return Err(ValidationError::new(
            "q",
            format!("must be at most {MAX_QUERY_LEN} characters"),
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for w in q.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
        if w.is_empty() {
            continue;
        }
        let w = w.to_lowercase();
        if !out.contains(&w) {
            out.push(w);
        }
    }
    if out.is_empty() {
        return Err(ValidationError::new(
            "q",
            "must contain at least one word (letters or digits); operators alone are not a query",
        ));
    }
    if out.len() > MAX_TERMS {
        return Err(ValidationError::new(
            "q",
            format!("must have at most {MAX_TERMS} words"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_extracted() {
        assert_eq!(
            terms("Deploy  the API-gateway! deploy").unwrap(),
            vec!["deploy", "the", "api", "gateway"]
        );
    }

    #[test]
    fn operators_alone_are_rejected() {
        for q in ["", "  ", "* - ( ) \" :", "^^^"] {
            let e = terms(q).unwrap_err();
            assert_eq!(e.field, "q", "{q:?}");
        }
        assert!(terms(&"w ".repeat(17)).is_ok(), "duplicates collapse");
        let many: String = (0..17).map(|i| format!("w{i} ")).collect();
        assert!(terms(&many).is_err());
    }
}
