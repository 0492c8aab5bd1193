//! Vault's Kubernetes auth as the clusters' API servers answer it. Two strict fake API servers
//! (homelab, NAS) hold the objects Flux applies from `kubernetes/`; two OpenBao servers (the
//! homelab and the NAS Vault) are configured by `vault/setup.sh` exactly as the README says,
//! with each cluster's reviewer token. Every job then logs in as its pod spec says (its service
//! account, the audience and lifetime of its projected token, its auth mount and role), and so
//! does ESO's homelab SecretStore. The refusal paths are the ones a real cluster takes: the
//! login JWT as TokenReview bearer (401), a reviewer without system:auth-delegator (403), a token
//! for the wrong audience, a deleted service account (which JWT auth does not notice).
//!
//! What OpenBao sends is from openbao/openbao `builtin/credential/kubernetes/token_review.go`
//! (the bearer is `token_reviewer_jwt` when set, else the login JWT; `spec.audiences` is the
//! role's `audience`, else the token's own) and `path_login.go` (the role's audience is checked
//! on the JWT before any TokenReview).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::support::flux::{FluxKustomization, flux_kustomizations};
use crate::support::jobs::{JobRun, run_job};
use crate::support::kube_api::FakeApiServer;
use crate::support::openbao::{OpenBao, workspace_root};
use crate::support::tools::{Ran, Scratch, run};

/// Which Vault a pod reaches at its `VAULT_ADDR`: in the homelab cluster, the homelab Vault
/// runs in-cluster; the NAS cluster reaches it by name, and runs its own Vault in-cluster.
fn vault_of(cluster: &str, addr: &str) -> &'static str {
    match (cluster, addr) {
        ("homelab", "https://vault.vault.svc:8200") | ("nas", "https://vault.home.arpa:8200") => {
            "homelab"
        }
        ("nas", "https://vault.vault.svc:8200") => "nas",
        _ => panic!("{cluster}: no Vault known at {addr}"),
    }
}

struct Clusters {
    dir: Scratch,
    flux: Vec<FluxKustomization>,
    apis: BTreeMap<&'static str, FakeApiServer>,
    vaults: BTreeMap<&'static str, OpenBao>,
}

