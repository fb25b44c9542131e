//! Starting the proxy: bind every listener, wire discovery, balancers and
//! metrics, and run until shutdown drains it.

use crate::admin::Admin;
use crate::balance::{Balancer, EndpointFactory};
use crate::config::Config;
use crate::conn::Context;
use crate::connect::Connector;
use crate::discovery::Resolver;
use crate::drain::Drain;
use crate::io::Clock;
use crate::metrics::Metrics;
use crate::{inbound, outbound};
use mesh_core::shutdown::{self, Shutdown, Trigger};
use std::net::SocketAddr;
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
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    admin_addr: SocketAddr,
    inbound_addr: Option<SocketAddr>,
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
        let resolver = Resolver::new(config.control_plane.as_deref(), config.workload.clone()).map_err(|source| {
            StartError::ControlPlane { addr: config.control_plane.clone().unwrap_or_default(), source }
        })?;
        let metrics = Metrics::default();
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        registry.register_collector(Box::new(mesh_core::process::ProcessCollector));

        let limits = Arc::new(config.limits.clone());
        let factory = EndpointFactory {
            connector: Connector::new(limits.connect_timeout),
            settings: Arc::new(limits.client.clone()),
            ewma: limits.ewma,
        };
        let drain = Drain::default();
        let ctx = Context { metrics, limits, clock: Clock::new(), shutdown: shutdown.clone(), drain: drain.clone() };

        let admin_listener = bind("admin", config.admin_addr).await?;
        let admin_addr = admin_listener.local_addr().unwrap_or(config.admin_addr);
        let mut tasks = JoinSet::new();

        let mut inbound_addr = None;
        if let Some(inb) = config.inbound.clone() {
            let l = bind("inbound", inb.listen).await?;
            inbound_addr = Some(l.local_addr().unwrap_or(inb.listen));
            tasks.spawn(inbound::serve(l, inb, factory.clone(), ctx.clone()));
        }

        let mut balancers = Vec::new();
        let mut upstream_addrs = Vec::new();
        for up in &config.outbound.upstreams {
            let l = bind(&format!("upstream {}", up.target), up.listen).await?;
            upstream_addrs.push(l.local_addr().unwrap_or(up.listen));
            let balancer = Balancer::new(&up.target, resolver.resolve(&up.target), factory.clone());
            balancers.push(balancer.clone());
            tasks.spawn(outbound::serve_upstream(l, balancer, ctx.clone()));
        }

        let grace = config.shutdown_grace;
        let admin = Admin::new(registry, trigger.clone(), config, resolver, balancers);
        tasks.spawn(mesh_core::admin::serve(admin_listener, admin.clone(), shutdown.clone()));
        admin.set_ready(true);
        tracing::info!(%admin_addr, ?inbound_addr, ?upstream_addrs, "proxy serving");
        Ok(Self { admin_addr, inbound_addr, upstream_addrs, trigger, shutdown, drain, tasks, grace })
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The bound inbound address, if any.
    pub fn inbound_addr(&self) -> Option<SocketAddr> {
        self.inbound_addr
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

async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { what: what.to_string(), addr, source })
}
