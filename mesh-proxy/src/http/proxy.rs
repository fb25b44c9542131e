//! The forwarding service: one request in, one request out to an endpoint
//! the balancer picks, one response back.
//!
//! A request whose connection cannot be opened (or that the endpoint refused
//! before reading it) goes to another endpoint: that is always safe, since
//! the application never saw it. Retrying requests that were sent is policy
//! and belongs to the retry layer, not here.

use super::body::{self, Body};
use super::client::{Conn, SendError, Version};
use super::errors::{self, ProxyError};
use super::headers::{is_grpc, strip_hop_by_hop, wants_upgrade};
use super::upgrade;
use crate::balance::Balancer;
use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How hard to try before answering with an error.
#[derive(Debug, Clone, Copy)]
pub struct ForwardSettings {
    /// How long to wait for a live endpoint.
    pub failfast: Duration,
    /// Endpoints to try when connecting fails.
    pub connect_attempts: usize,
}

impl Default for ForwardSettings {
    fn default() -> Self {
        Self { failfast: Duration::from_secs(3), connect_attempts: 3 }
    }
}

/// Forwards requests to a balancer's endpoints, speaking `version`.
#[derive(Debug, Clone)]
pub struct Forward {
    balancer: Arc<Balancer>,
    version: Version,
    settings: ForwardSettings,
}

impl Forward {
    /// A forwarder over `balancer`.
    pub fn new(balancer: Arc<Balancer>, version: Version, settings: ForwardSettings) -> Self {
        Self { balancer, version, settings }
    }

    async fn forward(self, mut req: Request<Incoming>) -> Response<Body> {
        let grpc = is_grpc(req.headers());
        let upgrading = wants_upgrade(&req);
        let server_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
        let list = match self.balancer.ready(self.settings.failfast).await {
            Ok(l) => l,
            Err(e) => return errors::response(&e, grpc),
        };
        let (mut parts, incoming) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers, upgrading);
        let mut req = Request::from_parts(parts, body::boxed(incoming));

        let target = self.balancer.target();
        let mut tried: Vec<SocketAddr> = Vec::with_capacity(self.settings.connect_attempts);
        let mut last = ProxyError::NoEndpoints(target.to_string());
        for _ in 0..self.settings.connect_attempts.max(1) {
            let Some(ep) = list.pick_excluding(&tried) else { break };
            tried.push(ep.meta.addr);
            let _in_flight = ep.load.start();
            let start = Instant::now();
            let conn = if upgrading {
                ep.client.dedicated_h1().await
            } else {
                ep.client.connection(self.version).await
            };
            let conn: Conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(endpoint = %ep.meta.addr, error = %e, "connect failed; trying another endpoint");
                    ep.load.penalize(Instant::now());
                    last = ProxyError::Connect { target: target.to_string(), reason: e.to_string() };
                    continue;
                }
            };
            match conn.send(req).await {
                Ok(mut rsp) => {
                    ep.load.observe(start.elapsed(), Instant::now());
                    let switched = rsp.status() == StatusCode::SWITCHING_PROTOCOLS;
                    if let (true, Some(server)) = (switched, server_upgrade) {
                        upgrade::splice(server, hyper::upgrade::on(&mut rsp));
                    }
                    strip_hop_by_hop(rsp.headers_mut(), switched);
                    return rsp;
                }
                Err(SendError { error, request: Some(r) }) => {
                    // Never written: safe to send elsewhere.
                    tracing::debug!(endpoint = %ep.meta.addr, %error, "connection unusable; trying another endpoint");
                    ep.load.penalize(Instant::now());
                    last = ProxyError::Connect { target: target.to_string(), reason: error.to_string() };
                    req = r;
                }
                Err(SendError { error, request: None }) => {
                    ep.load.penalize(Instant::now());
                    tracing::debug!(endpoint = %ep.meta.addr, %error, "upstream failed mid-request");
                    let e = ProxyError::Upstream { target: target.to_string(), reason: error.to_string() };
                    return errors::response(&e, grpc);
                }
            }
        }
        errors::response(&last, grpc)
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
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(req).await) })
    }
}
