//! Connections to one endpoint: a pool of HTTP/1.1 connections, and one
//! shared, multiplexed HTTP/2 connection.
//!
//! Getting a connection ([`EndpointClient::connection`]) is separate from
//! sending on it ([`Conn::send`]), so a request whose connection could not be
//! opened is untouched and can go to another endpoint.
//!
//! A connection stops taking new requests (requests in flight finish on it)
//! when any of these happens:
//! - the peer sent GOAWAY (HTTP/2: noticed as the frame is read, see
//!   [`GoAwayWatch`], and a replacement is opened at once if the connection
//!   was in use), or a request on it came back unprocessed;
//! - it reached its maximum age: [`ClientSettings::max_connection_age`], and
//!   for mTLS no later than the peer's certificate expires;
//! - for mTLS, this proxy's credentials changed since it was opened (a new
//!   trust bundle, or our own renewed certificate): new requests then go on
//!   connections that did a full handshake against what is in force now.

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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
    /// No new requests go on a connection older than this: it is
    /// re-established (HTTP/2: a new connection is opened while the old
    /// one's streams finish; HTTP/1: it is not reused).
    pub max_connection_age: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            max_idle: 64,
            h2_keepalive: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_connection_age: Duration::from_secs(3600),
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

/// A request that failed on a connection.
#[derive(Debug)]
pub struct SendError {
    /// What failed.
    pub error: hyper::Error,
    /// The peer never processed the request: it was not written, or (HTTP/2)
    /// its stream was refused (`REFUSED_STREAM`) or lay above a graceful
    /// GOAWAY's last stream ID. Sending it again is safe for any method; the
    /// connection has been retired from the pool.
    pub unprocessed: bool,
    /// The request again, when it can be resent: the untouched request when
    /// it was not written, or a copy of one without a body that was refused.
    pub request: Option<Request<Body>>,
    /// Why it was not processed (`unsent`, `refused_stream`, `goaway`), for
    /// `http_requests_resent_total`; empty when it may have been.
    pub reason: &'static str,
}

/// Connections to one endpoint.
#[derive(Debug)]
pub struct EndpointClient {
    addr: SocketAddr,
    identity: Option<String>,
    connector: Connector,
    settings: Arc<ClientSettings>,
    idle: Mutex<Vec<IdleConn>>,
    h2: tokio::sync::Mutex<Option<H2Conn>>,
    /// HTTP/1 connections open now.
    open: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct IdleConn {
    tx: http1::SendRequest<Body>,
    state: Arc<ConnState>,
    since: Instant,
}

#[derive(Debug)]
struct H2Conn {
    tx: http2::SendRequest<Body>,
    state: Arc<ConnState>,
}

/// Whether one connection may take new requests.
#[derive(Debug)]
struct ConnState {
    opened: Instant,
    /// No new requests from this instant on (maximum age, peer certificate).
    retire_at: Instant,
    /// The credentials generation an mTLS connection was secured under.
    generation: Option<u64>,
    /// Set when the peer said it is closing (GOAWAY) or a request on the
    /// connection came back unprocessed.
    closing: AtomicBool,
    /// When a request last went on it (milliseconds since `opened`).
    last_used_ms: AtomicU64,
}

impl ConnState {
    fn new(settings: &ClientSettings, io: &ClientIo, generation: Option<u64>) -> Arc<Self> {
        let opened = Instant::now();
        let mut age = settings.max_connection_age;
        if let Some(expiry) = io.peer_not_after() {
            age = age.min(expiry.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO));
        }
        // Bounded so the addition cannot overflow.
        let retire_at = opened + age.min(Duration::from_secs(100 * 365 * 86_400));
        Arc::new(Self {
            opened,
            retire_at,
            generation,
            closing: AtomicBool::new(false),
            last_used_ms: AtomicU64::new(0),
        })
    }

