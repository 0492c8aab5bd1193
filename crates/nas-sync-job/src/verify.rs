//! Refuses a bundle that would break its consumer, before it reaches a Secret: istiod with a
//! bad `cacerts` does not start; a client CA bundle must pass the client trust policy
//! ([`pki_core::check_client_trust`]: with a `crl-file`, a CA without a current CRL of its own
//! locks out all of that CA's clients; during a migration, both CAs need one). What is checked is what the
//! consumer reads, under the Secret keys it reads them from.

use std::collections::BTreeMap;

use pki_core::istio::{IstioBundleFiles, verify_istio_bundle};
use pki_core::time::OffsetDateTime;
use pki_core::{Certificate, Crl, CrlSet, check_client_trust, fingerprint_sha256};

use crate::mapping::BundleKind;

/// Checks `data` (Secret key -> content) as `kind` at `now`; returns the fingerprint that
/// identifies the bundle (the Istio root, the first client CA, or a digest of the data).
pub fn verify_bundle(
    kind: BundleKind,
    data: &BTreeMap<String, String>,
    now: OffsetDateTime,
) -> Result<String, String> {
    let get = |key: &str| {
        data.get(key)
            .map(String::as_str)
            .ok_or_else(|| format!("key '{key}' is missing"))
    };
    match kind {
        BundleKind::IstioCacerts => {
            let files = IstioBundleFiles {
                ca_cert: get("ca-cert.pem")?,
                ca_key: get("ca-key.pem")?,
                root_cert: get("root-cert.pem")?,
                cert_chain: get("cert-chain.pem")?,
            };
            let report = verify_istio_bundle(files, now).map_err(|e| e.to_string())?;
            Ok(report.root.fingerprint_sha256)
        }
        BundleKind::ClientCa(consumer) => {
            let ca_key = consumer.ca_key();
            let cas =
                Certificate::chain_from_pem(get(ca_key)?, ca_key).map_err(|e| e.to_string())?;
            let crls = match consumer.crl_key() {
                Some(crl_key) => Some((
                    Crl::bundle_from_pem(get(crl_key)?, crl_key).map_err(|e| e.to_string())?,
                    crl_key,
                )),
                None => None,
            };
            let crl_set = crls.as_ref().map(|(crls, label)| CrlSet { crls, label });
            let bundle = check_client_trust(cas, crl_set, now).map_err(|e| e.to_string())?;
            Ok(bundle.fingerprint_sha256().to_owned())
        }
        BundleKind::Opaque => {
            let joined: Vec<u8> = data
                .iter()
                .flat_map(|(k, v)| [k.as_bytes(), b"\0", v.as_bytes(), b"\0"].concat())
                .collect();
            Ok(fingerprint_sha256(&joined))
        }
    }
}

#[cfg(test)]
mod tests {
    use pki_core::time::Duration;
    use pki_core::{CaParams, CrlParams, KeyAlgorithm, SubjectName, generate_root_ca, sign_crl};

    use super::*;
    use crate::mapping::ClientCaConsumer;

    fn ca(name: &str, now: OffsetDateTime) -> pki_core::CaCredential {
        generate_root_ca(
            &CaParams {
                subject: SubjectName::new("Test", name),
                key_algorithm: KeyAlgorithm::EcdsaP256,
                validity: Duration::days(30),
            },
            now - Duration::days(1),
        )
        .unwrap()
    }

    fn crl(ca: &pki_core::CaCredential, now: OffsetDateTime, next_update: Duration) -> String {
        sign_crl(
            ca,
            &CrlParams {
                this_update: now - Duration::days(1),
                next_update: now + next_update,
                crl_number: 1,
                revoked: vec![],
            },
        )
        .unwrap()
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn each_consumer_is_checked_under_its_own_keys() {
        let now = OffsetDateTime::now_utc();
        let (new, old) = (ca("New CA", now), ca("Old CA", now));
        let (ca, old_ca) = (new.certificate.to_pem(), old.certificate.to_pem());
        let (new_crl, old_crl) = (
            crl(&new, now, Duration::days(7)),
            crl(&old, now, Duration::days(7)),
        );
        let ingress = BundleKind::ClientCa(ClientCaConsumer::HaproxyIngress);
        let both = format!("{ca}{old_ca}");
        let both_crls = format!("{new_crl}{old_crl}");
        assert!(
            verify_bundle(
                ingress,
                &data(&[("ca.crt", &both), ("ca.crl", &both_crls)]),
                now
            )
            .is_ok()
        );
        assert_eq!(
            verify_bundle(
                ingress,
                &data(&[("ca.crt", &both), ("crl.pem", &both_crls)]),
                now
            ),
            Err("key 'ca.crl' is missing".to_owned())
        );
        // A migration bundle whose old CA has no CRL locks that CA's clients out.
        assert_eq!(
            verify_bundle(ingress, &data(&[("ca.crt", &both), ("ca.crl", &new_crl)]), now),
            Err("ca.crl: no CRL signed by 'O=Test, CN=Old CA'; HAProxy with a crl-file would refuse every client of that CA".to_owned())
        );
        let files = BundleKind::ClientCa(ClientCaConsumer::Haproxy);
        let stale = crl(&new, now, Duration::hours(-1));
        // The time in the message is the CRL's nextUpdate, which the CRL keeps to the second.
        let error =
            verify_bundle(files, &data(&[("ca.crt", &ca), ("crl.pem", &stale)]), now).unwrap_err();
        assert!(
            error.starts_with("the CRL of 'O=Test, CN=New CA' passed its nextUpdate (")
                && error
                    .ends_with("); HAProxy with a crl-file would refuse every client of that CA"),
            "{error}"
        );
        // haproxytech reads no CRL: the CAs alone are checked.
        let tech = BundleKind::ClientCa(ClientCaConsumer::Haproxytech);
        assert!(verify_bundle(tech, &data(&[("tls.crt", &both)]), now).is_ok());
        assert_eq!(
            verify_bundle(tech, &data(&[("ca.crt", &both)]), now),
            Err("key 'tls.crt' is missing".to_owned())
        );
    }
}
