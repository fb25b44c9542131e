//! From the registry's policy model to the Policy API's messages. Pure
//! functions of an [`Index`]: the gRPC service, tests and offline tools
//! (`meshctl policy explain`) all translate the same way.

use crate::index::Index;
use crate::model::RegistrySnapshot;
use crate::target::{IdentityNaming, Target};
use mesh_policy::model::{
    AbortStatus, AuthorizationPolicy, CircuitBreaker, DefaultAction, Fault, Limits, PathMatch, RateLimit, RequestMatch,
    Retry, RetryBudget, RoutePolicy, RouteRule, TrafficPolicy, ValueMatch,
};
use mesh_proto::policy as pb;
use mesh_proto::policy::InboundRequest;
use std::fmt;
use std::time::Duration;

/// Name of the inbound policy of a port no authorization policy selects.
pub const DEFAULT_INBOUND_NAME: &str = "default";

/// The outbound policy for `target` (a service port by name, a virtual
/// `ip:port`, or one endpoint's address, resolved as the Destination API
/// resolves it).
///
/// Routes come from the route policy routing that service port, one per rule
/// in order, named `<policy>/<rule>`; backends are `name.namespace:port`
/// (a backend written without a port takes the resolved port); a rule without
/// backends sends to the target itself (empty `backends`). Circuit breaker,
/// limits and retry budget come from the service's traffic policy, or the
/// defaults. An unknown target gets `exists: false`, no routes and the
/// default traffic policy.
pub fn outbound(index: &Index, target: &Target) -> pb::OutboundPolicy {
    let Some(found) = index.service_port(target) else {
        return traffic(pb::OutboundPolicy::default(), &TrafficPolicy::default());
    };
    let (svc, port) = (found.service, found.port.port);
    let routes = index
        .route_policy(&svc.key, port)
        .map(|policy| policy.rules.iter().map(|rule| route(policy, rule, port)).collect())
        .unwrap_or_default();
    let policy =
        pb::OutboundPolicy { exists: true, service: format!("{}:{port}", svc.key), routes, ..Default::default() };
    traffic(policy, &svc.traffic_policy.clone().unwrap_or_default())
}

/// The inbound policy for a workload port: from the authorization policy
/// whose service runs as `target`'s service account in `target`'s namespace
/// and whose selected service port's `targetPort` (or, for single-port
/// services, one endpoint's explicit port) is `target.port`.
///
/// Service accounts in rules become SPIFFE IDs in the index's trust domain;
/// without identity (no CA, so no client can be authenticated) they are
/// left out. No policy: `default`, allow, no authorizations.
pub fn inbound(index: &Index, target: &InboundTarget) -> pb::InboundPolicy {
    let selected = index.authorizations().find(|policy| {
        let Some(svc) = index.service(&policy.service) else { return false };
        svc.key.namespace == target.namespace
            && svc.service_account == target.service_account
            && svc
                .ports
                .iter()
                .filter(|p| policy.port.is_none_or(|only| only == p.port))
                .any(|p| svc.workload_ports(p).contains(&target.port))
    });
    match selected {
        Some(policy) => authorization_policy(policy, index.identity()),
        None => pb::InboundPolicy {
            name: DEFAULT_INBOUND_NAME.to_string(),
            default: pb::DefaultAction::Allow as i32,
            authorizations: Vec::new(),
            require_mtls: false,
        },
    }
}

fn traffic(mut policy: pb::OutboundPolicy, tp: &TrafficPolicy) -> pb::OutboundPolicy {
    let CircuitBreaker { consecutive_failures, base_ejection, max_ejection } = tp.circuit_breaker;
    policy.circuit_breaker = Some(pb::CircuitBreaker {
        consecutive_failures,
        base_ejection: Some(duration(base_ejection)),
        max_ejection: Some(duration(max_ejection)),
    });
    let Limits { max_concurrent_requests, max_pending_requests, max_connections_per_endpoint } = tp.limits;
    policy.limits = Some(pb::Limits { max_concurrent_requests, max_pending_requests, max_connections_per_endpoint });
    let RetryBudget { ratio, min_per_second, ttl } = tp.retry_budget;
    policy.retry_budget =
        Some(pb::RetryBudget { retry_ratio: ratio, min_retries_per_second: min_per_second, ttl: Some(duration(ttl)) });
    policy
}

