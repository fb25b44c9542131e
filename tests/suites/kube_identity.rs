//! Workload identity from Kubernetes against a real kube-apiserver, with the
//! control plane running AS its ServiceAccount under exactly the ClusterRole
//! of `deploy/rbac/` (rendered from `mesh_kube::rbac`), so the API server
//! enforces it:
//!
//! - the registry syncs (list/watch on every kind it reflects), publishes an
//!   Event (create) and updates it (patch), a call outside the role is
//!   forbidden, and the API server's audit log of the control plane's calls
//!   holds exactly the role's (group, resource, verb)s;
//! - a pod's projected ServiceAccount token (minted by TokenRequest for the
//!   mesh's audience, bound to a Pod object: pods need not run) gets a
//!   certificate for `spiffe://cluster.local/ns/<ns>/sa/<account>`, and real
//!   `mesh-proxy` processes holding such certificates talk mTLS to each other
//!   over a Service discovered from the API server;
//! - a wrong audience, a token whose pod was deleted, a terminating pod, an
//!   unbound token, and another ServiceAccount's identity are refused with a
//!   gRPC status naming the problem, each counted by reason; a real proxy
//!   logs the refusal and succeeds once its token file holds a good token.
//!
//! Without the harness binary the suite reports itself skipped; with
//! `CI=true` a skip fails.

use mesh_control::{Config, Control, IdentityConfig};
use mesh_identity::SpiffeId;
use mesh_identity::tls::{CertificateDer, Credentials};
use mesh_kube::api::k8s_openapi::api::authentication::v1::{
    BoundObjectReference, TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec,
};
use mesh_kube::api::k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service, ServiceAccount};
use mesh_kube::api::k8s_openapi::api::discovery::v1::EndpointSlice;
use mesh_kube::api::k8s_openapi::api::events::v1::Event;
use mesh_kube::api::{Api, Client, ClientError, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use mesh_kube::crd::{AuthorizationPolicy, TrafficPolicy};
use mesh_kube::gateway::{GRPCRoute, HTTPRoute};
use mesh_process::{Child, Spec};
use mesh_proto::identity::{CertifyRequest, CertifyResponse, identity_client::IdentityClient};
use mesh_tests::kube_harness::{self, ApiServer};
use mesh_tests::{apps, bins, mesh, real};
use serde_json::json;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TRUST_DOMAIN: &str = "cluster.local";
/// The audience the injector mounts and the control plane checks by default.
const AUDIENCE: &str = mesh_kube::identity::DEFAULT_AUDIENCE;
const CONTROL_ID: &str = "spiffe://cluster.local/ns/mesh-system/sa/mesh-control";
const NS: &str = "shop";

/// The API server, or `None` (skipped) when the harness is not built. It
/// writes an audit log of the control plane's ServiceAccount's requests to
/// `audit_dir/audit.log`.
async fn api_server(audit_dir: &Path) -> Option<ApiServer> {
    if let Err(reason) = kube_harness::availability() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true: the Kubernetes suites must run: {reason}");
        eprintln!("SKIPPED: {reason}");
        return None;
    }
    let policy = audit_dir.join("audit-policy.yaml");
    let user = format!("system:serviceaccount:{}:{}", mesh_kube::rbac::NAMESPACE, mesh_kube::rbac::NAME);
    let rules = json!({"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
        "rules": [{"level": "Metadata", "users": [user]}, {"level": "None"}]});
    std::fs::write(&policy, rules.to_string()).expect("write the audit policy");
    let flags = vec![
        format!("--audit-policy-file={}", policy.display()),
        format!("--audit-log-path={}", audit_dir.join("audit.log").display()),
        "--audit-log-format=json".to_string(),
        "--audit-log-mode=blocking".to_string(),
    ];
    let started = tokio::task::spawn_blocking(move || ApiServer::start_with_flags(&flags)).await.expect("join");
    Some(started.expect("the API server starts"))
}

