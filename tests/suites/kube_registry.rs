//! The Kubernetes registry (`mesh-control --registry kubernetes`) against a
//! real kube-apiserver: a Service and its EndpointSlices reach the control
//! plane's store (resolved by name and by ClusterIP, with its Pods'
//! ServiceAccount as identity), an endpoint that starts
//! terminating drains (weight 0), a TrafficPolicy, an AuthorizationPolicy
//! and an HTTPRoute (GAMMA) reach it, a route the mesh cannot serve is
//! left out with a Warning Event on it naming the field, and a deleted Service leaves; each change
//! within a second. The test writes the EndpointSlices itself (as the
//! EndpointSlice controller would for pods), so it needs no pods.
//!
//! Without the harness binary the suite reports itself skipped; with
//! `CI=true` a skip fails.

use mesh_control::{Config, Control};
use mesh_kube::api::k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use mesh_kube::api::k8s_openapi::api::discovery::v1::EndpointSlice;
use mesh_kube::api::k8s_openapi::api::events::v1::Event;
use mesh_kube::api::{Api, DeleteParams, ListParams, PostParams};
use mesh_kube::crd::{AuthorizationPolicy, TrafficPolicy};
use mesh_kube::gateway::HTTPRoute;
use mesh_registry::model::ServiceKey;
use mesh_registry::target::{Resolution, Target};
use mesh_tests::kube_harness::{self, ApiServer};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The API server, or `None` (skipped) when the harness is not built.
async fn api_server() -> Option<ApiServer> {
    tokio::task::spawn_blocking(kube_harness::start_or_skip).await.expect("join")
}

/// Waits (up to `within`) until the store's answer for `target` satisfies `ok`; returns how long it took.
async fn until(control: &Control, target: &Target, within: Duration, ok: impl Fn(&Resolution) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let now = control.store().resolve(target);
        if ok(&now) {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{target}: not reached after {within:?}; the store has {now:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (up to `within`) until `ok` holds.
async fn within(budget: Duration, ok: impl Fn() -> bool) {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < budget, "not reached after {budget:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn endpoint(ip: &str, ready: bool, terminating: bool) -> Value {
    json!({"addresses": [ip], "conditions": {"ready": ready, "serving": true, "terminating": terminating},
           "targetRef": {"kind": "Pod", "name": format!("books-{}", ip.replace('.', "-"))}})
}

fn slice(endpoints: Vec<Value>) -> EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "books-1", "labels": {"kubernetes.io/service-name": "books"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    }))
    .expect("an EndpointSlice")
}

