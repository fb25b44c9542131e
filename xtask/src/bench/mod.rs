//! `cargo xtask bench`: the mesh's cost per hop, measured on loopback.
//!
//! nginx is the backend. Each table compares paths measured in the same
//! rounds: nginx directly (baseline) and through a client-side and a
//! server-side `mesh-proxy` (a mesh), interleaved because a small shared
//! machine is noisy. Meshes run as users run them: with identity (a CA
//! directory, join tokens, mTLS between the proxies) unless `--plaintext`;
//! `--compare-tls` measures the plaintext and the mTLS mesh side by side.
//!
//! Scenarios (`--scenario`):
//! - `http`: latency at a fixed rate, throughput at max rate, CPU time per
//!   request of each proxy (from `/proc/PID/stat`) and each proxy's memory,
//!   per protocol;
//! - `handshake`: new connections through an opaque TCP service, where each
//!   client connection is a new proxy-to-proxy connection (and handshake);
//! - `tracing`: the mesh with and without span export to an in-process OTLP
//!   receiver that counts spans.
//!
//! Nothing is asserted: this is a measurement tool.

mod conns;
mod loadgen;
mod otlp;
mod parse;
mod procs;
mod report;
mod topology;

use crate::cargo;
use anyhow::{Context, bail};
use conns::ConnLoad;
use loadgen::{Load, Mode, Proto, Tools};
use otlp::Collector;
use procs::TempDir;
use report::{Report, Run, Scenario, Section, Unit, Variant};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use topology::{Bins, Identity, Mesh, MeshSpec, Nginx};

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Length of each measured run, in whole seconds (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = whole_seconds)]
    duration: u64,
    /// Total request rate of the fixed-rate HTTP runs, in requests per second.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    rate: u32,
    /// Concurrent connections of every HTTP run, and workers of the
    /// handshake scenario's max-rate runs.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// Rounds per scenario; each round runs every path of its table once.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Unmeasured max-rate warm-up of each path before its table's runs (0s: none).
    #[arg(long, default_value = "1s", value_parser = whole_seconds)]
    warmup: u64,
    /// Worker threads of each proxy (`mesh-proxy --threads`).
    #[arg(long, default_value_t = 1)]
    proxy_threads: usize,
    /// Protocols of the http and tracing scenarios (default: both).
    #[arg(long = "protocol", value_enum)]
    protocols: Vec<ProtoArg>,
    /// What to measure (repeatable; default: http).
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<ScenarioArg>,
    /// Run the mesh without identity: plaintext between the proxies. By
    /// default the mesh has identity and mTLS, as users run it.
    #[arg(long, conflicts_with = "compare_tls")]
    plaintext: bool,
    /// Measure the plaintext mesh and the mTLS mesh in the same run,
    /// interleaved with the baseline: the cost of mTLS.
    #[arg(long)]
    compare_tls: bool,
    /// New connections per second of the handshake scenario's fixed-rate runs.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    conn_rate: u32,
    /// Measure the release binaries already built instead of building them first.
    #[arg(long)]
    no_build: bool,
    /// Print the results as a JSON document (progress still goes to stderr).
    #[arg(long)]
    json: bool,
}

/// A protocol on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProtoArg {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 cleartext with prior knowledge.
    Http2,
}

/// A scenario on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ScenarioArg {
    /// HTTP requests on pooled connections: latency, throughput, CPU and
    /// memory, per protocol (baseline and the mesh(es) chosen by
    /// --plaintext / --compare-tls).
    Http,
    /// New connections per second and connection time through an opaque TCP
    /// service: baseline, plaintext mesh and mTLS mesh (plaintext only with
    /// --plaintext).
    Handshake,
    /// The mesh (mTLS unless --plaintext) with and without exporting every
    /// trace to an OTLP receiver, per protocol.
    Tracing,
    /// All of the above.
    All,
}

/// Parses `10s`, `2m` or `10` into whole seconds.
fn whole_seconds(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, scale) = match t.strip_suffix('m') {
        Some(n) if !n.ends_with('m') => (n, 60),
        _ => (t.strip_suffix('s').unwrap_or(t), 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("invalid duration {s:?}: give whole seconds, like 10s or 1m"))
}

/// What a run of the bench measures, from its options.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    /// Protocols of the http and tracing scenarios, in order.
    protocols: Vec<Proto>,
    /// Meshes of the http scenario (empty: not run).
    http: Vec<Variant>,
    /// Meshes of the handshake scenario (empty: not run).
    handshake: Vec<Variant>,
    /// The untraced mesh of the tracing scenario, if it runs.
    tracing: Option<Variant>,
}

