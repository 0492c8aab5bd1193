//! What pki-core generates, checked by tools that share none of its code: `openssl verify`,
//! `openssl x509 -text`, `openssl pkcs12`, `openssl crl`, and Java's `keytool`. And the
//! reverse: material that openssl generates the way the previous shell scripts do passes our verifier.

use pki_core::istio::{self, IstioBundleFiles, IstioCaParams, verify_istio_bundle};
use pki_core::time::{Duration, OffsetDateTime};
use pki_core::{
    CaCredential, CaParams, ClientCertificateParams, ClientCredential, CrlParams, KeyAlgorithm,
    Pkcs12Password, Pkcs12Profile, Pkcs12Request, RevocationReason, RevokedCertificate, SigningKey,
    SubjectName, build_pkcs12, generate_root_ca, issue_client_certificate, sign_crl,
};

use crate::support::tools::{Scratch, keytool, keytool_listing, openssl, verify_cacerts};

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn write_bundle(dir: &Scratch, bundle: &istio::IstioCaBundle) {
    for (name, contents) in bundle.files() {
        dir.write(name, contents);
    }
}

fn client_ca() -> CaCredential {
    let params = CaParams {
        subject: SubjectName::new("NAS", "Client CA"),
        key_algorithm: KeyAlgorithm::EcdsaP256,
        validity: Duration::days(3650),
    };
    generate_root_ca(&params, now()).unwrap()
}

fn client(ca: &CaCredential, name: &str, alg: KeyAlgorithm) -> ClientCredential {
    let params = ClientCertificateParams {
        name: name.into(),
        email: format!("{name}@example.org"),
        key_algorithm: alg,
        validity: Duration::days(365),
    };
    issue_client_certificate(ca, &params, now()).unwrap()
}

#[test]
fn openssl_verifies_every_istio_hierarchy() {
    for alg in [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Rsa4096,
    ] {
        let params = IstioCaParams {
            key_algorithm: alg,
            ..IstioCaParams::default()
        };
        let root = istio::generate_istio_root(&params, now()).unwrap();
        let bundle = istio::issue_cluster_bundle(&root, "homelab", &params, now()).unwrap();
        let dir = Scratch::new();
        write_bundle(&dir, &bundle);
        let ran = verify_cacerts(dir.path()).ok();
        assert_eq!(ran.stdout.trim(), "ca-cert.pem: OK", "{alg}");

        // The key file is what istiod loads: openssl reads it as an unencrypted key and it
        // matches the certificate's public key.
        let key_pub = openssl(&["pkey", "-in", "ca-key.pem", "-pubout"], dir.path())
            .ok()
            .stdout;
        let cert_pub = openssl(
            &["x509", "-in", "ca-cert.pem", "-noout", "-pubkey"],
            dir.path(),
        )
        .ok()
        .stdout;
        assert_eq!(key_pub, cert_pub, "{alg}");
    }
}

#[test]
fn openssl_verifies_a_leaf_signed_by_the_intermediate() {
    let params = IstioCaParams::default();
    let root = istio::generate_istio_root(&params, now()).unwrap();
    let bundle = istio::issue_cluster_bundle(&root, "nas", &params, now()).unwrap();
    let intermediate = CaCredential::from_pem(
        &bundle.ca_cert,
        "ca-cert.pem",
        bundle.ca_key.expose(),
        "ca-key.pem",
        now(),
    )
    .unwrap();
    let leaf = client(&intermediate, "workload", KeyAlgorithm::EcdsaP256);
    let dir = Scratch::new();
    write_bundle(&dir, &bundle);
    dir.write("leaf.pem", leaf.certificate.to_pem());
    let ran = openssl(
        &[
            "verify",
            "-CAfile",
            "root-cert.pem",
            "-untrusted",
            "cert-chain.pem",
            "leaf.pem",
        ],
        dir.path(),
    )
    .ok();
    assert_eq!(ran.stdout.trim(), "leaf.pem: OK");

    // Path length 0 on the intermediate: a CA below it is refused by openssl too.
    let sub_ca = pki_core::issue_intermediate_ca(
        &intermediate,
        &CaParams {
            subject: SubjectName::new("Istio", "Too Deep"),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            validity: Duration::days(30),
        },
        now(),
    )
    .unwrap();
    let sub_leaf = client(&sub_ca, "deeper", KeyAlgorithm::EcdsaP256);
    dir.write(
        "chain2.pem",
        format!("{}{}", sub_ca.certificate.to_pem(), bundle.cert_chain),
    );
    dir.write("deep.pem", sub_leaf.certificate.to_pem());
    let ran = openssl(
        &[
            "verify",
            "-CAfile",
            "root-cert.pem",
            "-untrusted",
            "chain2.pem",
            "deep.pem",
        ],
        dir.path(),
    )
    .failed();
    assert!(
        ran.all().contains("path length constraint exceeded"),
        "{}",
        ran.all()
    );
}

