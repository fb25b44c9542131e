//! The `control-plane` scenario: how fast an endpoint change reaches many
//! watching proxies, and what the control plane costs at scale.
//!
//! The real `mesh-control` (with its CA, gRPC over TLS) serves a synthetic
//! registry file (`mesh_spec::synthetic`: `--cp-services` services sharing
//! `--cp-endpoints` endpoints). `mesh-test-app watch-swarm` (a child process:
//! xtask links no TLS or gRPC) runs `--cp-clients` simulated proxies, each on
//! its own TLS connection with the certificate a proxy gets from a join
//! token, each holding `--cp-watches` Destination watches (all of them on
//! service 0). Then, per round, the registry file is rewritten as users
//! change it (a new file renamed over the old) with:
//!
//! - one endpoint of service 0 moved to a fresh address;
//! - the same, plus one endpoint moved in each of `--cp-touch` services.
//!
//! The time from the rename to each client's first sight of the fresh
//! address (both clocks are this machine's wall clock) gives p50/p99/max and
//! how many clients never saw it within `--cp-timeout`. The control plane's
//! RSS and CPU time are read from `/proc` at start-up, with the clients
//! connected, idle, around each change, and a second after each round.
//!
//! xtask raises its open-file limit to the hard limit first (children
//! inherit it): a thousand TLS clients and the control plane serving them
//! hold over 2,000 descriptors.

use crate::cargo;
use crate::mesh::{self, Bins, IdentityDir, loopback};
use crate::procs::{CLK_TCK, TempDir, cpu_ticks, free_ports, http_get, memory, spawn, wait_for};
use anyhow::{Context, bail};
use mesh_process::Child;
use mesh_spec::synthetic::Synthetic;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Options of the control-plane scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Control-plane scenario: simulated proxies watching the control plane.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    cp_clients: u32,
    /// Control-plane scenario: Destination watches per client (service 0,
    /// which every client watches, and others spread over the registry).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    cp_watches: u32,
    /// Control-plane scenario: services in the registry.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    cp_services: u32,
    /// Control-plane scenario: endpoints in the registry (spread evenly).
    #[arg(long, default_value_t = 100_000)]
    cp_endpoints: u32,
    /// Control-plane scenario: services the large change touches (default: a tenth).
    #[arg(long)]
    cp_touch: Option<u32>,
    /// Control-plane scenario: how long every client may take to see a change.
    #[arg(long, default_value = "20s", value_parser = super::whole_seconds)]
    cp_timeout: u64,
}

/// How long the swarm may take to connect every client and get its first answers.
const RAMP_TIMEOUT: Duration = Duration::from_secs(300);
/// The idle window the steady state is measured over.
const STEADY: Duration = Duration::from_secs(5);
/// How long after a round's last change its idle reading is taken.
const SETTLED: Duration = Duration::from_secs(1);
/// Timeout of one request to the swarm's status listener.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the control plane may take to load a large registry and be ready.
const CONTROL_STARTUP: Duration = Duration::from_secs(120);

/// The control plane's resources at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// Resident set, MiB.
    pub rss_mib: f64,
    /// CPU time (user + system) used since the previous reading, seconds.
    pub cpu_secs: f64,
    /// Wall time since the previous reading, seconds.
    pub wall_secs: f64,
}

/// The distribution of one change's arrival over the clients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Propagation {
    /// Clients that saw the change.
    pub seen: usize,
    /// Clients that did not within the timeout.
    pub missed: usize,
    /// Median, 99th percentile and slowest arrival, ms (`None`: nobody saw it).
    pub p50_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// Slowest, ms.
    pub max_ms: Option<f64>,
}

