//! Pods: namespaces wired to the lab's bridge, and their sidecars (the
//! iptables rules of `mesh-proxy init` and the proxy itself).

use super::checks::{destroy_netns, netns_list};
use super::procs::{Output, ProcId, eventually, must, stop};
use super::{ADMIN_PORT, BRIDGE, CONTROL_PORT, INBOUND_PORT, Lab, PROXY_UID, SUBNET, host6};
use mesh_identity::dir::ANCHORS;
use std::collections::BTreeSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

/// One workload's namespace.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Its name in the lab.
    pub name: String,
    /// The namespace.
    pub ns: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
    /// Its IPv6 address on the bridge.
    pub ip6: Ipv6Addr,
    /// With a sidecar: its service account.
    pub service_account: Option<String>,
    /// Its proxy, once started.
    pub proxy: Option<ProcId>,
    /// Its apps.
    pub apps: Vec<ProcId>,
}

impl Lab {
    pub(super) fn add_netns(&mut self, ns: &str) {
        must(&["ip", "netns", "add", ns]);
        self.namespaces.push(ns.to_string());
        self.ip_in(ns, &["link", "set", "lo", "up"]);
    }

    pub(super) fn ip_in(&self, ns: &str, args: &[&str]) {
        let mut argv = vec!["ip", "-n", ns];
        argv.extend_from_slice(args);
        must(&argv);
    }

