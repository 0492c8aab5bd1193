//! Generated material parsed back with x509-parser and verified at fixed times, and every bad
//! input the verifiers must refuse, each with its exact error.

// Test code: a failed unwrap is a failed test, with the panic message as the report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use pki_core::istio::{
    self, IstioBundleFiles, IstioCaParams, issue_cluster_bundle, load_istio_root,
    verify_istio_bundle,
};
use pki_core::time::macros::datetime;
use pki_core::time::{Duration, OffsetDateTime};
use pki_core::{
    CaCredential, CaParams, Certificate, ClientCertificateParams, Crl, CrlParams, KeyAlgorithm,
    Pkcs12Password, Pkcs12Profile, Pkcs12Request, PkiError, RevocationReason, RevokedCertificate,
    SubjectName, build_pkcs12, generate_root_ca, issue_client_certificate, merge_revocations,
    read_pkcs12, sign_crl,
};
use x509_parser::extensions::ParsedExtension;

mod common;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const T0: OffsetDateTime = datetime!(2026-01-01 12:00 UTC);

fn hierarchy(alg: KeyAlgorithm) -> (CaCredential, istio::IstioCaBundle) {
    let params = IstioCaParams {
        key_algorithm: alg,
        ..IstioCaParams::default()
    };
    let root = istio::generate_istio_root(&params, T0).unwrap();
    let bundle = issue_cluster_bundle(&root, "homelab", &params, T0).unwrap();
    (root, bundle)
}

fn parse(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).unwrap().into_contents()
}

fn client_ca() -> CaCredential {
    let params = CaParams {
        subject: SubjectName::new("NAS", "Client CA"),
        key_algorithm: KeyAlgorithm::EcdsaP256,
        validity: Duration::days(3650),
    };
    generate_root_ca(&params, T0).unwrap()
}

fn client(ca: &CaCredential, name: &str) -> pki_core::ClientCredential {
    let params = ClientCertificateParams {
        name: name.into(),
        email: format!("{name}@example.org"),
        key_algorithm: KeyAlgorithm::EcdsaP256,
        validity: Duration::days(365),
    };
    issue_client_certificate(ca, &params, T0).unwrap()
}

#[test]
fn istio_hierarchy_has_the_extensions_istio_recommends() {
    let (root, bundle) = hierarchy(KeyAlgorithm::EcdsaP256);
    let root_der = parse(&bundle.root_cert);
    let (_, root_x509) = X509Certificate::from_der(&root_der).unwrap();
    assert_eq!(root_x509.subject().to_string(), "O=Istio, CN=Root CA");
    let bc = root_x509.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca && bc.value.path_len_constraint.is_none());
    let ku = root_x509.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(!ku.value.digital_signature());
    assert!(root_x509.iter_extensions().any(|e| matches!(
        e.parsed_extension(),
        ParsedExtension::SubjectKeyIdentifier(_)
    )));
    assert_eq!(root_der, root.certificate.der());

    let ca_der = parse(&bundle.ca_cert);
    let (_, ca_x509) = X509Certificate::from_der(&ca_der).unwrap();
    assert_eq!(
        ca_x509.subject().to_string(),
        "O=Istio, L=homelab, CN=Intermediate CA"
    );
    assert_eq!(ca_x509.issuer().to_string(), "O=Istio, CN=Root CA");
    let bc = ca_x509.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = ca_x509.key_usage().unwrap().unwrap();
    assert!(ku.value.key_cert_sign() && ku.value.crl_sign() && ku.value.digital_signature());
    assert!(ca_x509.extended_key_usage().unwrap().is_none());
    assert!(ca_x509.iter_extensions().any(|e| matches!(
        e.parsed_extension(),
        ParsedExtension::AuthorityKeyIdentifier(_)
    )));
    assert!(
        ca_x509
            .verify_signature(Some(root_x509.public_key()))
            .is_ok()
    );

    // Validity: root 10 years, intermediate 2 years, both backdated for clock skew.
    assert_eq!(
        ca_x509.validity().not_before.to_datetime(),
        T0 - pki_core::BACKDATE
    );
    assert_eq!(
        ca_x509.validity().not_after.to_datetime(),
        T0 + Duration::days(730)
    );
    assert_eq!(
        root_x509.validity().not_after.to_datetime(),
        T0 + Duration::days(3650)
    );

    // cert-chain.pem is exactly ca-cert.pem followed by root-cert.pem; the key is PKCS#8.
    assert_eq!(
        bundle.cert_chain,
        format!("{}{}", bundle.ca_cert, bundle.root_cert)
    );
    assert!(
        bundle
            .ca_key
            .expose()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    let names: Vec<_> = bundle.files().iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "ca-cert.pem",
            "ca-key.pem",
            "root-cert.pem",
            "cert-chain.pem"
        ]
    );
}