impl Clusters {
    /// Both clusters as Flux leaves them, both Vaults as `vault/setup.sh` leaves them.
    fn new() -> Self {
        let dir = Scratch::new();
        let flux = flux_kustomizations();
        let mut apis = BTreeMap::new();
        for cluster in ["homelab", "nas"] {
            let api = FakeApiServer::start();
            let objects: Vec<Value> = flux
                .iter()
                .filter(|k| k.cluster == cluster)
                .flat_map(|k| k.objects.clone())
                .collect();
            api.load(&objects);
            apis.insert(cluster, api);
        }
        // The API servers speak plain HTTP; Vault insists on a CA all the same.
        run(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "api-ca.key",
                "-out",
                "api-ca.pem",
                "-subj",
                "/CN=kubernetes",
                "-days",
                "2",
            ],
            dir.path(),
        )
        .ok();
        let mut vars = Vec::new();
        for (cluster, api) in &apis {
            let upper = cluster.to_uppercase();
            let reviewer = Self::reviewer_token(api);
            let file = dir.write(&format!("{cluster}-reviewer.jwt"), reviewer);
            vars.push(format!("{upper}_K8S_HOST={}", api.url));
            vars.push(format!(
                "{upper}_K8S_CA_FILE={}",
                dir.path().join("api-ca.pem").display()
            ));
            vars.push(format!("{upper}_K8S_REVIEWER_JWT_FILE={}", file.display()));
        }
        let mut vaults = BTreeMap::new();
        for site in ["homelab", "nas"] {
            let bao = OpenBao::start();
            let script = workspace_root().join("vault/setup.sh");
            bao.shell(&format!("{} {} {site}", vars.join(" "), script.display()))
                .ok();
            vaults.insert(site, bao);
        }
        Self {
            dir,
            flux,
            apis,
            vaults,
        }
    }

    /// `kubectl -n vault-auth get secret vault-token-reviewer -o jsonpath='{.data.token}' | base64 -d`
    fn reviewer_token(api: &FakeApiServer) -> Vec<u8> {
        api.secret("vault-auth", "vault-token-reviewer")
            .expect("the reviewer Secret is applied")
            .data["token"]
            .clone()
    }

    /// Every Job and CronJob, with its cluster.
    fn pods(&self) -> Vec<(&str, &Value)> {
        self.flux
            .iter()
            .flat_map(|k| k.objects.iter().map(move |o| (k.cluster.as_str(), o)))
            .filter(|(_, o)| o["kind"] == "Job" || o["kind"] == "CronJob")
            .collect()
    }

    /// Runs the job of `pod` as its pod spec says: the container's variables; each projected
    /// token minted by the cluster for the pod's service account with the volume's audience
    /// and lifetime, at the path the variables name; the `ConfigMap`s it mounts. Outside a pod
    /// there is no in-cluster configuration, so the token of the volume mounted at the
    /// in-cluster path reaches the job through a kubeconfig instead. `PUSHGATEWAY_URL` is left
    /// out: nothing listens there.
    fn run_as_pod_spec(&self, cluster: &str, pod: &Value, work: &Path) -> JobRun {
        let api = &self.apis[cluster];
        let spec = if pod["kind"] == "CronJob" {
            &pod["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        } else {
            &pod["spec"]["template"]["spec"]
        };
        let namespace = pod["metadata"]["namespace"].as_str().unwrap();
        let account = spec["serviceAccountName"].as_str().unwrap();
        let container = &spec["containers"][0];
        // Files the pod would see, by their path in the pod.
        let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
        for mount in container["volumeMounts"].as_array().unwrap() {
            let mount_path = mount["mountPath"].as_str().unwrap();
            let volume = spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == mount["name"])
                .unwrap();
            for source in volume["projected"]["sources"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let sat = &source["serviceAccountToken"];
                if sat.is_object() {
                    let audiences: Vec<&str> = sat["audience"].as_str().into_iter().collect();
                    let token = api.token(
                        namespace,
                        account,
                        &audiences,
                        sat["expirationSeconds"].as_i64().unwrap_or(3600),
                    );
                    let in_pod = format!("{mount_path}/{}", sat["path"].as_str().unwrap());
                    let file = work.join(in_pod.replace('/', "_"));
                    std::fs::write(&file, token).unwrap();
                    files.insert(in_pod, file);
                }
            }
            if let Some(name) = volume["configMap"]["name"].as_str() {
                let config_map = self
                    .flux
                    .iter()
                    .flat_map(|k| &k.objects)
                    .find(|o| {
                        o["kind"] == "ConfigMap"
                            && o["metadata"]["name"] == name
                            && o["metadata"]["namespace"] == namespace
                    })
                    .unwrap_or_else(|| panic!("no ConfigMap {namespace}/{name}"));
                for (key, value) in config_map["data"].as_object().unwrap() {
                    let in_pod = format!("{mount_path}/{key}");
                    let file = work.join(in_pod.replace('/', "_"));
                    std::fs::write(&file, value.as_str().unwrap()).unwrap();
                    files.insert(in_pod, file);
                }
            }
        }
        let mut vars: Vec<(String, String)> = Vec::new();
        for env in container["env"].as_array().unwrap() {
            let name = env["name"].as_str().unwrap();
            let value = env["value"].as_str().unwrap();
            let value = match name {
                "VAULT_ADDR" => self.vaults[vault_of(cluster, value)].addr.clone(),
                "PUSHGATEWAY_URL" => continue,
                _ => files
                    .get(value)
                    .map_or_else(|| value.to_owned(), |f| f.display().to_string()),
            };
            vars.push((name.to_owned(), value));
        }
        if let Some(token) = files.get("/var/run/secrets/kubernetes.io/serviceaccount/token") {
            let token = std::fs::read_to_string(token).unwrap();
            let kubeconfig = work.join("kubeconfig");
            std::fs::write(&kubeconfig, api.kubeconfig(&token)).unwrap();
            vars.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
        }
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_job(
            container["image"].as_str().map(job_of_image).unwrap(),
            &vars,
            work,
        )
    }

    /// `bao write auth/<mount>/login role=<role> jwt=<jwt>` against `site`'s Vault.
    fn login(&self, site: &str, mount: &str, role: &str, jwt: &str) -> Ran {
        self.vaults[site].cli(&[
            "write",
            "-field=token",
            &format!("auth/{mount}/login"),
            &format!("role={role}"),
            &format!("jwt={jwt}"),
        ])
    }
}

/// The job binary an image carries, as `images/images.txt` lists it.
fn job_of_image(image: &str) -> &'static str {
    let name = image
        .rsplit_once(':')
        .unwrap()
        .0
        .rsplit('/')
        .next()
        .unwrap();
    let entry = crate::support::images::image_list()
        .into_iter()
        .find(|e| e.image == name)
        .unwrap_or_else(|| panic!("{image} is not in images/images.txt"));
    match entry.krate.as_str() {
        "bootstrap-job" => "bootstrap-job",
        "nas-sync-job" => "nas-sync-job",
        "client-issuer-job" => "client-issuer-job",
        other => panic!("unknown job {other}"),
    }
}

