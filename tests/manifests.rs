//! The Flux layout checked by tools rather than by eye: every kustomization renders with
//! `kubectl kustomize`; every object validates against its kind's schema (core kinds strictly
//! with kubernetes-validate, core and CRD kinds with the kubernetes-models packages); every pod
//! meets the restricted Pod Security Standard and the Job hygiene the jobs rely on; every image
//! is one built from `images/`; every environment variable is one its job reads; on each
//! cluster istiod is ordered after its `cacerts` in the terms Flux has (Kustomization
//! `dependsOn` and health checks, HelmRelease `dependsOn`), and every object has exactly one
//! owning Kustomization; the alert rules pass `promtool`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::flux::{FluxKustomization, files_named, flux_kustomizations};
use crate::support::images::image_list;
use crate::support::jobs::job_bin;
use crate::support::openbao::workspace_root;
use crate::support::tools::{Scratch, run};

/// An object and the file or directory it came from.
struct Object {
    source: String,
    value: Value,
}

/// Every object: what each Flux Kustomization applies, plus the Flux Kustomizations.
fn all_objects() -> Vec<Object> {
    let mut objects = Vec::new();
    for k in flux_kustomizations() {
        let source = k.value["spec"]["path"]
            .as_str()
            .unwrap()
            .trim_start_matches("./")
            .to_owned();
        objects.extend(k.objects.into_iter().map(|value| Object {
            source: source.clone(),
            value,
        }));
        objects.push(Object {
            source: k.file,
            value: k.value,
        });
    }
    assert!(objects.len() > 20, "{} objects", objects.len());
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
            serde_saphyr::to_string(object).unwrap(),
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
    assert_eq!(pods, 6, "Jobs and CronJobs found");
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

/// The names a Flux object's `dependsOn` lists.
fn depends_on(o: &Value) -> BTreeSet<String> {
    o["spec"]["dependsOn"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| d["name"].as_str().unwrap().to_owned())
        .collect()
}

/// `kind namespace/name` of an object (or health check reference), for messages and sets.
fn object_id(o: &Value) -> String {
    let group = o["apiVersion"]
        .as_str()
        .unwrap_or("")
        .rsplit_once('/')
        .map_or("", |(g, _)| g);
    format!(
        "{}{}{} {}/{}",
        o["kind"].as_str().unwrap_or("?"),
        if group.is_empty() { "" } else { "." },
        group,
        o["metadata"]["namespace"]
            .as_str()
            .or(o["namespace"].as_str())
            .unwrap_or(""),
        o["metadata"]["name"]
            .as_str()
            .or(o["name"].as_str())
            .unwrap_or("?"),
    )
}

/// The Kustomizations of one cluster by name, and every name a Kustomization depends on,
/// transitively.
fn closure<'a>(
    by_name: &BTreeMap<&str, &'a FluxKustomization>,
    start: &str,
) -> Vec<&'a FluxKustomization> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = depends_on(&by_name[start].value).into_iter().collect();
    let mut out = Vec::new();
    while let Some(name) = todo.pop() {
        if seen.insert(name.clone()) {
            let k = by_name
                .get(name.as_str())
                .unwrap_or_else(|| panic!("{start} depends on {name}, which is no Kustomization"));
            todo.extend(depends_on(&k.value));
            out.push(*k);
        }
    }
    out
}

