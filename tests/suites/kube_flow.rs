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

use mesh_kube::api::k8s_openapi::api::core::v1::{Namespace, Pod};
use mesh_kube::api::k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use mesh_kube::api::{Api, ListParams};
use mesh_tests::flow::capture::{Capture, pod_to_pod};
use mesh_tests::flow::scale::scale_down_under_load;
use mesh_tests::flow::{
    REGISTRY, VERSION, apply_demo, check_live_probe, client_pod, curl, failed_lines, images, installed, meshctl,
    unmeshed_pod,
};
use mesh_tests::node::suite::{self, Cluster, ip, ready, until};
use mesh_tests::node::{Node, netns::namespaces_left};
use mesh_tests::pcap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

/// The test app the node runs and the load comes from.
const TEST_APP: &str = env!("CARGO_BIN_EXE_mesh-test-app");

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
        let node = Node::start(client.clone(), "node-1", net.clone(), images(scratch.path(), Path::new(TEST_APP)))
            .await
            .expect("the node starts");
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
        scale_down_under_load(&client, &node, &meshed, Path::new(TEST_APP)).await;

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
    let left = namespaces_left(&node_ns);
    assert!(left.is_empty(), "namespaces left: {left:?}");
}
