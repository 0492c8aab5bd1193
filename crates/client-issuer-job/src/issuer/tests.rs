//! The issuer's decisions against the scripted store: every interleaving with a concurrent
//! run is placed exactly, so each branch runs every time, in milliseconds.

use job_support::store::scripted::{Contents, ScriptedStore};
use job_support::{InvalidState, SecretData, SecretStore};
use pki_core::time::{Duration, OffsetDateTime};
use pki_core::{Crl, Pkcs12Profile, RevocationReason};

use super::{Issuer, RunSummary};
use crate::clients_file::DeclaredClient;
use crate::config::PkiSettings;

const BUNDLE: &str = "pki/ca";
const INDEX: &str = "pki/clients-index";

fn t0() -> OffsetDateTime {
    // 2026-01-10 12:00 UTC
    OffsetDateTime::from_unix_timestamp(1_768_046_400).unwrap()
}

/// A self-signed EC P-256 CA made at `at`.
fn root_ca(
    organization: &str,
    common_name: &str,
    validity: Duration,
    at: OffsetDateTime,
) -> pki_core::CaCredential {
    pki_core::generate_root_ca(
        &pki_core::CaParams {
            subject: pki_core::SubjectName::new(organization, common_name),
            key_algorithm: pki_core::KeyAlgorithm::EcdsaP256,
            validity,
        },
        at,
    )
    .unwrap()
}

fn client(name: &str) -> DeclaredClient {
    DeclaredClient {
        name: name.to_owned(),
        email: format!("{name}@example.org"),
        profile: Pkcs12Profile::Modern,
        validity_days: None,
        revoked: false,
        revocation_reason: RevocationReason::Unspecified,
    }
}

fn clients(names: &[&str]) -> Vec<DeclaredClient> {
    names.iter().map(|n| client(n)).collect()
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn converge(
    store: &ScriptedStore,
    names: &[&str],
    now: OffsetDateTime,
) -> anyhow::Result<RunSummary> {
    let pki = PkiSettings::defaults("secret");
    block_on(Issuer::new(store, &pki, now).converge(&clients(names)))
}

/// The serials the stored CRL lists, as relying parties see them.
fn published(store: &ScriptedStore) -> Vec<String> {
    let entry = store.current(BUNDLE).expect("the bundle exists");
    let crl = Crl::bundle_from_pem(entry.data.get("crl.pem").unwrap(), "crl.pem").unwrap();
    let mut serials: Vec<String> = crl[0]
        .info()
        .revoked
        .iter()
        .map(|r| r.serial_hex.clone())
        .collect();
    serials.sort();
    serials
}

fn serial(store: &ScriptedStore, name: &str) -> String {
    store
        .current(&format!("pki/clients/{name}"))
        .unwrap()
        .data
        .get("serial")
        .unwrap()
        .to_owned()
}

/// alice, bob and carol issued; the bundle has an empty CRL.
fn three_clients() -> ScriptedStore {
    let store = ScriptedStore::new();
    converge(&store, &["alice", "bob", "carol"], t0()).unwrap();
    assert!(published(&store).is_empty());
    // A fresh log: the tests look at what their own run does.
    ScriptedStore::with_contents(store.contents())
}

/// What another run does when it starts from `contents`: its converge on `names`, run to the
/// end on a copy; the entries it wrote, to replay into the first run's store at a chosen point.
fn other_run(contents: Contents, names: &[&str]) -> Vec<(String, SecretData)> {
    let other = ScriptedStore::with_contents(contents);
    converge(&other, names, t0() + Duration::minutes(1)).unwrap();
    other
        .written()
        .into_iter()
        .map(|path| {
            let data = other.current(&path).unwrap().data;
            (path, data)
        })
        .collect()
}

fn replay(writes: Vec<(String, SecretData)>) -> impl FnOnce(&mut Contents) + Send + 'static {
    move |contents| {
        for (path, data) in writes {
            contents.put(&path, data);
        }
    }
}

#[test]
fn a_run_that_loses_the_bundle_race_keeps_the_winners_revocations() {
    let store = three_clients();
    let (bob, carol) = (serial(&store, "bob"), serial(&store, "carol"));
    // The other run revokes carol; it read everything before this run wrote anything, and
    // its bundle lands just before this run's bundle write, which therefore conflicts.
    let theirs = other_run(store.contents(), &["alice", "bob"]);
    store.before_write(BUNDLE, 1, replay(theirs));

    let summary = converge(&store, &["alice", "carol"], t0() + Duration::minutes(2)).unwrap();

    assert!(summary.bundle_written);
    let mut want = vec![bob, carol];
    want.sort();
    assert_eq!(published(&store), want, "both revocations are published");
    // The first bundle write lost, the second was built on the winner's version.
    let bundle_writes: Vec<bool> = store
        .log()
        .into_iter()
        .filter_map(|op| match op {
            job_support::store::scripted::Operation::Write { path, written, .. }
                if path == BUNDLE =>
            {
                Some(written)
            }
            _ => None,
        })
        .collect();
    assert_eq!(bundle_writes, [false, true]);
}

#[test]
fn a_run_that_read_before_another_revoked_does_not_drop_that_revocation() {
    let store = three_clients();
    let carol = serial(&store, "carol");
    // The other run revokes carol and publishes it after this run read carol's entry as
    // active, but before this run reads the bundle: no conflict, only a stale view.
    let theirs = other_run(store.contents(), &["alice", "bob"]);
    // Reads 1 and 2 of the bundle are the checks before any write, read 3 the one finish
    // builds on.
    store.before_read(BUNDLE, 3, replay(theirs));

    // This run changes nothing about the clients it declares, so it would write nothing.
    let summary = converge_three(&store, 2);

    assert!(
        !summary.bundle_written,
        "the published bundle already has everything"
    );
    assert_eq!(published(&store), [carol]);
}

