//! Where Secrets go: the Kubernetes API (server-side apply under a fixed field manager), or,
//! with no cluster configured, manifest files for a GitOps repository. One small trait, so the
//! decision logic is tested with doubles and each side against something real.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use job_support::Failure;
use job_support::exit::Classified;
use job_support::retry::{Request, RetryPolicy, retry, transient_status};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use pki_core::time::OffsetDateTime;

use crate::sops::{self, AgeRecipient};

/// The field manager of every apply; the fields it owns are this job's.
pub const FIELD_MANAGER: &str = "nas-sync-job";

/// A Secret as this job wants it, or as it finds it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SecretState {
    /// Secret type.
    pub secret_type: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Data, decoded. Read back from a SOPS-encrypted manifest, only the keys are known and
    /// each value is empty.
    pub data: BTreeMap<String, Vec<u8>>,
    /// The age recipients the data is encrypted to (SOPS), or `None` for data in the clear.
    pub sealed_to: Option<Vec<String>>,
}

impl SecretState {
    fn to_secret(&self, namespace: &str, name: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                labels: Some(self.labels.clone()),
                annotations: Some(self.annotations.clone()),
                ..ObjectMeta::default()
            },
            type_: Some(self.secret_type.clone()),
            data: Some(
                self.data
                    .iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    fn from_secret(secret: Secret) -> Self {
        Self {
            secret_type: secret.type_.unwrap_or_else(|| "Opaque".into()),
            labels: secret.metadata.labels.unwrap_or_default(),
            annotations: secret.metadata.annotations.unwrap_or_default(),
            data: secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect(),
            sealed_to: None,
        }
    }
}

/// Where Secrets are read from and applied to.
#[allow(async_fn_in_trait)] // Used with concrete types only.
pub trait SecretTarget {
    /// For log lines.
    fn describe(&self) -> String;
    /// The Secret as it is now, or `None`.
    async fn get(&self, namespace: &str, name: &str) -> anyhow::Result<Option<SecretState>>;
    /// Makes the Secret hold `desired` (our fields; others' fields are left alone).
    async fn apply(&self, namespace: &str, name: &str, desired: &SecretState)
    -> anyhow::Result<()>;
    /// The recipients `desired`'s data would be encrypted to when written here, if any.
    fn sealing(&self, _desired: &SecretState) -> Option<Vec<String>> {
        None
    }
}

/// A `plan` (dry run): reads through to the real target, applies nothing. The sync's outcomes
/// then say what a run would create or restore.
#[derive(Debug)]
pub struct PlanTarget<'a, T>(pub &'a T);

impl<T: SecretTarget> SecretTarget for PlanTarget<'_, T> {
    fn describe(&self) -> String {
        format!("plan (nothing applied) over {}", self.0.describe())
    }

    async fn get(&self, namespace: &str, name: &str) -> anyhow::Result<Option<SecretState>> {
        self.0.get(namespace, name).await
    }

    async fn apply(&self, _: &str, _: &str, _: &SecretState) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The Kubernetes API.
pub struct KubeTarget {
    client: kube::Client,
    max_attempts: u32,
}

impl std::fmt::Debug for KubeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeTarget").finish_non_exhaustive()
    }
}

impl KubeTarget {
    /// A target over `client`; transient failures are tried `max_attempts` times.
    #[must_use]
    pub fn new(client: kube::Client, max_attempts: u32) -> Self {
        Self {
            client,
            max_attempts: max_attempts.max(1),
        }
    }

    /// Connects with the in-cluster configuration or the kubeconfig, with timeouts.
    pub async fn connect(max_attempts: u32) -> anyhow::Result<Self> {
        let mut config = kube::Config::infer().await.map_err(|e| Classified {
            failure: Failure::Config,
            message: format!("no Kubernetes configuration (in-cluster or kubeconfig): {e}"),
        })?;
        config.connect_timeout = Some(Duration::from_secs(5));
        config.read_timeout = Some(Duration::from_secs(15));
        config.write_timeout = Some(Duration::from_secs(15));
        let client = kube::Client::try_from(config).map_err(|e| Classified {
            failure: Failure::Config,
            message: format!("cannot build the Kubernetes client: {e}"),
        })?;
        Ok(Self::new(client, max_attempts))
    }

