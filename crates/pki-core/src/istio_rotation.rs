//! Moving a running mesh from one root of trust to another without breaking a connection.
//!
//! The stages are those of Istio's own integration test
//! (istio/istio `tests/integration/security/cacert_rotation/main_test.go`): combined roots,
//! then a new signing certificate while both roots are trusted, then the old root removed.
//! Before them comes the import of what a cluster serves today (istiod's self-signed CA from
//! `istio-system/istio-ca-secret`, or the current `cacerts`), so that the first `cacerts` istiod
//! loads changes nothing for running workloads.
//!
//! istiod takes a changed `root-cert.pem` without a restart only with `ISTIO_MULTIROOT_MESH=true`
//! and only when the old and new root sets are in a subset relation
//! (`pilot/pkg/bootstrap/istio_ca.go`, `handleEvent`); [`check_root_change`] applies that rule
//! in both its forms. [`check_step`] refuses a step after which two workloads that could talk
//! before could not: during a step, workloads on both sides of it coexist until each has
//! fetched a new certificate.
//!
//! Everything here is pure: bundles and `now` in, verdicts out.

use std::collections::BTreeSet;
use std::fmt;

use time::{Duration, OffsetDateTime};

use crate::cert::Certificate;
use crate::error::PkiError;
use crate::istio::{
    CA_CERT, CA_KEY, IstioBundleFiles, IstioCaBundle, parse_root_bundle, verify_istio_bundle,
};
use crate::key::{SecretPem, SigningKey};

/// Istio's default lifetime of a workload certificate (`DEFAULT_WORKLOAD_CERT_TTL` in istiod,
/// `security/pkg/cmd/constants.go`; `SECRET_TTL` in the proxy agent, 24 h).
pub const DEFAULT_WORKLOAD_CERT_TTL: Duration = Duration::hours(24);

/// A stage of a root rotation. Every cluster's `cacerts` holds the bundle of one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// 0: the CA the cluster served before, now as a plugged-in `cacerts`.
    Imported,
    /// 1: still signing with the old CA; trusting the old and the new root.
    TrustBoth,
    /// 2: signing with the new intermediate; still trusting both roots.
    SignNew,
    /// 3: signing with the new intermediate; trusting the new root only.
    TrustNew,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Self; 4] = [
        Self::Imported,
        Self::TrustBoth,
        Self::SignNew,
        Self::TrustNew,
    ];

    /// 0 to 3.
    #[must_use]
    pub fn number(self) -> u8 {
        match self {
            Self::Imported => 0,
            Self::TrustBoth => 1,
            Self::SignNew => 2,
            Self::TrustNew => 3,
        }
    }

    /// The stage numbered `n`.
    #[must_use]
    pub fn from_number(n: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|s| u64::from(s.number()) == n)
    }

    /// The stage after this one.
    #[must_use]
    pub fn next(self) -> Option<Self> {
        Self::from_number(u64::from(self.number()) + 1)
    }

    /// The stage before this one.
    #[must_use]
    pub fn previous(self) -> Option<Self> {
        self.number()
            .checked_sub(1)
            .and_then(|n| Self::from_number(n.into()))
    }

    /// What the stage's bundle does, for reports.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::Imported => "the previous CA, imported",
            Self::TrustBoth => "old CA signs; old and new roots trusted",
            Self::SignNew => "new intermediate signs; old and new roots trusted",
            Self::TrustNew => "new intermediate signs; new root trusted only",
        }
    }

    /// How long this stage must have been in place before the next may follow.
    ///
    /// - After [`Stage::TrustBoth`], every workload must hold the new root before anything is
    ///   signed under it. The proxy agent fetches a new certificate, and with it the roots, at
    ///   `SECRET_GRACE_PERIOD_RATIO` (0.5) of `SECRET_TTL` (`pilot/cmd/pilot-agent/options/
    ///   options.go`): within one workload-certificate lifetime, with margin.
    /// - After [`Stage::SignNew`], every certificate the old CA signed must have expired before
    ///   the old root stops being trusted: one workload-certificate lifetime.
    /// - [`Stage::Imported`] changes no certificate a workload holds: no wait.
    #[must_use]
    pub fn settle_time(self, workload_cert_ttl: Duration) -> Duration {
        match self {
            Self::Imported | Self::TrustNew => Duration::ZERO,
            Self::TrustBoth | Self::SignNew => workload_cert_ttl,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stage {}", self.number())
    }
}

