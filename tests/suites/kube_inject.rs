//! Sidecar injection against a real kube-apiserver: what `meshctl inject`
//! writes (the webhook's own injection function) is accepted by the API
//! server's validation for every workload kind — native sidecar, probes,
//! security contexts, projected token volume — and stored as written; and
//! `meshctl uninject` gives the input back. And the injector webhook: the
//! control plane registered as a MutatingWebhookConfiguration is called by
//! the API server for real, and the stored pods carry what it wrote.
//!
//! Without the harness binary the suite reports itself skipped; with
//! `CI=true` a skip fails.

use mesh_kube::api::kube::api::DynamicObject;
use mesh_kube::api::kube::core::{ApiResource, GroupVersionKind};
use mesh_kube::api::{Api, Client, PostParams};
use mesh_tests::bins;
use mesh_tests::kube_harness;
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const NS: &str = "shop";

const WORKLOADS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: "web:1"
        ports: [{name: http, containerPort: 8080}]
        livenessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 5}
        readinessProbe: {tcpSocket: {port: 8080}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: shop}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}, annotations: {config.mesh.dev/skip-inbound-ports: "9100"}}
    spec:
      initContainers: [{name: migrate, image: "db:1"}]
      containers: [{name: db, image: "db:1"}]
      volumes: [{name: data, emptyDir: {}}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: shop}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {containers: [{name: agent, image: "agent:1"}]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: once, namespace: shop}
spec:
  template:
    spec: {restartPolicy: Never, containers: [{name: once, image: "job:1"}]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly, namespace: shop}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec: {restartPolicy: OnFailure, containers: [{name: nightly, image: "job:1"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: bare, namespace: shop}
spec: {containers: [{name: bare, image: "bare:1"}]}
"#;

/// Runs `meshctl ARGS` with `input` on stdin; returns stdout (panics with stderr on failure).
fn meshctl(args: &[&str], input: &str) -> String {
    let mut child = Command::new(bins::path("meshctl"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meshctl starts");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("writes stdin");
    let out = child.wait_with_output().expect("meshctl runs");
    assert!(out.status.success(), "meshctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

fn documents(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).expect("YAML");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn api_for(client: &Client, doc: &Value) -> Api<DynamicObject> {
    let (group, version) = match doc["apiVersion"].as_str().expect("apiVersion").split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), doc["apiVersion"].as_str().unwrap_or_default().to_string()),
    };
    let kind = doc["kind"].as_str().expect("kind");
    let plural = format!("{}s", kind.to_lowercase());
    let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(&group, &version, kind), &plural);
    Api::namespaced_with(client.clone(), NS, &resource)
}

/// Catches an injection the API server would refuse (a sidecar
/// `restartPolicy` on a regular container, duplicate or invalid volume and
/// env names, a probe without a handler, a capability spelled wrong) and one
/// it would store differently (fields it drops or defaults away): every kind
/// is created for real and read back with the sidecar intact. And an
/// `uninject` that leaves pieces behind: the round trip gives the input back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_workloads_are_accepted_by_the_api_server_and_uninject_restores_them() {
    let Some(api) = tokio::task::spawn_blocking(kube_harness::start_or_skip).await.expect("join") else { return };
    let client = mesh_kube::client::connect(Some(&api.kubeconfig), None).await.expect("a client");

    let dir = tempfile::tempdir().expect("tempdir");
    let anchor = mesh_identity::ca::generate_trust_anchor("cluster.local", Duration::from_secs(3600)).expect("anchor");
    let anchors = dir.path().join("anchors.pem");
    std::fs::write(&anchors, &anchor.cert_pem).expect("writes anchors");
    let anchors = anchors.to_str().expect("utf-8 path");

    let injected = tokio::task::spawn_blocking({
        let anchors = anchors.to_string();
        move || meshctl(&["inject", "--trust-anchors", &anchors, "-"], WORKLOADS)
    })
    .await
    .expect("join");
    let back = tokio::task::spawn_blocking({
        let injected = injected.clone();
        move || meshctl(&["uninject", "-"], &injected)
    })
    .await
    .expect("join");
    assert_eq!(documents(&back), documents(WORKLOADS), "inject | uninject gives the input back");

    create_namespace_and_service_account(&client).await;
    for doc in documents(&injected) {
        let object: DynamicObject = serde_json::from_value(doc.clone()).expect("an object");
        let name = format!("{}/{}", doc["kind"], doc["metadata"]["name"]);
        let stored = api_for(&client, &doc)
            .create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("the API server refused injected {name}: {e}"));
        let stored = serde_json::to_value(&stored).expect("json");
        let template = match doc["kind"].as_str() {
            Some("Pod") => stored.clone(),
            Some("CronJob") => stored.pointer("/spec/jobTemplate/spec/template").cloned().expect("template"),
            _ => stored.pointer("/spec/template").cloned().expect("template"),
        };
        let inits = template.pointer("/spec/initContainers").and_then(Value::as_array).expect("init containers");
        assert_eq!(inits[0]["name"], json!("mesh-init"), "{name}");
        assert_eq!(inits[1]["name"], json!("mesh-proxy"), "{name}");
        assert_eq!(inits[1]["restartPolicy"], json!("Always"), "{name}: stored as a native sidecar");
        assert_eq!(inits[1].pointer("/startupProbe/httpGet/path"), Some(&json!("/ready")), "{name}");
        assert_eq!(
            inits[0].pointer("/securityContext/capabilities/add"),
            Some(&json!(["NET_ADMIN", "NET_RAW"])),
            "{name}"
        );
        if doc["kind"] == "Deployment" {
            // The rewritten probes are valid to the API server (one handler each).
            let web = template.pointer("/spec/containers/0").expect("web");
            assert_eq!(web.pointer("/livenessProbe/httpGet/path"), Some(&json!("/app-health/web/liveness")));
            assert_eq!(web.pointer("/readinessProbe/httpGet/port"), Some(&json!(4191)));
            assert_eq!(web.pointer("/readinessProbe/tcpSocket"), None);
        }
        let volumes = template.pointer("/spec/volumes").and_then(Value::as_array).expect("volumes");
        let token = volumes.iter().find(|v| v["name"] == json!("mesh-identity-token")).expect("token volume");
        assert_eq!(token.pointer("/projected/sources/0/serviceAccountToken/audience"), Some(&json!("mesh")), "{name}");
    }
}

