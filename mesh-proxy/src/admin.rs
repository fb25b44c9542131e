//! The proxy's admin endpoints: `/metrics`, `/ready`, `/live`, `/config`
//! (what the proxy currently knows, as JSON; nothing secret), `/tap` and
//! `/shutdown` (POST), and the app's kubelet probes under `/app-health/`
//! (exactly those the injector configured; see [`crate::app_probe`]), and
//! `POST /check/probe` (`meshctl check`'s live probe; see [`crate::probe`]).
//!
//! The admin port listens where probes and Prometheus reach it (often
//! `0.0.0.0:4191`), so anything that can reach it may read the open routes.
//! `/shutdown` stops the sidecar and `/tap` shows its traffic: both are
//! served to loopback clients only (the workload's own host or pod), like
//! Linkerd's; anyone else gets 403 with what to do instead.

use crate::app_probe::{self, AppProbes};
use crate::balance::Status;
use crate::balancers::Balancers;
use crate::config::Config;
use crate::discovery::Resolver;
use crate::probe::{self, Limiter};
use crate::telemetry::tap::{Filter, MAX_TAPS, Tap};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use mesh_core::admin::{self, Body, Handler, Peer};
use mesh_core::shutdown::Trigger;
use mesh_identity::tls::Credentials;
use prometheus_client::registry::Registry;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Shared admin state.
#[derive(Debug, Clone)]
pub struct Admin {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    ready: AtomicBool,
    trigger: Trigger,
    config: Config,
    resolver: Resolver,
    balancers: Balancers,
    creds: Option<Arc<Credentials>>,
    tap: Tap,
    probes: AppProbes,
    live_probe: probe::Source,
    limiter: Limiter,
}

const ROUTES: &[&str] = &["/metrics", "/ready", "/live", "/config", "/tap", "/shutdown", probe::PATH];

impl Admin {
    /// Admin state over a finished registry; the proxy's balancers are
    /// the live probe's (`/config` lists them).
    pub fn new(
        registry: Registry,
        trigger: Trigger,
        config: Config,
        resolver: Resolver,
        creds: Option<Arc<Credentials>>,
        tap: Tap,
        live_probe: probe::Source,
    ) -> Self {
        let balancers = live_probe.balancers.clone();
        let ready = AtomicBool::new(false);
        let probes = AppProbes::new(&config.app_probes);
        let limiter = Limiter::default();
        Self {
            inner: Arc::new(Inner {
                registry,
                ready,
                trigger,
                config,
                resolver,
                balancers,
                creds,
                tap,
                probes,
                live_probe,
                limiter,
            }),
        }
    }

    /// `POST /check/probe?target=name.namespace:port`: one live probe to
    /// that mesh service (400 for anything else as a target, 429 while one
    /// runs or within a second of the last).
    async fn live_probe(&self, method: &Method, query: Option<&str>) -> Response<Body> {
        if method != Method::POST {
            return admin::text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("use POST {}?target=name.namespace:port\n", probe::PATH),
            );
        }
        let target = query
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "target")
            .map(|(_, v)| percent_decode(v));
        let target = match target.as_deref().map(probe::parse_target) {
            Some(Ok(t)) => t,
            Some(Err(e)) => return admin::text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            None => return admin::text(StatusCode::BAD_REQUEST, "give ?target=name.namespace:port\n"),
        };
        let _permit = match self.inner.limiter.try_start(Instant::now()) {
            Ok(p) => p,
            Err(why) => return admin::text(StatusCode::TOO_MANY_REQUESTS, format!("{why}\n")),
        };
        let source =
            self.inner.creds.as_ref().and_then(|c| c.leaf_info()).and_then(|l| l.spiffe_id().map(str::to_string));
        let report = probe::run(&self.inner.live_probe, source, &target).await;
        tracing::info!(target = %report.target, authorized = ?report.authorized, error = ?report.error, "live probe");
        match serde_json::to_vec_pretty(&report) {
            Ok(b) => admin::json(b),
            Err(e) => admin::text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        }
    }

    /// `/tap?path=/api&method=GET&authority=books&direction=inbound`: a
    /// stream of JSON lines, one per matching request, until the client
    /// goes away.
    fn tap(&self, query: Option<&str>) -> Response<Body> {
        let mut filter = Filter::default();
        for (k, v) in query.unwrap_or("").split('&').filter_map(|kv| kv.split_once('=')) {
            let v = percent_decode(v);
            match k {
                "path" => filter.path_prefix = Some(v),
                "method" => filter.method = Some(v),
                "authority" => filter.authority = Some(v),
                "direction" => filter.direction = Some(v),
                _ => {}
            }
        }
        let Some(rx) = self.inner.tap.subscribe(filter) else {
            return admin::text(StatusCode::TOO_MANY_REQUESTS, format!("at most {MAX_TAPS} taps at once\n"));
        };
        let lines = futures_util::stream::unfold(rx, |mut rx| async move {
            let e = rx.recv().await?;
            let mut line = serde_json::to_vec(&e).unwrap_or_default();
            line.push(b'\n');
            Some((Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(line))), rx))
        });
        let mut rsp = Response::new(StreamBody::new(lines).boxed_unsync());
        rsp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
        rsp
    }

    /// Ready: listening, and holding a valid certificate when identity is on.
    fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire) && self.inner.creds.as_ref().is_none_or(|c| c.has_valid_leaf())
    }

    /// Marks the proxy ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Release);
    }

    fn config_json(&self) -> serde_json::Value {
        let now = Instant::now();
        let targets: Vec<serde_json::Value> = self
            .inner
            .balancers
            .all()
            .iter()
            .map(|b| {
                let list = b.current();
                let endpoints: Vec<serde_json::Value> = list
                    .endpoints
                    .iter()
                    .map(|e| {
                        json!({
                            "address": e.meta.addr.to_string(),
                            "weight": e.meta.weight,
                            "identity": e.meta.identity,
                            "labels": e.meta.labels,
                            "in_flight": e.load.pending(),
                            "latency_estimate_ms": e.load.cost(now).as_secs_f64() * 1000.0,
                            "idle_http1_connections": e.client.idle_count(),
                        })
                    })
                    .collect();
                json!({
                    "target": b.target(),
                    "status": match list.status { Status::Pending => "pending", Status::Unknown => "unknown", Status::Resolved => "resolved" },
                    "service": list.service.as_ref().map(|s| json!({
                        "name": s.name, "namespace": s.namespace, "port": s.port, "protocol": s.protocol.as_str_name(),
                    })),
                    "endpoints": endpoints,
                })
            })
            .collect();
        let discovery: Vec<serde_json::Value> = self
            .inner
            .resolver
            .snapshot()
            .into_iter()
            .map(|(t, w)| json!({ "target": t, "stream": w.state() }))
            .collect();
        let identity = self.inner.creds.as_ref().map(|c| {
            let leaf = c.leaf_info();
            json!({
                "identity": leaf.as_ref().and_then(|l| l.spiffe_id().map(str::to_string)),
                "expires_unix": leaf.as_ref().and_then(|l| l.not_after.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs()),
                "trust_anchors": c.bundle().anchors.len(),
            })
        });
        json!({
            "config": self.inner.config,
            "ready": self.is_ready(),
            "identity": identity,
            "targets": targets,
            "discovery": discovery,
        })
    }
}

