//! A mesh in one process: the control plane with a file registry in a temp
//! dir, and proxies started from the library with configuration values.

use mesh_control::{Config as ControlConfig, Control};
use mesh_identity::dir::IdentityDir;
use mesh_proxy::config::{IdentityConfig, InboundConfig, InboundMode, TokenSource, Upstream};
use mesh_proxy::{Config as ProxyConfig, Proxy};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// One service in a generated registry.
#[derive(Debug, Clone)]
pub struct Svc {
    /// Service name (namespace `default`).
    pub name: String,
    /// Service port.
    pub port: u16,
    /// Protocol hint: `http`, `http2`, `grpc`, `opaque`, `detect`.
    pub protocol: String,
    /// Endpoint addresses (the replicas' proxies' inbound addresses).
    pub endpoints: Vec<SocketAddr>,
}

impl Svc {
    /// A service with endpoints.
    pub fn new(name: &str, port: u16, protocol: &str, endpoints: &[SocketAddr]) -> Self {
        Self { name: name.into(), port, protocol: protocol.into(), endpoints: endpoints.to_vec() }
    }
}

/// The registry file of these services.
pub fn registry(services: &[Svc]) -> mesh_spec::RegistryFile {
    let services = services
        .iter()
        .map(|s| mesh_spec::Service {
            ports: vec![mesh_spec::Port { protocol: Some(s.protocol.clone()), ..mesh_spec::Port::new(s.port) }],
            endpoints: s.endpoints.iter().map(|&e| mesh_spec::Endpoint::address(e)).collect(),
            ..mesh_spec::Service::new(&s.name)
        })
        .collect();
    mesh_spec::RegistryFile { services, ..Default::default() }
}

/// Renders a registry YAML.
pub fn registry_yaml(services: &[Svc]) -> String {
    mesh_spec::to_yaml(&registry(services))
}

/// The control plane and its registry file.
pub struct Mesh {
    dir: tempfile::TempDir,
    control: Option<Control>,
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
    identity: Option<(IdentityDir, Duration)>,
    token_ttl: Duration,
}

impl Mesh {
    /// Writes the registry and starts the control plane on ephemeral ports,
    /// without identity (plaintext mesh).
    pub async fn start(services: &[Svc]) -> Self {
        Self::start_inner(services, None).await
    }

    /// Starts a mesh with a CA: a fresh identity directory, leaves living
    /// `cert_ttl`, TLS to the control plane and mTLS between proxies.
    pub async fn start_secure(services: &[Svc], cert_ttl: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let id = IdentityDir::new(dir.path().join("identity"));
        id.init("mesh.test", None).unwrap();
        Self::start_inner_in(dir, services, Some((id, cert_ttl))).await
    }

    async fn start_inner(services: &[Svc], identity: Option<(IdentityDir, Duration)>) -> Self {
        Self::start_inner_in(tempfile::tempdir().unwrap(), services, identity).await
    }

    async fn start_inner_in(
        dir: tempfile::TempDir,
        services: &[Svc],
        identity: Option<(IdentityDir, Duration)>,
    ) -> Self {
        crate::init_logs();
        let mut mesh = Self {
            dir,
            control: None,
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            identity,
            token_ttl: Duration::from_secs(3600),
        };
        mesh.write_registry(services);
        mesh.start_control().await;
        mesh
    }

    /// The identity directory, for a secure mesh.
    pub fn identity_dir(&self) -> Option<&IdentityDir> {
        self.identity.as_ref().map(|(d, _)| d)
    }

    /// The lifetime of the join tokens minted for proxies started from now on.
    pub fn set_token_ttl(&mut self, ttl: Duration) {
        self.token_ttl = ttl;
    }

    /// Identity configuration for a workload running as `service_account`
    /// (namespace `default`), with a freshly minted join token.
    pub fn identity_for(&self, service_account: &str) -> Option<IdentityConfig> {
        self.identity_in("default", service_account)
    }