/// Flux's rules hold for every Kustomization and `HelmRelease` of one cluster.
fn flux_rules_hold(cluster: &str, ks: &[&FluxKustomization]) {
    let by_name: BTreeMap<&str, &FluxKustomization> = ks.iter().map(|k| (k.name(), *k)).collect();
    assert_eq!(
        by_name.len(),
        ks.len(),
        "{cluster}: two Kustomizations share a name"
    );
    for k in ks {
        let spec = &k.value["spec"];
        assert!(
            spec["force"].is_null(),
            "{}: force replaces every object of the Kustomization; Jobs carry the annotation instead",
            k.file
        );
        if spec["healthChecks"].is_array() {
            assert_ne!(
                spec["wait"], true,
                "{}: with wait, Flux ignores healthChecks",
                k.file
            );
        }
        for check in spec["healthChecks"].as_array().into_iter().flatten() {
            assert!(
                ["Job", "Secret"].contains(&check["kind"].as_str().unwrap()),
                "{}: health check on {check}",
                k.file
            );
        }
        // Every dependency is a Kustomization of the same cluster, and there is no cycle.
        let deps = closure(&by_name, k.name());
        assert!(
            deps.iter().all(|d| d.name() != k.name()),
            "{}: circular dependsOn",
            k.file
        );
        // A Job is replaced when it changes, and only a Job.
        for o in &k.objects {
            let forced =
                o["metadata"]["annotations"]["kustomize.toolkit.fluxcd.io/force"] == "enabled";
            assert_eq!(forced, o["kind"] == "Job", "{}: {}", k.file, object_id(o));
        }
    }
    // HelmRelease dependsOn names HelmReleases of the same cluster and namespace.
    let releases: Vec<&Value> = ks
        .iter()
        .flat_map(|k| &k.objects)
        .filter(|o| o["kind"] == "HelmRelease")
        .collect();
    for r in &releases {
        for d in depends_on(r) {
            assert!(
                releases.iter().any(|o| o["metadata"]["name"] == d.as_str()
                    && o["metadata"]["namespace"] == r["metadata"]["namespace"]),
                "{cluster}: {} depends on {d}, which is no HelmRelease",
                object_id(r)
            );
        }
    }
    let istiod = releases
        .iter()
        .find(|o| o["metadata"]["name"] == "istiod")
        .unwrap_or_else(|| panic!("{cluster}: no istiod HelmRelease"));
    assert_eq!(
        depends_on(istiod),
        BTreeSet::from(["istio-base".to_owned()])
    );
    assert_eq!(
        istiod["spec"]["values"]["global"]["multiCluster"]["clusterName"],
        cluster
    );
    assert!(
        by_name["istio"]
            .objects
            .iter()
            .any(|o| o["kind"] == "HelmRelease" && o["metadata"]["name"] == "istiod"),
        "{cluster}: the Kustomization istio does not apply istiod"
    );
}

/// The Kustomization whose readiness means "`cacerts` holds the shared CA", checked for what
/// makes it so on each cluster.
fn cacerts_gate<'a>(
    cluster: &str,
    by_name: &BTreeMap<&str, &'a FluxKustomization>,
) -> &'a FluxKustomization {
    if cluster == "homelab" {
        let gate = by_name["istio-cacerts"];
        // The Secret exists only once ESO wrote it from the Vault bundle.
        assert!(gate.objects.iter().any(|o| o["kind"] == "ExternalSecret"
            && o["spec"]["target"]["name"] == "cacerts"
            && o["metadata"]["namespace"] == "istio-system"));
        assert_eq!(
            gate.value["spec"]["healthChecks"],
            serde_json::json!([{"apiVersion": "v1", "kind": "Secret", "name": "cacerts", "namespace": "istio-system"}])
        );
        return gate;
    }
    let gate = by_name["istio-ca-sync"];
    assert_eq!(
        gate.value["spec"]["healthChecks"],
        serde_json::json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "istio-ca-sync-initial", "namespace": "istio-system"}])
    );
    let job = gate
        .objects
        .iter()
        .find(|o| o["kind"] == "Job" && o["metadata"]["name"] == "istio-ca-sync-initial")
        .expect("the first sync Job is applied by the gate");
    let env = &job["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "SYNC_CLUSTER" && e["value"] == "nas"),
        "the first sync Job syncs the NAS bundle"
    );
    gate
}

