//! What nas-sync-job pushes to the Pushgateway: when it last synced, the drift it found (a
//! Secret created or restored), and the mappings it refused. A run with a refused mapping
//! updates only these counts and the run gauges (see `job_support::metrics`).

use job_support::metrics::{Labels, RunMetrics, RunOutcome, label};

use crate::sync::{SyncAction, SyncRun};

/// The name prefix of every gauge of this job.
pub const PREFIX: &str = "nas_sync";

/// The outcome of a run, as gauges.
#[must_use]
pub fn outcome(run: &SyncRun) -> RunOutcome {
    let count = |action: fn(&SyncAction) -> bool| {
        i64::try_from(run.outcomes.iter().filter(|o| action(&o.action)).count()).unwrap_or(i64::MAX)
    };
    let mut m = RunMetrics::default();
    m.single(
        &format!("{PREFIX}_last_run_drift_found"),
        "Secrets the last run found missing or different from Vault, and wrote",
        count(|a| a != &SyncAction::Unchanged),
    );
    m.single(
        &format!("{PREFIX}_last_run_refused"),
        "Mappings the last run refused (invalid bundle) or could not apply; their Secrets were left as they were",
        i64::try_from(run.failures.len()).unwrap_or(i64::MAX),
    );
    if !run.failures.is_empty() {
        return RunOutcome::Failed(m);
    }
    let secrets: Vec<(Labels, i64)> = [
        ("unchanged", count(|a| a == &SyncAction::Unchanged)),
        ("created", count(|a| a == &SyncAction::Created)),
        ("restored", count(|a| matches!(a, SyncAction::Restored(_)))),
    ]
    .into_iter()
    .map(|(action, n)| (vec![label("action", action)], n))
    .collect();
    m.gauge(
        &format!("{PREFIX}_last_run_secrets"),
        "Secrets by what the last successful run did to them",
        secrets,
    );
    RunOutcome::Finished {
        values: m,
        success: true,
    }
}
