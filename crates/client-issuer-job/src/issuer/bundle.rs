//! The public bundle HAProxy trusts: the CA certificates and a CRL for each, checked by the
//! client trust policy of `pki-core` before it is written. Its revocation set only grows, and every write is check-and-set against the version it was built from.

use std::collections::BTreeSet;

use anyhow::Result;
use job_support::{KvEntry, SecretData, SecretStore, WriteOutcome};
use pki_core::{
    CaCredential, Certificate, Crl, CrlParams, CrlSet, PkiError, RevokedCertificate,
    check_client_trust, crl_signed_by, merge_revocations, sign_crl,
};
use tracing::info;

use super::previous_ca::foreign_fields_problem;
use super::{ClientStatus, EntryProblem, Issuer, RunSummary, rfc3339, writable_absent};

/// Fields of the public bundle entry, as the previous setup's ExternalSecret copies them.
pub(super) const BUNDLE_CA: &str = "ca.crt";
pub(super) const BUNDLE_CRL: &str = "crl.pem";
/// Every field the bundle entry may hold; anything else there is not this job's to overwrite.
pub(super) const BUNDLE_FIELDS: [&str; 6] = [
    BUNDLE_CA,
    BUNDLE_CRL,
    "created",
    "not_after",
    "crl_number",
    "crl_next_update",
];
/// How many times a run rebuilds the bundle after losing a check-and-set race. Every round
/// has a winner, so this bounds only how long one run keeps trying.
pub(super) const BUNDLE_ATTEMPTS: u32 = 10;

