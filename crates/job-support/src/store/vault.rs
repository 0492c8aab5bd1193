//! Vault (or OpenBao) as the secret store: log in with the configured method, then KV v2
//! reads and check-and-set writes. Every request has a timeout; connection failures and 5xx
//! answers are retried a bounded number of times with backoff, 4xx answers never.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tracing::{debug, warn};
use url::Url;
use vaultrs::api::kv2::requests::{ReadSecretRequest, SetSecretRequestOptions};
use vaultrs::client::{Client, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use super::{KvEntry, SecretData, SecretStore, StoreError, WriteOutcome, check_path};

/// How the job proves who it is to Vault.
#[derive(Clone, PartialEq, Eq)]
pub enum VaultAuth {
    /// A token given directly (`VAULT_TOKEN`).
    Token(Zeroizing<String>),
    /// The Kubernetes auth method: Vault checks the service-account token with the cluster's
    /// TokenReview API.
    Kubernetes {
        /// Auth mount, such as `kubernetes` or `kubernetes-nas`.
        mount: String,
        /// Role name.
        role: String,
        /// File holding the service-account token.
        token_path: PathBuf,
    },
    /// The JWT auth method: Vault checks the service-account token's signature itself, for
    /// clusters whose API server Vault cannot reach.
    Jwt {
        /// Auth mount, such as `jwt` or `jwt-nas`.
        mount: String,
        /// Role name.
        role: String,
        /// File holding the service-account token.
        token_path: PathBuf,
    },
}

impl fmt::Debug for VaultAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token(<redacted>)"),
            Self::Kubernetes {
                mount,
                role,
                token_path,
            }
            | Self::Jwt {
                mount,
                role,
                token_path,
            } => f
                .debug_struct(self.method())
                .field("mount", mount)
                .field("role", role)
                .field("token_path", token_path)
                .finish(),
        }
    }
}

impl VaultAuth {
    /// The method's name as configuration spells it.
    #[must_use]
    pub fn method(&self) -> &'static str {
        match self {
            Self::Token(_) => "token",
            Self::Kubernetes { .. } => "kubernetes",
            Self::Jwt { .. } => "jwt",
        }
    }
}

/// Everything needed to reach and log in to Vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultSettings {
    /// `VAULT_ADDR`.
    pub address: Url,
    /// `VAULT_CACERT`: a PEM file of CA certificates to trust for Vault's TLS certificate.
    pub ca_cert: Option<PathBuf>,
    /// `VAULT_NAMESPACE` (Vault Enterprise and OpenBao namespaces).
    pub namespace: Option<String>,
    /// `VAULT_SKIP_VERIFY`: turn off TLS verification. Logged as a warning.
    pub skip_verify: bool,
    /// Login method.
    pub auth: VaultAuth,
    /// KV v2 mount.
    pub kv_mount: String,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Attempts per request for failures that can pass (connection, 5xx).
    pub max_attempts: u32,
}

/// A logged-in Vault client bound to one KV v2 mount.
pub struct VaultStore {
    client: VaultClient,
    settings: VaultSettings,
}

