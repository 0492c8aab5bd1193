//! The sync job's configuration: the shared store variables, the mappings, and where the
//! Secrets go (the Kubernetes API, or manifests when no cluster is configured).

use std::path::PathBuf;

use job_support::config::{ConfigError, StoreConfig, dns_label, parse_number, raw_from_vars};
use job_support::metrics::Pushgateway;
use serde::Deserialize;

use crate::mapping::{Mapping, default_mappings, parse_mappings};
use crate::sops::{AgeRecipient, parse_recipients};

/// The Vault role the job logs in with unless `VAULT_AUTH_ROLE` says otherwise.
pub const DEFAULT_ROLE: &str = "istio-ca-sync";

/// This job's variables, for `--help`.
pub const VARIABLES_HELP: &str = "\
SYNC:
    SYNC_MAPPINGS_FILE   YAML file of KV path -> Secret mappings  [unset: istio/clusters/$SYNC_CLUSTER -> istio-system/cacerts]
                         kinds: istio-cacerts, opaque, and for the client CA one per HAProxy:
                         client-ca (plain HAProxy: ca.crt, crl.pem), client-ca-haproxy-ingress
                         (ca.crt, ca.crl), client-ca-haproxytech (tls.crt; no revocation)
    SYNC_CLUSTER         cluster name of the default mapping  [nas]
    SYNC_TARGET          kubernetes | directory | stdout  [kubernetes when KUBERNETES_SERVICE_HOST or KUBECONFIG is set, else directory]
    SYNC_OUTPUT_DIR      where the directory target writes Secret manifests (mode 0600)  [./.pki-sync]
    SYNC_AGE_RECIPIENTS  age public keys (age1…, comma-separated): the directory and stdout targets
                         write a Secret holding a private key SOPS-encrypted to them (its data only),
                         for Flux's kustomize-controller (decryption.provider: sops) or `sops decrypt`
    SYNC_PLAINTEXT_KEYS  allow: without recipients, the directory and stdout targets may write a
                         private key in the clear (keep it out of Git); unset: such a Secret is refused (exit 2)
    KUBE_MAX_ATTEMPTS    attempts per Kubernetes request on connection errors and 5xx  [4]";

#[derive(Debug, Default, Deserialize)]
struct RawSyncConfig {
    sync_age_recipients: Option<String>,
    sync_plaintext_keys: Option<String>,
    sync_mappings_file: Option<String>,
    sync_cluster: Option<String>,
    sync_target: Option<String>,
    sync_output_dir: Option<String>,
    kube_max_attempts: Option<String>,
    kubernetes_service_host: Option<String>,
    kubeconfig: Option<String>,
}

/// Where the Secrets go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetChoice {
    /// The Kubernetes API.
    Kubernetes {
        /// Attempts per request for transient failures.
        max_attempts: u32,
    },
    /// Manifest files in a directory.
    Directory(PathBuf),
    /// Manifests on standard output.
    Stdout,
}

/// Everything the job needs, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where the state lives.
    pub store: StoreConfig,
    /// KV mount, for messages.
    pub mount: String,
    /// What to mirror.
    pub mappings: Vec<Mapping>,
    /// Where to.
    pub target: TargetChoice,
    /// Where run metrics go.
    pub pushgateway: Option<Pushgateway>,
    /// `SYNC_PLAINTEXT_KEYS=allow`: manifests may carry private keys in the clear.
    pub plaintext_keys: bool,
    /// `SYNC_AGE_RECIPIENTS`: manifests carry private keys SOPS-encrypted to these.
    pub age_recipients: Vec<AgeRecipient>,
}

