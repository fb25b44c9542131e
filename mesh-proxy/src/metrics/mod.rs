//! The proxy's metrics (Prometheus text on the admin port).
//!
//! Label values are bounded by design: directions, targets the proxy was
//! configured with or discovered, status codes. Handles for fixed label sets
//! are resolved once per connection, not once per request.

pub mod handshakes;

use crate::io::ByteCounters;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::fmt::Write as _;
use std::sync::Arc;

/// Latency buckets, in seconds: fine below 10 ms where sidecars live.
pub const LATENCY_BUCKETS: [f64; 18] =
    [0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Traffic direction.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    /// Into the local app.
    inbound,
    /// From the local app.
    outbound,
}

/// Whether a connection was mutually authenticated TLS.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Tls {
    /// mTLS between proxies.
    Yes,
    /// Plaintext.
    No,
}

impl EncodeLabelValue for Tls {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Tls::Yes => "true",
            Tls::No => "false",
        })
    }
}

/// Outcome class of a response.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Class {
    /// 1xx-4xx, or gRPC OK / client-side codes.
    success,
    /// 5xx, a proxy error, or a failing gRPC status.
    failure,
}

/// Labels shared by every HTTP and TCP metric.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Labels {
    /// inbound or outbound.
    pub direction: Direction,
    /// The target: a service authority (outbound) or the app port (inbound).
    pub target: String,
    /// Whether the connection was mTLS.
    pub tls: Tls,
    /// The peer's identity: the client's (inbound) or the server's expected
    /// one (outbound); empty without mTLS.
    pub peer_id: String,
}

impl Labels {
    /// Labels for a connection before its TLS status is known.
    pub fn new(direction: Direction, target: impl Into<String>) -> Self {
        Self { direction, target: target.into(), tls: Tls::No, peer_id: String::new() }
    }
}

/// Labels of a response.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    /// Direction, target, TLS.
    #[prometheus(flatten)]
    pub base: Labels,
    /// HTTP status code.
    pub status_code: u16,
    /// gRPC status code, empty when not gRPC.
    pub grpc_status: String,
    /// The route that matched (outbound), empty when none.
    pub route: String,
    /// Success or failure.
    pub classification: Class,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Connection lifetimes, in seconds: 1 ms to a day.
fn duration_histogram() -> Histogram {
    Histogram::new([0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0])
}

/// Labels of route-level metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The outbound target.
    pub target: String,
    /// The route (`<policy>/<rule>`).
    pub route: String,
}

/// Labels of a route event (retry outcome, fault kind...).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteEventLabels {
    /// Target and route.
    #[prometheus(flatten)]
    pub route: RouteLabels,
    /// What happened.
    pub kind: &'static str,
}

/// Labels of an authorization decision.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    /// The app target (inbound).
    pub target: String,
    /// The policy that decided.
    pub policy: String,
    /// The authorization (or default) that decided.
    pub rule: String,
    /// `allow` or `deny`.
    pub decision: &'static str,
}

/// Every metric family of the proxy; cheap to clone (one `Arc`), as every
/// connection and router holds it.
#[derive(Debug, Clone, Default)]
pub struct Metrics(Arc<Families>);

impl std::ops::Deref for Metrics {
    type Target = Families;

    fn deref(&self) -> &Families {
        &self.0
    }
}

/// The metric families behind [`Metrics`].
#[derive(Debug)]
pub struct Families {
    requests: Family<Labels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    tcp_open: Family<Labels, Counter>,
    tcp_close: Family<Labels, Counter>,
    tcp_active: Family<Labels, Gauge>,
    tcp_read: Family<Labels, Counter>,
    tcp_write: Family<Labels, Counter>,
    tcp_refused: Family<RefusedLabels, Counter>,
    tcp_duration: Family<Labels, Histogram, fn() -> Histogram>,
    spans_dropped: Counter,
    access_log_dropped: Counter,
    route_requests: Family<RouteLabels, Counter>,
    route_events: Family<RouteEventLabels, Counter>,
    authz: Family<AuthzLabels, Counter>,
    /// Completed mTLS handshakes (`tls_handshakes_total`).
    pub handshakes: handshakes::Handshakes,
    /// Requests sent again because the peer never processed them; ejections.
    pub forward: ForwardMetrics,
    /// Every listener's connections from accept to close
    /// (`listener_open_connections`), before detection or TLS.
    pub listeners: mesh_core::listener::ListenerMetrics,
}

/// Labels of a refused connection.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// Direction, target.
    #[prometheus(flatten)]
    pub base: Labels,
    /// Why: `plaintext` (strict port), `tls_handshake`.
    pub reason: &'static str,
}

impl Default for Families {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            tcp_open: Family::default(),
            tcp_close: Family::default(),
            tcp_active: Family::default(),
            tcp_read: Family::default(),
            tcp_write: Family::default(),
            tcp_refused: Family::default(),
            tcp_duration: Family::new_with_constructor(duration_histogram),
            spans_dropped: Counter::default(),
            access_log_dropped: Counter::default(),
            route_requests: Family::default(),
            route_events: Family::default(),
            authz: Family::default(),
            handshakes: handshakes::Handshakes::default(),
            listeners: mesh_core::listener::ListenerMetrics::default(),
            forward: ForwardMetrics::default(),
        }
    }
}

