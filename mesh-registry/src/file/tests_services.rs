//! The `services` section's validation rules: names, ports, endpoints and
//! virtual addresses.

use super::test_support::{one_problem, pos, valid};

#[test]
fn duplicate_service() {
    let text = "\
services:
  - name: books
    ports: [{port: 7001}]
  - name: shelf
    ports: [{port: 7001}]
  - name: books
    namespace: default
    ports: [{port: 7002}]
";
    let problem =
        one_problem(text, 6, "duplicate service \"books\" in namespace \"default\" (first defined on line 2)");
    assert_eq!(pos(&problem).1, 11);

    // The same name in another namespace is another service.
    let other = "\
services:
  - name: books
    ports: [{port: 7001}]
  - name: books
    namespace: shop
    ports: [{port: 7001}]
";
    assert_eq!(valid(other).services.len(), 2);
}

#[test]
fn port_range() {
    let port = |value: &str| format!("services:\n  - name: books\n    ports:\n      - port: {value}\n");
    one_problem(&port("70000"), 4, "port 70000 is out of range: use 1-65535");
    one_problem(&port("0"), 4, "port 0 is out of range: use 1-65535");
    one_problem(&port("-1"), 4, "port -1 is out of range: use 1-65535");
    assert_eq!(valid(&port("65535")).services[0].ports[0].port, 65535);
    one_problem(
        "services:\n  - name: books\n    ports:\n      - port: 1\n        targetPort: 65536\n",
        5,
        "targetPort 65536 is out of range: use 1-65535",
    );
}

#[test]
fn ports_are_required() {
    one_problem("services:\n  - name: books\n", 2, "service \"books\" has no ports: list at least one");
    one_problem("services:\n  - name: books\n    ports: []\n", 3, "service \"books\" has no ports: list at least one");
}

#[test]
fn duplicate_port() {
    let text = "\
services:
  - name: books
    ports:
      - port: 7001
      - port: 7002
      - port: 7001
        name: again
";
    one_problem(text, 6, "duplicate port 7001 (first defined on line 4)");
}

#[test]
fn bad_protocol() {
    one_problem(
        "services:\n  - name: books\n    ports:\n      - port: 1\n        protocol: htp\n",
        5,
        "unknown protocol \"htp\": use detect, http, http1, http2, grpc, opaque or tcp",
    );
}

fn endpoint(fields: &str) -> String {
    format!("services:\n  - name: books\n    ports:\n      - port: 7001\n    endpoints:\n{fields}")
}

#[test]
fn endpoint_address_must_parse() {
    let address = |a: &str| endpoint(&format!("      - address: \"{a}\"\n"));
    one_problem(
        &address("127.0.0.1:99999"),
        6,
        "endpoint address \"127.0.0.1:99999\" does not parse as ip:port: port 99999 is out of \
         range: use 1-65535",
    );
    one_problem(&address("10.0.0.5"), 6, "it has no port");
    one_problem(&address("books:80"), 6, "\"books\" is not an IP address");
    one_problem(&address("fd00::1:80:x"), 6, "does not parse as ip:port");
    one_problem(&address("10.0.0.5:http"), 6, "the port \"http\" is not a number");
    one_problem(&address("10.0.0.5:0"), 6, "has port 0");
}

#[test]
fn endpoint_ip_must_parse() {
    one_problem(&endpoint("      - ip: 10.0.0.300\n"), 6, "endpoint ip \"10.0.0.300\" is not an IP address");
    one_problem(&endpoint("      - ip: 10.0.0.5:80\n"), 6, "use \"address\" for ip:port");
}

#[test]
fn exactly_one_of_address_and_ip() {
    let both = endpoint("      - address: 10.0.0.5:80\n        ip: 10.0.0.5\n");
    one_problem(&both, 6, "endpoint has both \"address\" and \"ip\"");
    let neither = endpoint("      - weight: 5\n");
    one_problem(&neither, 6, "endpoint has neither \"address\" nor \"ip\"");
}

#[test]
fn address_needs_a_single_port_service() {
    let text = "\
services:
  - name: books
    ports:
      - port: 7001
      - port: 7002
    endpoints:
      - ip: 10.0.0.5
      - address: 10.0.0.6:7001
";
    one_problem(text, 8, "only fits a service with exactly one port, and this one has 2");
}

