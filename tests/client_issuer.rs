//! `client-issuer-job` against a real OpenBao and a real HAProxy: users fetch their PKCS#12
//! exactly as the previous scripts told them and get through; revoked users, strangers and anonymous
//! clients do not; a migration trusts both CAs; metrics reach a real Pushgateway.

use std::path::PathBuf;

use pki_core::time::{Duration, OffsetDateTime};
use pki_core::{CaParams, KeyAlgorithm, SubjectName, generate_root_ca};

use crate::support::haproxy::{HaProxy, P12_PASSWORD, legacy_client_ca, legacy_crl, p12_for};
use crate::support::jobs::{
    JobRun, field_pairs, run_job, spawn_job, spawn_job_with_args, wait_job,
};
use crate::support::openbao::{OpenBao, free_port};
use crate::support::tools::{Scratch, keytool_listing, openssl, run};

const JOB: &str = "client-issuer-job";

struct Setup {
    bao: OpenBao,
    dir: Scratch,
    clients_file: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let dir = Scratch::new();
        let clients_file = dir.path().join("clients.yaml");
        Self {
            bao: OpenBao::start(),
            dir,
            clients_file,
        }
    }

    /// A store where a first run issued [`ALICE_BOB`].
    #[track_caller]
    fn alice_and_bob_issued() -> Self {
        let s = Self::new();
        s.clients(ALICE_BOB);
        assert_exit(&s.run(&[]), 0);
        s
    }

    fn clients(&self, yaml: &str) -> PathBuf {
        self.dir.write("clients.yaml", yaml)
    }

    /// The variables of a run on this store and clients file.
    fn vars(&self) -> Vec<(&str, &str)> {
        vec![
            ("VAULT_ADDR", self.bao.addr.as_str()),
            ("VAULT_TOKEN", crate::support::openbao::ROOT_TOKEN),
            ("CLIENTS_FILE", self.clients_file.to_str().unwrap()),
        ]
    }

    /// The job with arguments (`report`, `repair alice`), on the same store and file.
    fn run_args(&self, args: &[&str]) -> JobRun {
        wait_job(spawn_job_with_args(
            JOB,
            args,
            &self.vars(),
            self.dir.path(),
        ))
    }

    fn run(&self, extra: &[(&str, &str)]) -> JobRun {
        let mut vars = self.vars();
        vars.extend_from_slice(extra);
        run_job(JOB, &vars, self.dir.path())
    }

    /// The previous scripts' user step, as written: `vault kv get -field=p12 ... | base64 -d > name.p12`.
    fn fetch_p12(&self, name: &str) -> (PathBuf, String) {
        self.bao
            .shell(&format!(
                "vault kv get -field=p12 secret/pki/clients/{name} | base64 -d > {name}.p12"
            ))
            .ok();
        let password = self
            .bao
            .kv_field(&format!("pki/clients/{name}"), "password");
        (self.bao.dir.path().join(format!("{name}.p12")), password)
    }

    /// [`Self::fetch_p12`], then `openssl pkcs12` opens the bundle with its password: the
    /// user's download works.
    fn fetch_p12_and_open_it(&self, name: &str) {
        let (p12, password) = self.fetch_p12(name);
        openssl(
            &[
                "pkcs12",
                "-in",
                p12.to_str().unwrap(),
                "-passin",
                &format!("pass:{password}"),
                "-nokeys",
            ],
            self.dir.path(),
        )
        .ok();
    }

    fn haproxy(&self) -> HaProxy {
        HaProxy::start(
            &self.bao.kv_field("pki/ca", "ca.crt"),
            &self.bao.kv_field("pki/ca", "crl.pem"),
        )
    }

    /// A request through `haproxy` presenting the bundle of `name`, fetched as
    /// [`Self::fetch_p12`] does.
    fn get_as(&self, haproxy: &HaProxy, name: &str) -> Option<(u16, String)> {
        let (p12, password) = self.fetch_p12(name);
        haproxy.get_with_p12(Some((&p12, &password)))
    }

    fn versions(&self, paths: &[&str]) -> Vec<u64> {
        paths.iter().map(|p| self.bao.kv_version(p)).collect()
    }
}

#[track_caller]
fn assert_exit(run: &JobRun, code: i32) {
    assert_eq!(run.code, code, "exit code; stderr:\n{}", run.stderr);
}

/// The entries a refused run must leave as they were.
const ISSUER_CA_ALICE: [&str; 3] = ["pki/issuer", "pki/ca", "pki/clients/alice"];

const ALICE_BOB: &str = "clients:\n  - name: alice\n    email: alice@example.org\n  - name: bob\n    email: bob@example.org\n";