/// Flux's terms, from kustomize-controller's docs/spec/v1/kustomizations.md: a Kustomization's
/// `dependsOn` names Kustomizations and is satisfied once they are Ready; `wait: true` checks
/// everything it applied and makes Flux ignore `healthChecks`; `healthChecks` can name a Job
/// or a Secret, and a missing object is not healthy. A `HelmRelease`'s `dependsOn` names only
/// `HelmRelease`s (helm-controller's docs/spec/v2/helmreleases.md).
#[test]
fn istiod_comes_after_cacerts_on_both_clusters_in_flux_terms() {
    let all = flux_kustomizations();
    for cluster in ["homelab", "nas"] {
        let ks: Vec<&FluxKustomization> = all.iter().filter(|k| k.cluster == cluster).collect();
        flux_rules_hold(cluster, &ks);
        let by_name: BTreeMap<&str, &FluxKustomization> =
            ks.iter().map(|k| (k.name(), *k)).collect();
        let gate = cacerts_gate(cluster, &by_name);
        assert!(gate.value["spec"]["retryInterval"].is_string());
        // What istio waits for, transitively: the gate and what the gate needs, nothing else.
        let waits_for = closure(&by_name, "istio");
        let names: BTreeSet<&str> = waits_for.iter().map(|k| k.name()).collect();
        let expected = if cluster == "homelab" {
            BTreeSet::from(["istio-cacerts", "istio-namespace"])
        } else {
            BTreeSet::from(["istio-ca-sync"])
        };
        assert_eq!(names, expected, "{cluster}");
        // The mesh does not wait for the NAS Vault store, the HAProxy Secret or the alerts.
        for k in &waits_for {
            for o in &k.objects {
                assert!(
                    !["ClusterSecretStore", "PrometheusRule"]
                        .contains(&o["kind"].as_str().unwrap())
                        && o["metadata"]["name"] != "sync-ca-from-nas",
                    "{cluster}: istio waits for {} through {}",
                    object_id(o),
                    k.name()
                );
            }
        }
    }
}

/// Who applies what, per cluster: `(object id, Kustomization)` for every rendered object, and
/// the Secrets an ExternalSecret owns.
fn ownership_conflicts(ks: &[&FluxKustomization]) -> Vec<String> {
    let mut owners: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for k in ks {
        for o in &k.objects {
            owners.entry(object_id(o)).or_default().push(k.name());
        }
    }
    let mut conflicts: Vec<String> = owners
        .iter()
        .filter(|(_, by)| by.len() > 1)
        .map(|(id, by)| format!("{id} is applied by {}", by.join(" and ")))
        .collect();
    for k in ks {
        for es in k.objects.iter().filter(|o| o["kind"] == "ExternalSecret") {
            let target = format!(
                "Secret {}/{}",
                es["metadata"]["namespace"].as_str().unwrap(),
                es["spec"]["target"]["name"].as_str().unwrap()
            );
            if let Some(by) = owners.get(&target) {
                conflicts.push(format!(
                    "{target} is applied by {} and owned by ExternalSecret {}",
                    by.join(" and "),
                    es["metadata"]["name"].as_str().unwrap()
                ));
            }
        }
    }
    conflicts
}

