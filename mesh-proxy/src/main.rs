//! `mesh-proxy`: the sidecar binary (a thin CLI over the library).

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use mesh_proxy::config::{IdentityConfig, InboundConfig, InboundMode, TokenSource, Upstream};
use mesh_proxy::init;
use mesh_proxy::{Config, Proxy};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The mesh sidecar proxy.
///
/// Transparent mode: `mesh-proxy init` installs iptables rules in the
/// workload's network namespace, then `mesh-proxy --transparent ...` (run as
/// the UID given to init) takes every inbound and outbound TCP connection.
///
/// Universal mode without iptables: put an app behind the proxy with `--app`
/// (peers connect to `--inbound-addr`), and let the app reach mesh services
/// through local ports with `--upstream 127.0.0.1:4150=books.default:7001`.
#[derive(Debug, Parser)]
#[command(name = "mesh-proxy", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: Args,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install (or with --cleanup remove) the iptables rules that redirect
    /// this network namespace's TCP traffic through the proxy.
    Init(InitArgs),
}

/// `mesh-proxy init` options.
#[derive(Debug, clap::Args)]
struct InitArgs {
    /// The UID the proxy runs as; its own connections are not redirected.
    #[arg(long, default_value_t = 2102)]
    proxy_uid: u32,
    /// The proxy's inbound port.
    #[arg(long, default_value_t = 4143)]
    inbound_port: u16,
    /// The proxy's outbound port.
    #[arg(long, default_value_t = 4140)]
    outbound_port: u16,
    /// The proxy's admin port (never redirected).
    #[arg(long, default_value_t = 4191)]
    admin_port: u16,
    /// Inbound ports to leave alone, comma-separated.
    #[arg(long, value_delimiter = ',')]
    skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports to leave alone, comma-separated.
    #[arg(long, value_delimiter = ',')]
    skip_outbound_ports: Vec<u16>,
    /// Inbound source networks to leave alone (CIDRs), comma-separated.
    #[arg(long, value_delimiter = ',')]
    skip_inbound_cidrs: Vec<String>,
    /// Outbound destination networks to leave alone (CIDRs), comma-separated.
    #[arg(long, value_delimiter = ',')]
    skip_outbound_cidrs: Vec<String>,
    /// Do not redirect inbound traffic.
    #[arg(long)]
    no_inbound: bool,
    /// Do not redirect outbound traffic.
    #[arg(long)]
    no_outbound: bool,
    /// Print the rules instead of installing them.
    #[arg(long)]
    dry_run: bool,
    /// Remove the rules init installed.
    #[arg(long)]
    cleanup: bool,
    /// iptables implementation: auto (nft where present, else legacy), nft, legacy.
    #[arg(long, default_value = "auto")]
    backend: init::Backend,
    /// Configure IPv6 too: on, off, or auto (when the namespace has IPv6).
    #[arg(long, value_enum, default_value_t = Ipv6Mode::Auto)]
    ipv6: Ipv6Mode,
}

/// Whether init configures ip6tables.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Ipv6Mode {
    Auto,
    On,
    Off,
}

fn run_init(a: &InitArgs) -> anyhow::Result<()> {
    let mut skip_inbound = a.skip_inbound_ports.clone();
    skip_inbound.push(a.admin_port);
    let rules = init::rules::Rules {
        proxy_uid: a.proxy_uid,
        inbound_port: a.inbound_port,
        outbound_port: a.outbound_port,
        skip_inbound_ports: skip_inbound,
        skip_outbound_ports: a.skip_outbound_ports.clone(),
        skip_inbound_cidrs: a.skip_inbound_cidrs.clone(),
        skip_outbound_cidrs: a.skip_outbound_cidrs.clone(),
        inbound: !a.no_inbound,
        outbound: !a.no_outbound,
    };
    let opts = init::Options {
        rules,
        dry_run: a.dry_run,
        cleanup: a.cleanup,
        backend: a.backend,
        ipv6: match a.ipv6 {
            Ipv6Mode::Auto => None,
            Ipv6Mode::On => Some(true),
            Ipv6Mode::Off => Some(false),
        },
    };
    for line in init::execute(&opts)? {
        println!("{line}");
    }
    Ok(())
}

