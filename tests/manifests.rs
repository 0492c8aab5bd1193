//! The Flux layout checked by tools rather than by eye: every kustomization renders with
//! `kubectl kustomize`; every object validates against its kind's schema (core kinds strictly
//! with kubernetes-validate, core and CRD kinds with the kubernetes-models packages); every pod
//! meets the restricted Pod Security Standard and the Job hygiene the jobs rely on; every image
//! is one built from `images/`; every environment variable is one its job reads; the ordering
//! on the CA is expressed on the Flux Kustomizations; the alert rules pass `promtool`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_json::Value;

use crate::support::images::image_list;
use crate::support::jobs::job_bin;
use crate::support::openbao::workspace_root;
use crate::support::tools::{Scratch, run};

/// An object and the file or directory it came from.
struct Object {
    source: String,
    value: Value,
}

fn yaml_documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn files_named(dir: &Path, predicate: &dyn Fn(&str) -> bool, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_named(&path, predicate, out);
        } else if predicate(path.file_name().unwrap().to_str().unwrap()) {
            out.push(path);
        }
    }
    out.sort();
}

/// Every object: each kustomization rendered, plus the Flux Kustomizations beside them.
fn all_objects() -> Vec<Object> {
    let root = workspace_root();
    let mut kustomizations = Vec::new();
    files_named(
        &root.join("kubernetes"),
        &|n| n == "kustomization.yaml",
        &mut kustomizations,
    );
    assert!(
        kustomizations.len() >= 5,
        "kustomizations found: {kustomizations:?}"
    );
    let mut objects = Vec::new();
    for file in kustomizations {
        let dir = file.parent().unwrap();
        let rendered = run("kubectl", &["kustomize", dir.to_str().unwrap()], &root);
        assert!(
            rendered.success,
            "kubectl kustomize {} failed:\n{}",
            dir.display(),
            rendered.all()
        );
        let source = dir.strip_prefix(&root).unwrap().display().to_string();
        let docs = yaml_documents(&rendered.stdout);
        assert!(!docs.is_empty(), "{source} renders nothing");
        objects.extend(docs.into_iter().map(|value| Object {
            source: source.clone(),
            value,
        }));
    }
    let mut flux = Vec::new();
    files_named(
        &root.join("kubernetes"),
        &|n| n.ends_with("-kustomization.yaml"),
        &mut flux,
    );
    for file in flux {
        let source = file.strip_prefix(&root).unwrap().display().to_string();
        let text = std::fs::read_to_string(&file).unwrap();
        objects.extend(yaml_documents(&text).into_iter().map(|value| Object {
            source: source.clone(),
            value,
        }));
    }
    objects
}

fn label(o: &Object) -> String {
    format!(
        "{} {}/{} ({})",
        o.value["kind"].as_str().unwrap_or("?"),
        o.value["metadata"]["namespace"].as_str().unwrap_or(""),
        o.value["metadata"]["name"].as_str().unwrap_or("?"),
        o.source
    )
}