impl fmt::Debug for VaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultStore")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Installs ring as the process-wide rustls provider (the one crypto backend). Idempotent.
pub fn install_crypto_provider() {
    // Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl VaultStore {
    /// Builds the client and logs in. The token, JWT and Vault's answer never reach a log.
    pub async fn connect(settings: VaultSettings) -> Result<Self, StoreError> {
        install_crypto_provider();
        if settings.skip_verify {
            warn!(address = %settings.address, "TLS verification of Vault is turned off (VAULT_SKIP_VERIFY)");
        }
        let login_path = match &settings.auth {
            VaultAuth::Token(_) => "auth/token".to_owned(),
            VaultAuth::Kubernetes { mount, .. } | VaultAuth::Jwt { mount, .. } => {
                format!("auth/{mount}")
            }
        };
        let unavailable = |detail: String| StoreError::Unavailable {
            operation: "log in to",
            path: login_path.clone(),
            detail,
        };
        let mut builder = VaultClientSettingsBuilder::default();
        builder
            .address(settings.address.as_str())
            .verify(!settings.skip_verify)
            .ca_certs(
                settings
                    .ca_cert
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            )
            .identity(None)
            .timeout(Some(settings.request_timeout))
            .namespace(settings.namespace.clone())
            .token(match &settings.auth {
                VaultAuth::Token(token) => token.as_str(),
                _ => "",
            });
        let client_settings = builder
            .build()
            .map_err(|e| unavailable(format!("invalid client settings: {e}")))?;
        let mut client =
            VaultClient::new(client_settings).map_err(|e| unavailable(describe(&e).1))?;

        let (role, mount, token_path) = match &settings.auth {
            VaultAuth::Token(_) => {
                return Ok(Self { client, settings });
            }
            VaultAuth::Kubernetes {
                mount,
                role,
                token_path,
            }
            | VaultAuth::Jwt {
                mount,
                role,
                token_path,
            } => (role.clone(), mount.clone(), token_path.clone()),
        };
        let jwt = Zeroizing::new(std::fs::read_to_string(&token_path).map_err(|e| {
            StoreError::Denied {
                operation: "log in to",
                path: login_path.clone(),
                detail: format!(
                    "cannot read the service-account token {}: {e}",
                    token_path.display()
                ),
                login: true,
            }
        })?);
        let jwt = jwt.trim().to_owned();
        let jwt = Zeroizing::new(jwt);
        let is_kubernetes = matches!(settings.auth, VaultAuth::Kubernetes { .. });
        let auth = retry(settings.max_attempts, "log in to", &login_path, || async {
            if is_kubernetes {
                vaultrs::auth::kubernetes::login(&client, &mount, &role, &jwt).await
            } else {
                vaultrs::auth::oidc::login(&client, &mount, &jwt, Some(role.clone())).await
            }
        })
        .await
        .map_err(|failure| match failure {
            Failed::Final(detail) => StoreError::Denied {
                operation: "log in to",
                path: login_path.clone(),
                detail: format!("role '{role}': {detail}"),
                login: true,
            },
            Failed::Exhausted(detail) => unavailable(detail),
        })?;
        client.set_token(&auth.client_token);
        debug!(method = settings.auth.method(), role = %role, policies = ?auth.policies, "logged in to Vault");
        Ok(Self { client, settings })
    }

    fn label(&self, path: &str) -> String {
        format!("{}/{path}", self.settings.kv_mount)
    }
}

impl SecretStore for VaultStore {
    fn describe(&self) -> String {
        format!(
            "vault {} mount {}",
            self.settings.address, self.settings.kv_mount
        )
    }