impl Propagation {
    /// From each client's arrival time (Unix µs, `None`: never) and the
    /// moment the change was written (Unix µs). An arrival stamped before
    /// the write (clock granularity) counts as 0.
    pub fn new(written_us: u64, arrivals: &[Option<u64>]) -> Self {
        let mut ms: Vec<f64> =
            arrivals.iter().flatten().map(|&t| t.saturating_sub(written_us) as f64 / 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        Self {
            seen: ms.len(),
            missed: arrivals.len() - ms.len(),
            p50_ms: percentile(&ms, 50.0),
            p99_ms: percentile(&ms, 99.0),
            max_ms: ms.last().copied(),
        }
    }
}

/// The `q`-th percentile (0 < q ≤ 100) of sorted `v` by the nearest-rank
/// method: the smallest value with at least q % of the values at or below it.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// What happened.
    pub name: String,
    /// The control plane's resources over it.
    pub usage: Usage,
    /// For a change: how it reached the clients.
    pub propagation: Option<Propagation>,
}

/// The scenario's results.
#[derive(Debug, Clone, PartialEq)]
pub struct Results {
    /// Clients, watches each, services, endpoints, services the large change touches.
    pub shape: [u32; 5],
    /// The registry file's size, bytes.
    pub registry_bytes: u64,
    /// Phases in order.
    pub phases: Vec<Phase>,
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.0}"))
}

impl Results {
    /// The markdown table.
    pub fn table(&self) -> String {
        let [clients, watches, services, endpoints, touch] = self.shape;
        let mut out = format!(
            "## Control plane: {clients} clients × {watches} watches (TLS), {services} services / {endpoints} \
             endpoints (registry {:.1} MB)\n\n",
            self.registry_bytes as f64 / 1e6
        );
        out.push_str("| phase | wall s | CPU s | RSS MiB | p50 ms | p99 ms | max ms | missed |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for p in &self.phases {
            let prop = p.propagation;
            out.push_str(&format!(
                "| {} | {:.2} | {:.2} | {:.1} | {} | {} | {} | {} |\n",
                p.name,
                p.usage.wall_secs,
                p.usage.cpu_secs,
                p.usage.rss_mib,
                fmt_ms(prop.and_then(|p| p.p50_ms)),
                fmt_ms(prop.and_then(|p| p.p99_ms)),
                fmt_ms(prop.and_then(|p| p.max_ms)),
                prop.map_or_else(|| "–".into(), |p| p.missed.to_string()),
            ));
        }
        out.push_str(&format!(
            "\nPropagation: from the registry file's rename to each client's first sight of the moved endpoint \
             (the control plane polls the file every 200 ms and applies content unmodified for 100 ms). \"1 service\" moves \
             one endpoint of the service every client watches; \"{touch} services\" moves one endpoint in each of \
             {touch} services, that one included. CPU s is the control plane's CPU time over the phase's wall \
             time. The clients share the machine's CPUs with the control plane.\n"
        ));
        out
    }

    /// The same as JSON.
    pub fn json(&self) -> Value {
        let [clients, watches, services, endpoints, touch] = self.shape;
        let phases: Vec<Value> = self
            .phases
            .iter()
            .map(|p| {
                json!({
                    "phase": p.name,
                    "wall_secs": p.usage.wall_secs,
                    "cpu_secs": p.usage.cpu_secs,
                    "rss_mib": p.usage.rss_mib,
                    "propagation": p.propagation.map(|p| json!({
                        "seen": p.seen, "missed": p.missed,
                        "p50_ms": p.p50_ms, "p99_ms": p.p99_ms, "max_ms": p.max_ms,
                    })),
                })
            })
            .collect();
        json!({
            "scenario": "control_plane",
            "clients": clients, "watches_per_client": watches, "services": services,
            "endpoints": endpoints, "touched_services": touch,
            "registry_bytes": self.registry_bytes,
            "phases": phases,
        })
    }
}

/// Reads the control plane's resources, relative to the previous reading.
struct Meter {
    pid: u32,
    ticks: u64,
    at: Instant,
}

