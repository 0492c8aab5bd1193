//! The job images as `scripts/build-images.sh test` builds them (scripts/test.sh runs it
//! first): for each image of `images/images.txt`, one manifest list holding a linux/amd64 and
//! a linux/arm64 image; each of those holds nothing but its platform's static binary and a CA
//! bundle (no shell, no libc), runs as a non-root user, carries labels taken from Cargo.toml
//! and git, and fits in 15 MB. Then both platforms' images run the way the manifests run them
//! (user 65532, read-only root filesystem, no capabilities) against a real OpenBao behind TLS
//! on the host's loopback, trusting the image's CA bundle: amd64 natively, arm64 inside its
//! own image with qemu-user as the entry point, so that a binary for the wrong machine or an
//! image without its CA bundle fails here.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::support::images::{
    ElfFacts, ImageEntry, PLATFORMS, elf_facts, image_list, list_reference, parse_image_list,
    podman, qemu_aarch64, release_bin, workspace_package_field, workspace_version,
};
use crate::support::openbao::{OpenBao, ROOT_TOKEN, workspace_root};
use crate::support::tools::{Ran, Scratch, run};

const TAG: &str = "test";
const BUDGET_BYTES: u64 = 15_000_000;
/// What an image may hold, and nothing else.
const BINARY: &str = "usr/local/bin/job";
const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";

/// The platform images of an image's manifest list: architecture -> image digest.
fn platform_images(image: &str, dir: &Path) -> BTreeMap<String, String> {
    let list = list_reference(image, TAG);
    let inspect = podman(&["manifest", "inspect", &list], dir);
    assert!(
        inspect.success,
        "{list} is missing; scripts/test.sh builds it with scripts/build-images.sh test:\n{}",
        inspect.all()
    );
    let list_json: Value = serde_json::from_str(&inspect.stdout).unwrap();
    let mut platforms = BTreeMap::new();
    for m in list_json["manifests"].as_array().unwrap() {
        assert_eq!(m["platform"]["os"], "linux", "{list}: {m}");
        let arch = m["platform"]["architecture"].as_str().unwrap().to_owned();
        let digest = m["digest"].as_str().unwrap().to_owned();
        assert!(
            platforms.insert(arch.clone(), digest).is_none(),
            "{list} lists {arch} twice"
        );
    }
    platforms
}

/// `podman image inspect` of one image, as JSON.
fn inspect_image(reference: &str, dir: &Path) -> Value {
    let ran = podman(&["image", "inspect", reference], dir);
    assert!(ran.success, "{}", ran.all());
    let mut all: Vec<Value> = serde_json::from_str(&ran.stdout).unwrap();
    all.remove(0)
}

/// The files, directories and links of an image's filesystem, by path relative to its root.
fn image_tree(reference: &str, dir: &Path) -> (BTreeMap<String, char>, Vec<u8>, String) {
    let mounted = podman(&["image", "mount", reference], dir);
    assert!(mounted.success, "{}", mounted.all());
    let root = std::path::PathBuf::from(mounted.stdout.trim());
    let mut tree = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            let relative = entry
                .path()
                .strip_prefix(&root)
                .unwrap()
                .display()
                .to_string();
            let mark = if kind.is_symlink() {
                'l'
            } else if kind.is_dir() {
                stack.push(entry.path());
                'd'
            } else {
                'f'
            };
            tree.insert(relative, mark);
        }
    }
    let binary = std::fs::read(root.join(BINARY)).unwrap_or_default();
    let bundle = std::fs::read_to_string(root.join(CA_BUNDLE)).unwrap_or_default();
    podman(&["image", "unmount", reference], dir);
    (tree, binary, bundle)
}

/// The `description = "..."` of a crate's Cargo.toml.
fn crate_description(krate: &str) -> String {
    let text = std::fs::read_to_string(
        workspace_root()
            .join("crates")
            .join(krate)
            .join("Cargo.toml"),
    )
    .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("description = "))
        .map_or_else(
            || panic!("{krate} has no description"),
            |v| v.trim_matches('"').to_owned(),
        )
}

/// The labels every image must carry: the values the build took from Cargo.toml and git.
fn expected_labels(entry: &ImageEntry, revision: &str) -> BTreeMap<&'static str, String> {
    let cargo_toml = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
    let field = |key| workspace_package_field(&cargo_toml, key).unwrap();
    BTreeMap::from([
        ("org.opencontainers.image.title", entry.image.clone()),
        (
            "org.opencontainers.image.description",
            crate_description(&entry.krate),
        ),
        ("org.opencontainers.image.version", workspace_version()),
        ("org.opencontainers.image.revision", revision.to_owned()),
        ("org.opencontainers.image.source", field("repository")),
        ("org.opencontainers.image.licenses", field("license")),
    ])
}

