//! A small HTTP/1.1 server for admin endpoints (`/metrics`, `/ready`, ...).
//!
//! Each binary supplies a [`Handler`] with its own routes; this module owns the
//! accept loop, per-connection limits and graceful shutdown, so admin traffic
//! can never pile up connections or block the process from exiting.

use crate::listener::{Accepts, Counted};
use crate::shutdown::Shutdown;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;

/// The body type of every admin response: usually a full buffer, or a
/// stream (a live tap).
pub type Body = UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// A full body.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed_unsync()
}

/// Answers admin requests; implemented by each binary's admin state.
pub trait Handler: Clone + Send + Sync + 'static {
    /// Produces the response for one request.
    fn handle(&self, req: Request<Incoming>) -> impl Future<Output = Response<Body>> + Send;
}

/// The address an admin request came from, in the request's extensions
/// (handlers that serve some routes only to local clients read it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub std::net::SocketAddr);

impl Peer {
    /// The client of `req`, when the server recorded one.
    pub fn of<B>(req: &Request<B>) -> Option<Self> {
        req.extensions().get::<Peer>().copied()
    }

    /// Whether the client is on this host's loopback (`127.0.0.0/8`, `::1`,
    /// or an IPv4-mapped loopback address on a dual-stack socket).
    pub fn is_loopback(&self) -> bool {
        self.0.ip().to_canonical().is_loopback()
    }
}

/// How an admin port treats its connections.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A client must send a request's headers within this time; it also
    /// bounds a connection that never sends anything, or idles between
    /// requests.
    pub header_read_timeout: Duration,
    /// Counts every accepted connection until it closes.
    pub connections: Accepts,
}

impl Settings {
    /// Defaults (5 s header timeout), counted by `connections`.
    pub fn new(connections: Accepts) -> Self {
        Self { header_read_timeout: Duration::from_secs(5), connections }
    }
}

/// Serves `handler` on `listener` until `shutdown` fires, then lets in-flight
/// admin requests finish (at most a couple of seconds). Each request carries
/// its client's address as a [`Peer`] extension.
pub async fn serve<H: Handler>(listener: TcpListener, handler: H, mut shutdown: Shutdown, settings: Settings) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.triggered() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let stream = Counted::new(stream, settings.connections.accepted());
        let h = handler.clone();
        let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(Peer(peer));
            let h = h.clone();
            async move { Ok::<_, std::convert::Infallible>(h.handle(req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            .max_buf_size(64 * 1024)
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(2), graceful.shutdown()).await;
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    response(status, "text/plain; charset=utf-8", body.into())
}

/// A JSON response from already-serialized bytes.
pub fn json(body: impl Into<Bytes>) -> Response<Body> {
    response(StatusCode::OK, "application/json", body.into())
}

/// The Prometheus text exposition response.
pub fn metrics(body: String) -> Response<Body> {
    response(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", body.into())
}

fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut rsp = Response::new(full(body));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    rsp
}

/// `404 Not Found` listing what exists, so a typo is easy to fix.
pub fn not_found(routes: &[&str]) -> Response<Body> {
    text(StatusCode::NOT_FOUND, format!("not found; try one of: {}\n", routes.join(" ")))
}

/// Renders a prometheus-client registry as text.
pub fn encode_registry(registry: &prometheus_client::registry::Registry) -> Response<Body> {
    let mut out = String::with_capacity(16 * 1024);
    match prometheus_client::encoding::text::encode(&mut out, registry) {
        Ok(()) => metrics(out),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics failed: {e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::Peer;

    #[test]
    fn loopback_peers() {
        let local = ["127.0.0.1:1", "127.0.0.2:1", "[::1]:1", "[::ffff:127.0.0.1]:1"];
        let remote = ["10.0.0.1:1", "0.0.0.0:1", "[::ffff:10.0.0.1]:1", "[fe80::1]:1", "[::]:1"];
        for a in local {
            assert!(Peer(a.parse().unwrap()).is_loopback(), "{a}");
        }
        for a in remote {
            assert!(!Peer(a.parse().unwrap()).is_loopback(), "{a}");
        }
    }
}
