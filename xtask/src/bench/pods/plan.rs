//! The pods topology as data (pure, unit-tested): namespace names, the
//! addresses, the `ip` commands that wire the namespaces, `mesh-proxy init`
//! as the injector runs it, the transparent proxies' command lines, and the
//! verdict on whether a run's traffic went through the proxies.

use std::net::Ipv4Addr;

/// Every namespace of a bench run starts with this, then xtask's PID.
pub const PREFIX: &str = "xbench";
/// The UID the proxies run as (and `mesh-proxy init` exempts), as injected.
pub const PROXY_UID: u32 = 2102;
/// The injector's ports: inbound, transparent outbound, admin.
pub const INJECTED_PORTS: ProxyPorts = ProxyPorts { inbound: 4143, outbound: 4140, admin: 4191 };
/// The bridge in the node namespace.
const BRIDGE: &str = "br0";
/// The pods' /24; each run's namespaces are isolated, so every run uses it.
const SUBNET: [u8; 3] = [10, 79, 0];
/// The control plane's gRPC port, in the node namespace.
pub const CONTROL_PORT: u16 = 8086;

/// The server pod's app ports: nginx HTTP/1.1, nginx h2c, the gRPC test app.
pub const APP_HTTP1: u16 = 8080;
/// nginx's h2c (prior knowledge) port in the server pod.
pub const APP_HTTP2: u16 = 8081;
/// The gRPC test app's port in the server pod.
pub const APP_GRPC: u16 = 8082;

/// A proxy's ports in its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyPorts {
    /// Where init redirects inbound connections.
    pub inbound: u16,
    /// Where init redirects outbound connections.
    pub outbound: u16,
    /// Its admin server (never redirected).
    pub admin: u16,
}

impl ProxyPorts {
    /// The ports of the `i`th mesh in the pods: the injector's for the
    /// first, shifted by 100 per mesh after it (two meshes' proxies share
    /// the pods when --compare-tls measures both).
    pub fn of_mesh(i: usize) -> Self {
        let shift = u16::try_from(i).unwrap_or(0).saturating_mul(100);
        let p = INJECTED_PORTS;
        Self { inbound: p.inbound + shift, outbound: p.outbound + shift, admin: p.admin + shift }
    }
}

/// The names and addresses of one run's namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The node: the bridge and the control plane.
    pub node: String,
    /// The client pod: the load generator and its proxy.
    pub client: String,
    /// The server pod: nginx (and the gRPC app) and its proxy.
    pub server: String,
}

impl Names {
    /// Names unique to process `pid` and its `n`th set of pods: two
    /// benches (or tables) never share a namespace.
    pub fn new(pid: u32, n: usize) -> Self {
        let ns = |role: &str| format!("{PREFIX}-{pid}-{n}-{role}");
        Self { node: ns("node"), client: ns("client"), server: ns("server") }
    }

    /// Every namespace, in creation order.
    pub fn all(&self) -> [&str; 3] {
        [&self.node, &self.client, &self.server]
    }
}

/// The bridge's address: the pods' gateway, where the control plane listens.
pub fn node_ip() -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 1)
}

/// The client pod's address.
pub fn client_ip() -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 10)
}

/// The server pod's address.
pub fn server_ip() -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 11)
}

