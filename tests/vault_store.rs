//! What the jobs make of Vault's answers, against a real OpenBao (and, for an address that is
//! not Vault, a real web server): a server that is not Vault, a KV version 1 mount, a deleted
//! or destroyed latest version, and a token that is invalid, expired or revoked each exit with
//! their own documented code and message, and nothing is written.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::jobs::{JobRun, run_job};
use crate::support::kube_api::FakeApiServer;
use crate::support::openbao::{OpenBao, ROOT_TOKEN, free_port};
use crate::support::tools::Scratch;

#[track_caller]
fn assert_exit(run: &JobRun, code: i32) {
    assert_eq!(run.code, code, "exit code; stderr:\n{}", run.stderr);
}

fn bootstrap(addr: &str, token: &str, extra: &[(&str, &str)]) -> JobRun {
    let dir = Scratch::new();
    let mut vars = vec![
        ("VAULT_ADDR", addr),
        ("VAULT_TOKEN", token),
        ("VAULT_MAX_ATTEMPTS", "2"),
    ];
    vars.extend_from_slice(extra);
    run_job("bootstrap-job", &vars, dir.path())
}

fn versions(bao: &OpenBao) -> [u64; 3] {
    ["istio/ca", "istio/clusters/homelab", "istio/clusters/nas"].map(|p| bao.kv_version(p))
}

/// Python's `http.server` serving an empty directory: a real web server that is not Vault,
/// answering 404 with an HTML page, as a mistyped address or an ingress' default back end
/// would. Its log (stderr) lists every request it received.
struct WebServer {
    child: Child,
    addr: String,
    dir: Scratch,
}

