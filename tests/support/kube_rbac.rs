//! RBAC authorization for the fake API server, evaluated from `Role`, `ClusterRole`,
//! `RoleBinding` and `ClusterRoleBinding` objects (the rendered manifests, plus the bootstrap
//! roles every cluster has). Copied behaviour, from kubernetes/kubernetes:
//! - `plugin/pkg/auth/authorizer/rbac/rbac.go` and `pkg/registry/rbac/validation/rule.go`: a
//!   `ClusterRoleBinding` grants everywhere; a `RoleBinding` (to a `Role` or a `ClusterRole`)
//!   grants only on namespaced requests in its own namespace; subjects match by user name,
//!   group, or service account (`system:serviceaccount:<ns>:<name>`, in the binding's namespace
//!   when the subject names none);
//! - `pkg/apis/rbac/v1/evaluation_helpers.go`: verbs, API groups, resources and non-resource
//!   URLs match exactly or by `*` (a non-resource URL also by a trailing `*` prefix); an empty
//!   `resourceNames` matches every name;
//! - `plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go`: `system:auth-delegator`
//!   (create tokenreviews and subjectaccessreviews), `system:discovery` and
//!   `system:public-info-viewer` with their default bindings;
//! - `staging/src/k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/errors.go`
//!   (`forbiddenMessage`): the wording of a refusal.

use serde_json::Value;

use super::kube_authn::User;

/// One rule of a `Role` or `ClusterRole`.
#[derive(Debug, Clone, Default)]
struct PolicyRule {
    verbs: Vec<String>,
    api_groups: Vec<String>,
    resources: Vec<String>,
    resource_names: Vec<String>,
    non_resource_urls: Vec<String>,
}

impl PolicyRule {
    fn from_json(rule: &Value) -> Self {
        let list = |key: &str| -> Vec<String> {
            rule[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        };
        Self {
            verbs: list("verbs"),
            api_groups: list("apiGroups"),
            resources: list("resources"),
            resource_names: list("resourceNames"),
            non_resource_urls: list("nonResourceURLs"),
        }
    }

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Self {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Self {
            verbs: owned(verbs),
            api_groups: owned(groups),
            resources: owned(resources),
            ..Self::default()
        }
    }

    fn urls(verbs: &[&str], urls: &[&str]) -> Self {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Self {
            verbs: owned(verbs),
            non_resource_urls: owned(urls),
            ..Self::default()
        }
    }

    fn allows(&self, request: &Request) -> bool {
        let has = |list: &[String], value: &str| list.iter().any(|v| v == "*" || v == value);
        if !has(&self.verbs, request.verb()) {
            return false;
        }
        match request {
            Request::Resource {
                group,
                resource,
                name,
                ..
            } => {
                has(&self.api_groups, group)
                    && has(&self.resources, resource)
                    && (self.resource_names.is_empty()
                        || name
                            .as_ref()
                            .is_some_and(|n| self.resource_names.contains(n)))
            }
            Request::NonResource { path, .. } => self.non_resource_urls.iter().any(|url| {
                url == "*"
                    || url == path
                    || url
                        .strip_suffix('*')
                        .is_some_and(|prefix| path.starts_with(prefix))
            }),
        }
    }
}

#[derive(Debug, Clone)]
struct Subject {
    kind: String,
    name: String,
    namespace: Option<String>,
}

#[derive(Debug, Clone)]
struct Binding {
    /// `None` for a `ClusterRoleBinding`.
    namespace: Option<String>,
    role_kind: String,
    role_name: String,
    subjects: Vec<Subject>,
}

impl Binding {
    fn applies_to(&self, user: &User) -> bool {
        self.subjects.iter().any(|s| match s.kind.as_str() {
            "User" => s.name == user.name,
            "Group" => user.groups.contains(&s.name),
            "ServiceAccount" => s
                .namespace
                .as_deref()
                .or(self.namespace.as_deref())
                .is_some_and(|ns| user.name == format!("system:serviceaccount:{ns}:{}", s.name)),
            _ => false,
        })
    }
}

/// What a request asks to do, as the authorizer sees it.
#[derive(Debug, Clone)]
pub enum Request {
    Resource {
        verb: String,
        group: String,
        resource: String,
        /// `None` for a cluster-scoped resource.
        namespace: Option<String>,
        name: Option<String>,
    },
    NonResource {
        verb: String,
        path: String,
    },
}

impl Request {
    fn verb(&self) -> &str {
        match self {
            Self::Resource { verb, .. } | Self::NonResource { verb, .. } => verb,
        }
    }

