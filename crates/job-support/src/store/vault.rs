//! Vault (or OpenBao) as the secret store: log in with the configured method, then KV v2
//! reads and check-and-set writes. Every request has a timeout and goes through the shared
//! retry policy ([`crate::retry`]); which answers can pass is decided here, from the status
//! and, for Vault's own answers, what OpenBao's source says they mean.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustify::enums::{RequestMethod, RequestType, ResponseType};
use serde_json::Value;
use tracing::{debug, warn};
use url::Url;
use vaultrs::api::kv2::requests::{ReadSecretRequest, SetSecretRequestOptions};
use vaultrs::api::kv2::responses::ReadSecretResponse;
use vaultrs::client::{Client, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use super::{EntryVersion, KvEntry, SecretData, SecretStore, StoreError, WriteOutcome, check_path};
use crate::retry::{GaveUp, Request, RetryPolicy, retry, transient_status};

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
    /// Per path, the lowest version a read may still answer: the highest this process has
    /// read or written, or one past the version a check-and-set write found outdated. See
    /// [`VaultStore::read`].
    floors: Mutex<HashMap<String, u64>>,
    /// Set once the mount is known to be KV version 2.
    mount_confirmed: AtomicBool,
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
        let client = VaultClient::new(client_settings)
            .map_err(|e| unavailable(format!("cannot build the Vault client: {e}")))?;
        let mut store = Self {
            client,
            settings,
            floors: Mutex::new(HashMap::new()),
            mount_confirmed: AtomicBool::new(false),
        };

        let (role, mount, token_path) = match &store.settings.auth {
            // A token needs no login; an invalid one shows at the first request.
            VaultAuth::Token(_) => return Ok(store),
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
        let jwt = Zeroizing::new(jwt.trim().to_owned());
        let is_kubernetes = matches!(store.settings.auth, VaultAuth::Kubernetes { .. });
        let client = &store.client;
        let auth = store
            .send("log in to", &login_path, || async {
                if is_kubernetes {
                    vaultrs::auth::kubernetes::login(client, &mount, &role, &jwt).await
                } else {
                    vaultrs::auth::oidc::login(client, &mount, &jwt, Some(role.clone())).await
                }
                .map_err(Attempt::of)
            })
            .await
            .map_err(|gave_up| match &gave_up.error {
                _ if gave_up.exhausted => Self::failed("log in to", &login_path, &gave_up),
                Attempt::Foreign { .. } => store.not_vault("log in to", &login_path, &gave_up),
                Attempt::Vault { .. } => StoreError::Denied {
                    operation: "log in to",
                    path: login_path.clone(),
                    detail: format!("role '{role}': {}", gave_up.error),
                    login: true,
                },
                _ => Self::failed("log in to", &login_path, &gave_up),
            })?;
        store.client.set_token(&auth.client_token);
        debug!(method = store.settings.auth.method(), role = %role, policies = ?auth.policies, "logged in to Vault");
        Ok(store)
    }

    fn label(&self, path: &str) -> String {
        format!("{}/{path}", self.settings.kv_mount)
    }

    /// Sends one request under the retry policy.
    async fn send<T, F, Fut>(
        &self,
        operation: &str,
        object: &str,
        attempt: F,
    ) -> Result<T, GaveUp<Attempt>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Attempt>>,
    {
        retry(
            RetryPolicy::new(self.settings.max_attempts),
            Request {
                peer: "Vault",
                operation,
                object,
            },
            Attempt::can_pass,
            attempt,
        )
        .await
    }

    /// The store error for a KV request that failed for good.
    async fn kv_failure(
        &self,
        operation: &'static str,
        label: &str,
        gave_up: GaveUp<Attempt>,
    ) -> StoreError {
        match &gave_up.error {
            _ if gave_up.exhausted => Self::failed(operation, label, &gave_up),
            Attempt::Vault { status: 403, .. } => self.denied(operation, label, &gave_up).await,
            // KV v2 answers a missing entry with 404 and no errors; a 404 with errors is Vault
            // saying no route matches: no such mount, or a mount of another engine.
            Attempt::Vault {
                status: 404,
                errors,
            } if !errors.is_empty() => match self.confirm_kv2_mount().await {
                Err(wrong_engine) => wrong_engine,
                Ok(()) => StoreError::Misconfigured {
                    variable: "VAULT_KV_MOUNT",
                    problem: format!(
                        "'{mount}' is not a secrets engine mount on {address} ({operation} \
                         '{label}': {error}); enable KV version 2 there (`bao secrets enable \
                         -path={mount} kv-v2`) or name the right mount",
                        mount = self.settings.kv_mount,
                        address = self.settings.address,
                        error = gave_up.error,
                    ),
                },
            },
            Attempt::Foreign { .. } => self.not_vault(operation, label, &gave_up),
            _ => Self::failed(operation, label, &gave_up),
        }
    }

    fn failed(operation: &'static str, label: &str, gave_up: &GaveUp<Attempt>) -> StoreError {
        let detail = format!("{}{}", gave_up.error, gave_up.attempts_note());
        let path = label.to_owned();
        if gave_up.exhausted {
            StoreError::Unavailable {
                operation,
                path,
                detail,
            }
        } else {
            StoreError::Refused {
                operation,
                path,
                detail,
            }
        }
    }

    fn not_vault(&self, operation: &str, label: &str, gave_up: &GaveUp<Attempt>) -> StoreError {
        StoreError::Misconfigured {
            variable: "VAULT_ADDR",
            problem: format!(
                "{} does not answer as Vault or OpenBao: {operation} '{label}': {}",
                self.settings.address, gave_up.error
            ),
        }
    }

    /// Vault answers 403 "permission denied" alike for a policy that does not allow a request
    /// and for a token it does not know (expired, revoked, mistyped): OpenBao's
    /// `fetchACLTokenEntryAndEntity` (`internal/vault/request_handling.go`) returns the same
    /// `ErrPermissionDenied` for a missing token entry as the ACL check does. Telling them
    /// apart takes one question every valid token may ask, `auth/token/lookup-self` (granted
    /// by Vault's default policy): refused too, the token itself is not accepted.
    async fn denied(
        &self,
        operation: &'static str,
        label: &str,
        gave_up: &GaveUp<Attempt>,
    ) -> StoreError {
        let lookup = self
            .send("look up", "auth/token/lookup-self", || async {
                vaultrs::api::exec_with_result(
                    &self.client,
                    raw_get("auth/token/lookup-self".into()),
                )
                .await
                .map_err(Attempt::of)
            })
            .await;
        let token_refused = matches!(
            lookup,
            Err(GaveUp {
                error: Attempt::Vault { status: 403, .. },
                exhausted: false,
                ..
            })
        );
        let detail = if token_refused {
            format!(
                "{}; the token itself is not accepted (invalid, expired or revoked): Vault \
                 refuses its auth/token/lookup-self too",
                gave_up.error
            )
        } else {
            gave_up.error.to_string()
        };
        StoreError::Denied {
            operation,
            path: label.to_owned(),
            detail,
            login: token_refused,
        }
    }

    /// KV v2 and KV v1 both answer a missing entry with 404 and no errors, and a KV v1 mount
    /// takes `<mount>/data/<path>` for a key of its own: a v1 mount named as the KV mount would
    /// read as empty and then store the entries where no one looks. Before anything is taken
    /// as absent, the mount's type is asked once, the way the Vault CLI's `kv` commands do
    /// (`sys/internal/ui/mounts/<mount>`, answered to any token with a capability on the
    /// mount).
    async fn confirm_kv2_mount(&self) -> Result<(), StoreError> {
        if self.mount_confirmed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mount = &self.settings.kv_mount;
        let path = format!("sys/internal/ui/mounts/{mount}");
        let answer = self
            .send("read", &path, || async {
                vaultrs::api::exec_with_result(&self.client, raw_get(path.clone()))
                    .await
                    .map_err(Attempt::of)
            })
            .await;
        let info = match answer {
            Ok(info) => info,
            Err(gave_up) if gave_up.exhausted => return Err(Self::failed("read", &path, &gave_up)),
            Err(
                gave_up @ GaveUp {
                    error: Attempt::Foreign { .. },
                    ..
                },
            ) => {
                return Err(self.not_vault("read", &path, &gave_up));
            }
            // Not allowed to ask, or an older server: the entry's own answer stands.
            Err(_) => return Ok(()),
        };
        let kind = info["type"].as_str().unwrap_or_default();
        let version = info["options"]["version"].as_str().unwrap_or("1");
        let address = &self.settings.address;
        let problem = match (kind, version) {
            ("kv", "2") => {
                self.mount_confirmed.store(true, Ordering::Relaxed);
                return Ok(());
            }
            ("kv", _) => format!(
                "'{mount}' on {address} is a KV version 1 mount; the jobs keep versioned entries \
                 written with check-and-set, which needs KV version 2 (`bao kv enable-versioning \
                 {mount}`, or name a KV version 2 mount)"
            ),
            ("", _) => return Ok(()),
            (other, _) => {
                format!("'{mount}' on {address} is a '{other}' secrets engine, not KV version 2")
            }
        };
        Err(StoreError::Misconfigured {
            variable: "VAULT_KV_MOUNT",
            problem,
        })
    }

    fn floor(&self, path: &str) -> u64 {
        self.floors
            .lock()
            .map_or(0, |floors| floors.get(path).copied().unwrap_or(0))
    }

    fn raise_floor(&self, path: &str, version: u64) {
        if let Ok(mut floors) = self.floors.lock() {
            let floor = floors.entry(path.to_owned()).or_default();
            *floor = (*floor).max(version);
        }
    }
}

