//! What every scenario shares: the [`Bench`] context, starting a mesh for a
//! table, and measuring a [`Table`]: warm-up, interleaved rounds, CPU,
//! memory, and checks that each mesh is what the table claims it is.

use super::BenchArgs;
use super::conns::{self, ConnLoad};
use super::grpc::GrpcApp;
use super::grpc_stream;
use super::loadgen::{Load, Mode, Proto, Tools};
use super::otlp::Collector;
use super::parse;
use super::peers::{self, Peer};
use super::pods::{Pods, Rules, plan};
use super::report::{Run, Scenario, Section, Unit, Variant};
use super::topology::{Bins, Identity, Mesh, MeshSpec, Nginx};
use crate::procs;
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// What every table needs.
#[derive(Debug)]
pub struct Bench<'a> {
    pub args: &'a BenchArgs,
    pub bins: Bins,
    pub nginx: Nginx,
    pub identity: Option<Identity>,
    pub dir: &'a Path,
    /// The reference proxies the http scenario measures beside the mesh.
    pub peers: peers::Kit,
    /// The gRPC backend, when a gRPC table runs.
    pub grpc_app: Option<GrpcApp>,
}

/// How a table's runs load a path.
#[derive(Debug, Clone, Copy)]
pub enum Driver<'a> {
    /// HTTP requests from oha, wrk or h2load.
    Http(&'a Tools, Proto),
    /// New connections from [`conns`].
    Conns,
}

/// One path of a table: where its load goes, and its mesh or peer (an
/// index into the table's meshes or peers) unless it is the baseline.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    variant: Variant,
    addr: SocketAddr,
    mesh: Option<usize>,
    peer: Option<usize>,
}

impl Target {
    /// The interception rules its path needs in the pods topology.
    fn rules(&self) -> Option<Rules> {
        match (self.mesh, self.variant) {
            (Some(i), _) => Some(Rules::Mesh(i)),
            (None, Variant::Peer(Peer::Envoy)) => Some(Rules::Envoy),
            _ => None,
        }
    }
}

/// A table to measure.
#[derive(Debug)]
pub struct Table<'a> {
    pub key: String,
    pub title: String,
    pub unit: Unit,
    pub driver: Driver<'a>,
    pub modes: Vec<Mode>,
    pub targets: Vec<Target>,
    pub meshes: Vec<Mesh>,
    /// Reference proxies, after the meshes in column order.
    pub peers: Vec<peers::Running>,
    pub collector: Option<&'a Collector>,
    pub notes: Vec<String>,
    /// The pods topology's namespaces and apps (`None`: loopback). Last, so
    /// that the meshes in them stop before the namespaces go.
    pub pods: Option<Pods>,
}

/// Each path against the baseline, then each mesh against the one before it
/// (mTLS against plaintext, traced against untraced), then each mTLS mesh
/// and each floor pair against Envoy's pair (the targets are ratios
/// to it), then each mTLS mesh against the TLS floor (what is ours to cut).
fn comparisons(variants: &[Variant]) -> Vec<(Variant, Variant)> {
    let paths: Vec<Variant> = variants.iter().copied().filter(|v| *v != Variant::Baseline).collect();
    let meshes: Vec<Variant> = paths.iter().copied().filter(|v| matches!(v, Variant::Mesh { .. })).collect();
    let mtls: Vec<Variant> = meshes.iter().copied().filter(|m| matches!(m, Variant::Mesh { tls: true, .. })).collect();
    let against_baseline = paths.iter().map(|&m| (m, Variant::Baseline));
    let consecutive = meshes.windows(2).map(|w| (w[1], w[0]));
    let (envoy, floor_tcp, floor_tls) =
        (Variant::Peer(Peer::Envoy), Variant::Peer(Peer::FloorTcp), Variant::Peer(Peer::FloorTls));
    let has = |v: Variant| paths.contains(&v);
    let to_envoy = mtls.iter().copied().chain([floor_tcp, floor_tls].into_iter().filter(|f| has(*f)));
    let against_envoy = to_envoy.filter(|_| has(envoy)).map(|m| (m, envoy));
    let above_floor = mtls.iter().filter(|_| has(floor_tls)).map(|&m| (m, floor_tls));
    against_baseline.chain(consecutive).chain(against_envoy).chain(above_floor).collect()
}

