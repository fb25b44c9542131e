//! Typed configuration of the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the control plane needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// The proxy-facing gRPC API (default `0.0.0.0:8086`).
    pub grpc_addr: SocketAddr,
    /// Metrics and health (default `0.0.0.0:9990`).
    pub admin_addr: SocketAddr,
    /// Where services and endpoints come from.
    pub registry: RegistryConfig,
    /// The CA; without it the mesh runs without identity (plaintext).
    pub identity: Option<IdentityConfig>,
    /// The sidecar injector (admission webhook); needs identity (its TLS
    /// certificate) and the Kubernetes registry (namespaces).
    pub webhook: Option<WebhookConfig>,
    /// How long a client may take before it is cut off.
    pub timeouts: Timeouts,
}

/// The injector's listener and what it injects.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where it listens (default `0.0.0.0:8443`).
    pub addr: SocketAddr,
    /// What it adds to pods.
    pub settings: crate::webhook::WebhookSettings,
}

/// Deadlines for clients that connect and then stall.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A gRPC client's TLS handshake, and its HTTP/2 preface after it, must
    /// arrive within this time.
    pub tls_handshake: Duration,
    /// An admin client must send a request's headers within this time.
    pub header_read: Duration,
}

impl Default for Timeouts {
    /// 10 s for a handshake, 5 s for admin request headers.
    fn default() -> Self {
        Self { tls_handshake: Duration::from_secs(10), header_read: Duration::from_secs(5) }
    }
}

/// The identity service's configuration.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// The identity directory (see `mesh_identity::dir`).
    pub dir: PathBuf,
    /// Lifetime of issued leaf certificates.
    pub leaf_ttl: Duration,
    /// How often to check the directory for rotations.
    pub poll_interval: Duration,
    /// With the Kubernetes registry: the audience proxies' projected
    /// ServiceAccount tokens must be minted for (their pod's projected volume
    /// names it), checked by TokenReview.
    pub token_audience: String,
}

impl IdentityConfig {
    /// Defaults: 24 h leaves, directory checked every second, projected
    /// tokens for the audience `mesh` (what the injector mounts).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            leaf_ttl: Duration::from_secs(24 * 3600),
            poll_interval: Duration::from_secs(1),
            token_audience: mesh_kube::identity::DEFAULT_AUDIENCE.to_string(),
        }
    }
}

/// Which registry feeds the store.
#[derive(Debug, Clone)]
pub enum RegistryConfig {
    /// A YAML file, polled for changes.
    File {
        /// The file.
        path: PathBuf,
        /// How often to check it for changes.
        poll_interval: Duration,
    },
    /// The Kubernetes API: Services and EndpointSlices (see `mesh_kube::registry`).
    Kubernetes {
        /// A kubeconfig file; `$KUBECONFIG`, `~/.kube/config` or the pod's
        /// service account when `None`.
        kubeconfig: Option<PathBuf>,
        /// A context of the kubeconfig; its current context when `None`.
        context: Option<String>,
    },
}

impl Config {
    /// Default ports with the Kubernetes registry.
    pub fn with_kubernetes(kubeconfig: Option<PathBuf>, context: Option<String>) -> Self {
        Self { registry: RegistryConfig::Kubernetes { kubeconfig, context }, ..Self::with_file("") }
    }

    /// Default ports with a file registry at `path`.
    pub fn with_file(path: impl Into<PathBuf>) -> Self {
        Self {
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], 8086)),
            admin_addr: SocketAddr::from(([0, 0, 0, 0], 9990)),
            registry: RegistryConfig::File { path: path.into(), poll_interval: Duration::from_millis(200) },
            identity: None,
            webhook: None,
            timeouts: Timeouts::default(),
        }
    }
}
