//! The client issuer's configuration: the shared store variables, the state paths, the CA and
//! client defaults, the CRL schedule, the legacy CAs of a migration, and the Pushgateway.

use std::path::PathBuf;

use job_support::config::{
    ConfigError, StoreConfig, key_algorithm, kv_path, non_blank, parse_bool, parse_number,
    raw_from_vars, renewal_policy,
};
use job_support::metrics::Pushgateway;
use pki_core::time::{Duration, OffsetDateTime};
use pki_core::{
    Certificate, Crl, CrlSet, KeyAlgorithm, Pkcs12Profile, PkiError, RenewalPolicy,
    check_client_trust,
};
use serde::Deserialize;

/// The Vault role the job logs in with unless `VAULT_AUTH_ROLE` says otherwise.
pub const DEFAULT_ROLE: &str = "client-issuer";

/// This job's variables, for `--help`.
pub const VARIABLES_HELP: &str = "\
CLIENT PKI:
    CLIENTS_FILE             YAML file of declared clients (a mounted ConfigMap)  [/etc/client-issuer/clients.yaml]
    PKI_CA_PATH              KV path of the public trust bundle + CRL (what HAProxy gets)  [pki/ca]
    PKI_ISSUER_PATH          KV path of the client CA certificate and key  [pki/issuer]
    PKI_CLIENTS_PATH         KV prefix of the per-user entries  [pki/clients]
    PREVIOUS_CA              what to do with a CA certificate + key the previous scripts left at PKI_CA_PATH:
                               issuer   it becomes this job's client CA (its key moves to PKI_ISSUER_PATH)
                               trusted  HAProxy keeps trusting it, with a CRL this job signs, while users
                                        move to this job's CA (its key moves to PKI_PREVIOUS_CA_PATH)
                             required while such an entry exists; old versions of PKI_CA_PATH are destroyed
    PKI_PREVIOUS_CA_PATH     KV path the previous CA's key moves to with PREVIOUS_CA=trusted  [pki/previous-ca]
    CLIENT_CA_KEY_ALGORITHM  ecdsa-p256 | ecdsa-p384 | rsa-4096  [ecdsa-p256]
    CLIENT_CA_ORGANIZATION   O of the client CA  [NAS]
    CLIENT_CA_CN             CN of the client CA  [Client CA]
    CLIENT_CA_VALIDITY_DAYS  client CA validity  [3650]
    CLIENT_KEY_ALGORITHM     key type of client certificates  [ecdsa-p256]
    CLIENT_VALIDITY_DAYS     default client certificate validity  [365]
    PKCS12_ITERATIONS        PBKDF and MAC iterations  [2048]
    RENEW_LIFETIME_PERCENT   re-issue a client after this share of its lifetime; 0 = never  [80]
    RENEW_MIN_DAYS_LEFT      re-issue a client with fewer days left; 0 = never  [30]
    CRL_VALIDITY_DAYS        nextUpdate of a new CRL, in days from now  [14]
    CRL_RENEW_DAYS_LEFT      re-sign the CRL when fewer days are left before nextUpdate  [7]
    LEGACY_CA_FILES          comma-separated PEM files of CAs HAProxy keeps trusting during a migration
    LEGACY_CRL_FILES         comma-separated PEM CRL files, one per legacy CA (required with LEGACY_CA_FILES)
    REVOKE_MAX_PERCENT       refuse a run that would revoke more than this share of active clients  [50]
    REVOKE_MAX_COUNT         ... or more than this many  [10]
    ALLOW_MASS_REVOCATION    true: allow one run past both limits (or allow_revoke_all: true in the file)";