    async fn read(&self, path: &str) -> Result<Option<KvEntry>, StoreError> {
        let label = self.label(path);
        check_path(path).map_err(|detail| StoreError::Malformed {
            operation: "read",
            path: label.clone(),
            detail,
        })?;
        let mount = &self.settings.kv_mount;
        let response = retry(self.settings.max_attempts, "read", &label, || async {
            let endpoint = ReadSecretRequest::builder()
                .mount(mount)
                .path(path)
                .build()
                .map_err(|e| ClientError::RestClientError {
                    source: rustify_build_error(&e.to_string()),
                })?;
            match vaultrs::api::exec_with_result(&self.client, endpoint).await {
                Ok(response) => Ok(Some(response)),
                // KV v2 answers a missing entry with 404 and no errors; a 404 with errors is
                // Vault saying there is no such mount ("no handler for route").
                Err(ClientError::APIError { code: 404, errors }) if errors.is_empty() => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(|f| f.into_store_error("read", &label))?;
        let Some(response) = response else {
            return Ok(None);
        };
        let data = string_fields(response.data).map_err(|detail| StoreError::Malformed {
            operation: "read",
            path: label.clone(),
            detail,
        })?;
        Ok(Some(KvEntry {
            data,
            version: response.metadata.version,
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let label = self.label(prefix);
        check_path(prefix).map_err(|detail| StoreError::Malformed {
            operation: "list",
            path: label.clone(),
            detail,
        })?;
        let mount = &self.settings.kv_mount;
        let keys = retry(self.settings.max_attempts, "list", &label, || async {
            match vaultrs::kv2::list(&self.client, mount, prefix).await {
                Ok(keys) => Ok(keys),
                Err(ClientError::APIError { code: 404, errors }) if errors.is_empty() => {
                    Ok(Vec::new())
                }
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(|f| f.into_store_error("list", &label))?;
        // Sub-folders end in '/': they are not entries.
        let mut names: Vec<String> = keys.into_iter().filter(|k| !k.ends_with('/')).collect();
        names.sort();
        Ok(names)
    }

    async fn write(
        &self,
        path: &str,
        data: &SecretData,
        cas: u64,
    ) -> Result<WriteOutcome, StoreError> {
        let label = self.label(path);
        check_path(path).map_err(|detail| StoreError::Malformed {
            operation: "write",
            path: label.clone(),
            detail,
        })?;
        let cas32 = u32::try_from(cas).map_err(|_| StoreError::Malformed {
            operation: "write",
            path: label.clone(),
            detail: format!("version {cas} is beyond what Vault's check-and-set accepts"),
        })?;
        let mount = &self.settings.kv_mount;
        retry(self.settings.max_attempts, "write", &label, || async {
            let result = vaultrs::kv2::set_with_options(
                &self.client,
                mount,
                path,
                data.as_map(),
                SetSecretRequestOptions { cas: cas32 },
            )
            .await;
            match result {
                Ok(meta) => Ok(WriteOutcome::Written {
                    version: meta.version,
                }),
                Err(ClientError::APIError { code: 400, errors })
                    if errors.iter().any(|e| e.contains("check-and-set")) =>
                {
                    Ok(WriteOutcome::Conflict)
                }
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(|f| f.into_store_error("write", &label))
    }
}

fn rustify_build_error(detail: &str) -> rustify::errors::ClientError {
    rustify::errors::ClientError::GenericError {
        source: anyhow::anyhow!("cannot build the request: {detail}"),
    }
}

fn string_fields(data: Value) -> Result<SecretData, String> {
    let Value::Object(map) = data else {
        return Err("the entry's data is not an object".into());
    };
    let mut fields = BTreeMap::new();
    for (key, value) in map {
        match value {
            Value::String(s) => {
                fields.insert(key, s);
            }
            other => {
                return Err(format!(
                    "field '{key}' is a {}, not a string",
                    match other {
                        Value::Null => "null",
                        Value::Bool(_) => "boolean",
                        Value::Number(_) => "number",
                        Value::Array(_) => "list",
                        _ => "map",
                    }
                ));
            }
        }
    }
    Ok(fields.into_iter().collect())
}

enum Failed {
    /// A failure that retrying cannot fix (4xx): the detail.
    Final(String),
    /// Retries used up on failures that could have passed: the last detail.
    Exhausted(String),
}

impl Failed {
    fn into_store_error(self, operation: &'static str, path: &str) -> StoreError {
        match self {
            Self::Final(detail) if detail.starts_with("Vault answered 403") => StoreError::Denied {
                operation,
                path: path.to_owned(),
                detail,
                login: false,
            },
            Self::Final(detail) => StoreError::Refused {
                operation,
                path: path.to_owned(),
                detail,
            },
            Self::Exhausted(detail) => StoreError::Unavailable {
                operation,
                path: path.to_owned(),
                detail,
            },
        }
    }
}

/// Whether an error can pass, and what to say about it (Vault's `errors` array included).
fn describe(e: &ClientError) -> (bool, String) {
    match e {
        ClientError::APIError { code, errors } => {
            let detail = if errors.is_empty() {
                format!("Vault answered {code}")
            } else {
                format!("Vault answered {code}: {}", errors.join("; "))
            };
            (*code >= 500 || *code == 429, detail)
        }
        ClientError::RestClientError { source } => {
            use rustify::errors::ClientError as Rest;
            match source {
                Rest::ServerResponseError { code, content } => (
                    *code >= 500 || *code == 429,
                    format!(
                        "Vault answered {code}: {}",
                        content.as_deref().unwrap_or("").trim()
                    ),
                ),
                Rest::RequestError { source, .. } | Rest::ResponseError { source } => {
                    (true, format!("cannot reach Vault: {source:#}"))
                }
                other => (false, format!("{other}")),
            }
        }
        other => (false, other.to_string()),
    }
}

async fn retry<T, F, Fut>(
    max_attempts: u32,
    operation: &str,
    path: &str,
    mut attempt: F,
) -> Result<T, Failed>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let max_attempts = max_attempts.max(1);
    let mut delay = Duration::from_millis(200);
    for n in 1..=max_attempts {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) => {
                let (transient, detail) = describe(&e);
                if !transient {
                    return Err(Failed::Final(detail));
                }
                if n == max_attempts {
                    return Err(Failed::Exhausted(format!("{detail} (after {n} attempts)")));
                }
                warn!(operation, path, attempt = n, retry_in_ms = delay.as_millis() as u64, error = %detail, "Vault request failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(3));
            }
        }
    }
    Err(Failed::Exhausted("no attempt was made".into()))
}