#[test]
fn serials_are_random() {
    let (root, bundle) = hierarchy(KeyAlgorithm::EcdsaP256);
    let (_, again) = hierarchy(KeyAlgorithm::EcdsaP256);
    let ca = Certificate::from_pem(&bundle.ca_cert, "a").unwrap();
    let other = Certificate::from_pem(&again.ca_cert, "b").unwrap();
    assert_ne!(ca.info().serial_hex, other.info().serial_hex);
    assert_ne!(ca.info().serial_hex, root.certificate.info().serial_hex);
    assert!(ca.info().serial_hex.len() >= 30);
}

#[test]
fn bundles_verify_inside_their_validity_and_not_outside() {
    let (_, bundle) = hierarchy(KeyAlgorithm::EcdsaP256);
    let files = IstioBundleFiles::from(&bundle);
    let report = verify_istio_bundle(files, T0 + Duration::days(1)).unwrap();
    assert_eq!(report.chain_length, 2);
    assert_eq!(report.root.subject, "O=Istio, CN=Root CA");
    assert_eq!(report.days_left(T0), 730);
    assert_eq!(report.ca.fingerprint_sha256.len(), 95);

    assert_eq!(
        verify_istio_bundle(files, T0 - Duration::hours(1))
            .unwrap_err()
            .to_string(),
        "cert-chain.pem certificate 1 is not valid before 2026-01-01"
    );
    assert_eq!(
        verify_istio_bundle(files, T0 + Duration::days(731)).unwrap_err(),
        PkiError::Expired {
            object: "cert-chain.pem certificate 1".into(),
            not_after: datetime!(2028-01-01 12:00 UTC).date(),
        }
    );
}

#[test]
fn p384_and_rsa4096_hierarchies_verify() {
    for alg in [KeyAlgorithm::EcdsaP384, KeyAlgorithm::Rsa4096] {
        let (root, bundle) = hierarchy(alg);
        verify_istio_bundle(IstioBundleFiles::from(&bundle), T0).unwrap();
        assert_eq!(root.key.algorithm(), Some(alg));
    }
}

#[test]
fn a_new_cluster_is_issued_from_the_stored_root() {
    let (root, homelab) = hierarchy(KeyAlgorithm::EcdsaP256);
    let stored = load_istio_root(&homelab.root_cert, root.key_pem().expose(), T0).unwrap();
    let later = T0 + Duration::days(100);
    let nas = issue_cluster_bundle(&stored, "nas", &IstioCaParams::default(), later).unwrap();
    let report = verify_istio_bundle(IstioBundleFiles::from(&nas), later).unwrap();
    assert_eq!(report.ca.subject, "O=Istio, L=nas, CN=Intermediate CA");
    assert_eq!(nas.root_cert, homelab.root_cert);
}

