//! The sync decision for each mapping: read the KV entry, verify the bundle, compare with the
//! Secret, and apply only when something differs. A mapping that fails leaves its Secret as
//! it was; the others still run, and the job exits non-zero.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use job_support::{InvalidState, SecretStore};
use pki_core::time::OffsetDateTime;
use tracing::{error, info, warn};

use crate::mapping::{BundleKind, ClientCaConsumer, Mapping};
use crate::target::{SecretState, SecretTarget};
use crate::verify::verify_bundle;

/// Annotation: the KV path the Secret mirrors.
pub const SOURCE_ANNOTATION: &str = "pki.home.arpa/source";
/// Annotation: the KV version it holds.
pub const VERSION_ANNOTATION: &str = "pki.home.arpa/kv-version";
/// Annotation: the bundle's fingerprint (Istio root, client CA, or data digest).
pub const FINGERPRINT_ANNOTATION: &str = "pki.home.arpa/fingerprint";

/// What happened to one mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncAction {
    /// The Secret already held exactly this.
    Unchanged,
    /// The Secret did not exist.
    Created,
    /// The Secret differed; these keys (names only) were added, changed or removed, or its
    /// metadata differed.
    Restored(Vec<String>),
}

/// The result of one mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOutcome {
    /// `namespace/name`.
    pub target: String,
    /// What was done.
    pub action: SyncAction,
    /// The bundle's fingerprint.
    pub fingerprint: String,
}

/// Every mapping of one run: what was done, and what failed.
#[derive(Debug)]
pub struct SyncRun {
    /// The mappings that succeeded.
    pub outcomes: Vec<SyncOutcome>,
    /// The mappings that failed (refused as invalid, or refused by the target), each logged.
    pub failures: Vec<anyhow::Error>,
}

impl SyncRun {
    /// The outcomes, or the first failure.
    pub fn into_result(self) -> Result<Vec<SyncOutcome>> {
        let failed = self.failures.len();
        let total = failed + self.outcomes.len();
        match self.failures.into_iter().next() {
            None => Ok(self.outcomes),
            Some(first) => Err(first.context(format!(
                "{failed} of {total} mappings failed; their Secrets were left as they were"
            ))),
        }
    }
}

/// Runs every mapping, each whatever happened to the others.
pub async fn sync_each(
    store: &impl SecretStore,
    target: &impl SecretTarget,
    mount: &str,
    mappings: &[Mapping],
    now: OffsetDateTime,
) -> SyncRun {
    let mut run = SyncRun {
        outcomes: Vec::with_capacity(mappings.len()),
        failures: Vec::new(),
    };
    for mapping in mappings {
        match sync_one(store, target, mount, mapping, now).await {
            Ok(outcome) => run.outcomes.push(outcome),
            Err(e) => {
                error!(secret = %mapping.target(), source = %mapping.source, "{e:#}");
                run.failures.push(e);
            }
        }
    }
    run
}

