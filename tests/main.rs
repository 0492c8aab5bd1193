//! The cross-crate integration tests, one binary: each module checks generated material or a
//! job against an independent, real peer that the test starts or runs itself.
// Test code: a failed unwrap is a failed test, with the panic message as the report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod aarch64;
mod bootstrap;
mod client_issuer;
mod haproxy_consumers;
mod images;
mod istio_rotation;
mod key_algorithm;
mod kube_auth;
mod manifests;
mod metrics;
mod nas_sync;
mod pki_interop;
mod release;
mod support;
mod vault_ha;
mod vault_policies;
mod vault_store;
