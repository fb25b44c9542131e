//! Starting the proxy: bind every listener, wire discovery, balancers and
//! metrics, and run until shutdown drains it.

use crate::admin::Admin;
use crate::balance::EndpointFactory;
use crate::balancers::Balancers;
use crate::config::Config;
use crate::conn::Context;
use crate::connect::Connector;
use crate::discovery::Resolver;
use crate::drain::Drain;
use crate::identity::{Identity, IdentityMetrics};
use crate::inbound::Inbound;
use crate::io::Clock;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::policy::client::Policies;
use crate::telemetry::Telemetry;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::tap::Tap;
use crate::telemetry::trace::Exporter;
use crate::tls::MeshTls;
use crate::{inbound, outbound};
use mesh_core::shutdown::{self, Shutdown, Trigger};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error("cannot listen on {addr} for {what}: {source} (is another process using the port?)")]
    Bind {
        /// What the listener is for.
        what: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The control plane address is not a valid URI.
    #[error("invalid control plane address {addr:?}: {source} (expected http://host:port)")]
    ControlPlane {
        /// The address given.
        addr: String,
        /// Why it is invalid.
        source: tonic::transport::Error,
    },
    /// Identity could not be set up.
    #[error("identity: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    /// TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(#[from] mesh_identity::tls::TlsError),
    /// Tracing or access logs could not start.
    #[error("telemetry: {0}")]
    Telemetry(String),
    /// Identity needs a control plane to certify against.
    #[error("identity is configured but no control plane is: give --control-plane")]
    IdentityWithoutControlPlane,
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    admin_addr: SocketAddr,
    inbound_addr: Option<SocketAddr>,
    outbound_addr: Option<SocketAddr>,
    upstream_addrs: Vec<SocketAddr>,
    trigger: Trigger,
    shutdown: Shutdown,
    drain: Drain,
    tasks: JoinSet<()>,
    grace: Duration,
}

impl Proxy {
    /// Binds every listener and starts serving.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let (trigger, shutdown) = shutdown::channel();
        let identity = config.identity.as_ref().map(Identity::prepare).transpose()?;
        let channel = match &config.control_plane {
            Some(addr) => {
                let tls = identity.as_ref().map(|i| (i.creds.clone(), i.control_plane.clone()));
                Some(
                    mesh_client::channel(addr, tls)
                        .map_err(|source| StartError::ControlPlane { addr: addr.clone(), source })?,
                )
            }
            None if identity.is_some() => return Err(StartError::IdentityWithoutControlPlane),
            None => None,
        };
        let resolver = Resolver::new(channel.clone(), config.workload.clone());
        let policies = Policies::new(channel.clone());
        let metrics = Metrics::default();
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        registry.register_collector(Box::new(mesh_core::process::ProcessCollector));
        let mesh_tls = identity.as_ref().map(|i| MeshTls::new(i.creds.clone())).transpose()?;

        let limits = Arc::new(config.limits.clone());
        let connector =
            Connector::new(limits.connect_timeout, mesh_tls.clone()).with_handshakes(metrics.handshakes.clone());
        let factory = EndpointFactory {
            connector: connector.clone(),
            settings: Arc::new(limits.client.clone()),
            ewma: limits.ewma,
        };
        let drain = Drain::default();
        let telemetry = telemetry(&config, &metrics)?;
        let tap = telemetry.tap.clone();
        let ctx = Context {
            metrics,
            limits: limits.clone(),
            clock: Clock::new(),
            shutdown: shutdown.clone(),
            drain: drain.clone(),
            telemetry,
        };

        let admin_listener = bind("admin", config.admin_addr).await?;
        let admin_addr = admin_listener.local_addr().unwrap_or(config.admin_addr);
        let mut tasks = JoinSet::new();