/// One mapping: verify, compare, apply if different.
pub async fn sync_one(
    store: &impl SecretStore,
    target: &impl SecretTarget,
    mount: &str,
    mapping: &Mapping,
    now: OffsetDateTime,
) -> Result<SyncOutcome> {
    let label = format!("{mount}/{}", mapping.source);
    let invalid = |problem: String| InvalidState {
        path: label.clone(),
        problem,
    };
    let entry = store
        .read(&mapping.source)
        .await?
        .ok_or_else(|| invalid("absent; nothing to mirror (has the issuing job run?)".into()))?;
    let mut data = BTreeMap::new();
    for (key, field) in &mapping.keys {
        let value = entry.data.get(field).ok_or_else(|| {
            let present: Vec<_> = entry.data.fields().collect();
            invalid(format!(
                "missing field '{field}' (fields present: {})",
                present.join(", ")
            ))
        })?;
        data.insert(key.clone(), value.to_owned());
    }
    let fingerprint = verify_bundle(mapping.kind, &data, now).map_err(|problem| {
        invalid(format!(
            "not a valid {} bundle: {problem}",
            mapping.kind.name()
        ))
    })?;

    if mapping.kind == BundleKind::ClientCa(ClientCaConsumer::Haproxytech) {
        // Said on every run, because nothing else will say it.
        warn!(secret = %mapping.target(), source = %label,
              "revocation is not enforced: haproxytech/kubernetes-ingress reads only tls.crt from its client-ca Secret and has no CRL support, so a revoked client certificate is accepted until it expires");
    }
    let mut desired = SecretState {
        secret_type: mapping.secret_type.clone(),
        labels: mapping.labels.clone(),
        annotations: BTreeMap::from([
            (SOURCE_ANNOTATION.to_owned(), label.clone()),
            (VERSION_ANNOTATION.to_owned(), entry.version.to_string()),
            (FINGERPRINT_ANNOTATION.to_owned(), fingerprint.clone()),
        ]),
        data: data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect(),
        sealed_to: None,
    };
    desired.sealed_to = target.sealing(&desired);
    let current = target
        .get(&mapping.namespace, &mapping.name)
        .await
        .with_context(|| format!("failed to read the current Secret {}", mapping.target()))?;
    let action = match &current {
        None => SyncAction::Created,
        Some(current) => {
            let drift = differences(current, &desired);
            if drift.is_empty() {
                return Ok(SyncOutcome {
                    target: mapping.target(),
                    action: SyncAction::Unchanged,
                    fingerprint,
                });
            }
            SyncAction::Restored(drift)
        }
    };
    target
        .apply(&mapping.namespace, &mapping.name, &desired)
        .await?;
    match &action {
        SyncAction::Restored(keys) => {
            info!(secret = %mapping.target(), source = %label, version = entry.version, fingerprint = %fingerprint,
                  drift = %keys.join(", "), "restored the Secret from Vault");
        }
        _ => {
            info!(secret = %mapping.target(), source = %label, version = entry.version, fingerprint = %fingerprint,
                   "created the Secret from Vault");
        }
    }
    Ok(SyncOutcome {
        target: mapping.target(),
        action,
        fingerprint,
    })
}

