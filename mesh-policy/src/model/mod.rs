//! The policy half of the registry's data model: outbound routes and traffic
//! policies, inbound authorizations. Registries (the YAML file, Kubernetes)
//! produce these values already validated; the control plane translates them
//! into the Policy API, whose compiled form ([`crate::matcher`],
//! [`crate::outbound`], [`crate::inbound`]) the proxies evaluate.
//!
//! Matching semantics are written once, in [`crate::rules`]: exact paths
//! compare whole paths, prefixes match on segment boundaries (`/api` matches
//! `/api` and `/api/x`, not `/apix`), regexes are anchored (they must match
//! the whole path or value), header names are case-insensitive, methods are
//! case-sensitive, hosts are compared lowercased and without a port.

mod authorization;
mod matches;
mod route;
mod traffic;

pub use authorization::{AuthorizationPolicy, AuthorizationRule, DefaultAction, ServiceAccountRef};
pub use matches::{GrpcMatch, HeaderMatch, PathMatch, RequestMatch, ValueMatch};
pub use route::{Abort, AbortStatus, Backend, Delay, Fault, RateLimit, Retry, RoutePolicy, RouteRule};
pub use traffic::{
    CircuitBreaker, DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX, DEFAULT_BUFFER_LIMIT, DEFAULT_RETRY_ATTEMPTS,
    DEFAULT_RETRY_ON, Limits, RETRY_CONDITIONS, RetryBudget, TrafficPolicy,
};

use std::fmt;

/// A service's name within its namespace: how policies name the service they
/// route or protect, and their backends.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Namespace (`default` when a registry has no namespaces).
    pub namespace: String,
    /// Service name, a DNS label.
    pub name: String,
}

impl ServiceKey {
    /// A key from namespace and name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}