#[test]
fn users_get_through_haproxy_and_the_revoked_do_not() {
    let s = Setup::alice_and_bob_issued();
    let (bob_p12, bob_password) = s.fetch_p12("bob");
    s.clients("clients:\n  - name: alice\n    email: alice@example.org\n  - name: bob\n    email: bob@example.org\n    revoked: true\n    revocation_reason: key-compromise\n");
    let revoking = s.run(&[]);
    assert_exit(&revoking, 0);
    assert_eq!(revoking.last_field("revoked"), Some(1.into()));
    assert_eq!(
        s.bao.kv_field("pki/clients/bob", "status").trim(),
        "revoked"
    );

    let haproxy = s.haproxy();
    let (code, body) = s.get_as(&haproxy, "alice").expect("alice refused");
    assert_eq!((code, body.as_str()), (200, "hello alice"));

    assert_eq!(
        haproxy.get_with_p12(Some((&bob_p12, &bob_password))),
        None,
        "revoked bob got through"
    );
    assert_eq!(
        haproxy.get_with_p12(None),
        None,
        "a client without a certificate got through"
    );

    // A certificate from another CA, with the same name.
    let stranger_ca = generate_root_ca(
        &CaParams {
            subject: SubjectName::new("NAS", "Client CA"),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            validity: Duration::days(30),
        },
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let p12 = p12_for(&stranger_ca, "alice");
    let file = s.dir.write("stranger.p12", p12);
    assert_eq!(
        haproxy.get_with_p12(Some((&file, P12_PASSWORD))),
        None,
        "a stranger got through"
    );

    // The CRL lists bob with the declared reason.
    s.dir.write("crl.pem", s.bao.kv_field("pki/ca", "crl.pem"));
    let text = openssl(&["crl", "-in", "crl.pem", "-noout", "-text"], s.dir.path())
        .ok()
        .stdout;
    let serial = s.bao.kv_field("pki/clients/bob", "serial");
    assert!(
        text.contains(&format!("Serial Number: {}", serial.trim()))
            && text.contains("Key Compromise"),
        "{text}"
    );
}

#[test]
fn migration_trusts_the_legacy_ca_only_with_its_crl() {
    let s = Setup::new();
    s.clients(ALICE_BOB);
    let now = OffsetDateTime::now_utc();
    let legacy = legacy_client_ca(now);
    let legacy_crl = legacy_crl(&legacy, now, 1, vec![]);
    let ca_file = s.dir.write("legacy-ca.pem", legacy.certificate.to_pem());
    let crl_file = s.dir.write("legacy-crl.pem", &legacy_crl);

    let refused = s.run(&[("LEGACY_CA_FILES", ca_file.to_str().unwrap())]);
    assert_exit(&refused, 2);
    assert!(
        refused.error().starts_with(
            "invalid LEGACY_CRL_FILES: the legacy CRL files: no CRL signed by 'O=Old, CN=Old Client CA'"
        ),
        "{}",
        refused.error()
    );
    assert_eq!(
        s.versions(&ISSUER_CA_ALICE),
        [0, 0, 0],
        "a refused configuration wrote"
    );

    let ok = s.run(&[
        ("LEGACY_CA_FILES", ca_file.to_str().unwrap()),
        ("LEGACY_CRL_FILES", crl_file.to_str().unwrap()),
    ]);
    assert_exit(&ok, 0);
    let haproxy = s.haproxy();
    assert_eq!(s.get_as(&haproxy, "alice").map(|r| r.0), Some(200));
    let old_user = s.dir.write("olduser.p12", p12_for(&legacy, "olduser"));
    let (code, body) = haproxy
        .get_with_p12(Some((&old_user, P12_PASSWORD)))
        .expect("the legacy client was refused");
    assert_eq!((code, body.as_str()), (200, "hello olduser"));
}

#[test]
fn the_legacy_profile_opens_with_openssl_legacy_and_keytool() {
    let s = Setup::new();
    s.clients("clients:\n  - name: carol\n    email: carol@example.org\n    profile: legacy\n");
    assert_exit(&s.run(&[]), 0);
    let (p12, password) = s.fetch_p12("carol");
    let pass = format!("pass:{password}");
    let info = openssl(
        &[
            "pkcs12",
            "-info",
            "-legacy",
            "-in",
            p12.to_str().unwrap(),
            "-passin",
            &pass,
            "-noout",
        ],
        s.dir.path(),
    )
    .ok()
    .all();
    assert!(
        info.contains("MAC: sha1") && info.contains("pbeWithSHA1And3-KeyTripleDES-CBC"),
        "{info}"
    );
    let listing = keytool_listing(p12.to_str().unwrap(), &password, s.dir.path());
    assert!(
        listing.contains("Alias name: carol") && listing.contains("Entry type: PrivateKeyEntry"),
        "{listing}"
    );
    assert!(listing.contains("Certificate chain length: 2"), "{listing}");
}

#[test]
fn metrics_reach_a_real_pushgateway() {
    let s = Setup::new();
    s.clients(ALICE_BOB);
    let port = free_port();
    let mut gateway = std::process::Command::new("prometheus-pushgateway")
        .args([
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--log.level=warn".into(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start prometheus-pushgateway");
    let url = format!("http://127.0.0.1:{port}");
    let metrics = || run("curl", &["-s", &format!("{url}/metrics")], s.dir.path());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !metrics().success {
        assert!(
            std::time::Instant::now() < deadline,
            "pushgateway did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_exit(&s.run(&[("PUSHGATEWAY_URL", &url)]), 0);
    let good = metrics().ok().stdout;
    // A failed run (an unreadable clients file) replaces only the run gauges: the expiry
    // and CRL gauges of the good run stay, and so do the alerts on them.
    s.clients("clients: {");
    assert_exit(&s.run(&[("PUSHGATEWAY_URL", &url)]), 2);
    let failed = metrics().ok().stdout;
    // `report` has no run to report and pushes nothing.
    let mut vars = s.vars();
    vars.push(("PUSHGATEWAY_URL", &url));
    let report = wait_job(spawn_job_with_args(JOB, &["report"], &vars, s.dir.path()));
    assert_exit(&report, 0);
    let after_report = metrics().ok().stdout;
    let _ = gateway.kill();
    let _ = gateway.wait();
    let kept = [
        "client_issuer_client_cert_expiry_timestamp_seconds{client=\"alice\",instance=\"\",job=\"client-issuer\",status=\"active\"}",
        "client_issuer_ca_expiry_timestamp_seconds{instance=\"\",job=\"client-issuer\"}",
        "client_issuer_crl_next_update_timestamp_seconds{instance=\"\",job=\"client-issuer\"}",
        "client_issuer_last_run_clients{action=\"issued\",instance=\"\",job=\"client-issuer\"} 2",
        "client_issuer_last_success_timestamp_seconds{instance=\"\",job=\"client-issuer\"}",
        "push_time_seconds{instance=\"\",job=\"client-issuer\"}",
    ];
    for expected in kept {
        assert!(good.contains(expected), "missing {expected}:\n{good}");
        let line = |text: &str| {
            text.lines()
                .find(|l| l.starts_with(expected))
                .map(str::to_owned)
        };
        if !expected.starts_with("push_time") {
            assert_eq!(line(&failed), line(&good), "{expected} changed:\n{failed}");
        }
    }
    assert!(good.contains("client_issuer_last_run_success{instance=\"\",job=\"client-issuer\"} 1"));
    assert!(
        failed.contains("client_issuer_last_run_success{instance=\"\",job=\"client-issuer\"} 0"),
        "{failed}"
    );
    let group = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains("job=\"client-issuer\""))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(group(&after_report), group(&failed));
}

#[test]
fn a_second_run_writes_nothing_and_placeholders_are_replaced() {
    let s = Setup::new();
    // The previous scripts' preparation step.
    s.bao.shell("vault kv put secret/pki/ca placeholder=true && vault kv put secret/pki/clients placeholder=true").ok();
    s.clients(ALICE_BOB);
    assert_exit(&s.run(&[]), 0);
    let paths = [
        "pki/issuer",
        "pki/ca",
        "pki/clients/alice",
        "pki/clients/bob",
    ];
    assert_eq!(s.versions(&paths), [1, 2, 1, 1]);
    let second = s.run(&[]);
    assert_exit(&second, 0);
    assert_eq!(
        second.messages().last().unwrap(),
        "client PKI verified; nothing to do"
    );
    assert_eq!(s.versions(&paths), [1, 2, 1, 1]);

    // The previous scripts' expiry check reads `created` as RFC 3339.
    let created = s
        .bao
        .shell("vault kv get -format=json secret/pki/clients/alice")
        .ok()
        .stdout;
    let json: serde_json::Value = serde_json::from_str(&created).unwrap();
    let created = json["data"]["data"]["created"].as_str().unwrap();
    assert!(
        OffsetDateTime::parse(
            created,
            &pki_core::time::format_description::well_known::Rfc3339
        )
        .is_ok(),
        "{created}"
    );
}

#[test]
fn an_invalid_issuer_entry_is_never_overwritten() {
    let s = Setup::new();
    s.bao.kv_put(
        "pki/issuer",
        &[("ca.crt", "not a certificate"), ("ca.key", "nor a key")],
    );
    s.clients(ALICE_BOB);
    let refused = s.run(&[]);
    assert_exit(&refused, 5);
    assert_eq!(
        refused.error(),
        "invalid state at 'secret/pki/issuer': ca.crt holds no CERTIFICATE"
    );
    assert_eq!(s.versions(&ISSUER_CA_ALICE), [1, 0, 0]);
}

#[test]
fn concurrent_runs_issue_one_certificate_per_client() {
    let s = Setup::new();
    s.clients(ALICE_BOB);
    let dirs: Vec<Scratch> = (0..4).map(|_| Scratch::new()).collect();
    let children: Vec<_> = dirs
        .iter()
        .map(|d| spawn_job(JOB, &s.vars(), d.path()))
        .collect();
    for child in children {
        assert_exit(&wait_job(child), 0);
    }
    assert_eq!(
        s.versions(&["pki/issuer", "pki/clients/alice", "pki/clients/bob"]),
        [1, 1, 1]
    );
}

#[test]
fn an_invalid_clients_file_writes_nothing() {
    let s = Setup::new();
    s.clients("clients:\n  - name: alice\n    email: alice@example.org\n  - name: Bob/../x\n    email: bob\n  - name: alice\n    email: a@example.org\n");
    let refused = s.run(&[]);
    assert_exit(&refused, 2);
    let error = refused.error();
    assert!(error.ends_with(
        "is invalid; nothing was written:\n  client 2 ('Bob/../x'): name must be lowercase letters, digits and '-', at most 63 characters, not starting or ending with '-'\n  client 2 ('Bob/../x'): email 'bob' is not an address of the form user@domain.tld\n  client 3 ('alice'): name is declared twice"
    ), "{error}");
    assert_eq!(s.versions(&ISSUER_CA_ALICE), [0, 0, 0]);
}

#[test]
fn the_one_off_issue_command_and_the_report() {
    let s = Setup::alice_and_bob_issued();
    let dir = Scratch::new();
    let vars = [
        ("VAULT_ADDR", s.bao.addr.as_str()),
        ("VAULT_TOKEN", crate::support::openbao::ROOT_TOKEN),
    ];
    let issue = |args: &[&str]| {
        let output = std::process::Command::new(crate::support::jobs::job_bin(JOB))
            .args(args)
            .env_clear()
            .envs(vars)
            .env("LOG_FORMAT", "json")
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            output.status.code().unwrap(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, _, stderr) = issue(&["issue", "dave", "dave@example.org", "--profile", "legacy"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        s.bao.kv_field("pki/clients/dave", "profile").trim(),
        "legacy"
    );
    assert_eq!(
        s.bao.kv_field("pki/clients/dave", "source").trim(),
        "manual"
    );
    // The next scheduled run does not revoke a manually issued client.
    assert_exit(&s.run(&[]), 0);
    assert_eq!(
        s.bao.kv_field("pki/clients/dave", "status").trim(),
        "active"
    );

    let (code, _, stderr) = issue(&["issue", "Dave", "dave@example.org"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("invalid value 'Dave' for '<NAME>': not a client name"),
        "{stderr}"
    );

    let (code, table, _) = issue(&["report"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("CLIENT"), "{table}");
    for (line, name) in lines[1..4].iter().zip(["alice", "bob", "dave"]) {
        assert!(
            line.starts_with(name) && line.contains(" active "),
            "{table}"
        );
    }
    assert!(table.contains("client CA: O=NAS, CN=Client CA"), "{table}");
    assert!(table.contains("CRL: number 1, 0 revoked"), "{table}");
}

#[test]
fn a_reinstated_user_gets_a_new_certificate_and_the_old_one_stays_revoked() {
    let s = Setup::alice_and_bob_issued();
    let (old_p12, old_password) = s.fetch_p12("bob");
    // A later fetch of bob writes the same file: keep the old bundle apart.
    let old_p12 = s.dir.write("bob-old.p12", std::fs::read(old_p12).unwrap());
    let old_serial = s
        .bao
        .kv_field("pki/clients/bob", "serial")
        .trim()
        .to_owned();
    s.clients("clients:\n  - name: alice\n    email: alice@example.org\n");
    assert_exit(&s.run(&[]), 0);
    assert_eq!(
        s.bao.kv_field("pki/clients/bob", "status").trim(),
        "revoked",
        "removal from the file revokes"
    );

    s.clients(ALICE_BOB);
    assert_exit(&s.run(&[]), 0);
    let new_serial = s
        .bao
        .kv_field("pki/clients/bob", "serial")
        .trim()
        .to_owned();
    assert_ne!(new_serial, old_serial);
    assert_eq!(s.bao.kv_field("pki/clients/bob", "status").trim(), "active");

    let haproxy = s.haproxy();
    assert_eq!(s.get_as(&haproxy, "bob").map(|r| r.0), Some(200));
    assert_eq!(
        haproxy.get_with_p12(Some((&old_p12, &old_password))),
        None,
        "the revoked certificate came back"
    );
}

#[test]
fn a_changed_profile_or_email_reissues_and_the_crl_is_refreshed_before_next_update() {
    let s = Setup::new();
    s.clients(ALICE_BOB);
    assert_exit(&s.run(&[("CRL_VALIDITY_DAYS", "8")]), 0);
    let alice_serial = s.bao.kv_field("pki/clients/alice", "serial");
    s.clients("clients:\n  - name: alice\n    email: alice@example.org\n    profile: legacy\n  - name: bob\n    email: robert@example.org\n");
    let changed = s.run(&[("CRL_VALIDITY_DAYS", "8")]);
    assert_exit(&changed, 0);
    assert_eq!(changed.last_field("renewed"), Some(2.into()));
    assert_eq!(
        s.versions(&["pki/clients/alice", "pki/clients/bob"]),
        [2, 2]
    );
    assert_ne!(s.bao.kv_field("pki/clients/alice", "serial"), alice_serial);
    assert_eq!(
        s.bao.kv_field("pki/clients/alice", "profile").trim(),
        "legacy"
    );
    assert_eq!(
        s.bao.kv_field("pki/clients/bob", "email").trim(),
        "robert@example.org"
    );
    assert_eq!(
        s.bao.kv_field("pki/ca", "crl_number").trim(),
        "1",
        "re-issues revoke nothing"
    );

    // nextUpdate is 8 days away; re-sign once fewer than 9 days are left.
    let refreshed = s.run(&[("CRL_VALIDITY_DAYS", "14"), ("CRL_RENEW_DAYS_LEFT", "9")]);
    assert_exit(&refreshed, 0);
    assert_eq!(refreshed.last_field("crl_signed"), Some(true.into()));
    assert_eq!(s.bao.kv_field("pki/ca", "crl_number").trim(), "2");
    let quiet = s.run(&[("CRL_VALIDITY_DAYS", "14"), ("CRL_RENEW_DAYS_LEFT", "9")]);
    assert_eq!(
        quiet.last_field("writes"),
        Some(0.into()),
        "{}",
        quiet.stderr
    );
}

/// Two runs that overlap in the ways a cluster makes them overlap.
#[derive(Debug, Clone, Copy)]
enum Overlap {
    /// The CronJob's converge and a Job started for a changed clients file (each sees its
    /// own version of the file): one revokes bob, the other carol.
    TwoConverges,
    /// The CronJob's converge (revoking bob) and an operator's one-off `issue dave`.
    IssueAndConverge,
}

/// Trials per overlap, with and without injected delays: each is a fresh client PKI.
const RACE_TRIALS: usize = 100;

/// The variables of a run on the client PKI under `prefix`, through `addr`.
fn race_vars(addr: &str, file: &std::path::Path, prefix: &str) -> Vec<(String, String)> {
    [
        ("VAULT_ADDR", addr),
        ("VAULT_TOKEN", crate::support::openbao::ROOT_TOKEN),
        ("CLIENTS_FILE", file.to_str().unwrap()),
        ("PKI_CA_PATH", &format!("{prefix}/ca")),
        ("PKI_ISSUER_PATH", &format!("{prefix}/issuer")),
        ("PKI_CLIENTS_PATH", &format!("{prefix}/clients")),
        // The race is about the bundle, not key derivation: keep each run short.
        ("PKCS12_ITERATIONS", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn as_pairs(vars: &[(String, String)]) -> Vec<(&str, &str)> {
    vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Issue #16's lost revocation: after any overlap of two runs, every entry whose status is
/// `revoked` is on the stored CRL. Checked from the stored CRL itself, trial by trial.
#[test]
fn overlapping_runs_never_drop_a_revocation() {
    let setup = Setup::new();
    let upstream = setup.bao.addr.trim_start_matches("http://").to_owned();
    let delayed = crate::support::proxy::DelayProxy::start(&upstream, 8);
    let all = setup.dir.write(
        "all.yaml",
        format!("{ALICE_BOB}  - name: carol\n    email: carol@example.org\n"),
    );
    let without_bob = setup.dir.write(
        "without-bob.yaml",
        "clients:\n  - name: alice\n    email: alice@example.org\n  - name: carol\n    email: carol@example.org\n",
    );
    let without_carol = setup.dir.write("without-carol.yaml", ALICE_BOB);
    let dir = setup.dir.path();
    let mut drops = Vec::new();
    let mut trials = 0;
    for overlap in [Overlap::TwoConverges, Overlap::IssueAndConverge] {
        for (via, addr) in [("direct", &setup.bao.addr), ("delayed", &delayed.addr)] {
            for trial in 0..RACE_TRIALS {
                let prefix = format!("race/{overlap:?}-{via}-{trial}");
                let first = race_vars(&setup.bao.addr, &all, &prefix);
                assert_exit(&run_job(JOB, &as_pairs(&first), dir), 0);
                let bob_first =
                    setup.bao.kv_data(&format!("{prefix}/clients/bob")).unwrap()["serial"].clone();

                let a = race_vars(addr, &without_bob, &prefix);
                let child_a = spawn_job(JOB, &as_pairs(&a), dir);
                let child_b = match overlap {
                    Overlap::TwoConverges => {
                        let b = race_vars(addr, &without_carol, &prefix);
                        spawn_job(JOB, &as_pairs(&b), dir)
                    }
                    Overlap::IssueAndConverge => {
                        let b = race_vars(addr, &all, &prefix);
                        let args = ["issue", "dave", "dave@example.org"];
                        spawn_job_with_args(JOB, &args, &as_pairs(&b), dir)
                    }
                };
                let (ran_a, ran_b) = (wait_job(child_a), wait_job(child_b));
                assert_exit(&ran_a, 0);
                assert_exit(&ran_b, 0);
                trials += 1;

                let bundle = setup.bao.kv_data(&format!("{prefix}/ca")).unwrap();
                let crl = pki_core::Crl::from_pem(bundle["crl.pem"].as_str().unwrap(), "crl.pem")
                    .unwrap();
                // Every revocation any entry records: its certificate when revoked, and the
                // earlier certificates a re-issue left in its history.
                let mut recorded = Vec::new();
                for name in ["bob", "carol"] {
                    let entry = setup
                        .bao
                        .kv_data(&format!("{prefix}/clients/{name}"))
                        .unwrap();
                    if entry["status"] == "revoked" {
                        recorded.push((name, entry["serial"].as_str().unwrap().to_owned()));
                    }
                    let history = entry.get("revoked_history").and_then(|h| h.as_str());
                    for line in history.unwrap_or_default().lines() {
                        let serial = line.split_whitespace().next().unwrap();
                        recorded.push((name, serial.to_owned()));
                    }
                }
                // The run without bob revokes his first certificate, whatever the other did
                // (a converge that still declares him re-issues him afterwards).
                assert!(
                    recorded.iter().any(|(_, s)| *s == bob_first),
                    "{prefix}: bob's first certificate is recorded as revoked: {recorded:?}"
                );
                for (name, serial) in recorded {
                    if !crl.is_revoked(&serial) {
                        drops.push(format!(
                            "{prefix}: {name}'s {serial} is revoked but not on the CRL"
                        ));
                    }
                }
            }
        }
    }
    assert_eq!(trials, 4 * RACE_TRIALS);
    assert!(
        drops.is_empty(),
        "{} of {trials} overlaps dropped a revocation:\n{}",
        drops.len(),
        drops.join("\n")
    );
}

/// Runs `tests/fixtures/previous-scripts-client.sh` against the server: an entry written the
/// way the previous scripts wrote it, by their own shell commands.
fn previous_scripts_user(bao: &OpenBao, name: &str) {
    let script =
        crate::support::openbao::workspace_root().join("tests/fixtures/previous-scripts-client.sh");
    bao.shell(&format!("{} {name} {name}@example.org", script.display()))
        .ok();
}

#[test]
fn previous_scripts_users_are_listed_kept_and_migrated_once_declared() {
    let s = Setup::new();
    previous_scripts_user(&s.bao, "olduser");
    previous_scripts_user(&s.bao, "migrant");
    s.clients(&format!(
        "{ALICE_BOB}  - name: migrant\n    email: migrant@example.org\n"
    ));

    let ran = s.run(&[]);

    assert_exit(&ran, 0);
    assert_eq!(
        s.versions(&["pki/clients/olduser", "pki/clients/migrant"]),
        [1, 2]
    );
    let report = s.run_args(&["report"]);
    assert_exit(&report, 0);
    let line = report
        .stdout
        .lines()
        .find(|l| l.starts_with("olduser "))
        .unwrap();
    assert!(
        line.contains(" active ") && line.ends_with("previous"),
        "{line}"
    );
    // The migrated user downloads a working bundle as the previous scripts said; the old certificate is kept.
    s.fetch_p12_and_open_it("migrant");
    assert!(
        s.bao
            .kv_field("pki/clients/migrant", "previous_cert")
            .contains("BEGIN CERTIFICATE")
    );
    // And a second run has nothing to do.
    let again = s.run(&[]);
    assert_exit(&again, 0);
    assert_eq!(
        s.versions(&["pki/clients/olduser", "pki/clients/migrant"]),
        [1, 2]
    );
}

#[test]
fn an_unusable_entry_is_named_left_alone_and_repaired_on_request() {
    let s = Setup::alice_and_bob_issued();
    // A hand edit breaks alice's bundle: the password no longer opens it.
    s.bao
        .cli(&[
            "kv",
            "patch",
            "-mount=secret",
            "pki/clients/alice",
            "password=wrong",
        ])
        .ok();
    s.bao
        .kv_put("pki/clients/stranger", &[("note", "kept by hand")]);
    let before = s.versions(&[
        "pki/clients/alice",
        "pki/clients/bob",
        "pki/clients/stranger",
        "pki/ca",
    ]);

    let ran = s.run(&[]);

    assert_exit(&ran, 8);
    assert_eq!(
        ran.error(),
        "2 client entries were left alone and need an operator: 'alice' (invalid PKCS#12 bundle: field 'p12' cannot be opened: MAC tag mismatch (wrong 'password', or 'p12' is corrupted); re-issue it with 'client-issuer-job repair alice'); 'stranger' (missing field 'cert' (fields present: note))"
    );
    assert_eq!(
        s.versions(&[
            "pki/clients/alice",
            "pki/clients/bob",
            "pki/clients/stranger",
            "pki/ca"
        ]),
        before
    );
    let report = s.run_args(&["report"]);
    assert!(
        report
            .stdout
            .contains("entries left alone, to look at:\n  alice: "),
        "{}",
        report.stdout
    );

    let repaired = s.run_args(&["repair", "alice"]);
    assert_exit(&repaired, 8); // the stranger still needs an operator
    assert_eq!(
        s.versions(&["pki/clients/alice", "pki/clients/stranger"]),
        [before[0] + 1, before[2]]
    );
    s.fetch_p12_and_open_it("alice");
}

/// The previous scripts' CA at `pki/ca` (placeholder, then certificate and key, by their own
/// shell commands) and a user `olduser` it signed, also by their commands.
fn previous_scripts_ca_and_user(s: &Setup) {
    let fixtures = crate::support::openbao::workspace_root().join("tests/fixtures");
    s.bao
        .shell(&format!(
            "{}/previous-scripts-ca.sh && CA_PATH=pki/ca {}/previous-scripts-client.sh olduser olduser@example.org",
            fixtures.display(),
            fixtures.display()
        ))
        .ok();
}

/// A token with the repository's policy `name`.
fn policy_token(s: &Setup, name: &str) -> String {
    let hcl = std::fs::read_to_string(
        crate::support::openbao::workspace_root().join(format!("vault/policies/{name}.hcl")),
    )
    .unwrap();
    s.bao.policy(name, &hcl);
    s.bao.token(&[name])
}

/// What the bundle's reader gets from every version of `pki/ca`, as `vault kv get -version=N`.
fn reader_views(s: &Setup, reader: &str) -> Vec<String> {
    (1..=s.bao.kv_version("pki/ca"))
        .map(|v| {
            s.bao
                .cli_as(
                    reader,
                    &[
                        "kv",
                        "get",
                        "-mount=secret",
                        &format!("-version={v}"),
                        "pki/ca",
                    ],
                )
                .all()
        })
        .collect()
}

/// `openssl verify -crl_check` of `leaf` against the bundle HAProxy gets.
fn verify_against_bundle(s: &Setup, leaf: &std::path::Path) -> crate::support::tools::Ran {
    let ca = s
        .dir
        .write("bundle-ca.pem", s.bao.kv_field("pki/ca", "ca.crt"));
    let crl = s
        .dir
        .write("bundle-crl.pem", s.bao.kv_field("pki/ca", "crl.pem"));
    openssl(
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            ca.to_str().unwrap(),
            "-CRLfile",
            crl.to_str().unwrap(),
            leaf.to_str().unwrap(),
        ],
        s.dir.path(),
    )
}

#[test]
fn the_previous_scripts_ca_stays_trusted_and_its_key_leaves_the_readers_reach() {
    let s = Setup::new();
    previous_scripts_ca_and_user(&s);
    s.clients(ALICE_BOB);
    let issuer = policy_token(&s, "client-issuer");
    let reader = policy_token(&s, "eso-pki-reader");
    // Before: the bundle's reader can read the key (what this test must see disappear).
    assert!(reader_views(&s, &reader)[1].contains("EC PRIVATE KEY"));

    let unset = s.run(&[("VAULT_TOKEN", issuer.as_str())]);
    assert_exit(&unset, 2);
    assert!(
        unset.stderr.contains("PREVIOUS_CA=issuer") && unset.stderr.contains("PREVIOUS_CA=trusted"),
        "{}",
        unset.stderr
    );
    assert_eq!(s.versions(&["pki/ca"]), [2], "nothing written");

    let ran = s.run(&[("VAULT_TOKEN", issuer.as_str()), ("PREVIOUS_CA", "trusted")]);

    assert_exit(&ran, 0);
    let views = reader_views(&s, &reader);
    assert_eq!(views.len(), 3, "placeholder, the CA and key, the bundle");
    for (v, view) in views.iter().enumerate() {
        assert!(!view.contains("PRIVATE KEY"), "version {}: {view}", v + 1);
    }
    assert!(views[2].contains("ca.crt"), "{}", views[2]);
    let key = std::fs::read_to_string(s.bao.dir.path().join("ca-key.pem")).unwrap();
    assert_eq!(
        s.bao.kv_field("pki/previous-ca", "ca.key").trim(),
        key.trim()
    );
    assert!(!s.bao.kv_field("pki/issuer", "ca.key").contains(key.trim()));
    // The previous scripts' user still passes with the CRL check, and so does a new one.
    verify_against_bundle(&s, &s.bao.dir.path().join("olduser.pem")).ok();
    let alice = s
        .dir
        .write("alice.pem", s.bao.kv_field("pki/clients/alice", "cert"));
    verify_against_bundle(&s, &alice).ok();
    // A second run has nothing to move.
    assert_exit(
        &s.run(&[("VAULT_TOKEN", issuer.as_str()), ("PREVIOUS_CA", "trusted")]),
        0,
    );
    assert_eq!(s.versions(&["pki/ca", "pki/previous-ca"]), [3, 2]);
}

#[test]
fn the_previous_scripts_ca_as_issuer_signs_new_users() {
    let s = Setup::new();
    previous_scripts_ca_and_user(&s);
    s.clients(ALICE_BOB);
    let issuer = policy_token(&s, "client-issuer");
    let reader = policy_token(&s, "eso-pki-reader");

    let ran = s.run(&[("VAULT_TOKEN", issuer.as_str()), ("PREVIOUS_CA", "issuer")]);

    assert_exit(&ran, 0);
    for (v, view) in reader_views(&s, &reader).iter().enumerate() {
        assert!(!view.contains("PRIVATE KEY"), "version {}: {view}", v + 1);
    }
    let key = std::fs::read_to_string(s.bao.dir.path().join("ca-key.pem")).unwrap();
    assert_eq!(s.bao.kv_field("pki/issuer", "ca.key").trim(), key.trim());
    assert_eq!(s.bao.kv_version("pki/previous-ca"), 0);
    let alice = s
        .dir
        .write("alice.pem", s.bao.kv_field("pki/clients/alice", "cert"));
    let old_ca = s.bao.dir.path().join("ca-cert.pem");
    openssl(
        &[
            "verify",
            "-CAfile",
            old_ca.to_str().unwrap(),
            alice.to_str().unwrap(),
        ],
        s.dir.path(),
    )
    .ok();
    verify_against_bundle(&s, &s.bao.dir.path().join("olduser.pem")).ok();
    verify_against_bundle(&s, &alice).ok();
}

#[test]
fn plan_shows_issues_revocations_and_refusals_and_writes_nothing() {
    let s = Setup::alice_and_bob_issued();
    let paths = [
        "pki/issuer",
        "pki/ca",
        "pki/clients/alice",
        "pki/clients/bob",
        "pki/clients/carol",
    ];
    let stored = s.versions(&paths);
    assert_eq!(stored[4], 0);

    s.clients(
        "clients:\n  - name: alice\n    email: alice@example.org\n  - name: bob\n    email: bob@example.org\n    revoked: true\n  - name: carol\n    email: carol@example.org\n",
    );
    let planned = s.run_args(&["plan", "-o", "json"]);
    assert_exit(&planned, 10);
    let json = planned.stdout_json();
    assert_eq!(
        field_pairs(&json, "changes", "action", "object"),
        [
            ("revoke", "client bob"),
            ("issue", "client carol"),
            ("sign", "CRL"),
            ("write", "trust bundle"),
        ]
    );
    let written: Vec<&str> = json["store_writes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["path"].as_str().unwrap())
        .collect();
    assert!(
        written.contains(&"pki/clients/carol") && written.contains(&"pki/ca"),
        "{written:?}"
    );
    // Field names, never values.
    assert!(!planned.stdout.contains("PRIVATE KEY") && !planned.stdout.contains("BEGIN"));
    assert_eq!(s.versions(&paths), stored, "a plan writes nothing");

    // The table says the same; the run then does what the plan said.
    let table = s.run_args(&["plan"]);
    assert_exit(&table, 10);
    assert!(
        table.stdout.contains("revoke  client bob"),
        "{}",
        table.stdout
    );
    let run = s.run(&[]);
    assert_exit(&run, 0);
    assert_eq!(
        s.bao.kv_field("pki/clients/bob", "status").trim(),
        "revoked"
    );
    assert_eq!(s.versions(&paths)[4], 1);
    assert_exit(&s.run_args(&["plan"]), 0);

    // The mass-revocation guard refuses a plan as it refuses a run.
    s.clients("clients: []\n");
    let guarded = s.run_args(&["plan"]);
    assert_exit(&guarded, 2);
    assert!(
        guarded
            .error()
            .contains("this run would revoke 2 of 2 active clients"),
        "{}",
        guarded.error()
    );

    // `report -o json` is JSON.
    let report = s.run_args(&["report", "-o", "json"]);
    assert_exit(&report, 0);
    let report = report.stdout_json();
    assert_eq!(
        field_pairs(&report, "clients", "name", "status"),
        [("alice", "active"), ("bob", "revoked"), ("carol", "active")]
    );
    assert_eq!(report["crl"]["revoked"], 1);
}

/// The client index lets a run skip reading entries only while OpenBao's listing
/// (`detailed-metadata`) confirms them unchanged: an entry deleted with its history, or edited,
/// by hand is noticed and converged; a garbled index is logged and rebuilt.
#[test]
fn entries_deleted_or_edited_by_hand_behind_the_index_are_converged() {
    let s = Setup::new();
    s.clients(ALICE_BOB);
    assert_exit(&s.run(&[]), 0);
    assert!(s.bao.kv_data("pki/clients-index").is_some());
    let idle = s.run(&[]);
    assert_exit(&idle, 0);
    assert_eq!(
        idle.messages().last().unwrap(),
        "client PKI verified; nothing to do"
    );

    s.bao
        .cli(&[
            "kv",
            "metadata",
            "delete",
            "-mount=secret",
            "pki/clients/alice",
        ])
        .ok();
    s.bao
        .cli(&[
            "kv",
            "patch",
            "-mount=secret",
            "pki/clients/bob",
            "email=someone-else@example.org",
        ])
        .ok();
    let ran = s.run(&[]);
    assert_exit(&ran, 0);
    assert!(
        ran.messages()
            .iter()
            .any(|m| m.starts_with("client entries changed since the index was written")),
        "{:?}",
        ran.messages()
    );
    // alice issued anew (version 1 of a new entry), bob re-issued for the file's address.
    assert_eq!(
        s.versions(&["pki/clients/alice", "pki/clients/bob"]),
        [1, 3]
    );
    assert_eq!(
        s.bao.kv_field("pki/clients/bob", "email"),
        "bob@example.org"
    );
    s.fetch_p12_and_open_it("alice");
    let idle = s.run(&[]);
    assert_exit(&idle, 0);
    assert_eq!(
        idle.messages().last().unwrap(),
        "client PKI verified; nothing to do"
    );

    s.bao.kv_put("pki/clients-index", &[("index", "{garbled")]);
    let ran = s.run(&[]);
    assert_exit(&ran, 0);
    let messages = ran.messages();
    assert!(
        messages.contains(
            &"the client index is corrupt; reading every client entry to rebuild it".to_owned()
        ) && messages.contains(&"wrote the client index".to_owned()),
        "{messages:?}"
    );
    assert_eq!(
        s.versions(&["pki/clients/alice", "pki/clients/bob"]),
        [1, 3]
    );
}