/// What differs, by name only (values are secret). Only what this job applies counts: keys,
/// labels and annotations that others added to the Secret are theirs under server-side apply,
/// and are left alone.
/// Encrypted data (SOPS) is compared by key names only: its values cannot be read without the
/// identity, and the KV version annotation says whether they changed.
fn differences(current: &SecretState, desired: &SecretState) -> Vec<String> {
    let mut drift: Vec<String> = desired
        .data
        .iter()
        .filter(|(k, v)| match &current.sealed_to {
            None => current.data.get(*k) != Some(*v),
            Some(_) => !current.data.contains_key(*k),
        })
        .map(|(k, _)| format!("data.{k}"))
        .collect();
    if current.sealed_to != desired.sealed_to {
        drift.push("encryption recipients".into());
    }
    if current.secret_type != desired.secret_type {
        drift.push("type".into());
    }
    for (k, v) in &desired.labels {
        if current.labels.get(k) != Some(v) {
            drift.push(format!("label {k}"));
        }
    }
    for (k, v) in &desired.annotations {
        if current.annotations.get(k) != Some(v) {
            drift.push(format!("annotation {k}"));
        }
    }
    drift
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use job_support::SecretData;
    use job_support::store::local::LocalStore;
    use pki_core::istio::{IstioCaParams, generate_istio_root, issue_cluster_bundle};

    use super::*;
    use crate::mapping::default_mappings;

    /// A target double that records applies.
    #[derive(Default)]
    struct Recorder {
        secrets: RefCell<BTreeMap<String, SecretState>>,
        applies: RefCell<usize>,
    }

    impl SecretTarget for Recorder {
        fn describe(&self) -> String {
            "recorder".into()
        }
        async fn get(&self, namespace: &str, name: &str) -> Result<Option<SecretState>> {
            Ok(self
                .secrets
                .borrow()
                .get(&format!("{namespace}/{name}"))
                .cloned())
        }
        async fn apply(&self, namespace: &str, name: &str, desired: &SecretState) -> Result<()> {
            *self.applies.borrow_mut() += 1;
            self.secrets
                .borrow_mut()
                .insert(format!("{namespace}/{name}"), desired.clone());
            Ok(())
        }
    }

    async fn store_with_bundle(dir: &std::path::Path) -> LocalStore {
        let store = LocalStore::new(dir, "secret");
        let now = OffsetDateTime::now_utc();
        let params = IstioCaParams::default();
        let root = generate_istio_root(&params, now).unwrap();
        let bundle = issue_cluster_bundle(&root, "nas", &params, now).unwrap();
        let mut data = SecretData::new();
        for (k, v) in bundle.files() {
            data.insert(k, v);
        }
        store.write("istio/clusters/nas", &data, 0).await.unwrap();
        store
    }

    #[tokio::test]
    async fn creates_then_leaves_alone_then_restores_drift() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_bundle(dir.path()).await;
        let target = Recorder::default();
        let mappings = default_mappings("nas");
        let now = OffsetDateTime::now_utc();

        let first = sync_each(&store, &target, "secret", &mappings, now)
            .await
            .into_result()
            .unwrap();
        assert_eq!(first[0].action, SyncAction::Created);
        let second = sync_each(&store, &target, "secret", &mappings, now)
            .await
            .into_result()
            .unwrap();
        assert_eq!(second[0].action, SyncAction::Unchanged);
        assert_eq!(*target.applies.borrow(), 1);

        // Someone edits the Secret by hand and adds a label of their own.
        {
            let mut secrets = target.secrets.borrow_mut();
            let secret = secrets.get_mut("istio-system/cacerts").unwrap();
            secret
                .data
                .insert("ca-key.pem".into(), b"tampered".to_vec());
            secret.data.insert("extra".into(), b"x".to_vec());
            secret.labels.insert("team".into(), "mesh".into());
        }
        let third = sync_each(&store, &target, "secret", &mappings, now)
            .await
            .into_result()
            .unwrap();
        assert_eq!(
            third[0].action,
            SyncAction::Restored(vec!["data.ca-key.pem".into()])
        );
        let entry = store.read("istio/clusters/nas").await.unwrap().unwrap();
        let secret = target.secrets.borrow()["istio-system/cacerts"].clone();
        assert_eq!(
            secret.data["ca-key.pem"],
            entry.data.get("ca-key.pem").unwrap().as_bytes()
        );
        assert_eq!(
            secret.annotations[SOURCE_ANNOTATION],
            "secret/istio/clusters/nas"
        );
    }

    #[tokio::test]
    async fn an_invalid_bundle_is_never_applied() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_bundle(dir.path()).await;
        let entry = store.read("istio/clusters/nas").await.unwrap().unwrap();
        let mut broken = entry.data.clone();
        broken.insert(
            "ca-key.pem",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        store
            .write("istio/clusters/nas", &broken, entry.version)
            .await
            .unwrap();
        let target = Recorder::default();
        let err = sync_each(
            &store,
            &target,
            "secret",
            &default_mappings("nas"),
            OffsetDateTime::now_utc(),
        )
        .await
        .into_result()
        .unwrap_err();
        let message = format!("{err:#}");
        assert!(message.starts_with("1 of 1 mappings failed; their Secrets were left as they were: invalid state at 'secret/istio/clusters/nas': not a valid istio-cacerts bundle: ca-key.pem is not a usable private key"), "{message}");
        assert_eq!(*target.applies.borrow(), 0);
        assert_eq!(
            job_support::Failure::of(&err),
            job_support::Failure::InvalidState
        );
    }

    #[test]
    fn encrypted_data_is_compared_by_key_names_and_recipients() {
        let desired = SecretState {
            secret_type: "Opaque".into(),
            annotations: BTreeMap::from([(VERSION_ANNOTATION.to_owned(), "2".to_owned())]),
            data: BTreeMap::from([
                ("ca-key.pem".to_owned(), b"KEY".to_vec()),
                ("ca-cert.pem".to_owned(), b"CERT".to_vec()),
            ]),
            sealed_to: Some(vec!["age1a".into()]),
            ..SecretState::default()
        };
        // As read back from an encrypted manifest: key names only.
        let read_back = SecretState {
            data: desired
                .data
                .keys()
                .map(|k| (k.clone(), Vec::new()))
                .collect(),
            ..desired.clone()
        };
        assert!(differences(&read_back, &desired).is_empty());
        let older = SecretState {
            annotations: BTreeMap::from([(VERSION_ANNOTATION.to_owned(), "1".to_owned())]),
            ..read_back.clone()
        };
        assert_eq!(
            differences(&older, &desired),
            [format!("annotation {VERSION_ANNOTATION}")]
        );
        let mut fewer = read_back.clone();
        fewer.data.remove("ca-key.pem");
        assert_eq!(differences(&fewer, &desired), ["data.ca-key.pem"]);
        let other = SecretState {
            sealed_to: Some(vec!["age1b".into()]),
            ..read_back.clone()
        };
        assert_eq!(differences(&other, &desired), ["encryption recipients"]);
        // A plaintext file where an encrypted one is wanted, and the other way round.
        let plain = SecretState {
            sealed_to: None,
            ..desired.clone()
        };
        assert_eq!(differences(&plain, &desired), ["encryption recipients"]);
        assert_eq!(differences(&read_back, &plain), ["encryption recipients"]);
    }
}
