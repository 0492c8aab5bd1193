//! The client issuer's decisions: the client CA (created once), one entry per user (issued,
//! renewed, revoked, never deleted), and the public bundle HAProxy trusts (CA certificates
//! and one CRL per CA). Every write is conditional on the version read; a lost race adopts
//! the winner's entry; a run with nothing to do writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use job_support::{InvalidState, KvEntry, SecretData, SecretStore, WriteOutcome};
use pki_core::time::OffsetDateTime;
use pki_core::time::format_description::well_known::Rfc3339;
use pki_core::{
    CaCredential, CaParams, Certificate, ClientCertificateParams, Crl, CrlParams, Pkcs12Password,
    Pkcs12Profile, Pkcs12Request, RevocationReason, RevokedCertificate, SubjectName, build_pkcs12,
    generate_root_ca, issue_client_certificate, merge_revocations, renewal_due, sign_crl,
};
use tracing::info;

use crate::clients_file::DeclaredClient;
use crate::config::PkiSettings;

/// Fields of the issuer entry.
const ISSUER_CERT: &str = "ca.crt";
const ISSUER_KEY: &str = "ca.key";
/// Fields of the public bundle entry, as the seed's ExternalSecret copies them.
const BUNDLE_CA: &str = "ca.crt";
const BUNDLE_CRL: &str = "crl.pem";
/// Every field the bundle entry may hold; anything else there is not this job's to overwrite.
const BUNDLE_FIELDS: [&str; 6] = [
    BUNDLE_CA,
    BUNDLE_CRL,
    "created",
    "not_after",
    "crl_number",
    "crl_next_update",
];
/// How many times a run rebuilds the bundle after losing a check-and-set race. Every round
/// has a winner, so this bounds only how long one run keeps trying.
const BUNDLE_ATTEMPTS: u32 = 10;

/// Who asked for a client: the declared file (removal from it revokes), or the one-off
/// `issue` command (the file's absence does not revoke it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The clients file.
    File,
    /// `client-issuer-job issue`.
    Manual,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Manual => "manual",
        }
    }
}

/// What a run did to one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAction {
    /// Valid, nothing due.
    Kept,
    /// First certificate.
    Issued,
    /// New certificate: due for renewal, or profile/email changed, or revoked and re-declared.
    Renewed,
    /// Marked revoked (the entry is kept).
    Revoked,
    /// Already revoked, still revoked.
    StillRevoked,
    /// A concurrent run wrote it first; adopted.
    Adopted,
}

/// A client's state after the run, for the summary, the report and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientStatus {
    /// User name.
    pub name: String,
    /// Email.
    pub email: String,
    /// Serial, uppercase hex.
    pub serial: String,
    /// Certificate expiry.
    pub not_after: OffsetDateTime,
    /// Whether revoked.
    pub revoked: bool,
    /// CRL entries: this certificate's, when revoked, and those of earlier certificates of
    /// the same user that were revoked before a re-issue.
    pub revocations: Vec<RevokedCertificate>,
    /// PKCS#12 profile.
    pub profile: Pkcs12Profile,
    /// What this run did.
    pub action: ClientAction,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// Whether the client CA was created by this run.
    pub ca_created: bool,
    /// Client CA expiry.
    pub ca_not_after: OffsetDateTime,
    /// CRL nextUpdate.
    pub crl_next_update: OffsetDateTime,
    /// Whether the CRL was re-signed.
    pub crl_signed: bool,
    /// Whether the public bundle entry was written.
    pub bundle_written: bool,
    /// Every client entry, sorted by name.
    pub clients: Vec<ClientStatus>,
}

impl RunSummary {
    /// Clients whose last action is `action`.
    #[must_use]
    pub fn count(&self, action: ClientAction) -> usize {
        self.clients.iter().filter(|c| c.action == action).count()
    }

    /// Entries this run wrote.
    #[must_use]
    pub fn writes(&self) -> usize {
        usize::from(self.ca_created)
            + usize::from(self.bundle_written)
            + self
                .clients
                .iter()
                .filter(|c| {
                    matches!(
                        c.action,
                        ClientAction::Issued | ClientAction::Renewed | ClientAction::Revoked
                    )
                })
                .count()
    }
}

