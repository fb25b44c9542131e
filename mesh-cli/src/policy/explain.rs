//! The explanation itself, pure: a request and a client, the target's
//! outbound policy and the destinations' inbound policies (as the Policy API
//! carries them) in; what the proxies do out.
//!
//! Every decision is the proxy's own code: policies are compiled with
//! [`mesh_policy`], the route is [`OutboundPolicy::route`], the
//! verdict is [`InboundPolicy::authorize`], and the request's head goes
//! through the same hop-by-hop hygiene the proxy applies before routing.
//! This module only describes the results.

use anyhow::{Context as _, anyhow, bail};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method};
use mesh_policy::headers::{strip_hop_by_hop, wants_upgrade};
use mesh_policy::inbound::{Client, DefaultAction, InboundPolicy};
use mesh_policy::matcher::Match;
use mesh_policy::outbound::{GRPC_CODES, OutboundPolicy, RetryOn, Route};
use mesh_proto::policy as pb;
use serde::Serialize;
use std::net::IpAddr;
use std::time::Duration;

/// The request to explain, as the calling app would send it.
#[derive(Debug, Clone)]
pub struct Request {
    /// HTTP method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// The authority (`Host`), as the app sends it.
    pub authority: String,
    /// Headers, in order (`Host` among them only if given with `-H`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Request {
    /// A request from command-line text: `method`, `path`, `authority` and
    /// `name: value` headers. A `host` header given with `-H` is the
    /// authority unless `authority` is given too.
    pub fn parse(
        method: &str,
        path: &str,
        authority: Option<&str>,
        headers: &[String],
        default_authority: &str,
    ) -> anyhow::Result<Self> {
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| anyhow!("invalid --method {method:?}"))?;
        if !path.starts_with('/') {
            bail!("invalid --path {path:?}: it must start with '/'");
        }
        http::uri::PathAndQuery::try_from(path).map_err(|e| anyhow!("invalid --path {path:?}: {e}"))?;
        let mut parsed = Vec::new();
        let mut host_header = None;
        for h in headers {
            let (name, value) =
                h.split_once(':').ok_or_else(|| anyhow!("invalid header {h:?}: expected 'name: value'"))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| anyhow!("invalid header name {:?} in {h:?}", name.trim()))?;
            let value = HeaderValue::from_str(value.trim()).map_err(|_| anyhow!("invalid header value in {h:?}"))?;
            if name == http::header::HOST {
                host_header = Some(value.to_str().map(str::to_string).unwrap_or_default());
                continue;
            }
            parsed.push((name, value));
        }
        let authority = authority.map(str::to_string).or(host_header).unwrap_or_else(|| default_authority.to_string());
        HeaderValue::from_str(&authority).map_err(|_| anyhow!("invalid --authority {authority:?}"))?;
        Ok(Self { method, path: path.to_string(), authority, headers: parsed })
    }

    /// The request's head as the proxy routes it: an HTTP/1 request with
    /// `Host`, hop-by-hop headers removed as the proxy removes them.
    pub fn parts(&self) -> anyhow::Result<Parts> {
        let mut b = http::Request::builder().method(self.method.clone()).uri(self.path.as_str());
        b = b.header(http::header::HOST, self.authority.as_str());
        for (name, value) in &self.headers {
            b = b.header(name, value);
        }
        let req = b.body(()).context("cannot build the request")?;
        let upgrading = wants_upgrade(&req);
        let (mut parts, ()) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers, upgrading);
        Ok(parts)
    }
}

/// Who sends the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Source {
    /// The client's SPIFFE ID; `None`: plaintext, unauthenticated.
    pub identity: Option<String>,
    /// The client's address (what network rules see).
    pub ip: IpAddr,
}

impl Source {
    fn client(&self) -> Client {
        Client { identity: self.identity.clone(), ip: self.ip }
    }
}

/// One backend of the split.
#[derive(Debug, Clone, Serialize)]
pub struct Backend {
    /// `name.namespace:port`.
    pub target: String,
    /// Its weight.
    pub weight: u32,
    /// Its share of requests, in percent.
    pub percent: f64,
    /// Whether this is the target itself (no backends on the route, or no route).
    pub is_target: bool,
    /// What to resolve to find its workloads (the target as given, for the target itself).
    #[serde(skip)]
    pub resolve: String,
}

/// One route as evaluated, in order.
#[derive(Debug, Clone, Serialize)]
pub struct RouteCheck {
    /// `<policy>/<rule>`.
    pub name: String,
    /// Whether it takes the request.
    pub matched: bool,
}

