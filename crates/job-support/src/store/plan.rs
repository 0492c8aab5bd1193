//! The store a `plan` (dry run) works on: every read goes to the real store, every write is
//! recorded instead of made. Later reads in the same run see the recorded writes, so a job's
//! decisions after its first write (a client issued under the CA it just created) are the
//! ones a real run would take, and the recorded list is what that run would write.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{EntryVersion, KvEntry, SecretData, SecretStore, StoreError, WriteOutcome};

/// One write a run would make.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoreChange {
    /// Path relative to the mount.
    pub path: String,
    /// What would happen to it.
    pub action: StoreAction,
    /// The names of the fields the write would add, change or remove (never their values).
    pub fields: Vec<String>,
}

/// What a write would do to an entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreAction {
    /// Create the entry (version 1).
    Create,
    /// Write version `to` over version `from`.
    Update {
        /// The version written over.
        from: u64,
        /// The version that would be written.
        to: u64,
    },
    /// Destroy the data of these versions.
    DestroyVersions(Vec<u64>),
}

impl StoreAction {
    /// A word for a table.
    #[must_use]
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update { .. } => "update",
            Self::DestroyVersions(_) => "destroy",
        }
    }
}

/// A [`SecretStore`] that reads through to `inner` and records writes without making them.
#[derive(Debug)]
pub struct PlanStore<'a, S> {
    inner: &'a S,
    state: Mutex<Recorded>,
}

#[derive(Debug, Default)]
struct Recorded {
    /// The entries as the recorded writes left them.
    entries: BTreeMap<String, KvEntry>,
    changes: Vec<StoreChange>,
}

impl<'a, S: SecretStore> PlanStore<'a, S> {
    /// A plan over `inner`, with nothing recorded yet.
    pub fn new(inner: &'a S) -> Self {
        Self {
            inner,
            state: Mutex::new(Recorded::default()),
        }
    }

    /// The writes recorded so far, in order.
    #[must_use]
    pub fn changes(&self) -> Vec<StoreChange> {
        self.recorded().changes.clone()
    }

    fn recorded(&self) -> std::sync::MutexGuard<'_, Recorded> {
        // A panic while holding the lock leaves plain data behind, still consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn current(&self, path: &str) -> Result<Option<KvEntry>, StoreError> {
        let planned = self.recorded().entries.get(path).cloned();
        match planned {
            Some(entry) => Ok(Some(entry)),
            None => self.inner.read(path).await,
        }
    }
}

/// The fields `after` adds, changes or removes against `before`.
fn changed_fields(before: Option<&SecretData>, after: &SecretData) -> Vec<String> {
    let mut fields: Vec<String> = after
        .iter()
        .filter(|(field, value)| before.and_then(|b| b.get(field)) != Some(*value))
        .map(|(field, _)| field.to_owned())
        .collect();
    if let Some(before) = before {
        fields.extend(
            before
                .fields()
                .filter(|f| after.get(f).is_none())
                .map(str::to_owned),
        );
    }
    fields.sort();
    fields
}