impl Admin {
    /// `GET /app-health/<container>/<kind>`: runs that configured probe
    /// against the app; 200 when healthy, 503 when not, 404 (having
    /// connected to nothing) for a path that is not configured.
    async fn app_probe(&self, method: &Method, path: &str) -> Response<Body> {
        if method != Method::GET && method != Method::HEAD {
            return admin::text(StatusCode::METHOD_NOT_ALLOWED, "app probes take GET\n");
        }
        match self.inner.probes.run(path).await {
            Some(Ok(detail)) => admin::text(StatusCode::OK, format!("{detail}\n")),
            Some(Err(reason)) => {
                tracing::debug!(path, %reason, "app probe failed");
                admin::text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n"))
            }
            None => {
                let paths: Vec<&str> = self.inner.probes.paths().collect();
                admin::text(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no app probe at {path}; configured: {}\n",
                        if paths.is_empty() { "none".to_string() } else { paths.join(" ") }
                    ),
                )
            }
        }
    }
}

/// Routes served to loopback clients only.
const LOCAL_ONLY: &[&str] = &["/tap", "/shutdown"];

/// The 403 a non-loopback client gets for a [`LOCAL_ONLY`] route, saying
/// how to do it instead.
fn refuse_remote(path: &str, peer: Option<Peer>) -> Response<Body> {
    let from = peer.map_or_else(|| "an unknown address".to_string(), |p| p.0.ip().to_string());
    tracing::info!(%from, path, "admin request refused: not from loopback");
    let how = if path == "/tap" {
        "tap from the workload's own host or pod, over loopback \
         (`meshctl tap --proxy 127.0.0.1:<admin port>`, or `curl http://127.0.0.1:<admin port>/tap`); \
         tapping a proxy over the network is not available"
    } else {
        "send POST /shutdown from the workload's own host or pod, over loopback, or send the proxy SIGTERM"
    };
    admin::text(StatusCode::FORBIDDEN, format!("{path} is served only to loopback clients, not to {from}: {how}\n"))
}

impl Handler for Admin {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        if LOCAL_ONLY.contains(&path) {
            // No recorded peer means we cannot tell: refuse.
            let peer = Peer::of(&req);
            if !peer.is_some_and(|p| p.is_loopback()) {
                return refuse_remote(path, peer);
            }
        }
        if path.starts_with(app_probe::PREFIX) {
            return self.app_probe(req.method(), path).await;
        }
        if path == probe::PATH {
            return self.live_probe(req.method(), req.uri().query()).await;
        }
        match (req.method(), path) {
            (_, "/metrics") => admin::encode_registry(&self.inner.registry),
            (_, "/live") => admin::text(StatusCode::OK, "live\n"),
            (_, "/ready") if self.is_ready() => admin::text(StatusCode::OK, "ready\n"),
            (_, "/ready") => admin::text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            (_, "/config") => match serde_json::to_vec_pretty(&self.config_json()) {
                Ok(b) => admin::json(b),
                Err(e) => admin::text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            },
            (_, "/tap") => self.tap(req.uri().query()),
            (&Method::POST, "/shutdown") => {
                tracing::info!("shutdown requested on the admin port");
                self.inner.trigger.trigger();
                admin::text(StatusCode::OK, "shutting down\n")
            }
            (_, "/shutdown") => admin::text(StatusCode::METHOD_NOT_ALLOWED, "use POST /shutdown\n"),
            _ => admin::not_found(ROUTES),
        }
    }
}

/// Decodes `%XX` escapes and `+` in a query value.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_queries() {
        assert_eq!(super::percent_decode("%2Fapi%2Fbooks"), "/api/books");
        assert_eq!(super::percent_decode("a+b"), "a b");
        assert_eq!(super::percent_decode("100%"), "100%");
        assert_eq!(super::percent_decode("%zz"), "%zz");
    }
}
