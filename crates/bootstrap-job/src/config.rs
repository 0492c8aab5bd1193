//! The bootstrap job's configuration: the shared store variables, plus where the Istio CA
//! lives, which clusters get an intermediate, and how certificates look and renew.

use std::collections::BTreeMap;
use std::path::PathBuf;

use job_support::config::{
    ConfigError, StoreConfig, dns_label, key_algorithm, kv_path, non_blank, parse_number,
    raw_from_vars, renewal_policy,
};
use job_support::metrics::Pushgateway;
use pki_core::istio::IstioCaParams;
use pki_core::time::Duration;
use serde::Deserialize;

use crate::plan::Plan;
use crate::rotation::RotatePlan;
use crate::rotation::clusters::ClusterAccess;
use crate::rotation::state::ImportSource;

/// The Vault role the job logs in with unless `VAULT_AUTH_ROLE` says otherwise.
pub const DEFAULT_ROLE: &str = "istio-ca-bootstrap";

/// This job's variables, for `--help`.
pub const VARIABLES_HELP: &str = "\
ISTIO CA:
    ISTIO_CA_PATH                     KV path of the root (cert + key)  [istio/ca]
    ISTIO_CLUSTERS_PATH               KV prefix of the per-cluster cacerts bundles  [istio/clusters]
    ISTIO_ROTATION_PATH               KV path of the root rotation's record  [istio/rotation]
    ISTIO_CLUSTERS                    comma-separated cluster names  [homelab,nas]
    ISTIO_KEY_ALGORITHM               ecdsa-p256 | ecdsa-p384 | rsa-4096  [ecdsa-p256]
    ISTIO_ORGANIZATION                O of every subject  [Istio]
    ISTIO_ROOT_CN                     CN of the root  [Root CA]
    ISTIO_INTERMEDIATE_CN             CN of each intermediate (L = cluster name)  [Intermediate CA]
    ISTIO_ROOT_VALIDITY_DAYS          root validity  [3650]
    ISTIO_INTERMEDIATE_VALIDITY_DAYS  intermediate validity  [730]
    RENEW_LIFETIME_PERCENT            re-issue an intermediate after this share of its lifetime; 0 = never  [67]
    RENEW_MIN_DAYS_LEFT               re-issue an intermediate with fewer days left; 0 = never  [30]";

#[derive(Debug, Default, Deserialize)]
struct RawBootstrapConfig {
    istio_ca_path: Option<String>,
    istio_clusters_path: Option<String>,
    istio_rotation_path: Option<String>,
    istio_clusters: Option<String>,
    istio_key_algorithm: Option<String>,
    istio_organization: Option<String>,
    istio_root_cn: Option<String>,
    istio_intermediate_cn: Option<String>,
    istio_root_validity_days: Option<String>,
    istio_intermediate_validity_days: Option<String>,
    renew_lifetime_percent: Option<String>,
    renew_min_days_left: Option<String>,
}

/// Everything the job needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the state lives.
    pub store: StoreConfig,
    /// What the state should be.
    pub plan: Plan,
    /// Where run metrics go.
    pub pushgateway: Option<Pushgateway>,
}

