//! The outbound router: applies a target's policy to each request.
//!
//! route match (first wins) → fault injection → rate limit → deadline
//! (route timeout) → retries (budgeted, only with a replayable body) →
//! backend split (weighted) → [`forward_once`] (balancer, circuit breaking,
//! limits). Requests no route matches go to the target with default
//! behaviour.

use super::errors::{self, ProxyError};
use super::observe::RouteName;
use super::proxy::{Attempt, ForwardSettings, forward_once, prepare};
use super::replay::{Buffered, buffer};
use crate::balance::Balancer;
use crate::balancers::Balancers;
use crate::body::{self, Body};
use crate::metrics::{Metrics, RouteLabels};
use crate::policy::client::Live;
use crate::pool::Version;
use futures_util::future::BoxFuture;
use http::request::Parts;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use mesh_policy::outbound::{OutboundPolicy, Retry, RetryOn, Route};
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Routes a target's requests by its policy. Cloned per request: one `Arc`.
#[derive(Debug, Clone)]
pub struct OutboundRouter(Arc<Router>);

#[derive(Debug)]
struct Router {
    target: Arc<Balancer>,
    policy: Live<OutboundPolicy>,
    balancers: Balancers,
    version: Version,
    settings: ForwardSettings,
    metrics: Metrics,
}

impl OutboundRouter {
    /// A router for `target` under `policy`; backends come from `balancers`.
    pub fn new(
        target: Arc<Balancer>,
        policy: Live<OutboundPolicy>,
        balancers: Balancers,
        version: Version,
        settings: ForwardSettings,
        metrics: Metrics,
    ) -> Self {
        Self(Arc::new(Router { target, policy, balancers, version, settings, metrics }))
    }
}

