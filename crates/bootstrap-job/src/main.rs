//! `bootstrap-job`: creates the shared Istio root CA and one intermediate per cluster in Vault
//! (or a local state directory), exactly once; every later run verifies and writes nothing.
//! `bootstrap-job rotate ...` moves the clusters to the root in stages.
#![forbid(unsafe_code)]

mod config;
mod converge;
mod metrics;
mod plan;
mod root_entry;
mod rotation;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use job_support::SecretStore;
use job_support::cli::{Output, OutputArg, block_on, main_with};
use job_support::exit::Failure;
use job_support::plan::{Change, Plan as DryRun};
use job_support::store::plan::PlanStore;
use pki_core::time::OffsetDateTime;
use tracing::{info, warn};

use crate::config::{Config, RotateConfig};
use crate::converge::{ClusterAction, converge};
use crate::rotation::clusters::KubeClusters;
use crate::rotation::{Action, Outcome, Rotation};

/// Creates the shared Istio root CA and each cluster's intermediate (the cacerts files) in
/// Vault KV v2, exactly once. Later runs verify the stored state and write nothing, except a
/// missing cluster bundle or an intermediate due for renewal. The root is never replaced. A
/// root written by the previous scripts (root-cert.pem, cert-chain.pem, key.pem) is adopted as
/// it is.
#[derive(Debug, Parser)]
#[command(version, after_help = variables_help())]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create what is missing, renew what is due, verify the rest (the default, as the Job runs)
    #[command(after_help = variables_help())]
    Converge,
    /// Read everything and print what `converge` would write, without writing; exits 10 when
    /// changes are pending, 0 when there are none
    #[command(after_help = variables_help())]
    Plan(OutputArg),
    /// Move the clusters to the root in stages
    #[command(subcommand, after_help = rotate_help())]
    Rotate(RotateCommand),
}

/// Moves every cluster's cacerts from the CA it serves today (istiod's self-signed
/// istio-ca-secret, or its current cacerts) to an intermediate under the root, in stages.
#[derive(Debug, Subcommand)]
enum RotateCommand {
    /// Report the stage, what Vault holds and what each cluster serves
    #[command(after_help = rotate_help())]
    Status,
    /// Start, or move to the next stage once every cluster serves the current one and it has
    /// settled
    #[command(after_help = rotate_help())]
    Advance {
        /// Skip the two waits (never the checks)
        #[arg(long)]
        force: bool,
    },
    /// Move to the previous stage
    #[command(after_help = rotate_help())]
    Back,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Rotate(command)) => rotate_main(match command {
            RotateCommand::Status => Action::Status,
            RotateCommand::Advance { force } => Action::Advance { force },
            RotateCommand::Back => Action::Back,
        }),
        Some(Command::Plan(OutputArg { output })) => main_with(
            true,
            || Config::from_vars(std::env::vars().collect()),
            |config| &config.store,
            |config| block_on(plan(config, output)),
        ),
        None | Some(Command::Converge) => main_with(
            false,
            || Config::from_vars(std::env::vars().collect()),
            |config| &config.store,
            |config| {
                block_on(async { metrics::reported(config, run(config).await).await })
                    .map(|()| ExitCode::SUCCESS)
            },
        ),
    }
}

/// `plan`: the converge decision over a store that records writes instead of making them.
async fn plan(config: &Config, output: Output) -> Result<ExitCode> {
    let store = config.store.open().await?;
    let dry = PlanStore::new(&store);
    let outcome = converge(&dry, &config.plan, OffsetDateTime::now_utc()).await?;
    let mut changes = Vec::new();
    if outcome.root_created {
        changes.push(Change::new(
            "create",
            "Istio root CA",
            format!("new root, {} days", outcome.root_days_left),
        ));
    }
    for cluster in &outcome.clusters {
        let action = match cluster.action {
            ClusterAction::Issued => "issue",
            ClusterAction::Renewed => "renew",
            _ => continue,
        };
        changes.push(Change::new(
            action,
            format!("cluster {}", cluster.cluster),
            format!("intermediate CA, {} days", cluster.days_left),
        ));
    }
    let plan = DryRun::new("bootstrap-job", store.describe(), changes, dry.changes());
    print!("{}", plan.render(output));
    Ok(plan.exit_code())
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
        root_layout = outcome.root_layout.name(),
        clusters = %clusters.join(", "),
        writes = outcome.writes(),
        "{message}"
    );
    Ok(outcome)
}

