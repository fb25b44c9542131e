//! `meshctl install` / `uninstall`: every object the mesh needs in a cluster,
//! rendered from typed values by a pure function ([`render`]), applied with
//! server-side apply under one field manager ([`apply`]), and removed by
//! label, CRDs last ([`uninstall`]).
//!
//! Everything rendered carries [`PART_OF`]`=mesh`, which is how uninstall
//! finds exactly what install made.

mod apply;
mod render;

#[cfg(test)]
mod tests;

pub use apply::{Progress, apply, existing_identity, meshed_pods, uninstall, wait_ready};
pub use render::{Manifest, render, to_yaml};

use std::collections::BTreeMap;

/// The label every installed object carries.
pub const PART_OF: &str = "app.kubernetes.io/part-of";
/// Its value.
pub const PART_OF_VALUE: &str = "mesh";
/// The Secret holding the control plane's identity material.
pub const IDENTITY_SECRET: &str = "mesh-identity";
/// The control plane's name (Deployment, Service, ServiceAccount, ClusterRole).
pub const CONTROL: &str = "mesh-control";
/// The webhook configuration's name.
pub const WEBHOOK: &str = "mesh-injector";

/// What `meshctl install` renders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Values {
    /// The mesh's namespace.
    pub namespace: String,
    /// Image registry (`<registry>/mesh-control:<version>`, `.../mesh-proxy:<version>`).
    pub registry: String,
    /// The version (image tag) installed.
    pub version: String,
    /// The identity directory's files (trust domain, anchors, issuer, token
    /// key; never the anchor's key), stored as the control plane's Secret.
    pub identity: BTreeMap<String, String>,
    /// The trust anchors (PEM): the webhook's `caBundle`.
    pub anchors_pem: String,
    /// The webhook's `failurePolicy`: `Ignore` (a pod created while the
    /// control plane is down starts without a proxy, and strict servers
    /// refuse it) or `Fail` (no pod starts in injected namespaces then).
    pub failure_policy: FailurePolicy,
    /// Control plane replicas.
    pub replicas: i32,
}

/// The webhook's `failurePolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Admit the pod unchanged when the injector cannot be reached.
    Ignore,
    /// Refuse the pod when the injector cannot be reached.
    Fail,
}

impl FailurePolicy {
    /// As Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Ignore => "Ignore",
            FailurePolicy::Fail => "Fail",
        }
    }
}