    /// Whether new requests may use it, with credentials of `generation` in force.
    fn reusable(&self, generation: Option<u64>) -> bool {
        !self.closing.load(Ordering::Relaxed)
            && Instant::now() < self.retire_at
            && (self.generation.is_none() || self.generation == generation)
    }

    fn retire(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    fn used(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_used_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether a request went on it within `within`.
    fn recently_used(&self, within: Duration) -> bool {
        let last = self.opened + Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed));
        last.elapsed() <= within
    }
}

/// A connection ready for one request.
#[derive(Debug)]
pub struct Conn(ConnKind);

#[derive(Debug)]
enum ConnKind {
    /// A pooled HTTP/1 connection; it returns to the pool when the response
    /// body has been read to the end.
    Http1 {
        tx: http1::SendRequest<Body>,
        state: Arc<ConnState>,
        /// Where to return it (`None`: do not reuse, e.g. an upgrade).
        pool: Option<Weak<EndpointClient>>,
        /// Taken from the idle pool (it carried requests before).
        reused: bool,
    },
    /// A handle on the shared HTTP/2 connection.
    Http2 { tx: http2::SendRequest<Body>, state: Arc<ConnState> },
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
                if let Some((tx, state)) = self.checkout() {
                    return Ok(Conn(ConnKind::Http1 { tx, state, pool: Some(Arc::downgrade(self)), reused: true }));
                }
                if max_connections > 0 && self.open.load(Ordering::Relaxed) >= max_connections as usize {
                    return Err(ConnectError::Limit { addr: self.addr, max: max_connections });
                }
                let (tx, state) = self.connect_h1().await?;
                Ok(Conn(ConnKind::Http1 { tx, state, pool: Some(Arc::downgrade(self)), reused: false }))
            }
            Version::Http2 => {
                let c = self.shared_h2().await?;
                c.state.used();
                Ok(Conn(ConnKind::Http2 { tx: c.tx.clone(), state: c.state.clone() }))
            }
        }
    }

    /// The shared HTTP/2 connection, replaced first if it may no longer take
    /// requests. The old one is dropped from the pool only: its streams in
    /// flight finish, then hyper and h2 close it.
    async fn shared_h2(self: &Arc<Self>) -> Result<tokio::sync::MappedMutexGuard<'_, H2Conn>, ConnectError> {
        let mut slot = self.h2.lock().await;
        let generation = self.connector.generation();
        if !slot.as_ref().is_some_and(|c| !c.tx.is_closed() && c.state.reusable(generation)) {
            *slot = Some(self.connect_h2().await?);
        }
        tokio::sync::MutexGuard::try_map(slot, Option::as_mut)
            .map_err(|_| ConnectError::Io { addr: self.addr, source: std::io::Error::other("no HTTP/2 connection") })
    }

    /// A fresh HTTP/1 connection that will not be pooled (for upgrades).
    pub async fn dedicated_h1(&self) -> Result<Conn, ConnectError> {
        let (tx, state) = self.connect_h1().await?;
        Ok(Conn(ConnKind::Http1 { tx, state, pool: None, reused: false }))
    }

    /// Idle HTTP/1 connections currently pooled.
    pub fn idle_count(&self) -> usize {
        self.lock_idle().len()
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<IdleConn>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn checkout(&self) -> Option<(http1::SendRequest<Body>, Arc<ConnState>)> {
        let generation = self.connector.generation();
        let mut idle = self.lock_idle();
        let max_age = self.settings.idle_timeout;
        // Most recently used first: it is the most likely to still be open.
        // A connection whose last response just ended may not be ready yet;
        // it stays pooled for the next request.
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let c = &idle[i];
            if c.tx.is_closed() || c.since.elapsed() >= max_age || !c.state.reusable(generation) {
                idle.swap_remove(i);
            } else if c.tx.is_ready() {
                let c = idle.swap_remove(i);
                return Some((c.tx, c.state));
            }
        }
        None
    }

    fn checkin(&self, tx: http1::SendRequest<Body>, state: Arc<ConnState>) {
        // Past its age or credentials: not reused, so it closes now.
        if tx.is_closed() || !state.reusable(self.connector.generation()) {
            return;
        }
        let mut idle = self.lock_idle();
        if idle.len() < self.settings.max_idle {
            idle.push(IdleConn { tx, state, since: Instant::now() });
        }
    }

    async fn connect_h1(&self) -> Result<(http1::SendRequest<Body>, Arc<ConnState>), ConnectError> {
        let (io, state) = self.connect_io(MeshProtocol::Http1).await?;
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
        Ok((tx, state))
    }

    async fn connect_h2(self: &Arc<Self>) -> Result<H2Conn, ConnectError> {
        let (io, state) = self.connect_io(MeshProtocol::Http2).await?;
        let io = TokioIo::new(GoAwayWatch::new(io.into_inner(), state.clone(), self.replace_on_goaway(&state)));
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
        Ok(H2Conn { tx, state })
    }

    /// What to do when the peer sends GOAWAY on an HTTP/2 connection: open
    /// its replacement at once, so requests arriving meanwhile do not wait
    /// for it, unless the connection was idle (a peer closing idle
    /// connections must not make us reopen them forever).
    fn replace_on_goaway(self: &Arc<Self>, state: &Arc<ConnState>) -> Box<dyn FnOnce() + Send + Sync> {
        let (pool, state) = (Arc::downgrade(self), Arc::downgrade(state));
        Box::new(move || {
            let busy = state.upgrade().is_some_and(|s| s.recently_used(Duration::from_secs(5)));
            if let (true, Some(pool)) = (busy, pool.upgrade()) {
                tokio::spawn(async move {
                    if let Err(e) = pool.shared_h2().await {
                        tracing::debug!(addr = %pool.addr, error = %e, "replacing an HTTP/2 connection after GOAWAY");
                    }
                });
            }
        })
    }

    /// A raw connection to the endpoint, for opaque TCP.
    pub async fn connect_raw(&self) -> Result<ClientIo, ConnectError> {
        self.connector
            .connect(self.addr, self.identity.as_deref(), MeshProtocol::Opaque)
            .await
            .map_err(|source| ConnectError::Io { addr: self.addr, source })
    }

    async fn connect_io(&self, protocol: MeshProtocol) -> Result<(TokioIo<ClientIo>, Arc<ConnState>), ConnectError> {
        // Read before the handshake: a change during it retires the connection.
        let generation = self.connector.generation().filter(|_| self.connector.secures(self.identity.as_deref()));
        let io = self
            .connector
            .connect(self.addr, self.identity.as_deref(), protocol)
            .await
            .map_err(|source| ConnectError::Io { addr: self.addr, source })?;
        let state = ConnState::new(&self.settings, &io, generation);
        Ok((TokioIo::new(io), state))
    }
}

