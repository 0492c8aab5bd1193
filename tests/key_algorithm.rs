//! A key algorithm changed in configuration while a CA already exists: the stored key is kept
//! (nothing is written), and a warning names the variable, the configured and the stored
//! algorithm, for each kept key (bootstrap-job: the root and every cluster intermediate).

use crate::support::jobs::{JobRun, run_job};
use crate::support::openbao::{OpenBao, ROOT_TOKEN};
use crate::support::tools::Scratch;

/// One warning naming `variable` for each of `paths`, in that order, and no other.
#[track_caller]
fn kept_with_warnings(run: &JobRun, variable: &str, paths: &[&str]) {
    assert_eq!(run.code, 0, "{}", run.stderr);
    let warnings: Vec<_> = run
        .log_lines()
        .into_iter()
        .filter(|l| l["variable"] == variable)
        .collect();
    let warned: Vec<_> = warnings.iter().map(|w| w["path"].clone()).collect();
    assert_eq!(warned, paths, "warnings naming {variable}:\n{}", run.stderr);
    for (warning, path) in warnings.iter().zip(paths) {
        assert_eq!(warning["level"], "WARN");
        assert_eq!(warning["configured"], "ecdsa-p384");
        assert_eq!(warning["stored"], "ecdsa-p256");
        assert_eq!(
            warning["message"],
            format!(
                "{variable} is ecdsa-p384 but the key stored at '{path}' is ecdsa-p256; the \
                 stored key is kept, and ecdsa-p384 applies only to keys generated from now on"
            )
        );
    }
}

#[test]
fn a_changed_key_algorithm_is_reported_and_the_stored_key_kept() {
    let bao = OpenBao::start();
    let dir = Scratch::new();
    let clients = dir.write(
        "clients.yaml",
        "clients:\n  - name: alice\n    email: alice@home.arpa\n",
    );
    let vars = |extra: &[(&'static str, &'static str)]| -> Vec<(String, String)> {
        let mut v = vec![
            ("VAULT_ADDR".to_owned(), bao.addr.clone()),
            ("VAULT_TOKEN".to_owned(), ROOT_TOKEN.to_owned()),
            ("CLIENTS_FILE".to_owned(), clients.display().to_string()),
        ];
        v.extend(
            extra
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned())),
        );
        v
    };
    let run = |job: &str, extra: &[(&'static str, &'static str)]| {
        let v = vars(extra);
        let refs: Vec<(&str, &str)> = v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        run_job(job, &refs, dir.path())
    };
    let versions = || {
        [
            "istio/ca",
            "istio/clusters/homelab",
            "istio/clusters/nas",
            "pki/issuer",
            "pki/ca",
        ]
        .map(|p| bao.kv_version(p))
    };

    assert_eq!(run("bootstrap-job", &[]).code, 0);
    assert_eq!(run("client-issuer-job", &[]).code, 0);
    let before = versions();
    let boot = run("bootstrap-job", &[("ISTIO_KEY_ALGORITHM", "ecdsa-p384")]);
    kept_with_warnings(
        &boot,
        "ISTIO_KEY_ALGORITHM",
        &[
            "secret/istio/ca",
            "secret/istio/clusters/homelab",
            "secret/istio/clusters/nas",
        ],
    );
    let issuer = run(
        "client-issuer-job",
        &[("CLIENT_CA_KEY_ALGORITHM", "ecdsa-p384")],
    );
    kept_with_warnings(&issuer, "CLIENT_CA_KEY_ALGORITHM", &["secret/pki/issuer"]);
    assert_eq!(versions(), before, "nothing was written");
    // The same algorithm as stored: no warning.
    let quiet = run("bootstrap-job", &[]);
    assert!(
        quiet.log_lines().iter().all(|l| l["variable"].is_null()),
        "{}",
        quiet.stderr
    );

    // Intermediates due for renewal are re-issued with the configured algorithm: only the root
    // is reported as kept.
    let renewed = run(
        "bootstrap-job",
        &[
            ("ISTIO_KEY_ALGORITHM", "ecdsa-p384"),
            ("RENEW_MIN_DAYS_LEFT", "36500"),
        ],
    );
    kept_with_warnings(&renewed, "ISTIO_KEY_ALGORITHM", &["secret/istio/ca"]);
    let after = versions();
    assert_eq!(after[0], before[0], "the root is kept");
    for (cluster, i) in [("homelab", 1), ("nas", 2)] {
        assert_eq!(after[i], before[i] + 1, "{cluster} renewed");
        let key = bao.kv_field(&format!("istio/clusters/{cluster}"), "ca-key.pem");
        let algorithm = pki_core::SigningKey::from_pem(&key, "ca-key.pem")
            .unwrap()
            .algorithm();
        assert_eq!(
            algorithm,
            Some(pki_core::KeyAlgorithm::EcdsaP384),
            "{cluster}"
        );
    }
}
