//! The bootstrap decision: read the stored root and every cluster bundle, verify all of it,
//! and only then write what is missing or due, each write conditional (create-only, or
//! check-and-set on the version read). A run that loses a race adopts the winner's state; a
//! run that died halfway is finished by the next. Invalid state stops the run before any write.
//! While a root rotation is in progress, its clusters' bundles are left to `rotate`.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use job_support::{InvalidState, KvEntry, SecretData, SecretStore, WriteOutcome};
use pki_core::istio::{self, CA_CERT, CA_KEY, CERT_CHAIN, IstioBundleFiles, ROOT_CERT};
use pki_core::istio_rotation::Stage;
use pki_core::time::OffsetDateTime;
use pki_core::time::format_description::well_known::Rfc3339;
use pki_core::{CaCredential, Certificate, SigningKey, renewal_due};
use tracing::info;

use crate::plan::Plan;
use crate::root_entry::{RootLayout, load_root, root_data};
use crate::rotation::state::{RotationState, read_state};

/// What happened to one cluster's bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterAction {
    /// Present, valid, not due: left alone.
    Kept,
    /// Missing: issued from the root.
    Issued,
    /// Due for renewal: re-issued.
    Renewed,
    /// Written by a concurrent run while this one was deciding; verified and adopted.
    Adopted,
    /// Left to the root rotation in progress, which holds it at this stage.
    Rotating(Stage),
}

/// The result of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOutcome {
    /// Cluster name.
    pub cluster: String,
    /// What was done.
    pub action: ClusterAction,
    /// Intermediate fingerprint.
    pub fingerprint: String,
    /// Days until the intermediate expires.
    pub days_left: i64,
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Root fingerprint (SHA-256).
    pub root_fingerprint: String,
    /// Days until the root expires.
    pub root_days_left: i64,
    /// Whether this run created the root.
    pub root_created: bool,
    /// The layout of the root entry.
    pub root_layout: RootLayout,
    /// Per cluster, in configuration order.
    pub clusters: Vec<ClusterOutcome>,
}

impl Outcome {
    /// Number of entries this run wrote.
    #[must_use]
    pub fn writes(&self) -> usize {
        usize::from(self.root_created)
            + self
                .clusters
                .iter()
                .filter(|c| matches!(c.action, ClusterAction::Issued | ClusterAction::Renewed))
                .count()
    }
}

/// What is stored for one cluster, after verification.
enum ClusterState {
    Missing,
    Rotating {
        stage: Stage,
        certificate: Certificate,
    },
    Valid {
        version: u64,
        certificate: Certificate,
        /// Its key, for the algorithm check when it is kept (boxed: the largest variant).
        key: Box<SigningKey>,
    },
}

/// Brings the store to the planned state at `now`.
pub async fn converge(
    store: &impl SecretStore,
    plan: &Plan,
    now: OffsetDateTime,
) -> Result<Outcome> {
    let root_label = plan.label(&plan.root_path);
    // Clusters before the root: writers write the root first, so a cluster seen here implies
    // a root visible to the read below, even while a concurrent run is writing.
    let mut stored = read_clusters(store, plan).await?;
    let mut root_entry = store.read(&plan.root_path).await?;

    let mut root_created = false;
    let (root, root_layout) = if let Some(entry) = &root_entry {
        let (root, layout) = verify_root(entry, &root_label, now)?;
        job_support::config::report_kept_key_algorithm(
            "ISTIO_KEY_ALGORITHM",
            plan.ca.key_algorithm,
            &root.key,
            &root_label,
        );
        (root, layout)
    } else {
        if let Some((cluster, _)) = stored.iter().find(|(_, e)| e.is_some()) {
            return Err(InvalidState {
                path: root_label,
                problem: format!(
                    "the root is missing but '{}' exists; a bundle without its root cannot be \
                     trusted or re-issued (restore the root, or remove the cluster bundles)",
                    plan.label(&plan.cluster_path(cluster))
                ),
            }
            .into());
        }
        let root = istio::generate_istio_root(&plan.ca, now)
            .context("failed to generate the Istio root CA")?;
        match store
            .write(&plan.root_path, &root_data(&root, now), 0)
            .await?
        {
            WriteOutcome::Written { version } => {
                info!(path = %root_label, version, fingerprint = %root.certificate.info().fingerprint_sha256, "created the Istio root CA");
                root_created = true;
                (root, RootLayout::Own)
            }
            WriteOutcome::Conflict => {
                // A concurrent run created the root first: use theirs, and whatever cluster
                // bundles they have written since.
                root_entry = store.read(&plan.root_path).await?;
                let entry = root_entry.as_ref().ok_or_else(|| InvalidState {
                    path: root_label.clone(),
                    problem:
                        "a create-only write conflicted, yet the entry reads as absent; its latest \
                              version is probably deleted (undelete or destroy it)"
                            .into(),
                })?;
                info!(path = %root_label, "another run created the root first; adopting it");
                stored = read_clusters(store, plan).await?;
                verify_root(entry, &root_label, now)?
            }
        }
    };

    let rotation = read_state(store, plan).await?.map(|(state, _)| state);
    let states = cluster_states(plan, &stored, &root, rotation, now)?;

    let mut clusters = Vec::with_capacity(plan.clusters.len());
    for (cluster, state) in plan.clusters.iter().zip(states) {
        let outcome = converge_cluster(store, plan, &root, cluster, state, now).await?;
        clusters.push(outcome);
    }
    Ok(Outcome {
        root_fingerprint: root.certificate.info().fingerprint_sha256.clone(),
        root_days_left: root.certificate.info().days_left(now),
        root_created,
        root_layout,
        clusters,
    })
}