async fn create_namespace_and_service_account(client: &Client) {
    use mesh_kube::api::k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}})).expect("namespace");
    namespaces.create(&PostParams::default(), &ns).await.expect("creates the namespace");
    // No controller-manager here: the default ServiceAccount the ServiceAccount
    // admission plugin requires of every pod is created by hand.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}})).expect("sa");
    accounts.create(&PostParams::default(), &sa).await.expect("creates the default ServiceAccount");
}

/// The injector serving as a real admission webhook: the API server calls it
/// over TLS (verified against the `caBundle`: the mesh's trust anchors) for
/// every pod created outside the skipped namespaces.
///
/// Catches: a webhook the API server cannot reach or verify (no sidecar: the
/// pod would be stored as created), a patch it refuses (creation fails), an
/// opt-in that is ignored (pods outside opted-in namespaces injected) or an
/// opt-out ignored, and a bad annotation let through instead of refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_calls_the_injector_and_stores_what_it_wrote() {
    use mesh_control::{Config, Control, IdentityConfig, RegistryConfig, WebhookConfig};

    let Some(api) = tokio::task::spawn_blocking(kube_harness::start_or_skip).await.expect("join") else { return };
    let client = mesh_kube::client::connect(Some(&api.kubeconfig), None).await.expect("a client");
    let dir = tempfile::tempdir().expect("tempdir");
    let identity = mesh_identity::dir::IdentityDir::new(dir.path().join("identity"));
    identity.init("cluster.local", None).expect("identity directory");

    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let control = Control::start(Config {
        grpc_addr: loopback,
        admin_addr: loopback,
        registry: RegistryConfig::Kubernetes { kubeconfig: Some(api.kubeconfig.clone()), context: None },
        identity: Some(IdentityConfig::new(identity.path())),
        webhook: Some(WebhookConfig {
            addr: loopback,
            settings: mesh_control::webhook::WebhookSettings {
                registry: "registry.test/mesh".into(),
                proxy_version: "9.9.9".into(),
                mesh_namespace: "mesh-system".into(),
                control_plane: None,
            },
        }),
        timeouts: Default::default(),
    })
    .await
    .expect("the control plane starts");
    let port = control.webhook_addr().expect("the webhook listens").port();

    let anchors = std::fs::read(identity.path().join(mesh_identity::dir::ANCHORS)).expect("anchors");
    mesh_tests::kube_harness::register_injector(&client, port, anchors).await;
    for (name, label) in [("meshed", Some("enabled")), ("plain", None)] {
        create_namespace(&client, name, label).await;
    }

    // The API server picks webhook configurations up asynchronously: the
    // first pods may be admitted before it calls the injector.
    let started = std::time::Instant::now();
    let injected = loop {
        let name = format!("probe-{}", started.elapsed().as_millis());
        let stored = create_pod(&client, "meshed", &name, json!({})).await.expect("a pod is admitted");
        if has_proxy(&stored) {
            break stored;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the API server never called the injector");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let inits = injected.spec.as_ref().and_then(|s| s.init_containers.clone()).expect("init containers");
    assert_eq!(inits[1].image.as_deref(), Some("registry.test/mesh/mesh-proxy:9.9.9"));
    let anchors_env = inits[1].env.iter().flatten().find(|e| e.name == "MESH_TRUST_ANCHORS_PEM").expect("anchors env");
    assert_eq!(
        anchors_env.value.as_deref().map(str::trim),
        Some(
            String::from_utf8_lossy(
                &std::fs::read(identity.path().join(mesh_identity::dir::ANCHORS)).expect("anchors")
            )
            .trim()
        ),
        "the injected anchors are the mesh's"
    );

    let plain = create_pod(&client, "plain", "app", json!({})).await.expect("admitted");
    assert!(!has_proxy(&plain), "a namespace that did not opt in is left alone");
    let opted_out =
        create_pod(&client, "meshed", "opted-out", json!({"mesh.dev/inject": "disabled"})).await.expect("admitted");
    assert!(!has_proxy(&opted_out), "a pod's opt-out wins over its namespace");
    let refused = create_pod(&client, "meshed", "typo", json!({"config.mesh.dev/opaque-port": "3306"})).await;
    match refused {
        Err(mesh_kube::api::ClientError::Api(status)) => {
            assert!(status.message.contains("config.mesh.dev/opaque-port"), "{}", status.message);
        }
        other => panic!("a pod with an unknown mesh annotation must be refused, got {other:?}"),
    }

    let metrics = mesh_tests::mesh::admin_get(control.admin_addr(), "/metrics").await;
    for verdict in ["injected", "skipped", "denied"] {
        assert!(
            metrics.lines().any(|l| l.starts_with(&format!("injector_admissions_total{{verdict=\"{verdict}\"}}"))),
            "no {verdict} admissions counted:\n{metrics}"
        );
    }
    control.shutdown().await;
}

fn has_proxy(pod: &mesh_kube::api::k8s_openapi::api::core::v1::Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.init_containers.as_ref()).is_some_and(|c| c.iter().any(|c| c.name == "mesh-proxy"))
}

async fn create_namespace(client: &Client, name: &str, inject: Option<&str>) {
    use mesh_kube::api::k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    let labels = inject.map(|v| json!({"mesh.dev/inject": v})).unwrap_or(json!({}));
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).expect("ns");
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("creates the namespace");
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}})).expect("sa");
    Api::<ServiceAccount>::namespaced(client.clone(), name)
        .create(&PostParams::default(), &sa)
        .await
        .expect("creates the default ServiceAccount");
}

async fn create_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    annotations: Value,
) -> Result<mesh_kube::api::k8s_openapi::api::core::v1::Pod, mesh_kube::api::ClientError> {
    let pod = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}
    }))
    .expect("a pod");
    Api::namespaced(client.clone(), namespace).create(&PostParams::default(), &pod).await
}
