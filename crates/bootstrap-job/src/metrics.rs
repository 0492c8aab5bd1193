//! What bootstrap-job pushes to the Pushgateway: the expiry of the root and of each cluster's
//! intermediate, and when a run last succeeded (see `job_support::metrics` for how a failed
//! run keeps the last good values).

use anyhow::Result;
use job_support::metrics::{RunMetrics, RunOutcome, label};
use pki_core::time::OffsetDateTime;

use crate::config::Config;
use crate::converge::Outcome;

/// The name prefix of every gauge of this job.
pub const PREFIX: &str = "istio_ca_bootstrap";

/// The gauges of a finished run. The outcome counts whole days left, so each expiry is
/// `now` plus those days: up to a day early, never late.
#[must_use]
pub fn metrics(outcome: &Outcome, now: OffsetDateTime) -> RunMetrics {
    let at = |days: i64| now.unix_timestamp() + days * 86_400;
    let mut m = RunMetrics::default();
    m.single(
        &format!("{PREFIX}_root_expiry_timestamp_seconds"),
        "notAfter of the shared Istio root CA (to the day, rounded down)",
        at(outcome.root_days_left),
    );
    m.gauge(
        &format!("{PREFIX}_intermediate_expiry_timestamp_seconds"),
        "notAfter of each cluster's Istio intermediate CA (to the day, rounded down)",
        outcome
            .clusters
            .iter()
            .map(|c| (vec![label("cluster", &c.cluster)], at(c.days_left))),
    );
    m.single(
        &format!("{PREFIX}_last_run_writes"),
        "Objects the last successful run wrote (0 when everything was in place)",
        i64::try_from(outcome.writes()).unwrap_or(i64::MAX),
    );
    m
}

/// Pushes the outcome of `run` when a Pushgateway is configured, and passes the result on.
pub async fn reported(config: &Config, result: Result<Outcome>) -> Result<()> {
    if let Some(gateway) = &config.pushgateway {
        let now = OffsetDateTime::now_utc();
        let outcome = match &result {
            Ok(outcome) => RunOutcome::Finished {
                values: metrics(outcome, now),
                success: true,
            },
            Err(_) => RunOutcome::Failed(RunMetrics::default()),
        };
        gateway
            .report_run(PREFIX, outcome, now.unix_timestamp())
            .await;
    }
    result.map(|_| ())
}
