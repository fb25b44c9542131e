//! The per-connection pipeline shared by both directions:
//! meter → detect protocol → serve HTTP (forwarding each request) or
//! forward opaque TCP.

use crate::balance::Balancer;
use crate::balancers::Balancers;
use crate::config::Limits;
use crate::detect::{self, Protocol};
use crate::drain::Drain;
use crate::http::authorize::Authorize;
use crate::http::observe::{Observe, ObserveCtx};
use crate::http::proxy::{Forward, ForwardSettings};
use crate::http::route::OutboundRouter;
use crate::http::server;
use crate::io::{Activity, Clock, MeteredIo, PrefixedIo};
use crate::metrics::{Labels, Metrics, Tls};
use crate::policy::client::Live;
use crate::pool::Version;
use crate::tcp::{self, TcpSettings};
use crate::telemetry::Telemetry;
use crate::telemetry::access_log::{Entry, now_rfc3339};
use crate::tls::{MeshProtocol, MeshTls, is_mesh_hello};
use mesh_core::listener::Counted;
use mesh_core::shutdown::Shutdown;
use mesh_policy::inbound::{Client, InboundPolicy};
use mesh_policy::outbound::OutboundPolicy;
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
    /// Tracing, access logs, tap.
    pub telemetry: Telemetry,
}

/// Where one connection goes.
#[derive(Debug, Clone)]
pub struct Route {
    /// Endpoints to forward to.
    pub balancer: Arc<Balancer>,
    /// Metric labels.
    pub labels: Labels,
    /// What the connection's first bytes are expected to be.
    pub expect: Expect,
    /// Inbound: terminate mesh peers' mTLS with this.
    pub accept_tls: Option<Arc<MeshTls>>,
    /// Inbound: refuse anything but mesh mTLS.
    pub strict: bool,
    /// Outbound: the target's policy and where its backends' balancers live.
    pub outbound: Option<(Live<OutboundPolicy>, Balancers)>,
    /// Inbound: the port's authorization policy.
    pub authorization: Option<Live<InboundPolicy>>,
}

/// What a route knows about its connections' protocol before any byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Unknown: sniff; silence past the detection timeout is opaque TCP.
    Detect,
    /// Declared opaque: never sniff, forward as TCP.
    Opaque,
    /// Declared HTTP: wait for the request as long as an HTTP server would
    /// (`header_read_timeout`) and refuse anything else. Falling back to
    /// opaque TCP here would let a client that stays silent for the
    /// detection timeout skip the routes, retries, timeouts and rate limits
    /// that only apply to HTTP.
    Http,
}

/// An accepted socket, counted in `listener_open_connections` until closed.
type Accepted = Counted<TcpStream>;

/// Accepts on `listener` until shutdown; `route` decides where each accepted
/// connection goes. Every accepted socket is counted under `name` from
/// accept until it closes, whatever happens to it in between.
pub async fn accept_loop<F, Fut>(listener: TcpListener, name: &str, ctx: Context, route: F)
where
    F: Fn(&TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<Route>> + Send + 'static,
{
    let route = Arc::new(route);
    let accepts = ctx.metrics.listeners.listener(name);
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
        let open = accepts.accepted();
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
            handle(Counted::new(stream, open), ctx, r).await;
        });
    }
}