        let mut inbound_addr = None;
        if let Some(inb) = config.inbound.clone() {
            let l = match bind("inbound", inb.listen).await {
                // The dual-stack default where the kernel has no IPv6: IPv4 only.
                Err(StartError::Bind { source, .. })
                    if inb.listen.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) && no_ipv6(&source) =>
                {
                    let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), inb.listen.port());
                    tracing::info!(%v4, "no IPv6 in this network namespace; inbound is IPv4 only");
                    bind("inbound", v4).await?
                }
                r => r?,
            };
            inbound_addr = Some(l.local_addr().unwrap_or(inb.listen));
            // The app is local and plaintext; only peers get mTLS.
            let app_factory =
                EndpointFactory { connector: Connector::new(limits.connect_timeout, None), ..factory.clone() };
            let workload =
                identity.as_ref().map(|i| (i.id.namespace().to_string(), i.id.service_account().to_string()));
            let env = Inbound { factory: app_factory, tls: mesh_tls.clone(), policies: policies.clone(), workload };
            tasks.spawn(inbound::serve(l, inb, env, ctx.clone()));
        }

        let balancers = Balancers::new(resolver.clone(), factory.clone(), Duration::from_secs(300));
        let env = Outbound { connector: connector.clone(), policies: policies.clone(), balancers: balancers.clone() };
        let mut upstream_addrs = Vec::new();
        for up in &config.outbound.upstreams {
            let l = bind(&format!("upstream {}", up.target), up.listen).await?;
            upstream_addrs.push(l.local_addr().unwrap_or(up.listen));
            let balancer = balancers.permanent(&up.target);
            tasks.spawn(outbound::serve_upstream(l, balancer, env.clone(), ctx.clone()));
        }
        let mut outbound_addr = None;
        for &addr in &config.outbound.transparent {
            let l = match bind("outbound", addr).await {
                Ok(l) => l,
                // The IPv6 listener of a dual-stack default, where IPv6 is
                // off: there is no IPv6 traffic to redirect either.
                Err(StartError::Bind { source, .. })
                    if addr.is_ipv6() && config.outbound.transparent.len() > 1 && no_ipv6(&source) =>
                {
                    tracing::info!(%addr, "no IPv6 in this network namespace; transparent outbound is IPv4 only");
                    continue;
                }
                Err(e) => return Err(e),
            };
            outbound_addr = outbound_addr.or(Some(l.local_addr().unwrap_or(addr)));
            tasks.spawn(outbound::serve_transparent(l, env.clone(), ctx.clone()));
        }

        if let Some(channel) = &channel {
            // Tell the control plane where this proxy's admin port is (for meshctl).
            let id = identity.as_ref().map(|i| i.id.to_string());
            let req = crate::register::request(&config.workload, id, admin_addr, inbound_addr);
            tasks.spawn(crate::register::run(channel.clone(), req, shutdown.clone()));
        }
        let creds = identity.as_ref().map(|i| i.creds.clone());
        if let (Some(identity), Some(channel), Some(cfg), Some(addr)) =
            (identity, channel, config.identity.clone(), config.control_plane.clone())
        {
            let m = IdentityMetrics::default();
            m.register(&mut registry);
            tasks.spawn(crate::identity::run(identity, channel, addr, cfg, m, shutdown.clone()));
        }

        let grace = config.shutdown_grace;
        let live_probe =
            crate::probe::Source { balancers, connector: connector.clone(), failfast: limits.failfast_timeout };
        let admin = Admin::new(registry, trigger.clone(), config, resolver, creds, tap, live_probe);
        // The admin port's header timeout: the proxy's, capped at the admin default.
        let admin_settings = mesh_core::admin::Settings {
            header_read_timeout: limits.server.header_read_timeout.min(Duration::from_secs(5)),
            connections: ctx.metrics.listeners.listener("admin"),
        };
        tasks.spawn(mesh_core::admin::serve(admin_listener, admin.clone(), shutdown.clone(), admin_settings));
        admin.set_ready(true);
        tracing::info!(%admin_addr, ?inbound_addr, ?outbound_addr, ?upstream_addrs, "proxy serving");
        Ok(Self { admin_addr, inbound_addr, outbound_addr, upstream_addrs, trigger, shutdown, drain, tasks, grace })
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The bound inbound address, if any.
    pub fn inbound_addr(&self) -> Option<SocketAddr> {
        self.inbound_addr
    }

    /// The (first) bound transparent outbound address, if any.
    pub fn outbound_addr(&self) -> Option<SocketAddr> {
        self.outbound_addr
    }

    /// The bound upstream addresses, in configuration order.
    pub fn upstream_addrs(&self) -> &[SocketAddr] {
        &self.upstream_addrs
    }

    /// A trigger that starts this proxy's shutdown.
    pub fn trigger(&self) -> Trigger {
        self.trigger.clone()
    }

    /// Completes when shutdown has been triggered (signal, admin, or trigger).
    pub async fn triggered(&self) {
        self.shutdown.clone().triggered().await;
    }

    /// Stops accepting, lets in-flight requests and connections finish
    /// within the grace period, then stops. Returns whether it drained
    /// fully (`false`: the grace period ran out).
    pub async fn shutdown(mut self) -> bool {
        self.trigger.trigger();
        let live = self.drain.live();
        tracing::info!(live_connections = live, grace = ?self.grace, "draining");
        let drained = tokio::time::timeout(self.grace, self.drain.idle()).await.is_ok();
        if !drained {
            tracing::warn!(live_connections = self.drain.live(), "grace period over; closing what is left");
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        drained
    }
}

fn telemetry(config: &Config, metrics: &Metrics) -> Result<Telemetry, StartError> {
    let t = &config.telemetry;
    let tracer = match &t.trace_collector {
        Some(endpoint) => Some(
            Exporter::start(endpoint, &config.workload, t.trace_sample_ratio, metrics.spans_dropped())
                .map_err(|e| StartError::Telemetry(format!("invalid trace collector {endpoint:?}: {e}")))?,
        ),
        None => None,
    };
    let access_log = match &t.access_log {
        Some(sink) => Some(
            AccessLog::start(sink.clone(), metrics.access_log_dropped())
                .map_err(|e| StartError::Telemetry(format!("cannot open the access log {sink:?}: {e}")))?,
        ),
        None => None,
    };
    Ok(Telemetry { workload: config.workload.clone(), tracer, access_log, tap: Tap::default() })
}

/// Whether a bind failed because the namespace has no IPv6 at all.
fn no_ipv6(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT))
}

async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { what: what.to_string(), addr, source })
}
