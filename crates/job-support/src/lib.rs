//! The I/O every job shares, in one place: the state store (Vault/OpenBao KV v2, or a local
//! directory with the same check-and-set semantics) and its configuration, logging set-up,
//! the retry policy, exit codes, and the run metrics pushed to a Pushgateway. Certificate logic lives in `pki-core`; each job's
//! decisions in its crate.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod any_store;
pub mod cli;
pub mod config;
pub mod exit;
pub mod logging;
pub mod metrics;
pub mod plan;
pub mod retry;
pub mod store;
pub mod store_config;
pub mod vars;
pub mod yaml;

pub use any_store::AnyStore;
pub use exit::{Failure, InvalidState};
pub use store::{EntryVersion, KvEntry, SecretData, SecretStore, StoreError, WriteOutcome};
pub use store_config::{DEFAULT_KV_MOUNT, StoreConfig, StoreLocation};
pub use vars::ConfigError;
