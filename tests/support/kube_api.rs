//! An over-the-wire stand-in for the Kubernetes API server, for what the jobs and Vault use
//! of it. It speaks plain HTTP/1.1 on a free loopback port and answers as the real one does:
//! `TokenReview` (for Vault's Kubernetes auth method) authenticates only the tokens this
//! cluster issued, with the real response shape.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};

/// A service account a token was issued to.
#[derive(Debug, Clone)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

#[derive(Default)]
struct State {
    /// token -> the service account it authenticates.
    tokens: HashMap<String, ServiceAccount>,
    /// Request lines seen, for assertions.
    requests: Vec<String>,
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
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
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
    Some(Request { method, path, body })
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
            404 => "Not Found",
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
    match (
        request.method.as_str(),
        request.path.split('?').next().unwrap_or(""),
    ) {
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
