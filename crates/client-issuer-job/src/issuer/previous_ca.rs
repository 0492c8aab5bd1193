//! Adopting the client CA the previous scripts kept at the bundle path: certificate and key
//! side by side, where the bundle's readers (the `eso-pki-reader` policy, which reads every
//! version of the entry) can read the key. The key moves to a path only this job reads, as the
//! issuer (`PREVIOUS_CA=issuer`) or as a CA kept trusted while users move
//! (`PREVIOUS_CA=trusted`), in four check-and-set steps, each of which a crash can interrupt:
//!
//! 1. copy certificate and key to the target (create-only), recording the source version;
//! 2. replace the bundle path's entry with the bundle (check-and-set on that version);
//! 3. destroy every version of the bundle path up to that one (KV v2 `destroy`);
//! 4. mark the target's record `source_destroyed` (check-and-set).
//!
//! The target's record says how far a move got, so every run resumes where the last one
//! stopped: the key is always at the source, the target, or both, never nowhere.

use anyhow::Result;
use job_support::{ConfigError, KvEntry, SecretData, SecretStore, WriteOutcome};
use pki_core::{CaCredential, Certificate};
use tracing::info;

use super::bundle::BUNDLE_FIELDS;
use super::{ISSUER_CERT, ISSUER_KEY, Issuer, rfc3339, writable_absent};
use crate::config::PreviousCa;

/// The certificate and key field names a CA entry of the previous scripts may use. The
/// scripts' own names are not recorded anywhere; these are the common spellings (the Vault
/// CLI examples' `cert`/`key`, Kubernetes CA secrets' `ca.crt`/`ca.key`, TLS secrets'
/// `tls.crt`/`tls.key`, Vault PKI's `certificate`/`private_key`).
pub(super) const SPELLINGS: [(&str, &str); 4] = [
    ("cert", "key"),
    ("ca.crt", "ca.key"),
    ("tls.crt", "tls.key"),
    ("certificate", "private_key"),
];

/// Where the adopted CA came from (mount and path).
const ADOPTED_FROM: &str = "adopted_from";
/// The version of the source entry that held the key.
const ADOPTED_VERSION: &str = "adopted_version";
/// Set once every version of the source up to `adopted_version` is destroyed: the versions.
const SOURCE_DESTROYED: &str = "source_destroyed";

/// What the bundle path holds, by shape.
enum Source<'e> {
    /// Nothing, a placeholder, or this job's bundle.
    Bundle,
    /// A CA certificate and key of the previous scripts, verified.
    PreviousScripts {
        entry: &'e KvEntry,
        cert_field: &'static str,
        key_field: &'static str,
        ca: Box<CaCredential>,
    },
}

/// A move of the previous CA's key that is under way: the target's record.
#[derive(Debug, Clone)]
pub(super) struct PendingMove {
    /// The target path.
    path: String,
    /// The record's version (what step 4 names).
    version: u64,
    /// The source version that held the key: versions up to it are destroyed.
    adopted_version: u64,
}

/// What a run must still do for a move.
#[derive(Debug, Default)]
pub(super) struct Adoption {
    /// A move whose source entry is replaced by this run's bundle (step 2), and finished by
    /// this run after it (steps 3, 4).
    pub(super) pending: Option<PendingMove>,
}

