//! The untrusted-input entry points of pki-core, driven with arbitrary bytes: by the
//! mutation test in `tests/pki.rs` on stable, and by `cargo fuzz` (`fuzz/`). None may panic.

use pki_core::istio::{IstioBundleFiles, verify_istio_bundle};
use pki_core::time::OffsetDateTime;
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
    // 2026-06-01T00:00:00Z, without the `time` macros (the fuzz crate does not depend on `time`).
    let at =
        OffsetDateTime::from_unix_timestamp(1_780_272_000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let _ = verify_istio_bundle(files, at);
    let _ = read_pkcs12(input, "password", "fuzz");
}
