//! What the control plane may do in the cluster: one table ([`CONTROL_PLANE`])
//! of (API group, resource, verbs). Every API the control plane's code opens
//! is obtained through an entry of it ([`Access::all`], [`Access::namespaced`]),
//! which checks that the entry is that kind's; the ClusterRole committed
//! under `deploy/rbac/` is rendered from it (a test fails when they differ:
//! `UPDATE_RBAC=1 cargo test -p mesh-kube --lib rbac` rewrites it), and the
//! `kube_identity` suite runs the control plane as that ServiceAccount, so
//! the API server enforces it, and compares the API server's audit log of
//! its calls with this table, verb by verb, both ways.

use crate::error::KubeError;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use std::collections::BTreeMap;

/// Verbs on one resource of one API group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The API group (`""` for the core group).
    pub group: &'static str,
    /// The resource (plural, lower case).
    pub resource: &'static str,
    /// The verbs the code uses.
    pub verbs: &'static [&'static str],
}

const LIST_WATCH: &[&str] = &["list", "watch"];

/// Services: the registry's reflector.
pub const SERVICES: Access = Access { group: "", resource: "services", verbs: LIST_WATCH };
/// EndpointSlices: the registry's reflector.
pub const ENDPOINT_SLICES: Access = Access { group: "discovery.k8s.io", resource: "endpointslices", verbs: LIST_WATCH };
/// Pods: the registry's reflector (their ServiceAccount), and the identity
/// check that a token's pod is live (`get`).
pub const PODS: Access = Access { group: "", resource: "pods", verbs: &["get", "list", "watch"] };
/// TrafficPolicies: the registry's reflector.
pub const TRAFFIC_POLICIES: Access =
    Access { group: "policy.mesh.dev", resource: "trafficpolicies", verbs: LIST_WATCH };
/// AuthorizationPolicies: the registry's reflector.
pub const AUTHORIZATION_POLICIES: Access =
    Access { group: "policy.mesh.dev", resource: "authorizationpolicies", verbs: LIST_WATCH };
/// HTTPRoutes: the registry's reflector.
pub const HTTP_ROUTES: Access =
    Access { group: "gateway.networking.k8s.io", resource: "httproutes", verbs: LIST_WATCH };
/// GRPCRoutes: the registry's reflector.
pub const GRPC_ROUTES: Access =
    Access { group: "gateway.networking.k8s.io", resource: "grpcroutes", verbs: LIST_WATCH };
/// Events on rejected objects (kube-runtime's recorder creates an Event, then
/// patches it when the same one repeats).
pub const EVENTS: Access = Access { group: "events.k8s.io", resource: "events", verbs: &["create", "patch"] };
/// HTTPRoutes' status: the leader's conditions (server-side apply is a `patch`).
pub const HTTP_ROUTES_STATUS: Access =
    Access { group: "gateway.networking.k8s.io", resource: "httproutes/status", verbs: &["patch"] };
/// GRPCRoutes' status: the leader's conditions.
pub const GRPC_ROUTES_STATUS: Access =
    Access { group: "gateway.networking.k8s.io", resource: "grpcroutes/status", verbs: &["patch"] };
/// AuthorizationPolicies' status: the leader's conditions.
pub const AUTHORIZATION_POLICIES_STATUS: Access =
    Access { group: "policy.mesh.dev", resource: "authorizationpolicies/status", verbs: &["patch"] };
/// TrafficPolicies' status: the leader's conditions.
pub const TRAFFIC_POLICIES_STATUS: Access =
    Access { group: "policy.mesh.dev", resource: "trafficpolicies/status", verbs: &["patch"] };
/// The leader Lease (`crate::lease`): read, created once, renewed and
/// released with resourceVersion-checked updates.
pub const LEASES: Access =
    Access { group: "coordination.k8s.io", resource: "leases", verbs: &["get", "create", "update"] };
