//! The user's flow on a real API server, with the suite playing the node
//! (`mesh_tests::node`): `meshctl check --pre`, `meshctl install` (its
//! control plane running as a pod on the node, the API server calling its
//! webhook through the Service's endpoints), `meshctl check`, the demo app
//! (`deploy/demo/demo.yaml`) in an injected namespace with traffic over
//! mTLS on the node's bridge, web scaled down under load, and `meshctl uninstall`. Every `meshctl` here is the real binary with
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
use mesh_tests::node::plan::{ImageEntry, Images};
use mesh_tests::node::suite::{self, Cluster, ip, ready, runnable_by_others, until};
use mesh_tests::node::{Node, netns::netns_list};
use mesh_tests::pcap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The registry and tag the flow installs (the node maps images by name).
const REGISTRY: &str = "mesh.test";
const VERSION: &str = "dev";

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

/// Applies `deploy/demo/demo.yaml` (server-side apply, as kubectl would).
async fn apply_demo(client: &Client) {
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
async fn unmeshed_pod(client: &Client, node: &Node) -> String {
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
async fn client_pod(client: &Client, node: &Node, namespace: &str) -> String {
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
fn curl(netns: &str, url: &str) -> (String, String) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "curl", "-sS", "--max-time", "5", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), body.to_string())
}

/// tcpdump on the node's bridge.
struct Capture {
    child: std::process::Child,
    file: PathBuf,
}

impl Capture {
    fn start(file: &Path) -> Self {
        let child = std::process::Command::new("tcpdump")
            // Immediate mode: each packet as it comes (buffered, the last
            // ones could still sit in the kernel when tcpdump is stopped).
            .args(["-i", "cbr0", "--immediate-mode", "-U", "-s", "0", "-w"])
            .arg(file)
            .arg("tcp")
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tcpdump runs");
        // Listening once it has written the file's header.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(file).map(|m| m.len()).unwrap_or(0) < 24 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        Capture { child, file: file.to_path_buf() }
    }

    fn stop(mut self) -> pcap::Capture {
        // SIGTERM drops what tcpdump has not read yet (on a busy machine it
        // lags): wait until the file stops growing.
        let size = |f: &Path| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = size(&self.file);
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let now = size(&self.file);
            if now == last || Instant::now() > deadline {
                break;
            }
            last = now;
        }
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        pcap::parse(&std::fs::read(&self.file).expect("the capture")).expect("a pcap file")
    }
}

/// Between two pods (not the node, 10.244.0.1, nor the unmeshed client
/// `outside`, whose plaintext attempt is expected): how many streams to a
/// books pod carried TLS application data, and every stream with a payload
/// that is not TLS.
fn pod_to_pod(cap: &pcap::Capture, books: &[String], outside: &str) -> (usize, Vec<(String, String, String)>) {
    let node: std::net::IpAddr = [10, 244, 0, 1].into();
    let mut tls = 0;
    let mut plain = Vec::new();
    for ((from, to), stream) in pcap::streams(cap) {
        let unmeshed = from.ip().to_string() == outside || to.ip().to_string() == outside;
        if from.ip() == node || to.ip() == node || unmeshed || stream.data.is_empty() {
            continue;
        }
        match pcap::tls_records(&stream.data) {
            Ok(types) => {
                if books.contains(&to.ip().to_string()) && types.contains(&pcap::content::APPLICATION_DATA) {
                    tls += 1;
                }
            }
            Err(e) => {
                let head = String::from_utf8_lossy(&stream.data[..stream.data.len().min(80)]).into_owned();
                plain.push((format!("{from} → {to}"), e, head));
            }
        }
    }
    (tls, plain)
}

