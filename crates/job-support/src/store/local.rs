//! A directory that behaves like a KV v2 mount, so the jobs run without a Vault: each version
//! of an entry is its own file (`<dir>/<mount>/<path>/.v<N>.json`, mode 0600), made visible
//! with a hard link that fails if the version exists. Two processes racing to write version N
//! therefore behave like two Vault clients racing with `cas = N-1`: exactly one wins.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::{EntryVersion, KvEntry, SecretData, SecretStore, StoreError, WriteOutcome, check_path};

/// A KV v2 look-alike rooted at a directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    mount: String,
}

#[derive(Serialize, Deserialize)]
struct VersionFile {
    data: std::collections::BTreeMap<String, String>,
    created_time: String,
    /// Its data was destroyed (KV v2 `destroy`): the version number stays taken.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    destroyed: bool,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl LocalStore {
    /// A store for `mount` under `root`; nothing is created until the first write.
    #[must_use]
    pub fn new(root: impl Into<PathBuf>, mount: impl Into<String>) -> Self {
        Self {
            root: root.into(),
            mount: mount.into(),
        }
    }

    fn entry_dir(&self, path: &str, operation: &'static str) -> Result<PathBuf, StoreError> {
        let malformed = |detail: String| StoreError::Malformed {
            operation,
            path: self.label(path),
            detail,
        };
        check_path(path).map_err(malformed)?;
        if path.split('/').any(|s| s.starts_with('.')) {
            return Err(malformed(format!(
                "'{path}' has a segment starting with '.', which the local store reserves"
            )));
        }
        Ok(self.root.join(&self.mount).join(path))
    }

    /// Writes `version` to a new temporary file in `dir`, synced to disk, for the caller to
    /// link or rename into place; on failure nothing is left behind.
    fn stage(
        &self,
        dir: &Path,
        path: &str,
        operation: &'static str,
        version: &VersionFile,
    ) -> Result<PathBuf, StoreError> {
        let body = serde_json::to_vec_pretty(version).map_err(|e| StoreError::Malformed {
            operation,
            path: self.label(path),
            detail: e.to_string(),
        })?;
        let temp = dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(&body)?;
            file.sync_all()
        })();
        match written {
            Ok(()) => Ok(temp),
            Err(e) => {
                let _ = fs::remove_file(&temp);
                Err(self.io_error(operation, path, &temp, &e))
            }
        }
    }

    fn label(&self, path: &str) -> String {
        format!("{}/{path}", self.mount)
    }

    fn io_error(
        &self,
        operation: &'static str,
        path: &str,
        file: &Path,
        e: &std::io::Error,
    ) -> StoreError {
        StoreError::Unavailable {
            operation,
            path: self.label(path),
            detail: format!("{}: {e}", file.display()),
        }
    }

    fn latest_version(
        &self,
        dir: &Path,
        path: &str,
        operation: &'static str,
    ) -> Result<u64, StoreError> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(self.io_error(operation, path, dir, &e)),
        };
        let mut latest = 0;
        for entry in entries {
            let entry = entry.map_err(|e| self.io_error(operation, path, dir, &e))?;
            let name = entry.file_name();
            let version = name
                .to_str()
                .and_then(|n| n.strip_prefix(".v"))
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(version) = version {
                latest = latest.max(version);
            }
        }
        Ok(latest)
    }
}

fn version_file(dir: &Path, version: u64) -> PathBuf {
    dir.join(format!(".v{version}.json"))
}

impl SecretStore for LocalStore {
    fn describe(&self) -> String {
        format!(
            "local directory {} mount {}",
            self.root.display(),
            self.mount
        )
    }

