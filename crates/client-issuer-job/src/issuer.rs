//! The client issuer's decisions: the client CA (created once), one entry per user (issued,
//! renewed, revoked, never deleted), and the public bundle HAProxy trusts (CA certificates
//! and one CRL per CA). Every write is conditional on the version read; a lost race adopts
//! the winner's entry; a run with nothing to do writes nothing.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{StreamExt as _, TryStreamExt as _};
use job_support::{
    EntryVersion, InvalidState, KvEntry, SecretData, SecretStore, StoreError, WriteOutcome,
};
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
use self::index::{Index, Record};

use crate::clients_file::DeclaredClient;
use crate::config::PkiSettings;

/// How many client entries a run works on at once: their certificates and PKCS#12 bundles are
/// built on the blocking thread pool (every core), and their KV writes are in flight together.
const IN_FLIGHT: usize = 16;

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

/// A stored entry that is absent or only the previous scripts' `placeholder=true`: the version a write
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
    /// `issue` names the other clients in its summary, as the index recorded them.
    summarise_others: bool,
    /// The client CA's certificate, once the run has it.
    ca_certificate: OnceCell<Certificate>,
    /// Summaries of the client entries this run wrote, adopted or read in full after the
    /// index named them, for the next index.
    fresh: RefCell<BTreeMap<String, Record>>,
}

/// The client entries as a run found them.
struct Snapshot {
    /// Every entry stored or declared, by name.
    stored: BTreeMap<String, Stored>,
    /// The index as read, when the store lists versions (`None`: it does not, and every entry
    /// was read).
    index: Option<IndexRead>,
}

