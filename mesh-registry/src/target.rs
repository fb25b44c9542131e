//! What proxies ask the registry for (a target: a service port by name, or an
//! address) and what it answers (the resolution: service facts and endpoints).

use crate::model::{Protocol, ServiceKey};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// What a proxy asks to resolve.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A service port by name: `name.namespace[.svc[.<domain>]]:port`.
    Service {
        /// The service.
        key: ServiceKey,
        /// The service port.
        port: u16,
    },
    /// An address: a service's virtual IP, or one endpoint's own address.
    Addr(SocketAddr),
}

/// A target string that is neither `name[.namespace...]:port` nor `ip:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid target {target:?}: {reason} (expected name.namespace:port or ip:port)")]
pub struct InvalidTarget {
    target: String,
    reason: &'static str,
}

impl FromStr for Target {
    type Err = InvalidTarget;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| InvalidTarget { target: s.to_string(), reason };
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Target::Addr(addr));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port: u16 = port.parse().map_err(|_| bad("port is not a number in 1-65535"))?;
        if port == 0 {
            return Err(bad("port 0"));
        }
        if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
            return Err(bad("malformed IP address"));
        }
        let mut labels = host.trim_end_matches('.').split('.');
        let name = labels.next().filter(|n| !n.is_empty()).ok_or_else(|| bad("empty name"))?;
        let namespace = labels.next().unwrap_or("default");
        // Anything after the namespace must be the `svc[.<cluster domain>]` suffix.
        match labels.next() {
            None | Some("svc") => {}
            Some(_) => return Err(bad("only name.namespace.svc[.domain] names are meshed")),
        }
        Ok(Target::Service { key: ServiceKey::new(namespace, name), port })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Service { key, port } => write!(f, "{key}:{port}"),
            Target::Addr(a) => write!(f, "{a}"),
        }
    }
}

/// Service-level facts sent with a resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceMeta {
    /// The service.
    pub key: ServiceKey,
    /// The service port the target resolved to.
    pub port: u16,
    /// Its protocol hint.
    pub protocol: Protocol,
}

/// One endpoint as proxies see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedEndpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Relative share of traffic.
    pub weight: u32,
    /// The identity its proxy presents, when known.
    pub identity: Option<String>,
    /// Labels for metrics.
    pub labels: BTreeMap<String, String>,
}

/// The answer for one target at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolution {
    /// The service this target names, or `None` when it is not known.
    pub service: Option<ServiceMeta>,
    /// Endpoints by address.
    pub endpoints: BTreeMap<SocketAddr, ResolvedEndpoint>,
}

/// How endpoint identities are named: `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityNaming {
    /// The mesh's trust domain, for example `cluster.local`.
    pub trust_domain: String,
}

impl IdentityNaming {
    /// The SPIFFE ID of a workload.
    pub fn spiffe_id(&self, namespace: &str, service_account: &str) -> String {
        format!("spiffe://{}/ns/{}/sa/{}", self.trust_domain, namespace, service_account)
    }
}
