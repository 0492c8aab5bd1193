//! `bootstrap-job rotate` end to end, as Istio's own `cacert_rotation` integration test moves a
//! mesh (istio/istio `tests/integration/security/cacert_rotation/main_test.go`), without a
//! cluster: real OpenBao; two over-the-wire fake API servers (homelab, NAS) holding istiod's
//! `istio-ca-secret` and the `cacerts` Secret that nas-sync-job applies from Vault after each
//! step (in the homelab cluster it stands in for the ExternalSecret, which copies the same four
//! fields). After every stage, workload certificates issued by each side's signing CA, with
//! the chain istiod hands out, are put through an mTLS handshake (openssl `s_server` and
//! `s_client`, both with `-verify_return_error`) against the other side's trust bundle, for
//! every pair of clusters at the same stage and one stage apart.
//!
//! Wall time: about 15 s per test on 2 cores (two OpenBao servers in parallel, ~60 job runs,
//! ~50 handshakes).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use pki_core::istio::IstioCaBundle;
use pki_core::istio_rotation::mutual_trust;
use pki_core::time::OffsetDateTime;

use crate::bootstrap::previous_scripts_root;
use crate::support::jobs::{JobRun, job_bin};
use crate::support::kube_api::FakeApiServer;
use crate::support::openbao::{OpenBao, ROOT_TOKEN, free_port, workspace_root};
use crate::support::tools::{Scratch, openssl};

const CLUSTERS: [&str; 2] = ["homelab", "nas"];

/// One fake cluster: its API server and a kubeconfig for each identity.
struct Cluster {
    name: &'static str,
    api: FakeApiServer,
    operator_kubeconfig: PathBuf,
    sync_kubeconfig: PathBuf,
    /// istiod's token, for writing `istio-ca-secret` as istiod does.
    istiod_token: String,
}

struct Mesh {
    bao: OpenBao,
    /// The Vault token `rotate` runs with.
    token: String,
    clusters: Vec<Cluster>,
    dir: Scratch,
}

