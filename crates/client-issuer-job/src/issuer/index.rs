//! The client index: one KV entry (`<clients path>-index`) summarising every client entry as
//! the job last read or wrote it, each summary tagged with the entry's KV version and
//! creation time. With it a run that changes nothing reads two things instead of every entry
//! and every PKCS#12: the index, and the versions of all entries in one request
//! ([`job_support::SecretStore::list_versions`]).
//!
//! The index is derived data and never trusted beyond what the store confirms: a summary is
//! used only while its entry is still at the version and creation time it records and not
//! deleted; an entry edited, deleted or re-created by hand, by the one-off `issue` command or
//! by another run is read in full, as is every entry the index does not name. An index that
//! cannot be parsed, or that was built against another client CA, is logged and rebuilt
//! from the entries. It is written with check-and-set against the version read; a run that
//! loses that race keeps the winner's index (its summaries are checked the same way).

use std::collections::BTreeMap;

use job_support::{EntryVersion, SecretData};
use pki_core::time::OffsetDateTime;
use pki_core::{Pkcs12Profile, RenewalPolicy, RevocationReason, RevokedCertificate, renewal_due};
use serde::{Deserialize, Serialize};

use super::entry::{ClientEntry, format_history, parse_history};
use super::{ClientAction, ClientStatus, Source, rfc3339};
use crate::clients_file::DeclaredClient;
use pki_core::time::format_description::well_known::Rfc3339;

/// The field of the index entry holding the JSON document.
pub(super) const INDEX_FIELD: &str = "index";
/// Bumped when the document's meaning changes; another format is rebuilt, never misread.
const FORMAT: u32 = 1;

/// The index document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Index {
    format: u32,
    /// SHA-256 fingerprint of the client CA the summaries were checked against.
    pub(super) ca: String,
    pub(super) clients: BTreeMap<String, Record>,
}

/// What the index keeps of one client entry: what the decisions and the summary need, and
/// nothing secret. Short field names: at about 170 bytes a client (200 as stored, its quotes
/// escaped), 5,000 clients stay under the 1 MiB a Raft-backed OpenBao or Vault accepts in one
/// entry by default (`max_entry_size` of the raft storage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Record {
    /// The entry's KV version this summary was taken from.
    #[serde(rename = "v")]
    pub(super) version: u64,
    /// The entry's creation time as the store reports it (empty until known).
    #[serde(rename = "c")]
    pub(super) created: String,
    #[serde(rename = "e")]
    email: String,
    /// The PKCS#12 profile's name.
    #[serde(rename = "p")]
    profile: String,
    #[serde(rename = "m", default, skip_serializing_if = "std::ops::Not::not")]
    manual: bool,
    #[serde(rename = "s")]
    serial: String,
    #[serde(rename = "b")]
    not_before: i64,
    #[serde(rename = "a")]
    not_after: i64,
    /// Whether the certificate was signed by the index's CA.
    #[serde(rename = "k")]
    signed: bool,
    /// When and why the current certificate was revoked.
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    revoked: Option<(String, String)>,
    /// `revoked_history`, as stored in the entry.
    #[serde(rename = "h", default, skip_serializing_if = "String::is_empty")]
    history: String,
    /// Why the PKCS#12 cannot be used, if it cannot.
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    unusable: Option<String>,
}

impl Index {
    /// An empty index for the CA with this fingerprint.
    pub(super) fn new(ca: &str) -> Self {
        Self {
            format: FORMAT,
            ca: ca.to_owned(),
            clients: BTreeMap::new(),
        }
    }

    /// Parses the stored entry; the problem, in words, when it is not an index of this
    /// format.
    pub(super) fn parse(data: &SecretData) -> Result<Self, String> {
        let text = data
            .get(INDEX_FIELD)
            .ok_or_else(|| format!("missing field '{INDEX_FIELD}'"))?;
        let index: Self = serde_json::from_str(text)
            .map_err(|e| format!("field '{INDEX_FIELD}' is not an index: {e}"))?;
        if index.format != FORMAT {
            return Err(format!(
                "format {} is not {FORMAT}, the one this version writes",
                index.format
            ));
        }
        Ok(index)
    }

    /// The entry to store.
    pub(super) fn to_data(&self) -> SecretData {
        let mut data = SecretData::new();
        data.insert(INDEX_FIELD, serde_json::to_string(self).unwrap_or_default());
        data.insert("clients", self.clients.len().to_string());
        data
    }
}

