//! `client-issuer-job`: the NAS client-certificate CA. Run without arguments (the CronJob), it
//! converges on the declared clients file; `issue <name> <email>` issues one client as the
//! seed's `generate_client_cert` did; `report` prints every client with its expiry.
#![forbid(unsafe_code)]

mod clients_file;
mod config;
mod issuer;
mod report;

use std::process::ExitCode;

use anyhow::{Result, bail};
use job_support::config::ConfigError;
use job_support::exit::{Classified, Failure, report as report_error};
use job_support::metrics::{RunMetrics, RunOutcome};
use job_support::{SecretStore, logging};
use pki_core::time::OffsetDateTime;
use tracing::info;

use crate::clients_file::{
    ClientsFile, DeclaredClient, VALIDITY_DAYS, parse_clients_file, valid_name,
};
use crate::config::Config;
use crate::issuer::{ClientAction, Issuer, RunSummary};

/// The command line, after the first stage of parsing.
enum Command {
    Converge,
    /// Converge, re-issuing these clients' unusable entries.
    Repair(Vec<String>),
    Issue(DeclaredClient),
    Report,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(
        args.first().map(String::as_str),
        Some("-h" | "--help" | "help")
    ) {
        println!("{}", help());
        return ExitCode::SUCCESS;
    }
    if matches!(args.first().map(String::as_str), Some("-V" | "--version")) {
        println!("client-issuer-job {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let prepared = parse_args(&args)
        .and_then(|command| Ok((command, Config::from_vars(std::env::vars().collect())?)));
    let (command, config) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            logging::init(logging::LogFormat::Auto, None);
            return report_error(&e.into());
        }
    };
    logging::init(config.store.log_format, config.store.log_filter.as_deref());
    match run(&config, command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report_error(&e),
    }
}

fn parse_args(args: &[String]) -> Result<Command, ConfigError> {
    let usage = |problem: String| ConfigError::new("arguments", format!("{problem} (see --help)"));
    match args.first().map(String::as_str) {
        None | Some("converge") => Ok(Command::Converge),
        Some("report") => Ok(Command::Report),
        Some("repair") => {
            let names: Vec<String> = args[1..].to_vec();
            if names.is_empty() {
                return Err(usage("repair takes one or more client names".into()));
            }
            if let Some(bad) = names.iter().find(|n| !valid_name(n)) {
                return Err(usage(format!("'{bad}' is not a client name")));
            }
            Ok(Command::Repair(names))
        }
        Some("issue") => {
            let mut positional = Vec::new();
            let mut profile = pki_core::Pkcs12Profile::Modern;
            let mut validity_days = None;
            let mut rest = args[1..].iter();
            while let Some(arg) = rest.next() {
                match arg.as_str() {
                    "--profile" => {
                        let value = rest
                            .next()
                            .ok_or_else(|| usage("--profile needs a value".into()))?;
                        profile = value.parse().map_err(|_| {
                            usage(format!("--profile '{value}' is not one of modern, legacy"))
                        })?;
                    }
                    "--validity-days" => {
                        let value = rest
                            .next()
                            .ok_or_else(|| usage("--validity-days needs a value".into()))?;
                        validity_days = Some(
                            value
                                .parse::<u32>()
                                .ok()
                                .filter(|d| VALIDITY_DAYS.contains(d))
                                .ok_or_else(|| {
                                    usage(format!(
                                        "--validity-days '{value}' is not a number from {} to {}",
                                        VALIDITY_DAYS.start(),
                                        VALIDITY_DAYS.end()
                                    ))
                                })?,
                        );
                    }
                    other if other.starts_with('-') => {
                        return Err(usage(format!("unknown option '{other}'")));
                    }
                    other => positional.push(other.to_owned()),
                }
            }
            let [name, email] = <[String; 2]>::try_from(positional)
                .map_err(|_| usage("issue takes <name> <email>".into()))?;
            if !valid_name(&name) {
                return Err(usage(format!(
                    "'{name}' is not a client name (lowercase letters, digits and '-')"
                )));
            }
            if !pki_core::valid_email(&email) {
                return Err(usage(format!(
                    "'{email}' is not an address of the form user@domain.tld"
                )));
            }
            Ok(Command::Issue(DeclaredClient {
                name,
                email,
                profile,
                validity_days,
                revoked: false,
                revocation_reason: pki_core::RevocationReason::Unspecified,
            }))
        }
        Some(other) => Err(usage(format!("unknown command '{other}'"))),
    }
}

fn run(config: &Config, command: Command) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let result = execute(config, command).await;
        // `report` only prints: it has no run to report.
        let outcome = match &result {
            Ok(None) => None,
            Ok(Some(summary)) => Some(RunOutcome::Finished {
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
            Some(summary) if !summary.attention.is_empty() => Err(Classified {
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
            _ => Ok(()),
        }
    })
}

async fn execute(config: &Config, command: Command) -> Result<Option<RunSummary>> {
    // The clients file is validated before anything touches the store.
    let declared = match command {
        Command::Converge | Command::Repair(_) => Some(read_clients_file(config)?),
        _ => None,
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
        Command::Repair(names) => {
            Issuer::new(&store, &config.pki, now)
                .allowing_mass_revocation(allow_revoke_all)
                .repairing(names)
                .converge(&clients)
                .await?
        }
        Command::Issue(client) => {
            Issuer::new(&store, &config.pki, now)
                .summarising_others(config.pushgateway.is_some())
                .issue_one(&client)
                .await?
        }
        Command::Report => {
            let inventory = Issuer::new(&store, &config.pki, now).inventory().await?;
            print!("{}", report::table(&inventory, now));
            return Ok(None);
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
    Ok(Some(summary))
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

fn help() -> String {
    format!(
        "client-issuer-job {}\n\
         The NAS client-certificate CA for HAProxy mTLS: issues, renews and revokes per-user\n\
         certificates (PKCS#12 with a random password, in Vault KV), keeps the CRL and the trust\n\
         bundle HAProxy reads, and reports expiry.\n\n\
         USAGE:\n\
         \x20   client-issuer-job                      converge on CLIENTS_FILE (the CronJob)\n\
         \x20   client-issuer-job issue <name> <email> [--profile modern|legacy] [--validity-days N]\n\
         \x20                                          issue one client (not revoked when absent from the file)\n\
         \x20   client-issuer-job report               print every client, its expiry and status\n\
         \x20   client-issuer-job repair <name>...     converge, re-issuing these clients' unusable entries\n\n\
         A user fetches their bundle as in the seed:\n\
         \x20   vault kv get -field=p12 secret/pki/clients/<name> | base64 -d > <name>.p12\n\
         \x20   vault kv get -field=password secret/pki/clients/<name>\n\n\
         {}\n\n{}\n\n{}\n\n{}",
        env!("CARGO_PKG_VERSION"),
        config::VARIABLES_HELP,
        job_support::metrics::variables_help("client-issuer"),
        job_support::config::STORE_VARIABLES_HELP,
        Failure::TABLE
    )
}
