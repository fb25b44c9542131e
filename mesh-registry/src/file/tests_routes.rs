//! The `routes` section and services' `trafficPolicy`: parsing, defaults and
//! every validation rule.

use super::test_support::{line_of, one_problem, pos, problems, rejects, valid, with};
use crate::model::ServiceKey;
use mesh_policy::model::*;
use std::time::Duration;

/// A route policy for books:7001 with the given rules (YAML lines at depth 6).
fn route(rules: &str) -> String {
    with(&format!("routes:\n  - name: books-routes\n    service: books\n    port: 7001\n    rules:\n{rules}"))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn the_full_format_is_read() {
    let text = with(
        "\
routes:
  - name: books-routes
    namespace: default
    service: books
    port: 7001
    rules:
      - name: canary
        matches:
          - path: {prefix: /api}
            headers: [{name: X-Canary, exact: \"1\"}, {name: x-user, regex: \"a.*\"}]
            method: GET
            host: Books.Example
            grpc: {service: pkg.Books, method: Get}
          - path: {regex: \"/v[0-9]+/.*\"}
        backends:
          - service: books
            weight: 90
          - service: books-v2
            port: 7001
            weight: 10
        timeout: 2s
        retries: {attempts: 3, on: [5xx, reset], backoff: {base: 10ms, max: 1s}, perTryTimeout: 500ms, bufferLimit: 1024}
        faults: {abort: {percent: 10, httpStatus: 503}, delay: {percent: 5.5, duration: 100ms}}
        rateLimit: {requestsPerSecond: 100, burst: 20}
      - backends: [{service: books-v2}]
",
    );
    let snapshot = valid(&text);
    let [policy] = &snapshot.routes[..] else { panic!("one route policy: {:?}", snapshot.routes) };
    assert_eq!((policy.name.as_str(), policy.namespace.as_str()), ("books-routes", "default"));
    assert_eq!((&policy.service, policy.port), (&ServiceKey::new("default", "books"), Some(7001)));
    let [canary, second] = &policy.rules[..] else { panic!("two rules") };
    assert_eq!(second.name, "rule-1", "unnamed rules are named by index");
    assert_eq!(
        canary.matches[0],
        RequestMatch {
            path: Some(PathMatch::Prefix("/api".into())),
            headers: vec![
                HeaderMatch { name: "x-canary".into(), value: ValueMatch::Exact("1".into()) },
                HeaderMatch { name: "x-user".into(), value: ValueMatch::Regex("a.*".into()) },
            ],
            method: Some("GET".into()),
            host: Some("books.example".into()),
            grpc: Some(GrpcMatch { service: Some("pkg.Books".into()), method: Some("Get".into()) }),
        }
    );
    assert_eq!(canary.matches[1].path, Some(PathMatch::Regex("/v[0-9]+/.*".into())));
    assert_eq!(
        canary.backends,
        vec![
            Backend { service: ServiceKey::new("default", "books"), port: Some(7001), weight: 90 },
            Backend { service: ServiceKey::new("default", "books-v2"), port: Some(7001), weight: 10 },
        ]
    );
    assert_eq!(canary.timeout, Some(Duration::from_secs(2)));
    assert_eq!(
        canary.retry,
        Some(Retry {
            attempts: 3,
            on: vec!["5xx".into(), "reset".into()],
            backoff_base: ms(10),
            backoff_max: Duration::from_secs(1),
            per_try_timeout: Some(ms(500)),
            buffer_limit: 1024,
        })
    );
    assert_eq!(
        canary.fault,
        Some(Fault {
            abort: Some(Abort { percent: 10.0, status: AbortStatus::Http(503) }),
            delay: Some(Delay { percent: 5.5, duration: ms(100) }),
        })
    );
    assert_eq!(canary.rate_limit, Some(RateLimit { requests_per_second: 100.0, burst: 20 }));
    assert_eq!((second.matches.len(), second.timeout, &second.retry), (0, None, &None));
    assert_eq!(second.backends[0].weight, 1, "backend weight defaults to 1");
}

#[test]
fn rule_defaults() {
    let text = with(
        "\
routes:
  - name: r
    service: books
    rules:
      - retries: {}
        faults: {abort: {grpcStatus: 14}}
        rateLimit: {requestsPerSecond: 2.5}
        backends: [{service: books, weight: 3}]
",
    );
    let snapshot = valid(&text);
    let rule = &snapshot.routes[0].rules[0];
    assert_eq!(snapshot.routes[0].port, None, "every port when omitted");
    assert_eq!(rule.retry, Some(Retry::default()));
    assert_eq!(
        Retry::default(),
        Retry {
            attempts: 2,
            on: vec!["connect-failure".into(), "gateway-error".into(), "unavailable".into()],
            backoff_base: ms(25),
            backoff_max: ms(250),
            per_try_timeout: None,
            buffer_limit: 65536,
        }
    );
    let abort = rule.fault.as_ref().and_then(|f| f.abort);
    assert_eq!(abort, Some(Abort { percent: 100.0, status: AbortStatus::Grpc(14) }), "percent defaults to 100");
    assert_eq!(rule.rate_limit, Some(RateLimit { requests_per_second: 2.5, burst: 3 }), "burst: a second's worth");
    assert_eq!(rule.backends[0].port, None, "a backend without port follows the routed port");
}

#[test]
fn traffic_policy_is_read_with_defaults() {
    let text = "\
services:
  - name: books
    ports: [{port: 7001}]
    trafficPolicy:
      circuitBreaker: {consecutiveFailures: 7, baseEjection: 1s, maxEjection: 1m}
      limits: {maxConcurrentRequests: 1000, maxPendingRequests: 100, maxConnectionsPerEndpoint: 0}
      retryBudget: {ratio: 0.5, minPerSecond: 3, ttl: 5s}
  - name: shelf
    ports: [{port: 7001}]
    trafficPolicy:
      circuitBreaker: {}
  - name: plain
    ports: [{port: 7001}]
";
    let snapshot = valid(text);
    let [books, shelf, plain] = &snapshot.services[..] else { panic!("three services") };
    assert_eq!(
        books.traffic_policy,
        Some(TrafficPolicy {
            circuit_breaker: CircuitBreaker {
                consecutive_failures: 7,
                base_ejection: Duration::from_secs(1),
                max_ejection: Duration::from_secs(60),
            },
            limits: Limits {
                max_concurrent_requests: 1000,
                max_pending_requests: 100,
                max_connections_per_endpoint: 0
            },
            retry_budget: RetryBudget { ratio: 0.5, min_per_second: 3, ttl: Duration::from_secs(5) },
        })
    );
    let cb = shelf.traffic_policy.as_ref().map(|t| t.circuit_breaker);
    assert_eq!(
        cb,
        Some(CircuitBreaker {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300)
        })
    );
    assert_eq!(plain.traffic_policy, None);
    let defaults = TrafficPolicy::default();
    assert_eq!(defaults.circuit_breaker.consecutive_failures, 0, "off by default");
    assert_eq!(defaults.limits, Limits::default());
    assert_eq!(defaults.retry_budget, RetryBudget { ratio: 0.2, min_per_second: 10, ttl: Duration::from_secs(10) });
}

#[test]
fn traffic_policy_problems() {
    let svc = |tp: &str| format!("services:\n  - name: books\n    ports: [{{port: 1}}]\n    trafficPolicy:\n{tp}");
    let text = svc("      circuitBreaker: {baseEjection: 10, maxEjection: 1s}\n");
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0]
            .message
            .starts_with("service \"books\" trafficPolicy.circuitBreaker.baseEjection: invalid duration \"10\""),
        "{found:?}"
    );
    rejects(
        &svc("      circuitBreaker: {baseEjection: 1m, maxEjection: 1s}\n"),
        "circuitBreaker",
        "trafficPolicy.circuitBreaker.maxEjection: maxEjection (1s) is shorter than baseEjection (1m)",
    );
    rejects(
        &svc("      limits: {maxPendingRequests: -1}\n"),
        "limits",
        "limits.maxPendingRequests: -1 is out of range",
    );
    rejects(&svc("      retryBudget: {ratio: -0.1}\n"), "retryBudget", "retryBudget.ratio: -0.1 is out of range");
    rejects(&svc("      retryBudget: {ttl: 0s}\n"), "retryBudget", "retryBudget.ttl: use a duration above 0");
    rejects(&svc("      retryBudget: {ttl: 10us}\n"), "retryBudget", "\"10us\" is shorter than 1ms");
    rejects(&svc("      limit: {}\n"), "limit:", "unknown field \"limit\"");
}

// --- References ----------------------------------------------------------------

#[test]
fn unknown_services_and_ports() {
    let text = with("routes:\n  - name: r\n    service: nope\n    rules: [{}]\n");
    rejects(&text, "service: nope", "route \"r\" service: unknown service \"nope\" in namespace \"default\"");
    let text = with("routes:\n  - name: r\n    service: books\n    port: 7003\n    rules: [{}]\n");
    rejects(&text, "port: 7003", "route \"r\" port: service \"books\" has no port 7003 (it has 7001, 7002)");
    let text = with("routes:\n  - name: r\n    namespace: shop\n    service: books\n    rules: [{}]\n");
    rejects(&text, "service: books", "unknown service \"books\" in namespace \"shop\"");
}

#[test]
fn unknown_backends() {
    let text = route(
        "      - name: canary
        backends:
          - service: books
            weight: 90
          - service: books-v3
            weight: 10
",
    );
    let problem = one_problem(&text, line_of(&text, "books-v3"), "");
    assert_eq!(
        problem.message,
        "route \"books-routes\" rule \"canary\" backends[1].service: unknown service \"books-v3\" in namespace \"default\""
    );
    assert_eq!(pos(&problem).1, 22, "the value's column");
    let text = route("      - backends: [{service: books-v2, port: 7002}]\n");
    rejects(&text, "backends:", "backends[0].port: service \"books-v2\" has no port 7002 (it has 7001)");
    let text = route("      - backends: [{service: shelf, namespace: shop}]\n");
    rejects(&text, "backends:", "service \"shelf\" has no port 7001 (it has 9000): without a port of its own");
    // A route for every port of books needs the port on the backend, unless
    // the backend has every one of them.
    let all = |backend: &str| {
        with(&format!("routes:\n  - name: r\n    service: books\n    rules:\n      - backends: [{backend}]\n"))
    };
    rejects(&all("{service: books-v2}"), "backends:", "service \"books-v2\" has no port 7002");
    valid(&all("{service: books-v2, port: 7001}"));
    valid(&all("{service: shelf, namespace: shop, port: 9000}"));
}

#[test]
fn weights() {
    let text = route(
        "      - backends:\n          - {service: books, weight: 0}\n          - {service: books-v2, weight: 0}\n",
    );
    rejects(&text, "{service: books,", "backends: the weights sum to 0: give at least one backend a weight above 0");
    let text = route("      - backends: [{service: books, weight: 1000001}]\n");
    rejects(&text, "backends", "backends[0].weight: 1000001 is out of range: use 0-1000000");
    let text = route("      - backends: []\n");
    rejects(&text, "backends", "backends: the list is empty");
    let text = route("      - backends: [{service: books, weight: 0}, {service: books-v2, weight: 1}]\n");
    assert_eq!(valid(&text).routes[0].rules[0].backends[0].weight, 0, "one drained backend is fine");
}

// --- Matches ---------------------------------------------------------------------

#[test]
fn regexes_must_compile() {
    let text = route("      - matches: [{path: {regex: \"/v[0-9\"}}]\n");
    rejects(
        &text,
        "regex",
        "rule \"rule-0\" matches[0].path.regex: regex \"/v[0-9\" does not compile: unclosed character class",
    );
    let text = route("      - matches:\n          - headers: [{name: x-user, regex: \"(a\"}]\n");
    rejects(&text, "x-user", "matches[0].headers[0].regex: regex \"(a\" does not compile: unclosed group");
}

#[test]
fn match_problems() {
    let m = |yaml: &str| route(&format!("      - matches: [{yaml}]\n"));
    rejects(
        &m("{path: {exact: /a, prefix: /b}}"),
        "matches",
        "matches[0].path: give exactly one of exact, prefix or regex",
    );
    rejects(&m("{path: {}}"), "matches", "matches[0].path: give exactly one");
    rejects(&m("{path: {prefix: api}}"), "matches", "matches[0].path.prefix: \"api\" does not start with '/'");
    rejects(&m("{headers: [{name: x}]}"), "matches", "matches[0].headers[0]: give exactly one of exact or regex");
    rejects(
        &m("{headers: [{name: \"a b\", exact: x}]}"),
        "matches",
        "headers[0].name: \"a b\" is not a valid header name",
    );
    rejects(
        &m("{method: get}"),
        "matches",
        "matches[0].method: \"get\" is not uppercase: methods are case-sensitive, write GET",
    );
    rejects(&m("{method: \"G T\"}"), "matches", "\"G T\" is not an HTTP method");
    rejects(&m("{host: \"books:80\"}"), "matches", "matches[0].host: \"books:80\" has a port");
    rejects(&m("{grpc: {}}"), "matches", "matches[0].grpc: give service, method or both");
    rejects(&m("{grpc: {service: a/b}}"), "matches", "grpc.service: \"a/b\" is not a gRPC service name");
    rejects(&m("{pth: {exact: /}}"), "matches", "unknown field \"pth\"");
    rejects(
        &route("      - matches: []\n"),
        "matches",
        "matches: the list is empty: omit matches to match every request",
    );
    let m = valid(&m("{host: \"[::1]\"}"));
    assert_eq!(m.routes[0].rules[0].matches[0].host.as_deref(), Some("[::1]"));
}

#[test]
fn rules_that_can_never_match_are_rejected() {
    let text = route(
        "      - name: everything
      - name: api
        matches: [{path: {prefix: /api}}]
",
    );
    let problem = one_problem(&text, line_of(&text, "name: api"), "");
    let everything_line = line_of(&text, "name: everything");
    assert_eq!(
        problem.message,
        format!(
            "route \"books-routes\" rule \"api\": can never match: every request it matches is matched first by \
             rule \"everything\" (line {everything_line}); reorder the rules or narrow the earlier matches"
        )
    );

    let text = route(
        "      - name: api
        matches: [{path: {prefix: /api}}, {headers: [{name: x-canary, exact: \"1\"}]}]
      - name: api-v1
        matches:
          - {path: {prefix: /api/v1}, method: GET}
          - {path: {exact: /api}, headers: [{name: x-user, exact: a}]}
          - {path: {prefix: /x}, headers: [{name: X-Canary, exact: \"1\"}, {name: x-user, exact: a}]}
",
    );
    rejects(
        &text,
        "name: api-v1",
        "rule \"api-v1\": can never match: every request it matches is matched first by rule \"api\"",
    );

    // Matches the earlier rules do not cover keep a rule alive.
    let alive = [
        "      - matches: [{path: {prefix: /api}}]\n      - matches: [{path: {prefix: /apix}}]\n",
        "      - matches: [{path: {prefix: /api}}]\n      - matches: [{path: {prefix: /api/v1}}, {path: {exact: /other}}]\n",
        "      - matches: [{method: GET}]\n      - matches: [{method: POST}]\n",
        "      - matches: [{path: {regex: \"/a.*\"}}]\n      - matches: [{path: {exact: /ab}}]\n",
        "      - matches: [{headers: [{name: a, exact: \"1\"}]}]\n      - matches: [{headers: [{name: a, exact: \"2\"}]}]\n",
        "      - matches: [{path: {prefix: /api}}]\n      - {}\n",
    ];
    for rules in alive {
        valid(&route(rules));
    }

    // Two rules together can shadow a third; both are named.
    let text = route(
        "      - name: gets
        matches: [{method: GET}]
      - name: posts
        matches: [{method: POST}]
      - name: dead
        matches: [{method: GET, path: {exact: /a}}, {method: POST}]
",
    );
    let gets = line_of(&text, "name: gets");
    let posts = line_of(&text, "name: posts");
    rejects(&text, "name: dead", &format!("rule \"gets\" (line {gets}) and rule \"posts\" (line {posts})"));
}

// --- Policies, names and values ---------------------------------------------------

#[test]
fn one_route_policy_per_service_port() {
    let two = |a: &str, b: &str| {
        with(&format!(
            "routes:\n  - name: a\n    service: books\n{a}    rules: [{{}}]\n  - name: b\n    service: books\n{b}    rules: [{{}}]\n"
        ))
    };
    let text = two("    port: 7001\n", "    port: 7001\n");
    let first = line_of(&text, "name: a");
    one_problem(
        &text,
        first + 6,
        &format!("route \"b\" port: route \"a\" (line {first}) already routes port 7001 of service \"books\""),
    );
    let text = two("", "    port: 7002\n");
    one_problem(&text, first + 5, "route \"a\" (line");
    let text = two("", "");
    one_problem(&text, first + 4, "already routes every port of service \"books\"");
    let split = valid(&two("    port: 7001\n", "    port: 7002\n"));
    assert_eq!(split.routes.len(), 2);
}

#[test]
fn duplicate_names() {
    let text = with(
        "routes:\n  - name: r\n    service: books\n    port: 7001\n    rules: [{}]\n  - name: r\n    service: books\n    port: 7002\n    rules: [{}]\n",
    );
    let problems = problems(&text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].message.contains("duplicate route \"r\" in namespace \"default\" (first defined on line"));
    let text =
        route("      - name: x\n        matches: [{method: GET}]\n      - name: x\n        matches: [{method: PUT}]\n");
    let first = line_of(&text, "[{method: GET}]") - 1;
    let again = line_of(&text, "[{method: PUT}]") - 1;
    one_problem(&text, again, &format!("rule \"x\": duplicate rule name (first used on line {first})"));
    let text = route("      - backends: [{service: books}, {service: books, port: 7001}]\n");
    rejects(&text, "backends", "backends[1].service: service \"books\" is listed twice");
    let text = with("routes:\n  - name: Bad\n    service: books\n    rules: [{}]\n");
    rejects(&text, "Bad", "route \"Bad\" name: \"Bad\" is not a valid name: it contains the uppercase letter 'B'");
    let text = route("      - name: Canary\n");
    rejects(&text, "Canary", "route \"books-routes\" rule \"Canary\" name: \"Canary\" is not a valid name");
    let text = route("      - backends: [{service: books, namespace: \"d_x\"}]\n");
    let found = super::test_support::problems(&text);
    assert!(
        found[1].message.contains("rule \"rule-0\" backends[0].namespace: \"d_x\" is not a valid name"),
        "{found:?}"
    );
}

#[test]
fn rules_are_required() {
    let text = with("routes:\n  - name: r\n    service: books\n");
    rejects(&text, "name: r", "route \"r\": it has no rules");
    let text = with("routes:\n  - name: r\n    service: books\n    rules: []\n");
    rejects(&text, "rules: []", "route \"r\" rules: the list is empty");
}

#[test]
fn retry_problems() {
    let r = |yaml: &str| route(&format!("      - retries: {yaml}\n"));
    let text = r("{on: [5xx, 503, gateway-error, 5xx]}");
    let problems = problems(&text);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].message.ends_with(
            "retries.on[1]: unknown retry condition \"503\": use one of 5xx, gateway-error, connect-failure, reset, \
             cancelled, unknown, deadline-exceeded, resource-exhausted, aborted, internal, unavailable, data-loss, unauthenticated"
        ),
        "{problems:?}"
    );
    assert!(problems[1].message.contains("retries.on[3]: \"5xx\" is listed twice"), "{problems:?}");
    rejects(&r("{on: []}"), "retries", "retries.on: the list is empty");
    rejects(&r("{attempts: 11}"), "retries", "retries.attempts: 11 is out of range: use 0-10");
    rejects(&r("{backoff: {base: 1s}}"), "retries", "retries.backoff.base: max (250ms) is shorter than base (1s)");
    rejects(&r("{backoff: {max: soon}}"), "retries", "retries.backoff.max: invalid duration \"soon\"");
    rejects(&r("{perTryTimeout: 0s}"), "retries", "retries.perTryTimeout: use a duration above 0");
    rejects(&r("{bufferLimit: -1}"), "retries", "retries.bufferLimit: -1 is out of range");
    assert_eq!(valid(&r("{attempts: 0}")).routes[0].rules[0].retry.as_ref().map(|r| r.attempts), Some(0));
}

#[test]
fn timeout_problems() {
    rejects(&route("      - timeout: 2\n"), "timeout", "rule \"rule-0\" timeout: invalid duration \"2\"");
    rejects(&route("      - timeout: 2 s\n"), "timeout", "invalid duration");
    assert_eq!(valid(&route("      - timeout: 0s\n")).routes[0].rules[0].timeout, None, "0 means none");
}

#[test]
fn fault_problems() {
    let f = |yaml: &str| route(&format!("      - faults: {yaml}\n"));
    rejects(
        &f("{abort: {percent: 101, httpStatus: 503}}"),
        "faults",
        "faults.abort.percent: 101 is out of range: use 0-100",
    );
    rejects(
        &f("{delay: {percent: -1, duration: 1s}}"),
        "faults",
        "faults.delay.percent: -1 is out of range: use 0-100",
    );
    rejects(
        &f("{abort: {httpStatus: 99}}"),
        "faults",
        "faults.abort.httpStatus: 99 is not an HTTP status: use 100-599",
    );
    rejects(&f("{abort: {httpStatus: 600}}"), "faults", "use 100-599");
    rejects(
        &f("{abort: {grpcStatus: 17}}"),
        "faults",
        "faults.abort.grpcStatus: 17 is not a gRPC status code: use 1-16",
    );
    rejects(&f("{abort: {grpcStatus: 0}}"), "faults", "faults.abort.grpcStatus: 0 is OK, not an error");
    rejects(
        &f("{abort: {httpStatus: 503, grpcStatus: 14}}"),
        "faults",
        "faults.abort: give either httpStatus or grpcStatus, not both",
    );
    rejects(&f("{abort: {percent: 5}}"), "faults", "faults.abort: give the status to answer with");
    rejects(&f("{delay: {duration: later}}"), "faults", "faults.delay.duration: invalid duration \"later\"");
    rejects(&f("{}"), "faults", "faults: give abort, delay or both");
    valid(&f("{abort: {percent: 0, httpStatus: 100}, delay: {percent: 100, duration: 1ms}}"));
}

#[test]
fn rate_limit_problems() {
    let rl = |yaml: &str| route(&format!("      - rateLimit: {yaml}\n"));
    rejects(
        &rl("{requestsPerSecond: 0}"),
        "rateLimit",
        "rateLimit.requestsPerSecond: 0 is out of range: use a number above 0",
    );
    rejects(&rl("{requestsPerSecond: -5}"), "rateLimit", "rateLimit.requestsPerSecond: -5 is out of range");
    rejects(&rl("{requestsPerSecond: 5, burst: 0}"), "rateLimit", "rateLimit.burst: 0 is out of range: use 1-");
    rejects(&rl("{burst: 3}"), "rateLimit", "missing required field \"requestsPerSecond\"");
    rejects(&rl("{requestsPerSecond: lots}"), "rateLimit", "expected a number, found \"lots\"");
}

#[test]
fn every_problem_is_collected() {
    let text = route(
        "      - name: a
        backends: [{service: nope}]
        timeout: never
      - name: b
        matches: [{path: {regex: \"(\"}}]
        faults: {abort: {percent: 200, httpStatus: 700}}
",
    );
    let found = problems(&text);
    let fields: Vec<&str> = found
        .iter()
        .map(|p| p.message.split(": ").next().and_then(|head| head.rsplit(' ').next()).unwrap_or(""))
        .collect();
    assert_eq!(
        fields,
        ["backends[0].service", "timeout", "matches[0].path.regex", "faults.abort.percent", "faults.abort.httpStatus"],
        "{found:#?}"
    );
    let lines: Vec<u32> = found.iter().map(|p| pos(p).0).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted, "in file order");
}