impl Plan {
    fn new(args: &BenchArgs) -> Self {
        let wants = |s| args.scenarios.contains(&s) || args.scenarios.contains(&ScenarioArg::All);
        let http = args.scenarios.is_empty() || wants(ScenarioArg::Http);
        let protocols = if args.protocols.is_empty() {
            vec![Proto::Http1, Proto::Http2]
        } else {
            [(ProtoArg::Http1, Proto::Http1), (ProtoArg::Http2, Proto::Http2)]
                .into_iter()
                .filter(|(a, _)| args.protocols.contains(a))
                .map(|(_, p)| p)
                .collect()
        };
        let (main, both) = if args.plaintext {
            (vec![Variant::PLAINTEXT], vec![Variant::PLAINTEXT])
        } else if args.compare_tls {
            (vec![Variant::PLAINTEXT, Variant::MTLS], vec![Variant::PLAINTEXT, Variant::MTLS])
        } else {
            (vec![Variant::MTLS], vec![Variant::PLAINTEXT, Variant::MTLS])
        };
        let tracing_mesh = if args.plaintext { Variant::PLAINTEXT } else { Variant::MTLS };
        Self {
            protocols,
            http: if http { main } else { Vec::new() },
            handshake: if wants(ScenarioArg::Handshake) { both } else { Vec::new() },
            tracing: wants(ScenarioArg::Tracing).then_some(tracing_mesh),
        }
    }

    fn needs_identity(&self) -> bool {
        let tls = |v: &Variant| matches!(v, Variant::Mesh { tls: true, .. });
        self.http.iter().chain(&self.handshake).chain(&self.tracing).any(tls)
    }

    fn needs_http_tools(&self) -> bool {
        !self.http.is_empty() || self.tracing.is_some()
    }
}

/// Each mesh against the baseline, then each mesh against the one before it
/// (mTLS against plaintext, traced against untraced).
fn comparisons(variants: &[Variant]) -> Vec<(Variant, Variant)> {
    let meshes: Vec<Variant> = variants.iter().copied().filter(|v| *v != Variant::Baseline).collect();
    let against_baseline = meshes.iter().map(|&m| (m, Variant::Baseline));
    let consecutive = meshes.windows(2).map(|w| (w[1], w[0]));
    against_baseline.chain(consecutive).collect()
}

/// The load average from `/proc/loadavg`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// Runs the benchmark and prints its report.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.duration == 0 {
        bail!("--duration must be at least 1s");
    }
    let plan = Plan::new(args);
    if plan.protocols.is_empty() && plan.handshake.is_empty() {
        bail!("nothing to measure");
    }
    let load_at_start = load_average();
    let tools = if plan.needs_http_tools() { Some(Tools::find()?) } else { None };
    let nginx_bin = loadgen::require("nginx", "nginx")?;
    if !args.no_build {
        cargo::run_step(&mut cargo::cargo(&["build", "--release", "-p", "mesh-proxy", "-p", "mesh-control"]))?;
    }
    let bins = Bins { proxy: cargo::release_bin("mesh-proxy")?, control: cargo::release_bin("mesh-control")? };
    let scratch = TempDir::new("xtask-bench")?;
    let nginx = Nginx::start(&nginx_bin, scratch.path()).context("cannot start the nginx backend")?;
    let identity = if plan.needs_identity() {
        Some(Identity::create(scratch.path()).context("cannot set up identity for the mTLS mesh")?)
    } else {
        None
    };
    let bench = Bench { args, bins, nginx, identity, dir: scratch.path() };

    let mut sections = Vec::new();
    if let (false, Some(tools)) = (plan.http.is_empty(), &tools) {
        for &proto in &plan.protocols {
            sections.push(bench.http(tools, proto, &plan.http)?);
        }
    }
    if !plan.handshake.is_empty() {
        sections.push(bench.handshake(&plan.handshake)?);
    }
    if let (Some(mesh), Some(tools)) = (plan.tracing, &tools) {
        let collector = Collector::start().context("cannot start the OTLP receiver")?;
        for &proto in &plan.protocols {
            sections.push(bench.tracing(tools, proto, mesh, &collector)?);
        }
    }
    let report = Report {
        duration_secs: args.duration,
        rounds: args.rounds,
        proxy_threads: args.proxy_threads,
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        load_avg: [load_at_start, load_average()],
        sections,
    };
    if args.json {
        println!("{:#}", report.json());
    } else {
        print!("\n{}", report.table());
    }
    Ok(())
}

