//! An over-the-wire stand-in for the Kubernetes API server, for what the jobs and Vault use
//! of it. It speaks plain HTTP/1.1 on a free loopback port and answers as kube-apiserver does:
//! - every request is authenticated first: no credentials make the anonymous user (anonymous
//!   requests are on by default), a bearer token must be a service-account token this cluster
//!   signed, unexpired, for the API server's audience, of a service account that still exists
//!   (see `kube_authn`); anything else is `401 Unauthorized` with the API server's terse Status;
//! - then authorized by RBAC from the Role/ClusterRole/…Binding objects loaded from the rendered
//!   manifests plus the bootstrap policy (see `kube_rbac`): `403 Forbidden` with its wording;
//! - `TokenReview` (`pkg/registry/authentication/tokenreview/storage.go`): a token is required;
//!   the requested audiences default to the API server's; the answer names
//!   `system:serviceaccount:<ns>:<sa>`, the service account's uid, its groups, and as
//!   `audiences` the intersection of the token's and the requested ones; a refused token is
//!   `authenticated: false` with the reason in `error`;
//! - Secrets: GET and server-side apply (PATCH `application/apply-patch+yaml` with a
//!   `fieldManager`), missing namespaces (404), `resourceVersion` bumped only by real changes,
//!   field ownership per data key (409 on a conflicting apply without `force`);
//! - service-account token Secrets get their legacy token, as the token controller writes it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::kube_authn::{
    Refusal, SigningKey, TokenObjects, User, authenticate, bound_claims, legacy_claims, random_uid,
};
use super::kube_rbac::{Rbac, Request as RbacRequest};
use super::tools::Scratch;

/// The field manager Flux's kustomize-controller applies with: objects loaded from manifests
/// are its.
const FLUX_MANAGER: &str = "kustomize-controller";

/// A stored Secret; each data key remembers which field manager set it.
#[derive(Debug, Clone, Default)]
struct StoredSecret {
    resource_version: u64,
    secret_type: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    data: BTreeMap<String, (String, String)>,
}

/// A Secret as the fake stores it, for assertions.
pub struct SecretView {
    pub data: BTreeMap<String, Vec<u8>>,
    pub resource_version: u64,
    pub annotations: BTreeMap<String, String>,
}

struct State {
    key: SigningKey,
    /// (namespace, name) -> uid.
    service_accounts: BTreeMap<(String, String), String>,
    /// "METHOD path -> code" of every request, for assertions.
    requests: Vec<String>,
    namespaces: BTreeSet<String>,
    secrets: BTreeMap<(String, String), StoredSecret>,
    rbac: Rbac,
    resource_version: u64,
}

