//! The client CA Secret as each HAProxy consumer reads it: plain HAProxy mounting the Secret,
//! jcmoraisjr/haproxy-ingress and haproxytech/kubernetes-ingress. Both producers of the Secret
//! (the homelab ExternalSecret with the component of that consumer, and nas-sync-job with the
//! mapping kind of that consumer) write the same keys from the Vault entry client-issuer-job
//! keeps; a real HAProxy, configured from those keys exactly as the consumer configures it,
//! then accepts kept clients of both CAs of a migration, refuses revoked ones of both CAs where
//! the consumer checks CRLs, and refuses a client without a certificate.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use pki_core::time::{Duration, OffsetDateTime};
use pki_core::{RevocationReason, RevokedCertificate};
use serde_json::Value;

use crate::support::flux::render_with_components;
use crate::support::haproxy::{
    HaProxy, P12_PASSWORD, client_credential, legacy_client_ca, legacy_crl, p12_for, p12_of,
};
use crate::support::jobs::{JobRun, run_job};
use crate::support::kube_api::FakeApiServer;
use crate::support::openbao::{OpenBao, ROOT_TOKEN, workspace_root};
use crate::support::tools::Scratch;

/// The consumers, as named by the homelab components and (after `client-ca-`) the mapping
/// kinds; and the Secret keys each reads.
const CONSUMERS: [(&str, &[&str]); 3] = [
    ("haproxy", &["ca.crt", "crl.pem"]),
    ("haproxy-ingress", &["ca.crl", "ca.crt"]),
    ("haproxytech", &["tls.crt"]),
];

fn mapping_kind(consumer: &str) -> String {
    if consumer == "haproxy" {
        "client-ca".into()
    } else {
        format!("client-ca-{consumer}")
    }
}

/// A NAS Vault in the middle of a migration: the job's CA with alice (kept) and bob (revoked),
/// and the legacy CA with olduser (kept) and oldgone (revoked on the legacy CRL).
struct Migration {
    bao: OpenBao,
    dir: Scratch,
    legacy_crl: String,
}

impl Migration {
    fn new() -> Self {
        let bao = OpenBao::start();
        let dir = Scratch::new();
        let now = OffsetDateTime::now_utc();
        let legacy = legacy_client_ca(now);
        let oldgone = client_credential(&legacy, "oldgone");
        let legacy_crl = legacy_crl(
            &legacy,
            now,
            7,
            vec![RevokedCertificate {
                serial: oldgone.certificate.raw_serial(),
                revoked_at: now - Duration::hours(1),
                reason: RevocationReason::KeyCompromise,
            }],
        );
        dir.write("legacy-ca.pem", legacy.certificate.to_pem());
        dir.write("legacy-crl.pem", &legacy_crl);
        dir.write("olduser.p12", p12_for(&legacy, "olduser"));
        dir.write("oldgone.p12", p12_of(&oldgone, &legacy, "oldgone"));
        let m = Self {
            bao,
            dir,
            legacy_crl,
        };
        for clients in [
            "clients:\n  - name: alice\n    email: alice@example.org\n  - name: bob\n    email: bob@example.org\n",
            "clients:\n  - name: alice\n    email: alice@example.org\n  - name: bob\n    email: bob@example.org\n    revoked: true\n",
        ] {
            let file = m.dir.write("clients.yaml", clients);
            let ca = m.dir.path().join("legacy-ca.pem");
            let crl = m.dir.path().join("legacy-crl.pem");
            let run = run_job(
                "client-issuer-job",
                &[
                    ("VAULT_ADDR", m.bao.addr.as_str()),
                    ("VAULT_TOKEN", ROOT_TOKEN),
                    ("CLIENTS_FILE", file.to_str().unwrap()),
                    ("LEGACY_CA_FILES", ca.to_str().unwrap()),
                    ("LEGACY_CRL_FILES", crl.to_str().unwrap()),
                ],
                m.dir.path(),
            );
            assert_eq!(run.code, 0, "{}", run.stderr);
        }
        for user in ["alice", "bob"] {
            let p12 = STANDARD
                .decode(m.bao.kv_field(&format!("pki/clients/{user}"), "p12").trim())
                .unwrap();
            m.dir.write(&format!("{user}.p12"), p12);
        }
        m
    }