/// Verifies every stored cluster bundle against the root, except those a rotation in progress
/// owns: they hold a stage of it, which may trust two roots or sign under the previous one.
fn cluster_states(
    plan: &Plan,
    stored: &[(String, Option<KvEntry>)],
    root: &CaCredential,
    rotation: Option<RotationState>,
    now: OffsetDateTime,
) -> Result<Vec<ClusterState>> {
    let rotating = rotation.as_ref().filter(|state| state.in_progress());
    let mut states = Vec::with_capacity(plan.clusters.len());
    let mut problems = Vec::new();
    for (cluster, entry) in stored {
        let label = plan.label(&plan.cluster_path(cluster));
        if let Some((state, record)) =
            rotating.and_then(|state| Some((state, state.cluster(cluster)?)))
        {
            let bundle = record.rotation.bundle(state.stage);
            let certificate = Certificate::from_pem(&bundle.ca_cert, CA_CERT)?;
            states.push(ClusterState::Rotating {
                stage: state.stage,
                certificate,
            });
            continue;
        }
        match entry {
            None => states.push(ClusterState::Missing),
            Some(entry) => match verify_cluster(entry, root, now).and_then(|certificate| {
                let key = SigningKey::from_pem(field(entry, CA_KEY)?, CA_KEY)
                    .map_err(|e| e.to_string())?;
                Ok((certificate, Box::new(key)))
            }) {
                Ok((certificate, key)) => states.push(ClusterState::Valid {
                    version: entry.version,
                    certificate,
                    key,
                }),
                Err(problem) => problems.push(format!("'{label}': {problem}")),
            },
        }
    }
    if problems.is_empty() {
        return Ok(states);
    }
    let mut problem = problems.join("; ");
    if let Some(done) = rotation
        .filter(|state| state.root_fingerprint != root.certificate.info().fingerprint_sha256)
    {
        let _ = write!(
            problem,
            "; the rotation recorded at '{}' moved the clusters to the root at '{}': set \
             ISTIO_CA_PATH={}",
            plan.label(&plan.rotation_path),
            plan.label(&done.root_path),
            done.root_path
        );
    }
    Err(InvalidState {
        path: plan.label(&plan.clusters_path),
        problem,
    }
    .into())
}

async fn read_clusters(
    store: &impl SecretStore,
    plan: &Plan,
) -> Result<Vec<(String, Option<KvEntry>)>> {
    let mut entries = Vec::with_capacity(plan.clusters.len());
    for cluster in &plan.clusters {
        entries.push((
            cluster.clone(),
            store.read(&plan.cluster_path(cluster)).await?,
        ));
    }
    Ok(entries)
}

