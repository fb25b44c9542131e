//! Outbound policy, compiled: routes (first match wins), their backends,
//! timeouts, retries, faults and rate limits, and the target's circuit
//! breaker, limits and retry budget.

use super::budget::RetryBudget;
use super::matcher::{self, InvalidPolicy, Match};
use super::ratelimit::TokenBucket;
use http::request::Parts;
use mesh_proto::policy as pb;
use std::sync::Arc;
use std::time::Duration;

fn dur(d: &Option<pb::Duration>) -> Duration {
    Duration::from_millis(d.as_ref().map_or(0, |d| d.millis))
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// When a failed attempt may be retried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// Any 5xx.
    pub server_error: bool,
    /// 502, 503, 504.
    pub gateway_error: bool,
    /// The proxy could not connect (the request was never sent).
    pub connect_failure: bool,
    /// The connection broke before a response.
    pub reset: bool,
    /// gRPC status codes (from trailers-only responses).
    pub grpc: Vec<u32>,
}

/// gRPC status names as retry conditions.
pub const GRPC_CODES: [(&str, u32); 9] = [
    ("cancelled", 1),
    ("unknown", 2),
    ("deadline-exceeded", 4),
    ("resource-exhausted", 8),
    ("aborted", 10),
    ("internal", 13),
    ("unavailable", 14),
    ("data-loss", 15),
    ("unauthenticated", 16),
];

impl RetryOn {
    fn parse(on: &[String]) -> Result<Self, InvalidPolicy> {
        let mut r = RetryOn::default();
        for c in on {
            match c.as_str() {
                "5xx" => r.server_error = true,
                "gateway-error" => r.gateway_error = true,
                "connect-failure" => r.connect_failure = true,
                "reset" => r.reset = true,
                other => match GRPC_CODES.iter().find(|(n, _)| *n == other) {
                    Some((_, code)) => r.grpc.push(*code),
                    None => return Err(InvalidPolicy(format!("unknown retry condition {other:?}"))),
                },
            }
        }
        Ok(r)
    }
}

/// A route's retry policy.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Attempts after the first.
    pub max_retries: u32,
    /// What is retried.
    pub on: RetryOn,
    /// Backoff before the first retry; doubles up to `backoff_max`.
    pub backoff_base: Duration,
    /// Largest backoff.
    pub backoff_max: Duration,
    /// Deadline for each attempt.
    pub per_try_timeout: Option<Duration>,
    /// Largest body buffered for replay.
    pub buffer_limit: usize,
}

/// A route's fault injection.
#[derive(Debug, Clone, Default)]
pub struct Fault {
    /// Percent of requests aborted.
    pub abort_percent: f64,
    /// HTTP status of aborts (when not gRPC).
    pub abort_http: u16,
    /// gRPC status of aborts, when set.
    pub abort_grpc: Option<u32>,
    /// Percent of requests delayed.
    pub delay_percent: f64,
    /// The delay.
    pub delay: Duration,
}

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    /// `<policy>/<rule>`.
    pub name: Arc<str>,
    /// Requests that took the route (resolved once, on first use).
    pub requests: std::sync::OnceLock<prometheus_client::metrics::counter::Counter>,
    matches: Vec<Match>,
    /// Weighted backends (target, weight); empty means the target itself.
    pub backends: Vec<(String, u32)>,
    /// Whole-request deadline.
    pub timeout: Option<Duration>,
    /// Retries, if enabled.
    pub retry: Option<Retry>,
    /// Fault injection, if any.
    pub fault: Option<Fault>,
    /// Local rate limit, if any.
    pub rate_limit: Option<TokenBucket>,
}

impl Route {
    fn compile(r: &pb::Route) -> Result<Self, InvalidPolicy> {
        let matches = r.matches.iter().map(Match::compile).collect::<Result<_, _>>()?;
        let backends: Vec<(String, u32)> = r.backends.iter().map(|b| (b.target.clone(), b.weight)).collect();
        if !backends.is_empty() && backends.iter().all(|(_, w)| *w == 0) {
            return Err(InvalidPolicy(format!("route {}: backend weights sum to 0", r.name)));
        }
        let retry = match &r.retry {
            Some(rt) if rt.max_retries > 0 => Some(Retry {
                max_retries: rt.max_retries,
                on: RetryOn::parse(&rt.on)?,
                backoff_base: dur(&rt.backoff_base),
                backoff_max: dur(&rt.backoff_max).max(dur(&rt.backoff_base)),
                per_try_timeout: nonzero(dur(&rt.per_try_timeout)),
                buffer_limit: usize::try_from(rt.buffer_limit_bytes).unwrap_or(usize::MAX),
            }),
            _ => None,
        };
        let fault = r.fault.as_ref().filter(|f| f.abort_percent > 0.0 || f.delay_percent > 0.0).map(|f| Fault {
            abort_percent: f.abort_percent,
            abort_http: u16::try_from(f.abort_http_status).unwrap_or(500),
            abort_grpc: (f.abort_grpc_status > 0).then_some(f.abort_grpc_status),
            delay_percent: f.delay_percent,
            delay: dur(&f.delay),
        });
        let rate_limit = r
            .rate_limit
            .as_ref()
            .filter(|l| l.requests_per_second > 0.0)
            .map(|l| TokenBucket::new(l.requests_per_second, l.burst));
        Ok(Self {
            name: r.name.as_str().into(),
            requests: std::sync::OnceLock::new(),
            matches,
            backends,
            timeout: nonzero(dur(&r.timeout)),
            retry,
            fault,
            rate_limit,
        })
    }

