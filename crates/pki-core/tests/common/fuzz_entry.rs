//! The untrusted-input entry points of pki-core, driven with arbitrary bytes: by the
//! mutation test in `tests/pki.rs` on stable, and by `cargo fuzz` (`fuzz/`). None may panic.

use pki_core::istio::{IstioBundleFiles, verify_istio_bundle};
use pki_core::time::macros::datetime;
use pki_core::{Certificate, Crl, SigningKey, read_pkcs12};

/// Feeds `input` to every parser that reads material from storage or from a user.
pub fn parse_untrusted(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let _ = Certificate::chain_from_pem(&text, "fuzz");
    let _ = Certificate::from_der(input.to_vec(), "fuzz");
    let _ = SigningKey::from_pem(&text, "fuzz");
    let _ = Crl::from_pem(&text, "fuzz");
    let files = IstioBundleFiles {
        ca_cert: &text,
        ca_key: &text,
        root_cert: &text,
        cert_chain: &text,
    };
    let _ = verify_istio_bundle(files, datetime!(2026-06-01 0:00 UTC));
    let _ = read_pkcs12(input, "password", "fuzz");
}
