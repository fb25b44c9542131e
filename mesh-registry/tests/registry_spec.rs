//! The registry file's writer (`mesh-spec`) and its parser (the file
//! registry) agree: a file that sets every field is written by
//! `mesh_spec::to_yaml`, parsed by the real parser without a problem, and
//! every value arrives. A field renamed, missing or mistyped on either side
//! fails here.

#![allow(clippy::unwrap_used)]

use mesh_registry::file;
use mesh_registry::model::Protocol;
use mesh_registry::model::{AbortStatus, DefaultAction, PathMatch as ParsedPath, ServiceAccountRef, ValueMatch};
use mesh_spec::*;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A file using every field of the format.
fn every_field() -> RegistryFile {
    let books = Service {
        namespace: Some("shop".into()),
        service_account: Some("books-sa".into()),
        addresses: vec![ip("10.96.0.10"), ip("fd00::10")],
        ports: vec![Port {
            port: 7001,
            name: Some("http".into()),
            target_port: Some(8001),
            protocol: Some("http".into()),
        }],
        endpoints: vec![Endpoint { weight: Some(50), ..Endpoint::ip(ip("10.0.0.5")).label("replica", "books-0") }],
        traffic_policy: Some(TrafficPolicy {
            circuit_breaker: Some(CircuitBreaker {
                consecutive_failures: Some(7),
                base_ejection: Some("10s".into()),
                max_ejection: Some("5m".into()),
            }),
            limits: Some(Limits {
                max_concurrent_requests: Some(1000),
                max_pending_requests: Some(100),
                max_connections_per_endpoint: Some(8),
            }),
            retry_budget: Some(RetryBudget { ratio: Some(0.25), min_per_second: Some(10), ttl: Some("20s".into()) }),
        }),
        ..Service::new("books")
    };
    let books_v2 = Service {
        namespace: Some("shop".into()),
        ports: vec![Port { protocol: Some("opaque".into()), ..Port::new(7001) }],
        endpoints: vec![Endpoint::address(addr("127.0.0.1:4243")), Endpoint::address(addr("[::1]:4244"))],
        ..Service::new("books-v2")
    };
    let route = RoutePolicy {
        name: "books-routes".into(),
        namespace: Some("shop".into()),
        service: "books".into(),
        port: Some(7001),
        rules: vec![
            RouteRule {
                name: Some("canary".into()),
                matches: vec![
                    Match {
                        path: Some(PathMatch { prefix: Some("/api".into()), ..Default::default() }),
                        headers: vec![
                            HeaderMatch { name: "x-canary".into(), exact: Some("1".into()), regex: None },
                            HeaderMatch { name: "x-user".into(), exact: None, regex: Some("a.*".into()) },
                        ],
                        method: Some("GET".into()),
                        host: Some("books.example".into()),
                        grpc: None,
                    },
                    Match {
                        path: Some(PathMatch { exact: Some("/x".into()), ..Default::default() }),
                        ..Match::default()
                    },
                    Match {
                        path: Some(PathMatch { regex: Some("/v[0-9]+/.*".into()), ..Default::default() }),
                        ..Match::default()
                    },
                    Match {
                        grpc: Some(GrpcMatch { service: Some("pkg.Books".into()), method: Some("Get".into()) }),
                        ..Match::default()
                    },
                ],
                backends: vec![
                    Backend { service: "books".into(), weight: Some(90), ..Backend::default() },
                    Backend {
                        service: "books-v2".into(),
                        namespace: Some("shop".into()),
                        port: Some(7001),
                        weight: Some(10),
                    },
                ],
                timeout: Some("2s".into()),
                retries: Some(Retry {
                    attempts: Some(2),
                    on: strings(&["5xx", "gateway-error", "connect-failure", "reset", "unavailable"]),
                    backoff: Some(Backoff { base: Some("25ms".into()), max: Some("250ms".into()) }),
                    per_try_timeout: Some("1s".into()),
                    buffer_limit: Some(65536),
                }),
                faults: Some(Faults {
                    abort: Some(Abort { percent: Some(10.0), http_status: Some(503), grpc_status: None }),
                    delay: Some(Delay { percent: Some(5.0), duration: "100ms".into() }),
                }),
                rate_limit: Some(RateLimit { requests_per_second: 100.0, burst: Some(20) }),
            },
            RouteRule {
                name: Some("unavailable".into()),
                faults: Some(Faults {
                    abort: Some(Abort { grpc_status: Some(14), ..Abort::default() }),
                    ..Faults::default()
                }),
                ..RouteRule::default()
            },
        ],
    };
    let authz = Authorization {
        name: "books-authz".into(),
        namespace: Some("shop".into()),
        service: "books".into(),
        port: Some(7001),
        default: Some("authenticated".into()),
        require_mtls: Some(true),
        rules: vec![AuthorizationRule {
            name: Some("allow-web".into()),
            identities: strings(&["spiffe://mesh.local/ns/shop/sa/web"]),
            service_accounts: strings(&["web", "other/cart"]),
            namespaces: strings(&["ops"]),
            networks: strings(&["10.0.0.0/8"]),
            http: vec![Match {
                path: Some(PathMatch { prefix: Some("/admin".into()), ..Default::default() }),
                method: Some("GET".into()),
                ..Match::default()
            }],
        }],
    };
    RegistryFile { services: vec![books, books_v2], routes: vec![route], authorizations: vec![authz] }
}

