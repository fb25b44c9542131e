//! Gateway API routes attached to Services (GAMMA) to the policy model, as a
//! pure function of every HTTPRoute and GRPCRoute.
//!
//! - A route applies to each parent that is a Service in its own namespace
//!   (a producer route); a parent in another namespace (a consumer route)
//!   is reported and not served yet. A parent without `port` routes every
//!   port of the Service.
//! - All routes of one Service port are merged into one first-match
//!   [`RoutePolicy`], one rule per match, ordered by the Gateway API's
//!   precedence: for HTTP an exact path, then the longest prefix (regexes
//!   after prefixes), then a method, then the most header matches; for gRPC
//!   the longest service, then method, then the most header matches (gRPC
//!   matches go first: they only select gRPC calls); remaining ties go to
//!   the oldest route, then `namespace/name`, then rule and match order.
//! - `backendRefs` are Services in the route's namespace (another namespace
//!   would need a ReferenceGrant: reported); no backends means the parent
//!   Service itself. `timeouts.request` bounds the request (`0s`: none).
//! - A route with any problem (an unsupported filter, a bad backend) is not
//!   served at all, so no rule of it is served with part of its meaning lost.

use super::policy::{Problems, parse_duration, request_match};
use crate::crd::common::HeaderMatchType;
use crate::gateway::{BackendRef, GRPCRoute, GrpcRouteMatch, HTTPRoute, ParentReference, RouteFilter};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use mesh_policy::model::{
    Backend, GrpcMatch, HeaderMatch, PathMatch, RequestMatch, RoutePolicy, RouteRule, ServiceKey, ValueMatch,
};
use mesh_policy::rules::anchored_regex;
use mesh_registry::problem::Problem;
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::time::Duration;

/// A match's place in the Gateway API's precedence (smaller sorts first).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Specificity {
    /// gRPC: service length, method length, header count (longest first).
    Grpc(Reverse<usize>, Reverse<usize>, Reverse<usize>),
    /// HTTP: path kind (exact, prefix, regex), prefix length, method, header count.
    Http(u8, Reverse<usize>, bool, Reverse<usize>),
}

/// One translated match, ready to be sorted into its Service's policy.
#[derive(Debug)]
struct Ranked {
    specificity: Specificity,
    /// Oldest route first, then by `namespace/name`, then rule and match order.
    tie: (Option<Timestamp>, String, usize, usize),
    rule: RouteRule,
}

impl Ranked {
    /// One match of one rule, as its own route rule (Gateway API precedence
    /// ranks matches, not rules).
    fn new(
        specificity: Specificity,
        tie: (Option<Timestamp>, String, usize, usize),
        name: String,
        m: RequestMatch,
        backends: Vec<Backend>,
        timeout: Option<Duration>,
    ) -> Self {
        let rule = RouteRule { name, matches: vec![m], backends, timeout, retry: None, fault: None, rate_limit: None };
        Self { specificity, tie, rule }
    }
}

/// The Service (and port) a route is attached to.
type Parent = (ServiceKey, Option<u16>);

/// Every route policy the routes define, and the problems of the routes left out.
pub fn routes_from(http: &[HTTPRoute], grpc: &[GRPCRoute]) -> (Vec<RoutePolicy>, Vec<Problem>) {
    let mut by_parent: BTreeMap<Parent, Vec<Ranked>> = BTreeMap::new();
    let mut problems = Vec::new();
    for route in http {
        match http_route(route) {
            Ok(attached) => merge(&mut by_parent, attached),
            Err(p) => problems.extend(p),
        }
    }
    for route in grpc {
        match grpc_route(route) {
            Ok(attached) => merge(&mut by_parent, attached),
            Err(p) => problems.extend(p),
        }
    }
    // A port's policy also carries the routes attached to the whole Service;
    // port policies go first (the index takes the first policy selecting a port).
    let mut policies = Vec::new();
    let keys: Vec<Parent> = by_parent.keys().cloned().collect();
    for (service, port) in keys.iter().filter(|(_, p)| p.is_some()).chain(keys.iter().filter(|(_, p)| p.is_none())) {
        let mut ranked: Vec<&Ranked> = by_parent.get(&(service.clone(), *port)).into_iter().flatten().collect();
        if port.is_some() {
            ranked.extend(by_parent.get(&(service.clone(), None)).into_iter().flatten());
        }
        ranked.sort_by(|a, b| (&a.specificity, &a.tie).cmp(&(&b.specificity, &b.tie)));
        let name = match port {
            Some(p) => format!("gateway-{}-{p}", service.name),
            None => format!("gateway-{}", service.name),
        };
        policies.push(RoutePolicy {
            name,
            namespace: service.namespace.clone(),
            service: service.clone(),
            port: *port,
            rules: ranked.into_iter().map(|r| r.rule.clone()).collect(),
        });
    }
    (policies, problems)
}

