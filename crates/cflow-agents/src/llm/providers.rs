//! The providers of an attempt: one [`Resilient`] client per provider, cached by the driver
//! so that its circuit breaker and connection pool are the worker's, and failover along an
//! attempt's chain of them.

use super::LlmConfig;
use crate::model::ProviderSetup;
use cflow_llm::{
    Answer, Client, Event, LlmError, ProviderConfig, ProviderKind, Request, Resilient,
};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Tries each provider of the chain in order (each retries on its own, behind its shared
/// breaker); a retryable failure or an open breaker fails over to the next. `Err(None)`:
/// stopped; `Err(Some(message))`: failed, saying what each provider answered.
pub(super) async fn failover(
    chain: &[Link],
    req: &Request,
    tx: &mpsc::Sender<Event>,
    stop: &CancellationToken,
) -> Result<Answer, Option<String>> {
    let mut errors: Vec<(&str, LlmError)> = Vec::new();
    for (i, Link { name, client, .. }) in chain.iter().enumerate() {
        match client.complete(req, Some(tx), stop).await {
            Ok(answer) => return Ok(answer),
            Err(LlmError::Cancelled) => return Err(None),
            Err(e) if e.is_retryable() || matches!(e, LlmError::CircuitOpen { .. }) => {
                if let Some(next) = chain.get(i + 1) {
                    let msg = format!("failing over from {name} to {}", next.name);
                    let _ = tx.send(Event::Notice(msg)).await;
                }
                errors.push((name, e));
            }
            Err(e) => return Err(Some(format!("the model call to {name} failed: {e}"))),
        }
    }
    if stop.is_cancelled() {
        return Err(None);
    }
    Err(Some(match errors.as_slice() {
        [(name, e)] => format!("the model call to {name} failed: {e}"),
        _ => format!(
            "every model provider failed — {}",
            errors
                .iter()
                .map(|(n, e)| format!("{n}: {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }))
}

/// One provider of an attempt's chain.
pub(super) struct Link {
    /// The configured name: what usage is recorded under.
    pub(super) name: String,
    /// The model asked for.
    pub(super) model: String,
    pub(super) client: Arc<Resilient>,
}

/// One [`Resilient`] per provider, shared by all loops of a driver so that a provider's
/// breaker and connection pool are the worker's, not the loop's.
pub(super) struct ProviderCache {
    /// Keys the hash of API keys: random per process, so the hash means nothing elsewhere.
    hasher: RandomState,
    map: Mutex<HashMap<String, Arc<Resilient>>>,
}

impl Default for ProviderCache {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl ProviderCache {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Resilient>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What identifies a provider: everything that changes where and as whom it is called.
    pub(super) fn key(&self, p: &ProviderSetup) -> String {
        let secret = self
            .hasher
            .hash_one((&p.api_key, &p.extra_headers, &p.azure_api_version));
        format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{secret:016x}",
            p.name, p.kind, p.base_url, p.model
        )
    }

    /// The chain for a setup's providers: the primary first (with `model` in place of its
    /// own when the task names one), then the failovers.
    pub(super) fn chain(
        &self,
        providers: &[ProviderSetup],
        model: Option<&str>,
        config: &LlmConfig,
    ) -> Result<Vec<Link>, String> {
        let mut chain = Vec::with_capacity(providers.len());
        for (i, p) in providers.iter().enumerate() {
            let mut p = std::borrow::Cow::Borrowed(p);
            if i == 0
                && let Some(m) = model
            {
                p.to_mut().model = m.to_string();
            }
            chain.push(Link {
                name: p.name.clone(),
                model: p.model.clone(),
                client: self.get(&p, config)?,
            });
        }
        Ok(chain)
    }

    fn get(&self, p: &ProviderSetup, config: &LlmConfig) -> Result<Arc<Resilient>, String> {
        let key = self.key(p);
        if let Some(r) = self.lock().get(&key) {
            return Ok(r.clone());
        }
        // Built outside the lock: creating an HTTP client loads TLS roots.
        let kind = match p.kind.as_str() {
            "anthropic" => ProviderKind::Anthropic,
            "openai" => ProviderKind::OpenAi,
            other => {
                return Err(format!(
                    "provider '{}' has kind '{other}': expected 'anthropic' (Messages API) or \
                     'openai' (chat completions) — fix the provider's configuration",
                    p.name
                ));
            }
        };
        let mut cfg = ProviderConfig::new(&p.name, kind, &p.base_url, &p.model);
        cfg.api_key = p.api_key.clone();
        cfg.extra_headers = p.extra_headers.clone();
        cfg.azure_api_version = p.azure_api_version.clone();
        cfg.timeouts = config.timeouts;
        cfg.max_retries = config.max_retries;
        let client = Client::new(cfg).map_err(|e| format!("provider '{}': {e}", p.name))?;
        let fresh = Arc::new(
            Resilient::new(vec![client])
                .with_retry(config.retry)
                .with_breaker(config.breaker),
        );
        let mut map = self.lock();
        if map.len() >= config.cache_cap {
            // Providers no loop holds lose their breaker state; busy ones keep it.
            map.retain(|_, r| Arc::strong_count(r) > 1);
        }
        Ok(map.entry(key).or_insert(fresh).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_key_never_holds_the_api_key() {
        let cache = ProviderCache::default();
        let mut p = ProviderSetup {
            name: "anthropic".into(),
            kind: "anthropic".into(),
            base_url: "https://api.anthropic.com".into(),
            model: "m".into(),
            api_key: Some("sk-secret-123".into()),
            extra_headers: Vec::new(),
            azure_api_version: None,
        };
        let a = cache.key(&p);
        assert!(!a.contains("sk-secret"));
        p.api_key = Some("sk-other".into());
        assert_ne!(a, cache.key(&p), "a rotated key is another provider");
    }
}
