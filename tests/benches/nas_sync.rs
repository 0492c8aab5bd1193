//! The no-drift re-sync of `nas-sync-job` (log in, read, compare, exit) against its shell
//! equivalent (`bao kv get` + a GET of the Secret + a `jq` comparison), both against the same
//! OpenBao server and the same fake Kubernetes API server, in one run. Prints median wall time
//! and peak memory; asserts nothing about time.
//!
//! The Secret is read with `curl` and the service-account token, as a script in a pod does:
//! the kubectl found on these machines does not send a static token over plain HTTP, which is
//! all the fake API server speaks.
//!
//! `cargo build --release --bins && JOB_PROFILE=release cargo bench -p integration-tests --bench nas_sync`
//! (or `just bench-sync`). Needs GNU time, curl and jq.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The shared test helpers are compiled in whole; the benchmark uses part of them.
#![allow(dead_code)]

#[path = "../support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Instant;

use support::jobs::{job_bin, run_job};
use support::kube_api::FakeApiServer;
use support::openbao::{OpenBao, ROOT_TOKEN, bao_bin};
use support::tools::Scratch;

const RUNS: usize = 15;

/// Median wall milliseconds and largest max-RSS KiB of `RUNS` runs of `script` under sh.
fn measure(script: &str, env: &[(&str, &str)], dir: &std::path::Path) -> (f64, u64) {
    let mut walls = Vec::new();
    let mut rss = 0;
    for _ in 0..RUNS {
        let start = Instant::now();
        let output = Command::new("/usr/bin/time")
            .args(["-f", "%M", "sh", "-ec", script])
            .envs(env.iter().copied())
            .current_dir(dir)
            .output()
            .expect("run /usr/bin/time (apt-get install time)");
        walls.push(start.elapsed().as_secs_f64() * 1000.0);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        rss = rss.max(stderr.lines().last().unwrap().trim().parse().unwrap());
    }
    walls.sort_by(f64::total_cmp);
    (walls[RUNS / 2], rss)
}

fn main() {
    let bao = OpenBao::start();
    let dir = Scratch::new();
    let vault = [
        ("VAULT_ADDR", bao.addr.as_str()),
        ("VAULT_TOKEN", ROOT_TOKEN),
    ];
    assert_eq!(run_job("bootstrap-job", &vault, dir.path()).code, 0);
    let api = FakeApiServer::start();
    api.create_namespace("istio-system");
    api.create_service_account("istio-system", "istio-ca-sync");
    api.grant("istio-system", "istio-ca-sync", "istio-system", "cacerts");
    let bench_token = api.api_token("istio-system", "istio-ca-sync");
    let kubeconfig = dir.write("kubeconfig", api.kubeconfig(&bench_token));
    let kubeconfig = kubeconfig.to_str().unwrap();
    let mut env = vault.to_vec();
    env.extend([
        ("KUBECONFIG", kubeconfig),
        ("LOG_FORMAT", "json"),
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ]);
    assert_eq!(
        run_job("nas-sync-job", &env, dir.path()).code,
        0,
        "first sync"
    );

    let job = job_bin("nas-sync-job");
    let ours = measure(&format!("exec {}", job.display()), &env, dir.path());
    let patches = api.count("PATCH");

    let bao = bao_bin();
    let shell = format!(
        "{bao} kv get -format=json -mount=secret istio/clusters/nas > v.json
         curl -sf -H 'Authorization: Bearer {bench_token}' {api}/api/v1/namespaces/istio-system/secrets/cacerts > k.json
         for key in ca-cert.pem ca-key.pem root-cert.pem cert-chain.pem; do
           [ \"$(jq -r --arg k \"$key\" '.data.data[$k]' v.json)\" = \"$(jq -r --arg k \"$key\" '.data[$k]' k.json | base64 -d)\" ]
         done",
        bao = bao.display(),
        api = api.url
    );
    let theirs = measure(&shell, &env, dir.path());
    assert_eq!(api.count("PATCH"), patches, "a no-drift run wrote");

    println!(
        "no-drift re-sync of istio-system/cacerts, {RUNS} runs each (median wall, largest peak RSS)"
    );
    println!("{:<44} {:>10} {:>14}", "", "wall ms", "max RSS KiB");
    println!("{:<44} {:>10.2} {:>14}", "nas-sync-job", ours.0, ours.1);
    println!(
        "{:<44} {:>10.2} {:>14}",
        "shell: bao kv get + curl GET + jq", theirs.0, theirs.1
    );
    println!(
        "ratio: {:.1}x faster, {:.1}x less memory",
        theirs.0 / ours.0,
        f64::from(u32::try_from(theirs.1).unwrap()) / f64::from(u32::try_from(ours.1).unwrap())
    );
}