/// One owner per object in each cluster, or Flux's prune deletes what another Kustomization
/// applied; and every kustomization directory is applied by a Flux Kustomization, directly or
/// as a resource of one.
#[test]
fn every_object_has_exactly_one_owning_kustomization() {
    let all = flux_kustomizations();
    for cluster in ["homelab", "nas"] {
        let ks: Vec<&FluxKustomization> = all.iter().filter(|k| k.cluster == cluster).collect();
        let conflicts = ownership_conflicts(&ks);
        assert!(conflicts.is_empty(), "{cluster}:\n{}", conflicts.join("\n"));

        let root = workspace_root();
        let mut dirs = Vec::new();
        files_named(
            &root.join("kubernetes").join(cluster),
            &|n| n == "kustomization.yaml",
            &mut dirs,
        );
        let applied: BTreeSet<std::path::PathBuf> = ks
            .iter()
            .map(|k| {
                root.join(k.value["spec"]["path"].as_str().unwrap())
                    .canonicalize()
                    .unwrap()
            })
            .collect();
        let mut referenced = BTreeSet::new();
        for file in &dirs {
            let text = std::fs::read_to_string(file).unwrap();
            let value: Value = serde_saphyr::from_str(&text).unwrap();
            for key in ["resources", "components"] {
                for r in value[key].as_array().into_iter().flatten() {
                    if let Ok(path) = file
                        .parent()
                        .unwrap()
                        .join(r.as_str().unwrap())
                        .canonicalize()
                    {
                        referenced.insert(path);
                    }
                }
            }
        }
        for file in &dirs {
            let dir = file.parent().unwrap().canonicalize().unwrap();
            let text = std::fs::read_to_string(file).unwrap();
            if text.contains("kind: Component") {
                continue; // Selected or not; rendered by the Secret shape tests.
            }
            assert!(
                applied.contains(&dir) || referenced.contains(&dir),
                "{} is applied by no Flux Kustomization",
                dir.display()
            );
        }
    }
    // The check bites: the same Secret in two Kustomizations, and a Secret an ExternalSecret
    // owns declared by a Kustomization too.
    let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cacerts", "namespace": "istio-system"}});
    let external = serde_json::json!({"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
        "metadata": {"name": "x", "namespace": "istio-system"}, "spec": {"target": {"name": "cacerts"}}});
    let fake = |name: &str, objects: Vec<Value>| FluxKustomization {
        cluster: "test".into(),
        file: format!("{name}.yaml"),
        value: serde_json::json!({"metadata": {"name": name}}),
        objects,
    };
    let (a, b) = (
        fake("a", vec![secret.clone()]),
        fake("b", vec![secret, external]),
    );
    assert_eq!(
        ownership_conflicts(&[&a, &b]),
        [
            "Secret istio-system/cacerts is applied by a and b",
            "Secret istio-system/cacerts is applied by a and b and owned by ExternalSecret x"
        ]
    );
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

/// Each cluster's PrometheusRule sits where that cluster's Pushgateway is scraped, carries
/// the `release` label kube-prometheus-stack selects rules by, passes `promtool check`, and
/// its unit tests (tests/prometheus/<cluster>-rules.test.yaml) show each alert firing and
/// staying silent.
#[test]
fn the_alert_rules_pass_promtool_and_fire_on_sample_series() {
    let all = flux_kustomizations();
    for cluster in ["homelab", "nas"] {
        let rules: Vec<&Value> = all
            .iter()
            .filter(|k| k.cluster == cluster)
            .flat_map(|k| &k.objects)
            .filter(|o| o["kind"] == "PrometheusRule")
            .collect();
        assert_eq!(rules.len(), 1, "{cluster}: one PrometheusRule");
        let rule = rules[0];
        assert_eq!(
            rule["metadata"]["labels"]["release"], "kube-prometheus-stack",
            "{cluster}: the release label"
        );
        let dir = Scratch::new();
        dir.write(
            "rules.yaml",
            serde_saphyr::to_string(&serde_json::json!({"groups": rule["spec"]["groups"]}))
                .unwrap(),
        );
        let check = run("promtool", &["check", "rules", "rules.yaml"], dir.path());
        assert!(check.success, "{cluster}: {}", check.all());
        let file = format!("{cluster}-rules.test.yaml");
        let tests =
            std::fs::read_to_string(workspace_root().join("tests/prometheus").join(&file)).unwrap();
        // Every alert of the rule has a test that fires it and one that expects silence.
        for alert in rule["spec"]["groups"][0]["rules"].as_array().unwrap() {
            let name = alert["alert"].as_str().unwrap();
            let fired = tests.contains(&format!(
                "alertname: {name}\n        exp_alerts:\n          - "
            ));
            let silent = tests.contains(&format!("alertname: {name}, exp_alerts: []"));
            assert!(
                fired && silent,
                "{file}: {name} fired {fired}, silent {silent}"
            );
        }
        dir.write(&file, tests);
        let ran = run("promtool", &["test", "rules", &file], dir.path());
        assert!(ran.success, "{cluster}: {}", ran.all());
    }
}

/// The exit codes a job's `--help` documents, and what each means.
fn documented_exit_codes(job: &str) -> BTreeMap<u64, String> {
    let output = Command::new(job_bin(job)).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout).into_owned();
    let table = help
        .split("EXIT CODES:")
        .nth(1)
        .expect("--help has EXIT CODES");
    table
        .lines()
        .filter_map(|l| {
            let (code, text) = l.trim().split_once("  ")?;
            Some((code.parse().ok()?, text.trim().to_owned()))
        })
        .collect()
}

