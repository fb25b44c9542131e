//! Semantic checks: the [`Checker`] builds the snapshot while collecting
//! every problem; each section of the file adds its own methods to it.

use super::services::DEFAULT_NAMESPACE;
use super::text::{MAX_LABEL_LEN, dns_label_error, escape_controls, quote, to_u32};
use super::{Problem, RawFile};
use crate::model::{RegistrySnapshot, Service, ServiceKey};
use mesh_policy::model::{AuthorizationPolicy, RoutePolicy};
use serde_saphyr::{Location, Spanned};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;

/// Builds the snapshot while collecting every problem.
#[derive(Default)]
pub(super) struct Checker {
    pub(super) problems: Vec<Problem>,
    pub(super) services: Vec<Service>,
    /// Line where each service was first defined.
    pub(super) service_lines: HashMap<ServiceKey, u32>,
    /// Virtual `ip:port`s claimed so far: the claiming service and the line.
    pub(super) vips: HashMap<SocketAddr, (ServiceKey, u32)>,
    pub(super) routes: Vec<RoutePolicy>,
    /// Line where each route policy (namespace, name) was first defined.
    pub(super) route_lines: HashMap<(String, String), u32>,
    /// Service ports routed so far (`None`: every port): the policy and its line.
    pub(super) routed: Vec<(ServiceKey, Option<u16>, String, u32)>,
    pub(super) authorizations: Vec<AuthorizationPolicy>,
    /// Line where each authorization policy (namespace, name) was first defined.
    pub(super) authorization_lines: HashMap<(String, String), u32>,
    /// Workload ports (namespace, service account, port) selected so far: the
    /// policy and its line.
    pub(super) authorized: HashMap<(String, String, u16), (String, u32)>,
}

impl Checker {
    /// Checks a whole file: services first, since policies refer to them.
    pub(super) fn check(raw: RawFile) -> Result<RegistrySnapshot, Vec<Problem>> {
        let mut checker = Checker::default();
        for service in raw.services.unwrap_or_default() {
            checker.service(service);
        }
        for route in raw.routes.unwrap_or_default() {
            checker.route_policy(route);
        }
        for authorization in raw.authorizations.unwrap_or_default() {
            checker.authorization(authorization);
        }
        checker.finish()
    }

    pub(super) fn problem(&mut self, at: &Location, message: String) {
        let message = escape_controls(&message);
        let at = crate::problem::Location::Text { line: to_u32(at.line()), column: to_u32(at.column()) };
        self.problems.push(Problem { at, message });
    }

    /// A problem with a field of a named object: `<object> <field>: <message>`
    /// (`<object>: <message>` when `field` is empty).
    pub(super) fn fail(&mut self, at: &Location, object: &str, field: &str, message: impl fmt::Display) {
        let message =
            if field.is_empty() { format!("{object}: {message}") } else { format!("{object} {field}: {message}") };
        self.problem(at, message);
    }

    /// Checks that a policy's name (or namespace) is a DNS label.
    pub(super) fn policy_label(&mut self, object: &str, field: &str, value: &Spanned<String>) {
        if let Some(why) = dns_label_error(&value.value) {
            let message = format!(
                "{} is not a valid name: {why}; use a DNS label: lowercase letters, digits and '-', starting and \
                 ending with a letter or digit, at most {MAX_LABEL_LEN} characters",
                quote(&value.value)
            );
            self.fail(&value.referenced, object, field, message);
        }
    }

    /// The service defined (first) under `key`.
    pub(super) fn find_service(&self, key: &ServiceKey) -> Option<&Service> {
        self.services.iter().find(|s| &s.key == key)
    }