/// Namespaces: the injector reads a pod's namespace (its opt-in labels).
pub const NAMESPACES: Access = Access { group: "", resource: "namespaces", verbs: &["get"] };
/// TokenReviews: checking the ServiceAccount tokens proxies present.
pub const TOKEN_REVIEWS: Access =
    Access { group: "authentication.k8s.io", resource: "tokenreviews", verbs: &["create"] };

/// Everything the control plane does in the cluster.
pub const CONTROL_PLANE: &[Access] = &[
    SERVICES,
    ENDPOINT_SLICES,
    PODS,
    TRAFFIC_POLICIES,
    AUTHORIZATION_POLICIES,
    HTTP_ROUTES,
    GRPC_ROUTES,
    EVENTS,
    NAMESPACES,
    TOKEN_REVIEWS,
    HTTP_ROUTES_STATUS,
    GRPC_ROUTES_STATUS,
    AUTHORIZATION_POLICIES_STATUS,
    TRAFFIC_POLICIES_STATUS,
    LEASES,
];

/// The control plane's name: its ServiceAccount, ClusterRole and binding.
pub const NAME: &str = "mesh-control";
/// The namespace the control plane runs in.
pub const NAMESPACE: &str = "mesh-system";
/// The file (relative to the repository root) the manifest is committed as.
pub const FILE: &str = "deploy/rbac/control-plane.yaml";

impl Access {
    /// Whether this entry is `K`'s resource.
    pub fn is_for<K: Resource<DynamicType = ()>>(&self) -> bool {
        K::group(&()) == self.group && K::plural(&()) == self.resource
    }

    /// Whether this entry is `K`'s status subresource (`<plural>/status`).
    pub fn is_status_of<K: Resource<DynamicType = ()>>(&self) -> bool {
        K::group(&()) == self.group && self.resource == format!("{}/status", K::plural(&()))
    }

    /// `K`'s API in `namespace` for writing its status subresource, through this entry.
    pub fn status_namespaced<K>(&self, client: &Client, namespace: &str) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        assert!(
            self.is_status_of::<K>(),
            "rbac table entry {}/{} used for the status of {}/{}",
            self.group,
            self.resource,
            K::group(&()),
            K::plural(&())
        );
        Api::namespaced(client.clone(), namespace)
    }

    /// Panics (a programming error, caught by every test that runs the call)
    /// when a call site names the wrong entry for its kind.
    pub fn check<K: Resource<DynamicType = ()>>(&self) {
        assert!(
            self.is_for::<K>(),
            "rbac table entry {}/{} used for {}/{}",
            self.group,
            self.resource,
            K::group(&()),
            K::plural(&())
        );
    }

    /// `K`'s API across all namespaces (or cluster-scoped), through this entry.
    pub fn all<K: Resource<DynamicType = ()>>(&self, client: &Client) -> Api<K> {
        self.check::<K>();
        Api::all(client.clone())
    }

    /// `K`'s API in `namespace`, through this entry.
    pub fn namespaced<K>(&self, client: &Client, namespace: &str) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        self.check::<K>();
        Api::namespaced(client.clone(), namespace)
    }
}

/// The ClusterRole: one rule per entry of `table`.
pub fn cluster_role(table: &[Access]) -> ClusterRole {
    ClusterRole {
        metadata: meta(NAME, None),
        rules: Some(
            table
                .iter()
                .map(|a| PolicyRule {
                    api_groups: Some(vec![a.group.to_string()]),
                    resources: Some(vec![a.resource.to_string()]),
                    verbs: a.verbs.iter().map(|v| v.to_string()).collect(),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    }
}

/// The Namespace, ServiceAccount and binding the ClusterRole is granted through.
pub fn objects() -> (Namespace, ServiceAccount, ClusterRole, ClusterRoleBinding) {
    let binding = ClusterRoleBinding {
        metadata: meta(NAME, None),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: NAME.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: NAME.into(),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        }]),
    };
    (
        Namespace { metadata: meta(NAMESPACE, None), ..Default::default() },
        ServiceAccount { metadata: meta(NAME, Some(NAMESPACE)), ..Default::default() },
        cluster_role(CONTROL_PLANE),
        binding,
    )
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(str::to_string),
        labels: Some(BTreeMap::from([("app.kubernetes.io/part-of".to_string(), "mesh".to_string())])),
        ..Default::default()
    }
}