/// Why a rotation step, a stage bundle or an import is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RotationError {
    /// A bundle fails istiod's own checks.
    #[error("{what} would not load in istiod: {source}")]
    Bundle {
        /// Which bundle, as `stage 2 of nas`.
        what: String,
        /// What is wrong with it.
        #[source]
        source: PkiError,
    },
    /// istiod would not take the new `root-cert.pem` in place of the old one.
    #[error("istiod would refuse to replace its root-cert.pem: {reason}")]
    RootChange {
        /// Which rule fails, and why.
        reason: String,
    },
    /// The step would break connections between workloads that could talk before it.
    #[error("the step would break mTLS between workloads that can talk now: {}", .pairs.join("; "))]
    BreaksPairs {
        /// Each broken pair, described.
        pairs: Vec<String>,
    },
}

/// One cluster's rotation: the CA it served before (`old`) and its new intermediate under the
/// new root (`new`). Each stage's bundle is derived from the two, byte for byte the same on
/// every call, so a stored stage can be recognised by comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRotation {
    /// The CA served before the rotation, as a `cacerts` bundle.
    pub old: IstioCaBundle,
    /// The new intermediate, its chain and the new root.
    pub new: IstioCaBundle,
}

impl ClusterRotation {
    /// The `cacerts` bundle of `stage`.
    #[must_use]
    pub fn bundle(&self, stage: Stage) -> IstioCaBundle {
        let both = combined_roots(&self.old.root_cert, &self.new.root_cert);
        match stage {
            Stage::Imported => self.old.clone(),
            Stage::TrustBoth => IstioCaBundle {
                root_cert: both,
                ..self.old.clone()
            },
            Stage::SignNew => IstioCaBundle {
                root_cert: both,
                ..self.new.clone()
            },
            Stage::TrustNew => self.new.clone(),
        }
    }

    /// The stage whose bundle `files` is, compared byte for byte (the key follows its
    /// certificate). Two stages can have the same bundle (when the old CA already trusted the
    /// new root, or is the new root): then `expected` if it is one of them, else the later.
    #[must_use]
    pub fn stage_of(&self, files: IstioBundleFiles<'_>, expected: Stage) -> Option<Stage> {
        let is = |stage: Stage| {
            let bundle = self.bundle(stage);
            bundle.ca_cert == files.ca_cert
                && bundle.root_cert == files.root_cert
                && bundle.cert_chain == files.cert_chain
                && bundle.ca_key.expose() == files.ca_key
        };
        if is(expected) {
            return Some(expected);
        }
        Stage::ALL.into_iter().rev().find(|stage| is(*stage))
    }
}

/// `root-cert.pem` trusting both roots: the old file verbatim, then the new roots, so that
/// either is a byte-for-byte part of it (the pre-1.31 rule of [`check_root_change`]). When the
/// old file already holds every new root, it is returned unchanged.
#[must_use]
pub fn combined_roots(old: &str, new: &str) -> String {
    let (Ok(old_set), Ok(new_set)) = (der_set(old), der_set(new)) else {
        return format!("{}{new}", with_final_newline(old));
    };
    if new_set.is_subset(&old_set) {
        old.to_owned()
    } else {
        format!("{}{new}", with_final_newline(old))
    }
}

fn with_final_newline(text: &str) -> String {
    if text.is_empty() || text.ends_with('\n') {
        text.to_owned()
    } else {
        format!("{text}\n")
    }
}

fn der_set(pem_text: &str) -> Result<BTreeSet<Vec<u8>>, PkiError> {
    Ok(parse_root_bundle(pem_text)?
        .into_iter()
        .map(|c| c.der().to_vec())
        .collect())
}

/// What a root change does, once allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootChange {
    /// The same `root-cert.pem`, byte for byte.
    Unchanged,
    /// Roots added.
    Grown,
    /// Roots removed.
    Shrunk,
}