    /// Identity configuration for `namespace`/`service_account`.
    pub fn identity_in(&self, namespace: &str, service_account: &str) -> Option<IdentityConfig> {
        let (dir, _) = self.identity.as_ref()?;
        let token = dir.mint_token(namespace, service_account, self.token_ttl).unwrap();
        let anchors = std::fs::read_to_string(dir.path().join(mesh_identity::dir::ANCHORS)).unwrap();
        Some(IdentityConfig {
            token: TokenSource::Value(token),
            trust_anchors_pem: anchors,
            identity: None,
            control_plane_identity: None,
            renew_at: 0.7,
        })
    }

    /// A sidecar for a replica of `service_account` in front of `app`: in a
    /// secure mesh it has an identity, mTLS, and a strict inbound.
    pub async fn sidecar(&self, name: &str, service_account: &str, app: SocketAddr) -> Proxy {
        self.sidecar_with(name, service_account, app, |_| {}).await
    }

    /// [`Mesh::sidecar`], adjusting the config first.
    pub async fn sidecar_with(&self, name: &str, sa: &str, app: SocketAddr, f: impl FnOnce(&mut ProxyConfig)) -> Proxy {
        let identity = self.identity_for(sa);
        let url = self.control_url();
        sidecar_with(name, app, |c| {
            if let Some(i) = identity {
                c.identity = Some(i);
                c.control_plane = Some(url);
                if let Some(inb) = c.inbound.as_mut() {
                    inb.mode = InboundMode::Strict;
                }
            }
            f(c)
        })
        .await
    }

    /// A client proxy for `service_account` with one upstream per target.
    pub async fn client(&self, name: &str, service_account: &str, targets: &[&str]) -> Proxy {
        self.client_with(name, service_account, targets, |_| {}).await
    }

    /// A client proxy running as `namespace`/`service_account`.
    pub async fn client_in(&self, name: &str, namespace: &str, sa: &str, targets: &[&str]) -> Proxy {
        let identity = self.identity_in(namespace, sa);
        client_with(name, &self.control_url(), targets, |c| c.identity = identity).await
    }

    /// [`Mesh::client`], adjusting the config first.
    pub async fn client_with(&self, name: &str, sa: &str, targets: &[&str], f: impl FnOnce(&mut ProxyConfig)) -> Proxy {
        let identity = self.identity_for(sa);
        client_with(name, &self.control_url(), targets, |c| {
            c.identity = identity;
            f(c)
        })
        .await
    }

    /// The registry file.
    pub fn registry_path(&self) -> PathBuf {
        self.dir.path().join("registry.yaml")
    }

    /// Rewrites the registry (the control plane picks it up within ~200 ms).
    pub fn write_registry(&self, services: &[Svc]) {
        self.write_registry_text(&registry_yaml(services));
    }

