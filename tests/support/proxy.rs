//! A TCP proxy in front of a server that lets a set number of HTTP requests through and then
//! goes away, as a Vault that is stopped in the middle of a job's run: the connection drops
//! and every later connection is refused.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// The listening half both proxies share: accepts on a free loopback port, connects each
/// client to `upstream` and hands the pair to `relay` on its own thread, until dropped.
/// Dropping the listener makes later connections fail outright.
struct Listener {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    fn start(
        upstream: &str,
        mut relay: impl FnMut(TcpStream, TcpStream, &Arc<AtomicBool>) + Send + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_owned();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            client.set_nonblocking(false).unwrap();
                            let server = TcpStream::connect(&upstream).unwrap();
                            relay(client, server, &stop);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
            })
        };
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub struct CutProxy {
    pub addr: String,
    _listener: Listener,
}

impl CutProxy {
    /// Forwards to `upstream` (`127.0.0.1:port`) until `requests` requests have gone through.
    pub fn start(upstream: &str, requests: usize) -> Self {
        let seen = Arc::new(AtomicUsize::new(0));
        let listener = Listener::start(upstream, move |client, server, stop| {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || relay(client, server, &stop, &seen, requests));
        });
        Self {
            addr: listener.addr.clone(),
            _listener: listener,
        }
    }
}

fn relay(
    client: TcpStream,
    server: TcpStream,
    stop: &AtomicBool,
    seen: &AtomicUsize,
    limit: usize,
) {
    relay_chunks(client, server, |chunk| {
        let starts = http_request_starts(chunk);
        if starts > 0 && seen.fetch_add(starts, Ordering::SeqCst) + starts > limit {
            stop.store(true, Ordering::Relaxed);
            return None;
        }
        Some(|| ())
    });
}

/// How many HTTP requests begin in `chunk`. A request line ends in " HTTP/1.1\r\n"; clients
/// write it in one piece.
pub(super) fn http_request_starts(chunk: &[u8]) -> usize {
    chunk.windows(11).filter(|w| w == b" HTTP/1.1\r\n").count()
}

/// Relays the bytes `client` sends to `server` chunk by chunk, and all of `server`'s answers
/// back unchanged, until either side closes; then shuts both. `before_chunk` sees each chunk
/// first: `None` drops it and ends the relay (a server gone away), `Some(after)` passes it on
/// and calls `after` once it is written.
pub(super) fn relay_chunks<A: FnOnce()>(
    mut client: TcpStream,
    mut server: TcpStream,
    mut before_chunk: impl FnMut(&[u8]) -> Option<A>,
) {
    let (mut server_read, mut client_write) =
        (server.try_clone().unwrap(), client.try_clone().unwrap());
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut server_read, &mut client_write);
        let _ = client_write.shutdown(Shutdown::Both);
    });
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let Some(after) = before_chunk(&buf[..n]) else {
            break;
        };
        if server.write_all(&buf[..n]).is_err() {
            break;
        }
        after();
    }
    let _ = server.shutdown(Shutdown::Both);
    let _ = client.shutdown(Shutdown::Both);
    let _ = back.join();
}

/// A TCP proxy that holds each chunk a client sends for a random 0..`max_ms` milliseconds
/// before passing it on, as a slow or busy network does: each of a job's requests is one
/// chunk, so two jobs behind it interleave their requests differently on every run.
pub struct DelayProxy {
    pub addr: String,
    _listener: Listener,
}

impl DelayProxy {
    pub fn start(upstream: &str, max_ms: u64) -> Self {
        let mut seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        let listener = Listener::start(upstream, move |client, server, _| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let seed = seed;
            std::thread::spawn(move || delay_relay(client, server, max_ms, seed));
        });
        Self {
            addr: listener.addr.clone(),
            _listener: listener,
        }
    }
}

fn delay_relay(client: TcpStream, server: TcpStream, max_ms: u64, mut seed: u64) {
    relay_chunks(client, server, |_| {
        // xorshift: a different delay per chunk, no shared state between connections.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(seed % (max_ms + 1)));
        Some(|| ())
    });
}