/// Options of the proxy itself.
#[derive(Debug, clap::Args)]
struct Args {
    /// This workload's name, for logs and the control plane.
    #[arg(long, env = "MESH_WORKLOAD", default_value = "workload")]
    workload: String,
    /// The control plane's gRPC address, e.g. http://127.0.0.1:8086.
    #[arg(long, env = "MESH_CONTROL_PLANE")]
    control_plane: Option<String>,
    /// Admin server address (/metrics, /ready, /live, /config, /shutdown).
    #[arg(long, env = "MESH_ADMIN_ADDR", default_value = "127.0.0.1:4191")]
    admin_addr: SocketAddr,
    /// The app's address: inbound traffic is forwarded there.
    #[arg(long, env = "MESH_APP_ADDR")]
    app: Option<SocketAddr>,
    /// Take connections redirected by `mesh-proxy init`: inbound on
    /// --inbound-addr, outbound on --outbound-addr, each to its original destination.
    #[arg(long, env = "MESH_TRANSPARENT")]
    transparent: bool,
    /// Transparent outbound listeners (with --transparent), comma-separated
    /// or repeated: where init's rules redirect IPv4 and IPv6 connections
    /// (the IPv6 one is skipped where the namespace has no IPv6).
    #[arg(long, env = "MESH_OUTBOUND_ADDR", value_delimiter = ',', default_value = "127.0.0.1:4140,[::1]:4140")]
    outbound_addr: Vec<SocketAddr>,
    /// Inbound listener address (with --app or --transparent). The default,
    /// `[::]:4143`, takes IPv4 and IPv6 (IPv4 only where the kernel has no IPv6).
    #[arg(long, env = "MESH_INBOUND_ADDR", default_value = "[::]:4143")]
    inbound_addr: SocketAddr,
    /// An explicit upstream, LISTEN=TARGET (repeatable), e.g. 127.0.0.1:4150=books.default:7001.
    #[arg(long = "upstream", value_parser = parse_upstream)]
    upstreams: Vec<Upstream>,
    /// Identity token file: enables identity and mTLS. A join token (`meshctl identity token`), or on
    /// Kubernetes the pod's projected ServiceAccount token for the mesh's audience (then give --identity).
    /// Read again at each bootstrap, as the kubelet rotates it.
    #[arg(long, env = "MESH_IDENTITY_TOKEN_FILE", requires = "anchors")]
    identity_token_file: Option<PathBuf>,
    /// Trust anchors (PEM file) to verify the control plane with at start.
    #[arg(long, env = "MESH_TRUST_ANCHORS", group = "anchors")]
    trust_anchors: Option<PathBuf>,
    /// The trust anchors themselves (PEM text), instead of a file: how the
    /// injector passes them to a pod.
    #[arg(long, env = "MESH_TRUST_ANCHORS_PEM", group = "anchors", hide_env_values = true, allow_hyphen_values = true)]
    trust_anchors_pem: Option<String>,
    /// The identity to request (default: the join token's subject). On Kubernetes:
    /// spiffe://<trust-domain>/ns/<pod namespace>/sa/<pod service account>.
    #[arg(long, env = "MESH_IDENTITY")]
    identity: Option<String>,
    /// The control plane's identity (default: spiffe://<trust-domain>/ns/mesh-system/sa/mesh-control).
    #[arg(long)]
    control_plane_identity: Option<String>,
    /// Renew the certificate when this fraction of its life has passed.
    #[arg(long, default_value_t = 0.7)]
    renew_at: f64,
    /// Inbound mode: strict (mTLS only) or permissive (plaintext accepted too).
    /// Default: strict with identity, permissive without.
    #[arg(long)]
    inbound_mode: Option<InboundMode>,
    /// A per-port inbound mode, PORT=strict|permissive (repeatable).
    #[arg(long = "inbound-port-mode", value_parser = parse_port_mode)]
    inbound_port_modes: Vec<(u16, InboundMode)>,
    /// OTLP/gRPC trace collector, e.g. http://127.0.0.1:4317 (tracing is off without one).
    #[arg(long, env = "MESH_TRACE_COLLECTOR")]
    trace_collector: Option<String>,
    /// Share of traces this proxy starts that are recorded (0.0-1.0).
    #[arg(long, default_value_t = 1.0)]
    trace_sample_ratio: f64,
    /// Access log: stdout, stderr or a file path (off by default).
    #[arg(long, env = "MESH_ACCESS_LOG")]
    access_log: Option<mesh_proxy::telemetry::access_log::Sink>,
    /// App ports never sniffed for a protocol (server-first protocols), comma-separated.
    #[arg(long, env = "MESH_OPAQUE_PORTS", value_delimiter = ',')]
    opaque_ports: Vec<u16>,
    /// How long protocol detection waits for a client's first bytes.
    #[arg(long, default_value = "1s", value_parser = duration)]
    detect_timeout: Duration,
    /// Connect timeout to endpoints.
    #[arg(long, default_value = "1s", value_parser = duration)]
    connect_timeout: Duration,
    /// How long a request waits for a live endpoint before failing.
    #[arg(long, default_value = "3s", value_parser = duration)]
    failfast_timeout: Duration,
    /// Close HTTP connections idle this long.
    #[arg(long, default_value = "300s", value_parser = duration)]
    idle_timeout: Duration,
    /// Close opaque TCP connections idle this long.
    #[arg(long, default_value = "1h", value_parser = duration)]
    tcp_idle_timeout: Duration,
    /// No new requests go on a connection to an endpoint older than this; it
    /// is replaced gracefully (requests in flight finish). mTLS connections
    /// are replaced sooner when the peer's certificate expires and as soon
    /// as this proxy's certificate is renewed or its trust bundle changes;
    /// this bound covers the rest (plaintext, a peer's authorization that
    /// changed without a certificate change).
    #[arg(long, default_value = "1h", value_parser = duration)]
    max_connection_age: Duration,
    /// Clients must send request headers within this time (the admin port:
    /// this, at most 5s).
    #[arg(long, default_value = "10s", value_parser = duration)]
    header_read_timeout: Duration,
    /// A peer's mTLS handshake (inbound) must finish within this time.
    #[arg(long, default_value = "10s", value_parser = duration)]
    tls_handshake_timeout: Duration,
    /// Largest accepted request/response header block, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    max_header_bytes: usize,
    /// How long shutdown waits for in-flight work.
    #[arg(long, default_value = "30s", value_parser = duration)]
    shutdown_grace: Duration,
    /// The app's kubelet probes to serve under /app-health/ on the admin
    /// port (JSON, written by the injector).
    #[arg(long, env = "MESH_APP_PROBES", hide_env_values = true, value_parser = app_probes)]
    app_probes: Option<AppProbes>,
    /// Worker threads (1: a single-threaded runtime, the leanest).
    #[arg(long, env = "MESH_PROXY_THREADS", default_value_t = 1)]
    threads: usize,
}