impl Meter {
    fn new(pid: u32) -> anyhow::Result<Self> {
        Ok(Self { pid, ticks: cpu_ticks(pid)?, at: Instant::now() })
    }

    fn read(&mut self) -> anyhow::Result<Usage> {
        let (ticks, at) = (cpu_ticks(self.pid)?, Instant::now());
        let usage = Usage {
            rss_mib: memory(self.pid)?.rss_kib as f64 / 1024.0,
            cpu_secs: ticks.saturating_sub(self.ticks) as f64 / CLK_TCK as f64,
            wall_secs: at.duration_since(self.at).as_secs_f64(),
        };
        (self.ticks, self.at) = (ticks, at);
        Ok(usage)
    }
}

/// The swarm child and its status listener.
struct SwarmProc {
    proc: Child,
    status: SocketAddr,
}

impl SwarmProc {
    fn get(&self, path: &str) -> anyhow::Result<Value> {
        match http_get(self.status, path, STATUS_TIMEOUT) {
            Ok((200, body)) => serde_json::from_str(&body).with_context(|| format!("swarm {path}: not JSON: {body}")),
            Ok((code, body)) => bail!("swarm {path} answered {code} {}", body.trim()),
            Err(e) => {
                Err(e.context(format!("the swarm stopped answering; end of its log:\n{}", self.proc.log_tail(10))))
            }
        }
    }

    fn synced(&self) -> anyhow::Result<(u64, u64)> {
        let s = self.get("/status")?;
        let n = |k: &str| s.get(k).and_then(Value::as_u64).unwrap_or(0);
        Ok((n("synced"), n("clients")))
    }

    fn seen(&self, addr: SocketAddr) -> anyhow::Result<Vec<Option<u64>>> {
        let v = self.get(&format!("/seen?addr={addr}"))?;
        let list = v.as_array().context("swarm /seen is not a list")?;
        Ok(list.iter().map(Value::as_u64).collect())
    }
}

/// Writes `syn`'s registry to `path` as an editor would: a new file renamed
/// over the old one. Returns the Unix time (µs) of the rename and the size.
fn write_registry(syn: &Synthetic, path: &Path) -> anyhow::Result<(u64, u64)> {
    let text = mesh_spec::to_yaml(&syn.file);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &text).with_context(|| format!("cannot write {}", tmp.display()))?;
    let at = unix_micros();
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok((at, text.len() as u64))
}

