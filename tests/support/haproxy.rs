//! A real HAProxy terminating mutual TLS on a free loopback port with the trust bundle and
//! CRL the client issuer wrote, and `curl` presenting a user's PKCS#12 to it.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::openbao::free_port;
use super::tools::{Scratch, run};

pub struct HaProxy {
    child: Child,
    pub port: u16,
    pub dir: Scratch,
}

impl HaProxy {
    /// Starts HAProxy requiring a client certificate from `ca_bundle`, checked against `crls`.
    /// It answers 200 with the client's CN.
    pub fn start(ca_bundle: &str, crls: &str) -> Self {
        let dir = Scratch::new();
        run(
            "sh",
            &[
                "-ec",
                "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout key.pem \
                 -out cert.pem -subj /CN=localhost -days 2 2>/dev/null; cat cert.pem key.pem > server.pem",
            ],
            dir.path(),
        )
        .ok();
        dir.write("ca.crt", ca_bundle);
        dir.write("crl.pem", crls);
        let port = free_port();
        let config = format!(
            "global\n  log stderr format raw local0 info\n\
             defaults\n  mode http\n  log global\n  timeout connect 2s\n  timeout client 5s\n  timeout server 5s\n\
             frontend mtls\n  bind 127.0.0.1:{port} ssl crt {d}/server.pem ca-file {d}/ca.crt verify required crl-file {d}/crl.pem\n\
             \x20 http-request return status 200 content-type text/plain lf-string \"hello %[ssl_c_s_dn(CN)]\"\n",
            d = dir.path().display()
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
        Self { child, port, dir }
    }

    /// What `curl` gets with this PKCS#12 (or with no certificate): the HTTP status and body,
    /// or `None` when the TLS handshake is refused.
    pub fn get_with_p12(&self, p12: Option<(&Path, &str)>) -> Option<(u16, String)> {
        let url = format!("https://127.0.0.1:{}/", self.port);
        let cert;
        let mut args = vec!["-s", "-k", "--max-time", "10", "-w", "\n%{http_code}"];
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
