//! Connections to one endpoint: a pool of HTTP/1.1 connections, and one
//! shared, multiplexed HTTP/2 connection.
//!
//! Getting a connection ([`EndpointClient::connection`]) is separate from
//! sending on it ([`Conn::send`]), so a request whose connection could not be
//! opened is untouched and can go to another endpoint.

use crate::body::{self, Body, BoxError};
use crate::connect::Connector;
use crate::tls::{ClientIo, MeshProtocol};
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Which HTTP version to speak to the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.1, pooled connections.
    Http1,
    /// HTTP/2, one multiplexed connection.
    Http2,
}

/// Client-side connection settings.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Idle HTTP/1 connections older than this are closed instead of reused.
    pub idle_timeout: Duration,
    /// Idle HTTP/1 connections kept per endpoint.
    pub max_idle: usize,
    /// HTTP/2 PING interval to detect dead peers.
    pub h2_keepalive: Duration,
    /// Largest header block accepted from the endpoint.
    pub max_header_bytes: usize,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            max_idle: 64,
            h2_keepalive: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
        }
    }
}

/// Why a connection could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect failed or timed out.
    #[error("connect to {addr}: {source}")]
    Io {
        /// The endpoint.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The endpoint has as many connections as policy allows.
    #[error("connection limit ({max}) to {addr} reached")]
    Limit {
        /// The endpoint.
        addr: SocketAddr,
        /// The limit.
        max: u32,
    },
    /// The HTTP handshake failed.
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        /// The endpoint.
        addr: SocketAddr,
        /// The hyper error.
        source: hyper::Error,
    },
}

/// A request that failed on a connection; `request` is returned when it was
/// never written, so it can safely be tried elsewhere.
#[derive(Debug)]
pub struct SendError {
    /// What failed.
    pub error: hyper::Error,
    /// The untouched request, when it was not sent.
    pub request: Option<Request<Body>>,
}

/// Connections to one endpoint.
#[derive(Debug)]
pub struct EndpointClient {
    addr: SocketAddr,
    identity: Option<String>,
    connector: Connector,
    settings: Arc<ClientSettings>,
    idle: Mutex<Vec<IdleConn>>,
    h2: tokio::sync::Mutex<Option<http2::SendRequest<Body>>>,
    /// HTTP/1 connections open now.
    open: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct IdleConn {
    tx: http1::SendRequest<Body>,
    since: Instant,
}

/// A connection ready for one request.
#[derive(Debug)]
pub enum Conn {
    /// A pooled HTTP/1 connection; it returns to the pool when the response
    /// body has been read to the end.
    Http1 {
        /// The connection.
        tx: http1::SendRequest<Body>,
        /// Where to return it (`None`: do not reuse, e.g. an upgrade).
        pool: Option<Weak<EndpointClient>>,
    },
    /// A handle on the shared HTTP/2 connection.
    Http2(http2::SendRequest<Body>),
}

impl EndpointClient {
    /// A client for `addr`, whose proxy presents `identity` (mTLS) or none
    /// (plaintext); connections open lazily.
    pub fn new(
        addr: SocketAddr,
        identity: Option<String>,
        connector: Connector,
        settings: Arc<ClientSettings>,
    ) -> Arc<Self> {
        Arc::new(Self {
            addr,
            identity,
            connector,
            settings,
            idle: Mutex::new(Vec::new()),
            h2: tokio::sync::Mutex::new(None),
            open: Arc::default(),
        })
    }

    /// A connection for one request of `version`; at most `max_connections`
    /// HTTP/1 connections are opened (0: unlimited).
    pub async fn connection(self: &Arc<Self>, version: Version, max_connections: u32) -> Result<Conn, ConnectError> {
        match version {
            Version::Http1 => {
                if let Some(tx) = self.checkout() {
                    return Ok(Conn::Http1 { tx, pool: Some(Arc::downgrade(self)) });
                }
                if max_connections > 0 && self.open.load(Ordering::Relaxed) >= max_connections as usize {
                    return Err(ConnectError::Limit { addr: self.addr, max: max_connections });
                }
                let tx = self.connect_h1().await?;
                Ok(Conn::Http1 { tx, pool: Some(Arc::downgrade(self)) })
            }
            Version::Http2 => {
                let mut slot = self.h2.lock().await;
                if let Some(tx) = slot.as_ref().filter(|tx| !tx.is_closed()) {
                    return Ok(Conn::Http2(tx.clone()));
                }
                let tx = self.connect_h2().await?;
                *slot = Some(tx.clone());
                Ok(Conn::Http2(tx))
            }
        }
    }