#[test]
fn each_image_is_a_manifest_list_of_both_platforms_holding_only_the_job_and_a_ca_bundle() {
    let dir = Scratch::new();
    let head = run("git", &["rev-parse", "HEAD"], &workspace_root()).ok();
    let head = head.stdout.trim();
    let list = image_list();
    assert_eq!(list.len(), 3, "{list:?}");
    for entry in &list {
        let platforms = platform_images(&entry.image, dir.path());
        let expected: Vec<&str> = PLATFORMS.iter().map(|(p, _)| *p).collect();
        assert_eq!(
            platforms.keys().collect::<Vec<_>>(),
            expected,
            "{}: the platforms of its manifest list",
            entry.image
        );
        for (platform, machine) in PLATFORMS {
            let reference = format!(
                "localhost/homelab-pki/{}@{}",
                entry.image, platforms[platform]
            );
            let at = format!("{} linux/{platform}", entry.image);
            let image = inspect_image(&reference, dir.path());
            assert_eq!(image["Architecture"], platform, "{at}");
            assert_eq!(image["Os"], "linux", "{at}");
            assert_eq!(image["Config"]["User"], "65532:65532", "{at}: user");
            assert_eq!(
                image["Config"]["Entrypoint"],
                serde_json::json!([format!("/{BINARY}")]),
                "{at}: entry point"
            );
            let size = image["Size"].as_u64().unwrap();
            eprintln!("{at}: {size} bytes");
            assert!(
                size <= BUDGET_BYTES,
                "{at} is {size} bytes, over the {BUDGET_BYTES} budget"
            );

            // Labels: the build's values, the revision with `-dirty` when it had changes.
            let labels = &image["Labels"];
            let revision = labels["org.opencontainers.image.revision"]
                .as_str()
                .unwrap_or_default();
            assert!(
                revision == head || revision == format!("{head}-dirty"),
                "{at}: revision {revision:?}, HEAD is {head}"
            );
            for (key, value) in expected_labels(entry, revision) {
                assert_eq!(labels[key], value.as_str(), "{at}: label {key}");
            }

            // Nothing but the binary, the bundle and their directories: no shell, no libc.
            let (tree, binary, bundle) = image_tree(&reference, dir.path());
            let files: Vec<&str> = tree
                .iter()
                .filter(|(_, mark)| **mark != 'd')
                .map(|(path, _)| path.as_str())
                .collect();
            assert_eq!(files, [CA_BUNDLE, BINARY], "{at}: files {tree:?}");
            assert!(!tree.contains_key("bin/sh"), "{at} has a shell");
            let facts = elf_facts(&binary).unwrap();
            assert_eq!(facts.machine, machine, "{at}: the binary's ELF machine");
            assert!(!facts.interpreter, "{at}: the binary is not static");
            assert!(
                binary == std::fs::read(release_bin(&entry.krate, platform)).unwrap(),
                "{at}: the binary is not the one scripts/cross-build.sh built for {platform}"
            );
            let certificates = bundle.matches("-----BEGIN CERTIFICATE-----").count();
            assert!(
                certificates >= 50,
                "{at}: the CA bundle holds {certificates} certificates"
            );
        }
    }
}