impl Router {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let p = prepare(req);
        let grpc = p.grpc;
        let policy = self.policy.ready(self.settings.failfast).await;
        let (parts, body) = p.req.into_parts();
        let result = match policy.route(&parts) {
            None => {
                let req = Request::from_parts(parts, body);
                forward_once(&self.target, self.how(&policy), req, p.upgrade, &mut Vec::new()).await
            }
            Some(route) => {
                let name = route.name.clone();
                // Boxed: retries, timeouts and faults make this future
                // several times larger than a plain forward, and every
                // request's future is moved into a box of its size.
                let mut rsp = Box::pin(self.routed(&policy, route, parts, body, p.upgrade, grpc))
                    .await
                    .unwrap_or_else(|e| errors::response(&e, grpc));
                rsp.extensions_mut().insert(RouteName(name));
                return rsp;
            }
        };
        result.unwrap_or_else(|e| errors::response(&e, grpc))
    }

    async fn routed(
        &self,
        policy: &OutboundPolicy,
        route: &Route,
        parts: Parts,
        body: Body,
        upgrade: Option<OnUpgrade>,
        grpc: bool,
    ) -> Result<Response<Body>, ProxyError> {
        let labels = || RouteLabels { target: self.target.target().to_string(), route: route.name.to_string() };
        route.requests.get_or_init(|| self.metrics.route_requests(&labels())).inc();
        if let Some(f) = &route.fault {
            if roll(f.abort_percent) {
                self.metrics.route_event(&labels(), "fault_abort");
                return Ok(abort(f.abort_http, f.abort_grpc, grpc, &route.name));
            }
            if roll(f.delay_percent) {
                self.metrics.route_event(&labels(), "fault_delay");
                tokio::time::sleep(f.delay).await;
            }
        }
        if let Some(bucket) = &route.rate_limit
            && !bucket.try_take()
        {
            self.metrics.route_event(&labels(), "rate_limited");
            return Err(ProxyError::RateLimited { route: route.name.to_string(), rate: bucket.rate() });
        }
        let attempts = self.attempts(policy, route, &labels, parts, body, upgrade);
        match route.timeout {
            None => attempts.await,
            Some(after) => match tokio::time::timeout(after, attempts).await {
                Ok(r) => r,
                Err(_) => {
                    self.metrics.route_event(&labels(), "timeout");
                    Err(ProxyError::Timeout {
                        target: self.target.target().to_string(),
                        route: route.name.to_string(),
                        after,
                    })
                }
            },
        }
    }

    fn how<'a>(&'a self, policy: &'a OutboundPolicy) -> Attempt<'a> {
        Attempt { version: self.version, settings: &self.settings, limits: &policy.limits, breaker: &policy.breaker }
    }

    fn backend(&self, route: &Route) -> Arc<Balancer> {
        let total: u64 = route.backends.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return self.target.clone();
        }
        let mut point = fastrand::u64(0..total);
        for (target, w) in &route.backends {
            if point < u64::from(*w) {
                return self.balancers.permanent(target);
            }
            point -= u64::from(*w);
        }
        self.target.clone()
    }

    async fn once(
        &self,
        policy: &OutboundPolicy,
        route: &Route,
        req: Request<Body>,
        upgrade: Option<OnUpgrade>,
        per_try: Option<Duration>,
        avoid: &mut Vec<std::net::SocketAddr>,
    ) -> Result<Response<Body>, ProxyError> {
        let backend = self.backend(route);
        let fut = forward_once(&backend, self.how(policy), req, upgrade, avoid);
        match per_try {
            None => fut.await,
            Some(after) => tokio::time::timeout(after, fut).await.unwrap_or_else(|_| {
                Err(ProxyError::Timeout { target: backend.target().to_string(), route: route.name.to_string(), after })
            }),
        }
    }

    async fn attempts(
        &self,
        policy: &OutboundPolicy,
        route: &Route,
        labels: &(dyn Fn() -> RouteLabels + Sync),
        parts: Parts,
        body: Body,
        upgrade: Option<OnUpgrade>,
    ) -> Result<Response<Body>, ProxyError> {
        policy.budget.deposit();
        let (Some(retry), None) = (&route.retry, &upgrade) else {
            let per_try = route.retry.as_ref().and_then(|r| r.per_try_timeout);
            return self.once(policy, route, Request::from_parts(parts, body), upgrade, per_try, &mut Vec::new()).await;
        };
        let body = match buffer(body, retry.buffer_limit).await.map_err(|e| ProxyError::BadRequest(e.to_string()))? {
            Buffered::Complete(bytes) => bytes,
            // Too large to replay: sent once, never retried.
            Buffered::Streaming(b) => {
                let req = Request::from_parts(parts, b);
                return self.once(policy, route, req, None, retry.per_try_timeout, &mut Vec::new()).await;
            }
        };
        let mut attempt = 0u32;
        let mut failed_on = Vec::new();
        loop {
            let req = rebuild(&parts, body::full(body.clone()));
            let res = self.once(policy, route, req, None, retry.per_try_timeout, &mut failed_on).await;
            if attempt >= retry.max_retries || !should_retry(&res, &retry.on) {
                return res;
            }
            if !policy.budget.try_withdraw() {
                self.metrics.route_event(&labels(), "retry_budget_exhausted");
                return res;
            }
            self.metrics.route_event(&labels(), "retry");
            drop(res);
            tokio::time::sleep(backoff(retry, attempt)).await;
            attempt += 1;
        }
    }
}

/// A copy of a request's head with a new body (extensions are not carried:
/// nothing retried needs them).
fn rebuild(parts: &Parts, body: Body) -> Request<Body> {
    let mut r = Request::new(body);
    *r.method_mut() = parts.method.clone();
    *r.uri_mut() = parts.uri.clone();
    *r.version_mut() = parts.version;
    *r.headers_mut() = parts.headers.clone();
    r
}

fn roll(percent: f64) -> bool {
    percent > 0.0 && fastrand::f64() * 100.0 < percent
}

