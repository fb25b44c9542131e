//! Serving HTTP on an accepted connection, with the limits that keep a
//! misbehaving client from holding resources: header size, header read
//! timeout (slow clients), idle timeout, concurrent HTTP/2 streams.

use crate::body::Body;
use crate::detect::Protocol;
use crate::io::Activity;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use mesh_core::shutdown::Shutdown;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Server-side HTTP limits.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Largest request header block accepted (HTTP/1 buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// A client must send a request's headers within this time.
    pub header_read_timeout: Duration,
    /// A connection with no bytes moving for this long is closed gracefully.
    pub idle_timeout: Duration,
    /// Concurrent streams per HTTP/2 connection.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 PING interval to detect dead clients.
    pub h2_keepalive: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            h2_max_concurrent_streams: 1000,
            h2_keepalive: Duration::from_secs(20),
        }
    }
}

/// Serves `svc` on `io` as `protocol` (HTTP/1 or HTTP/2) until the client
/// leaves, the connection idles out, or shutdown drains it.
pub async fn serve<I, S>(
    io: I,
    protocol: Protocol,
    svc: S,
    settings: &ServerSettings,
    activity: Arc<Activity>,
    mut shutdown: Shutdown,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let svc = TowerToHyperService::new(svc);
    let io = TokioIo::new(io);
    // Both connection types share the same drive loop; only the type differs.
    macro_rules! drive {
        ($conn:expr) => {{
            let conn = $conn;
            tokio::pin!(conn);
            let res = tokio::select! {
                res = conn.as_mut() => Some(res),
                _ = shutdown.triggered() => None,
                _ = activity.idle(settings.idle_timeout) => None,
            };
            let res = match res {
                Some(res) => res,
                None => {
                    conn.as_mut().graceful_shutdown();
                    // A peer that goes on saying nothing (an HTTP/2 client that
                    // never acknowledges the GOAWAY's PING, never sends its
                    // SETTINGS) must not hold the connection open: another idle
                    // period without a byte moving closes it.
                    tokio::select! {
                        res = conn.as_mut() => res,
                        _ = activity.idle(settings.idle_timeout) => {
                            tracing::debug!("peer silent after a graceful close; closing");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = res {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        }};
    }
    match protocol {
        Protocol::Http2 => {
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
                .max_concurrent_streams(settings.h2_max_concurrent_streams)
                .keep_alive_interval(settings.h2_keepalive)
                .keep_alive_timeout(Duration::from_secs(10))
                // Fixed windows, not hyper's adaptive (BDP) ones: adaptive windows
                // send a PING whenever data arrives and none is in flight, and lock
                // and read the clock on every DATA frame, which cost a message on a
                // long-lived stream ≈10 % of its instructions (ARCHITECTURE.md, "Hot
                // path"). These are hyper's server defaults (1 MiB each).
                .initial_stream_window_size(1 << 20)
                .initial_connection_window_size(1 << 20);
            drive!(b.serve_connection(io, svc))
        }
        _ => {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .max_buf_size(settings.max_header_bytes.max(8192))
                .header_read_timeout(settings.header_read_timeout)
                .keep_alive(true);
            drive!(b.serve_connection(io, svc).with_upgrades())
        }
    }
}
