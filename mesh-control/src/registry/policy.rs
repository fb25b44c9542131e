//! The policy half of the registry's data model: outbound routes and traffic
//! policies, inbound authorizations. Registries produce these values already
//! validated; `crate::policy` translates them into the Policy API.
//!
//! Matching semantics are the proxy's (`mesh-proxy/src/policy/matcher.rs`):
//! exact paths compare whole paths, prefixes match on segment boundaries
//! (`/api` matches `/api` and `/api/x`, not `/apix`), regexes are anchored
//! (they must match the whole path or value), header names are
//! case-insensitive, methods are case-sensitive, hosts are compared
//! lowercased and without a port.

use crate::registry::model::ServiceKey;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

/// Retry conditions proxies understand: HTTP ones, then gRPC status names.
pub const RETRY_CONDITIONS: &[&str] = &[
    "5xx",
    "gateway-error",
    "connect-failure",
    "reset",
    "cancelled",
    "unknown",
    "deadline-exceeded",
    "resource-exhausted",
    "aborted",
    "internal",
    "unavailable",
    "data-loss",
    "unauthenticated",
];

/// Retry conditions when a rule's `retries` names none.
pub const DEFAULT_RETRY_ON: &[&str] = &["connect-failure", "gateway-error", "unavailable"];

/// Retries after the first attempt when `retries` is given without `attempts`.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
/// First retry backoff.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
/// Longest retry backoff.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(250);
/// Largest request body buffered for retries.
pub const DEFAULT_BUFFER_LIMIT: u64 = 64 * 1024;

/// Per-target-service resilience settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrafficPolicy {
    /// Failure accrual per endpoint.
    pub circuit_breaker: CircuitBreaker,
    /// Concurrency and connection limits.
    pub limits: Limits,
    /// How many retries may be added on top of original requests.
    pub retry_budget: RetryBudget,
}

/// Ejects an endpoint after consecutive failures, for a backoff that grows
/// from `base_ejection` to `max_ejection` while probes keep failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreaker {
    /// Consecutive failures that eject an endpoint; 0 disables.
    pub consecutive_failures: u32,
    /// First ejection.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
}

impl CircuitBreaker {
    /// Failures that eject when `circuitBreaker` is given without a count.
    pub const DEFAULT_FAILURES: u32 = 5;
    /// Default first ejection.
    pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(10);
    /// Default longest ejection.
    pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
}

impl Default for CircuitBreaker {
    /// Off, with the default ejection times.
    fn default() -> Self {
        Self {
            consecutive_failures: 0,
            base_ejection: Self::DEFAULT_BASE_EJECTION,
            max_ejection: Self::DEFAULT_MAX_EJECTION,
        }
    }
}

/// Limits per proxy and target; 0 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Requests in flight to the target.
    pub max_concurrent_requests: u32,
    /// Requests waiting for a connection or a concurrency slot.
    pub max_pending_requests: u32,
    /// Connections to one endpoint.
    pub max_connections_per_endpoint: u32,
}

/// Retries may add `ratio` of the original requests seen over `ttl`, plus
/// `min_per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// Share of original requests.
    pub ratio: f64,
    /// A floor of retries per second.
    pub min_per_second: u32,
    /// The window requests are counted over.
    pub ttl: Duration,
}

impl Default for RetryBudget {
    /// 20 % plus 10 per second, over 10 s.
    fn default() -> Self {
        Self { ratio: 0.2, min_per_second: 10, ttl: Duration::from_secs(10) }
    }
}

/// Outbound routes for one target service (one port, or all of them).
#[derive(Debug, Clone, PartialEq)]
pub struct RoutePolicy {
    /// The policy's name, unique in its namespace.
    pub name: String,
    /// The policy's namespace (the target service's).
    pub namespace: String,
    /// The target service.
    pub service: ServiceKey,
    /// The service port routed; every port when `None`.
    pub port: Option<u16>,
    /// Evaluated in order; the first rule with a matching match wins.
    pub rules: Vec<RouteRule>,
}