#[test]
fn every_job_and_the_eso_store_log_in_as_their_manifests_say() {
    let c = Clusters::new();
    let mut pods = c.pods();
    // The CA first: the NAS sync mirrors what the bootstrap Job wrote.
    pods.sort_by_key(|(cluster, _)| *cluster != "homelab");
    assert_eq!(pods.len(), 6, "Jobs and CronJobs");
    for (cluster, pod) in &pods {
        let work = Scratch::new();
        let run = c.run_as_pod_spec(cluster, pod, work.path());
        assert_eq!(
            run.code, 0,
            "{cluster} {} {}: {}",
            pod["kind"], pod["metadata"]["name"], run.stderr
        );
    }
    // Four logins reviewed by the NAS cluster (two sync pods, two issuer pods), two by the
    // homelab cluster (the bootstrap Job and the renewal CronJob), every review made by the
    // reviewer and answered.
    assert_eq!(c.apis["nas"].token_review_codes(), [201; 4]);
    assert_eq!(c.apis["homelab"].token_review_codes(), [201; 2]);
    let cacerts = c.apis["nas"].secret("istio-system", "cacerts").unwrap();
    assert_eq!(
        cacerts.data.keys().collect::<Vec<_>>(),
        [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem"
        ]
    );

    // ESO's SecretStore: a TokenRequest for its service account with exactly its
    // serviceAccountRef.audiences, 600 seconds, then a Kubernetes login with its mount and role.
    let store = c
        .flux
        .iter()
        .filter(|k| k.cluster == "homelab")
        .flat_map(|k| &k.objects)
        .find(|o| o["kind"] == "SecretStore")
        .expect("the homelab SecretStore");
    let auth = &store["spec"]["provider"]["vault"]["auth"]["kubernetes"];
    let audiences: Vec<&str> = auth["serviceAccountRef"]["audiences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let jwt = c.apis["homelab"].token(
        store["metadata"]["namespace"].as_str().unwrap(),
        auth["serviceAccountRef"]["name"].as_str().unwrap(),
        &audiences,
        600,
    );
    let site = vault_of(
        "homelab",
        store["spec"]["provider"]["vault"]["server"]
            .as_str()
            .unwrap(),
    );
    let login = c
        .login(
            site,
            auth["mountPath"].as_str().unwrap(),
            auth["role"].as_str().unwrap(),
            &jwt,
        )
        .ok();
    let token = login.stdout.trim();
    assert!(
        c.vaults[site]
            .cli_as(
                token,
                &["kv", "get", "-mount=secret", "istio/clusters/homelab"]
            )
            .success,
        "the SecretStore's role cannot read the homelab bundle"
    );
    assert_eq!(c.apis["homelab"].token_review_codes(), [201; 3]);
}

/// The bootstrap Job's own token, as its pod would get it.
fn bootstrap_token(c: &Clusters, audiences: &[&str]) -> String {
    c.apis["homelab"].token("istio-system", "istio-ca-bootstrap", audiences, 600)
}

#[test]
fn vault_is_refused_as_a_real_api_server_refuses_it() {
    let c = Clusters::new();
    let homelab = &c.apis["homelab"];
    let vault = &c.vaults["homelab"];
    let jwt = bootstrap_token(&c, &["vault"]);
    c.login("homelab", "kubernetes", "istio-ca-bootstrap", &jwt)
        .ok();
    assert_eq!(homelab.token_review_codes(), [201]);

    // Without a reviewer, OpenBao sends the login JWT as the bearer: its audience is Vault's,
    // not the API server's, so the request is unauthenticated (vault-plugin-auth-kubernetes#73).
    let ca = c.dir.path().join("api-ca.pem");
    vault.kubernetes_auth_config("kubernetes", &homelab.url, &ca, None);
    c.login("homelab", "kubernetes", "istio-ca-bootstrap", &jwt)
        .failed();
    assert_eq!(homelab.token_review_codes(), [201, 401]);
    assert!(
        vault
            .log()
            .contains("lookup failed: service account unauthorized"),
        "{}",
        vault.log()
    );

    // With the reviewer again, but its ClusterRoleBinding gone: authenticated, not authorized.
    let reviewer = c.dir.path().join("homelab-reviewer.jwt");
    vault.kubernetes_auth_config("kubernetes", &homelab.url, &ca, Some(&reviewer));
    homelab.remove_bindings_of("system:auth-delegator");
    c.login("homelab", "kubernetes", "istio-ca-bootstrap", &jwt)
        .failed();
    assert_eq!(homelab.token_review_codes(), [201, 401, 403]);
    // OpenBao logs the API server's Status message (escaped, inside its own quoting).
    let log = vault.log();
    assert!(
        log.contains("tokenreviews.authentication.k8s.io is forbidden")
            && log.contains("vault-auth:vault-token-reviewer")
            && log.contains("cannot create resource")
            && log.contains("at the cluster scope"),
        "{log}"
    );
}