#[test]
fn intermediates_never_outlive_their_root() {
    let params = IstioCaParams {
        root_validity: Duration::days(100),
        ..IstioCaParams::default()
    };
    let root = istio::generate_istio_root(&params, T0).unwrap();
    let bundle = issue_cluster_bundle(&root, "nas", &params, T0).unwrap();
    let ca = Certificate::from_pem(&bundle.ca_cert, "ca").unwrap();
    assert_eq!(ca.info().not_after, root.certificate.info().not_after);
}

#[test]
fn client_certificates_carry_name_email_and_client_auth() {
    let ca = client_ca();
    let alice = client(&ca, "alice");
    let (_, x509) = X509Certificate::from_der(alice.certificate.der()).unwrap();
    assert_eq!(x509.subject().to_string(), "CN=alice");
    let san = x509.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::RFC822Name("alice@example.org")]
    );
    let eku = x509.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.client_auth && !eku.value.server_auth);
    let ku = x509.key_usage().unwrap().unwrap();
    assert!(ku.value.digital_signature() && !ku.value.key_cert_sign());
    assert!(!x509.is_ca());
    alice.certificate.verify_signed_by(&ca.certificate).unwrap();
    assert_eq!(
        x509.validity().not_after.to_datetime(),
        T0 + Duration::days(365)
    );
}

#[test]
fn bad_client_parameters_are_refused() {
    let ca = client_ca();
    let mut params = ClientCertificateParams {
        name: "bob".into(),
        email: "not-an-email".into(),
        key_algorithm: KeyAlgorithm::EcdsaP256,
        validity: Duration::days(365),
    };
    assert_eq!(
        issue_client_certificate(&ca, &params, T0)
            .unwrap_err()
            .to_string(),
        "invalid email: 'not-an-email' is not an address of the form user@domain.tld"
    );
    params.email = "bob@example.org".into();
    params.validity = Duration::ZERO;
    assert_eq!(
        issue_client_certificate(&ca, &params, T0)
            .unwrap_err()
            .to_string(),
        "invalid validity: must be positive, got 0s"
    );
    // The clients file's 4294967295 days once aborted the process here.
    for days in [3_000_000, i64::from(u32::MAX)] {
        params.validity = Duration::days(days);
        assert_eq!(
            issue_client_certificate(&ca, &params, T0)
                .unwrap_err()
                .to_string(),
            format!(
                "invalid validity: {days} days from 2026-01-01 ends after the year 9999, the last an X.509 time can hold"
            )
        );
    }
    let root = CaParams {
        subject: SubjectName::new("NAS", "Client CA"),
        key_algorithm: KeyAlgorithm::EcdsaP256,
        validity: Duration::days(3_000_000),
    };
    assert!(generate_root_ca(&root, T0).is_err());
}

#[test]
fn a_published_revocation_is_never_merged_away() {
    let revoked = |serial: u8, day: i64, reason| RevokedCertificate {
        serial: vec![serial],
        revoked_at: T0 + Duration::days(day),
        reason,
    };
    let published = [
        revoked(3, 1, RevocationReason::KeyCompromise),
        revoked(1, 1, RevocationReason::Unspecified),
    ];
    // This run knows 1 (with another date) and 2, not 3.
    let known = [
        revoked(2, 2, RevocationReason::Superseded),
        revoked(1, 5, RevocationReason::CessationOfOperation),
    ];
    assert_eq!(
        merge_revocations(&published, &known),
        [
            revoked(1, 1, RevocationReason::Unspecified),
            revoked(2, 2, RevocationReason::Superseded),
            revoked(3, 1, RevocationReason::KeyCompromise),
        ]
    );
    assert_eq!(merge_revocations(&published, &[]).len(), 2);
    // And what a CRL lists reads back as it was signed.
    let ca = client_ca();
    let pem = sign_crl(
        &ca,
        &CrlParams {
            this_update: T0,
            next_update: T0 + Duration::days(7),
            crl_number: 1,
            revoked: published.to_vec(),
        },
    )
    .unwrap();
    let mut read = Crl::from_pem(&pem, "crl.pem")
        .unwrap()
        .revoked_certificates()
        .unwrap();
    read.sort_by(|a, b| a.serial.cmp(&b.serial));
    assert_eq!(read, [published[1].clone(), published[0].clone()]);
}