/// Why the chosen route took the request.
#[derive(Debug, Clone, Serialize)]
pub struct Why {
    /// The index (0-based) of the route's match that matched; `None`: the
    /// route has no matches and takes every request.
    pub match_index: Option<usize>,
    /// The match, in words.
    pub description: String,
}

/// The route that takes the request.
#[derive(Debug, Clone, Serialize)]
pub struct ChosenRoute {
    /// `<policy>/<rule>`.
    pub name: String,
    /// Why.
    pub why: Why,
}

/// Retries of the chosen route.
#[derive(Debug, Clone, Serialize)]
pub struct RetryOut {
    /// Attempts after the first.
    pub max_retries: u32,
    /// Conditions.
    pub on: Vec<String>,
    /// First backoff, doubling up to `backoff_max_ms` (jittered in its upper half).
    pub backoff_base_ms: u64,
    /// Largest backoff.
    pub backoff_max_ms: u64,
    /// Deadline per attempt.
    pub per_try_timeout_ms: Option<u64>,
    /// Largest body buffered for replay; larger bodies are sent once.
    pub buffer_limit_bytes: u64,
}

/// Fault injection of the chosen route.
#[derive(Debug, Clone, Serialize)]
pub struct FaultOut {
    /// Percent of requests aborted.
    pub abort_percent: f64,
    /// HTTP status of aborts.
    pub abort_http_status: u16,
    /// gRPC status of aborts of gRPC requests.
    pub abort_grpc_status: Option<u32>,
    /// Percent of requests delayed.
    pub delay_percent: f64,
    /// The delay.
    pub delay_ms: u64,
}

/// Local rate limit of the chosen route.
#[derive(Debug, Clone, Serialize)]
pub struct RateLimitOut {
    /// Requests per second through each calling proxy.
    pub requests_per_second: f64,
    /// Burst.
    pub burst: u32,
}

/// The target's retry budget.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetOut {
    /// Retries may add this share of original requests...
    pub retry_ratio: f64,
    /// ... plus this many per second...
    pub min_retries_per_second: u32,
    /// ... over this window.
    pub ttl_ms: u64,
}

/// The target's circuit breaker.
#[derive(Debug, Clone, Serialize)]
pub struct BreakerOut {
    /// Whether endpoints are ejected at all.
    pub enabled: bool,
    /// Consecutive failures that eject an endpoint.
    pub consecutive_failures: u32,
    /// First ejection (doubling while probes fail).
    pub base_ejection_ms: u64,
    /// Longest ejection.
    pub max_ejection_ms: u64,
}

/// The target's limits; 0 is unlimited.
#[derive(Debug, Clone, Serialize)]
pub struct LimitsOut {
    /// Requests in flight to the target.
    pub max_concurrent_requests: u32,
    /// Requests waiting for an endpoint or a connection.
    pub max_pending_requests: u32,
    /// Connections to each endpoint.
    pub max_connections_per_endpoint: u32,
}

/// What the calling proxy does with the request.
#[derive(Debug, Clone, Serialize)]
pub struct Routing {
    /// The service the target resolved to (`name.namespace:port`).
    pub service: String,
    /// Whether HTTP routing applies (`false` for opaque TCP ports).
    pub http: bool,
    /// Every route in evaluation order, and whether it matched (evaluation
    /// stops at the first match).
    pub routes: Vec<RouteCheck>,
    /// The route that takes the request; `None`: default behaviour.
    pub route: Option<ChosenRoute>,
    /// The weighted split.
    pub backends: Vec<Backend>,
    /// Whole-request deadline, retries included.
    pub timeout_ms: Option<u64>,
    /// Retries.
    pub retry: Option<RetryOut>,
    /// The retry budget shared by the target's routes.
    pub retry_budget: BudgetOut,
    /// Fault injection.
    pub fault: Option<FaultOut>,
    /// Local rate limit.
    pub rate_limit: Option<RateLimitOut>,
    /// Failure accrual per endpoint.
    pub circuit_breaker: BreakerOut,
    /// Concurrency limits.
    pub limits: LimitsOut,
}