    /// Sends one request under the jobs' shared retry policy, and classifies its failure.
    async fn retry<T, F, Fut>(&self, operation: &str, target: &str, attempt: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let request = Request {
            peer: "Kubernetes",
            operation,
            object: target,
        };
        retry(
            RetryPolicy::new(self.max_attempts),
            request,
            can_pass,
            attempt,
        )
        .await
        .map_err(|gave_up| {
            let (failure, detail) = classify(&gave_up.error);
            Classified {
                failure,
                message: format!(
                    "{operation} secret '{target}' failed: {detail}{}",
                    gave_up.attempts_note()
                ),
            }
            .into()
        })
    }
}

/// Whether a failed request can pass if sent again, by status: no answer, 429 (API priority
/// and fairness) and 5xx, per the shared rule; every other status is a refusal.
fn can_pass(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => transient_status(status.code),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Exit class and what to say: the API server's own message included.
fn classify(e: &kube::Error) -> (Failure, String) {
    match e {
        kube::Error::Api(status) => {
            let detail = format!(
                "the API server answered {} {}: {}",
                status.code, status.reason, status.message
            );
            let failure = match status.code {
                401 | 403 => Failure::Denied,
                code if transient_status(code) => Failure::Unreachable,
                _ => Failure::Rejected,
            };
            (failure, detail)
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => (
            Failure::Unreachable,
            format!("cannot reach the API server: {e}"),
        ),
        other => (Failure::Other, other.to_string()),
    }
}

impl SecretTarget for KubeTarget {
    fn describe(&self) -> String {
        "kubernetes".into()
    }

    async fn get(&self, namespace: &str, name: &str) -> anyhow::Result<Option<SecretState>> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let target = format!("{namespace}/{name}");
        let secret = self.retry("read", &target, || api.get_opt(name)).await?;
        Ok(secret.map(SecretState::from_secret))
    }

    async fn apply(
        &self,
        namespace: &str,
        name: &str,
        desired: &SecretState,
    ) -> anyhow::Result<()> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = desired.to_secret(namespace, name);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let patch = Patch::Apply(&secret);
        let target = format!("{namespace}/{name}");
        self.retry("apply", &target, || api.patch(name, &params, &patch))
            .await?;
        Ok(())
    }
}

/// Manifest files (one per Secret, mode 0600) or standard output, for GitOps.
#[derive(Debug, Clone)]
pub struct ManifestTarget {
    /// Where the manifests go.
    pub place: ManifestPlace,
    /// Whether a Secret holding a private key may be written in the clear
    /// (`SYNC_PLAINTEXT_KEYS=allow`) when there is no recipient to encrypt it for; refused
    /// otherwise, since these files are meant for Git.
    pub plaintext_keys: bool,
    /// `SYNC_AGE_RECIPIENTS`: a Secret holding a private key is written SOPS-encrypted to these.
    pub recipients: Vec<AgeRecipient>,
}

/// Where manifests go.
#[derive(Debug, Clone)]
pub enum ManifestPlace {
    /// `<dir>/<namespace>.<name>.yaml`.
    Directory(PathBuf),
    /// Printed, separated by `---`.
    Stdout,
}

impl ManifestTarget {
    fn file(&self, namespace: &str, name: &str) -> Option<PathBuf> {
        match &self.place {
            ManifestPlace::Directory(dir) => Some(dir.join(format!("{namespace}.{name}.yaml"))),
            ManifestPlace::Stdout => None,
        }
    }