/// The client proxy's view of Service `service` in `demo` (`GET /config`
/// on its admin port, from the node): address → weight of each endpoint.
async fn proxy_endpoints(pod_ip: &str, service: &str) -> Option<std::collections::BTreeMap<String, u64>> {
    let config: serde_json::Value = serde_json::from_str(&proxy_admin(pod_ip, "/config").await?).ok()?;
    let t = config["targets"]
        .as_array()?
        .iter()
        .find(|t| t["service"]["name"] == service && t["service"]["namespace"] == "demo")?;
    let eps = t["endpoints"].as_array()?.iter();
    Some(eps.filter_map(|e| Some((e["address"].as_str()?.to_string(), e["weight"].as_u64()?))).collect())
}

/// `GET PATH` from a pod's proxy (its admin port, from the node): the body.
async fn proxy_admin(pod_ip: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect((pod_ip, 4191)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8_lossy(&raw);
    Some(text.split_once("\r\n\r\n")?.1.to_string())
}

/// `mesh-test-app http-load` in a pod's namespace, its `progress ok=N
/// failed=M` lines read as they come; killed if the test fails first.
struct LoadChild {
    child: std::process::Child,
    progress: std::sync::Arc<std::sync::Mutex<(u64, u64)>>,
}

impl LoadChild {
    fn start(netns: &str, url: &str) -> Self {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", netns, env!("CARGO_BIN_EXE_mesh-test-app"), "http-load", "--url", url])
            .args(["--duration", "300s", "--concurrency", "4", "--pause", "5ms", "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("mesh-test-app http-load runs");
        let progress = std::sync::Arc::new(std::sync::Mutex::new((0, 0)));
        let (stderr, seen) = (child.stderr.take().expect("stderr"), progress.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)?.parse::<u64>().ok());
                if let (Some(ok), Some(failed)) = (field("ok="), field("failed=")) {
                    *seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = (ok, failed);
                }
            }
        });
        LoadChild { child, progress }
    }

    /// (ok, failed) so far.
    fn progress(&self) -> (u64, u64) {
        *self.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until `n` more requests succeeded than now.
    async fn flows(&self, n: u64, what: &str) {
        let from = self.progress().0;
        let flowed = until(Duration::from_secs(60), || async { (self.progress().0 >= from + n).then_some(()) }).await;
        assert!(flowed.is_some(), "the load stopped flowing {what}: {:?}", self.progress());
    }

    /// SIGTERM, then its final outcome (JSON).
    fn stop(mut self) -> serde_json::Value {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let mut out = String::new();
        use std::io::Read as _;
        let _ = self.child.stdout.take().expect("stdout").read_to_string(&mut out);
        let _ = self.child.wait();
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("http-load's outcome {out:?}: {e}"))
    }
}

impl Drop for LoadChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn scale(client: &Client, deployment: &str, replicas: i32) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), "demo");
    let patch = serde_json::json!({"spec": {"replicas": replicas}});
    let pp = mesh_kube::api::PatchParams::default();
    api.patch(deployment, &pp, &mesh_kube::api::Patch::Merge(&patch)).await.expect("scaling");
}

/// The `web` pods the API server has, by name: (IP, Ready).
async fn web_pods(client: &Client) -> Option<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "demo");
    let list = pods.list(&ListParams::default().labels("app=web")).await.ok()?.items;
    Some(list)
}

