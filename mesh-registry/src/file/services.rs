//! The `services` section: names, ports, endpoints and virtual addresses.

use super::check::Checker;
use super::text::{MAX_LABEL_LEN, dns_label_error, quote, to_u32};
use super::traffic::RawTrafficPolicy;
use crate::model::{Endpoint, Protocol, Service, ServiceKey, ServicePort};
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

/// Namespace of objects that name none.
pub(super) const DEFAULT_NAMESPACE: &str = "default";
/// Endpoint weight when the file gives none.
const DEFAULT_WEIGHT: u32 = 100;
/// Largest endpoint (and backend) weight.
pub(super) const MAX_WEIGHT: u32 = 1_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawService {
    name: Spanned<String>,
    #[serde(default)]
    namespace: Option<Spanned<String>>,
    #[serde(default)]
    service_account: Option<Spanned<String>>,
    #[serde(default)]
    addresses: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    ports: Option<Spanned<Vec<Spanned<RawPort>>>>,
    #[serde(default)]
    endpoints: Option<Vec<Spanned<RawEndpoint>>>,
    #[serde(default)]
    traffic_policy: Option<Spanned<RawTrafficPolicy>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPort {
    // Wider than u16 so that an out-of-range port is a precise problem of ours.
    port: Spanned<i64>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    target_port: Option<Spanned<i64>>,
    #[serde(default)]
    protocol: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawEndpoint {
    #[serde(default)]
    address: Option<Spanned<String>>,
    #[serde(default)]
    ip: Option<Spanned<String>>,
    #[serde(default)]
    weight: Option<Spanned<i64>>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

impl Checker {
    pub(super) fn service(&mut self, raw: Spanned<RawService>) {
        let at = raw.referenced;
        let raw = raw.value;
        self.dns_label("service name", &raw.name);
        let namespace = match &raw.namespace {
            Some(ns) => {
                self.dns_label("namespace", ns);
                ns.value.clone()
            }
            None => DEFAULT_NAMESPACE.to_string(),
        };
        let service_account = match &raw.service_account {
            Some(sa) => {
                self.dns_label("serviceAccount", sa);
                sa.value.clone()
            }
            None => raw.name.value.clone(),
        };

        let key = ServiceKey::new(namespace, raw.name.value.clone());
        let line = to_u32(raw.name.referenced.line());
        let duplicate = match self.service_lines.get(&key) {
            Some(first) => {
                let message = format!(
                    "duplicate service {} in namespace {} (first defined on line {first}): \
                     give each service a unique name within its namespace",
                    quote(&key.name),
                    quote(&key.namespace)
                );
                self.problem(&raw.name.referenced, message);
                true
            }
            None => {
                self.service_lines.insert(key.clone(), line);
                false
            }
        };

        let addresses = self.addresses(raw.addresses.unwrap_or_default());
        let (ports, port_entries) = self.ports(&at, &key, raw.ports);
        if !duplicate {
            // A duplicate is already an error; its claims would only repeat it.
            self.claim_vips(&key, &addresses, &ports);
        }
        let endpoints = self.endpoints(raw.endpoints.unwrap_or_default(), &ports, port_entries);
        let traffic_policy = raw.traffic_policy.map(|tp| self.traffic_policy(&key, tp));
        self.services.push(Service {
            key,
            addresses: addresses.into_iter().map(|(ip, _)| ip).collect(),
            ports,
            service_account,
            endpoints,
            traffic_policy,
        });
    }

    pub(super) fn dns_label(&mut self, what: &str, value: &Spanned<String>) {
        if let Some(why) = dns_label_error(&value.value) {
            let message = format!(
                "invalid {what} {}: {why}; use a DNS label: lowercase letters, digits and '-', \
                 starting and ending with a letter or digit, at most {MAX_LABEL_LEN} characters",
                quote(&value.value)
            );
            self.problem(&value.referenced, message);
        }
    }

    /// Valid, distinct virtual IPs with where each was written.
    fn addresses(&mut self, raw: Vec<Spanned<String>>) -> Vec<(IpAddr, Location)> {
        let mut out: Vec<(IpAddr, Location)> = Vec::new();
        for addr in raw {
            match addr.value.trim().parse::<IpAddr>() {
                Ok(ip) => match out.iter().find(|(seen, _)| *seen == ip) {
                    Some((_, first)) => {
                        let message = format!(
                            "duplicate virtual address {ip} (first listed on line {}): \
                             list each address once",
                            first.line()
                        );
                        self.problem(&addr.referenced, message);
                    }
                    None => out.push((ip, addr.referenced)),
                },
                Err(err) => {
                    let message = format!(
                        "virtual address {} is not an IP address: {err}; write a bare IP \
                         such as 10.96.0.10 (ports come from \"ports\")",
                        quote(&addr.value)
                    );
                    self.problem(&addr.referenced, message);
                }
            }
        }
        out
    }

    /// Valid ports, and how many port entries the file lists.
    fn ports(
        &mut self,
        service_at: &Location,
        key: &ServiceKey,
        raw: Option<Spanned<Vec<Spanned<RawPort>>>>,
    ) -> (Vec<ServicePort>, usize) {
        let no_ports =
            format!("service {} has no ports: list at least one under \"ports\" (- port: 8080)", quote(&key.name));
        let Some(raw) = raw else {
            self.problem(service_at, no_ports);
            return (Vec::new(), 0);
        };
        if raw.value.is_empty() {
            self.problem(&raw.referenced, no_ports);
            return (Vec::new(), 0);
        }
        let entries = raw.value.len();
        let mut ports: Vec<ServicePort> = Vec::new();
        let mut lines: HashMap<u16, u32> = HashMap::new();
        for entry in raw.value {
            let entry = entry.value;
            let port = self.port_number("port", &entry.port);
            let target_port = match &entry.target_port {
                Some(target) => self.port_number("targetPort", target),
                None => port,
            };
            let protocol = match &entry.protocol {
                Some(p) => self.protocol(p),
                None => Some(Protocol::Detect),
            };
            let Some(port) = port else { continue };
            if let Some(first) = lines.get(&port) {
                let message = format!("duplicate port {port} (first defined on line {first}): list each port once");
                self.problem(&entry.port.referenced, message);
                continue;
            }
            lines.insert(port, to_u32(entry.port.referenced.line()));
            if let (Some(target_port), Some(protocol)) = (target_port, protocol) {
                ports.push(ServicePort { port, name: entry.name, target_port, protocol });
            }
        }
        (ports, entries)
    }

    fn port_number(&mut self, field: &str, value: &Spanned<i64>) -> Option<u16> {
        match u16::try_from(value.value) {
            Ok(port) if port != 0 => Some(port),
            _ => {
                let message = format!("{field} {} is out of range: use 1-65535", value.value);
                self.problem(&value.referenced, message);
                None
            }
        }
    }

    fn protocol(&mut self, value: &Spanned<String>) -> Option<Protocol> {
        match value.value.as_str() {
            "detect" => Some(Protocol::Detect),
            "http" | "http1" => Some(Protocol::Http1),
            "http2" | "grpc" => Some(Protocol::Http2),
            "opaque" | "tcp" => Some(Protocol::Opaque),
            other => {
                let message =
                    format!("unknown protocol {}: use detect, http, http1, http2, grpc, opaque or tcp", quote(other));
                self.problem(&value.referenced, message);
                None
            }
        }
    }

    /// Claims each `vip:port` of a service, reporting those another service
    /// already holds.
    fn claim_vips(&mut self, key: &ServiceKey, addresses: &[(IpAddr, Location)], ports: &[ServicePort]) {
        for (ip, at) in addresses {
            for port in ports {
                let vip = SocketAddr::new(*ip, port.port);
                match self.vips.get(&vip) {
                    Some((owner, line)) => {
                        let message = format!(
                            "virtual address {vip} is already claimed by service {} in \
                             namespace {} (line {line}): give each service its own address or port",
                            quote(&owner.name),
                            quote(&owner.namespace)
                        );
                        self.problem(at, message);
                    }
                    None => {
                        self.vips.insert(vip, (key.clone(), to_u32(at.line())));
                    }
                }
            }
        }
    }

    fn endpoints(
        &mut self,
        raw: Vec<Spanned<RawEndpoint>>,
        ports: &[ServicePort],
        port_entries: usize,
    ) -> Vec<Endpoint> {
        let mut endpoints = Vec::new();
        // Every address an endpoint is reached at, and the line listing it.
        let mut seen: HashMap<SocketAddr, u32> = HashMap::new();
        for entry in raw {
            let at = entry.referenced;
            let entry = entry.value;
            let (target, written_at) = match (&entry.address, &entry.ip) {
                (Some(_), Some(_)) => {
                    self.problem(
                        &at,
                        "endpoint has both \"address\" and \"ip\": keep one (\"address\" for \
                         ip:port, \"ip\" to use each port's targetPort)"
                            .to_string(),
                    );
                    (None, at)
                }
                (None, None) => {
                    self.problem(
                        &at,
                        "endpoint has neither \"address\" nor \"ip\": add one (address: \
                         10.0.0.5:8080, or ip: 10.0.0.5)"
                            .to_string(),
                    );
                    (None, at)
                }
                (Some(address), None) => (self.endpoint_address(address, port_entries), address.referenced),
                (None, Some(ip)) => (self.endpoint_ip(ip), ip.referenced),
            };
            let weight = match &entry.weight {
                Some(w) => self.weight(w),
                None => Some(DEFAULT_WEIGHT),
            };
            let (Some((ip, port)), Some(weight)) = (target, weight) else { continue };
            let endpoint = Endpoint { ip, port, weight, labels: entry.labels.unwrap_or_default() };

            let reached_at: Vec<SocketAddr> = match port {
                Some(port) => vec![SocketAddr::new(ip, port)],
                // Port 0 stands for "this IP" while the ports are unusable.
                None if ports.is_empty() => vec![SocketAddr::new(ip, 0)],
                None => ports.iter().map(|p| endpoint.addr_for(p)).collect(),
            };
            let clash = reached_at.iter().find_map(|a| seen.get(a).map(|line| (*a, *line)));
            if let Some((addr, first)) = clash {
                let shown = if addr.port() == 0 { addr.ip().to_string() } else { addr.to_string() };
                let message = format!(
                    "duplicate endpoint address {shown} (first listed on line {first}): \
                     list each replica once"
                );
                self.problem(&written_at, message);
                continue;
            }
            let line = to_u32(written_at.line());
            for addr in reached_at {
                seen.entry(addr).or_insert(line);
            }
            endpoints.push(endpoint);
        }
        endpoints
    }

    fn endpoint_address(&mut self, address: &Spanned<String>, port_entries: usize) -> Option<(IpAddr, Option<u16>)> {
        let text = address.value.trim();
        let addr = match text.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                let message = format!(
                    "endpoint address {} does not parse as ip:port: {}",
                    quote(&address.value),
                    explain_socket_addr(text)
                );
                self.problem(&address.referenced, message);
                return None;
            }
        };
        if addr.port() == 0 {
            let message = format!("endpoint address {} has port 0: use 1-65535", quote(&address.value));
            self.problem(&address.referenced, message);
            return None;
        }
        if port_entries > 1 {
            let message = format!(
                "endpoint address {} gives a port, which only fits a service with exactly one \
                 port, and this one has {port_entries}: write ip: {} instead so each port's \
                 targetPort applies",
                quote(&address.value),
                addr.ip()
            );
            self.problem(&address.referenced, message);
            return None;
        }
        Some((addr.ip(), Some(addr.port())))
    }

    fn endpoint_ip(&mut self, ip: &Spanned<String>) -> Option<(IpAddr, Option<u16>)> {
        let text = ip.value.trim();
        match text.parse::<IpAddr>() {
            Ok(parsed) => Some((parsed, None)),
            Err(err) => {
                let hint = if text.parse::<SocketAddr>().is_ok() {
                    "; it includes a port: use \"address\" for ip:port"
                } else {
                    ""
                };
                let message = format!("endpoint ip {} is not an IP address: {err}{hint}", quote(&ip.value));
                self.problem(&ip.referenced, message);
                None
            }
        }
    }

    fn weight(&mut self, weight: &Spanned<i64>) -> Option<u32> {
        match u32::try_from(weight.value) {
            Ok(w) if w <= MAX_WEIGHT => Some(w),
            _ => {
                let message =
                    format!("weight {} is out of range: use 0-{MAX_WEIGHT} (0 drains the endpoint)", weight.value);
                self.problem(&weight.referenced, message);
                None
            }
        }
    }
}

/// Why a value is not a DNS-1123 label, if it is not.
fn explain_socket_addr(text: &str) -> String {
    if unbracket(text).parse::<IpAddr>().is_ok() {
        return "it has no port: add one (10.0.0.5:8080, or [::1]:8080 for IPv6), or use \"ip\" \
                so each port's targetPort applies"
            .to_string();
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return "expected ip:port, as in 10.0.0.5:8080 or [::1]:8080".to_string();
    };
    let ip = match unbracket(host).parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => {
            return format!("{} is not an IP address (host names are not supported)", quote(host));
        }
    };
    if ip.is_ipv6() && !host.starts_with('[') {
        return "write an IPv6 address with a port in brackets, as in [::1]:4243".to_string();
    }
    if port.is_empty() {
        return "the port is missing after ':'".to_string();
    }
    if port.bytes().all(|b| b.is_ascii_digit()) {
        return format!("port {port} is out of range: use 1-65535");
    }
    format!("the port {} is not a number", quote(port))
}

/// `text` without surrounding brackets, if it has them.
fn unbracket(text: &str) -> &str {
    text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text)
}
