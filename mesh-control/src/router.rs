//! One gRPC port for every proxy-facing API: requests are routed to the
//! service their path names.

use futures_util::future::BoxFuture;
use std::convert::Infallible;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::server::NamedService;

type Svc = tower::util::BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

/// Routes by the service name at the start of the path.
#[derive(Clone, Default)]
pub struct Router {
    routes: Vec<(String, Svc)>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.routes.iter().map(|(p, _)| p)).finish()
    }
}

impl Router {
    /// Adds a generated gRPC service.
    #[allow(clippy::should_implement_trait)] // a builder method, not arithmetic
    pub fn add<S>(mut self, svc: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes.push((format!("/{}/", S::NAME), Svc::new(svc)));
        self
    }
}

impl tower::Service<http::Request<Body>> for Router {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let path = req.uri().path();
        match self.routes.iter_mut().find(|(prefix, _)| path.starts_with(prefix.as_str())) {
            Some((_, svc)) => {
                let mut svc = svc.clone();
                Box::pin(async move { tower::Service::call(&mut svc, req).await })
            }
            None => {
                let status = tonic::Status::unimplemented(format!("no service for {path}"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}