    /// Whether the route takes this request.
    pub fn matches(&self, req: &Parts) -> bool {
        matcher::any(&self.matches, req)
    }
}

/// Failure accrual settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Breaker {
    /// Consecutive failures that eject an endpoint; 0 disables.
    pub consecutive_failures: u32,
    /// First ejection; doubles with each consecutive ejection.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
}

/// Concurrency limits; 0 is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Requests in flight to the target.
    pub max_concurrent: u32,
    /// Requests waiting for an endpoint or a connection.
    pub max_pending: u32,
    /// Connections to each endpoint.
    pub max_connections_per_endpoint: u32,
}

/// A target's compiled outbound policy.
#[derive(Debug)]
pub struct OutboundPolicy {
    /// The service (`name.ns:port`), when known.
    pub service: Option<String>,
    /// Routes in order.
    pub routes: Vec<Route>,
    /// Failure accrual.
    pub breaker: Breaker,
    /// Limits.
    pub limits: Limits,
    /// The retry budget shared by the target's routes.
    pub budget: Arc<RetryBudget>,
    /// No answer from the control plane yet.
    pub pending: bool,
}

impl OutboundPolicy {
    /// The placeholder until the control plane's first answer.
    pub fn pending() -> Self {
        Self { pending: true, ..Self::default() }
    }

    /// Whether this is the placeholder.
    pub fn is_pending(&self) -> bool {
        self.pending
    }
}

impl Default for OutboundPolicy {
    fn default() -> Self {
        Self {
            service: None,
            routes: Vec::new(),
            breaker: Breaker::default(),
            limits: Limits::default(),
            budget: Arc::new(RetryBudget::new(0.2, 10, Duration::from_secs(10))),
            pending: false,
        }
    }
}

impl OutboundPolicy {
    /// Compiles a wire policy.
    pub fn compile(p: &pb::OutboundPolicy) -> Result<Self, InvalidPolicy> {
        let routes = p.routes.iter().map(Route::compile).collect::<Result<_, _>>()?;
        let breaker = p.circuit_breaker.as_ref().map_or_else(Breaker::default, |c| Breaker {
            consecutive_failures: c.consecutive_failures,
            base_ejection: dur(&c.base_ejection).max(Duration::from_millis(1)),
            max_ejection: dur(&c.max_ejection).max(dur(&c.base_ejection)),
        });
        let limits = p.limits.as_ref().map_or_else(Limits::default, |l| Limits {
            max_concurrent: l.max_concurrent_requests,
            max_pending: l.max_pending_requests,
            max_connections_per_endpoint: l.max_connections_per_endpoint,
        });
        let budget = match &p.retry_budget {
            Some(b) => RetryBudget::new(b.retry_ratio, b.min_retries_per_second, dur(&b.ttl)),
            None => RetryBudget::new(0.2, 10, Duration::from_secs(10)),
        };
        let service = (p.exists && !p.service.is_empty()).then(|| p.service.clone());
        Ok(Self { service, routes, breaker, limits, budget: Arc::new(budget), pending: false })
    }

    /// The first route that takes `req`.
    pub fn route(&self, req: &Parts) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, prefix: Option<&str>, backends: &[(&str, u32)]) -> pb::Route {
        pb::Route {
            name: name.into(),
            matches: prefix
                .map(|p| {
                    vec![pb::Match {
                        path: Some(pb::PathMatch { kind: Some(pb::path_match::Kind::Prefix(p.into())) }),
                        ..Default::default()
                    }]
                })
                .unwrap_or_default(),
            backends: backends.iter().map(|(t, w)| pb::Backend { target: (*t).into(), weight: *w }).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn first_matching_route_wins() {
        let p = pb::OutboundPolicy {
            exists: true,
            service: "books.default:80".into(),
            routes: vec![route("p/api", Some("/api"), &[("v2.default:80", 1)]), route("p/all", None, &[])],
            ..Default::default()
        };
        let c = OutboundPolicy::compile(&p).expect("compiles");
        let get = |uri: &str| http::Request::get(uri).body(()).expect("req").into_parts().0;
        assert_eq!(c.route(&get("/api/x")).map(|r| &*r.name), Some("p/api"));
        assert_eq!(c.route(&get("/other")).map(|r| &*r.name), Some("p/all"));
    }

    #[test]
    fn refuses_zero_weights_and_unknown_conditions() {
        let p = pb::OutboundPolicy { routes: vec![route("r", None, &[("a", 0), ("b", 0)])], ..Default::default() };
        assert!(OutboundPolicy::compile(&p).is_err());
        let mut r = route("r", None, &[]);
        r.retry = Some(pb::Retry { max_retries: 1, on: vec!["sometimes".into()], ..Default::default() });
        let p = pb::OutboundPolicy { routes: vec![r], ..Default::default() };
        assert!(OutboundPolicy::compile(&p).is_err());
    }
}