/// The pod spec of a Job or CronJob.
fn pod_spec(o: &Object) -> Option<&Value> {
    match o.value["kind"].as_str()? {
        "Job" => Some(&o.value["spec"]["template"]["spec"]),
        "CronJob" => Some(&o.value["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        _ => None,
    }
}

fn job_spec(o: &Object) -> Option<&Value> {
    match o.value["kind"].as_str()? {
        "Job" => Some(&o.value["spec"]),
        "CronJob" => Some(&o.value["spec"]["jobTemplate"]["spec"]),
        _ => None,
    }
}

/// Runs the schema validators on `objects`; their combined output on failure.
fn schema_problems(objects: &[Value]) -> Option<String> {
    let root = workspace_root();
    let mut child = Command::new("node")
        .arg(root.join("tests/schema/validate.mjs"))
        .current_dir(root.join("tests/schema"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node (install the test peers with ./scripts/install-test-peers.sh)");
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        serde_json::to_string(objects).unwrap().as_bytes(),
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    let mut problems = String::new();
    if !output.status.success() {
        problems.push_str(&String::from_utf8_lossy(&output.stdout));
        problems.push_str(&String::from_utf8_lossy(&output.stderr));
    }
    // Core kinds again, strictly: unknown fields are errors.
    let dir = Scratch::new();
    let core: Vec<&Value> = objects
        .iter()
        .filter(|o| {
            matches!(
                o["apiVersion"].as_str(),
                Some("v1" | "batch/v1" | "rbac.authorization.k8s.io/v1")
            )
        })
        .collect();
    let mut files = Vec::new();
    for (i, object) in core.iter().enumerate() {
        files.push(dir.write(
            &format!("{i}.yaml"),
            serde_norway::to_string(object).unwrap(),
        ));
    }
    if !files.is_empty() {
        let mut args = vec![
            "-m".to_owned(),
            "kubernetes_validate".into(),
            "--strict".into(),
            "--quiet".into(),
            "-k".into(),
            "1.33.0".into(),
        ];
        args.extend(files.iter().map(|f| f.display().to_string()));
        let output = Command::new("python3")
            .args(&args)
            .env("PYTHONPATH", root.join(".tools/kubernetes-validate"))
            .output()
            .expect("run python3");
        if !output.status.success() {
            problems.push_str(&String::from_utf8_lossy(&output.stdout));
            problems.push_str(&String::from_utf8_lossy(&output.stderr));
        }
    }
    (!problems.is_empty()).then_some(problems)
}

#[test]
fn every_object_validates_against_its_schema() {
    let objects: Vec<Value> = all_objects().into_iter().map(|o| o.value).collect();
    if let Some(problems) = schema_problems(&objects) {
        panic!("schema violations:\n{problems}");
    }
}

/// The validators bite: a misspelt field (core and CRD), a wrong type and an unknown kind are
/// all refused.
#[test]
fn the_schema_check_refuses_broken_objects() {
    let job: Value = serde_json::json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"},
        "spec": {"backofLimit": 3, "template": {"spec": {"containers": [{"name": "a", "image": "b"}]}}}});
    let problems = schema_problems(&[job]).expect("a misspelt field passed");
    assert!(problems.contains("backofLimit"), "{problems}");
    let helm: Value = serde_json::json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
        "metadata": {"name": "x", "namespace": "y"}, "spec": {"interval": 5, "chart": {"spec": {"chart": "c", "sourceRef": {"kind": "HelmRepository", "name": "r"}}}}});
    assert!(
        schema_problems(&[helm])
            .expect("a wrong type passed")
            .contains("interval")
    );
    let misspelt: Value = serde_json::json!({"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
        "metadata": {"name": "x", "namespace": "y"},
        "spec": {"secretStoreRef": {"name": "vault", "kind": "SecretStore"}, "data": [{"secretKey": "k", "remoteRef": {"key": "a", "propertyy": "b"}}]}});
    assert!(
        schema_problems(&[misspelt])
            .expect("a misspelt CRD field passed")
            .contains("spec.data[0].remoteRef.propertyy: unknown field")
    );
    let unknown: Value = serde_json::json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "x"}});
    assert!(
        schema_problems(&[unknown])
            .expect("an unknown kind passed")
            .contains("no schema for example.com/v1 Widget")
    );
}

#[test]
fn every_pod_meets_the_restricted_standard_and_job_hygiene() {
    let objects = all_objects();
    let mut pods = 0;
    for o in &objects {
        let (Some(pod), Some(job)) = (pod_spec(o), job_spec(o)) else {
            continue;
        };
        pods += 1;
        let at = label(o);
        assert_eq!(
            pod["securityContext"]["runAsNonRoot"], true,
            "{at}: runAsNonRoot"
        );
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{at}: seccomp"
        );
        assert_eq!(
            pod["automountServiceAccountToken"], false,
            "{at}: the default token is not mounted"
        );
        assert!(
            job["backoffLimit"].is_u64() && job["ttlSecondsAfterFinished"].is_u64(),
            "{at}: backoffLimit and ttlSecondsAfterFinished"
        );
        if o.value["kind"] == "CronJob" {
            assert_eq!(
                o.value["spec"]["concurrencyPolicy"], "Forbid",
                "{at}: concurrencyPolicy"
            );
        }
        for c in pod["containers"].as_array().unwrap() {
            let sc = &c["securityContext"];
            assert_eq!(
                sc["allowPrivilegeEscalation"], false,
                "{at}: allowPrivilegeEscalation"
            );
            assert_eq!(
                sc["readOnlyRootFilesystem"], true,
                "{at}: readOnlyRootFilesystem"
            );
            assert!(
                sc["capabilities"]["drop"]
                    .as_array()
                    .unwrap()
                    .contains(&"ALL".into()),
                "{at}: drop ALL"
            );
            for kind in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    assert!(
                        c["resources"][kind][resource].is_string(),
                        "{at}: resources.{kind}.{resource}"
                    );
                }
            }
        }
        // Vault sees a projected token with its own audience, not the API server's token.
        let audiences: Vec<&str> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|v| v["projected"]["sources"].as_array().into_iter().flatten())
            .filter_map(|s| s["serviceAccountToken"]["audience"].as_str())
            .collect();
        assert_eq!(
            audiences,
            ["vault"],
            "{at}: a projected token for audience vault"
        );
    }
    assert_eq!(pods, 5, "Jobs and CronJobs found");
}

/// image name (`registry.home.arpa/homelab-pki/<name>`) -> the job binary it carries, as
/// `images/images.txt` lists them.
fn images() -> Vec<(String, String)> {
    image_list()
        .into_iter()
        .map(|e| {
            (
                format!("registry.home.arpa/homelab-pki/{}", e.image),
                e.krate,
            )
        })
        .collect()
}

