//! Run metrics, pushed to a Prometheus Pushgateway the same way by every job, so that the
//! alerts can tell a job that failed from one that stopped running, and a failed run never
//! hides the values of the last good one.
//!
//! The Pushgateway keeps one group of metrics per grouping key (here `job=<PUSHGATEWAY_JOB>`).
//! Its README (prometheus/pushgateway, "PUT method" and "POST method") defines the two
//! methods used here: PUT replaces every metric of the group; POST "works exactly like the
//! PUT method but only metrics with the same name as the newly pushed metrics are replaced".
//! The Pushgateway adds `push_time_seconds` (last successful push) and
//! `push_failure_time_seconds` to each group by itself.
//!
//! So a run that finished its work pushes everything with PUT: series of things that no
//! longer exist (a removed client) disappear. A failed run pushes only
//! `<prefix>_last_run_success` and `<prefix>_last_run_timestamp_seconds` with POST: the
//! expiry gauges and `<prefix>_last_success_timestamp_seconds` of the last good run stay,
//! and keep the expiry alerts armed.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;

use crate::vars::{ConfigError, non_blank, raw_from_vars};

/// The HTTP client of the pushes, built once per process and kind. reqwest's default
/// verifier (rustls-platform-verifier) loads the whole system certificate store when the
/// client is built (`Verifier::new` in its `verification/others.rs`, through
/// `rustls_native_certs::load_native_certs`), so a plain-HTTP Pushgateway gets a client
/// without any roots (`tls_certs_only` with none, as vaultrs does for `http://` Vault
/// addresses), and only an HTTPS one pays for the store, once.
fn push_client(https: bool) -> anyhow::Result<&'static reqwest::Client> {
    static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    static HTTPS: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let cell = if https { &HTTPS } else { &HTTP };
    if let Some(client) = cell.get() {
        return Ok(client);
    }
    crate::store::vault::install_crypto_provider();
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
    if !https {
        builder = builder.tls_certs_only(Vec::new());
    }
    let client = builder.build()?;
    Ok(cell.get_or_init(|| client))
}

/// The variables of the Pushgateway, for each job's `--help` (`{job}` is the default job
/// label).
#[must_use]
pub fn variables_help(default_job: &str) -> String {
    format!(
        "METRICS:
    PUSHGATEWAY_URL          push run metrics to this Prometheus Pushgateway, e.g. http://pushgateway:9091
    PUSHGATEWAY_JOB          job label of the pushed metrics  [{default_job}]"
    )
}

#[derive(Debug, Default, Deserialize)]
struct RawPushConfig {
    pushgateway_url: Option<String>,
    pushgateway_job: Option<String>,
}

/// Where run metrics go: a Pushgateway and the job label of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushgateway {
    /// Base URL, without a trailing slash.
    pub url: String,
    /// The `job` grouping label.
    pub job: String,
}

impl Pushgateway {
    /// Reads `PUSHGATEWAY_URL` and `PUSHGATEWAY_JOB`; `None` when no URL is set.
    pub fn from_vars(
        vars: Vec<(String, String)>,
        default_job: &str,
    ) -> Result<Option<Self>, ConfigError> {
        let raw: RawPushConfig = raw_from_vars(vars)?;
        let Some(url) = raw.pushgateway_url else {
            return Ok(None);
        };
        if !url::Url::parse(&url).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
            return Err(ConfigError::new(
                "PUSHGATEWAY_URL",
                format!("'{url}' is not an http(s) URL"),
            ));
        }
        let job = non_blank("PUSHGATEWAY_JOB", raw.pushgateway_job, default_job)?;
        // A '/' would need the Pushgateway's base64 path encoding; no job name needs one.
        if job.contains('/') {
            return Err(ConfigError::new(
                "PUSHGATEWAY_JOB",
                format!("'{job}' must not contain '/'"),
            ));
        }
        Ok(Some(Self {
            url: url.trim_end_matches('/').to_owned(),
            job,
        }))
    }

    /// The URL of this job's group.
    fn group_url(&self) -> Result<url::Url, ConfigError> {
        let mut url = url::Url::parse(&self.url)
            .map_err(|e| ConfigError::new("PUSHGATEWAY_URL", e.to_string()))?;
        url.path_segments_mut()
            .map_err(|()| ConfigError::new("PUSHGATEWAY_URL", "cannot be a base URL"))?
            .pop_if_empty()
            .extend(["metrics", "job", &self.job]);
        Ok(url)
    }

    /// Pushes `metrics` with `method` (PUT replaces the group, POST only the metrics of the
    /// same names).
    pub async fn push(&self, metrics: &RunMetrics, method: PushMethod) -> anyhow::Result<()> {
        let target = self.group_url()?;
        let client = push_client(target.scheme() == "https")?;
        let request = match method {
            PushMethod::Replace => client.put(target.clone()),
            PushMethod::Update => client.post(target.clone()),
        };
        let response = request
            .header("Content-Type", "text/plain; version=0.0.4")
            .body(metrics.encode())
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("failed to push metrics to '{target}': {e}"))?;
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

    /// Pushes the outcome of a run (see [`RunOutcome`]), with the run gauges added. A failed
    /// push is logged as a warning and never fails the run: what the run wrote is written.
    pub async fn report_run(&self, prefix: &str, outcome: RunOutcome, now_unix: i64) {
        let (mut metrics, method, success) = match outcome {
            RunOutcome::Finished { values, success } => (values, PushMethod::Replace, success),
            RunOutcome::Failed(values) => (values, PushMethod::Update, false),
        };
        metrics.single(
            &format!("{prefix}_last_run_success"),
            "1 if the last run succeeded, 0 if it failed or left entries for an operator",
            i64::from(success),
        );
        metrics.single(
            &format!("{prefix}_last_run_timestamp_seconds"),
            "When the last run ended, successful or not",
            now_unix,
        );
        if method == PushMethod::Replace {
            metrics.single(
                &format!("{prefix}_last_success_timestamp_seconds"),
                "When a run last finished its work and refreshed the other gauges of this job",
                now_unix,
            );
        }
        if let Err(e) = self.push(&metrics, method).await {
            tracing::warn!("{e:#}");
        }
    }
}

