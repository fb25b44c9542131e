//! The per-connection pipeline shared by both directions:
//! meter → detect protocol → serve HTTP (forwarding each request) or
//! forward opaque TCP.

use crate::balance::Balancer;
use crate::detect::{self, Protocol};
use crate::drain::Drain;
use crate::http::client::Version;
use crate::http::metered::Metered;
use crate::http::proxy::{Forward, ForwardSettings};
use crate::http::server;
use crate::io::{Activity, Clock, MeteredIo, PrefixedIo};
use crate::metrics::{Labels, Metrics};
use crate::tcp::{self, TcpSettings};
use crate::config::Limits;
use mesh_core::shutdown::Shutdown;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// What every connection on a listener shares.
#[derive(Debug, Clone)]
pub struct Context {
    /// Metric families.
    pub metrics: Metrics,
    /// Limits and timeouts.
    pub limits: Arc<Limits>,
    /// Coarse clock for activity tracking.
    pub clock: Clock,
    /// Stops accepting and drains.
    pub shutdown: Shutdown,
    /// Counts live connections.
    pub drain: Drain,
}

/// Where one connection goes.
#[derive(Debug, Clone)]
pub struct Route {
    /// Endpoints to forward to.
    pub balancer: Arc<Balancer>,
    /// Metric labels.
    pub labels: Labels,
    /// Never sniff: forward as TCP.
    pub opaque: bool,
}

/// Accepts on `listener` until shutdown; `route` decides where each accepted
/// connection goes.
pub async fn accept_loop<F, Fut>(listener: TcpListener, ctx: Context, route: F)
where
    F: Fn(&TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<Route>> + Send + 'static,
{
    let route = Arc::new(route);
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.triggered() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors or similar: pause rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let route = route.clone();
        let guard = ctx.drain.guard();
        tokio::spawn(async move {
            let _guard = guard;
            let Some(r) = route(&stream).await else {
                tracing::debug!(%peer, "no route for connection; closing");
                return;
            };
            handle(stream, ctx, r).await;
        });
    }
}

async fn handle(stream: TcpStream, ctx: Context, route: Route) {
    let tcp = ctx.metrics.tcp(&route.labels);
    let activity = Activity::new(ctx.clock);
    let mut io = MeteredIo::new(stream, tcp.bytes.clone(), activity.clone());
    let (protocol, prefix) = if route.opaque {
        (Protocol::Opaque, bytes::Bytes::new())
    } else {
        match detect::sniff(&mut io, ctx.limits.detect_timeout).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "connection failed during protocol detection");
                return;
            }
        }
    };
    let io = PrefixedIo::new(prefix, io);
    match protocol {
        Protocol::Http1 | Protocol::Http2 => {
            let version = if protocol == Protocol::Http2 { Version::Http2 } else { Version::Http1 };
            let forward = ForwardSettings { failfast: ctx.limits.failfast_timeout, connect_attempts: 3 };
            let svc = Metered::new(Forward::new(route.balancer, version, forward), ctx.metrics.http(route.labels));
            server::serve(io, protocol, svc, &ctx.limits.server, activity, ctx.shutdown).await;
        }
        Protocol::Tls | Protocol::Opaque => {
            let settings = TcpSettings {
                failfast: ctx.limits.failfast_timeout,
                connect_attempts: 3,
                idle_timeout: ctx.limits.tcp_idle_timeout,
            };
            if let Err(e) = tcp::forward(io, &route.balancer, settings, activity).await {
                tracing::info!(target = route.balancer.target(), error = %e, "TCP connection refused");
            }
        }
    }
    drop(tcp);
}