#[test]
fn a_published_revocation_survives_its_entry_being_deleted_by_hand() {
    let store = three_clients();
    let bob = serial(&store, "bob");
    converge(&store, &["alice", "carol"], t0() + Duration::minutes(1)).unwrap();
    assert_eq!(published(&store), std::slice::from_ref(&bob));
    // Nothing in this run knows of bob any more; the CRL still does.
    let mut contents = store.contents();
    contents.forget("pki/clients/bob");
    let store = ScriptedStore::with_contents(contents);

    converge(
        &store,
        &["alice", "carol", "dave"],
        t0() + Duration::minutes(2),
    )
    .unwrap();

    assert_eq!(published(&store), [bob]);
}

#[test]
fn losing_every_race_is_bounded_and_names_the_bundle() {
    let store = three_clients();
    // Before each of this run's bundle writes, another run rewrites the bundle unchanged.
    for _ in 0..super::bundle::BUNDLE_ATTEMPTS {
        store.before_write(BUNDLE, 1, |contents| {
            let current = contents.current(BUNDLE).unwrap();
            contents.put(BUNDLE, current.data);
        });
    }

    let error = converge(&store, &["alice", "bob"], t0() + Duration::minutes(1)).unwrap_err();

    assert_eq!(
        format!("{error:#}"),
        "'secret/pki/ca' kept changing under concurrent runs; gave up after 10 attempts (every revocation stays recorded in its client entry; the next run publishes it)"
    );
    // Carol's revocation is in her entry, so the next run publishes it.
    converge(&store, &["alice", "bob"], t0() + Duration::minutes(2)).unwrap();
    assert_eq!(published(&store), [serial(&store, "carol")]);
}

fn invalid_state(error: &anyhow::Error) -> String {
    error
        .downcast_ref::<InvalidState>()
        .unwrap_or_else(|| panic!("not invalid state: {error:#}"))
        .to_string()
}

#[test]
fn a_garbage_crl_is_reported_and_never_rewritten() {
    let store = three_clients();
    let mut data = store.current(BUNDLE).unwrap().data;
    data.insert("crl.pem", "not a CRL");
    store.put(BUNDLE, data);
    let before = store.contents();

    let error = converge(&store, &["alice"], t0() + Duration::minutes(1)).unwrap_err();

    assert_eq!(
        invalid_state(&error),
        "invalid state at 'secret/pki/ca': field 'crl.pem' holds no CRL; nothing was written"
    );
    assert!(
        store.written().is_empty(),
        "nothing written: {:?}",
        store.written()
    );
    assert_eq!(store.contents().current(BUNDLE), before.current(BUNDLE));
}

#[test]
fn a_foreign_entry_at_the_bundle_path_is_never_overwritten() {
    let spellings = "cert/key, ca.crt/ca.key, tls.crt/tls.key, certificate/private_key";
    for fields in [
        &["pem", "secret"][..],
        &["cert", "key", "note"],
        &["cert", "private_key"],
        &["ca.crt", "ca.key", "crl.pem"],
    ] {
        let store = ScriptedStore::new();
        let mut data = SecretData::new();
        for field in fields {
            data.insert(*field, "-----BEGIN CERTIFICATE-----");
        }
        store.put(BUNDLE, data);
        let mut sorted = fields.to_vec();
        sorted.sort_unstable();

        let error =
            converge_choosing(&store, &["alice"], t0(), Some(PreviousCa::Trusted)).unwrap_err();

        assert_eq!(
            invalid_state(&error),
            format!(
                "invalid state at 'secret/pki/ca': holds fields this job never writes ({}); expected this job's bundle (ca.crt, crl.pem, created, not_after, crl_number, crl_next_update) or a client CA of the previous scripts as exactly one certificate and key pair ({spellings}). Nothing was written",
                sorted.join(", ")
            )
        );
        assert!(
            store.written().is_empty(),
            "nothing written: {:?}",
            store.written()
        );
    }
}

#[test]
fn a_bundle_that_trusts_the_ca_but_lacks_its_crl_is_invalid() {
    let store = three_clients();
    let mut data = store.current(BUNDLE).unwrap().data;
    // A CRL of some other CA in place of ours.
    let other = root_ca("Other", "Other CA", Duration::days(30), t0());
    let crl = pki_core::sign_crl(
        &other,
        &pki_core::CrlParams {
            this_update: t0(),
            next_update: t0() + Duration::days(7),
            crl_number: 1,
            revoked: Vec::new(),
        },
    )
    .unwrap();
    data.insert("crl.pem", crl);
    store.put(BUNDLE, data);

    let error = converge(
        &store,
        &["alice", "bob", "carol"],
        t0() + Duration::minutes(1),
    )
    .unwrap_err();

    assert_eq!(
        invalid_state(&error),
        "invalid state at 'secret/pki/ca': 'crl.pem': no CRL signed by 'O=NAS, CN=Client CA'; \
         HAProxy with a crl-file would refuse every client of that CA"
    );
    assert!(store.written().is_empty());
}

#[test]
fn a_conflicting_client_write_adopts_the_winners_entry() {
    let store = ScriptedStore::new();
    converge(&store, &["alice"], t0()).unwrap();
    // Another run issues bob first.
    let theirs = other_run(store.contents(), &["alice", "bob"]);
    store.before_write("pki/clients/bob", 1, replay(theirs));

    let summary = converge(&store, &["alice", "bob"], t0() + Duration::minutes(2)).unwrap();

    let bob = summary.clients.iter().find(|c| c.name == "bob").unwrap();
    assert_eq!(bob.action, super::ClientAction::Adopted);
    assert_eq!(bob.serial, serial(&store, "bob"));
}

