use super::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

fn ip4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// Unset fields are left out (the parser's defaults apply), keys are the
/// file's camelCase ones, and a service's endpoints are written even when
/// there are none. Catches: a missing `rename_all` (`service_account:`), a
/// missing `skip_serializing_if` (`namespace: null`).
#[test]
fn writes_only_what_is_set_with_the_files_keys() {
    let file = RegistryFile {
        services: vec![Service {
            service_account: Some("books-sa".into()),
            ports: vec![Port { target_port: Some(8001), ..Port::new(7001) }],
            ..Service::new("books")
        }],
        ..RegistryFile::default()
    };
    assert_eq!(
        to_yaml(&file),
        "services:\n- name: books\n  serviceAccount: books-sa\n  ports:\n  - port: 7001\n    targetPort: 8001\n  endpoints: []\n"
    );
    assert_eq!(to_yaml(&RegistryFile::default()), "{}\n");
}

/// What is written reads back the same, with text that needs quoting in
/// YAML: IPv6 addresses (`[::1]:80` would be a flow sequence), `on`
/// (a boolean in YAML 1.1), `*` and `#`.
#[test]
fn reads_back_what_it_writes() {
    let file = RegistryFile {
        services: vec![Service {
            namespace: Some("shop".into()),
            addresses: vec![ip4(10, 96, 0, 10), IpAddr::V6(Ipv6Addr::LOCALHOST)],
            ports: vec![Port { name: Some("http".into()), protocol: Some("http".into()), ..Port::new(80) }],
            endpoints: vec![
                Endpoint::address(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 4243)).label("app", "x: y #z"),
                Endpoint { weight: Some(0), ..Endpoint::ip(ip4(10, 0, 0, 5)) },
            ],
            traffic_policy: Some(TrafficPolicy {
                retry_budget: Some(RetryBudget { ratio: Some(0.25), ..RetryBudget::default() }),
                ..TrafficPolicy::default()
            }),
            ..Service::new("web")
        }],
        routes: vec![RoutePolicy {
            name: "r".into(),
            service: "web".into(),
            rules: vec![RouteRule {
                matches: vec![Match {
                    path: Some(PathMatch { regex: Some("/v[0-9]+/.*".into()), ..PathMatch::default() }),
                    headers: vec![HeaderMatch { name: "x".into(), exact: Some("*".into()), regex: None }],
                    ..Match::default()
                }],
                retries: Some(Retry { on: vec!["5xx".into(), "reset".into()], ..Retry::default() }),
                ..RouteRule::default()
            }],
            ..RoutePolicy::default()
        }],
        authorizations: vec![Authorization {
            name: "a".into(),
            service: "web".into(),
            default: Some("allow".into()),
            require_mtls: Some(false),
            rules: vec![AuthorizationRule { networks: vec!["::/0".into()], ..AuthorizationRule::default() }],
            ..Authorization::default()
        }],
    };
    let text = to_yaml(&file);
    assert_eq!(from_yaml(&text).expect("parses"), file, "{text}");
}