impl<S: SecretStore> SecretStore for PlanStore<'_, S> {
    fn describe(&self) -> String {
        format!("plan (nothing written) over {}", self.inner.describe())
    }

    async fn read(&self, path: &str) -> Result<Option<KvEntry>, StoreError> {
        self.current(path).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut names = self.inner.list(prefix).await?;
        let under = format!("{prefix}/");
        names.extend(
            self.recorded()
                .entries
                .keys()
                .filter_map(|path| path.strip_prefix(&under))
                .filter(|name| !name.contains('/'))
                .map(str::to_owned),
        );
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// The real store's answer while no write under `prefix` is recorded; afterwards `None`, so
    /// the caller reads the entries (and sees the recorded ones).
    async fn list_versions(
        &self,
        prefix: &str,
    ) -> Result<Option<BTreeMap<String, EntryVersion>>, StoreError> {
        let under = format!("{prefix}/");
        let recorded_under = self
            .recorded()
            .entries
            .keys()
            .any(|path| path.starts_with(&under));
        if recorded_under {
            return Ok(None);
        }
        self.inner.list_versions(prefix).await
    }

    async fn write(
        &self,
        path: &str,
        data: &SecretData,
        cas: u64,
    ) -> Result<WriteOutcome, StoreError> {
        super::check_path(path).map_err(|detail| StoreError::Malformed {
            operation: "write",
            path: path.to_owned(),
            detail,
        })?;
        let before = self.current(path).await?;
        let version = before.as_ref().map_or(0, |e| e.version);
        if version != cas {
            return Ok(WriteOutcome::Conflict);
        }
        let change = StoreChange {
            path: path.to_owned(),
            action: if version == 0 {
                StoreAction::Create
            } else {
                StoreAction::Update {
                    from: version,
                    to: version + 1,
                }
            },
            fields: changed_fields(before.as_ref().map(|e| &e.data), data),
        };
        let mut recorded = self.recorded();
        recorded.entries.insert(
            path.to_owned(),
            KvEntry {
                data: data.clone(),
                version: version + 1,
            },
        );
        recorded.changes.push(change);
        Ok(WriteOutcome::Written {
            version: version + 1,
        })
    }

    async fn destroy_versions(&self, path: &str, versions: &[u64]) -> Result<(), StoreError> {
        if !versions.is_empty() {
            self.recorded().changes.push(StoreChange {
                path: path.to_owned(),
                action: StoreAction::DestroyVersions(versions.to_vec()),
                fields: Vec::new(),
            });
        }
        Ok(())
    }

    async fn read_version(
        &self,
        path: &str,
        version: u64,
    ) -> Result<Option<SecretData>, StoreError> {
        let planned = self
            .recorded()
            .entries
            .get(path)
            .filter(|e| e.version == version)
            .map(|e| e.data.clone());
        match planned {
            Some(data) => Ok(Some(data)),
            None => self.inner.read_version(path, version).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::LocalStore;

    fn data(pairs: &[(&str, &str)]) -> SecretData {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[tokio::test]
    async fn writes_are_recorded_seen_by_later_reads_and_never_made() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path(), "secret");
        store
            .write("pki/ca", &data(&[("cert", "a"), ("key", "k")]), 0)
            .await
            .unwrap();
        let plan = PlanStore::new(&store);

        // A create-only write over an existing entry conflicts, as it would for real.
        assert_eq!(
            plan.write("pki/ca", &data(&[("cert", "b")]), 0)
                .await
                .unwrap(),
            WriteOutcome::Conflict
        );
        assert_eq!(
            plan.write(
                "pki/ca",
                &data(&[("cert", "b"), ("key", "k"), ("crl", "c")]),
                1
            )
            .await
            .unwrap(),
            WriteOutcome::Written { version: 2 }
        );
        plan.write("pki/clients/alice", &data(&[("p12", "x")]), 0)
            .await
            .unwrap();
        plan.destroy_versions("pki/ca", &[1]).await.unwrap();

        // The plan sees its own writes...
        let read = plan.read("pki/ca").await.unwrap().unwrap();
        assert_eq!((read.version, read.data.get("crl")), (2, Some("c")));
        assert_eq!(plan.list("pki/clients").await.unwrap(), vec!["alice"]);
        // Versions under a prefix with recorded writes come from reads, not the real store.
        assert!(plan.list_versions("pki/clients").await.unwrap().is_none());
        assert_eq!(
            plan.list_versions("istio").await.unwrap(),
            store.list_versions("istio").await.unwrap()
        );
        assert_eq!(
            plan.read_version("pki/ca", 1)
                .await
                .unwrap()
                .unwrap()
                .get("cert"),
            Some("a")
        );
        // ...the store does not.
        let stored = store.read("pki/ca").await.unwrap().unwrap();
        assert_eq!((stored.version, stored.data.get("cert")), (1, Some("a")));
        assert!(store.read("pki/clients/alice").await.unwrap().is_none());
        assert!(store.list("pki/clients").await.unwrap().is_empty());

        assert_eq!(
            plan.changes(),
            vec![
                StoreChange {
                    path: "pki/ca".into(),
                    action: StoreAction::Update { from: 1, to: 2 },
                    fields: vec!["cert".into(), "crl".into()],
                },
                StoreChange {
                    path: "pki/clients/alice".into(),
                    action: StoreAction::Create,
                    fields: vec!["p12".into()],
                },
                StoreChange {
                    path: "pki/ca".into(),
                    action: StoreAction::DestroyVersions(vec![1]),
                    fields: vec![],
                },
            ]
        );
    }

    #[tokio::test]
    async fn keeps_the_check_and_set_contract_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path(), "secret");
        let plan = PlanStore::new(&store);
        crate::store::assert_check_and_set_contract(&plan).await;
        assert!(store.read("istio/ca").await.unwrap().is_none());
        assert_eq!(plan.changes().len(), 2);
    }

    #[tokio::test]
    async fn a_removed_field_is_named_and_bad_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path(), "secret");
        store
            .write("a", &data(&[("x", "1"), ("y", "2")]), 0)
            .await
            .unwrap();
        let plan = PlanStore::new(&store);
        plan.write("a", &data(&[("x", "1")]), 1).await.unwrap();
        assert_eq!(plan.changes()[0].fields, vec!["y"]);
        assert!(plan.write("../a", &data(&[]), 0).await.is_err());
    }
}