#[test]
fn a_run_with_nothing_to_do_writes_nothing() {
    let store = three_clients();
    let summary = converge_three(&store, 1);
    assert_eq!(summary.writes(), 0);
    assert!(store.written().is_empty(), "{:?}", store.written());
}

#[test]
fn absurd_validity_is_an_error_not_a_panic() {
    let store = ScriptedStore::new();
    let pki = PkiSettings::defaults("secret");
    let mut alice = client("alice");
    alice.validity_days = Some(u32::MAX);
    let issuer = Issuer::new(&store, &pki, t0());
    // The clients file refuses this value; the issuer itself must not panic on it either.
    let error = block_on(issuer.issue_one(&alice)).unwrap_err();
    assert!(
        format!("{error:#}").contains("ends after the year 9999"),
        "{error:#}"
    );
}

#[test]
fn the_store_sees_no_write_from_a_report() {
    let store = three_clients();
    let pki = PkiSettings::defaults("secret");
    let writes = store.written().len();
    let inventory = block_on(Issuer::new(&store, &pki, t0()).inventory()).unwrap();
    assert!(inventory.ca.is_some() && inventory.crl.is_some());
    assert_eq!(inventory.clients.len(), 3);
    assert_eq!(store.written().len(), writes);
    let _ = store.describe();
}

/// Replaces one field of a stored client entry, as a hand edit would.
fn edit(store: &ScriptedStore, name: &str, field: &str, value: &str) {
    let path = format!("pki/clients/{name}");
    let mut data = store.current(&path).unwrap().data;
    data.insert(field, value);
    store.put(&path, data);
}

fn problems(summary: &RunSummary) -> Vec<(String, String)> {
    summary
        .attention
        .iter()
        .map(|a| (a.name.clone(), a.problem.clone()))
        .collect()
}

#[test]
fn unusable_bundles_are_named_left_alone_and_repaired_on_request() {
    let store = three_clients();
    edit(&store, "alice", "p12", "garbage!");
    // carol's entry gets bob's bundle, with the password that opens it.
    let bob = store.current("pki/clients/bob").unwrap().data;
    edit(&store, "carol", "p12", bob.get("p12").unwrap());
    edit(&store, "carol", "password", bob.get("password").unwrap());
    edit(&store, "bob", "password", "not-the-password");
    let store = ScriptedStore::with_contents(store.contents());

    let summary = converge_three(&store, 1);

    assert_eq!(
        problems(&summary),
        [
            ("alice".into(), "field 'p12' is not base64; re-issue it with 'client-issuer-job repair alice'".into()),
            ("bob".into(), "invalid PKCS#12 bundle: field 'p12' cannot be opened: MAC tag mismatch (wrong 'password', or 'p12' is corrupted); re-issue it with 'client-issuer-job repair bob'".into()),
            ("carol".into(), format!("field 'p12' holds the certificate of 'CN=bob' (serial {}), not this entry's (serial {}); re-issue it with 'client-issuer-job repair carol'", serial(&store, "bob"), serial(&store, "carol"))),
        ]
    );
    // The entries are left alone; the index, built from them, records them as they are.
    assert_eq!(store.written(), [INDEX], "left alone");

    // Repair re-issues only what is named, keeping the others as they are.
    let pki = PkiSettings::defaults("secret");
    let issuer =
        Issuer::new(&store, &pki, t0() + Duration::minutes(2)).repairing(["carol".to_owned()]);
    let summary = block_on(issuer.converge(&clients(&["alice", "bob", "carol"]))).unwrap();
    assert_eq!(store.written(), [INDEX, "pki/clients/carol", INDEX]);
    assert_eq!(
        summary
            .attention
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>(),
        ["alice", "bob"]
    );
    let carol = summary.clients.iter().find(|c| c.name == "carol").unwrap();
    assert_eq!(carol.action, super::ClientAction::Renewed);
}

#[test]
fn repairing_a_usable_or_missing_entry_is_refused_before_any_write() {
    let store = three_clients();
    let pki = PkiSettings::defaults("secret");
    let issuer = Issuer::new(&store, &pki, t0()).repairing(["alice".to_owned(), "zed".to_owned()]);
    let error = block_on(issuer.converge(&clients(&["alice", "bob", "carol"]))).unwrap_err();
    assert_eq!(
        format!("{error:#}"),
        "invalid arguments: repair names entries whose PKCS#12 is usable, or that do not exist or are not this job's: alice, zed; nothing was written"
    );
    assert!(store.written().is_empty());
}

/// An entry as the previous scripts' `generate_client_cert` left it (`p12`, `cert`,
/// `created`), from a CA of their own.
fn previous_entry(name: &str) -> SecretData {
    let ca = root_ca(
        "NAS",
        "Client CA",
        Duration::days(3650),
        t0() - Duration::days(100),
    );
    let credential = pki_core::issue_client_certificate(
        &ca,
        &pki_core::ClientCertificateParams {
            name: name.into(),
            email: format!("{name}@example.org"),
            key_algorithm: pki_core::KeyAlgorithm::EcdsaP256,
            validity: Duration::days(365),
        },
        t0() - Duration::days(100),
    )
    .unwrap();
    let mut data = SecretData::new();
    data.insert("p12", "MIIC...");
    data.insert("cert", credential.certificate.to_pem());
    data.insert("created", "2025-10-02T12:00:00Z");
    data
}