impl<S: SecretStore> Issuer<'_, S> {
    fn target_path(&self, choice: PreviousCa) -> &str {
        match choice {
            PreviousCa::Issuer => &self.pki.issuer_path,
            PreviousCa::Trusted => &self.pki.previous_ca_path,
        }
    }

    /// What the bundle path holds; an entry that is neither this job's bundle nor a usable
    /// CA of the previous scripts is invalid state, named with the fields found and the
    /// shapes accepted.
    fn classify_source<'e>(&self, stored: Option<&'e KvEntry>) -> Result<Source<'e>> {
        let path = &self.pki.ca_path;
        let Some(entry) = stored.filter(|_| writable_absent(stored).is_none()) else {
            return Ok(Source::Bundle);
        };
        if entry.data.fields().all(|f| BUNDLE_FIELDS.contains(&f)) {
            return Ok(Source::Bundle);
        }
        let fields: Vec<&str> = entry.data.fields().collect();
        let Some(&(cert_field, key_field)) = SPELLINGS
            .iter()
            .find(|(cert, key)| fields.len() == 2 && fields.contains(cert) && fields.contains(key))
        else {
            return Err(self.invalid(path, foreign_fields_problem(&fields)));
        };
        let field = |name| entry.data.get(name).unwrap_or_default();
        let ca = CaCredential::from_pem(
            field(cert_field),
            cert_field,
            field(key_field),
            key_field,
            self.now,
        )
        .map_err(|e| {
            self.invalid(
                path,
                format!(
                    "holds a certificate and key of the previous scripts ('{cert_field}', '{key_field}') that cannot be adopted as a client CA: {e}. Nothing was written"
                ),
            )
        })?;
        Ok(Source::PreviousScripts {
            entry,
            cert_field,
            key_field,
            ca: Box::new(ca),
        })
    }

    /// The first part of a run: reads the bundle path and both possible targets, resumes a
    /// move a crash interrupted, or starts one (step 1). Nothing is written before every
    /// check has passed. Afterwards, a bundle write may replace the source version of a move
    /// under way (see `replace_source`).
    pub(super) async fn adopt_previous_ca(&self) -> Result<Adoption> {
        let source_path = &self.pki.ca_path;
        let stored = self.store.read(source_path).await?;
        let source = self.classify_source(stored.as_ref())?;
        let pending = self.pending_move().await?;
        match (source, pending) {
            (Source::Bundle, None) => Ok(Adoption::default()),
            // Steps 1 and 2 are done: the source holds a bundle now.
            (Source::Bundle, Some((pending, _))) => {
                let current = stored.as_ref().map_or(0, |e| e.version);
                if current <= pending.adopted_version {
                    return Err(self.invalid(
                        source_path,
                        format!(
                            "'{}' records a move of version {} of this entry, but the entry is at version {current}; nothing was written",
                            self.label(&pending.path),
                            pending.adopted_version
                        ),
                    ));
                }
                self.complete_move(&pending).await?;
                Ok(Adoption::default())
            }
            (
                Source::PreviousScripts {
                    entry,
                    cert_field,
                    key_field,
                    ca,
                },
                pending,
            ) => {
                if let Some((pending, choice)) = pending {
                    let copied = self.read_record(&pending.path).await?;
                    let same = copied.as_ref().is_some_and(|r| {
                        same_certificate(r.data.get(ISSUER_CERT), &ca.certificate)
                    });
                    if pending.adopted_version != entry.version || !same {
                        return Err(self.invalid(
                            source_path,
                            format!(
                                "holds a CA of the previous scripts at version {}, but '{}' records the move of another (version {}); nothing was written",
                                entry.version,
                                self.label(&pending.path),
                                pending.adopted_version
                            ),
                        ));
                    }
                    self.check_choice(choice, &pending.path)?;
                    info!(path = %self.label(source_path), target = %self.label(&pending.path),
                          version = entry.version, "resuming the move of the previous scripts' CA");
                    self.replace_source.set(Some(entry.version));
                    return Ok(Adoption {
                        pending: Some(pending),
                    });
                }
                let Some(choice) = self.pki.previous_ca else {
                    return Err(ConfigError::new(
                        "PREVIOUS_CA",
                        format!(
                            "'{}' holds a client CA of the previous scripts, its key included (fields {cert_field}, {key_field}); set PREVIOUS_CA=issuer to make it this job's client CA (its key moves to '{}'), or PREVIOUS_CA=trusted to keep it trusted while users move to a new CA (its key moves to '{}'). Nothing was written",
                            self.label(source_path),
                            self.label(&self.pki.issuer_path),
                            self.label(&self.pki.previous_ca_path),
                        ),
                    )
                    .into());
                };
                self.check_older_versions(entry, key_field).await?;
                let pending = self
                    .copy_to_target(choice, entry, cert_field, key_field, &ca)
                    .await?;
                self.replace_source.set(Some(entry.version));
                Ok(Adoption {
                    pending: Some(pending),
                })
            }
        }
    }

    /// The move ends by destroying every version of the bundle path up to the adopted one,
    /// since any of them may hold the key where `eso-pki-reader` can read it. Before the
    /// first write, each earlier version is read: one that holds another private key (an
    /// older CA of the previous scripts, say) would be lost, so the run stops and says how to
    /// keep it.
    async fn check_older_versions(&self, source: &KvEntry, key_field: &str) -> Result<()> {
        let path = &self.pki.ca_path;
        let adopted = source.data.get(key_field).unwrap_or_default().trim();
        let mut other_keys = Vec::new();
        for version in 1..source.version {
            let Some(data) = self.store.read_version(path, version).await? else {
                continue;
            };
            let holds_other_key = data
                .iter()
                .any(|(_, value)| value.contains("PRIVATE KEY-----") && value.trim() != adopted);
            if holds_other_key {
                other_keys.push(version);
            }
        }
        if other_keys.is_empty() {
            return Ok(());
        }
        let versions = format_versions(&other_keys);
        Err(self.invalid(
            path,
            format!(
                "version(s) {versions} hold another private key than the CA being adopted, and adopting it destroys every earlier version; keep that key first (vault kv get -version=N {label}), then destroy those versions (vault kv destroy -versions={versions} {label}) and run again. Nothing was written",
                label = self.label(path),
            ),
        ))
    }

    /// A move recorded at either target and not finished, with the choice it stands for.
    async fn pending_move(&self) -> Result<Option<(PendingMove, PreviousCa)>> {
        let mut pending = Vec::new();
        for choice in [PreviousCa::Issuer, PreviousCa::Trusted] {
            let path = self.target_path(choice).to_owned();
            let Some(record) = self.read_record(&path).await? else {
                continue;
            };
            if record.data.get(ADOPTED_FROM) != Some(self.label(&self.pki.ca_path).as_str())
                || record.data.get(SOURCE_DESTROYED).is_some()
            {
                continue;
            }
            let adopted_version = record
                .data
                .get(ADOPTED_VERSION)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| {
                    self.invalid(
                        &path,
                        format!("field '{ADOPTED_VERSION}' is missing or not a version"),
                    )
                })?;
            pending.push((
                PendingMove {
                    path,
                    version: record.version,
                    adopted_version,
                },
                choice,
            ));
        }
        if pending.len() > 1 {
            return Err(self.invalid(
                &self.pki.ca_path,
                format!(
                    "both '{}' and '{}' record an unfinished move of this entry's CA; keep one (remove the other with `bao kv metadata delete`) and run again",
                    self.label(&self.pki.issuer_path),
                    self.label(&self.pki.previous_ca_path)
                ),
            ));
        }
        Ok(pending.pop())
    }

    async fn read_record(&self, path: &str) -> Result<Option<KvEntry>> {
        Ok(self.store.read(path).await?)
    }

    /// A move under way is finished as it was started: switching `PREVIOUS_CA` half-way
    /// would leave the key in two places.
    fn check_choice(&self, recorded: PreviousCa, target: &str) -> Result<()> {
        match self.pki.previous_ca {
            Some(chosen) if chosen != recorded => Err(ConfigError::new(
                "PREVIOUS_CA",
                format!(
                    "'{}' is {} but the move of the previous scripts' CA to '{}' (PREVIOUS_CA={}) is under way; run with PREVIOUS_CA={} to finish it. Nothing was written",
                    chosen.name(),
                    chosen.name(),
                    self.label(target),
                    recorded.name(),
                    recorded.name()
                ),
            )
            .into()),
            _ => Ok(()),
        }
    }

    /// Step 1: the certificate and key, byte for byte, at the target, created only if the
    /// target is free. A conflict is another run doing the same move: its copy is adopted.
    async fn copy_to_target(
        &self,
        choice: PreviousCa,
        source: &KvEntry,
        cert_field: &str,
        key_field: &str,
        ca: &CaCredential,
    ) -> Result<PendingMove> {
        let path = self.target_path(choice).to_owned();
        let existing = self.store.read(&path).await?;
        let Some(cas) = writable_absent(existing.as_ref()) else {
            let fields: Vec<&str> = existing
                .as_ref()
                .map(|e| e.data.fields().collect())
                .unwrap_or_default();
            return Err(self.invalid(
                &path,
                format!(
                    "PREVIOUS_CA={} would move the previous scripts' CA here, but the entry already holds {}; nothing was written{}",
                    choice.name(),
                    fields.join(", "),
                    if choice == PreviousCa::Issuer {
                        " (this job has a client CA already: PREVIOUS_CA=trusted keeps the old one trusted beside it)"
                    } else {
                        ""
                    }
                ),
            ));
        };
        let mut data = SecretData::new();
        data.insert(ISSUER_CERT, source.data.get(cert_field).unwrap_or_default());
        data.insert(ISSUER_KEY, source.data.get(key_field).unwrap_or_default());
        data.insert("created", rfc3339(self.now));
        data.insert(
            "fingerprint",
            ca.certificate.info().fingerprint_sha256.clone(),
        );
        data.insert(ADOPTED_FROM, self.label(&self.pki.ca_path));
        data.insert(ADOPTED_VERSION, source.version.to_string());
        match self.store.write(&path, &data, cas).await? {
            WriteOutcome::Written { version } => {
                info!(path = %self.label(&path), version, from = %self.label(&self.pki.ca_path),
                      from_version = source.version, previous_ca = choice.name(),
                      fingerprint = %ca.certificate.info().fingerprint_sha256,
                      "copied the previous scripts' CA and key; the bundle replaces them next");
                Ok(PendingMove {
                    path,
                    version,
                    adopted_version: source.version,
                })
            }
            WriteOutcome::Conflict => {
                let theirs = self.store.read(&path).await?;
                match theirs {
                    Some(record)
                        if record.data.get(ADOPTED_FROM)
                            == Some(self.label(&self.pki.ca_path).as_str())
                            && record.data.get(ADOPTED_VERSION)
                                == Some(source.version.to_string().as_str())
                            && same_certificate(record.data.get(ISSUER_CERT), &ca.certificate) =>
                    {
                        info!(path = %self.label(&path), version = record.version,
                              "another run copied the previous scripts' CA first; adopting its copy");
                        Ok(PendingMove {
                            path,
                            version: record.version,
                            adopted_version: source.version,
                        })
                    }
                    _ => Err(self.invalid(
                        &path,
                        "a conditional write conflicted, and what the other writer left is not this CA's copy; nothing was written here".into(),
                    )),
                }
            }
        }
    }

    /// Steps 3 and 4, once the source holds the bundle: destroy the versions that held the
    /// key, then record that they are gone. Both are harmless to repeat.
    pub(super) async fn complete_move(&self, pending: &PendingMove) -> Result<()> {
        let source = &self.pki.ca_path;
        let versions: Vec<u64> = (1..=pending.adopted_version).collect();
        self.store.destroy_versions(source, &versions).await?;
        info!(path = %self.label(source), versions = ?versions,
              "destroyed the versions of the bundle entry that held the previous scripts' CA key");
        let mut version = pending.version;
        for _ in 0..super::bundle::BUNDLE_ATTEMPTS {
            let record = self
                .store
                .read(&pending.path)
                .await?
                .filter(|r| r.version >= version)
                .ok_or_else(|| {
                    self.invalid(&pending.path, "the record of the move vanished".into())
                })?;
            if record.data.get(SOURCE_DESTROYED).is_some() {
                return Ok(());
            }
            let mut data = record.data.clone();
            data.insert(SOURCE_DESTROYED, format_versions(&versions));
            match self
                .store
                .write(&pending.path, &data, record.version)
                .await?
            {
                WriteOutcome::Written { version } => {
                    info!(path = %self.label(&pending.path), version,
                          "the previous scripts' CA key is only here now");
                    return Ok(());
                }
                WriteOutcome::Conflict => version = record.version + 1,
            }
        }
        Err(self.invalid(
            &pending.path,
            "kept changing under concurrent runs; the next run records the move as finished".into(),
        ))
    }

    /// The previous CA kept trusted, when its key was moved here: the bundle carries its
    /// certificate and a CRL it signs. An expired one is no longer worth a CRL.
    pub(super) async fn trusted_previous_ca(&self) -> Result<Option<CaCredential>> {
        let path = &self.pki.previous_ca_path;
        let Some(entry) = self.store.read(path).await? else {
            return Ok(None);
        };
        // Only a CA this job moved there: anything else at that path is not its to sign for.
        if entry.data.get(ADOPTED_FROM).is_none() {
            return Ok(None);
        }
        let field = |name: &str| {
            entry
                .data
                .get(name)
                .ok_or_else(|| self.invalid(path, format!("missing field '{name}'")))
        };
        let certificate = Certificate::from_pem(field(ISSUER_CERT)?, ISSUER_CERT)
            .map_err(|e| self.invalid(path, e.to_string()))?;
        if certificate.info().not_after <= self.now {
            tracing::warn!(path = %self.label(path), not_after = %rfc3339(certificate.info().not_after),
                           "the previous CA has expired; it is no longer put in the trust bundle");
            return Ok(None);
        }
        CaCredential::from_pem(
            field(ISSUER_CERT)?,
            ISSUER_CERT,
            field(ISSUER_KEY)?,
            ISSUER_KEY,
            self.now,
        )
        .map(Some)
        .map_err(|e| self.invalid(path, e.to_string()))
    }
}

fn same_certificate(pem: Option<&str>, certificate: &Certificate) -> bool {
    pem.and_then(|p| Certificate::from_pem(p, ISSUER_CERT).ok())
        .is_some_and(|c| c.info().fingerprint_sha256 == certificate.info().fingerprint_sha256)
}

fn format_versions(versions: &[u64]) -> String {
    versions
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The problem with an entry at the bundle path that is neither shape this job knows.
pub(super) fn foreign_fields_problem(fields: &[&str]) -> String {
    format!(
        "holds fields this job never writes ({}); expected this job's bundle ({}) or a client CA of the previous scripts as exactly one certificate and key pair ({}). Nothing was written",
        fields.join(", "),
        BUNDLE_FIELDS.join(", "),
        SPELLINGS
            .iter()
            .map(|(c, k)| format!("{c}/{k}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}
