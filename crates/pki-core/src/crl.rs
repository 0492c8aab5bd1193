//! Certificate revocation lists: signed by the client CA, read by HAProxy's `crl-file`.
//! HAProxy with `crl-file` refuses every client when any CA of the trust bundle lacks a CRL,
//! so a CRL exists from the first run, even with nothing revoked.

use std::fmt;
use std::str::FromStr;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::ca::CaCredential;
use crate::cert::{Certificate, hex_upper};
use crate::error::{PkiError, Result};

/// Why a certificate was revoked (RFC 5280 §5.3.1), the subset an operator chooses from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RevocationReason {
    /// No reason given.
    #[default]
    Unspecified,
    /// The private key leaked.
    KeyCompromise,
    /// The holder left the organisation or changed role.
    AffiliationChanged,
    /// Replaced by a newer certificate.
    Superseded,
    /// No longer needed.
    CessationOfOperation,
}

impl RevocationReason {
    /// The name used in configuration.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::KeyCompromise => "key-compromise",
            Self::AffiliationChanged => "affiliation-changed",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessation-of-operation",
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::Unspecified => 0,
            Self::KeyCompromise => 1,
            Self::AffiliationChanged => 3,
            Self::Superseded => 4,
            Self::CessationOfOperation => 5,
        }
    }

    /// Every reason this crate writes.
    const ALL: [Self; 5] = [
        Self::Unspecified,
        Self::KeyCompromise,
        Self::AffiliationChanged,
        Self::Superseded,
        Self::CessationOfOperation,
    ];

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    fn to_rcgen(self) -> rcgen::RevocationReason {
        match self {
            Self::Unspecified => rcgen::RevocationReason::Unspecified,
            Self::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
            Self::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
            Self::Superseded => rcgen::RevocationReason::Superseded,
            Self::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
        }
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RevocationReason {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.name() == s)
        .ok_or_else(|| PkiError::InvalidParameter {
            name: "revocation reason",
            reason: format!(
                "'{s}' is not one of unspecified, key-compromise, affiliation-changed, superseded, cessation-of-operation"
            ),
        })
    }
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCertificate {
    /// Serial number, big-endian bytes as in the certificate.
    pub serial: Vec<u8>,
    /// When the CA revoked it.
    pub revoked_at: OffsetDateTime,
    /// Why.
    pub reason: RevocationReason,
}

impl RevokedCertificate {
    /// The serial in uppercase hex, as [`crate::CertificateInfo::serial_hex`] has it.
    #[must_use]
    pub fn serial_hex(&self) -> String {
        hex_upper(&self.serial, "")
    }
}

/// The content of a CRL to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlParams {
    /// Issue time (thisUpdate).
    pub this_update: OffsetDateTime,
    /// When relying parties should expect a fresh CRL (nextUpdate); HAProxy refuses clients
    /// once it has passed, so the issuer re-signs well before.
    pub next_update: OffsetDateTime,
    /// Monotonically increasing CRL number.
    pub crl_number: u64,
    /// Revoked certificates.
    pub revoked: Vec<RevokedCertificate>,
}

/// Signs a CRL with `issuer` and returns it as PEM.
pub fn sign_crl(issuer: &CaCredential, params: &CrlParams) -> Result<String> {
    if params.next_update <= params.this_update {
        return Err(PkiError::InvalidParameter {
            name: "CRL nextUpdate",
            reason: "must be after thisUpdate".into(),
        });
    }
    let revoked_certs = params
        .revoked
        .iter()
        .map(|r| RevokedCertParams {
            serial_number: SerialNumber::from_slice(&r.serial),
            revocation_time: r.revoked_at.replace_nanosecond(0).unwrap_or(r.revoked_at),
            reason_code: Some(r.reason.to_rcgen()),
            invalidity_date: None,
        })
        .collect();
    let rcgen_params = CertificateRevocationListParams {
        this_update: params
            .this_update
            .replace_nanosecond(0)
            .unwrap_or(params.this_update),
        next_update: params
            .next_update
            .replace_nanosecond(0)
            .unwrap_or(params.next_update),
        crl_number: SerialNumber::from_slice(&params.crl_number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: crl_key_identifier(&issuer.certificate),
    };
    issuer
        .sign_crl(&rcgen_params)?
        .pem()
        .map_err(|e| PkiError::Generation {
            what: "CRL",
            reason: e.to_string(),
        })
}

/// The CRL's authority key identifier: the issuer certificate's own subject key identifier
/// when it has one. rcgen derives the identifier from the key with the method given, which
/// for a CA made elsewhere (OpenSSL's default is the SHA-1 of the key) names no certificate:
/// OpenSSL then finds no CRL for that CA ("unable to get certificate CRL"), and HAProxy,
/// which verifies with OpenSSL, refuses its clients.
fn crl_key_identifier(issuer: &Certificate) -> KeyIdMethod {
    x509_parser::parse_x509_certificate(issuer.der())
        .ok()
        .and_then(|(_, cert)| {
            cert.extensions()
                .iter()
                .find_map(|e| match e.parsed_extension() {
                    x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                        Some(id.0.to_vec())
                    }
                    _ => None,
                })
        })
        .map_or(KeyIdMethod::Sha256, KeyIdMethod::PreSpecified)
}

/// The revocation set to publish next: everything already published, plus what this run
/// knows of. A serial stays listed once published, whatever a later reader saw, so two
/// writers that each rebuild the CRL from their own reads can never drop each other's
/// revocations. Where both list a serial, the published record (date and reason) stands.
/// Sorted by serial, so the same set always signs the same list.
#[must_use]
pub fn merge_revocations(
    published: &[RevokedCertificate],
    known: &[RevokedCertificate],
) -> Vec<RevokedCertificate> {
    let mut by_serial = std::collections::BTreeMap::new();
    for r in known.iter().chain(published) {
        // `published` comes second, so it overwrites this run's record of the same serial.
        by_serial.insert(r.serial.clone(), r.clone());
    }
    by_serial.into_values().collect()
}

