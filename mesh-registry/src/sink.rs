//! Where a source writes what it read: the control plane's store implements
//! [`RegistrySink`], and every source (the file today, Kubernetes next)
//! writes through it, so everything downstream is shared.

use crate::model::{RegistrySnapshot, Service, ServiceKey};
use mesh_policy::model::{AuthorizationPolicy, RoutePolicy};

/// The one way a registry source changes what the control plane serves.
pub trait RegistrySink: Send + Sync {
    /// Replaces everything (a source that reads whole snapshots, like the file).
    fn replace_all(&self, snapshot: &RegistrySnapshot);
    /// Adds or replaces one service (a source that sees objects change one by one).
    fn upsert(&self, service: Service);
    /// Removes one service.
    fn remove(&self, key: &ServiceKey);
    /// Replaces every route and authorization policy.
    fn replace_policies(&self, routes: Vec<RoutePolicy>, authorizations: Vec<AuthorizationPolicy>);
}
