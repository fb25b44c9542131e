//! Resilience settings: a service's `trafficPolicy` (circuit breaker,
//! limits, retry budget) and a route rule's timeout, retries, faults and
//! rate limit; with the value checks (durations, counts, percentages) every
//! policy section shares.

use super::check::Checker;
use super::text::quote;
use crate::model::ServiceKey;
use mesh_policy::model::{
    Abort, AbortStatus, CircuitBreaker, DEFAULT_BUFFER_LIMIT, DEFAULT_RETRY_ON, Delay, Fault, Limits, RETRY_CONDITIONS,
    RateLimit, Retry, RetryBudget, TrafficPolicy,
};
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::time::Duration;

/// Most retries of one request.
const MAX_RETRY_ATTEMPTS: u32 = 10;
/// Largest retry buffer (per request).
const MAX_BUFFER_LIMIT: u64 = 64 * 1024 * 1024;
/// Largest retry budget ratio.
const MAX_RETRY_RATIO: f64 = 10.0;
/// Largest rate limit.
const MAX_REQUESTS_PER_SECOND: f64 = 1e9;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawTrafficPolicy {
    #[serde(default)]
    circuit_breaker: Option<Spanned<RawCircuitBreaker>>,
    #[serde(default)]
    limits: Option<Spanned<RawLimits>>,
    #[serde(default)]
    retry_budget: Option<Spanned<RawRetryBudget>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCircuitBreaker {
    #[serde(default)]
    consecutive_failures: Option<Spanned<i64>>,
    #[serde(default)]
    base_ejection: Option<Spanned<String>>,
    #[serde(default)]
    max_ejection: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawLimits {
    #[serde(default)]
    max_concurrent_requests: Option<Spanned<i64>>,
    #[serde(default)]
    max_pending_requests: Option<Spanned<i64>>,
    #[serde(default)]
    max_connections_per_endpoint: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRetryBudget {
    #[serde(default)]
    ratio: Option<Spanned<f64>>,
    #[serde(default)]
    min_per_second: Option<Spanned<i64>>,
    #[serde(default)]
    ttl: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawRetry {
    #[serde(default)]
    attempts: Option<Spanned<i64>>,
    #[serde(default)]
    on: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    backoff: Option<Spanned<RawBackoff>>,
    #[serde(default)]
    per_try_timeout: Option<Spanned<String>>,
    #[serde(default)]
    buffer_limit: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawBackoff {
    #[serde(default)]
    base: Option<Spanned<String>>,
    #[serde(default)]
    max: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawFaults {
    #[serde(default)]
    abort: Option<Spanned<RawAbort>>,
    #[serde(default)]
    delay: Option<Spanned<RawDelay>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAbort {
    #[serde(default)]
    percent: Option<Spanned<f64>>,
    #[serde(default)]
    http_status: Option<Spanned<i64>>,
    #[serde(default)]
    grpc_status: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDelay {
    #[serde(default)]
    percent: Option<Spanned<f64>>,
    duration: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawRateLimit {
    requests_per_second: Spanned<f64>,
    #[serde(default)]
    burst: Option<Spanned<i64>>,
}

impl Checker {
    /// A service's traffic policy; defaults fill what the file leaves out.
    pub(super) fn traffic_policy(&mut self, key: &ServiceKey, raw: Spanned<RawTrafficPolicy>) -> TrafficPolicy {
        let object = format!("service {}", quote(&key.name));
        let raw = raw.value;
        let mut policy = TrafficPolicy::default();
        if let Some(cb) = raw.circuit_breaker {
            policy.circuit_breaker = self.circuit_breaker(&object, cb.value);
        }
        if let Some(limits) = raw.limits {
            let limits = limits.value;
            let mut count = |field: &str, value: Option<Spanned<i64>>| match value {
                Some(v) => self.count(&object, &format!("trafficPolicy.limits.{field}"), &v, u32::MAX).unwrap_or(0),
                None => 0,
            };
            policy.limits = Limits {
                max_concurrent_requests: count("maxConcurrentRequests", limits.max_concurrent_requests),
                max_pending_requests: count("maxPendingRequests", limits.max_pending_requests),
                max_connections_per_endpoint: count("maxConnectionsPerEndpoint", limits.max_connections_per_endpoint),
            };
        }
        if let Some(budget) = raw.retry_budget {
            policy.retry_budget = self.retry_budget(&object, budget.value);
        }
        policy
    }

    fn circuit_breaker(&mut self, object: &str, raw: RawCircuitBreaker) -> CircuitBreaker {
        let mut cb = CircuitBreaker { consecutive_failures: CircuitBreaker::DEFAULT_FAILURES, ..Default::default() };
        let field = |name: &str| format!("trafficPolicy.circuitBreaker.{name}");
        if let Some(n) = &raw.consecutive_failures {
            cb.consecutive_failures = self.count(object, &field("consecutiveFailures"), n, 1_000_000).unwrap_or(0);
        }
        let mut parsed = true;
        if let Some(base) = &raw.base_ejection {
            let name = field("baseEjection");
            match self.duration(object, &name, base) {
                Some(d) if d.is_zero() => self.fail(&base.referenced, object, &name, "use a duration above 0"),
                Some(d) => cb.base_ejection = d,
                None => parsed = false,
            }
        }
        if let Some(max) = &raw.max_ejection {
            match self.duration(object, &field("maxEjection"), max) {
                Some(d) => cb.max_ejection = d,
                None => parsed = false,
            }
        }
        if parsed && cb.max_ejection < cb.base_ejection {
            let (at, name) = match (&raw.max_ejection, &raw.base_ejection) {
                (Some(max), _) => (max.referenced, "maxEjection"),
                (None, Some(base)) => (base.referenced, "baseEjection"),
                (None, None) => return cb,
            };
            let message = format!(
                "maxEjection ({}) is shorter than baseEjection ({}): ejections grow from base to max",
                show(cb.max_ejection),
                show(cb.base_ejection)
            );
            self.fail(&at, object, &field(name), message);
        }
        cb
    }

    fn retry_budget(&mut self, object: &str, raw: RawRetryBudget) -> RetryBudget {
        let mut budget = RetryBudget::default();
        if let Some(ratio) = &raw.ratio {
            if ratio.value.is_finite() && (0.0..=MAX_RETRY_RATIO).contains(&ratio.value) {
                budget.ratio = ratio.value;
            } else {
                let message = format!(
                    "{} is out of range: use 0 to {MAX_RETRY_RATIO} (0.2 allows 20% more requests)",
                    ratio.value
                );
                self.fail(&ratio.referenced, object, "trafficPolicy.retryBudget.ratio", message);
            }
        }
        if let Some(min) = &raw.min_per_second {
            let field = "trafficPolicy.retryBudget.minPerSecond";
            budget.min_per_second = self.count(object, field, min, 1_000_000).unwrap_or(0);
        }
        if let Some(ttl) = &raw.ttl {
            let field = "trafficPolicy.retryBudget.ttl";
            match self.duration(object, field, ttl) {
                Some(d) if d.is_zero() => self.fail(&ttl.referenced, object, field, "use a duration above 0"),
                Some(d) => budget.ttl = d,
                None => {}
            }
        }
        budget
    }

    /// A rule's retries; `object` names the rule.
    pub(super) fn retry(&mut self, object: &str, raw: RawRetry) -> Retry {
        let mut retry = Retry::default();
        if let Some(n) = &raw.attempts {
            retry.attempts = self.count(object, "retries.attempts", n, MAX_RETRY_ATTEMPTS).unwrap_or(0);
        }
        if let Some(on) = raw.on {
            if on.value.is_empty() {
                let message = format!(
                    "the list is empty: name conditions, or omit \"on\" for the default ({})",
                    DEFAULT_RETRY_ON.join(", ")
                );
                self.fail(&on.referenced, object, "retries.on", message);
            }
            retry.on.clear();
            for (i, condition) in on.value.iter().enumerate() {
                let field = format!("retries.on[{i}]");
                let name = condition.value.trim();
                if !RETRY_CONDITIONS.contains(&name) {
                    let message = format!(
                        "unknown retry condition {}: use one of {}",
                        quote(&condition.value),
                        RETRY_CONDITIONS.join(", ")
                    );
                    self.fail(&condition.referenced, object, &field, message);
                } else if retry.on.iter().any(|c| c == name) {
                    let message = format!("{} is listed twice: list each condition once", quote(name));
                    self.fail(&condition.referenced, object, &field, message);
                } else {
                    retry.on.push(name.to_string());
                }
            }
        }
        if let Some(backoff) = raw.backoff {
            let backoff = backoff.value;
            let mut parsed = true;
            if let Some(base) = &backoff.base {
                match self.duration(object, "retries.backoff.base", base) {
                    Some(d) => retry.backoff_base = d,
                    None => parsed = false,
                }
            }
            if let Some(max) = &backoff.max {
                match self.duration(object, "retries.backoff.max", max) {
                    Some(d) => retry.backoff_max = d,
                    None => parsed = false,
                }
            }
            if parsed && retry.backoff_max < retry.backoff_base {
                let at = match (&backoff.max, &backoff.base) {
                    (Some(max), _) => Some((max.referenced, "retries.backoff.max")),
                    (None, Some(base)) => Some((base.referenced, "retries.backoff.base")),
                    (None, None) => None,
                };
                if let Some((at, field)) = at {
                    let message = format!(
                        "max ({}) is shorter than base ({}): backoff grows from base to max",
                        show(retry.backoff_max),
                        show(retry.backoff_base)
                    );
                    self.fail(&at, object, field, message);
                }
            }
        }
        if let Some(per_try) = &raw.per_try_timeout {
            match self.duration(object, "retries.perTryTimeout", per_try) {
                Some(d) if d.is_zero() => self.fail(
                    &per_try.referenced,
                    object,
                    "retries.perTryTimeout",
                    "use a duration above 0, or omit it for no per-attempt timeout",
                ),
                other => retry.per_try_timeout = other,
            }
        }
        if let Some(limit) = &raw.buffer_limit {
            match u64::try_from(limit.value) {
                Ok(n) if n <= MAX_BUFFER_LIMIT => retry.buffer_limit = n,
                _ => {
                    let message = format!(
                        "{} is out of range: use 0-{MAX_BUFFER_LIMIT} bytes (0 retries only requests without a body)",
                        limit.value
                    );
                    self.fail(&limit.referenced, object, "retries.bufferLimit", message);
                    retry.buffer_limit = DEFAULT_BUFFER_LIMIT;
                }
            }
        }
        retry
    }

    /// A rule's fault injection; `object` names the rule.
    pub(super) fn faults(&mut self, object: &str, raw: Spanned<RawFaults>) -> Fault {
        let at = raw.referenced;
        let raw = raw.value;
        if raw.abort.is_none() && raw.delay.is_none() {
            self.fail(&at, object, "faults", "give abort, delay or both (or remove faults)");
        }
        let abort = raw.abort.and_then(|abort| {
            let at = abort.referenced;
            let abort = abort.value;
            let percent = self.percent(object, "faults.abort.percent", abort.percent.as_ref());
            let status = match (&abort.http_status, &abort.grpc_status) {
                (Some(http), None) => match u16::try_from(http.value) {
                    Ok(code) if (100..=599).contains(&code) => Some(AbortStatus::Http(code)),
                    _ => {
                        let message = format!("{} is not an HTTP status: use 100-599", http.value);
                        self.fail(&http.referenced, object, "faults.abort.httpStatus", message);
                        None
                    }
                },
                (None, Some(grpc)) => match u8::try_from(grpc.value) {
                    Ok(code) if (1..=16).contains(&code) => Some(AbortStatus::Grpc(code)),
                    Ok(0) => {
                        let message = "0 is OK, not an error: use a gRPC error code, 1-16";
                        self.fail(&grpc.referenced, object, "faults.abort.grpcStatus", message);
                        None
                    }
                    _ => {
                        let message = format!("{} is not a gRPC status code: use 1-16", grpc.value);
                        self.fail(&grpc.referenced, object, "faults.abort.grpcStatus", message);
                        None
                    }
                },
                (Some(_), Some(_)) => {
                    let message = "give either httpStatus or grpcStatus, not both";
                    self.fail(&at, object, "faults.abort", message);
                    None
                }
                (None, None) => {
                    let message = "give the status to answer with: httpStatus (100-599) or grpcStatus (1-16)";
                    self.fail(&at, object, "faults.abort", message);
                    None
                }
            };
            Some(Abort { percent: percent?, status: status? })
        });
        let delay = raw.delay.and_then(|delay| {
            let delay = delay.value;
            let percent = self.percent(object, "faults.delay.percent", delay.percent.as_ref());
            let duration = self.duration(object, "faults.delay.duration", &delay.duration);
            Some(Delay { percent: percent?, duration: duration? })
        });
        Fault { abort, delay }
    }

    /// A rule's local rate limit; `object` names the rule.
    pub(super) fn rate_limit(&mut self, object: &str, raw: RawRateLimit) -> Option<RateLimit> {
        let rps = &raw.requests_per_second;
        let requests_per_second = if rps.value.is_finite() && rps.value > 0.0 && rps.value <= MAX_REQUESTS_PER_SECOND {
            Some(rps.value)
        } else {
            let message =
                format!("{} is out of range: use a number above 0 (up to {MAX_REQUESTS_PER_SECOND})", rps.value);
            self.fail(&rps.referenced, object, "rateLimit.requestsPerSecond", message);
            None
        };
        let burst = match &raw.burst {
            Some(burst) => match u32::try_from(burst.value) {
                Ok(b) if b >= 1 => Some(b),
                _ => {
                    let message = format!("{} is out of range: use 1-{}", burst.value, u32::MAX);
                    self.fail(&burst.referenced, object, "rateLimit.burst", message);
                    None
                }
            },
            // A second's worth of requests.
            None => requests_per_second.map(|rps| rps.ceil().clamp(1.0, f64::from(u32::MAX)) as u32),
        };
        Some(RateLimit { requests_per_second: requests_per_second?, burst: burst? })
    }

    /// A duration such as `250ms` or `5m`: 0, or at least a millisecond (the
    /// API's resolution).
    pub(super) fn duration(&mut self, object: &str, field: &str, value: &Spanned<String>) -> Option<Duration> {
        match mesh_core::duration::parse(&value.value) {
            Ok(d) if !d.is_zero() && d < Duration::from_millis(1) => {
                let message = format!("{} is shorter than 1ms, the finest resolution", quote(&value.value));
                self.fail(&value.referenced, object, field, message);
                None
            }
            Ok(d) => Some(d),
            Err(err) => {
                self.fail(&value.referenced, object, field, err);
                None
            }
        }
    }

    /// A whole number from 0 to `max`.
    pub(super) fn count(&mut self, object: &str, field: &str, value: &Spanned<i64>, max: u32) -> Option<u32> {
        match u32::try_from(value.value) {
            Ok(n) if n <= max => Some(n),
            _ => {
                self.fail(&value.referenced, object, field, format!("{} is out of range: use 0-{max}", value.value));
                None
            }
        }
    }

    /// A share of requests, 0-100; 100 when not given.
    fn percent(&mut self, object: &str, field: &str, value: Option<&Spanned<f64>>) -> Option<f64> {
        let Some(value) = value else { return Some(100.0) };
        if value.value.is_finite() && (0.0..=100.0).contains(&value.value) {
            return Some(value.value);
        }
        self.fail(&value.referenced, object, field, format!("{} is out of range: use 0-100", value.value));
        None
    }
}

/// A duration as written in the file.
fn show(d: Duration) -> String {
    let ms = d.as_millis();
    if ms > 0 && ms.checked_rem(60_000) == Some(0) {
        format!("{}m", ms / 60_000)
    } else if ms > 0 && ms.checked_rem(1000) == Some(0) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}