impl SecretStore for VaultStore {
    fn describe(&self) -> String {
        format!(
            "vault {} mount {}",
            self.settings.address, self.settings.kv_mount
        )
    }

    /// Reads are monotonic within a run: since OpenBao 2.5, standby nodes of a Raft cluster
    /// answer reads themselves ("Horizontal scalability" in OpenBao's `website/content/docs/concepts/ha.mdx`),
    /// and one that has not applied the latest writes yet answers an older version, or none.
    /// An answer older than a version this process has already seen, or than a check-and-set
    /// conflict proved to exist, is such a stale answer: it is retried like any answer that
    /// can pass, never taken as the entry's state.
    async fn read(&self, path: &str) -> Result<Option<KvEntry>, StoreError> {
        let label = self.label(path);
        check_path(path).map_err(|detail| StoreError::Malformed {
            operation: "read",
            path: label.clone(),
            detail,
        })?;
        let mount = &self.settings.kv_mount;
        let floor = self.floor(path);
        let answer = self
            .send("read", &label, || async {
                let endpoint = ReadSecretRequest::builder()
                    .mount(mount)
                    .path(path)
                    .build()
                    .map_err(|e| Attempt::Unexpected(format!("cannot build the request: {e}")))?;
                let answer = match vaultrs::api::exec_with_result(&self.client, endpoint).await {
                    Ok(response) => KvRead::Entry(response),
                    Err(ClientError::APIError { code: 404, errors }) if errors.is_empty() => {
                        KvRead::Absent
                    }
                    Err(e) => match DeletedVersion::of(&e) {
                        Some(deleted) => KvRead::Deleted(deleted),
                        None => return Err(Attempt::of(e)),
                    },
                };
                let seen = match &answer {
                    KvRead::Entry(response) => Some(response.metadata.version),
                    KvRead::Deleted(deleted) => Some(deleted.version),
                    KvRead::Absent => None,
                };
                if seen.unwrap_or(0) < floor {
                    return Err(Attempt::Stale { seen, floor });
                }
                Ok(answer)
            })
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(gave_up) => return Err(self.kv_failure("read", &label, gave_up).await),
        };
        let response = match answer {
            KvRead::Entry(response) => response,
            KvRead::Absent => {
                self.confirm_kv2_mount().await?;
                return Ok(None);
            }
            KvRead::Deleted(deleted) => {
                return Err(StoreError::Deleted {
                    problem: deleted.problem(mount, path),
                    path: label,
                    version: deleted.version,
                });
            }
        };
        self.raise_floor(path, response.metadata.version);
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

