//! Where the jobs keep their state, from the environment: `VAULT_ADDR` and the other
//! `VAULT_*` variables for a Vault or OpenBao server, else a local state directory, except
//! inside a cluster, where that would silently keep a CA in a pod's scratch space.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;
use zeroize::Zeroizing;

use crate::logging::LogFormat;
use crate::store::vault::{VaultAuth, VaultSettings};
use crate::vars::{ConfigError, parse_bool, parse_number, raw_from_vars};

/// Where Kubernetes mounts the pod's service-account token.
pub const DEFAULT_SA_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// The KV version 2 mount the state lives under when `VAULT_KV_MOUNT` is unset: `secret`, the
/// mount `vault server -dev` and `bao server -dev` create, and the one the policies in `vault/`
/// name.
pub const DEFAULT_KV_MOUNT: &str = "secret";

/// The variables every job reads, documented once for each job's `--help`.
pub const STORE_VARIABLES_HELP: &str = "\
STATE STORE:
    VAULT_ADDR                 Vault/OpenBao address; unset: use PKI_STATE_DIR (refused inside a cluster)
    VAULT_CACERT               PEM file of CAs trusted for Vault's TLS certificate
    VAULT_NAMESPACE            Vault namespace
    VAULT_SKIP_VERIFY          true: do not verify Vault's TLS certificate (logged as a warning)  [false]
    VAULT_AUTH_METHOD          token | kubernetes | jwt  [token if VAULT_TOKEN is set, else kubernetes]
    VAULT_TOKEN                token, for VAULT_AUTH_METHOD=token
    VAULT_AUTH_ROLE            role for kubernetes/jwt login  [the job's default role]
    VAULT_AUTH_MOUNT           auth mount, e.g. kubernetes-nas  [the method's name]
    VAULT_SA_TOKEN_PATH        service-account token file  [/var/run/secrets/kubernetes.io/serviceaccount/token]
    VAULT_KV_MOUNT             KV v2 mount  [secret]
    VAULT_REQUEST_TIMEOUT_SECS per-request timeout in seconds  [10]
    VAULT_MAX_ATTEMPTS         attempts per request on connection errors, 5xx and leader elections  [8]
    PKI_STATE_DIR              local state directory when VAULT_ADDR is unset  [./.pki-state]

LOGGING:
    LOG_FORMAT                 auto | json | text  [auto: json unless stderr is a terminal]
    RUST_LOG                   log filter  [info]";

#[derive(Debug, Default, Deserialize)]
struct RawStoreConfig {
    vault_addr: Option<String>,
    vault_cacert: Option<String>,
    vault_namespace: Option<String>,
    vault_skip_verify: Option<String>,
    vault_auth_method: Option<String>,
    vault_token: Option<String>,
    vault_auth_role: Option<String>,
    vault_auth_mount: Option<String>,
    vault_sa_token_path: Option<String>,
    vault_kv_mount: Option<String>,
    vault_request_timeout_secs: Option<String>,
    vault_max_attempts: Option<String>,
    pki_state_dir: Option<String>,
    kubernetes_service_host: Option<String>,
    log_format: Option<String>,
    rust_log: Option<String>,
}

/// Where the state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A Vault or OpenBao server.
    Vault(Box<VaultSettings>),
    /// A local directory with KV v2 semantics.
    Local {
        /// The directory.
        dir: PathBuf,
        /// The mount name inside it.
        mount: String,
    },
}

/// Validated store and logging configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Where the state lives.
    pub location: StoreLocation,
    /// Log format.
    pub log_format: LogFormat,
    /// `RUST_LOG`.
    pub log_filter: Option<String>,
}

