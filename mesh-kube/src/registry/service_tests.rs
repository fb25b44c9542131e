use super::*;
use k8s_openapi::api::core::v1::{ObjectReference, ServicePort as KubePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.into()), namespace: Some("shop".into()), ..Default::default() }
}

fn svc(ports: Vec<KubePort>, ips: &[&str]) -> KubeService {
    KubeService {
        metadata: meta("books"),
        spec: Some(ServiceSpec {
            cluster_ips: Some(ips.iter().map(|s| s.to_string()).collect()),
            ports: Some(ports),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn port(name: &str, port: i32, target: IntOrString, app: Option<&str>) -> KubePort {
    KubePort {
        name: Some(name.into()),
        port,
        target_port: Some(target),
        app_protocol: app.map(Into::into),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn endpoint(ip: &str, ready: bool, serving: bool, terminating: bool) -> SliceEndpoint {
    SliceEndpoint {
        addresses: vec![ip.into()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        target_ref: Some(ObjectReference { name: Some(format!("pod-{ip}")), ..Default::default() }),
        zone: Some("z1".into()),
        ..Default::default()
    }
}

fn slice(name: &str, endpoints: Vec<SliceEndpoint>, ports: &[(&str, i32)]) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(name),
        address_type: "IPv4".into(),
        endpoints,
        ports: Some(
            ports
                .iter()
                .map(|(n, p)| EndpointPort { name: Some(n.to_string()), port: Some(*p), ..Default::default() })
                .collect(),
        ),
    }
}

/// Catches: VIPs dropped, a named targetPort left unresolved (or resolved to
/// the service port), appProtocol ignored, UDP ports proxied.
#[test]
fn ports_and_addresses() {
    let mut udp = port("dns", 53, IntOrString::Int(53), None);
    udp.protocol = Some("UDP".into());
    let service = svc(
        vec![
            port("http", 80, IntOrString::String("web".into()), Some("http")),
            port("grpc", 9000, IntOrString::Int(9090), Some("kubernetes.io/h2c")),
            udp,
        ],
        &["10.96.0.10", "fd00::10"],
    );
    let slices = [slice("books-abc", vec![endpoint("10.1.0.1", true, true, false)], &[("http", 8080), ("grpc", 9090)])];
    let got = service_from(&service, &slices).expect("valid");
    assert_eq!(got.key, ServiceKey::new("shop", "books"));
    assert_eq!(got.addresses, vec!["10.96.0.10".parse::<IpAddr>().expect("ip"), "fd00::10".parse().expect("ip")]);
    let ports: Vec<_> = got.ports.iter().map(|p| (p.port, p.target_port, p.protocol)).collect();
    assert_eq!(ports, vec![(80, 8080, Protocol::Http1), (9000, 9090, Protocol::Http2)]);
    assert_eq!(got.service_account, "books", "the Service's name without the annotation");
}

/// Catches: terminating endpoints dropped at once (in-flight requests cut)
/// or kept at full weight (new requests sent to a pod going away), not-ready
/// ones served, duplicates across slices.
#[test]
fn endpoint_conditions_decide_weight() {
    let service = svc(vec![port("http", 80, IntOrString::Int(8080), None)], &["10.96.0.10"]);
    let slices = [
        slice(
            "a",
            vec![
                endpoint("10.1.0.1", true, true, false),
                endpoint("10.1.0.2", false, true, true),
                endpoint("10.1.0.3", false, false, false),
                endpoint("10.1.0.4", false, false, true),
            ],
            &[("http", 8080)],
        ),
        // The same pod in a second slice (the controller moving it), ready there.
        slice("b", vec![endpoint("10.1.0.2", false, true, true), endpoint("10.1.0.1", true, true, false)], &[]),
    ];
    let got = service_from(&service, &slices).expect("valid");
    let weights: Vec<_> = got.endpoints.iter().map(|e| (e.ip.to_string(), e.weight)).collect();
    assert_eq!(weights, vec![("10.1.0.1".into(), WEIGHT), ("10.1.0.2".into(), 0)]);
    assert_eq!(got.endpoints[0].labels.get("pod").map(String::as_str), Some("pod-10.1.0.1"));
    assert_eq!(got.endpoints[0].addr_for(&got.ports[0]).port(), 8080);
}

#[test]
fn headless_services_and_the_service_account_annotation() {
    let mut service = svc(vec![port("http", 80, IntOrString::Int(8080), None)], &["None"]);
    service.metadata.annotations = Some([(SERVICE_ACCOUNT_ANNOTATION.to_string(), "books-sa".to_string())].into());
    let got = service_from(&service, &[]).expect("valid");
    assert!(got.addresses.is_empty());
    assert_eq!(got.service_account, "books-sa");
}

/// Catches a bad object silently served (or panicking): each problem names the object and field.
#[test]
fn problems_are_located_in_the_object() {
    let service = svc(vec![port("http", 0, IntOrString::Int(8080), None)], &["not-an-ip"]);
    let mut bad = slice("books-x", vec![endpoint("10.1.0.1", true, true, false)], &[]);
    bad.endpoints[0].addresses = vec!["nope".into()];
    let problems = service_from(&service, &[bad]).expect_err("invalid");
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        vec![
            "Service shop/books spec.clusterIPs[0]: \"not-an-ip\" is not an IP address",
            "Service shop/books spec.ports[0].port: 0 is not a port (1-65535)",
            "EndpointSlice shop/books-x endpoints[0].addresses[0]: \"nope\" is not an IP address",
        ]
    );
}

#[test]
fn app_protocols() {
    assert_eq!(protocol(Some("HTTP")), Protocol::Http1);
    assert_eq!(protocol(Some("grpc")), Protocol::Http2);
    assert_eq!(protocol(Some("mesh.dev/opaque")), Protocol::Opaque);
    assert_eq!(protocol(Some("redis")), Protocol::Detect);
    assert_eq!(protocol(None), Protocol::Detect);
}

/// Catches the identity guessed from the Service's name when its Pods run
/// as another ServiceAccount (clients would refuse every endpoint), and Pods
/// of several accounts served under one.
#[test]
fn the_identity_is_the_pods_service_account() {
    let service = svc(vec![port("http", 80, IntOrString::Int(8080), None)], &["10.96.0.10"]);
    let slices =
        [slice("a", vec![endpoint("10.1.0.1", true, true, false), endpoint("10.1.0.2", true, true, false)], &[])];
    let accounts: BTreeMap<String, String> =
        [("pod-10.1.0.1".to_string(), "books-sa".to_string()), ("pod-10.1.0.2".to_string(), "books-sa".to_string())]
            .into();
    let got = service_with_accounts(&service, &slices, &accounts).expect("valid");
    assert_eq!(got.service_account, "books-sa");

    let mixed: BTreeMap<String, String> =
        [("pod-10.1.0.1".to_string(), "books-sa".to_string()), ("pod-10.1.0.2".to_string(), "other".to_string())]
            .into();
    let problems = service_with_accounts(&service, &slices, &mixed).expect_err("two identities");
    let text = problems[0].to_string();
    assert!(
        text.starts_with("Service shop/books: its Pods run as several ServiceAccounts (books-sa, other)"),
        "{text}"
    );

    let mut annotated = service.clone();
    annotated.metadata.annotations = Some([(SERVICE_ACCOUNT_ANNOTATION.to_string(), "books-sa".to_string())].into());
    let got = service_with_accounts(&annotated, &slices, &mixed).expect("the annotation decides");
    assert_eq!(got.service_account, "books-sa");
}