/// Step 4: `web` scaled to 3 replicas; with a steady load from the meshed
/// client pod `meshed` (`mesh-test-app http-load`: every failed attempt
/// counted, no client retries), scaled down to 1. Asserts 0 failed
/// requests, that the load flowed after the removed pods were gone, and
/// that their processes and network namespaces are gone; prints the
/// requests, when the client proxy stopped sending to each removed pod
/// (its `/config`, polled every 20 ms) and what it sent again.
///
/// Catches what a scale-down races: the node SIGTERMs a deleted pod's app
/// at once (as a kubelet does), while the EndpointSlice change still
/// travels through the controller-manager, the control plane and the
/// client's proxy; a request reaching the pod's sidecar after its app
/// stopped must go to another replica (`mesh-proxy-unprocessed`), not fail:
/// without that, 3 of ~400 requests failed in 2 of 3 runs (502, the app
/// refused). Also a removed pod whose processes or namespace outlive it.
async fn scale_down_under_load(client: &Client, node: &Node, meshed: &str) {
    let url = "http://web.demo.svc.cluster.local:8080/";
    let client_ip = node.pods().into_values().find(|v| v.namespace == "demo" && v.name == "curl").expect("curl").ip;
    scale(client, "web", 3).await;
    let three = until(Duration::from_secs(120), || async {
        let pods = web_pods(client).await?;
        let ips: Vec<String> = pods.iter().filter(|p| ready(p)).map(ip).collect();
        let eps = proxy_endpoints(&client_ip, "web").await?;
        let weighted = ips.iter().filter(|i| eps.iter().any(|(a, w)| a.starts_with(&format!("{i}:")) && *w > 0));
        (ips.len() == 3 && weighted.count() == 3).then_some(pods)
    })
    .await;
    let Some(before) = three else {
        let config = proxy_admin(&client_ip, "/config").await;
        panic!("web never had 3 ready endpoints in the client's proxy: {config:?}; pods: {:?}", web_pods(client).await);
    };
    let load = LoadChild::start(meshed, url);
    load.flows(100, "before the scale-down").await;

    scale(client, "web", 1).await;
    let scaled = Instant::now();
    // When the client proxy stops giving each pod new requests (weight 0
    // or gone): polled every 20 ms.
    let mut dropped: std::collections::BTreeMap<String, Duration> = Default::default();
    let ips: Vec<String> = before.iter().map(ip).collect();
    while dropped.len() < 2 && scaled.elapsed() < Duration::from_secs(60) {
        if let Some(eps) = proxy_endpoints(&client_ip, "web").await {
            for i in &ips {
                let live = eps.iter().any(|(a, w)| a.starts_with(&format!("{i}:")) && *w > 0);
                if !live {
                    dropped.entry(i.clone()).or_insert_with(|| scaled.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = until(Duration::from_secs(90), || async {
        let pods = web_pods(client).await?;
        (pods.len() == 1).then_some(pods)
    })
    .await;
    let after = after.expect("web never scaled down to 1 pod");
    let kept = after[0].metadata.uid.clone().unwrap_or_default();
    let removed: Vec<_> = before.iter().filter_map(|p| p.metadata.uid.clone()).filter(|u| *u != kept).collect();
    let finished = until(Duration::from_secs(60), || async {
        let views = node.pods();
        removed.iter().all(|u| views.get(u).is_some_and(|v| v.finished)).then_some(views)
    })
    .await;
    let views = finished.expect("the node never finished the removed web pods");
    let gone = Instant::now().duration_since(scaled);
    load.flows(100, "after the removed pods were gone").await;
    let outcome = load.stop();

    let (ok, failed) = (outcome["ok"].as_u64().unwrap_or(0), outcome["failed"].as_u64().unwrap_or(0));
    let removed_ips: Vec<String> = removed.iter().map(|u| views[u].ip.clone()).collect();
    let drop_times: Vec<_> = removed_ips.iter().map(|i| (i.clone(), dropped.get(i).copied())).collect();
    let metrics = proxy_admin(&client_ip, "/metrics").await.unwrap_or_default();
    let resent: Vec<&str> = metrics.lines().filter(|l| l.starts_with("http_requests_resent_total{")).collect();
    println!(
        "scale-down under load: {} requests, {failed} failed; the client proxy stopped sending to the removed pods \
         after {drop_times:?}; their pods finished on the node {gone:?} after the scale-down; resent: {resent:?}",
        ok + failed
    );
    assert_eq!(failed, 0, "requests failed while web scaled down: {outcome}");
    let namespaces = netns_list();
    for u in &removed {
        let v = &views[u];
        for (c, pid) in &v.pids {
            assert!(!Path::new(&format!("/proc/{pid}")).exists(), "{}'s {c} (PID {pid}) still runs", v.name);
        }
        assert!(!namespaces.contains(&v.netns), "{}'s network namespace {} is left", v.name, v.netns);
    }
}

/// The images the node runs: the control plane, the proxy, the test app.
fn images(dir: &Path) -> Images {
    let mut images = Images::new();
    let entry = |path: PathBuf, user| ImageEntry { binary: runnable_by_others(&path, dir), user };
    images.insert("mesh-control".into(), entry(bins::path("mesh-control"), (2103, 2103)));
    images.insert("mesh-proxy".into(), entry(bins::path("mesh-proxy"), (2102, 2102)));
    images.insert("meshctl".into(), entry(bins::path("meshctl"), (65532, 65532)));
    images.insert("mesh-test-app".into(), entry(PathBuf::from(env!("CARGO_BIN_EXE_mesh-test-app")), (0, 0)));
    images
}

/// `meshctl check`'s live probe between demo workloads, through the API
/// server's pod proxy to a source pod's proxy and over mTLS to the
/// target's: web → books passes as allowed, authors → books as denied
/// (books admits only web), the automatic pick passes too, and `-o json`
/// carries the line.
async fn check_live_probe(kubeconfig: &Path, demo: &[Pod]) {
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

/// The flow from `check --pre` to `uninstall`.
///
/// Catches: a `check --pre` that fails on a fresh cluster (or passes with
/// no API server: it is run against one first); an install whose control
/// plane cannot run as rendered on a node (a Secret volume its UID cannot
/// read, probes on an address the node cannot reach, no in-cluster API
/// access with its ServiceAccount), a webhook Service the API server cannot
/// reach or whose certificate does not match the caBundle (check's
/// injector line fails); any `meshctl check` line failing after install;
/// demo pods not injected or never Ready (a proxy that cannot reach the
/// control plane by its Service name), web not reaching books and authors,
/// any plaintext between meshed pods on the bridge or no TLS to books
/// (captured with tcpdump), an unmeshed client admitted by books' policy;
/// `meshctl check`'s live probe failing between demo workloads, or
/// reporting web → books other than allowed or authors → books other than
/// denied (see `check_live_probe`), or running without meshed workloads;
/// a failed request while web scales down under load (see
/// [`scale_down_under_load`]); an uninstall that runs while meshed pods
/// remain, or that leaves an
/// object with the install's label or a CRD.
#[test]
fn install_check_and_uninstall_on_the_node() {
    // The thread enters the node's namespace: the API server, the
    // controller-manager and the runtime live there.
    let Some(Cluster { net, api, kcm, rt }) = suite::start("flow") else { return };
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
        // No meshed workload yet: the live probe says why it did not run.
        assert!(out.contains("– live probe: skipped"), "{out}");
        let views = node.pods();
        let control = views.values().find(|v| v.namespace == "mesh-system").expect("the control plane ran on the node");
        let pid = control.pids["mesh-control"];
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert!(status.lines().any(|l| l == "Uid:\t2103\t2103\t2103\t2103"), "the control plane's UID:\n{status}");

        // 3. The demo app in an injected namespace: traffic flows, only TLS
        // between pods on the bridge, an unmeshed client denied.
        apply_demo(&client).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "demo");
        let all_ready = until(Duration::from_secs(120), || async {
            let list = pods.list(&ListParams::default()).await.ok()?.items;
            (list.len() == 6 && list.iter().all(ready)).then_some(list)
        })
        .await;
        let Some(demo) = all_ready else {
            let list = pods.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
            let states: Vec<_> = list.iter().map(|p| (p.metadata.name.clone(), p.status.clone())).collect();
            let logs: Vec<String> = list
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .map(|n| {
                    let (init, proxy) = (node.container_log(&n, "mesh-init"), node.container_log(&n, "mesh-proxy"));
                    format!("{n}:\n init: {init}\n proxy: {}", &proxy[proxy.len().saturating_sub(1500)..])
                })
                .collect();
            let states: Vec<_> = states
                .into_iter()
                .map(|(n, s)| {
                    let s = s.unwrap_or_default();
                    let all = s
                        .init_container_statuses
                        .into_iter()
                        .flatten()
                        .chain(s.container_statuses.into_iter().flatten());
                    (n, all.map(|c| (c.name, c.ready, c.state)).collect::<Vec<_>>())
                })
                .collect();
            panic!("the demo's 6 pods never Ready: {states:?}\nlogs:\n{}", logs.join("\n"));
        };
        for p in &demo {
            let inits = p.spec.as_ref().and_then(|s| s.init_containers.clone()).unwrap_or_default();
            assert!(inits.iter().any(|c| c.name == "mesh-proxy"), "{:?} not injected", p.metadata.name);
        }
        let books_ips: Vec<String> = demo
            .iter()
            .filter(|p| p.metadata.name.as_deref().is_some_and(|n| n.starts_with("books-")))
            .map(ip)
            .collect();
        let capture = Capture::start(&scratch.path().join("bridge.pcap"));
        // From a meshed client pod: web answers, and through web (as
        // ServiceAccount web) books and authors answer.
        let outside = unmeshed_pod(&client, &node).await;
        let meshed = client_pod(&client, &node, "demo").await;
        let web = "http://web.demo.svc.cluster.local:8080/";
        // The Services' endpoints are published a moment after the pods are Ready.
        let first = until(Duration::from_secs(30), || async { (curl(&meshed, web).0 == "200").then_some(()) }).await;
        assert!(first.is_some(), "web never answered: {:?}", curl(&meshed, web));
        let mut answered = 0;
        for _ in 0..10 {
            let (code, body) = curl(&meshed, web);
            if code == "200" && body.contains("books") && body.contains("authors") {
                answered += 1;
            }
        }
        assert_eq!(answered, 10, "web → books, authors: {:?}", curl(&meshed, web));
        // Straight to books: no identity, and books admits only web.
        let (code, body) = curl(&outside, "http://books.demo.svc.cluster.local:7001/");
        assert!(code != "200" && !body.contains("books"), "an unmeshed client reached books: {code} {body}");
        let cap = capture.stop();
        let outside_ip = node.pods().into_values().find(|v| v.namespace == "outside").map(|v| v.ip).unwrap_or_default();
        let (tls_to_books, plaintext) = pod_to_pod(&cap, &books_ips, &outside_ip);
        assert!(plaintext.is_empty(), "plaintext between pods on the bridge: {plaintext:#?}");
        assert!(
            tls_to_books >= 1,
            "no TLS application data to books {books_ips:?} on the bridge; web said {:?}; streams: {:?}",
            curl(&meshed, web),
            pcap::streams(&cap).keys().collect::<Vec<_>>()
        );

        check_live_probe(&kubeconfig, &demo).await;

        // 4. Scaling a Deployment down under load fails no request.
        scale_down_under_load(&client, &node, &meshed).await;

        // 5. Uninstall leaves nothing with the install's label, and no CRD.
        let (ok, _, err) = meshctl(&kubeconfig, &["uninstall"]).await;
        assert!(!ok && err.contains("--force"), "uninstall must refuse while the demo runs: {err}");
        for ns in ["demo", "outside"] {
            Api::<Namespace>::all(client.clone()).delete(ns, &Default::default()).await.expect("deleting");
        }
        let drained = until(Duration::from_secs(90), || async {
            let left = Api::<Pod>::all(client.clone()).list(&ListParams::default()).await.ok()?.items;
            left.iter().all(|p| p.metadata.namespace.as_deref() == Some("mesh-system")).then_some(())
        })
        .await;
        assert!(drained.is_some(), "the demo's pods never went");
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
