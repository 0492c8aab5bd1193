//! The one error type of the library: each variant names the object (a file name such as
//! `ca-key.pem`, or whatever label the caller gave) and what is wrong with it, so a job can
//! print it as it is to an operator.

use time::{Date, OffsetDateTime};

/// Everything that can go wrong while generating, parsing or verifying PKI material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// The input holds no PEM block of the expected kind.
    #[error("{object} holds no {expected}")]
    MissingPem {
        /// What was being read.
        object: String,
        /// The PEM label that was looked for, such as `CERTIFICATE`.
        expected: &'static str,
    },
    /// The input is not well-formed PEM, or holds a block of another kind.
    #[error("{object} is not valid PEM: {reason}")]
    InvalidPem {
        /// What was being read.
        object: String,
        /// What the PEM parser found wrong.
        reason: String,
    },
    /// A certificate's DER could not be parsed (truncated, garbage, trailing bytes).
    #[error("{object} is not a valid certificate: {reason}")]
    InvalidCertificate {
        /// What was being read.
        object: String,
        /// What the X.509 parser found wrong.
        reason: String,
    },
    /// A private key is password-protected; the consumers (istiod, HAProxy) need it in clear.
    #[error("{object} is an encrypted private key; an unencrypted key is required")]
    EncryptedKey {
        /// What was being read.
        object: String,
    },
    /// A private key could not be parsed or uses an algorithm we do not sign with.
    #[error("{object} is not a usable private key: {reason}")]
    InvalidKey {
        /// What was being read.
        object: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The private key's public half is not the certificate's public key.
    #[error("{key} does not match {certificate}")]
    KeyMismatch {
        /// The key's label.
        key: String,
        /// The certificate's label.
        certificate: String,
    },
    /// A certificate expected to be a root is not signed by its own key.
    #[error("{object} is not self-signed")]
    NotSelfSigned {
        /// The certificate's label.
        object: String,
    },
    /// A certificate used to sign others lacks basicConstraints CA:TRUE or keyCertSign.
    #[error("{object} is not a CA certificate: {reason}")]
    NotCa {
        /// The certificate's label.
        object: String,
        /// Which constraint is missing.
        reason: &'static str,
    },
    /// A certificate's notAfter is before the time of the check.
    #[error("{object} expired on {not_after}")]
    Expired {
        /// The certificate's label.
        object: String,
        /// The day it stopped being valid.
        not_after: Date,
    },
    /// A certificate's notBefore is after the time of the check.
    #[error("{object} is not valid before {not_before}")]
    NotYetValid {
        /// The certificate's label.
        object: String,
        /// The day it starts being valid.
        not_before: Date,
    },
    /// A signature does not verify with the public key of the certificate named as issuer.
    #[error("{object} is not signed by {issuer}")]
    BadSignature {
        /// The signed object's label.
        object: String,
        /// The label of the certificate whose key was tried.
        issuer: String,
    },
    /// A chain is out of order, incomplete or holds something it should not.
    #[error("{object} is not a valid chain: {reason}")]
    InvalidChain {
        /// The chain's label.
        object: String,
        /// What is wrong with the order or content.
        reason: String,
    },
    /// A CRL could not be parsed.
    #[error("{object} is not a valid CRL: {reason}")]
    InvalidCrl {
        /// The CRL's label.
        object: String,
        /// What the parser found wrong.
        reason: String,
    },
    /// A CA of a client trust bundle has no CRL of its own among the bundle's CRLs.
    #[error(
        "{crls}: no CRL signed by '{ca}'; HAProxy with a crl-file would refuse every client of that CA"
    )]
    MissingCrl {
        /// What holds the CRLs.
        crls: String,
        /// The CA's subject.
        ca: String,
    },
    /// The CRL of a CA of a client trust bundle is past its nextUpdate.
    #[error(
        "the CRL of '{ca}' passed its nextUpdate ({next_update}); HAProxy with a crl-file would refuse every client of that CA"
    )]
    CrlExpired {
        /// The CA's subject.
        ca: String,
        /// When the CRL stopped being current.
        next_update: OffsetDateTime,
    },
    /// A caller-supplied parameter is out of range or empty.
    #[error("invalid {name}: {reason}")]
    InvalidParameter {
        /// The parameter's name, as the caller's configuration calls it.
        name: &'static str,
        /// What was expected.
        reason: String,
    },
    /// Key generation, signing or encoding failed inside the crypto library.
    #[error("failed to generate {what}: {reason}")]
    Generation {
        /// What was being generated.
        what: &'static str,
        /// The underlying library's message.
        reason: String,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, PkiError>;
