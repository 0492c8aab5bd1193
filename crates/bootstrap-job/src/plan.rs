//! What the bootstrap job keeps in the store, and where: the paths of the root, the cluster
//! bundles and the rotation record, the clusters, and how certificates look and renew.

use pki_core::RenewalPolicy;
use pki_core::istio::IstioCaParams;

/// Where the state lives and what it should look like.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// KV mount, for messages.
    pub mount: String,
    /// Path of the root entry (`istio/ca`).
    pub root_path: String,
    /// Prefix of the cluster entries (`istio/clusters`).
    pub clusters_path: String,
    /// Path of the root rotation's record (`istio/rotation`).
    pub rotation_path: String,
    /// Cluster names, each with its intermediate.
    pub clusters: Vec<String>,
    /// Key type, names and validity of new certificates.
    pub ca: IstioCaParams,
    /// When an intermediate is re-issued.
    pub renewal: RenewalPolicy,
}

impl Plan {
    /// The KV path of `cluster`'s bundle.
    #[must_use]
    pub fn cluster_path(&self, cluster: &str) -> String {
        format!("{}/{cluster}", self.clusters_path)
    }

    /// Mount and path, for messages.
    #[must_use]
    pub fn label(&self, path: &str) -> String {
        format!("{}/{path}", self.mount)
    }
}
