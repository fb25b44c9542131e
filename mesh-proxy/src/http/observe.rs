//! The observation layer around every HTTP exchange: metrics (counted when
//! the response body ends, so gRPC trailers classify it), a trace span
//! (joining the app's trace and passing it on), an access log line and tap
//! events. Tracing, access logs and tap cost nothing when off.

use crate::body::{self, Body, BoxError};
use crate::metrics::{Direction, HttpHandles};
use crate::telemetry::Telemetry;
use crate::telemetry::access_log::{Entry, now_rfc3339};
use crate::telemetry::propagation::{self, Format, SpanContext};
use crate::telemetry::trace::SpanRecord;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use hyper::body::{Frame, SizeHint};
use mesh_proto::wire::TapEvent;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

/// The route a response took, set by the router for metrics and logs.
#[derive(Debug, Clone)]
pub struct RouteName(pub std::sync::Arc<str>);

/// What every exchange on one connection shares.
#[derive(Debug)]
pub struct ObserveCtx {
    /// Metric handles for the connection's labels.
    pub handles: Arc<HttpHandles>,
    /// Tracing, access log, tap.
    pub telemetry: Telemetry,
    /// Direction.
    pub direction: Direction,
    /// The target.
    pub target: String,
    /// The peer's identity, if mTLS.
    pub peer_id: String,
    /// The client's address.
    pub client_addr: Option<SocketAddr>,
}

/// Wraps a service with observation.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    ctx: Arc<ObserveCtx>,
}

impl<S> Observe<S> {
    /// Observes `inner`'s exchanges.
    pub fn new(inner: S, ctx: Arc<ObserveCtx>) -> Self {
        Self { inner, ctx }
    }
}

/// What was known at the request, kept for the end of the response.
struct Start {
    at: Instant,
    wall: SystemTime,
    span: Option<(SpanContext, Option<[u8; 8]>)>,
    request: Option<(String, String, String)>,
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::inbound => "inbound",
        Direction::outbound => "outbound",
    }
}

impl<S> tower::Service<Request<hyper::body::Incoming>> for Observe<S>
where
    S: tower::Service<Request<hyper::body::Incoming>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<hyper::body::Incoming>) -> Self::Future {
        let ctx = self.ctx.clone();
        ctx.handles.requests.inc();
        let tel = &ctx.telemetry;
        let span = tel.tracer.as_ref().map(|tr| join_trace(req.headers_mut(), tr.ratio));
        let sampled_span = span.filter(|(me, _)| me.sampled);
        let wants_request = sampled_span.is_some() || tel.access_log.is_some() || tel.tap.is_active();
        let request = wants_request.then(|| {
            let authority = mesh_policy::matcher::request_host(req.uri(), req.headers()).unwrap_or_default();
            (req.method().to_string(), authority, req.uri().path().to_string())
        });
        let start = Start { at: Instant::now(), wall: SystemTime::now(), span: sampled_span, request };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let rsp = fut.await?;
            let latency = start.at.elapsed();
            ctx.handles.latency.observe(latency.as_secs_f64());
            let status = rsp.status().as_u16();
            let grpc = grpc_status(rsp.headers());
            let route = rsp.extensions().get::<RouteName>().map(|r| r.0.clone());
            let pending =
                Pending { ctx, start, status, grpc, route, latency_ms: latency.as_secs_f64() * 1e3, bytes_out: 0 };
            Ok(rsp.map(|b| body::boxed(ObservedBody { inner: b, pending: Some(pending) })))
        })
    }
}

/// Joins the request's trace (or starts one) as a new span, and passes the
/// trace on with this span as the parent.
fn join_trace(headers: &mut HeaderMap, ratio: f64) -> (SpanContext, Option<[u8; 8]>) {
    let (trace_id, parent, sampled, format) = match propagation::extract(headers) {
        Some((c, f)) => (c.trace_id, Some(c.span_id), c.sampled, f),
        None => {
            let t = propagation::random_id();
            (t, None, propagation::sample(&t, ratio), Format::W3c)
        }
    };
    let me = SpanContext { trace_id, span_id: propagation::random_id(), sampled };
    propagation::inject(headers, &me, parent, format);
    (me, parent)
}