impl Families {
    /// Registers every family.
    pub fn register(&self, reg: &mut Registry) {
        reg.register("request", "HTTP requests received", self.requests.clone());
        reg.register("response", "HTTP responses sent, by status and classification", self.responses.clone());
        reg.register_with_unit(
            "response_latency",
            "Time from receiving a request to its response headers",
            Unit::Seconds,
            self.latency.clone(),
        );
        reg.register("tcp_open", "Connections accepted", self.tcp_open.clone());
        reg.register("tcp_close", "Connections closed", self.tcp_close.clone());
        reg.register("tcp_open_connections", "Connections currently open", self.tcp_active.clone());
        reg.register_with_unit("tcp_read", "Bytes read from peers", Unit::Bytes, self.tcp_read.clone());
        reg.register_with_unit("tcp_write", "Bytes written to peers", Unit::Bytes, self.tcp_write.clone());
        reg.register("tcp_refused", "Connections refused, by reason", self.tcp_refused.clone());
        reg.register_with_unit(
            "tcp_connection_duration",
            "How long connections stayed open",
            Unit::Seconds,
            self.tcp_duration.clone(),
        );
        reg.register(
            "trace_spans_dropped",
            "Spans dropped (export queue full or export failed)",
            self.spans_dropped.clone(),
        );
        reg.register("access_log_dropped", "Access log lines dropped (writer behind)", self.access_log_dropped.clone());
        reg.register("route_requests", "Outbound requests by matched route", self.route_requests.clone());
        reg.register(
            "route_events",
            "Route policy events: retry, retry_budget_exhausted, timeout, fault_abort, fault_delay, rate_limited",
            self.route_events.clone(),
        );
        reg.register("inbound_authorization", "Inbound authorization decisions by policy", self.authz.clone());
        self.handshakes.register(reg);
        self.listeners.register(reg);
        self.forward.register(reg);
    }

    /// The counter of dropped spans.
    pub fn spans_dropped(&self) -> Counter {
        self.spans_dropped.clone()
    }

    /// The counter of dropped access log lines.
    pub fn access_log_dropped(&self) -> Counter {
        self.access_log_dropped.clone()
    }

    /// The counter of requests taking a route.
    pub fn route_requests(&self, route: &RouteLabels) -> Counter {
        self.route_requests.get_or_create(route).clone()
    }

    /// Counts a route event.
    pub fn route_event(&self, route: &RouteLabels, kind: &'static str) {
        self.route_events.get_or_create(&RouteEventLabels { route: route.clone(), kind }).inc();
    }

    /// The counter of an authorization decision (the caller counts it; HTTP
    /// keeps it for the connection's next requests).
    pub fn authorization(&self, target: &str, verdict: &mesh_policy::inbound::Verdict<'_>) -> Counter {
        let labels = AuthzLabels {
            target: target.to_string(),
            policy: verdict.policy.to_string(),
            rule: verdict.rule.to_string(),
            decision: if verdict.allowed { "allow" } else { "deny" },
        };
        self.authz.get_or_create(&labels).clone()
    }

    /// Counts a refused connection.
    pub fn refused(&self, base: &Labels, reason: &'static str) {
        self.tcp_refused.get_or_create(&RefusedLabels { base: base.clone(), reason }).inc();
    }

    /// Handles for one connection's HTTP traffic.
    pub fn http(&self, labels: Labels) -> Arc<HttpHandles> {
        Arc::new(HttpHandles {
            requests: self.requests.get_or_create(&labels).clone(),
            latency: self.latency.get_or_create(&labels).clone(),
            responses: self.responses.clone(),
            labels,
            seen: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Opens a connection's TCP accounting; closing happens when the guard drops.
    pub fn tcp(&self, labels: &Labels) -> TcpGuard {
        self.tcp_open.get_or_create(labels).inc();
        let active = self.tcp_active.get_or_create(labels).clone();
        active.inc();
        TcpGuard {
            close: self.tcp_close.get_or_create(labels).clone(),
            duration: self.tcp_duration.get_or_create(labels).clone(),
            opened: std::time::Instant::now(),
            active,
            bytes: ByteCounters {
                read: self.tcp_read.get_or_create(labels).clone(),
                write: self.tcp_write.get_or_create(labels).clone(),
            },
        }
    }
}

/// Labels of a resent request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResendLabels {
    /// The target (a service authority, or the app port inbound).
    pub target: String,
    /// `unsent`, `refused_stream` or `goaway`.
    pub reason: &'static str,
}

/// Labels of a per-target count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    /// The target (a service authority, or the app port inbound).
    pub target: String,
}

/// What the forwarding path counts: `http_requests_resent_total` (requests
/// the peer never processed, sent again) and `endpoint_ejections_total`.
#[derive(Debug, Clone, Default)]
pub struct ForwardMetrics {
    resends: Family<ResendLabels, Counter>,
    ejections: Family<TargetLabels, Counter>,
}

impl ForwardMetrics {
    fn register(&self, reg: &mut Registry) {
        reg.register(
            "http_requests_resent",
            "Requests sent again on a new connection because the peer never processed them: unsent (the connection was closing), refused_stream (HTTP/2 REFUSED_STREAM), goaway (above a graceful GOAWAY's last stream)",
            self.resends.clone(),
        );
        reg.register(
            "endpoint_ejections",
            "Endpoints ejected by failure accrual (consecutive failures, or a failed probation)",
            self.ejections.clone(),
        );
    }

