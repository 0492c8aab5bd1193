//! `bootstrap-job rotate`: moves every cluster's `cacerts` from the CA it serves today to an
//! intermediate under the new root, one stage at a time, without breaking a connection.
//!
//! The rotation is recorded in one KV entry ([`state`]); each cluster's stage bundle goes to
//! `istio/clusters/<cluster>`, from where the ExternalSecret (homelab) or nas-sync-job (NAS)
//! copies it into `cacerts`. Every write is check-and-set, and the record is written before
//! the cluster entries it implies, so an interrupted step is finished by the next run.
//!
//! - `advance` with no rotation recorded starts one: it imports what each cluster serves
//!   (`istio-system/cacerts`, or istiod's self-signed `istio-system/istio-ca-secret`) as
//!   stage 0, takes (or issues) each cluster's intermediate under the new root, and checks all
//!   four stages before writing anything.
//! - `advance` moves to the next stage once every cluster's `cacerts` holds the current one
//!   (read from the cluster) and the stage has settled ([`Stage::settle_time`]); `--force`
//!   skips those two waits, never the bundle checks.
//! - `back` moves to the previous stage.
//! - `status` reads and reports; it writes nothing.
//!
//! Every step is refused, before any write, if a stage bundle would not load in istiod, if
//! istiod would not take the new `root-cert.pem` without a restart, or if two workloads that can
//! talk now could not during the step ([`pki_core::istio_rotation`]).

pub mod clusters;
pub mod state;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context, Result};
use job_support::exit::Classified;
use job_support::{Failure, InvalidState, KvEntry, SecretData, SecretStore, WriteOutcome};
use pki_core::istio::{
    self, CA_CERT, CA_KEY, CERT_CHAIN, IstioBundleFiles, IstioCaBundle, ROOT_CERT,
};
use pki_core::istio_rotation::{
    Blocker, ClusterRotation, ClusterStep, Served, Stage, advance_blockers, check_root_change,
    check_stage_bundle, check_step, import_self_signed_ca,
};
use pki_core::time::{Duration, OffsetDateTime};
use pki_core::{CaCredential, Certificate};
use tracing::{info, warn};

use self::clusters::{ClusterSecrets, SecretFiles};
use self::state::read_state;
use self::state::{ClusterRecord, ImportSource, RotationState, rfc3339};
use crate::plan::Plan;
use crate::root_entry::{load_root, root_data};

/// The exit code of a step that was not taken because it is not yet safe (or there is none).
pub const NOT_ADVANCED_EXIT: u8 = 9;

/// Settings of `rotate`, beyond the bootstrap plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotatePlan {
    /// KV path of the new root (by default the bootstrap root, `istio/ca`).
    pub root_path: String,
    /// Where to import each cluster's current CA from; absent: `cacerts` if it exists, else
    /// `istio-ca-secret`.
    pub imports: BTreeMap<String, ImportSource>,
    /// The workload certificate lifetime of the mesh, which sets how long stages settle.
    pub workload_cert_ttl: Duration,
}

/// What was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Report; write nothing.
    Status,
    /// Start a rotation, or move to the next stage.
    Advance {
        /// Skip the waits for clusters to serve the current stage and for it to settle.
        force: bool,
    },
    /// Move to the previous stage.
    Back,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A report only.
    Status,
    /// A rotation was started at stage 0.
    Started,
    /// The stage changed.
    Moved {
        /// From.
        from: Stage,
        /// To.
        to: Stage,
    },
    /// The rotation is at its last stage and the target root has not changed.
    Complete,
    /// Every cluster already serves a CA under the target root alone.
    NothingToRotate,
    /// Nothing was done; why.
    NotAdvanced(Vec<String>),
}

/// The result of a run: what happened, and the report for the operator (standard output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// What happened.
    pub outcome: Outcome,
    /// The report, one line each.
    pub lines: Vec<String>,
}

impl Report {
    /// The process exit code.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self.outcome {
            Outcome::NotAdvanced(_) => NOT_ADVANCED_EXIT,
            _ => 0,
        }
    }
}

/// Everything a run needs.
pub struct Rotation<'a, S, C> {
    /// The state store.
    pub store: &'a S,
    /// The clusters' API servers.
    pub clusters: &'a C,
    /// The bootstrap plan (paths, clusters, certificate parameters).
    pub plan: &'a Plan,
    /// The rotation settings.
    pub rotate: &'a RotatePlan,
    /// The time of the run.
    pub now: OffsetDateTime,
}

impl<S, C> std::fmt::Debug for Rotation<'_, S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotation")
            .field("plan", self.plan)
            .field("rotate", self.rotate)
            .finish_non_exhaustive()
    }
}

/// What one cluster serves, with the bundle where one can be told.
struct ServedBundle {
    served: Served,
    bundle: Option<IstioCaBundle>,
}

/// The cacerts bundle in a KV entry or a Secret's data, if all four files are there.
fn bundle_of(files: &dyn Fn(&str) -> Option<String>) -> Option<IstioCaBundle> {
    Some(IstioCaBundle {
        ca_cert: files(CA_CERT)?,
        ca_key: pki_core::SecretPem::new(files(CA_KEY)?),
        root_cert: files(ROOT_CERT)?,
        cert_chain: files(CERT_CHAIN)?,
    })
}

fn entry_bundle(entry: &KvEntry) -> Option<IstioCaBundle> {
    bundle_of(&|name| entry.data.get(name).map(str::to_owned))
}

fn secret_bundle(files: &SecretFiles) -> Option<IstioCaBundle> {
    bundle_of(&|name| files.get(name).cloned())
}

fn bundle_data(bundle: &IstioCaBundle, stage: Stage, now: OffsetDateTime) -> SecretData {
    let mut data = SecretData::new();
    for (name, content) in bundle.files() {
        data.insert(name, content);
    }
    data.insert("created", rfc3339(now));
    if let Ok(cert) = Certificate::from_pem(&bundle.ca_cert, CA_CERT) {
        data.insert("not_after", rfc3339(cert.info().not_after));
    }
    data.insert("rotation_stage", stage.number().to_string());
    data
}

fn with_final_newline(text: &str) -> String {
    if text.ends_with('\n') {
        text.to_owned()
    } else {
        format!("{text}\n")
    }
}

