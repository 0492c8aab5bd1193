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
use job_support::SecretStore;
use job_support::cli::{JobInfo, block_on, main_with};
use job_support::exit::{Failure, report};
use job_support::logging;
use pki_core::time::OffsetDateTime;
use tracing::{info, warn};

use crate::config::{Config, RotateConfig};
use crate::converge::{ClusterAction, converge};
use crate::rotation::clusters::KubeClusters;
use crate::rotation::{Action, Outcome, Rotation};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("rotate") {
        return rotate_main(&args[1..]);
    }
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

/// `rotate status | advance [--force] | back`, parsed.
fn parse_rotate(args: &[String]) -> Result<Option<Action>, String> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["-h" | "--help"] | [] => Ok(None),
        ["status"] => Ok(Some(Action::Status)),
        ["advance"] => Ok(Some(Action::Advance { force: false })),
        ["advance", "--force"] => Ok(Some(Action::Advance { force: true })),
        ["back"] => Ok(Some(Action::Back)),
        [command, rest @ ..] if matches!(*command, "status" | "advance" | "back") => Err(format!(
            "unexpected argument '{}' after '{command}' (see `bootstrap-job rotate --help`)",
            rest.join(" ")
        )),
        [other, ..] => Err(format!(
            "unknown rotate command '{other}'; expected status, advance [--force] or back"
        )),
    }
}

fn rotate_main(args: &[String]) -> ExitCode {
    let action = match parse_rotate(args) {
        Ok(Some(action)) => action,
        Ok(None) => {
            println!("{}", rotate_help());
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("bootstrap-job rotate: {message}");
            return Failure::Config.into();
        }
    };
    let vars: Vec<(String, String)> = std::env::vars().collect();
    let loaded = Config::from_vars(vars.clone())
        .and_then(|config| RotateConfig::from_vars(vars, &config).map(|r| (config, r)));
    let (config, rotate) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            logging::init(logging::LogFormat::Auto, None);
            return report(&e.into());
        }
    };
    logging::init(config.store.log_format, config.store.log_filter.as_deref());
    match block_on(run_rotate(&config, &rotate, action)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => report(&e),
    }
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

fn help() -> String {
    format!(
        "bootstrap-job {}\n\
         Creates the shared Istio root CA and each cluster's intermediate (the cacerts files) in\n\
         Vault KV v2, exactly once. Later runs verify the stored state and write nothing, except a\n\
         missing cluster bundle or an intermediate due for renewal. The root is never replaced.\n\
         A root written by the previous scripts (root-cert.pem, cert-chain.pem, key.pem) is\n\
         adopted as it is.\n\n\
         USAGE:\n    bootstrap-job            (configured through environment variables)\n    \
         bootstrap-job rotate ... (moves the clusters to the root in stages; see rotate --help)\n\n\
         {}\n\n{}\n\n{}\n\n{}",
        env!("CARGO_PKG_VERSION"),
        config::VARIABLES_HELP,
        job_support::metrics::variables_help("istio-ca-bootstrap"),
        job_support::config::STORE_VARIABLES_HELP,
        Failure::TABLE
    )
}

fn rotate_help() -> String {
    format!(
        "bootstrap-job rotate {}\n\
         Moves every cluster's cacerts from the CA it serves today (istiod's self-signed\n\
         istio-ca-secret, or its current cacerts) to an intermediate under the root, in stages:\n    \
         0  the previous CA, imported as cacerts (restart istiod where it was self-signed)\n    \
         1  the previous CA signs; both roots trusted\n    \
         2  the new intermediate signs; both roots trusted\n    \
         3  the new intermediate signs; only the new root trusted\n\
         Each stage goes to istio/clusters/<cluster>, from where the sync copies it into cacerts.\n\
         istiod must run with ISTIO_MULTIROOT_MESH=true to take stages 1 to 3 without a restart.\n\n\
         USAGE:\n    \
         bootstrap-job rotate status            report the stage, what Vault holds and each cluster serves\n    \
         bootstrap-job rotate advance           start, or move to the next stage once every cluster\n                                           \
         serves the current one and it has settled\n    \
         bootstrap-job rotate advance --force   the same without those two waits (never without the checks)\n    \
         bootstrap-job rotate back              move to the previous stage\n\n\
         {}\n\n{}\n\n{}\n\n{}\n    \
         9  rotate: not advanced (a cluster does not serve the current stage yet, the stage has not\n       \
         settled, or there is no step to take); nothing was written",
        env!("CARGO_PKG_VERSION"),
        config::ROTATE_VARIABLES_HELP,
        config::VARIABLES_HELP,
        job_support::config::STORE_VARIABLES_HELP,
        Failure::TABLE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn rotate_commands_parse() {
        assert_eq!(parse_rotate(&args(&["status"])), Ok(Some(Action::Status)));
        assert_eq!(
            parse_rotate(&args(&["advance", "--force"])),
            Ok(Some(Action::Advance { force: true }))
        );
        assert_eq!(parse_rotate(&args(&["back"])), Ok(Some(Action::Back)));
        assert_eq!(parse_rotate(&args(&[])), Ok(None));
        assert_eq!(
            parse_rotate(&args(&["back", "--force"])),
            Err(
                "unexpected argument '--force' after 'back' (see `bootstrap-job rotate --help`)"
                    .into()
            )
        );
        assert_eq!(
            parse_rotate(&args(&["forward"])),
            Err(
                "unknown rotate command 'forward'; expected status, advance [--force] or back"
                    .into()
            )
        );
    }
}