fn weights(r: &Resolution) -> Vec<(String, u32)> {
    r.endpoints.values().map(|e| (e.addr.to_string(), e.weight)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_and_endpoint_slice_changes_reach_the_store_from_the_watch() {
    let Some(api) = api_server().await else { return };
    let client = mesh_kube::client::connect(Some(&api.kubeconfig), None).await.expect("a client");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let start = || async {
        let mut config = Config::with_kubernetes(Some(api.kubeconfig.clone()), None);
        config.grpc_addr = "127.0.0.1:0".parse().expect("addr");
        config.admin_addr = "127.0.0.1:0".parse().expect("addr");
        Control::start(config).await.expect("the control plane starts with the Kubernetes registry")
    };

    // Start-up waits for the first list, even on a cluster without the
    // mesh's or the Gateway API's CRDs: what exists is served at once (an
    // empty first answer would wipe what a reconnecting proxy kept).
    let early: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "early"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .expect("a Service");
    services.create(&PostParams::default(), &early).await.expect("Service created");
    let mut early_slice = slice(vec![endpoint("10.2.0.1", true, false)]);
    early_slice.metadata.name = Some("early-1".into());
    early_slice.metadata.labels = Some([("kubernetes.io/service-name".to_string(), "early".to_string())].into());
    slices.create(&PostParams::default(), &early_slice).await.expect("EndpointSlice created");
    let control = start().await;
    let answer = control.store().resolve(&"early.default:80".parse().expect("target"));
    assert_eq!(weights(&answer), vec![("10.2.0.1:8080".to_string(), 100)], "served as soon as start returns");
    control.shutdown().await;

    let crds = [mesh_kube::crds::mesh_crds(), mesh_kube::gateway::crds_for_tests()].concat();
    mesh_kube::crds::apply(&client, &crds, Duration::from_secs(60)).await.expect("CRDs");
    let control = start().await;
    let by_name: Target = "books.default:80".parse().expect("target");
    // Watches deliver a change in milliseconds; the budget leaves room for a
    // loaded CI machine (1 s failed once with other suites running) and
    // still fails a registry that relists on a timer instead of watching.
    let budget = Duration::from_secs(3);

    // The Pods behind the endpoints run as books-sa (they stay Pending: no
    // kubelet here; the registry reads only their ServiceAccount).
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let account: ServiceAccount =
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "books-sa"}}))
            .expect("a ServiceAccount");
    accounts.create(&PostParams::default(), &account).await.expect("ServiceAccount created");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for ip in ["10.1.0.1", "10.1.0.2"] {
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("books-{}", ip.replace('.', "-"))},
            "spec": {"serviceAccountName": "books-sa", "containers": [{"name": "app", "image": "books:1"}]}
        }))
        .expect("a Pod");
        pods.create(&PostParams::default(), &pod).await.expect("Pod created");
    }

    // A Service with a named target port, then its endpoints.
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "books"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "web", "appProtocol": "http"}]}
    }))
    .expect("a Service");
    let created = services.create(&PostParams::default(), &service).await.expect("Service created");
    let vip = created.spec.and_then(|s| s.cluster_ip).expect("a ClusterIP");
    slices
        .create(
            &PostParams::default(),
            &slice(vec![endpoint("10.1.0.1", true, false), endpoint("10.1.0.2", true, false)]),
        )
        .await
        .expect("EndpointSlice created");
    let took = until(&control, &by_name, Duration::from_secs(10), |r| r.endpoints.len() == 2).await;
    eprintln!("Service and EndpointSlice in the store after {took:?}");
    let r = control.store().resolve(&by_name);
    assert_eq!(weights(&r), vec![("10.1.0.1:8080".to_string(), 100), ("10.1.0.2:8080".to_string(), 100)]);
    let account =
        control.store().index().service(&ServiceKey::new("default", "books")).map(|s| s.service_account.clone());
    assert_eq!(account.as_deref(), Some("books-sa"), "the identity is the Pods' ServiceAccount");
    let by_vip = Target::Addr(SocketAddr::new(vip.parse().expect("ClusterIP"), 80));
    assert_eq!(control.store().resolve(&by_vip).endpoints.len(), 2, "the ClusterIP resolves to the Service");
    for name in ["books.default.svc:80", "books.default.svc.cluster.local:80", "books.default.svc.cluster.local.:80"] {
        let short = control.store().resolve(&name.parse().expect("a service name"));
        assert_eq!(weights(&short), weights(&r), "{name} is the same service as books.default:80");
    }

    // One endpoint starts terminating: it drains (weight 0), within a second.
    let mut current = slices.get("books-1").await.expect("slice");
    current.endpoints = slice(vec![endpoint("10.1.0.1", true, false), endpoint("10.1.0.2", false, true)]).endpoints;
    let started = Instant::now();
    slices.replace("books-1", &PostParams::default(), &current).await.expect("slice updated");
    until(&control, &by_name, budget, |r| weights(r).contains(&("10.1.0.2:8080".to_string(), 0))).await;
    eprintln!("terminating endpoint drained after {:?}", started.elapsed());

    // A TrafficPolicy for the Service, then an AuthorizationPolicy: each within a second.
    let key = ServiceKey::new("default", "books");
    let traffic: TrafficPolicy = serde_json::from_value(json!({
        "apiVersion": "policy.mesh.dev/v1alpha1", "kind": "TrafficPolicy", "metadata": {"name": "books"},
        "spec": {"targetRef": {"kind": "Service", "name": "books"},
                 "circuitBreaker": {"consecutiveFailures": 3, "baseEjection": "5s", "maxEjection": "1m"}}
    }))
    .expect("a TrafficPolicy");
    let started = Instant::now();
    Api::<TrafficPolicy>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &traffic)
        .await
        .expect("TrafficPolicy created");
    within(budget, || {
        let index = control.store().index();
        let cb = index.service(&key).and_then(|s| s.traffic_policy.as_ref()).map(|t| t.circuit_breaker);
        cb.is_some_and(|cb| cb.consecutive_failures == 3 && cb.base_ejection == Duration::from_secs(5))
    })
    .await;
    eprintln!("TrafficPolicy in the store {:?} after the create call began", started.elapsed());
    // Retargeted elsewhere: books loses it (the Service it left is recomputed too).
    let policies: Api<TrafficPolicy> = Api::namespaced(client.clone(), "default");
    let mut moved = policies.get("books").await.expect("TrafficPolicy");
    moved.spec.target_ref.name = "authors".into();
    policies.replace("books", &PostParams::default(), &moved).await.expect("TrafficPolicy retargeted");
    within(budget, || control.store().index().service(&key).is_some_and(|s| s.traffic_policy.is_none())).await;
    let authz: AuthorizationPolicy = serde_json::from_value(json!({
        "apiVersion": "policy.mesh.dev/v1alpha1", "kind": "AuthorizationPolicy", "metadata": {"name": "books"},
        "spec": {"targetRef": {"kind": "Service", "name": "books", "port": 80},
                 "rules": [{"name": "web", "from": {"serviceAccounts": [{"name": "web"}]}}]}
    }))
    .expect("an AuthorizationPolicy");
    let started = Instant::now();
    Api::<AuthorizationPolicy>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &authz)
        .await
        .expect("AuthorizationPolicy created");
    within(budget, || {
        let index = control.store().index();
        let found = index.authorizations().find(|a| a.name == "books").cloned();
        found.is_some_and(|a| a.service == key && a.port == Some(80) && a.rules[0].service_accounts[0].name == "web")
    })
    .await;
    eprintln!("AuthorizationPolicy in the store after {:?}", started.elapsed());

    // An HTTPRoute attached to the Service's port 80: a route policy within a second.
    let route: HTTPRoute = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "books-canary"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "books", "port": 80}],
                 "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
                            "backendRefs": [{"name": "books-v2", "port": 80}]}]}
    }))
    .expect("an HTTPRoute");
    let started = Instant::now();
    Api::<HTTPRoute>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &route)
        .await
        .expect("HTTPRoute created");
    within(budget, || {
        let index = control.store().index();
        let policy = index.route_policy(&key, 80).cloned();
        policy.is_some_and(|p| p.rules.len() == 1 && p.rules[0].backends[0].service.name == "books-v2")
    })
    .await;
    eprintln!("HTTPRoute in the store after {:?}", started.elapsed());
    assert!(
        control.store().index().authorizations().any(|a| a.name == "books"),
        "routes and authorizations are replaced together: the authorization stays"
    );

    // A route with a filter the mesh does not translate: not served (the
    // canary route stays alone), and a Warning Event on it names the field.
    let redirect: HTTPRoute = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "books-redirect"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "books", "port": 80}],
                 "rules": [{"filters": [{"type": "RequestRedirect"}]}]}
    }))
    .expect("an HTTPRoute");
    Api::<HTTPRoute>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &redirect)
        .await
        .expect("HTTPRoute created");
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let started = Instant::now();
    let event = loop {
        let list = events.list(&ListParams::default()).await.expect("events");
        let found = list.items.into_iter().find(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("books-redirect")
                && e.regarding.as_ref().and_then(|r| r.uid.as_deref()).is_some()
        });
        if let Some(event) = found {
            break event;
        }
        // Only the replica holding the Lease publishes. The first control
        // plane above released it on shutdown; if that release did not get
        // through (a loaded API server, the 2 s release timeout), this one
        // leads only once the Lease expires (15 s) and publishes then. A
        // reporter that never publishes fails at any wait.
        assert!(started.elapsed() < Duration::from_secs(30), "no Event for the rejected route after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((event.type_.as_deref(), event.reason.as_deref()), (Some("Warning"), Some("Rejected")));
    let note = event.note.unwrap_or_default();
    assert!(note.contains("spec.rules[0].filters[0]") && note.contains("RequestRedirect"), "{note}");
    let rules = control.store().index().route_policy(&key, 80).map(|p| p.rules.len());
    assert_eq!(rules, Some(1), "the rejected route is not served");

    // The Service goes: so does its answer, within a second.
    let started = Instant::now();
    services.delete("books", &DeleteParams::default()).await.expect("Service deleted");
    until(&control, &by_name, budget, |r| r.service.is_none() && r.endpoints.is_empty()).await;
    eprintln!("deleted Service left the store after {:?}", started.elapsed());

    control.shutdown().await;
}

