//! The control plane's admin endpoints: `/metrics`, `/ready`, `/live`,
//! `/proxies` (the registered proxies, as JSON).

use crate::workloads::Proxies;
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
    proxies: Proxies,
}

impl Admin {
    /// Admin over a finished metrics registry; `ready` flips once serving.
    pub fn new(registry: Registry, ready: Arc<AtomicBool>) -> Self {
        Self { registry: Arc::new(registry), ready, proxies: Proxies::default() }
    }

    /// Serves `/proxies` from this set of registered proxies.
    pub fn with_proxies(mut self, proxies: Proxies) -> Self {
        self.proxies = proxies;
        self
    }
}

impl Handler for Admin {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        match req.uri().path() {
            "/metrics" => admin::encode_registry(&self.registry),
            "/live" => admin::text(StatusCode::OK, "live\n"),
            "/ready" if self.ready.load(Ordering::Acquire) => admin::text(StatusCode::OK, "ready\n"),
            "/ready" => admin::text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            "/proxies" => match serde_json::to_vec_pretty(&self.proxies.listing()) {
                Ok(b) => admin::json(b),
                Err(e) => admin::text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            },
            _ => admin::not_found(&["/metrics", "/ready", "/live", "/proxies"]),
        }
    }
}