impl WebServer {
    fn start() -> Self {
        let dir = Scratch::new();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("requests.log")).unwrap();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(dir.path().join("www"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("python3 is a test prerequisite (scripts/install-test-peers.sh)");
        std::fs::create_dir_all(dir.path().join("www")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "python3 -m http.server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            addr: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    /// The request lines it logged, as `GET /v1/...`.
    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("requests.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let start = l.find('"')? + 1;
                let end = start + l[start..].find(" HTTP/")?;
                // The path without its query: the client may add an empty one.
                Some(l[start..end].trim_end_matches('?').to_owned())
            })
            .collect()
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_address_where_no_vault_answers_is_a_configuration_error() {
    let web = WebServer::start();
    let refused = bootstrap(&web.addr, "some-token", &[]);
    assert_exit(&refused, 2);
    let expected = format!(
        "invalid VAULT_ADDR: {}/ does not answer as Vault or OpenBao: read \
         'secret/istio/clusters/homelab': the server answered 404 with a body that is not \
         Vault's JSON: \"<!DOCTYPE HTML>",
        web.addr
    );
    assert!(
        refused.error().starts_with(&expected),
        "{}",
        refused.error()
    );
    // One request, refused at once (a 404 page cannot pass), and nothing but reads.
    assert_eq!(
        web.requests(),
        ["GET /v1/secret/data/istio/clusters/homelab"],
        "{}",
        refused.stderr
    );

    // Logging in through a Kubernetes auth mount meets the same server.
    let dir = Scratch::new();
    let jwt = dir.write("sa.jwt", "a.b.c");
    let login = run_job(
        "bootstrap-job",
        &[
            ("VAULT_ADDR", web.addr.as_str()),
            ("VAULT_SA_TOKEN_PATH", jwt.to_str().unwrap()),
        ],
        dir.path(),
    );
    assert_exit(&login, 2);
    assert!(
        login.error().starts_with(&format!(
            "invalid VAULT_ADDR: {}/ does not answer as Vault or OpenBao: log in to \
             'auth/kubernetes': the server answered 501 with a body that is not Vault's JSON: ",
            web.addr
        )),
        "{}",
        login.error()
    );
}

#[test]
fn a_missing_or_version_1_kv_mount_is_a_configuration_error() {
    let bao = OpenBao::start();
    bao.cli(&["secrets", "enable", "-path=kv1", "kv"]).ok();
    let v1 = bootstrap(&bao.addr, ROOT_TOKEN, &[("VAULT_KV_MOUNT", "kv1")]);
    assert_exit(&v1, 2);
    assert_eq!(
        v1.error(),
        format!(
            "invalid VAULT_KV_MOUNT: 'kv1' on {}/ is a KV version 1 mount; the jobs keep \
             versioned entries written with check-and-set, which needs KV version 2 (`bao kv \
             enable-versioning kv1`, or name a KV version 2 mount)",
            bao.addr
        )
    );
    // A KV v1 mount would have taken `kv1/data/istio/ca` as a key of its own: nothing there.
    let listed = bao.cli(&["list", "kv1/"]);
    assert!(
        !listed.success && listed.all().contains("No value found"),
        "{}",
        listed.all()
    );

    bao.cli(&["secrets", "enable", "-path=transit", "transit"])
        .ok();
    let transit = bootstrap(&bao.addr, ROOT_TOKEN, &[("VAULT_KV_MOUNT", "transit")]);
    assert_exit(&transit, 2);
    assert!(
        transit
            .error()
            .starts_with("invalid VAULT_KV_MOUNT: 'transit' on "),
        "{}",
        transit.error()
    );

    let missing = bootstrap(&bao.addr, ROOT_TOKEN, &[("VAULT_KV_MOUNT", "kv")]);
    assert_exit(&missing, 2);
    assert_eq!(
        missing.error(),
        format!(
            "invalid VAULT_KV_MOUNT: 'kv' is not a secrets engine mount on {}/ (read \
             'kv/istio/clusters/homelab': Vault answered 404: no handler for route \
             \"kv/data/istio/clusters/homelab\". route entry not found.); enable KV version 2 \
             there (`bao secrets enable -path=kv kv-v2`) or name the right mount",
            bao.addr
        )
    );
    assert_eq!(versions(&bao), [0, 0, 0]);
}

/// `bao kv delete` of the root: the entry is not absent, and a job that took it for absent
/// would create a second root. Refused with the way back named, and nothing written.
#[test]
fn a_deleted_or_destroyed_latest_version_is_not_taken_for_absent() {
    let bao = OpenBao::start();
    assert_exit(&bootstrap(&bao.addr, ROOT_TOKEN, &[]), 0);
    let fingerprint = bao.kv_field("istio/ca", "fingerprint");
    bao.cli(&["kv", "delete", "-mount=secret", "istio/ca"]).ok();
    let refused = bootstrap(&bao.addr, ROOT_TOKEN, &[]);
    assert_exit(&refused, 5);
    let error = refused.error();
    assert!(
        error.starts_with(
            "invalid state at 'secret/istio/ca': its latest version (1) was deleted at 20"
        ),
        "{error}"
    );
    assert!(
        error.ends_with(
            "; the entry is neither absent nor usable, so nothing was written (undelete it: `bao \
             kv undelete -mount=secret -versions=1 istio/ca`; or remove the entry with its \
             history to start over: `bao kv metadata delete -mount=secret istio/ca`)"
        ),
        "{error}"
    );
    assert_eq!(versions(&bao), [1, 1, 1], "something was written");

    // The way back the message names works, and the root is the one created first.
    bao.cli(&["kv", "undelete", "-mount=secret", "-versions=1", "istio/ca"])
        .ok();
    assert_exit(&bootstrap(&bao.addr, ROOT_TOKEN, &[]), 0);
    assert_eq!(bao.kv_field("istio/ca", "fingerprint"), fingerprint);

    bao.cli(&[
        "kv",
        "destroy",
        "-mount=secret",
        "-versions=1",
        "istio/clusters/nas",
    ])
    .ok();
    let destroyed = bootstrap(&bao.addr, ROOT_TOKEN, &[]);
    assert_exit(&destroyed, 5);
    assert_eq!(
        destroyed.error(),
        "invalid state at 'secret/istio/clusters/nas': its latest version (1) was destroyed; \
         the entry is neither absent nor usable, so nothing was written (write an earlier \
         version back: `bao kv rollback -mount=secret -version=<n> istio/clusters/nas`; or \
         remove the entry with its history to start over: `bao kv metadata delete \
         -mount=secret istio/clusters/nas`)"
    );
    assert_eq!(versions(&bao), [1, 1, 1], "something was written");
}

/// nas-sync-job meets a deleted bundle: the Secret in the cluster is left as it was.
#[test]
fn a_deleted_bundle_is_not_synced_as_absent() {
    let bao = OpenBao::start();
    assert_exit(&bootstrap(&bao.addr, ROOT_TOKEN, &[]), 0);
    let api = FakeApiServer::start_nas();
    let dir = Scratch::new();
    let kubeconfig = api.nas_sync_kubeconfig(&dir);
    let sync = || {
        run_job(
            "nas-sync-job",
            &[
                ("VAULT_ADDR", bao.addr.as_str()),
                ("VAULT_TOKEN", ROOT_TOKEN),
                ("KUBECONFIG", kubeconfig.to_str().unwrap()),
                ("VAULT_MAX_ATTEMPTS", "2"),
            ],
            dir.path(),
        )
    };
    assert_exit(&sync(), 0);
    let before = api.secret("istio-system", "cacerts").unwrap();
    bao.cli(&["kv", "delete", "-mount=secret", "istio/clusters/nas"])
        .ok();
    let refused = sync();
    assert_exit(&refused, 5);
    assert!(
        refused.error().contains(
            "invalid state at 'secret/istio/clusters/nas': its latest version (1) was deleted at "
        ),
        "{}",
        refused.error()
    );
    let after = api.secret("istio-system", "cacerts").unwrap();
    assert_eq!(after.resource_version, before.resource_version);
    assert_eq!(api.count("PATCH"), 1);
}

/// Vault answers 403 both for a token it does not know and for a policy that refuses; the job
/// tells them apart and exits 3 (authentication) for the first, 6 (policy) for the second.
#[test]
fn an_invalid_expired_or_revoked_token_is_an_authentication_failure() {
    let bao = OpenBao::start();
    bao.policy(
        "istio-ca",
        r#"path "secret/data/istio/*" { capabilities = ["create", "read", "update"] }"#,
    );
    let expiring = bao
        .cli(&[
            "token",
            "create",
            "-field=token",
            "-ttl=1s",
            "-policy=istio-ca",
        ])
        .ok()
        .stdout
        .trim()
        .to_owned();
    let revoked = bao.token(&["istio-ca"]);
    bao.cli(&["token", "revoke", &revoked]).ok();
    std::thread::sleep(Duration::from_millis(1500));
    for token in ["not-a-token", expiring.as_str(), revoked.as_str()] {
        let refused = bootstrap(&bao.addr, token, &[]);
        assert_exit(&refused, 3);
        assert_eq!(
            refused.error(),
            "read 'secret/istio/clusters/homelab' was refused: Vault answered 403: permission \
             denied; the token itself is not accepted (invalid, expired or revoked): Vault \
             refuses its auth/token/lookup-self too"
        );
        assert!(!refused.stderr.contains(token), "the token reached the log");
    }
    assert_eq!(versions(&bao), [0, 0, 0]);

    // A valid token whose policy refuses the read stays a policy refusal.
    let narrow = bao.token(&["default"]);
    let denied = bootstrap(&bao.addr, &narrow, &[]);
    assert_exit(&denied, 6);
    assert_eq!(
        denied.error(),
        "read 'secret/istio/clusters/homelab' was refused: Vault answered 403: 1 error \
         occurred:\n\t* permission denied\n\n"
    );
    assert_eq!(versions(&bao), [0, 0, 0]);
}
