//! Observability end to end: exact metric counts and histogram buckets for
//! known traffic, one trace across two sidecars at a real OTLP receiver, a
//! live tap, and access logs.

#![allow(clippy::unwrap_used)]

use mesh_tests::apps;
use mesh_tests::mesh::{self, Mesh, Svc};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::trace::v1::Span;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let mut req = http::Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let rsp = client.request(req.body(http_body_util::Empty::new()).unwrap()).await.unwrap();
    let status = rsp.status().as_u16();
    let headers = rsp.headers().clone();
    let body = http_body_util::BodyExt::collect(rsp.into_body()).await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_was_sent() {
    let app = apps::http("web-0").await;
    let side = mesh::sidecar("web-0", app.addr).await;
    let mesh = Mesh::start(&[Svc::new("web", 80, "http", &[side.inbound_addr().unwrap()])]).await;
    let client = mesh::client("client", &mesh.control_url(), &["web.default:80"]).await;
    let base = format!("http://{}", client.upstream_addrs()[0]);
    for _ in 0..70 {
        assert_eq!(get(&format!("{base}/"), &[]).await.0, 200);
    }
    for _ in 0..20 {
        assert_eq!(get(&format!("{base}/status/503"), &[]).await.0, 503);
    }
    for _ in 0..10 {
        assert_eq!(get(&format!("{base}/slow/30"), &[]).await.0, 200);
    }
    // Responses are counted when their bodies end, which may come a moment
    // after the client saw the last byte: wait until each proxy counted the
    // hundredth (at most 10 s), then the counts must be exact (a proxy that
    // counts a request twice or misses one never matches at any wait).
    for (p, dir) in [(&client, "outbound"), (&side, "inbound")] {
        let d = format!("direction=\"{dir}\"");
        let counted = |m: &str| mesh::metric_sum(m, &["response_latency_seconds_count{", &d]) >= 100.0;
        let admin = p.admin_addr();
        mesh::eventually(Duration::from_secs(10), || async { counted(&mesh::admin_get(admin, "/metrics").await) })
            .await;
        let m = mesh::admin_get(p.admin_addr(), "/metrics").await;
        assert_eq!(mesh::metric_sum(&m, &["request_total{", &d]), 100.0, "{m}");
        assert_eq!(mesh::metric_sum(&m, &["response_total{", &d, "classification=\"success\""]), 80.0);
        assert_eq!(
            mesh::metric_sum(&m, &["response_total{", &d, "status_code=\"503\"", "classification=\"failure\""]),
            20.0
        );
        assert_eq!(mesh::metric_sum(&m, &["response_latency_seconds_count{", &d]), 100.0);
        // The ten slow requests took over 25 ms: at most 90 fit under 0.025 s.
        let under_25ms = mesh::metric_sum(&m, &["response_latency_seconds_bucket{le=\"0.025\"", &d]);
        assert!(under_25ms <= 90.0, "{under_25ms}");
        assert_eq!(mesh::metric_sum(&m, &["response_latency_seconds_bucket{le=\"+Inf\"", &d]), 100.0);
        assert!(mesh::metric_sum(&m, &["tcp_open_total{", &d]) >= 1.0);
        assert!(m.contains("process_resident_memory_bytes") && m.contains("process_open_fds"), "{m}");
    }
}

