//! Typed configuration of the proxy, given as a value so tests can start
//! many proxies in one process.

use crate::balance::ewma::EwmaConfig;
use crate::http::server::ServerSettings;
use crate::pool::ClientSettings;
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;

/// Everything a proxy needs to start.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// This workload's name (`books-0`), for logs and the control plane.
    pub workload: String,
    /// The control plane's gRPC address (`http://127.0.0.1:8086`); without
    /// one, outbound targets can only be plain addresses (pass-through).
    #[serde(serialize_with = "url_without_credentials")]
    pub control_plane: Option<String>,
    /// Admin server: `/metrics`, `/ready`, `/live`, `/config`, `/shutdown`.
    pub admin_addr: SocketAddr,
    /// Workload identity and mTLS; without it the proxy speaks plaintext.
    pub identity: Option<IdentityConfig>,
    /// Traffic into the app.
    pub inbound: Option<InboundConfig>,
    /// Traffic from the app.
    pub outbound: OutboundConfig,
    /// Limits and timeouts.
    pub limits: Limits,
    /// Tracing and access logs.
    pub telemetry: TelemetryConfig,
    /// How long shutdown waits for in-flight work before exiting anyway.
    #[serde(with = "secs")]
    pub shutdown_grace: Duration,
    /// The app's kubelet probes the admin port performs (`/app-health/...`).
    pub app_probes: Vec<crate::app_probe::AppProbe>,
}

/// The inbound listener.
#[derive(Debug, Clone, Serialize)]
pub struct InboundConfig {
    /// Where peers (their proxies) connect.
    pub listen: SocketAddr,
    /// Where the app listens, for connections not redirected by iptables
    /// (universal mode on a shared host). Redirected connections go to their
    /// original destination.
    pub app: Option<SocketAddr>,
    /// App ports whose traffic is never sniffed (server-first protocols).
    pub opaque_ports: Vec<u16>,
    /// Whether plaintext is accepted (default: strict with identity,
    /// permissive without).
    pub mode: InboundMode,
    /// Per-port exceptions to `mode`.
    pub port_modes: Vec<(u16, InboundMode)>,
}

impl InboundConfig {
    /// The mode for connections to app port `port`.
    pub fn mode_for(&self, port: u16) -> InboundMode {
        self.port_modes.iter().find(|(p, _)| *p == port).map(|(_, m)| *m).unwrap_or(self.mode)
    }
}

/// What inbound accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InboundMode {
    /// Only mTLS from mesh peers; plaintext is refused.
    Strict,
    /// mTLS and plaintext (counted as such).
    Permissive,
}

impl std::str::FromStr for InboundMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "strict" => Ok(Self::Strict),
            "permissive" => Ok(Self::Permissive),
            other => Err(format!("invalid inbound mode {other:?}: use strict or permissive")),
        }
    }
}

/// Where the proxy gets its identity.
#[derive(Debug, Clone, Serialize)]
pub struct IdentityConfig {
    /// The proof presented to the control plane.
    pub token: TokenSource,
    /// Trust anchors (PEM) to verify the control plane with at start; the
    /// bundle is then kept current from the control plane.
    #[serde(skip)]
    pub trust_anchors_pem: String,
    /// The identity to ask for; by default the join token's subject.
    pub identity: Option<String>,
    /// The control plane's identity; by default
    /// `spiffe://<trust domain>/ns/mesh-system/sa/mesh-control`.
    pub control_plane_identity: Option<String>,
    /// Renew when this fraction of the certificate's life has passed.
    pub renew_at: f64,
}

/// A token, from a file (re-read at each renewal, as Kubernetes rotates
/// projected tokens) or given directly.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenSource {
    /// Read from this file.
    File(std::path::PathBuf),
    /// This value (never shown in `/config`).
    #[serde(serialize_with = "redacted")]
    Value(String),
}

fn redacted<S: serde::Serializer>(_: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("<redacted>")
}

/// A URL as `/config` shows it: credentials in it (`user:password@`) redacted.
fn url_without_credentials<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(u) => s.serialize_some(&redact_userinfo(u)),
        None => s.serialize_none(),
    }
}