    async fn read(&self, path: &str) -> Result<Option<KvEntry>, StoreError> {
        let dir = self.entry_dir(path, "read")?;
        let version = self.latest_version(&dir, path, "read")?;
        if version == 0 {
            return Ok(None);
        }
        let file = version_file(&dir, version);
        let text = fs::read_to_string(&file).map_err(|e| self.io_error("read", path, &file, &e))?;
        let parsed: VersionFile =
            serde_json::from_str(&text).map_err(|e| StoreError::Malformed {
                operation: "read",
                path: self.label(path),
                detail: format!("{} is not a KV entry: {e}", file.display()),
            })?;
        if parsed.destroyed {
            // As Vault: a destroyed latest version is neither absent nor readable.
            return Err(StoreError::Deleted {
                path: self.label(path),
                version,
                problem: format!(
                    "its latest version ({version}) was destroyed; the entry is neither absent nor usable, so nothing was written (remove {} to start over)",
                    dir.display()
                ),
            });
        }
        Ok(Some(KvEntry {
            data: parsed.data.into_iter().collect(),
            version,
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let dir = self.entry_dir(prefix, "list")?;
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io_error("list", prefix, &dir, &e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.io_error("list", prefix, &dir, &e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with('.') || !entry.path().is_dir() {
                continue;
            }
            if self.latest_version(&entry.path(), prefix, "list")? > 0 {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// One directory listing and, per entry, its first and latest version files: the first
    /// holds the entry's `created_time` (a directory removed and written again starts over at
    /// version 1 with a new one), the latest whether it is destroyed.
    async fn list_versions(
        &self,
        prefix: &str,
    ) -> Result<Option<std::collections::BTreeMap<String, EntryVersion>>, StoreError> {
        let mut versions = std::collections::BTreeMap::new();
        for name in self.list(prefix).await? {
            let path = format!("{prefix}/{name}");
            let dir = self.entry_dir(&path, "list")?;
            let version = self.latest_version(&dir, &path, "list")?;
            let read = |v: u64| -> Result<Option<VersionFile>, StoreError> {
                let file = version_file(&dir, v);
                match fs::read_to_string(&file) {
                    Ok(text) => Ok(serde_json::from_str(&text).ok()),
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(self.io_error("list", &path, &file, &e)),
                }
            };
            let created = read(1)?.map(|f| f.created_time).unwrap_or_default();
            // An unreadable latest version is left for the read to report by name.
            let deleted = read(version)?.is_some_and(|f| f.destroyed);
            versions.insert(
                name,
                EntryVersion {
                    version,
                    created,
                    deleted,
                },
            );
        }
        Ok(Some(versions))
    }

    async fn write(
        &self,
        path: &str,
        data: &SecretData,
        cas: u64,
    ) -> Result<WriteOutcome, StoreError> {
        let dir = self.entry_dir(path, "write")?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| self.io_error("write", path, &dir, &e))?;
        if self.latest_version(&dir, path, "write")? != cas {
            return Ok(WriteOutcome::Conflict);
        }
        let created_time = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let temp = self.stage(
            &dir,
            path,
            "write",
            &VersionFile {
                data: data.as_map().clone(),
                created_time,
                destroyed: false,
            },
        )?;
        let target = version_file(&dir, cas + 1);
        // link(2) refuses an existing target: the atomic create-only step.
        let linked = fs::hard_link(&temp, &target);
        let _ = fs::remove_file(&temp);
        match linked {
            Ok(()) => Ok(WriteOutcome::Written { version: cas + 1 }),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(WriteOutcome::Conflict),
            Err(e) => Err(self.io_error("write", path, &target, &e)),
        }
    }

    /// Replaces each existing version's file with a destroyed marker (its data gone, its
    /// number kept), through a temporary file and `rename(2)`, so a crash leaves either the
    /// version or its marker. Missing versions are skipped, as Vault skips them.
    async fn read_version(
        &self,
        path: &str,
        version: u64,
    ) -> Result<Option<SecretData>, StoreError> {
        let dir = self.entry_dir(path, "read")?;
        let file = version_file(&dir, version);
        let text = match fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_error("read", path, &file, &e)),
        };
        let parsed: VersionFile =
            serde_json::from_str(&text).map_err(|e| StoreError::Malformed {
                operation: "read",
                path: self.label(path),
                detail: format!("{} is not a KV entry: {e}", file.display()),
            })?;
        Ok((!parsed.destroyed).then(|| parsed.data.into_iter().collect()))
    }

    async fn destroy_versions(&self, path: &str, versions: &[u64]) -> Result<(), StoreError> {
        let op = "destroy versions of";
        let dir = self.entry_dir(path, op)?;
        for &version in versions {
            let file = version_file(&dir, version);
            let created_time = match fs::read_to_string(&file) {
                Ok(text) => serde_json::from_str::<VersionFile>(&text)
                    .map(|v| v.created_time)
                    .unwrap_or_default(),
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io_error(op, path, &file, &e)),
            };
            let temp = self.stage(
                &dir,
                path,
                op,
                &VersionFile {
                    data: std::collections::BTreeMap::new(),
                    created_time,
                    destroyed: true,
                },
            )?;
            let replaced = fs::rename(&temp, &file);
            if let Err(e) = replaced {
                let _ = fs::remove_file(&temp);
                return Err(self.io_error(op, path, &file, &e));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn data(value: &str) -> SecretData {
        let mut d = SecretData::new();
        d.insert("field", value);
        d
    }

    #[tokio::test]
    async fn create_only_then_check_and_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path(), "secret");
        crate::store::assert_check_and_set_contract(&store).await;
        let file = dir.path().join("secret/istio/ca/.v2.json");
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(dir.path().join("secret/istio"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_creates_have_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let mut tasks = Vec::new();
        for i in 0..16 {
            let store = LocalStore::new(dir.path(), "secret");
            tasks.push(tokio::spawn(async move {
                store.write("race", &data(&i.to_string()), 0).await.unwrap()
            }));
        }
        let mut winners = 0;
        for task in tasks {
            if matches!(task.await.unwrap(), WriteOutcome::Written { .. }) {
                winners += 1;
            }
        }
        assert_eq!(winners, 1);
    }

    #[tokio::test]
    async fn destroyed_versions_keep_their_number_and_lose_their_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path(), "secret");
        store.write("a", &data("key"), 0).await.unwrap();
        store.write("a", &data("bundle"), 1).await.unwrap();
        store.destroy_versions("a", &[1, 7]).await.unwrap();
        // Repeating it, and destroying under a path that does not exist, is harmless.
        store.destroy_versions("a", &[1]).await.unwrap();
        store.destroy_versions("nothing", &[1]).await.unwrap();
        let v1 = fs::read_to_string(dir.path().join("secret/a/.v1.json")).unwrap();
        assert!(!v1.contains("key") && v1.contains("destroyed"), "{v1}");
        assert_eq!(
            store.read("a").await.unwrap().unwrap().data.get("field"),
            Some("bundle")
        );
        // The next write still needs the current version; a destroyed latest is not absent.
        assert_eq!(
            store.write("a", &data("x"), 0).await.unwrap(),
            WriteOutcome::Conflict
        );
        store.destroy_versions("a", &[2]).await.unwrap();
        assert!(matches!(
            store.read("a").await,
            Err(StoreError::Deleted { version: 2, .. })
        ));
    }

    #[tokio::test]
    async fn list_names_entries_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path(), "secret");
        assert!(store.list("pki/clients").await.unwrap().is_empty());
        for name in ["bob", "alice", "carol/nested"] {
            store
                .write(&format!("pki/clients/{name}"), &data("x"), 0)
                .await
                .unwrap();
        }
        assert_eq!(store.list("pki/clients").await.unwrap(), ["alice", "bob"]);
    }

    /// As OpenBao's LIST on `detailed-metadata/`: entries only, each with its current version,
    /// a creation time that changes when the entry is removed and written again, and whether
    /// its latest version is destroyed.
    #[tokio::test]
    async fn versions_are_listed_with_what_tells_a_re_created_entry_apart() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path(), "secret");
        assert!(
            store
                .list_versions("pki/clients")
                .await
                .unwrap()
                .unwrap()
                .is_empty()
        );
        for name in ["alice", "bob", "carol/nested"] {
            store
                .write(&format!("pki/clients/{name}"), &data("x"), 0)
                .await
                .unwrap();
        }
        store
            .write("pki/clients/alice", &data("y"), 1)
            .await
            .unwrap();
        let first = store.list_versions("pki/clients").await.unwrap().unwrap();
        assert_eq!(first.keys().collect::<Vec<_>>(), ["alice", "bob"]);
        assert_eq!((first["alice"].version, first["bob"].version), (2, 1));
        assert!(!first["alice"].deleted && !first["alice"].created.is_empty());

        // Removed with its history and written again: version 1 again, another entry.
        fs::remove_dir_all(dir.path().join("secret/pki/clients/bob")).unwrap();
        store.write("pki/clients/bob", &data("z"), 0).await.unwrap();
        store
            .destroy_versions("pki/clients/alice", &[2])
            .await
            .unwrap();
        let second = store.list_versions("pki/clients").await.unwrap().unwrap();
        assert_eq!(second["bob"].version, 1);
        assert_ne!(second["bob"].created, first["bob"].created);
        assert!(second["alice"].deleted);
        assert_eq!(second["alice"].created, first["alice"].created);
    }

    #[tokio::test]
    async fn reserved_and_escaping_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path(), "secret");
        let err = store.read("../etc").await.unwrap_err().to_string();
        assert_eq!(
            err,
            "read 'secret/../etc' failed: '../etc' has an empty, '.' or '..' segment; use a relative path like 'istio/ca'"
        );
        assert!(store.write(".hidden/x", &data("a"), 0).await.is_err());
    }
}