#[test]
fn what_mesh_spec_writes_the_file_registry_reads() {
    let text = to_yaml(&every_field());
    let parsed = file::parse(Path::new("spec.yaml"), &text).unwrap_or_else(|e| panic!("{e}\n{text}"));

    // Services.
    assert_eq!(parsed.services.len(), 2, "{text}");
    let books = &parsed.services[0];
    assert_eq!((books.key.namespace.as_str(), books.key.name.as_str()), ("shop", "books"));
    assert_eq!(books.service_account, "books-sa");
    assert_eq!(books.addresses, vec![ip("10.96.0.10"), ip("fd00::10")]);
    let port = &books.ports[0];
    assert_eq!((port.port, port.name.as_deref(), port.target_port), (7001, Some("http"), 8001));
    assert_eq!(port.protocol, Protocol::Http1);
    let ep = &books.endpoints[0];
    assert_eq!((ep.ip, ep.port, ep.weight), (ip("10.0.0.5"), None, 50));
    assert_eq!(ep.labels, BTreeMap::from([("replica".to_string(), "books-0".to_string())]));
    let tp = books.traffic_policy.as_ref().expect("a traffic policy");
    assert_eq!(tp.circuit_breaker.consecutive_failures, 7);
    assert_eq!(tp.circuit_breaker.base_ejection, Duration::from_secs(10));
    assert_eq!(tp.circuit_breaker.max_ejection, Duration::from_secs(300));
    assert_eq!(
        (tp.limits.max_concurrent_requests, tp.limits.max_pending_requests, tp.limits.max_connections_per_endpoint),
        (1000, 100, 8)
    );
    assert_eq!(
        (tp.retry_budget.ratio, tp.retry_budget.min_per_second, tp.retry_budget.ttl),
        (0.25, 10, Duration::from_secs(20))
    );
    let v2 = &parsed.services[1];
    assert_eq!(v2.ports[0].protocol, Protocol::Opaque);
    let eps: Vec<(IpAddr, Option<u16>)> = v2.endpoints.iter().map(|e| (e.ip, e.port)).collect();
    assert_eq!(eps, vec![(ip("127.0.0.1"), Some(4243)), (ip("::1"), Some(4244))]);

    // Routes.
    let route = &parsed.routes[0];
    assert_eq!((route.name.as_str(), route.namespace.as_str(), route.port), ("books-routes", "shop", Some(7001)));
    assert_eq!((route.service.namespace.as_str(), route.service.name.as_str()), ("shop", "books"));
    let rule = &route.rules[0];
    assert_eq!(rule.name, "canary");
    let m = &rule.matches[0];
    assert_eq!(m.path, Some(ParsedPath::Prefix("/api".into())));
    assert_eq!(m.headers[0].name, "x-canary");
    assert_eq!(m.headers[0].value, ValueMatch::Exact("1".into()));
    assert_eq!(m.headers[1].value, ValueMatch::Regex("a.*".into()));
    assert_eq!((m.method.as_deref(), m.host.as_deref()), (Some("GET"), Some("books.example")));
    assert_eq!(rule.matches[1].path, Some(ParsedPath::Exact("/x".into())));
    assert_eq!(rule.matches[2].path, Some(ParsedPath::Regex("/v[0-9]+/.*".into())));
    let grpc = rule.matches[3].grpc.as_ref().expect("a gRPC match");
    assert_eq!((grpc.service.as_deref(), grpc.method.as_deref()), (Some("pkg.Books"), Some("Get")));
    let backends: Vec<(&str, &str, Option<u16>, u32)> = rule
        .backends
        .iter()
        .map(|b| (b.service.namespace.as_str(), b.service.name.as_str(), b.port, b.weight))
        .collect();
    assert_eq!(backends[0].1, "books");
    assert_eq!(backends[0].3, 90);
    assert_eq!(backends[1], ("shop", "books-v2", Some(7001), 10));
    assert_eq!(rule.timeout, Some(Duration::from_secs(2)));
    let retry = rule.retry.as_ref().expect("retries");
    assert_eq!(retry.attempts, 2);
    assert_eq!(retry.on, strings(&["5xx", "gateway-error", "connect-failure", "reset", "unavailable"]));
    assert_eq!((retry.backoff_base, retry.backoff_max), (Duration::from_millis(25), Duration::from_millis(250)));
    assert_eq!((retry.per_try_timeout, retry.buffer_limit), (Some(Duration::from_secs(1)), 65536));
    let fault = rule.fault.as_ref().expect("faults");
    let abort = fault.abort.as_ref().expect("an abort");
    assert_eq!((abort.percent, abort.status), (10.0, AbortStatus::Http(503)));
    let delay = fault.delay.as_ref().expect("a delay");
    assert_eq!((delay.percent, delay.duration), (5.0, Duration::from_millis(100)));
    let limit = rule.rate_limit.as_ref().expect("a rate limit");
    assert_eq!((limit.requests_per_second, limit.burst), (100.0, 20));
    let second = &route.rules[1];
    assert_eq!(second.name, "unavailable");
    let abort = second.fault.as_ref().and_then(|f| f.abort.as_ref()).expect("an abort");
    assert_eq!((abort.percent, abort.status), (100.0, AbortStatus::Grpc(14)));

    // Authorizations.
    let authz = &parsed.authorizations[0];
    assert_eq!((authz.name.as_str(), authz.namespace.as_str(), authz.port), ("books-authz", "shop", Some(7001)));
    assert_eq!(authz.service.name, "books");
    assert_eq!((authz.default, authz.require_mtls), (DefaultAction::Authenticated, true));
    let rule = &authz.rules[0];
    assert_eq!(rule.name, "allow-web");
    assert_eq!(rule.identities, strings(&["spiffe://mesh.local/ns/shop/sa/web"]));
    let account = |ns: &str, name: &str| ServiceAccountRef { namespace: ns.into(), name: name.into() };
    assert_eq!(rule.service_accounts, vec![account("shop", "web"), account("other", "cart")]);
    assert_eq!(rule.namespaces, strings(&["ops"]));
    assert_eq!(rule.networks.iter().map(ToString::to_string).collect::<Vec<_>>(), strings(&["10.0.0.0/8"]));
    assert_eq!(rule.http[0].path, Some(ParsedPath::Prefix("/admin".into())));
    assert_eq!(rule.http[0].method.as_deref(), Some("GET"));
}

