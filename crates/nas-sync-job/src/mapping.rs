//! What to mirror where: each mapping names a KV entry, the fields to copy (optionally
//! renamed), the kind of bundle (which decides how it is verified), and the target Secret.
//! Read from a YAML file; without one, the seed's mapping: the NAS cluster's Istio bundle into
//! `istio-system/cacerts`.
//!
//! ```yaml
//! mappings:
//!   - source: istio/clusters/nas        # KV path in the mount
//!     kind: istio-cacerts               # istio-cacerts | client-ca | opaque
//!     secret: { namespace: istio-system, name: cacerts }
//!   - source: pki/ca
//!     kind: client-ca
//!     secret:
//!       namespace: haproxy-controller
//!       name: client-ca-cert
//!       labels: { app.kubernetes.io/part-of: haproxy }
//!     keys: { ca.crt: ca.crt, crl.pem: crl.pem }   # Secret key: KV field
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

/// How a bundle is verified before it is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKind {
    /// Istio's `cacerts`: the four files, checked with the Istio verifier.
    IstioCacerts,
    /// HAProxy's client CA bundle: `ca.crt` and a CRL for every CA in it.
    ClientCa,
    /// Anything else: copied as it is.
    Opaque,
}

impl BundleKind {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "istio-cacerts" => Some(Self::IstioCacerts),
            "client-ca" => Some(Self::ClientCa),
            "opaque" => Some(Self::Opaque),
            _ => None,
        }
    }

    /// The name used in the mappings file.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::IstioCacerts => "istio-cacerts",
            Self::ClientCa => "client-ca",
            Self::Opaque => "opaque",
        }
    }

    /// Secret key -> KV field, when the file gives none.
    fn default_keys(self) -> Vec<(String, String)> {
        let same = |names: &[&str]| {
            names
                .iter()
                .map(|n| ((*n).to_owned(), (*n).to_owned()))
                .collect()
        };
        match self {
            Self::IstioCacerts => same(&[
                "ca-cert.pem",
                "ca-key.pem",
                "root-cert.pem",
                "cert-chain.pem",
            ]),
            Self::ClientCa => same(&["ca.crt", "crl.pem"]),
            Self::Opaque => Vec::new(),
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

/// The seed's mapping for a cluster: `istio/clusters/<cluster>` into `istio-system/cacerts`.
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
        serde_norway::from_str(yaml).map_err(|e| vec![format!("not a mappings file: {e}")])?;
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
                problems.push(format!(
                    "{at}: kind '{k}' is not one of istio-cacerts, client-ca, opaque"
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

fn dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_seed() {
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
                "mapping 1 ('/abs'): kind 'magic' is not one of istio-cacerts, client-ca, opaque",
                "mapping 1 ('/abs'): secret namespace 'Istio' is not a Kubernetes name (lowercase DNS subdomain)",
                "mapping 1 ('/abs'): keys are required for kind opaque",
                "mapping 2 ('a/b'): keys are required for kind opaque",
            ]
        );
    }
}