/// `podman run` with the pod's security settings, of one platform's image; `extra` adds
/// environment and mounts, `args` go to the job. The arm64 image's job runs under qemu-user,
/// mounted read-only into the container as its entry point.
fn run_image(
    image: &str,
    platform: &str,
    extra: &[&str],
    args: &[&str],
    dir: &std::path::Path,
) -> Ran {
    let digest = &platform_images(image, dir)[platform];
    let reference = format!("localhost/homelab-pki/{image}@{digest}");
    let qemu = format!("{}:/usr/bin/qemu-aarch64:ro", qemu_aarch64());
    let mut podman_args = vec![
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
    if platform == "arm64" {
        podman_args.extend(["-v", &qemu, "--entrypoint", "/usr/bin/qemu-aarch64"]);
    }
    podman_args.extend_from_slice(extra);
    podman_args.push(&reference);
    if platform == "arm64" {
        podman_args.push("/usr/local/bin/job");
    }
    podman_args.extend_from_slice(args);
    podman(&podman_args, dir)
}

/// Each job's image of one platform, against a fresh OpenBao behind TLS, given no
/// `VAULT_CACERT`: the job trusts the image's CA bundle. With the image's own bundle the
/// handshake fails on OpenBao's test CA (`UnknownIssuer`: a bundle was read; an image without
/// one fails earlier, building no client at all). With OpenBao's CA mounted in its place: the
/// bootstrap's first run and its no-op, one client issued, the NAS bundle synced to standard
/// output.
fn jobs_run_from_their_images(platform: &str) {
    let dir = Scratch::new();
    let bao = OpenBao::start_tls();
    let vault = [
        format!("VAULT_ADDR={}", bao.addr),
        format!("VAULT_TOKEN={ROOT_TOKEN}"),
    ];
    let mut env: Vec<&str> = vault.iter().flat_map(|v| ["-e", v.as_str()]).collect();
    let image = |name: &str, extra: &[&str]| run_image(name, platform, extra, &[], dir.path());

    let mut once = env.clone();
    once.extend(["-e", "VAULT_MAX_ATTEMPTS=1"]);
    let untrusted = image("istio-ca-bootstrap", &once);
    assert!(
        !untrusted.success
            && untrusted
                .all()
                .contains("invalid peer certificate: UnknownIssuer"),
        "{platform} bootstrap image trusting its own CA bundle:\n{}",
        untrusted.all()
    );
    assert_eq!(bao.kv_version("istio/ca"), 0, "a refused run wrote");

    let trust = format!("{}:/{CA_BUNDLE}:ro", bao.tls_ca.as_ref().unwrap().display());
    env.extend(["-v", &trust]);
    let boot = image("istio-ca-bootstrap", &env);
    assert!(boot.success, "{platform} bootstrap image:\n{}", boot.all());
    assert_eq!(bao.kv_version("istio/ca"), 1);
    let again = image("istio-ca-bootstrap", &env);
    assert!(
        again.success && again.all().contains("istio CA verified; nothing to do"),
        "{platform} bootstrap image, second run:\n{}",
        again.all()
    );
    assert_eq!(bao.kv_version("istio/ca"), 1, "the second run wrote");

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
    let issued = image("client-issuer", &issuer_args);
    assert!(
        issued.success,
        "{platform} client-issuer image:\n{}",
        issued.all()
    );
    assert_eq!(bao.kv_version("pki/clients/alice"), 1);

    let mut sync_args = env.clone();
    // The manifests go to the test's pipe, not to Git: the opt-out the job asks for.
    sync_args.extend([
        "-e",
        "SYNC_TARGET=stdout",
        "-e",
        "SYNC_PLAINTEXT_KEYS=allow",
    ]);
    let synced = image("istio-ca-sync", &sync_args);
    assert!(
        synced.success,
        "{platform} istio-ca-sync image:\n{}",
        synced.all()
    );
    assert!(
        synced.stdout.contains("name: cacerts") && synced.stdout.contains("kind: Secret"),
        "{}",
        synced.stdout
    );
}

#[test]
fn the_amd64_images_run_non_root_on_a_read_only_root() {
    jobs_run_from_their_images("amd64");
}

#[test]
fn the_arm64_images_run_under_qemu_user_on_a_read_only_root() {
    jobs_run_from_their_images("arm64");
}

#[test]
fn the_image_list_is_three_words_a_line_and_a_bad_line_is_named() {
    let list = parse_image_list("# image cluster crate\n\na  homelab  a-job\n").unwrap();
    assert_eq!(
        list,
        [ImageEntry {
            image: "a".into(),
            cluster: "homelab".into(),
            krate: "a-job".into()
        }]
    );
    assert_eq!(
        parse_image_list("a homelab\n").unwrap_err(),
        "line 1: expected `image cluster crate`, found \"a homelab\""
    );
}

#[test]
fn the_workspace_version_comes_from_the_workspace_package_table_only() {
    let toml = "[package]\nversion = \"9.9.9\"\n[workspace.package]\nedition = \"2024\"\nversion = \"1.2.3\"\n[workspace.dependencies]\nversion = \"0.0.1\"\n";
    assert_eq!(
        workspace_package_field(toml, "version").as_deref(),
        Some("1.2.3")
    );
    assert_eq!(workspace_package_field(toml, "license"), None);
}

#[test]
fn elf_facts_tell_the_machine_and_a_dynamic_loader() {
    let host = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    // This test binary: the host's machine, dynamically linked.
    let machine = if cfg!(target_arch = "aarch64") {
        183
    } else {
        62
    };
    assert_eq!(
        elf_facts(&host).unwrap(),
        ElfFacts {
            machine,
            interpreter: true
        }
    );
    assert_eq!(elf_facts(b"#!/bin/sh\n").unwrap_err(), "not an ELF file");
    assert!(elf_facts(&host[..40]).unwrap_err().starts_with("truncated"));
}

#[test]
fn the_dockerfile_takes_every_label_from_a_build_argument_without_a_default() {
    let text = std::fs::read_to_string(workspace_root().join("images/Dockerfile")).unwrap();
    // The LABEL instruction with its continuation lines.
    let label: String = text
        .lines()
        .skip_while(|l| !l.starts_with("LABEL "))
        .scan(true, |more, l| {
            let this = more.then(|| l.trim_end_matches('\\').to_owned());
            *more = l.ends_with('\\');
            this
        })
        .collect::<Vec<_>>()
        .join(" ");
    let pairs: BTreeMap<&str, &str> = label
        .trim_start_matches("LABEL ")
        .split_whitespace()
        .map(|pair| pair.split_once('=').unwrap())
        .collect();
    assert_eq!(
        pairs.keys().copied().collect::<Vec<_>>(),
        [
            "org.opencontainers.image.description",
            "org.opencontainers.image.licenses",
            "org.opencontainers.image.revision",
            "org.opencontainers.image.source",
            "org.opencontainers.image.title",
            "org.opencontainers.image.version",
        ]
    );
    for (key, value) in pairs {
        let argument = value
            .strip_prefix("\"$")
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or_else(|| panic!("{key}={value} is not a build argument"));
        assert!(
            text.lines().any(|l| l == format!("ARG {argument}")),
            "{key}: ARG {argument} is not declared without a default"
        );
    }
}