    /// Makes a pod: a namespace with `eth0` on the bridge, an IPv4 and an
    /// IPv6 address and default routes via the bridge (so that virtual IPs
    /// are routable before the nat OUTPUT redirect). No sidecar yet: see
    /// [`Lab::mesh_pod`].
    pub fn add_pod(&mut self, name: &str) -> Ipv4Addr {
        assert!(!self.pods.contains_key(name), "pod {name} exists");
        let ns = format!("{}-{name}", self.id);
        let ip = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], self.next_host);
        let ip6 = host6(self.next_host);
        self.next_host += 1;
        let veth = format!("veth{}", self.next_veth);
        self.next_veth += 1;
        self.add_netns(&ns);
        let br = self.bridge_ns.clone();
        self.ip_in(&br, &["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        self.ip_in(&br, &["link", "set", &veth, "master", BRIDGE, "up"]);
        self.ip_in(&ns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        self.ip_in(&ns, &["link", "set", "eth0", "up"]);
        self.ip_in(&ns, &["-6", "addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"]);
        self.ip_in(&ns, &["route", "add", "default", "via", &self.gateway().to_string()]);
        self.ip_in(&ns, &["-6", "route", "add", "default", "via", &self.gateway6().to_string()]);
        self.pods.insert(
            name.to_string(),
            Pod { name: name.into(), ns, ip, ip6, service_account: None, proxy: None, apps: Vec::new() },
        );
        ip
    }

    /// A pod by name.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods.get(name).unwrap_or_else(|| panic!("no pod {name}"))
    }

    // ---- sidecars ----

    /// Puts a pod in the mesh as `service_account`: runs `mesh-proxy init`
    /// in its namespace, gives it a join token, starts its proxy as UID
    /// 2102 and waits until the proxy is ready (holds a certificate).
    pub fn mesh_pod(&mut self, pod: &str, service_account: &str) -> ProcId {
        let init = self.init_pod(pod, &[]);
        let both = init.stdout.contains("IPv4: inbound") && init.stdout.contains("IPv6: inbound");
        assert!(init.success() && both, "mesh-proxy init in {pod} failed (IPv4 and IPv6 expected): {init}");
        self.start_proxy(pod, service_account)
    }

    /// Runs `mesh-proxy init --proxy-uid 2102 ARGS` in a pod.
    pub fn init_pod(&self, pod: &str, args: &[&str]) -> Output {
        let proxy = self.proxy_binary();
        let uid = PROXY_UID.to_string();
        let mut argv = vec![proxy.as_str(), "init", "--proxy-uid", &uid];
        argv.extend_from_slice(args);
        self.exec(pod, &argv, Duration::from_secs(30))
    }

    /// Starts a pod's proxy (transparent, with a join token for
    /// `service_account`) as UID 2102 and waits until it is ready.
    pub fn start_proxy(&mut self, pod: &str, service_account: &str) -> ProcId {
        let ns = self.pod(pod).ns.clone();
        let proxy = self.proxy_binary();

        // The proxy's own files, readable by its UID only.
        let pods_dir = self.dir.path().join("pods");
        fs::create_dir_all(&pods_dir).unwrap();
        fs::set_permissions(&pods_dir, fs::Permissions::from_mode(0o711)).unwrap();
        let own = pods_dir.join(pod);
        fs::create_dir_all(&own).unwrap();
        let token = own.join("token");
        let anchors = own.join("trust-anchors.pem");
        self.write_token(&token, service_account);
        fs::copy(self.identity.path().join(ANCHORS), &anchors).unwrap();
        for (p, mode) in [(&own, 0o700), (&token, 0o600), (&anchors, 0o644)] {
            std::os::unix::fs::chown(p, Some(PROXY_UID), Some(PROXY_UID)).unwrap();
            fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
        }

        let cp = self.control_ip.expect("start the control plane before meshing pods");
        let argv: Vec<String> = [
            "setpriv",
            // Changing the UID clears the parent-death signal; keep it.
            "--pdeathsig",
            "keep",
            "--reuid",
            &PROXY_UID.to_string(),
            "--regid",
            &PROXY_UID.to_string(),
            "--clear-groups",
            &proxy,
            "--transparent",
            "--workload",
            pod,
            // Dual-stack (IPv4 peers arrive as IPv4-mapped addresses), as
            // the defaults are; the transparent outbound listeners are the
            // default pair, 127.0.0.1:4140 and [::1]:4140.
            "--inbound-addr",
            &format!("[::]:{INBOUND_PORT}"),
            "--admin-addr",
            &format!("0.0.0.0:{ADMIN_PORT}"),
            "--control-plane",
            &format!("http://{cp}:{CONTROL_PORT}"),
            "--identity-token-file",
            &token.display().to_string(),
            "--trust-anchors",
            &anchors.display().to_string(),
            "--shutdown-grace",
            "1s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let id = self.spawn_ns(&ns, &format!("{pod}-proxy"), argv);
        let p = self.pods.get_mut(pod).unwrap();
        p.proxy = Some(id);
        p.service_account = Some(service_account.into());
        self.wait_proxy_ready(pod);
        // The process itself (setpriv execs it) runs as the proxy's UID,
        // which is what the iptables owner match exempts.
        let pid = self.pid(id).unwrap();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uids: Vec<&str> =
            status.lines().find(|l| l.starts_with("Uid:")).unwrap().split_whitespace().skip(1).collect();
        assert!(uids.iter().all(|u| *u == PROXY_UID.to_string()), "the proxy of {pod} runs as uids {uids:?}");
        id
    }

    /// The `mesh-proxy` binary as a path UID 2102 can execute: the build's
    /// own when every directory above it lets others in, else a copy in the
    /// lab directory (a checkout under a private home, say).
    pub fn proxy_binary(&self) -> String {
        let built = crate::bins::path("mesh-proxy");
        let others_can = |p: &Path, bits: u32| fs::metadata(p).is_ok_and(|m| m.permissions().mode() & bits == bits);
        if others_can(&built, 0o005) && built.ancestors().skip(1).all(|d| others_can(d, 0o001)) {
            return built.display().to_string();
        }
        let copy = self.dir.path().join("mesh-proxy");
        if !copy.exists() {
            fs::copy(&built, &copy).unwrap();
            fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
        }
        copy.display().to_string()
    }

    /// A fresh join token for `service_account` in `file`, readable by the
    /// proxy's UID only.
    fn write_token(&self, file: &std::path::Path, service_account: &str) {
        fs::write(file, self.identity.mint_token("default", service_account, Duration::from_secs(600)).unwrap())
            .unwrap();
        std::os::unix::fs::chown(file, Some(PROXY_UID), Some(PROXY_UID)).unwrap();
        fs::set_permissions(file, fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// Kills the pod's proxy and starts it again with a fresh join token
    /// (a token is accepted once), as an orchestrator would.
    pub fn restart_proxy(&mut self, pod: &str) {
        let id = self.proxy(pod);
        let sa = self.pod(pod).service_account.clone().unwrap_or_else(|| panic!("{pod} has no service account"));
        self.write_token(&self.dir.path().join("pods").join(pod).join("token"), &sa);
        self.restart(id);
    }

    /// The pod's proxy process.
    pub fn proxy(&self, pod: &str) -> ProcId {
        self.pod(pod).proxy.unwrap_or_else(|| panic!("{pod} has no proxy"))
    }

    /// Waits until the pod's proxy reports ready.
    pub fn wait_proxy_ready(&mut self, pod: &str) {
        let id = self.proxy(pod);
        let ok = eventually(Duration::from_secs(15), || {
            assert!(self.exited(id).is_none(), "the proxy of {pod} exited:\n{}", self.logs(id));
            self.admin_get(pod, "/ready").starts_with("ready")
        });
        assert!(ok, "the proxy of {pod} never became ready:\n{}\n{}", self.admin_get(pod, "/config"), self.logs(id));
    }

    /// GETs a path of the pod's proxy admin server (from inside the pod).
    pub fn admin_get(&self, pod: &str, path: &str) -> String {
        self.curl(pod, &["--max-time", "2", &format!("http://127.0.0.1:{ADMIN_PORT}{path}")]).stdout
    }

    /// The endpoint addresses the pod's proxy holds for `target` (`vip:port`).
    pub fn proxy_endpoints(&self, pod: &str, target: &str) -> Option<BTreeSet<String>> {
        let config: serde_json::Value = serde_json::from_str(&self.admin_get(pod, "/config")).ok()?;
        let t = config["targets"].as_array()?.iter().find(|t| t["target"] == target)?;
        Some(t["endpoints"].as_array()?.iter().filter_map(|e| e["address"].as_str().map(str::to_string)).collect())
    }

    /// Waits until the pod's proxy holds exactly `ips` (on `port`) for `target`.
    pub fn wait_proxy_endpoints<A: Into<IpAddr> + Copy>(
        &self,
        pod: &str,
        target: &str,
        ips: &[A],
        port: u16,
        timeout: Duration,
    ) {
        let want: BTreeSet<String> =
            ips.iter().map(|&ip| std::net::SocketAddr::new(ip.into(), port).to_string()).collect();
        let ok = eventually(timeout, || self.proxy_endpoints(pod, target).is_some_and(|have| have == want));
        assert!(ok, "{pod}'s proxy never held {want:?} for {target}; it holds {:?}", self.proxy_endpoints(pod, target));
    }

    /// Sums the pod's proxy metric lines containing every fragment.
    pub fn proxy_metric(&self, pod: &str, parts: &[&str]) -> f64 {
        crate::mesh::metric_sum(&self.admin_get(pod, "/metrics"), parts)
    }

    /// Kills a pod's processes (SIGKILL) and deletes its namespace, and with
    /// it its end of the bridge.
    pub fn delete_pod(&mut self, name: &str) {
        let pod = self.pods.remove(name).unwrap_or_else(|| panic!("no pod {name}"));
        for id in pod.apps.iter().chain(pod.proxy.iter()) {
            stop(&mut self.procs[id.0]);
        }
        destroy_netns(&pod.ns);
        self.namespaces.retain(|n| *n != pod.ns);
        assert!(!netns_list().contains(&pod.ns), "namespace {} still exists", pod.ns);
    }
}
