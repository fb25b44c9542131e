//! `TrafficPolicy.policy.mesh.dev/v1alpha1`: how clients treat a Service
//! (circuit breaking, limits, the retry budget), like Istio's
//! DestinationRule `trafficPolicy`.

use super::common::{DURATION, ServiceTargetRef};
use super::status::PolicyStatus;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Resilience settings every client proxy applies to one Service.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "policy.mesh.dev",
    version = "v1alpha1",
    kind = "TrafficPolicy",
    namespaced,
    status = "PolicyStatus",
    shortname = "tp",
    category = "mesh",
    printcolumn = r#"{"name": "Target", "type": "string", "jsonPath": ".spec.targetRef.name"}"#,
    printcolumn = r#"{"name": "Accepted", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name": "Resolved", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"ResolvedRefs\")].status"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    /// The Service, in the policy's namespace.
    pub target_ref: ServiceTargetRef,
    /// Failure accrual per endpoint; off when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Concurrency and connection limits; unlimited when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// How many retries may add to original requests; 20 % + 10/s over 10s when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

/// Ejects an endpoint after consecutive failures, for `baseEjection`
/// doubling up to `maxEjection` while it keeps failing.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.baseEjection) || !has(self.maxEjection) || duration(self.baseEjection) <= duration(self.maxEjection)",
    "message": "maxEjection must not be shorter than baseEjection: ejections grow from base to max",
    "fieldPath": ".maxEjection"
}]))]
pub struct CircuitBreaker {
    /// Consecutive failures that eject an endpoint; 5 when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive_failures: Option<i32>,
    /// First ejection, like `10s`; 10s when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION))]
    pub base_ejection: Option<String>,
    /// Longest ejection, like `5m`; 5m when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION))]
    pub max_ejection: Option<String>,
}

/// Limits per client proxy; 0 or omitted means unlimited.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Requests in flight to the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub max_concurrent_requests: Option<i32>,
    /// Requests waiting for a connection or a concurrency slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub max_pending_requests: Option<i32>,
    /// Connections to one endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub max_connections_per_endpoint: Option<i32>,
}

/// Retries may add `ratio` of the original requests seen over `ttl`, plus
/// `minPerSecond`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Share of original requests, 0-10; 0.2 when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 10.0))]
    pub ratio: Option<f64>,
    /// A floor of retries per second; 10 when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub min_per_second: Option<i32>,
    /// The window requests are counted over, like `10s`; 10s when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION))]
    pub ttl: Option<String>,
}
