//! The aarch64 release binaries, run on this x86-64 machine under `qemu-user` (Debian's
//! `qemu-user-static`, invoked directly, so no `binfmt_misc` registration is needed) against a
//! real OpenBao behind TLS: the bootstrap's first run and its no-op, the CA it made checked
//! with openssl, then a client issued and the NAS bundle synced. A binary built for the wrong
//! target does not start; one whose aarch64 crypto is wrong (ring's assembly) fails the TLS
//! handshake or makes certificates openssl refuses. `scripts/build-images.sh test` builds the
//! binaries (scripts/cross-build.sh); scripts/test.sh runs it first.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::images::{elf_facts, qemu_aarch64, release_bin};
use crate::support::jobs::JobRun;
use crate::support::openbao::{OpenBao, ROOT_TOKEN};
use crate::support::tools::{Scratch, run, verify_cacerts};

/// Runs the aarch64 release binary of `krate` under qemu-user, with only the variables given,
/// as `support::jobs` runs the host's binaries.
fn run_aarch64(krate: &str, args: &[&str], vars: &[(&str, &str)], dir: &Path) -> JobRun {
    let output = Command::new(qemu_aarch64())
        .arg(release_bin(krate, "arm64"))
        .args(args)
        .env_clear()
        .env("LOG_FORMAT", "json")
        .env("VAULT_SA_TOKEN_PATH", dir.join("no-such-token"))
        .envs(vars.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run qemu-aarch64");
    JobRun {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn the_aarch64_binaries_are_static_and_only_an_aarch64_machine_runs_them() {
    let dir = Scratch::new();
    for krate in ["bootstrap-job", "nas-sync-job", "client-issuer-job"] {
        let facts = elf_facts(&std::fs::read(release_bin(krate, "arm64")).unwrap()).unwrap();
        assert_eq!(facts.machine, 183, "{krate}: EM_AARCH64");
        assert!(!facts.interpreter, "{krate} asks for a dynamic loader");
    }
    // The emulator refuses another machine's binary, so its runs below prove the target.
    let wrong = run(
        &qemu_aarch64(),
        &[
            release_bin("bootstrap-job", "amd64").to_str().unwrap(),
            "--help",
        ],
        dir.path(),
    )
    .failed();
    assert!(
        wrong.all().contains("Invalid ELF image"),
        "qemu-aarch64 on the x86_64 binary:\n{}",
        wrong.all()
    );
}

#[test]
fn the_aarch64_jobs_converge_against_openbao_over_tls_under_qemu_user() {
    let bao = OpenBao::start_tls();
    let dir = Scratch::new();
    let ca = bao.tls_ca.clone().unwrap();
    let vault = [
        ("VAULT_ADDR", bao.addr.as_str()),
        ("VAULT_CACERT", ca.to_str().unwrap()),
        ("VAULT_TOKEN", ROOT_TOKEN),
    ];

    let first = run_aarch64("bootstrap-job", &[], &vault, dir.path());
    assert_eq!(first.code, 0, "first run:\n{}", first.stderr);
    assert!(
        first.messages().contains(&"istio CA converged".to_owned()),
        "{}",
        first.stderr
    );
    let versions =
        || ["istio/ca", "istio/clusters/homelab", "istio/clusters/nas"].map(|p| bao.kv_version(p));
    assert_eq!(versions(), [1, 1, 1]);
    let noop = run_aarch64("bootstrap-job", &[], &vault, dir.path());
    assert_eq!(noop.code, 0, "second run:\n{}", noop.stderr);
    assert_eq!(
        noop.messages().last().map(String::as_str),
        Some("istio CA verified; nothing to do")
    );
    assert_eq!(noop.last_field("writes"), Some(0.into()));
    assert_eq!(versions(), [1, 1, 1], "the second run wrote");

    // What the aarch64 build signed, verified by openssl on the host.
    for file in ["ca-cert.pem", "root-cert.pem", "cert-chain.pem"] {
        dir.write(file, bao.kv_field("istio/clusters/nas", file));
    }
    assert_eq!(
        verify_cacerts(dir.path()).ok().stdout.trim(),
        "ca-cert.pem: OK"
    );

    dir.write(
        "clients.yaml",
        "clients:\n  - name: alice\n    email: alice@example.org\n",
    );
    let clients = dir.path().join("clients.yaml");
    let mut issuer_vars = vault.to_vec();
    issuer_vars.push(("CLIENTS_FILE", clients.to_str().unwrap()));
    let issued = run_aarch64("client-issuer-job", &[], &issuer_vars, dir.path());
    assert_eq!(issued.code, 0, "client-issuer-job:\n{}", issued.stderr);
    assert_eq!(bao.kv_version("pki/clients/alice"), 1);

    let mut sync_vars = vault.to_vec();
    sync_vars.push(("SYNC_TARGET", "stdout"));
    // The manifests go to the test's pipe, not to Git: the opt-out the job asks for.
    sync_vars.push(("SYNC_PLAINTEXT_KEYS", "allow"));
    let synced = run_aarch64("nas-sync-job", &[], &sync_vars, dir.path());
    assert_eq!(synced.code, 0, "nas-sync-job:\n{}", synced.stderr);
    assert!(
        synced.stdout.contains("name: cacerts") && synced.stdout.contains("kind: Secret"),
        "{}",
        synced.stdout
    );
}