/// `--app-probes`, parsed (a newtype: clap would read a bare `Vec` as repeated values).
#[derive(Debug, Clone)]
struct AppProbes(Vec<mesh_proxy::app_probe::AppProbe>);

fn app_probes(s: &str) -> Result<AppProbes, String> {
    mesh_proxy::app_probe::parse(s).map(AppProbes).map_err(|e| e.to_string())
}

fn duration(s: &str) -> Result<Duration, String> {
    mesh_core::duration::parse(s).map_err(|e| e.to_string())
}

fn parse_port_mode(s: &str) -> Result<(u16, InboundMode), String> {
    let (port, mode) =
        s.split_once('=').ok_or_else(|| format!("invalid port mode {s:?}: expected PORT=strict|permissive"))?;
    let port: u16 = port.parse().map_err(|_| format!("invalid port {port:?} in {s:?}"))?;
    Ok((port, mode.parse()?))
}

fn parse_upstream(s: &str) -> Result<Upstream, String> {
    let (listen, target) = s.split_once('=').ok_or_else(|| {
        format!("invalid upstream {s:?}: expected LISTEN=TARGET, e.g. 127.0.0.1:4150=books.default:7001")
    })?;
    let listen: SocketAddr = listen.parse().map_err(|e| format!("invalid upstream listen address {listen:?}: {e}"))?;
    if target.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
        return Err(format!("invalid upstream target {target:?}: expected name.namespace:port or ip:port"));
    }
    Ok(Upstream { listen, target: target.to_string() })
}

fn config(args: &Args) -> anyhow::Result<Config> {
    let mut c = Config::new(args.workload.clone());
    c.control_plane = args.control_plane.clone();
    c.admin_addr = args.admin_addr;
    if let Some(token) = &args.identity_token_file {
        let pem = match (&args.trust_anchors, &args.trust_anchors_pem) {
            (Some(file), _) => std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the trust anchors {}", file.display()))?,
            (None, Some(pem)) => pem.clone(),
            (None, None) => anyhow::bail!("--identity-token-file needs --trust-anchors or --trust-anchors-pem"),
        };
        c.identity = Some(IdentityConfig {
            token: TokenSource::File(token.clone()),
            trust_anchors_pem: pem,
            identity: args.identity.clone(),
            control_plane_identity: args.control_plane_identity.clone(),
            renew_at: args.renew_at,
        });
    }
    let default_mode = if c.identity.is_some() { InboundMode::Strict } else { InboundMode::Permissive };
    if args.transparent {
        c.outbound.transparent = args.outbound_addr.clone();
    }
    c.inbound = (args.app.is_some() || args.transparent).then(|| InboundConfig {
        listen: args.inbound_addr,
        app: args.app,
        opaque_ports: args.opaque_ports.clone(),
        mode: args.inbound_mode.unwrap_or(default_mode),
        port_modes: args.inbound_port_modes.clone(),
    });
    c.outbound.upstreams = args.upstreams.clone();
    c.limits.detect_timeout = args.detect_timeout;
    c.limits.connect_timeout = args.connect_timeout;
    c.limits.failfast_timeout = args.failfast_timeout;
    c.limits.tcp_idle_timeout = args.tcp_idle_timeout;
    c.limits.tls_handshake_timeout = args.tls_handshake_timeout;
    c.limits.server.idle_timeout = args.idle_timeout;
    c.limits.server.header_read_timeout = args.header_read_timeout;
    c.limits.server.max_header_bytes = args.max_header_bytes;
    c.limits.client.max_header_bytes = args.max_header_bytes;
    c.limits.client.max_connection_age = args.max_connection_age;
    c.shutdown_grace = args.shutdown_grace;
    c.app_probes = args.app_probes.clone().map(|p| p.0).unwrap_or_default();
    c.telemetry.trace_collector = args.trace_collector.clone();
    c.telemetry.trace_sample_ratio = args.trace_sample_ratio.clamp(0.0, 1.0);
    c.telemetry.access_log = args.access_log.clone();
    Ok(c)
}

