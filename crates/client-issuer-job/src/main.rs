//! `client-issuer-job`: the NAS client-certificate CA. Run without arguments (the CronJob), it
//! converges on the declared clients file; `issue <name> <email>` issues one client as the
//! previous scripts' `generate_client_cert` did; `report` prints every client with its expiry;
//! `plan` prints what a converge would do.
#![forbid(unsafe_code)]

mod clients_file;
mod config;
mod issuer;
mod report;

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};
use job_support::SecretStore;
use job_support::cli::{Output, OutputArg, block_on, main_with};
use job_support::config::ConfigError;
use job_support::exit::{Classified, Failure};
use job_support::metrics::{RunMetrics, RunOutcome};
use job_support::plan::{Change, Plan};
use job_support::store::plan::PlanStore;
use pki_core::time::OffsetDateTime;
use tracing::info;

use crate::clients_file::{
    ClientsFile, DeclaredClient, VALIDITY_DAYS, parse_clients_file, valid_name,
};
use crate::config::Config;
use crate::issuer::{ClientAction, Issuer, RunSummary};

/// The NAS client-certificate CA for HAProxy mTLS: issues, renews and revokes per-user
/// certificates (PKCS#12 with a random password, in Vault KV), keeps the CRL and the trust
/// bundle HAProxy reads, and reports expiry.
///
/// A user fetches their bundle with their own Vault token:
///     vault kv get -field=p12 secret/pki/clients/<name> | base64 -d > <name>.p12
///     vault kv get -field=password secret/pki/clients/<name>
#[derive(Debug, Parser)]
#[command(version, verbatim_doc_comment, after_help = variables_help())]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Converge on `CLIENTS_FILE`: issue, renew and revoke, sign the CRL (the default, as the
    /// CronJob runs)
    #[command(after_help = variables_help())]
    Converge,
    /// Read everything and print what `converge` would issue, renew, revoke and write, without
    /// writing; exits 10 when changes are pending, 0 when there are none
    #[command(after_help = variables_help())]
    Plan(OutputArg),
    /// Issue one client now (it is not revoked while absent from the clients file)
    #[command(after_help = variables_help())]
    Issue(IssueArgs),
    /// Print every stored client, its expiry and status, the CA and the CRL
    #[command(after_help = variables_help())]
    Report(OutputArg),
    /// Converge, re-issuing these clients' unusable entries (a garbled or unopenable PKCS#12)
    #[command(after_help = variables_help())]
    Repair {
        /// The clients to re-issue
        #[arg(required = true, value_parser = client_name)]
        names: Vec<String>,
    },
}

#[derive(Debug, Args)]
struct IssueArgs {
    /// The client name (lowercase letters, digits and '-')
    #[arg(value_parser = client_name)]
    name: String,
    /// The address in the certificate (user@domain.tld)
    #[arg(value_parser = email)]
    email: String,
    /// The PKCS#12 encryption: modern (AES-256, PBKDF2) or legacy (3DES, for old macOS and
    /// Android)
    #[arg(long, default_value = "modern", value_parser = profile)]
    profile: pki_core::Pkcs12Profile,
    /// Validity in days [default: `CLIENT_VALIDITY_DAYS`]
    #[arg(long, value_parser = validity_days)]
    validity_days: Option<u32>,
}

fn client_name(value: &str) -> Result<String, String> {
    if valid_name(value) {
        Ok(value.to_owned())
    } else {
        Err("not a client name (lowercase letters, digits and '-')".into())
    }
}

fn email(value: &str) -> Result<String, String> {
    if pki_core::valid_email(value) {
        Ok(value.to_owned())
    } else {
        Err("not an address of the form user@domain.tld".into())
    }
}

fn profile(value: &str) -> Result<pki_core::Pkcs12Profile, String> {
    value
        .parse()
        .map_err(|_| "not one of modern, legacy".to_owned())
}

fn validity_days(value: &str) -> Result<u32, String> {
    value
        .parse::<u32>()
        .ok()
        .filter(|d| VALIDITY_DAYS.contains(d))
        .ok_or_else(|| {
            format!(
                "not a number from {} to {}",
                VALIDITY_DAYS.start(),
                VALIDITY_DAYS.end()
            )
        })
}

fn main() -> ExitCode {
    let command = Cli::parse().command.unwrap_or(Command::Converge);
    main_with(
        matches!(command, Command::Plan(_)),
        || Config::from_vars(std::env::vars().collect()),
        |config| &config.store,
        |config| block_on(run(config, command)),
    )
}

