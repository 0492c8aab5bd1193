//! Exit codes, the same for every job, so a CronJob's failure reason shows in `kubectl get
//! pods` without reading logs: each failure class has its own code.

use std::process::ExitCode;

use crate::store::StoreError;
use crate::vars::ConfigError;

/// Why a job failed, as an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// 1: a failure with no better class (a bug, an I/O error outside the store).
    Other = 1,
    /// 2: a configuration variable is missing or invalid, including a `VAULT_ADDR` where no
    /// Vault answers and a `VAULT_KV_MOUNT` that is not a KV version 2 mount.
    Config = 2,
    /// 3: Vault refused the login (wrong role, token not accepted), or the token is invalid or
    /// expired.
    Auth = 3,
    /// 4: Vault (or the state directory) could not be reached, after retries.
    Unreachable = 4,
    /// 5: existing state is invalid, or its latest version is deleted; nothing was written.
    InvalidState = 5,
    /// 6: logged in, but the policy (or Kubernetes RBAC) refuses a read or write.
    Denied = 6,
    /// 7: the Kubernetes API refused an object (namespace missing, invalid object).
    Rejected = 7,
    /// 8: the run converged everything else, but left entries it cannot use as they were;
    /// each is named in the log and the report.
    Attention = 8,
}

impl Failure {
    /// Exit code documentation for `--help` and the README.
    pub const TABLE: &'static str = "\
EXIT CODES:
    0  done, or nothing to do
    1  unexpected failure
    2  configuration error (a variable is missing or invalid; VAULT_ADDR is not Vault;
       VAULT_KV_MOUNT is not a KV version 2 mount)
    3  Vault login refused, or the Vault token is invalid or expired
    4  Vault or the state directory unreachable, sealed or electing a leader (after
       bounded retries); the next run converges
    5  existing state is invalid, or its latest version is deleted (nothing was written)
    6  Vault policy or Kubernetes RBAC refuses a read or write
    7  the Kubernetes API refused an object (e.g. its namespace does not exist)
    8  done, but entries were left alone that an operator must look at (each named)
   10  plan: changes are pending (a run would make them); nothing was written";

    /// The class of an error chain: the first error in it that has a class.
    #[must_use]
    pub fn of(error: &anyhow::Error) -> Self {
        for cause in error.chain() {
            if let Some(e) = cause.downcast_ref::<StoreError>() {
                return e.failure();
            }
            if cause.downcast_ref::<ConfigError>().is_some() {
                return Self::Config;
            }
            if cause.downcast_ref::<InvalidState>().is_some() {
                return Self::InvalidState;
            }
            if let Some(e) = cause.downcast_ref::<Classified>() {
                return e.failure;
            }
        }
        Self::Other
    }
}

// Here rather than beside `StoreError`, so that the store does not depend on the exit codes.
impl StoreError {
    /// The exit code class of this failure.
    #[must_use]
    pub fn failure(&self) -> Failure {
        match self {
            Self::Unavailable { .. } => Failure::Unreachable,
            Self::Denied { login: true, .. } => Failure::Auth,
            Self::Denied { login: false, .. } => Failure::Denied,
            Self::Malformed { .. } | Self::Deleted { .. } => Failure::InvalidState,
            Self::Misconfigured { .. } => Failure::Config,
            Self::Refused { .. } => Failure::Other,
        }
    }
}

impl From<Failure> for ExitCode {
    fn from(failure: Failure) -> Self {
        ExitCode::from(failure as u8)
    }
}

/// Stored state that exists but fails verification. The job writes nothing and exits 5.
#[derive(Debug, thiserror::Error)]
#[error("invalid state at '{path}': {problem}")]
pub struct InvalidState {
    /// Mount and path, as `secret/istio/ca`.
    pub path: String,
    /// What is wrong, naming the field.
    pub problem: String,
}

/// An error a job has classified itself (for I/O outside the state store, such as the
/// Kubernetes API).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Classified {
    /// The exit code class.
    pub failure: Failure,
    /// What failed, on what.
    pub message: String,
}

/// Prints the error chain once, logs it, and maps it to the exit code.
#[must_use]
pub fn report(error: &anyhow::Error) -> ExitCode {
    let failure = Failure::of(error);
    tracing::error!(exit_code = failure as u8, "{error:#}");
    failure.into()
}
