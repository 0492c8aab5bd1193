//! `nas-sync-job`: mirrors CA bundles from Vault into Kubernetes Secrets (by default the NAS
//! cluster's Istio `cacerts`), verifying each bundle first and writing only on drift.
#![forbid(unsafe_code)]

mod config;
mod mapping;
mod metrics;
mod sops;
mod sync;
mod target;
mod verify;

use std::process::ExitCode;

use anyhow::Result;
use job_support::SecretStore;
use job_support::cli::{JobInfo, block_on, main_with};
use job_support::exit::Failure;
use pki_core::time::OffsetDateTime;
use tracing::info;

use crate::config::{Config, TargetChoice};
use crate::sync::{SyncAction, sync_each};
use crate::target::{KubeTarget, ManifestPlace, ManifestTarget, SecretTarget};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    main_with(
        JobInfo {
            name: "nas-sync-job",
            version: env!("CARGO_PKG_VERSION"),
        },
        &args,
        help,
        || Config::from_vars(std::env::vars().collect()),
        |config| &config.store,
        |config| block_on(run(config)),
    )
}

async fn run(config: &Config) -> Result<()> {
    let store = config.store.open().await?;
    match &config.target {
        TargetChoice::Kubernetes { max_attempts } => {
            job_support::store::vault::install_crypto_provider();
            let target = KubeTarget::connect(*max_attempts).await?;
            sync_with(config, &store, &target).await
        }
        TargetChoice::Directory(dir) => {
            let target = ManifestTarget {
                place: ManifestPlace::Directory(dir.clone()),
                plaintext_keys: config.plaintext_keys,
                recipients: config.age_recipients.clone(),
            };
            sync_with(config, &store, &target).await
        }
        TargetChoice::Stdout => {
            let target = ManifestTarget {
                place: ManifestPlace::Stdout,
                plaintext_keys: config.plaintext_keys,
                recipients: config.age_recipients.clone(),
            };
            sync_with(config, &store, &target).await
        }
    }
}

async fn sync_with(
    config: &Config,
    store: &impl SecretStore,
    target: &impl SecretTarget,
) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    let run = sync_each(store, target, &config.mount, &config.mappings, now).await;
    if let Some(gateway) = &config.pushgateway {
        gateway
            .report_run(
                metrics::PREFIX,
                metrics::outcome(&run),
                now.unix_timestamp(),
            )
            .await;
    }
    let outcomes = run.into_result()?;
    let writes = outcomes
        .iter()
        .filter(|o| o.action != SyncAction::Unchanged)
        .count();
    let summary: Vec<String> = outcomes
        .iter()
        .map(|o| {
            let action = match &o.action {
                SyncAction::Unchanged => "unchanged",
                SyncAction::Created => "created",
                SyncAction::Restored(_) => "restored",
            };
            format!("{}={action}", o.target)
        })
        .collect();
    let message = if writes == 0 {
        "secrets in sync; nothing to do"
    } else {
        "secrets synced"
    };
    info!(store = %store.describe(), target = %target.describe(), secrets = %summary.join(", "), writes, "{message}");
    Ok(())
}

fn help() -> String {
    format!(
        "nas-sync-job {}\n\
         Mirrors CA bundles from Vault KV into Kubernetes Secrets with server-side apply (field\n\
         manager nas-sync-job). Each bundle is verified first (an invalid one is never applied);\n\
         a Secret that already holds the data gets no write; one changed by hand is restored.\n\
         Without a cluster configured, it writes the Secret manifests instead; a Secret holding a\n\
         private key SOPS-encrypted to SYNC_AGE_RECIPIENTS, or in the clear only with\n\
         SYNC_PLAINTEXT_KEYS=allow.\n\n\
         USAGE:\n    nas-sync-job            (configured through environment variables)\n\n\
         {}\n\n{}\n\n{}\n\n{}",
        env!("CARGO_PKG_VERSION"),
        config::VARIABLES_HELP,
        job_support::metrics::variables_help("nas-sync"),
        job_support::config::STORE_VARIABLES_HELP,
        Failure::TABLE
    )
}
