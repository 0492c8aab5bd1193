//! When to renew a certificate: a pure function of the time, the certificate's validity and a
//! policy, so every job decides the same way and tests need no clock.

use time::{Duration, OffsetDateTime};

use crate::error::{PkiError, Result};

/// When a certificate counts as due for renewal. Either condition suffices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenewalPolicy {
    /// Renew once this fraction of the lifetime has passed (0 < f <= 1); cert-manager's
    /// default is two thirds.
    pub lifetime_fraction: Option<f64>,
    /// Renew once fewer than this many days are left.
    pub min_days_left: Option<u32>,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        Self {
            lifetime_fraction: Some(2.0 / 3.0),
            min_days_left: Some(30),
        }
    }
}

impl RenewalPolicy {
    /// Checks the fraction is in (0, 1].
    pub fn validate(&self) -> Result<()> {
        match self.lifetime_fraction {
            Some(f) if !(f > 0.0 && f <= 1.0) => Err(PkiError::InvalidParameter {
                name: "renewal lifetime fraction",
                reason: format!("must be greater than 0 and at most 1, got {f}"),
            }),
            _ => Ok(()),
        }
    }
}

/// Whether a certificate valid from `not_before` to `not_after` is due for renewal at `now`.
/// An expired certificate, or one whose validity is empty, is always due.
#[must_use]
pub fn renewal_due(
    now: OffsetDateTime,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    policy: &RenewalPolicy,
) -> bool {
    if now >= not_after || not_after <= not_before {
        return true;
    }
    let by_fraction = policy.lifetime_fraction.is_some_and(|fraction| {
        let lifetime = (not_after - not_before).as_seconds_f64();
        now >= not_before + Duration::seconds_f64(lifetime * fraction)
    });
    let by_days = policy
        .min_days_left
        .is_some_and(|days| not_after - now < Duration::days(i64::from(days)));
    by_fraction || by_days
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const START: OffsetDateTime = datetime!(2026-01-01 0:00 UTC);
    const END: OffsetDateTime = datetime!(2026-12-31 0:00 UTC);

    /// Not due at `before`, due at `after`, for a certificate valid from START to END.
    #[track_caller]
    fn assert_due_between(policy: &RenewalPolicy, before: OffsetDateTime, after: OffsetDateTime) {
        assert!(!renewal_due(before, START, END, policy), "due at {before}");
        assert!(renewal_due(after, START, END, policy), "not due at {after}");
    }

    #[test]
    fn fraction_of_lifetime() {
        let policy = RenewalPolicy {
            lifetime_fraction: Some(0.5),
            min_days_left: None,
        };
        assert_due_between(
            &policy,
            datetime!(2026-06-30 0:00 UTC),
            datetime!(2026-07-02 0:00 UTC),
        );
    }

    #[test]
    fn minimum_days_left() {
        let policy = RenewalPolicy {
            lifetime_fraction: None,
            min_days_left: Some(30),
        };
        assert_due_between(
            &policy,
            datetime!(2026-11-30 0:00 UTC),
            datetime!(2026-12-02 0:00 UTC),
        );
    }

    #[test]
    fn expired_or_empty_is_always_due() {
        let never = RenewalPolicy {
            lifetime_fraction: None,
            min_days_left: None,
        };
        assert!(!renewal_due(
            datetime!(2026-06-01 0:00 UTC),
            START,
            END,
            &never
        ));
        assert!(renewal_due(
            datetime!(2027-01-01 0:00 UTC),
            START,
            END,
            &never
        ));
        assert!(renewal_due(START, END, START, &never));
    }

    #[test]
    fn fraction_out_of_range_is_refused() {
        for f in [0.0, -1.0, 1.5, f64::NAN] {
            let policy = RenewalPolicy {
                lifetime_fraction: Some(f),
                min_days_left: None,
            };
            assert!(policy.validate().is_err(), "{f} accepted");
        }
        assert!(RenewalPolicy::default().validate().is_ok());
    }
}
