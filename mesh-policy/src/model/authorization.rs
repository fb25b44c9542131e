//! Inbound authorization policies: which clients may reach a service's
//! workloads, on which ports, and for HTTP which requests.

use super::ServiceKey;
use super::matches::RequestMatch;
use crate::cidr::Cidr;

/// Who may talk to a service's workloads (on one port or all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    /// The policy's name, unique in its namespace.
    pub name: String,
    /// The policy's namespace (the service's).
    pub namespace: String,
    /// The service whose workloads (service account) and ports are selected.
    pub service: ServiceKey,
    /// One service port; all when `None`.
    pub port: Option<u16>,
    /// What happens to clients no rule allows.
    pub default: DefaultAction,
    /// Refuse plaintext clients.
    pub require_mtls: bool,
    /// Each allows some clients (and, for HTTP, some requests).
    pub rules: Vec<AuthorizationRule>,
}

/// The fate of clients no rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultAction {
    /// Refuse them.
    #[default]
    Deny,
    /// Allow them.
    Allow,
    /// Allow any authenticated mesh client.
    Authenticated,
}

/// One allow rule: any of its client conditions, and one of its HTTP matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationRule {
    /// Unique within the policy.
    pub name: String,
    /// Exact SPIFFE IDs.
    pub identities: Vec<String>,
    /// Service accounts, expanded to SPIFFE IDs with the mesh's trust domain.
    pub service_accounts: Vec<ServiceAccountRef>,
    /// Namespaces whose every identity is allowed.
    pub namespaces: Vec<String>,
    /// Unauthenticated client networks.
    pub networks: Vec<Cidr>,
    /// HTTP requests covered; empty means all.
    pub http: Vec<RequestMatch>,
}

/// A service account by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceAccountRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}