#[derive(Debug, Default, Deserialize)]
struct RawIssuerConfig {
    clients_file: Option<String>,
    pki_ca_path: Option<String>,
    pki_issuer_path: Option<String>,
    pki_clients_path: Option<String>,
    previous_ca: Option<String>,
    pki_previous_ca_path: Option<String>,
    client_ca_key_algorithm: Option<String>,
    client_ca_organization: Option<String>,
    client_ca_cn: Option<String>,
    client_ca_validity_days: Option<String>,
    client_key_algorithm: Option<String>,
    client_validity_days: Option<String>,
    pkcs12_iterations: Option<String>,
    renew_lifetime_percent: Option<String>,
    renew_min_days_left: Option<String>,
    crl_validity_days: Option<String>,
    crl_renew_days_left: Option<String>,
    legacy_ca_files: Option<String>,
    legacy_crl_files: Option<String>,
    revoke_max_percent: Option<String>,
    revoke_max_count: Option<String>,
    allow_mass_revocation: Option<String>,
}

/// A CA of the previous system that HAProxy keeps trusting during a migration, with the CRL
/// HAProxy needs for it.
pub type LegacyCa = pki_core::TrustedCa;

/// Everything the job needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the state lives.
    pub store: StoreConfig,
    /// The declared clients file.
    pub clients_file: PathBuf,
    /// State paths and certificate settings.
    pub pki: PkiSettings,
    /// Where run metrics go.
    pub pushgateway: Option<Pushgateway>,
}

/// State paths and certificate settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PkiSettings {
    /// KV mount, for messages.
    pub mount: String,
    /// Public bundle path.
    pub ca_path: String,
    /// Issuer (CA key) path.
    pub issuer_path: String,
    /// Client entries prefix.
    pub clients_path: String,
    /// What to do with a CA the previous scripts left at the bundle path (`PREVIOUS_CA`).
    pub previous_ca: Option<PreviousCa>,
    /// Where a previous CA kept trusted keeps its key.
    pub previous_ca_path: String,
    /// Client CA key type.
    pub ca_key_algorithm: KeyAlgorithm,
    /// Client CA O.
    pub ca_organization: String,
    /// Client CA CN.
    pub ca_common_name: String,
    /// Client CA validity.
    pub ca_validity: Duration,
    /// Client key type.
    pub client_key_algorithm: KeyAlgorithm,
    /// Default client validity in days.
    pub client_validity_days: u32,
    /// Default PKCS#12 profile for the one-off command.
    pub default_profile: Pkcs12Profile,
    /// PKCS#12 iterations.
    pub pkcs12_iterations: u32,
    /// When a client certificate is re-issued.
    pub renewal: RenewalPolicy,
    /// nextUpdate of a new CRL.
    pub crl_validity: Duration,
    /// Re-sign when less than this is left before nextUpdate.
    pub crl_renew_before: Duration,
    /// CAs kept in the trust bundle during a migration.
    pub legacy: Vec<LegacyCa>,
    /// How many clients one run may revoke by their absence from the file.
    pub revoke_guard: RevokeGuard,
}

/// The operator's choice for a CA certificate and key the previous scripts left at the
/// bundle path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreviousCa {
    /// It becomes this job's issuing CA: its key moves to the issuer path.
    Issuer,
    /// It stays trusted in the bundle (with a CRL this job signs) while users move to this
    /// job's CA: its key moves to the previous-CA path.
    Trusted,
}

impl PreviousCa {
    /// The value of `PREVIOUS_CA` that chooses it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Issuer => "issuer",
            Self::Trusted => "trusted",
        }
    }
}

/// The limit on revocations by absence: an emptied or truncated clients file must not
/// revoke everyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevokeGuard {
    /// Refuse when more than this percentage of active clients would be revoked.
    pub max_percent: u64,
    /// Refuse when more than this many would be revoked.
    pub max_count: u64,
    /// `ALLOW_MASS_REVOCATION=true`: this run may go past both limits.
    pub allowed: bool,
}

