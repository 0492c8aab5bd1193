//! A test double of the secret store: an in-memory KV v2 mount with the same check-and-set
//! rules as Vault's (`cas = 0` creates only, `cas = N` writes only over version N; a refused
//! write is a conflict, not an error), plus a script of interventions that fire at exact
//! points of a run: "just before the 2nd write to `pki/ca`, another run writes this", or
//! "the next read of `pki/issuer` fails". A decision module driven through it reaches its
//! conflict, adopt and retry branches deterministically, in microseconds, without the race
//! timing a real server would need.
//!
//! The KV rules copied here are Vault's KV v2 ones (vault-plugin-secrets-kv, `path_data.go`:
//! a `cas` that does not match the current version answers 400 "check-and-set parameter did
//! not match the current version"; `cas = 0` succeeds only when the key does not exist); the
//! Vault store turns that answer into [`WriteOutcome::Conflict`], and so does this double.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

use super::{EntryVersion, KvEntry, SecretData, SecretStore, StoreError, WriteOutcome, check_path};

/// An operation the store saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// A read of the path.
    Read(String),
    /// A list of the prefix.
    List(String),
    /// A write of the path with this `cas`, and what came of it.
    Write {
        /// The path.
        path: String,
        /// The version the write named.
        cas: u64,
        /// Whether it was written.
        written: bool,
    },
    /// A destroy of these versions of the path, and whether it was performed.
    Destroy {
        /// The path.
        path: String,
        /// The versions named.
        versions: Vec<u64>,
        /// Whether it was performed (not a scripted failure).
        done: bool,
    },
}

/// The mount's contents: every version of every entry (`None`: destroyed). Interventions get
/// it mutably to act as a concurrent run would.
#[derive(Debug, Default, Clone)]
pub struct Contents {
    entries: BTreeMap<String, Vec<Option<SecretData>>>,
    /// When each entry was created, as a count of entries created so far: an entry removed
    /// with [`Contents::forget`] and written again is a new entry, as KV v2 reports it with a
    /// new `created_time`.
    created: BTreeMap<String, u64>,
    creations: u64,
}

impl Contents {
    /// The current version of `path` (`None` also when it is destroyed).
    #[must_use]
    pub fn current(&self, path: &str) -> Option<KvEntry> {
        let versions = self.entries.get(path)?;
        versions.last()?.as_ref().map(|data| KvEntry {
            data: data.clone(),
            version: versions.len() as u64,
        })
    }

    /// The data of `version` of `path`, as `vault kv get -version=N` reads it: `None` when
    /// it does not exist or was destroyed.
    #[must_use]
    pub fn version(&self, path: &str, version: u64) -> Option<SecretData> {
        let index = usize::try_from(version.checked_sub(1)?).ok()?;
        self.entries.get(path)?.get(index)?.clone()
    }

    /// How many versions `path` has had, destroyed ones included.
    #[must_use]
    pub fn versions(&self, path: &str) -> u64 {
        self.entries.get(path).map_or(0, |v| v.len() as u64)
    }

    /// Writes `data` over whatever is there (a concurrent writer that won); the new version.
    pub fn put(&mut self, path: &str, data: SecretData) -> u64 {
        if !self.entries.contains_key(path) {
            self.creations += 1;
            self.created.insert(path.to_owned(), self.creations);
        }
        let versions = self.entries.entry(path.to_owned()).or_default();
        versions.push(Some(data));
        versions.len() as u64
    }

    /// Destroys `versions` of `path` as KV v2 does: their data goes, their numbers stay;
    /// versions that do not exist are skipped.
    pub fn destroy(&mut self, path: &str, versions: &[u64]) {
        if let Some(stored) = self.entries.get_mut(path) {
            for &version in versions {
                let slot = usize::try_from(version)
                    .ok()
                    .and_then(|v| v.checked_sub(1))
                    .and_then(|i| stored.get_mut(i));
                if let Some(slot) = slot {
                    *slot = None;
                }
            }
        }
    }

    /// Removes every version of `path`, as `vault kv metadata delete` does.
    pub fn forget(&mut self, path: &str) {
        self.entries.remove(path);
        self.created.remove(path);
    }

