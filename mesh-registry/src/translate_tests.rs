use super::*;
use crate::file::parse;
use crate::model::RegistrySnapshot;
use mesh_proto::policy as pb;
use std::path::Path;

const REGISTRY: &str = "\
services:
  - name: books
    addresses: [10.96.0.10]
    ports: [{port: 7001, targetPort: 8001}, {port: 7002}]
    endpoints: [{ip: 10.0.0.5}]
    trafficPolicy:
      circuitBreaker: {consecutiveFailures: 3, baseEjection: 1s, maxEjection: 1m}
      limits: {maxConcurrentRequests: 100}
  - name: books-v2
    ports: [{port: 7001}, {port: 7002}]
  - name: web
    ports: [{port: 80}]
  - name: shelf
    namespace: shop
    serviceAccount: shelf-sa
    ports: [{port: 9000}]
    endpoints: [{address: \"127.0.0.1:4243\"}, {address: \"127.0.0.1:4244\"}]
routes:
  - name: books-routes
    service: books
    port: 7001
    rules:
      - name: canary
        matches: [{headers: [{name: x-canary, exact: \"1\"}]}, {path: {prefix: /v2}, method: GET}]
        backends: [{service: books, weight: 90}, {service: books-v2, weight: 10}]
        timeout: 2s
        retries: {on: [5xx], perTryTimeout: 500ms}
        faults: {abort: {percent: 10, grpcStatus: 14}, delay: {percent: 5, duration: 100ms}}
        rateLimit: {requestsPerSecond: 50, burst: 5}
      - name: rest
  - name: v2-routes
    service: books-v2
    rules: [{backends: [{service: books-v2}]}]
authorizations:
  - name: books-authz
    service: books
    port: 7001
    default: deny
    requireMtls: true
    rules:
      - name: web
        identities: [spiffe://other.domain/ns/x/sa/y]
        serviceAccounts: [web, shop/cart]
        namespaces: [ops]
        networks: [10.0.0.0/8]
        http: [{path: {prefix: /admin}, method: GET}]
  - name: shelf-authz
    namespace: shop
    service: shelf
    default: authenticated
";

fn snapshot() -> RegistrySnapshot {
    match parse(Path::new("registry.yaml"), REGISTRY) {
        Ok(s) => s,
        Err(e) => panic!("test registry is invalid:\n{e}"),
    }
}

fn t(s: &str) -> Target {
    s.parse().expect("target")
}

fn ms(millis: u64) -> Option<pb::Duration> {
    Some(pb::Duration { millis })
}

#[test]
fn outbound_routes_follow_the_rules_in_order() {
    let policy = outbound_policy(&snapshot(), &t("books.default:7001"));
    assert!(policy.exists);
    assert_eq!(policy.service, "books.default:7001");
    let names: Vec<&str> = policy.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["books-routes/canary", "books-routes/rest"]);

    let canary = &policy.routes[0];
    assert_eq!(
        canary.matches,
        vec![
            pb::Match {
                headers: vec![pb::HeaderMatch {
                    name: "x-canary".into(),
                    value: Some(pb::header_match::Value::Exact("1".into())),
                }],
                ..Default::default()
            },
            pb::Match {
                path: Some(pb::PathMatch { kind: Some(pb::path_match::Kind::Prefix("/v2".into())) }),
                method: "GET".into(),
                ..Default::default()
            },
        ]
    );
    let backends: Vec<(&str, u32)> = canary.backends.iter().map(|b| (b.target.as_str(), b.weight)).collect();
    assert_eq!(backends, [("books.default:7001", 90), ("books-v2.default:7001", 10)]);
    assert_eq!(canary.timeout, ms(2000));
    assert_eq!(
        canary.retry,
        Some(pb::Retry {
            max_retries: 2,
            on: vec!["5xx".into()],
            backoff_base: ms(25),
            backoff_max: ms(250),
            per_try_timeout: ms(500),
            buffer_limit_bytes: 65536,
        })
    );
    assert_eq!(
        canary.fault,
        Some(pb::Fault {
            abort_percent: 10.0,
            abort_http_status: 0,
            abort_grpc_status: 14,
            delay_percent: 5.0,
            delay: ms(100),
        })
    );
    assert_eq!(canary.rate_limit, Some(pb::RateLimit { requests_per_second: 50.0, burst: 5 }));

    // A bare rule: every request, to the target itself, no retries.
    let rest = &policy.routes[1];
    assert!(rest.matches.is_empty() && rest.backends.is_empty());
    assert_eq!((rest.timeout, &rest.fault, &rest.rate_limit), (None, &None, &None));
    let retry = rest.retry.as_ref().expect("retry settings are always sent");
    assert_eq!((retry.max_retries, retry.on.len(), retry.buffer_limit_bytes), (0, 3, 65536));
}

#[test]
fn traffic_policy_and_defaults() {
    let snapshot = snapshot();
    let books = outbound_policy(&snapshot, &t("books.default:7002"));
    assert_eq!(
        books.circuit_breaker,
        Some(pb::CircuitBreaker { consecutive_failures: 3, base_ejection: ms(1000), max_ejection: ms(60_000) })
    );
    assert_eq!(
        books.limits,
        Some(pb::Limits { max_concurrent_requests: 100, max_pending_requests: 0, max_connections_per_endpoint: 0 })
    );
    let defaults = Some(pb::RetryBudget { retry_ratio: 0.2, min_retries_per_second: 10, ttl: ms(10_000) });
    assert_eq!(books.retry_budget, defaults);
    assert!(books.routes.is_empty(), "the route policy is for port 7001 only");

    let web = outbound_policy(&snapshot, &t("web.default:80"));
    assert!(web.exists && web.routes.is_empty());
    assert_eq!(
        web.circuit_breaker,
        Some(pb::CircuitBreaker { consecutive_failures: 0, base_ejection: ms(10_000), max_ejection: ms(300_000) })
    );
    assert_eq!(web.limits, Some(pb::Limits::default()));
    assert_eq!(web.retry_budget, defaults);
}

#[test]
fn backends_without_a_port_follow_the_target_port() {
    let snapshot = snapshot();
    for port in [7001, 7002] {
        let policy = outbound_policy(&snapshot, &t(&format!("books-v2.default:{port}")));
        assert_eq!(policy.routes.len(), 1, "a policy without port routes every port");
        assert_eq!(policy.routes[0].name, "v2-routes/rule-0");
        assert_eq!(policy.routes[0].backends[0].target, format!("books-v2.default:{port}"));
        assert_eq!(policy.routes[0].backends[0].weight, 1);
    }
}

#[test]
fn addresses_resolve_like_the_destination_api() {
    let snapshot = snapshot();
    let by_name = outbound_policy(&snapshot, &t("books.default:7001"));
    assert_eq!(outbound_policy(&snapshot, &t("books:7001")), by_name);
    assert_eq!(outbound_policy(&snapshot, &t("books.default.svc.cluster.local:7001")), by_name);
    assert_eq!(outbound_policy(&snapshot, &t("10.96.0.10:7001")), by_name, "a virtual IP");
    assert_eq!(outbound_policy(&snapshot, &t("10.0.0.5:8001")), by_name, "an endpoint at the target port");
    assert_eq!(outbound_policy(&snapshot, &t("10.96.0.10:7002")).service, "books.default:7002");

    for unknown in ["10.9.9.9:80", "nope.default:80", "books.default:7003", "10.96.0.10:8001"] {
        let policy = outbound_policy(&snapshot, &t(unknown));
        assert!(!policy.exists && policy.service.is_empty() && policy.routes.is_empty(), "{unknown}");
        assert_eq!(policy.retry_budget.map(|b| b.min_retries_per_second), Some(10), "defaults still apply");
    }
}

#[test]
fn inbound_selects_by_service_account_and_target_port() {
    let snapshot = snapshot();
    let policy = inbound_policy(&snapshot, Some("mesh.local"), "default", "books", 8001);
    assert_eq!(policy.name, "books-authz");
    assert_eq!(policy.default, pb::DefaultAction::Deny as i32);
    assert!(policy.require_mtls);
    assert_eq!(
        policy.authorizations,
        vec![pb::Authorization {
            name: "web".into(),
            authenticated: true,
            identities: vec![
                "spiffe://other.domain/ns/x/sa/y".into(),
                "spiffe://mesh.local/ns/default/sa/web".into(),
                "spiffe://mesh.local/ns/shop/sa/cart".into(),
            ],
            namespaces: vec!["ops".into()],
            networks: vec!["10.0.0.0/8".into()],
            http: vec![pb::Match {
                path: Some(pb::PathMatch { kind: Some(pb::path_match::Kind::Prefix("/admin".into())) }),
                method: "GET".into(),
                ..Default::default()
            }],
        }]
    );

    // Not the service port, another port, another account or namespace: no policy.
    for (ns, sa, port) in
        [("default", "books", 7001), ("default", "books", 7002), ("default", "web", 8001), ("shop", "books", 8001)]
    {
        let policy = inbound_policy(&snapshot, Some("mesh.local"), ns, sa, port);
        assert_eq!(
            policy,
            pb::InboundPolicy {
                name: "default".into(),
                default: pb::DefaultAction::Allow as i32,
                authorizations: vec![],
                require_mtls: false
            },
            "{ns}/{sa}:{port}"
        );
    }
}

#[test]
fn service_accounts_need_a_trust_domain() {
    let policy = inbound_policy(&snapshot(), None, "default", "books", 8001);
    assert_eq!(policy.authorizations[0].identities, ["spiffe://other.domain/ns/x/sa/y"]);
}

#[test]
fn inbound_matches_the_explicit_ports_of_single_port_services() {
    let snapshot = snapshot();
    for port in [9000, 4243, 4244] {
        let policy = inbound_policy(&snapshot, None, "shop", "shelf-sa", port);
        assert_eq!(policy.name, "shelf-authz", "port {port}");
        assert_eq!(policy.default, pb::DefaultAction::Authenticated as i32);
    }
    assert_eq!(inbound_policy(&snapshot, None, "shop", "shelf-sa", 4245).name, "default");
}

#[test]
fn inbound_targets_are_validated() {
    let req =
        |ns: &str, sa: &str, port: u32| pb::InboundRequest { namespace: ns.into(), service_account: sa.into(), port };
    assert_eq!(
        InboundTarget::from_request(&req("default", "books", 80)),
        Ok(InboundTarget::new("default", "books", 80))
    );
    for bad in [
        req("", "books", 80),
        req("default", "", 80),
        req("Default", "books", 80),
        req("a", "b", 0),
        req("a", "b", 65536),
    ] {
        let err = InboundTarget::from_request(&bad).expect_err("invalid");
        assert!(err.to_string().starts_with("invalid inbound target: "), "{err}");
    }
}