impl Config {
    /// Reads and validates the configuration from `vars`.
    pub fn from_vars(vars: Vec<(String, String)>) -> Result<Self, ConfigError> {
        let store = StoreConfig::from_vars(vars.clone(), DEFAULT_ROLE)?;
        let pushgateway = Pushgateway::from_vars(vars.clone(), "istio-ca-bootstrap")?;
        let raw: RawBootstrapConfig = raw_from_vars(vars)?;
        let mount = store.kv_mount().to_owned();
        let root_path = kv_path("ISTIO_CA_PATH", raw.istio_ca_path, "istio/ca")?;
        let clusters_path = kv_path(
            "ISTIO_CLUSTERS_PATH",
            raw.istio_clusters_path,
            "istio/clusters",
        )?;
        let rotation_path = kv_path(
            "ISTIO_ROTATION_PATH",
            raw.istio_rotation_path,
            "istio/rotation",
        )?;
        let clusters = cluster_names(raw.istio_clusters.as_deref().unwrap_or("homelab,nas"))?;
        let key_algorithm =
            key_algorithm("ISTIO_KEY_ALGORITHM", raw.istio_key_algorithm.as_deref())?;
        let root_days = parse_number(
            "ISTIO_ROOT_VALIDITY_DAYS",
            raw.istio_root_validity_days.as_deref(),
            3650,
            1..=36_500,
        )?;
        let intermediate_days = parse_number(
            "ISTIO_INTERMEDIATE_VALIDITY_DAYS",
            raw.istio_intermediate_validity_days.as_deref(),
            730,
            1..=36_500,
        )?;
        if intermediate_days > root_days {
            return Err(ConfigError::new(
                "ISTIO_INTERMEDIATE_VALIDITY_DAYS",
                format!(
                    "{intermediate_days} exceeds ISTIO_ROOT_VALIDITY_DAYS ({root_days}); an intermediate cannot outlive its root"
                ),
            ));
        }
        let renewal = renewal_policy(
            raw.renew_lifetime_percent.as_deref(),
            raw.renew_min_days_left.as_deref(),
            67,
        )?;
        let ca = IstioCaParams {
            key_algorithm,
            organization: non_blank("ISTIO_ORGANIZATION", raw.istio_organization, "Istio")?,
            root_common_name: non_blank("ISTIO_ROOT_CN", raw.istio_root_cn, "Root CA")?,
            intermediate_common_name: non_blank(
                "ISTIO_INTERMEDIATE_CN",
                raw.istio_intermediate_cn,
                "Intermediate CA",
            )?,
            root_validity: Duration::days(root_days as i64),
            intermediate_validity: Duration::days(intermediate_days as i64),
        };
        Ok(Self {
            store,
            plan: Plan {
                mount,
                root_path,
                clusters_path,
                rotation_path,
                clusters,
                ca,
                renewal,
            },
            pushgateway,
        })
    }
}

/// The variables of `rotate`, for its `--help`.
pub const ROTATE_VARIABLES_HELP: &str = "\
ROTATION:
    ROTATE_KUBECONFIGS                cluster=kubeconfig file (its current context) or cluster=in-cluster,
                                      comma-separated; where each cluster's istio-system Secrets are read
    ROTATE_IMPORT                     cluster=cacerts|istio-ca-secret, comma-separated: what each cluster
                                      serves before the rotation  [cacerts if it exists, else istio-ca-secret]
    ROTATE_ROOT_PATH                  KV path of the root to move to; created when absent and not ISTIO_CA_PATH  [ISTIO_CA_PATH]
    ROTATE_NAMESPACE                  namespace of cacerts and istio-ca-secret  [istio-system]
    ROTATE_WORKLOAD_CERT_TTL_HOURS    the mesh's workload certificate lifetime; stages 1 and 2 settle this long  [24]
    KUBE_MAX_ATTEMPTS                 attempts per Kubernetes request on connection errors and 5xx  [3]";

#[derive(Debug, Default, Deserialize)]
struct RawRotateConfig {
    rotate_kubeconfigs: Option<String>,
    rotate_import: Option<String>,
    rotate_root_path: Option<String>,
    rotate_namespace: Option<String>,
    rotate_workload_cert_ttl_hours: Option<String>,
    kube_max_attempts: Option<String>,
}

/// The configuration of `rotate`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotateConfig {
    /// What the rotation does.
    pub plan: RotatePlan,
    /// How each cluster is reached.
    pub access: BTreeMap<String, ClusterAccess>,
    /// The namespace of `cacerts` and `istio-ca-secret`.
    pub namespace: String,
    /// Attempts per Kubernetes request.
    pub kube_max_attempts: u32,
}

