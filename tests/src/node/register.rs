//! The Node object and its heartbeat: registered Ready with capacity and
//! addresses, then a Lease in `kube-node-lease` renewed every 10 s (the
//! node lifecycle controller marks a node NotReady, and taints it, when its
//! Lease is not renewed within 40 s).

use mesh_kube::api::k8s_openapi::api::coordination::v1::Lease;
use mesh_kube::api::k8s_openapi::api::core::v1::Node;
use mesh_kube::api::k8s_openapi::jiff::Timestamp;
use mesh_kube::api::{Api, Client, Patch, PatchParams};
use serde_json::json;
use std::net::Ipv4Addr;
use std::time::Duration;

/// How often the Lease is renewed.
pub const RENEW: Duration = Duration::from_secs(10);
const FIELD_MANAGER: &str = "mesh-tests-node";

/// The Node's status as a kubelet reports it: Ready, capacity, addresses.
pub fn node_status(name: &str, ip: Ipv4Addr, now: Timestamp) -> serde_json::Value {
    let capacity = json!({"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "20Gi"});
    json!({
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "mesh-tests node agent is posting ready status",
             "lastHeartbeatTime": now.to_string(), "lastTransitionTime": now.to_string()},
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
             "lastHeartbeatTime": now.to_string(), "lastTransitionTime": now.to_string()},
            {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure",
             "lastHeartbeatTime": now.to_string(), "lastTransitionTime": now.to_string()},
            {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID",
             "lastHeartbeatTime": now.to_string(), "lastTransitionTime": now.to_string()},
        ],
        "addresses": [{"type": "InternalIP", "address": ip.to_string()}, {"type": "Hostname", "address": name}],
        "capacity": capacity,
        "allocatable": capacity,
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "mesh-tests",
            "containerRuntimeVersion": "mesh-tests://processes", "kubeletVersion": "v1.37.2",
            "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": std::env::consts::ARCH,
        },
    })
}

/// Creates (or takes over) the Node and reports it Ready.
pub async fn register(client: &Client, name: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
        "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]},
    });
    nodes.patch(name, &pp, &Patch::Apply(&node)).await?;
    let status = json!({"apiVersion": "v1", "kind": "Node", "status": node_status(name, ip, Timestamp::now())});
    nodes.patch_status(name, &pp, &Patch::Apply(&status)).await?;
    renew(client, name).await
}

/// Renews (or creates) the node's Lease.
pub async fn renew(client: &Client, name: &str) -> anyhow::Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
                 "renewTime": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()},
    });
    leases.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&lease)).await?;
    Ok(())
}

/// Renews the Lease every [`RENEW`] until the task is dropped; failures
/// are logged and retried at the next tick.
pub async fn heartbeat(client: Client, name: String) {
    loop {
        tokio::time::sleep(RENEW).await;
        if let Err(e) = renew(&client, &name).await {
            tracing::warn!(node = %name, error = %e, "renewing the node's Lease");
        }
    }
}
