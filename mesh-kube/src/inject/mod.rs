//! Sidecar injection as a pure function: a pod (or a workload's pod
//! template), its namespace and the mesh's configuration in; a decision out —
//! skip (with the reason) or the JSON Patch that adds the proxy. The admission
//! webhook and `meshctl inject` both call [`plan`], so what a cluster injects
//! and what the CLI writes are the same bytes.
//!
//! What an injected pod gets (see [`containers`]):
//! - `mesh-init`, an init container running `mesh-proxy init` (iptables) with
//!   NET_ADMIN and NET_RAW and nothing else;
//! - `mesh-proxy` as a native sidecar (an init container with
//!   `restartPolicy: Always`, Kubernetes ≥ 1.29) with a startup probe on
//!   `/ready`, the proxy's fixed UID, non-root, a read-only root filesystem,
//!   resource requests, a projected service-account token with the mesh's
//!   audience, the control plane's address and the trust anchors;
//! - the app containers' `httpGet`/`tcpSocket` probes rewritten to the
//!   proxy's admin port, which performs the originals (see [`probes`]; opt
//!   out with `config.mesh.dev/rewrite-app-probes: "false"`);
//! - the annotations that mark it injected (injecting twice is a no-op).

pub mod admission;
mod containers;
mod overrides;
mod patch;
pub mod probes;

pub mod manifests;

#[cfg(test)]
mod probe_tests;
#[cfg(test)]
mod tests;

use k8s_openapi::api::core::v1::{Container, PodSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

pub use overrides::{InjectError, Overrides};
pub use patch::{PatchOp, apply_patch};

/// Where images come from unless configured otherwise.
pub const DEFAULT_REGISTRY: &str = "ghcr.io/mesh-dev";
/// The annotation (on a pod or pod template) or label/annotation (on a
/// namespace) that opts in (`enabled`) or out (`disabled`).
pub const INJECT_ANNOTATION: &str = "mesh.dev/inject";
/// Set on injected pods: the proxy version injected.
pub const INJECTED_ANNOTATION: &str = "mesh.dev/injected";
/// The native sidecar's name.
pub const PROXY_CONTAINER: &str = "mesh-proxy";
/// The iptables init container's name.
pub const INIT_CONTAINER: &str = "mesh-init";
/// Namespaces never injected, whatever their labels say.
pub const SKIPPED_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];

/// The mesh-wide settings injection needs (from `meshctl install`'s values,
/// the control plane's flags, or `meshctl inject`'s flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectConfig {
    /// The proxy image (the iptables init runs `mesh-proxy init` from it too).
    pub proxy_image: String,
    /// The version written to [`INJECTED_ANNOTATION`].
    pub version: String,
    /// The mesh's own namespace (never injected).
    pub mesh_namespace: String,
    /// The control plane's gRPC address as proxies dial it.
    pub control_plane: String,
    /// The trust anchors (PEM) proxies verify the control plane with.
    pub trust_anchors_pem: String,
    /// The audience of the projected token the control plane accepts.
    pub token_audience: String,
    /// The mesh's trust domain: the proxy asks for
    /// `spiffe://<trust domain>/ns/<pod namespace>/sa/<pod service account>`.
    pub trust_domain: String,
    /// The proxy's UID (init leaves this UID's traffic alone).
    pub proxy_uid: i64,
    /// The proxy's ports.
    pub ports: ProxyPorts,
    /// Defaults for what the pod's annotations may override.
    pub defaults: Defaults,
}

/// The proxy's listening ports inside the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyPorts {
    /// Inbound (redirected connections to the pod's ports).
    pub inbound: u16,
    /// Outbound (redirected connections the app makes).
    pub outbound: u16,
    /// Admin (/ready, /live, /metrics; never redirected).
    pub admin: u16,
}

impl Default for ProxyPorts {
    fn default() -> Self {
        Self { inbound: 4143, outbound: 4140, admin: 4191 }
    }
}

/// Resource and logging defaults for the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// CPU request.
    pub cpu_request: String,
    /// Memory request.
    pub memory_request: String,
    /// CPU limit (none by default: throttling a proxy adds latency to every request).
    pub cpu_limit: Option<String>,
    /// Memory limit.
    pub memory_limit: Option<String>,
    /// `MESH_LOG` filter.
    pub log_level: String,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            cpu_request: "100m".into(),
            memory_request: "20Mi".into(),
            cpu_limit: None,
            memory_limit: Some("250Mi".into()),
            log_level: "info".into(),
        }
    }
}

impl InjectConfig {
    /// The configuration for `version`, images from `registry`, the control
    /// plane in `mesh_namespace`, and these trust anchors; defaults elsewhere.
    pub fn new(registry: &str, version: &str, mesh_namespace: &str, trust_anchors_pem: String) -> Self {
        Self {
            proxy_image: format!("{registry}/mesh-proxy:{version}"),
            version: version.to_string(),
            mesh_namespace: mesh_namespace.to_string(),
            control_plane: format!("https://mesh-control.{mesh_namespace}.svc:8086"),
            trust_anchors_pem,
            token_audience: crate::identity::DEFAULT_AUDIENCE.into(),
            trust_domain: "cluster.local".into(),
            proxy_uid: 2102,
            ports: ProxyPorts::default(),
            defaults: Defaults::default(),
        }
    }
}

/// What injection needs to know about the pod's namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
}