/// A destination workload and its inbound policies, per workload port (the
/// port its proxy is dialled on selects the policy).
#[derive(Debug, Clone)]
pub struct Destination {
    /// The backend it serves (`name.namespace:port`).
    pub backend: String,
    /// Namespace and service account of its workloads; `None`: not known,
    /// or the workloads have no mesh identity.
    pub workload: Option<(String, String)>,
    /// Inbound policies, with the ports each applies to.
    pub policies: Vec<(Vec<u16>, pb::InboundPolicy)>,
    /// Why there is no policy, or anything else worth knowing.
    pub notes: Vec<String>,
}

impl Destination {
    /// Groups per-port policies: ports with the same policy together.
    pub fn group(per_port: Vec<(u16, pb::InboundPolicy)>) -> Vec<(Vec<u16>, pb::InboundPolicy)> {
        let mut groups: Vec<(Vec<u16>, pb::InboundPolicy)> = Vec::new();
        for (port, policy) in per_port {
            match groups.iter_mut().find(|(_, p)| *p == policy) {
                Some((ports, _)) => {
                    if !ports.contains(&port) {
                        ports.push(port);
                    }
                }
                None => groups.push((vec![port], policy)),
            }
        }
        for (ports, _) in &mut groups {
            ports.sort_unstable();
        }
        groups
    }
}

/// The decision of the destination's proxy.
#[derive(Debug, Clone, Serialize)]
pub struct VerdictOut {
    /// Allowed or denied.
    pub allowed: bool,
    /// The policy that decided.
    pub policy: String,
    /// The authorization that allowed, `default:<action>`, or `require-mtls`.
    pub rule: String,
}

/// Authorization at one destination workload port (or group of ports).
#[derive(Debug, Clone, Serialize)]
pub struct Authorization {
    /// The backend.
    pub backend: String,
    /// The workload's namespace.
    pub namespace: Option<String>,
    /// The workload's service account.
    pub service_account: Option<String>,
    /// The workload ports this applies to.
    pub ports: Vec<u16>,
    /// The inbound policy's name; `None`: no policy is enforced.
    pub policy: Option<String>,
    /// Its default action: `allow`, `deny` or `authenticated`.
    pub default: Option<String>,
    /// Whether the policy refuses plaintext.
    pub require_mtls: bool,
    /// Each rule, with what it requires of a client.
    pub rules: Vec<RuleOut>,
    /// The verdict; `None` without a client to judge, or without a policy.
    pub verdict: Option<VerdictOut>,
    /// Caveats.
    pub notes: Vec<String>,
}

/// One authorization rule and what it requires.
#[derive(Debug, Clone, Serialize)]
pub struct RuleOut {
    /// The rule's name.
    pub name: String,
    /// Every kind of criterion it lists must hold.
    pub requires: String,
}

/// The whole explanation.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// Where the policies came from (`registry FILE` or `control plane URL`).
    pub from: String,
    /// The target as given.
    pub target: String,
    /// The request.
    pub request: RequestOut,
    /// The client; `None`: not given.
    pub client: Option<Source>,
    /// The calling proxy's side.
    pub outbound: Routing,
    /// The destination proxies' side, per backend.
    pub authorization: Vec<Authorization>,
    /// Caveats about the whole explanation.
    pub notes: Vec<String>,
}

/// The request, for output.
#[derive(Debug, Clone, Serialize)]
pub struct RequestOut {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Authority.
    pub authority: String,
    /// Headers as routed (after hop-by-hop removal), `Host` excluded.
    pub headers: Vec<(String, String)>,
}

