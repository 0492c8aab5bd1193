//! A real HAProxy terminating mutual TLS on a free loopback port, and `curl` presenting a
//! user's PKCS#12 to it. Either with the trust bundle and CRL the client issuer wrote, or with
//! exactly the files one HAProxy consumer writes from the client CA Secret (`for_secret`).

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pki_core::time::{Duration as Validity, OffsetDateTime};
use pki_core::{
    CaCredential, CaParams, ClientCertificateParams, ClientCredential, CrlParams, KeyAlgorithm,
    Pkcs12Password, Pkcs12Profile, Pkcs12Request, RevokedCertificate, SubjectName, build_pkcs12,
    generate_root_ca, issue_client_certificate, sign_crl,
};

use super::openbao::free_port;
use super::tools::{Scratch, run};

/// The password of the PKCS#12 files `p12_for` builds.
pub const P12_PASSWORD: &str = "pw-stranger";

/// The host name the `haproxy-ingress` layout serves (its crt-list lines are per host).
const HOST: &str = "nas.home.arpa";

/// The legacy client CA of a migration, `O=Old, CN=Old Client CA`, made a day before `now`.
pub fn legacy_client_ca(now: OffsetDateTime) -> CaCredential {
    generate_root_ca(
        &CaParams {
            subject: SubjectName::new("Old", "Old Client CA"),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            validity: Validity::days(365),
        },
        now - Validity::days(1),
    )
    .unwrap()
}

/// The CRL number `crl_number` of the legacy CA `legacy`, listing `revoked`: issued an hour
/// before `now`, next update in 30 days.
pub fn legacy_crl(
    legacy: &CaCredential,
    now: OffsetDateTime,
    crl_number: u64,
    revoked: Vec<RevokedCertificate>,
) -> String {
    sign_crl(
        legacy,
        &CrlParams {
            this_update: now - Validity::hours(1),
            next_update: now + Validity::days(30),
            crl_number,
            revoked,
        },
    )
    .unwrap()
}

/// A client certificate for `name` issued by `ca` outside the job (a stranger, or a user of a
/// legacy CA).
pub fn client_credential(ca: &CaCredential, name: &str) -> ClientCredential {
    issue_client_certificate(
        ca,
        &ClientCertificateParams {
            name: name.into(),
            email: format!("{name}@example.org"),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            validity: Validity::days(30),
        },
        OffsetDateTime::now_utc(),
    )
    .unwrap()
}

/// `credential` with its CA as PKCS#12, with `P12_PASSWORD`.
pub fn p12_of(credential: &ClientCredential, ca: &CaCredential, name: &str) -> Vec<u8> {
    build_pkcs12(&Pkcs12Request {
        credential,
        ca_chain: &[&ca.certificate],
        friendly_name: name,
        password: &Pkcs12Password::new(P12_PASSWORD).unwrap(),
        profile: Pkcs12Profile::Modern,
        iterations: 2048,
    })
    .unwrap()
    .to_vec()
}

/// A new client certificate for `name` from `ca`, as PKCS#12 with `P12_PASSWORD`.
pub fn p12_for(ca: &CaCredential, name: &str) -> Vec<u8> {
    p12_of(&client_credential(ca, name), ca, name)
}

pub struct HaProxy {
    child: Child,
    pub port: u16,
    pub dir: Scratch,
    /// The SNI name clients send, when the configuration selects by it.
    sni: Option<&'static str>,
}

impl HaProxy {
    /// Starts HAProxy requiring a client certificate from `ca_bundle`, checked against `crls`.
    /// It answers 200 with the client's CN.
    pub fn start(ca_bundle: &str, crls: &str) -> Self {
        let dir = Scratch::new();
        dir.write("ca.crt", ca_bundle);
        dir.write("crl.pem", crls);
        let d = dir.path().display().to_string();
        Self::launch(
            dir,
            &format!(
                "ssl crt {d}/server.pem ca-file {d}/ca.crt verify required crl-file {d}/crl.pem"
            ),
            None,
        )
    }

