//! Tenants' secrets in the server: the master key (from `CFLOW_MASTER_KEY` or
//! `<data_dir>/master.key`), sealing and opening values, and the per-tenant maskers that keep
//! those values (and common credentials) out of everything the platform stores or streams.
//!
//! The maskers live in memory, one per tenant that has secrets, built at start and rebuilt
//! whenever this server writes one of the tenant's secrets; every other tenant (and `*`) shares
//! the pattern-only masker. Values are held only inside the maskers' automata and are never
//! logged: no type here prints a value or the key in `Debug`.

use cflow_core::mask::Masker;
use cflow_core::secrets::{KEY_LEN, MasterKey, NONCE_LEN};
use cflow_store::{AuditContext, SealedSecret, SecretMeta, Store};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The file in the data directory that holds the generated master key.
pub const KEY_FILE: &str = "master.key";

/// The master key as configured (`server.master_key`, `CFLOW_MASTER_KEY`): its text, which
/// `Debug` never shows.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MasterKeyText(pub String);

impl std::fmt::Debug for MasterKeyText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why the master key could not be had; each message says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("CFLOW_MASTER_KEY is malformed: {0} — generate one with 'openssl rand -hex 32'")]
    Malformed(cflow_core::secrets::SecretError),
    #[error("the master key file {} is malformed: {source} — restore it from a backup (secrets sealed under another key cannot be opened)", path.display())]
    MalformedFile {
        path: PathBuf,
        source: cflow_core::secrets::SecretError,
    },
    #[error("the master key file {} has mode {mode:04o}, looser than 0600 — run 'chmod 600 {}'", path.display(), path.display())]
    Permissions { path: PathBuf, mode: u32 },
    #[error("cannot read or create the master key file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no random source for the master key: {0}")]
    Random(String),
}

/// The master key: the configured one, else `<data_dir>/master.key`, created with mode 0600 at
/// the first start. A key file readable by others is refused.
pub fn load_master_key(
    configured: Option<&MasterKeyText>,
    data_dir: &Path,
) -> Result<MasterKey, KeyError> {
    if let Some(text) = configured {
        return MasterKey::parse(&text.0).map_err(KeyError::Malformed);
    }
    let path = data_dir.join(KEY_FILE);
    let io = |source| KeyError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::metadata(&path) {
        Ok(meta) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(KeyError::Permissions {
                        path: path.clone(),
                        mode,
                    });
                }
            }
            let _ = meta;
            let text = std::fs::read_to_string(&path).map_err(io)?;
            MasterKey::parse(&text).map_err(|source| KeyError::MalformedFile {
                path: path.clone(),
                source,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; KEY_LEN];
            getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
            let key = MasterKey::from_bytes(&bytes);
            let text = hex::encode(bytes);
            bytes.fill(0);
            crate::serve::write_secret_file(&path, &text).map_err(io)?;
            tracing::info!(path = %path.display(), "created the master key for secrets");
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

/// The maskers of every tenant; cheap to clone (the event bus and the scheduler share it).
#[derive(Clone, Default)]
pub struct Masks(Arc<MasksInner>);

#[derive(Default)]
struct MasksInner {
    by_tenant: RwLock<HashMap<String, Masker>>,
    patterns_only: Masker,
}

impl Masks {
    /// Runs `f` with `tenant`'s masker (the pattern-only one for a tenant without secrets).
    /// Maskers are swapped only on secret writes, so the read lock is uncontended.
    pub fn with<R>(&self, tenant: &str, f: impl FnOnce(&Masker) -> R) -> R {
        let map = self.0.by_tenant.read().unwrap_or_else(|e| e.into_inner());
        f(map.get(tenant).unwrap_or(&self.0.patterns_only))
    }

    /// Masks every string of a JSON value for `tenant`.
    pub fn json(&self, tenant: &str, v: &mut serde_json::Value) -> bool {
        self.with(tenant, |m| m.mask_json(v))
    }

    /// Masks a string in place for `tenant`.
    pub fn string(&self, tenant: &str, s: &mut String) -> bool {
        self.with(tenant, |m| m.mask_string(s))
    }

    fn replace(&self, tenant: &str, masker: Option<Masker>) {
        let mut map = self.0.by_tenant.write().unwrap_or_else(|e| e.into_inner());
        match masker {
            Some(m) => map.insert(tenant.to_string(), m),
            None => map.remove(tenant),
        };
    }
}

impl std::fmt::Debug for Masks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.by_tenant.read().map_or(0, |m| m.len());
        f.debug_struct("Masks").field("tenants", &n).finish()
    }
}