#[test]
fn pkcs12_bundles_open_with_their_password_only() {
    let ca = client_ca();
    let alice = client(&ca, "alice");
    let password = Pkcs12Password::new("correct horse").unwrap();
    for profile in [Pkcs12Profile::Modern, Pkcs12Profile::Legacy] {
        let request = Pkcs12Request {
            credential: &alice,
            ca_chain: &[&ca.certificate],
            friendly_name: "alice",
            password: &password,
            profile,
            iterations: pki_core::DEFAULT_ITERATIONS,
        };
        let der = build_pkcs12(&request).unwrap();
        let contents = read_pkcs12(&der, "correct horse", "alice.p12").unwrap();
        assert_eq!(contents.friendly_name, "alice");
        assert_eq!(contents.chain.len(), 2);
        assert_eq!(contents.chain[0].der(), alice.certificate.der());
        assert_eq!(contents.chain[1].der(), ca.certificate.der());
        let err = read_pkcs12(&der, "wrong", "alice.p12")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("invalid PKCS#12 bundle: alice.p12 cannot be opened"),
            "{err}"
        );
    }
}

#[test]
fn an_empty_pkcs12_password_is_refused() {
    assert_eq!(
        Pkcs12Password::new("").unwrap_err().to_string(),
        "invalid PKCS#12 password: must not be empty"
    );
}

#[test]
fn crls_list_revoked_serials_with_reason_and_date() {
    let ca = client_ca();
    let alice = client(&ca, "alice");
    let bob = client(&ca, "bob");
    let revoked_at = T0 + Duration::days(3);
    let params = CrlParams {
        this_update: T0 + Duration::days(4),
        next_update: T0 + Duration::days(11),
        crl_number: 7,
        revoked: vec![
            RevokedCertificate {
                serial: alice.certificate.raw_serial(),
                revoked_at,
                reason: RevocationReason::KeyCompromise,
            },
            RevokedCertificate {
                serial: bob.certificate.raw_serial(),
                revoked_at,
                reason: RevocationReason::CessationOfOperation,
            },
        ],
    };
    let pem_text = sign_crl(&ca, &params).unwrap();
    let crl = Crl::from_pem(&pem_text, "crl.pem").unwrap();
    crl.verify_signed_by(&ca.certificate).unwrap();
    let info = crl.info();
    assert_eq!(info.crl_number, Some(7));
    assert_eq!(info.issuer, "O=NAS, CN=Client CA");
    assert_eq!(info.this_update, T0 + Duration::days(4));
    assert_eq!(info.next_update, Some(T0 + Duration::days(11)));
    assert_eq!(info.revoked.len(), 2);
    assert!(crl.is_revoked(&alice.certificate.info().serial_hex));
    assert!(crl.is_revoked(&bob.certificate.info().serial_hex));
    assert_eq!(
        info.revoked[0].reason,
        Some(RevocationReason::KeyCompromise)
    );
    assert_eq!(info.revoked[0].revoked_at, revoked_at);

    let other_ca = client_ca();
    assert_eq!(
        crl.verify_signed_by(&other_ca.certificate.clone().relabelled("other.crt"))
            .unwrap_err()
            .to_string(),
        "crl.pem is not signed by other.crt"
    );
    let backwards = CrlParams {
        next_update: params.this_update,
        ..params
    };
    assert_eq!(
        sign_crl(&ca, &backwards).unwrap_err().to_string(),
        "invalid CRL nextUpdate: must be after thisUpdate"
    );
}

