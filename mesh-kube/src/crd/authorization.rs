//! `AuthorizationPolicy.policy.mesh.dev/v1alpha1`: who may reach a Service's
//! workloads, shaped like Linkerd's AuthorizationPolicy/MeshTLSAuthentication
//! and Istio's AuthorizationPolicy.
//!
//! Semantics are mesh-policy's: a rule allows a client when the client
//! matches every *kind* of criterion the rule lists (who: `serviceAccounts`,
//! `namespaces`, `identities`; where: `networks`), any value within a kind,
//! and, for HTTP, one of the rule's `http` matches.

use super::common::{CIDR, DNS_LABEL, HttpRouteMatch, SPIFFE_ID, ServicePortTargetRef};
use super::status::PolicyStatus;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Who may reach the workloads behind a Service (on one port or all).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "policy.mesh.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    namespaced,
    status = "PolicyStatus",
    shortname = "authz",
    category = "mesh",
    printcolumn = r#"{"name": "Target", "type": "string", "jsonPath": ".spec.targetRef.name"}"#,
    printcolumn = r#"{"name": "Default", "type": "string", "jsonPath": ".spec.default"}"#,
    printcolumn = r#"{"name": "Accepted", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name": "Resolved", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"ResolvedRefs\")].status"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// The Service whose workloads (and optionally which port) this protects.
    pub target_ref: ServicePortTargetRef,
    /// What happens to clients no rule allows; `Deny` when omitted.
    #[serde(default)]
    pub default: DefaultAction,
    /// Refuse clients without mesh mTLS, whatever the rules say.
    #[serde(default)]
    pub require_mtls: bool,
    /// Allow rules; a client (and request) any rule allows is let in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub rules: Vec<AuthorizationRule>,
}

/// The fate of clients no rule allows.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DefaultAction {
    /// Refuse them.
    #[default]
    Deny,
    /// Allow them.
    Allow,
    /// Allow any client with a mesh identity.
    Authenticated,
}

/// One allow rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationRule {
    /// Unique within the policy (shown in metrics and `meshctl policy explain`).
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL))]
    pub name: String,
    /// The clients this rule allows.
    pub from: Clients,
    /// HTTP requests covered (any one); every request when omitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 16))]
    pub http: Vec<HttpRouteMatch>,
}

/// The clients a rule allows: every kind listed must match, any value within a kind.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.serviceAccounts) || has(self.namespaces) || has(self.identities) || has(self.networks)",
    "message": "a rule must allow some clients: list serviceAccounts, namespaces, identities or networks (0.0.0.0/0 and ::/0 allow every network)"
}]))]
pub struct Clients {
    /// Workloads running as these ServiceAccounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 64))]
    pub service_accounts: Vec<ServiceAccountRef>,
    /// Every mesh workload in these namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 63), pattern(DNS_LABEL)))]
    pub namespaces: Vec<String>,
    /// Exact SPIFFE IDs (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 64), inner(length(max = 2048), pattern(SPIFFE_ID)))]
    pub identities: Vec<String>,
    /// Client networks (CIDRs), authenticated or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 64), inner(length(max = 64), pattern(CIDR)))]
    pub networks: Vec<String>,
}

/// A ServiceAccount; in the policy's namespace unless `namespace` is given.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRef {
    /// Its name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its namespace; the policy's when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL))]
    pub namespace: Option<String>,
}