/// A real OTLP/gRPC receiver that keeps every span.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hexs(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_crosses_two_sidecars() {
    let receiver = Receiver::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = format!("http://{}", l.local_addr().unwrap());
    let svc = TraceServiceServer::new(receiver.clone());
    tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(l);
        let _ = tonic::transport::Server::builder().serve_with_incoming(svc, incoming).await;
    });
    let with_tracing = |c: &mut mesh_proxy::Config| {
        c.telemetry.trace_collector = Some(collector.clone());
        c.telemetry.trace_sample_ratio = 0.0; // only the app's sampled trace is recorded
    };
    let app = apps::http("web-0").await;
    let side = mesh::sidecar_with("web-0", app.addr, with_tracing).await;
    let mesh = Mesh::start(&[Svc::new("web", 80, "http", &[side.inbound_addr().unwrap()])]).await;
    let client = mesh::client_with("client", &mesh.control_url(), &["web.default:80"], with_tracing).await;
    let base = format!("http://{}", client.upstream_addrs()[0]);

    let app_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let app_span = "00f067aa0ba902b7";
    let tp = format!("00-{app_trace}-{app_span}-01");
    let (status, _, echoed) =
        get(&format!("{base}/headers"), &[("traceparent", &tp), ("tracestate", "vendor=1")]).await;
    assert_eq!(status, 200);
    // An unsampled request (and one with no trace: ratio 0) records nothing.
    get(&format!("{base}/"), &[("traceparent", &format!("00-{app_trace}-{app_span}-00"))]).await;
    get(&format!("{base}/"), &[]).await;

    let ok = mesh::eventually(Duration::from_secs(20), || async { receiver.0.lock().unwrap().len() >= 2 }).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans = receiver.0.lock().unwrap().clone();
    assert!(ok && spans.len() == 2, "expected exactly two spans, got {spans:#?}");
    let outbound = spans.iter().find(|s| s.name == "outbound").unwrap();
    let inbound = spans.iter().find(|s| s.name == "inbound").unwrap();
    for s in [outbound, inbound] {
        assert_eq!(hexs(&s.trace_id), app_trace, "one trace");
    }
    assert_eq!(hexs(&outbound.parent_span_id), app_span, "the client sidecar's span is the app's child");
    assert_eq!(inbound.parent_span_id, outbound.span_id, "the server sidecar's span is the client sidecar's child");
    // The server app sees the trace continue from the server sidecar's span.
    let want = format!("traceparent: 00-{app_trace}-{}-01", hexs(&inbound.span_id));
    assert!(echoed.contains(&want), "{echoed}");
    assert!(echoed.contains("tracestate: vendor=1"), "tracestate passes through: {echoed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_streams_requests_as_they_happen_and_access_logs_are_json() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let app = apps::http("web-0").await;
    let log2 = log.clone();
    let side = mesh::sidecar_with("web-0", app.addr, move |c| {
        c.telemetry.access_log = Some(mesh_proxy::telemetry::access_log::Sink::File(log2));
    })
    .await;
    let inbound = side.inbound_addr().unwrap();

    // Open a tap filtered on a path prefix.
    let mut tap = tokio::net::TcpStream::connect(side.admin_addr()).await.unwrap();
    tap.write_all(b"GET /tap?path=%2Fapi HTTP/1.1\r\nHost: admin\r\n\r\n").await.unwrap();
    let mut lines = tokio::io::BufReader::new(tap).lines();
    let head = lines.next_line().await.unwrap().unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    get(&format!("http://{inbound}/other"), &[]).await;
    get(&format!("http://{inbound}/api/books"), &[]).await;
    let event = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let l = lines.next_line().await.unwrap().unwrap();
            if l.starts_with('{') {
                return l;
            }
        }
    })
    .await
    .expect("a tap event arrives while the tap is open");
    let v: serde_json::Value = serde_json::from_str(&event).unwrap();
    assert_eq!(v["path"], "/api/books", "only the filtered path: {v}");
    assert_eq!(v["status"], 404);
    assert_eq!(v["direction"], "inbound");

    let ok = mesh::eventually(Duration::from_secs(20), || async {
        std::fs::read_to_string(&log).map(|s| s.lines().count() >= 2).unwrap_or(false)
    })
    .await;
    assert!(ok, "access log lines were written");
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for field in ["time", "direction", "kind", "client_addr", "target", "method", "path", "status", "latency_ms"] {
            assert!(v.get(field).is_some(), "missing {field} in {v}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_reports_watchers_propagation_and_certificates() {
    let mesh = Mesh::start_secure(&[], Duration::from_secs(3600)).await;
    let app = apps::http("web-0").await;
    let side = mesh.sidecar("web-0", "web", app.addr).await;
    mesh.write_registry(&[Svc::new("web", 80, "http", &[side.inbound_addr().unwrap()])]);
    let client = mesh.client("client", "frontend", &["web.default:80"]).await;
    mesh::wait_resolved(&client, 1).await;
    // One more change, to be propagated to the open watch.
    mesh.write_registry(&[Svc::new(
        "web",
        80,
        "http",
        &[side.inbound_addr().unwrap(), "127.0.0.1:9".parse().unwrap()],
    )]);
    mesh::wait_resolved(&client, 2).await;
    let m = mesh::admin_get(mesh.admin_addr(), "/metrics").await;
    assert!(mesh::metric_sum(&m, &["destination_watchers "]) >= 1.0, "{m}");
    let propagated = mesh::metric_sum(&m, &["destination_propagation_seconds_count"]);
    assert!(propagated >= 1.0, "{m}");
    // Every propagation fits in the histogram's range (a change is sent in
    // milliseconds; the largest bucket leaves room for a loaded machine's
    // scheduling and still fails a time taken from the wrong start).
    assert_eq!(mesh::metric_sum(&m, &["destination_propagation_seconds_bucket{le=\"2.5\"}"]), propagated, "{m}");
    assert!(mesh::metric_sum(&m, &["identity_certificates_issued_total"]) >= 2.0, "{m}");
    assert_eq!(mesh::metric_sum(&m, &["registry_services "]), 1.0);
}
