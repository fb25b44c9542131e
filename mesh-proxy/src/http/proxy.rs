//! Forwarding one request to an endpoint the balancer picks.
//!
//! A request whose connection cannot be opened goes to another endpoint, and
//! one the endpoint never processed (not written, HTTP/2 stream refused or
//! above a GOAWAY's last stream: the connection was closing) goes on a fresh
//! connection, to the same endpoint or another: that is always safe, for any
//! method, since the application never saw it; so does one whose server
//! proxy answers that its app refused the connection
//! ([`errors::UNPROCESSED_HEADER`]: a pod whose app stopped before the
//! client heard that the endpoint is going). Retrying requests that were
//! sent is policy and belongs to the router (`http::route`), not here, with
//! one exception: an idempotent bodyless request that a meshed peer's
//! closing keep-alive connection swallowed without a byte of an answer
//! (RFC 9112 §9.3.1) goes to another endpoint. Outcomes feed the
//! endpoint's failure accrual (circuit breaking).

use super::errors::{self, ERROR_HEADER, ProxyError};
use super::upgrade;
use crate::balance::Balancer;
use crate::body::{self, Body};
use crate::pool::{Conn, ConnectError, SendError, Version};
use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use mesh_policy::headers::{is_grpc, strip_hop_by_hop, wants_upgrade};
use mesh_policy::outbound::{Breaker, Limits};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How hard to try before answering with an error.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// How long to wait for a live endpoint.
    pub failfast: Duration,
    /// Endpoints to try when connecting fails.
    pub connect_attempts: usize,
    /// Counts requests sent again (the peer never processed them) and
    /// endpoints ejected.
    pub metrics: crate::metrics::ForwardMetrics,
}

impl Default for ForwardSettings {
    fn default() -> Self {
        Self { failfast: Duration::from_secs(3), connect_attempts: 3, metrics: Default::default() }
    }
}

/// A request ready to forward: hop-by-hop headers gone, the body boxed, and
/// the client side of an upgrade kept aside.
#[derive(Debug)]
pub struct Prepared {
    /// The request.
    pub req: Request<Body>,
    /// Whether the client speaks gRPC (errors are then answered in gRPC terms).
    pub grpc: bool,
    /// The client's half of a protocol upgrade, if it asked for one.
    pub upgrade: Option<OnUpgrade>,
}

/// Prepares a server-side request for forwarding.
pub fn prepare(mut req: Request<Incoming>) -> Prepared {
    let grpc = is_grpc(req.headers());
    let upgrading = wants_upgrade(&req);
    let upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, upgrading);
    Prepared { req: Request::from_parts(parts, body::boxed(incoming)), grpc, upgrade }
}

/// Counts a request in a counter until dropped.
struct Counted<'a>(&'a std::sync::atomic::AtomicU32);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes a slot in `counter` unless it is at `max` (0: unlimited).
fn take_slot<'a>(
    counter: &'a std::sync::atomic::AtomicU32,
    max: u32,
    what: &'static str,
    target: &str,
) -> Result<Counted<'a>, ProxyError> {
    let now = counter.fetch_add(1, Ordering::Relaxed);
    let slot = Counted(counter);
    if max > 0 && now >= max {
        return Err(ProxyError::Overloaded { target: target.to_string(), what, max });
    }
    Ok(slot)
}

/// How one attempt is made: protocol, patience, and the target's policy.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The HTTP version to speak to the endpoint.
    pub version: Version,
    /// Waiting and connect retries.
    pub settings: &'a ForwardSettings,
    /// Concurrency, pending and connection limits.
    pub limits: &'a Limits,
    /// Failure accrual.
    pub breaker: &'a Breaker,
}

