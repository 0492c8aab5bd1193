//! The root entry (`secret/istio/ca`) in the two layouts this job accepts: its own, and the one
//! the previous scripts wrote. The previous layout is adopted as it is: this job never writes
//! to it, since the previous scripts' ExternalSecret may still read those fields.
//!
//! - This job's layout: `root-cert.pem`, `root-key.pem`, and optionally `created` and
//!   `fingerprint` (which must then match the certificate).
//! - The previous scripts' layout, exactly `root-cert.pem`, `cert-chain.pem` and `key.pem`: a
//!   self-signed root whose key is `key.pem` and whose chain is itself, because their
//!   ExternalSecret copied it into `cacerts` as a root that signs workloads directly.
//!
//! Anything else is refused, naming the fields found and the fields expected.

use std::collections::BTreeSet;

use job_support::{InvalidState, KvEntry, SecretData};
use pki_core::CaCredential;
use pki_core::istio::{self, CERT_CHAIN, ROOT_CERT, ROOT_KEY, SIGNING_ROOT_KEY};
use pki_core::time::OffsetDateTime;
use pki_core::time::format_description::well_known::Rfc3339;

/// Which layout a root entry has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootLayout {
    /// Written by this job.
    Own,
    /// Written by the previous scripts; adopted, never rewritten.
    PreviousScripts,
}

impl RootLayout {
    /// For log lines.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Own => "bootstrap-job",
            Self::PreviousScripts => "previous-scripts",
        }
    }
}

const OWN_OPTIONAL: [&str; 2] = ["created", "fingerprint"];

/// The fields an operator can write, for the error message.
fn expected() -> String {
    format!(
        "expected {ROOT_CERT} and {ROOT_KEY} (optionally with created and fingerprint), as this \
         job writes it, or exactly {ROOT_CERT}, {CERT_CHAIN} and {SIGNING_ROOT_KEY}, as the \
         previous scripts wrote it"
    )
}

/// Which layout `fields` are in, if any.
#[must_use]
pub fn layout_of<'a>(fields: impl IntoIterator<Item = &'a str>) -> Option<RootLayout> {
    let fields: BTreeSet<&str> = fields.into_iter().collect();
    let previous: BTreeSet<&str> = [ROOT_CERT, CERT_CHAIN, SIGNING_ROOT_KEY].into();
    if fields == previous {
        return Some(RootLayout::PreviousScripts);
    }
    let own_required = [ROOT_CERT, ROOT_KEY];
    let own_allowed = |f: &&str| own_required.contains(f) || OWN_OPTIONAL.contains(f);
    (own_required.iter().all(|f| fields.contains(f)) && fields.iter().all(own_allowed))
        .then_some(RootLayout::Own)
}

/// Loads and verifies the root stored in `entry` (at `label`), in either layout.
pub fn load_root(
    entry: &KvEntry,
    label: &str,
    now: OffsetDateTime,
) -> Result<(CaCredential, RootLayout), InvalidState> {
    let invalid = |problem: String| InvalidState {
        path: label.to_owned(),
        problem,
    };
    let field = |name: &str| entry.data.get(name).unwrap_or_default();
    let layout = layout_of(entry.data.fields()).ok_or_else(|| {
        let found: Vec<&str> = entry.data.fields().collect();
        let found = if found.is_empty() {
            "none".to_owned()
        } else {
            found.join(", ")
        };
        invalid(format!(
            "not a root entry: fields found: {found}; {}",
            expected()
        ))
    })?;
    let root = match layout {
        RootLayout::Own => istio::load_istio_root(field(ROOT_CERT), field(ROOT_KEY), now),
        RootLayout::PreviousScripts => istio::load_signing_root(
            field(ROOT_CERT),
            field(SIGNING_ROOT_KEY),
            field(CERT_CHAIN),
            now,
        ),
    }
    .map_err(|e| invalid(e.to_string()))?;
    if let Some(recorded) = entry.data.get("fingerprint") {
        let actual = &root.certificate.info().fingerprint_sha256;
        if recorded != actual {
            return Err(invalid(format!(
                "field 'fingerprint' says {recorded}, but root-cert.pem's fingerprint is {actual}"
            )));
        }
    }
    Ok((root, layout))
}

/// The root entry in this job's layout.
pub fn root_data(root: &CaCredential, now: OffsetDateTime) -> SecretData {
    let mut data = SecretData::new();
    data.insert(ROOT_CERT, root.certificate.to_pem());
    data.insert(ROOT_KEY, root.key_pem().expose());
    data.insert(
        "created",
        now.format(&Rfc3339).unwrap_or_else(|_| now.to_string()),
    );
    data.insert(
        "fingerprint",
        root.certificate.info().fingerprint_sha256.clone(),
    );
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_recognised_exactly() {
        let own = ["root-cert.pem", "root-key.pem"];
        assert_eq!(layout_of(own), Some(RootLayout::Own));
        assert_eq!(
            layout_of(["created", "fingerprint", "root-cert.pem", "root-key.pem"]),
            Some(RootLayout::Own)
        );
        assert_eq!(
            layout_of(["cert-chain.pem", "key.pem", "root-cert.pem"]),
            Some(RootLayout::PreviousScripts)
        );
        for other in [
            &["root-cert.pem"][..],
            &["root-cert.pem", "key.pem"],
            &["root-cert.pem", "cert-chain.pem", "key.pem", "created"],
            &["root-cert.pem", "root-key.pem", "key.pem"],
            &["tls.crt", "tls.key"],
            &[],
        ] {
            assert_eq!(layout_of(other.iter().copied()), None, "{other:?}");
        }
    }
}
