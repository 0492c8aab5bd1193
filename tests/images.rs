//! The job images, as `scripts/build-images.sh test` builds them with buildah from
//! `images/**/Dockerfile` (scripts/test.sh runs it first), run with podman the way the
//! manifests run them: as user 65532, read-only root filesystem, no capabilities, against a
//! real OpenBao on the host's loopback. Each image must fit in 15 MB.

use crate::support::openbao::{OpenBao, ROOT_TOKEN};
use crate::support::tools::{Ran, Scratch};

const IMAGES: [&str; 3] = ["istio-ca-bootstrap", "istio-ca-sync", "client-issuer"];
const BUDGET_BYTES: u64 = 15_000_000;

/// podman on the storage buildah wrote to (selected the same way, by the environment).
fn podman(args: &[&str], dir: &std::path::Path) -> Ran {
    let output = std::process::Command::new("podman")
        .args(args)
        .env("STORAGE_DRIVER", "vfs")
        .current_dir(dir)
        .output()
        .expect("run podman (apt-get install podman runc)");
    Ran {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `podman run` with the pod's security settings; `extra` adds environment and mounts.
fn run_image(image: &str, extra: &[&str], dir: &std::path::Path) -> Ran {
    let reference = format!("localhost/homelab-pki/{image}:test");
    let mut args = vec![
        "run",
        "--rm",
        "--runtime",
        "runc",
        "--network",
        "host",
        "--read-only",
        "--user",
        "65532:65532",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        // Without these podman copies the host's limits, which runc may not set where the
        // runtime lacks CAP_SYS_RESOURCE (as on these build machines).
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "-e",
        "LOG_FORMAT=json",
    ];
    args.extend_from_slice(extra);
    args.push(&reference);
    podman(&args, dir)
}

#[test]
fn the_images_fit_the_budget_and_run_non_root_on_a_read_only_root() {
    let dir = Scratch::new();
    for image in IMAGES {
        let reference = format!("localhost/homelab-pki/{image}:test");
        let inspect = podman(
            &[
                "image",
                "inspect",
                "--format",
                "{{.Size}} {{.Config.User}}",
                &reference,
            ],
            dir.path(),
        );
        assert!(
            inspect.success,
            "{reference} is missing; scripts/test.sh builds it with scripts/build-images.sh test:\n{}",
            inspect.all()
        );
        let (size, user) = inspect.stdout.trim().split_once(' ').unwrap();
        let size: u64 = size.parse().unwrap();
        assert!(
            size <= BUDGET_BYTES,
            "{reference} is {size} bytes, over the {BUDGET_BYTES} budget"
        );
        assert_eq!(
            user, "65532:65532",
            "{reference} does not run as the non-root user"
        );
    }

    let bao = OpenBao::start();
    let vault = [
        format!("VAULT_ADDR={}", bao.addr),
        format!("VAULT_TOKEN={ROOT_TOKEN}"),
    ];
    let env: Vec<&str> = vault.iter().flat_map(|v| ["-e", v.as_str()]).collect();

    let boot = run_image("istio-ca-bootstrap", &env, dir.path());
    assert!(boot.success, "bootstrap image failed:\n{}", boot.all());
    assert_eq!(bao.kv_version("istio/ca"), 1);
    assert!(
        run_image("istio-ca-bootstrap", &env, dir.path())
            .all()
            .contains("istio CA verified; nothing to do")
    );

    dir.write(
        "clients.yaml",
        "clients:\n  - name: alice\n    email: alice@example.org\n",
    );
    let mount = format!("{}:/etc/client-issuer:ro", dir.path().display());
    let mut issuer_args = env.clone();
    issuer_args.extend([
        "-v",
        &mount,
        "-e",
        "CLIENTS_FILE=/etc/client-issuer/clients.yaml",
    ]);
    let issued = run_image("client-issuer", &issuer_args, dir.path());
    assert!(
        issued.success,
        "client-issuer image failed:\n{}",
        issued.all()
    );
    assert_eq!(bao.kv_version("pki/clients/alice"), 1);

    let mut sync_args = env.clone();
    sync_args.extend(["-e", "SYNC_TARGET=stdout"]);
    let synced = run_image("istio-ca-sync", &sync_args, dir.path());
    assert!(
        synced.success,
        "istio-ca-sync image failed:\n{}",
        synced.all()
    );
    assert!(
        synced.stdout.contains("name: cacerts") && synced.stdout.contains("kind: Secret"),
        "{}",
        synced.stdout
    );
}