impl RotateConfig {
    /// Reads the variables of `rotate`; `config` is the job's own configuration.
    pub fn from_vars(vars: Vec<(String, String)>, config: &Config) -> Result<Self, ConfigError> {
        let raw: RawRotateConfig = raw_from_vars(vars)?;
        let clusters = &config.plan.clusters;
        let access = cluster_pairs(
            "ROTATE_KUBECONFIGS",
            raw.rotate_kubeconfigs.as_deref(),
            clusters,
        )?
        .into_iter()
        .map(|(cluster, value)| {
            let how = if value == "in-cluster" {
                ClusterAccess::InCluster
            } else {
                ClusterAccess::Kubeconfig(PathBuf::from(value))
            };
            (cluster, how)
        })
        .collect();
        let imports = cluster_pairs("ROTATE_IMPORT", raw.rotate_import.as_deref(), clusters)?
            .into_iter()
            .map(|(cluster, value)| {
                ImportSource::parse(&value)
                    .map(|source| (cluster.clone(), source))
                    .ok_or_else(|| {
                        ConfigError::new(
                            "ROTATE_IMPORT",
                            format!(
                                "'{cluster}={value}': '{value}' is not cacerts or istio-ca-secret"
                            ),
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        let root_path = kv_path(
            "ROTATE_ROOT_PATH",
            raw.rotate_root_path
                .or_else(|| Some(config.plan.root_path.clone())),
            "istio/ca",
        )?;
        for (variable, other) in [
            ("ISTIO_ROTATION_PATH", &config.plan.rotation_path),
            ("ISTIO_CLUSTERS_PATH", &config.plan.clusters_path),
        ] {
            if root_path == *other || root_path.starts_with(&format!("{other}/")) {
                return Err(ConfigError::new(
                    "ROTATE_ROOT_PATH",
                    format!(
                        "'{root_path}' lies in {variable} ('{other}'); name an entry of its own such as istio/ca-next"
                    ),
                ));
            }
        }
        let namespace = non_blank("ROTATE_NAMESPACE", raw.rotate_namespace, "istio-system")?;
        let ttl_hours = parse_number(
            "ROTATE_WORKLOAD_CERT_TTL_HOURS",
            raw.rotate_workload_cert_ttl_hours.as_deref(),
            24,
            0..=8760,
        )?;
        let kube_max_attempts = parse_number(
            "KUBE_MAX_ATTEMPTS",
            raw.kube_max_attempts.as_deref(),
            3,
            1..=10,
        )?;
        Ok(Self {
            plan: RotatePlan {
                root_path,
                imports,
                workload_cert_ttl: Duration::hours(ttl_hours as i64),
            },
            access,
            namespace,
            kube_max_attempts: kube_max_attempts as u32,
        })
    }
}

/// `cluster=value` pairs, comma-separated, each cluster one of `clusters` and named once.
fn cluster_pairs(
    variable: &'static str,
    list: Option<&str>,
    clusters: &[String],
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for item in list
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
    {
        let Some((cluster, value)) = item.split_once('=').map(|(c, v)| (c.trim(), v.trim())) else {
            return Err(ConfigError::new(
                variable,
                format!("'{item}' is not of the form cluster=value"),
            ));
        };
        if !clusters.iter().any(|c| c == cluster) {
            return Err(ConfigError::new(
                variable,
                format!(
                    "'{cluster}' is not in ISTIO_CLUSTERS ({})",
                    clusters.join(",")
                ),
            ));
        }
        if value.is_empty() {
            return Err(ConfigError::new(variable, format!("'{item}' has no value")));
        }
        if pairs.iter().any(|(c, _)| c == cluster) {
            return Err(ConfigError::new(
                variable,
                format!("'{cluster}' is named twice"),
            ));
        }
        pairs.push((cluster.to_owned(), value.to_owned()));
    }
    Ok(pairs)
}

fn cluster_names(list: &str) -> Result<Vec<String>, ConfigError> {
    let mut names: Vec<String> = Vec::new();
    for name in list.split(',').map(str::trim) {
        if !dns_label(name) {
            return Err(ConfigError::new(
                "ISTIO_CLUSTERS",
                format!(
                    "'{name}' is not a cluster name (lowercase letters, digits and '-', as in homelab,nas)"
                ),
            ));
        }
        if names.iter().any(|n| n == name) {
            return Err(ConfigError::new(
                "ISTIO_CLUSTERS",
                format!("'{name}' is listed twice"),
            ));
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut vars: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        vars.push(("VAULT_SA_TOKEN_PATH".into(), "/nonexistent".into()));
        Config::from_vars(vars)
    }

    #[test]
    fn defaults_match_the_previous_scripts() {
        let plan = config(&[]).unwrap().plan;
        assert_eq!(
            (plan.root_path.as_str(), plan.clusters_path.as_str()),
            ("istio/ca", "istio/clusters")
        );
        assert_eq!(plan.clusters, ["homelab", "nas"]);
        assert_eq!(plan.ca, IstioCaParams::default());
        assert_eq!(plan.renewal.min_days_left, Some(30));
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases = [
            (
                ("ISTIO_CLUSTERS", "homelab,NAS"),
                "invalid ISTIO_CLUSTERS: 'NAS' is not a cluster name (lowercase letters, digits and '-', as in homelab,nas)",
            ),
            (
                ("ISTIO_CLUSTERS", "nas,nas"),
                "invalid ISTIO_CLUSTERS: 'nas' is listed twice",
            ),
            (
                ("ISTIO_CA_PATH", "/istio/ca"),
                "invalid ISTIO_CA_PATH: '/istio/ca' is not a relative KV path such as istio/ca",
            ),
            (
                ("ISTIO_KEY_ALGORITHM", "dsa"),
                "invalid ISTIO_KEY_ALGORITHM: 'dsa' is not one of ecdsa-p256, ecdsa-p384, rsa-4096",
            ),
            (
                ("ISTIO_ROOT_VALIDITY_DAYS", "ten"),
                "invalid ISTIO_ROOT_VALIDITY_DAYS: 'ten' is not a whole number from 1 to 36500",
            ),
            (
                ("ISTIO_INTERMEDIATE_VALIDITY_DAYS", "4000"),
                "invalid ISTIO_INTERMEDIATE_VALIDITY_DAYS: 4000 exceeds ISTIO_ROOT_VALIDITY_DAYS (3650); an intermediate cannot outlive its root",
            ),
            (
                ("RENEW_LIFETIME_PERCENT", "150"),
                "invalid RENEW_LIFETIME_PERCENT: '150' is not a whole number from 0 to 100",
            ),
        ];
        for ((name, value), expected) in cases {
            assert_eq!(config(&[(name, value)]).unwrap_err().to_string(), expected);
        }
    }

    fn rotate(pairs: &[(&str, &str)]) -> Result<RotateConfig, ConfigError> {
        let vars: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        RotateConfig::from_vars(vars, &config(&[]).unwrap())
    }

    #[test]
    fn rotate_settings_default_and_parse() {
        let defaults = rotate(&[]).unwrap();
        assert_eq!(defaults.plan.root_path, "istio/ca");
        assert_eq!(defaults.plan.workload_cert_ttl, Duration::hours(24));
        assert!(defaults.access.is_empty() && defaults.plan.imports.is_empty());
        assert_eq!(defaults.namespace, "istio-system");
        let set = rotate(&[
            (
                "ROTATE_KUBECONFIGS",
                "homelab=in-cluster, nas=/etc/nas.yaml",
            ),
            ("ROTATE_IMPORT", "homelab=istio-ca-secret"),
            ("ROTATE_ROOT_PATH", "istio/ca-2031"),
            ("ROTATE_WORKLOAD_CERT_TTL_HOURS", "0"),
        ])
        .unwrap();
        assert_eq!(set.access["homelab"], ClusterAccess::InCluster);
        assert_eq!(
            set.access["nas"],
            ClusterAccess::Kubeconfig(PathBuf::from("/etc/nas.yaml"))
        );
        assert_eq!(set.plan.imports["homelab"], ImportSource::SelfSignedSecret);
        assert_eq!(set.plan.root_path, "istio/ca-2031");
        assert_eq!(set.plan.workload_cert_ttl, Duration::ZERO);
    }

    #[test]
    fn bad_rotate_values_name_their_variable() {
        let cases = [
            (
                ("ROTATE_KUBECONFIGS", "edge=/x"),
                "invalid ROTATE_KUBECONFIGS: 'edge' is not in ISTIO_CLUSTERS (homelab,nas)",
            ),
            (
                ("ROTATE_KUBECONFIGS", "nas"),
                "invalid ROTATE_KUBECONFIGS: 'nas' is not of the form cluster=value",
            ),
            (
                ("ROTATE_KUBECONFIGS", "nas=a,nas=b"),
                "invalid ROTATE_KUBECONFIGS: 'nas' is named twice",
            ),
            (
                ("ROTATE_IMPORT", "nas=vault"),
                "invalid ROTATE_IMPORT: 'nas=vault': 'vault' is not cacerts or istio-ca-secret",
            ),
            (
                ("ROTATE_ROOT_PATH", "istio/clusters/next"),
                "invalid ROTATE_ROOT_PATH: 'istio/clusters/next' lies in ISTIO_CLUSTERS_PATH ('istio/clusters'); name an entry of its own such as istio/ca-next",
            ),
            (
                ("ROTATE_WORKLOAD_CERT_TTL_HOURS", "1d"),
                "invalid ROTATE_WORKLOAD_CERT_TTL_HOURS: '1d' is not a whole number from 0 to 8760",
            ),
        ];
        for ((name, value), expected) in cases {
            assert_eq!(rotate(&[(name, value)]).unwrap_err().to_string(), expected);
        }
    }
}
