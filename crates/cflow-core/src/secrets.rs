//! Secrets at rest: the master key's text forms and AES-256-GCM sealing of secret values.
//!
//! Every value is sealed under the server's 256-bit master key with its own 96-bit nonce (the
//! caller draws it from the system's random source, since this crate has none) and with the
//! tenant id and the secret's name as associated data: a ciphertext copied to another row, of
//! another tenant or under another name, does not open.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};

/// Bytes of the master key.
pub const KEY_LEN: usize = 32;
/// Bytes of a nonce (96 bits, the size GCM is designed for).
pub const NONCE_LEN: usize = 12;
/// Largest secret value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Longest secret name.
pub const MAX_NAME_LEN: usize = 128;

/// Why a master key's text or a sealed value was refused. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "the master key must be 64 hex digits or the base64 of 32 bytes (got {0} characters that are neither)"
    )]
    MalformedKey(usize),
    #[error("the secret does not open: wrong key, wrong tenant or name, or tampered ciphertext")]
    Open,
    #[error("a nonce must be {NONCE_LEN} bytes (got {0})")]
    Nonce(usize),
}

/// The master key, ready to seal and open. Its `Debug` shows nothing of the key, and the key
/// schedule is wiped when it is dropped.
#[derive(Clone)]
pub struct MasterKey {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> MasterKey {
        let cipher = Aes256Gcm::new(&(*bytes).into());
        MasterKey { cipher }
    }

    /// Parses `CFLOW_MASTER_KEY` or the key file: 64 hex digits, or standard base64 (padded or
    /// not) of exactly 32 bytes; surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<MasterKey, SecretError> {
        let text = text.trim();
        let mut bytes = [0u8; KEY_LEN];
        let ok = if text.len() == 2 * KEY_LEN {
            hex::decode_to_slice(text, &mut bytes).is_ok()
        } else {
            base64_decode(text).is_some_and(|b| {
                let fits = b.len() == KEY_LEN;
                if fits {
                    bytes.copy_from_slice(&b);
                }
                fits
            })
        };
        if !ok {
            return Err(SecretError::MalformedKey(text.chars().count()));
        }
        let key = MasterKey::from_bytes(&bytes);
        bytes.fill(0);
        Ok(key)
    }

    /// Seals `value` for `(tenant_id, name)` with `nonce`, which must never repeat under this
    /// key (draw 12 random bytes per write).
    pub fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        tenant_id: &str,
        name: &str,
        value: &[u8],
    ) -> Vec<u8> {
        let aad = associated_data(tenant_id, name);
        self.cipher
            .encrypt(
                &Nonce::from(*nonce),
                Payload {
                    msg: value,
                    aad: &aad,
                },
            )
            // Encryption fails only for inputs beyond GCM's 64 GiB limit, far above ours.
            .expect("AES-GCM encrypts any value under 64 GiB")
    }

    /// Opens what [`MasterKey::seal`] sealed for `(tenant_id, name)`.
    pub fn open(
        &self,
        nonce: &[u8],
        tenant_id: &str,
        name: &str,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, SecretError> {
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| SecretError::Nonce(nonce.len()))?;
        let aad = associated_data(tenant_id, name);
        self.cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| SecretError::Open)
    }
}