impl Config {
    /// Reads and validates the configuration; reads the mappings file.
    pub fn from_vars(vars: Vec<(String, String)>) -> Result<Self, ConfigError> {
        let store = StoreConfig::from_vars(vars.clone(), DEFAULT_ROLE)?;
        let pushgateway = Pushgateway::from_vars(vars.clone(), "nas-sync")?;
        let raw: RawSyncConfig = raw_from_vars(vars)?;
        let mount = store.kv_mount().to_owned();
        let mappings = if let Some(path) = &raw.sync_mappings_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new("SYNC_MAPPINGS_FILE", format!("cannot read {path}: {e}"))
            })?;
            parse_mappings(&text).map_err(|problems| {
                ConfigError::new(
                    "SYNC_MAPPINGS_FILE",
                    format!("{path} is invalid:\n  {}", problems.join("\n  ")),
                )
            })?
        } else {
            let cluster = raw.sync_cluster.as_deref().unwrap_or("nas");
            if !dns_label(cluster) {
                return Err(ConfigError::new(
                    "SYNC_CLUSTER",
                    format!("'{cluster}' is not a cluster name"),
                ));
            }
            default_mappings(cluster)
        };
        let in_cluster = raw.kubernetes_service_host.is_some() || raw.kubeconfig.is_some();
        let max_attempts = parse_number(
            "KUBE_MAX_ATTEMPTS",
            raw.kube_max_attempts.as_deref(),
            4,
            1..=20,
        )? as u32;
        let dir = PathBuf::from(raw.sync_output_dir.as_deref().unwrap_or("./.pki-sync"));
        let plaintext_keys = match raw.sync_plaintext_keys.as_deref() {
            None => false,
            Some("allow") => true,
            Some(other) => {
                return Err(ConfigError::new(
                    "SYNC_PLAINTEXT_KEYS",
                    format!("'{other}' is not 'allow' (unset it to refuse plaintext keys)"),
                ));
            }
        };
        let age_recipients = match raw.sync_age_recipients.as_deref() {
            None => Vec::new(),
            Some(text) => {
                parse_recipients(text).map_err(|e| ConfigError::new("SYNC_AGE_RECIPIENTS", e))?
            }
        };
        let target = match raw.sync_target.as_deref() {
            Some("kubernetes") => TargetChoice::Kubernetes { max_attempts },
            Some("stdout") => TargetChoice::Stdout,
            None if in_cluster => TargetChoice::Kubernetes { max_attempts },
            Some("directory") | None => TargetChoice::Directory(dir),
            Some(other) => {
                return Err(ConfigError::new(
                    "SYNC_TARGET",
                    format!("'{other}' is not one of kubernetes, directory, stdout"),
                ));
            }
        };
        Ok(Self {
            store,
            mount,
            mappings,
            target,
            pushgateway,
            plaintext_keys,
            age_recipients,
        })
    }
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
    fn without_a_cluster_manifests_go_to_a_directory() {
        let c = config(&[]).unwrap();
        assert_eq!(c.target, TargetChoice::Directory("./.pki-sync".into()));
        assert_eq!(c.mappings[0].source, "istio/clusters/nas");
        let c = config(&[
            ("KUBECONFIG", "/k"),
            ("VAULT_ADDR", "http://v:1"),
            ("VAULT_TOKEN", "t"),
        ])
        .unwrap();
        assert_eq!(c.target, TargetChoice::Kubernetes { max_attempts: 4 });
    }

    #[test]
    fn bad_values_name_their_variable() {
        assert_eq!(
            config(&[("SYNC_TARGET", "s3")]).unwrap_err().to_string(),
            "invalid SYNC_TARGET: 's3' is not one of kubernetes, directory, stdout"
        );
        assert_eq!(
            config(&[("SYNC_CLUSTER", "NAS")]).unwrap_err().to_string(),
            "invalid SYNC_CLUSTER: 'NAS' is not a cluster name"
        );
        assert_eq!(
            config(&[("SYNC_AGE_RECIPIENTS", "age1nope")])
                .unwrap_err()
                .to_string(),
            "invalid SYNC_AGE_RECIPIENTS: 'age1nope' is not an age recipient (age1…): \
             parse failed: character error: invalid character (code=o)"
        );
        assert_eq!(
            config(&[("SYNC_AGE_RECIPIENTS", " , ")])
                .unwrap_err()
                .to_string(),
            "invalid SYNC_AGE_RECIPIENTS: no recipient given (age1… public keys, separated by commas)"
        );
        let err = config(&[("SYNC_MAPPINGS_FILE", "/nonexistent/m.yaml")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid SYNC_MAPPINGS_FILE: cannot read /nonexistent/m.yaml: "),
            "{err}"
        );
    }
}
