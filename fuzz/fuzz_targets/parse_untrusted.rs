//! Arbitrary bytes into every pki-core parser of untrusted input (PEM certificates, chains,
//! keys, CRLs, Istio bundles, PKCS#12): none may panic.
#![no_main]

#[path = "../../crates/pki-core/tests/common/fuzz_entry.rs"]
mod fuzz_entry;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_entry::parse_untrusted(data));