/// Runs the real `meshctl policy explain -o json` with `args`.
fn explain(args: &[&str]) -> Value {
    let out = std::process::Command::new(mesh_tests::bins::path("meshctl"))
        .args(["policy", "explain", "-o", "json"])
        .args(args)
        .output()
        .expect("meshctl runs");
    assert!(out.status.success(), "meshctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// `meshctl policy explain --kubeconfig` reads the cluster as the control
/// plane does and agrees with what a control plane on that cluster serves.
///
/// Catches an explain that reads the cluster differently from the control
/// plane (a policy or identity missing: the verdicts would differ from the
/// live answer), one that does not apply the policy at all (the unlisted
/// client must be denied and the listed one allowed), and an explain that
/// writes to the cluster (an invalid route must get no Event from it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_explain_from_the_cluster_agrees_with_the_control_plane() {
    let Some(api) = api_server().await else { return };
    let client = mesh_kube::client::connect(Some(&api.kubeconfig), None).await.expect("a client");
    let crds = [mesh_kube::crds::mesh_crds(), mesh_kube::gateway::crds_for_tests()].concat();
    mesh_kube::crds::apply(&client, &crds, Duration::from_secs(60)).await.expect("CRDs");
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "books-sa"}})).expect("a ServiceAccount");
    Api::<ServiceAccount>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &account)
        .await
        .expect("sa");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "books-10-1-0-1"},
        "spec": {"serviceAccountName": "books-sa", "containers": [{"name": "app", "image": "books:1"}]}}))
    .expect("a Pod");
    Api::<Pod>::namespaced(client.clone(), "default").create(&PostParams::default(), &pod).await.expect("pod");
    let service: Service = serde_json::from_value(json!({"metadata": {"name": "books"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "appProtocol": "http"}]}}))
    .expect("a Service");
    Api::<Service>::namespaced(client.clone(), "default").create(&PostParams::default(), &service).await.expect("svc");
    Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &slice(vec![endpoint("10.1.0.1", true, false)]))
        .await
        .expect("slice");
    let authz: AuthorizationPolicy = serde_json::from_value(json!({
        "apiVersion": "policy.mesh.dev/v1alpha1", "kind": "AuthorizationPolicy", "metadata": {"name": "books"},
        "spec": {"targetRef": {"kind": "Service", "name": "books", "port": 80},
                 "rules": [{"name": "web-reads", "from": {"serviceAccounts": [{"name": "web"}]},
                            "http": [{"path": {"type": "PathPrefix", "value": "/books"}, "method": "GET"}]}]}
    }))
    .expect("an AuthorizationPolicy");
    Api::<AuthorizationPolicy>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &authz)
        .await
        .expect("policy");

    let dir = tempfile::tempdir().expect("tempdir");
    let identity = mesh_identity::dir::IdentityDir::new(dir.path().join("identity"));
    identity.init("cluster.local", None).expect("identity");
    let mut config = Config::with_kubernetes(Some(api.kubeconfig.clone()), None);
    config.grpc_addr = "127.0.0.1:0".parse().expect("addr");
    config.admin_addr = "127.0.0.1:0".parse().expect("addr");
    config.identity = Some(mesh_control::IdentityConfig::new(identity.path()));
    let control = Control::start(config).await.expect("the control plane starts");
    within(Duration::from_secs(5), || control.store().index().authorizations().count() == 1).await;

    let kubeconfig = api.kubeconfig.display().to_string();
    let url = format!("https://{}", control.grpc_addr());
    let anchors = identity.path().join(mesh_identity::dir::ANCHORS).display().to_string();
    let cluster = ["--kubeconfig", &kubeconfig, "--trust-domain", "cluster.local"];
    let live = ["--control-plane", &url, "--trust-anchors", &anchors, "--trust-domain", "cluster.local"];
    let cases = [
        ("spiffe://cluster.local/ns/default/sa/web", "GET", "/books/1", true),
        ("spiffe://cluster.local/ns/default/sa/web", "DELETE", "/books/1", false),
        ("spiffe://cluster.local/ns/default/sa/evil", "GET", "/books/1", false),
    ];
    for (from, method, path, allowed) in cases {
        let request = ["--to", "books.default:80", "--from", from, "--method", method, "--path", path];
        let from_cluster = explain(&[&cluster[..], &request[..]].concat());
        let from_live = explain(&[&live[..], &request[..]].concat());
        for part in ["outbound", "authorization"] {
            assert_eq!(from_cluster[part], from_live[part], "{from} {method} {path}: {part} differs");
        }
        let verdict = &from_cluster["authorization"][0]["verdict"];
        assert_eq!(verdict["allowed"].as_bool(), Some(allowed), "{from} {method} {path}: {from_cluster:#}");
    }
    let events = Api::<Event>::all(client.clone()).list(&ListParams::default()).await.expect("events");
    // Only the mesh's own Events count: the API server's repair loop may
    // report on any Service under load (ClusterIPNotAllocated, seen on the
    // built-in `kubernetes` and on `books`); that is not ours.
    let ours: Vec<_> =
        events.items.iter().filter(|e| e.reporting_controller.as_deref() == Some("mesh.dev/control")).collect();
    assert!(ours.is_empty(), "nothing here is invalid, and explain writes nothing: {ours:?}");
    control.shutdown().await;
}