fn merge(by_parent: &mut BTreeMap<Parent, Vec<Ranked>>, attached: Vec<(Parent, Vec<Ranked>)>) {
    for (parent, ranked) in attached {
        by_parent.entry(parent).or_default().extend(ranked);
    }
}

/// A route's Service parents in its own namespace.
fn parents(refs: &[ParentReference], namespace: &str, problems: &mut Problems) -> Vec<Parent> {
    let mut out = Vec::new();
    for (i, parent) in refs.iter().enumerate().filter(|(_, p)| p.is_service()) {
        if parent.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            problems.add(
                format!("spec.parentRefs[{i}].namespace"),
                "routes for a Service in another namespace (consumer routes) are not supported yet: \
                 put the route in the Service's namespace",
            );
            continue;
        }
        let port = match parent.port.map(u16::try_from) {
            None => None,
            Some(Ok(p)) if p > 0 => Some(p),
            Some(_) => {
                problems.add(format!("spec.parentRefs[{i}].port"), "not a port (1-65535)");
                continue;
            }
        };
        out.push((ServiceKey::new(namespace, parent.name.clone()), port));
    }
    out
}

fn backends(refs: &[BackendRef], namespace: &str, at: &str, problems: &mut Problems) -> Vec<Backend> {
    let mut out = Vec::new();
    for (i, b) in refs.iter().enumerate() {
        let field = format!("{at}.backendRefs[{i}]");
        if b.group.as_deref().is_some_and(|g| !g.is_empty()) || b.kind.as_deref().is_some_and(|k| k != "Service") {
            problems.add(field, "only Service backends are supported");
            continue;
        }
        if b.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            problems.add(
                format!("{field}.namespace"),
                "backends in another namespace (which need a ReferenceGrant) are not supported yet",
            );
            continue;
        }
        let Some(port) = b.port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0) else {
            problems.add(format!("{field}.port"), "a Service backend needs its port (1-65535)");
            continue;
        };
        let weight = u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0);
        out.push(Backend { service: ServiceKey::new(namespace, b.name.clone()), port: Some(port), weight });
    }
    out
}

fn filters(filters: &[RouteFilter], at: &str, problems: &mut Problems) {
    for (i, f) in filters.iter().enumerate() {
        problems.add(
            format!("{at}.filters[{i}]"),
            format!("filter {} is not supported yet: the route is not served", f.type_),
        );
    }
}

fn rule_name(route: &str, rule: Option<&str>, index: usize, matches: usize, m: usize) -> String {
    let rule = rule.map_or_else(|| format!("rule-{index}"), str::to_string);
    if matches > 1 { format!("{route}.{rule}.{m}") } else { format!("{route}.{rule}") }
}

