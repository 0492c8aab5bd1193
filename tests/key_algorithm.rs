//! A key algorithm changed in configuration while a CA already exists: the stored key is kept
//! (nothing is written), and a warning names the variable, the configured and the stored
//! algorithm.

use crate::support::jobs::{JobRun, run_job};
use crate::support::openbao::{OpenBao, ROOT_TOKEN};
use crate::support::tools::Scratch;

#[track_caller]
fn kept_with_a_warning(run: &JobRun, variable: &str, path: &str) {
    assert_eq!(run.code, 0, "{}", run.stderr);
    let warning = run
        .log_lines()
        .into_iter()
        .find(|l| l["variable"] == variable)
        .unwrap_or_else(|| panic!("no warning naming {variable}:\n{}", run.stderr));
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["configured"], "ecdsa-p384");
    assert_eq!(warning["stored"], "ecdsa-p256");
    assert_eq!(
        warning["message"],
        format!(
            "{variable} is ecdsa-p384 but the key stored at '{path}' is ecdsa-p256; the stored \
             key is kept, and ecdsa-p384 applies only to keys generated from now on"
        )
    );
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
    let versions =
        || ["istio/ca", "istio/clusters/nas", "pki/issuer", "pki/ca"].map(|p| bao.kv_version(p));

    assert_eq!(run("bootstrap-job", &[]).code, 0);
    assert_eq!(run("client-issuer-job", &[]).code, 0);
    let before = versions();
    let boot = run("bootstrap-job", &[("ISTIO_KEY_ALGORITHM", "ecdsa-p384")]);
    kept_with_a_warning(&boot, "ISTIO_KEY_ALGORITHM", "secret/istio/ca");
    let issuer = run(
        "client-issuer-job",
        &[("CLIENT_CA_KEY_ALGORITHM", "ecdsa-p384")],
    );
    kept_with_a_warning(&issuer, "CLIENT_CA_KEY_ALGORITHM", "secret/pki/issuer");
    assert_eq!(versions(), before, "nothing was written");
    // The same algorithm as stored: no warning.
    let quiet = run("bootstrap-job", &[]);
    assert!(
        quiet.log_lines().iter().all(|l| l["variable"].is_null()),
        "{}",
        quiet.stderr
    );
}
