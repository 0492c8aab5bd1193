//! Refuses a bundle that would break its consumer, before it reaches a Secret: istiod with a
//! bad `cacerts` does not start; HAProxy with a CA that lacks a CRL refuses every client.

use std::collections::BTreeMap;

use pki_core::istio::{IstioBundleFiles, verify_istio_bundle};
use pki_core::time::OffsetDateTime;
use pki_core::{Certificate, Crl, fingerprint_sha256};

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
        BundleKind::ClientCa => {
            let cas =
                Certificate::chain_from_pem(get("ca.crt")?, "ca.crt").map_err(|e| e.to_string())?;
            let crls =
                Crl::bundle_from_pem(get("crl.pem")?, "crl.pem").map_err(|e| e.to_string())?;
            for ca in &cas {
                ca.check_is_ca().map_err(|e| e.to_string())?;
                ca.check_validity_at(now).map_err(|e| e.to_string())?;
                let Some(crl) = crls.iter().find(|crl| crl.verify_signed_by(ca).is_ok()) else {
                    return Err(format!(
                        "crl.pem has no CRL signed by '{}'; HAProxy would refuse every client",
                        ca.info().subject
                    ));
                };
                if crl.info().next_update.is_some_and(|next| next < now) {
                    return Err(format!(
                        "the CRL of '{}' passed its nextUpdate; HAProxy would refuse every client",
                        ca.info().subject
                    ));
                }
            }
            Ok(cas[0].info().fingerprint_sha256.clone())
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