#[test]
fn renewal_policy_reads_certificate_dates() {
    let (_, bundle) = hierarchy(KeyAlgorithm::EcdsaP256);
    let info = Certificate::from_pem(&bundle.ca_cert, "ca")
        .unwrap()
        .info()
        .clone();
    let policy = pki_core::RenewalPolicy::default();
    assert!(!pki_core::renewal_due(
        T0 + Duration::days(400),
        info.not_before,
        info.not_after,
        &policy
    ));
    assert!(pki_core::renewal_due(
        T0 + Duration::days(500),
        info.not_before,
        info.not_after,
        &policy
    ));
}

// ---- bad input, each with its exact error ----

#[test]
fn garbage_pem_is_refused() {
    assert_eq!(
        Certificate::from_pem("hello, world", "root-cert.pem")
            .unwrap_err()
            .to_string(),
        "root-cert.pem holds no CERTIFICATE"
    );
    let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
    let err = Certificate::from_pem(broken, "root-cert.pem").unwrap_err();
    assert!(
        matches!(err, PkiError::InvalidPem { ref object, .. } if object == "root-cert.pem"),
        "{err}"
    );
}

#[test]
fn truncated_der_is_refused() {
    let (_, bundle) = hierarchy(KeyAlgorithm::EcdsaP256);
    let der = parse(&bundle.ca_cert);
    let truncated = pem::encode(&pem::Pem::new("CERTIFICATE", der[..der.len() / 2].to_vec()));
    let err = Certificate::from_pem(&truncated, "ca-cert.pem").unwrap_err();
    assert!(
        matches!(err, PkiError::InvalidCertificate { ref object, .. } if object == "ca-cert.pem"),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("ca-cert.pem is not a valid certificate: "),
        "{err}"
    );
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let (_, bundle) = hierarchy(KeyAlgorithm::EcdsaP256);
    let (_, other) = hierarchy(KeyAlgorithm::EcdsaP256);
    let files = IstioBundleFiles {
        ca_key: other.ca_key.expose(),
        ..IstioBundleFiles::from(&bundle)
    };
    assert_eq!(
        verify_istio_bundle(files, T0).unwrap_err().to_string(),
        "ca-key.pem does not match ca-cert.pem"
    );
}

#[test]
fn an_expired_root_is_refused() {
    let (root, bundle) = hierarchy(KeyAlgorithm::EcdsaP256);
    assert_eq!(
        load_istio_root(
            &bundle.root_cert,
            root.key_pem().expose(),
            T0 + Duration::days(3651)
        )
        .unwrap_err()
        .to_string(),
        "root-cert.pem expired on 2035-12-30"
    );
}

#[test]
fn a_non_ca_certificate_cannot_issue() {
    let ca = client_ca();
    let alice = client(&ca, "alice");
    let err = CaCredential::from_pem(
        &alice.certificate.to_pem(),
        "pki/issuer cert",
        alice.key.to_pkcs8_pem().expose(),
        "pki/issuer key",
        T0,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "pki/issuer cert is not a CA certificate: basicConstraints does not say CA:TRUE"
    );
}

#[test]
fn a_leaf_in_place_of_the_root_is_refused() {
    let (_, bundle) = hierarchy(KeyAlgorithm::EcdsaP256);
    let files = IstioBundleFiles {
        root_cert: &bundle.ca_cert,
        ..IstioBundleFiles::from(&bundle)
    };
    assert_eq!(
        verify_istio_bundle(files, T0).unwrap_err().to_string(),
        "root-cert.pem is not self-signed"
    );
}

#[test]
fn an_encrypted_key_is_refused() {
    let (_, bundle) = hierarchy(KeyAlgorithm::EcdsaP256);
    let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n";
    let files = IstioBundleFiles {
        ca_key: encrypted,
        ..IstioBundleFiles::from(&bundle)
    };
    assert_eq!(
        verify_istio_bundle(files, T0).unwrap_err().to_string(),
        "ca-key.pem is an encrypted private key; an unencrypted key is required"
    );
}