impl RoutePolicy {
    /// Whether the policy routes `port` of its service.
    pub fn selects_port(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }
}

/// One route: which requests, where they go, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteRule {
    /// Unique within the policy (`rule-<index>` when the file names none).
    pub name: String,
    /// Any one matching selects the rule; empty matches every request.
    pub matches: Vec<RequestMatch>,
    /// Weighted split; empty means the target service itself.
    pub backends: Vec<Backend>,
    /// Whole-request deadline, retries included.
    pub timeout: Option<Duration>,
    /// Retries; `None` means none.
    pub retry: Option<Retry>,
    /// Fault injection.
    pub fault: Option<Fault>,
    /// Local rate limit.
    pub rate_limit: Option<RateLimit>,
}

/// Conditions on a request; every one given must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestMatch {
    /// The path.
    pub path: Option<PathMatch>,
    /// Headers (names lowercased).
    pub headers: Vec<HeaderMatch>,
    /// The HTTP method, as written (methods are case-sensitive).
    pub method: Option<String>,
    /// The host without port, lowercased.
    pub host: Option<String>,
    /// The gRPC service and method.
    pub grpc: Option<GrpcMatch>,
}

/// How a path is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// A prefix on segment boundaries.
    Prefix(String),
    /// An anchored regex.
    Regex(String),
}

/// One header condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Lowercased header name.
    pub name: String,
    /// The value condition.
    pub value: ValueMatch,
}

/// How a header value is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    /// Equal to.
    Exact(String),
    /// An anchored regex.
    Regex(String),
}

/// A gRPC call: `/service/method`; a missing part matches any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcMatch {
    /// Fully qualified service, e.g. `pkg.Books`.
    pub service: Option<String>,
    /// Method, e.g. `Get`.
    pub method: Option<String>,
}

impl RequestMatch {
    /// Whether every request `other` matches is also matched by `self`.
    ///
    /// Conservative: `false` whenever that cannot be decided syntactically
    /// (regexes are only compared for equality).
    pub fn subsumes(&self, other: &RequestMatch) -> bool {
        let path = match (&self.path, &other.path) {
            (None, _) => true,
            (Some(PathMatch::Prefix(p)), Some(PathMatch::Prefix(q))) => {
                segment_prefix_covers(p, q.trim_end_matches('/'))
            }
            (Some(PathMatch::Prefix(p)), Some(PathMatch::Exact(x))) => segment_prefix_covers(p, x),
            (Some(a), Some(b)) => a == b,
            (Some(_), None) => false,
        };
        let headers = self.headers.iter().all(|h| other.headers.contains(h));
        let method = self.method.is_none() || self.method == other.method;
        let host = self.host.is_none() || self.host == other.host;
        let grpc = match (&self.grpc, &other.grpc) {
            (None, _) => true,
            (Some(a), Some(b)) => {
                (a.service.is_none() || a.service == b.service) && (a.method.is_none() || a.method == b.method)
            }
            (Some(_), None) => false,
        };
        path && headers && method && host && grpc
    }
}

/// Whether the segment prefix `prefix` matches the path `path`.
fn segment_prefix_covers(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty() || path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

/// Compiles a regex the way proxies do (anchored at both ends), to reject
/// one that does not compile before any proxy sees it.
pub fn compile_regex(re: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{re})$"))
}

/// One weighted backend of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The backend service.
    pub service: ServiceKey,
    /// Its port; `None` means the port the route's target resolved to.
    pub port: Option<u16>,
    /// Relative share of requests.
    pub weight: u32,
}

/// Retries of one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Conditions (members of [`RETRY_CONDITIONS`]).
    pub on: Vec<String>,
    /// First backoff.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// Deadline of each attempt.
    pub per_try_timeout: Option<Duration>,
    /// Largest request body buffered for replay.
    pub buffer_limit: u64,
}

impl Default for Retry {
    /// What `retries: {}` means.
    fn default() -> Self {
        Self {
            attempts: DEFAULT_RETRY_ATTEMPTS,
            on: DEFAULT_RETRY_ON.iter().map(|s| s.to_string()).collect(),
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_MAX,
            per_try_timeout: None,
            buffer_limit: DEFAULT_BUFFER_LIMIT,
        }
    }
}

