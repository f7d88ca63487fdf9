//! Agent types and their default capabilities. The six built-in types cover the usual roles of
//! a coding swarm; any other name that passes [`validate_type`] is a custom type with no default
//! capabilities (give it some at spawn).

use crate::ValidationError;

/// The built-in types with the capabilities an agent of the type has unless told otherwise.
pub const BUILTIN: [(&str, &[&str]); 6] = [
    ("coordinator", &["plan", "delegate", "review"]),
    ("architect", &["design", "plan", "review"]),
    ("coder", &["code", "edit", "test"]),
    ("tester", &["test", "code"]),
    ("reviewer", &["review"]),
    ("researcher", &["research", "summarise"]),
];

/// The default capabilities of a type (empty for a custom type).
pub fn default_capabilities(agent_type: &str) -> Vec<String> {
    BUILTIN
        .iter()
        .find(|(t, _)| *t == agent_type)
        .map(|(_, caps)| caps.iter().map(|c| c.to_string()).collect())
        .unwrap_or_default()
}

pub fn is_builtin(agent_type: &str) -> bool {
    BUILTIN.iter().any(|(t, _)| *t == agent_type)
}

fn name_ok(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z'))
        && s.len() <= 32
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
}

/// A type name: a built-in type or a custom one of 1–32 of `a-z 0-9 _ -`, starting with a letter.
pub fn validate_type(field: &str, agent_type: &str) -> Result<(), ValidationError> {
    if name_ok(agent_type) {
        return Ok(());
    }
    let builtin: Vec<&str> = BUILTIN.iter().map(|(t, _)| *t).collect();
    Err(ValidationError::new(
        field,
        format!(
            "'{agent_type}' is not a valid agent type: use one of {} or a custom name of 1-32 \
             characters a-z, 0-9, '_' or '-' starting with a letter",
            builtin.join(", ")
        ),
    ))
}

/// A capability name, same rules as a type name.
pub fn validate_capability(field: &str, cap: &str) -> Result<(), ValidationError> {
    if name_ok(cap) {
        return Ok(());
    }
    Err(ValidationError::new(
        field,
        format!("'{cap}' is not a valid capability: 1-32 characters a-z, 0-9, '_' or '-'"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_types_have_defaults_and_custom_names_are_checked() {
        assert_eq!(default_capabilities("reviewer"), ["review"]);
        assert!(default_capabilities("translator").is_empty());
        assert!(validate_type("type", "translator").is_ok());
        for bad in ["", "Coder", "9lives", "a b", &"x".repeat(33)] {
            let err = validate_type("type", bad).unwrap_err();
            assert!(err.to_string().contains("coordinator"), "{err}");
        }
        assert!(validate_capability("requires[0]", "gpu").is_ok());
        assert!(validate_capability("requires[0]", "GPU!").is_err());
    }
}
