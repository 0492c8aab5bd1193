//! The Istio plug-in CA layout: one root shared by every cluster of the mesh, one
//! intermediate per cluster, and the four files of the `istio-system/cacerts` Secret. The
//! verifier refuses what istiod would refuse at start-up, and reports what an operator checks.

use time::{Duration, OffsetDateTime};

use crate::ca::{CaCredential, CaParams, SubjectName, generate_root_ca, issue_intermediate_ca};
use crate::cert::{Certificate, CertificateInfo, chain_to_pem};
use crate::error::{PkiError, Result};
use crate::key::{KeyAlgorithm, SecretPem, SigningKey};

/// `cacerts` key: the cluster's intermediate CA certificate.
pub const CA_CERT: &str = "ca-cert.pem";
/// `cacerts` key: the intermediate's private key, unencrypted PKCS#8.
pub const CA_KEY: &str = "ca-key.pem";
/// `cacerts` key: the mesh root certificate.
pub const ROOT_CERT: &str = "root-cert.pem";
/// `cacerts` key: `ca-cert.pem` followed by `root-cert.pem`.
pub const CERT_CHAIN: &str = "cert-chain.pem";
/// Stored-root key: the root's private key (never part of a cluster bundle).
pub const ROOT_KEY: &str = "root-key.pem";

/// The four files of a cluster's `cacerts` Secret, exactly as istiod reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioCaBundle {
    /// `ca-cert.pem`.
    pub ca_cert: String,
    /// `ca-key.pem`.
    pub ca_key: SecretPem,
    /// `root-cert.pem`.
    pub root_cert: String,
    /// `cert-chain.pem`.
    pub cert_chain: String,
}

impl IstioCaBundle {
    /// The files as (Secret key, content) pairs, in a fixed order.
    #[must_use]
    pub fn files(&self) -> [(&'static str, &str); 4] {
        [
            (CA_CERT, &self.ca_cert),
            (CA_KEY, self.ca_key.expose()),
            (ROOT_CERT, &self.root_cert),
            (CERT_CHAIN, &self.cert_chain),
        ]
    }
}

/// How the hierarchy is named and how long each level lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioCaParams {
    /// Key type for the root and the intermediates.
    pub key_algorithm: KeyAlgorithm,
    /// Organization in every subject.
    pub organization: String,
    /// Common name of the root.
    pub root_common_name: String,
    /// Common name of each intermediate; the cluster name goes into the locality (L), as
    /// Istio's own certificate tooling does.
    pub intermediate_common_name: String,
    /// Root validity.
    pub root_validity: Duration,
    /// Intermediate validity.
    pub intermediate_validity: Duration,
}

impl Default for IstioCaParams {
    fn default() -> Self {
        Self {
            key_algorithm: KeyAlgorithm::EcdsaP256,
            organization: "Istio".into(),
            root_common_name: "Root CA".into(),
            intermediate_common_name: "Intermediate CA".into(),
            root_validity: Duration::days(3650),
            intermediate_validity: Duration::days(730),
        }
    }
}

impl IstioCaParams {
    fn root_params(&self) -> CaParams {
        CaParams {
            subject: SubjectName::new(&self.organization, &self.root_common_name),
            key_algorithm: self.key_algorithm,
            validity: self.root_validity,
        }
    }

    fn intermediate_params(&self, cluster: &str) -> CaParams {
        let mut subject = SubjectName::new(&self.organization, &self.intermediate_common_name);
        subject.locality = Some(cluster.to_owned());
        CaParams {
            subject,
            key_algorithm: self.key_algorithm,
            validity: self.intermediate_validity,
        }
    }
}

/// Generates the mesh root.
pub fn generate_istio_root(params: &IstioCaParams, now: OffsetDateTime) -> Result<CaCredential> {
    generate_root_ca(&params.root_params(), now)
}

/// Issues the `cacerts` bundle of one cluster from the mesh root.
pub fn issue_cluster_bundle(
    root: &CaCredential,
    cluster: &str,
    params: &IstioCaParams,
    now: OffsetDateTime,
) -> Result<IstioCaBundle> {
    if cluster.is_empty() || cluster.contains(['/', ',', '=', '+']) {
        return Err(PkiError::InvalidParameter {
            name: "cluster name",
            reason: format!("'{cluster}' must be non-empty and free of '/', ',', '=' and '+'"),
        });
    }
    let intermediate = issue_intermediate_ca(root, &params.intermediate_params(cluster), now)?;
    let root_cert = root.certificate.to_pem();
    let ca_cert = intermediate.certificate.to_pem();
    Ok(IstioCaBundle {
        cert_chain: chain_to_pem(&[&intermediate.certificate, &root.certificate]),
        ca_cert,
        ca_key: intermediate.key_pem(),
        root_cert,
    })
}