    /// The Status message of a 403, word for word as the API server writes it.
    pub fn forbidden_message(&self, user: &User) -> String {
        match self {
            Self::NonResource { verb, path } => format!(
                "forbidden: User \"{}\" cannot {verb} path \"{path}\"",
                user.name
            ),
            Self::Resource {
                verb,
                group,
                resource,
                namespace,
                name,
            } => {
                let qualified = if group.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}.{group}")
                };
                let object = match name {
                    Some(name) => format!("{qualified} \"{name}\" is forbidden"),
                    None => format!("{qualified} is forbidden"),
                };
                let scope = match namespace {
                    Some(ns) => format!("in the namespace \"{ns}\""),
                    None => "at the cluster scope".into(),
                };
                format!(
                    "{object}: User \"{}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" {scope}",
                    user.name
                )
            }
        }
    }
}

/// The RBAC objects of a cluster.
#[derive(Debug, Clone, Default)]
pub struct Rbac {
    roles: Vec<(String, String, Vec<PolicyRule>)>,
    cluster_roles: Vec<(String, Vec<PolicyRule>)>,
    bindings: Vec<Binding>,
}

impl Rbac {
    /// The bootstrap policy the API server creates in every cluster (the part that matters
    /// here).
    pub fn with_bootstrap_policy() -> Self {
        let mut rbac = Self::default();
        rbac.cluster_roles.push((
            "system:auth-delegator".into(),
            vec![
                PolicyRule::rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                PolicyRule::rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
            ],
        ));
        rbac.cluster_roles.push((
            "system:discovery".into(),
            vec![PolicyRule::urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ));
        rbac.cluster_roles.push((
            "system:public-info-viewer".into(),
            vec![PolicyRule::urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ));
        let group = |name: &str| Subject {
            kind: "Group".into(),
            name: name.into(),
            namespace: None,
        };
        rbac.bindings.push(Binding {
            namespace: None,
            role_kind: "ClusterRole".into(),
            role_name: "system:discovery".into(),
            subjects: vec![group("system:authenticated")],
        });
        rbac.bindings.push(Binding {
            namespace: None,
            role_kind: "ClusterRole".into(),
            role_name: "system:public-info-viewer".into(),
            subjects: vec![
                group("system:authenticated"),
                group("system:unauthenticated"),
            ],
        });
        rbac
    }

    /// Takes an RBAC object; returns whether it was one.
    pub fn load(&mut self, object: &Value) -> bool {
        let rules = || -> Vec<PolicyRule> {
            object["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(PolicyRule::from_json)
                .collect()
        };
        let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let namespace = object["metadata"]["namespace"].as_str().map(str::to_owned);
        match object["kind"].as_str() {
            Some("Role") => {
                self.roles
                    .push((namespace.expect("a Role has a namespace"), name, rules()));
            }
            Some("ClusterRole") => self.cluster_roles.push((name, rules())),
            Some(kind @ ("RoleBinding" | "ClusterRoleBinding")) => {
                let subjects = object["subjects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| Subject {
                        kind: s["kind"].as_str().unwrap_or("").into(),
                        name: s["name"].as_str().unwrap_or("").into(),
                        namespace: s["namespace"].as_str().map(str::to_owned),
                    })
                    .collect();
                self.bindings.push(Binding {
                    namespace: if kind == "RoleBinding" {
                        Some(namespace.expect("a RoleBinding has a namespace"))
                    } else {
                        None
                    },
                    role_kind: object["roleRef"]["kind"].as_str().unwrap_or("").into(),
                    role_name: object["roleRef"]["name"].as_str().unwrap_or("").into(),
                    subjects,
                });
            }
            _ => return false,
        }
        true
    }

    /// Removes a binding, as `kubectl delete clusterrolebinding|rolebinding` does.
    pub fn remove_bindings_of(&mut self, role_name: &str) {
        self.bindings.retain(|b| b.role_name != role_name);
    }

    /// Whether RBAC allows `user` to make `request`.
    pub fn allows(&self, user: &User, request: &Request) -> bool {
        let request_namespace = match request {
            Request::Resource { namespace, .. } => namespace.as_deref(),
            Request::NonResource { .. } => None,
        };
        self.bindings.iter().any(|binding| {
            if let Some(ns) = &binding.namespace
                && request_namespace != Some(ns.as_str())
            {
                return false;
            }
            if !binding.applies_to(user) {
                return false;
            }
            let rules = match binding.role_kind.as_str() {
                "ClusterRole" => self
                    .cluster_roles
                    .iter()
                    .filter(|(name, _)| name == &binding.role_name)
                    .flat_map(|(_, rules)| rules)
                    .collect::<Vec<_>>(),
                "Role" => self
                    .roles
                    .iter()
                    .filter(|(ns, name, _)| {
                        Some(ns) == binding.namespace.as_ref() && name == &binding.role_name
                    })
                    .flat_map(|(_, _, rules)| rules)
                    .collect(),
                _ => Vec::new(),
            };
            rules.iter().any(|rule| rule.allows(request))
        })
    }
}
