//! The file format: defaults, every field, YAML syntax and type errors, and
//! how problems are reported.

use super::test_support::{one_problem, parsed, pos, problems, valid};
use super::*;
use crate::target::Target;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

// --- Format and defaults -----------------------------------------------------

#[test]
fn empty_files_are_empty_registries() {
    for text in ["", "\n", "# no services yet\n", "services: []\n", "services:\n", "---\n"] {
        assert_eq!(valid(text), RegistrySnapshot::default(), "for {text:?}");
    }
}

#[test]
fn defaults_apply() {
    let snapshot = valid(
        "\
services:
  - name: books
    ports:
      - port: 7001
    endpoints:
      - ip: 10.0.0.5
",
    );
    let expected = Service {
        key: ServiceKey::new("default", "books"),
        addresses: vec![],
        ports: vec![ServicePort { port: 7001, name: None, target_port: 7001, protocol: Protocol::Detect }],
        service_account: "books".to_string(),
        endpoints: vec![Endpoint { ip: ip("10.0.0.5"), port: None, weight: 100, labels: BTreeMap::new() }],
        traffic_policy: None,
    };
    assert_eq!(snapshot.services, vec![expected]);
}

#[test]
fn every_field_is_read() {
    let snapshot = valid(
        "\
services:
  - name: books
    namespace: shop
    serviceAccount: books-sa
    addresses: [10.96.0.10, \"fd00::10\"]
    ports:
      - port: 7001
        name: http
        targetPort: 8001
        protocol: http
      - port: 7002
        protocol: grpc
    endpoints:
      - ip: 10.0.0.5
        weight: 0
        labels: {replica: books-0, zone: a}
      - ip: fd00::5
        weight: 1000000
  - name: shelf
    ports:
      - port: 80
    endpoints:
      - address: 127.0.0.1:4243
",
    );
    let [books, shelf] = &snapshot.services[..] else { panic!("two services: {snapshot:?}") };
    assert_eq!(books.key, ServiceKey::new("shop", "books"));
    assert_eq!(books.service_account, "books-sa");
    assert_eq!(books.addresses, vec![ip("10.96.0.10"), ip("fd00::10")]);
    assert_eq!(
        books.ports,
        vec![
            ServicePort { port: 7001, name: Some("http".into()), target_port: 8001, protocol: Protocol::Http1 },
            ServicePort { port: 7002, name: None, target_port: 7002, protocol: Protocol::Http2 },
        ]
    );
    let labels: BTreeMap<String, String> = [("replica".into(), "books-0".into()), ("zone".into(), "a".into())].into();
    assert_eq!(
        books.endpoints,
        vec![
            Endpoint { ip: ip("10.0.0.5"), port: None, weight: 0, labels },
            Endpoint { ip: ip("fd00::5"), port: None, weight: 1_000_000, labels: BTreeMap::new() },
        ]
    );
    assert_eq!(shelf.endpoints[0].ip, ip("127.0.0.1"));
    assert_eq!(shelf.endpoints[0].port, Some(4243));
    assert_eq!(snapshot.endpoint_count(), 3);
}

#[test]
fn protocol_names() {
    let cases = [
        ("detect", Protocol::Detect),
        ("http", Protocol::Http1),
        ("http1", Protocol::Http1),
        ("http2", Protocol::Http2),
        ("grpc", Protocol::Http2),
        ("opaque", Protocol::Opaque),
        ("tcp", Protocol::Opaque),
    ];
    for (name, protocol) in cases {
        let text = format!("services:\n  - name: books\n    ports:\n      - port: 7001\n        protocol: {name}\n");
        assert_eq!(valid(&text).services[0].ports[0].protocol, protocol, "for {name}");
    }
}

#[test]
fn ipv6_endpoints() {
    let snapshot = valid(
        "\
services:
  - name: books
    ports:
      - port: 7001
    endpoints:
      - address: \"[::1]:4243\"
      - address: '[fd00::7]:4244'
      - ip: \"::1\"
",
    );
    let endpoints = &snapshot.services[0].endpoints;
    assert_eq!((endpoints[0].ip, endpoints[0].port), (ip("::1"), Some(4243)));
    assert_eq!((endpoints[1].ip, endpoints[1].port), (ip("fd00::7"), Some(4244)));
    assert_eq!((endpoints[2].ip, endpoints[2].port), (ip("::1"), None));

    let index = crate::index::Index::new(&snapshot, None);
    let resolution = index.resolve(&"books.default:7001".parse::<Target>().expect("target"));
    let addrs: Vec<String> = resolution.endpoints.keys().map(ToString::to_string).collect();
    assert_eq!(addrs, ["[::1]:4243", "[::1]:7001", "[fd00::7]:4244"]);
}

// --- Parser (syntax and type) errors -----------------------------------------

#[test]
fn bad_yaml_is_one_problem_at_the_parser_location() {
    let problem = one_problem("services:\n  - name: books\n    ports: [\n", 3, "unclosed bracket");
    assert_eq!(pos(&problem).1, 12);
}

#[test]
fn unknown_field() {
    let problem = one_problem(
        "services:\n  - name: books\n    prots:\n      - port: 7001\n",
        3,
        "unknown field \"prots\", expected one of name, namespace, serviceAccount, addresses, \
         ports, endpoints",
    );
    assert_eq!(pos(&problem).1, 5);
    one_problem("servics: []\n", 1, "unknown field \"servics\"");
    one_problem(
        "services:\n  - name: books\n    ports:\n      - port: 1\n        protocl: http\n",
        5,
        "unknown field \"protocl\"",
    );
}

#[test]
fn wrong_types() {
    let port = |value: &str| format!("services:\n  - name: books\n    ports:\n      - port: {value}\n");
    one_problem(&port("abc"), 4, "expected a whole number, found \"abc\"");
    one_problem(&port("7001.5"), 4, "expected a whole number, found \"7001.5\"");
    one_problem(&port("~"), 4, "expected a whole number here, found nothing");
    one_problem(&port("[1]"), 4, "expected a single value, found a list");
    one_problem("services: {}\n", 1, "expected a list here");
    one_problem("services:\n  - books\n", 2, "expected a mapping");
    one_problem("services:\n  - ports: []\n", 2, "missing required field \"name\"");
    one_problem(
        "services:\n  - name: books\n    ports: [{port: 1}]\n    endpoints:\n      \
         - address: [::1]:4243\n",
        5,
        "quote values that start with '['",
    );
}

#[test]
fn duplicate_keys_and_documents() {
    one_problem("services: []\nservices: []\n", 2, "duplicate key \"services\"");
    one_problem("services: []\n---\nservices: []\n", 3, "more than one YAML document");
}

// --- Reporting ----------------------------------------------------------------

#[test]
fn every_problem_is_reported_in_file_order() {
    let text = "\
services:
  - name: Books
    ports:
      - port: 70000
      - port: 7001
        protocol: htp
    endpoints:
      - ip: nope
  - name: shelf
    ports: []
";
    let problems = problems(text);
    let lines: Vec<u32> = problems.iter().map(|p| pos(p).0).collect();
    assert_eq!(lines, [2, 4, 6, 8, 10], "{problems:#?}");

    let err = parsed(text).expect_err("invalid");
    let rendered = err.to_string();
    let first = rendered.lines().next().expect("a line");
    assert!(first.starts_with("registry.yaml:2:11: invalid service name \"Books\""), "{first}");
    assert_eq!(rendered.lines().count(), 5, "{rendered}");
    assert!(rendered.contains("\nregistry.yaml:4:15: port 70000 is out of range: use 1-65535\n"));
}

#[test]
fn messages_stay_on_one_line() {
    let text = "services:\n  - name: \"bo\\nks\"\n    ports: [{port: 1}]\n";
    let problem = one_problem(text, 2, "invalid service name \"bo\\nks\"");
    assert!(!problem.message.contains('\n'));
    let key = "services:\n  - {name: books, ports: [{port: 1}], \"e\\nx\": 1}\n";
    assert!(!parsed(key).expect_err("invalid").to_string().contains("e\nx"));
}

#[test]
fn no_panic_on_any_prefix_or_odd_input() {
    let text = "\
services:
  - name: books
    namespace: shop
    addresses: [10.96.0.10, \"fd00::10\"]
    ports:
      - {port: 7001, name: http, targetPort: 8001, protocol: grpc}
    endpoints:
      - address: \"[::1]:4243\"
        labels: {replica: books-0}
";
    let mut accepted = 0;
    for (i, _) in text.char_indices() {
        accepted += usize::from(parsed(&text[..i]).is_ok());
    }
    assert!(accepted > 0);
    let deep = format!("services: {}{}", "[".repeat(100_000), "]".repeat(100_000));
    let bomb = "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n\
                c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c]\n";
    for odd in [deep.as_str(), bomb, "\0", "*a", "&a [*a]", "{", "- - -", "services: !!binary x\n"] {
        assert!(parsed(odd).is_err(), "{odd:?} should be rejected");
    }
}
