//! The user's flow on a real API server, with the suite playing the node
//! (`mesh_tests::node`): `meshctl check --pre`, `meshctl install` (its
//! control plane running as a pod on the node, the API server calling its
//! webhook through the Service's endpoints), `meshctl check`, and
//! `meshctl uninstall`. Every `meshctl` here is the real binary with
//! `--kubeconfig`.
//!
//! Needs root (network namespaces) and the kube harness: skipped without
//! them, a failure when `CI=true`. Everything lives in the node's own
//! network namespace (`knode-PID-…`).

use mesh_kube::api::k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use mesh_kube::api::k8s_openapi::api::apps::v1::Deployment;
use mesh_kube::api::k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service, ServiceAccount};
use mesh_kube::api::k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use mesh_kube::api::k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use mesh_kube::api::{Api, Client, ListParams};
use mesh_tests::bins;
use mesh_tests::kube_harness;
use mesh_tests::node::plan::{ImageEntry, Images};
use mesh_tests::node::{Node, NodeNet, netns::netns_list};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The registry and tag the flow installs (the node maps images by name).
const REGISTRY: &str = "mesh.test";
const VERSION: &str = "dev";

/// Polls `f` every 200 ms until it returns `Some` or `timeout` passes.
async fn until<T, F: std::future::Future<Output = Option<T>>>(
    timeout: Duration,
    mut f: impl FnMut() -> F,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `path`, or a copy in `dir` when some directory above it keeps other
/// users out (containers run as non-root users).
fn runnable_by_others(path: &Path, dir: &Path) -> PathBuf {
    let open = |p: &Path, bits: u32| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & bits == bits);
    if open(path, 0o005) && path.ancestors().skip(1).all(|d| open(d, 0o001)) {
        return path.to_path_buf();
    }
    let copy = dir.join(path.file_name().expect("a file name"));
    std::fs::copy(path, &copy).expect("copying the binary");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    copy
}

/// Runs `meshctl ARGS --kubeconfig K` off the runtime (the node keeps
/// running pods meanwhile); returns (success, stdout, stderr).
async fn meshctl(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(bins::path("meshctl"));
    cmd.args(args).arg("--kubeconfig").arg(kubeconfig);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.expect("join").expect("meshctl runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// The `✘` lines of a `meshctl check` output.
fn failed_lines(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.contains('✘')).collect()
}

/// The label every installed object carries.
const SELECTOR: &str = "app.kubernetes.io/part-of=mesh";

async fn count<K>(api: Api<K>) -> usize
where
    K: mesh_kube::api::kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default().labels(SELECTOR)).await.map(|l| l.items.len()).unwrap_or(0)
}