    /// Starts HAProxy from a client CA Secret's data exactly as `consumer` turns it into
    /// HAProxy files and settings (`haproxy-controller/client-ca-cert`):
    /// - `haproxy`: the Secret mounted as files, `ca-file ca.crt verify required crl-file
    ///   crl.pem` on the bind;
    /// - `haproxy-ingress` (jcmoraisjr/haproxy-ingress): `ca.crt` written as
    ///   `ca_<ns>_<name>.pem`, the optional `ca.crl` as `ca_<ns>_<name>_crl.pem`
    ///   (`pkg/controller/services/ssl.go`), used on the host's crt-list line as
    ///   `[ca-file … verify required crl-file …]` (`rootfs/etc/templates/crtlist/crtlist.tmpl`,
    ///   `auth-tls-verify-client: on`), after the default certificate's `!*` line;
    /// - `haproxytech` (haproxytech/kubernetes-ingress): `tls.crt` alone written as
    ///   `<ns>_<name>.pem` (`pkg/haproxy/certs/main.go`, `writeSecret` for a CA), set as
    ///   `ca-file` with `verify required` on the https binds, no `crl-file`
    ///   (`pkg/handler/https.go`, `handleClientTLSAuth`).
    ///
    /// A key the consumer needs and the Secret lacks fails the test, as the controller would
    /// fail to configure client authentication.
    pub fn for_secret(consumer: &str, secret: &BTreeMap<String, Vec<u8>>) -> Self {
        let dir = Scratch::new();
        let d = dir.path().display().to_string();
        let key = |k: &str| -> &[u8] {
            secret
                .get(k)
                .unwrap_or_else(|| panic!("{consumer}: the Secret has no {k}"))
        };
        match consumer {
            "haproxy" => {
                dir.write("ca.crt", key("ca.crt"));
                dir.write("crl.pem", key("crl.pem"));
                Self::launch(
                    dir,
                    &format!(
                        "ssl crt {d}/server.pem ca-file {d}/ca.crt verify required crl-file {d}/crl.pem"
                    ),
                    None,
                )
            }
            "haproxy-ingress" => {
                let ca = dir.write("ca_haproxy-controller_client-ca-cert.pem", key("ca.crt"));
                let crl = secret.get("ca.crl").map(|crl| {
                    format!(
                        "crl-file {} ",
                        dir.write("ca_haproxy-controller_client-ca-cert_crl.pem", crl)
                            .display()
                    )
                });
                dir.write(
                    "crt-list",
                    format!(
                        "{d}/default.pem !*\n{d}/server.pem [ca-file {} verify required {}] {HOST}\n",
                        ca.display(),
                        crl.unwrap_or_default()
                    ),
                );
                Self::launch(dir, &format!("ssl crt-list {d}/crt-list"), Some(HOST))
            }
            "haproxytech" => {
                let ca = dir.write("haproxy-controller_client-ca-cert.pem", key("tls.crt"));
                Self::launch(
                    dir,
                    &format!(
                        "ssl crt {d}/server.pem ca-file {} verify required",
                        ca.display()
                    ),
                    None,
                )
            }
            other => panic!("no HAProxy consumer {other}"),
        }
    }

    /// Generates the server certificates, then runs HAProxy with `bind` options on a free
    /// port; it answers 200 with the client's CN.
    fn launch(dir: Scratch, bind: &str, sni: Option<&'static str>) -> Self {
        run(
            "sh",
            &[
                "-ec",
                "for name in server default; do
                   openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                     -keyout key.pem -out cert.pem -subj /CN=localhost -days 2 2>/dev/null
                   cat cert.pem key.pem > $name.pem
                 done",
            ],
            dir.path(),
        )
        .ok();
        let port = free_port();
        let config = format!(
            "global\n  log stderr format raw local0 info\n\
             defaults\n  mode http\n  log global\n  timeout connect 2s\n  timeout client 5s\n  timeout server 5s\n\
             frontend mtls\n  bind 127.0.0.1:{port} {bind}\n\
             \x20 http-request return status 200 content-type text/plain lf-string \"hello %[ssl_c_s_dn(CN)]\"\n",
        );
        let cfg = dir.write("haproxy.cfg", config);
        let check = run("haproxy", &["-c", "-f", cfg.to_str().unwrap()], dir.path());
        assert!(
            check.success,
            "haproxy rejects its configuration:\n{}",
            check.all()
        );
        let child = Command::new("haproxy")
            .args(["-db", "-f", cfg.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "haproxy did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            port,
            dir,
            sni,
        }
    }

    /// What `curl` gets with this PKCS#12 (or with no certificate): the HTTP status and body,
    /// or `None` when the TLS handshake is refused.
    pub fn get_with_p12(&self, p12: Option<(&Path, &str)>) -> Option<(u16, String)> {
        let host = self.sni.unwrap_or("127.0.0.1");
        let url = format!("https://{host}:{}/", self.port);
        let resolve = format!("{host}:{}:127.0.0.1", self.port);
        let cert;
        let mut args = vec!["-s", "-k", "--max-time", "10", "-w", "\n%{http_code}"];
        if self.sni.is_some() {
            args.extend(["--resolve", &resolve]);
        }
        if let Some((file, password)) = p12 {
            cert = format!("{}:{password}", file.display());
            args.extend(["--cert-type", "P12", "--cert", &cert]);
        }
        args.push(&url);
        let ran = run("curl", &args, self.dir.path());
        if !ran.success {
            return None;
        }
        let (body, code) = ran.stdout.rsplit_once('\n')?;
        Some((code.trim().parse().ok()?, body.to_owned()))
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