impl TokenObjects for State {
    fn service_account_uid(&self, namespace: &str, name: &str) -> Option<String> {
        self.service_accounts
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    fn secret_token(&self, namespace: &str, name: &str) -> Option<String> {
        let secret = self.secrets.get(&(namespace.to_owned(), name.to_owned()))?;
        let (value, _) = secret.data.get("token")?;
        String::from_utf8(STANDARD.decode(value).ok()?).ok()
    }
}

pub struct FakeApiServer {
    pub url: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeApiServer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let state = Arc::new(Mutex::new(State {
            key: SigningKey::generate(),
            service_accounts: BTreeMap::new(),
            requests: Vec::new(),
            namespaces: BTreeSet::new(),
            secrets: BTreeMap::new(),
            rbac: Rbac::with_bootstrap_policy(),
            resource_version: 0,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let state = state.clone();
                            std::thread::spawn(move || serve(stream, &state));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Self {
            url,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Applies objects as Flux would (namespaces first): `Namespace`, `ServiceAccount`, `Secret`
    /// and RBAC objects are stored, other kinds are not served here and are skipped. A stored
    /// object in a namespace that does not exist is refused, as the API server refuses it.
    pub fn load(&self, objects: &[Value]) {
        for o in objects.iter().filter(|o| o["kind"] == "Namespace") {
            self.create_namespace(o["metadata"]["name"].as_str().unwrap());
        }
        for o in objects.iter().filter(|o| o["kind"] == "ServiceAccount") {
            let (ns, name) = namespaced_name(o);
            self.create_service_account(&ns, &name);
        }
        let mut state = self.state.lock().unwrap();
        for o in objects {
            let kind = o["kind"].as_str().unwrap_or_default();
            if !matches!(kind, "Secret" | "Role" | "RoleBinding") {
                state.rbac.load(o);
                continue;
            }
            let (ns, name) = namespaced_name(o);
            assert!(
                state.namespaces.contains(&ns),
                "{kind} {name}: namespaces \"{ns}\" not found"
            );
            if kind == "Secret" {
                store_secret(&mut state, &ns, &name, o);
            } else {
                state.rbac.load(o);
            }
        }
    }

    pub fn create_namespace(&self, namespace: &str) {
        self.state
            .lock()
            .unwrap()
            .namespaces
            .insert(namespace.to_owned());
    }

    /// Creates a service account (a fresh uid each time, as the API server assigns one).
    pub fn create_service_account(&self, namespace: &str, name: &str) {
        let mut state = self.state.lock().unwrap();
        assert!(
            state.namespaces.contains(namespace),
            "ServiceAccount {name}: namespaces \"{namespace}\" not found"
        );
        state
            .service_accounts
            .entry((namespace.to_owned(), name.to_owned()))
            .or_insert_with(random_uid);
    }

    /// `kubectl delete serviceaccount`: every token of it stops authenticating.
    pub fn delete_service_account(&self, namespace: &str, name: &str) {
        self.state
            .lock()
            .unwrap()
            .service_accounts
            .remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// `kubectl delete rolebinding|clusterrolebinding` of every binding to `role`.
    pub fn remove_bindings_of(&self, role: &str) {
        self.state.lock().unwrap().rbac.remove_bindings_of(role);
    }

    /// A bound token, as `TokenRequest` (and so a projected `serviceAccountToken` volume, or
    /// ESO's `serviceAccountRef`) issues it: `audiences` (the API server's when empty), valid for
    /// `expiration_secs`.
    pub fn token(
        &self,
        namespace: &str,
        name: &str,
        audiences: &[&str],
        expiration_secs: i64,
    ) -> String {
        let state = self.state.lock().unwrap();
        let uid = state
            .service_account_uid(namespace, name)
            .unwrap_or_else(|| panic!("serviceaccounts \"{name}\" not found in {namespace}"));
        state.key.sign(&bound_claims(
            namespace,
            name,
            &uid,
            audiences,
            expiration_secs,
        ))
    }

    /// A token for this API server (its default audience), valid for an hour.
    pub fn api_token(&self, namespace: &str, name: &str) -> String {
        self.token(namespace, name, &[], 3600)
    }

    /// Signs arbitrary claims with the cluster's key (for tokens a cluster would refuse).
    pub fn sign(&self, claims: &Value) -> String {
        self.state.lock().unwrap().key.sign(claims)
    }

    /// The uid of a service account.
    pub fn service_account_uid(&self, namespace: &str, name: &str) -> Option<String> {
        self.state
            .lock()
            .unwrap()
            .service_account_uid(namespace, name)
    }

    /// The service-account issuer's public key (PEM), for Vault's JWT auth.
    pub fn public_key_pem(&self) -> String {
        self.state.lock().unwrap().key.public_key_pem()
    }

    /// "METHOD path -> code" of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// How many requests of one method were made, e.g. the `PATCH` requests of a job.
    pub fn count(&self, method: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.starts_with(&format!("{method} ")))
            .count()
    }

    /// The status codes answered to TokenReview requests, in order.
    pub fn token_review_codes(&self) -> Vec<u16> {
        self.requests()
            .iter()
            .filter(|r| r.starts_with("POST /apis/authentication.k8s.io/v1/tokenreviews "))
            .filter_map(|r| r.rsplit_once(" -> ")?.1.parse().ok())
            .collect()
    }

    /// Lets the service account `get` and `patch` one Secret: a Role with `resourceNames` and
    /// its `RoleBinding`, evaluated like any other RBAC object.
    pub fn grant(&self, sa_namespace: &str, sa_name: &str, namespace: &str, secret: &str) {
        let role = format!("grant-{sa_name}-{secret}");
        self.load(&[
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                   "metadata": {"name": role, "namespace": namespace},
                   "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [secret], "verbs": ["get", "patch"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": role, "namespace": namespace},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
                   "subjects": [{"kind": "ServiceAccount", "name": sa_name, "namespace": sa_namespace}]}),
        ]);
    }

    /// A Secret as stored: data decoded, its resourceVersion and annotations.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<SecretView> {
        let state = self.state.lock().unwrap();
        state
            .secrets
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|s| {
                let data = s
                    .data
                    .iter()
                    .map(|(k, (v, _))| (k.clone(), STANDARD.decode(v).unwrap()))
                    .collect();
                SecretView {
                    data,
                    resource_version: s.resource_version,
                    annotations: s.annotations.clone(),
                }
            })
    }

