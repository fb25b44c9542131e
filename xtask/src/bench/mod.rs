//! `cargo xtask bench`: the proxy's cost per hop, measured on loopback.
//!
//! nginx is the backend. Each scenario runs a load generator against nginx
//! directly (baseline) and through a client-side and a server-side
//! `mesh-proxy` (mesh), interleaved over several rounds because a small
//! shared machine is noisy. Reported: latency at a fixed rate and the added
//! latency, throughput at max rate, CPU time per request of each proxy (from
//! `/proc/PID/stat`) and each proxy's memory. Nothing is asserted: this is a
//! measurement tool.

mod loadgen;
mod parse;
mod procs;
mod report;
mod topology;

use crate::cargo;
use anyhow::{Context, bail};
use loadgen::{Load, Mode, Proto, Tools};
use procs::{Proc, TempDir};
use report::{ProtoResult, Report, Run, Scenario, Variant};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use topology::{Bins, Mesh, Nginx};

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Length of each measured run, in whole seconds (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = whole_seconds)]
    duration: u64,
    /// Total request rate of the fixed-rate runs, in requests per second.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    rate: u32,
    /// Concurrent connections of every run.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// Rounds of (baseline, mesh) per scenario.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Unmeasured max-rate warm-up of each path before its protocol's runs (0s: none).
    #[arg(long, default_value = "1s", value_parser = whole_seconds)]
    warmup: u64,
    /// Worker threads of each proxy (`mesh-proxy --threads`).
    #[arg(long, default_value_t = 1)]
    proxy_threads: usize,
    /// Protocols to measure (default: both).
    #[arg(long = "protocol", value_enum)]
    protocols: Vec<ProtoArg>,
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

/// Runs the benchmark and prints its report.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.duration == 0 {
        bail!("--duration must be at least 1s");
    }
    let tools = Tools::find()?;
    let nginx_bin = loadgen::require("nginx", "nginx")?;
    if !args.no_build {
        cargo::run_step(&mut cargo::cargo(&["build", "--release", "-p", "mesh-proxy", "-p", "mesh-control"]))?;
    }
    let bins = Bins { proxy: cargo::release_bin("mesh-proxy")?, control: cargo::release_bin("mesh-control")? };
    let scratch = TempDir::new("xtask-bench")?;
    let nginx = Nginx::start(&nginx_bin, scratch.path()).context("cannot start the nginx backend")?;
    let protocols: Vec<Proto> = if args.protocols.is_empty() {
        vec![Proto::Http1, Proto::Http2]
    } else {
        [ProtoArg::Http1, ProtoArg::Http2]
            .into_iter()
            .filter(|p| args.protocols.contains(p))
            .map(|p| if p == ProtoArg::Http1 { Proto::Http1 } else { Proto::Http2 })
            .collect()
    };
    let mut results = Vec::new();
    for proto in protocols {
        results.push(bench_protocol(args, &tools, &bins, &nginx, proto, scratch.path())?);
    }
    let report = Report {
        duration_secs: args.duration,
        rounds: args.rounds,
        connections: args.connections,
        proxy_threads: args.proxy_threads,
        results,
    };
    if args.json {
        println!("{:#}", report.json());
    } else {
        print!("\n{}", report.table());
    }
    Ok(())
}

/// CPU ticks used so far by the client proxy, the server proxy and nginx.
fn cpu_now(mesh: &Mesh, nginx: &Nginx) -> anyhow::Result<[u64; 3]> {
    let [client, server] = mesh.proxies();
    Ok([procs::cpu_ticks(client.pid())?, procs::cpu_ticks(server.pid())?, procs::cpu_ticks(nginx.pid())?])
}

fn describe(mode: Mode) -> String {
    match mode {
        Mode::Fixed(rate) => format!("{rate} req/s"),
        Mode::Max => "max rate".into(),
    }
}

/// Starts a mesh for `proto` and runs its scenarios, interleaving baseline
/// and mesh runs.
fn bench_protocol(
    args: &BenchArgs,
    tools: &Tools,
    bins: &Bins,
    nginx: &Nginx,
    proto: Proto,
    dir: &Path,
) -> anyhow::Result<ProtoResult> {
    eprintln!("==> {}: starting mesh-control and two proxies", proto.label());
    let mut mesh = Mesh::start(bins, nginx.addr(proto), proto, args.proxy_threads, dir)
        .with_context(|| format!("cannot start the mesh for {}", proto.label()))?;
    let paths: [(Variant, SocketAddr); 2] = [(Variant::Baseline, nginx.addr(proto)), (Variant::Mesh, mesh.entry)];
    let load = |mode, secs| Load { proto, mode, connections: args.connections, duration: Duration::from_secs(secs) };

    if args.warmup > 0 {
        for (variant, addr) in paths {
            let sample = tools.run(&load(Mode::Max, args.warmup), addr, dir)?;
            mesh.check_alive().context("a mesh process died during the warm-up")?;
            if sample.ok == 0 {
                bail!(
                    "{} warm-up through the {variant:?} path got no successful response ({} failed)\n{}",
                    proto.label(),
                    sample.errors,
                    mesh.log_tails()
                );
            }
        }
    }

    let mut scenarios = Vec::new();
    for mode in [Mode::Fixed(args.rate), Mode::Max] {
        let load = load(mode, args.duration);
        let tool = tools.name(&load);
        let mut runs = Vec::new();
        for round in 1..=args.rounds {
            for (variant, addr) in paths {
                let before = cpu_now(&mesh, nginx)?;
                let sample = tools.run(&load, addr, dir)?;
                let after = cpu_now(&mesh, nginx)?;
                mesh.check_alive()
                    .with_context(|| format!("a mesh process died during a {variant:?} run\n{}", mesh.log_tails()))?;
                let cpu_ticks: [u64; 3] = std::array::from_fn(|i| after[i].saturating_sub(before[i]));
                eprintln!(
                    "  {} {} via {tool}, round {round}/{}, {variant:?}: {:.0} req/s, p50 {}, p99 {}, {} ok, {} failed, CPU ticks (client proxy, server proxy, nginx) {cpu_ticks:?}",
                    proto.label(),
                    describe(mode),
                    args.rounds,
                    sample.rps,
                    sample.p50_us.map_or("-".into(), |v| format!("{v:.0}µs")),
                    sample.p99_us.map_or("-".into(), |v| format!("{v:.0}µs")),
                    sample.ok,
                    sample.errors,
                );
                runs.push(Run { round, variant, sample, cpu_ticks });
                // Let sockets from the last run close before the next one.
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        scenarios.push(Scenario { mode, tool, runs });
    }
    let [client, server]: [&Proc; 2] = mesh.proxies();
    let memory = [procs::memory(client.pid())?, procs::memory(server.pid())?];
    Ok(ProtoResult { proto, scenarios, memory })
}

#[cfg(test)]
mod tests {
    use super::whole_seconds;

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
