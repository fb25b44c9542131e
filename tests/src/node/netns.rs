//! The node's network: a namespace of its own that is the node's "host"
//! (the API server, the controller-manager and the agent run in it, so the
//! machine's root namespace is never touched), a bridge in it whose address
//! is the node's IP and every pod's gateway, and one namespace per pod with
//! a veth on the bridge.

use anyhow::{Context as _, bail};
use std::collections::BTreeSet;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::process::{Command, Stdio};

/// Every namespace this module makes starts with this, then the PID.
pub const PREFIX: &str = "knode";
/// The bridge inside the node's namespace.
const BRIDGE: &str = "cbr0";
/// The pods' /24; the bridge (the node) is `.1`.
pub const SUBNET: [u8; 3] = [10, 244, 0];

/// The node's namespace and bridge; pods' namespaces hang off it.
#[derive(Debug)]
pub struct NodeNet {
    ns: String,
}

/// Runs `argv`, failing with its stderr unless it succeeds.
pub(super) fn sh(argv: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", argv.join(" ")))?;
    if !out.status.success() {
        bail!("`{}` failed ({}): {}", argv.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The network namespaces left of the node `node_ns` (its own and its
/// pods', named `{node_ns}-…`): empty once a suite has cleaned up.
pub fn namespaces_left(node_ns: &str) -> Vec<String> {
    let pods = format!("{node_ns}-");
    netns_list().into_iter().filter(|n| n == node_ns || n.starts_with(&pods)).collect()
}

/// The names of every network namespace (`ip netns list`).
pub fn netns_list() -> Vec<String> {
    sh(&["ip", "netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Kills what runs in a namespace and deletes it.
pub fn destroy_netns(ns: &str) {
    for pid in sh(&["ip", "netns", "pids", ns]).unwrap_or_default().split_whitespace() {
        let _ = sh(&["kill", "-KILL", pid]);
    }
    let _ = sh(&["ip", "netns", "del", ns]);
}

/// The lowest free host number (2..=254) on the pods' /24.
pub fn next_host(used: &BTreeSet<u8>) -> Option<u8> {
    (2..=254).find(|h| !used.contains(h))
}

/// Host `n` of the pods' /24.
pub fn host_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], n)
}

/// Namespaces left by a node whose test process is gone.
fn remove_stale() {
    for ns in netns_list() {
        let Some(rest) = ns.strip_prefix(&format!("{PREFIX}-")) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            destroy_netns(&ns);
        }
    }
}

impl NodeNet {
    /// Makes the node's namespace (`knode-PID-NAME`), loopback up, and the
    /// bridge with the node's IP.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        remove_stale();
        let ns = format!("{PREFIX}-{}-{name}", std::process::id());
        sh(&["ip", "netns", "add", &ns])?;
        let net = Self { ns };
        let n = net.ns.as_str();
        sh(&["ip", "-n", n, "link", "set", "lo", "up"])?;
        sh(&["ip", "-n", n, "link", "add", BRIDGE, "type", "bridge"])?;
        sh(&["ip", "-n", n, "addr", "add", &format!("{}/24", net.node_ip()), "dev", BRIDGE])?;
        sh(&["ip", "-n", n, "link", "set", BRIDGE, "up"])?;
        Ok(net)
    }

    /// The node's namespace.
    pub fn name(&self) -> &str {
        &self.ns
    }

    /// The node's IP: the bridge's address, every pod's gateway.
    pub fn node_ip(&self) -> Ipv4Addr {
        host_ip(1)
    }

    /// Moves the calling thread into the node's namespace. Threads and
    /// processes it starts afterwards (a tokio runtime built after this,
    /// the API server) live there too. Other threads are not affected.
    #[allow(unsafe_code)]
    pub fn enter(&self) -> anyhow::Result<()> {
        let path = format!("/run/netns/{}", self.ns);
        let f = File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns(2) on a namespace file we hold open; affects this thread only.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            bail!("setns into {path}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// A pod's namespace name (`<node ns>-<key>`).
    pub fn pod_ns(&self, key: &str) -> String {
        format!("{}-{key}", self.ns)
    }

    /// Makes a pod's namespace: `eth0` on the bridge with `ip`/24, `lo`
    /// up, the default route via the node. `veth` names the node's end.
    pub fn add_pod(&self, pod_ns: &str, ip: Ipv4Addr, veth: &str) -> anyhow::Result<()> {
        let n = self.ns.as_str();
        sh(&["ip", "netns", "add", pod_ns])?;
        let steps: [&[&str]; 7] = [
            &["ip", "-n", pod_ns, "link", "set", "lo", "up"],
            &["ip", "-n", n, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", pod_ns],
            &["ip", "-n", n, "link", "set", veth, "master", BRIDGE, "up"],
            &["ip", "-n", pod_ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            &["ip", "-n", pod_ns, "link", "set", "eth0", "up"],
            &["ip", "-n", pod_ns, "route", "add", "default", "via", &self.node_ip().to_string()],
            &["true"],
        ];
        for step in steps {
            if let Err(e) = sh(step) {
                destroy_netns(pod_ns);
                return Err(e);
            }
        }
        Ok(())
    }
}

impl Drop for NodeNet {
    fn drop(&mut self) {
        for ns in netns_list().into_iter().filter(|n| n.starts_with(&format!("{}-", self.ns))) {
            destroy_netns(&ns);
        }
        destroy_netns(&self.ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches two pods given the same address, or the node's.
    #[test]
    fn hosts_are_allocated_lowest_free_first_and_never_the_gateway() {
        let mut used = BTreeSet::new();
        assert_eq!(next_host(&used), Some(2));
        used.extend([2, 3, 5]);
        assert_eq!(next_host(&used), Some(4));
        let full: BTreeSet<u8> = (2..=254).collect();
        assert_eq!(next_host(&full), None);
        assert_eq!(host_ip(1), Ipv4Addr::new(10, 244, 0, 1));
    }
}