impl<S: SecretStore> Issuer<'_, S> {
    /// Writes the public bundle when its content changes: the CA certificates HAProxy trusts
    /// and a CRL for each, ours re-signed when the revoked set changes or nextUpdate nears.
    ///
    /// The published revocation set only grows: each attempt starts from a fresh read of the
    /// bundle, keeps every serial its CRL already lists and adds this run's, and writes with
    /// check-and-set against the version it read. A run that loses the race to another run
    /// therefore rebuilds on top of the winner's revocations instead of replacing them.
    pub(super) async fn finish(
        &self,
        ca: &CaCredential,
        ca_created: bool,
        mut clients: Vec<ClientStatus>,
        mut attention: Vec<EntryProblem>,
    ) -> Result<RunSummary> {
        clients.sort_by(|a, b| a.name.cmp(&b.name));
        attention.sort_by(|a, b| a.name.cmp(&b.name));
        let known: Vec<RevokedCertificate> = clients
            .iter()
            .flat_map(|c| c.revocations.iter().cloned())
            .collect();
        let path = &self.pki.ca_path;
        let previous_ca = self.trusted_previous_ca().await?;
        for attempt in 1..=BUNDLE_ATTEMPTS {
            let stored = self.store.read(path).await?;
            let (cas, previous) = self.stored_bundle(stored.as_ref(), &ca.certificate)?;
            let published = match &previous {
                Some(crl) => crl
                    .revoked_certificates()
                    .map_err(|e| self.invalid(path, e.to_string()))?,
                None => Vec::new(),
            };
            let revoked = merge_revocations(&published, &known);
            let (crl_pem, crl_signed) = self.crl(ca, previous.as_ref(), &revoked)?;
            let crl = Crl::from_pem(&crl_pem, BUNDLE_CRL)?;
            let mut trusted = vec![ca.certificate.clone()];
            let mut crls = vec![crl.clone()];
            if let Some(previous_ca) = &previous_ca {
                // HAProxy with crl-file refuses every client of a CA in ca-file without a
                // current CRL, so the previous CA's is re-signed whenever ours is.
                let stored_crl = stored.as_ref().and_then(|e| {
                    own_crl(
                        e.data.get(BUNDLE_CRL).unwrap_or_default(),
                        &previous_ca.certificate,
                    )
                });
                let previous_crl =
                    self.previous_ca_crl(previous_ca, stored_crl.as_ref(), crl_signed)?;
                trusted.push(previous_ca.certificate.clone());
                crls.push(Crl::from_pem(&previous_crl, BUNDLE_CRL)?);
            }
            for legacy in &self.pki.legacy {
                trusted.push(legacy.certificate.clone());
                crls.extend(legacy.crl.clone());
            }
            // What HAProxy gets passes the same policy nas-sync-job checks before a Secret.
            let crl_set = CrlSet {
                crls: &crls,
                label: BUNDLE_CRL,
            };
            let trust = check_client_trust(trusted, Some(crl_set), self.now)
                .map_err(|e| self.invalid(path, e.to_string()))?;
            let (ca_bundle, crl_bundle) = (trust.ca_pem(), trust.crl_pem());
            let next_update = crl.info().next_update.unwrap_or(self.now);
            let summary = |bundle_written| RunSummary {
                ca_created,
                ca_not_after: ca.certificate.info().not_after,
                crl_next_update: next_update,
                crl_signed,
                bundle_written,
                clients: clients.clone(),
                attention: attention.clone(),
            };
            let unchanged = stored.as_ref().is_some_and(|e| {
                e.data.get(BUNDLE_CA) == Some(ca_bundle.as_str())
                    && e.data.get(BUNDLE_CRL) == Some(crl_bundle.as_str())
            });
            if unchanged {
                return Ok(summary(false));
            }
            let mut data = SecretData::new();
            data.insert(BUNDLE_CA, ca_bundle);
            data.insert(BUNDLE_CRL, crl_bundle);
            data.insert("created", rfc3339(self.now));
            data.insert("not_after", rfc3339(ca.certificate.info().not_after));
            data.insert(
                "crl_number",
                crl.info().crl_number.unwrap_or_default().to_string(),
            );
            data.insert("crl_next_update", rfc3339(next_update));
            match self.store.write(path, &data, cas).await? {
                WriteOutcome::Written { version } => {
                    info!(path = %self.label(path), version, crl_number = crl.info().crl_number.unwrap_or_default(),
                          revoked = revoked.len(), legacy_cas = self.pki.legacy.len(), "wrote the trust bundle and CRL");
                    return Ok(summary(true));
                }
                WriteOutcome::Conflict => {
                    info!(path = %self.label(path), attempt,
                          "another run wrote the trust bundle first; rebuilding on top of its revocations");
                }
            }
        }
        anyhow::bail!(
            "'{}' kept changing under concurrent runs; gave up after {BUNDLE_ATTEMPTS} attempts (every revocation stays recorded in its client entry; the next run publishes it)",
            self.label(path)
        )
    }

    /// Our CRL for `revoked`: the stored one while it lists exactly that set and is far from
    /// its nextUpdate, else a new one with the next CRL number. `true` when newly signed.
    fn crl(
        &self,
        ca: &CaCredential,
        previous: Option<&Crl>,
        revoked: &[RevokedCertificate],
    ) -> Result<(String, bool)> {
        let wanted: BTreeSet<String> = revoked.iter().map(RevokedCertificate::serial_hex).collect();
        let fresh = previous.filter(|crl| {
            let listed: BTreeSet<String> = crl
                .info()
                .revoked
                .iter()
                .map(|r| r.serial_hex.clone())
                .collect();
            listed == wanted
                && crl
                    .info()
                    .next_update
                    .is_some_and(|next| next - self.now > self.pki.crl_renew_before)
        });
        if let Some(crl) = fresh {
            return Ok((crl.to_pem(), false));
        }
        let number = previous.and_then(|c| c.info().crl_number).unwrap_or(0) + 1;
        let params = CrlParams {
            this_update: self.now,
            next_update: self.now + self.pki.crl_validity,
            crl_number: number,
            revoked: revoked.to_vec(),
        };
        Ok((sign_crl(ca, &params)?, true))
    }

    /// The previous CA's CRL: the stored one while ours is not re-signed and it is far from
    /// its nextUpdate, else a new one listing what the stored one listed, numbered after it.
    fn previous_ca_crl(
        &self,
        previous_ca: &CaCredential,
        stored: Option<&Crl>,
        ours_signed: bool,
    ) -> Result<String> {
        let fresh = stored.filter(|crl| {
            !ours_signed
                && crl
                    .info()
                    .next_update
                    .is_some_and(|next| next - self.now > self.pki.crl_renew_before)
        });
        if let Some(crl) = fresh {
            return Ok(crl.to_pem());
        }
        let revoked = match stored {
            Some(crl) => crl
                .revoked_certificates()
                .map_err(|e| self.invalid(&self.pki.ca_path, e.to_string()))?,
            None => Vec::new(),
        };
        let params = CrlParams {
            this_update: self.now,
            next_update: self.now + self.pki.crl_validity,
            crl_number: stored.and_then(|c| c.info().crl_number).unwrap_or(0) + 1,
            revoked,
        };
        Ok(sign_crl(previous_ca, &params)?)
    }

    /// The stored bundle, checked before anything is built on it: the version a write must
    /// name, and the CRL of ours it holds (`None` for an absent or placeholder entry, or the
    /// bundle of another CA, which this CA's bundle replaces). An entry with fields this job
    /// never writes (a CA and key of the previous scripts, say) or a `crl.pem` that is not a
    /// CRL bundle is invalid state: it is reported, never overwritten.
    fn stored_bundle(
        &self,
        stored: Option<&KvEntry>,
        ca: &Certificate,
    ) -> Result<(u64, Option<Crl>)> {
        let (entry, crls) = match self.check_bundle(stored)? {
            BundleState::Absent { cas } => return Ok((cas, None)),
            BundleState::Present { entry, crls } => (entry, crls),
        };
        let ours_trusted = entry
            .data
            .get(BUNDLE_CA)
            .is_some_and(|pem| pem.contains(ca.to_pem().trim()));
        let own = crl_signed_by(&crls, ca).cloned();
        if own.is_none() && ours_trusted {
            let missing = PkiError::MissingCrl {
                crls: format!("'{BUNDLE_CRL}'"),
                ca: ca.info().subject.clone(),
            };
            return Err(self.invalid(&self.pki.ca_path, missing.to_string()));
        }
        Ok((entry.version, own))
    }

    /// The shape check of the bundle entry, which needs no CA: run before the first write of
    /// a run, and again on every read of the bundle.
    fn check_bundle<'e>(&self, stored: Option<&'e KvEntry>) -> Result<BundleState<'e>> {
        if let Some(cas) = writable_absent(stored) {
            return Ok(BundleState::Absent { cas });
        }
        let entry = stored.ok_or_else(|| self.invalid(&self.pki.ca_path, "unreadable".into()))?;
        // The previous scripts' CA whose key this run copied away: the bundle replaces it.
        if self.replace_source.get() == Some(entry.version) {
            return Ok(BundleState::Absent { cas: entry.version });
        }
        let path = &self.pki.ca_path;
        if entry.data.fields().any(|f| !BUNDLE_FIELDS.contains(&f)) {
            let fields: Vec<&str> = entry.data.fields().collect();
            return Err(self.invalid(path, foreign_fields_problem(&fields)));
        }
        let text = entry
            .data
            .get(BUNDLE_CRL)
            .ok_or_else(|| self.invalid(path, format!("missing field '{BUNDLE_CRL}'")))?;
        let crls = Crl::bundle_from_pem(text, BUNDLE_CRL)
            .map_err(|e| self.invalid(path, e.to_string()))?;
        if crls.is_empty() {
            return Err(self.invalid(
                path,
                format!("field '{BUNDLE_CRL}' holds no CRL; nothing was written"),
            ));
        }
        Ok(BundleState::Present { entry, crls })
    }

    /// Reads the bundle entry and checks its shape, before the run writes anything.
    pub(super) async fn precheck_bundle(&self) -> Result<()> {
        let stored = self.store.read(&self.pki.ca_path).await?;
        self.check_bundle(stored.as_ref()).map(drop)
    }

    /// Checks the bundle against the client CA, before any client entry is written.
    pub(super) async fn check_bundle_against(&self, ca: &Certificate) -> Result<()> {
        let stored = self.store.read(&self.pki.ca_path).await?;
        self.stored_bundle(stored.as_ref(), ca).map(drop)
    }
}

/// The bundle entry as read, shape-checked.
enum BundleState<'e> {
    /// Absent or a placeholder: the version a write must name.
    Absent { cas: u64 },
    /// A bundle: the entry and every CRL of its `crl.pem`.
    Present { entry: &'e KvEntry, crls: Vec<Crl> },
}

/// The CRL in `pem_bundle` that `ca` signed, if any.
pub(super) fn own_crl(pem_bundle: &str, ca: &Certificate) -> Option<Crl> {
    let crls = Crl::bundle_from_pem(pem_bundle, BUNDLE_CRL).ok()?;
    crl_signed_by(&crls, ca).cloned()
}