/// The server proxy's inbound connections accepted so far: (mTLS, plaintext).
fn inbound_connections(metrics: &str) -> (u64, u64) {
    let count =
        |tls| crate::prom::metric_sum(metrics, "tcp_open_total", &[("direction", "inbound"), ("tls", tls)]) as u64;
    (count("true"), count("false"))
}

/// Requests a proxy has served so far in `direction` (`inbound`, `outbound`).
fn requests(metrics: &str, direction: &str) -> u64 {
    crate::prom::metric_sum(metrics, "request_total", &[("direction", direction)]) as u64
}

/// Spans both proxies dropped so far.
fn spans_dropped(metrics: &[String; 2]) -> u64 {
    metrics.iter().map(|m| crate::prom::metric_sum(m, "trace_spans_dropped_total", &[]) as u64).sum()
}

fn describe(mode: Mode, unit: Unit) -> String {
    match (mode, unit) {
        (Mode::Fixed(rate), Unit::Request) => format!("{rate} req/s"),
        (Mode::Fixed(rate), Unit::Connection) => format!("{rate} conn/s"),
        (Mode::Fixed(rate), Unit::Message) => format!("{rate} msg/s"),
        (Mode::Max, _) => "max rate".into(),
    }
}

impl Bench<'_> {
    /// The backend of `proto`'s table: nginx, or the gRPC Echo app.
    pub fn app(&self, proto: Proto) -> anyhow::Result<SocketAddr> {
        match (proto, &self.grpc_app) {
            (p, Some(g)) if p.is_grpc() => Ok(g.addr),
            (p, None) if p.is_grpc() => bail!("the gRPC tables need the gRPC backend"),
            _ => Ok(self.nginx.addr(proto)),
        }
    }

    /// Starts one mesh for a table; `tag` names its logs.
    pub fn mesh(
        &self,
        tag: &str,
        variant: Variant,
        app: SocketAddr,
        protocol: &'static str,
        collector: Option<&Collector>,
    ) -> anyhow::Result<Mesh> {
        let Variant::Mesh { tls, tracing } = variant else { bail!("the baseline has no mesh") };
        let identity = match (tls, &self.identity) {
            (true, Some(id)) => Some(id),
            (true, None) => bail!("an mTLS mesh needs the identity directory"),
            (false, _) => None,
        };
        let trace_collector = match (tracing, collector) {
            (true, Some(c)) => Some(c.endpoint()),
            (true, None) => bail!("a traced mesh needs the OTLP receiver"),
            (false, _) => None,
        };
        let spec = MeshSpec {
            name: format!("{tag}-{}", variant.key()),
            app,
            protocol,
            identity,
            trace_collector,
            threads: self.args.proxy_threads,
            extra_args: &self.args.proxy_args,
        };
        eprintln!("==> {tag}: starting a mesh, {}: mesh-control and two proxies", variant.label());
        Mesh::start(&self.bins, &spec, self.dir)
            .with_context(|| format!("cannot start the {} for {tag}", variant.label()))
    }

    /// Targets for the baseline at `direct` and each started mesh.
    pub fn targets(direct: SocketAddr, meshes: &[(Variant, Mesh)]) -> Vec<Target> {
        let mut t = vec![Target { variant: Variant::Baseline, addr: direct, mesh: None, peer: None }];
        t.extend(meshes.iter().enumerate().map(|(i, (v, m))| Target {
            variant: *v,
            addr: m.entry,
            mesh: Some(i),
            peer: None,
        }));
        t
    }

    /// Targets for started peers, after the others.
    pub fn peer_targets(peers: &[(Peer, peers::Running)]) -> Vec<Target> {
        let target = |(i, (p, r)): (usize, &(Peer, peers::Running))| Target {
            variant: Variant::Peer(*p),
            addr: r.entry(),
            mesh: None,
            peer: Some(i),
        };
        peers.iter().enumerate().map(target).collect()
    }

    /// One unmeasured or measured run of the table's driver against `t`,
    /// first (pods) installing the iptables rules of `t`'s path.
    fn load(&self, table: &mut Table<'_>, t: Target, mode: Mode, secs: u64) -> anyhow::Result<parse::Sample> {
        let duration = Duration::from_secs(secs);
        let (driver, addr) = (table.driver, t.addr);
        if let Some(pods) = table.pods.as_mut() {
            pods.route(t.rules())?;
        }
        let netns = table.pods.as_ref().map(|p| p.names().client.as_str());
        match driver {
            Driver::Http(_, Proto::GrpcStream) => {
                let report = grpc_stream::run(&self.bins.test_app, addr, mode, self.args.connections, duration, netns)?;
                if let Some(e) = &report.first_error {
                    eprintln!(
                        "    {} stream(s) failed, {} message(s) lost, {} mismatched; the first error: {e}",
                        report.stream_errors, report.lost, report.mismatched
                    );
                }
                if report.behind > 0 {
                    eprintln!("    {} scheduled message(s) not sent by the end: behind the rate", report.behind);
                }
                Ok(report.sample)
            }
            Driver::Http(tools, proto) => {
                let load = Load { proto, mode, connections: self.args.connections, duration };
                tools.run(&load, addr, self.dir, netns)
            }
            Driver::Conns if netns.is_some() => bail!("the pods topology measures HTTP only"),
            Driver::Conns => {
                let report = conns::run(&ConnLoad { mode, workers: self.args.connections, duration }, addr)?;
                if let Some(e) = report.first_error {
                    eprintln!("    {} connection(s) failed; the first: {e}", report.sample.errors);
                }
                Ok(report.sample)
            }
        }
    }

    fn tool(driver: Driver<'_>, mode: Mode, connections: u32) -> &'static str {
        match driver {
            Driver::Http(tools, proto) => {
                tools.name(&Load { proto, mode, connections, duration: Duration::from_secs(1) })
            }
            Driver::Conns => conns::TOOL,
        }
    }

    /// CPU ticks used so far by the client proxy, the server proxy (0 for
    /// the baseline) and nginx.
    fn cpu_now(&self, table: &Table<'_>, t: Target) -> anyhow::Result<[u64; 3]> {
        // The backend's slot: nginx, or the gRPC app for a gRPC table.
        let backend = match (table.driver, &self.grpc_app, &table.pods) {
            (Driver::Http(_, proto), _, Some(pods)) => pods.backend_pid(proto),
            (Driver::Http(_, p), Some(g), _) if p.is_grpc() => g.pid(),
            _ => self.nginx.pid(),
        };
        let nginx = procs::cpu_ticks(backend)?;
        Ok(match (t.mesh.map(|i| &table.meshes[i]), t.peer.map(|i| &table.peers[i])) {
            (Some(m), _) => {
                let [client, server] = m.proxies();
                [procs::cpu_ticks(client.pid())?, procs::cpu_ticks(server.pid())?, nginx]
            }
            (None, Some(p)) => {
                let [first, second] = p.cpu_ticks()?;
                [first, second, nginx]
            }
            (None, None) => [0, 0, nginx],
        })
    }

    /// Fails, with the processes' logs, if a process of `t`'s path has exited.
    fn check_alive(table: &mut Table<'_>, t: Target, when: &str) -> anyhow::Result<()> {
        let label = t.variant.label();
        if let Some(i) = t.mesh {
            let mesh = &mut table.meshes[i];
            mesh.check_alive().with_context(|| format!("a {label} process died {when}\n{}", mesh.log_tails()))?;
        }
        if let Some(i) = t.peer {
            let peer = &mut table.peers[i];
            peer.check_alive().with_context(|| format!("a {label} process died {when}\n{}", peer.log_tails()))?;
        }
        Ok(())
    }

    /// Checks that each mesh's proxies talk as they should: mTLS in an
    /// mTLS mesh, plaintext otherwise. `None` when they do.
    fn security_problem(table: &Table<'_>) -> anyhow::Result<Option<String>> {
        for t in &table.targets {
            let (Some(i), Variant::Mesh { tls, .. }) = (t.mesh, t.variant) else { continue };
            let [_, server] = table.meshes[i].metrics()?;
            let (mtls, plain) = inbound_connections(&server);
            let ok = if tls { mtls > 0 && plain == 0 } else { mtls == 0 && plain > 0 };
            if !ok {
                return Ok(Some(format!(
                    "the {}'s server proxy accepted {mtls} mTLS and {plain} plaintext connection(s) from the client proxy",
                    t.variant.label()
                )));
            }
        }
        Ok(None)
    }

    /// Warms up every path, then runs the table's scenarios, interleaving its paths.
    pub fn measure(&self, mut table: Table<'_>) -> anyhow::Result<Section> {
        let args = self.args;
        let name = table.key.clone();
        // Before anything is sent: the proxies have served nothing yet.
        let idle_memory = Self::memory(&table)?;
        if let Driver::Http(_, p) = table.driver
            && p.is_grpc()
        {
            for t in table.targets.clone() {
                if let Some(pods) = table.pods.as_mut() {
                    pods.route(t.rules())?;
                }
                let netns = table.pods.as_ref().map(|p| p.names().client.as_str());
                super::grpc::check(&self.bins.test_app, t.addr, t.variant.label(), netns)?;
            }
        }
        if args.warmup > 0 {
            for t in table.targets.clone() {
                let sample = self.load(&mut table, t, Mode::Max, args.warmup)?;
                Self::check_alive(&mut table, t, "during the warm-up")?;
                if sample.ok == 0 {
                    let logs = match (t.mesh, t.peer) {
                        (Some(i), _) => table.meshes[i].log_tails(),
                        (None, Some(i)) => table.peers[i].log_tails(),
                        (None, None) => String::new(),
                    };
                    bail!(
                        "{name}: warm-up through the {} got no success ({} failed)\n{logs}",
                        t.variant.label(),
                        sample.errors
                    );
                }
            }
            if let Some(problem) = Self::security_problem(&table)? {
                bail!("{name}: {problem}: the mesh is not what this table claims to measure");
            }
            if let Some(c) = table.collector {
                c.settle(Duration::from_millis(700), Duration::from_secs(5))?;
            }
        }

        let n = table.targets.len();
        let mut scenarios = Vec::new();
        for mode in table.modes.clone() {
            let tool = Self::tool(table.driver, mode, args.connections);
            let mut runs = Vec::new();
            for round in 1..=args.rounds {
                for k in 0..n {
                    let t = table.targets[(k + round as usize - 1) % n];
                    let run = self.one_run(&mut table, t, mode, round)?;
                    let s = &run.sample;
                    let extra = match (run.peer_connections, run.spans) {
                        (_, Some(spans)) => format!(", {spans} spans, {} dropped", run.spans_dropped.unwrap_or(0)),
                        (Some(p), None) if table.unit == Unit::Connection => {
                            format!(", {p} proxy-to-proxy connections")
                        }
                        _ => String::new(),
                    };
                    eprintln!(
                        "  {name} {} via {tool}, round {round}/{}, {}: {:.0}/s, p50 {}, p99 {}, {} ok, {} failed, CPU ticks (client proxy, server proxy, nginx) {:?}{extra}",
                        describe(mode, table.unit),
                        args.rounds,
                        t.variant.label(),
                        s.rps,
                        s.p50_us.map_or("-".into(), |v| format!("{v:.0}µs")),
                        s.p99_us.map_or("-".into(), |v| format!("{v:.0}µs")),
                        s.ok,
                        s.errors,
                        run.cpu_ticks,
                    );
                    runs.push(run);
                    // Let sockets from the last run close before the next one.
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            scenarios.push(Scenario { mode, tool, connections: args.connections, runs });
        }

        if args.warmup == 0
            && let Some(problem) = Self::security_problem(&table)?
        {
            eprintln!("warning: {name}: {problem}");
            table.notes.push(format!("WARNING: {problem}"));
        }
        let memory = Self::memory(&table)?;
        let variants: Vec<Variant> = table.targets.iter().map(|t| t.variant).collect();
        let mut section = Section {
            key: table.key,
            title: table.title,
            unit: table.unit,
            comparisons: comparisons(&variants),
            variants,
            scenarios,
            memory,
            idle_memory,
            notes: table.notes,
        };
        section.notes.extend(sanity_notes(&section));
        Ok(section)
    }

    /// Each path's proxies' memory now: client side, server side.
    fn memory(table: &Table<'_>) -> anyhow::Result<Vec<(Variant, [Option<procs::Memory>; 2])>> {
        let mut memory = Vec::new();
        for t in &table.targets {
            if let Some(i) = t.mesh {
                let [client, server] = table.meshes[i].proxies();
                memory.push((t.variant, [Some(procs::memory(client.pid())?), Some(procs::memory(server.pid())?)]));
            }
            if let Some(i) = t.peer {
                memory.push((t.variant, table.peers[i].memory()?));
            }
        }
        Ok(memory)
    }

    /// One measured run of one path.
    fn one_run(&self, table: &mut Table<'_>, t: Target, mode: Mode, round: u32) -> anyhow::Result<Run> {
        let traced = matches!(t.variant, Variant::Mesh { tracing: true, .. });
        let collector = table.collector.filter(|_| traced);
        // Admin requests are made outside the CPU readings.
        let metrics_before = t.mesh.map(|i| table.meshes[i].metrics()).transpose()?;
        let envoy_in_pods = |table: &Table<'_>| -> anyhow::Result<Option<[u64; 2]>> {
            table.pods.as_ref().filter(|_| t.rules() == Some(Rules::Envoy)).map(Pods::envoy_requests).transpose()
        };
        let envoy_before = envoy_in_pods(table)?;
        let spans_before = collector.map(Collector::spans).transpose()?;
        let before = self.cpu_now(table, t)?;
        let sample = self.load(table, t, mode, self.args.duration)?;
        let after = self.cpu_now(table, t)?;
        Self::check_alive(table, t, "during a run")?;
        let spans = match (collector, spans_before) {
            (Some(c), Some(b)) => Some(c.settle(Duration::from_millis(700), Duration::from_secs(5))?.saturating_sub(b)),
            _ => None,
        };
        let metrics_after = t.mesh.map(|i| table.meshes[i].metrics()).transpose()?;
        let envoy_after = envoy_in_pods(table)?;
        if let (Some([cb, sb]), Some([ca, sa])) = (envoy_before, envoy_after) {
            let served = plan::Served {
                ok: sample.ok,
                client_outbound: ca.saturating_sub(cb),
                server_inbound: sa.saturating_sub(sb),
            };
            if let Some(problem) = plan::bypassed(served) {
                bail!("{}, {}: {problem}", table.key, t.variant.label());
            }
        }
        if let (Some(_), Some(b), Some(a)) = (&table.pods, &metrics_before, &metrics_after) {
            let served = plan::Served {
                ok: sample.ok,
                client_outbound: requests(&a[0], "outbound").saturating_sub(requests(&b[0], "outbound")),
                server_inbound: requests(&a[1], "inbound").saturating_sub(requests(&b[1], "inbound")),
            };
            if let Some(problem) = plan::bypassed(served) {
                bail!("{}, {}: {problem}", table.key, t.variant.label());
            }
        }
        let (peer_connections, spans_dropped) = match (&metrics_before, &metrics_after) {
            (Some(b), Some(a)) => {
                let total = |m: &[String; 2]| {
                    let (mtls, plain) = inbound_connections(&m[1]);
                    mtls + plain
                };
                let peer = total(a).saturating_sub(total(b));
                (Some(peer), traced.then(|| spans_dropped(a).saturating_sub(spans_dropped(b))))
            }
            _ => (None, None),
        };
        Ok(Run {
            round,
            variant: t.variant,
            sample,
            cpu_ticks: std::array::from_fn(|i| after[i].saturating_sub(before[i])),
            peer_connections,
            spans,
            spans_dropped,
        })
    }
}

/// Notes for figures that are off: spans per request far from 2, client
/// connections not each opening a proxy-to-proxy connection.
fn sanity_notes(section: &Section) -> Vec<String> {
    let mut notes = Vec::new();
    for sc in &section.scenarios {
        for &v in &section.variants {
            let s = sc.stats(v);
            if let Some(per) = s.spans_per_unit().filter(|p| !(1.9..=2.1).contains(p)) {
                notes.push(format!(
                    "{}, {}: {per:.2} spans per request received, not ≈ 2{}",
                    describe(sc.mode, section.unit),
                    v.label(),
                    if s.spans_dropped.unwrap_or(0) > 0 { " (the proxies dropped some)" } else { "" }
                ));
            }
            if section.unit == Unit::Connection
                && let Some(per) = s.peer_connections_per_unit().filter(|p| !(0.95..=1.05).contains(p))
            {
                notes.push(format!(
                    "{}, {}: {per:.2} proxy-to-proxy connections per client connection, not ≈ 1",
                    describe(sc.mode, section.unit),
                    v.label()
                ));
            }
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Variant = Variant::PLAINTEXT;
    const M: Variant = Variant::MTLS;

    #[test]
    fn comparisons_against_baseline_then_the_previous_mesh() {
        let b = Variant::Baseline;
        assert_eq!(comparisons(&[b, M]), vec![(M, b)]);
        assert_eq!(comparisons(&[b, P, M]), vec![(P, b), (M, b), (M, P)]);
        assert_eq!(comparisons(&[b, M, M.traced()]), vec![(M, b), (M.traced(), b), (M.traced(), M)]);
    }

    /// Catches a table without the ratios to Envoy's pair, or
    /// comparing the plaintext mesh or a one-hop proxy with it.
    #[test]
    fn the_mtls_mesh_is_compared_with_envoy() {
        let (b, e, n) = (Variant::Baseline, Variant::Peer(Peer::Envoy), Variant::Peer(Peer::Nginx));
        assert_eq!(comparisons(&[b, M, e, n]), vec![(M, b), (e, b), (n, b), (M, e)]);
        assert_eq!(comparisons(&[b, P, M, e]), vec![(P, b), (M, b), (e, b), (M, P), (M, e)]);
        assert_eq!(comparisons(&[b, M, n]), vec![(M, b), (n, b)]);
    }

    /// Catches floor pairs not compared with Envoy's pair (the ratio that
    /// says whether the target is reachable), or our pair not compared with
    /// the TLS floor (what is ours to cut), or such columns without them.
    #[test]
    fn the_floor_is_compared_with_envoy_and_ours_with_the_floor() {
        let (b, e) = (Variant::Baseline, Variant::Peer(Peer::Envoy));
        let (t, s) = (Variant::Peer(Peer::FloorTcp), Variant::Peer(Peer::FloorTls));
        assert_eq!(comparisons(&[b, M, e, t, s]), vec![(M, b), (e, b), (t, b), (s, b), (M, e), (t, e), (s, e), (M, s)]);
        assert_eq!(comparisons(&[b, M, t]), vec![(M, b), (t, b)]);
        assert_eq!(comparisons(&[b, P, s]), vec![(P, b), (s, b)]);
    }

    #[test]
    fn proxy_metrics() {
        let server = "tcp_open_total{direction=\"inbound\",target=\"x\",tls=\"true\",peer_id=\"a\"} 4\n\
                      tcp_open_total{direction=\"inbound\",target=\"x\",tls=\"false\",peer_id=\"\"} 1\n\
                      tcp_open_total{direction=\"outbound\",target=\"y\",tls=\"true\",peer_id=\"b\"} 9\n";
        assert_eq!(inbound_connections(server), (4, 1));
        let dropped = ["trace_spans_dropped_total 3\n".to_string(), "trace_spans_dropped_total 4\n".to_string()];
        assert_eq!(spans_dropped(&dropped), 7);
    }
}
