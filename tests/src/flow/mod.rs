//! The helpers of the user's flow on a real API server (`kube_flow`, with
//! the suite playing the node, [`crate::node`]): `meshctl` runs, what the
//! install left, the demo app and client pods, `curl` in a pod; the bridge
//! capture ([`capture`]) and web's scale-down under load ([`scale`]).

pub mod capture;
pub mod scale;

use crate::bins;
use crate::node::Node;
use crate::node::plan::{ImageEntry, Images};
use crate::node::suite::{ready, runnable_by_others, until};
use mesh_kube::api::k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use mesh_kube::api::k8s_openapi::api::apps::v1::Deployment;
use mesh_kube::api::k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service, ServiceAccount};
use mesh_kube::api::k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use mesh_kube::api::k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use mesh_kube::api::{Api, Client, ListParams};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The registry and tag the flow installs (the node maps images by name).
pub const REGISTRY: &str = "mesh.test";
/// The version (image tag) the flow installs.
pub const VERSION: &str = "dev";

/// Runs `meshctl ARGS --kubeconfig K` off the runtime (the node keeps
/// running pods meanwhile); returns (success, stdout, stderr).
pub async fn meshctl(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(bins::path("meshctl"));
    cmd.args(args).arg("--kubeconfig").arg(kubeconfig);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.expect("join").expect("meshctl runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// The `✘` lines of a `meshctl check` output.
pub fn failed_lines(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.contains('✘')).collect()
}

/// The label every installed object carries.
pub const SELECTOR: &str = "app.kubernetes.io/part-of=mesh";

/// How many objects with the installation's label `api` lists (0 when it cannot list).
pub async fn count<K>(api: Api<K>) -> usize
where
    K: mesh_kube::api::kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default().labels(SELECTOR)).await.map(|l| l.items.len()).unwrap_or(0)
}

/// How many objects with the installation's label exist, by kind (every
/// kind install applies, looked for in every namespace).
pub async fn installed(client: &Client) -> Vec<(&'static str, usize)> {
    let c = || client.clone();
    vec![
        ("Namespace", count(Api::<Namespace>::all(c())).await),
        ("CustomResourceDefinition", count(Api::<CustomResourceDefinition>::all(c())).await),
        ("ClusterRole", count(Api::<ClusterRole>::all(c())).await),
        ("ClusterRoleBinding", count(Api::<ClusterRoleBinding>::all(c())).await),
        ("MutatingWebhookConfiguration", count(Api::<MutatingWebhookConfiguration>::all(c())).await),
        ("ServiceAccount", count(Api::<ServiceAccount>::all(c())).await),
        ("Secret", count(Api::<Secret>::all(c())).await),
        ("Deployment", count(Api::<Deployment>::all(c())).await),
        ("Service", count(Api::<Service>::all(c())).await),
        ("Pod", count(Api::<Pod>::all(c())).await),
    ]
}

/// Applies `deploy/demo/demo.yaml` (server-side apply, as kubectl would).
pub async fn apply_demo(client: &Client) {
    use mesh_kube::api::kube::core::{ApiResource, DynamicObject, GroupVersionKind};
    let yaml = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo/demo.yaml"))
        .expect("deploy/demo/demo.yaml");
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&yaml).expect("YAML");
    for doc in docs {
        let (api_version, kind) = (doc["apiVersion"].as_str().unwrap_or(""), doc["kind"].as_str().unwrap_or(""));
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let plural = match kind.strip_suffix('y') {
            Some(stem) => format!("{}ies", stem.to_lowercase()),
            None => format!("{}s", kind.to_lowercase()),
        };
        let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural);
        let obj: DynamicObject = serde_json::from_value(doc.clone()).expect("an object");
        let name = obj.metadata.name.clone().unwrap_or_default();
        let api: Api<DynamicObject> = match &obj.metadata.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        let pp = mesh_kube::api::PatchParams::apply("kube-flow").force();
        let applied = until(Duration::from_secs(30), || async {
            api.patch(&name, &pp, &mesh_kube::api::Patch::Apply(&doc)).await.ok()
        })
        .await;
        assert!(applied.is_some(), "applying {kind} {name}");
    }
}