fn unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Runs the scenario and prints its report.
pub fn run(o: &Options, rounds: u32, no_build: bool, as_json: bool) -> anyhow::Result<()> {
    let touch = o.cp_touch.unwrap_or(o.cp_services / 10).clamp(1, o.cp_services);
    let fds = mesh_process::raise_open_files().context("cannot raise the open-file limit")?;
    eprintln!("open-file limit raised to {} (was {}); children inherit it", fds.after, fds.before);
    if fds.after < u64::from(o.cp_clients) * 2 + 256 {
        bail!(
            "{} clients need about {} open files between the control plane and the swarm, but the hard limit is {}: \
             raise it (ulimit -Hn, /etc/security/limits.conf) or use fewer --cp-clients",
            o.cp_clients,
            u64::from(o.cp_clients) * 2 + 256,
            fds.after
        );
    }
    let mut syn = Synthetic::new(o.cp_services as usize, o.cp_endpoints as usize)?;
    if !no_build {
        cargo::run_step(&mut cargo::cargo(&["build", "--release", "--bins"]))?;
    }
    let bins = Bins::release()?;
    let scratch = TempDir::new("xtask-bench-cp")?;
    let dir = scratch.path();
    let identity = IdentityDir::init(&bins.meshctl, dir, "bench.local").context("cannot set up identity")?;
    let registry = dir.join("registry.yaml");
    let (_, registry_bytes) = write_registry(&syn, &registry)?;
    eprintln!(
        "registry: {} services, {} endpoints, {:.1} MB",
        syn.services(),
        syn.endpoints(),
        registry_bytes as f64 / 1e6
    );

    let ports = free_ports(3)?;
    let (grpc, admin, status) = (loopback(ports[0]), loopback(ports[1]), loopback(ports[2]));
    let started = Instant::now();
    let control = spawn(
        "mesh-control",
        &bins.control,
        &mesh::control_args(&registry, grpc, admin, Some(&identity.dir)),
        &[],
        dir,
    )?;
    wait_for("mesh-control /ready", CONTROL_STARTUP, &[&control], || mesh::ready(admin))?;
    let mut meter = Meter::new(control.pid())?;
    let mut phases = vec![Phase {
        name: "start-up: load and ready".into(),
        usage: Usage {
            wall_secs: started.elapsed().as_secs_f64(),
            cpu_secs: meter.ticks as f64 / CLK_TCK as f64,
            ..meter.read()?
        },
        propagation: None,
    }];

    let swarm = start_swarm(&bins, o, grpc, status, &identity, dir)?;
    eprintln!("waiting for {} clients to connect and get their first answers", o.cp_clients);
    wait_for("every swarm client's first answers", RAMP_TIMEOUT, &[&control, &swarm.proc], || match swarm.synced() {
        Ok((synced, clients)) if synced == clients && clients > 0 => None,
        Ok((synced, clients)) => Some(format!("{synced} of {clients} clients synced")),
        Err(e) => Some(format!("{e:#}")),
    })?;
    phases.push(Phase {
        name: format!("{} clients connected and synced", o.cp_clients),
        usage: meter.read()?,
        propagation: None,
    });
    std::thread::sleep(STEADY);
    phases.push(Phase { name: "steady (idle watches)".into(), usage: meter.read()?, propagation: None });

    let touched: Vec<usize> = spread(touch as usize, syn.services());
    for round in 1..=rounds {
        for many in [false, true] {
            let others: &[usize] = if many { &touched } else { &[] };
            let fresh = syn.move_endpoint(0)?;
            for &i in others.iter().filter(|&&i| i != 0) {
                syn.move_endpoint(i)?;
            }
            let name = if many {
                format!("change: {touch} services (round {round})")
            } else {
                format!("change: 1 service (round {round})")
            };
            eprintln!("{name}");
            phases.push(change(
                &swarm,
                &control,
                &mut meter,
                &syn,
                &registry,
                fresh,
                name,
                Duration::from_secs(o.cp_timeout),
            )?);
        }
        // Read when no change is under way: a reading at a change's arrival
        // may fall before or after the control plane released the parse's
        // memory.
        std::thread::sleep(SETTLED);
        phases.push(Phase {
            name: format!("idle after {} changes", round * 2),
            usage: meter.read()?,
            propagation: None,
        });
    }
    let results =
        Results { shape: [o.cp_clients, o.cp_watches, o.cp_services, o.cp_endpoints, touch], registry_bytes, phases };
    if as_json {
        println!("{:#}", results.json());
    } else {
        print!("\n{}", results.table());
    }
    Ok(())
}

/// `n` service indexes spread over `0..services`, 0 first.
fn spread(n: usize, services: usize) -> Vec<usize> {
    let n = n.clamp(1, services.max(1));
    (0..n).map(|k| k * services / n).collect()
}

fn start_swarm(
    bins: &Bins,
    o: &Options,
    grpc: SocketAddr,
    status: SocketAddr,
    identity: &IdentityDir,
    dir: &Path,
) -> anyhow::Result<SwarmProc> {
    let token: PathBuf = identity.token("bench-swarm", &dir.join("swarm.token"))?;
    let args = mesh::args(&[
        &"watch-swarm",
        &"--control-plane",
        &format!("http://{grpc}"),
        &"--clients",
        &o.cp_clients,
        &"--watches",
        &o.cp_watches,
        &"--services",
        &o.cp_services,
        &"--token-file",
        &token.display(),
        &"--trust-anchors",
        &identity.anchors.display(),
        &"--status",
        &status,
    ]);
    let proc = spawn("watch-swarm", &bins.test_app, &args, &[], dir)?;
    let swarm = SwarmProc { proc, status };
    wait_for("the swarm's status listener", mesh::STARTUP, &[&swarm.proc], || {
        swarm.synced().err().map(|e| format!("{e:#}"))
    })?;
    Ok(swarm)
}