impl Config {
    /// Reads and validates the configuration from `vars`; reads the legacy CA and CRL files.
    pub fn from_vars(vars: Vec<(String, String)>) -> Result<Self, ConfigError> {
        let store = StoreConfig::from_vars(vars.clone(), DEFAULT_ROLE)?;
        let raw: RawIssuerConfig = raw_from_vars(vars.clone())?;
        let mount = store.kv_mount().to_owned();
        let pki = pki_settings(&raw, mount)?;
        let pushgateway = Pushgateway::from_vars(vars, "client-issuer")?;
        Ok(Self {
            store,
            clients_file: PathBuf::from(
                raw.clients_file
                    .as_deref()
                    .unwrap_or("/etc/client-issuer/clients.yaml"),
            ),
            pki,
            pushgateway,
        })
    }
}

impl PkiSettings {
    /// Every default, on `mount`: what an unconfigured run uses.
    #[cfg(test)]
    pub(crate) fn defaults(mount: &str) -> Self {
        pki_settings(&RawIssuerConfig::default(), mount.to_owned())
            .unwrap_or_else(|e| unreachable!("the defaults are valid: {e}"))
    }
}

fn pki_settings(raw: &RawIssuerConfig, mount: String) -> Result<PkiSettings, ConfigError> {
    let crl_days = parse_number(
        "CRL_VALIDITY_DAYS",
        raw.crl_validity_days.as_deref(),
        14,
        1..=365,
    )?;
    let crl_renew = parse_number(
        "CRL_RENEW_DAYS_LEFT",
        raw.crl_renew_days_left.as_deref(),
        7,
        0..=365,
    )?;
    if crl_renew >= crl_days {
        return Err(ConfigError::new(
            "CRL_RENEW_DAYS_LEFT",
            format!(
                "{crl_renew} must be less than CRL_VALIDITY_DAYS ({crl_days}), or every run re-signs the CRL"
            ),
        ));
    }
    let settings = PkiSettings {
        mount,
        ca_path: kv_path("PKI_CA_PATH", raw.pki_ca_path.clone(), "pki/ca")?,
        issuer_path: kv_path("PKI_ISSUER_PATH", raw.pki_issuer_path.clone(), "pki/issuer")?,
        clients_path: kv_path(
            "PKI_CLIENTS_PATH",
            raw.pki_clients_path.clone(),
            "pki/clients",
        )?,
        previous_ca: previous_ca(raw.previous_ca.as_deref())?,
        previous_ca_path: kv_path(
            "PKI_PREVIOUS_CA_PATH",
            raw.pki_previous_ca_path.clone(),
            "pki/previous-ca",
        )?,
        ca_key_algorithm: key_algorithm(
            "CLIENT_CA_KEY_ALGORITHM",
            raw.client_ca_key_algorithm.as_deref(),
        )?,
        ca_organization: non_blank(
            "CLIENT_CA_ORGANIZATION",
            raw.client_ca_organization.clone(),
            "NAS",
        )?,
        ca_common_name: non_blank("CLIENT_CA_CN", raw.client_ca_cn.clone(), "Client CA")?,
        ca_validity: Duration::days(parse_number(
            "CLIENT_CA_VALIDITY_DAYS",
            raw.client_ca_validity_days.as_deref(),
            3650,
            1..=36_500,
        )? as i64),
        client_key_algorithm: key_algorithm(
            "CLIENT_KEY_ALGORITHM",
            raw.client_key_algorithm.as_deref(),
        )?,
        client_validity_days: parse_number(
            "CLIENT_VALIDITY_DAYS",
            raw.client_validity_days.as_deref(),
            365,
            1..=3650,
        )? as u32,
        default_profile: Pkcs12Profile::Modern,
        pkcs12_iterations: parse_number(
            "PKCS12_ITERATIONS",
            raw.pkcs12_iterations.as_deref(),
            2048,
            1..=1_000_000,
        )? as u32,
        renewal: renewal_policy(
            raw.renew_lifetime_percent.as_deref(),
            raw.renew_min_days_left.as_deref(),
            80,
        )?,
        crl_validity: Duration::days(crl_days as i64),
        crl_renew_before: Duration::days(crl_renew as i64),
        legacy: legacy_cas(
            raw.legacy_ca_files.as_deref(),
            raw.legacy_crl_files.as_deref(),
        )?,
        revoke_guard: revoke_guard(raw)?,
    };
    check_previous_ca_path(&settings)?;
    Ok(settings)
}

