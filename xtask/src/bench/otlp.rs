//! An OTLP/gRPC trace receiver for the tracing scenario: it counts the spans
//! the proxies export and discards them, so the bench measures the proxies'
//! cost of tracing and not a collector's.

use anyhow::{Context, bail};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::server::TcpIncoming;

#[derive(Debug, Default)]
struct Counts {
    spans: AtomicU64,
}

#[derive(Debug, Clone)]
struct Receiver(Arc<Counts>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize =
            request.get_ref().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.0.spans.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The receiver, served by its own thread until dropped.
#[derive(Debug)]
pub struct Collector {
    addr: SocketAddr,
    counts: Arc<Counts>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    /// Listens on a free loopback port.
    pub fn start() -> anyhow::Result<Self> {
        let counts = Arc::new(Counts::default());
        let receiver = Receiver(counts.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot start a runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let incoming = match TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0))) {
                        Ok(i) => i,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("cannot bind a loopback port: {e}")));
                            return;
                        }
                    };
                    let _ = ready_tx.send(incoming.local_addr().map_err(|e| e.to_string()));
                    let served = tonic::transport::Server::builder()
                        .serve_with_incoming_shutdown(TraceServiceServer::new(receiver), incoming, async {
                            let _ = stopped.await;
                        })
                        .await;
                    if let Err(e) = served {
                        eprintln!("warning: the OTLP receiver stopped: {e}");
                    }
                });
            })
            .context("cannot start the OTLP receiver's thread")?;
        let addr = match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(addr)) => addr,
            Ok(Err(e)) => bail!("OTLP receiver: {e}"),
            Err(e) => bail!("OTLP receiver did not start: {e}"),
        };
        Ok(Self { addr, counts, stop: Some(stop), thread: Some(thread) })
    }

    /// The URL to give `mesh-proxy --trace-collector`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Spans received so far.
    pub fn spans(&self) -> u64 {
        self.counts.spans.load(Ordering::Relaxed)
    }

    /// Waits until no span has arrived for `quiet` (exporters send what they
    /// hold right away, or within a second when idle), at most `limit`, and
    /// returns the spans received so far.
    pub fn settle(&self, quiet: Duration, limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        let mut last = self.spans();
        let mut since = Instant::now();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.spans();
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() >= quiet {
                break;
            }
        }
        last
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    #[test]
    fn counts_exported_spans() {
        let collector = Collector::start().expect("starts");
        let endpoint = collector.endpoint();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let mut client = TraceServiceClient::connect(endpoint).await.expect("connects");
            let scope = |n| ScopeSpans { spans: vec![Span::default(); n], ..Default::default() };
            let request = ExportTraceServiceRequest {
                resource_spans: vec![
                    ResourceSpans { scope_spans: vec![scope(2), scope(3)], ..Default::default() },
                    ResourceSpans { scope_spans: vec![scope(1)], ..Default::default() },
                ],
            };
            client.export(request).await.expect("exports");
        });
        assert_eq!(collector.settle(Duration::from_millis(100), Duration::from_secs(2)), 6);
    }
}