fn grpc_status(h: &HeaderMap) -> Option<u32> {
    h.get(super::errors::GRPC_STATUS)?.to_str().ok()?.parse().ok()
}

struct Pending {
    ctx: Arc<ObserveCtx>,
    start: Start,
    status: u16,
    grpc: Option<u32>,
    route: Option<std::sync::Arc<str>>,
    latency_ms: f64,
    bytes_out: u64,
}

impl Pending {
    fn finish(self, trailers: Option<&HeaderMap>, broken: bool) {
        let grpc = trailers.and_then(grpc_status).or(self.grpc);
        let failed = self.ctx.handles.response(self.status, grpc, self.route.as_ref(), broken);
        let tel = &self.ctx.telemetry;
        let direction = direction_name(self.ctx.direction);
        if let (Some(tr), Some((me, parent))) = (&tel.tracer, self.start.span) {
            let mut attributes = vec![
                ("http.response.status_code", self.status.to_string()),
                ("mesh.target", self.ctx.target.clone()),
                ("mesh.workload", tel.workload.clone()),
            ];
            if let Some((method, authority, path)) = &self.start.request {
                attributes.push(("http.request.method", method.clone()));
                attributes.push(("server.address", authority.clone()));
                attributes.push(("url.path", path.clone()));
            }
            if !self.ctx.peer_id.is_empty() {
                attributes.push(("mesh.peer.identity", self.ctx.peer_id.clone()));
            }
            if let Some(g) = grpc {
                attributes.push(("rpc.grpc.status_code", g.to_string()));
            }
            tr.record(SpanRecord {
                trace_id: me.trace_id,
                span_id: me.span_id,
                parent,
                name: direction,
                server: self.ctx.direction == Direction::inbound,
                start: self.start.wall,
                end: SystemTime::now(),
                attributes,
                error: failed,
            });
        }
        let (method, authority, path) = self.start.request.clone().unwrap_or_default();
        // A request that started before the tap opened carries no details: skip it.
        if tel.tap.is_active() && self.start.request.is_some() {
            tel.tap.publish(&TapEvent {
                ts_ms: self.start.wall.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
                direction: direction.to_string(),
                workload: tel.workload.clone(),
                target: self.ctx.target.clone(),
                peer_id: self.ctx.peer_id.clone(),
                method: method.clone(),
                authority: authority.clone(),
                path: path.clone(),
                status: self.status,
                grpc_status: grpc,
                latency_ms: self.latency_ms,
                tls: !self.ctx.peer_id.is_empty(),
            });
        }
        if let Some(log) = &tel.access_log {
            let inbound = self.ctx.direction == Direction::inbound;
            log.log(Entry {
                time: now_rfc3339(self.start.wall),
                direction,
                kind: "http",
                client_id: if inbound { self.ctx.peer_id.clone() } else { String::new() },
                server_id: if inbound { String::new() } else { self.ctx.peer_id.clone() },
                client_addr: self.ctx.client_addr.map(|a| a.to_string()).unwrap_or_default(),
                target: self.ctx.target.clone(),
                method: Some(method),
                authority: Some(authority),
                path: Some(path),
                status: Some(self.status),
                grpc_status: grpc,
                latency_ms: self.latency_ms,
                bytes_in: 0,
                bytes_out: self.bytes_out,
                route: self.route.map(|r| r.to_string()),
                authz: None,
            });
        }
    }
}

struct ObservedBody {
    inner: Body,
    pending: Option<Pending>,
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref()
                    && let Some(p) = self.pending.as_mut()
                {
                    p.bytes_out += d.len() as u64;
                }
                if let Some(t) = frame.trailers_ref() {
                    let t = t.clone();
                    if let Some(p) = self.pending.take() {
                        p.finish(Some(&t), false);
                    }
                } else if self.inner.is_end_stream()
                    && let Some(p) = self.pending.take()
                {
                    p.finish(None, false);
                }
            }
            Poll::Ready(None) => {
                if let Some(p) = self.pending.take() {
                    p.finish(None, false);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                // The stream broke mid-body: a failure whatever the status said.
                if let Some(p) = self.pending.take() {
                    p.finish(None, true);
                }
            }
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // Empty bodies may never be polled; count them on drop.
        if let Some(p) = self.pending.take() {
            p.finish(None, false);
        }
    }
}