#[test]
fn entries_of_the_previous_scripts_are_kept_listed_and_migrated_when_declared() {
    let store = ScriptedStore::new();
    store.put("pki/clients/olduser", previous_entry("olduser"));
    store.put("pki/clients/migrant", previous_entry("migrant"));
    let mut odd = SecretData::new();
    odd.insert("note", "something else");
    store.put("pki/clients/stranger", odd);

    let summary = converge(&store, &["alice", "migrant"], t0()).unwrap();

    let action = |name: &str| {
        summary
            .clients
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.action)
    };
    assert_eq!(action("olduser"), Some(super::ClientAction::Previous));
    assert_eq!(action("migrant"), Some(super::ClientAction::Migrated));
    assert_eq!(action("alice"), Some(super::ClientAction::Issued));
    assert_eq!(action("stranger"), None);
    assert_eq!(
        problems(&summary),
        [(
            "stranger".into(),
            "missing field 'cert' (fields present: note)".into()
        )]
    );
    // The undeclared user's entry and the stranger are untouched; the migrant's is ours now,
    // with the old certificate kept for the record.
    assert_eq!(store.current("pki/clients/olduser").unwrap().version, 1);
    assert_eq!(store.current("pki/clients/stranger").unwrap().version, 1);
    let migrant = store.current("pki/clients/migrant").unwrap();
    assert_eq!(migrant.version, 2);
    assert_eq!(
        migrant.data.get("previous_cert"),
        previous_entry("migrant")
            .get("cert")
            .map(|_| migrant.data.get("previous_cert").unwrap())
    );
    assert!(migrant.data.get("password").is_some());
    // A second run is a no-op apart from what still needs an operator.
    let store = ScriptedStore::with_contents(store.contents());
    let summary = converge(&store, &["alice", "migrant"], t0() + Duration::minutes(1)).unwrap();
    assert!(store.written().is_empty(), "{:?}", store.written());
    assert_eq!(summary.attention.len(), 1);
}

#[test]
fn an_emptied_clients_file_revokes_no_one() {
    let store = three_clients();
    let pki = PkiSettings::defaults("secret");
    for file in ["", "# emptied by a merge\n", "clients:\n", "clients: []\n"] {
        let declared = crate::clients_file::parse_clients_file(file).unwrap();
        assert!(!declared.allow_revoke_all);
        let issuer = Issuer::new(&store, &pki, t0() + Duration::minutes(1));
        let error = block_on(issuer.converge(&declared.clients)).unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "invalid CLIENTS_FILE: this run would revoke 3 of 3 active clients (alice, bob, carol), more than REVOKE_MAX_PERCENT=50% or REVOKE_MAX_COUNT=10 allow; nothing was written. If the file is right, add 'allow_revoke_all: true' to it, or run once with ALLOW_MASS_REVOCATION=true",
            "{file:?}"
        );
        assert!(store.written().is_empty());
    }
    // Under the share, as an operator removing one user does: allowed.
    converge(&store, &["alice", "bob"], t0() + Duration::minutes(1)).unwrap();
    // Said explicitly in the file: allowed.
    let declared =
        crate::clients_file::parse_clients_file("clients: []\nallow_revoke_all: true\n").unwrap();
    let summary = block_on(
        Issuer::new(&store, &pki, t0() + Duration::minutes(2))
            .allowing_mass_revocation(declared.allow_revoke_all)
            .converge(&declared.clients),
    )
    .unwrap();
    assert_eq!(summary.count(super::ClientAction::Revoked), 2);
}

#[test]
fn the_revocation_limits_come_from_configuration() {
    let store = three_clients();
    let mut pki = PkiSettings::defaults("secret");
    pki.revoke_guard.max_count = 0;
    // One of three is under 50 %, but over a count of 0.
    let error = block_on(Issuer::new(&store, &pki, t0()).converge(&clients(&["alice", "bob"])))
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("would revoke 1 of 3 active clients (carol)"),
        "{error:#}"
    );
    pki.revoke_guard.allowed = true;
    block_on(Issuer::new(&store, &pki, t0()).converge(&clients(&["alice", "bob"]))).unwrap();
}

// ---- The previous scripts' CA at the bundle path ----

use super::previous_ca::SPELLINGS;
use crate::config::PreviousCa;
use job_support::store::scripted::Operation;

fn converge_choosing(
    store: &ScriptedStore,
    names: &[&str],
    now: OffsetDateTime,
    choice: Option<PreviousCa>,
) -> anyhow::Result<RunSummary> {
    let mut pki = PkiSettings::defaults("secret");
    pki.previous_ca = choice;
    block_on(Issuer::new(store, &pki, now).converge(&clients(names)))
}

/// A CA as the previous scripts made it, and their entry at the bundle path: version 1 the
/// deployment guide's `placeholder=true`, version 2 the CA and key under `fields`.
fn previous_scripts_ca(store: &ScriptedStore, fields: (&str, &str)) -> pki_core::CaCredential {
    let ca = root_ca(
        "NAS",
        "Client CA",
        Duration::days(3650),
        t0() - Duration::days(100),
    );
    let mut placeholder = SecretData::new();
    placeholder.insert("placeholder", "true");
    store.put(BUNDLE, placeholder);
    let mut data = SecretData::new();
    data.insert(fields.0, ca.certificate.to_pem());
    data.insert(fields.1, ca.key_pem().expose());
    assert_eq!(store.put(BUNDLE, data), 2);
    ca
}

fn target(choice: PreviousCa) -> &'static str {
    match choice {
        PreviousCa::Issuer => "pki/issuer",
        PreviousCa::Trusted => "pki/previous-ca",
    }
}

