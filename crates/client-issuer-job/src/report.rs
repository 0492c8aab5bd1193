//! What operators and Prometheus see: a one-line summary per run, a table on request, and
//! the gauges of a run for the Pushgateway (expiry timestamps, CRL next update, counts).

use std::fmt::Write as _;

use job_support::metrics::{RunMetrics, label};
use pki_core::time::OffsetDateTime;

use crate::issuer::{ClientAction, ClientStatus, Inventory, RunSummary, rfc3339};

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
        let status = status(c, days);
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

/// A client's status in the report.
fn status(client: &ClientStatus, days_left: i64) -> &'static str {
    if client.revoked {
        "revoked"
    } else if days_left < 0 {
        "expired"
    } else if client.action == ClientAction::Unusable {
        "unusable"
    } else {
        "active"
    }
}

/// The `report -o json` document: the same facts as the table, for scripts.
#[must_use]
pub fn json(inventory: &Inventory, now: OffsetDateTime) -> String {
    let clients: Vec<serde_json::Value> = inventory
        .clients
        .iter()
        .map(|c| {
            let days = (c.not_after - now).whole_days();
            serde_json::json!({
                "name": c.name,
                "email": c.email,
                "serial": c.serial,
                "not_after": rfc3339(c.not_after),
                "days_left": days,
                "status": status(c, days),
                "profile": c.profile.map_or("previous", |p| p.name()),
            })
        })
        .collect();
    let attention: Vec<serde_json::Value> = inventory
        .attention
        .iter()
        .map(|a| serde_json::json!({ "name": a.name, "problem": a.problem }))
        .collect();
    let ca = inventory.ca.as_ref().map(|ca| {
        serde_json::json!({
            "subject": ca.info().subject,
            "fingerprint_sha256": ca.info().fingerprint_sha256,
            "not_after": rfc3339(ca.info().not_after),
            "days_left": ca.info().days_left(now),
        })
    });
    let crl = inventory.crl.as_ref().map(|crl| {
        let info = crl.info();
        serde_json::json!({
            "crl_number": info.crl_number.unwrap_or_default(),
            "revoked": info.revoked.len(),
            "next_update": info.next_update.map(rfc3339),
        })
    });
    let document = serde_json::json!({
        "clients": clients,
        "attention": attention,
        "ca": ca,
        "crl": crl,
    });
    serde_json::to_string_pretty(&document).unwrap_or_default()
}

/// The gauges of a run that finished its work; [`job_support::metrics`] adds the run gauges
/// and pushes them.
#[must_use]
pub fn metrics(summary: &RunSummary) -> RunMetrics {
    let mut m = RunMetrics::default();
    let clients = summary.clients.iter().map(|c| {
        let status = match c.action {
            _ if c.revoked => "revoked",
            ClientAction::Previous => "previous",
            _ => "active",
        };
        (
            vec![label("client", &c.name), label("status", status)],
            c.not_after.unix_timestamp(),
        )
    });
    let problems = summary
        .attention
        .iter()
        .map(|a| (vec![label("client", &a.name)], 1));
    m.gauge(
        "client_issuer_client_entry_needs_attention",
        "1 for each client entry the last run left alone because it cannot be used; the job's log and report say why",
        problems,
    );
    m.gauge(
        "client_issuer_client_cert_expiry_timestamp_seconds",
        "notAfter of each client certificate",
        clients,
    );
    m.single(
        "client_issuer_ca_expiry_timestamp_seconds",
        "notAfter of the client CA",
        summary.ca_not_after.unix_timestamp(),
    );
    m.single(
        "client_issuer_crl_next_update_timestamp_seconds",
        "nextUpdate of the CRL HAProxy reads; HAProxy refuses every client after it",
        summary.crl_next_update.unix_timestamp(),
    );
    let counts = [
        ("issued", ClientAction::Issued),
        ("renewed", ClientAction::Renewed),
        ("revoked", ClientAction::Revoked),
        ("kept", ClientAction::Kept),
        ("adopted", ClientAction::Adopted),
        ("migrated", ClientAction::Migrated),
        ("previous", ClientAction::Previous),
        ("unusable", ClientAction::Unusable),
    ]
    .map(|(name, action)| {
        (
            vec![label("action", name)],
            i64::try_from(summary.count(action)).unwrap_or(i64::MAX),
        )
    });
    m.gauge(
        "client_issuer_last_run_clients",
        "Clients by what the last run did to them",
        counts,
    );
    m
}