async fn run(config: &Config, command: Command) -> Result<ExitCode> {
    let result = execute(config, command).await;
    // `report` and `plan` only print: they have no run to report.
    let outcome = match &result {
        Ok(Done::Printed(_)) => None,
        Ok(Done::Ran(summary)) => Some(RunOutcome::Finished {
            values: report::metrics(summary),
            success: summary.attention.is_empty(),
        }),
        Err(_) => Some(RunOutcome::Failed(RunMetrics::default())),
    };
    if let (Some(gateway), Some(outcome)) = (&config.pushgateway, outcome) {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        gateway.report_run("client_issuer", outcome, now).await;
    }
    match result? {
        Done::Printed(code) => Ok(code),
        Done::Ran(summary) if !summary.attention.is_empty() => Err(Classified {
            failure: Failure::Attention,
            message: format!(
                "{} client entries were left alone and need an operator: {}",
                summary.attention.len(),
                summary
                    .attention
                    .iter()
                    .map(|a| format!("'{}' ({})", a.name, a.problem))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }
        .into()),
        Done::Ran(_) => Ok(ExitCode::SUCCESS),
    }
}

/// How a command ended.
enum Done {
    /// A run that wrote (or verified) the state, for the log and the metrics.
    Ran(RunSummary),
    /// `report` or `plan`: printed, with this exit code.
    Printed(ExitCode),
}

async fn execute(config: &Config, command: Command) -> Result<Done> {
    // The clients file is validated before anything touches the store.
    let declared = match command {
        Command::Converge | Command::Plan(_) | Command::Repair { .. } => {
            Some(read_clients_file(config)?)
        }
        Command::Issue(_) | Command::Report(_) => None,
    };
    let store = config.store.open().await?;
    let now = OffsetDateTime::now_utc();
    let (clients, allow_revoke_all) = declared
        .map(|file| (file.clients, file.allow_revoke_all))
        .unwrap_or_default();
    let summary = match command {
        Command::Converge => {
            Issuer::new(&store, &config.pki, now)
                .allowing_mass_revocation(allow_revoke_all)
                .converge(&clients)
                .await?
        }
        Command::Plan(OutputArg { output }) => {
            let dry = PlanStore::new(&store);
            let summary = Issuer::new(&dry, &config.pki, now)
                .allowing_mass_revocation(allow_revoke_all)
                .converge(&clients)
                .await?;
            let plan = plan(&summary, dry.describe(), dry.changes());
            print!("{}", plan.render(output));
            return Ok(Done::Printed(plan.exit_code()));
        }
        Command::Repair { names } => {
            Issuer::new(&store, &config.pki, now)
                .allowing_mass_revocation(allow_revoke_all)
                .repairing(names)
                .converge(&clients)
                .await?
        }
        Command::Issue(args) => {
            let client = DeclaredClient {
                name: args.name,
                email: args.email,
                profile: args.profile,
                validity_days: args.validity_days,
                revoked: false,
                revocation_reason: pki_core::RevocationReason::Unspecified,
            };
            Issuer::new(&store, &config.pki, now)
                .summarising_others(config.pushgateway.is_some())
                .issue_one(&client)
                .await?
        }
        Command::Report(OutputArg { output }) => {
            let inventory = Issuer::new(&store, &config.pki, now).inventory().await?;
            match output {
                Output::Table => print!("{}", report::table(&inventory, now)),
                Output::Json => println!("{}", report::json(&inventory, now)),
            }
            return Ok(Done::Printed(ExitCode::SUCCESS));
        }
    };
    let expiring = summary
        .clients
        .iter()
        .filter(|c| !c.revoked && (c.not_after - now).whole_days() < 30)
        .count();
    let message = if summary.writes() == 0 {
        "client PKI verified; nothing to do"
    } else {
        "client PKI converged"
    };
    info!(
        store = %store.describe(),
        clients = summary.clients.len(),
        issued = summary.count(ClientAction::Issued),
        renewed = summary.count(ClientAction::Renewed),
        revoked = summary.count(ClientAction::Revoked),
        adopted = summary.count(ClientAction::Adopted),
        migrated = summary.count(ClientAction::Migrated),
        previous_scripts = summary.count(ClientAction::Previous),
        needing_attention = summary.attention.len(),
        expiring_within_30_days = expiring,
        crl_signed = summary.crl_signed,
        crl_next_update = %issuer::rfc3339(summary.crl_next_update),
        ca_created = summary.ca_created,
        writes = summary.writes(),
        "{message}"
    );
    Ok(Done::Ran(summary))
}

/// What a converge over the recording store did, as a plan.
fn plan(
    summary: &RunSummary,
    against: String,
    writes: Vec<job_support::store::plan::StoreChange>,
) -> Plan {
    let mut changes = Vec::new();
    if summary.ca_created {
        changes.push(Change::new(
            "create",
            "client CA",
            format!("new CA, until {}", issuer::rfc3339(summary.ca_not_after)),
        ));
    }
    for client in &summary.clients {
        let action = match client.action {
            ClientAction::Issued => "issue",
            ClientAction::Renewed => "renew",
            ClientAction::Revoked => "revoke",
            ClientAction::Migrated => "migrate",
            ClientAction::Adopted => "adopt",
            ClientAction::Kept
            | ClientAction::StillRevoked
            | ClientAction::Previous
            | ClientAction::Unusable => continue,
        };
        let detail = if client.revoked {
            format!("serial {}", client.serial)
        } else {
            format!("until {}", issuer::rfc3339(client.not_after))
        };
        changes.push(Change::new(
            action,
            format!("client {}", client.name),
            detail,
        ));
    }
    if summary.crl_signed {
        changes.push(Change::new(
            "sign",
            "CRL",
            format!("next update {}", issuer::rfc3339(summary.crl_next_update)),
        ));
    }
    if summary.bundle_written {
        changes.push(Change::new(
            "write",
            "trust bundle",
            "the CA certificates and CRLs HAProxy reads",
        ));
    }
    let attention = summary
        .attention
        .iter()
        .map(|a| Change::new("unusable", format!("client {}", a.name), &a.problem))
        .collect();
    Plan::new("client-issuer-job", against, changes, writes).with_attention(attention)
}

fn read_clients_file(config: &Config) -> Result<ClientsFile> {
    let path = &config.clients_file;
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => bail!(ConfigError::new(
            "CLIENTS_FILE",
            format!("cannot read {}: {e}", path.display())
        )),
    };
    parse_clients_file(&text).map_err(|problems| {
        ConfigError::new(
            "CLIENTS_FILE",
            format!(
                "{} is invalid; nothing was written:\n  {}",
                path.display(),
                problems.join("\n  ")
            ),
        )
        .into()
    })
}