/// Every path with a readable version (any version) holding `key`.
fn places_holding(contents: &Contents, paths: &[&str], key: &str) -> Vec<String> {
    paths
        .iter()
        .filter(|path| {
            (1..=contents.versions(path)).any(|v| {
                contents
                    .version(path, v)
                    .is_some_and(|d| d.iter().any(|(_, value)| value.trim() == key.trim()))
            })
        })
        .map(|p| (*p).to_owned())
        .collect()
}

const PATHS: [&str; 3] = [BUNDLE, "pki/issuer", "pki/previous-ca"];

fn unavailable(path: &str) -> job_support::StoreError {
    job_support::StoreError::Unavailable {
        operation: "write",
        path: format!("secret/{path}"),
        detail: "connection reset (the pod was killed)".into(),
    }
}

/// The move is finished: the key at the target only, the bundle at the bundle path, every
/// version that held the key destroyed, the record saying so.
fn assert_moved(store: &ScriptedStore, ca: &pki_core::CaCredential, choice: PreviousCa) {
    let contents = store.contents();
    let key = ca.key_pem().expose().to_owned();
    assert_eq!(places_holding(&contents, &PATHS, &key), [target(choice)]);
    assert_eq!(contents.version(BUNDLE, 1), None, "the placeholder version");
    assert_eq!(
        contents.version(BUNDLE, 2),
        None,
        "the version with the key"
    );
    let bundle = contents.current(BUNDLE).unwrap();
    assert!(bundle.data.fields().all(|f| f != "key" && f != "cert"));
    let record = contents.current(target(choice)).unwrap();
    assert_eq!(record.data.get("adopted_from"), Some("secret/pki/ca"));
    assert_eq!(record.data.get("adopted_version"), Some("2"));
    assert_eq!(record.data.get("source_destroyed"), Some("1,2"));
    // The bundle trusts the old CA, with a CRL signed by it.
    let trusted = bundle.data.get("ca.crt").unwrap();
    assert!(trusted.contains(ca.certificate.to_pem().trim()));
    let crls = Crl::bundle_from_pem(bundle.data.get("crl.pem").unwrap(), "crl.pem").unwrap();
    assert!(
        crls.iter()
            .any(|c| c.verify_signed_by(&ca.certificate).is_ok())
    );
    let issuer = contents.current("pki/issuer").unwrap();
    let issuer_is_old = issuer.data.get("ca.key").map(str::trim) == Some(key.trim());
    assert_eq!(issuer_is_old, choice == PreviousCa::Issuer);
    if choice == PreviousCa::Trusted {
        // Two CAs, two CRLs: ours and the previous one.
        assert_eq!(crls.len(), 2);
        assert!(store.current("pki/clients/alice").is_some());
    }
}

#[test]
fn every_spelling_of_the_previous_scripts_ca_is_adopted() {
    for choice in [PreviousCa::Issuer, PreviousCa::Trusted] {
        for fields in SPELLINGS {
            let store = ScriptedStore::new();
            let ca = previous_scripts_ca(&store, fields);
            converge_choosing(&store, &["alice"], t0(), Some(choice))
                .unwrap_or_else(|e| panic!("{fields:?} {choice:?}: {e:#}"));
            assert_moved(&store, &ca, choice);
            let alice = store.current("pki/clients/alice").unwrap();
            let cert =
                pki_core::Certificate::from_pem(alice.data.get("cert").unwrap(), "cert").unwrap();
            assert_eq!(
                cert.verify_signed_by(&ca.certificate).is_ok(),
                choice == PreviousCa::Issuer,
                "new users are signed by the old CA exactly when it is the issuer"
            );
            // The next run has nothing left to move.
            let store = ScriptedStore::with_contents(store.contents());
            let summary = converge_choosing(
                &store,
                &["alice"],
                t0() + Duration::minutes(1),
                Some(choice),
            )
            .unwrap();
            assert_eq!(summary.writes(), 0);
            assert!(store.written().is_empty(), "{:?}", store.written());
            assert!(
                !store
                    .log()
                    .iter()
                    .any(|op| matches!(op, Operation::Destroy { .. }))
            );
        }
    }
}

#[test]
fn without_a_choice_the_previous_scripts_ca_stops_the_run_before_any_write() {
    let store = ScriptedStore::new();
    previous_scripts_ca(&store, ("cert", "key"));

    let error = converge_choosing(&store, &["alice"], t0(), None).unwrap_err();

    assert_eq!(
        format!("{error:#}"),
        "invalid PREVIOUS_CA: 'secret/pki/ca' holds a client CA of the previous scripts, its key included (fields cert, key); set PREVIOUS_CA=issuer to make it this job's client CA (its key moves to 'secret/pki/issuer'), or PREVIOUS_CA=trusted to keep it trusted while users move to a new CA (its key moves to 'secret/pki/previous-ca'). Nothing was written"
    );
    assert_eq!(
        job_support::exit::Failure::of(&error),
        job_support::exit::Failure::Config
    );
    assert!(store.written().is_empty(), "{:?}", store.written());
}

#[test]
fn a_previous_scripts_pair_that_is_no_ca_is_invalid_state() {
    let store = ScriptedStore::new();
    let ca = previous_scripts_ca(&ScriptedStore::new(), ("cert", "key"));
    let other = previous_scripts_ca(&ScriptedStore::new(), ("cert", "key"));
    // The certificate with another CA's key.
    let mut data = SecretData::new();
    data.insert("tls.crt", ca.certificate.to_pem());
    data.insert("tls.key", other.key_pem().expose());
    store.put(BUNDLE, data);

    let error = converge_choosing(&store, &["alice"], t0(), None).unwrap_err();

    let message = invalid_state(&error);
    assert!(
        message.starts_with("invalid state at 'secret/pki/ca': holds a certificate and key of the previous scripts ('tls.crt', 'tls.key') that cannot be adopted as a client CA: "),
        "{message}"
    );
    assert!(message.ends_with("Nothing was written"), "{message}");
    assert!(store.written().is_empty());
}