impl<S: SecretStore, C: ClusterSecrets> Rotation<'_, S, C> {
    /// Runs `action`.
    pub async fn run(&self, action: Action) -> Result<Report> {
        let current = read_state(self.store, self.plan).await?;
        match (action, current) {
            (Action::Status, current) => self.status(current.map(|(s, _)| s)).await,
            (Action::Advance { force }, Some((state, version))) if state.in_progress() => {
                self.advance(state, version, force).await
            }
            (Action::Advance { .. }, Some((state, version))) => {
                if self.target_is(&state).await? {
                    Ok(Report {
                        outcome: Outcome::Complete,
                        lines: vec![format!(
                            "the rotation to root {} is complete: every cluster is at stage 3; \
                             nothing to advance",
                            state.root_fingerprint
                        )],
                    })
                } else {
                    self.start(version).await
                }
            }
            (Action::Advance { .. }, None) => self.start(0).await,
            (Action::Back, Some((state, version))) => self.back(state, version).await,
            (Action::Back, None) => Ok(not_advanced(vec![
                "no rotation is recorded; there is nothing to go back to".into(),
            ])),
        }
    }

    /// Whether the completed rotation `state` already went to the configured target root.
    async fn target_is(&self, state: &RotationState) -> Result<bool> {
        let Some(entry) = self.store.read(&self.rotate.root_path).await? else {
            return Ok(false);
        };
        let (root, _) = load_root(&entry, &self.plan.label(&self.rotate.root_path), self.now)?;
        Ok(root.certificate.info().fingerprint_sha256 == state.root_fingerprint)
    }

    // ---- starting ---------------------------------------------------------------------

    async fn start(&self, state_version: u64) -> Result<Report> {
        let mut imported = Vec::with_capacity(self.plan.clusters.len());
        for cluster in &self.plan.clusters {
            imported.push((cluster, self.import(cluster).await?));
        }
        let (root, root_text, root_is_new) = self.target_root().await?;
        let root_fingerprint = root.certificate.info().fingerprint_sha256.clone();
        let mut records = Vec::with_capacity(self.plan.clusters.len());
        for (cluster, (source, old)) in imported {
            let new = self.new_material(cluster, &root, &root_text, &old).await?;
            records.push(ClusterRecord {
                cluster: cluster.clone(),
                source,
                rotation: ClusterRotation { old, new },
            });
        }
        if records
            .iter()
            .all(|r| already_final(&r.rotation.old, &root))
        {
            return Ok(Report {
                outcome: Outcome::NothingToRotate,
                lines: vec![format!(
                    "every cluster's CA is already an intermediate under root {root_fingerprint} \
                     alone; nothing to rotate. If istiod has not been restarted since cacerts \
                     appeared, it still signs with istio-ca-secret: name it with \
                     ROTATE_IMPORT=<cluster>=istio-ca-secret"
                )],
            });
        }
        self.check_all_stages(&records)?;
        if root_is_new {
            self.create_root(&root).await?;
        }

        let state = RotationState {
            stage: Stage::Imported,
            root_path: self.rotate.root_path.clone(),
            root_fingerprint,
            started: self.now,
            advanced_at: self.now,
            clusters: records,
        };
        let state_label = self.plan.label(&self.plan.rotation_path);
        match self
            .store
            .write(&self.plan.rotation_path, &state.to_data(), state_version)
            .await?
        {
            WriteOutcome::Written { version } => {
                info!(path = %state_label, version, root_fingerprint = %state.root_fingerprint,
                      imported = %sources(&state), "started a root rotation at stage 0");
            }
            WriteOutcome::Conflict => {
                return Err(InvalidState {
                    path: state_label,
                    problem: "another run wrote the rotation record while this one was \
                              preparing; this rotation was not started: run `rotate status`"
                        .into(),
                }
                .into());
            }
        }
        self.deliver(&state, true).await?;
        let mut lines = vec![format!(
            "started the rotation to root {} (secret {}): stage 0, {}",
            state.root_fingerprint,
            self.plan.label(&state.root_path),
            Stage::Imported.describe()
        )];
        for record in &state.clusters {
            lines.push(format!(
                "{}: stage 0 imported from istio-system/{}",
                record.cluster,
                record.source.name()
            ));
        }
        lines.push(
            "next: let the sync deliver stage 0 into every cluster's cacerts and restart istiod \
             there (with ISTIO_MULTIROOT_MESH=true), then run `bootstrap-job rotate advance`"
                .into(),
        );
        Ok(Report {
            outcome: Outcome::Started,
            lines,
        })
    }

    /// The new root and its `root-cert.pem` text as stored (verbatim, so that the stage files
    /// hold the very bytes of the stored root), and whether it is still to be written: when a
    /// path other than the bootstrap root's is named and empty, a new root is generated, and
    /// written only once every check has passed.
    async fn target_root(&self) -> Result<(CaCredential, String, bool)> {
        let path = &self.rotate.root_path;
        let label = self.plan.label(path);
        match self.store.read(path).await? {
            Some(entry) => {
                let (root, _) = load_root(&entry, &label, self.now)?;
                let text = entry.data.get(ROOT_CERT).unwrap_or_default();
                Ok((root, with_final_newline(text), false))
            }
            None if *path == self.plan.root_path => Err(InvalidState {
                path: label,
                problem: "absent: run bootstrap-job (without arguments) first, to create or \
                          adopt the root the rotation moves to"
                    .into(),
            }
            .into()),
            None => {
                let root = istio::generate_istio_root(&self.plan.ca, self.now)
                    .context("failed to generate the new Istio root CA")?;
                let text = root.certificate.to_pem();
                Ok((root, text, true))
            }
        }
    }

    async fn create_root(&self, root: &CaCredential) -> Result<()> {
        let path = &self.rotate.root_path;
        let label = self.plan.label(path);
        match self
            .store
            .write(path, &root_data(root, self.now), 0)
            .await?
        {
            WriteOutcome::Written { version } => {
                info!(path = %label, version, fingerprint = %root.certificate.info().fingerprint_sha256,
                      "created the new root for the rotation");
                Ok(())
            }
            WriteOutcome::Conflict => Err(InvalidState {
                path: label,
                problem: "another run created this root while this one was preparing; nothing \
                          was written: run `rotate advance` again"
                    .into(),
            }
            .into()),
        }
    }

    /// Stage 0 of `cluster`: what it serves today.
    async fn import(&self, cluster: &str) -> Result<(ImportSource, IstioCaBundle)> {
        if !self.clusters.reachable(cluster) {
            return Err(Classified {
                failure: Failure::Config,
                message: format!(
                    "invalid ROTATE_KUBECONFIGS: no entry for cluster '{cluster}'; starting a \
                     rotation imports what it serves from its istio-system/cacerts or \
                     istio-ca-secret"
                ),
            }
            .into());
        }
        let cacerts = self.clusters.secret(cluster, "cacerts").await?;
        let self_signed = self.clusters.secret(cluster, "istio-ca-secret").await?;
        let source = match (self.rotate.imports.get(cluster), &cacerts, &self_signed) {
            (Some(source), _, _) => *source,
            (None, Some(_), _) => ImportSource::Cacerts,
            (None, None, Some(_)) => ImportSource::SelfSignedSecret,
            (None, None, None) => {
                return Err(InvalidState {
                    path: format!("cluster '{cluster}'"),
                    problem: "neither istio-system/cacerts nor istio-system/istio-ca-secret \
                              exists: there is no CA to import (is istiod installed?)"
                        .into(),
                }
                .into());
            }
        };
        let secret = match source {
            ImportSource::Cacerts => cacerts,
            ImportSource::SelfSignedSecret => self_signed,
        };
        let invalid = |problem: String| InvalidState {
            path: format!("cluster '{cluster}' secret istio-system/{}", source.name()),
            problem,
        };
        let files = secret.ok_or_else(|| invalid("absent, yet ROTATE_IMPORT names it".into()))?;
        let missing = |names: &[&str]| -> Option<String> {
            let absent: Vec<&str> = names
                .iter()
                .copied()
                .filter(|n| !files.contains_key(*n))
                .collect();
            (!absent.is_empty()).then(|| {
                format!(
                    "missing key(s) {} (keys present: {})",
                    absent.join(", "),
                    files.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })
        };
        let bundle = match source {
            ImportSource::Cacerts => {
                if let Some(problem) = missing(&[CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN]) {
                    return Err(invalid(problem).into());
                }
                let bundle = secret_bundle(&files)
                    .ok_or_else(|| invalid("incomplete cacerts bundle".into()))?;
                check_stage_bundle(&bundle, "it", self.now).map_err(|e| invalid(e.to_string()))?;
                bundle
            }
            ImportSource::SelfSignedSecret => {
                if let Some(problem) = missing(&[CA_CERT, CA_KEY]) {
                    return Err(invalid(problem).into());
                }
                import_self_signed_ca(&files[CA_CERT], &files[CA_KEY], self.now)
                    .map_err(|e| invalid(e.to_string()))?
            }
        };
        Ok((source, bundle))
    }

    /// The new intermediate of `cluster`: the bootstrap bundle in Vault when it is under the
    /// new root and is not what the cluster serves, else a new one. Its `root-cert.pem` and
    /// chain carry the stored root's text.
    async fn new_material(
        &self,
        cluster: &str,
        root: &CaCredential,
        root_text: &str,
        old: &IstioCaBundle,
    ) -> Result<IstioCaBundle> {
        let existing = self
            .store
            .read(&self.plan.cluster_path(cluster))
            .await?
            .and_then(|entry| entry_bundle(&entry))
            .filter(|bundle| {
                bundle.ca_cert != old.ca_cert
                    && only_root(&bundle.root_cert, root)
                    && istio::verify_istio_bundle(IstioBundleFiles::from(bundle), self.now).is_ok()
            });
        let bundle = match existing {
            Some(bundle) => bundle,
            None => istio::issue_cluster_bundle(root, cluster, &self.plan.ca, self.now)
                .with_context(|| {
                    format!("failed to issue the new intermediate CA of cluster '{cluster}'")
                })?,
        };
        Ok(IstioCaBundle {
            cert_chain: format!("{}{root_text}", with_final_newline(&bundle.ca_cert)),
            root_cert: root_text.to_owned(),
            ..bundle
        })
    }

    /// Every stage of every cluster, and every step, before the first write.
    fn check_all_stages(&self, records: &[ClusterRecord]) -> Result<()> {
        for pair in Stage::ALL.windows(2) {
            self.check_step(records, pair[0], pair[1], &BTreeMap::new())?;
        }
        Ok(())
    }

    /// The checks of one step from `from` to `to`: the new bundles load in istiod, istiod
    /// takes the new `root-cert.pem`, and no pair that talks now breaks, counting what each
    /// cluster serves now where it differs from `from`.
    fn check_step(
        &self,
        records: &[ClusterRecord],
        from: Stage,
        to: Stage,
        served: &BTreeMap<String, ServedBundle>,
    ) -> Result<()> {
        let refused = |problem: String| InvalidState {
            path: self.plan.label(&self.plan.rotation_path),
            problem: format!("{to} refused: {problem}; nothing was written"),
        };
        let mut bundles = Vec::with_capacity(records.len());
        for record in records {
            let before = record.rotation.bundle(from);
            let after = record.rotation.bundle(to);
            check_stage_bundle(&after, &format!("{to} of {}", record.cluster), self.now)
                .map_err(|e| refused(e.to_string()))?;
            check_root_change(&before.root_cert, &after.root_cert)
                .map_err(|e| refused(format!("{}: {e}", record.cluster)))?;
            let extra = served
                .get(&record.cluster)
                .and_then(|s| s.bundle.clone().map(|b| (s.served, b)))
                .filter(|(_, b)| *b != before && *b != after);
            bundles.push((record.cluster.as_str(), before, after, extra));
        }
        let steps: Vec<ClusterStep<'_>> = bundles
            .iter()
            .map(|(cluster, before, after, extra)| {
                let mut during = vec![(from.to_string(), before), (to.to_string(), after)];
                if let Some((served, bundle)) = extra {
                    during.push((format!("{served} (served now)"), bundle));
                }
                ClusterStep {
                    cluster,
                    baseline: before,
                    during,
                }
            })
            .collect();
        check_step(&steps, self.now).map_err(|e| refused(e.to_string()))?;
        Ok(())
    }

    // ---- delivering -------------------------------------------------------------------

    /// Makes every cluster's Vault entry hold `state.stage`'s bundle. At the start (also when
    /// finishing a start cut short), whatever is there is replaced (its previous version stays
    /// in the KV history); later, only the bundle of another stage of this rotation is, since
    /// anything else was not written by it.
    async fn deliver(&self, state: &RotationState, starting: bool) -> Result<usize> {
        let starting =
            starting || (state.stage == Stage::Imported && state.advanced_at == state.started);
        let mut writes = 0;
        for record in &state.clusters {
            let path = self.plan.cluster_path(&record.cluster);
            let label = self.plan.label(&path);
            let wanted = record.rotation.bundle(state.stage);
            let entry = self.store.read(&path).await?;
            let held = entry.as_ref().and_then(entry_bundle).and_then(|b| {
                record
                    .rotation
                    .stage_of(IstioBundleFiles::from(&b), state.stage)
            });
            if held == Some(state.stage) {
                continue;
            }
            if !starting && entry.is_some() && held.is_none() {
                if state.stage == Stage::TrustNew
                    && self.renewed_under_new_root(state, entry.as_ref())
                {
                    continue;
                }
                return Err(InvalidState {
                    path: label,
                    problem: format!(
                        "holds a bundle of no stage of the rotation recorded at '{}'; it was \
                         changed by something else: restore the {} bundle or check the writer",
                        self.plan.label(&self.plan.rotation_path),
                        state.stage
                    ),
                }
                .into());
            }
            let version = entry.as_ref().map_or(0, |e| e.version);
            match self
                .store
                .write(&path, &bundle_data(&wanted, state.stage, self.now), version)
                .await?
            {
                WriteOutcome::Written { version } => {
                    writes += 1;
                    info!(cluster = %record.cluster, path = %label, version, stage = state.stage.number(),
                          "wrote the cluster's stage bundle");
                }
                WriteOutcome::Conflict => {
                    let again = self.store.read(&path).await?;
                    let now_held = again.as_ref().and_then(entry_bundle).and_then(|b| {
                        record
                            .rotation
                            .stage_of(IstioBundleFiles::from(&b), state.stage)
                    });
                    if now_held != Some(state.stage) {
                        return Err(InvalidState {
                            path: label,
                            problem: "changed by another writer while this run wrote it; run \
                                      again"
                                .into(),
                        }
                        .into());
                    }
                }
            }
        }
        Ok(writes)
    }

    /// After the last stage, the bootstrap job may have renewed an intermediate: still under
    /// the new root alone, and valid.
    fn renewed_under_new_root(&self, state: &RotationState, entry: Option<&KvEntry>) -> bool {
        entry.and_then(entry_bundle).is_some_and(|b| {
            istio::verify_istio_bundle(IstioBundleFiles::from(&b), self.now).is_ok_and(|report| {
                report.roots.len() == 1 && report.root.fingerprint_sha256 == state.root_fingerprint
            })
        })
    }

    // ---- reading the clusters ---------------------------------------------------------

    async fn served(&self, state: &RotationState) -> Result<BTreeMap<String, ServedBundle>> {
        let mut served = BTreeMap::new();
        for record in &state.clusters {
            let cluster = &record.cluster;
            let answer = if self.clusters.reachable(cluster) {
                match self.clusters.secret(cluster, "cacerts").await? {
                    Some(files) => match secret_bundle(&files) {
                        Some(bundle) => ServedBundle {
                            served: record
                                .rotation
                                .stage_of(IstioBundleFiles::from(&bundle), state.stage)
                                .map_or(Served::Other, Served::Stage),
                            bundle: Some(bundle),
                        },
                        None => ServedBundle {
                            served: Served::Other,
                            bundle: None,
                        },
                    },
                    // Without cacerts, istiod signs with its self-signed CA: the imported one,
                    // if that is where stage 0 came from.
                    None => ServedBundle {
                        served: Served::Nothing,
                        bundle: (record.source == ImportSource::SelfSignedSecret)
                            .then(|| record.rotation.bundle(Stage::Imported)),
                    },
                }
            } else {
                ServedBundle {
                    served: Served::Unknown,
                    bundle: None,
                }
            };
            served.insert(cluster.clone(), answer);
        }
        Ok(served)
    }

    /// What keeps `state` from advancing now, given what each cluster serves.
    fn blockers(&self, state: &RotationState, served: &[(String, Served)]) -> Vec<Blocker> {
        advance_blockers(
            state.stage,
            state.advanced_at,
            served,
            self.rotate.workload_cert_ttl,
            self.now,
        )
    }

    // ---- moving -----------------------------------------------------------------------

    async fn advance(&self, state: RotationState, version: u64, force: bool) -> Result<Report> {
        self.deliver(&state, false).await?;
        let Some(to) = state.stage.next() else {
            return Ok(Report {
                outcome: Outcome::Complete,
                lines: vec!["the rotation is at its last stage".into()],
            });
        };
        let served = self.served(&state).await?;
        let served_list = served_list(&served);
        let blockers = self.blockers(&state, &served_list);
        if !blockers.is_empty() {
            let reasons: Vec<String> = blockers.iter().map(ToString::to_string).collect();
            if !force {
                let mut report = not_advanced(
                    reasons
                        .iter()
                        .map(|r| format!("{} not advanced: {r}", state.stage))
                        .collect(),
                );
                report.lines.push(hint(&blockers));
                return Ok(report);
            }
            warn!(stage = state.stage.number(), skipped = %reasons.join("; "), "advancing by force");
        }
        self.check_step(&state.clusters, state.stage, to, &served)?;
        self.move_to(state, version, to).await
    }

    async fn back(&self, state: RotationState, version: u64) -> Result<Report> {
        let Some(to) = state.stage.previous() else {
            return Ok(not_advanced(vec![
                "stage 0 is the first stage (the imported CA); there is nothing to go back to"
                    .into(),
            ]));
        };
        self.deliver(&state, false).await?;
        let served = self.served(&state).await?;
        self.check_step(&state.clusters, state.stage, to, &served)?;
        self.move_to(state, version, to).await
    }

    async fn move_to(&self, state: RotationState, version: u64, to: Stage) -> Result<Report> {
        let from = state.stage;
        let next = RotationState {
            stage: to,
            advanced_at: self.now,
            ..state
        };
        let label = self.plan.label(&self.plan.rotation_path);
        let written = match self
            .store
            .write(&self.plan.rotation_path, &next.to_data(), version)
            .await?
        {
            WriteOutcome::Written { version } => {
                info!(path = %label, version, from = from.number(), to = to.number(), "rotation stage changed");
                next
            }
            WriteOutcome::Conflict => {
                let (theirs, _) =
                    read_state(self.store, self.plan)
                        .await?
                        .ok_or_else(|| InvalidState {
                            path: label.clone(),
                            problem: "a check-and-set write conflicted, yet the record reads as \
                                      absent"
                                .into(),
                        })?;
                if theirs.stage != to {
                    return Err(InvalidState {
                        path: label,
                        problem: format!(
                            "another run moved the rotation to {} meanwhile; nothing was \
                             written: run `rotate status`",
                            theirs.stage
                        ),
                    }
                    .into());
                }
                info!(path = %label, to = to.number(), "another run made the same step first; finishing it");
                theirs
            }
        };
        self.deliver(&written, false).await?;
        let mut lines = vec![format!("moved from {from} to {to}: {}", to.describe())];
        lines.push(next_steps(to, self.rotate.workload_cert_ttl, self.now));
        Ok(Report {
            outcome: Outcome::Moved { from, to },
            lines,
        })
    }

    // ---- status -----------------------------------------------------------------------

    async fn status(&self, state: Option<RotationState>) -> Result<Report> {
        let Some(state) = state else {
            let mut lines = vec!["no rotation is recorded".to_owned()];
            for cluster in &self.plan.clusters {
                lines.push(self.describe_unrotated(cluster).await?);
            }
            return Ok(Report {
                outcome: Outcome::Status,
                lines,
            });
        };
        let served = self.served(&state).await?;
        let mut lines = vec![
            format!(
                "rotation to root {} (secret {}), started {}",
                state.root_fingerprint,
                self.plan.label(&state.root_path),
                rfc3339(state.started)
            ),
            format!(
                "{}: {}, since {}",
                state.stage,
                state.stage.describe(),
                rfc3339(state.advanced_at)
            ),
        ];
        for record in &state.clusters {
            let entry = self
                .store
                .read(&self.plan.cluster_path(&record.cluster))
                .await?;
            let vault = match entry.as_ref().and_then(entry_bundle) {
                None => "absent".to_owned(),
                Some(b) => record
                    .rotation
                    .stage_of(IstioBundleFiles::from(&b), state.stage)
                    .map_or_else(|| "a bundle of no stage".to_owned(), |s| s.to_string()),
            };
            let serving = served
                .get(&record.cluster)
                .map_or(Served::Unknown, |s| s.served);
            lines.push(format!(
                "{}: vault {vault}, serving {serving} (stage 0 from istio-system/{})",
                record.cluster,
                record.source.name()
            ));
        }
        let served_list = served_list(&served);
        if state.in_progress() {
            let blockers = self.blockers(&state, &served_list);
            if blockers.is_empty() {
                lines.push(format!(
                    "next: `bootstrap-job rotate advance` moves to {}",
                    state.stage.next().unwrap_or(state.stage)
                ));
            } else {
                let reasons: Vec<String> = blockers.iter().map(ToString::to_string).collect();
                lines.push(format!("next: waiting: {}", reasons.join("; ")));
            }
        } else {
            lines.push("next: nothing; the rotation is complete".into());
        }
        info!(stage = state.stage.number(), served = %served_list.iter().map(|(c, s)| format!("{c}={s}")).collect::<Vec<_>>().join(", "),
              "rotation status");
        Ok(Report {
            outcome: Outcome::Status,
            lines,
        })
    }

    async fn describe_unrotated(&self, cluster: &str) -> Result<String> {
        if !self.clusters.reachable(cluster) {
            return Ok(format!(
                "{cluster}: not read (no entry in ROTATE_KUBECONFIGS)"
            ));
        }
        let mut line = format!("{cluster}:");
        for name in ["cacerts", "istio-ca-secret"] {
            let roots = match self.clusters.secret(cluster, name).await? {
                None => "absent".to_owned(),
                Some(files) => {
                    let field = if name == "cacerts" {
                        ROOT_CERT
                    } else {
                        CA_CERT
                    };
                    files
                        .get(field)
                        .and_then(|text| istio::parse_root_bundle(text).ok())
                        .map_or_else(
                            || format!("no readable {field}"),
                            |roots| {
                                let fps: Vec<String> = roots
                                    .iter()
                                    .map(|r| r.info().fingerprint_sha256.clone())
                                    .collect();
                                format!("root {}", fps.join(" + "))
                            },
                        )
                }
            };
            let _ = write!(line, " {name} {roots};");
        }
        Ok(line.trim_end_matches(';').to_owned())
    }
}

