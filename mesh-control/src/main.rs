//! `mesh-control`: the control plane binary (a thin CLI over the library).

use anyhow::Context;
use clap::Parser;
use mesh_control::webhook::WebhookSettings;
use mesh_control::{Config, Control, IdentityConfig, RegistryConfig, Timeouts, WebhookConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The mesh control plane: serves discovery (and, later, identity and policy) to proxies.
#[derive(Debug, Parser)]
#[command(name = "mesh-control", version)]
struct Args {
    /// Where services come from: `file` (universal mode, --registry-file) or
    /// `kubernetes` (Services and EndpointSlices; --kubeconfig, --context).
    #[arg(long, env = "MESH_REGISTRY", value_enum, default_value = "file")]
    registry: RegistryKind,
    /// Registry file (universal mode): services, ports and endpoints in YAML.
    #[arg(long, env = "MESH_REGISTRY_FILE", required_if_eq("registry", "file"))]
    registry_file: Option<PathBuf>,
    /// Kubeconfig for `--registry kubernetes` (default: $KUBECONFIG,
    /// ~/.kube/config, or the pod's service account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context for `--registry kubernetes` (default: the current one).
    #[arg(long)]
    context: Option<String>,
    /// How often to check the registry file for changes, e.g. 200ms.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    registry_poll: Duration,
    /// Address of the proxy-facing gRPC API.
    #[arg(long, env = "MESH_GRPC_ADDR", default_value = "0.0.0.0:8086")]
    grpc_addr: SocketAddr,
    /// Address of the admin server (/metrics, /ready, /live).
    #[arg(long, env = "MESH_ADMIN_ADDR", default_value = "0.0.0.0:9990")]
    admin_addr: SocketAddr,
    /// Identity directory (trust anchors, issuer, token key; see `meshctl identity init`).
    /// With it the control plane is the mesh's CA and serves its API over TLS.
    #[arg(long, env = "MESH_IDENTITY_DIR")]
    identity_dir: Option<PathBuf>,
    /// Lifetime of workload certificates, e.g. 24h (down to seconds for tests).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    cert_ttl: Duration,
    /// Serve the sidecar injector (mutating admission webhook) on this
    /// address, e.g. 0.0.0.0:8443 (needs --identity-dir and --registry kubernetes).
    #[arg(long, env = "MESH_WEBHOOK_ADDR")]
    webhook_addr: Option<SocketAddr>,
    /// Where the injected proxy image comes from.
    #[arg(long, default_value = mesh_kube::inject::DEFAULT_REGISTRY)]
    proxy_registry: String,
    /// The injected proxy image's tag.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    proxy_version: String,
    /// The mesh's namespace (never injected).
    #[arg(long, default_value = "mesh-system")]
    mesh_namespace: String,
    /// The control plane's address as injected proxies dial it (default: its
    /// Service in --mesh-namespace, port 8086).
    #[arg(long)]
    injected_control_plane: Option<String>,
    /// With `--registry kubernetes`: the audience of the projected
    /// ServiceAccount tokens proxies present (the `audience` of the pods'
    /// projected token volume), checked with TokenReview.
    #[arg(long, env = "MESH_TOKEN_AUDIENCE", default_value = mesh_kube::identity::DEFAULT_AUDIENCE)]
    token_audience: String,
    /// A gRPC client's TLS handshake and HTTP/2 preface must arrive within this time.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    tls_handshake_timeout: Duration,
    /// Admin clients must send request headers within this time.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    header_read_timeout: Duration,
}

/// The registry sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RegistryKind {
    /// A YAML file (universal mode).
    File,
    /// The Kubernetes API.
    Kubernetes,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    mesh_core::duration::parse(s).map_err(|e| e.to_string())
}

fn main() -> std::process::ExitCode {
    // Errors are for people: the message and its causes, no backtrace.
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(real_main()));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", mesh_core::render_error(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn real_main() -> anyhow::Result<()> {
    mesh_core::trace::init("MESH_LOG", "info");
    let args = Args::parse();
    let registry = match (args.registry, args.registry_file) {
        (RegistryKind::File, Some(path)) => RegistryConfig::File { path, poll_interval: args.registry_poll },
        (RegistryKind::File, None) => anyhow::bail!("--registry file needs --registry-file PATH"),
        (RegistryKind::Kubernetes, _) => {
            RegistryConfig::Kubernetes { kubeconfig: args.kubeconfig, context: args.context }
        }
    };
    let config = Config {
        grpc_addr: args.grpc_addr,
        admin_addr: args.admin_addr,
        registry,
        identity: args.identity_dir.map(|dir| IdentityConfig {
            leaf_ttl: args.cert_ttl,
            token_audience: args.token_audience,
            ..IdentityConfig::new(dir)
        }),
        webhook: args.webhook_addr.map(|addr| WebhookConfig {
            addr,
            settings: WebhookSettings {
                registry: args.proxy_registry,
                proxy_version: args.proxy_version,
                mesh_namespace: args.mesh_namespace,
                control_plane: args.injected_control_plane,
            },
        }),
        timeouts: Timeouts { tls_handshake: args.tls_handshake_timeout, header_read: args.header_read_timeout },
    };
    let control = Control::start(config).await.context("mesh-control could not start")?;
    let signal = mesh_core::shutdown::os_signal().await.context("cannot install signal handlers")?;
    tracing::info!(signal, "shutting down");
    control.shutdown().await;
    Ok(())
}
