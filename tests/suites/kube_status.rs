//! Status conditions and leader election against a real kube-apiserver:
//! the control plane writes `Accepted` / `ResolvedRefs` on HTTPRoutes,
//! GRPCRoutes (per Service parent, Gateway API shape), AuthorizationPolicies
//! and TrafficPolicies, flips them when the cause is fixed, and does not
//! rewrite them when nothing changed; of two control planes only the one
//! holding the Lease writes status and Events, and after it crashes the
//! other takes over within the Lease's duration; a problem found while
//! another replica held the Lease gets its Event once this one leads; a
//! replica stopped while its take of the Lease is in flight releases it.
//!
//! Without the harness binary the suite reports itself skipped; with
//! `CI=true` a skip fails.

use mesh_control::{Config, Control};
use mesh_kube::api::k8s_openapi::api::coordination::v1::Lease;
use mesh_kube::api::k8s_openapi::api::core::v1::Service;
use mesh_kube::api::k8s_openapi::api::events::v1::Event;
use mesh_kube::api::{Api, Client, ListParams, Patch, PatchParams, PostParams};
use mesh_kube::crd::{AuthorizationPolicy, Condition, ConditionStatus, TrafficPolicy};
use mesh_kube::gateway::{GRPCRoute, HTTPRoute, RouteParentStatus};
use mesh_kube::lease::LeaseConfig;
use mesh_kube::registry::KubernetesRegistry;
use mesh_registry::model::{
    AuthorizationPolicy as MeshAuthorization, RegistrySnapshot, RoutePolicy, Service as RegistryService, ServiceKey,
};
use mesh_registry::sink::RegistrySink;
use mesh_tests::kube_harness::{self, ApiServer};
use mesh_tests::kube_hold;
use mesh_tests::mesh::{admin_get, metric_sum};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONTROLLER: &str = "mesh.dev/control";
/// How long a status may take to appear (a debounce, a watch event, a write).
const BUDGET: Duration = Duration::from_secs(10);

/// The API server, or `None` (skipped) when the harness is not built.
async fn api_server() -> Option<ApiServer> {
    if let Err(reason) = kube_harness::availability() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true: the Kubernetes suites must run: {reason}");
        eprintln!("SKIPPED: {reason}");
        return None;
    }
    Some(tokio::task::spawn_blocking(ApiServer::start).await.expect("join").expect("the API server starts"))
}

async fn control(api: &ApiServer) -> Control {
    let mut config = Config::with_kubernetes(Some(api.kubeconfig.clone()), None);
    config.grpc_addr = "127.0.0.1:0".parse().expect("addr");
    config.admin_addr = "127.0.0.1:0".parse().expect("addr");
    Control::start(config).await.expect("the control plane starts with the Kubernetes registry")
}

/// A client, with the mesh's and the Gateway API's CRDs installed.
async fn cluster(api: &ApiServer) -> Client {
    let client = mesh_kube::client::connect(Some(&api.kubeconfig), None).await.expect("a client");
    let crds = [mesh_kube::crds::mesh_crds(), mesh_kube::gateway::crds_for_tests()].concat();
    mesh_kube::crds::apply(&client, &crds, Duration::from_secs(60)).await.expect("CRDs");
    client
}

/// Creates `$object` (JSON) as a `$kind` in `default`; evaluates to the created object.
macro_rules! create {
    ($client:expr, $kind:ty, $object:expr $(,)?) => {{
        let object: $kind = serde_json::from_value($object).expect("a valid object");
        Api::<$kind>::namespaced($client.clone(), "default")
            .create(&PostParams::default(), &object)
            .await
            .expect("created")
    }};
}

async fn service(client: &Client, name: &str, port: u16) {
    create!(
        client,
        Service,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
               "spec": {"ports": [{"name": "http", "port": port}]}}),
    );
}

fn route(name: &str, backend: &str, filters: Value) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": name},
           "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "books", "port": 80}],
                    "rules": [{"backendRefs": [{"name": backend, "port": 80}], "filters": filters}]}})
}