/// `scheme://user:password@host/...` → `scheme://<redacted>@host/...`;
/// other URLs unchanged.
pub fn redact_userinfo(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => format!("{}<redacted>{}", &url[..start], &rest[at..]),
        None => url.to_string(),
    }
}

impl TokenSource {
    /// The current token.
    pub fn read(&self) -> std::io::Result<String> {
        match self {
            TokenSource::File(p) => std::fs::read_to_string(p).map(|t| t.trim().to_string()),
            TokenSource::Value(v) => Ok(v.clone()),
        }
    }
}

/// Outbound listeners.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OutboundConfig {
    /// Where iptables redirects the app's outgoing connections: IPv4's to
    /// `127.0.0.1:4140`, IPv6's to `[::1]:4140` (none: not transparent);
    /// each is routed by its original destination.
    pub transparent: Vec<SocketAddr>,
    /// Explicit upstreams (universal mode): the app connects to `listen`
    /// and the proxy routes to `target`.
    pub upstreams: Vec<Upstream>,
}

/// One explicit upstream: a local port standing for a mesh service.
#[derive(Debug, Clone, Serialize)]
pub struct Upstream {
    /// The local address the app connects to.
    pub listen: SocketAddr,
    /// The mesh target: `name.namespace:port` or `ip:port`.
    pub target: String,
}

/// Tracing and access logs.
#[derive(Debug, Clone, Serialize)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector (`http://host:4317`); tracing is off without one.
    #[serde(serialize_with = "url_without_credentials")]
    pub trace_collector: Option<String>,
    /// Share of traces this proxy starts that are recorded (a trace the app
    /// started keeps the app's decision).
    pub trace_sample_ratio: f64,
    /// Access log destination; off when `None`.
    pub access_log: Option<crate::telemetry::access_log::Sink>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { trace_collector: None, trace_sample_ratio: 1.0, access_log: None }
    }
}

/// Limits and timeouts, all configurable.
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    /// Protocol detection waits at most this long for the client's first bytes.
    #[serde(with = "secs")]
    pub detect_timeout: Duration,
    /// Connecting to an endpoint gives up after this long.
    #[serde(with = "secs")]
    pub connect_timeout: Duration,
    /// Requests wait this long for a live endpoint before failing.
    #[serde(with = "secs")]
    pub failfast_timeout: Duration,
    /// Opaque TCP connections close after this long without traffic.
    #[serde(with = "secs")]
    pub tcp_idle_timeout: Duration,
    /// A TLS handshake must finish within this time.
    #[serde(with = "secs")]
    pub tls_handshake_timeout: Duration,
    /// Server-side HTTP limits.
    #[serde(skip)]
    pub server: ServerSettings,
    /// Client-side HTTP settings.
    #[serde(skip)]
    pub client: ClientSettings,
    /// Load estimate tunables.
    #[serde(skip)]
    pub ewma: EwmaConfig,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            detect_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            failfast_timeout: Duration::from_secs(3),
            tcp_idle_timeout: Duration::from_secs(3600),
            tls_handshake_timeout: Duration::from_secs(10),
            server: ServerSettings::default(),
            client: ClientSettings::default(),
            ewma: EwmaConfig::default(),
        }
    }
}

impl Config {
    /// A proxy with default limits and ports, no listeners but admin.
    pub fn new(workload: impl Into<String>) -> Self {
        Self {
            workload: workload.into(),
            control_plane: None,
            identity: None,
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 4191)),
            inbound: None,
            outbound: OutboundConfig::default(),
            limits: Limits::default(),
            telemetry: TelemetryConfig::default(),
            shutdown_grace: Duration::from_secs(30),
            app_probes: Vec::new(),
        }
    }
}

mod secs {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::redact_userinfo;

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(redact_userinfo("http://user:pw@collector:4317/x@y"), "http://<redacted>@collector:4317/x@y");
        assert_eq!(redact_userinfo("https://tok@[::1]:8086"), "https://<redacted>@[::1]:8086");
        assert_eq!(redact_userinfo("http://127.0.0.1:8086"), "http://127.0.0.1:8086");
        assert_eq!(redact_userinfo("http://host/path?q=a@b"), "http://host/path?q=a@b");
        assert_eq!(redact_userinfo("a:b@host:1"), "<redacted>@host:1");
    }
}
