//! Certificate authorities: a self-signed root, intermediates signed by it, and leaf
//! certificates, all from explicit parameters and an explicit `now`.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyUsagePurpose,
    SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::{Duration, OffsetDateTime};

use crate::cert::Certificate;
use crate::error::{PkiError, Result};
use crate::key::{KeyAlgorithm, SecretPem, SigningKey};

/// Certificates are backdated by this much so that a peer whose clock runs slightly behind
/// (the second cluster, a laptop importing a PKCS#12) does not see them as not yet valid.
pub const BACKDATE: Duration = Duration::minutes(5);

/// The subject of a CA certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectName {
    /// Organization (O).
    pub organization: Option<String>,
    /// Organizational unit (OU).
    pub organizational_unit: Option<String>,
    /// Locality (L); Istio's tooling puts the cluster name here.
    pub locality: Option<String>,
    /// Common name (CN).
    pub common_name: String,
}

impl SubjectName {
    /// A subject with an organization and a common name.
    #[must_use]
    pub fn new(organization: &str, common_name: &str) -> Self {
        Self {
            organization: Some(organization.to_owned()),
            organizational_unit: None,
            locality: None,
            common_name: common_name.to_owned(),
        }
    }

    fn to_distinguished_name(&self) -> Result<DistinguishedName> {
        if self.common_name.trim().is_empty() {
            return Err(PkiError::InvalidParameter {
                name: "common name",
                reason: "must not be empty".into(),
            });
        }
        let mut dn = DistinguishedName::new();
        let parts = [
            (DnType::OrganizationName, &self.organization),
            (DnType::OrganizationalUnitName, &self.organizational_unit),
            (DnType::LocalityName, &self.locality),
        ];
        for (ty, value) in parts {
            if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
                dn.push(ty, value);
            }
        }
        dn.push(DnType::CommonName, self.common_name.as_str());
        Ok(dn)
    }
}

/// What a new CA certificate should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaParams {
    /// Subject of the certificate.
    pub subject: SubjectName,
    /// Key type to generate.
    pub key_algorithm: KeyAlgorithm,
    /// How long the certificate is valid from `now`.
    pub validity: Duration,
}

/// A CA certificate with its private key.
#[derive(Debug)]
pub struct CaCredential {
    /// The CA certificate.
    pub certificate: Certificate,
    /// Its private key.
    pub key: SigningKey,
}

impl CaCredential {
    /// Loads a stored CA and checks that it can sign: the key matches the certificate, the
    /// certificate is a CA, and it is valid at `now`.
    pub fn from_pem(
        cert_pem: &str,
        cert_label: &str,
        key_pem: &str,
        key_label: &str,
        now: OffsetDateTime,
    ) -> Result<Self> {
        let certificate = Certificate::from_pem(cert_pem, cert_label)?;
        let key = SigningKey::from_pem(key_pem, key_label)?;
        certificate.check_key_matches(&key, key_label)?;
        certificate.check_is_ca()?;
        certificate.check_validity_at(now)?;
        Ok(Self { certificate, key })
    }

    /// The private key as unencrypted PKCS#8 PEM.
    #[must_use]
    pub fn key_pem(&self) -> SecretPem {
        self.key.to_pkcs8_pem()
    }

    pub(crate) fn issuer(&self) -> Result<Issuer<'static, &rcgen::KeyPair>> {
        Issuer::from_ca_cert_der(&self.certificate.der().into(), self.key.pair()).map_err(|e| {
            PkiError::InvalidCertificate {
                object: self.certificate.label().to_owned(),
                reason: format!("cannot act as issuer: {e}"),
            }
        })
    }

    pub(crate) fn sign_crl(
        &self,
        params: &rcgen::CertificateRevocationListParams,
    ) -> Result<rcgen::CertificateRevocationList> {
        params
            .signed_by(&self.issuer()?)
            .map_err(|e| PkiError::Generation {
                what: "CRL",
                reason: e.to_string(),
            })
    }
}

/// Generates a self-signed root CA: unconstrained path length, keyCertSign and cRLSign.
pub fn generate_root_ca(params: &CaParams, now: OffsetDateTime) -> Result<CaCredential> {
    let key = SigningKey::generate(params.key_algorithm)?;
    let mut cert_params = base_params(&params.subject, now, params.validity, None)?;
    cert_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    cert_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = cert_params
        .self_signed(key.pair())
        .map_err(|e| generation("root CA certificate", &e))?;
    let certificate = Certificate::from_der(cert.der().to_vec(), "root-cert.pem")?;
    Ok(CaCredential { certificate, key })
}

/// Issues an intermediate CA signed by `issuer`: path length 0, keyCertSign, cRLSign and
/// digitalSignature, no extended key usage (which would restrict what it may sign).
///
/// Its validity is cut at the issuer's own expiry: a certificate cannot outlive its chain.
pub fn issue_intermediate_ca(
    issuer: &CaCredential,
    params: &CaParams,
    now: OffsetDateTime,
) -> Result<CaCredential> {
    let key = SigningKey::generate(params.key_algorithm)?;
    let mut cert_params = base_params(
        &params.subject,
        now,
        params.validity,
        Some(issuer.certificate.info().not_after),
    )?;
    cert_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    cert_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    cert_params.use_authority_key_identifier_extension = true;
    let cert = cert_params
        .signed_by(key.pair(), &issuer.issuer()?)
        .map_err(|e| generation("intermediate CA certificate", &e))?;
    let certificate = Certificate::from_der(cert.der().to_vec(), "ca-cert.pem")?;
    Ok(CaCredential { certificate, key })
}

pub(crate) fn base_params(
    subject: &SubjectName,
    now: OffsetDateTime,
    validity: Duration,
    issuer_not_after: Option<OffsetDateTime>,
) -> Result<CertificateParams> {
    if validity <= Duration::ZERO {
        return Err(PkiError::InvalidParameter {
            name: "validity",
            reason: format!("must be positive, got {validity}"),
        });
    }
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let mut not_after = now
        .checked_add(validity)
        .filter(|t| t.year() <= 9999)
        .ok_or_else(|| PkiError::InvalidParameter {
            name: "validity",
            reason: format!(
                "{} days from {} ends after the year 9999, the last an X.509 time can hold",
                validity.whole_days(),
                now.date()
            ),
        })?;
    if let Some(limit) = issuer_not_after {
        if limit <= now {
            return Err(PkiError::Expired {
                object: "issuer".into(),
                not_after: limit.date(),
            });
        }
        not_after = not_after.min(limit);
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = subject.to_distinguished_name()?;
    params.not_before = now - BACKDATE;
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

/// 16 random bytes with the top bit clear, so the DER INTEGER stays positive and at most
/// 17 bytes: well within RFC 5280's 20-octet limit and unpredictable, as CAs must be.
fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Generation {
            what: "serial number",
            reason: "the system random number generator failed".into(),
        })?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

pub(crate) fn generation(what: &'static str, e: &rcgen::Error) -> PkiError {
    PkiError::Generation {
        what,
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_positive_and_distinct() {
        let a = random_serial().unwrap().to_bytes();
        let b = random_serial().unwrap().to_bytes();
        assert_eq!(a.len(), 16);
        assert!(a[0] & 0x80 == 0 && a[0] != 0);
        assert_ne!(a, b);
    }
}
