//! The declared clients: a YAML file mounted from a ConfigMap. The whole file is validated
//! before anything is written; every problem is listed at once, so an operator fixes the
//! ConfigMap in one pass.
//!
//! ```yaml
//! clients:
//!   - name: alice
//!     email: alice@example.org
//!   - name: bob
//!     email: bob@example.org
//!     profile: legacy        # modern (default) | legacy
//!     validity_days: 90      # default CLIENT_VALIDITY_DAYS
//!   - name: carol
//!     email: carol@example.org
//!     revoked: true          # revoke, keep the entry
//!     revocation_reason: key-compromise
//! # Removing more clients at once than REVOKE_MAX_PERCENT / REVOKE_MAX_COUNT allow is
//! # refused unless the file says it is meant:
//! allow_revoke_all: false
//! ```

use std::collections::HashSet;
use std::ops::RangeInclusive;

use pki_core::{Pkcs12Profile, RevocationReason};
use serde::Deserialize;

/// The validity a client may ask for, in days: the same bounds as `CLIENT_VALIDITY_DAYS`
/// and `issue --validity-days`.
pub const VALIDITY_DAYS: RangeInclusive<u32> = 1..=3650;

/// How much of a bad value an error line repeats: enough to find it in the file.
const SHOWN_CHARS: usize = 80;

/// `value` as an error line shows it: cut after [`SHOWN_CHARS`] characters, saying by how much.
fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        None => value.to_owned(),
        Some((cut, _)) => format!(
            "{}... ({} more characters)",
            &value[..cut],
            value[cut..].chars().count()
        ),
    }
}

/// One client as the file declares it, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredClient {
    /// User name: the certificate's CN and the KV entry's name.
    pub name: String,
    /// Email, in subjectAltName.
    pub email: String,
    /// PKCS#12 encoding.
    pub profile: Pkcs12Profile,
    /// Validity override in days.
    pub validity_days: Option<u32>,
    /// Whether the client is to be revoked.
    pub revoked: bool,
    /// Why, when revoked.
    pub revocation_reason: RevocationReason,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    clients: Option<Vec<RawClient>>,
    #[serde(default)]
    allow_revoke_all: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: Option<String>,
    email: Option<String>,
    profile: Option<String>,
    validity_days: Option<u32>,
    #[serde(default)]
    revoked: bool,
    revocation_reason: Option<String>,
}

/// Whether `name` can be a client name: a lowercase DNS label, so it is safe as a KV path
/// segment, a file name and a certificate CN.
#[must_use]
pub fn valid_name(name: &str) -> bool {
    job_support::config::dns_label(name)
}

/// The declared clients of the file; see [`parse_clients_file`].
#[cfg(test)]
pub fn parse_clients(yaml: &str) -> Result<Vec<DeclaredClient>, Vec<String>> {
    parse_clients_file(yaml).map(|file| file.clients)
}

/// The whole file: the clients, and whether it allows a run to revoke more clients at once
/// than `REVOKE_MAX_PERCENT` / `REVOKE_MAX_COUNT` do (`allow_revoke_all: true`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientsFile {
    /// The declared clients.
    pub clients: Vec<DeclaredClient>,
    /// The file says that removing many clients at once is intended.
    pub allow_revoke_all: bool,
}

