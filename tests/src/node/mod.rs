//! The node the Kubernetes suites play: a minimal, real kubelet.
//!
//! It registers a Node (Ready, capacity, addresses, a Lease renewed every
//! 10 s), binds unscheduled Pods to itself through the Binding API, and
//! runs each Pod bound to it: a network namespace with its own IP on the
//! node's bridge, init containers in order, native sidecars until started,
//! then app containers, each a process of the binary its image names (in
//! the pod's namespace, a mount namespace of its own with its volumes, its
//! environment only, its UID and capabilities), probes from the node into
//! the pod's IP, and the Pod's status reported back. A deleted Pod's
//! containers get SIGTERM (apps, then sidecars in reverse order), SIGKILL
//! after the grace period, its namespace is removed and the Pod deleted.
//!
//! The node's "host" is a network namespace of its own ([`NodeNet`]): the
//! test thread enters it before starting the API server and the runtime,
//! so the machine's root namespace is never changed (the host e2e suite
//! checks exactly that, possibly at the same time).
//!
//! Pods are found by listing: 20 ms after a watch on Pods reports any
//! change (a kubelet hears of a deletion through its watch within
//! milliseconds and SIGTERMs the containers then, racing the EndpointSlice
//! update: the node must not be slower than that, or it would hide the
//! race), and every 250 ms in any case.
//!
//! Not done: image pulls (images map to binaries, [`plan::Images`]), exec
//! and gRPC probes, resource limits, read-only root filesystems (there is
//! no per-container root filesystem), retrying failed init containers,
//! `valueFrom` other than `fieldRef`, hostPath/PVC volumes, token rotation.

mod containers;
pub mod netns;
pub mod plan;
mod pod;
pub mod probes;
mod register;
pub mod services;
pub mod status;
pub mod suite;
mod volumes;

pub use netns::NodeNet;

use mesh_kube::api::k8s_openapi::api::core::v1::Pod;
use mesh_kube::api::{Api, Client, ListParams, PostParams};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// How long the node lets watch events gather before it lists.
const COALESCE: Duration = Duration::from_millis(20);
/// How often the node lists Pods when no watch event came.
const POLL: Duration = Duration::from_millis(250);

/// What the node runs for a pod, for tests to look at from outside.
#[derive(Debug, Clone, Default)]
pub struct PodView {
    /// The Pod's name.
    pub name: String,
    /// The Pod's namespace.
    pub namespace: String,
    /// Its network namespace.
    pub netns: String,
    /// Its IP (empty until its namespace exists).
    pub ip: String,
    /// The PID of each container's latest process.
    pub pids: BTreeMap<String, u32>,
    /// What the node did, in order: `start C`, `started C` (startup
    /// probe passed), `exit C CODE`, `term C` (SIGTERM), `stopped C`.
    pub events: Vec<String>,
    /// The node has stopped everything of it.
    pub finished: bool,
}

/// What pod workers share.
pub(crate) struct Ctx {
    client: Client,
    net: Arc<NodeNet>,
    images: plan::Images,
    dir: PathBuf,
    hosts: Mutex<BTreeSet<u8>>,
    views: Mutex<BTreeMap<String, PodView>>,
    mount_points: Mutex<Vec<PathBuf>>,
    /// Where the `kubernetes` Service's ClusterIP goes.
    api_addr: Mutex<Option<std::net::SocketAddr>>,
}

impl Ctx {
    fn alloc_host(&self) -> Option<u8> {
        let mut used = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        let h = netns::next_host(&used)?;
        used.insert(h);
        Some(h)
    }