#[test]
fn openssl_shows_the_extensions_each_certificate_needs() {
    let params = IstioCaParams::default();
    let root = istio::generate_istio_root(&params, now()).unwrap();
    let bundle = istio::issue_cluster_bundle(&root, "homelab", &params, now()).unwrap();
    let dir = Scratch::new();
    write_bundle(&dir, &bundle);
    // OpenSSL 3.0 prints names as `O = Istio`, later versions as `O=Istio`.
    let text = |file: &str| {
        openssl(&["x509", "-in", file, "-noout", "-text"], dir.path())
            .ok()
            .stdout
            .replace(" = ", "=")
    };

    let root_text = text("root-cert.pem");
    for expected in [
        "X509v3 Basic Constraints: critical",
        "CA:TRUE",
        "X509v3 Key Usage: critical",
        "Certificate Sign, CRL Sign",
        "X509v3 Subject Key Identifier",
        "ASN1 OID: prime256v1",
        "Subject: O=Istio, CN=Root CA",
    ] {
        assert!(
            root_text.contains(expected),
            "root lacks {expected}:\n{root_text}"
        );
    }
    assert!(!root_text.contains("pathlen"), "{root_text}");

    let ca_text = text("ca-cert.pem");
    for expected in [
        "CA:TRUE, pathlen:0",
        "Digital Signature, Certificate Sign, CRL Sign",
        "X509v3 Authority Key Identifier",
        "Subject: O=Istio, L=homelab, CN=Intermediate CA",
        "Issuer: O=Istio, CN=Root CA",
    ] {
        assert!(
            ca_text.contains(expected),
            "intermediate lacks {expected}:\n{ca_text}"
        );
    }
    assert!(!ca_text.contains("Extended Key Usage"), "{ca_text}");

    let ca = client_ca();
    dir.write(
        "alice.pem",
        client(&ca, "alice", KeyAlgorithm::EcdsaP256)
            .certificate
            .to_pem(),
    );
    let client_text = text("alice.pem");
    for expected in [
        "Subject: CN=alice",
        "email:alice@example.org",
        "TLS Web Client Authentication",
        "X509v3 Key Usage: critical\n                Digital Signature\n",
        "CA:FALSE",
    ] {
        assert!(
            client_text.contains(expected),
            "client lacks {expected}:\n{client_text}"
        );
    }
}

fn pkcs12_of(credential: &ClientCredential, ca: &CaCredential, profile: Pkcs12Profile) -> Vec<u8> {
    let password = Pkcs12Password::new("s3cret pass").unwrap();
    build_pkcs12(&Pkcs12Request {
        credential,
        ca_chain: &[&ca.certificate],
        friendly_name: "alice",
        password: &password,
        profile,
        iterations: pki_core::DEFAULT_ITERATIONS,
    })
    .unwrap()
    .to_vec()
}