/// What every table needs.
#[derive(Debug)]
struct Bench<'a> {
    args: &'a BenchArgs,
    bins: Bins,
    nginx: Nginx,
    identity: Option<Identity>,
    dir: &'a Path,
}

/// How a table's runs load a path.
#[derive(Debug, Clone, Copy)]
enum Driver<'a> {
    /// HTTP requests from oha, wrk or h2load.
    Http(&'a Tools, Proto),
    /// New connections from [`conns`].
    Conns,
}

/// One path of a table: where its load goes, and its mesh (an index into
/// the table's meshes) unless it is the baseline.
#[derive(Debug, Clone, Copy)]
struct Target {
    variant: Variant,
    addr: SocketAddr,
    mesh: Option<usize>,
}

/// A table to measure.
#[derive(Debug)]
struct Table<'a> {
    key: String,
    title: String,
    unit: Unit,
    driver: Driver<'a>,
    modes: [Mode; 2],
    targets: Vec<Target>,
    meshes: Vec<Mesh>,
    collector: Option<&'a Collector>,
    notes: Vec<String>,
}

/// The server proxy's inbound connections accepted so far: (mTLS, plaintext).
fn inbound_connections(metrics: &str) -> (u64, u64) {
    let count = |tls| parse::metric_sum(metrics, "tcp_open_total", &[("direction", "inbound"), ("tls", tls)]) as u64;
    (count("true"), count("false"))
}

/// Spans both proxies dropped so far.
fn spans_dropped(metrics: &[String; 2]) -> u64 {
    metrics.iter().map(|m| parse::metric_sum(m, "trace_spans_dropped_total", &[]) as u64).sum()
}

fn describe(mode: Mode, unit: Unit) -> String {
    match (mode, unit) {
        (Mode::Fixed(rate), Unit::Request) => format!("{rate} req/s"),
        (Mode::Fixed(rate), Unit::Connection) => format!("{rate} conn/s"),
        (Mode::Max, _) => "max rate".into(),
    }
}

