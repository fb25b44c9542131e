//! The mesh's CRDs to the policy model, as pure functions. The API server
//! already enforces the schemas; these re-check what a schema cannot (regex
//! syntax, exact CIDRs and SPIFFE IDs) and what an older API server without
//! CEL would let through, so nothing invalid is ever served.

use crate::crd::authorization::{AuthorizationRule as KubeRule, DefaultAction as KubeDefault};
use crate::crd::common::{HeaderMatchType, HttpRouteMatch, PathMatchType};
use crate::crd::{AuthorizationPolicy as KubeAuthorization, TrafficPolicy as KubeTraffic};
use kube::ResourceExt;
use mesh_identity::spiffe::SpiffeId;
use mesh_policy::check::ports_overlap;
use mesh_policy::cidr::Cidr;
use mesh_policy::model::{
    AuthorizationPolicy, AuthorizationRule, CircuitBreaker, DefaultAction, HeaderMatch, Limits, PathMatch,
    RequestMatch, RetryBudget, ServiceAccountRef, ServiceKey, TrafficPolicy, ValueMatch,
};
use mesh_policy::rules::anchored_regex;
use mesh_registry::problem::{Location, Problem};
use std::time::Duration;

/// Collects problems located in one object.
pub(super) struct Problems {
    kind: &'static str,
    namespace: String,
    name: String,
    found: Vec<Problem>,
}

impl Problems {
    pub(super) fn new(kind: &'static str, namespace: String, name: String) -> Self {
        Self { kind, namespace, name, found: Vec::new() }
    }

    pub(super) fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.found.push(Problem {
            at: Location::Object {
                kind: self.kind.into(),
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                field: field.into(),
            },
            message: message.into(),
        });
    }

    pub(super) fn finish<T>(self, value: T) -> Result<T, Vec<Problem>> {
        if self.found.is_empty() { Ok(value) } else { Err(self.found) }
    }
}

/// Every valid authorization, and the problems of those left out. Two
/// policies selecting the same port of a Service conflict: the oldest (then
/// the first by `namespace/name`) is served, the other reported.
pub fn authorizations_from(policies: &[KubeAuthorization]) -> (Vec<AuthorizationPolicy>, Vec<Problem>) {
    let mut sorted: Vec<&KubeAuthorization> = policies.iter().collect();
    sorted.sort_by_key(|p| (p.metadata.creation_timestamp.as_ref().map(|t| t.0), p.namespace(), p.name_any()));
    let mut valid: Vec<AuthorizationPolicy> = Vec::new();
    let mut problems = Vec::new();
    for policy in sorted {
        match authorization_from(policy) {
            Ok(p) => {
                let conflict = valid.iter().find(|v| v.service == p.service && ports_overlap(v.port, p.port));
                match conflict {
                    Some(older) => {
                        let mut found = Problems::new("AuthorizationPolicy", p.namespace.clone(), p.name.clone());
                        let port = p.port.map_or_else(|| "every port".to_string(), |n| format!("port {n}"));
                        found.add(
                            "spec.targetRef",
                            format!(
                                "selects {port} of Service {} as the older AuthorizationPolicy {} does: merge the two",
                                p.service.name, older.name
                            ),
                        );
                        problems.extend(found.found);
                    }
                    None => valid.push(p),
                }
            }
            Err(found) => problems.extend(found),
        }
    }
    (valid, problems)
}

/// The policy model's authorization for an `AuthorizationPolicy`.
pub fn authorization_from(policy: &KubeAuthorization) -> Result<AuthorizationPolicy, Vec<Problem>> {
    let namespace = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let mut problems = Problems::new("AuthorizationPolicy", namespace.clone(), name.clone());
    let spec = &policy.spec;
    let port = spec.target_ref.port.and_then(|p| match u16::try_from(p) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            problems.add("spec.targetRef.port", format!("{p} is not a port (1-65535)"));
            None
        }
    });
    let mut rules = Vec::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        if rules.iter().any(|r: &AuthorizationRule| r.name == rule.name) {
            problems.add(format!("spec.rules[{i}].name"), "duplicate rule name: give each rule a unique name");
        }
        rules.push(authorization_rule(&namespace, rule, &format!("spec.rules[{i}]"), &mut problems));
    }
    let default = match spec.default {
        KubeDefault::Deny => DefaultAction::Deny,
        KubeDefault::Allow => DefaultAction::Allow,
        KubeDefault::Authenticated => DefaultAction::Authenticated,
    };
    problems.finish(AuthorizationPolicy {
        service: ServiceKey::new(namespace.clone(), spec.target_ref.name.clone()),
        name,
        namespace,
        port,
        default,
        require_mtls: spec.require_mtls,
        rules,
    })
}