    /// Every entry directly under `prefix` with its current version, as OpenBao's LIST on
    /// `<mount>/detailed-metadata/<prefix>` reports them.
    fn versions_under(&self, prefix: &str) -> BTreeMap<String, EntryVersion> {
        self.list(prefix)
            .into_iter()
            .map(|name| {
                let path = format!("{prefix}/{name}");
                let versions = &self.entries[&path];
                let entry = EntryVersion {
                    version: versions.len() as u64,
                    created: self.created.get(&path).copied().unwrap_or(0).to_string(),
                    deleted: versions.last().is_none_or(Option::is_none),
                };
                (name, entry)
            })
            .collect()
    }

    /// Applies a check-and-set write as Vault does.
    fn write(&mut self, path: &str, data: &SecretData, cas: u64) -> WriteOutcome {
        let current = self.entries.get(path).map_or(0, |v| v.len() as u64);
        if current == cas {
            WriteOutcome::Written {
                version: self.put(path, data.clone()),
            }
        } else {
            WriteOutcome::Conflict
        }
    }

    fn list(&self, prefix: &str) -> Vec<String> {
        let start = format!("{prefix}/");
        let mut names: Vec<String> = self
            .entries
            .keys()
            .filter_map(|k| k.strip_prefix(&start))
            .filter(|rest| !rest.contains('/'))
            .map(str::to_owned)
            .collect();
        names.sort();
        names
    }
}

type Intervention = Box<dyn FnOnce(&mut Contents) + Send>;

/// What fires at a scripted point.
enum Action {
    /// Change the contents first (another run acting), then let the operation proceed.
    Before(Intervention),
    /// Answer with this error instead of performing the operation.
    Fail(StoreError),
}

struct Step {
    kind: Kind,
    path: String,
    /// Fires at the n-th matching operation from the moment the step is added (1 = next).
    countdown: usize,
    action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    List,
    Write,
    Destroy,
}

#[derive(Default)]
struct State {
    contents: Contents,
    script: Vec<Step>,
    log: Vec<Operation>,
}

/// The scripted store. See the module documentation.
#[derive(Default)]
pub struct ScriptedStore {
    state: Mutex<State>,
}

impl fmt::Debug for ScriptedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedStore").finish_non_exhaustive()
    }
}

impl ScriptedStore {
    /// An empty mount with no script.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panicking test thread poisons the lock; the contents are still what they were.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A store holding `contents` (a copy of another store's mount), with no script.
    #[must_use]
    pub fn with_contents(contents: Contents) -> Self {
        let store = Self::default();
        store.state().contents = contents;
        store
    }

    /// Writes `data` at `path` unconditionally (set-up, not part of the run).
    pub fn put(&self, path: &str, data: SecretData) -> u64 {
        self.state().contents.put(path, data)
    }

    /// The current version of `path`.
    #[must_use]
    pub fn current(&self, path: &str) -> Option<KvEntry> {
        self.state().contents.current(path)
    }

    /// A copy of the whole mount.
    #[must_use]
    pub fn contents(&self) -> Contents {
        self.state().contents.clone()
    }

    /// Every operation so far, in order.
    #[must_use]
    pub fn log(&self) -> Vec<Operation> {
        self.state().log.clone()
    }

    /// The writes so far that were written, by path.
    #[must_use]
    pub fn written(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .filter_map(|op| match op {
                Operation::Write {
                    path,
                    written: true,
                    ..
                } => Some(path),
                _ => None,
            })
            .collect()
    }

    fn add(&self, kind: Kind, path: &str, nth: usize, action: Action) {
        self.state().script.push(Step {
            kind,
            path: path.to_owned(),
            countdown: nth.max(1),
            action,
        });
    }

    /// Just before the `nth` write to `path` (counting from now, 1 = the next), `act` changes
    /// the contents as a concurrent run would; then the write proceeds against them.
    pub fn before_write(
        &self,
        path: &str,
        nth: usize,
        act: impl FnOnce(&mut Contents) + Send + 'static,
    ) {
        self.add(Kind::Write, path, nth, Action::Before(Box::new(act)));
    }

    /// Just before the `nth` read of `path`, `act` changes the contents.
    pub fn before_read(
        &self,
        path: &str,
        nth: usize,
        act: impl FnOnce(&mut Contents) + Send + 'static,
    ) {
        self.add(Kind::Read, path, nth, Action::Before(Box::new(act)));
    }