    /// The PKCS#12 file of `user` and its password.
    fn p12(&self, user: &str) -> (std::path::PathBuf, String) {
        let password = match user {
            "alice" | "bob" => self
                .bao
                .kv_field(&format!("pki/clients/{user}"), "password"),
            _ => P12_PASSWORD.to_owned(),
        };
        (self.dir.path().join(format!("{user}.p12")), password)
    }

    /// The Secret the homelab ExternalSecret writes with `consumer`'s component, resolved
    /// as ESO resolves `data`: each `secretKey` from `remoteRef.property` of `remoteRef.key`.
    fn secret_from_external_secret(&self, consumer: &str) -> BTreeMap<String, Vec<u8>> {
        let objects = render_with_components(
            &["kubernetes/homelab/security/client-ca"],
            &[&format!("kubernetes/homelab/security/client-ca/{consumer}")],
        );
        let es: &Value = objects
            .iter()
            .find(|o| o["kind"] == "ExternalSecret")
            .expect("the client CA ExternalSecret");
        assert_eq!(
            (&es["metadata"]["namespace"], &es["spec"]["target"]["name"]),
            (&"haproxy-controller".into(), &"client-ca-cert".into())
        );
        es["spec"]["data"]
            .as_array()
            .unwrap_or_else(|| panic!("{consumer}: the component gives no data"))
            .iter()
            .map(|d| {
                let value = self.bao.kv_field(
                    d["remoteRef"]["key"].as_str().unwrap(),
                    d["remoteRef"]["property"].as_str().unwrap(),
                );
                (
                    d["secretKey"].as_str().unwrap().to_owned(),
                    value.into_bytes(),
                )
            })
            .collect()
    }