impl RequestOut {
    /// The request as the proxy sees it.
    pub fn new(req: &Request, parts: &Parts) -> Self {
        let headers = parts
            .headers
            .iter()
            .filter(|(n, _)| **n != http::header::HOST)
            .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        Self { method: req.method.to_string(), path: req.path.clone(), authority: req.authority.clone(), headers }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn wire_millis(d: &Option<pb::Duration>) -> u64 {
    d.as_ref().map_or(0, |d| d.millis)
}

/// Retry conditions as the proxy understood them, by name.
fn conditions(on: &RetryOn) -> Vec<String> {
    let mut out = Vec::new();
    for (set, name) in [
        (on.server_error, "5xx"),
        (on.gateway_error, "gateway-error"),
        (on.connect_failure, "connect-failure"),
        (on.reset, "reset"),
    ] {
        if set {
            out.push(name.to_string());
        }
    }
    for code in &on.grpc {
        match GRPC_CODES.iter().find(|(_, c)| c == code) {
            Some((name, _)) => out.push((*name).to_string()),
            None => out.push(format!("grpc-{code}")),
        }
    }
    out
}

/// A wire match in words.
pub fn describe_match(m: &pb::Match) -> String {
    let mut parts = Vec::new();
    match m.path.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(pb::path_match::Kind::Exact(p)) => parts.push(format!("path = {p}")),
        Some(pb::path_match::Kind::Prefix(p)) => parts.push(format!("path prefix {p}")),
        Some(pb::path_match::Kind::Regex(r)) => parts.push(format!("path ~ /{r}/")),
        None => {}
    }
    if !m.method.is_empty() {
        parts.push(format!("method {}", m.method));
    }
    if !m.host.is_empty() {
        parts.push(format!("host {}", m.host));
    }
    if let Some(g) = &m.grpc {
        let s = if g.service.is_empty() { "*" } else { g.service.as_str() };
        let me = if g.method.is_empty() { "*" } else { g.method.as_str() };
        parts.push(format!("gRPC /{s}/{me}"));
    }
    for h in &m.headers {
        match &h.value {
            Some(pb::header_match::Value::Exact(v)) => {
                parts.push(format!("header {}: {v:?}", h.name.to_ascii_lowercase()))
            }
            Some(pb::header_match::Value::Regex(r)) => {
                parts.push(format!("header {} ~ /{r}/", h.name.to_ascii_lowercase()))
            }
            None => parts.push(format!("header {}", h.name)),
        }
    }
    if parts.is_empty() { "any request".to_string() } else { parts.join(", ") }
}

fn why(route: &pb::Route, parts: &Parts) -> anyhow::Result<Why> {
    if route.matches.is_empty() {
        return Ok(Why {
            match_index: None,
            description: "the route has no match conditions: it takes every request".into(),
        });
    }
    for (i, m) in route.matches.iter().enumerate() {
        if Match::compile(m)?.matches(parts) {
            return Ok(Why { match_index: Some(i), description: describe_match(m) });
        }
    }
    // The proxy's route() said it matches; a match must.
    bail!("route {} matched but none of its matches does (internal error)", route.name)
}

/// Percentages with two decimals.
fn percent(weight: u32, total: u64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    (f64::from(weight) * 10_000.0 / total as f64).round() / 100.0
}

/// Evaluates the calling proxy's side: `target` as given, its wire policy
/// (which must say the service exists), whether the port speaks HTTP.
pub fn route(target: &str, wire: &pb::OutboundPolicy, parts: &Parts, http: bool) -> anyhow::Result<Routing> {
    let compiled =
        OutboundPolicy::compile(wire).map_err(|e| anyhow!("the proxy would refuse this outbound policy: {e}"))?;
    let service = compiled.service.clone().unwrap_or_else(|| wire.service.clone());
    let itself =
        || Backend { target: service.clone(), weight: 1, percent: 100.0, is_target: true, resolve: target.to_string() };
    let b = wire.retry_budget.as_ref();
    let retry_budget = BudgetOut {
        retry_ratio: b.map_or(0.2, |b| b.retry_ratio.max(0.0)),
        min_retries_per_second: b.map_or(10, |b| b.min_retries_per_second),
        ttl_ms: b.map_or(10_000, |b| wire_millis(&b.ttl).max(1000)),
    };
    let circuit_breaker = BreakerOut {
        enabled: compiled.breaker.consecutive_failures > 0,
        consecutive_failures: compiled.breaker.consecutive_failures,
        base_ejection_ms: millis(compiled.breaker.base_ejection),
        max_ejection_ms: millis(compiled.breaker.max_ejection),
    };
    let limits = LimitsOut {
        max_concurrent_requests: compiled.limits.max_concurrent,
        max_pending_requests: compiled.limits.max_pending,
        max_connections_per_endpoint: compiled.limits.max_connections_per_endpoint,
    };
    let mut routing = Routing {
        service: service.clone(),
        http,
        routes: Vec::new(),
        route: None,
        backends: vec![itself()],
        timeout_ms: None,
        retry: None,
        retry_budget,
        fault: None,
        rate_limit: None,
        circuit_breaker,
        limits,
    };
    if !http {
        return Ok(routing);
    }
    // The proxy's own choice; then, for the record, how each route fared.
    let chosen: Option<&Route> = compiled.route(parts);
    let chosen_index = chosen.and_then(|c| compiled.routes.iter().position(|r| std::ptr::eq(r, c)));
    for (i, r) in compiled.routes.iter().enumerate() {
        routing.routes.push(RouteCheck { name: r.name.to_string(), matched: Some(i) == chosen_index });
        if Some(i) == chosen_index {
            break;
        }
    }
    let (Some(route), Some(index)) = (chosen, chosen_index) else {
        return Ok(routing);
    };
    let wire_route = wire.routes.get(index).ok_or_else(|| anyhow!("route {index} missing from the policy"))?;
    routing.route = Some(ChosenRoute { name: route.name.to_string(), why: why(wire_route, parts)? });
    let total: u64 = route.backends.iter().map(|(_, w)| u64::from(*w)).sum();
    if total > 0 {
        routing.backends = route
            .backends
            .iter()
            .map(|(t, w)| Backend {
                target: t.clone(),
                weight: *w,
                percent: percent(*w, total),
                is_target: false,
                resolve: t.clone(),
            })
            .collect();
    }
    routing.timeout_ms = route.timeout.map(millis);
    routing.retry = route.retry.as_ref().map(|r| RetryOut {
        max_retries: r.max_retries,
        on: conditions(&r.on),
        backoff_base_ms: millis(r.backoff_base),
        backoff_max_ms: millis(r.backoff_max),
        per_try_timeout_ms: r.per_try_timeout.map(millis),
        buffer_limit_bytes: u64::try_from(r.buffer_limit).unwrap_or(u64::MAX),
    });
    routing.fault = route.fault.as_ref().map(|f| FaultOut {
        abort_percent: f.abort_percent,
        abort_http_status: f.abort_http,
        abort_grpc_status: f.abort_grpc,
        delay_percent: f.delay_percent,
        delay_ms: millis(f.delay),
    });
    routing.rate_limit = route.rate_limit.as_ref().map(|bucket| RateLimitOut {
        requests_per_second: bucket.rate(),
        burst: wire_route.rate_limit.as_ref().map_or(1, |l| l.burst.max(1)),
    });
    Ok(routing)
}

fn default_name(d: i32) -> String {
    match DefaultAction::from_wire(d) {
        DefaultAction::Deny => "deny".into(),
        DefaultAction::Authenticated => "authenticated".into(),
        DefaultAction::Allow => "allow".into(),
        DefaultAction::Unrecognized(v) => format!("deny (unrecognized value {v})"),
    }
}

/// Evaluates the destinations' side: each destination's policies for
/// `source` (if given) and the request (`None` for opaque TCP, checked per
/// connection).
pub fn authorize(
    destinations: &[Destination],
    source: Option<&Source>,
    parts: Option<&Parts>,
) -> anyhow::Result<Vec<Authorization>> {
    let mut out = Vec::new();
    for d in destinations {
        let (namespace, service_account) = match &d.workload {
            Some((ns, sa)) => (Some(ns.clone()), Some(sa.clone())),
            None => (None, None),
        };
        if d.policies.is_empty() {
            out.push(Authorization {
                backend: d.backend.clone(),
                namespace,
                service_account,
                ports: Vec::new(),
                policy: None,
                default: None,
                require_mtls: false,
                rules: Vec::new(),
                verdict: None,
                notes: d.notes.clone(),
            });
            continue;
        }
        for (ports, wire) in &d.policies {
            let compiled = InboundPolicy::compile(wire).map_err(|e| {
                anyhow!("the proxy would refuse the inbound policy {:?} of {}: {e}", wire.name, d.backend)
            })?;
            let mut notes = d.notes.clone();
            let verdict = source.map(|s| {
                let v = compiled.authorize(&s.client(), parts);
                VerdictOut { allowed: v.allowed, policy: v.policy.to_string(), rule: v.rule.to_string() }
            });
            if source.is_some_and(|s| s.identity.is_none()) && !compiled.require_mtls {
                notes.push(
                    "plaintext client: this holds only if the destination port is permissive; a strict port \
                     (the proxy's default) refuses plaintext before any policy"
                        .into(),
                );
            }
            if parts.is_none() && compiled.has_http_rules() {
                notes.push("opaque TCP: authorizations with HTTP matches do not apply".into());
            }
            out.push(Authorization {
                backend: d.backend.clone(),
                namespace: namespace.clone(),
                service_account: service_account.clone(),
                ports: ports.clone(),
                policy: Some(compiled.name.clone()),
                default: Some(default_name(wire.default)),
                require_mtls: compiled.require_mtls,
                rules: compiled
                    .authorizations()
                    .iter()
                    .map(|a| RuleOut { name: a.name.clone(), requires: a.describe() })
                    .collect(),
                verdict,
                notes,
            });
        }
    }
    Ok(out)
}