fn variables_help() -> String {
    job_support::cli::variables_help(config::VARIABLES_HELP, "client-issuer")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(words: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("client-issuer-job").chain(words.iter().copied()))
    }

    #[test]
    fn commands_parse() {
        Cli::command().debug_assert();
        assert!(parse(&[]).unwrap().command.is_none());
        let Some(Command::Issue(issue)) = parse(&[
            "issue",
            "alice",
            "alice@example.com",
            "--profile",
            "legacy",
            "--validity-days",
            "30",
        ])
        .unwrap()
        .command
        else {
            panic!("not an issue command");
        };
        assert_eq!(
            (issue.profile, issue.validity_days),
            (pki_core::Pkcs12Profile::Legacy, Some(30))
        );
        assert!(matches!(
            parse(&["report", "-o", "json"]).unwrap().command,
            Some(Command::Report(OutputArg {
                output: Output::Json
            }))
        ));
        let Some(Command::Repair { names }) = parse(&["repair", "a", "b"]).unwrap().command else {
            panic!("not a repair command");
        };
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn mistakes_are_usage_errors_naming_the_value() {
        for (words, named) in [
            (&["issue", "Alice", "a@example.com"][..], "Alice"),
            (&["issue", "alice", "not-an-address"], "not-an-address"),
            (
                &["issue", "alice", "a@example.com", "--validity-days", "0"],
                "0",
            ),
            (
                &["issue", "alice", "a@example.com", "--profile", "rc2"],
                "rc2",
            ),
            (&["issue", "alice"], "<EMAIL>"),
            (&["repair"], "<NAMES>"),
            (&["repair", "../x"], "../x"),
            (&["report", "-o", "yaml"], "yaml"),
            (&["revoke", "alice"], "revoke"),
        ] {
            let error = parse(words).unwrap_err();
            assert_eq!(error.exit_code(), Failure::Config as i32, "{words:?}");
            assert!(error.to_string().contains(named), "{words:?}: {error}");
        }
    }

    #[test]
    fn every_subcommand_has_help_without_internal_words() {
        for words in [
            &["--help"][..],
            &["converge", "--help"],
            &["plan", "--help"],
            &["issue", "--help"],
            &["report", "--help"],
            &["repair", "--help"],
        ] {
            let help = parse(words).unwrap_err();
            assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
            let text = help.to_string();
            assert!(text.contains("EXIT CODES:"), "{words:?}: {text}");
            assert!(!text.to_lowercase().contains("seed"), "{words:?}");
        }
    }
}
