//! What the suites that drive the node share: starting a cluster around
//! it, waiting, reading a Pod's state, and making a binary runnable by a
//! pod's non-root user.

use super::NodeNet;
use crate::kube_harness::{self, ApiServer, ControllerManager};
use mesh_kube::api::k8s_openapi::api::core::v1::Pod;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Polls `f` every 200 ms until it returns `Some` or `timeout` passes.
pub async fn until<T, F: std::future::Future<Output = Option<T>>>(
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
pub fn runnable_by_others(path: &Path, dir: &Path) -> PathBuf {
    let open = |p: &Path, bits: u32| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & bits == bits);
    if open(path, 0o005) && path.ancestors().skip(1).all(|d| open(d, 0o001)) {
        return path.to_path_buf();
    }
    let copy = dir.join(path.file_name().expect("a file name"));
    std::fs::copy(path, &copy).expect("copying the binary");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    copy
}

/// Whether the Pod's status says Ready.
pub fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The Pod's IP (empty before the node reported one).
pub fn ip(p: &Pod) -> String {
    p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default()
}

/// One test's cluster: the node's network namespace (which the calling
/// thread has entered), the API server and controller-manager started
/// inside it, and a runtime for the test's async part. Destructure it in
/// this field order so locals drop in reverse: runtime, controller-manager,
/// API server, then the namespace.
pub struct Cluster {
    /// The node's network namespace.
    pub net: Arc<NodeNet>,
    /// The real kube-apiserver.
    pub api: ApiServer,
    /// kube-controller-manager (EndpointSlices, Deployments, namespaces).
    pub kcm: ControllerManager,
    /// A two-thread runtime created inside the namespace.
    pub rt: tokio::runtime::Runtime,
}

/// Starts a [`Cluster`] whose node namespace is named after `name`, or
/// returns `None` after saying why the suite is skipped (no root, iptables
/// or tools for network namespaces; no Go harness). Under `CI=true` a skip
/// fails, as the skip helpers decide.
pub fn start(name: &str) -> Option<Cluster> {
    if let Some(reason) = crate::netns::unavailable() {
        crate::netns::skipped(&reason);
        return None;
    }
    if kube_harness::availability().is_err() {
        let _ = kube_harness::start_or_skip();
        return None;
    }
    crate::init_logs();
    let net = Arc::new(NodeNet::create(name).expect("the node's namespace"));
    // From here on this thread, the API server, the controller-manager and
    // the runtime live in the node's namespace.
    net.enter().expect("entering the node's namespace");
    let api = ApiServer::start().expect("the API server starts");
    let kcm = api.start_controller_manager().expect("the controller-manager starts");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    Some(Cluster { net, api, kcm, rt })
}