    /// `kubectl edit`: someone changes one data key by hand.
    pub fn edit_secret(&self, namespace: &str, name: &str, key: &str, value: &[u8]) {
        let mut state = self.state.lock().unwrap();
        state.resource_version += 1;
        let rv = state.resource_version;
        let secret = state
            .secrets
            .get_mut(&(namespace.to_owned(), name.to_owned()))
            .expect("secret exists");
        secret.data.insert(
            key.to_owned(),
            (STANDARD.encode(value), "kubectl-edit".into()),
        );
        secret.resource_version = rv;
    }

    /// A NAS cluster as nas-sync-job meets it: the namespace `istio-system`, where the service
    /// account `istio-ca-sync` may `get` and `patch` the Secret `cacerts` and nothing else.
    pub fn start_nas() -> Self {
        let api = Self::start();
        api.create_namespace("istio-system");
        api.create_service_account("istio-system", "istio-ca-sync");
        api.grant("istio-system", "istio-ca-sync", "istio-system", "cacerts");
        api
    }

    /// The kubeconfig of `istio-ca-sync` (see [`Self::start_nas`]), written to `dir` as
    /// `kubeconfig`.
    pub fn nas_sync_kubeconfig(&self, dir: &Scratch) -> PathBuf {
        dir.write(
            "kubeconfig",
            self.kubeconfig(&self.api_token("istio-system", "istio-ca-sync")),
        )
    }