impl Conn {
    /// An idle HTTP/1 connection taken from the pool: the peer may have
    /// closed it as the request went out (the keep-alive race).
    pub fn reused(&self) -> bool {
        matches!(self.0, ConnKind::Http1 { reused: true, .. })
    }

    /// Sends `req`. When the peer never processed it, the error says so and
    /// (when it can be resent) hands it back; see [`SendError`]. `spare` is
    /// a copy of a bodyless request's head ([`head_of`]) if the caller made
    /// one; an HTTP/2 refusal hands it back (the pool makes its own
    /// otherwise, and leaves it in `spare`).
    pub async fn send(
        self,
        mut req: Request<Body>,
        spare: &mut Option<Request<Body>>,
    ) -> Result<Response<Body>, SendError> {
        match self.0 {
            ConnKind::Http1 { mut tx, state, pool, .. } => {
                *req.version_mut() = http::Version::HTTP_11;
                let rsp = tx.try_send_request(req).await.map_err(|mut e| {
                    let request = e.take_message();
                    if request.is_some() {
                        state.retire();
                    }
                    let reason = if request.is_some() { "unsent" } else { "" };
                    SendError { unprocessed: request.is_some(), request, error: e.into_error(), reason }
                })?;
                let upgraded = rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                Ok(match pool.filter(|_| !upgraded) {
                    Some(pool) => rsp.map(|b| body::boxed(PooledBody { inner: b, ret: Some((tx, state, pool)) })),
                    None => rsp.map(body::boxed),
                })
            }
            ConnKind::Http2 { mut tx, state } => {
                *req.version_mut() = http::Version::HTTP_2;
                // A request without a body can be rebuilt if its stream is
                // refused; one with a body is handed back only unsent (its
                // body was consumed otherwise).
                let bodyless = http_body::Body::is_end_stream(req.body());
                if bodyless && spare.is_none() {
                    *spare = Some(head_of(&req));
                }
                let rsp = tx.try_send_request(req).await.map_err(|mut e| {
                    let request = e.take_message();
                    let error = e.into_error();
                    let reason = if request.is_some() { "unsent" } else { h2_unprocessed(&error).unwrap_or("") };
                    let unprocessed = !reason.is_empty();
                    if unprocessed {
                        state.retire();
                    }
                    let request = request.or_else(|| if unprocessed && bodyless { spare.take() } else { None });
                    SendError { unprocessed, request, error, reason }
                })?;
                Ok(rsp.map(body::boxed))
            }
        }
    }
}