/// Writes the registry, waits until every client has seen `fresh` (or the
/// timeout), and measures.
#[allow(clippy::too_many_arguments)]
fn change(
    swarm: &SwarmProc,
    control: &Child,
    meter: &mut Meter,
    syn: &Synthetic,
    registry: &Path,
    fresh: SocketAddr,
    name: String,
    timeout: Duration,
) -> anyhow::Result<Phase> {
    meter.read()?;
    let (written, _) = write_registry(syn, registry)?;
    let deadline = Instant::now() + timeout;
    let arrivals = loop {
        let arrivals = swarm.seen(fresh)?;
        if arrivals.iter().all(Option::is_some) || Instant::now() >= deadline {
            break arrivals;
        }
        if let Some(status) = control.status() {
            bail!("mesh-control exited ({status}); end of its log:\n{}", control.log_tail(20));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Phase { name, usage: meter.read()?, propagation: Some(Propagation::new(written, &arrivals)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nearest rank: p50 of 1..=10 is 5, p99 is the largest, one value is
    /// every percentile. Catches: an off-by-one rank (p50 = 6), an index past
    /// the end for p100, interpolation where the issue asks for observed values.
    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(5.0));
        assert_eq!(percentile(&v, 99.0), Some(10.0));
        assert_eq!(percentile(&v, 100.0), Some(10.0));
        assert_eq!(percentile(&v, 10.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 99.0), Some(99.0));
    }

    /// Arrivals relative to the write, unsorted input, and clients that
    /// never saw it counted apart. Catches: missing clients dropped silently
    /// (a broken server would look fast), a percentile over unsorted times.
    #[test]
    fn propagation_counts_the_missing() {
        let at = 1_000_000;
        let p = Propagation::new(at, &[Some(at + 30_000), None, Some(at + 10_000), Some(at - 5), Some(at + 20_000)]);
        assert_eq!((p.seen, p.missed), (4, 1));
        assert_eq!((p.p50_ms, p.p99_ms, p.max_ms), (Some(10.0), Some(30.0), Some(30.0)));
        let none = Propagation::new(at, &[None, None]);
        assert_eq!((none.seen, none.missed, none.p50_ms), (0, 2, None));
    }

    #[test]
    fn touched_services_are_spread_from_zero() {
        assert_eq!(spread(4, 100), [0, 25, 50, 75]);
        assert_eq!(spread(10, 3), [0, 1, 2]);
        assert_eq!(spread(0, 5), [0]);
    }

    #[test]
    fn table_and_json_carry_every_phase() {
        let usage = Usage { rss_mib: 40.0, cpu_secs: 0.5, wall_secs: 1.0 };
        let prop = Propagation::new(0, &[Some(250_000), None]);
        let r = Results {
            shape: [2, 1, 10, 100, 1],
            registry_bytes: 2_000_000,
            phases: vec![
                Phase { name: "steady".into(), usage, propagation: None },
                Phase { name: "change".into(), usage, propagation: Some(prop) },
            ],
        };
        let t = r.table();
        assert!(t.contains("| steady | 1.00 | 0.50 | 40.0 | – | – | – | – |"), "{t}");
        assert!(t.contains("| change | 1.00 | 0.50 | 40.0 | 250 | 250 | 250 | 1 |"), "{t}");
        let j = r.json();
        assert_eq!(j["phases"][1]["propagation"]["missed"], 1);
        assert_eq!(j["clients"], 2);
    }
}
