//! `bootstrap-job` against a real OpenBao server: creation exactly once, concurrent runs, JWT
//! login, policy refusals, an unreachable Vault, a run that died halfway, every invalid state
//! refused without a write, a cluster added later, and secrets kept out of the logs.

use pki_core::time::{Duration, OffsetDateTime};
use pki_core::{CaParams, KeyAlgorithm, SubjectName, generate_root_ca};

use crate::support::jobs::{JobRun, field_pairs, run_job, spawn_job, wait_job};
use crate::support::kube_api::FakeApiServer;
use crate::support::openbao::{OpenBao, TokenIssuer, free_port};
use crate::support::proxy::CutProxy;
use crate::support::tools::{Scratch, verify_cacerts};

fn as_refs(vars: &[(String, String)]) -> Vec<(&str, &str)> {
    vars.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

const JOB: &str = "bootstrap-job";

const FULL_POLICY: &str = r#"
path "secret/data/istio/*" { capabilities = ["create", "read", "update"] }
"#;

fn server() -> (OpenBao, String) {
    let bao = OpenBao::start();
    bao.policy("istio-ca", FULL_POLICY);
    let token = bao.token(&["istio-ca"]);
    (bao, token)
}

fn run(bao: &OpenBao, token: &str, extra: &[(&str, &str)]) -> JobRun {
    let dir = Scratch::new();
    let mut vars = vec![
        ("VAULT_ADDR", bao.addr.as_str()),
        ("VAULT_TOKEN", token),
        ("VAULT_MAX_ATTEMPTS", "2"),
    ];
    vars.extend_from_slice(extra);
    run_job(JOB, &vars, dir.path())
}

fn versions(bao: &OpenBao) -> [u64; 3] {
    ["istio/ca", "istio/clusters/homelab", "istio/clusters/nas"].map(|p| bao.kv_version(p))
}

#[track_caller]
fn assert_exit(run: &JobRun, code: i32) {
    assert_eq!(run.code, code, "exit code; stderr:\n{}", run.stderr);
}

#[test]
fn first_run_creates_and_later_runs_write_nothing() {
    let (bao, token) = server();
    let first = run(&bao, &token, &[]);
    assert_exit(&first, 0);
    assert_eq!(versions(&bao), [1, 1, 1]);
    assert!(
        first.messages().contains(&"istio CA converged".to_owned()),
        "{}",
        first.stderr
    );

    let second = run(&bao, &token, &[]);
    assert_exit(&second, 0);
    assert_eq!(versions(&bao), [1, 1, 1], "a second run wrote");
    assert_eq!(
        second.messages().last().unwrap(),
        "istio CA verified; nothing to do"
    );
    assert_eq!(second.last_field("writes"), Some(0.into()));
    assert_eq!(
        first.last_field("root_fingerprint"),
        second.last_field("root_fingerprint")
    );

    // The cluster entry holds exactly the cacerts files plus two dates.
    let json = bao
        .cli(&[
            "kv",
            "get",
            "-format=json",
            "-mount=secret",
            "istio/clusters/nas",
        ])
        .ok()
        .stdout;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut fields: Vec<_> = json["data"]["data"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "created",
            "not_after",
            "root-cert.pem"
        ]
    );
    let mut root_fields: Vec<_> = {
        let json = bao
            .cli(&["kv", "get", "-format=json", "-mount=secret", "istio/ca"])
            .ok()
            .stdout;
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        json["data"]["data"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    root_fields.sort();
    assert_eq!(
        root_fields,
        ["created", "fingerprint", "root-cert.pem", "root-key.pem"]
    );

    // What an ExternalSecret would copy into istio-system/cacerts passes openssl verify, and
    // both clusters share the root.
    for cluster in ["homelab", "nas"] {
        let dir = Scratch::new();
        for file in ["ca-cert.pem", "root-cert.pem", "cert-chain.pem"] {
            dir.write(
                file,
                bao.kv_field(&format!("istio/clusters/{cluster}"), file),
            );
        }
        let ran = verify_cacerts(dir.path()).ok();
        assert_eq!(ran.stdout.trim(), "ca-cert.pem: OK");
    }
    assert_eq!(
        bao.kv_field("istio/clusters/homelab", "root-cert.pem"),
        bao.kv_field("istio/ca", "root-cert.pem")
    );
}

/// Eight runs started together, each in its own directory, all waited for.
fn eight_runs_at_once(bao: &OpenBao, token: &str) -> Vec<JobRun> {
    let dirs: Vec<Scratch> = (0..8).map(|_| Scratch::new()).collect();
    let children: Vec<_> = dirs
        .iter()
        .map(|d| {
            spawn_job(
                JOB,
                &[("VAULT_ADDR", bao.addr.as_str()), ("VAULT_TOKEN", token)],
                d.path(),
            )
        })
        .collect();
    children.into_iter().map(wait_job).collect()
}

#[test]
fn concurrent_runs_make_exactly_one_root() {
    let (bao, token) = server();
    let runs = eight_runs_at_once(&bao, &token);
    let stored = bao.kv_field("istio/ca", "fingerprint");
    for run in &runs {
        assert_exit(run, 0);
        assert_eq!(
            run.last_field("root_fingerprint")
                .unwrap()
                .as_str()
                .unwrap(),
            stored.trim()
        );
    }
    assert_eq!(versions(&bao), [1, 1, 1]);
    assert_eq!(
        runs.iter()
            .filter(|r| r.last_field("root_created") == Some(true.into()))
            .count(),
        1
    );
}

fn jwt_server(dir: &Scratch) -> (OpenBao, TokenIssuer) {
    let bao = OpenBao::start();
    bao.policy("istio-ca", FULL_POLICY);
    let issuer = TokenIssuer::new(dir);
    let key = dir.write("sa.pub.pem", &issuer.public_key_pem);
    bao.cli(&["auth", "enable", "jwt"]).ok();
    bao.bootstrap_jwt_auth(
        &key,
        &issuer.issuer,
        &["token_policies=istio-ca", "token_ttl=10m"],
    );
    (bao, issuer)
}

#[test]
fn jwt_login_accepts_the_bound_service_account_only() {
    let dir = Scratch::new();
    let (bao, issuer) = jwt_server(&dir);
    let good = dir.write(
        "good.jwt",
        issuer.token("istio-system", "istio-ca-bootstrap"),
    );
    let addr = bao.addr.clone();
    let vars = |path: &str| -> Vec<(String, String)> {
        vec![
            ("VAULT_ADDR".to_owned(), addr.clone()),
            ("VAULT_AUTH_METHOD".to_owned(), "jwt".to_owned()),
            ("VAULT_SA_TOKEN_PATH".to_owned(), path.to_owned()),
        ]
    };
    let good_vars = vars(good.to_str().unwrap());
    let ok = run_job(JOB, &as_refs(&good_vars), dir.path());
    assert_exit(&ok, 0);
    assert_eq!(versions(&bao), [1, 1, 1]);

    let other_jwt = issuer.token("default", "someone-else");
    let other = dir.write("other.jwt", &other_jwt);
    let other_vars = vars(other.to_str().unwrap());
    let refused = run_job(JOB, &as_refs(&other_vars), dir.path());
    assert_exit(&refused, 3);
    let error = refused.error();
    assert!(
        error.starts_with(
            "log in to 'auth/jwt' was refused: role 'istio-ca-bootstrap': Vault answered 400"
        ),
        "{error}"
    );
    assert!(error.contains("sub"), "Vault's reason is missing: {error}");
    for secret in [
        other_jwt.as_str(),
        std::fs::read_to_string(&good).unwrap().as_str(),
    ] {
        assert!(
            !refused.stderr.contains(secret) && !ok.stderr.contains(secret),
            "a JWT reached the log"
        );
    }
}

/// Vault's Kubernetes auth method asks the cluster's TokenReview API, with the cluster's
/// reviewer token as the bearer; the fake API server answers as a real one, authenticating only
/// the tokens it signed.
#[test]
fn kubernetes_login_through_token_review() {
    let dir = Scratch::new();
    let api = FakeApiServer::start();
    let root = crate::support::openbao::workspace_root();
    for path in [
        "kubernetes/homelab/platform-foundation/istio/namespace",
        "kubernetes/homelab/platform-foundation/istio/ca-bootstrap",
        "kubernetes/homelab/security/vault-auth",
    ] {
        api.load(&crate::support::flux::render(&root.join(path)));
    }
    let reviewer = api
        .secret("vault-auth", "vault-token-reviewer")
        .unwrap()
        .data["token"]
        .clone();
    let reviewer = dir.write("reviewer.jwt", reviewer);
    let good = api.token("istio-system", "istio-ca-bootstrap", &["vault"], 600);
    // Same claims, signed by a key that is not this cluster's.
    let stranger = TokenIssuer::new(&dir).token("istio-system", "istio-ca-bootstrap");

    let bao = OpenBao::start();
    bao.policy("istio-ca", FULL_POLICY);
    bao.cli(&["auth", "enable", "-path=kubernetes-homelab", "kubernetes"])
        .ok();
    // The fake API server speaks plain HTTP; Vault insists on a CA all the same.
    let api_ca = pki_core::istio::generate_istio_root(
        &pki_core::istio::IstioCaParams::default(),
        OffsetDateTime::now_utc(),
    )
    .unwrap()
    .certificate
    .to_pem();
    let api_ca = dir.write("api-ca.pem", api_ca);
    bao.kubernetes_auth_config("kubernetes-homelab", &api.url, &api_ca, Some(&reviewer));
    bao.cli(&[
        "write",
        "auth/kubernetes-homelab/role/istio-ca-bootstrap",
        "bound_service_account_names=istio-ca-bootstrap",
        "bound_service_account_namespaces=istio-system",
        "audience=vault",
        "token_policies=istio-ca",
        "token_ttl=10m",
    ])
    .ok();

    let login = |token: &str| {
        let file = dir.write("sa.jwt", token);
        let vars = [
            ("VAULT_ADDR".to_owned(), bao.addr.clone()),
            (
                "VAULT_AUTH_MOUNT".to_owned(),
                "kubernetes-homelab".to_owned(),
            ),
            ("VAULT_SA_TOKEN_PATH".to_owned(), file.display().to_string()),
        ];
        run_job(JOB, &as_refs(&vars), dir.path())
    };
    let ok = login(&good);
    assert_exit(&ok, 0);
    assert_eq!(versions(&bao), [1, 1, 1]);
    assert_eq!(api.token_review_codes(), [201]);

    // A well-formed token the cluster never issued: TokenReview says no, and so does Vault.
    let refused = login(&stranger);
    assert_exit(&refused, 3);
    let error = refused.error();
    assert!(error.starts_with("log in to 'auth/kubernetes-homelab' was refused: role 'istio-ca-bootstrap': Vault answered 403"), "{error}");
    assert!(
        !refused.stderr.contains(&stranger) && !ok.stderr.contains(&good),
        "a JWT reached the log"
    );
}

#[test]
fn a_policy_without_write_access_writes_nothing() {
    let bao = OpenBao::start();
    bao.policy(
        "read-only",
        r#"path "secret/data/istio/*" { capabilities = ["read"] }"#,
    );
    let token = bao.token(&["read-only"]);
    let refused = run(&bao, &token, &[]);
    assert_exit(&refused, 6);
    let error = refused.error();
    assert!(
        error.starts_with("write 'secret/istio/ca' was refused: Vault answered 403: "),
        "{error}"
    );
    assert!(error.contains("permission denied"), "{error}");
    assert_eq!(versions(&bao), [0, 0, 0]);
}

#[test]
fn an_unreachable_vault_fails_after_bounded_retries() {
    let addr = format!("http://127.0.0.1:{}", free_port());
    let dir = Scratch::new();
    let started = std::time::Instant::now();
    let run = run_job(
        JOB,
        &[
            ("VAULT_ADDR", &addr),
            ("VAULT_TOKEN", "t"),
            ("VAULT_MAX_ATTEMPTS", "3"),
        ],
        dir.path(),
    );
    assert_exit(&run, 4);
    let error = run.error();
    assert!(
        error.starts_with("read 'secret/istio/clusters/homelab' failed: cannot reach Vault: "),
        "{error}"
    );
    assert!(error.ends_with("(after 3 attempts)"), "{error}");
    assert_eq!(
        run.messages()
            .iter()
            .filter(|m| m.contains("retrying"))
            .count(),
        2
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn a_run_that_died_halfway_is_finished_by_the_next() {
    let bao = OpenBao::start();
    // Root writable, cluster bundles not: the run stops after writing the root, as one that
    // lost Vault between its writes would.
    bao.policy(
        "root-only",
        r#"path "secret/data/istio/ca" { capabilities = ["create", "read", "update"] }
path "secret/data/istio/clusters/*" { capabilities = ["read"] }"#,
    );
    let partial = run(&bao, &bao.token(&["root-only"]), &[]);
    assert_exit(&partial, 6);
    assert_eq!(versions(&bao), [1, 0, 0]);
    let fingerprint = bao.kv_field("istio/ca", "fingerprint");

    bao.policy("istio-ca", FULL_POLICY);
    let token = bao.token(&["istio-ca"]);
    assert_next_run_finishes_with_the_same_root(&bao, &token, &fingerprint);
}

/// After a run that stopped between its writes: the next run writes the missing bundles and
/// keeps the root that run created.
#[track_caller]
fn assert_next_run_finishes_with_the_same_root(bao: &OpenBao, token: &str, fingerprint: &str) {
    let next = run(bao, token, &[]);
    assert_exit(&next, 0);
    assert_eq!(versions(bao), [1, 1, 1]);
    assert_eq!(
        bao.kv_field("istio/ca", "fingerprint"),
        fingerprint,
        "the root was replaced"
    );
}

/// A run through a proxy that cuts the connection to Vault after six requests, with
/// `attempts` as `VAULT_MAX_ATTEMPTS`: it fails with exit 4, cannot reach Vault to write
/// `secret/<write>`.
#[track_caller]
fn run_cut_after_six_requests(bao: &OpenBao, token: &str, attempts: &str, write: &str) -> JobRun {
    let proxy = CutProxy::start(bao.addr.trim_start_matches("http://"), 6);
    let dir = Scratch::new();
    let cut = run_job(
        JOB,
        &[
            ("VAULT_ADDR", proxy.addr.as_str()),
            ("VAULT_TOKEN", token),
            ("VAULT_MAX_ATTEMPTS", attempts),
        ],
        dir.path(),
    );
    assert_exit(&cut, 4);
    assert!(
        cut.error().starts_with(&format!(
            "write 'secret/{write}' failed: cannot reach Vault: "
        )),
        "{}",
        cut.error()
    );
    cut
}

/// Vault goes away right after the root is written (request 6 of the run: three reads, the
/// check that the empty mount is KV v2, the rotation record's look-up, then the root's
/// create-only write). The run retries, gives up with exit 4; the next run against a healthy
/// Vault finishes the job with the same root.
#[test]
fn vault_stopped_in_the_middle_of_a_run() {
    let (bao, token) = server();
    let cut = run_cut_after_six_requests(&bao, &token, "3", "istio/clusters/homelab");
    assert!(
        cut.error().ends_with("(after 3 attempts)"),
        "{}",
        cut.error()
    );
    assert_eq!(versions(&bao), [1, 0, 0]);
    let fingerprint = bao.kv_field("istio/ca", "fingerprint");

    assert_next_run_finishes_with_the_same_root(&bao, &token, &fingerprint);
}

#[test]
fn a_cluster_added_later_gets_only_its_own_bundle() {
    let (bao, token) = server();
    assert_exit(&run(&bao, &token, &[]), 0);
    let added = run(&bao, &token, &[("ISTIO_CLUSTERS", "homelab,nas,edge")]);
    assert_exit(&added, 0);
    assert_eq!(versions(&bao), [1, 1, 1]);
    assert_eq!(bao.kv_version("istio/clusters/edge"), 1);
    assert_eq!(
        added.last_field("clusters").unwrap(),
        "homelab=kept (729d), nas=kept (729d), edge=issued (729d)"
    );
}

#[test]
fn an_intermediate_due_for_renewal_is_reissued_and_the_root_kept() {
    let (bao, token) = server();
    assert_exit(&run(&bao, &token, &[]), 0);
    let root = bao.kv_field("istio/ca", "fingerprint");
    let old = bao.kv_field("istio/clusters/nas", "ca-cert.pem");
    // 731 days left is "due" for a 730-day intermediate: every cluster is renewed.
    let renewed = run(&bao, &token, &[("RENEW_MIN_DAYS_LEFT", "731")]);
    assert_exit(&renewed, 0);
    assert_eq!(versions(&bao), [1, 2, 2]);
    assert_eq!(
        renewed.last_field("clusters").unwrap(),
        "homelab=renewed (729d), nas=renewed (729d)"
    );
    assert_ne!(bao.kv_field("istio/clusters/nas", "ca-cert.pem"), old);
    assert_eq!(bao.kv_field("istio/ca", "fingerprint"), root);
    assert_exit(&run(&bao, &token, &[]), 0);
    assert_eq!(
        versions(&bao),
        [1, 2, 2],
        "a renewed bundle was renewed again"
    );
}

/// Vault behind TLS (`bao server -dev-tls`): `VAULT_CACERT` makes it trusted; without it the
/// connection is refused, not silently accepted.
#[test]
fn tls_is_verified_against_vault_cacert() {
    let bao = OpenBao::start_tls();
    let ca = bao.tls_ca.clone().unwrap();
    let dir = Scratch::new();
    let base = [
        ("VAULT_ADDR", bao.addr.as_str()),
        ("VAULT_TOKEN", crate::support::openbao::ROOT_TOKEN),
        ("VAULT_MAX_ATTEMPTS", "1"),
    ];
    let untrusted = run_job(JOB, &base, dir.path());
    assert_exit(&untrusted, 4);
    assert!(
        untrusted.error().contains("cannot reach Vault"),
        "{}",
        untrusted.error()
    );
    let mut vars = base.to_vec();
    vars.push(("VAULT_CACERT", ca.to_str().unwrap()));
    assert_exit(&run_job(JOB, &vars, dir.path()), 0);
    assert_eq!(bao.kv_version("istio/ca"), 1);
}

#[test]
fn secrets_never_reach_the_logs() {
    let (bao, token) = server();
    let runs = [
        run(&bao, &token, &[("RUST_LOG", "trace")]),
        run(&bao, &token, &[("RUST_LOG", "trace")]),
    ];
    let root_key = bao.kv_field("istio/ca", "root-key.pem");
    let ca_key = bao.kv_field("istio/clusters/nas", "ca-key.pem");
    let key_body = |pem: &str| pem.lines().nth(1).unwrap().to_owned();
    for run in &runs {
        assert_exit(run, 0);
        assert!(!run.stderr.contains("PRIVATE KEY"));
        assert!(
            !run.stderr.contains(&key_body(&root_key)) && !run.stderr.contains(&key_body(&ca_key))
        );
        assert!(
            !run.stderr.contains(&token),
            "the Vault token reached the log"
        );
    }
}

/// A self-signed certificate that is not a CA, made by openssl, with its key.
fn self_signed_leaf() -> (String, String) {
    let leaf_dir = Scratch::new();
    crate::support::tools::run(
        "sh",
        &["-ec", "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout leaf-key.pem \\
                  -out leaf.pem -subj /CN=leaf -days 30 -addext basicConstraints=critical,CA:FALSE 2>/dev/null"],
        leaf_dir.path(),
    )
    .ok();
    let read = |name: &str| std::fs::read_to_string(leaf_dir.path().join(name)).unwrap();
    (read("leaf.pem"), read("leaf-key.pem"))
}

/// (path, fields written, expected error prefix)
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

/// Each invalid state: the exact error, exit 5, and the entry left at its version.
#[test]
fn invalid_existing_state_is_refused_without_a_write() {
    let (bao, token) = server();
    assert_exit(&run(&bao, &token, &[]), 0);
    let root_cert = bao.kv_field("istio/ca", "root-cert.pem");
    let root_key = bao.kv_field("istio/ca", "root-key.pem");
    let nas_key = bao.kv_field("istio/clusters/nas", "ca-key.pem");
    let other_root = generate_root_ca(
        &CaParams {
            subject: SubjectName::new("Istio", "Root CA"),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            validity: Duration::days(10),
        },
        OffsetDateTime::now_utc() - Duration::days(20),
    )
    .unwrap();
    let other_cert = other_root.certificate.to_pem();
    let other_key = other_root.key_pem();
    let nas_cert = bao.kv_field("istio/clusters/nas", "ca-cert.pem");

    let (leaf_cert, leaf_key) = self_signed_leaf();
    let cases: Vec<Case> = vec![
        (
            "istio/ca",
            vec![("root-cert.pem", &leaf_cert), ("root-key.pem", &leaf_key)],
            "invalid state at 'secret/istio/ca': root-cert.pem is not a CA certificate: basicConstraints does not say CA:TRUE",
        ),
        (
            "istio/ca",
            vec![("root-cert.pem", &root_cert), ("root-key.pem", &nas_key)],
            "invalid state at 'secret/istio/ca': root-key.pem does not match root-cert.pem",
        ),
        (
            "istio/ca",
            vec![("root-cert.pem", "garbage"), ("root-key.pem", &root_key)],
            "invalid state at 'secret/istio/ca': root-cert.pem holds no CERTIFICATE",
        ),
        (
            "istio/ca",
            vec![("root-cert.pem", &root_cert)],
            "invalid state at 'secret/istio/ca': not a root entry: fields found: root-cert.pem; expected ",
        ),
        (
            "istio/ca",
            vec![("root-cert.pem", &nas_cert), ("root-key.pem", &nas_key)],
            "invalid state at 'secret/istio/ca': root-cert.pem is not self-signed",
        ),
        (
            "istio/ca",
            vec![
                ("root-cert.pem", &other_cert),
                ("root-key.pem", other_key.expose()),
            ],
            "invalid state at 'secret/istio/ca': root-cert.pem expired on ",
        ),
    ];
    for (path, fields, expected) in cases {
        bao.kv_put(path, &fields);
        let before = versions(&bao);
        let refused = run(&bao, &token, &[]);
        assert_exit(&refused, 5);
        assert!(
            refused.error().starts_with(expected),
            "expected '{expected}', got '{}'",
            refused.error()
        );
        assert_eq!(versions(&bao), before, "something was written");
    }
}

#[test]
fn a_cluster_bundle_from_another_root_is_refused() {
    let (bao, token) = server();
    assert_exit(&run(&bao, &token, &[]), 0);
    // A cluster bundle from another root, under the valid stored root.
    let edge = pki_core::istio::issue_cluster_bundle(
        &pki_core::istio::generate_istio_root(
            &pki_core::istio::IstioCaParams::default(),
            OffsetDateTime::now_utc(),
        )
        .unwrap(),
        "nas",
        &pki_core::istio::IstioCaParams::default(),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let files = edge.files();
    bao.kv_put("istio/clusters/nas", &files);
    let before = versions(&bao);
    let refused = run(&bao, &token, &[]);
    assert_exit(&refused, 5);
    let error = refused.error();
    assert!(
        error.starts_with("invalid state at 'secret/istio/clusters': 'secret/istio/clusters/nas': root-cert.pem (fingerprint "),
        "{error}"
    );
    assert!(
        error.contains(") is not the stored root (fingerprint "),
        "{error}"
    );
    assert_eq!(versions(&bao), before);
}

/// `secret/istio/ca` as the previous scripts' bootstrap Job wrote it: an ECDSA root made with
/// openssl, `cert-chain.pem` holding the root itself, then one `vault kv put`. Returns the
/// root's SHA-256 fingerprint as openssl prints it.
pub fn previous_scripts_root(bao: &OpenBao) -> String {
    let ran = bao
        .shell(
            "d=$(mktemp -d) && cd \"$d\"
             openssl ecparam -name prime256v1 -genkey -noout -out key.pem 2>/dev/null
             openssl req -x509 -new -key key.pem -days 3650 -subj '/O=Istio/CN=Root CA' \
               -addext 'basicConstraints=critical,CA:true' \
               -addext 'keyUsage=critical,keyCertSign,cRLSign' -out root-cert.pem
             cp root-cert.pem cert-chain.pem
             vault kv put secret/istio/ca root-cert.pem=@root-cert.pem cert-chain.pem=@cert-chain.pem \
               key.pem=@key.pem >/dev/null
             openssl x509 -noout -fingerprint -sha256 -in root-cert.pem
             rm -rf \"$d\"",
        )
        .ok();
    ran.stdout.trim().split_once('=').unwrap().1.to_owned()
}

/// The fields of `secret/<path>`, sorted, with their values.
fn kv_fields(bao: &OpenBao, path: &str) -> Vec<(String, String)> {
    let json = bao
        .cli(&["kv", "get", "-format=json", "-mount=secret", path])
        .ok()
        .stdout;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut fields: Vec<(String, String)> = json["data"]["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    fields.sort();
    fields
}

#[test]
fn the_previous_scripts_root_is_adopted_and_never_rewritten() {
    let (bao, token) = server();
    let fingerprint = previous_scripts_root(&bao);
    let before = kv_fields(&bao, "istio/ca");
    assert_eq!(
        before.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["cert-chain.pem", "key.pem", "root-cert.pem"]
    );

    let first = run(&bao, &token, &[]);
    assert_exit(&first, 0);
    assert_eq!(versions(&bao), [1, 1, 1]);
    assert_eq!(
        kv_fields(&bao, "istio/ca"),
        before,
        "the root entry changed"
    );
    assert_eq!(
        first.last_field("root_fingerprint").unwrap(),
        fingerprint.as_str()
    );
    assert_eq!(first.last_field("root_layout").unwrap(), "previous-scripts");
    assert!(
        first.messages().contains(
            &"adopted the Istio root the previous scripts wrote; its fields are left as they are"
                .to_owned()
        ),
        "{}",
        first.stderr
    );
    assert_eq!(first.last_field("root_created"), Some(false.into()));

    // Each cluster's intermediate chains to the previous root, checked by openssl against
    // the root file the previous scripts wrote.
    for cluster in ["homelab", "nas"] {
        let dir = Scratch::new();
        for file in ["ca-cert.pem", "cert-chain.pem"] {
            dir.write(
                file,
                bao.kv_field(&format!("istio/clusters/{cluster}"), file),
            );
        }
        dir.write("root-cert.pem", bao.kv_field("istio/ca", "root-cert.pem"));
        assert_eq!(
            verify_cacerts(dir.path()).ok().stdout.trim(),
            "ca-cert.pem: OK"
        );
    }

    let second = run(&bao, &token, &[]);
    assert_exit(&second, 0);
    assert_eq!(versions(&bao), [1, 1, 1], "a second run wrote");
    assert_eq!(second.last_field("writes"), Some(0.into()));
}

/// Shapes that are neither layout, written as an operator would with the CLI: exit 5, the
/// path, the fields found and the fields expected, and nothing written anywhere.
#[test]
fn a_root_entry_of_another_shape_is_refused_naming_its_fields() {
    let (bao, token) = server();
    let expected = "expected root-cert.pem and root-key.pem (optionally with created and \
                    fingerprint), as this job writes it, or exactly root-cert.pem, \
                    cert-chain.pem and key.pem, as the previous scripts wrote it";
    let cases = [
        (
            // A TLS-style Secret copied into Vault.
            "vault kv put secret/istio/ca tls.crt=@root-cert.pem tls.key=@key.pem",
            format!("not a root entry: fields found: tls.crt, tls.key; {expected}"),
        ),
        (
            // The previous layout, half written.
            "vault kv put secret/istio/ca root-cert.pem=@root-cert.pem key.pem=@key.pem",
            format!("not a root entry: fields found: key.pem, root-cert.pem; {expected}"),
        ),
        (
            // The previous layout with a field added by hand.
            "vault kv put secret/istio/ca root-cert.pem=@root-cert.pem cert-chain.pem=@root-cert.pem \
             key.pem=@key.pem created=2024-01-01",
            format!(
                "not a root entry: fields found: cert-chain.pem, created, key.pem, root-cert.pem; {expected}"
            ),
        ),
        (
            // Both layouts' key fields at once: which key is meant cannot be told.
            "vault kv put secret/istio/ca root-cert.pem=@root-cert.pem root-key.pem=@key.pem key.pem=@key.pem",
            format!(
                "not a root entry: fields found: key.pem, root-cert.pem, root-key.pem; {expected}"
            ),
        ),
        (
            "vault kv put secret/istio/ca root-cert.pem=@root-cert.pem cert-chain.pem=@root-cert.pem \
             key.pem=@other-key.pem",
            "key.pem does not match root-cert.pem".to_owned(),
        ),
        (
            // A chain that is not the root itself: the previous layout signs with the root.
            "cat other.pem root-cert.pem > chain.pem
             vault kv put secret/istio/ca root-cert.pem=@root-cert.pem cert-chain.pem=@chain.pem key.pem=@key.pem",
            "cert-chain.pem is not a valid chain: it must hold root-cert.pem alone (a root that \
             signs is its own chain), but holds 2 certificates"
                .to_owned(),
        ),
    ];
    for (command, problem) in cases {
        bao.shell(&format!(
            "d=$(mktemp -d) && cd \"$d\"
             openssl ecparam -name prime256v1 -genkey -noout -out key.pem 2>/dev/null
             openssl ecparam -name prime256v1 -genkey -noout -out other-key.pem 2>/dev/null
             openssl req -x509 -new -key key.pem -days 30 -subj '/CN=Root CA' \
               -addext 'basicConstraints=critical,CA:true' -out root-cert.pem
             openssl req -x509 -new -key other-key.pem -days 30 -subj '/CN=Other' \
               -addext 'basicConstraints=critical,CA:true' -out other.pem
             {command} >/dev/null
             rm -rf \"$d\""
        ))
        .ok();
        let before = versions(&bao);
        let refused = run(&bao, &token, &[]);
        assert_exit(&refused, 5);
        assert_eq!(
            refused.error(),
            format!("invalid state at 'secret/istio/ca': {problem}"),
            "for: {command}"
        );
        assert_eq!(versions(&bao), before, "something was written");
        assert_eq!(before[1..], [0, 0]);
    }
}

/// Vault goes away after the first intermediate under the previous root is written (three
/// reads, the check that the mount is KV v2, the rotation record's lookup, then homelab's
/// write). The next run issues the other one and keeps both the root entry and the first
/// bundle as they are.
#[test]
fn a_half_written_adoption_is_finished_by_the_next_run() {
    let (bao, token) = server();
    let fingerprint = previous_scripts_root(&bao);
    let root_fields = kv_fields(&bao, "istio/ca");
    run_cut_after_six_requests(&bao, &token, "2", "istio/clusters/nas");
    assert_eq!(versions(&bao), [1, 1, 0]);
    let homelab = bao.kv_field("istio/clusters/homelab", "ca-cert.pem");

    let next = run(&bao, &token, &[]);
    assert_exit(&next, 0);
    assert_eq!(versions(&bao), [1, 1, 1]);
    assert_eq!(
        next.last_field("clusters").unwrap(),
        "homelab=kept (729d), nas=issued (729d)"
    );
    assert_eq!(
        bao.kv_field("istio/clusters/homelab", "ca-cert.pem"),
        homelab
    );
    assert_eq!(kv_fields(&bao, "istio/ca"), root_fields);
    assert_eq!(
        next.last_field("root_fingerprint").unwrap(),
        fingerprint.as_str()
    );
}

#[test]
fn eight_runs_adopting_at_once_issue_one_intermediate_per_cluster() {
    let (bao, token) = server();
    let fingerprint = previous_scripts_root(&bao);
    let root_fields = kv_fields(&bao, "istio/ca");
    let runs = eight_runs_at_once(&bao, &token);
    for run in &runs {
        assert_exit(run, 0);
        assert_eq!(
            run.last_field("root_fingerprint").unwrap(),
            fingerprint.as_str()
        );
        assert_eq!(run.last_field("root_created"), Some(false.into()));
    }
    assert_eq!(versions(&bao), [1, 1, 1]);
    assert_eq!(kv_fields(&bao, "istio/ca"), root_fields);
    for cluster in ["homelab", "nas"] {
        let issued = runs
            .iter()
            .filter(|r| {
                r.last_field("clusters")
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .contains(&format!("{cluster}=issued"))
            })
            .count();
        assert_eq!(issued, 1, "{cluster} issued by {issued} runs");
    }
}

#[test]
fn plan_lists_the_writes_of_a_first_run_and_makes_none() {
    let (bao, token) = server();
    let dir = Scratch::new();
    let vars = [
        ("VAULT_ADDR", bao.addr.as_str()),
        ("VAULT_TOKEN", token.as_str()),
    ];
    let plan = |args: &[&str]| {
        crate::support::jobs::wait_job(crate::support::jobs::spawn_job_with_args(
            JOB,
            args,
            &vars,
            dir.path(),
        ))
    };
    let first = plan(&["plan", "-o", "json"]);
    assert_exit(&first, 10);
    let planned = first.stdout_json();
    assert_eq!(
        field_pairs(&planned, "changes", "action", "object"),
        [
            ("create", "Istio root CA"),
            ("issue", "cluster homelab"),
            ("issue", "cluster nas"),
        ]
    );
    assert_eq!(
        field_pairs(&planned, "store_writes", "action", "path"),
        [
            ("create", "istio/ca"),
            ("create", "istio/clusters/homelab"),
            ("create", "istio/clusters/nas"),
        ]
    );
    assert_eq!(versions(&bao), [0, 0, 0], "a plan writes nothing");
    // No log line narrates a write the plan did not make.
    assert!(!first.stderr.contains("created"), "{}", first.stderr);

    assert_exit(&run(&bao, &token, &[]), 0);
    let table = plan(&["plan"]);
    assert_exit(&table, 0);
    assert!(
        table
            .stdout
            .contains("no changes: a run would write nothing"),
        "{}",
        table.stdout
    );
    assert_eq!(versions(&bao), [1, 1, 1]);
}