/// Exponential backoff with jitter: base × 2^attempt, capped, drawn from
/// its upper half.
fn backoff(r: &Retry, attempt: u32) -> Duration {
    let ceiling = r.backoff_base.saturating_mul(1u32 << attempt.min(16)).min(r.backoff_max);
    ceiling / 2 + ceiling.mul_f64(fastrand::f64() / 2.0)
}

/// Whether a failed attempt may be retried under `on`.
pub fn should_retry(res: &Result<Response<Body>, ProxyError>, on: &RetryOn) -> bool {
    match res {
        Ok(rsp) => {
            let s = rsp.status().as_u16();
            let grpc =
                rsp.headers().get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u32>().ok());
            (on.server_error && s >= 500)
                || (on.gateway_error && matches!(s, 502..=504))
                || grpc.is_some_and(|g| on.grpc.contains(&g))
        }
        Err(ProxyError::Connect { .. }) => on.connect_failure || on.gateway_error,
        // Never processed: resending is safe whatever the policy says.
        Err(ProxyError::Unprocessed { .. }) => true,
        Err(ProxyError::Upstream { .. }) => on.reset,
        Err(ProxyError::Timeout { .. }) | Err(ProxyError::NoEndpoints(_)) | Err(ProxyError::Unresolved(_)) => {
            on.gateway_error || on.server_error
        }
        Err(_) => false,
    }
}

fn abort(http_status: u16, grpc_status: Option<u32>, grpc: bool, route: &str) -> Response<Body> {
    let mut rsp = match (grpc, grpc_status) {
        (true, Some(code)) => {
            let mut r = Response::new(body::empty());
            r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            r.headers_mut().insert("grpc-status", HeaderValue::from(code));
            r.headers_mut().insert("grpc-message", HeaderValue::from_static("fault injected"));
            r
        }
        _ => {
            let mut r = Response::new(body::full(format!("fault injected by route {route}\n")));
            *r.status_mut() =
                http::StatusCode::from_u16(http_status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
            r
        }
    };
    rsp.headers_mut().insert("mesh-fault", HeaderValue::from_static("abort"));
    rsp
}

impl tower::Service<Request<Incoming>> for OutboundRouter {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let this = self.0.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, grpc: Option<&str>) -> Result<Response<Body>, ProxyError> {
        let mut r = Response::new(body::empty());
        *r.status_mut() = http::StatusCode::from_u16(code).expect("status");
        if let Some(g) = grpc {
            r.headers_mut().insert("grpc-status", HeaderValue::from_str(g).expect("value"));
        }
        Ok(r)
    }

    #[test]
    fn retry_conditions() {
        let on = RetryOn { gateway_error: true, connect_failure: true, grpc: vec![14], ..Default::default() };
        assert!(should_retry(&status(503, None), &on));
        assert!(!should_retry(&status(500, None), &on), "500 is not a gateway error");
        assert!(!should_retry(&status(200, None), &on));
        assert!(should_retry(&status(200, Some("14")), &on));
        assert!(!should_retry(&status(200, Some("5")), &on));
        let connect = Err(ProxyError::Connect { target: "t".into(), reason: "refused".into() });
        assert!(should_retry(&connect, &on));
        let reset = Err(ProxyError::Upstream { target: "t".into(), reason: "reset".into() });
        assert!(!should_retry(&reset, &on));
        assert!(should_retry(&reset, &RetryOn { reset: true, ..Default::default() }));
        assert!(should_retry(&status(500, None), &RetryOn { server_error: true, ..Default::default() }));
    }

    #[test]
    fn backoff_grows_and_caps() {
        let r = Retry {
            max_retries: 5,
            on: RetryOn::default(),
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            per_try_timeout: None,
            buffer_limit: 0,
        };
        for (attempt, hi) in [(0, 10), (1, 20), (2, 40), (3, 50), (10, 50)] {
            let d = backoff(&r, attempt);
            assert!(d <= Duration::from_millis(hi) && d >= Duration::from_millis(hi / 2), "{attempt}: {d:?}");
        }
    }
}
