//! The suite plays the node (`mesh_tests::node`) for a real kube-apiserver
//! and kube-controller-manager: a Deployment and a Service become processes
//! in network namespaces on the node's bridge, Ready through their probes,
//! in the Service's EndpointSlice, answering HTTP from the node; scaling
//! down stops a pod's processes and removes its namespace.
//!
//! Needs root (network namespaces) and the kube harness: skipped without
//! them, a failure when `CI=true`. Everything lives in a network namespace
//! of the node's own (`knode-PID-…`), so the machine's root namespace is
//! untouched (the host e2e suite may run at the same time).

use mesh_kube::api::k8s_openapi::api::apps::v1::Deployment;
use mesh_kube::api::k8s_openapi::api::authentication::v1::TokenReview;
use mesh_kube::api::k8s_openapi::api::core::v1::{ContainerStatus, Node as KubeNode, Pod, PodStatus, Service};
use mesh_kube::api::k8s_openapi::api::discovery::v1::EndpointSlice;
use mesh_kube::api::{Api, Client, ListParams, Patch, PatchParams, PostParams};
use mesh_tests::node::plan::{ImageEntry, Images};
use mesh_tests::node::suite::{self, Cluster, ip, ready, runnable_by_others, until};
use mesh_tests::node::{
    Node,
    netns::{namespaces_left, netns_list},
};
use serde_json::json;
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

const NS: &str = "default";
/// The UID the app runs as (its pod's securityContext).
const APP_UID: u32 = 1000;
/// The audience of the app's projected token.
const AUDIENCE: &str = "mesh-test";

/// Ready addresses of the Service's EndpointSlices.
async fn slice_ips(client: &Client, service: &str) -> BTreeSet<String> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    let list = slices.list(&lp).await.map(|l| l.items).unwrap_or_default();
    list.iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .flat_map(|e| e.addresses.iter().cloned())
        .collect()
}

/// `Uid:` (real, effective) and `CapEff:` of a process.
fn uid_and_caps(pid: u32) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status.lines().find(|l| l.starts_with(name)).map(|l| l[name.len()..].trim().to_string()).unwrap_or_default()
    };
    (field("Uid:"), field("CapEff:"))
}

/// A file as a process sees it (in its mount namespace: `nsenter -m`,
/// since `/var/run` is an absolute symlink that `/proc/PID/root` would not
/// follow inside).
fn in_mount_ns(pid: u32, path: &str) -> String {
    let out = std::process::Command::new("nsenter")
        .args(["--target", &pid.to_string(), "--mount", "cat", path])
        .output()
        .expect("nsenter runs");
    assert!(out.status.success(), "{path} in process {pid}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn web_deployment(replicas: i32) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 5,
                    "securityContext": {"runAsUser": APP_UID, "runAsGroup": APP_UID},
                    "initContainers": [{"name": "check", "image": "mesh.test/mesh-test-app:dev", "args": ["--help"]}],
                    "containers": [{
                        "name": "web",
                        "image": "mesh.test/mesh-test-app:dev",
                        "args": ["http-server", "--listen", "0.0.0.0:8080", "--name", "$(POD_NAME)"],
                        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                        "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 2},
                        "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": "token", "mountPath": "/var/run/mesh-test/identity", "readOnly": true}],
                    }],
                    "volumes": [{"name": "token", "projected": {"sources": [{"serviceAccountToken": {
                        "audience": AUDIENCE, "expirationSeconds": 600, "path": "token"}}]}}],
                },
            },
        },
    })
}

/// GET / on `ip:8080` from the node; the app answers its name.
async fn get(ip: &str) -> String {
    http_get(&format!("http://{ip}:8080/")).await
}