/// Whether istiod, running with `ISTIO_MULTIROOT_MESH=true` on `previous`, takes `next` as its
/// `root-cert.pem` without a restart (istio/istio `pilot/pkg/bootstrap/istio_ca.go`,
/// `handleEvent`). Both forms of the rule must hold, so the answer is right for every version:
/// - up to 1.30, `bytes.Contains(current, new) || bytes.Contains(new, current)`: one file must
///   be a byte-for-byte part of the other, so order and formatting matter (since 1.20, commit
///   029b58353a "Support plugged root cert rotation");
/// - from 1.31, `pemBundleHasSubsetRelation`: one set of DER certificates must contain the
///   other (commit 046d9df336).
pub fn check_root_change(previous: &str, next: &str) -> Result<RootChange, RotationError> {
    if previous == next {
        return Ok(RootChange::Unchanged);
    }
    let refused = |reason: String| RotationError::RootChange { reason };
    let parse = |text: &str, which: &str| {
        der_set(text).map_err(|e| refused(format!("the {which} root-cert.pem: {e}")))
    };
    let (before, after) = (parse(previous, "current")?, parse(next, "new")?);
    let grown = after.is_superset(&before);
    if !grown && !after.is_subset(&before) {
        return Err(refused(
            "neither set of roots contains the other (the rule of istiod 1.31 and later)".into(),
        ));
    }
    if !previous.contains(next) && !next.contains(previous) {
        return Err(refused(
            "neither file is a byte-for-byte part of the other (the rule of istiod 1.20 to 1.30; \
             order and formatting of the PEM blocks matter)"
                .into(),
        ));
    }
    Ok(if grown {
        RootChange::Grown
    } else {
        RootChange::Shrunk
    })
}

/// Imports istiod's self-signed CA (`istio-system/istio-ca-secret`, fields `ca-cert.pem` and
/// `ca-key.pem`, written by `security/pkg/pki/ca/ca.go`, `NewSelfSignedIstioCAOptions`) as a
/// plugged-in `cacerts` bundle that changes nothing for running workloads: the same certificate
/// signs, is the root, and is its own chain. Refused unless it is a self-signed CA whose key
/// matches, valid at `now`.
pub fn import_self_signed_ca(
    ca_cert: &str,
    ca_key: &str,
    now: OffsetDateTime,
) -> Result<IstioCaBundle, PkiError> {
    let cert = Certificate::from_pem(ca_cert, CA_CERT)?;
    let key = SigningKey::from_pem(ca_key, CA_KEY)?;
    cert.check_key_matches(&key, CA_KEY)?;
    cert.check_is_ca()?;
    cert.check_self_signed()?;
    cert.check_validity_at(now)?;
    Ok(IstioCaBundle {
        ca_cert: ca_cert.to_owned(),
        ca_key: SecretPem::new(ca_key.to_owned()),
        root_cert: ca_cert.to_owned(),
        cert_chain: ca_cert.to_owned(),
    })
}

/// Checks `bundle` with istiod's rules ([`verify_istio_bundle`]), naming it `what` on error.
pub fn check_stage_bundle(
    bundle: &IstioCaBundle,
    what: &str,
    now: OffsetDateTime,
) -> Result<(), RotationError> {
    verify_istio_bundle(IstioBundleFiles::from(bundle), now)
        .map(|_| ())
        .map_err(|source| RotationError::Bundle {
            what: what.to_owned(),
            source,
        })
}

