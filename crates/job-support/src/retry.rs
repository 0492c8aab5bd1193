//! One retry policy for every request the jobs send, to Vault and to the Kubernetes API: a
//! bounded number of attempts, exponential backoff with jitter between them, and only for
//! failures that can pass by themselves. What can pass is decided from the HTTP status (or the
//! absence of an answer), never from the wording of a message: [`transient_status`] is the rule
//! both peers share, and each caller adds what is particular to its peer.

use std::cell::Cell;
use std::fmt::Display;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tracing::warn;

/// How often, and how patiently, one request is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 0 counts as 1.
    pub max_attempts: u32,
    /// The wait before the second attempt. It doubles for each later one, plus a random share
    /// of itself, so that jobs started together do not come back together.
    pub first_delay: Duration,
    /// The longest wait between two attempts, before the random share.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// `max_attempts` attempts, waiting 200 ms, then 400 ms, ... up to 3 s between them.
    #[must_use]
    pub const fn new(max_attempts: u32) -> Self {
        Self {
            max_attempts,
            first_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(3),
        }
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.first_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
    }
}

/// Whether an HTTP status can pass if the same request is sent again: 429 (rate limited, or a
/// standby's answer to a health check) and the 5xx of a server restarting, sealed, electing a
/// leader, or a proxy in front of one. 501 (Not Implemented) and 505 (HTTP Version Not
/// Supported) say the server will never do it, and every other 4xx that the request itself is
/// refused: those are never retried.
#[must_use]
pub const fn transient_status(status: u16) -> bool {
    status == 429 || (status >= 500 && status != 501 && status != 505)
}

/// A request that failed for good: its last error and how many attempts were made.
#[derive(Debug)]
pub struct GaveUp<E> {
    /// The error of the last attempt.
    pub error: E,
    /// Attempts made, the first included.
    pub attempts: u32,
    /// Whether the last error could have passed: the attempts ran out, rather than the peer
    /// refusing the request.
    pub exhausted: bool,
}

impl<E> GaveUp<E> {
    /// ` (after 3 attempts)` when the attempts ran out, else nothing: the end of a message.
    #[must_use]
    pub fn attempts_note(&self) -> String {
        match (self.exhausted, self.attempts) {
            (false, _) => String::new(),
            (true, 1) => " (after 1 attempt)".to_owned(),
            (true, n) => format!(" (after {n} attempts)"),
        }
    }
}

/// What one request is, for the log line of each retry.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The peer: `Vault`, `Kubernetes`.
    pub peer: &'static str,
    /// `read`, `write`, `apply`, `log in to`.
    pub operation: &'a str,
    /// What it is done to: `secret/istio/ca`, `istio-system/cacerts`.
    pub object: &'a str,
}

/// Sends `attempt` until it succeeds, fails in a way `transient` says cannot pass, or the
/// policy's attempts run out. Each retry is logged as a warning with the error and the wait.
pub async fn retry<T, E, F, Fut>(
    policy: RetryPolicy,
    request: Request<'_>,
    transient: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<T, GaveUp<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    let attempts = Cell::new(0_u32);
    let result = (|| {
        attempts.set(attempts.get() + 1);
        attempt()
    })
    .retry(policy.backoff())
    .when(|e| transient(e))
    .notify(|error, wait| {
        warn!(
            operation = request.operation,
            object = request.object,
            attempt = attempts.get(),
            retry_in_ms = wait.as_millis() as u64,
            error = %error,
            "{} request failed; retrying",
            request.peer
        );
    })
    .await;
    result.map_err(|error| GaveUp {
        exhausted: transient(&error),
        error,
        attempts: attempts.get(),
    })
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    const REQUEST: Request<'static> = Request {
        peer: "Vault",
        operation: "read",
        object: "secret/istio/ca",
    };

    fn quick(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
        }
    }

    /// Answers the given statuses in turn (0: success), recording each attempt.
    async fn scripted(policy: RetryPolicy, answers: &[u16]) -> (Result<u16, GaveUp<u16>>, usize) {
        let sent = RefCell::new(0_usize);
        let result = retry(
            policy,
            REQUEST,
            |status: &u16| transient_status(*status),
            || {
                let n = *sent.borrow();
                *sent.borrow_mut() += 1;
                let answer = answers[n.min(answers.len() - 1)];
                async move {
                    if answer == 0 {
                        Ok(n as u16)
                    } else {
                        Err(answer)
                    }
                }
            },
        )
        .await;
        (result, sent.into_inner())
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let (result, sent) = scripted(quick(5), &[503, 500, 429, 0]).await;
        assert_eq!(result.unwrap(), 3);
        assert_eq!(sent, 4);
    }

    #[tokio::test]
    async fn attempts_are_bounded() {
        let (result, sent) = scripted(quick(3), &[503]).await;
        let gave_up = result.unwrap_err();
        assert_eq!(
            (gave_up.error, gave_up.attempts, gave_up.exhausted),
            (503, 3, true)
        );
        assert_eq!(sent, 3);
        assert_eq!(gave_up.attempts_note(), " (after 3 attempts)");

        let (result, sent) = scripted(quick(1), &[502]).await;
        assert_eq!(result.unwrap_err().attempts_note(), " (after 1 attempt)");
        assert_eq!(sent, 1);
        // 0 attempts configured still sends the request once.
        assert_eq!(scripted(quick(0), &[502]).await.1, 1);
    }

    #[tokio::test]
    async fn a_refusal_is_never_retried() {
        for status in [400, 401, 403, 404, 409, 412] {
            let (result, sent) = scripted(quick(5), &[503, status, 0]).await;
            let gave_up = result.unwrap_err();
            assert_eq!((gave_up.error, gave_up.exhausted), (status, false));
            assert_eq!(sent, 2, "{status} was retried");
            assert_eq!(gave_up.attempts_note(), "");
        }
    }

    #[test]
    fn the_backoff_grows_and_stays_bounded() {
        use backon::BackoffBuilder;
        let waits: Vec<Duration> = RetryPolicy::new(8).backoff().build().collect();
        assert_eq!(waits.len(), 7, "one wait between each two of 8 attempts");
        for (n, wait) in waits.iter().enumerate() {
            // Jitter adds up to the wait itself on top of 200 ms * 2^n, capped at 3 s.
            let base = Duration::from_millis(200 * 2_u64.pow(n as u32)).min(Duration::from_secs(3));
            assert!(*wait >= base && *wait <= base * 2, "wait {n}: {wait:?}");
        }
    }

    #[test]
    fn statuses_that_can_pass() {
        for status in [429, 500, 502, 503, 504] {
            assert!(transient_status(status), "{status}");
        }
        for status in [200, 307, 400, 401, 403, 404, 405, 409, 412, 422, 501, 505] {
            assert!(!transient_status(status), "{status}");
        }
    }
}