#[test]
fn duplicate_endpoints() {
    let twice = endpoint("      - address: 127.0.0.1:4243\n      - address: 127.0.0.1:4243\n");
    one_problem(&twice, 7, "duplicate endpoint address 127.0.0.1:4243 (first listed on line 6)");

    let ips = endpoint("      - ip: 10.0.0.5\n        weight: 1\n      - ip: 10.0.0.5\n");
    one_problem(&ips, 8, "duplicate endpoint address 10.0.0.5:7001 (first listed on line 6)");

    // `ip` reaches the target port, which `address` names explicitly.
    let mixed = endpoint("      - ip: 10.0.0.5\n      - address: 10.0.0.5:7001\n");
    one_problem(&mixed, 7, "duplicate endpoint address 10.0.0.5:7001");

    // Same IP, other port: two replicas on one host.
    let replicas = endpoint("      - address: 127.0.0.1:4243\n      - address: 127.0.0.1:4244\n");
    assert_eq!(valid(&replicas).endpoint_count(), 2);
}

#[test]
fn weight_range() {
    let weight = |w: &str| endpoint(&format!("      - ip: 10.0.0.5\n        weight: {w}\n"));
    one_problem(&weight("1000001"), 7, "weight 1000001 is out of range: use 0-1000000");
    one_problem(&weight("-1"), 7, "weight -1 is out of range");
    assert_eq!(valid(&weight("0")).services[0].endpoints[0].weight, 0);
}

#[test]
fn virtual_addresses() {
    let text = "\
services:
  - name: books
    addresses: [10.96.0.10]
    ports: [{port: 80}, {port: 81}]
  - name: shelf
    addresses:
      - 10.96.0.11
      - 10.96.0.10
    ports: [{port: 80}]
";
    one_problem(
        text,
        8,
        "virtual address 10.96.0.10:80 is already claimed by service \"books\" in namespace \
         \"default\" (line 3)",
    );

    // One address, different ports: no conflict.
    let ok = text.replace("ports: [{port: 80}]\n", "ports: [{port: 82}]\n");
    assert_eq!(valid(&ok).services.len(), 2);

    one_problem(
        "services:\n  - name: books\n    addresses: [10.96.0.300]\n    ports: [{port: 80}]\n",
        3,
        "virtual address \"10.96.0.300\" is not an IP address",
    );
    one_problem(
        "services:\n  - name: books\n    addresses:\n      - 10.96.0.1\n      - 10.96.0.1\n    \
         ports: [{port: 80}]\n",
        5,
        "duplicate virtual address 10.96.0.1 (first listed on line 4)",
    );
}

#[test]
fn names_are_dns_labels() {
    let named = |field: &str, value: &str| {
        format!("services:\n  - name: books\n    {field}: \"{value}\"\n    ports: [{{port: 1}}]\n")
    };
    let long = "a".repeat(64);
    for (field, value, why) in [
        ("name", "Books", "uppercase letter 'B'"),
        ("name", "-books", "starts or ends with '-'"),
        ("name", "books-", "starts or ends with '-'"),
        ("name", "books_1", "contains '_'"),
        ("name", "", "it is empty"),
        ("name", long.as_str(), "64 characters long"),
        ("namespace", "Shop", "invalid namespace \"Shop\""),
        ("serviceAccount", "a.b", "invalid serviceAccount \"a.b\""),
    ] {
        // `name` given twice would be a duplicate key: replace the first.
        let text = if field == "name" {
            named("name", value).replacen("  - name: books\n    name:", "  - name:", 1)
        } else {
            named(field, value)
        };
        let line = if field == "name" { 2 } else { 3 };
        let problem = one_problem(&text, line, why);
        assert!(problem.message.contains("use a DNS label"), "{problem:?}");
    }
    let ok = "a".repeat(63);
    assert_eq!(valid(&named("namespace", &ok)).services[0].key.namespace, ok);
    assert_eq!(valid(&named("namespace", "shop-2")).services[0].key.namespace, "shop-2");
}
