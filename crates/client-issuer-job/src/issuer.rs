//! The client issuer's decisions: the client CA (created once), one entry per user (issued,
//! renewed, revoked, never deleted), and the public bundle HAProxy trusts (CA certificates
//! and one CRL per CA). Every write is conditional on the version read; a lost race adopts
//! the winner's entry; a run with nothing to do writes nothing.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use job_support::{InvalidState, KvEntry, SecretData, SecretStore, WriteOutcome};
use pki_core::time::OffsetDateTime;
use pki_core::time::format_description::well_known::Rfc3339;
use pki_core::{
    CaCredential, CaParams, Certificate, ClientCertificateParams, Crl, Pkcs12Password,
    Pkcs12Profile, Pkcs12Request, RevocationReason, RevokedCertificate, SubjectName, build_pkcs12,
    generate_root_ca, issue_client_certificate, renewal_due,
};
use tracing::{info, warn};

use self::bundle::{BUNDLE_CRL, own_crl};
use self::entry::{ClientEntry, PreviousEntry, Stored, format_history};

use crate::clients_file::DeclaredClient;
use crate::config::PkiSettings;

/// Fields of the issuer entry.
const ISSUER_CERT: &str = "ca.crt";
const ISSUER_KEY: &str = "ca.key";

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
    /// An entry of the previous scripts, declared in the file: issued anew from this CA (the
    /// old certificate keeps working while its CA stays in the trust bundle).
    Migrated,
    /// An entry of the previous scripts, not declared: left as it is, listed.
    Previous,
    /// Its PKCS#12 cannot be used as stored; left as it is until the operator asks for a
    /// repair (`client-issuer-job repair <name>`).
    Unusable,
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
    /// PKCS#12 profile (`None` for an entry of the previous scripts).
    pub profile: Option<Pkcs12Profile>,
    /// What this run did.
    pub action: ClientAction,
}

/// A stored entry an operator must look at: the run left it as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryProblem {
    /// The entry's name under the clients prefix.
    pub name: String,
    /// What is wrong with it.
    pub problem: String,
}

/// What `report` shows: everything stored, read without writing.
#[derive(Debug)]
pub struct Inventory {
    /// The client CA, once created.
    pub ca: Option<Certificate>,
    /// Every readable client entry, sorted by name.
    pub clients: Vec<ClientStatus>,
    /// Entries that need an operator.
    pub attention: Vec<EntryProblem>,
    /// The CRL of the client CA, once published.
    pub crl: Option<Crl>,
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
    /// Entries the run left alone because an operator must look at them, sorted by name.
    pub attention: Vec<EntryProblem>,
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
                        ClientAction::Issued
                            | ClientAction::Renewed
                            | ClientAction::Revoked
                            | ClientAction::Migrated
                    )
                })
                .count()
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
    /// Clients whose unusable entries the operator asked to re-issue.
    repair: BTreeSet<String>,
    /// The clients file says removing many clients at once is meant (`allow_revoke_all`).
    file_allows_mass_revocation: bool,
    /// The version of the bundle path holding the previous scripts' CA that this run's
    /// bundle write replaces, once its key is copied to a path of its own.
    replace_source: Cell<Option<u64>>,
}

impl<'a, S: SecretStore> Issuer<'a, S> {
    /// An issuer acting at `now`.
    pub fn new(store: &'a S, pki: &'a PkiSettings, now: OffsetDateTime) -> Self {
        Self {
            store,
            pki,
            now,
            repair: BTreeSet::new(),
            file_allows_mass_revocation: false,
            replace_source: Cell::new(None),
        }
    }

    /// The clients file's `allow_revoke_all`.
    #[must_use]
    pub fn allowing_mass_revocation(mut self, allowed: bool) -> Self {
        self.file_allows_mass_revocation = allowed;
        self
    }

    /// Re-issue these clients' entries if their PKCS#12 cannot be used (`repair`).
    #[must_use]
    pub fn repairing(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.repair.extend(names);
        self
    }

    fn label(&self, path: &str) -> String {
        format!("{}/{path}", self.pki.mount)
    }

    fn client_path(&self, name: &str) -> String {
        format!("{}/{name}", self.pki.clients_path)
    }

