//! Step 4 of the flow: `web` scaled down under a steady load, watched
//! through the client proxy's admin port.

use crate::node::Node;
use crate::node::netns::netns_list;
use crate::node::suite::{ip, ready, until};
use mesh_kube::api::k8s_openapi::api::apps::v1::Deployment;
use mesh_kube::api::k8s_openapi::api::core::v1::Pod;
use mesh_kube::api::{Api, Client, ListParams};
use std::path::Path;
use std::time::{Duration, Instant};

/// The client proxy's view of Service `service` in `demo` (`GET /config`
/// on its admin port, from the node): address → weight of each endpoint.
pub async fn proxy_endpoints(pod_ip: &str, service: &str) -> Option<std::collections::BTreeMap<String, u64>> {
    let config: serde_json::Value = serde_json::from_str(&proxy_admin(pod_ip, "/config").await?).ok()?;
    let t = config["targets"]
        .as_array()?
        .iter()
        .find(|t| t["service"]["name"] == service && t["service"]["namespace"] == "demo")?;
    let eps = t["endpoints"].as_array()?.iter();
    Some(eps.filter_map(|e| Some((e["address"].as_str()?.to_string(), e["weight"].as_u64()?))).collect())
}

/// `GET PATH` from a pod's proxy (its admin port, from the node): the body.
pub async fn proxy_admin(pod_ip: &str, path: &str) -> Option<String> {
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
pub struct LoadChild {
    child: std::process::Child,
    progress: std::sync::Arc<std::sync::Mutex<(u64, u64)>>,
}

impl LoadChild {
    /// Starts `test_app http-load` on `url` in network namespace `netns`.
    pub fn start(test_app: &Path, netns: &str, url: &str) -> Self {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(test_app)
            .args(["http-load", "--url", url])
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
    pub fn progress(&self) -> (u64, u64) {
        *self.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until `n` more requests succeeded than now.
    pub async fn flows(&self, n: u64, what: &str) {
        let from = self.progress().0;
        let flowed = until(Duration::from_secs(60), || async { (self.progress().0 >= from + n).then_some(()) }).await;
        assert!(flowed.is_some(), "the load stopped flowing {what}: {:?}", self.progress());
    }

    /// SIGTERM, then its final outcome (JSON).
    pub fn stop(mut self) -> serde_json::Value {
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

/// Sets `deployment`'s replicas in `demo`.
pub async fn scale(client: &Client, deployment: &str, replicas: i32) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), "demo");
    let patch = serde_json::json!({"spec": {"replicas": replicas}});
    let pp = mesh_kube::api::PatchParams::default();
    api.patch(deployment, &pp, &mesh_kube::api::Patch::Merge(&patch)).await.expect("scaling");
}

/// The `web` pods the API server has, by name: (IP, Ready).
pub async fn web_pods(client: &Client) -> Option<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "demo");
    let list = pods.list(&ListParams::default().labels("app=web")).await.ok()?.items;
    Some(list)
}

/// Step 4: `web` scaled to 3 replicas; with a steady load from the meshed
/// client pod `meshed` (`test_app http-load`, the suite's `mesh-test-app`: every failed attempt
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
pub async fn scale_down_under_load(client: &Client, node: &Node, meshed: &str, test_app: &Path) {
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
    let load = LoadChild::start(test_app, meshed, url);
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
