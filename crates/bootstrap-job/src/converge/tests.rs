//! Every branch of the bootstrap decision, driven through the scripted store: create, keep,
//! renew, adopt after a lost create-only or check-and-set race, a cluster added later, and the
//! refusals that must come before any write. No server, fixed times, milliseconds.

use job_support::store::scripted::{Contents, Operation, ScriptedStore};
use pki_core::RenewalPolicy;
use pki_core::istio::IstioCaParams;
use pki_core::time::Duration;

use super::*;

/// 2026-05-01T08:00:00Z.
const T0: OffsetDateTime = match OffsetDateTime::from_unix_timestamp(1_777_622_400) {
    Ok(t) => t,
    Err(_) => OffsetDateTime::UNIX_EPOCH,
};

/// The default layout with both clusters (the rotation tests use it too).
pub(crate) fn plan() -> Plan {
    Plan {
        mount: "secret".into(),
        root_path: "istio/ca".into(),
        clusters_path: "istio/clusters".into(),
        rotation_path: "istio/rotation".into(),
        clusters: vec!["homelab".into(), "nas".into()],
        ca: IstioCaParams::default(),
        renewal: RenewalPolicy::default(),
    }
}

/// The mount as a complete first run at `now` leaves it, made by another run (its own root).
async fn converged_elsewhere(now: OffsetDateTime) -> Contents {
    let other = ScriptedStore::new();
    converge(&other, &plan(), now).await.unwrap();
    other.contents()
}

fn writes(store: &ScriptedStore) -> Vec<(String, u64, bool)> {
    store
        .log()
        .into_iter()
        .filter_map(|op| match op {
            Operation::Write { path, cas, written } => Some((path, cas, written)),
            _ => None,
        })
        .collect()
}

fn actions(outcome: &Outcome) -> Vec<ClusterAction> {
    outcome.clusters.iter().map(|c| c.action).collect()
}

fn fingerprint_at(contents: &Contents, path: &str, field: &str) -> String {
    let pem = contents
        .current(path)
        .unwrap()
        .data
        .get(field)
        .unwrap()
        .to_owned();
    Certificate::from_pem(&pem, field)
        .unwrap()
        .info()
        .fingerprint_sha256
        .clone()
}

#[tokio::test]
async fn an_empty_store_gets_the_root_first_then_each_cluster() {
    let store = ScriptedStore::new();
    let outcome = converge(&store, &plan(), T0).await.unwrap();
    assert!(outcome.root_created);
    assert_eq!(outcome.root_layout, RootLayout::Own);
    assert_eq!(
        actions(&outcome),
        [ClusterAction::Issued, ClusterAction::Issued]
    );
    assert_eq!(
        writes(&store),
        [
            ("istio/ca".into(), 0, true),
            ("istio/clusters/homelab".into(), 0, true),
            ("istio/clusters/nas".into(), 0, true),
        ]
    );
    assert_eq!(outcome.writes(), 3);
    let contents = store.contents();
    assert_eq!(
        fingerprint_at(&contents, "istio/ca", ROOT_CERT),
        outcome.root_fingerprint
    );
    assert_eq!(
        fingerprint_at(&contents, "istio/clusters/nas", ROOT_CERT),
        outcome.root_fingerprint
    );
}

#[tokio::test]
async fn a_converged_store_is_kept_without_a_write() {
    let store = ScriptedStore::with_contents(converged_elsewhere(T0).await);
    let outcome = converge(&store, &plan(), T0 + Duration::days(30))
        .await
        .unwrap();
    assert!(!outcome.root_created);
    assert_eq!(
        actions(&outcome),
        [ClusterAction::Kept, ClusterAction::Kept]
    );
    assert!(writes(&store).is_empty());
    assert_eq!(outcome.writes(), 0);
}

#[tokio::test]
async fn a_root_created_first_by_another_run_is_adopted_with_its_bundles() {
    let theirs = converged_elsewhere(T0).await;
    let their_root = fingerprint_at(&theirs, "istio/ca", ROOT_CERT);
    let their_homelab = fingerprint_at(&theirs, "istio/clusters/homelab", CA_CERT);
    let store = ScriptedStore::new();
    // The other run writes its root and homelab's bundle just before our create-only write.
    store.before_write("istio/ca", 1, move |contents| {
        let mut partial = theirs.clone();
        partial.forget("istio/clusters/nas");
        *contents = partial;
    });
    let outcome = converge(&store, &plan(), T0).await.unwrap();
    assert!(!outcome.root_created);
    assert_eq!(outcome.root_fingerprint, their_root);
    assert_eq!(
        actions(&outcome),
        [ClusterAction::Kept, ClusterAction::Issued]
    );
    assert_eq!(outcome.clusters[0].fingerprint, their_homelab);
    assert_eq!(
        writes(&store),
        [
            ("istio/ca".into(), 0, false),
            ("istio/clusters/nas".into(), 0, true),
        ]
    );
    // The bundle this run issued is under their root.
    assert_eq!(
        fingerprint_at(&store.contents(), "istio/clusters/nas", ROOT_CERT),
        their_root
    );
}