/// Whether `bundle` is what a rotation to `root` ends with: an intermediate under `root`,
/// trusting `root` alone. A root that signs workloads itself (the previous scripts' layout) is
/// not: the rotation moves it to an intermediate.
fn already_final(bundle: &IstioCaBundle, root: &CaCredential) -> bool {
    only_root(&bundle.root_cert, root)
        && Certificate::from_pem(&bundle.ca_cert, CA_CERT)
            .is_ok_and(|ca| ca.der() != root.certificate.der())
}

/// Whether `root_cert` holds `root` and nothing else.
fn only_root(root_cert: &str, root: &CaCredential) -> bool {
    istio::parse_root_bundle(root_cert)
        .is_ok_and(|roots| roots.len() == 1 && roots[0].der() == root.certificate.der())
}

fn sources(state: &RotationState) -> String {
    state
        .clusters
        .iter()
        .map(|c| format!("{}={}", c.cluster, c.source.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn not_advanced(reasons: Vec<String>) -> Report {
    Report {
        lines: reasons.clone(),
        outcome: Outcome::NotAdvanced(reasons),
    }
}

fn hint(blockers: &[Blocker]) -> String {
    if blockers
        .iter()
        .any(|b| matches!(b, Blocker::NotServed { .. }))
    {
        "next: wait for the sync to deliver the stage into cacerts (ExternalSecret refresh, \
         nas-sync-job's CronJob) and check `rotate status`; `--force` skips this wait"
            .into()
    } else {
        "next: run `rotate advance` again after that time; `--force` skips this wait".into()
    }
}

/// What the operator does after moving to `stage`.
fn next_steps(stage: Stage, ttl: Duration, now: OffsetDateTime) -> String {
    let after = rfc3339(now + stage.settle_time(ttl));
    match stage {
        Stage::Imported => "next: once stage 0 is in every cacerts, restart istiod where it \
                            still used istio-ca-secret; then `rotate advance`"
            .into(),
        Stage::TrustBoth | Stage::SignNew => format!(
            "next: once every cacerts holds it, istiod reloads it (ISTIO_MULTIROOT_MESH=true) or \
             is restarted; `rotate advance` is possible from {after}, or sooner after restarting \
             every workload"
        ),
        Stage::TrustNew => "next: nothing; once every cacerts holds it, the rotation is \
                            complete"
            .into(),
    }
}

/// What each cluster serves, as the stage rules take it.
fn served_list(served: &BTreeMap<String, ServedBundle>) -> Vec<(String, Served)> {
    served.iter().map(|(c, s)| (c.clone(), s.served)).collect()
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeSet;

    use job_support::store::local::LocalStore;
    use pki_core::istio::IstioCaParams;
    use pki_core::istio_rotation::DEFAULT_WORKLOAD_CERT_TTL;
    use pki_core::{CaParams, KeyAlgorithm, SubjectName, generate_root_ca};

    use super::*;
    use crate::converge::tests::plan;
    use crate::converge::{ClusterAction, converge};

    /// 2026-05-01T08:00:00Z.
    const T0: OffsetDateTime = match OffsetDateTime::from_unix_timestamp(1_777_622_400) {
        Ok(t) => t,
        Err(_) => OffsetDateTime::UNIX_EPOCH,
    };

    /// The clusters' Secrets, in memory: what the Kubernetes API would answer.
    #[derive(Default)]
    struct Clusters {
        reachable: BTreeSet<String>,
        secrets: RefCell<BTreeMap<(String, String), SecretFiles>>,
    }

    impl ClusterSecrets for Clusters {
        fn reachable(&self, cluster: &str) -> bool {
            self.reachable.contains(cluster)
        }
        async fn secret(&self, cluster: &str, name: &str) -> Result<Option<SecretFiles>> {
            Ok(self
                .secrets
                .borrow()
                .get(&(cluster.to_owned(), name.to_owned()))
                .cloned())
        }
    }

    impl Clusters {
        fn new() -> Self {
            Self {
                reachable: ["homelab", "nas"].map(str::to_owned).into(),
                ..Self::default()
            }
        }

        fn put(&self, cluster: &str, name: &str, files: &[(&str, &str)]) {
            self.secrets.borrow_mut().insert(
                (cluster.to_owned(), name.to_owned()),
                files
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            );
        }

        /// What the ExternalSecret or nas-sync-job does: Vault's bundle into cacerts.
        async fn sync(&self, store: &LocalStore, cluster: &str) {
            let entry = store
                .read(&format!("istio/clusters/{cluster}"))
                .await
                .unwrap()
                .unwrap();
            let files: Vec<(&str, &str)> = [CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN]
                .iter()
                .map(|f| (*f, entry.data.get(f).unwrap()))
                .collect();
            self.put(cluster, "cacerts", &files);
        }
    }

    /// A store where the regular run created the root and both bundles, and clusters serving
    /// them (the temporary directory lives as long as the first value).
    async fn both_on_one_root() -> (tempfile::TempDir, LocalStore, Clusters) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path(), "secret");
        converge(&store, &plan(), T0).await.unwrap();
        let clusters = Clusters::new();
        clusters.sync(&store, "homelab").await;
        clusters.sync(&store, "nas").await;
        (dir, store, clusters)
    }

    fn settings() -> RotatePlan {
        RotatePlan {
            root_path: "istio/ca".into(),
            imports: BTreeMap::new(),
            workload_cert_ttl: DEFAULT_WORKLOAD_CERT_TTL,
        }
    }

    /// istiod's self-signed CA in `cluster`'s istio-ca-secret.
    fn self_signed(clusters: &Clusters, cluster: &str) {
        let ca = generate_root_ca(
            &CaParams {
                subject: SubjectName::new("cluster.local", cluster),
                key_algorithm: KeyAlgorithm::EcdsaP256,
                validity: Duration::days(3650),
            },
            T0 - Duration::days(100),
        )
        .unwrap();
        let cert = ca.certificate.to_pem();
        clusters.put(
            cluster,
            "istio-ca-secret",
            &[
                (CA_CERT, &cert),
                (CA_KEY, ca.key_pem().expose()),
                (ROOT_CERT, &cert),
                (CERT_CHAIN, ""),
            ],
        );
    }

    async fn run(
        store: &LocalStore,
        clusters: &Clusters,
        rotate: &RotatePlan,
        action: Action,
        now: OffsetDateTime,
    ) -> Report {
        try_run(store, clusters, rotate, action, now).await.unwrap()
    }

    /// The rotation's answer, an error included.
    async fn try_run(
        store: &LocalStore,
        clusters: &Clusters,
        rotate: &RotatePlan,
        action: Action,
        now: OffsetDateTime,
    ) -> Result<Report> {
        Rotation {
            store,
            clusters,
            plan: &plan(),
            rotate,
            now,
        }
        .run(action)
        .await
    }

    async fn vault_stage(store: &LocalStore, state: &RotationState, cluster: &str) -> Stage {
        let entry = store
            .read(&format!("istio/clusters/{cluster}"))
            .await
            .unwrap()
            .unwrap();
        state
            .cluster(cluster)
            .unwrap()
            .rotation
            .stage_of(
                IstioBundleFiles::from(&entry_bundle(&entry).unwrap()),
                state.stage,
            )
            .unwrap()
    }

    const ADVANCE: Action = Action::Advance { force: false };

    /// A bundle of another root, written over `cluster`'s entry.
    async fn write_foreign_bundle(store: &LocalStore, cluster: &str) {
        let path = format!("istio/clusters/{cluster}");
        let current = store.read(&path).await.unwrap().map_or(0, |e| e.version);
        let params = IstioCaParams::default();
        let root = istio::generate_istio_root(&params, T0).unwrap();
        let other = istio::issue_cluster_bundle(&root, cluster, &params, T0).unwrap();
        let data = bundle_data(&other, Stage::TrustNew, T0);
        store.write(&path, &data, current).await.unwrap();
    }

    /// From two self-signed meshes to the shared root, stage by stage, with the waits and the
    /// regular run leaving the rotating bundles alone.
    #[tokio::test]
    async fn self_signed_clusters_move_to_the_shared_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path(), "secret");
        let clusters = Clusters::new();
        self_signed(&clusters, "homelab");
        self_signed(&clusters, "nas");
        let rotate = settings();

        // Without a root there is nothing to move to.
        let err = try_run(&store, &clusters, &rotate, ADVANCE, T0)
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").starts_with(
                "invalid state at 'secret/istio/ca': absent: run bootstrap-job (without arguments) first"
            ),
            "{err:#}"
        );
        converge(&store, &plan(), T0).await.unwrap();

        let started = run(&store, &clusters, &rotate, ADVANCE, T0).await;
        assert_eq!(started.outcome, Outcome::Started);
        let (state, _) = read_state(&store, &plan()).await.unwrap().unwrap();
        assert_eq!(state.stage, Stage::Imported);
        for cluster in ["homelab", "nas"] {
            assert_eq!(vault_stage(&store, &state, cluster).await, Stage::Imported);
            assert_eq!(
                state.cluster(cluster).unwrap().source,
                ImportSource::SelfSignedSecret
            );
        }
        // The regular run leaves them alone.
        let regular = converge(&store, &plan(), T0).await.unwrap();
        assert_eq!(regular.writes(), 0);
        assert_eq!(
            regular.clusters[0].action,
            ClusterAction::Rotating(Stage::Imported)
        );

        // A start cut short before its deliveries: homelab's entry still holds what was there
        // before (here, a bundle of another root). The next run replaces it with stage 0.
        write_foreign_bundle(&store, "homelab").await;

        // Not yet in cacerts: not advanced.
        let waiting = run(&store, &clusters, &rotate, ADVANCE, T0).await;
        assert_eq!(
            waiting.outcome,
            Outcome::NotAdvanced(vec![
                "stage 0 not advanced: homelab serves no cacerts".into(),
                "stage 0 not advanced: nas serves no cacerts".into()
            ])
        );
        assert_eq!(waiting.exit_code(), NOT_ADVANCED_EXIT);
        assert_eq!(
            vault_stage(&store, &state, "homelab").await,
            Stage::Imported
        );

        let mut now = T0;
        for to in [Stage::TrustBoth, Stage::SignNew, Stage::TrustNew] {
            clusters.sync(&store, "homelab").await;
            clusters.sync(&store, "nas").await;
            let moved = run(&store, &clusters, &rotate, ADVANCE, now).await;
            assert_eq!(
                moved.outcome,
                Outcome::Moved {
                    from: to.previous().unwrap(),
                    to
                },
                "{:?}",
                moved.lines
            );
            let (state, _) = read_state(&store, &plan()).await.unwrap().unwrap();
            assert_eq!(vault_stage(&store, &state, "nas").await, to);
            // A stage that has not settled is not left, unless forced.
            clusters.sync(&store, "homelab").await;
            clusters.sync(&store, "nas").await;
            if to != Stage::TrustNew {
                let early = run(&store, &clusters, &rotate, ADVANCE, now).await;
                assert!(
                    matches!(&early.outcome, Outcome::NotAdvanced(r) if r[0].contains("workloads need until")),
                    "{:?}",
                    early.outcome
                );
            }
            now += DEFAULT_WORKLOAD_CERT_TTL;
        }
        let done = run(&store, &clusters, &rotate, ADVANCE, now).await;
        assert_eq!(done.outcome, Outcome::Complete);
        // After the last stage, the regular run verifies the bundles against the root again.
        let regular = converge(&store, &plan(), now).await.unwrap();
        assert_eq!(regular.clusters[1].action, ClusterAction::Kept);
        assert_eq!(regular.writes(), 0);
    }

    /// Both clusters on one root, moving to a new one: cross-cluster pairs talk all along, so a
    /// forced step that would leave a cluster serving two stages behind is refused.
    #[tokio::test]
    async fn a_forced_step_that_breaks_a_pair_is_refused() {
        let (_dir, store, clusters) = both_on_one_root().await;
        let rotate = RotatePlan {
            root_path: "istio/ca-next".into(),
            workload_cert_ttl: Duration::ZERO,
            ..settings()
        };
        assert_eq!(
            run(&store, &clusters, &rotate, ADVANCE, T0).await.outcome,
            Outcome::Started
        );
        let (state, _) = read_state(&store, &plan()).await.unwrap().unwrap();
        assert_eq!(state.cluster("nas").unwrap().source, ImportSource::Cacerts);
        clusters.sync(&store, "homelab").await;
        clusters.sync(&store, "nas").await;
        assert!(matches!(
            run(&store, &clusters, &rotate, ADVANCE, T0).await.outcome,
            Outcome::Moved { .. }
        ));
        // homelab gets stage 1; nas still serves stage 0.
        clusters.sync(&store, "homelab").await;
        let forced = try_run(
            &store,
            &clusters,
            &rotate,
            Action::Advance { force: true },
            T0,
        )
        .await
        .unwrap_err();
        assert_eq!(
            format!("{forced:#}"),
            "invalid state at 'secret/istio/rotation': stage 2 refused: the step would break \
             mTLS between workloads that can talk now: homelab at stage 2 and nas at stage 0 \
             (served now): nas would not trust the certificates homelab signs; nas at stage 2 \
             and nas at stage 0 (served now): nas would not trust the certificates nas signs; \
             nothing was written"
        );
        let (after, _) = read_state(&store, &plan()).await.unwrap().unwrap();
        assert_eq!(after.stage, Stage::TrustBoth);
        // Once nas serves stage 1, the same forced step is taken; then back again.
        clusters.sync(&store, "nas").await;
        assert!(matches!(
            run(
                &store,
                &clusters,
                &rotate,
                Action::Advance { force: true },
                T0
            )
            .await
            .outcome,
            Outcome::Moved {
                to: Stage::SignNew,
                ..
            }
        ));
        let back = run(&store, &clusters, &rotate, Action::Back, T0).await;
        assert_eq!(
            back.outcome,
            Outcome::Moved {
                from: Stage::SignNew,
                to: Stage::TrustBoth
            }
        );
        let (state, _) = read_state(&store, &plan()).await.unwrap().unwrap();
        assert_eq!(
            vault_stage(&store, &state, "homelab").await,
            Stage::TrustBoth
        );
    }

    /// A rotation record written, its cluster entries not yet (a run stopped between its
    /// writes): the next run delivers them before anything else. A bundle of no stage is
    /// refused rather than overwritten.
    #[tokio::test]
    async fn an_interrupted_step_is_finished_and_a_foreign_bundle_refused() {
        let (_dir, store, clusters) = both_on_one_root().await;
        let rotate = RotatePlan {
            root_path: "istio/ca-next".into(),
            ..settings()
        };
        run(&store, &clusters, &rotate, ADVANCE, T0).await;
        let entry = store.read("istio/rotation").await.unwrap().unwrap();
        let (mut state, _) = read_state(&store, &plan()).await.unwrap().unwrap();
        state.stage = Stage::TrustBoth;
        store
            .write("istio/rotation", &state.to_data(), entry.version)
            .await
            .unwrap();
        let status = run(&store, &clusters, &rotate, Action::Status, T0).await;
        assert!(
            status.lines.contains(
                &"nas: vault stage 0, serving stage 0 (stage 0 from istio-system/cacerts)".into()
            ),
            "{:?}",
            status.lines
        );
        let waiting = run(&store, &clusters, &rotate, ADVANCE, T0).await;
        assert!(matches!(waiting.outcome, Outcome::NotAdvanced(_)));
        assert_eq!(vault_stage(&store, &state, "nas").await, Stage::TrustBoth);

        // Someone writes another bundle into nas's entry.
        write_foreign_bundle(&store, "nas").await;
        let err = try_run(&store, &clusters, &rotate, ADVANCE, T0)
            .await
            .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "invalid state at 'secret/istio/clusters/nas': holds a bundle of no stage of the \
             rotation recorded at 'secret/istio/rotation'; it was changed by something else: \
             restore the stage 1 bundle or check the writer"
        );
    }

    /// Clusters served by the previous scripts' ExternalSecret: the adopted root signs
    /// workloads itself. The rotation moves them to intermediates under that same root, and
    /// leaves the root entry as it is.
    #[tokio::test]
    async fn a_root_that_signs_itself_moves_to_intermediates_under_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path(), "secret");
        let root = istio::generate_istio_root(&IstioCaParams::default(), T0).unwrap();
        let (cert, key) = (root.certificate.to_pem(), root.key_pem());
        let mut seed = SecretData::new();
        for (field, value) in [
            ("root-cert.pem", cert.as_str()),
            ("cert-chain.pem", cert.as_str()),
            ("key.pem", key.expose()),
        ] {
            seed.insert(field, value);
        }
        store.write("istio/ca", &seed, 0).await.unwrap();
        let clusters = Clusters::new();
        for cluster in ["homelab", "nas"] {
            clusters.put(
                cluster,
                "cacerts",
                &[
                    (CA_CERT, &cert),
                    (CA_KEY, key.expose()),
                    (ROOT_CERT, &cert),
                    (CERT_CHAIN, &cert),
                ],
            );
        }
        let rotate = RotatePlan {
            workload_cert_ttl: Duration::ZERO,
            ..settings()
        };
        assert_eq!(
            run(&store, &clusters, &rotate, ADVANCE, T0).await.outcome,
            Outcome::Started
        );
        for to in [Stage::TrustBoth, Stage::SignNew, Stage::TrustNew] {
            clusters.sync(&store, "homelab").await;
            clusters.sync(&store, "nas").await;
            let moved = run(&store, &clusters, &rotate, ADVANCE, T0).await;
            assert!(
                matches!(moved.outcome, Outcome::Moved { to: t, .. } if t == to),
                "{:?}",
                moved.lines
            );
        }
        clusters.sync(&store, "nas").await;
        let nas = clusters.secrets.borrow()[&("nas".to_owned(), "cacerts".to_owned())].clone();
        assert_ne!(nas[CA_CERT], cert);
        assert_eq!(nas[ROOT_CERT], cert);
        let entry = store.read("istio/ca").await.unwrap().unwrap();
        assert_eq!((entry.version, entry.data), (1, seed));
        // The regular run verifies the result against the adopted root.
        let regular = converge(&store, &plan(), T0).await.unwrap();
        assert_eq!(regular.writes(), 0);
    }

    #[tokio::test]
    async fn clusters_already_on_the_root_have_nothing_to_rotate() {
        let (_dir, store, clusters) = both_on_one_root().await;
        let report = run(&store, &clusters, &settings(), ADVANCE, T0).await;
        assert_eq!(report.outcome, Outcome::NothingToRotate);
        assert!(store.read("istio/rotation").await.unwrap().is_none());
        // A cluster the job cannot read cannot be imported.
        let blind = Clusters {
            reachable: ["nas".to_owned()].into(),
            ..Clusters::default()
        };
        let err = Rotation {
            store: &store,
            clusters: &blind,
            plan: &plan(),
            rotate: &RotatePlan {
                root_path: "istio/ca-next".into(),
                ..settings()
            },
            now: T0,
        }
        .run(ADVANCE)
        .await
        .unwrap_err();
        assert_eq!(Failure::of(&err), Failure::Config);
        assert!(
            store.read("istio/ca-next").await.unwrap().is_none(),
            "a root was written"
        );
    }
}
