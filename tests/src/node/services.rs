//! What kube-proxy and cluster DNS do for a real node, minimally: every
//! Service's ClusterIP and port DNAT-ed (in the node's namespace) to its
//! ready endpoints, and the Services' names in each pod's `/etc/hosts`.
//!
//! The rules and the hosts file are pure functions of the Services and
//! EndpointSlices ([`nat_rules`], [`hosts`]); [`run`] reads them every
//! second and applies what changed. Pods' traffic to a ClusterIP goes
//! through the node (their default route), where PREROUTING sees it; the
//! node's own through OUTPUT. DNAT-ed traffic is masqueraded to the node's
//! IP so that a pod calling a Service served on the same bridge gets its
//! answer back through the node (no `br_netfilter` here).
//!
//! `/etc/hosts` reaches a pod's containers through `ip netns exec`, which
//! bind-mounts `/etc/netns/<pod ns>/hosts` over `/etc/hosts`: a symlink to
//! the node's one file, rewritten in place.
//!
//! The `kubernetes` Service: the API server here advertises 127.0.0.1
//! (which no EndpointSlice may hold), so its ClusterIP goes to the address
//! given to [`super::Node::serve_kubernetes_service`], with `route_localnet`
//! on the bridge so pods may be DNAT-ed to the node's loopback.

use super::Ctx;
use mesh_kube::api::k8s_openapi::api::core::v1::Service;
use mesh_kube::api::k8s_openapi::api::discovery::v1::EndpointSlice;
use mesh_kube::api::{Api, ListParams};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The node's chain in the nat table.
const CHAIN: &str = "KNODE-SERVICES";

/// One Service port with where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The ClusterIP.
    pub vip: String,
    /// The Service's port.
    pub port: u16,
    /// Ready endpoints (`ip:port`).
    pub endpoints: Vec<String>,
}

/// Service ports with their ready endpoints, from the API objects; the
/// `kubernetes` Service goes to `api` when given.
pub fn service_ports(services: &[Service], slices: &[EndpointSlice], api: Option<SocketAddr>) -> Vec<ServicePort> {
    let mut out = Vec::new();
    for s in services {
        let (Some(name), Some(ns)) = (&s.metadata.name, &s.metadata.namespace) else { continue };
        let Some(spec) = &s.spec else { continue };
        let Some(vip) = spec.cluster_ip.clone().filter(|ip| ip != "None" && !ip.is_empty()) else { continue };
        for p in spec.ports.iter().flatten() {
            if p.protocol.as_deref().is_some_and(|p| p != "TCP") {
                continue;
            }
            let Ok(port) = u16::try_from(p.port) else { continue };
            let endpoints: Vec<String> = if ns == "default" && name == "kubernetes" {
                api.map(|a| a.to_string()).into_iter().collect()
            } else {
                slices
                    .iter()
                    .filter(|sl| {
                        sl.metadata.namespace.as_ref() == Some(ns)
                            && sl.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name"))
                                == Some(name)
                            && sl.address_type == "IPv4"
                    })
                    .flat_map(|sl| {
                        let target = sl
                            .ports
                            .iter()
                            .flatten()
                            .find(|sp| sp.name == p.name)
                            .and_then(|sp| sp.port)
                            .and_then(|n| u16::try_from(n).ok());
                        sl.endpoints
                            .iter()
                            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
                            .flat_map(move |e| e.addresses.iter().map(move |a| (a.clone(), target)))
                            .collect::<Vec<_>>()
                    })
                    .filter_map(|(a, t)| t.map(|t| format!("{a}:{t}")))
                    .collect()
            };
            out.push(ServicePort { vip: vip.clone(), port, endpoints });
        }
    }
    out.sort_by(|a, b| (&a.vip, a.port).cmp(&(&b.vip, b.port)));
    out
}

