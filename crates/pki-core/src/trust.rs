//! The client trust policy, in one place: the CA certificates HAProxy trusts for client
//! certificates (its `ca-file`) and the CRLs that must come with them (its `crl-file`).
//!
//! HAProxy with a `crl-file` has OpenSSL check every client against the CRL of the CA that
//! issued it (`X509_V_FLAG_CRL_CHECK`): a CA with no CRL there (`unable to get certificate
//! CRL`), or whose CRL is past its nextUpdate (`CRL has expired`), fails every client of that CA.
//! During a migration the bundle trusts several CAs, and each needs its own current CRL.
//! Pure: the CAs, the CRLs and the time in, a checked bundle or the exact problem out.

use time::OffsetDateTime;

use crate::cert::Certificate;
use crate::crl::Crl;
use crate::error::{PkiError, Result};

/// One trusted CA, with the CRL it signed when the consumer reads CRLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedCa {
    /// The CA certificate.
    pub certificate: Certificate,
    /// Its CRL; `None` when the consumer reads no CRL.
    pub crl: Option<Crl>,
}

/// A client trust bundle that passed [`check_client_trust`]: every CA may sign, is valid, and
/// (when CRLs are read) has a current CRL of its own. CAs keep their order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTrustBundle {
    cas: Vec<TrustedCa>,
}

impl ClientTrustBundle {
    /// The CAs in bundle order, each with its CRL.
    #[must_use]
    pub fn cas(&self) -> &[TrustedCa] {
        &self.cas
    }

    /// The `ca-file`: every CA certificate, PEM, in order.
    #[must_use]
    pub fn ca_pem(&self) -> String {
        self.cas.iter().map(|ca| ca.certificate.to_pem()).collect()
    }

    /// The `crl-file`: the CRL of each CA, PEM, in the CAs' order (empty when none is read).
    #[must_use]
    pub fn crl_pem(&self) -> String {
        self.cas
            .iter()
            .filter_map(|ca| ca.crl.as_ref().map(Crl::to_pem))
            .collect()
    }

    /// The SHA-256 fingerprint of the first CA, which names the bundle.
    #[must_use]
    pub fn fingerprint_sha256(&self) -> &str {
        &self.cas[0].certificate.info().fingerprint_sha256
    }
}

/// The CRLs that come with a trust bundle, and the name they go by in errors (`ca.crl`, a file
/// name, a configuration variable).
#[derive(Debug, Clone, Copy)]
pub struct CrlSet<'a> {
    /// Every CRL supplied, in any order; those no CA of the bundle signed are left out.
    pub crls: &'a [Crl],
    /// What holds them.
    pub label: &'a str,
}

/// The CRL of `crls` that `ca` signed, if any.
#[must_use]
pub fn crl_signed_by<'c>(crls: &'c [Crl], ca: &Certificate) -> Option<&'c Crl> {
    crls.iter().find(|crl| crl.verify_signed_by(ca).is_ok())
}

/// Checks a client trust bundle at `now`: at least one CA; each a CA certificate valid at
/// `now`; and, when the consumer reads CRLs (`crls` is `Some`), a CRL signed by each CA whose
/// nextUpdate has not passed. The first problem found is the error: [`PkiError::NotCa`],
/// [`PkiError::Expired`], [`PkiError::NotYetValid`], [`PkiError::MissingCrl`],
/// [`PkiError::CrlExpired`], or [`PkiError::MissingPem`] for no CA at all.
pub fn check_client_trust(
    cas: Vec<Certificate>,
    crls: Option<CrlSet<'_>>,
    now: OffsetDateTime,
) -> Result<ClientTrustBundle> {
    if cas.is_empty() {
        return Err(PkiError::MissingPem {
            object: "the client trust bundle".to_owned(),
            expected: "CERTIFICATE",
        });
    }
    let mut checked = Vec::with_capacity(cas.len());
    for certificate in cas {
        certificate.check_is_ca()?;
        certificate.check_validity_at(now)?;
        let crl = match crls {
            None => None,
            Some(set) => {
                let Some(crl) = crl_signed_by(set.crls, &certificate) else {
                    return Err(PkiError::MissingCrl {
                        crls: set.label.to_owned(),
                        ca: certificate.info().subject.clone(),
                    });
                };
                if let Some(next_update) = crl.info().next_update.filter(|next| *next < now) {
                    return Err(PkiError::CrlExpired {
                        ca: certificate.info().subject.clone(),
                        next_update,
                    });
                }
                Some(crl.clone())
            }
        };
        checked.push(TrustedCa { certificate, crl });
    }
    Ok(ClientTrustBundle { cas: checked })
}

#[cfg(test)]
mod tests {
    use time::Duration;
    use time::macros::datetime;

    use super::*;
    use crate::{
        CaCredential, CaParams, CrlParams, KeyAlgorithm, SubjectName, generate_root_ca, sign_crl,
    };

    const NOW: OffsetDateTime = datetime!(2026-06-01 12:00 UTC);

    fn ca(name: &str, not_before: OffsetDateTime, days: i64) -> CaCredential {
        generate_root_ca(
            &CaParams {
                subject: SubjectName::new("Test", name),
                key_algorithm: KeyAlgorithm::EcdsaP256,
                validity: Duration::days(days),
            },
            not_before,
        )
        .unwrap()
    }

