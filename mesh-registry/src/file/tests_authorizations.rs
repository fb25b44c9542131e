//! The `authorizations` section: parsing, defaults and every validation
//! rule.

use super::test_support::{line_of, one_problem, pos, problems, rejects, valid, with};
use crate::model::ServiceKey;
use mesh_policy::model::*;

/// An authorization for books with the given rules (YAML at depth 6).
fn authz(rules: &str) -> String {
    with(&format!("authorizations:\n  - name: books-authz\n    service: books\n    rules:\n{rules}"))
}

#[test]
fn the_full_format_is_read() {
    let text = with(
        "authorizations:
  - name: books-authz
    namespace: default
    service: books
    port: 7001
    default: authenticated
    requireMtls: true
    rules:
      - name: allow-web
        identities: [spiffe://mesh.local/ns/default/sa/web]
        serviceAccounts: [web, shop/cart]
        namespaces: [shop]
        networks: [10.0.0.0/8, 192.168.1.7, \"fd00::/8\"]
        http: [{path: {prefix: /admin}, method: GET}]
      - networks: [0.0.0.0/0]
",
    );
    let snapshot = valid(&text);
    let expected = AuthorizationPolicy {
        name: "books-authz".into(),
        namespace: "default".into(),
        service: ServiceKey::new("default", "books"),
        port: Some(7001),
        default: DefaultAction::Authenticated,
        require_mtls: true,
        rules: vec![
            AuthorizationRule {
                name: "allow-web".into(),
                identities: vec!["spiffe://mesh.local/ns/default/sa/web".into()],
                service_accounts: vec![
                    ServiceAccountRef { namespace: "default".into(), name: "web".into() },
                    ServiceAccountRef { namespace: "shop".into(), name: "cart".into() },
                ],
                namespaces: vec!["shop".into()],
                networks: ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]
                    .iter()
                    .map(|c| c.parse().expect("cidr"))
                    .collect(),
                http: vec![RequestMatch {
                    path: Some(PathMatch::Prefix("/admin".into())),
                    method: Some("GET".into()),
                    ..Default::default()
                }],
            },
            AuthorizationRule {
                name: "rule-1".into(),
                identities: vec![],
                service_accounts: vec![],
                namespaces: vec![],
                networks: vec!["0.0.0.0/0".parse().expect("cidr")],
                http: vec![],
            },
        ],
    };
    assert_eq!(snapshot.authorizations, vec![expected]);
}

#[test]
fn defaults() {
    let snapshot = valid(&with("authorizations:\n  - name: a\n    service: books\n"));
    let policy = &snapshot.authorizations[0];
    assert_eq!((policy.default, policy.require_mtls, policy.port), (DefaultAction::Deny, false, None));
    assert!(policy.rules.is_empty());
    for (word, action) in [
        ("deny", DefaultAction::Deny),
        ("allow", DefaultAction::Allow),
        ("authenticated", DefaultAction::Authenticated),
    ] {
        let text = with(&format!("authorizations:\n  - name: a\n    service: books\n    default: {word}\n"));
        assert_eq!(valid(&text).authorizations[0].default, action);
    }
}

#[test]
fn references() {
    let text = with("authorizations:\n  - name: a\n    service: nope\n");
    rejects(&text, "service: nope", "authorization \"a\" service: unknown service \"nope\" in namespace \"default\"");
    let text = with("authorizations:\n  - name: a\n    service: books\n    port: 8001\n");
    rejects(&text, "port: 8001", "authorization \"a\" port: service \"books\" has no port 8001 (it has 7001, 7002)");
    let text = with("authorizations:\n  - name: a\n    service: books\n    port: 0\n");
    rejects(&text, "port: 0", "authorization \"a\" port: 0 is out of range: use 1-65535");
    let text = with("authorizations:\n  - name: a\n    service: books\n    default: reject\n");
    rejects(
        &text,
        "reject",
        "authorization \"a\" default: unknown default \"reject\": use deny, allow or authenticated",
    );
}

#[test]
fn client_problems() {
    let rule = |yaml: &str| authz(&format!("      - {yaml}\n"));
    rejects(
        &rule("{name: r, identities: [\"spiffe://mesh.local/ns/a\"]}"),
        "identities",
        "authorization \"books-authz\" rule \"r\" identities[0]: invalid identity \"spiffe://mesh.local/ns/a\"",
    );
    rejects(&rule("{identities: [web]}"), "identities", "missing the spiffe:// scheme");
    rejects(
        &rule("{networks: [10.0.0.0/8, 10.0.0.1/8]}"),
        "networks",
        "rule \"rule-0\" networks[1]: invalid CIDR \"10.0.0.1/8\": host bits are set after the /8 prefix: did you mean 10.0.0.0/8?",
    );
    rejects(&rule("{networks: [10.0.0.0/33]}"), "networks", "prefix length \"33\" is not a number from 0 to 32");
    rejects(
        &rule("{networks: [everywhere]}"),
        "networks",
        "invalid CIDR \"everywhere\": \"everywhere\" is not an IP address",
    );
    rejects(
        &rule("{serviceAccounts: [Web]}"),
        "serviceAccounts",
        "serviceAccounts[0]: invalid service account \"Web\"",
    );
    rejects(&rule("{serviceAccounts: [a/b/c]}"), "serviceAccounts", "invalid service account \"a/b/c\" (name \"b/c\"");
    rejects(&rule("{namespaces: [\"\"]}"), "namespaces", "namespaces[0]: invalid namespace \"\": it is empty");
    rejects(&rule("{name: r}"), "name: r", "rule \"r\": it allows no client: give identities, serviceAccounts");
    rejects(&rule("{networks: [], identities: []}"), "networks", "it allows no client");
    rejects(&rule("{networks: [::/0], http: []}"), "http", "rule \"rule-0\" http: the list is empty");
    rejects(
        &rule("{networks: [::/0], http: [{path: {regex: \"[\"}}]}"),
        "http",
        "http[0].path.regex: regex \"[\" does not compile",
    );
    rejects(&rule("{networks: [::/0], ports: [1]}"), "ports: [1]", "unknown field \"ports\"");
}

#[test]
fn duplicate_names() {
    let text = with(
        "authorizations:\n  - name: a\n    service: books\n    port: 7001\n  - name: a\n    service: books\n    port: 7002\n",
    );
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].message.contains("duplicate authorization \"a\" in namespace \"default\" (first defined on line"));
    let text = authz("      - {name: r, networks: [::/0]}\n      - {name: r, namespaces: [shop]}\n");
    let first = line_of(&text, "{name: r, networks");
    rejects(&text, "{name: r, namespaces", &format!("rule \"r\": duplicate rule name (first used on line {first})"));
    // A route and an authorization may share a name.
    valid(&with(
        "routes:\n  - name: a\n    service: books\n    rules: [{}]\nauthorizations:\n  - name: a\n    service: books\n",
    ));
}

