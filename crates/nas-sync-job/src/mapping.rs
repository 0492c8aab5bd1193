//! What to mirror where: each mapping names a KV entry, the fields to copy (optionally
//! renamed), the kind of bundle (which decides how it is verified and, for a client CA, which
//! Secret keys its consumer reads), and the target Secret. Read from a YAML file; without one,
//! the previous setup's mapping: the NAS cluster's Istio bundle into `istio-system/cacerts`.
//!
//! ```yaml
//! mappings:
//!   - source: istio/clusters/nas        # KV path in the mount
//!     kind: istio-cacerts               # see BundleKind
//!     secret: { namespace: istio-system, name: cacerts }
//!   - source: pki/ca
//!     kind: client-ca-haproxy-ingress   # Secret keys ca.crt + ca.crl
//!     secret:
//!       namespace: haproxy-controller
//!       name: client-ca-cert
//!       labels: { app.kubernetes.io/part-of: haproxy }
//!     keys: { ca.crt: ca.crt, ca.crl: crl.pem }   # Secret key: KV field
//! ```
//!
//! The client CA kinds, one per consumer of the Secret (facts from each project's source):
//! - `client-ca`: plain HAProxy mounting the Secret, `ca-file ca.crt crl-file crl.pem`;
//! - `client-ca-haproxy-ingress`: jcmoraisjr/haproxy-ingress (`auth-tls-secret`) reads `ca.crt`
//!   and the optional `ca.crl` and writes them as `ca-file` and `crl-file`
//!   (`pkg/controller/services/ssl.go`, `getCertificate`);
//! - `client-ca-haproxytech`: haproxytech/kubernetes-ingress (`client-ca`) reads only `tls.crt`
//!   (`pkg/haproxy/certs/main.go`, `writeSecret`) and never sets a `crl-file`
//!   (`pkg/handler/https.go`): revocation cannot be enforced through it.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Who reads a client-CA Secret, which decides its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCaConsumer {
    /// Plain HAProxy with the Secret mounted as files.
    Haproxy,
    /// jcmoraisjr/haproxy-ingress.
    HaproxyIngress,
    /// haproxytech/kubernetes-ingress.
    Haproxytech,
}

impl ClientCaConsumer {
    /// The Secret key holding the CA bundle.
    #[must_use]
    pub fn ca_key(self) -> &'static str {
        match self {
            Self::Haproxy | Self::HaproxyIngress => "ca.crt",
            Self::Haproxytech => "tls.crt",
        }
    }

    /// The Secret key holding one CRL per CA, for a consumer that reads one.
    #[must_use]
    pub fn crl_key(self) -> Option<&'static str> {
        match self {
            Self::Haproxy => Some("crl.pem"),
            Self::HaproxyIngress => Some("ca.crl"),
            Self::Haproxytech => None,
        }
    }
}

/// How a bundle is verified before it is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKind {
    /// Istio's `cacerts`: the four files, checked with the Istio verifier.
    IstioCacerts,
    /// A client CA bundle for an HAProxy: the CAs, and a current CRL for every one of them
    /// where the consumer checks CRLs.
    ClientCa(ClientCaConsumer),
    /// Anything else: copied as it is.
    Opaque,
}

impl BundleKind {
    const ALL: [Self; 5] = [
        Self::IstioCacerts,
        Self::ClientCa(ClientCaConsumer::Haproxy),
        Self::ClientCa(ClientCaConsumer::HaproxyIngress),
        Self::ClientCa(ClientCaConsumer::Haproxytech),
        Self::Opaque,
    ];

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    /// The name used in the mappings file.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::IstioCacerts => "istio-cacerts",
            Self::ClientCa(ClientCaConsumer::Haproxy) => "client-ca",
            Self::ClientCa(ClientCaConsumer::HaproxyIngress) => "client-ca-haproxy-ingress",
            Self::ClientCa(ClientCaConsumer::Haproxytech) => "client-ca-haproxytech",
            Self::Opaque => "opaque",
        }
    }

    /// Secret key -> KV field, when the file gives none. A client CA's KV entry is the one
    /// client-issuer-job writes (`ca.crt`, `crl.pem`).
    fn default_keys(self) -> Vec<(String, String)> {
        let pairs = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, f)| ((*k).to_owned(), (*f).to_owned()))
                .collect()
        };
        match self {
            Self::IstioCacerts => pairs(&[
                ("ca-cert.pem", "ca-cert.pem"),
                ("ca-key.pem", "ca-key.pem"),
                ("root-cert.pem", "root-cert.pem"),
                ("cert-chain.pem", "cert-chain.pem"),
            ]),
            Self::ClientCa(consumer) => {
                let mut keys = vec![(consumer.ca_key().to_owned(), "ca.crt".to_owned())];
                if let Some(crl) = consumer.crl_key() {
                    keys.push((crl.to_owned(), "crl.pem".to_owned()));
                }
                keys
            }
            Self::Opaque => Vec::new(),
        }
    }

    /// The Secret keys the consumer reads, when they are fixed.
    fn fixed_secret_keys(self) -> Option<Vec<String>> {
        match self {
            Self::ClientCa(_) => Some(self.default_keys().into_iter().map(|(k, _)| k).collect()),
            Self::IstioCacerts | Self::Opaque => None,
        }
    }
}

