use super::*;
use crate::store::Target;
use std::io::Write as _;

const PATH: &str = "registry.yaml";

pub(super) fn parsed(text: &str) -> Result<RegistrySnapshot, FileError> {
    parse(Path::new(PATH), text)
}

pub(super) fn valid(text: &str) -> RegistrySnapshot {
    match parsed(text) {
        Ok(snapshot) => snapshot,
        Err(err) => panic!("expected a valid registry, got:\n{err}"),
    }
}

pub(super) fn problems(text: &str) -> Vec<Problem> {
    match parsed(text) {
        Ok(snapshot) => panic!("expected a rejection, got {snapshot:?}"),
        Err(FileError::Invalid { problems, .. }) => problems,
        Err(err) => panic!("expected Invalid, got {err}"),
    }
}

/// Asserts that `text` has exactly one problem, on `line`, mentioning `needle`.
pub(super) fn one_problem(text: &str, line: u32, needle: &str) -> Problem {
    let problems = problems(text);
    assert_eq!(problems.len(), 1, "expected one problem, got {problems:#?}");
    let problem = problems.into_iter().next().expect("one problem");
    assert_eq!(problem.line, line, "wrong line for {problem:?}");
    assert!(problem.message.contains(needle), "{:?} lacks {needle:?}", problem.message);
    problem
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

/// A single-port `books` service with one endpoint at `address`.
fn books(address: &str) -> String {
    format!(
        "services:\n  - name: books\n    ports:\n      - port: 7001\n    endpoints:\n      \
         - address: \"{address}\"\n"
    )
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

    let store = Store::new(None);
    store.replace_all(&snapshot);
    let resolution = store.resolve(&"books.default:7001".parse::<Target>().expect("target"));
    let addrs: Vec<String> = resolution.endpoints.keys().map(ToString::to_string).collect();
    assert_eq!(addrs, ["[::1]:4243", "[::1]:7001", "[fd00::7]:4244"]);
}

// --- Parser (syntax and type) errors -----------------------------------------

#[test]
fn bad_yaml_is_one_problem_at_the_parser_location() {
    let problem = one_problem("services:\n  - name: books\n    ports: [\n", 3, "unclosed bracket");
    assert_eq!(problem.column, 12);
}

#[test]
fn unknown_field() {
    let problem = one_problem(
        "services:\n  - name: books\n    prots:\n      - port: 7001\n",
        3,
        "unknown field \"prots\", expected one of name, namespace, serviceAccount, addresses, \
         ports, endpoints",
    );
    assert_eq!(problem.column, 5);
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

// --- Semantic problems ---------------------------------------------------------

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
    assert_eq!(problem.column, 11);

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
    let lines: Vec<u32> = problems.iter().map(|p| p.line).collect();
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

// --- Reading ------------------------------------------------------------------

#[test]
fn load_reads_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, books("127.0.0.1:4243")).expect("write");
    assert_eq!(load(&path).expect("valid").endpoint_count(), 1);

    let missing = dir.path().join("missing.yaml");
    let err = load(&missing).expect_err("missing");
    assert!(matches!(err, FileError::Read { .. }));
    assert!(err.to_string().starts_with("cannot read registry file "), "{err}");
    assert!(err.to_string().contains("missing.yaml"), "{err}");

    std::fs::write(&path, b"services: []\n# caf\xe9\n").expect("write");
    match load(&path) {
        Err(FileError::Invalid { problems, .. }) => {
            assert_eq!((problems[0].line, problems[0].column), (2, 6));
            assert!(problems[0].message.contains("not valid UTF-8"));
        }
        other => panic!("expected invalid UTF-8, got {other:?}"),
    }
}

// --- Watching -----------------------------------------------------------------

fn resolves(store: &Store, addr: &str) -> bool {
    let target: Target = "books.default:7001".parse().expect("target");
    let addr: SocketAddr = addr.parse().expect("address");
    store.resolve(&target).endpoints.contains_key(&addr)
}

/// Waits up to 1 s for `check` to hold.
async fn within_a_second(check: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

/// Writes like most editors: a new file renamed over the old one.
fn rename_over(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).expect("write temporary file");
    std::fs::rename(&tmp, path).expect("rename over");
}

/// Truncates and rewrites in place (the inode stays).
fn rewrite_in_place(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new().write(true).truncate(true).open(path).expect("open");
    file.write_all(text.as_bytes()).expect("write");
}

/// Reload attempts recorded with `result` (`ok` or `error`).
fn reloads(metrics: &RegistryMetrics, result: &str) -> u64 {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    let prefix = format!("registry_reloads_total{{registry=\"file\",result=\"{result}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |n| n.parse().expect("a count"))
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    store: Store,
    metrics: RegistryMetrics,
    registry: FileRegistry,
}

fn fixture(text: &str, poll: Duration) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, text).expect("write");
    let store = Store::new(None);
    let metrics = RegistryMetrics::default();
    let registry = FileRegistry::new(&path, poll, store.clone(), metrics.clone());
    Fixture { _dir: dir, path, store, metrics, registry }
}

#[test]
fn initial_load_fills_the_store_or_fails() {
    let mut f = fixture(&books("127.0.0.1:4243"), Duration::from_millis(50));
    f.registry.load_initial().expect("valid");
    assert!(resolves(&f.store, "127.0.0.1:4243"));
    assert_eq!(reloads(&f.metrics, "ok"), 1);

    let mut bad = fixture("services:\n  - name: books\n    ports: []\n", Duration::from_millis(50));
    let err = bad.registry.load_initial().expect_err("invalid");
    assert!(err.to_string().contains("registry.yaml:3:12: service \"books\" has no ports"), "{err}");
    assert_eq!(bad.store.size(), (0, 0));
    assert_eq!(reloads(&bad.metrics, "error"), 1);

    std::fs::remove_file(&bad.path).expect("remove");
    assert!(matches!(bad.registry.load_initial(), Err(FileError::Read { .. })));
}

