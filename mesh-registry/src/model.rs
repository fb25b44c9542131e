//! The registry's data model: what every registry (file, Kubernetes) produces
//! and what the discovery and policy APIs serve from. The policy half is
//! `mesh-policy`'s model, re-exported here whole.

pub use mesh_policy::model::*;

use std::collections::{BTreeMap, BTreeSet};

use std::net::{IpAddr, SocketAddr};

/// How the proxy should treat a port's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// Sniff the first bytes (HTTP/1, HTTP/2, otherwise TCP).
    #[default]
    Detect,
    /// HTTP/1.x.
    Http1,
    /// HTTP/2, including gRPC.
    Http2,
    /// Opaque TCP: never sniffed, for server-first protocols.
    Opaque,
}

/// One port a service exposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The port clients address (on the service's virtual IPs, or by name).
    pub port: u16,
    /// Optional port name.
    pub name: Option<String>,
    /// The port endpoints listen on (for endpoints given by IP only).
    pub target_port: u16,
    /// Protocol hint for proxies.
    pub protocol: Protocol,
}

/// One replica (instance) of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The endpoint's IP.
    pub ip: IpAddr,
    /// An explicit port: only for single-port services, where each replica
    /// may listen elsewhere (several replicas on one host in universal mode).
    pub port: Option<u16>,
    /// Relative share of traffic.
    pub weight: u32,
    /// Free-form labels (replica name, zone, version).
    pub labels: BTreeMap<String, String>,
}

impl Endpoint {
    /// The endpoint's socket address for a service port.
    pub fn addr_for(&self, port: &ServicePort) -> SocketAddr {
        SocketAddr::new(self.ip, self.port.unwrap_or(port.target_port))
    }
}

/// A service and its endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Name and namespace.
    pub key: ServiceKey,
    /// Virtual IPs the service answers on (transparent interception maps a
    /// connection to `vip:port` onto this service).
    pub addresses: Vec<IpAddr>,
    /// Ports, by service port number.
    pub ports: Vec<ServicePort>,
    /// The identity its workloads run as (Kubernetes ServiceAccount).
    pub service_account: String,
    /// Replicas.
    pub endpoints: Vec<Endpoint>,
    /// Resilience settings for clients of this service; defaults when `None`.
    pub traffic_policy: Option<TrafficPolicy>,
}

impl Service {
    /// The service port numbered `port`, if any.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// The ports the workloads' app listens on for a service port: its
    /// `targetPort`, and for a single-port service also the explicit port of
    /// every endpoint given as `ip:port` (replicas sharing a host in universal
    /// mode each listen elsewhere).
    pub fn workload_ports(&self, port: &ServicePort) -> BTreeSet<u16> {
        let mut ports = BTreeSet::from([port.target_port]);
        if self.ports.len() == 1 {
            ports.extend(self.endpoints.iter().filter_map(|e| e.port));
        }
        ports
    }
}

/// Everything a registry knows at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistrySnapshot {
    /// All services, unique by key.
    pub services: Vec<Service>,
    /// Outbound route policies, at most one per service port.
    pub routes: Vec<RoutePolicy>,
    /// Inbound authorization policies, at most one per workload port.
    pub authorizations: Vec<AuthorizationPolicy>,
}

impl RegistrySnapshot {
    /// Number of endpoints across services.
    pub fn endpoint_count(&self) -> usize {
        self.services.iter().map(|s| s.endpoints.len()).sum()
    }
}