/// Parses and validates the file. `Err` holds every problem found, one per line.
pub fn parse_clients_file(yaml: &str) -> Result<ClientsFile, Vec<String>> {
    let raw: RawFile = if yaml.trim().is_empty() {
        // serde reads an empty document as no file at all; it is an empty list here, which
        // the revocation guard then judges.
        RawFile {
            clients: None,
            allow_revoke_all: false,
        }
    } else {
        job_support::yaml::from_str(yaml).map_err(|e| vec![format!("not a clients file: {e}")])?
    };
    let mut problems = Vec::new();
    let mut clients: Vec<DeclaredClient> = Vec::new();
    let mut seen = HashSet::new();
    for (i, raw) in raw.clients.unwrap_or_default().into_iter().enumerate() {
        let at = format!("client {}", i + 1);
        let name = raw.name.unwrap_or_default();
        let label = if name.is_empty() {
            at.clone()
        } else {
            format!("{at} ('{}')", shown(&name))
        };
        if name.is_empty() {
            problems.push(format!("{label}: name is missing"));
        } else if !valid_name(&name) {
            problems.push(format!(
                "{label}: name must be lowercase letters, digits and '-', at most 63 characters, not starting or ending with '-'"
            ));
        } else if !seen.insert(name.clone()) {
            problems.push(format!("{label}: name is declared twice"));
        }
        let email = raw.email.unwrap_or_default();
        if email.is_empty() {
            problems.push(format!("{label}: email is missing"));
        } else if !pki_core::valid_email(&email) {
            problems.push(format!(
                "{label}: email '{}' is not an address of the form user@domain.tld",
                shown(&email)
            ));
        }
        let profile = match raw.profile.as_deref().map(str::parse::<Pkcs12Profile>) {
            None => Pkcs12Profile::Modern,
            Some(Ok(p)) => p,
            Some(Err(_)) => {
                problems.push(format!(
                    "{label}: profile '{}' is not one of modern, legacy",
                    shown(&raw.profile.unwrap_or_default())
                ));
                Pkcs12Profile::Modern
            }
        };
        if let Some(days) = raw.validity_days.filter(|d| !VALIDITY_DAYS.contains(d)) {
            problems.push(format!(
                "{label}: validity_days {days} is not a number from {} to {}",
                VALIDITY_DAYS.start(),
                VALIDITY_DAYS.end()
            ));
        }
        let revocation_reason = match raw
            .revocation_reason
            .as_deref()
            .map(str::parse::<RevocationReason>)
        {
            None => RevocationReason::CessationOfOperation,
            Some(Ok(r)) => r,
            Some(Err(_)) => {
                problems.push(format!(
                    "{label}: revocation_reason '{}' is not one of unspecified, key-compromise, affiliation-changed, superseded, cessation-of-operation",
                    shown(&raw.revocation_reason.unwrap_or_default())
                ));
                RevocationReason::Unspecified
            }
        };
        clients.push(DeclaredClient {
            name,
            email,
            profile,
            validity_days: raw.validity_days,
            revoked: raw.revoked,
            revocation_reason,
        });
    }
    if problems.is_empty() {
        Ok(ClientsFile {
            clients,
            allow_revoke_all: raw.allow_revoke_all,
        })
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    #[test]
    fn a_valid_file() {
        let clients = parse_clients(
            "clients:\n  - name: alice\n    email: alice@example.org\n  - name: bob\n    email: bob@example.org\n    profile: legacy\n    validity_days: 90\n    revoked: true\n",
        )
        .unwrap();
        assert_eq!(clients.len(), 2);
        assert_eq!(clients[0].profile, Pkcs12Profile::Modern);
        assert!(!clients[0].revoked);
        assert_eq!(
            (
                clients[1].profile,
                clients[1].validity_days,
                clients[1].revoked
            ),
            (Pkcs12Profile::Legacy, Some(90), true)
        );
        assert_eq!(parse_clients("").unwrap(), vec![]);
    }

    #[test]
    fn every_problem_is_listed() {
        let problems = parse_clients(
            "clients:\n  - name: Alice\n    email: alice@example.org\n  - name: ../x\n    email: nope\n  - name: bob\n    email: bob@example.org\n  - name: bob\n    email: bob@example.org\n    profile: fancy\n  - email: x@example.org\n",
        )
        .unwrap_err();
        assert_eq!(
            problems,
            [
                "client 1 ('Alice'): name must be lowercase letters, digits and '-', at most 63 characters, not starting or ending with '-'",
                "client 2 ('../x'): name must be lowercase letters, digits and '-', at most 63 characters, not starting or ending with '-'",
                "client 2 ('../x'): email 'nope' is not an address of the form user@domain.tld",
                "client 4 ('bob'): name is declared twice",
                "client 4 ('bob'): profile 'fancy' is not one of modern, legacy",
                "client 5: name is missing",
            ]
        );
    }

    #[test]
    fn validity_is_bounded_before_anything_is_issued() {
        for days in ["0", "3651", "3000000", "4294967295"] {
            let problems = parse_clients(&format!(
                "clients:\n  - name: a\n    email: a@example.org\n    validity_days: {days}\n"
            ))
            .unwrap_err();
            assert_eq!(
                problems,
                [format!(
                    "client 1 ('a'): validity_days {days} is not a number from 1 to 3650"
                )]
            );
        }
        // Past u32, the parser refuses it by type, naming the line and column (serde-saphyr
        // names the place in the file, not the field path).
        let problems = parse_clients(
            "clients:\n  - name: a\n    email: a@example.org\n    validity_days: 99999999999\n",
        )
        .unwrap_err();
        assert_eq!(
            problems,
            ["not a clients file: invalid u32 at line 4, column 20"]
        );
    }

    #[test]
    fn a_huge_value_is_not_echoed_whole() {
        let name = "x".repeat(50_000_000);
        let problems = parse_clients(&format!(
            "clients:\n  - name: {name}\n    email: a@example.org\n"
        ))
        .unwrap_err();
        assert_eq!(
            problems,
            [format!(
                "client 1 ('{}... (49999920 more characters)'): name must be lowercase letters, digits and '-', at most 63 characters, not starting or ending with '-'",
                "x".repeat(80)
            )]
        );
    }

    #[test]
    fn one_duplicate_among_many_is_found() {
        let mut yaml = String::from("clients:\n");
        for i in 0..100_000 {
            let _ = writeln!(yaml, "  - name: u{i}\n    email: u{i}@example.org");
        }
        yaml.push_str("  - name: u7\n    email: u7@example.org\n");
        assert_eq!(
            parse_clients(&yaml).unwrap_err(),
            ["client 100001 ('u7'): name is declared twice"]
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let problems =
            parse_clients("clients:\n  - name: a\n    emial: a@example.org\n").unwrap_err();
        assert_eq!(
            problems,
            [
                "not a clients file: unknown field `emial`, expected one of name, email, profile, \
                 validity_days, revoked, revocation_reason at line 3, column 5"
            ]
        );
    }

    #[test]
    fn a_key_given_twice_is_refused() {
        let problems =
            parse_clients("clients:\n  - name: a\n    email: a@example.org\n    name: b\n")
                .unwrap_err();
        assert_eq!(
            problems,
            [
                "not a clients file: duplicate mapping key `name` is not allowed here at line 4, column 5"
            ]
        );
        let problems = parse_clients("clients: []\nclients:\n  - name: a\n").unwrap_err();
        assert_eq!(
            problems,
            [
                "not a clients file: duplicate mapping key `clients` is not allowed here at line 2, column 1"
            ]
        );
    }
}