/// The `ip` commands (argv without the leading `ip`) that make the
/// namespaces: the node with a bridge, and each pod with `eth0`, one end of
/// a veth pair whose other end is on the bridge, an address and a default
/// route. Nothing is added to the root namespace.
pub fn setup(names: &Names) -> Vec<Vec<String>> {
    let mut cmds: Vec<Vec<String>> = Vec::new();
    let mut cmd = |words: &[&str]| cmds.push(words.iter().map(|w| w.to_string()).collect());
    let node = names.node.as_str();
    let gw = node_ip().to_string();
    cmd(&["netns", "add", node]);
    cmd(&["-n", node, "link", "set", "lo", "up"]);
    cmd(&["-n", node, "link", "add", BRIDGE, "type", "bridge"]);
    cmd(&["-n", node, "addr", "add", &format!("{gw}/24"), "dev", BRIDGE]);
    cmd(&["-n", node, "link", "set", BRIDGE, "up"]);
    for (pod, ip, veth) in [(&names.client, client_ip(), "vclient"), (&names.server, server_ip(), "vserver")] {
        let pod = pod.as_str();
        cmd(&["netns", "add", pod]);
        cmd(&["-n", pod, "link", "set", "lo", "up"]);
        cmd(&["-n", node, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", pod]);
        cmd(&["-n", node, "link", "set", veth, "master", BRIDGE, "up"]);
        cmd(&["-n", pod, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        cmd(&["-n", pod, "link", "set", "eth0", "up"]);
        cmd(&["-n", pod, "route", "add", "default", "via", &gw]);
    }
    cmds
}

/// `mesh-proxy init` as the injector's init container runs it (the proxy
/// UID and the three ports), or with `--cleanup` the removal of what it
/// installed. The arguments after the binary.
pub fn init_args(ports: ProxyPorts, cleanup: bool) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "init".into(),
        "--proxy-uid".into(),
        PROXY_UID.to_string(),
        "--inbound-port".into(),
        ports.inbound.to_string(),
        "--outbound-port".into(),
        ports.outbound.to_string(),
        "--admin-port".into(),
        ports.admin.to_string(),
    ];
    if cleanup {
        a.push("--cleanup".into());
    }
    a
}

/// The wrapper that runs a pod's proxy as [`PROXY_UID`] (the UID init's
/// rules exempt), keeping the parent-death signal a UID change clears.
pub fn as_proxy_user() -> Vec<String> {
    let uid = PROXY_UID.to_string();
    ["setpriv", "--pdeathsig", "keep", "--reuid", &uid, "--regid", &uid, "--clear-groups"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// A transparent proxy's own arguments (after the shared ones: workload,
/// control plane, identity, threads): what the injector sets through the
/// environment, with `ports`.
pub fn transparent_args(ports: ProxyPorts) -> Vec<String> {
    vec![
        "--transparent".into(),
        "--inbound-addr".into(),
        format!("0.0.0.0:{}", ports.inbound),
        "--outbound-addr".into(),
        format!("127.0.0.1:{}", ports.outbound),
    ]
}

/// A mesh path's request counters over one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// Requests the load generator completed.
    pub ok: u64,
    /// Requests the client pod's proxy served outbound.
    pub client_outbound: u64,
    /// Requests the server pod's proxy served inbound.
    pub server_inbound: u64,
}

/// `None` when both proxies served (nearly: 1 % slack for requests cut at
/// the end of a run) every request the load generator completed; else what
/// bypassed which proxy. Traffic to the server pod's IP that misses a proxy
/// means the iptables interception is not in place.
pub fn bypassed(s: Served) -> Option<String> {
    let floor = s.ok - s.ok / 100;
    let mut missed = Vec::new();
    if s.client_outbound < floor {
        missed.push(format!("the client pod's proxy served {} outbound", s.client_outbound));
    }
    if s.server_inbound < floor {
        missed.push(format!("the server pod's proxy served {} inbound", s.server_inbound));
    }
    (!missed.is_empty()).then(|| {
        format!(
            "the load generator completed {} requests to the server pod but {}: traffic bypassed the proxies \
             (the pods' iptables rules did not intercept it)",
            s.ok,
            missed.join(" and ")
        )
    })
}

/// Namespaces in `ip netns list` output left by bench runs whose process
/// is gone (`alive` says whether a PID runs): to delete before a run.
pub fn stale(list: &str, alive: impl Fn(u32) -> bool) -> Vec<String> {
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| {
            let pid = ns.strip_prefix(PREFIX).and_then(|r| r.strip_prefix('-')).and_then(|r| r.split('-').next());
            pid.and_then(|p| p.parse::<u32>().ok()).is_some_and(|pid| !alive(pid))
        })
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches two runs (or two tables of a run) sharing a namespace name.
    #[test]
    fn names_are_unique_per_process_and_set() {
        let a = Names::new(42, 0);
        assert_eq!(a.all(), ["xbench-42-0-node", "xbench-42-0-client", "xbench-42-0-server"]);
        let b = Names::new(42, 1);
        let c = Names::new(43, 0);
        for other in [&b, &c] {
            assert!(a.all().iter().all(|n| !other.all().contains(n)), "{a:?} {other:?}");
        }
    }

    /// Catches a pod without a default route (the proxy could not reach the
    /// control plane), a veth end left in the root namespace (no `-n`), or
    /// a pod whose interface is not on the bridge.
    #[test]
    fn setup_wires_each_pod_to_the_bridge_without_touching_the_root() {
        let names = Names::new(7, 0);
        let cmds = setup(&names);
        let join: Vec<String> = cmds.iter().map(|c| c.join(" ")).collect();
        for c in &cmds {
            assert!(c[0] == "-n" || (c[0] == "netns" && c[1] == "add"), "runs in the root namespace: {c:?}");
        }
        assert_eq!(cmds.iter().filter(|c| c[..2] == ["netns", "add"]).count(), 3);
        for (pod, ip, veth) in [("client", "10.79.0.10", "vclient"), ("server", "10.79.0.11", "vserver")] {
            let ns = format!("xbench-7-0-{pod}");
            assert!(
                join.contains(&format!("-n xbench-7-0-node link add {veth} type veth peer name eth0 netns {ns}")),
                "{join:#?}"
            );
            assert!(join.contains(&format!("-n xbench-7-0-node link set {veth} master br0 up")), "{join:#?}");
            assert!(join.contains(&format!("-n {ns} addr add {ip}/24 dev eth0")), "{join:#?}");
            assert!(join.contains(&format!("-n {ns} route add default via 10.79.0.1")), "{join:#?}");
        }
        // A namespace exists before anything is done in it.
        let pos = |s: &str| join.iter().position(|c| c == s).unwrap_or(usize::MAX);
        assert!(pos("netns add xbench-7-0-server") < pos("-n xbench-7-0-server link set lo up"));
    }

    /// Catches init run otherwise than the injector runs it (another UID
    /// or port), or a cleanup that would install instead of remove.
    #[test]
    fn init_as_injected() {
        let a = init_args(INJECTED_PORTS, false).join(" ");
        assert_eq!(a, "init --proxy-uid 2102 --inbound-port 4143 --outbound-port 4140 --admin-port 4191");
        assert!(init_args(INJECTED_PORTS, true).join(" ").ends_with(" --admin-port 4191 --cleanup"));
        let second = ProxyPorts::of_mesh(1);
        assert_eq!(second, ProxyPorts { inbound: 4243, outbound: 4240, admin: 4291 });
        assert_eq!(ProxyPorts::of_mesh(0), INJECTED_PORTS);
        let t = transparent_args(second).join(" ");
        assert_eq!(t, "--transparent --inbound-addr 0.0.0.0:4243 --outbound-addr 127.0.0.1:4240");
        assert!(as_proxy_user().join(" ").contains("--pdeathsig keep --reuid 2102 --regid 2102"));
    }

    /// Catches a bench that reports traffic which bypassed a proxy as
    /// measured through the mesh (the interception check that can fail).
    #[test]
    fn traffic_that_missed_a_proxy_is_flagged() {
        let served = |c, s| Served { ok: 1000, client_outbound: c, server_inbound: s };
        assert_eq!(bypassed(served(1000, 1000)), None);
        assert_eq!(bypassed(served(1003, 995)), None, "1 % slack for requests cut at the end");
        let both = bypassed(served(0, 0)).expect("nothing intercepted");
        assert!(both.contains("client pod's proxy served 0") && both.contains("server pod's proxy served 0"), "{both}");
        let inbound = bypassed(served(1000, 10)).expect("inbound not intercepted");
        assert!(
            inbound.contains("server pod's proxy served 10 inbound") && !inbound.contains("client pod"),
            "{inbound}"
        );
        assert_eq!(bypassed(Served { ok: 0, client_outbound: 0, server_inbound: 0 }), None);
    }

    /// Catches deleting a live run's namespaces (or another tool's), or
    /// leaving a dead run's behind.
    #[test]
    fn stale_namespaces_are_those_of_dead_runs() {
        let list = "xbench-100-0-node (id: 3)\nxbench-200-1-client\nme2e-100-0-br\nxbench-x-node\nother\n";
        assert_eq!(stale(list, |pid| pid == 200), vec!["xbench-100-0-node"]);
        assert!(stale(list, |_| true).is_empty());
    }
}