/// Why a pod is left as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Neither the pod nor its namespace opted in.
    NotEnabled,
    /// The pod (or its namespace) says `mesh.dev/inject: disabled`.
    Disabled,
    /// The pod shares the node's network: its iptables are the node's.
    HostNetwork,
    /// A system namespace or the mesh's own.
    Namespace(String),
    /// The pod already has the proxy.
    AlreadyInjected,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::NotEnabled => write!(f, "neither the pod nor its namespace has {INJECT_ANNOTATION}: enabled"),
            Skip::Disabled => write!(f, "{INJECT_ANNOTATION} is disabled"),
            Skip::HostNetwork => write!(f, "the pod uses the host's network (hostNetwork: true)"),
            Skip::Namespace(ns) => write!(f, "pods in namespace {ns} are never injected"),
            Skip::AlreadyInjected => write!(f, "the pod already has the {PROXY_CONTAINER} sidecar"),
        }
    }
}

/// What to add to a pod: the result of [`plan`].
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    /// Prepended to `initContainers`, in order (iptables first, then the proxy).
    pub init_containers: Vec<Container>,
    /// Appended to `volumes`.
    pub volumes: Vec<Volume>,
    /// Added to `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// App containers' probes replaced by probes of the proxy's admin port.
    pub probe_rewrites: Vec<probes::ProbeRewrite>,
}

/// Whether the opt-in applies when nothing says so: the webhook needs an
/// explicit `enabled`; `meshctl inject` is itself the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptIn {
    /// Inject only pods or namespaces marked `enabled`.
    Marked,
    /// Inject unless marked `disabled`.
    Unless,
}

/// Decides whether and how to inject a pod (or pod template) described by
/// `meta` and `spec`, living in `namespace`. Errors name the annotation at
/// fault and what values it takes.
pub fn plan(
    meta: &ObjectMeta,
    spec: &PodSpec,
    namespace: &NamespaceInfo,
    config: &InjectConfig,
    opt_in: OptIn,
) -> Result<Result<Injection, Skip>, InjectError> {
    let empty = BTreeMap::new();
    let annotations = meta.annotations.as_ref().unwrap_or(&empty);
    let pod_choice = overrides::inject_choice(annotations.get(INJECT_ANNOTATION), "pod annotation")?;
    let ns_choice = match pod_choice {
        Some(choice) => Some(choice),
        None => match overrides::inject_choice(namespace.labels.get(INJECT_ANNOTATION), "namespace label")? {
            Some(choice) => Some(choice),
            None => overrides::inject_choice(namespace.annotations.get(INJECT_ANNOTATION), "namespace annotation")?,
        },
    };
    // Already-injected first: running the webhook over `meshctl inject`'s
    // output (or re-admitting a pod) must be a no-op, not an error.
    if already_injected(spec) {
        return Ok(Err(Skip::AlreadyInjected));
    }
    match (ns_choice, opt_in) {
        (Some(false), _) => return Ok(Err(Skip::Disabled)),
        (None, OptIn::Marked) => return Ok(Err(Skip::NotEnabled)),
        (Some(true), _) | (None, OptIn::Unless) => {}
    }
    if spec.host_network == Some(true) {
        return Ok(Err(Skip::HostNetwork));
    }
    if SKIPPED_NAMESPACES.contains(&namespace.name.as_str()) || namespace.name == config.mesh_namespace {
        return Ok(Err(Skip::Namespace(namespace.name.clone())));
    }
    let overrides = Overrides::parse(annotations, &config.defaults)?;
    Ok(Ok(containers::injection(&overrides, config, spec)))
}

/// Whether the pod already carries the proxy (as a native sidecar or, from
/// some older or hand-written spec, as a regular container).
pub fn already_injected(spec: &PodSpec) -> bool {
    let named = |c: &Container| c.name == PROXY_CONTAINER;
    spec.init_containers.iter().flatten().any(named) || spec.containers.iter().any(named)
}

impl Injection {
    /// The JSON Patch (RFC 6902) that adds this injection to a pod whose
    /// object root is `root` (`""` for a Pod, `"/spec/template"` for a
    /// Deployment, ...) and whose current state is `meta`/`spec`.
    pub fn patch(&self, root: &str, meta: &ObjectMeta, spec: &PodSpec) -> Vec<PatchOp> {
        patch::add_injection(self, root, meta, spec)
    }
}

/// The JSON Patch that removes an injection from a pod template (what
/// `meshctl uninject` does): the mesh's containers, volumes and annotations
/// removed, the app's rewritten probes restored; lists and maps left empty
/// are removed, so `inject | uninject` gives the input back.
pub fn uninject_patch(root: &str, meta: &ObjectMeta, spec: &PodSpec) -> Vec<PatchOp> {
    patch::remove_injection(root, meta, spec)
}

/// Reads what injection needs of namespace `name` (its labels and annotations).
pub async fn namespace(client: &kube::Client, name: &str) -> Result<NamespaceInfo, crate::KubeError> {
    let api = crate::rbac::NAMESPACES.all::<k8s_openapi::api::core::v1::Namespace>(client);
    let ns = api
        .get(name)
        .await
        .map_err(|source| crate::KubeError::Api { what: format!("reading namespace {name}"), source })?;
    Ok(NamespaceInfo {
        name: name.to_string(),
        labels: ns.metadata.labels.unwrap_or_default(),
        annotations: ns.metadata.annotations.unwrap_or_default(),
    })
}