#[test]
fn openssl_opens_both_pkcs12_profiles() {
    let ca = client_ca();
    for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa4096] {
        let alice = client(&ca, "alice", alg);
        let dir = Scratch::new();
        dir.write("modern.p12", pkcs12_of(&alice, &ca, Pkcs12Profile::Modern));
        dir.write("legacy.p12", pkcs12_of(&alice, &ca, Pkcs12Profile::Legacy));

        let info = openssl(
            &[
                "pkcs12",
                "-info",
                "-in",
                "modern.p12",
                "-passin",
                "pass:s3cret pass",
                "-nodes",
            ],
            dir.path(),
        )
        .ok()
        .all()
        .replace(" = ", "=");
        assert!(info.contains("MAC: sha256, Iteration 2048"), "{info}");
        assert!(
            info.contains("PBES2, PBKDF2, AES-256-CBC, Iteration 2048, PRF hmacWithSHA256"),
            "{info}"
        );
        assert!(
            info.contains("friendlyName: alice\n    localKeyID"),
            "{info}"
        );
        assert!(
            info.contains("subject=CN=alice") && info.contains("subject=O=NAS, CN=Client CA"),
            "{info}"
        );
        assert!(info.contains("-----BEGIN PRIVATE KEY-----"), "{info}");

        for extra in [&[][..], &["-legacy"][..]] {
            let mut args = vec![
                "pkcs12",
                "-info",
                "-in",
                "legacy.p12",
                "-passin",
                "pass:s3cret pass",
                "-nodes",
            ];
            args.extend_from_slice(extra);
            let info = openssl(&args, dir.path()).ok().all();
            assert!(info.contains("MAC: sha1, Iteration 2048"), "{info}");
            assert!(
                info.contains("pbeWithSHA1And3-KeyTripleDES-CBC, Iteration 2048"),
                "{info}"
            );
            assert!(info.contains("-----BEGIN PRIVATE KEY-----"), "{info}");
        }

        // The key inside is the credential's key.
        let extracted = openssl(
            &[
                "pkcs12",
                "-in",
                "modern.p12",
                "-passin",
                "pass:s3cret pass",
                "-nocerts",
                "-nodes",
            ],
            dir.path(),
        )
        .ok()
        .stdout;
        let key = SigningKey::from_pem(&extracted, "extracted key").unwrap();
        assert_eq!(key.public_key_raw(), alice.key.public_key_raw());

        for file in ["modern.p12", "legacy.p12"] {
            let ran = openssl(
                &[
                    "pkcs12",
                    "-info",
                    "-in",
                    file,
                    "-passin",
                    "pass:wrong",
                    "-noout",
                ],
                dir.path(),
            )
            .failed();
            assert!(ran.all().contains("Mac verify error"), "{}", ran.all());
        }
    }
}

#[test]
fn keytool_lists_a_private_key_entry_with_the_full_chain() {
    let ca = client_ca();
    let alice = client(&ca, "alice", KeyAlgorithm::EcdsaP256);
    let dir = Scratch::new();
    for profile in [Pkcs12Profile::Modern, Pkcs12Profile::Legacy] {
        dir.write("alice.p12", pkcs12_of(&alice, &ca, profile));
        let listing = keytool_listing("alice.p12", "s3cret pass", dir.path());
        assert!(listing.contains("Alias name: alice"), "{listing}");
        assert!(listing.contains("Entry type: PrivateKeyEntry"), "{listing}");
        assert!(listing.contains("Certificate chain length: 2"), "{listing}");
        assert!(listing.contains("Owner: CN=alice"), "{listing}");
        assert!(listing.contains("Owner: CN=Client CA, O=NAS"), "{listing}");

        let ran = keytool(
            &[
                "-list",
                "-storetype",
                "PKCS12",
                "-keystore",
                "alice.p12",
                "-storepass",
                "wrong pass",
            ],
            dir.path(),
        )
        .failed();
        assert!(
            ran.all().contains("password was incorrect"),
            "{}",
            ran.all()
        );
    }
}

#[test]
fn openssl_verifies_the_crl_and_refuses_revoked_clients() {
    let ca = client_ca();
    let alice = client(&ca, "alice", KeyAlgorithm::EcdsaP256);
    let bob = client(&ca, "bob", KeyAlgorithm::EcdsaP256);
    let crl = sign_crl(
        &ca,
        &CrlParams {
            this_update: now() - Duration::minutes(1),
            next_update: now() + Duration::days(7),
            crl_number: 3,
            revoked: vec![RevokedCertificate {
                serial: alice.certificate.raw_serial(),
                revoked_at: now() - Duration::minutes(1),
                reason: RevocationReason::KeyCompromise,
            }],
        },
    )
    .unwrap();
    let dir = Scratch::new();
    dir.write("ca.crt", ca.certificate.to_pem());
    dir.write("crl.pem", &crl);
    dir.write("alice.pem", alice.certificate.to_pem());
    dir.write("bob.pem", bob.certificate.to_pem());

    let ran = openssl(
        &[
            "crl", "-in", "crl.pem", "-CAfile", "ca.crt", "-noout", "-text",
        ],
        dir.path(),
    )
    .ok();
    assert!(
        ran.stderr.contains("verify OK") || ran.stdout.contains("verify OK"),
        "{}",
        ran.all()
    );
    let text = ran.stdout;
    assert!(
        text.contains(&format!(
            "Serial Number: {}",
            alice.certificate.info().serial_hex
        )),
        "{text}"
    );
    assert!(text.contains("Key Compromise"), "{text}");
    assert!(
        text.contains("X509v3 CRL Number: \n                3"),
        "{text}"
    );
    assert!(!text.contains(&bob.certificate.info().serial_hex), "{text}");

    let check = |file: &str| {
        openssl(
            &[
                "verify",
                "-crl_check",
                "-CRLfile",
                "crl.pem",
                "-CAfile",
                "ca.crt",
                file,
            ],
            dir.path(),
        )
    };
    assert!(
        check("alice.pem")
            .failed()
            .all()
            .contains("certificate revoked")
    );
    assert_eq!(check("bob.pem").ok().stdout.trim(), "bob.pem: OK");
}