/// `iptables-restore --noflush` input: the node's chain, each Service port
/// spread over its endpoints (probabilities 1/n, 1/(n-1), ... 1); a port
/// without endpoints gets no rule.
pub fn nat_rules(ports: &[ServicePort]) -> String {
    let mut out = format!("*nat\n:{CHAIN} - [0:0]\n");
    for p in ports {
        let head = format!("-A {CHAIN} -d {}/32 -p tcp -m tcp --dport {}", p.vip, p.port);
        let n = p.endpoints.len();
        for (i, ep) in p.endpoints.iter().enumerate() {
            let left = n - i;
            if left > 1 {
                let _ = writeln!(
                    out,
                    "{head} -m statistic --mode random --probability {:.5} -j DNAT --to-destination {ep}",
                    1.0 / left as f64
                );
            } else {
                let _ = writeln!(out, "{head} -j DNAT --to-destination {ep}");
            }
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// `/etc/hosts` for pods: localhost, and each Service's
/// `name.ns.svc[.cluster.local]` at its ClusterIP.
pub fn hosts(services: &[Service]) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    let mut lines: Vec<String> = services
        .iter()
        .filter_map(|s| {
            let vip = s.spec.as_ref()?.cluster_ip.clone().filter(|ip| ip != "None" && !ip.is_empty())?;
            let (name, ns) = (s.metadata.name.as_ref()?, s.metadata.namespace.as_ref()?);
            Some(format!("{vip}\t{name}.{ns}.svc.cluster.local {name}.{ns}.svc {name}.{ns}\n"))
        })
        .collect();
    lines.sort();
    out.extend(lines);
    out
}

/// The node's shared hosts file.
pub(super) fn hosts_path(ctx: &Ctx) -> PathBuf {
    ctx.dir.join("hosts")
}

/// `/etc/netns/<pod ns>`: what `ip netns exec` mounts over `/etc`.
fn etc_dir(pod_ns: &str) -> PathBuf {
    Path::new("/etc/netns").join(pod_ns)
}

/// Gives a pod's containers the node's hosts file.
pub(super) fn attach(ctx: &Ctx, pod_ns: &str) -> anyhow::Result<()> {
    let dir = etc_dir(pod_ns);
    std::fs::create_dir_all(&dir)?;
    let link = dir.join("hosts");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(hosts_path(ctx), link)?;
    Ok(())
}

/// Removes every pod's `/etc/netns` entry of the node `node_ns` (after
/// a panic, say, when no pod worker ran to the end).
pub(super) fn detach_all(node_ns: &str) {
    let prefix = format!("{node_ns}-");
    for e in std::fs::read_dir("/etc/netns").into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Removes what [`attach`] made.
pub(super) fn detach(pod_ns: &str) {
    let _ = std::fs::remove_dir_all(etc_dir(pod_ns));
}

/// Hooks the node's chain into PREROUTING and OUTPUT, masquerades what it
/// DNAT-ed, and lets pods be DNAT-ed to the node's loopback.
pub(super) fn install() -> anyhow::Result<()> {
    use super::netns::sh;
    sh(&["iptables", "-t", "nat", "-N", CHAIN])?;
    sh(&["iptables", "-t", "nat", "-A", "PREROUTING", "-j", CHAIN])?;
    sh(&["iptables", "-t", "nat", "-A", "OUTPUT", "-j", CHAIN])?;
    let masquerade = ["-m", "conntrack", "--ctstate", "DNAT", "!", "-o", "lo", "-j", "MASQUERADE"];
    sh(&[&["iptables", "-t", "nat", "-A", "POSTROUTING"][..], &masquerade[..]].concat())?;
    sh(&["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"])?;
    // A ClusterIP DNAT-ed to another pod is forwarded back onto the bridge.
    sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    Ok(())
}

/// Keeps the rules and the hosts file current (every second).
pub(super) async fn run(ctx: Arc<Ctx>) {
    let services: Api<Service> = Api::all(ctx.client.clone());
    let slices: Api<EndpointSlice> = Api::all(ctx.client.clone());
    let mut applied: (String, String) = Default::default();
    loop {
        let lp = ListParams::default();
        if let (Ok(s), Ok(e)) = (services.list(&lp).await, slices.list(&lp).await) {
            let api = *ctx.api_addr.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let rules = nat_rules(&service_ports(&s.items, &e.items, api));
            let hosts = hosts(&s.items);
            if rules != applied.0 {
                match restore(&rules).await {
                    Ok(()) => applied.0 = rules,
                    Err(e) => tracing::warn!(error = %e, "applying Service rules"),
                }
            }
            if hosts != applied.1 {
                // In place: the bind mounts already made see the new text.
                let path = hosts_path(&ctx);
                match std::fs::write(&path, &hosts) {
                    Ok(()) => applied.1 = hosts,
                    Err(e) => tracing::warn!(error = %e, "writing {}", path.display()),
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn restore(rules: &str) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(rules.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    anyhow::ensure!(out.status.success(), "iptables-restore: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(name: &str, ns: &str, vip: &str) -> Service {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": vip, "ports": [{"name": "http", "port": 80}]}}))
        .unwrap()
    }

    /// Catches a not-ready endpoint receiving traffic, the Service port
    /// sent to the Service's port instead of the endpoint's, the last
    /// endpoint never chosen (a probability left below 1), and the
    /// `kubernetes` Service not sent to the API server.
    #[test]
    fn services_spread_over_ready_endpoints() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "books-x", "namespace": "shop", "labels": {"kubernetes.io/service-name": "books"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.244.0.2"], "conditions": {"ready": true}},
                {"addresses": ["10.244.0.3"], "conditions": {"ready": true}},
                {"addresses": ["10.244.0.4"], "conditions": {"ready": false}}
            ]
        }))
        .unwrap();
        let api = "127.0.0.1:6443".parse().ok();
        let ports = service_ports(
            &[svc("books", "shop", "10.96.0.9"), svc("kubernetes", "default", "10.96.0.1")],
            &[slice],
            api,
        );
        assert_eq!(ports[0].endpoints, ["127.0.0.1:6443"]);
        assert_eq!(ports[1].endpoints, ["10.244.0.2:8080", "10.244.0.3:8080"]);
        let rules = nat_rules(&ports);
        assert!(rules.contains("--probability 0.50000 -j DNAT --to-destination 10.244.0.2:8080"), "{rules}");
        assert!(rules.contains("--dport 80 -j DNAT --to-destination 10.244.0.3:8080\n"), "{rules}");
        assert!(!rules.contains("10.244.0.4"), "{rules}");
        let h = hosts(&[svc("books", "shop", "10.96.0.9")]);
        assert!(h.contains("10.96.0.9\tbooks.shop.svc.cluster.local books.shop.svc books.shop\n"), "{h}");
    }
}