    /// A fresh HTTP/1 connection that will not be pooled (for upgrades).
    pub async fn dedicated_h1(&self) -> Result<Conn, ConnectError> {
        Ok(Conn::Http1 { tx: self.connect_h1().await?, pool: None })
    }

    /// Idle HTTP/1 connections currently pooled.
    pub fn idle_count(&self) -> usize {
        self.lock_idle().len()
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<IdleConn>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn checkout(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.lock_idle();
        let max_age = self.settings.idle_timeout;
        // Most recently used first: it is the most likely to still be open.
        // A connection whose last response just ended may not be ready yet;
        // it stays pooled for the next request.
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            if idle[i].tx.is_closed() || idle[i].since.elapsed() >= max_age {
                idle.swap_remove(i);
            } else if idle[i].tx.is_ready() {
                return Some(idle.swap_remove(i).tx);
            }
        }
        None
    }

    fn checkin(&self, tx: http1::SendRequest<Body>) {
        if tx.is_closed() {
            return;
        }
        let mut idle = self.lock_idle();
        if idle.len() < self.settings.max_idle {
            idle.push(IdleConn { tx, since: Instant::now() });
        }
    }

    async fn connect_h1(&self) -> Result<http1::SendRequest<Body>, ConnectError> {
        let io = self.connect_io(MeshProtocol::Http1).await?;
        let (tx, conn) = http1::Builder::new()
            .max_buf_size(self.settings.max_header_bytes.max(8192))
            .handshake(io)
            .await
            .map_err(|source| ConnectError::Handshake { addr: self.addr, source })?;
        let addr = self.addr;
        let open = self.open.clone();
        open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "HTTP/1 client connection ended");
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(tx)
    }

    async fn connect_h2(&self) -> Result<http2::SendRequest<Body>, ConnectError> {
        let io = self.connect_io(MeshProtocol::Http2).await?;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(self.settings.h2_keepalive)
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(false)
            .adaptive_window(true)
            .max_header_list_size(u32::try_from(self.settings.max_header_bytes).unwrap_or(u32::MAX))
            .handshake(io)
            .await
            .map_err(|source| ConnectError::Handshake { addr: self.addr, source })?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "HTTP/2 client connection ended");
            }
        });
        Ok(tx)
    }

    /// A raw connection to the endpoint, for opaque TCP.
    pub async fn connect_raw(&self) -> Result<ClientIo, ConnectError> {
        self.connector
            .connect(self.addr, self.identity.as_deref(), MeshProtocol::Opaque)
            .await
            .map_err(|source| ConnectError::Io { addr: self.addr, source })
    }

    async fn connect_io(&self, protocol: MeshProtocol) -> Result<TokioIo<ClientIo>, ConnectError> {
        let io = self
            .connector
            .connect(self.addr, self.identity.as_deref(), protocol)
            .await
            .map_err(|source| ConnectError::Io { addr: self.addr, source })?;
        Ok(TokioIo::new(io))
    }
}

impl Conn {
    /// Sends `req`; on failure before the request was written, it comes back.
    pub async fn send(self, mut req: Request<Body>) -> Result<Response<Body>, SendError> {
        match self {
            Conn::Http1 { mut tx, pool } => {
                *req.version_mut() = http::Version::HTTP_11;
                let rsp = tx
                    .try_send_request(req)
                    .await
                    .map_err(|mut e| SendError { request: e.take_message(), error: e.into_error() })?;
                let upgraded = rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                Ok(match pool.filter(|_| !upgraded) {
                    Some(pool) => rsp.map(|b| body::boxed(PooledBody { inner: b, ret: Some((tx, pool)) })),
                    None => rsp.map(body::boxed),
                })
            }
            Conn::Http2(mut tx) => {
                *req.version_mut() = http::Version::HTTP_2;
                let rsp = tx
                    .try_send_request(req)
                    .await
                    .map_err(|mut e| SendError { request: e.take_message(), error: e.into_error() })?;
                Ok(rsp.map(body::boxed))
            }
        }
    }
}

/// A response body that returns its HTTP/1 connection to the pool once read
/// to the end. Dropped early, the connection is not reused (hyper closes it).
struct PooledBody {
    inner: Incoming,
    ret: Option<(http1::SendRequest<Body>, Weak<EndpointClient>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((tx, pool)) = self.ret.take()
            && let Some(pool) = pool.upgrade()
        {
            pool.checkin(tx);
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        match &res {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.ret = None,
            _ => {}
        }
        res.map(|o| o.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