/// How many objects with the installation's label exist, by kind (every
/// kind install applies, looked for in every namespace).
async fn installed(client: &Client) -> Vec<(&'static str, usize)> {
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

/// The images the node runs: the control plane, the proxy, the test app.
fn images(dir: &Path) -> Images {
    let mut images = Images::new();
    let entry = |path: PathBuf, user| ImageEntry { binary: runnable_by_others(&path, dir), user };
    images.insert("mesh-control".into(), entry(bins::path("mesh-control"), (2103, 2103)));
    images.insert("mesh-proxy".into(), entry(bins::path("mesh-proxy"), (2102, 2102)));
    images.insert("mesh-test-app".into(), entry(PathBuf::from(env!("CARGO_BIN_EXE_mesh-test-app")), (0, 0)));
    images
}

/// The flow from `check --pre` to `uninstall`.
///
/// Catches: a `check --pre` that fails on a fresh cluster (or passes with
/// no API server: it is run against one first); an install whose control
/// plane cannot run as rendered on a node (a Secret volume its UID cannot
/// read, probes on an address the node cannot reach, no in-cluster API
/// access with its ServiceAccount), a webhook Service the API server cannot
/// reach or whose certificate does not match the caBundle (check's
/// injector line fails); any `meshctl check` line failing after install;
/// an uninstall that leaves an object with the install's label or a CRD.
#[test]
fn install_check_and_uninstall_on_the_node() {
    if let Some(reason) = mesh_tests::netns::unavailable() {
        mesh_tests::netns::skipped(&reason);
        return;
    }
    if kube_harness::availability().is_err() {
        let _ = kube_harness::start_or_skip();
        return;
    }
    mesh_tests::init_logs();
    let net = Arc::new(NodeNet::create("flow").expect("the node's namespace"));
    net.enter().expect("entering the node's namespace");
    let api = kube_harness::ApiServer::start().expect("the API server starts");
    let kcm = api.start_controller_manager().expect("the controller-manager starts");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let node_ns = net.name().to_string();
    let kubeconfig = api.kubeconfig.clone();
    rt.block_on(async {
        let client = mesh_kube::client::connect(Some(&kubeconfig), None).await.expect("a client");

        // 1. Before install: all ✔ on the fresh cluster.
        let (ok, out, err) = meshctl(&kubeconfig, &["check", "--pre"]).await;
        assert!(ok, "check --pre failed:\n{out}\n{err}");
        assert!(failed_lines(&out).is_empty() && out.contains('✔'), "{out}");

        // 2. Install; its control plane runs as a pod on the node.
        let scratch = tempfile::tempdir().expect("a directory");
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let node =
            Node::start(client.clone(), "node-1", net.clone(), images(scratch.path())).await.expect("the node starts");
        let api_addr = api.url.trim_start_matches("https://").parse().expect("the API server's address");
        node.serve_kubernetes_service(api_addr);
        let args = ["install", "--registry", REGISTRY, "--mesh-version", VERSION, "--wait", "120s"];
        let (ok, out, err) = meshctl(&kubeconfig, &args).await;
        if !ok {
            let pods: Api<Pod> = Api::namespaced(client.clone(), "mesh-system");
            let status: Vec<_> = pods
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default()
                .into_iter()
                .map(|p| (p.metadata.name.clone().unwrap_or_default(), p.status))
                .collect();
            let name = status.first().map(|s| s.0.clone()).unwrap_or_default();
            panic!(
                "install failed:\n{out}\n{err}\npods: {status:#?}\ncontrol plane log:\n{}\ncontroller-manager:\n{}",
                node.container_log(&name, "mesh-control"),
                kcm.log_tail(20)
            );
        }
        let (ok, out, err) = meshctl(&kubeconfig, &["check", "--mesh-version", VERSION]).await;
        assert!(ok && failed_lines(&out).is_empty(), "check after install:\n{out}\n{err}");
        let views = node.pods();
        let control = views.values().find(|v| v.namespace == "mesh-system").expect("the control plane ran on the node");
        let pid = control.pids["mesh-control"];
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert!(status.lines().any(|l| l == "Uid:\t2103\t2103\t2103\t2103"), "the control plane's UID:\n{status}");

        // 5. Uninstall leaves nothing with the install's label, and no CRD.
        let (ok, out, err) = meshctl(&kubeconfig, &["uninstall"]).await;
        assert!(ok, "uninstall:\n{out}\n{err}");
        let left = until(Duration::from_secs(90), || async {
            let left = installed(&client).await;
            left.iter().all(|(_, n)| *n == 0).then_some(())
        })
        .await;
        assert!(left.is_some(), "left after uninstall: {:?}", installed(&client).await);
        let crds = Api::<CustomResourceDefinition>::all(client.clone()).list(&ListParams::default()).await;
        let crds: Vec<String> = crds.expect("CRDs").items.into_iter().filter_map(|c| c.metadata.name).collect();
        assert!(crds.iter().all(|c| !c.ends_with(".mesh.dev")), "CRDs left: {crds:?}");
        let stopped = until(Duration::from_secs(60), || async {
            node.pods().values().filter(|v| v.namespace == "mesh-system").all(|v| v.finished).then_some(())
        })
        .await;
        assert!(stopped.is_some(), "the control plane's pod still runs: {:#?}", node.pods());
        node.shutdown().await;
    });
    drop(rt);
    drop(kcm);
    drop(api);
    drop(net);
    let left: Vec<String> =
        netns_list().into_iter().filter(|n| *n == node_ns || n.starts_with(&format!("{node_ns}-"))).collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
}