    /// The keys of `desired` that hold a private key (PEM), which a manifest would carry in
    /// the clear (a Secret's data is only base64).
    fn private_keys(desired: &SecretState) -> Vec<&str> {
        desired
            .data
            .iter()
            .filter(|(_, v)| v.windows(16).any(|w| w == b"PRIVATE KEY-----"))
            .map(|(k, _)| k.as_str())
            .collect()
    }
}

impl SecretTarget for ManifestTarget {
    fn describe(&self) -> String {
        match &self.place {
            ManifestPlace::Directory(dir) => format!("manifests in {}", dir.display()),
            ManifestPlace::Stdout => "manifests on standard output".into(),
        }
    }

    async fn get(&self, namespace: &str, name: &str) -> anyhow::Result<Option<SecretState>> {
        let Some(file) = self.file(namespace, name) else {
            return Ok(None);
        };
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let not_secret =
                    |e: String| anyhow::anyhow!("{} is not a Secret manifest: {e}", file.display());
                let mut doc: serde_json::Value =
                    job_support::yaml::from_str(&text).map_err(not_secret)?;
                let sealed_to = sops::sealed_for(&doc);
                if sealed_to.is_some() {
                    // Without the identity only the key names can be compared; the KV version
                    // annotation, in the clear, says whether the values changed.
                    if let serde_json::Value::Object(top) = &mut doc {
                        top.remove("sops");
                        if let Some(serde_json::Value::Object(data)) = top.get_mut("data") {
                            for value in data.values_mut() {
                                *value = serde_json::Value::String(String::new());
                            }
                        }
                    }
                }
                let secret: Secret =
                    serde_json::from_value(doc).map_err(|e| not_secret(e.to_string()))?;
                Ok(Some(SecretState {
                    sealed_to,
                    ..SecretState::from_secret(secret)
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!("failed to read {}: {e}", file.display())),
        }
    }

    async fn apply(
        &self,
        namespace: &str,
        name: &str,
        desired: &SecretState,
    ) -> anyhow::Result<()> {
        let keys = Self::private_keys(desired);
        if !keys.is_empty() && self.recipients.is_empty() && !self.plaintext_keys {
            return Err(job_support::exit::Classified {
                failure: job_support::Failure::Config,
                message: format!(
                    "refusing to write {namespace}/{name} to {}: '{}' holds a private key, which \
                     a manifest carries in the clear; set SYNC_AGE_RECIPIENTS to encrypt it with \
                     SOPS, sync to the cluster (SYNC_TARGET=kubernetes), or set \
                     SYNC_PLAINTEXT_KEYS=allow and keep the output out of Git",
                    self.describe(),
                    keys.join("', '")
                ),
            }
            .into());
        }
        let secret = desired.to_secret(namespace, name);
        let manifest = if self.sealing(desired).is_some() {
            let doc = serde_json::to_value(&secret)?;
            sops::seal(&doc, &self.recipients, OffsetDateTime::now_utc())
                .with_context(|| format!("failed to encrypt {namespace}/{name} with SOPS"))?
        } else {
            serde_saphyr::to_string(&secret)?
        };
        let Some(file) = self.file(namespace, name) else {
            print!("---\n{manifest}");
            return Ok(());
        };
        let dir = file.parent().unwrap_or(std::path::Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("failed to create {}: {e}", dir.display()))?;
        // Written aside and renamed, so a reader never sees half a manifest.
        let temp = dir.join(format!(
            ".{namespace}.{name}.yaml.tmp-{}",
            std::process::id()
        ));
        let written = (|| {
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temp)?;
            out.write_all(manifest.as_bytes())?;
            out.sync_all()?;
            std::fs::rename(&temp, &file)
        })();
        written.map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            anyhow::anyhow!("failed to write {}: {e}", file.display())
        })
    }

    fn sealing(&self, desired: &SecretState) -> Option<Vec<String>> {
        (!self.recipients.is_empty() && !Self::private_keys(desired).is_empty()).then(|| {
            self.recipients
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, Request, Response};
    use kube::client::Body;

    use super::*;

    fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
        let body = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                      "message": message, "reason": reason, "code": code});
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    /// A target on a mocked API server (kube-rs's tower-test pair), with `attempts` tries per
    /// request; the handle answers each request as the test says.
    fn mocked(
        attempts: u32,
    ) -> (
        KubeTarget,
        tower_test::mock::Handle<Request<Body>, Response<Body>>,
    ) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (
            KubeTarget::new(kube::Client::new(service, "default"), attempts),
            handle,
        )
    }

    fn desired() -> SecretState {
        SecretState {
            secret_type: "Opaque".into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::from([("pki.home.arpa/kv-version".to_owned(), "1".to_owned())]),
            data: BTreeMap::from([("ca-cert.pem".to_owned(), b"PEM".to_vec())]),
            sealed_to: None,
        }
    }

    #[tokio::test]
    async fn get_then_server_side_apply_as_the_api_expects() {
        let (target, mut handle) = mocked(1);
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), Method::GET);
            assert_eq!(
                request.uri().to_string(),
                "/api/v1/namespaces/istio-system/secrets/cacerts"
            );
            send.send_response(status(404, "NotFound", "secrets \"cacerts\" not found"));

            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), Method::PATCH);
            assert_eq!(
                request.uri().to_string(),
                "/api/v1/namespaces/istio-system/secrets/cacerts?&force=true&fieldManager=nas-sync-job"
            );
            assert_eq!(
                request.headers()["content-type"],
                "application/apply-patch+yaml"
            );
            let body: serde_json::Value =
                serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap())
                    .unwrap();
            assert_eq!(body["apiVersion"], "v1");
            assert_eq!(body["kind"], "Secret");
            assert_eq!(body["metadata"]["name"], "cacerts");
            assert_eq!(body["metadata"]["namespace"], "istio-system");
            assert_eq!(body["type"], "Opaque");
            assert_eq!(body["data"]["ca-cert.pem"], "UEVN");
            let applied = serde_json::to_vec(&body).unwrap();
            send.send_response(
                Response::builder()
                    .status(200)
                    .body(Body::from(applied))
                    .unwrap(),
            );
        });
        assert_eq!(target.get("istio-system", "cacerts").await.unwrap(), None);
        target
            .apply("istio-system", "cacerts", &desired())
            .await
            .unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn forbidden_and_missing_namespace_are_classified_and_not_retried() {
        let (target, mut handle) = mocked(3);
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(status(
                403,
                "Forbidden",
                "secrets \"cacerts\" is forbidden: User \"system:serviceaccount:istio-system:istio-ca-sync\" cannot patch resource \"secrets\"",
            ));
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(status(
                404,
                "NotFound",
                "namespaces \"istio-system\" not found",
            ));
        });
        let denied = target
            .apply("istio-system", "cacerts", &desired())
            .await
            .unwrap_err();
        assert_eq!(Failure::of(&denied), Failure::Denied);
        assert!(denied.to_string().starts_with("apply secret 'istio-system/cacerts' failed: the API server answered 403 Forbidden: secrets \"cacerts\" is forbidden"), "{denied}");
        let missing = target
            .apply("istio-system", "cacerts", &desired())
            .await
            .unwrap_err();
        assert_eq!(Failure::of(&missing), Failure::Rejected);
        assert_eq!(
            missing.to_string(),
            "apply secret 'istio-system/cacerts' failed: the API server answered 404 NotFound: namespaces \"istio-system\" not found"
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn server_errors_are_retried_a_bounded_number_of_times() {
        let (target, mut handle) = mocked(2);
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (_, send) = handle.next_request().await.unwrap();
                send.send_response(status(
                    503,
                    "ServiceUnavailable",
                    "etcdserver: leader changed",
                ));
            }
        });
        let err = target.get("istio-system", "cacerts").await.unwrap_err();
        assert_eq!(Failure::of(&err), Failure::Unreachable);
        assert!(err.to_string().ends_with("(after 2 attempts)"), "{err}");
        server.await.unwrap();
    }
}
