//! A TCP forwarder in front of an OpenBao cluster, as a Kubernetes Service in front of its
//! pods: each new connection goes to one node, chosen when it is accepted, and the bytes are
//! relayed both ways unchanged. Two ways of choosing, as a cluster has two kinds of Service:
//!
//! - [`Route::Active`]: the one node the test names, as openbao-helm's `<release>-active`
//!   Service selects only the pod labelled `openbao-active: "true"` (OpenBao's Kubernetes
//!   service registration sets that label; charts/openbao/templates/server-ha-active-service.yaml).
//!   Like the Service's endpoints, it moves to a new active node only when told, after the
//!   election; until then connections go to the old node, dead or stepped down.
//! - [`Route::AllNodes`]: every node in turn, as the chart's main Service over all pods with
//!   `publishNotReadyAddresses: true`: a connection may land on a standby, a sealed node, or a
//!   dead one (then it is closed at once, as a connection to a gone pod fails).
//!
//! It counts HTTP requests, and can stop at a chosen one to let the test change the cluster at
//! that exact point of a job's run.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::proxy::{http_request_starts, relay_chunks};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Every connection to this port.
    Active(u16),
    /// Connections to these ports in turn.
    AllNodes(Vec<u16>),
}

/// Where request `at` of the armed trigger is when the test is told.
struct Trigger {
    at: usize,
    /// Hold the request until the test resumes it (else: forward it, then tell).
    hold: bool,
    reached: Sender<()>,
    resume: Receiver<()>,
}

struct Shared {
    route: Mutex<Route>,
    turn: AtomicUsize,
    requests: AtomicUsize,
    trigger: Mutex<Option<Trigger>>,
    stop: AtomicBool,
}

pub struct Forwarder {
    pub addr: String,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// The test's side of an armed trigger.
pub struct Armed {
    reached: Receiver<()>,
    resume: Sender<()>,
}

impl Armed {
    /// Whether the request was reached within `timeout`.
    pub fn reached(&self, timeout: Duration) -> bool {
        self.reached.recv_timeout(timeout).is_ok()
    }

    /// Lets a held request go on.
    pub fn resume(&self) {
        let _ = self.resume.send(());
    }
}

impl Forwarder {
    pub fn start(route: Route) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared {
            route: Mutex::new(route),
            turn: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            trigger: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                while !shared.stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let shared = shared.clone();
                            std::thread::spawn(move || connection(client, &shared));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        Self {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    /// Where new connections go from now on (connections already open stay where they are).
    pub fn set_route(&self, route: Route) {
        *self.shared.route.lock().unwrap() = route;
    }

    /// HTTP requests seen so far.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Stops at the `at`-th request from now (1: the next).
    pub fn arm(&self, at: usize, hold: bool) -> Armed {
        let (reached_tx, reached) = channel();
        let (resume, resume_rx) = channel();
        *self.shared.trigger.lock().unwrap() = Some(Trigger {
            at: self.requests() + at,
            hold,
            reached: reached_tx,
            resume: resume_rx,
        });
        Armed { reached, resume }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn connection(client: TcpStream, shared: &Shared) {
    client.set_nonblocking(false).unwrap();
    let port = match &*shared.route.lock().unwrap() {
        Route::Active(port) => *port,
        Route::AllNodes(ports) => ports[shared.turn.fetch_add(1, Ordering::Relaxed) % ports.len()],
    };
    let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    relay_chunks(client, server, |chunk| {
        let starts = http_request_starts(chunk);
        let mut after = None;
        if starts > 0 {
            let seen = shared.requests.fetch_add(starts, Ordering::SeqCst) + starts;
            let mut trigger = shared.trigger.lock().unwrap();
            if trigger.as_ref().is_some_and(|t| seen >= t.at) {
                let t = trigger.take().unwrap();
                drop(trigger);
                if t.hold {
                    let _ = t.reached.send(());
                    let _ = t.resume.recv_timeout(Duration::from_secs(60));
                } else {
                    after = Some(t.reached);
                }
            }
        }
        Some(move || {
            if let Some(reached) = after {
                let _ = reached.send(());
            }
        })
    });
}
