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
use clap::{Parser, Subcommand};
use job_support::SecretStore;
use job_support::cli::{Output, OutputArg, block_on, main_with};
use job_support::plan::{Change, Plan};
use pki_core::time::OffsetDateTime;
use tracing::info;

use crate::config::{Config, TargetChoice};
use crate::sync::{SyncAction, sync_each};
use crate::target::{KubeTarget, ManifestPlace, ManifestTarget, PlanTarget, SecretTarget};

/// Mirrors CA bundles from Vault KV into Kubernetes Secrets with server-side apply (field
/// manager nas-sync-job). Each bundle is verified first (an invalid one is never applied); a
/// Secret that already holds the data gets no write; one changed by hand is restored. Without a
/// cluster configured, it writes the Secret manifests instead; a Secret holding a private key
/// SOPS-encrypted to `SYNC_AGE_RECIPIENTS`, or in the clear only with `SYNC_PLAINTEXT_KEYS=allow`.
#[derive(Debug, Parser)]
#[command(version, after_help = variables_help())]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or restore every mapped Secret that differs from Vault (the default, as the
    /// CronJob runs)
    #[command(after_help = variables_help())]
    Sync,
    /// Read Vault and the Secrets and print what `sync` would create or restore, without
    /// applying; exits 10 when changes are pending, 0 when there are none
    #[command(after_help = variables_help())]
    Plan(OutputArg),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let plan = match cli.command {
        Some(Command::Plan(OutputArg { output })) => Some(output),
        None | Some(Command::Sync) => None,
    };
    main_with(
        plan.is_some(),
        || Config::from_vars(std::env::vars().collect()),
        |config| &config.store,
        |config| block_on(run(config, plan)),
    )
}

/// Syncs, or plans with `Some(output)`, against the configured target.
async fn run(config: &Config, plan: Option<Output>) -> Result<ExitCode> {
    let store = config.store.open().await?;
    match &config.target {
        TargetChoice::Kubernetes { max_attempts } => {
            job_support::store::vault::install_crypto_provider();
            let target = KubeTarget::connect(*max_attempts).await?;
            sync_with(config, &store, &target, plan).await
        }
        TargetChoice::Directory(dir) => {
            let target = ManifestTarget {
                place: ManifestPlace::Directory(dir.clone()),
                plaintext_keys: config.plaintext_keys,
                recipients: config.age_recipients.clone(),
            };
            sync_with(config, &store, &target, plan).await
        }
        TargetChoice::Stdout => {
            let target = ManifestTarget {
                place: ManifestPlace::Stdout,
                plaintext_keys: config.plaintext_keys,
                recipients: config.age_recipients.clone(),
            };
            sync_with(config, &store, &target, plan).await
        }
    }
}

/// `plan`: the sync over a target that applies nothing; its outcomes are the plan.
async fn plan_with(
    config: &Config,
    store: &impl SecretStore,
    target: &impl SecretTarget,
    output: Output,
) -> Result<ExitCode> {
    let now = OffsetDateTime::now_utc();
    let outcomes = sync_each(
        store,
        &PlanTarget(target),
        &config.mount,
        &config.mappings,
        now,
    )
    .await
    .into_result()?;
    let changes = outcomes
        .iter()
        .filter_map(|o| match &o.action {
            SyncAction::Unchanged => None,
            SyncAction::Created => Some(Change::new(
                "create",
                format!("Secret {}", o.target),
                format!("bundle {}", o.fingerprint),
            )),
            SyncAction::Restored(keys) => Some(Change::new(
                "restore",
                format!("Secret {}", o.target),
                format!("differs in {}", keys.join(", ")),
            )),
        })
        .collect();
    let plan = Plan::new(
        "nas-sync-job",
        format!("{} and {}", store.describe(), target.describe()),
        changes,
        Vec::new(),
    );
    print!("{}", plan.render(output));
    Ok(plan.exit_code())
}

async fn sync_with(
    config: &Config,
    store: &impl SecretStore,
    target: &impl SecretTarget,
    plan: Option<Output>,
) -> Result<ExitCode> {
    if let Some(output) = plan {
        return plan_with(config, store, target, output).await;
    }
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
    Ok(ExitCode::SUCCESS)
}

fn variables_help() -> String {
    job_support::cli::variables_help(config::VARIABLES_HELP, "nas-sync")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use job_support::exit::Failure;

    fn parse(words: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("nas-sync-job").chain(words.iter().copied()))
    }

    #[test]
    fn commands_parse_and_mistakes_are_usage_errors() {
        Cli::command().debug_assert();
        assert!(parse(&[]).unwrap().command.is_none());
        assert!(matches!(
            parse(&["plan", "--output", "json"]).unwrap().command,
            Some(Command::Plan(OutputArg {
                output: Output::Json
            }))
        ));
        for wrong in [
            &["plan", "-o", "yaml"][..],
            &["sync", "now"],
            &["--dry-run"],
        ] {
            assert_eq!(
                parse(wrong).unwrap_err().exit_code(),
                Failure::Config as i32,
                "{wrong:?}"
            );
        }
        for words in [&["--help"][..], &["plan", "--help"], &["sync", "--help"]] {
            let text = parse(words).unwrap_err().to_string();
            assert!(text.contains("EXIT CODES:"), "{words:?}: {text}");
        }
    }
}
