//! The mesh's own resources (group `policy.mesh.dev`, version `v1alpha1`)
//! as typed custom resources. Their CRDs (`deploy/crds/`) are generated from
//! these types with schemas the API server enforces: enums, ranges,
//! patterns and CEL rules (`x-kubernetes-validations`).

pub mod authorization;
pub mod common;
pub mod status;
pub mod traffic;

pub use authorization::{AuthorizationPolicy, AuthorizationPolicySpec};
pub use status::{Condition, ConditionStatus, PolicyStatus};
pub use traffic::{TrafficPolicy, TrafficPolicySpec};

/// The API group of the mesh's resources.
pub const GROUP: &str = "policy.mesh.dev";
/// Their API version.
pub const VERSION: &str = "v1alpha1";
