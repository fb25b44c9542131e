//! The `services` section: services, their ports and endpoints, and the
//! traffic policy their clients apply.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// One service (`services[]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Service {
    /// `name`: a DNS label.
    pub name: String,
    /// `namespace` (the file's default: `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `serviceAccount` its workloads run as (default: the service's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// `addresses`: virtual IPs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
    /// `ports`: at least one.
    #[serde(default)]
    pub ports: Vec<Port>,
    /// `endpoints`: its replicas (written even when empty).
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// `trafficPolicy`: what its clients apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

impl Service {
    /// A service with this name and nothing else yet.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), ..Self::default() }
    }
}

/// One port of a service (`ports[]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Port {
    /// `port`: the service port.
    pub port: u16,
    /// `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `targetPort`: where the workloads listen (default: `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
    /// `protocol`: `detect` (default), `http`, `http1`, `http2`, `grpc`, `opaque` or `tcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

impl Port {
    /// A port with the file's defaults for everything else.
    pub fn new(port: u16) -> Self {
        Self { port, ..Self::default() }
    }
}

/// One endpoint (`endpoints[]`): give `address` or `ip`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Endpoint {
    /// `address`: `ip:port`, for single-port services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<SocketAddr>,
    /// `ip`: each port's `targetPort` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// `weight`: 0..=1000000 (default 100; 0 drains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// `labels`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Endpoint {
    /// An endpoint at `ip:port`.
    pub fn address(addr: SocketAddr) -> Self {
        Self { address: Some(addr), ..Self::default() }
    }

    /// An endpoint at `ip` (on each port's `targetPort`).
    pub fn ip(ip: IpAddr) -> Self {
        Self { ip: Some(ip), ..Self::default() }
    }

    /// With a label added.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
}

/// `trafficPolicy`: circuit breaking, limits and the retry budget.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// `circuitBreaker`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// `limits`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// `retryBudget`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

/// `circuitBreaker`: ejecting endpoints after consecutive failures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// `consecutiveFailures` before an ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// `baseEjection`, e.g. `"10s"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection: Option<String>,
    /// `maxEjection`, e.g. `"5m"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection: Option<String>,
}

/// `limits`: concurrency caps (0: no limit).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    /// `maxConcurrentRequests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<u32>,
    /// `maxPendingRequests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// `maxConnectionsPerEndpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_endpoint: Option<u32>,
}

/// `retryBudget`: how many retries a target's clients may add.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryBudget {
    /// `ratio` of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// `minPerSecond`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_per_second: Option<u32>,
    /// `ttl`: the window, e.g. `"10s"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}