/// The manifest committed as [`FILE`]: the objects of [`objects`], one YAML
/// document each (with `apiVersion` and `kind`, as `kubectl apply` wants them).
pub fn to_yaml() -> Result<String, KubeError> {
    let (ns, sa, role, binding) = objects();
    let docs = [document(&ns)?, document(&sa)?, document(&role)?, document(&binding)?];
    Ok(format!(
        "# Generated from mesh-kube/src/rbac.rs by `UPDATE_RBAC=1 cargo test -p mesh-kube --lib rbac`: do not edit.\n{}",
        docs.join("---\n")
    ))
}

fn document<K: Resource<DynamicType = ()> + serde::Serialize>(object: &K) -> Result<String, KubeError> {
    let render = |message: String| KubeError::Render { what: format!("the RBAC manifest ({})", K::kind(&())), message };
    let mut value = serde_json::to_value(object).map_err(|e| render(e.to_string()))?;
    if let Some(map) = value.as_object_mut() {
        let mut with_type = serde_json::Map::new();
        with_type.insert("apiVersion".into(), K::api_version(&()).into());
        with_type.insert("kind".into(), K::kind(&()).into());
        with_type.extend(std::mem::take(map));
        *map = with_type;
    }
    serde_saphyr::to_string(&value).map_err(|e| render(e.to_string()))
}

