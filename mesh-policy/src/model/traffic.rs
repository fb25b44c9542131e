//! Per-target-service resilience settings (`trafficPolicy`): circuit
//! breaking, limits, the retry budget, and the retry defaults routes use.

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