#[test]
fn an_issuer_choice_never_replaces_this_jobs_own_ca() {
    let store = ScriptedStore::new();
    converge(&store, &["alice"], t0()).unwrap();
    // The previous scripts' step run again, over the bundle.
    let mut contents = store.contents();
    contents.forget(BUNDLE);
    let store = ScriptedStore::with_contents(contents);
    previous_scripts_ca(&store, ("cert", "key"));
    let issuer = store.current("pki/issuer").unwrap();

    let error = converge_choosing(&store, &["alice"], t0(), Some(PreviousCa::Issuer)).unwrap_err();

    assert!(
        invalid_state(&error).starts_with("invalid state at 'secret/pki/issuer': PREVIOUS_CA=issuer would move the previous scripts' CA here, but the entry already holds ca.crt, ca.key, created, fingerprint; nothing was written"),
        "{error:#}"
    );
    assert!(store.written().is_empty());
    assert_eq!(store.current("pki/issuer"), Some(issuer));
}

/// A kill between each pair of the move's writes: the first run stops there, the key is
/// still readable by the job, and a fresh run finishes the move.
#[test]
fn a_move_killed_between_any_two_writes_is_finished_by_the_next_run() {
    for choice in [PreviousCa::Issuer, PreviousCa::Trusted] {
        for when in ["at step 1", "after step 1", "after step 2", "after step 3"] {
            let store = ScriptedStore::new();
            let ca = previous_scripts_ca(&store, ("cert", "key"));
            let to = target(choice);
            match when {
                // Step 1 is the first write to the target, step 4 the second.
                "at step 1" => store.fail_write(to, 1, unavailable(to)),
                "after step 1" => store.fail_write(BUNDLE, 1, unavailable(BUNDLE)),
                "after step 2" => store.fail_destroy(BUNDLE, 1, unavailable(BUNDLE)),
                _ => store.fail_write(to, 2, unavailable(to)),
            }

            let error = converge_choosing(&store, &["alice"], t0(), Some(choice)).unwrap_err();
            assert!(
                format!("{error:#}").contains("killed"),
                "{choice:?} {when}: {error:#}"
            );
            let key = ca.key_pem().expose().to_owned();
            let places = places_holding(&store.contents(), &PATHS, &key);
            assert!(!places.is_empty(), "{choice:?} {when}: the key is lost");

            let store = ScriptedStore::with_contents(store.contents());
            converge_choosing(
                &store,
                &["alice"],
                t0() + Duration::minutes(1),
                Some(choice),
            )
            .unwrap_or_else(|e| panic!("{choice:?} {when}: {e:#}"));
            assert_moved(&store, &ca, choice);
            // Never two copies at the target: one create-only write in all.
            let target_versions = store.contents().versions(target(choice));
            assert!(target_versions <= 2, "{choice:?} {when}: {target_versions}");
        }
    }
}

#[test]
fn a_move_under_way_is_finished_as_it_was_started() {
    let store = ScriptedStore::new();
    previous_scripts_ca(&store, ("cert", "key"));
    store.fail_write(BUNDLE, 1, unavailable(BUNDLE));
    converge_choosing(&store, &["alice"], t0(), Some(PreviousCa::Trusted)).unwrap_err();
    let store = ScriptedStore::with_contents(store.contents());

    let error = converge_choosing(&store, &["alice"], t0(), Some(PreviousCa::Issuer)).unwrap_err();

    assert_eq!(
        format!("{error:#}"),
        "invalid PREVIOUS_CA: 'issuer' is issuer but the move of the previous scripts' CA to 'secret/pki/previous-ca' (PREVIOUS_CA=trusted) is under way; run with PREVIOUS_CA=trusted to finish it. Nothing was written"
    );
    assert!(store.written().is_empty());
    // Unset, the move goes on as recorded.
    converge_choosing(&store, &["alice"], t0(), None).unwrap();
}

#[test]
fn a_concurrent_run_that_copied_first_is_adopted_not_duplicated() {
    for choice in [PreviousCa::Issuer, PreviousCa::Trusted] {
        let store = ScriptedStore::new();
        let ca = previous_scripts_ca(&store, ("ca.crt", "ca.key"));
        // The other run gets as far as its copy (step 1), then is killed.
        let other = ScriptedStore::with_contents(store.contents());
        other.fail_write(BUNDLE, 1, unavailable(BUNDLE));
        let _ = converge_choosing(&other, &["alice"], t0(), Some(choice));
        let theirs = other.contents().current(target(choice)).unwrap().data;
        // Its copy lands just before this run's.
        store.before_write(target(choice), 1, move |c| {
            c.put(target(choice), theirs);
        });

        converge_choosing(
            &store,
            &["alice"],
            t0() + Duration::minutes(1),
            Some(choice),
        )
        .unwrap();

        assert_moved(&store, &ca, choice);
        let copies: Vec<bool> = store
            .log()
            .into_iter()
            .filter_map(|op| match op {
                Operation::Write {
                    path,
                    cas: 0,
                    written,
                    ..
                } if path == target(choice) => Some(written),
                _ => None,
            })
            .collect();
        assert_eq!(
            copies,
            [false],
            "{choice:?}: this run's copy lost and was not retried"
        );
        assert_eq!(store.contents().versions(target(choice)), 2, "copy + mark");
    }
}