    /// Counts one request sent again for `reason`.
    pub fn resent(&self, target: &str, reason: &'static str) {
        self.resends.get_or_create(&ResendLabels { target: target.to_string(), reason }).inc();
    }

    /// Counts one ejection of an endpoint of `target`.
    pub fn ejected(&self, target: &str) {
        self.ejections.get_or_create(&TargetLabels { target: target.to_string() }).inc();
    }
}

/// Counts a connection as open until dropped.
#[derive(Debug)]
pub struct TcpGuard {
    close: Counter,
    duration: Histogram,
    opened: std::time::Instant,
    active: Gauge,
    /// Byte counters for the connection's I/O.
    pub bytes: ByteCounters,
}

impl Drop for TcpGuard {
    fn drop(&mut self) {
        self.close.inc();
        self.active.dec();
        self.duration.observe(self.opened.elapsed().as_secs_f64());
    }
}

/// Resolved handles for one connection's requests.
#[derive(Debug)]
pub struct HttpHandles {
    /// Requests received.
    pub requests: Counter,
    /// Latency to response headers.
    pub latency: Histogram,
    responses: Family<ResponseLabels, Counter>,
    labels: Labels,
    /// Response counters this connection has used, so the common case costs
    /// a short scan instead of building labels (allocations) and hashing.
    seen: std::sync::Mutex<Vec<(ResponseKey, Counter)>>,
}

/// What distinguishes one response counter from another on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ResponseKey {
    status_code: u16,
    grpc_status: Option<u32>,
    route: Option<Arc<str>>,
    class: Class,
}

/// Distinct response counters remembered per connection.
const SEEN_MAX: usize = 16;

impl HttpHandles {
    /// Counts a finished response; `broken` marks a stream that failed
    /// mid-body (a failure whatever its status). Returns whether it failed.
    pub fn response(&self, status_code: u16, grpc_status: Option<u32>, route: Option<&Arc<str>>, broken: bool) -> bool {
        let class = if broken { Class::failure } else { classify(status_code, grpc_status) };
        let key = ResponseKey { status_code, grpc_status, route: route.cloned(), class };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = seen.iter().find(|(k, _)| *k == key) {
            c.inc();
        } else {
            let labels = ResponseLabels {
                base: self.labels.clone(),
                status_code,
                grpc_status: grpc_status.map(|g| g.to_string()).unwrap_or_default(),
                route: route.map(|r| r.to_string()).unwrap_or_default(),
                classification: class,
            };
            let counter = self.responses.get_or_create(&labels).clone();
            counter.inc();
            if seen.len() < SEEN_MAX {
                seen.push((key, counter));
            }
        }
        class == Class::failure
    }
}

/// Success or failure: 5xx fail; for gRPC, codes that mean the server or
/// the network failed (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
/// UNAVAILABLE, DATA_LOSS, RESOURCE_EXHAUSTED) fail. The one classification,
/// shared with tap readers ([`mesh_proto::wire::succeeded`]).
pub fn classify(status_code: u16, grpc_status: Option<u32>) -> Class {
    if mesh_proto::wire::succeeded(status_code, grpc_status) { Class::success } else { Class::failure }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify(200, None), Class::success);
        assert_eq!(classify(404, None), Class::success);
        assert_eq!(classify(503, None), Class::failure);
        assert_eq!(classify(200, Some(0)), Class::success);
        assert_eq!(classify(200, Some(5)), Class::success, "NOT_FOUND is the caller's problem");
        assert_eq!(classify(200, Some(14)), Class::failure);
    }

    #[test]
    fn encodes_with_conventional_names() {
        let m = Metrics::default();
        let mut reg = Registry::default();
        m.register(&mut reg);
        let labels = Labels::new(Direction::inbound, "app:8080");
        let h = m.http(labels.clone());
        h.requests.inc();
        h.latency.observe(0.002);
        h.response(200, None, None, false);
        drop(m.tcp(&labels));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).expect("encode");
        assert!(
            out.contains(r#"request_total{direction="inbound",target="app:8080",tls="false",peer_id=""} 1"#),
            "{out}"
        );
        assert!(out.contains(r#"response_total{direction="inbound",target="app:8080",tls="false",peer_id="",status_code="200",grpc_status="",route="",classification="success"} 1"#), "{out}");
        assert!(out.contains("response_latency_seconds_bucket"), "{out}");
        assert!(
            out.contains(r#"tcp_close_total{direction="inbound",target="app:8080",tls="false",peer_id=""} 1"#),
            "{out}"
        );
    }
}
