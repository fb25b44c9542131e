//! `mesh-kube`: the mesh on Kubernetes. The only crate that depends on
//! `kube` and `k8s-openapi`; everything else reaches Kubernetes through it.
//!
//! - [`client`]: a client from `--kubeconfig`/`--context`, `$KUBECONFIG` or
//!   the pod's service account, with errors that say what to do;
//! - [`crd`]: the mesh's resources (`AuthorizationPolicy`, `TrafficPolicy`
//!   in `policy.mesh.dev/v1alpha1`) as typed custom resources;
//! - [`crds`]: their CRDs rendered from the types (committed under
//!   `deploy/crds/`, checked by a test), applied and awaited;
//! - [`gateway`]: the Gateway API routes (HTTPRoute, GRPCRoute) the mesh reads;
//! - [`identity`]: workload identity from projected ServiceAccount tokens
//!   (TokenReview, bound to a live pod);
//! - [`rbac`]: the one table of what the control plane calls, and the
//!   ClusterRole rendered from it (`deploy/rbac/`);
//! - [`lease`]: leader election on a Lease, so one control-plane replica
//!   writes status and Events;
//! - [`api`]: the kube and k8s-openapi items other crates (tests, meshctl)
//!   need, re-exported so they never depend on those crates directly.

pub mod check;
pub mod client;
pub mod crd;
pub mod crds;
pub mod error;
pub mod gateway;
pub mod identity;
pub mod inject;
pub mod install;
pub mod lease;
pub mod rbac;
pub mod registry;

pub use error::KubeError;

/// Re-exports for crates that talk to Kubernetes through this one.
pub mod api {
    pub use k8s_openapi;
    pub use kube;
    pub use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
    pub use kube::{Client, Error as ClientError, core::Status};
}
