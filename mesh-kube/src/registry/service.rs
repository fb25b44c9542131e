//! Services and their EndpointSlices to the registry model, as pure
//! functions of the objects (unit-tested on objects built in code).
//!
//! - addresses: `spec.clusterIPs` (none for headless Services);
//! - ports: TCP ports only; a named `targetPort` is resolved through the
//!   EndpointSlices' port of the same name; `appProtocol` gives the
//!   protocol hint (`http` → HTTP/1, `kubernetes.io/h2c`/`http2`/`grpc` →
//!   HTTP/2, `mesh.dev/opaque`/`opaque` → opaque, otherwise detect);
//! - endpoints: ready ones at weight [`WEIGHT`]; serving-but-terminating
//!   ones at weight 0 (they drain: kept for in-flight work, given no new
//!   requests); others left out; one endpoint per address across slices;
//! - identity: the annotation [`SERVICE_ACCOUNT_ANNOTATION`]; otherwise the
//!   ServiceAccount its endpoints' Pods run as (one for all of them: Pods
//!   running as several are a problem, since clients verify one identity);
//!   otherwise (no Pod known yet) the Service's name, as in the file registry.

use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_registry::model::{Endpoint, Protocol, Service, ServiceKey, ServicePort};
use mesh_registry::problem::{Location, Problem};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The annotation naming the ServiceAccount a Service's workloads run as.
pub const SERVICE_ACCOUNT_ANNOTATION: &str = "policy.mesh.dev/service-account";
/// The label EndpointSlices name their Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The weight of a ready endpoint (the file registry's default).
pub const WEIGHT: u32 = 100;

/// The registry's Service for a Kubernetes Service and the EndpointSlices
/// labelled with its name, or every problem found (each located in the object).
/// Without Pods known, the identity is the annotation or the Service's name:
/// see [`service_with_accounts`].
pub fn service_from(service: &KubeService, slices: &[EndpointSlice]) -> Result<Service, Vec<Problem>> {
    service_with_accounts(service, slices, &BTreeMap::new())
}