    async fn read_version(
        &self,
        path: &str,
        version: u64,
    ) -> Result<Option<SecretData>, StoreError> {
        let label = self.label(path);
        check_path(path).map_err(|detail| StoreError::Malformed {
            operation: "read",
            path: label.clone(),
            detail,
        })?;
        let mount = &self.settings.kv_mount;
        let answer = self
            .send("read", &label, || async {
                let endpoint = ReadSecretRequest::builder()
                    .mount(mount)
                    .path(path)
                    .version(Some(version))
                    .build()
                    .map_err(|e| Attempt::Unexpected(format!("cannot build the request: {e}")))?;
                match vaultrs::api::exec_with_result(&self.client, endpoint).await {
                    Ok(response) => Ok(Some(response)),
                    // A version that never was, or was deleted or destroyed: KV v2 answers 404
                    // (with the version's metadata when it existed).
                    Err(ClientError::APIError { code: 404, errors }) if errors.is_empty() => {
                        Ok(None)
                    }
                    Err(e) if DeletedVersion::of(&e).is_some() => Ok(None),
                    Err(e) => Err(Attempt::of(e)),
                }
            })
            .await;
        let response = match answer {
            Ok(response) => response,
            Err(gave_up) => return Err(self.kv_failure("read", &label, gave_up).await),
        };
        response
            .map(|r| {
                string_fields(r.data).map_err(|detail| StoreError::Malformed {
                    operation: "read",
                    path: label.clone(),
                    detail,
                })
            })
            .transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let label = self.label(prefix);
        check_path(prefix).map_err(|detail| StoreError::Malformed {
            operation: "list",
            path: label.clone(),
            detail,
        })?;
        let mount = &self.settings.kv_mount;
        let keys = self
            .send("list", &label, || async {
                match vaultrs::kv2::list(&self.client, mount, prefix).await {
                    Ok(keys) => Ok(Some(keys)),
                    Err(ClientError::APIError { code: 404, errors }) if errors.is_empty() => {
                        Ok(None)
                    }
                    Err(e) => Err(Attempt::of(e)),
                }
            })
            .await;
        let keys = match keys {
            Ok(Some(keys)) => keys,
            Ok(None) => {
                self.confirm_kv2_mount().await?;
                Vec::new()
            }
            Err(gave_up) => return Err(self.kv_failure("list", &label, gave_up).await),
        };
        // Sub-folders end in '/': they are not entries.
        let mut names: Vec<String> = keys.into_iter().filter(|k| !k.ends_with('/')).collect();
        names.sort();
        Ok(names)
    }