impl Record {
    /// The summary of `entry`, checked against the CA certificate `ca`.
    pub(super) fn of(entry: &ClientEntry, ca: &pki_core::Certificate) -> Self {
        let info = entry.certificate.info();
        Self {
            version: entry.version,
            created: String::new(),
            email: entry.email.clone(),
            profile: entry.profile.name().to_owned(),
            manual: entry.source == Source::Manual,
            serial: info.serial_hex.clone(),
            not_before: info.not_before.unix_timestamp(),
            not_after: info.not_after.unix_timestamp(),
            signed: entry.certificate.verify_signed_by(ca).is_ok(),
            revoked: entry
                .revoked
                .map(|(at, reason)| (rfc3339(at), reason.name().to_owned())),
            history: format_history(&entry.history),
            unusable: entry.unusable.clone(),
        }
    }

    /// The summary of an entry this run just wrote for `want`.
    pub(super) fn issued(
        version: u64,
        want: &DeclaredClient,
        source: Source,
        certificate: &pki_core::Certificate,
        history: &[RevokedCertificate],
    ) -> Self {
        let info = certificate.info();
        Self {
            version,
            created: String::new(),
            email: want.email.clone(),
            profile: want.profile.name().to_owned(),
            manual: source == Source::Manual,
            serial: info.serial_hex.clone(),
            not_before: info.not_before.unix_timestamp(),
            not_after: info.not_after.unix_timestamp(),
            signed: true,
            revoked: None,
            history: format_history(history),
            unusable: None,
        }
    }

    /// This summary after a revocation written as `version`.
    pub(super) fn revoked(
        mut self,
        version: u64,
        at: OffsetDateTime,
        reason: RevocationReason,
    ) -> Self {
        self.version = version;
        self.revoked = Some((rfc3339(at), reason.name().to_owned()));
        self
    }

    /// Whether the entry still is what this summary describes.
    pub(super) fn matches(&self, current: &EntryVersion) -> bool {
        !current.deleted && current.version == self.version && current.created == self.created
    }

    pub(super) fn source(&self) -> Source {
        if self.manual {
            Source::Manual
        } else {
            Source::File
        }
    }

    pub(super) fn is_revoked(&self) -> bool {
        self.revoked.is_some()
    }

    pub(super) fn unusable(&self) -> Option<&str> {
        self.unusable.as_deref()
    }

    /// Whether converging on `want` could change the entry, so that it must be read in
    /// full: the same conditions as the decision on a full entry, and any doubt (a
    /// timestamp or history the summary cannot turn back into values) counts as a change.
    pub(super) fn needs_entry(
        &self,
        want: &DeclaredClient,
        repair: bool,
        now: OffsetDateTime,
        renewal: &RenewalPolicy,
    ) -> bool {
        if want.revoked {
            return self.revoked.is_none();
        }
        let (Ok(not_before), Ok(not_after)) = (
            OffsetDateTime::from_unix_timestamp(self.not_before),
            OffsetDateTime::from_unix_timestamp(self.not_after),
        ) else {
            return true;
        };
        self.revoked.is_some()
            || self.email != want.email
            || self.profile != want.profile.name()
            || !self.signed
            || renewal_due(now, not_before, not_after, renewal)
            || (repair && self.unusable.is_some())
            || self.status("", ClientAction::Kept).is_none()
    }

    /// The status this summary stands for (`None` when a stored value cannot be turned back:
    /// the entry is then read).
    pub(super) fn status(&self, name: &str, action: ClientAction) -> Option<ClientStatus> {
        let time = |t: i64| OffsetDateTime::from_unix_timestamp(t).ok();
        let mut revocations = parse_history(&self.history).ok()?;
        if let Some((at, reason)) = &self.revoked {
            revocations.push(RevokedCertificate {
                serial: hex_bytes(&self.serial)?,
                revoked_at: OffsetDateTime::parse(at, &Rfc3339).ok()?,
                reason: reason.parse::<RevocationReason>().ok()?,
            });
        }
        let profile: Pkcs12Profile = self.profile.parse().ok()?;
        Some(ClientStatus {
            name: name.to_owned(),
            email: self.email.clone(),
            serial: self.serial.clone(),
            not_after: time(self.not_after)?,
            revoked: self.revoked.is_some(),
            revocations,
            profile: Some(profile),
            action,
        })
    }

    /// The status of an entry this run leaves as it is.
    pub(super) fn unchanged_status(&self, name: &str) -> Option<ClientStatus> {
        let action = if self.revoked.is_some() {
            ClientAction::StillRevoked
        } else if self.unusable.is_some() {
            ClientAction::Unusable
        } else {
            ClientAction::Kept
        };
        self.status(name, action)
    }
}

fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .filter(|s| !s.is_empty())
}