fn route(policy: &RoutePolicy, rule: &RouteRule, port: u16) -> pb::Route {
    let backends = rule
        .backends
        .iter()
        .map(|b| pb::Backend { target: format!("{}:{}", b.service, b.port.unwrap_or(port)), weight: b.weight })
        .collect();
    let retry = rule.retry.clone().unwrap_or(Retry { attempts: 0, ..Retry::default() });
    pb::Route {
        name: format!("{}/{}", policy.name, rule.name),
        matches: rule.matches.iter().map(request_match).collect(),
        backends,
        timeout: rule.timeout.map(duration),
        retry: Some(pb::Retry {
            max_retries: retry.attempts,
            on: retry.on,
            backoff_base: Some(duration(retry.backoff_base)),
            backoff_max: Some(duration(retry.backoff_max)),
            per_try_timeout: retry.per_try_timeout.map(duration),
            buffer_limit_bytes: retry.buffer_limit,
        }),
        fault: rule.fault.as_ref().map(fault),
        rate_limit: rule
            .rate_limit
            .map(|RateLimit { requests_per_second, burst }| pb::RateLimit { requests_per_second, burst }),
    }
}

fn fault(fault: &Fault) -> pb::Fault {
    let mut out = pb::Fault::default();
    if let Some(abort) = &fault.abort {
        out.abort_percent = abort.percent;
        match abort.status {
            AbortStatus::Http(code) => out.abort_http_status = u32::from(code),
            AbortStatus::Grpc(code) => out.abort_grpc_status = u32::from(code),
        }
    }
    if let Some(delay) = &fault.delay {
        out.delay_percent = delay.percent;
        out.delay = Some(duration(delay.duration));
    }
    out
}

/// A match as the API carries it.
pub fn request_match(m: &RequestMatch) -> pb::Match {
    let path = m.path.as_ref().map(|p| pb::PathMatch {
        kind: Some(match p {
            PathMatch::Exact(s) => pb::path_match::Kind::Exact(s.clone()),
            PathMatch::Prefix(s) => pb::path_match::Kind::Prefix(s.clone()),
            PathMatch::Regex(s) => pb::path_match::Kind::Regex(s.clone()),
        }),
    });
    let headers = m
        .headers
        .iter()
        .map(|h| pb::HeaderMatch {
            name: h.name.clone(),
            value: Some(match &h.value {
                ValueMatch::Exact(v) => pb::header_match::Value::Exact(v.clone()),
                ValueMatch::Regex(r) => pb::header_match::Value::Regex(r.clone()),
            }),
        })
        .collect();
    pb::Match {
        path,
        headers,
        method: m.method.clone().unwrap_or_default(),
        grpc: m.grpc.as_ref().map(|g| pb::GrpcMatch {
            service: g.service.clone().unwrap_or_default(),
            method: g.method.clone().unwrap_or_default(),
        }),
        host: m.host.clone().unwrap_or_default(),
    }
}

fn authorization_policy(policy: &AuthorizationPolicy, identity: Option<&IdentityNaming>) -> pb::InboundPolicy {
    let default = match policy.default {
        DefaultAction::Deny => pb::DefaultAction::Deny,
        DefaultAction::Allow => pb::DefaultAction::Allow,
        DefaultAction::Authenticated => pb::DefaultAction::Authenticated,
    };
    let authorizations = policy
        .rules
        .iter()
        .map(|rule| {
            let mut identities = rule.identities.clone();
            if let Some(naming) = identity {
                for sa in &rule.service_accounts {
                    let id = naming.spiffe_id(&sa.namespace, &sa.name);
                    if !identities.contains(&id) {
                        identities.push(id);
                    }
                }
            }
            let authenticated =
                !rule.identities.is_empty() || !rule.service_accounts.is_empty() || !rule.namespaces.is_empty();
            pb::Authorization {
                name: rule.name.clone(),
                authenticated,
                identities,
                namespaces: rule.namespaces.clone(),
                networks: rule.networks.iter().map(ToString::to_string).collect(),
                http: rule.http.iter().map(request_match).collect(),
            }
        })
        .collect();
    pb::InboundPolicy {
        name: policy.name.clone(),
        default: default as i32,
        authorizations,
        require_mtls: policy.require_mtls,
    }
}

/// A duration on the wire, in whole milliseconds.
pub fn duration(d: Duration) -> pb::Duration {
    pb::Duration { millis: u64::try_from(d.as_millis()).unwrap_or(u64::MAX) }
}

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
pub fn outbound_policy(snapshot: &RegistrySnapshot, target: &Target) -> pb::OutboundPolicy {
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
) -> pb::InboundPolicy {
    let identity = trust_domain.map(|td| IdentityNaming { trust_domain: td.to_string() });
    inbound(&Index::new(snapshot, identity), &InboundTarget::new(namespace, service_account, port))
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
