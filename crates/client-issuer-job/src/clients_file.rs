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
//! ```

use pki_core::{Pkcs12Profile, RevocationReason};
use serde::Deserialize;

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
    clients: Vec<RawClient>,
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
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Parses and validates the file. `Err` holds every problem found, one per line.
pub fn parse_clients(yaml: &str) -> Result<Vec<DeclaredClient>, Vec<String>> {
    let raw: RawFile =
        serde_norway::from_str(yaml).map_err(|e| vec![format!("not a clients file: {e}")])?;
    let mut problems = Vec::new();
    let mut clients: Vec<DeclaredClient> = Vec::new();
    for (i, raw) in raw.clients.into_iter().enumerate() {
        let at = format!("client {}", i + 1);
        let name = raw.name.unwrap_or_default();
        let label = if name.is_empty() {
            at.clone()
        } else {
            format!("{at} ('{name}')")
        };
        if name.is_empty() {
            problems.push(format!("{label}: name is missing"));
        } else if !valid_name(&name) {
            problems.push(format!(
                "{label}: name must be lowercase letters, digits and '-', at most 63 characters, not starting or ending with '-'"
            ));
        } else if clients.iter().any(|c| c.name == name) {
            problems.push(format!("{label}: name is declared twice"));
        }
        let email = raw.email.unwrap_or_default();
        if email.is_empty() {
            problems.push(format!("{label}: email is missing"));
        } else if !pki_core::valid_email(&email) {
            problems.push(format!(
                "{label}: email '{email}' is not an address of the form user@domain.tld"
            ));
        }
        let profile = match raw.profile.as_deref().map(str::parse::<Pkcs12Profile>) {
            None => Pkcs12Profile::Modern,
            Some(Ok(p)) => p,
            Some(Err(_)) => {
                problems.push(format!(
                    "{label}: profile '{}' is not one of modern, legacy",
                    raw.profile.unwrap_or_default()
                ));
                Pkcs12Profile::Modern
            }
        };
        if raw.validity_days == Some(0) {
            problems.push(format!("{label}: validity_days must be at least 1"));
        }
        let revocation_reason = match raw
            .revocation_reason
            .as_deref()
            .map(str::parse::<RevocationReason>)
        {
            None => RevocationReason::CessationOfOperation,
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                problems.push(format!("{label}: {e}"));
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
        Ok(clients)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
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
    fn unknown_fields_are_refused() {
        let problems =
            parse_clients("clients:\n  - name: a\n    emial: a@example.org\n").unwrap_err();
        assert!(
            problems[0].starts_with("not a clients file: clients[0]: unknown field `emial`"),
            "{problems:?}"
        );
    }
}