/// One KV entry mirrored into one Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// KV path, relative to the mount.
    pub source: String,
    /// How it is verified.
    pub kind: BundleKind,
    /// Secret key -> KV field, in the order they are checked.
    pub keys: Vec<(String, String)>,
    /// Target namespace.
    pub namespace: String,
    /// Target Secret name.
    pub name: String,
    /// Secret type.
    pub secret_type: String,
    /// Labels on the Secret.
    pub labels: BTreeMap<String, String>,
}

impl Mapping {
    /// `namespace/name`, for messages.
    #[must_use]
    pub fn target(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The previous setup's mapping for a cluster: `istio/clusters/<cluster>` into `istio-system/cacerts`.
#[must_use]
pub fn default_mappings(cluster: &str) -> Vec<Mapping> {
    vec![Mapping {
        source: format!("istio/clusters/{cluster}"),
        kind: BundleKind::IstioCacerts,
        keys: BundleKind::IstioCacerts.default_keys(),
        namespace: "istio-system".into(),
        name: "cacerts".into(),
        secret_type: "Opaque".into(),
        labels: BTreeMap::new(),
    }]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    mappings: Vec<RawMapping>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    source: String,
    kind: Option<String>,
    secret: RawSecret,
    keys: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    namespace: String,
    name: String,
    #[serde(rename = "type")]
    secret_type: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// Parses and validates a mappings file; `Err` lists every problem.
pub fn parse_mappings(yaml: &str) -> Result<Vec<Mapping>, Vec<String>> {
    let raw: RawFile =
        job_support::yaml::from_str(yaml).map_err(|e| vec![format!("not a mappings file: {e}")])?;
    let mut problems = Vec::new();
    let mut mappings: Vec<Mapping> = Vec::new();
    for (i, m) in raw.mappings.into_iter().enumerate() {
        let at = format!("mapping {} ('{}')", i + 1, m.source);
        let valid_path = !m.source.is_empty()
            && m.source
                .split('/')
                .all(|s| !s.is_empty() && !s.starts_with('.'));
        if !valid_path {
            problems.push(format!(
                "{at}: source must be a relative KV path such as istio/clusters/nas"
            ));
        }
        let kind = match m.kind.as_deref() {
            None => BundleKind::Opaque,
            Some(k) => BundleKind::parse(k).unwrap_or_else(|| {
                let names: Vec<&str> = BundleKind::ALL.iter().map(|k| k.name()).collect();
                problems.push(format!(
                    "{at}: kind '{k}' is not one of {}",
                    names.join(", ")
                ));
                BundleKind::Opaque
            }),
        };
        for (label, value) in [("namespace", &m.secret.namespace), ("name", &m.secret.name)] {
            if !dns_name(value) {
                problems.push(format!("{at}: secret {label} '{value}' is not a Kubernetes name (lowercase DNS subdomain)"));
            }
        }
        let keys: Vec<(String, String)> = match m.keys {
            Some(keys) => keys.into_iter().collect(),
            None => kind.default_keys(),
        };
        if keys.is_empty() {
            problems.push(format!("{at}: keys are required for kind {}", kind.name()));
        }
        // The consumer reads fixed Secret keys: only the KV fields may be renamed.
        if let Some(fixed) = kind.fixed_secret_keys() {
            let mut given: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
            let mut expected = fixed.clone();
            given.sort();
            expected.sort();
            if given != expected {
                problems.push(format!(
                    "{at}: kind {} needs exactly the Secret keys {} (its consumer reads those), not {}",
                    kind.name(),
                    fixed.join(", "),
                    given.join(", ")
                ));
            }
        }
        for (key, _) in &keys {
            if key.is_empty()
                || !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                problems.push(format!("{at}: '{key}' is not a valid Secret key"));
            }
        }
        if mappings
            .iter()
            .any(|other| other.namespace == m.secret.namespace && other.name == m.secret.name)
        {
            problems.push(format!(
                "{at}: secret {}/{} is the target of two mappings",
                m.secret.namespace, m.secret.name
            ));
        }
        mappings.push(Mapping {
            source: m.source,
            kind,
            keys,
            namespace: m.secret.namespace,
            name: m.secret.name,
            secret_type: m.secret.secret_type.unwrap_or_else(|| "Opaque".into()),
            labels: m.secret.labels,
        });
    }
    if mappings.is_empty() && problems.is_empty() {
        problems.push("the file declares no mappings".into());
    }
    if problems.is_empty() {
        Ok(mappings)
    } else {
        Err(problems)
    }
}

/// A DNS subdomain name (RFC 1123, as Kubernetes names most objects): dot-separated labels,
/// at most 253 characters.
fn dns_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(job_support::config::dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_previous_setup() {
        let m = &default_mappings("nas")[0];
        assert_eq!(
            (m.source.as_str(), m.target()),
            ("istio/clusters/nas", "istio-system/cacerts".to_owned())
        );
        let keys: Vec<_> = m.keys.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "ca-cert.pem",
                "ca-key.pem",
                "root-cert.pem",
                "cert-chain.pem"
            ]
        );
    }