/// Fault injection of one route.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fault {
    /// Answer a share of requests with an error.
    pub abort: Option<Abort>,
    /// Delay a share of requests.
    pub delay: Option<Delay>,
}

/// Abort a share of requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Abort {
    /// 0-100.
    pub percent: f64,
    /// The answer.
    pub status: AbortStatus,
}

/// What an aborted request is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortStatus {
    /// An HTTP status, 100-599.
    Http(u16),
    /// A gRPC error code, 1-16 (0 is OK, which the API cannot tell from unset).
    Grpc(u8),
}

/// Delay a share of requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delay {
    /// 0-100.
    pub percent: f64,
    /// How long.
    pub duration: Duration,
}

/// A token bucket per proxy and route.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained rate, > 0.
    pub requests_per_second: f64,
    /// Bucket size, >= 1.
    pub burst: u32,
}

/// Who may talk to a service's workloads (on one port or all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    /// The policy's name, unique in its namespace.
    pub name: String,
    /// The policy's namespace (the service's).
    pub namespace: String,
    /// The service whose workloads (service account) and ports are selected.
    pub service: ServiceKey,
    /// One service port; all when `None`.
    pub port: Option<u16>,
    /// What happens to clients no rule allows.
    pub default: DefaultAction,
    /// Refuse plaintext clients.
    pub require_mtls: bool,
    /// Each allows some clients (and, for HTTP, some requests).
    pub rules: Vec<AuthorizationRule>,
}

/// The fate of clients no rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultAction {
    /// Refuse them.
    #[default]
    Deny,
    /// Allow them.
    Allow,
    /// Allow any authenticated mesh client.
    Authenticated,
}

/// One allow rule: any of its client conditions, and one of its HTTP matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationRule {
    /// Unique within the policy.
    pub name: String,
    /// Exact SPIFFE IDs.
    pub identities: Vec<String>,
    /// Service accounts, expanded to SPIFFE IDs with the mesh's trust domain.
    pub service_accounts: Vec<ServiceAccountRef>,
    /// Namespaces whose every identity is allowed.
    pub namespaces: Vec<String>,
    /// Unauthenticated client networks.
    pub networks: Vec<Cidr>,
    /// HTTP requests covered; empty means all.
    pub http: Vec<RequestMatch>,
}

/// A service account by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceAccountRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// An IP network: an address with no host bits set, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` is in the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
                u32::from(ip) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix_len)).unwrap_or(0);
                u128::from(ip) & mask == u128::from(net)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Why a string is not a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidCidr(String);

impl FromStr for Cidr {
    type Err = InvalidCidr;

    /// `10.0.0.0/8`, `fd00::/8`, or a bare address (a /32 or /128).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| InvalidCidr(format!("{ip:?} is not an IP address")))?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(len) => match len.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(InvalidCidr(format!("prefix length {len:?} is not a number from 0 to {max}")));
                }
            },
        };
        let host_mask = |bits: u32, len: u8| -> u128 {
            let width = bits - u32::from(len);
            1u128.checked_shl(width).map_or(u128::MAX, |v| v - 1)
        };
        let host_bits = match addr {
            IpAddr::V4(v4) => u128::from(u32::from(v4)) & host_mask(32, prefix_len),
            IpAddr::V6(v6) => u128::from(v6) & host_mask(128, prefix_len),
        };
        if host_bits != 0 {
            let network = Cidr { addr: mask_addr(addr, prefix_len), prefix_len };
            return Err(InvalidCidr(format!(
                "host bits are set after the /{prefix_len} prefix: did you mean {network}?"
            )));
        }
        Ok(Cidr { addr, prefix_len })
    }
}

