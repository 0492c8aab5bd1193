//! `bootstrap-job`: creates the shared Istio root CA and one intermediate per cluster in Vault
//! (or a local state directory), exactly once; every later run verifies and writes nothing.
#![forbid(unsafe_code)]

mod config;
mod converge;
mod metrics;

use std::process::ExitCode;

use anyhow::Result;
use job_support::SecretStore;
use job_support::cli::{JobInfo, block_on, main_with};
use job_support::exit::Failure;
use pki_core::time::OffsetDateTime;
use tracing::info;

use crate::config::Config;
use crate::converge::{ClusterAction, converge};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    main_with(
        JobInfo {
            name: "bootstrap-job",
            version: env!("CARGO_PKG_VERSION"),
        },
        &args,
        help,
        || Config::from_vars(std::env::vars().collect()),
        |config| &config.store,
        |config| block_on(async { metrics::reported(config, run(config).await).await }),
    )
}

async fn run(config: &Config) -> Result<converge::Outcome> {
    let store = config.store.open().await?;
    let outcome = converge(&store, &config.plan, OffsetDateTime::now_utc()).await?;
    let clusters: Vec<String> = outcome
        .clusters
        .iter()
        .map(|c| format!("{}={} ({}d)", c.cluster, action_name(c.action), c.days_left))
        .collect();
    let message = if outcome.writes() == 0 {
        "istio CA verified; nothing to do"
    } else {
        "istio CA converged"
    };
    info!(
        store = %store.describe(),
        root_fingerprint = %outcome.root_fingerprint,
        root_days_left = outcome.root_days_left,
        root_created = outcome.root_created,
        clusters = %clusters.join(", "),
        writes = outcome.writes(),
        "{message}"
    );
    Ok(outcome)
}

fn action_name(action: ClusterAction) -> &'static str {
    match action {
        ClusterAction::Kept => "kept",
        ClusterAction::Issued => "issued",
        ClusterAction::Renewed => "renewed",
        ClusterAction::Adopted => "adopted",
    }
}

fn help() -> String {
    format!(
        "bootstrap-job {}\n\
         Creates the shared Istio root CA and each cluster's intermediate (the cacerts files) in\n\
         Vault KV v2, exactly once. Later runs verify the stored state and write nothing, except a\n\
         missing cluster bundle or an intermediate due for renewal. The root is never replaced.\n\n\
         USAGE:\n    bootstrap-job            (configured through environment variables)\n\n\
         {}\n\n{}\n\n{}\n\n{}",
        env!("CARGO_PKG_VERSION"),
        config::VARIABLES_HELP,
        job_support::metrics::variables_help("istio-ca-bootstrap"),
        job_support::config::STORE_VARIABLES_HELP,
        Failure::TABLE
    )
}