    fn free_host(&self, h: u8) {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner).remove(&h);
    }

    fn publish(&self, uid: &str, view: PodView) {
        self.views.lock().unwrap_or_else(PoisonError::into_inner).insert(uid.into(), view);
    }

    fn record_pid(&self, uid: &str, container: &str, pid: u32) {
        if let Some(v) = self.views.lock().unwrap_or_else(PoisonError::into_inner).get_mut(uid) {
            v.pids.insert(container.into(), pid);
        }
    }

    fn event(&self, uid: &str, event: String) {
        if let Some(v) = self.views.lock().unwrap_or_else(PoisonError::into_inner).get_mut(uid) {
            v.events.push(event);
        }
    }

    fn finished(&self, uid: &str) {
        if let Some(v) = self.views.lock().unwrap_or_else(PoisonError::into_inner).get_mut(uid) {
            v.finished = true;
        }
    }

    /// Creates a container mount point on the node (`mkdir -p`),
    /// remembering the directories it made so the node removes them.
    fn mount_point(&self, path: &Path) -> anyhow::Result<()> {
        let missing: Vec<PathBuf> = path.ancestors().take_while(|p| !p.exists()).map(Path::to_path_buf).collect();
        std::fs::create_dir_all(path)?;
        self.mount_points.lock().unwrap_or_else(PoisonError::into_inner).extend(missing);
        Ok(())
    }
}

/// A running node agent; stops (every pod's processes and namespaces) when
/// dropped or [`Node::shutdown`].
pub struct Node {
    name: String,
    ctx: Arc<Ctx>,
    agent: tokio::task::JoinHandle<()>,
    watch: tokio::task::JoinHandle<()>,
    heartbeat: tokio::task::JoinHandle<()>,
    services: tokio::task::JoinHandle<()>,
    workers: Arc<Mutex<BTreeMap<String, Worker>>>,
    _dir: tempfile::TempDir,
}

struct Worker {
    tx: watch::Sender<Pod>,
    task: tokio::task::JoinHandle<()>,
}

impl Node {
    /// Registers Node `name` and starts the agent. `net` must be the
    /// namespace the calling runtime lives in. `images` maps image names to
    /// binaries (see [`plan::Images`]).
    pub async fn start(client: Client, name: &str, net: Arc<NodeNet>, images: plan::Images) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix(&format!("{}-", net.name())).tempdir()?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        std::fs::create_dir_all(dir.path().join("logs"))?;
        register::register(&client, name, net.node_ip()).await?;
        let ctx = Arc::new(Ctx {
            client: client.clone(),
            net,
            images,
            dir: dir.path().to_path_buf(),
            hosts: Mutex::new(BTreeSet::new()),
            views: Mutex::new(BTreeMap::new()),
            mount_points: Mutex::new(Vec::new()),
            api_addr: Mutex::new(None),
        });
        services::install()?;
        std::fs::write(services::hosts_path(&ctx), services::hosts(&[]))?;
        let services = tokio::spawn(services::run(ctx.clone()));
        let workers = Arc::new(Mutex::new(BTreeMap::new()));
        let changed = Arc::new(tokio::sync::Notify::new());
        let watch = tokio::spawn(watch_pods(client.clone(), changed.clone()));
        let agent = tokio::spawn(agent(ctx.clone(), name.to_string(), workers.clone(), changed));
        let heartbeat = tokio::spawn(register::heartbeat(client, name.to_string()));
        Ok(Self { name: name.into(), ctx, agent, watch, heartbeat, services, workers, _dir: dir })
    }

    /// The Node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends the `kubernetes` Service's ClusterIP (what in-cluster clients
    /// dial: `KUBERNETES_SERVICE_HOST`) to the API server at `addr`.
    pub fn serve_kubernetes_service(&self, addr: std::net::SocketAddr) {
        *self.ctx.api_addr.lock().unwrap_or_else(PoisonError::into_inner) = Some(addr);
    }

    /// Every pod the node has run, by Pod UID.
    pub fn pods(&self) -> BTreeMap<String, PodView> {
        self.ctx.views.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A container's log so far.
    pub fn container_log(&self, pod: &str, container: &str) -> String {
        std::fs::read_to_string(self.ctx.dir.join("logs").join(format!("{pod}-{container}.log"))).unwrap_or_default()
    }

    /// Stops the agent, then every pod (SIGTERM, then SIGKILL after 2 s),
    /// removes their namespaces and the mount points it made.
    pub async fn shutdown(self) {
        self.agent.abort();
        self.watch.abort();
        self.heartbeat.abort();
        self.services.abort();
        let workers: Vec<Worker> =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(PoisonError::into_inner)).into_values().collect();
        for w in workers {
            // Dropping the sender ends the worker as for a Pod that is gone.
            drop(w.tx);
            if tokio::time::timeout(Duration::from_secs(10), w.task).await.is_err() {
                tracing::warn!("a pod worker did not stop within 10 s");
            }
        }
    }
}