fn assert_exit(run: &JobRun, code: i32) {
    assert_eq!(
        run.code, code,
        "exit code; stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
}

impl Mesh {
    fn new(token_policy: Option<&str>) -> Self {
        let bao = OpenBao::start();
        let token = match token_policy {
            Some(file) => {
                let hcl = std::fs::read_to_string(workspace_root().join(file)).unwrap();
                bao.policy("istio-ca-bootstrap", &hcl);
                bao.token(&["istio-ca-bootstrap"])
            }
            None => ROOT_TOKEN.to_owned(),
        };
        let dir = Scratch::new();
        let clusters = CLUSTERS
            .iter()
            .map(|name| {
                let api = FakeApiServer::start();
                api.create_namespace("istio-system");
                for sa in ["rotation-operator", "istio-ca-sync", "istiod"] {
                    api.create_service_account("istio-system", sa);
                }
                let operator = api.api_token("istio-system", "rotation-operator");
                let sync = api.api_token("istio-system", "istio-ca-sync");
                let istiod_token = api.api_token("istio-system", "istiod");
                api.grant(
                    "istio-system",
                    "rotation-operator",
                    "istio-system",
                    "cacerts",
                );
                api.grant(
                    "istio-system",
                    "rotation-operator",
                    "istio-system",
                    "istio-ca-secret",
                );
                api.grant("istio-system", "istio-ca-sync", "istio-system", "cacerts");
                api.grant("istio-system", "istiod", "istio-system", "istio-ca-secret");
                let operator_kubeconfig =
                    dir.write(&format!("{name}-operator.yaml"), api.kubeconfig(&operator));
                let sync_kubeconfig =
                    dir.write(&format!("{name}-sync.yaml"), api.kubeconfig(&sync));
                Cluster {
                    name,
                    api,
                    operator_kubeconfig,
                    sync_kubeconfig,
                    istiod_token,
                }
            })
            .collect();
        Self {
            bao,
            token,
            clusters,
            dir,
        }
    }

    fn cluster(&self, name: &str) -> &Cluster {
        self.clusters.iter().find(|c| c.name == name).unwrap()
    }

    /// A job process with only these variables, as a Pod or an operator's shell runs it.
    fn job(&self, job: &str, args: &[&str], vars: &[(&str, &str)]) -> JobRun {
        let output = Command::new(job_bin(job))
            .args(args)
            .env_clear()
            .env("LOG_FORMAT", "json")
            .env("VAULT_SA_TOKEN_PATH", self.dir.path().join("no-such-token"))
            .env("VAULT_ADDR", &self.bao.addr)
            .env("VAULT_MAX_ATTEMPTS", "2")
            .env("KUBE_MAX_ATTEMPTS", "1")
            .envs(vars.iter().copied())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        JobRun {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `bootstrap-job rotate <args>`, the stages settling at once unless `extra` says otherwise.
    fn rotate(&self, args: &[&str], extra: &[(&str, &str)]) -> JobRun {
        let kubeconfigs = self
            .clusters
            .iter()
            .map(|c| format!("{}={}", c.name, c.operator_kubeconfig.display()))
            .collect::<Vec<_>>()
            .join(",");
        let mut vars = vec![
            ("VAULT_TOKEN", self.token.as_str()),
            ("ROTATE_KUBECONFIGS", kubeconfigs.as_str()),
            ("ROTATE_WORKLOAD_CERT_TTL_HOURS", "0"),
            ("RUST_LOG", "debug"),
        ];
        vars.extend_from_slice(extra);
        let mut all = vec!["rotate"];
        all.extend_from_slice(args);
        let run = self.job("bootstrap-job", &all, &vars);
        // Keys, in PEM or as the API server's base64, never reach the output or the log.
        for secret in ["PRIVATE KEY", "LS0tLS1CRUdJTi"] {
            assert!(
                !run.stdout.contains(secret) && !run.stderr.contains(secret),
                "key material in the output of rotate {args:?}"
            );
        }
        run
    }

    /// The regular bootstrap run.
    fn bootstrap(&self, extra: &[(&str, &str)]) -> JobRun {
        let mut vars = vec![("VAULT_TOKEN", ROOT_TOKEN)];
        vars.extend_from_slice(extra);
        self.job("bootstrap-job", &[], &vars)
    }

    /// nas-sync-job delivering `istio/clusters/<cluster>` into that cluster's cacerts.
    fn sync(&self, cluster: &str) {
        let c = self.cluster(cluster);
        let run = self.job(
            "nas-sync-job",
            &[],
            &[
                ("VAULT_TOKEN", ROOT_TOKEN),
                ("KUBECONFIG", c.sync_kubeconfig.to_str().unwrap()),
                ("SYNC_CLUSTER", cluster),
            ],
        );
        assert_exit(&run, 0);
    }

    fn sync_all(&self) {
        for cluster in CLUSTERS {
            self.sync(cluster);
        }
    }

    /// The cacerts a cluster's istiod would load.
    fn served(&self, cluster: &str) -> IstioCaBundle {
        let secret = self
            .cluster(cluster)
            .api
            .secret("istio-system", "cacerts")
            .expect("cacerts exists");
        let file = |name: &str| String::from_utf8(secret.data[name].clone()).unwrap();
        IstioCaBundle {
            ca_cert: file("ca-cert.pem"),
            ca_key: pki_core::SecretPem::new(file("ca-key.pem")),
            root_cert: file("root-cert.pem"),
            cert_chain: file("cert-chain.pem"),
        }
    }

    /// istiod's self-signed CA, made with openssl as istiod makes it (RSA 2048, O=cluster.local,
    /// CA, keyCertSign; `security/pkg/pki/util/generate_cert.go`) and stored in the fake
    /// cluster with the keys istiod writes (`security/pkg/pki/ca/ca.go`, `BuildSecret`).
    fn istiod_self_signed(&self, cluster: &str) {
        let dir = Scratch::new();
        openssl(
            &["genrsa", "-traditional", "-out", "ca-key.pem", "2048"],
            dir.path(),
        )
        .ok();
        openssl(
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "ca-key.pem",
                "-days",
                "3650",
                "-subj",
                "/O=cluster.local",
                "-addext",
                "basicConstraints=critical,CA:true",
                "-addext",
                "keyUsage=critical,keyCertSign",
                "-out",
                "ca-cert.pem",
            ],
            dir.path(),
        )
        .ok();
        let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
        let (cert, key) = (read("ca-cert.pem"), read("ca-key.pem"));
        let data = [
            ("ca-cert.pem", cert.as_slice()),
            ("ca-key.pem", key.as_slice()),
            ("root-cert.pem", cert.as_slice()),
            ("cert-chain.pem", b"".as_slice()),
            ("key.pem", b"".as_slice()),
        ];
        apply_secret(
            &self.cluster(cluster).api,
            &self.cluster(cluster).istiod_token,
            "istio-ca-secret",
            "istio.io/ca-root",
            &data,
        );
    }
}

/// A server-side apply of a Secret with curl, as `kubectl apply --server-side` sends it.
fn apply_secret(api: &FakeApiServer, token: &str, name: &str, kind: &str, data: &[(&str, &[u8])]) {
    let data: serde_json::Map<String, serde_json::Value> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), STANDARD.encode(v).into()))
        .collect();
    let body = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": kind,
        "metadata": {"name": name, "namespace": "istio-system"}, "data": data,
    });
    let dir = Scratch::new();
    let file = dir.write("body.json", body.to_string());
    let ran = crate::support::tools::run(
        "curl",
        &[
            "-s",
            "-f",
            "-X",
            "PATCH",
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/apply-patch+yaml",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!(
                "{}/api/v1/namespaces/istio-system/secrets/{name}?fieldManager=istiod",
                api.url
            ),
        ],
        dir.path(),
    );
    assert!(ran.success, "apply {name}: {}", ran.all());
}

