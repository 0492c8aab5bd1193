//! Client certificates for people: what HAProxy's `verify required` checks against the client
//! CA, one per user, with the email the previous scripts' `generate_client_cert "name" "email"` took.

use rcgen::{ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType};
use time::{Duration, OffsetDateTime};

use crate::ca::{CaCredential, SubjectName, base_params, generation};
use crate::cert::Certificate;
use crate::error::{PkiError, Result};
use crate::key::{KeyAlgorithm, SigningKey};

/// What a TLS client certificate for a person should carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificateParams {
    /// The user name; becomes the common name.
    pub name: String,
    /// The user's email; becomes an rfc822Name subjectAltName.
    pub email: String,
    /// Key type to generate.
    pub key_algorithm: KeyAlgorithm,
    /// How long the certificate is valid from `now`.
    pub validity: Duration,
}

/// A client certificate with its private key, as delivered to a user.
#[derive(Debug)]
pub struct ClientCredential {
    /// The client certificate.
    pub certificate: Certificate,
    /// Its private key.
    pub key: SigningKey,
}

/// Issues a client certificate: CN = name, email in subjectAltName, EKU clientAuth,
/// keyUsage digitalSignature, CA:FALSE, random serial.
pub fn issue_client_certificate(
    issuer: &CaCredential,
    params: &ClientCertificateParams,
    now: OffsetDateTime,
) -> Result<ClientCredential> {
    validate_email(&params.email)?;
    let key = SigningKey::generate(params.key_algorithm)?;
    let subject = SubjectName {
        organization: None,
        organizational_unit: None,
        locality: None,
        common_name: params.name.clone(),
    };
    let mut cert_params = base_params(
        &subject,
        now,
        params.validity,
        Some(issuer.certificate.info().not_after),
    )?;
    cert_params.is_ca = IsCa::ExplicitNoCa;
    cert_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    cert_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    cert_params.subject_alt_names = vec![SanType::Rfc822Name(
        params
            .email
            .as_str()
            .try_into()
            .map_err(|_| invalid_email(&params.email))?,
    )];
    cert_params.use_authority_key_identifier_extension = true;
    let cert = cert_params
        .signed_by(key.pair(), &issuer.issuer()?)
        .map_err(|e| generation("client certificate", &e))?;
    let certificate = Certificate::from_der(cert.der().to_vec(), format!("{}.crt", params.name))?;
    Ok(ClientCredential { certificate, key })
}

/// Whether `email` is an ASCII address of the form `user@domain.tld`, as an rfc822Name
/// subjectAltName must be.
#[must_use]
pub fn valid_email(email: &str) -> bool {
    email.is_ascii()
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        })
}

fn validate_email(email: &str) -> Result<()> {
    if valid_email(email) {
        Ok(())
    } else {
        Err(invalid_email(email))
    }
}

fn invalid_email(email: &str) -> PkiError {
    PkiError::InvalidParameter {
        name: "email",
        reason: format!("'{email}' is not an address of the form user@domain.tld"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked() {
        assert!(validate_email("user@example.org").is_ok());
        for bad in [
            "",
            "user",
            "@example.org",
            "user@localhost",
            "us er@example.org",
            "usér@example.org",
        ] {
            assert!(validate_email(bad).is_err(), "{bad} accepted");
        }
    }
}
