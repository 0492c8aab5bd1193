//! What the jobs push to a real Pushgateway: each job's expiry and run gauges, a failed run
//! that keeps the last good values, and every series the alert rules and dashboards query
//! is one a job pushes.

use std::collections::BTreeSet;

use pki_core::time::OffsetDateTime;

use crate::support::jobs::{JobRun, run_job};
use crate::support::kube_api::FakeApiServer;
use crate::support::openbao::{OpenBao, ROOT_TOKEN};
use crate::support::pushgateway::Pushgateway;
use crate::support::tools::Scratch;

fn refs(vars: &[(String, String)]) -> Vec<(&str, &str)> {
    vars.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

#[track_caller]
fn assert_exit(run: &JobRun, code: i32) {
    assert_eq!(run.code, code, "exit code; stderr:\n{}", run.stderr);
}

/// The series of `job`'s group whose values a failed run must keep: all but the run gauges
/// and the Pushgateway's own.
fn kept_values(gateway: &Pushgateway, job: &str) -> Vec<String> {
    gateway
        .group(job)
        .into_iter()
        .filter(|l| !l.contains("_last_run_success") && !l.contains("_last_run_timestamp"))
        .filter(|l| !l.starts_with("push_") && !l.contains("_last_run_refused"))
        .collect()
}

/// The three jobs against one Pushgateway, as the metrics of both clusters; returns the
/// scrape after every push.
#[allow(clippy::too_many_lines)] // One scenario, in the order an operator would see it.
fn run_every_job(gateway: &Pushgateway) -> String {
    let bao = OpenBao::start();
    let dir = Scratch::new();
    let base = [
        ("VAULT_ADDR", bao.addr.as_str()),
        ("VAULT_TOKEN", ROOT_TOKEN),
    ];
    let with = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut vars = base.to_vec();
        vars.push(("PUSHGATEWAY_URL", &gateway.url));
        vars.push(("VAULT_MAX_ATTEMPTS", "1"));
        vars.extend_from_slice(extra);
        vars.into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    };

    // bootstrap-job: the root and each intermediate, to the day.
    let now = OffsetDateTime::now_utc().unix_timestamp();
    assert_exit(&run_job("bootstrap-job", &refs(&with(&[])), dir.path()), 0);
    let job = "istio-ca-bootstrap";
    let root = gateway
        .value(
            job,
            "istio_ca_bootstrap_root_expiry_timestamp_seconds{instance=\"\",job=\"istio-ca-bootstrap\"}",
        )
        .unwrap();
    let root_expiry = now + 3650 * 86_400;
    assert!(
        (root_expiry - 86_400..=root_expiry + 60).contains(&(root as i64)),
        "{root}"
    );
    for cluster in ["homelab", "nas"] {
        let at = gateway
            .value(job, &format!("istio_ca_bootstrap_intermediate_expiry_timestamp_seconds{{cluster=\"{cluster}\",instance=\"\",job=\"istio-ca-bootstrap\"}}"))
            .unwrap_or_else(|| panic!("no expiry of {cluster}: {:?}", gateway.group(job)));
        let expiry = now + 730 * 86_400;
        assert!(
            (expiry - 86_400..=expiry + 60).contains(&(at as i64)),
            "{at}"
        );
    }
    let good = kept_values(gateway, job);
    assert!(
        good.iter()
            .any(|l| l.starts_with("istio_ca_bootstrap_last_success_timestamp_seconds"))
    );
    // A failed run (a token Vault refuses): the values stay, the run gauge says it failed.
    let refused = run_job(
        "bootstrap-job",
        &refs(&with(&[("VAULT_TOKEN", "not-a-token")])),
        dir.path(),
    );
    assert_exit(&refused, 3);
    assert_eq!(kept_values(gateway, job), good);
    assert_eq!(
        gateway.value(
            job,
            "istio_ca_bootstrap_last_run_success{instance=\"\",job=\"istio-ca-bootstrap\"}"
        ),
        Some(0.0)
    );
    assert_exit(&run_job("bootstrap-job", &refs(&with(&[])), dir.path()), 0);

    // nas-sync-job into a fake NAS cluster: the drift it found, then a refused bundle.
    let api = FakeApiServer::start_nas();
    let kubeconfig = api.nas_sync_kubeconfig(&dir);
    let kube = [
        ("KUBECONFIG", kubeconfig.to_str().unwrap()),
        ("KUBE_MAX_ATTEMPTS", "1"),
    ];
    let job = "nas-sync";
    let series = |name: &str| format!("{name}{{instance=\"\",job=\"nas-sync\"}}");
    assert_exit(&run_job("nas-sync-job", &refs(&with(&kube)), dir.path()), 0);
    assert_eq!(
        gateway.value(job, &series("nas_sync_last_run_drift_found")),
        Some(1.0)
    );
    api.edit_secret("istio-system", "cacerts", "ca-key.pem", b"hand-edited");
    assert_exit(&run_job("nas-sync-job", &refs(&with(&kube)), dir.path()), 0);
    assert_eq!(
        gateway.value(job, &series("nas_sync_last_run_drift_found")),
        Some(1.0)
    );
    assert_eq!(
        gateway.value(
            job,
            "nas_sync_last_run_secrets{action=\"restored\",instance=\"\",job=\"nas-sync\"}"
        ),
        Some(1.0)
    );
    assert_exit(&run_job("nas-sync-job", &refs(&with(&kube)), dir.path()), 0);
    assert_eq!(
        gateway.value(job, &series("nas_sync_last_run_drift_found")),
        Some(0.0)
    );
    assert_eq!(
        gateway.value(job, &series("nas_sync_last_run_refused")),
        Some(0.0)
    );
    let good = kept_values(gateway, job);
    let root_key = bao.kv_field("istio/ca", "root-key.pem");
    bao.shell(&format!("printf '%s' '{root_key}' > k.pem && vault kv patch -mount=secret istio/clusters/nas ca-key.pem=@k.pem")).ok();
    assert_exit(&run_job("nas-sync-job", &refs(&with(&kube)), dir.path()), 5);
    assert_eq!(
        gateway.value(job, &series("nas_sync_last_run_refused")),
        Some(1.0)
    );
    assert_eq!(
        gateway.value(job, &series("nas_sync_last_run_success")),
        Some(0.0)
    );
    let after: Vec<String> = kept_values(gateway, job)
        .into_iter()
        .filter(|l| !l.contains("_last_run_drift_found"))
        .collect();
    let before: Vec<String> = good
        .into_iter()
        .filter(|l| !l.contains("_last_run_drift_found"))
        .collect();
    assert_eq!(after, before);

    // client-issuer-job (its failed runs: tests/client_issuer.rs).
    let clients = dir.write(
        "clients.yaml",
        "clients:\n  - name: alice\n    email: alice@home.arpa\n",
    );
    let issuer = with(&[("CLIENTS_FILE", clients.to_str().unwrap())]);
    assert_exit(&run_job("client-issuer-job", &refs(&issuer), dir.path()), 0);
    gateway.scrape()
}