/// A workload of one cluster at one stage: a certificate issued by the stage's signing CA for
/// a SPIFFE identity, the chain istiod hands out with it (`cert-chain.pem`,
/// `security/pkg/pki/ca/ca.go`, `signWithCertChain`), and the stage's trust bundle.
struct Workload {
    label: String,
    bundle: IstioCaBundle,
    cert: PathBuf,
    key: PathBuf,
    chain: PathBuf,
    trust: PathBuf,
}

fn workload(dir: &Path, cluster: &str, stage: usize, bundle: &IstioCaBundle) -> Workload {
    let label = format!("{cluster}-{stage}");
    let file = |suffix: &str| dir.join(format!("{label}-{suffix}"));
    std::fs::write(file("ca.pem"), &bundle.ca_cert).unwrap();
    std::fs::write(file("ca-key.pem"), bundle.ca_key.expose()).unwrap();
    std::fs::write(file("chain.pem"), &bundle.cert_chain).unwrap();
    std::fs::write(file("trust.pem"), &bundle.root_cert).unwrap();
    std::fs::write(
        file("ext.cnf"),
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth,clientAuth\n\
             subjectAltName=URI:spiffe://cluster.local/ns/default/sa/{label}\n"
        ),
    )
    .unwrap();
    let name = |suffix: &str| format!("{label}-{suffix}");
    openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/O=cluster.local",
            "-keyout",
            &name("key.pem"),
            "-out",
            &name("csr.pem"),
        ],
        dir,
    )
    .ok();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &name("csr.pem"),
            "-CA",
            &name("ca.pem"),
            "-CAkey",
            &name("ca-key.pem"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &name("ext.cnf"),
            "-out",
            &name("cert.pem"),
        ],
        dir,
    )
    .ok();
    Workload {
        cert: file("cert.pem"),
        key: file("key.pem"),
        chain: file("chain.pem"),
        trust: file("trust.pem"),
        bundle: bundle.clone(),
        label: label.clone(),
    }
}