    /// A kubeconfig that reaches this server with `token`.
    pub fn kubeconfig(&self, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: sa\n\
             current-context: fake\n",
            self.url
        )
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn namespaced_name(o: &Value) -> (String, String) {
    (
        o["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// The string values of a JSON object (labels, annotations, `data`); others are left out.
fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Stores a Secret from a manifest; a service-account token Secret gets the token controller's
/// fields (`pkg/controller/serviceaccount/tokens_controller.go`): the legacy token and the
/// namespace (no `ca.crt`: this server speaks plain HTTP and has no CA).
fn store_secret(state: &mut State, namespace: &str, name: &str, o: &Value) {
    let mut secret = StoredSecret {
        secret_type: o["type"].as_str().unwrap_or("Opaque").to_owned(),
        labels: string_map(&o["metadata"]["labels"]),
        annotations: string_map(&o["metadata"]["annotations"]),
        ..StoredSecret::default()
    };
    for (k, v) in string_map(&o["data"]) {
        secret.data.insert(k, (v, FLUX_MANAGER.into()));
    }
    if secret.secret_type == "kubernetes.io/service-account-token" {
        let account = secret
            .annotations
            .get("kubernetes.io/service-account.name")
            .cloned()
            .expect("a token Secret names its service account");
        let uid = state
            .service_account_uid(namespace, &account)
            .unwrap_or_else(|| {
                panic!("token Secret {name}: serviceaccounts \"{account}\" not found")
            });
        let token = state
            .key
            .sign(&legacy_claims(namespace, name, &account, &uid));
        secret
            .annotations
            .insert("kubernetes.io/service-account.uid".into(), uid);
        for (k, v) in [("token", token.as_str()), ("namespace", namespace)] {
            secret.data.insert(
                k.into(),
                (STANDARD.encode(v), "kube-controller-manager".into()),
            );
        }
    }
    state.resource_version += 1;
    secret.resource_version = state.resource_version;
    state
        .secrets
        .insert((namespace.to_owned(), name.to_owned()), secret);
}

/// Bounded: nothing we serve takes a body larger than a few KiB.
const MAX_BODY: usize = 1 << 20;

struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut length = 0usize;
    let mut chunked = false;
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.trim().eq_ignore_ascii_case("chunked");
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        // Go's HTTP client (Vault's) streams JSON bodies with chunked encoding.
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            if size == 0 {
                let mut trailer = String::new();
                while reader.read_line(&mut trailer).ok()? > 2 {
                    trailer.clear();
                }
                break;
            }
            if body.len() + size > MAX_BODY {
                return None;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..]).ok()?;
            let mut crlf = [0; 2];
            reader.read_exact(&mut crlf).ok()?;
        }
    } else {
        if length > MAX_BODY {
            return None;
        }
        body.resize(length, 0);
        reader.read_exact(&mut body).ok()?;
    }
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader) {
        let (code, body) = handle(&request, state);
        state
            .lock()
            .unwrap()
            .requests
            .push(format!("{} {} -> {code}", request.method, request.path));
        let body = body.to_string();
        let reason = match code {
            200 => "OK",
            201 => "Created",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            409 => "Conflict",
            415 => "Unsupported Media Type",
            405 => "Method Not Allowed",
            _ => "Error",
        };
        let response = format!(
            "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// Authentication, then routing (which authorizes). As `staging/src/k8s.io/apiserver/pkg/
/// authentication/request/bearertoken/bearertoken.go` reads the header: only a `Bearer` scheme
/// (any case) with a non-empty token is a credential; anything else is no credential, which
/// makes the anonymous user. A credential that does not authenticate is a 401.
fn handle(request: &Request, state: &Mutex<State>) -> (u16, Value) {
    let user = {
        let state = state.lock().unwrap();
        let header = request
            .headers
            .get("authorization")
            .map_or("", |h| h.trim());
        let token = header
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty());
        match token {
            None => User::anonymous(),
            Some(token) => match authenticate(&state.key, &*state, token, None) {
                Ok((user, _)) => user,
                // The reason goes to the server's log, never to the client.
                Err(_) => return unauthorized(),
            },
        }
    };
    route(request, &user, state)
}

fn unauthorized() -> (u16, Value) {
    status(401, "Unauthorized", "Unauthorized")
}

fn authorize(state: &Mutex<State>, user: &User, request: &RbacRequest) -> Result<(), (u16, Value)> {
    if state.lock().unwrap().rbac.allows(user, request) {
        return Ok(());
    }
    Err(status(403, "Forbidden", &request.forbidden_message(user)))
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

/// The 405 the API server answers a verb a path does not serve.
fn method_not_allowed() -> (u16, Value) {
    status(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
    )
}

fn route(request: &Request, user: &User, state: &Mutex<State>) -> (u16, Value) {
    let path = request.path.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if let ["api", "v1", "namespaces", namespace, "secrets", name] = parts[..] {
        return secrets(request, user, state, namespace, name);
    }
    if path == "/apis/authentication.k8s.io/v1/tokenreviews" {
        if request.method != "POST" {
            return method_not_allowed();
        }
        let create = RbacRequest::Resource {
            verb: "create".into(),
            group: "authentication.k8s.io".into(),
            resource: "tokenreviews".into(),
            namespace: None,
            name: None,
        };
        if let Err(refused) = authorize(state, user, &create) {
            return refused;
        }
        return token_review(&request.body, state);
    }
    let discovery = match path {
        // Discovery, as kubectl asks for it before its first request.
        "/api" => {
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        }
        "/apis" => json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [{
            "name": "authentication.k8s.io",
            "versions": [{"groupVersion": "authentication.k8s.io/v1", "version": "v1"}],
            "preferredVersion": {"groupVersion": "authentication.k8s.io/v1", "version": "v1"},
        }]}),
        "/api/v1" => json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [{
            "name": "secrets", "singularName": "secret", "namespaced": true, "kind": "Secret",
            "verbs": ["get", "patch"],
        }]}),
        "/version" => json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake"}),
        _ => {
            return status(
                404,
                "NotFound",
                &format!("the server could not find the requested resource ({path})"),
            );
        }
    };
    if request.method != "GET" {
        return method_not_allowed();
    }
    let get = RbacRequest::NonResource {
        verb: "get".into(),
        path: path.to_owned(),
    };
    if let Err(refused) = authorize(state, user, &get) {
        return refused;
    }
    (200, discovery)
}