/// The variables a job reads: the names its `--help` lists.
fn job_variables(job: &str) -> BTreeSet<String> {
    let output = Command::new(job_bin(job)).arg("--help").output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| {
            w.len() > 2
                && w.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                && w.contains('_')
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_image_is_built_here_and_every_variable_is_read_by_its_job() {
    let images = images();
    assert_eq!(images.len(), 3, "{images:?}");
    for o in all_objects() {
        let Some(pod) = pod_spec(&o) else { continue };
        for c in pod["containers"].as_array().unwrap() {
            let image = c["image"].as_str().unwrap();
            let (name, _tag) = image.rsplit_once(':').unwrap();
            let Some((_, job)) = images.iter().find(|(n, _)| n == name) else {
                panic!("{}: image {image} is not built from images/", label(&o));
            };
            let known = job_variables(job);
            assert!(
                known.contains("VAULT_ADDR"),
                "{job} --help lists no variables"
            );
            for env in c["env"].as_array().unwrap() {
                let variable = env["name"].as_str().unwrap();
                assert!(
                    known.contains(variable),
                    "{}: {job} does not read {variable}",
                    label(&o)
                );
            }
        }
    }
}

#[test]
fn the_ca_comes_before_istiod_in_flux_terms() {
    let objects = all_objects();
    let find = |kind: &str, name: &str| {
        objects
            .iter()
            .find(|o| o.value["kind"] == kind && o.value["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let depends = |o: &Object| -> BTreeSet<String> {
        o.value["spec"]["dependsOn"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| d["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let bootstrap = find("Kustomization", "istio-ca-bootstrap");
    assert_eq!(
        (
            &bootstrap.value["spec"]["force"],
            &bootstrap.value["spec"]["wait"]
        ),
        (&Value::Bool(true), &Value::Bool(true))
    );
    assert!(bootstrap.value["spec"]["timeout"].is_string());
    let istio = find("Kustomization", "istio");
    assert_eq!(
        depends(istio),
        BTreeSet::from([
            "istio-ca-bootstrap".to_owned(),
            "security-configs".to_owned()
        ])
    );
    assert_eq!(
        depends(find("Kustomization", "security-configs")),
        BTreeSet::from(["istio-ca-bootstrap".to_owned()])
    );
    // HelmRelease dependsOn names HelmReleases only, and only ones that exist.
    let releases: BTreeSet<String> = objects
        .iter()
        .filter(|o| o.value["kind"] == "HelmRelease")
        .map(|o| o.value["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    for o in objects.iter().filter(|o| o.value["kind"] == "HelmRelease") {
        for d in depends(o) {
            assert!(
                releases.contains(&d),
                "{} depends on {d}, which is no HelmRelease",
                label(o)
            );
        }
    }
    assert_eq!(
        depends(find("HelmRelease", "istiod")),
        BTreeSet::from(["istio-base".to_owned()])
    );
    // Every Flux Kustomization points at a directory that exists.
    for o in objects
        .iter()
        .filter(|o| o.value["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1")
    {
        let path = o.value["spec"]["path"].as_str().unwrap();
        assert!(
            workspace_root()
                .join(path)
                .join("kustomization.yaml")
                .exists(),
            "{}: {path} has no kustomization",
            label(o)
        );
    }
}

#[test]
fn the_sync_role_may_write_only_cacerts() {
    let objects = all_objects();
    let role = objects
        .iter()
        .find(|o| o.value["kind"] == "Role" && o.value["metadata"]["name"] == "istio-ca-sync")
        .expect("the istio-ca-sync Role");
    let rules = role.value["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["resources"], serde_json::json!(["secrets"]));
    assert_eq!(rules[0]["resourceNames"], serde_json::json!(["cacerts"]));
    assert_eq!(rules[0]["verbs"], serde_json::json!(["get", "patch"]));
}

#[test]
fn the_alert_rules_pass_promtool_and_fire_on_sample_series() {
    let rule = all_objects()
        .into_iter()
        .find(|o| o.value["kind"] == "PrometheusRule")
        .expect("the PrometheusRule");
    let dir = Scratch::new();
    dir.write(
        "rules.yaml",
        serde_norway::to_string(&serde_json::json!({"groups": rule.value["spec"]["groups"]}))
            .unwrap(),
    );
    let check = run("promtool", &["check", "rules", "rules.yaml"], dir.path());
    assert!(check.success, "{}", check.all());
    let tests =
        std::fs::read_to_string(workspace_root().join("tests/prometheus/pki-rules.test.yaml"))
            .unwrap();
    dir.write("pki-rules.test.yaml", tests);
    let ran = run(
        "promtool",
        &["test", "rules", "pki-rules.test.yaml"],
        dir.path(),
    );
    assert!(ran.success, "{}", ran.all());
}
