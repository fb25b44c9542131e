//! Inbound authorization for HTTP: each request is checked against the
//! port's policy (client identity or network, and the request itself);
//! denied requests get 403 (gRPC: PERMISSION_DENIED) naming the policy.

use super::errors::{self, ProxyError};
use crate::body::Body;
use crate::metrics::Metrics;
use crate::policy::client::Live;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use mesh_policy::headers::is_grpc;
use mesh_policy::inbound::{Client, InboundPolicy};
use std::convert::Infallible;
use std::task::{Context, Poll};

/// Checks every request before `inner` sees it.
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    policy: Live<InboundPolicy>,
    client: Client,
    target: String,
    metrics: Metrics,
}

impl<S> Authorize<S> {
    /// Authorizes `client`'s requests to `target` under `policy`.
    pub fn new(inner: S, policy: Live<InboundPolicy>, client: Client, target: String, metrics: Metrics) -> Self {
        Self { inner, policy, client, target, metrics }
    }
}

impl<S, B> tower::Service<Request<B>> for Authorize<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let verdict = self.policy.current().authorize(&self.client, Some(&parts));
        self.metrics.authorization(&self.target, &verdict);
        if !verdict.allowed {
            tracing::debug!(client = ?self.client, policy = %verdict.policy, rule = %verdict.rule, path = parts.uri.path(), "request denied");
            let grpc = is_grpc(&parts.headers);
            let rsp = errors::response(&ProxyError::Denied { policy: verdict.policy, rule: verdict.rule }, grpc);
            return Box::pin(async move { Ok(rsp) });
        }
        let fut = self.inner.call(Request::from_parts(parts, body));
        Box::pin(fut)
    }
}