/// The index entry as read.
struct IndexRead {
    /// The version a write must name.
    cas: u64,
    /// Its document, when it parsed and was built against the current client CA.
    loaded: Option<Index>,
    /// The versions of the client entries, as listed.
    versions: BTreeMap<String, EntryVersion>,
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
            summarise_others: false,
            ca_certificate: OnceCell::new(),
            fresh: RefCell::new(BTreeMap::new()),
        }
    }

    /// The clients file's `allow_revoke_all`.
    #[must_use]
    pub fn allowing_mass_revocation(mut self, allowed: bool) -> Self {
        self.file_allows_mass_revocation = allowed;
        self
    }

    /// Makes `issue` name the other clients in its summary, as the client index last
    /// recorded them (one more read, of the index): wanted where the summary becomes metrics
    /// that replace the last converge's, so that one user's issue does not drop the others'
    /// expiry series.
    #[must_use]
    pub fn summarising_others(mut self, wanted: bool) -> Self {
        self.summarise_others = wanted;
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

    /// The client index entry: beside the clients prefix, not under it, so that listing the
    /// clients never finds it and no user's own-entry policy reaches it.
    fn index_path(&self) -> String {
        format!("{}-index", self.pki.clients_path)
    }

    /// Converges on the declared clients: every stored entry is read and checked before the
    /// first write; clients removed from the file are revoked; entries the job cannot use
    /// are left alone and named in the summary.
    pub async fn converge(&self, declared: &[DeclaredClient]) -> Result<RunSummary> {
        // The previous scripts' CA first: every later check sees the bundle path as it will be.
        let adoption = self.adopt_previous_ca().await?;
        // Everything stored is read (or known from the index) and checked before the first
        // write.
        self.precheck_bundle().await?;
        let snapshot = self
            .snapshot(declared.iter().map(|d| d.name.as_str()))
            .await?;
        let stored = &snapshot.stored;
        self.check_repairs(stored)?;
        self.check_revocations(declared, stored)?;
        let (ca, ca_created) = self.ensure_ca().await?;
        let _ = self.ca_certificate.set(ca.certificate.clone());
        self.check_bundle_against(&ca.certificate).await?;

        let declared: BTreeMap<&str, &DeclaredClient> =
            declared.iter().map(|d| (d.name.as_str(), d)).collect();
        let ca = Arc::new(ca);
        let outcomes: Vec<(&String, Outcome)> = futures_util::stream::iter(stored.iter())
            .map(|(name, state)| {
                let want = declared.get(name.as_str()).copied();
                let ca = &ca;
                async move {
                    Ok::<_, anyhow::Error>((name, self.converge_name(ca, name, want, state).await?))
                }
            })
            .buffered(IN_FLIGHT)
            .try_collect()
            .await?;
        let mut statuses = Vec::with_capacity(outcomes.len());
        let mut attention = Vec::new();
        for (name, outcome) in outcomes {
            match outcome {
                Outcome::Done(status) => statuses.push(status),
                Outcome::Skipped => {}
                Outcome::Attention(status, problem) => {
                    statuses.extend(status);
                    attention.push(self.attention(name, problem));
                }
            }
        }
        let summary = self.finish(&ca, ca_created, statuses, attention).await?;
        self.finish_adoption(adoption).await?;
        self.save_index(snapshot, &ca.certificate).await;
        Ok(summary)
    }

    /// The decision on one client of a converge: declared (`want`) or only stored.
    async fn converge_name(
        &self,
        ca: &Arc<CaCredential>,
        name: &str,
        want: Option<&DeclaredClient>,
        state: &Stored,
    ) -> Result<Outcome> {
        let reread;
        let state = match state {
            Stored::Indexed(record) => {
                let needs_entry = match want {
                    Some(want) => record.needs_entry(
                        want,
                        self.repair.contains(name),
                        self.now,
                        &self.pki.renewal,
                    ),
                    None => {
                        (record.source() == Source::File && !record.is_revoked())
                            || record.unchanged_status(name).is_none()
                    }
                };
                if !needs_entry {
                    return Ok(match want {
                        Some(want) if want.revoked => record
                            .status(name, ClientAction::StillRevoked)
                            .map_or(Outcome::Skipped, Outcome::Done),
                        // As `converge_client` answers for the full entry.
                        Some(_) => match record.unusable() {
                            Some(problem) => Outcome::Attention(
                                record.status(name, ClientAction::Unusable),
                                format!(
                                    "{problem}; re-issue it with 'client-issuer-job repair {name}'"
                                ),
                            ),
                            None => record
                                .status(name, ClientAction::Kept)
                                .map_or(Outcome::Skipped, Outcome::Done),
                        },
                        None => Outcome::unchanged(name, state),
                    });
                }
                reread = self.read_client(name).await?;
                if let Stored::Present(entry) = &reread {
                    self.note(name, Record::of(entry, &ca.certificate));
                }
                &reread
            }
            state => state,
        };
        Ok(match (want, state) {
            (Some(want), state) => self.converge_client(ca, want, state, Source::File).await?,
            (None, Stored::Present(entry))
                if entry.source == Source::File && entry.revoked.is_none() =>
            {
                Outcome::Done(
                    self.revoke(name, entry, RevocationReason::CessationOfOperation)
                        .await?,
                )
            }
            (None, state) => Outcome::unchanged(name, state),
        })
    }

    /// Records the summary of an entry as this run left it, for the next index.
    fn note(&self, name: &str, record: Record) {
        self.fresh.borrow_mut().insert(name.to_owned(), record);
    }

    /// The client entries: from the index where the store confirms it is current, read in
    /// full where it is not, or where the store cannot list versions.
    async fn snapshot(&self, declared: impl Iterator<Item = &str>) -> Result<Snapshot> {
        let prefix = &self.pki.clients_path;
        let declared: BTreeSet<String> = declared.map(str::to_owned).collect();
        let Some(versions) = self.store.list_versions(prefix).await? else {
            let mut names: BTreeSet<String> = self.store.list(prefix).await?.into_iter().collect();
            names.extend(declared);
            return Ok(Snapshot {
                stored: self.read_clients(names.into_iter()).await?,
                index: None,
            });
        };
        let (cas, loaded) = self.read_index().await?;
        let records = loaded.as_ref().map(|index| &index.clients);
        let mut stored = BTreeMap::new();
        let mut to_read = Vec::new();
        let mut stale = Vec::new();
        let names: BTreeSet<&String> = versions.keys().chain(declared.iter()).collect();
        for name in names {
            let record = records.and_then(|r| r.get(name));
            match (versions.get(name), record) {
                (Some(current), Some(record)) if record.matches(current) => {
                    stored.insert(name.clone(), Stored::Indexed(Box::new(record.clone())));
                }
                // Not listed: nothing is stored under that name (a write names version 0,
                // and a concurrent creation shows as a conflict, adopted).
                (None, record) => {
                    if record.is_some() {
                        stale.push(name.clone());
                    }
                    stored.insert(name.clone(), Stored::Absent { cas: 0 });
                }
                (Some(_), record) => {
                    if record.is_some() {
                        stale.push(name.clone());
                    }
                    to_read.push(name.clone());
                }
            }
        }
        // Summaries of entries neither listed nor declared: deleted since, with nothing to do.
        if let Some(records) = records {
            stale.extend(
                records
                    .keys()
                    .filter(|name| !versions.contains_key(*name) && !declared.contains(*name))
                    .cloned(),
            );
        }
        if !stale.is_empty() {
            let shown: Vec<&str> = stale.iter().take(10).map(String::as_str).collect();
            info!(path = %self.label(&self.index_path()), entries = stale.len(), names = %shown.join(", "),
                  "client entries changed since the index was written (by hand, by the issue command or by another run); reading them in full");
        }
        stored.extend(self.read_clients(to_read.into_iter()).await?);
        Ok(Snapshot {
            stored,
            index: Some(IndexRead {
                cas,
                loaded,
                versions,
            }),
        })
    }

    /// The index entry: the version a write must name, and its document when it can be used.
    /// An index that cannot be used is logged and left to be rebuilt; it never fails a run.
    async fn read_index(&self) -> Result<(u64, Option<Index>)> {
        let path = self.index_path();
        let label = self.label(&path);
        let entry = match self.store.read(&path).await {
            Ok(Some(entry)) => entry,
            Ok(None) => {
                info!(path = %label, "no client index yet; reading every client entry to build it");
                return Ok((0, None));
            }
            Err(StoreError::Deleted {
                version, problem, ..
            }) => {
                warn!(path = %label, problem = %problem, "the client index is deleted; reading every client entry to rebuild it");
                return Ok((version, None));
            }
            // A policy written before the index existed: the run reads every entry, as it
            // did then.
            Err(e @ StoreError::Denied { login: false, .. }) => {
                warn!(path = %label, error = %e, "cannot read the client index; reading every client entry (grant this path to the job's policy)");
                return Ok((0, None));
            }
            Err(e) => return Err(e.into()),
        };
        let index = match Index::parse(&entry.data) {
            Ok(index) => index,
            Err(problem) => {
                warn!(path = %label, version = entry.version, problem = %problem,
                      "the client index is corrupt; reading every client entry to rebuild it");
                return Ok((entry.version, None));
            }
        };
        let ca = self.current_ca_fingerprint().await?;
        if ca.as_deref() != Some(index.ca.as_str()) {
            warn!(path = %label, version = entry.version, index_ca = %index.ca, ca = ca.as_deref().unwrap_or("none"),
                  "the client index was built against another client CA; reading every client entry to rebuild it");
            return Ok((entry.version, None));
        }
        Ok((entry.version, Some(index)))
    }

    /// The fingerprint of the client CA stored at the issuer path, if one is there.
    async fn current_ca_fingerprint(&self) -> Result<Option<String>> {
        let entry = self.store.read(&self.pki.issuer_path).await?;
        Ok(entry
            .as_ref()
            .filter(|e| writable_absent(Some(e)).is_none())
            .and_then(|e| e.data.get(ISSUER_CERT))
            .and_then(|pem| Certificate::from_pem(pem, ISSUER_CERT).ok())
            .map(|cert| cert.info().fingerprint_sha256.clone()))
    }

    /// Writes the index of what this run leaves stored, when it differs from the one read.
    /// A failure is logged, not returned: the run's work is done, and the next run reads
    /// the entries the index cannot vouch for.
    async fn save_index(&self, snapshot: Snapshot, ca: &Certificate) {
        let Some(read) = snapshot.index else {
            return;
        };
        let mut records: BTreeMap<String, Record> = BTreeMap::new();
        for (name, state) in snapshot.stored {
            match state {
                Stored::Present(entry) => {
                    records.insert(name, Record::of(&entry, ca));
                }
                Stored::Indexed(record) => {
                    records.insert(name, *record);
                }
                Stored::Absent { .. } | Stored::Previous(_) | Stored::Unknown { .. } => {}
            }
        }
        let fresh = std::mem::take(&mut *self.fresh.borrow_mut());
        let wrote = !fresh.is_empty();
        records.extend(fresh);
        let path = self.index_path();
        let label = self.label(&path);
        // Entries written by this run: their creation time is known only from a new listing.
        let versions = if wrote {
            match self.store.list_versions(&self.pki.clients_path).await {
                Ok(Some(versions)) => versions,
                Ok(None) => return,
                Err(e) => {
                    warn!(path = %label, error = %e, "cannot list the client entries to update the index; the next run reads them in full");
                    return;
                }
            }
        } else {
            read.versions
        };
        records.retain(|name, record| {
            versions.get(name).is_some_and(|current| {
                if record.created.is_empty() && current.version == record.version {
                    record.created.clone_from(&current.created);
                }
                record.matches(current)
            })
        });
        let mut index = Index::new(&ca.info().fingerprint_sha256);
        index.clients = records;
        if read.loaded.as_ref() == Some(&index) {
            return;
        }
        match self.store.write(&path, &index.to_data(), read.cas).await {
            Ok(WriteOutcome::Written { version }) => {
                info!(path = %label, version, clients = index.clients.len(), "wrote the client index");
            }
            Ok(WriteOutcome::Conflict) => {
                info!(path = %label, "another run wrote the client index first; keeping it (the next run checks it against the entries)");
            }
            Err(e) => {
                warn!(path = %label, error = %e, "cannot write the client index; the next run reads the client entries in full");
            }
        }
    }

    /// After the bundle replaced the previous scripts' CA entry: steps 3 and 4 of the move.
    async fn finish_adoption(&self, adoption: previous_ca::Adoption) -> Result<()> {
        match adoption.pending {
            Some(pending) => self.complete_move(&pending).await,
            None => Ok(()),
        }
    }

    /// The one-off command: issues (or re-issues, when the email or profile differ) one client.
    /// It reads the CA, the bundle and that client's entry only; with
    /// [`Issuer::summarising_others`], the other clients appear in the summary as the client
    /// index last recorded them (the next converge checks them).
    pub async fn issue_one(&self, want: &DeclaredClient) -> Result<RunSummary> {
        let adoption = self.adopt_previous_ca().await?;
        self.precheck_bundle().await?;
        let state = self.read_client(&want.name).await?;
        let (ca, ca_created) = self.ensure_ca().await?;
        self.check_bundle_against(&ca.certificate).await?;
        let mut statuses = Vec::new();
        let mut attention = Vec::new();
        let recorded = if self.summarise_others {
            match self.read_index().await {
                Ok((_, Some(index))) => index.clients,
                Ok((_, None)) => BTreeMap::new(),
                Err(e) => {
                    warn!(path = %self.label(&self.index_path()), error = %format!("{e:#}"),
                      "cannot read the client index; the summary names this client only");
                    BTreeMap::new()
                }
            }
        } else {
            BTreeMap::new()
        };
        let stored: BTreeMap<String, Stored> = recorded
            .into_iter()
            .filter(|(name, _)| *name != want.name)
            .map(|(name, record)| (name, Stored::Indexed(Box::new(record))))
            .collect();
        let ca = Arc::new(ca);
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
        let summary = self.finish(&ca, ca_created, statuses, attention).await?;
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
        let stored = self.read_clients(names.into_iter()).await?;
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
                Stored::Indexed(r) if !r.is_revoked() && r.source() == Source::File => {
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
            .filter(|name| match stored.get(*name) {
                Some(Stored::Present(e)) => e.unusable.is_none(),
                Some(Stored::Indexed(r)) => r.unusable().is_none(),
                _ => true,
            })
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

    /// Reads these entries, several at once. An entry the job cannot use does not stop the
    /// run: it is classified, and the decisions leave it alone.
    async fn read_clients(
        &self,
        names: impl Iterator<Item = String>,
    ) -> Result<BTreeMap<String, Stored>> {
        futures_util::stream::iter(names)
            .map(|name| async move {
                let state = self.read_client(&name).await?;
                Ok::<_, anyhow::Error>((name, state))
            })
            .buffered(IN_FLIGHT)
            .try_collect()
            .await
    }

    async fn converge_client(
        &self,
        ca: &Arc<CaCredential>,
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
            Stored::Indexed(_) => {
                return Err(self.invalid(
                    &self.client_path(name),
                    "decided on from the index without being read".into(),
                ));
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
        ca: &Arc<CaCredential>,
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
        ca: &Arc<CaCredential>,
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
        ca: &Arc<CaCredential>,
        want: &DeclaredClient,
        cas: u64,
        source: Source,
        action: ClientAction,
        carry: Vec<RevokedCertificate>,
        previous: Option<&Certificate>,
    ) -> Result<ClientStatus> {
        let validity_days = want.validity_days.unwrap_or(self.pki.client_validity_days);
        let params = ClientCertificateParams {
            name: want.name.clone(),
            email: want.email.clone(),
            key_algorithm: self.pki.client_key_algorithm,
            validity: pki_core::time::Duration::days(i64::from(validity_days)),
        };
        let (now, profile, iterations) = (self.now, want.profile, self.pki.pkcs12_iterations);
        let signer = Arc::clone(ca);
        // Key, certificate and PKCS#12 (its key derivation is most of a client's cost) are
        // built on the blocking pool, so that several clients use every core while others'
        // writes are in flight.
        let (credential, password, p12) = tokio::task::spawn_blocking(move || -> Result<_> {
            let credential = issue_client_certificate(&signer, &params, now)
                .with_context(|| format!("failed to issue the certificate of '{}'", params.name))?;
            let password = Pkcs12Password::generate()?;
            let p12 = build_pkcs12(&Pkcs12Request {
                credential: &credential,
                ca_chain: &[&signer.certificate],
                friendly_name: &params.name,
                password: &password,
                profile,
                iterations,
            })?;
            Ok((credential, password, p12))
        })
        .await
        .context("the thread building a client certificate stopped")??;
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
                self.note(
                    &want.name,
                    Record::issued(version, want, source, &credential.certificate, &carry),
                );
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
                if let Some(ca) = self.ca_certificate.get() {
                    self.note(
                        name,
                        Record::of(entry, ca).revoked(version, self.now, reason),
                    );
                }
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
            Stored::Present(entry) => {
                if let Some(ca) = self.ca_certificate.get() {
                    self.note(name, Record::of(&entry, ca));
                }
                Ok(entry.status(name, ClientAction::Adopted))
            }
            Stored::Previous(_)
            | Stored::Unknown { .. }
            | Stored::Absent { .. }
            | Stored::Indexed(_) => {
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

/// RFC 3339, as the previous scripts' expiry check reads `created`.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

mod bundle;
mod entry;
mod index;
mod previous_ca;
#[cfg(test)]
mod tests;
