//! The Policy API: outbound policy per target (routes, backends, timeouts,
//! retries, faults, rate limits, circuit breaking) and inbound policy per
//! workload port (authorizations), streamed to proxies from the store.
//!
//! Translation is pure ([`outbound`], [`inbound`] over an [`Index`]), so the
//! same answers are available offline from a registry file:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use mesh_control::policy;
//! let snapshot = mesh_control::registry::file::load("registry.yaml".as_ref())?;
//! let out = policy::outbound_policy(&snapshot, &"books.default:7001".parse()?);
//! let inb = policy::inbound_policy(&snapshot, Some("mesh.local"), "default", "books", 7001);
//! # let _ = (out, inb);
//! # Ok(())
//! # }
//! ```

mod service;
mod translate;

pub use service::{PolicyMetrics, PolicyService, PolicyStream};
pub use translate::{DEFAULT_INBOUND_NAME, duration, inbound, outbound, request_match};

use crate::registry::model::RegistrySnapshot;
use crate::store::{IdentityNaming, Index, Target};
use mesh_proto::policy::{InboundPolicy, InboundRequest, OutboundPolicy};
use std::fmt;

/// A workload port asking for its inbound policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InboundTarget {
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's service account.
    pub service_account: String,
    /// The app port.
    pub port: u16,
}

/// An inbound request that names no valid workload port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid inbound target: {0}")]
pub struct InvalidInboundTarget(String);

impl InboundTarget {
    /// A workload port.
    pub fn new(namespace: impl Into<String>, service_account: impl Into<String>, port: u16) -> Self {
        Self { namespace: namespace.into(), service_account: service_account.into(), port }
    }

    /// Validates an API request.
    pub fn from_request(req: &InboundRequest) -> Result<Self, InvalidInboundTarget> {
        let label = |what: &str, v: &str| {
            let ok = !v.is_empty()
                && v.len() <= 253
                && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
            if ok { Ok(()) } else { Err(InvalidInboundTarget(format!("{what} {v:?} is not a DNS name"))) }
        };
        label("namespace", &req.namespace)?;
        label("service account", &req.service_account)?;
        let port = u16::try_from(req.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| InvalidInboundTarget(format!("port {} is not in 1-65535", req.port)))?;
        Ok(Self::new(req.namespace.clone(), req.service_account.clone(), port))
    }
}

impl fmt::Display for InboundTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.service_account, self.port)
    }
}

/// The outbound policy for `target` in a registry snapshot (see [`outbound`]).
pub fn outbound_policy(snapshot: &RegistrySnapshot, target: &Target) -> OutboundPolicy {
    outbound(&Index::new(snapshot, None), target)
}

/// The inbound policy of a workload port in a registry snapshot (see
/// [`inbound`]); `trust_domain` expands service accounts to SPIFFE IDs
/// (`None`: the mesh runs without identity, and they are left out).
pub fn inbound_policy(
    snapshot: &RegistrySnapshot,
    trust_domain: Option<&str>,
    namespace: &str,
    service_account: &str,
    port: u16,
) -> InboundPolicy {
    let identity = trust_domain.map(|td| IdentityNaming { trust_domain: td.to_string() });
    inbound(&Index::new(snapshot, identity), &InboundTarget::new(namespace, service_account, port))
}

#[cfg(test)]
mod tests;