#[test]
fn a_chain_in_the_wrong_order_is_refused() {
    let (_, bundle) = hierarchy(KeyAlgorithm::EcdsaP256);
    let reversed = format!("{}{}", bundle.root_cert, bundle.ca_cert);
    let files = IstioBundleFiles {
        cert_chain: &reversed,
        ..IstioBundleFiles::from(&bundle)
    };
    assert_eq!(
        verify_istio_bundle(files, T0).unwrap_err().to_string(),
        "cert-chain.pem is not a valid chain: it must start with ca-cert.pem, but starts with 'O=Istio, CN=Root CA'"
    );
    let only_ca = bundle.ca_cert.clone();
    let files = IstioBundleFiles {
        cert_chain: &only_ca,
        ..IstioBundleFiles::from(&bundle)
    };
    assert_eq!(
        verify_istio_bundle(files, T0).unwrap_err().to_string(),
        "cert-chain.pem is not a valid chain: it holds one certificate; it must hold ca-cert.pem followed by root-cert.pem"
    );
}

#[test]
fn a_chain_to_another_root_is_refused() {
    let (_, bundle) = hierarchy(KeyAlgorithm::EcdsaP256);
    let (_, other) = hierarchy(KeyAlgorithm::EcdsaP256);
    // Same names, different keys: only a signature check tells them apart.
    let mixed = format!("{}{}", bundle.ca_cert, other.root_cert);
    let files = IstioBundleFiles {
        cert_chain: &mixed,
        root_cert: &other.root_cert,
        ..IstioBundleFiles::from(&bundle)
    };
    assert_eq!(
        verify_istio_bundle(files, T0).unwrap_err().to_string(),
        "cert-chain.pem certificate 1 is not signed by cert-chain.pem certificate 2"
    );
}

#[test]
fn a_chain_file_carrying_a_key_is_refused() {
    let (_, bundle) = hierarchy(KeyAlgorithm::EcdsaP256);
    let leaky = format!("{}{}", bundle.cert_chain, bundle.ca_key.expose());
    let files = IstioBundleFiles {
        cert_chain: &leaky,
        ..IstioBundleFiles::from(&bundle)
    };
    assert_eq!(
        verify_istio_bundle(files, T0).unwrap_err().to_string(),
        "cert-chain.pem is not valid PEM: unexpected 'PRIVATE KEY' block among certificates"
    );
}

/// Mutations of valid inputs (bytes flipped, truncated, spliced) never panic any parser.
#[test]
fn parsers_never_panic_on_mutated_input() {
    let (root, bundle) = hierarchy(KeyAlgorithm::EcdsaP256);
    let root_key = root.key_pem();
    let seeds = [
        bundle.ca_cert.as_str(),
        bundle.cert_chain.as_str(),
        bundle.ca_key.expose(),
        root_key.expose(),
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..3000 {
        let seed = seeds[round % seeds.len()].as_bytes();
        let mut input = seed.to_vec();
        let cut = (next() as usize) % (input.len() + 1);
        match round % 3 {
            0 => {
                let i = (next() as usize) % input.len();
                input[i] ^= (next() as u8) | 1;
            }
            1 => input.truncate(cut),
            _ => input
                .splice(cut..cut, seeds[(round + 1) % 4].bytes().take(200))
                .for_each(drop),
        }
        common::fuzz_entry::parse_untrusted(&input);
        // Also mutate the DER inside the PEM, where the X.509 parser sees the damage.
        if let Ok(block) = pem::parse(seed) {
            let mut der = block.into_contents();
            let i = (next() as usize) % der.len();
            der[i] ^= (next() as u8) | 1;
            let _ = Certificate::from_der(der.clone(), "mutated");
            let _ = Crl::from_pem(&pem::encode(&pem::Pem::new("X509 CRL", der)), "mutated");
        }
    }
}
