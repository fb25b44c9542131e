//! Envoy's mTLS pair in the pods, Istio-style: each pod's Envoy runs as UID
//! 1337, whose connections the pod's nat rules exempt; the other TCP
//! connections leaving the pod are redirected to the client Envoy's
//! outbound listener (15001), which sends each to its original destination
//! (`original_dst` listener filter, `ORIGINAL_DST` cluster) over mTLS, and
//! those arriving are redirected to the server Envoy's inbound listener
//! (15006), which terminates mTLS and forwards to the app on loopback.

use super::{Pods, give_to, spawn_in, wait};
use crate::bench::loadgen::Proto;
use crate::bench::peers::Running;
use crate::bench::peers::envoy::{Bootstrap, Certs, Leaf, Side};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;

/// The UID the Envoys run as (Istio's).
pub const ENVOY_UID: u32 = 1337;
/// The client Envoy's outbound listener, where outbound connections are redirected.
pub const OUTBOUND_PORT: u16 = 15001;
/// The server Envoy's inbound listener, where inbound connections are redirected.
pub const INBOUND_PORT: u16 = 15006;
/// Each Envoy's admin port, on loopback.
pub const ADMIN_PORT: u16 = 15000;
/// The chains the rules add to the nat table.
const CHAINS: [&str; 2] = ["XBENCH_ENVOY_INBOUND", "XBENCH_ENVOY_OUTPUT"];

/// The nat rules, as `iptables-restore --noflush` input: inbound TCP to
/// the inbound listener; outbound TCP, except Envoy's own (UID 1337) and
/// loopback, to the outbound listener.
pub fn rules() -> String {
    let [inbound, output] = CHAINS;
    format!(
        "*nat\n:{inbound} - [0:0]\n:{output} - [0:0]\n\
         -A PREROUTING -p tcp -j {inbound}\n\
         -A {inbound} -p tcp -j REDIRECT --to-ports {INBOUND_PORT}\n\
         -A OUTPUT -p tcp -j {output}\n\
         -A {output} -m owner --uid-owner {ENVOY_UID} -j RETURN\n\
         -A {output} -o lo -j RETURN\n\
         -A {output} -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}\n\
         COMMIT\n"
    )
}

/// The `iptables` commands (after `iptables`) that remove exactly [`rules`].
pub fn removal() -> Vec<Vec<String>> {
    let [inbound, output] = CHAINS;
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        words(&["-t", "nat", "-D", "PREROUTING", "-p", "tcp", "-j", inbound]),
        words(&["-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-j", output]),
        words(&["-t", "nat", "-F", inbound]),
        words(&["-t", "nat", "-X", inbound]),
        words(&["-t", "nat", "-F", output]),
        words(&["-t", "nat", "-X", output]),
    ]
}

/// An Envoy's bootstrap for the pods: the loopback pair's, with the client
/// taking redirected connections on 0.0.0.0:15001 and sending each to its
/// original destination, and the server on 0.0.0.0:15006 forwarding to `app`.
pub fn bootstrap(side: Side, proto: Proto, app: SocketAddr, certs: &Certs) -> Value {
    let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
    let admin = SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
    let listen = if side == Side::Client { any(OUTBOUND_PORT) } else { any(INBOUND_PORT) };
    let mut boot = Bootstrap { side, proto, listen, upstream: app, admin, certs }.render();
    let res = &mut boot["static_resources"];
    res["listeners"][0]["listener_filters"] = json!([{
        "name": "envoy.filters.listener.original_dst",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst" },
    }]);
    if side == Side::Client {
        let cluster = &mut res["clusters"][0];
        cluster["type"] = json!("ORIGINAL_DST");
        cluster["lb_policy"] = json!("CLUSTER_PROVIDED");
        if let Some(c) = cluster.as_object_mut() {
            c.remove("load_assignment");
        }
    }
    boot
}

/// Requests an Envoy's HTTP connection manager completed, from its `/stats`.
pub fn requests(stats: &str) -> u64 {
    stats
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(name, _)| *name == "http.entry.downstream_rq_completed")
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