/// Waits (up to [`BUDGET`]) until `get` returns something `ok` accepts; returns it.
async fn until<T: std::fmt::Debug, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    get: impl Fn() -> F,
    ok: impl Fn(&T) -> bool,
) -> T {
    let started = Instant::now();
    loop {
        let now = get().await;
        match now {
            Some(v) if ok(&v) => {
                eprintln!("{what} after {:?}", started.elapsed());
                return v;
            }
            _ => {}
        }
        assert!(started.elapsed() < BUDGET, "{what}: not reached after {BUDGET:?}; last seen {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The mesh's entry in an HTTPRoute's status.
async fn http_entry(client: &Client, name: &str) -> Option<RouteParentStatus> {
    let route = Api::<HTTPRoute>::namespaced(client.clone(), "default").get(name).await.ok()?;
    route.status?.parents.into_iter().find(|p| p.controller_name == CONTROLLER)
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// `type` has this status and reason.
fn is(conditions: &[Condition], type_: &str, status: ConditionStatus, reason: &str) -> bool {
    condition(conditions, type_).is_some_and(|c| c.status == status && c.reason == reason)
}

async fn authorization_conditions(client: &Client, name: &str) -> Option<Vec<Condition>> {
    let p = Api::<AuthorizationPolicy>::namespaced(client.clone(), "default").get(name).await.ok()?;
    Some(p.status?.conditions)
}

async fn traffic_conditions(client: &Client, name: &str) -> Option<Vec<Condition>> {
    let p = Api::<TrafficPolicy>::namespaced(client.clone(), "default").get(name).await.ok()?;
    Some(p.status?.conditions)
}

/// Catches: no status written, or written in a shape other than the Gateway
/// API's (`parents[]` with `controllerName` and the `parentRef` as written);
/// an invalid route or policy reported as Accepted or without naming its
/// field; a missing Service reported as resolved, or the condition not
/// flipping once the Service is created (the writer not woken by Service
/// events); `lastTransitionTime` moving although that condition did not
/// change; and a write loop (the writer rewriting a status its own write
/// brought back through the watch: the resourceVersion would keep moving).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_policies_get_accepted_and_resolved_refs_conditions() {
    let Some(api) = api_server().await else { return };
    let client = cluster(&api).await;
    service(&client, "books", 80).await;
    service(&client, "books-v1", 80).await;
    let control = control(&api).await;

    // A valid route: Accepted and ResolvedRefs, for its Service parent.
    let valid = create!(client, HTTPRoute, route("valid", "books-v1", json!([])));
    let entry = until(
        "valid route Accepted",
        || http_entry(&client, "valid"),
        |e| is(&e.conditions, "Accepted", ConditionStatus::True, "Accepted"),
    )
    .await;
    assert_eq!(entry.parent_ref, valid.spec.parent_refs[0], "the parentRef is echoed as written");
    assert!(is(&entry.conditions, "ResolvedRefs", ConditionStatus::True, "ResolvedRefs"), "{entry:?}");
    assert!(entry.conditions.iter().all(|c| c.observed_generation == valid.metadata.generation), "{entry:?}");

    // Another controller (a Gateway's) replaces the atomic list with its own
    // entry: the mesh writes its entry back and keeps theirs.
    let theirs = json!({"parentRef": {"name": "gw"}, "controllerName": "example.net/gateway",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
    Api::<HTTPRoute>::namespaced(client.clone(), "default")
        .patch_status(
            "valid",
            &PatchParams { field_manager: Some("gateway".into()), ..Default::default() },
            &Patch::Merge(json!({"status": {"parents": [theirs]}})),
        )
        .await
        .expect("another controller writes status");
    let routes = Api::<HTTPRoute>::namespaced(client.clone(), "default");
    let both = || async {
        let parents = routes.get("valid").await.ok()?.status?.parents;
        Some(parents.into_iter().map(|p| p.controller_name).collect::<Vec<_>>())
    };
    until("both controllers' entries", both, |names| {
        names.len() == 2 && names.iter().any(|n| n == CONTROLLER) && names.iter().any(|n| n == "example.net/gateway")
    })
    .await;

    // A route the mesh cannot serve: not Accepted, naming the field.
    create!(client, HTTPRoute, route("redirect", "books-v1", json!([{"type": "RequestRedirect"}])));
    let entry = until(
        "invalid route not Accepted",
        || http_entry(&client, "redirect"),
        |e| is(&e.conditions, "Accepted", ConditionStatus::False, "UnsupportedValue"),
    )
    .await;
    let message = &condition(&entry.conditions, "Accepted").expect("Accepted").message;
    assert!(message.contains("spec.rules[0].filters[0]") && message.contains("RequestRedirect"), "{message}");

    // A route to a Service that does not exist yet; creating it flips ResolvedRefs.
    create!(client, HTTPRoute, route("canary", "books-v2", json!([])));
    let before = until(
        "missing backend not resolved",
        || http_entry(&client, "canary"),
        |e| is(&e.conditions, "ResolvedRefs", ConditionStatus::False, "BackendNotFound"),
    )
    .await;
    let message = &condition(&before.conditions, "ResolvedRefs").expect("ResolvedRefs").message;
    assert!(message.contains("spec.rules[0].backendRefs[0]") && message.contains("default/books-v2"), "{message}");
    tokio::time::sleep(Duration::from_millis(1100)).await; // a new second: a rewritten time would show
    service(&client, "books-v2", 80).await;
    let after = until(
        "created backend resolved",
        || http_entry(&client, "canary"),
        |e| is(&e.conditions, "ResolvedRefs", ConditionStatus::True, "ResolvedRefs"),
    )
    .await;
    let since = |e: &RouteParentStatus, t: &str| condition(&e.conditions, t).map(|c| c.last_transition_time.clone());
    assert_eq!(since(&after, "Accepted"), since(&before, "Accepted"), "Accepted did not change: same time");
    assert_ne!(since(&after, "ResolvedRefs"), since(&before, "ResolvedRefs"), "ResolvedRefs flipped: new time");

    // A GRPCRoute gets the same conditions.
    create!(
        client,
        GRPCRoute,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute", "metadata": {"name": "rpc"},
               "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "books"}],
                        "rules": [{"backendRefs": [{"name": "books-v1", "port": 80}]}]}}),
    );
    let grpc = Api::<GRPCRoute>::namespaced(client.clone(), "default");
    let get = || async {
        let route = grpc.get("rpc").await.ok()?;
        route.status?.parents.into_iter().find(|p| p.controller_name == CONTROLLER)
    };
    until("GRPCRoute Accepted", get, |e| is(&e.conditions, "Accepted", ConditionStatus::True, "Accepted")).await;

    // AuthorizationPolicies: a missing target, fixed by creating it; an invalid one.
    create!(
        client,
        AuthorizationPolicy,
        json!({"apiVersion": "policy.mesh.dev/v1alpha1", "kind": "AuthorizationPolicy", "metadata": {"name": "authors"},
               "spec": {"targetRef": {"kind": "Service", "name": "authors"},
                        "rules": [{"name": "web", "from": {"serviceAccounts": [{"name": "web"}]}}]}}),
    );
    let conditions = until(
        "policy on a missing Service",
        || authorization_conditions(&client, "authors"),
        |c| is(c, "ResolvedRefs", ConditionStatus::False, "TargetNotFound"),
    )
    .await;
    assert!(is(&conditions, "Accepted", ConditionStatus::True, "Accepted"), "{conditions:?}");
    let message = &condition(&conditions, "ResolvedRefs").expect("ResolvedRefs").message;
    assert!(message.contains("spec.targetRef.name") && message.contains("default/authors"), "{message}");
    service(&client, "authors", 80).await;
    until(
        "policy target created",
        || authorization_conditions(&client, "authors"),
        |c| is(c, "ResolvedRefs", ConditionStatus::True, "ResolvedRefs"),
    )
    .await;
    create!(
        client,
        AuthorizationPolicy,
        json!({"apiVersion": "policy.mesh.dev/v1alpha1", "kind": "AuthorizationPolicy", "metadata": {"name": "net"},
               "spec": {"targetRef": {"kind": "Service", "name": "books"},
                        "rules": [{"name": "lan", "from": {"networks": ["10.0.0.1/99"]}}]}}),
    );
    let conditions = until(
        "invalid policy",
        || authorization_conditions(&client, "net"),
        |c| is(c, "Accepted", ConditionStatus::False, "Invalid"),
    )
    .await;
    let message = &condition(&conditions, "Accepted").expect("Accepted").message;
    assert!(message.contains("spec.rules[0].from.networks[0]"), "{message}");

    // TrafficPolicies: the first by name is served, a second one conflicts.
    for name in ["books-a", "books-b"] {
        create!(
            client,
            TrafficPolicy,
            json!({"apiVersion": "policy.mesh.dev/v1alpha1", "kind": "TrafficPolicy", "metadata": {"name": name},
                   "spec": {"targetRef": {"kind": "Service", "name": "books"}}}),
        );
    }
    until(
        "served TrafficPolicy",
        || traffic_conditions(&client, "books-a"),
        |c| {
            is(c, "Accepted", ConditionStatus::True, "Accepted")
                && is(c, "ResolvedRefs", ConditionStatus::True, "ResolvedRefs")
        },
    )
    .await;
    let conditions = until(
        "conflicting TrafficPolicy",
        || traffic_conditions(&client, "books-b"),
        |c| is(c, "Accepted", ConditionStatus::False, "Conflicted"),
    )
    .await;
    let message = &condition(&conditions, "Accepted").expect("Accepted").message;
    assert!(message.contains("books-a"), "{message}");

    // Nothing changes now: no object's status is written again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let versions = || async {
        let routes = Api::<HTTPRoute>::namespaced(client.clone(), "default").list(&ListParams::default()).await;
        let policies = Api::<TrafficPolicy>::namespaced(client.clone(), "default").list(&ListParams::default()).await;
        let mut out: Vec<(String, String)> = Vec::new();
        for r in routes.expect("routes").items {
            out.push((r.metadata.name.unwrap_or_default(), r.metadata.resource_version.unwrap_or_default()));
        }
        for p in policies.expect("policies").items {
            out.push((p.metadata.name.unwrap_or_default(), p.metadata.resource_version.unwrap_or_default()));
        }
        out
    };
    // Settled: unchanged over 2 s. On a loaded machine the last legitimate
    // writes may land late, so a few tries are allowed; a write loop
    // rewrites them in every window and never settles.
    let started = Instant::now();
    loop {
        let settled = versions().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = versions().await;
        if now == settled {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "statuses rewritten although nothing changed (a write loop): {settled:?} → {now:?}"
        );
    }
    control.shutdown().await;
}

/// The holder of the control plane's Lease.
async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases.get("mesh-control").await.ok()?.spec?.holder_identity
}