impl StoreConfig {
    /// Validates the store variables. `default_role` is the job's Vault role.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
        default_role: &str,
    ) -> Result<Self, ConfigError> {
        let raw: RawStoreConfig = raw_from_vars(vars)?;
        let log_format = match raw.log_format.as_deref() {
            None | Some("auto") => LogFormat::Auto,
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => {
                return Err(ConfigError::new(
                    "LOG_FORMAT",
                    format!("'{other}' is not one of auto, json, text"),
                ));
            }
        };
        let kv_mount = raw
            .vault_kv_mount
            .clone()
            .unwrap_or_else(|| DEFAULT_KV_MOUNT.into());
        if kv_mount.contains('/') || kv_mount.starts_with('.') {
            return Err(ConfigError::new(
                "VAULT_KV_MOUNT",
                format!("'{kv_mount}' must be a single path segment"),
            ));
        }
        let token_path = PathBuf::from(
            raw.vault_sa_token_path
                .as_deref()
                .unwrap_or(DEFAULT_SA_TOKEN_PATH),
        );
        let location = if let Some(addr) = raw.vault_addr.as_deref() {
            StoreLocation::Vault(Box::new(vault_settings(
                &raw,
                addr,
                kv_mount,
                token_path,
                default_role,
            )?))
        } else {
            if inside_cluster(&raw, &token_path) {
                return Err(ConfigError::new(
                    "VAULT_ADDR",
                    "not set, and this runs inside a Kubernetes cluster: a local state directory \
                     would keep the CA in the pod's scratch space; set VAULT_ADDR",
                ));
            }
            StoreLocation::Local {
                dir: PathBuf::from(raw.pki_state_dir.as_deref().unwrap_or("./.pki-state")),
                mount: kv_mount,
            }
        };
        Ok(Self {
            location,
            log_format,
            log_filter: raw.rust_log,
        })
    }

    /// The KV mount, for messages (`secret/istio/ca`).
    #[must_use]
    pub fn kv_mount(&self) -> &str {
        match &self.location {
            StoreLocation::Vault(v) => &v.kv_mount,
            StoreLocation::Local { mount, .. } => mount,
        }
    }
}

/// Whether this runs inside a Kubernetes cluster: the API server's address is in the
/// environment, or a service-account token is mounted.
fn inside_cluster(raw: &RawStoreConfig, token_path: &Path) -> bool {
    raw.kubernetes_service_host.is_some() || token_path.exists()
}