/// Length-prefixed, so that no two `(tenant, name)` pairs give the same bytes.
fn associated_data(tenant_id: &str, name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(16 + tenant_id.len() + name.len());
    aad.extend_from_slice(b"cflow-secret-v1");
    aad.extend_from_slice(&(tenant_id.len() as u64).to_be_bytes());
    aad.extend_from_slice(tenant_id.as_bytes());
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// Checks a secret's name: 1–128 of `A-Z a-z 0-9 _ . -`.
pub fn check_name(name: &str) -> Result<(), crate::ValidationError> {
    let ok = (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(crate::ValidationError::new(
            "name",
            format!("must be 1 to {MAX_NAME_LEN} characters of A-Z, a-z, 0-9, '_', '.' and '-'"),
        ))
    }
}

/// Checks a secret's value: at most 64 KiB.
pub fn check_value(value: &str) -> Result<(), crate::ValidationError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(crate::ValidationError::new(
            "value",
            format!(
                "must be at most {MAX_VALUE_BYTES} bytes (got {})",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// Standard base64 (RFC 4648 §4), padding optional. Ten lines do not justify a crate.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in text.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be zero padding, and a single leftover character is impossible.
    (acc == 0 && bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    // The same 32 bytes in base64.
    const B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn key() -> MasterKey {
        MasterKey::parse(HEX).unwrap()
    }

    #[test]
    fn round_trip() {
        let k = key();
        let nonce = [7u8; NONCE_LEN];
        let sealed = k.seal(&nonce, "t1", "GITHUB_TOKEN", b"hunter22");
        assert_ne!(&sealed[..8], b"hunter22");
        assert_eq!(sealed.len(), 8 + 16, "ciphertext plus a 128-bit tag");
        let opened = k.open(&nonce, "t1", "GITHUB_TOKEN", &sealed).unwrap();
        assert_eq!(opened, b"hunter22");
        assert_eq!(
            k.open(&nonce, "t1", "x", &k.seal(&nonce, "t1", "x", b"")),
            Ok(vec![])
        );
    }

    #[test]
    fn wrong_tenant_or_name_does_not_open() {
        let k = key();
        let nonce = [1u8; NONCE_LEN];
        let sealed = k.seal(&nonce, "t1", "NAME", b"value-1");
        assert_eq!(
            k.open(&nonce, "t2", "NAME", &sealed),
            Err(SecretError::Open)
        );
        assert_eq!(
            k.open(&nonce, "t1", "NAME2", &sealed),
            Err(SecretError::Open)
        );
        // The length prefix keeps ("t1N", "AME") apart from ("t1", "NAME").
        assert_eq!(
            k.open(&nonce, "t1N", "AME", &sealed),
            Err(SecretError::Open)
        );
        let other = MasterKey::from_bytes(&[9u8; KEY_LEN]);
        assert_eq!(
            other.open(&nonce, "t1", "NAME", &sealed),
            Err(SecretError::Open)
        );
    }

    #[test]
    fn tampering_is_detected() {
        let k = key();
        let nonce = [2u8; NONCE_LEN];
        let sealed = k.seal(&nonce, "t", "n", b"some secret value");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                k.open(&nonce, "t", "n", &bad),
                Err(SecretError::Open),
                "byte {i}"
            );
        }
        assert_eq!(
            k.open(&nonce, "t", "n", &sealed[..sealed.len() - 1]),
            Err(SecretError::Open)
        );
        let mut nonce2 = nonce;
        nonce2[0] ^= 1;
        assert_eq!(k.open(&nonce2, "t", "n", &sealed), Err(SecretError::Open));
        assert_eq!(
            k.open(&[0u8; 8], "t", "n", &sealed),
            Err(SecretError::Nonce(8))
        );
    }

    #[test]
    fn different_nonces_give_different_ciphertexts() {
        let k = key();
        let a = k.seal(&[1u8; NONCE_LEN], "t", "n", b"same value");
        let b = k.seal(&[2u8; NONCE_LEN], "t", "n", b"same value");
        assert_ne!(a, b);
    }

    #[test]
    fn key_text_forms() {
        let nonce = [3u8; NONCE_LEN];
        let sealed = key().seal(&nonce, "t", "n", b"v");
        for text in [
            B64,
            B64.trim_end_matches('='),
            &format!("  {HEX}\n"),
            &HEX.to_uppercase(),
        ] {
            let k = MasterKey::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(k.open(&nonce, "t", "n", &sealed).unwrap(), b"v", "{text:?}");
        }
        for bad in [
            "",
            "abc",
            &HEX[..62],
            &format!("{HEX}00"),
            &HEX.replace('0', "g"),
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd", // 30 bytes
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8fIA==", // 34 bytes
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8*",
        ] {
            let err = MasterKey::parse(bad).unwrap_err();
            assert!(matches!(err, SecretError::MalformedKey(_)), "{bad:?}");
            assert!(!err.to_string().contains(bad) || bad.is_empty());
        }
        assert_eq!(format!("{:?}", key()), "MasterKey(<redacted>)");
    }

    #[test]
    fn names_and_values() {
        for ok in ["A", "OPENAI_API_KEY", "db.password-2", &"x".repeat(128)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "ä", &"x".repeat(129), "$X"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_value(&"v".repeat(MAX_VALUE_BYTES)).is_ok());
        assert!(check_value(&"v".repeat(MAX_VALUE_BYTES + 1)).is_err());
    }
}