    /// Converges on the declared clients: every stored entry is read and checked before the
    /// first write; clients removed from the file are revoked; entries the job cannot use
    /// are left alone and named in the summary.
    pub async fn converge(&self, declared: &[DeclaredClient]) -> Result<RunSummary> {
        // The previous scripts' CA first: every later check sees the bundle path as it will be.
        let adoption = self.adopt_previous_ca().await?;
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
        self.check_repairs(&stored)?;
        self.check_revocations(declared, &stored)?;
        let (ca, ca_created) = self.ensure_ca().await?;
        self.check_bundle_against(&ca.certificate).await?;

        let declared: BTreeMap<&str, &DeclaredClient> =
            declared.iter().map(|d| (d.name.as_str(), d)).collect();
        let mut statuses = Vec::with_capacity(names.len());
        let mut attention = Vec::new();
        for name in &names {
            let state = &stored[name];
            let outcome = match (declared.get(name.as_str()), state) {
                (Some(want), state) => self.converge_client(&ca, want, state, Source::File).await?,
                (None, Stored::Present(entry))
                    if entry.source == Source::File && entry.revoked.is_none() =>
                {
                    Outcome::Done(
                        self.revoke(name, entry, RevocationReason::CessationOfOperation)
                            .await?,
                    )
                }
                (None, state) => Outcome::unchanged(name, state),
            };
            match outcome {
                Outcome::Done(status) => statuses.push(status),
                Outcome::Skipped => {}
                Outcome::Attention(status, problem) => {
                    statuses.extend(status);
                    attention.push(self.attention(name, problem));
                }
            }
        }
        let summary = self.finish(ca, ca_created, statuses, attention).await?;
        self.finish_adoption(adoption).await?;
        Ok(summary)
    }

    /// After the bundle replaced the previous scripts' CA entry: steps 3 and 4 of the move.
    async fn finish_adoption(&self, adoption: previous_ca::Adoption) -> Result<()> {
        match adoption.pending {
            Some(pending) => self.complete_move(&pending).await,
            None => Ok(()),
        }
    }

    /// The one-off command: issues (or re-issues, when the email or profile differ) one client.
    pub async fn issue_one(&self, want: &DeclaredClient) -> Result<RunSummary> {
        let adoption = self.adopt_previous_ca().await?;
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
        let mut statuses = Vec::new();
        let mut attention = Vec::new();
        for (name, state) in &stored {
            match Outcome::unchanged(name, state) {
                Outcome::Done(status) => statuses.push(status),
                Outcome::Skipped => {}
                Outcome::Attention(status, problem) => {
                    statuses.extend(status);
                    attention.push(self.attention(name, problem));
                }
            }
        }
        match self
            .converge_client(&ca, want, &state, Source::Manual)
            .await?
        {
            Outcome::Done(status) => statuses.push(status),
            Outcome::Skipped => {}
            Outcome::Attention(status, problem) => {
                statuses.extend(status);
                attention.push(self.attention(&want.name, problem));
            }
        }
        let summary = self.finish(ca, ca_created, statuses, attention).await?;
        self.finish_adoption(adoption).await?;
        Ok(summary)
    }

    /// Reads every client entry without writing (the report).
    pub async fn inventory(&self) -> Result<Inventory> {
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
        let mut clients = Vec::new();
        let mut attention = Vec::new();
        for (name, state) in &stored {
            match Outcome::unchanged(name, state) {
                Outcome::Done(status) => clients.push(status),
                Outcome::Skipped => {}
                Outcome::Attention(status, problem) => {
                    clients.extend(status);
                    attention.push(EntryProblem {
                        name: name.clone(),
                        problem,
                    });
                }
            }
        }
        let crl = match (&ca, self.store.read(&self.pki.ca_path).await?) {
            (Some(ca), Some(bundle)) => {
                own_crl(bundle.data.get(BUNDLE_CRL).unwrap_or_default(), ca)
            }
            _ => None,
        };
        Ok(Inventory {
            ca,
            clients,
            attention,
            crl,
        })
    }

    /// Logs an entry left alone, and records it for the summary.
    fn attention(&self, name: &str, problem: String) -> EntryProblem {
        warn!(client = name, path = %self.label(&self.client_path(name)), problem = %problem,
              "left this client entry as it is; it needs an operator");
        EntryProblem {
            name: name.to_owned(),
            problem,
        }
    }

