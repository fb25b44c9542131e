//! The subset of the Gateway API (`gateway.networking.k8s.io/v1`, field names
//! as in Gateway API v1.4's standard channel) the mesh reads: `HTTPRoute`
//! and `GRPCRoute` attached to a Service (GAMMA: a `parentRef` of kind
//! `Service`, group `""`).
//!
//! Real clusters install upstream's Gateway API CRDs (standard channel,
//! v1.4 or later); the mesh does not ship them. These types read upstream
//! objects (fields the mesh does not translate are ignored when reading), and
//! [`crds_for_tests`] renders CRDs for exactly this subset so tests can
//! create routes on an API server without upstream's files.

use crate::crd::common::{DNS_LABEL, DURATION, HttpRouteMatch};
use crate::crd::status::Condition;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A route's parent: for the mesh, a Service (`group: ""`, `kind: Service`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// `""` (core) for a Service; `gateway.networking.k8s.io` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Service` for the mesh; `Gateway` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The parent's namespace; the route's when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The parent's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// For a Service, the name of one of its ports (read so status can
    /// echo the reference exactly; the mesh does not route by it yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub section_name: Option<String>,
    /// One port of the Service; all when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

impl ParentReference {
    /// Whether this parent is a Service (GAMMA), as opposed to a Gateway.
    pub fn is_service(&self) -> bool {
        self.group.as_deref() == Some("") && self.kind.as_deref() == Some("Service")
    }
}

/// A route's `status` (Gateway API `RouteStatus`): one entry per parent
/// and controller. The list is atomic, so a controller rewriting it keeps
/// the entries of other controllers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// The parents' statuses.
    #[serde(default)]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub parents: Vec<RouteParentStatus>,
}

/// The route's status with respect to one parent, as written by one controller.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    /// The `parentRef` of the spec this entry is about, exactly as written there.
    pub parent_ref: ParentReference,
    /// The controller that wrote the entry, `DOMAIN/PATH`.
    #[schemars(
        length(min = 1, max = 253),
        pattern(
            r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$"
        )
    )]
    pub controller_name: String,
    /// `Accepted`, `ResolvedRefs` (and what other controllers add), one per type.
    #[schemars(length(min = 1, max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A weighted backend Service (Gateway API `HTTPBackendRef`/`GRPCBackendRef`, core Services only).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    /// `""` (core) when omitted; only Services are supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Service` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The Service's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its namespace; the route's when omitted (another needs a ReferenceGrant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DNS_LABEL))]
    pub namespace: Option<String>,
    /// The Service port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Relative share of requests, 0-1000000; 1 when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub weight: Option<i32>,
}

/// A rule's filter, by type only: the mesh translates none yet, so a route
/// with filters is reported and not served (rather than served without them).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct RouteFilter {
    /// The filter's type, like `RequestHeaderModifier` or `RequestRedirect`.
    #[serde(rename = "type")]
    pub type_: String,
}

/// Route timeouts (Gateway API `HTTPRouteTimeouts`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteTimeouts {
    /// The whole request, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION))]
    pub request: Option<String>,
    /// Each request to a backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION))]
    pub backend_request: Option<String>,
}

/// Routes for a Service's HTTP traffic.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "gateway.networking.k8s.io", version = "v1", kind = "HTTPRoute", namespaced, status = "RouteStatus")]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// The Services (GAMMA) or Gateways the route attaches to.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub parent_refs: Vec<ParentReference>,
    /// Host names (for routes attached to Gateways; ignored for Services).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub hostnames: Vec<String>,
    /// The rules, in precedence order.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub rules: Vec<HttpRouteRule>,
}

/// One HTTP route rule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// The rule's name (Gateway API v1.3+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any one selects the rule; a `/` prefix when omitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub matches: Vec<HttpRouteMatch>,
    /// Weighted backends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub backend_refs: Vec<BackendRef>,
    /// Timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<HttpRouteTimeouts>,
    /// Filters (none is translated yet: see [`RouteFilter`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub filters: Vec<RouteFilter>,
}

/// A gRPC method condition (Gateway API `GRPCMethodMatch`, type `Exact`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrpcMethodMatch {
    /// `Exact` (the only type translated).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Fully qualified service, like `pkg.Books`; any when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The method, like `Get`; any when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// A gRPC request condition (Gateway API `GRPCRouteMatch`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteMatch {
    /// The method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<GrpcMethodMatch>,
    /// Headers (metadata), all of which must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<crate::crd::common::HttpHeaderMatch>,
}