/// Server-side applies [`objects`] (for tests and installers with admin rights).
pub async fn apply(client: &Client) -> Result<(), KubeError> {
    let (ns, sa, role, binding) = objects();
    let params = PatchParams::apply(crate::crds::FIELD_MANAGER).force();
    let failed = |what: &str| {
        let what = format!("applying the control plane's {what}");
        move |source| KubeError::Api { what, source }
    };
    Api::<Namespace>::all(client.clone())
        .patch(NAMESPACE, &params, &Patch::Apply(&ns))
        .await
        .map_err(failed("Namespace"))?;
    Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE)
        .patch(NAME, &params, &Patch::Apply(&sa))
        .await
        .map_err(failed("ServiceAccount"))?;
    Api::<ClusterRole>::all(client.clone())
        .patch(NAME, &params, &Patch::Apply(&role))
        .await
        .map_err(failed("ClusterRole"))?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(NAME, &params, &Patch::Apply(&binding))
        .await
        .map_err(failed("ClusterRoleBinding"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AuthorizationPolicy, TrafficPolicy};
    use crate::gateway::{GRPCRoute, HTTPRoute};
    use k8s_openapi::api::authentication::v1::TokenReview;
    use k8s_openapi::api::core::v1::{Pod, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::api::events::v1::Event;
    use std::path::PathBuf;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// Catches a table entry with a typo in its group or resource (the role
    /// would grant something the code never calls, and miss what it does).
    #[test]
    fn every_entry_is_its_kinds() {
        assert!(SERVICES.is_for::<Service>());
        assert!(ENDPOINT_SLICES.is_for::<EndpointSlice>());
        assert!(PODS.is_for::<Pod>());
        assert!(TRAFFIC_POLICIES.is_for::<TrafficPolicy>());
        assert!(AUTHORIZATION_POLICIES.is_for::<AuthorizationPolicy>());
        assert!(HTTP_ROUTES.is_for::<HTTPRoute>());
        assert!(GRPC_ROUTES.is_for::<GRPCRoute>());
        assert!(EVENTS.is_for::<Event>());
        assert!(NAMESPACES.is_for::<k8s_openapi::api::core::v1::Namespace>());
        assert!(TOKEN_REVIEWS.is_for::<TokenReview>());
        assert!(!PODS.is_for::<Service>());
        assert!(HTTP_ROUTES_STATUS.is_status_of::<HTTPRoute>());
        assert!(GRPC_ROUTES_STATUS.is_status_of::<GRPCRoute>());
        assert!(AUTHORIZATION_POLICIES_STATUS.is_status_of::<AuthorizationPolicy>());
        assert!(TRAFFIC_POLICIES_STATUS.is_status_of::<TrafficPolicy>());
        assert!(!HTTP_ROUTES.is_status_of::<HTTPRoute>() && !HTTP_ROUTES_STATUS.is_for::<HTTPRoute>());
        assert!(LEASES.is_for::<k8s_openapi::api::coordination::v1::Lease>());
    }

    /// Catches the committed manifest drifting from the table (a permission
    /// added in code but not granted, or granted but no longer used).
    #[test]
    fn committed_manifest_matches_the_table() {
        let path = root().join(FILE);
        let want = to_yaml().expect("renders");
        if std::env::var("UPDATE_RBAC").is_ok_and(|v| v == "1") {
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("create deploy/rbac");
            std::fs::write(&path, &want).expect("write the manifest");
            return;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{} is out of date with mesh-kube/src/rbac.rs; regenerate it with `UPDATE_RBAC=1 cargo test -p mesh-kube --lib rbac` and commit the result",
            path.display()
        );
    }

    /// The source of mesh-kube without tests, and without `skip` files
    /// (paths relative to `src/`; a trailing `/` skips a directory).
    fn sources(skip: &[&str]) -> Vec<(String, String)> {
        let src = root().join("mesh-kube/src");
        let mut out = Vec::new();
        let mut dirs = vec![src.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("read src").flatten() {
                let path = entry.path();
                let name = path.strip_prefix(&src).unwrap_or(&path).to_string_lossy().into_owned();
                if path.is_dir() {
                    dirs.push(path);
                } else if name.ends_with(".rs")
                    && !name.ends_with("tests.rs")
                    && !skip.iter().any(|s| name == *s || (s.ends_with('/') && name.starts_with(s)))
                {
                    let text = std::fs::read_to_string(&path).expect("read a source file");
                    // Inline unit tests sit at the end of a file.
                    let code = text.split("#[cfg(test)]\nmod tests {").next().unwrap_or_default().to_string();
                    out.push((name, code));
                }
            }
        }
        out
    }

    /// Catches a call the table does not cover (an `Api` opened directly,
    /// bypassing it) and an entry no code uses (a permission granted for
    /// nothing). `crds.rs`, `install/`, `check/` and this file's `apply` are
    /// meshctl's code, run with the user's credentials, not the control plane's.
    #[test]
    fn the_code_opens_apis_only_through_the_table_and_uses_every_entry() {
        let code = sources(&["rbac.rs", "crds.rs", "install/", "check/"]);
        for (file, text) in &code {
            for direct in ["Api::all(", "Api::namespaced(", "Api::default_namespaced("] {
                assert!(!text.contains(direct), "{file} opens {direct}...) directly: go through an rbac::Access entry");
            }
        }
        let names = [
            "SERVICES",
            "ENDPOINT_SLICES",
            "PODS",
            "TRAFFIC_POLICIES",
            "AUTHORIZATION_POLICIES",
            "HTTP_ROUTES",
            "GRPC_ROUTES",
            "EVENTS",
            "NAMESPACES",
            "TOKEN_REVIEWS",
            "HTTP_ROUTES_STATUS",
            "GRPC_ROUTES_STATUS",
            "AUTHORIZATION_POLICIES_STATUS",
            "TRAFFIC_POLICIES_STATUS",
            "LEASES",
        ];
        assert_eq!(names.len(), CONTROL_PLANE.len(), "every entry of the table is named here");
        for name in names {
            let used = code.iter().any(|(_, text)| text.contains(&format!("rbac::{name}")));
            assert!(used, "rbac::{name} is granted but no code uses it: remove it from the table");
        }
    }
}
