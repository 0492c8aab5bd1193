//! Certificates as the rest of the system sees them: parsed once from PEM or DER, with the
//! facts an operator asks about (subject, serial, fingerprint, validity) and the checks every
//! verifier is built from (validity at a time, signature by an issuer, CA constraints, key match).

use std::fmt;

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::error::{PkiError, Result};
use crate::key::SigningKey;

/// The facts about a certificate that reports and log lines show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Subject distinguished name, as `O=Istio, CN=Root CA`.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Serial number in colon-separated hex, as `openssl x509 -serial` prints it (without colons).
    pub serial_hex: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// SHA-256 of the DER, uppercase colon-separated, as `openssl x509 -fingerprint -sha256`.
    pub fingerprint_sha256: String,
    /// Whether basicConstraints says CA:TRUE.
    pub is_ca: bool,
}

impl CertificateInfo {
    /// Whole days from `now` until the certificate expires (negative once expired).
    #[must_use]
    pub fn days_left(&self, now: OffsetDateTime) -> i64 {
        (self.not_after - now).whole_days()
    }
}

/// One X.509 certificate, kept as DER, with the label that names it in errors.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    der: Vec<u8>,
    label: String,
    info: CertificateInfo,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("label", &self.label)
            .field("subject", &self.info.subject)
            .field("fingerprint_sha256", &self.info.fingerprint_sha256)
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// Parses one DER certificate; trailing bytes are an error.
    pub fn from_der(der: Vec<u8>, label: impl Into<String>) -> Result<Self> {
        let label = label.into();
        let info = {
            let cert = parse_x509(&der, &label)?;
            let validity = cert.validity();
            CertificateInfo {
                subject: cert.subject().to_string(),
                issuer: cert.issuer().to_string(),
                serial_hex: hex_upper(cert.raw_serial(), ""),
                not_before: validity.not_before.to_datetime(),
                not_after: validity.not_after.to_datetime(),
                fingerprint_sha256: fingerprint_sha256(&der),
                is_ca: cert.is_ca(),
            }
        };
        Ok(Self { der, label, info })
    }

    /// Parses a PEM text that must hold exactly one certificate.
    pub fn from_pem(pem_text: &str, label: impl Into<String>) -> Result<Self> {
        let label = label.into();
        let mut certs = certificate_blocks(pem_text, &label)?;
        if certs.len() > 1 {
            return Err(PkiError::InvalidPem {
                object: label,
                reason: format!("expected one certificate, found {}", certs.len()),
            });
        }
        let der = certs.remove(0);
        Self::from_der(der, label)
    }

    /// Parses every certificate of a PEM chain, in file order. Each is labelled
    /// `<label> certificate <n>` (from 1), so errors say which one is wrong.
    pub fn chain_from_pem(pem_text: &str, label: &str) -> Result<Vec<Self>> {
        certificate_blocks(pem_text, label)?
            .into_iter()
            .enumerate()
            .map(|(i, der)| Self::from_der(der, format!("{label} certificate {}", i + 1)))
            .collect()
    }

    /// The certificate as a PEM block.
    #[must_use]
    pub fn to_pem(&self) -> String {
        pem::encode_config(
            &pem::Pem::new("CERTIFICATE", self.der.clone()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }

    /// The DER encoding.
    #[must_use]
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The label that names this certificate in errors.
    #[must_use]
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The same certificate under another label.
    #[must_use]
    pub fn relabelled(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// Subject, issuer, serial, validity and fingerprint.
    #[must_use]
    pub fn info(&self) -> &CertificateInfo {
        &self.info
    }

    /// Refuses a certificate that is not yet or no longer valid at `now`.
    pub fn check_validity_at(&self, now: OffsetDateTime) -> Result<()> {
        if now < self.info.not_before {
            return Err(PkiError::NotYetValid {
                object: self.label.clone(),
                not_before: self.info.not_before.date(),
            });
        }
        if now > self.info.not_after {
            return Err(PkiError::Expired {
                object: self.label.clone(),
                not_after: self.info.not_after.date(),
            });
        }
        Ok(())
    }

    /// Checks the signature on this certificate with `issuer`'s public key, and that the
    /// issuer name matches the issuer's subject.
    pub fn verify_signed_by(&self, issuer: &Certificate) -> Result<()> {
        let bad = || PkiError::BadSignature {
            object: self.label.clone(),
            issuer: issuer.label.clone(),
        };
        if self.info.issuer != issuer.info.subject {
            return Err(bad());
        }
        let cert = parse_x509(&self.der, &self.label)?;
        let issuer_cert = parse_x509(&issuer.der, &issuer.label)?;
        cert.verify_signature(Some(issuer_cert.public_key()))
            .map_err(|_| bad())
    }

    /// Refuses a certificate that is not self-signed (names and signature).
    pub fn check_self_signed(&self) -> Result<()> {
        self.verify_signed_by(self)
            .map_err(|_| PkiError::NotSelfSigned {
                object: self.label.clone(),
            })
    }

    /// Refuses a certificate that may not sign others: basicConstraints must say CA:TRUE and
    /// keyUsage, where present, must include keyCertSign.
    pub fn check_is_ca(&self) -> Result<()> {
        let cert = parse_x509(&self.der, &self.label)?;
        let not_ca = |reason| PkiError::NotCa {
            object: self.label.clone(),
            reason,
        };
        match cert.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {}
            Ok(_) => return Err(not_ca("basicConstraints does not say CA:TRUE")),
            Err(_) => return Err(not_ca("basicConstraints is malformed")),
        }
        match cert.key_usage() {
            Ok(Some(ku)) if !ku.value.key_cert_sign() => Err(not_ca("keyUsage lacks keyCertSign")),
            Ok(_) => Ok(()),
            Err(_) => Err(not_ca("keyUsage is malformed")),
        }
    }

    /// Refuses a key whose public half is not this certificate's public key.
    pub fn check_key_matches(&self, key: &SigningKey, key_label: &str) -> Result<()> {
        let cert = parse_x509(&self.der, &self.label)?;
        if cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw() {
            Ok(())
        } else {
            Err(PkiError::KeyMismatch {
                key: key_label.to_owned(),
                certificate: self.label.clone(),
            })
        }
    }

    /// The certificate's raw serial number bytes (big-endian).
    #[must_use]
    pub fn raw_serial(&self) -> Vec<u8> {
        parse_x509(&self.der, &self.label)
            .map(|c| c.raw_serial().to_vec())
            .unwrap_or_default()
    }

    pub(crate) fn with_x509<T>(&self, f: impl FnOnce(&X509Certificate<'_>) -> T) -> Result<T> {
        Ok(f(&parse_x509(&self.der, &self.label)?))
    }
}

/// Concatenates certificates as PEM, in the order given.
#[must_use]
pub fn chain_to_pem(certs: &[&Certificate]) -> String {
    certs.iter().map(|c| c.to_pem()).collect()
}

/// SHA-256 of `der`, uppercase colon-separated hex.
#[must_use]
pub fn fingerprint_sha256(der: &[u8]) -> String {
    hex_upper(
        ring::digest::digest(&ring::digest::SHA256, der).as_ref(),
        ":",
    )
}

pub(crate) fn hex_upper(bytes: &[u8], separator: &str) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(separator)
}

fn parse_x509<'a>(der: &'a [u8], label: &str) -> Result<X509Certificate<'a>> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| PkiError::InvalidCertificate {
            object: label.to_owned(),
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(PkiError::InvalidCertificate {
            object: label.to_owned(),
            reason: format!(
                "{} bytes of trailing data after the certificate",
                rest.len()
            ),
        });
    }
    Ok(cert)
}

/// The DER of every `CERTIFICATE` block; any other block is refused, since a chain file that
/// also carries a key is a leak waiting to happen.
fn certificate_blocks(pem_text: &str, label: &str) -> Result<Vec<Vec<u8>>> {
    let blocks = pem::parse_many(pem_text).map_err(|e| PkiError::InvalidPem {
        object: label.to_owned(),
        reason: e.to_string(),
    })?;
    let mut ders = Vec::with_capacity(blocks.len());
    for block in blocks {
        if block.tag() != "CERTIFICATE" {
            return Err(PkiError::InvalidPem {
                object: label.to_owned(),
                reason: format!("unexpected '{}' block among certificates", block.tag()),
            });
        }
        ders.push(block.into_contents());
    }
    if ders.is_empty() {
        return Err(PkiError::MissingPem {
            object: label.to_owned(),
            expected: "CERTIFICATE",
        });
    }
    Ok(ders)
}