/// Kubernetes retries a failed pod up to backoffLimit; a configuration or permission error
/// fails the same way every time. Every Job and CronJob fails at once on the exit codes that
/// cannot pass by retrying (as `--help` documents them), retries only 1 and 4, and ignores
/// evictions. `podFailurePolicy` requires `restartPolicy: Never` (Kubernetes API validation,
/// `batch/v1` `JobSpec`).
#[test]
fn configuration_errors_are_never_retried() {
    let images = images();
    let mut jobs = 0;
    for o in all_objects() {
        let (Some(pod), Some(job)) = (pod_spec(&o), job_spec(&o)) else {
            continue;
        };
        jobs += 1;
        let at = label(&o);
        assert_eq!(pod["restartPolicy"], "Never", "{at}");
        let image = pod["containers"][0]["image"].as_str().unwrap();
        let binary = &images
            .iter()
            .find(|(n, _)| image.starts_with(n.as_str()))
            .unwrap()
            .1;
        let documented = documented_exit_codes(binary);
        let rules = job["podFailurePolicy"]["rules"].as_array().unwrap();
        let fail: BTreeSet<u64> = rules
            .iter()
            .filter(|r| r["action"] == "FailJob" && r["onExitCodes"]["operator"] == "In")
            .flat_map(|r| r["onExitCodes"]["values"].as_array().unwrap())
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(fail, BTreeSet::from([2, 3, 5, 6, 7, 8]), "{at}");
        for code in &fail {
            assert!(
                documented.contains_key(code),
                "{at}: {code} is not documented"
            );
        }
        for retried in [1, 4] {
            assert!(documented.contains_key(&retried) && !fail.contains(&retried));
        }
        assert!(
            documented[&4].contains("unreachable") && documented[&2].contains("configuration"),
            "{documented:?}"
        );
        assert!(
            rules.iter().any(|r| r["action"] == "Ignore"
                && r["onPodConditions"][0]["type"] == "DisruptionTarget"),
            "{at}: evictions are ignored"
        );
    }
    assert_eq!(jobs, 6);
}