/// The body of a GET from the node (`curl`).
async fn http_get(url: &str) -> String {
    let url = url.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl").args(["-sS", "--max-time", "5", &url]).output()
    })
    .await
    .expect("join")
    .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Catches, in the node agent: pods never bound or never run (no Ready
/// pods), two pods given one IP, a status without podIP or Ready (the
/// EndpointSlice stays empty), `$(POD_NAME)` not expanded (the app answers
/// a literal), the security context ignored (the process runs as root or
/// keeps capabilities), the projected token not minted for the audience
/// and the pod or not mounted where the container looks, and on scale-down
/// a pod whose process survives, whose namespace is left, or whose
/// endpoint stays in the slice; a failing init container not reported as
/// Error (or the app started anyway), an unknown image not reported;
/// `readOnlyRootFilesystem` not enforced (a write to `/` or `/tmp`
/// succeeds), enforced on the volumes too (the emptyDir refuses), or on
/// containers without it, and a `readOnly` volumeMount left writable.
#[test]
fn a_deployment_runs_on_the_node_and_scales_down_cleanly() {
    // The thread enters the node's namespace: the API server, the
    // controller-manager and the runtime live there.
    let Some(Cluster { net, api, kcm, rt }) = suite::start("deploy") else { return };
    let node_ns = net.name().to_string();
    rt.block_on(async {
        let client = mesh_kube::client::connect(Some(&api.kubeconfig), None).await.expect("a client");
        let scratch = tempfile::tempdir().expect("a directory");
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let app = runnable_by_others(Path::new(env!("CARGO_BIN_EXE_mesh-test-app")), scratch.path());
        let mut images = Images::new();
        images.insert("mesh-test-app".into(), ImageEntry { binary: app, user: (0, 0) });
        let node = Node::start(client.clone(), "node-1", net.clone(), images).await.expect("the node starts");

        let nodes: Api<KubeNode> = Api::all(client.clone());
        let n = nodes.get("node-1").await.expect("the Node");
        let conds = n.status.and_then(|s| s.conditions).unwrap_or_default();
        assert!(conds.iter().any(|c| c.type_ == "Ready" && c.status == "True"), "{conds:?}");

        let services: Api<Service> = Api::namespaced(client.clone(), NS);
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}});
        services.create(&PostParams::default(), &serde_json::from_value(svc).unwrap()).await.expect("the Service");
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
        deployments
            .create(&PostParams::default(), &serde_json::from_value(web_deployment(2)).unwrap())
            .await
            .expect("the Deployment");

        let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
        let lp = ListParams::default().labels("app=web");
        let running = until(Duration::from_secs(90), || async {
            let list = pods.list(&lp).await.ok()?.items;
            (list.len() == 2 && list.iter().all(ready)).then_some(list)
        })
        .await;
        let Some(running) = running else {
            let statuses: Vec<_> = pods
                .list(&lp)
                .await
                .map(|l| l.items)
                .unwrap_or_default()
                .into_iter()
                .map(|p| (p.metadata.name, p.spec.and_then(|s| s.node_name), p.status))
                .collect();
            panic!(
                "two Ready pods expected; pods: {statuses:#?}\nnode: {:#?}\ncontroller-manager:\n{}",
                node.pods(),
                kcm.log_tail(30)
            );
        };
        let ips: BTreeSet<String> = running.iter().map(ip).collect();
        assert_eq!(ips.len(), 2, "distinct IPs: {ips:?}");
        assert!(ips.iter().all(|ip| ip.starts_with("10.244.0.")), "{ips:?}");
        for p in &running {
            let s = p.status.as_ref().unwrap();
            assert_eq!(s.phase.as_deref(), Some("Running"));
            assert_eq!(s.host_ip.as_deref(), Some("10.244.0.1"));
            let init = &s.init_container_statuses.as_ref().unwrap()[0];
            assert_eq!(init.state.as_ref().and_then(|s| s.terminated.as_ref()).map(|t| t.exit_code), Some(0));
        }

        // The processes: in their pod's namespace, as UID 1000, no capabilities.
        let views = node.pods();
        for p in &running {
            let uid = p.metadata.uid.clone().unwrap();
            let view = &views[&uid];
            let pid = view.pids["web"];
            assert_eq!(
                uid_and_caps(pid),
                (format!("{APP_UID}\t{APP_UID}\t{APP_UID}\t{APP_UID}"), "0000000000000000".into())
            );
            let netns = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
            let want = std::fs::metadata(format!("/run/netns/{}", view.netns)).unwrap();
            use std::os::unix::fs::MetadataExt as _;
            assert_eq!(
                netns.display().to_string(),
                format!("net:[{}]", want.ino()),
                "{} in its pod's namespace",
                p.metadata.name.as_deref().unwrap()
            );
            // The token as the container sees it (its own mount namespace):
            // minted for the audience, bound to this pod.
            let token = in_mount_ns(pid, "/var/run/mesh-test/identity/token");
            assert!(!Path::new("/var/run/mesh-test/identity/token").exists(), "mounted in the container only");
            let review: TokenReview =
                serde_json::from_value(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token.trim(), "audiences": [AUDIENCE]}}))
                .unwrap();
            let review = Api::<TokenReview>::all(client.clone())
                .create(&PostParams::default(), &review)
                .await
                .expect("TokenReview");
            let status = review.status.unwrap();
            assert_eq!(status.authenticated, Some(true), "{status:?}");
            let extra = status.user.and_then(|u| u.extra).unwrap_or_default();
            assert_eq!(
                extra.get("authentication.kubernetes.io/pod-name"),
                Some(&vec![p.metadata.name.clone().unwrap()])
            );
        }

        // The Service's EndpointSlice lists both, and both answer from the node.
        let got = until(Duration::from_secs(30), || async {
            let have = slice_ips(&client, "web").await;
            (have == ips).then_some(())
        })
        .await;
        assert!(got.is_some(), "EndpointSlice {:?}, pods {ips:?}", slice_ips(&client, "web").await);
        let mut names = BTreeSet::new();
        for ip in &ips {
            names.insert(get(ip).await);
        }
        let pod_names: BTreeSet<String> = running.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
        assert_eq!(names, pod_names, "each pod answers with its own name");

        // Scale to 1: one pod stops, its namespace goes, the slice follows.
        deployments
            .patch("web", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"replicas": 1}})))
            .await
            .expect("scaling");
        let gone = until(Duration::from_secs(60), || async { node.pods().into_values().find(|v| v.finished) })
            .await
            .unwrap_or_else(|| panic!("no pod stopped: {:#?}", node.pods()));
        for (c, pid) in &gone.pids {
            assert!(!Path::new(&format!("/proc/{pid}")).exists(), "container {c} of {} still runs", gone.name);
        }
        assert!(!netns_list().contains(&gone.netns), "the namespace {} is left", gone.netns);
        let left = until(Duration::from_secs(30), || async {
            let list = pods.list(&lp).await.ok()?.items;
            (list.len() == 1 && !list.iter().any(|p| p.metadata.name.as_deref() == Some(gone.name.as_str())))
                .then_some(list)
        })
        .await
        .expect("the deleted Pod is removed from the API server");
        let want: BTreeSet<String> = left.iter().map(ip).collect();
        let got =
            until(Duration::from_secs(30), || async { (slice_ips(&client, "web").await == want).then_some(()) }).await;
        assert!(got.is_some(), "EndpointSlice {:?}, want {want:?}", slice_ips(&client, "web").await);
        assert_eq!(get(&ip(&left[0])).await, left[0].metadata.name.clone().unwrap());

        // What cannot run says why: an init container exiting 2 (Init:Error,
        // the app never started), an image the node does not know.
        for (name, init_args, image) in
            [("init-fails", "--no-such-flag", "mesh-test-app"), ("no-image", "--help", "nginx:1")]
        {
            let pod = json!({"metadata": {"name": name}, "spec": {"automountServiceAccountToken": false,
                "initContainers": [{"name": "init", "image": "mesh-test-app", "args": [init_args]}],
                "containers": [{"name": "app", "image": image, "args": ["http-server", "--listen", "0.0.0.0:8080"]}]}});
            pods.create(&PostParams::default(), &serde_json::from_value(pod).unwrap()).await.expect("the pod");
        }
        let waiting = |p: &Pod, list: fn(&PodStatus) -> Option<&Vec<ContainerStatus>>| {
            let c = p.status.as_ref().and_then(list).and_then(|l| l.first().cloned())?;
            c.state?.waiting.map(|w| (w.reason.unwrap_or_default(), w.message.unwrap_or_default()))
        };
        let failed = until(Duration::from_secs(30), || async {
            let p = pods.get("init-fails").await.ok()?;
            let init = p.status.as_ref()?.init_container_statuses.as_ref()?.first()?.state.clone()?.terminated?;
            Some((p, init))
        })
        .await
        .expect("the failed init container reported");
        assert_eq!((failed.1.exit_code, failed.1.reason.as_deref()), (2, Some("Error")));
        assert_eq!(failed.0.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Pending"));
        assert_eq!(waiting(&failed.0, |s| s.container_statuses.as_ref()).map(|w| w.0), Some("PodInitializing".into()));
        let view = node.pods().into_values().find(|v| v.name == "init-fails").expect("the node took init-fails");
        assert!(!view.events.iter().any(|e| e == "start app"), "{:?}", view.events);
        let refused = until(Duration::from_secs(30), || async {
            waiting(&pods.get("no-image").await.ok()?, |s| s.container_statuses.as_ref())
                .filter(|w| w.0 == "CreateContainerConfigError")
        })
        .await
        .expect("the unknown image reported");
        assert!(refused.1.contains("\"nginx:1\" is not known to this node"), "{}", refused.1);

        // Filesystems as the security context and mounts say: each container
        // writes where it is told and exits (0 written, 30 read-only).
        let stray = format!("mesh-node-rofs-{}", std::process::id());
        let (tmp_file, root_file) = (format!("/tmp/{stray}"), format!("/{stray}"));
        let writer = |name: &str, files: &[&str], read_only_root: bool, mount: Option<bool>| {
            let mut c = json!({"name": name, "image": "mesh-test-app", "args": ["write-file"],
                "securityContext": {"readOnlyRootFilesystem": read_only_root}});
            c["args"].as_array_mut().unwrap().extend(files.iter().map(|f| json!(f)));
            if let Some(read_only) = mount {
                c["volumeMounts"] = json!([{"name": "scratch", "mountPath": "/scratch", "readOnly": read_only}]);
            }
            c
        };
        let want: [(&str, i32); 5] =
            [("ro-tmp", 30), ("ro-slash", 30), ("ro-emptydir", 0), ("readonly-mount", 30), ("writable", 0)];
        let pod = json!({"metadata": {"name": "filesystems"}, "spec": {"automountServiceAccountToken": false,
        "restartPolicy": "Never", "volumes": [{"name": "scratch", "emptyDir": {}}],
        "containers": [
            writer("ro-tmp", &[&tmp_file], true, Some(false)),
            writer("ro-slash", &[&root_file], true, None),
            writer("ro-emptydir", &["/scratch/a"], true, Some(false)),
            writer("readonly-mount", &["/scratch/b"], false, Some(true)),
            writer("writable", &["/scratch/c", &tmp_file], false, Some(false)),
        ]}});
        pods.create(&PostParams::default(), &serde_json::from_value(pod).unwrap()).await.expect("the pod");
        let exits = until(Duration::from_secs(60), || async {
            let p = pods.get("filesystems").await.ok()?;
            let statuses = p.status?.container_statuses?;
            let exits: Vec<(String, i32)> =
                statuses.into_iter().filter_map(|s| Some((s.name, s.state?.terminated?.exit_code))).collect();
            (exits.len() == want.len()).then_some(exits)
        })
        .await;
        let on_node = std::fs::read_to_string(&tmp_file);
        let _ = std::fs::remove_file(&tmp_file);
        let _ = std::fs::remove_file(&root_file);
        let mut exits = exits.unwrap_or_else(|| panic!("the writers never all exited: {:#?}", node.pods()));
        exits.sort();
        let mut want: Vec<(String, i32)> = want.iter().map(|(n, c)| (n.to_string(), *c)).collect();
        want.sort();
        let logs: Vec<String> = want.iter().map(|(c, _)| node.container_log("filesystems", c)).collect();
        assert_eq!(exits, want, "exit codes (0 written, 30 read-only); logs:\n{}", logs.join("\n"));
        assert!(on_node.is_ok_and(|s| s.starts_with("written")), "the writable container wrote the node's /tmp");

        node.shutdown().await;
    });
    drop(rt);
    drop(kcm);
    drop(api);
    drop(net);
    let left = namespaces_left(&node_ns);
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert!(!Path::new("/var/run/mesh-test").exists(), "the mount point made on the node is left");
}