/// The requests of the control plane's ServiceAccount the API server
/// audited: (API group, resource, verb) of those it authorized, and of those
/// it forbade.
type Calls = BTreeSet<(String, String, String)>;
fn audited_calls(log: &Path) -> (Calls, Calls) {
    let text = std::fs::read_to_string(log).expect("the audit log");
    let (mut allowed, mut forbidden) = (Calls::new(), Calls::new());
    for line in text.lines() {
        let event: serde_json::Value = serde_json::from_str(line).expect("an audit event");
        let Some(object) = event.get("objectRef") else { continue };
        let field = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string();
        let mut resource = field(object, "resource");
        if let Some(sub) = object.get("subresource").and_then(|x| x.as_str()) {
            resource = format!("{resource}/{sub}");
        }
        let call = (field(object, "apiGroup"), resource, field(&event, "verb"));
        match event["responseStatus"]["code"].as_u64() {
            Some(401 | 403) => forbidden.insert(call),
            _ => allowed.insert(call),
        };
    }
    (allowed, forbidden)
}

/// Every (group, resource, verb) the table grants.
fn granted() -> Calls {
    mesh_kube::rbac::CONTROL_PLANE
        .iter()
        .flat_map(|a| a.verbs.iter().map(|v| (a.group.to_string(), a.resource.to_string(), v.to_string())))
        .collect()
}

/// A token for `namespace`/`account` from the TokenRequest API, for
/// `audiences` (the API server's own when empty), bound to `pod` when given.
async fn mint(
    admin: &Client,
    namespace: &str,
    account: &str,
    audiences: &[&str],
    pod: Option<&Pod>,
) -> Result<String, ClientError> {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            expiration_seconds: Some(3600),
            bound_object_ref: pod.map(|p| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: p.metadata.name.clone(),
                uid: p.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let minted = api.create_token_request(account, &PostParams::default(), &request).await?;
    Ok(minted.status.map(|s| s.token).unwrap_or_default())
}

/// A kubeconfig for the control plane's ServiceAccount (its token from TokenRequest).
async fn control_plane_kubeconfig(api: &ApiServer, admin: &Client, dir: &Path) -> PathBuf {
    let token = mint(admin, mesh_kube::rbac::NAMESPACE, mesh_kube::rbac::NAME, &[], None)
        .await
        .expect("a token for the control plane's ServiceAccount");
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "harness", "cluster": {"server": api.url, "certificate-authority": api.ca_cert()}}],
        "users": [{"name": "mesh-control", "user": {"token": token}}],
        "contexts": [{"name": "mesh-control", "context": {"cluster": "harness", "user": "mesh-control"}}],
        "current-context": "mesh-control"
    });
    let path = dir.join("mesh-control.kubeconfig");
    std::fs::write(&path, kubeconfig.to_string()).expect("write the kubeconfig");
    path
}

async fn create<K>(api: &Api<K>, value: serde_json::Value) -> K
where
    K: Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    let object: K = serde_json::from_value(value.clone()).expect("a valid object");
    api.create(&PostParams::default(), &object).await.unwrap_or_else(|e| panic!("creating {value}: {e}"))
}

fn pod_json(name: &str, account: &str, finalizers: &[&str]) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "finalizers": finalizers},
           "spec": {"serviceAccountName": account, "containers": [{"name": "app", "image": "app:1"}]}})
}

/// `Certify` for `identity` with `token` (a fresh key and CSR), over TLS to the control plane.
async fn certify(
    control: &Control,
    anchors: &Arc<Credentials>,
    identity: &str,
    token: &str,
) -> Result<CertifyResponse, tonic::Status> {
    let url = format!("http://{}", control.grpc_addr());
    let channel = mesh_client::channel(&url, Some((anchors.clone(), CONTROL_ID.to_string()))).expect("a channel");
    let id: SpiffeId = identity.parse().expect("a SPIFFE ID");
    let (_key, csr) = mesh_identity::ca::generate_csr(&id).expect("a CSR");
    let request = CertifyRequest { identity: identity.to_string(), csr, token: token.to_string() };
    IdentityClient::new(channel).certify(request).await.map(|r| r.into_inner())
}