/// A changed clients file reaches the cluster within minutes: the clients ConfigMap is
/// generated with a content hash in its name, both the Job and the CronJob mount it, so a new
/// file changes the Job's pod template and Flux recreates the Job (force annotation).
#[test]
fn a_changed_clients_file_reruns_the_client_issuer_job() {
    let root = workspace_root();
    let source = root.join("kubernetes/nas/security/client-issuer");
    // A copy laid out as in the repository, since it includes the shared pki-job component by
    // a relative path.
    let render_with = |clients: Option<&str>| -> Vec<Value> {
        let dir = Scratch::new();
        let copy = |from: &Path, to: &Path| {
            std::fs::create_dir_all(to).unwrap();
            for entry in std::fs::read_dir(from).unwrap() {
                let path = entry.unwrap().path();
                std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
            }
        };
        let app = dir.path().join("kubernetes/nas/security/client-issuer");
        copy(&source, &app);
        copy(
            &root.join("kubernetes/components/pki-job"),
            &dir.path().join("kubernetes/components/pki-job"),
        );
        if let Some(clients) = clients {
            std::fs::write(app.join("clients.yaml"), clients).unwrap();
        }
        crate::support::flux::render(&app)
    };
    let find = |objects: &[Value], kind: &str| -> Value {
        let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "one {kind}");
        found[0].clone()
    };
    let mounted = |pod: &Value| -> String {
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|v| v["configMap"]["name"].as_str())
            .unwrap()
            .to_owned()
    };
    let before = render_with(None);
    let after = render_with(Some(
        "clients:\n  - name: admin\n    email: admin@home.arpa\n  - name: newuser\n    email: newuser@home.arpa\n",
    ));
    let mut names = Vec::new();
    for objects in [&before, &after] {
        let config_map = find(objects, "ConfigMap");
        let name = config_map["metadata"]["name"].as_str().unwrap().to_owned();
        assert!(name.starts_with("client-issuer-clients-"), "{name}");
        let job = find(objects, "Job");
        let cron = find(objects, "CronJob");
        assert_eq!(mounted(&job["spec"]["template"]["spec"]), name);
        assert_eq!(
            mounted(&cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
            name
        );
        assert_eq!(
            job["metadata"]["annotations"]["kustomize.toolkit.fluxcd.io/force"],
            "enabled"
        );
        assert!(job["spec"]["ttlSecondsAfterFinished"].as_u64().unwrap() <= 86_400);
        assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid");
        names.push((name, job["spec"]["template"].clone()));
    }
    assert_ne!(
        names[0].0, names[1].0,
        "the ConfigMap name follows its content"
    );
    assert_ne!(
        names[0].1, names[1].1,
        "the Job's pod template changes with the clients file"
    );
    // The same file renders the same names: no Job is recreated without a change.
    assert_eq!(
        find(&render_with(None), "ConfigMap")["metadata"]["name"],
        find(&before, "ConfigMap")["metadata"]["name"]
    );
}