#[test]
fn wrong_audiences_and_deleted_accounts_are_refused() {
    let c = Clusters::new();
    let homelab = &c.apis["homelab"];
    // A pod without `audience: vault` gets the API server's audience: the role refuses it
    // before asking the cluster.
    let api_token = bootstrap_token(&c, &[]);
    let refused = c
        .login("homelab", "kubernetes", "istio-ca-bootstrap", &api_token)
        .failed();
    assert!(
        refused.stderr.contains("invalid audience"),
        "{}",
        refused.all()
    );
    assert_eq!(homelab.token_review_codes(), Vec::<u16>::new());
    // A service account of the same name in the NAS cluster does not log in through the
    // homelab mount: the homelab API server did not sign its token.
    let nas = &c.apis["nas"];
    nas.create_service_account("istio-system", "istio-ca-bootstrap");
    let nas_token = nas.token("istio-system", "istio-ca-bootstrap", &["vault"], 600);
    c.login("homelab", "kubernetes", "istio-ca-bootstrap", &nas_token)
        .failed();
    assert_eq!(homelab.token_review_codes(), [201]);
    assert!(
        c.vaults["homelab"]
            .log()
            .contains("lookup failed: [invalid bearer token, go-jose/go-jose: error in cryptographic primitive]"),
        "{}",
        c.vaults["homelab"].log()
    );

    // Kubernetes auth sees a deleted service account at once; JWT auth, which checks only the
    // signature, accepts its token until it expires (the trade-off in the README).
    let jwt = bootstrap_token(&c, &["vault"]);
    let vault = &c.vaults["homelab"];
    let keys = c.dir.write("homelab.pub", homelab.public_key_pem());
    vault.cli(&["auth", "enable", "-path=jwt", "jwt"]).ok();
    vault.bootstrap_jwt_auth(
        &keys,
        "https://kubernetes.default.svc.cluster.local",
        &["token_policies=istio-ca-bootstrap"],
    );
    c.login("homelab", "kubernetes", "istio-ca-bootstrap", &jwt)
        .ok();
    c.login("homelab", "jwt", "istio-ca-bootstrap", &jwt).ok();
    homelab.delete_service_account("istio-system", "istio-ca-bootstrap");
    c.login("homelab", "kubernetes", "istio-ca-bootstrap", &jwt)
        .failed();
    let log = vault.log();
    assert!(
        log.contains("lookup failed: [invalid bearer token, serviceaccounts")
            && log.contains("istio-ca-bootstrap")
            && log.contains("not found]"),
        "{log}"
    );
    c.login("homelab", "jwt", "istio-ca-bootstrap", &jwt).ok();
}

/// POSTs a TokenReview to `api` with `bearer`; the status code and the body.
fn review(api: &FakeApiServer, bearer: Option<&str>, body: &Value) -> (u16, Value) {
    let dir = Scratch::new();
    let mut args = vec![
        "-s".to_owned(),
        "-w".into(),
        "\n%{http_code}".into(),
        "-X".into(),
        "POST".into(),
        "-H".into(),
        "Content-Type: application/json".into(),
        "--data-binary".into(),
        body.to_string(),
    ];
    if let Some(bearer) = bearer {
        args.extend(["-H".into(), format!("Authorization: Bearer {bearer}")]);
    }
    args.push(format!(
        "{}/apis/authentication.k8s.io/v1/tokenreviews",
        api.url
    ));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run("curl", &args, dir.path()).ok().stdout;
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), serde_json::from_str(body).unwrap())
}

/// The status of a GET of `path`, with an `Authorization` header if given.
fn get(api: &FakeApiServer, path: &str, authorization: Option<&str>) -> u16 {
    let dir = Scratch::new();
    let url = format!("{}{path}", api.url);
    let header = authorization.map(|a| format!("Authorization: {a}"));
    let mut args = vec!["-s", "-o", "/dev/null", "-w", "%{http_code}"];
    if let Some(header) = &header {
        args.extend(["-H", header]);
    }
    args.push(&url);
    run("curl", &args, dir.path()).ok().stdout.parse().unwrap()
}

