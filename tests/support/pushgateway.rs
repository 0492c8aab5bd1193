//! A real Prometheus Pushgateway on a free loopback port, stopped on drop, and the samples
//! of one job's group as it exposes them to Prometheus.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::openbao::free_port;
use super::tools::{Scratch, run};

pub struct Pushgateway {
    pub url: String,
    child: Child,
    dir: Scratch,
}

impl Pushgateway {
    pub fn start() -> Self {
        let port = free_port();
        let child = Command::new("prometheus-pushgateway")
            .args([
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--log.level=warn".into(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus-pushgateway");
        let gateway = Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
            dir: Scratch::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gateway.scrape_raw().success {
            assert!(Instant::now() < deadline, "pushgateway did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        gateway
    }

    fn scrape_raw(&self) -> super::tools::Ran {
        run(
            "curl",
            &["-s", "-f", &format!("{}/metrics", self.url)],
            self.dir.path(),
        )
    }

    /// The exposition Prometheus scrapes.
    pub fn scrape(&self) -> String {
        self.scrape_raw().ok().stdout
    }

    /// The sample lines of `job`'s group, sorted.
    pub fn group(&self, job: &str) -> Vec<String> {
        let needle = format!("job=\"{job}\"");
        let mut lines: Vec<String> = self
            .scrape()
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(&needle))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }

    /// The value of the sample whose line starts with `series` (name and labels as
    /// exposed).
    pub fn value(&self, job: &str, series: &str) -> Option<f64> {
        self.group(job).iter().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(|v| v.parse().unwrap())
        })
    }
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