/// What a run has to report.
#[derive(Debug)]
pub enum RunOutcome {
    /// The run finished its work: these gauges describe the state now, and replace the group
    /// (PUT). `success` is false when it left something for an operator (exit code 8).
    Finished {
        /// The state after the run.
        values: RunMetrics,
        /// Whether nothing was left for an operator.
        success: bool,
    },
    /// The run failed: these gauges (often none) are updated by name (POST); every other
    /// gauge keeps the value of the last finished run.
    Failed(RunMetrics),
}

/// How a push treats the metrics already in the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushMethod {
    /// PUT: the group holds exactly what was pushed.
    Replace,
    /// POST: only the metrics of the same names are replaced.
    Update,
}

/// Label pairs of one sample.
pub type Labels = Vec<(String, String)>;

/// The gauges of one run, in the Prometheus text format.
#[derive(Debug, Default)]
pub struct RunMetrics {
    registry: Registry,
}

impl RunMetrics {
    /// Adds a gauge family with these samples (with none, prometheus-client writes nothing).
    pub fn gauge(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, i64)>,
    ) {
        let family = Family::<Labels, Gauge>::default();
        for (labels, value) in samples {
            family.get_or_create(&labels).set(value);
        }
        // prometheus-client appends the full stop to the help text itself.
        self.registry
            .register(name, help.trim_end_matches('.'), family);
    }

    /// Adds a gauge with one unlabelled sample.
    pub fn single(&mut self, name: &str, help: &str, value: i64) {
        self.gauge(name, help, [(Labels::new(), value)]);
    }

    /// The text exposition (`OpenMetrics` text, which the Pushgateway's text parser reads: the
    /// `# EOF` line is a comment to it).
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// One label pair, for building [`Labels`].
#[must_use]
pub fn label(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_owned(), value.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vars::test_vars as vars;

    #[test]
    fn gauges_encode_with_labels_and_help() {
        let mut m = RunMetrics::default();
        m.gauge(
            "x_expiry_timestamp_seconds",
            "notAfter.",
            [(vec![label("client", "alice")], 42)],
        );
        m.gauge("x_empty", "Nothing", []);
        m.single("x_one", "One", 1);
        let text = m.encode();
        assert!(
            text.contains("# HELP x_expiry_timestamp_seconds notAfter.\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE x_expiry_timestamp_seconds gauge\n"));
        assert!(text.contains("x_expiry_timestamp_seconds{client=\"alice\"} 42\n"));
        assert!(!text.contains("x_empty"), "{text}");
        assert!(text.contains("\nx_one 1\n"), "{text}");
    }

    #[test]
    fn configuration_is_validated_by_name() {
        assert_eq!(Pushgateway::from_vars(vars(&[]), "j").unwrap(), None);
        let p = Pushgateway::from_vars(vars(&[("PUSHGATEWAY_URL", "http://pg:9091/")]), "j")
            .unwrap()
            .unwrap();
        assert_eq!((p.url.as_str(), p.job.as_str()), ("http://pg:9091", "j"));
        assert_eq!(
            p.group_url().unwrap().as_str(),
            "http://pg:9091/metrics/job/j"
        );
        let bad = Pushgateway::from_vars(vars(&[("PUSHGATEWAY_URL", "pg:9091")]), "j");
        assert_eq!(
            bad.unwrap_err().to_string(),
            ConfigError::new("PUSHGATEWAY_URL", "'pg:9091' is not an http(s) URL").to_string()
        );
        let slash = Pushgateway::from_vars(
            vars(&[("PUSHGATEWAY_URL", "http://pg"), ("PUSHGATEWAY_JOB", "a/b")]),
            "j",
        );
        assert!(slash.unwrap_err().to_string().contains("PUSHGATEWAY_JOB"));
    }
}
