use super::*;

fn http(yaml: &str) -> HTTPRoute {
    serde_saphyr::from_str(yaml).expect("an HTTPRoute")
}

fn grpc(yaml: &str) -> GRPCRoute {
    serde_saphyr::from_str(yaml).expect("a GRPCRoute")
}

fn names(policy: &RoutePolicy) -> Vec<&str> {
    policy.rules.iter().map(|r| r.name.as_str()).collect()
}

const CATCH_ALL: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: all, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: books}]
  rules:
  - backendRefs: [{name: books-v1, port: 80}]
"#;

const SPECIFIC: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: specific, namespace: shop, creationTimestamp: "2026-02-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: books, port: 80}, {name: some-gateway}]
  rules:
  - name: prefix
    matches: [{path: {type: PathPrefix, value: /books}}]
    backendRefs: [{name: books-v2, port: 80, weight: 9}, {name: books-v1, port: 80}]
    timeouts: {request: 2s}
  - name: prefix-get
    matches: [{path: {type: PathPrefix, value: /books}, method: GET}]
  - name: exact
    matches: [{path: {type: Exact, value: /books/1}}]
"#;

/// Catches rules served in list order instead of the Gateway API's
/// precedence (a catch-all route created first would take every request),
/// a port policy missing the whole-Service routes, and a port-less policy
/// listed first (it would hide the port's own).
#[test]
fn routes_merge_per_service_port_in_gateway_precedence() {
    let (policies, problems) = routes_from(&[http(CATCH_ALL), http(SPECIFIC)], &[]);
    assert!(problems.is_empty(), "{problems:?}");
    let summary: Vec<_> = policies.iter().map(|p| (p.name.as_str(), p.port)).collect();
    assert_eq!(summary, vec![("gateway-books-80", Some(80)), ("gateway-books", None)]);
    assert_eq!(names(&policies[0]), vec!["specific.exact", "specific.prefix-get", "specific.prefix", "all.rule-0"]);
    assert_eq!(names(&policies[1]), vec!["all.rule-0"], "the Gateway parent is not the mesh's");

    let prefix = &policies[0].rules[2];
    assert_eq!(prefix.timeout, Some(Duration::from_secs(2)));
    let backends: Vec<_> = prefix.backends.iter().map(|b| (b.service.name.as_str(), b.port, b.weight)).collect();
    assert_eq!(backends, vec![("books-v2", Some(80), 9), ("books-v1", Some(80), 1)], "weight defaults to 1");
    assert!(policies[0].rules[1].backends.is_empty(), "no backendRefs: the Service itself");
    assert_eq!(policies[0].rules[3].matches, vec![RequestMatch::default()], "no matches: every request");
}

/// Ties between equally specific matches go to the oldest route.
#[test]
fn ties_go_to_the_oldest_route() {
    let older = http(&CATCH_ALL.replace("name: all", "name: zzz-old"));
    let newer = http(&CATCH_ALL.replace("name: all", "name: aaa-new").replace("2026-01-01", "2026-03-01"));
    let (policies, _) = routes_from(&[newer, older], &[]);
    assert_eq!(names(&policies[0]), vec!["zzz-old.rule-0", "aaa-new.rule-0"]);
}

/// Catches a route served without a filter (a redirect silently dropped),
/// a cross-namespace backend served without a ReferenceGrant, a backend
/// without its port, and a consumer route served as a producer route; the
/// problems name the route and field, and other routes are still served.
#[test]
fn routes_with_problems_are_left_out_whole() {
    let bad = http(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: books}, {group: "", kind: Service, name: books, namespace: other}]
  rules:
  - filters: [{type: RequestRedirect}]
    backendRefs: [{name: a, namespace: other, port: 80}, {name: b}]
"#,
    );
    let (policies, problems) = routes_from(&[bad, http(CATCH_ALL)], &[]);
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 4, "{text:#?}");
    assert!(text[0].starts_with("HTTPRoute shop/bad spec.parentRefs[1].namespace: "), "{text:#?}");
    assert!(text[1].starts_with("HTTPRoute shop/bad spec.rules[0].filters[0]: filter RequestRedirect"), "{text:#?}");
    assert!(text[2].starts_with("HTTPRoute shop/bad spec.rules[0].backendRefs[0].namespace: "), "{text:#?}");
    assert!(text[3].starts_with("HTTPRoute shop/bad spec.rules[0].backendRefs[1].port: "), "{text:#?}");
    assert_eq!(policies.len(), 1);
    assert_eq!(names(&policies[0]), vec!["all.rule-0"]);
}

/// gRPC matches: the longer service and method first, and before HTTP
/// matches of the same Service (they only select gRPC calls).
#[test]
fn grpc_routes_rank_by_service_and_method() {
    let route = grpc(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: rpc, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: books}]
  rules:
  - name: service
    matches: [{method: {service: pkg.Books}}]
    backendRefs: [{name: books-v1, port: 9000}]
  - name: method
    matches: [{method: {type: Exact, service: pkg.Books, method: Get}, headers: [{type: RegularExpression, name: X-Tenant, value: "a.*"}]}]
    backendRefs: [{name: books-v2, port: 9000}]
"#,
    );
    let (policies, problems) = routes_from(&[http(CATCH_ALL)], &[route]);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(names(&policies[0]), vec!["rpc.method", "rpc.service", "all.rule-0"]);
    let m = &policies[0].rules[0].matches[0];
    assert_eq!(m.grpc, Some(GrpcMatch { service: Some("pkg.Books".into()), method: Some("Get".into()) }));
    assert_eq!(
        m.headers,
        vec![HeaderMatch { name: "x-tenant".into(), value: ValueMatch::Regex("a.*".into()) }],
        "a regex header match stays a regex (not an exact match on the pattern)"
    );
}
