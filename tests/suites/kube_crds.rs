//! The mesh's CRDs (`deploy/crds/`, generated from `mesh_kube::crd`) on a
//! real kube-apiserver: they are accepted and become Established, a valid
//! AuthorizationPolicy round-trips through the typed API, and the API
//! server itself rejects invalid objects with a message naming the field.
//!
//! Without the harness binary the suite reports itself skipped; with
//! `CI=true` a skip fails.

use mesh_kube::api::kube::api::DynamicObject;
use mesh_kube::api::kube::core::ApiResource;
use mesh_kube::api::{Api, Client, ClientError, PostParams};
use mesh_kube::crd::{AuthorizationPolicy, TrafficPolicy};
use mesh_tests::kube_harness::{self, ApiServer};
use serde_json::{Value, json};
use std::time::Duration;

/// The API server, or `None` (skipped) when the harness is not built.
async fn api_server() -> Option<ApiServer> {
    tokio::task::spawn_blocking(kube_harness::start_or_skip).await.expect("join")
}

/// Creates `object` (a JSON object of `K`'s kind) in `default`, as
/// `kubectl create` does. (Server-side apply reports a duplicate list-map
/// key as a 500 from its typed patch before validation runs.)
async fn apply<K>(client: &Client, object: &Value) -> Result<DynamicObject, ClientError>
where
    K: mesh_kube::api::kube::Resource<DynamicType = ()>,
{
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ApiResource::erase::<K>(&()));
    let object: DynamicObject = serde_json::from_value(object.clone()).expect("a Kubernetes object");
    api.create(&PostParams::default(), &object).await
}

fn authz(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "policy.mesh.dev/v1alpha1", "kind": "AuthorizationPolicy", "metadata": {"name": name}, "spec": spec})
}

fn traffic(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "policy.mesh.dev/v1alpha1", "kind": "TrafficPolicy", "metadata": {"name": name}, "spec": spec})
}

/// The API server's rejection: a 422 whose message names every `needle`.
fn assert_rejected(result: Result<DynamicObject, ClientError>, needles: &[&str]) {
    match result {
        Ok(o) => panic!("accepted, but it should be rejected naming {needles:?}: {o:?}"),
        Err(ClientError::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            for needle in needles {
                assert!(status.message.contains(needle), "the rejection should name {needle:?}: {}", status.message);
            }
        }
        Err(other) => panic!("not an API rejection: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_are_established_and_the_api_server_enforces_their_schemas() {
    let Some(api) = api_server().await else { return };
    let client = mesh_kube::client::connect(Some(&api.kubeconfig), None).await.expect("a client");
    mesh_kube::crds::apply(&client, &mesh_kube::crds::mesh_crds(), Duration::from_secs(60))
        .await
        .expect("the CRDs are applied and Established");

    // A valid policy is accepted and reads back as the typed resource.
    let valid = authz(
        "books",
        json!({
            "targetRef": {"kind": "Service", "name": "books", "port": 7001},
            "requireMtls": true,
            "rules": [{
                "name": "web-reads",
                "from": {"serviceAccounts": [{"name": "web"}, {"name": "admin", "namespace": "ops"}], "networks": ["10.0.0.0/8"]},
                "http": [{"path": {"type": "PathPrefix", "value": "/books"}, "method": "GET",
                          "headers": [{"name": "x-tenant", "value": "a"}]}]
            }, {"name": "ops", "from": {"namespaces": ["ops"]}}]
        }),
    );
    apply::<AuthorizationPolicy>(&client, &valid).await.expect("a valid AuthorizationPolicy is accepted");
    let typed: Api<AuthorizationPolicy> = Api::namespaced(client.clone(), "default");
    let read = typed.get("books").await.expect("reads back typed");
    assert_eq!(read.spec.default, mesh_kube::crd::authorization::DefaultAction::Deny, "default filled in");
    assert_eq!(read.spec.rules.len(), 2);
    assert_eq!(read.spec.rules[0].from.service_accounts[1].namespace.as_deref(), Some("ops"));

    // Each invalid object is refused by the API server, naming the field.
    let target = json!({"kind": "Service", "name": "books"});
    let clients = json!({"namespaces": ["ops"]});
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "unknown default action (enum)",
            authz("bad-default", json!({"targetRef": target, "default": "Maybe"})),
            vec!["spec.default", "Unsupported value"],
        ),
        (
            "a rule with no clients (CEL)",
            authz("no-clients", json!({"targetRef": target, "rules": [{"name": "r", "from": {}}]})),
            vec!["spec.rules[0].from", "must allow some clients"],
        ),
        (
            "negative port (range)",
            authz("bad-port", json!({"targetRef": {"kind": "Service", "name": "books", "port": -1}})),
            vec!["spec.targetRef.port", "greater than or equal to 1"],
        ),
        (
            "a target that is not a Service (enum)",
            authz("bad-kind", json!({"targetRef": {"kind": "Deployment", "name": "books"}})),
            vec!["spec.targetRef.kind"],
        ),
        (
            "two rules with one name (list map keys)",
            authz(
                "dup-rules",
                json!({"targetRef": target, "rules": [{"name": "r", "from": clients}, {"name": "r", "from": clients}]}),
            ),
            vec!["spec.rules[1]", "Duplicate value"],
        ),
        (
            "a relative path (CEL)",
            authz(
                "relative-path",
                json!({"targetRef": target, "rules": [{"name": "r", "from": clients, "http": [{"path": {"type": "Exact", "value": "books"}}]}]}),
            ),
            vec!["spec.rules[0].http[0].path.value", "absolute path"],
        ),
        (
            "a service account namespace that is no DNS label (pattern)",
            authz(
                "bad-sa",
                json!({"targetRef": target, "rules": [{"name": "r", "from": {"serviceAccounts": [{"name": "a", "namespace": "Ops!"}]}}]}),
            ),
            vec!["spec.rules[0].from.serviceAccounts[0].namespace"],
        ),
        (
            "a duration that is not Gateway API's (pattern)",
            traffic("bad-duration", json!({"targetRef": target, "circuitBreaker": {"baseEjection": "10 seconds"}})),
            vec!["spec.circuitBreaker.baseEjection"],
        ),
        (
            "max ejection shorter than base (CEL)",
            traffic(
                "short-max",
                json!({"targetRef": target, "circuitBreaker": {"baseEjection": "1m", "maxEjection": "30s"}}),
            ),
            vec!["spec.circuitBreaker.maxEjection", "must not be shorter than baseEjection"],
        ),
        (
            "a retry ratio above 10 (range)",
            traffic("big-ratio", json!({"targetRef": target, "retryBudget": {"ratio": 11}})),
            vec!["spec.retryBudget.ratio"],
        ),
    ];
    for (what, object, needles) in cases {
        eprintln!("case: {what}");
        let result = if object["kind"] == "TrafficPolicy" {
            apply::<TrafficPolicy>(&client, &object).await
        } else {
            apply::<AuthorizationPolicy>(&client, &object).await
        };
        assert_rejected(result, &needles);
    }

    // A valid TrafficPolicy with compound durations is accepted.
    let ok = traffic(
        "books",
        json!({"targetRef": target, "circuitBreaker": {"consecutiveFailures": 5, "baseEjection": "10s", "maxEjection": "1h30m"},
               "limits": {"maxConcurrentRequests": 100}, "retryBudget": {"ratio": 0.25, "minPerSecond": 5, "ttl": "10s"}}),
    );
    apply::<TrafficPolicy>(&client, &ok).await.expect("a valid TrafficPolicy is accepted");
}