async fn handle(mut stream: Accepted, ctx: Context, route: Route) {
    // The port's policy, once known: the first connections wait for the
    // control plane's first answer (without one, inbound fails closed).
    if let Some(p) = &route.authorization {
        p.ready(ctx.limits.failfast_timeout).await;
    }
    let peer = stream.get_ref().peer_addr().ok();
    let peer_ip = peer.map(|a| a.ip()).unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    let (protocol, prefix) = if route.expect == Expect::Opaque && route.accept_tls.is_none() {
        (Protocol::Opaque, bytes::Bytes::new())
    } else {
        let wait = match route.expect {
            Expect::Http => ctx.limits.server.header_read_timeout,
            Expect::Detect | Expect::Opaque => ctx.limits.detect_timeout,
        };
        match detect::sniff(&mut stream, wait).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "connection failed during protocol detection");
                return;
            }
        }
    };
    if route.expect == Expect::Http && !matches!(protocol, Protocol::Http1 | Protocol::Http2) {
        tracing::info!(
            target = %route.labels.target,
            got = protocol.as_str(),
            "a port declared HTTP got no HTTP request (silent or other bytes); closing. Declare the port `opaque` or leave it to detection if it carries another protocol"
        );
        ctx.metrics.refused(&route.labels, "not_http");
        return;
    }
    let io = PrefixedIo::new(prefix.clone(), stream);

    // A mesh peer: terminate its mTLS; the ALPN it negotiated names the protocol.
    if let (Protocol::Tls, Some(tls)) = (protocol, &route.accept_tls)
        && detect::client_hello_alpns(&prefix).is_some_and(|a| is_mesh_hello(&a))
    {
        let accept = mesh_identity::tls::accept(tls.server_config(), io);
        let stream = match tokio::time::timeout(ctx.limits.tls_handshake_timeout, accept).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) if mesh_identity::tls::ResumptionRefused::is(&e) => {
                // A ticket whose client certificate no longer verifies (expired, retired anchor).
                tracing::info!(error = %e, "resumed mesh TLS session refused");
                ctx.metrics.refused(&route.labels, "tls_resumption");
                ctx.metrics.handshakes.refused(crate::metrics::Direction::inbound);
                return;
            }
            Ok(Err(e)) => {
                tracing::info!(error = %e, "mesh TLS handshake refused");
                ctx.metrics.refused(&route.labels, "tls_handshake");
                return;
            }
            Err(_) => {
                ctx.metrics.refused(&route.labels, "tls_handshake");
                return;
            }
        };
        ctx.metrics.handshakes.record(crate::metrics::Direction::inbound, &stream.handshake());
        let protocol = match stream.alpn().and_then(MeshProtocol::from_alpn) {
            Some(MeshProtocol::Http1) => Protocol::Http1,
            Some(MeshProtocol::Http2) => Protocol::Http2,
            Some(MeshProtocol::Probe) => {
                // `meshctl check`'s live probe: answered here, never forwarded.
                let (stream, peer_id) = stream.into_parts();
                let client = Client { identity: peer_id, ip: peer_ip };
                let policy = route.authorization.as_ref().map(|p| p.current());
                let answer = crate::probe::decide(policy.as_deref(), &client);
                crate::probe::answer(stream, &answer).await;
                return;
            }
            _ => Protocol::Opaque,
        };
        let (stream, peer_id) = stream.into_parts();
        let mut labels = route.labels.clone();
        labels.tls = Tls::Yes;
        labels.peer_id = peer_id.unwrap_or_default();
        let client = Client { identity: Some(labels.peer_id.clone()).filter(|i| !i.is_empty()), ip: peer_ip };
        return serve(stream, protocol, &route, labels, client, peer, ctx).await;
    }
    let policy_requires_mtls = route.authorization.as_ref().is_some_and(|p| p.current().require_mtls);
    if route.strict || policy_requires_mtls {
        tracing::debug!(protocol = protocol.as_str(), "plaintext refused on a strict port");
        ctx.metrics.refused(&route.labels, "plaintext");
        return;
    }
    let client = Client { identity: None, ip: peer_ip };
    serve(io, protocol, &route, route.labels.clone(), client, peer, ctx).await;
}