/// The previous shell scripts (baseline/bootstrap.sh) makes SEC1 EC keys with openssl. A bundle
/// made that way, and one with a PKCS#1 RSA key, pass our verifier; an encrypted key does not.
#[test]
fn our_verifier_accepts_what_openssl_makes_the_previous_scripts_way() {
    let dir = Scratch::new();
    let sh = |script: &str| {
        crate::support::tools::run("sh", &["-ec", script], dir.path()).ok();
    };
    sh("openssl ecparam -name prime256v1 -genkey -noout -out root-key.pem
        openssl req -x509 -new -key root-key.pem -days 3650 -subj '/O=Istio/CN=Root CA' \
          -addext 'basicConstraints=critical,CA:true' -addext 'keyUsage=critical,keyCertSign,cRLSign' -out root-cert.pem
        openssl ecparam -name prime256v1 -genkey -noout -out ca-key.pem
        openssl req -new -key ca-key.pem -subj '/O=Istio/L=nas/CN=Intermediate CA' -out ca.csr
        printf 'basicConstraints=critical,CA:true,pathlen:0\\nkeyUsage=critical,digitalSignature,keyCertSign,cRLSign\\n' > ext.cnf
        openssl x509 -req -in ca.csr -CA root-cert.pem -CAkey root-key.pem -CAcreateserial -days 730 -extfile ext.cnf -out ca-cert.pem 2>/dev/null
        cat ca-cert.pem root-cert.pem > cert-chain.pem
        openssl genrsa -traditional -out rsa-key.pem 2048 2>/dev/null
        openssl req -new -key rsa-key.pem -subj '/O=Istio/L=rsa/CN=Intermediate CA' -out rsa.csr
        openssl x509 -req -in rsa.csr -CA root-cert.pem -CAkey root-key.pem -CAcreateserial -days 730 -extfile ext.cnf -out rsa-cert.pem 2>/dev/null
        cat rsa-cert.pem root-cert.pem > rsa-chain.pem
        openssl ec -in ca-key.pem -aes256 -passout pass:x -out enc-key.pem 2>/dev/null");
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let (ca_cert, ca_key, root_cert, chain) = (
        read("ca-cert.pem"),
        read("ca-key.pem"),
        read("root-cert.pem"),
        read("cert-chain.pem"),
    );
    assert!(ca_key.starts_with("-----BEGIN EC PRIVATE KEY-----"));
    let files = IstioBundleFiles {
        ca_cert: &ca_cert,
        ca_key: &ca_key,
        root_cert: &root_cert,
        cert_chain: &chain,
    };
    let report = verify_istio_bundle(files, now()).unwrap();
    assert_eq!(report.ca.subject, "O=Istio, L=nas, CN=Intermediate CA");

    let (rsa_cert, rsa_key, rsa_chain) = (
        read("rsa-cert.pem"),
        read("rsa-key.pem"),
        read("rsa-chain.pem"),
    );
    assert!(rsa_key.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let files = IstioBundleFiles {
        ca_cert: &rsa_cert,
        ca_key: &rsa_key,
        root_cert: &root_cert,
        cert_chain: &rsa_chain,
    };
    verify_istio_bundle(files, now()).unwrap();

    let encrypted = read("enc-key.pem");
    let files = IstioBundleFiles {
        ca_cert: &ca_cert,
        ca_key: &encrypted,
        root_cert: &root_cert,
        cert_chain: &chain,
    };
    assert_eq!(
        verify_istio_bundle(files, now()).unwrap_err().to_string(),
        "ca-key.pem is an encrypted private key; an unencrypted key is required"
    );
    // The openssl root and its SEC1 key load as a signing CA.
    istio::load_istio_root(&root_cert, &read("root-key.pem"), now()).unwrap();
}