fn action_name(action: ClusterAction) -> String {
    match action {
        ClusterAction::Kept => "kept".into(),
        ClusterAction::Issued => "issued".into(),
        ClusterAction::Renewed => "renewed".into(),
        ClusterAction::Adopted => "adopted".into(),
        ClusterAction::Rotating(stage) => format!("rotating at {stage}"),
    }
}

fn rotate_main(action: Action) -> ExitCode {
    let vars: Vec<(String, String)> = std::env::vars().collect();
    main_with(
        false,
        || {
            let config = Config::from_vars(vars.clone())?;
            let rotate = RotateConfig::from_vars(vars, &config)?;
            Ok((config, rotate))
        },
        |(config, _)| &config.store,
        |(config, rotate)| block_on(run_rotate(config, rotate, action)).map(ExitCode::from),
    )
}

async fn run_rotate(config: &Config, rotate: &RotateConfig, action: Action) -> Result<u8> {
    let store = config.store.open().await?;
    let clusters =
        KubeClusters::connect(&rotate.access, &rotate.namespace, rotate.kube_max_attempts).await?;
    let rotation = Rotation {
        store: &store,
        clusters: &clusters,
        plan: &config.plan,
        rotate: &rotate.plan,
        now: OffsetDateTime::now_utc(),
    };
    let report = rotation.run(action).await?;
    for line in &report.lines {
        println!("{line}");
    }
    match &report.outcome {
        Outcome::NotAdvanced(reasons) => {
            warn!(store = %store.describe(), reasons = %reasons.join("; "), "rotation not advanced");
        }
        outcome => {
            info!(store = %store.describe(), outcome = ?outcome, "rotation {}", match action {
                Action::Status => "status",
                Action::Advance { .. } => "advance",
                Action::Back => "back",
            });
        }
    }
    Ok(report.exit_code())
}

fn variables_help() -> String {
    job_support::cli::variables_help(config::VARIABLES_HELP, "istio-ca-bootstrap")
}

fn rotate_help() -> String {
    format!(
        "STAGES:\n    \
         0  the previous CA, imported as cacerts (restart istiod where it was self-signed)\n    \
         1  the previous CA signs; both roots trusted\n    \
         2  the new intermediate signs; both roots trusted\n    \
         3  the new intermediate signs; only the new root trusted\n\
         Each stage goes to istio/clusters/<cluster>, from where the sync copies it into cacerts.\n\
         istiod must run with ISTIO_MULTIROOT_MESH=true to take stages 1 to 3 without a restart.\n\n\
         {}\n\n{}\n\n{}\n\n{}\n    \
         9  rotate: not advanced (a cluster does not serve the current stage yet, the stage has not\n       \
         settled, or there is no step to take); nothing was written",
        config::ROTATE_VARIABLES_HELP,
        config::VARIABLES_HELP,
        job_support::config::STORE_VARIABLES_HELP,
        Failure::TABLE
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(words: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("bootstrap-job").chain(words.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn commands_parse_and_mistakes_are_usage_errors() {
        assert!(parse(&[]).unwrap().command.is_none());
        assert!(matches!(
            parse(&["rotate", "advance", "--force"]).unwrap().command,
            Some(Command::Rotate(RotateCommand::Advance { force: true }))
        ));
        assert!(matches!(
            parse(&["plan", "-o", "json"]).unwrap().command,
            Some(Command::Plan(OutputArg {
                output: Output::Json
            }))
        ));
        for wrong in [
            &["rotate", "back", "--force"][..],
            &["rotate", "forward"],
            &["plan", "-o", "yaml"],
            &["converge", "extra"],
            &["--unknown"],
        ] {
            let error = parse(wrong).unwrap_err();
            assert_eq!(error.exit_code(), Failure::Config as i32, "{wrong:?}");
        }
    }

    #[test]
    fn every_subcommand_has_help_with_the_variables_and_exit_codes() {
        for words in [
            &["--help"][..],
            &["plan", "--help"],
            &["converge", "--help"],
            &["rotate", "--help"],
            &["rotate", "advance", "--help"],
        ] {
            let help = parse(words).unwrap_err();
            assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
            let text = help.to_string();
            assert!(text.contains("EXIT CODES:"), "{words:?}: {text}");
            assert!(!text.to_lowercase().contains("seed"), "{words:?}");
        }
    }
}