impl Drop for Node {
    /// Also on a panic: the agent stops, and the mount points it made on
    /// the node go (the processes and namespaces go with [`NodeNet`]).
    fn drop(&mut self) {
        self.agent.abort();
        self.watch.abort();
        self.heartbeat.abort();
        self.services.abort();
        services::detach_all(self.ctx.net.name());
        let mut points = std::mem::take(&mut *self.ctx.mount_points.lock().unwrap_or_else(PoisonError::into_inner));
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            let _ = std::fs::remove_dir(p);
        }
    }
}

/// Wakes the agent whenever a Pod changes (the watcher relists and
/// reconnects on its own).
async fn watch_pods(client: Client, changed: Arc<tokio::sync::Notify>) {
    use futures_util::StreamExt as _;
    use mesh_kube::api::kube::runtime::watcher;
    let events = watcher(Api::<Pod>::all(client), watcher::Config::default());
    let mut events = std::pin::pin!(events);
    while let Some(e) = events.next().await {
        if e.is_ok() {
            changed.notify_one();
        }
    }
}

/// The agent loop: binds unscheduled Pods, starts a worker per Pod bound
/// here, hands each the latest Pod (a deletion timestamp stops it) and
/// drops a worker's sender when its Pod is gone.
async fn agent(
    ctx: Arc<Ctx>,
    node: String,
    workers: Arc<Mutex<BTreeMap<String, Worker>>>,
    changed: Arc<tokio::sync::Notify>,
) {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    loop {
        match pods.list(&ListParams::default()).await {
            Ok(list) => {
                let mut seen = BTreeSet::new();
                for p in list.items {
                    let uid = p.metadata.uid.clone().unwrap_or_default();
                    let spec = p.spec.as_ref();
                    let bound_to = spec.and_then(|s| s.node_name.clone());
                    let ours_to_bind = bound_to.is_none()
                        && p.metadata.deletion_timestamp.is_none()
                        && spec.and_then(|s| s.scheduler_name.as_deref()).is_none_or(|s| s == "default-scheduler");
                    if ours_to_bind {
                        bind(&ctx.client, &p, &node).await;
                        continue;
                    }
                    if bound_to.as_deref() != Some(node.as_str()) {
                        continue;
                    }
                    seen.insert(uid.clone());
                    let mut ws = workers.lock().unwrap_or_else(PoisonError::into_inner);
                    match ws.get(&uid) {
                        Some(w) => {
                            w.tx.send_if_modified(|old| {
                                let changed = old.metadata.resource_version != p.metadata.resource_version;
                                *old = p.clone();
                                changed
                            });
                        }
                        None if ctx.views.lock().unwrap_or_else(PoisonError::into_inner).contains_key(&uid) => {}
                        None => {
                            let (tx, rx) = watch::channel(p);
                            let task = tokio::spawn(pod::run(ctx.clone(), rx));
                            ws.insert(uid, Worker { tx, task });
                        }
                    }
                }
                let mut ws = workers.lock().unwrap_or_else(PoisonError::into_inner);
                ws.retain(|uid, w| seen.contains(uid) && !w.task.is_finished());
            }
            Err(e) => tracing::warn!(error = %e, "listing pods"),
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            // The events of a moment coalesce into one list (a starting pod's
            // status patches come in bursts).
            _ = changed.notified() => tokio::time::sleep(COALESCE).await,
        }
    }
}

/// Binds a Pod to the node (the Binding subresource: what a scheduler does).
async fn bind(client: &Client, pod: &Pod, node: &str) {
    let (Some(name), Some(ns)) = (&pod.metadata.name, &pod.metadata.namespace) else { return };
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    if let Err(e) =
        api.create_subresource::<_, serde_json::Value>("binding", name, &PostParams::default(), &binding).await
    {
        tracing::warn!(pod = %name, error = %e, "binding");
    }
}