/// Whether a workload certificate signed by `signer`'s CA verifies against the roots of
/// `truster`, at `now`. istiod hands a workload its certificate followed by `cert-chain.pem`
/// (`security/pkg/pki/ca/ca.go`, `signWithCertChain`); the peer accepts it when some
/// certificate of that chain is one of its roots or is signed by one.
#[must_use]
pub fn workload_trusted(
    signer: &IstioCaBundle,
    truster: &IstioCaBundle,
    now: OffsetDateTime,
) -> bool {
    let Ok(roots) = parse_root_bundle(&truster.root_cert) else {
        return false;
    };
    let roots: Vec<Certificate> = roots
        .into_iter()
        .filter(|r| r.check_validity_at(now).is_ok())
        .collect();
    let (Ok(ca), Ok(chain)) = (
        Certificate::from_pem(&signer.ca_cert, CA_CERT),
        Certificate::chain_from_pem(&signer.cert_chain, "cert-chain.pem"),
    ) else {
        return false;
    };
    if ca.check_validity_at(now).is_err() {
        return false;
    }
    let mut path = vec![ca];
    path.extend(chain);
    for cert in &path {
        if cert.check_validity_at(now).is_err() {
            return false;
        }
        let anchored = roots
            .iter()
            .any(|root| root.der() == cert.der() || cert.verify_signed_by(root).is_ok());
        if anchored {
            return true;
        }
    }
    false
}

/// Whether two workloads, one holding each bundle's certificate and trust, complete an mTLS
/// handshake: each trusts the other's certificate.
#[must_use]
pub fn mutual_trust(a: &IstioCaBundle, b: &IstioCaBundle, now: OffsetDateTime) -> bool {
    workload_trusted(a, b, now) && workload_trusted(b, a, now)
}

/// One cluster during a step: the bundle every workload holds before it (`baseline`), and the
/// bundles workloads may hold while it is under way (`during`), each with a label for
/// messages such as `stage 2` or `stage 0 (served now)`.
#[derive(Debug, Clone)]
pub struct ClusterStep<'a> {
    /// Cluster name.
    pub cluster: &'a str,
    /// The stage all its workloads are at before the step.
    pub baseline: &'a IstioCaBundle,
    /// What its workloads may hold during the step.
    pub during: Vec<(String, &'a IstioCaBundle)>,
}

/// Refuses a step that breaks a pair: for every two clusters (a cluster with itself too: two
/// of its workloads, one on each side of the step) whose workloads can talk at their baseline,
/// every pair of bundles that may coexist during the step must still allow mTLS both ways.
/// Pairs that could not talk before (two clusters still on unrelated self-signed CAs) are not
/// required to.
pub fn check_step(steps: &[ClusterStep<'_>], now: OffsetDateTime) -> Result<(), RotationError> {
    let mut broken = Vec::new();
    for (i, x) in steps.iter().enumerate() {
        for (j, y) in steps.iter().enumerate().skip(i) {
            if !mutual_trust(x.baseline, y.baseline, now) {
                continue;
            }
            for (xi, (x_label, x_bundle)) in x.during.iter().enumerate() {
                // Within one cluster, each unordered pair of bundles once.
                let first = if i == j { xi } else { 0 };
                for (y_label, y_bundle) in &y.during[first..] {
                    let problem = if !workload_trusted(x_bundle, y_bundle, now) {
                        Some((y.cluster, x.cluster))
                    } else if !workload_trusted(y_bundle, x_bundle, now) {
                        Some((x.cluster, y.cluster))
                    } else {
                        None
                    };
                    if let Some((truster, signer)) = problem {
                        broken.push(format!(
                            "{} at {x_label} and {} at {y_label}: {truster} would not trust \
                             the certificates {signer} signs",
                            x.cluster, y.cluster
                        ));
                    }
                }
            }
        }
    }
    if broken.is_empty() {
        Ok(())
    } else {
        Err(RotationError::BreaksPairs { pairs: broken })
    }
}

/// What a cluster serves, as read from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Its `cacerts` holds this stage's bundle.
    Stage(Stage),
    /// Its `cacerts` holds something that is no stage of this rotation.
    Other,
    /// It has no `cacerts`.
    Nothing,
    /// It was not read (no access configured).
    Unknown,
}

impl fmt::Display for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stage(stage) => stage.fmt(f),
            Self::Other => f.write_str("a bundle of no stage"),
            Self::Nothing => f.write_str("no cacerts"),
            Self::Unknown => f.write_str("an unknown stage (not read)"),
        }
    }
}

