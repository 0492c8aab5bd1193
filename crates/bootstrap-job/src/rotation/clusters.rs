//! Reading what each cluster serves: its `istio-system/cacerts` Secret (what istiod loads) and,
//! to import a self-signed CA, `istio-system/istio-ca-secret`. One small trait, so the rotation
//! logic is tested with a double and the Kubernetes side against an API server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use job_support::Failure;
use job_support::exit::Classified;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tracing::warn;

/// The data of a Secret, decoded (PEM text; bytes that are not UTF-8 are replaced).
pub type SecretFiles = BTreeMap<String, String>;

/// How to reach one cluster's API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterAccess {
    /// A kubeconfig file; its current context.
    Kubeconfig(PathBuf),
    /// The pod's own cluster (service-account token, `KUBERNETES_SERVICE_HOST`).
    InCluster,
}

/// Reads Secrets of the Istio namespace in each cluster.
#[allow(async_fn_in_trait)] // Used with concrete types only.
pub trait ClusterSecrets {
    /// Whether `cluster` can be read at all (access configured).
    fn reachable(&self, cluster: &str) -> bool;
    /// The Secret `name` in `cluster`'s Istio namespace, or `None` when it does not exist.
    async fn secret(&self, cluster: &str, name: &str) -> anyhow::Result<Option<SecretFiles>>;
}

/// The clusters' API servers.
pub struct KubeClusters {
    clients: BTreeMap<String, kube::Client>,
    namespace: String,
    max_attempts: u32,
}

impl std::fmt::Debug for KubeClusters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeClusters")
            .field("clusters", &self.clients.keys().collect::<Vec<_>>())
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl KubeClusters {
    /// Builds a client per configured cluster, with timeouts.
    pub async fn connect(
        access: &BTreeMap<String, ClusterAccess>,
        namespace: &str,
        max_attempts: u32,
    ) -> anyhow::Result<Self> {
        let mut clients = BTreeMap::new();
        for (cluster, how) in access {
            let config_error = |message: String| Classified {
                failure: Failure::Config,
                message,
            };
            let mut config = match how {
                ClusterAccess::InCluster => kube::Config::incluster().map_err(|e| {
                    config_error(format!(
                        "cluster '{cluster}': no in-cluster Kubernetes configuration: {e}"
                    ))
                })?,
                ClusterAccess::Kubeconfig(path) => {
                    let file = Kubeconfig::read_from(path).map_err(|e| {
                        config_error(format!(
                            "cluster '{cluster}': cannot read the kubeconfig {}: {e}",
                            path.display()
                        ))
                    })?;
                    kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                        .await
                        .map_err(|e| {
                            config_error(format!(
                                "cluster '{cluster}': unusable kubeconfig {}: {e}",
                                path.display()
                            ))
                        })?
                }
            };
            config.connect_timeout = Some(Duration::from_secs(5));
            config.read_timeout = Some(Duration::from_secs(15));
            config.write_timeout = Some(Duration::from_secs(15));
            let client = kube::Client::try_from(config).map_err(|e| {
                config_error(format!(
                    "cluster '{cluster}': cannot build the Kubernetes client: {e}"
                ))
            })?;
            clients.insert(cluster.clone(), client);
        }
        Ok(Self {
            clients,
            namespace: namespace.to_owned(),
            max_attempts: max_attempts.max(1),
        })
    }
}

impl ClusterSecrets for KubeClusters {
    fn reachable(&self, cluster: &str) -> bool {
        self.clients.contains_key(cluster)
    }

    async fn secret(&self, cluster: &str, name: &str) -> anyhow::Result<Option<SecretFiles>> {
        let Some(client) = self.clients.get(cluster) else {
            return Err(Classified {
                failure: Failure::Config,
                message: format!("cluster '{cluster}' has no entry in ROTATE_KUBECONFIGS"),
            }
            .into());
        };
        let api: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
        let target = format!("{cluster}: secret '{}/{name}'", self.namespace);
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=self.max_attempts {
            match api.get_opt(name).await {
                Ok(secret) => {
                    return Ok(secret.map(|s| {
                        s.data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                            .collect()
                    }));
                }
                Err(e) => {
                    let (failure, transient, detail) = classify(&e);
                    if !transient || attempt == self.max_attempts {
                        let suffix = if transient {
                            format!(" (after {attempt} attempts)")
                        } else {
                            String::new()
                        };
                        return Err(Classified {
                            failure,
                            message: format!("read {target} failed: {detail}{suffix}"),
                        }
                        .into());
                    }
                    warn!(cluster, secret = name, attempt, retry_in_ms = delay.as_millis() as u64,
                          error = %detail, "Kubernetes request failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(3));
                }
            }
        }
        Err(Classified {
            failure: Failure::Other,
            message: format!("read {target}: no attempt was made"),
        }
        .into())
    }
}

/// Exit class, whether retrying can help, and what to say (the API server's message
/// included). The same classes as nas-sync-job's: 401/403 are the role's, 5xx and connection
/// failures may pass, any other 4xx will not.
fn classify(e: &kube::Error) -> (Failure, bool, String) {
    match e {
        kube::Error::Api(status) => {
            let detail = format!(
                "the API server answered {} {}: {}",
                status.code, status.reason, status.message
            );
            match status.code {
                401 | 403 => (Failure::Denied, false, detail),
                429 | 500.. => (Failure::Unreachable, true, detail),
                _ => (Failure::Rejected, false, detail),
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => (
            Failure::Unreachable,
            true,
            format!("cannot reach the API server: {e}"),
        ),
        other => (Failure::Other, false, other.to_string()),
    }
}
