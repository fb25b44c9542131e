//! The control plane's admin endpoints: `/metrics`, `/ready`, `/live`.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use mesh_core::admin::{self, Body, Handler};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Shared admin state.
#[derive(Debug, Clone)]
pub struct Admin {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
}

impl Admin {
    /// Admin over a finished metrics registry; `ready` flips once serving.
    pub fn new(registry: Registry, ready: Arc<AtomicBool>) -> Self {
        Self { registry: Arc::new(registry), ready }
    }
}

impl Handler for Admin {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        match req.uri().path() {
            "/metrics" => admin::encode_registry(&self.registry),
            "/live" => admin::text(StatusCode::OK, "live\n"),
            "/ready" if self.ready.load(Ordering::Acquire) => admin::text(StatusCode::OK, "ready\n"),
            "/ready" => admin::text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            _ => admin::not_found(&["/metrics", "/ready", "/live"]),
        }
    }
}
