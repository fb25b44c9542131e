//! Outbound routes: which requests of a target service go where, and how
//! (backends, timeouts, retries, faults, rate limits). First match wins.

use super::ServiceKey;
use super::matches::RequestMatch;
use super::traffic::{
    DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX, DEFAULT_BUFFER_LIMIT, DEFAULT_RETRY_ATTEMPTS, DEFAULT_RETRY_ON,
};
use std::time::Duration;

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