#[tokio::test]
async fn run_reloads_changes_and_keeps_the_last_good_registry() {
    let Fixture { _dir, path, store, metrics, mut registry } =
        fixture(&books("127.0.0.1:4243"), Duration::from_millis(50));
    registry.load_initial().expect("valid");
    let (trigger, shutdown) = mesh_core::shutdown::channel();
    let task = tokio::spawn(registry.run(shutdown));

    // A valid change, written the way editors do.
    rename_over(&path, &books("127.0.0.1:4244"));
    assert!(within_a_second(|| resolves(&store, "127.0.0.1:4244")).await, "change not applied");
    assert!(!resolves(&store, "127.0.0.1:4243"));

    // An invalid file: rejected, counted, and the last good registry stays.
    rewrite_in_place(&path, "services:\n  - name: books\n    prots: []\n");
    assert!(within_a_second(|| reloads(&metrics, "error") == 1).await, "rejection not counted");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(resolves(&store, "127.0.0.1:4244"));
    assert_eq!(reloads(&metrics, "error"), 1, "a rejected file is reported once");

    // Fixed in place: picked up.
    rewrite_in_place(&path, &books("[::1]:4245"));
    assert!(within_a_second(|| resolves(&store, "[::1]:4245")).await, "fix not applied");
    assert!(!resolves(&store, "127.0.0.1:4244"));

    trigger.trigger();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("run stops on shutdown")
        .expect("run does not panic");
}

#[tokio::test]
async fn run_survives_extreme_poll_intervals() {
    for poll in [Duration::ZERO, Duration::MAX] {
        let Fixture { _dir, registry, .. } = fixture("", poll);
        let (trigger, shutdown) = mesh_core::shutdown::channel();
        let task = tokio::spawn(registry.run(shutdown));
        tokio::time::sleep(Duration::from_millis(20)).await;
        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("run stops on shutdown")
            .expect("run does not panic");
    }
}

#[test]
fn a_vanished_file_is_an_error_until_it_returns() {
    let mut f = fixture(&books("127.0.0.1:4243"), Duration::from_millis(50));
    f.registry.load_initial().expect("valid");
    std::fs::remove_file(&f.path).expect("remove");
    for _ in 0..3 {
        f.registry.poll_once();
    }
    assert!(resolves(&f.store, "127.0.0.1:4243"), "the last good registry stays");
    assert_eq!(reloads(&f.metrics, "error"), 1, "counted once, not every poll");

    // The same content again: valid again, nothing to replace.
    rename_over(&f.path, &books("127.0.0.1:4243"));
    f.registry.poll_once();
    f.registry.poll_once();
    assert_eq!(reloads(&f.metrics, "ok"), 2);

    std::fs::remove_file(&f.path).expect("remove");
    f.registry.poll_once();
    rename_over(&f.path, &books("127.0.0.1:4244"));
    f.registry.poll_once();
    f.registry.poll_once();
    assert!(resolves(&f.store, "127.0.0.1:4244"));
    assert_eq!((reloads(&f.metrics, "ok"), reloads(&f.metrics, "error")), (3, 2));
}

#[test]
fn a_half_written_file_is_not_served() {
    let mut f = fixture(&books("127.0.0.1:4243"), Duration::from_millis(50));
    f.registry.load_initial().expect("valid");
    // Caught between truncation and write: an empty file is a valid (empty)
    // registry, but it must not replace the one in force on first sight.
    rewrite_in_place(&f.path, "");
    f.registry.poll_once();
    assert!(resolves(&f.store, "127.0.0.1:4243"));
    rewrite_in_place(&f.path, &books("127.0.0.1:4244"));
    f.registry.poll_once();
    f.registry.poll_once();
    assert!(resolves(&f.store, "127.0.0.1:4244"));
    assert_eq!((reloads(&f.metrics, "ok"), reloads(&f.metrics, "error")), (2, 0));
}

#[test]
fn a_rewrite_with_identical_metadata_is_seen() {
    let mut f = fixture(&books("127.0.0.1:4243"), Duration::from_millis(50));
    f.registry.load_initial().expect("valid");
    let before = std::fs::metadata(&f.path).expect("metadata");
    // Same size, same inode, and the mtime put back: as when two writes land
    // within one tick of the filesystem clock.
    rewrite_in_place(&f.path, &books("127.0.0.1:4244"));
    let file = std::fs::File::options().write(true).open(&f.path).expect("open");
    file.set_modified(before.modified().expect("mtime")).expect("set mtime");
    let after = std::fs::metadata(&f.path).expect("metadata");
    assert_eq!(Stamp::of(&before), Stamp::of(&after), "test premise");

    f.registry.poll_once();
    f.registry.poll_once();
    assert!(resolves(&f.store, "127.0.0.1:4244"));
}

#[test]
fn touching_the_file_does_not_reload_it() {
    let mut f = fixture(&books("127.0.0.1:4243"), Duration::from_millis(50));
    f.registry.load_initial().expect("valid");
    rename_over(&f.path, &books("127.0.0.1:4243"));
    for _ in 0..3 {
        f.registry.poll_once();
    }
    assert_eq!(reloads(&f.metrics, "ok"), 1, "identical bytes are not loaded again");
    assert!(resolves(&f.store, "127.0.0.1:4243"));
}

#[test]
fn debug_output_omits_content() {
    let f = fixture(&books("127.0.0.1:4243"), Duration::from_millis(50));
    let debug = format!("{:?}", f.registry);
    assert!(debug.contains("FileRegistry") && !debug.contains("books"), "{debug}");
}