    /// Writes raw registry text (valid or not), atomically.
    pub fn write_registry_text(&self, text: &str) {
        let tmp = self.dir.path().join(".registry.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.registry_path()).unwrap();
    }

    /// Starts the control plane (again, on the same ports after a stop).
    pub async fn start_control(&mut self) {
        let mut config = ControlConfig::with_file(self.registry_path());
        if let Some((dir, ttl)) = &self.identity {
            let mut idc = mesh_control::IdentityConfig::new(dir.path());
            idc.leaf_ttl = *ttl;
            idc.poll_interval = Duration::from_millis(100);
            config.identity = Some(idc);
        }
        config.grpc_addr = self.grpc_addr;
        config.admin_addr = self.admin_addr;
        #[allow(irrefutable_let_patterns)] // more registries will come
        if let mesh_control::RegistryConfig::File { poll_interval, .. } = &mut config.registry {
            *poll_interval = Duration::from_millis(50);
        }
        // The old listener may linger briefly after a stop.
        let mut last = None;
        for _ in 0..50 {
            match Control::start(config.clone()).await {
                Ok(c) => {
                    self.grpc_addr = c.grpc_addr();
                    self.admin_addr = c.admin_addr();
                    self.control = Some(c);
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("control plane did not restart: {last:?}");
    }

    /// Stops the control plane (its listeners close, watch streams break).
    pub async fn stop_control(&mut self) {
        if let Some(c) = self.control.take() {
            c.shutdown().await;
        }
    }

    /// The control plane's gRPC URL for proxies.
    pub fn control_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// The control plane's admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }
}

/// Waits until a proxy reports ready (with identity: holds a certificate).
pub async fn wait_ready(p: &Proxy) {
    let addr = p.admin_addr();
    let ok =
        eventually(Duration::from_secs(10), || async move { admin_get(addr, "/ready").await.starts_with("ready") })
            .await;
    assert!(ok, "proxy at {addr} never became ready:\n{}", admin_get(addr, "/config").await);
}

/// Waits until a proxy's first upstream resolves to `endpoints` endpoints.
pub async fn wait_resolved(p: &Proxy, endpoints: usize) {
    let addr = p.admin_addr();
    let ok = eventually(Duration::from_secs(10), || async move {
        let c = admin_get(addr, "/config").await;
        c.contains("\"status\": \"resolved\"") && c.matches("\"address\"").count() == endpoints
    })
    .await;
    assert!(ok, "proxy at {addr} never resolved {endpoints} endpoint(s):\n{}", admin_get(addr, "/config").await);
}

/// Starts a sidecar in front of `app` (inbound only).
pub async fn sidecar(name: &str, app: SocketAddr) -> Proxy {
    sidecar_with(name, app, |_| {}).await
}

/// Starts a sidecar in front of `app`, adjusting its config first.
pub async fn sidecar_with(name: &str, app: SocketAddr, f: impl FnOnce(&mut ProxyConfig)) -> Proxy {
    let mut c = base(name);
    c.inbound = Some(InboundConfig {
        listen: loopback0(),
        app: Some(app),
        opaque_ports: vec![],
        mode: InboundMode::Permissive,
        port_modes: vec![],
    });
    f(&mut c);
    Proxy::start(c).await.unwrap()
}

/// Starts a client-side proxy with one upstream port per target.
pub async fn client(name: &str, control_url: &str, targets: &[&str]) -> Proxy {
    client_with(name, control_url, targets, |_| {}).await
}

/// Starts a client-side proxy, adjusting its config first.
pub async fn client_with(name: &str, control_url: &str, targets: &[&str], f: impl FnOnce(&mut ProxyConfig)) -> Proxy {
    let mut c = base(name);
    c.control_plane = Some(control_url.to_string());
    c.outbound.upstreams = targets.iter().map(|t| Upstream { listen: loopback0(), target: (*t).to_string() }).collect();
    f(&mut c);
    Proxy::start(c).await.unwrap()
}

fn base(name: &str) -> ProxyConfig {
    let mut c = ProxyConfig::new(name);
    c.admin_addr = loopback0();
    c.shutdown_grace = Duration::from_secs(5);
    // On a port left to detection, a connection whose client says nothing
    // within the detection timeout is forwarded as opaque TCP (declared-HTTP
    // ports wait for the request instead). On a loaded machine an
    // in-process load worker can be starved for longer than the default
    // 1 s, so the suites' proxies wait longer; detection's timeout itself is
    // tested with its own short value (data_path, robustness, policy).
    c.limits.detect_timeout = Duration::from_secs(10);
    c
}

fn loopback0() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// GETs an admin path and returns the body.
pub async fn admin_get(addr: SocketAddr, path: &str) -> String {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let uri: http::Uri = format!("http://{addr}{path}").parse().unwrap();
    let rsp = client.get(uri).await.unwrap();
    let body = http_body_util::BodyExt::collect(rsp.into_body()).await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// Sums the values of metric lines whose name and labels contain every
/// fragment in `parts` (e.g. `["response_total", "direction=\"inbound\""]`).
pub fn metric_sum(text: &str, parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