fn revoke_guard(raw: &RawIssuerConfig) -> Result<RevokeGuard, ConfigError> {
    Ok(RevokeGuard {
        max_percent: parse_number(
            "REVOKE_MAX_PERCENT",
            raw.revoke_max_percent.as_deref(),
            50,
            0..=100,
        )?,
        max_count: parse_number(
            "REVOKE_MAX_COUNT",
            raw.revoke_max_count.as_deref(),
            10,
            0..=1_000_000,
        )?,
        allowed: parse_bool(
            "ALLOW_MASS_REVOCATION",
            raw.allow_mass_revocation.as_deref().map(str::trim),
        )?
        .unwrap_or(false),
    })
}

fn previous_ca(value: Option<&str>) -> Result<Option<PreviousCa>, ConfigError> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some("issuer") => Ok(Some(PreviousCa::Issuer)),
        Some("trusted") => Ok(Some(PreviousCa::Trusted)),
        Some(other) => Err(ConfigError::new(
            "PREVIOUS_CA",
            format!("'{other}' is not issuer or trusted"),
        )),
    }
}

/// The previous CA's key must land at a path of its own: over the bundle it would stay
/// readable by the bundle's readers, over the issuer it would replace this job's CA.
fn check_previous_ca_path(settings: &PkiSettings) -> Result<(), ConfigError> {
    let own = &settings.previous_ca_path;
    let clients = format!("{}/", settings.clients_path);
    if own == &settings.ca_path || own == &settings.issuer_path || own.starts_with(&clients) {
        return Err(ConfigError::new(
            "PKI_PREVIOUS_CA_PATH",
            format!(
                "'{own}' must differ from PKI_CA_PATH and PKI_ISSUER_PATH and lie outside PKI_CLIENTS_PATH"
            ),
        ));
    }
    Ok(())
}

fn file_list(value: Option<&str>) -> Vec<PathBuf> {
    value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// The legacy CAs, checked by the trust policy the published bundle follows
/// ([`pki_core::check_client_trust`]) at the time the job starts: each must be a valid CA with a
/// current CRL it signed, since HAProxy with `crl-file` refuses every client of a CA of its
/// `ca-file` that has none. Refusing the configuration here keeps a migration from locking
/// those clients out.
fn legacy_cas(
    ca_files: Option<&str>,
    crl_files: Option<&str>,
) -> Result<Vec<LegacyCa>, ConfigError> {
    let read = |variable: &'static str, path: &PathBuf| {
        std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(variable, format!("cannot read {}: {e}", path.display())))
    };
    let mut crls = Vec::new();
    for path in file_list(crl_files) {
        let text = read("LEGACY_CRL_FILES", &path)?;
        crls.push(
            Crl::from_pem(&text, &path.display().to_string())
                .map_err(|e| ConfigError::new("LEGACY_CRL_FILES", e.to_string()))?,
        );
    }
    let mut cas = Vec::new();
    for path in file_list(ca_files) {
        let text = read("LEGACY_CA_FILES", &path)?;
        cas.extend(
            Certificate::chain_from_pem(&text, &path.display().to_string())
                .map_err(|e| ConfigError::new("LEGACY_CA_FILES", e.to_string()))?,
        );
    }
    if cas.is_empty() {
        return Ok(Vec::new());
    }
    let crl_set = CrlSet {
        crls: &crls,
        label: "the legacy CRL files",
    };
    let bundle =
        check_client_trust(cas, Some(crl_set), OffsetDateTime::now_utc()).map_err(|e| {
            let variable = match e {
                PkiError::MissingCrl { .. } | PkiError::CrlExpired { .. } => "LEGACY_CRL_FILES",
                _ => "LEGACY_CA_FILES",
            };
            ConfigError::new(variable, e.to_string())
        })?;
    Ok(bundle.cas().to_vec())
}