fn authorization_rule(namespace: &str, rule: &KubeRule, at: &str, problems: &mut Problems) -> AuthorizationRule {
    let from = &rule.from;
    if from.service_accounts.is_empty()
        && from.namespaces.is_empty()
        && from.identities.is_empty()
        && from.networks.is_empty()
    {
        problems.add(
            format!("{at}.from"),
            "a rule must allow some clients: list serviceAccounts, namespaces, identities or networks",
        );
    }
    let mut out = AuthorizationRule {
        name: rule.name.clone(),
        identities: Vec::new(),
        service_accounts: from
            .service_accounts
            .iter()
            .map(|sa| ServiceAccountRef {
                namespace: sa.namespace.clone().unwrap_or_else(|| namespace.to_string()),
                name: sa.name.clone(),
            })
            .collect(),
        namespaces: from.namespaces.clone(),
        networks: Vec::new(),
        http: Vec::new(),
    };
    for (i, id) in from.identities.iter().enumerate() {
        match id.parse::<SpiffeId>() {
            Ok(id) => out.identities.push(id.to_string()),
            Err(e) => problems.add(format!("{at}.from.identities[{i}]"), e.to_string()),
        }
    }
    for (i, net) in from.networks.iter().enumerate() {
        match net.parse::<Cidr>() {
            Ok(cidr) => out.networks.push(cidr),
            Err(e) => problems.add(format!("{at}.from.networks[{i}]"), format!("invalid CIDR {net:?}: {e}")),
        }
    }
    for (i, m) in rule.http.iter().enumerate() {
        if let Some(m) = request_match(m, &format!("{at}.http[{i}]"), problems) {
            out.http.push(m);
        }
    }
    out
}

/// The policy model's request match for a Gateway-API-style `HTTPRouteMatch`.
pub(super) fn request_match(m: &HttpRouteMatch, at: &str, problems: &mut Problems) -> Option<RequestMatch> {
    let mut ok = true;
    let mut regex = |re: &str, field: String| {
        if let Err(e) = anchored_regex(re) {
            problems.add(field, format!("invalid regular expression {re:?}: {e}"));
            ok = false;
        }
    };
    let path = m.path.as_ref().map(|p| match p.type_ {
        PathMatchType::Exact => PathMatch::Exact(p.value.clone()),
        PathMatchType::PathPrefix => PathMatch::Prefix(p.value.clone()),
        PathMatchType::RegularExpression => {
            regex(&p.value, format!("{at}.path.value"));
            PathMatch::Regex(p.value.clone())
        }
    });
    let mut headers = Vec::new();
    for (i, h) in m.headers.iter().enumerate() {
        let value = match h.type_ {
            HeaderMatchType::Exact => ValueMatch::Exact(h.value.clone()),
            HeaderMatchType::RegularExpression => {
                regex(&h.value, format!("{at}.headers[{i}].value"));
                ValueMatch::Regex(h.value.clone())
            }
        };
        headers.push(HeaderMatch { name: h.name.to_ascii_lowercase(), value });
    }
    let method = m.method.map(|m| m.as_str().to_string());
    ok.then_some(RequestMatch { path, headers, method, host: None, grpc: None })
}

/// The target Service and the policy model's traffic policy for a `TrafficPolicy`.
pub fn traffic_from(policy: &KubeTraffic) -> Result<(ServiceKey, TrafficPolicy), Vec<Problem>> {
    let namespace = policy.namespace().unwrap_or_default();
    let mut problems = Problems::new("TrafficPolicy", namespace.clone(), policy.name_any());
    let spec = &policy.spec;
    let mut out = TrafficPolicy::default();
    let mut duration = |value: &Option<String>, field: &str, default: Duration| match value {
        None => default,
        Some(text) => parse_duration(text).unwrap_or_else(|| {
            problems.add(field, format!("invalid duration {text:?}: write it like 10s, 500ms or 1h30m"));
            default
        }),
    };
    if let Some(cb) = &spec.circuit_breaker {
        out.circuit_breaker = CircuitBreaker {
            consecutive_failures: count(cb.consecutive_failures).unwrap_or(CircuitBreaker::DEFAULT_FAILURES),
            base_ejection: duration(
                &cb.base_ejection,
                "spec.circuitBreaker.baseEjection",
                CircuitBreaker::DEFAULT_BASE_EJECTION,
            ),
            max_ejection: duration(
                &cb.max_ejection,
                "spec.circuitBreaker.maxEjection",
                CircuitBreaker::DEFAULT_MAX_EJECTION,
            ),
        };
    }
    if let Some(budget) = &spec.retry_budget {
        let default = RetryBudget::default();
        out.retry_budget = RetryBudget {
            ratio: budget.ratio.unwrap_or(default.ratio),
            min_per_second: count(budget.min_per_second).unwrap_or(default.min_per_second),
            ttl: duration(&budget.ttl, "spec.retryBudget.ttl", default.ttl),
        };
    }
    if let Some(limits) = &spec.limits {
        out.limits = Limits {
            max_concurrent_requests: count(limits.max_concurrent_requests).unwrap_or(0),
            max_pending_requests: count(limits.max_pending_requests).unwrap_or(0),
            max_connections_per_endpoint: count(limits.max_connections_per_endpoint).unwrap_or(0),
        };
    }
    let cb = out.circuit_breaker;
    if cb.max_ejection < cb.base_ejection {
        problems.add("spec.circuitBreaker.maxEjection", "must not be shorter than baseEjection");
    }
    if !(out.retry_budget.ratio.is_finite() && (0.0..=10.0).contains(&out.retry_budget.ratio)) {
        problems.add("spec.retryBudget.ratio", "use a ratio from 0 to 10");
    }
    problems.finish((ServiceKey::new(namespace, spec.target_ref.name.clone()), out))
}

/// A non-negative count (negative ones are refused by the schema; read as absent).
fn count(n: Option<i32>) -> Option<u32> {
    n.and_then(|n| u32::try_from(n).ok())
}

/// A Gateway API duration (`^([0-9]{1,5}(h|m|s|ms)){1,4}$`), like `1h30m` or `500ms`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total += unit * u32::try_from(n).ok()?;
        parts += 1;
    }
    (parts > 0 && parts <= 4).then_some(total)
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