async fn metric(control: &Control, name: &str) -> f64 {
    metric_sum(&admin_get(control.admin_addr(), "/metrics").await, &[name])
}

/// The `reportingInstance` of every Event about `object`.
async fn reporters(client: &Client, object: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let list = events.list(&ListParams::default()).await.expect("events");
    list.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(object))
        .filter_map(|e| e.reporting_instance)
        .collect()
}

/// Catches: both replicas writing status or Events (no election, or a
/// follower that ignores it); a follower that takes the Lease while its
/// holder still renews, or before the holder has been silent for the whole
/// duration; a follower that never takes over a crashed holder's Lease, or
/// takes it and does not write the statuses the old leader left; a
/// follower that does not serve proxies (election must gate writes only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_control_planes_writes_and_the_other_takes_over_after_a_crash() {
    let Some(api) = api_server().await else { return };
    let client = cluster(&api).await;
    service(&client, "books", 80).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");

    let first = control(&api).await;
    until(
        "the first control plane leads",
        || async { Some(metric(&first, "registry_kubernetes_leader").await) },
        |v| *v == 1.0,
    )
    .await;
    let leader = holder(&leases).await.expect("a holder");
    let second = control(&api).await;
    // Both serve proxies: election gates writes, never reads.
    for c in [&first, &second] {
        let answer = c.store().resolve(&"books.default:80".parse().expect("a target"));
        assert!(answer.service.is_some(), "every replica serves the Service: {answer:?}");
    }

    // A rejected route: its status and Event come from the leader only.
    create!(client, HTTPRoute, route("redirect", "books", json!([{"type": "RequestRedirect"}])));
    until(
        "status by the leader",
        || http_entry(&client, "redirect"),
        |e| is(&e.conditions, "Accepted", ConditionStatus::False, "UnsupportedValue"),
    )
    .await;
    let events = until("an Event", || async { Some(reporters(&client, "redirect").await) }, |r| !r.is_empty()).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // the follower would have written by now
    assert!(metric(&first, "registry_kubernetes_status_writes").await >= 1.0);
    assert_eq!(metric(&second, "registry_kubernetes_status_writes").await, 0.0, "the follower wrote status");
    assert_eq!(metric(&second, "registry_kubernetes_leader").await, 0.0);
    assert!(events.iter().all(|r| *r == leader), "Events only from the leader {leader}: {events:?}");
    assert_eq!(reporters(&client, "redirect").await, events, "no Event from the follower");

    // Crash the leader: dropped, the Lease not released.
    let crashed = Instant::now();
    drop(first);
    let last = leases.get("mesh-control").await.expect("the Lease").spec.expect("a spec");
    assert_eq!(last.holder_identity.as_deref(), Some(leader.as_str()), "a crash does not release the Lease");
    let last_renewed = last.renew_time.expect("renewed").0;
    let duration = Duration::from_secs(u64::try_from(last.lease_duration_seconds.unwrap_or(0)).unwrap_or(0));
    assert_eq!(duration, Duration::from_secs(15));

    // A route created meanwhile: nobody writes its status until the follower leads.
    create!(client, HTTPRoute, route("after", "books", json!([])));
    // + the follower's look every 2 s, twice, + room for a loaded machine's
    // API calls; taking over early is caught below by the acquire time, not
    // by this budget, and never taking over fails at any budget.
    let budget = duration + Duration::from_secs(2 * 2 + 10);
    let took_over = loop {
        if metric(&second, "registry_kubernetes_leader").await == 1.0 {
            break crashed.elapsed();
        }
        assert!(crashed.elapsed() < budget, "no takeover {budget:?} after the leader crashed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("the follower took over {took_over:?} after the leader crashed");
    let now = leases.get("mesh-control").await.expect("the Lease").spec.expect("a spec");
    assert_ne!(now.holder_identity.as_deref(), Some(leader.as_str()));
    let acquired = now.acquire_time.expect("acquired").0;
    let silent = acquired.duration_since(last_renewed).unsigned_abs();
    assert!(
        silent + Duration::from_secs(1) >= duration,
        "taken {silent:?} after the last renewal: before the Lease expired"
    );
    assert_eq!(now.lease_transitions, Some(1));
    until(
        "status by the new leader",
        || http_entry(&client, "after"),
        |e| is(&e.conditions, "Accepted", ConditionStatus::True, "Accepted"),
    )
    .await;
    assert!(metric(&second, "registry_kubernetes_status_writes").await >= 1.0);
    second.shutdown().await;
    // A graceful stop releases it.
    let released = leases.get("mesh-control").await.expect("the Lease").spec.expect("a spec");
    assert_eq!(released.holder_identity, None, "a graceful stop releases the Lease");
}

/// A problem found while another replica holds the Lease gets its Event
/// once this replica leads: the order CI hit by chance (the route checked
/// before the Lease was won), forced here by holding the Lease under a
/// foreign identity until the problem has been found.
///
/// Catches a reporter that marks a problem as told although it published
/// nothing because it did not lead (the Event never comes: the route does
/// not change again, so nothing re-reports it), and a follower that
/// publishes Events while another replica holds the Lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_problem_found_while_following_gets_its_event_once_leading() {
    let Some(api) = api_server().await else { return };
    let client = cluster(&api).await;
    service(&client, "books", 80).await;
    // Another replica holds the Lease, for an hour: it never expires during
    // the test, so this replica follows until the test releases it.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let foreign: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "mesh-control"},
        "spec": {"holderIdentity": "another-replica", "leaseDurationSeconds": 3600,
                 "acquireTime": "2026-01-01T00:00:00.000000Z", "renewTime": "2026-01-01T00:00:00.000000Z",
                 "leaseTransitions": 0}
    }))
    .expect("a Lease");
    leases.create(&PostParams::default(), &foreign).await.expect("the foreign Lease");
    let control = control(&api).await;

    // The rejected route is found (counted) while this replica follows: no Event, no status.
    create!(client, HTTPRoute, route("redirect", "books", json!([{"type": "RequestRedirect"}])));
    until(
        "the rejected route counted by the follower",
        || async { Some(metric(&control, "registry_kubernetes_problems").await) },
        |v| *v >= 1.0,
    )
    .await;
    // A follower that published would have done so by now (the Event is sent
    // as soon as the problem is counted); a late one is caught below too.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(metric(&control, "registry_kubernetes_leader").await, 0.0, "the Lease is another's");
    assert_eq!(holder(&leases).await.as_deref(), Some("another-replica"));
    assert_eq!(reporters(&client, "redirect").await, Vec::<String>::new(), "an Event from a follower");
    assert_eq!(metric(&control, "registry_kubernetes_status_writes").await, 0.0, "a follower wrote status");

    // The other replica stops gracefully (releases the Lease): this one takes
    // it and publishes the Event of the problem it found while following.
    let mut lease = leases.get("mesh-control").await.expect("the Lease");
    let spec = lease.spec.as_mut().expect("a spec");
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    lease.metadata.managed_fields = None;
    leases.replace("mesh-control", &PostParams::default(), &lease).await.expect("the Lease released");
    until("this replica leads", || async { Some(metric(&control, "registry_kubernetes_leader").await) }, |v| *v == 1.0)
        .await;
    let me = holder(&leases).await.expect("a holder");
    assert_ne!(me, "another-replica");
    // The Event is sent when leading starts; the budget is generous (a
    // reporter that never publishes it fails at any budget).
    let started = Instant::now();
    let events = loop {
        let events = reporters(&client, "redirect").await;
        if !events.is_empty() {
            break events;
        }
        assert!(started.elapsed() < 3 * BUDGET, "no Event {:?} after this replica began leading", 3 * BUDGET);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("the pending Event published {:?} after leading began", started.elapsed());
    assert_eq!(events, vec![me], "one Event, from the replica that now leads");
    control.shutdown().await;
}