    /// The `nth` write to `path` fails with `error` and changes nothing.
    pub fn fail_write(&self, path: &str, nth: usize, error: StoreError) {
        self.add(Kind::Write, path, nth, Action::Fail(error));
    }

    /// The `nth` destroy of versions of `path` fails with `error` and destroys nothing.
    pub fn fail_destroy(&self, path: &str, nth: usize, error: StoreError) {
        self.add(Kind::Destroy, path, nth, Action::Fail(error));
    }

    /// The `nth` read of `path` fails with `error`.
    pub fn fail_read(&self, path: &str, nth: usize, error: StoreError) {
        self.add(Kind::Read, path, nth, Action::Fail(error));
    }

    /// Runs the step due for this operation, if any; `Err` when it scripts a failure.
    fn fire(state: &mut State, kind: Kind, path: &str) -> Result<(), StoreError> {
        let mut due = None;
        for (i, step) in state.script.iter_mut().enumerate() {
            if step.kind == kind && step.path == path {
                // Steps queued for the same operation fire one per operation, in order.
                step.countdown = step.countdown.saturating_sub(1);
                if step.countdown == 0 && due.is_none() {
                    due = Some(i);
                }
            }
        }
        match due.map(|i| state.script.remove(i).action) {
            Some(Action::Before(act)) => {
                act(&mut state.contents);
                Ok(())
            }
            Some(Action::Fail(error)) => Err(error),
            None => Ok(()),
        }
    }
}

fn malformed(operation: &'static str, path: &str, detail: String) -> StoreError {
    StoreError::Malformed {
        operation,
        path: format!("scripted/{path}"),
        detail,
    }
}

impl SecretStore for ScriptedStore {
    fn describe(&self) -> String {
        "scripted in-memory store".into()
    }

    async fn read(&self, path: &str) -> Result<Option<KvEntry>, StoreError> {
        check_path(path).map_err(|d| malformed("read", path, d))?;
        let mut state = self.state();
        state.log.push(Operation::Read(path.to_owned()));
        Self::fire(&mut state, Kind::Read, path)?;
        let stored = state.contents.versions(path);
        if stored > 0 && state.contents.current(path).is_none() {
            // Vault answers a destroyed latest version with 404 and its metadata; the Vault
            // store reports that as `Deleted`, never as absent.
            return Err(StoreError::Deleted {
                path: format!("scripted/{path}"),
                version: stored,
                problem: format!("its latest version ({stored}) was destroyed"),
            });
        }
        Ok(state.contents.current(path))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        check_path(prefix).map_err(|d| malformed("list", prefix, d))?;
        let mut state = self.state();
        state.log.push(Operation::List(prefix.to_owned()));
        Self::fire(&mut state, Kind::List, prefix)?;
        Ok(state.contents.list(prefix))
    }

    async fn list_versions(
        &self,
        prefix: &str,
    ) -> Result<Option<BTreeMap<String, EntryVersion>>, StoreError> {
        check_path(prefix).map_err(|d| malformed("list", prefix, d))?;
        let mut state = self.state();
        state.log.push(Operation::List(prefix.to_owned()));
        Self::fire(&mut state, Kind::List, prefix)?;
        Ok(Some(state.contents.versions_under(prefix)))
    }

    async fn write(
        &self,
        path: &str,
        data: &SecretData,
        cas: u64,
    ) -> Result<WriteOutcome, StoreError> {
        check_path(path).map_err(|d| malformed("write", path, d))?;
        let mut state = self.state();
        if let Err(e) = Self::fire(&mut state, Kind::Write, path) {
            state.log.push(Operation::Write {
                path: path.to_owned(),
                cas,
                written: false,
            });
            return Err(e);
        }
        let outcome = state.contents.write(path, data, cas);
        state.log.push(Operation::Write {
            path: path.to_owned(),
            cas,
            written: matches!(outcome, WriteOutcome::Written { .. }),
        });
        Ok(outcome)
    }

    async fn read_version(
        &self,
        path: &str,
        version: u64,
    ) -> Result<Option<SecretData>, StoreError> {
        check_path(path).map_err(|d| malformed("read", path, d))?;
        let mut state = self.state();
        state.log.push(Operation::Read(path.to_owned()));
        Self::fire(&mut state, Kind::Read, path)?;
        Ok(state.contents.version(path, version))
    }