/// A copy of `req` with an empty body.
pub fn head_of(req: &Request<Body>) -> Request<Body> {
    let mut r = Request::new(body::empty());
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    *r.extensions_mut() = req.extensions().clone();
    r
}

/// Whether an HTTP/2 request failed without the peer processing it:
/// cancelled before it went out, its stream refused (`REFUSED_STREAM`,
/// RFC 9113 §8.7), or above the last stream ID of a graceful GOAWAY
/// (`NO_ERROR`; a GOAWAY with an error code resets every stream, processed
/// or not, so those are not safe). Says which: `unsent`, `refused_stream`
/// or `goaway`.
fn h2_unprocessed(error: &hyper::Error) -> Option<&'static str> {
    if error.is_canceled() {
        return Some("unsent");
    }
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(e) = e.downcast_ref::<h2::Error>() {
            if !e.is_remote() {
                return None;
            }
            if e.is_reset() && e.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return Some("refused_stream");
            }
            if e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR) {
                return Some("goaway");
            }
            return None;
        }
        source = e.source();
    }
    None
}

/// The HTTP/2 frame type of GOAWAY (RFC 9113 §6.8).
const GOAWAY: u8 = 0x7;

/// An HTTP/2 client connection's I/O that notices the peer's GOAWAY as its
/// frame is read: hyper reports a closing connection only once a new request
/// is tried on it, so without this every pooled handle would look usable
/// until then (and requests sent meanwhile come back). It follows frame
/// headers (9 bytes: length, type, flags, stream) and skips payloads; the
/// server's side of a connection starts directly with a frame (SETTINGS).
struct GoAwayWatch<T> {
    io: T,
    state: Arc<ConnState>,
    on_goaway: Option<Box<dyn FnOnce() + Send + Sync>>,
    header: [u8; 9],
    filled: usize,
    skip: usize,
}

impl<T> std::fmt::Debug for GoAwayWatch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoAwayWatch").field("state", &self.state).finish_non_exhaustive()
    }
}

impl<T> GoAwayWatch<T> {
    fn new(io: T, state: Arc<ConnState>, on_goaway: Box<dyn FnOnce() + Send + Sync>) -> Self {
        Self { io, state, on_goaway: Some(on_goaway), header: [0; 9], filled: 0, skip: 0 }
    }