/// Forwards one request to one of `balancer`'s endpoints.
pub async fn forward_once(
    balancer: &Arc<Balancer>,
    how: Attempt<'_>,
    mut req: Request<Body>,
    client_upgrade: Option<OnUpgrade>,
    avoid: &mut Vec<SocketAddr>,
) -> Result<Response<Body>, ProxyError> {
    let Attempt { version, settings, limits, breaker } = how;
    let target = balancer.target();
    let _inflight = take_slot(&balancer.inflight, limits.max_concurrent, "concurrency", target)?;
    let list = {
        let _pending = take_slot(&balancer.pending, limits.max_pending, "pending", target)?;
        balancer.ready(settings.failfast).await?
    };
    let upgrading = client_upgrade.is_some();
    // `avoid` holds endpoints earlier attempts failed on (a retry goes
    // elsewhere when it can); every endpoint that fails here joins it, so
    // the common, successful path never allocates.
    let tried = avoid;
    let mut last = ProxyError::NoEndpoints(target.to_string());
    let (mut attempts, mut resent) = (0, 0);
    while attempts < settings.connect_attempts.max(1) {
        attempts += 1;
        let Some(ep) = list.pick_excluding(tried) else { break };
        let _in_flight = ep.load.start();
        let conn = if upgrading {
            ep.client.dedicated_h1().await
        } else {
            ep.client.connection(version, limits.max_connections_per_endpoint).await
        };
        let conn: Conn = match conn {
            Ok(c) => c,
            Err(ConnectError::Limit { max, .. }) => {
                tried.push(ep.meta.addr);
                last = ProxyError::Overloaded { target: target.to_string(), what: "connection", max };
                continue;
            }
            Err(e) => {
                tried.push(ep.meta.addr);
                tracing::debug!(endpoint = %ep.meta.addr, error = %e, "connect failed; trying another endpoint");
                ep.load.penalize(Instant::now());
                eject_on_failure(ep, breaker, target, &settings.metrics);
                last = ProxyError::Connect { target: target.to_string(), reason: e.to_string() };
                continue;
            }
        };
        // A meshed endpoint's proxy may answer that its app never saw the
        // request: a bodyless one is then sent again from a copy of its
        // head (HTTP/2 uses the same copy if a stream is refused).
        let meshed = ep.meta.identity.is_some();
        let bodyless = !upgrading && http_body::Body::is_end_stream(req.body());
        let mut spare = (bodyless && (meshed || version == Version::Http2)).then(|| crate::pool::head_of(&req));
        // Latency is the endpoint's answer time; connecting (or waiting for
        // the shared HTTP/2 connection to come up) is not its service time.
        let start = Instant::now();
        let reused = conn.reused();
        match conn.send(req, &mut spare).await {
            Ok(rsp) if meshed && rsp.headers().contains_key(errors::UNPROCESSED_HEADER) => {
                // Its app refused: the pod is stopping (or broken). Another
                // endpoint gets the request; this one is avoided like one
                // that refused the connection itself.
                tried.push(ep.meta.addr);
                ep.load.penalize(Instant::now());
                eject_on_failure(ep, breaker, target, &settings.metrics);
                let reason = rsp.headers().get(ERROR_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                tracing::debug!(endpoint = %ep.meta.addr, %reason, "the endpoint's app did not process the request");
                let Some(head) = spare else {
                    // Its body went with it: whoever still has the body (the
                    // retry layer) may send it again.
                    return Err(ProxyError::Unprocessed { target: target.to_string(), reason });
                };
                settings.metrics.resent(target, "app_refused");
                req = head;
                last = ProxyError::Unprocessed { target: target.to_string(), reason };
            }
            Ok(mut rsp) => {
                ep.load.observe(start.elapsed(), Instant::now());
                if rsp.status().is_server_error() {
                    tried.push(ep.meta.addr);
                    eject_on_failure(ep, breaker, target, &settings.metrics);
                } else {
                    ep.health.success();
                }
                let switched = rsp.status() == StatusCode::SWITCHING_PROTOCOLS;
                if let (true, Some(client)) = (switched, client_upgrade) {
                    upgrade::splice(client, hyper::upgrade::on(&mut rsp));
                }
                strip_hop_by_hop(rsp.headers_mut(), switched);
                return Ok(rsp);
            }
            Err(SendError { error, unprocessed: true, request: Some(r), reason }) => {
                settings.metrics.resent(target, reason);
                // Never processed: the connection was closing (the pool
                // retired it), which says nothing about the endpoint. Sent
                // again on a fresh connection, without using up an attempt
                // the first few times.
                req = r;
                last = ProxyError::Connect { target: target.to_string(), reason: error.to_string() };
                if resent < MAX_RESENDS {
                    resent += 1;
                    attempts -= 1;
                    tracing::debug!(endpoint = %ep.meta.addr, %error, "request not processed; sending it on a new connection");
                } else {
                    tried.push(ep.meta.addr);
                    ep.load.penalize(Instant::now());
                }
            }
            Err(SendError { error, unprocessed: true, request: None, .. }) => {
                // Never processed, but its body went with it: whoever still
                // has the body (the retry layer) may send it again.
                tracing::debug!(endpoint = %ep.meta.addr, %error, "request with a body refused unprocessed");
                return Err(ProxyError::Unprocessed { target: target.to_string(), reason: error.to_string() });
            }
            Err(SendError { error, request: Some(r), .. }) => {
                // Handed back although the peer may have seen it (not
                // expected from hyper): only the endpoint is avoided.
                tried.push(ep.meta.addr);
                last = ProxyError::Connect { target: target.to_string(), reason: error.to_string() };
                req = r;
            }
            Err(SendError { error, request: None, .. }) => {
                tried.push(ep.meta.addr);
                ep.load.penalize(Instant::now());
                eject_on_failure(ep, breaker, target, &settings.metrics);
                // The keep-alive race (RFC 9112 §9.3.1): a meshed peer closed
                // an idle connection (its proxy is stopping, or it closed a
                // connection idle past its header read timeout and the close
                // never reached us) as the request went out, and no byte of an
                // answer came: the connection ended or was reset. An
                // idempotent bodyless request is sent to another endpoint, or,
                // when there is none, to this one on a new connection; the
                // endpoint's other idle connections idled as long, so they go.
                if let Some(head) =
                    spare.take().filter(|h| reused && connection_lost(&error) && h.method().is_idempotent())
                {
                    settings.metrics.resent(target, "closed_idle");
                    tracing::debug!(endpoint = %ep.meta.addr, %error, "idle connection closed under the request; sending it again");
                    ep.client.drop_idle();
                    let addr = ep.meta.addr;
                    if list.pick_excluding(tried).is_none() {
                        tried.retain(|a| *a != addr);
                    }
                    req = head;
                    last = ProxyError::Upstream { target: target.to_string(), reason: error.to_string() };
                    continue;
                }
                tracing::debug!(endpoint = %ep.meta.addr, %error, "upstream failed mid-request");
                return Err(ProxyError::Upstream { target: target.to_string(), reason: error.to_string() });
            }
        }
    }
    Err(last)
}

/// Whether a request's connection ended or was reset before any answer
/// came (`error` is from a send that got no response head): the peer
/// closed it, not a malformed answer or a timeout.
fn connection_lost(error: &hyper::Error) -> bool {
    use std::io::ErrorKind;
    if error.is_incomplete_message() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ErrorKind::ConnectionReset
                    | ErrorKind::BrokenPipe
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::UnexpectedEof
            );
        }
        source = e.source();
    }
    false
}

