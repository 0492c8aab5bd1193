//! What operators and Prometheus see: a one-line summary per run, a table on request, and
//! run metrics pushed to a Pushgateway (expiry timestamps, CRL next update, counts, success).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result};
use pki_core::time::OffsetDateTime;

use crate::issuer::{ClientAction, Inventory, RunSummary, rfc3339};

/// The `report` table: one line per client, the entries that need an operator, then the CA
/// and CRL.
#[must_use]
pub fn table(inventory: &Inventory, now: OffsetDateTime) -> String {
    let Inventory {
        ca,
        clients,
        attention,
        crl,
    } = inventory;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<32} {:<34} {:<20} {:>9} {:<8} {:<7}",
        "CLIENT", "EMAIL", "SERIAL", "NOT AFTER", "DAYS LEFT", "STATUS", "PROFILE"
    );
    for c in clients {
        let days = (c.not_after - now).whole_days();
        let status = if c.revoked {
            "revoked"
        } else if days < 0 {
            "expired"
        } else if c.action == ClientAction::Unusable {
            "unusable"
        } else {
            "active"
        };
        let profile = c.profile.map_or("previous", |p| p.name());
        let email = if c.email.is_empty() { "-" } else { &c.email };
        let _ = writeln!(
            out,
            "{:<24} {:<32} {:<34} {:<20} {:>9} {:<8} {:<7}",
            c.name,
            email,
            c.serial,
            rfc3339(c.not_after),
            days,
            status,
            profile
        );
    }
    if !attention.is_empty() {
        let _ = writeln!(out, "\nentries left alone, to look at:");
        for a in attention {
            let _ = writeln!(out, "  {}: {}", a.name, a.problem);
        }
    }
    match ca {
        Some(ca) => {
            let _ = writeln!(
                out,
                "\nclient CA: {} (fingerprint {}), expires {} ({} days)",
                ca.info().subject,
                ca.info().fingerprint_sha256,
                rfc3339(ca.info().not_after),
                ca.info().days_left(now)
            );
        }
        None => out.push_str("\nclient CA: not created yet\n"),
    }
    if let Some(crl) = crl {
        let info = crl.info();
        let _ = writeln!(
            out,
            "CRL: number {}, {} revoked, next update {}",
            info.crl_number.unwrap_or_default(),
            info.revoked.len(),
            info.next_update.map_or_else(|| "none".into(), rfc3339)
        );
    }
    out
}

/// Prometheus text exposition of a run.
#[must_use]
pub fn metrics(summary: Option<&RunSummary>, success: bool, now: OffsetDateTime) -> String {
    let mut out = String::new();
    // Timestamps and counts are whole numbers; the exposition format takes them as written.
    let mut gauge = |name: &str, help: &str, samples: &[(String, i64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    gauge(
        "client_issuer_last_run_success",
        "1 if the last run converged, 0 if it failed.",
        &[(String::new(), i64::from(success))],
    );
    gauge(
        "client_issuer_last_run_timestamp_seconds",
        "When the last run finished.",
        &[(String::new(), now.unix_timestamp())],
    );
    let Some(summary) = summary else { return out };
    let clients: Vec<(String, i64)> = summary
        .clients
        .iter()
        .map(|c| {
            (
                format!(
                    "{{client=\"{}\",status=\"{}\"}}",
                    c.name,
                    match c.action {
                        _ if c.revoked => "revoked",
                        ClientAction::Previous => "previous",
                        _ => "active",
                    }
                ),
                c.not_after.unix_timestamp(),
            )
        })
        .collect();
    let problems: Vec<(String, i64)> = summary
        .attention
        .iter()
        .map(|a| (format!("{{client=\"{}\"}}", a.name), 1))
        .collect();
    gauge(
        "client_issuer_client_entry_needs_attention",
        "1 for each client entry the last run left alone because it cannot be used; the job's log and report say why.",
        &problems,
    );
    gauge(
        "client_issuer_client_cert_expiry_timestamp_seconds",
        "notAfter of each client certificate.",
        &clients,
    );
    gauge(
        "client_issuer_ca_expiry_timestamp_seconds",
        "notAfter of the client CA.",
        &[(String::new(), summary.ca_not_after.unix_timestamp())],
    );
    gauge(
        "client_issuer_crl_next_update_timestamp_seconds",
        "nextUpdate of the CRL HAProxy reads; HAProxy refuses every client after it.",
        &[(String::new(), summary.crl_next_update.unix_timestamp())],
    );
    let counts: Vec<(String, i64)> = [
        ("issued", ClientAction::Issued),
        ("renewed", ClientAction::Renewed),
        ("revoked", ClientAction::Revoked),
        ("kept", ClientAction::Kept),
        ("adopted", ClientAction::Adopted),
        ("migrated", ClientAction::Migrated),
        ("previous", ClientAction::Previous),
        ("unusable", ClientAction::Unusable),
    ]
    .into_iter()
    .map(|(label, action)| {
        (
            format!("{{action=\"{label}\"}}"),
            i64::try_from(summary.count(action)).unwrap_or(i64::MAX),
        )
    })
    .collect();
    gauge(
        "client_issuer_last_run_clients",
        "Clients by what the last run did to them.",
        &counts,
    );
    out
}

/// PUTs the metrics to `{url}/metrics/job/{job}`, replacing the previous push.
pub async fn push(url: &str, job: &str, body: String) -> Result<()> {
    job_support::store::vault::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let target = format!("{url}/metrics/job/{job}");
    let response = client
        .put(&target)
        .header("Content-Type", "text/plain; version=0.0.4")
        .body(body)
        .send()
        .await
        .with_context(|| format!("failed to push metrics to '{target}'"))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        anyhow::bail!(
            "failed to push metrics to '{target}': {status}: {}",
            text.trim()
        );
    }
    Ok(())
}
