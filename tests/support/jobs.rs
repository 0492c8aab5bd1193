//! Running the job binaries as an operator or a Pod would: a fresh process with only the
//! variables given (never the test's own environment), JSON logs on stderr, an exit code.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::openbao::workspace_root;

/// The binary of `job`, built by `cargo build --bins` (scripts/test.sh does it first).
pub fn job_bin(job: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map_or_else(|_| workspace_root().join("target"), PathBuf::from);
    let path = target.join("debug").join(job);
    assert!(
        path.exists(),
        "{} is missing; run `cargo build --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

pub struct JobRun {
    pub code: i32,
    #[allow(dead_code)] // Read by the jobs that print reports (client-issuer-job).
    pub stdout: String,
    pub stderr: String,
}

impl JobRun {
    /// The `message` of every JSON log line.
    pub fn messages(&self) -> Vec<String> {
        self.log_lines()
            .iter()
            .filter_map(|l| l["message"].as_str().map(str::to_owned))
            .collect()
    }

    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        self.stderr
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The value of `field` in the last log line that has it.
    pub fn last_field(&self, field: &str) -> Option<serde_json::Value> {
        self.log_lines()
            .into_iter()
            .rev()
            .find_map(|l| l.get(field).cloned())
    }

    /// The message of the final error line.
    pub fn error(&self) -> String {
        self.log_lines()
            .into_iter()
            .rev()
            .find(|l| l["level"] == "ERROR")
            .and_then(|l| l["message"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

fn command(job: &str, vars: &[(&str, &str)], dir: &Path) -> Command {
    let mut cmd = Command::new(job_bin(job));
    cmd.env_clear()
        .env("LOG_FORMAT", "json")
        .env("VAULT_SA_TOKEN_PATH", dir.join("no-such-token"))
        .envs(vars.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

pub fn run_job(job: &str, vars: &[(&str, &str)], dir: &Path) -> JobRun {
    let output = command(job, vars, dir).output().expect("run the job");
    JobRun {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

pub fn spawn_job(job: &str, vars: &[(&str, &str)], dir: &Path) -> Child {
    command(job, vars, dir).spawn().expect("spawn the job")
}

pub fn spawn_job_with_args(job: &str, args: &[&str], vars: &[(&str, &str)], dir: &Path) -> Child {
    command(job, vars, dir)
        .args(args)
        .spawn()
        .expect("spawn the job")
}

pub fn wait_job(child: Child) -> JobRun {
    let output = child.wait_with_output().expect("wait for the job");
    JobRun {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

impl JobRun {
    /// Standard output as one JSON document (`plan -o json`, `report -o json`).
    pub fn stdout_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// The `(a, b)` string fields of each object in the array at `list`, e.g. a plan's
/// `("action", "object")` pairs.
pub fn field_pairs<'a>(
    document: &'a serde_json::Value,
    list: &str,
    a: &str,
    b: &str,
) -> Vec<(&'a str, &'a str)> {
    document[list]
        .as_array()
        .unwrap_or_else(|| panic!("no array '{list}' in {document}"))
        .iter()
        .map(|item| {
            let field = |name: &str| item[name].as_str().unwrap_or_default();
            (field(a), field(b))
        })
        .collect()
}
