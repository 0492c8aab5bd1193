//! An over-the-wire stand-in for the Kubernetes API server, for what the jobs and Vault use
//! of it. It speaks plain HTTP/1.1 on a free loopback port and answers as the real one does:
//! - `TokenReview` (for Vault's Kubernetes auth method) authenticates only the tokens this
//!   cluster issued, with the real response shape;
//! - Secrets: GET and server-side apply (PATCH `application/apply-patch+yaml` with a
//!   `fieldManager`), with bearer-token authentication, per-Secret RBAC (403), missing
//!   namespaces (404), `resourceVersion` bumped only by real changes, field ownership per
//!   data key (409 on a conflicting apply without `force`), and `Status` bodies for errors.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

/// A service account a token was issued to.
#[derive(Debug, Clone)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

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

#[derive(Default)]
struct State {
    /// token -> the service account it authenticates.
    tokens: HashMap<String, ServiceAccount>,
    /// Request lines seen, for assertions.
    requests: Vec<String>,
    namespaces: BTreeSet<String>,
    secrets: BTreeMap<(String, String), StoredSecret>,
    /// (service account "ns:name", verb, namespace, secret name) that RBAC allows.
    grants: BTreeSet<(String, String, String, String)>,
    resource_version: u64,
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
        let state = Arc::new(Mutex::new(State::default()));
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

    /// Makes `token` authenticate as `namespace/name`, as if the cluster had issued it.
    pub fn issue_token(&self, token: &str, namespace: &str, name: &str) {
        self.state.lock().unwrap().tokens.insert(
            token.to_owned(),
            ServiceAccount {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
        );
    }

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

    pub fn create_namespace(&self, namespace: &str) {
        self.state
            .lock()
            .unwrap()
            .namespaces
            .insert(namespace.to_owned());
    }

    /// Lets the service account `get` and `patch` one Secret (a Role with `resourceNames`).
    pub fn grant(&self, sa_namespace: &str, sa_name: &str, namespace: &str, secret: &str) {
        let mut state = self.state.lock().unwrap();
        for verb in ["get", "patch"] {
            state.grants.insert((
                format!("{sa_namespace}:{sa_name}"),
                verb.into(),
                namespace.into(),
                secret.into(),
            ));
        }
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
        state
            .lock()
            .unwrap()
            .requests
            .push(format!("{} {}", request.method, request.path));
        let (code, body) = route(&request, state);
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

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

fn route(request: &Request, state: &Mutex<State>) -> (u16, Value) {
    let path = request.path.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if let ["api", "v1", "namespaces", namespace, "secrets", name] = parts[..] {
        return secrets(request, state, namespace, name);
    }
    match (request.method.as_str(), path) {
        // Discovery, as kubectl asks for it before its first request.
        ("GET", "/api") => (
            200,
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
        ),
        ("GET", "/apis") => (
            200,
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [{
                "name": "authentication.k8s.io",
                "versions": [{"groupVersion": "authentication.k8s.io/v1", "version": "v1"}],
                "preferredVersion": {"groupVersion": "authentication.k8s.io/v1", "version": "v1"},
            }]}),
        ),
        ("GET", "/api/v1") => (
            200,
            json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [{
                "name": "secrets", "singularName": "secret", "namespaced": true, "kind": "Secret",
                "verbs": ["get", "patch"],
            }]}),
        ),
        ("GET", "/version") => (
            200,
            json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake"}),
        ),
        ("POST", "/apis/authentication.k8s.io/v1/tokenreviews") => {
            token_review(&request.body, state)
        }
        (_, "/apis/authentication.k8s.io/v1/tokenreviews") => status(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        ),
        (_, path) => status(
            404,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
        ),
    }
}

fn query(request: &Request, key: &str) -> Option<String> {
    let (_, query) = request.path.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.to_owned())
    })
}

fn secrets(request: &Request, state: &Mutex<State>, namespace: &str, name: &str) -> (u16, Value) {
    let mut state = state.lock().unwrap();
    // Authentication, then RBAC, as the API server does.
    let token = request
        .headers
        .get("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or_default();
    let Some(sa) = state.tokens.get(token).cloned() else {
        return status(401, "Unauthorized", "Unauthorized");
    };
    let verb = match request.method.as_str() {
        "GET" => "get",
        "PATCH" => "patch",
        _ => {
            return status(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            );
        }
    };
    let user = format!("{}:{}", sa.namespace, sa.name);
    if !state
        .grants
        .contains(&(user, verb.to_owned(), namespace.to_owned(), name.to_owned()))
    {
        return status(
            403,
            "Forbidden",
            &format!(
                "secrets \"{name}\" is forbidden: User \"system:serviceaccount:{}:{}\" cannot {verb} resource \"secrets\" in API group \"\" in the namespace \"{namespace}\"",
                sa.namespace, sa.name
            ),
        );
    }
    if !state.namespaces.contains(namespace) {
        return status(
            404,
            "NotFound",
            &format!("namespaces \"{namespace}\" not found"),
        );
    }
    let key = (namespace.to_owned(), name.to_owned());
    if verb == "get" {
        return match state.secrets.get(&key) {
            Some(secret) => (200, secret_json(namespace, name, secret)),
            None => status(404, "NotFound", &format!("secrets \"{name}\" not found")),
        };
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
    let string_map = |v: &Value| -> BTreeMap<String, String> {
        v.as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    };
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
    let audiences = review["spec"]["audiences"].clone();
    let known = state.lock().unwrap().tokens.get(token).cloned();
    let status_body = match known {
        Some(sa) => json!({
            "authenticated": true,
            "user": {
                "username": format!("system:serviceaccount:{}:{}", sa.namespace, sa.name),
                "uid": super::openbao::service_account_uid(&sa.namespace, &sa.name),
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", sa.namespace), "system:authenticated"],
            },
            "audiences": if audiences.is_array() { audiences } else { json!(["https://kubernetes.default.svc.cluster.local"]) },
        }),
        None => {
            json!({"authenticated": false, "error": "[invalid bearer token, token lookup failed]"})
        }
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