#[test]
fn the_previous_cas_crl_is_re_signed_with_ours() {
    let store = ScriptedStore::new();
    let ca = previous_scripts_ca(&store, ("cert", "key"));
    converge_choosing(&store, &["alice"], t0(), Some(PreviousCa::Trusted)).unwrap();
    let numbers = |store: &ScriptedStore| {
        let bundle = store.current(BUNDLE).unwrap();
        let crls = Crl::bundle_from_pem(bundle.data.get("crl.pem").unwrap(), "crl.pem").unwrap();
        let previous = crls
            .iter()
            .find(|c| c.verify_signed_by(&ca.certificate).is_ok())
            .unwrap();
        (
            crls[0].info().crl_number,
            previous.info().crl_number,
            previous.info().next_update,
        )
    };
    assert_eq!(numbers(&store).0, Some(1));
    assert_eq!(numbers(&store).1, Some(1));
    // Past the re-sign point: both are re-signed, the previous one with the same nextUpdate.
    let later = t0() + Duration::days(8);
    converge_choosing(&store, &["alice"], later, Some(PreviousCa::Trusted)).unwrap();
    let (ours, previous, next) = numbers(&store);
    assert_eq!((ours, previous), (Some(2), Some(2)));
    assert_eq!(next, Some(later + Duration::days(14)));
}

#[test]
fn an_older_version_holding_another_key_stops_the_adoption_before_any_write() {
    let store = ScriptedStore::new();
    // The previous scripts were run twice: version 2 holds a first CA, version 3 the second.
    let first = previous_scripts_ca(&store, ("cert", "key"));
    let second = root_ca(
        "NAS",
        "Client CA",
        Duration::days(3650),
        t0() - Duration::days(10),
    );
    let mut data = SecretData::new();
    data.insert("cert", second.certificate.to_pem());
    data.insert("key", second.key_pem().expose());
    assert_eq!(store.put(BUNDLE, data), 3);

    for choice in [PreviousCa::Issuer, PreviousCa::Trusted] {
        let error = converge_choosing(&store, &["alice"], t0(), Some(choice)).unwrap_err();
        assert_eq!(
            invalid_state(&error),
            "invalid state at 'secret/pki/ca': version(s) 2 hold another private key than the CA being adopted, and adopting it destroys every earlier version; keep that key first (vault kv get -version=N secret/pki/ca), then destroy those versions (vault kv destroy -versions=2 secret/pki/ca) and run again. Nothing was written"
        );
        assert!(store.written().is_empty(), "{:?}", store.written());
    }
    // Once the operator has kept and destroyed it, the adoption goes ahead.
    let contents = store.contents();
    let store = ScriptedStore::with_contents(contents);
    block_on(store.destroy_versions(BUNDLE, &[2])).unwrap();
    converge_choosing(&store, &["alice"], t0(), Some(PreviousCa::Trusted)).unwrap();
    assert!(
        store.contents().version(BUNDLE, 3).is_none(),
        "the adopted version is destroyed"
    );
    drop(first);
}

// ---- The client index ----

/// The client entries a run read in full.
fn entries_read(store: &ScriptedStore) -> Vec<String> {
    store
        .log()
        .into_iter()
        .filter_map(|op| match op {
            Operation::Read(path) if path.starts_with("pki/clients/") => Some(path),
            _ => None,
        })
        .collect()
}

/// A converge of alice, bob and carol, `minutes` after [`t0`].
fn converge_three(store: &ScriptedStore, minutes: i64) -> RunSummary {
    converge(
        store,
        &["alice", "bob", "carol"],
        t0() + Duration::minutes(minutes),
    )
    .unwrap()
}

#[track_caller]
fn assert_reads_no_entry(store: &ScriptedStore) {
    let read = entries_read(store);
    assert!(read.is_empty(), "{read:?}");
}

fn stored_index(store: &ScriptedStore) -> super::index::Index {
    super::index::Index::parse(&store.current(INDEX).expect("an index").data).unwrap()
}

#[test]
fn with_a_current_index_a_run_reads_no_client_entry() {
    let store = three_clients();
    assert_eq!(stored_index(&store).clients.len(), 3);
    let summary = converge_three(&store, 1);
    assert_reads_no_entry(&store);
    assert!(store.written().is_empty(), "{:?}", store.written());
    assert_eq!(summary.count(super::ClientAction::Kept), 3);
}

#[test]
fn an_absent_index_is_built_from_the_entries() {
    let mut contents = three_clients().contents();
    contents.forget(INDEX);
    let store = ScriptedStore::with_contents(contents);
    let summary = converge_three(&store, 1);
    assert_eq!(entries_read(&store).len(), 3);
    assert_eq!(store.written(), [INDEX]);
    assert_eq!(summary.writes(), 0);
    assert_eq!(stored_index(&store).clients.len(), 3);
}

#[test]
fn an_entry_edited_by_hand_behind_the_index_is_read_and_acted_on() {
    let store = three_clients();
    edit(&store, "alice", "email", "someone@example.org");
    edit(&store, "bob", "p12", "garbage!");
    let store = ScriptedStore::with_contents(store.contents());
    let summary = converge_three(&store, 1);
    assert_eq!(
        entries_read(&store),
        ["pki/clients/alice", "pki/clients/bob"],
        "only the edited entries are read"
    );
    // alice's email differs from the file's: re-issued; bob's garbled bundle is named.
    let alice = summary.clients.iter().find(|c| c.name == "alice").unwrap();
    assert_eq!(alice.action, super::ClientAction::Renewed);
    assert_eq!(problems(&summary).len(), 1);
    assert_eq!(problems(&summary)[0].0, "bob");
    // The next run still names bob, from the index, and reads nothing.
    let store = ScriptedStore::with_contents(store.contents());
    let summary = converge_three(&store, 2);
    assert_reads_no_entry(&store);
    assert_eq!(problems(&summary)[0].0, "bob");
}

