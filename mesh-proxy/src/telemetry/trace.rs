//! Span export over OTLP/gRPC: spans are queued (bounded; dropped and counted
//! when the collector cannot keep up) and sent in batches by one task.

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, trace_service_client::TraceServiceClient,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode,
};
use prometheus_client::metrics::counter::Counter;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// One finished span.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// The trace.
    pub trace_id: [u8; 16],
    /// This span.
    pub span_id: [u8; 8],
    /// Its parent, when the request carried a trace.
    pub parent: Option<[u8; 8]>,
    /// `inbound` or `outbound`.
    pub name: &'static str,
    /// Server (inbound) or client (outbound).
    pub server: bool,
    /// Start.
    pub start: SystemTime,
    /// End.
    pub end: SystemTime,
    /// Attributes.
    pub attributes: Vec<(&'static str, String)>,
    /// Whether the response failed.
    pub error: bool,
}

/// Exports spans to an OTLP collector.
#[derive(Debug, Clone)]
pub struct Exporter {
    tx: mpsc::Sender<SpanRecord>,
    /// The sampling ratio for traces this proxy starts.
    pub ratio: f64,
    dropped: Counter,
}

const QUEUE: usize = 4096;
const BATCH: usize = 512;

impl Exporter {
    /// Starts exporting to `endpoint` (`http://host:4317`) as `service`.
    pub fn start(endpoint: &str, service: &str, ratio: f64, dropped: Counter) -> Result<Self, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(TraceServiceClient::new(channel), rx, service.to_string(), dropped.clone()));
        Ok(Self { tx, ratio, dropped })
    }

    /// Queues a span; drops it (counted) when the queue is full.
    pub fn record(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn kv(k: &str, v: String) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(v)) }),
        ..Default::default()
    }
}

fn to_proto(s: SpanRecord) -> Span {
    Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: s.name.to_string(),
        kind: if s.server { SpanKind::Server } else { SpanKind::Client } as i32,
        start_time_unix_nano: nanos(s.start),
        end_time_unix_nano: nanos(s.end),
        attributes: s.attributes.into_iter().map(|(k, v)| kv(k, v)).collect(),
        status: Some(Status {
            code: if s.error { StatusCode::Error } else { StatusCode::Unset } as i32,
            message: String::new(),
        }),
        ..Default::default()
    }
}

async fn run(
    mut client: TraceServiceClient<tonic::transport::Channel>,
    mut rx: mpsc::Receiver<SpanRecord>,
    service: String,
    dropped: Counter,
) {
    let resource = Resource { attributes: vec![kv("service.name", service)], ..Default::default() };
    let scope = InstrumentationScope {
        name: "mesh-proxy".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    let mut batch: Vec<Span> = Vec::with_capacity(BATCH);
    loop {
        // Wait for a first span, then gather for up to a second (or a full
        // batch): one export per second at most under steady load, instead
        // of one per span.
        match rx.recv().await {
            Some(s) => batch.push(to_proto(s)),
            None => return,
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(to_proto(s)),
                Ok(None) | Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let n = batch.len();
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope.clone()),
                    spans: std::mem::take(&mut batch),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        if let Err(e) = client.export(req).await {
            dropped.inc_by(n as u64);
            tracing::debug!(code = ?e.code(), message = e.message(), spans = n, "span export failed; spans dropped");
        }
    }
}