    fn crl(ca: &CaCredential, next_update: OffsetDateTime) -> Crl {
        let pem = sign_crl(
            ca,
            &CrlParams {
                this_update: NOW - Duration::days(2),
                next_update,
                crl_number: 1,
                revoked: vec![],
            },
        )
        .unwrap();
        Crl::from_pem(&pem, "crl").unwrap()
    }

    fn set(crls: &[Crl]) -> CrlSet<'_> {
        CrlSet {
            crls,
            label: "ca.crl",
        }
    }

    #[test]
    fn each_ca_gets_its_own_crl_in_bundle_order() {
        let (new, old) = (
            ca("New", NOW - Duration::days(1), 30),
            ca("Old", NOW - Duration::days(9), 30),
        );
        let crls = [
            crl(&old, NOW + Duration::days(7)),
            crl(&new, NOW + Duration::days(7)),
        ];
        let cas = vec![new.certificate.clone(), old.certificate.clone()];
        let bundle = check_client_trust(cas, Some(set(&crls)), NOW).unwrap();
        assert_eq!(bundle.cas().len(), 2);
        assert_eq!(bundle.cas()[0].crl.as_ref(), Some(&crls[1]));
        assert_eq!(bundle.cas()[1].crl.as_ref(), Some(&crls[0]));
        assert_eq!(
            bundle.ca_pem(),
            format!("{}{}", new.certificate.to_pem(), old.certificate.to_pem())
        );
        assert_eq!(
            bundle.crl_pem(),
            format!("{}{}", crls[1].to_pem(), crls[0].to_pem())
        );
        assert_eq!(
            bundle.fingerprint_sha256(),
            new.certificate.info().fingerprint_sha256
        );
    }

    #[test]
    fn without_crls_only_the_cas_are_checked() {
        let new = ca("New", NOW - Duration::days(1), 30);
        let bundle = check_client_trust(vec![new.certificate.clone()], None, NOW).unwrap();
        assert_eq!(bundle.cas()[0].crl, None);
        assert_eq!(bundle.crl_pem(), "");
    }

    #[test]
    fn a_ca_without_its_crl_is_named() {
        let (new, old) = (
            ca("New", NOW - Duration::days(1), 30),
            ca("Old", NOW - Duration::days(9), 30),
        );
        let crls = [crl(&new, NOW + Duration::days(7))];
        let cas = vec![new.certificate.clone(), old.certificate.clone()];
        let err = check_client_trust(cas, Some(set(&crls)), NOW).unwrap_err();
        assert_eq!(
            err,
            PkiError::MissingCrl {
                crls: "ca.crl".into(),
                ca: "O=Test, CN=Old".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "ca.crl: no CRL signed by 'O=Test, CN=Old'; HAProxy with a crl-file would refuse \
             every client of that CA"
        );
    }

    #[test]
    fn a_crl_past_its_next_update_is_named() {
        let new = ca("New", NOW - Duration::days(1), 30);
        let next_update = NOW - Duration::hours(1);
        let crls = [crl(&new, next_update)];
        let err =
            check_client_trust(vec![new.certificate.clone()], Some(set(&crls)), NOW).unwrap_err();
        assert_eq!(
            err,
            PkiError::CrlExpired {
                ca: "O=Test, CN=New".into(),
                next_update
            }
        );
        assert_eq!(
            err.to_string(),
            "the CRL of 'O=Test, CN=New' passed its nextUpdate (2026-06-01 11:00:00.0 +00:00:00); \
             HAProxy with a crl-file would refuse every client of that CA"
        );
    }

    #[test]
    fn an_expired_or_future_ca_is_refused() {
        let expired = ca("Expired", NOW - Duration::days(40), 30);
        let crls = [crl(&expired, NOW + Duration::days(7))];
        let err = check_client_trust(vec![expired.certificate.clone()], Some(set(&crls)), NOW);
        assert!(matches!(err, Err(PkiError::Expired { .. })), "{err:?}");
        let future = ca("Future", NOW + Duration::days(2), 30);
        let err = check_client_trust(vec![future.certificate.clone()], None, NOW);
        assert!(matches!(err, Err(PkiError::NotYetValid { .. })), "{err:?}");
    }

    #[test]
    fn a_certificate_that_is_no_ca_is_refused() {
        let issuer = ca("Issuer", NOW - Duration::days(1), 30);
        let leaf = crate::issue_client_certificate(
            &issuer,
            &crate::ClientCertificateParams {
                name: "alice".into(),
                email: "alice@example.org".into(),
                key_algorithm: KeyAlgorithm::EcdsaP256,
                validity: Duration::days(5),
            },
            NOW - Duration::hours(1),
        )
        .unwrap();
        let err = check_client_trust(vec![leaf.certificate.clone()], None, NOW);
        assert!(matches!(err, Err(PkiError::NotCa { .. })), "{err:?}");
    }

    #[test]
    fn no_ca_at_all_is_refused() {
        let err = check_client_trust(Vec::new(), None, NOW).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the client trust bundle holds no CERTIFICATE"
        );
    }
}