    /// Refuses a run that would revoke, by their absence from the file, more active clients
    /// than the guard allows: a ConfigMap emptied by a bad merge must not revoke everyone.
    fn check_revocations(
        &self,
        declared: &[DeclaredClient],
        stored: &BTreeMap<String, Stored>,
    ) -> Result<()> {
        let guard = self.pki.revoke_guard;
        let wanted: BTreeSet<&str> = declared.iter().map(|d| d.name.as_str()).collect();
        let active: Vec<&str> = stored
            .iter()
            .filter_map(|(name, state)| match state {
                Stored::Present(e) if e.revoked.is_none() && e.source == Source::File => {
                    Some(name.as_str())
                }
                _ => None,
            })
            .collect();
        let removed: Vec<&str> = active
            .iter()
            .copied()
            .filter(|name| !wanted.contains(name))
            .collect();
        let count = removed.len() as u64;
        let total = active.len() as u64;
        let over_share = count * 100 > guard.max_percent * total;
        let over_count = count > guard.max_count;
        if count == 0
            || !(over_share || over_count)
            || guard.allowed
            || self.file_allows_mass_revocation
        {
            return Ok(());
        }
        let shown: Vec<&str> = removed.iter().copied().take(10).collect();
        Err(job_support::ConfigError::new(
            "CLIENTS_FILE",
            format!(
                "this run would revoke {count} of {total} active clients ({}{}), more than REVOKE_MAX_PERCENT={}% or REVOKE_MAX_COUNT={} allow; nothing was written. If the file is right, add 'allow_revoke_all: true' to it, or run once with ALLOW_MASS_REVOCATION=true",
                shown.join(", "),
                if removed.len() > shown.len() { ", ..." } else { "" },
                guard.max_percent,
                guard.max_count
            ),
        )
        .into())
    }

    /// A repair names only declared, unusable entries: anything else is a mistake to report
    /// before the run writes.
    fn check_repairs(&self, stored: &BTreeMap<String, Stored>) -> Result<()> {
        let wrong: Vec<String> = self
            .repair
            .iter()
            .filter(|name| !matches!(stored.get(*name), Some(Stored::Present(e)) if e.unusable.is_some()))
            .cloned()
            .collect();
        if wrong.is_empty() {
            return Ok(());
        }
        Err(job_support::ConfigError::new(
            "arguments",
            format!(
                "repair names entries whose PKCS#12 is usable, or that do not exist or are not this job's: {}; nothing was written",
                wrong.join(", ")
            ),
        )
        .into())
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
        job_support::config::report_kept_key_algorithm(
            "CLIENT_CA_KEY_ALGORITHM",
            self.pki.ca_key_algorithm,
            &ca.key,
            &self.label(path),
        );
        Ok((ca, false))
    }

    async fn read_client(&self, name: &str) -> Result<Stored> {
        Ok(Stored::classify(
            self.store.read(&self.client_path(name)).await?,
        ))
    }

    /// Reads every entry. An entry the job cannot use does not stop the run: it is
    /// classified, and the decisions leave it alone.
    async fn read_clients(&self, names: &BTreeSet<String>) -> Result<BTreeMap<String, Stored>> {
        let mut stored = BTreeMap::new();
        for name in names {
            stored.insert(name.clone(), self.read_client(name).await?);
        }
        Ok(stored)
    }

    async fn converge_client(
        &self,
        ca: &CaCredential,
        want: &DeclaredClient,
        state: &Stored,
        source: Source,
    ) -> Result<Outcome> {
        let name = &want.name;
        let entry = match state {
            Stored::Absent { .. } if want.revoked => return Ok(Outcome::Skipped),
            Stored::Absent { cas } => {
                return self
                    .issue(ca, want, *cas, source, ClientAction::Issued, Vec::new())
                    .await
                    .map(Outcome::Done);
            }
            Stored::Unknown { problem } => {
                return Ok(Outcome::Attention(None, problem.clone()));
            }
            Stored::Previous(previous) if want.revoked => {
                return Ok(Outcome::Attention(
                    Some(previous.status(name, ClientAction::Previous)),
                    "declared revoked, but its certificate is from the previous scripts' CA: revoke it in that CA's CRL (LEGACY_CRL_FILES)".into(),
                ));
            }
            Stored::Previous(previous) => return self.migrate(ca, want, previous).await,
            Stored::Present(entry) => entry,
        };
        if want.revoked {
            return Ok(Outcome::Done(if entry.revoked.is_some() {
                entry.status(name, ClientAction::StillRevoked)
            } else {
                self.revoke(name, entry, want.revocation_reason).await?
            }));
        }
        let info = entry.certificate.info();
        let reissue = entry.revoked.is_some()
            || entry.email != want.email
            || entry.profile != want.profile
            || entry.certificate.verify_signed_by(&ca.certificate).is_err()
            || renewal_due(self.now, info.not_before, info.not_after, &self.pki.renewal);
        let repair = entry.unusable.is_some() && self.repair.contains(name);
        if reissue || repair {
            // A revoked certificate stays revoked after its user gets a new one.
            let carry = entry.all_revocations();
            return self
                .issue(
                    ca,
                    want,
                    entry.version,
                    source,
                    ClientAction::Renewed,
                    carry,
                )
                .await
                .map(Outcome::Done);
        }
        Ok(match &entry.unusable {
            Some(problem) => Outcome::Attention(
                Some(entry.status(name, ClientAction::Unusable)),
                format!("{problem}; re-issue it with 'client-issuer-job repair {name}'"),
            ),
            None => Outcome::Done(entry.status(name, ClientAction::Kept)),
        })
    }

