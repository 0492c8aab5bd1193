//! Configuration variables, read in two stages: `envy` reads the raw strings from an iterator
//! of pairs (production passes `std::env::vars()`, tests a `Vec`), then the validators here
//! turn them into typed values, naming the variable on error. Every job validates with these
//! and no copies of them.

/// A configuration variable that is missing or invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {variable}: {problem}")]
pub struct ConfigError {
    /// The environment variable.
    pub variable: &'static str,
    /// What is wrong and what was expected.
    pub problem: String,
}

impl ConfigError {
    /// A problem with `variable`.
    pub fn new(variable: &'static str, problem: impl Into<String>) -> Self {
        Self {
            variable,
            problem: problem.into(),
        }
    }
}

/// Reads the raw variables a job knows from `vars` (unknown ones are ignored).
pub fn raw_from_vars<T: serde::de::DeserializeOwned>(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    // Empty values count as unset, as the Vault CLI treats them.
    envy::from_iter(vars.into_iter().filter(|(_, v)| !v.is_empty()))
        .map_err(|e| ConfigError::new("environment", e.to_string()))
}

/// A relative KV path (`istio/ca`), or `default` when unset: no empty, `.` or hidden segments.
pub fn kv_path(
    variable: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<String, ConfigError> {
    let path = value.unwrap_or_else(|| default.to_owned());
    let valid = !path.is_empty()
        && path
            .split('/')
            .all(|s| !s.is_empty() && !s.starts_with('.'));
    if valid {
        Ok(path)
    } else {
        Err(ConfigError::new(
            variable,
            format!("'{path}' is not a relative KV path such as {default}"),
        ))
    }
}

/// A text value that must not be blank, or `default` when unset.
pub fn non_blank(
    variable: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<String, ConfigError> {
    match value {
        Some(v) if v.trim().is_empty() => Err(ConfigError::new(variable, "must not be blank")),
        Some(v) => Ok(v),
        None => Ok(default.to_owned()),
    }
}

/// A key algorithm name (`ecdsa-p256`, `ecdsa-p384`, `rsa-4096`), P-256 when unset.
pub fn key_algorithm(
    variable: &'static str,
    value: Option<&str>,
) -> Result<pki_core::KeyAlgorithm, ConfigError> {
    match value {
        None => Ok(pki_core::KeyAlgorithm::EcdsaP256),
        Some(v) => v.parse().map_err(|_| {
            ConfigError::new(
                variable,
                format!("'{v}' is not one of ecdsa-p256, ecdsa-p384, rsa-4096"),
            )
        }),
    }
}

/// The renewal policy from `RENEW_LIFETIME_PERCENT` and `RENEW_MIN_DAYS_LEFT` (0 turns a
/// condition off).
pub fn renewal_policy(
    lifetime_percent: Option<&str>,
    min_days_left: Option<&str>,
    default_percent: u64,
) -> Result<pki_core::RenewalPolicy, ConfigError> {
    let percent = parse_number(
        "RENEW_LIFETIME_PERCENT",
        lifetime_percent,
        default_percent,
        0..=100,
    )?;
    let days = parse_number("RENEW_MIN_DAYS_LEFT", min_days_left, 30, 0..=36_500)?;
    Ok(pki_core::RenewalPolicy {
        lifetime_fraction: (percent > 0).then(|| f64::from(percent as u32) / 100.0),
        min_days_left: (days > 0).then_some(days as u32),
    })
}

/// Parses a boolean the way the Vault CLI does (`true/false`, `1/0`, `t/f`).
pub fn parse_bool(
    variable: &'static str,
    value: Option<&str>,
) -> Result<Option<bool>, ConfigError> {
    value
        .map(|v| match v.to_ascii_lowercase().as_str() {
            "1" | "t" | "true" | "yes" => Ok(true),
            "0" | "f" | "false" | "no" => Ok(false),
            _ => Err(ConfigError::new(
                variable,
                format!("'{v}' is not true or false"),
            )),
        })
        .transpose()
}

/// Parses a whole number within `range`, or returns `default` when unset.
pub fn parse_number(
    variable: &'static str,
    value: Option<&str>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            ConfigError::new(
                variable,
                format!(
                    "'{value}' is not a whole number from {} to {}",
                    range.start(),
                    range.end()
                ),
            )
        })
}

/// Whether `name` is a lowercase DNS label (RFC 1123, as Kubernetes names namespaces): at most
/// 63 lowercase letters, digits and '-', not starting or ending with '-'. Safe as a KV path
/// segment, a file name and a certificate CN.
#[must_use]
pub fn dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// `(name, value)` pairs as the environment gives them, for tests.
#[cfg(test)]
pub(crate) fn test_vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_booleans_name_their_variable() {
        assert_eq!(parse_number("N", None, 7, 1..=9), Ok(7));
        assert_eq!(parse_number("N", Some(" 9 "), 7, 1..=9), Ok(9));
        assert_eq!(
            parse_number("N", Some("10"), 7, 1..=9)
                .unwrap_err()
                .to_string(),
            "invalid N: '10' is not a whole number from 1 to 9"
        );
        assert_eq!(parse_bool("B", Some("T")), Ok(Some(true)));
        assert_eq!(parse_bool("B", Some("no")), Ok(Some(false)));
        assert_eq!(parse_bool("B", None), Ok(None));
        assert_eq!(
            parse_bool("B", Some("maybe")).unwrap_err().to_string(),
            "invalid B: 'maybe' is not true or false"
        );
    }

    #[test]
    fn kv_paths_and_text_values_are_checked() {
        assert_eq!(kv_path("P", None, "pki/ca"), Ok("pki/ca".to_owned()));
        for bad in ["", "/pki", "pki//ca", "pki/.ca"] {
            assert_eq!(
                kv_path("P", Some(bad.to_owned()), "pki/ca")
                    .unwrap_err()
                    .to_string(),
                format!("invalid P: '{bad}' is not a relative KV path such as pki/ca")
            );
        }
        assert_eq!(
            non_blank("T", Some("  ".to_owned()), "x")
                .unwrap_err()
                .to_string(),
            "invalid T: must not be blank"
        );
        assert_eq!(non_blank("T", None, "x"), Ok("x".to_owned()));
    }

    #[test]
    fn dns_labels() {
        for good in ["a", "nas", "homelab-2", &"x".repeat(63)] {
            assert!(dns_label(good), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", &"x".repeat(64)] {
            assert!(!dns_label(bad), "{bad}");
        }
    }
}