    /// One LIST of `<mount>/detailed-metadata/<prefix>`: OpenBao (since 2.x) answers it with
    /// every key's metadata (`current_version`, `created_time`, `versions`) under `key_info`
    /// ("List secrets with detailed metadata", <https://openbao.org/api-docs/secret/kv/kv-v2/>;
    /// checked against `bao` 2.7.2: a prefix with no keys answers 404 with no errors).
    /// `HashiCorp` Vault has no such path: its KV v2 LIST on `metadata/` returns key names only
    /// (<https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v2#list-secrets>), and an
    /// unknown path answers 404 or 405 with an error. Those answers, and a policy that does not
    /// grant `list` on the path (403), give `Ok(None)`: the caller reads the entries instead.
    async fn list_versions(
        &self,
        prefix: &str,
    ) -> Result<Option<BTreeMap<String, EntryVersion>>, StoreError> {
        let label = self.label(prefix);
        check_path(prefix).map_err(|detail| StoreError::Malformed {
            operation: "list",
            path: label.clone(),
            detail,
        })?;
        let endpoint_path = format!("{}/detailed-metadata/{prefix}", self.settings.kv_mount);
        let answer = self
            .send("list", &label, || async {
                match vaultrs::api::exec_with_result(
                    &self.client,
                    RawRequest::<DetailedListing>::new(endpoint_path.clone(), true),
                )
                .await
                {
                    Ok(listing) => Ok(DetailedAnswer::Listed(listing)),
                    Err(ClientError::APIError { code: 404, errors }) if errors.is_empty() => {
                        Ok(DetailedAnswer::Listed(DetailedListing::default()))
                    }
                    Err(ClientError::APIError {
                        code: code @ 403..=405,
                        errors,
                    }) => Ok(DetailedAnswer::Unsupported(format!(
                        "{code}: {}",
                        errors.join("; ")
                    ))),
                    Err(e) => Err(Attempt::of(e)),
                }
            })
            .await;
        let listing = match answer {
            Ok(DetailedAnswer::Listed(listing)) => listing,
            Ok(DetailedAnswer::Unsupported(answer)) => {
                debug!(path = %label, answer = %answer,
                       "the store does not list entries with their versions; reading them instead");
                return Ok(None);
            }
            Err(gave_up) => return Err(self.kv_failure("list", &label, gave_up).await),
        };
        let mut versions = BTreeMap::new();
        for (name, info) in listing.key_info {
            // Sub-folders end in '/': they are not entries.
            if name.ends_with('/') {
                continue;
            }
            let current = info.versions.get(&info.current_version.to_string());
            let deleted = current.is_some_and(|v| v.destroyed || !v.deletion_time.is_empty());
            versions.insert(
                name,
                EntryVersion {
                    version: info.current_version,
                    created: info.created_time,
                    deleted,
                },
            );
        }
        Ok(Some(versions))
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
        if cas == 0 {
            // Create-only writes follow a read that found nothing; make sure that nothing was
            // not a KV version 1 mount (a no-op once confirmed).
            self.confirm_kv2_mount().await?;
        }
        let mount = &self.settings.kv_mount;
        let outcome = self
            .send("write", &label, || async {
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
                    // KV v2's answer when the entry is not at the version named: 400 with
                    // "check-and-set parameter did not match the current version"
                    // (OpenBao `internal/builtin/logical/kv/path_data.go`). A retried write that Vault had
                    // in fact applied before the connection dropped lands here too, and the
                    // caller re-reads and finds its own entry.
                    Err(ClientError::APIError { code: 400, errors })
                        if errors.iter().any(|e| e.contains("check-and-set")) =>
                    {
                        Ok(WriteOutcome::Conflict)
                    }
                    Err(e) => Err(Attempt::of(e)),
                }
            })
            .await;
        match outcome {
            Ok(WriteOutcome::Written { version }) => {
                self.raise_floor(path, version);
                Ok(WriteOutcome::Written { version })
            }
            Ok(WriteOutcome::Conflict) => {
                // The entry is past `cas`: versions only grow, so a later read must show more.
                self.raise_floor(path, cas + 1);
                Ok(WriteOutcome::Conflict)
            }
            Err(gave_up) => Err(self.kv_failure("write", &label, gave_up).await),
        }
    }

    /// `PUT <mount>/destroy/<path>` with `{"versions": [...]}`. Vault skips versions that do
    /// not exist and answers 204 for a path that does not exist ("If no key exists at the
    /// path, no action is taken": Vault's `kv destroy` documentation; OpenBao
    /// `internal/builtin/logical/kv/path_destroy.go`), so a retry after a crash is harmless.
    async fn destroy_versions(&self, path: &str, versions: &[u64]) -> Result<(), StoreError> {
        let label = self.label(path);
        check_path(path).map_err(|detail| StoreError::Malformed {
            operation: "destroy versions of",
            path: label.clone(),
            detail,
        })?;
        if versions.is_empty() {
            return Ok(());
        }
        let mount = &self.settings.kv_mount;
        let result = self
            .send("destroy versions of", &label, || async {
                vaultrs::kv2::destroy_versions(&self.client, mount, path, versions.to_vec())
                    .await
                    .map_err(Attempt::of)
            })
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(gave_up) => Err(self
                .kv_failure("destroy versions of", &label, gave_up)
                .await),
        }
    }
}