fn query(request: &Request, key: &str) -> Option<String> {
    let (_, query) = request.path.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.to_owned())
    })
}

fn secrets(
    request: &Request,
    user: &User,
    state: &Mutex<State>,
    namespace: &str,
    name: &str,
) -> (u16, Value) {
    let verb = match request.method.as_str() {
        "GET" => "get",
        "PATCH" => "patch",
        _ => return method_not_allowed(),
    };
    let attributes = RbacRequest::Resource {
        verb: verb.into(),
        group: String::new(),
        resource: "secrets".into(),
        namespace: Some(namespace.to_owned()),
        name: Some(name.to_owned()),
    };
    if let Err(refused) = authorize(state, user, &attributes) {
        return refused;
    }
    let mut state = state.lock().unwrap();
    let key = (namespace.to_owned(), name.to_owned());
    if verb == "get" {
        // A read in a missing namespace finds no object; only writes go through the
        // NamespaceLifecycle admission plugin, which names the namespace.
        return match state.secrets.get(&key) {
            Some(secret) => (200, secret_json(namespace, name, secret)),
            None => status(404, "NotFound", &format!("secrets \"{name}\" not found")),
        };
    }
    if !state.namespaces.contains(namespace) {
        return status(
            404,
            "NotFound",
            &format!("namespaces \"{namespace}\" not found"),
        );
    }
    apply(request, &mut state, namespace, name)
}