/// Routes for a Service's gRPC traffic.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "gateway.networking.k8s.io", version = "v1", kind = "GRPCRoute", namespaced, status = "RouteStatus")]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    /// The Services (GAMMA) or Gateways the route attaches to.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub parent_refs: Vec<ParentReference>,
    /// Host names (for routes attached to Gateways; ignored for Services).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub hostnames: Vec<String>,
    /// The rules, in precedence order.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub rules: Vec<GrpcRouteRule>,
}

/// One gRPC route rule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteRule {
    /// The rule's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any one selects the rule; every call when omitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub matches: Vec<GrpcRouteMatch>,
    /// Weighted backends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub backend_refs: Vec<BackendRef>,
    /// Filters (none is translated yet: see [`RouteFilter`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub filters: Vec<RouteFilter>,
}

/// CRDs for exactly this subset, for tests on an API server without
/// upstream's Gateway API CRDs. Not for clusters: install upstream's.
pub fn crds_for_tests() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![HTTPRoute::crd(), GRPCRoute::crd()];
    for crd in &mut crds {
        // `*.k8s.io` groups need an approved API review; upstream's CRDs cite theirs.
        crd.metadata.annotations = Some(
            [
                (
                    "api-approved.kubernetes.io".to_string(),
                    "https://github.com/kubernetes-sigs/gateway-api/pull/3328".to_string(),
                ),
                ("gateway.networking.k8s.io/channel".to_string(), "mesh-test-subset".to_string()),
            ]
            .into(),
        );
    }
    crds
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::common::{HttpMethod, PathMatchType};

    /// An upstream-shaped GAMMA route (with fields the mesh ignores, like
    /// `filters` and `status`) reads into the subset: catches a renamed field
    /// (`backendRefs`, `parentRefs`, `timeouts.request`) that would silently
    /// read as empty.
    #[test]
    fn reads_an_upstream_gamma_http_route() {
        let yaml = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: books-canary, namespace: shop}
spec:
  parentRefs:
  - {group: "", kind: Service, name: books, port: 7001}
  rules:
  - matches:
    - path: {type: PathPrefix, value: /books}
      method: GET
      headers: [{name: x-canary, value: "1"}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: b}]}}]
    backendRefs:
    - {name: books-v2, port: 7001, weight: 90}
    - {name: books-v1, namespace: shop, port: 7001, weight: 10}
    timeouts: {request: 2s}
status: {parents: []}
"#;
        let route: HTTPRoute = serde_saphyr::from_str(yaml).expect("an upstream HTTPRoute reads");
        assert!(route.spec.parent_refs[0].is_service());
        assert_eq!(route.spec.parent_refs[0].port, Some(7001));
        let rule = &route.spec.rules[0];
        let m = &rule.matches[0];
        assert_eq!(m.path.as_ref().map(|p| (p.type_, p.value.as_str())), Some((PathMatchType::PathPrefix, "/books")));
        assert_eq!(m.method, Some(HttpMethod::Get));
        assert_eq!(m.headers[0].name, "x-canary");
        assert_eq!(rule.backend_refs.iter().map(|b| b.weight).collect::<Vec<_>>(), vec![Some(90), Some(10)]);
        assert_eq!(rule.timeouts.as_ref().and_then(|t| t.request.as_deref()), Some("2s"));
        assert_eq!(
            rule.filters[0].type_, "RequestHeaderModifier",
            "filters are seen, so they are never silently dropped"
        );

        let gateway = ParentReference {
            group: None,
            kind: None,
            namespace: None,
            name: "gw".into(),
            section_name: None,
            port: None,
        };
        assert!(!gateway.is_service(), "omitted group and kind mean a Gateway");
    }

    #[test]
    fn reads_an_upstream_gamma_grpc_route() {
        let yaml = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: books, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: books}]
  rules:
  - matches: [{method: {type: Exact, service: pkg.Books, method: Get}}]
    backendRefs: [{name: books-v2, port: 9000}]
"#;
        let route: GRPCRoute = serde_saphyr::from_str(yaml).expect("an upstream GRPCRoute reads");
        let method = route.spec.rules[0].matches[0].method.as_ref().expect("a method match");
        assert_eq!((method.service.as_deref(), method.method.as_deref()), (Some("pkg.Books"), Some("Get")));
        assert_eq!(route.spec.rules[0].backend_refs[0].port, Some(9000));
    }
}