impl Pods {
    /// Starts Envoy's pair in the pods in front of the server pod's `app`
    /// port (on loopback), and waits until both are live.
    pub fn envoy_pair(&self, envoy: &Path, certs: &Certs, proto: Proto, app_port: u16) -> anyhow::Result<Running> {
        let names = self.names();
        let app = SocketAddr::from(([127, 0, 0, 1], app_port));
        let own = |side: &str, leaf: &Leaf| -> anyhow::Result<Leaf> {
            let dir = self.dir.join(format!("envoy-{side}-{}", proto.key()));
            Ok(Leaf {
                chain: give_to(ENVOY_UID, &leaf.chain, &dir, "chain.pem", 0o644)?,
                key: give_to(ENVOY_UID, &leaf.key, &dir, "key.pem", 0o600)?,
            })
        };
        let mut mine = certs.clone();
        mine.client = own("client", &certs.client)?;
        mine.server = own("server", &certs.server)?;
        let anchors_dir = self.dir.join(format!("envoy-anchors-{}", proto.key()));
        mine.anchors = give_to(ENVOY_UID, &certs.anchors, &anchors_dir, "trust-anchors.pem", 0o644)?;
        let uid = ENVOY_UID.to_string();
        let as_envoy: Vec<String> =
            ["setpriv", "--pdeathsig", "keep", "--reuid", &uid, "--regid", &uid, "--clear-groups"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let mut procs = Vec::new();
        for (side, ns) in [(Side::Client, &names.client), (Side::Server, &names.server)] {
            let name = format!("pods-envoy-{}-{}", if side == Side::Client { "client" } else { "server" }, proto.key());
            let conf = self.dir.join(format!("{name}.json"));
            std::fs::write(&conf, format!("{:#}", bootstrap(side, proto, app, &mine)))
                .with_context(|| format!("cannot write {}", conf.display()))?;
            let argv: Vec<String> = [envoy.display().to_string()]
                .into_iter()
                .chain(["--concurrency", "1", "--disable-hot-restart", "--log-level", "warn", "-c"].map(String::from))
                .chain([conf.display().to_string()])
                .collect();
            let child = spawn_in(ns, &name, &as_envoy, &argv, &self.dir)?;
            let admin = SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
            let ns2 = ns.clone();
            wait(&format!("{name}'s /ready"), &child, crate::mesh::STARTUP, || {
                match super::http_get_in(&ns2, admin, "/ready") {
                    Ok((200, body)) if body.trim() == "LIVE" => None,
                    Ok((s, b)) => Some(format!("/ready answered {s} {:?}", b.trim())),
                    Err(e) => Some(format!("{e:#}")),
                }
            })?;
            procs.push(child);
        }
        Ok(Running::new(procs, Pods::target(proto)))
    }

    /// Requests each Envoy (client pod's, server pod's) has completed so far.
    pub fn envoy_requests(&self) -> anyhow::Result<[u64; 2]> {
        let admin = SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
        let read = |ns: &str| -> anyhow::Result<u64> {
            match super::http_get_in(ns, admin, "/stats")? {
                (200, body) => Ok(requests(&body)),
                (s, _) => bail!("Envoy's /stats in {ns} answered {s}"),
            }
        };
        let names = self.names();
        Ok([read(&names.client)?, read(&names.server)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::peers::envoy::test_certs as certs;

    /// Catches Envoy's own connections redirected back to itself (a loop),
    /// loopback redirected (the admin and the server Envoy's app), or
    /// inbound and outbound sent to the wrong listener.
    #[test]
    fn rules_redirect_like_istio() {
        let r = rules();
        assert!(r.starts_with("*nat\n") && r.ends_with("COMMIT\n"), "{r}");
        let out: Vec<&str> = r.lines().filter(|l| l.starts_with("-A XBENCH_ENVOY_OUTPUT")).collect();
        assert_eq!(
            out,
            [
                "-A XBENCH_ENVOY_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "-A XBENCH_ENVOY_OUTPUT -o lo -j RETURN",
                "-A XBENCH_ENVOY_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
            ]
        );
        assert!(r.contains("-A XBENCH_ENVOY_INBOUND -p tcp -j REDIRECT --to-ports 15006\n"), "{r}");
        // Removal undoes each jump the rules add, then the chains.
        let removal: Vec<String> = removal().iter().map(|c| c.join(" ")).collect();
        for jump in r.lines().filter(|l| l.starts_with("-A PREROUTING") || l.starts_with("-A OUTPUT")) {
            let undo = format!("-t nat {}", jump.replacen("-A", "-D", 1));
            assert!(removal.contains(&undo), "{undo} not in {removal:?}");
        }
        assert!(removal.last().is_some_and(|l| l.ends_with("-X XBENCH_ENVOY_OUTPUT")));
    }

    /// Catches a client Envoy that sends every connection to one fixed
    /// address (not the original destination), or listeners without the
    /// original_dst filter.
    #[test]
    fn the_client_envoy_follows_the_original_destination() {
        let app = SocketAddr::from(([127, 0, 0, 1], 8080));
        let client = bootstrap(Side::Client, Proto::Http1, app, &certs());
        let res = &client["static_resources"];
        assert_eq!(res["listeners"][0]["address"]["socket_address"]["port_value"], json!(15001));
        assert!(res["listeners"][0]["listener_filters"].to_string().contains("original_dst"));
        let cluster = &res["clusters"][0];
        assert_eq!((&cluster["type"], &cluster["lb_policy"]), (&json!("ORIGINAL_DST"), &json!("CLUSTER_PROVIDED")));
        assert!(cluster.get("load_assignment").is_none(), "{cluster}");
        assert!(cluster.get("transport_socket").is_some(), "mTLS upstream");
        let server = bootstrap(Side::Server, Proto::Http1, app, &certs());
        let res = &server["static_resources"];
        assert_eq!(res["listeners"][0]["address"]["socket_address"]["port_value"], json!(15006));
        let ep = &res["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"];
        assert_eq!(ep["socket_address"], json!({ "address": "127.0.0.1", "port_value": 8080 }));
    }

    #[test]
    fn counts_completed_requests() {
        let stats = "http.entry.downstream_rq_completed: 7\nhttp.admin.downstream_rq_completed: 3\n";
        assert_eq!(requests(stats), 7);
    }
}
