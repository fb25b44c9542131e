use super::*;
use mesh_registry::model::{Endpoint, Protocol, Service, ServiceKey, ServicePort};
use mesh_registry::target::{IdentityNaming, Target};
use std::collections::BTreeMap;
use std::net::SocketAddr;

fn svc(name: &str, vip: Option<&str>, eps: &[&str]) -> Service {
    Service {
        key: ServiceKey::new("default", name),
        addresses: vip.map(|v| vec![v.parse().expect("vip")]).unwrap_or_default(),
        ports: vec![ServicePort { port: 80, name: None, target_port: 8080, protocol: Protocol::Http1 }],
        service_account: name.to_string(),
        endpoints: eps
            .iter()
            .map(|e| {
                let a: SocketAddr = e.parse().expect("endpoint");
                Endpoint { ip: a.ip(), port: Some(a.port()), weight: 1, labels: BTreeMap::new() }
            })
            .collect(),
        traffic_policy: None,
    }
}

fn snapshot(services: Vec<Service>) -> RegistrySnapshot {
    RegistrySnapshot { services, ..Default::default() }
}

fn t(s: &str) -> Target {
    s.parse().expect("target")
}

#[test]
fn parses_targets() {
    assert_eq!(t("books.default:80"), Target::Service { key: ServiceKey::new("default", "books"), port: 80 });
    assert_eq!(t("books:80"), Target::Service { key: ServiceKey::new("default", "books"), port: 80 });
    assert_eq!(
        t("books.shop.svc.cluster.local:80"),
        Target::Service { key: ServiceKey::new("shop", "books"), port: 80 }
    );
    assert_eq!(t("10.0.0.1:80"), Target::Addr("10.0.0.1:80".parse().expect("addr")));
    assert_eq!(t("[::1]:80"), Target::Addr("[::1]:80".parse().expect("addr")));
    for bad in ["books", "books:0", "books:99999", ":80", "a.b.example.com:80", "10.0.0.999:80"] {
        let e = bad.parse::<Target>().expect_err(bad);
        assert!(e.to_string().contains("name.namespace:port"), "{e}");
    }
}

#[test]
fn resolves_names_vips_and_endpoint_addresses() {
    let store = Store::new(Some(IdentityNaming { trust_domain: "mesh.local".into() }));
    store.replace_all(&snapshot(vec![svc("books", Some("10.96.0.1"), &["10.0.0.1:8080", "10.0.0.2:8080"])]));
    let by_name = store.resolve(&t("books.default:80"));
    assert_eq!(by_name.endpoints.len(), 2);
    let ep = by_name.endpoints.values().next().expect("endpoint");
    assert_eq!(ep.identity.as_deref(), Some("spiffe://mesh.local/ns/default/sa/books"));
    assert_eq!(store.resolve(&t("10.96.0.1:80")), by_name, "a VIP resolves to the service");
    let one = store.resolve(&t("10.0.0.2:8080"));
    assert_eq!(one.endpoints.len(), 1, "an endpoint address resolves to itself");
    assert_eq!(one.service.as_ref().map(|m| m.key.name.as_str()), Some("books"));
    assert!(store.resolve(&t("books.default:81")).service.is_none(), "unknown port");
    assert!(store.resolve(&t("10.9.9.9:80")).service.is_none());
}

#[tokio::test]
async fn watches_fire_only_on_change_and_see_services_appear() {
    let store = Store::new(None);
    let mut rx = store.watch(&t("books.default:80"));
    assert!(rx.borrow_and_update().service.is_none());
    store.replace_all(&snapshot(vec![svc("books", None, &["10.0.0.1:8080"])]));
    assert!(rx.has_changed().expect("open"));
    assert_eq!(rx.borrow_and_update().endpoints.len(), 1);
    // An unrelated change does not wake this watch.
    store.upsert(svc("authors", None, &["10.0.0.9:8080"]));
    assert!(!rx.has_changed().expect("open"));
    store.upsert(svc("books", None, &["10.0.0.1:8080", "10.0.0.3:8080"]));
    assert!(rx.has_changed().expect("open"));
    assert_eq!(rx.borrow_and_update().endpoints.len(), 2);
    store.remove(&ServiceKey::new("default", "books"));
    assert!(rx.borrow_and_update().service.is_none());
}

#[test]
fn unwatched_targets_are_forgotten() {
    let store = Store::new(None);
    let rx = store.watch(&t("books.default:80"));
    assert_eq!(store.watchers(), 1);
    drop(rx);
    store.replace_all(&snapshot(vec![]));
    assert_eq!(store.watchers(), 0);
    assert!(store.lock().watches.is_empty());
}

/// Books with two route rules on port 7001 and an authorization of its
/// workload port 8001 naming one identity and two service accounts.
fn policy_snapshot() -> RegistrySnapshot {
    let text = "\
services:
  - name: books
    ports: [{port: 7001, targetPort: 8001}]
    endpoints: [{ip: 10.0.0.5}]
  - name: web
    ports: [{port: 80}]
  - name: cart
    namespace: shop
    ports: [{port: 80}]
  - name: other
    ports: [{port: 80}]
routes:
  - name: books-routes
    service: books
    port: 7001
    rules: [{name: canary, matches: [{path: {prefix: /v2}}]}, {name: rest}]
authorizations:
  - name: books-authz
    service: books
    rules:
      - name: web
        identities: [spiffe://other.domain/ns/x/sa/y]
        serviceAccounts: [web, shop/cart]
";
    mesh_registry::file::parse(std::path::Path::new("registry.yaml"), text).expect("valid test registry")
}

#[tokio::test]
async fn policy_watches_fire_only_when_the_policy_changes() {
    let store = Store::new(None);
    let mut snapshot = policy_snapshot();
    store.replace_all(&snapshot);
    let mut out = store.watch_outbound(&"books.default:7001".parse().expect("target"));
    let mut inb = store.watch_inbound(&InboundTarget::new("default", "books", 8001));
    assert_eq!(out.borrow_and_update().routes.len(), 2);
    assert_eq!(inb.borrow_and_update().authorizations[0].identities.len(), 1);

    // Endpoints are the Destination API's business: no policy change.
    snapshot.services[0].endpoints.clear();
    store.replace_all(&snapshot);
    assert!(!out.has_changed().expect("open") && !inb.has_changed().expect("open"));

    snapshot.routes[0].rules.pop();
    store.replace_all(&snapshot);
    assert!(out.has_changed().expect("open"));
    assert_eq!(out.borrow_and_update().routes.len(), 1);
    assert!(!inb.has_changed().expect("open"));

    // A trust domain expands service accounts: the inbound policy changes.
    store.set_identity(Some(IdentityNaming { trust_domain: "mesh.local".into() }));
    assert!(inb.has_changed().expect("open"));
    assert_eq!(inb.borrow_and_update().authorizations[0].identities.len(), 3);
    assert!(!out.has_changed().expect("open"));

    store.replace_policies(Vec::new(), Vec::new());
    assert_eq!(inb.borrow_and_update().name, "default");
    assert!(out.borrow_and_update().routes.is_empty());
    assert_eq!(store.index().services().count(), 4, "services stay");
}