/// A stored client entry, parsed.
#[derive(Debug, Clone)]
struct ClientEntry {
    version: u64,
    data: SecretData,
    certificate: Certificate,
    email: String,
    profile: Pkcs12Profile,
    source: Source,
    revoked: Option<(OffsetDateTime, RevocationReason)>,
    /// Earlier certificates of this user, revoked before a re-issue: they stay on the CRL.
    history: Vec<RevokedCertificate>,
}

impl ClientEntry {
    /// Every revocation to publish for this user: the history, and the current certificate's.
    fn all_revocations(&self) -> Vec<RevokedCertificate> {
        let mut all = self.history.clone();
        if let Some((revoked_at, reason)) = self.revoked {
            all.push(RevokedCertificate {
                serial: self.certificate.raw_serial(),
                revoked_at,
                reason,
            });
        }
        all
    }

    fn status(&self, name: &str, action: ClientAction) -> ClientStatus {
        ClientStatus {
            name: name.to_owned(),
            email: self.email.clone(),
            serial: self.certificate.info().serial_hex.clone(),
            not_after: self.certificate.info().not_after,
            revoked: self.revoked.is_some(),
            revocations: self.all_revocations(),
            profile: self.profile,
            action,
        }
    }
}

/// A stored entry that is absent or only the seed's `placeholder=true`: the version a write
/// must name to replace it.
fn writable_absent(entry: Option<&KvEntry>) -> Option<u64> {
    match entry {
        None => Some(0),
        Some(e) if e.data.fields().eq(["placeholder"]) => Some(e.version),
        Some(_) => None,
    }
}

/// One run over the store.
pub struct Issuer<'a, S> {
    store: &'a S,
    pki: &'a PkiSettings,
    now: OffsetDateTime,
}

impl<'a, S: SecretStore> Issuer<'a, S> {
    /// An issuer acting at `now`.
    pub fn new(store: &'a S, pki: &'a PkiSettings, now: OffsetDateTime) -> Self {
        Self { store, pki, now }
    }

    fn label(&self, path: &str) -> String {
        format!("{}/{path}", self.pki.mount)
    }

    fn client_path(&self, name: &str) -> String {
        format!("{}/{name}", self.pki.clients_path)
    }

    /// Converges on the declared clients: every stored entry is read and checked before the
    /// first write; clients removed from the file are revoked.
    pub async fn converge(&self, declared: &[DeclaredClient]) -> Result<RunSummary> {
        // Everything stored is read and checked before the first write.
        self.precheck_bundle().await?;
        let mut names: BTreeSet<String> = self
            .store
            .list(&self.pki.clients_path)
            .await?
            .into_iter()
            .collect();
        names.extend(declared.iter().map(|d| d.name.clone()));
        let stored = self.read_clients(&names).await?;
        let (ca, ca_created) = self.ensure_ca().await?;
        self.check_bundle_against(&ca.certificate).await?;

        let mut statuses = Vec::with_capacity(names.len());
        for name in &names {
            let want = declared.iter().find(|d| &d.name == name);
            let status = match (want, &stored[name]) {
                (Some(want), state) => self.converge_client(&ca, want, state, Source::File).await?,
                (None, Stored::Present(entry))
                    if entry.source == Source::File && entry.revoked.is_none() =>
                {
                    self.revoke(name, entry, RevocationReason::CessationOfOperation)
                        .await?
                }
                (None, state) => state.unchanged_status(name),
            };
            statuses.extend(status);
        }
        self.finish(ca, ca_created, statuses).await
    }

    /// The one-off command: issues (or re-issues, when the email or profile differ) one client.
    pub async fn issue_one(&self, want: &DeclaredClient) -> Result<RunSummary> {
        self.precheck_bundle().await?;
        let names: BTreeSet<String> = self
            .store
            .list(&self.pki.clients_path)
            .await?
            .into_iter()
            .collect();
        let mut stored = self.read_clients(&names).await?;
        let state = match stored.remove(&want.name) {
            Some(state) => state,
            None => self.read_client(&want.name).await?,
        };
        let (ca, ca_created) = self.ensure_ca().await?;
        self.check_bundle_against(&ca.certificate).await?;
        let status = self
            .converge_client(&ca, want, &state, Source::Manual)
            .await?;
        let mut statuses: Vec<ClientStatus> = stored
            .iter()
            .filter_map(|(name, s)| s.unchanged_status(name))
            .collect();
        statuses.extend(status);
        statuses.sort_by(|a, b| a.name.cmp(&b.name));
        self.finish(ca, ca_created, statuses).await
    }