/// Left unset, a field takes the parser's default (nothing is written as
/// `null` or an empty value the parser would refuse).
#[test]
fn unset_fields_take_the_parsers_defaults() {
    let file = RegistryFile {
        services: vec![Service { ports: vec![Port::new(80)], ..Service::new("web") }],
        routes: vec![RoutePolicy {
            name: "r".into(),
            service: "web".into(),
            rules: vec![RouteRule::default()],
            ..RoutePolicy::default()
        }],
        authorizations: vec![Authorization { name: "a".into(), service: "web".into(), ..Authorization::default() }],
    };
    let text = to_yaml(&file);
    let parsed = file::parse(Path::new("spec.yaml"), &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let web = &parsed.services[0];
    assert_eq!((web.key.namespace.as_str(), web.service_account.as_str()), ("default", "web"));
    assert_eq!((web.ports[0].target_port, web.ports[0].protocol), (80, Protocol::Detect));
    assert!(web.endpoints.is_empty() && web.addresses.is_empty() && web.traffic_policy.is_none());
    assert_eq!(parsed.routes[0].rules[0].name, "rule-0");
    assert_eq!(parsed.authorizations[0].default, DefaultAction::Deny);
}

/// A registry of 100,000 endpoints (the scale the control plane is
/// benchmarked at) parses. Catches: the YAML parser's default node budget
/// (250,000 nodes; each endpoint takes three), which refused such a file
/// as "too large or too complex" and kept the control plane from starting.
#[test]
fn a_hundred_thousand_endpoints_parse() {
    let syn = mesh_spec::synthetic::Synthetic::new(1_000, 100_000).expect("fits");
    let text = to_yaml(&syn.file);
    let snapshot = file::parse(Path::new("big.yaml"), &text).expect("a large registry is accepted");
    assert_eq!((snapshot.services.len(), snapshot.endpoint_count()), (1_000, 100_000));
}
