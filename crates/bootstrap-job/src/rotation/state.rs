//! The rotation's record in the store: one KV entry (`istio/rotation`), so that the stage and
//! every cluster's material change together in one check-and-set write.
//!
//! | field | content |
//! |---|---|
//! | `stage` | 0 to 3 |
//! | `clusters` | the clusters, comma-separated |
//! | `root_path`, `root_fingerprint` | the entry of the new root, and its SHA-256 fingerprint |
//! | `started`, `advanced_at` | RFC 3339: when the rotation began, when the stage last changed |
//! | `<cluster>.source` | where the previous CA came from: `istio-ca-secret` or `cacerts` |
//! | `<cluster>.old.<file>`, `<cluster>.new.<file>` | the four `cacerts` files of the previous CA and of the new intermediate |

use job_support::{InvalidState, KvEntry, SecretData, SecretStore};
use pki_core::istio::{CA_CERT, CA_KEY, CERT_CHAIN, IstioCaBundle, ROOT_CERT};
use pki_core::istio_rotation::{ClusterRotation, Stage};
use pki_core::time::OffsetDateTime;
use pki_core::time::format_description::well_known::Rfc3339;
use pki_core::{Certificate, SecretPem};

use crate::plan::Plan;

/// Where a cluster's previous CA was imported from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportSource {
    /// istiod's self-signed CA, `istio-system/istio-ca-secret`.
    SelfSignedSecret,
    /// The `cacerts` Secret the cluster already had.
    Cacerts,
}

impl ImportSource {
    /// The Secret's name, which is also the value of `ROTATE_IMPORT`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::SelfSignedSecret => "istio-ca-secret",
            Self::Cacerts => "cacerts",
        }
    }

    /// Parses a Secret name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        [Self::SelfSignedSecret, Self::Cacerts]
            .into_iter()
            .find(|source| source.name() == s)
    }
}

/// One cluster in the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRecord {
    /// Cluster name.
    pub cluster: String,
    /// Where its previous CA came from.
    pub source: ImportSource,
    /// Its previous CA and its new intermediate.
    pub rotation: ClusterRotation,
}

/// The whole record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationState {
    /// The stage every cluster's Vault entry is (being) moved to.
    pub stage: Stage,
    /// The KV path of the new root.
    pub root_path: String,
    /// Its fingerprint.
    pub root_fingerprint: String,
    /// When the rotation began.
    pub started: OffsetDateTime,
    /// When `stage` was last written.
    pub advanced_at: OffsetDateTime,
    /// Per cluster, in configuration order.
    pub clusters: Vec<ClusterRecord>,
}

const FILES: [&str; 4] = [CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN];

impl RotationState {
    /// The record of `cluster`, if it takes part.
    #[must_use]
    pub fn cluster(&self, cluster: &str) -> Option<&ClusterRecord> {
        self.clusters.iter().find(|c| c.cluster == cluster)
    }

    /// Whether stages remain: the last stage is the end of a rotation.
    #[must_use]
    pub fn in_progress(&self) -> bool {
        self.stage != Stage::TrustNew
    }

    /// The KV fields.
    #[must_use]
    pub fn to_data(&self) -> SecretData {
        let mut data = SecretData::new();
        data.insert("stage", self.stage.number().to_string());
        data.insert(
            "clusters",
            self.clusters
                .iter()
                .map(|c| c.cluster.as_str())
                .collect::<Vec<_>>()
                .join(","),
        );
        data.insert("root_path", self.root_path.clone());
        data.insert("root_fingerprint", self.root_fingerprint.clone());
        data.insert("started", rfc3339(self.started));
        data.insert("advanced_at", rfc3339(self.advanced_at));
        for record in &self.clusters {
            let c = &record.cluster;
            data.insert(format!("{c}.source"), record.source.name());
            for (side, bundle) in [("old", &record.rotation.old), ("new", &record.rotation.new)] {
                for (file, content) in bundle.files() {
                    data.insert(format!("{c}.{side}.{file}"), content);
                }
            }
        }
        data
    }

    /// Reads the record; a problem names the field. Certificates are parsed and the new
    /// root checked against the recorded fingerprint; the bundles are checked where used.
    pub fn from_entry(entry: &KvEntry) -> Result<Self, String> {
        let get = |field: &str| {
            entry
                .data
                .get(field)
                .ok_or_else(|| format!("missing field '{field}'"))
        };
        let stage_text = get("stage")?;
        let stage = stage_text
            .parse::<u64>()
            .ok()
            .and_then(Stage::from_number)
            .ok_or_else(|| format!("field 'stage' is '{stage_text}', not 0, 1, 2 or 3"))?;
        let time = |field: &str| {
            let text = get(field)?;
            OffsetDateTime::parse(text, &Rfc3339)
                .map_err(|_| format!("field '{field}' is '{text}', not an RFC 3339 time"))
        };
        let root_fingerprint = get("root_fingerprint")?.to_owned();
        let mut clusters = Vec::new();
        for cluster in get("clusters")?.split(',').filter(|c| !c.is_empty()) {
            let source_field = format!("{cluster}.source");
            let source_text = get(&source_field)?;
            let source = ImportSource::parse(source_text).ok_or_else(|| {
                format!("field '{source_field}' is '{source_text}', not istio-ca-secret or cacerts")
            })?;
            let bundle = |side: &str| -> Result<IstioCaBundle, String> {
                let [ca_cert, ca_key, root_cert, cert_chain] =
                    FILES.map(|file| get(&format!("{cluster}.{side}.{file}")));
                Ok(IstioCaBundle {
                    ca_cert: ca_cert?.to_owned(),
                    ca_key: SecretPem::new(ca_key?.to_owned()),
                    root_cert: root_cert?.to_owned(),
                    cert_chain: cert_chain?.to_owned(),
                })
            };
            let rotation = ClusterRotation {
                old: bundle("old")?,
                new: bundle("new")?,
            };
            let new_root_field = format!("{cluster}.new.{ROOT_CERT}");
            let new_root = Certificate::from_pem(&rotation.new.root_cert, new_root_field.clone())
                .map_err(|e| e.to_string())?;
            if new_root.info().fingerprint_sha256 != root_fingerprint {
                return Err(format!(
                    "field '{new_root_field}' (fingerprint {}) is not the root of field \
                     'root_fingerprint' ({root_fingerprint})",
                    new_root.info().fingerprint_sha256
                ));
            }
            clusters.push(ClusterRecord {
                cluster: cluster.to_owned(),
                source,
                rotation,
            });
        }
        if clusters.is_empty() {
            return Err("field 'clusters' names no cluster".into());
        }
        Ok(Self {
            stage,
            root_path: get("root_path")?.to_owned(),
            root_fingerprint,
            started: time("started")?,
            advanced_at: time("advanced_at")?,
            clusters,
        })
    }
}

/// Reads the rotation record, if there is one; an unreadable one is invalid state.
pub async fn read_state(
    store: &impl SecretStore,
    plan: &Plan,
) -> anyhow::Result<Option<(RotationState, u64)>> {
    let Some(entry) = store.read(&plan.rotation_path).await? else {
        return Ok(None);
    };
    let state = RotationState::from_entry(&entry).map_err(|problem| InvalidState {
        path: plan.label(&plan.rotation_path),
        problem,
    })?;
    Ok(Some((state, entry.version)))
}

/// RFC 3339, as every date the jobs store.
#[must_use]
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}