    #[test]
    fn a_file_with_renames_and_labels() {
        let mappings = parse_mappings(
            "mappings:\n  - source: pki/ca\n    kind: client-ca\n    secret: {namespace: haproxy-controller, name: client-ca-cert, labels: {app: haproxy}}\n  - source: apps/x\n    secret: {namespace: default, name: x, type: kubernetes.io/tls}\n    keys: {tls.crt: cert, tls.key: key}\n",
        )
        .unwrap();
        assert_eq!(
            mappings[0].keys,
            [
                ("ca.crt".to_owned(), "ca.crt".to_owned()),
                ("crl.pem".to_owned(), "crl.pem".to_owned())
            ]
        );
        assert_eq!(mappings[0].labels["app"], "haproxy");
        assert_eq!(
            mappings[0].kind,
            BundleKind::ClientCa(ClientCaConsumer::Haproxy)
        );
        assert_eq!(mappings[1].kind, BundleKind::Opaque);
        assert_eq!(mappings[1].secret_type, "kubernetes.io/tls");
        assert_eq!(
            mappings[1].keys[0],
            ("tls.crt".to_owned(), "cert".to_owned())
        );
    }

    #[test]
    fn every_problem_is_listed() {
        let problems = parse_mappings(
            "mappings:\n  - source: /abs\n    kind: magic\n    secret: {namespace: Istio, name: cacerts}\n  - source: a/b\n    secret: {namespace: x, name: y}\n",
        )
        .unwrap_err();
        assert_eq!(
            problems,
            [
                "mapping 1 ('/abs'): source must be a relative KV path such as istio/clusters/nas",
                "mapping 1 ('/abs'): kind 'magic' is not one of istio-cacerts, client-ca, client-ca-haproxy-ingress, client-ca-haproxytech, opaque",
                "mapping 1 ('/abs'): secret namespace 'Istio' is not a Kubernetes name (lowercase DNS subdomain)",
                "mapping 1 ('/abs'): keys are required for kind opaque",
                "mapping 2 ('a/b'): keys are required for kind opaque",
            ]
        );
    }

    #[test]
    fn each_client_ca_consumer_gets_the_keys_it_reads() {
        let file = |kind: &str, keys: &str| {
            parse_mappings(&format!(
                "mappings:\n  - source: pki/ca\n    kind: {kind}\n    secret: {{namespace: h, name: c}}\n{keys}"
            ))
        };
        let keys =
            |kind: &str| -> Vec<(String, String)> { file(kind, "").unwrap()[0].keys.clone() };
        let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter()
                .map(|(k, f)| ((*k).to_owned(), (*f).to_owned()))
                .collect()
        };
        assert_eq!(
            keys("client-ca"),
            pairs(&[("ca.crt", "ca.crt"), ("crl.pem", "crl.pem")])
        );
        assert_eq!(
            keys("client-ca-haproxy-ingress"),
            pairs(&[("ca.crt", "ca.crt"), ("ca.crl", "crl.pem")])
        );
        assert_eq!(
            keys("client-ca-haproxytech"),
            pairs(&[("tls.crt", "ca.crt")])
        );
        // KV fields may be renamed; the Secret keys are the consumer's.
        let renamed = file(
            "client-ca-haproxy-ingress",
            "    keys: {ca.crt: bundle, ca.crl: crls}\n",
        )
        .unwrap();
        assert_eq!(
            renamed[0].keys,
            pairs(&[("ca.crl", "crls"), ("ca.crt", "bundle")])
        );
        assert_eq!(
            file(
                "client-ca-haproxy-ingress",
                "    keys: {ca.crt: ca.crt, crl.pem: crl.pem}\n"
            )
            .unwrap_err(),
            [
                "mapping 1 ('pki/ca'): kind client-ca-haproxy-ingress needs exactly the Secret keys ca.crt, ca.crl (its consumer reads those), not ca.crt, crl.pem"
            ]
        );
    }
}
