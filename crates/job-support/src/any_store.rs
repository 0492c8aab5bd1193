//! The store a configuration selects: Vault/OpenBao or the local directory, behind one type
//! the jobs hold.

use crate::store::local::LocalStore;
use crate::store::vault::VaultStore;
use crate::store::{KvEntry, SecretData, SecretStore, StoreError, WriteOutcome};
use crate::store_config::{StoreConfig, StoreLocation};

impl StoreConfig {
    /// Opens the store: for Vault, builds the client and logs in.
    pub async fn open(&self) -> Result<AnyStore, StoreError> {
        Ok(match &self.location {
            StoreLocation::Vault(settings) => {
                AnyStore::Vault(Box::new(VaultStore::connect((**settings).clone()).await?))
            }
            StoreLocation::Local { dir, mount } => AnyStore::Local(LocalStore::new(dir, mount)),
        })
    }
}

/// The configured store, whichever it is.
#[derive(Debug)]
pub enum AnyStore {
    /// Vault or OpenBao.
    Vault(Box<VaultStore>),
    /// Local directory.
    Local(LocalStore),
}

impl SecretStore for AnyStore {
    fn describe(&self) -> String {
        match self {
            Self::Vault(s) => s.describe(),
            Self::Local(s) => s.describe(),
        }
    }

    async fn read(&self, path: &str) -> Result<Option<KvEntry>, StoreError> {
        match self {
            Self::Vault(s) => s.read(path).await,
            Self::Local(s) => s.read(path).await,
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        match self {
            Self::Vault(s) => s.list(prefix).await,
            Self::Local(s) => s.list(prefix).await,
        }
    }

    async fn list_versions(
        &self,
        prefix: &str,
    ) -> Result<Option<std::collections::BTreeMap<String, crate::EntryVersion>>, StoreError> {
        match self {
            Self::Vault(s) => s.list_versions(prefix).await,
            Self::Local(s) => s.list_versions(prefix).await,
        }
    }

    async fn write(
        &self,
        path: &str,
        data: &SecretData,
        cas: u64,
    ) -> Result<WriteOutcome, StoreError> {
        match self {
            Self::Vault(s) => s.write(path, data, cas).await,
            Self::Local(s) => s.write(path, data, cas).await,
        }
    }

    async fn destroy_versions(&self, path: &str, versions: &[u64]) -> Result<(), StoreError> {
        match self {
            Self::Vault(s) => s.destroy_versions(path, versions).await,
            Self::Local(s) => s.destroy_versions(path, versions).await,
        }
    }

    async fn read_version(
        &self,
        path: &str,
        version: u64,
    ) -> Result<Option<SecretData>, StoreError> {
        match self {
            Self::Vault(s) => s.read_version(path, version).await,
            Self::Local(s) => s.read_version(path, version).await,
        }
    }
}
