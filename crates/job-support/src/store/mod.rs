//! The secret store every job reads and writes: KV v2 semantics (versioned entries of string
//! fields, create-only and check-and-set writes), behind one small trait with two
//! implementations: Vault/OpenBao, and a local directory for running without a Vault.

use std::collections::BTreeMap;
use std::fmt;

use zeroize::Zeroize;

pub mod local;
pub mod plan;
#[cfg(any(test, feature = "test-support"))]
pub mod scripted;
pub mod vault;

/// The string fields of one KV entry. Values may be private keys: `Debug` shows field names
/// only, and the values are wiped on drop.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretData(BTreeMap<String, String>);

impl SecretData {
    /// An empty entry.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `field` to `value`.
    pub fn insert(&mut self, field: impl Into<String>, value: impl Into<String>) {
        self.0.insert(field.into(), value.into());
    }

    /// The value of `field`, if present.
    #[must_use]
    pub fn get(&self, field: &str) -> Option<&str> {
        self.0.get(field).map(String::as_str)
    }

    /// Field names and values, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Field names, sorted.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Whether the entry has no fields.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

impl FromIterator<(String, String)> for SecretData {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Drop for SecretData {
    fn drop(&mut self) {
        for value in self.0.values_mut() {
            value.zeroize();
        }
    }
}

/// One version of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The fields.
    pub data: SecretData,
    /// Its KV version (from 1), the `cas` value an update must name.
    pub version: u64,
}

/// Where an entry stands, as its metadata tells without its data being read: enough to see
/// that it changed since a run last read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryVersion {
    /// Its current version (from 1).
    pub version: u64,
    /// When its first version was written, as the store reports it. KV v2 numbers versions
    /// afresh after `kv metadata delete`, so an entry deleted with its history and written
    /// again can be back at the same version number; this tells the two apart.
    pub created: String,
    /// Whether the current version is deleted or destroyed (a read answers
    /// [`StoreError::Deleted`]).
    pub deleted: bool,
}

/// What a conditional write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Written; the new version.
    Written {
        /// The version just created.
        version: u64,
    },
    /// Not written: the entry was not at the expected version (for create-only: it exists).
    /// Someone else wrote first; re-read and adopt what they wrote.
    Conflict,
}

/// A failure of the store, classified for the exit code and the retry decision.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached (connection refused, timeout, 5xx), after retries.
    #[error("{operation} '{path}' failed: {detail}")]
    Unavailable {
        /// `read`, `write`, `log in to`.
        operation: &'static str,
        /// Mount and path, as `secret/istio/ca`.
        path: String,
        /// What happened on the last attempt.
        detail: String,
    },
    /// The store refused the credentials (login, or a token that is invalid or expired) or
    /// the policy refused the operation.
    #[error("{operation} '{path}' was refused: {detail}")]
    Denied {
        /// `read`, `write`, `log in to`.
        operation: &'static str,
        /// Mount and path.
        path: String,
        /// The store's own explanation (Vault's `errors` array).
        detail: String,
        /// Whether the credentials were refused (authentication) rather than the operation
        /// (policy).
        login: bool,
    },
    /// What answers at `VAULT_ADDR`, or the mount `VAULT_KV_MOUNT` names, is not a KV version 2
    /// store: a web server that is not Vault, no such mount, a KV version 1 mount.
    #[error("invalid {variable}: {problem}")]
    Misconfigured {
        /// The variable to correct.
        variable: &'static str,
        /// What answered, and how, naming the request.
        problem: String,
    },
    /// The entry exists but its latest version is deleted or destroyed. It is not absent: a
    /// job that took it for absent would create what the entry's history still holds (a root
    /// CA, a user's certificate).
    #[error("invalid state at '{path}': {problem}")]
    Deleted {
        /// Mount and path.
        path: String,
        /// The deleted version.
        version: u64,
        /// When and how it was deleted, and how to restore it or start over.
        problem: String,
    },
    /// Vault refused the request for a reason retrying cannot fix (a 4xx other than 403: no
    /// such mount, a malformed request).
    #[error("{operation} '{path}' was refused: {detail}")]
    Refused {
        /// `read`, `write`, `list`.
        operation: &'static str,
        /// Mount and path.
        path: String,
        /// Vault's answer, its `errors` array included.
        detail: String,
    },
    /// The store answered with something that is not a KV v2 entry of string fields.
    #[error("{operation} '{path}' failed: {detail}")]
    Malformed {
        /// `read`, `write`.
        operation: &'static str,
        /// Mount and path.
        path: String,
        /// What was wrong.
        detail: String,
    },
}

