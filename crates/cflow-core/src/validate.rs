//! Limits and rules for user input. Every rejection names the field and the rule, so the API can
//! answer with a problem+json that tells the caller exactly what to fix.

use serde::Serialize;

/// Longest tenant, project or key name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest memory namespace.
pub const MAX_NAMESPACE_LEN: usize = 256;
/// Longest memory key.
pub const MAX_KEY_LEN: usize = 512;
/// Most tags on one memory entry, and the longest tag.
pub const MAX_TAGS: usize = 32;
pub const MAX_TAG_LEN: usize = 64;
/// Largest memory value, as serialised JSON.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Longest TTL: ten years.
pub const MAX_TTL_SECONDS: i64 = 10 * 365 * 24 * 3600;

/// A rejected input: which field, and which rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct ValidationError {
    pub field: String,
    pub rule: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }
}

type Result<T = ()> = std::result::Result<T, ValidationError>;

fn no_control_chars(field: &str, value: &str) -> Result {
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn length(field: &str, value: &str, max: usize) -> Result {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    let n = value.chars().count();
    if n > max {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max} characters (got {n})"),
        ));
    }
    Ok(())
}

/// A tenant, project, key or principal name: 1–64 characters of ASCII letters, digits, `.`, `_`
/// and `-`, starting with a letter or digit.
pub fn name(field: &str, value: &str) -> Result {
    length(field, value, MAX_NAME_LEN)?;
    no_control_chars(field, value)?;
    let ok_chars = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let ok_start = value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok_chars || !ok_start {
        return Err(ValidationError::new(
            field,
            "must start with a letter or digit and contain only letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(())
}

/// A memory namespace: 1–256 characters, segments separated by `/`, no empty segment, no control
/// characters, no whitespace at either end.
pub fn namespace(value: &str) -> Result {
    let field = "namespace";
    length(field, value, MAX_NAMESPACE_LEN)?;
    no_control_chars(field, value)?;
    if value.split('/').any(str::is_empty) {
        return Err(ValidationError::new(
            field,
            "segments separated by '/' must not be empty",
        ));
    }
    if value.trim() != value {
        return Err(ValidationError::new(
            field,
            "must not start or end with whitespace",
        ));
    }
    Ok(())
}

/// A memory key: 1–512 characters without control characters.
pub fn memory_key(value: &str) -> Result {
    length("key", value, MAX_KEY_LEN)?;
    no_control_chars("key", value)
}

/// Tags: at most 32, each 1–64 characters without control characters.
pub fn tags(values: &[String]) -> Result {
    if values.len() > MAX_TAGS {
        return Err(ValidationError::new(
            "tags",
            format!("at most {MAX_TAGS} tags (got {})", values.len()),
        ));
    }
    for (i, t) in values.iter().enumerate() {
        let field = format!("tags[{i}]");
        length(&field, t, MAX_TAG_LEN)?;
        no_control_chars(&field, t)?;
    }
    Ok(())
}

/// A TTL in seconds: at least 1, at most ten years.
pub fn ttl_seconds(value: i64) -> Result {
    if value < 1 {
        return Err(ValidationError::new(
            "ttl_seconds",
            format!("must be a positive number of seconds (got {value})"),
        ));
    }
    if value > MAX_TTL_SECONDS {
        return Err(ValidationError::new(
            "ttl_seconds",
            format!("must be at most {MAX_TTL_SECONDS} seconds (ten years)"),
        ));
    }
    Ok(())
}

/// A memory value, given its serialised length.
pub fn value_size(serialised_len: usize) -> Result {
    if serialised_len > MAX_VALUE_BYTES {
        return Err(ValidationError::new(
            "value",
            format!("must be at most {MAX_VALUE_BYTES} bytes of JSON (got {serialised_len})"),
        ));
    }
    Ok(())
}

/// Longest artifact name, in bytes.
pub const MAX_ARTIFACT_NAME_BYTES: usize = 255;
/// The kinds of artifact a task attempt may store.
pub const ARTIFACT_KINDS: [&str; 3] = ["patch", "file", "log"];

/// An artifact name: a relative path of 1–255 bytes, without NUL, without a leading `/` and
/// without a `..` segment, so that writing it under a download directory stays inside it.
pub fn artifact_name(value: &str) -> Result {
    let field = "name";
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > MAX_ARTIFACT_NAME_BYTES {
        return Err(ValidationError::new(
            field,
            format!(
                "must be at most {MAX_ARTIFACT_NAME_BYTES} bytes (got {})",
                value.len()
            ),
        ));
    }
    if value.contains('\0') {
        return Err(ValidationError::new(field, "must not contain NUL"));
    }
    if value.starts_with('/') || value.starts_with('\\') {
        return Err(ValidationError::new(
            field,
            format!("must be a relative path (got {value:?})"),
        ));
    }
    if value.split(['/', '\\']).any(|seg| seg == "..") {
        return Err(ValidationError::new(
            field,
            format!("must not contain a '..' segment (got {value:?})"),
        ));
    }
    Ok(())
}

/// An artifact kind: one of [`ARTIFACT_KINDS`].
pub fn artifact_kind(value: &str) -> Result {
    if ARTIFACT_KINDS.contains(&value) {
        return Ok(());
    }
    Err(ValidationError::new(
        "kind",
        format!("must be one of patch, file, log (got {value:?})"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_names() {
        for ok in ["a", "out/diff.patch", "a..b", &"x".repeat(255)] {
            assert!(artifact_name(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/..",
            "a\0b",
            &"x".repeat(256),
        ] {
            let e = artifact_name(bad).unwrap_err();
            assert_eq!(e.field, "name", "{bad:?}");
        }
        assert!(artifact_kind("patch").is_ok());
        assert!(artifact_kind("blob").is_err());
    }

    #[test]
    fn names() {
        assert!(name("name", "team-a_1.x").is_ok());
        for bad in ["", "-a", "a b", "a/b", "é", "a\u{7}"] {
            let e = name("name", bad).unwrap_err();
            assert_eq!(e.field, "name", "{bad:?}");
        }
        assert!(name("name", &"a".repeat(64)).is_ok());
        let e = name("name", &"a".repeat(65)).unwrap_err();
        assert!(e.rule.contains("at most 64"), "{e}");
    }

    #[test]
    fn namespaces_and_keys() {
        assert!(namespace("project/web/notes").is_ok());
        assert!(namespace("a").is_ok());
        for bad in ["", "a//b", "/a", "a/", " a", "a\n"] {
            assert!(namespace(bad).is_err(), "{bad:?}");
        }
        assert!(namespace(&"n".repeat(257)).is_err());
        assert!(memory_key("any key: with spaces/and ünïcode").is_ok());
        assert!(memory_key("").is_err());
        assert!(memory_key("a\tb").is_err());
        assert!(memory_key(&"k".repeat(513)).is_err());
    }

    #[test]
    fn tags_ttl_and_values() {
        assert!(tags(&["a".into(), "b c".into()]).is_ok());
        assert_eq!(tags(&["".into()]).unwrap_err().field, "tags[0]");
        assert!(tags(&vec!["t".to_string(); 33]).is_err());
        assert!(ttl_seconds(1).is_ok());
        assert!(ttl_seconds(0).is_err());
        let e = ttl_seconds(-5).unwrap_err();
        assert_eq!(e.field, "ttl_seconds");
        assert!(e.rule.contains("positive"));
        assert!(ttl_seconds(MAX_TTL_SECONDS + 1).is_err());
        assert!(value_size(MAX_VALUE_BYTES).is_ok());
        assert!(value_size(MAX_VALUE_BYTES + 1).is_err());
    }
}