impl Bench<'_> {
    /// Starts one mesh for a table; `tag` names its logs.
    fn mesh(
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
        };
        eprintln!("==> {tag}: starting a mesh, {}: mesh-control and two proxies", variant.label());
        Mesh::start(&self.bins, &spec, self.dir)
            .with_context(|| format!("cannot start the {} for {tag}", variant.label()))
    }

    /// Targets for the baseline at `direct` and each started mesh.
    fn targets(direct: SocketAddr, meshes: &[(Variant, Mesh)]) -> Vec<Target> {
        let mut t = vec![Target { variant: Variant::Baseline, addr: direct, mesh: None }];
        t.extend(meshes.iter().enumerate().map(|(i, (v, m))| Target { variant: *v, addr: m.entry, mesh: Some(i) }));
        t
    }

    /// HTTP requests on pooled connections, baseline against `meshes`.
    fn http(&self, tools: &Tools, proto: Proto, meshes: &[Variant]) -> anyhow::Result<Section> {
        let hint = match proto {
            Proto::Http1 => "http",
            Proto::Http2 => "http2",
        };
        let app = self.nginx.addr(proto);
        let started = meshes
            .iter()
            .map(|&v| Ok((v, self.mesh(proto.key(), v, app, hint, None)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let variants: Vec<&str> = std::iter::once("baseline").chain(meshes.iter().map(|v| v.label())).collect();
        let table = Table {
            key: proto.key().into(),
            title: format!("{}: {}", proto.label(), variants.join(" vs ")),
            unit: Unit::Request,
            driver: Driver::Http(tools, proto),
            modes: [Mode::Fixed(self.args.rate), Mode::Max],
            targets: Self::targets(app, &started),
            meshes: started.into_iter().map(|(_, m)| m).collect(),
            collector: None,
            notes: Vec::new(),
        };
        self.measure(table)
    }

    /// New connections through an opaque TCP service.
    fn handshake(&self, meshes: &[Variant]) -> anyhow::Result<Section> {
        let app = self.nginx.http1;
        let started = meshes
            .iter()
            .map(|&v| Ok((v, self.mesh("tcp", v, app, "opaque", None)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut notes = vec![
            "each connection sends one HTTP/1.0 request with `Connection: close` to nginx and reads to EOF; \
             through the mesh the service is opaque TCP, so every client connection opens its own \
             proxy-to-proxy connection (proxy conns/connection ≈ 1.00), unlike the pooled http scenario"
                .to_string(),
            format!(
                "connection time runs from connect to EOF. The client is a single-threaded tokio loop in xtask \
                 ({} workers at max rate) on the same CPUs: at max rate the baseline is mostly the client's limit",
                self.args.connections
            ),
        ];
        if meshes.contains(&Variant::MTLS) {
            notes.push(
                "TLS session resumption (tickets) applies between the same two proxies: after the first, the \
                 mTLS handshakes here are mostly resumptions, which skip certificates and signatures but still do \
                 a TLS 1.3 key exchange; a full handshake with a new peer costs more"
                    .into(),
            );
        }
        let variants: Vec<&str> = std::iter::once("baseline").chain(meshes.iter().map(|v| v.label())).collect();
        let table = Table {
            key: "handshake".into(),
            title: format!("New connections, opaque TCP: {}", variants.join(" vs ")),
            unit: Unit::Connection,
            driver: Driver::Conns,
            modes: [Mode::Fixed(self.args.conn_rate), Mode::Max],
            targets: Self::targets(app, &started),
            meshes: started.into_iter().map(|(_, m)| m).collect(),
            collector: None,
            notes,
        };
        self.measure(table)
    }

    /// `mesh` with and without span export.
    fn tracing(&self, tools: &Tools, proto: Proto, mesh: Variant, collector: &Collector) -> anyhow::Result<Section> {
        let hint = match proto {
            Proto::Http1 => "http",
            Proto::Http2 => "http2",
        };
        let app = self.nginx.addr(proto);
        let tag = format!("tracing-{}", proto.key());
        let started = [mesh, mesh.traced()]
            .into_iter()
            .map(|v| Ok((v, self.mesh(&tag, v, app, hint, Some(collector))?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let table = Table {
            key: format!("tracing_{}", proto.key()),
            title: format!(
                "Tracing, {}: baseline vs {} vs {} (every trace sampled, OTLP/gRPC export)",
                proto.label(),
                mesh.label(),
                mesh.traced().label()
            ),
            unit: Unit::Request,
            driver: Driver::Http(tools, proto),
            modes: [Mode::Fixed(self.args.rate), Mode::Max],
            targets: Self::targets(app, &started),
            meshes: started.into_iter().map(|(_, m)| m).collect(),
            collector: Some(collector),
            notes: vec![
                "spans go to an OTLP/gRPC receiver in xtask that counts and discards them; each request should \
                 give 2 (one per proxy). Proxies queue at most 4096 spans and drop the rest (counted): at max rate \
                 \"spans dropped\" shows whether export kept up. The receiver shares the machine's CPUs, so at max \
                 rate its work also lowers the traced mesh's throughput; CPU/request at the fixed rate is the \
                 proxies' own cost"
                    .into(),
            ],
        };
        self.measure(table)
    }

    /// One unmeasured or measured run of `driver` against `addr`.
    fn load(&self, driver: Driver<'_>, mode: Mode, secs: u64, addr: SocketAddr) -> anyhow::Result<parse::Sample> {
        let duration = Duration::from_secs(secs);
        match driver {
            Driver::Http(tools, proto) => {
                tools.run(&Load { proto, mode, connections: self.args.connections, duration }, addr, self.dir)
            }
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
    fn cpu_now(&self, mesh: Option<&Mesh>) -> anyhow::Result<[u64; 3]> {
        let nginx = procs::cpu_ticks(self.nginx.pid())?;
        Ok(match mesh {
            Some(m) => {
                let [client, server] = m.proxies();
                [procs::cpu_ticks(client.pid())?, procs::cpu_ticks(server.pid())?, nginx]
            }
            None => [0, 0, nginx],
        })
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
    fn measure(&self, mut table: Table<'_>) -> anyhow::Result<Section> {
        let args = self.args;
        let name = table.key.clone();
        if args.warmup > 0 {
            for t in &table.targets {
                let sample = self.load(table.driver, Mode::Max, args.warmup, t.addr)?;
                if let Some(i) = t.mesh {
                    let mesh = &mut table.meshes[i];
                    mesh.check_alive()
                        .with_context(|| format!("a {} process died during the warm-up", t.variant.label()))?;
                }
                if sample.ok == 0 {
                    let logs = t.mesh.map(|i| table.meshes[i].log_tails()).unwrap_or_default();
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
                c.settle(Duration::from_millis(700), Duration::from_secs(5));
            }
        }

        let n = table.targets.len();
        let mut scenarios = Vec::new();
        for mode in table.modes {
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
        let mut memory = Vec::new();
        for t in &table.targets {
            if let Some(i) = t.mesh {
                let [client, server] = table.meshes[i].proxies();
                memory.push((t.variant, [procs::memory(client.pid())?, procs::memory(server.pid())?]));
            }
        }
        let variants: Vec<Variant> = table.targets.iter().map(|t| t.variant).collect();
        let mut section = Section {
            key: table.key,
            title: table.title,
            unit: table.unit,
            comparisons: comparisons(&variants),
            variants,
            scenarios,
            memory,
            notes: table.notes,
        };
        section.notes.extend(sanity_notes(&section));
        Ok(section)
    }

    /// One measured run of one path.
    fn one_run(&self, table: &mut Table<'_>, t: Target, mode: Mode, round: u32) -> anyhow::Result<Run> {
        let traced = matches!(t.variant, Variant::Mesh { tracing: true, .. });
        let collector = table.collector.filter(|_| traced);
        // Admin requests are made outside the CPU readings.
        let metrics_before = t.mesh.map(|i| table.meshes[i].metrics()).transpose()?;
        let spans_before = collector.map(Collector::spans);
        let before = self.cpu_now(t.mesh.map(|i| &table.meshes[i]))?;
        let sample = self.load(table.driver, mode, self.args.duration, t.addr)?;
        let after = self.cpu_now(t.mesh.map(|i| &table.meshes[i]))?;
        if let Some(i) = t.mesh {
            let mesh = &mut table.meshes[i];
            let label = t.variant.label();
            mesh.check_alive().with_context(|| format!("a {label} process died during a run\n{}", mesh.log_tails()))?;
        }
        let spans = match (collector, spans_before) {
            (Some(c), Some(b)) => Some(c.settle(Duration::from_millis(700), Duration::from_secs(5)).saturating_sub(b)),
            _ => None,
        };
        let metrics_after = t.mesh.map(|i| table.meshes[i].metrics()).transpose()?;
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
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn plan(line: &[&str]) -> Result<Plan, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(line.iter().copied()))?;
        Ok(Plan::new(&cli.bench))
    }

    const P: Variant = Variant::PLAINTEXT;
    const M: Variant = Variant::MTLS;

    #[test]
    fn default_is_http_through_the_mtls_mesh() {
        let p = plan(&[]).expect("parses");
        assert_eq!(
            p,
            Plan { protocols: vec![Proto::Http1, Proto::Http2], http: vec![M], handshake: vec![], tracing: None }
        );
        assert!(p.needs_identity() && p.needs_http_tools());
    }

    #[test]
    fn plaintext_and_compare_tls() {
        let p = plan(&["--plaintext", "--scenario", "all"]).expect("parses");
        assert!(!p.needs_identity());
        assert_eq!((p.http, p.handshake, p.tracing), (vec![P], vec![P], Some(P)));
        let p = plan(&["--compare-tls", "--protocol", "http2"]).expect("parses");
        assert_eq!((p.protocols, p.http), (vec![Proto::Http2], vec![P, M]));
        assert!(plan(&["--plaintext", "--compare-tls"]).is_err());
    }

    #[test]
    fn scenarios_are_chosen() {
        let p = plan(&["--scenario", "handshake"]).expect("parses");
        assert!(!p.needs_http_tools());
        assert_eq!((p.http, p.handshake, p.tracing), (vec![], vec![P, M], None));
        let p = plan(&["--scenario", "tracing", "--scenario", "http"]).expect("parses");
        assert_eq!((p.http, p.handshake, p.tracing), (vec![M], vec![], Some(M)));
        assert!(plan(&["--scenario", "nope"]).is_err());
        assert!(plan(&["--conn-rate", "0"]).is_err());
    }

    #[test]
    fn comparisons_against_baseline_then_the_previous_mesh() {
        let b = Variant::Baseline;
        assert_eq!(comparisons(&[b, M]), vec![(M, b)]);
        assert_eq!(comparisons(&[b, P, M]), vec![(P, b), (M, b), (M, P)]);
        assert_eq!(comparisons(&[b, M, M.traced()]), vec![(M, b), (M.traced(), b), (M.traced(), M)]);
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

    #[test]
    fn durations_in_whole_seconds() {
        assert_eq!(whole_seconds("10s"), Ok(10));
        assert_eq!(whole_seconds("7"), Ok(7));
        assert_eq!(whole_seconds("2m"), Ok(120));
        assert!(whole_seconds("500ms").is_err());
        assert!(whole_seconds("1.5s").is_err());
        assert!(whole_seconds("").is_err());
    }
}