/// Loads and checks a stored mesh root (`root-cert.pem`, `root-key.pem`): self-signed, a CA,
/// the key matches, valid at `now`.
pub fn load_istio_root(
    root_cert_pem: &str,
    root_key_pem: &str,
    now: OffsetDateTime,
) -> Result<CaCredential> {
    load_root_with_key_label(root_cert_pem, root_key_pem, ROOT_KEY, now)
}

/// `cacerts`-style key of a root that signs workloads itself, as the previous scripts stored it.
pub const SIGNING_ROOT_KEY: &str = "key.pem";

/// Loads a root stored the way the previous scripts wrote it: `root-cert.pem`, its key
/// `key.pem`, and `cert-chain.pem` holding the root itself (a root that signs directly is its
/// own chain). Checked as [`load_istio_root`] does, plus the chain.
pub fn load_signing_root(
    root_cert_pem: &str,
    key_pem: &str,
    cert_chain_pem: &str,
    now: OffsetDateTime,
) -> Result<CaCredential> {
    let root = load_root_with_key_label(root_cert_pem, key_pem, SIGNING_ROOT_KEY, now)?;
    let chain = Certificate::chain_from_pem(cert_chain_pem, CERT_CHAIN)?;
    let wrong = |reason: String| PkiError::InvalidChain {
        object: CERT_CHAIN.into(),
        reason,
    };
    match chain.as_slice() {
        [only] if only.der() == root.certificate.der() => Ok(root),
        [only] => Err(wrong(format!(
            "it must hold {ROOT_CERT} alone (a root that signs is its own chain), but holds '{}'",
            only.info().subject
        ))),
        more => Err(wrong(format!(
            "it must hold {ROOT_CERT} alone (a root that signs is its own chain), but holds {} certificates",
            more.len()
        ))),
    }
}

fn load_root_with_key_label(
    root_cert_pem: &str,
    root_key_pem: &str,
    key_label: &str,
    now: OffsetDateTime,
) -> Result<CaCredential> {
    let root = CaCredential::from_pem(root_cert_pem, ROOT_CERT, root_key_pem, key_label, now)?;
    root.certificate.check_self_signed()?;
    Ok(root)
}

/// Parses `root-cert.pem`, which istiod reads as a pool of trusted roots: one certificate, or
/// several while a mesh moves from one root to another. A single root keeps the file's name as
/// its label; several are labelled `root-cert.pem certificate <n>`.
pub fn parse_root_bundle(root_cert_pem: &str) -> Result<Vec<Certificate>> {
    let mut roots = Certificate::chain_from_pem(root_cert_pem, ROOT_CERT)?;
    if roots.len() == 1 {
        let only = roots.remove(0).relabelled(ROOT_CERT);
        roots.push(only);
    }
    Ok(roots)
}

/// What the verifier found, for a one-line summary or a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioBundleReport {
    /// The root `cert-chain.pem` leads to (of those in `root-cert.pem`).
    pub root: CertificateInfo,
    /// Every root of `root-cert.pem`, in file order.
    pub roots: Vec<CertificateInfo>,
    /// The cluster's signing CA (`ca-cert.pem`).
    pub ca: CertificateInfo,
    /// Number of certificates in `cert-chain.pem`.
    pub chain_length: usize,
}

impl IstioBundleReport {
    /// Days until the first certificate of the bundle expires.
    #[must_use]
    pub fn days_left(&self, now: OffsetDateTime) -> i64 {
        self.root.days_left(now).min(self.ca.days_left(now))
    }
}

/// The four `cacerts` files as text, for verification of material read from storage.
#[derive(Debug, Clone, Copy)]
pub struct IstioBundleFiles<'a> {
    /// `ca-cert.pem`.
    pub ca_cert: &'a str,
    /// `ca-key.pem`.
    pub ca_key: &'a str,
    /// `root-cert.pem`.
    pub root_cert: &'a str,
    /// `cert-chain.pem`.
    pub cert_chain: &'a str,
}

impl<'a> From<&'a IstioCaBundle> for IstioBundleFiles<'a> {
    fn from(bundle: &'a IstioCaBundle) -> Self {
        Self {
            ca_cert: &bundle.ca_cert,
            ca_key: bundle.ca_key.expose(),
            root_cert: &bundle.root_cert,
            cert_chain: &bundle.cert_chain,
        }
    }
}

