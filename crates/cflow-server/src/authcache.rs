//! A short-lived cache of successful authentications, so that a busy key costs one database
//! read per second instead of one per request.
//!
//! Why it is safe: entries live at most [`TTL_MS`]; a key revoked through this server is dropped
//! at once ([`AuthCache::forget`]), one revoked through another node stops working within the
//! TTL (the platform promises revocation within a second); expiry is checked on every hit; only
//! the SHA-256 of the secret is kept and compared in constant time; failures are never cached.

use cflow_core::apikey;
use cflow_store::ApiKey;
use std::collections::HashMap;
use std::sync::Mutex;

/// How long a successful authentication is reused.
pub const TTL_MS: i64 = 1_000;
/// Most keys remembered; beyond it stale entries are dropped, then everything.
const MAX_ENTRIES: usize = 100_000;

struct Entry {
    secret_hash: String,
    key: ApiKey,
    checked_at: i64,
}

#[derive(Default)]
pub struct AuthCache {
    by_key_id: Mutex<HashMap<String, Entry>>,
}

impl AuthCache {
    /// The live key for `token` if it was authenticated less than [`TTL_MS`] ago.
    pub fn get(&self, token: &str, now: i64) -> Option<ApiKey> {
        let parsed = apikey::parse_token(token)?;
        let map = self.by_key_id.lock().unwrap_or_else(|e| e.into_inner());
        let e = map.get(parsed.id)?;
        let fresh = now.saturating_sub(e.checked_at) < TTL_MS;
        let live = e.key.expires_at.is_none_or(|at| at > now);
        (fresh && live && apikey::verify_secret(parsed.secret, &e.secret_hash))
            .then(|| e.key.clone())
    }

    /// Remembers a successful authentication of `token` as `key`.
    pub fn put(&self, token: &str, key: &ApiKey, now: i64) {
        let Some(parsed) = apikey::parse_token(token) else {
            return;
        };
        let mut map = self.by_key_id.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, e| now.saturating_sub(e.checked_at) < TTL_MS);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(
            parsed.id.to_string(),
            Entry {
                secret_hash: apikey::hash_secret(parsed.secret),
                key: key.clone(),
                checked_at: now,
            },
        );
    }

    /// Drops a key (it was just revoked).
    pub fn forget(&self, key_id: &str) {
        let mut map = self.by_key_id.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(key_id);
    }

    /// Drops stale entries.
    pub fn shrink(&self, now: i64) {
        let mut map = self.by_key_id.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, e| now.saturating_sub(e.checked_at) < TTL_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cflow_core::Role;

    fn key(id: &str, expires_at: Option<i64>) -> ApiKey {
        ApiKey {
            id: id.into(),
            tenant_id: "t".into(),
            principal_id: "p".into(),
            name: "k".into(),
            role: Role::Viewer,
            project: None,
            created_at: 0,
            expires_at,
            revoked_at: None,
            last_used_at: None,
        }
    }

    #[test]
    fn hits_only_with_the_right_secret_while_fresh_and_live() {
        let (id, token) = apikey::format_token([1; 8], [2; 32]);
        let (_, wrong) = apikey::format_token([1; 8], [3; 32]);
        let cache = AuthCache::default();
        assert!(cache.get(&token, 0).is_none());
        cache.put(&token, &key(&id, Some(5_000)), 1_000);
        assert!(cache.get(&token, 1_500).is_some());
        assert!(
            cache.get(&wrong, 1_500).is_none(),
            "a wrong secret never hits"
        );
        assert!(cache.get(&token, 1_000 + TTL_MS).is_none(), "stale");
        cache.put(&token, &key(&id, Some(5_000)), 4_900);
        assert!(cache.get(&token, 5_000).is_none(), "expired");
        cache.put(&token, &key(&id, None), 6_000);
        cache.forget(&id);
        assert!(cache.get(&token, 6_001).is_none(), "forgotten");
    }
}
