//! The store and the keyring together: the one place values are sealed before they
//! are written and opened after they are read. A server without a key has a vault
//! that refuses, saying how to make a key.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::keyring::{Keyring, MAKE_A_KEY, OpenError};
use super::{MAX_VALUE_BYTES, binding};
use crate::auth::ProjectId;
use crate::store::{PutOutcome, Store, StoreError};

/// Why a vault could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(
        "this server has no secrets key: set SLIPWAY_SECRETS_KEY to 32 random bytes in base64 \
         (`{MAKE_A_KEY}`), or SLIPWAY_SECRETS_KEY_FILE to a file holding them"
    )]
    NoKey,
    #[error("secret `{name}`: {error}")]
    Open { name: String, error: OpenError },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Opened values, by secret name. Never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Opened(pub BTreeMap<String, String>);

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

#[derive(Debug, Clone)]
pub struct Vault {
    store: Store,
    keys: Option<Arc<Keyring>>,
}

impl Vault {
    pub fn new(store: Store, keys: Option<Keyring>) -> Self {
        Vault { store, keys: keys.map(Arc::new) }
    }

    fn keys(&self) -> Result<&Keyring, VaultError> {
        self.keys.as_deref().ok_or(VaultError::NoKey)
    }

    /// Seals and stores a value (at most [`MAX_VALUE_BYTES`], checked by the caller).
    pub async fn put(&self, project: ProjectId, name: &str, value: &str, by: &str) -> Result<PutOutcome, VaultError> {
        debug_assert!(value.len() <= MAX_VALUE_BYTES);
        let sealed = self.keys()?.seal(&binding(project, name), value.as_bytes());
        Ok(self.store.put_secret(project, name, &sealed, by).await?)
    }

    /// The values of the named secrets of a project that exist.
    pub async fn open(&self, project: ProjectId, names: &[String]) -> Result<Opened, VaultError> {
        if names.is_empty() {
            return Ok(Opened::default());
        }
        let keys = self.keys()?;
        let rows = self.store.sealed_secrets(project, names).await?;
        self.open_rows(keys, rows)
    }

    /// Every value of a project (to refuse one sent in a plain field). Without a key
    /// the project holds none that this server could have stored.
    pub async fn open_all(&self, project: ProjectId) -> Result<Opened, VaultError> {
        let Some(keys) = self.keys.as_deref() else { return Ok(Opened::default()) };
        let rows = self.store.all_sealed_secrets(project).await?;
        self.open_rows(keys, rows)
    }

    fn open_rows(&self, keys: &Keyring, rows: Vec<crate::store::SealedRow>) -> Result<Opened, VaultError> {
        let mut opened = BTreeMap::new();
        for row in rows {
            let value = keys
                .open(&binding(row.project_id, &row.name), &row.sealed())
                .map_err(|error| VaultError::Open { name: row.name.clone(), error })?;
            // Values are stored from JSON strings: always UTF-8.
            let value = String::from_utf8(value)
                .map_err(|_| VaultError::Open { name: row.name.clone(), error: OpenError::Corrupt })?;
            opened.insert(row.name, value);
        }
        Ok(Opened(opened))
    }

    /// Re-seals every value sealed under another key with the current one; returns
    /// how many were moved. Values set meanwhile are sealed under the current key
    /// already and are left as they are.
    pub async fn rotate(&self) -> Result<u64, VaultError> {
        let keys = self.keys()?;
        let mut moved = 0;
        loop {
            let rows = self.store.sealed_under_other_keys(keys.current_id(), 256).await?;
            if rows.is_empty() {
                return Ok(moved);
            }
            for row in rows {
                let bound = binding(row.project_id, &row.name);
                let value = keys
                    .open(&bound, &row.sealed())
                    .map_err(|error| VaultError::Open { name: row.name.clone(), error })?;
                if self.store.reseal(&row, &keys.seal(&bound, &value)).await? {
                    moved += 1;
                }
            }
        }
    }
}