fn main() -> std::process::ExitCode {
    // Errors are for people: the message and its causes, no backtrace.
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", mesh_core::render_error(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    mesh_core::trace::init("MESH_LOG", "info");
    let cli = Cli::parse();
    if let Some(Command::Init(a)) = &cli.command {
        return run_init(a);
    }
    let args = cli.args;
    if args.app.is_none() && args.upstreams.is_empty() && !args.transparent {
        bail!(
            "nothing to proxy: give --transparent (after `mesh-proxy init`), --app (inbound) and/or --upstream LISTEN=TARGET (outbound)"
        );
    }
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()
    }
    .context("cannot start the async runtime")?;
    runtime.block_on(run(config(&args)?))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let proxy = Proxy::start(config).await.context("mesh-proxy could not start")?;
    tokio::select! {
        sig = mesh_core::shutdown::os_signal() => {
            let sig = sig.context("cannot install signal handlers")?;
            tracing::info!(signal = sig, "shutting down");
        }
        _ = proxy.triggered() => {}
    }
    if !proxy.shutdown().await {
        tracing::warn!("exited with connections still open after the grace period");
    }
    Ok(())
}

// The C math functions the proxy calls (`exp`: the balancer's decaying
// load estimate; `pow`: tokio's multi-thread scheduler), defined here from
// the `libm` crate (Rust, musl's algorithms) so that the linker finds
// nothing left for the system libm and does not make the binary load it:
// the loader resolves libm's many IFUNCs at start-up, which kept ≈0.3 MiB
// of its pages resident in every proxy for two functions. The bound
// `an_idle_proxy_is_one_thread_without_libm` (tests/suites/process.rs)
// keeps it so.

/// `exp(3)` for the whole binary (see above). `no_mangle` counts as unsafe
/// code because it can clash with another definition: libm is no longer
/// linked, and nothing else defines these.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn exp(x: f64) -> f64 {
    libm::exp(x)
}

/// `pow(3)` for the whole binary (see above).
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

#[cfg(test)]
mod tests {
    use super::{Cli, config};
    use clap::{CommandFactory, Parser};

    /// Catches `pow`'s arguments swapped or a wrong function behind either
    /// symbol (the whole binary, tokio and the balancer, calls these).
    #[test]
    fn exp_and_pow_are_the_c_functions() {
        assert!((super::exp(1.0) - std::f64::consts::E).abs() < 1e-15);
        assert_eq!(super::exp(0.0), 1.0);
        assert_eq!(super::pow(2.0, 10.0), 1024.0);
        assert!((super::pow(0.9, 3.5) - 0.691_590_124_278_824_6).abs() < 1e-12, "{}", super::pow(0.9, 3.5));
    }

    /// Catches a command line clap refuses at run time (duplicate names, a
    /// group that does not exist), which would only show when the proxy starts.
    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// Catches the injector's way of passing trust anchors (PEM text, no
    /// file) being ignored — the proxy would start without identity — and
    /// both ways given at once being accepted.
    #[test]
    fn trust_anchors_come_from_a_file_or_from_pem_text() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let cli = Cli::try_parse_from(["mesh-proxy", "--identity-token-file", "/t", "--trust-anchors-pem", pem])
            .expect("parses");
        let c = config(&cli.args).expect("a config");
        assert_eq!(c.identity.expect("identity on").trust_anchors_pem, pem);
        let both = ["mesh-proxy", "--identity-token-file", "/t", "--trust-anchors", "/a", "--trust-anchors-pem", pem];
        assert!(Cli::try_parse_from(both).is_err(), "one source of anchors, not two");
        assert!(Cli::try_parse_from(["mesh-proxy", "--identity-token-file", "/t"]).is_err(), "anchors are required");
    }
}
