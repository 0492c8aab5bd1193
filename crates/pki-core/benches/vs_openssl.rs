//! pki-core against the openssl CLI steps of the previous shell scripts
//! (`../shared/baseline/bootstrap.sh` and `issue-clients.sh`, certificate parts only), on the
//! same machine in one run. Prints medians and ratios; asserts nothing about time.
//!
//! Run with `cargo bench -p pki-core --bench vs_openssl` (or `just bench-pki`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration as StdDuration, Instant};

use pki_core::istio::{self, IstioCaParams};
use pki_core::time::{Duration, OffsetDateTime};
use pki_core::{
    CaParams, ClientCertificateParams, KeyAlgorithm, Pkcs12Password, Pkcs12Profile, Pkcs12Request,
    SubjectName, build_pkcs12, generate_root_ca, issue_client_certificate,
};

/// The openssl steps of bootstrap.sh: an EC P-256 root and two intermediates with chains.
const OPENSSL_BOOTSTRAP: &str = r"
cat > root.cnf <<'CNF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = ext
[dn]
O = Istio
CN = Root CA
[ext]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
CNF
openssl ecparam -name prime256v1 -genkey -noout -out root-key.pem 2>/dev/null
openssl req -x509 -new -key root-key.pem -days 3650 -config root.cnf -out root-cert.pem
for c in homelab nas; do
  cat > $c.cnf <<CNF
[req]
distinguished_name = dn
prompt = no
[dn]
O = Istio
L = $c
CN = Intermediate CA
[ext]
basicConstraints = critical, CA:true, pathlen:0
keyUsage = critical, digitalSignature, keyCertSign, cRLSign
subjectAltName = URI:spiffe://cluster.local/ns/istio-system/sa/citadel
CNF
  openssl ecparam -name prime256v1 -genkey -noout -out $c-key.pem 2>/dev/null
  openssl req -new -key $c-key.pem -config $c.cnf -out $c.csr
  openssl x509 -req -in $c.csr -CA root-cert.pem -CAkey root-key.pem -CAcreateserial \
    -days 730 -extfile $c.cnf -extensions ext -out $c-cert.pem 2>/dev/null
  cat $c-cert.pem root-cert.pem > $c-chain.pem
done
";

/// The CA creation of issue-clients.sh (run once, outside the timing).
const OPENSSL_CLIENT_CA: &str = r#"
openssl ecparam -name prime256v1 -genkey -noout -out ca-key.pem 2>/dev/null
openssl req -x509 -new -key ca-key.pem -days 3650 -subj "/O=NAS/CN=Client CA" \
  -addext "basicConstraints=critical,CA:true,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca-cert.pem
"#;

/// The per-client openssl steps of issue-clients.sh: key, CSR, sign, PKCS#12.
const OPENSSL_CLIENTS: &str = r#"
for i in $(seq 1 "$N"); do
  u="user$i"
  openssl ecparam -name prime256v1 -genkey -noout -out k.pem 2>/dev/null
  openssl req -new -key k.pem -subj "/CN=$u/emailAddress=$u@example.org" -out c.csr
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' > ext.cnf
  openssl x509 -req -in c.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial -days 365 -extfile ext.cnf -out c.pem 2>/dev/null
  openssl pkcs12 -export -inkey k.pem -in c.pem -certfile ca-cert.pem -passout pass:changeit -out c.p12
done
"#;

fn shell(script: &str, dir: &std::path::Path, n: usize) {
    let status = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .env("N", n.to_string())
        .current_dir(dir)
        .status()
        .expect("run bash");
    assert!(status.success(), "baseline script failed");
}

fn median(mut samples: Vec<StdDuration>) -> StdDuration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time_runs(runs: usize, mut f: impl FnMut()) -> StdDuration {
    median(
        (0..runs)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .collect(),
    )
}

fn ms(d: StdDuration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let now = OffsetDateTime::now_utc();
    let dir = tempfile::tempdir().unwrap();
    let params = IstioCaParams::default();
    let client_ca = generate_root_ca(
        &CaParams {
            subject: SubjectName::new("NAS", "Client CA"),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            validity: Duration::days(3650),
        },
        now,
    )
    .unwrap();
    let password = Pkcs12Password::new("changeit").unwrap();
    let issue_one = |i: usize| {
        let name = format!("user{i}");
        let credential = issue_client_certificate(
            &client_ca,
            &ClientCertificateParams {
                email: format!("{name}@example.org"),
                name,
                key_algorithm: KeyAlgorithm::EcdsaP256,
                validity: Duration::days(365),
            },
            now,
        )
        .unwrap();
        build_pkcs12(&Pkcs12Request {
            credential: &credential,
            ca_chain: &[&client_ca.certificate],
            friendly_name: "user",
            password: &password,
            profile: Pkcs12Profile::Modern,
            iterations: pki_core::DEFAULT_ITERATIONS,
        })
        .unwrap()
    };

    // Root + 2 intermediates.
    let ours_bootstrap = time_runs(30, || {
        let root = istio::generate_istio_root(&params, now).unwrap();
        for cluster in ["homelab", "nas"] {
            istio::issue_cluster_bundle(&root, cluster, &params, now).unwrap();
        }
    });
    let openssl_bootstrap = time_runs(7, || shell(OPENSSL_BOOTSTRAP, dir.path(), 0));

    // One client certificate + modern PKCS#12.
    shell(OPENSSL_CLIENT_CA, dir.path(), 0);
    let ours_client = time_runs(50, || {
        issue_one(0);
    });
    let openssl_client = time_runs(7, || shell(OPENSSL_CLIENTS, dir.path(), 1));

    // 1,000 clients; the baseline is timed on 50 and scaled per client.
    let start = Instant::now();
    for i in 0..1000 {
        issue_one(i);
    }
    let ours_1000 = start.elapsed();
    let start = Instant::now();
    shell(OPENSSL_CLIENTS, dir.path(), 50);
    let openssl_1000 = start.elapsed() * 20;

    println!(
        "{:<38} {:>12} {:>14} {:>8}",
        "step", "pki-core ms", "openssl CLI ms", "ratio"
    );
    for (step, ours, theirs) in [
        ("root + 2 intermediates", ours_bootstrap, openssl_bootstrap),
        (
            "1 client cert + modern PKCS#12",
            ours_client,
            openssl_client,
        ),
        ("1,000 clients (openssl: 50 x 20)", ours_1000, openssl_1000),
    ] {
        println!(
            "{step:<38} {:>12.2} {:>14.1} {:>7.0}x",
            ms(ours),
            ms(theirs),
            theirs.as_secs_f64() / ours.as_secs_f64()
        );
    }
}