fn http_route(route: &HTTPRoute) -> Result<Vec<(Parent, Vec<Ranked>)>, Vec<Problem>> {
    let namespace = route.namespace().unwrap_or_default();
    let name = route.name_any();
    let mut problems = Problems::new("HTTPRoute", namespace.clone(), name.clone());
    let parents = parents(&route.spec.parent_refs, &namespace, &mut problems);
    let created = route.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let mut ranked = Vec::new();
    for (i, rule) in route.spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        filters(&rule.filters, &at, &mut problems);
        let backends = backends(&rule.backend_refs, &namespace, &at, &mut problems);
        let timeout = match rule.timeouts.as_ref().and_then(|t| t.request.as_deref()) {
            None => None,
            Some(text) => match parse_duration(text) {
                Some(d) if d == Duration::ZERO => None,
                Some(d) => Some(d),
                None => {
                    problems.add(format!("{at}.timeouts.request"), format!("invalid duration {text:?}"));
                    None
                }
            },
        };
        let matches: Vec<RequestMatch> = if rule.matches.is_empty() {
            vec![RequestMatch::default()]
        } else {
            let mut out = Vec::new();
            for (j, m) in rule.matches.iter().enumerate() {
                if let Some(m) = request_match(m, &format!("{at}.matches[{j}]"), &mut problems) {
                    out.push(m);
                }
            }
            out
        };
        for (j, m) in matches.iter().enumerate() {
            // Exact paths first, then the longest prefix (no path is the
            // prefix `/`), then regexes.
            let (kind, prefix_len) = match &m.path {
                Some(PathMatch::Exact(_)) => (0, 0),
                Some(PathMatch::Prefix(p)) => (1, p.len()),
                None => (1, 1),
                Some(PathMatch::Regex(_)) => (2, 0),
            };
            let specificity =
                Specificity::Http(kind, Reverse(prefix_len), m.method.is_none(), Reverse(m.headers.len()));
            let rule_name = rule_name(&name, rule.name.as_deref(), i, matches.len(), j);
            let tie = (created, format!("{namespace}/{name}"), i, j);
            ranked.push(Ranked::new(specificity, tie, rule_name, m.clone(), backends.clone(), timeout));
        }
    }
    problems.finish(())?;
    Ok(attach(parents, ranked))
}

fn grpc_route(route: &GRPCRoute) -> Result<Vec<(Parent, Vec<Ranked>)>, Vec<Problem>> {
    let namespace = route.namespace().unwrap_or_default();
    let name = route.name_any();
    let mut problems = Problems::new("GRPCRoute", namespace.clone(), name.clone());
    let parents = parents(&route.spec.parent_refs, &namespace, &mut problems);
    let created = route.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let mut ranked = Vec::new();
    for (i, rule) in route.spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        filters(&rule.filters, &at, &mut problems);
        let backends = backends(&rule.backend_refs, &namespace, &at, &mut problems);
        let all = [GrpcRouteMatch::default()];
        let matches = if rule.matches.is_empty() { &all[..] } else { &rule.matches[..] };
        for (j, m) in matches.iter().enumerate() {
            let method = m.method.clone().unwrap_or_default();
            if method.type_.as_deref().is_some_and(|t| t != "Exact") {
                problems.add(format!("{at}.matches[{j}].method.type"), "only Exact gRPC method matches are supported");
                continue;
            }
            let mut headers = Vec::new();
            for (k, h) in m.headers.iter().enumerate() {
                let value = match h.type_ {
                    HeaderMatchType::Exact => ValueMatch::Exact(h.value.clone()),
                    HeaderMatchType::RegularExpression => {
                        if let Err(e) = anchored_regex(&h.value) {
                            let field = format!("{at}.matches[{j}].headers[{k}].value");
                            problems.add(field, format!("invalid regular expression {:?}: {e}", h.value));
                        }
                        ValueMatch::Regex(h.value.clone())
                    }
                };
                headers.push(HeaderMatch { name: h.name.to_ascii_lowercase(), value });
            }
            let specificity = Specificity::Grpc(
                Reverse(method.service.as_deref().map_or(0, str::len)),
                Reverse(method.method.as_deref().map_or(0, str::len)),
                Reverse(headers.len()),
            );
            let request = RequestMatch {
                grpc: Some(GrpcMatch { service: method.service.clone(), method: method.method.clone() }),
                headers,
                ..Default::default()
            };
            let rule_name = rule_name(&name, rule.name.as_deref(), i, matches.len(), j);
            let tie = (created, format!("{namespace}/{name}"), i, j);
            ranked.push(Ranked::new(specificity, tie, rule_name, request, backends.clone(), None));
        }
    }
    problems.finish(())?;
    Ok(attach(parents, ranked))
}

/// The same rules for each parent.
fn attach(parents: Vec<Parent>, ranked: Vec<Ranked>) -> Vec<(Parent, Vec<Ranked>)> {
    parents
        .into_iter()
        .map(|parent| {
            let copy = ranked
                .iter()
                .map(|r| Ranked { specificity: r.specificity.clone(), tie: r.tie.clone(), rule: r.rule.clone() })
                .collect();
            (parent, copy)
        })
        .collect()
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