/// A registry sink that keeps nothing (the test looks at the Lease only).
struct Discard;

impl RegistrySink for Discard {
    fn replace_all(&self, _: &RegistrySnapshot) {}
    fn upsert(&self, _: RegistryService) {}
    fn remove(&self, _: &ServiceKey) {}
    fn replace_policies(&self, _: Vec<RoutePolicy>, _: Vec<MeshAuthorization>) {}
}

/// Catches: a replica stopped gracefully while its take of the Lease is in
/// flight leaving the Lease held, so the next replica waits out the 15 s:
/// the release judged by the replica's own `leading` flag (still false, the
/// answer never came) or cancelled with the loop while the take lands after
/// it. The window is made deterministic: the client holds the take (a
/// create when the Lease is absent, a replace when it was released) until
/// the stop fires, then sends it; one thread, so the stop and the release
/// start before the take reaches the API server.
#[tokio::test(flavor = "current_thread")]
async fn a_replica_stopped_while_taking_the_lease_leaves_it_released() {
    let Some(api) = api_server().await else { return };
    let client = cluster(&api).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let released: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "released"},
        "spec": {"leaseDurationSeconds": 1, "leaseTransitions": 3}
    }))
    .expect("a Lease");
    leases.create(&PostParams::default(), &released).await.expect("a released Lease");
    for name in ["absent", "released"] {
        let (held, hold) = kube_hold::holding_first(client.clone(), "default", |method, path| {
            *method != http::Method::GET && path.contains("/leases")
        });
        let mut lease = LeaseConfig::new(format!("stopped-early-{name}"));
        (lease.name, lease.namespace) = (name.into(), Some("default".into()));
        let registry = KubernetesRegistry::with_lease(held, Arc::new(Discard), lease);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let opens = hold.clone();
        let run = tokio::spawn(registry.run_until(async move {
            let _ = stopped.await;
            opens.open(); // the take goes out as the registry stops
        }));
        tokio::time::timeout(BUDGET, hold.seen()).await.expect("the replica takes the Lease");
        stop.send(()).expect("the registry runs");
        tokio::time::timeout(BUDGET, run).await.expect("the registry stops").expect("joined");
        tokio::time::timeout(BUDGET, hold.answered()).await.expect("the take reaches the API server");
        let spec = leases.get(name).await.expect("the Lease").spec.expect("a spec");
        assert_eq!(
            spec.holder_identity, None,
            "{name}: a take that landed as the replica stopped must be released, not left for 15 s: {spec:?}"
        );
    }
}