#[tokio::test]
async fn a_bundle_written_first_by_another_run_is_verified_and_adopted() {
    let theirs = converged_elsewhere(T0).await;
    let mut root_only = theirs.clone();
    root_only.forget("istio/clusters/homelab");
    root_only.forget("istio/clusters/nas");
    let store = ScriptedStore::with_contents(root_only);
    let bundle = theirs.current("istio/clusters/homelab").unwrap().data;
    store.before_write("istio/clusters/homelab", 1, move |contents| {
        contents.put("istio/clusters/homelab", bundle);
    });
    let outcome = converge(&store, &plan(), T0).await.unwrap();
    assert_eq!(
        actions(&outcome),
        [ClusterAction::Adopted, ClusterAction::Issued]
    );
    assert_eq!(
        outcome.clusters[0].fingerprint,
        fingerprint_at(&theirs, "istio/clusters/homelab", CA_CERT)
    );
    assert_eq!(outcome.writes(), 1);
}

#[tokio::test]
async fn a_racing_bundle_under_another_root_is_refused_not_adopted() {
    let ours = converged_elsewhere(T0).await;
    let stranger = converged_elsewhere(T0).await;
    let mut root_only = ours.clone();
    root_only.forget("istio/clusters/homelab");
    root_only.forget("istio/clusters/nas");
    let store = ScriptedStore::with_contents(root_only);
    let foreign = stranger.current("istio/clusters/homelab").unwrap().data;
    store.before_write("istio/clusters/homelab", 1, move |contents| {
        contents.put("istio/clusters/homelab", foreign);
    });
    let err = converge(&store, &plan(), T0).await.unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.starts_with("invalid state at 'secret/istio/clusters/homelab': root-cert.pem"),
        "{message}"
    );
    assert!(message.contains("is not the stored root"), "{message}");
    assert!(err.downcast_ref::<InvalidState>().is_some());
    // The foreign bundle stays as it was, and nas was not reached.
    assert!(store.current("istio/clusters/nas").is_none());
}

#[tokio::test]
async fn an_intermediate_due_for_renewal_is_renewed_with_check_and_set_and_the_root_kept() {
    let before = converged_elsewhere(T0).await;
    let root = fingerprint_at(&before, "istio/ca", ROOT_CERT);
    let store = ScriptedStore::with_contents(before);
    // 730-day intermediates renew after 67% of their lifetime.
    let later = T0 + Duration::days(500);
    let outcome = converge(&store, &plan(), later).await.unwrap();
    assert_eq!(
        actions(&outcome),
        [ClusterAction::Renewed, ClusterAction::Renewed]
    );
    assert_eq!(outcome.root_fingerprint, root);
    assert_eq!(
        writes(&store),
        [
            ("istio/clusters/homelab".into(), 1, true),
            ("istio/clusters/nas".into(), 1, true),
        ]
    );
    assert_eq!(store.current("istio/ca").unwrap().version, 1);
    assert_eq!(outcome.clusters[0].days_left, 730);
}

#[tokio::test]
async fn a_renewal_that_loses_the_race_adopts_the_winners_bundle() {
    let before = converged_elsewhere(T0).await;
    let later = T0 + Duration::days(500);
    // The winner renews homelab from the same state, at the same time.
    let winner = ScriptedStore::with_contents(before.clone());
    converge(&winner, &plan(), later).await.unwrap();
    let renewed = winner.current("istio/clusters/homelab").unwrap().data;
    let winners = fingerprint_at(&winner.contents(), "istio/clusters/homelab", CA_CERT);

    let store = ScriptedStore::with_contents(before);
    store.before_write("istio/clusters/homelab", 1, move |contents| {
        contents.put("istio/clusters/homelab", renewed);
    });
    let outcome = converge(&store, &plan(), later).await.unwrap();
    assert_eq!(
        actions(&outcome),
        [ClusterAction::Adopted, ClusterAction::Renewed]
    );
    assert_eq!(outcome.clusters[0].fingerprint, winners);
    assert_eq!(store.current("istio/clusters/homelab").unwrap().version, 2);
}