#[test]
fn one_policy_per_workload_port() {
    let text = with(
        "authorizations:
  - name: first
    service: books
    port: 7001
  - name: second
    service: books
",
    );
    let first = line_of(&text, "name: first");
    let problem = one_problem(
        &text,
        first + 4,
        &format!(
            "authorization \"second\" service: selects port 8001 of the workloads running as service account \"books\" \
             in namespace \"default\", as authorization \"first\" (line {first}) does: merge the two policies"
        ),
    );
    assert_eq!(pos(&problem).1, 14, "at the service field");
    // Different ports of one workload are fine.
    valid(&with(
        "authorizations:\n  - {name: a, service: books, port: 7001}\n  - {name: b, service: books, port: 7002}\n",
    ));
    // Two services sharing a service account and a target port clash too.
    let text = "\
services:
  - {name: books, serviceAccount: shared, ports: [{port: 80, targetPort: 8080}]}
  - {name: shelf, serviceAccount: shared, ports: [{port: 81, targetPort: 8080}]}
authorizations:
  - {name: a, service: books}
  - {name: other, service: shelf}
";
    rejects(text, "name: other", "selects port 8080 of the workloads running as service account \"shared\"");
}

#[test]
fn the_documented_example_is_valid() {
    let text = "\
services:
  - name: books
    ports: [{port: 7001}]
    trafficPolicy:
      circuitBreaker: {consecutiveFailures: 5, baseEjection: 10s, maxEjection: 5m}
      limits: {maxConcurrentRequests: 1000, maxPendingRequests: 100, maxConnectionsPerEndpoint: 0}
      retryBudget: {ratio: 0.2, minPerSecond: 10, ttl: 10s}
  - name: books-v2
    ports: [{port: 7001}]
routes:
  - name: books-routes
    namespace: default
    service: books
    port: 7001
    rules:
      - name: canary
        matches:
          - path: {exact: /x}
            headers: [{name: x-canary, exact: \"1\"}, {name: x-user, regex: \"^a\"}]
            method: GET
            host: books.example
            grpc: {service: pkg.Books, method: Get}
        backends:
          - service: books
            weight: 90
          - service: books-v2
            port: 7001
            weight: 10
        timeout: 2s
        retries: {attempts: 2, on: [5xx, gateway-error, connect-failure, reset, unavailable], backoff: {base: 25ms, max: 250ms}, perTryTimeout: 1s, bufferLimit: 65536}
        faults: {abort: {percent: 10, httpStatus: 503}, delay: {percent: 5, duration: 100ms}}
        rateLimit: {requestsPerSecond: 100, burst: 20}
authorizations:
  - name: books-authz
    namespace: default
    service: books
    port: 7001
    default: deny
    requireMtls: true
    rules:
      - name: allow-web
        identities: [spiffe://mesh.local/ns/default/sa/web]
        serviceAccounts: [web, shop/cart]
        namespaces: [shop]
        networks: [10.0.0.0/8]
        http: [{path: {prefix: /admin}, method: GET}]
";
    let snapshot = valid(text);
    assert_eq!((snapshot.routes.len(), snapshot.authorizations.len()), (1, 1));
    let out = crate::translate::outbound_policy(&snapshot, &"books.default:7001".parse().expect("target"));
    assert_eq!(out.routes[0].name, "books-routes/canary");
    let inb = crate::translate::inbound_policy(&snapshot, Some("mesh.local"), "default", "books", 7001);
    // The explicit identity and the expanded `web` account are one identity.
    assert_eq!(
        inb.authorizations[0].identities,
        ["spiffe://mesh.local/ns/default/sa/web", "spiffe://mesh.local/ns/shop/sa/cart"]
    );
}