    /// Checks what every policy has: a name unique in its namespace, the
    /// service it is about, and optionally one of that service's ports.
    pub(super) fn policy_head(&mut self, kind: PolicyKind, raw: RawHead<'_>) -> PolicyHead {
        let what = match kind {
            PolicyKind::Route => "route",
            PolicyKind::Authorization => "authorization",
        };
        let object = format!("{what} {}", quote(&raw.name.value));
        self.policy_label(&object, "name", raw.name);
        let namespace = match raw.namespace {
            Some(ns) => {
                self.policy_label(&object, "namespace", ns);
                ns.value.clone()
            }
            None => DEFAULT_NAMESPACE.to_string(),
        };
        let line = to_u32(raw.name.referenced.line());
        let lines = match kind {
            PolicyKind::Route => &mut self.route_lines,
            PolicyKind::Authorization => &mut self.authorization_lines,
        };
        let id = (namespace.clone(), raw.name.value.clone());
        if let Some(first) = lines.get(&id) {
            let message = format!(
                "duplicate {what} {} in namespace {} (first defined on line {first}): give each a unique name",
                quote(&id.1),
                quote(&id.0)
            );
            self.problem(&raw.name.referenced, message);
        } else {
            lines.insert(id, line);
        }

        let key = ServiceKey::new(namespace.clone(), raw.service.value.clone());
        let service = self.find_service(&key).cloned();
        if service.is_none() {
            let message = format!("unknown service {} in namespace {}", quote(&key.name), quote(&key.namespace));
            self.fail(&raw.service.referenced, &object, "service", message);
        }
        let port = raw.port.and_then(|p| self.policy_port(&object, "port", p));
        let ports = match (&service, port) {
            (None, _) => Vec::new(),
            (Some(svc), None) => svc.ports.iter().map(|p| p.port).collect(),
            (Some(svc), Some(port)) if svc.port(port).is_some() => vec![port],
            (Some(svc), Some(port)) => {
                let message = format!("service {} has no port {port}{}", quote(&key.name), list_ports(svc));
                if let Some(at) = raw.port {
                    self.fail(&at.referenced, &object, "port", message);
                }
                Vec::new()
            }
        };
        PolicyHead { name: raw.name.value.clone(), namespace, object, key, service, port, ports, line }
    }

    /// A port number in a policy.
    pub(super) fn policy_port(&mut self, object: &str, field: &str, value: &Spanned<i64>) -> Option<u16> {
        match u16::try_from(value.value) {
            Ok(port) if port != 0 => Some(port),
            _ => {
                self.fail(&value.referenced, object, field, format!("{} is out of range: use 1-65535", value.value));
                None
            }
        }
    }

    fn finish(mut self) -> Result<RegistrySnapshot, Vec<Problem>> {
        if self.problems.is_empty() {
            return Ok(RegistrySnapshot {
                services: self.services,
                routes: self.routes,
                authorizations: self.authorizations,
            });
        }
        self.problems.sort_by_key(|p| p.at.text_position());
        Err(self.problems)
    }
}

/// The kinds of policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PolicyKind {
    Route,
    Authorization,
}

/// A policy's common fields, as written.
pub(super) struct RawHead<'a> {
    pub(super) name: &'a Spanned<String>,
    pub(super) namespace: Option<&'a Spanned<String>>,
    pub(super) service: &'a Spanned<String>,
    pub(super) port: Option<&'a Spanned<i64>>,
}

/// A policy's common fields, checked.
pub(super) struct PolicyHead {
    pub(super) name: String,
    pub(super) namespace: String,
    /// `route "name"` or `authorization "name"`, for messages.
    pub(super) object: String,
    pub(super) key: ServiceKey,
    /// The service, when it is known.
    pub(super) service: Option<Service>,
    pub(super) port: Option<u16>,
    /// The service ports selected (empty when the service or port is unknown).
    pub(super) ports: Vec<u16>,
    /// The line of the policy's name.
    pub(super) line: u32,
}

/// ` (it has 7001, 7002)`: the ports of a service, for messages.
pub(super) fn list_ports(service: &Service) -> String {
    let ports: Vec<String> = service.ports.iter().map(|p| p.port.to_string()).collect();
    match ports.len() {
        0 => String::new(),
        _ => format!(" (it has {})", ports.join(", ")),
    }
}