/// [`service_from`], knowing the ServiceAccount of Pods (by name, in the
/// Service's namespace) its endpoints refer to.
pub fn service_with_accounts(
    service: &KubeService,
    slices: &[EndpointSlice],
    pod_accounts: &BTreeMap<String, String>,
) -> Result<Service, Vec<Problem>> {
    let namespace = service.metadata.namespace.clone().unwrap_or_default();
    let name = service.metadata.name.clone().unwrap_or_default();
    let mut problems = Vec::new();
    let problem = |field: String, message: String| Problem {
        at: Location::Object { kind: "Service".into(), namespace: namespace.clone(), name: name.clone(), field },
        message,
    };
    let spec = service.spec.clone().unwrap_or_default();

    let mut addresses = Vec::new();
    let ips = spec.cluster_ips.clone().or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip])).unwrap_or_default();
    for (i, ip) in ips.iter().enumerate().filter(|(_, ip)| ip.as_str() != "None" && !ip.is_empty()) {
        match ip.parse::<IpAddr>() {
            Ok(ip) => addresses.push(ip),
            Err(_) => problems.push(problem(format!("spec.clusterIPs[{i}]"), format!("{ip:?} is not an IP address"))),
        }
    }

    let slice_ports = slice_ports(slices);
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
            continue; // UDP and SCTP are not proxied.
        }
        let Some(port) = u16::try_from(p.port).ok().filter(|p| *p > 0) else {
            problems.push(problem(format!("spec.ports[{i}].port"), format!("{} is not a port (1-65535)", p.port)));
            continue;
        };
        let target_port = match &p.target_port {
            None => Some(port),
            Some(IntOrString::Int(n)) => u16::try_from(*n).ok().filter(|n| *n > 0),
            // Resolved by the endpoints: each pod names its container port.
            Some(IntOrString::String(named)) => {
                p.name.as_ref().and_then(|n| slice_ports.get(n.as_str())).copied().or_else(|| named.parse().ok())
            }
        };
        let Some(target_port) = target_port else {
            // A named port no endpoint exposes yet: nothing to connect to.
            if !matches!(p.target_port, Some(IntOrString::String(_))) {
                problems.push(problem(format!("spec.ports[{i}].targetPort"), "not a port (1-65535)".into()));
            }
            continue;
        };
        ports.push(ServicePort {
            port,
            name: p.name.clone(),
            target_port,
            protocol: protocol(p.app_protocol.as_deref()),
        });
    }

    let mut endpoints: BTreeMap<IpAddr, Endpoint> = BTreeMap::new();
    let mut accounts: BTreeSet<&str> = BTreeSet::new();
    for slice in slices {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue; // FQDN slices name hosts, not addresses.
        }
        for (i, e) in slice.endpoints.iter().enumerate() {
            let conditions = e.conditions.clone().unwrap_or_default();
            let ready = conditions.ready.unwrap_or(true);
            let serving = conditions.serving.unwrap_or(ready);
            let terminating = conditions.terminating.unwrap_or(false);
            let weight = if ready && !terminating {
                WEIGHT
            } else if serving {
                0 // Draining: existing work finishes, no new requests.
            } else {
                continue;
            };
            let Some(address) = e.addresses.first() else { continue };
            let Ok(ip) = address.parse::<IpAddr>() else {
                let slice_name = slice.metadata.name.clone().unwrap_or_default();
                problems.push(Problem {
                    at: Location::Object {
                        kind: "EndpointSlice".into(),
                        namespace: namespace.clone(),
                        name: slice_name,
                        field: format!("endpoints[{i}].addresses[0]"),
                    },
                    message: format!("{address:?} is not an IP address"),
                });
                continue;
            };
            let mut labels = BTreeMap::new();
            if let Some(pod) = e.target_ref.as_ref().and_then(|r| r.name.clone()) {
                if let Some(account) = pod_accounts.get(&pod) {
                    accounts.insert(account);
                }
                labels.insert("pod".to_string(), pod);
            }
            if let Some(zone) = &e.zone {
                labels.insert("zone".to_string(), zone.clone());
            }
            let endpoint = Endpoint { ip, port: None, weight, labels };
            // Slices overlap while the controller moves endpoints: the best condition wins.
            let keep = endpoints.get(&ip).is_none_or(|old| old.weight < endpoint.weight);
            if keep {
                endpoints.insert(ip, endpoint);
            }
        }
    }

    let annotated = service.metadata.annotations.as_ref().and_then(|a| a.get(SERVICE_ACCOUNT_ANNOTATION)).cloned();
    let service_account = match (annotated, accounts.len()) {
        (Some(account), _) => account,
        (None, 0) => name.clone(),
        (None, 1) => accounts.first().map_or_else(|| name.clone(), |a| a.to_string()),
        (None, _) => {
            let list: Vec<&str> = accounts.iter().copied().collect();
            problems.push(problem(
                String::new(),
                format!(
                    "its Pods run as several ServiceAccounts ({}), but clients verify one identity per Service: \
                     split the Service, or name the one to expect with the annotation {SERVICE_ACCOUNT_ANNOTATION}",
                    list.join(", ")
                ),
            ));
            name.clone()
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Service {
        key: ServiceKey::new(namespace, name),
        addresses,
        ports,
        service_account,
        endpoints: endpoints.into_values().collect(),
        traffic_policy: None,
    })
}

/// Named ports as the endpoints expose them (first slice wins).
fn slice_ports(slices: &[EndpointSlice]) -> BTreeMap<&str, u16> {
    let mut out = BTreeMap::new();
    for p in slices.iter().flat_map(|s| s.ports.iter().flatten()) {
        if let (Some(name), Some(port)) = (p.name.as_deref(), p.port.and_then(|n| u16::try_from(n).ok())) {
            out.entry(name).or_insert(port);
        }
    }
    out
}

/// The protocol hint for a port's `appProtocol`.
pub fn protocol(app_protocol: Option<&str>) -> Protocol {
    match app_protocol.map(str::to_ascii_lowercase).as_deref() {
        Some("http" | "http1" | "kubernetes.io/http") => Protocol::Http1,
        Some("http2" | "h2c" | "grpc" | "kubernetes.io/h2c") => Protocol::Http2,
        Some("opaque" | "tcp" | "mesh.dev/opaque") => Protocol::Opaque,
        _ => Protocol::Detect,
    }
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