async fn converge_cluster(
    store: &impl SecretStore,
    plan: &Plan,
    root: &CaCredential,
    cluster: &str,
    state: ClusterState,
    now: OffsetDateTime,
) -> Result<ClusterOutcome> {
    let path = plan.cluster_path(cluster);
    let label = plan.label(&path);
    let (cas, action) = match state {
        ClusterState::Rotating { stage, certificate } => {
            let info = certificate.info();
            return Ok(ClusterOutcome {
                cluster: cluster.to_owned(),
                action: ClusterAction::Rotating(stage),
                fingerprint: info.fingerprint_sha256.clone(),
                days_left: info.days_left(now),
            });
        }
        ClusterState::Valid {
            version,
            certificate,
            key,
        } => {
            let info = certificate.info();
            if !renewal_due(now, info.not_before, info.not_after, &plan.renewal) {
                // Kept, so said here; a renewal below generates its key with the configured
                // algorithm.
                job_support::config::report_kept_key_algorithm(
                    "ISTIO_KEY_ALGORITHM",
                    plan.ca.key_algorithm,
                    &key,
                    &label,
                );
                return Ok(ClusterOutcome {
                    cluster: cluster.to_owned(),
                    action: ClusterAction::Kept,
                    fingerprint: info.fingerprint_sha256.clone(),
                    days_left: info.days_left(now),
                });
            }
            (version, ClusterAction::Renewed)
        }
        ClusterState::Missing => (0, ClusterAction::Issued),
    };
    let bundle = istio::issue_cluster_bundle(root, cluster, &plan.ca, now)
        .with_context(|| format!("failed to issue the intermediate CA of cluster '{cluster}'"))?;
    let certificate = Certificate::from_pem(&bundle.ca_cert, CA_CERT)?;
    let mut data = SecretData::new();
    for (name, content) in bundle.files() {
        data.insert(name, content);
    }
    data.insert("created", rfc3339(now));
    data.insert("not_after", rfc3339(certificate.info().not_after));
    match store.write(&path, &data, cas).await? {
        WriteOutcome::Written { version } => {
            info!(cluster, path = %label, version, fingerprint = %certificate.info().fingerprint_sha256,
                  not_after = %rfc3339(certificate.info().not_after),
                  action = if cas == 0 { "issued" } else { "renewed" }, "wrote the cluster intermediate CA");
            Ok(ClusterOutcome {
                cluster: cluster.to_owned(),
                action,
                fingerprint: certificate.info().fingerprint_sha256.clone(),
                days_left: certificate.info().days_left(now),
            })
        }
        WriteOutcome::Conflict => {
            // Someone else wrote this bundle in the meantime: verify theirs and keep it.
            let entry = store.read(&path).await?.ok_or_else(|| InvalidState {
                path: label.clone(),
                problem:
                    "a conditional write conflicted, yet the entry reads as absent; its latest \
                          version is probably deleted"
                        .into(),
            })?;
            let theirs = verify_cluster(&entry, root, now).map_err(|problem| InvalidState {
                path: label.clone(),
                problem,
            })?;
            info!(cluster, path = %label, "another run wrote this bundle first; adopting it");
            Ok(ClusterOutcome {
                cluster: cluster.to_owned(),
                action: ClusterAction::Adopted,
                fingerprint: theirs.info().fingerprint_sha256.clone(),
                days_left: theirs.info().days_left(now),
            })
        }
    }
}

fn field<'a>(entry: &'a KvEntry, name: &str) -> Result<&'a str, String> {
    entry.data.get(name).ok_or_else(|| {
        let present: Vec<_> = entry.data.fields().collect();
        format!(
            "missing field '{name}' (fields present: {})",
            present.join(", ")
        )
    })
}

fn verify_root(
    entry: &KvEntry,
    label: &str,
    now: OffsetDateTime,
) -> Result<(CaCredential, RootLayout)> {
    let (root, layout) = load_root(entry, label, now)?;
    if layout == RootLayout::PreviousScripts {
        info!(path = %label, fingerprint = %root.certificate.info().fingerprint_sha256,
              fields = "root-cert.pem, cert-chain.pem, key.pem",
              "adopted the Istio root the previous scripts wrote; its fields are left as they are");
    }
    Ok((root, layout))
}

/// Verifies a stored bundle against the stored root. An intermediate past its validity is
/// structurally checked at its last valid instant, so that it is renewed rather than refused.
fn verify_cluster(
    entry: &KvEntry,
    root: &CaCredential,
    now: OffsetDateTime,
) -> Result<Certificate, String> {
    let files = IstioBundleFiles {
        ca_cert: field(entry, CA_CERT)?,
        ca_key: field(entry, CA_KEY)?,
        root_cert: field(entry, ROOT_CERT)?,
        cert_chain: field(entry, CERT_CHAIN)?,
    };
    let certificate = Certificate::from_pem(files.ca_cert, CA_CERT).map_err(|e| e.to_string())?;
    let at = now.clamp(certificate.info().not_before, certificate.info().not_after);
    istio::verify_istio_bundle(files, at).map_err(|e| e.to_string())?;
    let bundle_root =
        Certificate::from_pem(files.root_cert, ROOT_CERT).map_err(|e| e.to_string())?;
    if bundle_root.der() != root.certificate.der() {
        return Err(format!(
            "root-cert.pem (fingerprint {}) is not the stored root (fingerprint {})",
            bundle_root.info().fingerprint_sha256,
            root.certificate.info().fingerprint_sha256
        ));
    }
    Ok(certificate)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
pub(crate) mod tests;