#[tokio::test]
async fn bundles_without_their_root_are_refused_before_any_write() {
    let mut contents = converged_elsewhere(T0).await;
    contents.forget("istio/ca");
    let store = ScriptedStore::with_contents(contents);
    let err = converge(&store, &plan(), T0).await.unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "invalid state at 'secret/istio/ca': the root is missing but \
         'secret/istio/clusters/homelab' exists; a bundle without its root cannot be trusted or \
         re-issued (restore the root, or remove the cluster bundles)"
    );
    assert!(writes(&store).is_empty());
}

#[tokio::test]
async fn an_invalid_bundle_stops_the_run_before_any_write() {
    let mut contents = converged_elsewhere(T0).await;
    contents.forget("istio/clusters/nas");
    let mut garbled = contents.current("istio/clusters/homelab").unwrap().data;
    garbled.insert(CA_CERT, "not a certificate");
    contents.put("istio/clusters/homelab", garbled);
    let store = ScriptedStore::with_contents(contents);
    let err = converge(&store, &plan(), T0).await.unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.starts_with(
            "invalid state at 'secret/istio/clusters': 'secret/istio/clusters/homelab': "
        ),
        "{message}"
    );
    // The missing nas bundle is not issued either: nothing is written next to invalid state.
    assert!(writes(&store).is_empty());
}

#[tokio::test]
async fn a_cluster_added_later_gets_only_its_own_bundle() {
    let store = ScriptedStore::with_contents(converged_elsewhere(T0).await);
    let mut three = plan();
    three.clusters.push("edge".into());
    let outcome = converge(&store, &three, T0).await.unwrap();
    assert_eq!(
        actions(&outcome),
        [
            ClusterAction::Kept,
            ClusterAction::Kept,
            ClusterAction::Issued
        ]
    );
    assert_eq!(writes(&store), [("istio/clusters/edge".into(), 0, true)]);
}

#[tokio::test]
async fn a_root_of_the_previous_scripts_is_adopted_and_never_rewritten() {
    let root = istio::generate_istio_root(&IstioCaParams::default(), T0).unwrap();
    let pem = root.certificate.to_pem();
    let mut previous = SecretData::new();
    previous.insert("root-cert.pem", pem.clone());
    previous.insert("cert-chain.pem", pem);
    previous.insert("key.pem", root.key.to_pkcs8_pem().expose());
    let store = ScriptedStore::new();
    store.put("istio/ca", previous.clone());
    let outcome = converge(&store, &plan(), T0).await.unwrap();
    assert_eq!(outcome.root_layout, RootLayout::PreviousScripts);
    assert!(!outcome.root_created);
    assert_eq!(
        outcome.root_fingerprint,
        root.certificate.info().fingerprint_sha256
    );
    assert_eq!(
        actions(&outcome),
        [ClusterAction::Issued, ClusterAction::Issued]
    );
    let stored = store.current("istio/ca").unwrap();
    assert_eq!((stored.version, stored.data), (1, previous));
}

#[tokio::test]
async fn a_failed_write_leaves_what_was_written_for_the_next_run_to_finish() {
    let store = ScriptedStore::new();
    store.fail_write(
        "istio/clusters/nas",
        1,
        job_support::StoreError::Unavailable {
            operation: "write",
            path: "secret/istio/clusters/nas".into(),
            detail: "connection reset".into(),
        },
    );
    let err = converge(&store, &plan(), T0).await.unwrap_err();
    assert!(format!("{err:#}").contains("connection reset"), "{err:#}");
    assert!(store.current("istio/clusters/nas").is_none());
    // The next run keeps the root and homelab's bundle and issues nas's.
    let next = converge(&store, &plan(), T0).await.unwrap();
    assert!(!next.root_created);
    assert_eq!(actions(&next), [ClusterAction::Kept, ClusterAction::Issued]);
}

#[tokio::test]
async fn a_lost_create_whose_winner_then_reads_as_absent_is_invalid_state() {
    let theirs = converged_elsewhere(T0).await;
    let store = ScriptedStore::new();
    let root = theirs.current("istio/ca").unwrap().data;
    store.before_write("istio/ca", 1, move |contents| {
        contents.put("istio/ca", root);
    });
    // Gone again by the time this run reads what won (deleted with its history).
    store.before_read("istio/ca", 2, |contents| contents.forget("istio/ca"));
    let err = converge(&store, &plan(), T0).await.unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "invalid state at 'secret/istio/ca': a create-only write conflicted, yet the entry reads \
         as absent; its latest version is probably deleted (undelete or destroy it)"
    );
    assert!(store.current("istio/clusters/homelab").is_none());
}
