//! A layer that counts requests and responses and times them.
//!
//! Responses are counted when their body ends, so a gRPC status carried in
//! trailers classifies the response correctly.

use super::body::{self, Body, BoxError};
use crate::metrics::HttpHandles;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use hyper::body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// Wraps a service with metrics.
#[derive(Debug, Clone)]
pub struct Metered<S> {
    inner: S,
    handles: Arc<HttpHandles>,
}

impl<S> Metered<S> {
    /// Meters `inner` into `handles`.
    pub fn new(inner: S, handles: Arc<HttpHandles>) -> Self {
        Self { inner, handles }
    }
}

impl<S, B> tower::Service<Request<B>> for Metered<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.handles.requests.inc();
        let start = Instant::now();
        let handles = self.handles.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let rsp = fut.await?;
            handles.latency.observe(start.elapsed().as_secs_f64());
            let status = rsp.status().as_u16();
            let grpc = grpc_status(rsp.headers());
            Ok(rsp.map(|b| body::boxed(MeteredBody { inner: b, pending: Some(Pending { handles, status, grpc }) })))
        })
    }
}

struct Pending {
    handles: Arc<HttpHandles>,
    status: u16,
    grpc: Option<u32>,
}

struct MeteredBody {
    inner: Body,
    pending: Option<Pending>,
}

impl MeteredBody {
    fn finish(&mut self, trailers: Option<&HeaderMap>) {
        if let Some(p) = self.pending.take() {
            let grpc = trailers.and_then(grpc_status).or(p.grpc);
            p.handles.response(p.status, grpc);
        }
    }
}

fn grpc_status(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = frame.trailers_ref() {
                    let t = t.clone();
                    self.finish(Some(&t));
                } else if self.inner.is_end_stream() {
                    self.finish(None);
                }
            }
            Poll::Ready(None) => self.finish(None),
            Poll::Ready(Some(Err(_))) => {
                // The stream broke mid-body: a failure whatever the status said.
                if let Some(p) = self.pending.take() {
                    p.handles.response(p.status.max(500), p.grpc);
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

impl Drop for MeteredBody {
    fn drop(&mut self) {
        // Bodies that are empty may never be polled; count them on drop.
        self.finish(None);
    }
}