/// Serves a connection whose protocol is known: HTTP, or bytes as TCP.
async fn serve<I>(
    io: I,
    protocol: Protocol,
    route: &Route,
    labels: Labels,
    client: Client,
    peer: Option<std::net::SocketAddr>,
    ctx: Context,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Opaque TCP is authorized once, for the whole connection.
    let is_http = matches!(protocol, Protocol::Http1 | Protocol::Http2);
    if let (false, Some(policy)) = (is_http, &route.authorization) {
        let current = policy.current();
        let verdict = current.authorize(&client, None);
        ctx.metrics.authorization(&labels.target, &verdict).inc();
        if !verdict.allowed {
            tracing::info!(?client, policy = %verdict.policy, rule = %verdict.rule, "connection denied");
            ctx.metrics.refused(&labels, "unauthorized");
            return;
        }
    }
    let tcp = ctx.metrics.tcp(&labels);
    let activity = Activity::new(ctx.clock);
    let io = MeteredIo::new(io, tcp.bytes.clone(), activity.clone());
    match protocol {
        Protocol::Http1 | Protocol::Http2 => {
            let version = if protocol == Protocol::Http2 { Version::Http2 } else { Version::Http1 };
            let inbound = labels.direction == crate::metrics::Direction::inbound;
            let forward = ForwardSettings {
                failfast: ctx.limits.failfast_timeout,
                connect_attempts: 3,
                metrics: ctx.metrics.forward.clone(),
            };
            let observe = Arc::new(ObserveCtx {
                handles: ctx.metrics.http(labels.clone()),
                telemetry: ctx.telemetry.clone(),
                direction: labels.direction,
                target: labels.target.clone(),
                peer_id: labels.peer_id.clone(),
                client_addr: peer,
            });
            let (limits, shutdown) = (&ctx.limits.server, ctx.shutdown.clone());
            match (&route.outbound, &route.authorization) {
                (Some((policy, balancers)), _) => {
                    let router = OutboundRouter::new(
                        route.balancer.clone(),
                        policy.clone(),
                        balancers.clone(),
                        version,
                        forward,
                        ctx.metrics.clone(),
                    );
                    server::serve(io, protocol, Observe::new(router, observe), limits, activity, shutdown).await;
                }
                (None, Some(policy)) => {
                    let fwd = Forward::new(route.balancer.clone(), version, forward, inbound);
                    let authz = Authorize::new(fwd, policy.clone(), client, labels.target.clone(), ctx.metrics.clone());
                    server::serve(io, protocol, Observe::new(authz, observe), limits, activity, shutdown).await;
                }
                (None, None) => {
                    let fwd = Forward::new(route.balancer.clone(), version, forward, inbound);
                    server::serve(io, protocol, Observe::new(fwd, observe), limits, activity, shutdown).await;
                }
            }
        }
        Protocol::Tls | Protocol::Opaque => {
            let settings = TcpSettings {
                failfast: ctx.limits.failfast_timeout,
                connect_attempts: 3,
                idle_timeout: ctx.limits.tcp_idle_timeout,
            };
            let started = std::time::SystemTime::now();
            let t0 = std::time::Instant::now();
            if let Err(e) = tcp::forward(io, &route.balancer, settings, activity.clone()).await {
                tracing::info!(target = route.balancer.target(), error = %e, "TCP connection refused");
            }
            if let Some(log) = &ctx.telemetry.access_log {
                let (bytes_in, bytes_out) = activity.bytes();
                let inbound = labels.direction == crate::metrics::Direction::inbound;
                log.log(Entry {
                    time: now_rfc3339(started),
                    direction: if inbound { "inbound" } else { "outbound" },
                    kind: "tcp",
                    client_id: if inbound { labels.peer_id.clone() } else { String::new() },
                    server_id: if inbound { String::new() } else { labels.peer_id.clone() },
                    client_addr: peer.map(|a| a.to_string()).unwrap_or_default(),
                    target: labels.target.clone(),
                    method: None,
                    authority: None,
                    path: None,
                    status: None,
                    grpc_status: None,
                    latency_ms: t0.elapsed().as_secs_f64() * 1e3,
                    bytes_in,
                    bytes_out,
                    route: None,
                    authz: None,
                });
            }
        }
    }
    drop(tcp);
}
