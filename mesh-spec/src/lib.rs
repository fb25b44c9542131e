//! The registry file format (universal mode) as plain serde types, and
//! [`to_yaml`] to write one.
//!
//! This is the one place programs build registry files from typed values:
//! `meshctl demo`, the test harnesses and the bench. Field names are the
//! file's own (camelCase); optional fields left `None` (and empty optional
//! lists) are not written, so the parser's defaults apply. Values are not
//! validated here: the control plane's parser
//! (`mesh_control::registry::file::parse`) is the judge, and a round-trip
//! test in mesh-control keeps the two in step.
//!
//! ```
//! use mesh_spec::{Endpoint, Port, RegistryFile, Service, to_yaml};
//!
//! let file = RegistryFile {
//!     services: vec![Service {
//!         ports: vec![Port { protocol: Some("http".into()), ..Port::new(7001) }],
//!         endpoints: vec![Endpoint::address("127.0.0.1:4243".parse().unwrap())],
//!         ..Service::new("books")
//!     }],
//!     ..RegistryFile::default()
//! };
//! let yaml = to_yaml(&file);
//! assert!(yaml.contains("name: books"), "{yaml}");
//! ```
//!
//! Durations are written as the file writes them, e.g. `"250ms"`, `"10s"`,
//! `"5m"`; protocols, default actions and retry conditions as their names.

mod policy;
mod services;
pub mod synthetic;

pub use policy::{
    Abort, Authorization, AuthorizationRule, Backend, Backoff, Delay, Faults, GrpcMatch, HeaderMatch, Match, PathMatch,
    RateLimit, Retry, RoutePolicy, RouteRule,
};
pub use services::{CircuitBreaker, Endpoint, Limits, Port, RetryBudget, Service, TrafficPolicy};

use serde::{Deserialize, Serialize};

/// A whole registry file: services, outbound routes, inbound authorizations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistryFile {
    /// `services`: the services, their ports and endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// `routes`: outbound route policies, at most one per service port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RoutePolicy>,
    /// `authorizations`: inbound authorization policies, at most one per workload port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorizations: Vec<Authorization>,
}

/// The file's YAML text.
pub fn to_yaml(file: &RegistryFile) -> String {
    match serde_saphyr::to_string(file) {
        Ok(text) => text,
        // Every type here is a tree of structs, strings, numbers and lists
        // with string keys, which YAML always represents.
        Err(e) => unreachable!("a registry file always serialises: {e}"),
    }
}

/// Parses a file's YAML text into these types (no validation beyond the
/// shape: unknown fields are refused).
pub fn from_yaml(text: &str) -> Result<RegistryFile, serde_saphyr::Error> {
    serde_saphyr::from_str(text)
}

#[cfg(test)]
mod tests;