fn id(account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{NS}/sa/{account}")
}

async fn refused_count(control: &Control, reason: &str) -> f64 {
    let metrics = mesh::admin_get(control.admin_addr(), "/metrics").await;
    mesh::metric_sum(&metrics, &["identity_certificates_refused_total", &format!("reason=\"{reason}\"")])
}

/// Asserts `Certify` is refused with `code`, a message containing `says`,
/// and one more refusal counted under `reason`.
async fn assert_refused(
    control: &Control,
    anchors: &Arc<Credentials>,
    asked: (String, &str),
    code: tonic::Code,
    reason: &str,
    says: &str,
) {
    assert_refused_as(control, anchors, asked, code, &[(reason, says)]).await;
}

/// Asserts `Certify` is refused with `code` and one more refusal counted
/// under one of the reasons of `outcomes`, whose message says what that
/// outcome's text says.
async fn assert_refused_as(
    control: &Control,
    anchors: &Arc<Credentials>,
    (identity, token): (String, &str),
    code: tonic::Code,
    outcomes: &[(&str, &str)],
) {
    let mut before = Vec::new();
    for (reason, _) in outcomes {
        before.push(refused_count(control, reason).await);
    }
    let status = certify(control, anchors, &identity, token).await.expect_err("refused");
    assert_eq!(status.code(), code, "{outcomes:?}: {status:?}");
    let mut counted = Vec::new();
    for ((reason, says), before) in outcomes.iter().zip(before) {
        let now = refused_count(control, reason).await;
        if now == before + 1.0 {
            assert!(status.message().contains(says), "{reason}: the message should say {says:?}: {}", status.message());
            counted.push(*reason);
        }
    }
    assert_eq!(counted.len(), 1, "counted once under one of {outcomes:?}, got {counted:?}: {}", status.message());
    eprintln!("refused as {}: {}", counted[0], status.message());
}

/// Whether the API server (asked by the admin) authenticates `token` for the mesh's audience.
async fn reviewed_by_api_server(admin: &Client, token: &str) -> bool {
    let review = TokenReview {
        spec: TokenReviewSpec { token: Some(token.to_string()), audiences: Some(vec![AUDIENCE.into()]) },
        ..Default::default()
    };
    let reviewed =
        Api::<TokenReview>::all(admin.clone()).create(&PostParams::default(), &review).await.expect("TokenReview");
    reviewed.status.and_then(|s| s.authenticated) == Some(true)
}

