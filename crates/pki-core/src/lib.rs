//! Pure certificate logic for a homelab PKI: the Istio plug-in CA hierarchy shared by several
//! clusters, the client-certificate CA that HAProxy trusts, PKCS#12 bundles, CRLs, and the
//! verifiers and renewal policy the jobs decide with.
//!
//! Nothing here touches the network, files, the environment or the clock: the time is always
//! a parameter. Randomness (keys, serials) comes from the operating system through ring.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod ca;
mod cert;
mod client;
mod crl;
mod error;
pub mod istio;
pub mod istio_rotation;
mod key;
mod pkcs12;
mod renewal;
mod trust;

pub use ca::{
    BACKDATE, CaCredential, CaParams, SubjectName, generate_root_ca, issue_intermediate_ca,
};
pub use cert::{Certificate, CertificateInfo, chain_to_pem, fingerprint_sha256};
pub use client::{
    ClientCertificateParams, ClientCredential, issue_client_certificate, valid_email,
};
pub use crl::{
    Crl, CrlInfo, CrlParams, RevocationReason, RevokedCertificate, RevokedEntry, merge_revocations,
    sign_crl,
};
pub use error::{PkiError, Result};
pub use key::{KeyAlgorithm, SecretPem, SigningKey};
pub use pkcs12::{
    DEFAULT_ITERATIONS, Pkcs12Contents, Pkcs12Password, Pkcs12Profile, Pkcs12Request, build_pkcs12,
    read_pkcs12,
};
pub use renewal::{RenewalPolicy, renewal_due};
pub use trust::{ClientTrustBundle, CrlSet, TrustedCa, check_client_trust, crl_signed_by};

/// Re-exported so callers name times and durations with the same types.
pub use time;
