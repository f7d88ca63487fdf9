//! The API-key token format `cflow_<id>_<secret>`: a public id used for lookup and a 256-bit
//! secret of which only the SHA-256 is stored. Comparison is constant-time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The token prefix, so that leaked tokens are easy to recognise and scan for.
pub const PREFIX: &str = "cflow_";
/// Hex characters in a key id (64 bits).
pub const ID_HEX_LEN: usize = 16;
/// Hex characters in a secret (256 bits).
pub const SECRET_HEX_LEN: usize = 64;

/// A token split into its public id and its secret.
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedToken<'a> {
    pub id: &'a str,
    pub secret: &'a str,
}

/// Builds a token from random bytes supplied by the caller (this crate reads no random source).
/// Returns `(id, token)`.
pub fn format_token(id_bytes: [u8; 8], secret_bytes: [u8; 32]) -> (String, String) {
    let id = hex::encode(id_bytes);
    let token = format!("{PREFIX}{id}_{}", hex::encode(secret_bytes));
    (id, token)
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Splits a token; `None` if it is not of the form `cflow_<16 hex>_<64 hex>`.
pub fn parse_token(token: &str) -> Option<ParsedToken<'_>> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (is_lower_hex(id, ID_HEX_LEN) && is_lower_hex(secret, SECRET_HEX_LEN))
        .then_some(ParsedToken { id, secret })
}

/// The stored form of a secret: lowercase hex SHA-256. Secrets are high-entropy, so a fast hash
/// is enough; a password hash would only cost latency on every request.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether `secret` matches `stored_hash`, compared in constant time.
pub fn verify_secret(secret: &str, stored_hash: &str) -> bool {
    let computed = hash_secret(secret);
    computed.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_parse_verify() {
        let (id, token) = format_token([1; 8], [0xab; 32]);
        assert_eq!(id, "0101010101010101");
        let parsed = parse_token(&token).expect("parses");
        assert_eq!(parsed.id, id);
        let stored = hash_secret(parsed.secret);
        assert!(verify_secret(parsed.secret, &stored));
        assert!(!verify_secret(&"ab".repeat(31), &stored));
    }

    #[test]
    fn rejects_malformed_tokens() {
        let (_, good) = format_token([2; 8], [3; 32]);
        for bad in [
            "",
            "cflow_",
            "Bearer x",
            &good[..good.len() - 1],
            &good.replace("cflow_", "cflw_"),
            &good.to_uppercase(),
            &format!("{good}0"),
        ] {
            assert!(parse_token(bad).is_none(), "{bad:?}");
        }
    }
}