    /// Reads every client entry without writing (the report).
    pub async fn statuses(&self) -> Result<(Option<Certificate>, Vec<ClientStatus>, Option<Crl>)> {
        let issuer = self.store.read(&self.pki.issuer_path).await?;
        let ca = match issuer.as_ref() {
            Some(e) if writable_absent(Some(e)).is_none() => e
                .data
                .get(ISSUER_CERT)
                .map(|pem| Certificate::from_pem(pem, ISSUER_CERT))
                .transpose()
                .map_err(|e| self.invalid(&self.pki.issuer_path, e.to_string()))?,
            _ => None,
        };
        let names: BTreeSet<String> = self
            .store
            .list(&self.pki.clients_path)
            .await?
            .into_iter()
            .collect();
        let stored = self.read_clients(&names).await?;
        let statuses = stored
            .iter()
            .filter_map(|(name, s)| s.unchanged_status(name))
            .collect();
        let crl = match (&ca, self.store.read(&self.pki.ca_path).await?) {
            (Some(ca), Some(bundle)) => {
                own_crl(bundle.data.get(BUNDLE_CRL).unwrap_or_default(), ca)
            }
            _ => None,
        };
        Ok((ca, statuses, crl))
    }

    fn invalid(&self, path: &str, problem: String) -> anyhow::Error {
        InvalidState {
            path: self.label(path),
            problem,
        }
        .into()
    }

    async fn ensure_ca(&self) -> Result<(CaCredential, bool)> {
        let path = &self.pki.issuer_path;
        let entry = self.store.read(path).await?;
        if let Some(cas) = writable_absent(entry.as_ref()) {
            let ca = generate_root_ca(
                &CaParams {
                    subject: SubjectName::new(&self.pki.ca_organization, &self.pki.ca_common_name),
                    key_algorithm: self.pki.ca_key_algorithm,
                    validity: self.pki.ca_validity,
                },
                self.now,
            )
            .context("failed to generate the client CA")?;
            let mut data = SecretData::new();
            data.insert(ISSUER_CERT, ca.certificate.to_pem());
            data.insert(ISSUER_KEY, ca.key_pem().expose());
            data.insert("created", rfc3339(self.now));
            data.insert(
                "fingerprint",
                ca.certificate.info().fingerprint_sha256.clone(),
            );
            match self.store.write(path, &data, cas).await? {
                WriteOutcome::Written { version } => {
                    info!(path = %self.label(path), version, fingerprint = %ca.certificate.info().fingerprint_sha256,
                          replaced_placeholder = cas > 0, "created the client CA");
                    return Ok((ca, true));
                }
                WriteOutcome::Conflict => {
                    info!(path = %self.label(path), "another run created the client CA first; adopting it");
                }
            }
        }
        let entry = self.store.read(path).await?;
        let entry = entry.ok_or_else(|| {
            self.invalid(path, "the entry vanished after a conflicting write".into())
        })?;
        let field = |name: &str| {
            entry
                .data
                .get(name)
                .ok_or_else(|| self.invalid(path, format!("missing field '{name}'")))
        };
        let ca = CaCredential::from_pem(
            field(ISSUER_CERT)?,
            ISSUER_CERT,
            field(ISSUER_KEY)?,
            ISSUER_KEY,
            self.now,
        )
        .map_err(|e| self.invalid(path, e.to_string()))?;
        Ok((ca, false))
    }

    async fn read_client(&self, name: &str) -> Result<Stored> {
        let path = self.client_path(name);
        let entry = self.store.read(&path).await?;
        if let Some(cas) = writable_absent(entry.as_ref()) {
            return Ok(Stored::Absent { cas });
        }
        let entry = entry.ok_or_else(|| self.invalid(&path, "unreadable".into()))?;
        parse_client(entry)
            .map(|e| Stored::Present(Box::new(e)))
            .map_err(|problem| self.invalid(&path, problem))
    }