/// What a KV v2 read found.
enum KvRead {
    Entry(ReadSecretResponse),
    Absent,
    Deleted(DeletedVersion),
}

/// The latest version of an entry, deleted or destroyed.
struct DeletedVersion {
    version: u64,
    deletion_time: String,
    destroyed: bool,
}

impl DeletedVersion {
    /// KV v2 answers a read whose latest version is deleted (or destroyed) with 404 and the
    /// version's metadata, not Vault's `errors` (OpenBao `internal/builtin/logical/kv/path_data.go`: "If
    /// the version has been deleted return metadata with a 404"). That body is not the error
    /// shape vaultrs parses, so it arrives as the raw answer.
    fn of(error: &ClientError) -> Option<Self> {
        let ClientError::RestClientError {
            source:
                rustify::errors::ClientError::ServerResponseError {
                    code: 404,
                    content: Some(body),
                },
        } = error
        else {
            return None;
        };
        let body: Value = serde_json::from_str(body).ok()?;
        let metadata = body.get("data")?.get("metadata")?;
        let deleted = Self {
            version: metadata.get("version")?.as_u64()?,
            deletion_time: metadata["deletion_time"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            destroyed: metadata["destroyed"].as_bool().unwrap_or(false),
        };
        (deleted.destroyed || !deleted.deletion_time.is_empty()).then_some(deleted)
    }

    /// What is wrong and the operator's two ways out, as `bao` commands.
    fn problem(&self, mount: &str, path: &str) -> String {
        let version = self.version;
        let (state, restore) = if self.destroyed {
            (
                "was destroyed".to_owned(),
                format!(
                    "write an earlier version back: `bao kv rollback -mount={mount} -version=<n> {path}`"
                ),
            )
        } else {
            (
                format!("was deleted at {}", self.deletion_time),
                format!("undelete it: `bao kv undelete -mount={mount} -versions={version} {path}`"),
            )
        };
        format!(
            "its latest version ({version}) {state}; the entry is neither absent nor usable, so \
             nothing was written ({restore}; or remove the entry with its history to start over: \
             `bao kv metadata delete -mount={mount} {path}`)"
        )
    }
}

/// A request to any Vault path, its `data` parsed as `T`: a GET kept as JSON ([`raw_get`]), or
/// the LIST of `<mount>/detailed-metadata/<prefix>` (OpenBao) parsed into only the fields the
/// version check needs, so the answer for thousands of keys is never held as a JSON tree.
struct RawRequest<T> {
    path: String,
    list: bool,
    answer: std::marker::PhantomData<fn() -> T>,
}

impl<T> RawRequest<T> {
    fn new(path: String, list: bool) -> Self {
        Self {
            path,
            list,
            answer: std::marker::PhantomData,
        }
    }
}

fn raw_get(path: String) -> RawRequest<Value> {
    RawRequest::new(path, false)
}

impl<T: serde::de::DeserializeOwned + Send + Sync> rustify::endpoint::Endpoint for RawRequest<T> {
    type Response = T;
    const REQUEST_BODY_TYPE: RequestType = RequestType::JSON;
    const RESPONSE_BODY_TYPE: ResponseType = ResponseType::JSON;

    fn path(&self) -> String {
        self.path.clone()
    }