/// Server-side apply of a Secret, as much of it as the jobs use.
fn apply(request: &Request, state: &mut State, namespace: &str, name: &str) -> (u16, Value) {
    let key = (namespace.to_owned(), name.to_owned());
    if request.headers.get("content-type").map(String::as_str)
        != Some("application/apply-patch+yaml")
    {
        return status(
            415,
            "UnsupportedMediaType",
            "only server-side apply is served here",
        );
    }
    let Some(manager) = query(request, "fieldManager").filter(|m| !m.is_empty()) else {
        return status(
            400,
            "BadRequest",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        );
    };
    let force = query(request, "force").as_deref() == Some("true");
    // Apply bodies are YAML; JSON is YAML.
    let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
        return status(
            400,
            "BadRequest",
            "error decoding YAML: the body is not an object",
        );
    };
    if body["apiVersion"] != "v1" || body["kind"] != "Secret" {
        return status(400, "BadRequest", "the body is not a v1 Secret");
    }
    if body["metadata"]["name"] != name
        || !(body["metadata"]["namespace"].is_null() || body["metadata"]["namespace"] == namespace)
    {
        return status(
            400,
            "BadRequest",
            "the name or namespace of the body does not match the URL",
        );
    }
    let mut data = BTreeMap::new();
    for (k, v) in body["data"].as_object().cloned().unwrap_or_default() {
        let Some(v) = v.as_str().filter(|v| STANDARD.decode(v).is_ok()) else {
            return status(
                400,
                "BadRequest",
                &format!("Secret \"{name}\" is invalid: data[{k}]: illegal base64 data"),
            );
        };
        data.insert(k, v.to_owned());
    }
    let mut secret = state.secrets.get(&key).cloned().unwrap_or_default();
    if !force {
        for (k, v) in &data {
            if let Some((current, owner)) = secret.data.get(k)
                && owner != &manager
                && current != v
            {
                return status(
                    409,
                    "Conflict",
                    &format!("Apply failed with 1 conflict: conflict with \"{owner}\": .data.{k}"),
                );
            }
        }
    }
    let before = secret_json(namespace, name, &secret);
    // Keys this manager applied before and no longer applies are removed; others' stay.
    secret
        .data
        .retain(|k, (_, owner)| owner != &manager || data.contains_key(k));
    for (k, v) in data {
        secret.data.insert(k, (v, manager.clone()));
    }
    secret
        .labels
        .extend(string_map(&body["metadata"]["labels"]));
    secret
        .annotations
        .extend(string_map(&body["metadata"]["annotations"]));
    body["type"]
        .as_str()
        .unwrap_or("Opaque")
        .clone_into(&mut secret.secret_type);
    // A no-op apply does not bump the resourceVersion.
    if secret_json(namespace, name, &secret) != before || !state.secrets.contains_key(&key) {
        state.resource_version += 1;
        secret.resource_version = state.resource_version;
    }
    let created = !state.secrets.contains_key(&key);
    let response = secret_json(namespace, name, &secret);
    state.secrets.insert(key, secret);
    (if created { 201 } else { 200 }, response)
}

fn secret_json(namespace: &str, name: &str, secret: &StoredSecret) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "resourceVersion": secret.resource_version.to_string(),
            "labels": secret.labels,
            "annotations": secret.annotations,
        },
        "type": secret.secret_type,
        "data": secret.data.iter().map(|(k, (v, _))| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
    })
}

fn token_review(body: &[u8], state: &Mutex<State>) -> (u16, Value) {
    let Ok(review) = serde_json::from_slice::<Value>(body) else {
        return status(400, "BadRequest", "the request body is not a TokenReview");
    };
    // Like the real server, a body without kind/apiVersion takes them from the URL (Vault's
    // Go client sends none); a body of another kind is refused.
    if !review["kind"].is_null() && review["kind"] != "TokenReview" {
        return status(400, "BadRequest", "the request body is not a TokenReview");
    }
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    if token.is_empty() {
        return status(
            400,
            "BadRequest",
            "token is required for TokenReview in authentication",
        );
    }
    let requested: Option<Vec<String>> = review["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .filter(|a| !a.is_empty());
    let result = {
        let state = state.lock().unwrap();
        authenticate(&state.key, &*state, token, requested.as_deref())
    };
    let status_body = match result {
        Ok((user, audiences)) => json!({
            "authenticated": true,
            "user": {
                "username": user.name,
                "uid": user.uid,
                "groups": user.groups,
                "extra": user.extra,
            },
            "audiences": audiences,
        }),
        Err(refusal) => refused_review(&refusal),
    };
    (
        201,
        json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": review["spec"],
            "status": status_body,
        }),
    )
}

/// `authenticated` is `omitempty` in Go, so a refusal carries only the empty user and the error.
fn refused_review(refusal: &Refusal) -> Value {
    json!({"user": {}, "error": refusal.review_error()})
}
