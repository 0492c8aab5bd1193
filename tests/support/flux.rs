//! The Flux layout as each cluster sees it: every Flux Kustomization (the `*-kustomization.yaml`
//! files under `kubernetes/<cluster>/`) and the objects `kubectl kustomize` renders from its
//! `spec.path`, which is what kustomize-controller applies.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::openbao::workspace_root;
use super::tools::{Scratch, run};

/// The clusters, as the directories under `kubernetes/`.
pub const CLUSTERS: [&str; 2] = ["homelab", "nas"];

pub fn yaml_documents(text: &str) -> Vec<Value> {
    serde_saphyr::from_str_multiple::<Value, Vec<Value>>(text)
        .expect("valid YAML")
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

pub fn files_named(dir: &Path, predicate: &dyn Fn(&str) -> bool, out: &mut Vec<PathBuf>) {
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

/// `kubectl kustomize <dir>`, parsed.
pub fn render(dir: &Path) -> Vec<Value> {
    let rendered = run("kubectl", &["kustomize", dir.to_str().unwrap()], dir);
    assert!(
        rendered.success,
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        rendered.all()
    );
    yaml_documents(&rendered.stdout)
}

/// Renders `resources` with `components` (directories relative to the workspace root)
/// through a kustomization of its own, as a cluster would with that selection.
pub fn render_with_components(resources: &[&str], components: &[&str]) -> Vec<Value> {
    let dir = Scratch::new();
    // kustomize takes only relative paths to other directories.
    let up = "../".repeat(dir.path().components().count() - 1);
    let root = workspace_root();
    let rel = |p: &&str| {
        format!(
            "{up}{}",
            root.join(p).to_str().unwrap().trim_start_matches('/')
        )
    };
    let list = |items: &[&str]| -> String {
        items
            .iter()
            .flat_map(|p| ["  - ".to_owned(), rel(p), "\n".to_owned()])
            .collect()
    };
    dir.write(
        "kustomization.yaml",
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n{}components:\n{}",
            list(resources),
            list(components)
        ),
    );
    render(dir.path())
}

/// A Flux Kustomization and what it applies.
pub struct FluxKustomization {
    /// `homelab` or `nas`.
    pub cluster: String,
    /// The file it is declared in, relative to the workspace root.
    pub file: String,
    pub value: Value,
    /// The rendered objects of its `spec.path`.
    pub objects: Vec<Value>,
}

impl FluxKustomization {
    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap()
    }
}

/// Every Flux Kustomization of every cluster, with its rendered objects.
pub fn flux_kustomizations() -> Vec<FluxKustomization> {
    let root = workspace_root();
    let mut out = Vec::new();
    for cluster in CLUSTERS {
        let mut files = Vec::new();
        files_named(
            &root.join("kubernetes").join(cluster),
            &|n| n.ends_with("-kustomization.yaml"),
            &mut files,
        );
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for value in yaml_documents(&text) {
                assert_eq!(
                    value["apiVersion"],
                    "kustomize.toolkit.fluxcd.io/v1",
                    "{}",
                    file.display()
                );
                let path = value["spec"]["path"].as_str().unwrap();
                let objects = render(&root.join(path));
                out.push(FluxKustomization {
                    cluster: cluster.to_owned(),
                    file: file.strip_prefix(&root).unwrap().display().to_string(),
                    value,
                    objects,
                });
            }
        }
    }
    out
}