/// Verifies a `cacerts` bundle as istiod needs it at `now`, following istiod's own checks
/// (istio/istio `security/pkg/pki/util/keycertbundle.go`, `Verify`: `ca-cert.pem` verifies
/// against the roots of `root-cert.pem` through `cert-chain.pem`, and `tls.X509KeyPair` accepts
/// the key; `security/pkg/pki/ca/ca.go`, `NewPluggedCertIstioCAOptions`: `ca-cert.pem` is a CA),
/// and stricter where a looser bundle would only fail later:
/// - `ca-key.pem` is an unencrypted key that matches `ca-cert.pem`;
/// - `ca-cert.pem` is a CA;
/// - every certificate of `root-cert.pem` is a self-signed CA (several while roots rotate);
/// - `cert-chain.pem` starts with `ca-cert.pem`, ends with a root of `root-cert.pem`, and each
///   certificate is signed by the next (signatures checked, not just names). When `ca-cert.pem`
///   is itself a root (a self-signed CA that signs workloads), it is its own chain;
/// - no certificate of the chain has an extendedKeyUsage without serverAuth: Go's
///   `x509.Certificate.Verify`, which istiod calls with no key usages, checks for serverAuth;
/// - every certificate is inside its validity window.
pub fn verify_istio_bundle(
    files: IstioBundleFiles<'_>,
    now: OffsetDateTime,
) -> Result<IstioBundleReport> {
    let ca = Certificate::from_pem(files.ca_cert, CA_CERT)?;
    let key = SigningKey::from_pem(files.ca_key, CA_KEY)?;
    let roots = parse_root_bundle(files.root_cert)?;
    let chain = Certificate::chain_from_pem(files.cert_chain, CERT_CHAIN)?;

    ca.check_key_matches(&key, CA_KEY)?;
    ca.check_is_ca()?;
    for root in &roots {
        root.check_self_signed()?;
        root.check_is_ca()?;
    }
    let anchor = verify_chain_shape(&chain, &ca, &roots)?;
    for pair in chain.windows(2) {
        pair[0].verify_signed_by(&pair[1])?;
    }
    for cert in std::iter::once(&ca).chain(&chain) {
        check_server_auth_allowed(cert)?;
    }
    for cert in chain.iter().chain([&ca]).chain(&roots) {
        cert.check_validity_at(now)?;
    }
    Ok(IstioBundleReport {
        root: roots[anchor].info().clone(),
        roots: roots.iter().map(|r| r.info().clone()).collect(),
        ca: ca.info().clone(),
        chain_length: chain.len(),
    })
}

/// Go's `x509.Certificate.Verify` with no key usages requires serverAuth of every certificate
/// in the chain that restricts its extended key usage (`checkChainForKeyUsage`, Go's
/// `crypto/x509/verify.go`); istiod's `Verify` passes none.
fn check_server_auth_allowed(cert: &Certificate) -> Result<()> {
    let allowed = cert.with_x509(|x509| match x509.extended_key_usage() {
        Ok(None) => true,
        Ok(Some(eku)) => eku.value.any || eku.value.server_auth,
        Err(_) => false,
    })?;
    if allowed {
        Ok(())
    } else {
        Err(PkiError::InvalidChain {
            object: cert.label().to_owned(),
            reason: "its extendedKeyUsage lacks serverAuth, which istiod's certificate \
                     verification requires of every certificate in the chain"
                .into(),
        })
    }
}

/// Checks the order of `cert-chain.pem`; returns the index in `roots` of the root it ends with.
fn verify_chain_shape(
    chain: &[Certificate],
    ca: &Certificate,
    roots: &[Certificate],
) -> Result<usize> {
    let wrong = |reason: String| PkiError::InvalidChain {
        object: CERT_CHAIN.into(),
        reason,
    };
    let (Some(first), Some(last)) = (chain.first(), chain.last()) else {
        return Err(wrong("it is empty".into()));
    };
    let root_index = |cert: &Certificate| roots.iter().position(|r| r.der() == cert.der());
    if chain.len() < 2 && root_index(ca).is_none() {
        return Err(wrong(format!(
            "it holds one certificate; it must hold {CA_CERT} followed by {ROOT_CERT}"
        )));
    }
    if first.der() != ca.der() {
        return Err(wrong(format!(
            "it must start with {CA_CERT}, but starts with '{}'",
            first.info().subject
        )));
    }
    root_index(last).ok_or_else(|| {
        let target = if roots.len() == 1 {
            ROOT_CERT.to_owned()
        } else {
            format!("one of the certificates of {ROOT_CERT}")
        };
        wrong(format!(
            "it must end with {target}, but ends with '{}'",
            last.info().subject
        ))
    })
}