fn mask_addr(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str) -> RequestMatch {
        RequestMatch { path: Some(PathMatch::Prefix(p.into())), ..Default::default() }
    }

    fn exact(p: &str) -> RequestMatch {
        RequestMatch { path: Some(PathMatch::Exact(p.into())), ..Default::default() }
    }

    #[test]
    fn subsumption_follows_segment_prefixes() {
        let all = RequestMatch::default();
        assert!(all.subsumes(&exact("/x")));
        assert!(!exact("/x").subsumes(&all));
        assert!(prefix("/api").subsumes(&exact("/api")));
        assert!(prefix("/api").subsumes(&exact("/api/v1")));
        assert!(prefix("/api/").subsumes(&prefix("/api/v1/")));
        assert!(prefix("/api").subsumes(&prefix("/api/")));
        assert!(prefix("/").subsumes(&prefix("/anything")));
        assert!(!prefix("/api").subsumes(&exact("/apix")), "not on a segment boundary");
        assert!(!prefix("/api/v1").subsumes(&prefix("/api")));
        assert!(!exact("/api").subsumes(&prefix("/api")));
        let re = RequestMatch { path: Some(PathMatch::Regex("/v.*".into())), ..Default::default() };
        assert!(re.subsumes(&re.clone()));
        assert!(!re.subsumes(&exact("/v1")), "regexes are only compared for equality");
    }

    #[test]
    fn subsumption_of_other_conditions() {
        let header = |v: &str| HeaderMatch { name: "x-canary".into(), value: ValueMatch::Exact(v.into()) };
        let a = RequestMatch { headers: vec![header("1")], ..Default::default() };
        let b = RequestMatch {
            headers: vec![header("1"), HeaderMatch { name: "x-user".into(), value: ValueMatch::Regex("a.*".into()) }],
            method: Some("GET".into()),
            ..Default::default()
        };
        assert!(a.subsumes(&b));
        assert!(!b.subsumes(&a));
        let c = RequestMatch { headers: vec![header("2")], ..Default::default() };
        assert!(!a.subsumes(&c));
        let get = RequestMatch { method: Some("GET".into()), ..Default::default() };
        let post = RequestMatch { method: Some("POST".into()), ..Default::default() };
        assert!(!get.subsumes(&post));
        let svc = |s: Option<&str>, m: Option<&str>| RequestMatch {
            grpc: Some(GrpcMatch { service: s.map(Into::into), method: m.map(Into::into) }),
            ..Default::default()
        };
        assert!(svc(Some("pkg.Books"), None).subsumes(&svc(Some("pkg.Books"), Some("Get"))));
        assert!(!svc(Some("pkg.Books"), Some("Get")).subsumes(&svc(Some("pkg.Books"), None)));
        assert!(!svc(Some("pkg.Books"), None).subsumes(&RequestMatch::default()));
        let host = RequestMatch { host: Some("books.example".into()), ..Default::default() };
        assert!(!host.subsumes(&get));
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "10.0.0.0/8".parse().expect("cidr");
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains("10.1.2.3".parse().expect("ip")));
        assert!(!c.contains("11.0.0.1".parse().expect("ip")));
        assert_eq!("10.0.0.1".parse::<Cidr>().expect("host").to_string(), "10.0.0.1/32");
        assert_eq!("0.0.0.0/0".parse::<Cidr>().expect("all").to_string(), "0.0.0.0/0");
        assert_eq!("fd00::/8".parse::<Cidr>().expect("v6").to_string(), "fd00::/8");
        assert!("::/0".parse::<Cidr>().expect("all v6").contains("::1".parse().expect("ip")));
        let host_bits = "10.0.0.1/8".parse::<Cidr>().expect_err("host bits");
        assert!(host_bits.to_string().contains("did you mean 10.0.0.0/8"), "{host_bits}");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0/".parse::<Cidr>().is_err());
        assert!("ten/8".parse::<Cidr>().is_err());
        assert!("fd00::1/129".parse::<Cidr>().is_err());
    }

    #[test]
    fn anchored_regexes() {
        let re = compile_regex("/v[0-9]+").expect("compiles");
        assert!(re.is_match("/v1") && !re.is_match("/v1/x"));
        assert!(compile_regex("(").is_err());
    }
}
