//! A three-node OpenBao cluster with integrated storage (Raft) on loopback, as users who
//! outgrow one Vault run it: each node its own process, data directory, API and cluster port;
//! initialised with one unseal key, the other nodes joined and unsealed, and every node
//! waited for until it knows the active node. Nodes can be killed, restarted (they come back
//! sealed and are unsealed, as an operator or an auto-unseal would) and stepped down.
//!
//! Raft timing is `performance_multiplier = 1` (OpenBao's docs/configuration/storage/raft:
//! the tightest, meant for fast networks such as loopback), so an election takes about two
//! seconds rather than ten.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::openbao::{bao_bin, bao_cli, free_port};
use super::tools::{Ran, Scratch};

/// The longest any wait of the harness takes before the test fails.
const WAIT: Duration = Duration::from_secs(45);

pub struct RaftNode {
    pub api_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl RaftNode {
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

pub struct RaftCluster {
    pub nodes: Vec<RaftNode>,
    pub root_token: String,
    unseal_key: String,
    pub dir: Scratch,
}

/// An HTTP answer as received: status and body.
pub type Answer = (u16, String);

/// One HTTP/1.0 request to `127.0.0.1:port`, without following redirects: the answer exactly
/// as the node gives it. `None` when nothing answers.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> Option<Answer> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nX-Vault-Token: {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

impl RaftCluster {
    /// Starts three nodes, initialises the first, joins the others, and waits until all three
    /// are voters and every node knows the active one. `standby_reads`: OpenBao's default since
    /// 2.5, standbys answer reads themselves, possibly behind the active node (OpenBao
    /// docs/concepts/ha.mdx, "Horizontal scalability"); `false` sets `disable_standby_reads`,
    /// and standbys forward every request to the active node.
    pub fn start(standby_reads: bool) -> Self {
        let dir = Scratch::new();
        let nodes = (1..=3)
            .map(|n| {
                let (api_port, cluster_port) = (free_port(), free_port());
                let data = dir.path().join(format!("node{n}"));
                std::fs::create_dir_all(&data).unwrap();
                let config = dir.write(
                    &format!("node{n}.hcl"),
                    format!(
                        r#"storage "raft" {{
  path = "{data}"
  node_id = "node{n}"
  performance_multiplier = 1
}}
listener "tcp" {{
  address = "127.0.0.1:{api_port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{api_port}"
cluster_addr = "https://127.0.0.1:{cluster_port}"
disable_mlock = true
disable_standby_reads = {}
"#,
                        !standby_reads,
                        data = data.display()
                    ),
                );
                RaftNode {
                    api_port,
                    config,
                    log: dir.path().join(format!("node{n}.log")),
                    child: None,
                }
            })
            .collect();
        let mut cluster = Self {
            nodes,
            root_token: String::new(),
            unseal_key: String::new(),
            dir,
        };
        for i in 0..3 {
            cluster.spawn(i);
        }
        cluster.wait_until("node1 listens", |c| c.health(0).is_some());
        let init = cluster
            .cli(
                0,
                &[
                    "operator",
                    "init",
                    "-key-shares=1",
                    "-key-threshold=1",
                    "-format=json",
                ],
            )
            .ok();
        let init: serde_json::Value = serde_json::from_str(&init.stdout).unwrap();
        init["unseal_keys_b64"][0]
            .as_str()
            .unwrap()
            .clone_into(&mut cluster.unseal_key);
        init["root_token"]
            .as_str()
            .unwrap()
            .clone_into(&mut cluster.root_token);
        cluster.unseal(0);
        cluster.wait_until("node1 active", |c| c.active() == Some(0));
        // Joined nodes become voters once autopilot finds them stable; the default waits 10 s.
        cluster
            .cli(
                0,
                &[
                    "operator",
                    "raft",
                    "autopilot",
                    "set-config",
                    "-server-stabilization-time=1s",
                ],
            )
            .ok();
        for i in 1..3 {
            let leader = cluster.nodes[0].addr();
            cluster.cli(i, &["operator", "raft", "join", &leader]).ok();
            cluster.unseal(i);
        }
        cluster.wait_until("three voters", |c| c.voters() == 3);
        cluster.wait_ready();
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let child = Command::new(bao_bin())
            .arg("server")
            .arg(format!("-config={}", node.config.display()))
            .arg("-log-level=debug")
            .env_clear()
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start bao server");
        node.child = Some(child);
    }

    /// Runs the `bao` CLI against node `i` as root.
    pub fn cli(&self, i: usize, args: &[&str]) -> Ran {
        bao_cli(
            &self.nodes[i].addr(),
            &self.root_token,
            None,
            self.dir.path(),
            args,
        )
    }

    /// The `bao` CLI against the active node.
    pub fn cli_active(&self, args: &[&str]) -> Ran {
        self.cli(self.wait_active(), args)
    }

    fn unseal(&self, i: usize) {
        self.cli(i, &["operator", "unseal", &self.unseal_key]).ok();
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// `sys/health` of node `i`: its status (200 active, 429 standby, 503 sealed) and body.
    fn health(&self, i: usize) -> Option<(u16, serde_json::Value)> {
        if !self.nodes[i].is_running() {
            return None;
        }
        let (status, body) = http(self.nodes[i].api_port, "GET", "/v1/sys/health", "", None)?;
        Some((status, serde_json::from_str(&body).ok()?))
    }

    /// The node that is active now, if one is.
    pub fn active(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| matches!(self.health(i), Some((200, _))))
    }

    /// Waits until a node is active, and returns it.
    pub fn wait_active(&self) -> usize {
        self.wait_until("an active node", |c| c.active().is_some());
        self.active().unwrap()
    }

    fn voters(&self) -> usize {
        let Some(active) = self.active() else {
            return 0;
        };
        let ran = self.cli(active, &["operator", "raft", "list-peers", "-format=json"]);
        let Ok(peers) = serde_json::from_str::<serde_json::Value>(&ran.stdout) else {
            return 0;
        };
        peers["data"]["config"]["servers"]
            .as_array()
            .map_or(0, |s| s.iter().filter(|s| s["voter"] == true).count())
    }

    /// Waits until every running node is unsealed and names the active node as its leader,
    /// so that it forwards what it cannot answer itself.
    pub fn wait_ready(&self) {
        self.wait_until("every node following the active one", |c| {
            let Some(active) = c.active() else {
                return false;
            };
            let leader = c.nodes[active].addr();
            (0..c.nodes.len())
                .filter(|&i| c.nodes[i].is_running())
                .all(|i| {
                    http(c.nodes[i].api_port, "GET", "/v1/sys/leader", "", None)
                        .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
                        .is_some_and(|l| l["leader_address"] == leader.as_str())
                })
        });
    }

    /// Enables KV version 2 at `mount` and waits until every node answers reads on it: a
    /// standby serves reads itself and reports the mount as upgrading until it sees the active
    /// node finish (OpenBao builtin/logical/kv/upgrade.go).
    pub fn enable_kv2(&self, mount: &str) {
        self.cli_active(&["secrets", "enable", &format!("-path={mount}"), "kv-v2"])
            .ok();
        let path = format!("/v1/{mount}/data/no-such-entry");
        self.wait_until("the mount readable on every node", |c| {
            (0..c.nodes.len())
                .filter(|&i| c.nodes[i].is_running())
                .all(|i| {
                    http(c.nodes[i].api_port, "GET", &path, &c.root_token, None)
                        .is_some_and(|(status, _)| status == 404)
                })
        });
    }

    /// Kills node `i` at once (SIGKILL), as a crashed pod.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its data, unseals it, and waits until it follows the leader.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_until("the restarted node listening", |c| c.health(i).is_some());
        self.unseal(i);
        self.wait_ready();
    }

    /// `bao operator step-down` on node `i`: it gives up being active and another node is
    /// elected.
    pub fn step_down(&self, i: usize) {
        self.cli(i, &["operator", "step-down"]).ok();
    }

    #[track_caller]
    fn wait_until(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "OpenBao cluster: no {what} within {WAIT:?}; node logs:\n{}",
                (0..self.nodes.len())
                    .map(|i| {
                        let log = self.log(i);
                        let tail: Vec<&str> = log.lines().rev().take(15).collect();
                        format!(
                            "--- node{}\n{}",
                            i + 1,
                            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RaftCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