/// A revoked entry as read back from a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    /// Serial number in uppercase hex, no separators.
    pub serial_hex: String,
    /// Revocation date.
    pub revoked_at: OffsetDateTime,
    /// Reason, when present and one we know.
    pub reason: Option<RevocationReason>,
}

/// What a parsed CRL says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlInfo {
    /// Issuer distinguished name.
    pub issuer: String,
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate, when present.
    pub next_update: Option<OffsetDateTime>,
    /// CRL number, when present.
    pub crl_number: Option<u64>,
    /// Revoked certificates.
    pub revoked: Vec<RevokedEntry>,
}

/// A CRL kept as DER with its label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crl {
    der: Vec<u8>,
    label: String,
    info: CrlInfo,
}

impl Crl {
    /// Parses exactly one `X509 CRL` PEM block.
    pub fn from_pem(pem_text: &str, label: &str) -> Result<Self> {
        let invalid = |reason: String| PkiError::InvalidCrl {
            object: label.to_owned(),
            reason,
        };
        let blocks = pem::parse_many(pem_text).map_err(|e| PkiError::InvalidPem {
            object: label.to_owned(),
            reason: e.to_string(),
        })?;
        let mut crls = blocks.into_iter().filter(|b| b.tag() == "X509 CRL");
        let Some(block) = crls.next() else {
            return Err(PkiError::MissingPem {
                object: label.to_owned(),
                expected: "X509 CRL",
            });
        };
        if crls.next().is_some() {
            return Err(invalid("holds more than one CRL".into()));
        }
        let der = block.into_contents();
        let info = {
            let crl = parse_crl(&der, label)?;
            let crl_number = match crl.crl_number() {
                Some(n) => Some(
                    u64::try_from(n)
                        .map_err(|_| invalid("CRL number does not fit in 64 bits".into()))?,
                ),
                None => None,
            };
            CrlInfo {
                issuer: crl.issuer().to_string(),
                this_update: crl.last_update().to_datetime(),
                next_update: crl.next_update().map(|t| t.to_datetime()),
                crl_number,
                revoked: crl
                    .iter_revoked_certificates()
                    .map(|r| RevokedEntry {
                        serial_hex: hex_upper(r.raw_serial(), ""),
                        revoked_at: r.revocation_date.to_datetime(),
                        reason: r
                            .reason_code()
                            .and_then(|(_, code)| RevocationReason::from_code(code.0)),
                    })
                    .collect(),
            }
        };
        Ok(Self {
            der,
            label: label.to_owned(),
            info,
        })
    }

    /// Parses every `X509 CRL` block of a bundle (HAProxy's `crl-file` holds one per CA).
    pub fn bundle_from_pem(pem_text: &str, label: &str) -> Result<Vec<Self>> {
        let blocks = pem::parse_many(pem_text).map_err(|e| PkiError::InvalidPem {
            object: label.to_owned(),
            reason: e.to_string(),
        })?;
        blocks
            .iter()
            .filter(|b| b.tag() == "X509 CRL")
            .enumerate()
            .map(|(i, b)| Self::from_pem(&pem::encode(b), &format!("{label} CRL {}", i + 1)))
            .collect()
    }

    /// The CRL as a PEM block.
    #[must_use]
    pub fn to_pem(&self) -> String {
        pem::encode_config(
            &pem::Pem::new("X509 CRL", self.der.clone()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }

    /// What the CRL says.
    #[must_use]
    pub fn info(&self) -> &CrlInfo {
        &self.info
    }

    /// Checks the CRL's signature and issuer name against `issuer`.
    pub fn verify_signed_by(&self, issuer: &Certificate) -> Result<()> {
        let bad = || PkiError::BadSignature {
            object: self.label.clone(),
            issuer: issuer.label().to_owned(),
        };
        if self.info.issuer != issuer.info().subject {
            return Err(bad());
        }
        let crl = parse_crl(&self.der, &self.label)?;
        issuer
            .with_x509(|cert| crl.verify_signature(cert.public_key()))?
            .map_err(|_| bad())
    }

    /// The revoked certificates the CRL lists, as [`sign_crl`] takes them (serial bytes as
    /// encoded; a reason code outside RFC 5280's named ones reads as unspecified).
    pub fn revoked_certificates(&self) -> Result<Vec<RevokedCertificate>> {
        let crl = parse_crl(&self.der, &self.label)?;
        Ok(crl
            .iter_revoked_certificates()
            .map(|r| RevokedCertificate {
                serial: r.raw_serial().to_vec(),
                revoked_at: r.revocation_date.to_datetime(),
                reason: r
                    .reason_code()
                    .and_then(|(_, code)| RevocationReason::from_code(code.0))
                    .unwrap_or_default(),
            })
            .collect())
    }

    /// Whether the CRL lists this serial (uppercase hex, as [`crate::CertificateInfo`] has it).
    #[must_use]
    pub fn is_revoked(&self, serial_hex: &str) -> bool {
        self.info.revoked.iter().any(|r| r.serial_hex == serial_hex)
    }
}

fn parse_crl<'a>(der: &'a [u8], label: &str) -> Result<CertificateRevocationList<'a>> {
    let (rest, crl) =
        CertificateRevocationList::from_der(der).map_err(|e| PkiError::InvalidCrl {
            object: label.to_owned(),
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(PkiError::InvalidCrl {
            object: label.to_owned(),
            reason: format!("{} bytes of trailing data after the CRL", rest.len()),
        });
    }
    Ok(crl)
}