fn vault_settings(
    raw: &RawStoreConfig,
    addr: &str,
    kv_mount: String,
    token_path: PathBuf,
    default_role: &str,
) -> Result<VaultSettings, ConfigError> {
    let address = Url::parse(addr)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            ConfigError::new(
                "VAULT_ADDR",
                format!("'{addr}' is not an http(s) URL such as https://vault:8200"),
            )
        })?;
    let skip_verify =
        parse_bool("VAULT_SKIP_VERIFY", raw.vault_skip_verify.as_deref())?.unwrap_or(false);
    let method = raw
        .vault_auth_method
        .as_deref()
        .unwrap_or(if raw.vault_token.is_some() {
            "token"
        } else {
            "kubernetes"
        });
    let role = raw
        .vault_auth_role
        .clone()
        .unwrap_or_else(|| default_role.to_owned());
    let auth = match method {
        "token" => VaultAuth::Token(Zeroizing::new(raw.vault_token.clone().ok_or_else(
            || ConfigError::new("VAULT_TOKEN", "not set, and VAULT_AUTH_METHOD is token"),
        )?)),
        "kubernetes" => VaultAuth::Kubernetes {
            mount: raw
                .vault_auth_mount
                .clone()
                .unwrap_or_else(|| "kubernetes".into()),
            role,
            token_path,
        },
        "jwt" => VaultAuth::Jwt {
            mount: raw.vault_auth_mount.clone().unwrap_or_else(|| "jwt".into()),
            role,
            token_path,
        },
        other => {
            return Err(ConfigError::new(
                "VAULT_AUTH_METHOD",
                format!("'{other}' is not one of token, kubernetes, jwt"),
            ));
        }
    };
    let request_timeout = parse_number(
        "VAULT_REQUEST_TIMEOUT_SECS",
        raw.vault_request_timeout_secs.as_deref(),
        10,
        1..=300,
    )?;
    // 8 attempts back off for about 12 s in all: long enough to ride out a Raft leader
    // election (the HA tests measured 1 to 6 s), short enough for a Job to fail visibly.
    let max_attempts = parse_number(
        "VAULT_MAX_ATTEMPTS",
        raw.vault_max_attempts.as_deref(),
        8,
        1..=20,
    )?;
    Ok(VaultSettings {
        address,
        ca_cert: raw.vault_cacert.as_ref().map(PathBuf::from),
        namespace: raw.vault_namespace.clone(),
        skip_verify,
        auth,
        kv_mount,
        request_timeout: Duration::from_secs(request_timeout),
        max_attempts: max_attempts as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vars::test_vars as vars;

    const NO_TOKEN: (&str, &str) = ("VAULT_SA_TOKEN_PATH", "/nonexistent/token");

    #[test]
    fn no_vault_addr_means_a_local_directory() {
        let config = StoreConfig::from_vars(vars(&[NO_TOKEN]), "role").unwrap();
        assert_eq!(
            config.location,
            StoreLocation::Local {
                dir: "./.pki-state".into(),
                mount: DEFAULT_KV_MOUNT.into()
            }
        );
    }

    #[test]
    fn inside_a_cluster_vault_addr_is_required() {
        let err = StoreConfig::from_vars(
            vars(&[NO_TOKEN, ("KUBERNETES_SERVICE_HOST", "10.0.0.1")]),
            "r",
        )
        .unwrap_err();
        assert_eq!(err.variable, "VAULT_ADDR");
    }

    #[test]
    fn kubernetes_login_is_the_default_without_a_token() {
        let config = StoreConfig::from_vars(
            vars(&[NO_TOKEN, ("VAULT_ADDR", "https://vault:8200")]),
            "istio-ca-bootstrap",
        )
        .unwrap();
        let StoreLocation::Vault(settings) = config.location else {
            panic!("not vault")
        };
        assert_eq!(
            settings.auth,
            VaultAuth::Kubernetes {
                mount: "kubernetes".into(),
                role: "istio-ca-bootstrap".into(),
                token_path: "/nonexistent/token".into()
            }
        );
        assert_eq!(settings.max_attempts, 8);
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases = [
            (
                ("VAULT_ADDR", "vault:8200"),
                "invalid VAULT_ADDR: 'vault:8200' is not an http(s) URL such as https://vault:8200",
            ),
            (
                ("VAULT_AUTH_METHOD", "ldap"),
                "invalid VAULT_AUTH_METHOD: 'ldap' is not one of token, kubernetes, jwt",
            ),
            (
                ("VAULT_SKIP_VERIFY", "maybe"),
                "invalid VAULT_SKIP_VERIFY: 'maybe' is not true or false",
            ),
            (
                ("VAULT_MAX_ATTEMPTS", "0"),
                "invalid VAULT_MAX_ATTEMPTS: '0' is not a whole number from 1 to 20",
            ),
            (
                ("LOG_FORMAT", "xml"),
                "invalid LOG_FORMAT: 'xml' is not one of auto, json, text",
            ),
        ];
        for ((name, value), expected) in cases {
            let mut pairs = vec![NO_TOKEN, (name, value)];
            if name != "VAULT_ADDR" {
                pairs.push(("VAULT_ADDR", "http://127.0.0.1:8200"));
            }
            assert_eq!(
                StoreConfig::from_vars(vars(&pairs), "r")
                    .unwrap_err()
                    .to_string(),
                expected
            );
        }
        let err = StoreConfig::from_vars(
            vars(&[
                NO_TOKEN,
                ("VAULT_ADDR", "http://v:1"),
                ("VAULT_AUTH_METHOD", "token"),
            ]),
            "r",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid VAULT_TOKEN: not set, and VAULT_AUTH_METHOD is token"
        );
    }

    #[test]
    fn tokens_never_reach_debug_output() {
        let config = StoreConfig::from_vars(
            vars(&[
                NO_TOKEN,
                ("VAULT_ADDR", "http://v:1"),
                ("VAULT_TOKEN", "hvs.SECRET-TOKEN"),
            ]),
            "r",
        )
        .unwrap();
        assert!(!format!("{config:?}").contains("SECRET-TOKEN"));
    }
}