/// The fake's TokenReview and its refusals, request by request, as kube-apiserver answers.
#[test]
fn token_review_answers_as_kube_apiserver() {
    let api = FakeApiServer::start();
    let root = workspace_root();
    for path in [
        "kubernetes/homelab/platform-foundation/istio/namespace",
        "kubernetes/homelab/platform-foundation/istio/ca-bootstrap",
        "kubernetes/homelab/security/vault-auth",
    ] {
        api.load(&crate::support::flux::render(&root.join(path)));
    }
    let reviewer = String::from_utf8(Clusters::reviewer_token(&api)).unwrap();
    let (ns, sa) = ("istio-system", "istio-ca-bootstrap");
    let uid = api.service_account_uid(ns, sa).unwrap();
    let for_vault = api.token(ns, sa, &["vault", "other"], 600);
    let spec =
        |token: &str, audiences: &[&str]| json!({"spec": {"token": token, "audiences": audiences}});

    // The answer: who, which uid, and the intersection of audiences.
    let (code, body) = review(&api, Some(&reviewer), &spec(&for_vault, &["vault", "x"]));
    assert_eq!(code, 201);
    let status = &body["status"];
    assert_eq!(status["authenticated"], true);
    assert_eq!(
        status["user"]["username"],
        "system:serviceaccount:istio-system:istio-ca-bootstrap"
    );
    assert_eq!(status["user"]["uid"], uid.as_str());
    assert_eq!(status["audiences"], json!(["vault"]));
    // No requested audiences means the API server's, which a Vault token lacks.
    let (code, body) = review(&api, Some(&reviewer), &spec(&for_vault, &[]));
    assert_eq!(code, 201);
    assert_eq!(body["status"]["authenticated"], Value::Null);
    assert_eq!(
        body["status"]["error"],
        "[invalid bearer token, token audiences [\"vault\" \"other\"] is invalid for the target audiences [\"https://kubernetes.default.svc.cluster.local\"]]"
    );
    // Expired (past the minute of leeway), and a service account recreated under its name.
    let mut claims = json!({
        "aud": ["vault"], "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "exp": crate::support::kube_authn::now() - 120, "iat": 0, "nbf": 0,
        "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa, "uid": uid}},
    });
    let expired = api.sign(&claims);
    let (_, body) = review(&api, Some(&reviewer), &spec(&expired, &["vault"]));
    assert_eq!(
        body["status"]["error"],
        "[invalid bearer token, service account token has expired]"
    );
    claims["exp"] = json!(crate::support::kube_authn::now() + 600);
    claims["kubernetes.io"]["serviceaccount"]["uid"] =
        json!("00000000-0000-0000-0000-000000000000");
    let (_, body) = review(&api, Some(&reviewer), &spec(&api.sign(&claims), &["vault"]));
    assert_eq!(
        body["status"]["error"],
        format!(
            "[invalid bearer token, service account UID ({uid}) does not match claim (00000000-0000-0000-0000-000000000000)]"
        )
    );
    let (code, body) = review(&api, Some(&reviewer), &spec("", &[]));
    assert_eq!(
        (code, body["message"].as_str()),
        (
            400,
            Some("token is required for TokenReview in authentication")
        )
    );

    // Who may ask: the reviewer. A job's own API token is authenticated but not authorized; a
    // Vault token is not authenticated; nobody at all is anonymous, and not authorized.
    let job_api_token = api.api_token(ns, sa);
    let (code, body) = review(&api, Some(&job_api_token), &spec(&for_vault, &["vault"]));
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:istio-system:istio-ca-bootstrap\" cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope"
    );
    let (code, body) = review(&api, Some(&for_vault), &spec(&for_vault, &["vault"]));
    assert_eq!(
        (code, body["message"].as_str(), body["reason"].as_str()),
        (401, Some("Unauthorized"), Some("Unauthorized"))
    );
    let (code, body) = review(&api, None, &spec(&for_vault, &["vault"]));
    assert_eq!(code, 403);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("User \"system:anonymous\" cannot create")
    );
    // Discovery: /version is public, /api is for authenticated users only. A header of
    // another scheme is no credential (anonymous); a bearer that does not authenticate is 401.
    assert_eq!(get(&api, "/version", None), 200);
    assert_eq!(get(&api, "/api", None), 403);
    assert_eq!(get(&api, "/api", Some("Basic dXNlcjpwdw==")), 403);
    assert_eq!(get(&api, "/version", Some("Bearer not-a-token")), 401);
    assert_eq!(
        get(&api, "/api", Some(&format!("bearer {job_api_token}"))),
        200
    );
}