/// Requests sent again because their connection was closing, beyond the
/// endpoint attempts: each goes on a new connection, so more than a few
/// means the endpoint closes every connection.
const MAX_RESENDS: usize = 4;

fn eject_on_failure(
    ep: &crate::balance::Endpoint,
    breaker: &Breaker,
    target: &str,
    m: &crate::metrics::ForwardMetrics,
) {
    if let Some(d) = ep.health.failure(breaker, Instant::now()) {
        m.ejected(target);
        tracing::info!(target, endpoint = %ep.meta.addr, ejected_for = ?d, "endpoint ejected after consecutive failures");
    }
}

/// Forwards requests to a balancer's endpoints, speaking `version`, with no
/// policy (inbound to the app, and outbound without a control plane).
/// Cloned per request: one `Arc`.
#[derive(Debug, Clone)]
pub struct Forward(Arc<ForwardTo>);

#[derive(Debug)]
struct ForwardTo {
    balancer: Arc<Balancer>,
    version: Version,
    settings: ForwardSettings,
    inbound: bool,
}

impl Forward {
    /// A forwarder over `balancer`. An `inbound` one (to the local app)
    /// says when the app never saw a request ([`errors::UNPROCESSED_HEADER`])
    /// and removes that header from the app's own responses.
    pub fn new(balancer: Arc<Balancer>, version: Version, settings: ForwardSettings, inbound: bool) -> Self {
        Self(Arc::new(ForwardTo { balancer, version, settings, inbound }))
    }
}

/// An inbound forward's answer: the app's response without the
/// unprocessed marker, or the proxy's error, marked when the app never saw
/// the request.
fn inbound_answer(res: Result<Response<Body>, ProxyError>, grpc: bool) -> Response<Body> {
    match res {
        Ok(mut rsp) => {
            rsp.headers_mut().remove(errors::UNPROCESSED_HEADER);
            rsp
        }
        Err(e) => {
            let mut rsp = errors::response(&e, grpc);
            if e.unprocessed() {
                rsp.headers_mut().insert(errors::UNPROCESSED_HEADER, http::HeaderValue::from_static("app"));
            }
            rsp
        }
    }
}

impl tower::Service<Request<Incoming>> for Forward {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let this = self.0.clone();
        Box::pin(async move {
            let p = prepare(req);
            let (limits, breaker) = (Limits::default(), Breaker::default());
            let how = Attempt { version: this.version, settings: &this.settings, limits: &limits, breaker: &breaker };
            let res = forward_once(&this.balancer, how, p.req, p.upgrade, &mut Vec::new()).await;
            if this.inbound {
                return Ok(inbound_answer(res, p.grpc));
            }
            Ok(res.unwrap_or_else(|e| errors::response(&e, p.grpc)))
        })
    }
}
