//! The configuration paths the jobs import (`job_support::config::...`), in one place. Each
//! concern has a file of its own: variables and their validators in [`crate::vars`], the
//! store's settings in [`crate::store_config`], the store they select in [`crate::any_store`].

pub use crate::any_store::AnyStore;
pub use crate::logging::report_kept_key_algorithm;
pub use crate::store_config::{
    DEFAULT_KV_MOUNT, DEFAULT_SA_TOKEN_PATH, STORE_VARIABLES_HELP, StoreConfig, StoreLocation,
};
pub use crate::vars::{
    ConfigError, dns_label, key_algorithm, kv_path, non_blank, parse_bool, parse_number,
    raw_from_vars, renewal_policy,
};