/// What renews the Istio intermediates: bootstrap-job on a daily CronJob with the same
/// container as the one-off Job (so the same role, store and renewal policy), not Flux
/// re-creating the Job. The renewal itself is tested against OpenBao
/// (`bootstrap::an_intermediate_due_for_renewal_is_reissued_and_the_root_kept`); the alert
/// before expiry in `the_alert_rules_pass_promtool_and_fire_on_sample_series`.
#[test]
fn a_daily_cronjob_renews_the_intermediates() {
    let objects = all_objects();
    let find = |kind: &str| -> &Value {
        let found: Vec<&Object> = objects
            .iter()
            .filter(|o| {
                o.value["kind"] == kind
                    && pod_spec(o).is_some_and(|p| {
                        p["containers"][0]["image"]
                            .as_str()
                            .unwrap()
                            .contains("/istio-ca-bootstrap:")
                    })
            })
            .collect();
        assert_eq!(found.len(), 1, "one bootstrap {kind}");
        &found[0].value
    };
    let job = find("Job");
    let cron = find("CronJob");
    let fields: Vec<&str> = cron["spec"]["schedule"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(fields.len(), 5);
    assert!(
        fields[0].parse::<u8>().is_ok_and(|m| m < 60)
            && fields[1].parse::<u8>().is_ok_and(|h| h < 24)
            && fields[2..] == ["*", "*", "*"],
        "daily: {fields:?}"
    );
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid");
    assert_eq!(
        cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"],
        job["spec"]["template"]["spec"]["containers"],
        "the CronJob runs what the Job runs"
    );
    assert!(
        cron["metadata"]["annotations"]["kustomize.toolkit.fluxcd.io/force"].is_null(),
        "a CronJob is updated in place"
    );
    let help = Command::new(job_bin("bootstrap-job"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("RENEW_LIFETIME_PERCENT") && help.contains("due for renewal"),
        "{help}"
    );
}

/// Each cluster ships a Grafana dashboard the kube-prometheus-stack sidecar loads (label
/// `grafana_dashboard: "1"`): valid JSON with days left per certificate and CA, the last
/// successful run per job, and (NAS) the CRL's nextUpdate and the drift found. That its
/// queries use only pushed metrics is checked in `metrics::`.
#[test]
fn each_cluster_ships_a_dashboard() {
    let all = flux_kustomizations();
    for (cluster, needles) in [
        (
            "homelab",
            &[
                "istio_ca_bootstrap_intermediate_expiry",
                "istio_ca_bootstrap_root_expiry",
                "istio_ca_bootstrap_last_success",
            ][..],
        ),
        (
            "nas",
            &[
                "client_issuer_client_cert_expiry",
                "client_issuer_ca_expiry",
                "client_issuer_crl_next_update",
                "client_issuer_last_success",
                "nas_sync_last_success",
                "nas_sync_last_run_drift_found",
            ][..],
        ),
    ] {
        let dashboards: Vec<&Value> = all
            .iter()
            .filter(|k| k.cluster == cluster)
            .flat_map(|k| &k.objects)
            .filter(|o| {
                o["kind"] == "ConfigMap" && o["metadata"]["labels"]["grafana_dashboard"] == "1"
            })
            .collect();
        assert_eq!(dashboards.len(), 1, "{cluster}");
        let text = dashboards[0]["data"]["pki-dashboard.json"]
            .as_str()
            .unwrap();
        let dashboard: Value = serde_json::from_str(text).unwrap();
        assert!(dashboard["uid"].is_string() && dashboard["panels"].is_array());
        for needle in needles {
            assert!(text.contains(needle), "{cluster}: no panel on {needle}");
        }
    }
}

/// The pod spec every Job and CronJob shares has one home, kubernetes/components/pki-job: no
/// manifest under a cluster repeats it, and every rendered Job and CronJob of both clusters
/// carries it exactly as written there (kustomize's local-config object is not applied).
#[test]
fn the_shared_job_pod_spec_has_one_home() {
    let root = workspace_root();
    let mut files = Vec::new();
    for cluster in crate::support::flux::CLUSTERS {
        files_named(
            &root.join("kubernetes").join(cluster),
            &|n| {
                Path::new(n)
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("yaml"))
            },
            &mut files,
        );
    }
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for shared in [
            "podFailurePolicy:",
            "seccompProfile:",
            "audience: vault",
            "VAULT_SA_TOKEN_PATH",
        ] {
            assert!(
                !text.contains(shared),
                "{} repeats '{shared}' from kubernetes/components/pki-job",
                file.display()
            );
        }
    }
    let defaults = crate::support::flux::yaml_documents(
        &std::fs::read_to_string(root.join("kubernetes/components/pki-job/defaults.yaml")).unwrap(),
    )
    .remove(0);
    let shared_pod = &defaults["spec"]["template"]["spec"];
    let shared_container = &shared_pod["containers"][0];
    let objects = all_objects();
    let mut jobs = 0;
    for o in &objects {
        assert_ne!(
            o.value["metadata"]["name"],
            "pki-job-defaults",
            "{}",
            label(o)
        );
        let (Some(job), Some(pod)) = (job_spec(o), pod_spec(o)) else {
            continue;
        };
        jobs += 1;
        assert_eq!(
            job["podFailurePolicy"],
            defaults["spec"]["podFailurePolicy"],
            "{}",
            label(o)
        );
        for field in [
            "securityContext",
            "automountServiceAccountToken",
            "restartPolicy",
        ] {
            assert_eq!(pod[field], shared_pod[field], "{} {field}", label(o));
        }
        assert!(
            pod["volumes"]
                .as_array()
                .unwrap()
                .contains(&shared_pod["volumes"][0]),
            "{}",
            label(o)
        );
        let container = &pod["containers"][0];
        assert_eq!(
            pod["containers"].as_array().unwrap().len(),
            1,
            "{}",
            label(o)
        );
        assert_eq!(
            container["securityContext"],
            shared_container["securityContext"],
            "{}",
            label(o)
        );
        assert_eq!(
            container["resources"]["requests"],
            shared_container["resources"]["requests"],
            "{}",
            label(o)
        );
        for list in ["env", "volumeMounts"] {
            for entry in shared_container[list].as_array().unwrap() {
                assert!(
                    container[list].as_array().unwrap().contains(entry),
                    "{} {list} {entry}",
                    label(o)
                );
            }
        }
    }
    assert_eq!(jobs, 6, "the Jobs and CronJobs of both clusters");
}