    /// A declared user of the previous scripts: issued anew from this CA, over their entry
    /// (the version read), keeping the old certificate in `previous_cert` for the record.
    async fn migrate(
        &self,
        ca: &CaCredential,
        want: &DeclaredClient,
        previous: &PreviousEntry,
    ) -> Result<Outcome> {
        info!(client = %want.name, serial = %previous.certificate.info().serial_hex,
              "migrating a user of the previous scripts to this CA");
        self.issue_with(
            ca,
            want,
            previous.version,
            Source::File,
            ClientAction::Migrated,
            Vec::new(),
            Some(&previous.certificate),
        )
        .await
        .map(Outcome::Done)
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
        self.issue_with(ca, want, cas, source, action, carry, None)
            .await
    }

    #[allow(clippy::too_many_arguments)] // One call site each for issue and migrate.
    async fn issue_with(
        &self,
        ca: &CaCredential,
        want: &DeclaredClient,
        cas: u64,
        source: Source,
        action: ClientAction,
        carry: Vec<RevokedCertificate>,
        previous: Option<&Certificate>,
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
        if let Some(previous) = previous {
            data.insert("previous_cert", previous.to_pem());
        }
        let path = self.client_path(&want.name);
        match self.store.write(&path, &data, cas).await? {
            WriteOutcome::Written { version } => {
                info!(client = %want.name, path = %self.label(&path), version, serial = %info.serial_hex,
                      not_after = %rfc3339(info.not_after), profile = %want.profile,
                      action = ?action,
                      "wrote the client certificate");
                Ok(ClientStatus {
                    name: want.name.clone(),
                    email: want.email.clone(),
                    serial: info.serial_hex.clone(),
                    not_after: info.not_after,
                    revoked: false,
                    revocations: carry,
                    profile: Some(want.profile),
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
    ) -> Result<ClientStatus> {
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
                Ok(status)
            }
            WriteOutcome::Conflict => self.adopt(name).await,
        }
    }

    async fn adopt(&self, name: &str) -> Result<ClientStatus> {
        info!(
            client = name,
            "another run wrote this client first; adopting its entry"
        );
        match self.read_client(name).await? {
            Stored::Present(entry) => Ok(entry.status(name, ClientAction::Adopted)),
            Stored::Previous(_) | Stored::Unknown { .. } | Stored::Absent { .. } => {
                Err(self.invalid(
                    &self.client_path(name),
                    "a conditional write conflicted, and what the other writer left is not a client entry of this job".into(),
                ))
            }
        }
    }
}

/// What the decisions did with one entry.
#[derive(Debug)]
enum Outcome {
    /// Converged (or left as it is, all well).
    Done(ClientStatus),
    /// Nothing stored and nothing wanted (a revoked client that was never issued).
    Skipped,
    /// Left alone: an operator must look at it. The status, where the entry has one.
    Attention(Option<ClientStatus>, String),
}

impl Outcome {
    /// The outcome for an entry this run does not change.
    fn unchanged(name: &str, state: &Stored) -> Self {
        let status = state.unchanged_status(name);
        match state.problem() {
            Some(problem) => Self::Attention(status, problem.to_owned()),
            None => status.map_or(Self::Skipped, Self::Done),
        }
    }
}

/// RFC 3339, as the seed's expiry check reads `created`.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

mod bundle;
mod entry;
mod previous_ca;
#[cfg(test)]
mod tests;