/// Sealing, opening and masking; cheap to clone.
#[derive(Clone, Debug)]
pub struct Secrets {
    key: Arc<MasterKey>,
    store: Store,
    masks: Masks,
    /// Rebuilds run one at a time: two concurrent writes of a tenant could otherwise install
    /// their maskers in the opposite order of their reads, leaving the older one in place.
    rebuild: Arc<tokio::sync::Mutex<()>>,
}

/// A failure of the secrets layer: the store's, or a value that does not open.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(transparent)]
    Store(#[from] cflow_store::Error),
    #[error("secret '{name}' does not open under this server's master key: {source}")]
    Open {
        name: String,
        source: cflow_core::secrets::SecretError,
    },
    #[error("no random source for a nonce: {0}")]
    Random(String),
}

impl Secrets {
    /// Builds the maskers of every tenant that has secrets. A secret that does not open (sealed
    /// under another key) is left out of its tenant's masker with a warning naming it.
    pub async fn load(key: MasterKey, store: Store, masks: Masks) -> Result<Secrets, SecretsError> {
        let secrets = Secrets {
            key: Arc::new(key),
            store,
            masks,
            rebuild: Arc::default(),
        };
        for tenant in secrets.store.secret_tenants().await? {
            secrets.refresh(&tenant).await?;
        }
        Ok(secrets)
    }

    pub fn masks(&self) -> &Masks {
        &self.masks
    }

    /// Seals and stores a secret (audited with its name only), then rebuilds the tenant's
    /// masker so that the new value is masked from now on.
    pub async fn put(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        name: &str,
        value: &str,
    ) -> Result<SecretMeta, SecretsError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| SecretsError::Random(e.to_string()))?;
        let ciphertext = self.key.seal(&nonce, tenant_id, name, value.as_bytes());
        let sealed = SealedSecret {
            nonce: nonce.to_vec(),
            ciphertext,
        };
        let meta = self.store.secret_put(ctx, tenant_id, name, sealed).await?;
        self.refresh(tenant_id).await?;
        Ok(meta)
    }

    /// Deletes a secret (audited) and rebuilds the tenant's masker.
    pub async fn delete(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        name: &str,
    ) -> Result<(), SecretsError> {
        self.store.secret_delete(ctx, tenant_id, name).await?;
        self.refresh(tenant_id).await?;
        Ok(())
    }

    /// A secret's value in the clear, for the server's own use (model drivers); no route
    /// returns it.
    pub async fn value(&self, tenant_id: &str, name: &str) -> Result<Option<String>, SecretsError> {
        let Some(sealed) = self.store.secret_get(tenant_id, name).await? else {
            return Ok(None);
        };
        self.open(tenant_id, name, &sealed).map(Some)
    }

    fn open(&self, tenant_id: &str, name: &str, s: &SealedSecret) -> Result<String, SecretsError> {
        let bytes = self
            .key
            .open(&s.nonce, tenant_id, name, &s.ciphertext)
            .map_err(|source| SecretsError::Open {
                name: name.to_string(),
                source,
            })?;
        // Values are stored from `&str`, so they are UTF-8 unless the row was forged, which the
        // tag rules out.
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Rebuilds `tenant_id`'s masker from its stored secrets.
    async fn refresh(&self, tenant_id: &str) -> Result<(), SecretsError> {
        let _one_at_a_time = self.rebuild.lock().await;
        let all = self.store.secret_all(tenant_id).await?;
        let mut values = Vec::with_capacity(all.len());
        for (name, sealed) in &all {
            match self.open(tenant_id, name, sealed) {
                Ok(v) => values.push(v),
                Err(e) => tracing::warn!(tenant = tenant_id, error = %e, "cannot mask a secret"),
            }
        }
        let masker = (!values.is_empty()).then(|| Masker::new(values.iter().map(String::as_str)));
        self.masks.replace(tenant_id, masker);
        Ok(())
    }
}