/// KV v2 operations on one mount. Paths are relative to the mount (`istio/ca`).
#[allow(async_fn_in_trait)] // Used with concrete types only; no Send bound is needed.
pub trait SecretStore {
    /// Where the store lives, for log lines (`vault https://vault:8200 mount secret`).
    fn describe(&self) -> String;

    /// The current version of `path`, or `None` when it does not exist. An entry whose latest
    /// version is deleted exists: that is [`StoreError::Deleted`], never `None`.
    async fn read(&self, path: &str) -> Result<Option<KvEntry>, StoreError>;

    /// The names of the entries directly under `prefix` (not recursive, no trailing `/`),
    /// sorted; empty when there are none.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;

    /// The current version of every entry directly under `prefix` (not recursive), in as few
    /// requests as the store allows, without reading their data; `Ok(None)` when the store
    /// cannot answer this without a request per entry (the caller then reads the entries).
    /// Empty when there are none.
    async fn list_versions(
        &self,
        prefix: &str,
    ) -> Result<Option<BTreeMap<String, EntryVersion>>, StoreError>;

    /// Writes `data` as the next version of `path` if its current version is `cas`
    /// (0: only if it does not exist yet).
    async fn write(
        &self,
        path: &str,
        data: &SecretData,
        cas: u64,
    ) -> Result<WriteOutcome, StoreError>;

    /// Permanently removes the data of `versions` of `path` (KV v2 `destroy`): the version
    /// numbers stay taken, their data is gone, and a read of a destroyed latest version is
    /// [`StoreError::Deleted`]. Versions that do not exist, or are already destroyed, are
    /// skipped, as Vault does, so a repeated call after a crash is harmless.
    async fn destroy_versions(&self, path: &str, versions: &[u64]) -> Result<(), StoreError>;

    /// The data of one earlier `version` of `path`, as `vault kv get -version=N` reads it:
    /// `None` when that version does not exist, is deleted or was destroyed. Used to look at
    /// what a destroy would remove before it does.
    async fn read_version(
        &self,
        path: &str,
        version: u64,
    ) -> Result<Option<SecretData>, StoreError>;
}

/// Rejects paths that could escape the mount or the state directory.
pub(crate) fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    for segment in path.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(format!(
                "'{path}' has an empty, '.' or '..' segment; use a relative path like 'istio/ca'"
            ));
        }
        if segment.chars().any(|c| c.is_control() || c == '\\') {
            return Err(format!("'{path}' holds a control character or backslash"));
        }
    }
    Ok(())
}

/// The check-and-set contract every store keeps, as Vault's KV v2 does: `cas = 0` creates
/// only, a stale `cas` is a conflict that changes nothing, the right one writes the next
/// version. Each store's tests run it on a fresh store.
#[cfg(test)]
pub(crate) async fn assert_check_and_set_contract(store: &impl SecretStore) {
    let value =
        |v: &str| -> SecretData { [("field".to_owned(), v.to_owned())].into_iter().collect() };
    assert_eq!(store.read("istio/ca").await.unwrap(), None);
    let outcomes = [
        (value("a"), 0, WriteOutcome::Written { version: 1 }),
        (value("b"), 0, WriteOutcome::Conflict),
        (value("b"), 2, WriteOutcome::Conflict),
        (value("b"), 1, WriteOutcome::Written { version: 2 }),
    ];
    for (data, cas, expected) in outcomes {
        assert_eq!(
            store.write("istio/ca", &data, cas).await.unwrap(),
            expected,
            "cas {cas}"
        );
    }
    let entry = store.read("istio/ca").await.unwrap().unwrap();
    assert_eq!((entry.version, entry.data.get("field")), (2, Some("b")));
    assert!(store.read("istio/other").await.unwrap().is_none());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_field_names_only() {
        let mut data = SecretData::new();
        data.insert("root-key.pem", "-----BEGIN PRIVATE KEY-----secret");
        assert_eq!(format!("{data:?}"), "{\"root-key.pem\"}");
    }

    #[test]
    fn paths_cannot_escape() {
        assert!(check_path("istio/ca").is_ok());
        for bad in ["", "/istio", "istio/", "../x", "a/./b", "a//b", "a\\b"] {
            assert!(check_path(bad).is_err(), "{bad} accepted");
        }
    }
}