    /// The Secrets nas-sync-job writes with one mapping per consumer (one run), and its run.
    fn secrets_from_nas_sync(&self) -> (BTreeMap<&'static str, BTreeMap<String, Vec<u8>>>, JobRun) {
        let api = FakeApiServer::start();
        api.create_namespace("haproxy-controller");
        api.create_namespace("pki-sync");
        api.create_service_account("pki-sync", "nas-sync");
        let mut mappings = String::from("mappings:\n");
        for (consumer, _) in CONSUMERS {
            let name = format!("client-ca-cert-{consumer}");
            api.grant("pki-sync", "nas-sync", "haproxy-controller", &name);
            writeln!(
                mappings,
                "  - source: pki/ca\n    kind: {}\n    secret: {{namespace: haproxy-controller, name: {name}}}",
                mapping_kind(consumer)
            )
            .unwrap();
        }
        let mappings = self.dir.write("mappings.yaml", mappings);
        let kubeconfig = self.dir.write(
            "kubeconfig",
            api.kubeconfig(&api.api_token("pki-sync", "nas-sync")),
        );
        let run = run_job(
            "nas-sync-job",
            &[
                ("VAULT_ADDR", self.bao.addr.as_str()),
                ("VAULT_TOKEN", ROOT_TOKEN),
                ("KUBECONFIG", kubeconfig.to_str().unwrap()),
                ("SYNC_MAPPINGS_FILE", mappings.to_str().unwrap()),
            ],
            self.dir.path(),
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        let secrets = CONSUMERS
            .iter()
            .map(|(consumer, _)| {
                let secret = api
                    .secret("haproxy-controller", &format!("client-ca-cert-{consumer}"))
                    .unwrap();
                (*consumer, secret.data)
            })
            .collect();
        (secrets, run)
    }
}

#[test]
fn both_producers_write_the_keys_each_consumer_reads() {
    let m = Migration::new();
    let (synced, run) = m.secrets_from_nas_sync();
    for (consumer, keys) in CONSUMERS {
        let from_eso = m.secret_from_external_secret(consumer);
        assert_eq!(
            from_eso.keys().map(String::as_str).collect::<Vec<_>>(),
            keys,
            "{consumer}: the ExternalSecret's keys"
        );
        assert_eq!(
            synced[consumer], from_eso,
            "{consumer}: nas-sync-job and the ExternalSecret write different Secrets"
        );
    }
    // haproxy-ingress's CRL key holds one CRL per CA of the migration bundle.
    let crls = String::from_utf8(synced["haproxy-ingress"]["ca.crl"].clone()).unwrap();
    assert_eq!(crls.matches("BEGIN X509 CRL").count(), 2);
    assert!(crls.contains(m.legacy_crl.trim()));
    // The job says, for haproxytech only, that revocation is not enforced.
    let warnings: Vec<Value> = run
        .log_lines()
        .into_iter()
        .filter(|l| l["level"] == "WARN")
        .collect();
    assert_eq!(warnings.len(), 1, "{}", run.stderr);
    assert_eq!(
        warnings[0]["secret"],
        "haproxy-controller/client-ca-cert-haproxytech"
    );
    assert!(
        warnings[0]["message"].as_str().unwrap().starts_with(
            "revocation is not enforced: haproxytech/kubernetes-ingress reads only tls.crt"
        ),
        "{}",
        warnings[0]
    );
    // The homelab cluster selects exactly one consumer.
    let text = std::fs::read_to_string(
        workspace_root().join("kubernetes/homelab/security/configs/kustomization.yaml"),
    )
    .unwrap();
    let selected: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- ../client-ca/"))
        .collect();
    assert_eq!(selected.len(), 1, "{text}");
    assert!(
        CONSUMERS.iter().any(|(c, _)| *c == selected[0]),
        "{selected:?}"
    );
}

#[test]
fn each_consumer_enforces_revocation_if_it_can() {
    let m = Migration::new();
    let (synced, _) = m.secrets_from_nas_sync();
    for (consumer, _) in CONSUMERS {
        let haproxy = HaProxy::for_secret(consumer, &synced[consumer]);
        let get = |user: &str| {
            let (file, password) = m.p12(user);
            haproxy.get_with_p12(Some((&file, &password)))
        };
        for kept in ["alice", "olduser"] {
            assert_eq!(
                get(kept),
                Some((200, format!("hello {kept}"))),
                "{consumer}: {kept} was refused"
            );
        }
        assert_eq!(
            haproxy.get_with_p12(None),
            None,
            "{consumer}: a client without a certificate got through"
        );
        for revoked in ["bob", "oldgone"] {
            if consumer == "haproxytech" {
                // No CRL reaches this controller: the revoked are accepted until they expire,
                // as the README and the job's log say.
                assert_eq!(
                    get(revoked),
                    Some((200, format!("hello {revoked}"))),
                    "{consumer}"
                );
            } else {
                assert_eq!(
                    get(revoked),
                    None,
                    "{consumer}: revoked {revoked} got through"
                );
            }
        }
    }
    // Why both CAs need a current CRL: with only the job's CRL, HAProxy refuses every client
    // of the legacy CA, kept or not (and nas-sync-job refuses to write such a bundle).
    let mut partial = synced["haproxy"].clone();
    let crl = String::from_utf8(partial["crl.pem"].clone()).unwrap();
    partial.insert(
        "crl.pem".into(),
        crl.replace(m.legacy_crl.trim(), "").into_bytes(),
    );
    let haproxy = HaProxy::for_secret("haproxy", &partial);
    let (alice, password) = m.p12("alice");
    assert_eq!(
        haproxy.get_with_p12(Some((&alice, &password))).map(|r| r.0),
        Some(200)
    );
    let (olduser, password) = m.p12("olduser");
    assert_eq!(haproxy.get_with_p12(Some((&olduser, &password))), None);
}