    /// Follows the frames in `data`, the next bytes the peer sent.
    fn scan(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let n = (self.header.len() - self.filled).min(data.len());
            self.header[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == self.header.len() {
                self.filled = 0;
                let [a, b, c, kind, ..] = self.header;
                self.skip = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
                if kind == GOAWAY {
                    self.state.retire();
                    if let Some(f) = self.on_goaway.take() {
                        f();
                    }
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GoAwayWatch<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            this.scan(&buf.filled()[before..]);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GoAwayWatch<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A response body that returns its HTTP/1 connection to the pool once read
/// to the end. Dropped early, the connection is not reused (hyper closes it).
struct PooledBody {
    inner: Incoming,
    ret: Option<(http1::SendRequest<Body>, Arc<ConnState>, Weak<EndpointClient>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((tx, state, pool)) = self.ret.take()
            && let Some(pool) = pool.upgrade()
        {
            pool.checkin(tx, state);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, 0, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    }

    fn watch() -> (GoAwayWatch<()>, Arc<ConnState>, Arc<AtomicUsize>) {
        let state = Arc::new(ConnState {
            opened: Instant::now(),
            retire_at: Instant::now() + Duration::from_secs(60),
            generation: None,
            closing: AtomicBool::new(false),
            last_used_ms: AtomicU64::new(0),
        });
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let hook = Box::new(move || {
            c.fetch_add(1, Ordering::Relaxed);
        });
        (GoAwayWatch::new((), state.clone(), hook), state, calls)
    }

    /// GOAWAY is found whatever the read boundaries, including inside a
    /// frame header, and a payload that contains the GOAWAY type byte (a
    /// DATA frame here) is skipped, not mistaken for a frame. Catches a
    /// scanner that looks at the first byte of each read.
    #[test]
    fn goaway_is_noticed_across_read_boundaries_and_only_in_frame_headers() {
        let mut stream = frame(0x4, &[]); // SETTINGS
        stream.extend(frame(0x0, &[0, 0, 0, 7, 0, 0, 0, 7, 0, 0, 0, 7, 7, 7])); // DATA full of 7s
        stream.extend(frame(0x6, &[0; 8])); // PING
        let before = stream.len();
        stream.extend(frame(GOAWAY, &[0, 0, 0, 1, 0, 0, 0, 0]));
        for chunk in [1, 2, 5, 9, 10, 64] {
            let (mut w, state, calls) = watch();
            for piece in stream[..before].chunks(chunk) {
                w.scan(piece);
            }
            assert!(state.reusable(None), "chunk {chunk}: GOAWAY seen where there is none");
            for piece in stream[before..].chunks(chunk) {
                w.scan(piece);
            }
            assert!(!state.reusable(None), "chunk {chunk}: GOAWAY missed");
            w.scan(&frame(GOAWAY, &[0; 8]));
            assert_eq!(calls.load(Ordering::Relaxed), 1, "chunk {chunk}: the replacement is opened once");
        }
    }

    /// Age and credentials generation decide reuse. Catches connections
    /// reused past their age or across a change of certificate or bundle.
    #[test]
    fn connections_retire_with_age_and_credentials() {
        let state = |age: Duration, generation: Option<u64>| ConnState {
            opened: Instant::now(),
            retire_at: Instant::now() + age,
            generation,
            closing: AtomicBool::new(false),
            last_used_ms: AtomicU64::new(0),
        };
        assert!(state(Duration::from_secs(60), Some(3)).reusable(Some(3)));
        assert!(!state(Duration::from_secs(60), Some(3)).reusable(Some(4)), "new credentials");
        assert!(state(Duration::from_secs(60), None).reusable(Some(4)), "plaintext: credentials do not matter");
        assert!(!state(Duration::ZERO, None).reusable(None), "too old");
        let s = state(Duration::from_secs(60), None);
        s.retire();
        assert!(!s.reusable(None), "retired");
    }
}