/// `ip netns exec NS ARGV...`'s stdout.
fn in_netns(ns: &str, argv: &[&str]) -> String {
    let out = std::process::Command::new("ip").args(["netns", "exec", ns]).args(argv).output().expect("ip netns exec");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A pod in a namespace opted into the mesh, run by the node exactly as the
/// API server stored it after the real webhook call.
///
/// Catches, in the node: the init container not run, run without its
/// capabilities or its /run emptyDir (no iptables rules in the pod's
/// namespace), the native sidecar treated as an init container (it would
/// block forever) or the app started before the proxy's startup probe
/// passed; the proxy's projected token not minted with the mesh's audience
/// or not bound to the pod (the control plane refuses it: never ready);
/// the proxy's fixed UID or dropped capabilities not applied, its
/// read-only root filesystem not enforced (mesh-init's is enforced alike:
/// iptables must need nothing outside its /run emptyDir); and on
/// deletion a sidecar stopped before the app. In the mesh: the app's
/// readiness probe not rewritten to the admin port, or the proxy not
/// performing it (the node's plaintext probe is refused by the strict
/// inbound, or answered 503: books never Ready; checked by making the
/// admin port answer 503).
#[test]
fn a_meshed_pod_runs_what_the_injector_wrote() {
    use mesh_control::{Config, Control, IdentityConfig, RegistryConfig, WebhookConfig};
    // The thread enters the node's namespace: the API server, the
    // controller-manager and the runtime live there.
    let Some(Cluster { net, api, kcm, rt }) = suite::start("meshed") else { return };
    let node_ns = net.name().to_string();
    rt.block_on(async {
        let client = mesh_kube::client::connect(Some(&api.kubeconfig), None).await.expect("a client");
        let scratch = tempfile::tempdir().expect("a directory");
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let identity = mesh_identity::dir::IdentityDir::new(scratch.path().join("identity"));
        identity.init("cluster.local", None).expect("identity directory");

        // The mesh's CRDs and the Gateway API routes it reads, as installed.
        let crds = [mesh_kube::crds::mesh_crds(), mesh_kube::gateway::crds_for_tests()].concat();
        mesh_kube::crds::apply(&client, &crds, Duration::from_secs(60)).await.expect("CRDs");

        // The control plane on the node, reachable from pods at the node's IP.
        let grpc_port = std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port();
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let control = Control::start(Config {
            grpc_addr: std::net::SocketAddr::from(([0, 0, 0, 0], grpc_port)),
            admin_addr: loopback,
            registry: RegistryConfig::Kubernetes { kubeconfig: Some(api.kubeconfig.clone()), context: None },
            identity: Some(IdentityConfig::new(identity.path())),
            webhook: Some(WebhookConfig {
                addr: loopback,
                settings: mesh_control::webhook::WebhookSettings {
                    registry: "mesh.test".into(),
                    proxy_version: "dev".into(),
                    mesh_namespace: "mesh-system".into(),
                    control_plane: Some(format!("https://{}:{grpc_port}", net.node_ip())),
                },
            }),
            timeouts: Default::default(),
        })
        .await
        .expect("the control plane starts");
        let anchors = std::fs::read(identity.path().join(mesh_identity::dir::ANCHORS)).expect("anchors");
        mesh_tests::kube_harness::register_injector(
            &client,
            control.webhook_addr().expect("the webhook").port(),
            anchors,
        )
        .await;

        use mesh_kube::api::k8s_openapi::api::core::v1::Namespace;
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": "shop", "labels": {"mesh.dev/inject": "enabled"}}}))
                .unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("the namespace");
        // The API server picks the webhook up asynchronously: wait until a
        // dry-run pod comes back injected.
        let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
        let probe: Pod = serde_json::from_value(json!({"metadata": {"name": "probe"},
            "spec": {"containers": [{"name": "a", "image": "mesh-test-app"}]}}))
        .unwrap();
        let injected = until(Duration::from_secs(30), || async {
            let stored = pods.create(&PostParams { dry_run: true, ..Default::default() }, &probe).await.ok()?;
            stored.spec?.init_containers?.iter().any(|c| c.name == "mesh-proxy").then_some(())
        })
        .await;
        assert!(injected.is_some(), "the API server never called the injector");

        let mut images = Images::new();
        let proxy = runnable_by_others(&mesh_tests::bins::path("mesh-proxy"), scratch.path());
        images.insert("mesh-proxy".into(), ImageEntry { binary: proxy, user: (2102, 2102) });
        let app = runnable_by_others(Path::new(env!("CARGO_BIN_EXE_mesh-test-app")), scratch.path());
        images.insert("mesh-test-app".into(), ImageEntry { binary: app, user: (0, 0) });
        let node = Node::start(client.clone(), "node-1", net.clone(), images).await.expect("the node starts");

        let services: Api<Service> = Api::namespaced(client.clone(), "shop");
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "books"},
            "spec": {"selector": {"app": "books"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}});
        let svc =
            services.create(&PostParams::default(), &serde_json::from_value(svc).unwrap()).await.expect("the Service");
        let vip = svc.spec.and_then(|s| s.cluster_ip).expect("a ClusterIP");
        for name in ["books", "client"] {
            let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": name}},
                "spec": {"automountServiceAccountToken": false, "terminationGracePeriodSeconds": 5, "containers": [{
                    "name": name, "image": "mesh.test/mesh-test-app:dev",
                    "args": ["http-server", "--listen", "0.0.0.0:8080", "--name", name],
                    "ports": [{"containerPort": 8080}],
                    // Rewritten by the injector to the proxy's admin port: the
                    // node's plaintext probe would be refused by the strict inbound.
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}}]}}))
            .unwrap();
            pods.create(&PostParams::default(), &pod).await.expect("the pod");
        }
        let init_failed = |p: &Pod| {
            let inits = p.status.as_ref().and_then(|s| s.init_container_statuses.as_ref());
            inits
                .into_iter()
                .flatten()
                .any(|s| s.state.as_ref().and_then(|s| s.terminated.as_ref()).is_some_and(|t| t.exit_code != 0))
        };
        let running = until(Duration::from_secs(90), || async {
            pods.get("books").await.ok().filter(|p| ready(p) || init_failed(p))
        })
        .await;
        let Some(running) = running.filter(ready) else {
            let p = pods.get("books").await.ok().and_then(|p| p.status);
            panic!(
                "books never Ready: {p:#?}\nnode: {:#?}\ninit log:\n{}\nproxy log:\n{}",
                node.pods(),
                node.container_log("books", "mesh-init"),
                node.container_log("books", "mesh-proxy")
            );
        };

        // What ran is what the webhook wrote: the init step, the native sidecar.
        let status = running.status.clone().unwrap();
        let inits = status.init_container_statuses.clone().unwrap_or_default();
        let names: Vec<&str> = inits.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["mesh-init", "mesh-proxy"], "{inits:#?}");
        let init_exit = inits[0].state.as_ref().and_then(|s| s.terminated.as_ref()).map(|t| t.exit_code);
        assert_eq!(init_exit, Some(0), "{}", node.container_log("books", "mesh-init"));
        assert!(inits[1].started == Some(true) && inits[1].ready, "{:?}", inits[1]);

        let view = node.pods().into_values().find(|v| v.name == "books").expect("the node ran books");
        let rules = in_netns(&view.netns, &["iptables-save", "-t", "nat"]);
        assert!(rules.contains("MESH_INBOUND") && rules.contains("MESH_OUTPUT"), "the pod's nat table:\n{rules}");
        assert!(!in_netns(&node_ns, &["iptables-save", "-t", "nat"]).contains("MESH_"), "only in the pod's namespace");
        let proxy_pid = view.pids["mesh-proxy"];
        assert_eq!(uid_and_caps(proxy_pid), ("2102\t2102\t2102\t2102".into(), "0000000000000000".into()));
        // The proxy's root filesystem read-only, as the injector asked (even
        // to root entering its mount namespace), and mesh-init ran to 0 above
        // with only its /run emptyDir writable.
        let touched = std::process::Command::new("nsenter")
            .args(["--target", &proxy_pid.to_string(), "--mount", "touch", "/tmp/mesh-proxy-wrote-here"])
            .output()
            .expect("nsenter runs");
        let _ = std::fs::remove_file("/tmp/mesh-proxy-wrote-here");
        assert!(
            !touched.status.success() && String::from_utf8_lossy(&touched.stderr).contains("Read-only file system"),
            "the proxy's /tmp is writable: {touched:?}"
        );
        let probe = running.spec.as_ref().and_then(|s| s.containers[0].readiness_probe.clone());
        let path = probe.and_then(|p| p.http_get).and_then(|h| h.path);
        assert_eq!(path.as_deref(), Some("/app-health/books/readiness"), "Ready through the admin port");
        let ready_body = http_get(&format!("http://{}:4191/ready", ip(&running))).await;
        assert!(ready_body.starts_with("ready"), "{ready_body:?}");

        // Through the mesh: the client pod's request to the Service's
        // ClusterIP (no kube-proxy here: only the client's proxy knows it)
        // reaches books over mTLS with the client's Kubernetes identity.
        let client_pod = until(Duration::from_secs(60), || async { pods.get("client").await.ok().filter(ready) })
            .await
            .expect("the client pod Ready");
        let client_view = node.pods().into_values().find(|v| v.name == "client").expect("the node ran client");
        let url = format!("http://{vip}/");
        let answer = until(Duration::from_secs(30), || async {
            let out = in_netns(&client_view.netns, &["curl", "-sS", "--max-time", "3", &url]);
            (out == "books").then_some(out)
        })
        .await;
        assert!(answer.is_some(), "client → {url} never reached books");
        let metrics = http_get(&format!("http://{}:4191/metrics", ip(&running))).await;
        let mtls = mesh_tests::mesh::metric_sum(
            &metrics,
            &[
                "response_total",
                "direction=\"inbound\"",
                "tls=\"true\"",
                "peer_id=\"spiffe://cluster.local/ns/shop/sa/default\"",
            ],
        );
        assert!(mtls >= 1.0, "books' proxy saw no mTLS request from the client's identity:\n{metrics}");
        let _ = client_pod;

        // Deleting: the app stops before its sidecar.
        pods.delete("books", &Default::default()).await.expect("deleting");
        let done = until(Duration::from_secs(60), || async {
            node.pods().into_values().find(|v| v.name == "books" && v.finished)
        })
        .await;
        let events = done.expect("books never stopped").events;
        let want = [
            "start mesh-init",
            "exit mesh-init 0",
            "start mesh-proxy",
            "started mesh-proxy",
            "start books",
            "term books",
            "stopped books",
            "term mesh-proxy",
            "stopped mesh-proxy",
        ];
        assert_eq!(events, want, "the order of starts and stops");
        assert!(!netns_list().contains(&view.netns), "the pod's namespace is left");
        node.shutdown().await;
        control.shutdown().await;
    });
    drop(rt);
    drop(kcm);
    drop(api);
    drop(net);
    let left = namespaces_left(&node_ns);
    assert!(left.is_empty(), "namespaces left: {left:?}");
}