/// A pod's network namespace for a client outside the mesh (namespace
/// `outside`, not injected).
pub async fn unmeshed_pod(client: &Client, node: &Node) -> String {
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "outside"}})).expect("a namespace");
    Api::<Namespace>::all(client.clone()).create(&Default::default(), &ns).await.expect("namespace outside");
    let netns = client_pod(client, node, "outside").await;
    let p = Api::<Pod>::namespaced(client.clone(), "outside").get("curl").await.expect("the pod");
    assert!(p.spec.and_then(|s| s.init_containers).is_none(), "the outside pod was injected");
    netns
}

/// A pod named `curl` in `namespace` (injected or not, by its namespace)
/// whose network namespace clients run in; its netns once Ready.
pub async fn client_pod(client: &Client, node: &Node, namespace: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "curl"},
        "spec": {"automountServiceAccountToken": false, "terminationGracePeriodSeconds": 1, "containers": [{
            "name": "idle", "image": "mesh-test-app", "args": ["tcp-echo", "--listen", "0.0.0.0:9"]}]}}))
    .expect("a pod");
    let created = until(Duration::from_secs(30), || async { pods.create(&Default::default(), &pod).await.ok() }).await;
    assert!(created.is_some(), "the client pod in {namespace}");
    let running = until(Duration::from_secs(60), || async { pods.get("curl").await.ok().filter(ready) }).await;
    running.expect("the client pod Ready");
    let view = node.pods().into_values().find(|v| v.namespace == namespace && v.name == "curl");
    view.expect("the node ran it").netns
}

/// `curl` in a pod's namespace (with the pod's /etc/hosts): (status, body).
pub fn curl(netns: &str, url: &str) -> (String, String) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "curl", "-sS", "--max-time", "5", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), body.to_string())
}

/// The images the node runs: the control plane, the proxy, the test app
/// (`test_app`: the suite's `mesh-test-app`).
pub fn images(dir: &Path, test_app: &Path) -> Images {
    let mut images = Images::new();
    let entry = |path: PathBuf, user| ImageEntry { binary: runnable_by_others(&path, dir), user };
    images.insert("mesh-control".into(), entry(bins::path("mesh-control"), (2103, 2103)));
    images.insert("mesh-proxy".into(), entry(bins::path("mesh-proxy"), (2102, 2102)));
    images.insert("meshctl".into(), entry(bins::path("meshctl"), (65532, 65532)));
    images.insert("mesh-test-app".into(), entry(test_app.to_path_buf(), (0, 0)));
    images
}

/// `meshctl check`'s live probe between demo workloads, through the API
/// server's pod proxy to a source pod's proxy and over mTLS to the
/// target's: web → books passes as allowed, authors → books as denied
/// (books admits only web), the automatic pick passes too, and `-o json`
/// carries the line.
pub async fn check_live_probe(kubeconfig: &Path, demo: &[Pod]) {
    let pod = |prefix: &str| {
        let name = demo.iter().filter_map(|p| p.metadata.name.clone()).find(|n| n.starts_with(prefix));
        format!("demo/{}", name.expect("a demo pod"))
    };
    for (from, verdict) in [(pod("web-"), "allowed"), (pod("authors-"), "denied as the policy says")] {
        let args = ["check", "--mesh-version", VERSION, "--probe-from", &from, "--probe-to", "books.demo:7001"];
        let (ok, out, err) = meshctl(kubeconfig, &args).await;
        let line = out.lines().find(|l| l.contains("live probe")).unwrap_or_default();
        eprintln!("meshctl check {}: {line}", args[3..].join(" "));
        assert!(
            ok && line.starts_with('✔') && line.contains("mTLS (TLSv1.3) with spiffe://") && line.contains(verdict),
            "live probe from {from}:\n{out}\n{err}"
        );
        assert!(line.contains("/ns/demo/sa/books"), "{line}");
    }
    let (ok, out, err) = meshctl(kubeconfig, &["check", "--mesh-version", VERSION, "-o", "json"]).await;
    let checks: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    let probe = checks.as_array().into_iter().flatten().find(|c| c["name"] == "live probe").cloned();
    let probe = probe.unwrap_or_else(|| panic!("no live probe in {out}"));
    assert!(ok && probe["ok"] == true && probe.get("skipped").is_none(), "automatic live probe: {probe}\n{err}");
    assert!(probe["detail"].as_str().is_some_and(|d| d.contains("mTLS")), "{probe}");
}
