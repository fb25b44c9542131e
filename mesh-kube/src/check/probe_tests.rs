use super::*;
use mesh_policy::model::{AuthorizationPolicy, AuthorizationRule, DefaultAction, ServiceAccountRef};
use mesh_registry::model::{Protocol, Service as ModelService, ServicePort};

fn pod(ns: &str, name: &str, app: &str, ready: bool) -> Workload {
    Workload {
        namespace: ns.into(),
        name: name.into(),
        labels: BTreeMap::from([("app".to_string(), app.to_string())]),
        service_account: app.into(),
        ip: None,
        proxy_ready: ready,
        admin_port: 4191,
    }
}

fn service(ns: &str, name: &str, port: u16) -> Service {
    Service {
        namespace: ns.into(),
        name: name.into(),
        selector: BTreeMap::from([("app".to_string(), name.to_string())]),
        ports: vec![port],
    }
}

fn pick(c: Choice) -> (String, String) {
    match c {
        Choice::Probe(p) => (p.source.id(), p.target()),
        other => panic!("no pair: {other:?}"),
    }
}

/// Catches a pick that probes a pod's own Service (no data-plane hop), a
/// source whose proxy is not ready, a pair the policy denies chosen over
/// one it allows, a skip reported when two workloads exist (or a pair
/// made up when they do not), and flags naming nothing that pass.
#[test]
fn two_meshed_workloads_are_chosen_or_the_probe_is_skipped() {
    let pods = vec![
        pod("demo", "authors-1", "authors", true),
        pod("demo", "books-1", "books", true),
        pod("demo", "web-1", "web", false),
        pod("other", "x-1", "x", true),
    ];
    let services = vec![service("demo", "books", 7001), service("demo", "web", 8080), service("demo", "authors", 7002)];
    let all = |_: &Workload, _: &ServiceKey, _: u16| true;
    // authors is the first target; books-1 (same namespace, ready) the first source.
    assert_eq!(pick(choose(&pods, &services, None, None, all)), ("demo/books-1".into(), "authors.demo:7002".into()));
    // The policy admits only authors → books: that pair is preferred.
    let only = |w: &Workload, s: &ServiceKey, _: u16| w.name == "authors-1" && s.name == "books";
    assert_eq!(pick(choose(&pods, &services, None, None, only)), ("demo/authors-1".into(), "books.demo:7001".into()));
    // Nothing allowed: still a pair (the probe then shows the denial).
    let none = |_: &Workload, _: &ServiceKey, _: u16| false;
    assert_eq!(pick(choose(&pods, &services, None, None, none)).0, "demo/books-1");
    // web's proxy is not ready: web is neither a source nor a target.
    let c = choose(&pods, &services, Some("demo/web-1"), None, all);
    assert!(matches!(&c, Choice::Invalid(why) if why.contains("ready proxy")), "{c:?}");
    let c = choose(&pods, &services, None, Some("web.demo:8080"), all);
    assert!(matches!(&c, Choice::Invalid(why) if why.contains("backs it")), "{c:?}");
    let c = choose(&pods, &services, None, Some("nope.demo:1"), all);
    assert!(matches!(&c, Choice::Invalid(why) if why.contains("no such Service")), "{c:?}");
    assert_eq!(
        pick(choose(&pods, &services, Some("other/x-1"), Some("books.demo:7001"), none)),
        ("other/x-1".into(), "books.demo:7001".into())
    );
    // A pod alone with its own Service: nothing to probe between.
    let c = choose(&pods[1..2], &services, None, None, all);
    assert!(matches!(&c, Choice::Skip(why) if why.contains("two meshed workloads")), "{c:?}");
    let c = choose(&pods[1..2], &services, Some("demo/books-1"), Some("books.demo:7001"), all);
    assert!(matches!(c, Choice::Invalid(_)), "{c:?}");
}

/// Catches an expectation that ignores the target's policy (allow-all),
/// looks the policy up by the Service port instead of the workload's
/// target port, or matches ServiceAccounts without the trust domain.
#[test]
fn the_expected_decision_is_the_targets_policy_for_the_source() {
    let books = ServiceKey::new("demo", "books");
    let snapshot = RegistrySnapshot {
        services: vec![ModelService {
            key: books.clone(),
            addresses: vec![],
            ports: vec![ServicePort { port: 80, name: None, target_port: 7001, protocol: Protocol::Http1 }],
            service_account: "books".into(),
            endpoints: vec![],
            traffic_policy: None,
        }],
        routes: vec![],
        authorizations: vec![AuthorizationPolicy {
            name: "books".into(),
            namespace: "demo".into(),
            service: books.clone(),
            port: Some(80),
            default: DefaultAction::Deny,
            require_mtls: true,
            rules: vec![AuthorizationRule {
                name: "web".into(),
                identities: vec![],
                service_accounts: vec![ServiceAccountRef { namespace: "demo".into(), name: "web".into() }],
                namespaces: vec![],
                networks: vec![],
                http: vec![],
            }],
        }],
    };
    let web = "spiffe://cluster.local/ns/demo/sa/web";
    assert_eq!(expected(&snapshot, web, None, &books, 80), Ok((true, "books/web".into())));
    let authors = "spiffe://cluster.local/ns/demo/sa/authors";
    assert_eq!(expected(&snapshot, authors, None, &books, 80), Ok((false, "books/default:deny".into())));
    assert!(expected(&snapshot, web, None, &books, 81).is_err());
    assert!(expected(&snapshot, "web", None, &books, 80).is_err());
    let no_policy = RegistrySnapshot { authorizations: vec![], ..snapshot };
    assert!(expected(&no_policy, authors, None, &books, 80).is_ok_and(|(allowed, _)| allowed));
}