    /// Reads every entry; any invalid one stops the run before a write, naming all of them.
    async fn read_clients(&self, names: &BTreeSet<String>) -> Result<BTreeMap<String, Stored>> {
        let mut stored = BTreeMap::new();
        let mut problems = Vec::new();
        for name in names {
            match self.read_client(name).await {
                Ok(state) => {
                    stored.insert(name.clone(), state);
                }
                Err(e) if e.downcast_ref::<InvalidState>().is_some() => {
                    problems.push(e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
        if problems.is_empty() {
            Ok(stored)
        } else {
            Err(self.invalid(&self.pki.clients_path, problems.join("; ")))
        }
    }

    async fn converge_client(
        &self,
        ca: &CaCredential,
        want: &DeclaredClient,
        state: &Stored,
        source: Source,
    ) -> Result<Option<ClientStatus>> {
        let name = &want.name;
        match state {
            Stored::Absent { .. } if want.revoked => Ok(None),
            Stored::Absent { cas } => self
                .issue(ca, want, *cas, source, ClientAction::Issued, Vec::new())
                .await
                .map(Some),
            Stored::Present(entry) if want.revoked => {
                if entry.revoked.is_some() {
                    Ok(Some(entry.status(name, ClientAction::StillRevoked)))
                } else {
                    self.revoke(name, entry, want.revocation_reason).await
                }
            }
            Stored::Present(entry) => {
                let info = entry.certificate.info();
                let reissue = entry.revoked.is_some()
                    || entry.email != want.email
                    || entry.profile != want.profile
                    || entry.certificate.verify_signed_by(&ca.certificate).is_err()
                    || renewal_due(self.now, info.not_before, info.not_after, &self.pki.renewal);
                if reissue {
                    // A revoked certificate stays revoked after its user gets a new one.
                    let carry = entry.all_revocations();
                    self.issue(
                        ca,
                        want,
                        entry.version,
                        source,
                        ClientAction::Renewed,
                        carry,
                    )
                    .await
                    .map(Some)
                } else {
                    Ok(Some(entry.status(name, ClientAction::Kept)))
                }
            }
        }
    }

    async fn issue(
        &self,
        ca: &CaCredential,
        want: &DeclaredClient,
        cas: u64,
        source: Source,
        action: ClientAction,
        carry: Vec<RevokedCertificate>,
    ) -> Result<ClientStatus> {
        let validity_days = want.validity_days.unwrap_or(self.pki.client_validity_days);
        let credential = issue_client_certificate(
            ca,
            &ClientCertificateParams {
                name: want.name.clone(),
                email: want.email.clone(),
                key_algorithm: self.pki.client_key_algorithm,
                validity: pki_core::time::Duration::days(i64::from(validity_days)),
            },
            self.now,
        )
        .with_context(|| format!("failed to issue the certificate of '{}'", want.name))?;
        let password = Pkcs12Password::generate()?;
        let p12 = build_pkcs12(&Pkcs12Request {
            credential: &credential,
            ca_chain: &[&ca.certificate],
            friendly_name: &want.name,
            password: &password,
            profile: want.profile,
            iterations: self.pki.pkcs12_iterations,
        })?;
        let info = credential.certificate.info();
        let mut data = SecretData::new();
        data.insert("p12", BASE64.encode(&*p12));
        data.insert("password", password.expose());
        data.insert("cert", credential.certificate.to_pem());
        data.insert("serial", info.serial_hex.clone());
        data.insert("fingerprint", info.fingerprint_sha256.clone());
        data.insert("profile", want.profile.name());
        data.insert("email", want.email.clone());
        data.insert("created", rfc3339(self.now));
        data.insert("not_after", rfc3339(info.not_after));
        data.insert("status", "active");
        data.insert("source", source.name());
        if !carry.is_empty() {
            data.insert("revoked_history", format_history(&carry));
        }
        let path = self.client_path(&want.name);
        match self.store.write(&path, &data, cas).await? {
            WriteOutcome::Written { version } => {
                info!(client = %want.name, path = %self.label(&path), version, serial = %info.serial_hex,
                      not_after = %rfc3339(info.not_after), profile = %want.profile,
                      action = if action == ClientAction::Issued { "issued" } else { "renewed" },
                      "wrote the client certificate");
                Ok(ClientStatus {
                    name: want.name.clone(),
                    email: want.email.clone(),
                    serial: info.serial_hex.clone(),
                    not_after: info.not_after,
                    revoked: false,
                    revocations: carry,
                    profile: want.profile,
                    action,
                })
            }
            WriteOutcome::Conflict => self.adopt(&want.name).await,
        }
    }

    async fn revoke(
        &self,
        name: &str,
        entry: &ClientEntry,
        reason: RevocationReason,
    ) -> Result<Option<ClientStatus>> {
        let mut data = entry.data.clone();
        data.insert("status", "revoked");
        data.insert("revoked_at", rfc3339(self.now));
        data.insert("revocation_reason", reason.name());
        let path = self.client_path(name);
        match self.store.write(&path, &data, entry.version).await? {
            WriteOutcome::Written { version } => {
                info!(client = name, path = %self.label(&path), version, serial = %entry.certificate.info().serial_hex,
                      reason = %reason, "revoked the client certificate");
                let mut status = entry.status(name, ClientAction::Revoked);
                status.revoked = true;
                status.revocations.push(RevokedCertificate {
                    serial: entry.certificate.raw_serial(),
                    revoked_at: self.now,
                    reason,
                });
                Ok(Some(status))
            }
            WriteOutcome::Conflict => self.adopt(name).await.map(Some),
        }
    }

    async fn adopt(&self, name: &str) -> Result<ClientStatus> {
        info!(
            client = name,
            "another run wrote this client first; adopting its entry"
        );
        match self.read_client(name).await? {
            Stored::Present(entry) => Ok(entry.status(name, ClientAction::Adopted)),
            Stored::Absent { .. } => Err(self.invalid(
                &self.client_path(name),
                "a conditional write conflicted, yet the entry reads as absent".into(),
            )),
        }
    }

    /// Writes the public bundle when its content changes: the CA certificates HAProxy trusts
    /// and a CRL for each, ours re-signed when the revoked set changes or nextUpdate nears.
    ///
    /// The published revocation set only grows: each attempt starts from a fresh read of the
    /// bundle, keeps every serial its CRL already lists and adds this run's, and writes with
    /// check-and-set against the version it read. A run that loses the race to another run
    /// therefore rebuilds on top of the winner's revocations instead of replacing them.
    async fn finish(
        &self,
        ca: CaCredential,
        ca_created: bool,
        mut clients: Vec<ClientStatus>,
    ) -> Result<RunSummary> {
        clients.sort_by(|a, b| a.name.cmp(&b.name));
        let known: Vec<RevokedCertificate> = clients
            .iter()
            .flat_map(|c| c.revocations.iter().cloned())
            .collect();
        let path = &self.pki.ca_path;
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
            let wanted: BTreeSet<String> =
                revoked.iter().map(RevokedCertificate::serial_hex).collect();
            let fresh = previous.as_ref().filter(|crl| {
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
            let (crl_pem, crl_signed) = if let Some(crl) = fresh {
                (crl.to_pem(), false)
            } else {
                let number = previous
                    .as_ref()
                    .and_then(|c| c.info().crl_number)
                    .unwrap_or(0)
                    + 1;
                let params = CrlParams {
                    this_update: self.now,
                    next_update: self.now + self.pki.crl_validity,
                    crl_number: number,
                    revoked: revoked.clone(),
                };
                (sign_crl(&ca, &params)?, true)
            };
            let crl = Crl::from_pem(&crl_pem, BUNDLE_CRL)?;
            let mut ca_bundle = ca.certificate.to_pem();
            let mut crl_bundle = crl_pem.clone();
            for legacy in &self.pki.legacy {
                ca_bundle.push_str(&legacy.certificate.to_pem());
                crl_bundle.push_str(legacy.crl_pem.trim_end());
                crl_bundle.push('\n');
            }
            let next_update = crl.info().next_update.unwrap_or(self.now);
            let summary = |bundle_written| RunSummary {
                ca_created,
                ca_not_after: ca.certificate.info().not_after,
                crl_next_update: next_update,
                crl_signed,
                bundle_written,
                clients: clients.clone(),
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
        let own = crls
            .into_iter()
            .find(|crl| crl.verify_signed_by(ca).is_ok());
        if own.is_none() && ours_trusted {
            return Err(self.invalid(
                &self.pki.ca_path,
                format!("'{BUNDLE_CA}' trusts the client CA but '{BUNDLE_CRL}' holds no CRL signed by it"),
            ));
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
        let path = &self.pki.ca_path;
        let foreign: Vec<&str> = entry
            .data
            .fields()
            .filter(|f| !BUNDLE_FIELDS.contains(f))
            .collect();
        if !foreign.is_empty() {
            return Err(self.invalid(
                path,
                format!(
                    "holds fields this job never writes ({}); expected only {}. Nothing was written",
                    foreign.join(", "),
                    BUNDLE_FIELDS.join(", ")
                ),
            ));
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
    async fn precheck_bundle(&self) -> Result<()> {
        let stored = self.store.read(&self.pki.ca_path).await?;
        self.check_bundle(stored.as_ref()).map(drop)
    }

    /// Checks the bundle against the client CA, before any client entry is written.
    async fn check_bundle_against(&self, ca: &Certificate) -> Result<()> {
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

#[derive(Debug)]
enum Stored {
    Absent { cas: u64 },
    Present(Box<ClientEntry>),
}

impl Stored {
    /// The status of an entry this run leaves as it is.
    fn unchanged_status(&self, name: &str) -> Option<ClientStatus> {
        match self {
            Self::Present(e) => {
                let action = if e.revoked.is_some() {
                    ClientAction::StillRevoked
                } else {
                    ClientAction::Kept
                };
                Some(e.status(name, action))
            }
            Self::Absent { .. } => None,
        }
    }
}

fn parse_client(entry: KvEntry) -> Result<ClientEntry, String> {
    let field = |name: &str| {
        entry.data.get(name).map(str::to_owned).ok_or_else(|| {
            let present: Vec<_> = entry.data.fields().collect();
            format!(
                "missing field '{name}' (fields present: {})",
                present.join(", ")
            )
        })
    };
    let certificate = Certificate::from_pem(&field("cert")?, "cert").map_err(|e| e.to_string())?;
    let profile = field("profile")?
        .parse()
        .map_err(|e: pki_core::PkiError| e.to_string())?;
    let email = field("email")?;
    let source = match entry.data.get("source") {
        Some("manual") => Source::Manual,
        _ => Source::File,
    };
    let revoked = match entry.data.get("status") {
        None | Some("active") => None,
        Some("revoked") => {
            let at = OffsetDateTime::parse(&field("revoked_at")?, &Rfc3339)
                .map_err(|e| format!("field 'revoked_at' is not an RFC 3339 time: {e}"))?;
            let reason = entry
                .data
                .get("revocation_reason")
                .map(str::parse::<RevocationReason>)
                .transpose()
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            Some((at, reason))
        }
        Some(other) => {
            return Err(format!(
                "field 'status' is '{other}', not active or revoked"
            ));
        }
    };
    let history = parse_history(entry.data.get("revoked_history").unwrap_or_default())?;
    Ok(ClientEntry {
        version: entry.version,
        data: entry.data,
        certificate,
        email,
        profile,
        source,
        revoked,
        history,
    })
}

/// `revoked_history`: one line per earlier certificate, `<serial hex> <revoked at> <reason>`.
fn format_history(revocations: &[RevokedCertificate]) -> String {
    let mut out = String::new();
    for r in revocations {
        let _ = writeln!(
            out,
            "{} {} {}",
            r.serial_hex(),
            rfc3339(r.revoked_at),
            r.reason
        );
    }
    out
}

fn parse_history(text: &str) -> Result<Vec<RevokedCertificate>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let bad = || format!("field 'revoked_history' has a malformed line '{line}'");
            let mut parts = line.split_whitespace();
            let (Some(serial), Some(at), Some(reason)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad());
            };
            let serial = (0..serial.len())
                .step_by(2)
                .map(|i| {
                    serial
                        .get(i..i + 2)
                        .and_then(|b| u8::from_str_radix(b, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()
                .filter(|s| !s.is_empty())
                .ok_or_else(bad)?;
            Ok(RevokedCertificate {
                serial,
                revoked_at: OffsetDateTime::parse(at, &Rfc3339).map_err(|_| bad())?,
                reason: reason.parse().map_err(|_| bad())?,
            })
        })
        .collect()
}

/// The CRL in `pem_bundle` that `ca` signed, if any.
fn own_crl(pem_bundle: &str, ca: &Certificate) -> Option<Crl> {
    Crl::bundle_from_pem(pem_bundle, BUNDLE_CRL)
        .ok()?
        .into_iter()
        .find(|crl| crl.verify_signed_by(ca).is_ok())
}

/// RFC 3339, as the seed's expiry check reads `created`.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests;