/// This host's first non-loopback IPv4 address: EndpointSlices may not
/// hold loopback addresses, so the proxies' endpoints are published on it.
fn host_ip() -> IpAddr {
    let out = std::process::Command::new("hostname").arg("-I").output().expect("hostname runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .find(|a| a.is_ipv4() && !a.is_loopback())
        .expect("this test needs a non-loopback IPv4 address on the host (`hostname -I`)")
}

/// Catches: the control plane needing a permission the ClusterRole lacks
/// (start-up times out waiting for a list; TokenReview or the pod GET is
/// forbidden and Certify answers UNAVAILABLE; the Event is never
/// published; the leader Lease or a status patch is forbidden, so no status); the role granting more than the table (listing Secrets works)
/// or more than the code calls (a verb never in the audit log);
/// a certificate for the identity asked rather than the one the token proves;
/// tokens for another audience, of a deleted or terminating pod, or bound to
/// no pod being honoured; refusals not counted under their reason; a proxy
/// that does not say why it was refused, or reads its token file only once
/// (a rotated token never used); and certificates from projected tokens not
/// working for mTLS between proxies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projected_tokens_get_certificates_for_their_pods_identity_under_the_control_planes_rbac() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(api) = api_server(dir.path()).await else { return };
    mesh_tests::init_logs();
    let admin = mesh_kube::client::connect(Some(&api.kubeconfig), None).await.expect("an admin client");
    let crds = [mesh_kube::crds::mesh_crds(), mesh_kube::gateway::crds_for_tests()].concat();
    mesh_kube::crds::apply(&admin, &crds, Duration::from_secs(60)).await.expect("CRDs");
    mesh_kube::rbac::apply(&admin).await.expect("the control plane's RBAC");

    // The workloads: ServiceAccounts and Pods (they stay Pending: no kubelet).
    create(
        &Api::<Namespace>::all(admin.clone()),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
    )
    .await;
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), NS);
    for account in ["books", "reviews"] {
        create(&accounts, json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}})).await;
    }
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let books = create(&pods, pod_json("books-1", "books", &[])).await;
    let reviews = create(&pods, pod_json("reviews-1", "reviews", &[])).await;

    // The control plane, as its ServiceAccount.
    let identity_dir = mesh_identity::dir::IdentityDir::new(dir.path().join("identity"));
    identity_dir.init(TRUST_DOMAIN, None).expect("an identity directory");
    let kubeconfig = control_plane_kubeconfig(&api, &admin, dir.path()).await;
    let mut config = Config::with_kubernetes(Some(kubeconfig.clone()), None);
    config.grpc_addr = "127.0.0.1:0".parse().expect("addr");
    config.admin_addr = "127.0.0.1:0".parse().expect("addr");
    config.identity = Some(IdentityConfig::new(identity_dir.path()));
    let control = tokio::time::timeout(Duration::from_secs(90), Control::start(config))
        .await
        .expect("the control plane syncs within 90 s as its ServiceAccount")
        .expect("the control plane starts");
    let anchors_pem = std::fs::read_to_string(identity_dir.path().join(mesh_identity::dir::ANCHORS)).expect("anchors");
    let anchors = Credentials::new(mesh_identity::pem::certs(&anchors_pem).expect("pem")).expect("credentials");

    // RBAC: exactly the role. A call outside it is forbidden.
    let as_control = mesh_kube::client::connect(Some(&kubeconfig), None).await.expect("a client as the control plane");
    let secrets = Api::<Secret>::all(as_control.clone()).list(&ListParams::default()).await;
    assert!(matches!(&secrets, Err(ClientError::Api(s)) if s.code == 403), "listing Secrets: {secrets:?}");
    let delete = Api::<Pod>::namespaced(as_control.clone(), NS).delete("books-1", &DeleteParams::default()).await;
    assert!(matches!(&delete, Err(ClientError::Api(s)) if s.code == 403), "deleting a pod: {delete:?}");
    // The injector's namespace lookup (the webhook's only call) works under the role.
    mesh_kube::inject::namespace(&as_control, NS).await.expect("the injector reads a namespace as the control plane");
    // Events (create) work under the role: a route the mesh cannot serve gets one.
    create(
        &Api::<HTTPRoute>::namespaced(admin.clone(), NS),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "books-redirect"},
               "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "books", "port": 80}],
                        "rules": [{"filters": [{"type": "RequestRedirect"}]}]}}),
    )
    .await;
    // Status (patch on each kind's /status) works under the role: objects for
    // a Service that does not exist (nothing here routes or protects books).
    let ledger = json!({"kind": "Service", "name": "ledger"});
    create(
        &Api::<GRPCRoute>::namespaced(admin.clone(), NS),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute", "metadata": {"name": "ledger"},
               "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "ledger"}]}}),
    )
    .await;
    create(
        &Api::<AuthorizationPolicy>::namespaced(admin.clone(), NS),
        json!({"apiVersion": "policy.mesh.dev/v1alpha1", "kind": "AuthorizationPolicy", "metadata": {"name": "ledger"},
               "spec": {"targetRef": ledger}}),
    )
    .await;
    create(
        &Api::<TrafficPolicy>::namespaced(admin.clone(), NS),
        json!({"apiVersion": "policy.mesh.dev/v1alpha1", "kind": "TrafficPolicy", "metadata": {"name": "ledger"},
               "spec": {"targetRef": ledger}}),
    )
    .await;
    let started = Instant::now();
    loop {
        let grpc = Api::<GRPCRoute>::namespaced(admin.clone(), NS).get("ledger").await.expect("GRPCRoute");
        let authz = Api::<AuthorizationPolicy>::namespaced(admin.clone(), NS).get("ledger").await.expect("policy");
        let traffic = Api::<TrafficPolicy>::namespaced(admin.clone(), NS).get("ledger").await.expect("policy");
        if grpc.status.is_some_and(|s| !s.parents.is_empty()) && authz.status.is_some() && traffic.status.is_some() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no status written under the role after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The right audience, bound to a live pod: its pod's identity.
    let books_token = mint(&admin, NS, "books", &[AUDIENCE], Some(&books)).await.expect("a bound token");
    let issued = certify(&control, &anchors, &id("books"), &books_token).await.expect("a certificate");
    let leaf = CertificateDer::from(issued.leaf.clone());
    assert_eq!(mesh_identity::tls::peer_identity(Some(&[leaf])), Some(id("books")));
    // The same projected token is re-presented until the kubelet rotates it: not single-use.
    certify(&control, &anchors, &id("books"), &books_token).await.expect("presented again");

    // Another ServiceAccount's identity: the token proves books, not reviews.
    let says = "allows spiffe://cluster.local/ns/shop/sa/books, not spiffe://cluster.local/ns/shop/sa/reviews";
    let asked = (id("reviews"), books_token.as_str());
    assert_refused(&control, &anchors, asked, tonic::Code::PermissionDenied, "identity_not_allowed", says).await;
    // Nor can a token of one account be bound to another account's pod.
    let crossed = mint(&admin, NS, "books", &[AUDIENCE], Some(&reviews)).await;
    assert!(crossed.is_err(), "the API server refuses binding books' token to reviews' pod");

    // Another audience.
    let other = mint(&admin, NS, "books", &["some-other-audience"], Some(&books)).await.expect("a token");
    let asked = (id("books"), other.as_str());
    assert_refused(&control, &anchors, asked, tonic::Code::Unauthenticated, "wrong_audience", AUDIENCE).await;

    // Not bound to a pod (a plain TokenRequest for the account).
    let plain = mint(&admin, NS, "books", &[AUDIENCE], None).await.expect("a token");
    let asked = (id("books"), plain.as_str());
    assert_refused(&control, &anchors, asked, tonic::Code::Unauthenticated, "not_pod_bound", "not bound to a pod")
        .await;

    // Not a token at all: refused without asking the API server.
    let asked = (id("books"), "not-a-token");
    assert_refused(&control, &anchors, asked, tonic::Code::Unauthenticated, "malformed_token", "not a Kubernetes")
        .await;

    // Its pod deleted: the API server invalidates the token.
    let doomed = create(&pods, pod_json("books-doomed", "books", &[])).await;
    let doomed_token = mint(&admin, NS, "books", &[AUDIENCE], Some(&doomed)).await.expect("a bound token");
    certify(&control, &anchors, &id("books"), &doomed_token).await.expect("a certificate while the pod lives");
    pods.delete("books-doomed", &DeleteParams::default()).await.expect("pod deleted");
    let started = Instant::now();
    while pods.get_opt("books-doomed").await.expect("get").is_some() {
        assert!(started.elapsed() < Duration::from_secs(30), "pod still there after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The API server keeps authenticating the token for a while (its
    // token cache: 10 s): the mesh's own check refuses it at once (were the
    // machine so slow that the cache expired, TokenReview refuses it).
    let asked = (id("books"), doomed_token.as_str());
    let outcomes = [("pod_gone", "no longer exists"), ("token_invalidated", "deleted")];
    assert_refused_as(&control, &anchors, asked, tonic::Code::Unauthenticated, &outcomes).await;
    // Once the API server itself invalidates it, that is the reason counted.
    let started = Instant::now();
    while reviewed_by_api_server(&admin, &doomed_token).await {
        assert!(started.elapsed() < Duration::from_secs(60), "the API server still authenticates it after 60 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("the API server authenticated the deleted pod's token for {:?} more", started.elapsed());
    let asked = (id("books"), doomed_token.as_str());
    assert_refused(&control, &anchors, asked, tonic::Code::Unauthenticated, "token_invalidated", "deleted").await;

    // Its pod terminating (held by a finalizer): the API server still
    // authenticates the token for a grace period; the mesh does not.
    let held = create(&pods, pod_json("books-held", "books", &["mesh.dev/test-hold"])).await;
    let held_token = mint(&admin, NS, "books", &[AUDIENCE], Some(&held)).await.expect("a bound token");
    pods.delete("books-held", &DeleteParams::default()).await.expect("deletion requested");
    let asked = (id("books"), held_token.as_str());
    assert_refused(&control, &anchors, asked, tonic::Code::Unauthenticated, "pod_terminating", "terminating").await;

    // The Event on the rejected route was published as the control plane.
    let events: Api<Event> = Api::namespaced(admin.clone(), NS);
    let started = Instant::now();
    loop {
        let list = events.list(&ListParams::default()).await.expect("events");
        if list.items.iter().any(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("books-redirect")) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no Event published under the role after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The same route with another problem: the recorder patches its Event.
    let routes = Api::<HTTPRoute>::namespaced(admin.clone(), NS);
    let patch = json!({"spec": {"rules": [{"filters": [{"type": "URLRewrite"}]}]}});
    routes.patch("books-redirect", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("route changed");
    let started = Instant::now();
    loop {
        let list = events.list(&ListParams::default()).await.expect("events");
        let seen = list.items.iter().any(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("books-redirect") && e.series.is_some()
        });
        if seen {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the Event was not patched under the role after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    end_to_end(&admin, &control, identity_dir.path(), dir.path(), (&books, &reviews)).await;
    control.shutdown().await;

    // What the code called, as the API server saw it, is exactly what the
    // role grants: nothing it needs is missing (it would be forbidden) and
    // nothing granted goes unused. The only forbidden calls are this test's.
    let (allowed, forbidden) = audited_calls(&dir.path().join("audit.log"));
    let granted = granted();
    let unused: Vec<_> = granted.difference(&allowed).collect();
    let ungranted: Vec<_> = allowed.difference(&granted).collect();
    assert!(unused.is_empty() && ungranted.is_empty(), "granted but never called: {unused:?}; called: {ungranted:?}");
    let probes = Calls::from([
        (String::new(), "secrets".into(), "list".into()),
        (String::new(), "pods".into(), "delete".into()),
    ]);
    assert_eq!(forbidden, probes, "only the test's own probes outside the role are forbidden");
}

/// Real `mesh-proxy` processes with certificates from their pods' projected
/// tokens: a client (reviews) calls the `books` Service, discovered from the
/// API server, through the books sidecar, over mTLS both ways.
async fn end_to_end(
    admin: &Client,
    control: &Control,
    identity_dir: &Path,
    dir: &Path,
    (books, reviews): (&Pod, &Pod),
) {
    let app = apps::http("books").await;
    let anchors = identity_dir.join(mesh_identity::dir::ANCHORS);
    let token_file = |name: &str, token: String| {
        let path = dir.join(format!("{name}.token"));
        std::fs::write(&path, token).expect("write the token");
        path
    };
    let books_token = token_file("books", mint(admin, NS, "books", &[AUDIENCE], Some(books)).await.expect("token"));
    let reviews_token =
        token_file("reviews", mint(admin, NS, "reviews", &[AUDIENCE], Some(reviews)).await.expect("token"));
    let identity_args = |token: &Path, account: &str| -> Vec<String> {
        vec![
            "--control-plane".into(),
            format!("http://{}", control.grpc_addr()),
            "--identity-token-file".into(),
            token.display().to_string(),
            "--trust-anchors".into(),
            anchors.display().to_string(),
            "--identity".into(),
            id(account),
        ]
    };
    let ip = host_ip();
    let server = real::Proxy::start("books-1", |inbound, _| {
        let on_host = SocketAddr::new(ip, inbound.port());
        let mut a = vec!["--app".into(), app.addr.to_string(), "--inbound-addr".into(), on_host.to_string()];
        a.extend(identity_args(&books_token, "books"));
        a
    })
    .await;
    let inbound_port = server.listen.port();

    let services: Api<Service> = Api::namespaced(admin.clone(), NS);
    create(
        &services,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "books"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": inbound_port, "appProtocol": "http"}]}}),
    )
    .await;
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), NS);
    create(
        &slices,
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "books-1", "labels": {"kubernetes.io/service-name": "books"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": inbound_port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true},
                       "targetRef": {"kind": "Pod", "name": "books-1", "namespace": NS}}]}),
    )
    .await;

    // The client starts with a token for another audience: refused, and the
    // proxy says why. The kubelet then rotates the file's content: the next
    // bootstrap attempt reads the new token and succeeds.
    std::fs::write(&reviews_token, mint(admin, NS, "reviews", &["another"], Some(reviews)).await.expect("token"))
        .expect("write the token");
    let (upstream, admin_addr) = (real::free_addr(), real::free_addr());
    let spec = Spec::new("reviews-1", bins::path("mesh-proxy"), dir.join("reviews-1.log"))
        .args(["--workload", "reviews-1", "--admin-addr", &admin_addr.to_string()])
        .args(["--upstream".to_string(), format!("{upstream}=books.{NS}:80")])
        .args(identity_args(&reviews_token, "reviews"))
        .env("MESH_LOG", "info");
    let client = Child::spawn(spec).expect("mesh-proxy starts");
    let logged = mesh::eventually(Duration::from_secs(15), || {
        let log = client.log_tail(50);
        async move { log.contains("refused the identity token") && log.contains("not for the mesh's audience") }
    })
    .await;
    assert!(logged, "the proxy logs the refusal and its reason:\n{}", client.log_tail(50));
    assert!(!mesh::admin_get(admin_addr, "/ready").await.starts_with("ready"), "not ready without a certificate");
    let rotated = mint(admin, NS, "reviews", &[AUDIENCE], Some(reviews)).await.expect("token");
    std::fs::write(&reviews_token, rotated).expect("rotate the token");
    let ready = mesh::eventually(Duration::from_secs(40), || async move {
        mesh::admin_get(admin_addr, "/ready").await.starts_with("ready")
    })
    .await;
    assert!(ready, "the proxy reads the rotated token at its next attempt:\n{}", client.log_tail(50));

    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let url: http::Uri = format!("http://{upstream}/").parse().expect("url");
    let served = mesh::eventually(Duration::from_secs(15), || {
        let (http, url) = (http.clone(), url.clone());
        async move { http.get(url).await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;
    let outbound = mesh::admin_get(admin_addr, "/metrics").await;
    assert!(served, "no answer through the proxies; client /metrics:\n{outbound}");
    let to_books = [
        "response_total",
        "direction=\"outbound\"",
        "tls=\"true\"",
        "peer_id=\"spiffe://cluster.local/ns/shop/sa/books\"",
    ];
    assert!(mesh::metric_sum(&outbound, &to_books) >= 1.0, "the client verified books' identity:\n{outbound}");
    let inbound = server.metrics().await;
    let from_reviews = [
        "response_total",
        "direction=\"inbound\"",
        "tls=\"true\"",
        "peer_id=\"spiffe://cluster.local/ns/shop/sa/reviews\"",
    ];
    assert!(mesh::metric_sum(&inbound, &from_reviews) >= 1.0, "the sidecar saw reviews' identity:\n{inbound}");
    assert!(app.requests() >= 1);
    client.kill();
}