/// Metric names in a `PromQL` expression that belong to the jobs or the Pushgateway.
fn queried_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| {
            [
                "istio_ca_bootstrap_",
                "nas_sync_",
                "client_issuer_",
                "push_time_seconds",
            ]
            .iter()
            .any(|p| t.starts_with(p))
        })
        .map(str::to_owned)
        .collect()
}

/// Every expression of the alert rules and the dashboards in the rendered manifests.
fn every_query() -> Vec<String> {
    let mut queries = Vec::new();
    for k in crate::support::flux::flux_kustomizations() {
        for o in &k.objects {
            if o["kind"] == "PrometheusRule" {
                for group in o["spec"]["groups"].as_array().unwrap() {
                    for rule in group["rules"].as_array().unwrap() {
                        queries.push(rule["expr"].as_str().unwrap().to_owned());
                    }
                }
            }
            if o["kind"] == "ConfigMap" && o["metadata"]["labels"]["grafana_dashboard"] == "1" {
                for (_, text) in o["data"].as_object().unwrap() {
                    let dashboard: serde_json::Value =
                        serde_json::from_str(text.as_str().unwrap()).unwrap();
                    collect_exprs(&dashboard, &mut queries);
                }
            }
        }
    }
    queries
}

fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn each_job_pushes_what_the_rules_and_dashboards_query() {
    let gateway = Pushgateway::start();
    let scrape = run_every_job(&gateway);
    let pushed: BTreeSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let queries = every_query();
    let mut names = BTreeSet::new();
    for q in &queries {
        names.extend(queried_names(q));
    }
    for prefix in [
        "istio_ca_bootstrap_",
        "nas_sync_",
        "client_issuer_",
        "push_time_seconds",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(prefix)),
            "nothing queries {prefix}*: {names:?}"
        );
    }
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !pushed.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but never pushed: {missing:?}\npushed: {pushed:?}"
    );
    // The check bites: a misspelt name is caught.
    assert!(!pushed.contains("client_issuer_ca_expiry_timestamp"));
    assert_eq!(
        queried_names(
            "time() - max(push_time_seconds{job=\"x\"}) > client_issuer_ca_expiry_timestamp"
        ),
        BTreeSet::from([
            "push_time_seconds".to_owned(),
            "client_issuer_ca_expiry_timestamp".to_owned()
        ])
    );
}
