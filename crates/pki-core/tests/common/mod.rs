//! Helpers shared by the pki-core test binaries and the fuzz targets.
pub mod fuzz_entry;