    async fn destroy_versions(&self, path: &str, versions: &[u64]) -> Result<(), StoreError> {
        check_path(path).map_err(|d| malformed("destroy versions of", path, d))?;
        let mut state = self.state();
        let fired = Self::fire(&mut state, Kind::Destroy, path);
        state.log.push(Operation::Destroy {
            path: path.to_owned(),
            versions: versions.to_vec(),
            done: fired.is_ok(),
        });
        fired?;
        state.contents.destroy(path, versions);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(value: &str) -> SecretData {
        let mut d = SecretData::new();
        d.insert("f", value);
        d
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn check_and_set_as_vault_does() {
        let store = ScriptedStore::new();
        block_on(crate::store::assert_check_and_set_contract(&store));
    }

    #[test]
    fn interventions_fire_at_the_scripted_operation() {
        let store = ScriptedStore::new();
        store.before_write("a", 2, |c| {
            c.put("a", data("theirs"));
        });
        block_on(async {
            assert!(matches!(
                store.write("a", &data("1"), 0).await.unwrap(),
                WriteOutcome::Written { version: 1 }
            ));
            // The concurrent run wrote version 2 just before this write: ours conflicts.
            assert_eq!(
                store.write("a", &data("2"), 1).await.unwrap(),
                WriteOutcome::Conflict
            );
            assert_eq!(store.current("a").unwrap().data.get("f"), Some("theirs"));
        });
    }

    #[test]
    fn scripted_failures_change_nothing() {
        let store = ScriptedStore::new();
        store.fail_write(
            "a",
            1,
            StoreError::Unavailable {
                operation: "write",
                path: "secret/a".into(),
                detail: "connection refused".into(),
            },
        );
        block_on(async {
            assert!(store.write("a", &data("1"), 0).await.is_err());
            assert!(store.current("a").is_none());
            assert!(store.write("a", &data("1"), 0).await.is_ok());
        });
        assert_eq!(store.written(), ["a"]);
    }

    #[test]
    fn destroyed_versions_keep_their_number() {
        let store = ScriptedStore::new();
        store.put("a", data("key"));
        store.put("a", data("bundle"));
        block_on(async {
            store.destroy_versions("a", &[1, 5]).await.unwrap();
            store.destroy_versions("none", &[1]).await.unwrap();
            assert_eq!(store.contents().version("a", 1), None);
            assert_eq!(store.read("a").await.unwrap().unwrap().version, 2);
            assert_eq!(
                store.write("a", &data("x"), 1).await.unwrap(),
                WriteOutcome::Conflict
            );
            store.destroy_versions("a", &[2]).await.unwrap();
            assert!(matches!(
                store.read("a").await,
                Err(StoreError::Deleted { version: 2, .. })
            ));
        });
    }

    #[test]
    fn lists_direct_children_only() {
        let store = ScriptedStore::new();
        store.put("p/b", data("1"));
        store.put("p/a", data("1"));
        store.put("p/a/deeper", data("1"));
        store.put("q/c", data("1"));
        assert_eq!(block_on(store.list("p")).unwrap(), ["a", "b"]);
    }

    #[test]
    fn versions_are_listed_as_openbao_lists_detailed_metadata() {
        let store = ScriptedStore::new();
        store.put("pki/clients/alice", data("1"));
        store.put("pki/clients/alice", data("2"));
        store.put("pki/clients/bob", data("1"));
        store.put("pki/clients/carol/nested", data("1"));
        let first = block_on(store.list_versions("pki/clients"))
            .unwrap()
            .unwrap();
        assert_eq!(first.keys().collect::<Vec<_>>(), ["alice", "bob"]);
        assert_eq!((first["alice"].version, first["bob"].version), (2, 1));
        let mut contents = store.contents();
        contents.forget("pki/clients/bob");
        contents.put("pki/clients/bob", data("again"));
        contents.destroy("pki/clients/alice", &[2]);
        let store = ScriptedStore::with_contents(contents);
        let second = block_on(store.list_versions("pki/clients"))
            .unwrap()
            .unwrap();
        assert_eq!(second["bob"].version, 1);
        assert_ne!(second["bob"].created, first["bob"].created);
        assert!(second["alice"].deleted && !first["alice"].deleted);
    }
}
