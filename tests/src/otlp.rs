//! An OTLP/gRPC trace receiver that counts the spans it receives and
//! discards them, with the count served as plain text over HTTP
//! (`GET /spans`). `mesh-test-app otlp-sink` runs it as its own process for
//! `cargo xtask bench`, which so measures the proxies' cost of tracing and
//! not a collector's, and needs no gRPC of its own.

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The path that answers the number of spans received so far.
pub const SPANS_PATH: &str = "/spans";

#[derive(Debug, Clone, Default)]
struct Receiver(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize =
            request.get_ref().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A running sink; dropping it stops both listeners.
#[derive(Debug)]
pub struct OtlpSink {
    /// The OTLP/gRPC listener (`mesh-proxy --trace-collector http://ADDR`).
    pub addr: SocketAddr,
    /// The HTTP listener answering `GET /spans`.
    pub counts_addr: SocketAddr,
    spans: Arc<AtomicU64>,
    tasks: [JoinHandle<()>; 2],
}

impl OtlpSink {
    /// Binds both listeners (port 0: any free port) and serves them.
    pub async fn start(listen: SocketAddr, counts: SocketAddr) -> std::io::Result<Self> {
        let grpc = TcpListener::bind(listen).await?;
        let http = TcpListener::bind(counts).await?;
        let (addr, counts_addr) = (grpc.local_addr()?, http.local_addr()?);
        let spans = Arc::new(AtomicU64::new(0));
        let receiver = Receiver(spans.clone());
        let serve_grpc = tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(grpc);
            if let Err(e) = tonic::transport::Server::builder()
                .serve_with_incoming(TraceServiceServer::new(receiver), incoming)
                .await
            {
                eprintln!("the OTLP receiver stopped: {e}");
            }
        });
        let serve_counts = tokio::spawn(serve_counts(http, spans.clone()));
        Ok(Self { addr, counts_addr, spans, tasks: [serve_grpc, serve_counts] })
    }

    /// Spans received so far.
    pub fn spans(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// `GET /spans` answers the count as decimal text and a newline; any other
/// path is 404. HTTP/1.0 and 1.1.
async fn serve_counts(listener: TcpListener, spans: Arc<AtomicU64>) {
    while let Ok((tcp, _)) = listener.accept().await {
        let spans = spans.clone();
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let rsp = if req.uri().path() == SPANS_PATH {
                http::Response::new(Full::new(Bytes::from(format!("{}\n", spans.load(Ordering::Relaxed)))))
            } else {
                let mut r = http::Response::new(Full::new(Bytes::from_static(b"not found\n")));
                *r.status_mut() = http::StatusCode::NOT_FOUND;
                r
            };
            async move { Ok::<_, std::convert::Infallible>(rsp) }
        });
        tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What `cargo xtask bench` does: an HTTP/1.0 GET, read to EOF.
    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn counts_exported_spans() {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let sink = OtlpSink::start(any, any).await.unwrap();
        assert!(get(sink.counts_addr, SPANS_PATH).await.ends_with("\r\n\r\n0\n"));
        let mut client = TraceServiceClient::connect(format!("http://{}", sink.addr)).await.unwrap();
        let scope = |n| ScopeSpans { spans: vec![Span::default(); n], ..Default::default() };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans { scope_spans: vec![scope(2), scope(3)], ..Default::default() },
                ResourceSpans { scope_spans: vec![scope(1)], ..Default::default() },
            ],
        };
        client.export(request).await.unwrap();
        assert_eq!(sink.spans(), 6);
        let rsp = get(sink.counts_addr, SPANS_PATH).await;
        assert!(rsp.starts_with("HTTP/1.0 200") && rsp.ends_with("\r\n\r\n6\n"), "{rsp}");
        assert!(get(sink.counts_addr, "/").await.starts_with("HTTP/1.0 404"));
    }
}