#[test]
fn an_entry_deleted_by_hand_behind_the_index_is_issued_again() {
    let mut contents = three_clients().contents();
    contents.forget("pki/clients/alice");
    let store = ScriptedStore::with_contents(contents);
    let summary = converge_three(&store, 1);
    let alice = summary.clients.iter().find(|c| c.name == "alice").unwrap();
    assert_eq!(alice.action, super::ClientAction::Issued);
    assert_eq!(store.written(), ["pki/clients/alice", INDEX]);
}

#[test]
fn an_entry_deleted_and_written_again_at_the_same_version_is_read() {
    let store = three_clients();
    let mut contents = store.contents();
    // Removed with its history, then written by hand: version 1 again, another entry.
    contents.forget("pki/clients/alice");
    let mut data = SecretData::new();
    data.insert("note", "written by hand");
    contents.put("pki/clients/alice", data);
    let store = ScriptedStore::with_contents(contents);
    let summary = converge_three(&store, 1);
    assert_eq!(entries_read(&store), ["pki/clients/alice"]);
    assert_eq!(problems(&summary).len(), 1);
    assert_eq!(problems(&summary)[0].0, "alice");
}

#[test]
fn a_corrupt_index_or_one_of_another_ca_is_rebuilt() {
    let garbled = |contents: &mut Contents| {
        let mut data = SecretData::new();
        data.insert("index", "{not json");
        contents.put(INDEX, data);
    };
    let other_ca = |contents: &mut Contents| {
        let mut data = contents.current(INDEX).unwrap().data;
        let text = data
            .get("index")
            .unwrap()
            .replacen("\"ca\":\"", "\"ca\":\"00", 1);
        data.insert("index", text);
        contents.put(INDEX, data);
    };
    for spoil in [garbled as fn(&mut Contents), other_ca] {
        let mut contents = three_clients().contents();
        spoil(&mut contents);
        let store = ScriptedStore::with_contents(contents);
        converge(
            &store,
            &["alice", "bob", "carol"],
            t0() + Duration::minutes(1),
        )
        .unwrap();
        assert_eq!(entries_read(&store).len(), 3);
        assert_eq!(store.written(), [INDEX]);
        assert_eq!(stored_index(&store).clients.len(), 3);
    }
}

#[test]
fn an_index_written_first_by_a_concurrent_run_is_kept_and_checked_by_the_next() {
    let store = three_clients();
    // Another run writes the index between this run's read and write of it; its summary of
    // alice is outdated (alice was re-issued by hand afterwards, say).
    let stale = store.current(INDEX).unwrap().data;
    store.before_write(INDEX, 1, move |contents| {
        contents.put(INDEX, stale);
    });
    let summary = converge(
        &store,
        &["alice", "bob", "carol", "dave"],
        t0() + Duration::minutes(1),
    )
    .unwrap();
    assert_eq!(summary.count(super::ClientAction::Issued), 1);
    let index_writes: Vec<bool> = store
        .log()
        .into_iter()
        .filter_map(|op| match op {
            Operation::Write { path, written, .. } if path == INDEX => Some(written),
            _ => None,
        })
        .collect();
    assert_eq!(
        index_writes,
        [false],
        "the conflicting write is not retried"
    );
    // The winner's index does not know dave: the next run reads dave, keeps it, and
    // records it.
    let store = ScriptedStore::with_contents(store.contents());
    let summary = converge(
        &store,
        &["alice", "bob", "carol", "dave"],
        t0() + Duration::minutes(2),
    )
    .unwrap();
    assert_eq!(entries_read(&store), ["pki/clients/dave"]);
    assert_eq!(summary.writes(), 0);
    assert_eq!(store.written(), [INDEX]);
    assert_eq!(stored_index(&store).clients.len(), 4);
}

#[test]
fn an_index_the_policy_does_not_grant_means_reading_every_entry() {
    let store = three_clients();
    store.fail_read(
        INDEX,
        1,
        job_support::StoreError::Denied {
            operation: "read",
            path: format!("secret/{INDEX}"),
            detail: "1 error occurred: permission denied".into(),
            login: false,
        },
    );
    let summary = converge_three(&store, 1);
    assert_eq!(entries_read(&store).len(), 3);
    assert_eq!(summary.count(super::ClientAction::Kept), 3);
    // Its index write names version 0 and conflicts with the one there: nothing is replaced.
    assert!(store.written().is_empty(), "{:?}", store.written());
}

#[test]
fn the_one_off_issue_reads_only_its_own_entry() {
    let store = three_clients();
    let pki = PkiSettings::defaults("secret");
    let summary = block_on(Issuer::new(&store, &pki, t0()).issue_one(&client("dave"))).unwrap();
    assert_eq!(entries_read(&store), ["pki/clients/dave"]);
    assert!(
        !store
            .log()
            .iter()
            .any(|op| matches!(op, Operation::List(_))),
        "{:?}",
        store.log()
    );
    assert_eq!(summary.clients.len(), 1);
    assert_eq!(store.written(), ["pki/clients/dave"]);

    // For the metrics, the others as the index recorded them: one more read, of the index.
    let summary = block_on(
        Issuer::new(&store, &pki, t0())
            .summarising_others(true)
            .issue_one(&client("erin")),
    )
    .unwrap();
    let names: Vec<&str> = summary.clients.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["alice", "bob", "carol", "erin"]);
}
