//! The bootstrap job's configuration: the shared store variables, plus where the Istio CA
//! lives, which clusters get an intermediate, and how certificates look and renew.

use job_support::config::{
    ConfigError, StoreConfig, key_algorithm, kv_path, non_blank, parse_number, raw_from_vars,
    renewal_policy,
};
use job_support::metrics::Pushgateway;
use pki_core::istio::IstioCaParams;
use pki_core::time::Duration;
use serde::Deserialize;

use crate::converge::Plan;

/// The Vault role the job logs in with unless `VAULT_AUTH_ROLE` says otherwise.
pub const DEFAULT_ROLE: &str = "istio-ca-bootstrap";

/// This job's variables, for `--help`.
pub const VARIABLES_HELP: &str = "\
ISTIO CA:
    ISTIO_CA_PATH                     KV path of the root (cert + key)  [istio/ca]
    ISTIO_CLUSTERS_PATH               KV prefix of the per-cluster cacerts bundles  [istio/clusters]
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
                clusters,
                ca,
                renewal,
            },
            pushgateway,
        })
    }
}

fn cluster_names(list: &str) -> Result<Vec<String>, ConfigError> {
    let mut names: Vec<String> = Vec::new();
    for name in list.split(',').map(str::trim) {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !valid {
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
    fn defaults_match_the_seed() {
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
}
