//! The client entry as stored in KV: the fields this job writes and reads back, the
//! revocation history, and the shapes it finds but did not write. Reading an entry never
//! fails a run: what the job wrote is parsed and its PKCS#12 checked; what the previous
//! scripts wrote is recognised and left alone; anything else is reported by name.

use std::fmt::Write as _;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use job_support::{KvEntry, SecretData};
use pki_core::time::OffsetDateTime;
use pki_core::time::format_description::well_known::Rfc3339;
use pki_core::{Certificate, Pkcs12Profile, RevocationReason, RevokedCertificate, read_pkcs12};

use super::index::Record;
use super::{ClientAction, ClientStatus, Source, rfc3339};

/// The fields the previous scripts' `generate_client_cert` wrote for a user: `p12` (base64),
/// `cert` (PEM) and `created`, with no password and no profile.
const PREVIOUS_FIELDS: [&str; 3] = ["cert", "created", "p12"];

/// A client entry this job wrote, parsed.
#[derive(Debug, Clone)]
pub(super) struct ClientEntry {
    pub(super) version: u64,
    pub(super) data: SecretData,
    pub(super) certificate: Certificate,
    pub(super) email: String,
    pub(super) profile: Pkcs12Profile,
    pub(super) source: Source,
    pub(super) revoked: Option<(OffsetDateTime, RevocationReason)>,
    /// Earlier certificates of this user, revoked before a re-issue: they stay on the CRL.
    pub(super) history: Vec<RevokedCertificate>,
    /// Why the user cannot use the entry's PKCS#12 as it stands, if they cannot.
    pub(super) unusable: Option<String>,
}

impl ClientEntry {
    /// Every revocation to publish for this user: the history, and the current certificate's.
    pub(super) fn all_revocations(&self) -> Vec<RevokedCertificate> {
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

    pub(super) fn status(&self, name: &str, action: ClientAction) -> ClientStatus {
        ClientStatus {
            name: name.to_owned(),
            email: self.email.clone(),
            serial: self.certificate.info().serial_hex.clone(),
            not_after: self.certificate.info().not_after,
            revoked: self.revoked.is_some(),
            revocations: self.all_revocations(),
            profile: Some(self.profile),
            action,
        }
    }
}

/// A user entry as the previous scripts wrote it.
#[derive(Debug, Clone)]
pub(super) struct PreviousEntry {
    pub(super) version: u64,
    pub(super) certificate: Certificate,
}

impl PreviousEntry {
    pub(super) fn status(&self, name: &str, action: ClientAction) -> ClientStatus {
        let info = self.certificate.info();
        ClientStatus {
            name: name.to_owned(),
            // The previous scripts put the address in the subject only; the report shows '-'.
            email: String::new(),
            serial: info.serial_hex.clone(),
            not_after: info.not_after,
            revoked: false,
            revocations: Vec::new(),
            profile: None,
            action,
        }
    }
}

/// A client entry as read.
#[derive(Debug)]
pub(super) enum Stored {
    /// No entry, or only the previous scripts' `placeholder=true`: the version a write names.
    Absent { cas: u64 },
    /// An entry this job wrote.
    Present(Box<ClientEntry>),
    /// An entry of the previous scripts.
    Previous(Box<PreviousEntry>),
    /// An entry of no shape this job knows: left alone, reported by name.
    Unknown { problem: String },
    /// An entry this job wrote, known from the client index at the version it records
    /// (see `index.rs`); read in full before anything is written to it.
    Indexed(Box<Record>),
}

impl Stored {
    /// Classifies a stored entry; `None` (absent) and placeholders are [`Stored::Absent`].
    pub(super) fn classify(entry: Option<KvEntry>) -> Self {
        if let Some(cas) = super::writable_absent(entry.as_ref()) {
            return Self::Absent { cas };
        }
        let Some(entry) = entry else {
            return Self::Absent { cas: 0 };
        };
        if entry.data.fields().eq(PREVIOUS_FIELDS) {
            return match Certificate::from_pem(entry.data.get("cert").unwrap_or_default(), "cert") {
                Ok(certificate) => Self::Previous(Box::new(PreviousEntry {
                    version: entry.version,
                    certificate,
                })),
                Err(e) => Self::Unknown {
                    problem: format!("an entry of the previous scripts whose {e}"),
                },
            };
        }
        match parse_client(entry) {
            Ok(parsed) => Self::Present(Box::new(parsed)),
            Err(problem) => Self::Unknown { problem },
        }
    }

    /// The status of an entry this run leaves as it is (`None`: nothing to show).
    pub(super) fn unchanged_status(&self, name: &str) -> Option<ClientStatus> {
        match self {
            Self::Present(e) => {
                let action = if e.revoked.is_some() {
                    ClientAction::StillRevoked
                } else if e.unusable.is_some() {
                    ClientAction::Unusable
                } else {
                    ClientAction::Kept
                };
                Some(e.status(name, action))
            }
            Self::Previous(e) => Some(e.status(name, ClientAction::Previous)),
            Self::Indexed(r) => r.unchanged_status(name),
            Self::Absent { .. } | Self::Unknown { .. } => None,
        }
    }

    /// What needs an operator about this entry, if anything.
    pub(super) fn problem(&self) -> Option<&str> {
        match self {
            Self::Present(e) if e.revoked.is_none() => e.unusable.as_deref(),
            Self::Indexed(r) if !r.is_revoked() => r.unusable(),
            Self::Unknown { problem } => Some(problem),
            _ => None,
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
    let unusable = unusable(&entry.data, &certificate);
    Ok(ClientEntry {
        version: entry.version,
        data: entry.data,
        certificate,
        email,
        profile,
        source,
        revoked,
        history,
        unusable,
    })
}

/// Why the user cannot use the entry as the previous scripts' download step does (`p12` base64-decoded,
/// opened with `password`, holding the entry's own certificate), or `None` when they can.
fn unusable(data: &SecretData, certificate: &Certificate) -> Option<String> {
    let Some(p12) = data.get("p12") else {
        return Some("field 'p12' is missing".into());
    };
    let Ok(der) = BASE64.decode(p12.trim()) else {
        return Some("field 'p12' is not base64".into());
    };
    let Some(password) = data.get("password") else {
        return Some("field 'password' is missing".into());
    };
    let contents = match read_pkcs12(&der, password, "field 'p12'") {
        Ok(contents) => contents,
        // The MAC check fails alike for a wrong password and a corrupted file.
        Err(e) => return Some(format!("{e} (wrong 'password', or 'p12' is corrupted)")),
    };
    match contents.chain.first() {
        Some(leaf) if leaf.der() == certificate.der() => None,
        Some(leaf) => Some(format!(
            "field 'p12' holds the certificate of '{}' (serial {}), not this entry's (serial {})",
            leaf.info().subject,
            leaf.info().serial_hex,
            certificate.info().serial_hex
        )),
        None => Some("field 'p12' holds no certificate".into()),
    }
}

/// `revoked_history`: one line per earlier certificate, `<serial hex> <revoked at> <reason>`.
pub(super) fn format_history(revocations: &[RevokedCertificate]) -> String {
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

pub(super) fn parse_history(text: &str) -> Result<Vec<RevokedCertificate>, String> {
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