/// An mTLS handshake on a free loopback port: `server` requires a client certificate, both
/// verify with `-verify_return_error` against their own trust bundle; the client's HTTP request
/// is answered only once the server accepted it.
fn handshake(dir: &Path, server: &Workload, client: &Workload) -> bool {
    let port = free_port();
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let mut s = Command::new("openssl")
        .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
        .args([
            "-naccept",
            "1",
            "-www",
            "-Verify",
            "5",
            "-verify_return_error",
        ])
        .args(["-cert", &path(&server.cert), "-key", &path(&server.key)])
        .args([
            "-cert_chain",
            &path(&server.chain),
            "-CAfile",
            &path(&server.trust),
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let ok = loop {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 10 openssl s_client -connect 127.0.0.1:{port} \
                 -cert '{}' -key '{}' -cert_chain '{}' -CAfile '{}' -verify_return_error -ign_eof 2>&1",
                path(&client.cert),
                path(&client.key),
                path(&client.chain),
                path(&client.trust)
            ))
            .current_dir(dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let refused = text.contains("Connection refused") || text.contains("errno=111");
        if refused && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        break out.status.success()
            && text.contains("Verify return code: 0 (ok)")
            && text.contains("HTTP/1.0 200 ok");
    };
    let _ = s.kill();
    let _ = s.wait();
    ok
}

/// For every stage and every pair of clusters at the same stage or one stage apart: the
/// handshake's outcome is what `pki_core::istio_rotation::mutual_trust` predicts, and is the
/// `expected` one.
fn check_pairs(stages: &[Vec<IstioCaBundle>], expected: impl Fn(&str, usize, &str, usize) -> bool) {
    let dir = Scratch::new();
    let now = OffsetDateTime::now_utc();
    let workloads: Vec<Vec<Workload>> = stages
        .iter()
        .enumerate()
        .map(|(stage, bundles)| {
            CLUSTERS
                .iter()
                .zip(bundles)
                .map(|(cluster, bundle)| workload(dir.path(), cluster, stage, bundle))
                .collect()
        })
        .collect();
    let mut checked = 0;
    for (stage, at_stage) in workloads.iter().enumerate() {
        for later in [stage, stage + 1] {
            let Some(at_later) = workloads.get(later) else {
                continue;
            };
            for (x, a) in at_stage.iter().enumerate() {
                for (y, b) in at_later.iter().enumerate() {
                    if later == stage && y < x {
                        continue; // the same unordered pair
                    }
                    let predicted = mutual_trust(&a.bundle, &b.bundle, now);
                    let want = expected(CLUSTERS[x], stage, CLUSTERS[y], later);
                    assert_eq!(
                        predicted, want,
                        "pki-core's verdict on {} and {}",
                        a.label, b.label
                    );
                    for (server, client) in [(a, b), (b, a)] {
                        assert_eq!(
                            handshake(dir.path(), server, client),
                            want,
                            "handshake of client {} with server {}",
                            client.label,
                            server.label
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    // 4 stages x 3 same-stage pairs + 3 steps x 4 pairs, both ways round.
    assert_eq!(checked, 2 * (4 * 3 + 3 * 4));
}

fn kv_versions(bao: &OpenBao) -> [u64; 3] {
    [
        "istio/rotation",
        "istio/clusters/homelab",
        "istio/clusters/nas",
    ]
    .map(|p| bao.kv_version(p))
}

/// The homelab and NAS meshes each run on istiod's self-signed CA; the shared root is the one
/// the previous scripts wrote, adopted by bootstrap-job, whose intermediates are in Vault but
/// not yet in any cluster. The rotation moves both onto it, under the bootstrap Vault policy.
#[test]
fn self_signed_meshes_move_onto_the_shared_root() {
    let mesh = Mesh::new(Some("vault/policies/istio-ca-bootstrap.hcl"));
    previous_scripts_root(&mesh.bao);
    assert_exit(&mesh.bootstrap(&[]), 0);
    let intermediates: Vec<String> = CLUSTERS
        .iter()
        .map(|c| {
            mesh.bao
                .kv_field(&format!("istio/clusters/{c}"), "ca-cert.pem")
        })
        .collect();
    for cluster in CLUSTERS {
        mesh.istiod_self_signed(cluster);
    }

    let status = mesh.rotate(&["status"], &[]);
    assert_exit(&status, 0);
    assert!(
        status
            .stdout
            .starts_with("no rotation is recorded\nhomelab: cacerts absent; istio-ca-secret root "),
        "{}",
        status.stdout
    );

    let started = mesh.rotate(&["advance"], &[]);
    assert_exit(&started, 0);
    assert!(
        started
            .stdout
            .contains("homelab: stage 0 imported from istio-system/istio-ca-secret"),
        "{}",
        started.stdout
    );
    // The cluster entries now hold istiod's own CA; the intermediates wait in the record.
    for (cluster, intermediate) in CLUSTERS.iter().zip(&intermediates) {
        let path = format!("istio/clusters/{cluster}");
        assert_ne!(mesh.bao.kv_field(&path, "ca-cert.pem"), *intermediate);
        assert_eq!(mesh.bao.kv_field(&path, "rotation_stage"), "0");
        assert_eq!(
            mesh.bao
                .kv_field("istio/rotation", &format!("{cluster}.new.ca-cert.pem")),
            *intermediate,
            "the bootstrap intermediate was not reused"
        );
    }
    // The regular run leaves them alone meanwhile.
    let regular = mesh.bootstrap(&[]);
    assert_exit(&regular, 0);
    assert_eq!(
        regular.last_field("clusters").unwrap(),
        "homelab=rotating at stage 0 (3649d), nas=rotating at stage 0 (3649d)"
    );

    // Nothing in cacerts yet: not advanced, nothing written.
    let before = kv_versions(&mesh.bao);
    let waiting = mesh.rotate(&["advance"], &[]);
    assert_exit(&waiting, 9);
    assert!(
        waiting
            .stdout
            .starts_with("stage 0 not advanced: homelab serves no cacerts\n"),
        "{}",
        waiting.stdout
    );
    assert_eq!(kv_versions(&mesh.bao), before);

    let mut stages = Vec::new();
    for stage in 0..=3 {
        mesh.sync_all();
        stages.push(CLUSTERS.iter().map(|c| mesh.served(c)).collect::<Vec<_>>());
        let status = mesh.rotate(&["status"], &[]);
        assert!(
            status.stdout.contains(&format!(
                "nas: vault stage {stage}, serving stage {stage} (stage 0 from istio-system/istio-ca-secret)"
            )),
            "{}",
            status.stdout
        );
        if stage == 1 {
            // With the default workload certificate lifetime, stage 1 is not left at once.
            let early = mesh.rotate(&["advance"], &[("ROTATE_WORKLOAD_CERT_TTL_HOURS", "24")]);
            assert_exit(&early, 9);
            assert!(
                early.stdout.contains("workloads need until"),
                "{}",
                early.stdout
            );
        }
        let next = mesh.rotate(&["advance"], &[]);
        assert_exit(&next, 0);
        if stage < 3 {
            assert!(
                next.stdout
                    .starts_with(&format!("moved from stage {stage} to stage {}", stage + 1)),
                "{}",
                next.stdout
            );
        } else {
            assert!(next.stdout.contains("is complete"), "{}", next.stdout);
        }
    }
    // At the end each cluster serves its bootstrap intermediate under the shared root alone,
    // and the regular run is back to verifying them.
    for (cluster, intermediate) in CLUSTERS.iter().zip(&intermediates) {
        assert_eq!(mesh.served(cluster).ca_cert, *intermediate);
    }
    let regular = mesh.bootstrap(&[]);
    assert_exit(&regular, 0);
    assert_eq!(regular.last_field("writes"), Some(0.into()));

    // Inside a cluster, workloads on both sides of each step always talk; across clusters,
    // only once both sign under the shared root (stage 2 on each side; before, they never
    // trusted each other's self-signed CA).
    check_pairs(&stages, |x, sx, y, sy| x == y || (sx >= 2 && sy >= 2));
}

/// Both clusters on the shared root, moving to a new one (`ROTATE_ROOT_PATH`): every pair talks
/// at every stage and one stage apart. A forced step while a cluster still serves an older
/// stage is refused, because it would break pairs; `back` steps back.
#[test]
fn a_shared_root_is_rotated_without_breaking_a_pair() {
    let mesh = Mesh::new(None);
    assert_exit(&mesh.bootstrap(&[]), 0);
    mesh.sync_all();
    let next_root = [("ROTATE_ROOT_PATH", "istio/ca-next")];

    assert_exit(&mesh.rotate(&["advance"], &next_root), 0);
    assert_eq!(mesh.bao.kv_version("istio/ca-next"), 1);
    let mut stages = Vec::new();
    mesh.sync_all();
    stages.push(CLUSTERS.iter().map(|c| mesh.served(c)).collect::<Vec<_>>());
    assert_exit(&mesh.rotate(&["advance"], &next_root), 0);

    // Stage 1 reaches homelab only.
    mesh.sync("homelab");
    let waiting = mesh.rotate(&["advance"], &next_root);
    assert_exit(&waiting, 9);
    assert_eq!(
        waiting.stdout.lines().next().unwrap(),
        "stage 1 not advanced: nas serves stage 0"
    );
    let before = kv_versions(&mesh.bao);
    let forced = mesh.rotate(&["advance", "--force"], &next_root);
    assert_exit(&forced, 5);
    assert!(
        forced.error().starts_with(
            "invalid state at 'secret/istio/rotation': stage 2 refused: the step would break mTLS \
             between workloads that can talk now: homelab at stage 2 and nas at stage 0 (served now): \
             nas would not trust the certificates homelab signs"
        ),
        "{}",
        forced.error()
    );
    assert_eq!(kv_versions(&mesh.bao), before, "a refused step wrote");

    mesh.sync("nas");
    stages.push(CLUSTERS.iter().map(|c| mesh.served(c)).collect::<Vec<_>>());
    assert_exit(&mesh.rotate(&["advance"], &next_root), 0);
    mesh.sync_all();
    // One step back and forward again: stage 1 is delivered anew, then stage 2.
    let back = mesh.rotate(&["back"], &next_root);
    assert_exit(&back, 0);
    assert!(
        back.stdout.starts_with("moved from stage 2 to stage 1"),
        "{}",
        back.stdout
    );
    mesh.sync_all();
    assert_eq!(mesh.served("nas").root_cert, stages[1][1].root_cert);
    assert_eq!(mesh.served("nas").ca_cert, stages[1][1].ca_cert);
    assert_exit(&mesh.rotate(&["advance"], &next_root), 0);
    mesh.sync_all();
    stages.push(CLUSTERS.iter().map(|c| mesh.served(c)).collect::<Vec<_>>());
    assert_exit(&mesh.rotate(&["advance"], &next_root), 0);
    mesh.sync_all();
    stages.push(CLUSTERS.iter().map(|c| mesh.served(c)).collect::<Vec<_>>());
    let done = mesh.rotate(&["advance"], &next_root);
    assert_exit(&done, 0);
    assert!(done.stdout.contains("is complete"), "{}", done.stdout);

    // The regular run still points at the old root: it says which variable to change.
    let stale = mesh.bootstrap(&[]);
    assert_exit(&stale, 5);
    assert!(
        stale.error().ends_with(
            "the rotation recorded at 'secret/istio/rotation' moved the clusters to the root at \
             'secret/istio/ca-next': set ISTIO_CA_PATH=istio/ca-next"
        ),
        "{}",
        stale.error()
    );
    let moved = mesh.bootstrap(&[("ISTIO_CA_PATH", "istio/ca-next")]);
    assert_exit(&moved, 0);
    assert_eq!(moved.last_field("writes"), Some(0.into()));

    check_pairs(&stages, |_, _, _, _| true);
}