/// Why the next stage may not follow yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocker {
    /// A cluster does not serve the current stage yet.
    NotServed {
        /// The cluster.
        cluster: String,
        /// What it serves.
        served: Served,
    },
    /// The current stage has not been in place long enough.
    Settling {
        /// When it will have been.
        until: OffsetDateTime,
    },
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotServed { cluster, served } => {
                write!(f, "{cluster} serves {served}")
            }
            Self::Settling { until } => write!(
                f,
                "workloads need until {until} to pick up the current stage (one workload \
                 certificate lifetime)"
            ),
        }
    }
}

/// Why `current` (in place since `since`) may not be left for the next stage at `now`: every
/// cluster must serve it, and it must have settled ([`Stage::settle_time`]). Empty: it may.
#[must_use]
pub fn advance_blockers(
    current: Stage,
    since: OffsetDateTime,
    served: &[(String, Served)],
    workload_cert_ttl: Duration,
    now: OffsetDateTime,
) -> Vec<Blocker> {
    let mut blockers: Vec<Blocker> = served
        .iter()
        .filter(|(_, s)| *s != Served::Stage(current))
        .map(|(cluster, served)| Blocker::NotServed {
            cluster: cluster.clone(),
            served: *served,
        })
        .collect();
    let until = since + current.settle_time(workload_cert_ttl);
    if now < until {
        blockers.push(Blocker::Settling { until });
    }
    blockers
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::istio::{IstioCaParams, generate_istio_root, issue_cluster_bundle};
    use crate::{CaParams, KeyAlgorithm, SubjectName, generate_root_ca};

    const T0: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);

    fn root_and_bundles(clusters: &[&str]) -> Vec<IstioCaBundle> {
        let params = IstioCaParams::default();
        let root = generate_istio_root(&params, T0).unwrap();
        clusters
            .iter()
            .map(|c| issue_cluster_bundle(&root, c, &params, T0).unwrap())
            .collect()
    }

    /// A self-signed CA as istiod makes one: the certificate is the root and signs.
    fn self_signed() -> IstioCaBundle {
        let ca = generate_root_ca(
            &CaParams {
                subject: SubjectName::new("cluster.local", "self-signed"),
                key_algorithm: KeyAlgorithm::EcdsaP256,
                validity: Duration::days(3650),
            },
            T0,
        )
        .unwrap();
        import_self_signed_ca(&ca.certificate.to_pem(), ca.key_pem().expose(), T0).unwrap()
    }

    fn rotation(old: IstioCaBundle, new: IstioCaBundle) -> ClusterRotation {
        ClusterRotation { old, new }
    }

    #[test]
    fn stages_count_up_and_down() {
        assert_eq!(Stage::Imported.next(), Some(Stage::TrustBoth));
        assert_eq!(Stage::TrustNew.next(), None);
        assert_eq!(Stage::Imported.previous(), None);
        assert_eq!(Stage::TrustNew.previous(), Some(Stage::SignNew));
        assert_eq!(Stage::from_number(2), Some(Stage::SignNew));
        assert_eq!(Stage::from_number(4), None);
        assert_eq!(Stage::SignNew.to_string(), "stage 2");
    }

    #[test]
    fn every_stage_bundle_loads_and_each_step_passes_the_subset_rule() {
        let new = root_and_bundles(&["homelab"]).remove(0);
        for old in [self_signed(), root_and_bundles(&["homelab"]).remove(0)] {
            let r = rotation(old, new.clone());
            for stage in Stage::ALL {
                check_stage_bundle(&r.bundle(stage), &stage.to_string(), T0).unwrap();
                // Distinct bundles: found whichever stage is expected.
                let bundle = r.bundle(stage);
                for expected in Stage::ALL {
                    assert_eq!(
                        r.stage_of(IstioBundleFiles::from(&bundle), expected),
                        Some(stage)
                    );
                }
            }
            let changes: Vec<RootChange> = Stage::ALL
                .windows(2)
                .map(|w| check_root_change(&r.bundle(w[0]).root_cert, &r.bundle(w[1]).root_cert))
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(
                changes,
                [RootChange::Grown, RootChange::Unchanged, RootChange::Shrunk]
            );
        }
    }

    /// The previous scripts' root signed workloads itself; moving to intermediates under the
    /// same root changes no trust: stages 0 and 1 are one bundle, as are 2 and 3.
    #[test]
    fn a_root_that_signed_itself_moves_to_an_intermediate_under_it() {
        let params = IstioCaParams::default();
        let root = generate_istio_root(&params, T0).unwrap();
        let root_pem = root.certificate.to_pem();
        let old = IstioCaBundle {
            ca_cert: root_pem.clone(),
            ca_key: root.key_pem(),
            root_cert: root_pem.clone(),
            cert_chain: root_pem,
        };
        let r = rotation(
            old,
            issue_cluster_bundle(&root, "nas", &params, T0).unwrap(),
        );
        assert_eq!(r.bundle(Stage::Imported), r.bundle(Stage::TrustBoth));
        assert_eq!(r.bundle(Stage::SignNew), r.bundle(Stage::TrustNew));
        let first = r.bundle(Stage::Imported);
        let files = IstioBundleFiles::from(&first);
        assert_eq!(r.stage_of(files, Stage::Imported), Some(Stage::Imported));
        assert_eq!(r.stage_of(files, Stage::TrustBoth), Some(Stage::TrustBoth));
        assert_eq!(r.stage_of(files, Stage::TrustNew), Some(Stage::TrustBoth));
        for w in Stage::ALL.windows(2) {
            let (a, b) = (r.bundle(w[0]), r.bundle(w[1]));
            check_stage_bundle(&b, "next", T0).unwrap();
            assert_eq!(
                check_root_change(&a.root_cert, &b.root_cert),
                Ok(RootChange::Unchanged)
            );
            let step = [ClusterStep {
                cluster: "nas",
                baseline: &a,
                during: vec![("before".into(), &a), ("after".into(), &b)],
            }];
            check_step(&step, T0).unwrap();
        }
    }

    #[test]
    fn the_byte_rule_sees_order_and_formatting() {
        let a = root_and_bundles(&["x"]).remove(0).root_cert;
        let b = root_and_bundles(&["x"]).remove(0).root_cert;
        let ab = combined_roots(&a, &b);
        assert_eq!(ab, format!("{a}{b}"));
        assert_eq!(check_root_change(&a, &ab), Ok(RootChange::Grown));
        assert_eq!(check_root_change(&ab, &b), Ok(RootChange::Shrunk));
        // The same two roots in the other order: the same set, so istiod 1.31 takes it, but
        // neither file holds the other byte for byte, so istiod before 1.31 refuses it.
        let ba = format!("{b}{a}");
        let err = check_root_change(&ab, &ba).unwrap_err();
        assert_eq!(
            err.to_string(),
            "istiod would refuse to replace its root-cert.pem: neither file is a byte-for-byte \
             part of the other (the rule of istiod 1.20 to 1.30; order and formatting of the \
             PEM blocks matter)"
        );
        // Same certificate, different line endings: equal as sets, different as bytes.
        let crlf = a.replace('\n', "\r\n");
        assert!(check_root_change(&a, &format!("{crlf}{b}")).is_err());
        // Unrelated roots: refused by both rules.
        let err = check_root_change(&a, &b).unwrap_err();
        assert!(
            err.to_string()
                .contains("neither set of roots contains the other")
        );
        // Old file without a final newline: the combination still holds it verbatim.
        let trimmed = a.trim_end().to_owned();
        let combined = combined_roots(&trimmed, &b);
        assert_eq!(
            check_root_change(&trimmed, &combined),
            Ok(RootChange::Grown)
        );
        // Already trusted: unchanged.
        assert_eq!(combined_roots(&ab, &b), ab);
    }

    #[test]
    fn a_self_signed_import_is_refused_unless_it_is_one() {
        let [homelab]: [IstioCaBundle; 1] = root_and_bundles(&["homelab"]).try_into().unwrap();
        let err = import_self_signed_ca(&homelab.ca_cert, homelab.ca_key.expose(), T0).unwrap_err();
        assert_eq!(err.to_string(), "ca-cert.pem is not self-signed");
        let other = self_signed();
        let err = import_self_signed_ca(&other.ca_cert, homelab.ca_key.expose(), T0).unwrap_err();
        assert_eq!(err.to_string(), "ca-key.pem does not match ca-cert.pem");
    }

    #[test]
    fn workloads_trust_across_clusters_of_one_root_only() {
        let shared = root_and_bundles(&["homelab", "nas"]);
        assert!(mutual_trust(&shared[0], &shared[1], T0));
        let other = root_and_bundles(&["nas"]).remove(0);
        assert!(!mutual_trust(&shared[0], &other, T0));
        let a = self_signed();
        assert!(mutual_trust(&a, &a, T0));
        assert!(!mutual_trust(&a, &self_signed(), T0));
        // Expired roots are not trusted.
        assert!(!mutual_trust(
            &shared[0],
            &shared[1],
            T0 + Duration::days(4000)
        ));
    }

    /// Every step of the standard stages keeps every pair one stage apart talking, inside a
    /// cluster and across two clusters that share a root.
    #[test]
    fn the_standard_stages_break_no_pair() {
        let old = root_and_bundles(&["homelab", "nas"]);
        let new = root_and_bundles(&["homelab", "nas"]);
        let rotations = [
            rotation(old[0].clone(), new[0].clone()),
            rotation(old[1].clone(), new[1].clone()),
        ];
        for w in Stage::ALL.windows(2) {
            let bundles: Vec<[IstioCaBundle; 2]> = rotations
                .iter()
                .map(|r| [r.bundle(w[0]), r.bundle(w[1])])
                .collect();
            let steps: Vec<ClusterStep> = ["homelab", "nas"]
                .iter()
                .zip(&bundles)
                .map(|(cluster, [before, after])| ClusterStep {
                    cluster,
                    baseline: before,
                    during: vec![(w[0].to_string(), before), (w[1].to_string(), after)],
                })
                .collect();
            check_step(&steps, T0).unwrap();
        }
    }

    /// Skipping "trust both": the new intermediate signs while the old workloads still trust
    /// only the old root.
    #[test]
    fn a_step_that_breaks_a_pair_is_refused() {
        let old = root_and_bundles(&["homelab"]).remove(0);
        let new = root_and_bundles(&["homelab"]).remove(0);
        let step = [ClusterStep {
            cluster: "homelab",
            baseline: &old,
            during: vec![("stage 0".into(), &old), ("stage 3".into(), &new)],
        }];
        let err = check_step(&step, T0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the step would break mTLS between workloads that can talk now: homelab at stage 0 \
             and homelab at stage 3: homelab would not trust the certificates homelab signs"
        );
    }

    #[test]
    fn pairs_that_never_talked_are_not_required_to() {
        let (a, b) = (self_signed(), self_signed());
        let step = [
            ClusterStep {
                cluster: "homelab",
                baseline: &a,
                during: vec![("stage 0".into(), &a)],
            },
            ClusterStep {
                cluster: "nas",
                baseline: &b,
                during: vec![("stage 0".into(), &b)],
            },
        ];
        check_step(&step, T0).unwrap();
    }

    #[test]
    fn advancing_waits_for_every_cluster_and_for_the_stage_to_settle() {
        let served = |h, n| vec![("homelab".to_owned(), h), ("nas".to_owned(), n)];
        let ttl = DEFAULT_WORKLOAD_CERT_TTL;
        let one = Served::Stage(Stage::TrustBoth);
        assert_eq!(
            advance_blockers(Stage::TrustBoth, T0, &served(one, one), ttl, T0 + ttl),
            []
        );
        assert_eq!(
            advance_blockers(
                Stage::TrustBoth,
                T0,
                &served(one, Served::Stage(Stage::Imported)),
                ttl,
                T0 + Duration::hours(1)
            ),
            [
                Blocker::NotServed {
                    cluster: "nas".into(),
                    served: Served::Stage(Stage::Imported)
                },
                Blocker::Settling { until: T0 + ttl }
            ]
        );
        // The import changes no workload certificate: no wait.
        let zero = Served::Stage(Stage::Imported);
        assert_eq!(
            advance_blockers(Stage::Imported, T0, &served(zero, zero), ttl, T0),
            []
        );
        assert_eq!(
            advance_blockers(Stage::Imported, T0, &served(zero, Served::Nothing), ttl, T0)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["nas serves no cacerts"]
        );
    }
}