    fn method(&self) -> RequestMethod {
        if self.list {
            RequestMethod::LIST
        } else {
            RequestMethod::GET
        }
    }
}

#[derive(Debug, Default, serde::Deserialize)]
struct DetailedListing {
    #[serde(default)]
    key_info: BTreeMap<String, KeyMetadata>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct KeyMetadata {
    #[serde(default)]
    current_version: u64,
    #[serde(default)]
    created_time: String,
    #[serde(default)]
    versions: BTreeMap<String, VersionMetadata>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct VersionMetadata {
    #[serde(default)]
    deletion_time: String,
    #[serde(default)]
    destroyed: bool,
}

enum DetailedAnswer {
    Listed(DetailedListing),
    /// The server's refusal: no such path (Vault), or not allowed.
    Unsupported(String),
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

/// One failed attempt at a Vault request, as far as it tells whether another can pass.
#[derive(Debug)]
enum Attempt {
    /// No answer: connection refused or reset, timeout, TLS failure, redirects without end.
    NoAnswer(String),
    /// Vault's error answer: the status and Vault's `errors` array.
    Vault { status: u16, errors: Vec<String> },
    /// An answer that is not Vault's JSON: a web server, or a proxy's error page.
    Foreign { status: Option<u16>, body: String },
    /// A read answered below the version this process already knows of.
    Stale { seen: Option<u64>, floor: u64 },
    /// Anything else: a request that cannot be built, an answer of the wrong shape.
    Unexpected(String),
}

impl Attempt {
    fn of(error: ClientError) -> Self {
        use rustify::errors::ClientError as Rest;
        match error {
            ClientError::APIError { code, errors } => Self::Vault {
                status: code,
                errors,
            },
            ClientError::RestClientError { source } => match source {
                Rest::ServerResponseError { code, content } => {
                    Self::answer(Some(code), content.unwrap_or_default())
                }
                Rest::RequestError { source, .. } | Rest::ResponseError { source } => {
                    Self::NoAnswer(format!("{source:#}"))
                }
                // A success status whose body is not the answer asked for.
                Rest::ResponseParseError { source, content } => {
                    match Self::answer(None, content.unwrap_or_default()) {
                        Self::Vault { .. } => Self::Unexpected(format!(
                            "Vault's answer has an unexpected shape: {source:#}"
                        )),
                        other => other,
                    }
                }
                Rest::ResponseConversionError { .. } => Self::Foreign {
                    status: None,
                    body: "(not UTF-8)".into(),
                },
                other => Self::Unexpected(other.to_string()),
            },
            ClientError::ResponseEmptyError | ClientError::ResponseDataEmptyError => {
                Self::Unexpected("Vault answered without the data this request returns".into())
            }
            other => Self::Unexpected(other.to_string()),
        }
    }

    /// An answer with a body vaultrs did not read as Vault's errors: Vault's if it is Vault's
    /// JSON (every Vault answer is an object with `errors` or `request_id`), else foreign.
    fn answer(status: Option<u16>, body: String) -> Self {
        match (status, serde_json::from_str::<Value>(&body)) {
            (Some(status), Ok(Value::Object(map)))
                if map.contains_key("errors") || map.contains_key("request_id") =>
            {
                Self::Vault {
                    status,
                    errors: map
                        .get("errors")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|e| e.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            }
            (None, Ok(Value::Object(map))) if map.contains_key("request_id") => Self::Vault {
                status: 200,
                errors: Vec::new(),
            },
            _ => Self::Foreign { status, body },
        }
    }

    fn can_pass(&self) -> bool {
        match self {
            Self::NoAnswer(_) | Self::Stale { .. } => true,
            Self::Vault { status, errors } => vault_answer_can_pass(*status, errors),
            Self::Foreign {
                status: Some(status),
                ..
            } => transient_status(*status),
            Self::Foreign { status: None, .. } | Self::Unexpected(_) => false,
        }
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoAnswer(detail) => write!(f, "cannot reach Vault: {detail}"),
            Self::Vault { status, errors } if errors.is_empty() => {
                write!(f, "Vault answered {status}")
            }
            Self::Vault { status, errors } => {
                write!(f, "Vault answered {status}: {}", errors.join("; "))
            }
            Self::Foreign { status, body } => {
                f.write_str("the server answered ")?;
                if let Some(status) = status {
                    write!(f, "{status} ")?;
                }
                if body.trim().is_empty() {
                    f.write_str("with an empty body, not Vault's JSON")
                } else {
                    write!(
                        f,
                        "with a body that is not Vault's JSON: \"{}\"",
                        preview(body)
                    )
                }
            }
            Self::Stale { seen, floor } => {
                match seen {
                    Some(version) => write!(f, "Vault answered version {version}")?,
                    None => f.write_str("Vault answered that the entry does not exist")?,
                }
                write!(
                    f,
                    ", older than version {floor} this run already knows of (a standby that has \
                     not caught up)"
                )
            }
            Self::Unexpected(detail) => f.write_str(detail),
        }
    }
}

/// The start of a foreign body, on one line: enough to recognise the server.
fn preview(body: &str) -> String {
    const MAX: usize = 80;
    let line: String = body
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match line.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", &line[..end]),
        None => line,
    }
}

/// Whether Vault's answer `status` with its `errors` can pass if the request is sent again.
///
/// Beyond the common rule ([`transient_status`]: 429 and every 5xx), these are the answers an
/// OpenBao or Vault node gives while it is not the active node or a leader change is under way,
/// as OpenBao's source has them and `tests/vault_ha.rs` records them from a three-node Raft
/// cluster:
///
/// - 503 "Vault is sealed" (a restarted node before it is unsealed: `consts.ErrSealed`,
///   `sdk/logical/response_util.go`) and 503 "no active Vault instance found" (a standby that
///   knows of no leader: `respondStandby`, `internal/http/handler.go`);
/// - 500 "local node not active but active cluster node not found" (a standby asked to forward
///   a write while no leader is known: `forwardRequest`, `internal/http/handler.go`);
/// - 307 to the active node's `api_addr` (`respondStandby`, when forwarding fails): the HTTP
///   client follows it; when that node is gone the follow-up fails to connect, which can pass;
/// - 429, 472 and 473: the health answers of an unsealed standby, a DR secondary and a
///   performance standby (Vault's `http/sys_health.go`; OpenBao keeps 429 only). The jobs never
///   ask `sys/health`, but these statuses only ever mean "not the active node";
/// - 400 from KV v2 while the mount is set up on a node that just became active ("Upgrading
///   from non-versioned to versioned data. This backend will be unavailable for a brief
///   period...") or on a standby waiting for the active node to finish that ("Waiting for the
///   primary to upgrade from non-versioned to versioned data..."): both from
///   `internal/builtin/logical/kv/upgrade.go`, and the only 4xx retried. A 400 says nothing else about
///   its cause, so these two are told apart by Vault's own words.
#[must_use]
pub fn vault_answer_can_pass(status: u16, errors: &[String]) -> bool {
    const KV_UPGRADING: [&str; 2] = [
        "Upgrading from non-versioned to versioned data",
        "Waiting for the primary to upgrade from non-versioned to versioned data",
    ];
    transient_status(status)
        || matches!(status, 307 | 472 | 473)
        || (status == 400
            && errors
                .iter()
                .any(|e| KV_UPGRADING.iter().any(|m| e.starts_with(m))))
}

/// [`vault_answer_can_pass`] for an answer as received: its status and raw body. A body that
/// is not Vault's JSON gets the common rule only.
#[must_use]
pub fn answer_can_pass(status: u16, body: &str) -> bool {
    match Attempt::answer(Some(status), body.to_owned()) {
        Attempt::Vault { status, errors } => vault_answer_can_pass(status, &errors),
        // A standby's redirect has no body at all.
        _ => transient_status(status) || status == 307,
    }
}

#[cfg(test)]
mod tests {
    use rustify::errors::ClientError as Rest;

    use super::*;

    /// Answers of a three-node OpenBao 2.7.2 Raft cluster, as received (status, body): the
    /// 307, 500 and 503 while its active node was stepped down, killed and restarted sealed
    /// (`standby_answers_during_an_election_can_pass` in `tests/vault_ha.rs` records them
    /// afresh on every run, prints them, and checks each with [`answer_can_pass`]); the 400
    /// from a standby asked for a KV v2 mount enabled a moment before, and the 429 of a
    /// standby's `sys/health`, recorded from the same cluster with curl.
    const ELECTION_ANSWERS: [(u16, &str); 5] = [
        (307, ""),
        (
            500,
            r#"{"errors":["local node not active but active cluster node not found"]}"#,
        ),
        (
            400,
            r#"{"errors":["Waiting for the primary to upgrade from non-versioned to versioned data. This backend will be unavailable for a brief period and will resume service when the primary is finished."]}"#,
        ),
        (503, r#"{"errors":["Vault is sealed"]}"#),
        (429, ""),
    ];

    #[test]
    fn answers_of_a_leader_change_can_pass() {
        for (status, body) in ELECTION_ANSWERS {
            assert!(answer_can_pass(status, body), "{status} {body}");
        }
        // The same statuses from OpenBao's source, never seen in a short test run.
        for (status, error) in [
            (503, "no active Vault instance found"),
            (
                400,
                "Upgrading from non-versioned to versioned data. This backend will be unavailable for a brief period and will resume service shortly.",
            ),
            (472, ""),
            (473, ""),
        ] {
            assert!(
                vault_answer_can_pass(status, &[error.to_owned()]),
                "{status}"
            );
        }
    }

    #[test]
    fn refusals_are_final() {
        for (status, body) in [
            (
                400,
                r#"{"errors":["check-and-set parameter did not match the current version"]}"#,
            ),
            (
                400,
                r#"{"errors":["error validating token: invalid subject (sub) claim"]}"#,
            ),
            (403, r#"{"errors":["permission denied"]}"#),
            (
                403,
                r#"{"errors":["1 error occurred:\n\t* permission denied\n\n"]}"#,
            ),
            (404, r#"{"errors":[]}"#),
            (
                404,
                r#"{"errors":["no handler for route \"kv/data/x\". route entry not found."]}"#,
            ),
            (405, r#"{"errors":["unsupported operation"]}"#),
            // A web server that is not Vault.
            (404, "<html><body>Not Found</body></html>"),
        ] {
            assert!(!answer_can_pass(status, body), "{status} {body}");
        }
        // A proxy's error page in front of a Vault that is restarting.
        assert!(answer_can_pass(502, "<html>Bad Gateway</html>"));
    }

    fn server_answer(code: u16, body: &str) -> ClientError {
        ClientError::RestClientError {
            source: Rest::ServerResponseError {
                code,
                content: Some(body.to_owned()),
            },
        }
    }

    #[test]
    fn a_body_that_is_not_vaults_json_is_foreign() {
        let attempt = Attempt::of(server_answer(
            404,
            "<!DOCTYPE html>\n<html>\tNot Found</html>",
        ));
        assert!(matches!(
            attempt,
            Attempt::Foreign {
                status: Some(404),
                ..
            }
        ));
        assert!(!attempt.can_pass());
        assert_eq!(
            attempt.to_string(),
            "the server answered 404 with a body that is not Vault's JSON: \"<!DOCTYPE html> <html> Not Found</html>\""
        );
        let empty = Attempt::of(server_answer(404, ""));
        assert_eq!(
            empty.to_string(),
            "the server answered 404 with an empty body, not Vault's JSON"
        );
        let long = Attempt::of(server_answer(200, &"x".repeat(10_000)));
        assert_eq!(
            long.to_string().len(),
            "the server answered 200 with a body that is not Vault's JSON: \"\"...".len() + 80
        );

        // Vault's own answer that vaultrs did not parse as errors stays Vault's.
        let vault = Attempt::of(server_answer(503, r#"{"errors":["Vault is sealed"]}"#));
        assert_eq!(vault.to_string(), "Vault answered 503: Vault is sealed");
        assert!(vault.can_pass());
    }

    #[test]
    fn a_deleted_latest_version_is_recognised() {
        // As OpenBao 2.7.2 answers `GET secret/data/istio/ca` after `bao kv delete`.
        let body = r#"{"request_id":"29fd13b0-7402-b99a-7a47-b092854244de","lease_id":"","renewable":false,"lease_duration":0,"data":{"data":null,"metadata":{"created_time":"2026-11-25T16:11:16.49145451Z","custom_metadata":null,"deletion_time":"2026-11-25T16:11:16.60700159Z","destroyed":false,"version":1}},"wrap_info":null,"warnings":null,"auth":null}"#;
        let deleted = DeletedVersion::of(&server_answer(404, body)).unwrap();
        assert_eq!(deleted.version, 1);
        assert!(!deleted.destroyed);
        assert_eq!(
            deleted.problem("secret", "istio/ca"),
            "its latest version (1) was deleted at 2026-11-25T16:11:16.60700159Z; the entry is \
             neither absent nor usable, so nothing was written (undelete it: `bao kv undelete \
             -mount=secret -versions=1 istio/ca`; or remove the entry with its history to start \
             over: `bao kv metadata delete -mount=secret istio/ca`)"
        );
        let destroyed = body.replace(
            r#""deletion_time":"2026-11-25T16:11:16.60700159Z","destroyed":false"#,
            r#""deletion_time":"","destroyed":true"#,
        );
        assert!(
            DeletedVersion::of(&server_answer(404, &destroyed))
                .unwrap()
                .destroyed
        );
        // Neither deleted nor destroyed, or not a 404: not a deleted version.
        let live = body.replace("2026-11-25T16:11:16.60700159Z", "");
        assert!(DeletedVersion::of(&server_answer(404, &live)).is_none());
        assert!(DeletedVersion::of(&server_answer(500, body)).is_none());
        assert!(DeletedVersion::of(&server_answer(404, "<html>")).is_none());
    }

    #[test]
    fn a_stale_answer_can_pass_and_says_why() {
        let stale = Attempt::Stale {
            seen: None,
            floor: 1,
        };
        assert!(stale.can_pass());
        assert_eq!(
            stale.to_string(),
            "Vault answered that the entry does not exist, older than version 1 this run already \
             knows of (a standby that has not caught up)"
        );
    }
}
